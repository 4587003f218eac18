"""TensorData: a flattened tensor on the wire (protocol §4), dense or sparse CSR, with numpy conversion."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias, cast

import numpy as np
import numpy.typing as npt

from ..errors import InvalidArgumentError, InvalidArgumentTypeError
from ._base import WireStruct

__all__ = ["LOSS_FN_INPUT_DTYPES", "TensorData", "TensorDtype", "loss_fn_input", "to_tensor_data"]

TensorDtype: TypeAlias = Literal["float32", "int64"]

#: The wire dtype of each well-known loss_fn_inputs key (protocol §4): used when plain lists or arrays are converted.
LOSS_FN_INPUT_DTYPES: dict[str, TensorDtype] = {
    "target_tokens": "int64",
    "weights": "float32",
    "advantages": "float32",
    "logprobs": "float32",
    "clip_low_threshold": "float32",
    "clip_high_threshold": "float32",
    "sequence_ratio_mask": "float32",
}

_NP_DTYPES: dict[str, type[np.generic]] = {"float32": np.float32, "int64": np.int64}


def _wire_dtype_of(arr: npt.NDArray[Any]) -> TensorDtype:
    kind = arr.dtype.kind
    if kind == "f":
        return "float32"
    if kind in "iub":
        return "int64"
    raise TypeError(f"TensorData holds float32 or int64 values; cannot convert a {arr.dtype} array")


def _is_integral(arr: npt.NDArray[Any]) -> bool:
    return bool(np.all(np.isfinite(arr))) and bool(np.array_equal(arr, np.trunc(arr)))


class TensorData(WireStruct, gc=False):
    """A tensor as ``{data (flattened), dtype, shape?, sparse_crow_indices?, sparse_col_indices?}``.

    Dense: ``data`` holds every value in row-major order and ``shape`` (if given) its dimensions.
    Sparse CSR (2-D): ``data`` holds the listed values, ``sparse_crow_indices`` the ``rows + 1`` row pointers,
    ``sparse_col_indices`` the column of each value, and ``shape`` is required; the other cells take a pad value
    chosen by the reader (0 by default), which the wire does not carry.
    """

    data: list[int | float]
    dtype: TensorDtype
    shape: list[int] | None = None
    sparse_crow_indices: list[int] | None = None
    sparse_col_indices: list[int] | None = None

    def __post_init__(self) -> None:
        # Cheap structural checks only (they run on every decode): the values themselves are checked by to_numpy.
        # A decoded tensor always holds a list; anything else (a numpy array, a tuple) was passed by a caller.
        if type(self.data) is not list:
            self._adopt_array()
        if self.dtype not in _NP_DTYPES:
            raise InvalidArgumentError(f"dtype must be 'float32' or 'int64', got {self.dtype!r}", argument="dtype")
        if self.shape is not None and type(self.shape) is not list:
            self.shape = list(self.shape)
        if self.sparse_crow_indices is None and self.sparse_col_indices is None:
            if self.shape is not None and math.prod(self.shape) != len(self.data):
                raise ValueError(f"{len(self.data)} values do not fill shape {self.shape}")
            return
        if self.sparse_crow_indices is None or self.sparse_col_indices is None:
            raise ValueError("sparse_crow_indices and sparse_col_indices come together")
        if self.shape is None or len(self.shape) != 2:
            raise ValueError("a sparse CSR tensor needs a 2-D shape")
        if len(self.sparse_crow_indices) != self.shape[0] + 1:
            raise ValueError("sparse_crow_indices needs rows + 1 entries")
        if len(self.sparse_col_indices) != len(self.data):
            raise ValueError("sparse_col_indices needs one entry per value")

    def _adopt_array(self) -> None:
        """Turn array-like ``data`` into the flat list of ``dtype`` values the wire carries (shape kept if N-D)."""
        if self.dtype not in _NP_DTYPES:
            raise InvalidArgumentError(f"dtype must be 'float32' or 'int64', got {self.dtype!r}", argument="dtype")
        try:
            arr = np.asarray(self.data)
        except ValueError as exc:
            raise InvalidArgumentError(f"data must be a rectangular numeric array: {exc}", argument="data") from None
        if arr.dtype.kind not in "fiub":
            raise InvalidArgumentTypeError(f"data must be numeric, got values of dtype {arr.dtype}", argument="data")
        if self.dtype == "int64" and arr.dtype.kind == "f" and not _is_integral(arr):
            raise InvalidArgumentError("cannot store non-integral floats in an int64 TensorData", argument="data")
        converted = arr.astype(_NP_DTYPES[self.dtype], copy=False)
        values: list[int | float] = converted.ravel().tolist()
        self.data = values
        if self.shape is None and converted.ndim > 1:
            self.shape = list(converted.shape)

    # -- construction -----------------------------------------------------------------------------------------

    @classmethod
    def from_numpy(cls, array: npt.ArrayLike, dtype: TensorDtype | None = None) -> TensorData:
        """A dense TensorData from an array. Floats become float32, integers (and bools) int64, unless ``dtype``."""
        arr = np.asarray(array)
        natural = _wire_dtype_of(arr)  # rejects strings, objects, complex
        wire = dtype if dtype is not None else natural
        if wire == "int64" and natural == "float32" and not _is_integral(arr):
            raise ValueError("cannot convert non-integral floats to an int64 tensor")
        converted = arr.astype(_NP_DTYPES[wire], copy=False)
        values: list[int | float] = converted.ravel().tolist()
        return cls(data=values, dtype=wire, shape=list(converted.shape))

    @classmethod
    def from_list(cls, values: Sequence[int | float], dtype: TensorDtype | None = None) -> TensorData:
        """A 1-D (or, for nested lists, N-D) TensorData from plain Python numbers."""
        return cls.from_numpy(np.asarray(values), dtype)

    @classmethod
    def sparse_from_numpy(cls, array: npt.ArrayLike, pad_value: int | float = 0) -> TensorData:
        """A sparse CSR TensorData from a dense 2-D array: the cells equal to ``pad_value`` are left out."""
        arr = np.asarray(array)
        if arr.ndim != 2:
            raise ValueError(f"sparse CSR needs a 2-D array, got {arr.ndim}-D")
        wire = _wire_dtype_of(arr)
        converted = arr.astype(_NP_DTYPES[wire], copy=False)
        mask = converted != pad_value
        crow = np.zeros(converted.shape[0] + 1, dtype=np.int64)
        np.cumsum(mask.sum(axis=1), out=crow[1:])
        cols = np.nonzero(mask)[1]
        values: list[int | float] = converted[mask].tolist()
        crow_list: list[int] = crow.tolist()
        col_list: list[int] = cols.astype(np.int64).tolist()
        return cls(
            data=values,
            dtype=wire,
            shape=list(converted.shape),
            sparse_crow_indices=crow_list,
            sparse_col_indices=col_list,
        )

    # -- inspection and conversion ----------------------------------------------------------------------------

    @property
    def is_sparse(self) -> bool:
        """Whether the tensor is in sparse CSR form."""
        return self.sparse_crow_indices is not None

    @property
    def numel(self) -> int:
        """The number of cells of the dense tensor."""
        if self.shape is None:
            return len(self.data)
        return int(np.prod(self.shape, dtype=np.int64))

    def to_numpy(self, pad_value: int | float = 0) -> npt.NDArray[Any]:
        """The dense array (float32 or int64), shaped by ``shape``; a sparse tensor is filled with ``pad_value``.

        ``ValueError`` if the fields are inconsistent (wrong number of values, bad CSR indices).
        """
        values = self._values()
        if self.sparse_crow_indices is None and self.sparse_col_indices is None:
            if self.shape is None:
                return values
            if values.size != self.numel:
                raise ValueError(f"TensorData has {values.size} values for shape {self.shape}")
            return values.reshape(self.shape)
        return self._sparse_to_numpy(values, pad_value)

    def _values(self) -> npt.NDArray[Any]:
        np_dtype = _NP_DTYPES[self.dtype]
        if self.dtype == "int64":
            raw = np.asarray(self.data)
            if raw.size and raw.dtype.kind not in "iu" and (raw.dtype.kind != "f" or not _is_integral(raw)):
                raise ValueError("an int64 TensorData holds non-integer values")
            return raw.astype(np_dtype, copy=False)
        return np.asarray(self.data, dtype=np_dtype)

    def _sparse_to_numpy(self, values: npt.NDArray[Any], pad_value: int | float) -> npt.NDArray[Any]:
        if self.sparse_crow_indices is None or self.sparse_col_indices is None:
            raise ValueError("sparse TensorData needs both sparse_crow_indices and sparse_col_indices")
        if self.shape is None or len(self.shape) != 2:
            raise ValueError(f"sparse TensorData needs a 2-D shape, got {self.shape}")
        rows, ncols = self.shape
        crow = np.asarray(self.sparse_crow_indices, dtype=np.int64)
        cols = np.asarray(self.sparse_col_indices, dtype=np.int64)
        if crow.size != rows + 1 or (crow.size and (crow[0] != 0 or crow[-1] != values.size)):
            raise ValueError("sparse_crow_indices must have rows + 1 entries, from 0 to the number of values")
        counts = np.diff(crow)
        if bool(np.any(counts < 0)):
            raise ValueError("sparse_crow_indices must not decrease")
        if cols.size != values.size or (cols.size and (cols.min() < 0 or cols.max() >= ncols)):
            raise ValueError("sparse_col_indices must have one column index in [0, cols) per value")
        out = np.full((rows, ncols), pad_value, dtype=values.dtype)
        out[np.repeat(np.arange(rows), counts), cols] = values
        return out

    def tolist(self, pad_value: int | float = 0) -> list[Any]:
        """The dense tensor as (nested) Python lists."""
        out: list[Any] = self.to_numpy(pad_value).tolist()
        return out

    def to_dense(self, pad_value: int | float = 0) -> TensorData:
        """This tensor in dense form (itself, if it is already dense)."""
        if not self.is_sparse:
            return self
        return TensorData.from_numpy(self.to_numpy(pad_value), self.dtype)


def to_tensor_data(key: str, value: TensorData | npt.ArrayLike) -> TensorData:
    """Convert a loss_fn_inputs value (TensorData, numpy array, list, scalar) to TensorData.

    The wire dtype comes from the key for well-known keys (``target_tokens`` int64; ``weights``, ``advantages``,
    ``logprobs``, ... float32), else from the values (floats float32, integers int64).
    """
    if isinstance(value, TensorData):
        return value
    try:
        arr = np.asarray(value)
    except ValueError as exc:
        raise ValueError(f"{key} must be a rectangular numeric array; ragged nested lists are not supported") from exc
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{key} must be numeric, got values of dtype {arr.dtype}")
    return TensorData.from_numpy(arr, LOSS_FN_INPUT_DTYPES.get(key))


def loss_fn_input(key: str, value: object) -> TensorData:
    """Convert a ``Datum.loss_fn_inputs`` value as the official SDK's ``Datum`` does.

    A TensorData is kept; a numpy array keeps its own dtype family (floats float32, integers and bools int64); a
    list or tuple takes the wire dtype of its key (``target_tokens`` int64; ``weights``, ``advantages``, ``logprobs``,
    ``clip_*_threshold``, ``sequence_ratio_mask`` float32), or that of its values for other keys. Anything else is an
    :class:`~tinkex_trio.errors.InvalidArgumentTypeError` naming ``loss_fn_inputs[key]``.
    """
    if isinstance(value, TensorData):
        return value
    argument = f"loss_fn_inputs[{key!r}]"
    arr: npt.NDArray[Any]
    if isinstance(value, np.ndarray):
        arr = cast("npt.NDArray[Any]", value)
        wire: TensorDtype | None = None
    elif isinstance(value, list | tuple):
        try:
            arr = np.asarray(cast("Sequence[object]", value))
        except ValueError:
            raise InvalidArgumentError(
                f"{argument} must be a rectangular numeric array; ragged nested lists are not supported",
                argument=argument,
            ) from None
        wire = LOSS_FN_INPUT_DTYPES.get(key)
    else:
        raise InvalidArgumentTypeError(
            f"{argument} must be a TensorData, a numpy array or a list of numbers, got {type(value).__name__}",
            argument=argument,
        )
    if arr.dtype.kind not in "fiub":
        raise InvalidArgumentTypeError(
            f"{argument} must be numeric, got values of dtype {arr.dtype}", argument=argument
        )
    try:
        return TensorData.from_numpy(arr, wire)
    except ValueError as exc:
        raise InvalidArgumentError(f"{argument}: {exc}", argument=argument) from None
