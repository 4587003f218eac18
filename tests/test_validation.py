"""Bad input is met at the door (issue 7): refused before any request and before any sequence id is taken.

Every refused call raises an ``InvalidArgumentError`` (a ``ValueError``) or an ``InvalidArgumentTypeError`` (also a
``TypeError``) naming the argument; the Recorder in front of the simulator shows that nothing was sent, and the next
valid call gets the next id: the simulator would otherwise hold it for ``seq_gap_timeout_s`` (120 s) of MockClock time.
"""

# pyright: reportPrivateUsage=false

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from _simkit import SimStack, sim_stack

import tinkex_trio as tx
from tinkex_trio import types as t
from tinkex_trio._config import Config
from tinkex_trio._proto import _codec
from tinkex_trio.errors import (
    ConfigError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    ResponseValidationError,
    TinkexError,
)

BASE = "Qwen/Qwen3-8B"
KEY = "tml-test-key-0123456789"
GAP_TIMEOUT_S = 120.0  # SimConfig.seq_gap_timeout_s: a hole in the seq ids would stall the next call this long
TOKENS = [1, 2, 3, 4]


def good_datum() -> t.Datum:
    return t.datum(TOKENS[:-1], target_tokens=TOKENS[1:], weights=[1.0, 1.0, 1.0])


def list_datum() -> t.Datum:
    """A Datum written as users of the official SDK write it: plain lists for the loss inputs."""
    return t.Datum(
        model_input=t.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 1.0]},
    )


def explicit_datum() -> t.Datum:
    return t.Datum(
        model_input=t.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={
            "target_tokens": t.TensorData.from_numpy(np.array([2, 3, 4], dtype=np.int64)),
            "weights": t.TensorData.from_numpy(np.array([1.0, 1.0, 1.0], dtype=np.float32)),
        },
    )


def refused(kind: type[InvalidArgumentError], argument: str) -> tuple[type[InvalidArgumentError], str]:
    return kind, argument


TYPE = InvalidArgumentTypeError
VALUE = InvalidArgumentError


def nan_adam() -> t.AdamParams:
    params = t.AdamParams()
    params.learning_rate = math.nan  # mutated after construction: still caught at optim_step
    return params


# --------------------------------------------------------------------------------------------------------------------
# The error classes
# --------------------------------------------------------------------------------------------------------------------


def test_error_classes_are_value_and_type_errors() -> None:
    assert issubclass(InvalidArgumentError, TinkexError) and issubclass(InvalidArgumentError, ValueError)
    assert issubclass(InvalidArgumentTypeError, InvalidArgumentError) and issubclass(
        InvalidArgumentTypeError, TypeError
    )
    error = InvalidArgumentTypeError("data must be a sequence of Datum, got str", argument="data")
    assert error.argument == "data" and isinstance(error, ValueError) and isinstance(error, TypeError)
    assert {"InvalidArgumentError", "InvalidArgumentTypeError"} <= set(tx.errors.__all__)


# --------------------------------------------------------------------------------------------------------------------
# Datum and TensorData from lists and numpy arrays
# --------------------------------------------------------------------------------------------------------------------


def _proto(datum: t.Datum) -> bytes:
    return _codec.encode_forward_backward_request("m", 1, [datum], "cross_entropy", None, False)


NUMPY_DATUMS = {
    "lists": list_datum,
    "tuples": lambda: t.Datum(
        model_input=t.ModelInput.from_ints((1, 2, 3)),
        loss_fn_inputs={"target_tokens": (2, 3, 4), "weights": (1, 1, 1)},  # int weights: float32 by key
    ),
    "numpy": lambda: t.Datum(
        model_input=t.ModelInput.from_ints(np.array([1, 2, 3], dtype=np.int32)),
        loss_fn_inputs={"target_tokens": np.array([2, 3, 4], dtype=np.int32), "weights": np.ones(3)},
    ),
    "tensor_data_from_arrays": lambda: t.Datum(
        model_input=t.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={
            "target_tokens": t.TensorData(data=np.array([2, 3, 4]), dtype="int64", shape=[3]),  # pyright: ignore[reportArgumentType]
            "weights": t.TensorData(data=np.ones(3), dtype="float32", shape=(3,)),  # pyright: ignore[reportArgumentType]
        },
    ),
}


