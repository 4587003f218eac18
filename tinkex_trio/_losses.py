"""The built-in losses' formulas (protocol §13), shared by the simulator's model and the client's batching.

Every loss is a sum over positions of a term that depends only on the learner's logprob ``lp`` at that position and
the datum's own inputs, so one request over A+B accumulates the gradients of A and of B, and a client that merged
several items into one request can rebuild each item's ``loss:sum`` from its slice. Pure numpy, float64.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["LOSS_FUNCTIONS", "LOSS_INPUTS", "loss_and_grad"]

F64 = npt.NDArray[np.float64]

LOSS_FUNCTIONS: Final = ("cross_entropy", "importance_sampling", "ppo", "cispo", "dro")
"""The losses whose formula is here."""

_RL_INPUTS: Final = ("target_tokens", "logprobs", "advantages")
LOSS_INPUTS: Final[Mapping[str, tuple[str, ...]]] = {
    "cross_entropy": ("target_tokens", "weights"),
    "importance_sampling": _RL_INPUTS,
    "ppo": _RL_INPUTS,
    "cispo": _RL_INPUTS,
    "dro": _RL_INPUTS,
}
"""The loss inputs each loss needs: ``target_tokens`` first."""


def loss_and_grad(loss_fn: str, lp: F64, inputs: Mapping[str, F64], conf: Mapping[str, float]) -> tuple[F64, F64]:
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
