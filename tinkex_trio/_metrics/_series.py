"""The series of the metrics store: :class:`Counter`, :class:`Gauge` and :class:`Histogram` (log buckets of bounded
relative error, in memory that follows the values, with exact count, sum, min, max and standard deviation), and the
statistics a histogram reports.

A series is one metric name and one label set. It is plain data with no clock and no I/O; the store
(:mod:`tinkex_trio._metrics._store`) makes them and keeps them by name and labels.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cache
from itertools import accumulate
from math import ceil, log
from typing import Any, Final, Literal

__all__ = [
    "BLOCK_BITS",
    "CHUNK_BITS",
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
    "Layout",
    "Series",
    "bucket_points",
    "layout",
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


CHUNK_BITS: Final = 7
"""A histogram's buckets are kept in chunks of ``2**CHUNK_BITS`` (128), made when a value first lands in them."""
_CHUNK: Final = 1 << CHUNK_BITS
_LOW: Final = _CHUNK - 1
BLOCK_BITS: Final = 5
"""Values are also counted per block of ``2**BLOCK_BITS`` (32) buckets: a percentile finds its block by bisecting
the blocks' running totals, then walks only that block's 32 counts."""
_BLOCK: Final = 1 << BLOCK_BITS
_WIDER: Final = {"B": "H", "H": "I", "I": "Q"}
"""A chunk's counts start as bytes and widen when one overflows: 8, 16, 32, then 64 bits."""


class Layout:
    """The buckets of every histogram with one configuration: integers (1/1000 of the recorded unit, so µs for ms)
    in ``[0, max_units]``, with a relative error of ``alpha = 10**-significant_figures`` at most.

    * Below ``linear`` (the power of two at or above ``1 / (2 alpha)``: 512 at 3 figures) each integer is its own
      bucket: exact.
    * From ``linear`` up, bucket ``linear + j`` holds the values in ``(linear γ**(j-1), linear γ**j]`` with
      ``γ = (1 + alpha) / (1 - alpha)``, and reads as ``2 linear γ**j / (1 + γ)``: no value in it is more than
      ``alpha`` away, relatively (the logarithmic mapping of DDSketch, Masson et al., VLDB 2019).

    At the defaults (1 µs .. 10 min, 3 figures: 0.1 %) that is 7,500 buckets; a histogram holds only the chunks of
    128 buckets its values reach (see :class:`Histogram`). Bucket boundaries depend on the configuration alone, so
    histograms of one configuration merge bucket by bucket, exactly.
    """

    __slots__ = ("blocks", "chunks", "gamma", "linear", "max_units", "offset", "scale", "significant_figures", "size")

    def __init__(self, max_units: int, significant_figures: int) -> None:
        alpha = 10.0**-significant_figures
        self.max_units = max_units
        self.significant_figures = significant_figures
        self.gamma = (1.0 + alpha) / (1.0 - alpha)
        self.linear = 1 << max(math.ceil(math.log2(0.5 / alpha)), 0)
        self.scale = 1.0 / math.log(self.gamma)
        self.offset = math.log(self.linear) * self.scale
        self.size = self.index(max_units) + 1
        """Buckets, from 0 to the one holding ``max_units``."""
        self.chunks = (self.size + _LOW) >> CHUNK_BITS
        self.blocks = self.chunks << (CHUNK_BITS - BLOCK_BITS)

    def index(self, units: int) -> int:
        """The bucket of ``0 <= units <= max_units``."""
        if units < self.linear:
            return units
        return self.linear + math.ceil(math.log(units) * self.scale - self.offset)

    def value(self, index: int) -> float:
        """What bucket ``index`` reads as: the integer itself below ``linear``, else its bounds' midpoint (relative)."""
        if index < self.linear:
            return float(index)
        return self.linear * self.gamma ** (index - self.linear) * 2.0 / (1.0 + self.gamma)


