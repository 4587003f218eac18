"""The circuit breaker: a pure state machine, the process-wide registry, and the trio helper ``call``.

::

    CLOSED ──(failure_threshold failures in a row)──▶ OPEN ──(timeout_s later)──▶ HALF_OPEN
       ▲                                               ▲                              │
       └──────────────(a trial succeeds)───────────────┼──────────────────────────────┤
                                                       └──────(a trial fails)─────────┘

:class:`CircuitBreaker` is sans I/O, in the manner of h11: every method that depends on time takes ``now`` (seconds on
any monotonic clock; ``trio.current_time()`` in the trio layer), nothing sleeps and nothing does I/O. The trio layer
is thin: :meth:`CircuitBreaker.call` (check, await, record), the transport's hot path (plain method calls, no channel
hop) and the session's breaker supervisor (sleeps until the open timer ends, then calls :meth:`CircuitBreaker.poll`).

Admission and outcomes:

* :meth:`~CircuitBreaker.before_call` admits a call or raises :class:`~tinkex_trio.errors.CircuitOpenError` with
  ``retry_after``; it returns a :class:`Permit`. :meth:`~CircuitBreaker.allow` is the same as a ``bool``.
* When OPEN, calls are rejected until ``timeout_s`` has passed since it opened; then the breaker is HALF_OPEN (at the
  first :meth:`~CircuitBreaker.poll`, :meth:`~CircuitBreaker.allow` or :meth:`~CircuitBreaker.before_call` at or
  after that time) and admits up to ``half_open_max_calls`` trial calls at once.
* The call's outcome is one of three :class:`Verdict` values. ``SUCCESS`` resets the count of failures in a row (and
  closes a HALF_OPEN breaker); ``FAILURE`` adds one (and re-opens a HALF_OPEN breaker, restarting the timer);
  ``NEUTRAL`` says nothing about the service's health: it changes no count and only frees the call's trial slot.
* A :class:`Permit` remembers the breaker's *generation* (every transition starts a new one). The outcome of a call
  admitted before the last transition is stale and ignored: a slow failure that lands after the breaker opened does not
  restart the timer, and a trial slot is never freed twice.

What counts (:func:`classify_exception`, :func:`classify_status`):

* FAILURE: no HTTP answer (:class:`~tinkex_trio.errors.APIConnectionError`, including timeouts and a proxy's empty
  400) and every 5xx. These say the service (or the path to it) is unhealthy.
* NEUTRAL: 429 and 408 (the service is alive but pushing back; rate limiting is not an outage, and counting it would
  make the breaker amplify the server's own backpressure), a nested ``CircuitOpenError``, a
  :class:`~tinkex_trio.errors.TLSError` (a certificate or protocol mismatch is a configuration problem; it is not
  retried anyway, and an open breaker would hide "certificate verify failed" behind CircuitOpenError), and any
  exception that is not a transport outcome (a bug in the caller's code, a bad or too large body): none of them
  measure the service's health.
* SUCCESS: a return, and every other 4xx: the service answered and judged the request (the fault is ours).
* Never counted at all: ``trio.Cancelled``, ``KeyboardInterrupt``, ``GeneratorExit`` (any ``BaseException`` that is not
  an ``Exception``). The call's trial slot is released and the exception propagates untouched.

The registry (:func:`breakers`) holds one breaker per ``(base_url, sha256(api_key))``: every session of one process
talking to one service with one key shares it. The raw key is never stored, shown or used as a key.

Clocks: ``now`` values of different trio runs are not comparable (each run has its own clock), so a breaker used by
the trio layer forgets its state (back to CLOSED, listeners dropped) the first time it is used in a new ``trio.run``.
A process normally has one run; a test suite has one per test, and this keeps the tests independent.

Not thread-safe: use a breaker from one trio run (one thread). The registry's lookups are locked.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar, TypeVarTuple

import trio

from tinkex_trio._api_key import key_fingerprint
from tinkex_trio._config import CircuitBreakerConfig, Config
from tinkex_trio._telemetry import CIRCUIT_BREAKER_STATE_CHANGE, TelemetryBus
from tinkex_trio.errors import APIConnectionError, APIStatusError, CircuitOpenError, TLSError

__all__ = [
    "BreakerRegistry",
    "BreakerState",
    "CircuitBreaker",
    "Listener",
    "Permit",
    "Transition",
    "Verdict",
    "breaker_for_config",
    "breakers",
    "classify_exception",
    "classify_status",
    "supervise",
]

logger = logging.getLogger("tinkex_trio.breaker")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class BreakerState(enum.StrEnum):
    """The state of a :class:`CircuitBreaker`."""

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


class Verdict(enum.Enum):
    """What a call's outcome says about the service's health."""

    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"


def classify_status(status_code: int) -> Verdict:
    """5xx → FAILURE; 408 and 429 → NEUTRAL; anything else (2xx, 3xx, other 4xx) → SUCCESS."""
    if status_code >= 500:
        return Verdict.FAILURE
    if status_code in (408, 429):
        return Verdict.NEUTRAL
    return Verdict.SUCCESS


def classify_exception(exc: Exception) -> Verdict:
    """The verdict of a call that raised ``exc`` (see the module docstring).

    Only ``Exception`` is accepted: cancellation and other ``BaseException`` are not outcomes at all.
    """
    if isinstance(exc, APIStatusError):
        return classify_status(exc.status_code)
    if isinstance(exc, TLSError):  # configuration, not health (see the module docstring)
        return Verdict.NEUTRAL
    if isinstance(exc, APIConnectionError):  # includes APITimeoutError
        return Verdict.FAILURE
    return Verdict.NEUTRAL


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of state, as given to listeners and returned by the methods that cause it.

    ``reason`` is one of ``"failure_threshold"``, ``"timeout_elapsed"``, ``"trial_succeeded"``, ``"trial_failed"``,
    ``"reset"`` (short and stable: usable as telemetry metadata).
    """

    old: BreakerState
    new: BreakerState
    at: float
    reason: str
    consecutive_failures: int


