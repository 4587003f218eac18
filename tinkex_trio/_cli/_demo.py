"""``tinkex-trio demo``: fine-tune the simulator's model on a repeating token pattern, in front of you.

Greedy samples before training, a progress bar while each step's ``forward_backward`` and ``optim_step`` are
pipelined, the loss curve drawn in the terminal, samples after training, and the session's metrics. The same loop as
``examples/sl_loop.py``, told as a story.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Final

from tinkex_trio import types
from tinkex_trio._cli._common import add_target_arguments, dump_json, open_target, quick_config, run_command
from tinkex_trio._cli._progress import open_progress
from tinkex_trio._sampling import SamplingClient
from tinkex_trio._session import open_session

__all__ = ["add_parser", "loss_chart"]

PATTERN: Final = (11, 27, 42, 5, 63, 88, 19, 70)
SEQUENCE_LEN: Final = 33
NUM_SEQUENCES: Final = 4
PROMPT_LEN: Final = 3
BASE_MODEL: Final = "meta-llama/Llama-3.2-1B"


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="fine-tune the simulator's model on a token pattern: progress, loss curve, samples before and after",
    )
    p.add_argument("--steps", type=_positive, default=30, help="training steps (default 30)")
    p.add_argument("--learning-rate", type=float, default=0.02, help="Adam learning rate (default 0.02)")
    p.add_argument("--base-model", default=BASE_MODEL, help=f"the model to fine-tune (default {BASE_MODEL})")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the losses, samples and metrics as JSON")
    p.add_argument("--plain", action="store_true", help="no live progress bar")
    add_target_arguments(p)
    p.set_defaults(func=cmd_demo)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _data() -> tuple[list[types.Datum], int]:
    data: list[types.Datum] = []
    for start in range(NUM_SEQUENCES):
        tokens = [PATTERN[(start + i) % len(PATTERN)] for i in range(SEQUENCE_LEN)]
        data.append(types.datum(tokens[:-1], target_tokens=tokens[1:], weights=[1.0] * (len(tokens) - 1)))
    return data, NUM_SEQUENCES * (SEQUENCE_LEN - 1)


def loss_chart(losses: list[float], *, height: int = 8, width: int = 60) -> list[str]:
    """The loss curve as text: log-scaled rows, one column per step (steps resampled to ``width`` columns)."""
    if not losses:
        return []
    n = min(width, len(losses))
    columns = [losses[min(len(losses) - 1, int(i * len(losses) / n))] for i in range(n)]
    logs = [math.log10(max(v, 1e-6)) for v in columns]
    top, bottom = max(logs), min(logs)
    span = (top - bottom) or 1.0
    levels = [round((v - bottom) / span * (height - 1)) for v in logs]
    lines: list[str] = []
    for row in range(height - 1, -1, -1):
        label = f"{10 ** (bottom + span * row / (height - 1)):>9.4f} |" if row in (0, height - 1) else " " * 10 + "|"
        lines.append(label + "".join("*" if level == row else " " for level in levels))
    lines.append(" " * 10 + "+" + "-" * len(levels))
    lines.append(" " * 11 + f"step 1{' ' * max(1, len(levels) - 12)}step {len(losses)}")
    return lines


async def _greedy(sampler: SamplingClient) -> tuple[list[int], int]:
    prompt = list(PATTERN[:PROMPT_LEN])
    result = await sampler.sample(
        types.ModelInput.from_ints(prompt),
        num_samples=1,
        sampling_params=types.SamplingParams(max_tokens=len(PATTERN), temperature=0.0, stop=[]),
    )
    tokens = [int(t) for t in result.sequences[0].tokens]
    expected = [PATTERN[(PROMPT_LEN + i) % len(PATTERN)] for i in range(len(tokens))]
    return tokens, sum(a == b for a, b in zip(tokens, expected, strict=True))


def cmd_demo(args: argparse.Namespace) -> int:
    async def main() -> int:
        async with open_target(args) as target:
            print(f"tinkex-trio demo on {target.describe()}")
            config = quick_config(target, retry={"max_retries": 10})
            async with open_session(config=config, tags=("tinkex-trio-demo",)) as session:
                return await _demo(args, session)

    return run_command("demo", main, args.base_url)


async def _demo(args: argparse.Namespace, session: Any) -> int:
    data, tokens_total = _data()
    trainer = await session.create_lora_training_client(args.base_model, rank=8, seed=0)
    prompt = list(PATTERN[:PROMPT_LEN])
    print(f"pattern {list(PATTERN)} (repeating); model {trainer.model_id}")
    before, hits_before = await _greedy(await trainer.save_weights_and_get_sampling_client("demo-before"))
    print(f"before: {prompt} -> {before}  ({hits_before}/{len(before)} follow the pattern)")
    adam = types.AdamParams(learning_rate=args.learning_rate)
    losses: list[float] = []
    with open_progress(plain=args.plain) as progress:
        task = progress.task("training", args.steps)
        for step in range(args.steps):
            fwdbwd = await trainer.submit_forward_backward(data, "cross_entropy")
            optim = await trainer.submit_optim_step(adam)
            output = await fwdbwd.result()
            await optim.result()
            losses.append(float(output.metrics["loss:sum"]) / tokens_total)
            task.update(step + 1, args.steps)
            task.status(f"loss {losses[-1]:.4f}")
        task.done()
    print(f"loss per token: {losses[0]:.4f} -> {losses[-1]:.4f}")
    for line in loss_chart(losses):
        print(line)
    after, hits_after = await _greedy(await trainer.save_weights_and_get_sampling_client("demo-after"))
    print(f"after:  {prompt} -> {after}  ({hits_after}/{len(after)} follow the pattern)")
    summary = _metrics_summary(session)
    print(
        f"metrics: {summary['requests']:.0f} requests, {summary['retries']:.0f} retries, request latency "
        f"p50 {summary['p50_ms']:.1f} ms / p99 {summary['p99_ms']:.1f} ms, circuit breaker {summary['breaker']}"
    )
    for endpoint, stats in summary["by_endpoint"].items():
        name = endpoint.removeprefix("/api/v1/")
        print(f"  {name:<26} {stats['count']:>5.0f} requests  p50 {stats['p50']:>7.1f} ms  p99 {stats['p99']:>7.1f} ms")
    if args.json is not None:
        dump_json(
            {
                "model_id": trainer.model_id,
                "losses": losses,
                "before": {"prompt": prompt, "tokens": before, "hits": hits_before},
                "after": {"prompt": prompt, "tokens": after, "hits": hits_after},
                "metrics": summary,
            },
            args.json,
        )
    sys.stdout.flush()
    return 0


def _metrics_summary(session: Any) -> dict[str, Any]:
    metrics = session.metrics
    overall: dict[str, float] = metrics.summary("tinkex_request_duration_ms") or {}
    by_endpoint: dict[str, dict[str, float]] = {}
    histograms: dict[str, dict[str, float]] = metrics.get_all_metrics()["histograms"]
    for key, stats in histograms.items():
        if key.startswith("tinkex_request_duration_ms") and 'endpoint="' in key:
            endpoint = key.split('endpoint="', 1)[1].split('"', 1)[0]
            merged = by_endpoint.setdefault(endpoint, {"count": 0.0, "p50": 0.0, "p99": 0.0})
            if stats["count"] > merged["count"]:  # the busiest series of the endpoint speaks for it
                merged.update(p50=stats["p50"], p99=stats["p99"])
            merged["count"] += stats["count"]
    return {
        "requests": metrics.counter_total("tinkex_requests_total"),
        "retries": metrics.counter_total("tinkex_retries_total"),
        "p50_ms": overall.get("p50", math.nan),
        "p99_ms": overall.get("p99", math.nan),
        "breaker": session.breaker.state.value,
        "by_endpoint": dict(sorted(by_endpoint.items(), key=lambda kv: -kv[1]["count"])),
    }
