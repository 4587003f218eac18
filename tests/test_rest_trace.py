"""RestClient.export_session_trace against the simulator in process, under trio's MockClock: the polling schedule
(exact times), every outcome of the export job, and the trace file its URL serves."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import pytest
import trio
from _simkit import API_KEY, Reply, SimStack, pattern_batch, sim_config, sim_stack

import tinkex_trio as tx
from tinkex_trio.errors import InvalidArgumentError, NotFoundError, ResponseValidationError, TraceExportError

BASE = "Qwen/Qwen3-8B"


@pytest.fixture
async def sim() -> AsyncGenerator[SimStack]:
    # pytest-trio takes the clock from the test's own arguments: tests using this fixture also ask for autojump_clock.
    async with sim_stack(sim_config()) as stack:
        yield stack


def poll_times(sim: SimStack, t0: float) -> list[float]:
    return [s.at - t0 for s in sim.rec.requests(f"sessions/{_session_of(sim)}/trace_export")]


def _session_of(sim: SimStack) -> str:
    (session_id,) = sim.app.state.sessions
    return session_id


async def download(sim: SimStack, url: str) -> httpx.Response:
    """A plain GET of ``url``, as a browser or curl would: no API key."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.rec)) as client:
        return await client.get(url)


async def train_and_sample(session: tx.Session) -> None:
    trainer = await session.create_lora_training_client(BASE, rank=4, seed=1)
    await trainer.forward_backward(pattern_batch(), "cross_entropy")
    await trainer.optim_step(tx.AdamParams(learning_rate=0.01))
    sampler = await trainer.save_weights_and_get_sampling_client("for-trace")
    await sampler.sample(tx.ModelInput.from_ints([1, 2, 3]), 2, tx.SamplingParams(max_tokens=4))


async def test_export_waits_for_the_job_and_its_url_serves_the_trace(
    sim: SimStack, autojump_clock: trio.testing.MockClock
) -> None:
    sim.app.config.trace_export_build_s = 7.0
    async with sim.session() as session:
        await train_and_sample(session)
        t0 = trio.current_time()
        url = await session.rest.export_session_trace(session.session_id)
        # Polled at once, then after 1, 2 and 4 s: the job was ready at 7 s.
        assert trio.current_time() - t0 == 7.0
        assert poll_times(sim, t0) == [0.0, 1.0, 3.0, 7.0]
        polls = sim.rec.requests(f"sessions/{session.session_id}/trace_export")
        assert {p.method for p in polls} == {"GET"}
        assert polls[0].headers["x-sdk-method"] == "RestClient.export_session_trace"

        response = await download(sim, url)
    assert url.startswith("http://sim.test/api/v1/trace_exports/")
    assert API_KEY not in url
    assert response.status_code == 200
    trace = json.loads(response.content)
    slices = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    names = [e["name"] for e in slices]
    assert {"CreateModel", "ForwardBackward", "OptimStep", "SaveWeightsForSampler", "Sample"} <= set(names)
    assert names.index("ForwardBackward") < names.index("OptimStep")
    tracks = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert tracks == {f"{session.session_id}:train:0", f"{session.session_id}:sample:0"}
    assert all(e["dur"] >= 0 and e["ts"] >= 0 and e["args"]["status"] == "done" for e in slices)
    assert trace["otherData"] == {"session_id": session.session_id}


