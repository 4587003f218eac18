"""Reinforcement learning: sample, score, and push the policy toward the samples that scored well.

Run it as is and it starts the simulated Tinker server in-process (``tinkex_trio.sim``)::

    python examples/rl_loop.py
    python examples/rl_loop.py --loss ppo --iterations 30
    TINKER_API_KEY=tml-... python examples/rl_loop.py --base-url https://...   # a real Tinker service

Every iteration:

1. snapshot the current weights into a sampling client (``save_weights_and_get_sampling_client``);
2. sample a group of continuations of a fixed prompt;
3. reward each one with the fraction of its tokens that belong to a target pattern;
4. turn rewards into advantages (reward minus the group mean: better than average is pushed up);
5. ``forward_backward`` with the ``importance_sampling`` (or ``ppo``) loss, fed the sampler's own logprobs, and an
   ``optim_step``.

The mean reward printed per iteration rises as the policy learns to stay on the pattern.
"""

from __future__ import annotations

import argparse

from _common import base_parser, main

import tinkex_trio as tx
from tinkex_trio import types

PATTERN = [11, 27, 42, 5, 63, 88, 19, 70]
TARGET = frozenset(PATTERN)
PROMPT = PATTERN[:4]


def reward(tokens: list[int]) -> float:
    """The fraction of sampled tokens that are tokens of the pattern."""
    return sum(token in TARGET for token in tokens) / len(tokens) if tokens else 0.0


def make_datum(sequence: types.SampledSequence, advantage: float) -> types.Datum:
    """A training example for one sample: the prompt and the sample, scored only where the sample was generated.

    Position ``i`` reads ``tokens[i]`` and predicts ``tokens[i + 1]``; the prompt positions get zero advantage (they
    were not sampled) and the sampled ones the sequence's advantage, next to the sampler's logprob of each token.
    """
    sampled = sequence.tokens
    sampler_logprobs = sequence.logprobs
    if sampler_logprobs is None or len(sampler_logprobs) != len(sampled):
        raise RuntimeError("the sampler did not return a logprob per sampled token")
    tokens = PROMPT + sampled
    n_prompt = len(PROMPT) - 1  # predictions of prompt tokens (from the prompt itself)
    return types.datum(
        tokens[:-1],
        target_tokens=tokens[1:],
        logprobs=[0.0] * n_prompt + sampler_logprobs,
        advantages=[0.0] * n_prompt + [advantage] * len(sampled),
    )


async def train(base_url: str, api_key: str | None, args: argparse.Namespace) -> None:
    adam = types.AdamParams(learning_rate=args.learning_rate)
    loss_fn_config = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2} if args.loss == "ppo" else None
    async with tx.open_session(api_key=api_key, base_url=base_url, tags=["example", "rl_loop"]) as session:
        trainer = await session.create_lora_training_client(args.base_model, rank=args.rank, seed=args.seed)
        print(f"model {trainer.model_id}: {args.group_size} samples of {args.max_tokens} tokens per iteration")
        for iteration in range(1, args.iterations + 1):
            sampler = await trainer.save_weights_and_get_sampling_client()
            result = await sampler.sample(
                types.ModelInput.from_ints(PROMPT),
                num_samples=args.group_size,
                sampling_params=types.SamplingParams(
                    max_tokens=args.max_tokens, temperature=1.0, seed=args.seed * 100_003 + iteration, stop=[]
                ),
            )
            rewards = [reward(sequence.tokens) for sequence in result.sequences]
            mean_reward = sum(rewards) / len(rewards)
            data = [
                make_datum(sequence, r - mean_reward)
                for sequence, r in zip(result.sequences, rewards, strict=True)
                if r != mean_reward  # no advantage, no gradient: leave it out
            ]
            if not data:
                print(f"iter {iteration:3d}  reward {mean_reward:.3f}  (every sample scored the same: no update)")
                continue
            await trainer.forward_backward(data, args.loss, loss_fn_config)
            await trainer.optim_step(adam)
            print(f"iter {iteration:3d}  reward {mean_reward:.3f}  (best sample {max(rewards):.3f})", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__)
    parser.add_argument("--loss", choices=["importance_sampling", "ppo"], default="importance_sampling")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(train, parse_args())
