"""The values the simulator's model takes and returns: its configuration, a datum as arrays, optimizer steps, results.

Also the checks that turn request values into arrays (`as_tokens`, `as_float`) or reject them with `SimUserError`.
Pure numpy, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "F32",
    "F64",
    "I32",
    "I64",
    "MASK_LOGPROB",
    "AdamParams",
    "BoolArr",
    "DatumArrays",
    "DimuonParams",
    "FwdBwdResult",
    "ModelConfig",
    "OptimizerFamily",
    "SampleResult",
    "SampledSeq",
    "SimUserError",
    "StopReason",
    "TopK",
    "as_float",
    "as_tokens",
    "check_int",
    "finite_number",
    "top_k_rows",
]

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
BoolArr = npt.NDArray[np.bool_]

MASK_LOGPROB: Final = -99999.0
"""Logprob that pads dense top-k arrays (with token id 0), as in protocol §4."""

OptimizerFamily = Literal["adamw", "dimuon"]
StopReason = Literal["stop", "length"]


class SimUserError(ValueError):
    """The request is invalid (the app reports it as a failed future with category "user")."""


@dataclass(frozen=True)
class ModelConfig:
    """Server-wide model settings (not per request). Invalid values raise ``ValueError``."""

    vocab_size: int = 256
    hidden: int = 64
    seed: int = 0
    """Seed of every frozen base model (mixed with the base model's name)."""
    eos_token_id: int | None = None
    """Stop token when a request gives no stop list; ``None`` means ``vocab_size - 1``."""
    max_lora_rank: int = 256
    max_context: int = 32768
    """Largest ``len(prompt) + max_tokens`` a sample request may ask for."""
    default_max_tokens: int = 32
    """``max_tokens`` of a sample request that leaves it unset."""

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ValueError("vocab_size must be at least 2")
        if self.hidden < 1:
            raise ValueError("hidden must be at least 1")
        if self.eos_token_id is not None and not 0 <= self.eos_token_id < self.vocab_size:
            raise ValueError("eos_token_id must be in [0, vocab_size)")
        if self.max_lora_rank < 1 or self.max_context < 2 or self.default_max_tokens < 1:
            raise ValueError("max_lora_rank, max_context and default_max_tokens must be positive")

    @property
    def eos(self) -> int:
        """The effective EOS token id."""
        return self.vocab_size - 1 if self.eos_token_id is None else self.eos_token_id


@dataclass(frozen=True)
class DatumArrays:
    """One datum as arrays: ``tokens`` is the flattened model input (integers, any int dtype, 1-D) and
    ``loss_fn_inputs`` maps names (``target_tokens``, ``weights``, ``logprobs``, ``advantages``) to dense arrays.

    ``recorded`` holds what the server derived from its sampling records and the datum's provenance spans
    (``tinkex_trio._losses.RECORDED_INPUTS``: ``sampled``, ``sampler_logprobs``), shaped like ``target_tokens``; only
    ``stable_reinforce`` reads it."""

    tokens: npt.NDArray[Any]
    loss_fn_inputs: Mapping[str, npt.NDArray[Any]] = field(default_factory=lambda: {})
    recorded: Mapping[str, npt.NDArray[Any]] = field(default_factory=lambda: {})


@dataclass(frozen=True)
class FwdBwdResult:
    """``loss_fn_outputs[i] == {"logprobs": float32 array shaped like datum i's target_tokens}``;
    ``metrics == {"loss:sum": float}``."""

    loss_fn_outputs: list[dict[str, F32]]
    metrics: dict[str, float]


@dataclass(frozen=True)
class AdamParams:
    """One AdamW step (protocol §4 defaults). ``weight_decay`` is decoupled; ``grad_clip_norm == 0`` means off."""

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0


@dataclass(frozen=True)
class DimuonParams:
    """One "dimuon" step, emulated as heavy-ball momentum SGD."""

    learning_rate: float = 1e-4
    grad_clip_norm: float = 0.0
    beta1: float = 0.9


@dataclass(frozen=True)
class TopK:
    """Dense top-k arrays ``(n, k)``, best first, padded with token 0 and :data:`MASK_LOGPROB`."""

    token_ids: I32
    logprobs: F32


@dataclass(frozen=True)
class SampledSeq:
    """One generated sequence. ``tokens`` int64 ``(n,)``; ``logprobs`` float32 ``(n,)`` (raw model logprobs);
    ``topk`` is set when ``topk_sample_logprobs > 0``."""

    tokens: I64
    logprobs: F32
    stop_reason: StopReason
    topk: TopK | None = None


@dataclass(frozen=True)
class SampleResult:
    """The result of :meth:`LoraModel.sample`. Prompt-side arrays are ``None`` unless requested.

    - ``prompt_logprobs``: float32 ``(L,)``, NaN where unscored (position 0, and before the last n with
      ``prompt_logprobs_last_n``).
    - ``topk_prompt``: ``(L, k)``; unscored rows are all padding.
    - ``target_prompt_logprobs``: float32, the shape of the request's ``target_prompt_logprobs`` ``(L-1, K)``, 0.0 where
      the request had -1.
    - ``prompt_alt_tokens`` int64 / ``prompt_alt_logprobs`` float32: ``(L-1, k)`` draws at prompt positions 1…L-1.
    """

    sequences: list[SampledSeq]
    prompt_logprobs: F32 | None = None
    topk_prompt: TopK | None = None
    target_prompt_logprobs: F32 | None = None
    prompt_alt_tokens: I64 | None = None
    prompt_alt_logprobs: F32 | None = None


def as_tokens(value: object, what: str, vocab: int) -> I64:
    arr = np.asarray(value)
    kind = arr.dtype.kind
    integral = kind in "iu" or (kind in "fb" and bool(np.all(np.isfinite(arr))) and bool(np.all(arr == np.round(arr))))
    if not integral:
        raise SimUserError(f"{what} must hold integer token ids, got dtype {arr.dtype}")
    reduced: I64 = np.mod(arr.astype(np.int64), vocab)
    return reduced


def check_int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SimUserError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def as_float(value: object, what: str) -> F64:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise SimUserError(f"{what} must be numeric, got dtype {arr.dtype}")
    out = arr.astype(np.float64)
    if not bool(np.all(np.isfinite(out))):
        raise SimUserError(f"{what} contains NaN or infinity")
    return out


def finite_number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SimUserError(f"{what} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise SimUserError(f"{what} must be finite")
    return number


def top_k_rows(logprob_rows: F64, k: int) -> TopK:
    """Top-k of each row, best first (ties: lowest id), padded when ``k > V``."""
    n, vocab = logprob_rows.shape
    ids = np.zeros((n, k), dtype=np.int32)
    lps = np.full((n, k), MASK_LOGPROB, dtype=np.float32)
    kk = min(k, vocab)
    if n and kk:
        order = np.argsort(-logprob_rows, axis=1, kind="stable")[:, :kk]
        ids[:, :kk] = order
        lps[:, :kk] = np.take_along_axis(logprob_rows, order, axis=1)
    return TopK(token_ids=ids, logprobs=lps)
