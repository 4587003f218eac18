"""Unit tests for tinkex_trio._config."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tinkex_trio._config import (
    DEFAULT_BASE_URL,
    BatchingConfig,
    CircuitBreakerConfig,
    Config,
    MetricsConfig,
    PoolLimits,
    PoolsConfig,
    RetryConfig,
    TimeoutsConfig,
    key_fingerprint,
    redact_key,
    validate_api_key,
)
from tinkex_trio.errors import ConfigError

KEY = "tml-unit-test-secret-0123456789"
ENV_KEY = "tml-from-the-environment-abcdef"


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


JWT = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64({'sub': 'u1', 'exp': 4102444800})}.c2lnbmF0dXJl"
UNSIGNED_JWT = f"{_b64({'alg': 'none'})}.{_b64({'sub': 'u1'})}."


def make(**kwargs: Any) -> Config:
    kwargs.setdefault("env", {})
    return Config.create(KEY, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Defaults
# --------------------------------------------------------------------------------------------------------------------


def test_defaults() -> None:
    c = make()
    assert c.api_key == KEY
    assert c.base_url == DEFAULT_BASE_URL == "https://tinker.thinkingmachines.dev/services/tinker-prod"
    assert c.project_id is None
    assert c.tags == ()
    assert c.telemetry is True
    assert c.wire_format == "proto"
    assert c.heartbeat_interval_s == 10.0
    assert c.verify is True and c.ca_file is None and c.http2 is True
    assert c.retry == RetryConfig(
        max_retries=10, base_delay_s=0.5, max_delay_s=10.0, jitter=0.25, retry_budget_s=300.0, retry_after_max_s=60.0
    )
    assert c.circuit_breaker == CircuitBreakerConfig(enabled=True, failure_threshold=5, timeout_s=30.0)
    assert c.circuit_breaker.half_open_max_calls == 1
    assert c.batching.enabled and c.batching.window_ms == 5.0
    assert c.batching.max_batch_datums == 1024 and c.batching.max_batch_bytes == 5_000_000
    assert c.metrics.snapshot_interval_s == 60.0 and c.metrics.significant_figures == 3
    t = c.timeouts
    assert (t.connect_s, t.request_s, t.retrieve_future_s, t.heartbeat_s) == (5, 60, 45, 10)
    assert t.finish_s == 10
    assert c.pools.training.max_connections > 0 and c.pools.futures.max_connections > 0


def test_frozen() -> None:
    c = make()
    with pytest.raises(AttributeError):
        c.api_key = "tml-other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        c.retry.max_retries = 3  # type: ignore[misc]


def test_int_accepted_for_float_fields_and_normalised() -> None:
    r = RetryConfig(base_delay_s=1, max_delay_s=2)
    assert type(r.base_delay_s) is float and r.base_delay_s == 1.0
    c = make(heartbeat_interval_s=3)
    assert type(c.heartbeat_interval_s) is float


# --------------------------------------------------------------------------------------------------------------------
# Precedence: arguments > environment > defaults
# --------------------------------------------------------------------------------------------------------------------

FULL_ENV = {
    "TINKER_API_KEY": ENV_KEY,
    "TINKER_BASE_URL": "http://env.example:8000/",
    "TINKER_PROJECT_ID": "proj-env",
    "TINKER_TAGS": "env1,env2",
    "TINKER_TELEMETRY": "off",
    "TINKEX_CIRCUIT_BREAKER": "off",
}


def test_environment_beats_defaults() -> None:
    c = Config.create(env=FULL_ENV)
    assert c.api_key == ENV_KEY
    assert c.base_url == "http://env.example:8000"
    assert c.project_id == "proj-env"
    assert c.tags == ("env1", "env2")
    assert c.telemetry is False
    assert c.circuit_breaker.enabled is False
    # The rest of the section keeps its defaults.
    assert c.circuit_breaker.failure_threshold == 5


def test_arguments_beat_environment() -> None:
    c = Config.create(
        KEY,
        "https://arg.example",
        env=FULL_ENV,
        project_id="proj-arg",
        tags=("arg",),
        telemetry=True,
        circuit_breaker={"enabled": True},
    )
    assert c.api_key == KEY
    assert c.base_url == "https://arg.example"
    assert c.project_id == "proj-arg"
    assert c.tags == ("arg",)
    assert c.telemetry is True
    assert c.circuit_breaker.enabled is True


def test_section_mapping_merges_over_environment() -> None:
    c = Config.create(KEY, env=FULL_ENV, circuit_breaker={"failure_threshold": 2})
    assert c.circuit_breaker.enabled is False  # from the environment
    assert c.circuit_breaker.failure_threshold == 2  # from the argument


def test_whole_section_replaces_environment() -> None:
    c = Config.create(KEY, env=FULL_ENV, circuit_breaker=CircuitBreakerConfig(failure_threshold=7))
    assert c.circuit_breaker == CircuitBreakerConfig(enabled=True, failure_threshold=7)


def test_empty_and_none_arguments_mean_not_given() -> None:
    c = Config.create("", "", env=FULL_ENV, project_id=None)
    assert c.api_key == ENV_KEY
    assert c.base_url == "http://env.example:8000"
    assert c.project_id == "proj-env"


def test_empty_environment_values_are_unset() -> None:
    env = {k: "" for k in FULL_ENV}
    c = Config.create(KEY, env=env)
    assert c.base_url == DEFAULT_BASE_URL
    assert c.project_id is None and c.tags == () and c.telemetry is True and c.circuit_breaker.enabled is True


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_API_KEY", ENV_KEY)
    monkeypatch.setenv("TINKER_PROJECT_ID", "from-os")
    c = Config.create()
    assert c.api_key == ENV_KEY and c.project_id == "from-os"
    assert Config.create(env={"TINKER_API_KEY": KEY}).project_id is None  # an explicit env replaces os.environ


def test_tags_keep_order_strip_and_dedupe() -> None:
    c = Config.create(KEY, env={"TINKER_TAGS": " zeta, alpha ,,mid,alpha,zeta "})
    assert c.tags == ("zeta", "alpha", "mid")
    assert Config.create(KEY, env={"TINKER_TAGS": "b,a"}).tags == ("b", "a")


def test_tags_argument_list_becomes_tuple() -> None:
    assert make(tags=["x", "y"]).tags == ("x", "y")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        *[("0", False), ("false", False), ("no", False), ("off", False), ("OFF", False), (" False ", False)],
        *[("1", True), ("true", True), ("yes", True), ("on", True), (" ON ", True)],
        ("whatever", False),  # as in the official SDK: only the "on" words keep it on
    ],
)
def test_tinker_telemetry_values(raw: str, expected: bool) -> None:
    assert Config.create(KEY, env={"TINKER_TELEMETRY": raw}).telemetry is expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        *[("on", True), ("ON", True), ("1", True), ("true", True), ("yes", True)],
        *[("off", False), ("0", False), ("false", False), ("no", False)],
    ],
)
def test_tinkex_circuit_breaker_values(raw: str, expected: bool) -> None:
    assert Config.create(KEY, env={"TINKEX_CIRCUIT_BREAKER": raw}).circuit_breaker.enabled is expected


def test_tinkex_circuit_breaker_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="TINKEX_CIRCUIT_BREAKER") as info:
        Config.create(KEY, env={"TINKEX_CIRCUIT_BREAKER": "maybe"})
    assert info.value.key == "TINKEX_CIRCUIT_BREAKER"


def test_unknown_override_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'colour'"):
        make(colour="blue")
    with pytest.raises(ConfigError, match=r"unknown config key 'retry\.tries'"):
        make(retry={"tries": 3})


# --------------------------------------------------------------------------------------------------------------------
# base_url
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("https://h.example/services/x///", "https://h.example/services/x"),
        ("https://h.example", "https://h.example"),
        ("  http://h.example/  ", "http://h.example"),
    ],
)
def test_base_url_trailing_slash_stripped(given: str, expected: str) -> None:
    assert make(base_url=given).base_url == expected
    assert Config.create(KEY, env={"TINKER_BASE_URL": given}).base_url == expected


@pytest.mark.parametrize("bad", ["ftp://h.example", "h.example", "http://", "/relative/path"])
def test_base_url_must_be_http_url(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"^base_url: expected an http"):
        make(base_url=bad)


# --------------------------------------------------------------------------------------------------------------------
# The API key
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [KEY, "tml-x", JWT, UNSIGNED_JWT])
def test_valid_keys(key: str) -> None:
    assert validate_api_key(key) == key
    assert Config.create(key, env={}).api_key == key


SECRET_BAD_KEYS = [
    "not-a-key-SECRET-4242",  # no prefix
    "sk-SECRET-4242",
    "TML-SECRET-4242",  # the prefix is case-sensitive
    "eyJSECRET4242",  # one segment
    "eyJhbGc.SECRET4242",  # two segments
    "eyJhbGc.SECRET.4242.more",  # four segments
    "eyJhbGc..SECRET4242",  # empty payload
    "eyJhb!c.SECRET.4242",  # not base64url
    "abc.SECRET.4242",  # three segments, not a JWT header
    "tml-SECRET 4242",  # whitespace
    "tml-SECRET\n4242",
]


@pytest.mark.parametrize("key", SECRET_BAD_KEYS)
def test_invalid_keys_rejected_without_revealing_them(key: str) -> None:
    for build in (
        lambda: Config.create(key, env={}),
        lambda: Config.create(env={"TINKER_API_KEY": key}),
        lambda: Config(api_key=key),
    ):
        with pytest.raises(ConfigError) as info:
            build()
        text = str(info.value) + repr(info.value) + info.value.message
        assert text.startswith("api_key:")
        assert info.value.key == "api_key"
        assert "SECRET" not in text
        assert "4242" not in text


def test_bare_prefix_rejected() -> None:
    with pytest.raises(ConfigError, match="empty after the 'tml-' prefix"):
        Config.create("tml-", env={})


def test_missing_key() -> None:
    with pytest.raises(ConfigError, match="no API key given"):
        Config.create(env={})
    with pytest.raises(ConfigError, match="no API key given"):
        Config.create(env={"TINKER_API_KEY": "   "})


def test_non_string_key_type_named_not_value() -> None:
    with pytest.raises(ConfigError, match=r"^api_key: expected str, got int$"):
        Config(api_key=123456789)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------------
# Redaction and fingerprint
# --------------------------------------------------------------------------------------------------------------------


def test_repr_and_str_redact_the_key() -> None:
    c = make()
    for text in (repr(c), str(c), f"{c}", f"{c!r}", repr([c]), repr({"config": c})):
        assert KEY not in text
        assert "unit-test-secret" not in text
        assert "api_key='tml-…redacted'" in text
    assert "base_url='https://tinker.thinkingmachines.dev/services/tinker-prod'" in repr(c)
    assert "retry=RetryConfig(max_retries=10" in repr(c)


def test_rich_repr_redacts_the_key() -> None:
    fields = dict(make().__rich_repr__())
    assert fields["api_key"] == "tml-…redacted"
    assert KEY not in repr(fields)


def test_jwt_repr_redacted() -> None:
    c = Config.create(JWT, env={})
    assert JWT not in repr(c)
    assert JWT.split(".")[1] not in repr(c)
    assert "api_key='eyJ…redacted'" in repr(c)


def test_redact_key() -> None:
    assert redact_key(KEY) == "tml-…redacted"
    assert redact_key(JWT) == "eyJ…redacted"
    assert redact_key("other") == "…redacted"


def test_key_fingerprint() -> None:
    c = make()
    assert c.key_fingerprint == hashlib.sha256(KEY.encode()).hexdigest()[:16]
    assert c.key_fingerprint == key_fingerprint(KEY)
    assert len(c.key_fingerprint) == 16 and all(ch in "0123456789abcdef" for ch in c.key_fingerprint)
    assert key_fingerprint("tml-a") != key_fingerprint("tml-b")
    assert KEY not in c.key_fingerprint
    assert c.redacted_key == "tml-…redacted"


def test_errors_about_other_fields_do_not_contain_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        make(heartbeat_interval_s=-1)
    assert KEY not in str(info.value) and "unit-test-secret" not in repr(info.value)


# --------------------------------------------------------------------------------------------------------------------
# Field validation
# --------------------------------------------------------------------------------------------------------------------

SECTIONS: dict[str, type[msgspec.Struct]] = {
    "retry": RetryConfig,
    "circuit_breaker": CircuitBreakerConfig,
    "batching": BatchingConfig,
    "metrics": MetricsConfig,
    "timeouts": TimeoutsConfig,
}

# (section, field, bad value, expected text after "section.field: ")
BAD_VALUES: list[tuple[str, str, object, str]] = [
    ("retry", "max_retries", -1, "expected `int` >= 0, got -1"),
    ("retry", "max_retries", 1.5, "expected `int` >= 0, got 1.5"),
    ("retry", "max_retries", True, "expected `int` >= 0, got True"),
    ("retry", "max_retries", "3", "expected `int` >= 0, got '3'"),
    ("retry", "base_delay_s", 0, "expected `float` > 0.0, got 0"),
    ("retry", "max_delay_s", -2.0, "expected `float` > 0.0, got -2.0"),
    ("retry", "jitter", 1.5, "expected `float` <= 1.0, got 1.5"),
    ("retry", "jitter", -0.1, "expected `float` >= 0.0, got -0.1"),
    ("retry", "retry_budget_s", float("nan"), "expected `float` > 0.0, got nan"),
    ("retry", "retry_budget_s", float("inf"), "expected a finite `float` > 0, got inf"),
    ("retry", "retry_after_max_s", -1, "expected `float` >= 0.0, got -1"),
    ("circuit_breaker", "enabled", 1, "expected `bool`, got 1"),
    ("circuit_breaker", "enabled", "yes", "expected `bool`, got 'yes'"),
    ("circuit_breaker", "failure_threshold", -1, "expected `int` >= 1, got -1"),
    ("circuit_breaker", "failure_threshold", 0, "expected `int` >= 1, got 0"),
    ("circuit_breaker", "timeout_s", 0.0, "expected `float` > 0.0, got 0.0"),
    ("circuit_breaker", "half_open_max_calls", 0, "expected `int` >= 1, got 0"),
    ("circuit_breaker", "failure_rate_threshold", 0, "expected `float` > 0.0, got 0"),
    ("circuit_breaker", "failure_rate_threshold", 1.5, "expected `float` <= 1.0, got 1.5"),
    ("circuit_breaker", "window_size", 0, "expected `int` >= 1, got 0"),
    ("circuit_breaker", "minimum_calls", 0, "expected `int` >= 1, got 0"),
    ("circuit_breaker", "slow_call_s", 0, "expected `float` > 0.0, got 0"),
    ("circuit_breaker", "slow_call_rate_threshold", 2, "expected `float` <= 1.0, got 2"),
    ("batching", "enabled", None, "expected `bool`, got None"),
    ("batching", "coalesce", "yes", "expected `bool`, got 'yes'"),
    ("batching", "window_ms", -0.5, "expected `float` >= 0.0, got -0.5"),
    ("batching", "max_batch_datums", 0, "expected `int` >= 1, got 0"),
    ("batching", "max_batch_bytes", -5, "expected `int` >= 1, got -5"),
    ("batching", "max_items", 0, "expected `int` >= 1, got 0"),
    ("metrics", "enabled", "true", "expected `bool`, got 'true'"),
    ("metrics", "snapshot_interval_s", 0, "expected `float` > 0.0, got 0"),
    ("metrics", "significant_figures", 0, "expected `int` >= 1, got 0"),
    ("metrics", "significant_figures", 6, "expected `int` <= 5, got 6"),
    ("metrics", "histogram_max_ms", 1, "expected `int` >= 2, got 1"),
    ("timeouts", "connect_s", 0, "expected `float` > 0.0, got 0"),
    ("timeouts", "request_s", -60, "expected `float` > 0.0, got -60"),
    ("timeouts", "retrieve_future_s", "45", "expected `float` > 0, got '45'"),
    ("timeouts", "heartbeat_s", 0, "expected `float` > 0.0, got 0"),
    ("timeouts", "finish_s", 0, "expected `float` > 0.0, got 0"),
    ("timeouts", "total_s", 0, "expected `float` > 0.0, got 0"),
    ("timeouts", "total_s", "120", "expected `float | null` > 0, got '120'"),
]


@pytest.mark.parametrize(("section", "name", "value", "detail"), BAD_VALUES)
def test_section_field_validation(section: str, name: str, value: object, detail: str) -> None:
    expected = f"{section}.{name}: {detail}"
    with pytest.raises(ConfigError) as direct:
        SECTIONS[section](**{name: value})
    assert str(direct.value) == expected
    assert direct.value.key == f"{section}.{name}"
    with pytest.raises(ConfigError) as via_create:
        make(**{section: {name: value}})
    assert str(via_create.value) == expected
    assert via_create.value.key == f"{section}.{name}"


def test_every_numeric_field_is_covered_by_the_table() -> None:
    covered = {(s, n) for s, n, _, _ in BAD_VALUES}
    for section, cls in SECTIONS.items():
        for name in cls.__struct_fields__:
            assert (section, name) in covered, f"{section}.{name} has no bad-value test"


def test_cross_field_checks() -> None:
    with pytest.raises(ConfigError, match=r"^retry\.max_delay_s: expected float >= base_delay_s \(2\), got 1\.0$"):
        RetryConfig(base_delay_s=2.0, max_delay_s=1.0)
    with pytest.raises(ConfigError, match=r"^pools\.futures\.max_keepalive: expected int <= max_connections \(4\)"):
        make(pools={"futures": {"max_connections": 4, "max_keepalive": 5}})
    with pytest.raises(ConfigError, match=r"^circuit_breaker\.minimum_calls: expected int <= window_size \(5\)"):
        make(circuit_breaker={"window_size": 5, "minimum_calls": 6})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("heartbeat_interval_s", 0, "heartbeat_interval_s: expected `float` > 0.0, got 0"),
        ("wire_format", "xml", "wire_format: expected 'proto' or 'json', got 'xml'"),
        ("telemetry", "off", "telemetry: expected `bool`, got 'off'"),
        ("verify", "yes", "verify: expected `bool`, got 'yes'"),
        ("http2", 0, "http2: expected `bool`, got 0"),
        ("tags", "a,b", "tags: expected `array`, got 'a,b'"),
        ("tags", ("a", 1), "tags[1]: expected `str`, got 1"),
        ("project_id", 7, "project_id: expected `str | null`, got 7"),
        ("project_id", "", "project_id: expected `str` of length >= 1, got ''"),
        ("ca_file", 3.5, "ca_file: expected `str | null`, got 3.5"),
        ("user_agent_suffix", b"x", "user_agent_suffix: expected `str | null`, got b'x'"),
        ("user_agent_suffix", "a\nb", r"user_agent_suffix: expected `str` matching regex '^[ -~]+\\Z', got 'a\nb'"),
        ("retry", 5, "retry: expected `object`, got 5"),
        ("pools", {"gpu": {}}, "unknown config key 'pools.gpu'"),
        ("pools", {"training": {"max_connections": 0}}, "pools.training.max_connections: expected `int` >= 1, got 0"),
    ],
)
def test_top_level_validation(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        make(**{field: value})
    assert str(info.value) == message


def test_direct_construction_validates_sections_type() -> None:
    with pytest.raises(ConfigError, match=r"^retry: expected RetryConfig"):
        Config(api_key=KEY, retry={"max_retries": 1})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^pools\.sampling: expected PoolLimits"):
        PoolsConfig(sampling=3)  # type: ignore[arg-type]


def test_ca_file_accepts_path(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    assert make(ca_file=bundle).ca_file == str(bundle)


def test_wire_format_json() -> None:
    assert make(wire_format="json").wire_format == "json"


def test_replace_validates_and_merges() -> None:
    c = make(retry={"max_retries": 3})
    d = c.replace(retry={"jitter": 0.0}, telemetry=False)
    assert d.retry.max_retries == 3 and d.retry.jitter == 0.0 and d.telemetry is False
    assert c.retry.jitter == 0.25 and c.telemetry is True  # the original is untouched
    with pytest.raises(ConfigError, match=r"^retry\.jitter"):
        c.replace(retry={"jitter": 2})


def test_json_round_trip() -> None:
    c = make(tags=("a",), pools={"training": PoolLimits(max_connections=3, max_keepalive=1)})
    assert msgspec.json.decode(msgspec.json.encode(c), type=Config) == c


# --------------------------------------------------------------------------------------------------------------------
# TOML
# --------------------------------------------------------------------------------------------------------------------

GOOD_TOML = """
api_key = "tml-from-the-file-123"
base_url = "http://127.0.0.1:9000/"
project_id = "proj-file"
tags = ["t1", "t2"]
telemetry = false
wire_format = "json"
heartbeat_interval_s = 5

