"""The futures queue of the simulated server.

Every call the protocol answers with a future (create_model, forward_backward, optim_step, the save and load calls,
asample) becomes a :class:`FutureRecord` in a *lane*. A lane is one training model (``ordered``: its requests run one
at a time in ``seq_id`` order, waiting for gaps to fill) or one sampling session (unordered: up to ``workers``
requests at once, first come first served). A request re-sent with a ``(lane, seq_id)`` the lane has already seen is
answered with the first request's record, so its work is applied once.

Each request costs ``base_s + per_token_s * tokens`` of trio time (so MockClock tests run instantly), then its
``compute`` runs in a worker thread (one per lane for ordered lanes) and its ``commit`` on the trio thread.
:meth:`FuturesQueue.wait` is the long-poll primitive of ``retrieve_future``.

Lanes are driven by background tasks. They run in the nursery given to :meth:`FuturesQueue.attach_nursery` (the ASGI
lifespan, or ``SimApp.running()`` in tests); without one (``httpx.ASGITransport`` does not run the lifespan) they run
as trio system tasks of the current run, which trio cancels when the run ends.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import trio
import trio.testing

__all__ = [
    "FailureCategory",
    "FutureError",
    "FutureRecord",
    "FuturesQueue",
    "Job",
    "QueueSettings",
    "QueueState",
    "RecordStatus",
]

logger = logging.getLogger("tinkex_trio.sim")

QueueState = Literal["active", "paused_capacity", "paused_rate_limit"]
FailureCategory = Literal["user", "server", "unknown"]
RecordStatus = Literal["queued", "running", "done", "failed", "cancelled"]


def _on_mock_clock() -> bool:
    return isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)


class FutureError(Exception):
    """Raised by a job's compute or commit to fail its future with a category (``user`` for bad inputs)."""

    def __init__(self, message: str, category: FailureCategory = "user") -> None:
        super().__init__(message)
        self.message = message
        self.category: FailureCategory = category


@dataclass
class Job:
    """The work behind one future.

    ``compute`` runs in a worker thread when ``threaded`` (numpy work), else on the trio thread; ``commit`` always runs
    on the trio thread with compute's return value and returns the future's result (an opaque object the app renders).
    Either may raise :class:`FutureError`. ``tokens`` feeds the service-time model.
    """

    compute: Callable[[], Any]
    commit: Callable[[Any], Any] | None = None
    tokens: int = 0
    threaded: bool = True
    can_fail: bool = True
    """Whether ``future_failure_rate`` applies (injected failures skip the work entirely)."""


@dataclass
class QueueSettings:
    """The queue's view of the configuration, read afresh on every decision (the config is mutable at run time)."""

    base_s: float = 0.0
    per_token_s: float = 0.0
    workers: int = 1
    queue_capacity: int = 1024
    seq_gap_timeout_s: float | None = 120.0
    future_failure_rate: float = 0.0
    fail_future: Callable[[], bool] | None = None
    """Decides whether a future fails with an injected server fault (overrides ``future_failure_rate``)."""
    forced_queue_state: QueueState | None = None
    max_retained: int = 20_000
    max_retained_bytes: int = 512 * 1024 * 1024
    """Finished futures are also forgotten (oldest first) when their recorded payload sizes exceed this."""
    threads: bool = True
    """Run threaded jobs in worker threads. Ignored (always inline) under trio's MockClock: trio cannot see a worker
    thread, so an autojumping clock would jump past every timeout while the thread computes."""


@dataclass(eq=False)
class FutureRecord:
    """One future: its identity, its job, and (once finished) its result or failure."""

    request_id: str
    request_type: str
    lane_key: str
    seq_id: int | None
    job: Job | None
    created_at: float
    status: RecordStatus = "queued"
    result: Any = None
    error: str | None = None
    category: FailureCategory = "unknown"
    started_at: float | None = None
    finished_at: float | None = None
    done: trio.Event = field(default_factory=trio.Event)
    extra: dict[str, Any] = field(default_factory=dict[str, Any])
    """Free-form data for the app (e.g. ``sample_sequence_ids``, ``model_id``, cached encodings)."""
    nbytes: int = 0
    """Bytes the app keeps for this record (see :meth:`FuturesQueue.account`)."""

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "cancelled")


