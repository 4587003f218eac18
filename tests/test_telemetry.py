"""Unit tests for tinkex_trio._telemetry."""

from __future__ import annotations

import dataclasses
import logging

import msgspec
import pytest
import trio
import trio.testing

from tinkex_trio import _telemetry as tel
from tinkex_trio._config import Config
from tinkex_trio._telemetry import TelemetryBus, TelemetryEvent

KEY = "tml-telemetry-test-secret-987654"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.now


def collect(bus: TelemetryBus, handler_id: str, events: str | list[str]) -> list[TelemetryEvent]:
    got: list[TelemetryEvent] = []
    bus.attach(handler_id, events, got.append)
    return got


# --------------------------------------------------------------------------------------------------------------------
# Names and events
# --------------------------------------------------------------------------------------------------------------------


def test_event_names() -> None:
    expected = {
        "tinkex.http.request.start",
        "tinkex.http.request.stop",
        "tinkex.http.request.exception",
        "tinkex.circuit_breaker.state_change",
        "tinkex.circuit_breaker.rejected",
        "tinkex.batch.forward_backward.start",
        "tinkex.batch.forward_backward.stop",
        "tinkex.batch.optim_step.start",
        "tinkex.batch.optim_step.stop",
        "tinkex.retry",
        "tinkex.future.queue_state",
        "tinkex.session.heartbeat",
        "tinkex.metrics.snapshot",
    }
    assert expected == tel.ALL_EVENTS
    assert tel.HTTP_REQUEST_STOP == "tinkex.http.request.stop"
    assert tel.CIRCUIT_BREAKER_STATE_CHANGE == "tinkex.circuit_breaker.state_change"
    assert tel.BATCH_OPTIM_STEP_START == "tinkex.batch.optim_step.start"
    assert tel.RETRY == "tinkex.retry"


def test_event_is_frozen() -> None:
    event = TelemetryEvent("x", {"a": 1.0}, {"b": "c"}, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.name = "y"  # type: ignore[misc]


def test_emit_builds_the_event() -> None:
    clock = FakeClock()
    bus = TelemetryBus(clock=clock)
    got = collect(bus, "h", tel.RETRY)
    bus.emit(tel.RETRY, {"delay_ms": 500.0, "attempt": 1}, {"reason": "timeout", "status": None, "ok": False})
    clock.now = 200.0
    bus.emit(tel.RETRY, time=5.5)
    assert got == [
        TelemetryEvent(
            tel.RETRY, {"delay_ms": 500.0, "attempt": 1}, {"reason": "timeout", "status": None, "ok": False}, 100.0
        ),
        TelemetryEvent(tel.RETRY, {}, {}, 5.5),
    ]


def test_events_are_json_encodable() -> None:
    bus = TelemetryBus(clock=lambda: 1.0)
    got = collect(bus, "h", "*")
    bus.emit(tel.METRICS_SNAPSHOT)
    bus.emit(tel.RETRY, {"delay_ms": 2.0}, {"reason": "timeout", "status": None})
    assert [msgspec.json.decode(msgspec.json.encode(e)) for e in got] == [
        {"name": tel.METRICS_SNAPSHOT, "measurements": {}, "metadata": {}, "time": 1.0},
        {
            "name": tel.RETRY,
            "measurements": {"delay_ms": 2.0},
            "metadata": {"reason": "timeout", "status": None},
            "time": 1.0,
        },
    ]


def test_emit_copies_measurements() -> None:
    bus = TelemetryBus()
    got = collect(bus, "h", "*")
    measurements = {"a": 1.0}
    bus.emit("x.y", measurements)
    measurements["a"] = 2.0
    assert got[0].measurements == {"a": 1.0}


def test_no_listener_is_cheap() -> None:
    clock = FakeClock()
    bus = TelemetryBus(clock=clock)
    bus.emit(tel.HTTP_REQUEST_START, {"x": 1.0})
    assert clock.calls == 0
    assert not bus.has_listeners(tel.HTTP_REQUEST_START)
    collect(bus, "h", tel.HTTP_REQUEST_START)
    assert bus.has_listeners(tel.HTTP_REQUEST_START)
    assert not bus.has_listeners(tel.HTTP_REQUEST_STOP)


# --------------------------------------------------------------------------------------------------------------------
# attach / detach and matching
# --------------------------------------------------------------------------------------------------------------------

ALL = sorted(tel.ALL_EVENTS)


def emit_all(bus: TelemetryBus) -> None:
    for name in ALL:
        bus.emit(name)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (tel.HTTP_REQUEST_STOP, [tel.HTTP_REQUEST_STOP]),
        ("tinkex.http.", [tel.HTTP_REQUEST_EXCEPTION, tel.HTTP_REQUEST_START, tel.HTTP_REQUEST_STOP]),
        ("tinkex.http.*", [tel.HTTP_REQUEST_EXCEPTION, tel.HTTP_REQUEST_START, tel.HTTP_REQUEST_STOP]),
        ("tinkex.batch.", sorted(n for n in tel.ALL_EVENTS if n.startswith("tinkex.batch."))),
        ("*", ALL),
        (
            [tel.RETRY, "tinkex.circuit_breaker."],
            [tel.CIRCUIT_BREAKER_REJECTED, tel.CIRCUIT_BREAKER_STATE_CHANGE, tel.RETRY],
        ),
        ("tinkex.http", []),  # an exact name that is not an event: no prefix matching without "." or ".*"
        ("tinkex.retr", []),
    ],
)
def test_matching(spec: str | list[str], expected: list[str]) -> None:
    bus = TelemetryBus()
    got = collect(bus, "h", spec)
    emit_all(bus)
    assert sorted(e.name for e in got) == expected


