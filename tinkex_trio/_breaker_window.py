"""The sliding window of the circuit breaker's rate modes: the last ``size`` verdicts a CLOSED breaker took, each as
whether the call failed and whether it was slow, with the running count of each, and the judgement of its rates.

A small pure class with no clock: the state machine (:mod:`tinkex_trio._breaker`) feeds it only while a rate mode is
on (``failure_rate_threshold`` or ``slow_call_s``), opens when :meth:`VerdictWindow.add` names a rate that reached its
threshold, and empties it whenever it closes. The thresholds are the breaker's own settings (:class:`RateSettings`),
read at every verdict, so the window keeps no copy of them. Kept apart from the machine because it is a data structure
of its own, the one part of a breaker whose memory grows with a setting: one byte per call in a ring (bit 0: failed,
bit 1: slow), so adding a verdict is O(1) and the counts are never recomputed.
"""

from __future__ import annotations

from typing import Final, Protocol

__all__ = ["RateSettings", "VerdictWindow"]

_FAILED: Final = 1
_SLOW: Final = 2


class RateSettings(Protocol):
    """The settings a window's rates are judged by (a :class:`~tinkex_trio.CircuitBreaker` has them)."""

    @property
    def minimum_calls(self) -> int: ...

    @property
    def failure_rate_threshold(self) -> float | None: ...

    @property
    def slow_call_s(self) -> float | None: ...

    @property
    def slow_call_rate_threshold(self) -> float: ...


class VerdictWindow:
    """The last ``size`` verdicts (see the module docstring): ``calls`` of them so far (at most ``size``), ``failures``
    of which failed and ``slow`` of which were slow."""

    __slots__ = ("_pos", "_ring", "_size", "calls", "failures", "slow")

    def __init__(self, size: int) -> None:
        self._ring = bytearray(size)
        self._size = size
        self._pos = 0
        self.calls = self.failures = self.slow = 0

    def clear(self) -> None:
        """Empty the window (its size is kept)."""
        self._pos = self.calls = self.failures = self.slow = 0

    def add(self, failed: bool, slow: bool, settings: RateSettings) -> str | None:
        """Put one verdict in (the oldest leaves a full window). Returns the reason to open the breaker when a rate
        reaches its threshold once ``settings.minimum_calls`` are in (``"failure_rate"``, ``"slow_call_rate"``, the
        slow-call rate only when ``settings.slow_call_s`` is set), else None."""
        ring, pos, size = self._ring, self._pos, self._size
        if self.calls == size:
            old = ring[pos]
            self.failures -= old & _FAILED
            self.slow -= (old & _SLOW) >> 1
        else:
            self.calls += 1
        ring[pos] = (_FAILED if failed else 0) | (_SLOW if slow else 0)
        self._pos = pos + 1 if pos + 1 < size else 0
        self.failures += failed
        self.slow += slow
        n = self.calls
        if n < settings.minimum_calls:
            return None
        threshold = settings.failure_rate_threshold
        if threshold is not None and self.failures / n >= threshold:
            return "failure_rate"
        if settings.slow_call_s is not None and self.slow / n >= settings.slow_call_rate_threshold:
            return "slow_call_rate"
        return None

    def failure_rate(self) -> float:
        """The share of the calls in the window that failed (0.0 when it is empty)."""
        return self.failures / self.calls if self.calls else 0.0

    def slow_call_rate(self) -> float:
        """The share of the calls in the window that were slow (0.0 when it is empty)."""
        return self.slow / self.calls if self.calls else 0.0