Listener = Callable[[Transition], None]


class Permit:
    """An admission by :meth:`CircuitBreaker.before_call`: hand it back with the call's outcome.

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


def _current_run() -> trio.lowlevel.Task | None:
    """The root task of the current ``trio.run``: it stands for the run (None outside trio)."""
    try:
        return trio.lowlevel.current_root_task()
    except RuntimeError:  # not inside trio.run
        return None


class CircuitBreaker:
    """A circuit breaker (pure state machine; see the module docstring).

    Args:
        failure_threshold: failures in a row (CLOSED) that open the breaker.
        timeout_s: how long it stays OPEN before admitting trial calls.
        half_open_max_calls: trial calls admitted at once while HALF_OPEN.
        name: shown in reprs, errors and telemetry (the registry uses the base URL; never a key).
    """

    __slots__ = (
        "_closed_permit",
        "_failures",
        "_generation",
        "_listeners",
        "_opened_at",
        "_run",
        "_state",
        "_trials",
        "failure_threshold",
        "half_open_max_calls",
        "name",
        "timeout_s",
    )

    def __init__(
        self,
        failure_threshold: int = 5,
        timeout_s: float = 30.0,
        half_open_max_calls: int = 1,
        *,
        name: str = "circuit breaker",
    ) -> None:
        self.name = name
        self.failure_threshold = 1
        self.timeout_s = 1.0
        self.half_open_max_calls = 1
        self.configure(
            failure_threshold=failure_threshold, timeout_s=timeout_s, half_open_max_calls=half_open_max_calls
        )
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._closed_permit = Permit(0, trial=False)
        self._failures = 0
        self._opened_at = 0.0
        self._trials = 0
        self._listeners: list[Listener] = []
        self._run: weakref.ref[trio.lowlevel.Task] | None = None

    @classmethod
    def from_config(cls, config: CircuitBreakerConfig, *, name: str = "circuit breaker") -> CircuitBreaker:
        """A breaker with the thresholds of a :class:`~tinkex_trio._config.CircuitBreakerConfig`."""
        return cls(config.failure_threshold, config.timeout_s, config.half_open_max_calls, name=name)

    def configure(
        self,
        *,
        failure_threshold: int | None = None,
        timeout_s: float | None = None,
        half_open_max_calls: int | None = None,
    ) -> None:
        """Change thresholds in place (the state is kept; a running open timer uses the new ``timeout_s``)."""
        if failure_threshold is not None:
            if isinstance(failure_threshold, bool) or failure_threshold < 1:
                raise ValueError(f"failure_threshold must be an int >= 1, got {failure_threshold!r}")
            self.failure_threshold = failure_threshold
        if timeout_s is not None:
            if not (math.isfinite(timeout_s) and timeout_s > 0):
                raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
            self.timeout_s = float(timeout_s)
        if half_open_max_calls is not None:
            if isinstance(half_open_max_calls, bool) or half_open_max_calls < 1:
                raise ValueError(f"half_open_max_calls must be an int >= 1, got {half_open_max_calls!r}")
            self.half_open_max_calls = half_open_max_calls

    @classmethod
    def disabled(cls, config: CircuitBreakerConfig | None = None, *, name: str = "circuit breaker") -> CircuitBreaker:
        """A breaker that is switched off: :attr:`enabled` is False, it admits every call and counts nothing.

        It stays CLOSED with no failures counted and never moves, so its listeners are never called; outcomes given
        to it only settle their permits. It keeps the thresholds of ``config``, if given, for show. This is
        ``session.breaker`` when ``config.circuit_breaker.enabled`` is false (``TINKEX_CIRCUIT_BREAKER=off``); the
        registry (:func:`breakers`) holds no disabled breakers.
        """
        if config is None:
            return _DisabledCircuitBreaker(name=name)
        return _DisabledCircuitBreaker.from_config(config, name=name)

    def __repr__(self) -> str:
        return (
            f"<CircuitBreaker {self.name} state={self._state.value} "
            f"failures={self._failures}/{self.failure_threshold} trials={self._trials}/{self.half_open_max_calls}>"
        )

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
        """When OPEN: the time its timer ends (then it moves to HALF_OPEN). Otherwise None."""
        if self._state is BreakerState.OPEN:
            return self._opened_at + self.timeout_s
        return None

    def retry_after(self, now: float) -> float:
        """Seconds until a call may be admitted: the rest of the open timer; 0.0 when CLOSED or HALF_OPEN (even with
        every trial slot taken: the trials' verdict is not known yet)."""
        until = self.open_until
        return max(0.0, until - now) if until is not None else 0.0

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
        """Apply the timer: OPEN → HALF_OPEN once ``timeout_s`` has passed. Returns the transition, if any."""
        if self._state is BreakerState.OPEN and now >= self._opened_at + self.timeout_s:
            return self._move(BreakerState.HALF_OPEN, now, "timeout_elapsed")
        return None

    def _admit(self, now: float) -> Permit | None:
        if self._state is BreakerState.CLOSED:
            # Every call of one CLOSED generation shares one permit: no allocation on the hot path.
            permit = self._closed_permit
            if permit.generation != self._generation:
                permit = self._closed_permit = Permit(self._generation, trial=False)
            return permit
        self.poll(now)
        if self._state is BreakerState.HALF_OPEN and self._trials < self.half_open_max_calls:
            self._trials += 1
            return Permit(self._generation, trial=True)
        return None

    def allow(self, now: float) -> bool:
        """Whether a call may go now. When HALF_OPEN this takes a trial slot: report the call's outcome with
        :meth:`record_success` / :meth:`record_failure` / :meth:`release`."""
        return self._admit(now) is not None

    def before_call(self, now: float) -> Permit:
        """Admit a call, or raise :class:`~tinkex_trio.errors.CircuitOpenError` (with ``retry_after``)."""
        state = self._state
        if state is BreakerState.CLOSED:
            permit = self._closed_permit
            if permit.generation == self._generation:
                return permit  # the hot path: no call, no allocation
        elif state is BreakerState.OPEN:
            until = self._opened_at + self.timeout_s
            if now < until:
                # The refusal while OPEN, kept short: no transition to apply, no __init__ run, the message built
                # only if read.
                raise CircuitOpenError.rejected(until - now, self.name)
        permit = self._admit(now)
        if permit is None:
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

    def record_success(self, now: float, permit: Permit | None = None) -> Transition | None:
        """A call succeeded: reset the failure count; a HALF_OPEN breaker closes. Ignored when OPEN."""
        closed = self._closed_permit
        if permit is closed and self._state is BreakerState.CLOSED:
            if closed.generation == self._generation:  # the hot path
                self._failures = 0
            return None
        if not self._take(permit):
            return None
        if self._state is BreakerState.CLOSED:
            self._failures = 0
        elif self._state is BreakerState.HALF_OPEN:
            return self._move(BreakerState.CLOSED, now, "trial_succeeded")
        return None

    def record_failure(self, now: float, permit: Permit | None = None) -> Transition | None:
        """A call failed: count it (CLOSED, opening at the threshold); a HALF_OPEN breaker re-opens with a new timer.
        Ignored when OPEN (a late failure does not extend the timer)."""
        if not self._take(permit):
            return None
        if self._state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                return self._move(BreakerState.OPEN, now, "failure_threshold")
        elif self._state is BreakerState.HALF_OPEN:
            return self._move(BreakerState.OPEN, now, "trial_failed")
        return None

    def release(self, permit: Permit | None = None) -> None:
        """A call ended with no verdict (cancelled, or NEUTRAL): free its trial slot, count nothing."""
        trial = permit.trial if permit is not None else self._state is BreakerState.HALF_OPEN
        if self._take(permit) and trial and self._state is BreakerState.HALF_OPEN and self._trials > 0:
            self._trials -= 1

    def record(self, verdict: Verdict, now: float, permit: Permit | None = None) -> Transition | None:
        """:meth:`record_success`, :meth:`record_failure` or :meth:`release`, by verdict."""
        if verdict is Verdict.SUCCESS:
            return self.record_success(now, permit)
        if verdict is Verdict.FAILURE:
            return self.record_failure(now, permit)
        self.release(permit)
        return None

    def reset(self, now: float = 0.0) -> Transition | None:
        """Back to CLOSED with no failures counted (returns the transition if the state changed)."""
        self._failures = 0
        self._trials = 0
        if self._state is BreakerState.CLOSED:
            self._generation += 1  # outstanding permits become stale
            return None
        return self._move(BreakerState.CLOSED, now, "reset")

    def _move(self, new: BreakerState, now: float, reason: str) -> Transition:
        old = self._state
        self._state = new
        self._generation += 1
        self._trials = 0
        if new is BreakerState.OPEN:
            self._opened_at = now
        else:
            self._failures = 0
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
        with no listeners; a no-op within the run it last saw, or outside any run. :meth:`call` and the registry
        call it; so may code that uses one breaker across several ``trio.run`` calls."""
        run = _current_run()
        if run is None or (self._run is not None and self._run() is run):
            return
        if self._run is not None:
            self._listeners.clear()
            self._state = BreakerState.CLOSED
            self._generation += 1
            self._failures = 0
            self._trials = 0
        self._run = weakref.ref(run)

    async def call(self, async_fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """``await async_fn(*args)`` through the breaker (check and call), on trio's clock.

        Raises :class:`~tinkex_trio.errors.CircuitOpenError` without calling when the breaker rejects; otherwise
        returns or raises what ``async_fn`` does, after recording its verdict (:func:`classify_exception`).
        Cancellation is not recorded: it frees the call's trial slot and propagates.
        """
        self.bind_to_current_run()
        permit = self.before_call(trio.current_time())
        try:
            result = await async_fn(*args)
        except Exception as exc:
            self.record(classify_exception(exc), trio.current_time(), permit)
            raise
        except BaseException:
            # Cancellation, KeyboardInterrupt, GeneratorExit: no verdict, the trial slot is freed.
            self.release(permit)
            raise
        self.record_success(trio.current_time(), permit)
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

    def record_success(self, now: float, permit: Permit | None = None) -> Transition | None:
        self._take(permit)
        return None

    def record_failure(self, now: float, permit: Permit | None = None) -> Transition | None:
        self._take(permit)
        return None

    def release(self, permit: Permit | None = None) -> None:
        self._take(permit)

    def reset(self, now: float = 0.0) -> Transition | None:
        return None

    def bind_to_current_run(self) -> None:
        return  # no state to forget


def _normalize_base_url(base_url: str) -> str:
    return base_url.strip().rstrip("/")


class BreakerRegistry:
    """One :class:`CircuitBreaker` per ``(base_url, sha256(api_key))``, shared by the whole process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}

    def __repr__(self) -> str:
        return f"<BreakerRegistry breakers={len(self)}>"

    def __len__(self) -> int:
        return len(self._breakers)

    def keys(self) -> list[tuple[str, str]]:
        """The ``(base_url, sha256 hex of the key)`` of every breaker."""
        with self._lock:
            return list(self._breakers)

    def for_key(self, base_url: str, api_key: str, config: CircuitBreakerConfig | None = None) -> CircuitBreaker:
        """The breaker of ``(base_url, api_key)``, made on first use.

        With ``config``, the breaker takes its thresholds (the last caller's config wins; the state is kept).
        """
        url = _normalize_base_url(base_url)
        key = (url, key_fingerprint(api_key))
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is None:
                name = f"{url} (key sha256:{key[1][:12]})"
                breaker = (
                    CircuitBreaker.from_config(config, name=name) if config is not None else CircuitBreaker(name=name)
                )
                self._breakers[key] = breaker
            elif config is not None:
                breaker.configure(
                    failure_threshold=config.failure_threshold,
                    timeout_s=config.timeout_s,
                    half_open_max_calls=config.half_open_max_calls,
                )
        breaker.bind_to_current_run()
        return breaker

    def get(self, base_url: str, api_key: str) -> CircuitBreaker | None:
        """The breaker of ``(base_url, api_key)`` if one exists."""
        with self._lock:
            return self._breakers.get((_normalize_base_url(base_url), key_fingerprint(api_key)))

    def clear(self) -> None:
        """Forget every breaker."""
        with self._lock:
            self._breakers.clear()


