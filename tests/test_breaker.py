"""The circuit breaker: the pure state machine, the registry, ``call`` under MockClock, and the session against the
simulator (an outage opens it; calls then fail fast without reaching the server; a half-open trial closes it).
"""

# pyright: reportPrivateUsage=false

from __future__ import annotations

import logging
import pickle
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from _simkit import API_KEY, BASE_URL, Reply, SimStack, decode_create_model, drain, sim_stack, submit_create_model

from tinkex_trio._api_key import key_fingerprint
from tinkex_trio._breaker import CircuitBreaker
from tinkex_trio._breaker_registry import BreakerRegistry, breaker_for_config, breakers
from tinkex_trio._breaker_supervisor import GAUGE_NAME, supervise
from tinkex_trio._breaker_types import BreakerState, Transition
from tinkex_trio._breaker_verdict import Verdict, classify_exception, classify_status
from tinkex_trio._config import CircuitBreakerConfig, Config
from tinkex_trio._pool_set import PoolKind
from tinkex_trio._session import Session, open_session
from tinkex_trio._telemetry import CIRCUIT_BREAKER_REJECTED, CIRCUIT_BREAKER_STATE_CHANGE, TelemetryBus
from tinkex_trio.errors import (
    APIConnectionError,
    APITimeoutError,
    CircuitOpenError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    ResponseValidationError,
    status_error_class,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def opened(breaker: CircuitBreaker, now: float = 0.0) -> CircuitBreaker:
    for _ in range(breaker.failure_threshold):
        breaker.record_failure(now, breaker.before_call(now))
    assert breaker.state is OPEN
    return breaker


def half_open(breaker: CircuitBreaker) -> CircuitBreaker:
    opened(breaker)
    assert breaker.poll(breaker.timeout_s) is not None
    assert breaker.state is HALF_OPEN
    return breaker


def server_error(status: int = 503) -> Exception:
    return status_error_class(status)(status_code=status)


# -- the pure state machine ------------------------------------------------------------------------------------------


def test_starts_closed_and_admits() -> None:
    b = CircuitBreaker()
    assert (b.state, b.failure_threshold, b.timeout_s, b.half_open_max_calls) == (CLOSED, 5, 30.0, 1)
    assert b.allow(0.0)
    permit = b.before_call(0.0)
    assert not permit.trial
    assert b.retry_after(0.0) == 0.0
    assert b.open_until is None


def test_opens_at_the_threshold_of_failures_in_a_row() -> None:
    b = CircuitBreaker(failure_threshold=3, timeout_s=10.0)
    assert b.record_failure(1.0) is None
    assert b.record_failure(2.0) is None
    assert (b.state, b.consecutive_failures) == (CLOSED, 2)
    transition = b.record_failure(3.0)
    assert transition == Transition(CLOSED, OPEN, 3.0, "failure_threshold", 3)
    assert b.state is OPEN
    assert b.open_until == 13.0


def test_a_success_resets_the_count_and_a_neutral_outcome_does_not() -> None:
    b = CircuitBreaker(failure_threshold=3)
    b.record_failure(0.0)
    b.record_failure(0.0)
    b.record_success(0.0)
    assert b.consecutive_failures == 0
    b.record_failure(0.0)
    b.record_failure(0.0)
    b.record(Verdict.NEUTRAL, 0.0)  # a 429: says nothing of the service's health
    b.release()  # a cancelled call
    assert (b.state, b.consecutive_failures) == (CLOSED, 2)
    b.record(Verdict.FAILURE, 0.0)
    assert b.state is OPEN


def test_open_rejects_until_the_timeout_then_half_opens() -> None:
    b = opened(CircuitBreaker(failure_threshold=2, timeout_s=30.0), now=100.0)
    assert not b.allow(110.0)
    with pytest.raises(CircuitOpenError) as info:
        b.before_call(112.5)
    assert info.value.retry_after == pytest.approx(17.5)
    assert "open" in str(info.value)
    assert b.retry_after(129.0) == pytest.approx(1.0)
    assert b.retry_after(500.0) == 0.0
    assert b.poll(129.999) is None
    assert b.state is OPEN
    transition = b.poll(130.0)
    assert transition is not None and (transition.old, transition.new, transition.reason) == (
        OPEN,
        HALF_OPEN,
        "timeout_elapsed",
    )
    assert b.poll(131.0) is None


def test_a_rejection_is_the_error_the_public_constructor_makes() -> None:
    # The breaker raises CircuitOpenError.rejected(...) (no __init__ run): it reads, prints, reprs and pickles like
    # CircuitOpenError(retry_after=..., breaker=...).
    b = opened(CircuitBreaker(failure_threshold=1, timeout_s=30.0, name="svc"), now=0.0)
    with pytest.raises(CircuitOpenError) as info:
        b.before_call(10.0)
    fast = info.value
    slow = CircuitOpenError(retry_after=20.0, breaker="svc")
    assert (fast.retry_after, str(fast), repr(fast), fast.args) == (20.0, str(slow), repr(slow), slow.args)
    assert str(fast) == "svc: circuit breaker is open; next trial call in 20 s"
    copy = pickle.loads(pickle.dumps(fast))
    assert (type(copy), copy.retry_after, str(copy)) == (CircuitOpenError, 20.0, str(slow))
    half = CircuitOpenError.rejected(0.0, "svc", half_open=True)
    assert str(half) == str(CircuitOpenError(breaker="svc", half_open=True))
    assert "half-open" in str(half)
    assert str(CircuitOpenError("custom text", retry_after=1.0)) == "custom text"


def test_outcomes_while_open_change_nothing() -> None:
    b = opened(CircuitBreaker(failure_threshold=1, timeout_s=30.0), now=0.0)
    generation = b.generation
    assert b.record_failure(20.0) is None  # a late failure does not restart the timer
    assert b.record_success(21.0) is None  # nor does a late success close it
    b.release()
    assert (b.state, b.open_until, b.generation) == (OPEN, 30.0, generation)


def test_allow_after_the_timeout_half_opens_and_takes_a_trial_slot() -> None:
    b = opened(CircuitBreaker(failure_threshold=1, timeout_s=5.0))
    assert b.allow(5.0)
    assert (b.state, b.trials_in_flight) == (HALF_OPEN, 1)
    assert not b.allow(5.0)  # half_open_max_calls=1


def test_half_open_admits_at_most_max_calls_trials() -> None:
    b = half_open(CircuitBreaker(failure_threshold=1, timeout_s=5.0, half_open_max_calls=3))
    permits = [b.before_call(6.0) for _ in range(3)]
    assert all(p.trial for p in permits)
    assert b.trials_in_flight == 3
    with pytest.raises(CircuitOpenError) as info:
        b.before_call(6.0)
    assert info.value.retry_after == 0.0
    assert "half-open" in str(info.value)
    b.release(permits[0])
    b.release(permits[0])  # settled: not freed twice
    assert b.trials_in_flight == 2
    assert b.before_call(6.0).trial


def test_a_trial_success_closes() -> None:
    b = half_open(CircuitBreaker(failure_threshold=2, timeout_s=5.0, half_open_max_calls=2))
    first, second = b.before_call(6.0), b.before_call(6.0)
    transition = b.record_success(7.0, first)
    assert transition is not None and (transition.new, transition.reason) == (CLOSED, "trial_succeeded")
    assert (b.state, b.consecutive_failures, b.trials_in_flight) == (CLOSED, 0, 0)
    # The other trial's failure is stale (admitted before the transition): it does not count.
    assert b.record_failure(8.0, second) is None
    assert b.consecutive_failures == 0


def test_a_trial_failure_reopens_with_a_new_timer() -> None:
    b = half_open(CircuitBreaker(failure_threshold=2, timeout_s=5.0))
    trial = b.before_call(6.0)
    transition = b.record_failure(9.0, trial)
    assert transition is not None and (transition.old, transition.new, transition.reason) == (
        HALF_OPEN,
        OPEN,
        "trial_failed",
    )
    assert b.open_until == 14.0
    assert b.retry_after(10.0) == pytest.approx(4.0)
    assert not b.allow(13.9)
    assert b.allow(14.0)


def test_a_cancelled_or_neutral_trial_releases_its_slot() -> None:
    b = half_open(CircuitBreaker(failure_threshold=1, timeout_s=5.0))
    trial = b.before_call(6.0)
    assert not b.allow(6.0)
    b.release(trial)  # cancelled: neither success nor failure
    assert (b.state, b.trials_in_flight) == (HALF_OPEN, 0)
    trial = b.before_call(6.0)
    assert b.record(Verdict.NEUTRAL, 7.0, trial) is None  # a 429 trial
    assert (b.state, b.trials_in_flight) == (HALF_OPEN, 0)
    assert b.before_call(7.0).trial


def test_a_permit_from_before_a_transition_is_stale() -> None:
    b = CircuitBreaker(failure_threshold=2, timeout_s=5.0)
    slow = b.before_call(0.0)
    opened(b, now=1.0)
    assert b.poll(6.0) is not None
    trial = b.before_call(6.0)
    assert b.record_failure(6.5, slow) is None  # admitted while closed: cannot re-open a half-open breaker
    b.release(slow)
    assert (b.state, b.trials_in_flight) == (HALF_OPEN, 1)
    assert b.record_success(7.0, trial) is not None
    assert b.state is CLOSED


def test_listeners_see_every_transition_and_a_raising_one_is_removed(caplog: pytest.LogCaptureFixture) -> None:
    b = CircuitBreaker(failure_threshold=1, timeout_s=1.0)
    seen: list[tuple[BreakerState, BreakerState, str]] = []
    calls = 0

    def bad(transition: Transition) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    b.add_listener(lambda t: seen.append((t.old, t.new, t.reason)))
    b.add_listener(bad)
    with caplog.at_level(logging.ERROR, logger="tinkex_trio.breaker"):
        b.record_failure(0.0)
    b.poll(1.0)
    b.record_failure(1.5)
    b.poll(2.5)
    b.record_success(3.0)
    assert seen == [
        (CLOSED, OPEN, "failure_threshold"),
        (OPEN, HALF_OPEN, "timeout_elapsed"),
        (HALF_OPEN, OPEN, "trial_failed"),
        (OPEN, HALF_OPEN, "timeout_elapsed"),
        (HALF_OPEN, CLOSED, "trial_succeeded"),
    ]
    assert calls == 1
    assert "listener" in caplog.text
    assert not b.remove_listener(bad)


def test_reset_closes_and_makes_permits_stale() -> None:
    b = opened(CircuitBreaker(failure_threshold=2))
    transition = b.reset(3.0)
    assert transition is not None and (transition.new, transition.reason) == (CLOSED, "reset")
    permit = b.before_call(3.0)
    b.record_failure(3.0)
    assert b.consecutive_failures == 1
    assert b.reset() is None
    assert b.consecutive_failures == 0
    assert b.record_failure(4.0, permit) is None
    assert b.consecutive_failures == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"failure_threshold": True},
        {"timeout_s": 0.0},
        {"timeout_s": float("inf")},
        {"timeout_s": float("nan")},
        {"half_open_max_calls": 0},
    ],
)
def test_bad_thresholds_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**kwargs)


