"""Simulator benchmark: request rate, server CPU per request, and keep-alive latency of ``tinkex-trio serve``.

Run with ``python benchmarks/bench_sim.py [--requests N] [--concurrency C] [--tls] [--budget S]``. Prints a table
and writes JSON to ``benchmarks/results/bench_sim-<timestamp>.json``.

The server runs in a subprocess (``python -m tinkex_trio serve --port 0``); its CPU time is read from
``/proc/<pid>/stat`` (utime + stime) before and after each phase, so the figures are the server's own cost,
whatever the client spends. The client is one keep-alive ``httpx.AsyncClient`` under trio, in this process.

Workloads:

* ``healthz``: ``GET /api/v1/healthz`` (routing, middleware, JSON);
* ``retrieve_future``: ``POST /api/v1/retrieve_future`` for a future that has already completed (a create_model
  result): the hottest path of a real client, without the long-poll wait.

Each runs sequentially (one request at a time over one connection: the latency figures) and concurrently
(``C`` tasks sharing the client's pool), both with httpx, then sequentially with a minimal blocking HTTP/1.1 client
over one socket ("raw-seq"), which shows the server's own latency without httpx's per-request CPU. Everything is
bounded by ``--budget`` seconds (default 50).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import trio
from _report import REPO, RESULTS_DIR, write_report  # benchmarks/ is on sys.path when run

API_KEY = "tml-bench-0123456789"
HEADERS = {"X-API-Key": API_KEY}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (Linux /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def start_server(tls: bool, ca_file: Path) -> tuple[trio.Process, str, bytearray]:
    cmd = [sys.executable, "-m", "tinkex_trio", "serve", "--port", "0", "--seed", "0"]
    if tls:
        cmd += ["--tls", "--ca-file", str(ca_file)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    assert proc.stdout is not None
    buf = bytearray()
    with trio.fail_after(30):
        for _ in range(10_000):
            if b"Ctrl-C" in buf:
                break
            chunk = await proc.stdout.receive_some(65536)
            if not chunk:
                raise RuntimeError(f"serve exited: {buf.decode(errors='replace')}")
            buf += chunk
    url = next(w for line in buf.decode().splitlines() if "serving on" in line for w in line.split() if "://" in w)
    return proc, url, buf


async def completed_future(client: httpx.AsyncClient) -> str:
    """Create a session and a model; wait for the create_model future; return its request_id."""
    r = await client.post(
        "/api/v1/create_session",
        json={"tags": [], "user_metadata": {}, "sdk_version": "0.38.0", "type": "create_session"},
    )
    r.raise_for_status()
    session_id = r.json()["session_id"]
    r = await client.post(
        "/api/v1/create_model",
        json={
            "session_id": session_id,
            "model_seq_id": 0,
            "base_model": "meta-llama/Llama-3.2-1B",
            "lora_config": {"rank": 8},
            "optimizer_config": {"type": "adamw"},
            "type": "create_model",
        },
    )
    r.raise_for_status()
    request_id = r.json()["request_id"]
    for _ in range(100):
        r = await client.post("/api/v1/retrieve_future", json={"request_id": request_id, "allow_metadata_only": True})
        r.raise_for_status()
        if "model_id" in r.json() and r.json().get("type") != "try_again":
            return str(request_id)
    raise RuntimeError("create_model did not complete")


class RawClient:
    """A minimal blocking HTTP/1.1 keep-alive client over one socket: the server's latency without httpx's cost."""

    def __init__(self, url: str, ssl_context: Any) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.host_header = f"{self.host}:{self.port}"
        self.ssl_context = ssl_context
        self.connections = 0
        self.sock: Any = None
        self.buf = b""
        self._connect()

    def _connect(self) -> None:
        import socket

        if self.sock is not None:
            self.sock.close()
        sock = socket.create_connection((self.host, self.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = self.ssl_context
        self.sock = ctx.wrap_socket(sock, server_hostname=self.host) if ctx is not None else sock
        self.buf = b""
        self.connections += 1

    def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host_header}\r\nX-API-Key: {API_KEY}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + (body or b""))
        for _ in range(10_000):
            if b"\r\n\r\n" in self.buf:
                break
            self.buf += self.sock.recv(65536)
        head_bytes, _, rest = self.buf.partition(b"\r\n\r\n")
        status = int(head_bytes.split(b" ", 2)[1])
        length = 0
        close = False
        for line in head_bytes.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"connection" and value.strip().lower() == b"close":
                close = True  # hypercorn closes a keep-alive connection after 1000 requests
        for _ in range(10_000):
            if len(rest) >= length:
                break
            rest += self.sock.recv(65536)
        self.buf = rest[length:]
        if close:
            self._connect()
        if status != 200:
            raise RuntimeError(f"{path}: {status}")
        return rest[:length]

    def close(self) -> None:
        self.sock.close()


def raw_phase(
    name: str, pid: int, url: str, ssl_context: Any, path: str, body: bytes | None, count: int, limit_s: float
) -> dict[str, Any]:
    """Sequential requests with `RawClient` (run in a worker thread)."""
    client = RawClient(url, ssl_context)
    method = "GET" if body is None else "POST"
    latencies: list[float] = []
    try:
        for _ in range(20):
            client.request(method, path, body)
        cpu0, client0, w0 = cpu_seconds(pid), time.thread_time(), time.perf_counter()
        for _ in range(count):
            if time.perf_counter() - w0 > limit_s:
                break
            t0 = time.perf_counter()
            client.request(method, path, body)
            latencies.append(time.perf_counter() - t0)
        wall, cpu, client_cpu = time.perf_counter() - w0, cpu_seconds(pid) - cpu0, time.thread_time() - client0
    finally:
        client.close()
    return summarize(name, "raw-seq", 1, latencies, wall, cpu, client_cpu)


def summarize(
    name: str, mode: str, concurrency: int, latencies: list[float], wall: float, cpu: float, client_cpu: float
) -> dict[str, Any]:
    done = len(latencies)
    return {
        "endpoint": name,
        "mode": mode,
        "concurrency": concurrency,
        "requests": done,
        "wall_s": round(wall, 4),
        "rate_per_s": round(done / wall, 1) if wall > 0 else None,
        "server_cpu_s": round(cpu, 4),
        "server_cpu_us_per_request": round(cpu / done * 1e6, 1) if done else None,
        "client_cpu_us_per_request": round(client_cpu / done * 1e6, 1) if done else None,
        "latency_ms_p50": round(pct(latencies, 0.50) * 1e3, 3) if latencies else None,
        "latency_ms_p90": round(pct(latencies, 0.90) * 1e3, 3) if latencies else None,
        "latency_ms_p99": round(pct(latencies, 0.99) * 1e3, 3) if latencies else None,
        "latency_ms_mean": round(statistics.fmean(latencies) * 1e3, 3) if latencies else None,
    }


async def run_phase(
    name: str,
    mode: str,
    pid: int,
    call: Callable[[], Awaitable[None]],
    count: int,
    concurrency: int,
    deadline: float,
) -> dict[str, Any]:
    latencies: list[float] = []
    done = 0

    async def worker(n: int) -> None:
        nonlocal done
        for _ in range(n):
            if trio.current_time() > deadline:
                return
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)
            done += 1

    cpu0 = cpu_seconds(pid)
    client0 = time.process_time()
    w0 = time.perf_counter()
    if concurrency == 1:
        await worker(count)
    else:
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker, count // concurrency)
    wall = time.perf_counter() - w0
    cpu = cpu_seconds(pid) - cpu0
    client_cpu = time.process_time() - client0
    return summarize(name, mode, concurrency, latencies, wall, cpu, client_cpu)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    start = trio.current_time()
    deadline = start + args.budget
    ca_file = RESULTS_DIR / ".bench-sim-ca.pem"
    proc, url, _ = await start_server(args.tls, ca_file)
    rows: list[dict[str, Any]] = []
    connections: dict[str, int] = {}
    try:
        verify: Any = False
        if args.tls:
            import ssl

            verify = ssl.create_default_context(cafile=str(ca_file))
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        async with httpx.AsyncClient(base_url=url, headers=HEADERS, verify=verify, limits=limits, timeout=30) as client:
            request_id = await completed_future(client)

            async def healthz() -> None:
                r = await client.get("/api/v1/healthz")
                if r.status_code != 200:
                    raise RuntimeError(f"healthz: {r.status_code}")

            body = {"request_id": request_id, "allow_metadata_only": True}

            async def retrieve() -> None:
                r = await client.post("/api/v1/retrieve_future", json=body)
                if r.status_code != 200 or "model_id" not in r.json():
                    raise RuntimeError(f"retrieve_future: {r.status_code} {r.text[:200]}")

            raw_body = json.dumps(body).encode()
            for name, call, path, payload in (
                ("healthz", healthz, "/api/v1/healthz", None),
                ("retrieve_future", retrieve, "/api/v1/retrieve_future", raw_body),
            ):
                for _ in range(args.warmup):
                    await call()
                rows.append(await run_phase(name, "sequential", proc.pid, call, args.requests, 1, deadline))
                rows.append(
                    await run_phase(name, "concurrent", proc.pid, call, args.requests, args.concurrency, deadline)
                )
                limit = max(0.0, deadline - trio.current_time())
                rows.append(
                    await trio.to_thread.run_sync(
                        raw_phase, name, proc.pid, url, verify or None, path, payload, args.requests, limit
                    )
                )
            pool = client._transport._pool  # pyright: ignore[reportAttributeAccessIssue,reportPrivateUsage,reportUnknownMemberType,reportUnknownVariableType]
            connections["client_pool_connections"] = len(pool.connections)  # pyright: ignore[reportUnknownMemberType,reportUnknownArgumentType]
    finally:
        proc.send_signal(2)  # SIGINT: the server stops cleanly
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()
        ca_file.unlink(missing_ok=True)
    return {
        "benchmark": "bench_sim",
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": {pkg: metadata.version(pkg) for pkg in ("tinkex_trio", "hypercorn", "httpx", "h11", "trio")},
        "tls": args.tls,
        "requests_per_phase": args.requests,
        "concurrency": args.concurrency,
        "server_exit_code": proc.returncode,
        "elapsed_s": round(trio.current_time() - start, 2),
        "connections": connections,
        "results": rows,
    }


def print_table(report: dict[str, Any]) -> None:
    scheme = "https" if report["tls"] else "http"
    print(f"tinkex-trio serve ({scheme}, HTTP/1.1 keep-alive), {report['cpus']} CPUs, python {report['python']}")
    header = (
        f"{'endpoint':<16} {'mode':<11} {'conc':>4} {'reqs':>6} {'req/s':>8} {'srv CPU/req':>12} "
        f"{'cli CPU/req':>12} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in report["results"]:
        print(
            f"{row['endpoint']:<16} {row['mode']:<11} {row['concurrency']:>4} {row['requests']:>6} "
            f"{row['rate_per_s']:>8} {row['server_cpu_us_per_request']:>9} us "
            f"{row['client_cpu_us_per_request']:>9} us "
            f"{row['latency_ms_p50']:>8} {row['latency_ms_p90']:>8} {row['latency_ms_p99']:>8}"
        )
    seq = [r for r in report["results"] if r["mode"] in ("sequential", "raw-seq")]
    for mode, label in (("sequential", "httpx"), ("raw-seq", "raw socket")):
        rows = [r for r in seq if r["mode"] == mode]
        worst = max(r["latency_ms_p50"] for r in rows)
        p99 = max(r["latency_ms_p99"] for r in rows)
        verdict = "well under" if worst < 2.5 else ("under" if worst < 5 else "NOT under")
        print(
            f"sequential keep-alive latency ({label} client): p50 <= {worst} ms ({verdict} 5 ms), p99 <= {p99} ms "
            "(a Nagle/delayed-ACK stall would be ~40 ms)"
        )
    for r in seq:
        cpu_ms = (r["server_cpu_us_per_request"] + r["client_cpu_us_per_request"]) / 1e3
        print(
            f"  {r['endpoint']} ({r['mode']}): mean {r['latency_ms_mean']} ms vs server+client CPU "
            f"{cpu_ms:.3f} ms per request"
        )
    print(f"elapsed {report['elapsed_s']} s; server exit code {report['server_exit_code']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=500, help="requests per phase (default 500)")
    parser.add_argument("--concurrency", type=int, default=16, help="tasks in the concurrent phases (default 16)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--tls", action="store_true", help="benchmark over HTTPS")
    parser.add_argument("--budget", type=float, default=50.0, help="overall time limit in seconds (default 50)")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON report")
    args = parser.parse_args(argv)
    report = trio.run(_bounded, args)
    print_table(report)
    if not args.no_write:
        write_report("bench_sim", report)
    return 0


async def _bounded(args: argparse.Namespace) -> dict[str, Any]:
    with trio.fail_after(args.budget + 10):
        return await bench(args)


if __name__ == "__main__":
    sys.exit(main())
