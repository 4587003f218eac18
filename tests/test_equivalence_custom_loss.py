"""A client-side custom loss gives the official SDK's numbers: the same loss, the same surrogate, and the same
weights after the optimizer steps (read back as logprobs), within float32 tolerance. The SDK's custom losses need
PyTorch, so this runs where torch is installed (``pip install torch``); ours runs both its numpy form (with the
gradient written out) and its torch form (``autograd="torch"``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tinkex_trio import blocking
from tinkex_trio import types as t
from tinkex_trio.sim import SimConfig, sim_server_in_thread

torch = pytest.importorskip("torch", reason="the official SDK's custom losses need PyTorch (pip install torch)")

SCRIPT = Path(__file__).with_name("equivalence_custom_loss_sdk_script.py")
TOKENS = [11, 27, 42, 5, 63, 88, 19, 70] * 3
SCALE = 0.01


def data() -> list[t.Datum]:
    out = []
    for start in range(3):
        tokens = TOKENS[start : start + 12 + 2 * start]
        out.append(t.datum(tokens[:-1], target_tokens=tokens[1:], weights=[1.0] * (len(tokens) - 1)))
    return out


def squared_numpy(batch: list[t.Datum], logprobs: list[np.ndarray[Any, Any]]) -> Any:
    loss = SCALE * sum(float(np.sum(lp.astype(np.float64) ** 2)) for lp in logprobs)
    return loss, {"custom:sum": loss}, [2 * SCALE * lp for lp in logprobs]


def squared_torch(batch: list[t.Datum], logprobs: list[Any]) -> Any:
    loss = SCALE * sum((lp**2).sum() for lp in logprobs)
    return loss, {"custom:sum": float(loss.item())}


def ours(base_url: str, autograd: Any) -> dict[str, Any]:
    loss_fn = squared_torch if autograd == "torch" else squared_numpy
    with blocking.open_session("tml-equivalence-custom-loss", base_url) as session:
        training = session.create_lora_training_client("meta-llama/Llama-3.2-1B", rank=4, seed=7)
        losses, surrogate = [], []
        for _ in range(3):
            out = training.forward_backward_custom(data(), loss_fn, autograd=autograd)
            losses.append(out.metrics["loss:sum"])
            surrogate.append(out.metrics["surrogate_loss:sum"])
            training.optim_step(t.AdamParams(learning_rate=0.02))
        final = training.forward(data(), "cross_entropy")
    return {
        "losses": losses,
        "surrogate": surrogate,
        "final_logprobs": [o["logprobs"].to_numpy().tolist() for o in final.loss_fn_outputs],
    }


def theirs(base_url: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINKER_")}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), base_url], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return result


@pytest.mark.parametrize("autograd", ["numpy", "torch"])
def test_a_custom_loss_gives_the_sdks_numbers(autograd: str) -> None:
    with sim_server_in_thread(SimConfig(seed=0)) as server:
        sdk = theirs(server.base_url)
        got = ours(server.base_url, autograd)
    np.testing.assert_allclose(got["losses"], sdk["losses"], rtol=1e-5)
    np.testing.assert_allclose(got["surrogate"], sdk["surrogate"], rtol=1e-4)
    for a, b in zip(got["final_logprobs"], sdk["final_logprobs"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert got["losses"][-1] != got["losses"][0]  # the steps changed the weights
