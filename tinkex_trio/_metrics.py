"""Client-side metrics: counters, gauges and HdrHistogram latency histograms, fed by the session's telemetry.

::

    m = tinkex_trio.Metrics()                      # usable on its own: no trio, no session
    m.increment("jobs")                             # counters
    m.set_gauge("queue_depth", 3.0)                 # gauges
    m.record_histogram("step_ms", 45.2, labels={"phase": "fwd"})   # histograms (milliseconds by convention)
    m.get_all_metrics()                             # a plain dict (see Metrics.get_all_metrics)
    m.to_prometheus()                               # text exposition format 0.0.4

Inside a session (``config.metrics.enabled``), :class:`MetricsFeed` turns telemetry events into metrics inline (a
handler on the session's :class:`~tinkex_trio._telemetry.TelemetryBus`) and its :meth:`MetricsFeed.run` task emits a
``tinkex.metrics.snapshot`` event every ``config.metrics.snapshot_interval_s``.

The store is sans-I/O (DESIGN §3): time comes from an injectable ``clock`` or is passed in, and nothing here awaits
except :meth:`MetricsFeed.run`. It is **not thread-safe**: a session uses it from its one trio thread; guard it with
a lock if you share a store between threads.
"""

from __future__ import annotations

import ctypes
import functools
import math
import re
import sys
import time as _time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import numpy as np
import numpy.typing as npt
import trio
from hdrh.histogram import HdrHistogram

from tinkex_trio._config import MetricsConfig
from tinkex_trio._endpoints import API_PREFIX, EndpointMatch, match
from tinkex_trio._telemetry import (
    BATCH_FORWARD_BACKWARD_STOP,
    BATCH_OPTIM_STEP_STOP,
    CIRCUIT_BREAKER_REJECTED,
    CIRCUIT_BREAKER_STATE_CHANGE,
    FUTURE_QUEUE_STATE,
    HTTP_REQUEST_EXCEPTION,
    HTTP_REQUEST_STOP,
    METRICS_SNAPSHOT,
    RETRY,
    SESSION_HEARTBEAT,
    MetadataValue,
    TelemetryBus,
    TelemetryEvent,
)

__all__ = [
    "DEFAULT_MAX_SERIES",
    "QUANTILES",
    "REQUESTS_TOTAL",
    "REQUEST_DURATION_MS",
    "REQUEST_ERRORS_TOTAL",
    "RETRIES_TOTAL",
    "Counter",
    "Gauge",
    "Histogram",
    "LabelValue",
    "Labels",
    "Metrics",
    "MetricsFeed",
    "path_template",
]

LabelValue = str | int | float | bool | None
Labels = Mapping[str, LabelValue]
_LabelKey = tuple[tuple[str, str], ...]
_Kind = Literal["counter", "gauge", "histogram"]

QUANTILES: Final[tuple[tuple[str, float, str], ...]] = (
    ("p50", 50.0, "0.5"),
    ("p90", 90.0, "0.9"),
    ("p95", 95.0, "0.95"),
    ("p99", 99.0, "0.99"),
    ("p999", 99.9, "0.999"),
)
"""The percentiles every histogram reports: ``get_all_metrics`` key, percentile, Prometheus ``quantile`` label."""

DEFAULT_MAX_SERIES: Final = 1000
"""Label sets per metric name; beyond it, values go to one series labelled ``overflow="true"``."""

_UNITS_PER_MS: Final = 1000
"""Histogram values are stored as integers of 1/1000 of their unit: microseconds for milliseconds."""

_OVERFLOW_KEY: Final[_LabelKey] = (("overflow", "true"),)
_ALIASES_PER_SERIES: Final = 4

