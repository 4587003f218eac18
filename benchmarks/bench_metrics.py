"""Metrics benchmark: tinkex_trio ``Metrics`` against ``prometheus_client`` and raw ``hdrhistogram``, side by side.

Run with ``python benchmarks/bench_metrics.py [--quick] [--no-write]``. Prints tables and writes JSON to
``benchmarks/results/bench_metrics-<timestamp>.json``.

The three contenders, each configured as a user would:

* ours: ``tinkex_trio.Metrics()`` with the ``MetricsConfig`` defaults (log buckets of relative width
  ``10**-significant_figures``, 1 µs .. ``histogram_max_ms``, values stored as integers of 1/1000 ms, counts in
  chunks of 128 buckets made on first use, 1-byte counts widening on overflow), values recorded in ms;
* prometheus_client: a ``Histogram`` with its default buckets in a fresh ``CollectorRegistry``, values in seconds;
* raw hdrh: ``hdrh.histogram.HdrHistogram(1, histogram_max_ms * 1000, significant_figures)`` (the same range and
  precision as ours, hdrh's default 64-bit counts), values converted to integer µs (``int(ms * 1000 + 0.5)``, the
  conversion is part of the timed call); label sets are a dict of such histograms keyed by the label values.

Sections:

* record: ns per recorded value, best of N ``timeit`` repeats, without labels and with 2 labels (ours
  ``record_histogram(..., labels=...)``, prometheus ``labels(...).observe``, raw hdrh a dict lookup + record).
* export: ms per export of one histogram family with 1, 10 and 100 label sets of 1,000 values each (ours
  ``get_all_metrics()``, ``to_prometheus()``, ``to_openmetrics()``; prometheus ``generate_latest(registry)``;
  raw hdrh ``get_value_at_percentile`` for p50/p90/p99/p99.9 of every series), best of N ``timeit`` repeats.
* memory: tracemalloc bytes per series, from 100 label sets of 5 values each (after a warm-up build, so one-off
  caches are not counted), the store / registry / dict included.
* accuracy: relative error (estimate / exact - 1, signed) of p50, p90, p99, p99.9 on 500,000 lognormal latencies
  (100,000 with --quick; median 100 ms, sigma 1) against ``numpy.percentile``: ours (``get_histogram``), raw hdrh
  (``get_value_at_percentile``) and prometheus_client, whose histogram only has bucket counts, estimated the way
  PromQL's ``histogram_quantile`` does (linear interpolation within the bucket holding the rank).

How to read it: lower is better everywhere. Record and export costs are CPU time in this process on this machine:
compare the columns, not absolute numbers across machines. Ours reads a percentile as the middle (relative) of the
bucket holding the rank, within 10**-figures of it (0.1 % at 3 figures); an HdrHistogram's is the top of its bucket,
so raw hdrh errs high, within 1/2**(bits of precision) (< 0.1 % at 3 figures); prometheus_client's error depends on
where its fixed buckets fall relative to the data.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
import timeit
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import numpy as np
import prometheus_client
from _report import write_report  # benchmarks/ is on sys.path when run
from hdrh.histogram import HdrHistogram
from prometheus_client import CollectorRegistry, generate_latest

from tinkex_trio import Metrics
from tinkex_trio._config import MetricsConfig

UNITS_PER_MS = 1000  # our histograms store integers of 1/1000 ms
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
SERIES_COUNTS = (1, 10, 100)
LABELS = {"endpoint": "asample", "pool": "sampling"}
CONFIG = MetricsConfig()
HDR_MAX = CONFIG.histogram_max_ms * UNITS_PER_MS
HDR_FIGURES = CONFIG.significant_figures


def per_call(fn: Callable[[], object], repeat: int, number: int | None = None) -> float:
    """Best seconds per call over ``repeat`` timeit repeats of ``number`` calls (autoranged to >= 0.2 s if None)."""
    timer = timeit.Timer(fn)
    if number is None:
        number, _ = timer.autorange()
    gc.collect()
    return min(timer.repeat(repeat=repeat, number=number)) / number


def latencies_ms(n: int, seed: int = 0) -> np.ndarray[Any, Any]:
    """Lognormal latencies in ms, median 100 ms, sigma 1 (p99.9 ~ 2.2 s)."""
    return np.random.default_rng(seed).lognormal(mean=np.log(100.0), sigma=1.0, size=n)


def raw_hdr() -> HdrHistogram:
    return HdrHistogram(1, HDR_MAX, HDR_FIGURES)


def to_units(ms: float) -> int:
    return int(ms * UNITS_PER_MS + 0.5)


# -- building the contenders ------------------------------------------------------------------------------------


def build_ours(series: int, values: list[float]) -> Metrics:
    metrics = Metrics()
    for i in range(series):
        h = metrics.histogram("bench_ms", {"endpoint": f"e{i}", "pool": "sampling"})
        for v in values:
            h.record(v)
    return metrics


def build_prom(series: int, values: list[float]) -> CollectorRegistry:
    registry = CollectorRegistry()
    hist = prometheus_client.Histogram("bench_seconds", "bench", ["endpoint", "pool"], registry=registry)
    for i in range(series):
        child = hist.labels(endpoint=f"e{i}", pool="sampling")
        for v in values:
            child.observe(v / 1000.0)
    return registry


def build_hdr(series: int, values: list[float]) -> dict[tuple[str, str], HdrHistogram]:
    out: dict[tuple[str, str], HdrHistogram] = {}
    for i in range(series):
        h = out[(f"e{i}", "sampling")] = raw_hdr()
        for v in values:
            h.record_value(to_units(v))
    return out


def hdr_percentiles(hists: dict[tuple[str, str], HdrHistogram]) -> list[list[float]]:
    return [[h.get_value_at_percentile(p) / UNITS_PER_MS for p in PERCENTILES] for h in hists.values()]


# -- prometheus histogram_quantile --------------------------------------------------------------------------------


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """PromQL's ``histogram_quantile(q, ...)`` over cumulative ``(le, count)`` buckets sorted by ``le`` (the last
    ``+Inf``): linear interpolation within the bucket holding the rank ``q * total``; the first bucket starts at 0
    (for a positive bound); a rank in the ``+Inf`` bucket gives the highest finite bound."""
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank = q * total
    for i, (upper, cumulative) in enumerate(buckets):
        if cumulative >= rank:
            if upper == float("inf"):
                return buckets[i - 1][0] if i else float("nan")
            lower, below = buckets[i - 1] if i else (0.0 if upper > 0 else upper, 0.0)
            in_bucket = cumulative - below
            return upper if in_bucket == 0 else lower + (upper - lower) * (rank - below) / in_bucket
    return buckets[-2][0]


def prom_buckets(registry: CollectorRegistry) -> list[tuple[float, float]]:
    buckets: list[tuple[float, float]] = []
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets.append((float(sample.labels["le"]), sample.value))
    return sorted(buckets)


# -- sections ---------------------------------------------------------------------------------------------------


def bench_record(repeat: int, number: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(path: str, labels: str, fn: Callable[[], object]) -> None:
        ns = per_call(fn, repeat, number) * 1e9
        rows.append({"path": path, "labels": labels, "ns": ns})
        print(f"  record {path:<34} {labels:<9} {ns:8.0f} ns", flush=True)

    metrics = Metrics()
    metrics.record_histogram("bench_ms", 1.0)
    metrics.record_histogram("bench_l_ms", 1.0, labels=LABELS)
    row("ours Metrics.record_histogram", "none", lambda: metrics.record_histogram("bench_ms", 12.5))
    row(
        "ours Metrics.record_histogram", "2 labels", lambda: metrics.record_histogram("bench_l_ms", 12.5, labels=LABELS)
    )
    series = metrics.histogram("bench_h_ms")
    row("ours Histogram.record (held series)", "none", lambda: series.record(12.5))

    registry = CollectorRegistry()
    hist = prometheus_client.Histogram("bench_seconds", "bench", registry=registry)
    lhist = prometheus_client.Histogram("bench_l_seconds", "bench", ["endpoint", "pool"], registry=registry)
    row("prometheus_client Histogram.observe", "none", lambda: hist.observe(12.5 / 1000.0))
    row(
        "prometheus_client Histogram.observe",
        "2 labels",
        lambda: lhist.labels(endpoint="asample", pool="sampling").observe(12.5 / 1000.0),
    )

    hdr = raw_hdr()
    hdrs = {("asample", "sampling"): raw_hdr()}
    row("raw hdrh record_value", "none", lambda: hdr.record_value(to_units(12.5)))
    row(
        "raw hdrh record_value",
        "2 labels",
        lambda: hdrs[(LABELS["endpoint"], LABELS["pool"])].record_value(to_units(12.5)),
    )
    return rows


def bench_export(repeat: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    values = latencies_ms(1000, seed=1).tolist()
    for n in SERIES_COUNTS:
        ours = build_ours(n, values)
        prom = build_prom(n, values)
        hdrs = build_hdr(n, values)
        cells: list[tuple[str, Callable[[], object]]] = [
            ("ours get_all_metrics()", ours.get_all_metrics),
            ("ours to_prometheus()", ours.to_prometheus),
            ("ours to_openmetrics()", ours.to_openmetrics),
            ("prometheus_client generate_latest", lambda prom=prom: generate_latest(prom)),
            ("raw hdrh 4 percentiles/series", lambda hdrs=hdrs: hdr_percentiles(hdrs)),
        ]
        for path, fn in cells:
            out = fn()
            nbytes = len(out) if isinstance(out, str | bytes) else None
            ms = per_call(fn, repeat) * 1e3
            rows.append({"path": path, "series": n, "ms": ms, "bytes": nbytes})
            print(f"  export {path:<34} {n:>4} series {ms:9.3f} ms", flush=True)
    return rows


def bench_memory(series: int = 100, per_series: int = 5) -> list[dict[str, Any]]:
    values = latencies_ms(per_series, seed=2).tolist()
    builders: list[tuple[str, Callable[[], object]]] = [
        ("ours Metrics", lambda: build_ours(series, values)),
        ("prometheus_client Histogram", lambda: build_prom(series, values)),
        ("raw hdrh HdrHistogram", lambda: build_hdr(series, values)),
    ]
    rows: list[dict[str, Any]] = []
    for path, build in builders:
        build()  # warm-up: one-off caches and imports are not per series
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            kept = build()
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        del kept
        per = (after - before) / series
        rows.append({"path": path, "series": series, "values_per_series": per_series, "bytes_per_series": per})
        print(f"  memory {path:<34} {per / 1024:8.1f} KiB/series", flush=True)
    return rows


def bench_accuracy(n: int) -> list[dict[str, Any]]:
    data = latencies_ms(n, seed=3)
    exact = [float(x) for x in np.percentile(data, PERCENTILES)]
    values = data.tolist()

    ours = build_ours(1, values)
    stats = ours.get_histogram("bench_ms", {"endpoint": "e0", "pool": "sampling"})
    assert stats is not None and stats["count"] == n
    ours_est = [stats["p50"], stats["p90"], stats["p99"], stats["p999"]]

    hdrs = build_hdr(1, values)
    hdr_est = hdr_percentiles(hdrs)[0]

    buckets = prom_buckets(build_prom(1, values))
    prom_est = [histogram_quantile(p / 100.0, buckets) * 1000.0 for p in PERCENTILES]

    rows: list[dict[str, Any]] = []
    for path, est in (
        ("ours Metrics", ours_est),
        ("raw hdrh", hdr_est),
        ("prometheus_client + histogram_quantile", prom_est),
    ):
        errors = {f"p{p:g}": e / x - 1.0 for p, e, x in zip(PERCENTILES, est, exact, strict=True)}
        rows.append(
            {
                "path": path,
                "estimate_ms": dict(zip(errors, est, strict=True)),
                "exact_ms": dict(zip(errors, exact, strict=True)),
                "rel_error": errors,
            }
        )
        cells = "  ".join(f"{k} {v * 100:+7.3f}%" for k, v in errors.items())
        print(f"  accuracy {path:<40} {cells}", flush=True)
    return rows


# -- the run ---------------------------------------------------------------------------------------------------


def run(quick: bool) -> dict[str, Any]:
    repeat, number = (3, 20_000) if quick else (7, 200_000)
    export_repeat = 3 if quick else 5
    values = 100_000 if quick else 500_000
    print(
        f"bench_metrics{' (quick)' if quick else ''}: hdr 1 .. {HDR_MAX:,} units (1/{UNITS_PER_MS} ms), "
        f"{HDR_FIGURES} significant figures; record best of {repeat} x {number:,}",
        flush=True,
    )
    return {
        "benchmark": "bench_metrics",
        "timestamp": datetime.now(UTC).isoformat(),
        "params": {
            "quick": quick,
            "record_repeat": repeat,
            "record_number": number,
            "export_repeat": export_repeat,
            "accuracy_values": values,
            "histogram_max_ms": CONFIG.histogram_max_ms,
            "significant_figures": HDR_FIGURES,
        },
        "versions": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            **{name: metadata.version(name) for name in ("numpy", "prometheus_client", "hdrhistogram")},
        },
        "record": bench_record(repeat, number),
        "export": bench_export(export_repeat),
        "memory": bench_memory(),
        "accuracy": bench_accuracy(values),
    }


def print_table(result: dict[str, Any]) -> None:
    print()
    print(f"{'record (per value)':<40} {'no labels':>10} {'2 labels':>10}")
    print("-" * 62)
    record: dict[str, dict[str, float]] = {}
    for r in result["record"]:
        record.setdefault(r["path"], {})[r["labels"]] = r["ns"]
    for path, cells in record.items():
        row = [f"{cells[k]:>7.0f} ns" if k in cells else f"{'':>10}" for k in ("none", "2 labels")]
        print(f"{path:<40} {row[0]} {row[1]}")

    print()
    print(f"{'export (ms per call)':<40} " + " ".join(f"{f'{n} series':>11}" for n in SERIES_COUNTS))
    print("-" * (41 + 12 * len(SERIES_COUNTS)))
    export: dict[str, dict[int, float]] = {}
    for r in result["export"]:
        export.setdefault(r["path"], {})[r["series"]] = r["ms"]
    for path, cells in export.items():
        print(f"{path:<40} " + " ".join(f"{cells[n]:>11.3f}" for n in SERIES_COUNTS))

    print()
    print(f"{'memory (100 series x 5 values)':<40} {'KiB/series':>11}")
    print("-" * 52)
    for r in result["memory"]:
        print(f"{r['path']:<40} {r['bytes_per_series'] / 1024:>11.1f}")

    print()
    n = result["params"]["accuracy_values"]
    print(f"{f'percentile error ({n:,} lognormal)':<40} " + " ".join(f"{f'p{p:g}':>8}" for p in PERCENTILES))
    print("-" * (41 + 9 * len(PERCENTILES)))
    exact = result["accuracy"][0]["exact_ms"]
    print(f"{'exact (numpy), ms':<40} " + " ".join(f"{v:>8.1f}" for v in exact.values()))
    for r in result["accuracy"]:
        print(f"{r['path']:<40} " + " ".join(f"{v * 100:>+7.2f}%" for v in r["rel_error"].values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (under 30 s)")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/*.json")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    result = run(args.quick)
    result["elapsed_s"] = time.perf_counter() - t0
    print_table(result)
    if not args.no_write:
        write_report("bench_metrics", result)
    print(f"({result['elapsed_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
