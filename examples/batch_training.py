"""Request batching: the same forward_backward work sent three ways, timed against a simulator with network latency.

Run it as is and it starts the simulated Tinker server in-process with ``--latency-ms`` of latency injected before
every request reaches it (``tinkex_trio.sim.Latency``)::

    python examples/batch_training.py
    python examples/batch_training.py --items 24 --latency-ms 40

Three ways to run ``--items`` small cross-entropy calls, then an optimizer step:

1. **sequential**: one ``forward_backward`` after another, each awaited (one round trip per call, and its result);
2. **forward_backward_batch**: one call; items with the same loss and config are merged into as few requests as the
   chunk limits allow (each item still gets its own outputs and its exact ``loss:sum``);
3. **the batch window** (``[batching] coalesce = true``): the calls come from concurrent tasks, and those arriving
   within ``window_ms`` of each other are merged the same way.

It prints each way's wall time, how many forward_backward requests the server saw, and the cut against the sequential
run. The losses of the three runs agree (the work is the same; the model starts from the same seed each time).
``--partial`` also shows ``return_exceptions=True``: one bad item fails alone, the others are applied.
"""

from __future__ import annotations

import argparse
import math
import time

import trio
from _common import SIM_API_KEY, base_parser

import tinkex_trio as tx
from tinkex_trio import types

PATTERN = [11, 27, 42, 5, 63, 88, 19, 70]


def item(i: int) -> tuple[list[types.Datum], str, None]:
    tokens = [PATTERN[(i + k) % len(PATTERN)] for k in range(9)]
    return ([types.datum(tokens[:-1], target_tokens=tokens[1:], weights=[1.0] * 8)], "cross_entropy", None)


def requests_seen(session: tx.Session) -> int:
    counters = session.metrics.get_all_metrics()["counters"]
    return int(sum(v for k, v in counters.items() if k.startswith("tinkex_requests_total") and "forward_backward" in k))


async def one_way(base_url: str, api_key: str, args: argparse.Namespace, way: str) -> tuple[float, int, float]:
    """Run the items one way on a fresh model; return (seconds, forward_backward requests, total loss)."""
    batching = tx.BatchingConfig(coalesce=way == "window", window_ms=args.window_ms)
    config = tx.Config.create(api_key=api_key, base_url=base_url, batching=batching, tags=["example", "batching"])
    items = [item(i) for i in range(args.items)]
    async with tx.open_session(config=config) as session:
        trainer = await session.create_lora_training_client(args.base_model, rank=args.rank, seed=args.seed)
        started = time.monotonic()
        if way == "sequential":
            outs = [await trainer.forward_backward(d, loss, cfg) for d, loss, cfg in items]
        elif way == "batch":
            outs = await trainer.forward_backward_batch(items)
        else:
            results: list[types.ForwardBackwardOutput | None] = [None] * len(items)

            async def call(i: int) -> None:
                d, loss, cfg = items[i]
                results[i] = await trainer.forward_backward(d, loss, cfg)

            async with trio.open_nursery() as nursery:
                for i in range(len(items)):
                    nursery.start_soon(call, i)
            outs = [r for r in results if r is not None]
        await trainer.optim_step(types.AdamParams(learning_rate=0.01))
        elapsed = time.monotonic() - started
        return elapsed, requests_seen(session), sum(o.metrics["loss:sum"] for o in outs)


async def partial_failure(base_url: str, api_key: str, args: argparse.Namespace) -> None:
    config = tx.Config.create(api_key=api_key, base_url=base_url, batching=tx.BatchingConfig(enabled=False))
    async with tx.open_session(config=config) as session:
        trainer = await session.create_lora_training_client(args.base_model, rank=args.rank, seed=args.seed)
        items = [item(i) for i in range(4)]
        bad = types.datum([1, 2], target_tokens=[2, 3], weights=[1.0, math.inf])  # the server fails it
        items[2] = ([bad], "cross_entropy", None)
        results = await trainer.forward_backward_batch(items, return_exceptions=True)
        for i, result in enumerate(results):
            what = f"failed: {type(result).__name__}" if isinstance(result, Exception) else "applied"
            print(f"  item {i}: {what}")


async def main(args: argparse.Namespace) -> None:
    from tinkex_trio.sim import FaultConfig, Latency, SimConfig, open_sim_server  # needs the `sim` extra

    faults = FaultConfig(latency=Latency(seconds=args.latency_ms / 1000.0))
    async with open_sim_server(SimConfig(seed=args.seed, faults=faults), tls=False) as server:
        print(f"simulated Tinker server at {server.base_url}, {args.latency_ms:g} ms latency per request")
        print(f"{args.items} forward_backward items of 8 tokens, then one optim_step")
        figures: dict[str, tuple[float, int, float]] = {}
        for way, title in (("sequential", "sequential"), ("batch", "forward_backward_batch"), ("window", "window")):
            figures[way] = await one_way(server.base_url, SIM_API_KEY, args, way)
            seconds, requests, loss = figures[way]
            cut = 100.0 * (1.0 - seconds / figures["sequential"][0])
            print(f"{title:<24} {seconds:7.3f} s  {requests:3d} requests  loss {loss:.4f}  cut {cut:5.1f} %")
        if args.partial:
            print("return_exceptions=True with a bad item:")
            await partial_failure(server.base_url, SIM_API_KEY, args)


if __name__ == "__main__":
    parser = base_parser(__doc__)
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=25.0)
    parser.add_argument("--window-ms", type=float, default=5.0)
    parser.add_argument("--partial", action="store_true", help="also show return_exceptions=True")
    trio.run(main, parser.parse_args())
