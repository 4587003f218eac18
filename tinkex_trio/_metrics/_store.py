"""The metrics store, :class:`Metrics`: counters, gauges and histograms by name and label set.

::

    m = tinkex_trio.Metrics()                      # usable on its own: no trio, no session
    m.increment("jobs")                             # counters
    m.set_gauge("queue_depth", 3.0)                 # gauges
    m.record_histogram("step_ms", 45.2, labels={"phase": "fwd"})   # histograms (milliseconds by convention)
    m.get_all_metrics()                             # a plain dict (see Metrics.get_all_metrics)
    m.to_prometheus()                               # text exposition format 0.0.4

The store is sans-I/O (DESIGN §3): time comes from an injectable ``clock`` or is passed in, and nothing here awaits.
It is **not thread-safe**: a session uses it from its one trio thread; guard it with a lock if you share a store
between threads.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import trio

from tinkex_trio._config import MetricsConfig
from tinkex_trio._metrics._merge import encode as _encode_blob
from tinkex_trio._metrics._merge import merge as _merge_blobs
from tinkex_trio._metrics._prometheus import exposition, series_label
from tinkex_trio._metrics._series import (
    Counter,
    Gauge,
    Histogram,
    Kind,
    LabelKey,
    Labels,
    LabelValue,
    Series,
    merged_stats,
)

__all__ = [
    "DEFAULT_MAX_SERIES",
    "REQUESTS_TOTAL",
    "REQUEST_DURATION_MS",
    "REQUEST_ERRORS_TOTAL",
    "RETRIES_TOTAL",
    "Metrics",
]

DEFAULT_MAX_SERIES: Final = 1000
"""Label sets per metric name; beyond it, values go to one series labelled ``overflow="true"``."""

_OVERFLOW_KEY: Final[LabelKey] = (("overflow", "true"),)
_ALIASES_PER_SERIES: Final = 4

# The session's request metrics (fed by MetricsFeed), summarised by Metrics.snapshot.
REQUEST_DURATION_MS: Final = "tinkex_request_duration_ms"
REQUESTS_TOTAL: Final = "tinkex_requests_total"
REQUEST_ERRORS_TOTAL: Final = "tinkex_request_errors_total"
RETRIES_TOTAL: Final = "tinkex_retries_total"


class _Family:
    """The series of one metric name, by label set."""

    __slots__ = ("aliases", "kind", "name", "plain", "series")

    def __init__(self, name: str, kind: Kind) -> None:
        self.name = name
        self.kind: Kind = kind
        self.series: dict[LabelKey, Any] = {}
        self.plain: Any = None  # the unlabelled series, once made (the fastest lookup)
        # Label mappings as given (unsorted items, all values str) -> series: skips sorting on a repeated label set.
        # Only all-str items are stored, so 1 / True / 1.0 (equal as dict keys) never find a "1" / "true" series.
        self.aliases: dict[tuple[tuple[str, LabelValue], ...], Any] = {}


def _label_str(value: LabelValue) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _label_key(labels: Labels) -> LabelKey:
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
        self._pending: list[Callable[[], None]] = []
        self.generation = 0
        """Bumped by :meth:`reset`: series objects from an older generation are no longer in the store."""

    def add_pending(self, drain: Callable[[], None]) -> None:
        """Register a source of buffered updates (a session's metrics task reading telemetry from a channel):
        ``drain()`` applies what it holds, and every read of the store calls it first, so a read sees every event
        delivered before it while the writers never wait. Not a checkpoint."""
        self._pending.append(drain)

    def remove_pending(self, drain: Callable[[], None]) -> None:
        """Unregister a source of :meth:`add_pending` (a no-op if it is not registered)."""
        if drain in self._pending:
            self._pending.remove(drain)

    def _drain_pending(self) -> None:
        # Only on the event loop's thread: a scrape in a worker thread (serve_metrics, a prometheus_client server)
        # reads what is applied so far; the channel is the loop's.
        if self._pending and trio.lowlevel.in_trio_run():
            for drain in self._pending:
                drain()

    def __repr__(self) -> str:
        series = sum(len(f.series) for f in self._families.values())
        return f"<Metrics names={len(self._families)} series={series}>"

    # -- series lookup ----------------------------------------------------------------------------------------------

    def _family(self, name: str, kind: Kind) -> _Family:
        family = self._families.get(name)
        if family is None:
            if not isinstance(name, str) or not name:  # pyright: ignore[reportUnnecessaryIsInstance]
                raise TypeError(f"a metric name must be a non-empty string, got {name!r}")
            family = self._families[name] = _Family(name, kind)
        elif family.kind != kind:
            raise ValueError(f"metric {name!r} is a {family.kind}, not a {kind}")
        return family

    def _new(self, family: _Family, key: LabelKey) -> Any:
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

    def _series(self, name: str, kind: Kind, labels: Labels | None) -> Any:
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

    def _get_or_make(self, family: _Family, key: LabelKey) -> Any:
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
        self.gauge(name, labels).set(value)

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
        self._drain_pending()
        series = self._lookup(name, "counter", labels)
        return series.value if isinstance(series, Counter) else 0

    def get_gauge(self, name: str, labels: Labels | None = None) -> float | None:
        """A gauge's value (None if it was never set)."""
        self._drain_pending()
        series = self._lookup(name, "gauge", labels)
        return series.value if isinstance(series, Gauge) else None

    def get_histogram(self, name: str, labels: Labels | None = None) -> dict[str, float] | None:
        """A histogram's statistics (None if it does not exist)."""
        self._drain_pending()
        series = self._lookup(name, "histogram", labels)
        return series.stats() if isinstance(series, Histogram) else None

    def to_hdrhistogram(self, name: str, labels: Labels | None = None) -> Any:
        """A histogram series as an ``hdrh.histogram.HdrHistogram`` of integer µs (for ms histograms), for
        HdrHistogram tooling; None if it does not exist (see :meth:`Histogram.to_hdrhistogram`)."""
        self._drain_pending()
        series = self._lookup(name, "histogram", labels)
        return series.to_hdrhistogram() if isinstance(series, Histogram) else None

    def counter_total(self, name: str) -> float:
        """The sum of a counter over all its label sets."""
        self._drain_pending()
        family = self._families.get(name)
        if family is None or family.kind != "counter":
            return 0
        return sum(series.value for series in family.series.values())

    def _lookup(self, name: str, kind: Kind, labels: Labels | None) -> Series | None:
        family = self._families.get(name)
        if family is None or family.kind != kind:
            return None
        series: Series | None = family.series.get(_label_key(labels) if labels else ())
        return series

    def summary(self, name: str) -> dict[str, float] | None:
        """A histogram's statistics merged over all its label sets, plus ``series`` (how many); None if absent."""
        self._drain_pending()
        family = self._families.get(name)
        if family is None or family.kind != "histogram" or not family.series:
            return None
        members: list[Histogram] = list(family.series.values())
        stats = merged_stats(members)
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
        self._drain_pending()
        counters: dict[str, float] = {}
        gauges: dict[str, float] = {}
        histograms: dict[str, dict[str, float]] = {}
        summaries: dict[str, dict[str, float]] = {}
        for name in sorted(self._families):
            family = self._families[name]
            for key in sorted(family.series):
                series = family.series[key]
                label = series_label(name, key)
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
        self._drain_pending()
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

    def to_prometheus(self, *, openmetrics: bool = False, quantiles: bool = False) -> str:
        """The metrics in the Prometheus text exposition format 0.0.4 (``openmetrics``: OpenMetrics 1.0, see
        :meth:`to_openmetrics`).

        Counters are ``x_total`` samples, gauges plain, histograms real Prometheus histograms (cumulative ``le``
        buckets, ``_sum``, ``_count``): those recorded in milliseconds (``x_ms``) as ``x_seconds`` in seconds, with
        out-of-range (``x_seconds_clamped_total``) and NaN (``x_seconds_dropped_total``) counts, and with
        ``quantiles`` the HdrHistogram's percentiles as a summary ``x_seconds_quantiles``. Every family has
        ``# HELP`` and ``# TYPE``. See :mod:`tinkex_trio._metrics._prometheus` for the mapping and bucket bounds.
        """
        self._drain_pending()
        families = self._families
        return exposition(
            ((name, families[name].kind, families[name].series) for name in sorted(families)),
            openmetrics=openmetrics,
            quantiles=quantiles,
        )

    def to_openmetrics(self, *, quantiles: bool = False) -> str:
        """:meth:`to_prometheus` in the OpenMetrics 1.0 text format (``# TYPE x counter``, ``# UNIT`` of the
        ``_seconds`` histograms, ending ``# EOF``): serve it as ``application/openmetrics-text; version=1.0.0``."""
        return self.to_prometheus(openmetrics=True, quantiles=quantiles)

    def families(self) -> list[tuple[str, Kind, Mapping[LabelKey, Series]]]:
        """Every series by name (sorted) and label set, for exporters (e.g. :class:`~tinkex_trio.MetricsCollector`).

        The dicts are copies (each made in one step, so another thread may read them while the store's thread adds
        series); the series are the live objects.
        """
        families = self._families.copy()
        return [(name, families[name].kind, families[name].series.copy()) for name in sorted(families)]

    # -- merging across processes (tinkex_trio._metrics._merge) -------------------------------------------------------

    def encode(self) -> bytes:
        """The store as a versioned binary blob (msgpack) for :meth:`merge`, e.g. in another process.

        It holds every series exactly: counter and gauge values, and each histogram's buckets with its exact count,
        sum, sum of squares, min and max; and the wall-clock time of the call (``time.time()``), by which
        :meth:`merge` orders gauges.
        """
        self._drain_pending()
        families = self._families
        return _encode_blob(self.config, self._max_series, ((n, f.kind, f.series) for n, f in families.items()))

    @classmethod
    def merge(cls, blobs: Iterable[bytes]) -> Metrics:
        """A new store merging the blobs of :meth:`encode` (``ValueError`` on a blob that is not one, of another
        version, or with another histogram configuration). Label sets are kept.

        * counters: the sum;
        * gauges: the value in the blob encoded last (by its wall-clock time; on a tie, the later blob);
        * histograms: merged bucket-exactly, with their exact count, sum, min, max and standard deviation: the merge
          of workers that each recorded part of the values reports the same statistics and percentiles as one store
          that recorded them all.
        """
        return _merge_blobs(blobs, lambda config, max_series: cls(config, max_series=max_series or DEFAULT_MAX_SERIES))
