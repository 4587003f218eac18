"""stable_reinforce through the client and the simulated server: record_stability_info sampling, provenance spans,
the records' ownership and lifetime, and the loss against an independent computation from the server's weights."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import trio
import trio.testing
from _simkit import sim_config, sim_stack

from tinkex_trio import types
from tinkex_trio._session import Session
from tinkex_trio._training import TrainingClient
from tinkex_trio.errors import RequestFailedError
from tinkex_trio.sim._model import LoraModel
from tinkex_trio.sim._stability import RECORD_TTL, StabilityStore

F64 = npt.NDArray[np.float64]
BASE = "meta-llama/Llama-3.2-1B"
PROMPT = [11, 42, 7, 99]
PARAMS = types.SamplingParams(max_tokens=7, temperature=0.8, top_k=12, top_p=0.95, seed=5, stop=[])


def _log_softmax(x: F64) -> F64:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _draw_probability(model: LoraModel, prev: int, token: int, params: types.SamplingParams) -> float:
    """The probability that a sampler with ``params`` draws ``token`` after ``prev``, written out independently."""
    assert params.temperature > 0
    probs = np.exp(_log_softmax(model.logit_table()[prev] / params.temperature))
    order = np.argsort(-probs, kind="stable")
    if 0 < params.top_k < probs.shape[0]:
        probs[order[params.top_k :]] = 0.0
        probs /= probs.sum()
    sorted_probs = probs[order]
    before = np.cumsum(sorted_probs) - sorted_probs
    drop = order[(before >= params.top_p) & (np.arange(probs.shape[0]) > 0)]
    probs[drop] = 0.0
    return float(probs[token] / probs.sum())


def _datum(seq: types.SampledSequence, advantage: float) -> types.Datum:
    """The usual RL datum: prompt then completion, shifted by one, with its provenance."""
    sid = seq.sequence_id
    assert sid is not None
    completion = [int(x) for x in seq.tokens]
    full = PROMPT + completion
    adv = [0.0] * (len(PROMPT) - 1) + [advantage] * len(completion)
    d = types.datum(full[:-1], target_tokens=full[1:], advantages=adv, logprobs=[0.0] * len(adv))
    return d.with_provenance(
        [types.ProvenanceSpan.prompt(sid, len(PROMPT)), types.ProvenanceSpan.sampled(sid, len(completion) - 1)],
        [
            types.ProvenanceSpan.prompt(sid, len(PROMPT) - 1, offset=1),
            types.ProvenanceSpan.sampled(sid, len(completion)),
        ],
    )


async def _setup(session: Session, record: bool = True) -> tuple[TrainingClient, types.SampleResponse]:
    trainer = await session.create_lora_training_client(BASE, rank=4, seed=21)
    sampler = await trainer.save_weights_and_get_sampling_client(record_stability_info=record)
    assert sampler.record_stability_info is record
    response = await sampler.sample(types.ModelInput.from_ints(PROMPT), 3, PARAMS)
    return trainer, response


async def test_stable_reinforce_end_to_end(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config()) as sim, sim.session() as session:
        trainer, response = await _setup(session)
        sent = json.loads(sim.rec.requests("asample")[-1].body)
        assert sent["record_stability_info"] is True
        assert len(sim.app.state.stability) == 3
        advantages = [1.0, -0.5, 2.0]
        data = [_datum(seq, a) for seq, a in zip(response.sequences, advantages, strict=True)]
        learner = sim.app.state.models[trainer.model_id].model
        assert learner is not None
        before = learner.get_parameters()
        table = _log_softmax(learner.logit_table())
        output = await trainer.forward_backward(data, "stable_reinforce", {"clip_high_threshold": 1.5})
        # Independently: the learner's logprobs from its table, the sampler's draw probabilities from its weights
        # (the snapshot equals the learner here), truncated importance weights on the sampled rows only.
        expected = 0.0
        for seq, adv in zip(response.sequences, advantages, strict=True):
            prev = PROMPT[-1]
            for token in [int(x) for x in seq.tokens]:
                lp = float(table[prev, token])
                q = math.log(_draw_probability(learner, prev, token, PARAMS))
                expected -= min(math.exp(lp - q), 1.5) * adv * lp
                prev = token
        assert math.isclose(output.metrics["loss:sum"], expected, rel_tol=1e-9)
        for d, out in zip(data, output.loss_fn_outputs, strict=True):
            assert out["logprobs"].shape == [d.model_input.length]
        await trainer.optim_step(types.AdamParams(learning_rate=0.05))
        after = learner.get_parameters()
        assert not np.allclose(before["lora_B"], after["lora_B"])


async def test_the_official_way_to_build_the_datum_is_not_required(autojump_clock: trio.testing.MockClock) -> None:
    """Runs may be split anywhere and the prompt need not be named: unnamed prompt tokens can come from any record of
    the session, and a sampled sequence can be cut into several runs."""
    async with sim_stack(sim_config()) as sim, sim.session() as session:
        trainer, response = await _setup(session)
        a, b = response.sequences[0], response.sequences[1]
        assert a.sequence_id is not None and b.sequence_id is not None
        tokens = PROMPT + [int(x) for x in a.tokens]
        advantages = [0.0] * (len(PROMPT) - 1) + [1.0] * (len(tokens) - len(PROMPT))  # sampled targets only
        d = types.datum(tokens[:-1], target_tokens=tokens[1:], advantages=advantages)
        d = d.with_provenance(
            [
                types.ProvenanceSpan.prompt(b.sequence_id, 2),
                types.ProvenanceSpan.prompt(a.sequence_id, 2, offset=2),
                types.ProvenanceSpan.sampled(a.sequence_id, 3),
                types.ProvenanceSpan.sampled(a.sequence_id, len(a.tokens) - 4, offset=3),
            ],
            [
                types.ProvenanceSpan.prompt(b.sequence_id, 3, offset=1),
                types.ProvenanceSpan.sampled(a.sequence_id, 0),
                types.ProvenanceSpan.sampled(a.sequence_id, 2),
                types.ProvenanceSpan.sampled(a.sequence_id, len(a.tokens) - 2, offset=2),
            ],
        )
        whole = _datum(a, 1.0)
        split = await trainer.forward(data=[d], loss_fn="stable_reinforce")
        joined = await trainer.forward(data=[whole], loss_fn="stable_reinforce")
        assert split.metrics["loss:sum"] == joined.metrics["loss:sum"] != 0.0


async def test_the_cookbooks_rl_loop_datum_trains(autojump_clock: trio.testing.MockClock) -> None:
    """The official cookbook's RL loop (tinker_cookbook/recipes/rl_loop.py) pads the prompt rows of target_tokens,
    logprobs and advantages with 0 while its loss spans name the prompt: the server takes it, and trains the sampled
    rows exactly as the datum with the true prompt targets does."""
    async with sim_stack(sim_config()) as sim, sim.session() as session:
        trainer, response = await _setup(session)
        seq = response.sequences[0]
        sid = seq.sequence_id
        assert sid is not None
        sampled = [int(x) for x in seq.tokens]
        ob_len = len(PROMPT) - 1
        d = types.datum(
            PROMPT + sampled[:-1],
            target_tokens=[0] * ob_len + sampled,
            logprobs=[0.0] * ob_len + [float(x) for x in seq.logprobs or []],
            advantages=[0.0] * ob_len + [1.5] * len(sampled),
        ).with_provenance(
            [types.ProvenanceSpan.prompt(sid, len(PROMPT)), types.ProvenanceSpan.sampled(sid, len(sampled) - 1)],
            [types.ProvenanceSpan.prompt(sid, ob_len, offset=1), types.ProvenanceSpan.sampled(sid, len(sampled))],
        )
        padded = await trainer.forward([d], "stable_reinforce")
        true = await trainer.forward([_datum(seq, 1.5)], "stable_reinforce")
        assert padded.metrics["loss:sum"] == true.metrics["loss:sum"] != 0.0
        await trainer.forward_backward([d], "stable_reinforce")
        model = sim.app.state.models[trainer.model_id].model
        assert model is not None and any(float(np.max(np.abs(g))) > 0 for g in model.gradients().values())


def _spans(
    d: types.Datum, model_input: list[types.ProvenanceSpan] | None, loss: list[types.ProvenanceSpan] | None
) -> Any:
    return types.Datum(
        model_input=d.model_input,
        loss_fn_inputs=d.loss_fn_inputs,
        model_input_spans=model_input,
        loss_fn_input_spans=loss,
    )


def _broken(seq: types.SampledSequence, how: str) -> types.Datum:
    good = _datum(seq, 1.0)
    sid = seq.sequence_id
    assert sid is not None and good.model_input_spans is not None and good.loss_fn_input_spans is not None
    n = len(seq.tokens)
    if how == "none":
        return _spans(good, None, None)
    if how == "wrong_token":
        tokens = list(good.model_input.to_ints())
        tokens[1] = (tokens[1] + 1) % 256
        return types.Datum(
            model_input=types.ModelInput.from_ints(tokens),
            loss_fn_inputs=good.loss_fn_inputs,
            model_input_spans=good.model_input_spans,
            loss_fn_input_spans=good.loss_fn_input_spans,
        )
    if how == "wrong_target":
        targets = np.array(good.loss_fn_inputs["target_tokens"].data, dtype=np.int64)
        targets[-1] = (targets[-1] + 1) % 256
        return types.Datum(
            model_input=good.model_input,
            loss_fn_inputs={**good.loss_fn_inputs, "target_tokens": types.TensorData.from_numpy(targets)},
            model_input_spans=good.model_input_spans,
            loss_fn_input_spans=good.loss_fn_input_spans,
        )
    if how == "prompt_advantage":
        advantages = np.array(good.loss_fn_inputs["advantages"].data, dtype=np.float32)
        advantages[1] = 0.5  # a prompt target: stable_reinforce trains sampled tokens only
        return types.Datum(
            model_input=good.model_input,
            loss_fn_inputs={**good.loss_fn_inputs, "advantages": types.TensorData.from_numpy(advantages)},
            model_input_spans=good.model_input_spans,
            loss_fn_input_spans=good.loss_fn_input_spans,
        )
    if how == "past_end":
        loss = [types.ProvenanceSpan.prompt(sid, len(PROMPT) - 1, offset=1), types.ProvenanceSpan.sampled(sid, n, 1)]
        return _spans(good, good.model_input_spans, loss)
    if how == "untiled":
        return _spans(good, good.model_input_spans, good.loss_fn_input_spans[1:])
    if how == "negative":
        loss = [types.ProvenanceSpan.prompt(sid, -1), *good.loss_fn_input_spans]
        return _spans(good, good.model_input_spans, loss)
    assert how == "unknown"
    loss = [good.loss_fn_input_spans[0], types.ProvenanceSpan.sampled("req-nope:0", n)]
    return _spans(good, good.model_input_spans, loss)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("none", "stable_reinforce needs provenance"),
        ("wrong_token", r"model_input positions \[0, 4\) are not the tokens recorded"),
        ("wrong_target", "target_tokens positions .* are not the tokens recorded"),
        ("prompt_advantage", "nonzero advantages only on sampled tokens; target position 1 has advantage 0.5"),
        ("past_end", "past the end of"),
        ("untiled", "they must tile it"),
        ("negative", "length >= 0"),
        ("unknown", "unknown sequence_id 'req-nope:0'"),
    ],
)
async def test_false_provenance_fails_the_request(
    autojump_clock: trio.testing.MockClock, how: str, message: str
) -> None:
    async with sim_stack(sim_config()) as sim, sim.session() as session:
        trainer, response = await _setup(session)
        model = sim.app.state.models[trainer.model_id].model
        assert model is not None
        with pytest.raises(RequestFailedError, match=message):
            await trainer.forward_backward([_broken(response.sequences[0], how)], "stable_reinforce")
        # Nothing was accumulated, and a good request still goes through.
        assert all(float(np.max(np.abs(g))) == 0.0 for g in model.gradients().values())
        await trainer.forward_backward([_datum(response.sequences[0], 1.0)], "stable_reinforce")


async def test_records_need_the_flag_and_belong_to_their_session(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config()) as sim:
        async with sim.session() as session:
            trainer, plain = await _setup(session, record=False)
            sent = json.loads(sim.rec.requests("asample")[-1].body)
            assert "record_stability_info" not in sent or sent["record_stability_info"] in (None, False)
            assert len(sim.app.state.stability) == 0
            with pytest.raises(RequestFailedError, match="unknown sequence_id"):
                await trainer.forward_backward([_datum(plain.sequences[0], 1.0)], "stable_reinforce")
            _, recorded = await _setup(session)
        async with sim.session() as other:
            stranger = await other.create_lora_training_client(BASE, rank=4, seed=21)
            with pytest.raises(RequestFailedError, match="not sampled with record_stability_info in this session"):
                await stranger.forward_backward([_datum(recorded.sequences[0], 1.0)], "stable_reinforce")


async def test_records_last_a_day_from_their_last_use(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config()) as sim, sim.session() as session:
        state = sim.app.state
        start = datetime(2030, 1, 1, tzinfo=UTC)
        state.clock = lambda: start
        trainer, response = await _setup(session)
        kept, dropped = _datum(response.sequences[0], 1.0), _datum(response.sequences[1], 1.0)
        for days in (0.9, 1.8, 2.7):  # each use restarts the day
            state.clock = lambda days=days: start + timedelta(days=days)
            await trainer.forward([kept], "stable_reinforce")
        with pytest.raises(RequestFailedError, match="unknown sequence_id"):
            await trainer.forward([dropped], "stable_reinforce")
        state.clock = lambda: start + timedelta(days=3.8)
        with pytest.raises(RequestFailedError, match="unknown sequence_id"):
            await trainer.forward([kept], "stable_reinforce")
        assert len(state.stability) == 0


def test_the_store_is_bounded_and_least_recently_used_goes_first() -> None:
    store = StabilityStore(max_records=3)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    seq = (np.array([1, 2]), np.array([-0.5, -0.25]))
    store.record("s", ["a", "b", "c"], np.array([9]), [seq, seq, seq], now)
    store.use("s", "a", now)
    store.record("s", ["d"], np.array([9]), [seq], now)
    assert len(store) == 3
    with pytest.raises(ValueError, match="unknown sequence_id 'b'"):
        store.use("s", "b", now)
    assert store.use("s", "a", now + RECORD_TTL).tokens.tolist() == [1, 2]
    with pytest.raises(ValueError, match="unknown sequence_id 'c'"):
        store.use("s", "c", now + RECORD_TTL + timedelta(seconds=1))


async def test_gspo_through_the_client(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config()) as sim, sim.session() as session:
        trainer, response = await _setup(session)
        data: list[types.Datum] = []
        for seq in response.sequences:
            n = len(seq.tokens)
            full = PROMPT + [int(x) for x in seq.tokens]
            data.append(
                types.datum(
                    full[:-1],
                    target_tokens=full[1:],
                    logprobs=[0.0] * (len(PROMPT) - 1) + [float(x) for x in seq.logprobs],
                    advantages=[0.0] * (len(PROMPT) - 1) + [1.0] * n,
                    sequence_ratio_mask=[0.0] * (len(PROMPT) - 1) + [1.0] * n,
                )
            )
        output = await trainer.forward_backward(data, "gspo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1})
        # On policy the sequence ratio is 1, so the loss is minus the sum of the advantages.
        assert math.isclose(output.metrics["loss:sum"], -sum(len(s.tokens) for s in response.sequences), rel_tol=1e-6)
        model = sim.app.state.models[trainer.model_id].model
        assert model is not None
        assert float(np.max(np.abs(model.gradients()["lora_B"]))) > 0.0
