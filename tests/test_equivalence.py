"""Acceptance: tinkex_trio and the official ``tinker`` SDK train identically.

The same supervised loop -- same data, same LoRA seed, ``cross_entropy``, AdamW with weight decay -- runs once through
the official SDK 0.38.0 (in a subprocess: tests/equivalence_sdk_script.py) against a fresh simulator, and once through
tinkex_trio (in this process, over TLS) against another fresh simulator with the same seed. The per-step losses, the
optimizer's metrics and the final per-token logprobs must agree. A control run with another LoRA seed must not, so the
comparison can tell a different training run apart.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import trio
from _sdkrun import run_sdk_script

from tinkex_trio import types
from tinkex_trio._session import open_session
from tinkex_trio.sim import SimConfig, open_sim_server

SCRIPT = Path(__file__).resolve().parent / "equivalence_sdk_script.py"
RUN_LIMIT_S = 120.0
SIM_SEED = 1234
API_KEY = "tml-equivalence-0123456789"


def _sequence(pattern: list[int], length: int, phase: int) -> list[int]:
    return [pattern[(phase + i) % len(pattern)] for i in range(length)]


SPEC: dict[str, Any] = {
    "base_model": "meta-llama/Llama-3.2-1B",
    "rank": 8,
    "seed": 17,
    "steps": 8,
    "adam": {"learning_rate": 0.03, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.01},
    "data": [
        {"tokens": _sequence([3, 141, 59, 26, 5], 21, 0), "weights": [1.0] * 20},
        {"tokens": _sequence([3, 141, 59, 26, 5], 13, 2), "weights": [0.0] * 4 + [1.0] * 8},
        {"tokens": _sequence([200, 7, 77], 17, 1), "weights": [0.5, 2.0] * 8},
        {"tokens": [9, 8, 7, 6, 5, 4, 3, 2, 1], "weights": [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]},
    ],
}


async def run_sdk(spec: dict[str, Any] = SPEC) -> dict[str, Any]:
    return await run_sdk_script(SCRIPT, spec, sim_seed=SIM_SEED)


async def run_ours(lora_seed: int) -> dict[str, Any]:
    data = [
        types.datum(item["tokens"][:-1], target_tokens=item["tokens"][1:], weights=item["weights"])
        for item in SPEC["data"]
    ]
    adam = types.AdamParams(**SPEC["adam"])
    losses: list[float] = []
    optim_metrics: list[dict[str, float]] = []
    async with open_sim_server(SimConfig(seed=SIM_SEED), tls=True) as server:
        with trio.fail_after(RUN_LIMIT_S):
            async with open_session(API_KEY, server.base_url, ssl_context=server.client_ssl_context()) as session:
                trainer = await session.create_lora_training_client(
                    SPEC["base_model"], rank=SPEC["rank"], seed=lora_seed
                )
                for _ in range(SPEC["steps"]):
                    output = await trainer.forward_backward(data, "cross_entropy")
                    losses.append(output.metrics["loss:sum"])
                    step = await trainer.optim_step(adam)
                    optim_metrics.append(dict(step.metrics or {}))
                final = await trainer.forward(data, "cross_entropy")
    return {
        "losses": losses,
        "optim_metrics": optim_metrics,
        "final_logprobs": [out["logprobs"].tolist() for out in final.loss_fn_outputs],
    }


async def test_same_losses_as_the_official_sdk() -> None:
    sdk = await run_sdk()
    ours = await run_ours(SPEC["seed"])

    assert len(ours["losses"]) == len(sdk["losses"]) == SPEC["steps"]
    assert np.allclose(ours["losses"], sdk["losses"], rtol=1e-9, atol=0.0), (ours["losses"], sdk["losses"])
    # The loop really trains, so equal losses are not equal by accident of a flat curve.
    assert ours["losses"][-1] < 0.5 * ours["losses"][0]
    assert [sorted(m) for m in ours["optim_metrics"]] == [sorted(m) for m in sdk["optim_metrics"]]
    for mine, theirs in zip(ours["optim_metrics"], sdk["optim_metrics"], strict=True):
        assert np.allclose([mine[k] for k in sorted(mine)], [theirs[k] for k in sorted(theirs)], rtol=1e-9)
    assert [len(x) for x in ours["final_logprobs"]] == [len(x) for x in sdk["final_logprobs"]]
    for mine, theirs in zip(ours["final_logprobs"], sdk["final_logprobs"], strict=True):
        assert np.allclose(mine, theirs, rtol=1e-6, atol=1e-7)

    # Control: another LoRA seed trains differently, and the comparison sees it.
    other = await run_ours(SPEC["seed"] + 1)
    assert not np.allclose(other["losses"], sdk["losses"], rtol=1e-6)


# -- the RL losses: stable_reinforce (with record_stability_info sampling and provenance) and gspo ---------------------

RL_SPEC: dict[str, Any] = {
    "mode": "rl",
    "base_model": "meta-llama/Llama-3.2-1B",
    "rank": 8,
    "seed": 29,
    "steps": 4,
    "adam": {"learning_rate": 0.05, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8},
    "prompt": [3, 141, 59, 26],
    "num_samples": 6,
    "sampling": {"max_tokens": 9, "temperature": 0.9, "top_k": 40, "top_p": 0.97, "seed": 100, "stop": []},
    "reward_min_token": 128,
    "gspo_config": {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1},
}


def _rl_data(
    prompt: list[int], sequences: list[types.SampledSequence], advantages: list[float]
) -> tuple[list[types.Datum], list[types.Datum]]:
    reinforce: list[types.Datum] = []
    gspo: list[types.Datum] = []
    for seq, adv in zip(sequences, advantages, strict=True):
        sid = seq.sequence_id
        assert sid is not None and seq.logprobs is not None
        completion = [int(x) for x in seq.tokens]
        full = prompt + completion
        pad = [0.0] * (len(prompt) - 1)
        adv_row = pad + [adv] * len(completion)
        base = types.datum(full[:-1], target_tokens=full[1:], advantages=adv_row)
        reinforce.append(
            base.with_provenance(
                [types.ProvenanceSpan.prompt(sid, len(prompt)), types.ProvenanceSpan.sampled(sid, len(completion) - 1)],
                [
                    types.ProvenanceSpan.prompt(sid, len(prompt) - 1, offset=1),
                    types.ProvenanceSpan.sampled(sid, len(completion)),
                ],
            )
        )
        gspo.append(
            types.datum(
                full[:-1],
                target_tokens=full[1:],
                advantages=adv_row,
                logprobs=pad + [float(x) for x in seq.logprobs],
                sequence_ratio_mask=pad + [1.0] * len(completion),
            )
        )
    return reinforce, gspo


async def run_ours_rl(lora_seed: int) -> dict[str, Any]:
    spec = RL_SPEC
    adam = types.AdamParams(**spec["adam"])
    prompt: list[int] = spec["prompt"]
    out: dict[str, Any] = {"tokens": [], "stable_reinforce_losses": [], "gspo_losses": [], "optim_metrics": []}
    gspo_data: list[types.Datum] = []
    async with open_sim_server(SimConfig(seed=SIM_SEED), tls=True) as server:
        with trio.fail_after(RUN_LIMIT_S):
            async with open_session(API_KEY, server.base_url, ssl_context=server.client_ssl_context()) as session:
                trainer = await session.create_lora_training_client(
                    spec["base_model"], rank=spec["rank"], seed=lora_seed
                )
                for step in range(spec["steps"]):
                    sampler = await trainer.save_weights_and_get_sampling_client(record_stability_info=True)
                    params = types.SamplingParams(**{**spec["sampling"], "seed": spec["sampling"]["seed"] + step})
                    response = await sampler.sample(types.ModelInput.from_ints(prompt), spec["num_samples"], params)
                    completions = [[int(x) for x in seq.tokens] for seq in response.sequences]
                    out["tokens"].append(completions)
                    rewards = [float(sum(t >= spec["reward_min_token"] for t in c)) for c in completions]
                    mean = sum(rewards) / len(rewards)
                    reinforce, gspo_data = _rl_data(prompt, list(response.sequences), [r - mean for r in rewards])
                    result = await trainer.forward_backward(reinforce, "stable_reinforce")
                    out["stable_reinforce_losses"].append(result.metrics["loss:sum"])
                    result = await trainer.forward_backward(gspo_data, "gspo", spec["gspo_config"])
                    out["gspo_losses"].append(result.metrics["loss:sum"])
                    stepped = await trainer.optim_step(adam)
                    out["optim_metrics"].append(dict(stepped.metrics or {}))
                final = await trainer.forward(gspo_data, "gspo", spec["gspo_config"])
    out["final_logprobs"] = [o["logprobs"].tolist() for o in final.loss_fn_outputs]
    out["final_gspo_loss"] = final.metrics["loss:sum"]
    return out


async def test_same_rl_losses_as_the_official_sdk() -> None:
    sdk = await run_sdk(RL_SPEC)
    ours = await run_ours_rl(RL_SPEC["seed"])

    # The same samples (same weights, same seeds), so the same datums.
    assert ours["tokens"] == sdk["tokens"]
    for name in ("stable_reinforce_losses", "gspo_losses"):
        assert len(ours[name]) == RL_SPEC["steps"]
        assert np.allclose(ours[name], sdk[name], rtol=1e-9, atol=1e-12), (name, ours[name], sdk[name])
    # Non-trivial: the losses are not zero, and training changes what is sampled. (gspo's on-policy loss is about
    # -sum(A) = 0, the advantages being centred over equally long samples; one optimizer step later it is not.)
    assert all(abs(x) > 1e-3 for x in ours["stable_reinforce_losses"])
    assert abs(ours["final_gspo_loss"]) > 1e-3
    assert math.isclose(ours["final_gspo_loss"], sdk["final_gspo_loss"], rel_tol=1e-9)
    assert ours["tokens"][0] != ours["tokens"][-1]
    for mine, theirs in zip(ours["optim_metrics"], sdk["optim_metrics"], strict=True):
        assert sorted(mine) == sorted(theirs)
        assert np.allclose([mine[k] for k in sorted(mine)], [theirs[k] for k in sorted(theirs)], rtol=1e-9)
    for mine, theirs in zip(ours["final_logprobs"], sdk["final_logprobs"], strict=True):
        assert np.allclose(mine, theirs, rtol=1e-6, atol=1e-7)

    # Control: another LoRA seed trains differently, and the comparison sees it.
    other = await run_ours_rl(RL_SPEC["seed"] + 1)
    assert not np.allclose(other["stable_reinforce_losses"], sdk["stable_reinforce_losses"], rtol=1e-6)
