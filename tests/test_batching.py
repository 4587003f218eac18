"""Request batching: the sans-I/O planner and splitter (no trio), and forward_backward_batch against the simulator.

The integration tests run every batch twice on fresh models with the same seed, once with batching off (one request
per item: the reference) and once with it on, and compare what each item got back (logprobs, ``loss:sum``), how many
forward_backward requests the server saw, and the gradients / weights the server ended up with.
"""

# pyright: reportPrivateUsage=false

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from _simkit import API_KEY, BASE_URL, SimStack, drain, sim_config, sim_stack
from hypothesis import given, settings
from hypothesis import strategies as st

from tinkex_trio import types as t
from tinkex_trio._batching import (
    LOSS_SUM,
    PlannedRequest,
    WorkItem,
    item_loss_sum,
    plan_requests,
    resolve_loss_config,
    split_output,
)
from tinkex_trio._chunking import datum_bytes as _datum_bytes
from tinkex_trio._chunking import plan_chunks
from tinkex_trio._config import BatchingConfig, Config
from tinkex_trio._proto import _codec
from tinkex_trio._telemetry import (
    BATCH_FORWARD_BACKWARD_START,
    BATCH_FORWARD_BACKWARD_STOP,
    BATCH_OPTIM_STEP_START,
    BATCH_OPTIM_STEP_STOP,
)
from tinkex_trio.errors import ResponseValidationError

BASE = "Qwen/Qwen3-8B"
PATTERN = [1, 2, 3, 4, 5, 6, 7, 8] * 4
PPO_CONFIG: dict[str, float | str] = {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}
DRO_CONFIG: dict[str, float | str] = {"beta": 0.3}


# -- data -------------------------------------------------------------------------------------------------------------


def ce_datum(length: int, offset: int = 0, weight: float = 1.0) -> t.Datum:
    tokens = PATTERN[offset : offset + length + 1]
    weights = [weight * (1.0 + 0.25 * (i % 3)) for i in range(length)]
    return t.datum(tokens[:-1], target_tokens=tokens[1:], weights=weights)


def rl_datum(length: int, seed: int) -> t.Datum:
    """An RL datum whose sampler logprobs ``q`` and advantages spread the ratios over both sides of the clip range."""
    rng = np.random.default_rng(seed)
    tokens = [int(x) for x in rng.integers(0, 30, size=length + 1)]
    q = rng.uniform(-6.0, -1.0, size=length).astype(np.float32)
    adv = rng.normal(0.0, 1.0, size=length).astype(np.float32)
    return t.datum(tokens[:-1], target_tokens=tokens[1:], logprobs=q, advantages=adv)


def ce_item(*lengths: int, config: dict[str, float | str] | None = None) -> WorkItem:
    return WorkItem([ce_datum(n, i) for i, n in enumerate(lengths)], "cross_entropy", config)


def any_item(loss_fn: str, *lengths: int, config: dict[str, float | str] | None = None, seed: int = 0) -> WorkItem:
    if loss_fn == "cross_entropy":
        return ce_item(*lengths, config=config)
    return rl_item(loss_fn, *lengths, config=config, seed=seed)


def rl_item(loss_fn: str, *lengths: int, config: dict[str, float | str] | None = None, seed: int = 0) -> WorkItem:
    return WorkItem([rl_datum(n, seed * 100 + i) for i, n in enumerate(lengths)], loss_fn, config)


def plan(
    items: Sequence[WorkItem], max_len: int = 1024, max_bytes: int = 5_000_000, max_items: int = 64
) -> list[PlannedRequest]:
    return plan_requests(items, datum_bytes=_datum_bytes, max_len=max_len, max_bytes=max_bytes, max_items=max_items)


def groups(requests: Sequence[PlannedRequest]) -> list[tuple[int, ...]]:
    return [r.items for r in requests]


# -- planner ----------------------------------------------------------------------------------------------------------


