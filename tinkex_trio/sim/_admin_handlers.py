"""Admin reads: the audit log, usage by the hour, current checkpoint storage (`tinkex_trio.sim._ledger` says what is
recorded). Every event and every checkpoint belongs to the simulator's one user (``SimConfig.owner``); the simulator
has no rate card, so every cost and rate is None.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final

from tinkex_trio import types as t
from tinkex_trio.sim._asgi import HTTPError, Request, Response, json_response
from tinkex_trio.sim._core import SimCore
from tinkex_trio.sim._ledger import AuditRecord, UsageKey, hour_of
from tinkex_trio.sim._state import DEFAULT_PROJECT

__all__ = ["audit_log", "billing_usage", "checkpoint_storage"]

_EVENT_PREFIXES: Final[dict[str, str]] = {
    "all": "",
    "checkpoints": "checkpoint_",
    "projects": "project_",
    "teams": "team_",
    "organizations": "organization_",
}
_MAX_USAGE_WINDOW: Final = timedelta(days=14)
_BYTES_PER_GIGABYTE: Final = 1e9


def _entry(sim: SimCore, record: AuditRecord) -> t.AuditLogEntry:
    details: dict[str, Any] = {
        "actor": sim.config.owner,
        "tinker_path": record.tinker_path,
        "training_run_id": record.training_run_id,
    }
    if record.session_id is not None:
        details["session_id"] = record.session_id
    if record.purpose is not None:
        details["purpose"] = record.purpose
    return t.AuditLogEntry(
        timestamp=record.timestamp,
        event=record.event,
        event_details=details,
        model_id=record.training_run_id,
        tinker_path=record.tinker_path,
        purpose=record.purpose,
    )


async def audit_log(sim: SimCore, request: Request) -> Response:
    event_type = request.query.get("event_type", "all")
    prefix = _EVENT_PREFIXES.get(event_type)
    if prefix is None:
        raise HTTPError(422, f"event_type must be one of {sorted(_EVENT_PREFIXES)}, got {event_type!r}")
    raw_day = request.query.get("day")
    try:
        day = date.fromisoformat(raw_day) if raw_day is not None else sim.state.clock().date()
    except ValueError:
        raise HTTPError(422, f"day must be a date (YYYY-MM-DD), got {raw_day!r}") from None
    start = datetime.combine(day, time(), UTC)
    end = start + timedelta(days=1)
    entries = [
        _entry(sim, r) for r in sim.state.ledger.audit if start <= r.timestamp < end and r.event.startswith(prefix)
    ]
    return json_response(t.AuditLogResponse(entries=entries))


def _instant(request: Request, name: str) -> datetime:
    raw = request.query.get(name)
    if raw is None:
        raise HTTPError(422, f"{name} is required")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise HTTPError(422, f"{name} must be an RFC 3339 date-time, got {raw!r}") from None
    if moment.utcoffset() is None:
        raise HTTPError(422, f"{name} must carry a time zone, got {raw!r}")
    moment = moment.astimezone(UTC)
    if moment != hour_of(moment):
        raise HTTPError(400, f"{name} must be on a whole UTC hour, got {raw!r}")
    return moment


def _event_info(key: UsageKey, quantity: int) -> t.BillingEventInfo:
    if key.kind == "training":
        return t.TrainingBillingEvent(token_count=quantity)
    if key.kind == "sampling_prefill":
        return t.SamplingPrefillBillingEvent(cached=False, token_count=quantity)
    if key.kind == "sampling_sample":
        return t.SamplingSampleBillingEvent(token_count=quantity)
    return t.CheckpointBillingEvent(count=quantity)


async def billing_usage(sim: SimCore, request: Request) -> Response:
    start = _instant(request, "starting_on")
    end = _instant(request, "ending_before")
    if start > sim.state.clock():
        raise HTTPError(400, "starting_on must not be in the future")
    if not start < end <= start + _MAX_USAGE_WINDOW:
        raise HTTPError(400, "ending_before must be after starting_on, and at most 14 days after it")
    rows = [(key, quantity) for key, quantity in sim.state.ledger.usage.items() if start <= key.bucket_start < end]
    rows.sort(key=lambda row: (row[0].bucket_start, -row[1], row[0].kind, row[0].session_id, row[0].base_model))
    data: list[t.BillingUsageEvent] = []
    sessions: dict[str, t.BillingUsageSession] = {}
    for key, quantity in rows:
        session = sim.state.sessions.get(key.session_id)
        data.append(
            t.BillingUsageEvent(
                bucket_start=key.bucket_start,
                bucket_end=key.bucket_start + timedelta(hours=1),
                event_info=_event_info(key, quantity),
                base_model=key.base_model,
                user_id=sim.config.owner,
                session_id=key.session_id,
                project_id=session.project if session is not None else None,
            )
        )
        if session is not None and key.session_id not in sessions:
            metadata = {str(k): str(v) for k, v in session.user_metadata.items()}
            sessions[key.session_id] = t.BillingUsageSession(user_metadata=metadata or None)
    return json_response(t.BillingUsageResponse(data=data, sessions=sessions))


async def checkpoint_storage(sim: SimCore, request: Request) -> Response:
    wanted = request.query.get("project_id")
    totals: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
    for model in sim.state.models.values():
        session = sim.state.sessions.get(model.session_id)
        project = session.project if session is not None else DEFAULT_PROJECT
        if wanted is not None and project != wanted:
            continue
        for checkpoint in model.checkpoints.values():
            totals[project][0] += 1
            totals[project][1] += checkpoint.size_bytes
    items = [
        t.CurrentCheckpointStorageUsageItem(
            project_id=project,
            org_user_urn=sim.config.owner,
            checkpoint_count=count,
            size_bytes=size,
            size_gigabytes=size / _BYTES_PER_GIGABYTE,
        )
        for project, (count, size) in sorted(totals.items())
    ]
    return json_response(t.CurrentCheckpointStorageUsageResponse(data=items))