@pytest.mark.parametrize("build", list(NUMPY_DATUMS.values()), ids=list(NUMPY_DATUMS))
def test_datum_from_lists_and_arrays_encodes_as_the_explicit_one(build: Callable[[], t.Datum]) -> None:
    datum = build()
    expected = explicit_datum()
    assert datum == expected
    assert t.encode(datum) == t.encode(expected)
    assert _proto(datum) == _proto(expected)
    assert t.decode(t.Datum, t.encode(datum)) == expected


def test_numpy_arrays_keep_their_dtype_family_and_lists_take_the_keys() -> None:
    datum = t.Datum(
        model_input=t.ModelInput.from_ints([1]),
        loss_fn_inputs={"advantages": np.array([1, 2]), "logprobs": [1, 2], "extra": [1, 2], "mask": [0.5]},
    )
    dtypes = {k: v.dtype for k, v in datum.loss_fn_inputs.items()}
    # The official SDK's rule: an array's own dtype; a list by its key, else by its values.
    assert dtypes == {"advantages": "int64", "logprobs": "float32", "extra": "int64", "mask": "float32"}
    two_d = t.TensorData(data=np.zeros((2, 3), dtype=np.float64), dtype="float32")  # pyright: ignore[reportArgumentType]
    assert two_d.shape == [2, 3] and two_d.data == [0.0] * 6


@pytest.mark.parametrize(
    ("inputs", "kind", "argument"),
    [
        pytest.param({"target_tokens": "abc"}, TYPE, "loss_fn_inputs['target_tokens']", id="str-value"),
        pytest.param({"weights": [[1.0], [1.0, 2.0]]}, VALUE, "loss_fn_inputs['weights']", id="ragged"),
        pytest.param({"weights": ["a", "b"]}, TYPE, "loss_fn_inputs['weights']", id="str-elements"),
        pytest.param({"target_tokens": [1.5]}, VALUE, "loss_fn_inputs['target_tokens']", id="fractional-token"),
        pytest.param({"target_tokens": [2, -1]}, VALUE, "loss_fn_inputs['target_tokens']", id="negative-target"),
        pytest.param({3: [1.0]}, TYPE, "loss_fn_inputs", id="int-key"),
        pytest.param([1.0], TYPE, "loss_fn_inputs", id="not-a-mapping"),
    ],
)
def test_bad_loss_fn_inputs_are_refused_at_construction(inputs: Any, kind: type[Exception], argument: str) -> None:
    with pytest.raises(kind) as info:
        t.Datum(model_input=t.ModelInput.from_ints([1]), loss_fn_inputs=inputs)
    assert isinstance(info.value, InvalidArgumentError) and info.value.argument == argument


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: t.ModelInput.from_ints([1, -1]), id="from_ints"),
        pytest.param(lambda: t.EncodedTextChunk(tokens=[3, -7]), id="EncodedTextChunk"),
        pytest.param(lambda: t.ModelInput.from_ints([1]).extend_ints(np.array([-2])), id="extend_ints"),
        pytest.param(lambda: t.datum([1, 2], target_tokens=[2, -100]), id="datum-target_tokens"),
    ],
)
def test_negative_token_ids_are_refused(build: Callable[[], object]) -> None:
    with pytest.raises(InvalidArgumentError, match=">= 0"):
        build()


def test_model_input_must_be_a_model_input() -> None:
    with pytest.raises(InvalidArgumentTypeError) as info:
        t.Datum(model_input=[1, 2, 3], loss_fn_inputs={})  # pyright: ignore[reportArgumentType]
    assert info.value.argument == "model_input"


