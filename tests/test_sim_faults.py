"""Fault injection: FaultConfig, and what an httpx client observes from the fault middleware.

The unit tests drive the middleware in-process; the loopback tests serve a trivial ASGI app with hypercorn on
127.0.0.1 (`open_sim_server(app=...)`) and talk to it with httpx, one test per fault kind.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import AsyncGenerator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from tinkex_trio.sim import (
    EndpointFaults,
    FaultConfig,
    FaultMiddleware,
    Latency,
    SimServer,
    SimulatedConnectionReset,
    endpoint_name,
    open_sim_server,
)
from tinkex_trio.sim._fault_middleware import MALFORMED_BODY

Message = MutableMapping[str, Any]

# -- a trivial ASGI app -------------------------------------------------------------------------------------------


class EchoApp:
    """Answers every request with 200 JSON ``{"path", "n", "pad"}`` and counts the requests it handled."""

    def __init__(self, pad: int = 200) -> None:
        self.calls: list[str] = []
        self.pad = pad

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        for _ in range(1000):
            message = await receive()
            if not message.get("more_body", False):
                break
        self.calls.append(scope["path"])
        body = json.dumps({"path": scope["path"], "n": len(self.calls), "pad": "x" * self.pad}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


async def call_in_process(mw: FaultMiddleware, path: str) -> list[dict[str, Any]]:
    """Run one request through ``mw`` without a server; returns the messages it sent."""
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(dict(message, at=trio.current_time()))

    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": path, "headers": [], "client": ("127.0.0.1", 1)}
    await mw(scope, receive, send)
    return sent


@asynccontextmanager
async def served(
    faults: FaultConfig, *, tls: bool = False, http2: bool = False, app: EchoApp | None = None
) -> AsyncGenerator[tuple[SimServer, httpx.AsyncClient, EchoApp]]:
    from tinkex_trio.sim._config import SimConfig

    echo = app if app is not None else EchoApp()
    config = SimConfig(faults=faults)
    # No timeouts anywhere (keep-alive, client): under a MockClock the only deadlines are the injected sleeps.
    async with open_sim_server(config, app=echo, tls=tls, http2=http2, keep_alive_timeout=math.inf) as server:
        verify: Any = server.client_ssl_context() if tls else False
        async with httpx.AsyncClient(base_url=server.base_url, verify=verify, http2=http2, timeout=None) as client:
            yield server, client, echo


# -- FaultConfig --------------------------------------------------------------------------------------------------


def test_defaults_are_quiet() -> None:
    faults = FaultConfig()
    assert faults.resolve("/api/v1/asample").quiet
    assert faults.outage_remaining(now=0.0) == 0.0
    assert not faults.future_fails()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reset_rate": 1.5},
        {"malformed_rate": -0.1},
        {"error_rates": {200: 0.1}},
        {"error_rates": {503: 0.6}, "truncate_rate": 0.5},
        {"future_failure_rate": 2.0},
        {"retry_after_ms": -1},
        {"latency": {"dist": "fixed", "seconds": -1.0}},
    ],
)
def test_invalid_configurations_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FaultConfig.from_mapping(kwargs)


def test_uniform_latency_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        Latency.uniform(2.0, 1.0)


def test_set_endpoint_overrides_only_given_fields_and_rolls_back_on_error() -> None:
    faults = FaultConfig(error_rates={503: 0.25}, should_retry=True, retry_after_s=2)
    faults.set_endpoint("retrieve_future", reset_rate=0.5)
    rf = faults.resolve("/api/v1/retrieve_future")
    assert rf.reset_rate == 0.5
    assert rf.error_rates == {503: 0.25}  # inherited
    assert rf.should_retry is True and rf.retry_after_s == 2
    assert faults.resolve("/api/v1/asample").reset_rate == 0.0
    with pytest.raises(ValueError):
        faults.set_endpoint("asample", reset_rate=0.9)  # 0.9 + 0.25 > 1
    assert "asample" not in faults.endpoints
    faults.clear_endpoint("retrieve_future")
    assert faults.resolve("/api/v1/retrieve_future").reset_rate == 0.0


def test_exact_path_beats_endpoint_name() -> None:
    faults = FaultConfig(
        endpoints={
            "sessions/{id}/finish": EndpointFaults(error_rates={500: 1.0}),
            "/api/v1/sessions/s-1/finish": EndpointFaults(error_rates={502: 1.0}),
        }
    )
    assert faults.resolve("/api/v1/sessions/s-1/finish").error_rates == {502: 1.0}
    assert faults.resolve("/api/v1/sessions/s-2/finish").error_rates == {500: 1.0}


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/v1/retrieve_future", "retrieve_future"),
        ("/api/v1/client/config", "client/config"),
        ("/api/v1/sessions/abc/finish", "sessions/{id}/finish"),
        ("/api/v1/sessions/search", "sessions/search"),
        ("/api/v1/samplers/s:sample:0", "samplers/{id}"),
        ("/api/v1/training_runs/r1/checkpoints/weights/x/publish", "training_runs/{id}/checkpoints/{id}/publish"),
        ("/api/v1/training_runs/r1/checkpoints", "training_runs/{id}/checkpoints"),
        ("/other", "/other"),
    ],
)
def test_endpoint_names(path: str, name: str) -> None:
    assert endpoint_name(path) == name


def test_from_toml_with_endpoints_and_string_status_keys(tmp_path: Path) -> None:
    path = tmp_path / "faults.toml"
    path.write_text(
        """
