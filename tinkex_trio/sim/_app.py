"""The simulated Tinker server as a plain ASGI app: routing by method and path, auth, lifespan, JSON/protobuf.

::

    app = create_app(SimConfig(...))      # an ASGI callable; app.config is mutable at run time, app.state the state
    # under hypercorn (trio worker): the lifespan opens the nursery that runs the futures queue
    # in tests with httpx.ASGITransport (no lifespan): optionally ``async with app.running(): ...``; without it the
    # queue runs its lanes as trio system tasks of the current run.

Every endpoint of the protocol (§3, §6) is answered; bad input gets a 4xx with a JSON ``{"detail": ...}`` (400 for
a body that is not JSON or not protobuf, 422 for one that does not fit the schema, 404 for unknown ids and paths,
405 for a known path under another method, 401 for a bad ``X-API-Key``), never a dropped connection. Semantic errors
found while running a request (unknown loss, missing loss input, shape mismatch) fail its future with category
``"user"``.

The handlers live in one module per area (``_session_handlers``, ``_training_handlers``, ``_weights_handlers``,
``_sampling_handlers``, ``_future_handlers``, ``_rest_handlers``, ``_trace_handlers``, ``_admin_handlers``);
`tinkex_trio.sim._routes` says which answers what.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from functools import partial

import trio

from tinkex_trio.sim._asgi import (
    HTTPError,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    error_body,
    read_request,
    send_response,
)
from tinkex_trio.sim._config import SimConfig
from tinkex_trio.sim._core import SimCore
from tinkex_trio.sim._future_handlers import on_future_finished
from tinkex_trio.sim._model_types import SimUserError
from tinkex_trio.sim._routes import Router
from tinkex_trio.sim._state import StateError
from tinkex_trio.sim._trace_handlers import record_span

__all__ = ["SimApp", "create_app"]

logger = logging.getLogger("tinkex_trio.sim")

_ROUTER = Router()
_NO_AUTH = frozenset({"healthz", "trace_exports/{id}"})
"""Endpoints answered without an API key (a trace download URL is a capability, as a signed URL is)."""


class SimApp(SimCore):
    """The ASGI app. ``config`` may be replaced or mutated at run time; ``state`` holds sessions, models, samplers and
    checkpoints; ``queue`` the futures; ``request_counts`` counts requests per endpoint name."""

    def __init__(self, config: SimConfig | None = None) -> None:
        super().__init__(config)
        self.queue.add_completion_listener(partial(on_future_finished, self))
        self.queue.add_completion_listener(partial(record_span, self))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Run the futures queue in a nursery that lives from lifespan startup to shutdown."""
        shutdown = False
        async with trio.open_nursery() as nursery:
            message = await receive()
            if message.get("type") != "lifespan.startup":
                return
            self.queue.attach_nursery(nursery)
            self.lifespan_running = True
            try:
                await send({"type": "lifespan.startup.complete"})
                # Bounded: the lifespan protocol sends exactly one shutdown message (or the server cancels us).
                while not shutdown:
                    message = await receive()
                    shutdown = message.get("type") == "lifespan.shutdown"
            finally:
                # Also when the server cancels the lifespan task: never leave the queue pointing at a dead nursery.
                self.queue.attach_nursery(None)
                self.lifespan_running = False
            nursery.cancel_scope.cancel()
        await send({"type": "lifespan.shutdown.complete"})

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncGenerator[SimApp]:
        """Run the futures queue in a nursery of the caller (for in-process tests without a lifespan)."""
        async with trio.open_nursery() as nursery:
            self.queue.attach_nursery(nursery)
            try:
                yield self
            finally:
                self.queue.attach_nursery(None)
                nursery.cancel_scope.cancel()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = await read_request(scope, receive)
        if request is None:
            return
        response = await self.handle(request) if isinstance(request, Request) else request
        self.status_counts[response.status] += 1
        await send_response(send, response)

    async def handle(self, request: Request) -> Response:
        """Route and run one request; every failure becomes a JSON error response."""
        try:
            # Checkpoints whose TTL ran out are gone (and their bytes freed) before anything can see them.
            self.state.purge_expired_checkpoints()
            route, params = _ROUTER.resolve(request.method, request.path)
            request.params.update(params)
            name = route.endpoint.name
            self.request_counts[name] += 1
            if name not in _NO_AUTH:
                self._check_auth(request)
            return await route.handler(self, request)
        except HTTPError as exc:
            self._consume_rejected_seq(request, exc.detail)
            return Response(exc.status, error_body(exc.detail), headers=exc.headers)
        except StateError as exc:
            self._consume_rejected_seq(request, exc.detail)
            return Response(exc.status, error_body(exc.detail))
        except SimUserError as exc:
            self._consume_rejected_seq(request, str(exc))
            return Response(400, error_body(str(exc)))
        except Exception as exc:
            logger.exception("sim: unexpected error in %s %s", request.method, request.path)
            return Response(500, error_body(f"internal server error: {type(exc).__name__}: {exc}"))

    def _consume_rejected_seq(self, request: Request, detail: str) -> None:
        """A sequenced request rejected with a 4xx still takes its seq_id (the client will not send it again), so
        the model's later requests do not wait for it."""
        model_id = request.params.get("seq_model_id")
        seq = request.params.get("seq_id")
        if model_id is None or seq is None or not self.queue.has_lane(model_id):
            return
        if int(seq) >= 1:
            self.queue.consume_seq(model_id, int(seq), f"rejected: {detail}")

    def _check_auth(self, request: Request) -> None:
        key = request.header("x-api-key")
        if key.startswith("tml-") and len(key) > 4:
            return
        if key.startswith("eyJ") and self.config.jwt_auth_enabled and key.count(".") == 2:
            return
        if not key:
            raise HTTPError(401, "missing X-API-Key header")
        if key.startswith("eyJ"):
            raise HTTPError(401, "invalid token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        raise HTTPError(401, "invalid API key: it must start with 'tml-'")


def create_app(config: SimConfig | None = None) -> SimApp:
    """A new simulated Tinker server (an ASGI app) with its own state."""
    return SimApp(config)
