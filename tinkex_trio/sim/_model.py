"""The simulated server's model: a small, exact, deterministic next-token model in pure numpy.

No I/O, no trio, no web: the ASGI app (``tinkex_trio.sim``) wraps it. Everything here is synchronous and CPU-bound.
Threads: the training operations of one model (forward_backward, optim_step, loading) must run one at a time (the
protocol's per-model seq_id ordering gives that); :meth:`LoraModel.sample` only reads, and sees one consistent set of
weights even when an optimizer step lands on another thread meanwhile. The matrices are tiny, so a server process does
best with single-threaded BLAS (``OPENBLAS_NUM_THREADS=1`` before numpy is imported): on a loaded machine a threaded
OpenBLAS spends milliseconds synchronising on each small matmul.

The model
---------
A bigram model over a fixed vocabulary of ``V = cfg.vocab_size`` tokens (every token id is reduced modulo ``V``):
the logits at position ``i`` depend only on the input token ``x_i``::

    logits(x) = E[x] @ (U + A @ B)          E: V×d, U: d×V   frozen base, from (cfg.seed, base_model)
                                            A: d×r, B: r×V   trainable LoRA update of rank r

``B`` starts at zero, so a fresh model *is* its base model; ``A`` is random from the LoRA seed. Both ``A`` and ``B``
are trained. Because the logits depend only on the current token, the whole model is one V×V logit table: a
forward pass is a gather from its log-softmax and a backward pass is a scatter-add into a V×V gradient table
(``O(tokens + V²)``), so 256 datums × 1024 tokens take tens of milliseconds. A bigram model learns any pattern in
which each token determines the next one (``[1, 2, 3, 4, 1, 2, …]``) exactly. All arithmetic is float64; every array
handed out is float32 (logprobs) or int64/int32 (tokens), as documented per field.

Losses (protocol §13), all summed over every position of every datum, never averaged, with exact gradients:
``cross_entropy``, ``importance_sampling``, ``ppo``, ``cispo``, ``dro``. ``target_tokens`` may be 1-D ``(N,)`` or 2-D
``(N, K)`` (K targets per position, e.g. distillation; the other loss inputs then have the same ``(N, K)`` shape and
the returned ``logprobs`` too). ``gspo``, ``stable_reinforce`` and ``custom`` raise :class:`SimUserError`
("unsupported"). Required inputs: ``target_tokens`` and ``weights`` for cross_entropy (weights are not optional),
``target_tokens``, ``logprobs`` and ``advantages`` for the others; other keys are ignored. ``loss_fn_config`` keys:
``clip_low_threshold`` (0.8) and ``clip_high_threshold`` (1.2) for ppo and cispo, ``beta`` (0.05) for dro, none for the
rest; an unknown key, a non-number, a NaN/inf input or a shape mismatch raises :class:`SimUserError` before anything is
accumulated.

Sampling: temperature (0 → greedy, ties to the lowest id), top-k (``≤ 0`` → off), top-p, a seed (``None`` → fresh OS
entropy), stop tokens (``None`` → stop at :attr:`ModelConfig.eos_token_id`, ``[]`` → never) and stop sequences (the stop
token or sequence is included in the output, and the stop_reason is ``"stop"``). Returned logprobs (sampled tokens,
top-k, prompt logprobs) are always the model's *raw* log-probabilities (temperature 1, before top-k/top-p), so the
sampler's logprobs of a sequence equal the learner's ``logprobs`` for the same weights.

Optimizers: AdamW (``AdamParams``) and "dimuon" (``DimuonParams``), emulated here as heavy-ball momentum SGD
(``m ← beta1·m + g``; ``p ← p − lr·m``). The family is fixed when the model is created.

Checkpoints: :meth:`LoraModel.state_dict` / :meth:`LoraModel.to_bytes` hold the LoRA weights, the metadata needed to
rebuild the frozen base, and optionally the optimizer state; loading restores all of it bit for bit.
"""

from __future__ import annotations

import io
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "LOSS_FUNCTIONS",
    "MASK_LOGPROB",
    "UNSUPPORTED_LOSS_FUNCTIONS",
    "AdamParams",
    "DatumArrays",
    "DimuonParams",
    "FwdBwdResult",
    "LoraModel",
    "ModelConfig",
    "OptimizerFamily",
    "SampleResult",
    "SampledSeq",
    "SimUserError",
    "StopReason",
    "TopK",
]

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
BoolArr = npt.NDArray[np.bool_]

MASK_LOGPROB: Final = -99999.0
"""Logprob that pads dense top-k arrays (with token id 0), as in protocol §4."""

LOSS_FUNCTIONS: Final = ("cross_entropy", "importance_sampling", "ppo", "cispo", "dro")
"""The loss functions this model implements."""

