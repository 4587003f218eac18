"""A client-side custom loss gives the official SDK's numbers: the same loss, the same surrogate, and the same
weights after the optimizer steps (read back as logprobs), within float32 tolerance. The SDK's custom losses need
PyTorch, so this runs where torch is installed (``pip install torch``); ours runs both its numpy form (with the
gradient written out) and its torch form (``autograd="torch"``). A loss that raises stops an optim_step queued behind
it in both clients, and the server holds no step for either."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from tinkex_trio import blocking
from tinkex_trio import types as t
from tinkex_trio.errors import TrainingHaltedError
from tinkex_trio.sim import SimConfig, sim_server_in_thread
from tinkex_trio.sim._app import SimApp

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


def broken(batch: list[t.Datum], logprobs: list[Any]) -> Any:
    raise ZeroDivisionError("bug in the loss")


def halted(session: blocking.Session) -> dict[str, str]:
    """As the SDK script's ``halted``: a loss that raises, and an optim_step queued behind it from another thread."""
    training = session.create_lora_training_client("meta-llama/Llama-3.2-1B", rank=4, seed=8)
    with ThreadPoolExecutor(1) as pool:
        custom = pool.submit(training.forward_backward_custom, data(), broken)
        while not custom.running():  # the custom loss is on its way: the optim_step queues behind it
            time.sleep(0.001)
        time.sleep(0.2)
        try:
            training.optim_step(t.AdamParams(learning_rate=0.02))
            outcome = "applied"
        except TrainingHaltedError:
            outcome = "refused"
        with pytest.raises(ZeroDivisionError):
            custom.result()
    return {"model_id": training.model_id, "custom": "ZeroDivisionError", "step": outcome}


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
        stopped = halted(session)
    return {
        "losses": losses,
        "surrogate": surrogate,
        "final_logprobs": [o["logprobs"].to_numpy().tolist() for o in final.loss_fn_outputs],
        "halted": stopped,
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
        models = cast("SimApp", server.app).state.models
        # The optim_step behind the failed loss: refused by both clients, and no step on the server for either.
        assert sdk["halted"]["custom"] == got["halted"]["custom"] == "ZeroDivisionError"
        assert sdk["halted"]["step"] == "RuntimeError" and got["halted"]["step"] == "refused"  # the SDK's "poisoned"
        assert models[got["halted"]["model_id"]].steps_applied == models[sdk["halted"]["model_id"]].steps_applied == 0
    np.testing.assert_allclose(got["losses"], sdk["losses"], rtol=1e-5)
    np.testing.assert_allclose(got["surrogate"], sdk["surrogate"], rtol=1e-4)
    for a, b in zip(got["final_logprobs"], sdk["final_logprobs"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert got["losses"][-1] != got["losses"][0]  # the steps changed the weights
