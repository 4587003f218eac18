"""Unit tests of the simulated server's futures queue (tinkex_trio.sim._queue), under trio's MockClock."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio
import trio.testing

from tinkex_trio.sim._queue import FutureError, FuturesQueue, Job, QueueSettings


def _make(settings: QueueSettings | None = None) -> tuple[FuturesQueue, QueueSettings]:
    s = settings or QueueSettings()
    s.threads = False
    return FuturesQueue(lambda: s, seed=1), s


def _recorder(log: list[Any], value: Any, *, threaded: bool = False, tokens: int = 0) -> Job:
    def compute() -> Any:
        log.append(value)
        return value

    return Job(compute=compute, threaded=threaded, tokens=tokens)


async def test_ordered_lane_waits_for_gap_then_runs_in_order(autojump_clock: trio.testing.MockClock) -> None:
    queue, _ = _make()
    log: list[int] = []
    async with trio.open_nursery() as nursery:
        queue.attach_nursery(nursery)
        r0, _ = queue.submit("m", "CreateModel", _recorder(log, 0), seq_id=0)
        r3, _ = queue.submit("m", "ForwardBackward", _recorder(log, 3), seq_id=3)
        r1, _ = queue.submit("m", "ForwardBackward", _recorder(log, 1), seq_id=1)
        assert await queue.wait(r1, 5.0)
        # seq 3 cannot run before seq 2 arrives.
        assert not await queue.wait(r3, 5.0)
        assert log == [0, 1]
        r2, _ = queue.submit("m", "OptimStep", _recorder(log, 2), seq_id=2)
        assert await queue.wait(r3, 5.0)
        assert r2.status == "done" and r3.status == "done" and r0.result == 0
        assert log == [0, 1, 2, 3]
        queue.attach_nursery(None)
        nursery.cancel_scope.cancel()


async def test_resend_returns_first_record_and_runs_once(autojump_clock: trio.testing.MockClock) -> None:
    queue, _ = _make()
    log: list[str] = []
    async with trio.open_nursery() as nursery:
        queue.attach_nursery(nursery)
        first, new1 = queue.submit("m", "X", _recorder(log, "a"), seq_id=0)
        again, new2 = queue.submit("m", "X", _recorder(log, "b"), seq_id=0)
        assert new1 and not new2
        assert again is first
        assert await queue.wait(first, 1.0)
        third, new3 = queue.submit("m", "X", _recorder(log, "c"), seq_id=0)
        assert third is first and not new3
        await trio.sleep(1.0)
        assert log == ["a"]
        nursery.cancel_scope.cancel()


async def test_service_time_uses_trio_clock(autojump_clock: trio.testing.MockClock) -> None:
    queue, settings = _make(QueueSettings(base_s=2.0, per_token_s=0.5))
    log: list[int] = []
    async with trio.open_nursery() as nursery:
        queue.attach_nursery(nursery)
        start = trio.current_time()
        record, _ = queue.submit("m", "X", _recorder(log, 1, tokens=4), seq_id=0)
        assert not await queue.wait(record, 3.9)
        assert await queue.wait(record, 1.0)
        assert record.finished_at is not None
        assert record.finished_at - start == pytest.approx(4.0)
        assert settings.base_s == 2.0
        nursery.cancel_scope.cancel()


async def test_threaded_compute_and_commit() -> None:
    # Real clock: a worker thread is invisible to MockClock's autojump.
    queue = FuturesQueue(QueueSettings, seed=1)
    thread_names: list[str] = []

    def compute() -> int:
        thread_names.append(threading.current_thread().name)
        return 21

    job = Job(compute=compute, commit=lambda v: {"answer": v * 2}, threaded=True)
    record, _ = queue.submit("m", "X", job, seq_id=0)
    # No nursery attached: the lane runs as a system task of this run.
    assert await queue.wait(record, 10.0)
    assert record.result == {"answer": 42}
    assert thread_names and thread_names[0] != threading.main_thread().name


async def test_failures_have_categories(autojump_clock: trio.testing.MockClock) -> None:
    queue, _ = _make()

    def bad_input() -> None:
        raise FutureError("unknown loss function 'nope'", "user")

    def bug() -> None:
        raise RuntimeError("boom")

    user, _ = queue.submit("m", "X", Job(compute=bad_input, threaded=False), seq_id=0)
    server, _ = queue.submit("m", "X", Job(compute=bug, threaded=False), seq_id=1)
    assert await queue.wait(server, 5.0)
    assert user.status == "failed" and user.category == "user" and user.error == "unknown loss function 'nope'"
    assert server.status == "failed" and server.category == "server" and "boom" in (server.error or "")
    assert queue.failed_count == 2


async def test_injected_failures_skip_the_work(autojump_clock: trio.testing.MockClock) -> None:
    queue, settings = _make(QueueSettings(future_failure_rate=1.0))
    log: list[int] = []
    failed, _ = queue.submit("m", "X", _recorder(log, 1), seq_id=0)
    assert await queue.wait(failed, 5.0)
    assert failed.status == "failed" and failed.category == "server"
    settings.future_failure_rate = 0.0
    ok, _ = queue.submit("m", "X", _recorder(log, 2), seq_id=1)
    assert await queue.wait(ok, 5.0)
    assert ok.status == "done"
    assert log == [2]


async def test_forced_rate_limit_withholds_results(autojump_clock: trio.testing.MockClock) -> None:
    queue, settings = _make(QueueSettings(forced_queue_state="paused_rate_limit"))
    record, _ = queue.submit("m", "X", _recorder([], 1), seq_id=0)
    assert queue.queue_state() == "paused_rate_limit"
    assert not await queue.wait(record, 10.0)
    assert record.status == "done"  # the work ran; only delivery is held back

    async def clear_later() -> None:
        await trio.sleep(3.0)
        settings.forced_queue_state = None

    async with trio.open_nursery() as nursery:
        nursery.start_soon(clear_later)
        start = trio.current_time()
        assert await queue.wait(record, 30.0)
        assert trio.current_time() - start < 3.5
    assert queue.queue_state() == "active"


async def test_paused_capacity_when_over_capacity(autojump_clock: trio.testing.MockClock) -> None:
    queue, _ = _make(QueueSettings(queue_capacity=2, base_s=10.0))
    records = [queue.submit("m", "X", _recorder([], i), seq_id=i)[0] for i in range(4)]
    assert queue.queue_state() == "paused_capacity"
    assert await queue.wait(records[-1], 100.0)
    assert queue.queue_state() == "active"


async def test_gap_timeout_skips_missing_seq(autojump_clock: trio.testing.MockClock) -> None:
    queue, _ = _make(QueueSettings(seq_gap_timeout_s=50.0))
    log: list[int] = []
    queue.submit("m", "X", _recorder(log, 0), seq_id=0)
    late, _ = queue.submit("m", "X", _recorder(log, 2), seq_id=2)
    assert not await queue.wait(late, 40.0)
    assert await queue.wait(late, 20.0)
    assert log == [0, 2]
    # The skipped seq_id, arriving late, still runs (once).
    missing, _ = queue.submit("m", "X", _recorder(log, 1), seq_id=1)
    assert await queue.wait(missing, 5.0)
    assert log == [0, 2, 1]


async def test_unordered_lane_runs_workers_in_parallel(autojump_clock: trio.testing.MockClock) -> None:
    queue, _ = _make(QueueSettings(base_s=1.0, workers=3))
    start = trio.current_time()
    records = [queue.submit("s", "Sample", _recorder([], i), seq_id=i, ordered=False)[0] for i in range(6)]
    for record in records:
        assert await queue.wait(record, 10.0)
    # 6 requests, 3 at a time, 1 s each.
    assert trio.current_time() - start == pytest.approx(2.0)
    # Idempotent for samplers too.
    again, is_new = queue.submit("s", "Sample", _recorder([], 99), seq_id=3, ordered=False)
    assert again is records[3] and not is_new


async def test_cancel_queued_record(autojump_clock: trio.testing.MockClock) -> None:
    queue, _ = _make(QueueSettings(base_s=5.0))
    log: list[int] = []
    first, _ = queue.submit("m", "X", _recorder(log, 0), seq_id=0)
    second, _ = queue.submit("m", "X", _recorder(log, 1), seq_id=1)
    third, _ = queue.submit("m", "X", _recorder(log, 2), seq_id=2)
    assert queue.cancel(second.request_id)
    assert not queue.cancel("req-unknown")
    assert await queue.wait(third, 20.0)
    assert second.status == "cancelled" and first.status == "done"
    assert log == [0, 2]


async def test_long_poll_returns_when_ready(autojump_clock: trio.testing.MockClock) -> None:
    queue, _ = _make(QueueSettings(base_s=7.0))
    record, _ = queue.submit("m", "X", _recorder([], 0), seq_id=0)
    start = trio.current_time()
    assert await queue.wait(record, 30.0)
    assert trio.current_time() - start == pytest.approx(7.0)


async def test_eviction_and_expired_ids(autojump_clock: trio.testing.MockClock) -> None:
    queue, _ = _make(QueueSettings(max_retained=3))
    records = [queue.submit("m", "X", _recorder([], i), seq_id=i)[0] for i in range(3)]
    for record in records:
        assert await queue.wait(record, 1.0)
    later = queue.complete_now("misc", "Y", {"ok": True})
    assert queue.get(records[0].request_id) is None
    assert queue.is_expired_id(records[0].request_id)
    assert not queue.is_expired_id("req-9999999-00000000")
    assert not queue.is_expired_id("something-else")
    assert queue.get(later.request_id) is later and later.result == {"ok": True}


async def test_nursery_swap_keeps_order(autojump_clock: trio.testing.MockClock) -> None:
    queue, _ = _make(QueueSettings(base_s=1.0))
    log: list[int] = []
    records = [queue.submit("m", "X", _recorder(log, i), seq_id=i)[0] for i in range(3)]
    await trio.sleep(0.5)  # a system-task runner is now mid-request
    async with trio.open_nursery() as nursery:
        queue.attach_nursery(nursery)
        for i in range(3, 6):
            records.append(queue.submit("m", "X", _recorder(log, i), seq_id=i)[0])
        assert await queue.wait(records[-1], 20.0)
        queue.attach_nursery(None)
        nursery.cancel_scope.cancel()
    assert log == list(range(6))


async def test_consumed_seq_lets_the_lane_move_on(autojump_clock: trio.testing.MockClock) -> None:
    queue, _ = _make(QueueSettings(seq_gap_timeout_s=1000.0))
    log: list[int] = []
    queue.submit("m", "X", _recorder(log, 0), seq_id=0)
    later, _ = queue.submit("m", "X", _recorder(log, 2), seq_id=2)
    rejected = queue.consume_seq("m", 1, "rejected: bad request")
    assert rejected is not None and rejected.status == "failed" and rejected.category == "user"
    assert await queue.wait(later, 5.0)
    assert log == [0, 2]
    assert queue.lookup_seq("m", 1) is rejected
    assert queue.consume_seq("m", 1, "again") is None  # already known
    assert queue.consume_seq("no-such-lane", 1, "x") is None


async def test_threaded_jobs_run_inline_under_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    queue = FuturesQueue(QueueSettings, seed=1)  # threads=True
    thread_names: list[str] = []

    def compute() -> int:
        thread_names.append(threading.current_thread().name)
        return 1

    record, _ = queue.submit("m", "X", Job(compute=compute, threaded=True), seq_id=0)
    assert await queue.wait(record, 1.0)
    assert thread_names == [threading.main_thread().name]
