"""The official ``tinker`` SDK's half of tests/test_equivalence_sampling.py: sampling with every option, as JSON.

Usage: ``python tests/equivalence_sampling_sdk_script.py BASE_URL SPEC_JSON``. SPEC_JSON holds ``base_model`` and
``calls``: a list of ``{"kind": "sample" | "compute_logprobs", "prompt", ...}``; a sample call has ``num_samples``,
``params`` (SamplingParams fields) and the options (``include_prompt_logprobs``, ``topk_prompt_logprobs``,
``topk_sample_logprobs``, ``target`` (``{"dense": [[...]]}`` or ``{"sparse": {data, shape, crow, col}}``),
``prompt_alt_tokens_k``, ``prompt_logprobs_last_n``). Prints one line ``RESULT <json>`` whose ``results`` hold, per
call, every number the SDK decoded (``render`` below; NaN as null); exits 1 with ``error`` set if anything failed.
"""

from __future__ import annotations

import json
import math
import sys
import traceback
from typing import Any

import numpy as np
import tinker
from tinker import types

API_KEY = "tml-equivalence-0123456789"


def _floats(values: Any) -> list[Any]:
    """A float array as nested lists, NaN as None."""
    out: list[Any] = np.asarray(values, dtype=np.float64).tolist()

    def clean(x: Any) -> Any:
        if isinstance(x, list):
            return [clean(v) for v in x]  # pyright: ignore[reportUnknownVariableType]
        return None if math.isnan(x) else x

    return clean(out)


def _topk(topk: Any) -> dict[str, Any] | None:
    if topk is None:
        return None
    return {"ids": np.asarray(topk.token_ids).tolist(), "logprobs": _floats(topk.logprobs)}


def _dense(td: Any, pad: float) -> Any:
    """The dense array of a TensorData, from its wire fields (the SDK densifies a sparse one only through torch)."""
    values = np.asarray(td.data, dtype=np.float32 if td.dtype == "float32" else np.int64)
    if td.sparse_crow_indices is None:
        return values.reshape(td.shape) if td.shape is not None else values
    out = np.full(td.shape, pad, dtype=values.dtype)
    rows = np.repeat(np.arange(len(td.sparse_crow_indices) - 1), np.diff(td.sparse_crow_indices))
    out[rows, np.asarray(td.sparse_col_indices, dtype=np.int64)] = values
    return out


def _tensor(td: Any, pad: float) -> dict[str, Any] | None:
    if td is None:
        return None
    dense = _dense(td, pad)
    return {
        "dtype": td.dtype,
        "dense": _floats(dense) if td.dtype == "float32" else dense.tolist(),
        "shape": list(td.shape) if td.shape is not None else None,
        "crow": td.sparse_crow_indices,
        "col": td.sparse_col_indices,
    }


def render(resp: Any) -> dict[str, Any]:
    alt = resp.prompt_alt_tokens
    return {
        "sequences": [
            {
                "stop_reason": s.stop_reason,
                "tokens": np.asarray(s.tokens_np).tolist(),
                "logprobs": _floats(s.logprobs_np) if s.logprobs_np is not None else None,
                "topk": _topk(s.topk_logprobs_np),
            }
            for s in resp.sequences
        ],
        "prompt_logprobs": _floats(resp.prompt_logprobs_np) if resp.prompt_logprobs_np is not None else None,
        "topk_prompt": _topk(resp.topk_prompt_logprobs_np),
        "target": _tensor(resp.target_prompt_logprobs, 0.0),
        "alt": None if alt is None else {"tokens": _tensor(alt.tokens, 0), "logprobs": _tensor(alt.logprobs, 0.0)},
    }


def _target(spec: dict[str, Any] | None) -> types.TensorData | None:
    if spec is None:
        return None
    if "dense" in spec:
        arr = np.asarray(spec["dense"], dtype=np.int64)
        return types.TensorData(data=arr.ravel().tolist(), dtype="int64", shape=list(arr.shape))
    sparse = spec["sparse"]
    return types.TensorData(
        data=sparse["data"],
        dtype="int64",
        shape=sparse["shape"],
        sparse_crow_indices=sparse["crow"],
        sparse_col_indices=sparse["col"],
    )


def run(base_url: str, spec: dict[str, Any], results: dict[str, Any]) -> None:
    service = tinker.ServiceClient(base_url=base_url, api_key=API_KEY)
    sampler = service.create_sampling_client(base_model=spec["base_model"]).result()
    out: list[Any] = []
    for call in spec["calls"]:
        prompt = types.ModelInput.from_ints(call["prompt"])
        if call["kind"] == "compute_logprobs":
            scores = sampler.compute_logprobs(
                prompt, prompt_logprobs_last_n=call.get("prompt_logprobs_last_n")
            ).result()
            out.append([None if x is None or math.isnan(x) else float(x) for x in scores])
            continue
        resp = sampler.sample(
            prompt=prompt,
            num_samples=call["num_samples"],
            sampling_params=types.SamplingParams(**call["params"]),
            include_prompt_logprobs=call.get("include_prompt_logprobs", False),
            topk_prompt_logprobs=call.get("topk_prompt_logprobs", 0),
            topk_sample_logprobs=call.get("topk_sample_logprobs", 0),
            target_prompt_logprobs=_target(call.get("target")),
            prompt_alt_tokens_k=call.get("prompt_alt_tokens_k", 0),
            prompt_logprobs_last_n=call.get("prompt_logprobs_last_n"),
        ).result()
        out.append(render(resp))
    results["results"] = out
    service.close("success").result()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: equivalence_sampling_sdk_script.py BASE_URL SPEC_JSON", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"sdk_version": tinker.__version__}
    try:
        run(argv[1], json.loads(argv[2]), results)
    except Exception as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
        results["traceback"] = traceback.format_exc()
        print("RESULT " + json.dumps(results), flush=True)
        return 1
    print("RESULT " + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