seed = 7
should_retry = false
retry_after_ms = 250
error_rates = { 503 = 0.1, "429" = 0.2 }
latency = { dist = "uniform", low = 0.01, high = 0.02 }
heartbeat_410 = true

[endpoints.retrieve_future]
reset_rate = 0.3
latency = { dist = "exponential", seconds = 0.5, max_seconds = 2.0 }

[endpoints."/api/v1/asample"]
truncate_rate = 0.5
error_rates = {}
"""
    )
    faults = FaultConfig.from_toml(path)
    assert faults.seed == 7
    assert faults.error_rates == {503: 0.1, 429: 0.2}
    assert faults.latency == Latency.uniform(0.01, 0.02)
    assert faults.heartbeat_410
    rf = faults.resolve("/api/v1/retrieve_future")
    assert rf.reset_rate == 0.3 and rf.latency == Latency.exponential(0.5, max_seconds=2.0)
    assert rf.should_retry is False and rf.retry_after_ms == 250
    asample = faults.resolve("/api/v1/asample")
    assert asample.truncate_rate == 0.5 and asample.error_rates == {}
    # A [faults] table works too, and the plain-data form round-trips.
    wrapped = tmp_path / "wrapped.toml"
    wrapped.write_text("[faults]\nmalformed_rate = 0.5\n[faults.endpoints.healthz]\nmalformed_rate = 0.0\n")
    loaded = FaultConfig.from_toml(wrapped)
    assert loaded.malformed_rate == 0.5 and loaded.resolve("/api/v1/healthz").malformed_rate == 0.0
    assert FaultConfig.from_mapping(faults.to_dict()) == faults


def test_from_toml_rejects_unknown_fields(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text("reset_rte = 0.5\n")
    with pytest.raises(ValueError, match="reset_rte"):
        FaultConfig.from_toml(path)


def test_latency_distributions() -> None:
    rng = random.Random(1)
    assert Latency.fixed(0.25).sample(rng) == 0.25
    uniform = [Latency.uniform(0.1, 0.3).sample(rng) for _ in range(500)]
    assert all(0.1 <= x <= 0.3 for x in uniform)
    assert 0.18 < sum(uniform) / len(uniform) < 0.22
    expo = [Latency.exponential(0.2).sample(rng) for _ in range(4000)]
    assert 0.18 < sum(expo) / len(expo) < 0.22
    capped = [Latency.exponential(1.0, max_seconds=0.5).sample(rng) for _ in range(500)]
    assert max(capped) == 0.5


def test_seeded_streams_are_reproducible_and_per_endpoint() -> None:
    a, b = FaultConfig(seed=11), FaultConfig(seed=11)
    draws_a = [a.rng("asample").random() for _ in range(5)]
    b.rng("healthz").random()  # other endpoints' draws do not shift this stream
    assert [b.rng("asample").random() for _ in range(5)] == draws_a
    assert [FaultConfig(seed=12).rng("asample").random() for _ in range(5)] != draws_a
    a.seed = 12  # changing the seed restarts the streams
    assert a.rng("asample").random() == FaultConfig(seed=12).rng("asample").random()


def test_future_fails_follows_its_rate() -> None:
    faults = FaultConfig(seed=3, future_failure_rate=0.3)
    hits = sum(faults.future_fails() for _ in range(2000))
    assert 500 < hits < 700
    assert not any(FaultConfig(future_failure_rate=0.0).future_fails() for _ in range(100))
    assert all(FaultConfig(future_failure_rate=1.0).future_fails() for _ in range(100))


# -- the middleware in-process ---------------------------------------------------------------------------------------


async def test_latency_sleeps_on_trios_clock(autojump_clock: trio.testing.MockClock) -> None:
    echo = EchoApp()
    faults = FaultConfig(latency=Latency.fixed(2.5))
    mw = FaultMiddleware(echo, lambda: faults)
    t0 = trio.current_time()
    sent = await call_in_process(mw, "/api/v1/healthz")
    assert sent[0]["status"] == 200
    assert sent[0]["at"] - t0 == pytest.approx(2.5)


async def test_latency_rate_applies_to_a_fraction(autojump_clock: trio.testing.MockClock) -> None:
    faults = FaultConfig(seed=5, latency=Latency.fixed(1.0, rate=0.25))
    mw = FaultMiddleware(EchoApp(), lambda: faults)
    t0 = trio.current_time()
    for _ in range(400):
        await call_in_process(mw, "/api/v1/healthz")
    delayed = trio.current_time() - t0  # seconds slept = requests delayed
    assert 70 <= round(delayed) <= 130


async def test_body_delay_separates_start_and_body(autojump_clock: trio.testing.MockClock) -> None:
    faults = FaultConfig(body_delay=Latency.fixed(3.0))
    mw = FaultMiddleware(EchoApp(), lambda: faults)
    t0 = trio.current_time()
    start, body = await call_in_process(mw, "/api/v1/healthz")
    assert start["at"] - t0 == pytest.approx(0.0)
    assert body["at"] - t0 == pytest.approx(3.0)


async def test_outcomes_follow_rates_and_seed_reproduces_them(autojump_clock: trio.testing.MockClock) -> None:
    async def run(seed: int) -> list[int]:
        faults = FaultConfig(seed=seed, error_rates={500: 0.2, 429: 0.1}, malformed_rate=0.1)
        mw = FaultMiddleware(EchoApp(), lambda: faults)
        statuses: list[int] = []
        for _ in range(1000):
            sent = await call_in_process(mw, "/api/v1/healthz")
            body = sent[1]["body"]
            statuses.append(-1 if body == MALFORMED_BODY else sent[0]["status"])
        return statuses

    first = await run(21)
    assert first == await run(21)
    assert first != await run(22)
    assert 160 < first.count(500) < 240
    assert 70 < first.count(429) < 130
    assert 70 < first.count(-1) < 130
    assert 520 < first.count(200) < 680


async def test_outage_window_on_trios_clock(autojump_clock: trio.testing.MockClock) -> None:
    echo = EchoApp()
    faults = FaultConfig(retry_after_s=5)
    mw = FaultMiddleware(echo, lambda: faults)
    faults.start_outage(10.0)
    sent = await call_in_process(mw, "/api/v1/healthz")
    assert sent[0]["status"] == 503 and (b"retry-after", b"5") in sent[0]["headers"]
    await trio.sleep(9.9)
    assert (await call_in_process(mw, "/api/v1/healthz"))[0]["status"] == 503
    await trio.sleep(0.2)
    assert (await call_in_process(mw, "/api/v1/healthz"))[0]["status"] == 200
    assert echo.calls == ["/api/v1/healthz"]  # the app never saw the outage's requests


async def test_reset_without_a_server_raises() -> None:
    faults = FaultConfig(reset_rate=1.0)
    mw = FaultMiddleware(EchoApp(), lambda: faults)
    with pytest.raises(SimulatedConnectionReset):
        await call_in_process(mw, "/api/v1/healthz")


async def test_config_changes_apply_to_the_next_request() -> None:
    holder = {"faults": FaultConfig()}
    mw = FaultMiddleware(EchoApp(), lambda: holder["faults"])
    assert (await call_in_process(mw, "/api/v1/healthz"))[0]["status"] == 200
    holder["faults"].error_rates = {502: 1.0}
    assert (await call_in_process(mw, "/api/v1/healthz"))[0]["status"] == 502
    holder["faults"] = FaultConfig()
    assert (await call_in_process(mw, "/api/v1/healthz"))[0]["status"] == 200


# -- over loopback (hypercorn + httpx), one test per fault kind -----------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
async def test_error_status_with_retry_after_seconds(status: int) -> None:
    faults = FaultConfig(error_rates={status: 1.0}, retry_after_s=3, should_retry=True)
    async with served(faults) as (server, client, echo):
        r = await client.post("/api/v1/optim_step", json={"model_id": "m"})
        assert r.status_code == status
        assert r.headers["retry-after"] == "3"
        assert "retry-after-ms" not in r.headers
        assert r.headers["x-should-retry"] == "true"
        assert str(status) in r.json()["detail"]
        assert echo.calls == []
        assert server.stats.count("optim_step", status) == 1
        assert server.stats.fault_count(f"error_{status}") == 1


async def test_429_with_retry_after_ms_and_should_retry_false() -> None:
    faults = FaultConfig(error_rates={429: 1.0}, retry_after_ms=1500, should_retry=False)
    async with served(faults) as (_, client, _echo):
        r = await client.post("/api/v1/asample", json={})
        assert r.status_code == 429
        assert r.headers["retry-after-ms"] == "1500"
        assert "retry-after" not in r.headers
        assert r.headers["x-should-retry"] == "false"


async def test_no_retry_headers_unless_configured() -> None:
    async with served(FaultConfig(error_rates={500: 1.0})) as (_, client, _echo):
        r = await client.get("/api/v1/healthz")
        assert r.status_code == 500
        assert not {"retry-after", "retry-after-ms", "x-should-retry"} & set(r.headers)
        # The keep-alive connection survives an injected error.
        r2 = await client.get("/api/v1/healthz")
        assert r2.status_code == 500


@pytest.mark.parametrize(("tls", "http2"), [(False, False), (True, True)])
async def test_connection_reset_is_a_connection_error(tls: bool, http2: bool) -> None:
    faults = FaultConfig()
    faults.set_endpoint("forward_backward", reset_rate=1.0)
    async with served(faults, tls=tls, http2=http2) as (server, client, echo):
        assert (await client.get("/api/v1/healthz")).status_code == 200
        # (No request body: httpx's HTTP/2 client leaks its body iterator when a send fails mid-body.)
        with pytest.raises((httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)) as info:
            await client.get("/api/v1/forward_backward")
        assert isinstance(info.value, httpx.TransportError)
        assert echo.calls == ["/api/v1/healthz"]  # a reset before the app: the request was never handled
        assert server.stats.resets == 1
        assert server.stats.count("forward_backward", 0) == 1
        # The next request gets a new connection and an answer.
        assert (await client.get("/api/v1/healthz")).status_code == 200
        assert server.stats.connections_opened == 2


async def test_reset_is_an_actual_tcp_reset() -> None:
    async with served(FaultConfig(reset_rate=1.0)) as (_, client, _echo):
        with pytest.raises(httpx.ReadError) as info:
            await client.get("/api/v1/healthz")
        cause: BaseException | None = info.value
        seen: list[BaseException] = []
        for _ in range(10):
            if cause is None:
                break
            seen.append(cause)
            cause = cause.__cause__ or cause.__context__
        assert any(isinstance(e, ConnectionResetError) for e in seen), seen


async def test_reset_after_the_app_handled_the_request() -> None:
    async with served(FaultConfig(reset_after_rate=1.0)) as (server, client, echo):
        with pytest.raises(httpx.TransportError):
            await client.post("/api/v1/optim_step", json={})
        assert echo.calls == ["/api/v1/optim_step"]
        assert server.stats.fault_count("reset_after") == 1 and server.stats.resets == 1


async def test_malformed_body_is_200_with_invalid_json() -> None:
    async with served(FaultConfig(malformed_rate=1.0)) as (_, client, echo):
        r = await client.post("/api/v1/create_session", json={})
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.content)
        assert echo.calls == ["/api/v1/create_session"]


@pytest.mark.parametrize(("tls", "http2"), [(False, False), (True, False), (True, True)])
async def test_truncated_body_is_a_protocol_error(tls: bool, http2: bool) -> None:
    async with served(FaultConfig(truncate_rate=1.0), tls=tls, http2=http2) as (server, client, _echo):
        async with client.stream("GET", "/api/v1/healthz") as r:
            assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            assert r.status_code == 200
            declared = int(r.headers["content-length"])
            received = bytearray()
            with pytest.raises(httpx.RemoteProtocolError):
                async for chunk in r.aiter_raw():
                    received += chunk
        assert 0 < len(received) < declared
        # The connection was closed; the client reconnects for the next (also truncated) request.
        async with client.stream("GET", "/api/v1/healthz") as r2:
            assert r2.status_code == 200
        assert server.stats.fault_count("truncate") == 2
        assert server.stats.connections_opened == 2


async def test_outage_over_loopback_on_mock_clock(mock_clock: trio.testing.MockClock) -> None:
    async with served(FaultConfig()) as (server, client, echo):
        server.start_outage(30.0)
        r = await client.get("/api/v1/healthz")
        assert r.status_code == 503 and "outage" in r.json()["detail"]
        mock_clock.jump(29.9)
        assert (await client.get("/api/v1/healthz")).status_code == 503
        mock_clock.jump(0.2)
        assert (await client.get("/api/v1/healthz")).status_code == 200
        assert server.stats.fault_count("outage") == 2
        assert len(echo.calls) == 1
        server.start_outage(5.0)
        server.end_outage()
        assert (await client.get("/api/v1/healthz")).status_code == 200


async def test_heartbeat_410() -> None:
    async with served(FaultConfig(heartbeat_410=True)) as (_, client, echo):
        r = await client.post("/api/v1/session_heartbeat", json={"session_id": "s", "type": "session_heartbeat"})
        assert r.status_code == 410
        assert (await client.post("/api/v1/create_session", json={})).status_code == 200
        assert echo.calls == ["/api/v1/create_session"]


async def test_latency_over_loopback_on_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    faults = FaultConfig(endpoints={"asample": EndpointFaults(latency=Latency.fixed(1.75))})
    async with served(faults) as (_, client, _echo):
        t0 = trio.current_time()
        assert (await client.get("/api/v1/healthz")).status_code == 200
        t1 = trio.current_time()
        assert (await client.post("/api/v1/asample", json={})).status_code == 200
        t2 = trio.current_time()
    # The clock only moves when every task waits, and the only deadline is the injected sleep.
    assert t1 - t0 == pytest.approx(0.0)
    assert t2 - t1 == pytest.approx(1.75)


async def test_uniform_latency_over_loopback_is_reproducible(autojump_clock: trio.testing.MockClock) -> None:
    async def delays(seed: int) -> list[float]:
        faults = FaultConfig(seed=seed, latency=Latency.uniform(0.5, 1.5))
        out: list[float] = []
        async with served(faults) as (_, client, _echo):
            for _ in range(5):
                t0 = trio.current_time()
                await client.get("/api/v1/healthz")
                out.append(trio.current_time() - t0)
        return out

    first = await delays(4)
    assert all(0.5 <= d <= 1.5 for d in first)
    assert len(set(first)) == 5
    assert await delays(4) == pytest.approx(first)


async def test_slow_response_over_loopback(autojump_clock: trio.testing.MockClock) -> None:
    async with served(FaultConfig(body_delay=Latency.fixed(4.0))) as (_, client, _echo):
        t0 = trio.current_time()
        async with client.stream("GET", "/api/v1/healthz") as r:
            t_headers = trio.current_time()
            body = await r.aread()
            t_body = trio.current_time()
    assert r.status_code == 200 and json.loads(body)["path"] == "/api/v1/healthz"
    assert t_headers - t0 == pytest.approx(0.0)
    assert t_body - t0 == pytest.approx(4.0)


# -- the knobs the simulator app reads (future_failure_rate, paused_rate_limit), over loopback --------------------


async def _create_model_future(client: httpx.AsyncClient) -> str:
    headers = {"X-API-Key": "tml-faults-test"}
    r = await client.post(
        "/api/v1/create_session",
        json={"tags": [], "user_metadata": {}, "sdk_version": "0.38.0", "type": "create_session"},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        "/api/v1/create_model",
        json={
            "session_id": r.json()["session_id"],
            "model_seq_id": 0,
            "base_model": "meta-llama/Llama-3.2-1B",
            "lora_config": {"rank": 4},
            "type": "create_model",
        },
        headers=headers,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["request_id"])


async def _poll(client: httpx.AsyncClient, request_id: str) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/retrieve_future",
        json={"request_id": request_id, "allow_metadata_only": True},
        headers={"X-API-Key": "tml-faults-test"},
    )
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def test_future_failure_rate_fails_futures_with_category_server(autojump_clock: trio.testing.MockClock) -> None:
    from tinkex_trio.sim import SimConfig

    config = SimConfig(compute_in_threads=False, long_poll_s=5.0, faults=FaultConfig(future_failure_rate=1.0))
    async with (
        open_sim_server(config, tls=False, keep_alive_timeout=math.inf) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=None) as client,
    ):
        request_id = await _create_model_future(client)
        answer = await _poll(client, request_id)
    assert answer.get("category") == "server" and "error" in answer, answer


async def test_paused_rate_limit_is_reported_by_try_again(autojump_clock: trio.testing.MockClock) -> None:
    from tinkex_trio.sim import SimConfig

    config = SimConfig(compute_in_threads=False, long_poll_s=2.0, faults=FaultConfig(paused_rate_limit=True))
    async with (
        open_sim_server(config, tls=False, keep_alive_timeout=math.inf) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=None) as client,
    ):
        request_id = await _create_model_future(client)
        held = await _poll(client, request_id)
        assert held.get("type") == "try_again" and held.get("queue_state") == "paused_rate_limit", held
        server.config.faults.paused_rate_limit = False  # live: the next poll gets the result
        done = await _poll(client, request_id)
    assert "model_id" in done and done.get("type") != "try_again", done
