"""The README's usage example runs as written against the simulator (over TLS loopback)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import trio

import tinkex_trio as tx
from tinkex_trio.sim import SimConfig, open_sim_server

README = Path(__file__).resolve().parent.parent / "README.md"


def _usage_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    code: str = blocks[0]
    assert code.rstrip().endswith("trio.run(main)")
    return code.rstrip().removesuffix("trio.run(main)")


async def test_readme_usage_example_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(_usage_block(), str(README), "exec"), namespace)
    async with open_sim_server(SimConfig(seed=1), tls=True) as server:
        monkeypatch.setenv("TINKER_API_KEY", "tml-readme-key")
        monkeypatch.setenv("TINKER_BASE_URL", server.base_url)
        # the example relies on the environment for key and URL; the CA comes from the simulator
        original = tx.open_session

        def with_ca(*args: Any, **kwargs: Any) -> Any:
            return original(*args, ssl_context=server.client_ssl_context(), **kwargs)

        public = {n: getattr(tx, n) for n in tx.__all__}
        namespace["tx"] = type("tx", (), {**public, "open_session": staticmethod(with_ca)})
        with trio.fail_after(60):
            await namespace["main"]()
    out = capsys.readouterr().out
    assert float(out.splitlines()[0]) > 0  # the printed loss:sum
    assert server.app.state.models  # the example created a model on this server
