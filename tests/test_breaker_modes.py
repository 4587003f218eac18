"""The circuit breaker's modes beyond failures in a row (issue 14): failure rate and slow calls over a sliding window,
force_open / reset, and stats in telemetry and metrics. Timing runs under trio's MockClock (``autojump_clock`` is
taken by each test function itself: pytest-trio takes the clock from the test's own arguments, not from fixtures).
"""

# pyright: reportPrivateUsage=false

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest
import trio
import trio.testing
from _simkit import API_KEY, BASE_URL, Reply, drain, sim_stack

import tinkex_trio as tx
from tinkex_trio._breaker import CircuitBreaker
from tinkex_trio._breaker_supervisor import (
    CALLS_TOTAL,
    FAILURE_RATE_GAUGE,
    FORCED_GAUGE,
    SLOW_CALL_RATE_GAUGE,
    SLOW_CALLS_TOTAL,
    StatsExport,
    supervise,
)
from tinkex_trio._breaker_types import BreakerState
from tinkex_trio._breaker_verdict import Verdict
from tinkex_trio._config import CircuitBreakerConfig, Config
from tinkex_trio._metrics import Metrics
from tinkex_trio._telemetry import CIRCUIT_BREAKER_STATE_CHANGE, TelemetryBus
from tinkex_trio.errors import CircuitOpenError, InternalServerError, RateLimitError

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
SLOW_S = 10.0


def feed(b: CircuitBreaker, pattern: str, now: float = 0.0) -> list[str]:
    """Report one outcome per letter: ``s`` success, ``f`` failure, ``n`` neutral; upper case is slow (10 s, else
    10 ms). Returns the reasons of the transitions they caused."""
    reasons: list[str] = []
    for letter in pattern:
        verdict = {"s": Verdict.SUCCESS, "f": Verdict.FAILURE, "n": Verdict.NEUTRAL}[letter.lower()]
        permit = b.before_call(now)
        transition = b.record(verdict, now, permit, duration=SLOW_S if letter.isupper() else 0.01)
        if transition is not None:
            reasons.append(transition.reason)
    return reasons


# -- the failure-rate mode --------------------------------------------------------------------------------------------


def test_consecutive_counting_stays_the_default() -> None:
    b = CircuitBreaker()
    assert (b.failure_rate_threshold, b.slow_call_s, b.window_size, b.minimum_calls) == (None, None, 100, 20)
    assert (b.stats.window_calls, b.stats.failure_rate, b.stats.slow_call_rate) == (0, None, None)
    assert feed(b, "ffffsffff") == []
    assert feed(b, "F") == ["failure_threshold"]  # slowness means nothing without slow_call_s
    assert b.stats.slow_calls == 0


def test_the_rate_opens_at_the_threshold_only_after_minimum_calls() -> None:
    b = CircuitBreaker(failure_rate_threshold=0.5, window_size=10, minimum_calls=6)
    # Five failures in a row: over the rate, but below minimum_calls; failures in a row no longer open it.
    assert feed(b, "fffff") == []
    assert (b.state, b.consecutive_failures, b.stats.window_calls, b.stats.failure_rate) == (CLOSED, 5, 5, 1.0)
    assert feed(b, "f") == ["failure_rate"]  # the sixth call: 6/6
    assert b.state is OPEN

    b = CircuitBreaker(failure_rate_threshold=0.5, window_size=10, minimum_calls=6)
    assert feed(b, "ssssff") == []  # 2/6
    assert feed(b, "fs") == []  # 3/7, 3/8
    assert feed(b, "f") == []  # 4/9 < 0.5
    assert feed(b, "f") == ["failure_rate"]  # 5/10 reaches the threshold
    # Neutral outcomes (429, cancellations) stay out of the window.
    b = CircuitBreaker(failure_rate_threshold=0.5, window_size=10, minimum_calls=2)
    assert feed(b, "snnnnn") == [] and b.stats.window_calls == 1
    assert feed(b, "f") == ["failure_rate"]


def test_the_window_slides() -> None:
    b = CircuitBreaker(failure_rate_threshold=0.75, window_size=4, minimum_calls=4)
    assert feed(b, "ffss") == []  # 2/4
    assert feed(b, "f") == []  # the oldest f left: [f s s f] 2/4
    assert feed(b, "f") == []  # [s s f f] 2/4
    assert b.stats.window_calls == 4 and b.stats.failure_rate == 0.5
    # Counted since the start this would be 5/7 (< 0.75); the window holds [s f f f]: 3/4.
    assert feed(b, "f") == ["failure_rate"]
    # The window is emptied when the breaker closes again.
    assert b.poll(b.timeout_s) is not None
    assert feed(b, "s") == ["trial_succeeded"]
    assert b.stats.window_calls == 0 and b.stats.failure_rate == 0.0
    assert feed(b, "fff") == [] and b.state is CLOSED  # below minimum_calls again


