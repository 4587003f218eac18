"""Issue 7: cancellation and Ctrl-C anywhere in a session leave as themselves, with finish reason ``interrupted``.

Random cancellation points: a session that trains and samples is cancelled (``move_on_after``) at a random moment of
its run, 200 times; every time the cancellation is caught by its own scope (never a SessionClosedError or another
TinkexError instead), no task of ours and no pending future is left behind, and a session that was created is
finished ``interrupted``. Random Ctrl-C points: a KeyboardInterrupt raised inside the n-th request, in whichever task
sent it (the body, a future's poll task, the heartbeat), leaves ``open_session`` as a bare KeyboardInterrupt, never an
ExceptionGroup and never wrapped in a TinkexError. All under trio's MockClock, against the in-process simulator.
"""

# pyright: reportPrivateUsage=false

from __future__ import annotations

import random

import httpx
import pytest
import trio
import trio.testing
from _simkit import API_KEY, BASE_URL, ASGIApp, Receive, Scope, Send, SimStack, sim_stack

from tinkex_trio import types as t
from tinkex_trio._apifuture import APIFuture, Outcome
from tinkex_trio._session import Session, open_session
from tinkex_trio.errors import SessionClosedError, TinkexError

CANCEL_TRIALS = 200
INTERRUPT_TRIALS = 60
BASE = "Qwen/Qwen3-8B"


def our_tasks() -> list[str]:
    root = trio.lowlevel.current_root_task()
    assert root is not None
    names: list[str] = []
    stack = [root]
    while stack:
        task = stack.pop()
        if task.name.startswith("tinkex_trio.") and not task.name.startswith("tinkex_trio.sim"):
            names.append(task.name)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return names


def datum() -> t.Datum:
    return t.datum([1, 2, 3, 4], target_tokens=[2, 3, 4, 5], weights=[1.0] * 4)


async def workload(session: Session) -> None:
    """What a user does in a session: pipelined training steps, a sampler, samples in parallel."""
    trainer = await session.create_lora_training_client(BASE, rank=4, seed=1)
    for _ in range(2):
        fwd = await trainer.submit_forward_backward([datum()], "cross_entropy")
        opt = await trainer.submit_optim_step(t.AdamParams(learning_rate=0.01))
        await fwd.result()
        await opt.result()
    sampler = await trainer.save_weights_and_get_sampling_client()
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(sampler.sample, t.ModelInput.from_ints([1, 2]), 1, t.SamplingParams(max_tokens=3))
    except BaseExceptionGroup as group:
        # The user's own nursery groups what its tasks raise; its lone exception stands for it.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def run_to_completion(sim: SimStack) -> float:
    started = trio.current_time()
    async with sim.session() as session:
        await workload(session)
    return trio.current_time() - started


async def test_random_cancellation_points_leave_nothing_behind(autojump_clock: trio.testing.MockClock) -> None:
    rng = random.Random(7)
    async with sim_stack() as sim:
        duration = await run_to_completion(sim)
    assert duration > 1.0
    cancelled = 0
    for _ in range(CANCEL_TRIALS):
        opened: list[Session] = []
        delay = rng.uniform(0.0, duration * 1.05)
        async with sim_stack() as sim:
            with trio.move_on_after(delay) as scope:
                async with sim.session() as session:
                    opened.append(session)
                    await workload(session)
            cancelled += scope.cancelled_caught
            assert our_tasks() == []
            if opened:
                session = opened[0]
                assert session._ctx.futures.pending_count == 0
                record = sim.app.state.sessions[session.session_id]
                assert record.finished == ("interrupted" if scope.cancelled_caught else "success")
    assert cancelled > CANCEL_TRIALS * 0.8  # the points fell inside the run, not after it


class InterruptAt:
    """ASGI middleware: raises KeyboardInterrupt inside the ``at``-th request (0-based), in the task that sent it."""

    def __init__(self, app: ASGIApp, at: int) -> None:
        self.app = app
        self.at = at
        self.count = 0
        self.endpoint: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            index, self.count = self.count, self.count + 1
            if index == self.at:
                self.endpoint = scope["path"]
                raise KeyboardInterrupt
        await self.app(scope, receive, send)


async def test_random_ctrl_c_points_leave_as_a_bare_keyboard_interrupt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rng = random.Random(11)
    async with sim_stack() as sim:
        probe = InterruptAt(sim.rec, at=-1)
        async with open_session(
            API_KEY, BASE_URL, transport_factory=lambda pool: httpx.ASGITransport(app=probe)
        ) as session:
            await workload(session)
        total = probe.count
    endpoints: set[str] = set()
    for _ in range(INTERRUPT_TRIALS):
        async with sim_stack() as sim:
            # Past the bootstrap (3 requests), before the finish.
            interrupt = InterruptAt(sim.rec, at=rng.randrange(3, total - 1))
            opened: list[Session] = []
            with pytest.raises(KeyboardInterrupt) as info:
                async with open_session(
                    API_KEY, BASE_URL, transport_factory=lambda pool, app=interrupt: httpx.ASGITransport(app=app)
                ) as session:
                    opened.append(session)
                    await workload(session)
            assert type(info.value) is KeyboardInterrupt
            assert interrupt.endpoint is not None
            endpoints.add(interrupt.endpoint.rsplit("/", 1)[-1])
            assert our_tasks() == []
            [session] = opened
            assert session._ctx.futures.pending_count == 0
            assert sim.app.state.sessions[session.session_id].finished == "interrupted"
    # The interrupts landed in the body's own requests and in the background poll tasks.
    assert {"retrieve_future", "forward_backward", "asample"} <= endpoints, endpoints


async def test_a_second_ctrl_c_during_the_shielded_finish_exits_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with sim_stack() as sim:
        finishing = False

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            nonlocal finishing
            if scope["type"] == "http" and scope["path"].endswith("/finish"):
                finishing = True
                raise KeyboardInterrupt  # the second Ctrl-C, inside the shielded finish
            await sim.rec(scope, receive, send)

        started = trio.current_time()
        opened: list[Session] = []
        with pytest.raises(KeyboardInterrupt):
            async with open_session(
                API_KEY, BASE_URL, transport_factory=lambda pool: httpx.ASGITransport(app=app)
            ) as s:
                opened.append(s)
                trainer = await s.create_lora_training_client(BASE, rank=4)
                await trainer.submit_forward_backward([datum()], "cross_entropy")  # a future left pending
                raise KeyboardInterrupt  # the first Ctrl-C
        assert finishing
        assert trio.current_time() - started < 5.0
        assert our_tasks() == []
        assert opened[0]._ctx.futures.pending_count == 0
        with pytest.raises(TinkexError):
            opened[0]._check_alive()


async def test_a_cancelled_waiter_gets_cancelled_even_if_its_future_failed_in_the_same_tick() -> None:
    # The race behind "move_on_after around the session surfaces SessionClosedError": the session's cancellation
    # fails a pending future with SessionClosedError (waking its waiter) before the waiter's own cancellation is
    # delivered. The waiter must leave with Cancelled, caught by its scope.
    outcome: Outcome[int] = Outcome()
    future = APIFuture("req-1", "OptimStep", outcome=outcome)
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:

            async def fail_then_cancel() -> None:
                outcome.set_exception(SessionClosedError("closed"))
                scope.cancel()

            nursery.start_soon(fail_then_cancel)
            await future.result()
    assert scope.cancelled_caught
