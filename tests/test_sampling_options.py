"""The official SDK's sampling options against the simulator, in both wire formats, under trio's MockClock.

``topk_sample_logprobs``, ``target_prompt_logprobs`` (dense and sparse), ``prompt_alt_tokens_k`` and
``prompt_logprobs_last_n`` (of ``sample`` and ``compute_logprobs``). Every expected number is computed here, from the
simulator's logit table (the model itself: a bigram model, so the distribution after token ``x`` is row ``x``), with
this file's own log-softmax, top-k and gathers; the simulator's sampling code is not used. A scripted reply (the
Recorder in ``_simkit``) stands for a server that ignores an option: the client refuses the result, as the official
SDK does.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import trio
import trio.testing
from _simkit import API_KEY, BASE_URL, Reply, SimStack, sim_config, sim_stack

from tinkex_trio import types as t
from tinkex_trio._config import Config
from tinkex_trio._proto._codec import encode_sample_response
from tinkex_trio._sampling import SamplingClient
from tinkex_trio.errors import ResponseValidationError

BASE = "Qwen/Qwen3-8B"
TOKENS = [3, 17, 200, 41, 9, 128, 77, 5, 17, 200]
PROMPT = t.ModelInput.from_ints(TOKENS)
L = len(TOKENS)
PROTO = "application/x-protobuf"
WIRE_FORMATS = ["proto", "json"]

F64 = npt.NDArray[np.float64]


@pytest.fixture
async def sim() -> AsyncGenerator[SimStack]:
    async with sim_stack(sim_config()) as stack:
        yield stack


def session_for(sim: SimStack, wire_format: str) -> Any:
    return sim.session(config=Config(api_key=API_KEY, base_url=BASE_URL, wire_format=wire_format))  # pyright: ignore[reportArgumentType]


def table(sim: SimStack) -> F64:
    """The log-softmax of the simulator's logit table, computed here in float64."""
    logits = sim.app.state.base_model(BASE, sim.app.config.model).logit_table()
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def f32(values: npt.ArrayLike) -> npt.NDArray[np.float32]:
    return np.asarray(values, dtype=np.float64).astype(np.float32)


def top_k(rows: F64, k: int) -> tuple[npt.NDArray[np.int64], F64]:
    """Each row's k best ids (ties to the lowest id) and their logprobs."""
    ids = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(rows, ids, axis=1)


def assert_f32(actual: npt.ArrayLike, expected: npt.ArrayLike) -> None:
    """float32 results equal the float64 expectation rounded to float32 (to one float32 ulp)."""
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float32), f32(expected), rtol=2e-7, atol=0)


def polls_accepted_proto(sim: SimStack) -> bool:
    return any(PROTO in p.headers.get("accept", "") for p in sim.rec.requests("retrieve_future"))


async def sampler_for(session: Any) -> SamplingClient:
    return await session.create_sampling_client(base_model=BASE)


# -- each option, exactly ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRE_FORMATS)
async def test_topk_sample_logprobs(sim: SimStack, autojump_clock: trio.testing.MockClock, wire: str) -> None:
    lsm = table(sim)
    async with session_for(sim, wire) as session:
        sampler = await sampler_for(session)
        params = t.SamplingParams(max_tokens=7, seed=5, stop=[], temperature=0.9)
        result = await sampler.sample(PROMPT, 3, params, topk_sample_logprobs=4)
    assert polls_accepted_proto(sim) == (wire == "proto")
    body = sim.rec.requests("asample")[0].json()
    assert body["topk_sample_logprobs"] == 4
    for seq in result.sequences:
        tokens = seq.tokens_np
        prevs = np.concatenate([[TOKENS[-1]], tokens[:-1]])
        ids, lps = top_k(lsm[prevs], 4)
        topk = seq.topk_logprobs_np
        assert topk is not None and topk.token_ids.shape == (7, 4) and topk.logprobs.shape == (7, 4)
        assert topk.token_ids.dtype == np.int32 and topk.logprobs.dtype == np.float32
        assert topk.token_ids.tolist() == ids.tolist()
        assert_f32(topk.logprobs, lps)
        # The list form, and the sampled token's own logprob beside it.
        assert seq.topk_logprobs == [
            list(zip(r, lp, strict=True)) for r, lp in zip(ids.tolist(), f32(lps).tolist(), strict=True)
        ]
        assert_f32(seq.logprobs_np, lsm[prevs, tokens])  # pyright: ignore[reportArgumentType]
    # Without the option: no top-k, and nothing refused.
    async with session_for(sim, wire) as session:
        plain = await (await sampler_for(session)).sample(PROMPT, 1, t.SamplingParams(max_tokens=2, seed=5))
    assert plain.sequences[0].topk_logprobs is None and plain.sequences[0].topk_logprobs_np is None


