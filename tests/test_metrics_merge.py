"""Metrics.encode / Metrics.merge: exact merging of stores across workers and processes."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import msgspec
import pytest

import tinkex_trio as tx
from tinkex_trio._config import MetricsConfig


def _values(n: int = 20_000, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    out = [rng.lognormvariate(3.5, 1.2) for _ in range(n)]
    out += [0.0, 0.0004, 0.0125, 1e9, float("inf"), -3.0, float("nan")]  # rounded, clamped, dropped
    rng.shuffle(out)
    return out


def _feed(m: tx.Metrics, i: int, v: float) -> None:
    phase = ("fwd", "bwd", "opt")[i % 3]
    m.record_histogram("step_ms", v, labels={"phase": phase})
    m.record_histogram("plain_ms", v)
    m.increment("steps_total", labels={"phase": phase})
    m.increment("values")


def _one_and_workers(workers: int = 4) -> tuple[tx.Metrics, list[tx.Metrics]]:
    one = tx.Metrics()
    parts = [tx.Metrics() for _ in range(workers)]
    values = _values()
    for i, v in enumerate(values):
        _feed(one, i, v)
        _feed(parts[(i * 7919) % workers], i, v)  # not contiguous quarters
    return one, parts


def _data(m: tx.Metrics) -> dict[str, object]:
    out = m.get_all_metrics(now=0.0)
    out.pop("since")
    return out


def test_merge_of_four_workers_equals_one_store() -> None:
    one, parts = _one_and_workers()
    merged = tx.Metrics.merge([p.encode() for p in parts])
    assert _data(merged) == _data(one)
    stats = merged.get_histogram("plain_ms")
    assert stats is not None
    assert stats["count"] == 20_006  # NaN dropped
    assert stats["dropped"] == 1 and stats["clamped"] == 3
    assert stats["min"] == 0.0 and stats["max"] == one.config.histogram_max_ms
    assert merged.get_counter("steps_total", {"phase": "fwd"}) == one.get_counter("steps_total", {"phase": "fwd"})
    assert merged.get_counter("values") == 20_007
    # Workers are unchanged, and merging is associative: a merge of merges is the same.
    halves = [tx.Metrics.merge([p.encode() for p in parts[:2]]), tx.Metrics.merge([p.encode() for p in parts[2:]])]
    assert _data(tx.Metrics.merge([h.encode() for h in halves])) == _data(one)


def test_round_trip_keeps_everything_exactly() -> None:
    m = tx.Metrics(MetricsConfig(significant_figures=2, histogram_max_ms=10_000), max_series=3)
    m.increment("c", 2.5, labels={"k": True, "z": None})
    m.set_gauge("g", -1.5, labels={"x": 1})
    for v in (1.0, 2.0, 3.0, 20_000.0):
        m.record_histogram("h_ms", v)
    m.histogram("empty_ms")
    for i in range(5):
        m.increment("many", labels={"i": i})  # beyond max_series: the overflow series
    back = tx.Metrics.merge([m.encode()])
    assert _data(back) == _data(m)
    assert back.config.significant_figures == 2 and back.config.histogram_max_ms == 10_000
    assert back.get_counter("c", {"k": "true", "z": ""}) == 2.5
    assert back.get_counter("many", {"overflow": "true"}) == 2
    assert back.get_histogram("empty_ms") == m.get_histogram("empty_ms")


def test_gauges_take_the_last_encoded_value() -> None:
    a, b = tx.Metrics(), tx.Metrics()
    a.set_gauge("depth", 1.0)
    b.set_gauge("depth", 2.0)
    a.set_gauge("only_a", 5.0)
    first = b.encode()
    later = a.encode()
    assert tx.Metrics.merge([later, first]).get_gauge("depth") == 1.0  # a's blob is the newer one
    assert tx.Metrics.merge([first, later]).get_gauge("depth") == 1.0
    merged = tx.Metrics.merge([first, later])
    assert merged.get_gauge("only_a") == 5.0


def test_merge_of_nothing_is_an_empty_store() -> None:
    m = tx.Metrics.merge([])
    assert isinstance(m, tx.Metrics)
    assert _data(m) == _data(tx.Metrics())


def test_bad_blobs_are_refused_with_a_clear_error() -> None:
    good = tx.Metrics().encode()
    envelope = msgspec.msgpack.decode(good)
    envelope["version"] = 99
    with pytest.raises(ValueError, match="unsupported tinkex_trio metrics blob version 99"):
        tx.Metrics.merge([msgspec.msgpack.encode(envelope)])
    with pytest.raises(ValueError, match="not a tinkex_trio metrics blob"):
        tx.Metrics.merge([b"\x00garbage"])
    with pytest.raises(ValueError, match="not a tinkex_trio metrics blob"):
        tx.Metrics.merge([msgspec.msgpack.encode({"format": "other", "version": 1})])
    envelope["version"] = 1  # the HdrHistogram blobs of 0.x
    with pytest.raises(ValueError, match="unsupported tinkex_trio metrics blob version 1"):
        tx.Metrics.merge([msgspec.msgpack.encode(envelope)])
    envelope["version"] = 2
    del envelope["counters"]
    with pytest.raises(ValueError, match="corrupt"):
        tx.Metrics.merge([msgspec.msgpack.encode(envelope)])
    other = tx.Metrics(MetricsConfig(significant_figures=2))  # the default is 3
    with pytest.raises(ValueError, match="different histogram configurations"):
        tx.Metrics.merge([good, other.encode()])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("buckets", [[10, 1], [20, 1]], "count mismatch"),  # 2 values in the buckets, 3 in count
        ("buckets", [[10, 1], [10**9, 2]], "out of this histogram's layout"),
        ("buckets", [[10, 1], [20, -1], [30, 3]], "out of this histogram's layout"),
        ("max", 10**12, "min / max"),
        ("squares", "many", "sum of squares"),
    ],
)
def test_corrupt_histograms_are_refused(field: str, value: object, message: str) -> None:
    m = tx.Metrics()
    for latency in (1.0, 2.0, 3.0):
        m.record_histogram("lat_ms", latency)
    envelope = msgspec.msgpack.decode(m.encode())
    envelope["histograms"][0][field] = value
    with pytest.raises(ValueError, match=message):
        tx.Metrics.merge([msgspec.msgpack.encode(envelope)])


def test_configurations_must_agree() -> None:
    good = tx.Metrics().encode()
    other = tx.Metrics(MetricsConfig(significant_figures=2))  # the default is 3
    with pytest.raises(ValueError, match="different histogram configurations"):
        tx.Metrics.merge([good, other.encode()])


def test_a_name_of_two_kinds_is_refused() -> None:
    a, b = tx.Metrics(), tx.Metrics()
    a.increment("x")
    b.set_gauge("x", 1.0)
    with pytest.raises(ValueError, match="is a"):
        tx.Metrics.merge([a.encode(), b.encode()])


_WORKER = textwrap.dedent(
    """
    import random, sys
    import tinkex_trio as tx

    seed, workers, index = (int(a) for a in sys.argv[1:])
    rng = random.Random(seed)
    m = tx.Metrics()
    for i in range(4000):
        v = rng.lognormvariate(3.0, 1.0)
        if i % workers == index:
            m.record_histogram("lat_ms", v, labels={"w": "any"})
            m.increment("n")
    sys.stdout.buffer.write(m.encode())
    """
)


def test_merge_of_blobs_from_other_processes() -> None:
    blobs = [
        subprocess.run(
            [sys.executable, "-c", _WORKER, "3", "2", str(index)], check=True, capture_output=True, timeout=60
        ).stdout
        for index in range(2)
    ]
    rng = random.Random(3)
    one = tx.Metrics()
    for _ in range(4000):
        one.record_histogram("lat_ms", rng.lognormvariate(3.0, 1.0), labels={"w": "any"})
        one.increment("n")
    merged = tx.Metrics.merge(blobs)
    assert _data(merged) == _data(one)
    assert merged.get_counter("n") == 4000
