"""Training messages (protocol §3.2, §4): Datum, forward_backward, optimizers, save/load, custom loss, copy."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

import numpy as np
import numpy.typing as npt

from ..errors import InvalidArgumentError, InvalidArgumentTypeError
from ._base import WireStruct, sent
from ._model_input import ModelInput
from ._tensor import TensorData, loss_fn_input, min_value, to_tensor_data

__all__ = [
    "AdamOptimizerConfig",
    "AdamParams",
    "CopyWeightsRequest",
    "CopyWeightsResponse",
    "CreateCustomLossRequest",
    "CreateCustomLossResponse",
    "CreateModelRequest",
    "CreateModelResponse",
    "CustomLossGraph",
    "CustomLossInput",
    "CustomLossNode",
    "CustomLossNodeOp",
    "Datum",
    "DimuonOptimizerConfig",
    "DimuonParams",
    "ForwardBackwardInput",
    "ForwardBackwardOutput",
    "ForwardBackwardRequest",
    "ForwardRequest",
    "GetInfoRequest",
    "GetInfoResponse",
    "LoadWeightsRequest",
    "LoadWeightsResponse",
    "LoraConfig",
    "LossFnOutput",
    "LossFnType",
    "ModelData",
    "OptimStepRequest",
    "OptimStepResponse",
    "OptimizerConfig",
    "ProvenanceRun",
    "ProvenanceSpan",
    "SamplingClientKind",
    "SaveWeightsExternalRequest",
    "SaveWeightsExternalResponse",
    "SaveWeightsForSamplerRequest",
    "SaveWeightsForSamplerResponse",
    "SaveWeightsRequest",
    "SaveWeightsResponse",
    "UnloadModelRequest",
    "UnloadModelResponse",
    "datum",
]

LossFnType: TypeAlias = Literal[
    "cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "gspo", "stable_reinforce", "custom"
]
SamplingClientKind: TypeAlias = Literal["snapshot", "inflight"]
LossFnOutput: TypeAlias = dict[str, TensorData]

TokensLike: TypeAlias = "ModelInput | Iterable[int] | npt.NDArray[np.integer[Any]]"


# -- model configuration --------------------------------------------------------------------------------------


class LoraConfig(WireStruct):
    """LoRA settings of create_model: ``{rank, seed?, train_unembed=true, train_mlp=true, train_attn=true}``."""

    rank: int
    seed: int | None = None
    train_unembed: bool = sent(True)
    train_mlp: bool = sent(True)
    train_attn: bool = sent(True)


class AdamOptimizerConfig(WireStruct, tag_field="type", tag="adamw"):
    """``{"type": "adamw"}``: the model is trained with AdamW (``adam_params`` on optim_step)."""


class DimuonOptimizerConfig(WireStruct, tag_field="type", tag="dimuon"):
    """``{"type": "dimuon", "version": 1}``: the model is trained with Dimuon (``optimizer_params`` on optim_step)."""

    version: Literal[1] = sent(1)


OptimizerConfig: TypeAlias = AdamOptimizerConfig | DimuonOptimizerConfig


# The range of each optimizer parameter: "nonneg" is [0, inf), "unit" is [0, 1) (the server's rules, protocol §4).
_PARAM_RANGES: dict[str, Literal["nonneg", "unit"]] = {
    "learning_rate": "nonneg",
    "beta1": "unit",
    "beta2": "unit",
    "eps": "nonneg",
    "weight_decay": "nonneg",
    "grad_clip_norm": "nonneg",
}


def check_step_params(params: AdamParams | DimuonParams, prefix: str = "") -> None:
    """Check every field of optimizer parameters: a finite real number (not a bool) in its range.

    Ints are stored as floats. A NaN or an infinity would be sent as JSON ``null`` and refused by the server, so it is
    refused here, as an :class:`~tinkex_trio.errors.InvalidArgumentError` naming ``prefix + field``.
    """
    for name in params.__struct_fields__:
        value: object = getattr(params, name)
        argument = prefix + name
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgumentTypeError(f"{argument} must be a float, got {type(value).__name__}", argument=argument)
        if not math.isfinite(value):
            raise InvalidArgumentError(f"{argument} must be finite, got {value!r}", argument=argument)
        if type(value) is not float:
            setattr(params, name, float(value))
        if _PARAM_RANGES[name] == "unit" and not 0 <= value < 1:
            raise InvalidArgumentError(f"{argument} must be in [0, 1), got {value!r}", argument=argument)
        if value < 0:
            raise InvalidArgumentError(f"{argument} must be >= 0, got {value!r}", argument=argument)


class AdamParams(WireStruct):
    """AdamW step parameters (decoupled weight decay; ``grad_clip_norm=0`` turns clipping off).

    Every field is a finite float: ``beta1``, ``beta2`` in [0, 1), the others >= 0 (``InvalidArgumentError``
    otherwise, at construction and again at ``optim_step``).
    """

    learning_rate: float = sent(1e-4)
    beta1: float = sent(0.9)
    beta2: float = sent(0.95)
    eps: float = sent(1e-12)
    weight_decay: float = sent(0.0)
    grad_clip_norm: float = sent(0.0)

    def __post_init__(self) -> None:
        check_step_params(self)


class DimuonParams(WireStruct, tag_field="type", tag="dimuon"):
    """Dimuon step parameters, sent as ``optimizer_params`` with ``type: "dimuon"``.

    Every field is a finite float: ``beta1`` in [0, 1), the others >= 0.
    """

    learning_rate: float
    grad_clip_norm: float = sent(0.0)
    beta1: float = sent(0.9)

    def __post_init__(self) -> None:
        check_step_params(self)


# -- data -----------------------------------------------------------------------------------------------------


class ProvenanceRun(WireStruct):
    """Positions ``[offset, offset + length)`` of a sampled sequence's prompt or sampled tokens."""

    sequence_id: str
    length: int
    offset: int = sent(0)


