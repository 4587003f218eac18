"""Acceptance: tinkex_trio and the official ``tinker`` SDK get the same numbers from every sampling option.

The same calls -- ``sample`` with ``include_prompt_logprobs``, ``topk_prompt_logprobs``, ``topk_sample_logprobs``,
``target_prompt_logprobs`` (dense and sparse CSR), ``prompt_alt_tokens_k`` and ``prompt_logprobs_last_n``, and
``compute_logprobs`` with and without ``prompt_logprobs_last_n`` -- run once through the official SDK 0.38.0 (in a
subprocess: tests/equivalence_sampling_sdk_script.py) against a fresh simulator, and once through tinkex_trio against
another fresh simulator with the same seed. Both results are rendered by the script's own ``render`` (our results have
the SDK's accessor names: ``tokens_np``, ``topk_logprobs_np``, ``prompt_logprobs_np``, ...), and must be equal, bit for
bit. A control run with another sampling seed must differ, so that the comparison can tell runs apart.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import trio
from _sdkrun import run_sdk_script
from equivalence_sampling_sdk_script import render

from tinkex_trio import types
from tinkex_trio._session import open_session
from tinkex_trio.sim import SimConfig, open_sim_server

SCRIPT = Path(__file__).resolve().parent / "equivalence_sampling_sdk_script.py"
RUN_LIMIT_S = 120.0
SIM_SEED = 4321
API_KEY = "tml-equivalence-0123456789"
PROMPT = [3, 17, 200, 41, 9, 128, 77, 5, 17, 200, 33, 1]
L = len(PROMPT)


def _dense_target() -> list[list[int]]:
    ids = np.full((L - 1, 3), -1, dtype=np.int64)
    ids[0] = [1, 2, 3]
    ids[5, 2] = 250
    ids[L - 2] = [7, -1, 8]
    return ids.tolist()


def _sparse_target() -> dict[str, Any]:
    ids = np.full((L - 1, 4), -1, dtype=np.int64)
    ids[1, 3] = 40
    ids[6, 0] = 41
    ids[6, 1] = 42
    td = types.TensorData.sparse_from_numpy(ids, pad_value=-1)
    return {"data": td.data, "shape": td.shape, "crow": td.sparse_crow_indices, "col": td.sparse_col_indices}


SPEC: dict[str, Any] = {
    "base_model": "meta-llama/Llama-3.2-1B",
    "calls": [
        {
            "kind": "sample",
            "prompt": PROMPT,
            "num_samples": 3,
            "params": {"max_tokens": 6, "seed": 7, "temperature": 0.8, "top_k": 20, "stop": []},
            "include_prompt_logprobs": True,
            "topk_prompt_logprobs": 3,
            "topk_sample_logprobs": 4,
            "target": {"dense": _dense_target()},
            "prompt_alt_tokens_k": 3,
            "prompt_logprobs_last_n": 5,
        },
        {
            "kind": "sample",
            "prompt": PROMPT,
            "num_samples": 1,
            "params": {"max_tokens": 4, "seed": 8, "temperature": 0.0, "stop": []},
            "topk_sample_logprobs": 2,
            "target": {"sparse": _sparse_target()},
            "prompt_alt_tokens_k": 2,
        },
        {
            "kind": "sample",
            "prompt": PROMPT[:5],
            "num_samples": 2,
            "params": {"max_tokens": 5, "seed": 9, "top_p": 0.9, "stop": []},
            "include_prompt_logprobs": True,
            "topk_prompt_logprobs": 2,
        },
        {"kind": "compute_logprobs", "prompt": PROMPT, "prompt_logprobs_last_n": 4},
        {"kind": "compute_logprobs", "prompt": PROMPT},
    ],
}


def _target(spec: dict[str, Any] | None) -> types.TensorData | None:
    if spec is None:
        return None
    if "dense" in spec:
        return types.TensorData.from_numpy(np.asarray(spec["dense"], dtype=np.int64))
    sparse = spec["sparse"]
    return types.TensorData(
        data=sparse["data"],
        dtype="int64",
        shape=sparse["shape"],
        sparse_crow_indices=sparse["crow"],
        sparse_col_indices=sparse["col"],
    )


async def run_sdk(spec: dict[str, Any]) -> list[Any]:
    out: list[Any] = (await run_sdk_script(SCRIPT, spec, sim_seed=SIM_SEED))["results"]
    return out


async def run_ours(spec: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    async with open_sim_server(SimConfig(seed=SIM_SEED), tls=True) as server:
        with trio.fail_after(RUN_LIMIT_S):
            async with open_session(API_KEY, server.base_url, ssl_context=server.client_ssl_context()) as session:
                sampler = await session.create_sampling_client(base_model=spec["base_model"])
                for call in spec["calls"]:
                    prompt = types.ModelInput.from_ints(call["prompt"])
                    if call["kind"] == "compute_logprobs":
                        scores = await sampler.compute_logprobs(
                            prompt, prompt_logprobs_last_n=call.get("prompt_logprobs_last_n")
                        )
                        out.append(scores)
                        continue
                    resp = await sampler.sample(
                        prompt,
                        call["num_samples"],
                        types.SamplingParams(**call["params"]),
                        include_prompt_logprobs=call.get("include_prompt_logprobs", False),
                        topk_prompt_logprobs=call.get("topk_prompt_logprobs", 0),
                        topk_sample_logprobs=call.get("topk_sample_logprobs", 0),
                        target_prompt_logprobs=_target(call.get("target")),
                        prompt_alt_tokens_k=call.get("prompt_alt_tokens_k", 0),
                        prompt_logprobs_last_n=call.get("prompt_logprobs_last_n"),
                    )
                    out.append(render(resp))
    # Through JSON, as the SDK's results came.
    rendered: list[Any] = json.loads(json.dumps(out))
    return rendered


def _numbers(value: Any) -> list[float]:
    """Every number in a rendered result, in order (None skipped)."""
    if isinstance(value, dict):
        return [x for k in sorted(value) for x in _numbers(value[k])]  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]  # pyright: ignore[reportUnknownVariableType]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    return [float(value)]


async def test_same_sampling_numbers_as_the_official_sdk() -> None:
    sdk = await run_sdk(SPEC)
    ours = await run_ours(SPEC)
    assert len(ours) == len(sdk) == len(SPEC["calls"])
    for i, (mine, theirs) in enumerate(zip(ours, sdk, strict=True)):
        assert mine == theirs, f"call {i} differs"
    first = ours[0]
    # Everything asked for came back, so the equality compares real numbers.
    assert first["target"]["shape"] == [L - 1, 3] and first["alt"]["tokens"]["shape"] == [L - 1, 3]
    assert all(s["topk"] is not None and len(s["topk"]["ids"]) == 6 for s in first["sequences"])
    assert first["prompt_logprobs"][: L - 5] == [None] * (L - 5) and None not in first["prompt_logprobs"][L - 5 :]
    assert ours[1]["target"]["crow"] is not None  # the sparse request was answered sparse, to both clients
    assert ours[3][: L - 4] == [None] * (L - 4) and all(x is not None for x in ours[3][L - 4 :])
    numbers = _numbers(ours)
    assert len(numbers) > 500 and all(math.isfinite(x) for x in numbers)

    # Control: another sampling seed samples other tokens, and the comparison sees it.
    other = copy.deepcopy(SPEC)
    other["calls"] = [dict(SPEC["calls"][0], params=dict(SPEC["calls"][0]["params"], seed=70))]
    changed = await run_ours(other)
    assert changed[0]["sequences"] != sdk[0]["sequences"]
    assert changed[0]["prompt_logprobs"] == sdk[0]["prompt_logprobs"]  # the prompt's scores do not depend on it