UNSUPPORTED_LOSS_FUNCTIONS: Final = ("gspo", "stable_reinforce", "custom")
"""Loss functions of the protocol that this model rejects with ``SimUserError("unsupported …")``."""

OptimizerFamily = Literal["adamw", "dimuon"]
StopReason = Literal["stop", "length"]

_RL_INPUTS: Final = ("target_tokens", "logprobs", "advantages")
_LOSS_INPUTS: Final[Mapping[str, tuple[str, ...]]] = {
    "cross_entropy": ("target_tokens", "weights"),
    "importance_sampling": _RL_INPUTS,
    "ppo": _RL_INPUTS,
    "cispo": _RL_INPUTS,
    "dro": _RL_INPUTS,
}
_CLIP_DEFAULTS: Final[Mapping[str, float]] = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
_LOSS_CONFIG_DEFAULTS: Final[Mapping[str, Mapping[str, float]]] = {
    "cross_entropy": {},
    "importance_sampling": {},
    "ppo": _CLIP_DEFAULTS,
    "cispo": _CLIP_DEFAULTS,
    "dro": {"beta": 0.05},
}
_PARAM_NAMES: Final = ("lora_A", "lora_B")
_FORMAT: Final = "tinkex_trio.sim.lora/1"
_SEED_MOD: Final = 2**64  # any integer seed works; it is reduced modulo 2**64


class SimUserError(ValueError):
    """The request is invalid (the app reports it as a failed future with category "user")."""


