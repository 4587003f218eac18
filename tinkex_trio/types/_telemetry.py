"""Telemetry messages (protocol §10). Events are a tagged union on their ``event`` field."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, TypeAlias

from ._base import WireStruct, sent

__all__ = [
    "EventType",
    "GenericEvent",
    "SessionEndEvent",
    "SessionStartEvent",
    "Severity",
    "TelemetryBatch",
    "TelemetryEvent",
    "TelemetryResponse",
    "TelemetrySendRequest",
    "UnhandledExceptionEvent",
]

Severity: TypeAlias = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
EventType: TypeAlias = Literal["SESSION_START", "SESSION_END", "UNHANDLED_EXCEPTION", "GENERIC_EVENT"]


class SessionStartEvent(WireStruct, tag_field="event", tag="SESSION_START"):
    event_id: str
    event_session_index: int
    severity: Severity
    timestamp: datetime

    @property
    def event(self) -> EventType:
        return "SESSION_START"


class SessionEndEvent(WireStruct, tag_field="event", tag="SESSION_END"):
    """``duration`` is a string (the SDK sends ``str(timedelta)``, e.g. ``"0:01:02.5"``)."""

    event_id: str
    event_session_index: int
    severity: Severity
    timestamp: datetime
    duration: str

    @property
    def event(self) -> EventType:
        return "SESSION_END"


class UnhandledExceptionEvent(WireStruct, tag_field="event", tag="UNHANDLED_EXCEPTION"):
    event_id: str
    event_session_index: int
    severity: Severity
    timestamp: datetime
    error_type: str
    error_message: str
    traceback: str | None = None

    @property
    def event(self) -> EventType:
        return "UNHANDLED_EXCEPTION"


class GenericEvent(WireStruct, tag_field="event", tag="GENERIC_EVENT"):
    event_id: str
    event_session_index: int
    severity: Severity
    timestamp: datetime
    event_name: str
    event_data: dict[str, Any] = sent({})

    @property
    def event(self) -> EventType:
        return "GENERIC_EVENT"


TelemetryEvent: TypeAlias = SessionStartEvent | SessionEndEvent | UnhandledExceptionEvent | GenericEvent


class TelemetryBatch(WireStruct):
    """``POST /api/v1/telemetry``: at most 100 events; ``session_id`` is ``"sessionless-<uuid4>"`` without a
    session."""

    events: list[TelemetryEvent]
    platform: str
    sdk_version: str
    session_id: str
    process_uuid: str


#: The official SDK's name for the same body.
TelemetrySendRequest = TelemetryBatch


class TelemetryResponse(WireStruct):
    status: Literal["accepted"]
