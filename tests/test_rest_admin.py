"""RestClient's admin reads (the official SDK's AdminClient: get_audit_log, get_billing_usage,
get_current_checkpoint_storage_usage) against the simulator in process, under trio's MockClock, with the simulator's
wall clock pinned so that hour buckets and days are exact."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl

import pytest
import trio
from _simkit import SimStack, pattern_batch, sim_config, sim_stack

import tinkex_trio as tx
from tinkex_trio import types as t
from tinkex_trio.errors import BadRequestError, InvalidArgumentError, InvalidArgumentTypeError

BASE = "Qwen/Qwen3-8B"
NOW = datetime(2026, 3, 2, 10, 17, 5, tzinfo=UTC)


class Clock:
    """The simulator's wall clock (``SimState.clock``), moved by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def sim() -> AsyncGenerator[SimStack]:
    # pytest-trio takes the clock from the test's own arguments: tests using this fixture also ask for autojump_clock.
    async with sim_stack(sim_config()) as stack:
        yield stack


def pin(sim: SimStack) -> Clock:
    clock = Clock(NOW)
    sim.app.state.clock = clock
    return clock


def queries(sim: SimStack, endpoint: str) -> list[dict[str, str]]:
    return [dict(parse_qsl(s.query)) for s in sim.rec.requests(endpoint)]


# -- audit log ---------------------------------------------------------------------------------------------------------