def test_from_config_and_state_codes() -> None:
    b = CircuitBreaker.from_config(CircuitBreakerConfig(failure_threshold=7, timeout_s=2.5, half_open_max_calls=4))
    assert (b.failure_threshold, b.timeout_s, b.half_open_max_calls) == (7, 2.5, 4)
    assert [s.code for s in (CLOSED, HALF_OPEN, OPEN)] == [0, 1, 2]


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (500, Verdict.FAILURE),
        (502, Verdict.FAILURE),
        (503, Verdict.FAILURE),
        (504, Verdict.FAILURE),
        (408, Verdict.NEUTRAL),
        (429, Verdict.NEUTRAL),
        (400, Verdict.SUCCESS),
        (401, Verdict.SUCCESS),
        (403, Verdict.SUCCESS),
        (404, Verdict.SUCCESS),
        (409, Verdict.SUCCESS),
        (422, Verdict.SUCCESS),
        (200, Verdict.SUCCESS),
    ],
)
def test_what_counts_by_status(status: int, verdict: Verdict) -> None:
    assert classify_status(status) is verdict
    if status >= 400:
        assert classify_exception(server_error(status)) is verdict


def test_what_counts_by_exception() -> None:
    assert classify_exception(APIConnectionError("reset")) is Verdict.FAILURE
    assert classify_exception(APITimeoutError("slow")) is Verdict.FAILURE
    assert classify_exception(CircuitOpenError()) is Verdict.NEUTRAL
    assert classify_exception(ResponseValidationError("bad body")) is Verdict.NEUTRAL
    assert classify_exception(ValueError("a bug in the caller")) is Verdict.NEUTRAL


