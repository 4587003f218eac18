"""ModelInput and its chunk kinds (protocol §4), a msgspec tagged union on ``type``."""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any, Literal, TypeAlias, cast

import numpy as np
import numpy.typing as npt

from ..errors import InvalidArgumentError, InvalidArgumentTypeError
from ._base import WireStruct

__all__ = [
    "DmelChunk",
    "EncodedTextChunk",
    "ImageAssetPointerChunk",
    "ImageChunk",
    "ImageFormat",
    "ModelInput",
    "ModelInputChunk",
    "tensor_container_shape",
]

ImageFormat: TypeAlias = Literal["png", "jpeg"]

_CONSTANT_MARKER = 254
_MAX_DTYPE_BYTE = 7


class EncodedTextChunk(WireStruct, tag_field="type", tag="encoded_text", gc=False):
    """A run of token ids (ints >= 0). Its length is the token count.

    ``tokens`` may be given as any iterable of ints or a numpy integer array; it is stored as a list.
    """

    tokens: list[int]

    def __post_init__(self) -> None:
        tokens = self.tokens
        if type(tokens) is not list:  # decoded chunks always hold a list: only a caller's iterable is converted
            tokens = self.tokens = _int_list(tokens)
        # One C-level pass, cheap enough for every decode; a negative id would only fail later, on the server.
        if tokens and (lowest := min(tokens)) < 0:
            raise InvalidArgumentError(f"token ids must be >= 0, got {lowest}", argument="tokens")

    @property
    def length(self) -> int:
        """The number of tokens."""
        return len(self.tokens)


class ImageChunk(WireStruct, tag_field="type", tag="image"):
    """An inline image (``data`` is base64 on the wire). Its length is ``expected_tokens``."""

    data: bytes
    format: ImageFormat
    expected_tokens: int | None = None

    @property
    def length(self) -> int:
        """The context length the image takes: ``expected_tokens`` (ValueError when unset)."""
        if self.expected_tokens is None:
            raise ValueError("ImageChunk.length needs expected_tokens to be set")
        return self.expected_tokens


class ImageAssetPointerChunk(WireStruct, tag_field="type", tag="image_asset_pointer"):
    """An image stored elsewhere. Not encodable as protobuf, so never usable in forward_backward."""

    format: ImageFormat
    location: str
    expected_tokens: int | None = None

    @property
    def length(self) -> int:
        """The context length the image takes: ``expected_tokens`` (ValueError when unset)."""
        if self.expected_tokens is None:
            raise ValueError("ImageAssetPointerChunk.length needs expected_tokens to be set")
        return self.expected_tokens


def _int_list(tokens: Iterable[int] | npt.NDArray[np.integer[Any]]) -> list[int]:
    """Token ids as a list of Python ints; floats and other non-integers are rejected (``TypeError``)."""
    if isinstance(tokens, np.ndarray):
        arr = cast("npt.NDArray[Any]", tokens)
        if arr.dtype.kind not in "iu":
            raise InvalidArgumentTypeError(f"token ids must be integers, got a {arr.dtype} array", argument="tokens")
        out: list[int] = arr.astype(np.int64, copy=False).ravel().tolist()
        return out
    if isinstance(tokens, str | bytes):
        raise InvalidArgumentTypeError(
            f"token ids must be an iterable of ints, got {type(tokens).__name__}", argument="tokens"
        )
    try:
        return list(map(operator.index, tokens))
    except TypeError as exc:
        raise InvalidArgumentTypeError(f"token ids must be ints: {exc}", argument="tokens") from None


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if offset >= len(data):
            raise ValueError("truncated TensorContainer header")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
        if shift > 63:
            raise ValueError("TensorContainer varint is too long")


def tensor_container_shape(data: bytes) -> tuple[int, ...]:
    """The shape in a serialized TensorContainer header: [254] dtype-byte varint(ndim) varint(dim)..."""
    if not data:
        raise ValueError("TensorContainer bytes are empty")
    offset = 1 if data[0] == _CONSTANT_MARKER else 0
    if offset >= len(data):
        raise ValueError("truncated TensorContainer header")
    if data[offset] > _MAX_DTYPE_BYTE:
        raise ValueError(f"unknown TensorContainer dtype byte {data[offset]}")
    ndim, offset = _read_varint(data, offset + 1)
    shape: list[int] = []
    for _ in range(ndim):
        dim, offset = _read_varint(data, offset)
        shape.append(dim)
    return tuple(shape)


class DmelChunk(WireStruct, tag_field="type", tag="dmel"):
    """Audio features: a serialized TensorContainer (base64 on the wire). Its length is the first dimension."""

    dmel: bytes

    @property
    def length(self) -> int:
        shape = tensor_container_shape(self.dmel)
        if not shape:
            raise ValueError("DmelChunk tensor has no dimension 0")
        return shape[0]


ModelInputChunk: TypeAlias = EncodedTextChunk | ImageChunk | ImageAssetPointerChunk | DmelChunk


class ModelInput(WireStruct):
    """The model's input: a sequence of chunks. ``ModelInput.from_ints([1, 2, 3])`` for plain tokens."""

    chunks: list[ModelInputChunk]

    @classmethod
    def from_ints(cls, tokens: Iterable[int] | npt.NDArray[np.integer[Any]]) -> ModelInput:
        """One text chunk holding ``tokens`` (any iterable of ints, numpy integer arrays included)."""
        return cls(chunks=[EncodedTextChunk(tokens=_int_list(tokens))])

    @classmethod
    def empty(cls) -> ModelInput:
        """A ModelInput with no chunks."""
        return cls(chunks=[])

    def to_ints(self) -> list[int]:
        """All tokens, in order. ``ValueError`` if any chunk is not text."""
        out: list[int] = []
        for chunk in self.chunks:
            if not isinstance(chunk, EncodedTextChunk):
                raise ValueError(f"to_ints() needs text chunks only, found a {type(chunk).__name__}")
            out.extend(chunk.tokens)
        return out

    @property
    def length(self) -> int:
        """Context length used: the sum of the chunk lengths (an image counts its expected_tokens)."""
        return sum(chunk.length for chunk in self.chunks)

    def append(self, chunk: ModelInputChunk) -> ModelInput:
        """A new ModelInput with ``chunk`` added at the end."""
        return ModelInput(chunks=[*self.chunks, chunk])

    def append_int(self, token: int) -> ModelInput:
        """A new ModelInput with one more token (merged into a trailing text chunk)."""
        return self.extend_ints([token])

    def extend_ints(self, tokens: Iterable[int] | npt.NDArray[np.integer[Any]]) -> ModelInput:
        """A new ModelInput with ``tokens`` added (merged into a trailing text chunk)."""
        new_tokens = _int_list(tokens)
        if self.chunks and isinstance(last := self.chunks[-1], EncodedTextChunk):
            return ModelInput(chunks=[*self.chunks[:-1], EncodedTextChunk(tokens=[*last.tokens, *new_tokens])])
        return ModelInput(chunks=[*self.chunks, EncodedTextChunk(tokens=new_tokens)])
