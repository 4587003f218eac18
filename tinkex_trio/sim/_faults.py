"""Fault injection for the simulated Tinker server: what goes wrong, and how often.

`FaultConfig` says what goes wrong and how often; `FaultMiddleware` (in `tinkex_trio.sim._fault_middleware`) is the
ASGI middleware that makes it happen in front of the simulator's app. The configuration is live: the middleware
reads `get_faults()` on every request, so assigning a field (``server.config.faults.error_rates = {503: 0.5}``),
replacing the whole object, or calling `FaultConfig.set_endpoint` changes the behaviour of the very next request.

Per request, in this order:

1. an outage window (`FaultConfig.start_outage`) answers 503 to everything;
2. ``heartbeat_410`` answers 410 to ``session_heartbeat``;
3. ``latency`` delays the request before it reaches the app (``trio.sleep``, so it follows a MockClock);
4. one uniform draw picks at most one outcome, in this order: ``reset_rate`` (the connection is reset before the app
   sees the request), ``error_rates`` (ascending status), ``reset_after_rate`` (the app handles the request, then the
   connection is reset instead of answering), ``malformed_rate`` (200 with a body that is not JSON),
   ``truncate_rate`` (Content-Length promises more bytes than are sent, then the stream ends); otherwise the request
   passes;
5. ``body_delay`` sleeps between the response start and its body (a slow response).

Every draw comes from a `random.Random` per endpoint, seeded from ``seed`` and the endpoint name, so a run with the
same seed and the same requests per endpoint makes the same decisions however endpoints interleave.
"""

from __future__ import annotations

import math
import random
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec
import trio
from msgspec import UNSET, UnsetType

from tinkex_trio._endpoints import API_PREFIX, match

__all__ = [
    "EndpointFaults",
    "FaultConfig",
    "Latency",
    "ResolvedFaults",
    "endpoint_name",
]

LatencyDist = Literal["fixed", "uniform", "exponential"]


def _check_rate(name: str, value: float) -> None:
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")


def _check_delay(name: str, value: float) -> None:
    if not (value >= 0.0) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


