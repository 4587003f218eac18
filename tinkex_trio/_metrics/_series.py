"""The series of the metrics store: :class:`Counter`, :class:`Gauge` and :class:`Histogram` (an HdrHistogram with
exact count, sum, min, max and standard deviation), and the statistics a histogram reports.

A series is one metric name and one label set. It is plain data with no clock and no I/O; the store
(:mod:`tinkex_trio._metrics._store`) makes them and keeps them by name and labels.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from functools import cache
from itertools import accumulate
from typing import Any, Final, Literal, Protocol, cast

from hdrh.histogram import HdrHistogram

__all__ = [
    "QUANTILES",
    "UNITS_PER_MS",
    "Counter",
    "Digest",
    "Gauge",
    "Histogram",
    "Kind",
    "LabelKey",
    "LabelValue",
    "Labels",
    "Series",
    "block_of",
    "bucket_points",
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

UNITS_PER_MS: Final = 1000
"""Histogram values are stored as integers of 1/1000 of their unit: microseconds for milliseconds."""


_WORD_SIZE: Final = 4
"""Bytes per HdrHistogram bucket count: 32-bit counts (a bucket holds up to 2**32 - 1 values) halve the memory of
hdrh's default 64-bit ones. At the defaults (``MetricsConfig``: 1 µs .. 10 min, 2 significant figures) a series
holds 3072 buckets, 12 KiB of counts (~14 KiB in all with its block index, measured with tracemalloc in
``tests/test_metrics_exposition.py``); 1 µs .. 1 h at 3 figures, the old default, was 23552 × 8 bytes, ~185 KiB."""


class _Counts(Protocol):
    """hdrh's counts array (a ctypes array): indexed and sliced at C speed."""

    def __getitem__(self, index: slice) -> list[int]: ...


class _Hdr(Protocol):
    """The part of hdrh's public API used here, typed (hdrh ships no annotations)."""

    counts: _Counts

    def record_value(self, value: int, count: int = 1) -> bool: ...
    def add(self, other_hist: _Hdr) -> None: ...
    def get_total_count(self) -> int: ...
    def get_percentile_to_value_dict(self, percentile_list: list[float]) -> dict[float, int]: ...
    def get_counts_array_index(self, value: int) -> int: ...
    def get_value_from_index(self, index: int) -> int: ...
    def get_highest_equivalent_value(self, value: int) -> int: ...


def _hdr(max_units: int, significant_figures: int) -> _Hdr:
    """An empty HdrHistogram of integers in ``[0, max_units]``."""
    return cast("_Hdr", HdrHistogram(1, max_units, significant_figures, word_size=_WORD_SIZE))


def block_of(units: int) -> int:
    """The block of a stored value in :attr:`Histogram.blocks`: the value itself below 8, else a quarter of its power
    of two, ``4 × bit length + its 2 bits after the leading one`` (values in 0-7, 8-9, 10-11, ..., 16-19, ...). Blocks
    are ordered as their values, and each one's HdrHistogram buckets are contiguous (see :func:`_block_starts`)."""
    bits = units.bit_length()
    return (bits << 2) | ((units >> (bits - 3)) & 3) if bits > 3 else units


def _blocks_len(max_units: int) -> int:
    return block_of(max_units) + 1


@cache
def _block_starts(max_units: int, significant_figures: int) -> tuple[int, ...]:
    """The first counts-array index of each block (:func:`block_of`), a block without values starting where the
    next one does, and one more entry ending the last block. At most 1/8 of a power of two wide, a block never
    splits an HdrHistogram bucket (at most 1/128 of one at 2 figures, 1/2 at 1 figure): its buckets are contiguous.
    From hdrh's public ``get_counts_array_index``, once per configuration."""
    hdr = _hdr(max_units, significant_figures)
    end = hdr.get_counts_array_index(max_units) + 1
    starts = [end] * (_blocks_len(max_units) + 1)
    for block in range(_blocks_len(max_units) - 1, -1, -1):
        bits, quarter = block >> 2, block & 3
        first = block if block < 8 else ((1 << (bits - 1)) | (quarter << (bits - 3)) if bits > 3 else -1)
        valid = first >= 0 and first <= max_units and block_of(first) == block
        starts[block] = hdr.get_counts_array_index(first) if valid else starts[block + 1]
    return tuple(starts)


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