class ProvenanceSpan(WireStruct):
    """One provenance run: ``{"prompt_tokens": run}`` or ``{"sampled_tokens": run}``."""

    prompt_tokens: ProvenanceRun | None = None
    sampled_tokens: ProvenanceRun | None = None

    def __post_init__(self) -> None:
        if (self.prompt_tokens is None) == (self.sampled_tokens is None):
            raise ValueError("a ProvenanceSpan holds exactly one of prompt_tokens and sampled_tokens")

    @classmethod
    def prompt(cls, sequence_id: str, length: int, offset: int = 0) -> ProvenanceSpan:
        return cls(prompt_tokens=ProvenanceRun(sequence_id=sequence_id, offset=offset, length=length))

    @classmethod
    def sampled(cls, sequence_id: str, length: int, offset: int = 0) -> ProvenanceSpan:
        return cls(sampled_tokens=ProvenanceRun(sequence_id=sequence_id, offset=offset, length=length))

    @property
    def run(self) -> ProvenanceRun:
        run = self.prompt_tokens if self.prompt_tokens is not None else self.sampled_tokens
        assert run is not None
        return run


class Datum(WireStruct):
    """One training example: the model input and the loss function's inputs (each a TensorData).

    ``loss_fn_inputs`` values may be given as the official SDK allows: a TensorData, a numpy array (its dtype
    family kept: float32 or int64) or a plain list (``target_tokens`` int64; ``weights``, ``advantages``,
    ``logprobs``, ``clip_low_threshold``, ``clip_high_threshold``, ``sequence_ratio_mask`` float32). They are
    converted to TensorData at construction; ``target_tokens`` must hold ids >= 0. :func:`datum` and
    :meth:`Datum.from_tokens` build one from plain token ids.
    """

    model_input: ModelInput
    loss_fn_inputs: dict[str, TensorData] = sent({})
    model_input_spans: list[ProvenanceSpan] | None = None
    loss_fn_input_spans: list[ProvenanceSpan] | None = None

    if TYPE_CHECKING:
        # The constructor as callers see it: loss inputs may be arrays or lists (converted in __post_init__).
        def __init__(
            self,
            *,
            model_input: ModelInput,
            loss_fn_inputs: Mapping[str, TensorData | npt.ArrayLike] = ...,
            model_input_spans: list[ProvenanceSpan] | None = None,
            loss_fn_input_spans: list[ProvenanceSpan] | None = None,
        ) -> None: ...

    def __post_init__(self) -> None:
        if not isinstance(self.model_input, ModelInput):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise InvalidArgumentTypeError(
                f"model_input must be a ModelInput, got {type(self.model_input).__name__}", argument="model_input"
            )
        given = cast("object", self.loss_fn_inputs)  # what a caller passed may be anything
        if not isinstance(given, Mapping):
            raise InvalidArgumentTypeError(
                f"loss_fn_inputs must be a mapping, got {type(given).__name__}", argument="loss_fn_inputs"
            )
        inputs = cast("Mapping[object, object]", given)
        # Decoded datums hold a dict of TensorData already: only a caller's arrays and lists are converted.
        if type(self.loss_fn_inputs) is not dict or any(type(v) is not TensorData for v in inputs.values()):
            self.loss_fn_inputs = {_input_key(k): loss_fn_input(_input_key(k), v) for k, v in inputs.items()}
        target = self.loss_fn_inputs.get("target_tokens")
        if target is not None and target.num_values and (lowest := min_value(target)) < 0:
            raise InvalidArgumentError(
                f"loss_fn_inputs['target_tokens'] must hold token ids >= 0, got {lowest}",
                argument="loss_fn_inputs['target_tokens']",
            )
        if (self.model_input_spans is None) != (self.loss_fn_input_spans is None):
            raise ValueError("model_input_spans and loss_fn_input_spans come as a pair: set both or neither")

    @classmethod
    def from_tokens(
        cls,
        input_tokens: TokensLike,
        target_tokens: TensorData | npt.ArrayLike,
        weights: TensorData | npt.ArrayLike | None = None,
        **loss_fn_inputs: TensorData | npt.ArrayLike,
    ) -> Datum:
        """A Datum for token-level losses: ``target_tokens`` (int64) and, if given, ``weights`` (float32).

        Other loss inputs (``advantages``, ``logprobs``, ...) are passed as keywords.
        """
        inputs: dict[str, TensorData | npt.ArrayLike] = {"target_tokens": target_tokens}
        if weights is not None:
            inputs["weights"] = weights
        inputs.update(loss_fn_inputs)
        return datum(input_tokens, inputs)

    def with_provenance(
        self, model_input_spans: list[ProvenanceSpan], loss_fn_input_spans: list[ProvenanceSpan]
    ) -> Datum:
        """A copy with provenance. The runs must tile the input tokens and ``target_tokens`` exactly."""
        total = sum(span.run.length for span in model_input_spans)
        if total != self.model_input.length:
            raise ValueError(f"model_input spans cover {total} positions, the input has {self.model_input.length}")
        target = self.loss_fn_inputs.get("target_tokens")
        if target is not None and target.shape is not None and len(target.shape) == 1:
            total = sum(span.run.length for span in loss_fn_input_spans)
            if total != target.shape[0]:
                raise ValueError(f"loss_fn_input spans cover {total} positions, target_tokens has {target.shape[0]}")
        return Datum(
            model_input=self.model_input,
            loss_fn_inputs=self.loss_fn_inputs,
            model_input_spans=model_input_spans,
            loss_fn_input_spans=loss_fn_input_spans,
        )


