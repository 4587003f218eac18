"""Numpy-backed TensorData and SampledSequence: zero-copy numpy access, lists on read, unchanged wire bytes."""

from __future__ import annotations

import pickle

import msgspec
import numpy as np
import pytest
from tinker.proto import response_conv

import tinkex_trio.types as tt
from tinkex_trio._proto._codec import (
    decode_forward_backward_output,
    decode_sample_response,
    encode_forward_backward_output,
    encode_forward_backward_request,
    encode_sample_response,
)
from tinkex_trio.errors import InvalidArgumentError
from tinkex_trio.types._sampling import stored_logprobs, stored_tokens
from tinkex_trio.types._tensor import stored_values


def test_from_numpy_shares_memory_and_reads_as_a_list() -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    td = tt.TensorData.from_numpy(arr)
    assert isinstance(stored_values(td), np.ndarray)
    out = td.to_numpy()
    assert out.shape == (2, 3) and np.shares_memory(out, arr)
    assert td.num_values == 6 and td.numel == 6
    assert td.data == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    # The first read of .data made the list the storage: it is the same list afterwards, and mutations stick.
    assert td.data is td.data and type(stored_values(td)) is list
    td.data[0] = 9.0
    assert td.to_numpy()[0, 0] == 9.0


def test_numpy_backed_json_is_byte_identical_to_list_backed() -> None:
    values = np.array([0.1, -2.5, 3.0], dtype=np.float32)
    from_array = tt.TensorData.from_numpy(values)
    from_list = tt.TensorData(data=values.tolist(), dtype="float32", shape=[3])
    assert tt.encode(from_array) == tt.encode(from_list)
    assert tt.to_builtins(from_array) == tt.to_builtins(from_list)
    ints = tt.TensorData.from_numpy(np.array([[1, 2], [3, 4]]))
    assert tt.encode(ints) == b'{"data":[1,2,3,4],"dtype":"int64","shape":[2,2]}'
    datum = tt.datum([1, 2, 3], target_tokens=np.array([4, 5, 6]), weights=np.ones(3, dtype=np.float32))
    listed = tt.datum([1, 2, 3], target_tokens=[4, 5, 6], weights=[1.0, 1.0, 1.0])
    assert tt.encode(datum) == tt.encode(listed)


def test_equality_across_storages_and_struct_helpers() -> None:
    a = tt.TensorData.from_numpy(np.array([1.0, 2.0], dtype=np.float32))
    b = tt.TensorData(data=[1.0, 2.0], dtype="float32", shape=[2])
    assert a == b
    assert (a != b) is False  # __ne__ too: the Struct default would compare the arrays element by element
    assert a != tt.TensorData(data=[1.0, 3.0], dtype="float32", shape=[2])
    assert a != tt.TensorData(data=[1.0, 2.0], dtype="float32")
    copy = msgspec.structs.replace(a, shape=[1, 2])
    assert isinstance(stored_values(copy), np.ndarray) and copy.to_numpy().shape == (1, 2)
    assert pickle.loads(pickle.dumps(a)) == a


def test_read_only_and_foreign_dtype_arrays_are_copied() -> None:
    arr = np.frombuffer(np.arange(3, dtype=np.float32).tobytes(), dtype=np.float32)
    td = tt.TensorData(data=arr, dtype="float32")
    assert td.to_numpy().flags.writeable and not np.shares_memory(td.to_numpy(), arr)
    wide = np.arange(3, dtype=np.float64)
    td64 = tt.TensorData.from_numpy(wide)
    assert td64.to_numpy().dtype == np.float32
    assert tt.TensorData(data=None, dtype="int64").num_values == 0
    with pytest.raises(InvalidArgumentError, match="non-integral"):
        tt.TensorData(data=np.array([0.5]), dtype="int64")


def test_datum_keeps_arrays_and_checks_target_tokens() -> None:
    targets = np.array([3, 4, 5], dtype=np.int64)
    d = tt.datum([1, 2, 3], target_tokens=targets, weights=np.ones(3, dtype=np.float32))
    assert np.shares_memory(d.loss_fn_inputs["target_tokens"].to_numpy(), targets)
    with pytest.raises(ValueError, match="token ids >= 0"):
        tt.datum([1, 2, 3], target_tokens=np.array([1, -1, 2]))


