"""TrainingClient against the simulator: in process under trio's MockClock, and once over TLS on loopback.

The Recorder in front of the simulator (``_simkit``) sees every request in the order the client sent it, with its
headers and body, so the tests check the wire (seq ids, chunk order, content types) as well as the results.
"""

# pyright: reportPrivateUsage=false

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from _simkit import API_KEY, BASE_URL, JsonOnly, Reply, Seen, SimStack, sim_config, sim_stack

from tinkex_trio import types as t
from tinkex_trio._chunking import combine_fwdbwd_outputs
from tinkex_trio._config import BatchingConfig, Config, RetryConfig
from tinkex_trio._proto import _codec
from tinkex_trio._session import Session, open_session
from tinkex_trio._training import TrainingClient
from tinkex_trio.errors import (
    GoneError,
    InternalServerError,
    RequestErrorCategory,
    RequestFailedError,
    SequenceInDoubtError,
    SessionClosedError,
    UnprocessableEntityError,
)
from tinkex_trio.sim import Latency, open_sim_server
from tinkex_trio.sim._config import ServiceTime, SimConfig, SupportedModel

BASE = "Qwen/Qwen3-8B"
PATTERN = [1, 2, 3, 4, 5, 6, 7, 8] * 3
PROTO = "application/x-protobuf"


def pattern_datum(length: int = len(PATTERN)) -> t.Datum:
    tokens = PATTERN[:length]
    return t.datum(tokens[:-1], target_tokens=tokens[1:], weights=[1.0] * (len(tokens) - 1))


def pattern_data(n: int = 2) -> list[t.Datum]:
    # Different lengths, so that a datum's place in the combined output is visible.
    return [pattern_datum(6 + (i % 5) * 3) for i in range(n)]


def fwdbwd_seq(seen: Seen) -> tuple[int, int]:
    """(seq_id, datum count) of a forward_backward request, protobuf or JSON."""
    if seen.headers.get("content-type", "").startswith(PROTO):
        decoded = _codec.decode_forward_backward_request(seen.body)
        return decoded.seq_id, len(decoded.data)
    body = seen.json()
    return body["seq_id"], len(body["forward_backward_input"]["data"])


def sequenced(sim: SimStack) -> list[tuple[str, int]]:
    """(endpoint, seq_id) of every seq-numbered training request, in the order the client sent them."""
    out: list[tuple[str, int]] = []
    for seen in sim.rec.seen:
        if seen.endpoint == "forward_backward":
            out.append((seen.endpoint, fwdbwd_seq(seen)[0]))
        elif seen.endpoint in ("optim_step", "save_weights", "save_weights_for_sampler") or (
            seen.endpoint == "load_weights" and "seq_id" in seen.json()
        ):
            out.append((seen.endpoint, seen.json()["seq_id"]))
    return out


def logprobs_of(out: t.ForwardBackwardOutput) -> list[np.ndarray[Any, Any]]:
    return [o["logprobs"].to_numpy() for o in out.loss_fn_outputs]


def assert_same_output(a: t.ForwardBackwardOutput, b: t.ForwardBackwardOutput) -> None:
    assert a.loss_fn_output_type == b.loss_fn_output_type
    assert len(a.loss_fn_outputs) == len(b.loss_fn_outputs)
    for x, y in zip(logprobs_of(a), logprobs_of(b), strict=True):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
    assert a.metrics.keys() == b.metrics.keys()
    for key, value in a.metrics.items():
        assert value == pytest.approx(b.metrics[key], rel=1e-9), key


async def new_trainer(session: Session, seed: int = 7, rank: int = 4) -> TrainingClient:
    return await session.create_lora_training_client(BASE, rank=rank, seed=seed)


@pytest.fixture
async def sim() -> AsyncGenerator[SimStack]:
    # pytest-trio takes the clock from the test's own arguments: tests using this fixture also ask for autojump_clock.
    async with sim_stack(sim_config()) as stack:
        yield stack


