"""The official SDK's half of tests/test_equivalence_custom_loss.py: a client-side custom loss (torch), trained for a
few steps. Usage: ``python tests/equivalence_custom_loss_sdk_script.py BASE_URL``; prints ``RESULT <json>`` with
``losses`` (the custom ``loss:sum`` of each step), ``surrogate`` (``surrogate_loss:sum``) and ``final_logprobs``."""

from __future__ import annotations

import json
import sys

import tinker
import torch
from tinker import types

API_KEY = "tml-equivalence-custom-loss"
TOKENS = [11, 27, 42, 5, 63, 88, 19, 70] * 3
SCALE = 0.01


def data() -> list[types.Datum]:
    out = []
    for start in range(3):
        tokens = TOKENS[start : start + 12 + 2 * start]
        out.append(
            types.Datum(
                model_input=types.ModelInput.from_ints(tokens[:-1]),
                loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)},
            )
        )
    return out


def squared(batch: list[types.Datum], logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    loss = SCALE * sum((lp**2).sum() for lp in logprobs)
    return loss, {"custom:sum": float(loss.item())}


def main() -> None:
    service = tinker.ServiceClient(base_url=sys.argv[1], api_key=API_KEY)
    training = service.create_lora_training_client(base_model="meta-llama/Llama-3.2-1B", rank=4, seed=7).result()
    losses, surrogate = [], []
    for _ in range(3):
        out = training.forward_backward_custom(data(), squared).result()
        losses.append(float(out.metrics["loss:sum"]))
        surrogate.append(float(out.metrics.get("surrogate_loss:sum", float("nan"))))
        training.optim_step(types.AdamParams(learning_rate=0.02)).result()
    final = training.forward(data(), "cross_entropy").result()
    logprobs = [[float(x) for x in o["logprobs"].tolist()] for o in final.loss_fn_outputs]
    print("RESULT " + json.dumps({"losses": losses, "surrogate": surrogate, "final_logprobs": logprobs}))
    service.close("success").result()


if __name__ == "__main__":
    main()