def _input_key(key: object) -> str:
    if not isinstance(key, str):
        raise InvalidArgumentTypeError(f"loss_fn_inputs keys must be str, got {key!r}", argument="loss_fn_inputs")
    return key


def datum(
    model_input: TokensLike,
    loss_fn_inputs: Mapping[str, TensorData | npt.ArrayLike] | None = None,
    /,
    **more_inputs: TensorData | npt.ArrayLike,
) -> Datum:
    """Build a Datum from a ModelInput or token ids, converting every loss input to TensorData.

    Lists and arrays take the wire dtype of their key: ``target_tokens`` int64; ``weights``, ``advantages``,
    ``logprobs``, ``clip_low_threshold``, ``clip_high_threshold``, ``sequence_ratio_mask`` float32; other keys
    float32 for floats and int64 for integers.

    >>> d = datum([1, 2, 3], target_tokens=[2, 3, 4], weights=[1, 1, 1])
    """
    mi = model_input if isinstance(model_input, ModelInput) else ModelInput.from_ints(model_input)
    merged: dict[str, TensorData | npt.ArrayLike] = dict(loss_fn_inputs or {})
    merged.update(more_inputs)
    return Datum(model_input=mi, loss_fn_inputs={k: to_tensor_data(k, v) for k, v in merged.items()})


