"""The simulator's gspo and stable_reinforce losses, against independent numpy implementations and finite differences.

Both hold part of their objective at its current value (a stop-gradient), so their gradient is not the derivative of the
loss value: the checks differentiate the objective with those factors frozen, written here independently of
``tinkex_trio._losses``. Also: the sampler's recorded log-probabilities (``LoraModel.sampling_logprobs``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from _modelkit import F64, SMALL, TINY, assert_parameter_gradients, randomised

from tinkex_trio._losses import loss_and_grad
from tinkex_trio.sim._model import LoraModel
from tinkex_trio.sim._model_types import DatumArrays, SimUserError


def _log_softmax(x: F64) -> F64:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _learner_lp(model: LoraModel, datum: DatumArrays) -> F64:
    table = _log_softmax(model.logit_table())
    targets = np.asarray(datum.loss_fn_inputs["target_tokens"])
    rows = datum.tokens[:, None] if targets.ndim == 2 else datum.tokens
    return table[rows, targets]


# -- gspo -------------------------------------------------------------------------------------------------------------


def _gspo_data(model: LoraModel, seed: int, seq_offsets: list[float], two_d: bool = False) -> list[DatumArrays]:
    """One datum per entry of ``seq_offsets``: its masked mean of (lp - q) is that offset (so the sequence ratio is
    exp(offset)), the unmasked positions carry arbitrary q, the mask is not all ones."""
    rng = np.random.default_rng(seed)
    vocab = model.vocab_size
    data: list[DatumArrays] = []
    for i, offset in enumerate(seq_offsets):
        length = 5 + i
        tokens = rng.integers(0, vocab, length)
        shape = (length, 2) if two_d else (length,)
        targets = rng.integers(0, vocab, shape)
        mask = np.ones(shape)
        mask[0] = 0.0  # a prompt position: outside the ratio
        datum = DatumArrays(tokens, {"target_tokens": targets})
        lp = _learner_lp(model, datum)
        noise = rng.normal(0.0, 0.3, shape)
        noise -= (noise * mask).sum() / mask.sum()  # zero mean over the masked positions
        q = lp - offset - noise
        q[0] = -9.0  # a dummy logprob where the mask is 0: must not matter
        adv = rng.choice(np.array([-1.5, -0.5, 0.7, 2.0]), shape)
        inputs = {"target_tokens": targets, "logprobs": q, "advantages": adv, "sequence_ratio_mask": mask}
        data.append(DatumArrays(tokens, inputs))
    return data


def _gspo_reference(lp: F64, q: F64, adv: F64, mask: F64, lo: float, hi: float) -> tuple[float, F64]:
    """One datum's GSPO-token loss and its gradient in lp, by finite differences of the frozen-ratio objective
    ``-sum min(S·exp(lp' - lp)·A, clip(S·exp(lp' - lp), lo, hi)·A)`` at ``lp' = lp``, S the sequence ratio."""
    marked = mask != 0
    seq_ratio = math.exp(float(np.mean((lp - q)[marked]))) if marked.any() else 1.0

    def objective(lp_prime: F64) -> float:
        ratio = seq_ratio * np.exp(lp_prime - lp)
        return float(-np.sum(np.minimum(ratio * adv, np.clip(ratio, lo, hi) * adv)))

    grad = np.zeros_like(lp)
    step = 1e-6
    for idx in np.ndindex(lp.shape):
        plus, minus = lp.copy(), lp.copy()
        plus[idx] += step
        minus[idx] -= step
        grad[idx] = (objective(plus) - objective(minus)) / (2 * step)
    return objective(lp), grad


