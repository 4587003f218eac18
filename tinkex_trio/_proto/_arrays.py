"""Arrays on the protobuf wire (protocol §5): raw little-endian bytes ↔ numpy ↔ :class:`~tinkex_trio.types.TensorData`.

The building blocks of :mod:`tinkex_trio._proto._codec`: dtype tables, packing token ids and floats, and the
``Tensor`` message (dense or sparse CSR) in both directions. Converted with numpy in bulk: no Python loop runs per
value. A body that does not decode raises :class:`ProtoDecodeError` naming where.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt

from ..types import TensorData, TensorDtype
from ..types._tensor import stored_values
from . import tinkex_wire_pb2 as pb

__all__ = [
    "F32",
    "I32",
    "I32_MAX",
    "I32_MIN",
    "I64",
    "MAX_FIELDLESS_DATUMS",
    "TO_WIRE_DTYPE",
    "AnyArray",
    "Body",
    "ProtoDecodeError",
    "float32_bytes",
    "frombuffer",
    "int32_bytes",
    "owned",
    "read_tensor",
    "tensor_values",
    "widen",
    "wire_dtype",
    "write_tensor",
]

F32: Final = np.dtype("<f4")
I32: Final = np.dtype("<i4")
I64: Final = np.dtype("<i8")
U16: Final = np.dtype("<u2")
I64_MAX: Final = 2**63 - 1
I32_MIN: Final = -(2**31)
I32_MAX: Final = 2**31 - 1
#: A result record with no fields costs no bytes per datum, so its datum count is capped (real chunks hold <= 1024).
MAX_FIELDLESS_DATUMS: Final = 1 << 20

IntArray: TypeAlias = npt.NDArray[np.int64]
AnyArray: TypeAlias = npt.NDArray[Any]

Body: TypeAlias = bytes | bytearray | memoryview

# Proto dtype -> (numpy dtype of the bytes, the TensorData dtype it widens to).
WIRE_DTYPES: Final[dict[int, tuple[np.dtype[Any], TensorDtype]]] = {
    pb.DTYPE_FLOAT32: (F32, "float32"),
    pb.DTYPE_INT64: (I64, "int64"),
    pb.DTYPE_INT32: (I32, "int64"),
    pb.DTYPE_BFLOAT16: (U16, "float32"),
}
TO_WIRE_DTYPE: Final[dict[str, pb.DType]] = {"float32": pb.DTYPE_FLOAT32, "int64": pb.DTYPE_INT64}
STRUCT_CODES: Final[dict[str, str]] = {"float32": "f", "int64": "q"}


class ProtoDecodeError(ValueError):
    """A protobuf body that does not decode into valid messages.

    Raised as-is by :func:`decode_forward_backward_request` (the simulator answers 400 with the message);
    the result decoders turn it into :class:`~tinkex_trio.errors.ResponseValidationError`.

    Attributes:
        path: where in the message the problem is, e.g. ``$.data[3].loss_fn_inputs.weights``.
    """

    path: str

    def __init__(self, message: str, path: str = "$") -> None:
        super().__init__(f"{message} (at {path})")
        self.path = path


# ---------------------------------------------------------------------------------------------------------------
# numpy helpers
# ---------------------------------------------------------------------------------------------------------------


def packed(code: str, values: Sequence[Any]) -> bytes | None:
    """``values`` packed little-endian by :mod:`struct` (2-3x faster than numpy for Python lists), or ``None`` when
    a value does not fit ``code`` exactly (a float in an integer tensor, a float32 overflow, ``None``): the numpy
    path then converts or rejects it with a precise error."""
    try:
        return struct.pack(f"<{len(values)}{code}", *values)
    except (struct.error, OverflowError, TypeError):
        return None


def int32_bytes(values: Sequence[int] | AnyArray, what: str) -> bytes:
    if isinstance(values, np.ndarray):
        out_of_range = (
            values.dtype != I32
            and bool(values.size)
            and (values.dtype.kind not in "iu" or int(values.min()) < I32_MIN or int(values.max()) > I32_MAX)
        )
        if out_of_range:
            raise ValueError(f"{what}: every value must be an integer in the int32 range")
        return values.astype(I32, copy=False).tobytes()
    fast = packed("i", values)
    if fast is not None:
        return fast
    try:
        return np.asarray(values, dtype=I32).tobytes()
    except (OverflowError, TypeError, ValueError) as exc:
        raise ValueError(f"{what}: every value must be an integer in the int32 range ({exc})") from None


def float32_bytes(values: Sequence[float | None] | AnyArray, what: str) -> bytes:
    if isinstance(values, np.ndarray):
        if values.dtype.kind in "fiub":
            with np.errstate(over="ignore"):
                return values.astype(F32, copy=False).tobytes()
    else:
        fast = packed("f", values)
        if fast is not None:
            return fast
    # None becomes NaN (numpy's own conversion for float dtypes); beyond the float32 range, +-inf.
    try:
        with np.errstate(over="ignore"):
            return np.asarray(values, dtype=np.float64).astype(F32).tobytes()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: every value must be a number ({exc})") from None


def int64_array(values: Sequence[int | float] | AnyArray, what: str) -> IntArray:
    """``values`` as int64, rejecting non-integers and values out of range (never a silent truncation)."""
    raw: AnyArray = np.asarray(values)
    kind = raw.dtype.kind
    if raw.size == 0:
        return np.zeros(0, dtype=I64)
    if kind in "ib" or (kind == "u" and int(raw.max()) <= I64_MAX):
        return raw.astype(I64, copy=False)
    if kind == "f":
        if not bool(np.all(np.isfinite(raw))) or not bool(np.array_equal(raw, np.trunc(raw))):
            raise ValueError(f"{what}: an int64 tensor holds a non-integral value")
        if float(np.max(np.abs(raw))) >= 2.0**63:
            raise ValueError(f"{what}: a value is out of the int64 range")
        return raw.astype(I64)
    raise ValueError(f"{what}: an int64 tensor must hold integers in the int64 range, got {raw.dtype} values")


def tensor_values(td: TensorData, what: str) -> AnyArray:
    """The flat values of ``td`` (the listed values, for a sparse tensor) in its little-endian wire dtype.

    A numpy-backed tensor's own array when it already is in that dtype (no copy).
    """
    stored = stored_values(td)
    if td.dtype == "float32":
        try:
            with np.errstate(over="ignore"):
                return np.asarray(stored, dtype=F32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what}: a float32 tensor must hold numbers ({exc})") from None
    if td.dtype == "int64":
        return int64_array(stored, what).reshape(-1)
    raise ValueError(f"{what}: unsupported tensor dtype {td.dtype!r} (float32 or int64)")


def frombuffer(data: bytes, dtype: np.dtype[Any], path: str) -> AnyArray:
    """A read-only view of ``data`` (no copy)."""
    if len(data) % dtype.itemsize:
        raise ProtoDecodeError(f"{len(data)} bytes is not a whole number of {dtype.itemsize}-byte values", path)
    return np.frombuffer(data, dtype=dtype)


def owned(values: AnyArray) -> AnyArray:
    """``values`` as a writable array: a read-only view of message bytes is copied (once, in bulk), as the
    official SDK does, so that a caller may write to what ``to_numpy()`` returns (and torch takes it as is)."""
    return values if values.flags.writeable else values.copy()


def widen(raw: AnyArray, wire_dtype: int) -> AnyArray:
    """BF16 (uint16 bits) -> float32, INT32 -> int64; other dtypes unchanged."""
    if wire_dtype == pb.DTYPE_BFLOAT16:
        return (raw.astype(np.uint32) << 16).view(np.float32)  # native order after astype
    if wire_dtype == pb.DTYPE_INT32:
        return raw.astype(I64)
    return raw


def wire_dtype(dtype: int, path: str) -> tuple[np.dtype[Any], TensorDtype]:
    found = WIRE_DTYPES.get(dtype)
    if found is None:
        raise ProtoDecodeError(f"unsupported tensor dtype {dtype}", path)
    return found


def make_tensor(path: str, **fields: Any) -> TensorData:
    try:
        return TensorData(**fields)
    except ValueError as exc:
        raise ProtoDecodeError(f"invalid tensor: {exc}", path) from None


# ---------------------------------------------------------------------------------------------------------------
# Tensor
# ---------------------------------------------------------------------------------------------------------------


def write_tensor(msg: pb.Tensor, td: TensorData, what: str, *, always_shape: bool) -> None:
    sparse = td.sparse_crow_indices is not None or td.sparse_col_indices is not None
    code = STRUCT_CODES.get(td.dtype)
    stored = stored_values(td)
    # A list packs fastest with struct; an array (numpy-backed tensor) goes out as its bytes.
    fast = None if sparse or code is None or type(stored) is not list else packed(code, stored)
    if fast is not None:
        dense, size = fast, len(stored)
    else:
        values = tensor_values(td, what)
        dense, size = values.tobytes(), values.size
    msg.dtype = TO_WIRE_DTYPE[td.dtype]
    if sparse:
        if td.sparse_crow_indices is None or td.sparse_col_indices is None:
            raise ValueError(f"{what}: sparse_crow_indices and sparse_col_indices come together")
        if td.shape is None:
            raise ValueError(f"{what}: a sparse tensor needs a shape")
        msg.shape.extend(td.shape)
        csr = msg.sparse_csr
        csr.values = dense
        csr.crow_indices = int64_array(td.sparse_crow_indices, f"{what}.sparse_crow_indices").tobytes()
        csr.col_indices = int64_array(td.sparse_col_indices, f"{what}.sparse_col_indices").tobytes()
        return
    if td.shape is not None:
        if math.prod(td.shape) != size:
            raise ValueError(f"{what}: {size} values do not fill shape {td.shape}")
        msg.shape.extend(td.shape)
    elif always_shape:
        msg.shape.append(size)
    msg.dense = dense


def read_tensor(msg: pb.Tensor, path: str) -> TensorData:
    np_dtype, dtype = wire_dtype(msg.dtype, f"{path}.dtype")
    shape = list(msg.shape) or None
    if msg.WhichOneof("encoding") == "sparse_csr":
        csr = msg.sparse_csr
        values = owned(widen(frombuffer(csr.values, np_dtype, f"{path}.sparse_csr.values"), msg.dtype))
        # The indices stay lists (TensorData's sparse fields are lists, as in the official SDK).
        crow: list[int] = frombuffer(csr.crow_indices, I64, f"{path}.sparse_csr.crow_indices").tolist()
        cols: list[int] = frombuffer(csr.col_indices, I64, f"{path}.sparse_csr.col_indices").tolist()
        return make_tensor(
            path, data=values, dtype=dtype, shape=shape, sparse_crow_indices=crow, sparse_col_indices=cols
        )
    # No encoding set reads as an empty dense tensor.
    dense = owned(widen(frombuffer(msg.dense, np_dtype, f"{path}.dense"), msg.dtype))
    return make_tensor(path, data=dense, dtype=dtype, shape=shape)
