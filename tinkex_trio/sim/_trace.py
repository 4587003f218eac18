"""Session traces, the content of ``GET /sessions/{id}/trace_export``: what they record and how they are written.

Every future of a session's training models and sampling sessions leaves a `TraceSpan` once it finishes. An export
writes them in the Trace Event Format (Chrome's JSON trace format), which https://ui.perfetto.dev opens: one track
per model or sampling session, one slice per request from the moment it started running to the moment it finished,
with its request id, outcome and time spent queued. The Tinker service writes Perfetto's own protobuf format
(``.pftrace``) from far more detail; this is the simulator's stand-in, built from what it knows.

Pure: no I/O, no clock (times are trio times recorded by the caller).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["TraceExport", "TraceSpan", "render_trace"]


@dataclass(frozen=True, slots=True)
class TraceSpan:
    """One finished request: ``name`` is its request type (``ForwardBackward``, ``Sample``, ...), ``lane`` the
    training model or sampling session it ran on; times are trio times in seconds."""

    name: str
    lane: str
    request_id: str
    queued_at: float
    started_at: float
    finished_at: float
    status: str


@dataclass(slots=True)
class TraceExport:
    """One export job of a session: the trace as it stood when the job started, ready at ``ready_at`` (trio time).

    ``export_id`` is unguessable: the download URL holds it, and needs no credentials, as a signed URL would not."""

    export_id: str
    spans_seen: int
    """How many spans the session had recorded when the job started (a later export with more is rebuilt)."""
    ready_at: float
    data: bytes
    error: str | None = None
    delivered: bool = False
    """Whether a poll has been answered with this job's outcome (only then is a stale job rebuilt, so that a
    session that keeps working still gets its trace)."""


def render_trace(session_id: str, spans: Sequence[TraceSpan]) -> bytes:
    """The Trace Event Format JSON of ``spans``: times in microseconds from the first request's arrival."""
    origin = min((s.queued_at for s in spans), default=0.0)
    tracks: dict[str, int] = {}
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": f"session {session_id}"}}
    ]
    for span in spans:
        tid = tracks.get(span.lane)
        if tid is None:
            tid = tracks[span.lane] = len(tracks) + 1
            events.append({"ph": "M", "name": "thread_name", "pid": 1, "tid": tid, "args": {"name": span.lane}})
        events.append(
            {
                "ph": "X",
                "name": span.name,
                "cat": "sampling" if span.name == "Sample" else "training",
                "pid": 1,
                "tid": tid,
                "ts": round((span.started_at - origin) * 1e6, 3),
                "dur": round((span.finished_at - span.started_at) * 1e6, 3),
                "args": {
                    "request_id": span.request_id,
                    "status": span.status,
                    "queued_ms": round((span.started_at - span.queued_at) * 1e3, 3),
                },
            }
        )
    trace = {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"session_id": session_id}}
    return json.dumps(trace, separators=(",", ":")).encode()