async def test_polls_back_off_to_five_seconds(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    sim.app.config.trace_export_build_s = 20.0
    async with sim.session() as session:
        t0 = trio.current_time()
        await session.rest.export_session_trace(session.session_id)
        assert poll_times(sim, t0) == [0.0, 1.0, 3.0, 7.0, 12.0, 17.0, 22.0]


async def test_a_job_never_ready_ends_after_thirty_minutes(
    sim: SimStack, autojump_clock: trio.testing.MockClock
) -> None:
    sim.app.config.trace_export_build_s = 1e9
    async with sim.session() as session:
        t0 = trio.current_time()
        with pytest.raises(TraceExportError) as info:
            await session.rest.export_session_trace(session.session_id)
        assert trio.current_time() - t0 == 1800.0
        times = poll_times(sim, t0)
        assert times[-1] == 1800.0 and max(b - a for a, b in itertools.pairwise(times)) == 5.0
    error = info.value
    assert (error.session_id, error.status, error.error) == (session.session_id, "pending", None)
    assert "still 'pending' after 1800 s" in error.message


async def test_a_failed_job_raises_its_error_without_the_key(
    sim: SimStack, autojump_clock: trio.testing.MockClock
) -> None:
    sim.app.config.trace_export_error = f"could not write the trace (request key {API_KEY})"
    async with sim.session() as session:
        with pytest.raises(TraceExportError) as info:
            await session.rest.export_session_trace(session.session_id)
        error = info.value
        assert (error.session_id, error.status) == (session.session_id, "failed")
        assert error.error == "could not write the trace (request key <redacted>)"
        assert API_KEY not in str(error) and API_KEY not in repr(error)
        assert "could not write the trace" in error.message
        # The failed job is redone on the next call: once the server's trouble is over, the export succeeds.
        sim.app.config.trace_export_error = None
        url = await session.rest.export_session_trace(session.session_id)
        assert (await download(sim, url)).status_code == 200


async def test_an_up_to_date_trace_is_not_rebuilt(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        trainer = await session.create_lora_training_client(BASE, rank=4, seed=1)
        first = await session.rest.export_session_trace(session.session_id)
        t0 = trio.current_time()
        assert await session.rest.export_session_trace(session.session_id) == first
        assert trio.current_time() == t0  # ready at the first poll
        await trainer.forward_backward(pattern_batch(), "cross_entropy")
        second = await session.rest.export_session_trace(session.session_id)
        assert second != first  # rebuilt with the new request; the old URL is gone
        assert (await download(sim, first)).status_code == 404
        names = [e["name"] for e in json.loads((await download(sim, second)).content)["traceEvents"]]
        assert "ForwardBackward" in names


async def test_other_statuses_are_polled_again(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        endpoint = f"sessions/{session.session_id}/trace_export"
        sim.rec.script(
            endpoint,
            Reply(body={"status": "building", "progress": 0.5}),
            Reply(status=503, body={"detail": "busy"}),  # a poll's own retry, by the transport
            Reply(body={"status": "ready", "url": "https://storage.example/trace.pftrace?sig=x"}),
        )
        t0 = trio.current_time()
        url = await session.rest.export_session_trace(session.session_id)
        assert url == "https://storage.example/trace.pftrace?sig=x"
        assert len(sim.rec.requests(endpoint)) == 3
        assert trio.current_time() - t0 >= 1.0
        sim.rec.script(endpoint, Reply(body={"status": "ready"}))
        with pytest.raises(ResponseValidationError, match="no url"):
            await session.rest.export_session_trace(session.session_id)


async def test_cancelling_the_call_stops_the_polls(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    sim.app.config.trace_export_build_s = 60.0
    async with sim.session() as session:
        t0 = trio.current_time()
        with trio.move_on_after(4.0) as scope:
            await session.rest.export_session_trace(session.session_id)
        assert scope.cancelled_caught
        await trio.sleep(30.0)
        assert poll_times(sim, t0) == [0.0, 1.0, 3.0]


async def test_export_errors(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        with pytest.raises(NotFoundError):
            await session.rest.export_session_trace("sess-missing")
        before = len(sim.rec.seen)
        with pytest.raises(InvalidArgumentError) as info:
            await session.rest.export_session_trace("")
        assert info.value.argument == "session_id"
        assert len(sim.rec.seen) == before
        missing = await download(sim, "http://sim.test/api/v1/trace_exports/0123abcd")
        assert missing.status_code == 404
        # A job still being built has nothing to download yet.
        sim.app.config.trace_export_build_s = 10.0
        headers = {"X-API-Key": API_KEY}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.rec), headers=headers) as client:
            poll: Any = (await client.get(f"http://sim.test/api/v1/sessions/{session.session_id}/trace_export")).json()
        assert poll == {"status": "pending"}
        (job,) = sim.app.state.trace_exports
        assert (await download(sim, f"http://sim.test/api/v1/trace_exports/{job}")).status_code == 404
