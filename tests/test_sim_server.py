"""open_sim_server over real loopback sockets (TLS, HTTP/2, stats, keep-alive, shutdown) and `tinkex-trio serve`."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from tinkex_trio.sim import FaultConfig, SimServer, open_sim_server
from tinkex_trio.sim._config import SimConfig

REPO = Path(__file__).resolve().parent.parent


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    """200 ``{"status": "ok", "path": ...}``; ``/slow`` takes 100 s (trio time); ``/boom`` raises."""
    if scope["type"] != "http":
        return
    body_in = b""
    for _ in range(1000):
        message = await receive()
        body_in += message.get("body", b"")
        if not message.get("more_body", False):
            break
    if scope["path"] == "/boom":
        raise RuntimeError("boom")
    if scope["path"] == "/slow":
        await trio.sleep(100)
    body = json.dumps({"status": "ok", "path": scope["path"], "echo": len(body_in)}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def client_for(server: SimServer, *, http2: bool = False, timeout: float | None = 30.0) -> httpx.AsyncClient:
    verify: Any = server.client_ssl_context() if server.tls else False
    return httpx.AsyncClient(base_url=server.base_url, verify=verify, http2=http2, timeout=timeout)


# -- TLS and HTTP versions ----------------------------------------------------------------------------------------


async def test_tls_with_the_client_ssl_context() -> None:
    async with open_sim_server(app=ok_app, tls=True, http2=False) as server:
        assert server.base_url == f"https://127.0.0.1:{server.port}" and server.port > 0
        assert server.ca_pem is not None and server.ca_pem_path is not None
        assert server.ca_pem_path.read_bytes() == server.ca_pem
        assert server.ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")
        async with client_for(server) as client:
            r = await client.get("/api/v1/healthz")
            assert r.status_code == 200 and r.http_version == "HTTP/1.1"
        # Without trusting the private CA the handshake fails.
        async with httpx.AsyncClient(base_url=server.base_url) as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get("/api/v1/healthz")
        ca_path = server.ca_pem_path
    assert not ca_path.exists()


async def test_http2_is_negotiated_over_tls() -> None:
    async with open_sim_server(app=ok_app, tls=True, http2=True) as server, client_for(server, http2=True) as client:
        responses = [await client.post("/api/v1/asample", json={"n": i}) for i in range(3)]
        assert {r.http_version for r in responses} == {"HTTP/2"}
        assert server.stats.http_versions["2"] == 3
        assert server.stats.connections_opened == 1


async def test_http2_can_be_turned_off() -> None:
    async with open_sim_server(app=ok_app, tls=True, http2=False) as server, client_for(server, http2=True) as client:
        r = await client.get("/api/v1/healthz")
        assert r.http_version == "HTTP/1.1"


async def test_plain_http() -> None:
    async with open_sim_server(app=ok_app, tls=False) as server, client_for(server) as client:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert server.ca_pem is None and server.ca_pem_path is None
        with pytest.raises(RuntimeError):
            server.client_ssl_context()
        assert (await client.get("/api/v1/healthz")).json()["status"] == "ok"


# -- stats ----------------------------------------------------------------------------------------------------------


async def test_stats_count_requests_faults_and_bytes() -> None:
    config = SimConfig(faults=FaultConfig())
    async with open_sim_server(config, app=ok_app, tls=False) as server, client_for(server) as client:
        for _ in range(3):
            await client.get("/api/v1/healthz")
        await client.post("/api/v1/sessions/s-1/finish", content=b"x" * 1000)
        config.faults.error_rates = {503: 1.0}  # live change
        await client.post("/api/v1/asample", content=b"y" * 10)
        config.faults.error_rates = {}
        await client.get("/boom")
        stats = server.stats
        assert stats.count("healthz", 200) == 3
        assert stats.count("sessions/{id}/finish") == 1
        assert stats.count("asample", 503) == 1
        assert stats.count("/boom", 500) == 1
        assert stats.by_status() == {200: 4, 503: 1, 500: 1}
        assert stats.by_endpoint()["healthz"] == 3
        assert stats.total_requests == 6
        assert stats.fault_count("error_503", "asample") == 1
        assert stats.bytes_in == 1010
        assert stats.bytes_out > 0 and stats.wire_bytes_out > stats.bytes_out
        assert stats.wire_bytes_in > stats.bytes_in
        assert stats.http_versions["1.1"] == 6
        assert stats.connections_opened == 1
        snapshot = json.loads(json.dumps(stats.snapshot()))
        assert {"endpoint": "healthz", "status": 200, "count": 3} in snapshot["requests"]
        stats.clear()
        assert stats.total_requests == 0 and stats.bytes_in == 0


# -- keep-alive and TCP_NODELAY -----------------------------------------------------------------------------------


async def test_accepted_sockets_have_tcp_nodelay() -> None:
    async with open_sim_server(app=ok_app, tls=False) as server, client_for(server) as client:
        await client.get("/api/v1/healthz")
        assert server.connection_count == 1
        assert server.stats.connections_nodelay == server.stats.connections_opened == 1


async def test_sequential_keep_alive_requests_share_one_connection() -> None:
    # Their latency (a Nagle / delayed-ACK stall would be ~40 ms each) is measured by benchmarks/bench_sim.py.
    async with open_sim_server(app=ok_app, tls=False) as server, client_for(server) as client:
        await client.get("/api/v1/healthz")
        for _ in range(40):
            await client.post("/api/v1/retrieve_future", json={"request_id": "x"})
        assert server.stats.connections_opened == 1
        assert server.stats.connections_nodelay == 1


# -- lifecycle ------------------------------------------------------------------------------------------------------


async def test_lifespan_startup_and_shutdown_reach_the_app() -> None:
    events: list[str] = []

    async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            for _ in range(2):
                message = await receive()
                events.append(message["type"])
                await send({"type": message["type"] + ".complete"})
            return
        await ok_app(scope, receive, send)

    async with open_sim_server(app=lifespan_app, tls=False) as server, client_for(server) as client:
        assert events == ["lifespan.startup"]
        assert (await client.get("/api/v1/healthz")).status_code == 200
    assert events == ["lifespan.startup", "lifespan.shutdown"]


async def test_body_exception_propagates_unwrapped() -> None:
    with pytest.raises(KeyError, match="from the body"):
        async with open_sim_server(app=ok_app, tls=False):
            raise KeyError("from the body")


async def test_ctrl_c_in_a_server_task_leaves_as_a_lone_keyboard_interrupt() -> None:
    """Ctrl-C lands in whichever task runs: in a connection handler it must still leave the block as a plain
    KeyboardInterrupt (a program's ``except KeyboardInterrupt`` works), never as a nested BaseExceptionGroup."""

    async def interrupting_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        async with open_sim_server(app=interrupting_app) as server, client_for(server) as client:
            with contextlib.suppress(httpx.TransportError):
                print((await client.get("/api/v1/healthz")).status_code)
            await trio.sleep_forever()  # cancelled by the handler's failure
    assert type(info.value) is KeyboardInterrupt


async def test_default_is_plain_http_that_open_session_reaches() -> None:
    import tinkex_trio as tx

    async with open_sim_server() as server:
        assert not server.tls and server.base_url.startswith("http://127.0.0.1:")
        with trio.fail_after(30):
            async with tx.open_session(api_key="tml-default-http", base_url=server.base_url) as session:
                assert session.session_id


async def test_exit_cancels_busy_requests_after_the_grace_period(autojump_clock: trio.testing.MockClock) -> None:
    outcome: list[str] = []

    async def slow_call(client: httpx.AsyncClient) -> None:
        try:
            await client.get("/slow")  # the app takes 100 s
            outcome.append("answered")
        except httpx.TransportError:
            outcome.append("connection error")

    async with trio.open_nursery() as nursery:
        async with open_sim_server(app=ok_app, tls=False, graceful_timeout=2.0, keep_alive_timeout=math.inf) as server:
            client = client_for(server, timeout=None)
            nursery.start_soon(slow_call, client)
            await trio.sleep(1.0)
            t_exit = trio.current_time()
        t_after = trio.current_time()
    await client.aclose()
    assert outcome == ["connection error"]
    assert t_after - t_exit == pytest.approx(2.0)


async def test_idle_keep_alive_connections_do_not_delay_exit(autojump_clock: trio.testing.MockClock) -> None:
    async with open_sim_server(app=ok_app, tls=False, graceful_timeout=30.0) as server:
        client = client_for(server)
        await client.get("/api/v1/healthz")  # leaves an idle keep-alive connection open
        t_exit = trio.current_time()
    t_after = trio.current_time()
    await client.aclose()
    assert t_after - t_exit < 1.0


async def test_crashing_app_answers_500_and_server_keeps_serving() -> None:
    async with open_sim_server(app=ok_app, tls=False) as server, client_for(server) as client:
        assert (await client.get("/boom")).status_code == 500
        assert (await client.get("/api/v1/healthz")).status_code == 200


async def test_default_app_is_the_simulator() -> None:
    async with open_sim_server(tls=True) as server, client_for(server, http2=True) as client:
        r = await client.get("/api/v1/healthz")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert server.config.faults.seed == server.config.seed  # faults follow the simulator's seed


# -- imports and the sim extra --------------------------------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)


def test_import_tinkex_trio_does_not_import_the_simulator() -> None:
    out = _python(
        "import sys, tinkex_trio, tinkex_trio.cli\n"
        "print(sorted(m for m in sys.modules if m.startswith(('tinkex_trio.sim', 'hypercorn', 'trustme'))))"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_import_sim_does_not_import_hypercorn_or_trustme() -> None:
    out = _python(
        "import sys, tinkex_trio.sim\n"
        "print(sorted(m for m in sys.modules if m.startswith(('hypercorn', 'trustme'))))\n"
        "print(tinkex_trio.sim.open_sim_server.__name__)"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "open_sim_server"]


def test_serve_without_the_sim_extra_says_which_extra_to_install() -> None:
    out = _python(
        "import sys\n"
        "sys.modules['hypercorn'] = None\n"
        "from tinkex_trio.cli import main\n"
        "sys.exit(main(['serve', '--port', '0']))"
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "pip install 'tinkex_trio[sim]'" in lines[0]


def test_version_still_works() -> None:
    from tinkex_trio._version import __version__
    from tinkex_trio.cli import main

    assert main(["version"]) == 0
    assert __version__


# -- `tinkex-trio serve` in a subprocess ----------------------------------------------------------------------------


async def _read_until(stream: trio.abc.ReceiveStream, buf: bytearray, needle: bytes) -> None:
    for _ in range(10_000):
        if needle in buf:
            return
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise AssertionError(f"serve exited before printing {needle!r}: {bytes(buf)!r}")
        buf += chunk
    raise AssertionError("too much output")


@pytest.mark.parametrize("tls", [False, True])
async def test_serve_subprocess_answers_and_stops_on_sigint(tmp_path: Path, tls: bool) -> None:
    faults = tmp_path / "faults.toml"
    faults.write_text("[endpoints.asample]\nerror_rates = { 503 = 1.0 }\nretry_after_s = 2\n")
    ca_file = tmp_path / "ca.pem"
    cmd = [sys.executable, "-m", "tinkex_trio", "serve", "--port", "0", "--faults", str(faults), "--seed", "3"]
    if tls:
        cmd += ["--tls", "--ca-file", str(ca_file)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    assert proc.stdout is not None
    buf = bytearray()
    try:
        with trio.fail_after(60):
            await _read_until(proc.stdout, buf, b"Ctrl-C")
            text = buf.decode()
            url = next(w for line in text.splitlines() if "serving on" in line for w in line.split() if "://" in w)
            assert url.startswith("https://" if tls else "http://")
            verify: Any = True
            if tls:
                assert str(ca_file) in text and "-----BEGIN CERTIFICATE-----" in text
                import ssl

                verify = ssl.create_default_context(cafile=str(ca_file))
            async with httpx.AsyncClient(base_url=url, verify=verify, timeout=10) as client:
                r = await client.get("/api/v1/healthz")
                assert r.status_code == 200 and r.json() == {"status": "ok"}
                r = await client.post("/api/v1/asample", json={})
                assert r.status_code == 503 and r.headers["retry-after"] == "2"
            proc.send_signal(signal.SIGINT)
            rc = await proc.wait()
            for _ in range(1000):
                chunk = await proc.stdout.receive_some(65536)
                if not chunk:
                    break
                buf += chunk
        assert rc == 0, buf.decode()
        assert "stopped" in buf.decode()
        assert "Traceback" not in buf.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.move_on_after(10):
                await proc.wait()
        await proc.stdout.aclose()