_REGISTRY: Final = BreakerRegistry()


def breakers() -> BreakerRegistry:
    """The process-wide :class:`BreakerRegistry`: ``breakers().for_key(base_url, api_key).call(fn, *args)``."""
    return _REGISTRY


def breaker_for_config(config: Config) -> CircuitBreaker | None:
    """The registry's breaker for a session's ``(base_url, api_key)`` with its thresholds, for its transport; None
    when ``config.circuit_breaker.enabled`` is false (``TINKEX_CIRCUIT_BREAKER=off``): then the transport neither
    checks nor counts anything, and no supervisor runs (``session.breaker`` is a :meth:`CircuitBreaker.disabled`
    one, for show)."""
    if not config.circuit_breaker.enabled:
        return None
    return breakers().for_key(config.base_url, config.api_key, config.circuit_breaker)


GAUGE_NAME: Final = "tinkex_circuit_breaker_state"
"""The gauge :func:`supervise` sets (0 closed, 1 half-open, 2 open) when given a ``set_gauge``."""


async def supervise(
    breaker: CircuitBreaker,
    telemetry: TelemetryBus,
    *,
    base_url: str,
    set_gauge: Callable[[str, float], object] | None = None,
) -> None:
    """The breaker supervisor (DESIGN §2): runs in the session's nursery until cancelled.

    * Publishes every transition of ``breaker`` (whoever caused it: this session, another session on the same
      registry breaker, or this task) as ``tinkex.circuit_breaker.state_change``: measurements ``state`` (0/1/2),
      ``consecutive_failures``, ``retry_after_s``; metadata ``from``, ``to``, ``reason``, ``base_url``.
    * Owns the open timer: sleeps until ``open_until`` on trio's clock, then moves the breaker to HALF_OPEN (so the
      state and the event appear on time even when no call comes).
    * Feeds the ``tinkex_circuit_breaker_state`` gauge through ``set_gauge(name, value)`` if given.
    """
    wake: list[trio.Event] = [trio.Event()]

    def gauge(state: BreakerState) -> None:
        if set_gauge is not None:
            try:
                set_gauge(GAUGE_NAME, float(state.code))
            except Exception:
                logger.exception("setting the circuit breaker gauge failed")

    def on_transition(transition: Transition) -> None:
        telemetry.emit(
            CIRCUIT_BREAKER_STATE_CHANGE,
            {
                "state": transition.new.code,
                "consecutive_failures": transition.consecutive_failures,
                "retry_after_s": breaker.retry_after(transition.at),
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
        wake[0].set()

    breaker.add_listener(on_transition)
    try:
        gauge(breaker.state)
        # Bounded: every pass waits for a transition or for the end of the open timer (which poll() then applies).
        while True:
            wake[0] = trio.Event()
            until = breaker.open_until
            with trio.move_on_at(until if until is not None else math.inf):
                await wake[0].wait()
            breaker.poll(trio.current_time())
    finally:
        breaker.remove_listener(on_transition)