def test_consecutive_items_with_the_same_loss_and_config_merge_in_order() -> None:
    items = [
        ce_item(3),
        ce_item(4, 2, config={}),  # {} and None both mean the defaults
        rl_item("ppo", 5, config=PPO_CONFIG, seed=1),
        rl_item("ppo", 6, 2, config=dict(PPO_CONFIG), seed=2),
        ce_item(2),
    ]
    requests = plan(items)
    assert groups(requests) == [(0, 1), (2, 3), (4,)]
    assert [r.counts for r in requests] == [(1, 2), (1, 2), (1,)]
    assert [r.merged for r in requests] == [True, True, False]
    # The merged data are the items' datums, concatenated in order.
    assert requests[0].data == (*items[0].data, *items[1].data)
    assert requests[1].data == (*items[2].data, *items[3].data)
    assert requests[1].loss_fn == "ppo" and requests[1].loss_fn_config == PPO_CONFIG
    assert requests[1].loss_config == {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}
    assert requests[0].loss_config == {}


def test_different_losses_or_configs_and_non_adjacent_items_do_not_merge() -> None:
    items = [
        ce_item(3),
        rl_item("ppo", 3),
        ce_item(3),  # same loss as item 0, but not adjacent: never reordered
        rl_item("ppo", 3, config=PPO_CONFIG),
        rl_item("ppo", 3, config={"clip_low_threshold": 0.9, "clip_high_threshold": 1.2}),
        rl_item("ppo", 3, config={"clip_low_threshold": 0.8}),  # equal to the defaults, but not equal as given
        rl_item("ppo", 3),
        rl_item("cispo", 3),
        rl_item("importance_sampling", 3),
    ]
    assert groups(plan(items)) == [(i,) for i in range(len(items))]


@pytest.mark.parametrize(
    ("loss_fn", "config", "mergeable"),
    [
        ("cross_entropy", None, True),
        ("cross_entropy", {"clip_low_threshold": 0.5}, False),  # a key the loss does not know
        ("importance_sampling", None, True),
        ("ppo", {"clip_low_threshold": 0.7}, True),
        ("ppo", {"clip_low_threshold": "0.7"}, False),  # not a number
        ("ppo", {"clip_low_threshold": math.nan}, False),
        ("cispo", {"clip_high_threshold": 1.5}, True),
        ("dro", {"beta": 0.1}, True),
        ("dro", None, False),  # beta has no default in the spec
        ("custom", {"loss_id": 1.0}, False),
        ("gspo", None, False),
        ("stable_reinforce", None, False),
    ],
)
def test_which_losses_and_configs_can_merge(
    loss_fn: str, config: dict[str, float | str] | None, mergeable: bool
) -> None:
    assert (resolve_loss_config(loss_fn, config) is not None) is mergeable
    items = [any_item(loss_fn, n, config=config, seed=n) for n in (3, 4, 2)]
    assert groups(plan(items)) == ([(0, 1, 2)] if mergeable else [(0,), (1,), (2,)])


