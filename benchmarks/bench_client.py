"""Client benchmark: the official ``tinker`` SDK (asyncio) and tinkex_trio (trio), side by side, on one simulator.

Run with ``python benchmarks/bench_client.py [--quick] [--reps N] [--only train,sample,...]``. Prints tables of
medians and ratios and writes JSON to ``benchmarks/results/bench_client-<timestamp>.json``.

The simulator runs in a subprocess (``python -m tinkex_trio serve --port 0``, plain HTTP on 127.0.0.1, no faults:
``serve`` has no knob for the service time, so each request keeps the simulator's default 2 ms plus the numpy work).
Every sample of every workload runs in a fresh child process (``python -m tinkex_trio._cli._child``, shared with
``tinkex-trio bench``; the workloads live in ``tinkex_trio/_cli/_workloads.py``), so the SDK's asyncio
and its background thread never share a process with trio, and a side's imports, connection pool and caches do not
leak into the other's numbers. The child sets up (session, model, sampler, data), warms up, then measures the
workload only: wall time (``perf_counter``), client CPU (``time.process_time``, all threads; user/system from
``getrusage``), per-operation latency, and the simulator's CPU over the same interval (from ``/proc/<pid>/stat``).
The repetitions are interleaved: rep 1 runs SDK then ours, rep 2 ours then SDK, and so on, so a drift of the machine
(or of the long-lived simulator) hits both sides alike.

Workloads (``--only`` takes these names, or ``train`` / ``sample`` / ``micro`` for groups):

* ``train_small``: N pipelined steps (``forward_backward`` then ``optim_step`` submitted back to back, then both
  awaited) of 8 datums x 128 tokens. One op = one step.
* ``train_large``: the same with 256 datums x 1024 tokens, few steps: encoding cost dominates.
* ``sample_c200`` / ``sample_c2000``: M single-sample requests (16-token prompt, 16 tokens out) from 200 / 2,000
  concurrent tasks on one sampling client. One op = one sample.
* ``fwdbwd_batch`` (ours only): K forward_backward items, by ``forward_backward_batch`` (merged into few requests)
  vs K sequential ``forward_backward`` calls; the request count comes from the session's metrics.
* ``idle``: an open session with a training client, doing nothing for S seconds (heartbeats only).
* ``micro`` (in this process, ``timeit``): circuit breaker bookkeeping (closed path: admit + record success; open
  path: rejection) of ours vs pybreaker, aiobreaker, purgatory, circuitbreaker; histogram record cost of our
  ``Metrics.record_histogram`` vs raw ``HdrHistogram.record_value`` vs ``prometheus_client`` ``Histogram.observe``.
  A library that is not installed is skipped with a line saying so (``pip install tinkex_trio[bench]``).

How to read it: ``cpu/op`` is the client's CPU per step or per sample, the figure to drive down; ``ratio`` is
ours / SDK (or batch / sequential), below 1 is better for ours. Wall time and samples/s are bounded by the simulator,
which runs on the same machine (``srv cpu/op`` shows what it spent), so they compare the clients only as far as the
server keeps up; latency percentiles are per op within one sample, medians across reps. With few CPUs the client and
the simulator compete for them: compare ratios, not absolute numbers, across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import pstats
import signal
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from _report import REPO, RESULTS_DIR, write_report  # benchmarks/ is on sys.path when run

# The workloads and the child process that runs one side of one are shared with `tinkex-trio bench`.

CHILD_TIMEOUT_S = 600.0

# name -> (sides, full parameters, --quick parameters)
WORKLOADS: dict[str, tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]] = {
    "train_small": (
        ("sdk", "ours"),
        {"datums": 8, "tokens": 128, "steps": 50, "warmup": 3},
        {"datums": 8, "tokens": 128, "steps": 10, "warmup": 2},
    ),
    "train_large": (
        ("sdk", "ours"),
        {"datums": 256, "tokens": 1024, "steps": 3, "warmup": 1},
        {"datums": 256, "tokens": 1024, "steps": 1, "warmup": 0},
    ),
    "sample_c200": (
        ("sdk", "ours"),
        {"samples": 1000, "concurrency": 200, "warmup": 200},
        {"samples": 400, "concurrency": 200, "warmup": 50},
    ),
    "sample_c2000": (
        ("sdk", "ours"),
        {"samples": 2000, "concurrency": 2000, "warmup": 100},
        {"samples": 2000, "concurrency": 2000, "warmup": 50},
    ),
    "fwdbwd_batch": (
        ("ours-seq", "ours-batch"),
        {"items": 16, "datums": 8, "tokens": 128, "warmup": 2},
        {"items": 8, "datums": 8, "tokens": 128, "warmup": 1},
    ),
    "idle": (("sdk", "ours"), {"seconds": 5.0}, {"seconds": 1.0}),
}
GROUPS = {"train": ["train_small", "train_large"], "sample": ["sample_c200", "sample_c2000"]}


# -- the simulator and the children (parent) ----------------------------------------------------------------------


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    """``python -m tinkex_trio serve --port 0`` (as bench_sim.py does); returns the process and its base URL."""
    cmd = [sys.executable, "-m", "tinkex_trio", "serve", "--port", "0", "--seed", "0"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode(errors="replace")
        if not line:
            raise RuntimeError(f"serve exited: {''.join(lines)}")
        lines.append(line)
        if "Ctrl-C" in line:
            break
    url = next(w for line in lines if "serving on" in line for w in line.split() if "://" in w)
    return proc, url


def stop_server(proc: subprocess.Popen[bytes]) -> int | None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


def child_env() -> dict[str, str]:
    """The environment without TINKER_* / TINKEX_* settings: both clients get their defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "TINKEX_")) and k != "SSL_CERT_FILE"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def run_child(
    side: str, workload: str, params: dict[str, Any], url: str, server_pid: int, extra: list[str] | None = None
) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tinkex_trio._cli._child", "--side", side, "--workload", workload]
    cmd += ["--url", url, "--server-pid", str(server_pid), "--params", json.dumps(params), *(extra or [])]
    proc = subprocess.run(cmd, capture_output=True, env=child_env(), cwd=REPO, timeout=CHILD_TIMEOUT_S, check=False)
    out = proc.stdout.decode(errors="replace")
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        err = proc.stderr.decode(errors="replace")
        raise RuntimeError(f"{side} {workload} failed (rc={proc.returncode}):\n{out[-2000:]}\n{err[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


SUMMARY_FIELDS = (
    "cpu_us_per_op",
    "wall_s",
    "ops_per_s",
    "latency_ms_p50",
    "latency_ms_p99",
    "server_cpu_us_per_op",
    "cpu_s",
    "requests",
)


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in SUMMARY_FIELDS:
        values = [s[field] for s in samples if s.get(field) is not None]
        if values:
            out[field] = statistics.median(values)
    return out


def run_workloads(names: list[str], quick: bool, reps: int) -> tuple[dict[str, Any], int | None]:
    proc, url = start_server()
    print(f"simulator at {url} (pid {proc.pid})", flush=True)
    results: dict[str, Any] = {}
    try:
        for name in names:
            sides, full, small = WORKLOADS[name]
            params = small if quick else full
            samples: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
            for rep in range(reps):
                order = sides if rep % 2 == 0 else tuple(reversed(sides))
                for side in order:
                    t0 = time.monotonic()
                    sample = run_child(side, name, params, url, proc.pid)
                    samples[side].append(sample)
                    print(
                        f"  {name:<13} rep {rep + 1}/{reps} {side:<10} cpu/op {sample['cpu_us_per_op']:>10.0f} us  "
                        f"wall {sample['wall_s']:.3f} s  (child {time.monotonic() - t0:.1f} s)",
                        flush=True,
                    )
            medians = {side: summarize(s) for side, s in samples.items()}
            base, other = sides
            ratios = {
                field: medians[other][field] / medians[base][field]
                for field in SUMMARY_FIELDS
                if medians[base].get(field) and medians[other].get(field) is not None
            }
            results[name] = {
                "params": params,
                "sides": list(sides),
                "medians": medians,
                "ratio": {"of": f"{other} / {base}", **ratios},
                "samples": samples,
            }
    finally:
        code = stop_server(proc)
    return results, code


# -- micro-benchmarks (in this process) ---------------------------------------------------------------------------


def per_call_ns(stmt: Callable[[], object], number: int, repeat: int = 5) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e9


def noop() -> None:
    return None


def fail() -> None:
    raise ConnectionError("down")


def micro_breakers(number: int) -> list[dict[str, Any]]:
    from tinkex_trio import CircuitBreaker
    from tinkex_trio.errors import CircuitOpenError

    rows: list[dict[str, Any]] = []
    baseline = per_call_ns(noop, number)
    rows.append({"name": "(a plain call of a no-op function)", "closed_ns": baseline, "open_ns": None})

    ours = CircuitBreaker(failure_threshold=5, timeout_s=3600.0, name="bench")
    now = 1000.0

    def ours_closed() -> None:
        ours.record_success(now, ours.before_call(now))

    closed = per_call_ns(ours_closed, number)
    opened = CircuitBreaker(failure_threshold=1, timeout_s=3600.0, name="bench-open")
    opened.record_failure(now, opened.before_call(now))

    def ours_open() -> None:
        # try/except, not contextlib.suppress: the suppress context manager would cost more than what is measured.
        try:  # noqa: SIM105
            opened.before_call(now)
        except CircuitOpenError:
            pass

    def ours_open_allow() -> None:
        opened.allow(now)

    rows.append(
        {
            "name": "tinkex_trio before_call + record_success",
            "closed_ns": closed,
            "open_ns": per_call_ns(ours_open, number),
        }
    )
    rows.append(
        {
            "name": "tinkex_trio allow (open, no raise)",
            "closed_ns": None,
            "open_ns": per_call_ns(ours_open_allow, number),
        }
    )
    # The opt-in window modes (issue 14): every closed verdict feeds the sliding window.
    windowed = CircuitBreaker(timeout_s=3600.0, failure_rate_threshold=0.5, slow_call_s=1.0, name="bench-window")

    def ours_windowed() -> None:
        windowed.record_success(now, windowed.before_call(now), duration=0.01)

    rows.append(
        {
            "name": "tinkex_trio rate + slow-call modes (opt-in)",
            "closed_ns": per_call_ns(ours_windowed, number),
            "open_ns": None,
        }
    )

    for lib, build in (
        ("pybreaker", _pybreaker),
        ("aiobreaker", _aiobreaker),
        ("purgatory", _purgatory),
        ("circuitbreaker", _circuitbreaker),
    ):
        try:
            closed_call, open_call = build()
        except ImportError:
            print(f"  micro: {lib} is not installed; skipped (pip install {lib})")
            rows.append({"name": lib, "skipped": "not installed"})
            continue
        rows.append(
            {
                "name": f"{lib} {metadata.version(lib)}",
                "closed_ns": per_call_ns(closed_call, number),
                "open_ns": per_call_ns(open_call, number),
            }
        )
    rows.extend(micro_breakers_async(number // 4))
    return rows


def _swallow(call: Callable[[], object], errors: tuple[type[BaseException], ...]) -> Callable[[], None]:
    def run() -> None:
        try:  # noqa: SIM105 (see ours_open)
            call()
        except errors:
            pass

    return run


def _pybreaker() -> tuple[Callable[[], object], Callable[[], object]]:
    import pybreaker

    closed = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=3600)
    opened = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=3600)
    _swallow(lambda: opened.call(fail), (Exception,))()
    return (lambda: closed.call(noop)), _swallow(lambda: opened.call(noop), (pybreaker.CircuitBreakerError,))


def _aiobreaker() -> tuple[Callable[[], object], Callable[[], object]]:
    from datetime import timedelta

    import aiobreaker

    closed = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(hours=1))
    opened = aiobreaker.CircuitBreaker(fail_max=1, timeout_duration=timedelta(hours=1))
    _swallow(lambda: opened.call(fail), (Exception,))()
    return (lambda: closed.call(noop)), _swallow(lambda: opened.call(noop), (aiobreaker.CircuitBreakerError,))