# Metric names fed from telemetry (MetricsFeed).
REQUEST_DURATION_MS: Final = "tinkex_request_duration_ms"
REQUESTS_TOTAL: Final = "tinkex_requests_total"
REQUEST_ERRORS_TOTAL: Final = "tinkex_request_errors_total"
RETRIES_TOTAL: Final = "tinkex_retries_total"
_QUEUE_STATE_TOTAL: Final = "tinkex_future_queue_state_changes_total"
_HEARTBEATS_TOTAL: Final = "tinkex_session_heartbeats_total"
_SESSION_EXPIRED: Final = "tinkex_session_expired"
_BREAKER_TRANSITIONS_TOTAL: Final = "tinkex_circuit_breaker_transitions_total"
_BREAKER_REJECTED_TOTAL: Final = "tinkex_circuit_breaker_rejected_total"
_BATCHES_TOTAL: Final = "tinkex_batches_total"
_BATCH_DURATION_MS: Final = "tinkex_batch_duration_ms"
_BATCH_SIZE: Final = "tinkex_batch_size"


# --------------------------------------------------------------------------------------------------------------------
# Series
# --------------------------------------------------------------------------------------------------------------------


class Counter:
    """One counter series (a name and a label set). ``inc`` is the cheapest way to count on a hot path."""

    __slots__ = ("labels", "name", "value")

    def __init__(self, name: str, labels: _LabelKey) -> None:
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

    def __init__(self, name: str, labels: _LabelKey) -> None:
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

    def __init__(self, name: str, labels: _LabelKey, *, max_ms: int, significant_figures: int) -> None:
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


_Series = Counter | Gauge | Histogram


class _Family:
    """The series of one metric name, by label set."""

    __slots__ = ("aliases", "kind", "name", "plain", "series")

    def __init__(self, name: str, kind: _Kind) -> None:
        self.name = name
        self.kind: _Kind = kind
        self.series: dict[_LabelKey, Any] = {}
        self.plain: Any = None  # the unlabelled series, once made (the fastest lookup)
        # Label mappings as given (unsorted items, all values str) -> series: skips sorting on a repeated label set.
        # Only all-str items are stored, so 1 / True / 1.0 (equal as dict keys) never find a "1" / "true" series.
        self.aliases: dict[tuple[tuple[str, LabelValue], ...], Any] = {}


# --------------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------------


def _label_str(value: LabelValue) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _label_key(labels: Labels) -> _LabelKey:
    for name in labels:
        if not isinstance(name, str) or not name:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"label names must be non-empty strings, got {name!r}")
    return tuple(sorted([(name, _label_str(value)) for name, value in labels.items()]))