def test_resolved_configs_fill_the_defaults() -> None:
    assert resolve_loss_config("ppo", None) == {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    assert resolve_loss_config("cispo", {"clip_low_threshold": 1}) == {
        "clip_low_threshold": 1.0,
        "clip_high_threshold": 1.2,
    }
    assert resolve_loss_config("dro", {"beta": 2}) == {"beta": 2.0}
    assert resolve_loss_config("ppo", {"clip_low_threshold": True}) is None  # a bool is not a number here


def test_data_whose_loss_cannot_be_recomputed_is_not_merged() -> None:
    good = ce_datum(4)
    missing = t.datum([1, 2, 3], target_tokens=[2, 3, 4])  # no weights
    sparse = t.Datum(
        model_input=t.ModelInput.from_ints([1, 2]),
        loss_fn_inputs={
            "target_tokens": t.TensorData.from_numpy(np.array([[2, 3]])),
            "weights": t.TensorData.sparse_from_numpy(np.array([[0.0, 1.0]], dtype=np.float32)),
        },
    )
    short = t.datum([1, 2, 3], target_tokens=[2, 3, 4], weights=[1.0, 1.0])
    for bad in (missing, sparse, short):
        items = [WorkItem([good], "cross_entropy"), WorkItem([good, bad], "cross_entropy")]
        requests = plan(items)
        assert groups(requests) == [(0,), (1,)]
        assert requests[1].loss_config is None
    # An RL item needs both q and the advantages.
    no_adv = t.datum([1, 2], target_tokens=[2, 3], logprobs=[-1.0, -1.0])
    assert groups(plan([rl_item("importance_sampling", 2), WorkItem([no_adv], "importance_sampling")])) == [(0,), (1,)]


def test_merged_requests_stay_within_one_chunk() -> None:
    items = [ce_item(4, 4, 4), ce_item(4, 4), ce_item(4), ce_item(4, 4, 4, 4)]
    assert groups(plan(items, max_len=6)) == [(0, 1, 2), (3,)]
    assert groups(plan(items, max_len=5)) == [(0, 1), (2, 3)]
    # An item larger than one chunk travels alone (and is chunked like any call); the next one starts afresh.
    assert groups(plan(items, max_len=4)) == [(0,), (1, 2), (3,)]
    assert groups(plan(items, max_len=2)) == [(0,), (1,), (2,), (3,)]
    assert groups(plan([ce_item(4), ce_item(4, 4, 4, 4), ce_item(4), ce_item(4)], max_len=2)) == [(0,), (1,), (2, 3)]
    # Bytes: each of these datums is 4·4 token bytes + 4·8 target bytes + 4·4 weight bytes = 64 bytes.
    sizes = [_datum_bytes(d) for d in items[0].data]
    assert sizes == [64, 64, 64]
    assert groups(plan(items, max_bytes=64 * 3)) == [(0,), (1, 2), (3,)]
    assert groups(plan(items, max_bytes=64 * 3 - 1)) == [(0,), (1,), (2,), (3,)]
    # Items per request.
    many = [ce_item(2) for _ in range(7)]
    assert groups(plan(many, max_items=3)) == [(0, 1, 2), (3, 4, 5), (6,)]
    assert groups(plan(many, max_items=1)) == [(i,) for i in range(7)]


def test_bad_plans_raise() -> None:
    with pytest.raises(ValueError, match="item 1 has no data"):
        plan([ce_item(2), WorkItem([], "cross_entropy")])
    with pytest.raises(ValueError, match="max_items"):
        plan([ce_item(2)], max_items=0)
    assert plan([]) == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["cross_entropy", "ppo", "custom"]), st.lists(st.integers(1, 6), min_size=1, max_size=4)
        ),
        max_size=10,
    ),
    st.integers(1, 8),
    st.integers(40, 400),
    st.integers(1, 4),
)
def test_plans_cover_every_item_once_in_order(
    spec: list[tuple[str, list[int]]], max_len: int, max_bytes: int, max_items: int
) -> None:
    items = [any_item(loss, *lengths, seed=i) for i, (loss, lengths) in enumerate(spec)]
    requests = plan(items, max_len=max_len, max_bytes=max_bytes, max_items=max_items)
    assert [i for r in requests for i in r.items] == list(range(len(items)))
    for r in requests:
        assert r.data == tuple(d for i in r.items for d in items[i].data)
        if r.merged:
            assert len(r.items) <= max_items and len({items[i].loss_fn for i in r.items}) == 1
            assert items[r.items[0]].loss_fn != "custom"
            assert len(plan_chunks([_datum_bytes(d) for d in r.data], max_len, max_bytes)) == 1


# -- splitter ---------------------------------------------------------------------------------------------------------


def reference_loss(
    loss_fn: str, config: dict[str, float], data: Sequence[t.Datum], lps: Sequence[list[float]]
) -> float:
    """The §13 loss, position by position in plain Python (independent of the numpy code under test)."""
    total = 0.0
    for datum, lp_row in zip(data, lps, strict=True):
        inputs = {k: [float(x) for x in v.data] for k, v in datum.loss_fn_inputs.items()}
        for i, lp in enumerate(lp_row):
            if loss_fn == "cross_entropy":
                total -= lp * inputs["weights"][i]
                continue
            q, a = inputs["logprobs"][i], inputs["advantages"][i]
            r = math.exp(lp - q)
            if loss_fn == "importance_sampling":
                total -= r * a
            elif loss_fn == "dro":
                total -= lp * a - 0.5 * config["beta"] * (lp - q) ** 2
            else:
                c = min(max(r, config["clip_low_threshold"]), config["clip_high_threshold"])
                total -= c * lp * a if loss_fn == "cispo" else min(r * a, c * a)
    return total


