"""Configuration: :class:`Config` and its sections, from arguments, environment variables, a TOML file and defaults.

Every class here is a frozen msgspec Struct validated when it is built: a bad value raises
:class:`~tinkex_trio.errors.ConfigError` naming the exact key (``retry.max_retries: expected int >= 0, got -1``).

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

import hashlib
import math
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import msgspec

from tinkex_trio import _secrets
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
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


# --------------------------------------------------------------------------------------------------------------------
# The API key
# --------------------------------------------------------------------------------------------------------------------


def _is_jwt(key: str) -> bool:
    parts = key.split(".")
    if len(parts) != 3 or not parts[0].startswith("eyJ") or not parts[1]:
        return False
    # The signature may be empty (an unsigned token); the header and payload may not.
    return all(all(c in _B64URL for c in part) for part in parts)


def validate_api_key(key: object) -> str:
    """Return ``key`` if it is a well-formed Tinker credential, else raise :class:`ConfigError`.

    A credential is a static key starting with ``tml-`` or a JWT (``eyJ...``, three dot-separated base64url
    segments), in printable ASCII (no whitespace, control or non-ASCII characters). The error message never
    contains the key. An accepted key is registered with :func:`tinkex_trio._secrets.register_secret`, so that
    errors and the HTTP stack's logs redact it (also without its ``tml-`` prefix).
    """
    if key is None or key == "":
        raise ConfigError("api_key: no API key given: pass api_key= or set TINKER_API_KEY", key="api_key")
    if not isinstance(key, str):
        raise ConfigError(f"api_key: expected str, got {type(key).__name__}", key="api_key")
    if any(c.isspace() or not c.isprintable() for c in key):
        raise ConfigError("api_key: the key contains whitespace or control characters", key="api_key")
    if not key.isascii():
        # Checked here, not left to httpx: a header value must be ASCII, and the UnicodeEncodeError httpx would raise
        # quotes the whole value in its message.
        raise ConfigError("api_key: the key contains non-ASCII characters (expected printable ASCII)", key="api_key")
    if key.startswith("tml-"):
        if len(key) == len("tml-"):
            raise ConfigError("api_key: the key is empty after the 'tml-' prefix", key="api_key")
        _secrets.register_secret(key)
        return key
    if _is_jwt(key):
        _secrets.register_secret(key)
        return key
    raise ConfigError(
        "api_key: the key must start with the 'tml-' prefix or be a JWT ('eyJ...', three segments)", key="api_key"
    )


def redact_key(key: str) -> str:
    """A printable stand-in for a key: its public prefix (``tml-`` or ``eyJ``) and ``…redacted``."""
    if key.startswith("tml-"):
        return "tml-…redacted"
    if key.startswith("eyJ"):
        return "eyJ…redacted"
    return "…redacted"


def key_fingerprint(key: str) -> str:
    """A stable, non-reversible identifier of a key (first 16 hex digits of its sha256), for registry keys and logs."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------------
# Field validation
# --------------------------------------------------------------------------------------------------------------------


def _field_error(key: str, detail: str) -> ConfigError:
    return ConfigError(f"{key}: {detail}", key=key)


def _requalify(exc: ConfigError, prefix: str) -> ConfigError:
    """The same error with its key (and message) prefixed by ``prefix``, e.g. ``"pools.training."``."""
    if exc.key is None:
        return exc
    return ConfigError(prefix + exc.message, key=prefix + exc.key)


