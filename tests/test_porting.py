"""docs/porting.md's script, in both versions, against one simulator: the official SDK's (in a subprocess: it runs
its own event loop) and ours print the same losses, samples and checkpoint names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tinkex_trio.sim import SimConfig, sim_server_in_thread

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "porting.md"


def _script(first_line: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    (found,) = [b for b in blocks if b.startswith(first_line + "\n")]
    return found


def _run(code: str, base_url: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINKER_")}
    env.update(TINKER_BASE_URL=base_url, TINKER_API_KEY="tml-porting-guide-key", OPENBLAS_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def test_the_ported_script_prints_what_the_sdk_script_prints() -> None:
    with sim_server_in_thread(SimConfig(seed=0)) as server:
        theirs = _run(_script("# official SDK"), server.base_url)
        ours = _run(_script("# tinkex_trio"), server.base_url)
    assert len(ours) == 7 and ours[0].startswith("step 0 loss ")
    losses = [float(line.split()[-1]) for line in ours[:5]]
    assert losses[-1] < losses[0] / 2  # it learns
    assert ours == theirs