# --------------------------------------------------------------------------------------------------------------------
# Configuration and value types
# --------------------------------------------------------------------------------------------------------------------


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
    ``loss_fn_inputs`` maps names (``target_tokens``, ``weights``, ``logprobs``, ``advantages``) to dense arrays."""

    tokens: npt.NDArray[Any]
    loss_fn_inputs: Mapping[str, npt.NDArray[Any]] = field(default_factory=lambda: {})


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


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _base_weights(cfg: ModelConfig, base_model: str) -> tuple[F64, F64, F64]:
    """The frozen base ``(E, U, E @ U)`` of ``base_model``: deterministic from ``(cfg.seed, base_model)``, read-only."""
    name_key = zlib.crc32(base_model.encode("utf-8"))
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed % _SEED_MOD, name_key, cfg.vocab_size, cfg.hidden]))
    emb = rng.standard_normal((cfg.vocab_size, cfg.hidden))
    unemb = rng.standard_normal((cfg.hidden, cfg.vocab_size)) / math.sqrt(cfg.hidden)
    table = np.asarray(emb @ unemb, dtype=np.float64)
    for arr in (emb, unemb, table):
        arr.setflags(write=False)
    return emb, unemb, table


def _log_softmax(logits: F64) -> F64:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    out: F64 = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def _as_tokens(value: object, what: str, vocab: int) -> I64:
    arr = np.asarray(value)
    kind = arr.dtype.kind
    integral = kind in "iu" or (kind in "fb" and bool(np.all(np.isfinite(arr))) and bool(np.all(arr == np.round(arr))))
    if not integral:
        raise SimUserError(f"{what} must hold integer token ids, got dtype {arr.dtype}")
    reduced: I64 = np.mod(arr.astype(np.int64), vocab)
    return reduced


def _check_int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SimUserError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _as_float(value: object, what: str) -> F64:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise SimUserError(f"{what} must be numeric, got dtype {arr.dtype}")
    out = arr.astype(np.float64)
    if not bool(np.all(np.isfinite(out))):
        raise SimUserError(f"{what} contains NaN or infinity")
    return out


def _finite_number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SimUserError(f"{what} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise SimUserError(f"{what} must be finite")
    return number


def _topk(logprob_rows: F64, k: int) -> TopK:
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


def _loss_and_grad(loss_fn: str, lp: F64, inputs: Mapping[str, F64], conf: Mapping[str, float]) -> tuple[F64, F64]:
    """Per-element loss terms and their derivative ``d loss / d lp`` (both shaped like ``lp``)."""
    if loss_fn == "cross_entropy":
        w = inputs["weights"]
        return -lp * w, -w
    q = inputs["logprobs"]
    adv = inputs["advantages"]
    if loss_fn == "dro":
        beta = conf["beta"]
        diff = lp - q
        return -(lp * adv - 0.5 * beta * diff * diff), -(adv - beta * diff)
    ratio = np.exp(lp - q)
    if loss_fn == "importance_sampling":
        return -ratio * adv, -ratio * adv
    lo, hi = conf["clip_low_threshold"], conf["clip_high_threshold"]
    clipped = np.clip(ratio, lo, hi)
    if loss_fn == "cispo":
        return -clipped * lp * adv, -clipped * adv
    # ppo: min(r·A, clip(r)·A). Where the unclipped term is the min it carries the gradient r·A; elsewhere the
    # clipped term is strictly smaller, which happens only with r outside [lo, hi], where its gradient is 0.
    unclipped_obj = ratio * adv
    clipped_obj = clipped * adv
    use_unclipped = unclipped_obj <= clipped_obj
    objective = np.where(use_unclipped, unclipped_obj, clipped_obj)
    grad = np.where(use_unclipped, -unclipped_obj, 0.0)
    return -objective, grad


@dataclass(frozen=True)
class _Tables:
    """Derived tables of one set of weights (``params`` is the dict they were computed from)."""

    params: Mapping[str, F64]
    logits: F64
    logprobs: F64
    sampling: dict[tuple[float, int, float], tuple[I64, F64]]


@dataclass
class _Prepared:
    rows: I64  # input token of every loss element (flattened)
    targets: I64  # target token of every loss element
    inputs: dict[str, F64]  # other loss inputs, flattened like targets
    shape: tuple[int, ...]  # target_tokens' shape, for the output


# --------------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------------


class LoraModel:
    """A trainable LoRA model on a frozen base (see the module docstring).

    ``LoraModel(base_model, rank, seed, cfg, optimizer="adamw")``: ``seed`` seeds the LoRA ``A`` matrix (``None`` →
    fresh OS entropy; the seed actually used is :attr:`seed`). An invalid ``rank`` or empty ``base_model`` raises
    :class:`SimUserError`.
    """

    def __init__(
        self,
        base_model: str,
        rank: int,
        seed: int | None = None,
        cfg: ModelConfig | None = None,
        *,
        optimizer: OptimizerFamily = "adamw",
    ) -> None:
        self.cfg: Final = cfg if cfg is not None else ModelConfig()
        if not base_model:
            raise SimUserError("base_model must be a non-empty string")
        if _check_int(rank, "LoRA rank", 1) > self.cfg.max_lora_rank:
            raise SimUserError(f"LoRA rank must be an integer in [1, {self.cfg.max_lora_rank}], got {rank!r}")
        if optimizer not in ("adamw", "dimuon"):
            raise SimUserError(f"unknown optimizer family {optimizer!r} (expected 'adamw' or 'dimuon')")
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
        self.base_model: Final = base_model
        self.rank: Final = rank
        self.seed: Final = seed
        self.optimizer: Final[OptimizerFamily] = optimizer
        self._emb, _, self._base_table = _base_weights(self.cfg, base_model)
        rng = np.random.default_rng(np.random.SeedSequence([_check_int(seed, "seed", -(2**63)) % _SEED_MOD, 0x10AA]))
        self._params: dict[str, F64] = {
            "lora_A": rng.standard_normal((self.cfg.hidden, rank)) / math.sqrt(self.cfg.hidden),
            "lora_B": np.zeros((rank, self.cfg.vocab_size)),
        }
        vocab = self.cfg.vocab_size
        self._grad_table: F64 = np.zeros((vocab, vocab))
        self._step = 0
        self._opt_state: dict[str, F64] = {}
        self._tables: _Tables | None = None

    # ---- properties -------------------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    @property
    def eos_token_id(self) -> int:
        return self.cfg.eos

    @property
    def step(self) -> int:
        """Number of optimizer steps taken (restored by checkpoints that include the optimizer)."""
        return self._step

    # ---- parameters -------------------------------------------------------------------------------------------------

    def get_parameters(self) -> dict[str, F64]:
        """Copies of the trainable parameters ``{"lora_A": (d, r), "lora_B": (r, V)}`` (float64)."""
        return {name: value.copy() for name, value in self._params.items()}

    def set_parameters(self, params: Mapping[str, npt.ArrayLike]) -> None:
        """Replace trainable parameters (same names and shapes). Pending gradients are dropped."""
        new: dict[str, F64] = {}
        for name, value in params.items():
            if name not in self._params:
                raise SimUserError(f"unknown parameter {name!r}")
            arr = np.array(value, dtype=np.float64)
            if arr.shape != self._params[name].shape:
                raise SimUserError(f"parameter {name!r} has shape {arr.shape}, expected {self._params[name].shape}")
            new[name] = arr
        self._params = {**self._params, **new}
        self.zero_grad()

    def gradients(self) -> dict[str, F64]:
        """The accumulated gradients of the summed loss w.r.t. the trainable parameters (float64)."""
        grad_table = self._grad_table
        params = self._params
        hidden_lora = self._emb @ params["lora_A"]  # (V, r)
        grad_b = hidden_lora.T @ grad_table  # (r, V)
        grad_a = self._emb.T @ (grad_table @ params["lora_B"].T)  # (d, r)
        return {"lora_A": np.asarray(grad_a, dtype=np.float64), "lora_B": np.asarray(grad_b, dtype=np.float64)}

    def zero_grad(self) -> None:
        self._grad_table = np.zeros_like(self._grad_table)

    def _get_tables(self) -> _Tables:
        # The parameter dict is never mutated, only replaced, so the cached tables are valid while they were computed
        # from the current dict. This keeps a reader (e.g. a sampler of in-flight weights on another thread) consistent:
        # it works on one set of weights even if an optimizer step lands meanwhile.
        params = self._params
        tables = self._tables
        if tables is None or tables.params is not params:
            delta = (self._emb @ params["lora_A"]) @ params["lora_B"]
            logits = np.asarray(self._base_table + delta, dtype=np.float64)
            logprobs = _log_softmax(logits)
            logits.setflags(write=False)
            logprobs.setflags(write=False)
            tables = _Tables(params=params, logits=logits, logprobs=logprobs, sampling={})
            self._tables = tables
        return tables

    def drop_caches(self) -> None:
        """Forget the cached logit, log-prob and sampling tables (about 2.5 MB at the default sizes); the next use
        recomputes them. Safe while another thread samples: it keeps the tables it already holds."""
        self._tables = None

    def logit_table(self) -> F64:
        """The V×V logit table: row ``x`` holds the next-token logits after token ``x`` (read-only)."""
        return self._get_tables().logits

    def logprob_table(self) -> F64:
        """The row-wise log-softmax of :meth:`logit_table` (read-only)."""
        return self._get_tables().logprobs

    # ---- forward / backward -----------------------------------------------------------------------------------------

    def forward_backward(
        self,
        data: Sequence[DatumArrays],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None = None,
        *,
        forward_only: bool = False,
    ) -> FwdBwdResult:
        """Compute the loss and the learner's logprobs; accumulate gradients unless ``forward_only``.

        Validation happens before anything is accumulated, so a request that raises :class:`SimUserError` leaves the
        model untouched.
        """
        conf = self._loss_config(loss_fn, loss_fn_config)
        required = _LOSS_INPUTS[loss_fn]
        prepared = [self._prepare(i, datum, required) for i, datum in enumerate(data)]
        vocab = self.cfg.vocab_size
        if prepared:
            rows = np.concatenate([p.rows for p in prepared])
            targets = np.concatenate([p.targets for p in prepared])
            inputs = {name: np.concatenate([p.inputs[name] for p in prepared]) for name in required[1:]}
        else:
            rows = np.zeros(0, dtype=np.int64)
            targets = np.zeros(0, dtype=np.int64)
            inputs = {name: np.zeros(0) for name in required[1:]}
        logsm = self.logprob_table()
        lp: F64 = logsm[rows, targets]
        terms, dlp = _loss_and_grad(loss_fn, lp, inputs, conf)
        loss = float(terms.sum())
        if not forward_only and rows.size:
            scatter = np.bincount(rows * vocab + targets, weights=dlp, minlength=vocab * vocab).reshape(vocab, vocab)
            row_total = np.bincount(rows, weights=dlp, minlength=vocab)
            self._grad_table += scatter - row_total[:, None] * np.exp(logsm)
        outputs: list[dict[str, F32]] = []
        offset = 0
        lp32 = lp.astype(np.float32)
        for p in prepared:
            count = p.targets.size
            outputs.append({"logprobs": lp32[offset : offset + count].reshape(p.shape)})
            offset += count
        return FwdBwdResult(loss_fn_outputs=outputs, metrics={"loss:sum": loss})

    def forward(
        self, data: Sequence[DatumArrays], loss_fn: str, loss_fn_config: Mapping[str, float | str] | None = None
    ) -> FwdBwdResult:
        """``forward_backward(..., forward_only=True)``."""
        return self.forward_backward(data, loss_fn, loss_fn_config, forward_only=True)

    def _loss_config(self, loss_fn: str, loss_fn_config: Mapping[str, float | str] | None) -> dict[str, float]:
        if loss_fn in UNSUPPORTED_LOSS_FUNCTIONS:
            raise SimUserError(f"loss_fn {loss_fn!r} is unsupported by the simulator")
        if loss_fn not in _LOSS_INPUTS:
            raise SimUserError(f"unknown loss_fn {loss_fn!r}; expected one of {', '.join(LOSS_FUNCTIONS)}")
        defaults = _LOSS_CONFIG_DEFAULTS[loss_fn]
        conf = dict(defaults)
        for key, value in (loss_fn_config or {}).items():
            if key not in defaults:
                allowed = ", ".join(defaults) or "none"
                raise SimUserError(f"unknown loss_fn_config key {key!r} for {loss_fn} (allowed: {allowed})")
            conf[key] = _finite_number(value, f"loss_fn_config[{key!r}]")
        if "clip_low_threshold" in conf:
            lo, hi = conf["clip_low_threshold"], conf["clip_high_threshold"]
            if not 0.0 <= lo <= hi:
                raise SimUserError(f"need 0 <= clip_low_threshold <= clip_high_threshold, got {lo} and {hi}")
        if conf.get("beta", 0.0) < 0.0:
            raise SimUserError("beta must be >= 0")
        return conf

    def _prepare(self, index: int, datum: DatumArrays, required: tuple[str, ...]) -> _Prepared:
        vocab = self.cfg.vocab_size
        tokens = _as_tokens(datum.tokens, f"datum {index}: model input", vocab)
        if tokens.ndim != 1:
            raise SimUserError(f"datum {index}: model input must be 1-D, got shape {tokens.shape}")
        n = tokens.shape[0]
        missing = [name for name in required if name not in datum.loss_fn_inputs]
        if missing:
            raise SimUserError(f"datum {index}: missing loss_fn_inputs {missing} (required: {list(required)})")
        targets = _as_tokens(datum.loss_fn_inputs["target_tokens"], f"datum {index}: target_tokens", vocab)
        if targets.ndim not in (1, 2) or targets.shape[0] != n:
            raise SimUserError(
                f"datum {index}: target_tokens has shape {targets.shape}, expected ({n},) or ({n}, K) "
                f"to match the model input length {n}"
            )
        shape: tuple[int, ...] = tuple(targets.shape)
        inputs: dict[str, F64] = {}
        for name in required[1:]:
            arr = _as_float(datum.loss_fn_inputs[name], f"datum {index}: loss_fn_inputs[{name!r}]")
            if arr.shape != shape:
                raise SimUserError(
                    f"datum {index}: loss_fn_inputs[{name!r}] has shape {arr.shape}, expected {shape} "
                    "(the shape of target_tokens)"
                )
            inputs[name] = arr.reshape(-1)
        per_row = 1 if targets.ndim == 1 else targets.shape[1]
        rows = np.repeat(tokens, per_row) if per_row != 1 else tokens
        return _Prepared(rows=rows, targets=targets.reshape(-1), inputs=inputs, shape=shape)

    # ---- optimizer --------------------------------------------------------------------------------------------------

    def optim_step(self, params: AdamParams | DimuonParams) -> dict[str, float]:
        """Apply the accumulated gradients and clear them. Returns ``{"grad_norm:mean", "learning_rate:mean"}``
        (the gradient norm before clipping)."""
        if isinstance(params, AdamParams):
            if self.optimizer != "adamw":
                raise SimUserError("this model was created with the dimuon optimizer; send DimuonParams")
            self._check_adam(params)
            lr, clip = params.learning_rate, params.grad_clip_norm
        else:
            if self.optimizer != "dimuon":
                raise SimUserError("this model was created with the adamw optimizer; send AdamParams")
            self._check_dimuon(params)
            lr, clip = params.learning_rate, params.grad_clip_norm
        grads = self.gradients()
        norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
        if clip > 0.0 and norm > clip:
            scale = clip / norm
            grads = {name: g * scale for name, g in grads.items()}
        self._step += 1
        step = self._step
        new_params: dict[str, F64] = {}
        for name in _PARAM_NAMES:
            p = self._params[name]
            g = grads[name]
            m = self._opt_state.get(f"m.{name}")
            if m is None:
                m = np.zeros_like(p)
            if isinstance(params, AdamParams):
                v = self._opt_state.get(f"v.{name}")
                if v is None:
                    v = np.zeros_like(p)
                m = params.beta1 * m + (1.0 - params.beta1) * g
                v = params.beta2 * v + (1.0 - params.beta2) * g * g
                m_hat = m / (1.0 - params.beta1**step)
                v_hat = v / (1.0 - params.beta2**step)
                p = p * (1.0 - lr * params.weight_decay) - lr * m_hat / (np.sqrt(v_hat) + params.eps)
                self._opt_state[f"v.{name}"] = v
            else:
                m = params.beta1 * m + g
                p = p - lr * m
            self._opt_state[f"m.{name}"] = m
            new_params[name] = p
        self._params = new_params
        self.zero_grad()
        return {"grad_norm:mean": norm, "learning_rate:mean": float(lr)}

    @staticmethod
    def _check_common(lr: float, clip: float, beta1: float) -> None:
        _finite_number(lr, "learning_rate")
        _finite_number(clip, "grad_clip_norm")
        _finite_number(beta1, "beta1")
        if lr < 0.0:
            raise SimUserError("learning_rate must be >= 0")
        if clip < 0.0:
            raise SimUserError("grad_clip_norm must be >= 0 (0 = off)")
        if not 0.0 <= beta1 < 1.0:
            raise SimUserError("beta1 must be in [0, 1)")

    def _check_adam(self, params: AdamParams) -> None:
        self._check_common(params.learning_rate, params.grad_clip_norm, params.beta1)
        for name in ("beta2", "eps", "weight_decay"):
            _finite_number(getattr(params, name), name)
        if not 0.0 <= params.beta2 < 1.0:
            raise SimUserError("beta2 must be in [0, 1)")
        if params.eps < 0.0 or params.weight_decay < 0.0:
            raise SimUserError("eps and weight_decay must be >= 0")

    def _check_dimuon(self, params: DimuonParams) -> None:
        self._check_common(params.learning_rate, params.grad_clip_norm, params.beta1)

    # ---- sampling ---------------------------------------------------------------------------------------------------

    def _sampling_tables(self, tables: _Tables, temperature: float, top_k: int, top_p: float) -> tuple[I64, F64]:
        """Per previous token: the token order (most likely first) and the CDF over it of the filtered, renormalised
        distribution at ``temperature``."""
        key = (temperature, top_k, top_p)
        cached = tables.sampling.get(key)
        if cached is not None:
            return cached
        vocab = self.cfg.vocab_size
        scaled = tables.logits / temperature
        order = np.argsort(-scaled, axis=1, kind="stable")
        sorted_logits = np.take_along_axis(scaled, order, axis=1)
        probs = np.exp(sorted_logits - sorted_logits[:, :1])
        ranks = np.arange(vocab)
        if 0 < top_k < vocab:
            probs[:, ranks >= top_k] = 0.0
        probs /= probs.sum(axis=1, keepdims=True)
        if top_p < 1.0:
            before = np.cumsum(probs, axis=1) - probs  # mass of the strictly better tokens
            keep = before < top_p
            keep[:, 0] = True
            probs = np.where(keep, probs, 0.0)
        cdf = np.cumsum(probs, axis=1)
        cdf /= cdf[:, -1:]
        if len(tables.sampling) >= 8:
            tables.sampling.clear()
        result = (order.astype(np.int64), cdf)
        tables.sampling[key] = result
        return result

    def sample(
        self,
        prompt_tokens: Sequence[int] | npt.NDArray[Any],
        *,
        num_samples: int = 1,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        top_k: int = -1,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_tokens: Sequence[int] | None = None,
        stop_sequences: Sequence[Sequence[int]] = (),
        prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        topk_sample_logprobs: int = 0,
        target_prompt_logprobs: npt.NDArray[Any] | None = None,
        prompt_alt_tokens_k: int = 0,
        prompt_logprobs_last_n: int | None = None,
    ) -> SampleResult:
        """Generate ``num_samples`` continuations of ``prompt_tokens`` (see the module docstring for the rules).

        ``stop_tokens``: ``None`` → stop at EOS; ``[]`` → no stop token. ``stop_sequences``: multi-token stops
        (e.g. the bytes of a stop string), matched within the generated tokens. Both also apply to each other.
        ``seed`` makes the result reproducible; ``prompt_alt_tokens`` use an independent stream of the same seed, so
        asking for them does not change the sequences.
        """
        cfg = self.cfg
        vocab = cfg.vocab_size
        prompt = _as_tokens(np.asarray(prompt_tokens), "prompt", vocab)
        if prompt.ndim != 1 or prompt.size == 0:
            raise SimUserError("prompt must be a non-empty 1-D token sequence")
        length = prompt.shape[0]
        if max_tokens is None:
            max_tokens = cfg.default_max_tokens
        _check_int(num_samples, "num_samples", 1)
        _check_int(max_tokens, "max_tokens", 1)
        if length + max_tokens > cfg.max_context:
            raise SimUserError(
                f"prompt length {length} + max_tokens {max_tokens} exceeds the context window {cfg.max_context}"
            )
        temperature = _finite_number(temperature, "temperature")
        top_p = _finite_number(top_p, "top_p")
        if temperature < 0.0:
            raise SimUserError("temperature must be >= 0")
        if not 0.0 <= top_p <= 1.0:
            raise SimUserError("top_p must be in [0, 1]")
        _check_int(top_k, "top_k", -1)
        _check_int(topk_prompt_logprobs, "topk_prompt_logprobs", 0)
        _check_int(topk_sample_logprobs, "topk_sample_logprobs", 0)
        _check_int(prompt_alt_tokens_k, "prompt_alt_tokens_k", 0)
        if prompt_logprobs_last_n is not None:
            _check_int(prompt_logprobs_last_n, "prompt_logprobs_last_n", 0)
        stops = (
            np.array([cfg.eos], dtype=np.int64)
            if stop_tokens is None
            else _as_tokens(np.asarray(stop_tokens, dtype=np.int64), "stop_tokens", vocab).reshape(-1)
        )
        seqs = [_as_tokens(np.asarray(s, dtype=np.int64), "stop_sequences", vocab).reshape(-1) for s in stop_sequences]
        stop_seqs = [s for s in seqs if s.size > 0]

        entropy = None if seed is None else _check_int(seed, "seed", -(2**63)) % _SEED_MOD
        gen_seed, alt_seed = np.random.SeedSequence(entropy).spawn(2)
        tables = self._get_tables()
        logsm = tables.logprobs
        if temperature == 0.0:
            order = np.argmax(tables.logits, axis=1).astype(np.int64)[:, None]
            cdf = np.ones((vocab, 1))
        else:
            order, cdf = self._sampling_tables(tables, temperature, top_k, top_p)

        out = np.zeros((num_samples, max_tokens), dtype=np.int64)
        lengths = np.zeros(num_samples, dtype=np.int64)
        done = np.zeros(num_samples, dtype=np.bool_)
        stopped = np.zeros(num_samples, dtype=np.bool_)
        last = np.full(num_samples, prompt[-1], dtype=np.int64)
        rng = np.random.default_rng(gen_seed)
        for step in range(max_tokens):
            active = np.flatnonzero(~done)
            if active.size == 0:
                break
            uniform = rng.random(num_samples)[active]
            prev = last[active]
            index = (cdf[prev] <= uniform[:, None]).sum(axis=1)
            index = np.minimum(index, cdf.shape[1] - 1)
            tokens = order[prev, index]
            out[active, step] = tokens
            lengths[active] += 1
            last[active] = tokens
            hit = np.isin(tokens, stops) if stops.size else np.zeros(active.size, dtype=np.bool_)
            if stop_seqs:
                for j, row in enumerate(active):
                    if not hit[j]:
                        produced = out[row, : step + 1]
                        hit[j] = any(
                            s.size <= produced.size and bool(np.array_equal(produced[-s.size :], s)) for s in stop_seqs
                        )
            stopped[active[hit]] = True
            done[active[hit]] = True

        sequences: list[SampledSeq] = []
        for i in range(num_samples):
            toks = out[i, : lengths[i]].copy()
            prevs = np.concatenate([prompt[-1:], toks[:-1]])
            lps = logsm[prevs, toks].astype(np.float32)
            topk = _topk(logsm[prevs], topk_sample_logprobs) if topk_sample_logprobs > 0 else None
            sequences.append(
                SampledSeq(tokens=toks, logprobs=lps, stop_reason="stop" if stopped[i] else "length", topk=topk)
            )

        # ---- prompt-side outputs
        scored_from = 1 if prompt_logprobs_last_n is None else max(1, length - prompt_logprobs_last_n)
        prompt_lp: F32 | None = None
        if prompt_logprobs:
            values = np.full(length, np.nan, dtype=np.float32)
            values[scored_from:] = logsm[prompt[scored_from - 1 : -1], prompt[scored_from:]]
            prompt_lp = values
        topk_prompt: TopK | None = None
        if topk_prompt_logprobs > 0:
            rows = np.full((length, vocab), -np.inf)
            rows[scored_from:] = logsm[prompt[scored_from - 1 : -1]]
            topk_prompt = _topk(rows, topk_prompt_logprobs)
            topk_prompt.token_ids[:scored_from] = 0
            topk_prompt.logprobs[:scored_from] = MASK_LOGPROB
        target_lp: F32 | None = None
        if target_prompt_logprobs is not None:
            raw = np.asarray(target_prompt_logprobs)
            if raw.dtype.kind not in "iu" or raw.ndim != 2 or raw.shape[0] != length - 1:
                raise SimUserError(
                    f"target_prompt_logprobs must be an integer array of shape ({length - 1}, K), "
                    f"got {raw.dtype} {raw.shape}"
                )
            ids = raw.astype(np.int64)
            if bool(np.any(ids < -1)):
                raise SimUserError("target_prompt_logprobs ids must be >= 0, or -1 to skip")
            skip = ids == -1
            gathered = logsm[prompt[:-1, None], np.mod(np.where(skip, 0, ids), vocab)]
            target_lp = np.where(skip, 0.0, gathered).astype(np.float32)
        alt_tokens: I64 | None = None
        alt_lps: F32 | None = None
        if prompt_alt_tokens_k > 0:
            prevs = prompt[:-1]
            uniform = np.random.default_rng(alt_seed).random((length - 1, prompt_alt_tokens_k))
            cdf_rows = cdf[prevs]  # (L-1, C)
            index = (cdf_rows[:, None, :] <= uniform[:, :, None]).sum(axis=2)
            index = np.minimum(index, cdf.shape[1] - 1)
            alt_tokens = np.take_along_axis(order[prevs], index, axis=1)
            alt_lps = np.take_along_axis(logsm[prevs], alt_tokens, axis=1).astype(np.float32)
        return SampleResult(
            sequences=sequences,
            prompt_logprobs=prompt_lp,
            topk_prompt=topk_prompt,
            target_prompt_logprobs=target_lp,
            prompt_alt_tokens=alt_tokens,
            prompt_alt_logprobs=alt_lps,
        )

    # ---- checkpoints ------------------------------------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "base_model": self.base_model,
            "rank": self.rank,
            "seed": self.seed,
            "optimizer": self.optimizer,
            "cfg": asdict(self.cfg),
        }

    def state_dict(self, *, with_optimizer: bool = True) -> dict[str, npt.NDArray[Any]]:
        """Everything needed to rebuild this model exactly: the LoRA weights, metadata (``"meta"``: a 0-d str array of
        JSON) and, with ``with_optimizer``, the step counter (``"optim.step"``) and moments (``"optim.m.lora_A"`` …)."""
        state: dict[str, npt.NDArray[Any]] = {"meta": np.array(json.dumps(self._meta(), sort_keys=True))}
        for name, value in self._params.items():
            state[f"param.{name}"] = value.copy()
        if with_optimizer:
            state["optim.step"] = np.array(self._step, dtype=np.int64)
            for name, value in self._opt_state.items():
                state[f"optim.{name}"] = value.copy()
        return state

    @staticmethod
    def _read_meta(state: Mapping[str, npt.NDArray[Any]]) -> dict[str, Any]:
        try:
            meta: object = json.loads(str(state["meta"][()]))
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise SimUserError("not a simulator checkpoint (bad or missing metadata)") from exc
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:  # pyright: ignore[reportUnknownMemberType]
            raise SimUserError("not a simulator checkpoint (unknown format)")
        return dict(meta)  # pyright: ignore[reportUnknownArgumentType]

    @classmethod
    def from_state_dict(cls, state: Mapping[str, npt.NDArray[Any]]) -> LoraModel:
        """A new model equal to the one that produced ``state`` (weights, and optimizer state if present)."""
        meta = cls._read_meta(state)
        try:
            cfg = ModelConfig(**meta["cfg"])
            model = cls(meta["base_model"], int(meta["rank"]), int(meta["seed"]), cfg, optimizer=meta["optimizer"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SimUserError(f"not a simulator checkpoint: {exc}") from exc
        model.load_state_dict(state, with_optimizer="optim.step" in state)
        return model

    def load_state_dict(self, state: Mapping[str, npt.NDArray[Any]], *, with_optimizer: bool) -> None:
        """Load weights (and, with ``with_optimizer``, the optimizer state; otherwise the optimizer is reset) into this
        model. The checkpoint must be for the same base model, rank and config. Pending gradients are dropped."""
        meta = self._read_meta(state)
        mine = self._meta()
        for key in ("base_model", "rank", "cfg"):
            if meta.get(key) != mine[key]:
                raise SimUserError(f"checkpoint {key} {meta.get(key)!r} does not match this model's {mine[key]!r}")
        if with_optimizer and "optim.step" not in state:
            raise SimUserError("checkpoint has no optimizer state")
        if with_optimizer and meta.get("optimizer") != self.optimizer:
            raise SimUserError(f"checkpoint optimizer {meta.get('optimizer')!r} is not {self.optimizer!r}")
        params: dict[str, F64] = {}
        for name in _PARAM_NAMES:
            value = state.get(f"param.{name}")
            if value is None or value.shape != self._params[name].shape:
                raise SimUserError(f"checkpoint parameter {name!r} missing or of the wrong shape")
            params[name] = np.array(value, dtype=np.float64)
        opt_state: dict[str, F64] = {}
        step = 0
        if with_optimizer:
            step = int(state["optim.step"])
            for key, value in state.items():
                if key.startswith("optim.") and key != "optim.step":
                    opt_state[key.removeprefix("optim.")] = np.array(value, dtype=np.float64)
        self._params = params
        self._opt_state = opt_state
        self._step = step
        self.zero_grad()

    def to_bytes(self, *, with_optimizer: bool = True) -> bytes:
        """:meth:`state_dict` as an ``.npz`` archive in memory."""
        buf = io.BytesIO()
        arrays: dict[str, Any] = dict(self.state_dict(with_optimizer=with_optimizer))
        np.savez(buf, **arrays)
        return buf.getvalue()

    @staticmethod
    def _state_from_bytes(data: bytes) -> dict[str, npt.NDArray[Any]]:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except (OSError, ValueError, EOFError, KeyError) as exc:
            raise SimUserError("not a simulator checkpoint (unreadable archive)") from exc

    @classmethod
    def from_bytes(cls, data: bytes) -> LoraModel:
        """The inverse of :meth:`to_bytes`."""
        return cls.from_state_dict(cls._state_from_bytes(data))

    def load_bytes(self, data: bytes, *, with_optimizer: bool) -> None:
        """:meth:`load_state_dict` from :meth:`to_bytes` output."""
        self.load_state_dict(self._state_from_bytes(data), with_optimizer=with_optimizer)

    def snapshot(self) -> LoraModel:
        """An independent copy of the current weights (no optimizer state, no gradients), e.g. for a sampler."""
        return LoraModel.from_state_dict(self.state_dict(with_optimizer=False))
