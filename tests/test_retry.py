"""Unit tests for tinkex_trio._retry (pure: no trio)."""

from __future__ import annotations

import email.utils
import random

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinkex_trio._config import RetryConfig
from tinkex_trio._retry import (
    ConnectionFailure,
    RetryPolicy,
    RetryReason,
    StatusOutcome,
    header_value,
    is_retryable_status,
    outcome_from_exception,
    parse_retry_after,
    poll_backoff,
    poll_error_backoff,
)
from tinkex_trio.errors import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    InternalServerError,
    RateLimitError,
    RequestFailedError,
)

WALL = 1_700_000_000.0  # a fixed wall-clock "now" for HTTP dates


def policy(seed: int = 0, **config: float) -> RetryPolicy:
    return RetryPolicy(RetryConfig(**config), rng=random.Random(seed), wall_clock=lambda: WALL)  # type: ignore[arg-type]


def http_date(seconds_from_wall: float) -> str:
    return email.utils.formatdate(WALL + seconds_from_wall, usegmt=True)


# --------------------------------------------------------------------------------------------------------------------
# Which outcomes retry
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 501, 502, 503, 504, 529, 599])
def test_retryable_statuses(status: int) -> None:
    assert is_retryable_status(status)
    d = policy().decide(0, StatusOutcome(status), now=0.0, started_at=0.0)
    assert d.retry and d.reason is RetryReason.RETRYABLE_STATUS and d.delay > 0 and not d.from_retry_after


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 405, 410, 418, 422, 499])
def test_non_retryable_statuses(status: int) -> None:
    assert not is_retryable_status(status)
    d = policy().decide(0, StatusOutcome(status), now=0.0, started_at=0.0)
    assert not d.retry and d.reason is RetryReason.NOT_RETRYABLE and d.delay == 0.0


def test_connection_error_and_timeout_retry() -> None:
    p = policy()
    d = p.decide(0, ConnectionFailure(), 0.0, 0.0)
    assert d.retry and d.reason is RetryReason.CONNECTION_ERROR
    d = p.decide(0, ConnectionFailure(timeout=True), 0.0, 0.0)
    assert d.retry and d.reason is RetryReason.TIMEOUT


@pytest.mark.parametrize("status", [400, 404, 422, 200])
@pytest.mark.parametrize(("name", "value"), [("x-should-retry", "true"), ("X-Should-Retry", "TRUE")])
def test_x_should_retry_true_overrides(status: int, name: str, value: str) -> None:
    d = policy().decide(0, StatusOutcome(status, {name: value}), 0.0, 0.0)
    assert d.retry and d.reason is RetryReason.SERVER_SAYS_RETRY


@pytest.mark.parametrize("status", [408, 409, 429, 500, 503])
@pytest.mark.parametrize(("name", "value"), [("x-should-retry", "false"), ("X-SHOULD-RETRY", " False ")])
def test_x_should_retry_false_overrides(status: int, name: str, value: str) -> None:
    d = policy().decide(0, StatusOutcome(status, {name: value}), 0.0, 0.0)
    assert not d.retry and d.reason is RetryReason.SERVER_SAYS_NO_RETRY


@pytest.mark.parametrize("value", ["maybe", "", "1", "yes"])
def test_x_should_retry_other_values_ignored(value: str) -> None:
    p = policy()
    assert p.decide(0, StatusOutcome(503, {"x-should-retry": value}), 0.0, 0.0).retry
    assert not p.decide(0, StatusOutcome(400, {"x-should-retry": value}), 0.0, 0.0).retry


def test_x_should_retry_false_wins_even_with_retry_after() -> None:
    d = policy().decide(0, StatusOutcome(429, {"x-should-retry": "false", "retry-after": "1"}), 0.0, 0.0)
    assert not d.retry