[retry]
max_retries = 3
jitter = 0.0

[circuit_breaker]
failure_threshold = 2
timeout_s = 1.5

[batching]
enabled = false
window_ms = 0

[metrics]
snapshot_interval_s = 10
significant_figures = 2

[timeouts]
request_s = 30

[pools.training]
max_connections = 8
max_keepalive = 4
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tinkex.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_from_toml_good(tmp_path: Path) -> None:
    c = Config.from_toml(write(tmp_path, GOOD_TOML), env={})
    assert c.api_key == "tml-from-the-file-123"
    assert c.base_url == "http://127.0.0.1:9000"
    assert c.project_id == "proj-file"
    assert c.tags == ("t1", "t2")
    assert c.telemetry is False and c.wire_format == "json" and c.heartbeat_interval_s == 5.0
    assert c.retry.max_retries == 3 and c.retry.jitter == 0.0 and c.retry.base_delay_s == 0.5
    assert c.circuit_breaker == CircuitBreakerConfig(failure_threshold=2, timeout_s=1.5)
    assert c.batching.enabled is False and c.batching.window_ms == 0.0
    assert c.metrics.snapshot_interval_s == 10.0 and c.metrics.significant_figures == 2
    assert c.timeouts.request_s == 30.0 and c.timeouts.connect_s == 5.0
    assert c.pools.training == PoolLimits(max_connections=8, max_keepalive=4)
    assert c.pools.sampling == PoolsConfig().sampling


