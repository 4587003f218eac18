"""Exact merging of metrics stores across processes: :func:`encode` a store into a versioned msgpack blob,
:func:`merge` blobs into one store (what ``Metrics.encode`` / ``Metrics.merge`` call).

The merge rules:

* a counter is the sum of its values;
* a gauge is a point-in-time reading: it takes the value of the blob **encoded last** (by the wall-clock time the
  blob records, ``time.time()`` at :func:`encode`; on a tie, the later blob in the argument order) among the
  blobs that have that series;
* a histogram is merged bucket-exactly (its non-empty buckets travel as (index, count) pairs) with its exact
  count, sum, sum of squares, min, max, and its clamped and dropped counts: the merge of stores that each
  recorded part of the values has the same statistics as one store that recorded them all. Every blob must
  have the same histogram configuration (``histogram_max_ms``, ``significant_figures``).

Label sets are kept as they are. The merged store has the blobs' histogram configuration and the largest of their
``max_series`` (label sets beyond it go to the ``overflow="true"`` series, as in any store).
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Iterable, Mapping
from typing import Final, Protocol, TypeVar

import msgspec

from tinkex_trio._config import MetricsConfig
from tinkex_trio._metrics._series import Counter, Gauge, Histogram, Kind, LabelKey, Labels, Series

__all__ = ["FORMAT", "VERSION", "encode", "merge"]

FORMAT: Final = "tinkex_trio.metrics"
"""The ``format`` field of every blob: anything else is not a metrics blob."""
VERSION: Final = 2
"""The blob version this module writes and the only one it reads (1 held HdrHistogram encodings)."""


class _Head(msgspec.Struct):
    """The fields every version has: read first, to refuse a blob of another format or version with a clear error."""

    format: str = ""
    version: int = 0


class _Scalar(msgspec.Struct, frozen=True):
    name: str
    labels: list[tuple[str, str]]
    value: int | float


class _HistogramData(msgspec.Struct, frozen=True):
    name: str
    labels: list[tuple[str, str]]
    buckets: list[tuple[int, int]]
    """(bucket index, count) of the non-empty buckets, in order (:meth:`Histogram.buckets`)."""
    count: int
    sum: int
    squares: str
    """The sum of squares, in decimal: it outgrows 64 bits."""
    min: int
    max: int
    clamped: int
    dropped: int


class _Envelope(msgspec.Struct, frozen=True):
    format: str
    version: int
    time: float
    """``time.time()`` when encoded: orders the blobs for the gauges."""
    histogram_max_ms: int
    significant_figures: int
    max_series: int
    counters: list[_Scalar]
    gauges: list[_Scalar]
    histograms: list[_HistogramData]


_ENCODER: Final = msgspec.msgpack.Encoder()
_HEAD_DECODER: Final = msgspec.msgpack.Decoder(_Head)
_DECODER: Final = msgspec.msgpack.Decoder(_Envelope)


def encode(
    config: MetricsConfig,
    max_series: int,
    families: Iterable[tuple[str, Kind, Mapping[LabelKey, Series]]],
    *,
    now: float | None = None,
) -> bytes:
    """The blob of a store's ``families`` (name, kind, series by label set)."""
    counters: list[_Scalar] = []
    gauges: list[_Scalar] = []
    histograms: list[_HistogramData] = []
    for name, _kind, series_by_key in families:
        for key, series in series_by_key.items():
            labels = list(key)
            if isinstance(series, Histogram):
                histograms.append(
                    _HistogramData(
                        name=name,
                        labels=labels,
                        buckets=list(series.buckets()),
                        count=series.count,
                        sum=series.sum,
                        squares=str(series.squares),
                        min=series.min,
                        max=series.max,
                        clamped=series.clamped,
                        dropped=series.dropped,
                    )
                )
            elif isinstance(series, Counter):
                counters.append(_Scalar(name, labels, series.value))
            else:
                gauges.append(_Scalar(name, labels, series.value))
    envelope = _Envelope(
        format=FORMAT,
        version=VERSION,
        time=_time.time() if now is None else now,
        histogram_max_ms=config.histogram_max_ms,
        significant_figures=config.significant_figures,
        max_series=max_series,
        counters=counters,
        gauges=gauges,
        histograms=histograms,
    )
    return _ENCODER.encode(envelope)