def fake_output(data: Sequence[t.Datum], seed: int) -> tuple[t.ForwardBackwardOutput, list[list[float]]]:
    rng = np.random.default_rng(seed)
    lps = [
        [float(x) for x in rng.uniform(-5.0, -0.5, size=len(d.loss_fn_inputs["target_tokens"].data)).astype(np.float32)]
        for d in data
    ]
    out = t.ForwardBackwardOutput(
        loss_fn_output_type="TensorData",
        loss_fn_outputs=[{"logprobs": t.TensorData.from_numpy(np.array(row, dtype=np.float32))} for row in lps],
        metrics={"loss:sum": 123.0, "tokens:sum": 9.0, "clipfrac:mean": 0.5},
    )
    return out, lps


@pytest.mark.parametrize(
    ("loss_fn", "config"),
    [
        ("cross_entropy", None),
        ("importance_sampling", None),
        ("ppo", None),
        ("ppo", PPO_CONFIG),
        ("cispo", PPO_CONFIG),
        ("dro", DRO_CONFIG),
    ],
)
def test_split_slices_outputs_and_recomputes_each_loss(loss_fn: str, config: dict[str, float | str] | None) -> None:
    items = [any_item(loss_fn, *n, config=config, seed=n[0]) for n in ((3, 5), (7,), (2, 4, 6))]
    (request,) = plan(items)
    output, lps = fake_output(request.data, seed=3)
    results = split_output(request, items, output)
    assert len(results) == 3
    resolved = resolve_loss_config(loss_fn, config)
    assert resolved is not None
    offset = 0
    for item, result in zip(items, results, strict=True):
        n = len(item.data)
        assert result.loss_fn_outputs == output.loss_fn_outputs[offset : offset + n]
        assert result.loss_fn_output_type == "TensorData"
        # Only loss:sum survives, recomputed for the item; the merged metrics are dropped.
        assert list(result.metrics) == [LOSS_SUM]
        expected = reference_loss(loss_fn, resolved, item.data, lps[offset : offset + n])
        assert result.metrics[LOSS_SUM] == pytest.approx(expected, rel=1e-12, abs=1e-12)
        offset += n
    total = reference_loss(loss_fn, resolved, request.data, lps)
    assert sum(r.metrics[LOSS_SUM] for r in results) == pytest.approx(total, rel=1e-12, abs=1e-12)