@cache
def layout(max_units: int, significant_figures: int) -> Layout:
    """The one :class:`Layout` of a configuration."""
    return Layout(max_units, significant_figures)


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
    """One histogram series: a log-bucketed histogram (see :class:`Layout`) of values in ``[0, max]``
    (milliseconds by convention), kept as integers of 1/1000 of a unit, so 0.0004 ms is 0 and 0.0125 ms is 12.5 µs
    → 13; a percentile is within ``10**-significant_figures`` (0.1 % at the default 3) of the recorded value at its
    rank, and exact below ``Layout.linear`` units (0.512 ms at the defaults).

    Memory follows the values, not the range: the buckets live in chunks of 128, made when a value first lands in
    one, holding 1-byte counts that widen (2, 4, 8 bytes) only when one overflows. Request latencies spread over
    three decades (a lognormal, sigma 1) take ~5 KiB; every bucket of the default range at once, ~18 KiB.

    Values above ``max`` (and ``+inf``) are recorded as ``max``, negative ones as 0; both are counted in
    ``clamped``. NaN is not recorded (counted in ``dropped``). Nothing here raises on a value.

    Count, sum, min, max, mean and standard deviation are exact (over the recorded, 1/1000-rounded values); the
    percentiles come from the buckets, kept within the exact min and max.
    """

    __slots__ = (
        "_max_ms",
        "chunks",
        "clamped",
        "count",
        "dropped",
        "labels",
        "layout",
        "max",
        "max_units",
        "min",
        "name",
        "significant_figures",
        "squares",
        "sum",
        "totals",
    )

    def __init__(self, name: str, labels: LabelKey, *, max_ms: int, significant_figures: int) -> None:
        self.name = name
        self.labels = labels
        self.max_units = max_ms * UNITS_PER_MS
        self._max_ms = float(max_ms)
        self.significant_figures = significant_figures
        self.layout = layout(self.max_units, significant_figures)
        self.chunks: list[array[int] | None] = [None] * self.layout.chunks
        """The counts of buckets ``128 c .. 128 c + 127`` in ``chunks[c]``, None while all are 0."""
        self.totals = array("I", bytes(4 * self.layout.blocks))
        """Values per block of 32 buckets (:data:`BLOCK_BITS`; widened to 64 bits past 2**32 - 1): a 2-level index,
        so a percentile or a cumulative count reads 32 counts at most."""
        self.count = 0
        """Values recorded (clamped ones included, NaN not)."""
        self.sum = 0
        self.squares = 0
        self.min = self.max_units + 1  # above any value: no branch on the first one
        self.max = 0
        self.clamped = 0
        self.dropped = 0

    def record(self, value: float) -> None:
        """Record one value (see the class docstring for out-of-range values)."""
        if 0.0 <= value <= self._max_ms:
            units = int(value * UNITS_PER_MS + 0.5)
        else:
            units = self._out_of_range(value)
            if units < 0:
                return
        linear = self.layout.linear  # Layout.index, inlined
        self._add(units if units < linear else linear + ceil(log(units) * self.layout.scale - self.layout.offset), 1)
        self.sum += units
        self.squares += units * units
        if units > self.max:
            self.max = units
        if units < self.min:
            self.min = units

    def _add(self, index: int, count: int) -> None:
        chunk = self.chunks[index >> CHUNK_BITS]
        if chunk is None:
            chunk = self.chunks[index >> CHUNK_BITS] = array("B", bytes(_CHUNK))
        try:
            chunk[index & _LOW] += count
        except OverflowError:
            self._widen(index, count)
        try:
            self.totals[index >> BLOCK_BITS] += count
        except OverflowError:
            self.totals = array("Q", self.totals)
            self.totals[index >> BLOCK_BITS] += count
        self.count += count

    def _widen(self, index: int, count: int) -> None:
        chunk = self.chunks[index >> CHUNK_BITS]
        assert chunk is not None
        while True:
            chunk = self.chunks[index >> CHUNK_BITS] = array(_WIDER[chunk.typecode], chunk)
            try:
                chunk[index & _LOW] += count
            except OverflowError:
                continue
            return

    def _out_of_range(self, value: float) -> int:
        if value > 0.0:  # above max, +inf
            self.clamped += 1
            return self.max_units
        if value < 0.0:  # negative, -inf
            self.clamped += 1
            return 0
        self.dropped += 1  # NaN
        return -1

    def buckets(self) -> Iterator[tuple[int, int]]:
        """(bucket index, count) of every bucket holding values, in order: what :func:`encode` writes."""
        for number, chunk in enumerate(self.chunks):
            if chunk is not None:
                base = number << CHUNK_BITS
                yield from ((base + i, n) for i, n in enumerate(chunk) if n)

    def add_bucket(self, index: int, count: int) -> None:
        """Add ``count`` values to bucket ``index`` (merging another histogram of the same layout; its exact sum,
        min and max are the caller's to add)."""
        if not 0 <= index < self.layout.size or count < 0:
            raise ValueError(f"bucket {index} (count {count}) out of this histogram's layout")
        self._add(index, count)

    def stats(self) -> dict[str, float]:
        """count, sum, min, max, mean, stddev, p50 ... p999 (in the recorded unit), clamped, dropped."""
        return merged_stats([self])

    def to_hdrhistogram(self) -> Any:
        """This histogram as an ``hdrh.histogram.HdrHistogram`` of integer units (1/1000 of the recorded unit),
        for HdrHistogram tooling (its ``encode()`` log format, HistogramLogAnalyzer): every bucket's values are
        recorded at the bucket's value (rounded), with the same significant figures, through hdrh's public
        ``record_value``."""
        from hdrh.histogram import HdrHistogram  # only here: the store itself does not need it

        out: Any = HdrHistogram(1, max(self.max_units, 2), self.significant_figures)
        value = self.layout.value
        for index, count in self.buckets():
            out.record_value(min(max(round(value(index)), self.min), self.max), count)
        return out


