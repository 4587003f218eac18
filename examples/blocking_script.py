"""The supervised loop of ``sl_loop.py`` as a plain script: ``tinkex_trio.blocking``, no ``async``, no ``await``.

    python examples/blocking_script.py                       # against a simulator started in a thread
    TINKER_API_KEY=tml-... python examples/blocking_script.py --base-url https://...

The session runs in a trio thread of its own; each call waits for its answer in the calling thread, and
``submit_*`` returns a future whose ``result()`` blocks, so the forward_backward and its optim_step are still sent
back to back.
"""

from __future__ import annotations

import contextlib
import time

from _common import base_parser, service_or_simulator

from tinkex_trio import blocking, types

PATTERN = [11, 27, 42, 5, 63, 88, 19, 70]


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    args = parser.parse_args()
    started = time.monotonic()
    data = []
    for start in range(4):
        tokens = [PATTERN[(start + i) % len(PATTERN)] for i in range(33)]
        data.append(types.datum(tokens[:-1], target_tokens=tokens[1:], weights=[1.0] * 32))
    with contextlib.ExitStack() as stack:
        base_url, api_key = stack.enter_context(service_or_simulator(args))
        session = stack.enter_context(blocking.open_session(api_key, base_url, tags=["example", "blocking"]))
        trainer = session.create_lora_training_client(args.base_model, rank=args.rank, seed=args.seed)
        adam = types.AdamParams(learning_rate=args.learning_rate)
        for step in range(1, args.steps + 1):
            fwdbwd = trainer.submit_forward_backward(data, "cross_entropy")
            optim = trainer.submit_optim_step(adam)
            loss = fwdbwd.result().metrics["loss:sum"] / (32 * len(data))
            optim.result()
            print(f"step {step:3d}  loss {loss:.4f}", flush=True)
        sampler = trainer.save_weights_and_get_sampling_client("blocking-final")
        result = sampler.sample(
            types.ModelInput.from_ints(PATTERN[:3]), 1, types.SamplingParams(max_tokens=8, temperature=0.0)
        )
        print("sample:", PATTERN[:3], "->", result.sequences[0].tokens)
    print(f"done in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
