"""Codec benchmark: tinkex_trio.types (msgspec JSON) against the official tinker SDK's own paths.

Run with ``python benchmarks/bench_codec.py [--runs N] [--datums D] [--tokens T]``. Prints a table and writes
JSON to ``benchmarks/results/bench_codec-<timestamp>.json``.

Workloads (default 256 datums x 1024 tokens):

* encode a forward_backward request (cross_entropy: ``target_tokens`` int64 + ``weights`` float32 per datum);
* decode a ForwardBackwardOutput (one float32 ``logprobs`` tensor of 1024 per datum);
* decode a SampleResponse of matching size (256 sequences x 1024 tokens, with logprobs).

Paths timed (objects are built beforehand; only the (de)serialisation is timed, best of N runs):

* ours (json): ``tinkex_trio.types.encode`` / ``decode`` (msgspec);
* ours (proto): ``tinkex_trio._proto._codec`` (the protobuf converters over the same types), when present;
* tinker pydantic JSON: the SDK's pydantic models (``ForwardBackwardInput.model_dump_json(exclude_none=True)``,
  ``model_validate_json`` over its pydantic ``TensorData``). 0.38.0 has no pydantic SampleResponse (its sample
  results are protobuf-only), so that cell is n/a;
* tinker proto: ``tinker.proto.request_conv.forward_backward_request_to_proto(...).SerializeToString()`` and
  ``tinker.proto.response_conv.deserialize_*`` (the SDK's real wire path in 0.38.0).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import numpy as np
from _report import write_report  # benchmarks/ is on sys.path when run

import tinkex_trio.types as tt


def best_of(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
    """(best, median) wall time in seconds over ``runs`` calls, GC paused during each call."""
    times: list[float] = []
    for _ in range(runs):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        finally:
            gc.enable()
    return min(times), statistics.median(times)


def make_arrays(datums: int, tokens: int, seed: int = 0) -> dict[str, list[np.ndarray[Any, Any]]]:
    rng = np.random.default_rng(seed)
    return {
        "inputs": [rng.integers(0, 150_000, tokens, dtype=np.int64) for _ in range(datums)],
        "targets": [rng.integers(0, 150_000, tokens, dtype=np.int64) for _ in range(datums)],
        "weights": [rng.random(tokens, dtype=np.float32) for _ in range(datums)],
        "logprobs": [-rng.random(tokens, dtype=np.float32) * 10 for _ in range(datums)],
    }


# -- ours -------------------------------------------------------------------------------------------------------


def ours_fwdbwd_request(a: dict[str, list[np.ndarray[Any, Any]]]) -> tt.ForwardBackwardRequest:
    data = [
        tt.datum(inp, target_tokens=tgt, weights=w)
        for inp, tgt, w in zip(a["inputs"], a["targets"], a["weights"], strict=True)
    ]
    fbi = tt.ForwardBackwardInput(data=data, loss_fn="cross_entropy")
    return tt.ForwardBackwardRequest(forward_backward_input=fbi, model_id="s1:train:0", seq_id=1)


def ours_fwdbwd_output_json(a: dict[str, list[np.ndarray[Any, Any]]]) -> bytes:
    out = tt.ForwardBackwardOutput(
        loss_fn_output_type="TensorData",
        loss_fn_outputs=[{"logprobs": tt.TensorData.from_numpy(lp)} for lp in a["logprobs"]],
        metrics={"loss:sum": 1234.5},
    )
    return tt.encode(out)


def ours_sample_response_json(a: dict[str, list[np.ndarray[Any, Any]]]) -> bytes:
    seqs = [
        tt.SampledSequence(stop_reason="length", sequence_id=f"q{i}", tokens=t.tolist(), logprobs=lp.tolist())
        for i, (t, lp) in enumerate(zip(a["targets"], a["logprobs"], strict=True))
    ]
    return tt.encode(tt.SampleResponse(sequences=seqs, prompt_cache_hit_tokens=0))


# -- the official SDK -------------------------------------------------------------------------------------------


def tinker_pydantic_fwdbwd_input(a: dict[str, list[np.ndarray[Any, Any]]]) -> Any:
    from tinker.types._pydantic_types.forward_backward_input import ForwardBackwardInput as PydFBI

    return PydFBI.model_validate(
        {
            "data": [
                {
                    "model_input": {"chunks": [{"type": "encoded_text", "tokens": inp.tolist()}]},
                    "loss_fn_inputs": {
                        "target_tokens": {"data": tgt.tolist(), "dtype": "int64", "shape": [len(tgt)]},
                        "weights": {"data": w.tolist(), "dtype": "float32", "shape": [len(w)]},
                    },
                }
                for inp, tgt, w in zip(a["inputs"], a["targets"], a["weights"], strict=True)
            ],
            "loss_fn": "cross_entropy",
        }
    )


def tinker_fwdbwd_request(a: dict[str, list[np.ndarray[Any, Any]]]) -> Any:
    from tinker import types as sdk

    data = [
        sdk.Datum(
            model_input=sdk.ModelInput.from_ints(inp.tolist()), loss_fn_inputs={"target_tokens": tgt, "weights": w}
        )
        for inp, tgt, w in zip(a["inputs"], a["targets"], a["weights"], strict=True)
    ]
    fbi = sdk.ForwardBackwardInput(data=data, loss_fn="cross_entropy")
    return sdk.ForwardBackwardRequest(forward_backward_input=fbi, model_id="s1:train:0", seq_id=1)


def tinker_fwdbwd_output_model() -> Any:
    """A pydantic model of the JSON ForwardBackwardOutput built from the SDK's own pydantic TensorData."""
    import pydantic
    from tinker.types._pydantic_types.tensor_data import TensorData as PydTensorData

    class PydForwardBackwardOutput(pydantic.BaseModel):
        loss_fn_output_type: str
        loss_fn_outputs: list[dict[str, PydTensorData]]
        metrics: dict[str, float] = {}

    return PydForwardBackwardOutput


