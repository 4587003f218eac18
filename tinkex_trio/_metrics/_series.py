"""The series of the metrics store: :class:`Counter`, :class:`Gauge` and :class:`Histogram` (an HdrHistogram with
exact count, sum, min, max and standard deviation), and the statistics a histogram reports.

A series is one metric name and one label set. It is plain data with no clock and no I/O; the store
(:mod:`tinkex_trio._metrics._store`) makes them and keeps them by name and labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final, Literal, Protocol, cast

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


class _Hdr(Protocol):
    """The part of hdrh's public API used here, typed (hdrh ships no annotations)."""

    def record_value(self, value: int, count: int = 1) -> bool: ...
    def add(self, other_hist: _Hdr) -> None: ...
    def get_total_count(self) -> int: ...
    def get_percentile_to_value_dict(self, percentile_list: list[float]) -> dict[float, int]: ...


def _hdr(max_units: int, significant_figures: int) -> _Hdr:
    """An empty HdrHistogram of integers in ``[0, max_units]``."""
    return cast("_Hdr", HdrHistogram(1, max_units, significant_figures))


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
        self.max_units = max_ms * _UNITS_PER_MS
        self._max_ms = float(max_ms)
        self.significant_figures = significant_figures
        self.hdr = _hdr(self.max_units, significant_figures)
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
            units = int(value * _UNITS_PER_MS + 0.5)
        else:
            units = self._out_of_range(value)
            if units < 0:
                return
        self.hdr.record_value(units)  # always in range: 0 <= units <= max_units
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


def merged_stats(members: Sequence[Histogram]) -> dict[str, float]:
    """:meth:`Histogram.stats` of the union of ``members`` (at least one, all made by one store, so with the same
    ``max_units`` and significant figures)."""
    if len(members) == 1:
        hdr = members[0].hdr
    else:
        hdr = _hdr(members[0].max_units, members[0].significant_figures)
        for member in members:
            hdr.add(member.hdr)
    count = hdr.get_total_count()
    total = sum(m.sum for m in members)
    out: dict[str, float] = {"count": count, "sum": total / _UNITS_PER_MS}
    if count == 0:
        out.update({"min": 0.0, "max": 0.0, "mean": 0.0, "stddev": 0.0})
        out.update(dict.fromkeys((key for key, _, _ in QUANTILES), 0.0))
    else:
        low = min(m.min for m in members if m.count)
        high = max(m.max for m in members if m.count)
        out["min"] = low / _UNITS_PER_MS
        out["max"] = high / _UNITS_PER_MS
        out["mean"] = total / count / _UNITS_PER_MS
        # count² × variance, exact in integers: no cancellation between two large floats.
        spread = count * sum(m.squares for m in members) - total * total
        out["stddev"] = math.sqrt(spread) / count / _UNITS_PER_MS
        values = hdr.get_percentile_to_value_dict([percentile for _, percentile, _ in QUANTILES])
        for key, percentile, _ in QUANTILES:
            out[key] = min(max(values[percentile], low), high) / _UNITS_PER_MS
    out["clamped"] = sum(m.clamped for m in members)
    out["dropped"] = sum(m.dropped for m in members)
    return out