async def test_audit_log_records_checkpoint_events(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    clock = pin(sim)
    async with sim.session() as session:
        trainer = await session.create_lora_training_client(BASE, rank=4, seed=1)
        state = await trainer.save_state("a")
        weights = await trainer.save_weights_for_sampler("s")
        await trainer.load_state(state)
        await session.create_sampling_client(model_path=weights)
        rest = session.rest
        await rest.publish_checkpoint_from_tinker_path(weights)
        await rest.unpublish_checkpoint_from_tinker_path(weights)
        await rest.delete_checkpoint_from_tinker_path(state)

        log = await rest.get_audit_log()
        assert [(e.event, e.tinker_path, e.purpose) for e in log.entries] == [
            ("checkpoint_create", state, None),
            ("checkpoint_create", weights, None),
            ("checkpoint_read", state, "load_weights"),
            ("checkpoint_read", weights, "sampling"),
            ("checkpoint_publish", weights, None),
            ("checkpoint_unpublish", weights, None),
            ("checkpoint_delete", state, None),
        ]
        first = log.entries[0]
        assert first.timestamp == NOW and first.model_id == trainer.model_id
        assert first.event_details == {
            "actor": "sim-user",
            "tinker_path": state,
            "training_run_id": trainer.model_id,
            "session_id": session.session_id,
        }
        assert log.entries[2].event_details["purpose"] == "load_weights"

        assert len((await rest.get_audit_log("checkpoints", NOW.date())).entries) == 7
        assert (await rest.get_audit_log("projects")).entries == []  # the simulator audits checkpoints only
        assert (await rest.get_audit_log(day=date(2026, 3, 1))).entries == []
        clock.now += timedelta(days=1)
        assert (await rest.get_audit_log()).entries == []  # a new UTC day
    sent = sim.rec.requests("audit")
    assert [s.method for s in sent] == ["GET"] * 5
    assert sent[0].headers["x-sdk-method"] == "RestClient.get_audit_log"
    assert queries(sim, "audit")[:4] == [
        {"event_type": "all"},
        {"event_type": "checkpoints", "day": "2026-03-02"},
        {"event_type": "projects"},
        {"event_type": "all", "day": "2026-03-01"},
    ]


async def test_audit_log_arguments(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        with pytest.raises(InvalidArgumentError, match="event_type") as info:
            await session.rest.get_audit_log("checkpoint")  # pyright: ignore[reportArgumentType]
        assert info.value.argument == "event_type"
        with pytest.raises(InvalidArgumentTypeError, match=r"datetime\.date"):
            await session.rest.get_audit_log(day=NOW)
        with pytest.raises(InvalidArgumentTypeError, match=r"datetime\.date"):
            await session.rest.get_audit_log(day="2026-03-02")  # pyright: ignore[reportArgumentType]
    assert sim.rec.requests("audit") == []


# -- billing usage -----------------------------------------------------------------------------------------------------


def usage(response: t.BillingUsageResponse) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for event in response.data:
        info = event.event_info
        match info:
            case t.CheckpointBillingEvent():
                quantity: Any = info.count
            case t.StorageBillingEvent():
                quantity = info.gigabyte_hours
            case _:
                quantity = info.token_count
        out.append((event.bucket_start.hour, type(info).__name__, quantity, event.session_id, event.project_id))
    return out


async def test_billing_usage_counts_by_the_hour(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    clock = pin(sim)
    async with sim.session(user_metadata={"team": "rl"}) as session:
        sid = session.session_id
        trainer = await session.create_lora_training_client(BASE, rank=4, seed=1)
        batch = pattern_batch()
        tokens = sum(d.model_input.length for d in batch)
        await trainer.forward_backward(batch, "cross_entropy")
        await trainer.forward_backward(batch, "cross_entropy")
        await trainer.save_state("c1")
        sampler = await trainer.save_weights_and_get_sampling_client()  # ephemeral: no checkpoint
        result = await sampler.sample(tx.ModelInput.from_ints([1, 2, 3]), 2, tx.SamplingParams(max_tokens=4))
        sampled = sum(len(s.tokens) for s in result.sequences)
        clock.now = NOW + timedelta(hours=1)
        await trainer.forward(batch, "cross_entropy")
        await session.rest.assign_session_project(sid, "proj-a")

        rest = session.rest
        both = await rest.get_billing_usage("2026-03-02T10:00:00Z", datetime(2026, 3, 2, 12, tzinfo=UTC))
        # Ordered by hour, then by quantity, largest first; the project is the session's current one.
        first_hour = [
            (10, "TrainingBillingEvent", 2 * tokens, sid, "proj-a"),
            (10, "SamplingSampleBillingEvent", sampled, sid, "proj-a"),
            (10, "SamplingPrefillBillingEvent", 3, sid, "proj-a"),
            (10, "CheckpointBillingEvent", 1, sid, "proj-a"),
        ]
        first_hour.sort(key=lambda row: -row[2])
        assert usage(both) == [*first_hour, (11, "TrainingBillingEvent", tokens, sid, "proj-a")]
        first = both.data[0]
        assert first.bucket_start == datetime(2026, 3, 2, 10, tzinfo=UTC)
        assert first.bucket_end == datetime(2026, 3, 2, 11, tzinfo=UTC)
        assert (first.base_model, first.user_id, first.estimated_cost_usd) == (BASE, "sim-user", None)
        (prefill,) = [e.event_info for e in both.data if isinstance(e.event_info, t.SamplingPrefillBillingEvent)]
        assert prefill.cached is False
        assert both.sessions == {sid: t.BillingUsageSession(user_metadata={"team": "rl"})}

        # An offset is turned into UTC: 12:00+02:00 is 10:00Z.
        only_first = await rest.get_billing_usage(
            datetime(2026, 3, 2, 12, tzinfo=timezone(timedelta(hours=2))), "2026-03-02T11:00:00+00:00"
        )
        assert [row[0] for row in usage(only_first)] == [10] * 4
    assert queries(sim, "billing/usage/events") == [
        {"starting_on": "2026-03-02T10:00:00Z", "ending_before": "2026-03-02T12:00:00Z"},
        {"starting_on": "2026-03-02T10:00:00Z", "ending_before": "2026-03-02T11:00:00Z"},
    ]
    assert sim.rec.requests("billing/usage/events")[0].headers["x-sdk-method"] == "RestClient.get_billing_usage"


async def test_billing_usage_arguments_and_the_servers_rules(
    sim: SimStack, autojump_clock: trio.testing.MockClock
) -> None:
    pin(sim)
    async with sim.session() as session:
        rest = session.rest
        for start, end, argument in [
            (datetime(2026, 3, 2, 10), "2026-03-02T11:00:00Z", "starting_on"),  # no time zone
            ("2026-03-02T10:00:00Z", "tomorrow", "ending_before"),
            ("2026-03-02T10:00:00Z", "2026-03-02T10:00:00Z", "ending_before"),  # an empty window
            ("2026-03-02", "2026-03-03T00:00:00Z", "starting_on"),  # a date has no time zone
        ]:
            with pytest.raises(InvalidArgumentError) as info:
                await rest.get_billing_usage(start, end)
            assert info.value.argument == argument
        with pytest.raises(InvalidArgumentTypeError):
            await rest.get_billing_usage(1.5, "2026-03-02T11:00:00Z")  # pyright: ignore[reportArgumentType]
        assert sim.rec.requests("billing/usage/events") == []
        for start, end, needle in [
            ("2026-03-02T10:30:00Z", "2026-03-02T11:00:00Z", "whole UTC hour"),
            ("2026-03-02T11:00:00Z", "2026-03-02T12:00:00Z", "future"),
            ("2026-02-01T00:00:00Z", "2026-02-16T00:00:00Z", "14 days"),
        ]:
            with pytest.raises(BadRequestError, match=needle):
                await rest.get_billing_usage(start, end)
        fourteen_days = await rest.get_billing_usage("2026-02-16T10:00:00Z", "2026-03-02T10:00:00Z")
        assert fourteen_days.data == []


# -- checkpoint storage ------------------------------------------------------------------------------------------------


async def test_current_checkpoint_storage_by_project(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as other, sim.session() as session:
        first = await session.create_lora_training_client(BASE, rank=4, seed=1)
        await first.save_state("a")
        await first.save_weights_for_sampler("b")
        second = await other.create_lora_training_client(BASE, rank=8, seed=1)
        await second.save_state("c")
        await session.rest.assign_session_project(session.session_id, "proj-a")

        rest = session.rest
        size: dict[str, int] = {first.model_id: 0, second.model_id: 0}
        async for checkpoint in rest.iter_user_checkpoints():
            size[t.TinkerPath.parse(checkpoint.tinker_path).model_id] += checkpoint.size_bytes or 0
        everything = await rest.get_current_checkpoint_storage_usage()
        assert [(i.project_id, i.checkpoint_count, i.size_bytes) for i in everything.data] == [
            ("default", 1, size[second.model_id]),
            ("proj-a", 2, size[first.model_id]),
        ]
        item = everything.data[1]
        assert item.size_gigabytes == item.size_bytes / 1e9 and item.org_user_urn == "sim-user"
        assert item.estimated_monthly_cost_usd is None and everything.effective_rate_usd_per_gigabyte_month is None
        one = await rest.get_current_checkpoint_storage_usage("proj-a")
        assert [i.project_id for i in one.data] == ["proj-a"]
        assert (await rest.get_current_checkpoint_storage_usage("proj-none")).data == []
        with pytest.raises(InvalidArgumentError):
            await rest.get_current_checkpoint_storage_usage("")
    assert len(sim.rec.requests("billing/usage/checkpoints/current")) == 3