# --------------------------------------------------------------------------------------------------------------------
# Optimizer parameters
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        pytest.param(lambda: t.AdamParams(learning_rate=math.nan), "learning_rate", id="adam-nan-lr"),
        pytest.param(lambda: t.AdamParams(beta1=math.inf), "beta1", id="adam-inf-beta1"),
        pytest.param(lambda: t.AdamParams(eps=-math.inf), "eps", id="adam-neg-inf-eps"),
        pytest.param(lambda: t.AdamParams(beta2=1.0), "beta2", id="adam-beta2-1"),
        pytest.param(lambda: t.AdamParams(weight_decay=-0.1), "weight_decay", id="adam-negative-decay"),
        pytest.param(lambda: t.AdamParams(learning_rate="0.1"), "learning_rate", id="adam-str-lr"),  # pyright: ignore[reportArgumentType]
        pytest.param(lambda: t.AdamParams(grad_clip_norm=True), "grad_clip_norm", id="adam-bool"),
        pytest.param(lambda: t.DimuonParams(learning_rate=math.nan), "learning_rate", id="dimuon-nan-lr"),
        pytest.param(
            lambda: t.DimuonParams(learning_rate=1e-3, grad_clip_norm=math.inf), "grad_clip_norm", id="dimuon-inf"
        ),
    ],
)
def test_optimizer_params_are_refused_at_construction(build: Callable[[], object], argument: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        build()
    assert info.value.argument == argument and argument in str(info.value)


def test_optimizer_params_still_decode_from_the_wire() -> None:
    assert t.decode(t.AdamParams, b'{"learning_rate": 1, "beta2": 0.5}') == t.AdamParams(learning_rate=1.0, beta2=0.5)
    request = t.OptimStepRequest(model_id="m", seq_id=3, optimizer_params=t.DimuonParams(learning_rate=0.01))
    assert t.decode(t.OptimStepRequest, t.encode(request)) == request
    assert (
        t.AdamParams(learning_rate=1).learning_rate == 1.0
        and type(t.AdamParams(learning_rate=1).learning_rate) is float
    )
    with pytest.raises(ResponseValidationError, match="learning_rate"):
        t.decode(t.AdamParams, b'{"learning_rate": -1.0}')


# --------------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------------


def test_config_refuses_a_missing_ca_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file") as info:
        Config(api_key=KEY, ca_file=str(tmp_path / "missing.pem"))
    assert info.value.key == "ca_file"
    with pytest.raises(ConfigError, match="ca_file"):
        Config(api_key=KEY, ca_file=str(tmp_path))  # a directory is not a PEM bundle


@pytest.mark.parametrize(
    "suffix", ["app/1.0\r\nX-Evil: 1", "app\n", "tab\there", "nul\x00", "del\x7f", "caf\u00e9"], ids=repr
)
def test_config_refuses_control_characters_in_user_agent_suffix(suffix: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config(api_key=KEY, user_agent_suffix=suffix)
    assert info.value.key == "user_agent_suffix"
    assert Config(api_key=KEY, user_agent_suffix="my-app/1.2 (linux)").user_agent_suffix == "my-app/1.2 (linux)"


# --------------------------------------------------------------------------------------------------------------------
# TrainingClient: refused calls send nothing and take no seq_id
# --------------------------------------------------------------------------------------------------------------------

TrainerCall = Callable[[tx.TrainingClient], Awaitable[object]]

TRAINER_CASES: dict[str, tuple[TrainerCall, type[InvalidArgumentError], str]] = {
    "fwdbwd-str-data": (lambda tr: tr.forward_backward("abc", "cross_entropy"), TYPE, "data"),  # pyright: ignore[reportArgumentType]
    "fwdbwd-one-datum": (lambda tr: tr.forward_backward(good_datum(), "cross_entropy"), TYPE, "data"),  # pyright: ignore[reportArgumentType]
    "fwdbwd-empty": (lambda tr: tr.forward_backward([], "cross_entropy"), VALUE, "data"),
    "fwdbwd-not-a-datum": (lambda tr: tr.forward_backward([good_datum(), {"x": 1}], "cross_entropy"), TYPE, "data[1]"),  # pyright: ignore[reportArgumentType]
    "fwdbwd-loss-fn-int": (lambda tr: tr.forward_backward([good_datum()], 3), TYPE, "loss_fn"),  # pyright: ignore[reportArgumentType]
    "fwdbwd-config-nan": (
        lambda tr: tr.forward_backward([good_datum()], "ppo", {"clip_low_threshold": math.nan}),
        VALUE,
        "loss_fn_config['clip_low_threshold']",
    ),
    "fwdbwd-config-list": (lambda tr: tr.forward_backward([good_datum()], "ppo", [1.0]), TYPE, "loss_fn_config"),  # pyright: ignore[reportArgumentType]
    "forward-str-data": (lambda tr: tr.forward("abc", "cross_entropy"), TYPE, "data"),  # pyright: ignore[reportArgumentType]
    "submit-fwdbwd-bytes": (lambda tr: tr.submit_forward_backward(b"x", "cross_entropy"), TYPE, "data"),  # pyright: ignore[reportArgumentType]
    "submit-forward-none": (lambda tr: tr.submit_forward(None, "cross_entropy"), TYPE, "data"),  # pyright: ignore[reportArgumentType]
    "batch-bad-second-item": (
        lambda tr: tr.forward_backward_batch([([good_datum()], "cross_entropy", None), ("abc", "cross_entropy", None)]),  # pyright: ignore[reportArgumentType]
        TYPE,
        "items[1].data",
    ),
    "batch-not-a-triple": (lambda tr: tr.forward_backward_batch([[good_datum()]]), TYPE, "items[0]"),  # pyright: ignore[reportArgumentType]
    "optim-none": (lambda tr: tr.optim_step(None), TYPE, "adam"),  # pyright: ignore[reportArgumentType]
    "optim-dict": (lambda tr: tr.submit_optim_step({"learning_rate": 0.1}), TYPE, "adam"),  # pyright: ignore[reportArgumentType]
    "optim-mutated-nan": (lambda tr: tr.optim_step(nan_adam()), VALUE, "adam.learning_rate"),
    "optim-batch-none-second": (lambda tr: tr.optim_step_batch([t.AdamParams(), None]), TYPE, "params[1]"),  # pyright: ignore[reportArgumentType]
    "save-state-empty": (lambda tr: tr.save_state(""), VALUE, "name"),
    "save-state-slash": (lambda tr: tr.save_state("a/b"), VALUE, "name"),
    "save-state-ttl-zero": (lambda tr: tr.save_state("ok", ttl_seconds=0), VALUE, "ttl_seconds"),
    "save-state-ttl-bool": (lambda tr: tr.save_state("ok", ttl_seconds=True), TYPE, "ttl_seconds"),
    "load-state-none": (lambda tr: tr.load_state(None), TYPE, "path"),  # pyright: ignore[reportArgumentType]
    "load-state-with-optimizer-str": (
        lambda tr: tr.load_state("tinker://x/weights/y", with_optimizer="no"),  # pyright: ignore[reportArgumentType]
        TYPE,
        "with_optimizer",
    ),
    "sampler-weights-int-name": (lambda tr: tr.save_weights_for_sampler(3), TYPE, "name"),  # pyright: ignore[reportArgumentType]
    "sampler-client-crlf-name": (lambda tr: tr.save_weights_and_get_sampling_client("a\r\nb"), VALUE, "name"),
}


def fwdbwd_seq_ids(sim: SimStack) -> list[int]:
    return [_codec.decode_forward_backward_request(s.body).seq_id for s in sim.rec.requests("forward_backward")]


@pytest.mark.parametrize(("call", "kind", "argument"), list(TRAINER_CASES.values()), ids=list(TRAINER_CASES))
async def test_training_client_refuses_bad_arguments_before_any_request(
    autojump_clock: trio.testing.MockClock, call: TrainerCall, kind: type[InvalidArgumentError], argument: str
) -> None:
    async with sim_stack() as sim, sim.session() as session:
        trainer = await session.create_lora_training_client(BASE, rank=4, seed=3)
        seen = len(sim.rec.seen)
        with pytest.raises(kind) as info:
            await call(trainer)
        assert info.value.argument == argument, info.value
        assert argument in str(info.value)
        assert len(sim.rec.seen) == seen  # nothing reached the server
        # The refused call took no seq_id: the next one is 1, and the server runs it at once (no gap to wait out).
        started = trio.current_time()
        out = await trainer.forward_backward([good_datum()], "cross_entropy")
        assert trio.current_time() - started < GAP_TIMEOUT_S / 10
        assert fwdbwd_seq_ids(sim) == [1]
        assert len(out.loss_fn_outputs) == 1
        step = await trainer.optim_step(t.AdamParams(learning_rate=0.01))
        assert step is not None
        assert [s.json()["seq_id"] for s in sim.rec.requests("optim_step")] == [2]


# --------------------------------------------------------------------------------------------------------------------
# SamplingClient
# --------------------------------------------------------------------------------------------------------------------

SamplerCall = Callable[[tx.SamplingClient], Awaitable[object]]
PROMPT = t.ModelInput.from_ints([1, 2, 3])

SAMPLER_CASES: dict[str, tuple[SamplerCall, type[InvalidArgumentError], str]] = {
    "num-samples-str": (lambda s: s.sample(PROMPT, num_samples="2"), TYPE, "num_samples"),  # pyright: ignore[reportArgumentType]
    "num-samples-bool": (lambda s: s.sample(PROMPT, num_samples=True), TYPE, "num_samples"),
    "num-samples-float": (lambda s: s.sample(PROMPT, num_samples=2.0), TYPE, "num_samples"),  # pyright: ignore[reportArgumentType]
    "num-samples-zero": (lambda s: s.sample(PROMPT, num_samples=0), VALUE, "num_samples"),
    "num-samples-negative": (lambda s: s.sample(PROMPT, num_samples=-3), VALUE, "num_samples"),
    "prompt-list": (lambda s: s.sample([1, 2, 3]), TYPE, "prompt"),  # pyright: ignore[reportArgumentType]
    "params-dict": (lambda s: s.sample(PROMPT, 1, {"max_tokens": 4}), TYPE, "sampling_params"),  # pyright: ignore[reportArgumentType]
    "params-nan-temperature": (
        lambda s: s.sample(PROMPT, 1, t.SamplingParams(max_tokens=4, temperature=math.nan)),
        VALUE,
        "sampling_params.temperature",
    ),
    "params-zero-max-tokens": (
        lambda s: s.sample(PROMPT, 1, t.SamplingParams(max_tokens=0)),
        VALUE,
        "sampling_params.max_tokens",
    ),
    "include-prompt-logprobs-str": (
        lambda s: s.sample(PROMPT, include_prompt_logprobs="yes"),  # pyright: ignore[reportArgumentType]
        TYPE,
        "include_prompt_logprobs",
    ),
    "topk-negative": (lambda s: s.sample(PROMPT, topk_prompt_logprobs=-1), VALUE, "topk_prompt_logprobs"),
    "compute-logprobs-str": (lambda s: s.compute_logprobs("abc"), TYPE, "prompt"),  # pyright: ignore[reportArgumentType]
    # The official SDK's sampling options (PROMPT has 3 tokens: targets have 2 rows, last_n is at most 2).
    "topk-sample-negative": (lambda s: s.sample(PROMPT, topk_sample_logprobs=-1), VALUE, "topk_sample_logprobs"),
    "topk-sample-float": (lambda s: s.sample(PROMPT, topk_sample_logprobs=2.0), TYPE, "topk_sample_logprobs"),  # pyright: ignore[reportArgumentType]
    "alt-k-negative": (lambda s: s.sample(PROMPT, prompt_alt_tokens_k=-2), VALUE, "prompt_alt_tokens_k"),
    "alt-k-bool": (lambda s: s.sample(PROMPT, prompt_alt_tokens_k=True), TYPE, "prompt_alt_tokens_k"),
    "last-n-zero": (
        lambda s: s.sample(PROMPT, include_prompt_logprobs=True, prompt_logprobs_last_n=0),
        VALUE,
        "prompt_logprobs_last_n",
    ),
    "last-n-past-prompt": (
        lambda s: s.sample(PROMPT, include_prompt_logprobs=True, prompt_logprobs_last_n=3),
        VALUE,
        "prompt_logprobs_last_n",
    ),
    "last-n-without-prompt-logprobs": (
        lambda s: s.sample(PROMPT, prompt_logprobs_last_n=1),
        VALUE,
        "prompt_logprobs_last_n",
    ),
    "last-n-str": (
        lambda s: s.sample(PROMPT, include_prompt_logprobs=True, prompt_logprobs_last_n="1"),  # pyright: ignore[reportArgumentType]
        TYPE,
        "prompt_logprobs_last_n",
    ),
    "compute-logprobs-last-n": (
        lambda s: s.compute_logprobs(PROMPT, prompt_logprobs_last_n=5),
        VALUE,
        "prompt_logprobs_last_n",
    ),
    "target-float-tensor": (
        lambda s: s.sample(PROMPT, target_prompt_logprobs=t.TensorData.from_numpy(np.ones((2, 1)))),
        VALUE,
        "target_prompt_logprobs",
    ),
    "target-float-array": (
        lambda s: s.sample(PROMPT, target_prompt_logprobs=np.ones((2, 1))),
        TYPE,
        "target_prompt_logprobs",
    ),
    "target-1d": (lambda s: s.sample(PROMPT, target_prompt_logprobs=np.ones(2, int)), VALUE, "target_prompt_logprobs"),
    "target-rows": (
        lambda s: s.sample(PROMPT, target_prompt_logprobs=np.ones((3, 1), int)),
        VALUE,
        "target_prompt_logprobs",
    ),
    "target-no-id": (
        lambda s: s.sample(PROMPT, target_prompt_logprobs=np.full((2, 2), -1)),
        VALUE,
        "target_prompt_logprobs",
    ),
    "target-below-minus-one": (
        lambda s: s.sample(PROMPT, target_prompt_logprobs=np.array([[1], [-3]])),
        VALUE,
        "target_prompt_logprobs",
    ),
    "target-ragged": (
        lambda s: s.sample(PROMPT, target_prompt_logprobs=[[1, 2], [3]]),
        VALUE,
        "target_prompt_logprobs",
    ),
    "target-bad-csr": (
        lambda s: s.sample(
            PROMPT,
            target_prompt_logprobs=t.TensorData(
                data=[1], dtype="int64", shape=[2, 2], sparse_crow_indices=[0, 1, 1], sparse_col_indices=[5]
            ),
        ),
        VALUE,
        "target_prompt_logprobs",
    ),
}


@pytest.mark.parametrize(("call", "kind", "argument"), list(SAMPLER_CASES.values()), ids=list(SAMPLER_CASES))
async def test_sampling_client_refuses_bad_arguments_before_any_request(
    autojump_clock: trio.testing.MockClock, call: SamplerCall, kind: type[InvalidArgumentError], argument: str
) -> None:
    async with sim_stack() as sim, sim.session() as session:
        sampler = await session.create_sampling_client(base_model=BASE)
        seen = len(sim.rec.seen)
        with pytest.raises(kind) as info:
            await call(sampler)
        assert info.value.argument == argument, info.value
        assert len(sim.rec.seen) == seen
        result = await sampler.sample(PROMPT, num_samples=2, sampling_params=t.SamplingParams(max_tokens=3))
        assert len(result.sequences) == 2
        assert [s.json()["seq_id"] for s in sim.rec.requests("asample")] == [0]


# --------------------------------------------------------------------------------------------------------------------
# Session
# --------------------------------------------------------------------------------------------------------------------

SessionCall = Callable[[tx.Session], Awaitable[object]]

SESSION_CASES: dict[str, tuple[SessionCall, type[InvalidArgumentError], str]] = {
    "lora-rank-zero": (lambda s: s.create_lora_training_client(BASE, rank=0), VALUE, "rank"),
    "lora-rank-str": (lambda s: s.create_lora_training_client(BASE, rank="8"), TYPE, "rank"),  # pyright: ignore[reportArgumentType]
    "lora-rank-bool": (lambda s: s.create_lora_training_client(BASE, rank=True), TYPE, "rank"),
    "lora-base-model-none": (lambda s: s.create_lora_training_client(None), TYPE, "base_model"),  # pyright: ignore[reportArgumentType]
    "lora-base-model-empty": (lambda s: s.create_lora_training_client(""), VALUE, "base_model"),
    "lora-seed-str": (lambda s: s.create_lora_training_client(BASE, seed="1"), TYPE, "seed"),  # pyright: ignore[reportArgumentType]
    "lora-train-mlp-none": (lambda s: s.create_lora_training_client(BASE, train_mlp=None), TYPE, "train_mlp"),  # pyright: ignore[reportArgumentType]
    "lora-metadata-object": (
        lambda s: s.create_lora_training_client(BASE, user_metadata={"x": object()}),
        TYPE,
        "user_metadata",
    ),
    "lora-metadata-int-key": (
        lambda s: s.create_lora_training_client(BASE, user_metadata={1: "x"}),  # pyright: ignore[reportArgumentType]
        TYPE,
        "user_metadata",
    ),
    "from-state-path-none": (lambda s: s.create_training_client_from_state(None), TYPE, "path"),  # pyright: ignore[reportArgumentType]
    "from-state-metadata-set": (
        lambda s: s.create_training_client_from_state("tinker://x/weights/y", user_metadata={"f": print}),
        TYPE,
        "user_metadata",
    ),
    "sampling-client-no-source": (lambda s: s.create_sampling_client(), VALUE, "base_model"),
    "sampling-client-int-path": (lambda s: s.create_sampling_client(model_path=3), TYPE, "model_path"),  # pyright: ignore[reportArgumentType]
}


@pytest.mark.parametrize(("call", "kind", "argument"), list(SESSION_CASES.values()), ids=list(SESSION_CASES))
async def test_session_refuses_bad_arguments_before_any_request(
    autojump_clock: trio.testing.MockClock, call: SessionCall, kind: type[InvalidArgumentError], argument: str
) -> None:
    async with sim_stack() as sim, sim.session() as session:
        seen = len(sim.rec.seen)
        with pytest.raises(kind) as info:
            await call(session)
        assert info.value.argument == argument, info.value
        assert len(sim.rec.seen) == seen
        # No model_seq_id / sampling_session_seq_id was used up.
        await session.create_lora_training_client(BASE, rank=4, user_metadata={"run": "ok", "n": 1})
        await session.create_sampling_client(base_model=BASE)
        assert [s.json()["model_seq_id"] for s in sim.rec.requests("create_model")] == [0]
        assert [s.json()["sampling_session_seq_id"] for s in sim.rec.requests("create_sampling_session")] == [0]


async def test_open_session_refuses_unencodable_metadata_before_any_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with sim_stack() as sim:
        with pytest.raises(InvalidArgumentTypeError) as info:
            async with sim.session(user_metadata={"x": object()}):
                pass  # pragma: no cover - never entered
        assert info.value.argument == "user_metadata"
        assert sim.rec.seen == []


# --------------------------------------------------------------------------------------------------------------------
# End to end: a Datum from plain lists trains like the explicit one
# --------------------------------------------------------------------------------------------------------------------


async def test_forward_backward_with_a_datum_from_lists(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        from_lists = await session.create_lora_training_client(BASE, rank=4, seed=5)
        explicit = await session.create_lora_training_client(BASE, rank=4, seed=5)
        numpy_datum = NUMPY_DATUMS["numpy"]()
        a = await from_lists.forward_backward([list_datum(), numpy_datum], "cross_entropy")
        b = await explicit.forward_backward([explicit_datum(), explicit_datum()], "cross_entropy")
        assert a.metrics == b.metrics and a.loss_fn_outputs == b.loss_fn_outputs
        bodies = [_codec.decode_forward_backward_request(s.body) for s in sim.rec.requests("forward_backward")]
        assert bodies[0].data == bodies[1].data
        await from_lists.optim_step(t.AdamParams(learning_rate=0.05))
        after = await from_lists.forward([list_datum()], "cross_entropy")
        assert after.metrics["loss:sum"] < a.metrics["loss:sum"] / 2  # the server applied the step
