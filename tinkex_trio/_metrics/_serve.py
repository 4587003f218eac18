"""Serve a metrics store's Prometheus text on ``/metrics`` from a trio program, :func:`serve_metrics`::

    async with trio.open_nursery() as nursery:
        port = await nursery.start(tinkex_trio.serve_metrics, session.metrics)   # http://127.0.0.1:{port}/metrics

A tiny HTTP/1.1 server: trio's ``serve_tcp`` and h11 (installed with httpx) for the protocol.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final

import h11
import trio

from tinkex_trio._metrics._store import Metrics

__all__ = ["CONTENT_TYPE", "serve_metrics"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_IDLE_S: Final = 30.0
"""A connection gets this long to send each request (headers and body), then it is closed."""
_MAX_HEADERS: Final = 16 * 1024
_RECEIVE: Final = 16 * 1024


async def serve_metrics(
    metrics: Metrics,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``metrics.to_prometheus()`` at ``GET /metrics`` (and ``HEAD``) on ``host:port`` until cancelled;
    any other path is 404, another method 405. ``port=0`` picks a free port: ``await nursery.start(serve_metrics,
    metrics)`` returns the bound one.

    The text is rendered in a worker thread (``trio.to_thread.run_sync``, one at a time), so a large store does not
    block the event loop; if the store is reset while a render reads it, that scrape is rendered on the loop instead.
    Keep-alive connections are served; one idle for 30 s is closed.
    """
    limiter = trio.CapacityLimiter(1)

    async def render() -> bytes:
        try:
            text = await trio.to_thread.run_sync(metrics.to_prometheus, limiter=limiter)
        except (RuntimeError, KeyError):  # the store changed under the thread (a reset): read it here
            text = metrics.to_prometheus()
        return text.encode()

    async with trio.open_nursery() as nursery:
        serve = partial(trio.serve_tcp, partial(_serve_connection, render), port, host=host)
        listeners: list[trio.SocketListener] = await nursery.start(serve)
        bound: int = listeners[0].socket.getsockname()[1]
        task_status.started(bound)


_Next = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> _Next:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(_RECEIVE))


def _response(status: int, body: bytes, headers: list[tuple[str, str]]) -> tuple[h11.Response, bytes]:
    headers = [*headers, ("content-length", str(len(body)))]
    return h11.Response(status_code=status, headers=headers), body


async def _serve_connection(render: Callable[[], Awaitable[bytes]], stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEADERS)
    try:
        while True:
            request: object = None
            with trio.move_on_after(_IDLE_S):
                request = await _next_event(conn, stream)
                if not isinstance(request, h11.Request):
                    return  # closed, or a protocol state that ends the connection
                while not isinstance(await _next_event(conn, stream), h11.EndOfMessage):
                    pass  # a body (ignored)
            if not isinstance(request, h11.Request) or conn.their_state is not h11.DONE:
                return  # timed out
            response, body = await _route(request, render)
            await stream.send_all(conn.send(response) or b"")
            if request.method != b"HEAD":
                await stream.send_all(conn.send(h11.Data(data=body)) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            response, body = _response(exc.error_status_hint, b"bad request\n", [("connection", "close")])
            try:
                await stream.send_all((conn.send(response) or b"") + (conn.send(h11.Data(data=body)) or b""))
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
                pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
    finally:
        await stream.aclose()


async def _route(request: h11.Request, render: Callable[[], Awaitable[bytes]]) -> tuple[h11.Response, bytes]:
    path = request.target.partition(b"?")[0]
    if path != b"/metrics":
        return _response(404, b"not found: try /metrics\n", [("content-type", "text/plain; charset=utf-8")])
    if request.method not in (b"GET", b"HEAD"):
        return _response(405, b"method not allowed\n", [("allow", "GET, HEAD"), ("content-type", "text/plain")])
    return _response(200, await render(), [("content-type", CONTENT_TYPE)])
