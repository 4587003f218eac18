"""The simulator's route table: which handler answers each endpoint of `tinkex_trio._endpoints` that it serves.

`Router.resolve` finds the route of a request: a path that fits no served endpoint is a 404, one that fits an
endpoint served for other methods only is a 405.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from tinkex_trio import _endpoints
from tinkex_trio._endpoints import Endpoint
from tinkex_trio.sim import _admin_handlers as admin
from tinkex_trio.sim import _future_handlers as futures
from tinkex_trio.sim import _rest_handlers as rest
from tinkex_trio.sim import _sampling_handlers as sampling
from tinkex_trio.sim import _session_handlers as session
from tinkex_trio.sim import _trace_handlers as trace
from tinkex_trio.sim import _training_handlers as training
from tinkex_trio.sim import _weights_handlers as weights
from tinkex_trio.sim._asgi import HTTPError, Request, Response
from tinkex_trio.sim._core import SimCore

__all__ = ["ROUTES", "Handler", "Route", "Router"]

Handler = Callable[[SimCore, Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    endpoint: Endpoint
    handler: Handler


def _route(method: str, name: str, handler: Handler) -> Route:
    return Route(_endpoints.endpoint(method, name), handler)


_CHECKPOINT = "training_runs/{id}/checkpoints/{id}"

ROUTES: tuple[Route, ...] = (
    # session and service
    _route("POST", "client/config", session.client_config),
    _route("POST", "client/dynamic_config", session.dynamic_config),
    _route("POST", "auth/token", session.auth_token),
    _route("POST", "create_session", session.create_session),
    _route("POST", "session_heartbeat", session.heartbeat),
    _route("POST", "sessions/{id}/finish", session.finish_session),
    _route("GET", "get_server_capabilities", session.capabilities),
    _route("GET", "healthz", session.healthz),
    _route("POST", "telemetry", session.telemetry),
    # training
    _route("POST", "create_model", training.create_model),
    _route("POST", "get_info", training.get_info),
    _route("POST", "forward_backward", training.forward_backward),
    _route("POST", "forward", training.forward_backward),
    _route("POST", "optim_step", training.optim_step),
    # weights
    _route("POST", "save_weights", weights.save_weights),
    _route("POST", "save_weights_for_sampler", weights.save_weights_for_sampler),
    _route("POST", "save_weights_external", weights.save_weights_external),
    _route("POST", "load_weights", weights.load_weights),
    _route("POST", "weights_info", weights.weights_info),
    _route("POST", "copy_weights", weights.copy_weights),
    # sampling
    _route("POST", "create_sampling_session", sampling.create_sampling_session),
    _route("POST", "join_sampling_session", sampling.join_sampling_session),
    _route("GET", "samplers/{id}", sampling.get_sampler),
    _route("POST", "asample", sampling.asample),
    # futures
    _route("POST", "retrieve_future", futures.retrieve_future),
    _route("POST", "retrieve_futures", futures.retrieve_futures),
    _route("POST", "cancel_future", futures.cancel_future),
    # REST: training runs, checkpoints, sessions
    _route("GET", "training_runs", rest.list_training_runs),
    _route("GET", "training_runs/{id}", rest.get_training_run),
    _route("GET", "training_runs/{id}/checkpoints", rest.list_run_checkpoints),
    _route("GET", "checkpoints", rest.list_user_checkpoints),
    _route("DELETE", _CHECKPOINT, rest.delete_checkpoint),
    _route("POST", f"{_CHECKPOINT}/publish", rest.publish_checkpoint),
    _route("DELETE", f"{_CHECKPOINT}/publish", rest.publish_checkpoint),
    _route("PUT", f"{_CHECKPOINT}/ttl", rest.set_checkpoint_ttl),
    _route("GET", f"{_CHECKPOINT}/external_weights_urls", rest.external_weights_urls),
    _route("GET", "sessions", rest.list_sessions),
    _route("GET", "sessions/{id}", rest.get_session),
    _route("POST", "sessions/search", rest.search_sessions),
    _route("PUT", "sessions/{id}/project", rest.set_session_project),
    _route("GET", "sessions/{id}/trace_export", trace.trace_export),
    _route("GET", "trace_exports/{id}", trace.download_trace),
    # admin reads
    _route("GET", "audit", admin.audit_log),
    _route("GET", "billing/usage/events", admin.billing_usage),
    _route("GET", "billing/usage/checkpoints/current", admin.checkpoint_storage),
)
"""Every endpoint the simulator serves."""


class Router:
    """Finds the route of a request among ``routes``."""

    def __init__(self, routes: Sequence[Route] = ROUTES) -> None:
        self._by_key = {(r.endpoint.method, r.endpoint.path): r for r in routes}
        self._endpoints = tuple(r.endpoint for r in routes)

    def resolve(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route of ``method`` on the concrete ``path`` and the path's parameters; HTTPError 404 or 405."""
        exact = self._by_key.get((method, path))
        if exact is not None:
            return exact, {}
        found = _endpoints.match(path, self._endpoints)
        if found is None:
            raise HTTPError(404, f"not found: {method} {path}")
        route = self._by_key.get((method, found.endpoint.path))
        if route is None:
            raise HTTPError(405, f"method {method} not allowed on {path}")
        return route, found.params
