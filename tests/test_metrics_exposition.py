"""Prometheus / OpenMetrics exposition of the metrics store: both prometheus_client parsers, escaping, histograms
in seconds (cumulative ``le`` buckets consistent with ``_count``), NaN quantiles when empty, clamped values counted,
the memory of a series at the defaults, and the export cost (measured and printed, never asserted)."""

from __future__ import annotations

import math
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from tinkex_trio._config import MetricsConfig
from tinkex_trio._metrics import REQUEST_DURATION_MS, Metrics
from tinkex_trio._metrics._prometheus import LATENCY_BUCKETS_S
from tinkex_trio._metrics._series import Digest, Histogram, layout

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
NASTY = 'a"b\\c\nd\\n"'


def _families(text: str, openmetrics: bool) -> dict[str, Any]:
    parse = parse_openmetrics if openmetrics else parse_prometheus
    return {family.name: family for family in parse(text)}


def _samples(families: dict[str, Any]) -> Samples:
    out: Samples = {}
    for family in families.values():
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out
            out[key] = sample.value
    return out


def _store() -> Metrics:
    m = Metrics()
    labels = {"method": "POST", "endpoint": "/api/v1/forward_backward", "pool": "training", "status_class": "2xx"}
    for value in (3.0, 40.0, 250.0, 1200.0, 7000.0):
        m.record_histogram(REQUEST_DURATION_MS, value, labels=labels)
    m.increment("tinkex_requests_total", 5, labels=labels)
    m.increment("jobs", 2, labels={"path": NASTY, "le": "x", "quantile": "y"})
    m.set_gauge("queue.depth", 2.5)
    m.record_histogram("tinkex_batch_size", 4)
    m.histogram("empty_ms", {"k": NASTY})
    return m


@pytest.mark.parametrize("openmetrics", [False, True])
@pytest.mark.parametrize("quantiles", [False, True])
def test_both_parsers_accept_the_exposition(openmetrics: bool, quantiles: bool) -> None:
    m = _store()
    text = m.to_prometheus(openmetrics=openmetrics, quantiles=quantiles)
    assert text.endswith("# EOF\n") == openmetrics
    if openmetrics:
        assert text == m.to_openmetrics(quantiles=quantiles)
    families = _families(text, openmetrics)
    kinds = {name: family.type for name, family in families.items()}
    expected = {
        "tinkex_request_duration_seconds": "histogram",
        "tinkex_request_duration_seconds_clamped": "counter",
        "tinkex_request_duration_seconds_dropped": "counter",
        "tinkex_requests": "counter",
        "jobs": "counter",
        "queue_depth": "gauge",
        "tinkex_batch_size": "histogram",
        "empty_seconds": "histogram",
    }
    for name, kind in expected.items():
        assert kinds[name] == kind, name
    assert ("tinkex_request_duration_seconds_quantiles" in kinds) == quantiles
    assert families["tinkex_request_duration_seconds"].documentation.startswith("Duration of one HTTP request")
    assert all(family.documentation for family in families.values())
    if openmetrics:
        assert families["tinkex_request_duration_seconds"].unit == "seconds"
    # Every family has HELP and TYPE lines, counters are x_total samples.
    lines = text.splitlines()
    typed = [line.split(" ")[2] for line in lines if line.startswith("# TYPE ")]
    helped = [line.split(" ")[2] for line in lines if line.startswith("# HELP ")]
    assert typed == helped and len(typed) == len(set(typed))
    counter_type = "# TYPE jobs counter" if openmetrics else "# TYPE jobs_total counter"
    assert counter_type in lines
    samples = _samples(families)
    jobs = frozenset({("path", NASTY), ("x_le", "x"), ("x_quantile", "y")})
    assert samples[("jobs_total", jobs)] == 2