class Metrics:
    """A store of counters, gauges and histograms (see the module docstring). Not thread-safe.

    Args:
        config: ``significant_figures`` and ``histogram_max_ms`` of the histograms (default: ``MetricsConfig()``).
        clock: the time source for ``get_all_metrics`` / ``reset`` when no ``now`` is passed
            (default ``time.monotonic``; a session passes ``trio.current_time``).
        max_series: label sets per metric name (beyond it, one ``overflow="true"`` series takes the values).

    A name holds one kind of metric: using a counter's name for a gauge raises ``ValueError``. Labels are a small
    mapping of str to str / int / float / bool / None (compared as strings: ``True`` is ``"true"``, ``None`` is
    ``""``); each label set is its own series. For hot loops, :meth:`counter`, :meth:`gauge` and :meth:`histogram`
    return the series object itself (valid until the next :meth:`reset`).
    """

    def __init__(
        self,
        config: MetricsConfig | None = None,
        *,
        clock: Callable[[], float] = _time.monotonic,
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> None:
        if max_series < 1:
            raise ValueError(f"max_series must be >= 1, got {max_series}")
        self.config = config if config is not None else MetricsConfig()
        self._clock = clock
        self._max_series = max_series
        self._families: dict[str, _Family] = {}
        self._started = clock()
        self.generation = 0
        """Bumped by :meth:`reset`: series objects from an older generation are no longer in the store."""

    def __repr__(self) -> str:
        series = sum(len(f.series) for f in self._families.values())
        return f"<Metrics names={len(self._families)} series={series}>"

    # -- series lookup ----------------------------------------------------------------------------------------------

    def _family(self, name: str, kind: _Kind) -> _Family:
        family = self._families.get(name)
        if family is None:
            if not isinstance(name, str) or not name:  # pyright: ignore[reportUnnecessaryIsInstance]
                raise TypeError(f"a metric name must be a non-empty string, got {name!r}")
            family = self._families[name] = _Family(name, kind)
        elif family.kind != kind:
            raise ValueError(f"metric {name!r} is a {family.kind}, not a {kind}")
        return family

    def _new(self, family: _Family, key: _LabelKey) -> Any:
        if family.kind == "counter":
            return Counter(family.name, key)
        if family.kind == "gauge":
            return Gauge(family.name, key)
        return Histogram(
            family.name,
            key,
            max_ms=self.config.histogram_max_ms,
            significant_figures=self.config.significant_figures,
        )

    def _series(self, name: str, kind: _Kind, labels: Labels | None) -> Any:
        family = self._families.get(name)
        if not labels:
            if family is not None and family.plain is not None and family.kind == kind:
                return family.plain
            family = self._family(name, kind)
            series = family.plain = self._get_or_make(family, ())
            return series
        if family is None or family.kind != kind:
            family = self._family(name, kind)
        items = tuple(labels.items())
        series = family.aliases.get(items)
        if series is None:
            series = self._get_or_make(family, _label_key(labels))
            if len(family.aliases) < _ALIASES_PER_SERIES * self._max_series and all(
                type(value) is str for _, value in items
            ):
                family.aliases[items] = series
        return series

    def _get_or_make(self, family: _Family, key: _LabelKey) -> Any:
        series = family.series.get(key)
        if series is None:
            if len(family.series) >= self._max_series:
                key = _OVERFLOW_KEY
                series = family.series.get(key)
                if series is not None:
                    return series
            series = family.series[key] = self._new(family, key)
        return series

    def counter(self, name: str, labels: Labels | None = None) -> Counter:
        """The counter series ``name`` / ``labels`` (made at zero if new)."""
        series: Counter = self._series(name, "counter", labels)
        return series

    def gauge(self, name: str, labels: Labels | None = None) -> Gauge:
        """The gauge series ``name`` / ``labels`` (made at 0.0 if new)."""
        series: Gauge = self._series(name, "gauge", labels)
        return series

    def histogram(self, name: str, labels: Labels | None = None) -> Histogram:
        """The histogram series ``name`` / ``labels`` (made empty if new)."""
        series: Histogram = self._series(name, "histogram", labels)
        return series

    # -- recording --------------------------------------------------------------------------------------------------

    def increment(self, name: str, value: float = 1, *, labels: Labels | None = None) -> None:
        """Add ``value`` (>= 0) to a counter."""
        self.counter(name, labels).inc(value)

    def set_gauge(self, name: str, value: float, *, labels: Labels | None = None) -> None:
        """Set a gauge."""
        self.gauge(name, labels).value = float(value)

    def record_histogram(self, name: str, value: float, *, labels: Labels | None = None) -> None:
        """Record a value (milliseconds by convention) in a histogram. Out-of-range values are clamped and
        counted, never raised on (see :class:`Histogram`)."""
        family = self._families.get(name)
        if labels is None and family is not None and family.plain is not None and family.kind == "histogram":
            family.plain.record(value)  # the common case: one dict lookup
            return
        series: Histogram = self._series(name, "histogram", labels)
        series.record(value)

    def reset(self, *, now: float | None = None) -> None:
        """Forget every series (series objects held by callers are detached from the store)."""
        self._families.clear()
        self._started = self._clock() if now is None else now
        self.generation += 1

    # -- reading ----------------------------------------------------------------------------------------------------

    def get_counter(self, name: str, labels: Labels | None = None) -> float:
        """A counter's value (0 if it does not exist)."""
        series = self._lookup(name, "counter", labels)
        return series.value if isinstance(series, Counter) else 0

    def get_gauge(self, name: str, labels: Labels | None = None) -> float | None:
        """A gauge's value (None if it was never set)."""
        series = self._lookup(name, "gauge", labels)
        return series.value if isinstance(series, Gauge) else None

    def get_histogram(self, name: str, labels: Labels | None = None) -> dict[str, float] | None:
        """A histogram's statistics (None if it does not exist)."""
        series = self._lookup(name, "histogram", labels)
        return series.stats() if isinstance(series, Histogram) else None

    def counter_total(self, name: str) -> float:
        """The sum of a counter over all its label sets."""
        family = self._families.get(name)
        if family is None or family.kind != "counter":
            return 0
        return sum(series.value for series in family.series.values())

    def _lookup(self, name: str, kind: _Kind, labels: Labels | None) -> _Series | None:
        family = self._families.get(name)
        if family is None or family.kind != kind:
            return None
        series: _Series | None = family.series.get(_label_key(labels) if labels else ())
        return series

    def summary(self, name: str) -> dict[str, float] | None:
        """A histogram's statistics merged over all its label sets, plus ``series`` (how many); None if absent."""
        family = self._families.get(name)
        if family is None or family.kind != "histogram" or not family.series:
            return None
        members: list[Histogram] = list(family.series.values())
        counts = members[0]._counts_array().copy()  # pyright: ignore[reportPrivateUsage]
        for member in members[1:]:
            counts += member._counts_array()  # pyright: ignore[reportPrivateUsage]
        filled = [m for m in members if m.count]
        first = members[0]
        stats = _stats(
            counts,
            count=sum(m.count for m in members),
            total=sum(m.sum for m in members),
            low=min((m.min for m in filled), default=0),
            high=max((m.max for m in filled), default=0),
            layout=_layout(first._significant_figures, first.max_units),  # pyright: ignore[reportPrivateUsage]
            clamped=sum(m.clamped for m in members),
            dropped=sum(m.dropped for m in members),
        )
        stats["series"] = len(members)
        return stats

    def get_all_metrics(self, *, now: float | None = None) -> dict[str, Any]:
        """Everything, as plain data::

            {"counters":   {"jobs": 3.0, 'tinkex_requests_total{method="POST",...}': 12, ...},
             "gauges":     {"queue_depth": 3.0, ...},
             "histograms": {"step_ms": {"count", "sum", "min", "max", "mean", "stddev",
                                        "p50", "p90", "p95", "p99", "p999", "clamped", "dropped"}, ...},
             "summaries":  {"step_ms": {...the same, merged over every label set..., "series": n}},
             "time": now, "since": when the store was made or last reset}

        A series without labels is keyed by its name; one with labels by ``name{k="v",...}`` (labels sorted,
        values escaped as in Prometheus). Histogram values are in the recorded unit (milliseconds by convention).
        """
        counters: dict[str, float] = {}
        gauges: dict[str, float] = {}
        histograms: dict[str, dict[str, float]] = {}
        summaries: dict[str, dict[str, float]] = {}
        for name in sorted(self._families):
            family = self._families[name]
            for key in sorted(family.series):
                series = family.series[key]
                label = _series_label(name, key)
                if family.kind == "counter":
                    counters[label] = series.value
                elif family.kind == "gauge":
                    gauges[label] = series.value
                else:
                    histograms[label] = series.stats()
            if family.kind == "histogram":
                merged = self.summary(name)
                if merged is not None:
                    summaries[name] = merged
        return {
            "counters": counters,
            "gauges": gauges,
            "histograms": histograms,
            "summaries": summaries,
            "time": self._clock() if now is None else now,
            "since": self._started,
        }

    def snapshot(self) -> dict[str, float]:
        """A compact, flat summary of the session's request metrics (the ``tinkex.metrics.snapshot`` event's
        measurements): request, error and retry totals, and the request latency merged over every label set."""
        out: dict[str, float] = {
            "requests_total": self.counter_total(REQUESTS_TOTAL),
            "request_errors_total": self.counter_total(REQUEST_ERRORS_TOTAL),
            "retries_total": self.counter_total(RETRIES_TOTAL),
            "series": sum(len(f.series) for f in self._families.values()),
        }
        latency = self.summary(REQUEST_DURATION_MS)
        if latency is not None:
            for key in ("count", "mean", "max", "p50", "p90", "p99"):
                out[f"request_duration_ms_{key}"] = latency[key]
        return out

    def to_prometheus(self) -> str:
        """The metrics in the Prometheus text exposition format (0.0.4).

        Counters get a ``_total`` suffix (unless they have one), gauges are plain, histograms are summaries: one
        line per quantile (``quantile="0.5"`` ... ``"0.999"``) plus ``_sum`` and ``_count``. Names are sanitised to
        ``[a-zA-Z_:][a-zA-Z0-9_:]*`` and label names to ``[a-zA-Z_][a-zA-Z0-9_]*``; label values are escaped.
        """
        blocks: dict[str, tuple[str, list[str]]] = {}
        for name in sorted(self._families):
            family = self._families[name]
            metric = _sanitize_name(name)
            if family.kind == "counter" and not metric.endswith("_total"):
                metric += "_total"
            prom_type = "summary" if family.kind == "histogram" else family.kind
            lines = blocks.setdefault(metric, (prom_type, []))[1]
            for key in sorted(family.series):
                series = family.series[key]
                if family.kind == "histogram":
                    stats = series.stats()
                    for stat, _, quantile in QUANTILES:
                        lines.append(
                            f"{metric}{_prom_labels(key, ('quantile', quantile))} {_format_value(stats[stat])}"
                        )
                    lines.append(f"{metric}_sum{_prom_labels(key)} {_format_value(stats['sum'])}")
                    lines.append(f"{metric}_count{_prom_labels(key)} {int(stats['count'])}")
                else:
                    lines.append(f"{metric}{_prom_labels(key)} {_format_value(series.value)}")
        out: list[str] = []
        for metric, (prom_type, lines) in blocks.items():
            out.append(f"# TYPE {metric} {prom_type}")
            out.extend(lines)
        return "\n".join(out) + "\n" if out else ""


# -- formatting -------------------------------------------------------------------------------------------------------

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_BAD = re.compile(r"[^a-zA-Z0-9_]")


def _sanitize_name(name: str) -> str:
    clean = _NAME_BAD.sub("_", name)
    return clean if clean and not clean[0].isdigit() else "_" + clean


def _sanitize_label(name: str) -> str:
    clean = _LABEL_BAD.sub("_", name)
    if not clean or clean[0].isdigit():
        clean = "_" + clean
    if clean.startswith("__"):  # reserved for Prometheus' own labels
        clean = "x" + clean
    return clean


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _prom_labels(key: _LabelKey, extra: tuple[str, str] | None = None) -> str:
    pairs = [f'{_sanitize_label(k)}="{_escape(v)}"' for k, v in key]
    if extra is not None:
        pairs.append(f'{extra[0]}="{extra[1]}"')
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _series_label(name: str, key: _LabelKey) -> str:
    if not key:
        return name
    return name + "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in key) + "}"


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