def decode(blob: bytes) -> _Envelope:
    """A blob's envelope (``ValueError`` if it is not a metrics blob of :data:`VERSION`)."""
    try:
        head = _HEAD_DECODER.decode(blob)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a tinkex_trio metrics blob (see Metrics.encode): {exc}") from None
    if head.format != FORMAT:
        raise ValueError(f"not a tinkex_trio metrics blob (see Metrics.encode): format {head.format!r}")
    if head.version != VERSION:
        raise ValueError(
            f"unsupported tinkex_trio metrics blob version {head.version} (this version of tinkex_trio reads "
            f"version {VERSION} only): encode and merge with the same tinkex_trio version"
        )
    try:
        return _DECODER.decode(blob)
    except msgspec.DecodeError as exc:
        raise ValueError(f"corrupt tinkex_trio metrics blob (version {VERSION}): {exc}") from None


class _Store(Protocol):
    """The part of ``Metrics`` that a merge fills."""

    def counter(self, name: str, labels: Labels | None = None) -> Counter: ...
    def gauge(self, name: str, labels: Labels | None = None) -> Gauge: ...
    def histogram(self, name: str, labels: Labels | None = None) -> Histogram: ...


S = TypeVar("S", bound=_Store)


def merge(blobs: Iterable[bytes], make: Callable[[MetricsConfig | None, int | None], S]) -> S:
    """One store (made by ``make(config, max_series)``) holding the merge of ``blobs`` (see the module docstring).

    No blobs: an empty store with ``make(None, None)``'s defaults.
    """
    envelopes = [decode(blob) for blob in blobs]
    if not envelopes:
        return make(None, None)
    first = envelopes[0]
    for envelope in envelopes[1:]:
        if (envelope.histogram_max_ms, envelope.significant_figures) != (
            first.histogram_max_ms,
            first.significant_figures,
        ):
            raise ValueError(
                "cannot merge metrics with different histogram configurations: "
                f"histogram_max_ms={first.histogram_max_ms}, significant_figures={first.significant_figures} and "
                f"histogram_max_ms={envelope.histogram_max_ms}, significant_figures={envelope.significant_figures}"
            )
    config = MetricsConfig(histogram_max_ms=first.histogram_max_ms, significant_figures=first.significant_figures)
    store = make(config, max(e.max_series for e in envelopes))
    # Gauges: the blob encoded last wins (stable sort: on a tie, the later blob).
    for envelope in sorted(envelopes, key=lambda e: e.time):
        for gauge in envelope.gauges:
            store.gauge(gauge.name, dict(gauge.labels)).set(gauge.value)
    for envelope in envelopes:
        for counter in envelope.counters:
            store.counter(counter.name, dict(counter.labels)).inc(counter.value)
        for data in envelope.histograms:
            _add_histogram(store.histogram(data.name, dict(data.labels)), data)
    return store


def _add_histogram(series: Histogram, data: _HistogramData) -> None:
    try:
        squares = int(data.squares)
    except ValueError:
        raise ValueError(f"corrupt histogram {data.name!r} in a tinkex_trio metrics blob: sum of squares") from None
    if sum(count for _, count in data.buckets) != data.count:
        raise ValueError(f"corrupt histogram {data.name!r} in a tinkex_trio metrics blob: count mismatch")
    if data.count:
        if not 0 <= data.min <= data.max <= series.max_units:
            raise ValueError(f"corrupt histogram {data.name!r} in a tinkex_trio metrics blob: min / max")
        for index, count in data.buckets:
            try:
                series.add_bucket(index, count)
            except ValueError as exc:
                raise ValueError(f"corrupt histogram {data.name!r} in a tinkex_trio metrics blob: {exc}") from None
        series.sum += data.sum
        series.squares += squares
        series.min = min(series.min, data.min)
        series.max = max(series.max, data.max)
    series.clamped += data.clamped
    series.dropped += data.dropped
