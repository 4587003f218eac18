"""The batched completion poller (protocol §6, ``POST /api/v1/retrieve_futures``): one long-poll per sampling session
instead of one per sample.

When ``client/config`` says ``sample_use_retrieve_futures: true``, a sample's future does not long-poll
``retrieve_future`` itself. It waits for its ``request_id`` to appear in the completions of its sampling session,
which one background task per sampling session (a :class:`CompletionPoller`, started lazily with the first sample)
long-polls with a cursor; then it fetches its payload with ONE ``retrieve_future`` call (with
``allow_metadata_only: false`` when the server gave the size), and the poller acknowledges the id
(``retrieved_request_ids``) on its next poll::

    poller = CompletionPoller(transport, sampling_session_id, state=CompletionState(...))
    completion = await poller.wait(request_id)     # FutureFinished | FutureFailed; None: poll per future instead
    ...fetch the payload...
    poller.retrieved(request_id)

The bookkeeping (cursor, waiters, completions that came before their waiter, acknowledgements, what an error means)
is :class:`CompletionState`, sans I/O; the task only sends, sleeps and wakes. Poller errors:

==========================================  ========================================================================
429, 408, 409, 5xx, connection error,       re-poll after ``min(2^n, 30)`` s (1 s first; at least a 429's
timeout, an unreadable answer               ``Retry-After``; capped by ``config.retry.max_delay_s``); ``n`` counts
                                            these in a row (unreadable answers: at most 10 in a row)
400                                         up to 3 re-polls in a row (after 1 s), then as below
404                                         the server has no ``retrieve_futures``: every waiter falls back to
                                            per-future polling, and the session remembers
anything else (401, 403, TLS, ...)          every waiter fails with (a copy of) the error; the poller goes on
                                            for later samples
==========================================  ========================================================================

The poller is in the ``FUTURES`` pool (no circuit breaker) and has no deadline: it runs until the session closes
(:meth:`CompletionPoller.cancel`). While no future waits and nothing is to be acknowledged it sends nothing;
acknowledgements with no waiter go out in one poll with ``timeout: 0`` (answered at once).
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import trio

from tinkex_trio import types as _types
from tinkex_trio._endpoints import API_PREFIX
from tinkex_trio._polling import MAX_BAD_REPLY_RETRIES, MAX_BAD_REQUEST_RETRIES
from tinkex_trio._pool_set import PoolKind
from tinkex_trio._retry import is_retryable_status, poll_backoff
from tinkex_trio._transport import Transport
from tinkex_trio.errors import (
    APIConnectionError,
    APIStatusError,
    NotFoundError,
    ResponseValidationError,
    TinkexError,
    TLSError,
)

__all__ = [
    "MAX_UNCLAIMED_COMPLETIONS",
    "RETRIEVE_FUTURES_PATH",
    "CompletionPoller",
    "CompletionState",
]

logger = logging.getLogger("tinkex_trio.futures")

RETRIEVE_FUTURES_PATH: Final = f"{API_PREFIX}/retrieve_futures"
MAX_UNCLAIMED_COMPLETIONS: Final = 10_000
"""Completions kept for ids nobody waits for yet (a sample that completes before its ``asample`` reply is read; or
another process's samples on the same sampling session): the oldest are dropped past this."""

_ACK_ONLY_TIMEOUT_S: Final = 0.0


class CompletionState:
    """One sampling session's poll cursor, waiters and acknowledgements, and the poller's error decisions.

    Sans I/O: the caller sends :meth:`next_request`, then reports :meth:`on_response` or :meth:`after_error`.

    Args:
        sampling_session_id: the target's sampling session.
        cloned_sampler_id: the target's clone (0: this client's samples; seq_ids below 10^9).
        max_delay_s: no wait between polls is longer (``config.retry.max_delay_s``).
        retry_after_max_s: a 429's ``Retry-After`` is honoured up to this.
        max_unclaimed: see :data:`MAX_UNCLAIMED_COMPLETIONS`.
    """

    __slots__ = (
        "_acks",
        "_acks_in_flight",
        "_max_delay_s",
        "_max_unclaimed",
        "_retry_after_max_s",
        "_unclaimed",
        "bad_replies",
        "bad_requests",
        "cloned_sampler_id",
        "cursor",
        "errors",
        "sampling_session_id",
        "waiting",
    )

    def __init__(
        self,
        sampling_session_id: str,
        *,
        cloned_sampler_id: int = 0,
        max_delay_s: float = 30.0,
        retry_after_max_s: float = 60.0,
        max_unclaimed: int = MAX_UNCLAIMED_COMPLETIONS,
    ) -> None:
        self.sampling_session_id = sampling_session_id
        self.cloned_sampler_id = cloned_sampler_id
        self._max_delay_s = max_delay_s
        self._retry_after_max_s = retry_after_max_s
        self._max_unclaimed = max_unclaimed
        self.cursor = 0  # the server's cursor of the latest answer: events up to it are acknowledged
        self.waiting: set[str] = set()  # ids whose completion is awaited
        self._unclaimed: OrderedDict[str, _types.FutureCompletion] = OrderedDict()
        self._acks: list[str] = []  # fetched ids, for the next poll's retrieved_request_ids
        self._acks_in_flight: list[str] = []  # the ones the poll under way carries
        self.errors = 0  # retryable errors in a row
        self.bad_requests = 0  # 400s in a row
        self.bad_replies = 0  # unreadable answers in a row

    # -- waiters --------------------------------------------------------------------------------------------------

    def register(self, request_id: str) -> _types.FutureCompletion | None:
        """Wait for ``request_id``: its completion if it has already come, else None (it is now awaited)."""
        completion = self._unclaimed.pop(request_id, None)
        if completion is None:
            self.waiting.add(request_id)
        return completion

    def forget(self, request_id: str) -> None:
        """``request_id`` is no longer awaited (its waiter was cancelled, or fell back)."""
        self.waiting.discard(request_id)

    def retrieved(self, request_id: str) -> None:
        """The payload of ``request_id`` was fetched: acknowledge it on the next poll."""
        self._acks.append(request_id)

    @property
    def unclaimed_count(self) -> int:
        return len(self._unclaimed)

    @property
    def acks_pending(self) -> int:
        return len(self._acks)

    def wants_poll(self) -> bool:
        """Whether to poll now: someone waits, or there is something to acknowledge."""
        return bool(self.waiting or self._acks)

    # -- one poll -------------------------------------------------------------------------------------------------

    def next_request(self) -> _types.FuturesRetrieveRequest:
        """The next poll: from the cursor, acknowledging what was fetched; a long poll while someone waits, else an
        ack-only poll answered at once."""
        self._acks_in_flight, self._acks = self._acks_in_flight + self._acks, []
        return _types.FuturesRetrieveRequest(
            target=_types.SamplingSessionFuturesTarget(
                sampling_session_id=self.sampling_session_id, cloned_sampler_id=self.cloned_sampler_id
            ),
            prev_cursor=self.cursor,
            timeout=None if self.waiting else _ACK_ONLY_TIMEOUT_S,
            retrieved_request_ids=list(self._acks_in_flight),
        )

    def on_response(self, response: _types.FuturesRetrieveResponse) -> list[_types.FutureCompletion]:
        """An answer: the completions of awaited ids (no longer awaited now); the others are kept for a later
        :meth:`register`. The acknowledgements sent are done with; the runs of errors end."""
        self._acks_in_flight = []
        self.errors = self.bad_requests = self.bad_replies = 0
        self.cursor = max(self.cursor, response.cursor)
        woken: list[_types.FutureCompletion] = []
        for completion in response.completions:
            rid = completion.request_id
            if rid in self.waiting:
                self.waiting.discard(rid)
                woken.append(completion)
            else:
                self._unclaimed[rid] = completion
                self._unclaimed.move_to_end(rid)
        while len(self._unclaimed) > self._max_unclaimed:
            self._unclaimed.popitem(last=False)
        return woken

    def after_error(self, exc: TinkexError) -> float:
        """The poll failed with ``exc``: the wait before the next poll, or raise ``exc`` (every waiter fails).

        The acknowledgements it carried go out again with the next poll (none are kept past a fatal error: with no
        waiter left, they would be re-sent to a failing server forever).
        """
        self._acks = self._acks_in_flight + self._acks
        self._acks_in_flight = []
        try:
            return self._decide(exc)
        except TinkexError:
            self._acks = []
            self.errors = self.bad_requests = self.bad_replies = 0
            raise

    def _decide(self, exc: TinkexError) -> float:
        if isinstance(exc, APIStatusError):
            status = exc.status_code
            if status == 400:
                self.bad_requests += 1
                if self.bad_requests > MAX_BAD_REQUEST_RETRIES:
                    raise exc
                return min(poll_backoff(0), self._max_delay_s)
            self.bad_requests = 0
            if not is_retryable_status(status):
                raise exc
            delay = self._backoff()
            if status == 429 and exc.retry_after is not None and 0.0 <= exc.retry_after <= self._retry_after_max_s:
                delay = max(delay, exc.retry_after)
            return delay
        if isinstance(exc, TLSError):
            raise exc  # the same certificate or protocol mismatch fails every poll
        if isinstance(exc, APIConnectionError):
            return self._backoff()
        if isinstance(exc, ResponseValidationError):
            self.bad_replies += 1
            if self.bad_replies > MAX_BAD_REPLY_RETRIES:
                raise exc
            return self._backoff()
        raise exc

    def _backoff(self) -> float:
        delay = min(poll_backoff(self.errors), self._max_delay_s)
        self.errors += 1
        return delay

    @staticmethod
    def is_unsupported(exc: TinkexError) -> bool:
        """A 404: the server has no ``retrieve_futures`` (fall back to per-future polling)."""
        return isinstance(exc, NotFoundError)


class _Waiter:
    __slots__ = ("completion", "error", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.completion: _types.FutureCompletion | None = None
        self.error: TinkexError | None = None


class CompletionPoller:
    """The background task that long-polls ``retrieve_futures`` for one sampling session, and its waiters.

    Args:
        transport: sends the polls (``PoolKind.FUTURES``: no circuit breaker; one attempt each).
        state: the bookkeeping (its sampling session is the target).
        poll_timeout_s: per-poll timeout (above the server's ~30 s long poll; ``config.timeouts.retrieve_future_s``).
        on_unsupported: called once if the server answers 404 (the session remembers to poll per future).
    """

    def __init__(
        self,
        transport: Transport,
        state: CompletionState,
        *,
        poll_timeout_s: float,
        on_unsupported: Callable[[], None] | None = None,
    ) -> None:
        self._transport = transport
        self.state = state
        self._poll_timeout_s = poll_timeout_s
        self._on_unsupported = on_unsupported
        self._waiters: dict[str, _Waiter] = {}
        self._wake = trio.Event()
        self.scope = trio.CancelScope()
        self.started = False
        self.unsupported = False
        self.polls = 0

    @property
    def sampling_session_id(self) -> str:
        return self.state.sampling_session_id

    @property
    def waiting_count(self) -> int:
        return len(self._waiters)

    # -- the waiters' side ----------------------------------------------------------------------------------------

    async def wait(self, request_id: str) -> _types.FutureCompletion | None:
        """Wait until ``request_id`` completes: its completion; None when the server has no ``retrieve_futures``
        (poll it per future instead). Raises the poller's fatal error (a copy). Cancelling it only stops the wait."""
        if self.unsupported:
            await trio.lowlevel.checkpoint()
            return None
        completion = self.state.register(request_id)
        if completion is not None:
            await trio.lowlevel.checkpoint()
            return completion
        waiter = self._waiters[request_id] = _Waiter()
        self._wake.set()
        try:
            await waiter.event.wait()
        finally:
            if self._waiters.get(request_id) is waiter:
                del self._waiters[request_id]
                self.state.forget(request_id)
        if waiter.error is not None:
            raise waiter.error
        return waiter.completion

    def retrieved(self, request_id: str) -> None:
        """The payload of ``request_id`` was fetched (or its failure read): acknowledge it with the next poll."""
        self.state.retrieved(request_id)
        self._wake.set()

    def cancel(self) -> None:
        """Stop the task (the session is closing); the waiters are left to the session."""
        self.scope.cancel()

    # -- the task -------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll until cancelled (or until the server turns out to have no ``retrieve_futures``)."""
        with self.scope:
            # Bounded: each pass waits for a waiter or an ack, for the server's answer, or for an error backoff.
            while not self.unsupported:
                if not self.state.wants_poll():
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                await self._poll_once()

    async def _poll_once(self) -> None:
        request = self.state.next_request()
        self.polls += 1
        try:
            response = await self._transport.request_json(
                _types.FuturesRetrieveResponse,
                PoolKind.FUTURES,
                "POST",
                RETRIEVE_FUTURES_PATH,
                json=request,
                timeout=self._poll_timeout_s,
                retry=False,
            )
        except TinkexError as exc:
            await self._on_error(exc)
            return
        for completion in self.state.on_response(response):
            waiter = self._waiters.pop(completion.request_id, None)
            if waiter is not None:
                waiter.completion = completion
                waiter.event.set()

    async def _on_error(self, exc: TinkexError) -> None:
        if self.state.is_unsupported(exc):
            logger.info(
                "retrieve_futures answered 404 for %s: polling each sample's future instead", self.sampling_session_id
            )
            self.unsupported = True
            if self._on_unsupported is not None:
                self._on_unsupported()
            self._release(None)
            return
        try:
            delay = self.state.after_error(exc)
        except TinkexError as fatal:
            logger.warning("retrieve_futures for %s failed: %r", self.sampling_session_id, fatal)
            self._release(fatal)
            await trio.lowlevel.checkpoint()
            return
        logger.debug("retrieve_futures for %s: %s; re-polling in %.1f s", self.sampling_session_id, exc, delay)
        await trio.sleep(delay)

    def _release(self, error: TinkexError | None) -> None:
        """Wake every waiter: with ``error`` (a copy each, as each raises it in its own task), or with None (fall
        back to per-future polling)."""
        waiters, self._waiters = self._waiters, {}
        for request_id, waiter in waiters.items():
            self.state.forget(request_id)
            waiter.error = _copy_error(error) if error is not None else None
            waiter.event.set()


def _copy_error(error: TinkexError) -> TinkexError:
    try:
        return copy.copy(error)
    except Exception:  # pragma: no cover - every TinkexError copies; be safe with odd subclasses
        return error