# -- creation and info ------------------------------------------------------------------------------------------------


async def test_create_lora_models_and_cached_info(autojump_clock: trio.testing.MockClock) -> None:
    config = sim_config(supported_models=[SupportedModel(BASE, tokenizer_id="Qwen/Qwen3-8B:rev-2")])
    async with sim_stack(config) as sim, sim.session() as session:
        first = await session.create_lora_training_client(
            BASE, rank=8, seed=3, train_mlp=False, user_metadata={"run": "a"}
        )
        second = await new_trainer(session)
        assert first.model_id == f"{session.session_id}:train:0"
        assert second.model_id == f"{session.session_id}:train:1"
        body = sim.rec.requests("create_model")[0].json()
        assert body["model_seq_id"] == 0 and body["base_model"] == BASE
        assert body["lora_config"] == {
            "rank": 8,
            "seed": 3,
            "train_unembed": True,
            "train_mlp": False,
            "train_attn": True,
        }
        assert body["optimizer_config"] == {"type": "adamw"} and body["user_metadata"] == {"run": "a"}
        assert sim.app.state.models[first.model_id].lora_flags["train_mlp"] is False
        info = await first.get_info()
        assert info.model_id == first.model_id and info.lora_rank == 8
        assert info.model_data.model_name == BASE
        assert info.model_data.tokenizer_id == "Qwen/Qwen3-8B"  # cut at the ':' like the SDK
        # Fetched once per model at creation; get_info() answers from the cache.
        assert await first.get_info() is info
        assert len(sim.rec.requests("get_info")) == 2
        assert repr(first) == f"<TrainingClient model_id={first.model_id!r}>"


# -- training ---------------------------------------------------------------------------------------------------------


