"""The Tinker protocol's HTTP endpoints (protocol §3, §6): one table shared by the client and the simulator.

Each `Endpoint` is a method and a path template under `API_PREFIX`; a ``{param}`` in the template stands for one
path segment, except ``{checkpoint_id}``, which stands for two (a checkpoint id is ``<kind>/<name>`` and travels
unescaped). The endpoint's ``name`` is the template after the prefix with every parameter written ``{id}``
(``sessions/{id}/finish``): the simulator counts requests and configures faults by it.

`match` maps a concrete path to the endpoint whose template it fits. Pure: no I/O, importable by either side.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = ["API_PREFIX", "ENDPOINTS", "Endpoint", "EndpointMatch", "endpoint", "match"]

API_PREFIX: Final = "/api/v1"

_WIDTH: Final = {"checkpoint_id": 2}
"""Path segments a parameter spans when it is not one."""


def _param(segment: str) -> str | None:
    return segment[1:-1] if segment.startswith("{") and segment.endswith("}") else None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """``method`` and ``path`` (a template such as ``/api/v1/sessions/{session_id}/finish``) of one endpoint."""

    method: str
    path: str
    name: str = field(init=False, compare=False)
    segments: tuple[str, ...] = field(init=False, compare=False, repr=False)
    width: int = field(init=False, compare=False, repr=False)
    """Path segments after the prefix that a concrete path of this endpoint has."""
    literal_count: int = field(init=False, compare=False, repr=False)
    """Segments that are not parameters: the more, the more specific (``sessions/search`` beats
    ``sessions/{session_id}``)."""

    def __post_init__(self) -> None:
        if not self.path.startswith(API_PREFIX + "/"):
            raise ValueError(f"endpoint path {self.path!r} is not under {API_PREFIX}/")
        segments = tuple(self.path[len(API_PREFIX) + 1 :].split("/"))
        name = "/".join("{id}" if _param(s) is not None else s for s in segments)
        width = sum(_WIDTH.get(_param(s) or "", 1) for s in segments)
        object.__setattr__(self, "segments", segments)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "literal_count", sum(1 for s in segments if _param(s) is None))

    def bind(self, parts: Sequence[str]) -> dict[str, str] | None:
        """The parameters of the concrete path ``parts`` (its segments after the prefix), or None if it does not fit.

        A parameter never binds an empty segment.
        """
        if len(parts) != self.width:
            return None
        params: dict[str, str] = {}
        i = 0
        for segment in self.segments:
            name = _param(segment)
            if name is None:
                if parts[i] != segment:
                    return None
                i += 1
                continue
            width = _WIDTH.get(name, 1)
            taken = parts[i : i + width]
            if not all(taken):
                return None
            params[name] = "/".join(taken)
            i += width
        return params


@dataclass(frozen=True, slots=True)
class EndpointMatch:
    endpoint: Endpoint
    params: dict[str, str]


def _static(method: str, *names: str) -> list[Endpoint]:
    return [Endpoint(method, f"{API_PREFIX}/{name}") for name in names]


_RUN: Final = f"{API_PREFIX}/training_runs/{{training_run_id}}"
_CHECKPOINT: Final = f"{_RUN}/checkpoints/{{checkpoint_id}}"

ENDPOINTS: Final[tuple[Endpoint, ...]] = (
    *_static(
        "POST",
        "client/config",
        "client/dynamic_config",
        "auth/token",
        "create_session",
        "session_heartbeat",
        "create_model",
        "get_info",
        "forward_backward",
        "forward",
        "optim_step",
        "save_weights",
        "save_weights_for_sampler",
        "save_weights_external",
        "load_weights",
        "create_sampling_session",
        "join_sampling_session",
        "asample",
        "retrieve_future",
        "retrieve_futures",
        "cancel_future",
        "weights_info",
        "telemetry",
        "sessions/search",
        "copy_weights",
        "create_custom_loss",
    ),
    *_static("GET", "get_server_capabilities", "healthz", "training_runs", "checkpoints", "sessions"),
    *_static("GET", "audit", "billing/usage/events", "billing/usage/checkpoints/current"),
    Endpoint("GET", f"{API_PREFIX}/sessions/{{session_id}}"),
    Endpoint("POST", f"{API_PREFIX}/sessions/{{session_id}}/finish"),
    Endpoint("PUT", f"{API_PREFIX}/sessions/{{session_id}}/project"),
    Endpoint("GET", f"{API_PREFIX}/sessions/{{session_id}}/trace_export"),
    # Served by the simulator only: where its trace export URLs point (the service hands out signed storage URLs).
    Endpoint("GET", f"{API_PREFIX}/trace_exports/{{export_id}}"),
    Endpoint("GET", f"{API_PREFIX}/samplers/{{sampler_id}}"),
    Endpoint("GET", _RUN),
    Endpoint("GET", f"{_RUN}/checkpoints"),
    Endpoint("DELETE", _CHECKPOINT),
    Endpoint("POST", f"{_CHECKPOINT}/publish"),
    Endpoint("DELETE", f"{_CHECKPOINT}/publish"),
    Endpoint("PUT", f"{_CHECKPOINT}/ttl"),
    Endpoint("GET", f"{_CHECKPOINT}/external_weights_urls"),
)
"""Every endpoint of the protocol that the client calls or the simulator serves."""

_BY_KEY: Final = {(e.method, e.name): e for e in ENDPOINTS}


def endpoint(method: str, name: str) -> Endpoint:
    """The endpoint of `ENDPOINTS` called ``name`` (e.g. ``"sessions/{id}/finish"``) for ``method``."""
    try:
        return _BY_KEY[(method, name)]
    except KeyError:
        raise KeyError(f"no endpoint {method} {name!r}") from None


def match(path: str, endpoints: Iterable[Endpoint] = ENDPOINTS) -> EndpointMatch | None:
    """The most specific of ``endpoints`` (any method) whose template the concrete ``path`` fits, with its
    parameters; None for a path outside `API_PREFIX` or that fits none.

    ``path`` is as a server sees it: percent-decoded, without query string, no trailing slash.
    """
    if not path.startswith(API_PREFIX + "/"):
        return None
    parts = path[len(API_PREFIX) + 1 :].split("/")
    best: EndpointMatch | None = None
    for candidate in endpoints:
        if best is not None and candidate.literal_count <= best.endpoint.literal_count:
            continue
        params = candidate.bind(parts)
        if params is not None:
            best = EndpointMatch(candidate, params)
    return best
