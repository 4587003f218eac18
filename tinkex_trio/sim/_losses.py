"""The loss functions of the simulator's model (protocol §13): their configuration and inputs, checked.

The formulas (each loss and its exact gradient) are :mod:`tinkex_trio._losses`, shared with the client's batching.

All summed over every position of every datum, never averaged: ``cross_entropy``, ``importance_sampling``, ``ppo``,
``cispo``, ``dro``, ``gspo``, ``stable_reinforce``. ``target_tokens`` may be 1-D ``(N,)`` or 2-D ``(N, K)`` (K targets
per position, e.g. distillation; the other loss inputs then have the same ``(N, K)`` shape and the returned ``logprobs``
too); ``stable_reinforce`` takes 1-D targets only (its provenance runs tile them). ``custom`` raises `SimUserError`
("unsupported"). Required inputs: ``target_tokens`` and ``weights`` for cross_entropy (weights are not optional);
``target_tokens``, ``logprobs`` and ``advantages`` for importance_sampling, ppo, cispo and dro; those and
``sequence_ratio_mask`` for gspo; ``target_tokens`` and ``advantages`` for stable_reinforce, whose sampler logprobs come
from the server's own sampling records through the datum's provenance spans (its ``logprobs`` input, if any, is
ignored). Other keys are ignored. ``loss_fn_config`` keys: ``clip_low_threshold`` (0.8) and ``clip_high_threshold``
(1.2) for ppo, cispo and gspo, ``beta`` (0.05) for dro, ``clip_high_threshold`` (2.0, the truncation of the importance
weight) and ``kl_coeff`` (0.0, the weight of its KL penalty toward the sampler) for stable_reinforce, none for the rest;
an unknown key, a non-number, a NaN/inf input or a shape mismatch raises `SimUserError` before anything is accumulated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from tinkex_trio._losses import LOSS_FUNCTIONS, LOSS_INPUTS, RECORDED_INPUTS, loss_and_grad
from tinkex_trio.sim._model_types import (
    F64,
    I64,
    DatumArrays,
    SimUserError,
    as_float,
    as_tokens,
    finite_number,
)

__all__ = [
    "LOSS_FUNCTIONS",
    "LOSS_INPUTS",
    "RECORDED_INPUTS",
    "UNSUPPORTED_LOSS_FUNCTIONS",
    "Prepared",
    "loss_and_grad",
    "loss_config",
    "prepare",
]

UNSUPPORTED_LOSS_FUNCTIONS: Final = ("custom",)
"""Loss functions of the protocol that this model rejects with ``SimUserError("unsupported …")``."""

_CLIP_DEFAULTS: Final[Mapping[str, float]] = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
_LOSS_CONFIG_DEFAULTS: Final[Mapping[str, Mapping[str, float]]] = {
    "cross_entropy": {},
    "importance_sampling": {},
    "ppo": _CLIP_DEFAULTS,
    "cispo": _CLIP_DEFAULTS,
    "dro": {"beta": 0.05},
    "gspo": _CLIP_DEFAULTS,
    "stable_reinforce": {"clip_high_threshold": 2.0, "kl_coeff": 0.0},
}


def loss_config(loss_fn: str, loss_fn_config: Mapping[str, float | str] | None) -> dict[str, float]:
    """The loss's configuration: its defaults overridden by ``loss_fn_config`` (checked)."""
    if loss_fn in UNSUPPORTED_LOSS_FUNCTIONS:
        raise SimUserError(f"loss_fn {loss_fn!r} is unsupported by the simulator")
    if loss_fn not in LOSS_INPUTS:
        raise SimUserError(f"unknown loss_fn {loss_fn!r}; expected one of {', '.join(LOSS_FUNCTIONS)}")
    defaults = _LOSS_CONFIG_DEFAULTS[loss_fn]
    conf = dict(defaults)
    for key, value in (loss_fn_config or {}).items():
        if key not in defaults:
            allowed = ", ".join(defaults) or "none"
            raise SimUserError(f"unknown loss_fn_config key {key!r} for {loss_fn} (allowed: {allowed})")
        conf[key] = finite_number(value, f"loss_fn_config[{key!r}]")
    if "clip_low_threshold" in conf:
        lo, hi = conf["clip_low_threshold"], conf["clip_high_threshold"]
        if not 0.0 <= lo <= hi:
            raise SimUserError(f"need 0 <= clip_low_threshold <= clip_high_threshold, got {lo} and {hi}")
    elif conf.get("clip_high_threshold", 1.0) <= 0.0:
        raise SimUserError(f"clip_high_threshold must be > 0, got {conf['clip_high_threshold']}")
    for name in ("beta", "kl_coeff"):
        if conf.get(name, 0.0) < 0.0:
            raise SimUserError(f"{name} must be >= 0, got {conf[name]}")
    return conf


@dataclass
class Prepared:
    """One datum as flat loss elements."""

    rows: I64  # input token of every loss element (flattened)
    targets: I64  # target token of every loss element
    inputs: dict[str, F64]  # other loss inputs, flattened like targets
    shape: tuple[int, ...]  # target_tokens' shape, for the output


def prepare(
    index: int, datum: DatumArrays, required: tuple[str, ...], vocab: int, recorded: tuple[str, ...] = ()
) -> Prepared:
    """Datum ``index`` as flat loss elements, its inputs checked against ``required`` (`LOSS_INPUTS`) and, from
    ``datum.recorded``, ``recorded`` (`RECORDED_INPUTS`)."""
    tokens = as_tokens(datum.tokens, f"datum {index}: model input", vocab)
    if tokens.ndim != 1:
        raise SimUserError(f"datum {index}: model input must be 1-D, got shape {tokens.shape}")
    n = tokens.shape[0]
    missing = [name for name in required if name not in datum.loss_fn_inputs]
    if missing:
        raise SimUserError(f"datum {index}: missing loss_fn_inputs {missing} (required: {list(required)})")
    targets = as_tokens(datum.loss_fn_inputs["target_tokens"], f"datum {index}: target_tokens", vocab)
    if targets.ndim not in (1, 2) or targets.shape[0] != n:
        raise SimUserError(
            f"datum {index}: target_tokens has shape {targets.shape}, expected ({n},) or ({n}, K) "
            f"to match the model input length {n}"
        )
    if recorded and targets.ndim != 1:
        raise SimUserError(f"datum {index}: this loss takes 1-D target_tokens, got shape {targets.shape}")
    shape: tuple[int, ...] = tuple(targets.shape)
    inputs: dict[str, F64] = {}
    for name in required[1:]:
        arr = as_float(datum.loss_fn_inputs[name], f"datum {index}: loss_fn_inputs[{name!r}]")
        if arr.shape != shape:
            raise SimUserError(
                f"datum {index}: loss_fn_inputs[{name!r}] has shape {arr.shape}, expected {shape} "
                "(the shape of target_tokens)"
            )
        inputs[name] = arr.reshape(-1)
    for name in recorded:
        if name not in datum.recorded:
            raise SimUserError(
                f"datum {index}: the sampling records its provenance names were not resolved ({name!r} missing)"
            )
        arr = as_float(datum.recorded[name], f"datum {index}: recorded {name!r}")
        if arr.shape != shape:
            raise SimUserError(f"datum {index}: recorded {name!r} has shape {arr.shape}, expected {shape}")
        inputs[name] = arr.reshape(-1)
    per_row = 1 if targets.ndim == 1 else targets.shape[1]
    rows = np.repeat(tokens, per_row) if per_row != 1 else tokens
    return Prepared(rows=rows, targets=targets.reshape(-1), inputs=inputs, shape=shape)
