"""Futures (protocol §6): :class:`APIFuture` and the :class:`FutureManager` that long-polls ``retrieve_future``.

A future-returning call (create_model, forward_backward, optim_step, the saves, load_weights, asample) is answered
with an ``UntypedAPIFuture`` ``{request_id, ...}``; the result is fetched by polling. The client module hands that
reply to :meth:`FutureManager.track`, which starts one poll task in the session's nursery *at once*, so pipelined
work makes progress whether or not anyone awaits it::

    reply = await transport.request_json(types.UntypedAPIFuture, PoolKind.TRAINING, "POST", "/api/v1/optim_step", ...)
    fut = session._futures.track(reply, "OptimStep", decode_optim_step)
    ...
    step = await fut.result()            # waits on an Event; cancelling this wait never stops the poll

What the poll does with each answer (protocol §6, checked in this order):

==========================================  ========================================================================
200, ``application/x-protobuf``             decode (the decoder gets the response)
200 ``{"type": "try_again", ...}``          re-poll at once (the server long-polls); a new ``queue_state`` is
                                            published as ``tinkex.future.queue_state`` telemetry
200 ``{"status": "complete_metadata"}``     re-poll once with ``allow_metadata_only: false``
200 ``{"error": ..., "category": ...}``     fail with :class:`~tinkex_trio.errors.RequestFailedError`
200, any other JSON                         decode
408 / 5xx                                   re-poll after :func:`~tinkex_trio._retry.poll_error_backoff` (short,
                                            jittered, growing: never a tight loop)
TLS certificate or handshake failure        fail with :class:`~tinkex_trio.errors.TLSError` (it would fail forever)
429, connection error, timeout              re-poll after :func:`~tinkex_trio._retry.poll_backoff` (``min(2^n, 30)``
                                            s, at least a 429's ``Retry-After``); ``n`` counts these in a row
                                            (both backoffs are capped by ``config.retry.max_delay_s``)
400                                         up to 3 re-polls in a row, then fail with the BadRequestError
402                                         re-poll every 5 s while the billing pause allows, then fail
410                                         fail with :class:`~tinkex_trio.errors.GoneError` (the sampler re-submits)
other 4xx                                   fail with the status's error
a body that cannot be read or decoded       up to 10 re-polls in a row (after a short backoff), then
(or is over ``max_response_bytes``)         :class:`~tinkex_trio.errors.ResponseValidationError` (or its subclass
                                            :class:`~tinkex_trio.errors.ResponseTooLargeError`)
==========================================  ========================================================================

Samples, when ``client_config.sample_use_retrieve_futures`` is on (``track(..., sampling_session_id=...)``), do not
long-poll: their task waits for the id to appear in the sampling session's completions, long-polled by one
:class:`~tinkex_trio._completions.CompletionPoller` task per sampling session (``retrieve_futures``), then fetches
the result or failure with one poll through the table above (``allow_metadata_only: false`` when the size is known).
A 404 to ``retrieve_futures`` makes them (and every later sample of the session) poll per future instead.

Polling has no overall deadline (``result(timeout)`` limits only the wait); it ends with the future's outcome, or with
the session: :meth:`FutureManager.aclose` fails every pending future with
:class:`~tinkex_trio.errors.SessionClosedError`. Cancellation is never turned into a future's failure except there.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeAlias, TypeVar, cast

import httpx
import msgspec
import trio

from tinkex_trio import types as _types
from tinkex_trio._apifuture import APIFuture, Outcome
from tinkex_trio._completions import CompletionPoller, CompletionState
from tinkex_trio._endpoints import API_PREFIX
from tinkex_trio._polling import (
    BILLING_RETRY_DELAY_S,
    MAX_BAD_REPLY_RETRIES,
    MAX_BAD_REQUEST_RETRIES,
    PollState,
)
from tinkex_trio._pool_set import PoolKind
from tinkex_trio._proto._codec import PROTOBUF_CONTENT_TYPE
from tinkex_trio._telemetry import FUTURE_QUEUE_STATE, TelemetryBus
from tinkex_trio._transport import Transport
from tinkex_trio.errors import (
    APIConnectionError,
    APIStatusError,
    RequestFailedError,
    ResponseValidationError,
    SessionClosedError,
    TinkexError,
    TLSError,
)

__all__ = [
    "BILLING_RETRY_DELAY_S",
    "MAX_BAD_REPLY_RETRIES",
    "MAX_BAD_REQUEST_RETRIES",
    "RETRIEVE_FUTURE_PATH",
    "APIFuture",
    "FutureDecoder",
    "FutureManager",
]

logger = logging.getLogger("tinkex_trio.futures")

T = TypeVar("T")
U = TypeVar("U")

FutureDecoder: TypeAlias = Callable[[httpx.Response], T]
"""Turns the final 200 response of a poll (protobuf or JSON) into the result; raises on a bad body."""

RETRIEVE_FUTURE_PATH: Final = f"{API_PREFIX}/retrieve_future"

_PROTO_REQUEST_TYPES: Final = frozenset({"Sample", "ForwardBackward", "Forward"})


class _RetryNow:
    """Sentinel for "re-poll at once" (try_again, complete_metadata)."""

    __slots__ = ()


_RETRY_NOW: Final = _RetryNow()


class FutureManager:
    """Polls ``retrieve_future`` for every tracked future, in tasks of the session's nursery.

    Args:
        transport: sends the polls (``PoolKind.FUTURES``, one attempt each: polling has its own retry policy).
        nursery: where the poll tasks run (the session's).
        telemetry: receives ``tinkex.future.queue_state`` events (default: the transport's bus).
        poll_timeout_s: per-poll timeout (default ``config.timeouts.retrieve_future_s``).
        billing_pause_s: how long 402 answers are waited out (``billing_exception_max_pause_duration_sec``).
        rng: jitter for the error backoff (seed it in tests).
    """

    def __init__(
        self,
        transport: Transport,
        nursery: trio.Nursery,
        telemetry: TelemetryBus | None = None,
        *,
        poll_timeout_s: float | None = None,
        billing_pause_s: float = 3600.0,
        rng: random.Random | None = None,
    ) -> None:
        self._transport = transport
        self._nursery = nursery
        self._telemetry = telemetry if telemetry is not None else transport.telemetry
        config = transport.config
        self._poll_timeout_s = poll_timeout_s if poll_timeout_s is not None else config.timeouts.retrieve_future_s
        self._retry_after_max_s = config.retry.retry_after_max_s
        # One knob for the longest wait between two attempts: the poll backoffs are capped by it too, so a future
        # is re-polled no later than ``retry.max_delay_s`` after an outage ends.
        self._max_delay_s = config.retry.max_delay_s
        self._billing_pause_s = billing_pause_s
        self._rng = rng if rng is not None else random.Random()
        self._pending: dict[APIFuture[Any], tuple[Outcome[Any], trio.CancelScope]] = {}
        self._pollers: dict[str, CompletionPoller] = {}
        self._batched_unsupported = False  # a server answered 404 to retrieve_futures: poll every future alone
        self._running = 0
        self._all_stopped: trio.Event | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending_count(self) -> int:
        """Futures whose outcome is not known yet."""
        return len(self._pending)

    @property
    def completion_pollers(self) -> dict[str, CompletionPoller]:
        """The running ``retrieve_futures`` pollers, by sampling session (a copy)."""
        return dict(self._pollers)

    @property
    def batched_unsupported(self) -> bool:
        """The server answered 404 to ``retrieve_futures``: samples are polled per future from then on."""
        return self._batched_unsupported

    # -- tracking ------------------------------------------------------------------------------------------------

    def track(
        self,
        future_reply: _types.UntypedAPIFuture,
        request_type: str,
        decode: FutureDecoder[T],
        *,
        accept_proto: bool = False,
        create_roundtrip_s: float | None = None,
        sampling_session_id: str | None = None,
    ) -> APIFuture[T]:
        """Start polling for ``future_reply`` now; return its :class:`APIFuture`.

        ``request_type`` goes in ``X-Tinker-Request-Type``. ``accept_proto`` asks for a protobuf result (only for
        ``Sample``, ``ForwardBackward`` and ``Forward``). ``create_roundtrip_s``, the submission's round trip, is
        reported on the first poll (``X-Tinker-Create-Promise-Roundtrip-Time``). Raises SessionClosedError once the
        session is closing.

        ``sampling_session_id`` (a sample, when ``client_config.sample_use_retrieve_futures``): instead of
        long-polling ``retrieve_future``, the future waits for its completion from that sampling session's
        ``retrieve_futures`` poller (:mod:`tinkex_trio._completions`, one task per sampling session, started with
        the first sample), then fetches its result with one ``retrieve_future`` call. After a 404 to
        ``retrieve_futures`` it is ignored (per-future polling).
        """
        if accept_proto and request_type not in _PROTO_REQUEST_TYPES:
            raise ValueError(f"a protobuf result exists only for {sorted(_PROTO_REQUEST_TYPES)}, not {request_type!r}")
        self._check_open(future_reply.request_id)
        outcome: Outcome[T] = Outcome()
        fut = APIFuture(
            future_reply.request_id,
            request_type,
            model_id=future_reply.model_id,
            sample_sequence_ids=future_reply.sample_sequence_ids,
            outcome=outcome,
        )
        if sampling_session_id is not None and not self._batched_unsupported:
            poller = self._completion_poller(sampling_session_id, future_reply.request_id)
            self._start(fut, outcome, self._await_completion, poller, fut, decode, accept_proto, create_roundtrip_s)
        else:
            self._start(fut, outcome, self._poll, fut, decode, accept_proto, create_roundtrip_s)
        return fut

    def combine(
        self,
        futures: Sequence[APIFuture[T]],
        combine: Callable[[list[T]], U],
        *,
        request_id: str | None = None,
        request_type: str | None = None,
        failed: Callable[[list[T | TinkexError]], TinkexError] | None = None,
    ) -> APIFuture[U]:
        """One future for several (e.g. the chunks of one forward_backward): ``combine(results)``, in order.

        It fails with the first failure in order, or, with ``failed``, with ``failed(outcomes)`` once every input
        has an outcome (a result or its error, in order); an exception from ``combine`` itself becomes a
        ResponseValidationError (the results did not fit together). The inputs keep being polled either way.
        """
        if not futures:
            raise ValueError("combine() needs at least one future")
        rid = request_id if request_id is not None else "+".join(f.request_id for f in futures)
        self._check_open(rid)
        outcome: Outcome[U] = Outcome()
        out = APIFuture(
            rid,
            request_type if request_type is not None else futures[0].request_type,
            model_id=futures[0].model_id,
            outcome=outcome,
        )
        self._start(out, outcome, self._gather, list(futures), combine, failed)
        return out

    def _completion_poller(self, sampling_session_id: str, request_id: str) -> CompletionPoller:
        """The poller of ``sampling_session_id``, started in the session's nursery if it is not running."""
        poller = self._pollers.get(sampling_session_id)
        if poller is not None:
            return poller
        poller = CompletionPoller(
            self._transport,
            CompletionState(
                sampling_session_id,
                max_delay_s=self._max_delay_s,
                retry_after_max_s=self._retry_after_max_s,
            ),
            poll_timeout_s=self._poll_timeout_s,
            on_unsupported=self._on_batched_unsupported,
        )
        try:
            self._nursery.start_soon(self._run_poller, poller, name=f"tinkex_trio.completions:{sampling_session_id}")
        except RuntimeError:  # the nursery is closed: a background failure is ending the session
            self._closed = True
            raise SessionClosedError(f"the session is closing: request {request_id!r} cannot be tracked") from None
        self._pollers[sampling_session_id] = poller
        self._running += 1
        return poller

    def _on_batched_unsupported(self) -> None:
        self._batched_unsupported = True

    async def _run_poller(self, poller: CompletionPoller) -> None:
        # Cancelled (the session is ending) or KeyboardInterrupt: goes on as itself; the waiters stay pending until
        # the session fails them (as for a poll task, see _run). A fatal poll error is not raised: it fails the
        # waiters (CompletionPoller).
        try:
            await poller.run()
        finally:
            if self._pollers.get(poller.sampling_session_id) is poller:
                del self._pollers[poller.sampling_session_id]
            self._task_stopped()

    def _task_stopped(self) -> None:
        self._running -= 1
        if self._running == 0 and self._all_stopped is not None:
            self._all_stopped.set()

    def _check_open(self, request_id: str) -> None:
        if self._closed:
            raise SessionClosedError(f"the session is closed: request {request_id!r} cannot be tracked")

    def _start(self, fut: APIFuture[Any], outcome: Outcome[Any], body: Callable[..., Any], *args: Any) -> None:
        scope = trio.CancelScope()
        try:
            self._nursery.start_soon(
                self._run, fut, outcome, scope, body, args, name=f"tinkex_trio.future:{fut.request_id}"
            )
        except RuntimeError:  # the nursery is closed: a background failure is ending the session
            self._closed = True
            raise SessionClosedError(f"the session is closing: request {fut.request_id!r} cannot be tracked") from None
        self._pending[fut] = (outcome, scope)
        self._running += 1

    async def _run(
        self,
        fut: APIFuture[Any],
        outcome: Outcome[Any],
        scope: trio.CancelScope,
        body: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        try:
            with scope:
                try:
                    value = await body(*args)
                except TinkexError as exc:
                    outcome.set_exception(exc)
                # Cancelled (the session is ending: its nursery, or aclose()), KeyboardInterrupt landing in this
                # task, or a bug: the future stays pending and the exception goes on as itself. The session ends,
                # cancels every waiter, and only then does aclose() fail what is still pending with
                # SessionClosedError. Failing the future here would wake its waiter with an error before its own
                # cancellation arrives: a SessionClosedError out of a cancelled block, or, beside the
                # KeyboardInterrupt, an ExceptionGroup of two.
                else:
                    outcome.set_result(value)
        finally:
            if fut.done():
                self._pending.pop(fut, None)
            self._task_stopped()

    @staticmethod
    def _closed_error(fut: APIFuture[Any]) -> SessionClosedError:
        return SessionClosedError(
            f"the session closed while {fut.request_type} request {fut.request_id!r} was pending; "
            "its result is lost (futures never outlive their session)"
        )

    def close_nowait(self) -> None:
        """Fail every pending future with SessionClosedError and cancel their polls, without waiting for the poll
        tasks to stop (not a checkpoint). Idempotent."""
        self._closed = True
        pending, self._pending = self._pending, {}
        for fut, (outcome, scope) in pending.items():
            outcome.set_exception(self._closed_error(fut))
            scope.cancel()
        for poller in self._pollers.values():
            poller.cancel()

    async def aclose(self) -> None:
        """Fail every pending future with SessionClosedError, stop their polls, and wait until they have stopped.

        Idempotent. Later :meth:`track` calls raise SessionClosedError.
        """
        self.close_nowait()
        if self._running:
            self._all_stopped = trio.Event()
            with trio.CancelScope(shield=True):
                await self._all_stopped.wait()

    # -- the poll loop -------------------------------------------------------------------------------------------

    async def _gather(
        self,
        futures: list[APIFuture[T]],
        combine: Callable[[list[T]], U],
        failed: Callable[[list[T | TinkexError]], TinkexError] | None,
    ) -> U:
        if failed is None:
            results = [await f.result() for f in futures]
        else:
            outcomes: list[T | TinkexError] = []
            for f in futures:
                try:
                    outcomes.append(await f.result())
                except TinkexError as exc:
                    outcomes.append(exc)
            if any(isinstance(o, TinkexError) for o in outcomes):
                raise failed(outcomes)
            results = cast("list[T]", outcomes)
        try:
            return combine(results)
        except TinkexError:
            raise
        except Exception as exc:
            raise ResponseValidationError(f"the results could not be combined: {exc!r}") from exc

    @staticmethod
    def _headers(fut: APIFuture[Any], state: PollState, roundtrip: float | None) -> dict[str, str]:
        headers = {
            "X-Tinker-Request-Iteration": str(state.iteration),
            "X-Tinker-Request-Type": fut.request_type,
        }
        if state.iteration == 0 and roundtrip is not None:
            headers["X-Tinker-Create-Promise-Roundtrip-Time"] = repr(float(roundtrip))
        return headers

    async def _await_completion(
        self,
        poller: CompletionPoller,
        fut: APIFuture[T],
        decode: FutureDecoder[T],
        accept_proto: bool,
        roundtrip: float | None,
    ) -> T:
        """Wait for the sampling session's poller to see the future complete, then fetch the result (or the
        failure) with one poll, through the same classification and decoding as per-future polling."""
        completion = await poller.wait(fut.request_id)
        if completion is None:  # the server has no retrieve_futures
            return await self._poll(fut, decode, accept_proto, roundtrip)
        # The size is known: ask for the payload itself, not for complete_metadata first.
        full = (
            isinstance(completion, _types.FutureFinished) and completion.response_payload_uncompressed_size is not None
        )
        try:
            result = await self._poll(fut, decode, accept_proto, roundtrip, metadata_only=not full)
        except TinkexError:
            poller.retrieved(fut.request_id)
            raise
        poller.retrieved(fut.request_id)
        return result

    async def _poll(
        self,
        fut: APIFuture[T],
        decode: FutureDecoder[T],
        accept_proto: bool,
        roundtrip: float | None,
        *,
        metadata_only: bool = True,
    ) -> T:
        """Poll until the future has an outcome: return the result or raise a TinkexError.

        ``metadata_only=False``: the first poll already asks for the payload (``allow_metadata_only: false``).
        """
        state = PollState(
            max_delay_s=self._max_delay_s,
            retry_after_max_s=self._retry_after_max_s,
            billing_pause_s=self._billing_pause_s,
            rng=self._rng,
        )
        state.allow_metadata_only = metadata_only
        rid = fut.request_id
        accept = PROTOBUF_CONTENT_TYPE if accept_proto else "application/json"
        # Bounded: every pass returns, raises, or waits (the server's long poll, a backoff, or the try_again minimum
        # interval); the 400, 402 and bad-reply re-polls are capped. Polling has no overall deadline (protocol §6):
        # it ends with the future's outcome or with the session (cancellation).
        while True:
            sent_at = trio.current_time()
            headers = self._headers(fut, state, roundtrip)
            state.iteration += 1
            try:
                response = await self._transport.request(
                    PoolKind.FUTURES,
                    "POST",
                    RETRIEVE_FUTURE_PATH,
                    json=_types.FutureRetrieveRequest(request_id=rid, allow_metadata_only=state.allow_metadata_only),
                    accept=accept,
                    headers=headers,
                    timeout=self._poll_timeout_s,
                    retry=False,
                )
            except APIStatusError as exc:
                await self._on_status_error(fut, state, exc)
                continue
            except TLSError:
                # A certificate or TLS mismatch repeats on every poll: fail the future now rather than poll forever.
                raise
            except APIConnectionError as exc:
                delay = state.after_connection_error()
                logger.debug("poll of %s: %s; re-polling in %.1f s", rid, type(exc).__name__, delay)
                await trio.sleep(delay)
                continue
            except ResponseValidationError as exc:
                # The transport could not read the answer (ResponseTooLargeError: over max_response_bytes): an
                # unreadable answer like the ones below. Bounded: each re-poll reads at most the limit.
                await self._on_bad_reply(rid, state, exc)
                continue

            state.after_answer()
            if PROTOBUF_CONTENT_TYPE in response.headers.get("content-type", ""):
                outcome = self._decode(fut, decode, response)
            else:
                outcome = self._classify(fut, state, decode, response)
            if isinstance(outcome, _RetryNow):
                state.after_readable()
                delay = state.after_try_again(trio.current_time() - sent_at)
                if delay > 0.0:
                    await trio.sleep(delay)
                else:
                    await trio.lowlevel.checkpoint()
                continue
            if isinstance(outcome, ResponseValidationError):
                await self._on_bad_reply(rid, state, outcome)
                continue
            return outcome

    async def _on_bad_reply(self, rid: str, state: PollState, error: ResponseValidationError) -> None:
        """An unreadable answer: wait a short backoff before re-polling, or raise ``error`` past the cap."""
        delay = state.after_bad_reply(error)
        logger.debug("poll of %s: unreadable answer (%s); re-polling in %.2f s", rid, error, delay)
        await trio.sleep(delay)

    def _classify(
        self, fut: APIFuture[T], state: PollState, decode: FutureDecoder[T], response: httpx.Response
    ) -> T | _RetryNow | ResponseValidationError:
        rid = fut.request_id
        try:
            reply = _types.parse_future_reply(response.content, msgspec.Raw, request_id=rid)
        except ResponseValidationError as exc:
            return exc
        if isinstance(reply, _types.TryAgainResponse):
            self._queue_state(fut, state, reply.queue_state, reply.queue_state_reason)
            return _RETRY_NOW
        if isinstance(reply, _types.FutureCompleteMetadata):
            if not state.allow_metadata_only:
                return ResponseValidationError(
                    f"retrieve_future answered complete_metadata to a full poll of {rid!r}",
                    body=response.content,
                    request_id=rid,
                )
            # Protocol §6: the SDK reserves response_payload_size bytes of its in-flight budget here.
            # TODO(batching/metrics issues): an in-flight response-bytes limiter would hook in here.
            state.allow_metadata_only = False
            return _RETRY_NOW
        if isinstance(reply, _types.RequestFailedResponse):
            raise RequestFailedError(
                f"{fut.request_type} request {rid!r} failed ({reply.category.value}): {reply.error}",
                request_id=rid,
                category=reply.category,
            )
        return self._decode(fut, decode, response)

    @staticmethod
    def _decode(fut: APIFuture[T], decode: FutureDecoder[T], response: httpx.Response) -> T | ResponseValidationError:
        try:
            return decode(response)
        except ResponseValidationError as exc:
            return exc
        except Exception as exc:
            error = ResponseValidationError(
                f"could not decode the result of {fut.request_type} request {fut.request_id!r}: {exc!r}",
                body=response.content,
                request_id=fut.request_id,
            )
            error.__cause__ = exc
            return error

    def _queue_state(self, fut: APIFuture[Any], state: PollState, queue_state: str, reason: str | None) -> None:
        if queue_state == state.queue_state:
            return
        previous, state.queue_state = state.queue_state, queue_state
        if queue_state != "active":
            logger.info("%s request %s is queued: %s (%s)", fut.request_type, fut.request_id, queue_state, reason)
        self._telemetry.emit(
            FUTURE_QUEUE_STATE,
            {"iteration": state.iteration},
            {
                "request_id": fut.request_id,
                "request_type": fut.request_type,
                "queue_state": queue_state,
                "queue_state_reason": reason,
                "previous_queue_state": previous,
            },
        )

    async def _on_status_error(self, fut: APIFuture[Any], state: PollState, exc: APIStatusError) -> None:
        """Wait as the status says, or raise the error that fails the future."""
        body = exc.body
        if exc.status_code == 408 and isinstance(body, dict):
            fields: dict[str, Any] = body  # pyright: ignore[reportUnknownVariableType]
            queue_state, reason = fields.get("queue_state"), fields.get("queue_state_reason")
            if isinstance(queue_state, str):
                self._queue_state(fut, state, queue_state, reason if isinstance(reason, str) else None)
        delay = state.after_status(exc, trio.current_time())
        if exc.status_code == 402:
            logger.warning("poll of %s: 402 (billing); re-polling in %.0f s", fut.request_id, delay)
        else:
            logger.debug("poll of %s: %d; re-polling in %.2f s", fut.request_id, exc.status_code, delay)
        if delay > 0.0:
            await trio.sleep(delay)
        else:
            await trio.lowlevel.checkpoint()