def test_ppo_recomputation_takes_the_pessimistic_side_of_the_clip() -> None:
    # One position per case: r = exp(lp - q) is 2 (above hi) or 0.5 (below lo), with A of either sign.
    cases = [
        (math.log(2.0), 1.0, 1.2),
        (math.log(2.0), -1.0, -2.0),
        (math.log(0.5), 1.0, 0.5),
        (math.log(0.5), -1.0, -0.8),
    ]
    for log_r, adv, objective in cases:
        datum = t.datum([1], target_tokens=[2], logprobs=[0.0], advantages=[adv])
        out = [{"logprobs": t.TensorData.from_numpy(np.array([log_r], dtype=np.float64), dtype="float32")}]
        loss = item_loss_sum("ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}, [datum], out)
        assert loss == pytest.approx(-objective, rel=1e-6)


def test_a_request_of_one_item_is_passed_through() -> None:
    items = [WorkItem([ce_datum(3)], "custom", {"loss_id": 1.0})]
    (request,) = plan(items)
    output, _ = fake_output(request.data, seed=1)
    assert split_output(request, items, output)[0] is output


def test_split_rejects_bad_server_data() -> None:
    items = [ce_item(3), ce_item(4)]
    (request,) = plan(items)
    output, _ = fake_output(request.data, seed=1)
    short = t.ForwardBackwardOutput(loss_fn_output_type="x", loss_fn_outputs=output.loss_fn_outputs[:1])
    with pytest.raises(ResponseValidationError, match="returned 1 loss_fn_outputs"):
        split_output(request, items, short)
    no_lp = t.ForwardBackwardOutput(loss_fn_output_type="x", loss_fn_outputs=[{}, output.loss_fn_outputs[1]])
    with pytest.raises(ResponseValidationError, match="no logprobs"):
        split_output(request, items, no_lp)
    wrong_size = [{"logprobs": t.TensorData.from_numpy(np.zeros(9, dtype=np.float32))}, output.loss_fn_outputs[1]]
    with pytest.raises(ResponseValidationError, match="9 logprobs for 3 target tokens"):
        split_output(request, items, t.ForwardBackwardOutput(loss_fn_output_type="x", loss_fn_outputs=wrong_size))
    with pytest.raises(ValueError, match="cannot recompute"):
        item_loss_sum("custom", {}, [], [])


# -- against the simulator --------------------------------------------------------------------------------------------

OFF = BatchingConfig(enabled=False)


def session_config(batching: BatchingConfig | None = None) -> Config:
    return Config(api_key=API_KEY, base_url=BASE_URL, batching=batching or BatchingConfig())


def mixed_batch() -> list[tuple[list[t.Datum], str, dict[str, float | str] | None]]:
    return [
        ([ce_datum(6), ce_datum(9, 3)], "cross_entropy", None),
        ([ce_datum(12, 1, weight=0.5)], "cross_entropy", None),
        ([rl_datum(8, 1), rl_datum(5, 2)], "ppo", PPO_CONFIG),
        ([rl_datum(11, 3)], "ppo", PPO_CONFIG),
        ([rl_datum(7, 4)], "ppo", None),
        ([rl_datum(9, 5), rl_datum(4, 6)], "cispo", PPO_CONFIG),
        ([rl_datum(6, 7)], "cispo", PPO_CONFIG),
        ([rl_datum(10, 8)], "dro", DRO_CONFIG),
        ([rl_datum(3, 9), rl_datum(8, 10)], "dro", DRO_CONFIG),
        ([rl_datum(5, 11)], "importance_sampling", None),
        ([rl_datum(6, 12)], "importance_sampling", None),
        ([ce_datum(4, 2)], "cross_entropy", None),
    ]


async def run_batch(sim: SimStack, batching: BatchingConfig) -> tuple[list[t.ForwardBackwardOutput], dict[str, Any]]:
    """The mixed batch on a fresh model; returns the outputs and the server's view (requests, gradients, weights)."""
    sim.rec.seen.clear()
    async with sim.session(config=session_config(batching)) as session:
        trainer = await session.create_lora_training_client(BASE, rank=4, seed=11)
        outs = await trainer.forward_backward_batch(mixed_batch())
        record = sim.app.state.models[trainer.model_id]
        assert record.model is not None
        grads = record.model.gradients()
        await trainer.optim_step(t.AdamParams(learning_rate=0.05))
        return outs, {
            "requests": len(sim.rec.requests("forward_backward")),
            "grads": grads,
            "params": record.model.get_parameters(),
            "applied": record.forward_backward_applied,
        }


async def test_batched_results_equal_the_unbatched_ones(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config()) as sim:
        alone, ref = await run_batch(sim, OFF)
        merged, got = await run_batch(sim, BatchingConfig())
    # 12 items; merged: ce(0,1), ppo(2,3), ppo-defaults(4), cispo(5,6), dro(7,8), is(9,10), ce(11).
    assert ref["requests"] == 12 and got["requests"] == 7
    assert ref["applied"] == 12 and got["applied"] == 7
    assert len(merged) == len(alone) == 12
    for i, (a, b) in enumerate(zip(alone, merged, strict=True)):
        assert len(a.loss_fn_outputs) == len(b.loss_fn_outputs), i
        for x, y in zip(a.loss_fn_outputs, b.loss_fn_outputs, strict=True):
            np.testing.assert_array_equal(x["logprobs"].to_numpy(), y["logprobs"].to_numpy())
        assert np.allclose(a.metrics[LOSS_SUM], b.metrics[LOSS_SUM], rtol=1e-5, atol=1e-5), i
        assert a.metrics[LOSS_SUM] != 0.0
    # Item 4 (ppo with the default clip) and item 11 went alone: the server's own metrics, bit for bit.
    assert merged[4].metrics == alone[4].metrics and merged[11].metrics == alone[11].metrics
    assert np.abs(ref["grads"]["lora_B"]).max() > 0
    # The same gradient was accumulated, so the same weights come out of the optimizer step.
    for name in ("lora_A", "lora_B"):
        # (A's gradient is 0 on a fresh model, whose B starts at 0; B's is not.)
        np.testing.assert_allclose(got["grads"][name], ref["grads"][name], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got["params"][name], ref["params"][name], rtol=1e-9, atol=1e-12)


async def test_merged_requests_respect_the_servers_chunk_limit(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config()) as sim:
        sim.app.config.client_config = {"fwdbwd_max_chunk_len": 3}
        async with sim.session() as session:
            trainer = await session.create_lora_training_client(BASE, rank=4, seed=11)
            data = [[ce_datum(4, i)] for i in range(5)] + [[ce_datum(4, i) for i in range(4)], [ce_datum(5)]]
            outs = await trainer.forward_backward_batch([(d, "cross_entropy", None) for d in data])
            assert [len(o.loss_fn_outputs) for o in outs] == [1, 1, 1, 1, 1, 4, 1]
        sent = [_codec.decode_forward_backward_request(s.body) for s in sim.rec.requests("forward_backward")]
        # Items 0-2 and 3-4 merged (3 + 2 datums); the 4-datum item is chunked on its own (3 + 1, first chunk last);
        # the last item goes alone.
        assert [(r.seq_id, len(r.data)) for r in sent] == [(1, 3), (2, 2), (4, 1), (3, 3), (5, 1)]


async def test_max_items_and_disabled_batching(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config()) as sim:
        items = [([ce_datum(3, i)], "cross_entropy", None) for i in range(5)]
        for batching, expected in ((BatchingConfig(max_items=2), 3), (BatchingConfig(max_batch_datums=4), 2), (OFF, 5)):
            sim.rec.seen.clear()
            async with sim.session(config=session_config(batching)) as session:
                trainer = await session.create_lora_training_client(BASE, rank=4, seed=11)
                outs = await trainer.forward_backward_batch(items)
            assert len(outs) == 5
            assert len(sim.rec.requests("forward_backward")) == expected, batching


async def test_batch_telemetry_and_pipelined_optim_steps(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config()) as sim, sim.session() as session:
        rx = session.telemetry.subscribe(events="tinkex.batch.*")
        trainer = await session.create_lora_training_client(BASE, rank=4, seed=11)
        items = [([ce_datum(3, i), ce_datum(2)], "cross_entropy", None) for i in range(3)]
        await trainer.forward_backward_batch(items)
        steps = await trainer.optim_step_batch([t.AdamParams(learning_rate=0.01), t.AdamParams(learning_rate=0.02)])
        assert len(steps) == 2
        events = drain(rx)
        assert [e.name for e in events] == [
            BATCH_FORWARD_BACKWARD_START,
            BATCH_FORWARD_BACKWARD_STOP,
            BATCH_OPTIM_STEP_START,
            BATCH_OPTIM_STEP_STOP,
        ]
        start, stop, opt_start, opt_stop = events
        counts = {"items": 3, "requests": 1, "datums": 6}
        assert {k: v for k, v in start.measurements.items() if k != "system_time"} == counts
        assert {k: v for k, v in stop.measurements.items() if k != "duration_ms"} == counts
        # Submit, then about 1 s of simulated service time and the polls.
        assert stop.measurements["duration_ms"] >= 1000.0
        assert stop.metadata == {"model_id": trainer.model_id, "outcome": "ok"}
        assert {k: v for k, v in opt_start.measurements.items() if k != "system_time"} == {"items": 2, "requests": 2}
        assert opt_stop.metadata["outcome"] == "ok"
        # Optimizer steps are pipelined: both were sent before the first result came back.
        sent = [s.at for s in sim.rec.requests("optim_step")]
        assert len(sent) == 2 and sent[1] - sent[0] < 1.0
        assert sim.app.state.models[trainer.model_id].applied_seq_ids == [1, 2, 3]


async def test_a_failed_batch_emits_its_stop_event(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config()) as sim, sim.session() as session:
        rx = session.telemetry.subscribe(events="tinkex.batch.*")
        trainer = await session.create_lora_training_client(BASE, rank=4, seed=11)
        with pytest.raises(Exception, match="unsupported"):
            await trainer.forward_backward_batch(
                [([ce_datum(3)], "cross_entropy", None), ([ce_datum(3)], "custom", None)]
            )
        stop = drain(rx)[-1]
        assert stop.name == BATCH_FORWARD_BACKWARD_STOP and stop.metadata["outcome"] == "error"
        assert stop.measurements["requests"] == 2
        with pytest.raises(ValueError, match=r"items\[1\]\.data must hold at least one Datum"):
            await trainer.forward_backward_batch([([ce_datum(3)], "cross_entropy", None), ([], "cross_entropy", None)])
        # Rejected before anything was sent: no seq_id used up, no event.
        assert drain(rx) == []
        assert len(sim.rec.requests("forward_backward")) == 2


# -- the batch window: concurrent forward_backward calls (opt-in) -----------------------------------------------------


def window_config(**overrides: Any) -> Config:
    return session_config(BatchingConfig(coalesce=True, **overrides))


def fwd_requests(sim: SimStack) -> list[tuple[int, int]]:
    """(seq_id, datum count) of every forward_backward request the server saw, in order."""
    return [
        (r.seq_id, len(r.data))
        for r in (_codec.decode_forward_backward_request(s.body) for s in sim.rec.requests("forward_backward"))
    ]


CALLS: list[tuple[list[t.Datum], str, dict[str, float | str] | None]] = [
    ([ce_datum(6), ce_datum(9, 3)], "cross_entropy", None),
    ([ce_datum(12, 1, weight=0.5)], "cross_entropy", None),
    ([ce_datum(4, 2)], "cross_entropy", None),
    ([rl_datum(8, 1), rl_datum(5, 2)], "ppo", PPO_CONFIG),
    ([rl_datum(11, 3)], "ppo", PPO_CONFIG),
]


async def concurrent_calls(
    sim: SimStack, config: Config, calls: Sequence[tuple[list[t.Datum], str, dict[str, float | str] | None]]
) -> tuple[list[t.ForwardBackwardOutput], float]:
    """Every call from its own task (started in order), on a fresh model; returns the outputs and when they ended."""
    sim.rec.seen.clear()
    async with sim.session(config=config) as session:
        trainer = await session.create_lora_training_client(BASE, rank=4, seed=11)
        outs: list[t.ForwardBackwardOutput | None] = [None] * len(calls)
        started = trio.current_time()

        async def one(i: int) -> None:
            data, loss_fn, loss_config = calls[i]
            outs[i] = await trainer.forward_backward(data, loss_fn, loss_config)

        async with trio.open_nursery() as nursery:
            for i in range(len(calls)):
                nursery.start_soon(one, i)
                await trio.lowlevel.checkpoint()  # start them in order: call i is made before call i + 1
        elapsed = trio.current_time() - started
    assert all(o is not None for o in outs)
    return [o for o in outs if o is not None], elapsed


async def test_concurrent_calls_are_coalesced_only_when_asked(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config()) as sim:
        alone, _ = await concurrent_calls(sim, session_config(), CALLS)  # the default: no window
        assert fwd_requests(sim) == [(1, 2), (2, 1), (3, 1), (4, 2), (5, 1)]
        merged, _ = await concurrent_calls(sim, window_config(), CALLS)
        # The three cross_entropy calls share one request, the two ppo calls another.
        assert fwd_requests(sim) == [(1, 4), (2, 3)]
    for a, b in zip(alone, merged, strict=True):
        for x, y in zip(a.loss_fn_outputs, b.loss_fn_outputs, strict=True):
            np.testing.assert_array_equal(x["logprobs"].to_numpy(), y["logprobs"].to_numpy())
        assert np.allclose(a.metrics[LOSS_SUM], b.metrics[LOSS_SUM], rtol=1e-5, atol=1e-5)


async def test_the_window_waits_window_ms_or_until_max_items(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config()) as sim:
        await concurrent_calls(sim, window_config(window_ms=2000.0), CALLS[:1])
        (fwd,) = sim.rec.requests("forward_backward")
        before = sim.rec.seen[sim.rec.seen.index(fwd) - 1]  # get_info, the last call of the model's creation
        assert before.endpoint == "get_info"
        assert fwd.at - before.at == pytest.approx(2.0, abs=0.01)  # 2 s in the window
        await concurrent_calls(sim, window_config(window_ms=60_000.0, max_items=3), CALLS[:3])
        # Full at three calls: sent at once, not after a minute.
        assert fwd_requests(sim) == [(1, 4)]
        fwd = sim.rec.requests("forward_backward")[0]
        assert fwd.at - sim.rec.seen[sim.rec.seen.index(fwd) - 1].at < 0.01


async def test_the_window_never_reorders_across_an_optim_step(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config()) as sim, sim.session(config=window_config(window_ms=1000.0)) as session:
        trainer = await session.create_lora_training_client(BASE, rank=4, seed=11)
        order: list[str] = []

        async def fwd(name: str, data: list[t.Datum]) -> None:
            await trainer.forward_backward(data, "cross_entropy")
            order.append(name)

        async def step() -> None:
            await trainer.optim_step(t.AdamParams(learning_rate=0.05))
            order.append("step")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fwd, "a", [ce_datum(5)])
            await trio.lowlevel.checkpoint()
            nursery.start_soon(step)  # called while "a" waits in the window: "a" must be sent first
            await trio.lowlevel.checkpoint()
            nursery.start_soon(fwd, "b", [ce_datum(6)])  # called after the step: sent after it, not merged with "a"
            await trio.lowlevel.checkpoint()
            nursery.start_soon(fwd, "c", [ce_datum(7)])  # coalesced with "b"
        record = sim.app.state.models[trainer.model_id]
        assert [s.endpoint for s in sim.rec.seen if s.endpoint in ("forward_backward", "optim_step")] == [
            "forward_backward",
            "optim_step",
            "forward_backward",
        ]
        assert fwd_requests(sim) == [(1, 1), (3, 2)]
        assert record.applied_seq_ids == [1, 2, 3]
        assert sorted(order) == ["a", "b", "c", "step"]


