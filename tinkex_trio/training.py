"""TrainingClient: forward/backward passes, optimizer steps and checkpoints of one LoRA model (protocol §3.2, §8).

A TrainingClient is made by the session (``await session.create_lora_training_client(...)`` or
``await session.create_training_client_from_state(path)``) and lives as long as it::

    out = await trainer.forward_backward(data, "cross_entropy")      # submit, then wait for the result
    step = await trainer.optim_step(tx.AdamParams(learning_rate=1e-4))

    fwd = await trainer.submit_forward_backward(data, "cross_entropy")  # returns once the server accepted it
    opt = await trainer.submit_optim_step(adam)                         # pipelined behind it
    out, step = await fwd.result(), await opt.result()

Sequencing. Every operation on a model carries a ``seq_id`` (1, 2, 3, … per model; the model's creation is the
implicit 0) and the server runs a model's operations in ``seq_id`` order. The client submits them strictly in that
order: one submission at a time holds the client's turn (a FIFO lock), takes the next ids and returns the turn as
soon as the server has *accepted* the request, not when its result is ready, so a forward_backward and the
optim_step behind it are pipelined. Concurrent callers get increasing ids in the order they called.

Sequence integrity (think like the server: it runs a model's ids in order and waits for a missing one). A call refused
before it is sent (bad arguments, the circuit breaker, a body that cannot be encoded) takes no id; neither does a
caller cancelled while it waits for its turn. Once sent, a request is *committed*: it is retried with the same id and
idempotency key (the server answers a re-send from its first result), its retries are not cut short by the breaker,
and an answer that cannot be read is re-sent rather than reported. It ends *accepted* (a future), *refused* (the
server's 4xx verdict, which uses its id up on the server too), or *in doubt*: its retries ended without a verdict, or
the caller was cancelled while it was being sent. In doubt, the client refuses every later call with
:class:`~tinkex_trio.errors.SequenceInDoubtError` (nothing is sent, nothing silently waits on the hole) until
:meth:`TrainingClient.resend_in_doubt` re-sends the same ids and settles them.

Chunking. forward / forward_backward split their data (``client_config.fwdbwd_max_chunk_len`` datums and
``fwdbwd_max_chunk_bytes_count`` estimated bytes per chunk); each chunk gets its own ``seq_id`` and future, chunks are
sent concurrently with the first chunk last when ``parallel_fwdbwd_chunks`` is on, and the results are combined
(outputs concatenated in order, metrics merged by their ``name:reduction`` keys). The first chunk goes out whatever
became of the others, so every id is settled; a call some chunks of which were applied and others not raises
:class:`~tinkex_trio.errors.PartiallyAppliedError` naming both datum ranges.

Batching (``config.batching``, :mod:`tinkex_trio._batching`). ``forward_backward_batch`` merges consecutive items with
the same built-in loss and config into one request while they fit one chunk, and splits the result back per item
(each with its own exact ``loss:sum``). With ``batching.coalesce`` (opt-in) concurrent ``forward_backward`` calls wait
up to ``window_ms`` in a per-client batch window and are merged the same way. Every call takes a ticket when it is
made, and the holder of the turn first submits the window's older calls, so nothing is reordered (never across an
optim_step).

Wire format. With ``config.wire_format == "proto"`` the forward_backward body is protobuf and results are asked for as
protobuf (a JSON answer is still understood); with ``"json"`` both are JSON.
"""

# The underscore members of Session (_transport, _futures, _check_alive, the seq-id counters) are the internal
# contract between the client modules (notes/CLIENT_CONTRACT.md), so this module uses them by design.
# pyright: reportPrivateUsage=false

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx
import msgspec
import trio

from tinkex_trio import types
from tinkex_trio._batching import PlannedRequest, WorkItem, item_output, plan_requests, split_output
from tinkex_trio._chunking import combine_metrics, estimate_datum_bytes, plan_chunks
from tinkex_trio._config import BatchingConfig
from tinkex_trio._endpoints import API_PREFIX as _API
from tinkex_trio._proto._codec import (
    PROTOBUF_CONTENT_TYPE,
    decode_forward_backward_output,
    encode_forward_backward_request,
)
from tinkex_trio._sequencing import Delivery, ModelSequence, partial_results
from tinkex_trio._telemetry import (
    BATCH_FORWARD_BACKWARD_START,
    BATCH_FORWARD_BACKWARD_STOP,
    BATCH_OPTIM_STEP_START,
    BATCH_OPTIM_STEP_STOP,
)
from tinkex_trio._transport import PoolKind
from tinkex_trio._validation import (
    check_bool,
    check_fwdbwd,
    check_fwdbwd_items,
    check_name,
    check_optimizer_params,
    check_optimizer_params_list,
    check_path,
    check_ttl,
)
from tinkex_trio.errors import APIConnectionError, ResponseValidationError, SessionClosedError
from tinkex_trio.sampling import SamplingClient