def test_from_toml_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_TOML)
    env = {"TINKER_API_KEY": ENV_KEY, "TINKER_TAGS": "env", "TINKEX_CIRCUIT_BREAKER": "off", "TINKER_PROJECT_ID": "pe"}
    c = Config.from_toml(path, env=env, project_id="proj-arg", retry={"max_retries": 1})
    assert c.api_key == "tml-from-the-file-123"  # file > env
    assert c.tags == ("t1", "t2")  # file > env
    assert c.circuit_breaker.enabled is False  # env fills what the file leaves out
    assert c.circuit_breaker.failure_threshold == 2  # ...while the file's other values stay
    assert c.project_id == "proj-arg"  # arguments > file
    assert c.retry.max_retries == 1 and c.retry.jitter == 0.0


def test_from_toml_key_from_environment(tmp_path: Path) -> None:
    c = Config.from_toml(write(tmp_path, "[retry]\nmax_retries = 2\n"), env={"TINKER_API_KEY": ENV_KEY})
    assert c.api_key == ENV_KEY and c.retry.max_retries == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('colour = "blue"', "unknown config key 'colour'"),
        ("[retry]\nmax_retriez = 3", "unknown config key 'retry.max_retriez'"),
        ("[breaker]\nenabled = true", "unknown config key 'breaker'"),
        ("[pools.gpu]\nmax_connections = 1", "unknown config key 'pools.gpu'"),
        ("[pools.training]\nmax_conns = 1", "unknown config key 'pools.training.max_conns'"),
        ("retry = 3", "retry: expected `object`, got 3"),
        ("[circuit_breaker]\nfailure_threshold = -1", "circuit_breaker.failure_threshold: expected `int` >= 1, got -1"),
        ('[circuit_breaker]\nenabled = "no"', "circuit_breaker.enabled: expected `bool`, got 'no'"),
        ("[retry]\nmax_retries = 2.5", "retry.max_retries: expected `int` >= 0, got 2.5"),
        ("[batching]\nwindow_ms = -1", "batching.window_ms: expected `float` >= 0.0, got -1"),
        ("[metrics]\nsignificant_figures = 9", "metrics.significant_figures: expected `int` <= 5, got 9"),
        ('[timeouts]\nconnect_s = "5"', "timeouts.connect_s: expected `float` > 0, got '5'"),
        ("[timeouts]\nfinish_s = nan", "timeouts.finish_s: expected `float` > 0.0, got nan"),
        ("[timeouts]\nfinish_s = inf", "timeouts.finish_s: expected a finite `float` > 0, got inf"),
        ("[pools.training]\nmax_connections = 0", "pools.training.max_connections: expected `int` >= 1, got 0"),
        (
            "[pools.training]\nmax_keepalive = 200",
            "pools.training.max_keepalive: expected int <= max_connections (100), got 200",
        ),
        ("tags = [1, 2]", "tags[0]: expected `str`, got 1"),
        ('wire_format = "xml"', "wire_format: expected 'proto' or 'json', got 'xml'"),
        ('base_url = "localhost"', "base_url: expected an http:// or https:// URL, got 'localhost'"),
        ("telemetry = 0", "telemetry: expected `bool`, got 0"),
    ],
)
def test_from_toml_bad(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, f'api_key = "{KEY}"\n{text}\n')
    with pytest.raises(ConfigError) as info:
        Config.from_toml(path, env={})
    assert str(info.value) == message
    assert type(info.value) is ConfigError
    # ``key`` names the offending setting: the quoted name, or the text before the first ": " (without an index).
    expected_key = message.split("'")[1] if message.startswith("unknown") else message.split(": ")[0].split("[")[0]
    assert info.value.key == expected_key


