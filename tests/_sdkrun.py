"""Running one of the official SDK's scripts (tests/*_sdk_script.py) against a fresh simulator on 127.0.0.1: the SDK
runs its own event loop, so it runs in a subprocess and prints one ``RESULT <json>`` line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import trio

from tinkex_trio.sim import SimConfig, open_sim_server

RUN_LIMIT_S = 120.0


async def run_sdk_script(script: Path, spec: dict[str, Any], *, sim_seed: int) -> dict[str, Any]:
    """``script BASE_URL SPEC_JSON`` against a simulator seeded ``sim_seed``; its RESULT (asserting it succeeded)."""
    async with open_sim_server(SimConfig(seed=sim_seed), tls=False) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TINKER_")}
        env["TINKER_TELEMETRY"] = "0"
        with trio.fail_after(RUN_LIMIT_S):
            proc = await trio.run_process(
                [sys.executable, str(script), server.base_url, json.dumps(spec)],
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
