"""What a future's poll loop does after each answer (protocol §6), sans I/O: time and randomness are passed in.

:class:`PollState` holds one future's counters and decides, after a failed or unreadable poll, how long to wait
before the next one, or that the future fails; the trio layer (:class:`~tinkex_trio._futures.FutureManager`) only
sends, sleeps and raises, in the manner of :class:`~tinkex_trio._retry.RetryPolicy`::

    delay = state.after_status(exc, now)     # seconds to wait; raises exc when the future fails
    await trio.sleep(delay)

==========================================  ========================================================================
429, connection error, timeout              ``min(2^n, 30)`` s (at least a 429's ``Retry-After``); ``n`` counts
                                            these in a row and resets on any other HTTP answer
408 / 5xx                                   a short, jittered, growing backoff (never a tight loop)
try_again                                   at once (the server long-polls); only after two quick answers in a row,
                                            no sooner than 50 ms after the last poll
400                                         up to 3 re-polls in a row at once, then the future fails
402                                         every 5 s while the billing pause allows, then the future fails
410, other 4xx                              the future fails
an unreadable answer                        up to 10 in a row, after a short backoff, then the future fails
==========================================  ========================================================================

Every wait is capped by ``max_delay_s`` (``config.retry.max_delay_s``), so a future is polled again no later than
that after an outage ends.
"""

from __future__ import annotations

import random
from typing import Final

from tinkex_trio._retry import poll_backoff, poll_error_backoff
from tinkex_trio.errors import APIStatusError, ResponseValidationError

__all__ = [
    "BILLING_RETRY_DELAY_S",
    "MAX_BAD_REPLY_RETRIES",
    "MAX_BAD_REQUEST_RETRIES",
    "TRY_AGAIN_MIN_INTERVAL_S",
    "PollState",
]

MAX_BAD_REQUEST_RETRIES: Final = 3
"""400 answers re-polled in a row before the future fails (as the official SDK)."""
MAX_BAD_REPLY_RETRIES: Final = 10
"""Unreadable 200 answers (not JSON, wrong schema, undecodable protobuf) re-polled in a row before failing. The
server holds the result, so re-polling is safe; the bound is for a server that only ever answers garbage."""
BILLING_RETRY_DELAY_S: Final = 5.0
"""Wait between polls answered 402, while the billing pause lasts."""
TRY_AGAIN_MIN_INTERVAL_S: Final = 0.05
"""A ``try_again`` is re-polled at once, as the server asks; only a server that answers try_again again within this
of the poll (it does not long-poll) is polled no sooner than this after the previous poll: at most 20 polls a
second per future, not a tight loop."""


class PollState:
    """One future's poll counters and decisions (see the module docstring).

    Args:
        max_delay_s: no wait is longer (``config.retry.max_delay_s``).
        retry_after_max_s: a 429's ``Retry-After`` is honoured up to this (``config.retry.retry_after_max_s``).
        billing_pause_s: how long 402 answers are waited out (``billing_exception_max_pause_duration_sec``).
        rng: jitter for the error backoff.
    """

    __slots__ = (
        "_billing_pause_s",
        "_max_delay_s",
        "_retry_after_max_s",
        "_rng",
        "allow_metadata_only",
        "bad_replies",
        "bad_requests",
        "billing_since",
        "connection_errors",
        "iteration",
        "queue_state",
        "quick_try_agains",
        "server_errors",
    )

    def __init__(
        self, *, max_delay_s: float, retry_after_max_s: float, billing_pause_s: float, rng: random.Random
    ) -> None:
        self._max_delay_s = max_delay_s
        self._retry_after_max_s = retry_after_max_s
        self._billing_pause_s = billing_pause_s
        self._rng = rng
        self.iteration = 0  # X-Tinker-Request-Iteration
        self.allow_metadata_only = True
        self.connection_errors = 0  # 429 / connection errors / timeouts in a row: poll_backoff's n
        self.server_errors = 0  # 408 / 5xx in a row: poll_error_backoff's n
        self.bad_requests = 0  # 400s in a row
        self.bad_replies = 0  # unreadable 200s in a row
        self.billing_since: float | None = None  # start of a run of 402s
        self.queue_state: str | None = None  # last queue_state seen
        self.quick_try_agains = 0  # try_again answers in a row that came back within TRY_AGAIN_MIN_INTERVAL_S

    def after_connection_error(self) -> float:
        """No HTTP answer (connection error, timeout): the wait before the next poll."""
        delay = min(poll_backoff(self.connection_errors), self._max_delay_s)
        self.connection_errors += 1
        return delay

    def after_answer(self) -> None:
        """A 2xx answer: the runs of errors end."""
        self.connection_errors = self.server_errors = self.bad_requests = 0
        self.billing_since = None

    def after_readable(self) -> None:
        """A readable answer that is not the result yet (try_again, complete_metadata): a run of unreadable ones
        ends."""
        self.bad_replies = 0

    def after_try_again(self, elapsed: float) -> float:
        """A ``try_again`` answered ``elapsed`` seconds after its poll was sent: the wait before the next poll. None
        after a long-poll or the first quick answer; up to :data:`TRY_AGAIN_MIN_INTERVAL_S` after the second quick
        answer in a row."""
        if elapsed >= TRY_AGAIN_MIN_INTERVAL_S:
            self.quick_try_agains = 0
            return 0.0
        self.quick_try_agains += 1
        return 0.0 if self.quick_try_agains == 1 else TRY_AGAIN_MIN_INTERVAL_S - elapsed

    def after_bad_reply(self, error: ResponseValidationError) -> float:
        """An unreadable answer: the wait before the next poll; raises ``error`` past :data:`MAX_BAD_REPLY_RETRIES`
        in a row."""
        self.bad_replies += 1
        if self.bad_replies > MAX_BAD_REPLY_RETRIES:
            raise error
        return min(poll_error_backoff(self.bad_replies - 1, self._rng), self._max_delay_s)

    def after_status(self, exc: APIStatusError, now: float) -> float:
        """A non-2xx answer at time ``now``: the wait before the next poll, or raise ``exc`` (the future fails)."""
        status = exc.status_code
        if status == 429:
            delay = self.after_connection_error()
            if exc.retry_after is not None and 0.0 <= exc.retry_after <= self._retry_after_max_s:
                delay = max(delay, exc.retry_after)
            return delay
        self.connection_errors = 0  # any other HTTP answer resets the connection backoff
        if status == 408 or status >= 500:
            self.bad_requests = 0
            delay = min(poll_error_backoff(self.server_errors, self._rng), self._max_delay_s)
            self.server_errors += 1
            return delay
        self.server_errors = 0
        if status == 400:
            self.bad_requests += 1
            if self.bad_requests <= MAX_BAD_REQUEST_RETRIES:
                return 0.0
            raise exc
        self.bad_requests = 0
        if status == 402:
            if self.billing_since is None:
                self.billing_since = now
            if now + BILLING_RETRY_DELAY_S - self.billing_since <= self._billing_pause_s:
                return BILLING_RETRY_DELAY_S
        # 410 (GoneError: the future expired; the sampler re-submits), 402 past the pause, other 4xx: fatal.
        raise exc