@pytest.mark.parametrize("openmetrics", [False, True])
def test_label_values_with_quotes_backslashes_and_newlines_round_trip(openmetrics: bool) -> None:
    m = Metrics()
    values = ['"', "\\", "\n", "\\n", 'a"b\\c\nd', "ünï", ""]
    for i, value in enumerate(values):
        m.increment("c_total", i + 1, labels={"v": value})
        m.record_histogram("h_ms", 1.0, labels={"v": value})
    samples = _samples(_families(m.to_prometheus(openmetrics=openmetrics), openmetrics))
    for i, value in enumerate(values):
        assert samples[("c_total", frozenset({("v", value)}))] == i + 1
        assert samples[("h_seconds_count", frozenset({("v", value)}))] == 1


def test_histograms_are_exported_in_seconds_with_cumulative_buckets() -> None:
    rng = np.random.default_rng(3)
    values_ms = rng.lognormal(4.0, 1.8, 20_000)  # median ~55 ms, a long tail past a minute
    m = Metrics()
    series = m.histogram(REQUEST_DURATION_MS, {"endpoint": "/x"})
    for value in values_ms.tolist():
        series.record(value)
    samples = _samples(_families(m.to_prometheus(), openmetrics=False))
    labels = {("endpoint", "/x")}
    count = samples[("tinkex_request_duration_seconds_count", frozenset(labels))]
    assert (
        count
        == len(values_ms)
        == samples[("tinkex_request_duration_seconds_bucket", frozenset(labels | {("le", "+Inf")}))]
    )
    # Seconds: the sum is the milliseconds' sum / 1000; get_all_metrics keeps the recorded name and milliseconds.
    stored = m.get_all_metrics()["histograms"]['tinkex_request_duration_ms{endpoint="/x"}']
    assert samples[("tinkex_request_duration_seconds_sum", frozenset(labels))] == pytest.approx(stored["sum"] / 1000)
    assert stored["sum"] == pytest.approx(values_ms.sum(), rel=1e-6)
    previous = 0.0
    micros = np.floor(values_ms * 1000 + 0.5)  # what the store keeps
    for bound in LATENCY_BUCKETS_S:
        got = samples[("tinkex_request_duration_seconds_bucket", frozenset(labels | {("le", repr(bound))}))]
        assert previous <= got <= count  # cumulative
        previous = got
        # <= bound, to the histogram's precision: a value above the bound by at most its bucket (0.2 %) may count.
        assert (micros <= bound * 1e6).sum() <= got <= (micros <= bound * 1e6 * 1.002).sum(), bound


@pytest.mark.parametrize("figures", [1, 2, 3])
def test_bucket_counts_and_percentiles_match_a_plain_walk_of_the_buckets(figures: int) -> None:
    rng = np.random.default_rng(11)
    values = np.concatenate([rng.lognormal(2.0, 3.0, 5000), rng.uniform(0.0, 0.3, 500), [0.0, 0.001, 600_000.0]])
    h = Histogram("h", (), max_ms=600_000, significant_figures=figures)
    other = Histogram("h", (), max_ms=600_000, significant_figures=figures)
    recorded: list[list[int]] = [[], []]
    for i, value in enumerate(values.tolist()):
        (h if i % 3 else other).record(value)
        recorded[0 if i % 3 else 1].append(min(int(value * 1000 + 0.5), 600_000_000))
    shape = layout(600_000_000, figures)
    for members, units in (([h], recorded[0]), ([h, other], recorded[0] + recorded[1])):
        digest = Digest(members)
        # The reference: every value's bucket counted, then walked one bucket at a time.
        cumulative = np.cumsum(np.bincount([shape.index(u) for u in units], minlength=shape.size))
        assert digest.count == cumulative[-1] == len(units) == sum(m.count for m in members)
        for bound in (0, 1, 255, 256, 257, 511, 512, 513, 1000, 5000, 12_345, 10**6, 59_999_999, 599_999_999):
            assert digest.count_at_or_below(bound) == cumulative[shape.index(bound)], bound
        percentiles = [50.0, 90.0, 95.0, 99.0, 99.9, 100.0]
        expected = []
        for percentile in percentiles:
            rank = max(int(percentile * len(units) / 100 + 0.5), 1)
            expected.append(shape.value(int(np.searchsorted(cumulative, rank))))
        assert digest.values_at_percentiles(percentiles) == expected
        for percentile, value in zip(percentiles, expected, strict=True):
            assert digest.value_at_percentile(percentile) == value, percentile


