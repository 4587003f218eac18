"""The protobuf codec (protocol §5): round trips, cross-checks against the official SDK, and bad input.

Cross-checks: requests encoded by the SDK's converter decode with ours; ours parse with the SDK's generated classes
into the very message the SDK builds; our ForwardBackwardOutput / SampleResponse bytes decode with the SDK's
response converters into the same values; and hand-built SDK messages (BF16, INT32, several records, num_datums 0)
decode the same with both. Both generated modules live in one process here, which is itself a check that our
descriptor file and package do not clash with the SDK's.
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tinker import types as sdk
from tinker.proto import request_conv, response_conv
from tinker.proto import tinker_public_pb2 as sdk_pb

from tinkex_trio._proto import _arrays
from tinkex_trio._proto import tinkex_wire_pb2 as pb
from tinkex_trio._proto._codec import (
    PROTOBUF_CONTENT_TYPE,
    TOPK_PAD_LOGPROB,
    ForwardBackwardRequestData,
    ProtoDecodeError,
    decode_forward_backward_output,
    decode_forward_backward_request,
    decode_sample_response,
    encode_forward_backward_output,
    encode_forward_backward_request,
    encode_sample_response,
)
from tinkex_trio.errors import ResponseValidationError
from tinkex_trio.types import (
    Datum,
    DmelChunk,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ImageAssetPointerChunk,
    ImageChunk,
    ModelInput,
    ModelInputChunk,
    PromptAltTokens,
    ProvenanceSpan,
    SampledSequence,
    SampleResponse,
    TensorData,
    TopkEntry,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------------------------

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
TOKEN_IDS = st.integers(0, 2**31 - 1)  # token ids are >= 0 (a Datum refuses negative ones)
FLOAT32 = st.floats(width=32, allow_nan=False)
NAMES = st.text(string.ascii_letters + "_:.", min_size=1, max_size=8)
LOSS_FNS = st.sampled_from(["cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "custom"])


def np_dtype(dtype: str) -> type[np.generic]:
    return np.float32 if dtype == "float32" else np.int64


def elements(dtype: str) -> st.SearchStrategy[Any]:
    return FLOAT32 if dtype == "float32" else INT64


@st.composite
def dense_arrays(draw: st.DrawFn, dtype: str, shape: tuple[int, ...]) -> npt.NDArray[Any]:
    return draw(hnp.arrays(np_dtype(dtype), shape, elements=elements(dtype)))


@st.composite
def tensors(draw: st.DrawFn, dtypes: Sequence[str] = ("float32", "int64"), flat: bool = True) -> TensorData:
    """Dense (with or without a shape; never 0-d) or sparse CSR tensors."""
    dtype = draw(st.sampled_from(dtypes))
    kind = draw(st.sampled_from(["flat", "shaped", "sparse"] if flat else ["shaped", "sparse"]))
    if kind == "flat":
        values: list[int | float] = draw(st.lists(elements(dtype), max_size=12))
        return TensorData(data=values, dtype="float32" if dtype == "float32" else "int64")
    if kind == "shaped":
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=3)))
        return TensorData.from_numpy(draw(dense_arrays(dtype, shape)))
    rows, cols = draw(st.integers(0, 4)), draw(st.integers(1, 4))
    arr = draw(dense_arrays(dtype, (rows, cols)))
    mask = draw(hnp.arrays(np.bool_, (rows, cols)))
    return TensorData.sparse_from_numpy(np.where(mask, arr, 0))


@st.composite
def chunks(draw: st.DrawFn) -> ModelInputChunk:
    kind = draw(st.sampled_from(["text", "text", "image", "dmel"]))
    if kind == "text":
        return EncodedTextChunk(tokens=draw(st.lists(TOKEN_IDS, max_size=16)))
    if kind == "image":
        return ImageChunk(
            data=draw(st.binary(max_size=32)),
            format=draw(st.sampled_from(["png", "jpeg"])),
            expected_tokens=draw(st.none() | st.integers(0, 2**31 - 1)),
        )
    return DmelChunk(dmel=draw(st.binary(max_size=32)))


@st.composite
def spans(draw: st.DrawFn) -> ProvenanceSpan:
    make = ProvenanceSpan.sampled if draw(st.booleans()) else ProvenanceSpan.prompt
    return make(draw(st.text(min_size=1, max_size=8)), draw(st.integers(0, 2**40)), draw(st.integers(0, 2**40)))


SPANS = spans()


@st.composite
def datums(draw: st.DrawFn) -> Datum:
    spans = draw(
        st.none() | st.tuples(st.lists(SPANS, min_size=1, max_size=3), st.lists(SPANS, min_size=1, max_size=3))
    )
    return Datum(
        model_input=ModelInput(chunks=draw(st.lists(chunks(), max_size=3))),
        loss_fn_inputs=draw(st.dictionaries(NAMES, tensors(), max_size=3)),
        model_input_spans=spans[0] if spans else None,
        loss_fn_input_spans=spans[1] if spans else None,
    )


CONFIGS = st.none() | st.dictionaries(NAMES, st.floats(allow_nan=False) | st.text(max_size=8), min_size=1, max_size=4)


@st.composite
def fb_outputs(draw: st.DrawFn) -> ForwardBackwardOutput:
    names = draw(st.lists(NAMES, unique=True, max_size=3))
    n = draw(st.integers(0, 5))
    # A field keeps one layout for most datums (one record), with occasional changes (a new record).
    layouts = {
        name: (draw(st.sampled_from(["float32", "int64"])), draw(st.lists(st.integers(1, 3), max_size=2)))
        for name in names
    }
    outputs: list[dict[str, TensorData]] = []
    for _ in range(n):
        row: dict[str, TensorData] = {}
        for name in names:
            if draw(st.integers(0, 3)) == 0:
                layouts[name] = (
                    draw(st.sampled_from(["float32", "int64"])),
                    draw(st.lists(st.integers(1, 3), max_size=2)),
                )
            dtype, trailing = layouts[name]
            shape = (draw(st.integers(0, 4)), *trailing)
            row[name] = TensorData.from_numpy(draw(dense_arrays(dtype, shape)))
        outputs.append(row)
    return ForwardBackwardOutput(
        loss_fn_output_type=draw(st.text(string.ascii_letters, min_size=1, max_size=12)),
        loss_fn_outputs=outputs,
        metrics=draw(st.dictionaries(NAMES, st.floats(allow_nan=False), max_size=4)),
    )


TOPK_LOGPROB = FLOAT32.filter(lambda x: x != TOPK_PAD_LOGPROB)
TOPK_ENTRY: st.SearchStrategy[TopkEntry] = st.none() | st.lists(st.tuples(INT32, TOPK_LOGPROB), min_size=1, max_size=4)
TOPK = st.none() | st.lists(TOPK_ENTRY, min_size=1, max_size=6)


@st.composite
def sampled_sequences(draw: st.DrawFn) -> SampledSequence:
    tokens = draw(st.lists(INT32, max_size=10))
    want_logprobs = bool(tokens) and draw(st.booleans())
    return SampledSequence(
        stop_reason=draw(st.sampled_from(["stop", "length"])),
        tokens=tokens,
        logprobs=draw(st.lists(FLOAT32, min_size=len(tokens), max_size=len(tokens))) if want_logprobs else None,
        topk_logprobs=draw(TOPK),
    )


@st.composite
def matrices(draw: st.DrawFn, dtype: str, rows: int, k: int) -> TensorData:
    return TensorData.from_numpy(draw(dense_arrays(dtype, (rows, k))))


@st.composite
def sample_responses(draw: st.DrawFn) -> SampleResponse:
    alt: PromptAltTokens | None = None
    if draw(st.booleans()):
        rows, k = draw(st.integers(0, 4)), draw(st.integers(1, 3))
        alt = PromptAltTokens(tokens=draw(matrices("int64", rows, k)), logprobs=draw(matrices("float32", rows, k)))
    return SampleResponse(
        sequences=draw(st.lists(sampled_sequences(), max_size=4)),
        prompt_logprobs=draw(st.none() | st.lists(st.none() | FLOAT32, min_size=1, max_size=8)),
        topk_prompt_logprobs=draw(TOPK),
        target_prompt_logprobs=draw(st.none() | tensors(("float32",), flat=False)),
        prompt_alt_tokens=alt,
        prompt_cache_hit_tokens=draw(st.integers(0, 2**31 - 1)),
    )


# ---------------------------------------------------------------------------------------------------------------
# the official SDK's view of the same values
# ---------------------------------------------------------------------------------------------------------------


def sdk_tensor(td: TensorData) -> Any:
    return sdk.TensorData(
        data=np.asarray(td.data, dtype=np_dtype(td.dtype)),
        dtype=td.dtype,
        shape=td.shape,
        sparse_crow_indices=td.sparse_crow_indices,
        sparse_col_indices=td.sparse_col_indices,
    )


def sdk_chunk(chunk: ModelInputChunk) -> Any:
    if isinstance(chunk, EncodedTextChunk):
        return sdk.EncodedTextChunk(tokens=chunk.tokens)
    if isinstance(chunk, ImageChunk):
        return sdk.ImageChunk(data=chunk.data, format=chunk.format, expected_tokens=chunk.expected_tokens)
    assert isinstance(chunk, DmelChunk)
    return sdk.DmelChunk(dmel=chunk.dmel)


def sdk_spans(spans: list[ProvenanceSpan] | None) -> Any:
    if spans is None:
        return None
    out: list[Any] = []
    for span in spans:
        run = span.run
        cls = sdk.PromptProvenanceSpan if span.prompt_tokens is not None else sdk.SampledProvenanceSpan
        out.append(cls(sequence_id=run.sequence_id, offset=run.offset, length=run.length))
    return out


def sdk_datum(d: Datum) -> Any:
    return sdk.Datum(
        model_input=sdk.ModelInput(chunks=[sdk_chunk(c) for c in d.model_input.chunks]),
        loss_fn_inputs={k: sdk_tensor(v) for k, v in d.loss_fn_inputs.items()},
        model_input_spans=sdk_spans(d.model_input_spans),
        loss_fn_input_spans=sdk_spans(d.loss_fn_input_spans),
    )


def sdk_request_message(
    model_id: str,
    seq_id: int,
    data: list[Datum],
    loss_fn: str,
    config: Mapping[str, float | str] | None,
    forward_only: bool,
) -> Any:
    """The protobuf message the SDK sends (its converter, then forward_only as its training resource sets it)."""
    sdk_loss_fn: Any = loss_fn  # the SDK types it as its LossFnType literal
    request = sdk.ForwardBackwardRequest(
        forward_backward_input=sdk.ForwardBackwardInput(
            data=[sdk_datum(d) for d in data], loss_fn=sdk_loss_fn, loss_fn_config=config
        ),
        model_id=model_id,
        seq_id=seq_id,
    )
    msg = request_conv.forward_backward_request_to_proto(request)
    msg.forward_only = forward_only
    return msg


def assert_same_tensor(theirs: Any, ours: TensorData) -> None:
    assert theirs.dtype == ours.dtype
    assert list(theirs.shape) == ours.shape
    assert theirs.sparse_crow_indices == ours.sparse_crow_indices
    assert theirs.sparse_col_indices == ours.sparse_col_indices
    assert theirs.data == ours.data


# ---------------------------------------------------------------------------------------------------------------
# forward_backward request
# ---------------------------------------------------------------------------------------------------------------

REQUEST_ARGS = (
    st.text(max_size=20),
    st.integers(0, 2**31 - 1),
    st.lists(datums(), max_size=4),
    LOSS_FNS,
    CONFIGS,
    st.booleans(),
)


@SETTINGS
@given(*REQUEST_ARGS)
def test_request_round_trip(
    model_id: str,
    seq_id: int,
    data: list[Datum],
    loss_fn: str,
    config: dict[str, float | str] | None,
    forward_only: bool,
) -> None:
    body = encode_forward_backward_request(model_id, seq_id, data, loss_fn, config, forward_only)
    assert decode_forward_backward_request(body) == ForwardBackwardRequestData(
        model_id=model_id,
        seq_id=seq_id,
        data=data,
        loss_fn=loss_fn,
        loss_fn_config=config,
        forward_only=forward_only,
    )


@SETTINGS
@given(*REQUEST_ARGS)
def test_request_matches_official_sdk(
    model_id: str,
    seq_id: int,
    data: list[Datum],
    loss_fn: str,
    config: dict[str, float | str] | None,
    forward_only: bool,
) -> None:
    theirs = sdk_request_message(model_id, seq_id, data, loss_fn, config, forward_only)
    ours = encode_forward_backward_request(model_id, seq_id, data, loss_fn, config, forward_only)
    # Ours parses with the SDK's generated class into exactly the message the SDK builds...
    assert sdk_pb.ForwardBackwardRequest.FromString(ours) == theirs
    # ...and the SDK's bytes decode with ours into our values.
    decoded = decode_forward_backward_request(theirs.SerializeToString())
    assert decoded == ForwardBackwardRequestData(
        model_id=model_id,
        seq_id=seq_id,
        data=data,
        loss_fn=loss_fn,
        loss_fn_config=config,
        forward_only=forward_only,
    )


def test_request_config_maps() -> None:
    body = encode_forward_backward_request(
        "m", 1, [], "ppo", {"clip_low_threshold": 0.8, "loss_id": "L7", "n": 2}, False
    )
    msg = pb.ForwardBackwardRequest.FromString(body)
    assert dict(msg.loss_fn_config) == {"clip_low_threshold": 0.8, "n": 2.0}
    assert {k: v.WhichOneof("value") for k, v in msg.loss_fn_config_v2.items()} == {
        "clip_low_threshold": "number",
        "loss_id": "text",
        "n": "number",
    }
    assert msg.loss_fn_config_v2["loss_id"].text == "L7"


def test_request_v2_config_wins_over_v1() -> None:
    msg = pb.ForwardBackwardRequest(model_id="m", seq_id=4, loss_fn="ppo")
    msg.loss_fn_config["beta"] = 1.0
    msg.loss_fn_config["only_v1"] = 3.0
    msg.loss_fn_config_v2["beta"].number = 2.5
    msg.loss_fn_config_v2["name"].text = "x"
    decoded = decode_forward_backward_request(msg.SerializeToString())
    assert decoded.loss_fn_config == {"beta": 2.5, "only_v1": 3.0, "name": "x"}
    assert decoded.seq_id == 4


def test_request_tokens_are_int32_little_endian() -> None:
    d = Datum(model_input=ModelInput.from_ints([1, 0, 2**31 - 1]))
    msg = pb.ForwardBackwardRequest.FromString(
        encode_forward_backward_request("m", 1, [d], "cross_entropy", None, True)
    )
    raw = msg.data[0].model_input[0].encoded_text.tokens
    assert raw == np.array([1, 0, 2**31 - 1], dtype="<i4").tobytes()
    assert msg.forward_only


def test_request_rejects_image_asset_pointer() -> None:
    d = Datum(model_input=ModelInput(chunks=[ImageAssetPointerChunk(format="png", location="s3://x/y.png")]))
    with pytest.raises(ValueError, match=r"ImageAssetPointerChunk cannot be sent in forward_backward"):
        encode_forward_backward_request("m", 1, [d], "cross_entropy", None, False)


@pytest.mark.parametrize(
    ("datum", "message"),
    [
        (Datum(model_input=ModelInput.from_ints([2**31])), "int32"),
        (
            Datum(model_input=ModelInput.from_ints([1]), loss_fn_inputs={"t": TensorData(data=[1.5], dtype="int64")}),
            "non-integral",
        ),
        (
            Datum(model_input=ModelInput.from_ints([1]), loss_fn_inputs={"t": TensorData(data=[2**63], dtype="int64")}),
            "int64",
        ),
    ],
)
def test_request_rejects_values_the_wire_cannot_carry(datum: Datum, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_forward_backward_request("m", 1, [datum], "cross_entropy", None, False)


def test_request_rejects_seq_id_out_of_int32() -> None:
    with pytest.raises(ValueError, match="seq_id"):
        encode_forward_backward_request("m", 2**31, [], "cross_entropy", None, False)


def _datum_message() -> Any:
    msg = pb.ForwardBackwardRequest(model_id="m", seq_id=1, loss_fn="cross_entropy")
    return msg, msg.data.add()


def test_request_decoder_errors_are_value_errors_with_paths() -> None:
    with pytest.raises(ProtoDecodeError, match="not a valid protobuf ForwardBackwardRequest"):
        decode_forward_backward_request(b"\x0a\xff\xff")  # field 1, length 2^14+: truncated

    msg, d = _datum_message()
    d.model_input.add()  # a chunk with no content
    with pytest.raises(ProtoDecodeError, match="no content") as info:
        decode_forward_backward_request(msg.SerializeToString())
    assert info.value.path == "$.data[0].model_input[0]"
    assert isinstance(info.value, ValueError)

    msg, d = _datum_message()
    d.model_input.add().encoded_text.tokens = b"\x01\x02\x03"
    with pytest.raises(ProtoDecodeError, match="4-byte") as info:
        decode_forward_backward_request(msg.SerializeToString())
    assert info.value.path == "$.data[0].model_input[0].encoded_text.tokens"

    msg, d = _datum_message()
    t = d.loss_fn_inputs["weights"]
    t.dtype = pb.DTYPE_FLOAT32
    t.dense = np.zeros(3, dtype="<f4").tobytes()
    t.shape.extend([2, 2])
    with pytest.raises(ProtoDecodeError, match="do not fill shape") as info:
        decode_forward_backward_request(msg.SerializeToString())
    assert info.value.path == "$.data[0].loss_fn_inputs.weights"

    msg, d = _datum_message()
    d.loss_fn_inputs["weights"].dense = b""  # DTYPE_UNSPECIFIED
    with pytest.raises(ProtoDecodeError, match="unsupported tensor dtype 0"):
        decode_forward_backward_request(msg.SerializeToString())

    msg, d = _datum_message()
    d.model_input.add().image.format = "gif"
    with pytest.raises(ProtoDecodeError, match="'png' or 'jpeg'"):
        decode_forward_backward_request(msg.SerializeToString())

    msg, d = _datum_message()
    d.model_input_spans.add()
    d.loss_fn_input_spans.add().prompt_tokens.sequence_id = "s"
    with pytest.raises(ProtoDecodeError, match="neither prompt_tokens nor sampled_tokens"):
        decode_forward_backward_request(msg.SerializeToString())

    msg = pb.ForwardBackwardRequest(model_id="m")
    msg.loss_fn_config_v2["x"].Clear()
    with pytest.raises(ProtoDecodeError, match="neither number nor text"):
        decode_forward_backward_request(msg.SerializeToString())


def test_request_decoder_widens_int32_and_bf16_inputs() -> None:
    msg, d = _datum_message()
    d.model_input.add().encoded_text.tokens = np.array([7], dtype="<i4").tobytes()
    t32 = d.loss_fn_inputs["target_tokens"]
    t32.dtype = pb.DTYPE_INT32
    t32.dense = np.array([5, 2**31 - 1], dtype="<i4").tobytes()
    bf = d.loss_fn_inputs["weights"]
    bf.dtype = pb.DTYPE_BFLOAT16
    bf.dense = (np.array([1.5, -2.0], dtype="<f4").view("<u4") >> 16).astype("<u2").tobytes()
    data = decode_forward_backward_request(msg.SerializeToString()).data[0]
    assert data.loss_fn_inputs["target_tokens"] == TensorData(data=[5, 2**31 - 1], dtype="int64")
    assert data.loss_fn_inputs["weights"] == TensorData(data=[1.5, -2.0], dtype="float32")
    assert data.model_input.to_ints() == [7]


# ---------------------------------------------------------------------------------------------------------------
# ForwardBackwardOutput
# ---------------------------------------------------------------------------------------------------------------


@SETTINGS
@given(fb_outputs())
def test_output_round_trip(out: ForwardBackwardOutput) -> None:
    assert decode_forward_backward_output(encode_forward_backward_output(out)) == out


@SETTINGS
@given(fb_outputs())
def test_output_decodes_with_official_sdk(out: ForwardBackwardOutput) -> None:
    theirs = response_conv.deserialize_forward_backward_output(encode_forward_backward_output(out))
    assert theirs.loss_fn_output_type == out.loss_fn_output_type
    assert theirs.metrics == out.metrics
    assert len(theirs.loss_fn_outputs) == len(out.loss_fn_outputs)
    for their_row, our_row in zip(theirs.loss_fn_outputs, out.loss_fn_outputs, strict=True):
        assert set(their_row) == set(our_row)
        for name, td in our_row.items():
            assert_same_tensor(their_row[name], td)


def test_output_layout_is_byte_offsets_and_trailing_shape() -> None:
    out = ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord",
        loss_fn_outputs=[
            {"logprobs": TensorData.from_numpy(np.array([-1.0, -2.0], dtype=np.float32))},
            {"logprobs": TensorData.from_numpy(np.array([-3.0], dtype=np.float32))},
            {"logprobs": TensorData.from_numpy(np.zeros((2, 3), dtype=np.float32))},
        ],
        metrics={"loss:sum": 6.0},
    )
    msg = pb.ForwardBackwardOutput.FromString(encode_forward_backward_output(out))
    assert [r.num_datums for r in msg.loss_fn_outputs] == [2, 1]  # the trailing shape changes at datum 2
    first = msg.loss_fn_outputs[0].fields["logprobs"]
    assert np.frombuffer(first.offsets, dtype="<i8").tolist() == [0, 8, 12]
    assert np.frombuffer(first.data, dtype="<f4").tolist() == [-1.0, -2.0, -3.0]
    assert list(msg.loss_fn_outputs[1].fields["logprobs"].trailing_shape) == [3]
    assert decode_forward_backward_output(msg.SerializeToString()) == out


def test_output_shapes_without_leading_dimension() -> None:
    out = ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord",
        loss_fn_outputs=[
            {"a": TensorData(data=[1.0, 2.0], dtype="float32"), "s": TensorData(data=[7], dtype="int64", shape=[])}
        ],
    )
    decoded = decode_forward_backward_output(encode_forward_backward_output(out))
    assert decoded.loss_fn_outputs == [
        {
            "a": TensorData(data=[1.0, 2.0], dtype="float32", shape=[2]),
            "s": TensorData(data=[7], dtype="int64", shape=[1]),
        }
    ]


def test_output_sparse_tensor_is_sent_dense() -> None:
    sparse = TensorData.sparse_from_numpy(np.array([[0.0, 2.0], [0.0, 0.0]], dtype=np.float32))
    out = ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=[{"x": sparse}])
    decoded = decode_forward_backward_output(encode_forward_backward_output(out))
    assert decoded.loss_fn_outputs == [{"x": TensorData(data=[0.0, 2.0, 0.0, 0.0], dtype="float32", shape=[2, 2])}]


def test_output_rejects_datums_with_different_fields() -> None:
    out = ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord",
        loss_fn_outputs=[
            {"a": TensorData(data=[1.0], dtype="float32")},
            {"b": TensorData(data=[1.0], dtype="float32")},
        ],
    )
    with pytest.raises(ValueError, match="same fields"):
        encode_forward_backward_output(out)


def _bf16(values: list[float]) -> bytes:
    return (np.array(values, dtype="<f4").view("<u4") >> 16).astype("<u2").tobytes()


def _batched(target: Any, data: bytes, offsets: list[int], dtype: int, trailing: list[int]) -> None:
    target.data = data
    target.offsets = np.array(offsets, dtype="<i8").tobytes()
    target.dtype = dtype
    target.trailing_shape.extend(trailing)


def _server_output(num_datums: tuple[int, int]) -> bytes:
    """A hand-built SDK message: BF16 and INT32 fields, two records, a module-qualified output type."""
    msg = sdk_pb.ForwardBackwardOutput(loss_fn_output_type="tinker.losses:TorchLossReturn")
    msg.metrics["loss:sum"] = 1.25
    r1 = msg.loss_fn_outputs.add(type_tag="x", num_datums=num_datums[0])
    _batched(r1.fields["logprobs"], _bf16([1.0, -0.5, 3.0]), [0, 4, 6], sdk_pb.DTYPE_BFLOAT16, [])
    _batched(r1.fields["ids"], np.array([1, 2, 3, 4], dtype="<i4").tobytes(), [0, 8, 16], sdk_pb.DTYPE_INT32, [2])
    r2 = msg.loss_fn_outputs.add(type_tag="x", num_datums=num_datums[1])
    _batched(r2.fields["logprobs"], np.array([9.0], dtype="<f4").tobytes(), [0, 4], sdk_pb.DTYPE_FLOAT32, [])
    _batched(r2.fields["ids"], np.array([5, 6, 7, 8], dtype="<i8").tobytes(), [0, 32], sdk_pb.DTYPE_INT64, [2])
    return msg.SerializeToString()


SERVER_OUTPUT = ForwardBackwardOutput(
    loss_fn_output_type="TorchLossReturn",
    loss_fn_outputs=[
        {
            "logprobs": TensorData(data=[1.0, -0.5], dtype="float32", shape=[2]),
            "ids": TensorData(data=[1, 2], dtype="int64", shape=[1, 2]),
        },
        {
            "logprobs": TensorData(data=[3.0], dtype="float32", shape=[1]),
            "ids": TensorData(data=[3, 4], dtype="int64", shape=[1, 2]),
        },
        {
            "logprobs": TensorData(data=[9.0], dtype="float32", shape=[1]),
            "ids": TensorData(data=[5, 6, 7, 8], dtype="int64", shape=[2, 2]),
        },
    ],
    metrics={"loss:sum": 1.25},
)


@pytest.mark.parametrize("num_datums", [(2, 1), (0, 0)], ids=["counted", "legacy-uncounted"])
def test_output_server_layouts_decode_like_official_sdk(num_datums: tuple[int, int]) -> None:
    body = _server_output(num_datums)
    ours = decode_forward_backward_output(body)
    assert ours == SERVER_OUTPUT
    theirs = response_conv.deserialize_forward_backward_output(body)
    assert theirs.loss_fn_output_type == ours.loss_fn_output_type
    assert theirs.metrics == ours.metrics
    for their_row, our_row in zip(theirs.loss_fn_outputs, ours.loss_fn_outputs, strict=True):
        assert set(their_row) == set(our_row)
        for name, td in our_row.items():
            assert_same_tensor(their_row[name], td)


def test_output_num_datums_zero_falls_back_per_record() -> None:
    # Only the second record leaves num_datums out: it still holds its one datum. (The SDK sums num_datums over
    # the records before falling back, so it would drop that datum; we read each record on its own.)
    assert decode_forward_backward_output(_server_output((2, 0))) == SERVER_OUTPUT


def test_output_record_without_fields_keeps_its_datums() -> None:
    msg = pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord")
    msg.loss_fn_outputs.add(num_datums=3)
    assert decode_forward_backward_output(msg.SerializeToString()).loss_fn_outputs == [{}, {}, {}]


def _broken_output(edit: str) -> bytes:
    msg = pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord")
    record = msg.loss_fn_outputs.add(num_datums=2)
    bt = record.fields["logprobs"]
    _batched(bt, np.zeros(3, dtype="<f4").tobytes(), [0, 4, 12], pb.DTYPE_FLOAT32, [])
    if edit == "count":
        record.num_datums = 3
    elif edit == "past_end":
        bt.offsets = np.array([0, 4, 16], dtype="<i8").tobytes()
    elif edit == "decreasing":
        bt.offsets = np.array([0, 8, 4], dtype="<i8").tobytes()
    elif edit == "unaligned":
        bt.offsets = np.array([0, 2, 12], dtype="<i8").tobytes()
    elif edit == "data_bytes":
        bt.data = b"\x00" * 11
    elif edit == "dtype":
        bt.dtype = pb.DTYPE_UNSPECIFIED
    elif edit == "trailing":
        bt.trailing_shape.append(2)
    elif edit == "negative":
        record.num_datums = -1
    return msg.SerializeToString()


@pytest.mark.parametrize(
    "edit", ["count", "past_end", "decreasing", "unaligned", "data_bytes", "dtype", "trailing", "negative"]
)
def test_output_bad_layouts_raise_response_validation_error(edit: str) -> None:
    body = _broken_output(edit)
    with pytest.raises(ResponseValidationError) as info:
        decode_forward_backward_output(body)
    assert info.value.field is not None
    assert info.value.field.startswith("$.loss_fn_outputs[0]")
    assert info.value.body == body


def test_output_unbroken_layout_is_valid() -> None:
    out = decode_forward_backward_output(_broken_output("none"))
    assert [row["logprobs"].shape for row in out.loss_fn_outputs] == [[1], [2]]


# ---------------------------------------------------------------------------------------------------------------
# SampleResponse
# ---------------------------------------------------------------------------------------------------------------


def with_ids(resp: SampleResponse, ids: list[str] | None) -> SampleResponse:
    seqs = [
        SampledSequence(
            stop_reason=s.stop_reason,
            tokens=s.tokens,
            sequence_id=ids[i] if ids is not None else None,
            logprobs=s.logprobs,
            topk_logprobs=s.topk_logprobs,
        )
        for i, s in enumerate(resp.sequences)
    ]
    return SampleResponse(
        sequences=seqs,
        prompt_logprobs=resp.prompt_logprobs,
        topk_prompt_logprobs=resp.topk_prompt_logprobs,
        target_prompt_logprobs=resp.target_prompt_logprobs,
        prompt_alt_tokens=resp.prompt_alt_tokens,
        prompt_cache_hit_tokens=resp.prompt_cache_hit_tokens,
    )


@SETTINGS
@given(sample_responses(), st.booleans())
def test_sample_round_trip(resp: SampleResponse, give_ids: bool) -> None:
    ids = [f"seq-{i}" for i in range(len(resp.sequences))] if give_ids else None
    assert decode_sample_response(encode_sample_response(resp), ids) == with_ids(resp, ids)


def _their_topk(value: Any) -> list[TopkEntry] | None:
    return None if value is None else [None if e is None else [(int(t), float(lp)) for t, lp in e] for e in value]


@SETTINGS
@given(sample_responses())
def test_sample_decodes_with_official_sdk(resp: SampleResponse) -> None:
    theirs = response_conv.deserialize_sample_response(encode_sample_response(resp))
    assert len(theirs.sequences) == len(resp.sequences)
    for their_seq, seq in zip(theirs.sequences, resp.sequences, strict=True):
        assert their_seq.stop_reason == seq.stop_reason
        assert their_seq.tokens == seq.tokens
        assert their_seq.logprobs == seq.logprobs
        assert _their_topk(their_seq.topk_logprobs) == seq.topk_logprobs
    assert theirs.prompt_logprobs == resp.prompt_logprobs
    assert _their_topk(theirs.topk_prompt_logprobs) == resp.topk_prompt_logprobs
    assert theirs.prompt_cache_hit_tokens == resp.prompt_cache_hit_tokens
    if resp.target_prompt_logprobs is None:
        assert theirs.target_prompt_logprobs is None
    else:
        assert_same_tensor(theirs.target_prompt_logprobs, resp.target_prompt_logprobs)
    their_alt = theirs.prompt_alt_tokens
    if resp.prompt_alt_tokens is None:
        assert their_alt is None
    else:
        assert their_alt is not None
        assert_same_tensor(their_alt.tokens, resp.prompt_alt_tokens.tokens)
        assert_same_tensor(their_alt.logprobs, resp.prompt_alt_tokens.logprobs)


def test_sample_wire_layout() -> None:
    resp = SampleResponse(
        sequences=[
            SampledSequence(stop_reason="length", tokens=[3, 4], topk_logprobs=[[(9, -0.5)], [(1, -1.0), (2, -2.0)]])
        ],
        prompt_logprobs=[None, -0.75],
        target_prompt_logprobs=TensorData(data=[1.0, 2.0, 3.0], dtype="float32"),  # no shape: written as [3]
    )
    msg = pb.SampleResponse.FromString(encode_sample_response(resp))
    assert msg.sequences[0].stop_reason == pb.STOP_REASON_LENGTH
    assert not msg.sequences[0].HasField("logprobs")
    topk = msg.sequences[0].topk_sampled_logprobs
    assert (topk.length, topk.k) == (2, 2)
    assert np.frombuffer(topk.token_ids, dtype="<i4").tolist() == [9, 0, 1, 2]
    assert np.frombuffer(topk.logprobs, dtype="<f4").tolist() == [-0.5, TOPK_PAD_LOGPROB, -1.0, -2.0]
    prompt = np.frombuffer(msg.prompt_logprobs, dtype="<f4")
    assert math.isnan(prompt[0]) and prompt[1] == -0.75
    assert list(msg.target_prompt_logprobs.shape) == [3]
    their_target = response_conv.deserialize_sample_response(msg.SerializeToString()).target_prompt_logprobs
    assert their_target is not None
    assert their_target.shape == [3]
    decoded = decode_sample_response(msg.SerializeToString())
    assert decoded.target_prompt_logprobs == TensorData(data=[1.0, 2.0, 3.0], dtype="float32", shape=[3])
    assert decoded.sequences[0].sequence_id is None


def test_sample_topk_rows_of_padding_read_as_none() -> None:
    resp = SampleResponse(sequences=[], topk_prompt_logprobs=[None, None])
    msg = pb.SampleResponse.FromString(encode_sample_response(resp))
    assert msg.topk_prompt_logprobs.k == 1
    assert decode_sample_response(msg.SerializeToString()).topk_prompt_logprobs == [None, None]


def test_sample_empty_arrays_read_as_not_requested() -> None:
    msg = pb.SampleResponse()
    seq = msg.sequences.add(tokens=np.array([1], dtype="<i4").tobytes())
    seq.logprobs = b""
    seq.topk_sampled_logprobs.k = 3  # length 0
    msg.prompt_logprobs = b""
    decoded = decode_sample_response(msg.SerializeToString(), ["s"])
    assert decoded.sequences == [SampledSequence(stop_reason="stop", tokens=[1], sequence_id="s")]
    assert decoded.prompt_logprobs is None


def test_sample_bf16_and_int32_tensors_widen() -> None:
    msg = sdk_pb.SampleResponse()
    alt = msg.prompt_alt_tokens
    alt.tokens.dtype = sdk_pb.DTYPE_INT32
    alt.tokens.dense = np.array([1, 2], dtype="<i4").tobytes()
    alt.tokens.shape.extend([1, 2])
    alt.logprobs.dtype = sdk_pb.DTYPE_BFLOAT16
    alt.logprobs.dense = _bf16([-0.5, -4.0])
    alt.logprobs.shape.extend([1, 2])
    decoded = decode_sample_response(msg.SerializeToString())
    assert decoded.prompt_alt_tokens == PromptAltTokens(
        tokens=TensorData(data=[1, 2], dtype="int64", shape=[1, 2]),
        logprobs=TensorData(data=[-0.5, -4.0], dtype="float32", shape=[1, 2]),
    )


def _broken_sample(edit: str) -> bytes:
    msg = pb.SampleResponse()
    seq = msg.sequences.add(tokens=np.array([1, 2], dtype="<i4").tobytes())
    if edit == "tokens":
        seq.tokens = b"\x00" * 7
    elif edit == "stop_reason":
        seq.stop_reason = 7  # type: ignore[assignment]  # an unknown enum value, kept by proto3
    elif edit == "topk":
        seq.topk_sampled_logprobs.length = 2
        seq.topk_sampled_logprobs.k = 2
        seq.topk_sampled_logprobs.token_ids = np.zeros(3, dtype="<i4").tobytes()
        seq.topk_sampled_logprobs.logprobs = np.zeros(4, dtype="<f4").tobytes()
    elif edit == "prompt_logprobs":
        msg.prompt_logprobs = b"\x00" * 5
    elif edit == "target":
        msg.target_prompt_logprobs.dtype = pb.DTYPE_FLOAT32
        msg.target_prompt_logprobs.dense = np.zeros(3, dtype="<f4").tobytes()
        msg.target_prompt_logprobs.shape.extend([2, 2])
    elif edit == "sparse":
        csr = msg.target_prompt_logprobs.sparse_csr
        msg.target_prompt_logprobs.dtype = pb.DTYPE_FLOAT32
        msg.target_prompt_logprobs.shape.extend([2, 2])
        csr.values = np.zeros(1, dtype="<f4").tobytes()
        csr.crow_indices = np.array([0, 1], dtype="<i8").tobytes()  # needs rows + 1 = 3 entries
        csr.col_indices = np.array([0], dtype="<i8").tobytes()
    return msg.SerializeToString()


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ("tokens", "$.sequences[0].tokens"),
        ("stop_reason", "$.sequences[0].stop_reason"),
        ("topk", "$.sequences[0].topk_sampled_logprobs"),
        ("prompt_logprobs", "$.prompt_logprobs"),
        ("target", "$.target_prompt_logprobs"),
        ("sparse", "$.target_prompt_logprobs"),
    ],
)
def test_sample_bad_bytes_raise_response_validation_error(edit: str, field: str) -> None:
    with pytest.raises(ResponseValidationError) as info:
        decode_sample_response(_broken_sample(edit))
    assert info.value.field == field


def test_sample_unbroken_is_valid() -> None:
    assert decode_sample_response(_broken_sample("none")).sequences[0].tokens == [1, 2]


def test_sample_sequence_ids_must_match_the_sequences() -> None:
    body = encode_sample_response(SampleResponse(sequences=[SampledSequence(stop_reason="stop", tokens=[1])]))
    with pytest.raises(ResponseValidationError, match="2 sample_sequence_ids"):
        decode_sample_response(body, ["a", "b"])


@pytest.mark.parametrize("body", [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x02\xc3\x28"])
def test_garbage_is_response_validation_error_not_decode_error(body: bytes) -> None:
    # A bad tag, a truncated field 1, and field 1 holding invalid UTF-8 (a string in ForwardBackwardOutput,
    # a SampledSequence with a bad tag in SampleResponse).
    with pytest.raises(ResponseValidationError, match="not a valid protobuf SampleResponse"):
        decode_sample_response(body)
    with pytest.raises(ResponseValidationError, match="not a valid protobuf ForwardBackwardOutput"):
        decode_forward_backward_output(body)


def test_sample_encoder_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="int32"):
        encode_sample_response(SampleResponse(sequences=[SampledSequence(stop_reason="stop", tokens=[2**40])]))
    with pytest.raises(ValueError, match="stop_reason"):
        encode_sample_response(SampleResponse(sequences=[SampledSequence(stop_reason="eos", tokens=[1])]))  # type: ignore[arg-type]


def test_content_type_and_descriptor_names() -> None:
    assert PROTOBUF_CONTENT_TYPE == "application/x-protobuf"
    assert pb.DESCRIPTOR.name != sdk_pb.DESCRIPTOR.name
    assert pb.DESCRIPTOR.package != sdk_pb.DESCRIPTOR.package
    # Same field numbers and types for every message both files define.
    for name, theirs in sdk_pb.DESCRIPTOR.message_types_by_name.items():
        if name in {"SamplingParams", "StopStrings", "StopTokens"}:
            continue  # defined by the SDK's file but never sent (protocol §5)
        ours = pb.DESCRIPTOR.message_types_by_name[name]
        assert _field_signature(ours) == _field_signature(theirs), name


def _field_signature(message: Any) -> dict[int, tuple[Any, ...]]:
    """Field number -> everything that decides the wire form and presence, nested types by name."""
    out: dict[int, tuple[Any, ...]] = {}
    for f in message.fields:
        nested = f.message_type or f.enum_type
        inner = _field_signature(f.message_type) if f.message_type is not None else None
        oneof = f.containing_oneof.name if f.containing_oneof is not None else None
        out[f.number] = (f.name, f.type, _is_repeated(f), f.has_presence, oneof, nested and nested.name, inner)
    return out


def _is_repeated(field: Any) -> bool:
    # ``is_repeated`` is new in protobuf 6.31 and ``label`` is gone in 7; the floor (5.26) only has ``label``.
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return bool(field.label == field.LABEL_REPEATED)


def test_output_record_without_fields_has_a_datum_cap() -> None:
    msg = pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord")
    msg.loss_fn_outputs.add(num_datums=2**40)
    with pytest.raises(ResponseValidationError, match="implausible") as info:
        decode_forward_backward_output(msg.SerializeToString())
    assert info.value.field == "$.loss_fn_outputs[0].num_datums"


def test_float32_overflow_becomes_infinity_without_a_warning() -> None:
    resp = SampleResponse(
        sequences=[SampledSequence(stop_reason="stop", tokens=[1], logprobs=[-1e300])],
        topk_prompt_logprobs=[[(1, -1e300)]],
    )
    decoded = decode_sample_response(encode_sample_response(resp))
    assert decoded.sequences[0].logprobs == [-math.inf]
    assert decoded.topk_prompt_logprobs == [[(1, -math.inf)]]


@pytest.mark.parametrize(
    ("entries", "message"),
    [([[(1, -0.5, 3)]], "pairs"), ([[("a", -0.5)]], "pairs"), ([[(2**31, -0.5)]], "int32"), ([[(1.5, -0.5)]], "int32")],
)
def test_sample_encoder_rejects_bad_topk_entries(entries: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_sample_response(SampleResponse(sequences=[], topk_prompt_logprobs=entries))


@given(
    st.lists(st.floats(allow_nan=False, width=64), max_size=50),
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=50),
)
def test_struct_fast_path_matches_numpy(floats: list[float], ints: list[int]) -> None:
    """The struct fast path packs exactly what numpy would, or declines (float32 overflow) and numpy decides."""
    packed_f = _arrays.packed("f", floats)
    with np.errstate(over="ignore"):
        expected_f = np.asarray(floats, dtype=np.float64).astype("<f4").tobytes()
    if packed_f is not None:
        assert packed_f == expected_f
    else:
        assert any(abs(x) > float(np.finfo(np.float32).max) for x in floats)
    assert _arrays.packed("q", ints) == np.asarray(ints, dtype="<i8").tobytes()
    assert _arrays.packed("q", [1.5]) is None
    assert _arrays.packed("f", [None]) is None


def test_request_bytes_are_those_of_one_serialized_message() -> None:
    # The request is serialized in parts (fields 1-2, each datum, fields 4-7): the bytes are those of the whole
    # message serialized at once (one-entry maps, so that map order cannot differ between the two).
    data = [
        Datum(
            model_input=ModelInput.from_ints(list(range(i, i + 300))),
            loss_fn_inputs={"target_tokens": TensorData(data=list(range(300)), dtype="int64", shape=None)},
        )
        for i in range(3)
    ]
    for config, forward_only in ((None, False), ({"clip": 0.5}, True)):
        body = encode_forward_backward_request("model-1", 7, data, "cross_entropy", config, forward_only)
        assert pb.ForwardBackwardRequest.FromString(body).SerializeToString() == body
