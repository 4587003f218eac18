"""The Prometheus text exposition format (0.0.4) of the metrics store, and the ``name{k="v",...}`` series names of
``Metrics.get_all_metrics``."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

from tinkex_trio._metrics._series import QUANTILES, Histogram, Kind, LabelKey, Series

__all__ = ["exposition", "series_label"]


def exposition(families: Iterable[tuple[str, Kind, Mapping[LabelKey, Series]]]) -> str:
    """The text exposition of ``families`` (name, kind, series by label set), in the order given, label sets sorted.

    Counters get a ``_total`` suffix (unless they have one), gauges are plain, histograms are summaries: one line per
    quantile (``quantile="0.5"`` ... ``"0.999"``) plus ``_sum`` and ``_count``. Names are sanitised to
    ``[a-zA-Z_:][a-zA-Z0-9_:]*`` and label names to ``[a-zA-Z_][a-zA-Z0-9_]*``; label values are escaped.
    """
    blocks: dict[str, tuple[str, list[str]]] = {}
    for name, kind, series_by_key in families:
        metric = _sanitize_name(name)
        if kind == "counter" and not metric.endswith("_total"):
            metric += "_total"
        prom_type = "summary" if kind == "histogram" else kind
        lines = blocks.setdefault(metric, (prom_type, []))[1]
        for key in sorted(series_by_key):
            series = series_by_key[key]
            if isinstance(series, Histogram):
                stats = series.stats()
                for stat, _, quantile in QUANTILES:
                    lines.append(f"{metric}{_prom_labels(key, ('quantile', quantile))} {_format_value(stats[stat])}")
                lines.append(f"{metric}_sum{_prom_labels(key)} {_format_value(stats['sum'])}")
                lines.append(f"{metric}_count{_prom_labels(key)} {int(stats['count'])}")
            else:
                lines.append(f"{metric}{_prom_labels(key)} {_format_value(series.value)}")
    out: list[str] = []
    for metric, (prom_type, lines) in blocks.items():
        out.append(f"# TYPE {metric} {prom_type}")
        out.extend(lines)
    return "\n".join(out) + "\n" if out else ""


def series_label(name: str, key: LabelKey) -> str:
    """``name`` alone without labels, else ``name{k="v",...}`` (values escaped as in the exposition)."""
    if not key:
        return name
    return name + "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in key) + "}"


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


def _prom_labels(key: LabelKey, extra: tuple[str, str] | None = None) -> str:
    pairs = [f'{_sanitize_label(k)}="{_escape(v)}"' for k, v in key]
    if extra is not None:
        pairs.append(f'{extra[0]}="{extra[1]}"')
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))
