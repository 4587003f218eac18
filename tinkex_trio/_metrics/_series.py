"""The series of the metrics store: :class:`Counter`, :class:`Gauge` and :class:`Histogram` (an HdrHistogram with
exact count, sum, min and max), and the statistics a histogram reports.

A series is one metric name and one label set. It is plain data with no clock and no I/O; the store
(:mod:`tinkex_trio._metrics._store`) makes them and keeps them by name and labels.
"""

from __future__ import annotations

import ctypes
import functools
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import numpy as np
import numpy.typing as npt
from hdrh.histogram import HdrHistogram

__all__ = [
    "QUANTILES",
    "Counter",
    "Gauge",
    "Histogram",
    "Kind",
    "LabelKey",
    "LabelValue",
    "Labels",
    "Series",
    "merged_stats",
]

LabelValue = str | int | float | bool | None
Labels = Mapping[str, LabelValue]
LabelKey = tuple[tuple[str, str], ...]
"""A label set as stored: (name, value as str) pairs, sorted by name."""
Kind = Literal["counter", "gauge", "histogram"]

QUANTILES: Final[tuple[tuple[str, float, str], ...]] = (
    ("p50", 50.0, "0.5"),
    ("p90", 90.0, "0.9"),
    ("p95", 95.0, "0.95"),
    ("p99", 99.0, "0.99"),
    ("p999", 99.9, "0.999"),
)
"""The percentiles every histogram reports: ``get_all_metrics`` key, percentile, Prometheus ``quantile`` label."""

_UNITS_PER_MS: Final = 1000
"""Histogram values are stored as integers of 1/1000 of their unit: microseconds for milliseconds."""


class Counter:
    """One counter series (a name and a label set). ``inc`` is the cheapest way to count on a hot path."""

    __slots__ = ("labels", "name", "value")

    def __init__(self, name: str, labels: LabelKey) -> None:
        self.name = name
        self.labels = labels
        self.value: float = 0

    def inc(self, value: float = 1) -> None:
        """Add ``value`` (``ValueError`` if negative: a counter only goes up)."""
        if not value >= 0:
            raise ValueError(f"a counter only goes up: cannot add {value!r} to {self.name!r}")
        self.value += value


class Gauge:
    """One gauge series: the last value set."""

    __slots__ = ("labels", "name", "value")

    def __init__(self, name: str, labels: LabelKey) -> None:
        self.name = name
        self.labels = labels
        self.value: float = 0.0

    def set(self, value: float) -> None:
        self.value = float(value)


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where an HdrHistogram's count index ``i`` sits: values ``lowest[i]..highest[i]`` (in stored units)."""

    lowest: npt.NDArray[np.int64]
    highest: npt.NDArray[np.int64]
    middle: npt.NDArray[np.int64]


@functools.lru_cache(maxsize=16)
def _layout(significant_figures: int, max_units: int) -> _Layout:
    """The value range of every index of ``HdrHistogram(1, max_units, significant_figures)`` (vectorised; the
    tests check it against hdrh's own ``get_value_from_index`` / ``get_highest_equivalent_value``)."""
    probe = HdrHistogram(1, max_units, significant_figures)
    half_mag = probe.sub_bucket_half_count_magnitude
    half = probe.sub_bucket_half_count
    index = np.arange(probe.counts_len, dtype=np.int64)
    bucket = (index >> half_mag) - 1
    sub = (index & (half - 1)) + half
    first = bucket < 0
    sub[first] -= half
    bucket[first] = 0
    lowest = sub << bucket  # unit magnitude 0: the lowest trackable value is 1
    size = np.int64(1) << bucket
    return _Layout(lowest=lowest, highest=lowest + size - 1, middle=lowest + (size >> 1))


