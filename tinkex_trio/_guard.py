"""The retry loop of a logical request, with the circuit breaker's bookkeeping (the trio layer over two pure cores).

:class:`~tinkex_trio._retry.RetryPolicy` decides whether and when to retry, :class:`~tinkex_trio.CircuitBreaker`
whether a call may go; this module runs them: :class:`BreakerGuard` is the breaker's view of one logical request
(admission, each attempt, the final verdict), and :func:`run_with_retries` is the one loop every retried request
goes through (the transport's requests, a whole sample with its re-submissions).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar, cast

import trio

from tinkex_trio._breaker import CircuitBreaker
from tinkex_trio._breaker_types import Permit
from tinkex_trio._breaker_verdict import Verdict, classify_exception
from tinkex_trio._telemetry import CIRCUIT_BREAKER_REJECTED, RETRY, TelemetryBus
from tinkex_trio.errors import APIError, CircuitOpenError

__all__ = ["BreakerGuard", "RetryStep", "run_with_retries"]

logger = logging.getLogger("tinkex_trio.transport")

T = TypeVar("T")


class BreakerGuard:
    """The circuit breaker's view of one logical request that may take several attempts (see the module docstring).

    ``admit`` before each attempt (a live CLOSED permit is kept; otherwise the breaker is asked again and may raise
    :class:`~tinkex_trio.errors.CircuitOpenError`), ``attempt_failed`` after a failed attempt (settles a HALF_OPEN
    trial), ``stop_if_opened`` before waiting for a retry, ``settle`` with the request's final verdict (and, when the
    breaker judges slow calls, when its last attempt started), and ``release`` in a ``finally`` (no verdict:
    cancellation, Ctrl-C; counted as neutral once, never after a verdict). With no breaker every method is a no-op.
    """

    __slots__ = ("_base_url", "_breaker", "_meta", "_permit", "_settled", "_telemetry")

    def __init__(
        self,
        breaker: CircuitBreaker | None,
        telemetry: TelemetryBus,
        meta: Mapping[str, str | int | float | bool | None],
        base_url: str,
    ) -> None:
        self._breaker = breaker
        self._telemetry = telemetry
        self._meta = meta
        self._base_url = base_url
        self._permit: Permit | None = None
        self._settled = False

    @property
    def timed(self) -> bool:
        """Whether the breaker judges slow calls: then the caller passes ``started`` to :meth:`settle`."""
        breaker = self._breaker
        return breaker is not None and breaker.slow_call_s is not None

    def describe(self, meta: Mapping[str, str | int | float | bool | None]) -> None:
        """Give the guard the request's telemetry metadata, unless its maker already did."""
        if not self._meta:
            self._meta = meta

    def admit(self, attempt: int, cause: APIError | None = None) -> None:
        """Admission before an attempt; raises CircuitOpenError (``from cause``) when the breaker refuses."""
        breaker, permit = self._breaker, self._permit
        if breaker is None:
            return
        if permit is not None and not permit.settled and permit.generation == breaker.generation:
            return
        if permit is not None:
            breaker.release(permit)  # stale or settled: a no-op, for clarity
        now = trio.current_time()
        try:
            self._permit = breaker.before_call(now)
        except CircuitOpenError as exc:
            self._telemetry.emit(
                CIRCUIT_BREAKER_REJECTED,
                {"retry_after_s": exc.retry_after, "attempt": attempt},
                {**self._meta, "state": breaker.state.value, "base_url": self._base_url},
                time=now,
            )
            if cause is not None:
                raise exc from cause
            raise

    def attempt_failed(self, verdict: Verdict) -> None:
        """A failed attempt: a HALF_OPEN trial is settled by its attempt, not by the request's final outcome."""
        if self._breaker is not None and self._permit is not None and self._permit.trial:
            self._breaker.record(verdict, trio.current_time(), self._permit)

    def stop_if_opened(self, attempt: int, cause: APIError) -> None:
        """Before waiting for a retry: if the breaker has opened meanwhile, raise CircuitOpenError now."""
        breaker = self._breaker
        if breaker is not None:
            breaker.poll(trio.current_time())
            if breaker.open_until is not None:
                self.admit(attempt, cause)

    def settle(self, verdict: Verdict, started: float | None = None) -> None:
        """The logical request's final verdict; ``started``: when the attempt that gave it began (trio's clock), for
        the slow-call mode."""
        if self._breaker is not None and self._permit is not None:
            now = trio.current_time()
            duration = now - started if started is not None else None
            self._breaker.record(verdict, now, self._permit, duration=duration)
            self._settled = True

    def release(self) -> None:
        """End without a verdict (frees a trial slot, counts as neutral); a no-op once settled."""
        if self._breaker is not None and self._permit is not None and not self._settled and not self._permit.settled:
            self._breaker.release(self._permit)
            self._settled = True


@dataclass(frozen=True, slots=True)
class RetryStep:
    """Retry after ``delay`` seconds, for ``reason`` (published in the ``tinkex.retry`` event)."""

    delay: float
    reason: str


async def run_with_retries(
    attempt: Callable[[int], Awaitable[T]],
    next_delay: Callable[[int, Exception], RetryStep | None],
    guard: BreakerGuard,
    telemetry: TelemetryBus,
    meta: Mapping[str, str | int | float | bool | None],
    *,
    committed: bool = False,
    what: str = "request",
) -> T:
    """The one retry loop of the client, with the circuit breaker's bookkeeping of a logical request.

    Runs ``attempt(0)``, ``attempt(1)``, ... until one returns; after a failure, ``next_delay(n, exc)`` says how long
    to wait before the next attempt, or ``None`` to raise ``exc``. ``guard`` sees every attempt (a HALF_OPEN trial is
    settled by its attempt) and the request's final verdict. Unless ``committed`` (the caller admitted the request
    and releases the guard), the breaker is asked before the first attempt and before every retry it may refuse
    (CircuitOpenError, chained to the last error), and the guard is released at the end. Each retry emits
    ``tinkex.retry``. Cancellation passes through untouched, with no verdict.
    """
    n = 0
    if not committed:
        guard.admit(n)
    try:
        while True:
            # The slow-call mode judges the attempt that gives the verdict (backoff sleeps are the client's own).
            started = trio.current_time() if guard.timed else None
            try:
                result = await attempt(n)
            except Exception as exc:
                verdict = classify_exception(exc)
                guard.attempt_failed(verdict)
                step = next_delay(n, exc)
                if step is None:
                    guard.settle(verdict, started)
                    raise
                cause = cast("APIError", exc)  # only API errors are retried
                if not committed:
                    guard.stop_if_opened(n + 1, cause)  # do not wait for a retry it will refuse
                telemetry.emit(
                    RETRY,
                    {"delay_s": step.delay, "attempt": n + 1},
                    {**meta, "reason": step.reason, "error": type(exc).__name__},
                )
                logger.debug("retrying %s in %.3fs (%s)", what, step.delay, step.reason)
                await trio.sleep(step.delay)
                n += 1
                if not committed:
                    guard.admit(n, cause)
            else:
                guard.settle(Verdict.SUCCESS, started)
                return result
    finally:
        # Cancellation, Ctrl-C: no verdict; frees a trial slot (a no-op once settled).
        if not committed:
            guard.release()