def _purgatory() -> tuple[Callable[[], object], Callable[[], object]]:
    import purgatory
    from purgatory.domain.model import OpenedState

    factory = purgatory.SyncCircuitBreakerFactory(default_threshold=5, default_ttl=3600)
    closed = factory.get_breaker("closed")
    opened = factory.get_breaker("opened", threshold=1)

    def fail_once() -> None:
        with opened:
            fail()

    _swallow(fail_once, (Exception,))()

    def closed_call() -> None:
        with closed:
            noop()

    def open_call() -> None:
        with opened:
            noop()

    return closed_call, _swallow(open_call, (OpenedState,))


def _circuitbreaker() -> tuple[Callable[[], object], Callable[[], object]]:
    import circuitbreaker

    closed = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=3600)
    opened = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=3600)
    _swallow(lambda: opened.call(fail), (Exception,))()
    # Its call() never checks the state (it runs the function and records the outcome, closing the breaker again): only
    # a decorated function is refused while open. So the open path is measured through the decorator.
    guarded = opened.decorate(noop)
    assert opened.opened
    return (lambda: closed.call(noop)), _swallow(guarded, (circuitbreaker.CircuitBreakerError,))


async def anoop() -> None:
    return None


def micro_breakers_async(number: int) -> list[dict[str, Any]]:
    """The awaitable paths: ours ``CircuitBreaker.call`` under trio, aiobreaker / purgatory under asyncio (closed)."""
    import trio

    from tinkex_trio import CircuitBreaker

    rows: list[dict[str, Any]] = []

    async def loop(call: Callable[[], Awaitable[object]]) -> float:
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(number):
                await call()
            best = min(best, time.perf_counter() - t0)
        return best / number * 1e9

    async def trio_side() -> None:
        breaker = CircuitBreaker(failure_threshold=5, timeout_s=3600.0, name="bench-async")
        base = await loop(anoop)
        rows.append({"name": "(await a no-op coroutine, trio)", "closed_ns": base, "open_ns": None})
        rows.append(
            {
                "name": "tinkex_trio CircuitBreaker.call (trio)",
                "closed_ns": await loop(lambda: breaker.call(anoop)),
                "open_ns": None,
            }
        )

    trio.run(trio_side)

    async def asyncio_side() -> None:
        base = await loop(anoop)
        rows.append({"name": "(await a no-op coroutine, asyncio)", "closed_ns": base, "open_ns": None})
        try:
            from datetime import timedelta

            import aiobreaker

            breaker = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(hours=1))
            ns = await loop(lambda: breaker.call_async(anoop))
            rows.append({"name": "aiobreaker call_async (asyncio)", "closed_ns": ns, "open_ns": None})
        except ImportError:
            print("  micro: aiobreaker is not installed; async path skipped")
        try:
            import purgatory

            factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=3600)

            async def purgatory_call() -> None:
                async with await factory.get_breaker("closed"):
                    await anoop()

            ns = await loop(purgatory_call)
            rows.append({"name": "purgatory async get_breaker + with (asyncio)", "closed_ns": ns, "open_ns": None})
        except ImportError:
            print("  micro: purgatory is not installed; async path skipped")

    asyncio.run(asyncio_side())
    return rows


