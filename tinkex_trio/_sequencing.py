"""The seq_ids of one training model, and the delivery of its sequenced requests (protocol §8).

The server runs a model's requests in ``seq_id`` order and waits for a missing one; it answers a re-sent
``(model_id, seq_id)`` from its first result. So every id the client takes must end settled on the server, exactly
once, and the client's view must equal the server's. :class:`ModelSequence` keeps that promise for a
:class:`~tinkex_trio.TrainingClient`, whose FIFO turn its caller holds::

    delivery = Delivery("optim_step", "optim_step", [body], "application/json", sdk_method, [(0, 0)], finish)
    future = await sequence.deliver_new(delivery)      # the caller holds the model's turn

A delivery is one operation: one request, or one per chunk of a forward_backward. Its life:

* **Refused locally** (an earlier operation is in doubt, the model is halted, or the circuit breaker is open):
  nothing is sent and no id is taken. Bad arguments and bodies that cannot be encoded are refused before a delivery
  exists.
* **Sent**: each request is *committed* (:meth:`~tinkex_trio._transport.Transport.request_committed`): retried with
  the same id and idempotency key, not cut short by the breaker, an unreadable answer re-sent. It ends
  *accepted* (a future reply), *refused* (the server's 4xx verdict, which uses the id up on the server as well) or
  *unknown* (its retries ended without a verdict).
* **In doubt**: an unknown request, or a cancellation while sending. The sequence refuses every later operation with
  :class:`~tinkex_trio.errors.SequenceInDoubtError` until :meth:`ModelSequence.resend_in_doubt` re-sends the same
  requests and settles them: nothing ever waits silently on a hole.
* **Halted**: a custom loss failed between its two calls (:meth:`ModelSequence.halt`). The sequence refuses every
  later operation with :class:`~tinkex_trio.errors.TrainingHaltedError` until :meth:`ModelSequence.resume`: work
  queued behind the failed call was written to follow its gradients. A re-send of an operation in doubt still goes.
* **Concluded**: all accepted, the operation's future; all refused, the server's error as itself; some of each (a
  chunked forward_backward), :class:`~tinkex_trio.errors.PartiallyAppliedError` naming the datum ranges.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import trio

from tinkex_trio import types
from tinkex_trio._chunking import dispatch_order
from tinkex_trio._endpoints import API_PREFIX as _API
from tinkex_trio._groups import lone_exception, reraise
from tinkex_trio._guard import BreakerGuard
from tinkex_trio._http_errors import delivery_known
from tinkex_trio._pool_set import PoolKind
from tinkex_trio._transport import Transport
from tinkex_trio.errors import PartiallyAppliedError, SequenceInDoubtError, TinkexError, TrainingHaltedError

if TYPE_CHECKING:
    from tinkex_trio._futures import APIFuture

__all__ = ["Delivery", "ModelSequence", "partial_results", "run_all"]

T = TypeVar("T")


Replies = list[tuple[types.UntypedAPIFuture, float]]
"""Every request's ``(future reply, round trip in s)``, in request order."""


@dataclass(eq=False)
class Delivery(Generic[T]):
    """One sequenced operation on its way to the server: its requests (one per chunk) and what became of each.

    Made with its bodies already encoded (with the ids :attr:`ModelSequence.next_seq_id` will give them);
    :meth:`ModelSequence.deliver_new` takes those ids. Each request keeps one idempotency key for every attempt and
    every re-send.
    """

    operation: str
    """What it is, for errors: ``"forward_backward"``, ``"forward"``, ``"optim_step"``, ..."""
    endpoint: str
    bodies: list[bytes]
    content_type: str
    sdk_method: str
    ranges: list[tuple[int, int]]
    """The datum range ``(start, stop)`` of each request (``(0, 0)`` for operations without data)."""
    finish: Callable[[Replies], APIFuture[T]]
    """Builds the operation's future once every request is accepted."""
    parallel: bool = False
    """Send requests 2..n concurrently, then the first (a chunked call with ``parallel_fwdbwd_chunks``)."""
    seq_ids: list[int] = field(default_factory=list[int])
    keys: list[str] = field(default_factory=list[str])
    replies: list[tuple[types.UntypedAPIFuture, float] | None] = field(default_factory=list[Any])
    refused: dict[int, TinkexError] = field(default_factory=dict[int, TinkexError])
    unknown: dict[int, Exception] = field(default_factory=dict[int, Exception])

    def __post_init__(self) -> None:
        self.keys = [f"tinkex-trio-{uuid.uuid4()}" for _ in self.bodies]
        self.replies = [None] * len(self.bodies)

    def unsettled(self) -> list[int]:
        """The requests whose fate is unknown: failed without a verdict, or (after a cancellation) never answered."""
        return sorted(self.unknown) or [i for i, r in enumerate(self.replies) if r is None and i not in self.refused]


