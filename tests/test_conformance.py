"""Conformance: the official ``tinker`` SDK 0.38.0 runs a full train-and-sample loop against the simulator.

The SDK runs in a subprocess (tests/conformance_script.py, which prints its results as JSON) against
`open_sim_server` on 127.0.0.1: over plain HTTP, over HTTPS with the pyqwest transport, and over HTTPS with httpx's
own transport (``use_pyqwest_transport: false``). For HTTPS the subprocess trusts the simulator's private CA through
``SSL_CERT_FILE`` (protocol §12.1). Every run is bounded with ``trio.fail_after``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from tinkex_trio.sim import SimConfig, create_app, open_sim_server

pytestmark = pytest.mark.conformance

SCRIPT = Path(__file__).resolve().parent / "conformance_script.py"
RUN_LIMIT_S = 240.0
CHUNK_LEN = 2
NUM_DATUMS = 5  # in the script
CE_STEPS = 6
PPO_STEPS = 3
PATTERN = [5, 17, 42, 99, 7, 13, 21, 34, 55, 89]


class HeaderRecorder:
    """ASGI middleware counting the ``user-agent`` request headers."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.user_agents: Counter[str] = Counter()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {bytes(k).lower(): bytes(v).decode("latin-1") for k, v in scope["headers"]}
            self.user_agents[headers.get(b"user-agent", "")] += 1
        await self.app(scope, receive, send)