def tinker_fwdbwd_output_proto(a: dict[str, list[np.ndarray[Any, Any]]]) -> bytes:
    from tinker.proto import tinker_public_pb2 as pb

    msg = pb.ForwardBackwardOutput(loss_fn_output_type="tinker.types:TensorData")
    msg.metrics["loss:sum"] = 1234.5
    rec = msg.loss_fn_outputs.add(type_tag="TensorData", num_datums=len(a["logprobs"]))
    bt = rec.fields["logprobs"]
    bt.dtype = pb.DTYPE_FLOAT32
    bt.data = b"".join(lp.astype("<f4").tobytes() for lp in a["logprobs"])
    sizes = np.array([0] + [lp.nbytes for lp in a["logprobs"]], dtype=np.int64)
    bt.offsets = np.cumsum(sizes).astype("<i8").tobytes()
    return msg.SerializeToString()


def tinker_sample_response_proto(a: dict[str, list[np.ndarray[Any, Any]]]) -> bytes:
    from tinker.proto import tinker_public_pb2 as pb

    msg = pb.SampleResponse(prompt_cache_hit_tokens=0)
    for t, lp in zip(a["targets"], a["logprobs"], strict=True):
        msg.sequences.add(
            stop_reason=pb.STOP_REASON_LENGTH, tokens=t.astype("<i4").tobytes(), logprobs=lp.astype("<f4").tobytes()
        )
    return msg.SerializeToString()


def load_ours_proto() -> Any:
    """tinkex_trio's protobuf converters (``tinkex_trio._proto._codec``), if present."""
    try:
        from tinkex_trio._proto import _codec
    except ImportError:
        return None
    return _codec


# -- the run ---------------------------------------------------------------------------------------------------


