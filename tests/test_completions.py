"""The batched completion poller (``retrieve_futures``, protocol §6): the bookkeeping without trio, then the poller
against the in-process simulator under trio's MockClock (``_simkit``).

With ``client_config.sample_use_retrieve_futures`` a sample's future waits for its id in its sampling session's
completions (one ``retrieve_futures`` long-poll for all of them) and then fetches its payload with one
``retrieve_future`` call.
"""

# pyright: reportPrivateUsage=false

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from _simkit import API_KEY, BASE_URL, Reply, SimStack, sim_config, sim_stack

from tinkex_trio import types as t
from tinkex_trio._completions import CompletionState
from tinkex_trio._polling import MAX_BAD_REPLY_RETRIES, MAX_BAD_REQUEST_RETRIES
from tinkex_trio._pool_set import PoolKind
from tinkex_trio._sampling import SamplingClient
from tinkex_trio._session import open_session
from tinkex_trio.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    RequestErrorCategory,
    RequestFailedError,
    ResponseValidationError,
    SessionClosedError,
    TinkexError,
    TLSError,
)
from tinkex_trio.sim import FaultConfig
from tinkex_trio.sim._config import ServiceTime

SID = "sess:sample:0"
BASE = "Qwen/Qwen3-8B"
PROMPT = t.ModelInput.from_ints([1, 2, 3, 4, 5, 6, 7, 8])
BATCHED = {"sample_use_retrieve_futures": True}


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


# -- against the simulator -------------------------------------------------------------------------------------------


def polls(sim: SimStack) -> tuple[int, int]:
    """(retrieve_future requests, retrieve_futures requests) seen by the server."""
    return len(sim.rec.requests("retrieve_future")), len(sim.rec.requests("retrieve_futures"))


def as_json(response: httpx.Response) -> Any:
    return response.json()


def outputs(response: t.SampleResponse) -> list[tuple[list[int], list[float] | None, str]]:
    return [(s.tokens, s.logprobs, s.stop_reason) for s in response.sequences]


async def sampler_for(session: Any) -> SamplingClient:
    return await session.create_sampling_client(base_model=BASE)


async def sample_many(sampler: SamplingClient, n: int) -> list[t.SampleResponse]:
    out: list[t.SampleResponse | None] = [None] * n

    async def one(i: int) -> None:
        out[i] = await sampler.sample(PROMPT, num_samples=2, sampling_params=t.SamplingParams(max_tokens=6, seed=i))

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return [r for r in out if r is not None]


async def run_concurrent(client_config: dict[str, Any], n: int = 50) -> tuple[list[t.SampleResponse], int, int]:
    # A 2 s long poll: a sample waiting ~10 s long-polls retrieve_future about 5 times when polled alone.
    async with sim_stack(sim_config(client_config=client_config, long_poll_s=2.0)) as sim:
        async with sim.session() as session:
            results = await sample_many(await sampler_for(session), n)
            assert session._ctx.futures.pending_count == 0
        return (results, *polls(sim))


async def test_concurrent_samples_share_one_long_poll(autojump_clock: trio.testing.MockClock) -> None:
    batched, single, many = await run_concurrent(BATCHED)
    alone, single_alone, many_alone = await run_concurrent({})
    assert len(batched) == 50
    # One payload fetch per sample, plus a long poll per batch of completions (and an ack-only poll at the end) ...
    assert single == 50
    assert 1 <= many <= 25
    # ... where per-future polling long-polls several times per sample.
    assert many_alone == 0 and single_alone > 3 * 50
    assert single + many < (single_alone + many_alone) / 2
    # Same seeds, same sampler: the same results either way (but for the server's request ids).
    assert [outputs(r) for r in batched] == [outputs(r) for r in alone]


