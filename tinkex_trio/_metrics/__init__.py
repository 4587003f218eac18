"""Client-side metrics: counters, gauges and latency histograms (0.1 % percentiles), fed by the session's telemetry.

* :mod:`._series`: one series (:class:`Counter`, :class:`Gauge`, :class:`Histogram`) and its statistics.
* :mod:`._store`: :class:`Metrics`, the series by name and label set, read as plain data or Prometheus text.
* :mod:`._prometheus`: the text exposition format.
* :mod:`._feed`: :class:`MetricsFeed`, telemetry events into a store, and the snapshot task.
* :mod:`._merge`: ``Metrics.encode`` / ``Metrics.merge``, exact merging across processes (imported by ``._store``).
* :mod:`._collector`: :class:`MetricsCollector`, a store for a ``prometheus_client`` registry (optional dependency).
* :mod:`._serve`: :func:`serve_metrics`, ``/metrics`` over HTTP from a trio program.

Each module imports only those listed before it (``._merge`` excepted).
"""

from tinkex_trio._metrics._collector import DEFAULT_BUCKETS_S, MetricsCollector
from tinkex_trio._metrics._feed import MetricsFeed, path_template
from tinkex_trio._metrics._series import QUANTILES, Counter, Gauge, Histogram, Labels, LabelValue
from tinkex_trio._metrics._serve import serve_metrics
from tinkex_trio._metrics._store import (
    DEFAULT_MAX_SERIES,
    REQUEST_DURATION_MS,
    REQUEST_ERRORS_TOTAL,
    REQUESTS_TOTAL,
    RETRIES_TOTAL,
    Metrics,
)

__all__ = [
    "DEFAULT_BUCKETS_S",
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
    "MetricsCollector",
    "MetricsFeed",
    "path_template",
    "serve_metrics",
]
