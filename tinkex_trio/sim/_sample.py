"""Sampling from the simulator's model: the token distribution per previous token, generation, and the prompt-side
outputs (prompt logprobs, top-k, target logprobs, alternative tokens). The rules are in `tinkex_trio.sim._model`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tinkex_trio.sim._model_types import (
    F32,
    F64,
    I64,
    MASK_LOGPROB,
    BoolArr,
    SampledSeq,
    SampleResult,
    SimUserError,
    TopK,
    as_tokens,
    top_k_rows,
)

__all__ = ["Tables", "generate", "prompt_outputs", "sampled_sequences", "stop_arrays", "token_cdf"]


@dataclass(frozen=True)
class Tables:
    """Derived tables of one set of weights (``params`` is the dict they were computed from)."""

    params: Mapping[str, F64]
    logits: F64
    logprobs: F64
    sampling: dict[tuple[float, int, float], tuple[I64, F64]]


def token_cdf(tables: Tables, temperature: float, top_k: int, top_p: float) -> tuple[I64, F64]:
    """Per previous token: the token order (most likely first) and the CDF over it of the filtered, renormalised
    distribution at ``temperature`` (0: greedy, ties to the lowest id). Cached in ``tables``."""
    if temperature == 0.0:
        vocab = int(tables.logits.shape[0])
        return np.argmax(tables.logits, axis=1).astype(np.int64)[:, None], np.ones((vocab, 1))
    key = (temperature, top_k, top_p)
    cached = tables.sampling.get(key)
    if cached is not None:
        return cached
    vocab = int(tables.logits.shape[1])
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


def stop_arrays(
    stop_tokens: Sequence[int] | None, stop_sequences: Sequence[Sequence[int]], eos: int, vocab: int
) -> tuple[I64, list[I64]]:
    """The stop tokens (``None``: EOS) and the non-empty stop sequences, as token arrays."""
    stops = (
        np.array([eos], dtype=np.int64)
        if stop_tokens is None
        else as_tokens(np.asarray(stop_tokens, dtype=np.int64), "stop_tokens", vocab).reshape(-1)
    )
    seqs = [as_tokens(np.asarray(s, dtype=np.int64), "stop_sequences", vocab).reshape(-1) for s in stop_sequences]
    return stops, [s for s in seqs if s.size > 0]


def generate(
    order: I64,
    cdf: F64,
    last_token: int,
    num_samples: int,
    max_tokens: int,
    stops: I64,
    stop_seqs: list[I64],
    rng: np.random.Generator,
) -> tuple[I64, I64, BoolArr]:
    """``(tokens, lengths, stopped)``: ``num_samples`` rows of up to ``max_tokens`` tokens after ``last_token``,
    drawn together step by step; a row ends at a stop token or stop sequence (``stopped``) or at ``max_tokens``."""
    out = np.zeros((num_samples, max_tokens), dtype=np.int64)
    lengths = np.zeros(num_samples, dtype=np.int64)
    done = np.zeros(num_samples, dtype=np.bool_)
    stopped = np.zeros(num_samples, dtype=np.bool_)
    last = np.full(num_samples, last_token, dtype=np.int64)
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
    return out, lengths, stopped


def sampled_sequences(
    logsm: F64, last_token: I64, out: I64, lengths: I64, stopped: BoolArr, topk: int
) -> list[SampledSeq]:
    """The generated rows as sequences, with the model's raw logprobs (and top-k when ``topk > 0``)."""
    sequences: list[SampledSeq] = []
    for i in range(out.shape[0]):
        toks = out[i, : lengths[i]].copy()
        prevs = np.concatenate([last_token, toks[:-1]])
        lps = logsm[prevs, toks].astype(np.float32)
        top = top_k_rows(logsm[prevs], topk) if topk > 0 else None
        sequences.append(
            SampledSeq(tokens=toks, logprobs=lps, stop_reason="stop" if stopped[i] else "length", topk=top)
        )
    return sequences


