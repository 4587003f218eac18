"""Partial failure in batches (issue 14): ``forward_backward_batch`` / ``optim_step_batch`` with ``return_exceptions``,
against the simulator, with what the server applied checked; empty and oversized batches.

A run-time failure is a datum with an infinite weight: the server accepts the request, then fails it
(RequestFailedError: nothing applied). A refusal is a 422 answered in front of the simulator for chosen seq_ids (the
seq_id is used up on the server, as a real refusal does). Items merged into one request share its fate.
"""

# pyright: reportPrivateUsage=false

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from _simkit import API_KEY, BASE_URL, Gate, Reply, SimStack, drain, sim_config, sim_stack

from tinkex_trio import types as t
from tinkex_trio._config import BatchingConfig, Config
from tinkex_trio._proto import _codec
from tinkex_trio._session import open_session
from tinkex_trio._telemetry import BATCH_FORWARD_BACKWARD_STOP
from tinkex_trio._training import TrainingClient
from tinkex_trio.errors import (
    BatchItemTooLargeError,
    CircuitOpenError,
    InvalidArgumentError,
    RequestFailedError,
    TinkexError,
    UnprocessableEntityError,
)

BASE = "Qwen/Qwen3-8B"
PATTERN = [1, 2, 3, 4, 5, 6, 7, 8] * 4
PAIRS = BatchingConfig(max_items=2)  # 4 items -> requests (0, 1), (2, 3)
OFF = BatchingConfig(enabled=False)  # one request per item


def ce(length: int = 5, offset: int = 0) -> t.Datum:
    tokens = PATTERN[offset : offset + length + 1]
    return t.datum(tokens[:-1], target_tokens=tokens[1:], weights=[1.0] * length)


def bad() -> t.Datum:
    """Accepted by the server, failed when it runs (it refuses non-finite inputs)."""
    return t.datum([1, 2], target_tokens=[2, 3], weights=[1.0, math.inf])


def items_with_bad(at: int, n: int = 4) -> list[tuple[list[t.Datum], str, None]]:
    return [([bad()] if i == at else [ce(4 + i, i)], "cross_entropy", None) for i in range(n)]


def config(batching: BatchingConfig) -> Config:
    return Config(api_key=API_KEY, base_url=BASE_URL, batching=batching)


def model_record(sim: SimStack, trainer: TrainingClient) -> Any:
    return sim.app.state.models[trainer.model_id]


def fwd_seq_ids(sim: SimStack) -> list[int]:
    return [_codec.decode_forward_backward_request(s.body).seq_id for s in sim.rec.requests("forward_backward")]


def failed_items(results: list[t.ForwardBackwardOutput | TinkexError]) -> list[int]:
    return [i for i, r in enumerate(results) if isinstance(r, TinkexError)]