async def test_poller_protocol(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config(client_config=BATCHED)) as sim, sim.session() as session:
        sampler = await sampler_for(session)
        await sample_many(sampler, 3)
        [poller] = session._ctx.futures.completion_pollers.values()
        assert poller.sampling_session_id == sampler.sampling_session_id
        await trio.sleep(100)  # nothing waits and everything is acknowledged: the poller sends nothing
        assert poller.waiting_count == 0 and not poller.state.wants_poll()
    bodies = [s.json() for s in sim.rec.requests("retrieve_futures")]
    target = {"type": "sampling_session", "sampling_session_id": sampler.sampling_session_id, "cloned_sampler_id": 0}
    assert all(b["target"] == target for b in bodies)
    cursors = [b["prev_cursor"] for b in bodies]
    assert cursors[0] == 0 and cursors == sorted(cursors) and cursors[-1] >= 1
    acked = [rid for b in bodies for rid in b["retrieved_request_ids"]]
    fetched = [s.json() for s in sim.rec.requests("retrieve_future")]
    assert sorted(acked) == sorted(f["request_id"] for f in fetched)  # every fetched id acknowledged once
    assert "timeout" not in bodies[0]  # a long poll while samples wait
    assert bodies[-1]["timeout"] == 0 and bodies[-1]["retrieved_request_ids"]  # the last one only acknowledged
    # The size was known: each payload in one fetch, not complete_metadata first.
    assert all(f["allow_metadata_only"] is False for f in fetched)


async def test_a_failed_sample_raises_the_typed_error(autojump_clock: trio.testing.MockClock) -> None:
    config = sim_config(client_config=BATCHED, faults=FaultConfig(future_failure_rate=1.0))
    async with sim_stack(config) as sim, sim.session() as session:
        sampler = await sampler_for(session)
        with pytest.raises(RequestFailedError) as info:
            await sampler.sample(PROMPT)
        assert info.value.category is RequestErrorCategory.SERVER
        [poller] = session._ctx.futures.completion_pollers.values()
        assert poller.waiting_count == 0
    # The failure came through retrieve_futures; one retrieve_future read it.
    events = sim.app.state.samplers[sampler.sampling_session_id].completions
    assert [e["completion"] for e in events] == [{"state": "failed", "request_id": info.value.request_id}]
    [fetch] = sim.rec.requests("retrieve_future")
    assert fetch.json() == {"request_id": info.value.request_id, "allow_metadata_only": True}
    assert sim.rec.requests("retrieve_futures")[-1].json()["retrieved_request_ids"] == [info.value.request_id]


@pytest.mark.parametrize(("status", "error"), [(401, AuthenticationError), (400, BadRequestError)])
async def test_a_fatal_poller_error_fails_every_waiter(
    autojump_clock: trio.testing.MockClock, status: int, error: type[Exception]
) -> None:
    async with sim_stack(sim_config(client_config=BATCHED)) as sim, sim.session() as session:
        sampler = await sampler_for(session)
        # Answered after 0.5 s: all three samples wait on the first poll.
        sim.rec.script("retrieve_futures", *[Reply(status, {"detail": "no"}, delay=0.5)] * (4 if status == 400 else 1))
        failures: list[BaseException] = []

        async def one() -> None:
            try:
                await sampler.sample(PROMPT)
            except Exception as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(one)
        assert len(failures) == 3 and all(type(f) is error for f in failures)
        assert len({id(f) for f in failures}) == 3  # each waiter raises its own copy
        # 400: three retries, each a second after the answer, then the fourth answer fails the waiters; 401 at once.
        seen = sim.rec.requests("retrieve_futures")
        assert len(seen) == (4 if status == 400 else 1)
        assert [b.at - a.at for a, b in itertools.pairwise(seen)] == [1.5] * (len(seen) - 1)
        assert sim.rec.requests("retrieve_future") == []
        # The poller goes on for later samples.
        assert (await sampler.sample(PROMPT)).sequences
        assert session._ctx.futures.pending_count == 0


async def test_retryable_poller_errors_are_retried_after_a_second(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config(client_config=BATCHED)) as sim, sim.session() as session:
        sampler = await sampler_for(session)
        sim.rec.script(
            "retrieve_futures", Reply(503, {"detail": "busy"}), Reply(429, {"detail": "slow down"}), Reply(500, {})
        )
        assert (await sampler.sample(PROMPT)).sequences
        seen = sim.rec.requests("retrieve_futures")
        assert [s.status for s in seen[:4]] == [503, 429, 500, 200]
        assert [b.at - a.at for a, b in itertools.pairwise(seen[:4])] == [1.0, 2.0, 4.0]
        assert len(sim.rec.requests("retrieve_future")) == 1


async def test_404_falls_back_to_per_future_polling_and_is_remembered(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config(client_config=BATCHED)) as sim, sim.session() as session:
        sampler = await sampler_for(session)
        sim.rec.script("retrieve_futures", Reply(404, {"detail": "Not Found"}))
        results = await sample_many(sampler, 3)
        assert len(results) == 3
        futures = session._ctx.futures
        assert futures.batched_unsupported and futures.completion_pollers == {}
        assert (await sampler.sample(PROMPT)).sequences
        assert futures.pending_count == 0
    assert len(sim.rec.requests("retrieve_futures")) == 1  # never asked again
    assert len(sim.rec.requests("retrieve_future")) >= 4  # each sample polled alone