# --------------------------------------------------------------------------------------------------------------------
# Retry-After
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After-Ms": "1500.5"}, 1.5005),
        ({"retry-after-ms": "0"}, 0.0),
        ({"retry-after": "3"}, 3.0),
        ({"Retry-After": "2.5"}, 2.5),
        ({"retry-after": "60"}, 60.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after-ms": "100", "retry-after": "7"}, 0.1),  # ms wins
        ({"retry-after-ms": "soon", "retry-after": "7"}, 7.0),  # unparseable ms falls through
        ({"retry-after": http_date(12)}, 12.0),
        ({"retry-after": http_date(0)}, 0.0),
    ],
)
def test_retry_after_honoured(headers: dict[str, str], expected: float) -> None:
    d = policy().decide(0, StatusOutcome(429, headers), 0.0, 0.0)
    assert d.retry and d.from_retry_after
    assert d.delay == pytest.approx(expected)  # pyright: ignore[reportUnknownMemberType]


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "61"},
        {"retry-after": "-1"},
        {"retry-after-ms": "60001"},
        {"retry-after-ms": "-5"},
        {"retry-after": http_date(120)},
        {"retry-after": http_date(-30)},  # in the past
        {"retry-after": "nan"},
        {"retry-after": "inf"},
        {"retry-after": "not a date"},
        {"retry-after": ""},
    ],
)
def test_retry_after_out_of_range_or_bad_ignored(headers: dict[str, str]) -> None:
    seeded = policy(seed=5)
    d = seeded.decide(0, StatusOutcome(503, headers), 0.0, 0.0)
    assert d.retry and not d.from_retry_after
    expected = policy(seed=5).backoff(0)
    assert d.delay == expected


def test_retry_after_limit_is_configurable() -> None:
    p = policy(retry_after_max_s=5.0)
    assert p.decide(0, StatusOutcome(429, {"retry-after": "5"}), 0.0, 0.0).from_retry_after
    assert not p.decide(0, StatusOutcome(429, {"retry-after": "6"}), 0.0, 0.0).from_retry_after


def test_retry_after_also_applies_with_x_should_retry_true() -> None:
    d = policy().decide(0, StatusOutcome(400, {"x-should-retry": "true", "retry-after-ms": "40"}), 0.0, 0.0)
    assert d.retry and d.delay == pytest.approx(0.04) and d.from_retry_after  # pyright: ignore[reportUnknownMemberType]


def test_parse_retry_after() -> None:
    assert parse_retry_after({}) is None
    assert parse_retry_after({"other": "1"}) is None
    assert parse_retry_after({"retry-after": "garbage"}) is None
    assert parse_retry_after({"retry-after-ms": "garbage"}) is None
    assert parse_retry_after({"RETRY-AFTER": " 4 "}) == 4.0
    assert parse_retry_after({"retry-after-ms": "inf", "retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": http_date(30)}, now=WALL) == pytest.approx(30.0)  # pyright: ignore[reportUnknownMemberType]
    assert parse_retry_after({"retry-after": http_date(-30)}, now=WALL) == pytest.approx(-30.0)  # pyright: ignore[reportUnknownMemberType]
    # Not range-checked here: that is the policy's job.
    assert parse_retry_after({"retry-after": "3600"}) == 3600.0


def test_parse_retry_after_with_httpx_headers() -> None:
    headers = httpx.Headers({"Retry-After-Ms": "1250"})
    assert parse_retry_after(headers) == 1.25
    assert header_value(headers, "retry-after-ms") == "1250"


def test_header_value_case_insensitive_on_plain_dicts() -> None:
    assert header_value({"X-Should-Retry": "true"}, "x-should-retry") == "true"
    assert header_value({"a": "1"}, "b") is None


# --------------------------------------------------------------------------------------------------------------------
# Backoff
# --------------------------------------------------------------------------------------------------------------------


def test_backoff_formula_with_seeded_rng() -> None:
    p = policy(seed=1234)
    reference = random.Random(1234)
    for attempt in range(10):
        d = p.decide(attempt, StatusOutcome(503), now=0.0, started_at=0.0)
        base = min(0.5 * 2**attempt, 10.0)
        assert d.retry
        assert d.delay == pytest.approx(base * (1 - 0.25 * reference.random()))  # pyright: ignore[reportUnknownMemberType]


