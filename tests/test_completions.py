"""The batched completion poller (``retrieve_futures``, protocol §6): the bookkeeping without trio, then the poller
against the in-process simulator under trio's MockClock (``_simkit``).

With ``client_config.sample_use_retrieve_futures`` a sample's future waits for its id in its sampling session's
completions (one ``retrieve_futures`` long-poll for all of them) and then fetches its payload with one
``retrieve_future`` call.
"""

# pyright: reportPrivateUsage=false

from __future__ import annotations

import pytest

from tinkex_trio import types as t
from tinkex_trio._completions import CompletionState
from tinkex_trio._polling import MAX_BAD_REPLY_RETRIES, MAX_BAD_REQUEST_RETRIES
from tinkex_trio.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    ResponseValidationError,
    TinkexError,
    TLSError,
)

SID = "sess:sample:0"


def finished(rid: str, size: int | None = 10) -> t.FutureFinished:
    return t.FutureFinished(request_id=rid, response_payload_uncompressed_size=size)


def answer(cursor: int, *completions: t.FutureCompletion) -> t.FuturesRetrieveResponse:
    return t.FuturesRetrieveResponse(completions=list(completions), cursor=cursor)


# -- the bookkeeping, without trio -------------------------------------------------------------------------------------


def test_cursor_waiters_and_long_poll() -> None:
    state = CompletionState(SID)
    assert not state.wants_poll()
    assert state.register("a") is None and state.register("b") is None
    assert state.wants_poll()
    first = state.next_request()
    assert first.target.sampling_session_id == SID and first.target.cloned_sampler_id == 0
    assert (first.prev_cursor, first.timeout, first.retrieved_request_ids) == (0, None, [])  # a long poll from 0
    woken = state.on_response(answer(3, finished("x"), finished("a"), t.FutureFailed(request_id="y")))
    assert [c.request_id for c in woken] == ["a"]
    assert state.waiting == {"b"} and state.cursor == 3
    assert state.next_request().prev_cursor == 3
    # The server's cursor never goes back.
    state.on_response(answer(1))
    assert state.cursor == 3


def test_completion_before_its_waiter_is_kept() -> None:
    state = CompletionState(SID)
    state.register("other")
    state.next_request()
    state.on_response(answer(2, t.FutureFailed(request_id="early"), finished("late")))
    assert state.unclaimed_count == 2
    assert state.register("early") == t.FutureFailed(request_id="early")
    assert "early" not in state.waiting and state.unclaimed_count == 1


def test_unclaimed_completions_are_bounded() -> None:
    state = CompletionState(SID, max_unclaimed=3)
    state.on_response(answer(5, *(finished(f"r{i}") for i in range(5))))
    assert state.unclaimed_count == 3
    assert state.register("r0") is None  # the oldest were dropped
    assert state.register("r4") is not None


def test_acks_go_with_the_next_poll_and_ack_only_polls_answer_at_once() -> None:
    state = CompletionState(SID)
    state.retrieved("a")
    assert state.wants_poll()  # nothing waits, but "a" is to be acknowledged
    ack_only = state.next_request()
    assert ack_only.retrieved_request_ids == ["a"] and ack_only.timeout == 0.0
    state.retrieved("b")
    state.on_response(answer(1))
    assert state.next_request().retrieved_request_ids == ["b"]  # "a" went with the answered poll
    state.on_response(answer(1))
    assert not state.wants_poll()


def test_acks_of_a_failed_poll_are_sent_again() -> None:
    state = CompletionState(SID)
    state.register("w")
    state.retrieved("a")
    state.next_request()
    state.retrieved("b")
    state.after_error(InternalServerError(status_code=503))
    assert state.next_request().retrieved_request_ids == ["a", "b"]


def test_retryable_errors_back_off_from_one_second_capped() -> None:
    state = CompletionState(SID, max_delay_s=10.0)
    delays = [state.after_error(InternalServerError(status_code=503)) for _ in range(3)]
    delays += [state.after_error(APIConnectionError("down")), state.after_error(APITimeoutError("slow"))]
    delays.append(state.after_error(RateLimitError(status_code=429)))
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    state.on_response(answer(0))
    assert state.after_error(RateLimitError(status_code=429, retry_after=7.0)) == 7.0  # Retry-After, if longer
    assert state.after_error(InternalServerError(status_code=500)) == 2.0


def test_400_is_retried_three_times_then_fatal() -> None:
    state = CompletionState(SID)
    for _ in range(MAX_BAD_REQUEST_RETRIES):
        assert state.after_error(BadRequestError(status_code=400)) == 1.0
    with pytest.raises(BadRequestError):
        state.after_error(BadRequestError(status_code=400))
    # An answer ends the run.
    state.on_response(answer(0))
    assert state.after_error(BadRequestError(status_code=400)) == 1.0


def test_unreadable_answers_are_retried_then_fatal() -> None:
    state = CompletionState(SID)
    for _ in range(MAX_BAD_REPLY_RETRIES):
        state.after_error(ResponseValidationError("garbage"))
    with pytest.raises(ResponseValidationError):
        state.after_error(ResponseValidationError("garbage"))


@pytest.mark.parametrize(
    "error", [AuthenticationError(status_code=401), NotFoundError(status_code=404), TLSError("bad certificate")]
)
def test_other_errors_are_fatal_and_drop_the_acks(error: TinkexError) -> None:
    state = CompletionState(SID)
    state.register("w")
    state.retrieved("a")
    state.next_request()
    with pytest.raises(type(error)):
        state.after_error(error)
    state.forget("w")
    assert not state.wants_poll()  # a failing server is not sent the acks forever


def test_404_means_unsupported() -> None:
    assert CompletionState.is_unsupported(NotFoundError(status_code=404))
    assert not CompletionState.is_unsupported(InternalServerError(status_code=503))