def run(runs: int, datums: int, tokens: int) -> dict[str, Any]:
    from tinker import types as sdk
    from tinker.proto.request_conv import forward_backward_request_to_proto
    from tinker.proto.response_conv import deserialize_forward_backward_output, deserialize_sample_response

    a = make_arrays(datums, tokens)
    ours_proto = load_ours_proto()
    rows: list[dict[str, Any]] = []

    def row(workload: str, path: str, fn: Callable[[], Any], nbytes: int | None, n: int = runs) -> None:
        best, median = best_of(fn, n)
        rows.append({"workload": workload, "path": path, "best_s": best, "median_s": median, "bytes": nbytes})
        print(f"  {workload:<28} {path:<22} best {best * 1e3:9.2f} ms   median {median * 1e3:9.2f} ms", flush=True)

    print(f"bench_codec: {datums} datums x {tokens} tokens, best of {runs}", flush=True)

    # 1. encode a forward_backward request
    ours_req = ours_fwdbwd_request(a)
    ours_body = tt.encode(ours_req)
    row("encode fwd_bwd request", "ours (json)", lambda: tt.encode(ours_req), len(ours_body))
    row(
        "encode fwd_bwd request",
        "ours build+encode",
        lambda: tt.encode(ours_fwdbwd_request(a)),
        len(ours_body),
    )
    if ours_proto is not None:
        fbi = ours_req.forward_backward_input
        row(
            "encode fwd_bwd request",
            "ours (proto)",
            lambda: ours_proto.encode_forward_backward_request(
                ours_req.model_id, 1, fbi.data, fbi.loss_fn, fbi.loss_fn_config, False
            ),
            len(ours_proto.encode_forward_backward_request(ours_req.model_id, 1, fbi.data, fbi.loss_fn, None, False)),
        )
    pyd_fbi = tinker_pydantic_fwdbwd_input(a)
    pyd_body = pyd_fbi.model_dump_json(exclude_none=True)
    row(
        "encode fwd_bwd request",
        "tinker pydantic json",
        lambda: pyd_fbi.model_dump_json(exclude_none=True),
        len(pyd_body),
    )
    sdk_req = tinker_fwdbwd_request(a)
    proto_body = forward_backward_request_to_proto(sdk_req).SerializeToString()
    row(
        "encode fwd_bwd request",
        "tinker proto",
        lambda: forward_backward_request_to_proto(sdk_req).SerializeToString(),
        len(proto_body),
    )
    # sanity: both JSON bodies carry the same data
    assert (
        json.loads(ours_body)["forward_backward_input"]["data"][0]["loss_fn_inputs"]["target_tokens"]["data"]
        == (json.loads(pyd_body)["data"][0]["loss_fn_inputs"]["target_tokens"]["data"])
    )

    # 2. decode a ForwardBackwardOutput
    fbo_json = ours_fwdbwd_output_json(a)
    row(
        "decode ForwardBackwardOutput",
        "ours (json)",
        lambda: tt.decode(tt.ForwardBackwardOutput, fbo_json),
        len(fbo_json),
    )
    fbo_proto = tinker_fwdbwd_output_proto(a)
    if ours_proto is not None:
        row(
            "decode ForwardBackwardOutput",
            "ours (proto)",
            lambda: ours_proto.decode_forward_backward_output(fbo_proto),
            len(fbo_proto),
        )
    pyd_fbo = tinker_fwdbwd_output_model()
    row(
        "decode ForwardBackwardOutput",
        "tinker pydantic json",
        lambda: pyd_fbo.model_validate_json(fbo_json),
        len(fbo_json),
    )
    fbo_proto = tinker_fwdbwd_output_proto(a)
    row(
        "decode ForwardBackwardOutput",
        "tinker proto",
        lambda: deserialize_forward_backward_output(fbo_proto),
        len(fbo_proto),
    )
    ours_fbo = tt.decode(tt.ForwardBackwardOutput, fbo_json)
    theirs_fbo = deserialize_forward_backward_output(fbo_proto)
    np.testing.assert_array_equal(
        ours_fbo.loss_fn_outputs[7]["logprobs"].to_numpy(), theirs_fbo.loss_fn_outputs[7]["logprobs"].to_numpy()
    )
    # Touching the values as numpy (what a trainer does next) is part of a fair comparison for the proto path,
    # whose TensorData already holds numpy arrays.
    row(
        "decode FBO + to_numpy",
        "ours (json)",
        lambda: [o["logprobs"].to_numpy() for o in tt.decode(tt.ForwardBackwardOutput, fbo_json).loss_fn_outputs],
        len(fbo_json),
    )
    if ours_proto is not None:
        row(
            "decode FBO + to_numpy",
            "ours (proto)",
            lambda: [
                o["logprobs"].to_numpy() for o in ours_proto.decode_forward_backward_output(fbo_proto).loss_fn_outputs
            ],
            len(fbo_proto),
        )
    row(
        "decode FBO + to_numpy",
        "tinker proto",
        lambda: [o["logprobs"].to_numpy() for o in deserialize_forward_backward_output(fbo_proto).loss_fn_outputs],
        len(fbo_proto),
    )

    # 3. decode a SampleResponse
    sr_json = ours_sample_response_json(a)
    row("decode SampleResponse", "ours (json)", lambda: tt.decode(tt.SampleResponse, sr_json), len(sr_json))
    sr_proto = tinker_sample_response_proto(a)
    ids = [f"q{i}" for i in range(datums)]
    if ours_proto is not None:
        row(
            "decode SampleResponse",
            "ours (proto)",
            lambda: ours_proto.decode_sample_response(sr_proto, ids),
            len(sr_proto),
        )
    row("decode SampleResponse", "tinker proto", lambda: deserialize_sample_response(sr_proto), len(sr_proto))
    row(
        "decode SampleResponse + lists",
        "ours (json)",
        lambda: [(s.tokens, s.logprobs) for s in tt.decode(tt.SampleResponse, sr_json).sequences],
        len(sr_json),
    )
    if ours_proto is not None:
        row(
            "decode SampleResponse + lists",
            "ours (proto)",
            lambda: [(s.tokens, s.logprobs) for s in ours_proto.decode_sample_response(sr_proto, ids).sequences],
            len(sr_proto),
        )
    row(
        "decode SampleResponse + lists",
        "tinker proto",
        lambda: [(s.tokens, s.logprobs) for s in deserialize_sample_response(sr_proto).sequences],
        len(sr_proto),
    )
    ours_sr = tt.decode(tt.SampleResponse, sr_json)
    theirs_sr = deserialize_sample_response(sr_proto)
    assert ours_sr.sequences[3].tokens == theirs_sr.sequences[3].tokens
    assert isinstance(sdk.SampleResponse, type)

    return {
        "benchmark": "bench_codec",
        "timestamp": datetime.now(UTC).isoformat(),
        "params": {"runs": runs, "datums": datums, "tokens": tokens},
        "versions": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            **{name: metadata.version(name) for name in ("numpy", "msgspec", "pydantic", "protobuf", "tinker")},
        },
        "rows": rows,
    }


