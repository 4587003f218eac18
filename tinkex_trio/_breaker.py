"""The circuit breaker: a pure state machine, and the trio helper ``call``.

::

    CLOSED ──(failure_threshold failures in a row)──▶ OPEN ──(timeout_s later)──▶ HALF_OPEN
       ▲                                               ▲                              │
       └──────────────(a trial succeeds)───────────────┼──────────────────────────────┤
                                                       └──────(a trial fails)─────────┘

:class:`CircuitBreaker` is sans I/O, in the manner of h11: every method that depends on time takes ``now`` (seconds on
any monotonic clock; ``trio.current_time()`` in the trio layer), nothing sleeps and nothing does I/O. The trio layer
is thin: :meth:`CircuitBreaker.call` (check, await, record), the transport's hot path (plain method calls, no channel
hop) and the session's breaker supervisor (:func:`~tinkex_trio._breaker_supervisor.supervise`: sleeps until the open
timer ends, then calls :meth:`CircuitBreaker.poll`).

Admission and outcomes:

* :meth:`~CircuitBreaker.before_call` admits a call or raises :class:`~tinkex_trio.errors.CircuitOpenError` with
  ``retry_after``; it returns a :class:`Permit`. :meth:`~CircuitBreaker.allow` is the same as a ``bool``.
* When OPEN, calls are rejected until ``timeout_s`` has passed since it opened; then the breaker is HALF_OPEN (at the
  first :meth:`~CircuitBreaker.poll`, :meth:`~CircuitBreaker.allow` or :meth:`~CircuitBreaker.before_call` at or
  after that time) and admits up to ``half_open_max_calls`` trial calls at once.
* The call's outcome is one of three :class:`~tinkex_trio._breaker_verdict.Verdict` values (which outcome is which:
  :mod:`tinkex_trio._breaker_verdict`). ``SUCCESS`` resets the count of failures in a row (and closes a HALF_OPEN
  breaker); ``FAILURE`` adds one (and re-opens a HALF_OPEN breaker, restarting the timer); ``NEUTRAL`` says nothing
  about the service's health: it changes no count and only frees the call's trial slot. A cancelled call has no
  verdict: it only frees its trial slot.
* A :class:`Permit` remembers the breaker's *generation* (every transition starts a new one). The outcome of a call
  admitted before the last transition is stale and ignored: a slow failure that lands after the breaker opened does not
  restart the timer, and a trial slot is never freed twice.

Modes (all but the first off by default; the resilience4j model):

* **Failures in a row** (the default): ``failure_threshold`` FAILUREs in a row while CLOSED open the breaker.
* **Failure rate**: with ``failure_rate_threshold`` set, the breaker keeps a sliding window of the verdicts of the last
  ``window_size`` calls while CLOSED (:mod:`tinkex_trio._breaker_window`; SUCCESS and FAILURE, NEUTRAL and cancelled
  calls stay out of it) and opens when the share of failures reaches the threshold, once the window holds
  ``minimum_calls``. Failures in a row then no longer open it. The window is emptied whenever the breaker closes.
* **Slow calls**: with ``slow_call_s`` set, a call whose ``duration`` (given with its outcome, on the clock of
  ``now``; trio's clock in the trio layer) is above ``slow_call_s`` is slow, whatever its verdict; the breaker opens
  (reason ``"slow_call_rate"``) when ``slow_call_rate_threshold`` of the window was slow, even if every call
  succeeded, and a HALF_OPEN trial that succeeds slowly re-opens it (``"trial_slow"``). A cancelled call is never
  slow (it has no outcome). Combines with either failure mode.

With no window mode on, a CLOSED success costs what it always did (one permit compared, two counters set): the
window is only fed when a mode asks for it.

Manual control and introspection: :meth:`~CircuitBreaker.force_open` opens the breaker and keeps it open (no timer,
``retry_after`` is ``math.inf``) until :meth:`~CircuitBreaker.reset`, which closes it whatever its state.
:attr:`~CircuitBreaker.stats` counts calls, successes, failures, slow calls, neutral outcomes, rejections and
transitions by reason (:class:`BreakerStats`); the session's supervisor (:mod:`tinkex_trio._breaker_supervisor`)
publishes them with every transition, and in the session's metrics.

The registry (:func:`~tinkex_trio._breaker_registry.breakers`, in :mod:`tinkex_trio._breaker_registry`) holds one
breaker per ``(base_url, sha256(api_key))``: every session of one process talking to one service with one key shares
it.

Clocks: ``now`` values of different trio runs are not comparable (each run has its own clock), so a breaker used by
the trio layer forgets its state (back to CLOSED, listeners dropped) the first time it is used in a new ``trio.run``.
A process normally has one run; a test suite has one per test, and this keeps the tests independent.

Not thread-safe: use a breaker from one trio run (one thread).
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Awaitable, Callable
from types import EllipsisType
from typing import Any, Final, TypeVar, TypeVarTuple

import trio

from tinkex_trio._breaker_types import BreakerState, BreakerStats, Listener, Permit, Transition
from tinkex_trio._breaker_verdict import Verdict, classify_exception
from tinkex_trio._breaker_window import VerdictWindow
from tinkex_trio._config import CircuitBreakerConfig
from tinkex_trio.errors import CircuitOpenError

__all__ = ["CircuitBreaker", "config_settings"]

logger = logging.getLogger("tinkex_trio.breaker")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def _current_run() -> trio.lowlevel.Task | None:
    """The root task of the current ``trio.run``: it stands for the run (None outside trio)."""
    try:
        return trio.lowlevel.current_root_task()
    except RuntimeError:  # not inside trio.run
        return None


_NEVER: Final = Permit(-1, trial=False)
"""The record fast path's permit when it is off: no caller ever holds it."""


