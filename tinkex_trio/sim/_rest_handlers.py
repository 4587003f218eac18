"""REST endpoints: training runs, their checkpoints (list, delete, publish, TTL, download URLs), sessions."""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime, timedelta

import msgspec

from tinkex_trio import types as t
from tinkex_trio.sim._asgi import HTTPError, Request, Response, decode_body, json_response
from tinkex_trio.sim._core import (
    SimCore,
    check_ttl,
)
from tinkex_trio.sim._model_types import SimUserError
from tinkex_trio.sim._state import (
    CheckpointRecord,
    ModelRecord,
    SessionRecord,
    parse_tinker_path,
)


class _ProjectBody(msgspec.Struct):
    project_id: str | None = None


def _paging(request: Request, default_limit: int) -> tuple[int, int]:
    try:
        limit = int(request.query.get("limit", default_limit))
        offset = int(request.query.get("offset", 0))
    except ValueError:
        raise HTTPError(422, "limit and offset must be integers") from None
    if limit < 0 or offset < 0:
        raise HTTPError(422, "limit and offset must be >= 0")
    return limit, offset


def _training_run(sim: SimCore, record: ModelRecord) -> t.TrainingRun:
    return t.convert(t.TrainingRun, record.to_training_run(sim.config.owner))


async def list_training_runs(sim: SimCore, request: Request) -> Response:
    limit, offset = _paging(request, 20)
    runs = list(sim.state.models.values())
    page = runs[offset : offset + limit]
    return json_response(
        t.TrainingRunsResponse(
            training_runs=[_training_run(sim, r) for r in page],
            cursor=t.Cursor(offset=offset, limit=limit, total_count=len(runs)),
        )
    )


async def get_training_run(sim: SimCore, request: Request) -> Response:
    return json_response(_training_run(sim, sim.state.model(request.params["training_run_id"])))


async def list_run_checkpoints(sim: SimCore, request: Request) -> Response:
    model = sim.state.model(request.params["training_run_id"])
    checkpoints = [t.convert(t.Checkpoint, c.to_json()) for c in model.checkpoints.values()]
    return json_response(t.CheckpointsListResponse(checkpoints=checkpoints))


async def list_user_checkpoints(sim: SimCore, request: Request) -> Response:
    limit, offset = _paging(request, 100)
    everything = sim.state.all_checkpoints()
    page = [t.convert(t.Checkpoint, c.to_json()) for c in everything[offset : offset + limit]]
    return json_response(
        t.CheckpointsListResponse(
            checkpoints=page, cursor=t.Cursor(offset=offset, limit=limit, total_count=len(everything))
        )
    )


def _checkpoint_from_params(sim: SimCore, request: Request) -> tuple[ModelRecord, CheckpointRecord]:
    model = sim.state.model(request.params["training_run_id"])
    checkpoint_id = request.params["checkpoint_id"]
    try:
        parse_tinker_path(f"tinker://{model.model_id}/{checkpoint_id}")
    except SimUserError as exc:
        raise HTTPError(422, str(exc)) from None
    checkpoint = model.checkpoints.get(checkpoint_id)
    if checkpoint is None:
        raise HTTPError(404, f"checkpoint {checkpoint_id!r} of {model.model_id} not found")
    return model, checkpoint


async def delete_checkpoint(sim: SimCore, request: Request) -> Response:
    model, checkpoint = _checkpoint_from_params(sim, request)
    del model.checkpoints[checkpoint.checkpoint_id]
    sim.state.audit_checkpoint("checkpoint_delete", checkpoint)
    return json_response({})


async def publish_checkpoint(sim: SimCore, request: Request) -> Response:
    _, checkpoint = _checkpoint_from_params(sim, request)
    checkpoint.public = request.method == "POST"
    sim.state.audit_checkpoint("checkpoint_publish" if checkpoint.public else "checkpoint_unpublish", checkpoint)
    return json_response({})


async def set_checkpoint_ttl(sim: SimCore, request: Request) -> Response:
    _, checkpoint = _checkpoint_from_params(sim, request)
    body = decode_body(request, t.SetCheckpointTtlRequest)
    check_ttl(body.ttl_seconds)
    checkpoint.set_ttl(body.ttl_seconds)
    sim.state.note_expiry(checkpoint.expires_at)
    return json_response({})


async def external_weights_urls(sim: SimCore, request: Request) -> Response:
    _, checkpoint = _checkpoint_from_params(sim, request)
    if checkpoint.kind != "external":
        raise HTTPError(404, f"{checkpoint.tinker_path} is not an external weights checkpoint")
    quoted = urllib.parse.quote(checkpoint.tinker_path.removeprefix("tinker://"), safe="")
    expires = datetime.now(UTC) + timedelta(hours=1)
    return json_response(
        t.ExternalWeightsUrlsResponse(
            urls={"adapter_model.npz": f"https://sim.invalid/external/{quoted}/adapter_model.npz"},
            expires=expires,
        )
    )


