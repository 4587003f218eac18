"""Acceptance: tinkex_trio and the official ``tinker`` SDK train identically.

The same supervised loop -- same data, same LoRA seed, ``cross_entropy``, AdamW with weight decay -- runs once through
the official SDK 0.38.0 (in a subprocess: tests/equivalence_sdk_script.py) against a fresh simulator, and once through
tinkex_trio (in this process, over TLS) against another fresh simulator with the same seed. The per-step losses, the
optimizer's metrics and the final per-token logprobs must agree. A control run with another LoRA seed must not, so the
comparison can tell a different training run apart.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import trio

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


async def run_sdk() -> dict[str, Any]:
    async with open_sim_server(SimConfig(seed=SIM_SEED), tls=False) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TINKER_")}
        env["TINKER_TELEMETRY"] = "0"
        with trio.fail_after(RUN_LIMIT_S):
            proc = await trio.run_process(
                [sys.executable, str(SCRIPT), server.base_url, json.dumps(SPEC)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=env,
            )
    stdout = proc.stdout.decode(errors="replace")
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result (rc={proc.returncode})\n{stdout[-3000:]}\n{proc.stderr.decode()[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    assert proc.returncode == 0, result.get("traceback", result)
    return result


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