if TYPE_CHECKING:
    from tinkex_trio._futures import APIFuture
    from tinkex_trio._session import Session

__all__ = ["TrainingClient"]

T = TypeVar("T")

_JSON = "application/json"

# Loss functions the server knows (spec §4); any other string is passed through for the server to judge.
LossFn = types.LossFnType | str
LossFnConfig = Mapping[str, float | str]
#: One forward_backward_batch item: ``(data, loss_fn, loss_fn_config)``.
FwdBwdItem = tuple[Sequence[types.Datum], LossFn, LossFnConfig | None]


# --------------------------------------------------------------------------------------------------------------------
# Decoding results
# --------------------------------------------------------------------------------------------------------------------


def _is_protobuf(response: httpx.Response) -> bool:
    return PROTOBUF_CONTENT_TYPE in response.headers.get("content-type", "").lower()


def _request_id(response: httpx.Response) -> str | None:
    return response.headers.get("x-request-id")


def _json_decoder(type_: type[T]) -> Callable[[httpx.Response], T]:
    """A future decoder for a result that is always JSON."""

    def decode(response: httpx.Response) -> T:
        return types.decode(type_, response.content, request_id=_request_id(response))

    return decode


def _decode_fwdbwd(response: httpx.Response) -> types.ForwardBackwardOutput:
    """A forward / forward_backward result: protobuf when the server sent protobuf, else JSON."""
    if _is_protobuf(response):
        return decode_forward_backward_output(response.content)
    return types.decode(types.ForwardBackwardOutput, response.content, request_id=_request_id(response))


def combine_fwdbwd_outputs(
    outputs: Sequence[types.ForwardBackwardOutput], datum_counts: Sequence[int]
) -> types.ForwardBackwardOutput:
    """Merge the per-chunk results of one forward / forward_backward call (protocol §8).

    ``loss_fn_outputs`` are concatenated in chunk order, ``loss_fn_output_type`` is the first chunk's, and the metrics
    are merged by :func:`~tinkex_trio._chunking.combine_metrics` weighted by ``datum_counts``. The combiner runs even
    for one chunk (keys with an unknown reduction are dropped, as the official SDK does).
    """
    if not outputs:
        raise ValueError("no chunk results to combine")
    loss_fn_outputs: list[types.LossFnOutput] = []
    for out in outputs:
        loss_fn_outputs.extend(out.loss_fn_outputs)
    metrics = combine_metrics([out.metrics for out in outputs], datum_counts)
    return types.ForwardBackwardOutput(
        loss_fn_output_type=outputs[0].loss_fn_output_type, loss_fn_outputs=loss_fn_outputs, metrics=metrics
    )


# --------------------------------------------------------------------------------------------------------------------
# Chunk planning
# --------------------------------------------------------------------------------------------------------------------

_DTYPE_BYTES = {"float32": 4, "int64": 8}


def _datum_bytes(datum: types.Datum) -> int:
    """The official SDK's estimate of a datum's protobuf size (tokens, raw image/audio bytes, tensor bytes)."""
    tokens = 0
    raw = 0
    for chunk in datum.model_input.chunks:
        if isinstance(chunk, types.EncodedTextChunk):
            tokens += len(chunk.tokens)
        elif isinstance(chunk, types.ImageChunk):
            raw += len(chunk.data)
        elif isinstance(chunk, types.DmelChunk):
            raw += len(chunk.dmel)
        else:
            raw += len(chunk.location)
    tensor_bytes = 0
    sparse_indices = 0
    for td in datum.loss_fn_inputs.values():
        tensor_bytes += len(td.data) * _DTYPE_BYTES.get(td.dtype, 8)
        sparse_indices += len(td.sparse_crow_indices or ()) + len(td.sparse_col_indices or ())
    return estimate_datum_bytes(
        token_count=tokens, tensor_bytes=tensor_bytes, sparse_index_count=sparse_indices, raw_bytes=raw
    )


# --------------------------------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------------------------------