class Histogram:
    """One histogram series: an HdrHistogram of values in ``[0, max]`` (milliseconds by convention), kept as
    integers of 1/1000 of a unit, so 0.0004 ms is 0 and 0.0125 ms is 12.5 µs → 13 (3 significant figures by
    default on top of that).

    Values above ``max`` (and ``+inf``) are recorded as ``max``, negative ones as 0; both are counted in
    ``clamped``. NaN is not recorded (counted in ``dropped``). Nothing here raises on a value.

    Count, sum, min, max, mean and standard deviation are exact (over the recorded, 1/1000-rounded values); the
    percentiles come from the buckets, as hdrh computes them (the highest value of the rank's bucket), kept within
    the exact min and max.
    """

    __slots__ = (
        "_max_ms",
        "blocks",
        "clamped",
        "dropped",
        "hdr",
        "labels",
        "max",
        "max_units",
        "min",
        "name",
        "significant_figures",
        "squares",
        "sum",
    )

    def __init__(self, name: str, labels: LabelKey, *, max_ms: int, significant_figures: int) -> None:
        self.name = name
        self.labels = labels
        self.max_units = max_ms * UNITS_PER_MS
        self._max_ms = float(max_ms)
        self.significant_figures = significant_figures
        self.hdr = _hdr(self.max_units, significant_figures)
        # Values recorded per block (see block_of): a 2-level index over hdr's counts, so a percentile or a
        # cumulative count reads one block of at most sub_bucket_count / 2 counts, not all of them.
        self.blocks = [0] * _blocks_len(self.max_units)
        # Exact aggregates, in stored units: hdrh keeps only bucketed values (its min / max are bucket bounds, and its
        # stddev walks every bucket in pure Python, ~60 ms at 3 figures).
        self.sum = 0
        self.squares = 0
        self.min = self.max_units + 1  # above any value: no branch on the first one
        self.max = 0
        self.clamped = 0
        self.dropped = 0

    @property
    def count(self) -> int:
        """Values recorded (clamped ones included, NaN not)."""
        return self.hdr.get_total_count()

    def record(self, value: float) -> None:
        """Record one value (see the class docstring for out-of-range values)."""
        if 0.0 <= value <= self._max_ms:
            units = int(value * UNITS_PER_MS + 0.5)
        else:
            units = self._out_of_range(value)
            if units < 0:
                return
        self.hdr.record_value(units)  # always in range: 0 <= units <= max_units
        bits = units.bit_length()  # block_of(units), inlined
        self.blocks[(bits << 2) | ((units >> (bits - 3)) & 3) if bits > 3 else units] += 1
        self.sum += units
        self.squares += units * units
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

    def stats(self) -> dict[str, float]:
        """count, sum, min, max, mean, stddev, p50 ... p999 (in the recorded unit), clamped, dropped."""
        return merged_stats([self])


Series = Counter | Gauge | Histogram


@cache
def _layout(max_units: int, significant_figures: int) -> tuple[_Hdr, tuple[int, ...], dict[int, int]]:
    """An empty HdrHistogram of the configuration (for its index arithmetic), :func:`_block_starts`, and a memo of
    the highest value of each counts-array index, filled as percentiles are read."""
    return _hdr(max_units, significant_figures), _block_starts(max_units, significant_figures), {}


@cache
def bucket_points(
    max_units: int, significant_figures: int, bounds_units: tuple[int, ...]
) -> tuple[tuple[int, int], ...]:
    """For each of ``bounds_units``: (its block, end of the bound's bucket + 1 in the counts array), ``(-1, 0)`` for
    a bound at or above ``max_units`` (every value) and ``(0, 0)`` for a negative one (none), for
    :meth:`Digest.counts_at_or_below`."""
    hdr = _layout(max_units, significant_figures)[0]
    points: list[tuple[int, int]] = []
    for units in bounds_units:
        if units >= max_units:
            points.append((-1, 0))
        elif units < 0:
            points.append((0, 0))
        else:
            points.append((block_of(units), hdr.get_counts_array_index(units) + 1))
    return tuple(points)


def _counts_view(hdr: _Hdr) -> memoryview:
    """hdrh's ctypes counts array as a memoryview of native unsigned ints: slices are zero-copy, sums run in C."""
    view = memoryview(cast("Any", hdr.counts)).cast("B").cast("I")
    assert view.itemsize == _WORD_SIZE
    return view


