import subprocess
import sys

import pytest

from tinkex_trio import __version__
from tinkex_trio.cli import main


def test_version_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"tinkex-trio {__version__}"


def test_python_dash_m() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tinkex_trio", "version"], check=True, capture_output=True, text=True
    ).stdout
    assert __version__ in out
