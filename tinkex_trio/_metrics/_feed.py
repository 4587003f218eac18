"""The feed from telemetry to metrics: :class:`MetricsFeed` turns a session's telemetry events into metrics inline (a
handler on its :class:`~tinkex_trio._telemetry.TelemetryBus`), and its :meth:`MetricsFeed.run` task emits a
``tinkex.metrics.snapshot`` event every ``config.metrics.snapshot_interval_s``.

Request paths become bounded label values through :func:`path_template`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Final

import trio

from tinkex_trio._endpoints import API_PREFIX, EndpointMatch, match
from tinkex_trio._metrics._series import Counter, Histogram, LabelValue
from tinkex_trio._metrics._store import (
    REQUEST_DURATION_MS,
    REQUEST_ERRORS_TOTAL,
    REQUESTS_TOTAL,
    RETRIES_TOTAL,
    Metrics,
)
from tinkex_trio._telemetry import (
    BATCH_FORWARD_BACKWARD_STOP,
    BATCH_OPTIM_STEP_STOP,
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
    TelemetryEvent,
)

__all__ = ["MetricsFeed", "path_template"]

_QUEUE_STATE_TOTAL: Final = "tinkex_future_queue_state_changes_total"
_HEARTBEATS_TOTAL: Final = "tinkex_session_heartbeats_total"
_SESSION_EXPIRED: Final = "tinkex_session_expired"
_BREAKER_TRANSITIONS_TOTAL: Final = "tinkex_circuit_breaker_transitions_total"
_BREAKER_REJECTED_TOTAL: Final = "tinkex_circuit_breaker_rejected_total"
_BATCHES_TOTAL: Final = "tinkex_batches_total"
_BATCH_DURATION_MS: Final = "tinkex_batch_duration_ms"
_BATCH_SIZE: Final = "tinkex_batch_size"
_DROPPED_TOTAL: Final = "tinkex_telemetry_events_dropped_total"


# --------------------------------------------------------------------------------------------------------------------
# Paths → templates (bounded label cardinality)
# --------------------------------------------------------------------------------------------------------------------

_ID_COLLECTIONS: Final = frozenset({"sessions", "samplers", "training_runs"})
"""The segment after one of these is an id (``sessions/search`` excepted)."""
_NOT_IDS: Final = frozenset({"search"})
_CHECKPOINT_KINDS: Final = frozenset({"weights", "sampler_weights", "external_weights"})
_WORD: Final = re.compile(r"[a-z][a-z_]{0,39}|v[0-9]")
_TEMPLATE_CACHE_MAX: Final = 4096
_template_cache: dict[str, str] = {}


def path_template(path: str) -> str:
    """``/api/v1/sessions/3f2c.../finish`` → ``/api/v1/sessions/{id}/finish``: ids and names out of a request path.

    A path of the protocol's table (`tinkex_trio._endpoints`) gets its endpoint's template with every parameter
    written ``{id}``, except a checkpoint id, written ``<kind>/{name}``. In any other path, the segment after
    ``sessions``, ``samplers`` or ``training_runs`` is ``{id}``; after ``checkpoints/<kind>/`` it is ``{name}``; any
    other segment that is not a lowercase word (``[a-z][a-z_]*``, or ``v1``) is ``{id}`` too. The query string and
    any scheme / host are dropped.
    """
    cached = _template_cache.get(path)
    if cached is not None:
        return cached
    raw = path
    if "://" in raw:
        raw = raw.split("://", 1)[1]
        raw = raw[raw.find("/") :] if "/" in raw else "/"
    segments = [s for s in raw.split("?", 1)[0].split("#", 1)[0].split("/") if s]
    found = match("/" + "/".join(segments))
    result = "/" + "/".join(_endpoint_labels(found) if found is not None else _generic_labels(segments))
    if len(_template_cache) >= _TEMPLATE_CACHE_MAX:
        _template_cache.clear()
    _template_cache[path] = result
    return result


def _endpoint_labels(found: EndpointMatch) -> list[str]:
    out = [API_PREFIX.strip("/")]
    for segment in found.endpoint.segments:
        if not (segment.startswith("{") and segment.endswith("}")):
            out.append(segment)
        elif segment == "{checkpoint_id}":
            kind = found.params["checkpoint_id"].split("/", 1)[0]
            out.append(f"{kind if kind in _CHECKPOINT_KINDS else '{id}'}/{{name}}")
        else:
            out.append("{id}")
    return out


def _generic_labels(segments: list[str]) -> list[str]:
    out: list[str] = []
    previous = ""
    before = ""
    for segment in segments:
        if previous in _ID_COLLECTIONS and segment not in _NOT_IDS:
            template = "{id}"
        elif before == "checkpoints" and previous in _CHECKPOINT_KINDS:
            template = "{name}"
        elif _WORD.fullmatch(segment):
            template = segment
        else:
            template = "{id}"
        out.append(template)
        before, previous = previous, segment
    return out


# --------------------------------------------------------------------------------------------------------------------
# Telemetry → metrics
# --------------------------------------------------------------------------------------------------------------------


def _status_class(metadata: Mapping[str, MetadataValue]) -> str:
    if metadata.get("cancelled"):
        return "cancelled"
    status = metadata.get("status")
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
        return f"{status // 100}xx"
    return "unknown"


def _word(value: MetadataValue, default: str = "unknown") -> str:
    """A metadata value fit for a label: a short identifier-like string (class names, states, pools), else
    ``default``; never an arbitrary string (ids, messages)."""
    if isinstance(value, str) and _LABEL_WORD.fullmatch(value):
        return value
    return default


_LABEL_WORD: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}")
_BREAKER_STATES: Final = frozenset({"closed", "open", "half_open"})
_HANDLES_MAX: Final = 4096


class MetricsFeed:
    """Turns a :class:`~tinkex_trio._telemetry.TelemetryBus`'s events into metrics in a :class:`Metrics` store.

    =====================================  =====================================================================
    event                                  metrics
    =====================================  =====================================================================
    ``tinkex.http.request.stop``           histogram ``tinkex_request_duration_ms`` and counter
                                           ``tinkex_requests_total``, labels ``method``, ``endpoint`` (the path
                                           template), ``pool``, ``status_class`` (``2xx`` ... ``5xx``, or
                                           ``cancelled``)
    ``tinkex.http.request.exception``      counter ``tinkex_request_errors_total`` (``method``, ``endpoint``,
                                           ``pool``, ``kind``: no HTTP answer, e.g. a connection error)
    ``tinkex.retry``                       counter ``tinkex_retries_total`` (``endpoint``, ``reason``, ``error``)
    ``tinkex.future.queue_state``          counter ``tinkex_future_queue_state_changes_total``
                                           (``request_type``, ``queue_state``)
    ``tinkex.session.heartbeat``           counter ``tinkex_session_heartbeats_total`` (``ok``); gauge
                                           ``tinkex_session_expired`` set to 1 on a 410
    ``tinkex.circuit_breaker.*``           counters ``tinkex_circuit_breaker_transitions_total`` (``to``,
                                           ``reason``) and
                                           ``tinkex_circuit_breaker_rejected_total`` (``method``, ``endpoint``,
                                           ``pool``); the breaker supervisor sets the gauge
                                           ``tinkex_circuit_breaker_state`` (0 closed, 1 half_open, 2 open)
    ``tinkex.batch.*.stop``                counter ``tinkex_batches_total`` (``op``); histograms
                                           ``tinkex_batch_duration_ms`` and ``tinkex_batch_size`` (the
                                           ``items`` of the call)
    =====================================  =====================================================================

    Labels never carry ids, keys, paths with ids or free text: the path is reduced by :func:`path_template`, the
    other values must be short identifier-like words (else ``unknown``).

    Two ways to receive the events. ``attach(bus)`` handles them inline, in the bus's ``emit`` (~1-2 µs per
    request, exact under any load): for a store fed by hand, and for tests. ``attach(bus, channel_size=n)`` is the
    metrics task of a session (DESIGN §2): the events reach :meth:`run` over a bounded memory channel, so a request
    never waits on the metrics; an event that does not fit is dropped by the bus and counted in
    ``tinkex_telemetry_events_dropped_total``. :meth:`run` handles what the channel holds in one go per wake-up,
    owns the snapshots, and handles what is left in the channel when it ends (the session's close), so no event that
    was delivered is lost.
    """

    HANDLER_ID: Final = "tinkex_trio.metrics"
    EVENTS: Final = (
        HTTP_REQUEST_STOP,
        HTTP_REQUEST_EXCEPTION,
        RETRY,
        FUTURE_QUEUE_STATE,
        SESSION_HEARTBEAT,
        CIRCUIT_BREAKER_STATE_CHANGE,
        CIRCUIT_BREAKER_REJECTED,
        BATCH_FORWARD_BACKWARD_STOP,
        BATCH_OPTIM_STEP_STOP,
    )

    def __init__(self, metrics: Metrics, *, snapshot_interval_s: float | None = None) -> None:
        interval = metrics.config.snapshot_interval_s if snapshot_interval_s is None else snapshot_interval_s
        if not interval > 0:
            raise ValueError(f"snapshot_interval_s must be > 0, got {interval!r}")
        self.metrics = metrics
        self.snapshot_interval_s = interval
        self._bus: TelemetryBus | None = None
        self._rx: trio.MemoryReceiveChannel[TelemetryEvent] | None = None
        self._dropped_seen = 0
        self._generation = metrics.generation
        self._request_handles: dict[tuple[object, ...], tuple[Histogram, Counter]] = {}
        self._dispatch: dict[str, Callable[[TelemetryEvent], None]] = {
            HTTP_REQUEST_STOP: self._on_request_stop,
            HTTP_REQUEST_EXCEPTION: self._on_request_exception,
            RETRY: self._on_retry,
            FUTURE_QUEUE_STATE: self._on_queue_state,
            SESSION_HEARTBEAT: self._on_heartbeat,
            CIRCUIT_BREAKER_STATE_CHANGE: self._on_breaker_change,
            CIRCUIT_BREAKER_REJECTED: self._on_breaker_rejected,
            BATCH_FORWARD_BACKWARD_STOP: self._on_batch_stop,
            BATCH_OPTIM_STEP_STOP: self._on_batch_stop,
        }

    def attach(self, bus: TelemetryBus, *, channel_size: int | None = None) -> MetricsFeed:
        """Start receiving the bus's events: inline (handler ``MetricsFeed.HANDLER_ID``), or with ``channel_size``
        over a memory channel of that many events that :meth:`run` consumes. Returns self."""
        if self._bus is not None:
            raise RuntimeError("this MetricsFeed is already attached")
        if channel_size is None:
            bus.attach(self.HANDLER_ID, self.EVENTS, self.handle)
        else:
            self._rx = bus.subscribe(max_buffer=channel_size, events=self.EVENTS)
            # A read of the store applies what the channel holds first: reads see every delivered event.
            self.metrics.add_pending(self._handle_buffered)
        self._bus = bus
        return self

    def detach(self) -> None:
        """Stop receiving events (the ones a channel still holds are handled first). Idempotent."""
        if self._bus is not None:
            if self._rx is not None:
                self.metrics.remove_pending(self._handle_buffered)
                self._handle_buffered()
                self._count_dropped()
                self._bus.unsubscribe(self._rx)
                self._rx = None
            else:
                self._bus.detach(self.HANDLER_ID)
            self._bus = None

    def _handle_buffered(self) -> None:
        rx = self._rx
        if rx is None:
            return
        while True:
            try:
                event = rx.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            self.handle(event)

    def _count_dropped(self) -> None:
        if self._bus is None or self._rx is None:
            return
        dropped = self._bus.dropped_for(self._rx)
        if dropped > self._dropped_seen:
            self.metrics.increment(_DROPPED_TOTAL, dropped - self._dropped_seen)
            self._dropped_seen = dropped

    def handle(self, event: TelemetryEvent) -> None:
        """Update the metrics for one event (events it does not know are ignored)."""
        handler = self._dispatch.get(event.name)
        if handler is not None:
            handler(event)

    async def run(self) -> None:
        """Emit ``tinkex.metrics.snapshot`` (measurements: :meth:`Metrics.snapshot`) on the attached bus every
        ``snapshot_interval_s`` (default ``metrics.config.snapshot_interval_s``) of trio time, until cancelled;
        then detach. The session runs it in its nursery, for the life of the session."""
        interval_s = self.snapshot_interval_s
        try:
            deadline = trio.current_time() + interval_s
            while True:  # bounded by the session: cancelled with its nursery
                rx = self._rx
                if rx is None:
                    await trio.sleep_until(deadline)
                else:
                    with trio.move_on_at(deadline):
                        while True:  # bounded by the deadline
                            self.handle(await rx.receive())
                            self._handle_buffered()  # all that arrived meanwhile, in one wake-up
                    self._count_dropped()
                now = trio.current_time()
                # Fixed rate; after a stall, skip the missed ticks instead of bursting.
                deadline = max(deadline + interval_s, now + interval_s / 2)
                bus = self._bus
                if bus is not None and bus.has_listeners(METRICS_SNAPSHOT):
                    bus.emit(METRICS_SNAPSHOT, self.metrics.snapshot(), {"interval_s": interval_s}, time=now)
        finally:
            self.detach()

    # -- handlers ---------------------------------------------------------------------------------------------------

    def _fresh(self) -> None:
        if self._generation != self.metrics.generation:  # the store was reset: cached series are gone
            self._generation = self.metrics.generation
            self._request_handles.clear()

    def _on_request_stop(self, event: TelemetryEvent) -> None:
        metadata = event.metadata
        self._fresh()
        key = (
            metadata.get("method"),
            metadata.get("path"),
            metadata.get("pool"),
            metadata.get("status"),
            metadata.get("cancelled"),
        )
        handles = self._request_handles.get(key)
        if handles is None:
            labels = self._request_labels(metadata)
            labels["status_class"] = _status_class(metadata)
            handles = (
                self.metrics.histogram(REQUEST_DURATION_MS, labels),
                self.metrics.counter(REQUESTS_TOTAL, labels),
            )
            if len(self._request_handles) >= _HANDLES_MAX:
                self._request_handles.clear()
            self._request_handles[key] = handles
        duration = event.measurements.get("duration_ms")
        if duration is not None:
            handles[0].record(duration)
        handles[1].value += 1

    @staticmethod
    def _request_labels(metadata: Mapping[str, MetadataValue]) -> dict[str, LabelValue]:
        path = metadata.get("path")
        return {
            "method": _word(metadata.get("method")),
            "endpoint": path_template(path) if isinstance(path, str) else "unknown",
            "pool": _word(metadata.get("pool")),
        }

    def _on_request_exception(self, event: TelemetryEvent) -> None:
        labels = self._request_labels(event.metadata)
        labels["kind"] = _word(event.metadata.get("kind"))
        self.metrics.counter(REQUEST_ERRORS_TOTAL, labels).value += 1

    def _on_retry(self, event: TelemetryEvent) -> None:
        metadata = event.metadata
        path = metadata.get("path")
        # Transport retries carry the path; the sampler's own retries name the SDK method instead.
        endpoint = path_template(path) if isinstance(path, str) else _word(metadata.get("method"))
        labels: dict[str, LabelValue] = {
            "endpoint": endpoint,
            "reason": _word(metadata.get("reason")),
            "error": _word(metadata.get("error")),
        }
        self.metrics.counter(RETRIES_TOTAL, labels).value += 1

    def _on_queue_state(self, event: TelemetryEvent) -> None:
        # A counter of transitions, not a gauge of "futures in each state": a future that completes sends no event,
        # so such a gauge would go stale.
        metadata = event.metadata
        labels: dict[str, LabelValue] = {
            "request_type": _word(metadata.get("request_type")),
            "queue_state": _word(metadata.get("queue_state")),
        }
        self.metrics.counter(_QUEUE_STATE_TOTAL, labels).value += 1

    def _on_heartbeat(self, event: TelemetryEvent) -> None:
        ok = event.metadata.get("ok") is True
        self.metrics.counter(_HEARTBEATS_TOTAL, {"ok": ok}).value += 1
        if event.metadata.get("expired") is True:
            self.metrics.gauge(_SESSION_EXPIRED).value = 1.0

    def _on_breaker_change(self, event: TelemetryEvent) -> None:
        to = event.metadata.get("to")
        state = to if isinstance(to, str) and to in _BREAKER_STATES else "unknown"
        # The state gauge (tinkex_circuit_breaker_state) is the breaker supervisor's: it sets it on every transition.
        reason = _word(event.metadata.get("reason"))
        self.metrics.counter(_BREAKER_TRANSITIONS_TOTAL, {"to": state, "reason": reason}).value += 1

    def _on_breaker_rejected(self, event: TelemetryEvent) -> None:
        self.metrics.counter(_BREAKER_REJECTED_TOTAL, self._request_labels(event.metadata)).value += 1

    def _on_batch_stop(self, event: TelemetryEvent) -> None:
        op = "forward_backward" if event.name == BATCH_FORWARD_BACKWARD_STOP else "optim_step"
        labels: dict[str, LabelValue] = {"op": op}
        self.metrics.counter(_BATCHES_TOTAL, labels).value += 1
        measurements = event.measurements
        duration = measurements.get("duration_ms")
        if duration is not None:
            self.metrics.histogram(_BATCH_DURATION_MS, labels).record(duration)
        items = measurements.get("items")
        if items is not None:
            self.metrics.histogram(_BATCH_SIZE, labels).record(items)
