"""Rollouts on a Ray cluster: actors, each holding a blocking session, sample in parallel from the weights the
driver publishes after each training step; the driver trains on the best rollouts (rejection-sampling fine-tuning)
and merges every actor's metrics into one exact p99.

    pip install -e '.[sim,ray]'
    python examples/ray_rollouts.py                          # a local Ray (ray.init()) and a simulator thread
    python examples/ray_rollouts.py --address auto --base-url https://... # a running Ray cluster, a real service

What is per process: each actor's session, its connection pools and its circuit breaker (an actor that cannot reach
the service fails fast on its own). What is shared: the server's state -- the model the driver trains, the sampler
weights it saves (the actors sample from them by path), and the checkpoints.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from _common import base_parser, service_or_simulator

import tinkex_trio as tx
from tinkex_trio import blocking, types

TARGET = 42
PROMPT = [1, 2, 3]
LATENCY = "tinkex_request_duration_ms"


def reward(tokens: list[int]) -> float:
    return tokens.count(TARGET) / max(len(tokens), 1)


def make_actor_class(ray: Any) -> Any:
    @ray.remote
    class RolloutActor:
        """One process, one session: samples from whatever sampler path the driver hands it."""

        def __init__(self, base_url: str, api_key: str | None) -> None:
            self.session = blocking.open_session(api_key, base_url, tags=["example", "ray-actor"])

        def rollouts(self, sampler_path: str, count: int, seed: int) -> list[list[int]]:
            sampler = self.session.create_sampling_client(model_path=sampler_path)
            params = types.SamplingParams(max_tokens=8, temperature=1.0, seed=seed)
            result = sampler.sample(types.ModelInput.from_ints(PROMPT), count, params)
            return [list(sequence.tokens) for sequence in result.sequences]

        def metrics(self) -> bytes:
            return self.session.metrics.encode()

        def close(self) -> None:
            self.session.close()

    return RolloutActor


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--address", default=None, help="a Ray cluster (default: start a local Ray)")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--rollouts", type=int, default=16, help="per actor and iteration")
    args = parser.parse_args()
    try:
        import ray
    except ImportError:
        raise SystemExit("this example needs Ray: pip install -e '.[ray]'") from None

    with contextlib.ExitStack() as stack:
        base_url, api_key = stack.enter_context(service_or_simulator(args))
        api_key = api_key or os.environ.get("TINKER_API_KEY")  # the actors may not share this environment
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False, num_cpus=args.actors)
        stack.callback(ray.shutdown)
        actor_class = make_actor_class(ray)
        actors = [actor_class.remote(base_url, api_key) for _ in range(args.actors)]
        session = stack.enter_context(blocking.open_session(api_key, base_url, tags=["example", "ray-driver"]))
        trainer = session.create_lora_training_client(args.base_model, rank=args.rank, seed=args.seed)
        adam = types.AdamParams(learning_rate=0.05)
        for iteration in range(args.iterations):
            path = trainer.save_weights_for_sampler(f"ray-{iteration}")  # published: the actors sample from it
            batches = ray.get(
                [
                    actor.rollouts.remote(path, args.rollouts, seed=iteration * 1000 + i)
                    for i, actor in enumerate(actors)
                ]
            )
            rollouts = [tokens for batch in batches for tokens in batch]
            rewards = [reward(tokens) for tokens in rollouts]
            mean = sum(rewards) / len(rewards)
            print(f"iteration {iteration}  rollouts {len(rollouts)}  mean reward {mean:.3f}", flush=True)
            # Train on the better half, and on the target itself so the reward has somewhere to go.
            best = sorted(zip(rewards, rollouts, strict=True), reverse=True)[: len(rollouts) // 2]
            data = [
                types.datum(PROMPT + tokens[:-1], target_tokens=PROMPT[1:] + tokens, weights=[1.0] * (len(tokens) + 2))
                for _, tokens in best
                if tokens
            ]
            data.append(types.datum(PROMPT + [TARGET] * 7, target_tokens=PROMPT[1:] + [TARGET] * 8, weights=[1.0] * 10))
            trainer.forward_backward(data, "cross_entropy")
            trainer.optim_step(adam)
        blobs = ray.get([actor.metrics.remote() for actor in actors])
        ray.get([actor.close.remote() for actor in actors])
    merged = tx.Metrics.merge(blobs).summary(LATENCY) or {}
    print(
        f"actors' requests: {merged.get('count', 0):.0f}, p50 {merged.get('p50', 0):.1f} ms, "
        f"p99 {merged.get('p99', 0):.1f} ms (merged exactly from {len(blobs)} processes)"
    )


if __name__ == "__main__":
    main()
