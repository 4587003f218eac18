"""The Prometheus text exposition formats (0.0.4 and OpenMetrics 1.0) of the metrics store, and the
``name{k="v",...}`` series names of ``Metrics.get_all_metrics``.

Mapping from the store to the exposition (the store itself keeps its names and units: ``get_all_metrics`` reads
``tinkex_request_duration_ms`` in milliseconds as before):

=====================================  ===============================================================================
store                                  exposition
=====================================  ===============================================================================
counter ``x`` / ``x_total``            family ``x`` of type counter, samples ``x_total`` (OpenMetrics; in 0.0.4 the
                                       ``# TYPE`` line names ``x_total``, as ``prometheus_client`` writes it)
gauge ``x``                            gauge ``x``
histogram ``x_ms`` (milliseconds)      histogram ``x_seconds``: cumulative ``x_seconds_bucket{le=...}`` at
                                       :data:`LATENCY_BUCKETS_S` and ``+Inf``, ``x_seconds_sum`` and
                                       ``x_seconds_count``, all in seconds; counters ``x_seconds_clamped_total``
                                       (out of range, recorded at the range's end) and ``x_seconds_dropped_total``
                                       (NaN, not recorded); with ``quantiles=True`` a summary ``x_seconds_quantiles``
                                       (the histogram's p50 ... p99.9; NaN when empty)
histogram ``x`` (any other unit)       the same, named ``x``, in the recorded unit, at :data:`VALUE_BUCKETS`
=====================================  ===============================================================================

Bucket counts come from the histogram's own buckets: ``le=b`` counts the values in the buckets up to the one holding
``b``, so a value just above ``b`` in ``b``'s own bucket (at most 0.2 % above at 3 significant figures)
counts as ``<= b``; ``+Inf`` is the exact count. Every family has ``# HELP`` (real text for the session's metrics, a
generic one otherwise) and ``# TYPE``. Names are sanitised to ``[a-zA-Z_:][a-zA-Z0-9_:]*``, label names to
``[a-zA-Z_][a-zA-Z0-9_]*`` (``le`` and ``quantile`` become ``x_le`` / ``x_quantile``); label values are escaped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Final

from tinkex_trio._metrics._series import (
    QUANTILES,
    UNITS_PER_MS,
    Digest,
    Histogram,
    Kind,
    LabelKey,
    Series,
    bucket_points,
)

__all__ = [
    "HELP",
    "LATENCY_BUCKETS_S",
    "VALUE_BUCKETS",
    "exposition",
    "sanitize_label",
    "sanitize_name",
    "series_label",
]

LATENCY_BUCKETS_S: Final[tuple[float, ...]] = (
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
)
"""The ``le`` bounds (seconds, ``+Inf`` added) of the histograms recorded in milliseconds (names ending ``_ms``):
5 ms to a minute, the span of the API's calls (a long-poll waits up to 45 s)."""

VALUE_BUCKETS: Final[tuple[float, ...]] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
"""The ``le`` bounds (recorded unit, ``+Inf`` added) of the other histograms (e.g. ``tinkex_batch_size``)."""

HELP: Final[Mapping[str, str]] = {
    "tinkex_request_duration_ms": "Duration of one HTTP request attempt to the Tinker API, in seconds.",
    "tinkex_requests_total": "HTTP request attempts to the Tinker API that got an answer (or were cancelled).",
    "tinkex_request_errors_total": "HTTP request attempts that got no answer (connection errors, timeouts).",
    "tinkex_retries_total": "Requests retried, by endpoint, reason and error.",
    "tinkex_future_queue_state_changes_total": "Queue state changes reported while polling a future.",
    "tinkex_session_heartbeats_total": "Session heartbeats sent, by outcome.",
    "tinkex_session_expired": "1 once the server answered a heartbeat with 410 (the session expired), else 0.",
    "tinkex_circuit_breaker_transitions_total": "Circuit breaker state changes, by new state and reason.",
    "tinkex_circuit_breaker_calls_total": "Calls counted by the circuit breaker, by outcome.",
    "tinkex_circuit_breaker_slow_calls_total": "Calls slower than the circuit breaker's slow_call_s.",
    "tinkex_circuit_breaker_forced": "1 while the circuit breaker is forced open (until reset), else 0.",
    "tinkex_circuit_breaker_failure_rate": "Share of failed calls in the circuit breaker's sliding window.",
    "tinkex_circuit_breaker_slow_call_rate": "Share of slow calls in the circuit breaker's sliding window.",
    "tinkex_circuit_breaker_rejected_total": "Requests rejected by an open circuit breaker.",
    "tinkex_circuit_breaker_state": "Circuit breaker state: 0 closed, 1 half open, 2 open.",
    "tinkex_batches_total": "Batched training calls, by operation.",
    "tinkex_batch_duration_ms": "Duration of one batched training call, in seconds.",
    "tinkex_batch_size": "Items in one batched training call.",
}
"""``# HELP`` text of the session's metrics, by store name."""

_MS_SUFFIX: Final = "_ms"
_PERCENTILES: Final = [percentile for _, percentile, _ in QUANTILES]


