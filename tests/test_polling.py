"""The poll loop's decisions without trio (``_polling.PollState``): every answer's wait, or the future's failure."""

from __future__ import annotations

import random

import pytest

from tinkex_trio._polling import (
    BILLING_RETRY_DELAY_S,
    MAX_BAD_REPLY_RETRIES,
    MAX_BAD_REQUEST_RETRIES,
    TRY_AGAIN_MIN_INTERVAL_S,
    PollState,
)
from tinkex_trio.errors import (
    BadRequestError,
    BillingError,
    GoneError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    ResponseValidationError,
)


def state(max_delay_s: float = 10.0, billing_pause_s: float = 12.0) -> PollState:
    return PollState(
        max_delay_s=max_delay_s, retry_after_max_s=60.0, billing_pause_s=billing_pause_s, rng=random.Random(1)
    )


def test_connection_errors_back_off_exponentially_capped_and_reset_on_an_answer() -> None:
    s = state(max_delay_s=5.0)
    assert [s.after_connection_error() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    s.after_answer()
    assert s.after_connection_error() == 1.0


def test_a_429_waits_at_least_its_retry_after() -> None:
    s = state()
    assert s.after_status(RateLimitError(status_code=429, retry_after=7.0), now=0.0) == 7.0
    assert s.after_status(RateLimitError(status_code=429), now=0.0) == 2.0


def test_server_errors_back_off_briefly_and_growing() -> None:
    s = state()
    delays = [s.after_status(InternalServerError(status_code=503), now=0.0) for _ in range(4)]
    assert all(0.0 < d <= 5.0 for d in delays) and delays[-1] > delays[0]


def test_400_is_repolled_three_times_in_a_row_then_fails() -> None:
    s = state()
    error = BadRequestError(status_code=400)
    assert [s.after_status(error, now=0.0) for _ in range(MAX_BAD_REQUEST_RETRIES)] == [0.0] * 3
    with pytest.raises(BadRequestError):
        s.after_status(error, now=0.0)


def test_402_waits_while_the_billing_pause_lasts() -> None:
    s = state(billing_pause_s=12.0)
    error = BillingError(status_code=402)
    assert s.after_status(error, now=100.0) == BILLING_RETRY_DELAY_S
    assert s.after_status(error, now=105.0) == BILLING_RETRY_DELAY_S
    with pytest.raises(BillingError):
        s.after_status(error, now=110.0)


@pytest.mark.parametrize("error", [GoneError(status_code=410), NotFoundError(status_code=404)], ids=["410", "404"])
def test_other_4xx_fail_the_future(error: Exception) -> None:
    with pytest.raises(type(error)):
        state().after_status(error, now=0.0)  # type: ignore[arg-type]


def test_unreadable_answers_are_repolled_up_to_the_cap() -> None:
    s = state()
    error = ResponseValidationError("garbage")
    for _ in range(MAX_BAD_REPLY_RETRIES):
        assert 0.0 < s.after_bad_reply(error) <= 10.0
    with pytest.raises(ResponseValidationError):
        s.after_bad_reply(error)


def test_try_again_is_repolled_at_once_unless_the_server_keeps_answering_at_once() -> None:
    s = state()
    assert s.after_try_again(30.0) == 0.0  # a long poll
    assert s.after_try_again(0.001) == 0.0  # the first quick one
    assert s.after_try_again(0.01) == pytest.approx(TRY_AGAIN_MIN_INTERVAL_S - 0.01)
    assert s.after_try_again(1.0) == 0.0  # long-polling again: back to at once
    assert s.after_try_again(0.0) == 0.0
