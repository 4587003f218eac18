"""Every snippet of the README runs as written: each python block in a fresh interpreter, the faults.toml block through
FaultConfig, and the quick start's two commands are the ones .ci/run and a new user type."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tinkex_trio.sim import FaultConfig

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
TEXT = README.read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)


def _env() -> dict[str, str]:
    # As a new user's shell: no TINKER_* settings, this checkout importable.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "TINKEX_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["OPENBLAS_NUM_THREADS"] = "1"
    return env


def test_the_readme_has_its_snippets() -> None:
    assert len(PYTHON_BLOCKS) >= 3
    assert any("open_session" in block for block in PYTHON_BLOCKS)
    assert any("Config.create" in block for block in PYTHON_BLOCKS)


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)), ids=lambda i: f"python-block-{i + 1}")
def test_python_block_runs_as_written(index: int) -> None:
    code = PYTHON_BLOCKS[index]
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120, check=False
    )
    assert proc.returncode == 0, f"README python block {index + 1} failed:\n{code}\n{proc.stderr[-3000:]}"
    if "trio.run(main)" in code:
        lines = proc.stdout.splitlines()
        assert float(lines[0]) > 0  # the printed loss:sum
        assert any(":train:" in line for line in lines[1:])  # the training run listed through session.rest


def test_faults_toml_block_is_a_valid_fault_config(tmp_path: Path) -> None:
    (block,) = re.findall(r"```toml\n(.*?)```", TEXT, flags=re.S)
    path = tmp_path / "faults.toml"
    path.write_text(block)
    faults = FaultConfig.from_toml(str(path))
    assert faults.seed == 7 and faults.error_rates == {503: 0.1, 429: 0.05}


def test_quick_start_commands() -> None:
    commands = re.findall(r"```sh\n(.*?)```", TEXT[TEXT.index("## Quick start") :], flags=re.S)[:2]
    assert commands[0].strip() == "python -m pip install -e '.[sim]' && tinkex-trio bench --quick"
    assert commands[1].strip() == "python -m pip install -e '.[dev]' && python -m pytest"
    ci = (REPO / ".ci" / "run").read_text() if (REPO / ".ci" / "run").exists() else None
    if ci is not None:
        assert ".[dev]" in ci


def test_readme_and_docs_stay_inside_the_repository() -> None:
    for path in [README, *(REPO / "docs").glob("*.md")]:
        text = path.read_text()
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            assert (path.parent / target).resolve().is_relative_to(REPO), f"{path.name} links outside: {target}"
        assert "../shared" not in text, path.name