class Digest:
    """The counts of one histogram or of the union of several (all made by one store): cumulative counts and
    percentiles read at C speed (zero-copy slices of hdrh's counts, ``sum``, ``itertools.accumulate``, ``bisect``)
    from a 2-level index (values per quarter power of two, kept as they are recorded: :func:`block_of`), never
    walking every bucket in Python. hdrh's public API only: ``counts``, ``get_counts_array_index``,
    ``get_value_from_index``, ``get_highest_equivalent_value``. A union is not merged into a new HdrHistogram: only
    the blocks a percentile needs are summed."""

    __slots__ = ("count", "hdr", "highest", "max_units", "starts", "through", "views")

    def __init__(self, members: Sequence[Histogram]) -> None:
        first = members[0]
        self.hdr, self.starts, self.highest = _layout(first.max_units, first.significant_figures)
        self.views = [_counts_view(member.hdr) for member in members]
        if len(members) == 1:
            blocks = first.blocks
        else:
            blocks = [sum(column) for column in zip(*(member.blocks for member in members), strict=True)]
        self.max_units = first.max_units
        self.through = list(accumulate(blocks))
        """Values in blocks up to ``b`` (:func:`block_of`), by ``b``."""
        self.count = self.through[-1]

    def _sum(self, start: int, stop: int) -> int:
        if len(self.views) == 1:
            return sum(self.views[0][start:stop])
        return sum([sum(view[start:stop]) for view in self.views])

    def _cumulative(self, start: int, stop: int) -> list[int]:
        if len(self.views) == 1:
            return list(accumulate(self.views[0][start:stop]))
        return list(accumulate(map(sum, zip(*[view[start:stop] for view in self.views], strict=True))))

    def count_at_or_below(self, units: int) -> int:
        """Values in the buckets up to the one holding ``units``: the values ``<= units`` to the histogram's
        precision (a value in ``units``' own bucket but above it counts too: at most 1/128 above at 2 figures)."""
        if units >= self.max_units:
            return self.count
        if units < 0:
            return 0
        return self.counts_at_or_below([(block_of(units), self.hdr.get_counts_array_index(units) + 1)])[0]

    def counts_at_or_below(self, points: Sequence[tuple[int, int]]) -> list[int]:
        """:meth:`count_at_or_below` of many values at once, given as :func:`bucket_points` (precomputed)."""
        through, starts, count = self.through, self.starts, self.count
        out: list[int] = []
        for block, stop in points:
            if block < 0:
                out.append(count)
                continue
            before = through[block - 1] if block else 0
            if before == count or through[block] == before:  # nothing from here on / in this block
                out.append(before)
            else:
                out.append(before + self._sum(starts[block], stop))
        return out

    def values_at_percentiles(self, percentiles: Sequence[float]) -> list[int]:
        """hdrh's ``get_value_at_percentile`` (the highest value of the bucket holding the rank) of each of
        ``percentiles`` (ascending, ``0 < p <= 100``), for a non-empty digest."""
        through, starts, highest = self.through, self.starts, self.highest
        out: list[int] = []
        cached = -1
        within: list[int] = []
        for percentile in percentiles:
            rank = max(int(min(percentile, 100.0) * self.count / 100 + 0.5), 1)  # hdrh's get_target_count_at_percentile
            block = bisect_left(through, rank)
            if block != cached:
                cached, within = block, self._cumulative(starts[block], starts[block + 1])
            index = starts[block] + bisect_left(within, rank - (through[block - 1] if block else 0))
            value = highest.get(index)
            if value is None:
                value = highest[index] = self.hdr.get_highest_equivalent_value(self.hdr.get_value_from_index(index))
            out.append(value)
        return out

    def value_at_percentile(self, percentile: float) -> int:
        """:meth:`values_at_percentiles` of one percentile."""
        return self.values_at_percentiles([percentile])[0]


_PERCENTILES: Final = [percentile for _, percentile, _ in QUANTILES]


def merged_stats(members: Sequence[Histogram], digest: Digest | None = None) -> dict[str, float]:
    """:meth:`Histogram.stats` of the union of ``members`` (at least one, all made by one store, so with the same
    ``max_units`` and significant figures); ``digest``: theirs, if already made."""
    if digest is None:
        digest = Digest(members)
    count = digest.count
    total = sum(m.sum for m in members)
    out: dict[str, float] = {"count": count, "sum": total / UNITS_PER_MS}
    if count == 0:
        out.update({"min": 0.0, "max": 0.0, "mean": 0.0, "stddev": 0.0})
        out.update(dict.fromkeys((key for key, _, _ in QUANTILES), 0.0))
    else:
        low = min(m.min for m in members if m.count)
        high = max(m.max for m in members if m.count)
        out["min"] = low / UNITS_PER_MS
        out["max"] = high / UNITS_PER_MS
        out["mean"] = total / count / UNITS_PER_MS
        # count² × variance, exact in integers: no cancellation between two large floats.
        spread = count * sum(m.squares for m in members) - total * total
        out["stddev"] = math.sqrt(spread) / count / UNITS_PER_MS
        for (key, _, _), value in zip(QUANTILES, digest.values_at_percentiles(_PERCENTILES), strict=True):
            out[key] = min(max(value, low), high) / UNITS_PER_MS
    out["clamped"] = sum(m.clamped for m in members)
    out["dropped"] = sum(m.dropped for m in members)
    return out
