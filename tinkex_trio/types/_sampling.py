"""Sampling messages (protocol §3.3, §4): SamplingParams, SampleRequest, SampleResponse, sampling sessions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

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
    "stored_logprobs",
    "stored_tokens",
]

StopReason: TypeAlias = Literal["stop", "length"]
"""Why a sampled sequence ended: ``"stop"`` (a stop token or sequence, or EOS) or ``"length"`` (max_tokens)."""

#: One position's top-k list: ``(token_id, logprob)`` pairs, or ``None`` where nothing was reported.
TopkEntry: TypeAlias = list[tuple[int, float]] | None


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
    arrays, as the official SDK does: :attr:`tokens_np` and :attr:`logprobs_np` return them without a copy.
    ``tokens`` and ``logprobs`` always read as lists: the first read turns the array into a list once
    (``tolist``), which then is the field's storage (see :class:`TensorData` for how). A sequence built from
    lists (or decoded from JSON) holds those lists.
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
            topk_logprobs: list[TopkEntry] | None = None,
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


class PromptAltTokens(WireStruct):
    """``k`` draws at every prompt position after the first: int64 ``tokens`` and float32 ``logprobs``, both
    ``[len(prompt) - 1, k]``."""

    tokens: TensorData
    logprobs: TensorData


class SampleResponse(WireStruct):
    """The result of asample. ``prompt_logprobs`` has ``None`` where unscored (e.g. position 0)."""

    sequences: list[SampledSequence]
    prompt_logprobs: list[float | None] | None = None
    topk_prompt_logprobs: list[TopkEntry] | None = None
    target_prompt_logprobs: TensorData | None = None
    prompt_alt_tokens: PromptAltTokens | None = None
    prompt_cache_hit_tokens: int = sent(0)


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