class _Lane:
    def __init__(self, key: str, *, ordered: bool, first_seq: int) -> None:
        self.key = key
        self.ordered = ordered
        self.next_seq = first_seq
        self.max_seen_seq = first_seq - 1
        self.pending: dict[int, FutureRecord] = {}
        self.fifo: deque[FutureRecord] = deque()
        self.seen: dict[int, str] = {}
        self.changed = trio.Event()
        self.running = 0
        self.limiter = trio.CapacityLimiter(1)
        self.runner_token: object | None = None
        self.run_lock = trio.Lock()
        self.run_lock_root: object | None = None
        self.gap_skips = 0
        self.gap_seq: int | None = None
        """The ``next_seq`` the lane was last found blocked on (with later seq_ids pending), and since when."""
        self.gap_since = 0.0
        self.skipped: list[tuple[int, int]] = []
        """Ranges ``[lo, hi)`` of seq_ids an ordered lane skipped over (gap timeout) that have not arrived yet."""

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def take_skipped(self, seq_id: int) -> bool:
        """Whether ``seq_id`` was skipped over and never arrived; if so it is taken (it may run once, late)."""
        for i, (lo, hi) in enumerate(self.skipped):
            if lo <= seq_id < hi:
                self.skipped[i : i + 1] = [r for r in ((lo, seq_id), (seq_id + 1, hi)) if r[0] < r[1]]
                return True
        return False

    @property
    def queued(self) -> int:
        return len(self.pending) + len(self.fifo)