def ratios(result: dict[str, Any]) -> list[dict[str, Any]]:
    """tinker time / our time for each workload and each tinker path (> 1 means we are faster)."""
    out: list[dict[str, Any]] = []
    by_workload: dict[str, dict[str, float]] = {}
    for r in result["rows"]:
        by_workload.setdefault(r["workload"], {})[r["path"]] = r["best_s"]
    for workload, paths in by_workload.items():
        for ours_path in ("ours (json)", "ours (proto)"):
            ours = paths.get(ours_path)
            for path, t in paths.items():
                if path.startswith("tinker") and ours:
                    out.append(
                        {
                            "workload": workload,
                            "tinker_path": path,
                            "ours_path": ours_path,
                            "tinker_over_ours": t / ours,
                        }
                    )
    return out


def print_table(result: dict[str, Any]) -> None:
    print()
    print(f"{'workload':<30} {'path':<22} {'best ms':>10} {'median ms':>10} {'bytes':>11}")
    print("-" * 87)
    for r in result["rows"]:
        nbytes = "" if r["bytes"] is None else f"{r['bytes']:,}"
        print(
            f"{r['workload']:<30} {r['path']:<22} {r['best_s'] * 1e3:>10.2f} {r['median_s'] * 1e3:>10.2f} {nbytes:>11}"
        )
    print()
    print(f"{'workload':<30} {'tinker path':<22} {'ours path':<14} {'tinker/ours':>11}")
    print("-" * 80)
    for q in result["ratios"]:
        print(f"{q['workload']:<30} {q['tinker_path']:<22} {q['ours_path']:<14} {q['tinker_over_ours']:>10.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7, help="runs per cell; the best is reported (default 7)")
    parser.add_argument("--datums", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/*.json")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    result = run(args.runs, args.datums, args.tokens)
    result["ratios"] = ratios(result)
    result["elapsed_s"] = time.perf_counter() - t0
    print_table(result)
    if not args.no_write:
        write_report("bench_codec", result)
    print(f"({result['elapsed_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