# -- the registry ----------------------------------------------------------------------------------------------------


def test_registry_one_breaker_per_base_url_and_key() -> None:
    reg = BreakerRegistry()
    a = reg.for_key("https://one.test", "tml-key-a")
    assert reg.for_key("https://one.test/", "tml-key-a") is a
    assert reg.get("https://one.test", "tml-key-a") is a
    assert reg.for_key("https://one.test", "tml-key-b") is not a
    assert reg.for_key("https://two.test", "tml-key-a") is not a
    assert reg.get("https://three.test", "tml-key-a") is None
    assert len(reg) == 3
    reg.clear()
    assert len(reg) == 0
    assert reg.for_key("https://one.test", "tml-key-a") is not a


def test_registry_never_holds_or_shows_the_key() -> None:
    reg = BreakerRegistry()
    key = "tml-very-secret-key-0123456789"
    b = reg.for_key("https://secret.test", key)
    opened(b)
    with pytest.raises(CircuitOpenError) as info:
        b.before_call(0.0)
    fingerprint = key_fingerprint(key)
    assert reg.keys() == [("https://secret.test", fingerprint)]
    for text in (repr(b), str(b), repr(reg), str(reg.keys()), str(info.value), b.name):
        assert key not in text
        assert "very-secret" not in text
    assert fingerprint[:12] in b.name
    assert "https://secret.test" in b.name