def micro_metrics(number: int) -> list[dict[str, Any]]:
    from tinkex_trio import Metrics

    rows: list[dict[str, Any]] = []
    metrics = Metrics()
    metrics.record_histogram("bench_ms", 1.0)
    rows.append(
        {
            "name": "tinkex_trio Metrics.record_histogram (no labels)",
            "ns": per_call_ns(lambda: metrics.record_histogram("bench_ms", 12.5), number),
        }
    )
    labels = {"endpoint": "asample", "pool": "sampling"}
    metrics.record_histogram("bench_l_ms", 1.0, labels=labels)
    rows.append(
        {
            "name": "tinkex_trio Metrics.record_histogram (2 labels)",
            "ns": per_call_ns(lambda: metrics.record_histogram("bench_l_ms", 12.5, labels=labels), number),
        }
    )
    series = metrics.histogram("bench_h_ms")
    rows.append(
        {"name": "tinkex_trio Histogram.record (held series)", "ns": per_call_ns(lambda: series.record(12.5), number)}
    )
    try:
        from hdrh.histogram import HdrHistogram

        hdr = HdrHistogram(1, 60_000_000, 3)
        rows.append(
            {
                "name": f"hdrhistogram {metadata.version('hdrhistogram')} record_value",
                "ns": per_call_ns(lambda: hdr.record_value(12500), number),
            }
        )
    except ImportError:
        print("  micro: hdrhistogram is not installed; skipped")
        rows.append({"name": "hdrhistogram", "skipped": "not installed"})
    try:
        import prometheus_client

        registry = prometheus_client.CollectorRegistry()
        hist = prometheus_client.Histogram("bench_seconds", "bench", registry=registry)
        rows.append(
            {
                "name": f"prometheus_client {metadata.version('prometheus_client')} Histogram.observe",
                "ns": per_call_ns(lambda: hist.observe(0.0125), number),
            }
        )
        lhist = prometheus_client.Histogram("bench_l_seconds", "bench", ["endpoint", "pool"], registry=registry)
        rows.append(
            {
                "name": "prometheus_client labels(...).observe (2 labels)",
                "ns": per_call_ns(lambda: lhist.labels(endpoint="asample", pool="sampling").observe(0.0125), number),
            }
        )
    except ImportError:
        print("  micro: prometheus_client is not installed; skipped (pip install prometheus_client)")
        rows.append({"name": "prometheus_client", "skipped": "not installed"})
    return rows


