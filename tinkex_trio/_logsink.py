"""Visible resilience: retries, circuit breaker transitions and refusals as log lines, rate-limited.

A slow run should explain itself. The transport and the breaker publish what they do as telemetry events
(``tinkex.retry``, ``tinkex.circuit_breaker.state_change``, ``tinkex.circuit_breaker.rejected``); this module turns
them into records on the ``tinkex_trio.resilience`` logger, so that a program that configured nothing still sees the
WARNING ones on stderr (``logging``'s last-resort handler) and one that set ``tinkex_trio`` to INFO sees them all.

Levels: a retry is INFO while its request has retried fewer than :data:`WARN_AFTER_ATTEMPTS` times and waits less
than :data:`WARN_DELAY_S`, WARNING after that (the run is now visibly slower); the breaker opening and refusing
calls is WARNING, its half-open and closed transitions INFO. Session expiry (a 410 to a heartbeat) is logged by the
session itself, at ERROR.

Rate limit: at most one line per ``(kind, path, level)`` every ``interval_s`` seconds of the bus's clock; what was
held back is counted and said in the next line of that key (``... (+12 more in 5.0 s)``). Breaker transitions are
never held back: there are at most a few per breaker timeout.

The events carry no credential (the bus scrubs their metadata), and the logger is one of those whose records are
scrubbed of the API key (:mod:`tinkex_trio._secrets`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from tinkex_trio._telemetry import (
    CIRCUIT_BREAKER_REJECTED,
    CIRCUIT_BREAKER_STATE_CHANGE,
    RETRY,
    TelemetryBus,
    TelemetryEvent,
)

__all__ = ["HANDLER_ID", "WARN_AFTER_ATTEMPTS", "WARN_DELAY_S", "ResilienceLog"]

HANDLER_ID: Final = "tinkex_trio.resilience"
WARN_AFTER_ATTEMPTS: Final = 3
"""A retry is logged at WARNING from this attempt on (the request has failed this many times)."""
WARN_DELAY_S: Final = 2.0
"""...or when it waits at least this long."""

logger = logging.getLogger("tinkex_trio.resilience")


@dataclass(slots=True)
class _Window:
    """One rate-limited key: when its last line was written, and how many were held back since."""

    last: float
    held: int = 0


class ResilienceLog:
    """A telemetry handler writing retries and breaker events to ``log`` (see the module docstring).

    ``interval_s`` is the least time between two lines of one key, on the clock of the events (``event.time``).
    """

    def __init__(self, *, interval_s: float = 5.0, log: logging.Logger = logger) -> None:
        self.interval_s = interval_s
        self.log = log
        self._windows: dict[tuple[str, str, int], _Window] = {}

    def attach(self, bus: TelemetryBus) -> None:
        """Start handling ``bus``'s retry and breaker events (inline: each costs a dict lookup when rate-limited)."""
        bus.attach(HANDLER_ID, (RETRY, CIRCUIT_BREAKER_STATE_CHANGE, CIRCUIT_BREAKER_REJECTED), self.handle)

    def handle(self, event: TelemetryEvent) -> None:
        if event.name == RETRY:
            self._retry(event)
        elif event.name == CIRCUIT_BREAKER_STATE_CHANGE:
            self._transition(event)
        elif event.name == CIRCUIT_BREAKER_REJECTED:
            self._rejected(event)

    # -- the three kinds ------------------------------------------------------------------------------------------

    def _retry(self, event: TelemetryEvent) -> None:
        attempt = int(event.measurements.get("attempt", 0))
        delay = float(event.measurements.get("delay_s", 0.0))
        meta = event.metadata
        what = _describe_request(meta.get("method"), meta.get("path"))
        level = logging.WARNING if attempt >= WARN_AFTER_ATTEMPTS or delay >= WARN_DELAY_S else logging.INFO
        held = self._admit(("retry", what, level), event.time, level)
        if held is None:
            return
        self.log.log(
            level,
            "retrying %s (attempt %d) in %.2f s after %s (%s)%s",
            what,
            attempt,
            delay,
            meta.get("error") or "an error",
            meta.get("reason") or "retryable",
            _held_note(held, self.interval_s),
        )

    def _transition(self, event: TelemetryEvent) -> None:
        meta = event.metadata
        new = str(meta.get("to"))
        level = logging.WARNING if new == "open" else logging.INFO
        retry_after = event.measurements.get("retry_after_s")
        reason = str(meta.get("reason"))
        if reason == "failure_threshold":
            reason = f"{int(event.measurements.get('consecutive_failures', 0))} failures in a row"
        tail = f"; calls fail fast for {retry_after:.1f} s" if new == "open" and retry_after else ""
        self.log.log(
            level, "circuit breaker for %s: %s -> %s (%s)%s", meta.get("base_url"), meta.get("from"), new, reason, tail
        )

    def _rejected(self, event: TelemetryEvent) -> None:
        meta = event.metadata
        what = _describe_request(meta.get("method"), meta.get("path"))
        held = self._admit(("rejected", str(meta.get("base_url")), logging.WARNING), event.time, logging.WARNING)
        if held is None:
            return
        self.log.warning(
            "circuit breaker for %s is %s: %s refused without being sent (retry after %.1f s)%s",
            meta.get("base_url"),
            meta.get("state"),
            what,
            float(event.measurements.get("retry_after_s", 0.0)),
            _held_note(held, self.interval_s),
        )

    # -- rate limit -----------------------------------------------------------------------------------------------

    def _admit(self, key: tuple[str, str, int], now: float, level: int) -> int | None:
        """The number of lines of ``key`` held back since its last one if a line may be written now, else None
        (and the line is counted as held back). Nothing is counted when ``level`` is not enabled."""
        if not self.log.isEnabledFor(level):
            return None
        window = self._windows.get(key)
        if window is None:
            self._windows[key] = _Window(now)
            return 0
        if now - window.last < self.interval_s:
            window.held += 1
            return None
        held, window.last, window.held = window.held, now, 0
        return held


def _describe_request(method: object, path: object) -> str:
    if isinstance(method, str) and isinstance(path, str):
        return f"{method} {path}"
    if isinstance(method, str):
        return method
    return "a request"


def _held_note(held: int, interval_s: float) -> str:
    return f" (+{held} more like it in the last {interval_s:g} s)" if held else ""