class TrainingClient:
    """One trainable LoRA model on the Tinker service.

    Made by :meth:`Session.create_lora_training_client` or :meth:`Session.create_training_client_from_state`; do not
    construct it directly. Safe to share between tasks: submissions are ordered by a FIFO turn (see the module
    docstring), and the results of concurrent calls are independent.

    Attributes:
        model_id: the server's id of the model (also the training run id), e.g. ``"<session_id>:train:0"``.
    """

    model_id: str

    def __init__(
        self,
        session: Session,
        model_id: str,
        *,
        model_seq_id: int,
        info: types.GetInfoResponse | None = None,
    ) -> None:
        self._session = session
        self.model_id = model_id
        self._model_seq_id = model_seq_id
        self._info = info
        # The FIFO turn: whoever holds it takes the next seq_ids and submits; released once the POSTs returned.
        self._turn = trio.StrictFIFOLock()
        self._sequence = ModelSequence(session._transport, model_id)
        # Every ordered call takes the next ticket when it is made; the turn submits calls in ticket order, so work
        # waiting in the batch window is never reordered across a later call (see _ordered_turn).
        self._last_ticket = 0
        self._window: _BatchWindow | None = None

    def __repr__(self) -> str:
        return f"<TrainingClient model_id={self.model_id!r}>"

    # -- creation -------------------------------------------------------------------------------------------------

    @classmethod
    async def _create_lora(
        cls,
        session: Session,
        base_model: str,
        rank: int,
        *,
        seed: int | None,
        train_mlp: bool,
        train_attn: bool,
        train_unembed: bool,
        user_metadata: Mapping[str, Any] | None,
    ) -> TrainingClient:
        """Create a LoRA model (create_model with the session's next ``model_seq_id``), wait for it, fetch its info."""
        session._check_alive()
        model_seq_id = session._next_model_seq_id()
        request = types.CreateModelRequest(
            session_id=session.session_id,
            model_seq_id=model_seq_id,
            base_model=base_model,
            user_metadata=dict(user_metadata) if user_metadata is not None else None,
            lora_config=types.LoraConfig(
                rank=rank, seed=seed, train_unembed=train_unembed, train_mlp=train_mlp, train_attn=train_attn
            ),
            optimizer_config=types.AdamOptimizerConfig(),
        )
        reply, roundtrip = await _post_future(
            session, "create_model", types.encode(request), _JSON, "Session.create_lora_training_client"
        )
        future = session._futures.track(
            reply, "CreateModel", _json_decoder(types.CreateModelResponse), create_roundtrip_s=roundtrip
        )
        created = await future.result()
        info = await _fetch_info(session, created.model_id)
        return cls(session, created.model_id, model_seq_id=model_seq_id, info=info)

    @classmethod
    async def _create_from_state(
        cls,
        session: Session,
        path: str,
        *,
        with_optimizer: bool,
        user_metadata: Mapping[str, Any] | None,
    ) -> TrainingClient:
        """Create a model from a checkpoint (create-via-load: load_weights with session_id + model_seq_id).

        The model id is ``"{session_id}:train:{model_seq_id}"``, as the official SDK builds it; the checkpoint gives
        the base model and LoRA settings.
        """
        session._check_alive()
        model_seq_id = session._next_model_seq_id()
        model_id = f"{session.session_id}:train:{model_seq_id}"
        request = types.LoadWeightsRequest(
            path=path,
            optimizer=with_optimizer,
            session_id=session.session_id,
            model_seq_id=model_seq_id,
            user_metadata=dict(user_metadata) if user_metadata is not None else None,
        )
        reply, roundtrip = await _post_future(
            session, "load_weights", types.encode(request), _JSON, "Session.create_training_client_from_state"
        )
        future = session._futures.track(
            reply, "LoadWeights", _json_decoder(types.LoadWeightsResponse), create_roundtrip_s=roundtrip
        )
        loaded = await future.result()
        if loaded.model_id is not None and loaded.model_id != model_id:
            raise ResponseValidationError(
                f"load_weights created model {loaded.model_id!r}, expected {model_id!r}", field="$.model_id"
            )
        info = await _fetch_info(session, model_id)
        return cls(session, model_id, model_seq_id=model_seq_id, info=info)

    # -- info -----------------------------------------------------------------------------------------------------

    async def get_info(self) -> types.GetInfoResponse:
        """The model's info (base model, LoRA rank, optimizer, tokenizer id), fetched once at creation and cached."""
        self._session._check_alive()
        if self._info is None:
            self._info = await _fetch_info(self._session, self.model_id)
        return self._info

    # -- forward / backward ---------------------------------------------------------------------------------------

    async def forward(
        self, data: Sequence[types.Datum], loss_fn: LossFn, loss_fn_config: LossFnConfig | None = None
    ) -> types.ForwardBackwardOutput:
        """Run the loss on ``data`` without accumulating gradients, and wait for the result.

        Returns the per-datum outputs (e.g. ``logprobs``) and the loss metrics (e.g. ``loss:sum``).
        """
        data, loss_fn, loss_fn_config = check_fwdbwd(data, loss_fn, loss_fn_config)
        future = await self.submit_forward(data, loss_fn, loss_fn_config)
        return await future.result()

    async def forward_backward(
        self, data: Sequence[types.Datum], loss_fn: LossFn, loss_fn_config: LossFnConfig | None = None
    ) -> types.ForwardBackwardOutput:
        """Run the loss on ``data`` and accumulate its gradients (applied by the next optim_step); wait for the result.

        ``loss_fn`` is a built-in loss (``cross_entropy``, ``importance_sampling``, ``ppo``, ``cispo``, ``dro``, …);
        ``loss_fn_config`` its parameters (e.g. ``{"clip_low_threshold": 0.8}``).
        """
        data, loss_fn, loss_fn_config = check_fwdbwd(data, loss_fn, loss_fn_config)
        batching = self._session.config.batching
        if batching.enabled and batching.coalesce:
            return await self._coalesced_forward_backward(data, loss_fn, loss_fn_config)
        future = await self.submit_forward_backward(data, loss_fn, loss_fn_config)
        return await future.result()

    async def submit_forward(
        self, data: Sequence[types.Datum], loss_fn: LossFn, loss_fn_config: LossFnConfig | None = None
    ) -> APIFuture[types.ForwardBackwardOutput]:
        """Submit a forward pass; return its future once the server accepted every chunk of it."""
        data, loss_fn, loss_fn_config = check_fwdbwd(data, loss_fn, loss_fn_config)
        return await self._submit_fwdbwd(data, loss_fn, loss_fn_config, forward_only=True)

    async def submit_forward_backward(
        self, data: Sequence[types.Datum], loss_fn: LossFn, loss_fn_config: LossFnConfig | None = None
    ) -> APIFuture[types.ForwardBackwardOutput]:
        """Submit a forward_backward pass; return its future once the server accepted every chunk of it.

        Later submissions on this client are ordered after it, so an optim_step submitted next applies its gradients.
        """
        data, loss_fn, loss_fn_config = check_fwdbwd(data, loss_fn, loss_fn_config)
        return await self._submit_fwdbwd(data, loss_fn, loss_fn_config, forward_only=False)

    async def forward_backward_batch(self, items: Iterable[FwdBwdItem]) -> list[types.ForwardBackwardOutput]:
        """Run several forward_backward calls in as few requests as possible; wait for every result.

        ``items`` holds ``(data, loss_fn, loss_fn_config)`` triples; the results come back in the same order, one
        per item. With ``config.batching.enabled`` (the default), consecutive items with the same built-in loss and
        an equal config are merged into one request while the merged data fit one chunk (``fwdbwd_max_chunk_len`` /
        ``fwdbwd_max_chunk_bytes_count``, ``batching.max_batch_datums`` / ``max_batch_bytes``, at most
        ``batching.max_items`` items); the gradient accumulated is the same, since the losses are sums. A merged
        item's result holds its own outputs and its exact ``loss:sum``, recomputed from them; the merged request's
        other metrics are dropped (see :mod:`tinkex_trio._batching`). Requests are submitted in order, pipelined,
        then awaited. Emits ``tinkex.batch.forward_backward.start`` / ``.stop``.
        """
        checked = check_fwdbwd_items(items)
        session = self._session
        session._check_alive()
        work = [WorkItem(data, loss_fn, config) for data, loss_fn, config in checked]
        batching = session.config.batching
        client_config = session.client_config
        plan = plan_requests(
            work,
            datum_bytes=_datum_bytes,
            max_len=max(min(client_config.fwdbwd_max_chunk_len, batching.max_batch_datums), 1),
            max_bytes=max(min(client_config.fwdbwd_max_chunk_bytes_count, batching.max_batch_bytes), 1),
            max_items=batching.max_items if batching.enabled else 1,
        )
        counts = {"items": len(work), "requests": len(plan), "datums": sum(len(w.data) for w in work)}
        with _batch_span(session, BATCH_FORWARD_BACKWARD_START, BATCH_FORWARD_BACKWARD_STOP, counts, self):
            # One turn for the whole batch: its requests get consecutive seq_ids, nothing is submitted between them.
            futures: list[APIFuture[types.ForwardBackwardOutput]] = []
            async with self._ordered_turn():
                for request in plan:
                    futures.append(
                        await self._send_fwdbwd(request.data, request.loss_fn, request.loss_fn_config, False)
                    )
            results: list[types.ForwardBackwardOutput] = []
            for request, future in zip(plan, futures, strict=True):
                results.extend(split_output(request, work, await future.result()))
        return results

    async def _submit_fwdbwd(
        self,
        data: Sequence[types.Datum],
        loss_fn: LossFn,
        loss_fn_config: LossFnConfig | None,
        *,
        forward_only: bool,
    ) -> APIFuture[types.ForwardBackwardOutput]:
        self._session._check_alive()
        data = list(data)
        if not data:
            raise ValueError("forward/forward_backward needs at least one Datum")
        async with self._ordered_turn():
            return await self._send_fwdbwd(data, loss_fn, loss_fn_config, forward_only)

    async def _send_fwdbwd(
        self,
        data: Sequence[types.Datum],
        loss_fn: LossFn,
        loss_fn_config: LossFnConfig | None,
        forward_only: bool,
    ) -> APIFuture[types.ForwardBackwardOutput]:
        """Chunk, encode and POST one forward / forward_backward call; the caller holds the turn."""
        session = self._session
        session._check_alive()
        config = dict(loss_fn_config) if loss_fn_config is not None else None
        client_config = session.client_config
        chunks = plan_chunks(
            [_datum_bytes(d) for d in data],
            max(client_config.fwdbwd_max_chunk_len, 1),
            max(client_config.fwdbwd_max_chunk_bytes_count, 1),
        )
        proto = session.config.wire_format == "proto"
        request_type = "Forward" if forward_only else "ForwardBackward"
        sdk_method = f"TrainingClient.{'forward' if forward_only else 'forward_backward'}"

        # Encode every chunk before taking its id: data the wire cannot carry fails here and uses up no seq_id.
        self._sequence.refuse_if_in_doubt()
        first = self._sequence.next_seq_id
        bodies = [
            self._fwdbwd_body(first + i, data[r.start : r.stop], loss_fn, config, forward_only, proto)
            for i, r in enumerate(chunks)
        ]
        counts = [len(r) for r in chunks]
        futures_of = session._futures

        def finish(replies: list[tuple[types.UntypedAPIFuture, float]]) -> APIFuture[types.ForwardBackwardOutput]:
            futures = [
                futures_of.track(reply, request_type, _decode_fwdbwd, accept_proto=proto, create_roundtrip_s=roundtrip)
                for reply, roundtrip in replies
            ]
            ranges = [(r.start, r.stop) for r in chunks]
            return futures_of.combine(
                futures,
                lambda outputs: combine_fwdbwd_outputs(outputs, counts),
                request_type=request_type,
                failed=None if forward_only else partial(partial_results, self.model_id, ranges),
            )

        delivery = Delivery(
            "forward" if forward_only else "forward_backward",
            "forward_backward",
            bodies,
            PROTOBUF_CONTENT_TYPE if proto else _JSON,
            sdk_method,
            [(r.start, r.stop) for r in chunks],
            finish,
            parallel=client_config.parallel_fwdbwd_chunks,
        )
        return await self._sequence.deliver_new(delivery)

    def _fwdbwd_body(
        self,
        seq_id: int,
        data: Sequence[types.Datum],
        loss_fn: LossFn,
        config: dict[str, float | str] | None,
        forward_only: bool,
        proto: bool,
    ) -> bytes:
        if proto:
            return encode_forward_backward_request(self.model_id, seq_id, data, loss_fn, config, forward_only)
        request = types.ForwardBackwardRequest(
            forward_backward_input=types.ForwardBackwardInput(
                data=list(data), loss_fn=cast("types.LossFnType", loss_fn), loss_fn_config=config
            ),
            model_id=self.model_id,
            seq_id=seq_id,
            forward_only=True if forward_only else None,
        )
        return types.encode(request)

    # -- optimizer ------------------------------------------------------------------------------------------------

    async def optim_step(self, adam: types.AdamParams | types.DimuonParams) -> types.OptimStepResponse:
        """Apply the accumulated gradients (AdamW with ``AdamParams``, Dimuon with ``DimuonParams``) and clear them.

        The optimizer family is fixed when the model is created; the parameters must match it.
        """
        adam = check_optimizer_params(adam)
        future = await self.submit_optim_step(adam)
        return await future.result()

    async def submit_optim_step(
        self, adam: types.AdamParams | types.DimuonParams
    ) -> APIFuture[types.OptimStepResponse]:
        """Submit an optimizer step; return its future once the server accepted it."""
        adam = check_optimizer_params(adam)
        self._session._check_alive()
        if isinstance(adam, types.DimuonParams):

            def build(seq_id: int) -> types.OptimStepRequest:
                return types.OptimStepRequest(model_id=self.model_id, seq_id=seq_id, optimizer_params=adam)
        else:

            def build(seq_id: int) -> types.OptimStepRequest:
                return types.OptimStepRequest(model_id=self.model_id, seq_id=seq_id, adam_params=adam)

        return await self._submit_sequenced(
            "optim_step", build, "TrainingClient.optim_step", "OptimStep", types.OptimStepResponse
        )

    async def optim_step_batch(
        self, params: Iterable[types.AdamParams | types.DimuonParams]
    ) -> list[types.OptimStepResponse]:
        """Run several optimizer steps, pipelined: submit them all in order, then wait for every result.

        Optimizer steps are never merged (each applies and clears the gradients). Emits
        ``tinkex.batch.optim_step.start`` / ``.stop``.
        """
        steps = check_optimizer_params_list(params)
        session = self._session
        session._check_alive()
        counts = {"items": len(steps), "requests": len(steps)}
        with _batch_span(session, BATCH_OPTIM_STEP_START, BATCH_OPTIM_STEP_STOP, counts, self):
            futures = [await self.submit_optim_step(p) for p in steps]
            return [await future.result() for future in futures]

    # -- checkpoints ----------------------------------------------------------------------------------------------

    async def save_state(self, name: str, *, ttl_seconds: int | None = None) -> str:
        """Save the weights and optimizer state as checkpoint ``name``; return its tinker path.

        The path is ``tinker://<model_id>/weights/<name>``; load it with :meth:`load_state` or
        :meth:`Session.create_training_client_from_state`. ``ttl_seconds`` makes the checkpoint expire.
        """
        name, ttl_seconds = check_name(name), check_ttl(ttl_seconds)
        self._session._check_alive()

        def build(seq_id: int) -> types.SaveWeightsRequest:
            return types.SaveWeightsRequest(model_id=self.model_id, path=name, seq_id=seq_id, ttl_seconds=ttl_seconds)

        future = await self._submit_sequenced(
            "save_weights", build, "TrainingClient.save_state", "SaveWeights", types.SaveWeightsResponse
        )
        return (await future.result()).path

    async def load_state(self, path: str, *, with_optimizer: bool = True) -> None:
        """Load a checkpoint saved by :meth:`save_state` into this model (in place), in turn with other operations.

        ``with_optimizer=False`` loads the weights only and keeps this model's optimizer state.
        """
        path, with_optimizer = check_path(path), check_bool(with_optimizer, "with_optimizer")
        self._session._check_alive()

        def build(seq_id: int) -> types.LoadWeightsRequest:
            return types.LoadWeightsRequest(path=path, optimizer=with_optimizer, model_id=self.model_id, seq_id=seq_id)

        future = await self._submit_sequenced(
            "load_weights", build, "TrainingClient.load_state", "LoadWeights", types.LoadWeightsResponse
        )
        await future.result()

    async def save_weights_for_sampler(self, name: str, *, ttl_seconds: int | None = None) -> str:
        """Save the weights for sampling as ``name``; return the tinker path (``…/sampler_weights/<name>``).

        Sample from it with ``session.create_sampling_client(model_path=path)``.
        """
        name, ttl_seconds = check_name(name), check_ttl(ttl_seconds)
        self._session._check_alive()

        def build(seq_id: int) -> types.SaveWeightsForSamplerRequest:
            return types.SaveWeightsForSamplerRequest(
                model_id=self.model_id, path=name, seq_id=seq_id, ttl_seconds=ttl_seconds
            )

        future = await self._submit_sequenced(
            "save_weights_for_sampler",
            build,
            "TrainingClient.save_weights_for_sampler",
            "SaveWeightsForSampler",
            types.SaveWeightsForSamplerResponse,
        )
        result = await future.result()
        if result.path is None:
            raise ResponseValidationError("save_weights_for_sampler answered without a path", field="$.path")
        return result.path

    async def save_weights_and_get_sampling_client(self, name: str | None = None) -> SamplingClient:
        """Save the current weights and return a SamplingClient that samples from them.

        Without ``name`` the save is ephemeral (no checkpoint is kept): the server creates the sampling session
        directly. With ``name`` the weights are saved as a sampler checkpoint (see :meth:`save_weights_for_sampler`)
        and the sampling client is created from its path.
        """
        name = check_name(name) if name is not None else None
        session = self._session
        session._check_alive()
        if name is not None:
            path = await self.save_weights_for_sampler(name)
            return await SamplingClient._create(session, model_path=path)

        def build(seq_id: int) -> types.SaveWeightsForSamplerRequest:
            # Taken in turn, once per logical request: retries re-send the same body.
            return types.SaveWeightsForSamplerRequest(
                model_id=self.model_id,
                seq_id=seq_id,
                sampling_session_seq_id=session._next_sampling_session_seq_id(),
                kind="snapshot",
            )

        future = await self._submit_sequenced(
            "save_weights_for_sampler",
            build,
            "TrainingClient.save_weights_and_get_sampling_client",
            "SaveWeightsForSampler",
            types.SaveWeightsForSamplerResponse,
        )
        result = await future.result()
        if result.sampling_session_id is None:
            raise ResponseValidationError(
                "save_weights_for_sampler answered without a sampling_session_id", field="$.sampling_session_id"
            )
        base_model = self._info.model_data.model_name if self._info is not None else None
        return await SamplingClient._create(
            session, base_model=base_model, sampling_session_id=result.sampling_session_id
        )

    # -- submission -----------------------------------------------------------------------------------------------

    async def _submit_sequenced(
        self,
        endpoint: str,
        build: Callable[[int], msgspec.Struct],
        sdk_method: str,
        request_type: str,
        result_type: type[T],
    ) -> APIFuture[T]:
        """Take the turn and the next seq_id, POST the request built for it, release the turn once it is accepted."""
        async with self._ordered_turn():
            body = types.encode(build(self._sequence.next_seq_id))
            decode = _json_decoder(result_type)

            def finish(replies: list[tuple[types.UntypedAPIFuture, float]]) -> APIFuture[T]:
                (reply, roundtrip) = replies[0]
                return self._session._futures.track(reply, request_type, decode, create_roundtrip_s=roundtrip)

            delivery = Delivery(endpoint, endpoint, [body], _JSON, sdk_method, [(0, 0)], finish)
            return await self._sequence.deliver_new(delivery)

    @property
    def in_doubt(self) -> tuple[int, ...]:
        """The seq_ids whose delivery is unknown (empty when the client can go on); see :meth:`resend_in_doubt`."""
        return self._sequence.in_doubt

    async def resend_in_doubt(self) -> APIFuture[Any] | None:
        """Settle the operation whose delivery is unknown, so that the client can go on.

        Re-sends the same ``(model_id, seq_id)`` requests with the same bodies and idempotency keys: the server
        answers a re-send from its first result, so the operation is applied exactly once whether or not the first
        attempt arrived. Returns the operation's future (e.g. an ``APIFuture[OptimStepResponse]``), or ``None`` if
        nothing is in doubt. If the re-send fails again without an answer, it raises
        :class:`~tinkex_trio.errors.SequenceInDoubtError` and the client stays in doubt; CircuitOpenError leaves it
        unchanged.
        """
        self._session._check_alive()
        async with self._ordered_turn():
            return await self._sequence.resend_in_doubt()

    def _take_ticket(self) -> int:
        self._last_ticket += 1
        return self._last_ticket

    @asynccontextmanager
    async def _ordered_turn(self) -> AsyncGenerator[None]:
        """Take a ticket, then the turn; first submit the batch window's work queued before this call.

        The ticket is taken and the FIFO lock queued for without a checkpoint in between, so holders of the turn come
        in ticket order, and each one first submits the window's work with a smaller ticket: everything reaches the
        server in the order it was called, and nothing queued later jumps ahead (e.g. across an optim_step).
        """
        ticket = self._take_ticket()
        async with self._turn:
            if self._window is not None:
                await self._window.submit_before(ticket)
            yield

    # -- the batch window (opt-in: config.batching.coalesce) ------------------------------------------------------

    def _batch_window(self) -> _BatchWindow:
        if self._window is None:
            window = _BatchWindow(self)
            self._session._spawn(window.run, f"tinkex_trio.batch_window[{self.model_id}]")
            self._window = window
        return self._window

    async def _coalesced_forward_backward(
        self, data: Sequence[types.Datum], loss_fn: LossFn, loss_fn_config: LossFnConfig | None
    ) -> types.ForwardBackwardOutput:
        """forward_backward through the batch window: queue the call, wait until its request is accepted, then for
        its result, and take this call's share of it."""
        self._session._check_alive()
        item = WorkItem(list(data), loss_fn, dict(loss_fn_config) if loss_fn_config is not None else None)
        if not item.data:
            raise ValueError("forward/forward_backward needs at least one Datum")
        window = self._batch_window()
        slot = _Slot(self._take_ticket(), item, trio.current_time())
        window.add(slot)
        try:
            await slot.done.wait()
        except BaseException:
            # Cancelled while queued: it never reaches the server. Once taken, it runs there anyway (as any submitted
            # call does) and only this wait ends.
            window.discard(slot)
            raise
        if slot.error is not None:
            raise slot.error
        assert slot.future is not None and slot.request is not None
        output = await slot.future.result()
        return item_output(slot.request, slot.batch, output, slot.position)


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


