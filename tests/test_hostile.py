"""Hostile and broken servers: every call ends in a typed TinkexError, in bounded time and bounded memory.

Two kinds of test:

* Real loopback sockets (127.0.0.1 only): a tiny raw trio TCP server that speaks just enough HTTP/1.1 to misbehave
  (drips a body, sends an endless one, declares a huge one, answers HTML or garbage), and TLS failures against the
  simulator or a trustme-certified raw server. These run on the real clock (MockClock's autojump would jump while
  the client waits on a socket), with a 2 s attempt deadline and ``trio.fail_after(20)`` around each test; they
  assert counts and sizes, never wall-clock speed.
* In-process (``httpx.ASGITransport`` / ``MockTransport``) under the autojump clock: the retrieve_future poll path
  with a body over the cap, and the cause chain of a retried connection error.
"""

from __future__ import annotations

import json
import random
import ssl
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import pytest
import trio
import trio.testing
import trustme
from _simkit import API_KEY, Reply, sim_stack, submit_create_model

from tinkex_trio import errors
from tinkex_trio._config import Config
from tinkex_trio._futures import MAX_BAD_REPLY_RETRIES
from tinkex_trio._pool_set import PoolKind
from tinkex_trio._session import open_session
from tinkex_trio._telemetry import HTTP_REQUEST_START, RETRY, TelemetryEvent
from tinkex_trio._transport import Transport
from tinkex_trio.sim import open_sim_server
from tinkex_trio.types import CreateModelResponse, CreateSessionResponse, decode

KEY = "tml-hostile-server-key-0123456789"
CAP = 1 << 20  # max_response_bytes in these tests: 1 MiB
DEADLINE_S = 2.0  # timeouts.total_s in these tests
TEST_TIMEOUT_S = 20.0
SAFETY_VALVE = 64 * CAP
"""The 'endless' body stops here and the connection is cut: so that a client with no cap (the old code) fails the
test without eating the machine's memory."""

CHUNK = b"a" * 65536
CHUNK_FRAME = f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n"


# -- the hostile server ---------------------------------------------------------------------------------------------


@dataclass
class Hostile:
    """What the server saw: connections accepted and body bytes it managed to send before the client hung up."""

    port: int
    connections: int = 0
    sent: int = 0
    hung_up: int = 0  # connections the client closed while we were still sending
    first_hang_up: trio.Event = field(default_factory=trio.Event)
    requests: list[bytes] = field(default_factory=list[bytes])


Behaviour = Callable[[trio.abc.Stream, Hostile], Awaitable[None]]


async def _read_head(stream: trio.abc.Stream) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 65536:
        data = await stream.receive_some(65536)
        if not data:
            break
        head += data
    return head


async def _send(stream: trio.abc.Stream, state: Hostile, data: bytes) -> None:
    await stream.send_all(data)
    state.sent += len(data)


