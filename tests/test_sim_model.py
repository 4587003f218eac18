"""Tests of the simulated server's numpy model (tinkex_trio.sim._model)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from _modelkit import F64, SMALL, TINY, assert_parameter_gradients, randomised

from tinkex_trio.sim._model import LoraModel
from tinkex_trio.sim._model_types import MASK_LOGPROB, AdamParams, DatumArrays, DimuonParams, ModelConfig, SimUserError


def _close(actual: float, expected: float, rel: float = 1e-9, abs_tol: float = 0.0) -> bool:
    return math.isclose(actual, expected, rel_tol=rel, abs_tol=abs_tol)


def _log_softmax(x: F64) -> F64:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _rl_data(model: LoraModel, seed: int, two_d: bool = False) -> list[DatumArrays]:
    """Datums whose sampler logprobs q sit at fixed offsets from the learner's lp, so the ratios r = exp(lp - q) land
    well inside and well outside the clip range [0.8, 1.2] (never near a kink)."""
    rng = np.random.default_rng(seed)
    vocab = model.vocab_size
    table = _log_softmax(model.logit_table())
    offsets = np.array([-0.6, -0.1, 0.05, 0.4])  # r = 0.55, 0.90, 1.05, 1.49
    data: list[DatumArrays] = []
    for length in (5, 3):
        tokens = rng.integers(0, vocab, length)
        shape = (length, 2) if two_d else (length,)
        targets = rng.integers(0, vocab, shape)
        lp = table[tokens[:, None], targets] if two_d else table[tokens, targets]
        q = lp - rng.choice(offsets, shape)
        adv = rng.choice(np.array([-1.5, -0.5, 0.7, 2.0]), shape)
        inputs = {
            "target_tokens": targets,
            "logprobs": q.astype(np.float64),
            "advantages": adv,
            "weights": rng.uniform(0.0, 2.0, shape),
        }
        data.append(DatumArrays(tokens, inputs))
    return data


def _loss_inputs(loss_fn: str, datum: DatumArrays) -> dict[str, npt.NDArray[Any]]:
    names = ("target_tokens", "weights") if loss_fn == "cross_entropy" else ("target_tokens", "logprobs", "advantages")
    return {name: datum.loss_fn_inputs[name] for name in names}


def _expected_loss(loss_fn: str, lp: F64, inp: Mapping[str, npt.NDArray[Any]], conf: Mapping[str, float]) -> float:
    """The §13 formulas, written independently of the model code."""
    if loss_fn == "cross_entropy":
        return float(-np.sum(lp * np.asarray(inp["weights"], dtype=np.float64)))
    q = np.asarray(inp["logprobs"], dtype=np.float64)
    adv = np.asarray(inp["advantages"], dtype=np.float64)
    r = np.exp(lp - q)
    lo = conf.get("clip_low_threshold", 0.8)
    hi = conf.get("clip_high_threshold", 1.2)
    if loss_fn == "importance_sampling":
        return float(-np.sum(r * adv))
    if loss_fn == "ppo":
        return float(-np.sum(np.minimum(r * adv, np.clip(r, lo, hi) * adv)))
    if loss_fn == "cispo":
        return float(-np.sum(np.clip(r, lo, hi) * lp * adv))
    beta = conf.get("beta", 0.05)
    return float(-np.sum(lp * adv - 0.5 * beta * (lp - q) ** 2))


LOSS_CASES: list[tuple[str, dict[str, float]]] = [
    ("cross_entropy", {}),
    ("importance_sampling", {}),
    ("ppo", {}),
    ("ppo", {"clip_low_threshold": 0.7, "clip_high_threshold": 1.1}),
    ("cispo", {}),
    ("dro", {"beta": 0.3}),
]


# --------------------------------------------------------------------------------------------------------------------
# Losses and gradients
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("two_d", [False, True])
@pytest.mark.parametrize(("loss_fn", "conf"), LOSS_CASES)
def test_finite_difference_gradients(loss_fn: str, conf: dict[str, float], two_d: bool) -> None:
    model = randomised()
    data = [DatumArrays(d.tokens, _loss_inputs(loss_fn, d)) for d in _rl_data(model, 7, two_d)]
    config: dict[str, float | str] = dict(conf)
    model.forward_backward(data, loss_fn, config)
    analytic = model.gradients()
    base = model.get_parameters()

    fd_data, fd_loss, fd_config = data, loss_fn, config
    if loss_fn == "cispo":
        # cispo's clipped ratio is a stop-gradient coefficient c: its gradient is that of -sum(c * lp * A) with c held
        # at its current value, i.e. of cross_entropy with weights c * A.
        table = _log_softmax(model.logit_table())
        fd_data: list[DatumArrays] = []
        for d in data:
            targets = d.loss_fn_inputs["target_tokens"]
            lp = table[d.tokens[:, None] if two_d else d.tokens, targets]
            coef = np.clip(np.exp(lp - d.loss_fn_inputs["logprobs"]), 0.8, 1.2) * d.loss_fn_inputs["advantages"]
            fd_data.append(DatumArrays(d.tokens, {"target_tokens": d.loss_fn_inputs["target_tokens"], "weights": coef}))
        fd_loss, fd_config = "cross_entropy", {}

    def loss_at(params: dict[str, F64]) -> float:
        probe = LoraModel("tiny-base", 3, 0, TINY)
        probe.set_parameters(params)
        return probe.forward(fd_data, fd_loss, fd_config).metrics["loss:sum"]

    assert_parameter_gradients(loss_fn, base, analytic, loss_at)


@pytest.mark.parametrize("two_d", [False, True])
@pytest.mark.parametrize(("loss_fn", "conf"), LOSS_CASES)
def test_logprobs_and_loss_match_formulas(loss_fn: str, conf: dict[str, float], two_d: bool) -> None:
    model = randomised()
    data = [DatumArrays(d.tokens, _loss_inputs(loss_fn, d)) for d in _rl_data(model, 11, two_d)]
    result = model.forward(data, loss_fn, dict(conf))
    table = _log_softmax(model.logit_table())
    total = 0.0
    assert len(result.loss_fn_outputs) == len(data)
    for datum, output in zip(data, result.loss_fn_outputs, strict=True):
        targets = np.asarray(datum.loss_fn_inputs["target_tokens"])
        lp = output["logprobs"]
        assert lp.dtype == np.float32
        assert lp.shape == targets.shape
        rows = datum.tokens[:, None] if two_d else datum.tokens
        np.testing.assert_allclose(lp, table[rows, targets], rtol=1e-6)
        total += _expected_loss(loss_fn, table[rows, targets], datum.loss_fn_inputs, conf)
    assert list(result.metrics) == ["loss:sum"]
    assert _close(result.metrics["loss:sum"], total, rel=1e-12, abs_tol=1e-12)


def test_ppo_gradient_vanishes_where_clipped() -> None:
    model = randomised()
    tokens = np.array([2, 4])
    table = _log_softmax(model.logit_table())
    targets = np.array([1, 6])
    lp = table[tokens, targets]
    # r = exp(0.5) > 1.2 with A > 0, and r = exp(-0.5) < 0.8 with A < 0: both take the clipped branch.
    datum = DatumArrays(
        tokens, {"target_tokens": targets, "logprobs": lp - np.array([0.5, -0.5]), "advantages": np.array([1.0, -1.0])}
    )
    model.forward_backward([datum], "ppo")
    assert all(float(np.max(np.abs(g))) == 0.0 for g in model.gradients().values())
    model.forward_backward([datum], "importance_sampling")
    assert float(np.max(np.abs(model.gradients()["lora_B"]))) > 0.0


def test_gradients_are_additive() -> None:
    data = _rl_data(randomised(), 5) + _rl_data(randomised(), 6)
    part_a, part_b = data[:2], data[2:]
    for loss_fn in ("cross_entropy", "ppo", "dro"):
        split = randomised()
        loss_a = split.forward_backward(part_a, loss_fn).metrics["loss:sum"]
        loss_b = split.forward_backward(part_b, loss_fn).metrics["loss:sum"]
        joint = randomised()
        loss_ab = joint.forward_backward(part_a + part_b, loss_fn).metrics["loss:sum"]
        assert _close(loss_ab, loss_a + loss_b, rel=1e-12)
        for name, grad in joint.gradients().items():
            assert float(np.max(np.abs(grad))) > 0.0
            np.testing.assert_allclose(split.gradients()[name], grad, rtol=1e-10, atol=1e-12)


def test_forward_only_does_not_accumulate() -> None:
    model = randomised()
    data = _rl_data(model, 3)
    model.forward(data, "cross_entropy")
    assert all(float(np.max(np.abs(g))) == 0.0 for g in model.gradients().values())
    model.forward_backward(data, "cross_entropy")
    before = model.gradients()
    model.forward_backward(data, "ppo", forward_only=True)
    after = model.gradients()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
    assert float(np.max(np.abs(after["lora_B"]))) > 0.0


def test_empty_request_and_empty_datum() -> None:
    model = randomised()
    assert model.forward_backward([], "cross_entropy").metrics == {"loss:sum": 0.0}
    empty = DatumArrays(np.zeros(0, dtype=np.int64), {"target_tokens": np.zeros(0, np.int64), "weights": np.zeros(0)})
    result = model.forward_backward([empty], "cross_entropy")
    assert result.loss_fn_outputs[0]["logprobs"].shape == (0,)
    assert result.metrics["loss:sum"] == 0.0


def test_token_ids_are_reduced_modulo_vocab() -> None:
    model = randomised()
    weights = np.ones(3)
    wrapped = DatumArrays(np.array([7, 15, -1]), {"target_tokens": np.array([8, 2, 13]), "weights": weights})
    plain = DatumArrays(np.array([0, 1, 6]), {"target_tokens": np.array([1, 2, 6]), "weights": weights})
    a = model.forward([wrapped], "cross_entropy").loss_fn_outputs[0]["logprobs"]
    b = model.forward([plain], "cross_entropy").loss_fn_outputs[0]["logprobs"]
    np.testing.assert_array_equal(a, b)


def _ce(tokens: list[int], targets: list[int], weights: list[float] | None = None) -> DatumArrays:
    w = np.ones(len(targets)) if weights is None else np.array(weights)
    return DatumArrays(np.array(tokens), {"target_tokens": np.array(targets), "weights": w})


def _rl(tokens: list[int], targets: list[int]) -> DatumArrays:
    n = len(targets)
    inputs = {"target_tokens": np.array(targets), "logprobs": np.full(n, -1.0), "advantages": np.ones(n)}
    return DatumArrays(np.array(tokens), inputs)


USER_ERROR_CASES: list[tuple[Callable[[LoraModel], object], str]] = [
    (lambda m: m.forward([_ce([1, 2], [2, 3])], "nope"), "unknown loss_fn"),
    (lambda m: m.forward([_ce([1, 2], [2, 3])], "custom"), "unsupported"),
    (lambda m: m.forward([_rl([1, 2], [2, 3])], "gspo"), r"missing loss_fn_inputs \['sequence_ratio_mask'\]"),
    (lambda m: m.forward([_rl([1, 2], [2, 3])], "stable_reinforce"), "sampling records"),
    (lambda m: m.forward([_rl([1, 2], [2, 3])], "stable_reinforce", {"clip_high_threshold": 0.0}), "> 0"),
    (lambda m: m.forward([_rl([1, 2], [2, 3])], "stable_reinforce", {"kl_coeff": -0.1}), "kl_coeff must be >= 0"),
    (lambda m: m.forward([_rl([1, 2], [2, 3])], "stable_reinforce", {"clip_low_threshold": 0.5}), "unknown"),
    (
        lambda m: m.forward([DatumArrays(np.array([1]), {"target_tokens": np.array([2])})], "cross_entropy"),
        "missing",
    ),
    (lambda m: m.forward([_ce([1, 2], [2, 3])], "ppo"), "missing"),
    (lambda m: m.forward([_ce([1, 2, 3], [2, 3])], "cross_entropy"), "target_tokens has shape"),
    (lambda m: m.forward([_ce([1, 2], [2, 3], [1.0])], "cross_entropy"), "'weights'] has shape"),
    (lambda m: m.forward([_ce([1, 2], [2, 3], [1.0, math.nan])], "cross_entropy"), "NaN"),
    (lambda m: m.forward([_ce([1, 2], [2, 3])], "cross_entropy", {"beta": 1.0}), "unknown loss_fn_config key"),
    (lambda m: m.forward([_ce([1, 2], [2, 3])], "dro", {"beta": "x"}), "must be a number"),
    (lambda m: m.forward([_ce([1, 2], [2, 3])], "ppo", {"clip_low_threshold": 1.5}), "clip_low_threshold"),
    (
        lambda m: m.forward(
            [DatumArrays(np.array([0.5, 1.0]), {"target_tokens": np.array([1, 2]), "weights": np.ones(2)})],
            "cross_entropy",
        ),
        "integer token ids",
    ),
    (lambda m: m.optim_step(DimuonParams()), "adamw optimizer"),
    (lambda m: m.optim_step(AdamParams(learning_rate=-1.0)), "learning_rate"),
    (lambda m: m.optim_step(AdamParams(beta2=1.0)), "beta2"),
    (lambda m: m.sample([], max_tokens=2), "non-empty"),
    (lambda m: m.sample([1], max_tokens=0), "max_tokens"),
    (lambda m: m.sample([1], num_samples=0), "num_samples"),
    (lambda m: m.sample([1], temperature=-1.0), "temperature"),
    (lambda m: m.sample([1], top_p=1.5), "top_p"),
    (lambda m: m.sample([1], max_tokens=40000), "context window"),
    (lambda m: m.sample([1, 2], target_prompt_logprobs=np.zeros((2, 1), np.int64)), "target_prompt_logprobs"),
    (lambda m: m.sample([1, 2, 3], target_prompt_logprobs=np.full((2, 2), -1, np.int64)), "names no token id"),
    (lambda m: m.sample([1, 2, 3], target_prompt_logprobs=np.full((2, 1), -2, np.int64)), ">= 0, or -1"),
    (lambda m: m.sample([1, 2, 3], prompt_logprobs=True, prompt_logprobs_last_n=3), "between 1 and len"),
    (lambda m: m.sample([1, 2, 3], prompt_logprobs=True, prompt_logprobs_last_n=0), "between 1 and len"),
    (lambda m: m.sample([1], prompt_logprobs=True, prompt_logprobs_last_n=1), "between 1 and len"),
    (lambda m: m.sample([1, 2, 3], prompt_logprobs_last_n=1), "needs prompt_logprobs"),
]


@pytest.mark.parametrize(("call", "message"), USER_ERROR_CASES)
def test_user_errors(call: Callable[[LoraModel], object], message: str) -> None:
    model = randomised()
    with pytest.raises(SimUserError, match=message):
        call(model)


def test_failed_request_leaves_gradients_untouched() -> None:
    model = randomised()
    with pytest.raises(SimUserError, match="datum 1"):
        model.forward_backward([_ce([1, 2], [2, 3]), _ce([1, 2], [2])], "cross_entropy")
    assert all(float(np.max(np.abs(g))) == 0.0 for g in model.gradients().values())


def test_invalid_model_creation() -> None:
    with pytest.raises(SimUserError, match="rank"):
        LoraModel("b", 0, 0, TINY)
    with pytest.raises(SimUserError, match="rank"):
        LoraModel("b", TINY.max_lora_rank + 1, 0, TINY)
    with pytest.raises(SimUserError, match="base_model"):
        LoraModel("", 4, 0, TINY)


# --------------------------------------------------------------------------------------------------------------------
# Determinism of the base and the LoRA initialisation
# --------------------------------------------------------------------------------------------------------------------


def test_fresh_model_is_its_base_and_deterministic() -> None:
    a = LoraModel("base-x", 4, 1, SMALL)
    b = LoraModel("base-x", 8, 2, SMALL)
    np.testing.assert_array_equal(a.logit_table(), b.logit_table())  # B = 0: the LoRA seed and rank don't matter
    c = LoraModel("base-y", 4, 1, SMALL)
    assert not np.allclose(a.logit_table(), c.logit_table())
    a2 = LoraModel("base-x", 4, 1, SMALL)
    np.testing.assert_array_equal(a.get_parameters()["lora_A"], a2.get_parameters()["lora_A"])
    assert not np.allclose(a.get_parameters()["lora_A"], b.get_parameters()["lora_A"][:, :4])
    unseeded = LoraModel("base-x", 4, None, SMALL)
    assert LoraModel("base-x", 4, unseeded.seed, SMALL).get_parameters()["lora_A"].tolist() == (
        unseeded.get_parameters()["lora_A"].tolist()
    )


# --------------------------------------------------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------------------------------------------------


def test_adamw_matches_hand_computed_updates() -> None:
    model = randomised()
    data = _rl_data(model, 2)
    hp = AdamParams(learning_rate=0.05, beta1=0.8, beta2=0.9, eps=1e-3, weight_decay=0.2)
    p = model.get_parameters()
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for step in (1, 2, 3):
        model.forward_backward(data, "cross_entropy")
        g = model.gradients()
        metrics = model.optim_step(hp)
        norm = math.sqrt(sum(float(np.sum(x**2)) for x in g.values()))
        assert _close(metrics["grad_norm:mean"], norm)
        assert metrics["learning_rate:mean"] == 0.05
        assert all(key.count(":") == 1 for key in metrics)
        for k in p:
            m[k] = 0.8 * m[k] + 0.2 * g[k]
            v[k] = 0.9 * v[k] + 0.1 * g[k] ** 2
            m_hat = m[k] / (1 - 0.8**step)
            v_hat = v[k] / (1 - 0.9**step)
            p[k] = p[k] * (1 - 0.05 * 0.2) - 0.05 * m_hat / (np.sqrt(v_hat) + 1e-3)
            np.testing.assert_allclose(model.get_parameters()[k], p[k], rtol=1e-12, atol=1e-14)
        assert model.step == step
        assert all(float(np.max(np.abs(x))) == 0.0 for x in model.gradients().values())  # cleared


def test_weight_decay_alone_shrinks_parameters() -> None:
    model = randomised()
    before = model.get_parameters()
    model.optim_step(AdamParams(learning_rate=0.1, weight_decay=0.5))  # no gradients accumulated
    for k, value in model.get_parameters().items():
        np.testing.assert_allclose(value, before[k] * (1 - 0.1 * 0.5), rtol=1e-14)


@pytest.mark.parametrize("clip", [0.0, 0.5, 1e9])
def test_grad_clipping(clip: float) -> None:
    model = LoraModel("tiny-base", 3, 0, TINY, optimizer="dimuon")
    rng = np.random.default_rng(1)
    model.set_parameters({"lora_B": rng.standard_normal((3, TINY.vocab_size))})
    model.forward_backward(_rl_data(model, 4), "cross_entropy")
    g = model.gradients()
    norm = math.sqrt(sum(float(np.sum(x**2)) for x in g.values()))
    assert norm > 0.5  # so that clip=0.5 does clip
    before = model.get_parameters()
    metrics = model.optim_step(DimuonParams(learning_rate=0.1, grad_clip_norm=clip, beta1=0.9))
    assert _close(metrics["grad_norm:mean"], norm)  # reported before clipping
    scale = clip / norm if 0 < clip < norm else 1.0
    for k, value in model.get_parameters().items():
        np.testing.assert_allclose(value, before[k] - 0.1 * g[k] * scale, rtol=1e-12, atol=1e-15)


def test_dimuon_momentum() -> None:
    model = LoraModel("tiny-base", 3, 0, TINY, optimizer="dimuon")
    data = _rl_data(model, 4)
    p = model.get_parameters()
    m = {k: np.zeros_like(x) for k, x in p.items()}
    for _ in range(3):
        model.forward_backward(data, "cross_entropy")
        g = model.gradients()
        model.optim_step(DimuonParams(learning_rate=0.2, beta1=0.5))
        for k in p:
            m[k] = 0.5 * m[k] + g[k]
            p[k] = p[k] - 0.2 * m[k]
            np.testing.assert_allclose(model.get_parameters()[k], p[k], rtol=1e-12, atol=1e-15)
    with pytest.raises(SimUserError, match="dimuon"):
        model.optim_step(AdamParams())


# --------------------------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------------------------


def _probs(model: LoraModel, prev: int, temperature: float = 1.0) -> F64:
    return np.exp(_log_softmax(model.logit_table()[prev] / temperature))


def _first_token_freqs(model: LoraModel, n: int, **kwargs: object) -> F64:
    result = model.sample([3, 5], num_samples=n, max_tokens=1, stop_tokens=[], seed=123, **kwargs)  # pyright: ignore[reportArgumentType]
    first = np.array([s.tokens[0] for s in result.sequences])
    return np.bincount(first, minlength=model.vocab_size) / n


def _assert_freqs(freqs: F64, probs: F64, n: int) -> None:
    tolerance = 5 * np.sqrt(probs * (1 - probs) / n) + 1e-9
    assert np.all(np.abs(freqs - probs) <= tolerance), (freqs, probs)


def test_sampling_frequencies_match_softmax() -> None:
    model = randomised(SMALL, 4, 9)
    n = 20000
    for temperature in (1.0, 0.6):
        probs = _probs(model, 5, temperature)
        assert probs.max() < 0.9  # a genuinely spread distribution
        _assert_freqs(_first_token_freqs(model, n, temperature=temperature), probs, n)


def test_top_k_and_top_p_truncate_and_renormalise() -> None:
    model = randomised(SMALL, 4, 9)
    n = 20000
    probs = _probs(model, 5)
    order = np.argsort(-probs, kind="stable")
    top3 = np.zeros_like(probs)
    top3[order[:3]] = probs[order[:3]]
    _assert_freqs(_first_token_freqs(model, n, top_k=3), top3 / top3.sum(), n)
    # top_p: the smallest set of best tokens whose mass reaches p.
    top_p = float(probs[order[0]] + probs[order[1]] + 0.5 * probs[order[2]])
    nucleus = np.zeros_like(probs)
    nucleus[order[:3]] = probs[order[:3]]
    _assert_freqs(_first_token_freqs(model, n, top_p=top_p), nucleus / nucleus.sum(), n)


def test_greedy_variants_agree() -> None:
    model = randomised(SMALL, 4, 9)
    table = model.logit_table()
    expected: list[int] = []
    prev = 5
    for _ in range(12):
        prev = int(np.argmax(table[prev]))
        expected.append(prev)
    kwargs: dict[str, object] = {"max_tokens": 12, "stop_tokens": [], "num_samples": 3}
    for variant in ({"temperature": 0.0}, {"top_k": 1, "seed": 1}, {"top_p": 1e-9, "seed": 2}, {"top_k": 1}):
        result = model.sample([5], **kwargs, **variant)  # pyright: ignore[reportArgumentType]
        for seq in result.sequences:
            assert seq.tokens.tolist() == expected
            assert seq.stop_reason == "length"


def test_seed_reproducibility() -> None:
    model = randomised(SMALL, 4, 9)
    kwargs: dict[str, object] = {"num_samples": 4, "max_tokens": 20, "stop_tokens": [], "top_k": 8, "top_p": 0.95}
    a = model.sample([1, 2], seed=42, **kwargs)  # pyright: ignore[reportArgumentType]
    b = model.sample([1, 2], seed=42, **kwargs)  # pyright: ignore[reportArgumentType]
    c = model.sample([1, 2], seed=43, **kwargs)  # pyright: ignore[reportArgumentType]
    tokens_a = [s.tokens.tolist() for s in a.sequences]
    assert tokens_a == [s.tokens.tolist() for s in b.sequences]
    assert tokens_a != [s.tokens.tolist() for s in c.sequences]
    assert len({tuple(t) for t in tokens_a}) > 1  # the samples of one request differ from each other
    # Asking for prompt extras does not change the sampled sequences.
    d = model.sample([1, 2], seed=42, prompt_alt_tokens_k=3, prompt_logprobs=True, **kwargs)  # pyright: ignore[reportArgumentType]
    assert tokens_a == [s.tokens.tolist() for s in d.sequences]


def test_sampled_logprobs_are_raw_model_logprobs() -> None:
    model = randomised(SMALL, 4, 9)
    result = model.sample([7], num_samples=3, max_tokens=15, stop_tokens=[], seed=0, temperature=0.7)
    for seq in result.sequences:
        assert seq.tokens.dtype == np.int64
        assert seq.logprobs.dtype == np.float32
        inputs = np.concatenate([[7], seq.tokens[:-1]])
        learner = model.forward([_ce(inputs.tolist(), seq.tokens.tolist())], "cross_entropy")
        np.testing.assert_allclose(seq.logprobs, learner.loss_fn_outputs[0]["logprobs"], rtol=1e-6)


def test_topk_sample_logprobs_and_padding() -> None:
    model = randomised()  # vocab 7
    result = model.sample([2], max_tokens=4, stop_tokens=[], seed=0, topk_sample_logprobs=9)
    seq = result.sequences[0]
    assert seq.topk is not None
    assert seq.topk.token_ids.shape == (4, 9)
    assert seq.topk.logprobs.shape == (4, 9)
    table = _log_softmax(model.logit_table())
    prevs = np.concatenate([[2], seq.tokens[:-1]])
    for row, prev in enumerate(prevs):
        best = np.argsort(-table[prev], kind="stable")
        assert seq.topk.token_ids[row, :7].tolist() == best.tolist()
        np.testing.assert_allclose(seq.topk.logprobs[row, :7], table[prev, best], rtol=1e-6)
        assert seq.topk.token_ids[row, 7:].tolist() == [0, 0]
        assert seq.topk.logprobs[row, 7:].tolist() == [MASK_LOGPROB, MASK_LOGPROB]
    assert model.sample([2], max_tokens=2).sequences[0].topk is None


def test_prompt_logprobs_topk_target_and_alt_tokens() -> None:
    model = randomised(SMALL, 4, 9)
    prompt = [3, 9, 1, 14, 2]
    table = _log_softmax(model.logit_table())
    targets = np.array([[1, -1], [4, 5], [-1, -1], [0, 15]])
    result = model.sample(
        prompt,
        max_tokens=1,
        seed=0,
        prompt_logprobs=True,
        topk_prompt_logprobs=2,
        target_prompt_logprobs=targets,
        prompt_alt_tokens_k=3,
    )
    assert result.prompt_logprobs is not None
    assert result.prompt_logprobs.dtype == np.float32
    assert math.isnan(float(result.prompt_logprobs[0]))
    expected = table[prompt[:-1], prompt[1:]]
    np.testing.assert_allclose(result.prompt_logprobs[1:], expected, rtol=1e-6)
    topk = result.topk_prompt
    assert topk is not None
    assert topk.token_ids.shape == (5, 2)
    assert topk.token_ids[0].tolist() == [0, 0]
    assert topk.logprobs[0].tolist() == [MASK_LOGPROB, MASK_LOGPROB]
    for pos in range(1, 5):
        best = np.argsort(-table[prompt[pos - 1]], kind="stable")[:2]
        assert topk.token_ids[pos].tolist() == best.tolist()
    tgt = result.target_prompt_logprobs
    assert tgt is not None
    assert tgt.shape == (4, 2)
    assert tgt[0, 1] == 0.0
    assert tgt[2].tolist() == [0.0, 0.0]
    assert _close(float(tgt[1, 0]), float(table[9, 4]), rel=1e-6)
    assert _close(float(tgt[3, 1]), float(table[14, 15]), rel=1e-6)
    assert result.prompt_alt_tokens is not None
    assert result.prompt_alt_logprobs is not None
    assert result.prompt_alt_tokens.shape == (4, 3)
    np.testing.assert_allclose(
        result.prompt_alt_logprobs,
        table[np.array(prompt[:-1])[:, None], result.prompt_alt_tokens],
        rtol=1e-6,
    )
    last2 = model.sample(prompt, max_tokens=1, prompt_logprobs=True, prompt_logprobs_last_n=2, topk_prompt_logprobs=1)
    assert last2.prompt_logprobs is not None
    assert np.isnan(last2.prompt_logprobs[:3]).all()
    np.testing.assert_allclose(last2.prompt_logprobs[3:], expected[2:], rtol=1e-6)
    assert last2.topk_prompt is not None
    assert last2.topk_prompt.logprobs[:3, 0].tolist() == [MASK_LOGPROB] * 3
    plain = model.sample(prompt, max_tokens=1)
    assert plain.prompt_logprobs is None
    assert plain.topk_prompt is None
    assert plain.target_prompt_logprobs is None
    assert plain.prompt_alt_tokens is None


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------------


def _train(model: LoraModel, data: list[DatumArrays], steps: int) -> None:
    for _ in range(steps):
        model.forward_backward(data, "cross_entropy")
        model.optim_step(AdamParams(learning_rate=0.05, weight_decay=0.01))


def test_checkpoint_round_trip_continues_identically() -> None:
    model = randomised(SMALL, 4, 2)
    data = _rl_data(model, 8)
    _train(model, data, 3)
    blob = model.to_bytes(with_optimizer=True)
    restored = LoraModel.from_bytes(blob)
    assert restored.step == 3
    assert (restored.base_model, restored.rank, restored.seed, restored.cfg) == (
        model.base_model,
        model.rank,
        model.seed,
        model.cfg,
    )
    _train(model, data, 3)
    _train(restored, data, 3)
    for name, value in model.get_parameters().items():
        np.testing.assert_array_equal(restored.get_parameters()[name], value)
    # In place, into a model with other weights.
    other = randomised(SMALL, 4, 2)
    other.load_bytes(blob, with_optimizer=True)
    _train(other, data, 3)
    for name, value in model.get_parameters().items():
        np.testing.assert_array_equal(other.get_parameters()[name], value)


def test_checkpoint_without_optimizer_resets_it() -> None:
    model = randomised(SMALL, 4, 2)
    data = _rl_data(model, 8)
    _train(model, data, 3)
    weights_only = model.to_bytes(with_optimizer=False)
    restored = LoraModel.from_bytes(weights_only)
    assert restored.step == 0
    for name, value in model.get_parameters().items():
        np.testing.assert_array_equal(restored.get_parameters()[name], value)
    np.testing.assert_array_equal(restored.logit_table(), model.logit_table())
    with pytest.raises(SimUserError, match="no optimizer state"):
        restored.load_bytes(weights_only, with_optimizer=True)
    # A fresh optimizer takes a different step from the trained one.
    _train(model, data, 1)
    _train(restored, data, 1)
    assert not np.array_equal(restored.get_parameters()["lora_B"], model.get_parameters()["lora_B"])


def test_checkpoint_mismatch_and_garbage() -> None:
    model = randomised(SMALL, 4, 2)
    blob = model.to_bytes()
    with pytest.raises(SimUserError, match="base_model"):
        LoraModel("other-base", 4, 0, SMALL).load_bytes(blob, with_optimizer=False)
    with pytest.raises(SimUserError, match="rank"):
        LoraModel(model.base_model, 8, 0, SMALL).load_bytes(blob, with_optimizer=False)
    with pytest.raises(SimUserError, match="checkpoint"):
        LoraModel.from_bytes(b"not an npz archive")


def test_snapshot_is_independent() -> None:
    model = randomised(SMALL, 4, 2)
    snap = model.snapshot()
    table = snap.logit_table().copy()
    _train(model, _rl_data(model, 8), 2)
    np.testing.assert_array_equal(snap.logit_table(), table)
    assert not np.array_equal(model.logit_table(), table)


# --------------------------------------------------------------------------------------------------------------------
# The pattern task
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pattern_model() -> tuple[LoraModel, list[float]]:
    cfg = ModelConfig()  # the default 256-token vocabulary; EOS = 255
    model = LoraModel("Qwen/Qwen3-8B", 8, 0, cfg)
    pattern = [10, 20, 30, cfg.eos]
    seq = np.array(pattern * 16)
    data = [_ce(seq[:-1].tolist(), seq[1:].tolist())]
    losses: list[float] = []
    for _ in range(120):
        losses.append(model.forward_backward(data, "cross_entropy").metrics["loss:sum"])
        model.optim_step(AdamParams(learning_rate=1e-2))
    losses.append(model.forward(data, "cross_entropy").metrics["loss:sum"])
    return model, losses


def test_pattern_training_lowers_loss(pattern_model: tuple[LoraModel, list[float]]) -> None:
    _, losses = pattern_model
    assert losses[-1] <= 0.2 * losses[0], (losses[0], losses[-1])


def test_pattern_is_reproduced_by_greedy_sampling(pattern_model: tuple[LoraModel, list[float]]) -> None:
    model, _ = pattern_model
    eos = model.eos_token_id
    # Default stop list: stop at EOS, which is included in the output.
    result = model.sample([eos, 10], max_tokens=10, temperature=0.0)
    assert result.sequences[0].tokens.tolist() == [20, 30, eos]
    assert result.sequences[0].stop_reason == "stop"
    # No stop tokens: the pattern repeats until max_tokens.
    result = model.sample([10], max_tokens=9, temperature=0.0, stop_tokens=[])
    assert result.sequences[0].tokens.tolist() == [20, 30, eos, 10, 20, 30, eos, 10, 20]
    assert result.sequences[0].stop_reason == "length"
    # A custom stop token, and a stop sequence.
    result = model.sample([10], max_tokens=9, temperature=0.0, stop_tokens=[10])
    assert result.sequences[0].tokens.tolist() == [20, 30, eos, 10]
    assert result.sequences[0].stop_reason == "stop"
    result = model.sample([10], max_tokens=9, temperature=0.0, stop_tokens=[], stop_sequences=[[10, 20]])
    assert result.sequences[0].tokens.tolist() == [20, 30, eos, 10, 20]
    assert result.sequences[0].stop_reason == "stop"
    # At temperature 1 the trained pattern dominates too.
    sampled = model.sample([10], num_samples=20, max_tokens=6, stop_tokens=[], seed=5)
    matches = sum(s.tokens.tolist() == [20, 30, eos, 10, 20, 30] for s in sampled.sequences)
    assert matches >= 15


def test_pattern_changes_what_the_base_produces(pattern_model: tuple[LoraModel, list[float]]) -> None:
    model, _ = pattern_model
    base = LoraModel(model.base_model, 8, 0, model.cfg)
    result = base.sample([10], max_tokens=9, temperature=0.0, stop_tokens=[])
    assert result.sequences[0].tokens.tolist() != [20, 30, model.eos_token_id, 10, 20, 30, model.eos_token_id, 10, 20]


def test_sampling_follows_weight_updates() -> None:
    model = randomised(SMALL, 4, 9)
    kwargs: dict[str, object] = {"num_samples": 4, "max_tokens": 8, "stop_tokens": [], "seed": 3, "temperature": 0.8}
    before = model.sample([1], **kwargs)  # pyright: ignore[reportArgumentType]
    _train(model, [_ce([1] * 8, [6] * 8)], 5)  # push the model towards 1 -> 6
    after = model.sample([1], **kwargs)  # pyright: ignore[reportArgumentType]
    table = _log_softmax(model.logit_table())
    assert [s.tokens.tolist() for s in before.sequences] != [s.tokens.tolist() for s in after.sequences]
    for seq in after.sequences:
        prevs = np.concatenate([[1], seq.tokens[:-1]])
        np.testing.assert_allclose(seq.logprobs, table[prevs, seq.tokens], rtol=1e-6)


def test_negative_and_large_seeds_are_accepted() -> None:
    model = LoraModel("tiny-base", 2, -5, TINY)
    again = LoraModel("tiny-base", 2, -5 + 2**64, TINY)
    np.testing.assert_array_equal(model.get_parameters()["lora_A"], again.get_parameters()["lora_A"])
    a = model.sample([1], num_samples=3, max_tokens=5, stop_tokens=[], seed=-1)
    b = model.sample([1], num_samples=3, max_tokens=5, stop_tokens=[], seed=2**64 - 1)
    assert [s.tokens.tolist() for s in a.sequences] == [s.tokens.tolist() for s in b.sequences]
