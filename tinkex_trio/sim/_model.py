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

Losses: `tinkex_trio.sim._losses` (protocol §13), all summed, never averaged, with exact gradients.

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
from dataclasses import asdict
from functools import lru_cache
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from tinkex_trio.sim._losses import LOSS_INPUTS, RECORDED_INPUTS, loss_and_grad, loss_config, prepare
from tinkex_trio.sim._model_types import (
    F32,
    F64,
    AdamParams,
    DatumArrays,
    DimuonParams,
    FwdBwdResult,
    ModelConfig,
    OptimizerFamily,
    SampleResult,
    SimUserError,
    as_tokens,
    check_int,
    finite_number,
)
from tinkex_trio.sim._sample import (
    Tables,
    generate,
    prompt_outputs,
    sampled_sequences,
    stop_arrays,
    token_cdf,
)

__all__ = ["LoraModel"]

_PARAM_NAMES: Final = ("lora_A", "lora_B")
_FORMAT: Final = "tinkex_trio.sim.lora/1"
_SEED_MOD: Final = 2**64  # any integer seed works; it is reduced modulo 2**64


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
        if check_int(rank, "LoRA rank", 1) > self.cfg.max_lora_rank:
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
        rng = np.random.default_rng(np.random.SeedSequence([check_int(seed, "seed", -(2**63)) % _SEED_MOD, 0x10AA]))
        self._params: dict[str, F64] = {
            "lora_A": rng.standard_normal((self.cfg.hidden, rank)) / math.sqrt(self.cfg.hidden),
            "lora_B": np.zeros((rank, self.cfg.vocab_size)),
        }
        vocab = self.cfg.vocab_size
        self._grad_table: F64 = np.zeros((vocab, vocab))
        self._step = 0
        self._opt_state: dict[str, F64] = {}
        self._tables: Tables | None = None

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

    def _get_tables(self) -> Tables:
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
            tables = Tables(params=params, logits=logits, logprobs=logprobs, sampling={})
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
        conf = loss_config(loss_fn, loss_fn_config)
        required = LOSS_INPUTS[loss_fn]
        recorded = RECORDED_INPUTS.get(loss_fn, ())
        names = (*required[1:], *recorded)
        vocab = self.cfg.vocab_size
        prepared = [prepare(i, datum, required, vocab, recorded) for i, datum in enumerate(data)]
        if prepared:
            rows = np.concatenate([p.rows for p in prepared])
            targets = np.concatenate([p.targets for p in prepared])
            inputs = {name: np.concatenate([p.inputs[name] for p in prepared]) for name in names}
            segments = np.repeat(np.arange(len(prepared), dtype=np.int64), [p.targets.size for p in prepared])
        else:
            rows = np.zeros(0, dtype=np.int64)
            targets = np.zeros(0, dtype=np.int64)
            inputs = {name: np.zeros(0) for name in names}
            segments = np.zeros(0, dtype=np.int64)
        logsm = self.logprob_table()
        lp: F64 = logsm[rows, targets]
        terms, dlp = loss_and_grad(loss_fn, lp, inputs, conf, segments)
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
        finite_number(lr, "learning_rate")
        finite_number(clip, "grad_clip_norm")
        finite_number(beta1, "beta1")
        if lr < 0.0:
            raise SimUserError("learning_rate must be >= 0")
        if clip < 0.0:
            raise SimUserError("grad_clip_norm must be >= 0 (0 = off)")
        if not 0.0 <= beta1 < 1.0:
            raise SimUserError("beta1 must be in [0, 1)")

    def _check_adam(self, params: AdamParams) -> None:
        self._check_common(params.learning_rate, params.grad_clip_norm, params.beta1)
        for name in ("beta2", "eps", "weight_decay"):
            finite_number(getattr(params, name), name)
        if not 0.0 <= params.beta2 < 1.0:
            raise SimUserError("beta2 must be in [0, 1)")
        if params.eps < 0.0 or params.weight_decay < 0.0:
            raise SimUserError("eps and weight_decay must be >= 0")

    def _check_dimuon(self, params: DimuonParams) -> None:
        self._check_common(params.learning_rate, params.grad_clip_norm, params.beta1)

    # ---- sampling ---------------------------------------------------------------------------------------------------

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
        prompt = as_tokens(np.asarray(prompt_tokens), "prompt", cfg.vocab_size)
        if prompt.ndim != 1 or prompt.size == 0:
            raise SimUserError("prompt must be a non-empty 1-D token sequence")
        if max_tokens is None:
            max_tokens = cfg.default_max_tokens
        temperature, top_p = self._check_sampling(prompt.shape[0], num_samples, max_tokens, temperature, top_k, top_p)
        check_int(topk_prompt_logprobs, "topk_prompt_logprobs", 0)
        check_int(topk_sample_logprobs, "topk_sample_logprobs", 0)
        check_int(prompt_alt_tokens_k, "prompt_alt_tokens_k", 0)
        if prompt_logprobs_last_n is not None:
            check_int(prompt_logprobs_last_n, "prompt_logprobs_last_n", 0)
        stops, stop_seqs = stop_arrays(stop_tokens, stop_sequences, cfg.eos, cfg.vocab_size)

        entropy = None if seed is None else check_int(seed, "seed", -(2**63)) % _SEED_MOD
        gen_seed, alt_seed = np.random.SeedSequence(entropy).spawn(2)
        tables = self._get_tables()
        order, cdf = token_cdf(tables, temperature, top_k, top_p)
        rng = np.random.default_rng(gen_seed)
        out, lengths, stopped = generate(order, cdf, int(prompt[-1]), num_samples, max_tokens, stops, stop_seqs, rng)
        sequences = sampled_sequences(tables.logprobs, prompt[-1:], out, lengths, stopped, topk_sample_logprobs)
        return prompt_outputs(
            sequences,
            tables.logprobs,
            order,
            cdf,
            prompt,
            prompt_logprobs=prompt_logprobs,
            topk_prompt_logprobs=topk_prompt_logprobs,
            target_prompt_logprobs=target_prompt_logprobs,
            prompt_alt_tokens_k=prompt_alt_tokens_k,
            prompt_logprobs_last_n=prompt_logprobs_last_n,
            alt_seed=alt_seed,
        )

    def sampling_logprobs(
        self, last_prompt_token: int, tokens: npt.NDArray[Any], *, temperature: float, top_k: int, top_p: float
    ) -> F64:
        """The log-probability with which a sampler drew each of ``tokens`` (one sequence, after
        ``last_prompt_token``) from these weights at ``temperature``, ``top_k`` and ``top_p``: the distribution it
        really sampled from, filtered and renormalised (0.0 for greedy decoding; ``-inf`` for a token it could not have
        drawn). This is the stability information ``record_stability_info`` keeps for ``stable_reinforce``."""
        vocab = self.cfg.vocab_size
        seq = as_tokens(np.asarray(tokens), "tokens", vocab).reshape(-1)
        if seq.size == 0:
            return np.zeros(0)
        prev = np.concatenate([np.array([int(last_prompt_token) % vocab], dtype=np.int64), seq[:-1]])
        order, cdf = token_cdf(self._get_tables(), float(temperature), top_k, float(top_p))
        match = order[prev] == seq[:, None]
        found = match.any(axis=1)
        pos = np.argmax(match, axis=1)
        below = np.where(pos > 0, cdf[prev, np.maximum(pos - 1, 0)], 0.0)
        prob = np.where(found, cdf[prev, pos] - below, 0.0)
        with np.errstate(divide="ignore"):
            out: F64 = np.where(prob > 0.0, np.log(np.maximum(prob, 1e-300)), -np.inf)
        return out

    def _check_sampling(
        self, length: int, num_samples: int, max_tokens: int, temperature: float, top_k: int, top_p: float
    ) -> tuple[float, float]:
        """``(temperature, top_p)`` as floats, once every sampling parameter is checked."""
        check_int(num_samples, "num_samples", 1)
        check_int(max_tokens, "max_tokens", 1)
        if length + max_tokens > self.cfg.max_context:
            raise SimUserError(
                f"prompt length {length} + max_tokens {max_tokens} exceeds the context window {self.cfg.max_context}"
            )
        temperature = finite_number(temperature, "temperature")
        top_p = finite_number(top_p, "top_p")
        if temperature < 0.0:
            raise SimUserError("temperature must be >= 0")
        if not 0.0 <= top_p <= 1.0:
            raise SimUserError("top_p must be in [0, 1]")
        check_int(top_k, "top_k", -1)
        return temperature, top_p

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
