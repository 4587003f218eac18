"""The lean HTTP/1.1 lane (tinkex_trio._h11) and the transport's use of it, on real loopback sockets (127.0.0.1).

A tiny raw trio server per test answers each request with what the test scripts (bytes, a close, silence). Timeouts
run under the autojump clock: a server that never answers leaves every task blocked, and the clock jumps to the read
deadline.
"""

from __future__ import annotations

import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest
import trio
import trio.testing
import trustme

from tinkex_trio import errors
from tinkex_trio._config import Config
from tinkex_trio._h11 import BodyTooLarge, H11Lane
from tinkex_trio._pool_set import PoolKind
from tinkex_trio._transport import Transport

KEY = "tml-h11-lane-key-0123456789abcdef"
LIMIT = 64 * 1024

Answer = Callable[[trio.SocketStream, bytes, "Server"], Awaitable[bool]]
"""Answers one request (its head and body bytes); returns whether to keep the connection open for the next one."""


@dataclass
class Server:
    port: int
    connections: int = 0
    requests: list[bytes] = field(default_factory=list[bytes])
    closed_by_peer: int = 0


async def _read_request(stream: trio.SocketStream, buffer: bytearray) -> bytes | None:
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buffer += data
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(buffer) < end + length:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buffer += data
    request = bytes(buffer[: end + length])
    del buffer[: end + length]
    return request


@asynccontextmanager
async def serve(answer: Answer) -> AsyncIterator[Server]:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    server = Server(port=listener.socket.getsockname()[1])

    async def handle(stream: trio.SocketStream) -> None:
        server.connections += 1
        buffer = bytearray()
        try:
            while True:
                request = await _read_request(stream, buffer)
                if request is None:
                    server.closed_by_peer += 1
                    return
                server.requests.append(request)
                if not await answer(stream, request, server):
                    return
        except trio.BrokenResourceError:
            server.closed_by_peer += 1
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, [listener])
        yield server
        nursery.cancel_scope.cancel()


def ok_answer(body: bytes = b'{"ok": true}', extra: str = "") -> Answer:
    async def answer(stream: trio.SocketStream, request: bytes, server: Server) -> bool:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        await stream.send_all(head.encode() + body)
        return "connection: close" not in extra.lower()

    return answer


def lane(port: int, *, ssl_context: ssl.SSLContext | None = None, keepalive: float = 5.0) -> H11Lane:
    return H11Lane("127.0.0.1", port, ssl_context=ssl_context, keepalive_expiry_s=keepalive)


def request(
    port: int, path: str = "/x", *, body: bytes | None = None, read: float = 5.0, scheme: str = "http"
) -> httpx.Request:
    return httpx.Request(
        "POST" if body is not None else "GET",
        f"{scheme}://127.0.0.1:{port}{path}",
        content=body,
        extensions={"timeout": httpx.Timeout(read, connect=2.0).as_dict()},
    )


async def test_keep_alive_reuses_one_connection() -> None:
    async with serve(ok_answer()) as server:
        one = lane(server.port)
        for i in range(3):
            response = await one.send(request(server.port, body=b"x" * i * 100_000 if i else None), LIMIT)
            assert response.status_code == 200 and response.json() == {"ok": True}
            assert one.connected
        await one.aclose()
    assert server.connections == 1 and len(server.requests) == 3
    assert server.requests[2].endswith(b"x" * 200_000)  # a large body goes out whole (in its own send)


async def test_connection_close_and_a_server_closed_idle_connection_reconnect() -> None:
    async def close_after_each(stream: trio.SocketStream, request: bytes, server: Server) -> bool:
        # No Connection: close header: the client sees the close only when it next looks at the idle socket.
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        return False

    async with serve(close_after_each) as server:
        one = lane(server.port)
        for _ in range(3):
            await one.send(request(server.port), LIMIT)
            await trio.testing.wait_all_tasks_blocked()  # the server has closed its end
        await one.aclose()
    assert server.connections == 3 and len(server.requests) == 3

    async with serve(ok_answer(extra="Connection: close\r\n")) as server:
        one = lane(server.port)
        await one.send(request(server.port), LIMIT)
        assert not one.connected  # the answer said close: dropped at once
        await one.send(request(server.port), LIMIT)
        await one.aclose()
    assert server.connections == 2


