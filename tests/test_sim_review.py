"""Regression tests for simulator bugs found in review: resource bounds, input validation, seq-gap handling.

In process through httpx.ASGITransport under trio's MockClock (``autojump_clock``).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncGenerator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from test_sim_app import KEY, Sim, _config, _sample_body  # pyright: ignore[reportPrivateUsage]

from tinkex_trio.sim import _asgi as sim_asgi
from tinkex_trio.sim._app import create_app
from tinkex_trio.sim._queue import FuturesQueue, Job, QueueSettings


@pytest.fixture
async def sim() -> AsyncGenerator[Sim]:
    app = create_app(_config())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sim", headers=KEY) as client:
        yield Sim(app, client)


async def _sampler(sim: Sim) -> str:
    await sim.new_session()
    body = await sim.ok(
        "create_sampling_session",
        {"session_id": sim.session_id, "sampling_session_seq_id": 0, "base_model": "Qwen/Qwen3-8B"},
    )
    return str(body["sampling_session_id"])


async def test_asample_rejects_a_huge_num_samples_at_once(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    """A huge num_samples used to build one sequence id per sample on the event loop before answering (10**9 hung
    the server and ate its memory), then a numpy array of num_samples * max_tokens."""
    sampler_id = await _sampler(sim)
    response = await sim.post("asample", _sample_body(sampler_id, 1, num_samples=10**6))
    assert response.status_code == 422, response.text
    assert "num_samples" in response.json()["detail"]
    too_many = await sim.post("asample", _sample_body(sampler_id, 2, num_samples=4097))
    assert too_many.status_code == 422
    too_long = await sim.post(
        "asample", _sample_body(sampler_id, 4, num_samples=1024, sampling_params={"max_tokens": 1025, "stop": []})
    )
    assert too_long.status_code == 422
    ok = await sim.ok("asample", _sample_body(sampler_id, 3, num_samples=3))
    assert len(ok["sample_sequence_ids"]) == 3
    assert sim.app.status_counts[500] == 0


async def test_huge_or_non_positive_ttl_is_a_422_not_a_500(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    """ttl_seconds=10**30 overflowed the expiry datetime: a 500 on PUT .../ttl and an "internal error" (category
    server) future on the save calls."""
    await sim.new_session()
    model_id = await sim.new_model()
    saved = await sim.result(await sim.ok("save_weights", {"model_id": model_id, "seq_id": 1, "path": "ok"}))
    assert saved["path"].endswith("/weights/ok")
    ttl_url = f"/api/v1/training_runs/{model_id}/checkpoints/weights/ok/ttl"
    for bad in (10**30, 2**62, 0, -5):
        put = await sim.client.put(ttl_url, json={"ttl_seconds": bad})
        assert put.status_code == 422, (bad, put.text)
        assert "ttl_seconds" in put.json()["detail"]
    assert (await sim.client.put(ttl_url, json={"ttl_seconds": 3600})).status_code == 200
    for seq, endpoint in enumerate(("save_weights", "save_weights_for_sampler", "save_weights_external"), start=2):
        response = await sim.post(endpoint, {"model_id": model_id, "seq_id": seq, "path": "x", "ttl_seconds": 10**30})
        assert response.status_code == 422, (endpoint, response.text)
    # The rejected seq_ids are used up, so the model's next request still runs.
    after = await sim.result(await sim.optim(model_id, 5))
    assert "error" not in after
    assert sim.app.status_counts[500] == 0


async def test_gap_timeout_is_not_reset_by_later_arrivals(autojump_clock: trio.testing.MockClock) -> None:
    """A lane blocked on a missing seq_id restarted its gap timer on every wake-up, so a client that kept sending
    later requests (each within the timeout) blocked the model forever."""
    queue, _ = _queue_with(QueueSettings(seq_gap_timeout_s=50.0, threads=False))
    log: list[int] = []
    queue.submit("m", "X", _job(log, 0), seq_id=0)
    first_late, _ = queue.submit("m", "X", _job(log, 2), seq_id=2)
    start = trio.current_time()
    for seq in range(3, 9):  # one new request every 20 s, for 120 s in all
        await trio.sleep(20.0)
        queue.submit("m", "X", _job(log, seq), seq_id=seq)
    assert first_late.finished, log
    assert first_late.finished_at is not None and first_late.finished_at - start <= 60.0
    assert log[:2] == [0, 2]


def _queue_with(settings: QueueSettings) -> tuple[FuturesQueue, QueueSettings]:
    return FuturesQueue(lambda: settings, seed=1), settings


def _job(log: list[int], value: int) -> Job:
    def compute() -> int:
        log.append(value)
        return value

    return Job(compute=compute, threaded=False)


async def test_resend_after_the_record_expired_is_not_applied_twice(autojump_clock: trio.testing.MockClock) -> None:
    """Evicting a finished future also forgot its (model_id, seq_id), so a re-send of an optim_step whose record had
    expired ran the step a second time."""
    app = create_app(_config(max_retained_futures=4))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sim", headers=KEY) as client:
        sim = Sim(app, client)
        await sim.new_session()
        model_id = await sim.new_model()
        first = await sim.optim(model_id, 1)
        assert "metrics" in await sim.result(first)
        for seq in range(2, 8):  # push seq 1's record out of the retained window
            await sim.result(await sim.optim(model_id, seq))
        assert app.queue.get(first["request_id"]) is None
        record = app.state.model(model_id)
        assert record.steps_applied == 7
        resent = await sim.optim(model_id, 1)
        outcome = await sim.result(resent)
        assert "already processed" in outcome["error"], outcome
        assert record.steps_applied == 7 and record.applied_seq_ids.count(1) == 1


async def test_skipped_seq_arriving_late_runs_once_even_after_expiry(autojump_clock: trio.testing.MockClock) -> None:
    queue, _ = _queue_with(QueueSettings(seq_gap_timeout_s=10.0, threads=False, max_retained=2))
    log: list[int] = []
    queue.submit("m", "X", _job(log, 0), seq_id=0)
    late, _ = queue.submit("m", "X", _job(log, 3), seq_id=3)
    assert await queue.wait(late, 30.0)
    assert log == [0, 3]
    one, new = queue.submit("m", "X", _job(log, 1), seq_id=1)  # skipped, arrives late: runs
    assert new and await queue.wait(one, 5.0)
    for seq in (4, 5, 6):
        assert await queue.wait(queue.submit("m", "X", _job(log, seq), seq_id=seq)[0], 5.0)
    again, new = queue.submit("m", "X", _job(log, 1), seq_id=1)  # its record has expired: not run again
    assert not new and again.status == "failed"
    two, new = queue.submit("m", "X", _job(log, 2), seq_id=2)  # still skipped, never arrived: runs
    assert new and await queue.wait(two, 5.0)
    assert log == [0, 3, 1, 4, 5, 6, 2]


async def test_retrieve_futures_history_is_bounded(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    """Every finished sample appended an event to its sampling session forever (and each poll scanned them all),
    whether or not anyone used retrieve_futures."""
    sampler_id = await _sampler(sim)
    sampler = sim.app.state.sampler(sampler_id)
    total = 60_000
    for i in range(total - 1):
        sampler.notify_completion({"state": "finished", "request_id": f"r{i}"}, 0)
    assert len(sampler.completions) <= 50_000
    done = await sim.result(await sim.ok("asample", _sample_body(sampler_id, 1, num_samples=1)))
    assert "sequences" in done
    target = {"type": "sampling_session", "sampling_session_id": sampler_id, "cloned_sampler_id": 0}
    body = await sim.ok("retrieve_futures", {"target": target, "prev_cursor": total - 1, "timeout": 0})
    assert body["cursor"] == total
    assert [c["state"] for c in body["completions"]] == ["finished"]
    again = await sim.ok("retrieve_futures", {"target": target, "prev_cursor": total, "timeout": 0})
    assert again == {"completions": [], "cursor": total}


async def test_checkpoints_expire_after_their_ttl(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    """ttl_seconds was recorded as expires_at but never enforced: expired checkpoints (and their bytes) were kept,
    listed and loadable forever, so a long run saving with a TTL grew without bound."""
    await sim.new_session()
    model_id = await sim.new_model()
    keep = await sim.result(await sim.ok("save_weights", {"model_id": model_id, "seq_id": 1, "path": "keep"}))
    body = {"model_id": model_id, "seq_id": 2, "path": "brief", "ttl_seconds": 60}
    brief = await sim.result(await sim.ok("save_weights", body))
    later = {"model_id": model_id, "seq_id": 3, "path": "later", "ttl_seconds": 3600}
    await sim.result(await sim.ok("save_weights_for_sampler", later))
    listed = await sim.client.get(f"/api/v1/training_runs/{model_id}/checkpoints")
    assert len(listed.json()["checkpoints"]) == 3
    real_clock = sim.app.state.clock
    sim.app.state.clock = lambda: real_clock() + timedelta(seconds=120)
    listed = await sim.client.get(f"/api/v1/training_runs/{model_id}/checkpoints")
    assert [c["checkpoint_id"] for c in listed.json()["checkpoints"]] == ["weights/keep", "sampler_weights/later"]
    gone = await sim.post("weights_info", {"tinker_path": brief["path"]})
    assert gone.status_code == 404
    assert (await sim.post("weights_info", {"tinker_path": keep["path"]})).status_code == 200
    assert sim.app.state.expired_checkpoints == 1
    sim.app.state.clock = lambda: real_clock() + timedelta(hours=2)
    listed = await sim.client.get("/api/v1/checkpoints")
    assert [c["checkpoint_id"] for c in listed.json()["checkpoints"]] == ["weights/keep"]


async def test_compressed_bodies_are_bounded(
    sim: Sim, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gzip/deflate body was inflated without a limit: a few KB could expand to gigabytes (a decompression bomb)."""
    monkeypatch.setattr(sim_asgi, "MAX_BODY_BYTES", 1 << 20)
    payload = b'{"tags": [], "sdk_version": "' + b"0" * (4 << 20) + b'"}'
    for encoding, compressed in (
        ("gzip", gzip.compress(payload)),
        ("deflate", zlib.compress(payload)),
    ):
        assert len(compressed) < 64 << 10
        response = await sim.client.post(
            "/api/v1/create_session",
            content=compressed,
            headers={"Content-Type": "application/json", "Content-Encoding": encoding},
        )
        assert response.status_code == 413, (encoding, response.status_code)
        assert "larger than" in response.json()["detail"]
    small = gzip.compress(b'{"tags": [], "sdk_version": "0.38.0"}')
    gzip_json = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    ok = await sim.client.post("/api/v1/create_session", content=small, headers=gzip_json)
    assert ok.status_code == 200 and ok.json()["session_id"]
    cut = await sim.client.post("/api/v1/create_session", content=small[:-8], headers=gzip_json)
    assert cut.status_code == 400


