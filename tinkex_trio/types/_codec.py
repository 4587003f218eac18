"""JSON codec for the wire model: one encoder, one cached decoder per type, errors as ResponseValidationError.

::

    body = encode(CreateModelRequest(...))                    # bytes; None fields left out, defaults sent
    resp = decode(CreateModelResponse, response_bytes)        # typed; ResponseValidationError if it does not fit
    obj = convert(GetInfoResponse, already_parsed_dict)        # same checks for an already-parsed JSON value
"""

from __future__ import annotations

import re
from typing import Any, TypeVar, cast, overload

import msgspec
import numpy as np
import numpy.typing as npt

from ..errors import ResponseValidationError
from ._base import use_to_builtins
from ._sampling import TopkLogprobs

__all__ = [
    "JSONBytes",
    "convert",
    "decode",
    "decode_any",
    "decode_json",
    "decoder_for",
    "encode",
    "encode_json",
    "to_builtins",
]

T = TypeVar("T")

#: Anything a JSON body may arrive as.
JSONBytes = bytes | bytearray | memoryview | str


def _enc_hook(obj: Any) -> Any:
    # Numpy-backed fields (TensorData.data, SampledSequence.tokens / logprobs, SampleResponse.prompt_logprobs) go out
    # as the lists they stand for (a NaN, "unscored" in prompt_logprobs, is written as null); a top-k pair of
    # matrices (TopkLogprobs) as its list of entries.
    if isinstance(obj, np.ndarray):
        arr = cast("npt.NDArray[Any]", obj)
        values: list[Any] = arr.tolist()
        if arr.ndim == 1 and arr.dtype.kind == "f":
            # JSON has no NaN: null, as msgspec writes it (to_builtins would otherwise keep a float nan).
            nan_at: list[int] = np.flatnonzero(np.isnan(arr)).tolist()
            for i in nan_at:
                values[i] = None
        return values
    if isinstance(obj, TopkLogprobs):
        return obj.to_lists()
    raise NotImplementedError(f"Encoding objects of type {type(obj).__name__} is unsupported")


_ENCODER = msgspec.json.Encoder(enc_hook=_enc_hook)
_ANY_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}

_AT_RE = re.compile(r"\s+-\s+at\s+`(\$[^`]*)`\s*$")
_MISSING_RE = re.compile(r"^Object missing required field `([^`]*)`")


def encode(obj: Any) -> bytes:
    """Encode a wire Struct (or any JSON-able value) as JSON bytes, with the one module-level encoder.

    Numpy arrays (the storage of numpy-backed tensors and sequences) are encoded as the lists they hold.
    """
    return _ENCODER.encode(obj)


def to_builtins(obj: Any) -> Any:
    """The JSON value of ``obj`` as Python builtins (dict/list/str/...), with the same field rules as ``encode``."""
    return msgspec.to_builtins(obj, enc_hook=_enc_hook)


use_to_builtins(to_builtins)


def decoder_for(type_: type[T]) -> msgspec.json.Decoder[T]:
    """The cached decoder for ``type_`` (built on first use, then reused)."""
    dec = _DECODERS.get(type_)
    if dec is None:
        dec = _DECODERS.setdefault(type_, msgspec.json.Decoder(type_))
    return dec


def _type_name(type_: Any) -> str:
    name = getattr(type_, "__name__", None)
    return name if isinstance(name, str) else repr(type_)


def _as_bytes(data: JSONBytes) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8", "replace")
    return bytes(data)


def _validation_error(
    exc: msgspec.MsgspecError, type_: Any, data: JSONBytes | None, request_id: str | None
) -> ResponseValidationError:
    body = _as_bytes(data) if data is not None else None
    message = str(exc)
    name = _type_name(type_)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return ResponseValidationError(
            f"invalid {name} response: not valid JSON ({message})", body=body, request_id=request_id
        )
    at = _AT_RE.search(message)
    path = at.group(1) if at else "$"
    detail = message[: at.start()] if at else message
    missing = _MISSING_RE.match(detail)
    field = f"{path}.{missing.group(1)}" if missing else path
    return ResponseValidationError(
        f"invalid {name} response: field {field}: {detail}", field=field, body=body, request_id=request_id
    )


@overload
def decode(type_: type[T], data: JSONBytes, *, request_id: str | None = None) -> T: ...
@overload
def decode(type_: Any, data: JSONBytes, *, request_id: str | None = None) -> Any: ...
def decode(type_: Any, data: JSONBytes, *, request_id: str | None = None) -> Any:
    """Decode a JSON body as ``type_`` (a Struct, a union, ``list[...]``, ...).

    Unknown fields are ignored; missing required fields, wrong types and bad literals raise
    :class:`~tinkex_trio.errors.ResponseValidationError` with ``.field`` set to the JSON path (``"$.metrics"``).
    """
    try:
        return decoder_for(type_).decode(data)
    except msgspec.MsgspecError as exc:
        raise _validation_error(exc, type_, data, request_id) from None


def decode_any(data: JSONBytes, *, request_id: str | None = None) -> Any:
    """Parse a JSON body into builtins, without a schema. Malformed JSON raises ResponseValidationError."""
    try:
        return _ANY_DECODER.decode(data)
    except msgspec.MsgspecError as exc:
        raise _validation_error(exc, "JSON", data, request_id) from None


@overload
def convert(type_: type[T], obj: Any, *, request_id: str | None = None) -> T: ...
@overload
def convert(type_: Any, obj: Any, *, request_id: str | None = None) -> Any: ...
def convert(type_: Any, obj: Any, *, request_id: str | None = None) -> Any:
    """Validate an already-parsed JSON value (e.g. ``response.json()``) as ``type_``, with ``decode``'s rules."""
    try:
        return msgspec.convert(obj, type_)
    except msgspec.MsgspecError as exc:
        raise _validation_error(exc, type_, None, request_id) from None


#: Aliases, for call sites that want to say which format they speak.
encode_json = encode
decode_json = decode
