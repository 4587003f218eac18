"""Score samples from 32 threads at once through one blocking session: the shape of an RL rollout worker pool whose
reward functions are plain (blocking) Python.

    python examples/thread_pool_scoring.py                   # against a simulator started in a thread
    python examples/thread_pool_scoring.py --threads 32 --samples 256

Every thread calls ``sampler.sample(...)`` directly; the calls run concurrently in the session's trio thread
(one connection pool, one circuit breaker for all of them), and each thread scores what it got. At the end: the
throughput, and the request latency percentiles from the session's metrics.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor

from _common import base_parser, service_or_simulator

from tinkex_trio import blocking, types

TARGET = 42  # the reward: how often the model says 42


def score(sampler: blocking.SamplingClient, i: int) -> float:
    prompt = types.ModelInput.from_ints([1, 2, 3 + i % 5])
    result = sampler.sample(prompt, 1, types.SamplingParams(max_tokens=8, seed=i, temperature=1.0))
    tokens = result.sequences[0].tokens
    return tokens.count(TARGET) / max(len(tokens), 1)


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--samples", type=int, default=128)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        base_url, api_key = stack.enter_context(service_or_simulator(args))
        session = stack.enter_context(blocking.open_session(api_key, base_url, tags=["example", "threads"]))
        sampler = session.create_sampling_client(base_model=args.base_model)
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=args.threads) as pool:
            rewards = list(pool.map(lambda i: score(sampler, i), range(args.samples)))
        elapsed = time.monotonic() - started
        latency = session.metrics.summary("tinkex_request_duration_ms") or {}
        print(
            f"{len(rewards)} samples scored by {args.threads} threads in {elapsed:.2f} s "
            f"({len(rewards) / elapsed:.0f} samples/s), mean reward {sum(rewards) / len(rewards):.3f}"
        )
        print(
            f"request latency: p50 {latency.get('p50', 0):.1f} ms  p99 {latency.get('p99', 0):.1f} ms  "
            f"requests {latency.get('count', 0):.0f}"
        )


if __name__ == "__main__":
    main()
