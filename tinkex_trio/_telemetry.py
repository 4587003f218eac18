"""Telemetry events and the in-process event bus.

Events are named with dots (``tinkex.http.request.stop``) and carry numeric ``measurements``, scalar ``metadata``
and a ``time`` from the bus's clock. Two ways to receive them:

* **Handlers** (:meth:`TelemetryBus.attach`): plain functions called inline, synchronously, by
  :meth:`~TelemetryBus.emit`. Keep them cheap: they run on the request path. A handler that raises is logged
  and detached; it never breaks the request that emitted the event.
* **Subscriptions** (:meth:`TelemetryBus.subscribe`): a trio memory channel. The emitter never blocks: when the
  channel's buffer is full the event is dropped and counted (:attr:`TelemetryBus.dropped`).

Secrets: emitters must never put the API key in metadata. As a safety net, the bus drops metadata entries whose
name looks like a credential header (``api_key``, ``x-api-key``, ``authorization``, ...) and replaces anything in a
string value that looks like a Tinker key or a JWT with ``<redacted>``.
"""

from __future__ import annotations

import logging
import time as _time
from collections.abc import Callable, Generator, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio

from tinkex_trio.errors import redact

__all__ = [
    "ALL_EVENTS",
    "BATCH_FORWARD_BACKWARD",
    "BATCH_FORWARD_BACKWARD_START",
    "BATCH_FORWARD_BACKWARD_STOP",
    "BATCH_OPTIM_STEP",
    "BATCH_OPTIM_STEP_START",
    "BATCH_OPTIM_STEP_STOP",
    "CIRCUIT_BREAKER_REJECTED",
    "CIRCUIT_BREAKER_STATE_CHANGE",
    "FUTURE_QUEUE_STATE",
    "HTTP_REQUEST",
    "HTTP_REQUEST_EXCEPTION",
    "HTTP_REQUEST_START",
    "HTTP_REQUEST_STOP",
    "METRICS_SNAPSHOT",
    "RETRY",
    "SESSION_HEARTBEAT",
    "Handler",
    "MetadataValue",
    "TelemetryBus",
    "TelemetryEvent",
]

logger = logging.getLogger("tinkex_trio.telemetry")

# --------------------------------------------------------------------------------------------------------------------
# Event names (DESIGN §4)
# --------------------------------------------------------------------------------------------------------------------

HTTP_REQUEST = "tinkex.http.request"
"""The span prefix of one HTTP attempt (``.start``, ``.stop``, ``.exception``)."""
HTTP_REQUEST_START = "tinkex.http.request.start"
HTTP_REQUEST_STOP = "tinkex.http.request.stop"
HTTP_REQUEST_EXCEPTION = "tinkex.http.request.exception"
CIRCUIT_BREAKER_STATE_CHANGE = "tinkex.circuit_breaker.state_change"
CIRCUIT_BREAKER_REJECTED = "tinkex.circuit_breaker.rejected"
BATCH_FORWARD_BACKWARD = "tinkex.batch.forward_backward"
BATCH_OPTIM_STEP = "tinkex.batch.optim_step"
BATCH_FORWARD_BACKWARD_START = "tinkex.batch.forward_backward.start"
BATCH_FORWARD_BACKWARD_STOP = "tinkex.batch.forward_backward.stop"
BATCH_OPTIM_STEP_START = "tinkex.batch.optim_step.start"
BATCH_OPTIM_STEP_STOP = "tinkex.batch.optim_step.stop"
RETRY = "tinkex.retry"
FUTURE_QUEUE_STATE = "tinkex.future.queue_state"
SESSION_HEARTBEAT = "tinkex.session.heartbeat"
METRICS_SNAPSHOT = "tinkex.metrics.snapshot"

ALL_EVENTS: frozenset[str] = frozenset(
    {
        HTTP_REQUEST_START,
        HTTP_REQUEST_STOP,
        HTTP_REQUEST_EXCEPTION,
        CIRCUIT_BREAKER_STATE_CHANGE,
        CIRCUIT_BREAKER_REJECTED,
        BATCH_FORWARD_BACKWARD_START,
        BATCH_FORWARD_BACKWARD_STOP,
        BATCH_OPTIM_STEP_START,
        BATCH_OPTIM_STEP_STOP,
        RETRY,
        FUTURE_QUEUE_STATE,
        SESSION_HEARTBEAT,
        METRICS_SNAPSHOT,
    }
)