# -- report -------------------------------------------------------------------------------------------------------


# (median field, format, width, title) of the table's columns
COLUMNS = (
    ("cpu_us_per_op", ".0f", 11, "cpu/op us"),
    ("wall_s", ".3f", 8, "wall s"),
    ("ops_per_s", ".1f", 8, "ops/s"),
    ("latency_ms_p50", ".2f", 8, "p50 ms"),
    ("latency_ms_p99", ".2f", 8, "p99 ms"),
    ("server_cpu_us_per_op", ".0f", 11, "srv cpu/op"),
    ("requests", ".0f", 5, "reqs"),
)


def fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(report: dict[str, Any]) -> None:
    print()
    ver = report["versions"]
    mode = "quick" if report["quick"] else "full"
    print(
        f"bench_client: tinker {ver.get('tinker')} vs tinkex_trio {ver.get('tinkex_trio')}, {report['cpus']} CPUs, "
        f"python {report['python']}, {report['reps']} reps, {mode}"
    )
    header = f"{'workload':<13} {'side':<10} {'ops':>5} " + " ".join(title.rjust(w) for _, _, w, title in COLUMNS)
    if report["workloads"]:
        print(header)
        print("-" * len(header))
    for name, res in report["workloads"].items():
        ops = res["samples"][res["sides"][0]][0]["ops"]
        for side in res["sides"]:
            m = res["medians"][side]
            cells = " ".join(fmt(m.get(f), spec).rjust(width) for f, spec, width, _ in COLUMNS)
            print(f"{name:<13} {side:<10} {ops:>5} {cells}")
        r = res["ratio"]
        cells = " ".join(fmt(r.get(f), ".2f").rjust(width) for f, _, width, _ in COLUMNS)
        print(f"{'':<13} {'ratio':<10} {'':>5} {cells}   ({r['of']})")
    if "idle" in report["workloads"]:
        res = report["workloads"]["idle"]
        secs = res["params"]["seconds"]
        parts = [f"{side} {res['medians'][side]['cpu_s'] / secs * 1e3:.2f} ms CPU/s" for side in res["sides"]]
        print(f"idle session: {', '.join(parts)}")
    micro = report.get("micro")
    if micro:
        print()
        print(f"{'circuit breaker (per call)':<50} {'closed ns':>10} {'open ns':>10}")
        for row in micro["breakers"]:
            if "skipped" in row:
                print(f"{row['name']:<50} skipped: {row['skipped']}")
                continue
            print(f"{row['name']:<50} {fmt(row['closed_ns'], '.0f'):>10} {fmt(row['open_ns'], '.0f'):>10}")
        print()
        print(f"{'histogram record (per value)':<50} {'ns':>10}")
        for row in micro["metrics"]:
            if "skipped" in row:
                print(f"{row['name']:<50} skipped: {row['skipped']}")
                continue
            print(f"{row['name']:<50} {row['ns']:>10.0f}")
    print(f"elapsed {report['elapsed_s']} s; server exit code {report['server_exit_code']}")


