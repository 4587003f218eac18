"""Metrics: the store (counters, gauges, HdrHistogram histograms, Prometheus text), the telemetry feed, the snapshot
task under MockClock, and a session against the in-process simulator."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import trio
import trio.testing
from _simkit import API_KEY, drain, sim_config, sim_stack

from tinkex_trio import types as t
from tinkex_trio._config import Config, MetricsConfig
from tinkex_trio._metrics import (
    REQUEST_DURATION_MS,
    REQUESTS_TOTAL,
    Metrics,
    MetricsFeed,
    path_template,
)
from tinkex_trio._metrics._series import layout
from tinkex_trio._telemetry import (
    BATCH_FORWARD_BACKWARD_STOP,
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
)

# -- counters and gauges ----------------------------------------------------------------------------------------------


def test_counters_and_gauges() -> None:
    m = Metrics()
    m.increment("jobs")
    m.increment("jobs", 2)
    m.increment("jobs", labels={"kind": "a"})
    m.increment("jobs", 0.5, labels={"kind": "b"})
    m.set_gauge("depth", 3)
    m.set_gauge("depth", 1.5)
    m.set_gauge("depth", 7, labels={"q": "x"})
    out = m.get_all_metrics()
    assert out["counters"] == {"jobs": 3, 'jobs{kind="a"}': 1, 'jobs{kind="b"}': 0.5}
    assert out["gauges"] == {"depth": 1.5, 'depth{q="x"}': 7.0}
    assert out["histograms"] == {} and out["summaries"] == {}
    assert m.get_counter("jobs") == 3 and m.get_counter("jobs", {"kind": "a"}) == 1 and m.get_counter("nope") == 0
    assert m.counter_total("jobs") == 4.5
    assert m.get_gauge("depth") == 1.5 and m.get_gauge("depth", {"q": "x"}) == 7.0 and m.get_gauge("nope") is None
    with pytest.raises(ValueError, match="only goes up"):
        m.increment("jobs", -1)
    with pytest.raises(ValueError, match="is a counter"):
        m.set_gauge("jobs", 1.0)
    with pytest.raises(ValueError, match="is a gauge"):
        m.record_histogram("depth", 1.0)
    assert m.get_counter("jobs") == 3  # the refused calls changed nothing


def test_labels_are_order_insensitive_and_typed_values_stay_distinct() -> None:
    m = Metrics()
    m.increment("c", labels={"a": "1", "b": "2"})
    m.increment("c", labels={"b": "2", "a": "1"})
    m.increment("c", labels={"ok": True})
    m.increment("c", labels={"ok": 1})  # equal to True as a dict key, but another label value
    m.increment("c", labels={"ok": 1})
    m.increment("c", labels={"ok": None})
    assert m.get_all_metrics()["counters"] == {
        'c{a="1",b="2"}': 2,
        'c{ok=""}': 1,
        'c{ok="1"}': 2,
        'c{ok="true"}': 1,
    }
    assert m.get_counter("c", {"b": "2", "a": "1"}) == 2
    with pytest.raises(TypeError):
        m.increment("c", labels={"": "x"})


def test_series_cap_sends_extra_label_sets_to_one_overflow_series() -> None:
    m = Metrics(max_series=3)
    for i in range(10):
        m.increment("c", labels={"id": str(i)})
    counters = m.get_all_metrics()["counters"]
    assert len(counters) == 4
    assert counters['c{overflow="true"}'] == 7
    assert m.counter_total("c") == 10


def test_series_handles_are_the_stored_series_until_reset() -> None:
    now = [100.0]
    m = Metrics(clock=lambda: now[0])
    counter = m.counter("c", {"k": "v"})
    counter.inc(4)
    histogram = m.histogram("h")
    histogram.record(2.0)
    assert m.get_counter("c", {"k": "v"}) == 4
    assert m.get_histogram("h") is not None and m.get_all_metrics()["histograms"]["h"]["count"] == 1
    assert m.get_all_metrics()["since"] == 100.0
    now[0] = 160.0
    generation = m.generation
    m.reset()
    assert m.generation == generation + 1
    out = m.get_all_metrics()
    assert out["counters"] == {} and out["gauges"] == {} and out["histograms"] == {}
    assert out["since"] == 160.0 and out["time"] == 160.0
    counter.inc()  # a detached series: not in the store any more
    assert m.get_counter("c", {"k": "v"}) == 0
    assert m.get_all_metrics(now=170.0)["time"] == 170.0


# -- histograms -------------------------------------------------------------------------------------------------------


def _record_all(values: list[float], config: MetricsConfig | None = None) -> Metrics:
    m = Metrics(config)
    for value in values:
        m.record_histogram("lat", value)
    return m


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_histogram_statistics_against_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.lognormal(3.0, 1.2, 4000), rng.uniform(0.0, 2.0, 1000)])
    rng.shuffle(values)
    m = _record_all(values.tolist())
    stats = m.get_histogram("lat")
    assert stats is not None
    units = np.sort(np.floor(values * 1000 + 0.5))  # what the store keeps: integer microseconds
    n = len(values)
    assert stats["count"] == n
    assert stats["sum"] == pytest.approx(units.sum() / 1000, rel=1e-12)
    assert stats["mean"] == pytest.approx(units.mean() / 1000, rel=1e-12)
    assert stats["min"] == units[0] / 1000 and stats["max"] == units[-1] / 1000
    assert stats["stddev"] == pytest.approx(np.std(units) / 1000, rel=1e-12)
    # 3 significant figures (the default): the value at the rank, within 0.1 % (exact below 512 µs).
    for key, percentile in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99), ("p999", 99.9)):
        rank = max(int(percentile * n / 100 + 0.5), 1)
        exact = units[rank - 1]
        got = stats[key] * 1000
        assert abs(got - exact) <= exact * 1e-3 * (1 + 1e-9), key
        if exact < 512:
            assert got == exact, key
        # 5,000 values: numpy interpolates between order statistics up to ~1 % apart in the tail.
        assert stats[key] == pytest.approx(np.percentile(values, percentile), rel=1e-2), key


def test_percentiles_are_the_rank_s_bucket_within_the_exact_min_and_max() -> None:
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.lognormal(2.0, 3.0, 3000), rng.uniform(0, 0.01, 200), [0.0, 600_000.0]])
    m = _record_all(values.tolist())
    units = sorted(min(int(value * 1000 + 0.5), 600_000_000) for value in values)
    shape = layout(600_000_000, 3)
    stats = m.get_histogram("lat")
    assert stats is not None and stats["count"] == len(values)
    low, high = units[0], units[-1]
    assert (stats["min"], stats["max"]) == (low / 1000, high / 1000)
    for key, percentile in (("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0), ("p999", 99.9)):
        at_rank = units[max(int(percentile * len(units) / 100 + 0.5), 1) - 1]
        assert stats[key] == min(max(shape.value(shape.index(at_rank)), low), high) / 1000, key


def test_sub_millisecond_values_keep_their_precision() -> None:
    m = _record_all([0.25, 0.0125, 0.0004])
    stats = m.get_histogram("lat")
    assert stats is not None
    assert stats["min"] == 0.0 and stats["max"] == 0.25
    assert stats["p50"] == 0.013  # 12.5 us, rounded half up
    assert stats["sum"] == pytest.approx(0.263)


def test_out_of_range_values_are_clamped_and_counted_never_raised() -> None:
    m = _record_all([5.0, 50.0, math.inf, -3.0, -math.inf, math.nan], MetricsConfig(histogram_max_ms=10))
    stats = m.get_histogram("lat")
    assert stats is not None
    assert stats["count"] == 5 and stats["clamped"] == 4 and stats["dropped"] == 1
    assert stats["max"] == 10.0 and stats["min"] == 0.0 and stats["p999"] == 10.0
    assert stats["sum"] == 25.0


def test_significant_figures_from_config() -> None:
    values = [123.456] * 10
    coarse = _record_all(values, MetricsConfig(significant_figures=1)).get_histogram("lat")
    fine = _record_all(values, MetricsConfig(significant_figures=5)).get_histogram("lat")
    assert coarse is not None and fine is not None
    # Percentiles stay within the exact min / max, so a constant is exact whatever the precision ...
    assert coarse["p50"] == fine["p50"] == 123.456
    mixed = [100.0, 123.456, 150.0]
    coarse = _record_all(mixed, MetricsConfig(significant_figures=1)).get_histogram("lat")
    fine = _record_all(mixed, MetricsConfig(significant_figures=5)).get_histogram("lat")
    assert coarse is not None and fine is not None
    # ... but not a middle value: 1 figure puts 123.456 in a wide bucket, 5 figures keep it.
    assert fine["p50"] == pytest.approx(123.456, rel=1e-5)
    assert abs(coarse["p50"] - 123.456) > 1.0


def test_empty_histogram_and_summary_over_label_sets() -> None:
    m = Metrics()
    assert m.histogram("h").stats()["count"] == 0
    assert m.get_histogram("h") == {
        "count": 0,
        "sum": 0.0,
        "min": 0.0,
        "max": 0.0,
        "mean": 0.0,
        "stddev": 0.0,
        "p50": 0.0,
        "p90": 0.0,
        "p95": 0.0,
        "p99": 0.0,
        "p999": 0.0,
        "clamped": 0,
        "dropped": 0,
    }
    for value in (1.0, 2.0, 3.0):
        m.record_histogram("lat", value, labels={"op": "a"})
    for value in (10.0, 20.0):
        m.record_histogram("lat", value, labels={"op": "b"})
    summary = m.get_all_metrics()["summaries"]["lat"]
    assert summary["count"] == 5 and summary["series"] == 2
    assert summary["min"] == 1.0 and summary["max"] == 20.0 and summary["sum"] == 36.0
    assert summary["p50"] == pytest.approx(3.0, rel=1e-2)


# -- Prometheus ------------------------------------------------------------------------------------------------------

_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def _parse_prometheus(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """A strict reader of the text format: every line is a HELP or TYPE comment or a sample; label values
    unescaped."""
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types
            types[name] = kind
            continue
        match = _LINE.match(line)
        assert match is not None, line
        labels: list[tuple[str, str]] = []
        raw = match["labels"] or ""
        position = 0
        while position < len(raw):
            label = _LABEL.match(raw, position)
            assert label is not None, raw[position:]
            value = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], label[2])
            labels.append((label[1], value))
            position = label.end()
        key = (match["name"], frozenset(labels))
        assert key not in samples
        samples[key] = float(match["value"])
    return types, samples


def test_prometheus_text_parses_back() -> None:
    m = Metrics()
    m.increment("requests", 3, labels={"path": 'a"b\\c\nd'})
    m.increment("errors_total")
    m.set_gauge("queue.depth-now", 2.5)
    m.set_gauge("1st", 1)
    m.increment("weird", labels={"bad-name": "v", "__reserved": "w"})
    for value in (1.0, 2.0, 3.0, 4.0):
        m.record_histogram("lat_ms", value, labels={"op": "fwd"})
    types, samples = _parse_prometheus(m.to_prometheus())
    assert types == {
        "_1st": "gauge",
        "errors_total": "counter",
        "lat_seconds": "histogram",
        "lat_seconds_clamped_total": "counter",
        "lat_seconds_dropped_total": "counter",
        "queue_depth_now": "gauge",
        "requests_total": "counter",
        "weird_total": "counter",
    }
    assert samples[("requests_total", frozenset({("path", 'a"b\\c\nd')}))] == 3
    assert samples[("errors_total", frozenset())] == 1
    assert samples[("queue_depth_now", frozenset())] == 2.5
    assert samples[("_1st", frozenset())] == 1
    assert samples[("weird_total", frozenset({("bad_name", "v"), ("x__reserved", "w")}))] == 1
    op = ("op", "fwd")
    assert samples[("lat_seconds_count", frozenset({op}))] == 4
    assert samples[("lat_seconds_sum", frozenset({op}))] == 0.01
    assert samples[("lat_seconds_bucket", frozenset({op, ("le", "0.005")}))] == 4
    assert samples[("lat_seconds_bucket", frozenset({op, ("le", "+Inf")}))] == 4
    assert samples[("lat_seconds_clamped_total", frozenset({op}))] == 0
    assert len(samples) == 5 + 14 + 2 + 2
    assert Metrics().to_prometheus() == ""


# -- paths -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/api/v1/forward_backward", "/api/v1/forward_backward"),
        ("/api/v1/sessions/3f2c9a1e-77b0-4d2c/finish", "/api/v1/sessions/{id}/finish"),
        ("/api/v1/sessions/abc", "/api/v1/sessions/{id}"),
        ("/api/v1/sessions/search", "/api/v1/sessions/search"),
        ("/api/v1/samplers/s-1:sample:0", "/api/v1/samplers/{id}"),
        ("/api/v1/training_runs/run%3Atrain%3A0/checkpoints", "/api/v1/training_runs/{id}/checkpoints"),
        (
            "/api/v1/training_runs/m:train:0/checkpoints/weights/ckpt/publish",
            "/api/v1/training_runs/{id}/checkpoints/weights/{name}/publish",
        ),
        ("/api/v1/training_runs?limit=20&offset=0", "/api/v1/training_runs"),
        ("https://tinker.example/api/v1/asample", "/api/v1/asample"),
        ("/api/v1/unknown/0b6f2a/x", "/api/v1/unknown/{id}/x"),
        ("/", "/"),
    ],
)
def test_path_template(path: str, template: str) -> None:
    assert path_template(path) == template


# -- the telemetry feed ------------------------------------------------------------------------------------------------


def _feed() -> tuple[Metrics, TelemetryBus, MetricsFeed]:
    m = Metrics()
    bus = TelemetryBus(clock=lambda: 0.0)
    return m, bus, MetricsFeed(m).attach(bus)


def _request(session_id: str, status: int | None, **extra: MetadataValue) -> dict[str, MetadataValue]:
    meta: dict[str, MetadataValue] = {
        "method": "POST",
        "path": f"/api/v1/sessions/{session_id}/finish",
        "pool": "session",
    }
    if status is not None:
        meta["status"] = status
    return {**meta, **extra}


def test_feed_requests_by_template_and_status_class() -> None:
    m, bus, _ = _feed()
    for i, (status, ms) in enumerate([(200, 10.0), (200, 30.0), (503, 5.0), (404, 1.0)]):
        bus.emit(HTTP_REQUEST_STOP, {"duration_ms": ms, "attempt": 0}, _request(f"sess-{i}", status))
    bus.emit(HTTP_REQUEST_STOP, {"duration_ms": 7.0}, _request("sess-9", None, cancelled=True))
    bus.emit(HTTP_REQUEST_EXCEPTION, {"duration_ms": 2.0}, _request("sess-8", None, kind="APIConnectionError"))
    bus.emit(HTTP_REQUEST_EXCEPTION, {"duration_ms": 2.0}, _request("sess-7", None, kind="not a class name!"))
    base = {"method": "POST", "endpoint": "/api/v1/sessions/{id}/finish", "pool": "session"}
    ok = m.get_histogram(REQUEST_DURATION_MS, {**base, "status_class": "2xx"})
    assert ok is not None and ok["count"] == 2 and ok["sum"] == 40.0
    assert m.get_counter(REQUESTS_TOTAL, {**base, "status_class": "2xx"}) == 2
    assert m.get_counter(REQUESTS_TOTAL, {**base, "status_class": "5xx"}) == 1
    assert m.get_counter(REQUESTS_TOTAL, {**base, "status_class": "4xx"}) == 1
    assert m.get_counter(REQUESTS_TOTAL, {**base, "status_class": "cancelled"}) == 1
    assert m.counter_total(REQUESTS_TOTAL) == 5
    assert m.get_counter("tinkex_request_errors_total", {**base, "kind": "APIConnectionError"}) == 1
    assert m.get_counter("tinkex_request_errors_total", {**base, "kind": "unknown"}) == 1
    assert "sess-" not in repr(m.get_all_metrics()) and "sess-" not in m.to_prometheus()


def test_feed_other_events() -> None:
    m, bus, feed = _feed()
    bus.emit(RETRY, {"delay_s": 0.5, "attempt": 1}, {**_request("s1", None), "reason": "status_5xx", "error": "E"})
    bus.emit(RETRY, {"delay_s": 1.0}, {"method": "SamplingClient.sample", "reason": "backpressure", "seq_id": 4})
    bus.emit(
        FUTURE_QUEUE_STATE,
        {"iteration": 3},
        {"request_id": "req-123", "request_type": "Sample", "queue_state": "paused_capacity"},
    )
    bus.emit(SESSION_HEARTBEAT, {"duration_ms": 3.0}, {"session_id": "sess-x", "ok": True, "expired": False})
    bus.emit(SESSION_HEARTBEAT, {"duration_ms": 3.0}, {"session_id": "sess-x", "ok": False, "expired": True})
    bus.emit(CIRCUIT_BREAKER_STATE_CHANGE, {"state": 2}, {"from": "closed", "to": "open", "base_url": "http://h"})
    bus.emit(CIRCUIT_BREAKER_STATE_CHANGE, {"state": 1}, {"from": "open", "to": "weird"})
    bus.emit(CIRCUIT_BREAKER_REJECTED, {"retry_after_s": 3.0}, _request("s2", None, state="open"))
    bus.emit(BATCH_FORWARD_BACKWARD_STOP, {"duration_ms": 12.0, "items": 4, "requests": 2}, {})
    bus.emit(METRICS_SNAPSHOT, {"requests_total": 1.0}, {})  # not fed back
    counters = m.get_all_metrics()["counters"]
    assert counters == {
        'tinkex_batches_total{op="forward_backward"}': 1,
        "tinkex_circuit_breaker_rejected_total"
        '{endpoint="/api/v1/sessions/{id}/finish",method="POST",pool="session"}': 1,
        'tinkex_circuit_breaker_transitions_total{reason="unknown",to="open"}': 1,
        'tinkex_circuit_breaker_transitions_total{reason="unknown",to="unknown"}': 1,
        'tinkex_future_queue_state_changes_total{queue_state="paused_capacity",request_type="Sample"}': 1,
        'tinkex_retries_total{endpoint="/api/v1/sessions/{id}/finish",error="E",reason="status_5xx"}': 1,
        'tinkex_retries_total{endpoint="SamplingClient.sample",error="unknown",reason="backpressure"}': 1,
        'tinkex_session_heartbeats_total{ok="false"}': 1,
        'tinkex_session_heartbeats_total{ok="true"}': 1,
    }
    assert m.get_gauge("tinkex_session_expired") == 1.0
    batch = m.get_histogram("tinkex_batch_duration_ms", {"op": "forward_backward"})
    size = m.get_histogram("tinkex_batch_size", {"op": "forward_backward"})
    assert batch is not None and batch["sum"] == 12.0 and size is not None and size["max"] == 4.0
    assert "req-123" not in repr(m.get_all_metrics()) and "sess-x" not in m.to_prometheus()
    feed.detach()
    feed.detach()
    assert bus.handler_ids() == []
    bus.emit(SESSION_HEARTBEAT, {}, {"ok": True})
    assert m.get_counter("tinkex_session_heartbeats_total", {"ok": True}) == 1


def test_feed_follows_a_reset_of_the_store() -> None:
    m, bus, _ = _feed()
    meta = _request("a", 200)
    bus.emit(HTTP_REQUEST_STOP, {"duration_ms": 1.0}, meta)
    m.reset()
    bus.emit(HTTP_REQUEST_STOP, {"duration_ms": 2.0}, meta)
    bus.emit(HTTP_REQUEST_STOP, {"duration_ms": 4.0}, meta)
    summary = m.summary(REQUEST_DURATION_MS)
    assert summary is not None and summary["count"] == 2 and summary["sum"] == 6.0
    assert m.counter_total(REQUESTS_TOTAL) == 2


def test_feed_rejects_a_second_attach_and_a_bad_interval() -> None:
    m, bus, feed = _feed()
    with pytest.raises(RuntimeError):
        feed.attach(bus)
    with pytest.raises(ValueError):
        MetricsFeed(m, snapshot_interval_s=0)


async def test_snapshot_task_under_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    m = Metrics(clock=trio.current_time)
    bus = TelemetryBus(clock=trio.current_time)
    snapshots = bus.subscribe(events=METRICS_SNAPSHOT)
    feed = MetricsFeed(m, snapshot_interval_s=10.0).attach(bus)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed.run)
        for ms in (5.0, 15.0):
            bus.emit(HTTP_REQUEST_STOP, {"duration_ms": ms}, _request("z", 200))
        await trio.sleep(35.0)
        nursery.cancel_scope.cancel()
    events = drain(snapshots)
    assert [e.time - start for e in events] == [10.0, 20.0, 30.0]
    first = events[0].measurements
    assert first["requests_total"] == 2 and first["request_duration_ms_count"] == 2
    assert first["request_duration_ms_max"] == 15.0 and first["request_duration_ms_mean"] == 10.0
    assert events[0].metadata == {"interval_s": 10.0}
    assert bus.handler_ids() == []  # the task detached the feed when it was cancelled


# -- a session against the simulator ----------------------------------------------------------------------------------


def _datum() -> t.Datum:
    tokens = [1, 2, 3, 4, 5, 6, 7, 8]
    return t.datum(tokens[:-1], target_tokens=tokens[1:], weights=[1.0] * 7)


async def test_session_metrics_count_requests(autojump_clock: trio.testing.MockClock) -> None:
    config = Config.create(API_KEY, "http://sim.test", metrics={"snapshot_interval_s": 5.0})
    async with sim_stack(sim_config()) as sim:
        async with sim.session(config=config) as session:
            snapshots = session.telemetry.subscribe(events=METRICS_SNAPSHOT)
            stops = session.telemetry.subscribe(10_000, events=HTTP_REQUEST_STOP)
            trainer = await session.create_lora_training_client("Qwen/Qwen3-8B", rank=4)
            for _ in range(3):
                await trainer.forward_backward([_datum()], "cross_entropy")
                await trainer.optim_step(t.AdamParams(learning_rate=0.01))
            await trio.sleep(5.0)
            metrics = session.metrics.get_all_metrics()
            prometheus = session.metrics.to_prometheus()
            session_id = session.session_id
        seen = len(sim.rec.requests("forward_backward"))
        assert seen == 3
        labels = {"method": "POST", "endpoint": "/api/v1/forward_backward", "pool": "training", "status_class": "2xx"}
        key = (
            "tinkex_request_duration_ms"
            '{endpoint="/api/v1/forward_backward",method="POST",pool="training",status_class="2xx"}'
        )
        assert metrics["histograms"][key]["count"] == seen
        # Every request's duration, as the transport reported it, is in its endpoint's histogram.
        durations: dict[str, list[float]] = {}
        for event in drain(stops):
            endpoint = path_template(str(event.metadata["path"]))
            durations.setdefault(endpoint, []).append(event.measurements["duration_ms"])
        for endpoint in ("/api/v1/forward_backward", "/api/v1/retrieve_future"):
            merged = [v for k, v in metrics["histograms"].items() if f'endpoint="{endpoint}"' in k]
            assert sum(h["count"] for h in merged) == len(durations[endpoint])
            assert sum(h["sum"] for h in merged) == pytest.approx(
                sum(int(d * 1000 + 0.5) for d in durations[endpoint]) / 1000, abs=1e-9
            )
        assert max(durations["/api/v1/retrieve_future"]) > 0  # long-polls wait for the 1 s service time
        assert session.metrics.get_counter(REQUESTS_TOTAL, labels) == seen
        polls = sum(
            v for k, v in metrics["counters"].items() if k.startswith(REQUESTS_TOTAL) and "retrieve_future" in k
        )
        assert polls == len(sim.rec.requests("retrieve_future")) > 0
        answered = sum(v for k, v in metrics["counters"].items() if k.startswith(REQUESTS_TOTAL + "{"))
        assert metrics["summaries"][REQUEST_DURATION_MS]["count"] == answered
        # The finish request, sent as the block ends, is counted too, under its template (no session id).
        after = session.metrics.get_all_metrics()["counters"]
        assert [k for k in after if "/finish" in k] == [
            'tinkex_requests_total{endpoint="/api/v1/sessions/{id}/finish",method="POST",pool="session",status_class="2xx"}'
        ]
        assert drain(snapshots)[0].measurements["requests_total"] >= 2 * seen
        for text in (repr(metrics), prometheus):
            assert API_KEY not in text and "test-key" not in text and session_id not in text


async def test_session_metrics_disabled(autojump_clock: trio.testing.MockClock) -> None:
    config = Config.create(API_KEY, "http://sim.test", metrics={"enabled": False})
    async with sim_stack(sim_config()) as sim, sim.session(config=config) as session:
        await session.get_server_capabilities()
        assert "tinkex_trio.metrics" not in session.telemetry.handler_ids()
        assert session.metrics.get_all_metrics()["counters"] == {}
        session.metrics.increment("mine")  # still the user's to use
        assert session.metrics.get_counter("mine") == 1


async def test_the_session_feed_reads_telemetry_from_a_bounded_channel_and_counts_what_it_drops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = Metrics(clock=trio.current_time)
    bus = TelemetryBus(clock=trio.current_time)
    feed = MetricsFeed(m, snapshot_interval_s=10.0).attach(bus, channel_size=3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed.run)
        await trio.sleep(1.0)
        # In one go, without a checkpoint: the waiting task is handed the first, the channel holds 3, the bus drops
        # the last one.
        for ms in (1.0, 2.0, 3.0, 4.0, 5.0):
            bus.emit(HTTP_REQUEST_STOP, {"duration_ms": ms}, _request("z", 200))
        # A read applies what the channel holds first: no stale view, although the task has not run yet.
        assert m.counter_total(REQUESTS_TOTAL) >= 3
        await trio.sleep(11.0)  # the snapshot tick counts the drops
        assert m.get_counter("tinkex_telemetry_events_dropped_total") == 1
        assert m.counter_total(REQUESTS_TOTAL) == 4
        for ms in (6.0, 7.0):
            bus.emit(HTTP_REQUEST_STOP, {"duration_ms": ms}, _request("z", 200))
        nursery.cancel_scope.cancel()
    assert m.counter_total(REQUESTS_TOTAL) == 6  # the task applied them, or its close did
    assert bus.subscription_count() == 0


async def test_recording_from_many_tasks_at_once_loses_nothing(autojump_clock: trio.testing.MockClock) -> None:
    m = Metrics(clock=trio.current_time)

    async def worker(i: int) -> None:
        for j in range(100):
            m.record_histogram("work_ms", float(i + j), labels={"worker": i % 4})
            m.increment("work_total")
            await trio.sleep(0.001 * (i % 3))

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(worker, i)
    assert m.counter_total("work_total") == 5000
    summary = m.summary("work_ms")
    assert summary is not None and summary["count"] == 5000 and summary["series"] == 4