MetadataValue = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class TelemetryEvent:
    """One event. ``measurements`` are numbers (durations in ms, counts, sizes); ``metadata`` are labels.

    ``time`` is on the bus's clock (``trio.current_time()`` inside a session). The dicts are the bus's own copies,
    but every handler and subscriber of one emit sees the same event object: treat them as read-only.
    """

    name: str
    measurements: dict[str, float] = field(default_factory=lambda: dict[str, float]())
    metadata: dict[str, MetadataValue] = field(default_factory=lambda: dict[str, MetadataValue]())
    time: float = 0.0


Handler = Callable[[TelemetryEvent], None]

# Metadata names that would carry a credential: dropped, whatever their value.
_SECRET_NAMES = frozenset({"api_key", "apikey", "x-api-key", "x_api_key", "authorization", "token", "jwt"})


def _scrub(metadata: Mapping[str, MetadataValue]) -> dict[str, MetadataValue]:
    clean: dict[str, MetadataValue] = {}
    for name, value in metadata.items():
        if name.lower() in _SECRET_NAMES:
            continue
        if isinstance(value, str) and ("tml-" in value or "eyJ" in value):
            value = redact(value)
        clean[name] = value
    return clean


class _Pattern:
    """What a handler or subscription listens to: exact names and/or prefixes."""

    __slots__ = ("exact", "prefixes")

    def __init__(self, events: str | Iterable[str]) -> None:
        specs = [events] if isinstance(events, str) else list(events)
        if not specs:
            raise ValueError("events must name at least one event or prefix")
        exact: set[str] = set()
        prefixes: list[str] = []
        for spec in specs:
            if not spec:
                raise ValueError("an event name or prefix must not be empty")
            if spec == "*":
                prefixes.append("")
            elif spec.endswith(".*"):
                prefixes.append(spec[:-1])  # "tinkex.http.*" -> "tinkex.http."
            elif spec.endswith("."):
                prefixes.append(spec)
            else:
                exact.add(spec)
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)

    def matches(self, name: str) -> bool:
        return name in self.exact or any(name.startswith(p) for p in self.prefixes)


@dataclass(slots=True)
class _Attached:
    handler_id: str
    pattern: _Pattern
    handler: Handler


@dataclass(slots=True, eq=False)
class _Subscription:
    pattern: _Pattern
    send: trio.MemorySendChannel[TelemetryEvent]
    receive: trio.MemoryReceiveChannel[TelemetryEvent]
    dropped: int = 0