@pytest.mark.parametrize("wire", WIRE_FORMATS)
async def test_target_prompt_logprobs_dense(sim: SimStack, autojump_clock: trio.testing.MockClock, wire: str) -> None:
    lsm = table(sim)
    ids = np.full((L - 1, 3), -1, dtype=np.int64)
    ids[0] = [5, 6, 7]
    ids[4, 1] = 255
    ids[8] = [0, 200, -1]  # the last position: alternatives to the final prompt token
    async with session_for(sim, wire) as session:
        sampler = await sampler_for(session)
        result = await sampler.sample(
            PROMPT, 1, t.SamplingParams(max_tokens=1), target_prompt_logprobs=t.TensorData.from_numpy(ids)
        )
        # A plain integer array is taken as the dense tensor.
        again = await sampler.sample(PROMPT, 1, t.SamplingParams(max_tokens=1), target_prompt_logprobs=ids)
    body = sim.rec.requests("asample")[0].json()
    assert body["target_prompt_logprobs"] == {"data": ids.ravel().tolist(), "dtype": "int64", "shape": [L - 1, 3]}
    expected = np.where(ids >= 0, lsm[np.array(TOKENS[:-1])[:, None], np.maximum(ids, 0)], 0.0)
    got = result.target_prompt_logprobs
    assert got is not None and got.dtype == "float32" and got.shape == [L - 1, 3] and not got.is_sparse
    dense = result.target_prompt_logprobs_np
    assert dense is not None and dense.dtype == np.float32 and dense.shape == (L - 1, 3)
    assert_f32(dense, expected)
    assert dense[1].tolist() == [0.0, 0.0, 0.0]  # a row of -1: nothing asked, 0.0
    assert again.target_prompt_logprobs_np is not None
    assert again.target_prompt_logprobs_np.tolist() == dense.tolist()
    # Nothing else was asked for, and nothing else came back.
    assert result.prompt_logprobs is None and result.prompt_alt_tokens is None


@pytest.mark.parametrize("wire", WIRE_FORMATS)
async def test_target_prompt_logprobs_sparse(sim: SimStack, autojump_clock: trio.testing.MockClock, wire: str) -> None:
    lsm = table(sim)
    ids = np.full((L - 1, 4), -1, dtype=np.int64)
    ids[2, 3] = 10
    ids[7, 0] = 11
    ids[7, 2] = 12
    request = t.TensorData.sparse_from_numpy(ids, pad_value=-1)
    assert request.is_sparse and request.num_values == 3
    async with session_for(sim, wire) as session:
        result = await (await sampler_for(session)).sample(
            PROMPT, 1, t.SamplingParams(max_tokens=1), target_prompt_logprobs=request
        )
    got = result.target_prompt_logprobs
    # The answer comes in the request's own layout: only the three cells asked for.
    assert got is not None and got.is_sparse and got.shape == [L - 1, 4]
    assert got.sparse_crow_indices == request.sparse_crow_indices
    assert got.sparse_col_indices == request.sparse_col_indices
    assert_f32(got.data, [lsm[TOKENS[2], 10], lsm[TOKENS[7], 11], lsm[TOKENS[7], 12]])
    dense = result.target_prompt_logprobs_np
    assert dense is not None and dense.shape == (L - 1, 4)
    assert np.count_nonzero(dense) == 3 and dense[7, 2] == got.to_numpy()[7, 2]


