"""The circuit breaker through an outage: it opens, calls fail fast, a trial call closes it again.

Run it as is and it starts the simulated Tinker server in-process::

    python examples/breaker_demo.py
    python examples/breaker_demo.py --outage-s 5 --timeout-s 2

What happens, against the simulator:

1. a healthy call;
2. the server answers every request with 503 for ``--outage-s`` seconds: the first calls fail after their retries,
   and after ``failure_threshold`` (3) such calls in a row the breaker opens;
3. while it is open, calls fail at once with ``CircuitOpenError`` -- nothing is sent;
4. ``--timeout-s`` later it lets one trial call through: it fails while the outage lasts (the breaker re-opens), and
   once the outage is over a trial succeeds and the breaker closes;
5. an operator forces it open (``force_open``: kept until ``reset``) and resets it.

Every transition is printed as it is published on the session's telemetry (``tinkex.circuit_breaker.state_change``),
and the breaker's stats at the end.
"""

from __future__ import annotations

import argparse
import time

import trio
from _common import SIM_API_KEY, base_parser

import tinkex_trio as tx
from tinkex_trio.errors import APIError, CircuitOpenError


async def print_transitions(rx: trio.MemoryReceiveChannel[tx.TelemetryEvent], started: float) -> None:
    async for event in rx:
        m = event.metadata
        retry = event.measurements.get("retry_after_s", 0.0)
        extra = f", retry in {retry:.1f} s" if 0 < retry < float("inf") else (", until reset" if retry else "")
        print(f"  [{time.monotonic() - started:5.2f} s] breaker {m['from']} -> {m['to']} ({m['reason']}{extra})")


async def attempt(session: tx.Session, label: str) -> None:
    began = time.monotonic()
    try:
        await session.get_server_capabilities()
        outcome = "ok"
    except CircuitOpenError as exc:
        outcome = f"CircuitOpenError, failed fast (retry_after {exc.retry_after:.2f} s)"
    except APIError as exc:
        outcome = f"{type(exc).__name__} (status {getattr(exc, 'status_code', '-')})"
    print(f"{label:<10} {outcome}  [{1000 * (time.monotonic() - began):.1f} ms]")
    await trio.sleep(0.01)  # let the telemetry printer show a transition this call caused


def requests_sent(session: tx.Session) -> int:
    counters = session.metrics.get_all_metrics()["counters"]
    return int(sum(v for k, v in counters.items() if k.startswith("tinkex_requests_total")))


async def main(args: argparse.Namespace) -> None:
    from tinkex_trio.sim import SimConfig, open_sim_server  # needs the `sim` extra

    async with open_sim_server(SimConfig(seed=args.seed), tls=False) as server:
        print(f"simulated Tinker server at {server.base_url}")
        config = tx.Config.create(
            api_key=SIM_API_KEY,
            base_url=server.base_url,
            tags=["example", "breaker"],
            circuit_breaker={"failure_threshold": 3, "timeout_s": args.timeout_s},
            retry={"max_retries": 1, "base_delay_s": 0.05, "max_delay_s": 0.05},
        )
        started = time.monotonic()
        async with tx.open_session(config=config) as session, trio.open_nursery() as nursery:
            nursery.start_soon(
                print_transitions, session.telemetry.subscribe(events="tinkex.circuit_breaker.state_change"), started
            )
            breaker = session.breaker
            await attempt(session, "healthy")

            print(f"-- outage: every request answers 503 for {args.outage_s:g} s")
            server.faults.start_outage(args.outage_s)
            for i in range(5):
                await attempt(session, f"call {i + 1}")
            print(f"breaker state: {breaker.state.value}; requests sent so far: {requests_sent(session)}")

            print("-- waiting for the outage to end; a trial call goes through each time the timer ends")
            deadline = trio.current_time() + args.outage_s + 4 * args.timeout_s
            while breaker.state is not tx.BreakerState.CLOSED and trio.current_time() < deadline:
                await trio.sleep(args.timeout_s / 2)
                await attempt(session, "retry")
            print(f"breaker state: {breaker.state.value}")

            print("-- an operator forces the breaker open, then resets it")
            breaker.force_open(trio.current_time())
            await attempt(session, "forced")
            breaker.reset(trio.current_time())
            await attempt(session, "reset")
            await trio.sleep(0.05)  # let the last transition print

            stats = breaker.stats
            print(
                f"stats: {stats.calls} calls ({stats.successes} ok, {stats.failures} failed, {stats.neutral} neutral), "
                f"{stats.rejections} rejected; transitions {dict(sorted(stats.transitions.items()))}"
            )
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = base_parser(__doc__)
    parser.add_argument("--outage-s", type=float, default=2.0)
    parser.add_argument("--timeout-s", type=float, default=1.0)
    trio.run(main, parser.parse_args())