def prompt_outputs(
    sequences: list[SampledSeq],
    logsm: F64,
    order: I64,
    cdf: F64,
    prompt: I64,
    *,
    prompt_logprobs: bool,
    topk_prompt_logprobs: int,
    target_prompt_logprobs: npt.NDArray[Any] | None,
    prompt_alt_tokens_k: int,
    prompt_logprobs_last_n: int | None,
    alt_seed: np.random.SeedSequence,
) -> SampleResult:
    """``sequences`` with the prompt-side outputs that were asked for (see `SampleResult`).

    ``prompt_logprobs_last_n`` (with ``prompt_logprobs``, between 1 and ``len(prompt) - 1``) scores only the last n
    prompt tokens, for ``prompt_logprobs`` and ``topk_prompt_logprobs``; it does not affect the target logprobs or the
    alternative tokens.
    """
    length = prompt.shape[0]
    if prompt_logprobs_last_n is not None:
        if not prompt_logprobs:
            raise SimUserError("prompt_logprobs_last_n applies to prompt logprobs: it needs prompt_logprobs")
        if not 1 <= prompt_logprobs_last_n <= length - 1:
            raise SimUserError(
                f"prompt_logprobs_last_n must be between 1 and len(prompt) - 1 = {length - 1}, "
                f"got {prompt_logprobs_last_n}"
            )
    scored_from = 1 if prompt_logprobs_last_n is None else max(1, length - prompt_logprobs_last_n)
    prompt_lp: F32 | None = None
    if prompt_logprobs:
        values = np.full(length, np.nan, dtype=np.float32)
        values[scored_from:] = logsm[prompt[scored_from - 1 : -1], prompt[scored_from:]]
        prompt_lp = values
    topk_prompt: TopK | None = None
    if topk_prompt_logprobs > 0:
        rows = np.full((length, logsm.shape[1]), -np.inf)
        rows[scored_from:] = logsm[prompt[scored_from - 1 : -1]]
        topk_prompt = top_k_rows(rows, topk_prompt_logprobs)
        topk_prompt.token_ids[:scored_from] = 0
        topk_prompt.logprobs[:scored_from] = MASK_LOGPROB
    target_lp = _target_logprobs(logsm, prompt, target_prompt_logprobs) if target_prompt_logprobs is not None else None
    alt_tokens: I64 | None = None
    alt_lps: F32 | None = None
    if prompt_alt_tokens_k > 0:
        alt_tokens, alt_lps = _alt_tokens(logsm, order, cdf, prompt, prompt_alt_tokens_k, alt_seed)
    return SampleResult(
        sequences=sequences,
        prompt_logprobs=prompt_lp,
        topk_prompt=topk_prompt,
        target_prompt_logprobs=target_lp,
        prompt_alt_tokens=alt_tokens,
        prompt_alt_logprobs=alt_lps,
    )


def _target_logprobs(logsm: F64, prompt: I64, target: npt.NDArray[Any]) -> F32:
    length = prompt.shape[0]
    raw = np.asarray(target)
    if raw.dtype.kind not in "iu" or raw.ndim != 2 or raw.shape[0] != length - 1:
        raise SimUserError(
            f"target_prompt_logprobs must be an integer array of shape ({length - 1}, K), got {raw.dtype} {raw.shape}"
        )
    ids = raw.astype(np.int64)
    if bool(np.any(ids < -1)):
        raise SimUserError("target_prompt_logprobs ids must be >= 0, or -1 to skip")
    if not bool(np.any(ids >= 0)):
        raise SimUserError("target_prompt_logprobs names no token id (every cell is -1)")
    skip = ids == -1
    gathered = logsm[prompt[:-1, None], np.mod(np.where(skip, 0, ids), logsm.shape[1])]
    return np.where(skip, 0.0, gathered).astype(np.float32)


def _alt_tokens(logsm: F64, order: I64, cdf: F64, prompt: I64, k: int, seed: np.random.SeedSequence) -> tuple[I64, F32]:
    prevs = prompt[:-1]
    uniform = np.random.default_rng(seed).random((prompt.shape[0] - 1, k))
    cdf_rows = cdf[prevs]  # (L-1, C)
    index = (cdf_rows[:, None, :] <= uniform[:, :, None]).sum(axis=2)
    index = np.minimum(index, cdf.shape[1] - 1)
    alt_tokens = np.take_along_axis(order[prevs], index, axis=1)
    return alt_tokens, np.take_along_axis(logsm[prevs], alt_tokens, axis=1).astype(np.float32)
