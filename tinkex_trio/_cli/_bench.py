"""``tinkex-trio bench``: five scenarios against the embedded simulator (or a service), one table at the end.

* ``train``: pipelined training steps (``forward_backward`` and ``optim_step`` submitted back to back);
* ``sample``: M single-sample requests from C concurrent tasks;
* ``batch``: K forward_backward items sent one after another, by ``forward_backward_batch``, and by K concurrent
  calls through the batch window (``batching.coalesce``);
* ``breaker``: an outage of the simulator: how long until the breaker opens, how many calls it refuses without
  sending them, how long after the outage until it closes again;
* ``faults``: a training loop under injected 5xx, 429 and connection resets: every step applied exactly once.

``train`` and ``sample`` run each client in a child process of its own (`tinkex_trio._cli._child`, as
``benchmarks/bench_client.py`` does), ours and, when the official ``tinker`` SDK is importable, the SDK's: the
table shows their ratios. The other scenarios run in this process, next to the embedded simulator they steer
(outage, faults); against a real service (``--base-url``) ``breaker`` and ``faults`` are skipped.

Latency percentiles come from :class:`~tinkex_trio.Metrics` histograms: each operation's latency, and for our client
the per-request ``tinkex_request_duration_ms`` of its session. Ctrl-C stops the run and prints what was measured.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import metadata, util
from pathlib import Path
from typing import Any, Final

import trio

from tinkex_trio import types
from tinkex_trio._cli._common import Target, UsageError, open_target, quick_config
from tinkex_trio._cli._progress import Progress
from tinkex_trio._cli._workloads import BASE_MODEL, PROMPT, tokens_for
from tinkex_trio._config import Config
from tinkex_trio._metrics import Metrics
from tinkex_trio._session import Session, open_session
from tinkex_trio._telemetry import CIRCUIT_BREAKER_STATE_CHANGE, TelemetryEvent
from tinkex_trio._version import __version__
from tinkex_trio.errors import CircuitOpenError, TinkexError

__all__ = ["SCENARIOS", "BenchReport", "ChildInterrupted", "Row", "run_bench"]

SCENARIOS: Final = ("train", "sample", "batch", "breaker", "faults")
SIM_ONLY: Final = frozenset({"breaker", "faults"})
OP: Final = "op_ms"

# scenario -> size -> parameters. "tiny" is the test suite's (a hidden option): every scenario, a few seconds.
PARAMS: Final[dict[str, dict[str, dict[str, Any]]]] = {
    "train": {
        "full": {"datums": 8, "tokens": 128, "steps": 50, "warmup": 3, "reps": 3},
        "quick": {"datums": 8, "tokens": 128, "steps": 15, "warmup": 2, "reps": 1},
        "tiny": {"datums": 4, "tokens": 32, "steps": 4, "warmup": 1, "reps": 1},
    },
    "sample": {
        "full": {"samples": 2000, "concurrency": 200, "warmup": 200, "reps": 3},
        "quick": {"samples": 400, "concurrency": 100, "warmup": 50, "reps": 1},
        "tiny": {"samples": 40, "concurrency": 10, "warmup": 5, "reps": 1},
    },
    "batch": {
        "full": {"items": 16, "datums": 8, "tokens": 128, "reps": 10},
        "quick": {"items": 8, "datums": 8, "tokens": 128, "reps": 4},
        "tiny": {"items": 4, "datums": 2, "tokens": 16, "reps": 2},
    },
    "breaker": {
        "full": {"outage_s": 3.0, "timeout_s": 1.0, "threshold": 3, "pace_s": 0.02, "limit_s": 20.0},
        "quick": {"outage_s": 1.5, "timeout_s": 0.5, "threshold": 3, "pace_s": 0.02, "limit_s": 10.0},
        "tiny": {"outage_s": 0.6, "timeout_s": 0.25, "threshold": 2, "pace_s": 0.02, "limit_s": 10.0},
    },
    "faults": {
        "full": {"steps": 100, "datums": 4, "tokens": 64, "error_rate": 0.1, "reset_rate": 0.03},
        "quick": {"steps": 30, "datums": 4, "tokens": 64, "error_rate": 0.1, "reset_rate": 0.03},
        "tiny": {"steps": 8, "datums": 2, "tokens": 16, "error_rate": 0.1, "reset_rate": 0.03},
    },
}


@dataclass
class Row:
    """One line of the table: one side (client or mode) of one scenario."""

    scenario: str
    side: str
    unit: str
    ops: int = 0
    wall_s: float = 0.0
    latency_ms: dict[str, float] | None = None
    """The operations' latency histogram (a `Metrics.get_histogram` summary: count, p50, p95, p99, ...)."""
    request_latency_ms: dict[str, float] | None = None
    """Our client's per-request latency (``tinkex_request_duration_ms``), None for the SDK."""
    requests: float | None = None
    retries: float | None = None
    breaker_transitions: int | None = None
    latencies_ms: list[float] = field(default_factory=list[float])
    note: str = ""

    @property
    def ops_per_s(self) -> float | None:
        return self.ops / self.wall_s if self.wall_s > 0 and self.ops else None

    def summary(self) -> dict[str, float] | None:
        """The latency histogram's summary (computed from the raw latencies if the scenario did not finish)."""
        if self.latency_ms is None and self.latencies_ms:
            self.latency_ms = summarize(self.latencies_ms)
        return self.latency_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "unit": self.unit,
            "ops": self.ops,
            "wall_s": self.wall_s,
            "ops_per_s": self.ops_per_s,
            "latency_ms": self.summary(),
            "request_latency_ms": self.request_latency_ms,
            "requests": self.requests,
            "retries": self.retries,
            "breaker_transitions": self.breaker_transitions,
            "note": self.note,
            "latencies_ms": self.latencies_ms,
        }


