"""Conversions between the wire types and the numpy model: requests into arrays, results into responses.

`FwdBwdPayload` and `SamplePayload` are what a forward_backward or sample future holds once it has run; the futures
handlers render them as JSON or protobuf with `fwdbwd_output` and `sample_response`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tinkex_trio import types as t
from tinkex_trio.sim._model_types import DatumArrays, FwdBwdResult, SampleResult, SimUserError, TopK

__all__ = [
    "FwdBwdPayload",
    "SamplePayload",
    "datum_arrays",
    "fwdbwd_output",
    "model_input_length",
    "prompt_tokens",
    "sample_response",
    "stop_spec",
]


@dataclass
class FwdBwdPayload:
    result: FwdBwdResult


@dataclass
class SamplePayload:
    result: SampleResult
    sequence_ids: list[str]
    target_layout: t.TensorData | None = None
    """The request's ``target_prompt_logprobs``: a sparse one is answered in its own sparse layout."""


def model_input_length(model_input: t.ModelInput) -> int:
    total = 0
    for chunk in model_input.chunks:
        if isinstance(chunk, t.EncodedTextChunk):
            total += len(chunk.tokens)
        else:
            with contextlib.suppress(Exception):
                total += int(chunk.length)
    return total


def prompt_tokens(model_input: t.ModelInput) -> npt.NDArray[np.int64]:
    parts: list[list[int]] = []
    for chunk in model_input.chunks:
        if not isinstance(chunk, t.EncodedTextChunk):
            kind = getattr(chunk, "type", type(chunk).__name__)
            raise SimUserError(f"the simulator only supports encoded_text chunks, got a {kind!r} chunk")
        parts.append(chunk.tokens)
    flat = [tok for part in parts for tok in part]
    return np.asarray(flat, dtype=np.int64)


def datum_arrays(index: int, datum: t.Datum) -> DatumArrays:
    try:
        tokens = prompt_tokens(datum.model_input)
    except SimUserError as exc:
        raise SimUserError(f"datum {index}: {exc}") from None
    inputs: dict[str, npt.NDArray[Any]] = {}
    for name, tensor in datum.loss_fn_inputs.items():
        try:
            inputs[name] = tensor.to_numpy()
        except ValueError as exc:
            raise SimUserError(f"datum {index}: loss_fn_inputs[{name!r}]: {exc}") from None
    return DatumArrays(tokens=tokens, loss_fn_inputs=inputs)


def stop_spec(stop: str | list[str | int] | None, vocab: int) -> tuple[list[int] | None, list[list[int]]]:
    """``(stop_tokens, stop_sequences)`` for the model. Strings are byte-tokenised (token = byte % vocab)."""
    if stop is None:
        return None, []
    if isinstance(stop, str):
        return None, [[b % vocab for b in stop.encode("utf-8")]] if stop else []
    if not stop:
        return [], []
    tokens = [s for s in stop if isinstance(s, int)]
    strings = [s for s in stop if isinstance(s, str)]
    sequences = [[b % vocab for b in s.encode("utf-8")] for s in strings if s]
    return (tokens if tokens else None), sequences


def fwdbwd_output(result: FwdBwdResult) -> t.ForwardBackwardOutput:
    outputs: list[dict[str, t.TensorData]] = [
        {name: t.TensorData.from_numpy(arr, "float32") for name, arr in out.items()} for out in result.loss_fn_outputs
    ]
    return t.ForwardBackwardOutput(
        loss_fn_output_type="TensorData", loss_fn_outputs=outputs, metrics=dict(result.metrics)
    )


def _topk(topk: TopK) -> t.TopkLogprobs:
    """The model's dense ``(n, k)`` matrices as they are: ``k`` is the width asked for, padding included."""
    return t.TopkLogprobs(topk.token_ids, topk.logprobs)


def _target_tensor(values: npt.NDArray[np.float32], layout: t.TensorData | None) -> t.TensorData:
    """The target logprobs, dense, or in the sparse CSR layout of the request (only the cells it listed)."""
    if layout is None or layout.sparse_crow_indices is None or layout.sparse_col_indices is None:
        return t.TensorData.from_numpy(values, "float32")
    crow = np.asarray(layout.sparse_crow_indices, dtype=np.int64)
    cols = np.asarray(layout.sparse_col_indices, dtype=np.int64)
    rows = np.repeat(np.arange(crow.size - 1), np.diff(crow))
    return t.TensorData(
        data=values[rows, cols],
        dtype="float32",
        shape=list(values.shape),
        sparse_crow_indices=list(layout.sparse_crow_indices),
        sparse_col_indices=list(layout.sparse_col_indices),
    )


def sample_response(payload: SamplePayload) -> t.SampleResponse:
    result = payload.result
    sequences: list[t.SampledSequence] = []
    for i, seq in enumerate(result.sequences):
        sequence_id = payload.sequence_ids[i] if i < len(payload.sequence_ids) else None
        sequences.append(
            t.SampledSequence(
                stop_reason=seq.stop_reason,
                tokens=seq.tokens,  # numpy-backed: the codecs write the arrays in bulk
                sequence_id=sequence_id,
                logprobs=seq.logprobs,
                topk_logprobs=_topk(seq.topk) if seq.topk is not None else None,
            )
        )
    alt: t.PromptAltTokens | None = None
    if result.prompt_alt_tokens is not None and result.prompt_alt_logprobs is not None:
        alt = t.PromptAltTokens(
            tokens=t.TensorData.from_numpy(result.prompt_alt_tokens, "int64"),
            logprobs=t.TensorData.from_numpy(result.prompt_alt_logprobs, "float32"),
        )
    return t.SampleResponse(
        sequences=sequences,
        prompt_logprobs=result.prompt_logprobs,  # float32, NaN where unscored: null in JSON
        topk_prompt_logprobs=_topk(result.topk_prompt) if result.topk_prompt is not None else None,
        target_prompt_logprobs=(
            _target_tensor(result.target_prompt_logprobs, payload.target_layout)
            if result.target_prompt_logprobs is not None
            else None
        ),
        prompt_alt_tokens=alt,
        prompt_cache_hit_tokens=0,
    )
