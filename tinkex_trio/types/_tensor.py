"""TensorData: a flattened tensor on the wire (protocol §4), dense or sparse CSR, with numpy conversion."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast, overload

import numpy as np
import numpy.typing as npt

from ..errors import InvalidArgumentError, InvalidArgumentTypeError
from ._base import WireStruct

__all__ = [
    "LOSS_FN_INPUT_DTYPES",
    "ArrayBackedList",
    "TensorData",
    "TensorDtype",
    "loss_fn_input",
    "min_value",
    "stored_values",
    "to_tensor_data",
]

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

_NP_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype(np.float32), "int64": np.dtype(np.int64)}


def _wire_dtype_of(arr: npt.NDArray[Any]) -> TensorDtype:
    kind = arr.dtype.kind
    if kind == "f":
        return "float32"
    if kind in "iub":
        return "int64"
    raise TypeError(f"TensorData holds float32 or int64 values; cannot convert a {arr.dtype} array")


def _is_integral(arr: npt.NDArray[Any]) -> bool:
    return bool(np.all(np.isfinite(arr))) and bool(np.array_equal(arr, np.trunc(arr)))


def _array_to_list(value: Any) -> Any:
    return value.tolist()


class ArrayBackedList:
    """The descriptor of a Struct field that holds a Python list *or* a numpy-side value (the field's storage): a
    1-D numpy array by default, or another ``kind`` (e.g. :class:`~tinkex_trio.types.TopkLogprobs`) with its own
    ``to_list``.

    msgspec reads and writes a field through its slot directly (``__init__``, encoding, ``replace``, ``asdict``,
    pickling), never through the class attribute; this descriptor replaces the class attribute, so that only
    Python attribute access goes through it. Reading the field turns a stored ``kind`` value into its list form once
    (``to_list``) and stores that list, so that the field then behaves as a plain list field (reads are free,
    mutations stick). :meth:`raw` reads the storage as it is, list or array, without converting it.
    """

    __slots__ = ("_kind", "_name", "_slot", "_to_list")

    def __init__(
        self, owner: type, name: str, kind: type = np.ndarray, to_list: Callable[[Any], Any] = _array_to_list
    ) -> None:
        self._name = name
        self._kind = kind
        self._to_list = to_list
        self._slot: Any = owner.__dict__[name]  # the member descriptor msgspec made for the field's slot
        setattr(owner, name, self)

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> ArrayBackedList: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> Any: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value = self._slot.__get__(obj, owner)
        if type(value) is self._kind:
            value = self._to_list(value)
            self._slot.__set__(obj, value)
        return value

    def __set__(self, obj: object, value: object) -> None:
        self._slot.__set__(obj, value)

    def raw(self, obj: object) -> Any:
        """The field's storage as it is: a list, a numpy array, or whatever else was assigned (``None``)."""
        return self._slot.__get__(obj, type(obj))

    def __repr__(self) -> str:
        return f"<array-backed list field {self._name!r}>"


class TensorData(WireStruct, gc=False):
    """A tensor as ``{data (flattened), dtype, shape?, sparse_crow_indices?, sparse_col_indices?}``.

    Dense: ``data`` holds every value in row-major order and ``shape`` (if given) its dimensions.
    Sparse CSR (2-D): ``data`` holds the listed values, ``sparse_crow_indices`` the ``rows + 1`` row pointers,
    ``sparse_col_indices`` the column of each value, and ``shape`` is required; the other cells take a pad value
    chosen by the reader (0 by default), which the wire does not carry.

    Storage: the values are kept as a flat numpy array of the wire dtype (float32 or int64) when the tensor comes
    from numpy (:meth:`from_numpy`, a ``Datum`` given arrays or lists, a protobuf result), and as the Python list
    when it comes from a list or a JSON body. ``data`` always reads as a list: an array is turned into one on the
    first read (``tolist``), which then becomes the storage, so that ``td.data`` stays the plain, mutable list
    field it always was. Hot paths never read ``data``: :meth:`to_numpy` returns the array itself, reshaped (no
    copy: a view that shares memory with the tensor, as the official SDK's does), the protobuf encoder writes its
    bytes, and JSON encoding (:func:`tinkex_trio.types.encode`, whose ``enc_hook`` turns arrays into lists) gives
    the same bytes as for the list. A numpy array is taken without a copy when it already has the wire dtype and
    is contiguous and writable (a read-only one is copied, as the official SDK does); :attr:`num_values` is
    ``len(data)`` without the conversion.

    Encode a TensorData (or a Struct holding one) with :func:`tinkex_trio.types.encode` / ``to_builtins``: a bare
    ``msgspec.json.encode`` of a numpy-backed tensor needs an ``enc_hook`` that turns arrays into lists.
    """

    data: list[int | float]
    dtype: TensorDtype
    shape: list[int] | None = None
    sparse_crow_indices: list[int] | None = None
    sparse_col_indices: list[int] | None = None

    if TYPE_CHECKING:
        # The constructor as callers see it: like the official SDK's, it takes a list or a numpy array.
        def __init__(
            self,
            *,
            data: Sequence[int | float] | npt.ArrayLike | None,
            dtype: TensorDtype,
            shape: Sequence[int] | None = None,
            sparse_crow_indices: list[int] | None = None,
            sparse_col_indices: list[int] | None = None,
        ) -> None: ...

    def __post_init__(self) -> None:
        # Cheap structural checks only (they run on every decode): the values themselves are checked by to_numpy.
        # A decoded tensor holds a list (JSON) or a flat array of its dtype (protobuf); anything else, or an array
        # of another dtype or shape, was passed by a caller.
        values: list[int | float] | npt.NDArray[Any] = _DATA.raw(self)
        if self.dtype not in _NP_DTYPES:
            raise InvalidArgumentError(f"dtype must be 'float32' or 'int64', got {self.dtype!r}", argument="dtype")
        if type(values) is not list and not (
            type(values) is np.ndarray
            and values.ndim == 1
            and values.dtype == _NP_DTYPES[self.dtype]
            and values.flags.writeable
        ):
            values = self._adopt_array(values)
        if self.shape is not None and type(self.shape) is not list:
            self.shape = list(self.shape)
        if self.sparse_crow_indices is None and self.sparse_col_indices is None:
            if self.shape is not None and math.prod(self.shape) != len(values):
                raise ValueError(f"{len(values)} values do not fill shape {self.shape}")
            return
        if self.sparse_crow_indices is None or self.sparse_col_indices is None:
            raise ValueError("sparse_crow_indices and sparse_col_indices come together")
        if self.shape is None or len(self.shape) != 2:
            raise ValueError("a sparse CSR tensor needs a 2-D shape")
        if len(self.sparse_crow_indices) != self.shape[0] + 1:
            raise ValueError("sparse_crow_indices needs rows + 1 entries")
        if len(self.sparse_col_indices) != len(values):
            raise ValueError("sparse_col_indices needs one entry per value")

    def _adopt_array(self, given: object) -> npt.NDArray[Any]:
        """Store array-like ``data`` as the flat array of ``dtype`` values the wire carries (shape kept if N-D)."""
        if given is None:
            given = np.zeros(0, dtype=_NP_DTYPES[self.dtype])
        try:
            arr = np.asarray(given)
        except ValueError as exc:
            raise InvalidArgumentError(f"data must be a rectangular numeric array: {exc}", argument="data") from None
        if arr.dtype.kind not in "fiub":
            raise InvalidArgumentTypeError(f"data must be numeric, got values of dtype {arr.dtype}", argument="data")
        if self.dtype == "int64" and arr.dtype.kind == "f" and not _is_integral(arr):
            raise InvalidArgumentError("cannot store non-integral floats in an int64 TensorData", argument="data")
        converted = arr.astype(_NP_DTYPES[self.dtype], copy=False)
        flat = converted.reshape(-1)
        if not flat.flags.writeable:
            flat = flat.copy()
        _DATA.__set__(self, flat)
        if self.shape is None and converted.ndim > 1:
            self.shape = list(converted.shape)
        return flat

    def __eq__(self, other: object) -> bool:
        if type(other) is not TensorData:
            return NotImplemented
        if (self.dtype, self.shape, self.sparse_crow_indices, self.sparse_col_indices) != (
            other.dtype,
            other.shape,
            other.sparse_crow_indices,
            other.sparse_col_indices,
        ):
            return False
        mine: list[int | float] | npt.NDArray[Any] = _DATA.raw(self)
        theirs: list[int | float] | npt.NDArray[Any] = _DATA.raw(other)
        if type(mine) is list and type(theirs) is list:
            return mine == theirs
        return bool(np.array_equal(np.asarray(mine), np.asarray(theirs)))

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    # -- construction -----------------------------------------------------------------------------------------

    @classmethod
    def from_torch(cls, tensor: Any, dtype: TensorDtype | None = None) -> TensorData:
        """A dense TensorData from a torch tensor (detached, moved to the CPU), as :meth:`from_numpy`. Needs
        PyTorch, imported only here."""
        _torch()
        return cls.from_numpy(tensor.detach().cpu().numpy(), dtype)

    def to_torch(self, pad_value: int | float = 0) -> Any:
        """The dense tensor as a torch tensor (sharing :meth:`to_numpy`'s memory where it can). Needs PyTorch."""
        torch = _torch()
        return torch.from_numpy(np.ascontiguousarray(self.to_numpy(pad_value)))

    @classmethod
    def from_numpy(cls, array: npt.ArrayLike, dtype: TensorDtype | None = None) -> TensorData:
        """A dense TensorData from an array. Floats become float32, integers (and bools) int64, unless ``dtype``.

        No copy when the array already has that dtype (and is contiguous and writable): the tensor shares its memory.
        """
        arr = np.asarray(array)
        natural = _wire_dtype_of(arr)  # rejects strings, objects, complex
        wire = dtype if dtype is not None else natural
        if wire == "int64" and natural == "float32" and not _is_integral(arr):
            raise ValueError("cannot convert non-integral floats to an int64 tensor")
        converted = arr.astype(_NP_DTYPES[wire], copy=False)
        return cls(data=converted.reshape(-1), dtype=wire, shape=list(converted.shape))

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
        crow_list: list[int] = crow.tolist()
        col_list: list[int] = cols.astype(np.int64).tolist()
        return cls(
            data=converted[mask],
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
    def num_values(self) -> int:
        """``len(data)`` (the listed values, for a sparse tensor), without turning an array into a list."""
        return len(_DATA.raw(self))

    @property
    def numel(self) -> int:
        """The number of cells of the dense tensor."""
        if self.shape is None:
            return self.num_values
        return math.prod(self.shape)

    def to_numpy(self, pad_value: int | float = 0) -> npt.NDArray[Any]:
        """The dense array (float32 or int64), shaped by ``shape``; a sparse tensor is filled with ``pad_value``.

        A dense numpy-backed tensor returns its own array, reshaped (a view: writing to it changes the tensor).
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
        stored = _DATA.raw(self)
        if type(stored) is np.ndarray and stored.dtype == np_dtype:
            return stored.reshape(-1)
        if self.dtype == "int64":
            raw = np.asarray(stored)
            if raw.size and raw.dtype.kind not in "iu" and (raw.dtype.kind != "f" or not _is_integral(raw)):
                raise ValueError("an int64 TensorData holds non-integer values")
            return raw.astype(np_dtype, copy=False).reshape(-1)
        return np.asarray(stored, dtype=np_dtype).reshape(-1)

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


_DATA = ArrayBackedList(TensorData, "data")


def stored_values(td: TensorData) -> list[int | float] | npt.NDArray[Any]:
    """``td``'s values as stored: the list, or the flat numpy array (never converted; for the codecs)."""
    stored: list[int | float] | npt.NDArray[Any] = _DATA.raw(td)
    return stored


def min_value(td: TensorData) -> int | float:
    """The smallest stored value of a non-empty tensor (``min`` of the list, or of the array)."""
    stored = _DATA.raw(td)
    if type(stored) is np.ndarray:
        return cast("int | float", stored.min().item())
    return min(cast("Sequence[int | float]", stored))


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


def _torch() -> Any:
    try:
        import torch  # pyright: ignore[reportMissingImports]
    except ImportError:
        raise ImportError("TensorData.from_torch / to_torch need PyTorch (pip install torch)") from None
    return torch  # pyright: ignore[reportUnknownVariableType]