async def test_an_idle_connection_past_keepalive_expiry_is_not_reused(autojump_clock: trio.testing.MockClock) -> None:
    async with serve(ok_answer()) as server:
        one = lane(server.port, keepalive=5.0)
        await one.send(request(server.port), LIMIT)
        await trio.sleep(6.0)
        await one.send(request(server.port), LIMIT)
        await one.aclose()
    assert server.connections == 2


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",  # truncated body
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",  # chunked, cut before the end
        b"",  # closed without an answer
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",  # not HTTP
    ],
    ids=["truncated", "chunked-cut", "no-answer", "garbage"],
)
async def test_a_broken_answer_is_an_httpx_error_and_drops_the_connection(reply: bytes) -> None:
    async def broken(stream: trio.SocketStream, request: bytes, server: Server) -> bool:
        await stream.send_all(reply)
        return False

    async with serve(broken) as server:
        one = lane(server.port)
        with pytest.raises(httpx.RemoteProtocolError):
            await one.send(request(server.port), LIMIT)
        assert not one.connected


async def test_a_silent_server_is_a_read_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async def silent(stream: trio.SocketStream, request: bytes, server: Server) -> bool:
        await trio.sleep_forever()
        return False

    async with serve(silent) as server:
        one = lane(server.port)
        started = trio.current_time()
        with pytest.raises(httpx.ReadTimeout):
            await one.send(request(server.port, read=7.0), LIMIT)
        assert trio.current_time() - started == pytest.approx(7.0)
        assert not one.connected


async def test_a_refused_connection_is_a_connect_error() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    with pytest.raises(httpx.ConnectError):
        await lane(port).send(request(port), LIMIT)


async def test_bodies_over_the_limit() -> None:
    async def chunked_endless(stream: trio.SocketStream, request: bytes, server: Server) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"a" * 16384
        for _ in range(64):
            await stream.send_all(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        return False

    async with serve(chunked_endless) as server:
        one = lane(server.port)
        with pytest.raises(BodyTooLarge) as info:
            await one.send(request(server.port), LIMIT)
        assert not info.value.declared and LIMIT < info.value.size <= LIMIT + 16384
        assert info.value.head.startswith(b"aaaa") and len(info.value.head) <= 2048
        assert not one.connected

    async with serve(ok_answer(b"z" * (LIMIT + 1))) as server:
        with pytest.raises(BodyTooLarge) as info:
            await lane(server.port).send(request(server.port), LIMIT)
        assert info.value.declared and info.value.size == LIMIT + 1


async def test_gzip_is_decoded_and_a_gzip_bomb_is_cut_at_the_limit() -> None:
    small = gzip.compress(b'{"ok": true}')
    bomb = gzip.compress(b"\0" * (100 * LIMIT))  # ~6 MiB of zeros in a few KiB

    async with serve(ok_answer(small, "Content-Encoding: gzip\r\n")) as server:
        one = lane(server.port)
        response = await one.send(request(server.port), LIMIT)
        await one.aclose()
        assert response.json() == {"ok": True}
        assert "content-encoding" not in response.headers

    async with serve(ok_answer(bomb, "Content-Encoding: gzip\r\n")) as server:
        with pytest.raises(BodyTooLarge) as info:
            await lane(server.port).send(request(server.port), LIMIT)
        assert info.value.size == LIMIT + 1  # decoding stopped one byte past the limit


async def test_cancellation_mid_request_leaves_no_half_used_connection() -> None:
    answered = trio.Event()

    async def slow_then_ok(stream: trio.SocketStream, request: bytes, server: Server) -> bool:
        if len(server.requests) == 1:
            answered.set()
            await trio.sleep_forever()  # the first request is never answered
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        return True

    async with serve(slow_then_ok) as server:
        one = lane(server.port)
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(one.send, request(server.port), LIMIT)
                await answered.wait()
                scope.cancel()
        assert scope.cancelled_caught
        assert not one.connected  # closed at once, synchronously
        response = await one.send(request(server.port), LIMIT)  # a fresh connection
        await one.aclose()
        assert response.status_code == 200
        await trio.testing.wait_all_tasks_blocked()
    assert server.connections == 2


# -- TLS ------------------------------------------------------------------------------------------------------------


@asynccontextmanager
async def serve_tls(ca: trustme.CA) -> AsyncIterator[Server]:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    server = Server(port=listener.socket.getsockname()[1])

    async def handle(tcp: trio.SocketStream) -> None:
        server.connections += 1
        stream = trio.SSLStream(tcp, server_ctx, server_side=True)
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                server.requests.append(data)
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        except trio.BrokenResourceError:
            server.closed_by_peer += 1
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, [listener])
        yield server
        nursery.cancel_scope.cancel()