# --------------------------------------------------------------------------------------------------------------------
# Paths → templates (bounded label cardinality)
# --------------------------------------------------------------------------------------------------------------------

_ID_COLLECTIONS: Final = frozenset({"sessions", "samplers", "training_runs"})
"""The segment after one of these is an id (``sessions/search`` excepted)."""
_NOT_IDS: Final = frozenset({"search"})
_CHECKPOINT_KINDS: Final = frozenset({"weights", "sampler_weights", "external_weights"})
_WORD: Final = re.compile(r"[a-z][a-z_]{0,39}|v[0-9]")
_TEMPLATE_CACHE_MAX: Final = 4096
_template_cache: dict[str, str] = {}


def path_template(path: str) -> str:
    """``/api/v1/sessions/3f2c.../finish`` → ``/api/v1/sessions/{id}/finish``: ids and names out of a request path.

    A path of the protocol's table (`tinkex_trio._endpoints`) gets its endpoint's template with every parameter
    written ``{id}``, except a checkpoint id, written ``<kind>/{name}``. In any other path, the segment after
    ``sessions``, ``samplers`` or ``training_runs`` is ``{id}``; after ``checkpoints/<kind>/`` it is ``{name}``; any
    other segment that is not a lowercase word (``[a-z][a-z_]*``, or ``v1``) is ``{id}`` too. The query string and
    any scheme / host are dropped.
    """
    cached = _template_cache.get(path)
    if cached is not None:
        return cached
    raw = path
    if "://" in raw:
        raw = raw.split("://", 1)[1]
        raw = raw[raw.find("/") :] if "/" in raw else "/"
    segments = [s for s in raw.split("?", 1)[0].split("#", 1)[0].split("/") if s]
    found = match("/" + "/".join(segments))
    result = "/" + "/".join(_endpoint_labels(found) if found is not None else _generic_labels(segments))
    if len(_template_cache) >= _TEMPLATE_CACHE_MAX:
        _template_cache.clear()
    _template_cache[path] = result
    return result