class Histogram:
    """One histogram series: an HdrHistogram of values in ``[0, max]`` (milliseconds by convention), kept as
    integers of 1/1000 of a unit, so 0.0004 ms is 0 and 0.0125 ms is 12.5 µs → 13 (3 significant figures by
    default on top of that).

    Values above ``max`` (and ``+inf``) are recorded as ``max``, negative ones as 0; both are counted in
    ``clamped``. NaN is not recorded (counted in ``dropped``). Nothing here raises on a value.

    Count, sum, min, max and mean are exact (over the recorded, 1/1000-rounded values); the standard deviation
    and the percentiles come from the buckets, as hdrh computes them (a percentile is the highest value of the
    rank's bucket, kept within the exact min and max).
    """

    __slots__ = (
        "_array",
        "_count_index_base",
        "_half_mag",
        "_mask",
        "_max_ms",
        "_shift",
        "_significant_figures",
        "clamped",
        "count",
        "counts",
        "dropped",
        "hdr",
        "labels",
        "max",
        "max_units",
        "min",
        "name",
        "sum",
    )

    def __init__(self, name: str, labels: LabelKey, *, max_ms: int, significant_figures: int) -> None:
        self.name = name
        self.labels = labels
        self.max_units = max_ms * _UNITS_PER_MS
        self._max_ms = float(max_ms)
        self._significant_figures = significant_figures
        self.hdr = HdrHistogram(1, self.max_units, significant_figures)
        # The hot path computes hdrh's count index inline (hdrh's record_value costs ~2 µs in pure Python) and
        # writes its counts array directly; the bookkeeping (total, min, max) is synced by _synced_hdr().
        hdr_counts = cast("ctypes.Array[Any]", self.hdr.counts)  # pyright: ignore[reportUnknownMemberType]
        self.counts: ctypes.Array[Any] = hdr_counts
        self._array: npt.NDArray[np.uint64] = np.ctypeslib.as_array(hdr_counts)  # a view, for the statistics
        self._mask = self.hdr.sub_bucket_mask
        self._half_mag = self.hdr.sub_bucket_half_count_magnitude
        self._shift = self._half_mag + 1
        self._count_index_base = self.hdr.sub_bucket_half_count
        self.count = 0
        self.sum = 0  # in stored units (exact integers)
        self.min = self.max_units + 1  # above any value: no branch on the first one
        self.max = 0
        self.clamped = 0
        self.dropped = 0

    def record(self, value: float) -> None:
        """Record one value (see the class docstring for out-of-range values)."""
        if 0.0 <= value <= self._max_ms:
            units = int(value * _UNITS_PER_MS + 0.5)
        else:
            units = self._out_of_range(value)
            if units < 0:
                return
        # hdrh's counts index, inline: bucket = bit_length(v | mask) - (half_mag + 1); index = ((bucket + 1) <<
        # half_mag) + (v >> bucket) - half_count, and half_count == 1 << half_mag.
        bucket = (units | self._mask).bit_length() - self._shift
        self.counts[(bucket << self._half_mag) + (units >> bucket)] += 1
        self.count += 1
        self.sum += units
        if units > self.max:
            self.max = units
        if units < self.min:
            self.min = units

    def _out_of_range(self, value: float) -> int:
        if value > 0.0:  # above max, +inf
            self.clamped += 1
            return self.max_units
        if value < 0.0:  # negative, -inf
            self.clamped += 1
            return 0
        self.dropped += 1  # NaN
        return -1

    def _synced_hdr(self) -> HdrHistogram:
        """The HdrHistogram with its total / min / max matching the counts (for hdrh's own methods)."""
        hdr = self.hdr
        hdr.total_count = self.count
        hdr.min_value = self.min if self.count else sys.maxsize
        hdr.max_value = self.max
        return hdr

    def _counts_array(self) -> npt.NDArray[np.uint64]:
        return self._array

    def reset(self) -> None:
        """Forget every value."""
        self._counts_array()[:] = 0
        self.count = self.sum = self.max = self.clamped = self.dropped = 0
        self.min = self.max_units + 1

    def stats(self) -> dict[str, float]:
        """count, sum, min, max, mean, stddev, p50 ... p999 (in the recorded unit), clamped, dropped."""
        return _stats(
            self._counts_array(),
            count=self.count,
            total=self.sum,
            low=self.min,
            high=self.max,
            layout=_layout(self._significant_figures, self.max_units),
            clamped=self.clamped,
            dropped=self.dropped,
        )


def _stats(
    counts: npt.NDArray[np.uint64],
    *,
    count: int,
    total: int,
    low: int,
    high: int,
    layout: _Layout,
    clamped: int,
    dropped: int,
) -> dict[str, float]:
    out: dict[str, float] = {"count": count, "sum": total / _UNITS_PER_MS}
    if count == 0:
        out.update({"min": 0.0, "max": 0.0, "mean": 0.0, "stddev": 0.0})
        out.update(dict.fromkeys((key for key, _, _ in QUANTILES), 0.0))
    else:
        mean = total / count
        out["min"] = low / _UNITS_PER_MS
        out["max"] = high / _UNITS_PER_MS
        out["mean"] = mean / _UNITS_PER_MS
        # As hdrh: each bucket stands for its middle value (clamped to the exact min and max).
        middle = np.clip(layout.middle, low, high).astype(np.float64)
        weights = counts.astype(np.float64)
        variance = float(np.dot(weights, (middle - mean) ** 2)) / count
        out["stddev"] = math.sqrt(variance) / _UNITS_PER_MS
        cumulative = np.cumsum(counts, dtype=np.uint64)
        for key, percentile, _ in QUANTILES:
            # hdrh's rule: the first index whose cumulative count reaches round(p% of the total), at least 1.
            target = max(int(percentile * count / 100.0 + 0.5), 1)
            index = int(np.searchsorted(cumulative, np.uint64(target), side="left"))
            value = int(layout.highest[index])
            out[key] = min(max(value, low), high) / _UNITS_PER_MS
    out["clamped"] = clamped
    out["dropped"] = dropped
    return out


Series = Counter | Gauge | Histogram


def merged_stats(members: Sequence[Histogram]) -> dict[str, float]:
    """:meth:`Histogram.stats` of the union of ``members`` (at least one, all made with the same settings)."""
    counts = members[0]._counts_array().copy()  # pyright: ignore[reportPrivateUsage]
    for member in members[1:]:
        counts += member._counts_array()  # pyright: ignore[reportPrivateUsage]
    filled = [m for m in members if m.count]
    first = members[0]
    return _stats(
        counts,
        count=sum(m.count for m in members),
        total=sum(m.sum for m in members),
        low=min((m.min for m in filled), default=0),
        high=max((m.max for m in filled), default=0),
        layout=_layout(first._significant_figures, first.max_units),  # pyright: ignore[reportPrivateUsage]
        clamped=sum(m.clamped for m in members),
        dropped=sum(m.dropped for m in members),
    )