async def test_cancelled_samples_leave_nothing_pending(autojump_clock: trio.testing.MockClock) -> None:
    config = sim_config(client_config=BATCHED, service=ServiceTime(base_s=5.0, per_token_s=0.0))
    async with sim_stack(config) as sim, sim.session() as session:
        sampler = await sampler_for(session)
        with trio.move_on_after(2.0) as scope:
            await sample_many(sampler, 8)
        assert scope.cancelled_caught
        futures = session._ctx.futures
        [poller] = futures.completion_pollers.values()
        assert futures.pending_count == 8 and poller.waiting_count == 8  # the waits were cancelled, not the futures
        await trio.sleep(60)
        assert futures.pending_count == 0 and poller.waiting_count == 0 and not poller.state.wants_poll()
        quiet = len(sim.rec.requests("retrieve_futures"))
        await trio.sleep(120)
        assert len(sim.rec.requests("retrieve_futures")) == quiet  # idle: no long polls for nobody
    assert len(sim.rec.requests("retrieve_future")) == 8


async def test_session_close_fails_pending_samples(autojump_clock: trio.testing.MockClock) -> None:
    config = sim_config(client_config=BATCHED, service=ServiceTime(base_s=1000.0, per_token_s=0.0))
    async with sim_stack(config) as sim, sim.session() as session:
        sampler = await sampler_for(session)
        errors: list[BaseException] = []

        async def one() -> None:
            try:
                await sampler.sample(PROMPT)
            except SessionClosedError as exc:
                errors.append(exc)

        futures = session._ctx.futures
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(one)
            await trio.sleep(5)
            assert futures.pending_count == 3
            await futures.aclose()
        assert len(errors) == 3
        assert futures.pending_count == 0 and futures.completion_pollers == {}  # the poller stopped too
        with pytest.raises(SessionClosedError):
            await sampler.sample(PROMPT)
    assert sim.rec.requests("retrieve_future") == []


async def test_block_exit_fails_a_pending_sample_future(autojump_clock: trio.testing.MockClock) -> None:
    config = sim_config(client_config=BATCHED, service=ServiceTime(base_s=1000.0, per_token_s=0.0))
    async with sim_stack(config) as sim:
        async with sim.session() as session:
            sampler = await sampler_for(session)
            reply = await session._transport.request_json(
                t.UntypedAPIFuture,
                PoolKind.SAMPLING,
                "POST",
                "/api/v1/asample",
                json=t.SampleRequest(
                    prompt=PROMPT,
                    sampling_params=t.SamplingParams(max_tokens=4),
                    sampling_session_id=sampler.sampling_session_id,
                    seq_id=0,
                ),
            )
            fut = session._ctx.futures.track(reply, "Sample", as_json, sampling_session_id=sampler.sampling_session_id)
            await trio.sleep(1)
        with pytest.raises(SessionClosedError, match="session closed"):
            await fut.result()
        assert session._ctx.futures.completion_pollers == {}


class _InterruptPoll:
    """ASGI middleware: a KeyboardInterrupt inside the first retrieve_futures request (in the poller's task)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.fired = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/retrieve_futures") and not self.fired:
            self.fired = True
            await trio.sleep(1)
            raise KeyboardInterrupt
        await self.app(scope, receive, send)


async def test_keyboard_interrupt_in_the_poller_ends_the_session_as_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with sim_stack(sim_config(client_config=BATCHED)) as sim:
        interrupt = _InterruptPoll(sim.rec)
        outcomes: list[BaseException] = []

        def factory(pool: PoolKind) -> httpx.AsyncBaseTransport:
            return httpx.ASGITransport(app=interrupt)

        with pytest.raises(KeyboardInterrupt) as info:
            async with open_session(API_KEY, BASE_URL, transport_factory=factory) as session:
                sampler = await sampler_for(session)
                try:
                    await sampler.sample(PROMPT)
                except BaseException as exc:
                    outcomes.append(exc)
                    raise
        assert type(info.value) is KeyboardInterrupt and interrupt.fired
        # The waiting sample was cancelled (not failed by the poller); its future then failed with the session.
        assert [type(o) for o in outcomes] == [trio.Cancelled]
        assert session._ctx.futures.pending_count == 0 and session._ctx.futures.closed