class ForwardBackwardInput(WireStruct):
    """``{data, loss_fn, loss_fn_config?}``. A server-side custom loss is ``loss_fn="custom"``,
    ``loss_fn_config={"loss_id": ...}``."""

    data: list[Datum]
    loss_fn: LossFnType
    loss_fn_config: dict[str, float | str] | None = None


class ForwardBackwardRequest(WireStruct):
    """The JSON form of a forward_backward submission (0.38.0 sends protobuf, §5; this is the fallback).

    ``forward_only`` is not part of the SDK's JSON model: it is left out unless set, and marks a ``forward()``.
    """

    forward_backward_input: ForwardBackwardInput
    model_id: str
    seq_id: int | None = None
    forward_only: bool | None = None


class ForwardRequest(WireStruct):
    """The SDK's JSON ``ForwardRequest`` (defined, never sent by 0.38.0)."""

    forward_input: ForwardBackwardInput
    model_id: str
    seq_id: int | None = None


class ForwardBackwardOutput(WireStruct):
    """The result of forward_backward / forward: one output dict per datum, and ``name:reduction`` metrics."""

    loss_fn_output_type: str
    loss_fn_outputs: list[LossFnOutput]
    metrics: dict[str, float] = sent({})


# -- model lifecycle ------------------------------------------------------------------------------------------


class CreateModelRequest(WireStruct, tag_field="type", tag="create_model"):
    session_id: str
    model_seq_id: int
    base_model: str
    user_metadata: dict[str, Any] | None = None
    lora_config: LoraConfig | None = None
    optimizer_config: OptimizerConfig = sent(AdamOptimizerConfig())


class CreateModelResponse(WireStruct, tag_field="type", tag="create_model"):
    model_id: str


class UnloadModelRequest(WireStruct, tag_field="type", tag="unload_model"):
    """Defined by the SDK, never sent."""

    model_id: str


class UnloadModelResponse(WireStruct, tag_field="type", tag="unload_model"):
    model_id: str


class GetInfoRequest(WireStruct, tag_field="type", tag="get_info"):
    model_id: str


class ModelData(WireStruct):
    arch: str | None = None
    model_name: str | None = None
    tokenizer_id: str | None = None


class GetInfoResponse(WireStruct, tag_field="type", tag="get_info"):
    """``get_info``. The SDK keeps only the part of ``model_data.tokenizer_id`` before any ``:``."""

    model_id: str
    model_data: ModelData
    optimizer_config: OptimizerConfig = sent(AdamOptimizerConfig())
    is_lora: bool | None = None
    lora_rank: int | None = None
    model_name: str | None = None


class OptimStepRequest(WireStruct, tag_field="type", tag="optim_step"):
    """``adam_params`` for AdamW models, ``optimizer_params`` (DimuonParams) for the others."""

    model_id: str
    seq_id: int | None = None
    adam_params: AdamParams | None = None
    optimizer_params: DimuonParams | None = None


class OptimStepResponse(WireStruct):
    """The result of an optimizer step: the server's metrics (``name:reduction`` keys), if any."""

    metrics: dict[str, float] | None = None


