"""Visible resilience: retries and breaker transitions as rate-limited log lines on tinkex_trio.resilience."""

from __future__ import annotations

import logging

import pytest

from tinkex_trio._logsink import ResilienceLog
from tinkex_trio._telemetry import CIRCUIT_BREAKER_REJECTED, CIRCUIT_BREAKER_STATE_CHANGE, RETRY, TelemetryBus

LOGGER = "tinkex_trio.resilience"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _bus() -> tuple[TelemetryBus, Clock]:
    clock = Clock()
    bus = TelemetryBus(clock=clock)
    ResilienceLog(interval_s=5.0).attach(bus)
    return bus, clock


def _retry(bus: TelemetryBus, attempt: int, delay: float = 0.5) -> None:
    bus.emit(
        RETRY,
        {"delay_s": delay, "attempt": attempt},
        {
            "method": "POST",
            "path": "/api/v1/forward_backward",
            "reason": "retryable_status",
            "error": "InternalServerError",
        },
    )


def test_retries_are_info_then_warning_and_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    bus, clock = _bus()
    _retry(bus, 1)
    _retry(bus, 2)  # same key within 5 s: held back
    _retry(bus, 3)  # WARNING: a key of its own
    clock.now = 6.0
    _retry(bus, 1)  # the INFO key again, after the interval: says what was held back
    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert [level for level, _ in records] == ["INFO", "WARNING", "INFO"]
    assert records[0][1] == (
        "retrying POST /api/v1/forward_backward (attempt 1) in 0.50 s after InternalServerError (retryable_status)"
    )
    assert records[2][1].endswith("(+1 more like it in the last 5 s)")


def test_breaker_transitions_are_never_held_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    bus, _ = _bus()
    for old, new, reason in [("closed", "open", "failure_threshold"), ("open", "half_open", "timeout_elapsed")] * 2:
        bus.emit(
            CIRCUIT_BREAKER_STATE_CHANGE,
            {"state": 2, "consecutive_failures": 5, "retry_after_s": 30.0},
            {"from": old, "to": new, "reason": reason, "base_url": "http://svc"},
        )
    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert [level for level, _ in records] == ["WARNING", "INFO"] * 2
    assert records[0][1] == (
        "circuit breaker for http://svc: closed -> open (5 failures in a row); calls fail fast for 30.0 s"
    )


def test_rejections_are_warnings_and_never_show_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    bus, _ = _bus()
    key = "tml-very-secret-key-0123456789"
    for _ in range(3):
        bus.emit(
            CIRCUIT_BREAKER_REJECTED,
            {"retry_after_s": 12.0, "attempt": 0},
            {
                "method": "POST",
                "path": f"/api/v1/asample?k={key}",
                "state": "open",
                "base_url": "http://svc",
                "api_key": key,
            },
        )
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 1 and records[0].levelname == "WARNING"
    assert key not in records[0].getMessage()


def test_nothing_is_counted_when_the_level_is_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    bus, _ = _bus()
    _retry(bus, 5)
    assert not [r for r in caplog.records if r.name == LOGGER]
