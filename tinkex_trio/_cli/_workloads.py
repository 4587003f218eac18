"""The client workloads both benchmarks run, one side per process: the official ``tinker`` SDK (asyncio) and ours.

``tinkex-trio bench`` (its ``train`` and ``sample`` scenarios) and ``benchmarks/bench_client.py`` run each side of a
workload in a child process of their own (:func:`child_main`, ``python -m tinkex_trio._cli._child``), so the SDK's
asyncio loop and background thread never share a process with trio, and a side's imports, pools and caches do not
leak into the other's numbers. The child sets up (session, model, sampler, data), warms up, then measures the
workload only (:class:`Meter`): wall time, client CPU (all threads), each operation's latency (also recorded in a
:class:`~tinkex_trio.Metrics` histogram, whose percentiles the CLI reports), and the server's CPU when it is a
local process. It prints ``PROGRESS <done> <total>`` lines while it measures and one ``RESULT <json>`` line at the end.

Workloads (an op is a step or a sample):

* ``train_small`` / ``train_large``: pipelined steps (``forward_backward`` then ``optim_step`` submitted back to back,
  then both awaited) of ``datums`` x ``tokens``.
* ``sample_c200`` / ``sample_c2000`` (any ``sample*`` name): ``samples`` single-sample requests (16-token prompt, 16
  tokens out) from ``concurrency`` tasks on one sampling client.
* ``fwdbwd_batch`` (ours only): ``items`` forward_backward items, by ``forward_backward_batch`` (side
  ``ours-batch``) or one call after another (``ours-seq``).
* ``idle``: an open session with a training client, doing nothing for ``seconds``.

The SDK is imported only in its child, and typed loosely here (``Any``): it is an optional dependency.
"""

from __future__ import annotations

import asyncio
import cProfile
import importlib
import os
import resource
import statistics
import time
import warnings
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, Final

import trio

from tinkex_trio import types
from tinkex_trio._metrics import Metrics
from tinkex_trio._session import open_session
from tinkex_trio._telemetry import CIRCUIT_BREAKER_STATE_CHANGE

__all__ = [
    "API_KEY",
    "BASE_MODEL",
    "OP_HISTOGRAM",
    "PROMPT",
    "SAMPLE_MAX_TOKENS",
    "Meter",
    "asyncio_concurrent",
    "cpu_seconds",
    "ours_child",
    "pct",
    "requests_by_endpoint",
    "sdk_child",
    "shared_worker",
    "timed_steps",
    "tokens_for",
    "trio_concurrent",
]

