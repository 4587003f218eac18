"""Sampling endpoints: sampling sessions, joining one, and asample."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from tinkex_trio import types as t
from tinkex_trio.sim._asgi import HTTPError, Request, Response, decode_body, json_response
from tinkex_trio.sim._convert import (
    SamplePayload,
    model_input_length,
    prompt_tokens,
    stop_spec,
)
from tinkex_trio.sim._core import (
    SimCore,
    find_checkpoint,
    future_response,
    require_base_model,
)
from tinkex_trio.sim._model import LoraModel
from tinkex_trio.sim._model_types import SampleResult, SimUserError
from tinkex_trio.sim._queue import FutureError, FutureRecord, Job
from tinkex_trio.sim._state import (
    SamplerRecord,
)

MAX_NUM_SAMPLES = 4096
"""Most samples one ``asample`` may ask for (each costs a sequence id, a row of output and compute)."""
MAX_SAMPLED_TOKENS = 1 << 20
"""Most tokens one ``asample`` may generate in all (``num_samples * max_tokens``): its result is rendered on the event
loop, which takes about a quarter of a second per million tokens."""
CLONE_STRIDE = 1_000_000_000
"""A sample's ``seq_id`` divided by this is the cloned sampler it belongs to (``retrieve_futures``' target)."""


def _sampler_from_path(sim: SimCore, model_path: str) -> tuple[str, LoraModel]:
    checkpoint = find_checkpoint(sim, model_path)
    try:
        model = LoraModel.from_bytes(checkpoint.data)
    except SimUserError as exc:
        raise HTTPError(422, f"cannot sample from {model_path}: {exc}") from None
    sim.state.audit_checkpoint("checkpoint_read", checkpoint, purpose="sampling")
    return checkpoint.base_model, model


async def create_sampling_session(sim: SimCore, request: Request) -> Response:
    body = decode_body(request, t.CreateSamplingSessionRequest)
    session = sim.state.session(body.session_id)
    sampler_id = sim.state.sampler_id_for(session.session_id, body.sampling_session_seq_id)
    existing = sim.state.samplers.get(sampler_id)
    if existing is None:
        if body.model_path is not None:
            base_model, model = _sampler_from_path(sim, body.model_path)
        elif body.base_model is not None:
            require_base_model(sim, body.base_model, training=False)
            base_model, model = body.base_model, sim.state.base_model(body.base_model, sim.config.model)
        else:
            raise HTTPError(422, "create_sampling_session needs a base_model or a model_path")
        existing = sim.state.add_sampler(
            session=session,
            sampling_session_seq_id=body.sampling_session_seq_id,
            base_model=base_model,
            model_path=body.model_path,
            model=model,
        )
    return json_response(t.CreateSamplingSessionResponse(sampling_session_id=existing.sampling_session_id))


async def get_sampler(sim: SimCore, request: Request) -> Response:
    sampler = sim.state.sampler(request.params["sampler_id"])
    return json_response(
        t.GetSamplerResponse(
            sampler_id=sampler.sampling_session_id, base_model=sampler.base_model, model_path=sampler.model_path
        )
    )


async def join_sampling_session(sim: SimCore, request: Request) -> Response:
    body = decode_body(request, t.JoinSamplingSessionRequest)
    sampler = sim.state.sampler(body.sampling_session_id)
    sampler.client_counter += 1
    return json_response(t.JoinSamplingSessionResponse(client_counter=sampler.client_counter))


def _adhoc_sampler(sim: SimCore, body: t.SampleRequest) -> SamplerRecord:
    key = body.model_path or body.base_model
    if key is None:
        raise HTTPError(422, "asample needs a sampling_session_id, a model_path or a base_model")
    sampler_id = f"adhoc:{key}"
    existing = sim.state.samplers.get(sampler_id)
    if existing is not None:
        return existing
    if body.model_path is not None:
        base_model, model = _sampler_from_path(sim, body.model_path)
    else:
        assert body.base_model is not None
        require_base_model(sim, body.base_model, training=False)
        base_model, model = body.base_model, sim.state.base_model(body.base_model, sim.config.model)
    record = SamplerRecord(
        sampling_session_id=sampler_id,
        session_id="",
        base_model=base_model,
        model_path=body.model_path,
        model=model,
    )
    sim.state.samplers[sampler_id] = record
    return record


async def asample(sim: SimCore, request: Request) -> Response:
    body = decode_body(request, t.SampleRequest)
    if body.sampling_session_id is not None:
        sampler = sim.state.sampler(body.sampling_session_id)
    else:
        sampler = _adhoc_sampler(sim, body)
    lane = sampler.sampling_session_id
    if body.seq_id is not None:
        existing = sim.queue.lookup_seq(lane, body.seq_id)
        if existing is not None:
            return future_response(existing)
    if request.header("x-tinker-sampling-backpressure") and sim.queue.queued_count >= sim.config.queue_capacity > 0:
        raise HTTPError(429, "sampling queue is full; retry shortly", {"Retry-After": "1"})
    max_tokens = body.sampling_params.max_tokens
    if max_tokens is None:
        max_tokens = sim.config.model.default_max_tokens
    if body.num_samples > MAX_NUM_SAMPLES or body.num_samples * max(max_tokens, 1) > MAX_SAMPLED_TOKENS:
        raise HTTPError(
            422,
            f"num_samples must be at most {MAX_NUM_SAMPLES} and num_samples * max_tokens at most "
            f"{MAX_SAMPLED_TOKENS}, got {body.num_samples} and {max_tokens}",
        )
    record_box: list[FutureRecord] = []
    stability: list[Recorded] = []

    def commit(result: SampleResult) -> SamplePayload:
        sampler.samples_applied += 1
        ledger = sim.state.ledger
        ledger.add_usage("sampling_prefill", sampler.session_id, sampler.base_model, model_input_length(body.prompt))
        sampled = sum(len(sequence.tokens) for sequence in result.sequences)
        ledger.add_usage("sampling_sample", sampler.session_id, sampler.base_model, sampled)
        ids: list[str] = record_box[0].extra["sample_sequence_ids"] if record_box else []
        if stability:
            prompt, sequences = stability[0]
            sim.state.stability.record(sampler.session_id, ids, prompt, sequences, sim.state.clock())
        return SamplePayload(result, ids, body.target_prompt_logprobs)

    tokens_cost = model_input_length(body.prompt) + max(body.num_samples, 1) * max(max_tokens, 0)
    record, is_new = sim.queue.submit(
        lane,
        "Sample",
        Job(compute=_sample_compute(sim, sampler, body, max_tokens, stability), commit=commit, tokens=tokens_cost),
        seq_id=body.seq_id,
        ordered=False,
        extra={"sampler_id": lane, "clone": (body.seq_id or 0) // CLONE_STRIDE},
    )
    if is_new:
        record.extra["sample_sequence_ids"] = [f"{record.request_id}:{i}" for i in range(max(body.num_samples, 0))]
        record_box.append(record)
    return future_response(record)


def _sample_compute(
    sim: SimCore, sampler: SamplerRecord, body: t.SampleRequest, max_tokens: int, stability: list[Recorded]
) -> Callable[[], SampleResult]:
    """The work of one asample future: the model's sample, an invalid request failing it with category "user".

    With ``record_stability_info`` it also appends to ``stability`` what the commit records (`_stability_info`)."""
    params = body.sampling_params
    stop_tokens, stop_sequences = stop_spec(params.stop, sim.config.model.vocab_size)
    seed = params.seed
    if seed is None:
        # A sequenced request's draw depends only on (server seed, sampler, seq_id), not on the order in which
        # concurrent requests arrive, so a seeded server samples the same tokens run after run.
        salt = str(body.seq_id) if body.seq_id is not None else sim.state.random_hex(4)
        seed = zlib.crc32(f"{sim.config.seed}/{sampler.sampling_session_id}/{salt}".encode())
    state = sim.state

    def compute() -> SampleResult:
        try:
            prompt = prompt_tokens(body.prompt)
            target = (
                body.target_prompt_logprobs.to_numpy(pad_value=-1) if body.target_prompt_logprobs is not None else None
            )
            with sampler.lock:
                model = state.sampler_model(sampler)
                result = model.sample(
                    prompt,
                    num_samples=body.num_samples,
                    max_tokens=max_tokens,
                    temperature=params.temperature,
                    top_k=params.top_k,
                    top_p=params.top_p,
                    seed=seed,
                    stop_tokens=stop_tokens,
                    stop_sequences=stop_sequences,
                    prompt_logprobs=bool(body.prompt_logprobs),
                    topk_prompt_logprobs=body.topk_prompt_logprobs,
                    topk_sample_logprobs=body.topk_sample_logprobs,
                    target_prompt_logprobs=target,
                    prompt_alt_tokens_k=body.prompt_alt_tokens_k,
                    prompt_logprobs_last_n=body.prompt_logprobs_last_n,
                )
                if body.record_stability_info:
                    stability.append(_stability_info(model, prompt, result, params))
                return result
        except (SimUserError, ValueError) as exc:
            raise FutureError(str(exc), "user") from None

    return compute


Recorded = tuple[npt.NDArray[np.int64], list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]]
"""What ``record_stability_info`` keeps of one sample request: the prompt and ``(tokens, sampling_logprobs)`` per
sequence."""


def _stability_info(
    model: LoraModel, prompt: npt.NDArray[np.int64], result: SampleResult, params: t.SamplingParams
) -> Recorded:
    """Each sequence's tokens with the log-probability the sampler drew them with (`LoraModel.sampling_logprobs`)."""
    last = int(prompt[-1])
    sequences = [
        (
            seq.tokens,
            model.sampling_logprobs(
                last, seq.tokens, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p
            ),
        )
        for seq in result.sequences
    ]
    return prompt, sequences