def _endpoint_labels(found: EndpointMatch) -> list[str]:
    out = [API_PREFIX.strip("/")]
    for segment in found.endpoint.segments:
        if not (segment.startswith("{") and segment.endswith("}")):
            out.append(segment)
        elif segment == "{checkpoint_id}":
            kind = found.params["checkpoint_id"].split("/", 1)[0]
            out.append(f"{kind if kind in _CHECKPOINT_KINDS else '{id}'}/{{name}}")
        else:
            out.append("{id}")
    return out


def _generic_labels(segments: list[str]) -> list[str]:
    out: list[str] = []
    previous = ""
    before = ""
    for segment in segments:
        if previous in _ID_COLLECTIONS and segment not in _NOT_IDS:
            template = "{id}"
        elif before == "checkpoints" and previous in _CHECKPOINT_KINDS:
            template = "{name}"
        elif _WORD.fullmatch(segment):
            template = segment
        else:
            template = "{id}"
        out.append(template)
        before, previous = previous, segment
    return out


# --------------------------------------------------------------------------------------------------------------------
# Telemetry → metrics
# --------------------------------------------------------------------------------------------------------------------


def _status_class(metadata: Mapping[str, MetadataValue]) -> str:
    if metadata.get("cancelled"):
        return "cancelled"
    status = metadata.get("status")
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
        return f"{status // 100}xx"
    return "unknown"


