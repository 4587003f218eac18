"""The official tinker-cookbook's own RL and supervised data paths, through the official ``tinker`` SDK, against our
simulator: the referee half of tests/test_cookbook_referee.py. Usage: ``python tests/cookbook_referee_script.py
BASE_URL PART`` (``PART`` one of the names below, or ``{"part": NAME}``); with ``-`` for BASE_URL it starts a simulator
of its own (``tinkex_trio.sim.sim_server_in_thread(SimConfig(seed=0))``). Prints ``RESULT <json>``: a failure has its
``traceback`` and exits 1; a cookbook module that cannot be imported here (a missing dependency, not the simulator's
doing) gives ``skip`` with the ImportError, and exits 0.

Nothing here reaches a network or a tokenizer: prompts are plain token ids (``tinker.ModelInput.from_ints``), and the
environments score the sampled tokens themselves.

- ``rl``: a two-turn environment (the second observation extends the first turn's observation and action) and a
  two-turn one whose second observation starts afresh, rolled out by the cookbook's ``do_group_rollout`` with its
  ``TinkerTokenCompleter`` from a ``record_stability_info`` sampler; the cookbook's ``compute_advantages`` and
  ``assemble_training_data`` (its ``trajectory_to_data`` attaches the provenance spans), its ``incorporate_kl_penalty``
  against the base model, and its ``train_step`` (forward_backward with ``stable_reinforce`` pipelined with
  optim_step) over two substeps, then again with ``loss_fn_config={"kl_coeff": 0.01}``; its ``compute_kl_sample_train``
  and ``compute_post_kl`` read the result.
- ``rl_loop``: the datum of ``recipes/rl_loop.py`` (targets padded with 0 on the prompt), built as that loop builds it
  with the recipe's own ``with_sampled_provenance``, trained with forward_backward and optim_step as the loop does.
- ``sl``: the cookbook's ``datum_from_model_input_weights`` (both reductions, with ``max_length`` truncation), trained
  with cross_entropy as its supervised loop does (forward_backward then optim_step), scored with ``compute_mean_nll``.
- ``rl_main``: the cookbook's whole RL trainer, ``tinker_cookbook.rl.train.main``, on the same environments: its sync
  loop (stable_reinforce with kl_coeff, a KL penalty against the base model, two substeps, post-update KL, periodic
  checkpoints whose sampler is made from the saved path with record_stability_info), its streaming-minibatch loop and
  its async (off-policy) loop.
- ``sl_main``: the cookbook's whole supervised trainer, ``tinker_cookbook.supervised.train.main``, on raw-token datums,
  two epochs, with checkpoints and its test-set NLL evaluator.

The two trainers need a tokenizer only to display rollouts and for bits-per-byte: ``_IdTokenizer`` (token ids as
text) is registered under the base model's name with the cookbook's own ``register_tokenizer``. They also download a
pricing table for their cost metrics, once per process; that is marked done (absent) beforehand, so that the run
stays on this machine: they then log token counts only, as when the download fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import tempfile
import traceback
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import tinker
import torch
from tinker import types

API_KEY = "tml-cookbook-referee"
BASE = "meta-llama/Llama-3.2-1B"
GROUP = 4
MAX_TOKENS = 5
LR = 0.05


def _no_pricing() -> None:
    """The trainers download a pricing table once per process, for their cost metrics. Have that one download fail
    at once, through the cookbook's own loader, against a local port that refuses connections: the run stays on this
    machine and logs token counts only, as it does whenever the download fails."""
    from tinker_cookbook.utils import cost_estimation

    cost_estimation.load_model_pricing(url="http://127.0.0.1:9/pricing.json", timeout=1.0)


def _finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x)


class _Recording:
    """A TrainingClient that remembers every forward_backward future it hands out (the cookbook's ``train_step``
    returns only the logprobs, and the loss it trained on is what we want to see)."""

    def __init__(self, inner: tinker.TrainingClient) -> None:
        self._inner = inner
        self.forward_backward_futures: list[Any] = []
        self.requests: list[tuple[list[types.Datum], str, dict[str, Any] | None]] = []

    def forward_backward(self, data: list[types.Datum], loss_fn: str, loss_fn_config: Any = None) -> Any:
        future = self._inner.forward_backward(data, loss_fn=loss_fn, loss_fn_config=loss_fn_config)  # type: ignore[arg-type]
        self.forward_backward_futures.append(future)
        self.requests.append((data, loss_fn, loss_fn_config))
        return future

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextlib.asynccontextmanager
async def _service(base_url: str) -> AsyncIterator[tinker.ServiceClient]:
    service = tinker.ServiceClient(base_url=base_url, api_key=API_KEY)
    status: Any = "errored"
    try:
        yield service
        status = "success"
    finally:
        await service.close(status)


# --- rl ---------------------------------------------------------------------------------------------------------


def _score(tokens: Sequence[int]) -> float:
    """A reward the environment can compute from token ids alone (their mean, scaled): a group's rewards all but
    never tie, so its advantages are not all zero."""
    return sum(tokens) / (1000.0 * max(1, len(tokens)))


def _make_env_types() -> tuple[type, type]:
    from tinker_cookbook.rl.types import Env, EnvGroupBuilder, StepResult

    class TwoTurnEnv(Env):
        """Turn one sees ``prompt``; turn two sees either the whole conversation so far plus ``follow_up``
        (``extend``: one datum per trajectory, with four provenance runs), or ``follow_up`` alone (a new sequence:
        two datums). The reward, on the last turn, scores both actions."""

        def __init__(self, prompt: list[int], follow_up: list[int], extend: bool) -> None:
            self.prompt = prompt
            self.follow_up = follow_up
            self.extend = extend
            self.seen: list[int] = []
            self.actions: list[list[int]] = []

        async def initial_observation(self) -> tuple[types.ModelInput, list[int]]:
            self.seen = list(self.prompt)
            return types.ModelInput.from_ints(self.seen), []

        async def step(self, action: list[int], *, extra: Any = None) -> Any:
            self.actions.append(list(action))
            if len(self.actions) == 1:
                self.seen = (self.seen + list(action) + self.follow_up) if self.extend else list(self.follow_up)
                return StepResult(
                    reward=0.0,
                    episode_done=False,
                    next_observation=types.ModelInput.from_ints(self.seen),
                    next_stop_condition=[],
                    metrics={"turn": 1},
                )
            return StepResult(
                reward=_score(self.actions[0] + self.actions[1]),
                episode_done=True,
                next_observation=types.ModelInput.from_ints([]),
                next_stop_condition=[],
                metrics={"turn": 2},
            )

    class Builder(EnvGroupBuilder):
        def __init__(self, prompt: list[int], follow_up: list[int], extend: bool) -> None:
            self.prompt, self.follow_up, self.extend = prompt, follow_up, extend

        async def make_envs(self) -> Sequence[Env]:
            return [TwoTurnEnv(self.prompt, self.follow_up, self.extend) for _ in range(GROUP)]

        def logging_tags(self) -> list[str]:
            return ["referee", "extend" if self.extend else "fresh"]

    return TwoTurnEnv, Builder


def _span_kinds(datum: types.Datum) -> list[str]:
    spans = datum.loss_fn_input_spans or []
    return ["sampled" if isinstance(s, tinker.SampledProvenanceSpan) else "prompt" for s in spans]


async def _rl_iteration(
    service: tinker.ServiceClient,
    training: tinker.TrainingClient,
    builders: list[Any],
    loss_fn_config: dict[str, Any] | None,
    num_substeps: int,
) -> dict[str, Any]:
    from tinker_cookbook.completers import TinkerTokenCompleter
    from tinker_cookbook.rl.data_processing import assemble_training_data, compute_advantages
    from tinker_cookbook.rl.metrics import compute_kl_sample_train, compute_post_kl, incorporate_kl_penalty
    from tinker_cookbook.rl.rollouts import do_group_rollout
    from tinker_cookbook.rl.train import train_step

    sampler = await training.save_weights_and_get_sampling_client(record_stability_info=True)
    policy = TinkerTokenCompleter(sampler, max_tokens=MAX_TOKENS)
    groups = await asyncio.gather(*[do_group_rollout(b, policy) for b in builders])
    sequence_ids = [t.ac.sequence_id for g in groups for traj in g.trajectories_G for t in traj.transitions]
    assert all(sequence_ids), f"TinkerTokenCompleter recorded no sequence_id: {sequence_ids}"

    advantages = compute_advantages(groups)
    data, metadata = assemble_training_data(groups, advantages)
    assert len(metadata) == len(data)
    for d in data:
        assert d.model_input_spans is not None and d.loss_fn_input_spans is not None, "a datum has no provenance"
    kinds = sorted({",".join(_span_kinds(d)) for d in data})

    base = await service.create_sampling_client(base_model=BASE)
    kl_metrics, _usage = await incorporate_kl_penalty(data, base, kl_penalty_coef=0.01, kl_discount_factor=0.0)

    recording = _Recording(training)
    optim_metrics: dict[str, Any] = {}
    training_logprobs = await train_step(
        data,
        recording,  # type: ignore[arg-type]
        learning_rate=LR,
        num_substeps=num_substeps,
        loss_fn="stable_reinforce",
        loss_fn_config=loss_fn_config,
        metrics=optim_metrics,
    )
    outputs = [await f for f in recording.forward_backward_futures]
    losses = [float(o.metrics["loss:sum"]) for o in outputs]
    sent_keys = sorted({k for batch, _, _ in recording.requests for d in batch for k in d.loss_fn_inputs})
    sample_train = compute_kl_sample_train(data, training_logprobs)

    after = await training.save_weights_and_get_sampling_client()
    post_kl, _ = await compute_post_kl(data, after)
    return {
        "groups": len(groups),
        "trajectories": sum(len(g.trajectories_G) for g in groups),
        "datums": len(data),
        "span_kinds": kinds,
        "rewards": [r for g in groups for r in g.get_total_rewards()],
        "kl_policy_base": kl_metrics["kl_policy_base"],
        "losses": losses,
        "forward_backward_calls": len(outputs),
        "loss_fn_configs": [c for _, _, c in recording.requests],
        "sent_loss_fn_inputs": sent_keys,
        "kl_sample_train_v1": sample_train["optim/kl_sample_train_v1"],
        "entropy": sample_train["optim/entropy"],
        "kl_pre_post_v1": post_kl["kl_pre_post_v1"],
        "kl_pre_post_v2": post_kl["kl_pre_post_v2"],
    }


async def rl(base_url: str) -> dict[str, Any]:
    async with _service(base_url) as service:
        return await _rl(service)


async def _rl(service: tinker.ServiceClient) -> dict[str, Any]:
    _, builder = _make_env_types()
    training = await service.create_lora_training_client(base_model=BASE, rank=4, seed=3)
    builders = [
        builder([11, 42, 7, 99, 3], [5, 6, 7], True),
        builder([21, 8, 64, 13], [30, 31], False),
    ]
    first = await _rl_iteration(service, training, builders, None, num_substeps=2)
    second = await _rl_iteration(service, training, builders, {"kl_coeff": 0.01}, num_substeps=1)
    for it in (first, second):
        # The extending environment gives one datum per trajectory (its runs: prompt, sampled, prompt, sampled), the
        # other two (prompt, sampled each): 4 + 8.
        assert it["datums"] == 12 and it["span_kinds"] == ["prompt,sampled", "prompt,sampled,prompt,sampled"], it
        assert it["sent_loss_fn_inputs"] == ["advantages", "logprobs", "target_tokens"], it
        assert all(_finite(x) for x in it["losses"]) and any(x != 0.0 for x in it["losses"]), it["losses"]
        assert it["kl_pre_post_v2"] > 0.0, "the weights did not change"
    assert first["forward_backward_calls"] == 2 and second["loss_fn_configs"] == [{"kl_coeff": 0.01}], (first, second)
    # A fresh LoRA is its base model; and with one substep the learner's logprobs on the sampled tokens are the ones
    # the sampler returned for them (the same weights), position for position.
    assert abs(first["kl_policy_base"]) < 1e-4, first
    assert abs(second["kl_sample_train_v1"]) < 1e-4, second
    return {"first": first, "second": second}


# --- rl_loop ----------------------------------------------------------------------------------------------------


async def rl_loop(base_url: str) -> dict[str, Any]:
    async with _service(base_url) as service:
        return await _rl_loop(service)


async def _rl_loop(service: tinker.ServiceClient) -> dict[str, Any]:
    from tinker.types.tensor_data import TensorData
    from tinker_cookbook.recipes.rl_loop import with_sampled_provenance

    training = await service.create_lora_training_client(base_model=BASE, rank=4, seed=5)
    sampler = await training.save_weights_and_get_sampling_client(record_stability_info=True)
    prompt = types.ModelInput.from_ints([11, 42, 7, 99, 3, 17])
    result = await sampler.sample(
        prompt=prompt, num_samples=GROUP, sampling_params=types.SamplingParams(max_tokens=6, stop=[])
    )
    rewards = [_score(s.tokens) for s in result.sequences]
    mean = sum(rewards) / len(rewards)
    datums: list[types.Datum] = []
    # As recipes/rl_loop.py builds its datums, line for line but for the tokenizer-free reward.
    for sequence, reward in zip(result.sequences, rewards, strict=True):
        sampled_tokens, logprobs = sequence.tokens, sequence.logprobs
        assert logprobs is not None and sequence.sequence_id is not None
        ob_len = prompt.length - 1
        model_input = prompt.append(types.EncodedTextChunk(tokens=sampled_tokens[:-1]))
        target_tokens = [0] * ob_len + sampled_tokens
        padded_logprobs = [0.0] * ob_len + logprobs
        padded_advantages = [0.0] * ob_len + [reward - mean] * (model_input.length - ob_len)
        datum = types.Datum(
            model_input=model_input,
            loss_fn_inputs={
                "target_tokens": TensorData.from_torch(torch.tensor(target_tokens)),
                "logprobs": TensorData.from_torch(torch.tensor(padded_logprobs)),
                "advantages": TensorData.from_torch(torch.tensor(padded_advantages)),
            },
        )
        datums.append(with_sampled_provenance(datum, prompt.length, len(sampled_tokens), sequence.sequence_id))
    adam = types.AdamParams(learning_rate=LR, beta1=0.9, beta2=0.95, eps=1e-8)
    before_loss = float((await training.forward(datums, loss_fn="stable_reinforce")).metrics["loss:sum"])
    # As the loop trains: forward_backward, then optim_step submitted behind it before either is awaited.
    fwd_bwd = training.forward_backward(datums, loss_fn="stable_reinforce")
    optim = training.optim_step(adam)
    out = await fwd_bwd
    await optim
    after_loss = float((await training.forward(datums, loss_fn="stable_reinforce")).metrics["loss:sum"])
    loss = float(out.metrics["loss:sum"])
    assert _finite(loss) and loss == before_loss and after_loss != before_loss
    return {"datums": len(datums), "loss": loss, "loss_after_step": after_loss, "rewards": rewards}


# --- sl ---------------------------------------------------------------------------------------------------------


async def sl(base_url: str) -> dict[str, Any]:
    async with _service(base_url) as service:
        return await _sl(service)


async def _sl(service: tinker.ServiceClient) -> dict[str, Any]:
    from tinker_cookbook.supervised.common import compute_mean_nll, datum_from_model_input_weights

    training = await service.create_lora_training_client(base_model=BASE, rank=4, seed=9)
    examples = [
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]),  # prompt of 3, completion of 7
        ([40, 41, 42, 43, 44, 45], [0, 0, 1, 1, 1, 1]),
        ([9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 9, 8], [0] * 4 + [1] * 8),  # cut to 10 by max_length
    ]
    runs: dict[str, list[float]] = {}
    for reduction in ("none", "mean"):
        data = [
            datum_from_model_input_weights(
                types.ModelInput.from_ints(tokens),
                torch.tensor(weights, dtype=torch.float32),
                max_length=10,
                reduction=reduction,  # type: ignore[arg-type]
            )
            for tokens, weights in examples
        ]
        assert [d.model_input.length for d in data] == [9, 5, 9]
        adam = types.AdamParams(learning_rate=LR, beta1=0.9, beta2=0.95, eps=1e-8)
        nlls: list[float] = []
        for _ in range(4):
            # As the supervised loop submits a batch: forward_backward, then optim_step behind it.
            fwd_bwd = training.forward_backward(data, loss_fn="cross_entropy")
            optim = training.optim_step(adam)
            out = await fwd_bwd
            await optim
            logprobs = [o["logprobs"] for o in out.loss_fn_outputs]
            weights = [d.loss_fn_inputs["weights"] for d in data]
            nlls.append(compute_mean_nll(logprobs, weights))
            assert _finite(float(out.metrics["loss:sum"]))
        assert all(_finite(x) for x in nlls) and nlls[-1] < nlls[0], nlls
        runs[reduction] = nlls
    return {"nll": runs}


# --- rl_main ----------------------------------------------------------------------------------------------------


class _IdTokenizer:
    """Token ids as text: what the cookbook's logging needs of a tokenizer (it decodes to display rollouts), given
    through its own ``register_tokenizer`` so that no tokenizer is downloaded."""

    def __init__(self) -> None:
        self.eos_token_id = 0
        self.all_special_ids: list[int] = []

    def decode(self, tokens: Sequence[int] | int, skip_special_tokens: bool = False) -> str:
        ids = [tokens] if isinstance(tokens, int) else list(tokens)
        return "".join(f"<{int(t)}>" for t in ids)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [int(x) for x in text.replace("<", " ").replace(">", " ").split()]


def _jsonl(log_path: str, name: str) -> list[dict[str, Any]]:
    """The records of a JSON-lines file the trainer wrote in its log directory."""
    with open(os.path.join(log_path, name)) as f:
        return [json.loads(line) for line in f if line.strip()]


async def rl_main(base_url: str) -> dict[str, Any]:
    """The cookbook's whole RL trainer (``tinker_cookbook.rl.train.main``) on the two-turn environments: its sync loop
    with stable_reinforce, kl_coeff, a KL penalty against the base model, two substeps, post-update KL and periodic
    checkpoints; then its async (off-policy) loop, whose default loss is stable_reinforce."""
    import chz
    from tinker_cookbook.rl import train
    from tinker_cookbook.rl.types import EnvGroupBuilder, RLDataset, RLDatasetBuilder
    from tinker_cookbook.tokenizer_utils import register_tokenizer

    _, builder = _make_env_types()

    class Dataset(RLDataset):
        def get_batch(self, index: int) -> Sequence[EnvGroupBuilder]:
            return [builder([11, 42, 7, 99, 3 + index], [5, 6, 7], True), builder([21, 8, 64, index], [30, 31], False)]

        def __len__(self) -> int:
            return 3

    @chz.chz
    class DatasetBuilder(RLDatasetBuilder):
        async def __call__(self) -> tuple[RLDataset, RLDataset | None]:
            return Dataset(), None

    register_tokenizer(BASE, _IdTokenizer)  # type: ignore[arg-type]
    _no_pricing()
    os.environ["TINKER_API_KEY"] = API_KEY
    out: dict[str, Any] = {}
    for mode in ("sync", "stream", "async"):
        with tempfile.TemporaryDirectory() as log_path:
            common: dict[str, Any] = {
                "learning_rate": LR,
                "dataset_builder": DatasetBuilder(),
                "model_name": BASE,
                "recipe_name": "recipe_cookbook_referee",
                "max_tokens": MAX_TOKENS,
                "log_path": log_path,
                "eval_every": 0,
                "lora_rank": 4,
                "base_url": base_url,
            }
            if mode == "sync":
                config = train.Config(
                    **common,
                    save_every=2,
                    loss_fn="stable_reinforce",
                    loss_fn_config={"kl_coeff": 0.01},
                    kl_penalty_coef=0.01,
                    kl_reference_config=train.KLReferenceConfig(base_model=BASE),
                    num_substeps=2,
                    compute_post_kl=True,
                )
            elif mode == "stream":
                # Two forward_backward calls (one per minibatch of groups, as they finish) to one optim_step.
                config = train.Config(
                    **common,
                    save_every=0,
                    loss_fn="stable_reinforce",
                    stream_minibatch_config=train.StreamMinibatchConfig(groups_per_batch=2, num_minibatches=2),
                )
            else:
                config = train.Config(
                    **common,
                    save_every=0,
                    async_config=train.AsyncConfig(max_steps_off_policy=1, groups_per_batch=2),
                )
            await train.main(config)
            rows = [r for r in _jsonl(log_path, "metrics.jsonl") if "optim/kl_sample_train_v1" in r]
            checkpoints = [c["name"] for c in _jsonl(log_path, "checkpoints.jsonl")]
            keys = ("grad_norm:mean", "optim/kl_sample_train_v1", "kl_pre_post_v2", "kl_policy_base")
            keys += ("async/staleness_max", "sampling_client/step_min", "training_client/step")
            out[mode] = {k: [r.get(k) for r in rows] for k in keys}
            out[mode]["steps"] = len(rows)
            out[mode]["checkpoints"] = checkpoints
            assert len(rows) == 3, rows
            assert checkpoints[-1] == "final" and (mode != "sync" or "000002" in checkpoints), checkpoints
            for row in rows:
                assert all(_finite(float(row[k])) for k in keys[:2]), row
                assert float(row["grad_norm:mean"]) > 0.0, row
                if mode == "sync":
                    assert float(row["kl_pre_post_v2"]) > 0.0, row
                if mode == "stream":
                    # Both minibatches train at the weights they were sampled from.
                    assert abs(float(row["optim/kl_sample_train_v1"])) < 1e-4, row
            if mode == "async":
                assert max(int(r["async/staleness_max"]) for r in rows) <= 1, rows
    return out


# --- sl_main ----------------------------------------------------------------------------------------------------


async def sl_main(base_url: str) -> dict[str, Any]:
    """The cookbook's whole supervised trainer (``tinker_cookbook.supervised.train.main``) on a raw-token dataset (its
    datums from ``datum_from_model_input_weights``), with its pipelined submission, periodic checkpoints and its
    test-set NLL evaluator (which scores with the sampler's prompt logprobs)."""
    import chz
    from tinker_cookbook.supervised import train
    from tinker_cookbook.supervised.common import datum_from_model_input_weights
    from tinker_cookbook.supervised.types import SupervisedDataset, SupervisedDatasetBuilder
    from tinker_cookbook.tokenizer_utils import register_tokenizer

    def datum(start: int) -> types.Datum:
        tokens = [(start * 7 + 3 * i) % 200 + 1 for i in range(10)]
        weights = torch.tensor([0.0] * 3 + [1.0] * 7)
        return datum_from_model_input_weights(types.ModelInput.from_ints(tokens), weights, reduction="mean")

    class Dataset(SupervisedDataset):
        def __init__(self, offset: int, batches: int) -> None:
            self.offset, self.batches = offset, batches

        def get_batch(self, index: int) -> list[types.Datum]:
            return [datum(self.offset + 3 * index + j) for j in range(3)]

        def __len__(self) -> int:
            return self.batches

        def set_epoch(self, seed: int = 0) -> None:
            pass

    @chz.chz
    class DatasetBuilder(SupervisedDatasetBuilder):
        def __call__(self) -> tuple[SupervisedDataset, SupervisedDataset | None]:
            return Dataset(0, 3), Dataset(100, 1)

    register_tokenizer(BASE, _IdTokenizer)  # type: ignore[arg-type]
    _no_pricing()
    os.environ["TINKER_API_KEY"] = API_KEY
    with tempfile.TemporaryDirectory() as log_path:
        config = train.Config(
            log_path=log_path,
            model_name=BASE,
            recipe_name="recipe_cookbook_referee",
            dataset_builder=DatasetBuilder(),
            learning_rate=LR,
            num_epochs=2,
            lora_rank=4,
            base_url=base_url,
            save_every=2,
            eval_every=2,
        )
        await train.main(config)
        rows = _jsonl(log_path, "metrics.jsonl")
        checkpoints = [c["name"] for c in _jsonl(log_path, "checkpoints.jsonl")]
    train_nll = [r["train_mean_nll"] for r in rows if "train_mean_nll" in r]
    test_nll = [r["test/nll"] for r in rows if "test/nll" in r]
    assert len(train_nll) == 6 and all(_finite(float(x)) for x in train_nll), rows
    assert test_nll and all(_finite(float(x)) for x in test_nll), rows
    # Each batch's NLL in the second epoch is below its NLL in the first.
    assert all(b < a for a, b in zip(train_nll[:3], train_nll[3:], strict=True)), train_nll
    return {"train_mean_nll": train_nll, "test_nll": test_nll, "checkpoints": checkpoints}


PARTS = {"rl": rl, "rl_loop": rl_loop, "sl": sl, "rl_main": rl_main, "sl_main": sl_main}


@contextlib.contextmanager
def _server(base_url: str) -> Iterator[str]:
    if base_url != "-":
        yield base_url
        return
    from tinkex_trio.sim import SimConfig, sim_server_in_thread

    with sim_server_in_thread(SimConfig(seed=0)) as server:
        yield server.base_url


def main() -> int:
    base_url, arg = sys.argv[1], sys.argv[2]
    part = json.loads(arg)["part"] if arg.startswith("{") else arg
    try:
        with _server(base_url) as url:
            result = asyncio.run(PARTS[part](url))
    except ImportError as exc:
        # Not the simulator's doing: this environment lacks part of the cookbook's dependencies.
        print("RESULT " + json.dumps({"ok": False, "skip": f"{type(exc).__name__}: {exc}"}))
        return 0
    except BaseException as exc:
        print("RESULT " + json.dumps({"ok": False, "error": repr(exc), "traceback": traceback.format_exc()}))
        return 1
    print("RESULT " + json.dumps({"ok": True, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