class TelemetryBus:
    """Fan-out of telemetry events to handlers (inline) and subscriptions (trio memory channels).

    ``clock`` gives each event's ``time``; the session passes ``trio.current_time``. The default,
    ``time.monotonic``, lets the bus run outside trio.
    """

    def __init__(self, *, clock: Callable[[], float] = _time.monotonic) -> None:
        self._clock = clock
        self._handlers: dict[str, _Attached] = {}
        self._subscriptions: list[_Subscription] = []
        self._routes: dict[str, tuple[list[_Attached], list[_Subscription]]] = {}
        self._dropped = 0

    # -- handlers ---------------------------------------------------------------------------------------------------

    def attach(self, handler_id: str, events: str | Iterable[str], handler: Handler) -> None:
        """Call ``handler(event)`` for each matching event, inline in :meth:`emit`.

        ``events`` is an event name, a prefix (ending in ``.`` or ``.*``, e.g. ``"tinkex.http."``), ``"*"`` for
        everything, or an iterable of those. ``handler_id`` must be unused (:class:`ValueError` otherwise).
        """
        if handler_id in self._handlers:
            raise ValueError(f"a telemetry handler with id {handler_id!r} is already attached")
        self._handlers[handler_id] = _Attached(handler_id, _Pattern(events), handler)
        self._routes.clear()

    def detach(self, handler_id: str) -> bool:
        """Remove a handler. Returns whether it was attached."""
        removed = self._handlers.pop(handler_id, None) is not None
        if removed:
            self._routes.clear()
        return removed

    def handler_ids(self) -> list[str]:
        """The ids of the attached handlers, in attach order."""
        return list(self._handlers)

    # -- subscriptions ----------------------------------------------------------------------------------------------

    def subscribe(
        self, max_buffer: int = 1000, events: str | Iterable[str] = "*"
    ) -> trio.MemoryReceiveChannel[TelemetryEvent]:
        """A channel receiving every matching event (see :meth:`attach` for ``events``).

        The emitter never waits: an event that does not fit in the ``max_buffer`` slots is dropped and counted.
        Closing the receive channel (or :meth:`unsubscribe`) ends the subscription.
        """
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be >= 1, got {max_buffer}")
        pattern = _Pattern(events)
        send, receive = trio.open_memory_channel[TelemetryEvent](max_buffer)
        self._subscriptions.append(_Subscription(pattern, send, receive))
        self._routes.clear()
        return receive

    def _find(self, receive: trio.MemoryReceiveChannel[TelemetryEvent]) -> _Subscription | None:
        return next((s for s in self._subscriptions if s.receive is receive), None)

    def unsubscribe(self, receive: trio.MemoryReceiveChannel[TelemetryEvent]) -> bool:
        """End a subscription: its receiver sees end-of-channel once the buffered events are read.
        Returns whether it was subscribed."""
        sub = self._find(receive)
        if sub is None:
            return False
        self._remove_subscription(sub)
        return True

    def dropped_for(self, receive: trio.MemoryReceiveChannel[TelemetryEvent]) -> int:
        """Events dropped for a (current) subscription because its buffer was full."""
        sub = self._find(receive)
        return sub.dropped if sub is not None else 0

    def subscription_count(self) -> int:
        """The number of live subscriptions."""
        return len(self._subscriptions)

    @property
    def dropped(self) -> int:
        """Events dropped over all subscriptions because a buffer was full."""
        return self._dropped

    def _remove_subscription(self, sub: _Subscription) -> None:
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)
            self._routes.clear()
        sub.send.close()

    # -- emitting ---------------------------------------------------------------------------------------------------

    def _route(self, name: str) -> tuple[list[_Attached], list[_Subscription]]:
        route = self._routes.get(name)
        if route is None:
            route = (
                [a for a in self._handlers.values() if a.pattern.matches(name)],
                [s for s in self._subscriptions if s.pattern.matches(name)],
            )
            self._routes[name] = route
        return route

    def has_listeners(self, name: str) -> bool:
        """Whether an event of this name would reach anyone (lets emitters skip building costly metadata)."""
        handlers, subs = self._route(name)
        return bool(handlers or subs)

    def emit(
        self,
        name: str,
        measurements: Mapping[str, float] | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
        *,
        time: float | None = None,
    ) -> None:
        """Deliver an event to every matching handler and subscription. Never raises because of a listener."""
        handlers, subs = self._route(name)
        if not handlers and not subs:
            return
        event = TelemetryEvent(
            name,
            dict(measurements) if measurements else {},
            _scrub(metadata) if metadata else {},
            self._clock() if time is None else time,
        )
        for attached in handlers:
            try:
                attached.handler(event)
            except Exception:
                logger.exception("telemetry handler %r raised on %s and was detached", attached.handler_id, event.name)
                if self._handlers.get(attached.handler_id) is attached:
                    self.detach(attached.handler_id)
        for sub in subs:
            try:
                sub.send.send_nowait(event)
            except trio.WouldBlock:
                sub.dropped += 1
                self._dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The receiver went away: the subscription is over.
                self._remove_subscription(sub)

    @contextmanager
    def span(
        self,
        prefix: str,
        metadata: Mapping[str, MetadataValue] | None = None,
        *,
        measurements: Mapping[str, float] | None = None,
        outcome: bool = False,
    ) -> Generator[dict[str, MetadataValue]]:
        """Emit ``{prefix}.start`` now and ``{prefix}.stop`` (or ``{prefix}.exception``) at the end of the block.

        Both carry ``measurements`` (the start event adds ``system_time``, the end event ``duration_ms``). The
        yielded dict is extra metadata the block may fill in for the end event (e.g. a status code). How the block
        ended:

        * without ``outcome`` (request spans): an ``Exception`` gives ``.exception`` with ``kind`` (the class name);
          cancellation (any other ``BaseException``) gives ``.stop`` with ``cancelled=True``: it is not a failure;
        * with ``outcome`` (batch spans, whose consumers want one end event): always ``.stop``, with the metadata
          ``outcome``: ``"ok"``, ``"error"`` (and ``error``, the class name) or ``"cancelled"``.

        The exception is re-raised untouched.
        """
        base: dict[str, MetadataValue] = dict(metadata) if metadata else {}
        counts: dict[str, float] = dict(measurements) if measurements else {}
        start = self._clock()
        self.emit(f"{prefix}.start", {**counts, "system_time": _time.time()}, base, time=start)
        extra: dict[str, MetadataValue] = {}
        ending: dict[str, MetadataValue] = {"outcome": "ok"} if outcome else {}
        name = f"{prefix}.stop"
        try:
            yield extra
        except Exception as exc:
            if outcome:
                ending = {"outcome": "error", "error": type(exc).__name__}
            else:
                name = f"{prefix}.exception"
                ending = {"kind": type(exc).__name__}
            raise
        except BaseException:
            ending = {"outcome": "cancelled"} if outcome else {"cancelled": True}
            raise
        finally:
            end = self._clock()
            self.emit(name, {**counts, "duration_ms": (end - start) * 1000.0}, {**base, **extra, **ending}, time=end)
