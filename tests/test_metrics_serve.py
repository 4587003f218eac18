"""MetricsCollector (a prometheus_client collector of a store) and serve_metrics (``/metrics`` over HTTP from trio)."""

from __future__ import annotations

import builtins
import sys
from types import ModuleType
from typing import Any

import httpx
import pytest
import trio

import tinkex_trio as tx
from tinkex_trio._metrics._collector import DEFAULT_BUCKETS_S, bucket_counts, histogram_name


def _store() -> tx.Metrics:
    m = tx.Metrics()
    for v in (1.0, 5.0, 7.0, 100.0, 2000.0, 1e12):  # 1e12 ms is clamped to histogram_max_ms (10 min)
        m.record_histogram("tinkex_request_duration_ms", v, labels={"method": "POST", "path": "/api/v1/x"})
    m.record_histogram("step_ms", 42.0)
    m.increment("jobs", 3)
    m.increment("tinkex_requests_total", labels={"method": "GET", "status": 200})
    m.set_gauge("queue_depth", 4.5, labels={"pool": "train"})
    m.set_gauge("bad-name.x", 1.0, labels={"bad-label": 'v"q'})
    return m


def _prometheus() -> ModuleType:
    return pytest.importorskip("prometheus_client")


def _scrape(m: tx.Metrics, **kwargs: Any) -> dict[str, Any]:
    prometheus_client = _prometheus()
    from prometheus_client.parser import text_string_to_metric_families

    registry = prometheus_client.CollectorRegistry()
    registry.register(tx.MetricsCollector(m, **kwargs))
    text = prometheus_client.generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_collector_exposes_counters_gauges_and_histograms() -> None:
    families = _scrape(_store())
    assert families["jobs"].type == "counter"
    assert [(s.name, s.labels, s.value) for s in families["jobs"].samples] == [("jobs_total", {}, 3.0)]
    requests = families["tinkex_requests"]
    assert [(s.name, s.labels, s.value) for s in requests.samples] == [
        ("tinkex_requests_total", {"method": "GET", "status": "200"}, 1.0)
    ]
    assert families["queue_depth"].type == "gauge"
    assert families["queue_depth"].samples[0].labels == {"pool": "train"}
    assert families["queue_depth"].samples[0].value == 4.5
    assert families["bad_name_x"].samples[0].labels == {"bad_label": 'v"q'}

    duration = families["tinkex_request_duration_seconds"]
    assert duration.type == "histogram"
    labels = {"method": "POST", "path": "/api/v1/x"}
    buckets = {s.labels["le"]: s.value for s in duration.samples if s.name.endswith("_bucket")}
    assert all({k: v for k, v in s.labels.items() if k != "le"} == labels for s in duration.samples)
    assert list(buckets) == [*(repr(b) for b in DEFAULT_BUCKETS_S), "+Inf"]
    assert buckets["0.005"] == 2  # 1 ms, 5 ms (le is inclusive)
    assert buckets["0.01"] == 3
    assert buckets["0.1"] == 4
    assert buckets["2.5"] == 5
    assert buckets["60.0"] == 5 and buckets["+Inf"] == 6  # the clamped value counts at the range's top, 10 min
    assert buckets["+Inf"] == 6
    values = list(buckets.values())
    assert values == sorted(values)  # cumulative
    samples = {s.name: s.value for s in duration.samples}
    assert samples["tinkex_request_duration_seconds_count"] == 6
    assert samples["tinkex_request_duration_seconds_sum"] == pytest.approx((1 + 5 + 7 + 100 + 2000 + 600_000) / 1000)
    assert {s.name: s.value for s in families["step_seconds"].samples}["step_seconds_count"] == 1