@pytest.mark.parametrize("figures", [1, 2, 3, 4])
def test_every_bucket_reads_within_its_relative_error(figures: int) -> None:
    shape = layout(600_000_000, figures)
    alpha = 10.0**-figures
    rng = np.random.default_rng(figures)
    units = sorted({*range(0, 3 * shape.linear), *rng.integers(1, 600_000_001, 20_000).tolist(), 600_000_000})
    indices = [shape.index(u) for u in units]
    assert indices == sorted(indices) and indices[-1] == shape.size - 1  # monotonic, the last bucket holds max
    assert all(shape.index(u) == u for u in range(shape.linear))  # exact below linear
    for u, index in zip(units, indices, strict=True):
        assert abs(shape.value(index) - u) <= alpha * u * (1 + 1e-9), (u, index)


def test_chunks_widen_without_losing_a_count() -> None:
    h = Histogram("h", (), max_ms=10, significant_figures=3)
    for _ in range(70_000):  # past 1 and 2 bytes
        h.record(5.0)
    h.record(5.0001)  # the same bucket at 3 figures
    h.add_bucket(h.layout.index(5000), 2**32)  # past 4 bytes
    chunk = h.chunks[h.layout.index(5000) >> 7]
    assert chunk is not None and chunk.typecode == "Q"
    assert h.count == 70_001 + 2**32 and Digest([h]).count_at_or_below(5000) == h.count
    with pytest.raises(ValueError, match="out of this histogram's layout"):
        h.add_bucket(h.layout.size, 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_percentiles_within_a_tenth_of_a_percent_of_numpy_on_skewed_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # ms: median 20 ms, p99.9 ~ 2 s; enough values that numpy's interpolation between neighbours stays far below
    # the histogram's 0.1 %.
    values = rng.lognormal(3.0, 1.5, 300_000)
    m = Metrics()
    series = m.histogram("lat_ms")
    for value in values.tolist():
        series.record(value)
    stats = series.stats()
    for key, percentile in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99), ("p999", 99.9)):
        assert stats[key] == pytest.approx(np.percentile(values, percentile), rel=1e-3), key


@pytest.mark.parametrize("openmetrics", [False, True])
def test_empty_series_quantiles_are_nan(openmetrics: bool) -> None:
    m = Metrics()
    m.histogram("lat_ms", {"op": "a"})
    samples = _samples(_families(m.to_prometheus(openmetrics=openmetrics, quantiles=True), openmetrics))
    quantiles = [v for (name, _), v in samples.items() if name == "lat_seconds_quantiles"]
    assert len(quantiles) == 5 and all(math.isnan(v) for v in quantiles)
    assert samples[("lat_seconds_count", frozenset({("op", "a")}))] == 0
    assert samples[("lat_seconds_bucket", frozenset({("op", "a"), ("le", "+Inf")}))] == 0
    m.record_histogram("lat_ms", 20.0, labels={"op": "a"})
    samples = _samples(_families(m.to_prometheus(openmetrics=openmetrics, quantiles=True), openmetrics))
    assert samples[("lat_seconds_quantiles", frozenset({("op", "a"), ("quantile", "0.5")}))] == 0.02