async def test_tls_keep_alive_and_an_untrusted_certificate() -> None:
    ca = trustme.CA()
    async with serve_tls(ca) as server:
        trusted = ssl.create_default_context()
        ca.configure_trust(trusted)
        one = lane(server.port, ssl_context=trusted)
        for _ in range(2):
            response = await one.send(request(server.port, scheme="https"), LIMIT)
            assert response.json() == {}
        await one.aclose()
        assert server.connections == 1

        with pytest.raises(httpx.ConnectError) as info:
            await lane(server.port, ssl_context=ssl.create_default_context()).send(
                request(server.port, scheme="https"), LIMIT
            )
        chain: list[BaseException] = []
        link: BaseException | None = info.value
        while link is not None:
            chain.append(link)
            link = link.__cause__ or link.__context__
        assert any(isinstance(x, ssl.SSLCertVerificationError) for x in chain)


# -- the transport on the lean path ----------------------------------------------------------------------------------


def transport(port: int, **overrides: object) -> Transport:
    config = Config.create(
        api_key=KEY,
        base_url=f"http://127.0.0.1:{port}",
        env={},
        max_response_bytes=LIMIT,
        retry={"max_retries": 1, "base_delay_s": 0.01, "max_delay_s": 0.01},
        **overrides,  # pyright: ignore[reportArgumentType]
    )
    return Transport(config)


async def test_the_transport_follows_a_redirect_and_keeps_the_key_on_its_origin() -> None:
    async with serve(ok_answer(b'{"elsewhere": true}')) as other:

        async def redirect(stream: trio.SocketStream, request: bytes, server: Server) -> bool:
            if request.startswith(b"POST /api/v1/start"):
                target = "/api/v1/moved"
            elif request.startswith(b"POST /api/v1/moved"):
                target = f"http://127.0.0.1:{other.port}/collect"
            else:
                raise AssertionError(request)
            await stream.send_all(
                f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n".encode()
            )
            return True

        async with serve(redirect) as server:
            t = transport(server.port)
            response = await t.request(PoolKind.SESSION, "POST", "/api/v1/start", json={"a": 1})
            await t.aclose()
    assert response.json() == {"elsewhere": True}
    first, moved = server.requests
    (collected,) = other.requests
    assert KEY.encode() in first and KEY.encode() in moved
    assert KEY.encode() not in collected
    assert collected.endswith(b'{"a":1}')  # 307: the same method and body


async def test_the_transport_maps_lean_failures_to_its_errors(autojump_clock: trio.testing.MockClock) -> None:
    async def huge(stream: trio.SocketStream, request: bytes, server: Server) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\nX-Request-Id: r-1\r\n\r\n")
        return False

    async with serve(huge) as server:
        t = transport(server.port)
        with pytest.raises(errors.ResponseTooLargeError, match="declares 1000000000 bytes") as info:
            await t.request(PoolKind.SESSION, "GET", "/api/v1/healthz")
        assert info.value.request_id == "r-1" and len(server.requests) == 1  # not retried
        await t.aclose()

    async def silent(stream: trio.SocketStream, request: bytes, server: Server) -> bool:
        await trio.sleep_forever()
        return False

    async with serve(silent) as server:
        t = transport(server.port, timeouts={"request_s": 3.0, "total_s": 100.0})
        with pytest.raises(errors.APITimeoutError):
            await t.request(PoolKind.SESSION, "GET", "/api/v1/healthz")
        assert len(server.requests) == 2  # retried once, as any timeout
        await t.aclose()


async def test_a_proxy_in_the_environment_sends_through_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    # The proxy (this server) receives the request in absolute form: httpx honoured HTTP_PROXY, as before.
    async with serve(ok_answer()) as proxy:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        t = transport(1)  # the base URL's port is never connected to
        await t.request(PoolKind.SESSION, "GET", "/api/v1/healthz")
        await t.aclose()
    assert proxy.requests[0].startswith(b"GET http://127.0.0.1:1/api/v1/healthz HTTP/1.1")