def test_registry_config_thresholds_last_one_wins_state_kept() -> None:
    reg = BreakerRegistry()
    b = reg.for_key("https://cfg.test", "tml-k", CircuitBreakerConfig(failure_threshold=2))
    b.record_failure(0.0)
    assert reg.for_key("https://cfg.test", "tml-k", CircuitBreakerConfig(failure_threshold=3, timeout_s=9.0)) is b
    assert (b.failure_threshold, b.timeout_s, b.consecutive_failures) == (3, 9.0, 1)


def test_breakers_is_process_wide_and_breaker_for_config() -> None:
    assert breakers() is breakers()
    config = Config.create("tml-process-wide-key", "https://process.test", env={})
    b = breaker_for_config(config)
    assert b is not None
    assert breakers().for_key("https://process.test", "tml-process-wide-key") is b
    off = Config.create("tml-process-wide-key", "https://process.test", env={"TINKEX_CIRCUIT_BREAKER": "off"})
    assert breaker_for_config(off) is None


def test_a_new_trio_run_forgets_the_state_of_the_last() -> None:
    b = breakers().for_key("https://runs.test", "tml-runs-key")

    async def trip() -> None:
        breakers().for_key("https://runs.test", "tml-runs-key")
        opened(b, trio.current_time())

    async def state_in_new_run() -> BreakerState:
        return breakers().for_key("https://runs.test", "tml-runs-key").state

    trio.run(trip)
    assert b.state is OPEN  # outside trio nothing changes
    assert trio.run(state_in_new_run) is CLOSED


# -- call() on trio's clock ------------------------------------------------------------------------------------------


