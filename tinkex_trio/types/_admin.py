"""Admin reads (protocol §3.4): the organization's audit log (``GET /api/v1/audit``), its usage by the hour
(``GET /api/v1/billing/usage/events``) and the checkpoint storage it holds now
(``GET /api/v1/billing/usage/checkpoints/current``).

Costs are gross estimates before credits and commits, never amounts due; any of them may be None where the service
cannot price a row (the simulator prices none).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, TypeAlias

from ._base import WireStruct, sent

__all__ = [
    "AuditEventType",
    "AuditLogEntry",
    "AuditLogResponse",
    "BillingEventInfo",
    "BillingUsageEvent",
    "BillingUsageResponse",
    "BillingUsageSession",
    "CheckpointBillingEvent",
    "CurrentCheckpointStorageUsageItem",
    "CurrentCheckpointStorageUsageResponse",
    "SamplingPrefillBillingEvent",
    "SamplingSampleBillingEvent",
    "StorageBillingEvent",
    "TrainingBillingEvent",
]

AuditEventType: TypeAlias = Literal["all", "checkpoints", "projects", "teams", "organizations"]
"""Which resource's events an audit log query returns."""


class AuditLogEntry(WireStruct):
    """One audited event. ``event`` is ``<resource>_<action>`` (``checkpoint_read``, ``project_grant_set``);
    ``event_details`` says who did it, to what, and whatever else the event records. ``model_id``, ``tinker_path``
    and ``purpose`` repeat details of checkpoint events (the service deprecates them: read ``event_details``)."""

    timestamp: datetime
    event: str
    event_details: dict[str, Any] = sent({})
    model_id: str | None = None
    tinker_path: str | None = None
    purpose: str | None = None


class AuditLogResponse(WireStruct):
    entries: list[AuditLogEntry]
    """Oldest first."""


class TrainingBillingEvent(WireStruct, tag_field="type", tag="training"):
    """Tokens processed by forward and forward_backward passes."""

    token_count: int


class SamplingPrefillBillingEvent(WireStruct, tag_field="type", tag="sampling_prefill"):
    """Prompt tokens processed while sampling; ``cached`` ones came from the prefill cache (a cheaper rate)."""

    cached: bool
    token_count: int


class SamplingSampleBillingEvent(WireStruct, tag_field="type", tag="sampling_sample"):
    """Tokens generated while sampling."""

    token_count: int


class CheckpointBillingEvent(WireStruct, tag_field="type", tag="checkpoint"):
    """Checkpoints saved (billed per checkpoint)."""

    count: int


class StorageBillingEvent(WireStruct, tag_field="type", tag="storage"):
    """Checkpoint storage, in gigabyte-hours; free and paid storage are separate events."""

    gigabyte_hours: float
    free: bool = sent(False)


BillingEventInfo: TypeAlias = (
    TrainingBillingEvent
    | SamplingPrefillBillingEvent
    | SamplingSampleBillingEvent
    | CheckpointBillingEvent
    | StorageBillingEvent
)
"""What one usage event counts, told apart by ``type``."""


class BillingUsageEvent(WireStruct):
    """One kind of usage in one UTC hour, ``[bucket_start, bucket_end)``, attributed to a base model, the user who
    created the session, the session (its ``user_metadata`` is in ``BillingUsageResponse.sessions``) and the
    session's current project. ``estimated_cost_usd`` is the quantity times the effective rate (per million tokens,
    or per gigabyte-month of 720 hours), when the service can price it."""

    bucket_start: datetime
    bucket_end: datetime
    event_info: BillingEventInfo
    base_model: str | None = None
    user_id: str | None = None
    user_name: str | None = None
    session_id: str | None = None
    project_id: str | None = None
    estimated_cost_usd: float | None = None
    effective_rate_usd_per_million_tokens: float | None = None
    effective_rate_usd_per_gigabyte_month: float | None = None


class BillingUsageSession(WireStruct):
    user_metadata: dict[str, str] | None = None


class BillingUsageResponse(WireStruct):
    """Usage events ordered by hour, then by quantity (largest first); ``sessions`` holds each session named in
    ``data``. Before ``cost_data_through`` estimates use invoice-derived rates, from it published rates."""

    data: list[BillingUsageEvent]
    sessions: dict[str, BillingUsageSession] = sent({})
    cost_data_through: datetime | None = None


class CurrentCheckpointStorageUsageItem(WireStruct):
    """The checkpoints held now by one session owner in one project."""

    checkpoint_count: int
    size_bytes: int
    size_gigabytes: float
    project_id: str | None = None
    org_user_urn: str | None = None
    user_email: str | None = None
    user_name: str | None = None
    estimated_monthly_cost_usd: float | None = None
    """The gross cost of keeping them for 720 hours at the current rate."""


class CurrentCheckpointStorageUsageResponse(WireStruct):
    """Checkpoint storage grouped by project and session owner (the service's figures may lag by an hour or two)."""

    data: list[CurrentCheckpointStorageUsageItem]
    effective_rate_usd_per_gigabyte_month: float | None = None