async def test_training_loop_loss_falls(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        trainer = await new_trainer(session)
        data = pattern_data(3)
        losses: list[float] = []
        for _ in range(8):
            out = await trainer.forward_backward(data, "cross_entropy")
            step = await trainer.optim_step(t.AdamParams(learning_rate=0.05))
            losses.append(out.metrics["loss:sum"])
            assert len(out.loss_fn_outputs) == len(data)
            assert step.metrics is not None and step.metrics["learning_rate:mean"] == pytest.approx(0.05)
        assert all(b < a for a, b in itertools.pairwise(losses))
        assert losses[-1] < 0.5 * losses[0]
        record = sim.app.state.models[trainer.model_id]
        assert record.steps_applied == 8 and record.forward_backward_applied == 8
        assert record.applied_seq_ids == list(range(1, 17))
        assert sequenced(sim) == [(e, i) for i, e in enumerate(["forward_backward", "optim_step"] * 8, start=1)]
        fwd = sim.rec.requests("forward_backward")[0]
        assert fwd.headers["content-type"] == PROTO
        assert fwd.headers["x-sdk-method"] == "TrainingClient.forward_backward"
        polls = [
            s for s in sim.rec.requests("retrieve_future") if s.headers["x-tinker-request-type"] == "ForwardBackward"
        ]
        assert polls and all(PROTO in s.headers["accept"] for s in polls)


async def test_forward_does_not_accumulate_gradients(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        trainer = await new_trainer(session)
        data = pattern_data(2)
        first = await trainer.forward(data, "cross_entropy")
        again = await trainer.forward(data, "cross_entropy")
        assert_same_output(first, again)
        record = sim.app.state.models[trainer.model_id]
        assert record.forward_applied == 2 and record.forward_backward_applied == 0
        # An optim_step with nothing accumulated leaves the loss where it was.
        await trainer.optim_step(t.AdamParams(learning_rate=0.05))
        assert (await trainer.forward(data, "cross_entropy")).metrics["loss:sum"] == pytest.approx(
            first.metrics["loss:sum"]
        )
        assert sim.rec.requests("forward_backward")[0].headers["x-sdk-method"] == "TrainingClient.forward"
        polls = sim.rec.requests("retrieve_future")
        assert any(s.headers["x-tinker-request-type"] == "Forward" for s in polls)


async def test_submit_pipelines_behind_the_previous_post(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        trainer = await new_trainer(session)
        data = pattern_data(2)
        start = trio.current_time()
        fwd = await trainer.submit_forward_backward(data, "cross_entropy")
        opt = await trainer.submit_optim_step(t.AdamParams(learning_rate=0.05))
        # Both accepted before the first result (1 s of service time each in this sim) is ready.
        assert trio.current_time() - start < 0.5
        assert not fwd.done() and not opt.done()
        out, step = await fwd.result(), await opt.result()
        assert trio.current_time() - start >= 2.0  # run one after the other, in seq order
        assert out.metrics["loss:sum"] > 0 and step.metrics is not None
        assert sim.app.state.models[trainer.model_id].applied_seq_ids == [1, 2]
        assert fwd.request_type == "ForwardBackward" and opt.request_type == "OptimStep"


async def test_concurrent_callers_get_seq_ids_in_call_order(autojump_clock: trio.testing.MockClock) -> None:
    config = sim_config(service=ServiceTime(base_s=0.05))
    async with sim_stack(config) as sim, sim.session() as session:
        trainer = await new_trainer(session)
        # Every POST takes 0.2 s at the server: a submission that did not wait for the previous one would overlap it.
        for endpoint in ("forward_backward", "optim_step"):
            sim.app.config.faults.set_endpoint(endpoint, latency=Latency.fixed(0.2))
        entered: list[tuple[str, int]] = []
        results: dict[int, Any] = {}

        async def caller(index: int) -> None:
            await trio.sleep(0.01 * (index % 4))  # arrive in a scrambled order
            if index % 2:
                entered.append(("optim_step", index))
                results[index] = await trainer.optim_step(t.AdamParams(learning_rate=0.001 * (index + 1)))
            else:
                entered.append(("forward_backward", index))
                results[index] = await trainer.forward_backward(pattern_data(index + 1), "cross_entropy")

        async with trio.open_nursery() as nursery:
            for index in range(12):
                nursery.start_soon(caller, index)

        sent = [s for s in sim.rec.seen if s.endpoint in ("forward_backward", "optim_step")]
        seq_ids: list[int] = []
        who: list[tuple[str, int]] = []
        for seen in sent:
            if seen.endpoint == "forward_backward":
                seq_id, count = fwdbwd_seq(seen)
                who.append(("forward_backward", count - 1))
            else:
                body = seen.json()
                seq_id = body["seq_id"]
                who.append(("optim_step", round(body["adam_params"]["learning_rate"] * 1000) - 1))
            seq_ids.append(seq_id)
        assert seq_ids == list(range(1, 13))  # sent in seq order, no gaps
        assert who == entered  # and in the order the callers called
        assert all(
            b.at - a.at >= 0.2 - 1e-9 for a, b in itertools.pairwise(sent)
        )  # each after the previous POST returned
        assert sim.app.state.models[trainer.model_id].applied_seq_ids == list(range(1, 13))
        for index, result in results.items():
            if index % 2:
                assert result.metrics["learning_rate:mean"] == pytest.approx(0.001 * (index + 1))
            else:
                assert len(result.loss_fn_outputs) == index + 1


async def test_a_cancelled_waiter_takes_no_seq_id(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        trainer = await new_trainer(session)
        sim.app.config.faults.set_endpoint("optim_step", latency=Latency.fixed(1.0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trainer.optim_step, t.AdamParams(learning_rate=0.01))
            await trio.sleep(0.1)  # the first submission holds the turn for 1 s
            with trio.move_on_after(0.1):
                await trainer.submit_optim_step(t.AdamParams(learning_rate=0.02))
                raise AssertionError("the second submission should still be waiting for its turn")
            third = await trainer.submit_optim_step(t.AdamParams(learning_rate=0.03))
            await third.result()
        assert [s.json()["seq_id"] for s in sim.rec.requests("optim_step")] == [1, 2]
        assert sim.app.state.models[trainer.model_id].applied_seq_ids == [1, 2]


async def test_batch_methods_pipeline_and_keep_order(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    # Batching off: one request per item, pipelined (tests/test_batching.py covers merging).
    config = Config(api_key=API_KEY, base_url=BASE_URL, batching=BatchingConfig(enabled=False))
    async with sim.session(config=config) as session:
        trainer = await new_trainer(session)
        short, long = pattern_data(1), pattern_data(3)
        outs = await trainer.forward_backward_batch([(short, "cross_entropy", None), (long, "cross_entropy", None)])
        assert [len(o.loss_fn_outputs) for o in outs] == [1, 3]
        steps = await trainer.optim_step_batch([t.AdamParams(learning_rate=0.01), t.AdamParams(learning_rate=0.02)])
        assert [s.metrics["learning_rate:mean"] for s in steps if s.metrics] == [
            pytest.approx(0.01),
            pytest.approx(0.02),
        ]
        assert sequenced(sim) == [
            ("forward_backward", 1),
            ("forward_backward", 2),
            ("optim_step", 3),
            ("optim_step", 4),
        ]
        # Pipelined: every submission was sent before the first result came back (1 s of service time each).
        sent = [s.at for s in sim.rec.seen if s.endpoint in ("forward_backward", "optim_step")]
        assert sent[1] - sent[0] < 1.0 and sent[3] - sent[2] < 1.0


# -- chunking ---------------------------------------------------------------------------------------------------------


async def _reference_output(
    sim: SimStack, data: list[t.Datum], loss_fn: str = "cross_entropy"
) -> t.ForwardBackwardOutput:
    """forward_backward in one chunk, on a fresh model with the test's seed."""
    sim.app.config.client_config = {}
    async with sim.session() as session:
        return await (await new_trainer(session)).forward_backward(data, loss_fn)


async def test_chunks_are_sent_first_chunk_last_and_combined(
    sim: SimStack, autojump_clock: trio.testing.MockClock
) -> None:
    data = pattern_data(5)
    reference = await _reference_output(sim, data)
    sim.app.config.client_config = {"fwdbwd_max_chunk_len": 2}
    async with sim.session() as session:
        assert session.client_config.fwdbwd_max_chunk_len == 2
        trainer = await new_trainer(session)
        sim.rec.seen.clear()
        out = await trainer.forward_backward(data, "cross_entropy")
        chunks = [fwdbwd_seq(s) for s in sim.rec.requests("forward_backward")]
        # Chunks 2 and 3 (seq 2, 3) concurrently, then chunk 1 (seq 1): [2 datums, 2 datums, 1 datum].
        assert sorted(chunks[:2]) == [(2, 2), (3, 1)] and chunks[2] == (1, 2)
        assert_same_output(out, reference)
        step = await trainer.submit_optim_step(t.AdamParams())
        await step.result()
        assert sim.rec.requests("optim_step")[-1].json()["seq_id"] == 4
        assert sim.app.state.models[trainer.model_id].applied_seq_ids == [1, 2, 3, 4]


async def test_serial_chunks_and_byte_limit(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    data = pattern_data(3)
    reference = await _reference_output(sim, data)
    # Every datum is over the byte limit: one chunk each, sent one after the other.
    sim.app.config.client_config = {"fwdbwd_max_chunk_bytes_count": 10, "parallel_fwdbwd_chunks": False}
    async with sim.session() as session:
        trainer = await new_trainer(session)
        sim.rec.seen.clear()
        out = await trainer.forward_backward(data, "cross_entropy")
        assert [fwdbwd_seq(s) for s in sim.rec.requests("forward_backward")] == [(1, 1), (2, 1), (3, 1)]
        assert_same_output(out, reference)


def test_combine_concatenates_outputs_and_weights_metrics() -> None:
    def output(values: list[list[float]], metrics: dict[str, float]) -> t.ForwardBackwardOutput:
        return t.ForwardBackwardOutput(
            loss_fn_output_type="TensorData",
            loss_fn_outputs=[{"logprobs": t.TensorData.from_list(v, "float32")} for v in values],
            metrics=metrics,
        )

    first = output([[-1.0], [-2.0, -3.0]], {"loss:sum": 6.0, "acc:mean": 1.0, "weird": 5.0, "n:max": 2.0})
    second = output([[-4.0]], {"loss:sum": 4.0, "acc:mean": 0.4, "weird": 1.0, "n:max": 7.0})
    combined = combine_fwdbwd_outputs([first, second], [2, 1])
    assert [o["logprobs"].tolist() for o in combined.loss_fn_outputs] == [[-1.0], [-2.0, -3.0], [-4.0]]
    assert combined.metrics == {"loss:sum": 10.0, "acc:mean": pytest.approx(2.4 / 3), "n:max": 7.0}
    # One chunk still goes through the combiner: a key without a known reduction is dropped.
    assert combine_fwdbwd_outputs([first], [2]).metrics == {"loss:sum": 6.0, "acc:mean": 1.0, "n:max": 2.0}
    with pytest.raises(ValueError):
        combine_fwdbwd_outputs([], [])


# -- wire formats -----------------------------------------------------------------------------------------------------


async def test_json_wire_format_matches_protobuf(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    data = pattern_data(3)
    reference = await _reference_output(sim, data)
    sim.rec.seen.clear()
    config = Config(api_key=API_KEY, base_url=BASE_URL, wire_format="json")
    async with sim.session(config=config) as session:
        trainer = await new_trainer(session)
        out = await trainer.forward_backward(data, "cross_entropy")
        fwd = await trainer.forward(data, "cross_entropy")
    assert_same_output(out, reference)
    assert_same_output(fwd, out)  # forward-only, on the weights that produced `out`
    first, second = sim.rec.requests("forward_backward")
    assert first.headers["content-type"] == "application/json"
    body = first.json()
    assert body["seq_id"] == 1 and body["model_id"] == trainer.model_id and "forward_only" not in body
    assert body["forward_backward_input"]["loss_fn"] == "cross_entropy"
    assert len(body["forward_backward_input"]["data"]) == 3
    assert second.json()["forward_only"] is True and second.json()["seq_id"] == 2
    polls = sim.rec.requests("retrieve_future")
    assert polls and all(PROTO not in s.headers["accept"] for s in polls)


async def test_protobuf_client_understands_a_json_answer(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    data = pattern_data(2)
    reference = await _reference_output(sim, data)
    sim.rec.app = JsonOnly(sim.rec.app)
    async with sim.session() as session:
        out = await (await new_trainer(session)).forward_backward(data, "cross_entropy")
    assert_same_output(out, reference)
    assert sim.rec.requests("forward_backward")[-1].headers["content-type"] == PROTO


async def test_loss_fn_config_travels_in_both_wire_formats(
    sim: SimStack, autojump_clock: trio.testing.MockClock
) -> None:
    tokens = PATTERN[:10]
    data = [t.datum(tokens[:-1], target_tokens=tokens[1:], logprobs=[-2.0] * 9, advantages=[1.0] * 9)]
    losses: dict[tuple[str, float], float] = {}
    for wire in ("proto", "json"):
        config = Config(api_key=API_KEY, base_url=BASE_URL, wire_format=wire)
        async with sim.session(config=config) as session:
            trainer = await new_trainer(session)
            for beta in (0.1, 2.0):
                out = await trainer.forward(data, "dro", {"beta": beta})
                losses[wire, beta] = out.metrics["loss:sum"]
    assert losses["proto", 0.1] != pytest.approx(losses["proto", 2.0])
    assert losses["json", 0.1] == pytest.approx(losses["proto", 0.1])
    assert losses["json", 2.0] == pytest.approx(losses["proto", 2.0])
    proto_body, _, json_body, _ = sim.rec.requests("forward_backward")
    decoded = _codec.decode_forward_backward_request(proto_body.body)
    assert decoded.loss_fn == "dro" and decoded.loss_fn_config == {"beta": 0.1} and decoded.forward_only
    assert json_body.json()["forward_backward_input"]["loss_fn_config"] == {"beta": 0.1}


async def test_dimuon_params_are_sent_as_optimizer_params(
    sim: SimStack, autojump_clock: trio.testing.MockClock
) -> None:
    async with sim.session() as session:
        trainer = await new_trainer(session)
        with pytest.raises(RequestFailedError, match="adamw"):  # the simulator's model was created with AdamW
            await trainer.optim_step(t.DimuonParams(learning_rate=0.01))
        body = sim.rec.requests("optim_step")[0].json()
        assert "adam_params" not in body
        assert body["optimizer_params"] == {
            "type": "dimuon",
            "learning_rate": 0.01,
            "grad_clip_norm": 0.0,
            "beta1": 0.9,
        }


# -- checkpoints ------------------------------------------------------------------------------------------------------


async def test_save_state_load_state_round_trip(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        trainer = await new_trainer(session)
        data = pattern_data(3)
        adam = t.AdamParams(learning_rate=0.05)
        for _ in range(3):
            await trainer.forward_backward(data, "cross_entropy")
            await trainer.optim_step(adam)
        path = await trainer.save_state("ckpt", ttl_seconds=3600)
        assert path == f"tinker://{trainer.model_id}/weights/ckpt"
        saved_loss = (await trainer.forward(data, "cross_entropy")).metrics["loss:sum"]
        for _ in range(3):
            await trainer.forward_backward(data, "cross_entropy")
            await trainer.optim_step(adam)
        assert (await trainer.forward(data, "cross_entropy")).metrics["loss:sum"] != pytest.approx(saved_loss)

        await trainer.load_state(path)
        assert (await trainer.forward(data, "cross_entropy")).metrics["loss:sum"] == pytest.approx(saved_loss)
        save = sim.rec.requests("save_weights")[0].json()
        assert save["path"] == "ckpt" and save["ttl_seconds"] == 3600 and save["overwrite"] is False
        load = sim.rec.requests("load_weights")[0].json()
        assert load["path"] == path and load["optimizer"] is True and load["model_id"] == trainer.model_id

        # A new model from the checkpoint, optimizer state included: it takes the same next step as the original.
        clone = await session.create_training_client_from_state(path)
        assert clone.model_id == f"{session.session_id}:train:1"
        create = sim.rec.requests("load_weights")[-1].json()
        assert create["session_id"] == session.session_id and create["model_seq_id"] == 1
        assert "model_id" not in create and "seq_id" not in create
        assert (await clone.get_info()).model_data.model_name == BASE
        assert (await clone.forward(data, "cross_entropy")).metrics["loss:sum"] == pytest.approx(saved_loss)
        for client in (trainer, clone):
            await client.forward_backward(data, "cross_entropy")
            await client.optim_step(adam)
        after = [(await c.forward(data, "cross_entropy")).metrics["loss:sum"] for c in (trainer, clone)]
        assert after[0] == pytest.approx(after[1], rel=1e-9)

        # Weights only: the fresh optimizer takes a different step.
        fresh = await session.create_training_client_from_state(path, with_optimizer=False)
        assert sim.rec.requests("load_weights")[-1].json()["optimizer"] is False
        await fresh.forward_backward(data, "cross_entropy")
        await fresh.optim_step(adam)
        assert (await fresh.forward(data, "cross_entropy")).metrics["loss:sum"] != pytest.approx(after[0], rel=1e-6)


async def test_sampling_after_save_weights_and_get_sampling_client(
    sim: SimStack, autojump_clock: trio.testing.MockClock
) -> None:
    prompt = t.ModelInput.from_ints(PATTERN[:12])
    async with sim.session() as session:
        trainer = await new_trainer(session)
        base_sampler = await session.create_sampling_client(base_model=BASE)
        before = await base_sampler.compute_logprobs(prompt)
        for _ in range(14):
            await trainer.forward_backward(pattern_data(3), "cross_entropy")
            await trainer.optim_step(t.AdamParams(learning_rate=0.05))
        sampler = await trainer.save_weights_and_get_sampling_client()
        assert sampler.sampling_session_id == f"{session.session_id}:sample:1"  # 0 went to base_sampler
        assert sampler.base_model == BASE
        body = sim.rec.requests("save_weights_for_sampler")[-1].json()
        assert body["sampling_session_seq_id"] == 1 and body["kind"] == "snapshot" and body["seq_id"] == 29
        assert "path" not in body
        after = await sampler.compute_logprobs(prompt)
        assert before[0] is None and after[0] is None
        # The trained model predicts the pattern much better than the base model.
        assert sum(x for x in after if x is not None) > sum(x for x in before if x is not None) + 5.0
        result = await sampler.sample(
            t.ModelInput.from_ints(PATTERN[:8]), 1, t.SamplingParams(max_tokens=8, temperature=0.01, stop=[])
        )
        assert result.sequences[0].tokens == PATTERN[8:16]

        # Named: a sampler checkpoint, and a sampling client made from its path.
        spath = await trainer.save_weights_for_sampler("s1", ttl_seconds=60)
        assert spath == f"tinker://{trainer.model_id}/sampler_weights/s1"
        named = await trainer.save_weights_and_get_sampling_client("s2")
        assert named.model_path == f"tinker://{trainer.model_id}/sampler_weights/s2"
        assert await named.compute_logprobs(prompt) == pytest.approx(after)
        assert sim.rec.requests("create_sampling_session")[-1].json()["model_path"] == named.model_path
        assert [seq for _, seq in sequenced(sim)][-3:] == [29, 30, 31]


# -- errors -----------------------------------------------------------------------------------------------------------


async def test_transient_errors_are_retried_with_the_same_seq_id_and_key(
    sim: SimStack, autojump_clock: trio.testing.MockClock
) -> None:
    async with sim.session() as session:
        trainer = await new_trainer(session)
        sim.rec.script("forward_backward", Reply(503, {"detail": "busy"}))
        out = await trainer.forward_backward(pattern_data(1), "cross_entropy")
        assert out.metrics["loss:sum"] > 0
        failed, retried = sim.rec.requests("forward_backward")
        assert failed.status == 503 and retried.status == 200
        assert fwdbwd_seq(failed) == fwdbwd_seq(retried) == (1, 1)
        assert failed.headers["x-idempotency-key"] == retried.headers["x-idempotency-key"]


async def test_non_retryable_errors_raise_at_once(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        trainer = await new_trainer(session)
        sim.rec.script("optim_step", Reply(422, {"detail": "bad optimizer params"}))
        with pytest.raises(UnprocessableEntityError) as info:
            await trainer.optim_step(t.AdamParams())
        assert info.value.status_code == 422
        assert len(sim.rec.requests("optim_step")) == 1
        # A future that fails as the user's fault: RequestFailedError with the category.
        with pytest.raises(RequestFailedError) as failed:
            await trainer.forward_backward(pattern_data(1), "no_such_loss")
        assert failed.value.category is RequestErrorCategory.USER
        # A 5xx that persists leaves the step in doubt once the retries are used up (see test_in_doubt_*).
        config = Config(api_key=API_KEY, base_url=BASE_URL, retry=RetryConfig(max_retries=2))
        async with sim.session(config=config) as quick:
            other = await new_trainer(quick)
            sim.rec.script("optim_step", *[Reply(500, {"detail": "down"})] * 3)
            with pytest.raises(SequenceInDoubtError) as doubt:
                await other.optim_step(t.AdamParams())
            assert isinstance(doubt.value.__cause__, InternalServerError)


async def test_a_gone_training_future_fails_without_resubmission(
    sim: SimStack, autojump_clock: trio.testing.MockClock
) -> None:
    async with sim.session() as session:
        trainer = await new_trainer(session)
        sim.rec.script("retrieve_future", Reply(410, {"detail": "future expired"}))
        with pytest.raises(GoneError):
            await trainer.optim_step(t.AdamParams())
        assert sequenced(sim) == [("optim_step", 1)]


async def test_bad_arguments_use_up_no_seq_id(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        trainer = await new_trainer(session)
        with pytest.raises(ValueError, match="at least one"):
            await trainer.forward_backward([], "cross_entropy")
        pointer = t.Datum(
            model_input=t.ModelInput(
                chunks=[t.ImageAssetPointerChunk(format="png", location="s3://x", expected_tokens=2)]
            ),
            loss_fn_inputs={"target_tokens": t.TensorData.from_list([1, 2], "int64")},
        )
        with pytest.raises(ValueError):
            await trainer.forward_backward([pointer], "cross_entropy")
        await trainer.optim_step(t.AdamParams())
        assert sequenced(sim) == [("optim_step", 1)]


async def test_calls_after_the_session_closed_fail(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        trainer = await new_trainer(session)
    with pytest.raises(SessionClosedError):
        await trainer.forward_backward(pattern_data(1), "cross_entropy")
    with pytest.raises(SessionClosedError):
        await trainer.get_info()


# -- over TLS on loopback ---------------------------------------------------------------------------------------------


async def test_train_and_sample_over_tls_loopback() -> None:
    config = SimConfig(service=ServiceTime(base_s=0.001))
    with trio.fail_after(60):
        async with (
            open_sim_server(config, tls=True) as server,
            open_session(API_KEY, server.base_url, ssl_context=server.client_ssl_context()) as session,
        ):
            trainer = await new_trainer(session)
            data = pattern_data(2)
            first = await trainer.forward_backward(data, "cross_entropy")
            await trainer.optim_step(t.AdamParams(learning_rate=0.05))
            second = await trainer.forward_backward(data, "cross_entropy")
            assert second.metrics["loss:sum"] < first.metrics["loss:sum"]
            sampler = await trainer.save_weights_and_get_sampling_client()
            result = await sampler.sample(t.ModelInput.from_ints(PATTERN[:4]), 2, t.SamplingParams(max_tokens=4))
            assert len(result.sequences) == 2 and all(len(s.tokens) == 4 for s in result.sequences)


async def test_parallel_chunk_sends_raise_a_lone_interrupt_as_itself(autojump_clock: trio.testing.MockClock) -> None:
    # Review fix: the concurrent chunk sends run in a nursery; a KeyboardInterrupt landing in one of them came out
    # of forward_backward as a BaseExceptionGroup of one instead of as itself (DESIGN §2).
    from tinkex_trio._sequencing import run_all as _run_all

    sent: list[int] = []

    async def send(index: int) -> None:
        await trio.sleep(index)
        if index == 2:
            raise KeyboardInterrupt
        sent.append(index)

    with pytest.raises(KeyboardInterrupt):
        await _run_all(send, range(1, 4))
    assert 1 in sent

    async def fail(index: int) -> None:
        await trio.sleep(4 - index)  # the last index fails first
        raise ValueError(index)

    with pytest.raises(ValueError, match="1"):  # ordinary failures: the first by index, as itself (unchanged)
        await _run_all(fail, range(1, 4))