@dataclass
class ScenarioResult:
    name: str
    params: dict[str, Any]
    rows: list[Row] = field(default_factory=list[Row])
    facts: dict[str, Any] = field(default_factory=dict[str, Any])
    """Scenario-specific figures (time to open, exactly-once check, ...)."""
    ratios: dict[str, float] = field(default_factory=dict[str, float])
    complete: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "complete": self.complete,
            "rows": [r.to_json() for r in self.rows],
            "facts": self.facts,
            "ratios": self.ratios,
        }


@dataclass
class BenchReport:
    target: str
    size: str
    sdk: str | None
    scenarios: dict[str, ScenarioResult] = field(default_factory=dict[str, ScenarioResult])
    skipped: dict[str, str] = field(default_factory=dict[str, str])
    interrupted: bool = False
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "tinkex_trio": __version__,
            "tinker": self.sdk,
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "target": self.target,
            "size": self.size,
            "interrupted": self.interrupted,
            "elapsed_s": self.elapsed_s,
            "skipped": self.skipped,
            "scenarios": {name: s.to_json() for name, s in self.scenarios.items()},
        }


def sdk_version() -> str | None:
    """The installed official SDK's version, or None when ``tinker`` cannot be imported."""
    if util.find_spec("tinker") is None:
        return None
    try:
        return metadata.version("tinker")
    except metadata.PackageNotFoundError:
        return "unknown"


def summarize(latencies_ms: list[float]) -> dict[str, float] | None:
    """The `Metrics` histogram summary of ``latencies_ms`` (None when empty)."""
    metrics = Metrics()
    for value in latencies_ms:
        metrics.record_histogram(OP, value)
    return metrics.get_histogram(OP)