@pytest.mark.parametrize("two_d", [False, True])
@pytest.mark.parametrize(("conf", "offsets"), [({}, [0.05, 0.5, -0.5]), ({"clip_high_threshold": 1.5}, [0.3, -0.1])])
def test_gspo_loss_and_lp_gradient_match_an_independent_implementation(
    conf: dict[str, float], offsets: list[float], two_d: bool
) -> None:
    model = randomised()
    data = _gspo_data(model, 3, offsets, two_d)
    lo, hi = conf.get("clip_low_threshold", 0.8), conf.get("clip_high_threshold", 1.2)
    result = model.forward(data, "gspo", dict(conf))
    total = 0.0
    for datum, output in zip(data, result.loss_fn_outputs, strict=True):
        lp = _learner_lp(model, datum)
        np.testing.assert_allclose(output["logprobs"], lp, rtol=1e-6)
        inp = datum.loss_fn_inputs
        loss, grad = _gspo_reference(lp, inp["logprobs"], inp["advantages"], inp["sequence_ratio_mask"], lo, hi)
        total += loss
        flat = {k: np.asarray(inp[k], dtype=np.float64).reshape(-1) for k in ("logprobs", "advantages")}
        flat["sequence_ratio_mask"] = inp["sequence_ratio_mask"].reshape(-1)
        terms, dlp = loss_and_grad("gspo", lp.reshape(-1), flat, {"clip_low_threshold": lo, "clip_high_threshold": hi})
        assert math.isclose(float(terms.sum()), loss, rel_tol=1e-12)
        np.testing.assert_allclose(dlp.reshape(lp.shape), grad, rtol=1e-6, atol=1e-8)
    assert math.isclose(result.metrics["loss:sum"], total, rel_tol=1e-12)


def test_gspo_clips_whole_sequences() -> None:
    """A sequence whose ratio is far outside the range on the clipped side has no gradient at all, whatever its tokens'
    own ratios; one inside the range has a gradient at every position with an advantage."""
    model = randomised()
    outside, inside = _gspo_data(model, 5, [0.6, 0.0])
    outside.loss_fn_inputs["advantages"][:] = 1.0  # s = e^0.6 > 1.2 with A > 0: the clipped branch everywhere
    model.forward_backward([outside], "gspo")
    assert all(float(np.max(np.abs(g))) == 0.0 for g in model.gradients().values())
    model.forward_backward([inside], "gspo")
    assert float(np.max(np.abs(model.gradients()["lora_B"]))) > 0.0


def test_gspo_ratio_is_per_datum_and_ignores_unmasked_positions() -> None:
    model = randomised()
    data = _gspo_data(model, 9, [0.3, -0.4, 0.1])
    joint = model.forward(data, "gspo").metrics["loss:sum"]
    alone = sum(model.forward([d], "gspo").metrics["loss:sum"] for d in data)
    assert math.isclose(joint, alone, rel_tol=1e-12)
    # The logprob at an unmasked position changes only its own term (the ratio does not see it).
    changed = [DatumArrays(d.tokens, dict(d.loss_fn_inputs)) for d in data]
    q0 = changed[0].loss_fn_inputs["logprobs"].copy()
    q0[0] = 3.0
    changed[0] = DatumArrays(changed[0].tokens, {**changed[0].loss_fn_inputs, "logprobs": q0})
    assert model.forward(changed, "gspo").metrics["loss:sum"] == joint
    # A datum whose mask marks nothing has sequence ratio 1.
    empty = DatumArrays(data[0].tokens, {**data[0].loss_fn_inputs, "sequence_ratio_mask": np.zeros(5)})
    expected = -float(np.sum(np.minimum(1.0, 1.0) * empty.loss_fn_inputs["advantages"]))
    assert math.isclose(model.forward([empty], "gspo").metrics["loss:sum"], expected, rel_tol=1e-12)


# -- stable_reinforce -------------------------------------------------------------------------------------------------


def _sr_data(model: LoraModel, seed: int) -> list[DatumArrays]:
    """Datums with recorded inputs: a prompt part (not sampled) and sampled positions whose recorded sampler logprobs
    put exp(lp - q*) both below and above the truncation 2.0 (never at it)."""
    rng = np.random.default_rng(seed)
    vocab = model.vocab_size
    data: list[DatumArrays] = []
    for length in (6, 4):
        tokens = rng.integers(0, vocab, length)
        targets = rng.integers(0, vocab, length)
        lp = _learner_lp(model, DatumArrays(tokens, {"target_tokens": targets}))
        sampled = np.ones(length)
        sampled[:2] = 0.0
        q_star = lp - rng.choice(np.array([-0.7, -0.1, 0.3, 1.2]), length)  # w = 0.50, 0.90, 1.35, min(3.3, 2)
        q_star[:2] = 0.0
        adv = rng.choice(np.array([-1.5, -0.5, 0.7, 2.0]), length)
        inputs = {"target_tokens": targets, "advantages": adv, "logprobs": np.full(length, -50.0)}
        data.append(DatumArrays(tokens, inputs, {"sampled": sampled, "sampler_logprobs": q_star}))
    return data