class FuturesQueue:
    """All futures of one simulated server, and the lanes that run them."""

    def __init__(self, settings: Callable[[], QueueSettings], *, seed: int = 0) -> None:
        self._settings = settings
        self._rng = random.Random(f"sim-queue/{seed}")
        self._fault_rng = random.Random(f"sim-queue-faults/{seed}")
        self._records: OrderedDict[str, FutureRecord] = OrderedDict()
        self._lanes: dict[str, _Lane] = {}
        self._counter = 0
        self._nursery: trio.Nursery | None = None
        self._completion_listeners: list[Callable[[FutureRecord], None]] = []
        self.completed_count = 0
        self.failed_count = 0
        self.retained_bytes = 0

    # -- running ---------------------------------------------------------------------------------------------------

    def attach_nursery(self, nursery: trio.Nursery | None) -> None:
        """Run lane tasks in ``nursery`` from now on; ``None`` detaches (lanes restart lazily on the next submit/poll).

        Runners started elsewhere finish their current request and stop; a per-lane lock keeps them from overlapping
        with their replacement, so an ordered lane never runs two requests at once.
        """
        self._nursery = nursery
        for lane in self._lanes.values():
            lane.runner_token = None
            lane.wake()
            if nursery is not None:
                self._ensure_runner(lane)

    def add_completion_listener(self, listener: Callable[[FutureRecord], None]) -> None:
        """Call ``listener(record)`` on the trio thread whenever a future finishes (done, failed or cancelled)."""
        self._completion_listeners.append(listener)

    def _ensure_runner(self, lane: _Lane) -> None:
        nursery = self._nursery
        token: object = nursery if nursery is not None else trio.lowlevel.current_root_task()
        if lane.runner_token is token:
            return
        lane.runner_token = token
        root = trio.lowlevel.current_root_task()
        if lane.run_lock_root is not root:
            # A lock from an earlier trio run may be held forever by a task that no longer exists.
            lane.run_lock = trio.Lock()
            lane.run_lock_root = root
        if nursery is not None:
            try:
                nursery.start_soon(self._run_lane, lane, token, name=f"sim-lane:{lane.key}")
                return
            except RuntimeError:
                # The nursery has closed without being detached: fall back to a system task.
                self._nursery = None
                token = root
                lane.runner_token = token
        trio.lowlevel.spawn_system_task(self._run_lane, lane, token, name=f"sim-lane:{lane.key}")

    # -- submitting ------------------------------------------------------------------------------------------------

    def _new_record(
        self,
        request_type: str,
        lane_key: str,
        seq_id: int | None,
        job: Job | None,
        extra: dict[str, Any] | None = None,
    ) -> FutureRecord:
        """A new record with a fresh request id, created now and registered."""
        record = FutureRecord(
            request_id=self.new_request_id(),
            request_type=request_type,
            lane_key=lane_key,
            seq_id=seq_id,
            job=job,
            created_at=trio.current_time(),
            extra=dict(extra or {}),
        )
        self._records[record.request_id] = record
        return record

    def new_request_id(self) -> str:
        self._counter += 1
        return f"req-{self._counter:07d}-{self._rng.getrandbits(32):08x}"

    def is_expired_id(self, request_id: str) -> bool:
        """Whether ``request_id`` is one this queue issued and has since forgotten."""
        parts = request_id.split("-")
        if len(parts) != 3 or parts[0] != "req" or not parts[1].isdigit():
            return False
        return int(parts[1]) <= self._counter and request_id not in self._records

    def lookup_seq(self, lane_key: str, seq_id: int) -> FutureRecord | None:
        lane = self._lanes.get(lane_key)
        if lane is None:
            return None
        request_id = lane.seen.get(seq_id)
        return self._records.get(request_id) if request_id is not None else None

    def has_lane(self, lane_key: str) -> bool:
        return lane_key in self._lanes

    def submit(
        self,
        lane_key: str,
        request_type: str,
        job: Job,
        *,
        seq_id: int | None = None,
        ordered: bool = True,
        first_seq: int = 0,
        extra: dict[str, Any] | None = None,
    ) -> tuple[FutureRecord, bool]:
        """Queue ``job`` in lane ``lane_key``; return ``(record, is_new)``.

        A ``seq_id`` the lane has seen before returns the first record and ``is_new=False`` (the job is dropped).
        For an ordered lane, ``seq_id=None`` takes the next id after the highest seen.
        """
        lane = self._lanes.get(lane_key)
        if lane is None:
            lane = _Lane(lane_key, ordered=ordered, first_seq=first_seq)
            self._lanes[lane_key] = lane
        if seq_id is None and lane.ordered:
            seq_id = max(lane.max_seen_seq + 1, lane.next_seq)
        if seq_id is not None:
            previous = lane.seen.get(seq_id)
            if previous is not None and previous in self._records:
                return self._records[previous], False
            if lane.ordered and seq_id < lane.next_seq and previous is None and not lane.take_skipped(seq_id):
                # Already run (or rejected) and its record forgotten: running it again would apply its work twice.
                return self._expired_seq_record(lane, request_type, seq_id, extra), False
        record = self._new_record(request_type, lane_key, seq_id, job, extra)
        if seq_id is not None:
            lane.seen[seq_id] = record.request_id
            lane.max_seen_seq = max(lane.max_seen_seq, seq_id)
        if lane.ordered and seq_id is not None and seq_id >= lane.next_seq:
            lane.pending[seq_id] = record
        else:
            # Unordered lanes, and an ordered lane's seq_id below next_seq never seen before (skipped over by a
            # gap timeout): run as soon as possible.
            lane.fifo.append(record)
        lane.wake()
        self._ensure_runner(lane)
        self._evict()
        return record, True

    def _expired_seq_record(
        self, lane: _Lane, request_type: str, seq_id: int, extra: dict[str, Any] | None
    ) -> FutureRecord:
        record = self._new_record(request_type, lane.key, seq_id, None, extra)
        lane.seen[seq_id] = record.request_id
        self._finish(
            record,
            "failed",
            error=f"seq_id {seq_id} of {lane.key} was already processed and its result has expired",
            category="user",
        )
        self._evict()
        return record

    def consume_seq(self, lane_key: str, seq_id: int, error: str) -> FutureRecord | None:
        """Mark ``seq_id`` of an ordered lane as used by a request that was rejected before it was queued.

        The lane moves past it instead of waiting for it; a re-send of that ``(lane, seq_id)`` gets a future that
        fails with ``error`` (category ``user``). Does nothing if the seq_id is already known (returns ``None``).
        """
        lane = self._lanes.get(lane_key)
        if lane is None or seq_id in lane.seen:
            return None
        if lane.ordered and seq_id < lane.next_seq:
            lane.take_skipped(seq_id)
        record = self._new_record("Rejected", lane_key, seq_id, None)
        lane.seen[seq_id] = record.request_id
        lane.max_seen_seq = max(lane.max_seen_seq, seq_id)
        self._finish(record, "failed", error=error, category="user")
        if lane.ordered and seq_id >= lane.next_seq:
            lane.pending[seq_id] = record
        lane.wake()
        self._evict()
        return record

    def complete_now(
        self, lane_key: str, request_type: str, result: Any, *, extra: dict[str, Any] | None = None
    ) -> FutureRecord:
        """Register an already-finished future (for work done synchronously)."""
        record = self._new_record(request_type, lane_key, None, None, extra)
        self._finish(record, "done", result=result)
        self._evict()
        return record

    def account(self, record: FutureRecord, nbytes: int) -> None:
        """Record that the app now keeps ``nbytes`` more for ``record`` (e.g. an encoded result); may evict."""
        record.nbytes += nbytes
        if record.request_id in self._records:
            self.retained_bytes += nbytes
        self._evict()

    def _evict(self) -> None:
        settings = self._settings()
        limit = max(settings.max_retained, 1)
        byte_limit = max(settings.max_retained_bytes, 0)
        if len(self._records) <= limit and self.retained_bytes <= byte_limit:
            return
        for request_id in list(self._records):
            if len(self._records) <= limit and self.retained_bytes <= byte_limit:
                break
            record = self._records[request_id]
            if record.finished:
                del self._records[request_id]
                self.retained_bytes -= record.nbytes
                lane = self._lanes.get(record.lane_key)
                if lane is not None and record.seq_id is not None and lane.seen.get(record.seq_id) == request_id:
                    del lane.seen[record.seq_id]

    # -- lookup and state ------------------------------------------------------------------------------------------

    def get(self, request_id: str) -> FutureRecord | None:
        return self._records.get(request_id)

    def records(self) -> list[FutureRecord]:
        return list(self._records.values())

    @property
    def queued_count(self) -> int:
        """Requests accepted but not yet started, over all lanes."""
        return sum(lane.queued for lane in self._lanes.values())

    @property
    def running_count(self) -> int:
        return sum(lane.running for lane in self._lanes.values())

    def queue_state(self) -> QueueState:
        """The state reported in ``try_again``: forced by a fault, else ``paused_capacity`` when over capacity."""
        settings = self._settings()
        if settings.forced_queue_state is not None:
            return settings.forced_queue_state
        if self.queued_count + self.running_count > settings.queue_capacity:
            return "paused_capacity"
        return "active"

    def results_withheld(self) -> bool:
        """Whether finished results are held back (a forced ``paused_rate_limit``)."""
        return self._settings().forced_queue_state == "paused_rate_limit"

    def cancel(self, request_id: str) -> bool:
        """Cancel a future that has not started yet. Returns whether it was cancelled."""
        record = self._records.get(request_id)
        if record is None or record.status != "queued":
            return False
        lane = self._lanes.get(record.lane_key)
        # The lane skips a cancelled record when it reaches it (an ordered lane still counts its seq_id as used).
        self._finish(record, "cancelled", error="cancelled by the client", category="user")
        if lane is not None:
            lane.wake()
        return True

    async def wait(self, record: FutureRecord, max_wait_s: float) -> bool:
        """Wait up to ``max_wait_s`` for ``record`` to finish (and not be withheld). Returns whether it is ready."""
        deadline = trio.current_time() + max(max_wait_s, 0.0)
        lane = self._lanes.get(record.lane_key)
        if lane is not None and not record.finished:
            self._ensure_runner(lane)
        # Bounded by the deadline: every iteration waits for the record, or sleeps, until at most the deadline.
        while True:
            withheld = self.results_withheld()
            if record.finished and not withheld:
                return True
            now = trio.current_time()
            if now >= deadline:
                return False
            step = deadline - now
            if withheld:
                # Re-check the fault knob a few times a second so that clearing it is seen promptly.
                step = min(step, 0.25)
            with trio.move_on_after(step):
                if record.finished:
                    await trio.sleep(step)
                else:
                    await record.done.wait()

    # -- executing -------------------------------------------------------------------------------------------------

    async def _run_lane(self, lane: _Lane, token: object) -> None:
        async with lane.run_lock, trio.open_nursery() as nursery:
            while lane.runner_token is token:
                record = self._next_record(lane)
                if record is None:
                    await self._wait_for_work(lane)
                    continue
                if lane.ordered:
                    await self._execute(lane, record)
                else:
                    await lane.limiter.acquire_on_behalf_of(record)
                    nursery.start_soon(self._execute_released, lane, record)

    async def _execute_released(self, lane: _Lane, record: FutureRecord) -> None:
        try:
            await self._execute(lane, record)
        finally:
            lane.limiter.release_on_behalf_of(record)

    def _next_record(self, lane: _Lane) -> FutureRecord | None:
        if not lane.ordered:
            lane.limiter.total_tokens = max(self._settings().workers, 1)
        while lane.fifo:
            record = lane.fifo.popleft()
            if record.status == "queued":
                return record
        while lane.ordered and lane.next_seq in lane.pending:
            record = lane.pending.pop(lane.next_seq)
            lane.next_seq += 1
            if record.status == "queued":
                return record
        return None

    async def _wait_for_work(self, lane: _Lane) -> None:
        changed = lane.changed
        gap_timeout = self._settings().seq_gap_timeout_s
        if not lane.pending or gap_timeout is None:
            await changed.wait()
            return
        # An ordered lane blocked on a gap: wait for the missing seq_id, but not forever. The deadline counts from when
        # the lane first blocked on this seq_id, so later arrivals (each a wake-up) do not push it back.
        if lane.gap_seq != lane.next_seq:
            lane.gap_seq = lane.next_seq
            lane.gap_since = trio.current_time()
        with trio.move_on_at(lane.gap_since + gap_timeout):
            await changed.wait()
            return
        if lane.pending and lane.next_seq not in lane.pending:
            skip_to = min(lane.pending)
            logger.warning(
                "lane %s: seq_id %d..%d never arrived; skipping the gap", lane.key, lane.next_seq, skip_to - 1
            )
            lane.gap_skips += 1
            lane.skipped.append((lane.next_seq, skip_to))
            lane.next_seq = skip_to

    async def _execute(self, lane: _Lane, record: FutureRecord) -> None:
        job = record.job
        if job is None or record.status != "queued":
            return
        settings = self._settings()
        record.status = "running"
        record.started_at = trio.current_time()
        lane.running += 1
        try:
            delay = max(settings.base_s + settings.per_token_s * job.tokens, 0.0)
            if delay > 0:
                await trio.sleep(delay)
            if job.can_fail and self._injected_failure(settings):
                self._finish(record, "failed", error="injected server fault: the request failed", category="server")
                return
            try:
                if job.threaded and settings.threads and not _on_mock_clock():
                    value = await trio.to_thread.run_sync(job.compute, limiter=lane.limiter if lane.ordered else None)
                else:
                    value = job.compute()
                # No checkpoint between the compute returning and the commit: the work is recorded exactly once.
                result = job.commit(value) if job.commit is not None else value
            except FutureError as exc:
                self._finish(record, "failed", error=exc.message, category=exc.category)
                return
            except Exception as exc:
                logger.exception("sim: %s %s failed unexpectedly", record.request_type, record.request_id)
                self._finish(record, "failed", error=f"internal error: {type(exc).__name__}: {exc}", category="server")
                return
            self._finish(record, "done", result=result)
        finally:
            lane.running -= 1
            if record.status == "running":
                # Cancelled during the service-time sleep: put it back so a later runner picks it up.
                record.status = "queued"
                record.started_at = None
                lane.fifo.appendleft(record)

    def _injected_failure(self, settings: QueueSettings) -> bool:
        if settings.fail_future is not None:
            return settings.fail_future()
        rate = settings.future_failure_rate
        return rate > 0 and self._fault_rng.random() < rate

    def _finish(
        self,
        record: FutureRecord,
        status: RecordStatus,
        *,
        result: Any = None,
        error: str | None = None,
        category: FailureCategory = "unknown",
    ) -> None:
        record.status = status
        record.result = result
        record.error = error
        record.category = category
        record.finished_at = trio.current_time()
        record.job = None
        if status == "done":
            self.completed_count += 1
        else:
            self.failed_count += 1
        record.done.set()
        for listener in self._completion_listeners:
            try:
                listener(record)
            except Exception:
                logger.exception("sim: completion listener failed for %s", record.request_id)
