"""A ``prometheus_client`` collector of a metrics store, :class:`MetricsCollector`::

    from prometheus_client import REGISTRY, start_http_server
    REGISTRY.register(tinkex_trio.MetricsCollector(session.metrics))
    start_http_server(9100)

prometheus_client is optional (``pip install 'tinkex_trio[prometheus]'``): it is imported when a collector is made.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from tinkex_trio._metrics._prometheus import HELP, LATENCY_BUCKETS_S, VALUE_BUCKETS, sanitize_label, sanitize_name
from tinkex_trio._metrics._series import Counter, Digest, Gauge, Histogram, LabelKey, bucket_points
from tinkex_trio._metrics._store import Metrics

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["DEFAULT_BUCKETS_S", "MetricsCollector", "bucket_counts", "histogram_name"]

DEFAULT_BUCKETS_S: Final = LATENCY_BUCKETS_S
"""The ``le`` bounds (seconds) of the histograms, as in the text exposition (``+Inf`` is added)."""

_UNITS_PER_S: Final = 1_000_000
"""A histogram stores milliseconds as integers of 1/1000 ms (see ``_series.Histogram``): 10⁶ per second."""

_INSTALL_HINT: Final = (
    "tinkex_trio.MetricsCollector needs prometheus_client: install the 'prometheus' extra "
    "(pip install 'tinkex_trio[prometheus]')"
)


def _require_prometheus_client() -> None:
    try:
        import prometheus_client  # noqa: F401  # pyright: ignore[reportUnusedImport]
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc


def histogram_name(name: str) -> str:
    """The Prometheus name of a histogram, as in the text exposition: one recorded in milliseconds (``x_ms``) is
    exported in seconds as ``x_seconds``; any other keeps its name (and its unit)."""
    return sanitize_name(name.removesuffix("_ms") + "_seconds" if name.endswith("_ms") else name)


def _labels(key: LabelKey) -> tuple[list[str], list[str]]:
    return [sanitize_label(k) for k, _ in key], [v for _, v in key]


def bucket_counts(series: Histogram, bounds_s: Sequence[float]) -> list[int]:
    """How many values of ``series`` are ``<=`` each bound (seconds, increasing): cumulative, as Prometheus's ``le``
    (to the histogram's precision: a value in a bound's own bucket but above it counts too), computed as the text
    exposition does."""
    points = bucket_points(
        series.max_units, series.significant_figures, tuple(round(b * _UNITS_PER_S) for b in bounds_s)
    )
    return Digest([series]).counts_at_or_below(points)


def _format_bound(bound: float) -> str:
    return repr(float(bound))


class MetricsCollector:
    """Exposes a :class:`~tinkex_trio.Metrics` to a ``prometheus_client`` registry (a ``Collector``).

    Counters become ``CounterMetricFamily`` (``name_total``), gauges ``GaugeMetricFamily``, histograms
    ``HistogramMetricFamily`` in seconds (see :func:`histogram_name`): cumulative ``le`` buckets at ``buckets_s``
    (default :data:`DEFAULT_BUCKETS_S`) and ``+Inf``, ``_sum`` (seconds) and ``_count``. Names and label names are
    sanitised as in :meth:`Metrics.to_prometheus`. Each scrape reads the live store.

    A store is not thread-safe: ``prometheus_client.start_http_server`` scrapes from its own thread, where each value
    is read whole but a histogram being recorded into may be off by that value. Raises ``ImportError`` without
    prometheus_client (the ``prometheus`` extra).
    """

    def __init__(self, metrics: Metrics, *, buckets_s: Sequence[float] = DEFAULT_BUCKETS_S) -> None:
        _require_prometheus_client()
        bounds = [float(b) for b in buckets_s]
        if any(not 0 < b < float("inf") for b in bounds) or bounds != sorted(set(bounds)):
            raise ValueError(f"buckets_s must be finite, positive and strictly increasing, got {buckets_s!r}")
        self.metrics = metrics
        self.buckets_s: tuple[float, ...] = tuple(bounds)

    def __repr__(self) -> str:
        return f"<MetricsCollector {self.metrics!r}>"

    def collect(self) -> Iterator[Any]:
        """The metric families of the store (``prometheus_client.metrics_core.Metric``), one per name."""
        yield from self._collect()

    def _collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        for name, kind, series_by_key in self.metrics.families():
            doc = HELP.get(name) or f"tinkex_trio {kind} {name}"
            seconds = name.endswith("_ms")
            # As the text exposition: milliseconds exported in seconds at ``buckets_s``; other units as recorded.
            bounds = self.buckets_s if seconds else VALUE_BUCKETS
            per_unit = _UNITS_PER_S if seconds else _UNITS_PER_S / 1000.0
            les = [*(_format_bound(b) for b in bounds), "+Inf"]
            family: Metric
            if kind == "histogram":
                family = HistogramMetricFamily(histogram_name(name), doc)
            elif kind == "counter":
                family = CounterMetricFamily(sanitize_name(name), doc)
            else:
                family = GaugeMetricFamily(sanitize_name(name), doc)
            for key in sorted(series_by_key):
                series = series_by_key[key]
                label_names, label_values = _labels(key)
                one: Metric
                if isinstance(series, Histogram):
                    total = series.count
                    scaled = [b * per_unit / _UNITS_PER_S for b in bounds]
                    counts = [*bucket_counts(series, scaled), total]
                    one = HistogramMetricFamily(family.name, doc, labels=label_names)
                    one.add_metric(label_values, list(zip(les, counts, strict=True)), series.sum / per_unit)
                elif isinstance(series, Counter):
                    one = CounterMetricFamily(family.name, doc, labels=label_names)
                    one.add_metric(label_values, series.value)
                else:
                    assert isinstance(series, Gauge)
                    one = GaugeMetricFamily(family.name, doc, labels=label_names)
                    one.add_metric(label_values, series.value)
                family.samples.extend(one.samples)
            yield family
