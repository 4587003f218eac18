"""Chunk planning and metric combining for forward_backward / forward (protocol §7, §8). Pure functions.

* :func:`estimate_datum_bytes`: the size estimate the official SDK uses for one datum's protobuf encoding, and
  :func:`datum_bytes`, that estimate for a :class:`~tinkex_trio.types.Datum`.
* :func:`plan_chunks`: split data, in order, into chunks of at most ``max_len`` datums and ``max_bytes`` estimated
  bytes (a single datum larger than ``max_bytes`` forms its own chunk).
* :func:`dispatch_order`: the order chunks are sent in with ``parallel_fwdbwd_chunks`` (first chunk last).
* :func:`combine_metrics`: merge the per-chunk ``metrics`` dicts, each key ``name:reduction``, and
  :func:`combine_fwdbwd_outputs`, the per-chunk results of one call into one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from tinkex_trio import types

__all__ = [
    "DEFAULT_MAX_CHUNK_BYTES",
    "DEFAULT_MAX_CHUNK_LEN",
    "PROTO_BYTES_PER_TOKEN",
    "REDUCTIONS",
    "SAMPLE_BYTES_PER_TOKEN",
    "SPARSE_INDEX_BYTES",
    "combine_fwdbwd_outputs",
    "combine_metrics",
    "datum_bytes",
    "dispatch_order",
    "estimate_datum_bytes",
    "estimate_sample_bytes",
    "plan_chunks",
]

DEFAULT_MAX_CHUNK_LEN = 1024
DEFAULT_MAX_CHUNK_BYTES = 5_000_000
PROTO_BYTES_PER_TOKEN = 4  # token ids travel as int32 in the protobuf body
SPARSE_INDEX_BYTES = 8  # CSR crow/col indices travel as int64
SAMPLE_BYTES_PER_TOKEN = 10  # the sample-submission gate's estimate

_UINT64 = 1 << 64
# ``unique`` keeps the first chunk's value under the key and the k-th chunk's (k >= 2) under ``f"{key}_{k}"``.
_UNIQUE_FIRST_SUFFIX = 2


def _non_negative(name: str, value: int) -> int:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def estimate_datum_bytes(
    token_count: int = 0,
    tensor_bytes: int = 0,
    sparse_index_count: int = 0,
    raw_bytes: int = 0,
) -> int:
    """Estimated protobuf size of one datum: ``4·tokens + tensor bytes + 8·sparse indices + raw bytes``.

    Args:
        token_count: tokens of the datum's encoded-text chunks.
        tensor_bytes: the loss inputs' value bytes in their dtype (``ndarray.nbytes``; for a sparse tensor, of its
            non-zero values only).
        sparse_index_count: entries of every sparse tensor's ``crow_indices`` plus ``col_indices``.
        raw_bytes: byte length of image / dmel chunks, which travel as-is.
    """
    return (
        PROTO_BYTES_PER_TOKEN * _non_negative("token_count", token_count)
        + _non_negative("tensor_bytes", tensor_bytes)
        + SPARSE_INDEX_BYTES * _non_negative("sparse_index_count", sparse_index_count)
        + _non_negative("raw_bytes", raw_bytes)
    )


def estimate_sample_bytes(token_count: int = 0, raw_bytes: int = 0) -> int:
    """Estimated size of a sample prompt for the submission byte gate: ``10·tokens + raw (image/dmel) bytes``."""
    return SAMPLE_BYTES_PER_TOKEN * _non_negative("token_count", token_count) + _non_negative("raw_bytes", raw_bytes)


def plan_chunks(
    datum_sizes: Sequence[int],
    max_len: int = DEFAULT_MAX_CHUNK_LEN,
    max_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> list[range]:
    """Split ``len(datum_sizes)`` datums, in order, into consecutive index ranges.

    A chunk is closed when it holds ``max_len`` datums, or when the next datum would push its estimated size
    (the sum of ``datum_sizes``) over ``max_bytes``. A datum larger than ``max_bytes`` on its own still forms a
    chunk. The ranges cover ``0..len(datum_sizes)`` exactly, none is empty; no data gives no chunks.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    chunks: list[range] = []
    start = 0
    chunk_bytes = 0
    for index, size in enumerate(datum_sizes):
        if size < 0:
            raise ValueError(f"datum_sizes[{index}] must be >= 0, got {size}")
        count = index - start
        if count == max_len or (count > 0 and chunk_bytes + size > max_bytes):
            chunks.append(range(start, index))
            start = index
            chunk_bytes = 0
        chunk_bytes += size
    if start < len(datum_sizes):
        chunks.append(range(start, len(datum_sizes)))
    return chunks


def dispatch_order(chunk_count: int) -> list[int]:
    """The order in which the official SDK sends parallel chunks: 1, 2, …, n−1, then 0 (the first chunk last)."""
    if chunk_count < 0:
        raise ValueError(f"chunk_count must be >= 0, got {chunk_count}")
    return [*range(1, chunk_count), 0] if chunk_count else []


# --------------------------------------------------------------------------------------------------------------------
# Combining metrics
# --------------------------------------------------------------------------------------------------------------------

REDUCTIONS = frozenset({"mean", "sum", "min", "max", "slack", "hash2", "unique"})


def _sum(values: Sequence[float]) -> float:
    # fsum is exact for finite values but raises on inf + -inf, where plain sum gives nan like numpy.
    return math.fsum(values) if all(math.isfinite(v) for v in values) else sum(values)