# -- the slow-call mode -----------------------------------------------------------------------------------------------


def test_slow_calls_open_the_breaker_even_when_they_succeed() -> None:
    b = CircuitBreaker(slow_call_s=1.0, slow_call_rate_threshold=0.5, window_size=4, minimum_calls=4)
    assert feed(b, "sSs") == []
    assert feed(b, "S") == ["slow_call_rate"]  # 2/4 slow, every one a success
    stats = b.stats
    assert (stats.successes, stats.failures, stats.slow_calls, stats.slow_call_rate) == (4, 0, 2, 0.5)
    # It combines with failures in a row, the default failure mode.
    b = CircuitBreaker(failure_threshold=2, slow_call_s=1.0, window_size=4, minimum_calls=4)
    assert feed(b, "ff") == ["failure_threshold"]


def test_a_slow_trial_reopens_the_breaker() -> None:
    b = CircuitBreaker(failure_threshold=1, timeout_s=5.0, slow_call_s=1.0)
    assert feed(b, "f") == ["failure_threshold"]
    assert b.poll(5.0) is not None
    trial = b.before_call(5.0)
    transition = b.record_success(12.0, trial, duration=7.0)
    assert transition is not None and (transition.old, transition.new, transition.reason) == (
        HALF_OPEN,
        OPEN,
        "trial_slow",
    )
    assert b.open_until == 17.0
    assert b.poll(17.0) is not None
    assert b.record_success(17.5, b.before_call(17.0), duration=0.5) is not None
    assert b.state is CLOSED


async def test_slow_calls_count_on_trios_clock(autojump_clock: trio.testing.MockClock) -> None:
    b = CircuitBreaker(slow_call_s=1.0, slow_call_rate_threshold=0.5, window_size=4, minimum_calls=2)
    started = trio.current_time()
    await b.call(trio.sleep, 2.0)  # slow: 2 s of trio's (mock) clock
    await b.call(trio.sleep, 0.5)
    assert trio.current_time() - started == pytest.approx(2.5)
    assert b.state is OPEN  # 1/2 slow
    assert (b.stats.successes, b.stats.slow_calls) == (2, 1)
    with pytest.raises(CircuitOpenError):
        await b.call(trio.sleep, 0.0)
    assert b.stats.rejections == 1


async def test_cancellation_is_never_slow_nor_failed(autojump_clock: trio.testing.MockClock) -> None:
    b = CircuitBreaker(
        failure_rate_threshold=0.1, slow_call_s=1.0, slow_call_rate_threshold=0.1, window_size=4, minimum_calls=1
    )
    for _ in range(3):
        with trio.move_on_after(5.0) as scope:
            await b.call(trio.sleep, 60.0)  # would be very slow; cancelled after 5 s
        assert scope.cancelled_caught
    stats = b.stats
    assert b.state is CLOSED
    assert (stats.calls, stats.neutral, stats.failures, stats.slow_calls, stats.window_calls) == (3, 3, 0, 0, 0)
    # A cancelled trial frees its slot and decides nothing.
    b = CircuitBreaker(failure_threshold=1, timeout_s=1.0, slow_call_s=1.0)
    b.bind_to_current_run()
    b.record_failure(trio.current_time())
    await trio.sleep(1.0)
    with trio.move_on_after(5.0):
        await b.call(trio.sleep, 60.0)
    assert (b.state, b.trials_in_flight, b.stats.slow_calls) == (HALF_OPEN, 0, 0)
    # A neutral outcome (429) is counted as neutral, slow or not.
    with pytest.raises(RateLimitError):
        await b.call(_raise_later, RateLimitError(status_code=429))
    assert (b.state, b.stats.neutral, b.stats.slow_calls) == (HALF_OPEN, 2, 0)


async def _raise_later(error: Exception) -> None:
    await trio.sleep(3.0)
    raise error


# -- manual control ---------------------------------------------------------------------------------------------------