def test_bad_specs() -> None:
    bus = TelemetryBus()
    with pytest.raises(ValueError):
        bus.attach("h", [], lambda e: None)
    with pytest.raises(ValueError):
        bus.attach("h", "", lambda e: None)
    with pytest.raises(ValueError):
        bus.subscribe(0)


def test_duplicate_id_rejected_and_detach() -> None:
    bus = TelemetryBus()
    first = collect(bus, "h", "*")
    with pytest.raises(ValueError, match="already attached"):
        bus.attach("h", "*", lambda e: None)
    bus.emit(tel.RETRY)
    assert len(first) == 1
    assert bus.detach("h") is True
    assert bus.detach("h") is False
    bus.emit(tel.RETRY)
    assert len(first) == 1
    # The id can be reused once detached.
    second = collect(bus, "h", "*")
    bus.emit(tel.RETRY)
    assert len(second) == 1


def test_handlers_called_in_attach_order() -> None:
    bus = TelemetryBus()
    order: list[str] = []
    for hid in ("c", "a", "b"):
        bus.attach(hid, "*", lambda e, hid=hid: order.append(hid))
    bus.emit(tel.RETRY)
    assert order == ["c", "a", "b"]
    assert bus.handler_ids() == ["c", "a", "b"]


def test_attach_after_emit_is_seen() -> None:
    bus = TelemetryBus()
    bus.emit(tel.RETRY)  # builds the (empty) route
    got = collect(bus, "h", tel.RETRY)
    bus.emit(tel.RETRY)
    assert len(got) == 1


def test_handler_detaching_during_emit() -> None:
    bus = TelemetryBus()
    calls: list[str] = []

    def once(event: TelemetryEvent) -> None:
        calls.append("once")
        bus.detach("once")

    bus.attach("once", "*", once)
    bus.attach("always", "*", lambda e: calls.append("always"))
    bus.emit(tel.RETRY)
    bus.emit(tel.RETRY)
    assert calls == ["once", "always", "always"]


