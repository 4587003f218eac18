"""The retry policy (protocol §7), sans I/O: time is passed in, randomness is injectable, nothing sleeps.

The HTTP layer asks :meth:`RetryPolicy.decide` after each failed attempt and sleeps for the decision's delay::

    policy = RetryPolicy(config.retry)
    started = trio.current_time()
    for attempt in itertools.count():
        try:
            return await send()
        except APIError as exc:
            outcome = outcome_from_exception(exc)
            decision = policy.decide(attempt, outcome, trio.current_time(), started)
            if outcome is None or not decision.retry:
                raise
        await trio.sleep(decision.delay)

Rules: 408, 409, 429 and every status >= 500 are retried, and so are connection errors and timeouts (but not a
:class:`~tinkex_trio.errors.TLSError`: a certificate or handshake failure repeats identically); a
``x-should-retry: true|false`` response header overrides the status. The delay is the server's ``retry-after-ms``, else
its ``retry-after`` (seconds or an HTTP date), when that is between 0 and ``retry_after_max_s`` (60 s); otherwise
``min(base_delay_s * 2**k, max_delay_s) * (1 - jitter * U[0,1))`` for retry ``k`` (0 for the first retry). Retrying
stops after ``max_retries`` retries, or when the next delay would end past ``retry_budget_s`` after the first attempt.

Cancellation is not an outcome: ``trio.Cancelled`` must never reach this module.
"""

from __future__ import annotations

import email.utils
import enum
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tinkex_trio._config import RetryConfig
from tinkex_trio.errors import APIConnectionError, APIStatusError, APITimeoutError, TLSError

__all__ = [
    "ConnectionFailure",
    "Outcome",
    "RetryDecision",
    "RetryPolicy",
    "RetryReason",
    "StatusOutcome",
    "header_value",
    "is_retryable_status",
    "outcome_from_exception",
    "parse_retry_after",
    "poll_backoff",
    "poll_error_backoff",
    "sample_retry_delay",
]

# Statuses retried unless the server says otherwise.
_RETRYABLE_STATUSES = frozenset({408, 409, 429})


def is_retryable_status(status_code: int) -> bool:
    """408, 409, 429 and >= 500: the statuses retried when the server sends no ``x-should-retry``."""
    return status_code in _RETRYABLE_STATUSES or status_code >= 500


# --------------------------------------------------------------------------------------------------------------------
# Outcomes
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusOutcome:
    """The server answered with an HTTP status that is not a success. ``headers`` may use any letter case."""

    status_code: int
    headers: Mapping[str, str] = field(default_factory=lambda: dict[str, str]())


@dataclass(frozen=True, slots=True)
class ConnectionFailure:
    """No HTTP response: the connection failed (``timeout=False``) or the request timed out (``timeout=True``)."""

    timeout: bool = False


Outcome = StatusOutcome | ConnectionFailure


def outcome_from_exception(exc: BaseException) -> Outcome | None:
    """The outcome an error stands for, or ``None`` when it is not a transport outcome at all (never retried).

    :class:`~tinkex_trio.errors.APIStatusError` → :class:`StatusOutcome`; :class:`~tinkex_trio.errors.APITimeoutError`
    → ``ConnectionFailure(timeout=True)``; other :class:`~tinkex_trio.errors.APIConnectionError` →
    ``ConnectionFailure()``. Anything else (including ``trio.Cancelled``) → ``None``; so is a
    :class:`~tinkex_trio.errors.TLSError`, the one connection error that retrying cannot fix (the same certificate or
    protocol mismatch fails every handshake), and a :class:`~tinkex_trio.errors.ResponseValidationError` (including
    ``ResponseTooLargeError``: the server would send the same body again).
    """
    if isinstance(exc, APIStatusError):
        return StatusOutcome(exc.status_code, exc.headers)
    if isinstance(exc, TLSError):
        return None
    if isinstance(exc, APITimeoutError):
        return ConnectionFailure(timeout=True)
    if isinstance(exc, APIConnectionError):
        return ConnectionFailure()
    return None


# --------------------------------------------------------------------------------------------------------------------
# Headers
# --------------------------------------------------------------------------------------------------------------------


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """``headers[name]`` ignoring letter case (works for plain dicts as well as ``httpx.Headers``)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def _finite_float(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait, or ``None`` if it does not say (or says something unparseable).

    ``retry-after-ms`` (milliseconds) is read first, then ``retry-after`` as seconds (floats allowed), then
    ``retry-after`` as an HTTP date, relative to ``now`` (wall-clock seconds since the epoch, default
    ``time.time()``). The value is not range-checked here: a date in the past gives a negative number.
    """
    ms = header_value(headers, "retry-after-ms")
    if ms is not None and (value := _finite_float(ms)) is not None:
        return value / 1000.0
    raw = header_value(headers, "retry-after")
    if raw is None:
        return None
    if (value := _finite_float(raw)) is not None:
        return value
    parsed = email.utils.parsedate_tz(raw.strip())
    if parsed is None:
        return None
    try:
        when = email.utils.mktime_tz(parsed)
    except (OverflowError, ValueError):
        return None
    return float(when) - (time.time() if now is None else now)


def _should_retry_header(headers: Mapping[str, str]) -> bool | None:
    value = header_value(headers, "x-should-retry")
    if value is None:
        return None
    value = value.strip().lower()
    if value == "true":
        return True
    if value == "false":
        return False
    return None


# --------------------------------------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------------------------------------