@pytest.mark.parametrize("wire", WIRE_FORMATS)
async def test_prompt_alt_tokens(sim: SimStack, autojump_clock: trio.testing.MockClock, wire: str) -> None:
    lsm = table(sim)
    prevs = np.array(TOKENS[:-1])
    async with session_for(sim, wire) as session:
        sampler = await sampler_for(session)
        # Greedy: every draw is the most likely next token.
        greedy = await sampler.sample(PROMPT, 1, t.SamplingParams(max_tokens=1, temperature=0.0), prompt_alt_tokens_k=3)
        params = t.SamplingParams(max_tokens=3, seed=21, top_k=6, temperature=1.3, stop=[])
        warm = await sampler.sample(PROMPT, 2, params, prompt_alt_tokens_k=5)
        same = await sampler.sample(PROMPT, 2, params, prompt_alt_tokens_k=5)
        without = await sampler.sample(PROMPT, 2, params)
    assert sim.rec.requests("asample")[0].json()["prompt_alt_tokens_k"] == 3
    alt = greedy.prompt_alt_tokens
    assert alt is not None
    assert alt.tokens.dtype == "int64" and alt.logprobs.dtype == "float32"
    best = np.argmax(lsm[prevs], axis=1)
    assert alt.tokens_np.shape == (L - 1, 3) and alt.tokens_np.dtype == np.int64
    assert alt.tokens_np.tolist() == np.repeat(best[:, None], 3, axis=1).tolist()
    assert_f32(alt.logprobs_np, lsm[prevs[:, None], alt.tokens_np])

    warm_alt = warm.prompt_alt_tokens
    assert warm_alt is not None and warm_alt.tokens_np.shape == (L - 1, 5) and warm_alt.logprobs_np.shape == (L - 1, 5)
    allowed, _ = top_k(lsm[prevs], 6)  # drawn within the request's top_k
    assert all(set(row) <= set(ok) for row, ok in zip(warm_alt.tokens_np.tolist(), allowed.tolist(), strict=True))
    assert len({tuple(row) for row in warm_alt.tokens_np.tolist()}) > 1
    assert_f32(warm_alt.logprobs_np, lsm[prevs[:, None], warm_alt.tokens_np])  # the model's raw logprobs
    assert same.prompt_alt_tokens == warm_alt  # the seed fixes the draws
    # Asking for draws does not change the sampled sequences.
    assert [s.tokens for s in without.sequences] == [s.tokens for s in warm.sequences]


@pytest.mark.parametrize("wire", WIRE_FORMATS)
async def test_prompt_logprobs_last_n(sim: SimStack, autojump_clock: trio.testing.MockClock, wire: str) -> None:
    lsm = table(sim)
    expected = lsm[TOKENS[:-1], TOKENS[1:]]
    targets = np.full((L - 1, 1), 7, dtype=np.int64)
    async with session_for(sim, wire) as session:
        sampler = await sampler_for(session)
        result = await sampler.sample(
            PROMPT,
            1,
            t.SamplingParams(max_tokens=1, temperature=0.0),
            include_prompt_logprobs=True,
            topk_prompt_logprobs=2,
            prompt_logprobs_last_n=3,
            target_prompt_logprobs=targets,
            prompt_alt_tokens_k=1,
        )
        scores = await sampler.compute_logprobs(PROMPT, prompt_logprobs_last_n=4)
        full = await sampler.compute_logprobs(PROMPT)
    bodies = [s.json() for s in sim.rec.requests("asample")]
    assert bodies[0]["prompt_logprobs_last_n"] == 3 and bodies[0]["prompt_logprobs"] is True
    assert bodies[1]["prompt_logprobs_last_n"] == 4 and "prompt_logprobs_last_n" not in bodies[2]

    plp = result.prompt_logprobs_np
    assert plp is not None and plp.dtype == np.float32 and plp.shape == (L,)
    assert np.isnan(plp[: L - 3]).all()
    assert_f32(plp[L - 3 :], expected[-3:])
    assert result.prompt_logprobs is not None and result.prompt_logprobs[: L - 3] == [None] * (L - 3)
    topk = result.topk_prompt_logprobs_np
    assert topk is not None and topk.token_ids.shape == (L, 2)
    ids, lps = top_k(lsm[TOKENS[-4:-1]], 2)
    assert topk.token_ids[L - 3 :].tolist() == ids.tolist()
    assert_f32(topk.logprobs[L - 3 :], lps)
    assert topk.logprobs[: L - 3].tolist() == [[t.TopkLogprobs.from_lists([None], 2).logprobs[0, 0]] * 2] * (L - 3)
    assert result.topk_prompt_logprobs is not None and result.topk_prompt_logprobs[: L - 3] == [None] * (L - 3)
    # last_n does not narrow the target logprobs or the alternative tokens.
    assert_f32(result.target_prompt_logprobs_np, lsm[TOKENS[:-1], 7][:, None])  # pyright: ignore[reportArgumentType]
    alt = result.prompt_alt_tokens
    assert alt is not None and alt.tokens_np[:, 0].tolist() == np.argmax(lsm[TOKENS[:-1]], axis=1).tolist()

    assert scores[: L - 4] == [None] * (L - 4)
    assert_f32([s for s in scores[L - 4 :] if s is not None], expected[-4:])
    assert full[0] is None and full[1:] == pytest.approx(f32(expected).tolist(), rel=0, abs=0)