def test_collector_reads_the_live_store_and_custom_buckets() -> None:
    m = tx.Metrics()
    families = _scrape(m, buckets_s=(0.001, 1.0))
    assert families == {}
    m.record_histogram("x_ms", 0.5)
    m.record_histogram("x_ms", 1.0)
    m.record_histogram("x_ms", 1.5)
    duration = _scrape(m, buckets_s=(0.001, 1.0))["x_seconds"]
    assert {s.labels["le"]: s.value for s in duration.samples if "le" in s.labels} == {
        "0.001": 2,
        "1.0": 3,
        "+Inf": 3,
    }
    with pytest.raises(ValueError, match="strictly increasing"):
        tx.MetricsCollector(m, buckets_s=(1.0, 0.5))
    with pytest.raises(ValueError, match="positive"):
        tx.MetricsCollector(m, buckets_s=(0.0, 1.0))


def test_bucket_counts_match_the_recorded_values() -> None:
    m = tx.Metrics()
    values = [i * 0.37 for i in range(1, 5000)]  # 0.37 ms .. 1.85 s
    for v in values:
        m.record_histogram("h_ms", v)
    series = m.histogram("h_ms")
    bounds = (0.0001, 0.001, 0.01, 0.1, 0.5, 1.0, 1.8, 2.0)
    counts = bucket_counts(series, bounds)
    exact = [sum(1 for v in values if v / 1000 <= b) for b in bounds]
    for got, want in zip(counts, exact, strict=True):
        assert abs(got - want) <= max(1, want // 64)  # within a bucket's width (2 significant figures: 1/128)
    assert counts[0] == 0 and counts[-1] == len(values)


def test_histogram_names_are_in_seconds() -> None:
    assert histogram_name("tinkex_request_duration_ms") == "tinkex_request_duration_seconds"
    # As the text exposition: only a histogram of milliseconds (x_ms) changes unit; the others keep theirs.
    assert histogram_name("load_milliseconds") == "load_milliseconds"
    assert histogram_name("batch_size") == "batch_size"
    assert histogram_name("9.x_ms") == "_9_x_seconds"


def test_collector_without_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_prometheus(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.partition(".")[0] == "prometheus_client":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "prometheus_client", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_prometheus)
    with pytest.raises(ImportError, match=r"tinkex_trio\[prometheus\]"):
        tx.MetricsCollector(tx.Metrics())


async def test_serve_metrics_over_loopback() -> None:
    m = _store()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(tx.serve_metrics, m)
        assert isinstance(port, int) and port > 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response = await client.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert response.text == m.to_prometheus()
            # The live store, on the same keep-alive connection.
            m.increment("jobs")
            again = await client.get("/metrics?x=1")
            assert "jobs_total 4" in again.text
            head = await client.head("/metrics")
            assert head.status_code == 200 and head.content == b""
            assert int(head.headers["content-length"]) == len(again.content)
            assert (await client.get("/")).status_code == 404
            assert (await client.get("/metricsx")).status_code == 404
            post = await client.post("/metrics", content=b"x" * 100_000)
            assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
            assert (await client.get("/metrics")).status_code == 200  # still served after all that
        nursery.cancel_scope.cancel()


async def test_serve_metrics_survives_bad_clients() -> None:
    m = tx.Metrics()
    m.increment("ok")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(tx.serve_metrics, m)
        async with await trio.open_tcp_stream("127.0.0.1", port) as garbage:
            await garbage.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            reply = b""
            with trio.fail_after(5):
                while chunk := await garbage.receive_some(4096):
                    reply += chunk
        assert reply.startswith(b"HTTP/1.1 400")
        async with await trio.open_tcp_stream("127.0.0.1", port) as dropped:
            await dropped.send_all(b"GET /metr")
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics")
            assert "# TYPE ok_total counter\nok_total 1\n" in response.text
        nursery.cancel_scope.cancel()


async def test_serve_metrics_renders_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    m = tx.Metrics()
    m.increment("x")
    loop_thread: list[bool] = []

    original = tx.Metrics.to_prometheus

    def spy(self: tx.Metrics) -> str:
        try:
            trio.lowlevel.current_trio_token()
            loop_thread.append(True)
        except RuntimeError:
            loop_thread.append(False)
        return original(self)

    monkeypatch.setattr(tx.Metrics, "to_prometheus", spy)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(tx.serve_metrics, m)
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/metrics")).status_code == 200
        nursery.cancel_scope.cancel()
    assert loop_thread == [False]
