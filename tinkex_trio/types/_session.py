"""Bootstrap and session messages (protocol §2, §3.1, §9)."""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

from ._base import WireStruct, sent

__all__ = [
    "AuthTokenRequest",
    "AuthTokenResponse",
    "ClientConfigRequest",
    "ClientConfigResponse",
    "ClientDynamicConfigRequest",
    "ClientDynamicConfigResponse",
    "CreateSessionRequest",
    "CreateSessionResponse",
    "FinishReasonType",
    "FinishSessionRequest",
    "GetServerCapabilitiesResponse",
    "HealthResponse",
    "SessionFinishReason",
    "SessionHeartbeatRequest",
    "SessionHeartbeatResponse",
    "SupportedModel",
]

FinishReasonType: TypeAlias = Literal["success", "errored", "interrupted"]


class ClientConfigRequest(WireStruct):
    """``POST /api/v1/client/config``."""

    sdk_version: str


class ClientConfigResponse(WireStruct):
    """Server-side flags, fetched once. ``{}`` is valid; unknown flags are ignored."""

    pjwt_auth_enabled: bool = sent(False)
    credential_default_source: str = sent("api_key")
    sample_dispatch_bytes_semaphore_size: int = sent(10 * 1024 * 1024)
    inflight_response_bytes_semaphore_size: int = sent(50 * 1024 * 1024)
    parallel_fwdbwd_chunks: bool = sent(True)
    proto_compress_fwdbwd: bool = sent(False)
    fwdbwd_max_chunk_len: int = sent(1024)
    fwdbwd_max_chunk_bytes_count: int = sent(5_000_000)
    fwdbwd_dispatch_bytes_semaphore_size: int = sent(50_000_000)
    billing_exception_max_pause_duration_sec: int = sent(3600)
    sample_no_retries: bool = sent(False)
    sample_enable_stuck_detection: bool = sent(True)
    sample_max_concurrent_requests: int = sent(2000)
    use_pyqwest_transport: bool = sent(True)
    sample_use_retrieve_futures: bool = sent(False)
    custom_loss_server_side: bool = sent(False)
    sample_join_sampling_session: bool = sent(False)


class ClientDynamicConfigRequest(WireStruct):
    """``POST /api/v1/client/dynamic_config`` (a 404 means: use the defaults)."""

    sdk_version: str


class ClientDynamicConfigResponse(WireStruct):
    """Flags re-fetched every ``max(refresh_interval_sec, 10)`` s."""

    refresh_interval_sec: int = sent(300)
    sample_cancel_enabled: bool = sent(False)
    sample_cancel_max_batch_size: int = sent(64)


class AuthTokenRequest(WireStruct):
    """``POST /api/v1/auth/token``: the body is ``{}``."""


class AuthTokenResponse(WireStruct):
    jwt: str


class CreateSessionRequest(WireStruct, tag_field="type", tag="create_session"):
    sdk_version: str
    tags: list[str] = sent([])
    user_metadata: dict[str, Any] = sent({})
    project_id: str | None = None
    display_name: str | None = None


class CreateSessionResponse(WireStruct, tag_field="type", tag="create_session"):
    """The messages are for the log."""

    session_id: str
    info_message: str | None = None
    warning_message: str | None = None
    error_message: str | None = None


class SessionHeartbeatRequest(WireStruct, tag_field="type", tag="session_heartbeat"):
    session_id: str


class SessionHeartbeatResponse(WireStruct, tag_field="type", tag="session_heartbeat"):
    """``{}`` or ``{"type": "session_heartbeat"}``."""


class SessionFinishReason(WireStruct):
    type: FinishReasonType


class FinishSessionRequest(WireStruct, omit_defaults=False):
    """``POST /api/v1/sessions/{id}/finish``: ``{"reason": {"type": ...}, "detail": str | null}`` (null is sent)."""

    reason: SessionFinishReason
    detail: str | None = None

    @classmethod
    def of(cls, status: FinishReasonType, detail: str | None = None) -> FinishSessionRequest:
        return cls(reason=SessionFinishReason(type=status), detail=detail)


class SupportedModel(WireStruct):
    model_name: str | None = None
    max_context_length: int | None = None
    trainable: bool | None = None
    sampleable: bool | None = None


class GetServerCapabilitiesResponse(WireStruct):
    supported_models: list[SupportedModel]


class HealthResponse(WireStruct):
    status: Literal["ok"]