def test_force_open_keeps_it_open_until_reset() -> None:
    b = CircuitBreaker(failure_threshold=2, timeout_s=5.0, name="svc")
    permit = b.before_call(0.0)
    transition = b.force_open(1.0)
    assert transition is not None and (transition.old, transition.new, transition.reason) == (
        CLOSED,
        OPEN,
        "forced_open",
    )
    assert b.force_open(2.0) is None  # already forced
    assert (b.state, b.forced, b.open_until, b.retry_after(1e9)) == (OPEN, True, math.inf, math.inf)
    assert b.poll(1e12) is None  # no timer
    assert not b.allow(1e12)
    with pytest.raises(CircuitOpenError) as info:
        b.before_call(1e12)
    assert info.value.retry_after == math.inf
    assert str(info.value) == "svc: circuit breaker is forced open (until it is reset)"
    assert b.record_success(3.0, permit) is None  # admitted before: stale
    assert "forced" in repr(b)
    transition = b.reset(4.0)
    assert transition is not None and (transition.old, transition.new, transition.reason) == (OPEN, CLOSED, "reset")
    assert (b.state, b.forced, b.open_until) == (CLOSED, False, None)
    stats = b.stats
    assert dict(stats.transitions) == {"forced_open": 1, "reset": 1}
    assert (stats.rejections, stats.calls) == (2, 0)

    # From OPEN (with its timer): forced, the timer is gone. From HALF_OPEN: forced as well.
    b = CircuitBreaker(failure_threshold=1, timeout_s=5.0)
    b.record_failure(0.0)
    transition = b.force_open(1.0)
    assert transition is not None and (transition.old, transition.new) == (OPEN, OPEN)
    assert b.poll(100.0) is None and b.state is OPEN
    b.reset(101.0)
    b.record_failure(102.0)
    assert b.poll(107.0) is not None and b.state is HALF_OPEN
    assert b.force_open(108.0) is not None and b.state is OPEN
    assert b.stats.transitions == {
        "failure_threshold": 2,
        "forced_open": 2,
        "reset": 1,
        "timeout_elapsed": 1,
    }
    # reset while CLOSED: no transition, stats kept.
    b.reset(109.0)
    assert b.reset(110.0) is None and b.stats.transitions["reset"] == 2


def test_a_disabled_breaker_cannot_be_forced() -> None:
    b = CircuitBreaker.disabled()
    assert b.force_open(1.0) is None
    assert b.state is CLOSED and not b.forced
    assert b.before_call(2.0) is not None


def test_the_stats_count_every_outcome() -> None:
    b = CircuitBreaker(failure_threshold=3, slow_call_s=1.0, window_size=10, minimum_calls=10)
    feed(b, "sSfnFs")
    b.release()  # a cancelled call
    stats = b.stats
    assert (stats.calls, stats.successes, stats.failures, stats.neutral, stats.slow_calls) == (7, 3, 2, 2, 2)
    assert (stats.state, stats.forced, stats.rejections, stats.window_calls) == (CLOSED, False, 0, 5)
    assert stats.failure_rate is None and stats.slow_call_rate == pytest.approx(0.4)  # the slow-call mode only
    assert stats.as_measurements() == {
        "calls": 7.0,
        "successes": 3.0,
        "failures": 2.0,
        "slow_calls": 2.0,
        "neutral": 2.0,
        "rejections": 0.0,
        "slow_call_rate": pytest.approx(0.4),
    }
    assert isinstance(stats, tx.BreakerStats)


async def test_force_and_reset_transitions_and_their_events(autojump_clock: trio.testing.MockClock) -> None:
    b = CircuitBreaker(failure_threshold=1, timeout_s=30.0, failure_rate_threshold=0.5, window_size=4, minimum_calls=2)
    bus = TelemetryBus(clock=trio.current_time)
    rx = bus.subscribe(events="tinkex.circuit_breaker.*")
    metrics = Metrics(clock=trio.current_time)
    stats = StatsExport(b, metrics)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: supervise(b, bus, base_url="https://sup.test", set_gauge=metrics.set_gauge, stats=stats)
        )
        await trio.sleep(1.0)
        b.record_success(trio.current_time(), b.before_call(trio.current_time()))
        assert metrics.get_counter(CALLS_TOTAL, {"outcome": "success"}) == 1  # read through the pending sync
        b.force_open(trio.current_time())
        await trio.sleep(3600.0)  # no timer: still open an hour later
        assert b.state is OPEN
        assert metrics.get_gauge(FORCED_GAUGE) == 1.0
        b.reset(trio.current_time())
        await trio.lowlevel.checkpoint()
        assert metrics.get_gauge(FORCED_GAUGE) == 0.0
        assert metrics.get_gauge(FAILURE_RATE_GAUGE) == 0.0
        assert metrics.get_gauge(SLOW_CALL_RATE_GAUGE) is None  # no slow-call mode
        nursery.cancel_scope.cancel()
    events = drain(rx)
    assert [(e.metadata["from"], e.metadata["to"], e.metadata["reason"]) for e in events] == [
        ("closed", "open", "forced_open"),
        ("open", "closed", "reset"),
    ]
    forced, reset = events
    assert forced.name == reset.name == CIRCUIT_BREAKER_STATE_CHANGE
    assert forced.measurements["forced"] == 1.0 and forced.measurements["retry_after_s"] == math.inf
    assert forced.time == pytest.approx(1.0) and reset.time == pytest.approx(3601.0)
    assert reset.measurements["forced"] == 0.0
    assert (reset.measurements["calls"], reset.measurements["successes"]) == (1.0, 1.0)
    assert reset.measurements["failure_rate"] == 0.0
    assert b._listeners == []
    # The store no longer syncs from the breaker once the supervisor ended.
    b.record_success(0.0)
    assert metrics.get_counter(CALLS_TOTAL, {"outcome": "success"}) == 1


