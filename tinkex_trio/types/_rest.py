"""RestClient messages (protocol §3.4): training runs, checkpoints, sessions, weights info; tinker:// paths."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, TypeAlias

import msgspec

from ._base import WireStruct, sent
from ._training import AdamOptimizerConfig, OptimizerConfig

__all__ = [
    "AccessScope",
    "AccessibleSearchOwner",
    "ActiveSessionStatusQuery",
    "AssignSessionProjectRequest",
    "CancelledSessionStatusQuery",
    "Checkpoint",
    "CheckpointType",
    "CheckpointsListResponse",
    "ClientFinishReason",
    "ClientFinishReasonType",
    "ClientFinishedSessionStatusQuery",
    "ClientSessionFinished",
    "Cursor",
    "ExternalWeightsUrlsResponse",
    "FailedSessionStatusQuery",
    "GetSessionResponse",
    "ListSessionsResponse",
    "OwnSearchOwner",
    "SearchOwner",
    "SessionActive",
    "SessionCancelled",
    "SessionFailed",
    "SessionFailedReason",
    "SessionSearchCursor",
    "SessionSearchRequest",
    "SessionSearchResponse",
    "SessionStatus",
    "SessionStatusQuery",
    "SessionSummary",
    "SessionTraceExportResponse",
    "SetCheckpointTtlRequest",
    "TinkerPath",
    "TrainingRun",
    "TrainingRunsResponse",
    "UserSearchOwner",
    "WeightsInfoRequest",
    "WeightsInfoResponse",
    "WhoamiResponse",
]

CheckpointType: TypeAlias = Literal["training", "sampler", "external"]
AccessScope: TypeAlias = Literal["owned", "accessible"]

_SEGMENT_TO_TYPE: dict[str, CheckpointType] = {
    "weights": "training",
    "sampler_weights": "sampler",
    "external_weights": "external",
}
_TYPE_TO_SEGMENT: dict[CheckpointType, str] = {v: k for k, v in _SEGMENT_TO_TYPE.items()}


class TinkerPath(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed ``tinker://<model_id>/<weights|sampler_weights|external_weights>/<name>``."""

    model_id: str
    checkpoint_type: CheckpointType
    name: str

    @classmethod
    def parse(cls, path: str) -> TinkerPath:
        """``ValueError`` unless ``path`` is a well-formed tinker path."""
        prefix = "tinker://"
        if not path.startswith(prefix):
            raise ValueError(f"not a tinker path: {path!r}")
        parts = path[len(prefix) :].split("/")
        if len(parts) != 3 or not parts[0] or not parts[2] or parts[1] not in _SEGMENT_TO_TYPE:
            raise ValueError(f"not a tinker path: {path!r}")
        return cls(model_id=parts[0], checkpoint_type=_SEGMENT_TO_TYPE[parts[1]], name=parts[2])

    @property
    def checkpoint_id(self) -> str:
        """``"weights/<name>"`` etc., as in the checkpoint listings."""
        return f"{_TYPE_TO_SEGMENT[self.checkpoint_type]}/{self.name}"

    def __str__(self) -> str:
        return f"tinker://{self.model_id}/{self.checkpoint_id}"


class Cursor(WireStruct):
    offset: int
    limit: int
    total_count: int


class Checkpoint(WireStruct):
    checkpoint_id: str
    checkpoint_type: CheckpointType
    time: datetime
    tinker_path: str
    size_bytes: int | None = None
    public: bool = sent(False)
    user_metadata: dict[str, str] | None = None
    expires_at: datetime | None = None


class CheckpointsListResponse(WireStruct):
    checkpoints: list[Checkpoint]
    cursor: Cursor | None = None


class TrainingRun(WireStruct):
    training_run_id: str
    base_model: str
    model_owner: str
    is_lora: bool
    last_request_time: datetime
    corrupted: bool = sent(False)
    lora_rank: int | None = None
    last_checkpoint: Checkpoint | None = None
    last_sampler_checkpoint: Checkpoint | None = None
    user_metadata: dict[str, str] | None = None


class TrainingRunsResponse(WireStruct):
    training_runs: list[TrainingRun]
    cursor: Cursor


class WeightsInfoRequest(WireStruct):
    tinker_path: str


class WeightsInfoResponse(WireStruct):
    base_model: str
    is_lora: bool
    lora_rank: int | None = None
    train_unembed: bool | None = None
    train_mlp: bool | None = None
    train_attn: bool | None = None
    optimizer_config: OptimizerConfig = sent(AdamOptimizerConfig())


class ListSessionsResponse(WireStruct):
    sessions: list[str]


class GetSessionResponse(WireStruct):
    training_run_ids: list[str]
    sampler_ids: list[str]
    user_metadata: dict[str, str] | None = None
    display_name: str | None = None


class SetCheckpointTtlRequest(WireStruct):
    """``PUT .../checkpoints/{id}/ttl``; ``null`` removes the expiry."""

    ttl_seconds: int | None


