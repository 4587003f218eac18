"""What the simulated server saw, counted outside the fault middleware: `SimStats` and its `StatsMiddleware`."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tinkex_trio.sim._asgi import ASGIApp, Message, Receive, Scope, Send
from tinkex_trio.sim._fault_middleware import NO_RESPONSE_KEY
from tinkex_trio.sim._faults import endpoint_name

__all__ = ["SimStats", "StatsMiddleware"]


class SimStats:
    """What the server saw, as the client saw it (counted outside the fault middleware).

    ``requests[(endpoint, status)]`` counts answered requests; status 0 means no response was sent (a reset).
    ``faults[(kind, endpoint)]`` counts injected faults (``reset``, ``error_503``, ``malformed``, ``outage``...).
    ``bytes_in``/``bytes_out`` are HTTP body bytes; ``wire_bytes_in``/``wire_bytes_out`` are TCP payload bytes
    (including TLS). ``connections_opened`` counts accepted connections, ``connections_open`` the live ones,
    ``connections_nodelay`` the accepted ones whose socket had ``TCP_NODELAY`` set (all of them, or small responses
    wait out a Nagle / delayed-ACK stall of ~40 ms).
    """

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.faults: Counter[tuple[str, str]] = Counter()
        self.http_versions: Counter[str] = Counter()
        self.bytes_in = 0
        self.bytes_out = 0
        self.wire_bytes_in = 0
        self.wire_bytes_out = 0
        self.connections_opened = 0
        self.connections_open = 0
        self.connections_nodelay = 0
        self.connection_errors = 0

    def count_fault(self, kind: str, endpoint: str) -> None:
        self.faults[(kind, endpoint)] += 1

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def resets(self) -> int:
        """Connections reset by fault injection (``reset`` and ``reset_after``)."""
        return sum(n for (kind, _), n in self.faults.items() if kind in ("reset", "reset_after"))

    def by_endpoint(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (endpoint, _), n in self.requests.items():
            out[endpoint] += n
        return dict(out)

    def by_status(self) -> dict[int, int]:
        out: Counter[int] = Counter()
        for (_, status), n in self.requests.items():
            out[status] += n
        return dict(out)

    def count(self, endpoint: str, status: int | None = None) -> int:
        """Requests answered on ``endpoint`` (with ``status`` when given)."""
        if status is not None:
            return self.requests[(endpoint, status)]
        return sum(n for (e, _), n in self.requests.items() if e == endpoint)

    def fault_count(self, kind: str, endpoint: str | None = None) -> int:
        return sum(n for (k, e), n in self.faults.items() if k == kind and (endpoint is None or e == endpoint))

    def snapshot(self) -> dict[str, Any]:
        """Plain data (JSON-able)."""
        return {
            "requests": [{"endpoint": e, "status": s, "count": n} for (e, s), n in sorted(self.requests.items())],
            "faults": [{"kind": k, "endpoint": e, "count": n} for (k, e), n in sorted(self.faults.items())],
            "http_versions": dict(self.http_versions),
            "resets": self.resets,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "wire_bytes_in": self.wire_bytes_in,
            "wire_bytes_out": self.wire_bytes_out,
            "connections_opened": self.connections_opened,
            "connections_open": self.connections_open,
            "connections_nodelay": self.connections_nodelay,
            "connection_errors": self.connection_errors,
        }

    def clear(self) -> None:
        """Zero every counter except ``connections_open``."""
        open_now = self.connections_open
        self.__init__()
        self.connections_open = open_now


class StatsMiddleware:
    """ASGI middleware that counts requests by endpoint and status, and body bytes, into a `SimStats`."""

    def __init__(self, app: ASGIApp, stats: SimStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        stats = self.stats
        status = 0

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                stats.bytes_in += len(message.get("body", b""))
            return message

        endpoint = endpoint_name(scope["path"])

        async def counting_send(message: Message) -> None:
            # Counted before the message goes out, so a client that has its answer sees it counted.
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                stats.requests[(endpoint, status)] += 1
            elif message["type"] == "http.response.body":
                stats.bytes_out += len(message.get("body", b""))
            await send(message)

        def no_response() -> None:
            # Called by the fault middleware just before it resets the connection, so the count is there
            # by the time the client sees the reset.
            nonlocal status
            if status == 0:
                status = -1
                stats.requests[(endpoint, 0)] += 1

        scope[NO_RESPONSE_KEY] = no_response
        stats.http_versions[str(scope.get("http_version", "?"))] += 1
        try:
            await self.app(scope, counting_receive, counting_send)
        except Exception:
            if status == 0:  # the server answers 500 for an app that fails before answering
                status = 500
                stats.requests[(endpoint, 500)] += 1
            raise
        finally:
            no_response()