def _word(value: MetadataValue, default: str = "unknown") -> str:
    """A metadata value fit for a label: a short identifier-like string (class names, states, pools), else
    ``default``; never an arbitrary string (ids, messages)."""
    if isinstance(value, str) and _LABEL_WORD.fullmatch(value):
        return value
    return default


_LABEL_WORD: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}")
_BREAKER_STATES: Final = frozenset({"closed", "open", "half_open"})
_HANDLES_MAX: Final = 4096


class MetricsFeed:
    """Turns a :class:`~tinkex_trio._telemetry.TelemetryBus`'s events into metrics in a :class:`Metrics` store.

    =====================================  =====================================================================
    event                                  metrics
    =====================================  =====================================================================
    ``tinkex.http.request.stop``           histogram ``tinkex_request_duration_ms`` and counter
                                           ``tinkex_requests_total``, labels ``method``, ``endpoint`` (the path
                                           template), ``pool``, ``status_class`` (``2xx`` ... ``5xx``, or
                                           ``cancelled``)
    ``tinkex.http.request.exception``      counter ``tinkex_request_errors_total`` (``method``, ``endpoint``,
                                           ``pool``, ``kind``: no HTTP answer, e.g. a connection error)
    ``tinkex.retry``                       counter ``tinkex_retries_total`` (``endpoint``, ``reason``, ``error``)
    ``tinkex.future.queue_state``          counter ``tinkex_future_queue_state_changes_total``
                                           (``request_type``, ``queue_state``)
    ``tinkex.session.heartbeat``           counter ``tinkex_session_heartbeats_total`` (``ok``); gauge
                                           ``tinkex_session_expired`` set to 1 on a 410
    ``tinkex.circuit_breaker.*``           counters ``tinkex_circuit_breaker_transitions_total`` (``to``) and
                                           ``tinkex_circuit_breaker_rejected_total`` (``method``, ``endpoint``,
                                           ``pool``); the breaker supervisor sets the gauge
                                           ``tinkex_circuit_breaker_state`` (0 closed, 1 half_open, 2 open)
    ``tinkex.batch.*.stop``                counter ``tinkex_batches_total`` (``op``); histograms
                                           ``tinkex_batch_duration_ms`` and ``tinkex_batch_size`` when measured
    =====================================  =====================================================================

    Labels never carry ids, keys, paths with ids or free text: the path is reduced by :func:`path_template`, the
    other values must be short identifier-like words (else ``unknown``).

    Why a handler and not a channel subscription: the bus calls handlers inline, so each request updates its
    histogram with a couple of dict lookups (~1-2 µs, measured), counts stay exact under load (a full channel would
    drop events), and no task switch is spent per event. The periodic part (snapshots) is :meth:`run`, a task in
    the session's nursery.
    """

    HANDLER_ID: Final = "tinkex_trio.metrics"
    EVENTS: Final = (
        HTTP_REQUEST_STOP,
        HTTP_REQUEST_EXCEPTION,
        RETRY,
        FUTURE_QUEUE_STATE,
        SESSION_HEARTBEAT,
        CIRCUIT_BREAKER_STATE_CHANGE,
        CIRCUIT_BREAKER_REJECTED,
        BATCH_FORWARD_BACKWARD_STOP,
        BATCH_OPTIM_STEP_STOP,
    )

    def __init__(self, metrics: Metrics, *, snapshot_interval_s: float | None = None) -> None:
        interval = metrics.config.snapshot_interval_s if snapshot_interval_s is None else snapshot_interval_s
        if not interval > 0:
            raise ValueError(f"snapshot_interval_s must be > 0, got {interval!r}")
        self.metrics = metrics
        self.snapshot_interval_s = interval
        self._bus: TelemetryBus | None = None
        self._generation = metrics.generation
        self._request_handles: dict[tuple[object, ...], tuple[Histogram, Counter]] = {}
        self._dispatch: dict[str, Callable[[TelemetryEvent], None]] = {
            HTTP_REQUEST_STOP: self._on_request_stop,
            HTTP_REQUEST_EXCEPTION: self._on_request_exception,
            RETRY: self._on_retry,
            FUTURE_QUEUE_STATE: self._on_queue_state,
            SESSION_HEARTBEAT: self._on_heartbeat,
            CIRCUIT_BREAKER_STATE_CHANGE: self._on_breaker_change,
            CIRCUIT_BREAKER_REJECTED: self._on_breaker_rejected,
            BATCH_FORWARD_BACKWARD_STOP: self._on_batch_stop,
            BATCH_OPTIM_STEP_STOP: self._on_batch_stop,
        }

    def attach(self, bus: TelemetryBus) -> MetricsFeed:
        """Start receiving the bus's events (inline handler ``MetricsFeed.HANDLER_ID``). Returns self."""
        if self._bus is not None:
            raise RuntimeError("this MetricsFeed is already attached")
        bus.attach(self.HANDLER_ID, self.EVENTS, self.handle)
        self._bus = bus
        return self

    def detach(self) -> None:
        """Stop receiving events. Idempotent."""
        if self._bus is not None:
            self._bus.detach(self.HANDLER_ID)
            self._bus = None

    def handle(self, event: TelemetryEvent) -> None:
        """Update the metrics for one event (events it does not know are ignored)."""
        handler = self._dispatch.get(event.name)
        if handler is not None:
            handler(event)

    async def run(self) -> None:
        """Emit ``tinkex.metrics.snapshot`` (measurements: :meth:`Metrics.snapshot`) on the attached bus every
        ``snapshot_interval_s`` (default ``metrics.config.snapshot_interval_s``) of trio time, until cancelled;
        then detach. The session runs it in its nursery, for the life of the session."""
        interval_s = self.snapshot_interval_s
        try:
            deadline = trio.current_time() + interval_s
            while True:  # bounded by the session: cancelled with its nursery
                await trio.sleep_until(deadline)
                now = trio.current_time()
                # Fixed rate; after a stall, skip the missed ticks instead of bursting.
                deadline = max(deadline + interval_s, now + interval_s / 2)
                bus = self._bus
                if bus is not None and bus.has_listeners(METRICS_SNAPSHOT):
                    bus.emit(METRICS_SNAPSHOT, self.metrics.snapshot(), {"interval_s": interval_s}, time=now)
        finally:
            self.detach()

    # -- handlers ---------------------------------------------------------------------------------------------------

    def _fresh(self) -> None:
        if self._generation != self.metrics.generation:  # the store was reset: cached series are gone
            self._generation = self.metrics.generation
            self._request_handles.clear()

    def _on_request_stop(self, event: TelemetryEvent) -> None:
        metadata = event.metadata
        self._fresh()
        key = (
            metadata.get("method"),
            metadata.get("path"),
            metadata.get("pool"),
            metadata.get("status"),
            metadata.get("cancelled"),
        )
        handles = self._request_handles.get(key)
        if handles is None:
            labels = self._request_labels(metadata)
            labels["status_class"] = _status_class(metadata)
            handles = (
                self.metrics.histogram(REQUEST_DURATION_MS, labels),
                self.metrics.counter(REQUESTS_TOTAL, labels),
            )
            if len(self._request_handles) >= _HANDLES_MAX:
                self._request_handles.clear()
            self._request_handles[key] = handles
        duration = event.measurements.get("duration_ms")
        if duration is not None:
            handles[0].record(duration)
        handles[1].value += 1

    @staticmethod
    def _request_labels(metadata: Mapping[str, MetadataValue]) -> dict[str, LabelValue]:
        path = metadata.get("path")
        return {
            "method": _word(metadata.get("method")),
            "endpoint": path_template(path) if isinstance(path, str) else "unknown",
            "pool": _word(metadata.get("pool")),
        }

    def _on_request_exception(self, event: TelemetryEvent) -> None:
        labels = self._request_labels(event.metadata)
        labels["kind"] = _word(event.metadata.get("kind"))
        self.metrics.counter(REQUEST_ERRORS_TOTAL, labels).value += 1

    def _on_retry(self, event: TelemetryEvent) -> None:
        metadata = event.metadata
        path = metadata.get("path")
        # Transport retries carry the path; the sampler's own retries name the SDK method instead.
        endpoint = path_template(path) if isinstance(path, str) else _word(metadata.get("method"))
        labels: dict[str, LabelValue] = {
            "endpoint": endpoint,
            "reason": _word(metadata.get("reason")),
            "error": _word(metadata.get("error")),
        }
        self.metrics.counter(RETRIES_TOTAL, labels).value += 1

    def _on_queue_state(self, event: TelemetryEvent) -> None:
        # A counter of transitions, not a gauge of "futures in each state": a future that completes sends no event,
        # so such a gauge would go stale.
        metadata = event.metadata
        labels: dict[str, LabelValue] = {
            "request_type": _word(metadata.get("request_type")),
            "queue_state": _word(metadata.get("queue_state")),
        }
        self.metrics.counter(_QUEUE_STATE_TOTAL, labels).value += 1

    def _on_heartbeat(self, event: TelemetryEvent) -> None:
        ok = event.metadata.get("ok") is True
        self.metrics.counter(_HEARTBEATS_TOTAL, {"ok": ok}).value += 1
        if event.metadata.get("expired") is True:
            self.metrics.gauge(_SESSION_EXPIRED).value = 1.0

    def _on_breaker_change(self, event: TelemetryEvent) -> None:
        metadata = event.metadata
        to: MetadataValue = None
        for field in ("to", "to_state", "new_state"):
            if field in metadata:
                to = metadata[field]
                break
        state = to.lower() if isinstance(to, str) else ""
        state = state if state in _BREAKER_STATES else "unknown"
        # The state gauge (tinkex_circuit_breaker_state) is the breaker supervisor's: it sets it on every transition.
        self.metrics.counter(_BREAKER_TRANSITIONS_TOTAL, {"to": state}).value += 1

    def _on_breaker_rejected(self, event: TelemetryEvent) -> None:
        self.metrics.counter(_BREAKER_REJECTED_TOTAL, self._request_labels(event.metadata)).value += 1

    def _on_batch_stop(self, event: TelemetryEvent) -> None:
        op = "forward_backward" if event.name == BATCH_FORWARD_BACKWARD_STOP else "optim_step"
        labels: dict[str, LabelValue] = {"op": op}
        self.metrics.counter(_BATCHES_TOTAL, labels).value += 1
        measurements = event.measurements
        duration = measurements.get("duration_ms")
        if duration is not None:
            self.metrics.histogram(_BATCH_DURATION_MS, labels).record(duration)
        for field in ("size", "batch_size", "items", "requests"):
            size = measurements.get(field)
            if size is not None:
                self.metrics.histogram(_BATCH_SIZE, labels).record(size)
                break