# -- a result without what was asked for ------------------------------------------------------------------------------


def _topk_zeros(n: int) -> t.TopkLogprobs:
    return t.TopkLogprobs(np.zeros((n, 2), np.int32), np.zeros((n, 2), np.float32))


def _reply_missing(field: str, wire: str, num_tokens: int = 2) -> Reply:
    """A sample result for PROMPT that has every requested field but ``field`` (or has it wrong)."""
    seq = t.SampledSequence(
        stop_reason="length",
        tokens=np.arange(num_tokens, dtype=np.int32),
        logprobs=np.full(num_tokens, -1.0, dtype=np.float32),
        topk_logprobs=None if field == "topk_sample" else _topk_zeros(num_tokens),
    )
    plp = np.full(L, -0.5, dtype=np.float32)
    plp[: L - 2] = math.nan
    if field == "last_n":
        plp[1:] = -0.5  # the whole prompt scored: the server ignored prompt_logprobs_last_n
    alt_rows = L - 2 if field == "alt_shape" else L - 1
    target_cols = 2 if field == "target_shape" else 1
    response = t.SampleResponse(
        sequences=[seq],
        prompt_logprobs=None if field == "prompt_logprobs" else plp,
        topk_prompt_logprobs=None if field == "topk_prompt" else _topk_zeros(L),
        target_prompt_logprobs=(
            None if field == "target" else t.TensorData.from_numpy(np.zeros((L - 1, target_cols)), "float32")
        ),
        prompt_alt_tokens=(
            None
            if field == "alt"
            else t.PromptAltTokens(
                tokens=t.TensorData.from_numpy(np.zeros((alt_rows, 2), np.int64)),
                logprobs=t.TensorData.from_numpy(np.zeros((alt_rows, 2), np.float32)),
            )
        ),
    )
    if wire == "proto":
        return Reply(body=encode_sample_response(response), content_type=PROTO)
    return Reply(body=json.loads(t.encode(response)))


MISSING = {
    "prompt_logprobs": "$.prompt_logprobs",
    "topk_prompt": "$.topk_prompt_logprobs",
    "topk_sample": "$.sequences[0].topk_logprobs",
    "target": "$.target_prompt_logprobs",
    "target_shape": "$.target_prompt_logprobs",
    "alt": "$.prompt_alt_tokens",
    "alt_shape": "$.prompt_alt_tokens.tokens",
    "last_n": "$.prompt_logprobs",
}


@pytest.mark.parametrize("wire", WIRE_FORMATS)
@pytest.mark.parametrize("field", [*MISSING, None])
async def test_a_result_without_a_requested_field_is_refused(
    sim: SimStack, autojump_clock: trio.testing.MockClock, wire: str, field: str | None
) -> None:
    async with session_for(sim, wire) as session:
        sampler = await sampler_for(session)
        sim.rec.script("retrieve_future", _reply_missing(field or "", wire))

        async def call() -> t.SampleResponse:
            return await sampler.sample(
                PROMPT,
                1,
                t.SamplingParams(max_tokens=2),
                include_prompt_logprobs=True,
                topk_prompt_logprobs=2,
                topk_sample_logprobs=2,
                target_prompt_logprobs=np.ones((L - 1, 1), dtype=np.int64),
                prompt_alt_tokens_k=2,
                prompt_logprobs_last_n=2,
            )

        if field is None:  # the control: the same reply with everything in it is taken
            result = await call()
            assert result.prompt_alt_tokens is not None
        else:
            with pytest.raises(ResponseValidationError) as info:
                await call()
            assert info.value.field == MISSING[field]
    # A server that ignores an option ignores it again: the sample is not retried.
    assert len(sim.rec.requests("asample")) == 1
    assert sim.rec.scripted_left("retrieve_future") == 0


async def test_an_empty_sequence_needs_no_topk(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        sampler = await sampler_for(session)
        empty = t.SampleResponse(sequences=[t.SampledSequence(stop_reason="stop", tokens=[])])
        sim.rec.script("retrieve_future", Reply(body=encode_sample_response(empty), content_type=PROTO))
        result = await sampler.sample(PROMPT, 1, t.SamplingParams(max_tokens=2), topk_sample_logprobs=3)
        assert result.sequences[0].tokens == [] and result.sequences[0].topk_logprobs_np is None
