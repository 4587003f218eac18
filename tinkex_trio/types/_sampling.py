"""Sampling messages (protocol §3.3, §4): SamplingParams, SampleRequest, SampleResponse, sampling sessions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, cast

import numpy as np
import numpy.typing as npt

from ._base import WireStruct, sent
from ._model_input import ModelInput
from ._tensor import ArrayBackedList, TensorData

__all__ = [
    "CreateSamplingSessionRequest",
    "CreateSamplingSessionResponse",
    "GetSamplerResponse",
    "JoinSamplingSessionRequest",
    "JoinSamplingSessionResponse",
    "PromptAltTokens",
    "SampleRequest",
    "SampleResponse",
    "SampledSequence",
    "SamplingParams",
    "StopReason",
    "TopkEntry",
    "TopkLogprobs",
    "stored_logprobs",
    "stored_prompt_logprobs",
    "stored_tokens",
    "stored_topk",
    "stored_topk_prompt",
]

StopReason: TypeAlias = Literal["stop", "length"]
"""Why a sampled sequence ended: ``"stop"`` (a stop token or sequence, or EOS) or ``"length"`` (max_tokens)."""

#: One position's top-k list: ``(token_id, logprob)`` pairs, or ``None`` where nothing was reported.
TopkEntry: TypeAlias = list[tuple[int, float]] | None

#: The padding of the dense top-k matrices (protocol §4): token id 0 with this logprob.
TOPK_PAD_TOKEN: Final = 0
TOPK_PAD_LOGPROB: Final = -99999.0


class TopkLogprobs:
    """Top-k lists as two dense ``(length, k)`` matrices, best first: int32 ``token_ids`` and float32 ``logprobs``.

    A cell with nothing in it holds the padding pair (token id ``0``, logprob ``-99999.0``), as on the wire. This is
    what the ``*_np`` accessors of :class:`SampledSequence` and :class:`SampleResponse` return; :meth:`to_lists` gives
    the list form (``None`` for an all-padding row, trailing padding dropped) that ``topk_logprobs`` and
    ``topk_prompt_logprobs`` read as.
    """

    __slots__ = ("logprobs", "token_ids")

    token_ids: npt.NDArray[np.int32]
    logprobs: npt.NDArray[np.float32]

    def __init__(self, token_ids: npt.ArrayLike, logprobs: npt.ArrayLike) -> None:
        ids = np.asarray(token_ids)
        lps = np.asarray(logprobs)
        if ids.ndim != 2 or ids.shape != lps.shape:
            raise ValueError(f"token_ids and logprobs must be 2-D and of one shape, got {ids.shape} and {lps.shape}")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"token_ids must be integers, got {ids.dtype}")
        self.token_ids = ids.astype(np.int32, copy=False)
        self.logprobs = lps.astype(np.float32, copy=False)

    @property
    def length(self) -> int:
        """The number of positions (rows)."""
        return int(self.token_ids.shape[0])

    @property
    def k(self) -> int:
        """The width of every row (padding included)."""
        return int(self.token_ids.shape[1])

    @classmethod
    def from_lists(cls, entries: Sequence[TopkEntry], k: int | None = None) -> TopkLogprobs:
        """The dense form of a list of top-k entries; ``k`` defaults to the longest entry (at least 1)."""
        longest = max((len(e) for e in entries if e is not None), default=0)
        width = max(1, longest) if k is None else k
        if width < longest:
            raise ValueError(f"an entry has {longest} pairs, more than k={width}")
        ids = np.full((len(entries), width), TOPK_PAD_TOKEN, dtype=np.int32)
        lps = np.full((len(entries), width), TOPK_PAD_LOGPROB, dtype=np.float32)
        for row, entry in enumerate(entries):
            if entry:
                ids[row, : len(entry)] = [tok for tok, _ in entry]
                lps[row, : len(entry)] = [lp for _, lp in entry]
        return cls(ids, lps)

    def to_lists(self) -> list[TopkEntry]:
        """One entry per row: the ``(token_id, logprob)`` pairs up to the last real one, ``None`` for a padding row."""
        n, k = self.token_ids.shape
        if n == 0 or k == 0:
            return []
        real = (self.token_ids != TOPK_PAD_TOKEN) | (self.logprobs != np.float32(TOPK_PAD_LOGPROB))
        lengths: list[int] = np.where(real.any(axis=1), k - np.argmax(real[:, ::-1], axis=1), 0).tolist()
        pairs = list(zip(self.token_ids.ravel().tolist(), self.logprobs.ravel().tolist(), strict=True))
        return [pairs[i * k : i * k + length] if length else None for i, length in enumerate(lengths)]

    def __eq__(self, other: object) -> bool:
        if type(other) is not TopkLogprobs:
            return NotImplemented
        return bool(np.array_equal(self.token_ids, other.token_ids) and np.array_equal(self.logprobs, other.logprobs))

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __repr__(self) -> str:
        return f"TopkLogprobs(length={self.token_ids.shape[0]}, k={self.token_ids.shape[1]})"

    def __reduce__(self) -> tuple[type[TopkLogprobs], tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]]:
        return (TopkLogprobs, (self.token_ids, self.logprobs))


def _nan_to_none(values: npt.NDArray[Any]) -> list[float | None]:
    out: list[float | None] = values.tolist()
    for i in np.flatnonzero(np.isnan(values)).tolist():
        out[i] = None
    return out


def _none_to_nan(values: Sequence[float | None]) -> npt.NDArray[np.float32]:
    return np.array([math.nan if v is None else v for v in values], dtype=np.float32)


def _topk_np(stored: object) -> TopkLogprobs | None:
    if stored is None:
        return None
    if type(stored) is TopkLogprobs:
        return stored
    return TopkLogprobs.from_lists(cast("list[TopkEntry]", stored))  # the list form is the only other storage


class SamplingParams(WireStruct):
    """``stop``: a string, a list of strings or a list of token ids; ``None`` (left out) stops at EOS, ``[]`` never
    stops before ``max_tokens``."""

    max_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str | int] | None = None
    temperature: float = sent(1.0)
    top_k: int = sent(-1)
    top_p: float = sent(1.0)

    def __post_init__(self) -> None:
        if isinstance(self.stop, list) and self.stop:
            kinds = {type(s) for s in self.stop}
            if len(kinds) != 1:
                raise ValueError("stop must be all strings or all token ids, not a mix")


class SampleRequest(WireStruct, tag_field="type", tag="sample"):
    """``asample``. The SDK always addresses the sampler by ``sampling_session_id`` and ``seq_id``."""

    prompt: ModelInput
    sampling_params: SamplingParams
    num_samples: int = sent(1)
    base_model: str | None = None
    model_path: str | None = None
    sampling_session_id: str | None = None
    seq_id: int | None = None
    prompt_logprobs: bool | None = None
    topk_prompt_logprobs: int = sent(0)
    topk_sample_logprobs: int = sent(0)
    target_prompt_logprobs: TensorData | None = None
    prompt_alt_tokens_k: int = sent(0)
    prompt_logprobs_last_n: int | None = None
    record_stability_info: bool | None = None


class SampledSequence(WireStruct, gc=False):
    """One sample. ``sequence_id`` comes from the asample future's ``sample_sequence_ids`` (not in the protobuf).

    A sequence decoded from a protobuf result keeps ``tokens`` (int32) and ``logprobs`` (float32) as numpy
    arrays, and ``topk_logprobs`` (asked for with ``topk_sample_logprobs``) as a :class:`TopkLogprobs` pair of
    dense ``(len(tokens), k)`` matrices, as the official SDK does: :attr:`tokens_np`, :attr:`logprobs_np` and
    :attr:`topk_logprobs_np` return them without a copy. ``tokens``, ``logprobs`` and ``topk_logprobs`` always read
    as lists: the first read turns the array into a list once (``tolist``), which then is the field's storage (see
    :class:`TensorData` for how). A sequence built from lists (or decoded from JSON) holds those lists.
    """

    stop_reason: StopReason
    tokens: list[int]
    sequence_id: str | None = None
    logprobs: list[float] | None = None
    topk_logprobs: list[TopkEntry] | None = None

    if TYPE_CHECKING:
        # The constructor as callers see it: tokens and logprobs may be lists or numpy arrays.
        def __init__(
            self,
            *,
            stop_reason: StopReason,
            tokens: Sequence[int] | npt.NDArray[np.integer[Any]],
            sequence_id: str | None = None,
            logprobs: Sequence[float] | npt.NDArray[np.floating[Any]] | None = None,
            topk_logprobs: list[TopkEntry] | TopkLogprobs | None = None,
        ) -> None: ...

    @property
    def tokens_np(self) -> npt.NDArray[np.int32]:
        """The token ids as a 1-D int32 array: the stored array itself when there is one (no copy)."""
        stored = _TOKENS.raw(self)
        if type(stored) is np.ndarray and stored.dtype == np.int32:
            return stored
        return np.asarray(stored, dtype=np.int32).reshape(-1)

    @property
    def logprobs_np(self) -> npt.NDArray[np.float32] | None:
        """The logprobs as a 1-D float32 array (the stored array itself when there is one), or ``None``."""
        stored = _LOGPROBS.raw(self)
        if stored is None:
            return None
        if type(stored) is np.ndarray and stored.dtype == np.float32:
            return stored
        return np.asarray(stored, dtype=np.float32).reshape(-1)

    @property
    def topk_logprobs_np(self) -> TopkLogprobs | None:
        """The top-k logprobs of each sampled position as dense ``(len(tokens), k)`` matrices (the stored pair
        itself when there is one), or ``None`` when ``topk_sample_logprobs`` was not asked for."""
        return _topk_np(_TOPK.raw(self))

    def __eq__(self, other: object) -> bool:
        if type(other) is not SampledSequence:
            return NotImplemented
        return (
            (self.stop_reason, self.sequence_id, self.topk_logprobs)
            == (other.stop_reason, other.sequence_id, other.topk_logprobs)
            and _same_values(_TOKENS.raw(self), _TOKENS.raw(other))
            and _same_values(_LOGPROBS.raw(self), _LOGPROBS.raw(other))
        )

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal


_TOKENS = ArrayBackedList(SampledSequence, "tokens")
_LOGPROBS = ArrayBackedList(SampledSequence, "logprobs")
_TOPK = ArrayBackedList(SampledSequence, "topk_logprobs", TopkLogprobs, TopkLogprobs.to_lists)


def _same_values(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is b
    if type(a) is list and type(b) is list:
        return a == b
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def stored_tokens(seq: SampledSequence) -> list[int] | npt.NDArray[Any]:
    """``seq.tokens`` as stored: the list, or the numpy array (never converted; for the codecs)."""
    stored: list[int] | npt.NDArray[Any] = _TOKENS.raw(seq)
    return stored


def stored_logprobs(seq: SampledSequence) -> list[float] | npt.NDArray[Any] | None:
    """``seq.logprobs`` as stored: ``None``, the list, or the numpy array (never converted; for the codecs)."""
    stored: list[float] | npt.NDArray[Any] | None = _LOGPROBS.raw(seq)
    return stored


def stored_topk(seq: SampledSequence) -> list[TopkEntry] | TopkLogprobs | None:
    """``seq.topk_logprobs`` as stored: ``None``, the list, or the :class:`TopkLogprobs` (for the codecs)."""
    stored: list[TopkEntry] | TopkLogprobs | None = _TOPK.raw(seq)
    return stored


class PromptAltTokens(WireStruct):
    """``k`` draws at every prompt position after the first (``prompt_alt_tokens_k``): int64 ``tokens`` and float32
    ``logprobs``, both ``[len(prompt) - 1, k]``. Row ``i`` holds draws from the model's next-token distribution at
    prompt position ``i + 1``, so ``tokens[i]`` are alternatives to ``prompt[i + 1]``."""

    tokens: TensorData
    logprobs: TensorData

    @property
    def tokens_np(self) -> npt.NDArray[np.int64]:
        """``tokens`` as an int64 ``(len(prompt) - 1, k)`` array (the tensor's own array when it has one)."""
        return self.tokens.to_numpy()

    @property
    def logprobs_np(self) -> npt.NDArray[np.float32]:
        """``logprobs`` as a float32 ``(len(prompt) - 1, k)`` array (the tensor's own array when it has one)."""
        return self.logprobs.to_numpy()


class SampleResponse(WireStruct):
    """The result of asample.

    ``prompt_logprobs`` has ``None`` where unscored (position 0, and the positions before the last
    ``prompt_logprobs_last_n``). A response decoded from a protobuf result keeps ``prompt_logprobs`` as a float32
    array (NaN where unscored) and ``topk_prompt_logprobs`` as a :class:`TopkLogprobs`; the ``*_np`` accessors
    return them without a copy, and the list fields read as lists (converted once, on the first read).
    ``target_prompt_logprobs`` (the logprobs of the ids asked for with ``target_prompt_logprobs``, in the request
    tensor's shape and layout, 0.0 where it had -1) and ``prompt_alt_tokens`` are numpy-backed tensors.
    """

    sequences: list[SampledSequence]
    prompt_logprobs: list[float | None] | None = None
    topk_prompt_logprobs: list[TopkEntry] | None = None
    target_prompt_logprobs: TensorData | None = None
    prompt_alt_tokens: PromptAltTokens | None = None
    prompt_cache_hit_tokens: int = sent(0)

    if TYPE_CHECKING:
        # The constructor as callers see it: the prompt scores may be lists or their numpy forms.
        def __init__(
            self,
            *,
            sequences: list[SampledSequence],
            prompt_logprobs: Sequence[float | None] | npt.NDArray[np.floating[Any]] | None = None,
            topk_prompt_logprobs: list[TopkEntry] | TopkLogprobs | None = None,
            target_prompt_logprobs: TensorData | None = None,
            prompt_alt_tokens: PromptAltTokens | None = None,
            prompt_cache_hit_tokens: int = 0,
        ) -> None: ...

    @property
    def prompt_logprobs_np(self) -> npt.NDArray[np.float32] | None:
        """The prompt logprobs as a 1-D float32 array, NaN where unscored (the stored array itself when there is
        one), or ``None`` when they were not asked for."""
        stored = _PROMPT_LOGPROBS.raw(self)
        if stored is None:
            return None
        if type(stored) is np.ndarray and stored.dtype == np.float32:
            return stored
        return _none_to_nan(cast("Sequence[float | None]", stored))

    @property
    def topk_prompt_logprobs_np(self) -> TopkLogprobs | None:
        """The top-k logprobs of each prompt position as dense ``(len(prompt), k)`` matrices (padding where
        unscored), or ``None`` when they were not asked for."""
        return _topk_np(_TOPK_PROMPT.raw(self))

    @property
    def target_prompt_logprobs_np(self) -> npt.NDArray[np.float32] | None:
        """``target_prompt_logprobs`` as a dense float32 ``(len(prompt) - 1, K)`` array (0.0 in the cells the request
        left at -1, or did not list), or ``None`` when it was not asked for."""
        if self.target_prompt_logprobs is None:
            return None
        return self.target_prompt_logprobs.to_numpy(pad_value=0.0)

    def __eq__(self, other: object) -> bool:
        if type(other) is not SampleResponse:
            return NotImplemented
        return (
            self.sequences == other.sequences
            and self.prompt_logprobs == other.prompt_logprobs
            and self.topk_prompt_logprobs == other.topk_prompt_logprobs
            and self.target_prompt_logprobs == other.target_prompt_logprobs
            and self.prompt_alt_tokens == other.prompt_alt_tokens
            and self.prompt_cache_hit_tokens == other.prompt_cache_hit_tokens
        )

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal


_PROMPT_LOGPROBS = ArrayBackedList(SampleResponse, "prompt_logprobs", np.ndarray, _nan_to_none)
_TOPK_PROMPT = ArrayBackedList(SampleResponse, "topk_prompt_logprobs", TopkLogprobs, TopkLogprobs.to_lists)


def stored_prompt_logprobs(resp: SampleResponse) -> list[float | None] | npt.NDArray[Any] | None:
    """``resp.prompt_logprobs`` as stored: ``None``, the list, or the float32 array with NaN (for the codecs)."""
    stored: list[float | None] | npt.NDArray[Any] | None = _PROMPT_LOGPROBS.raw(resp)
    return stored


def stored_topk_prompt(resp: SampleResponse) -> list[TopkEntry] | TopkLogprobs | None:
    """``resp.topk_prompt_logprobs`` as stored: ``None``, the list, or the :class:`TopkLogprobs` (for the codecs)."""
    stored: list[TopkEntry] | TopkLogprobs | None = _TOPK_PROMPT.raw(resp)
    return stored


class CreateSamplingSessionRequest(WireStruct, tag_field="type", tag="create_sampling_session"):
    session_id: str
    sampling_session_seq_id: int
    base_model: str | None = None
    model_path: str | None = None


class CreateSamplingSessionResponse(WireStruct, tag_field="type", tag="create_sampling_session"):
    sampling_session_id: str


class GetSamplerResponse(WireStruct):
    """``GET /api/v1/samplers/{id}``."""

    sampler_id: str
    base_model: str
    model_path: str | None = None


class JoinSamplingSessionRequest(WireStruct, tag_field="type", tag="join_sampling_session"):
    sampling_session_id: str


class JoinSamplingSessionResponse(WireStruct, tag_field="type", tag="join_sampling_session"):
    client_counter: int