def test_raising_handler_is_logged_and_detached(caplog: pytest.LogCaptureFixture) -> None:
    bus = TelemetryBus()
    calls: list[str] = []

    def broken(event: TelemetryEvent) -> None:
        calls.append("broken")
        raise RuntimeError("handler bug")

    bus.attach("broken", "*", broken)
    after = collect(bus, "after", "*")
    with caplog.at_level(logging.ERROR, logger="tinkex_trio.telemetry"):
        bus.emit(tel.HTTP_REQUEST_STOP)  # must not raise
    assert len(after) == 1  # later handlers still ran
    assert bus.handler_ids() == ["after"]
    assert any("'broken'" in r.getMessage() and r.exc_info for r in caplog.records)
    bus.emit(tel.HTTP_REQUEST_STOP)
    assert calls == ["broken"]
    assert len(after) == 2


def test_base_exception_from_handler_propagates() -> None:
    bus = TelemetryBus()

    def interrupt(event: TelemetryEvent) -> None:
        raise KeyboardInterrupt

    bus.attach("k", "*", interrupt)
    with pytest.raises(KeyboardInterrupt):
        bus.emit(tel.RETRY)
    assert bus.handler_ids() == ["k"]  # not treated as a handler failure


# --------------------------------------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------------------------------------


def test_api_key_never_reaches_listeners() -> None:
    config = Config.create(KEY, env={})
    jwt = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1MSJ9.sig"
    bus = TelemetryBus()
    got = collect(bus, "h", "*")
    metadata: dict[str, tel.MetadataValue] = {
        "api_key": config.api_key,
        "X-API-Key": config.api_key,
        "authorization": jwt,
        "url": f"https://h/?key={config.api_key}",
        "message": f"failed for {jwt}",
        "config": repr(config),
        "key_fingerprint": config.key_fingerprint,
        "status": 401,
    }
    bus.emit(tel.HTTP_REQUEST_EXCEPTION, {"duration_ms": 1.0}, metadata)
    event = got[0]
    text = repr(event)
    assert KEY not in text and "telemetry-test-secret" not in text
    assert jwt not in text and "eyJzdWIiOiJ1MSJ9" not in text
    assert (
        "api_key" not in event.metadata and "X-API-Key" not in event.metadata and "authorization" not in event.metadata
    )
    assert event.metadata["url"] == "https://h/?key=<redacted>"
    assert event.metadata["message"] == "failed for <redacted>"
    assert event.metadata["key_fingerprint"] == config.key_fingerprint  # the fingerprint is safe to keep
    assert event.metadata["status"] == 401
    assert metadata["api_key"] == KEY  # the caller's mapping is untouched


# --------------------------------------------------------------------------------------------------------------------
# Subscriptions (trio)
# --------------------------------------------------------------------------------------------------------------------


async def test_subscription_receives_in_order() -> None:
    bus = TelemetryBus(clock=trio.current_time)
    receive = bus.subscribe(10)
    for i in range(3):
        bus.emit(tel.RETRY, {"attempt": float(i)})
    got = [await receive.receive() for _ in range(3)]
    assert [e.measurements["attempt"] for e in got] == [0.0, 1.0, 2.0]
    assert bus.dropped == 0


async def test_subscription_full_buffer_drops_and_counts() -> None:
    bus = TelemetryBus()
    receive = bus.subscribe(2)
    other = bus.subscribe(10)
    for i in range(5):
        bus.emit(tel.RETRY, {"i": float(i)})  # never blocks
    assert bus.dropped == 3
    assert bus.dropped_for(receive) == 3
    assert bus.dropped_for(other) == 0
    assert [receive.receive_nowait().measurements["i"] for _ in range(2)] == [0.0, 1.0]
    with pytest.raises(trio.WouldBlock):
        receive.receive_nowait()
    assert len([other.receive_nowait() for _ in range(5)]) == 5
    # Room again: delivery resumes.
    bus.emit(tel.RETRY, {"i": 9.0})
    assert receive.receive_nowait().measurements["i"] == 9.0


async def test_subscription_filter() -> None:
    bus = TelemetryBus()
    receive = bus.subscribe(10, events="tinkex.circuit_breaker.")
    emit_all(bus)
    names = [receive.receive_nowait().name for _ in range(2)]
    assert sorted(names) == [tel.CIRCUIT_BREAKER_REJECTED, tel.CIRCUIT_BREAKER_STATE_CHANGE]
    with pytest.raises(trio.WouldBlock):
        receive.receive_nowait()


