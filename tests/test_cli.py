"""The ``tinkex-trio`` command through its entry point (``python -m tinkex_trio`` in a subprocess): every subcommand
against the simulator, the ``--json`` schemas, bad arguments, an unreachable service, Ctrl-C, and one end-to-end
``bench`` run with every scenario."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import tinkex_trio as tx
from tinkex_trio import __version__
from tinkex_trio.cli import main
from tinkex_trio.sim import SimConfig, open_sim_server

REPO = Path(__file__).resolve().parent.parent
LIMIT_S = 120.0  # bounds a hang only; every command here takes seconds
DEMO_RUN = "sess-629f6fbed82c07cd:train:0"  # the embedded simulator's seeded demo run (SimConfig(seed=0))
DEMO_STATE = f"tinker://{DEMO_RUN}/weights/demo-state"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "TINKEX_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["OPENBLAS_NUM_THREADS"] = "1"
    return env


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tinkex_trio", *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=LIMIT_S,
        check=False,
    )


def ok_json(*args: str) -> Any:
    proc = cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "ExceptionGroup" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("(embedded simulator")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


# -- version ----------------------------------------------------------------------------------------------------------


def test_version_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"tinkex-trio {__version__}"


def test_version_flag_and_json() -> None:
    assert cli("--version").stdout.strip() == f"tinkex-trio {__version__}"
    data = ok_json("version")
    assert data["tinkex_trio"] == __version__ and set(data) == {"tinkex_trio", "python"}


# -- bad arguments, unreachable service -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("nope",),
        ("checkpoint",),
        ("checkpoint", "info"),
        ("demo", "--steps", "0"),
        ("bench", "--reps", "3"),
        ("checkpoint", "set-ttl", DEMO_STATE, "--ttl", "soon"),
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_arguments_exit_2_with_a_usage_line(args: tuple[str, ...]) -> None:
    proc = cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("usage: tinkex-trio"), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("checkpoint", "info", "not-a-path"), "not a checkpoint path"),
        (("checkpoint", "info", f"tinker://{DEMO_RUN}/weights/missing"), "no checkpoint"),
        (("checkpoint", "set-ttl", DEMO_STATE), "exactly one of --ttl"),
        (("checkpoint", "delete", DEMO_STATE), "--yes"),
        (("run", "info", "no-such-run"), "404"),
        (("session", "export-trace", "no-such-session"), "404"),
        (("bench", "--only", "nope"), "unknown scenario"),
        (("run", "list", "--base-url", "http://127.0.0.1:9"), "needs a key"),
        (("run", "list", "--api-key", "tml-x"), "--api-key needs --base-url"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_user_errors_are_one_line_and_exit_2(args: tuple[str, ...], needle: str) -> None:
    line = one_line_error(cli(*args), 2)
    assert line.startswith(f"tinkex-trio {args[0]}"), line
    assert needle in line, line


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", [("run", "list"), ("checkpoint", "list"), ("session", "info", "s1")])
def test_unreachable_base_url_is_one_clear_line(command: tuple[str, ...]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    line = one_line_error(cli(*command, "--base-url", url, "--api-key", "tml-secret-cli-key"), 1)
    assert line.startswith(f"tinkex-trio {' '.join(command[:2])}: cannot reach the service ({url})"), line
    assert "tml-secret-cli-key" not in line


# -- management commands ----------------------------------------------------------------------------------------------


def test_management_commands_on_the_embedded_simulator() -> None:
    checkpoints = ok_json("checkpoint", "list")
    assert {c["tinker_path"] for c in checkpoints} == {DEMO_STATE, f"tinker://{DEMO_RUN}/sampler_weights/demo-weights"}
    assert all({"checkpoint_id", "checkpoint_type", "time", "tinker_path"} <= set(c) for c in checkpoints)
    assert [c["tinker_path"] for c in ok_json("checkpoint", "list", "--run-id", DEMO_RUN)] == [
        c["tinker_path"] for c in checkpoints
    ]
    info = ok_json("checkpoint", "info", DEMO_STATE)
    assert info["checkpoint"]["tinker_path"] == DEMO_STATE and info["training_run"]["training_run_id"] == DEMO_RUN
    with_ttl = ok_json("checkpoint", "set-ttl", DEMO_STATE, "--ttl", "3600")
    assert with_ttl["expires_at"] is not None
    assert ok_json("checkpoint", "set-ttl", DEMO_STATE, "--remove").get("expires_at") is None
    assert ok_json("checkpoint", "delete", DEMO_STATE, "--yes") == {"deleted": [DEMO_STATE]}
    runs = ok_json("run", "list")
    assert [r["training_run_id"] for r in runs] == [DEMO_RUN] and runs[0]["base_model"]
    run = ok_json("run", "info", DEMO_RUN)
    assert run["training_run"]["training_run_id"] == DEMO_RUN and len(run["checkpoints"]) == 2
    sessions = ok_json("session", "list")
    assert sessions == [DEMO_RUN.split(":")[0]]
    session = ok_json("session", "info", sessions[0])
    assert session["training_run_ids"] == [DEMO_RUN] and session["session_id"] == sessions[0]


def test_session_export_trace_downloads_the_trace(tmp_path: Path) -> None:
    session_id = DEMO_RUN.split(":")[0]
    out = tmp_path / "traces" / "demo.json"
    done = ok_json("session", "export-trace", session_id, "--output", str(out))
    assert done == {"session_id": session_id, "destination": str(out), "file_size_bytes": out.stat().st_size}
    trace = json.loads(out.read_text())
    names = [e["name"] for e in trace["traceEvents"] if e["ph"] == "X"]
    assert names == ["CreateModel", "SaveWeights", "SaveWeightsForSampler"]  # the demo run's requests
    # Without --output: ./<session id>.json (the simulator's trace is JSON; the service's is .pftrace).
    proc = subprocess.run(
        [sys.executable, "-m", "tinkex_trio", "session", "export-trace", session_id],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=LIMIT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / f"{session_id}.json").stat().st_size > 0
    assert "size" in proc.stdout
    url_only = cli("session", "export-trace", session_id, "--url-only")
    assert url_only.returncode == 0, url_only.stderr
    (line,) = url_only.stdout.splitlines()
    assert line.startswith("http://127.0.0.1:") and "/api/v1/trace_exports/" in line


def test_table_output_without_json() -> None:
    proc = cli("checkpoint", "list")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["path", "type", "size", "created", "expires"]
    assert DEMO_STATE in proc.stdout


async def test_management_commands_against_a_service_at_base_url() -> None:
    """--base-url: a simulator this test runs (the service), with a run the test made; delete really deletes."""
    async with open_sim_server(SimConfig(seed=5)) as server:
        async with tx.open_session(api_key="tml-cli-owner", base_url=server.base_url) as session:
            trainer = await session.create_lora_training_client("meta-llama/Llama-3.2-1B", rank=4)
            path = await trainer.save_state("from-the-test")
        target = ("--base-url", server.base_url, "--api-key", "tml-cli-owner", "--json")

        async def run(*args: str) -> Any:
            with trio.fail_after(LIMIT_S):
                proc = await trio.run_process(
                    [sys.executable, "-m", "tinkex_trio", *args, *target],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    env=_env(),
                )
            assert proc.returncode == 0, proc.stderr.decode()
            return json.loads(proc.stdout)

        assert [c["tinker_path"] for c in await run("checkpoint", "list")] == [path]
        assert [r["training_run_id"] for r in await run("run", "list")] == [trainer.model_id]
        assert await run("checkpoint", "delete", path, "--yes") == {"deleted": [path]}
        assert await run("checkpoint", "list", "--run-id", trainer.model_id) == []


# -- demo -------------------------------------------------------------------------------------------------------------


def test_demo_shows_the_loss_falling(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    proc = cli("demo", "--steps", "20", "--plain", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    losses = data["losses"]
    assert len(losses) == 20 and losses[-1] < losses[0] / 10
    assert data["after"]["hits"] == len(data["after"]["tokens"]) > data["before"]["hits"]
    assert data["metrics"]["requests"] > 40 and data["metrics"]["breaker"] == "closed"
    assert "loss per token" in proc.stdout and "|" in proc.stdout  # the curve
    assert "after:" in proc.stdout and "metrics:" in proc.stdout


# -- bench ------------------------------------------------------------------------------------------------------------


def test_bench_end_to_end_every_scenario_reports_percentiles(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    plot = tmp_path / "bench.png"
    try:
        import matplotlib  # noqa: F401

        plotting = True
    except ImportError:
        plotting = False
    args = ["bench", "--quick", "--plain", "--json", str(out)] + (["--plot", str(plot)] if plotting else [])
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["interrupted"] is False and report["target"].startswith("embedded simulator")
    assert set(report["scenarios"]) == {"train", "sample", "batch", "breaker", "faults"}
    for name, scenario in report["scenarios"].items():
        assert scenario["complete"], name
        for row in scenario["rows"]:
            if row["ops"]:
                lat = row["latency_ms"]
                assert 0 < lat["p50"] <= lat["p99"], (name, row["side"])
    sides = {name: [r["side"] for r in s["rows"]] for name, s in report["scenarios"].items()}
    assert sides["batch"] == ["sequential", "batch", "window"]
    breaker = report["scenarios"]["breaker"]["facts"]
    assert breaker["time_to_open_s"] is not None and breaker["time_to_recover_s"] is not None
    assert breaker["refused_calls"] > 0 and breaker["refused_calls_that_reached_the_server"] == 0
    assert [t["to"] for t in breaker["transitions"]][:1] == ["open"]
    faults = report["scenarios"]["faults"]["facts"]
    assert faults["exactly_once"] and faults["faults_injected"] > 0
    if report["tinker"] is not None:
        for name in ("train", "sample"):
            assert sides[name] == ["sdk", "ours"]
            assert set(report["scenarios"][name]["ratios"]) >= {"throughput", "p50", "p99"}
        assert "ours/sdk" in proc.stdout
    table = proc.stdout
    for name in ("train", "sample", "batch", "breaker", "faults"):
        assert f"\n{name}" in table
    if plotting:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_plot_without_matplotlib_is_one_line_and_exit_2(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None; from tinkex_trio.cli import main; "
        f"sys.exit(main(['bench', '--tiny', '--plot', {str(tmp_path / 'x.png')!r}]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=LIMIT_S, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "tinkex-trio bench: --plot needs matplotlib: pip install 'tinkex_trio[plot]'"


def test_bench_ctrl_c_prints_partial_results() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinkex_trio", "bench", "--tiny", "--plain", "--only", "batch,faults"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=REPO,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.strip().startswith("batch sequential:"):  # the first task is done: interrupt the second
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=LIMIT_S)
    assert proc.returncode == 130, err
    assert "INTERRUPTED: partial results" in out
    assert "\nbatch      sequential" in out
    assert "Traceback" not in err