def _sr_reference(lp: F64, q_star: F64, sampled: F64, adv: F64, cap: float, kl: float = 0.0) -> tuple[float, F64]:
    """stable_reinforce's loss and its coefficient dL/dlp (the importance weight frozen), written out per element."""
    loss, coef = 0.0, np.zeros_like(lp)
    for i in range(lp.shape[0]):
        if sampled[i] == 0:
            continue
        ratio = math.exp(lp[i] - q_star[i])
        weight = min(ratio, cap)
        loss += -weight * adv[i] * lp[i] + kl * (ratio - 1.0 - math.log(ratio))
        coef[i] = -weight * adv[i] + kl * (ratio - 1.0)
    return loss, coef


@pytest.mark.parametrize(("cap", "kl"), [(2.0, 0.0), (1.1, 0.0), (2.0, 0.3)])
def test_stable_reinforce_loss_matches_an_independent_implementation(cap: float, kl: float) -> None:
    model = randomised()
    data = _sr_data(model, 4)
    conf: dict[str, float | str] = {}
    if cap != 2.0:
        conf["clip_high_threshold"] = cap
    if kl:
        conf["kl_coeff"] = kl
    result = model.forward(data, "stable_reinforce", conf)
    total = 0.0
    for datum, output in zip(data, result.loss_fn_outputs, strict=True):
        lp = _learner_lp(model, datum)
        np.testing.assert_allclose(output["logprobs"], lp, rtol=1e-6)
        rec = datum.recorded
        adv = datum.loss_fn_inputs["advantages"]
        total += _sr_reference(lp, rec["sampler_logprobs"], rec["sampled"], adv, cap, kl)[0]
    assert math.isclose(result.metrics["loss:sum"], total, rel_tol=1e-12)


@pytest.mark.parametrize(
    ("loss_fn", "make"),
    [
        ("gspo", lambda m: _gspo_data(m, 7, [0.05, 0.5, -0.5])),
        ("gspo", lambda m: _gspo_data(m, 8, [0.1, -0.3], two_d=True)),
        ("stable_reinforce", lambda m: _sr_data(m, 7)),
        ("stable_reinforce+kl", lambda m: _sr_data(m, 9)),
    ],
)
def test_parameter_gradients_by_finite_differences(
    loss_fn: str, make: Callable[[LoraModel], list[DatumArrays]]
) -> None:
    """The parameter gradient is the finite-difference gradient of ``sum(c · lp(θ))`` with the per-position
    coefficient c = dL/dlp frozen at its current value -- c computed by the independent references above."""
    model = randomised()
    data = make(model)
    kl = 0.4 if loss_fn.endswith("+kl") else 0.0
    loss_fn = loss_fn.removesuffix("+kl")
    model.forward_backward(data, loss_fn, {"kl_coeff": kl} if kl else None)
    analytic = model.gradients()
    base = model.get_parameters()
    coefs: list[F64] = []
    for datum in data:
        lp = _learner_lp(model, datum)
        inp = datum.loss_fn_inputs
        if loss_fn == "gspo":
            _, coef = _gspo_reference(lp, inp["logprobs"], inp["advantages"], inp["sequence_ratio_mask"], 0.8, 1.2)
        else:
            rec = datum.recorded
            _, coef = _sr_reference(lp, rec["sampler_logprobs"], rec["sampled"], inp["advantages"], 2.0, kl)
        coefs.append(coef)
    surrogate = [
        DatumArrays(d.tokens, {"target_tokens": d.loss_fn_inputs["target_tokens"], "weights": -c})
        for d, c in zip(data, coefs, strict=True)
    ]

    def loss_at(params: dict[str, F64]) -> float:
        probe = LoraModel("tiny-base", 3, 0, TINY)
        probe.set_parameters(params)
        return probe.forward(surrogate, "cross_entropy").metrics["loss:sum"]

    assert_parameter_gradients(loss_fn, base, analytic, loss_at)


def test_stable_reinforce_trains_only_sampled_positions() -> None:
    model = randomised()
    datum = _sr_data(model, 2)[0]
    prompt_only = DatumArrays(
        datum.tokens, datum.loss_fn_inputs, {"sampled": np.zeros(6), "sampler_logprobs": np.zeros(6)}
    )
    result = model.forward_backward([prompt_only], "stable_reinforce")
    assert result.metrics["loss:sum"] == 0.0
    assert all(float(np.max(np.abs(g))) == 0.0 for g in model.gradients().values())
    # The client's "logprobs" input plays no part: the recorded sampler logprobs do.
    other = DatumArrays(datum.tokens, {**datum.loss_fn_inputs, "logprobs": np.zeros(6)}, datum.recorded)
    assert model.forward([other], "stable_reinforce").metrics == model.forward([datum], "stable_reinforce").metrics