def test_from_toml_bad_key_not_revealed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_toml(write(tmp_path, 'api_key = "bogus-SECRET-9876"\n'), env={})
    assert str(info.value).startswith("api_key:")
    assert "SECRET" not in str(info.value)


def test_from_toml_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        Config.from_toml(write(tmp_path, "this is = = not toml"), env={})


def test_from_toml_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        Config.from_toml(tmp_path / "nope.toml", env={"TINKER_API_KEY": KEY})
    assert info.value.key is None


# --------------------------------------------------------------------------------------------------------------------
# Bounded responses: timeouts.total_s, max_response_bytes; ports in base_url
# --------------------------------------------------------------------------------------------------------------------


def test_total_deadline_and_response_cap_defaults() -> None:
    c = make()
    assert c.timeouts.total_s is None and c.timeouts.effective_total_s == 120.0  # 2 x request_s
    assert make(timeouts={"request_s": 90}).timeouts.effective_total_s == 180.0
    assert make(timeouts={"total_s": 300}).timeouts.effective_total_s == 300.0
    assert c.max_response_bytes == 256 * 1024 * 1024


def test_total_deadline_may_not_cut_long_polls_short() -> None:
    with pytest.raises(ConfigError) as info:
        make(timeouts={"total_s": 30})
    assert str(info.value).startswith("timeouts.total_s: expected float >= retrieve_future_s (45)")
    assert info.value.key == "timeouts.total_s"
    assert make(timeouts={"total_s": 2, "retrieve_future_s": 1}).timeouts.total_s == 2.0


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (1023, "expected `int` >= 1024, got 1023"),
        (2.0**20, "expected `int` >= 1024, got 1048576.0"),
        (True, "got True"),
    ],
)
def test_max_response_bytes_validation(value: object, detail: str) -> None:
    with pytest.raises(ConfigError, match=detail) as info:
        make(max_response_bytes=value)
    assert info.value.key == "max_response_bytes"


