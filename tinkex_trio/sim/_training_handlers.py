"""Training endpoints: create a model, its info, forward(_backward) and optim_step, each queued in the model's lane."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from tinkex_trio import types as t
from tinkex_trio._proto import _codec
from tinkex_trio.sim._asgi import PROTOBUF, HTTPError, Request, Response, decode_body, decompress, json_response
from tinkex_trio.sim._convert import (
    FwdBwdPayload,
    datum_arrays,
    model_input_length,
)
from tinkex_trio.sim._core import (
    SimCore,
    existing_model_future,
    future_response,
    note_seq,
    require_base_model,
    submit_model_op,
    supported,
)
from tinkex_trio.sim._losses import RECORDED_INPUTS
from tinkex_trio.sim._model import LoraModel
from tinkex_trio.sim._model_types import (
    AdamParams,
    DatumArrays,
    DimuonParams,
    FwdBwdResult,
    SimUserError,
    as_float,
    as_tokens,
)
from tinkex_trio.sim._queue import FutureError, Job
from tinkex_trio.sim._stability import check_sampled_advantages, resolve_provenance


class _FwdBwdInput(msgspec.Struct, kw_only=True):
    data: list[t.Datum]
    loss_fn: str
    loss_fn_config: dict[str, float | str] | None = None


class _FwdBwdJSONRequest(msgspec.Struct, kw_only=True):
    """The JSON form of a forward_backward request; ``forward_input`` (ForwardRequest) is accepted too."""

    model_id: str
    forward_backward_input: _FwdBwdInput | None = None
    forward_input: _FwdBwdInput | None = None
    seq_id: int | None = None
    forward_only: bool | None = None


@dataclass
class _FwdBwdWork:
    """What a forward_backward future computes, decoded from JSON or protobuf."""

    model_id: str
    seq_id: int | None
    data: list[t.Datum]
    loss_fn: str
    loss_fn_config: dict[str, float | str] | None
    forward_only: bool


async def create_model(sim: SimCore, request: Request) -> Response:
    body = decode_body(request, t.CreateModelRequest)
    session = sim.state.session(body.session_id)
    require_base_model(sim, body.base_model, training=True)
    model_id = sim.state.model_id_for(session.session_id, body.model_seq_id)
    if (resent := existing_model_future(sim, model_id)) is not None:
        return resent
    lora = body.lora_config or t.LoraConfig(rank=32)
    cfg = sim.config.model
    if not 1 <= lora.rank <= cfg.max_lora_rank:
        raise HTTPError(422, f"lora_config.rank must be in [1, {cfg.max_lora_rank}], got {lora.rank}")
    optimizer = "dimuon" if isinstance(body.optimizer_config, t.DimuonOptimizerConfig) else "adamw"
    seed = lora.seed if lora.seed is not None else sim.state.random_seed()
    record = sim.state.add_model(
        session=session,
        model_seq_id=body.model_seq_id,
        base_model=body.base_model,
        lora_rank=lora.rank,
        optimizer=optimizer,
        lora_flags={
            "train_unembed": lora.train_unembed,
            "train_mlp": lora.train_mlp,
            "train_attn": lora.train_attn,
        },
        user_metadata=body.user_metadata,
    )
    base_model, rank = body.base_model, lora.rank

    def compute() -> LoraModel:
        try:
            return LoraModel(base_model, rank, seed, cfg, optimizer=optimizer)
        except SimUserError as exc:
            raise FutureError(str(exc), "user") from None

    def commit(model: LoraModel) -> Any:
        record.model = model
        return t.CreateModelResponse(model_id=record.model_id)

    future, _ = sim.queue.submit(
        record.model_id,
        "CreateModel",
        Job(compute=compute, commit=commit, tokens=0),
        seq_id=0,
        ordered=True,
        extra={"model_id": record.model_id},
    )
    return future_response(future)


async def get_info(sim: SimCore, request: Request) -> Response:
    body = decode_body(request, t.GetInfoRequest)
    record = sim.state.model(body.model_id)
    entry = supported(sim, record.base_model)
    tokenizer_id = (entry.tokenizer_id if entry is not None else None) or record.base_model
    optimizer_config: t.OptimizerConfig = (
        t.DimuonOptimizerConfig() if record.optimizer == "dimuon" else t.AdamOptimizerConfig()
    )
    return json_response(
        t.GetInfoResponse(
            model_id=record.model_id,
            model_data=t.ModelData(
                arch=entry.arch if entry is not None else "sim-bigram",
                model_name=record.base_model,
                tokenizer_id=tokenizer_id,
            ),
            optimizer_config=optimizer_config,
            is_lora=True,
            lora_rank=record.lora_rank,
            model_name=record.base_model,
        )
    )


def _decode_fwdbwd(request: Request) -> _FwdBwdWork:
    body = request.body
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding:
        body = decompress(body, encoding)
    if PROTOBUF in request.content_type:
        try:
            decoded = _codec.decode_forward_backward_request(body)
        except Exception as exc:
            raise HTTPError(400, f"request body is not a valid ForwardBackwardRequest protobuf: {exc}") from None
        return _FwdBwdWork(
            model_id=decoded.model_id,
            seq_id=decoded.seq_id,
            data=list(decoded.data),
            loss_fn=decoded.loss_fn,
            loss_fn_config=decoded.loss_fn_config,
            forward_only=decoded.forward_only,
        )
    try:
        parsed = t.decoder_for(_FwdBwdJSONRequest).decode(body)
    except msgspec.ValidationError as exc:
        raise HTTPError(422, f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from None
    fwd_input = parsed.forward_backward_input or parsed.forward_input
    if fwd_input is None:
        raise HTTPError(422, "invalid request body: missing forward_backward_input")
    forward_only = bool(parsed.forward_only) or (
        parsed.forward_backward_input is None or request.path.endswith("/forward")
    )
    return _FwdBwdWork(
        model_id=parsed.model_id,
        seq_id=parsed.seq_id,
        data=fwd_input.data,
        loss_fn=fwd_input.loss_fn,
        loss_fn_config=fwd_input.loss_fn_config,
        forward_only=forward_only,
    )


def _resolve_recorded(sim: SimCore, session_id: str, work: _FwdBwdWork) -> list[DatumArrays] | SimUserError:
    """The datums with the inputs the server derives from its sampling records (``stable_reinforce``), or the user
    error that fails the request. Runs on the trio thread, which owns the records, when the request arrives."""
    vocab = sim.config.model.vocab_size
    now = sim.state.clock()
    out: list[DatumArrays] = []
    try:
        for i, d in enumerate(work.data):
            arrays = datum_arrays(i, d)
            targets = arrays.loss_fn_inputs.get("target_tokens")
            if targets is None:
                raise SimUserError(f"datum {i}: missing loss_fn_inputs ['target_tokens']")
            tokens = as_tokens(arrays.tokens, f"datum {i}: model input", vocab)
            target_ids = as_tokens(targets, f"datum {i}: target_tokens", vocab)
            recorded = resolve_provenance(sim.state.stability, session_id, i, d, tokens, target_ids, vocab, now)
            advantages = arrays.loss_fn_inputs.get("advantages")
            if advantages is not None:  # missing or misshapen: refused with the loss's own inputs check
                flat = as_float(advantages, f"datum {i}: loss_fn_inputs['advantages']").reshape(-1)
                if flat.shape == recorded["sampled"].shape:
                    check_sampled_advantages(i, flat, recorded["sampled"])
            out.append(DatumArrays(arrays.tokens, arrays.loss_fn_inputs, recorded))
    except SimUserError as exc:
        return exc
    return out


async def forward_backward(sim: SimCore, request: Request) -> Response:
    work = _decode_fwdbwd(request)
    note_seq(request, work.model_id, work.seq_id)
    model = sim.state.model(work.model_id)
    tokens = sum(model_input_length(d.model_input) for d in work.data)

    resolved = _resolve_recorded(sim, model.session_id, work) if work.loss_fn in RECORDED_INPUTS else None

    def compute(lora: LoraModel) -> FwdBwdResult:
        if isinstance(resolved, SimUserError):
            raise resolved
        arrays = resolved if resolved is not None else [datum_arrays(i, d) for i, d in enumerate(work.data)]
        return lora.forward_backward(arrays, work.loss_fn, work.loss_fn_config, forward_only=work.forward_only)

    def commit(result: FwdBwdResult) -> FwdBwdPayload:
        if work.forward_only:
            model.forward_applied += 1
        else:
            model.forward_backward_applied += 1
        sim.state.ledger.add_usage("training", model.session_id, model.base_model, tokens)
        return FwdBwdPayload(result)

    record = submit_model_op(
        sim, model, "Forward" if work.forward_only else "ForwardBackward", work.seq_id, compute, commit, tokens=tokens
    )
    return future_response(record)


async def optim_step(sim: SimCore, request: Request) -> Response:
    body = decode_body(request, t.OptimStepRequest)
    note_seq(request, body.model_id, body.seq_id)
    model = sim.state.model(body.model_id)
    params: AdamParams | DimuonParams
    if body.optimizer_params is not None:
        p = body.optimizer_params
        params = DimuonParams(learning_rate=p.learning_rate, grad_clip_norm=p.grad_clip_norm, beta1=p.beta1)
    else:
        a = body.adam_params or t.AdamParams()
        params = AdamParams(
            learning_rate=a.learning_rate,
            beta1=a.beta1,
            beta2=a.beta2,
            eps=a.eps,
            weight_decay=a.weight_decay,
            grad_clip_norm=a.grad_clip_norm,
        )

    def compute(lora: LoraModel) -> dict[str, float]:
        return lora.optim_step(params)

    def commit(metrics: dict[str, float]) -> t.OptimStepResponse:
        model.steps_applied += 1
        return t.OptimStepResponse(metrics=metrics)

    record = submit_model_op(sim, model, "OptimStep", body.seq_id, compute, commit)
    return future_response(record)
