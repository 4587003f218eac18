"""Supervised fine-tuning: teach a LoRA model a repeating token pattern, then sample from it.

Run it as is and it starts the simulated Tinker server in-process (``tinkex_trio.sim``) and trains against that::

    python examples/sl_loop.py
    python examples/sl_loop.py --steps 40 --learning-rate 0.02
    TINKER_API_KEY=tml-... python examples/sl_loop.py --base-url https://...   # a real Tinker service

Each step submits a ``forward_backward`` (cross-entropy on every position) and the ``optim_step`` that applies its
gradients, back to back -- the server runs them in order, so the second submission need not wait for the first
result -- then waits for both and prints the loss per token. The loss falls as the model learns the pattern; at the
end, greedy samples from the trained weights continue it.
"""

from __future__ import annotations

import argparse

from _common import base_parser, main

import tinkex_trio as tx
from tinkex_trio import types

PATTERN = [11, 27, 42, 5, 63, 88, 19, 70]
SEQUENCE_LEN = 33
NUM_SEQUENCES = 4


def make_data() -> tuple[list[types.Datum], int]:
    """``NUM_SEQUENCES`` windows of the repeated pattern, each starting at another phase; and their token count."""
    data: list[types.Datum] = []
    tokens_total = 0
    for start in range(NUM_SEQUENCES):
        tokens = [PATTERN[(start + i) % len(PATTERN)] for i in range(SEQUENCE_LEN)]
        # Position i reads tokens[i] and is trained to predict tokens[i + 1].
        data.append(types.datum(tokens[:-1], target_tokens=tokens[1:], weights=[1.0] * (len(tokens) - 1)))
        tokens_total += len(tokens) - 1
    return data, tokens_total


async def train(base_url: str, api_key: str | None, args: argparse.Namespace) -> None:
    data, tokens_total = make_data()
    adam = types.AdamParams(learning_rate=args.learning_rate)
    async with tx.open_session(api_key=api_key, base_url=base_url, tags=["example", "sl_loop"]) as session:
        trainer = await session.create_lora_training_client(args.base_model, rank=args.rank, seed=args.seed)
        print(f"model {trainer.model_id}: {len(data)} sequences, {tokens_total} target tokens per step")
        losses: list[float] = []
        for step in range(1, args.steps + 1):
            fwdbwd_future = await trainer.submit_forward_backward(data, "cross_entropy")
            optim_future = await trainer.submit_optim_step(adam)
            output = await fwdbwd_future.result()
            await optim_future.result()
            loss = output.metrics["loss:sum"] / tokens_total
            losses.append(loss)
            print(f"step {step:3d}  loss {loss:.4f}", flush=True)

        sampler = await trainer.save_weights_and_get_sampling_client("sl-loop-final")
        prompt = PATTERN[:3]
        result = await sampler.sample(
            types.ModelInput.from_ints(prompt),
            num_samples=1,
            sampling_params=types.SamplingParams(max_tokens=len(PATTERN), temperature=0.0, stop=[]),
        )
        continuation = result.sequences[0].tokens
        expected = [PATTERN[(len(prompt) + i) % len(PATTERN)] for i in range(len(continuation))]
        hits = sum(a == b for a, b in zip(continuation, expected, strict=True))
        print(f"prompt {prompt} -> sampled {continuation} ({hits}/{len(expected)} follow the pattern)")
        print(f"loss per token {losses[0]:.4f} -> {losses[-1]:.4f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--learning-rate", type=float, default=0.02)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(train, parse_args())