class SaveWeightsRequest(WireStruct, tag_field="type", tag="save_weights"):
    model_id: str
    path: str | None = None
    seq_id: int | None = None
    ttl_seconds: int | None = None
    overwrite: bool = sent(False)
    user_metadata: dict[str, str] | None = None


class SaveWeightsResponse(WireStruct, tag_field="type", tag="save_weights"):
    """``{path: "tinker://<model_id>/weights/<name>"}``."""

    path: str


class SaveWeightsForSamplerRequest(WireStruct, tag_field="type", tag="save_weights_for_sampler"):
    """Named (``path``, ``ttl_seconds?``) or ephemeral (``sampling_session_seq_id``, kind snapshot|inflight)."""

    model_id: str
    path: str | None = None
    sampling_session_seq_id: int | None = None
    kind: SamplingClientKind = sent("snapshot")
    seq_id: int | None = None
    ttl_seconds: int | None = None
    user_metadata: dict[str, str] | None = None


class SaveWeightsForSamplerResponse(WireStruct, tag_field="type", tag="save_weights_for_sampler"):
    """``{path}`` for a named save, ``{sampling_session_id}`` for an ephemeral one."""

    path: str | None = None
    sampling_session_id: str | None = None


class SaveWeightsExternalRequest(WireStruct, tag_field="type", tag="save_weights_external"):
    model_id: str
    path: str
    seq_id: int | None = None
    ttl_seconds: int | None = None
    age_encryption_recipients: list[str] | None = None


class SaveWeightsExternalResponse(WireStruct, tag_field="type", tag="save_weights_external"):
    path: str
    size_bytes: int | None = None


class LoadWeightsRequest(WireStruct, tag_field="type", tag="load_weights"):
    """In place (``model_id`` + ``seq_id``) or create-via-load (``session_id`` + ``model_seq_id``; the model id is
    then ``"{session_id}:train:{model_seq_id}"``)."""

    path: str
    optimizer: bool
    model_id: str | None = None
    seq_id: int | None = None
    session_id: str | None = None
    model_seq_id: int | None = None
    base_model: str | None = None
    user_metadata: dict[str, Any] | None = None
    optimizer_config: OptimizerConfig | None = None
    weights_access_token: str | None = None

    def __post_init__(self) -> None:
        if (self.model_id is None) == (self.session_id is None):
            raise ValueError("load_weights is addressed by model_id (in place) or by session_id (create-via-load)")

    @property
    def is_create_via_load(self) -> bool:
        return self.session_id is not None


class LoadWeightsResponse(WireStruct, tag_field="type", tag="load_weights"):
    path: str | None = None
    model_id: str | None = None


# -- custom losses and copies ---------------------------------------------------------------------------------

CustomLossNodeOp: TypeAlias = Literal[
    "placeholder", "get_attr", "call_function", "call_method", "call_module", "output"
]


class CustomLossInput(WireStruct):
    name: str
    rank: Literal[0, 1, 2]


class CustomLossNode(WireStruct):
    """One traced node: ``{op, name, target, args, kwargs}`` (arguments encoded as plain JSON data)."""

    op: CustomLossNodeOp
    name: str
    target: str
    args: list[Any] = sent([])
    kwargs: dict[str, Any] = sent({})


class CustomLossGraph(WireStruct):
    nodes: list[CustomLossNode]
    format: Literal[1] = sent(1)


class CreateCustomLossRequest(WireStruct, tag_field="type", tag="create_custom_loss"):
    session_id: str
    custom_loss_seq_id: int
    name: str
    inputs: list[CustomLossInput]
    graph: CustomLossGraph


class CreateCustomLossResponse(WireStruct, tag_field="type", tag="create_custom_loss"):
    loss_id: str


class CopyWeightsRequest(WireStruct):
    """``copy_weights``: a destination project, or a session id and its model seq id (sent with
    ``X-Tinker-Weights-Access-Token``)."""

    source_path: str
    destination_project_id: str | None = None
    session_id: str | None = None
    model_seq_id: int | None = None
    ttl_seconds: int | None = None


class CopyWeightsResponse(WireStruct):
    tinker_path: str