Series = Counter | Gauge | Histogram


@cache
def bucket_points(
    max_units: int, significant_figures: int, bounds_units: tuple[int, ...]
) -> tuple[tuple[int, int], ...]:
    """For each of ``bounds_units``: (its block, its bucket + 1), ``(-1, 0)`` for a bound at or above ``max_units``
    (every value) and ``(0, 0)`` for a negative one (none), for :meth:`Digest.counts_at_or_below`."""
    shape = layout(max_units, significant_figures)
    points: list[tuple[int, int]] = []
    for units in bounds_units:
        if units >= max_units:
            points.append((-1, 0))
        elif units < 0:
            points.append((0, 0))
        else:
            index = shape.index(units)
            points.append((index >> BLOCK_BITS, index + 1))
    return tuple(points)


class Digest:
    """The counts of one histogram or of the union of several (all of one layout): cumulative counts and
    percentiles read at C speed (``itertools.accumulate`` and ``bisect`` over the running totals of the blocks of 32
    buckets, then over one block's counts), never walking every bucket in Python. A union is not merged into a new
    histogram: only the blocks a percentile needs are summed."""

    __slots__ = ("count", "layout", "members", "through")

    def __init__(self, members: Sequence[Histogram]) -> None:
        first = members[0]
        self.layout = first.layout
        self.members = members
        if len(members) == 1:
            totals: Iterable[int] = first.totals
        else:
            totals = map(sum, zip(*[member.totals for member in members], strict=True))
        self.through = list(accumulate(totals))
        """Values in blocks up to ``b``, by ``b``."""
        self.count = self.through[-1]

    def _counts(self, block: int, stop: int) -> Sequence[int]:
        """The counts of ``block``'s buckets (of every member, summed) up to bucket ``stop`` (excluded)."""
        start = block << BLOCK_BITS
        number, low, high = start >> CHUNK_BITS, start & _LOW, ((stop - 1) & _LOW) + 1
        chunks = [chunk for member in self.members if (chunk := member.chunks[number]) is not None]
        if len(chunks) == 1:
            return chunks[0][low:high]
        return list(map(sum, zip(*[chunk[low:high] for chunk in chunks], strict=True)))

    def count_at_or_below(self, units: int) -> int:
        """Values in the buckets up to the one holding ``units``: the values ``<= units`` to the histogram's
        precision (a value in ``units``' own bucket but above it counts too: at most ``2 alpha`` above)."""
        layout = self.layout
        return self.counts_at_or_below(bucket_points(layout.max_units, layout.significant_figures, (units,)))[0]

    def counts_at_or_below(self, points: Sequence[tuple[int, int]]) -> list[int]:
        """:meth:`count_at_or_below` of many values at once, given as :func:`bucket_points` (precomputed)."""
        through, count = self.through, self.count
        out: list[int] = []
        for block, stop in points:
            if block < 0:
                out.append(count)
                continue
            before = through[block - 1] if block else 0
            if before == count or through[block] == before:  # nothing from here on / in this block
                out.append(before)
            else:
                out.append(before + sum(self._counts(block, stop)))
        return out

    def values_at_percentiles(self, percentiles: Sequence[float]) -> list[float]:
        """The value of the bucket holding each of ``percentiles``' rank (ascending, ``0 < p <= 100``; the rank of
        HdrHistogram, ``max(round(p / 100 × count), 1)``), for a non-empty digest, in stored units."""
        through, value, count = self.through, self.layout.value, self.count
        single = self.members[0].chunks if len(self.members) == 1 else None
        out: list[float] = []
        cached = -1
        within: list[int] = []
        for percentile in percentiles:
            rank = max(int(min(percentile, 100.0) * count / 100 + 0.5), 1)
            block = bisect_left(through, rank)
            if block != cached:
                cached = block
                if single is not None:  # _counts, inlined for the common case (the chunk holds the rank: not None)
                    start = (block << BLOCK_BITS) & _LOW
                    chunk = single[block >> (CHUNK_BITS - BLOCK_BITS)]
                    assert chunk is not None
                    counts: Sequence[int] = chunk[start : start + _BLOCK]
                else:
                    counts = self._counts(block, (block + 1) << BLOCK_BITS)
                within = list(accumulate(counts))
            position = bisect_left(within, rank - (through[block - 1] if block else 0))
            out.append(value((block << BLOCK_BITS) + position))
        return out

    def value_at_percentile(self, percentile: float) -> float:
        """:meth:`values_at_percentiles` of one percentile."""
        return self.values_at_percentiles([percentile])[0]