API_KEY: Final = "tml-bench-0123456789"
BASE_MODEL: Final = "meta-llama/Llama-3.2-1B"
PROMPT: Final = (5, 17, 42, 99, 7, 13, 21, 34, 55, 89, 3, 1, 4, 1, 5, 9)
SAMPLE_MAX_TOKENS: Final = 16
OP_HISTOGRAM: Final = "bench_op_ms"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (Linux /proc; 0.0 if unreadable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank, no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def tokens_for(i: int, n: int) -> list[int]:
    """n + 1 tokens (n inputs and n targets), different per datum."""
    return [(i * 7 + j * 13) % 250 + 1 for j in range(n + 1)]


class Meter:
    """Wall time, client CPU (all threads) and server CPU around a workload, and each operation's latency.

    ``server_pid`` 0 means the server is not a local process (its CPU is not measured). ``on_record`` is called with
    the number of operations recorded so far, after each one (the CLI's progress). ``metrics`` is a
    :class:`~tinkex_trio.Metrics` when the reader wants a session's request counters in the result.
    """

    def __init__(self, server_pid: int, *, on_record: Callable[[int], None] | None = None) -> None:
        self.server_pid = server_pid
        self.on_record = on_record
        self.latencies: list[float] = []
        self.ops_metrics = Metrics()
        self.extra: dict[str, Any] = {}
        self.count_requests: Callable[[], dict[str, float]] | None = None
        self.session_metrics: Any = None
        self.breaker_transitions: list[int] | None = None
        self.requests0: dict[str, float] = {}
        self.retries0 = 0.0
        self.profile_path: str | None = None
        self.profiler: cProfile.Profile | None = None

    def record(self, seconds: float) -> None:
        """One operation took ``seconds``."""
        self.latencies.append(seconds)
        self.ops_metrics.record_histogram(OP_HISTOGRAM, seconds * 1e3)
        if self.on_record is not None:
            self.on_record(len(self.latencies))

    def start(self) -> None:
        if self.profile_path is not None:
            self.profiler = cProfile.Profile()
            self.profiler.enable()
        if self.count_requests is not None:
            self.requests0 = self.count_requests()
        if self.session_metrics is not None:
            self.retries0 = self.session_metrics.counter_total("tinkex_retries_total")
        self.srv0 = cpu_seconds(self.server_pid) if self.server_pid else 0.0
        self.ru0 = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu0 = time.process_time()
        self.wall0 = time.perf_counter()

    def stop(self, ops: int) -> dict[str, Any]:
        if self.profiler is not None:
            self.profiler.disable()
            self.profiler.dump_stats(str(self.profile_path))
        wall = time.perf_counter() - self.wall0
        cpu = time.process_time() - self.cpu0
        ru = resource.getrusage(resource.RUSAGE_SELF)
        srv = cpu_seconds(self.server_pid) - self.srv0 if self.server_pid else None
        lat = self.latencies
        out: dict[str, Any] = {
            "ops": ops,
            "wall_s": wall,
            "cpu_s": cpu,
            "user_s": ru.ru_utime - self.ru0.ru_utime,
            "sys_s": ru.ru_stime - self.ru0.ru_stime,
            "server_cpu_s": srv,
            "cpu_us_per_op": cpu / ops * 1e6 if ops else None,
            "server_cpu_us_per_op": srv / ops * 1e6 if ops and srv is not None else None,
            "ops_per_s": ops / wall if wall > 0 else None,
            "latency_ms_p50": pct(lat, 0.50) * 1e3 if lat else None,
            "latency_ms_p99": pct(lat, 0.99) * 1e3 if lat else None,
            "latency_ms_mean": statistics.fmean(lat) * 1e3 if lat else None,
            "max_rss_mb": ru.ru_maxrss / 1024,
            "op_latency_ms": self.ops_metrics.get_histogram(OP_HISTOGRAM),
            "latencies_ms": [round(x * 1e3, 4) for x in lat],
        }
        if self.count_requests is not None:
            after = self.count_requests()
            delta = {k: v - self.requests0.get(k, 0) for k, v in sorted(after.items())}
            out["requests"] = sum(delta.values())
            out["requests_by_endpoint"] = {k: v for k, v in delta.items() if v}
        if self.session_metrics is not None:
            out["retries"] = self.session_metrics.counter_total("tinkex_retries_total") - self.retries0
            out["request_latency_ms"] = self.session_metrics.summary("tinkex_request_duration_ms")
        if self.breaker_transitions is not None:
            out["breaker_transitions"] = len(self.breaker_transitions)
        out.update(self.extra)
        return out


async def timed_steps(step: Callable[[], Awaitable[None]], params: dict[str, Any], meter: Meter) -> dict[str, Any]:
    """``params["warmup"]`` untimed steps, then ``params["steps"]`` measured ones, each one's latency recorded (any
    event loop: it only awaits)."""
    for _ in range(params["warmup"]):
        await step()
    meter.start()
    for _ in range(params["steps"]):
        t0 = time.perf_counter()
        await step()
        meter.record(time.perf_counter() - t0)
    return meter.stop(params["steps"])


def shared_worker(
    call: Callable[[], Awaitable[None]], total: int, record: Callable[[float], None] | None
) -> Callable[[], Awaitable[None]]:
    """A worker coroutine function; any number of copies run concurrently make ``total`` calls between them, each
    one's latency given to ``record`` (any event loop: it only awaits)."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            await call()
            if record is not None:
                record(time.perf_counter() - t0)

    return worker


async def asyncio_concurrent(
    call: Callable[[], Awaitable[None]], total: int, concurrency: int, record: Callable[[float], None] | None
) -> None:
    worker = shared_worker(call, total, record)
    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def trio_concurrent(
    call: Callable[[], Awaitable[None]], total: int, concurrency: int, record: Callable[[float], None] | None
) -> None:
    worker = shared_worker(call, total, record)
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)


# -- the official SDK (asyncio) -------------------------------------------------------------------------------------


async def sdk_child(workload: str, url: str, params: dict[str, Any], meter: Meter) -> dict[str, Any]:
    tinker: Any = importlib.import_module("tinker")
    st: Any = tinker.types

    warnings.simplefilter("ignore")  # deprecation notices of the SDK are not the benchmark's business
    service = tinker.ServiceClient(base_url=url, api_key=params.get("api_key") or API_KEY)
    try:
        if workload.startswith("train") or workload == "idle":
            training = await service.create_lora_training_client(base_model=BASE_MODEL, rank=8, seed=0)
            if workload == "idle":
                meter.start()
                await asyncio.sleep(params["seconds"])
                return meter.stop(1)
            data = [
                st.Datum(
                    model_input=st.ModelInput.from_ints(toks[:-1]),
                    loss_fn_inputs={"target_tokens": toks[1:], "weights": [1.0] * (len(toks) - 1)},
                )
                for toks in (tokens_for(i, params["tokens"]) for i in range(params["datums"]))
            ]
            adam = st.AdamParams(learning_rate=1e-3)

            async def step() -> None:
                fwdbwd = training.forward_backward(data, "cross_entropy")
                optim = training.optim_step(adam)
                await fwdbwd
                await optim

            return await timed_steps(step, params, meter)

        sampler = await service.create_sampling_client(base_model=BASE_MODEL)
        prompt = st.ModelInput.from_ints(list(PROMPT))
        sampling_params = st.SamplingParams(max_tokens=SAMPLE_MAX_TOKENS, temperature=1.0)

        async def one() -> None:
            await sampler.sample(prompt=prompt, num_samples=1, sampling_params=sampling_params)

        await asyncio_concurrent(one, params["warmup"], min(params["concurrency"], params["warmup"]), None)
        meter.start()
        await asyncio_concurrent(one, params["samples"], params["concurrency"], meter.record)
        return meter.stop(params["samples"])
    finally:
        await service.close("success", detail="tinkex-trio bench")


# -- tinkex_trio (trio) ---------------------------------------------------------------------------------------------


async def ours_child(side: str, workload: str, url: str, params: dict[str, Any], meter: Meter) -> dict[str, Any]:
    async with open_session(api_key=params.get("api_key") or API_KEY, base_url=url) as session:
        meter.count_requests = partial(requests_by_endpoint, session.metrics)
        meter.session_metrics = session.metrics
        transitions: list[int] = []
        meter.breaker_transitions = transitions
        session.telemetry.attach(
            "tinkex_trio.bench", CIRCUIT_BREAKER_STATE_CHANGE, lambda event: transitions.append(int(event.time))
        )
        if workload.startswith("train") or workload in ("idle", "fwdbwd_batch"):
            trainer = await session.create_lora_training_client(BASE_MODEL, rank=8, seed=0)
            if workload == "idle":
                meter.start()
                await trio.sleep(params["seconds"])
                return meter.stop(1)
            data = [
                types.datum(toks[:-1], target_tokens=toks[1:], weights=[1.0] * (len(toks) - 1))
                for toks in (tokens_for(i, params["tokens"]) for i in range(params["datums"]))
            ]
            adam = types.AdamParams(learning_rate=1e-3)
            if workload == "fwdbwd_batch":
                return await ours_fwdbwd_batch(side, trainer, data, params, meter)

            async def step() -> None:
                fwdbwd = await trainer.submit_forward_backward(data, "cross_entropy")
                optim = await trainer.submit_optim_step(adam)
                await fwdbwd.result()
                await optim.result()

            return await timed_steps(step, params, meter)

        sampler = await session.create_sampling_client(base_model=BASE_MODEL)
        prompt = types.ModelInput.from_ints(list(PROMPT))
        sampling_params = types.SamplingParams(max_tokens=SAMPLE_MAX_TOKENS, temperature=1.0)

        async def one() -> None:
            await sampler.sample(prompt, 1, sampling_params)

        await trio_concurrent(one, params["warmup"], min(params["concurrency"], params["warmup"]), None)
        meter.start()
        await trio_concurrent(one, params["samples"], params["concurrency"], meter.record)
        return meter.stop(params["samples"])


async def ours_fwdbwd_batch(
    side: str, trainer: Any, data: list[Any], params: dict[str, Any], meter: Meter
) -> dict[str, Any]:
    items = [(data, "cross_entropy", None)] * params["items"]

    async def run() -> None:
        if side == "ours-batch":
            await trainer.forward_backward_batch(items)
        else:
            for item in items:
                await trainer.forward_backward(*item)

    for _ in range(params["warmup"]):
        await run()
    meter.start()
    t0 = time.perf_counter()
    await run()
    meter.record(time.perf_counter() - t0)
    return meter.stop(1)


def requests_by_endpoint(metrics: Any) -> dict[str, float]:
    """``tinkex_requests_total`` summed by endpoint label, from ``Metrics.get_all_metrics()``."""
    out: dict[str, float] = {}
    counters: dict[str, float] = metrics.get_all_metrics().get("counters", {})
    for key, value in counters.items():
        if not key.startswith("tinkex_requests_total"):
            continue
        endpoint = key.split("endpoint=", 1)[1].split(",", 1)[0].strip("\"'}") if "endpoint=" in key else "?"
        out[endpoint] = out.get(endpoint, 0) + float(value)
    return out