async def _post_future(
    session: Session, endpoint: str, body: bytes, content_type: str, sdk_method: str
) -> tuple[types.UntypedAPIFuture, float]:
    """POST a future-returning request on the training pool; return the future reply and the round trip (s).

    The transport retries it per the policy, with one idempotency key for every attempt (and the same seq_id).
    """
    started = trio.current_time()
    reply = await session._transport.request_json(
        types.UntypedAPIFuture,
        PoolKind.TRAINING,
        "POST",
        f"{_API}/{endpoint}",
        content=body,
        content_type=content_type,
        sdk_method=sdk_method,
    )
    return reply, trio.current_time() - started


@dataclass(eq=False)
class _Slot:
    """One forward_backward call waiting in the batch window, and what it gets once its request is accepted."""

    ticket: int
    item: WorkItem
    arrived: float
    done: trio.Event = field(default_factory=trio.Event)
    taken: bool = False
    batch: Sequence[WorkItem] = ()
    request: PlannedRequest | None = None
    position: int = 0
    future: APIFuture[types.ForwardBackwardOutput] | None = None
    error: Exception | None = None


class _BatchWindow:
    """Coalesces concurrent forward_backward calls of one TrainingClient (DESIGN §2, ``batching.coalesce``).

    Calls queue here with their ticket. The window's task (in the session's nursery) submits the queue
    ``window_ms`` after its oldest call arrived, or at once when ``max_items`` calls are waiting; any other call on
    the client submits the queued calls older than itself first (:meth:`TrainingClient._ordered_turn`). Submitting
    plans merged requests (:func:`~tinkex_trio._batching.plan_requests`) and hands every call its request's future.
    """

    def __init__(self, client: TrainingClient) -> None:
        self._client = client
        self._pending: list[_Slot] = []
        self._wake = trio.Event()
        self._full = trio.Event()

    @property
    def _config(self) -> BatchingConfig:
        return self._client._session.config.batching

    def add(self, slot: _Slot) -> None:
        self._pending.append(slot)
        self._wake.set()
        if len(self._pending) >= self._config.max_items:
            self._full.set()

    def discard(self, slot: _Slot) -> None:
        if not slot.taken and slot in self._pending:
            self._pending.remove(slot)

    async def run(self) -> None:
        """Submit the queue when its window closes; runs for the life of the session (cancelled with its nursery)."""
        client = self._client
        try:
            while True:
                if not self._pending:
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                with trio.move_on_at(self._pending[0].arrived + self._config.window_ms / 1000.0):
                    await self._full.wait()
                ticket = client._take_ticket()
                async with client._turn:
                    await self.submit_before(ticket)
        finally:
            closed = SessionClosedError(f"session {client._session.session_id!r} closed before the call was sent")
            for slot in self._pending:
                slot.error = closed
                slot.done.set()
            self._pending.clear()

    async def submit_before(self, ticket: int) -> None:
        """Submit the queued calls with a ticket below ``ticket``, in order, as merged requests (the turn is held)."""
        slots = [s for s in self._pending if s.ticket < ticket]
        if not slots:
            return
        self._pending = [s for s in self._pending if s.ticket >= ticket]
        if len(self._pending) < self._config.max_items:
            self._full = trio.Event()
        client = self._client
        session = client._session
        batching = self._config
        batch = [s.item for s in slots]
        client_config = session.client_config
        plan = plan_requests(
            batch,
            datum_bytes=_datum_bytes,
            max_len=max(min(client_config.fwdbwd_max_chunk_len, batching.max_batch_datums), 1),
            max_bytes=max(min(client_config.fwdbwd_max_chunk_bytes_count, batching.max_batch_bytes), 1),
            max_items=batching.max_items,
        )
        for slot in slots:
            slot.taken = True
            slot.batch = batch
        counts = {"items": len(batch), "requests": len(plan), "datums": sum(len(w.data) for w in batch)}
        with _batch_span(session, BATCH_FORWARD_BACKWARD_START, BATCH_FORWARD_BACKWARD_STOP, counts, client):
            for done, request in enumerate(plan):
                mine = [slots[i] for i in request.items]
                try:
                    future = await client._send_fwdbwd(request.data, request.loss_fn, request.loss_fn_config, False)
                except Exception as exc:
                    for position, slot in enumerate(mine):
                        slot.request, slot.position, slot.error = request, position, exc
                        slot.done.set()
                    continue
                except BaseException:
                    # Cancelled mid-submission: this request may or may not have reached the server; the later ones
                    # did not, and go back to the front of the queue, still ahead of every later call.
                    cut = APIConnectionError("the batched forward_backward was cancelled while it was being sent")
                    for slot in mine:
                        slot.error = cut
                        slot.done.set()
                    later = [slots[i] for r in plan[done + 1 :] for i in r.items]
                    for slot in later:
                        slot.taken = False
                    self._pending[:0] = later
                    raise
                for position, slot in enumerate(mine):
                    slot.request, slot.position, slot.future = request, position, future
                    slot.done.set()


