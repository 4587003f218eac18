"""Four worker processes, each with its own session, and one exact p99 over all of them.

    python examples/multiprocess_metrics.py                  # against a simulator started in a thread
    python examples/multiprocess_metrics.py --workers 4 --samples 40

Each worker (``multiprocessing``, spawned) opens a blocking session of its own -- its own connection pools and
circuit breaker: those are per process -- samples, and returns ``session.metrics.encode()``. The parent merges the
blobs with ``tinkex_trio.Metrics.merge``: the histograms merge bucket by bucket, so the percentiles printed are those
of one process that saw every request (and the merged count is the sum of the workers').
"""

from __future__ import annotations

import contextlib
import multiprocessing

from _common import base_parser, service_or_simulator

import tinkex_trio as tx
from tinkex_trio import blocking, types

LATENCY = "tinkex_request_duration_ms"


def worker(job: tuple[int, str, str | None, str, int]) -> bytes:
    index, base_url, api_key, base_model, samples = job
    with blocking.open_session(api_key, base_url, tags=["example", f"worker-{index}"]) as session:
        sampler = session.create_sampling_client(base_model=base_model)
        for i in range(samples):
            sampler.sample(types.ModelInput.from_ints([1, 2, 3]), 1, types.SamplingParams(max_tokens=4, seed=i))
        return session.metrics.encode()


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        base_url, api_key = stack.enter_context(service_or_simulator(args))
        jobs = [(i, base_url, api_key, args.base_model, args.samples) for i in range(args.workers)]
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            blobs = pool.map(worker, jobs)
    merged = tx.Metrics.merge(blobs)
    counts = [tx.Metrics.merge([blob]).summary(LATENCY) or {} for blob in blobs]
    total = merged.summary(LATENCY) or {}
    for i, each in enumerate(counts):
        print(f"worker {i}: {each.get('count', 0):.0f} requests, p99 {each.get('p99', 0):.1f} ms")
    print(
        f"merged:   {total.get('count', 0):.0f} requests, p50 {total.get('p50', 0):.1f} ms, "
        f"p99 {total.get('p99', 0):.1f} ms"
    )
    assert total.get("count") == sum(each.get("count", 0) for each in counts)


if __name__ == "__main__":
    main()
