"""The simulated server's TCP connections: each accepted one is wrapped in a `Connection` (byte counting, a
`Registry` keyed by the peer address, a reset on demand) before TLS and before hypercorn sees it.

ASGI has no "reset" message, so `Connection.abort` sets ``SO_LINGER {on, 0}`` on the socket and closes it, which
makes the kernel send a TCP RST at once (the client sees ECONNRESET), and hypercorn, whose reads and writes then fail
with ``ClosedResourceError``, tears the connection down quietly.
"""

from __future__ import annotations

import contextlib
import socket as stdlib_socket
import ssl
import struct

import trio

from tinkex_trio.sim._stats import SimStats

__all__ = ["Connection", "Listener", "Registry"]

_LINGER_RESET = struct.pack("ii", 1, 0)


class Connection(trio.abc.HalfCloseableStream):
    """An accepted TCP connection: counts bytes, registers itself by peer address, can be reset."""

    def __init__(self, stream: trio.SocketStream, registry: Registry) -> None:
        self._stream = stream
        self._registry = registry
        self.socket = stream.socket  # hypercorn's TCPServer reads .socket (or .transport_stream.socket under TLS)
        peer = stream.socket.getpeername()
        self.peer: tuple[str, int] = (str(peer[0]), int(peer[1]))
        self.aborted = False
        self.sent_total = 0
        self._sent_event = trio.Event()
        registry.add(self)
        if self.socket.getsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY):
            registry.stats.connections_nodelay += 1

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)
        self._registry.stats.wire_bytes_out += len(data)
        self.sent_total += len(data)
        self._sent_event.set()
        self._sent_event = trio.Event()

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._stream.receive_some(max_bytes)
        self._registry.stats.wire_bytes_in += len(data)
        return data

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        self._registry.remove(self)
        await self._stream.aclose()

    async def close_when_sent(self, target: int, limit_s: float) -> None:
        """Wait (at most ``limit_s``) until ``sent_total >= target``, then shut the connection down (FIN)."""
        with trio.move_on_after(limit_s):
            while self.sent_total < target and not self.aborted:
                await self._sent_event.wait()
        with contextlib.suppress(OSError):
            self.socket.shutdown(stdlib_socket.SHUT_RDWR)

    def abort(self) -> None:
        """Reset the connection: SO_LINGER {1, 0} then close, so the kernel sends RST instead of FIN."""
        if self.aborted:
            return
        self.aborted = True
        with contextlib.suppress(OSError):
            self.socket.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, _LINGER_RESET)
        self._registry.remove(self)
        # trio's close() wakes any task blocked on this socket with ClosedResourceError.
        self.socket.close()


class Registry:
    """Live connections by peer address; what `FaultMiddleware` uses to reset the connection of a request."""

    def __init__(self, stats: SimStats) -> None:
        self.stats = stats
        self._by_peer: dict[tuple[str, int], Connection] = {}
        self._empty = trio.Event()
        self._empty.set()

    def add(self, conn: Connection) -> None:
        self._by_peer[conn.peer] = conn
        self.stats.connections_opened += 1
        self.stats.connections_open = len(self._by_peer)
        if self._empty.is_set():
            self._empty = trio.Event()

    def remove(self, conn: Connection) -> None:
        if self._by_peer.get(conn.peer) is conn:
            del self._by_peer[conn.peer]
            self.stats.connections_open = len(self._by_peer)
            if not self._by_peer:
                self._empty.set()

    def get(self, client: tuple[str, int]) -> Connection | None:
        return self._by_peer.get(client)

    def abort(self, client: tuple[str, int] | None) -> bool:
        if client is None:
            return False
        conn = self._by_peer.get(client)
        if conn is None:
            return False
        conn.abort()
        return True

    def bytes_sent(self, client: tuple[str, int] | None) -> int | None:
        conn = None if client is None else self._by_peer.get(client)
        return None if conn is None else conn.sent_total

    async def close_when_sent(self, client: tuple[str, int] | None, target: int, limit_s: float) -> bool:
        conn = None if client is None else self._by_peer.get(client)
        if conn is None:
            return False
        await conn.close_when_sent(target, limit_s)
        return True

    def abort_all(self) -> None:
        for conn in list(self._by_peer.values()):
            conn.abort()

    def __len__(self) -> int:
        return len(self._by_peer)

    async def wait_empty(self) -> None:
        await self._empty.wait()


class Listener(trio.abc.Listener[trio.abc.Stream]):
    """Accepts TCP connections, wraps them in `Connection`, and in TLS when configured."""

    def __init__(self, inner: trio.SocketListener, registry: Registry, ssl_context: ssl.SSLContext | None) -> None:
        self._inner = inner
        self._registry = registry
        self._ssl_context = ssl_context

    async def accept(self) -> trio.abc.Stream:
        for _ in range(1_000_000):
            stream = await self._inner.accept()
            try:
                conn = Connection(stream, self._registry)
            except OSError:  # the peer went away between accept() and getpeername()
                await stream.aclose()
                continue
            if self._ssl_context is None:
                return conn
            return trio.SSLStream(conn, self._ssl_context, server_side=True, https_compatible=True)
        raise RuntimeError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await self._inner.aclose()