class ModelSequence:
    """The next seq_id of one model and its delivery (see the module docstring). Not safe for concurrent use: every
    method is called with the model's turn held.

    Args:
        transport: sends the requests (``PoolKind.TRAINING``) and owns the circuit breaker.
        model_id: the model, for error messages.
    """

    def __init__(self, transport: Transport, model_id: str) -> None:
        self._transport = transport
        self.model_id = model_id
        self.next_seq_id = 1  # seq 0 is the model's creation (create_model / create-via-load)
        self._in_doubt: Delivery[Any] | None = None
        # Why the model is halted: (operation, the failure described, the failure when it is an Exception).
        self._halt: tuple[str, str, Exception | None] | None = None

    @property
    def in_doubt(self) -> tuple[int, ...]:
        """The seq_ids whose delivery is unknown (empty when the model can go on)."""
        delivery = self._in_doubt
        if delivery is None:
            return ()
        return tuple(delivery.seq_ids[i] for i in delivery.unsettled())

    @property
    def halted(self) -> bool:
        """Whether later operations are refused because a custom loss failed between its two calls."""
        return self._halt is not None

    def halt(self, operation: str, failure: BaseException | None) -> None:
        """Refuse every later operation until :meth:`resume`. ``failure`` (None for a cancellation) is described in
        each refusal, and is its ``__cause__`` when it is an Exception. The first halt is kept."""
        if self._halt is None:
            what = "it was cancelled" if failure is None else f"{type(failure).__name__}: {failure}"
            self._halt = (operation, what, failure if isinstance(failure, Exception) else None)

    def resume(self) -> None:
        """Let later operations go again."""
        self._halt = None

    def refuse_if_stopped(self) -> None:
        """Raise SequenceInDoubtError while an earlier operation is in doubt, else TrainingHaltedError while the model
        is halted; do nothing when the model can go on."""
        if self._in_doubt is not None:
            raise self._in_doubt_error(self._in_doubt, refusing=True)
        if self._halt is None:
            return
        operation, what, failure = self._halt
        raise TrainingHaltedError(
            f"model {self.model_id!r} is halted: its {operation} failed before its gradients reached the server "
            f"({what}), and work submitted after it was written to follow them, so nothing more is sent. Call "
            "`trainer.resume()` to go on with the model as the server holds it (without that call's gradients), or "
            "continue from a checkpoint",
            model_id=self.model_id,
            operation=operation,
        ) from failure

    async def deliver_new(self, delivery: Delivery[T]) -> APIFuture[T]:
        """Refuse ``delivery`` while an earlier one is in doubt or the model is halted, pass the circuit breaker, take
        its seq_ids, send it, and return its future (see the module docstring for every other ending)."""
        self.refuse_if_stopped()
        guard = self._admit(delivery)  # CircuitOpenError: nothing sent, no seq_id taken
        try:
            delivery.seq_ids = list(range(self.next_seq_id, self.next_seq_id + len(delivery.bodies)))
            self.next_seq_id += len(delivery.bodies)
            await self._deliver(delivery, guard)
        finally:
            guard.release()
        return self._conclude(delivery)

    async def resend_in_doubt(self) -> APIFuture[Any] | None:
        """Re-send the operation in doubt (same ids, bodies and keys) and return its future; None if none is."""
        delivery = self._in_doubt
        if delivery is None:
            await trio.lowlevel.checkpoint()
            return None
        guard = self._admit(delivery)
        try:
            await self._deliver(delivery, guard)
        finally:
            guard.release()
        return self._conclude(delivery)

    def _admit(self, delivery: Delivery[Any]) -> BreakerGuard:
        meta: dict[str, str | int | float | bool | None] = {
            "method": "POST",
            "path": f"{_API}/{delivery.endpoint}",
            "pool": PoolKind.TRAINING.value,
        }
        guard = self._transport.guard(PoolKind.TRAINING, meta)
        guard.admit(0)
        return guard

    async def _deliver(self, delivery: Delivery[Any], guard: BreakerGuard) -> None:
        """Send every request of ``delivery`` not yet accepted or refused; put the sequence in doubt if any is left
        unknown, or if this is cancelled while sending.

        Sent one after another, a refused request stops the rest, whose seq_ids are given back (nothing later was
        taken: the turn is held). Sent in parallel (chunks 2..n together, then the first), the first chunk goes out
        whatever happened to the others: the server holds the later ones until it arrives.
        """
        path = f"{_API}/{delivery.endpoint}"
        delivery.unknown.clear()

        async def send(index: int) -> None:
            if delivery.replies[index] is not None or index in delivery.refused:
                return
            started = trio.current_time()
            try:
                reply = await self._transport.request_committed(
                    types.UntypedAPIFuture,
                    PoolKind.TRAINING,
                    path,
                    content=delivery.bodies[index],
                    content_type=delivery.content_type,
                    guard=guard,
                    idempotency_key=delivery.keys[index],
                    sdk_method=delivery.sdk_method,
                )
            except Exception as exc:
                if delivery_known(exc):
                    delivery.refused[index] = cast("TinkexError", exc)
                else:
                    delivery.unknown[index] = exc
                return
            delivery.replies[index] = (reply, trio.current_time() - started)

        try:
            if delivery.parallel and len(delivery.bodies) > 1:
                # Chunks 2..n concurrently, then the first: the server holds the later ones until the first arrives,
                # so it finds the whole call queued when it starts.
                *together, last = dispatch_order(len(delivery.bodies))
                await run_all(send, together)
                await send(last)
            else:
                for index in range(len(delivery.bodies)):
                    await send(index)
                    if index in delivery.refused and not delivery.unknown:
                        self._give_back(delivery, index + 1)
                        break
        except BaseException:
            # Cancelled (or Ctrl-C) while sending: whatever went out may or may not have reached the server.
            self._in_doubt = delivery
            raise
        if delivery.unknown:
            self._in_doubt = delivery
            raise self._in_doubt_error(delivery, refusing=False) from delivery.unknown[min(delivery.unknown)]
        self._in_doubt = None

    def _give_back(self, delivery: Delivery[Any], start: int) -> None:
        """Return the ids of the requests from ``start`` on, never sent, to the counter (they are the last taken)."""
        unsent = len(delivery.bodies) - start
        if unsent > 0 and self.next_seq_id == delivery.seq_ids[-1] + 1:
            self.next_seq_id -= unsent
            cause = delivery.refused[start - 1]
            for index in range(start, len(delivery.bodies)):
                delivery.refused[index] = cause  # not applied either: never sent

    def _conclude(self, delivery: Delivery[T]) -> APIFuture[T]:
        """The future of a delivery every request of which is settled: its result, or the server's refusal."""
        if not delivery.refused:
            return delivery.finish([r for r in delivery.replies if r is not None])
        first = delivery.refused[min(delivery.refused)]
        accepted = [delivery.ranges[i] for i, r in enumerate(delivery.replies) if r is not None]
        if not accepted or delivery.operation == "forward":
            raise first  # nothing applied (a forward applies nothing): the server's verdict as itself
        failed = tuple((delivery.ranges[i], e) for i, e in sorted(delivery.refused.items()))
        raise PartiallyAppliedError(
            f"{delivery.operation} on {self.model_id}: the server applied datums "
            f"{_describe_ranges(accepted)} and refused {_describe_ranges([r for r, _ in failed])} "
            f"({type(first).__name__}: {first.message}); the accumulated gradients hold the applied part only",
            applied=tuple(accepted),
            failed=failed,
        ) from first

    def _in_doubt_error(self, delivery: Delivery[Any], *, refusing: bool) -> SequenceInDoubtError:
        seq_ids = tuple(delivery.seq_ids[i] for i in delivery.unsettled())
        what = f"{delivery.operation} seq_id {', '.join(map(str, seq_ids))} of {self.model_id}"
        if refusing:
            message = f"refused: {what} may or may not have reached the server, and later calls would wait for it"
        else:
            message = f"{what} may or may not have reached the server (its retries ended without an answer)"
        return SequenceInDoubtError(
            f"{message}; call `await trainer.resend_in_doubt()` to re-send it (the server applies it at most once) "
            "or continue from a checkpoint in a new TrainingClient; do not repeat it by hand",
            model_id=self.model_id,
            seq_ids=seq_ids,
            operation=delivery.operation,
        )