async def list_sessions(sim: SimCore, request: Request) -> Response:
    limit, offset = _paging(request, 20)
    ids = list(sim.state.sessions)
    return json_response(t.ListSessionsResponse(sessions=ids[offset : offset + limit]))


async def get_session(sim: SimCore, request: Request) -> Response:
    session = sim.state.session(request.params["session_id"])
    return json_response(
        t.GetSessionResponse(
            training_run_ids=list(session.model_ids),
            sampler_ids=list(session.sampler_ids),
            user_metadata={str(k): str(v) for k, v in session.user_metadata.items()},
            display_name=session.display_name,
        )
    )


async def set_session_project(sim: SimCore, request: Request) -> Response:
    """Move a session into a project: 400 without a project id (a session cannot leave every project), 404 for an
    unknown session. The simulator has no projects of its own, so any id is one the caller may use."""
    body = decode_body(request, _ProjectBody)
    if not body.project_id:
        raise HTTPError(400, "project_id is required (a session cannot be taken out of its project)")
    session = sim.state.session(request.params["session_id"])
    session.project_id = body.project_id
    return json_response({})


def _status(record: SessionRecord) -> t.SessionStatus:
    if record.finished in ("success", "errored", "interrupted"):
        return t.ClientSessionFinished(reason=t.ClientFinishReason(type=record.finished), detail=record.finish_detail)
    return t.SessionActive()


def _status_matches(status: t.SessionStatus, queries: list[t.SessionStatusQuery] | None) -> bool:
    if queries is None:
        return True
    for query in queries:
        if isinstance(query, t.ActiveSessionStatusQuery) and isinstance(status, t.SessionActive):
            return True
        if (
            isinstance(query, t.ClientFinishedSessionStatusQuery)
            and isinstance(status, t.ClientSessionFinished)
            and (query.reasons is None or status.reason.type in query.reasons)
        ):
            return True
    return False  # the simulator never fails nor cancels a session


def _matches(sim: SimCore, record: SessionRecord, body: t.SessionSearchRequest) -> bool:
    if isinstance(body.owner, t.UserSearchOwner) and sim.config.owner not in body.owner.owner_urns:
        return False
    if body.project_ids is not None and record.project not in body.project_ids:
        return False
    if body.session_id is not None or body.display_name is not None:
        by_id = body.session_id is not None and record.session_id == body.session_id
        name = (record.display_name or "").lower()
        by_name = body.display_name is not None and all(w in name for w in body.display_name.lower().split())
        if not (by_id or by_name):
            return False
    metadata = {str(k): str(v) for k, v in record.user_metadata.items()}
    if any(metadata.get(k) != v for k, v in body.user_metadata.items()):
        return False
    return _status_matches(_status(record), body.statuses)


async def search_sessions(sim: SimCore, request: Request) -> Response:
    body = decode_body(request, t.SessionSearchRequest)
    if not 1 <= body.limit <= 200:
        raise HTTPError(422, f"limit must be 1 to 200, got {body.limit}")
    if isinstance(body.owner, t.UserSearchOwner) and not 1 <= len(body.owner.owner_urns) <= 10:
        raise HTTPError(422, "owner_urns must hold 1 to 10 URNs")
    if body.display_name == "":
        raise HTTPError(422, "display_name must not be empty")
    found = [r for r in sim.state.sessions.values() if _matches(sim, r, body)]
    found.sort(key=lambda r: (r.created_at, r.session_id), reverse=True)  # newest first
    if body.cursor is not None:
        after = (body.cursor.last_created_at, body.cursor.last_session_id)
        found = [r for r in found if (r.created_at, r.session_id) < after]
    page = found[: body.limit]
    summaries = [
        t.SessionSummary(
            session_id=r.session_id,
            created_at=r.created_at,
            owner=sim.config.owner,
            project_id=r.project,
            checkpoints_count=sum(len(sim.state.models[m].checkpoints) for m in r.model_ids if m in sim.state.models),
            status=_status(r),
            display_name=r.display_name,
            user_metadata={str(k): str(v) for k, v in r.user_metadata.items()} or None,
        )
        for r in page
    ]
    cursor = None
    if len(found) > body.limit:
        last = page[-1]
        cursor = t.SessionSearchCursor(last_created_at=last.created_at, last_session_id=last.session_id)
    return json_response(t.SessionSearchResponse(sessions=summaries, next_cursor=cursor))
