"""The values a circuit breaker hands out: its state (:class:`BreakerState`), an admission (:class:`Permit`), a change
of state (:class:`Transition`, given to every :data:`Listener`) and what it has counted (:class:`BreakerStats`).

Plain data, the vocabulary that the state machine (:mod:`tinkex_trio._breaker`) makes and the modules around it read:
the retry loop's guard holds permits, the supervisor publishes transitions and stats, users see all four
(``tinkex_trio.BreakerState``, ``Permit``, ``Transition``, ``BreakerStats``). Kept apart so that the machine's module
holds the machine alone.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["BreakerState", "BreakerStats", "Listener", "Permit", "Transition"]


class BreakerState(enum.StrEnum):
    """The state of a :class:`~tinkex_trio.CircuitBreaker`."""

    CLOSED = "closed"
    """Calls pass; failures in a row are counted."""
    OPEN = "open"
    """Calls fail fast with :class:`~tinkex_trio.errors.CircuitOpenError` until the timeout has passed."""
    HALF_OPEN = "half_open"
    """A limited number of trial calls pass; the first verdict closes or re-opens the breaker."""

    @property
    def code(self) -> int:
        """A number for gauges: 0 closed, 1 half-open, 2 open."""
        return _STATE_CODES[self]


_STATE_CODES: Final = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of state, as given to listeners and returned by the methods that cause it.

    ``reason`` is one of ``"failure_threshold"``, ``"failure_rate"``, ``"slow_call_rate"``, ``"timeout_elapsed"``,
    ``"trial_succeeded"``, ``"trial_failed"``, ``"trial_slow"``, ``"forced_open"``, ``"reset"`` (short and stable:
    usable as telemetry metadata and metric labels).
    """

    old: BreakerState
    new: BreakerState
    at: float
    reason: str
    consecutive_failures: int


Listener = Callable[[Transition], None]


class Permit:
    """An admission by :meth:`CircuitBreaker.before_call <tinkex_trio.CircuitBreaker.before_call>`: hand it back with
    the call's outcome.

    ``trial`` says the call holds one of the HALF_OPEN trial slots. A trial permit is settled once; later outcomes
    given with it are ignored. The calls admitted while CLOSED share one permit per generation (the hot path makes no
    allocation), which is never marked settled: report each call's outcome once.
    """

    __slots__ = ("generation", "settled", "trial")

    def __init__(self, generation: int, trial: bool) -> None:
        self.generation = generation
        self.trial = trial
        self.settled = False

    def __repr__(self) -> str:
        return f"<Permit generation={self.generation} trial={self.trial} settled={self.settled}>"


@dataclass(frozen=True, slots=True)
class BreakerStats:
    """What a :class:`~tinkex_trio.CircuitBreaker` has counted (:attr:`~tinkex_trio.CircuitBreaker.stats`), since it
    was made or last forgot another ``trio.run``'s state; :meth:`~tinkex_trio.CircuitBreaker.reset` does not clear it.

    ``calls`` is every admitted call whose outcome the breaker took: ``successes + failures + neutral``. Outcomes of
    calls admitted before the last transition (stale permits) and outcomes reported while OPEN are ignored and not
    counted. ``neutral`` holds calls that ended with no verdict: a NEUTRAL outcome (429, 408, TLS, a caller's bug) or
    a cancellation. ``slow_calls`` (only when ``slow_call_s`` is set) counts calls slower than ``slow_call_s``, of
    either verdict. ``rejections`` counts calls refused (CircuitOpenError, or ``allow`` answering False).
    ``transitions`` maps each transition's ``reason`` to how many there were.

    The window figures describe the sliding window of the rate modes: ``window_calls`` (0 when neither
    ``failure_rate_threshold`` nor ``slow_call_s`` is set), ``failure_rate`` (None unless ``failure_rate_threshold``
    is set) and ``slow_call_rate`` (None unless ``slow_call_s`` is set).
    """

    state: BreakerState
    forced: bool
    calls: int
    successes: int
    failures: int
    slow_calls: int
    neutral: int
    rejections: int
    transitions: Mapping[str, int]
    consecutive_failures: int
    window_calls: int
    failure_rate: float | None
    slow_call_rate: float | None

    def as_measurements(self) -> dict[str, float]:
        """The counts as telemetry measurements (floats; the rates only when a window is kept)."""
        out = {
            "calls": float(self.calls),
            "successes": float(self.successes),
            "failures": float(self.failures),
            "slow_calls": float(self.slow_calls),
            "neutral": float(self.neutral),
            "rejections": float(self.rejections),
        }
        if self.failure_rate is not None:
            out["failure_rate"] = self.failure_rate
        if self.slow_call_rate is not None:
            out["slow_call_rate"] = self.slow_call_rate
        return out
