"""Configuration: :class:`Config` and its sections, from arguments, environment variables, a TOML file and defaults.

Every class here is a frozen msgspec Struct whose fields declare their constraints (``msgspec.Meta``), validated when
it is built: a bad value raises :class:`~tinkex_trio.errors.ConfigError` naming the exact key and the constraint
(``retry.max_retries: expected `int` >= 0, got -1``). Layers are merged as plain data and converted once with
``msgspec.convert``, which names the path of a bad value; a Struct built directly checks its fields the same way.

Precedence, highest first:

* :meth:`Config.create`: keyword arguments > environment > defaults.
* :meth:`Config.from_toml`: keyword arguments > the file > environment > defaults (the file is an explicit
  choice of the caller, so it beats the ambient environment).

Environment variables (an empty value counts as unset):

=========================  ==============================================================
``TINKER_API_KEY``         the API key (``tml-...`` or a JWT)
``TINKER_BASE_URL``        the base URL (a trailing ``/`` is stripped)
``TINKER_PROJECT_ID``      default project id for new sessions
``TINKER_TAGS``            comma-separated session tags, order kept, duplicates dropped
``TINKER_TELEMETRY``       ``1|true|yes|on`` keeps telemetry on; ``0|false|no|off`` (or anything else) turns it off
``TINKEX_CIRCUIT_BREAKER`` ``on|off`` (also ``1|0|true|false|yes|no``)
``TINKEX_TIMEOUT_TOTAL_S`` ``timeouts.total_s``: the deadline of one attempt, in seconds
``TINKEX_MAX_RESPONSE_BYTES`` ``max_response_bytes``: the largest response body read, in bytes
=========================  ==============================================================

The API key never appears in a repr, a str or an error message: ``Config.__repr__`` shows
``api_key='tml-…redacted'``, and :attr:`Config.key_fingerprint` (a sha256 prefix) identifies a key in registries.
Note that ``msgspec.structs.asdict(config)`` and ``msgspec.json.encode(config)`` do include the key: they are explicit
requests for the raw data.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import msgspec

from tinkex_trio._api_key import key_fingerprint, redact_key, validate_api_key
from tinkex_trio._config_check import Checked, config_error, shown
from tinkex_trio.errors import ConfigError

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "BatchingConfig",
    "CircuitBreakerConfig",
    "Config",
    "MetricsConfig",
    "PoolLimits",
    "PoolsConfig",
    "RetryConfig",
    "TimeoutsConfig",
    "key_fingerprint",
    "redact_key",
    "validate_api_key",
]

DEFAULT_BASE_URL = "https://tinker.thinkingmachines.dev/services/tinker-prod"
DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024 * 1024
"""``Config.max_response_bytes`` by default: 256 MiB, well above any answer of the service (the largest are sample and
forward results), well below what would hurt a training host."""

WireFormat = Literal["proto", "json"]

_FALSE_WORDS = frozenset({"0", "false", "no", "off"})
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


_PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
_NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
_PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
_NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
_Rate = Annotated[float, msgspec.Meta(gt=0, le=1)]
"""A share of calls, in (0, 1]."""
_NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]
_HeaderText = Annotated[str, msgspec.Meta(pattern=r"^[ -~]+\Z")]
"""Text sent in an HTTP header: printable ASCII (a CR or LF would split the header; httpx refuses the rest)."""


# --------------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------------


class RetryConfig(Checked, frozen=True, kw_only=True):
    """HTTP-layer retries (protocol §7, layer 1): which attempts are retried and how long to wait.

    Attributes:
        max_retries: retries after the first attempt (0 disables retrying).
        base_delay_s: backoff for retry ``k`` is ``min(base_delay_s * 2**k, max_delay_s)``...
        max_delay_s: ...capped here (at least ``base_delay_s``)...
        jitter: ...times ``1 - jitter * U[0, 1)``.
        retry_budget_s: no retry is scheduled that would end more than this long after the first attempt.
        retry_after_max_s: a server's ``retry-after(-ms)`` is honoured when ``0 <= value <= retry_after_max_s``.
    """

    _key_prefix: ClassVar[str] = "retry."

    max_retries: _NonNegativeInt = 10
    base_delay_s: _PositiveFloat = 0.5
    max_delay_s: _PositiveFloat = 10.0
    jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.25
    retry_budget_s: _PositiveFloat = 300.0
    retry_after_max_s: _NonNegativeFloat = 60.0

    def _check(self) -> None:
        if self.max_delay_s < self.base_delay_s:
            self._fail(
                "max_delay_s",
                f"expected float >= base_delay_s ({self.base_delay_s:g}), got {self.max_delay_s!r}",
            )


class CircuitBreakerConfig(Checked, frozen=True, kw_only=True):
    """The circuit breaker: opens after ``failure_threshold`` consecutive failures, for ``timeout_s``, then lets
    ``half_open_max_calls`` trial calls through.

    Two more modes (off by default; the resilience4j model) judge the last ``window_size`` calls once at least
    ``minimum_calls`` of them have been seen since the breaker last closed:

    * ``failure_rate_threshold`` (0–1): the breaker opens when that share of the window failed. Failures are then
      judged by their rate instead of in a row (``failure_threshold`` is not used).
    * ``slow_call_s``: a call that took longer than this (trio's clock) is *slow*, whatever its verdict; the breaker
      opens when ``slow_call_rate_threshold`` (0–1) of the window was slow, even if every call succeeded; and a
      HALF_OPEN trial that succeeds slowly re-opens it. Works with either failure mode.
    """

    _key_prefix: ClassVar[str] = "circuit_breaker."

    enabled: bool = True
    failure_threshold: _PositiveInt = 5
    timeout_s: _PositiveFloat = 30.0
    half_open_max_calls: _PositiveInt = 1
    failure_rate_threshold: _Rate | None = None
    window_size: _PositiveInt = 100
    minimum_calls: _PositiveInt = 20
    slow_call_s: _PositiveFloat | None = None
    slow_call_rate_threshold: _Rate = 1.0

    def _check(self) -> None:
        if self.minimum_calls > self.window_size:
            self._fail("minimum_calls", f"expected int <= window_size ({self.window_size}), got {self.minimum_calls!r}")


class BatchingConfig(Checked, frozen=True, kw_only=True):
    """Request batching: calls arriving within ``window_ms`` of each other are coalesced, up to ``max_items`` calls,
    ``max_batch_datums`` datums and ``max_batch_bytes`` estimated bytes per batch (``window_ms=0``: no waiting).

    ``enabled`` merges the items of one ``forward_backward_batch`` call; ``coalesce`` (opt-in, off by default) also
    coalesces concurrent ``forward_backward`` calls from different tasks within ``window_ms``."""

    _key_prefix: ClassVar[str] = "batching."

    enabled: bool = True
    coalesce: bool = False
    window_ms: _NonNegativeFloat = 5.0
    max_batch_datums: _PositiveInt = 1024
    max_batch_bytes: _PositiveInt = 5_000_000
    max_items: _PositiveInt = 64


class MetricsConfig(Checked, frozen=True, kw_only=True):
    """Client-side metrics: histograms of ``significant_figures`` (1–5: percentiles within a relative
    ``10**-significant_figures`` of the true value) tracking up to ``histogram_max_ms``, and a
    ``tinkex.metrics.snapshot`` event every ``snapshot_interval_s``.

    The defaults, 1 µs .. 10 min at 3 significant figures (0.1 %; exact below 0.512 ms), keep a request-latency series
    at ~3–8 KiB (memory follows the spread of the values, ~18 KiB if one series filled every bucket of the range).
    Values above ``histogram_max_ms`` are recorded as ``histogram_max_ms`` and counted in the series' ``clamped``."""

    _key_prefix: ClassVar[str] = "metrics."

    enabled: bool = True
    snapshot_interval_s: _PositiveFloat = 60.0
    significant_figures: Annotated[int, msgspec.Meta(ge=1, le=5)] = 3
    histogram_max_ms: Annotated[int, msgspec.Meta(ge=2)] = 600_000


class TimeoutsConfig(Checked, frozen=True, kw_only=True):
    """Per-call timeouts in seconds (protocol §1.4).

    ``connect_s`` and the per-call timeouts (``request_s`` for ordinary calls, ``retrieve_future_s`` for a poll, ...)
    are httpx's: they bound the connection and *each read*, so a server dripping a byte every few seconds never
    trips them. ``total_s`` bounds the whole of one attempt (connect, send, wait, read the entire body): past it the
    attempt fails with :class:`~tinkex_trio.errors.APITimeoutError` (retried like any timeout; a poll re-polls).
    ``None`` (the default) means ``2 × request_s`` (120 s). A call with a shorter timeout of its own (a poll, a
    heartbeat, finish) gets that timeout ``+ connect_s`` when that is sooner: a poll attempt ends after at most
    ``retrieve_future_s + connect_s`` (50 s). ``total_s`` may not be below ``retrieve_future_s``, or every long-poll
    would be cut short.
    """

    _key_prefix: ClassVar[str] = "timeouts."

    connect_s: _PositiveFloat = 5.0
    request_s: _PositiveFloat = 60.0
    retrieve_future_s: _PositiveFloat = 45.0
    heartbeat_s: _PositiveFloat = 10.0
    finish_s: _PositiveFloat = 10.0
    total_s: _PositiveFloat | None = None

    @property
    def effective_total_s(self) -> float:
        """``total_s``, or ``2 × request_s`` when it is not set."""
        return self.total_s if self.total_s is not None else 2.0 * self.request_s

    def _check(self) -> None:
        if self.effective_total_s < self.retrieve_future_s:
            self._fail(
                "total_s",
                f"expected float >= retrieve_future_s ({self.retrieve_future_s:g}): a long-poll may take that long, "
                f"got {self.effective_total_s!r}",
            )


class PoolLimits(Checked, frozen=True, kw_only=True):
    """Connection limits of one HTTP pool (one ``httpx.AsyncClient``); ``max_keepalive <= max_connections``."""

    max_connections: _PositiveInt = 100
    max_keepalive: _NonNegativeInt = 20
    keepalive_expiry_s: _PositiveFloat = 5.0

    def _check(self) -> None:
        if self.max_keepalive > self.max_connections:
            self._fail(
                "max_keepalive",
                f"expected int <= max_connections ({self.max_connections}), got {self.max_keepalive!r}",
            )


def _pool(max_connections: int, max_keepalive: int) -> PoolLimits:
    return PoolLimits(max_connections=max_connections, max_keepalive=max_keepalive)


class PoolsConfig(Checked, frozen=True, kw_only=True):
    """Limits per pool kind (protocol §1.5): training calls, sample submissions, session calls (create, heartbeat),
    future polls (long-polls: one connection each while waiting) and telemetry."""

    _key_prefix: ClassVar[str] = "pools."

    training: PoolLimits = msgspec.field(default_factory=lambda: _pool(64, 32))
    sampling: PoolLimits = msgspec.field(default_factory=lambda: _pool(400, 100))
    session: PoolLimits = msgspec.field(default_factory=lambda: _pool(16, 8))
    futures: PoolLimits = msgspec.field(default_factory=lambda: _pool(512, 128))
    telemetry: PoolLimits = msgspec.field(default_factory=lambda: _pool(4, 2))


# --------------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------------


def _base_url(value: str) -> str:
    """``value`` without surrounding blanks and trailing ``/``, if it is an http(s) URL with a valid port."""
    url = value.strip().rstrip("/")
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {shown(value)}")
    try:
        parts.port  # noqa: B018  # urlsplit parses the port lazily: reading it checks 0-65535
    except ValueError:
        raise ValueError(f"expected a numeric port in 0-65535, got {shown(value)}") from None
    return url


class Config(Checked, frozen=True, kw_only=True):
    """Everything a session needs to know, validated when built.

    Build it with :meth:`create` (arguments > environment > defaults) or :meth:`from_toml`; the constructor takes
    every field as a keyword and reads no environment.

    Attributes:
        api_key: ``tml-...`` or a JWT. Never shown in reprs or errors (see :attr:`key_fingerprint`).
        base_url: the service root, without a trailing ``/``.
        project_id: default project for new sessions, or ``None``.
        tags: session tags, in order.
        telemetry: report client telemetry to the server.
        wire_format: ``"proto"`` (the official SDK's choice for fwd/bwd and sample) or ``"json"``.
        heartbeat_interval_s: seconds between session heartbeats.
        user_agent_suffix: appended to the User-Agent header, e.g. ``"my-app/1.2"``.
        http2: offer HTTP/2 over TLS.
        verify: verify TLS certificates (``False`` only for local experiments).
        ca_file: a PEM bundle of extra CAs to trust (an ``ssl.SSLContext`` passed to ``open_session`` wins).
        max_response_bytes: the largest response body the client reads (after content decoding), for submissions and
            polls alike; a larger one fails with :class:`~tinkex_trio.errors.ResponseTooLargeError` as soon as its
            Content-Length or the bytes read pass it, so the client buffers at most about this much per response.
            Default 256 MiB; at least 1024.
        retry, circuit_breaker, batching, metrics, timeouts, pools: the sections.
    """

    api_key: str
    base_url: str = DEFAULT_BASE_URL
    project_id: _NonEmptyStr | None = None
    tags: tuple[str, ...] = ()
    telemetry: bool = True
    wire_format: WireFormat = "proto"
    heartbeat_interval_s: _PositiveFloat = 10.0
    user_agent_suffix: _HeaderText | None = None
    http2: bool = True
    verify: bool = True
    ca_file: _NonEmptyStr | None = None
    max_response_bytes: Annotated[int, msgspec.Meta(ge=1024)] = DEFAULT_MAX_RESPONSE_BYTES
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    circuit_breaker: CircuitBreakerConfig = msgspec.field(default_factory=CircuitBreakerConfig)
    batching: BatchingConfig = msgspec.field(default_factory=BatchingConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    timeouts: TimeoutsConfig = msgspec.field(default_factory=TimeoutsConfig)
    pools: PoolsConfig = msgspec.field(default_factory=PoolsConfig)

    def __post_init__(self) -> None:
        validate_api_key(self.api_key)  # first, and by its own rules: its errors never show the value
        if isinstance(self.ca_file, os.PathLike):
            msgspec.structs.force_setattr(self, "ca_file", os.fspath(self.ca_file))  # pyright: ignore[reportUnknownArgumentType]
        super().__post_init__()

    def _check(self) -> None:
        try:
            msgspec.structs.force_setattr(self, "base_url", _base_url(self.base_url))
        except ValueError as exc:
            self._fail("base_url", str(exc))
        # A wrong path would otherwise surface only at the first HTTPS connection.
        if self.ca_file is not None and not os.path.isfile(self.ca_file):
            self._fail("ca_file", f"no such file: {self.ca_file!r}")

    # -- secrets --------------------------------------------------------------------------------------------------

    @property
    def key_fingerprint(self) -> str:
        """First 16 hex digits of sha256(api_key): identifies the key without revealing it."""
        return key_fingerprint(self.api_key)

    @property
    def redacted_key(self) -> str:
        """The key's public prefix and ``…redacted``."""
        return redact_key(self.api_key)

    def _fields_for_display(self) -> Iterator[tuple[str, object]]:
        for name in self.__struct_fields__:
            yield name, (self.redacted_key if name == "api_key" else getattr(self, name))

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={value!r}" for name, value in self._fields_for_display())
        return f"Config({inner})"

    __str__ = __repr__

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return list(self._fields_for_display())

    # -- construction ---------------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Config:
        """Build a Config: these arguments > environment (``env``, default ``os.environ``) > defaults.

        ``overrides`` are any other field (``tags=("a",)``, ``telemetry=False``); a section may be given whole
        (``retry=RetryConfig(...)``) or as a mapping merged over the lower layers (``retry={"max_retries": 3}``).
        ``None`` (any field) or ``""`` (``api_key`` / ``base_url``) means "not given".
        """
        layers: list[Mapping[str, Any]] = [_env_layer(os.environ if env is None else env)]
        args: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        if api_key:
            args["api_key"] = api_key
        if base_url:
            args["base_url"] = base_url
        layers.append(args)
        return _build(layers)

    @classmethod
    def from_toml(
        cls,
        path: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Config:
        """Build a Config from a TOML file: ``overrides`` > the file > environment > defaults.

        The file holds top-level keys (``api_key``, ``base_url``, ``tags``, ...) and the tables ``[retry]``,
        ``[circuit_breaker]``, ``[batching]``, ``[metrics]``, ``[timeouts]`` and ``[pools.<kind>]``. An unknown key,
        a value of the wrong type or out of range raises :class:`ConfigError` naming the key.
        """
        file_path = Path(path)
        try:
            with file_path.open("rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(file_path)!r}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML in {str(file_path)!r}: {exc}") from None
        args = {k: v for k, v in overrides.items() if v is not None}
        return _build([_env_layer(os.environ if env is None else env), data, args])

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (sections whole or as mappings merged over the current ones), validated."""
        return _build([msgspec.to_builtins(self), changes])


# --------------------------------------------------------------------------------------------------------------------
# Layering
# --------------------------------------------------------------------------------------------------------------------


def _env_word(env: Mapping[str, str], name: str, *, unknown: bool | None) -> bool | None:
    """An on/off environment variable: ``None`` when unset or empty; ``unknown`` for an unrecognised value
    (``None`` there makes an unrecognised value a :class:`ConfigError`)."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return None
    if raw in _FALSE_WORDS:
        return False
    if raw in _TRUE_WORDS:
        return True
    if unknown is not None:
        return unknown
    raise ConfigError(f"{name}: expected on|off (or 1|0, true|false, yes|no), got {raw!r}", key=name)


def _parse_tags(raw: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for part in raw.split(","):
        tag = part.strip()
        if tag:
            seen.setdefault(tag, None)
    return tuple(seen)


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    if key := env.get("TINKER_API_KEY", "").strip():
        layer["api_key"] = key
    if url := env.get("TINKER_BASE_URL", "").strip():
        layer["base_url"] = url
    if project := env.get("TINKER_PROJECT_ID", "").strip():
        layer["project_id"] = project
    if (tags := env.get("TINKER_TAGS")) is not None and tags.strip():
        layer["tags"] = _parse_tags(tags)
    # Like the official SDK, telemetry stays on only for 1|true|yes|on: any other non-empty value turns it off.
    if (telemetry := _env_word(env, "TINKER_TELEMETRY", unknown=False)) is not None:
        layer["telemetry"] = telemetry
    if (breaker := _env_word(env, "TINKEX_CIRCUIT_BREAKER", unknown=None)) is not None:
        layer["circuit_breaker"] = {"enabled": breaker}
    if (total := _env_number(env, "TINKEX_TIMEOUT_TOTAL_S", float)) is not None:
        layer["timeouts"] = {"total_s": total}
    if (max_bytes := _env_number(env, "TINKEX_MAX_RESPONSE_BYTES", int)) is not None:
        layer["max_response_bytes"] = max_bytes
    return layer


def _env_number(env: Mapping[str, str], name: str, kind: type[int] | type[float]) -> int | float | None:
    """A numeric environment variable: ``None`` when unset or empty, else the number (its range is checked by the
    field it sets); a value that is not a number is a :class:`ConfigError` naming the variable."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected {kind.__name__}, got {raw!r}", key=name) from None


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, os.PathLike):
            base[key] = os.fspath(value)  # pyright: ignore[reportUnknownArgumentType]
        elif isinstance(value, msgspec.Struct):
            # A whole section given explicitly replaces everything below it.
            base[key] = msgspec.to_builtins(value)
        elif isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)  # pyright: ignore[reportUnknownArgumentType]
        elif isinstance(value, Mapping):
            nested: dict[str, Any] = {}
            _merge(nested, value)  # pyright: ignore[reportUnknownArgumentType]
            base[key] = nested
        else:
            base[key] = value


def _build(layers: list[Mapping[str, Any]]) -> Config:
    merged: dict[str, Any] = {}
    for layer in layers:
        _merge(merged, layer)
    if "api_key" not in merged:
        raise ConfigError("api_key: no API key given: pass api_key= or set TINKER_API_KEY", key="api_key")
    try:
        return msgspec.convert(merged, type=Config)
    except msgspec.ValidationError as exc:
        raise config_error(exc, merged, Config) from None