class ExternalWeightsUrlsResponse(WireStruct):
    urls: dict[str, str]
    expires: datetime


class AssignSessionProjectRequest(WireStruct):
    """``PUT /api/v1/sessions/{id}/project``: the project to move the session (its training runs and samplers) to."""

    project_id: str


class SessionTraceExportResponse(WireStruct):
    """``GET /api/v1/sessions/{id}/trace_export``: the state of the job that builds the session's trace. ``status``
    is ``"ready"`` (then ``url`` is a signed download URL, fetched without credentials), ``"failed"`` (``error`` says
    why), or anything else while the trace is being built (``"pending"``): ask again later."""

    status: str
    url: str | None = None
    error: str | None = None


class WhoamiResponse(WireStruct):
    user_urn: str
    org_urn: str
    email: str | None = None


# -- session search (POST /api/v1/sessions/search) ---------------------------------------------------------------------


class OwnSearchOwner(WireStruct, tag_field="type", tag="own"):
    """The caller's own sessions (the default)."""


class AccessibleSearchOwner(WireStruct, tag_field="type", tag="accessible"):
    """Every owner's sessions the caller may list."""


class UserSearchOwner(WireStruct, tag_field="type", tag="user"):
    """The sessions of the listed owners (1 to 10 URNs)."""

    owner_urns: list[str]


SearchOwner: TypeAlias = OwnSearchOwner | AccessibleSearchOwner | UserSearchOwner
ClientFinishReasonType: TypeAlias = Literal["success", "errored", "interrupted"]


class ActiveSessionStatusQuery(WireStruct, tag_field="type", tag="active"):
    """Sessions still running."""


class CancelledSessionStatusQuery(WireStruct, tag_field="type", tag="cancelled"):
    """Sessions cancelled from the console."""


class FailedSessionStatusQuery(WireStruct, tag_field="type", tag="failed"):
    """Sessions failed by a request, training run or sampling session."""


class ClientFinishedSessionStatusQuery(WireStruct, tag_field="type", tag="client_finished"):
    """Sessions whose client finished them; ``reasons`` narrows to those finish reasons."""

    reasons: list[ClientFinishReasonType] | None = None


SessionStatusQuery: TypeAlias = (
    ActiveSessionStatusQuery | CancelledSessionStatusQuery | FailedSessionStatusQuery | ClientFinishedSessionStatusQuery
)


class SessionSearchCursor(WireStruct):
    """Where the next page starts: pass a response's ``next_cursor`` back unchanged."""

    last_created_at: datetime
    last_session_id: str


class SessionSearchRequest(WireStruct):
    """A search over the sessions the caller may list, newest first. ``session_id`` (exact) and ``display_name``
    (case-insensitive; every word must appear) match either; ``user_metadata`` pairs must all hold; ``statuses``
    match any; ``limit`` 1 to 200."""

    session_id: str | None = None
    project_ids: list[str] | None = None
    user_metadata: dict[str, str] = sent({})
    display_name: str | None = None
    owner: SearchOwner = sent(OwnSearchOwner())
    statuses: list[SessionStatusQuery] | None = None
    limit: int = sent(50)
    cursor: SessionSearchCursor | None = None


class SessionActive(WireStruct, tag_field="type", tag="active"):
    pass


class ClientFinishReason(WireStruct):
    type: ClientFinishReasonType


class ClientSessionFinished(WireStruct, tag_field="type", tag="client_finished"):
    """The client finished the session (``POST .../finish``) with ``reason``."""

    reason: ClientFinishReason
    detail: str | None = None


class SessionFailedReason(WireStruct):
    """What failed the session: a ``request`` (``request_id``, ``request_type``), a ``training_run`` or a
    ``sampling_session`` (its id)."""

    type: Literal["request", "training_run", "sampling_session"]
    request_id: str | None = None
    request_type: str | None = None
    training_run_id: str | None = None
    sampling_session_id: str | None = None


class SessionFailed(WireStruct, tag_field="type", tag="failed"):
    category: Literal["user", "internal"]
    reason: SessionFailedReason
    message: str


class SessionCancelled(WireStruct, tag_field="type", tag="cancelled"):
    detail: str | None = None


SessionStatus: TypeAlias = SessionActive | ClientSessionFinished | SessionFailed | SessionCancelled


class SessionSummary(WireStruct):
    session_id: str
    created_at: datetime
    owner: str
    project_id: str
    checkpoints_count: int
    status: SessionStatus | None = None
    """None when the session neither finished nor is known to be running."""
    display_name: str | None = None
    user_metadata: dict[str, str] | None = None
    checkpoint_storage_bytes: int | None = None


class SessionSearchResponse(WireStruct):
    """One page of results, newest first; ``next_cursor`` is None once they are exhausted."""

    sessions: list[SessionSummary]
    next_cursor: SessionSearchCursor | None = None