async def test_unseeded_samples_do_not_depend_on_arrival_order(autojump_clock: trio.testing.MockClock) -> None:
    """Without a sampling seed, a sample's draw mixed in the next value of the server's shared RNG, so concurrent
    requests (whose arrival order trio does not fix) sampled different tokens from one seeded run to the next."""

    async def tokens_by_seq(order: list[int]) -> dict[int, list[list[int]]]:
        app = create_app(_config(seed=11))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://s", headers=KEY) as client:
            sim = Sim(app, client)
            sampler_id = await _sampler(sim)
            futures: dict[int, dict[str, Any]] = {}
            for seq in order:
                body = _sample_body(sampler_id, seq, sampling_params={"max_tokens": 8, "temperature": 1.0, "stop": []})
                futures[seq] = await sim.ok("asample", body)
            return {
                seq: [s["tokens"] for s in (await sim.result(future))["sequences"]] for seq, future in futures.items()
            }

    forward = await tokens_by_seq([1, 2, 3, 4])
    backward = await tokens_by_seq([4, 3, 2, 1])
    assert forward == backward
    assert forward[1] != forward[2]  # different seq_ids still draw differently


async def test_old_snapshot_samplers_release_their_tables(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    """Each save_weights_and_get_sampling_client made a snapshot sampler that kept ~2.5 MB of cached tables forever
    once sampled, so an RL loop grew by that much per iteration."""
    await sim.new_session()
    model_id = await sim.new_model()
    samplers: list[str] = []
    for i in range(80):
        body = {"model_id": model_id, "seq_id": i + 1, "sampling_session_seq_id": i, "kind": "snapshot"}
        sampler_id = (await sim.result(await sim.ok("save_weights_for_sampler", body)))["sampling_session_id"]
        samplers.append(sampler_id)
        first = await sim.result(await sim.ok("asample", _sample_body(sampler_id, 1, num_samples=1)))
        assert first["sequences"]
    models = [sim.app.state.sampler(s).model for s in samplers]
    cached = [getattr(m, "_tables", None) is not None for m in models]
    assert sum(cached) <= 64 and cached[-1] and not cached[0]
    # A sampler whose tables were dropped recomputes them: the same weights and seed give the same tokens.
    params: dict[str, Any] = {"max_tokens": 12, "temperature": 1.0, "seed": 5, "stop": []}
    dropped = await sim.result(await sim.ok("asample", _sample_body(samplers[0], 2, sampling_params=params)))
    kept = await sim.result(await sim.ok("asample", _sample_body(samplers[-1], 2, sampling_params=params)))
    assert [q["tokens"] for q in dropped["sequences"]] == [q["tokens"] for q in kept["sequences"]]