def _rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not (isinstance(value, int | float) and 0.0 < value <= 1.0):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class CircuitBreaker:
    """A circuit breaker (pure state machine; see the module docstring).

    Args:
        failure_threshold: failures in a row (CLOSED) that open the breaker (not used when
            ``failure_rate_threshold`` is set).
        timeout_s: how long it stays OPEN before admitting trial calls.
        half_open_max_calls: trial calls admitted at once while HALF_OPEN.
        failure_rate_threshold: None (the default: failures are counted in a row), or the share (0–1] of failed calls
            in the window that opens the breaker.
        window_size: the calls the rate modes judge: the last ``window_size`` with a verdict while CLOSED.
        minimum_calls: no rate opens the breaker before the window holds this many calls (at most ``window_size``).
        slow_call_s: None (the default: no slow-call mode), or the duration above which a call is slow.
        slow_call_rate_threshold: the share (0–1] of slow calls in the window that opens the breaker.
        name: shown in reprs, errors and telemetry (the registry uses the base URL; never a key).

    The keywords are the fields of :class:`~tinkex_trio.CircuitBreakerConfig` (``enabled`` aside).
    """

    __slots__ = (
        "_admit_fast",
        "_closed_permit",
        "_failures",
        "_forced",
        "_generation",
        "_listeners",
        "_n_failures",
        "_n_neutral",
        "_n_rejections",
        "_n_slow",
        "_n_successes",
        "_open_until",
        "_opened_at",
        "_record_fast",
        "_run",
        "_state",
        "_transitions",
        "_trials",
        "_window",
        "_windowed",
        "failure_rate_threshold",
        "failure_threshold",
        "half_open_max_calls",
        "minimum_calls",
        "name",
        "slow_call_rate_threshold",
        "slow_call_s",
        "timeout_s",
        "window_size",
    )

    def __init__(
        self,
        failure_threshold: int = 5,
        timeout_s: float = 30.0,
        half_open_max_calls: int = 1,
        *,
        failure_rate_threshold: float | None = None,
        window_size: int = 100,
        minimum_calls: int = 20,
        slow_call_s: float | None = None,
        slow_call_rate_threshold: float = 1.0,
        name: str = "circuit breaker",
    ) -> None:
        self.name = name
        self.failure_threshold = 1
        self.timeout_s = 1.0
        self.half_open_max_calls = 1
        self.failure_rate_threshold: float | None = None
        self.window_size = 1
        self.minimum_calls = 1
        self.slow_call_s: float | None = None
        self.slow_call_rate_threshold = 1.0
        self._state = BreakerState.CLOSED
        self._forced = False
        self._generation = 0
        self._closed_permit = Permit(0, trial=False)
        self._admit_fast: Permit | None = self._closed_permit
        self._record_fast = self._closed_permit
        self._windowed = False
        self._window = VerdictWindow(1)
        self._failures = 0
        self._opened_at = 0.0
        self._open_until = math.inf
        self._trials = 0
        self._listeners: list[Listener] = []
        self._run: weakref.ref[trio.lowlevel.Task] | None = None
        self._n_successes = self._n_failures = self._n_slow = self._n_neutral = self._n_rejections = 0
        self._transitions: dict[str, int] = {}
        self.configure(
            failure_threshold=failure_threshold,
            timeout_s=timeout_s,
            half_open_max_calls=half_open_max_calls,
            failure_rate_threshold=failure_rate_threshold,
            window_size=window_size,
            minimum_calls=minimum_calls,
            slow_call_s=slow_call_s,
            slow_call_rate_threshold=slow_call_rate_threshold,
        )

    @classmethod
    def from_config(cls, config: CircuitBreakerConfig, *, name: str = "circuit breaker") -> CircuitBreaker:
        """A breaker with the settings of a :class:`~tinkex_trio._config.CircuitBreakerConfig`."""
        return cls(name=name, **config_settings(config))

    def configure(
        self,
        *,
        failure_threshold: int | None = None,
        timeout_s: float | None = None,
        half_open_max_calls: int | None = None,
        failure_rate_threshold: float | EllipsisType | None = ...,
        window_size: int | None = None,
        minimum_calls: int | None = None,
        slow_call_s: float | EllipsisType | None = ...,
        slow_call_rate_threshold: float | None = None,
    ) -> None:
        """Change settings in place (the state is kept; a running open timer uses the new ``timeout_s``).

        An argument left out (None, or ``...`` for the two that take None) keeps its setting;
        ``failure_rate_threshold=None`` / ``slow_call_s=None`` turn a mode off. A new ``window_size`` empties the
        window."""
        if failure_threshold is not None:
            self.failure_threshold = _count("failure_threshold", failure_threshold)
        if timeout_s is not None:
            if isinstance(timeout_s, bool) or not (math.isfinite(timeout_s) and timeout_s > 0):
                raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
            self.timeout_s = float(timeout_s)
            if self._state is BreakerState.OPEN and not self._forced:
                self._open_until = self._opened_at + self.timeout_s
        if half_open_max_calls is not None:
            self.half_open_max_calls = _count("half_open_max_calls", half_open_max_calls)
        if not isinstance(failure_rate_threshold, EllipsisType):
            self.failure_rate_threshold = (
                None if failure_rate_threshold is None else _rate("failure_rate_threshold", failure_rate_threshold)
            )
        if not isinstance(slow_call_s, EllipsisType):
            if slow_call_s is not None and (
                isinstance(slow_call_s, bool) or not (math.isfinite(slow_call_s) and slow_call_s > 0)
            ):
                raise ValueError(f"slow_call_s must be None or a finite number > 0, got {slow_call_s!r}")
            self.slow_call_s = None if slow_call_s is None else float(slow_call_s)
        if slow_call_rate_threshold is not None:
            self.slow_call_rate_threshold = _rate("slow_call_rate_threshold", slow_call_rate_threshold)
        size = _count("window_size", window_size) if window_size is not None else self.window_size
        minimum = _count("minimum_calls", minimum_calls) if minimum_calls is not None else self.minimum_calls
        if minimum > size:
            raise ValueError(f"minimum_calls must be <= window_size ({size}), got {minimum!r}")
        self.minimum_calls = minimum
        if size != self.window_size:
            self.window_size = size
            self._window = VerdictWindow(size)
        self._windowed = self.failure_rate_threshold is not None or self.slow_call_s is not None
        self._refresh_fast_paths()

    @classmethod
    def disabled(cls, config: CircuitBreakerConfig | None = None, *, name: str = "circuit breaker") -> CircuitBreaker:
        """A breaker that is switched off: :attr:`enabled` is False, it admits every call and counts nothing.

        It stays CLOSED with no failures counted and never moves (:meth:`force_open` does nothing), so its listeners
        are never called; outcomes given to it only settle their permits. It keeps the settings of ``config``, if
        given, for show. This is ``session.breaker`` when ``config.circuit_breaker.enabled`` is false
        (``TINKEX_CIRCUIT_BREAKER=off``); the registry (:func:`~tinkex_trio._breaker_registry.breakers`) holds no
        disabled breakers.
        """
        if config is None:
            return _DisabledCircuitBreaker(name=name)
        return _DisabledCircuitBreaker.from_config(config, name=name)

    def __repr__(self) -> str:
        forced = " forced" if self._forced else ""
        return (
            f"<CircuitBreaker {self.name} state={self._state.value}{forced} "
            f"failures={self._failures}/{self.failure_threshold} trials={self._trials}/{self.half_open_max_calls}>"
        )

    # -- the fast paths ---------------------------------------------------------------------------------------------

    def _refresh_fast_paths(self) -> None:
        """``_admit_fast``: the permit :meth:`before_call` hands out at once (CLOSED), else None. ``_record_fast``:
        the permit whose success :meth:`record_success` counts at once (CLOSED, no window to feed), else a permit
        nobody holds. Called after every change of state, generation or mode."""
        if self._state is BreakerState.CLOSED:
            permit = self._closed_permit
            if permit.generation != self._generation:
                permit = self._closed_permit = Permit(self._generation, trial=False)
            self._admit_fast = permit
            self._record_fast = _NEVER if self._windowed else permit
        else:
            self._admit_fast = None
            self._record_fast = _NEVER

    # -- reading the state ------------------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """Whether this breaker checks and counts calls: False for a :meth:`disabled` one."""
        return True

    @property
    def state(self) -> BreakerState:
        """The current state as of the last call that passed ``now`` (:meth:`poll` makes the timer's move visible)."""
        return self._state

    @property
    def forced(self) -> bool:
        """Whether the breaker was forced open (:meth:`force_open`): it stays OPEN until :meth:`reset`."""
        return self._forced

    @property
    def generation(self) -> int:
        """Starts at 0, +1 on every transition."""
        return self._generation

    @property
    def consecutive_failures(self) -> int:
        """Failures in a row counted while CLOSED (0 after any success)."""
        return self._failures

    @property
    def trials_in_flight(self) -> int:
        """HALF_OPEN trial calls admitted and not yet settled."""
        return self._trials

    @property
    def open_until(self) -> float | None:
        """When OPEN: the time its timer ends (then it moves to HALF_OPEN); ``math.inf`` when forced open.
        Otherwise None."""
        if self._state is BreakerState.OPEN:
            return self._open_until
        return None

    def retry_after(self, now: float) -> float:
        """Seconds until a call may be admitted: the rest of the open timer (``math.inf`` when forced open); 0.0 when
        CLOSED or HALF_OPEN (even with every trial slot taken: the trials' verdict is not known yet)."""
        until = self.open_until
        return max(0.0, until - now) if until is not None else 0.0

    @property
    def stats(self) -> BreakerStats:
        """What the breaker has counted (a snapshot; see :class:`BreakerStats`)."""
        window = self._window
        return BreakerStats(
            state=self._state,
            forced=self._forced,
            calls=self._n_successes + self._n_failures + self._n_neutral,
            successes=self._n_successes,
            failures=self._n_failures,
            slow_calls=self._n_slow,
            neutral=self._n_neutral,
            rejections=self._n_rejections,
            transitions=dict(self._transitions),
            consecutive_failures=self._failures,
            window_calls=window.calls if self._windowed else 0,
            failure_rate=window.failure_rate() if self.failure_rate_threshold is not None else None,
            slow_call_rate=window.slow_call_rate() if self.slow_call_s is not None else None,
        )

    # -- listeners -------------------------------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(transition)`` on every transition, inline (keep it cheap). A listener that raises is logged
        and removed; it never breaks the call that caused the transition."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> bool:
        """Remove a listener. Returns whether it was there."""
        try:
            self._listeners.remove(listener)
        except ValueError:
            return False
        return True

    # -- admission -------------------------------------------------------------------------------------------------

    def poll(self, now: float) -> Transition | None:
        """Apply the timer: OPEN → HALF_OPEN once ``timeout_s`` has passed (never when forced). Returns the
        transition, if any."""
        if self._state is BreakerState.OPEN and now >= self._open_until:
            return self._move(BreakerState.HALF_OPEN, now, "timeout_elapsed")
        return None

    def _admit(self, now: float) -> Permit | None:
        if self._state is BreakerState.CLOSED:
            return self._closed_permit  # kept current by _refresh_fast_paths
        self.poll(now)
        if self._state is BreakerState.HALF_OPEN and self._trials < self.half_open_max_calls:
            self._trials += 1
            return Permit(self._generation, trial=True)
        return None

    def allow(self, now: float) -> bool:
        """Whether a call may go now. When HALF_OPEN this takes a trial slot: report the call's outcome with
        :meth:`record_success` / :meth:`record_failure` / :meth:`release`. A False counts as a rejection."""
        if self._admit(now) is not None:
            return True
        self._n_rejections += 1
        return False

    def before_call(self, now: float) -> Permit:
        """Admit a call, or raise :class:`~tinkex_trio.errors.CircuitOpenError` (with ``retry_after``)."""
        permit = self._admit_fast
        if permit is not None:
            return permit  # the hot path (CLOSED): no call, no allocation
        if self._state is BreakerState.OPEN:
            until = self._open_until
            if now < until:
                # The refusal while OPEN, kept short: no transition to apply, no __init__ run, the message built
                # only if read.
                self._n_rejections += 1
                raise CircuitOpenError.rejected(until - now, self.name)
        permit = self._admit(now)
        if permit is None:
            self._n_rejections += 1
            raise CircuitOpenError.rejected(self.retry_after(now), self.name, self._state is BreakerState.HALF_OPEN)
        return permit

    # -- outcomes --------------------------------------------------------------------------------------------------

    def _take(self, permit: Permit | None) -> bool:
        """Settle ``permit``; False when the outcome must be ignored (already settled, or stale)."""
        if permit is None:
            return True
        if not permit.trial:
            return permit.generation == self._generation  # shared by its generation's calls: never settled
        if permit.settled:
            return False
        permit.settled = True
        return permit.generation == self._generation

    def _slow(self, duration: float | None) -> bool:
        limit = self.slow_call_s
        if limit is None or duration is None or not duration > limit:
            return False
        self._n_slow += 1
        return True

    def record_success(
        self, now: float, permit: Permit | None = None, *, duration: float | None = None
    ) -> Transition | None:
        """A call succeeded: reset the failure count; a HALF_OPEN breaker closes (re-opens with ``"trial_slow"`` if
        the trial took longer than ``slow_call_s``). Ignored when OPEN. ``duration``: how long the call took on the
        clock of ``now`` (only the slow-call mode reads it; without it a call is not slow)."""
        if permit is self._record_fast:
            # The hot path: CLOSED, no window to feed, a current permit.
            self._failures = 0
            self._n_successes += 1
            return None
        if not self._take(permit):
            return None
        state = self._state
        if state is BreakerState.CLOSED:
            self._failures = 0
            self._n_successes += 1
            if self._windowed:
                reason = self._window.add(False, self._slow(duration), self)
                return None if reason is None else self._move(BreakerState.OPEN, now, reason)
        elif state is BreakerState.HALF_OPEN:
            self._n_successes += 1
            if self._slow(duration):
                return self._move(BreakerState.OPEN, now, "trial_slow")
            return self._move(BreakerState.CLOSED, now, "trial_succeeded")
        return None

    def record_failure(
        self, now: float, permit: Permit | None = None, *, duration: float | None = None
    ) -> Transition | None:
        """A call failed: count it (CLOSED: in a row, or in the window; opening at the threshold); a HALF_OPEN breaker
        re-opens with a new timer. Ignored when OPEN (a late failure does not extend the timer)."""
        if not self._take(permit):
            return None
        state = self._state
        if state is BreakerState.CLOSED:
            self._n_failures += 1
            self._failures += 1
            if self.failure_rate_threshold is None and self._failures >= self.failure_threshold:
                self._slow(duration)
                return self._move(BreakerState.OPEN, now, "failure_threshold")
            if self._windowed:
                reason = self._window.add(True, self._slow(duration), self)
                return None if reason is None else self._move(BreakerState.OPEN, now, reason)
        elif state is BreakerState.HALF_OPEN:
            self._n_failures += 1
            self._slow(duration)
            return self._move(BreakerState.OPEN, now, "trial_failed")
        return None

    def release(self, permit: Permit | None = None) -> None:
        """A call ended with no verdict (cancelled, or NEUTRAL): free its trial slot; counted as neutral, never as a
        failure or a slow call."""
        trial = permit.trial if permit is not None else self._state is BreakerState.HALF_OPEN
        if not self._take(permit) or self._state is BreakerState.OPEN:
            return
        self._n_neutral += 1
        if trial and self._state is BreakerState.HALF_OPEN and self._trials > 0:
            self._trials -= 1

    def record(
        self, verdict: Verdict, now: float, permit: Permit | None = None, *, duration: float | None = None
    ) -> Transition | None:
        """:meth:`record_success`, :meth:`record_failure` or :meth:`release`, by verdict."""
        if verdict is Verdict.SUCCESS:
            return self.record_success(now, permit, duration=duration)
        if verdict is Verdict.FAILURE:
            return self.record_failure(now, permit, duration=duration)
        self.release(permit)
        return None

    # -- manual control --------------------------------------------------------------------------------------------

    def force_open(self, now: float) -> Transition | None:
        """Open the breaker and keep it open until :meth:`reset`: every call is refused
        (``CircuitOpenError.retry_after`` is ``math.inf``), the timer never moves it to HALF_OPEN, and calls in
        flight become stale. Returns the transition (reason ``"forced_open"``; also from OPEN, which becomes forced),
        or None if it is already forced."""
        if self._forced:
            return None
        self._forced = True
        return self._move(BreakerState.OPEN, now, "forced_open")

    def reset(self, now: float = 0.0) -> Transition | None:
        """Back to CLOSED with no failures counted and an empty window, forced or not (returns the transition, reason
        ``"reset"``, if the state changed). :attr:`stats` are kept."""
        self._failures = 0
        self._trials = 0
        self._forced = False
        if self._state is BreakerState.CLOSED:
            self._generation += 1  # outstanding permits become stale
            self._window.clear()
            self._refresh_fast_paths()
            return None
        return self._move(BreakerState.CLOSED, now, "reset")

    def _move(self, new: BreakerState, now: float, reason: str) -> Transition:
        old = self._state
        self._state = new
        self._generation += 1
        self._trials = 0
        if new is BreakerState.OPEN:
            self._opened_at = now
            self._open_until = math.inf if self._forced else now + self.timeout_s
        else:
            self._failures = 0
            if new is BreakerState.CLOSED:
                self._window.clear()
        self._transitions[reason] = self._transitions.get(reason, 0) + 1
        self._refresh_fast_paths()
        transition = Transition(old, new, now, reason, self._failures)
        for listener in list(self._listeners):
            try:
                listener(transition)
            except Exception:
                logger.exception("circuit breaker listener %r raised and was removed", listener)
                self.remove_listener(listener)
        return transition

    # -- the trio layer --------------------------------------------------------------------------------------------

    def bind_to_current_run(self) -> None:
        """Forget the state of another ``trio.run`` (its clock's times mean nothing in this one), back to CLOSED
        with no listeners and fresh :attr:`stats`; a no-op within the run it last saw, or outside any run. A forced
        breaker stays forced open (that takes no clock). :meth:`call` and the registry call it; so may code that uses
        one breaker across several ``trio.run`` calls."""
        run = _current_run()
        if run is None or (self._run is not None and self._run() is run):
            return
        if self._run is not None:
            self._listeners.clear()
            self._generation += 1
            self._failures = 0
            self._trials = 0
            self._window.clear()
            self._n_successes = self._n_failures = self._n_slow = self._n_neutral = self._n_rejections = 0
            self._transitions = {}
            if self._forced:
                self._state = BreakerState.OPEN
                self._opened_at = 0.0
                self._open_until = math.inf
            else:
                self._state = BreakerState.CLOSED
            self._refresh_fast_paths()
        self._run = weakref.ref(run)

    async def call(self, async_fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """``await async_fn(*args)`` through the breaker (check and call), on trio's clock.

        Raises :class:`~tinkex_trio.errors.CircuitOpenError` without calling when the breaker rejects; otherwise
        returns or raises what ``async_fn`` does, after recording its verdict (:func:`classify_exception`) and its
        duration (for ``slow_call_s``). Cancellation is not recorded as a verdict nor as slow: it frees the call's
        trial slot, counts as neutral, and propagates.
        """
        self.bind_to_current_run()
        started = trio.current_time()
        permit = self.before_call(started)
        try:
            result = await async_fn(*args)
        except Exception as exc:
            now = trio.current_time()
            self.record(classify_exception(exc), now, permit, duration=now - started)
            raise
        except BaseException:
            # Cancellation, KeyboardInterrupt, GeneratorExit: no verdict, the trial slot is freed.
            self.release(permit)
            raise
        now = trio.current_time()
        self.record_success(now, permit, duration=now - started)
        return result


class _DisabledCircuitBreaker(CircuitBreaker):
    """:meth:`CircuitBreaker.disabled`. A subclass, so that an enabled breaker's methods do not test a flag."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name} disabled>"

    @property
    def enabled(self) -> bool:
        return False

    def add_listener(self, listener: Listener) -> None:
        """Nothing to listen to: a disabled breaker never moves (and keeps no reference to ``listener``)."""

    def poll(self, now: float) -> Transition | None:
        return None

    def _admit(self, now: float) -> Permit | None:
        return Permit(self._generation, trial=False)

    def record_success(
        self, now: float, permit: Permit | None = None, *, duration: float | None = None
    ) -> Transition | None:
        self._take(permit)
        return None

    def record_failure(
        self, now: float, permit: Permit | None = None, *, duration: float | None = None
    ) -> Transition | None:
        self._take(permit)
        return None

    def release(self, permit: Permit | None = None) -> None:
        self._take(permit)

    def force_open(self, now: float) -> Transition | None:
        return None  # a disabled breaker never moves

    def reset(self, now: float = 0.0) -> Transition | None:
        return None

    def bind_to_current_run(self) -> None:
        return  # no state to forget


def config_settings(config: CircuitBreakerConfig) -> dict[str, Any]:
    """The keywords of :class:`CircuitBreaker` / :meth:`CircuitBreaker.configure` a config gives (its fields but
    ``enabled``): for :meth:`CircuitBreaker.from_config`, and for the registry, which reconfigures a shared breaker."""
    return {
        "failure_threshold": config.failure_threshold,
        "timeout_s": config.timeout_s,
        "half_open_max_calls": config.half_open_max_calls,
        "failure_rate_threshold": config.failure_rate_threshold,
        "window_size": config.window_size,
        "minimum_calls": config.minimum_calls,
        "slow_call_s": config.slow_call_s,
        "slow_call_rate_threshold": config.slow_call_rate_threshold,
    }