@contextmanager
def _batch_span(
    session: Session, start_event: str, stop_event: str, counts: Mapping[str, int], client: TrainingClient
) -> Generator[None]:
    """Emit ``start_event`` now and ``stop_event`` when the block ends, however it ends.

    Both carry ``counts`` as measurements (items, requests, datums); the stop event adds ``duration_ms`` and the
    metadata ``outcome``: ``"ok"``, ``"error"`` (with ``error``, the exception's class name) or ``"cancelled"``.
    """
    telemetry = session.telemetry
    metadata: dict[str, str | int | float | bool | None] = {"model_id": client.model_id}
    started = trio.current_time()
    telemetry.emit(start_event, {**counts}, metadata, time=started)
    outcome: dict[str, str | int | float | bool | None] = {"outcome": "ok"}
    try:
        yield
    except Exception as exc:
        outcome = {"outcome": "error", "error": type(exc).__name__}
        raise
    except BaseException:
        outcome = {"outcome": "cancelled"}
        raise
    finally:
        ended = trio.current_time()
        telemetry.emit(
            stop_event, {**counts, "duration_ms": (ended - started) * 1000.0}, {**metadata, **outcome}, time=ended
        )


async def _fetch_info(session: Session, model_id: str) -> types.GetInfoResponse:
    """get_info (direct answer), with ``model_data.tokenizer_id`` cut at its first ``:`` as the official SDK does."""
    info = await session._transport.request_json(
        types.GetInfoResponse,
        PoolKind.TRAINING,
        "POST",
        f"{_API}/get_info",
        json=types.GetInfoRequest(model_id=model_id),
        sdk_method="TrainingClient.get_info",
    )
    tokenizer_id = info.model_data.tokenizer_id
    if tokenizer_id and ":" in tokenizer_id:
        model_data = msgspec.structs.replace(info.model_data, tokenizer_id=tokenizer_id.split(":", 1)[0])
        info = msgspec.structs.replace(info, model_data=model_data)
    return info
