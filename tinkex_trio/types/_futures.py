"""Futures (protocol §6): the submission reply, retrieve_future(s) requests and replies, cancel_future."""

from __future__ import annotations

from typing import Any, Literal, TypeAlias, TypeVar

import msgspec

from ..errors import RequestErrorCategory, ResponseValidationError
from ._base import WireStruct, sent
from ._codec import JSONBytes, convert, decode, decode_any

__all__ = [
    "CancelFutureRequest",
    "FutureCompleteMetadata",
    "FutureCompletion",
    "FutureFailed",
    "FutureFinished",
    "FutureRetrieveRequest",
    "FuturesRetrieveRequest",
    "FuturesRetrieveResponse",
    "QueueState",
    "RequestErrorCategory",
    "RequestFailedResponse",
    "RequestType",
    "SamplingSessionFuturesTarget",
    "TryAgainResponse",
    "UntypedAPIFuture",
    "parse_future_reply",
]

T = TypeVar("T")

QueueState: TypeAlias = Literal["active", "paused_capacity", "paused_rate_limit"]

#: Values of the ``X-Tinker-Request-Type`` header on retrieve_future.
RequestType: TypeAlias = Literal[
    "CreateModel",
    "ForwardBackward",
    "Forward",
    "OptimStep",
    "SaveWeights",
    "SaveWeightsForSampler",
    "SaveWeightsExternal",
    "LoadWeights",
    "Sample",
    "CreateCustomLoss",
]


class UntypedAPIFuture(WireStruct):
    """The reply to a future-returning call. asample replies must carry ``sample_sequence_ids``."""

    request_id: str
    model_id: str | None = None
    sample_sequence_ids: list[str] | None = None


class FutureRetrieveRequest(WireStruct):
    """``POST /api/v1/retrieve_future``. The SDK sends ``allow_metadata_only: true`` first."""

    request_id: str
    allow_metadata_only: bool = sent(False)


class TryAgainResponse(WireStruct, tag_field="type", tag="try_again"):
    """Not ready yet: re-poll at once."""

    request_id: str
    queue_state: QueueState
    queue_state_reason: str | None = None


class FutureCompleteMetadata(WireStruct, tag_field="status", tag="complete_metadata"):
    """Ready, but too large to send inline: reserve the bytes, then poll with ``allow_metadata_only: false``."""

    response_payload_size: int


class RequestFailedResponse(WireStruct):
    """The future failed: ``{error, category}``."""

    error: str
    category: RequestErrorCategory = sent(RequestErrorCategory.UNKNOWN)


class SamplingSessionFuturesTarget(WireStruct, tag_field="type", tag="sampling_session"):
    sampling_session_id: str
    cloned_sampler_id: int = sent(0)


class FuturesRetrieveRequest(WireStruct):
    """``POST /api/v1/retrieve_futures``: ``timeout`` 0 answers at once, left out the server long-polls."""

    target: SamplingSessionFuturesTarget
    prev_cursor: int = sent(0)
    timeout: float | None = None
    retrieved_request_ids: list[str] = sent([])


class FutureFinished(WireStruct, tag_field="state", tag="finished"):
    request_id: str
    response_payload_uncompressed_size: int | None = None


class FutureFailed(WireStruct, tag_field="state", tag="failed"):
    request_id: str


FutureCompletion: TypeAlias = FutureFinished | FutureFailed


class FuturesRetrieveResponse(WireStruct):
    completions: list[FutureCompletion]
    cursor: int


class CancelFutureRequest(WireStruct):
    """``POST /api/v1/cancel_future`` (the reply body is ignored)."""

    request_id: str


class _ReplyEnvelope(msgspec.Struct):
    """The keys that classify a retrieve_future reply; the rest of the body is skipped, not built."""

    type: Any = None
    status: Any = None
    error: Any = msgspec.UNSET


def parse_future_reply(
    data: JSONBytes, result_type: type[T], *, request_id: str | None = None
) -> TryAgainResponse | FutureCompleteMetadata | RequestFailedResponse | T:
    """Classify a JSON retrieve_future reply as the SDK does (§6), then validate it.

    In order: ``{"type": "try_again"}`` → TryAgainResponse; ``{"status": "complete_metadata"}`` →
    FutureCompleteMetadata; any ``"error"`` key → RequestFailedResponse (an unknown category becomes
    ``unknown``); anything else is the result, validated as ``result_type``. Raises ResponseValidationError.
    """
    env = decode(_ReplyEnvelope, data, request_id=request_id)
    if env.type == "try_again":
        return decode(TryAgainResponse, data, request_id=request_id)
    if env.status == "complete_metadata":
        return decode(FutureCompleteMetadata, data, request_id=request_id)
    if env.error is not msgspec.UNSET:
        obj = decode_any(data, request_id=request_id)
        if not isinstance(obj, dict):  # pragma: no cover - the envelope decode already required an object
            raise ResponseValidationError("future reply is not a JSON object", field="$", request_id=request_id)
        fields: dict[str, Any] = dict(obj)  # pyright: ignore[reportUnknownArgumentType]
        if fields.get("category") not in {c.value for c in RequestErrorCategory}:
            fields["category"] = RequestErrorCategory.UNKNOWN.value
        return convert(RequestFailedResponse, fields, request_id=request_id)
    return decode(result_type, data, request_id=request_id)
