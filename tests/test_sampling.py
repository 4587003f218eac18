"""SamplingClient against the simulator in process, under trio's MockClock.

The Recorder in front of the simulator (``_simkit``) sees every asample submission with its body and time, and can
answer the next requests to an endpoint with scripted replies (429 backpressure, 5xx, 410, ...) before the simulator
sees them; the times it notes are exact under the MockClock, so waits and backoffs are checked precisely.
"""

# pyright: reportPrivateUsage=false

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from _simkit import API_KEY, BASE_URL, JsonOnly, Reply, Seen, SimStack, sim_config, sim_stack

from tinkex_trio import types as t
from tinkex_trio._breaker_types import BreakerState
from tinkex_trio._config import CircuitBreakerConfig, Config, RetryConfig
from tinkex_trio._sampling import (
    BACKPRESSURE_INFLIGHT_SUBMISSIONS,
    BACKPRESSURE_MIN_WAIT_S,
    MAX_INFLIGHT_SUBMISSIONS,
    SamplingClient,
    _SubmissionGate,
)
from tinkex_trio._telemetry import RETRY, TelemetryEvent
from tinkex_trio.errors import (
    APIStatusError,
    InternalServerError,
    RateLimitError,
    RequestErrorCategory,
    RequestFailedError,
    SessionClosedError,
    status_error_class,
)
from tinkex_trio.sim import Latency
from tinkex_trio.sim._config import ServiceTime

BASE = "Qwen/Qwen3-8B"
PROMPT = t.ModelInput.from_ints([1, 2, 3, 4, 5, 6, 7, 8])
PROTO = "application/x-protobuf"


@pytest.fixture
async def sim() -> AsyncGenerator[SimStack]:
    # pytest-trio takes the clock from the test's own arguments: tests using this fixture also ask for autojump_clock.
    async with sim_stack(sim_config()) as stack:
        yield stack


def submissions(sim: SimStack) -> list[Seen]:
    return sim.rec.requests("asample")


def seq_ids(sim: SimStack) -> list[int]:
    return [s.json()["seq_id"] for s in submissions(sim)]


def gaps(seen: list[Seen]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(seen)]


async def sampler_for(session: Any) -> SamplingClient:
    return await session.create_sampling_client(base_model=BASE)


# -- creation ---------------------------------------------------------------------------------------------------------