class Flaky:
    """An async function that raises the queued errors, then returns "ok"; counts its calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self, value: str = "ok") -> str:
        self.calls += 1
        await trio.sleep(0.1)
        if self.errors:
            raise self.errors.pop(0)
        return value


async def test_call_opens_fails_fast_and_closes_after_the_timeout(autojump_clock: trio.testing.MockClock) -> None:
    b = CircuitBreaker(failure_threshold=2, timeout_s=30.0)
    fn = Flaky(server_error(503), APIConnectionError("reset"))
    for _ in range(2):
        with pytest.raises((InternalServerError, APIConnectionError)):
            await b.call(fn)
    assert b.state is OPEN
    start = trio.current_time()
    with pytest.raises(CircuitOpenError) as info:
        await b.call(fn)
    assert fn.calls == 2  # rejected without calling
    assert info.value.retry_after == pytest.approx(30.0)  # it opened at this very time
    await trio.sleep(info.value.retry_after)
    assert await b.call(fn, "back") == "back"
    assert b.state is CLOSED
    assert trio.current_time() - start == pytest.approx(30.0, abs=0.2)  # 30 s of MockClock, not of wall clock


async def test_call_records_what_counts(autojump_clock: trio.testing.MockClock) -> None:
    b = CircuitBreaker(failure_threshold=2)
    fn = Flaky(server_error(500), server_error(429), server_error(404), server_error(502), ValueError("bug"))
    with pytest.raises(InternalServerError):
        await b.call(fn)
    with pytest.raises(RateLimitError):
        await b.call(fn)
    assert b.consecutive_failures == 1  # 429 is neutral
    with pytest.raises(NotFoundError):
        await b.call(fn)
    assert b.consecutive_failures == 0  # the service answered
    with pytest.raises(InternalServerError):
        await b.call(fn)
    with pytest.raises(ValueError):
        await b.call(fn)
    assert (b.state, b.consecutive_failures) == (CLOSED, 1)


async def test_call_cancellation_is_never_counted(autojump_clock: trio.testing.MockClock) -> None:
    b = CircuitBreaker(failure_threshold=1, timeout_s=10.0)
    for _ in range(5):
        with trio.move_on_after(1.0):
            await b.call(trio.sleep_forever)
    assert (b.state, b.consecutive_failures) == (CLOSED, 0)

    async def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await b.call(interrupted)
    assert (b.state, b.consecutive_failures) == (CLOSED, 0)

    # A cancelled half-open trial gives its slot back.
    with pytest.raises(InternalServerError):
        await b.call(Flaky(server_error(503)))
    await trio.sleep(10.0)
    with trio.move_on_after(1.0):
        await b.call(trio.sleep_forever)
    assert (b.state, b.trials_in_flight) == (HALF_OPEN, 0)
    assert await b.call(Flaky()) == "ok"
    assert b.state is CLOSED


async def test_supervisor_owns_the_timer_and_publishes_transitions(autojump_clock: trio.testing.MockClock) -> None:
    b = CircuitBreaker(failure_threshold=1, timeout_s=30.0)
    bus = TelemetryBus(clock=trio.current_time)
    rx = bus.subscribe(events="tinkex.circuit_breaker.*")
    gauges: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: supervise(b, bus, base_url="https://sup.test", set_gauge=lambda n, v: gauges.append((n, v)))
        )
        await trio.sleep(1.0)
        opened_at = trio.current_time()
        b.record_failure(opened_at)
        await trio.sleep(29.0)
        assert b.state is OPEN
        await trio.sleep(1.5)
        assert b.state is HALF_OPEN  # no call came: the supervisor moved it on time
        b.record_success(trio.current_time())
        await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    events = drain(rx)
    assert [(e.metadata["from"], e.metadata["to"], e.metadata["reason"]) for e in events] == [
        ("closed", "open", "failure_threshold"),
        ("open", "half_open", "timeout_elapsed"),
        ("half_open", "closed", "trial_succeeded"),
    ]
    assert events[1].time == pytest.approx(opened_at + 30.0)
    assert events[0].measurements["retry_after_s"] == pytest.approx(30.0)
    assert {e.name for e in events} == {CIRCUIT_BREAKER_STATE_CHANGE}
    assert all(e.metadata["base_url"] == "https://sup.test" for e in events)
    assert gauges == [(GAUGE_NAME, 0.0), (GAUGE_NAME, 2.0), (GAUGE_NAME, 1.0), (GAUGE_NAME, 0.0)]
    assert not b.remove_listener(lambda t: None)
    assert b._listeners == []  # the supervisor's listener left with it


# -- the session against the simulator -------------------------------------------------------------------------------


def config(**breaker: Any) -> Config:
    return Config.create(
        API_KEY,
        BASE_URL,
        env={},
        telemetry=False,
        circuit_breaker={"failure_threshold": 3, "timeout_s": 10.0, **breaker},
        retry={"max_retries": 1, "base_delay_s": 0.1, "max_delay_s": 0.1, "jitter": 0.0},
    )


def capabilities_seen(sim: SimStack) -> int:
    return len(sim.rec.requests("get_server_capabilities"))


async def test_outage_opens_the_breaker_then_a_trial_closes_it(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session(config=config()) as session:
        assert isinstance(session, Session)
        breaker = session.breaker
        assert breaker is not None and breaker is breakers().for_key(BASE_URL, API_KEY)
        rx = session.telemetry.subscribe(events="tinkex.circuit_breaker.*")
        await session.get_server_capabilities()
        assert capabilities_seen(sim) == 1

        sim.app.config.faults.start_outage(1000.0)
        for n in range(3):
            assert breaker.state is CLOSED
            with pytest.raises(InternalServerError):
                await session.get_server_capabilities()
            assert breaker.consecutive_failures == n + 1  # one per logical request (2 attempts each)
        assert breaker.state is OPEN
        assert capabilities_seen(sim) == 1 + 3 * 2

        for _ in range(4):
            with pytest.raises(CircuitOpenError) as info:
                await session.get_server_capabilities()
            assert 0.0 < info.value.retry_after <= 10.0
        assert capabilities_seen(sim) == 7  # failed fast: nothing reached the server

        sim.app.config.faults.end_outage()
        await trio.sleep(10.0 + 1e-3)  # just past the timer (at the very deadline the supervisor may not have run)
        assert breaker.state is HALF_OPEN  # the supervisor's timer, before any call
        await session.get_server_capabilities()  # the trial
        assert breaker.state is CLOSED
        assert capabilities_seen(sim) == 8

        events = drain(rx)
        changes = [(e.metadata["from"], e.metadata["to"]) for e in events if e.name == CIRCUIT_BREAKER_STATE_CHANGE]
        assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
        rejected = [e for e in events if e.name == CIRCUIT_BREAKER_REJECTED]
        assert len(rejected) == 4
        assert all(e.metadata["path"] == "/api/v1/get_server_capabilities" for e in rejected)
        for e in events:
            assert API_KEY not in repr(e)


async def test_a_failed_trial_reopens_after_one_attempt(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session(config=config(failure_threshold=1)) as session:
        breaker = session.breaker
        assert breaker is not None
        sim.app.config.faults.start_outage(1000.0)
        with pytest.raises(InternalServerError):
            await session.get_server_capabilities()
        assert breaker.state is OPEN
        await trio.sleep(10.0 + 1e-3)  # just past the timer (at the very deadline the supervisor may not have run)
        assert breaker.state is HALF_OPEN
        before = capabilities_seen(sim)
        reopened_at = trio.current_time()
        with pytest.raises(CircuitOpenError) as info:
            await session.get_server_capabilities()  # the trial fails; its retry is refused
        assert isinstance(info.value.__cause__, InternalServerError)
        assert capabilities_seen(sim) == before + 1
        assert breaker.state is OPEN
        assert breaker.open_until == pytest.approx(reopened_at + 10.0, abs=0.01)


async def test_retries_stop_as_soon_as_the_breaker_opens(autojump_clock: trio.testing.MockClock) -> None:
    cfg = Config.create(
        API_KEY,
        BASE_URL,
        env={},
        telemetry=False,
        circuit_breaker={"failure_threshold": 2, "timeout_s": 10.0},
        retry={"max_retries": 5, "base_delay_s": 1.0, "max_delay_s": 1.0, "jitter": 0.0},
    )
    async with sim_stack() as sim, sim.session(config=cfg) as session:
        breaker = session.breaker
        assert breaker is not None
        sim.app.config.faults.start_outage(1000.0)
        outcome: list[BaseException] = []

        async def slow_caller() -> None:
            try:
                await session.get_server_capabilities()
            except CircuitOpenError as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_caller)
            await trio.sleep(0.5)  # its first attempt failed; it waits 1 s to retry
            assert capabilities_seen(sim) == 1
            for _ in range(2):  # two one-shot requests fail: the breaker opens
                with pytest.raises(InternalServerError):
                    await session._transport.request(
                        PoolKind.SESSION, "GET", "/api/v1/get_server_capabilities", retry=False
                    )
            assert breaker.state is OPEN
        assert len(outcome) == 1 and isinstance(outcome[0].__cause__, InternalServerError)
        assert capabilities_seen(sim) == 3  # the slow caller's 5 retries were never sent


async def test_cancellation_never_trips_the_breaker(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session(config=config(failure_threshold=1)) as session:
        breaker = session.breaker
        assert breaker is not None
        for _ in range(5):
            sim.rec.script("get_server_capabilities", Reply(status=503, delay=60.0))
            with trio.move_on_after(1.0):
                await session.get_server_capabilities()
        assert (breaker.state, breaker.consecutive_failures) == (CLOSED, 0)

        # A cancelled half-open trial gives its slot back: the next call is admitted, and closes the breaker.
        sim.rec.script("get_server_capabilities", Reply(status=503), Reply(status=503))  # an attempt and its retry
        with pytest.raises(InternalServerError):
            await session.get_server_capabilities()
        assert breaker.state is OPEN
        await trio.sleep(10.0)
        sim.rec.script("get_server_capabilities", Reply(status=503, delay=60.0))
        with trio.move_on_after(1.0):
            await session.get_server_capabilities()
        assert (breaker.state, breaker.trials_in_flight) == (HALF_OPEN, 0)
        await session.get_server_capabilities()
        assert breaker.state is CLOSED


async def test_polls_are_neither_blocked_nor_counted(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session(config=config(failure_threshold=1)) as session:
        breaker = session.breaker
        assert breaker is not None
        reply = await submit_create_model(session)  # accepted before the breaker opens
        sim.rec.script("retrieve_future", Reply(status=503), Reply(status=503))  # poll errors do not count
        sim.rec.script("get_server_capabilities", Reply(status=503), Reply(status=503))  # an attempt and its retry
        with pytest.raises(InternalServerError):
            await session.get_server_capabilities()
        assert breaker.state is OPEN
        fut = session._ctx.futures.track(reply, "CreateModel", decode_create_model)
        result = await fut.result()  # polled to the end while the breaker is open
        assert result.model_id
        assert breaker.state in (OPEN, HALF_OPEN)
        with pytest.raises(CircuitOpenError):
            await submit_create_model(session)  # a new submission fails fast


async def test_sessions_share_the_breaker_of_their_base_url_and_key(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session(config=config()) as one, sim.session(config=config()) as two:
        assert one.breaker is not None and one.breaker is two.breaker
        other = Config.create("tml-another-key-0123456789", BASE_URL, env={}, telemetry=False)
        async with open_session(config=other, transport_factory=sim.transport_factory) as three:
            assert three.breaker is not None and three.breaker is not one.breaker


@pytest.mark.parametrize("how", ["config", "env"])
async def test_disabled_breaker_lets_everything_through(autojump_clock: trio.testing.MockClock, how: str) -> None:
    if how == "config":
        cfg = config(enabled=False)
    else:
        cfg = Config.create(
            API_KEY,
            BASE_URL,
            env={"TINKEX_CIRCUIT_BREAKER": "off"},
            retry={"max_retries": 0},
            circuit_breaker={"failure_threshold": 1},
        )
    async with sim_stack() as sim, sim.session(config=cfg) as session:
        breaker = session.breaker
        assert isinstance(breaker, CircuitBreaker)
        assert breaker.enabled is False
        assert session.breaker is breaker
        assert session._transport.breaker is None  # the requests do not go through it
        assert breaker is not breakers().get(BASE_URL, API_KEY)
        sim.app.config.faults.start_outage(1000.0)
        for _ in range(6):
            with pytest.raises(InternalServerError):
                await session.get_server_capabilities()
        assert capabilities_seen(sim) == 6 * (cfg.retry.max_retries + 1)
        assert breaker.state is CLOSED
        assert breaker.consecutive_failures == 0


def test_enabled_breakers_say_so() -> None:
    assert CircuitBreaker().enabled is True
    assert breakers().for_key("https://enabled.test", API_KEY).enabled is True


async def test_a_disabled_breaker_admits_everything_and_counts_nothing() -> None:
    breaker = CircuitBreaker.disabled(CircuitBreakerConfig(failure_threshold=2, timeout_s=5.0), name="off.test")
    assert isinstance(breaker, CircuitBreaker)
    assert breaker.enabled is False
    assert (breaker.failure_threshold, breaker.timeout_s) == (2, 5.0)
    assert repr(breaker) == "<CircuitBreaker off.test disabled>"
    seen: list[Transition] = []
    breaker.add_listener(seen.append)
    for now in range(10):
        permit = breaker.before_call(float(now))
        assert not permit.trial
        assert breaker.record_failure(float(now), permit) is None
        assert breaker.allow(float(now))
        assert breaker.record(Verdict.FAILURE, float(now)) is None
    breaker.release()
    assert breaker.poll(1e9) is None
    assert breaker.reset(1e9) is None
    assert breaker.state is CLOSED
    assert breaker.consecutive_failures == 0
    assert breaker.generation == 0
    assert breaker.open_until is None
    assert breaker.retry_after(0.0) == 0.0
    assert breaker.trials_in_flight == 0
    assert seen == []
    assert breaker.remove_listener(seen.append) is False  # it kept no reference

    async def fail() -> None:
        raise InternalServerError(status_code=503)

    for _ in range(5):
        with pytest.raises(InternalServerError):
            await breaker.call(fail)
    assert breaker.state is CLOSED

    async def answer() -> int:
        return 42

    assert await breaker.call(answer) == 42
    assert CircuitBreaker.disabled().enabled is False