class RetryReason(enum.StrEnum):
    """Why a decision was taken. Short, stable values: usable as a metric label or telemetry metadata."""

    RETRYABLE_STATUS = "retryable_status"  # 408 / 409 / 429 / 5xx
    SERVER_SAYS_RETRY = "server_says_retry"  # x-should-retry: true
    SERVER_SAYS_NO_RETRY = "server_says_no_retry"  # x-should-retry: false
    NOT_RETRYABLE = "not_retryable"  # any other status
    CONNECTION_ERROR = "connection_error"
    TIMEOUT = "timeout"
    MAX_RETRIES = "max_retries"  # retryable, but the retries are used up
    BUDGET_EXHAUSTED = "budget_exhausted"  # retryable, but the delay would end past the budget


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do after a failed attempt.

    Attributes:
        retry: retry (after ``delay`` seconds) or give up.
        delay: seconds to wait before the retry; 0.0 when giving up.
        reason: why.
        from_retry_after: the delay is the server's ``retry-after(-ms)`` rather than the backoff formula.
    """

    retry: bool
    delay: float
    reason: RetryReason
    from_retry_after: bool = False


class RetryPolicy:
    """The HTTP-layer retry policy (protocol §7, layer 1) built from a :class:`~tinkex_trio._config.RetryConfig`.

    Pure: :meth:`decide` takes the attempt index and the times, and never sleeps. ``rng`` supplies the jitter
    (seed it in tests); ``wall_clock`` is used only to read ``retry-after`` HTTP dates.
    """

    __slots__ = ("_config", "_rng", "_wall_clock")

    def __init__(
        self,
        config: RetryConfig | None = None,
        *,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config if config is not None else RetryConfig()
        self._rng = rng if rng is not None else random.Random()
        self._wall_clock = wall_clock

    @property
    def config(self) -> RetryConfig:
        return self._config

    def backoff(self, retry_index: int) -> float:
        """``min(base·2^k, max_delay)·(1 − jitter·U[0,1))`` for retry ``k`` (0 for the first retry)."""
        cfg = self._config
        k = min(max(retry_index, 0), 1000)  # 2.0**1000 is finite; cap so a huge index cannot overflow
        base = min(cfg.base_delay_s * 2.0**k, cfg.max_delay_s)
        return max(base * (1.0 - cfg.jitter * self._rng.random()), 0.0)

    def classify(self, outcome: Outcome) -> tuple[bool, RetryReason]:
        """Whether ``outcome`` is retryable in itself (ignoring attempt counts and budget), and why."""
        if isinstance(outcome, ConnectionFailure):
            return True, (RetryReason.TIMEOUT if outcome.timeout else RetryReason.CONNECTION_ERROR)
        header = _should_retry_header(outcome.headers)
        if header is True:
            return True, RetryReason.SERVER_SAYS_RETRY
        if header is False:
            return False, RetryReason.SERVER_SAYS_NO_RETRY
        if is_retryable_status(outcome.status_code):
            return True, RetryReason.RETRYABLE_STATUS
        return False, RetryReason.NOT_RETRYABLE

    def decide(self, attempt: int, outcome: Outcome, now: float, started_at: float) -> RetryDecision:
        """Decide what follows the failed attempt number ``attempt`` (0 for the first try).

        ``now`` and ``started_at`` (when the first attempt began) are on the caller's clock (``trio.current_time()``).
        """
        retryable, reason = self.classify(outcome)
        if not retryable:
            return RetryDecision(False, 0.0, reason)
        if attempt >= self._config.max_retries:
            return RetryDecision(False, 0.0, RetryReason.MAX_RETRIES)
        delay: float | None = None
        if isinstance(outcome, StatusOutcome):
            server_delay = parse_retry_after(outcome.headers, now=self._wall_clock())
            if server_delay is not None and 0.0 <= server_delay <= self._config.retry_after_max_s:
                delay = server_delay
        from_retry_after = delay is not None
        if delay is None:
            delay = self.backoff(attempt)
        if (now - started_at) + delay > self._config.retry_budget_s:
            return RetryDecision(False, 0.0, RetryReason.BUDGET_EXHAUSTED)
        return RetryDecision(True, delay, reason, from_retry_after)


# --------------------------------------------------------------------------------------------------------------------
# Future polling (protocol §6) and the outer retry loop (§7, layer 2)
# --------------------------------------------------------------------------------------------------------------------

POLL_BACKOFF_MAX_S = 30.0
POLL_ERROR_BACKOFF_BASE_S = 0.25
POLL_ERROR_BACKOFF_MAX_S = 5.0


def sample_retry_delay(retry_number: int, config: RetryConfig, rng: random.Random) -> float:
    """The sampler's retry backoff (protocol §7, layer 3): ``min(base·2^(n−1), max)`` with uniform ±``jitter``,
    capped at ``max_delay_s`` (``n = 1`` for the first retry)."""
    base = min(config.base_delay_s * 2.0 ** min(retry_number - 1, 64), config.max_delay_s)
    return max(0.0, min(base * (1.0 + config.jitter * rng.uniform(-1.0, 1.0)), config.max_delay_s))


def poll_backoff(n: int) -> float:
    """``min(2^n, 30)`` seconds: the wait before re-polling a future after a 429, a connection error or a timeout
    (``n`` counts such errors in a row and resets on any HTTP response). Also the outer retry loop's delay."""
    return min(2.0 ** min(max(n, 0), 16), POLL_BACKOFF_MAX_S)


def poll_error_backoff(n: int, rng: random.Random | None = None, *, jitter: float = 0.25) -> float:
    """``min(0.25·2^n, 5)·(1 − jitter·U[0,1))`` seconds: the short wait before re-polling after a 408 or a 5xx.

    The official SDK re-polls at once there; we wait a little so an erroring server never sees a tight loop.
    """
    base = min(POLL_ERROR_BACKOFF_BASE_S * 2.0 ** min(max(n, 0), 16), POLL_ERROR_BACKOFF_MAX_S)
    u = rng.random() if rng is not None else random.random()
    return base * (1.0 - jitter * u)