def fbo(n: int, tokens: int) -> tt.ForwardBackwardOutput:
    rng = np.random.default_rng(0)
    return tt.ForwardBackwardOutput(
        loss_fn_output_type="TensorData",
        loss_fn_outputs=[
            {"logprobs": tt.TensorData.from_numpy(-rng.random(tokens, dtype=np.float32))} for _ in range(n)
        ],
        metrics={"loss:sum": 1.5},
    )


def test_decoded_forward_backward_output_is_numpy_backed_and_bit_equal_to_the_sdk() -> None:
    out = fbo(5, 7)
    body = encode_forward_backward_output(out)
    ours = decode_forward_backward_output(body)
    theirs = response_conv.deserialize_forward_backward_output(body)
    for mine, sdk_row, sent in zip(ours.loss_fn_outputs, theirs.loss_fn_outputs, out.loss_fn_outputs, strict=True):
        td = mine["logprobs"]
        assert isinstance(stored_values(td), np.ndarray)
        arr = td.to_numpy()
        assert arr.flags.writeable and arr.shape == (7,)
        assert arr.tobytes() == sdk_row["logprobs"].to_numpy().tobytes() == sent["logprobs"].to_numpy().tobytes()
    # Writing to one datum's array leaves its neighbours alone (each is its own slice of one copy).
    assert ours == out
    ours.loss_fn_outputs[0]["logprobs"].to_numpy()[:] = 0.0
    assert ours.loss_fn_outputs[0] != out.loss_fn_outputs[0]
    assert ours.loss_fn_outputs[1] == out.loss_fn_outputs[1]


def test_numpy_backed_tensors_encode_as_the_list_backed_ones() -> None:
    d_arr = tt.datum([1, 2], target_tokens=np.array([3, 4]), weights=np.array([0.5, 1.0], dtype=np.float32))
    d_list = tt.Datum(
        model_input=d_arr.model_input,
        loss_fn_inputs={
            "target_tokens": tt.TensorData(data=[3, 4], dtype="int64", shape=[2]),
            "weights": tt.TensorData(data=[0.5, 1.0], dtype="float32", shape=[2]),
        },
    )
    assert encode_forward_backward_request("m", 1, [d_arr], "cross_entropy", None, False) == (
        encode_forward_backward_request("m", 1, [d_list], "cross_entropy", None, False)
    )


def test_decoded_sample_response_is_numpy_backed() -> None:
    resp = tt.SampleResponse(
        sequences=[
            tt.SampledSequence(stop_reason="length", tokens=[5, 6, 7], logprobs=[-0.5, -1.25, -2.0]),
            tt.SampledSequence(stop_reason="stop", tokens=[8]),
        ]
    )
    body = encode_sample_response(resp)
    ours = decode_sample_response(body, ["a", "b"])
    first = ours.sequences[0]
    assert isinstance(stored_tokens(first), np.ndarray) and isinstance(stored_logprobs(first), np.ndarray)
    assert first.tokens_np.dtype == np.int32 and first.tokens_np.flags.writeable
    logprobs_np = first.logprobs_np
    assert logprobs_np is not None and logprobs_np.dtype == np.float32
    assert ours.sequences[1].logprobs is None and ours.sequences[1].logprobs_np is None
    # Equal to the list-built sequences (sequence_id aside), before and after the lists are read.
    assert [msgspec.structs.replace(s, sequence_id=None) for s in ours.sequences] == resp.sequences
    assert first.tokens == [5, 6, 7] and first.logprobs == [-0.5, -1.25, -2.0]
    assert type(stored_tokens(first)) is list
    # A numpy-backed response encodes to the same bytes, as protobuf and as JSON.
    again = decode_sample_response(body)
    assert encode_sample_response(again) == body
    assert tt.encode(again) == tt.encode(resp)
    theirs = response_conv.deserialize_sample_response(body)
    assert again.sequences[0].tokens_np.tobytes() == theirs.sequences[0].tokens_np.tobytes()


def test_sampled_sequence_from_arrays() -> None:
    seq = tt.SampledSequence(stop_reason="stop", tokens=np.array([1, 2], dtype=np.int64))
    assert seq.tokens_np.dtype == np.int32 and seq.tokens == [1, 2]
    with pytest.raises(ValueError, match="int32 range"):
        encode_sample_response(
            tt.SampleResponse(sequences=[tt.SampledSequence(stop_reason="stop", tokens=np.array([2**40]))])
        )


