"""What the examples share: their common command-line options, and running against a service or the simulator."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Iterator

import trio

SIM_API_KEY = "tml-example-key"  # any tml- key works for the simulator

Train = Callable[[str, "str | None", argparse.Namespace], Awaitable[None]]


def base_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every example takes: --base-url, --base-model, --rank, --seed."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--base-url", help="a Tinker service (default: start the simulator in-process)")
    parser.add_argument("--base-model", default="meta-llama/Llama-3.2-1B")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    return parser


async def run(train: Train, args: argparse.Namespace) -> None:
    """``train`` against ``--base-url`` (key from TINKER_API_KEY), else against a simulator started in-process."""
    started = time.monotonic()
    if args.base_url:
        await train(args.base_url, None, args)
    else:
        from tinkex_trio.sim import SimConfig, open_sim_server  # needs the `sim` extra

        async with open_sim_server(SimConfig(seed=args.seed), tls=False) as server:
            print(f"simulated Tinker server at {server.base_url}")
            await train(server.base_url, SIM_API_KEY, args)
    print(f"done in {time.monotonic() - started:.1f} s")


def main(train: Train, args: argparse.Namespace) -> None:
    """Run the example; Ctrl-C ends it with one line and exit status 130, not a traceback."""
    try:
        trio.run(run, train, args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


@contextlib.contextmanager
def service_or_simulator(args: argparse.Namespace) -> Iterator[tuple[str, str | None]]:
    """For the blocking examples: ``(base_url, api_key)`` of ``--base-url`` (key from TINKER_API_KEY), else of a
    simulator served from a thread of its own for the duration of the ``with`` block."""
    if args.base_url:
        yield args.base_url, None
        return
    from tinkex_trio.sim import SimConfig, sim_server_in_thread  # needs the `sim` extra

    with sim_server_in_thread(SimConfig(seed=args.seed)) as server:
        print(f"simulated Tinker server at {server.base_url}")
        yield server.base_url, SIM_API_KEY