async def test_a_call_cancelled_in_the_window_is_never_sent(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config()) as sim, sim.session(config=window_config(window_ms=1000.0)) as session:
        trainer = await session.create_lora_training_client(BASE, rank=4, seed=11)
        kept: list[t.ForwardBackwardOutput] = []

        async def keep() -> None:
            kept.append(await trainer.forward_backward([ce_datum(5)], "cross_entropy"))

        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as doomed:
                nursery.start_soon(keep)
                await trio.lowlevel.checkpoint()
                with trio.move_on_after(0.5):  # cancelled in the window, before it closes at 1 s
                    await trainer.forward_backward([ce_datum(9), ce_datum(3)], "cross_entropy")
                doomed.cancel()
        assert len(kept) == 1
        assert fwd_requests(sim) == [(1, 1)]
        # Other calls still go through the window afterwards.
        out = await trainer.forward_backward([ce_datum(4)], "cross_entropy")
        assert len(out.loss_fn_outputs) == 1 and fwd_requests(sim) == [(1, 1), (2, 1)]


async def test_a_failed_merged_request_fails_each_of_its_calls(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config()) as sim, sim.session(config=window_config()) as session:
        trainer = await session.create_lora_training_client(BASE, rank=4, seed=11)
        bad = t.datum([1, 2], target_tokens=[2, 3], weights=[1.0, math.inf])  # the server rejects NaN/inf inputs
        failures: list[str] = []

        async def call(data: list[t.Datum]) -> None:
            try:
                await trainer.forward_backward(data, "cross_entropy")
            except Exception as exc:
                failures.append(type(exc).__name__)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, [ce_datum(4)])
            await trio.lowlevel.checkpoint()
            nursery.start_soon(call, [bad])
        assert fwd_requests(sim) == [(1, 2)]
        assert failures == ["RequestFailedError", "RequestFailedError"]