def test_total_deadline_and_response_cap_from_toml_and_env(tmp_path: Path) -> None:
    toml = f'api_key = "{KEY}"\nmax_response_bytes = 4096\n[timeouts]\ntotal_s = 90\n'
    c = Config.from_toml(write(tmp_path, toml), env={})
    assert c.max_response_bytes == 4096 and c.timeouts.total_s == 90.0
    env = {"TINKEX_TIMEOUT_TOTAL_S": "75.5", "TINKEX_MAX_RESPONSE_BYTES": "2048"}
    c = Config.create(KEY, env=env)
    assert c.timeouts.total_s == 75.5 and c.max_response_bytes == 2048
    # arguments and the file beat the environment
    assert Config.create(KEY, env=env, max_response_bytes=8192).max_response_bytes == 8192
    assert Config.from_toml(write(tmp_path, toml), env=env).timeouts.total_s == 90.0
    for name, raw in (("TINKEX_TIMEOUT_TOTAL_S", "soon"), ("TINKEX_MAX_RESPONSE_BYTES", "1.5")):
        with pytest.raises(ConfigError) as info:
            Config.create(KEY, env={name: raw})
        assert info.value.key == name and repr(raw) in str(info.value)
    with pytest.raises(ConfigError, match=r"^max_response_bytes: expected `int` >= 1024, got 10$"):
        Config.create(KEY, env={"TINKEX_MAX_RESPONSE_BYTES": "10"})


@pytest.mark.parametrize(
    "bad", ["http://127.0.0.1:99999", "https://h.example:65536/x", "http://h.example:-1", "http://h:x"]
)
def test_base_url_port_out_of_range(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"^base_url: expected a numeric port in 0-65535, got ") as info:
        make(base_url=bad)
    assert info.value.key == "base_url"
