"""The breaker supervisor: the task a session runs beside its circuit breaker (:func:`supervise`), and the export of
the breaker's counts to the session's metrics (:class:`StatsExport`).

The state machine (:mod:`tinkex_trio._breaker`) is sans I/O: it never sleeps, and it tells of a transition only to
its listeners, inline. This is its trio side, what makes a breaker visible and keeps it on time: the supervisor owns
the open timer (it sleeps until the timer ends, then polls, so the move to half-open happens even when no call
comes) and publishes every transition, whoever caused it, as telemetry, the state gauge and the breaker's counters
(``tinkex_circuit_breaker_*``). It reaches the metrics store through :class:`StatsSink` (a protocol that
:class:`~tinkex_trio._metrics.Metrics` satisfies), so the breaker and the store never import each other.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Final, Protocol

import trio

from tinkex_trio._breaker import CircuitBreaker
from tinkex_trio._breaker_types import BreakerState, Transition
from tinkex_trio._telemetry import CIRCUIT_BREAKER_STATE_CHANGE, TelemetryBus

__all__ = [
    "CALLS_TOTAL",
    "FAILURE_RATE_GAUGE",
    "FORCED_GAUGE",
    "GAUGE_NAME",
    "SLOW_CALLS_TOTAL",
    "SLOW_CALL_RATE_GAUGE",
    "StatsExport",
    "StatsSink",
    "supervise",
]

logger = logging.getLogger("tinkex_trio.breaker")


GAUGE_NAME: Final = "tinkex_circuit_breaker_state"
"""The gauge :func:`supervise` sets (0 closed, 1 half-open, 2 open) when given a ``set_gauge``."""
CALLS_TOTAL: Final = "tinkex_circuit_breaker_calls_total"
"""Counter of the calls the breaker counted, by ``outcome`` (``success``, ``failure``, ``neutral``)."""
SLOW_CALLS_TOTAL: Final = "tinkex_circuit_breaker_slow_calls_total"
"""Counter of the calls slower than ``slow_call_s``."""
FORCED_GAUGE: Final = "tinkex_circuit_breaker_forced"
"""Gauge: 1 while the breaker is forced open, else 0."""
FAILURE_RATE_GAUGE: Final = "tinkex_circuit_breaker_failure_rate"
"""Gauge: the share of failures in the window (only when a window mode is on)."""
SLOW_CALL_RATE_GAUGE: Final = "tinkex_circuit_breaker_slow_call_rate"
"""Gauge: the share of slow calls in the window (only when a window mode is on)."""


class StatsSink(Protocol):
    """Where :func:`supervise` puts a breaker's :attr:`~CircuitBreaker.stats` (a
    :class:`~tinkex_trio._metrics.Metrics` store is one)."""

    def increment(self, name: str, value: float = 1, *, labels: Mapping[str, str] | None = None) -> None: ...

    def set_gauge(self, name: str, value: float, *, labels: Mapping[str, str] | None = None) -> None: ...

    def add_pending(self, drain: Callable[[], None]) -> None: ...

    def remove_pending(self, drain: Callable[[], None]) -> None: ...


class StatsExport:
    """Keeps ``sink`` up to date with ``breaker.stats`` from the moment it is made: counters grow by what the breaker
    counted since the last :meth:`sync` (so a reset of the store counts from then on, and a breaker's fresh start in
    a new run is a new baseline), gauges are set. :meth:`sync` runs on every read of the store
    (``sink.add_pending``) until :meth:`close`."""

    def __init__(self, breaker: CircuitBreaker, sink: StatsSink) -> None:
        self._breaker = breaker
        self._sink = sink
        self._last = breaker.stats
        sink.add_pending(self.sync)

    def sync(self) -> None:
        """Bring the sink up to date."""
        stats, before, sink = self._breaker.stats, self._last, self._sink
        self._last = stats
        for outcome, count, previous in (
            ("success", stats.successes, before.successes),
            ("failure", stats.failures, before.failures),
            ("neutral", stats.neutral, before.neutral),
        ):
            if count > previous:
                sink.increment(CALLS_TOTAL, count - previous, labels={"outcome": outcome})
        if stats.slow_calls > before.slow_calls:
            sink.increment(SLOW_CALLS_TOTAL, stats.slow_calls - before.slow_calls)
        sink.set_gauge(FORCED_GAUGE, 1.0 if stats.forced else 0.0)
        if stats.failure_rate is not None:
            sink.set_gauge(FAILURE_RATE_GAUGE, stats.failure_rate)
        if stats.slow_call_rate is not None:
            sink.set_gauge(SLOW_CALL_RATE_GAUGE, stats.slow_call_rate)

    def close(self) -> None:
        """A last :meth:`sync`, then no more."""
        self.sync()
        self._sink.remove_pending(self.sync)


async def supervise(
    breaker: CircuitBreaker,
    telemetry: TelemetryBus,
    *,
    base_url: str,
    set_gauge: Callable[[str, float], object] | None = None,
    stats: StatsExport | None = None,
) -> None:
    """The breaker supervisor (DESIGN §2): runs in the session's nursery until cancelled.

    * Publishes every transition of ``breaker`` (whoever caused it: this session, another session on the same
      registry breaker, this task, or a caller's :meth:`~CircuitBreaker.force_open` / :meth:`~CircuitBreaker.reset`)
      as ``tinkex.circuit_breaker.state_change``: measurements ``state`` (0/1/2), ``consecutive_failures``,
      ``retry_after_s`` (``inf`` when forced open), ``forced`` (0/1) and the breaker's :attr:`~CircuitBreaker.stats`
      (:meth:`~tinkex_trio.BreakerStats.as_measurements`: ``calls``, ``successes``, ``failures``,
      ``slow_calls``, ``neutral``, ``rejections``, and the window's ``failure_rate`` / ``slow_call_rate`` when a
      window mode is on); metadata ``from``, ``to``, ``reason``, ``base_url``.
    * Owns the open timer: sleeps until ``open_until`` on trio's clock, then moves the breaker to HALF_OPEN (so the
      state and the event appear on time even when no call comes). A forced breaker has no timer.
    * Feeds the ``tinkex_circuit_breaker_state`` gauge through ``set_gauge(name, value)`` if given, and syncs
      ``stats`` (a :class:`StatsExport`, made when the session starts: ``tinkex_circuit_breaker_calls_total{outcome}``,
      ``..._slow_calls_total``, the ``..._forced`` gauge and the window's rates) on every transition, closing it when
      it ends.
    """
    wake: list[trio.Event] = [trio.Event()]

    def gauge(state: BreakerState) -> None:
        if set_gauge is not None:
            try:
                set_gauge(GAUGE_NAME, float(state.code))
            except Exception:
                logger.exception("setting the circuit breaker gauge failed")

    def on_transition(transition: Transition) -> None:
        snapshot = breaker.stats
        telemetry.emit(
            CIRCUIT_BREAKER_STATE_CHANGE,
            {
                "state": transition.new.code,
                "consecutive_failures": transition.consecutive_failures,
                "retry_after_s": breaker.retry_after(transition.at),
                "forced": 1.0 if snapshot.forced else 0.0,
                **snapshot.as_measurements(),
            },
            {
                "from": transition.old.value,
                "to": transition.new.value,
                "reason": transition.reason,
                "base_url": base_url,
            },
            time=transition.at,
        )
        gauge(transition.new)
        if stats is not None:
            stats.sync()
        wake[0].set()

    breaker.add_listener(on_transition)
    try:
        gauge(breaker.state)
        if stats is not None:
            stats.sync()
        # Bounded: every pass waits for a transition or for the end of the open timer (which poll() then applies).
        while True:
            wake[0] = trio.Event()
            until = breaker.open_until
            with trio.move_on_at(until if until is not None else math.inf):
                await wake[0].wait()
            breaker.poll(trio.current_time())
    finally:
        breaker.remove_listener(on_transition)
        if stats is not None:
            stats.close()