def _min(values: Sequence[float]) -> float:
    return math.nan if any(math.isnan(v) for v in values) else min(values)


def _max(values: Sequence[float]) -> float:
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def _weighted_mean(values: Sequence[float], weights: Sequence[int]) -> float:
    total = sum(weights)
    if total == 0:
        # Every chunk was empty: no weights to go by, so an unweighted mean.
        return _sum(values) / len(values)
    return _sum([v * w for v, w in zip(values, weights, strict=True)]) / total


def _hash2(values: Sequence[float]) -> int | None:
    acc = 0
    for value in values:
        if not math.isfinite(value):
            return None
        acc = (acc + int(value)) % _UINT64  # ``%`` wraps negatives into [0, 2**64) too
    return acc


def combine_metrics(per_chunk: Sequence[Mapping[str, float]], weights: Sequence[int]) -> dict[str, float]:
    """Merge per-chunk metrics into one dict, as the official SDK does (protocol §8).

    Keys come from the first chunk, in its order; each is ``name:reduction`` with exactly one ``:``. ``weights`` are
    the chunks' datum counts. Reductions:

    * ``mean``: mean weighted by datum count (unweighted if every weight is 0);
    * ``sum``, ``min``, ``max`` (a NaN anywhere gives NaN, as with numpy);
    * ``slack``: ``max − weighted mean``;
    * ``hash2``: the sum as a wrapping uint64, the values being floats that hold integers; the result is an exact
      ``int`` in ``[0, 2**64)`` (not a float, which could not hold it exactly);
    * ``unique``: the first chunk's value under the key, the k-th chunk's under ``key_k`` (k = 2, 3, …).

    A key is dropped when its reduction is unknown, its name does not have exactly one ``:``, it is missing from
    some chunk, or (``hash2``) a value is not finite. No chunks give ``{}``; one chunk still goes through the
    reductions (``hash2`` wraps, unknown reductions are dropped).
    """
    if len(per_chunk) != len(weights):
        raise ValueError(f"{len(per_chunk)} chunks but {len(weights)} weights")
    if any(w < 0 for w in weights):
        raise ValueError("weights must be >= 0")
    if not per_chunk:
        return {}
    result: dict[str, float] = {}
    for key in per_chunk[0]:
        parts = key.split(":")
        if len(parts) != 2 or parts[1] not in REDUCTIONS:
            continue
        if any(key not in chunk for chunk in per_chunk):
            continue
        values = [float(chunk[key]) for chunk in per_chunk]
        reduction = parts[1]
        if reduction == "mean":
            result[key] = _weighted_mean(values, weights)
        elif reduction == "sum":
            result[key] = _sum(values)
        elif reduction == "min":
            result[key] = _min(values)
        elif reduction == "max":
            result[key] = _max(values)
        elif reduction == "slack":
            result[key] = _max(values) - _weighted_mean(values, weights)
        elif reduction == "hash2":
            hashed = _hash2(values)
            if hashed is not None:
                result[key] = hashed
        else:  # unique
            result[key] = values[0]
            for k, value in enumerate(values[1:], start=_UNIQUE_FIRST_SUFFIX):
                result[f"{key}_{k}"] = value
    return result


_DTYPE_BYTES = {"float32": 4, "int64": 8}


def datum_bytes(datum: types.Datum) -> int:
    """The official SDK's estimate of a datum's protobuf size (tokens, raw image/audio bytes, tensor bytes)."""
    tokens = 0
    raw = 0
    for chunk in datum.model_input.chunks:
        if isinstance(chunk, types.EncodedTextChunk):
            tokens += len(chunk.tokens)
        elif isinstance(chunk, types.ImageChunk):
            raw += len(chunk.data)
        elif isinstance(chunk, types.DmelChunk):
            raw += len(chunk.dmel)
        else:
            raw += len(chunk.location)
    tensor_bytes = 0
    sparse_indices = 0
    for td in datum.loss_fn_inputs.values():
        tensor_bytes += td.num_values * _DTYPE_BYTES.get(td.dtype, 8)
        sparse_indices += len(td.sparse_crow_indices or ()) + len(td.sparse_col_indices or ())
    return estimate_datum_bytes(
        token_count=tokens, tensor_bytes=tensor_bytes, sparse_index_count=sparse_indices, raw_bytes=raw
    )


def combine_fwdbwd_outputs(
    outputs: Sequence[types.ForwardBackwardOutput], datum_counts: Sequence[int]
) -> types.ForwardBackwardOutput:
    """Merge the per-chunk results of one forward / forward_backward call (protocol §8).

    ``loss_fn_outputs`` are concatenated in chunk order, ``loss_fn_output_type`` is the first chunk's, and the metrics
    are merged by :func:`~tinkex_trio._chunking.combine_metrics` weighted by ``datum_counts``. The combiner runs even
    for one chunk (keys with an unknown reduction are dropped, as the official SDK does).
    """
    if not outputs:
        raise ValueError("no chunk results to combine")
    loss_fn_outputs: list[types.LossFnOutput] = []
    for out in outputs:
        loss_fn_outputs.extend(out.loss_fn_outputs)
    metrics = combine_metrics([out.metrics for out in outputs], datum_counts)
    return types.ForwardBackwardOutput(
        loss_fn_output_type=outputs[0].loss_fn_output_type, loss_fn_outputs=loss_fn_outputs, metrics=metrics
    )