def exposition(
    families: Iterable[tuple[str, Kind, Mapping[LabelKey, Series]]],
    *,
    openmetrics: bool = False,
    quantiles: bool = False,
) -> str:
    """The text exposition of ``families`` (name, kind, series by label set), in the order given, label sets sorted
    (see the module docstring): format 0.0.4, or OpenMetrics 1.0 (ending ``# EOF``) if ``openmetrics``."""
    blocks: dict[str, tuple[str, str, str, list[str]]] = {}  # family -> (type, help, unit, sample lines)

    def block(family: str, kind: str, help_text: str, unit: str = "") -> list[str]:
        return blocks.setdefault(family, (kind, help_text, unit, []))[3]

    for name, kind, series_by_key in families:
        help_text = HELP.get(name)
        if kind != "histogram":
            metric = sanitize_name(name)
            if kind == "counter":
                metric = metric.removesuffix("_total") or metric
                sample = metric + "_total"
            else:
                sample = metric
            lines = block(metric, kind, help_text or f"{kind} {name} (tinkex_trio)")
            for key in sorted(series_by_key):
                series = series_by_key[key]
                if not isinstance(series, Histogram):
                    lines.append(f"{sample}{_prom_labels(key)} {_format_value(series.value)}")
            continue
        seconds = name.endswith(_MS_SUFFIX)
        metric = sanitize_name(name[: -len(_MS_SUFFIX)] + "_seconds" if seconds else name)
        per_unit = UNITS_PER_MS * 1000 if seconds else UNITS_PER_MS  # stored integers per exported unit
        bounds = LATENCY_BUCKETS_S if seconds else VALUE_BUCKETS
        les = [f'le="{_format_bound(bound)}"' for bound in bounds]
        bounds_units = tuple(round(bound * per_unit) for bound in bounds)
        histogram_help = help_text or f"histogram {name} (tinkex_trio)" + (", in seconds" if seconds else "")
        lines = block(metric, "histogram", histogram_help, "seconds" if seconds else "")
        clamped = block(f"{metric}_clamped", "counter", f"Values out of {metric}'s range, recorded at its bound.")
        dropped = block(f"{metric}_dropped", "counter", f"NaN values not recorded in {metric}.")
        summary = (
            block(f"{metric}_quantiles", "summary", f"Percentiles of {metric} (p50 ... p99.9).") if quantiles else None
        )
        for key in sorted(series_by_key):
            series = series_by_key[key]
            assert isinstance(series, Histogram)
            digest = Digest([series])
            labels = _prom_labels(key)
            inner = labels[1:-1] + "," if labels else ""
            points = bucket_points(series.max_units, series.significant_figures, bounds_units)
            for le, count in zip(les, digest.counts_at_or_below(points), strict=True):
                lines.append(f"{metric}_bucket{{{inner}{le}}} {count}")
            lines.append(f'{metric}_bucket{{{inner}le="+Inf"}} {digest.count}')
            lines.append(f"{metric}_sum{labels} {_format_value(series.sum / per_unit)}")
            lines.append(f"{metric}_count{labels} {digest.count}")
            clamped.append(f"{metric}_clamped_total{labels} {series.clamped}")
            dropped.append(f"{metric}_dropped_total{labels} {series.dropped}")
            if summary is not None:
                values = digest.values_at_percentiles(_PERCENTILES) if digest.count else [-1] * len(QUANTILES)
                for (_, _, quantile), units in zip(QUANTILES, values, strict=True):
                    value = min(max(units, series.min), series.max) / per_unit if units >= 0 else math.nan
                    summary.append(f'{metric}_quantiles{{{inner}quantile="{quantile}"}} {_format_value(value)}')
    out: list[str] = []
    for family, (prom_type, help_text, unit, lines) in blocks.items():
        named = family + "_total" if prom_type == "counter" and not openmetrics else family
        out.append(f"# HELP {named} {_escape_help(help_text, openmetrics)}")
        out.append(f"# TYPE {named} {prom_type}")
        if unit and openmetrics:
            out.append(f"# UNIT {named} {unit}")
        out.extend(lines)
    if openmetrics:
        out.append("# EOF")
    return "\n".join(out) + "\n" if out else ""


def series_label(name: str, key: LabelKey) -> str:
    """``name`` alone without labels, else ``name{k="v",...}`` (values escaped as in the exposition)."""
    if not key:
        return name
    return name + "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in key) + "}"


_NAME_BAD = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_BAD = re.compile(r"[^a-zA-Z0-9_]")
_LABELS_RESERVED: Final = frozenset({"le", "quantile"})


def sanitize_name(name: str) -> str:
    """A store name as a Prometheus metric name (invalid characters become ``_``)."""
    clean = _NAME_BAD.sub("_", name)
    return clean if clean and not clean[0].isdigit() else "_" + clean


def sanitize_label(name: str) -> str:
    """A label name as Prometheus accepts it (not reserved, not a histogram's own ``le`` / ``quantile``)."""
    clean = _LABEL_BAD.sub("_", name)
    if not clean or clean[0].isdigit():
        clean = "_" + clean
    if clean.startswith("__"):  # reserved for Prometheus' own labels
        clean = "x" + clean
    if clean in _LABELS_RESERVED:  # a histogram's / summary's own
        clean = "x_" + clean
    return clean


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str, openmetrics: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if openmetrics else text


@lru_cache(maxsize=8192)
def _prom_labels(key: LabelKey) -> str:
    if not key:
        return ""
    return "{" + ",".join([f'{sanitize_label(k)}="{_escape(v)}"' for k, v in key]) + "}"


def _format_bound(bound: float) -> str:
    return repr(float(bound))  # 0.005, 1.0, 60.0: OpenMetrics' canonical floats


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))