@pytest.mark.parametrize(
    ("recorded", "message"),
    [
        ({}, "sampling records"),
        ({"sampled": np.ones(3), "sampler_logprobs": np.zeros(2)}, "shape"),
        ({"sampled": np.ones(2), "sampler_logprobs": np.array([0.0, -math.inf])}, "infinity"),
    ],
)
def test_stable_reinforce_refuses_bad_recorded_inputs(recorded: dict[str, F64], message: str) -> None:
    model = randomised()
    datum = DatumArrays(np.array([1, 2]), {"target_tokens": np.array([2, 3]), "advantages": np.ones(2)}, recorded)
    with pytest.raises(SimUserError, match=message):
        model.forward_backward([datum], "stable_reinforce")
    two_d = DatumArrays(
        np.array([1, 2]),
        {"target_tokens": np.array([[2, 3], [3, 4]]), "advantages": np.ones((2, 2))},
        {"sampled": np.ones((2, 2)), "sampler_logprobs": np.zeros((2, 2))},
    )
    with pytest.raises(SimUserError, match="1-D target_tokens"):
        model.forward([two_d], "stable_reinforce")


# -- what the sampler records -----------------------------------------------------------------------------------------


def _sampling_distribution(model: LoraModel, prev: int, temperature: float, top_k: int, top_p: float) -> F64:
    """The distribution a sampler draws from after ``prev``, written out: temperature, then the k best, then the
    smallest set of best tokens whose mass reaches p, renormalised."""
    probs = np.exp(_log_softmax(model.logit_table()[prev] / temperature))
    order = np.argsort(-probs, kind="stable")
    keep = np.zeros(probs.shape[0], dtype=bool)
    keep[order[: top_k if top_k > 0 else probs.shape[0]]] = True
    probs = np.where(keep, probs, 0.0)
    probs /= probs.sum()
    if top_p < 1.0:
        sorted_probs = probs[order]
        before = np.cumsum(sorted_probs) - sorted_probs
        nucleus = np.zeros_like(keep)
        nucleus[order[before < top_p]] = True
        nucleus[order[0]] = True
        probs = np.where(nucleus, probs, 0.0)
        probs /= probs.sum()
    return probs


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, -1, 1.0), (0.7, 5, 1.0), (1.3, -1, 0.8), (0.9, 6, 0.9)]
)
def test_sampling_logprobs_are_the_sampling_distribution(temperature: float, top_k: int, top_p: float) -> None:
    model = randomised(SMALL, 4, 9)
    result = model.sample(
        [3, 5], num_samples=6, max_tokens=8, stop_tokens=[], seed=11, temperature=temperature, top_k=top_k, top_p=top_p
    )
    for seq in result.sequences:
        recorded = model.sampling_logprobs(5, seq.tokens, temperature=temperature, top_k=top_k, top_p=top_p)
        prev = 5
        for token, value in zip(seq.tokens.tolist(), recorded.tolist(), strict=True):
            expected = _sampling_distribution(model, prev, temperature, top_k, top_p)[token]
            assert expected > 0.0
            assert math.isclose(value, math.log(expected), rel_tol=1e-9, abs_tol=1e-12)
            prev = token
        if temperature == 1.0 and top_k < 0 and top_p == 1.0:
            # Untruncated at temperature 1 the sampler's distribution is the model's: the returned raw logprobs.
            np.testing.assert_allclose(recorded, seq.logprobs, rtol=1e-6)


def test_sampling_logprobs_edge_cases() -> None:
    model = randomised(SMALL, 4, 9)
    greedy = model.sample([5], max_tokens=5, stop_tokens=[], temperature=0.0).sequences[0]
    assert model.sampling_logprobs(5, greedy.tokens, temperature=0.0, top_k=-1, top_p=1.0).tolist() == [0.0] * 5
    worst = int(np.argmin(model.logit_table()[5]))
    impossible = model.sampling_logprobs(5, np.array([worst]), temperature=1.0, top_k=2, top_p=1.0)
    assert impossible.tolist() == [-math.inf]
    assert model.sampling_logprobs(5, np.zeros(0, dtype=np.int64), temperature=1.0, top_k=-1, top_p=1.0).size == 0