_PERCENTILES: Final = [percentile for _, percentile, _ in QUANTILES]
_KEYS: Final = [key for key, _, _ in QUANTILES]
_EMPTY: Final = ("count", "sum", "min", "max", "mean", "stddev", *_KEYS)


def merged_stats(members: Sequence[Histogram], digest: Digest | None = None) -> dict[str, float]:
    """:meth:`Histogram.stats` of the union of ``members`` (at least one, all made by one store, so with the same
    layout); ``digest``: theirs, if already made."""
    if len(members) == 1:
        only = members[0]
        count, total, squares, clamped, dropped = only.count, only.sum, only.squares, only.clamped, only.dropped
        low, high = only.min, only.max
    else:
        count = sum([m.count for m in members])
        total = sum([m.sum for m in members])
        squares = sum([m.squares for m in members])
        clamped = sum([m.clamped for m in members])
        dropped = sum([m.dropped for m in members])
        low = min([m.min for m in members])  # an empty member's min is above any value, its max 0
        high = max([m.max for m in members])
    if count == 0:
        out = dict.fromkeys(_EMPTY, 0.0)
    else:
        # count² × variance, exact in integers: no cancellation between two large floats.
        spread = count * squares - total * total
        out = {
            "count": count,
            "sum": total / UNITS_PER_MS,
            "min": low / UNITS_PER_MS,
            "max": high / UNITS_PER_MS,
            "mean": total / count / UNITS_PER_MS,
            "stddev": math.sqrt(spread) / count / UNITS_PER_MS,
        }
        if digest is None:
            digest = Digest(members)
        for key, value in zip(_KEYS, digest.values_at_percentiles(_PERCENTILES), strict=True):
            out[key] = (low if value < low else high if value > high else value) / UNITS_PER_MS
    out["count"] = count
    out["clamped"] = clamped
    out["dropped"] = dropped
    return out
