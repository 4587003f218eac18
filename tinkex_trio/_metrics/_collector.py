"""A ``prometheus_client`` collector of a metrics store, :class:`MetricsCollector`::

    from prometheus_client import REGISTRY, start_http_server
    REGISTRY.register(tinkex_trio.MetricsCollector(session.metrics))
    start_http_server(9100)

prometheus_client is optional (``pip install 'tinkex_trio[prometheus]'``): it is imported when a collector is made.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from tinkex_trio._metrics._series import Counter, Gauge, Histogram, LabelKey
from tinkex_trio._metrics._store import Metrics

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["DEFAULT_BUCKETS_S", "MetricsCollector", "bucket_counts", "histogram_name"]

DEFAULT_BUCKETS_S: Final[tuple[float, ...]] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
"""The ``le`` bounds (seconds) of the histograms: 5 ms to 10 min, the range of a Tinker call (``+Inf`` is added)."""

_UNITS_PER_S: Final = 1_000_000
"""A histogram stores milliseconds as integers of 1/1000 ms (see ``_series.Histogram``): 10⁶ per second."""

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_BAD = re.compile(r"[^a-zA-Z0-9_]")

_INSTALL_HINT: Final = (
    "tinkex_trio.MetricsCollector needs prometheus_client: install the 'prometheus' extra "
    "(pip install 'tinkex_trio[prometheus]')"
)


def _require_prometheus_client() -> None:
    try:
        import prometheus_client  # noqa: F401  # pyright: ignore[reportUnusedImport]
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc


def _metric_name(name: str) -> str:
    clean = _NAME_BAD.sub("_", name)
    return clean if clean and not clean[0].isdigit() else "_" + clean


def histogram_name(name: str) -> str:
    """The Prometheus name of a histogram of milliseconds, in seconds: ``x_ms`` / ``x_milliseconds`` →
    ``x_seconds``, any other ``x`` → ``x_seconds``."""
    for suffix in ("_milliseconds", "_ms"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _metric_name(name + "_seconds")


def _labels(key: LabelKey) -> tuple[list[str], list[str]]:
    names = [_LABEL_BAD.sub("_", k) for k, _ in key]
    names = [n if n and not n[0].isdigit() else "_" + n for n in names]
    return names, [v for _, v in key]


def bucket_counts(series: Histogram, bounds_s: Sequence[float]) -> list[int]:
    """How many values of ``series`` are ``<=`` each bound (seconds, increasing): cumulative, as Prometheus's ``le``.

    Exact below the smallest and from the largest recorded value on; between, a value counts as ``<=`` a bound when
    its HdrHistogram bucket starts at or below it (an error of at most the bucket width, 0.1 % at 3 significant
    figures, and only for values within it of a bound).
    """
    hdr: Any = series.hdr
    counts: Any = hdr.counts
    length: int = min(int(hdr.counts_len), len(counts))
    total = series.count
    out: list[int] = []
    running = 0
    done = 0  # counts[:done] are in running
    for bound in bounds_s:
        units = round(bound * _UNITS_PER_S)
        if total == 0 or units < series.min:
            out.append(0)
        elif units >= series.max:
            out.append(total)
        else:
            stop = min(int(hdr.get_counts_array_index(units)) + 1, length)
            if stop > done:
                running += int(sum(counts[done:stop]))
                done = stop
            out.append(min(running, total))
    return out


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

        bounds = self.buckets_s
        les = [*(_format_bound(b) for b in bounds), "+Inf"]
        for name, kind, series_by_key in self.metrics.families():
            doc = f"tinkex_trio {kind} {name}"
            family: Metric
            if kind == "histogram":
                family = HistogramMetricFamily(histogram_name(name), doc + " (seconds)")
            elif kind == "counter":
                family = CounterMetricFamily(_metric_name(name), doc)
            else:
                family = GaugeMetricFamily(_metric_name(name), doc)
            for key in sorted(series_by_key):
                series = series_by_key[key]
                label_names, label_values = _labels(key)
                one: Metric
                if isinstance(series, Histogram):
                    total = series.count
                    counts = [*bucket_counts(series, bounds), total]
                    one = HistogramMetricFamily(family.name, doc, labels=label_names)
                    one.add_metric(label_values, list(zip(les, counts, strict=True)), series.sum / _UNITS_PER_S)
                elif isinstance(series, Counter):
                    one = CounterMetricFamily(family.name, doc, labels=label_names)
                    one.add_metric(label_values, series.value)
                else:
                    assert isinstance(series, Gauge)
                    one = GaugeMetricFamily(family.name, doc, labels=label_names)
                    one.add_metric(label_values, series.value)
                family.samples.extend(one.samples)
            yield family