def _sdk_env(ca_file: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINKER_") and k != "SSL_CERT_FILE"}
    env["TINKER_TELEMETRY"] = "1"
    if ca_file is not None:
        env["SSL_CERT_FILE"] = str(ca_file)
    return env


@pytest.mark.parametrize(
    ("tls", "pyqwest"),
    [(False, True), (True, True), (True, False)],
    ids=["http", "https-pyqwest", "https-httpx"],
)
async def test_official_sdk_full_loop(tls: bool, pyqwest: bool) -> None:
    config = SimConfig(client_config={"fwdbwd_max_chunk_len": CHUNK_LEN, "use_pyqwest_transport": pyqwest})
    recorder = HeaderRecorder(create_app(config))
    async with open_sim_server(config, app=recorder, tls=tls, http2=True) as server:
        env = _sdk_env(server.ca_pem_path if tls else None)
        with trio.fail_after(RUN_LIMIT_S):
            proc = await trio.run_process(
                [sys.executable, str(SCRIPT), server.base_url],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=env,
            )
        stdout = proc.stdout.decode(errors="replace")
        stderr = proc.stderr.decode(errors="replace")
        lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
        assert lines, f"no result (rc={proc.returncode})\nstdout:\n{stdout[-4000:]}\nstderr:\n{stderr[-4000:]}"
        result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
        assert proc.returncode == 0 and result["step"] == "done", (
            f"failed at {result['step']}: {result.get('error')}\n{result.get('traceback', '')}\nstderr:\n"
            f"{stderr[-4000:]}"
        )
        stats = server.stats

    assert result["sdk_version"] == "0.38.0"
    assert "meta-llama/Llama-3.2-1B" in result["models"]
    model_id: str = result["model_id"]
    assert ":train:" in model_id
    assert result["info_model_name"] == "meta-llama/Llama-3.2-1B"

    # cross_entropy: every datum has an output of the right length, and the loss falls step after step.
    assert result["ce_outputs"] == NUM_DATUMS
    assert result["ce_output_len"] == len(PATTERN) - 1
    ce = result["ce_losses"]
    assert len(ce) == CE_STEPS and all(math.isfinite(x) and x > 0 for x in ce)
    assert all(b < a for a, b in itertools.pairwise(ce)), ce
    assert ce[-1] < 0.5 * ce[0]
    assert result["forward_loss"] < ce[-1]  # the forward after the last optim_step sees the improved model
    assert result["optim_metrics_type"] == "dict"

    # ppo (advantages +1 everywhere): the surrogate loss falls too.
    assert result["ppo_outputs"] == NUM_DATUMS
    ppo = result["ppo_losses"]
    assert len(ppo) == PPO_STEPS and ppo[-1] < ppo[0], ppo

    # Checkpoints: save_state → load_state → list_checkpoints through the RestClient.
    assert result["saved_path"] == f"tinker://{model_id}/weights/conformance-1"
    assert result["loaded"] in (result["saved_path"], "ok")
    assert "weights/conformance-1" in result["checkpoints"]
    assert result["saved_path"] in result["checkpoint_paths"]

    # Sampling from the trained weights: greedy continues the trained pattern; prompt logprobs as the SDK reports.
    assert result["sample_sequences"] == [PATTERN[4:10], PATTERN[4:10]]
    plp = result["prompt_logprobs"]
    assert len(plp) == 4 and plp[0] is None and all(x is not None and x <= 0 for x in plp[1:])
    clp = result["compute_logprobs"]
    assert len(clp) == len(PATTERN) and clp[0] is None
    assert all(x is not None and -1.0 < x <= 0 for x in clp[1:])  # the trained pattern is likely
    assert clp[1:4] == pytest.approx(plp[1:4], abs=1e-6)

    # What the server saw: chunked fwd/bwd (3 chunks per call), no server errors, the expected transport.
    calls = CE_STEPS + 1 + PPO_STEPS  # forward() goes to forward_backward too
    chunks = math.ceil(NUM_DATUMS / CHUNK_LEN)
    assert stats.count("forward_backward", 200) == calls * chunks
    assert stats.count("optim_step", 200) == CE_STEPS + PPO_STEPS
    assert stats.count("sessions/{id}/finish", 200) == 1
    assert stats.count("create_session", 200) == 1
    assert not [k for k in stats.requests if k[1] >= 500 or k[1] == 0], stats.requests
    if tls:
        assert set(stats.http_versions) == {"2"}, stats.http_versions
    else:
        assert set(stats.http_versions) == {"1.1"}, stats.http_versions
    # The transport the SDK was told to use (client/config itself always goes over plain httpx).
    if pyqwest:
        assert result["pyqwest_requests"] > 0.9 * stats.total_requests
    else:
        assert result["pyqwest_requests"] == 0
    assert recorder.user_agents["AsyncTinker/Python 0.38.0"] == stats.total_requests


async def test_official_sdk_against_tinkex_trio_serve_over_tls(tmp_path: Path) -> None:
    """``tinkex-trio serve --tls`` in one process serves the official SDK in another, then stops on Ctrl-C."""
    import signal
    import subprocess

    ca_file = tmp_path / "ca.pem"
    cmd = [sys.executable, "-m", "tinkex_trio", "serve", "--port", "0", "--tls", "--ca-file", str(ca_file)]
    server = await trio.lowlevel.open_process(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1")
    )
    assert server.stdout is not None
    try:
        with trio.fail_after(RUN_LIMIT_S):
            buf = bytearray()
            while b"Ctrl-C" not in buf:
                chunk = await server.stdout.receive_some(65536)
                assert chunk, f"serve exited early: {bytes(buf)!r}"
                buf += chunk
            url = next(
                w for line in buf.decode().splitlines() if "serving on" in line for w in line.split() if "://" in w
            )
            assert url.startswith("https://127.0.0.1:")
            sdk = await trio.run_process(
                [sys.executable, str(SCRIPT), url],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=_sdk_env(ca_file),
            )
            stdout = sdk.stdout.decode(errors="replace")
            lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
            assert lines, sdk.stderr.decode(errors="replace")[-4000:]
            result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
            assert sdk.returncode == 0 and result["step"] == "done", result.get("error")
            ce = result["ce_losses"]
            assert all(b < a for a, b in itertools.pairwise(ce)), ce
            assert result["sample_sequences"] == [PATTERN[4:10], PATTERN[4:10]]

            server.send_signal(signal.SIGINT)
            assert await server.wait() == 0
    finally:
        if server.returncode is None:
            server.kill()
            with trio.CancelScope(shield=True):
                await server.wait()