def _describe_ranges(ranges: Sequence[tuple[int, int]]) -> str:
    return ", ".join(f"[{start}:{stop}]" for start, stop in ranges)


def partial_results(model_id: str, ranges: Sequence[tuple[int, int]], outcomes: Sequence[object]) -> TinkexError:
    """The error of a chunked forward_backward whose chunks were all accepted but some failed when they ran: the
    first failure when none succeeded, else PartiallyAppliedError."""
    failed = tuple((ranges[i], o) for i, o in enumerate(outcomes) if isinstance(o, TinkexError))
    applied = tuple(ranges[i] for i, o in enumerate(outcomes) if not isinstance(o, TinkexError))
    first = failed[0][1]
    if not applied:
        return first
    error = PartiallyAppliedError(
        f"forward_backward on {model_id}: datums {_describe_ranges(applied)} were applied, "
        f"{_describe_ranges([r for r, _ in failed])} failed ({type(first).__name__}: {first.message})",
        applied=applied,
        failed=failed,
    )
    error.__cause__ = first
    return error


async def run_all(send: Callable[[int], Awaitable[None]], indices: Iterable[int]) -> None:
    """Run ``send(i)`` for every index concurrently; re-raise the first failure (by index) as itself.

    Every send runs to its end even when another fails: a POST cut off halfway would leave the server unsure whether
    it saw the request. Cancellation of the caller still cancels them all.
    """
    errors: dict[int, Exception] = {}

    async def one(index: int) -> None:
        try:
            await send(index)
        except Exception as exc:
            errors[index] = exc

    try:
        async with trio.open_nursery() as nursery:
            for index in indices:
                nursery.start_soon(one, index)
    except BaseExceptionGroup as group:
        # Only what ``one`` does not catch gets here: Cancelled, KeyboardInterrupt. A lone non-Cancelled one leaves as
        # itself (a single failure is never an ExceptionGroup of one); Cancelled is left to its cancel scope.
        lone = lone_exception(group)
        if lone is None or isinstance(lone, trio.Cancelled):
            raise
        reraise(lone)
    if errors:
        raise errors[min(errors)]