def selected(only: str | None) -> tuple[list[str], bool]:
    """The workloads named by ``--only`` (and whether the micro-benchmarks run)."""
    if not only:
        return list(WORKLOADS), True
    names: list[str] = []
    micro = False
    for part in (p.strip() for p in only.split(",") if p.strip()):
        if part == "micro":
            micro = True
        elif part in GROUPS:
            names += GROUPS[part]
        elif part in WORKLOADS:
            names.append(part)
        else:
            raise SystemExit(f"--only: unknown workload {part!r} (known: {', '.join([*WORKLOADS, *GROUPS, 'micro'])})")
    return list(dict.fromkeys(names)), micro


def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for pkg in ("tinkex_trio", "tinker", "trio", "httpx", "msgspec", "hypercorn", "pyqwest"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def profile_workloads(names: list[str], quick: bool, top: int) -> int:
    """Run our side of each workload once under cProfile; print the top functions by cumulative and own time."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    proc, url = start_server()
    try:
        for name in names:
            sides, full, small = WORKLOADS[name]
            for side in (s for s in sides if s != "sdk"):  # the SDK works in a background thread cProfile does not see
                path = RESULTS_DIR / f"bench_client-{name}-{side}.prof"
                sample = run_child(side, name, small if quick else full, url, proc.pid, ["--profile", str(path)])
                print(f"\n== {name} / {side}: {sample['ops']} ops, cpu/op {sample['cpu_us_per_op']:.0f} us (profiled)")
                for order in ("cumulative", "tottime"):
                    print(f"-- top {top} by {order} ({path.relative_to(REPO)})")
                    pstats.Stats(str(path)).strip_dirs().sort_stats(order).print_stats(top)
    finally:
        stop_server(proc)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small workloads (well under a minute in all)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per side (default 5; 1 with --quick)")
    parser.add_argument("--only", default=None, help="comma-separated workloads or groups (train, sample, micro)")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON report")
    parser.add_argument(
        "--profile",
        default=None,
        metavar="TOP",
        nargs="?",
        const="15",
        help="instead of the benchmark: run each selected workload once per tinkex_trio side under cProfile (the "
        "measured part only), write results/bench_client-<workload>-<side>.prof and print the TOP functions",
    )
    args = parser.parse_args(argv)
    reps = args.reps if args.reps is not None else (1 if args.quick else 5)
    names, micro = selected(args.only)
    if args.profile is not None:
        return profile_workloads(names, args.quick, int(args.profile))
    start = time.monotonic()
    workloads, code = run_workloads(names, args.quick, reps) if names else ({}, None)
    report: dict[str, Any] = {
        "benchmark": "bench_client",
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": versions(),
        "quick": args.quick,
        "reps": reps,
        "server": "python -m tinkex_trio serve --port 0 --seed 0 (http, default service time 2 ms, no faults)",
        "server_exit_code": code,
        "workloads": workloads,
    }
    if micro:
        number = 20_000 if args.quick else 100_000
        report["micro"] = {"number": number, "breakers": micro_breakers(number), "metrics": micro_metrics(number)}
    report["elapsed_s"] = round(time.monotonic() - start, 1)
    print_report(report)
    if not args.no_write:
        write_report("bench_client", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
