"""RestClient messages (protocol §3.4): training runs, checkpoints, sessions, weights info; tinker:// paths."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, TypeAlias

import msgspec

from ._base import WireStruct, sent
from ._training import AdamOptimizerConfig, OptimizerConfig

__all__ = [
    "AccessScope",
    "Checkpoint",
    "CheckpointType",
    "CheckpointsListResponse",
    "Cursor",
    "ExternalWeightsUrlsResponse",
    "GetSessionResponse",
    "ListSessionsResponse",
    "SetCheckpointTtlRequest",
    "TinkerPath",
    "TrainingRun",
    "TrainingRunsResponse",
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


class WhoamiResponse(WireStruct):
    user_urn: str
    org_urn: str
    email: str | None = None
