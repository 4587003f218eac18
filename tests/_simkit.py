"""Test kit for the session and futures tests: the simulator in process, behind a recording (and scripting) middleware.

::

    async with sim_stack(SimConfig(...)) as sim:           # the sim app, its fault middleware, a Recorder
        async with sim.session() as session:               # open_session over httpx.ASGITransport
            ...
        sim.rec.requests("retrieve_future")                # every request seen, with time, headers, body, status

``Recorder.script(endpoint, Reply(...), httpx.ConnectError(...), ...)`` answers the next requests to ``endpoint``
with those replies (or raises those exceptions into httpx) before anything reaches the simulator.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from tinkex_trio import types as t
from tinkex_trio._pool_set import PoolKind
from tinkex_trio._session import Session, open_session
from tinkex_trio._telemetry import TelemetryEvent
from tinkex_trio.sim import FaultMiddleware
from tinkex_trio.sim._app import SimApp, create_app
from tinkex_trio.sim._config import ServiceTime, SimConfig

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API_KEY = "tml-test-key-0123456789"
BASE_URL = "http://sim.test"


@dataclass
class Reply:
    """A scripted answer: ``body`` is JSON-able, or raw bytes."""

    status: int = 200
    body: Any = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict[str, str])
    delay: float = 0.0


@dataclass
class Seen:
    """One request as the server side saw it."""

    at: float
    method: str
    endpoint: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None
    scripted: bool = False
    query: str = ""

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Recorder:
    """ASGI middleware: records every request, and answers scripted replies before the wrapped app sees them."""

    def __init__(self, app: ASGIApp, max_requests: int = 2000) -> None:
        self.app = app
        self.max_requests = max_requests
        self.seen: list[Seen] = []
        self._scripts: defaultdict[str, list[Reply | BaseException]] = defaultdict(list)

    def script(self, endpoint: str, *items: Reply | BaseException) -> None:
        self._scripts[endpoint].extend(items)

    def scripted_left(self, endpoint: str) -> int:
        return len(self._scripts[endpoint])

    def requests(self, endpoint: str) -> list[Seen]:
        return [s for s in self.seen if s.endpoint == endpoint]

    def endpoints(self) -> list[str]:
        return [s.endpoint for s in self.seen]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope["path"]
        seen = Seen(trio.current_time(), scope["method"], path.removeprefix("/api/v1/"), headers, body)
        seen.query = scope.get("query_string", b"").decode("latin-1")
        self.seen.append(seen)
        if len(self.seen) > self.max_requests:
            # A client in a tight loop would hang a MockClock test (time never advances): fail it instead.
            raise AssertionError(f"more than {self.max_requests} requests: the client is looping")
        script = self._scripts.get(seen.endpoint)
        if script:
            item = script.pop(0)
            seen.scripted = True
            if isinstance(item, BaseException):
                raise item
            seen.status = item.status
            await send_reply(send, item)
            return

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen.status = message["status"]
            await send(message)

        await self.app(scope, replaying(body, receive), recording_send)


async def read_body(receive: Receive) -> bytes:
    """The whole body of an ASGI request."""
    chunks: list[bytes] = []
    for _ in range(100_000):  # bounded by the body: the last message has more_body=False
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app ``body`` (already read) first, then whatever ``receive`` says."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def send_reply(send: Send, reply: Reply) -> None:
    """Answer with a scripted reply (after its delay)."""
    if reply.delay:
        await trio.sleep(reply.delay)
    payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
    out = [(b"content-type", reply.content_type.encode()), (b"content-length", str(len(payload)).encode())]
    out += [(k.lower().encode(), v.encode()) for k, v in reply.headers.items()]
    await send({"type": "http.response.start", "status": reply.status, "headers": out})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


class Gate:
    """ASGI middleware: for each request, ``decide(path, body)`` returns a Reply to answer instead of ``app``, or
    None to pass the request on (its body replayed)."""

    def __init__(self, app: ASGIApp, decide: Callable[[str, bytes], Reply | None]) -> None:
        self.app = app
        self.decide = decide

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        reply = self.decide(scope["path"], body)
        if reply is not None:
            await send_reply(send, reply)
            return
        await self.app(scope, replaying(body, receive), send)


def sim_config(**overrides: Any) -> SimConfig:
    """A SimConfig for MockClock tests: no worker threads, 1 s service time."""
    config = SimConfig(compute_in_threads=False, service=ServiceTime(base_s=1.0, per_token_s=0.0))
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


@dataclass
class SimStack:
    app: SimApp
    rec: Recorder

    def transport_factory(self, pool: PoolKind) -> httpx.AsyncBaseTransport:
        return httpx.ASGITransport(app=self.rec)

    def session(self, **kwargs: Any) -> Any:
        """``open_session`` against this stack (an async context manager)."""
        return open_session(API_KEY, BASE_URL, transport_factory=self.transport_factory, **kwargs)


@asynccontextmanager
async def sim_stack(config: SimConfig | None = None) -> AsyncGenerator[SimStack]:
    app = create_app(config if config is not None else sim_config())
    rec = Recorder(FaultMiddleware(app, lambda: app.config.faults))
    async with app.running():
        yield SimStack(app, rec)


async def submit_create_model(session: Session, base_model: str = "Qwen/Qwen3-8B") -> t.UntypedAPIFuture:
    """POST create_model (a future-returning call) without a TrainingClient."""
    return await session._transport.request_json(  # pyright: ignore[reportPrivateUsage]
        t.UntypedAPIFuture,
        PoolKind.TRAINING,
        "POST",
        "/api/v1/create_model",
        json=t.CreateModelRequest(
            session_id=session.session_id,
            model_seq_id=session._ctx.next_model_seq_id(),  # pyright: ignore[reportPrivateUsage]
            base_model=base_model,
            lora_config=t.LoraConfig(rank=4),
        ),
    )


def decode_create_model(response: httpx.Response) -> t.CreateModelResponse:
    return t.decode(t.CreateModelResponse, response.content)


def drain(rx: trio.MemoryReceiveChannel[TelemetryEvent]) -> list[TelemetryEvent]:
    events: list[TelemetryEvent] = []
    while True:
        try:
            events.append(rx.receive_nowait())
        except trio.WouldBlock:
            return events


class JsonOnly:
    """ASGI middleware: drops protobuf from retrieve_future's Accept, so the simulator answers JSON."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/retrieve_future"):
            headers = [(k, b"application/json" if k.lower() == b"accept" else v) for k, v in scope["headers"]]
            scope = dict(scope, headers=headers)
        await self.app(scope, receive, send)


PATTERN = [1, 2, 3, 4, 5, 6, 7, 8] * 3


def pattern_batch(n: int = 3) -> list[t.Datum]:
    """``n`` cross-entropy datums of different lengths cut from one repeating pattern."""
    out: list[t.Datum] = []
    for i in range(n):
        tokens = PATTERN[i : i + 9 + 2 * i]
        out.append(t.datum(tokens[:-1], target_tokens=tokens[1:], weights=[1.0] * (len(tokens) - 1)))
    return out