# -- configuration ---------------------------------------------------------------------------------------------------


def test_breaker_keywords_are_the_config_fields() -> None:
    keywords = set(inspect.signature(CircuitBreaker).parameters) - {"name"}
    assert keywords == set(CircuitBreakerConfig.__struct_fields__) - {"enabled"}
    assert keywords - {"failure_threshold", "timeout_s", "half_open_max_calls"} <= set(
        inspect.signature(CircuitBreaker.configure).parameters
    )
    config = CircuitBreakerConfig(
        failure_rate_threshold=0.25, window_size=40, minimum_calls=8, slow_call_s=2.5, slow_call_rate_threshold=0.6
    )
    b = CircuitBreaker.from_config(config)
    assert (b.failure_rate_threshold, b.window_size, b.minimum_calls, b.slow_call_s, b.slow_call_rate_threshold) == (
        0.25,
        40,
        8,
        2.5,
        0.6,
    )
    b.configure(failure_rate_threshold=None, slow_call_s=None)
    assert (b.failure_rate_threshold, b.slow_call_s, b.window_size) == (None, None, 40)
    b.configure(window_size=8)  # the other settings kept
    assert (b.window_size, b.minimum_calls) == (8, 8)


@pytest.mark.parametrize(
    "bad",
    [
        {"failure_rate_threshold": 0.0},
        {"failure_rate_threshold": 1.5},
        {"failure_rate_threshold": True},
        {"window_size": 0},
        {"minimum_calls": 0},
        {"window_size": 5, "minimum_calls": 6},
        {"slow_call_s": 0.0},
        {"slow_call_s": math.inf},
        {"slow_call_rate_threshold": 0.0},
    ],
)
def test_bad_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad)) if len(bad) == 1 else "minimum_calls"):
        CircuitBreaker(**bad)


# -- the session ------------------------------------------------------------------------------------------------------


def session_config(**breaker: Any) -> Config:
    return Config.create(
        API_KEY,
        BASE_URL,
        env={},
        circuit_breaker={"timeout_s": 10.0, **breaker},
        retry={"max_retries": 0},
    )


async def test_the_session_counts_and_publishes_the_stats(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim:
        cfg = session_config(failure_rate_threshold=0.5, window_size=4, minimum_calls=4, slow_call_s=30.0)
        async with sim.session(config=cfg) as session:
            breaker = session.breaker
            assert (breaker.failure_rate_threshold, breaker.window_size, breaker.slow_call_s) == (0.5, 4, 30.0)
            rx = session.telemetry.subscribe(events="tinkex.circuit_breaker.*")
            before = breaker.stats
            await session.get_server_capabilities()
            await session.get_server_capabilities()
            sim.rec.script("get_server_capabilities", Reply(status=503), Reply(status=200, body={}, delay=40.0))
            with pytest.raises(InternalServerError):
                await session.get_server_capabilities()
            assert breaker.state is CLOSED  # 1/3: below minimum_calls anyway
            # A slow answer: a success, and slow (40 s > slow_call_s on trio's clock).
            with pytest.raises(Exception):  # noqa: B017 - the scripted body is not a capabilities answer
                await session.get_server_capabilities()
            stats = breaker.stats
            assert (stats.failures - before.failures, stats.slow_calls - before.slow_calls) == (1, 1)
            assert stats.neutral == before.neutral  # settled requests are never counted again at release
            m = session.metrics
            assert m.get_counter(CALLS_TOTAL, {"outcome": "failure"}) == 1
            assert m.get_counter(SLOW_CALLS_TOTAL) == 1
            successes = m.get_counter(CALLS_TOTAL, {"outcome": "success"}) + m.get_counter(
                CALLS_TOTAL, {"outcome": "neutral"}
            )
            assert successes == stats.calls - before.calls - 1

            breaker.force_open(trio.current_time())
            with pytest.raises(CircuitOpenError):
                await session.get_server_capabilities()
            breaker.reset(trio.current_time())
            await session.get_server_capabilities()
            await trio.sleep(0.1)
            events = [e for e in drain(rx) if e.name == CIRCUIT_BREAKER_STATE_CHANGE]
            assert [e.metadata["reason"] for e in events] == ["forced_open", "reset"]
            counters = m.get_all_metrics()["counters"]
            assert counters['tinkex_circuit_breaker_transitions_total{reason="forced_open",to="open"}'] == 1
            assert counters['tinkex_circuit_breaker_transitions_total{reason="reset",to="closed"}'] == 1
            assert m.get_gauge(FORCED_GAUGE) == 0.0
            for name in counters:
                assert API_KEY not in name
