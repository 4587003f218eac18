"""Session trace export: ``GET /sessions/{id}/trace_export`` (the job's status) and the download of a finished
trace; and the completion listener that records every finished request as a span of its session's trace.

A poll starts an export job when the session has none, or when its last one has been handed out and failed or the
session has run requests since. The job writes the trace at once (`tinkex_trio.sim._trace`) but answers ``pending``
until ``SimConfig.trace_export_build_s`` of trio time has passed, then ``ready`` with a URL on this server, or
``failed`` when ``SimConfig.trace_export_error`` is set. The URL is a capability, as a signed storage URL is: a GET
needs no credentials, and it serves the file for as long as the job is the session's latest.
"""

from __future__ import annotations

import trio

from tinkex_trio import types as t
from tinkex_trio._endpoints import API_PREFIX
from tinkex_trio.sim._asgi import JSON, HTTPError, Request, Response, json_response
from tinkex_trio.sim._core import SimCore
from tinkex_trio.sim._queue import FutureRecord
from tinkex_trio.sim._state import SessionRecord
from tinkex_trio.sim._trace import TraceExport, TraceSpan, render_trace

__all__ = ["download_trace", "record_span", "trace_export"]


def record_span(sim: SimCore, record: FutureRecord) -> None:
    """Completion listener: add a finished future to the trace of the session whose model or sampler ran it."""
    owner = sim.state.models.get(record.lane_key) or sim.state.samplers.get(record.lane_key)
    session = sim.state.sessions.get(owner.session_id) if owner is not None else None
    if session is None:
        return
    finished = record.finished_at if record.finished_at is not None else trio.current_time()
    started = record.started_at if record.started_at is not None else finished
    span = TraceSpan(
        name=record.request_type,
        lane=record.lane_key,
        request_id=record.request_id,
        queued_at=record.created_at,
        started_at=started,
        finished_at=finished,
        status=record.status,
    )
    session.record_span(span)


def _start_export(sim: SimCore, session: SessionRecord) -> TraceExport:
    previous = session.trace_export
    if previous is not None:
        sim.state.trace_exports.pop(previous.export_id, None)
    job = TraceExport(
        export_id=sim.state.random_hex(16),
        spans_seen=session.spans_recorded,
        ready_at=trio.current_time() + max(sim.config.trace_export_build_s, 0.0),
        data=render_trace(session.session_id, list(session.trace)),
        error=sim.config.trace_export_error,
    )
    session.trace_export = job
    sim.state.trace_exports[job.export_id] = job
    return job


async def trace_export(sim: SimCore, request: Request) -> Response:
    session = sim.state.session(request.params["session_id"])
    job = session.trace_export
    # A job whose outcome was handed out is redone if it failed or the session has run requests since.
    if job is None or (job.delivered and (job.error is not None or job.spans_seen != session.spans_recorded)):
        job = _start_export(sim, session)
    if trio.current_time() < job.ready_at:
        return json_response(t.SessionTraceExportResponse(status="pending"))
    job.delivered = True
    if job.error is not None:
        return json_response(t.SessionTraceExportResponse(status="failed", error=job.error))
    url = f"{request.origin}{API_PREFIX}/trace_exports/{job.export_id}"
    return json_response(t.SessionTraceExportResponse(status="ready", url=url))


async def download_trace(sim: SimCore, request: Request) -> Response:
    """The trace file of a finished export job (no credentials: the URL is the capability)."""
    job = sim.state.trace_exports.get(request.params["export_id"])
    if job is None or job.error is not None or trio.current_time() < job.ready_at:
        raise HTTPError(404, "no such trace export (a newer export of the session replaces it)")
    return Response(200, job.data, content_type=JSON)
