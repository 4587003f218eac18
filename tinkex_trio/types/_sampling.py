"""Sampling messages (protocol §3.3, §4): SamplingParams, SampleRequest, SampleResponse, sampling sessions."""

from __future__ import annotations

from typing import Literal, TypeAlias

from ._base import WireStruct, sent
from ._model_input import ModelInput
from ._tensor import TensorData

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
    """One sample. ``sequence_id`` comes from the asample future's ``sample_sequence_ids`` (not in the protobuf)."""

    stop_reason: StopReason
    tokens: list[int]
    sequence_id: str | None = None
    logprobs: list[float] | None = None
    topk_logprobs: list[TopkEntry] | None = None


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
