"""`FaultMiddleware`: the ASGI middleware that injects the faults of a `FaultConfig` in front of the simulator's app.

The order of the checks per request, and what each fault does on the wire, is described in
`tinkex_trio.sim._faults`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

import msgspec
import trio

from tinkex_trio.sim._asgi import ASGIApp, Message, Receive, Scope, Send
from tinkex_trio.sim._faults import FaultConfig, ResolvedFaults, endpoint_name

__all__ = [
    "MALFORMED_BODY",
    "NO_RESPONSE_KEY",
    "ConnectionControl",
    "FaultCounters",
    "FaultMiddleware",
    "SimulatedConnectionReset",
]

HEARTBEAT_ENDPOINT = "session_heartbeat"
NO_RESPONSE_KEY = "tinkex_sim.no_response"
"""Scope key of an optional ``() -> None`` callback, called just before a connection is reset (for statistics)."""
_DISCONNECT_WAIT_S = 10.0
_FLUSH_WAIT_S = 5.0


class SimulatedConnectionReset(ConnectionResetError):
    """Raised by the fault middleware for a reset when it is not served by `open_sim_server` (e.g. httpx's
    ASGITransport), where there is no connection to reset."""


class ConnectionControl(Protocol):
    """What the server gives the middleware so it can act on the connection a request came in on."""

    def abort(self, client: tuple[str, int] | None) -> bool:
        """Reset (RST) the connection whose peer is ``client``; False when there is no such connection."""
        ...

    def bytes_sent(self, client: tuple[str, int] | None) -> int | None:
        """Bytes written so far on the connection whose peer is ``client`` (None when unknown)."""
        ...

    async def close_when_sent(self, client: tuple[str, int] | None, target: int, limit_s: float) -> bool:
        """Once ``bytes_sent`` reaches ``target`` (or after ``limit_s``), close the connection (FIN)."""
        ...


class FaultCounters(Protocol):
    """Where the middleware counts what it injected (`SimStats` implements it)."""

    def count_fault(self, kind: str, endpoint: str) -> None: ...


_Outcome = Literal["pass", "reset", "error", "reset_after", "malformed", "truncate"]

MALFORMED_BODY = b'{"simulated": "malformed response", "value": [1, 2,'

_REASONS = {
    408: "Request Timeout",
    410: "Gone",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class FaultMiddleware:
    """ASGI middleware that injects the faults of ``get_faults()`` into every HTTP request.

    ``connections`` (given by `open_sim_server`) lets it reset the TCP connection of a request; without it a reset
    raises `SimulatedConnectionReset` from the app. ``counters`` receives one `count_fault` per injected fault.
    """

    def __init__(
        self,
        app: ASGIApp,
        get_faults: Callable[[], FaultConfig],
        *,
        connections: ConnectionControl | None = None,
        counters: FaultCounters | None = None,
    ) -> None:
        self.app = app
        self.get_faults = get_faults
        self.connections = connections
        self.counters = counters

    def _count(self, kind: str, endpoint: str) -> None:
        if self.counters is not None:
            self.counters.count_fault(kind, endpoint)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        faults = self.get_faults()
        path: str = scope["path"]
        name = endpoint_name(path)

        remaining = faults.outage_remaining()
        if remaining > 0.0:
            self._count("outage", name)
            rf = faults.resolve(path, name)
            await _drain_request(receive)
            await _send_error(send, 503, rf, "simulated outage")
            return
        if faults.heartbeat_410 and name == HEARTBEAT_ENDPOINT:
            self._count("heartbeat_410", name)
            await _drain_request(receive)
            await _send_json(send, 410, b'{"detail": "session expired (simulated)"}', [])
            return

        rf = faults.resolve(path, name)
        if rf.quiet:
            await self.app(scope, receive, send)
            return

        rng = faults.rng(name)
        u_latency = rng.random()
        u_outcome = rng.random()
        u_body = rng.random()
        if rf.latency is not None and u_latency < rf.latency.rate:
            delay = rf.latency.sample(rng)
            if delay > 0.0:
                self._count("latency", name)
                await trio.sleep(delay)
        body_delay = 0.0
        if rf.body_delay is not None and u_body < rf.body_delay.rate:
            body_delay = rf.body_delay.sample(rng)

        outcome, status = _pick_outcome(rf, u_outcome)
        if outcome == "reset":
            self._count("reset", name)
            await self._reset(scope, receive)
            return
        if outcome == "error":
            self._count(f"error_{status}", name)
            await _drain_request(receive)
            await _send_error(send, status, rf, f"simulated {status} fault")
            return
        if outcome == "pass":
            if body_delay > 0.0:
                self._count("body_delay", name)
                await self.app(scope, receive, _delayed_body_send(send, body_delay))
            else:
                await self.app(scope, receive, send)
            return

        # The remaining outcomes run the app and then spoil its response.
        captured = _CapturedResponse()
        await self.app(scope, receive, captured.send)
        self._count(outcome, name)
        if outcome == "reset_after":
            await self._reset(scope, receive)
            return
        if outcome == "malformed":
            if body_delay > 0.0:
                send = _delayed_body_send(send, body_delay)
            await _send_json(send, 200, MALFORMED_BODY, [])
            return
        await self._truncate(scope, send, captured, body_delay)

    async def _reset(self, scope: Scope, receive: Receive) -> None:
        client = _client_of(scope)
        notify = scope.get(NO_RESPONSE_KEY)
        if callable(notify):
            notify()
        if self.connections is None or not self.connections.abort(client):
            raise SimulatedConnectionReset("simulated connection reset (no connection to reset)")
        # The server notices the closed socket and tells us; wait for that so nothing is answered on its behalf.
        with trio.move_on_after(_DISCONNECT_WAIT_S):
            for _ in range(100_000):
                message = await receive()
                if message["type"] == "http.disconnect":
                    break

    async def _truncate(self, scope: Scope, send: Send, captured: _CapturedResponse, body_delay: float) -> None:
        body = bytes(captured.body)
        sent = body[: len(body) // 2]
        declared = max(len(body), len(sent) + 1)
        headers = [(k, v) for k, v in captured.headers if k.lower() != b"content-length"]
        headers.append((b"content-length", str(declared).encode()))
        client = _client_of(scope)
        conns = self.connections
        before = conns.bytes_sent(client) if conns is not None else None
        await send({"type": "http.response.start", "status": captured.status, "headers": headers})
        if body_delay > 0.0:
            await trio.sleep(body_delay)
        # Part of the body, and the message is left open.
        await send({"type": "http.response.body", "body": sent, "more_body": True})
        if scope.get("http_version") != "2":
            # HTTP/1.1: returning now makes the server close the connection in the middle of the message.
            return
        # HTTP/2: the server would keep the stream open forever; once the partial DATA frame is on the wire,
        # close the connection (FIN). Served without a connection registry: end the stream short instead.
        if conns is not None and before is not None:
            await conns.close_when_sent(client, before + len(sent), _FLUSH_WAIT_S)
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _client_of(scope: Scope) -> tuple[str, int] | None:
    raw = scope.get("client")
    if raw is None:
        return None
    return (str(raw[0]), int(raw[1]))


def _pick_outcome(rf: ResolvedFaults, u: float) -> tuple[_Outcome, int]:
    edge = rf.reset_rate
    if u < edge:
        return "reset", 0
    for status in sorted(rf.error_rates):
        edge += rf.error_rates[status]
        if u < edge:
            return "error", status
    edge += rf.reset_after_rate
    if u < edge:
        return "reset_after", 0
    edge += rf.malformed_rate
    if u < edge:
        return "malformed", 0
    edge += rf.truncate_rate
    if u < edge:
        return "truncate", 0
    return "pass", 0


async def _drain_request(receive: Receive) -> None:
    """Read the request body to its end (bounded), so the connection stays usable for the next request."""
    for _ in range(100_000):
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


async def _send_json(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_error(send: Send, status: int, rf: ResolvedFaults, detail: str) -> None:
    extra: list[tuple[bytes, bytes]] = []
    if rf.retry_after_s is not None:
        extra.append((b"retry-after", _format_seconds(rf.retry_after_s).encode()))
    if rf.retry_after_ms is not None:
        extra.append((b"retry-after-ms", str(rf.retry_after_ms).encode()))
    if rf.should_retry is not None:
        extra.append((b"x-should-retry", b"true" if rf.should_retry else b"false"))
    reason = _REASONS.get(status, "Error")
    body = msgspec.json.encode({"detail": f"{detail}: {status} {reason}"})
    await _send_json(send, status, body, extra)


def _delayed_body_send(send: Send, delay: float) -> Send:
    slept = False

    async def wrapped(message: Message) -> None:
        nonlocal slept
        if message["type"] == "http.response.body" and not slept:
            slept = True
            await trio.sleep(delay)
        await send(message)

    return wrapped


class _CapturedResponse:
    """Collects an app's response instead of sending it."""

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")