# -- child processes (train, sample) ------------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    """This environment without TINKER_* / TINKEX_* settings, importing the same tinkex_trio as this process."""
    import tinkex_trio

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "TINKEX_")) and k != "SSL_CERT_FILE"}
    root = str(Path(tinkex_trio.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    buffer = b""
    while True:
        chunk = await stream.receive_some()
        if not chunk:
            if buffer:
                yield buffer.decode(errors="replace")
            return
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line.decode(errors="replace")


async def run_child(
    side: str, workload: str, params: dict[str, Any], target: Target, on_progress: Callable[[int, int], None]
) -> dict[str, Any]:
    """One side of one workload in a child process; its ``PROGRESS`` lines go to ``on_progress``."""
    import json

    server_pid = os.getpid() if target.embedded else 0
    child_params = {**params, "api_key": target.api_key}
    cmd = [sys.executable, "-m", "tinkex_trio._cli._child", "--side", side, "--workload", workload]
    cmd += ["--url", target.base_url, "--server-pid", str(server_pid), "--params", json.dumps(child_params)]
    cmd += ["--progress"]
    result: dict[str, Any] | None = None
    err = bytearray()
    proc = await trio.lowlevel.open_process(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=_child_env()
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        stderr = proc.stderr

        async def drain() -> None:
            while chunk := await stderr.receive_some():
                err.extend(chunk[-65536:])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            async for line in _lines(proc.stdout):
                if line.startswith("PROGRESS "):
                    done, total = (int(x) for x in line.split()[1:3])
                    on_progress(done, total)
                elif line.startswith("RESULT "):
                    result = json.loads(line[len("RESULT ") :])
        code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
    if code in (130, -2):  # SIGINT reached the child too (a terminal's Ctrl-C goes to the whole group)
        raise ChildInterrupted(f"the {side} side of {workload} was interrupted")
    if code != 0 or result is None:
        tail = bytes(err).decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise TinkexError(f"the {side} side of {workload} failed (exit {code}): {tail[0]}")
    return result


class ChildInterrupted(TinkexError):
    """A child process ended by Ctrl-C."""


def _row_from_child(scenario: str, side: str, unit: str, samples: list[dict[str, Any]], lat: list[float]) -> Row:
    ops = sum(int(s["ops"]) for s in samples)
    row = Row(scenario, side, unit, ops=ops, wall_s=sum(float(s["wall_s"]) for s in samples))
    row.latencies_ms = lat
    row.latency_ms = summarize(lat)
    if side != "sdk":
        row.requests = sum(float(s.get("requests") or 0) for s in samples)
        row.retries = sum(float(s.get("retries") or 0) for s in samples)
        row.breaker_transitions = sum(int(s.get("breaker_transitions") or 0) for s in samples)
        row.request_latency_ms = samples[-1].get("request_latency_ms")
    row.note = f"client cpu {sum(float(s['cpu_s']) for s in samples) / max(ops, 1) * 1e6:.0f} us/{unit[:-1]}"
    return row


async def scenario_side_by_side(
    name: str, target: Target, params: dict[str, Any], result: ScenarioResult, progress: Progress, with_sdk: bool
) -> None:
    """``train`` or ``sample``: ours (and the SDK) in child processes, interleaved over ``reps``."""
    workload, unit = ("train_small", "steps") if name == "train" else ("sample_c", "samples")
    sides = ("sdk", "ours") if with_sdk else ("ours",)
    samples: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    latencies: dict[str, list[float]] = {side: [] for side in sides}
    reps = int(params["reps"])
    per_rep = int(params["steps"] if name == "train" else params["samples"])
    for rep in range(reps):
        order = sides if rep % 2 == 0 else tuple(reversed(sides))
        for side in order:
            task = progress.task(f"{name} {side}" + (f" rep {rep + 1}/{reps}" if reps > 1 else ""), per_rep)
            sample = await run_child(side, workload, params, target, task.update)
            task.done()
            samples[side].append(sample)
            latencies[side].extend(_child_latencies(sample))
            result.rows = [_row_from_child(name, s, unit, samples[s], latencies[s]) for s in sides if samples[s]]
    rows = {r.side: r for r in result.rows}
    if "sdk" in rows and "ours" in rows:
        result.ratios = _ratios(rows["ours"], rows["sdk"])
    result.complete = True


def _child_latencies(sample: dict[str, Any]) -> list[float]:
    return [float(v) for v in sample.get("latencies_ms", [])]


def _ratios(ours: Row, base: Row) -> dict[str, float]:
    """ours / base: throughput (above 1 is better for ours) and latency percentiles (below 1 is better)."""
    out: dict[str, float] = {}
    if ours.ops_per_s and base.ops_per_s:
        out["throughput"] = ours.ops_per_s / base.ops_per_s
    for q in ("p50", "p95", "p99"):
        a = (ours.latency_ms or {}).get(q)
        b = (base.latency_ms or {}).get(q)
        if a and b:
            out[q] = a / b
    return out


# -- in-process scenarios -----------------------------------------------------------------------------------------


class _Watch:
    """The session's retries and breaker transitions during a scenario, and its operations' latencies."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.retries0 = session.metrics.counter_total("tinkex_retries_total")
        self.requests0 = session.metrics.counter_total("tinkex_requests_total")
        self.transitions: list[tuple[float, str, str]] = []
        session.telemetry.attach(f"tinkex_trio.bench.{id(self)}", CIRCUIT_BREAKER_STATE_CHANGE, self._on_transition)

    def _on_transition(self, event: TelemetryEvent) -> None:
        self.transitions.append((event.time, str(event.metadata.get("from")), str(event.metadata.get("to"))))

    def fill(self, row: Row) -> Row:
        metrics = self.session.metrics
        row.retries = metrics.counter_total("tinkex_retries_total") - self.retries0
        row.requests = metrics.counter_total("tinkex_requests_total") - self.requests0
        row.breaker_transitions = len(self.transitions)
        row.request_latency_ms = metrics.summary("tinkex_request_duration_ms")
        row.latency_ms = summarize(row.latencies_ms)
        return row


def _data(params: dict[str, Any]) -> list[types.Datum]:
    return [
        types.datum(toks[:-1], target_tokens=toks[1:], weights=[1.0] * (len(toks) - 1))
        for toks in (tokens_for(i, int(params["tokens"])) for i in range(int(params["datums"])))
    ]


@asynccontextmanager
async def _session(target: Target, api_key: str | None = None, **overrides: Any) -> AsyncGenerator[Session]:
    config: Config = quick_config(target, **overrides)
    if api_key is not None:
        config = config.replace(api_key=api_key)
    async with open_session(config=config, tags=("tinkex-trio-bench",)) as session:
        yield session


async def scenario_batch(target: Target, params: dict[str, Any], result: ScenarioResult, progress: Progress) -> None:
    """K items sequentially, by forward_backward_batch, and through the batch window; ``reps`` times each."""
    data = _data(params)
    k, reps = int(params["items"]), int(params["reps"])
    items = [(data, "cross_entropy", None)] * k
    retry = {"retry": {"max_retries": 10}}
    for mode in ("sequential", "batch", "window"):
        overrides: dict[str, Any] = dict(retry)
        if mode == "window":
            overrides["batching"] = {"coalesce": True}
        async with _session(target, **overrides) as session:
            trainer = await session.create_lora_training_client(BASE_MODEL, rank=8, seed=0)
            watch = _Watch(session)
            row = Row("batch", mode, "runs", note=f"{k} items of {params['datums']}x{params['tokens']}")
            result.rows.append(row)
            task = progress.task(f"batch {mode}", reps)
            for rep in range(reps):
                t0 = time.perf_counter()
                if mode == "sequential":
                    for item in items:
                        await trainer.forward_backward(*item)
                elif mode == "batch":
                    await trainer.forward_backward_batch(items)
                else:
                    async with trio.open_nursery() as nursery:
                        for item in items:
                            nursery.start_soon(trainer.forward_backward, *item)
                dt = time.perf_counter() - t0
                row.ops, row.wall_s = row.ops + 1, row.wall_s + dt
                row.latencies_ms.append(dt * 1e3)
                task.update(rep + 1, reps)
            task.done()
            watch.fill(row)
            if row.requests is not None and reps:
                row.note += f", {row.requests / reps:.1f} requests/run"
    rows = {r.side: r for r in result.rows}
    for mode in ("batch", "window"):
        ratios = _ratios(rows[mode], rows["sequential"])
        result.ratios.update({f"{mode}_{key}": value for key, value in ratios.items()})
    result.complete = True


async def scenario_breaker(target: Target, params: dict[str, Any], result: ScenarioResult, progress: Progress) -> None:
    """An outage: time to open, calls refused without being sent, time to close after the outage ends."""
    server = target.server
    threshold, timeout_s = int(params["threshold"]), float(params["timeout_s"])
    outage_s, pace_s = float(params["outage_s"]), float(params["pace_s"])
    overrides = {
        "circuit_breaker": {"failure_threshold": threshold, "timeout_s": timeout_s},
        "retry": {"max_retries": 1, "base_delay_s": 0.02, "max_delay_s": 0.05, "retry_budget_s": 5.0},
    }
    # A key of its own: the breaker registry is per (base_url, key), so this run starts from a closed breaker.
    async with _session(target, api_key=f"tml-bench-breaker-{secrets.token_hex(6)}", **overrides) as session:
        sampler = await session.create_sampling_client(base_model=BASE_MODEL)
        prompt = types.ModelInput.from_ints(list(PROMPT[:4]))
        sp = types.SamplingParams(max_tokens=2, temperature=0.0)
        await sampler.sample(prompt, 1, sp)
        watch = _Watch(session)
        rows = {k: Row("breaker", k, "calls") for k in ("ok", "failed", "trial", "refused")}
        result.rows.extend(rows.values())
        task = progress.task("breaker outage", None)
        t0 = trio.current_time()
        server.start_outage(outage_s)
        outage_end = t0 + outage_s
        timeline: list[dict[str, Any]] = []
        with trio.move_on_after(float(params["limit_s"])):
            while True:
                sent0 = _asample_requests(server)
                started = trio.current_time()
                try:
                    await sampler.sample(prompt, 1, sp)
                    kind = "ok"
                except CircuitOpenError:
                    # Refused before sending, or a half-open trial that was sent, failed and re-opened the breaker.
                    kind = "refused" if _asample_requests(server) == sent0 else "trial"
                except TinkexError:
                    kind = "failed"
                now = trio.current_time()
                row = rows[kind]
                row.ops, row.wall_s = row.ops + 1, row.wall_s + (now - started)
                row.latencies_ms.append((now - started) * 1e3)
                timeline.append({"t_s": started - t0, "outcome": kind, "ms": (now - started) * 1e3})
                task.status(f"{session.breaker.state.value}, {len(timeline)} calls")
                if now > outage_end and watch.transitions and watch.transitions[-1][2] == "closed":
                    break
                await trio.sleep(pace_s)
        task.done()
        for row in rows.values():
            watch.fill(row)
            row.breaker_transitions = len(watch.transitions)
        opened = next((t for t, _, new in watch.transitions if new == "open"), None)
        closed = next((t for t, _, new in watch.transitions if new == "closed" and t >= outage_end), None)
        result.facts = {
            "outage_s": outage_s,
            "failure_threshold": threshold,
            "timeout_s": timeout_s,
            "time_to_open_s": None if opened is None else opened - t0,
            "refused_calls": rows["refused"].ops,
            "refused_calls_that_reached_the_server": 0,
            "failed_trials": rows["trial"].ops,
            "time_to_recover_s": None if closed is None else closed - outage_end,
            "transitions": [{"t_s": t - t0, "from": old, "to": new} for t, old, new in watch.transitions],
            "calls": timeline,
        }
        rows["refused"].note = "CircuitOpenError, nothing sent"
        rows["trial"].note = "half-open trial sent during the outage"
        if opened is not None:
            rows["failed"].note = f"opened after {opened - t0:.2f} s"
        if closed is not None:
            rows["ok"].note = f"closed {closed - outage_end:.2f} s after the outage"
    result.complete = closed is not None


def _asample_requests(server: Any) -> int:
    requests: dict[tuple[str, int], int] = server.stats.requests
    return sum(n for (endpoint, _status), n in requests.items() if endpoint == "asample")


async def scenario_faults(target: Target, params: dict[str, Any], result: ScenarioResult, progress: Progress) -> None:
    """A pipelined training loop under injected 5xx / 429 / resets; checks the simulator applied each step once."""
    from tinkex_trio.sim._faults import FaultConfig

    server = target.server
    steps, rate = int(params["steps"]), float(params["error_rate"])
    data = _data(params)
    adam = types.AdamParams(learning_rate=1e-3)
    overrides = {"retry": {"max_retries": 20, "base_delay_s": 0.01, "max_delay_s": 0.05, "retry_budget_s": 60.0}}
    # A key of its own: the failures below must not open the breaker other scenarios share.
    async with _session(target, api_key=f"tml-bench-faults-{secrets.token_hex(6)}", **overrides) as session:
        trainer = await session.create_lora_training_client(BASE_MODEL, rank=8, seed=0)
        watch = _Watch(session)
        row = Row("faults", "ours", "steps", note="")
        result.rows.append(row)
        previous = server.config.faults
        faults0 = sum(server.stats.faults.values())
        server.config.faults = FaultConfig(
            seed=previous.seed,
            error_rates={500: rate / 2, 503: rate / 2, 429: rate / 2},
            reset_rate=float(params["reset_rate"]),
            reset_after_rate=float(params["reset_rate"]),
        )
        task = progress.task("faults steps", steps)
        try:
            for i in range(steps):
                t0 = time.perf_counter()
                fwdbwd = await trainer.submit_forward_backward(data, "cross_entropy")
                optim = await trainer.submit_optim_step(adam)
                await fwdbwd.result()
                await optim.result()
                dt = time.perf_counter() - t0
                row.ops, row.wall_s = row.ops + 1, row.wall_s + dt
                row.latencies_ms.append(dt * 1e3)
                task.update(i + 1, steps)
        finally:
            server.config.faults = previous
            task.done()
            record = server.app.state.models.get(trainer.model_id)
            injected = sum(server.stats.faults.values()) - faults0
            watch.fill(row)
            applied = None if record is None else record.steps_applied
            fb_applied = None if record is None else record.forward_backward_applied
            seq_ids: list[int] = [] if record is None else list(record.applied_seq_ids)
            once = applied == row.ops and fb_applied == row.ops and len(seq_ids) == len(set(seq_ids))
            result.facts = {
                "faults_injected": injected,
                "steps_done": row.ops,
                "optim_steps_applied": applied,
                "forward_backward_applied": fb_applied,
                "exactly_once": once,
            }
            row.note = f"{injected} faults injected; {applied}/{row.ops} steps applied " + (
                "exactly once" if once else "NOT exactly once"
            )
    result.complete = bool(result.facts.get("exactly_once"))


# -- the run --------------------------------------------------------------------------------------------------------


def select(only: str | None, target_embedded: bool) -> tuple[list[str], dict[str, str]]:
    """The scenarios to run (``--only``), and those skipped with the reason."""
    names: list[str] = list(SCENARIOS)
    if only:
        names = [n.strip() for n in only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            raise UsageError(f"--only: unknown scenario {unknown[0]!r} (known: {', '.join(SCENARIOS)})")
    skipped: dict[str, str] = {}
    if not target_embedded:
        for name in [n for n in names if n in SIM_ONLY]:
            skipped[name] = "needs the embedded simulator (it injects the outage and the faults)"
            names.remove(name)
    return names, skipped


async def run_bench(
    args: argparse.Namespace, report: BenchReport, progress: Progress, stop: trio.CancelScope | None = None
) -> None:
    """Run the selected scenarios into ``report`` (filled as they go: on cancellation it holds what was measured).

    ``stop`` cancels the scenarios only: the embedded simulator keeps serving while their sessions finish."""
    started = time.perf_counter()
    size = report.size
    with_sdk = report.sdk is not None
    try:
        async with open_target(args) as target:
            report.target = target.describe()
            names, report.skipped = select(args.only, target.embedded)
            if not with_sdk:
                reason = "--no-sdk" if args.no_sdk else "the official tinker SDK is not installed"
                report.skipped["sdk"] = reason
            # The scenarios inject failures on purpose: the table reports them, the resilience log would only repeat it.
            logging.getLogger("tinkex_trio.resilience").setLevel(logging.ERROR)
            with stop if stop is not None else trio.CancelScope():
                await _run_scenarios(names, size, target, report, progress, with_sdk)
    finally:
        report.elapsed_s = round(time.perf_counter() - started, 2)


async def _run_scenarios(
    names: list[str], size: str, target: Target, report: BenchReport, progress: Progress, with_sdk: bool
) -> None:
    for name in names:
        params = dict(PARAMS[name][size])
        result = ScenarioResult(name, params)
        report.scenarios[name] = result
        if name in ("train", "sample"):
            await scenario_side_by_side(name, target, params, result, progress, with_sdk)
        elif name == "batch":
            await scenario_batch(target, params, result, progress)
        elif name == "breaker":
            await scenario_breaker(target, params, result, progress)
        else:
            await scenario_faults(target, params, result, progress)


def fmt_ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
