"""The built-in losses' formulas (protocol §13), shared by the simulator's model and the client's batching.

Every loss is a sum over loss elements. For ``cross_entropy``, ``importance_sampling``, ``ppo``, ``cispo``, ``dro`` and
``stable_reinforce`` an element's term depends only on the learner's logprob ``lp`` there and the datum's own inputs,
so one request over A+B accumulates the gradients of A and of B, and a client that merged several items into one
request can rebuild each item's ``loss:sum`` from its slice. ``gspo``'s terms also depend on the other elements of the
same datum (its sequence ratio), never on another datum's. Pure numpy, float64.

Stop-gradients. ``cispo``, ``gspo`` and ``stable_reinforce`` hold some factor of their objective at its current value
(``sg``): the gradient returned is the gradient of the objective with those factors frozen, which is what the server's
autograd computes, not the derivative of the loss value as a function of ``lp``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["LOSS_FUNCTIONS", "LOSS_INPUTS", "RECORDED_INPUTS", "loss_and_grad"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

LOSS_FUNCTIONS: Final = ("cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "gspo", "stable_reinforce")
"""The losses whose formula is here."""

_RL_INPUTS: Final = ("target_tokens", "logprobs", "advantages")
LOSS_INPUTS: Final[Mapping[str, tuple[str, ...]]] = {
    "cross_entropy": ("target_tokens", "weights"),
    "importance_sampling": _RL_INPUTS,
    "ppo": _RL_INPUTS,
    "cispo": _RL_INPUTS,
    "dro": _RL_INPUTS,
    "gspo": (*_RL_INPUTS, "sequence_ratio_mask"),
    "stable_reinforce": ("target_tokens", "advantages"),
}
"""The loss inputs each loss needs from the datum's ``loss_fn_inputs``: ``target_tokens`` first."""

RECORDED_INPUTS: Final[Mapping[str, tuple[str, ...]]] = {"stable_reinforce": ("sampled", "sampler_logprobs")}
"""Inputs the server derives itself, from what it recorded at sampling time and the datum's provenance spans:

- ``sampled``: 1.0 where the loss element's target token is a sampled token (a ``sampled_tokens`` run), else 0.0;
- ``sampler_logprobs``: there, the log-probability with which the sampler drew that token (its distribution after
  temperature, top-k and top-p); 0.0 elsewhere.
"""


def _sequence_log_ratio(diff: F64, mask: F64, segments: I64 | None) -> F64:
    """Per element: the mean of ``diff`` over the masked elements of its datum (0 where the datum masks none)."""
    seg = np.zeros(diff.shape[0], dtype=np.int64) if segments is None else segments
    count = int(seg.max()) + 1 if seg.size else 0
    marked = (mask != 0).astype(np.float64)
    total = np.bincount(seg, weights=diff * marked, minlength=count)
    number = np.bincount(seg, weights=marked, minlength=count)
    mean = np.divide(total, number, out=np.zeros(count), where=number > 0)
    return mean[seg]


def _clipped_surrogate(ratio: F64, adv: F64, lo: float, hi: float) -> tuple[F64, F64]:
    """``-min(r·A, clip(r, lo, hi)·A)`` and its derivative when ``d r / d lp == r`` (ppo, gspo).

    Where the unclipped term is the min it carries the gradient r·A; elsewhere the clipped term is strictly smaller,
    which happens only with r outside [lo, hi], where its gradient is 0.
    """
    clipped = np.clip(ratio, lo, hi)
    unclipped_obj = ratio * adv
    clipped_obj = clipped * adv
    use_unclipped = unclipped_obj <= clipped_obj
    objective = np.where(use_unclipped, unclipped_obj, clipped_obj)
    grad = np.where(use_unclipped, -unclipped_obj, 0.0)
    return -objective, grad


def loss_and_grad(
    loss_fn: str,
    lp: F64,
    inputs: Mapping[str, F64],
    conf: Mapping[str, float],
    segments: I64 | None = None,
) -> tuple[F64, F64]:
    """Per-element loss terms and their derivative ``d loss / d lp`` (both shaped like ``lp``).

    ``segments`` (gspo only) gives each element's datum index, so the sequence ratio is taken per datum; ``None``
    means one datum.
    """
    if loss_fn == "cross_entropy":
        w = inputs["weights"]
        return -lp * w, -w
    adv = inputs["advantages"]
    if loss_fn == "stable_reinforce":
        # Truncated importance-weighted REINFORCE against the sampler's recorded distribution q*, plus kl_coeff times
        # the k3 estimate of KL(q* || p) from the sampler's own draws (d = lp - q*):
        #   sum_sampled [ -sg(min(exp(d), c)) * A * lp + kl_coeff * (exp(d) - 1 - d) ]
        # Our definition: the service's formula is not public in full; the official SDK names kl_coeff as its config.
        sampled = inputs["sampled"]
        diff = lp - inputs["sampler_logprobs"]
        ratio = np.exp(diff)
        weight = np.minimum(ratio, conf["clip_high_threshold"]) * sampled
        kl = conf.get("kl_coeff", 0.0) * sampled
        return -weight * adv * lp + kl * (ratio - 1.0 - diff), -weight * adv + kl * (ratio - 1.0)
    q = inputs["logprobs"]
    if loss_fn == "dro":
        beta = conf["beta"]
        diff = lp - q
        return -(lp * adv - 0.5 * beta * diff * diff), -(adv - beta * diff)
    lo, hi = conf.get("clip_low_threshold", 0.0), conf.get("clip_high_threshold", 0.0)
    if loss_fn == "gspo":
        # GSPO-token: every element's ratio has the value of its datum's sequence ratio
        # s = exp(mean over the masked elements of (lp - q)) and the gradient of its own lp: sg(s) * exp(lp - sg(lp)).
        seq_ratio = np.exp(_sequence_log_ratio(lp - q, inputs["sequence_ratio_mask"], segments))
        return _clipped_surrogate(seq_ratio, adv, lo, hi)
    ratio = np.exp(lp - q)
    if loss_fn == "importance_sampling":
        return -ratio * adv, -ratio * adv
    if loss_fn == "cispo":
        clipped = np.clip(ratio, lo, hi)
        return -clipped * lp * adv, -clipped * adv
    return _clipped_surrogate(ratio, adv, lo, hi)
