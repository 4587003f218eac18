"""The official ``tinker`` SDK's half of tests/test_equivalence.py: one supervised training loop, losses as JSON.

Usage: ``python tests/equivalence_sdk_script.py BASE_URL SPEC_JSON``. SPEC_JSON holds ``base_model``, ``rank``,
``seed``, ``steps``, ``adam`` (AdamParams fields) and ``data`` (a list of ``{"tokens", "weights"}``: the model reads
``tokens[:-1]`` and predicts ``tokens[1:]``). Prints one line ``RESULT <json>`` with ``losses`` (``loss:sum`` of each
step's forward_backward), ``final_logprobs`` (a forward pass after the last step) and ``optim_metrics``; exits 1
with ``error`` set if anything failed.

With ``"mode": "rl"`` SPEC_JSON holds ``base_model``, ``rank``, ``seed``, ``steps``, ``adam``, ``prompt``,
``num_samples``, ``sampling`` (SamplingParams fields; each step's seed is ``sampling["seed"] + step``),
``reward_min_token`` and ``gspo_config``: each step samples from the current weights with ``record_stability_info``,
scores each completion by how many of its tokens are ``>= reward_min_token`` (advantages centred per step), runs
``stable_reinforce`` (datums with provenance) and ``gspo`` forward_backwards, then an optimizer step. RESULT then has
``tokens`` (per step, per sample), ``stable_reinforce_losses``, ``gspo_losses``, ``optim_metrics`` and
``final_logprobs`` and ``final_gspo_loss`` (a forward of the last gspo data after the last step).
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

import tinker
from tinker import types

API_KEY = "tml-equivalence-0123456789"


def _datum(item: dict[str, Any]) -> types.Datum:
    tokens: list[int] = item["tokens"]
    inputs: dict[str, Any] = {"target_tokens": tokens[1:], "weights": item["weights"]}
    return types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)


def run(base_url: str, spec: dict[str, Any], results: dict[str, Any]) -> None:
    service = tinker.ServiceClient(base_url=base_url, api_key=API_KEY)
    training = service.create_lora_training_client(
        base_model=spec["base_model"], rank=spec["rank"], seed=spec["seed"]
    ).result()
    data = [_datum(item) for item in spec["data"]]
    adam = types.AdamParams(**spec["adam"])
    losses: list[float] = []
    optim_metrics: list[dict[str, float]] = []
    for _ in range(spec["steps"]):
        out = training.forward_backward(data, "cross_entropy").result()
        losses.append(float(out.metrics["loss:sum"]))
        step = training.optim_step(adam).result()
        optim_metrics.append({k: float(v) for k, v in (step.metrics or {}).items()})
    final = training.forward(data, "cross_entropy").result()
    results["losses"] = losses
    results["optim_metrics"] = optim_metrics
    results["final_logprobs"] = [[float(x) for x in out["logprobs"].tolist()] for out in final.loss_fn_outputs]
    service.close("success").result()


def _rl_data(
    prompt: list[int], sequences: list[types.SampledSequence], advantages: list[float]
) -> tuple[list[types.Datum], list[types.Datum]]:
    """The stable_reinforce datums (with provenance) and the gspo datums of one step."""
    reinforce: list[types.Datum] = []
    gspo: list[types.Datum] = []
    for seq, adv in zip(sequences, advantages, strict=True):
        sid = seq.sequence_id
        assert sid is not None
        completion = list(seq.tokens)
        full = prompt + completion
        pad = [0.0] * (len(prompt) - 1)
        adv_row = pad + [adv] * len(completion)
        base = types.Datum(
            model_input=types.ModelInput.from_ints(full[:-1]),
            loss_fn_inputs={"target_tokens": full[1:], "advantages": adv_row},
        )
        reinforce.append(
            base.with_provenance(
                model_input=[
                    types.PromptProvenanceSpan(sequence_id=sid, length=len(prompt)),
                    types.SampledProvenanceSpan(sequence_id=sid, length=len(completion) - 1),
                ],
                loss_fn_inputs=[
                    types.PromptProvenanceSpan(sequence_id=sid, offset=1, length=len(prompt) - 1),
                    types.SampledProvenanceSpan(sequence_id=sid, length=len(completion)),
                ],
            )
        )
        assert seq.logprobs is not None
        gspo.append(
            types.Datum(
                model_input=types.ModelInput.from_ints(full[:-1]),
                loss_fn_inputs={
                    "target_tokens": full[1:],
                    "advantages": adv_row,
                    "logprobs": pad + [float(x) for x in seq.logprobs],
                    "sequence_ratio_mask": pad + [1.0] * len(completion),
                },
            )
        )
    return reinforce, gspo


def run_rl(base_url: str, spec: dict[str, Any], results: dict[str, Any]) -> None:
    service = tinker.ServiceClient(base_url=base_url, api_key=API_KEY)
    training = service.create_lora_training_client(
        base_model=spec["base_model"], rank=spec["rank"], seed=spec["seed"]
    ).result()
    adam = types.AdamParams(**spec["adam"])
    prompt: list[int] = spec["prompt"]
    tokens: list[list[list[int]]] = []
    sr_losses: list[float] = []
    gspo_losses: list[float] = []
    optim_metrics: list[dict[str, float]] = []
    gspo_data: list[types.Datum] = []
    for step in range(spec["steps"]):
        sampler = training.save_weights_and_get_sampling_client(record_stability_info=True).result()
        params = types.SamplingParams(**{**spec["sampling"], "seed": spec["sampling"]["seed"] + step})
        response = sampler.sample(types.ModelInput.from_ints(prompt), spec["num_samples"], params).result()
        completions = [list(seq.tokens) for seq in response.sequences]
        tokens.append(completions)
        rewards = [float(sum(t >= spec["reward_min_token"] for t in c)) for c in completions]
        mean = sum(rewards) / len(rewards)
        reinforce_data, gspo_data = _rl_data(prompt, list(response.sequences), [r - mean for r in rewards])
        out = training.forward_backward(reinforce_data, "stable_reinforce").result()
        sr_losses.append(float(out.metrics["loss:sum"]))
        out = training.forward_backward(gspo_data, "gspo", spec["gspo_config"]).result()
        gspo_losses.append(float(out.metrics["loss:sum"]))
        result = training.optim_step(adam).result()
        optim_metrics.append({k: float(v) for k, v in (result.metrics or {}).items()})
    final = training.forward(gspo_data, "gspo", spec["gspo_config"]).result()
    results["tokens"] = tokens
    results["stable_reinforce_losses"] = sr_losses
    results["gspo_losses"] = gspo_losses
    results["optim_metrics"] = optim_metrics
    results["final_logprobs"] = [[float(x) for x in out["logprobs"].tolist()] for out in final.loss_fn_outputs]
    results["final_gspo_loss"] = float(final.metrics["loss:sum"])
    service.close("success").result()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: equivalence_sdk_script.py BASE_URL SPEC_JSON", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"sdk_version": tinker.__version__}
    try:
        spec = json.loads(argv[2])
        (run_rl if spec.get("mode") == "rl" else run)(argv[1], spec, results)
    except Exception as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
        results["traceback"] = traceback.format_exc()
        print("RESULT " + json.dumps(results), flush=True)
        return 1
    print("RESULT " + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