class Latency(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A delay distribution, applied to a fraction ``rate`` of requests.

    ``fixed``: always ``seconds``. ``uniform``: uniform in [``low``, ``high``]. ``exponential``: mean ``seconds``,
    capped at ``max_seconds`` when given. Use the constructors `Latency.fixed`, `Latency.uniform`,
    `Latency.exponential`; in TOML, ``latency = {dist = "uniform", low = 0.01, high = 0.05}``.
    """

    dist: LatencyDist = "fixed"
    seconds: float = 0.0
    low: float = 0.0
    high: float = 0.0
    max_seconds: float | None = None
    rate: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def fixed(cls, seconds: float, *, rate: float = 1.0) -> Latency:
        return cls(dist="fixed", seconds=seconds, rate=rate)

    @classmethod
    def uniform(cls, low: float, high: float, *, rate: float = 1.0) -> Latency:
        return cls(dist="uniform", low=low, high=high, rate=rate)

    @classmethod
    def exponential(cls, mean: float, *, max_seconds: float | None = None, rate: float = 1.0) -> Latency:
        return cls(dist="exponential", seconds=mean, max_seconds=max_seconds, rate=rate)

    def validate(self) -> None:
        _check_rate("latency rate", self.rate)
        _check_delay("latency seconds", self.seconds)
        _check_delay("latency low", self.low)
        _check_delay("latency high", self.high)
        if self.max_seconds is not None:
            _check_delay("latency max_seconds", self.max_seconds)
        if self.dist == "uniform" and self.high < self.low:
            raise ValueError(f"uniform latency needs low <= high, got [{self.low}, {self.high}]")

    def sample(self, rng: random.Random) -> float:
        """One delay in seconds (draws from ``rng`` only for the random distributions)."""
        if self.dist == "fixed":
            return self.seconds
        if self.dist == "uniform":
            return rng.uniform(self.low, self.high)
        if self.seconds <= 0.0:
            return 0.0
        value = rng.expovariate(1.0 / self.seconds)
        return value if self.max_seconds is None else min(value, self.max_seconds)


class EndpointFaults(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Overrides for one endpoint. A field left `UNSET` inherits the global value of `FaultConfig`."""

    latency: Latency | UnsetType | None = UNSET
    body_delay: Latency | UnsetType | None = UNSET
    error_rates: dict[int, float] | UnsetType = UNSET
    retry_after_s: float | UnsetType | None = UNSET
    retry_after_ms: int | UnsetType | None = UNSET
    should_retry: bool | UnsetType | None = UNSET
    reset_rate: float | UnsetType = UNSET
    reset_after_rate: float | UnsetType = UNSET
    malformed_rate: float | UnsetType = UNSET
    truncate_rate: float | UnsetType = UNSET

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _validate_request_faults(self)


class _RequestFaults(Protocol):
    """The request faults `EndpointFaults` and `FaultConfig` both hold (the endpoint's may be unset)."""

    @property
    def error_rates(self) -> Mapping[int, float] | UnsetType: ...
    @property
    def reset_rate(self) -> float | UnsetType: ...
    @property
    def reset_after_rate(self) -> float | UnsetType: ...
    @property
    def malformed_rate(self) -> float | UnsetType: ...
    @property
    def truncate_rate(self) -> float | UnsetType: ...
    @property
    def retry_after_s(self) -> float | UnsetType | None: ...
    @property
    def retry_after_ms(self) -> int | UnsetType | None: ...


def _validate_request_faults(faults: _RequestFaults) -> None:
    rates = {
        "reset_rate": faults.reset_rate,
        "reset_after_rate": faults.reset_after_rate,
        "malformed_rate": faults.malformed_rate,
        "truncate_rate": faults.truncate_rate,
    }
    total = 0.0
    for name, value in rates.items():
        if not isinstance(value, UnsetType):
            _check_rate(name, value)
            total += value
    if not isinstance(faults.error_rates, UnsetType):
        for status, rate in faults.error_rates.items():
            if not 400 <= status <= 599:
                raise ValueError(f"error_rates keys must be HTTP error statuses (400-599), got {status!r}")
            _check_rate(f"error_rates[{status}]", rate)
            total += rate
    if total > 1.0 + 1e-9:
        raise ValueError(f"the outcome rates (resets, errors, malformed, truncated) add up to {total:.3f} > 1")
    retry_after_s, retry_after_ms = faults.retry_after_s, faults.retry_after_ms
    if isinstance(retry_after_s, float | int) and not isinstance(retry_after_s, bool):
        _check_delay("retry_after_s", float(retry_after_s))
    if isinstance(retry_after_ms, int) and not isinstance(retry_after_ms, bool) and retry_after_ms < 0:
        raise ValueError(f"retry_after_ms must be >= 0, got {retry_after_ms!r}")


class ResolvedFaults(msgspec.Struct, frozen=True, kw_only=True):
    """The faults that apply to one request: the global values with the endpoint's overrides applied."""

    latency: Latency | None
    body_delay: Latency | None
    error_rates: dict[int, float]
    retry_after_s: float | None
    retry_after_ms: int | None
    should_retry: bool | None
    reset_rate: float
    reset_after_rate: float
    malformed_rate: float
    truncate_rate: float

    def validate(self) -> None:
        total = (
            sum(self.error_rates.values())
            + self.reset_rate
            + self.reset_after_rate
            + self.malformed_rate
            + self.truncate_rate
        )
        if total > 1.0 + 1e-9:
            raise ValueError(f"the outcome rates (resets, errors, malformed, truncated) add up to {total:.3f} > 1")

    @property
    def quiet(self) -> bool:
        """True when nothing can happen to the request (the fast path)."""
        return (
            self.latency is None
            and self.body_delay is None
            and not any(self.error_rates.values())
            and self.reset_rate == 0.0
            and self.reset_after_rate == 0.0
            and self.malformed_rate == 0.0
            and self.truncate_rate == 0.0
        )


class _FaultRuntime:
    """Mutable run-time state of a FaultConfig (not configuration: never encoded or compared)."""

    __slots__ = ("outage_until", "rngs", "rngs_seed")

    def __init__(self) -> None:
        self.rngs: dict[str, random.Random] = {}
        self.rngs_seed: int | None = None
        self.outage_until: float | None = None


class FaultConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, dict=True):
    """What goes wrong, and how often. Every rate is a probability per request, in [0, 1].

    Request faults (global defaults, overridable per endpoint through ``endpoints``):

    - ``latency``: a `Latency` slept before the app sees the request.
    - ``body_delay``: a `Latency` slept between the response start and its body (a slow response).
    - ``error_rates``: ``{status: rate}``, e.g. ``{500: .1, 502: .1, 503: .1, 408: .1, 429: .1}``. The injected
      response has a JSON body ``{"detail": ...}`` and is answered without calling the app.
    - ``retry_after_s`` / ``retry_after_ms``: when set, every injected error response (and the outage 503) carries
      ``Retry-After: <seconds>`` / ``retry-after-ms: <ms>``.
    - ``should_retry``: when set, injected error responses carry ``x-should-retry: true|false``.
    - ``reset_rate``: the TCP connection is reset (RST) before the app sees the request.
    - ``reset_after_rate``: the app handles the request, then the connection is reset instead of answering.
    - ``malformed_rate``: the app handles the request, the client gets 200 with a body that is not valid JSON.
    - ``truncate_rate``: the app handles the request, the client gets its status and headers with a Content-Length
      larger than the (half) body that follows, then the connection is closed (FIN) mid-message.

    Resets and truncations act on the TCP connection (served by `open_sim_server`), so over HTTP/2 they also end
    the other requests in flight on that connection, as a real reset would.

    ``endpoints`` maps a key to `EndpointFaults`: a key starting with ``/`` matches an exact path (e.g.
    ``/api/v1/asample``), any other key matches an endpoint name as given by `endpoint_name` (e.g.
    ``retrieve_future``, ``sessions/{id}/finish``).

    Global only: ``heartbeat_410`` (``session_heartbeat`` answers 410 Gone), the outage window (`start_outage`),
    and two knobs read by the app itself: ``future_failure_rate`` (a future completes with an error of category
    ``"server"``) and ``paused_rate_limit`` (try_again answers report ``queue_state: "paused_rate_limit"``).

    ``seed`` makes the draws reproducible (`rng`); ``None`` seeds from the OS.
    """

    seed: int | None = None
    latency: Latency | None = None
    body_delay: Latency | None = None
    error_rates: dict[int, float] = msgspec.field(default_factory=dict[int, float])
    retry_after_s: float | None = None
    retry_after_ms: int | None = None
    should_retry: bool | None = None
    reset_rate: float = 0.0
    reset_after_rate: float = 0.0
    malformed_rate: float = 0.0
    truncate_rate: float = 0.0
    endpoints: dict[str, EndpointFaults] = msgspec.field(default_factory=dict[str, EndpointFaults])
    heartbeat_410: bool = False
    future_failure_rate: float = 0.0
    paused_rate_limit: bool = False

    def __post_init__(self) -> None:
        self.validate()

    # -- loading ---------------------------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FaultConfig:
        """Build from plain data (as parsed from TOML or JSON). Status keys may be strings (``{"503": 0.1}``)."""
        try:
            return msgspec.convert(dict(data), cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid fault configuration: {exc}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> FaultConfig:
        """Load from a TOML file; the settings may sit at the top level or under a ``[faults]`` table."""
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        faults = data.get("faults", data)
        if not isinstance(faults, dict):
            raise ValueError(f"{path}: [faults] must be a table")
        return cls.from_mapping(faults)  # pyright: ignore[reportUnknownArgumentType]

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain data (what `from_mapping` accepts)."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out

    # -- validation and run-time edits ------------------------------------------------------------------------

    def validate(self) -> None:
        """Check every rate and delay; raises ValueError. Called on construction and by `set_endpoint`."""
        _validate_request_faults(self)
        _check_rate("future_failure_rate", self.future_failure_rate)
        for key, override in self.endpoints.items():
            try:
                override.validate()
                self.resolve(key if key.startswith("/") else f"{API_PREFIX}/{key}", key).validate()
            except ValueError as exc:
                raise ValueError(f"endpoints[{key!r}]: {exc}") from None

    def set_endpoint(self, key: str, faults: EndpointFaults | None = None, **overrides: Any) -> EndpointFaults:
        """Set (replace) the overrides of one endpoint, from an `EndpointFaults` and/or keyword fields."""
        base: dict[str, Any] = msgspec.to_builtins(faults) if faults is not None else {}
        merged = msgspec.convert({**base, **overrides}, EndpointFaults, strict=False) if overrides else faults
        if merged is None:
            merged = EndpointFaults()
        self.endpoints[key] = merged
        try:
            self.validate()
        except ValueError:
            del self.endpoints[key]
            raise
        return merged

    def clear_endpoint(self, key: str) -> None:
        self.endpoints.pop(key, None)

    def clear(self) -> None:
        """Turn every fault off (keeps ``seed``; ends any outage)."""
        seed = self.seed
        fresh = FaultConfig(seed=seed)
        for field in msgspec.structs.fields(FaultConfig):
            setattr(self, field.name, getattr(fresh, field.name))
        self._runtime().outage_until = None

    # -- resolution ---------------------------------------------------------------------------------------------

    def resolve(self, path: str, name: str | None = None) -> ResolvedFaults:
        """The faults for a request to ``path`` (endpoint ``name``, computed from the path when not given)."""
        if name is None:
            name = endpoint_name(path)
        override = self.endpoints.get(path) or self.endpoints.get(name)
        values: dict[str, Any] = {field: getattr(self, field) for field in ResolvedFaults.__struct_fields__}
        if override is not None:
            for field in ResolvedFaults.__struct_fields__:
                value = getattr(override, field)
                if not isinstance(value, UnsetType):
                    values[field] = value
        return ResolvedFaults(**values)

    # -- randomness -------------------------------------------------------------------------------------------

    def _runtime(self) -> _FaultRuntime:
        try:
            return self._rt
        except AttributeError:
            rt = _FaultRuntime()
            self._rt = rt
            return rt

    def rng(self, stream: str) -> random.Random:
        """The random stream named ``stream`` (one per endpoint for request faults; the app may use its own).

        Seeded from ``(seed, stream)``; changing ``seed`` restarts every stream.
        """
        rt = self._runtime()
        if rt.rngs_seed != self.seed:
            rt.rngs.clear()
            rt.rngs_seed = self.seed
        rng = rt.rngs.get(stream)
        if rng is None:
            rng = random.Random(f"{self.seed}/{stream}") if self.seed is not None else random.Random()
            rt.rngs[stream] = rng
        return rng

    def chance(self, probability: float, stream: str = "app") -> bool:
        """True with the given probability, drawn from `rng` (``stream``). Never draws when it is 0 or 1."""
        if probability <= 0.0:
            return False
        if probability >= 1.0:
            return True
        return self.rng(stream).random() < probability

    def future_fails(self) -> bool:
        """For the app: should the future being completed fail (category ``"server"``)? Uses ``future_failure_rate``."""
        return self.chance(self.future_failure_rate, "future_failure")

    # -- outage window ------------------------------------------------------------------------------------------

    def start_outage(self, duration_s: float, *, now: float | None = None) -> None:
        """Every request fails with 503 for ``duration_s`` seconds from now (trio's clock).

        ``now`` defaults to ``trio.current_time()``, so call it from trio code or pass ``now``.
        """
        _check_delay("outage duration", duration_s)
        start = trio.current_time() if now is None else now
        self._runtime().outage_until = start + duration_s

    def end_outage(self) -> None:
        self._runtime().outage_until = None

    def outage_remaining(self, now: float | None = None) -> float:
        """Seconds left in the outage window (0 when there is none)."""
        until = self._runtime().outage_until
        if until is None:
            return 0.0
        current = trio.current_time() if now is None else now
        return max(0.0, until - current)


# -- endpoint names ---------------------------------------------------------------------------------------------

_CHECKPOINT_KINDS = frozenset({"weights", "sampler_weights", "external_weights"})
_ID_AFTER = frozenset({"sessions", "samplers", "training_runs", "checkpoints"})
_NOT_IDS = frozenset({"search"})
_NAME_CACHE_MAX = 4096
_name_cache: dict[str, str] = {}
_SLASHES = re.compile(r"/+")
_PREFIX = API_PREFIX + "/"


def endpoint_name(path: str) -> str:
    """The endpoint name of a request path: the part after ``/api/v1/``, with ids replaced by ``{id}``.

    ``/api/v1/retrieve_future`` → ``retrieve_future``; ``/api/v1/sessions/abc/finish`` → ``sessions/{id}/finish``;
    ``/api/v1/training_runs/r1/checkpoints/weights/x/publish`` → ``training_runs/{id}/checkpoints/{id}/publish``.
    A path of the protocol's table (`tinkex_trio._endpoints`) gets its endpoint's name; any other path under
    ``/api/v1/`` has the segment after a collection replaced, so that names stay few; paths outside ``/api/v1/``
    are returned unchanged.
    """
    cached = _name_cache.get(path)
    if cached is not None:
        return cached
    if not path.startswith(_PREFIX):
        return path
    parts = [p for p in _SLASHES.split(path[len(_PREFIX) :]) if p]
    found = match(_PREFIX + "/".join(parts))
    name = found.endpoint.name if found is not None else _generic_name(parts)
    if len(_name_cache) < _NAME_CACHE_MAX:
        _name_cache[path] = name
    return name


def _generic_name(parts: list[str]) -> str:
    out: list[str] = []
    i = 0
    while i < len(parts):
        part = parts[i]
        out.append(part)
        i += 1
        if part in _ID_AFTER and i < len(parts) and parts[i] not in _NOT_IDS:
            # A checkpoint id is "<kind>/<name>" and travels unescaped.
            i += 2 if part == "checkpoints" and parts[i] in _CHECKPOINT_KINDS and i + 1 < len(parts) else 1
            out.append("{id}")
    return "/".join(out)