async def test_create_sampling_clients(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        first = await sampler_for(session)
        second = await sampler_for(session)
        assert first.sampling_session_id == f"{session.session_id}:sample:0"
        assert second.sampling_session_id == f"{session.session_id}:sample:1"
        bodies = [s.json() for s in sim.rec.requests("create_sampling_session")]
        assert [b["sampling_session_seq_id"] for b in bodies] == [0, 1]
        assert bodies[0]["session_id"] == session.session_id and bodies[0]["base_model"] == BASE
        assert "model_path" not in bodies[0]
        assert first.base_model == BASE and first.model_path is None
        assert repr(first) == f"<SamplingClient sampling_session_id={first.sampling_session_id!r}>"
        with pytest.raises(ValueError, match="base_model or a model_path"):
            await session.create_sampling_client()
        # Each client counts its own seq_ids from 0.
        await first.sample(PROMPT, 1, t.SamplingParams(max_tokens=2))
        await second.sample(PROMPT, 1, t.SamplingParams(max_tokens=2))
        await first.sample(PROMPT, 1, t.SamplingParams(max_tokens=2))
        assert [(s.json()["sampling_session_id"][-1], s.json()["seq_id"]) for s in submissions(sim)] == [
            ("0", 0),
            ("1", 0),
            ("0", 1),
        ]


# -- sampling ---------------------------------------------------------------------------------------------------------


async def test_sample_returns_sequences_with_their_ids(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        sampler = await sampler_for(session)
        params = t.SamplingParams(max_tokens=6, temperature=0.7, seed=11, stop=[])
        result = await sampler.sample(PROMPT, num_samples=3, sampling_params=params)
        assert len(result.sequences) == 3
        assert all(len(s.tokens) == 6 and s.stop_reason == "length" for s in result.sequences)
        assert all(s.logprobs is not None and len(s.logprobs) == 6 for s in result.sequences)
        ids = [s.sequence_id for s in result.sequences]
        assert all(i is not None for i in ids) and len(set(ids)) == 3
        prefixes = {i.rsplit(":", 1)[0] for i in ids if i is not None}
        assert len(prefixes) == 1 and [i.rsplit(":", 1)[1] for i in ids if i is not None] == ["0", "1", "2"]
        assert result.prompt_logprobs is None and result.topk_prompt_logprobs is None

        (submitted,) = submissions(sim)
        body = submitted.json()
        assert body["seq_id"] == 0 and body["num_samples"] == 3 and body["type"] == "sample"
        assert body["sampling_session_id"] == sampler.sampling_session_id
        assert body["sampling_params"]["max_tokens"] == 6 and body["sampling_params"]["seed"] == 11
        assert body["prompt_logprobs"] is False and body["topk_prompt_logprobs"] == 0
        assert submitted.headers["x-tinker-sampling-backpressure"] == "1"
        assert submitted.headers["x-sdk-method"] == "SamplingClient.sample"
        polls = sim.rec.requests("retrieve_future")
        assert polls and all(p.headers["x-tinker-request-type"] == "Sample" for p in polls)
        assert all(PROTO in p.headers["accept"] for p in polls)
        # The same seed gives the same samples.
        again = await sampler.sample(PROMPT, num_samples=3, sampling_params=params)
        assert [s.tokens for s in again.sequences] == [s.tokens for s in result.sequences]
        assert seq_ids(sim) == [0, 1]


async def test_prompt_logprobs_topk_and_compute_logprobs(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        sampler = await sampler_for(session)
        result = await sampler.sample(
            PROMPT, 1, t.SamplingParams(max_tokens=1), include_prompt_logprobs=True, topk_prompt_logprobs=3
        )
        prompt = PROMPT.to_ints()
        logprobs = result.prompt_logprobs
        assert logprobs is not None and len(logprobs) == len(prompt)
        assert logprobs[0] is None and all(x is not None and x < 0 for x in logprobs[1:])
        topk = result.topk_prompt_logprobs
        assert topk is not None and len(topk) == len(prompt) and topk[0] is None
        for position in range(1, len(prompt)):
            entry = topk[position]
            actual = logprobs[position]
            assert entry is not None and len(entry) == 3 and actual is not None
            values = [lp for _, lp in entry]
            assert values == sorted(values, reverse=True)
            assert actual <= values[0] + 1e-6
            if prompt[position] in [tok for tok, _ in entry]:
                assert dict(entry)[prompt[position]] == pytest.approx(actual, abs=1e-5)
        body = submissions(sim)[0].json()
        assert body["prompt_logprobs"] is True and body["topk_prompt_logprobs"] == 3

        scores = await sampler.compute_logprobs(PROMPT)
        assert scores == pytest.approx(logprobs)
        body = submissions(sim)[1].json()
        assert body["num_samples"] == 1 and body["prompt_logprobs"] is True
        assert body["sampling_params"]["max_tokens"] == 1 and body["seq_id"] == 1


async def test_json_wire_format(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    params = t.SamplingParams(max_tokens=5, seed=3, stop=[])
    async with sim.session() as session:
        reference = await (await sampler_for(session)).sample(PROMPT, 2, params, include_prompt_logprobs=True)
    sim.rec.seen.clear()
    config = Config(api_key=API_KEY, base_url=BASE_URL, wire_format="json")
    async with sim.session(config=config) as session:
        result = await (await sampler_for(session)).sample(PROMPT, 2, params, include_prompt_logprobs=True)
    assert [s.tokens for s in result.sequences] == [s.tokens for s in reference.sequences]
    assert result.prompt_logprobs == pytest.approx(reference.prompt_logprobs)
    assert all(s.sequence_id is not None and s.sequence_id.endswith(f":{i}") for i, s in enumerate(result.sequences))
    polls = sim.rec.requests("retrieve_future")
    assert polls and all(PROTO not in p.headers["accept"] for p in polls)


async def test_protobuf_client_understands_a_json_answer(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    params = t.SamplingParams(max_tokens=4, seed=9, stop=[])
    async with sim.session() as session:
        reference = await (await sampler_for(session)).sample(PROMPT, 2, params, topk_prompt_logprobs=2)
    sim.rec.app = JsonOnly(sim.rec.app)
    async with sim.session() as session:
        result = await (await sampler_for(session)).sample(PROMPT, 2, params, topk_prompt_logprobs=2)
    assert [s.tokens for s in result.sequences] == [s.tokens for s in reference.sequences]
    assert [s.logprobs for s in result.sequences] == [pytest.approx(s.logprobs) for s in reference.sequences]
    assert all(s.sequence_id is not None and s.sequence_id.endswith(f":{i}") for i, s in enumerate(result.sequences))


async def test_bad_arguments_and_closed_session(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        sampler = await sampler_for(session)
        with pytest.raises(ValueError, match="num_samples"):
            await sampler.sample(PROMPT, 0)
        with pytest.raises(ValueError, match="topk_prompt_logprobs"):
            await sampler.sample(PROMPT, 1, topk_prompt_logprobs=-1)
        assert submissions(sim) == []
    with pytest.raises(SessionClosedError):
        await sampler.sample(PROMPT)


# -- backpressure -----------------------------------------------------------------------------------------------------


async def test_429_is_backpressure_resubmitted_with_the_same_seq_id(
    sim: SimStack, autojump_clock: trio.testing.MockClock
) -> None:
    async with sim.session() as session:
        retries: list[TelemetryEvent] = []
        session.telemetry.attach("test", RETRY, retries.append)
        sampler = await sampler_for(session)
        sim.rec.script(
            "asample",
            Reply(429, {"detail": "slow down"}, headers={"Retry-After": "3"}),
            Reply(429, {"detail": "slow down"}),
            Reply(429, {"detail": "slow down"}, headers={"Retry-After": "0"}),
        )
        result = await sampler.sample(PROMPT, 1, t.SamplingParams(max_tokens=2))
        assert len(result.sequences) == 1
        seen = submissions(sim)
        assert [s.status for s in seen] == [429, 429, 429, 200]
        assert seq_ids(sim) == [0, 0, 0, 0]
        assert [s.body for s in seen[1:]] == [seen[0].body] * 3  # the very same request
        # Retry-After, then the default 1 s, then the floor for "Retry-After: 0".
        assert gaps(seen) == [pytest.approx(3.0), pytest.approx(1.0), pytest.approx(BACKPRESSURE_MIN_WAIT_S)]
        backpressure = [e for e in retries if e.metadata.get("reason") == "backpressure"]
        assert [e.measurements["delay_s"] for e in backpressure] == [3.0, 1.0, BACKPRESSURE_MIN_WAIT_S]
        await sampler.sample(PROMPT, 1, t.SamplingParams(max_tokens=2))
        assert seq_ids(sim)[-1] == 1


class _Inflight:
    """ASGI middleware: counts concurrent asample requests reaching the server, and the peak."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.current = 0
        self.peak = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        counted = scope["type"] == "http" and scope["path"].endswith("/asample")
        if counted:
            self.current += 1
            self.peak = max(self.peak, self.current)
        try:
            await self.app(scope, receive, send)
        finally:
            if counted:
                self.current -= 1


async def test_backpressure_limits_concurrent_submissions_for_ten_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Fast sampling (many workers, 10 ms each): the time goes into the submissions, which take 1 s each.
    config = sim_config(service=ServiceTime(base_s=0.01, workers_per_model=64))
    async with sim_stack(config) as sim, sim.session() as session:
        sampler = await sampler_for(session)
        inflight = _Inflight(sim.rec.app)
        sim.rec.app = inflight
        sim.app.config.faults.set_endpoint("asample", latency=Latency.fixed(1.0))  # each submission takes 1 s
        params = t.SamplingParams(max_tokens=1)

        async def many(n: int) -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(sampler.sample, PROMPT, 1, params)

        await many(30)
        assert inflight.peak == 30  # no limit to speak of before any backpressure

        sim.rec.script("asample", Reply(429, {"detail": "slow down"}))
        start = trio.current_time()
        await sampler.sample(PROMPT, 1, params)
        inflight.peak = 0
        await many(30)
        assert trio.current_time() - start < 10.0  # all of it inside the window
        assert inflight.peak == BACKPRESSURE_INFLIGHT_SUBMISSIONS

        await trio.sleep_until(start + 10.5)
        inflight.peak = 0
        await many(30)
        assert inflight.peak == 30  # the window is over: the full limit again
        assert len(set(seq_ids(sim))) == 91  # 30 + 1 + 30 + 30 samples, the 429 re-sent with its seq_id


async def test_backpressure_stops_at_the_retry_budget(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    config = Config(api_key=API_KEY, base_url=BASE_URL, retry=RetryConfig(retry_budget_s=5.0))
    async with sim.session(config=config) as session:
        sampler = await sampler_for(session)
        sim.rec.script("asample", *[Reply(429, {"detail": "no"}, headers={"Retry-After": "2"})] * 5)
        with pytest.raises(RateLimitError):
            await sampler.sample(PROMPT, 1, t.SamplingParams(max_tokens=1))
        assert seq_ids(sim) == [0, 0, 0]  # at 0, 2 and 4 s; waiting 2 s more would pass the 5 s budget
        assert gaps(submissions(sim)) == [pytest.approx(2.0)] * 2


def test_gate_shrinks_and_restores(autojump_clock: trio.testing.MockClock) -> None:
    async def main() -> None:
        gate = _SubmissionGate()
        assert gate.limiter.total_tokens == MAX_INFLIGHT_SUBMISSIONS
        start = trio.current_time()
        gate.backpressure(2.5)
        assert gate.limiter.total_tokens == BACKPRESSURE_INFLIGHT_SUBMISSIONS
        await gate.wait_backoff()
        assert trio.current_time() - start == pytest.approx(2.5)
        async with gate.slot():
            assert gate.limiter.borrowed_tokens == 1
        assert gate.limiter.total_tokens == BACKPRESSURE_INFLIGHT_SUBMISSIONS  # still inside the window
        await trio.sleep_until(start + 10.0)
        async with gate.slot():
            assert gate.limiter.total_tokens == MAX_INFLIGHT_SUBMISSIONS
        await gate.wait_backoff()  # no backoff pending: returns at once
        assert trio.current_time() - start == pytest.approx(10.0)

    trio.run(main, clock=autojump_clock)


# -- retries ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        Reply(503, {"detail": "busy"}),
        Reply(500, {"detail": "oops"}),
        Reply(408, {"detail": "timeout"}),
        httpx.ConnectError("connection refused"),
    ],
    ids=["503", "500", "408", "connect-error"],
)
async def test_transient_failure_retries_the_sample_with_a_new_seq_id(
    sim: SimStack, autojump_clock: trio.testing.MockClock, failure: Reply | Exception
) -> None:
    async with sim.session() as session:
        retries: list[TelemetryEvent] = []
        session.telemetry.attach("test", RETRY, retries.append)
        sampler = await sampler_for(session)
        sim.rec.script("asample", failure)
        result = await sampler.sample(PROMPT, 2, t.SamplingParams(max_tokens=3))
        assert len(result.sequences) == 2
        assert seq_ids(sim) == [0, 1]
        (gap,) = gaps(submissions(sim))
        assert 0.375 - 1e-9 <= gap <= 0.625 + 1e-9  # min(0.5 * 2^0, 10) ± 25 %
        (event,) = [e for e in retries if e.metadata.get("method") == "SamplingClient.sample"]
        assert event.metadata["reason"] == "retryable_failure" and event.measurements["delay_s"] == pytest.approx(gap)


async def test_gone_future_retries_the_sample(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        sampler = await sampler_for(session)
        sim.rec.script("retrieve_future", Reply(410, {"detail": "future expired"}))
        result = await sampler.sample(PROMPT, 1, t.SamplingParams(max_tokens=3))
        assert len(result.sequences) == 1
        assert seq_ids(sim) == [0, 1]


async def test_retries_are_bounded(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    config = Config(api_key=API_KEY, base_url=BASE_URL, retry=RetryConfig(max_retries=2))
    async with sim.session(config=config) as session:
        sampler = await sampler_for(session)
        sim.rec.script("asample", *[Reply(503, {"detail": "down"})] * 3)
        with pytest.raises(InternalServerError):
            await sampler.sample(PROMPT)
        assert seq_ids(sim) == [0, 1, 2]
        first, second = gaps(submissions(sim))
        assert 0.375 - 1e-9 <= first <= 0.625 + 1e-9 and 0.75 - 1e-9 <= second <= 1.25 + 1e-9


async def test_sample_no_retries_from_the_server_config(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config(client_config={"sample_no_retries": True})) as sim, sim.session() as session:
        sampler = await sampler_for(session)
        sim.rec.script("asample", Reply(503, {"detail": "down"}))
        with pytest.raises(InternalServerError):
            await sampler.sample(PROMPT)
        assert seq_ids(sim) == [0]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_non_retryable_statuses_raise_at_once(
    sim: SimStack, autojump_clock: trio.testing.MockClock, status: int
) -> None:
    async with sim.session() as session:
        sampler = await sampler_for(session)
        sim.rec.script("asample", Reply(status, {"detail": f"refused with {status}"}))
        start = trio.current_time()
        with pytest.raises(APIStatusError) as info:
            await sampler.sample(PROMPT)
        assert type(info.value) is status_error_class(status) and info.value.status_code == status
        assert trio.current_time() == start
        assert seq_ids(sim) == [0]


async def test_failed_future_is_not_retried(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        sampler = await sampler_for(session)
        sim.rec.script("retrieve_future", Reply(200, {"error": "prompt too long", "category": "user"}))
        with pytest.raises(RequestFailedError) as info:
            await sampler.sample(PROMPT)
        assert info.value.category is RequestErrorCategory.USER and "prompt too long" in info.value.message
        assert seq_ids(sim) == [0]


async def test_a_sample_is_one_logical_request_for_the_breaker(
    sim: SimStack, autojump_clock: trio.testing.MockClock
) -> None:
    """Attempts that the sample's own retries rescue never open the breaker; a sample that gives up counts once."""
    config = Config(
        api_key=API_KEY,
        base_url=BASE_URL,
        retry=RetryConfig(max_retries=5),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=3),
    )
    async with sim.session(config=config) as session:
        breaker = session.breaker
        assert breaker is not None
        sampler = await sampler_for(session)
        sim.rec.script("asample", *[Reply(503, {"detail": "flaky"})] * 4)  # more failed attempts than the threshold
        result = await sampler.sample(PROMPT, 1, t.SamplingParams(max_tokens=2))
        assert len(result.sequences) == 1
        assert seq_ids(sim) == [0, 1, 2, 3, 4]
        assert breaker.state is BreakerState.CLOSED and breaker.consecutive_failures == 0

        sim.rec.script("asample", *[Reply(503, {"detail": "down"})] * 6)
        with pytest.raises(InternalServerError):
            await sampler.sample(PROMPT, 1, t.SamplingParams(max_tokens=2))
        assert breaker.state is BreakerState.CLOSED and breaker.consecutive_failures == 1
