"""The official tinker-cookbook, through the official SDK, against the simulator: a referee of its faithfulness on the
paths real training code takes. Its RL data path (rollouts by its ``TinkerTokenCompleter`` from a
``record_stability_info`` sampler, multi-turn trajectories, ``trajectory_to_data``'s provenance spans, its
``train_step`` pipelining ``stable_reinforce`` forward_backward with optim_step, with and without ``kl_coeff``), the
datum of its ``recipes/rl_loop.py``, its supervised datum builder with cross_entropy, and its whole RL (sync,
streaming-minibatch and async) and supervised trainers. Each part runs in a subprocess
(tests/cookbook_referee_script.py) against a fresh simulator.

The cookbook pulls PyTorch and transformers, so CI's default run skips this; ``nox -s cookbook`` installs it and runs
it with ``TINKEX_COOKBOOK_REQUIRED=1``, where a part whose cookbook modules cannot be imported fails instead of being
skipped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _sdkrun import run_sdk_script

pytest.importorskip(
    "tinker_cookbook",
    reason="the official tinker-cookbook is not installed: `nox -s cookbook` installs it and runs this "
    "(it pulls PyTorch and transformers, which CI's default run does without)",
)
pytest.importorskip("tinker", reason="the official SDK is not installed (the test extra has it)")
pytest.importorskip("torch", reason="the tinker-cookbook needs PyTorch (nox -s cookbook installs it)")

SCRIPT = Path(__file__).with_name("cookbook_referee_script.py")
SIM_SEED = 0
REQUIRED = os.environ.get("TINKEX_COOKBOOK_REQUIRED") == "1"


async def run_part(part: str) -> dict[str, object]:
    result = await run_sdk_script(SCRIPT, {"part": part}, sim_seed=SIM_SEED)
    if "skip" in result:
        message = f"the cookbook's {part} path cannot be imported here: {result['skip']}"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    assert result["ok"] is True, result
    return result


async def test_rl_data_path_trains_with_stable_reinforce() -> None:
    await run_part("rl")


async def test_rl_loop_recipe_datum_trains() -> None:
    """Its import needs the recipe's math-rl extra (sympy, pylatexenc, math-verify)."""
    await run_part("rl_loop")


async def test_supervised_datums_train_with_cross_entropy() -> None:
    await run_part("sl")


async def test_rl_trainer_runs_sync_streaming_and_async() -> None:
    await run_part("rl_main")


async def test_supervised_trainer_runs() -> None:
    await run_part("sl_main")