async def test_waiting_subscriber_is_woken() -> None:
    bus = TelemetryBus(clock=trio.current_time)
    receive = bus.subscribe(1)
    got: list[TelemetryEvent] = []

    async def consumer() -> None:
        async for event in receive:
            got.append(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(3):
            bus.emit(tel.SESSION_HEARTBEAT, {"n": float(i)})
            await trio.testing.wait_all_tasks_blocked()
        assert bus.unsubscribe(receive) is True
    assert [e.measurements["n"] for e in got] == [0.0, 1.0, 2.0]
    assert bus.dropped == 0


async def test_unsubscribe_ends_the_channel_after_buffered_events() -> None:
    bus = TelemetryBus()
    receive = bus.subscribe(10)
    bus.emit(tel.RETRY)
    assert bus.unsubscribe(receive) is True
    assert bus.unsubscribe(receive) is False
    bus.emit(tel.RETRY)  # not delivered
    assert receive.receive_nowait().name == tel.RETRY
    with pytest.raises(trio.EndOfChannel):
        receive.receive_nowait()
    assert bus.subscription_count() == 0


async def test_closed_receiver_ends_the_subscription() -> None:
    bus = TelemetryBus()
    receive = bus.subscribe(10)
    assert bus.subscription_count() == 1
    await receive.aclose()
    bus.emit(tel.RETRY)  # does not raise
    assert bus.subscription_count() == 0
    assert bus.dropped == 0


# --------------------------------------------------------------------------------------------------------------------
# span
# --------------------------------------------------------------------------------------------------------------------


async def test_span_stop(autojump_clock: trio.testing.MockClock) -> None:
    bus = TelemetryBus(clock=trio.current_time)
    got = collect(bus, "h", "tinkex.http.")
    with bus.span("tinkex.http.request", {"method": "POST"}) as extra:
        await trio.sleep(1.5)
        extra["status"] = 200
    start, stop = got
    assert start.name == tel.HTTP_REQUEST_START and start.metadata == {"method": "POST"}
    assert "system_time" in start.measurements
    assert stop.name == tel.HTTP_REQUEST_STOP
    assert stop.metadata == {"method": "POST", "status": 200}
    assert stop.measurements["duration_ms"] == pytest.approx(1500.0)  # pyright: ignore[reportUnknownMemberType]
    assert stop.time - start.time == pytest.approx(1.5)  # pyright: ignore[reportUnknownMemberType]


async def test_span_exception(autojump_clock: trio.testing.MockClock) -> None:
    bus = TelemetryBus(clock=trio.current_time)
    got = collect(bus, "h", "*")
    with pytest.raises(ValueError, match="boom"), bus.span("tinkex.http.request"):
        await trio.sleep(0.25)
        raise ValueError("boom")
    assert [e.name for e in got] == [tel.HTTP_REQUEST_START, tel.HTTP_REQUEST_EXCEPTION]
    assert got[1].metadata == {"kind": "ValueError"}
    assert got[1].measurements["duration_ms"] == pytest.approx(250.0)  # pyright: ignore[reportUnknownMemberType]


async def test_span_cancellation_is_not_an_exception(autojump_clock: trio.testing.MockClock) -> None:
    bus = TelemetryBus(clock=trio.current_time)
    got = collect(bus, "h", "*")
    with trio.move_on_after(2.0) as scope:
        with bus.span("tinkex.batch.optim_step"):
            await trio.sleep(10)
    assert scope.cancelled_caught
    assert [e.name for e in got] == [tel.BATCH_OPTIM_STEP_START, tel.BATCH_OPTIM_STEP_STOP]
    assert got[1].metadata == {"cancelled": True}
    assert got[1].measurements["duration_ms"] == pytest.approx(2000.0)  # pyright: ignore[reportUnknownMemberType]