def test_decoded_prompt_scores_and_topk_are_numpy_backed_and_bit_equal_to_the_sdk() -> None:
    nan = float("nan")
    listed = tt.SampleResponse(
        sequences=[
            tt.SampledSequence(
                stop_reason="length", tokens=[5, 6], topk_logprobs=[[(9, -0.5), (4, -1.5)], [(1, -0.25)]]
            )
        ],
        prompt_logprobs=[None, -1.5, -0.25],
        topk_prompt_logprobs=[None, [(4, -0.375)], [(5, -0.125), (6, -3.0)]],
    )
    body = encode_sample_response(listed)
    ours = decode_sample_response(body, ["s"])
    theirs = response_conv.deserialize_sample_response(body)
    # Stored as arrays, handed out without a copy, with the SDK's bytes.
    plp = ours.prompt_logprobs_np
    assert plp is not None and plp.dtype == np.float32 and plp.flags.writeable and plp is ours.prompt_logprobs_np
    assert theirs.prompt_logprobs_np is not None
    assert plp.tobytes() == theirs.prompt_logprobs_np.tobytes() and np.isnan(plp[0]) and nan != plp[0]
    for mine, sdk in (
        (ours.topk_prompt_logprobs_np, theirs.topk_prompt_logprobs_np),
        (ours.sequences[0].topk_logprobs_np, theirs.sequences[0].topk_logprobs_np),
    ):
        assert mine is not None and sdk is not None
        assert mine.token_ids.dtype == np.int32 and mine.logprobs.dtype == np.float32
        assert mine.token_ids.tobytes() == sdk.token_ids.tobytes()
        assert mine.logprobs.tobytes() == sdk.logprobs.tobytes()
        assert mine.token_ids.shape == (mine.length, mine.k) == sdk.token_ids.shape
    topk = ours.topk_prompt_logprobs_np
    assert topk is not None and topk.k == 2 and topk.to_lists() == theirs.topk_prompt_logprobs
    assert topk.token_ids[0].tolist() == [0, 0] and topk.logprobs[0].tolist() == [-99999.0, -99999.0]
    # Equal to the list-built response, and encoded to the same bytes (protobuf and JSON), before the lists are read.
    assert decode_sample_response(body) == listed
    assert encode_sample_response(decode_sample_response(body)) == body
    assert tt.encode(decode_sample_response(body)) == tt.encode(listed)
    assert pickle.loads(pickle.dumps(decode_sample_response(body))) == listed
    # The lists, once read, are the storage; the numpy accessors still answer (converted back).
    assert ours.prompt_logprobs == [None, -1.5, -0.25] and ours.topk_prompt_logprobs == listed.topk_prompt_logprobs
    assert ours.sequences[0].topk_logprobs == [[(9, -0.5), (4, -1.5)], [(1, -0.25)]]
    again = ours.topk_prompt_logprobs_np
    assert again is not None and again == topk
    assert ours.prompt_logprobs_np is not None and ours.prompt_logprobs_np.tobytes() == plp.tobytes()
    # Nothing asked for: None everywhere.
    bare = decode_sample_response(encode_sample_response(tt.SampleResponse(sequences=[])))
    assert bare.prompt_logprobs_np is None and bare.topk_prompt_logprobs_np is None
    assert bare.target_prompt_logprobs_np is None


def test_topk_logprobs_from_and_to_lists() -> None:
    pair = tt.TopkLogprobs.from_lists([[(3, -0.5)], None, [(1, -1.0), (2, -2.0)]], k=3)
    assert pair.token_ids.tolist() == [[3, 0, 0], [0, 0, 0], [1, 2, 0]]
    assert pair.to_lists() == [[(3, -0.5)], None, [(1, -1.0), (2, -2.0)]]
    assert repr(pair) == "TopkLogprobs(length=3, k=3)" and pair != tt.TopkLogprobs.from_lists([None])
    assert tt.TopkLogprobs.from_lists([]).to_lists() == []
    with pytest.raises(ValueError, match="more than k=1"):
        tt.TopkLogprobs.from_lists([[(1, -1.0), (2, -2.0)]], k=1)
    with pytest.raises(ValueError, match="2-D"):
        tt.TopkLogprobs(np.zeros(3, np.int32), np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="integers"):
        tt.TopkLogprobs(np.zeros((1, 1)), np.zeros((1, 1)))
