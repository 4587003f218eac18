"""The ``tinkex-trio bench`` command: arguments, Ctrl-C, and where the results go."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

import trio

from tinkex_trio._cli._bench import SCENARIOS, BenchReport, ChildInterrupted, run_bench, sdk_version
from tinkex_trio._cli._bench_report import PLOT_HINT, format_report, plot_report, require_matplotlib
from tinkex_trio._cli._common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CommandError,
    add_target_arguments,
    dump_json,
    run_command,
)
from tinkex_trio._cli._progress import open_progress

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "bench",
        help="benchmark the client on the embedded simulator (or a service), side by side with the tinker SDK",
        description="Run the train, sample, batch, breaker and faults scenarios and print one table: throughput, "
        "latency percentiles, requests, retries and breaker transitions. When the official tinker SDK is "
        "installed, train and sample also run through it and the table shows the ratios.",
    )
    p.add_argument("--quick", action="store_true", help="small workloads: the whole run takes well under a minute")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the test suite's size: a few seconds
    p.add_argument("--only", metavar="LIST", default=None, help=f"comma-separated scenarios ({', '.join(SCENARIOS)})")
    p.add_argument("--no-sdk", action="store_true", help="do not run the official SDK side even if installed")
    p.add_argument("--json", metavar="FILE", default=None, help="write every figure as JSON (- for stdout)")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        default=None,
        help="plot latency distributions and the breaker timeline (needs matplotlib: the plot extra)",
    )
    p.add_argument("--plain", action="store_true", help="no live progress bars, one line per finished task")
    add_target_arguments(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.plot is not None:
        try:
            require_matplotlib()
        except ImportError:
            print(f"tinkex-trio bench: {PLOT_HINT}", file=sys.stderr)
            return EXIT_USAGE
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    report = BenchReport(target="", size=size, sdk=None if args.no_sdk else sdk_version())

    async def main() -> int:
        stop = trio.CancelScope()
        with trio.open_signal_receiver(signal.SIGINT) as signals, open_progress(plain=args.plain) as progress:
            async with trio.open_nursery() as nursery:

                async def on_ctrl_c() -> None:
                    # The first Ctrl-C stops the scenarios (their sessions finish, the simulator serves until
                    # then); a second one stops everything at once.
                    async for _ in signals:
                        if report.interrupted:
                            nursery.cancel_scope.cancel()
                            return
                        report.interrupted = True
                        stop.cancel()

                async def bench() -> None:
                    try:
                        await run_bench(args, report, progress, stop)
                    except ChildInterrupted:
                        report.interrupted = True
                    nursery.cancel_scope.cancel()

                nursery.start_soon(on_ctrl_c)
                nursery.start_soon(bench)
        return EXIT_INTERRUPTED if report.interrupted else 0

    code = run_command("bench", main, args.base_url)
    if not report.scenarios and code != EXIT_INTERRUPTED:
        return code
    table = format_report(report)
    print(table, file=sys.stderr if args.json == "-" else sys.stdout, flush=True)
    try:
        if args.json is not None:
            dump_json(report.to_json(), args.json)
        if args.plot is not None:
            plot_report(report, args.plot)
            print(f"plot written to {args.plot}", file=sys.stderr)
    except (CommandError, OSError) as exc:
        print(f"tinkex-trio bench: {exc}", file=sys.stderr)
        return code or EXIT_FAILURE
    return code