def test_backoff_without_jitter_is_exact() -> None:
    p = policy(jitter=0.0, max_retries=20, retry_budget_s=10_000)
    delays = [p.decide(k, ConnectionFailure(), 0.0, 0.0).delay for k in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_backoff_uses_config() -> None:
    p = policy(jitter=0.0, base_delay_s=0.1, max_delay_s=0.35)
    assert [p.backoff(k) for k in range(4)] == [0.1, 0.2, 0.35, 0.35]


def test_backoff_huge_index_does_not_overflow() -> None:
    assert policy(jitter=0.0).backoff(10**9) == 10.0


@given(attempt=st.integers(0, 9), seed=st.integers(0, 2**32 - 1), jitter=st.floats(0.0, 1.0))
def test_backoff_bounds(attempt: int, seed: int, jitter: float) -> None:
    d = policy(seed=seed, jitter=jitter).decide(attempt, StatusOutcome(500), 0.0, 0.0)
    base = min(0.5 * 2**attempt, 10.0)
    assert d.retry
    assert base * (1 - jitter) - 1e-12 <= d.delay <= base


def test_jitter_varies_between_calls() -> None:
    p = policy(seed=7)
    delays = {p.backoff(3) for _ in range(20)}
    assert len(delays) > 1


# --------------------------------------------------------------------------------------------------------------------
# Limits: attempts and budget
# --------------------------------------------------------------------------------------------------------------------


def test_max_retries() -> None:
    p = policy()
    assert all(p.decide(k, StatusOutcome(429), 0.0, 0.0).retry for k in range(10))
    d = p.decide(10, StatusOutcome(429), 0.0, 0.0)
    assert not d.retry and d.reason is RetryReason.MAX_RETRIES and d.delay == 0.0


def test_zero_retries() -> None:
    d = policy(max_retries=0).decide(0, ConnectionFailure(), 0.0, 0.0)
    assert not d.retry and d.reason is RetryReason.MAX_RETRIES


def test_budget_exhausted() -> None:
    p = policy(jitter=0.0, retry_budget_s=300.0)
    # 299.6 s in, a 0.5 s backoff would end at 300.1 s: give up.
    d = p.decide(0, StatusOutcome(503), now=1299.6, started_at=1000.0)
    assert not d.retry and d.reason is RetryReason.BUDGET_EXHAUSTED
    # Ending exactly on the budget is still allowed.
    d = p.decide(0, StatusOutcome(503), now=1299.5, started_at=1000.0)
    assert d.retry and d.delay == 0.5


def test_budget_applies_to_retry_after() -> None:
    p = policy(retry_budget_s=100.0)
    assert not p.decide(0, StatusOutcome(429, {"retry-after": "30"}), now=80.0, started_at=0.0).retry
    assert p.decide(0, StatusOutcome(429, {"retry-after": "30"}), now=70.0, started_at=0.0).retry


def test_non_retryable_reported_before_limits() -> None:
    d = policy().decide(99, StatusOutcome(404), now=10_000.0, started_at=0.0)
    assert d.reason is RetryReason.NOT_RETRYABLE


def test_default_policy() -> None:
    p = RetryPolicy()
    assert p.config == RetryConfig()
    d = p.decide(0, StatusOutcome(500), 0.0, 0.0)
    assert d.retry and 0.375 <= d.delay <= 0.5


# --------------------------------------------------------------------------------------------------------------------
# Outcomes from exceptions
# --------------------------------------------------------------------------------------------------------------------


def test_outcome_from_exception() -> None:
    err = RateLimitError(status_code=429, headers={"Retry-After": "2"})
    outcome = outcome_from_exception(err)
    assert outcome == StatusOutcome(429, {"retry-after": "2"})
    assert outcome is not None
    assert policy().decide(0, outcome, 0.0, 0.0).delay == 2.0
    assert outcome_from_exception(InternalServerError(status_code=502)) == StatusOutcome(502, {})
    assert outcome_from_exception(BadRequestError(status_code=400)) == StatusOutcome(400, {})
    assert outcome_from_exception(APITimeoutError()) == ConnectionFailure(timeout=True)
    assert outcome_from_exception(APIConnectionError()) == ConnectionFailure(timeout=False)


@pytest.mark.parametrize("exc", [ValueError("x"), RequestFailedError("failed"), KeyboardInterrupt(), GeneratorExit()])
def test_other_exceptions_are_not_outcomes(exc: BaseException) -> None:
    assert outcome_from_exception(exc) is None


# --------------------------------------------------------------------------------------------------------------------
# Polling backoffs
# --------------------------------------------------------------------------------------------------------------------


def test_poll_backoff() -> None:
    assert [poll_backoff(n) for n in range(8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert poll_backoff(10**6) == 30.0
    assert poll_backoff(-3) == 1.0


def test_poll_error_backoff_without_jitter() -> None:
    assert [poll_error_backoff(n, jitter=0.0) for n in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert poll_error_backoff(10**6, jitter=0.0) == 5.0


def test_poll_error_backoff_seeded_and_never_zero() -> None:
    rng, reference = random.Random(99), random.Random(99)
    for n in range(8):
        delay = poll_error_backoff(n, rng)
        base = min(0.25 * 2**n, 5.0)
        assert delay == pytest.approx(base * (1 - 0.25 * reference.random()))  # pyright: ignore[reportUnknownMemberType]
        assert delay >= 0.75 * 0.25
