"""The example scripts run as users run them -- ``python examples/<name>.py``, no arguments -- and learn.

Each starts its own simulator on 127.0.0.1 in a subprocess; we parse what it prints.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from pathlib import Path

import pytest
import trio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RUN_LIMIT_S = 120.0  # each example takes a few seconds; this bound only stops a hang


async def run_example(name: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINKER_")}
    env["OPENBLAS_NUM_THREADS"] = "1"
    with trio.fail_after(RUN_LIMIT_S):
        proc = await trio.run_process(
            [sys.executable, str(EXAMPLES / name), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    stdout = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{stdout[-3000:]}\n{proc.stderr.decode()[-3000:]}"
    return stdout


async def test_sl_loop_loss_falls() -> None:
    out = await run_example("sl_loop.py")

    losses = [float(m[2]) for m in re.finditer(r"^step\s+(\d+)\s+loss\s+([0-9.]+)$", out, re.MULTILINE)]
    assert len(losses) == 25, out
    assert losses[-1] < losses[0] / 10, losses
    assert sum(b < a for a, b in itertools.pairwise(losses)) >= len(losses) - 3, losses
    sampled = re.search(r"\((\d+)/(\d+) follow the pattern\)", out)
    assert sampled is not None, out
    assert int(sampled[1]) == int(sampled[2]) > 0


async def test_rl_loop_reward_rises() -> None:
    out = await run_example("rl_loop.py")

    rewards = [float(m[2]) for m in re.finditer(r"^iter\s+(\d+)\s+reward\s+([0-9.]+)", out, re.MULTILINE)]
    assert len(rewards) == 20, out
    assert max(rewards[:3]) < 0.2, rewards
    assert min(rewards[-3:]) > 0.8, rewards


async def test_rl_loop_with_ppo() -> None:
    out = await run_example("rl_loop.py", "--loss", "ppo", "--iterations", "15")

    rewards = [float(m[2]) for m in re.finditer(r"^iter\s+(\d+)\s+reward\s+([0-9.]+)", out, re.MULTILINE)]
    assert len(rewards) == 15, out
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.5, rewards


async def test_blocking_script_loss_falls() -> None:
    out = await run_example("blocking_script.py", "--steps", "12")
    losses = [float(m[1]) for m in re.finditer(r"^step\s+\d+\s+loss\s+([0-9.]+)$", out, re.MULTILINE)]
    assert len(losses) == 12, out
    assert losses[-1] < losses[0] / 10, losses


async def test_thread_pool_scoring_scores_every_sample_from_32_threads() -> None:
    out = await run_example("thread_pool_scoring.py", "--threads", "32", "--samples", "64")
    found = re.search(r"^(\d+) samples scored by (\d+) threads", out, re.MULTILINE)
    assert found is not None and (found[1], found[2]) == ("64", "32"), out
    assert re.search(r"request latency: p50 [0-9.]+ ms  p99 [0-9.]+ ms", out), out


async def test_multiprocess_metrics_merge_exactly() -> None:
    out = await run_example("multiprocess_metrics.py", "--workers", "4", "--samples", "5")
    workers = [int(m[1]) for m in re.finditer(r"^worker \d: (\d+) requests", out, re.MULTILINE)]
    merged = re.search(r"^merged:\s+(\d+) requests", out, re.MULTILINE)
    assert len(workers) == 4 and merged is not None, out
    assert int(merged[1]) == sum(workers) > 0, out


async def test_ray_rollouts_on_a_local_ray() -> None:
    try:
        import ray  # noqa: F401  # pyright: ignore[reportMissingImports, reportUnusedImport]
    except ImportError:
        pytest.skip("the ray extra is not installed (pip install -e '.[ray]', or: nox -s ray)")
    out = await run_example("ray_rollouts.py", "--actors", "2", "--iterations", "2", "--rollouts", "4")
    assert len(re.findall(r"^iteration \d  rollouts 8  mean reward [0-9.]+$", out, re.MULTILINE)) == 2, out
    merged = re.search(r"^actors' requests: (\d+), p50 [0-9.]+ ms, p99 [0-9.]+ ms \(merged exactly from 2", out, re.M)
    assert merged is not None and int(merged[1]) > 0, out


async def test_batch_training_cuts_the_wall_time() -> None:
    out = await run_example("batch_training.py", "--items", "12", "--latency-ms", "20", "--partial")
    rows = {
        m[1]: (float(m[2]), int(m[3]), float(m[4]))
        for m in re.finditer(
            r"^(sequential|forward_backward_batch|window)\s+([0-9.]+) s\s+(\d+) requests\s+loss ([0-9.]+)", out, re.M
        )
    }
    assert set(rows) == {"sequential", "forward_backward_batch", "window"}, out
    assert rows["sequential"][1] == 12 and rows["forward_backward_batch"][1] < 12 and rows["window"][1] < 12, out
    # The same work: the same loss; fewer round trips: less wall time (12 x 20 ms of latency at least, sequentially).
    assert len({round(r[2], 3) for r in rows.values()}) == 1, out
    assert rows["forward_backward_batch"][0] < rows["sequential"][0] / 2, out
    assert rows["window"][0] < rows["sequential"][0] / 2, out
    assert re.search(r"^  item 2: failed: RequestFailedError$", out, re.M), out
    assert len(re.findall(r"^  item \d: applied$", out, re.M)) == 3, out


async def test_breaker_demo_opens_fails_fast_and_recovers() -> None:
    out = await run_example("breaker_demo.py", "--outage-s", "1.5", "--timeout-s", "0.5")
    transitions = re.findall(r"breaker (\w+) -> (\w+) \((\w+)", out)
    assert transitions[0] == ("closed", "open", "failure_threshold"), out
    assert ("open", "half_open", "timeout_elapsed") in transitions, out
    assert ("half_open", "closed", "trial_succeeded") in transitions, out
    assert transitions[-2:] == [("closed", "open", "forced_open"), ("open", "closed", "reset")], out
    assert len(re.findall(r"^call \d\s+CircuitOpenError, failed fast", out, re.M)) == 2, out
    assert re.search(r"^forced\s+CircuitOpenError, failed fast \(retry_after inf s\)", out, re.M), out
    assert re.search(r"^reset\s+ok", out, re.M), out
    assert "breaker state: closed" in out, out


def test_ctrl_c_ends_an_example_with_one_line() -> None:
    """SIGINT mid-run (as Ctrl-C sends it): exit status 130 and one line on stderr, no traceback or group."""
    import signal
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("TINKER_")}
    env["OPENBLAS_NUM_THREADS"] = "1"
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "sl_loop.py"), "--steps", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if re.match(r"step\s+3\s", line):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=RUN_LIMIT_S)
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted", err