def test_out_of_range_values_are_clamped_and_counted_in_both_views() -> None:
    m = Metrics()  # the defaults: up to 10 min
    for value in (5.0, 700_000.0, math.inf, -1.0, math.nan):
        m.record_histogram(REQUEST_DURATION_MS, value)
    stats = m.get_all_metrics()["histograms"][REQUEST_DURATION_MS]
    assert stats["count"] == 4 and stats["clamped"] == 3 and stats["dropped"] == 1
    assert stats["max"] == 600_000.0 and stats["min"] == 0.0
    samples = _samples(_families(m.to_openmetrics(), openmetrics=True))
    assert samples[("tinkex_request_duration_seconds_clamped_total", frozenset())] == 3
    assert samples[("tinkex_request_duration_seconds_dropped_total", frozenset())] == 1
    assert samples[("tinkex_request_duration_seconds_count", frozenset())] == 4
    assert samples[("tinkex_request_duration_seconds_bucket", frozenset({("le", "60.0")}))] == 2  # 0 and 5 ms


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_a_series_takes_at_most_16_kib_at_the_defaults(sigma: float) -> None:
    config = MetricsConfig()
    assert (config.histogram_max_ms, config.significant_figures) == (600_000, 3)
    rng = np.random.default_rng(3)
    values = rng.lognormal(3.0, sigma, 20_000).tolist()  # request latencies in ms, median 20 ms
    m = Metrics(max_series=1000)
    m.histogram("warm", {"i": -1}).record(1.0)  # the layout (one per configuration) out of the measure
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20):
            record = m.histogram(REQUEST_DURATION_MS, {"i": i}).record
            for value in values:
                record(value)
        per_series = (tracemalloc.get_traced_memory()[0] - before) / 20
    finally:
        tracemalloc.stop()
    print(f"\nhistogram series, lognormal sigma {sigma}: {per_series / 1024:.1f} KiB")
    assert per_series <= 16 * 1024


def test_a_series_with_every_bucket_in_use_stays_bounded() -> None:
    m = Metrics()
    series = m.histogram(REQUEST_DURATION_MS)
    shape = series.layout
    for index in range(shape.size):
        series.add_bucket(index, 300)  # 2-byte counts everywhere: the worst case short of 65,536 per bucket
    chunks = sum(sys.getsizeof(chunk) for chunk in series.chunks if chunk is not None)
    assert chunks <= 22 * 1024


def test_the_export_path_does_not_use_numpy() -> None:
    package = Path(__file__).parent.parent / "tinkex_trio" / "_metrics"
    for module in ("_series.py", "_prometheus.py", "_store.py"):
        assert "numpy" not in (package / module).read_text(), module


def test_export_cost_over_100_series_is_reported() -> None:
    rng = np.random.default_rng(5)
    m = Metrics()
    for i in range(100):
        labels = {
            "method": "POST",
            "endpoint": f"/api/v1/e{i % 10}",
            "pool": "training",
            "status_class": f"{i // 10}xx",
        }
        series = m.histogram(REQUEST_DURATION_MS, labels)
        for value in rng.lognormal(4.0, 1.5, 300).tolist():
            series.record(value)
    timings: dict[str, float] = {}
    for name, export in (
        ("get_all_metrics", m.get_all_metrics),
        ("to_prometheus", m.to_prometheus),
        ("to_openmetrics", m.to_openmetrics),
        ("to_prometheus(quantiles)", lambda: m.to_prometheus(quantiles=True)),
    ):
        export()
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            export()
            runs.append(time.perf_counter() - start)
        timings[name] = min(runs) * 1000
    print("\nexport of 100 histogram series (best of 5): " + ", ".join(f"{k} {v:.2f} ms" for k, v in timings.items()))
    assert len(timings) == 4  # a report, never a speed assertion


def test_a_series_exports_to_hdrhistogram() -> None:
    rng = np.random.default_rng(9)
    values = rng.lognormal(3.0, 1.0, 20_000)
    m = Metrics()
    for value in values.tolist():
        m.record_histogram(REQUEST_DURATION_MS, value)
    hdr = m.to_hdrhistogram(REQUEST_DURATION_MS)
    stats = m.get_histogram(REQUEST_DURATION_MS)
    assert hdr is not None and stats is not None and m.to_hdrhistogram("missing") is None
    assert hdr.get_total_count() == len(values) == stats["count"]
    for key, percentile in (("p50", 50.0), ("p99", 99.0), ("p999", 99.9)):
        # The same buckets, read again at HdrHistogram's own 3 significant figures.
        assert hdr.get_value_at_percentile(percentile) / 1000 == pytest.approx(stats[key], rel=2.1e-3), key