# -- return_exceptions=True: one entry per item ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batching", "at", "failed", "requests"),
    [
        # Merged in pairs: the bad item's request fails, with both of its items.
        (PAIRS, 0, [0, 1], 2),
        (PAIRS, 1, [0, 1], 2),
        (PAIRS, 2, [2, 3], 2),
        (PAIRS, 3, [2, 3], 2),
        # Unmerged: only the bad item fails.
        (OFF, 0, [0], 4),
        (OFF, 2, [2], 4),
        (OFF, 3, [3], 4),
    ],
    ids=["merged-first", "merged-second", "merged-third", "merged-last", "alone-first", "alone-middle", "alone-last"],
)
async def test_return_exceptions_gives_each_item_its_output_or_error(
    batching: BatchingConfig, at: int, failed: list[int], requests: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with sim_stack(sim_config()) as sim, sim.session(config=config(batching)) as session:
        trainer = await session.create_lora_training_client(BASE, rank=4, seed=11)
        results = await trainer.forward_backward_batch(items_with_bad(at), return_exceptions=True)
        assert len(results) == 4
        assert failed_items(results) == failed
        for i in failed:
            assert isinstance(results[i], RequestFailedError)
        if len(failed) == 2:  # the items of one merged request share its error
            assert results[failed[0]] is results[failed[1]]
        for i, r in enumerate(results):
            if i not in failed:
                assert isinstance(r, t.ForwardBackwardOutput) and len(r.loss_fn_outputs) == 1
        # Every request went out (consecutive seq_ids); the server applied exactly the ones that did not fail.
        assert fwd_seq_ids(sim) == list(range(1, requests + 1))
        record = model_record(sim, trainer)
        applied = requests - 1  # one request failed
        assert record.forward_backward_applied == applied
        step = await trainer.optim_step(t.AdamParams(learning_rate=0.01))
        assert step is not None
        assert record.steps_applied == 1
        assert len(record.applied_seq_ids) == applied + 1


async def test_a_refused_request_in_the_middle_leaves_the_later_ones_going(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with sim_stack(sim_config()) as sim:
        refused = {2}
        sent: list[int] = []  # every seq_id that reached the server (refused ones too)

        def judge(path: str, body: bytes) -> Reply | None:
            if path.endswith("/forward_backward"):
                decoded = _codec.decode_forward_backward_request(body)
                sent.append(decoded.seq_id)
                if decoded.seq_id in refused:
                    sim.app.queue.consume_seq(decoded.model_id, decoded.seq_id, "rejected: test")
                    return Reply(422, {"detail": "bad item"})
            return None

        gate = Gate(sim.rec, judge)

        def factory(pool: object) -> httpx.AsyncBaseTransport:
            return httpx.ASGITransport(app=gate)

        async with open_session(API_KEY, BASE_URL, transport_factory=factory, config=config(OFF)) as session:
            trainer = await session.create_lora_training_client(BASE, rank=4, seed=11)
            items = [([ce(4 + i, i)], "cross_entropy", None) for i in range(4)]
            results = await trainer.forward_backward_batch(items, return_exceptions=True)
            assert failed_items(results) == [1]
            assert isinstance(results[1], UnprocessableEntityError)
            record = model_record(sim, trainer)
            assert sent == [1, 2, 3, 4]
            assert record.applied_seq_ids == [1, 3, 4] and record.forward_backward_applied == 3

            # return_exceptions=False: the refusal stops the batch; what was sent before it is settled first.
            refused.add(6)
            with pytest.raises(UnprocessableEntityError):
                await trainer.forward_backward_batch(items)
            assert sent == [1, 2, 3, 4, 5, 6]  # items 2 and 3 were never sent
            assert record.applied_seq_ids == [1, 3, 4, 5] and record.forward_backward_applied == 4
            assert trainer.in_doubt == ()
            await trainer.optim_step(t.AdamParams())  # every seq_id settled: the model goes on
            assert record.applied_seq_ids == [1, 3, 4, 5, 7]


# -- return_exceptions=False: the first failure, after everything sent is settled ------------------------------------


@pytest.mark.parametrize("at", [0, 2, 3], ids=["first", "middle", "last"])
async def test_the_first_failure_is_raised_after_every_sent_request_is_settled(
    at: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with sim_stack(sim_config()) as sim, sim.session(config=config(OFF)) as session:
        rx = session.telemetry.subscribe(events="tinkex.batch.*")
        trainer = await session.create_lora_training_client(BASE, rank=4, seed=11)
        with pytest.raises(RequestFailedError):
            await trainer.forward_backward_batch(items_with_bad(at))
        # The failure is only known once the server ran the request, after all four were accepted: every one was
        # sent and awaited, and the three good ones applied, before the error came out.
        record = model_record(sim, trainer)
        assert fwd_seq_ids(sim) == [1, 2, 3, 4]
        assert record.forward_backward_applied == 3
        assert sorted(record.applied_seq_ids) == [s for s in (1, 2, 3, 4) if s != at + 1]
        stop = [e for e in drain(rx) if e.name == BATCH_FORWARD_BACKWARD_STOP]
        assert len(stop) == 1 and stop[0].metadata["outcome"] == "error"
        # No request of the batch is left pending.
        assert session._ctx.futures.pending_count == 0


async def test_two_failures_raise_the_first_in_item_order(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config()) as sim, sim.session(config=config(OFF)) as session:
        trainer = await session.create_lora_training_client(BASE, rank=4, seed=11)
        items = items_with_bad(1)
        items[3] = ([bad(), bad()], "cross_entropy", None)
        results = await trainer.forward_backward_batch(items, return_exceptions=True)
        assert failed_items(results) == [1, 3]
        with pytest.raises(RequestFailedError) as info:
            await trainer.forward_backward_batch(items)
        assert info.value is not None
        assert model_record(sim, trainer).forward_backward_applied == 4  # 2 of each batch


# -- optim_step_batch -----------------------------------------------------------------------------------------------


async def test_optim_step_batch_with_a_refused_step(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config()) as sim:
        refused: set[int] = set()
        sent: list[int | None] = []

        def judge(path: str, body: bytes) -> Reply | None:
            if path.endswith("/optim_step"):
                request = t.decoder_for(t.OptimStepRequest).decode(body)
                sent.append(request.seq_id)
                if request.seq_id in refused:
                    sim.app.queue.consume_seq(request.model_id, request.seq_id, "rejected: test")
                    return Reply(422, {"detail": "bad step"})
            return None

        gate = Gate(sim.rec, judge)

        def factory(pool: object) -> httpx.AsyncBaseTransport:
            return httpx.ASGITransport(app=gate)

        async with open_session(API_KEY, BASE_URL, transport_factory=factory) as session:
            trainer = await session.create_lora_training_client(BASE, rank=4, seed=11)
            params = [t.AdamParams(learning_rate=0.01 * (i + 1)) for i in range(3)]
            refused.add(2)  # the middle step
            results = await trainer.optim_step_batch(params, return_exceptions=True)
            assert [type(r).__name__ for r in results] == [
                "OptimStepResponse",
                "UnprocessableEntityError",
                "OptimStepResponse",
            ]
            record = model_record(sim, trainer)
            assert record.applied_seq_ids == [1, 3] and record.steps_applied == 2

            refused.add(4)  # the first step of the next batch: nothing else is sent
            with pytest.raises(UnprocessableEntityError):
                await trainer.optim_step_batch(params)
            assert sent == [1, 2, 3, 4]
            assert record.steps_applied == 2

            refused.add(7)  # the last step: the two before it are applied and awaited first
            with pytest.raises(UnprocessableEntityError):
                await trainer.optim_step_batch(params)
            assert record.applied_seq_ids == [1, 3, 5, 6] and record.steps_applied == 4


# -- empty, oversized, breaker open ----------------------------------------------------------------------------------


async def test_empty_batches_return_an_empty_list_without_a_request(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config()) as sim, sim.session() as session:
        rx = session.telemetry.subscribe(events="tinkex.batch.*")
        trainer = await session.create_lora_training_client(BASE, rank=4, seed=11)
        before = len(sim.rec.seen)
        assert await trainer.forward_backward_batch([]) == []
        assert await trainer.forward_backward_batch([], return_exceptions=True) == []
        assert await trainer.optim_step_batch([]) == []
        assert await trainer.optim_step_batch(iter([]), return_exceptions=True) == []
        assert len(sim.rec.seen) == before
        assert drain(rx) == []
        # No seq_id was taken: the next call is seq 1.
        await trainer.forward_backward([ce()], "cross_entropy")
        assert fwd_seq_ids(sim) == [1]
        with pytest.raises(InvalidArgumentError, match="return_exceptions must be a bool"):
            await trainer.forward_backward_batch([], return_exceptions=1)  # type: ignore[call-overload]


async def test_an_item_too_large_for_any_request_is_refused_before_anything_is_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with sim_stack(sim_config()) as sim:
        sim.app.config.client_config = {"fwdbwd_max_chunk_bytes_count": 200}
        async with sim.session() as session:
            trainer = await session.create_lora_training_client(BASE, rank=4, seed=11)
            small = [ce(3)]  # 3 tokens + 3 target tokens + 3 weights: well under 200 bytes
            huge = t.datum(list(range(20)) * 2, target_tokens=list(range(40)), weights=[1.0] * 40)
            items: list[tuple[list[t.Datum], str, None]] = [
                (small, "cross_entropy", None),
                (small, "cross_entropy", None),
                ([ce(2), huge], "cross_entropy", None),
            ]
            for return_exceptions in (False, True):
                with pytest.raises(BatchItemTooLargeError) as info:
                    await trainer.forward_backward_batch(items, return_exceptions=return_exceptions)
                error = info.value
                assert (error.index, error.datum_index, error.limit) == (2, 1, 200)
                assert error.size > 200 and error.argument == "items[2]"
                assert "items[2].data[1]" in str(error) and "200 bytes" in str(error)
                assert isinstance(error, InvalidArgumentError)
            assert sim.rec.requests("forward_backward") == []
            # An item merely too large to merge is fine: it travels alone, chunked.
            outs = await trainer.forward_backward_batch([(small, "cross_entropy", None)] * 3)
            assert len(outs) == 3


async def test_an_open_breaker_fails_every_item_without_sending(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config()) as sim, sim.session(config=config(OFF)) as session:
        trainer = await session.create_lora_training_client(BASE, rank=4, seed=11)
        session.breaker.force_open(trio.current_time())
        items = [([ce(4 + i, i)], "cross_entropy", None) for i in range(3)]
        results = await trainer.forward_backward_batch(items, return_exceptions=True)
        assert all(isinstance(r, CircuitOpenError) for r in results)
        steps = await trainer.optim_step_batch([t.AdamParams()] * 2, return_exceptions=True)
        assert all(isinstance(r, CircuitOpenError) for r in steps)
        with pytest.raises(CircuitOpenError):
            await trainer.forward_backward_batch(items)
        assert sim.rec.requests("forward_backward") == [] and sim.rec.requests("optim_step") == []
        session.breaker.reset(trio.current_time())
        outs = await trainer.forward_backward_batch(items)
        assert len(outs) == 3 and fwd_seq_ids(sim) == [1, 2, 3]  # nothing was taken while it was open
