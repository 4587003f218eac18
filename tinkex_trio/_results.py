"""Decoders of a future's final answer, and the direct answers the clients read (one home for both clients).

A future's decoder (:data:`~tinkex_trio._futures.FutureDecoder`) turns the final 200 response of its poll into the
result: JSON for most results; protobuf, or JSON from a server that answers JSON, for forward / forward_backward and
sample results (protocol §5). A bad body raises :class:`~tinkex_trio.errors.ResponseValidationError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import httpx
import msgspec

from tinkex_trio import types
from tinkex_trio._endpoints import API_PREFIX as _API
from tinkex_trio._pool_set import PoolKind
from tinkex_trio._proto._codec import PROTOBUF_CONTENT_TYPE, decode_forward_backward_output, decode_sample_response
from tinkex_trio._transport import Transport
from tinkex_trio.errors import ResponseValidationError

__all__ = ["SampleDecoder", "decode_fwdbwd", "fetch_info", "json_decoder"]

T = TypeVar("T")


def _is_protobuf(response: httpx.Response) -> bool:
    return PROTOBUF_CONTENT_TYPE in response.headers.get("content-type", "").lower()


def _request_id(response: httpx.Response) -> str | None:
    return response.headers.get("x-request-id")


def json_decoder(type_: type[T]) -> Callable[[httpx.Response], T]:
    """A future decoder for a result that is always JSON."""

    def decode(response: httpx.Response) -> T:
        return types.decode(type_, response.content, request_id=_request_id(response))

    return decode


def decode_fwdbwd(response: httpx.Response) -> types.ForwardBackwardOutput:
    """A forward / forward_backward result: protobuf when the server sent protobuf, else JSON."""
    if _is_protobuf(response):
        return decode_forward_backward_output(response.content)
    return types.decode(types.ForwardBackwardOutput, response.content, request_id=_request_id(response))


class SampleDecoder:
    """Decodes an asample result (protobuf, or JSON from a server that answers JSON) with the future's sequence ids."""

    __slots__ = ("sequence_ids",)

    def __init__(self, sequence_ids: list[str]) -> None:
        self.sequence_ids = sequence_ids

    def __call__(self, response: httpx.Response) -> types.SampleResponse:
        request_id = _request_id(response)
        if _is_protobuf(response):
            return decode_sample_response(response.content, self.sequence_ids)
        result = types.decode(types.SampleResponse, response.content, request_id=request_id)
        if len(result.sequences) != len(self.sequence_ids):
            raise ResponseValidationError(
                f"asample returned {len(result.sequences)} sequences for {len(self.sequence_ids)} sequence ids",
                field="$.sequences",
                body=response.content,
                request_id=request_id,
            )
        sequences = [
            seq if seq.sequence_id is not None else msgspec.structs.replace(seq, sequence_id=sid)
            for seq, sid in zip(result.sequences, self.sequence_ids, strict=True)
        ]
        return msgspec.structs.replace(result, sequences=sequences)


async def fetch_info(transport: Transport, model_id: str) -> types.GetInfoResponse:
    """get_info (direct answer), with ``model_data.tokenizer_id`` cut at its first ``:`` as the official SDK does."""
    info = await transport.request_json(
        types.GetInfoResponse,
        PoolKind.TRAINING,
        "POST",
        f"{_API}/get_info",
        json=types.GetInfoRequest(model_id=model_id),
        sdk_method="TrainingClient.get_info",
    )
    tokenizer_id = info.model_data.tokenizer_id
    if tokenizer_id and ":" in tokenizer_id:
        model_data = msgspec.structs.replace(info.model_data, tokenizer_id=tokenizer_id.split(":", 1)[0])
        info = msgspec.structs.replace(info, model_data=model_data)
    return info