def _got(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Num:
    """A numeric field check: ``int`` or ``float`` (ints accepted for floats), finite, with optional bounds."""

    __slots__ = ("ge", "gt", "kind", "le")

    def __init__(
        self,
        kind: type[int] | type[float],
        *,
        gt: float | None = None,
        ge: float | None = None,
        le: float | None = None,
    ) -> None:
        self.kind = kind
        self.gt = gt
        self.ge = ge
        self.le = le

    def describe(self) -> str:
        bounds: list[str] = []
        if self.gt is not None:
            bounds.append(f"> {self.gt:g}")
        if self.ge is not None:
            bounds.append(f">= {self.ge:g}")
        if self.le is not None:
            bounds.append(f"<= {self.le:g}")
        name = self.kind.__name__
        return f"{name} {' and '.join(bounds)}" if bounds else name

    def __call__(self, value: object) -> int | float:
        ok = False
        number: int | float = 0
        if isinstance(value, bool):
            ok = False
        elif self.kind is int:
            if isinstance(value, int):
                number, ok = value, True
        elif isinstance(value, int | float) and math.isfinite(value):
            number, ok = float(value), True
        if ok and self.gt is not None and not number > self.gt:
            ok = False
        if ok and self.ge is not None and not number >= self.ge:
            ok = False
        if ok and self.le is not None and not number <= self.le:
            ok = False
        if not ok:
            raise ValueError(f"expected {self.describe()}, got {_got(value)}")
        return number


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected bool, got {_got(value)}")
    return value


def _opt_str(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, Path):
        return str(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty str or None, got {_got(value)}")
    return value


def _ca_file(value: object) -> str | None:
    """A PEM bundle that exists now: a wrong path would otherwise surface only at the first HTTPS connection."""
    path = _opt_str(value)
    if path is not None and not os.path.isfile(path):
        raise ValueError(f"no such file: {path!r}")
    return path


def _header_text(value: object) -> str | None:
    """Text sent in an HTTP header: printable ASCII only (a CR or LF would split the header, httpx refuses the rest)."""
    text = _opt_str(value)
    if text is not None and not all(" " <= ch <= "~" for ch in text):
        raise ValueError(f"expected printable ASCII (no control characters), got {_got(text)}")
    return text


_Check = Callable[[object], object]


class _Validated(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every config Struct: checks (and normalises) each field in ``__post_init__``."""

    _key_prefix: ClassVar[str] = ""
    _checks: ClassVar[Mapping[str, _Check]] = {}

    def __post_init__(self) -> None:
        for name, check in self._checks.items():
            value = getattr(self, name)
            try:
                normalised = check(value)
            except ValueError as exc:
                raise _field_error(self._key_prefix + name, str(exc)) from None
            if normalised is not value:
                msgspec.structs.force_setattr(self, name, normalised)
        self._check_together()

    def _check_together(self) -> None:
        """Cross-field checks, after each field is valid."""

    def _fail(self, name: str, detail: str) -> None:
        raise _field_error(self._key_prefix + name, detail)


# --------------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------------


class RetryConfig(_Validated, frozen=True, kw_only=True):
    """HTTP-layer retries (protocol §7, layer 1): which attempts are retried and how long to wait.

    Attributes:
        max_retries: retries after the first attempt (0 disables retrying).
        base_delay_s: backoff for retry ``k`` is ``min(base_delay_s * 2**k, max_delay_s)``...
        max_delay_s: ...capped here...
        jitter: ...times ``1 - jitter * U[0, 1)``.
        retry_budget_s: no retry is scheduled that would end more than this long after the first attempt.
        retry_after_max_s: a server's ``retry-after(-ms)`` is honoured when ``0 <= value <= retry_after_max_s``.
    """

    _key_prefix: ClassVar[str] = "retry."
    _checks: ClassVar[Mapping[str, _Check]] = {
        "max_retries": _Num(int, ge=0),
        "base_delay_s": _Num(float, gt=0),
        "max_delay_s": _Num(float, gt=0),
        "jitter": _Num(float, ge=0, le=1),
        "retry_budget_s": _Num(float, gt=0),
        "retry_after_max_s": _Num(float, ge=0),
    }

    max_retries: int = 10
    base_delay_s: float = 0.5
    max_delay_s: float = 10.0
    jitter: float = 0.25
    retry_budget_s: float = 300.0
    retry_after_max_s: float = 60.0

    def _check_together(self) -> None:
        if self.max_delay_s < self.base_delay_s:
            self._fail(
                "max_delay_s",
                f"expected float >= base_delay_s ({self.base_delay_s:g}), got {self.max_delay_s!r}",
            )


class CircuitBreakerConfig(_Validated, frozen=True, kw_only=True):
    """The circuit breaker: opens after ``failure_threshold`` consecutive failures, for ``timeout_s``, then lets
    ``half_open_max_calls`` trial calls through."""

    _key_prefix: ClassVar[str] = "circuit_breaker."
    _checks: ClassVar[Mapping[str, _Check]] = {
        "enabled": _bool,
        "failure_threshold": _Num(int, gt=0),
        "timeout_s": _Num(float, gt=0),
        "half_open_max_calls": _Num(int, gt=0),
    }

    enabled: bool = True
    failure_threshold: int = 5
    timeout_s: float = 30.0
    half_open_max_calls: int = 1


class BatchingConfig(_Validated, frozen=True, kw_only=True):
    """Request batching: calls arriving within ``window_ms`` of each other are coalesced, up to ``max_items`` calls,
    ``max_batch_datums`` datums and ``max_batch_bytes`` estimated bytes per batch (``window_ms=0``: no waiting).

    ``enabled`` merges the items of one ``forward_backward_batch`` call; ``coalesce`` (opt-in, off by default) also
    coalesces concurrent ``forward_backward`` calls from different tasks within ``window_ms``."""

    _key_prefix: ClassVar[str] = "batching."
    _checks: ClassVar[Mapping[str, _Check]] = {
        "enabled": _bool,
        "coalesce": _bool,
        "window_ms": _Num(float, ge=0),
        "max_batch_datums": _Num(int, gt=0),
        "max_batch_bytes": _Num(int, gt=0),
        "max_items": _Num(int, gt=0),
    }

    enabled: bool = True
    coalesce: bool = False
    window_ms: float = 5.0
    max_batch_datums: int = 1024
    max_batch_bytes: int = 5_000_000
    max_items: int = 64


class MetricsConfig(_Validated, frozen=True, kw_only=True):
    """Client-side metrics: HdrHistograms with ``significant_figures`` (1–5) tracking up to ``histogram_max_ms``,
    and a ``tinkex.metrics.snapshot`` event every ``snapshot_interval_s``."""

    _key_prefix: ClassVar[str] = "metrics."
    _checks: ClassVar[Mapping[str, _Check]] = {
        "enabled": _bool,
        "snapshot_interval_s": _Num(float, gt=0),
        "significant_figures": _Num(int, ge=1, le=5),
        "histogram_max_ms": _Num(int, ge=2),
    }

    enabled: bool = True
    snapshot_interval_s: float = 60.0
    significant_figures: int = 3
    histogram_max_ms: int = 3_600_000


def _opt_positive_float(value: object) -> float | None:
    if value is None:
        return None
    return float(_Num(float, gt=0)(value))


class TimeoutsConfig(_Validated, frozen=True, kw_only=True):
    """Per-call timeouts in seconds (protocol §1.4).

    ``connect_s`` and the per-call timeouts (``request_s`` for ordinary calls, ``retrieve_future_s`` for a poll, ...)
    are httpx's: they bound the connection and *each read*, so a server dripping a byte every few seconds never
    trips them. ``total_s`` bounds the whole of one attempt (connect, send, wait, read the entire body): past it the
    attempt fails with :class:`~tinkex_trio.errors.APITimeoutError` (retried like any timeout; a poll re-polls).
    ``None`` (the default) means ``2 × request_s`` (120 s). A call with a shorter timeout of its own (a poll, a
    heartbeat, telemetry, cancel, finish) gets that timeout ``+ connect_s`` when that is sooner: a poll attempt ends
    after at most ``retrieve_future_s + connect_s`` (50 s). ``total_s`` may not be below ``retrieve_future_s``, or
    every long-poll would be cut short.
    """

    _key_prefix: ClassVar[str] = "timeouts."
    _checks: ClassVar[Mapping[str, _Check]] = {
        name: _Num(float, gt=0)
        for name in (
            "connect_s",
            "request_s",
            "retrieve_future_s",
            "heartbeat_s",
            "telemetry_s",
            "cancel_future_s",
            "finish_s",
        )
    } | {"total_s": _opt_positive_float}

    connect_s: float = 5.0
    request_s: float = 60.0
    retrieve_future_s: float = 45.0
    heartbeat_s: float = 10.0
    telemetry_s: float = 5.0
    cancel_future_s: float = 30.0
    finish_s: float = 10.0
    total_s: float | None = None

    @property
    def effective_total_s(self) -> float:
        """``total_s``, or ``2 × request_s`` when it is not set."""
        return self.total_s if self.total_s is not None else 2.0 * self.request_s

    def _check_together(self) -> None:
        if self.effective_total_s < self.retrieve_future_s:
            self._fail(
                "total_s",
                f"expected float >= retrieve_future_s ({self.retrieve_future_s:g}): a long-poll may take that long, "
                f"got {self.effective_total_s!r}",
            )


class PoolLimits(_Validated, frozen=True, kw_only=True):
    """Connection limits of one HTTP pool (one ``httpx.AsyncClient``)."""

    _checks: ClassVar[Mapping[str, _Check]] = {
        "max_connections": _Num(int, gt=0),
        "max_keepalive": _Num(int, ge=0),
        "keepalive_expiry_s": _Num(float, gt=0),
    }

    max_connections: int = 100
    max_keepalive: int = 20
    keepalive_expiry_s: float = 5.0

    def _check_together(self) -> None:
        if self.max_keepalive > self.max_connections:
            self._fail(
                "max_keepalive",
                f"expected int <= max_connections ({self.max_connections}), got {self.max_keepalive!r}",
            )


def _pool(max_connections: int, max_keepalive: int) -> PoolLimits:
    return PoolLimits(max_connections=max_connections, max_keepalive=max_keepalive)


def _is_pool(value: object) -> PoolLimits:
    if not isinstance(value, PoolLimits):
        raise ValueError(f"expected PoolLimits, got {_got(value)}")
    return value


class PoolsConfig(_Validated, frozen=True, kw_only=True):
    """Limits per pool kind (protocol §1.5): training calls, sample submissions, session calls (create, heartbeat),
    future polls (long-polls: one connection each while waiting) and telemetry."""

    _key_prefix: ClassVar[str] = "pools."
    _checks: ClassVar[Mapping[str, _Check]] = {
        name: _is_pool for name in ("training", "sampling", "session", "futures", "telemetry")
    }

    training: PoolLimits = msgspec.field(default_factory=lambda: _pool(64, 32))
    sampling: PoolLimits = msgspec.field(default_factory=lambda: _pool(400, 100))
    session: PoolLimits = msgspec.field(default_factory=lambda: _pool(16, 8))
    futures: PoolLimits = msgspec.field(default_factory=lambda: _pool(512, 128))
    telemetry: PoolLimits = msgspec.field(default_factory=lambda: _pool(4, 2))


_SECTIONS: dict[str, type[_Validated]] = {
    "retry": RetryConfig,
    "circuit_breaker": CircuitBreakerConfig,
    "batching": BatchingConfig,
    "metrics": MetricsConfig,
    "timeouts": TimeoutsConfig,
    "pools": PoolsConfig,
}


def _section_check(cls: type[_Validated]) -> _Check:
    def check(value: object) -> object:
        if not isinstance(value, cls):
            raise ValueError(f"expected {cls.__name__}, got {_got(value)}")
        return value

    return check


# --------------------------------------------------------------------------------------------------------------------
# Top-level checks
# --------------------------------------------------------------------------------------------------------------------


def _base_url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected str, got {_got(value)}")
    url = value.strip().rstrip("/")
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {_got(value)}")
    try:
        parts.port  # noqa: B018  # urlsplit parses the port lazily: reading it checks 0-65535
    except ValueError:
        raise ValueError(f"expected a numeric port in 0-65535, got {_got(value)}") from None
    return url


def _tags(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError(f"expected a tuple of str, got {_got(value)}")
    items: list[object] = list(value)  # pyright: ignore[reportUnknownArgumentType]
    if not all(isinstance(t, str) for t in items):
        raise ValueError(f"expected a tuple of str, got {_got(items)}")
    return tuple(str(t) for t in items)


def _wire_format(value: object) -> str:
    if value not in ("proto", "json"):
        raise ValueError(f"expected 'proto' or 'json', got {_got(value)}")
    return str(value)


def _api_key(value: object) -> str:
    try:
        return validate_api_key(value)
    except ConfigError as exc:
        # validate_api_key's messages start with "api_key: "; strip it, _field_error adds the key back.
        raise ValueError(exc.message.removeprefix("api_key: ")) from None


# --------------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------------


class Config(_Validated, frozen=True, kw_only=True):
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

    _checks: ClassVar[Mapping[str, _Check]] = {
        "api_key": _api_key,
        "base_url": _base_url,
        "project_id": _opt_str,
        "tags": _tags,
        "telemetry": _bool,
        "wire_format": _wire_format,
        "heartbeat_interval_s": _Num(float, gt=0),
        "user_agent_suffix": _header_text,
        "http2": _bool,
        "verify": _bool,
        "ca_file": _ca_file,
        "max_response_bytes": _Num(int, ge=1024),
        **{name: _section_check(cls) for name, cls in _SECTIONS.items()},
    }

    api_key: str
    base_url: str = DEFAULT_BASE_URL
    project_id: str | None = None
    tags: tuple[str, ...] = ()
    telemetry: bool = True
    wire_format: WireFormat = "proto"
    heartbeat_interval_s: float = 10.0
    user_agent_suffix: str | None = None
    http2: bool = True
    verify: bool = True
    ca_file: str | None = None
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    circuit_breaker: CircuitBreakerConfig = msgspec.field(default_factory=CircuitBreakerConfig)
    batching: BatchingConfig = msgspec.field(default_factory=BatchingConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    timeouts: TimeoutsConfig = msgspec.field(default_factory=TimeoutsConfig)
    pools: PoolsConfig = msgspec.field(default_factory=PoolsConfig)

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
        return _build([_as_layer(self), changes])


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


def _as_layer(struct: msgspec.Struct) -> dict[str, Any]:
    """A Struct as a layer: its fields, with nested Structs as nested dicts (so later layers merge into them)."""
    out: dict[str, Any] = {}
    for name in struct.__struct_fields__:
        value = getattr(struct, name)
        out[name] = _as_layer(value) if isinstance(value, msgspec.Struct) else value
    return out


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, msgspec.Struct):
            # A whole section given explicitly replaces everything below it.
            base[key] = _as_layer(value)
        elif isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)  # pyright: ignore[reportUnknownArgumentType]
        elif isinstance(value, Mapping):
            nested: dict[str, Any] = {}
            _merge(nested, value)  # pyright: ignore[reportUnknownArgumentType]
            base[key] = nested
        else:
            base[key] = value


def _construct(cls: type[_Validated], data: object, path: str) -> Any:
    """Build ``cls`` from a mapping, naming the offending key (qualified by ``path``) on any error."""
    if not isinstance(data, Mapping):
        raise _field_error(path.rstrip("."), f"expected a table, got {_got(data)}")
    items: dict[str, Any] = dict(data)  # pyright: ignore[reportUnknownArgumentType]
    known = set(cls.__struct_fields__)
    for key in items:
        if key not in known:
            raise ConfigError(f"unknown config key {path + str(key)!r}", key=path + str(key))
    if cls is PoolsConfig:
        items = {k: _construct(PoolLimits, v, f"{path}{k}.") for k, v in items.items()}
    elif cls is Config:
        for name, section in _SECTIONS.items():
            if name in items:
                items[name] = _construct(section, items[name], f"{name}.")
    elif cls is PoolLimits:
        try:
            return PoolLimits(**items)
        except ConfigError as exc:
            raise _requalify(exc, path) from None
    if cls is Config and "api_key" not in items:
        raise ConfigError("api_key: no API key given: pass api_key= or set TINKER_API_KEY", key="api_key")
    return cls(**items)


def _build(layers: list[Mapping[str, Any]]) -> Config:
    merged: dict[str, Any] = {}
    for layer in layers:
        _merge(merged, layer)
    config: Config = _construct(Config, merged, "")
    return config
