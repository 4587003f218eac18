"""The ordered submission of one model's calls: :class:`ModelSubmitter`, behind every :class:`TrainingClient` method
that reaches the server.

Sequencing. Every operation on a model carries a ``seq_id`` (1, 2, 3, … per model; the model's creation is the
implicit 0) and the server runs a model's operations in ``seq_id`` order. The client submits them strictly in that
order: one submission at a time holds the model's turn (a FIFO lock), takes the next ids and returns the turn as
soon as the server has *accepted* the request, not when its result is ready, so a forward_backward and the
optim_step behind it are pipelined. Concurrent callers get increasing ids in the order they called: every call takes
a ticket when it is made, and the holder of the turn first submits the batch window's calls with smaller tickets.

Sequence integrity (think like the server: it runs a model's ids in order and waits for a missing one). A call refused
before it is sent (bad arguments, the circuit breaker, a body that cannot be encoded) takes no id; neither does a
caller cancelled while it waits for its turn. Once sent, a request is *committed*: it is retried with the same id and
idempotency key (the server answers a re-send from its first result), its retries are not cut short by the breaker,
and an answer that cannot be read is re-sent rather than reported. It ends *accepted* (a future), *refused* (the
server's 4xx verdict, which uses its id up on the server too), or *in doubt*: its retries ended without a verdict, or
the caller was cancelled while it was being sent. In doubt, the model refuses every later call with
:class:`~tinkex_trio.errors.SequenceInDoubtError` (nothing is sent, nothing silently waits on the hole) until
:meth:`ModelSubmitter.resend_in_doubt` re-sends the same ids and settles them. A client-side custom loss (a forward,
the user's function, then the forward_backward with its gradients) that fails between its two calls *halts* the
model: work queued behind it expected its gradients, so every later call raises
:class:`~tinkex_trio.errors.TrainingHaltedError` until ``TrainingClient.resume`` (``ModelSequence.resume``).

Chunking. forward / forward_backward split their data (``client_config.fwdbwd_max_chunk_len`` datums and
``fwdbwd_max_chunk_bytes_count`` estimated bytes per chunk); each chunk gets its own ``seq_id`` and future, chunks are
sent concurrently with the first chunk last when ``parallel_fwdbwd_chunks`` is on, and the results are combined
(outputs concatenated in order, metrics merged by their ``name:reduction`` keys). The first chunk goes out whatever
became of the others, so every id is settled; a call some chunks of which were applied and others not raises
:class:`~tinkex_trio.errors.PartiallyAppliedError` naming both datum ranges.

Batching (``config.batching``, :mod:`tinkex_trio._batching`). A batch of forward_backward items is planned into merged
requests (consecutive items with the same built-in loss and config, while they fit one chunk), sent in one turn and
split back per item, each with its own exact ``loss:sum``. With ``batching.coalesce`` (opt-in) concurrent
``forward_backward`` calls wait up to ``window_ms`` in a per-model batch window and are merged the same way; nothing
is reordered (never across an optim_step).

Wire format. With ``config.wire_format == "proto"`` the forward_backward body is protobuf and results are asked for as
protobuf (a JSON answer is still understood); with ``"json"`` both are JSON.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

import msgspec
import trio

from tinkex_trio import types
from tinkex_trio._batching import (
    BatchWindow,
    PlannedRequest,
    WindowRoutes,
    WindowSlot,
    WorkItem,
    item_output,
    plan_requests,
)
from tinkex_trio._chunking import combine_fwdbwd_outputs, datum_bytes, plan_chunks
from tinkex_trio._context import SessionContext
from tinkex_trio._proto._codec import PROTOBUF_CONTENT_TYPE, encode_forward_backward_request
from tinkex_trio._results import decode_fwdbwd, json_decoder
from tinkex_trio._sequencing import Delivery, ModelSequence, partial_results
from tinkex_trio._telemetry import BATCH_FORWARD_BACKWARD
from tinkex_trio.errors import TinkexError

if TYPE_CHECKING:
    from tinkex_trio._futures import APIFuture

__all__ = ["FwdBwdItem", "LossFn", "LossFnConfig", "ModelSubmitter", "settled"]

T = TypeVar("T")

_JSON = "application/json"

# Loss functions the server knows (spec §4); any other string is passed through for the server to judge.
LossFn = types.LossFnType | str
LossFnConfig = Mapping[str, float | str]
#: One forward_backward_batch item: ``(data, loss_fn, loss_fn_config)``.
FwdBwdItem = tuple[Sequence[types.Datum], LossFn, LossFnConfig | None]


def settled(results: list[T | Exception], return_exceptions: bool) -> list[T | TinkexError]:
    """A batch's per-item outcomes, every request of it settled: the list (``return_exceptions``), or the first
    failure raised. An exception that is not a TinkexError (a bug) is raised either way."""
    for outcome in results:
        if isinstance(outcome, Exception) and not isinstance(outcome, TinkexError):
            raise outcome
    if not return_exceptions:
        for outcome in results:
            if isinstance(outcome, Exception):
                raise outcome
    return cast("list[T | TinkexError]", results)


class ModelSubmitter:
    """The turn, the tickets, the seq_ids (:class:`~tinkex_trio._sequencing.ModelSequence`) and the batch window of
    one model (see the module docstring). Every method that sends is called in the owning session's trio run.

    Args:
        ctx: the session's context (transport, futures, config, the nursery the batch window runs in).
        model_id: the model.
    """

    def __init__(self, ctx: SessionContext, model_id: str) -> None:
        self._ctx = ctx
        self.model_id = model_id
        # The FIFO turn: whoever holds it takes the next seq_ids and submits; released once the POSTs returned.
        self._turn = trio.StrictFIFOLock()
        self.sequence = ModelSequence(ctx.transport, model_id)
        # Every ordered call takes the next ticket when it is made; the turn submits calls in ticket order, so work
        # waiting in the batch window is never reordered across a later call (see ordered_turn).
        self._last_ticket = 0
        self._window: BatchWindow | None = None

    def __repr__(self) -> str:
        return f"<ModelSubmitter model_id={self.model_id!r} next_seq_id={self.sequence.next_seq_id}>"

    # -- the turn -------------------------------------------------------------------------------------------------

    def _take_ticket(self) -> int:
        self._last_ticket += 1
        return self._last_ticket

    @asynccontextmanager
    async def ordered_turn(self) -> AsyncGenerator[None]:
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

    # -- forward / forward_backward -------------------------------------------------------------------------------

    async def submit_fwdbwd(
        self,
        data: Sequence[types.Datum],
        loss_fn: LossFn,
        loss_fn_config: LossFnConfig | None,
        *,
        forward_only: bool,
    ) -> APIFuture[types.ForwardBackwardOutput]:
        """Take the turn and :meth:`send_fwdbwd`."""
        self._ctx.check_alive()
        data = list(data)
        if not data:
            raise ValueError("forward/forward_backward needs at least one Datum")
        async with self.ordered_turn():
            return await self.send_fwdbwd(data, loss_fn, loss_fn_config, forward_only)

    async def send_fwdbwd(
        self,
        data: Sequence[types.Datum],
        loss_fn: LossFn,
        loss_fn_config: LossFnConfig | None,
        forward_only: bool,
    ) -> APIFuture[types.ForwardBackwardOutput]:
        """Chunk, encode and POST one forward / forward_backward call; the caller holds the turn."""
        ctx = self._ctx
        ctx.check_alive()
        config = dict(loss_fn_config) if loss_fn_config is not None else None
        client_config = ctx.client_config
        chunks = plan_chunks(
            [datum_bytes(d) for d in data],
            max(client_config.fwdbwd_max_chunk_len, 1),
            max(client_config.fwdbwd_max_chunk_bytes_count, 1),
        )
        proto = ctx.config.wire_format == "proto"
        request_type = "Forward" if forward_only else "ForwardBackward"
        sdk_method = f"TrainingClient.{'forward' if forward_only else 'forward_backward'}"

        # Encode every chunk before taking its id: data the wire cannot carry fails here and uses up no seq_id.
        self.sequence.refuse_if_stopped()
        first = self.sequence.next_seq_id
        bodies = [
            self._fwdbwd_body(first + i, data[r.start : r.stop], loss_fn, config, forward_only, proto)
            for i, r in enumerate(chunks)
        ]
        counts = [len(r) for r in chunks]
        futures_of = ctx.futures

        def finish(replies: list[tuple[types.UntypedAPIFuture, float]]) -> APIFuture[types.ForwardBackwardOutput]:
            futures = [
                futures_of.track(reply, request_type, decode_fwdbwd, accept_proto=proto, create_roundtrip_s=roundtrip)
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
        return await self.sequence.deliver_new(delivery)

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

    # -- other sequenced operations -------------------------------------------------------------------------------

    async def submit_sequenced(
        self,
        endpoint: str,
        build: Callable[[int], msgspec.Struct],
        sdk_method: str,
        request_type: str,
        result_type: type[T],
    ) -> APIFuture[T]:
        """Take the turn and the next seq_id, POST the request built for it, release the turn once it is accepted."""
        async with self.ordered_turn():
            body = types.encode(build(self.sequence.next_seq_id))
            decode = json_decoder(result_type)

            def finish(replies: list[tuple[types.UntypedAPIFuture, float]]) -> APIFuture[T]:
                (reply, roundtrip) = replies[0]
                return self._ctx.futures.track(reply, request_type, decode, create_roundtrip_s=roundtrip)

            delivery = Delivery(endpoint, endpoint, [body], _JSON, sdk_method, [(0, 0)], finish)
            return await self.sequence.deliver_new(delivery)

    async def resend_in_doubt(self) -> APIFuture[Any] | None:
        """In turn, re-send the operation in doubt (see :meth:`ModelSequence.resend_in_doubt`)."""
        self._ctx.check_alive()
        async with self.ordered_turn():
            return await self.sequence.resend_in_doubt()

    # -- batches --------------------------------------------------------------------------------------------------

    def plan_batch(self, items: Sequence[WorkItem], *, max_items: int) -> list[PlannedRequest]:
        """Plan merged requests within the server's chunk limits and ``config.batching``'s."""
        batching = self._ctx.config.batching
        client_config = self._ctx.client_config
        return plan_requests(
            items,
            datum_bytes=datum_bytes,
            max_len=max(min(client_config.fwdbwd_max_chunk_len, batching.max_batch_datums), 1),
            max_bytes=max(min(client_config.fwdbwd_max_chunk_bytes_count, batching.max_batch_bytes), 1),
            max_items=max_items,
        )

    def batch_span(self, prefix: str, counts: Mapping[str, int]) -> AbstractContextManager[object]:
        """``tinkex.batch.*.start`` / ``.stop`` around a batch: its counts (items, requests, datums) as measurements,
        the model as metadata, and the stop event's ``outcome``."""
        measurements = {k: float(v) for k, v in counts.items()}
        return self._ctx.telemetry.span(prefix, {"model_id": self.model_id}, measurements=measurements, outcome=True)

    async def run_batch(
        self, work: Sequence[WorkItem], *, max_items: int, return_exceptions: bool
    ) -> list[types.ForwardBackwardOutput | TinkexError]:
        """Plan ``work`` into merged requests, send them in one turn (consecutive seq_ids; nothing more after a
        failure unless ``return_exceptions``), await every one sent, and split the outputs back per item."""
        plan = self.plan_batch(work, max_items=max_items)
        counts = {"items": len(work), "requests": len(plan), "datums": sum(len(w.data) for w in work)}
        with self.batch_span(BATCH_FORWARD_BACKWARD, counts):
            sent: list[APIFuture[types.ForwardBackwardOutput] | Exception] = []
            async with self.ordered_turn():
                for request in plan:
                    try:
                        sent.append(
                            await self.send_fwdbwd(request.data, request.loss_fn, request.loss_fn_config, False)
                        )
                    except Exception as exc:
                        sent.append(exc)
                        if not return_exceptions:
                            break  # nothing more goes out after a failure
            results: list[types.ForwardBackwardOutput | Exception] = []
            for request, outcome in zip(plan, sent, strict=False):
                if isinstance(outcome, Exception):
                    results.extend([outcome] * len(request.items))
                    continue
                try:
                    output = await outcome.result()
                except Exception as exc:
                    results.extend([exc] * len(request.items))
                    continue
                for position in range(len(request.items)):
                    try:
                        results.append(item_output(request, work, output, position))
                    except Exception as exc:
                        results.append(exc)
            return settled(results, return_exceptions)

    # -- the batch window (opt-in: config.batching.coalesce) ------------------------------------------------------

    def _batch_window(self) -> BatchWindow:
        if self._window is None:
            batching = self._ctx.config.batching
            routes = WindowRoutes(
                take_ticket=self._take_ticket,
                turn=lambda: self._turn,
                plan=partial(self.plan_batch, max_items=batching.max_items),
                send=lambda r: self.send_fwdbwd(r.data, r.loss_fn, r.loss_fn_config, False),
                span=partial(self.batch_span, BATCH_FORWARD_BACKWARD),
            )
            window = BatchWindow(
                routes,
                window_s=batching.window_ms / 1000.0,
                max_items=batching.max_items,
                closed_message=f"session {self._ctx.session_id!r} closed before the call was sent",
            )
            self._ctx.spawn(window.run, f"tinkex_trio.batch_window[{self.model_id}]")
            self._window = window
        return self._window

    async def coalesced_forward_backward(
        self, data: Sequence[types.Datum], loss_fn: LossFn, loss_fn_config: LossFnConfig | None
    ) -> types.ForwardBackwardOutput:
        """forward_backward through the batch window: queue the call, wait until its request is accepted, then for
        its result, and take this call's share of it."""
        self._ctx.check_alive()
        item = WorkItem(list(data), loss_fn, dict(loss_fn_config) if loss_fn_config is not None else None)
        if not item.data:
            raise ValueError("forward/forward_backward needs at least one Datum")
        window = self._batch_window()
        slot = WindowSlot(self._take_ticket(), item, trio.current_time())
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
