"""The official ``tinker`` SDK's half of tests/test_equivalence.py: one supervised training loop, losses as JSON.

Usage: ``python tests/equivalence_sdk_script.py BASE_URL SPEC_JSON``. SPEC_JSON holds ``base_model``, ``rank``,
``seed``, ``steps``, ``adam`` (AdamParams fields) and ``data`` (a list of ``{"tokens", "weights"}``: the model reads
``tokens[:-1]`` and predicts ``tokens[1:]``). Prints one line ``RESULT <json>`` with ``losses`` (``loss:sum`` of each
step's forward_backward), ``final_logprobs`` (a forward pass after the last step) and ``optim_metrics``; exits 1
with ``error`` set if anything failed.
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


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: equivalence_sdk_script.py BASE_URL SPEC_JSON", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"sdk_version": tinker.__version__}
    try:
        run(argv[1], json.loads(argv[2]), results)
    except Exception as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
        results["traceback"] = traceback.format_exc()
        print("RESULT " + json.dumps(results), flush=True)
        return 1
    print("RESULT " + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
