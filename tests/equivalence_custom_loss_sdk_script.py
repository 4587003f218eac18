"""The official SDK's half of tests/test_equivalence_custom_loss.py: a client-side custom loss (torch), trained for a
few steps. Usage: ``python tests/equivalence_custom_loss_sdk_script.py BASE_URL``; prints ``RESULT <json>`` with
``losses`` (the custom ``loss:sum`` of each step), ``surrogate`` (``surrogate_loss:sum``), ``final_logprobs``, and
``halted``: the model of a loss that raised, and what it and the optim_step behind it met (``"applied"`` or an error's
class name)."""

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


def broken(batch: list[types.Datum], logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    raise ZeroDivisionError("bug in the loss")


def halted(service: tinker.ServiceClient) -> dict[str, str]:
    """A loss that raises, then an optim_step submitted behind it: does it run without the loss's gradients?"""
    training = service.create_lora_training_client(base_model="meta-llama/Llama-3.2-1B", rank=4, seed=8).result()
    custom = training.forward_backward_custom(data(), broken)
    step = training.optim_step(types.AdamParams(learning_rate=0.02))
    outcomes = []
    for future in (custom, step):
        try:
            future.result()
            outcomes.append("applied")
        except Exception as exc:
            outcomes.append(type(exc).__name__)
    return {"model_id": training.model_id, "custom": outcomes[0], "step": outcomes[1]}


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
    result = {"losses": losses, "surrogate": surrogate, "final_logprobs": logprobs, "halted": halted(service)}
    print("RESULT " + json.dumps(result))
    service.close("success").result()


if __name__ == "__main__":
    main()