@asynccontextmanager
async def hostile_server(behaviour: Behaviour, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[Hostile]:
    """Serve ``behaviour`` on 127.0.0.1 (a free port) for the block; every connection gets it once."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    state = Hostile(port=listeners[0].socket.getsockname()[1])

    async def handle(raw: trio.SocketStream) -> None:
        state.connections += 1
        stream: trio.abc.Stream = raw
        try:
            if tls is not None:
                stream = trio.SSLStream(raw, tls, server_side=True)
                await stream.do_handshake()
            state.requests.append(await _read_head(stream))
            await behaviour(stream, state)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            state.hung_up += 1  # the client closed the connection (or refused our certificate): what we test for
            state.first_hang_up.set()
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(partial(trio.serve_listeners, handle, listeners))
        yield state
        nursery.cancel_scope.cancel()


def _head(status: str = "200 OK", *headers: str) -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status}", *headers]) + "\r\n\r\n").encode()


async def drip_forever(stream: trio.abc.Stream, state: Hostile) -> None:
    """A 200 whose body comes one byte a second (each read is quick: only the whole is slow)."""
    await _send(stream, state, _head("200 OK", "Content-Type: application/json", "Content-Length: 100000"))
    while True:
        await _send(stream, state, b" ")
        await trio.sleep(1.0)


async def endless_chunked(stream: trio.abc.Stream, state: Hostile) -> None:
    """A 200 with a chunked body sent as fast as the client reads it, 'forever' (up to the safety valve)."""
    await _send(stream, state, _head("200 OK", "Content-Type: application/json", "Transfer-Encoding: chunked"))
    while state.sent < SAFETY_VALVE:
        await _send(stream, state, CHUNK_FRAME)


async def huge_content_length(stream: trio.abc.Stream, state: Hostile) -> None:
    """Declares a terabyte, then sends as fast as it can (up to the safety valve)."""
    await _send(stream, state, _head("200 OK", "Content-Type: application/json", f"Content-Length: {10**12}"))
    while state.sent < SAFETY_VALVE:
        await _send(stream, state, CHUNK)


HTML = b"<!doctype html><html><body><h1>Sign in to the hotel Wi-Fi</h1></body></html>"


async def html_page(stream: trio.abc.Stream, state: Hostile) -> None:
    """A captive portal: 200, text/html."""
    await _send(stream, state, _head("200 OK", "Content-Type: text/html", f"Content-Length: {len(HTML)}") + HTML)


async def garbage(stream: trio.abc.Stream, state: Hostile) -> None:
    """Not HTTP at all (an SSH server on the port), then hang up."""
    await _send(stream, state, b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff\xfe garbage \x01\x02\r\n\r\n")


def hostile_transport(port: int, *, scheme: str = "http", **overrides: Any) -> Transport:
    config = Config.create(
        api_key=KEY,
        base_url=f"{scheme}://127.0.0.1:{port}",
        env={},
        max_response_bytes=CAP,
        # Reads are allowed 10 s each, so only the overall deadline can catch a drip.
        timeouts={"total_s": DEADLINE_S, "request_s": 10.0, "retrieve_future_s": 1.0, "connect_s": 2.0},
        retry={"max_retries": 1, "base_delay_s": 0.05, "max_delay_s": 0.05},
    )
    return Transport(config.replace(**overrides), rng=random.Random(0))


def count(transport: Transport, event: str) -> list[TelemetryEvent]:
    events: list[TelemetryEvent] = []
    transport.telemetry.attach(f"count-{event}", event, events.append)
    return events


async def create_session(transport: Transport) -> CreateSessionResponse:
    return await transport.request_json(
        CreateSessionResponse, PoolKind.SESSION, "POST", "/api/v1/create_session", json={"tags": []}
    )


# -- (a) a body dripped one byte a second ---------------------------------------------------------------------------


async def test_a_dripping_body_ends_at_the_attempt_deadline_and_is_retried_as_a_timeout() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with hostile_server(drip_forever) as server:
            transport = hostile_transport(server.port)
            retries = count(transport, RETRY)
            with pytest.raises(errors.APITimeoutError, match=r"no complete answer within 2 s") as info:
                await create_session(transport)
            await transport.aclose()
    assert [e.metadata["reason"] for e in retries] == ["timeout"]  # retried like any timeout, once (max_retries=1)
    assert server.connections == 2
    assert server.sent < 1000  # a few bytes of head and body: the drip never grew anything
    assert "total_s" in str(info.value)


async def test_a_poll_attempt_has_its_own_shorter_deadline() -> None:
    # retrieve_future_s = 1 s, connect_s = 2 s: a poll attempt ends after min(total_s, 1 + 2) = 2 s here; with
    # total_s = 10 it ends after 3 s, long before total_s (the per-read timeout, 1 s, never fires on a 1 s drip...
    # almost: so only the count of attempts is asserted, never the time).
    with trio.fail_after(TEST_TIMEOUT_S):
        async with hostile_server(drip_forever) as server:
            transport = hostile_transport(server.port, timeouts={"total_s": 10.0, "retrieve_future_s": 1.0})
            assert transport._attempt_deadline(httpx.Timeout(1.0, connect=2.0)) == 3.0  # pyright: ignore[reportPrivateUsage]
            assert transport._attempt_deadline(httpx.Timeout(10.0, connect=2.0)) == 10.0  # pyright: ignore[reportPrivateUsage]
            with pytest.raises(errors.APITimeoutError):
                await transport.request(
                    PoolKind.FUTURES, "POST", "/api/v1/retrieve_future", json={}, timeout=1.0, retry=False
                )
            await transport.aclose()
    assert server.connections == 1


# -- (b) an endless body, (c) a huge declared body ------------------------------------------------------------------


async def test_an_endless_body_is_cut_at_the_cap_with_bounded_memory_and_not_retried() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with hostile_server(endless_chunked) as server:
            transport = hostile_transport(server.port)
            # Build the pool's httpx client first (its SSL context alone is about 1 MiB): only the request is measured.
            transport._pool_set.for_kind(PoolKind.SESSION)  # pyright: ignore[reportPrivateUsage]
            tracemalloc.start()
            try:
                with pytest.raises(errors.ResponseTooLargeError) as info:
                    await create_session(transport)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            await transport.aclose()
            # The server notices the hang-up at its next send.
            with trio.fail_after(5):
                await server.first_hang_up.wait()
    err = info.value
    assert isinstance(err, errors.ResponseValidationError)  # its family: an unusable answer
    assert err.limit == CAP and CAP < err.size <= CAP + len(CHUNK)
    assert err.body is not None and err.body.startswith(b"aaaa") and len(err.body) <= 2048
    assert "max_response_bytes" in str(err)
    assert server.connections == 1  # not retried: the server would send the same body again
    # Bounded: what the client buffered (and the process allocated, server included) is a few times the cap; what
    # the server managed to send before the client hung up is the cap plus the kernel's socket buffers.
    assert peak < 3 * CAP, f"peak traced memory {peak} bytes"  # 1.4 MiB when measured
    assert server.sent < SAFETY_VALVE, f"the server sent {server.sent} bytes"


async def test_a_huge_content_length_is_refused_before_reading() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with hostile_server(huge_content_length) as server:
            transport = hostile_transport(server.port)
            with pytest.raises(errors.ResponseTooLargeError, match=r"declares 1000000000000 bytes") as info:
                await create_session(transport)
            await transport.aclose()
    assert info.value.size == 10**12 and info.value.limit == CAP and info.value.body is None
    assert server.connections == 1
    assert server.sent < SAFETY_VALVE


# -- (d) HTML, (e) garbage ------------------------------------------------------------------------------------------


async def test_an_html_200_is_a_response_validation_error() -> None:
    # A regression guard: the old code got this right too.
    with trio.fail_after(TEST_TIMEOUT_S):
        async with hostile_server(html_page) as server:
            transport = hostile_transport(server.port)
            with pytest.raises(errors.ResponseValidationError) as info:
                await create_session(transport)
            await transport.aclose()
    assert not isinstance(info.value, errors.ResponseTooLargeError)
    assert info.value.body == HTML
    assert server.connections == 1


async def test_garbage_is_a_retried_connection_error_with_its_cause() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with hostile_server(garbage) as server:
            transport = hostile_transport(server.port)
            with pytest.raises(errors.APIConnectionError) as info:
                await create_session(transport)
            await transport.aclose()
    err = info.value
    assert type(err) is errors.APIConnectionError
    assert server.connections == 2  # retried once (max_retries=1)
    assert isinstance(err.__cause__, httpx.RemoteProtocolError)
    assert KEY not in str(err) and KEY not in repr(err.__cause__)


# -- the poll path: a retrieve_future answer over the cap -----------------------------------------------------------

POLL_CAP = 64 * 1024


async def test_a_poll_answer_over_the_cap_fails_the_future_after_bounded_repolls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = Config.create(API_KEY, "http://sim.test", env={}, max_response_bytes=POLL_CAP)
    big = Reply(body=b"x" * (POLL_CAP + 1))
    async with sim_stack() as sim, sim.session(config=config) as session:
        sim.rec.script("retrieve_future", *[big] * (MAX_BAD_REPLY_RETRIES + 1))
        reply = await submit_create_model(session)
        fut = session._ctx.futures.track(reply, "CreateModel", lambda r: decode(CreateModelResponse, r.content))  # pyright: ignore[reportPrivateUsage]
        with pytest.raises(errors.ResponseTooLargeError) as info:
            await fut.result()
        polls = sim.rec.requests("retrieve_future")
    assert len(polls) == MAX_BAD_REPLY_RETRIES + 1  # the first poll and 3 re-polls, each reading nothing past the cap
    assert info.value.limit == POLL_CAP and info.value.size == POLL_CAP + 1
    assert fut.exception() is info.value


async def test_one_poll_answer_over_the_cap_is_repolled(autojump_clock: trio.testing.MockClock) -> None:
    config = Config.create(API_KEY, "http://sim.test", env={}, max_response_bytes=POLL_CAP)
    async with sim_stack() as sim, sim.session(config=config) as session:
        sim.rec.script("retrieve_future", Reply(body=b"x" * (10 * POLL_CAP)))
        reply = await submit_create_model(session)
        fut = session._ctx.futures.track(reply, "CreateModel", lambda r: decode(CreateModelResponse, r.content))  # pyright: ignore[reportPrivateUsage]
        result = await fut.result()
        assert result.model_id
        assert len(sim.rec.requests("retrieve_future")) >= 2


async def test_a_poll_that_fails_tls_verification_fails_the_future_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    expired = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    broken = httpx.ConnectError("")
    broken.__cause__ = expired
    async with sim_stack() as sim, sim.session() as session:
        sim.rec.script("retrieve_future", broken)
        reply = await submit_create_model(session)
        fut = session._ctx.futures.track(reply, "CreateModel", lambda r: decode(CreateModelResponse, r.content))  # pyright: ignore[reportPrivateUsage]
        with pytest.raises(errors.TLSError, match="certificate verify failed"):
            await fut.result()
        assert len(sim.rec.requests("retrieve_future")) == 1  # no re-poll: it would fail the same way forever


# -- TLS -------------------------------------------------------------------------------------------------------------


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = json.dumps({"session_id": "s-tls"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def test_an_untrusted_certificate_fails_at_once_and_says_so() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_sim_server(app=ok_app, tls=True, http2=False) as server:
            # The client trusts the system store only: the simulator's private CA is unknown.
            transport = hostile_transport(server.port, scheme="https", retry={"max_retries": 5})
            starts = count(transport, HTTP_REQUEST_START)
            retries = count(transport, RETRY)
            with pytest.raises(errors.TLSError) as info:
                await create_session(transport)
            await transport.aclose()
            # The same server, trusted: the configuration was the only problem.
            trusted = Transport(transport.config, ssl_context=server.client_ssl_context())
            assert (await create_session(trusted)).session_id == "s-tls"
            await trusted.aclose()
    err = info.value
    assert isinstance(err, errors.APIConnectionError)  # callers catching connection errors still catch it
    assert len(starts) == 1 and retries == []  # one attempt: not retried
    message = str(err)
    assert "certificate verify failed" in message and "unable to get local issuer certificate" in message
    assert f"127.0.0.1:{server.port}" in message
    assert isinstance(err.__cause__, httpx.ConnectError)
    assert KEY not in message


async def test_an_untrusted_certificate_fails_the_session_at_once() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_sim_server(tls=True, http2=False) as server:
            config = Config.create(API_KEY, server.base_url, env={}, retry={"max_retries": 5})
            with pytest.raises(errors.TLSError, match="certificate"):
                async with open_session(config=config):
                    pass  # pragma: no cover


async def test_a_certificate_for_another_host_fails_at_once() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("other.example").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with trio.fail_after(TEST_TIMEOUT_S):
        async with hostile_server(html_page, tls=server_ctx) as server:
            config = hostile_transport(server.port, scheme="https", retry={"max_retries": 5}).config
            transport = Transport(config, ssl_context=client_ctx)
            starts = count(transport, HTTP_REQUEST_START)
            with pytest.raises(errors.TLSError) as info:
                await create_session(transport)
            await transport.aclose()
    assert len(starts) == 1 and server.connections == 1
    message = str(info.value)
    assert "certificate verify failed" in message and "mismatch" in message and "127.0.0.1" in message


async def test_https_to_a_plain_http_port_fails_at_once_with_a_hint() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_sim_server(app=ok_app, tls=False) as server:
            transport = hostile_transport(server.port, scheme="https", retry={"max_retries": 5})
            starts = count(transport, HTTP_REQUEST_START)
            with pytest.raises(errors.TLSError) as info:
                await create_session(transport)
            await transport.aclose()
    assert len(starts) == 1
    message = str(info.value)
    assert "TLS handshake" in message and "wrong version number" in message and "http://" in message
    assert isinstance(info.value.__cause__, httpx.ConnectError)


# -- the cause of a retried connection error ------------------------------------------------------------------------


async def test_a_retried_connection_error_keeps_its_cause(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    config = Config.create(api_key=KEY, base_url="http://sim.test", env={}, retry={"max_retries": 2})
    transport = Transport(config, transport_factory=lambda pool: httpx.MockTransport(refuse), rng=random.Random(0))
    with pytest.raises(errors.APIConnectionError) as info:
        await create_session(transport)
    await transport.aclose()
    err = info.value
    assert type(err) is errors.APIConnectionError and len(attempts) == 3
    assert isinstance(err.__cause__, httpx.ConnectError) and "Connection refused" in str(err.__cause__)
    assert "Connection refused" in str(err)
    chain = " ".join(repr(e) for e in (err, err.__cause__, err.__cause__.__cause__, err.__cause__.__context__))
    assert KEY not in chain


# -- the deadline, deterministically (in process, autojump clock) ---------------------------------------------------


async def test_an_answer_that_never_comes_is_cut_at_the_deadline_and_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    arrivals: list[float] = []

    async def stuck_app(scope: Any, receive: Any, send: Any) -> None:
        arrivals.append(trio.current_time())
        await trio.sleep_forever()  # (httpx's timeouts do not apply to an in-process app: only the deadline can help)

    config = Config.create(
        api_key=KEY,
        base_url="http://sim.test",
        env={},
        timeouts={"total_s": 50.0},
        retry={"max_retries": 2, "base_delay_s": 1.0, "max_delay_s": 1.0, "jitter": 0.0},
    )
    transport = Transport(config, transport_factory=lambda pool: httpx.ASGITransport(app=stuck_app))
    with trio.fail_after(10_000):
        start = trio.current_time()
        with pytest.raises(errors.APITimeoutError, match=r"within 50 s"):
            await create_session(transport)
        assert [round(t - start, 6) for t in arrivals] == [0.0, 51.0, 102.0]  # 50 s each, 1 s backoff between
        # A poll (its own 45 s timeout + connect_s 5 s) is cut at 50 s too; a heartbeat (10 s + 5 s) at 15 s.
        for timeout, expected in ((45.0, 50.0), (10.0, 15.0)):
            arrivals.clear()
            with pytest.raises(errors.APITimeoutError, match=rf"within {expected:g} s"):
                await transport.request(PoolKind.FUTURES, "POST", "/x", json={}, timeout=timeout, retry=False)
            assert trio.current_time() - arrivals[0] == pytest.approx(expected)
    await transport.aclose()


# -- how the new errors are classified ------------------------------------------------------------------------------


def test_tls_and_too_large_errors_are_not_retried_and_neutral_for_the_breaker() -> None:
    from tinkex_trio._breaker_verdict import Verdict, classify_exception
    from tinkex_trio._retry import ConnectionFailure, outcome_from_exception

    tls = errors.TLSError("certificate verify failed")
    too_large = errors.ResponseTooLargeError("too large", limit=1024, size=2048)
    for err in (tls, too_large):
        assert outcome_from_exception(err) is None
        assert classify_exception(err) is Verdict.NEUTRAL
    # their neighbours keep their meaning
    assert outcome_from_exception(errors.APIConnectionError("reset")) == ConnectionFailure()
    assert classify_exception(errors.APIConnectionError("reset")) is Verdict.FAILURE
    assert too_large.limit == 1024 and too_large.size == 2048 and too_large.body is None
