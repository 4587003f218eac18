"""Unit tests for tinkex_trio._chunking, with cross-checks against the official SDK's own helpers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
import tinker.types as sdk_types
from hypothesis import given
from hypothesis import strategies as st
from tinker.lib.chunked_fwdbwd_helpers import _metrics_reduction  # pyright: ignore[reportPrivateUsage]
from tinker.lib.public_interfaces.training_client import (
    _estimate_datum_bytes_count_proto,  # pyright: ignore[reportPrivateUsage]
)

from tinkex_trio._chunking import (
    DEFAULT_MAX_CHUNK_BYTES,
    DEFAULT_MAX_CHUNK_LEN,
    combine_metrics,
    dispatch_order,
    estimate_datum_bytes,
    estimate_sample_bytes,
    plan_chunks,
)

# --------------------------------------------------------------------------------------------------------------------
# estimate_datum_bytes
# --------------------------------------------------------------------------------------------------------------------


def test_estimate_formula() -> None:
    assert estimate_datum_bytes() == 0
    assert estimate_datum_bytes(10) == 40
    assert estimate_datum_bytes(token_count=3, tensor_bytes=36) == 48
    assert estimate_datum_bytes(tensor_bytes=8, sparse_index_count=5) == 48
    assert estimate_datum_bytes(raw_bytes=1000) == 1000
    assert estimate_datum_bytes(1, 2, 3, 4) == 4 + 2 + 24 + 4


@pytest.mark.parametrize(
    "kwargs", [{"token_count": -1}, {"tensor_bytes": -1}, {"sparse_index_count": -2}, {"raw_bytes": -3}]
)
def test_estimate_rejects_negative(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        estimate_datum_bytes(**kwargs)


def test_estimate_matches_sdk_dense() -> None:
    tokens = list(range(17))
    datum = sdk_types.Datum(
        model_input=sdk_types.ModelInput.from_ints(tokens),
        loss_fn_inputs={
            "weights": sdk_types.TensorData.from_numpy(np.ones(17, dtype=np.float32)),
            "target_tokens": sdk_types.TensorData.from_numpy(np.arange(17, dtype=np.int64)),
        },
    )
    ours = estimate_datum_bytes(token_count=17, tensor_bytes=17 * 4 + 17 * 8)
    assert ours == _estimate_datum_bytes_count_proto(datum)


def test_estimate_matches_sdk_sparse_and_image() -> None:
    sparse = sdk_types.TensorData(
        data=[1.0, 2.0, 3.0],
        dtype="float32",
        shape=[2, 4],
        sparse_crow_indices=[0, 1, 3],
        sparse_col_indices=[0, 1, 3],
    )
    datum = sdk_types.Datum(
        model_input=sdk_types.ModelInput(
            chunks=[
                sdk_types.EncodedTextChunk(tokens=[5, 6]),
                sdk_types.ImageChunk(data=b"\x89PNG-some-bytes", format="png", expected_tokens=4),
            ]
        ),
        loss_fn_inputs={"weights": sparse},
    )
    ours = estimate_datum_bytes(
        token_count=2, tensor_bytes=3 * 4, sparse_index_count=3 + 3, raw_bytes=len(b"\x89PNG-some-bytes")
    )
    assert ours == _estimate_datum_bytes_count_proto(datum)


def test_estimate_sample_bytes() -> None:
    assert estimate_sample_bytes(100) == 1000
    assert estimate_sample_bytes(1, raw_bytes=5) == 15
    with pytest.raises(ValueError):
        estimate_sample_bytes(-1)


# --------------------------------------------------------------------------------------------------------------------
# plan_chunks
# --------------------------------------------------------------------------------------------------------------------


def test_defaults() -> None:
    assert DEFAULT_MAX_CHUNK_LEN == 1024 and DEFAULT_MAX_CHUNK_BYTES == 5_000_000
    assert plan_chunks([1] * 2048) == [range(0, 1024), range(1024, 2048)]
    assert plan_chunks([1] * 1025) == [range(0, 1024), range(1024, 1025)]


def test_empty() -> None:
    assert plan_chunks([]) == []


def test_by_length() -> None:
    # The protocol's observation: max_len 2, five datums -> three chunks.
    assert plan_chunks([10] * 5, max_len=2) == [range(0, 2), range(2, 4), range(4, 5)]
    assert plan_chunks([10] * 3, max_len=1) == [range(0, 1), range(1, 2), range(2, 3)]


def test_by_bytes() -> None:
    assert plan_chunks([3, 2, 1, 4], max_bytes=5) == [range(0, 2), range(2, 4)]
    # Exactly at the limit still fits; one byte over closes the chunk.
    assert plan_chunks([5, 5], max_bytes=10) == [range(0, 2)]
    assert plan_chunks([5, 6], max_bytes=10) == [range(0, 1), range(1, 2)]


def test_oversized_datum_is_its_own_chunk() -> None:
    assert plan_chunks([100], max_bytes=10) == [range(0, 1)]
    assert plan_chunks([1, 100, 1], max_bytes=10) == [range(0, 1), range(1, 2), range(2, 3)]
    assert plan_chunks([100, 100], max_bytes=10) == [range(0, 1), range(1, 2)]


def test_zero_sized_datums() -> None:
    assert plan_chunks([0] * 5, max_len=3, max_bytes=1) == [range(0, 3), range(3, 5)]


def test_both_limits() -> None:
    assert plan_chunks([1, 1, 1, 9, 1, 1], max_len=3, max_bytes=10) == [
        range(0, 3),
        range(3, 5),
        range(5, 6),
    ]


@pytest.mark.parametrize(
    ("sizes", "max_len", "max_bytes", "message"),
    [
        ([1], 0, 10, "max_len"),
        ([1], 1, 0, "max_bytes"),
        ([1, -1], 2, 10, r"datum_sizes\[1\]"),
    ],
)
def test_invalid_arguments(sizes: list[int], max_len: int, max_bytes: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_chunks(sizes, max_len=max_len, max_bytes=max_bytes)


@given(
    sizes=st.lists(st.integers(0, 200), max_size=200),
    max_len=st.integers(1, 20),
    max_bytes=st.integers(1, 500),
)
def test_planner_properties(sizes: list[int], max_len: int, max_bytes: int) -> None:
    chunks = plan_chunks(sizes, max_len=max_len, max_bytes=max_bytes)
    # In order, contiguous, covering everything, none empty.
    assert [i for chunk in chunks for i in chunk] == list(range(len(sizes)))
    assert all(len(chunk) >= 1 and chunk.step == 1 for chunk in chunks)
    for n, chunk in enumerate(chunks):
        total = sum(sizes[i] for i in chunk)
        # Within limits (a lone datum may exceed max_bytes).
        assert len(chunk) <= max_len
        assert total <= max_bytes or len(chunk) == 1
        # Greedy: a chunk is closed only because it was full or the next datum did not fit.
        if n + 1 < len(chunks):
            nxt = sizes[chunk.stop]
            assert len(chunk) == max_len or total + nxt > max_bytes


@given(sizes=st.lists(st.integers(0, 50), max_size=60), max_len=st.integers(1, 8), max_bytes=st.integers(1, 120))
def test_planner_matches_sdk_generator(sizes: list[int], max_len: int, max_bytes: int) -> None:
    # The SDK's chunking loop, restated over sizes (it closes a chunk before adding a datum that would not fit).
    expected: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for i, size in enumerate(sizes):
        if (current and current_bytes + size > max_bytes) or len(current) == max_len:
            expected.append(current)
            current, current_bytes = [], 0
        current.append(i)
        current_bytes += size
    if current:
        expected.append(current)
    assert [list(r) for r in plan_chunks(sizes, max_len=max_len, max_bytes=max_bytes)] == expected


def test_dispatch_order() -> None:
    assert dispatch_order(0) == []
    assert dispatch_order(1) == [0]
    assert dispatch_order(3) == [1, 2, 0]
    with pytest.raises(ValueError):
        dispatch_order(-1)


# --------------------------------------------------------------------------------------------------------------------
# combine_metrics
# --------------------------------------------------------------------------------------------------------------------


def test_no_chunks() -> None:
    assert combine_metrics([], []) == {}


def test_length_mismatch_and_negative_weights() -> None:
    with pytest.raises(ValueError, match="weights"):
        combine_metrics([{"a:sum": 1.0}], [1, 2])
    with pytest.raises(ValueError, match=">= 0"):
        combine_metrics([{"a:sum": 1.0}], [-1])


def test_mean_is_weighted_by_datum_count() -> None:
    out = combine_metrics([{"m:mean": 1.0}, {"m:mean": 4.0}], [1, 3])
    assert out == {"m:mean": pytest.approx((1 * 1.0 + 3 * 4.0) / 4)}  # pyright: ignore[reportUnknownMemberType]


def test_mean_with_all_zero_weights_is_unweighted() -> None:
    assert combine_metrics([{"m:mean": 1.0}, {"m:mean": 3.0}], [0, 0]) == {"m:mean": 2.0}


def test_mean_ignores_zero_weight_chunk() -> None:
    assert combine_metrics([{"m:mean": 100.0}, {"m:mean": 3.0}], [0, 5]) == {"m:mean": 3.0}


def test_sum_min_max() -> None:
    chunks = [{"s:sum": 1.5, "lo:min": 3.0, "hi:max": 3.0}, {"s:sum": 2.25, "lo:min": -1.0, "hi:max": 7.0}]
    assert combine_metrics(chunks, [10, 1]) == {"s:sum": 3.75, "lo:min": -1.0, "hi:max": 7.0}


def test_sum_is_exact() -> None:
    out = combine_metrics([{"s:sum": 0.1}] * 10, [1] * 10)
    assert out["s:sum"] == 1.0


def test_slack_is_max_minus_weighted_mean() -> None:
    out = combine_metrics([{"t:slack": 2.0}, {"t:slack": 6.0}, {"t:slack": 4.0}], [1, 1, 2])
    assert out == {"t:slack": pytest.approx(6.0 - (2.0 + 6.0 + 8.0) / 4)}  # pyright: ignore[reportUnknownMemberType]


def test_hash2_wraps_as_uint64() -> None:
    big = float(2**63)
    out = combine_metrics([{"h:hash2": big}, {"h:hash2": big}, {"h:hash2": 5.0}], [1, 1, 1])
    assert out == {"h:hash2": 5}
    assert isinstance(out["h:hash2"], int)


def test_hash2_negative_values_wrap() -> None:
    assert combine_metrics([{"h:hash2": -1.0}], [1]) == {"h:hash2": 2**64 - 1}
    assert combine_metrics([{"h:hash2": -1.0}, {"h:hash2": 3.0}], [1, 1]) == {"h:hash2": 2}


def test_hash2_exact_beyond_float_precision() -> None:
    a, b = float(2**60), float(2**60 + 2**8)
    out = combine_metrics([{"h:hash2": a}, {"h:hash2": b}], [1, 1])
    assert out["h:hash2"] == int(a) + int(b)  # exact: a float result would have rounded this


def test_hash2_non_finite_dropped() -> None:
    assert combine_metrics([{"h:hash2": math.nan, "s:sum": 1.0}], [1]) == {"s:sum": 1.0}
    assert combine_metrics([{"h:hash2": math.inf}], [1]) == {}


def test_unique_keeps_every_value() -> None:
    out = combine_metrics([{"u:unique": 1.0}, {"u:unique": 2.0}, {"u:unique": 1.0}], [5, 5, 5])
    assert out == {"u:unique": 1.0, "u:unique_2": 2.0, "u:unique_3": 1.0}


def test_unique_single_chunk() -> None:
    assert combine_metrics([{"u:unique": 9.0}], [1]) == {"u:unique": 9.0}


def test_keys_come_from_the_first_chunk_in_order() -> None:
    out = combine_metrics([{"b:sum": 1.0, "a:sum": 2.0}, {"a:sum": 1.0, "b:sum": 1.0, "c:sum": 5.0}], [1, 1])
    assert list(out) == ["b:sum", "a:sum"]
    assert out == {"b:sum": 2.0, "a:sum": 3.0}


def test_key_missing_from_a_chunk_is_dropped() -> None:
    out = combine_metrics([{"a:sum": 1.0, "b:max": 1.0}, {"a:sum": 1.0}], [1, 1])
    assert out == {"a:sum": 2.0}


@pytest.mark.parametrize("key", ["loss:median", "loss:", "loss", "a:b:sum", ":sum:", "loss:SUM"])
def test_unknown_or_malformed_reduction_dropped(key: str) -> None:
    assert combine_metrics([{key: 1.0, "ok:sum": 1.0}], [1]) == {"ok:sum": 1.0}


def test_one_chunk_still_goes_through_the_reductions() -> None:
    out = combine_metrics([{"loss:sum": 2.5, "x:mean": 4.0, "t:slack": 3.0, "bad:wat": 1.0}], [7])
    assert out == {"loss:sum": 2.5, "x:mean": 4.0, "t:slack": 0.0}


def test_nan_propagates_in_min_max_sum() -> None:
    out = combine_metrics(
        [{"a:min": math.nan, "b:max": 1.0, "c:sum": 1.0}, {"a:min": 0.0, "b:max": math.nan, "c:sum": math.nan}], [1, 1]
    )
    assert all(math.isnan(out[k]) for k in ("a:min", "b:max", "c:sum"))


def test_infinities_in_sum_do_not_raise() -> None:
    out = combine_metrics([{"c:sum": math.inf}, {"c:sum": -math.inf}], [1, 1])
    assert math.isnan(out["c:sum"])


def test_input_is_not_mutated() -> None:
    chunks = [{"u:unique": 1.0}, {"u:unique": 2.0}]
    combine_metrics(chunks, [1, 1])
    assert chunks == [{"u:unique": 1.0}, {"u:unique": 2.0}]


# Cross-check every reduction except `unique` against the official SDK's combiner. (For `unique` the SDK names the
# second chunk's value `key_1`, where protocol §8 and this project say `key_2`; see test_unique_keeps_every_value.)
_REDUCTIONS = ["mean", "sum", "min", "max", "slack", "hash2", "bogus"]


def _sdk_combine(per_chunk: Sequence[Mapping[str, float]], weights: Sequence[int]) -> dict[str, float]:
    outputs = [
        sdk_types.ForwardBackwardOutput(
            loss_fn_output_type="x", metrics=dict(metrics), loss_fn_outputs=[{} for _ in range(weight)]
        )
        for metrics, weight in zip(per_chunk, weights, strict=True)
    ]
    return dict(_metrics_reduction(outputs))


@st.composite
def _chunks(draw: st.DrawFn) -> tuple[list[dict[str, float]], list[int]]:
    n = draw(st.integers(1, 5))
    keys = draw(st.lists(st.sampled_from(_REDUCTIONS), min_size=1, max_size=len(_REDUCTIONS), unique=True))
    weights = draw(st.lists(st.integers(1, 50), min_size=n, max_size=n))
    per_chunk: list[dict[str, float]] = []
    for i in range(n):
        metrics: dict[str, float] = {}
        for red in keys:
            if i > 0 and draw(st.integers(0, 9)) == 0:
                continue  # sometimes missing from a later chunk
            if red == "hash2":
                metrics[f"k_{red}:{red}"] = float(draw(st.integers(-(2**53), 2**53)))
            else:
                metrics[f"k_{red}:{red}"] = draw(st.floats(-1e6, 1e6, allow_nan=False))
        per_chunk.append(metrics)
    return per_chunk, weights


@given(_chunks())
def test_matches_sdk_combiner(case: tuple[list[dict[str, float]], list[int]]) -> None:
    per_chunk, weights = case
    ours = combine_metrics(per_chunk, weights)
    theirs = _sdk_combine(per_chunk, weights)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if key.endswith(":hash2"):
            assert ours[key] == value
        else:
            assert ours[key] == pytest.approx(value, rel=1e-9, abs=1e-6)  # pyright: ignore[reportUnknownMemberType]
