"""ModelInput, TensorData, Datum and friends: helpers, numpy conversion, encoding rules, hypothesis round trips."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinkex_trio.types as tt
from tinkex_trio.errors import RequestErrorCategory, ResponseValidationError


def wire(obj: Any) -> Any:
    return json.loads(tt.encode(obj))


# -- encoding rules --------------------------------------------------------------------------------------------


def test_none_fields_are_left_out_and_non_null_defaults_are_sent() -> None:
    body = wire(tt.SamplingParams())
    assert body == {"temperature": 1.0, "top_k": -1, "top_p": 1.0}
    body = wire(tt.SaveWeightsRequest(model_id="m", path="p", seq_id=3))
    assert body == {"type": "save_weights", "model_id": "m", "path": "p", "seq_id": 3, "overwrite": False}
    assert wire(tt.AdamParams()) == {
        "learning_rate": 1e-4,
        "beta1": 0.9,
        "beta2": 0.95,
        "eps": 1e-12,
        "weight_decay": 0.0,
        "grad_clip_norm": 0.0,
    }
    assert wire(tt.DimuonParams(learning_rate=0.5)) == {
        "type": "dimuon",
        "learning_rate": 0.5,
        "grad_clip_norm": 0.0,
        "beta1": 0.9,
    }
    # A default equal in value but given explicitly is sent as well.
    assert wire(tt.SamplingParams(temperature=1.0, max_tokens=None))["temperature"] == 1.0


def test_empty_container_defaults_are_sent() -> None:
    assert wire(tt.CreateSessionRequest(sdk_version="v")) == {
        "type": "create_session",
        "sdk_version": "v",
        "tags": [],
        "user_metadata": {},
    }
    assert wire(tt.FuturesRetrieveRequest(target=tt.SamplingSessionFuturesTarget(sampling_session_id="x"))) == {
        "target": {"type": "sampling_session", "sampling_session_id": "x", "cloned_sampler_id": 0},
        "prev_cursor": 0,
        "retrieved_request_ids": [],
    }


def test_container_defaults_are_not_shared_between_instances() -> None:
    a = tt.CreateSessionRequest(sdk_version="v")
    b = tt.CreateSessionRequest(sdk_version="v")
    a.tags.append("x")
    a.user_metadata["k"] = 1
    assert b.tags == [] and b.user_metadata == {}
    c = tt.CreateModelRequest(session_id="s", model_seq_id=0, base_model="m")
    d = tt.CreateModelRequest(session_id="s", model_seq_id=0, base_model="m")
    assert c.optimizer_config == d.optimizer_config and c.optimizer_config is not d.optimizer_config


def test_client_config_defaults_match_the_spec() -> None:
    cfg = tt.decode(tt.ClientConfigResponse, b"{}")
    assert msgspec.structs.asdict(cfg) == {
        "pjwt_auth_enabled": False,
        "credential_default_source": "api_key",
        "sample_dispatch_bytes_semaphore_size": 10 * 1024 * 1024,
        "inflight_response_bytes_semaphore_size": 50 * 1024 * 1024,
        "parallel_fwdbwd_chunks": True,
        "proto_compress_fwdbwd": False,
        "fwdbwd_max_chunk_len": 1024,
        "fwdbwd_max_chunk_bytes_count": 5_000_000,
        "fwdbwd_dispatch_bytes_semaphore_size": 50_000_000,
        "billing_exception_max_pause_duration_sec": 3600,
        "sample_no_retries": False,
        "sample_enable_stuck_detection": True,
        "sample_max_concurrent_requests": 2000,
        "use_pyqwest_transport": True,
        "sample_use_retrieve_futures": False,
        "custom_loss_server_side": False,
        "sample_join_sampling_session": False,
    }
    dyn = tt.decode(tt.ClientDynamicConfigResponse, b"{}")
    assert (dyn.refresh_interval_sec, dyn.sample_cancel_enabled, dyn.sample_cancel_max_batch_size) == (300, False, 64)


def test_lora_and_optimizer_defaults() -> None:
    assert wire(tt.LoraConfig(rank=4)) == {"rank": 4, "train_unembed": True, "train_mlp": True, "train_attn": True}
    assert wire(tt.DimuonOptimizerConfig()) == {"type": "dimuon", "version": 1}
    assert wire(tt.AdamOptimizerConfig()) == {"type": "adamw"}


def test_request_type_tags_are_sent() -> None:
    tags: list[tuple[Any, str]] = [
        (tt.CreateModelRequest(session_id="s", model_seq_id=0, base_model="m"), "create_model"),
        (tt.GetInfoRequest(model_id="m"), "get_info"),
        (tt.OptimStepRequest(model_id="m", adam_params=tt.AdamParams()), "optim_step"),
        (tt.SaveWeightsForSamplerRequest(model_id="m"), "save_weights_for_sampler"),
        (tt.SaveWeightsExternalRequest(model_id="m", path="p"), "save_weights_external"),
        (tt.LoadWeightsRequest(model_id="m", path="p", optimizer=False), "load_weights"),
        (tt.CreateSamplingSessionRequest(session_id="s", sampling_session_seq_id=0), "create_sampling_session"),
        (tt.JoinSamplingSessionRequest(sampling_session_id="x"), "join_sampling_session"),
        (tt.SessionHeartbeatRequest(session_id="s"), "session_heartbeat"),
        (tt.SampleRequest(prompt=tt.ModelInput.empty(), sampling_params=tt.SamplingParams()), "sample"),
        (tt.UnloadModelRequest(model_id="m"), "unload_model"),
    ]
    for request, tag in tags:
        assert wire(request)["type"] == tag


# -- codec ----------------------------------------------------------------------------------------------------


def test_decoders_are_built_once_per_type() -> None:
    assert tt.decoder_for(tt.SampleResponse) is tt.decoder_for(tt.SampleResponse)
    assert tt.decoder_for(list[tt.Datum]) is tt.decoder_for(list[tt.Datum])
    assert tt.decoder_for(tt.SampleResponse) is not tt.decoder_for(tt.ForwardBackwardOutput)


def test_decode_accepts_str_bytearray_memoryview() -> None:
    raw = b'{"request_id": "r"}'
    for data in (raw, raw.decode(), bytearray(raw), memoryview(raw)):
        assert tt.decode(tt.UntypedAPIFuture, data).request_id == "r"


def test_decode_union_and_containers() -> None:
    events = tt.decode(
        list[tt.TelemetryEvent],
        b'[{"event": "SESSION_END", "event_id": "e", "event_session_index": 1, "severity": "INFO",'
        b' "timestamp": "2025-01-01T00:00:00Z", "duration": "0:00:01"},'
        b' {"event": "GENERIC_EVENT", "event_id": "f", "event_session_index": 2, "severity": "DEBUG",'
        b' "timestamp": "2025-01-01T00:00:01+00:00", "event_name": "user_error"}]',
    )
    assert isinstance(events[0], tt.SessionEndEvent) and events[0].duration == "0:00:01"
    assert isinstance(events[1], tt.GenericEvent) and events[1].event_data == {}
    assert [e.event for e in events] == ["SESSION_END", "GENERIC_EVENT"]
    assert events[1].timestamp == datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC)


def test_decode_any_and_errors() -> None:
    assert tt.decode_any(b'{"a": [1, 2.5, null]}') == {"a": [1, 2.5, None]}
    with pytest.raises(ResponseValidationError) as info:
        tt.decode_any(b"{oops")
    assert info.value.field is None
    assert "not valid JSON" in info.value.message


def test_validation_error_is_never_a_raw_msgspec_error() -> None:
    with pytest.raises(ResponseValidationError) as info:
        tt.decode(tt.SampleResponse, b'{"sequences": [{"stop_reason": "stop", "tokens": "abc"}]}')
    assert not isinstance(info.value, msgspec.MsgspecError)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_aliases() -> None:
    assert tt.encode_json is tt.encode and tt.decode_json is tt.decode


def test_to_builtins_follows_the_same_rules() -> None:
    req = tt.SampleRequest(prompt=tt.ModelInput.from_ints([1]), sampling_params=tt.SamplingParams(seed=1))
    assert tt.to_builtins(req) == wire(req)


# -- future replies ---------------------------------------------------------------------------------------------


def test_parse_future_reply_classifies_in_the_sdk_order() -> None:
    try_again = tt.parse_future_reply(
        b'{"type": "try_again", "request_id": "r", "queue_state": "paused_capacity", "error": "x"}',
        tt.OptimStepResponse,
    )
    assert isinstance(try_again, tt.TryAgainResponse) and try_again.queue_state == "paused_capacity"
    meta = tt.parse_future_reply(
        b'{"status": "complete_metadata", "response_payload_size": 99, "error": "x"}', tt.SaveWeightsResponse
    )
    assert isinstance(meta, tt.FutureCompleteMetadata) and meta.response_payload_size == 99
    failed = tt.parse_future_reply(b'{"error": "out of memory", "category": "server"}', tt.SaveWeightsResponse)
    assert isinstance(failed, tt.RequestFailedResponse)
    assert (failed.error, failed.category) == ("out of memory", RequestErrorCategory.SERVER)
    ok = tt.parse_future_reply(b'{"path": "tinker://m/weights/a"}', tt.SaveWeightsResponse)
    assert isinstance(ok, tt.SaveWeightsResponse) and ok.path == "tinker://m/weights/a"


@pytest.mark.parametrize("category", ['"galactic"', "null", "3"])
def test_parse_future_reply_unknown_category_is_unknown(category: str) -> None:
    failed = tt.parse_future_reply(f'{{"error": "e", "category": {category}}}'.encode(), tt.OptimStepResponse)
    assert isinstance(failed, tt.RequestFailedResponse) and failed.category is RequestErrorCategory.UNKNOWN
    failed = tt.parse_future_reply(b'{"error": "e"}', tt.OptimStepResponse)
    assert isinstance(failed, tt.RequestFailedResponse) and failed.category is RequestErrorCategory.UNKNOWN


def test_parse_future_reply_errors() -> None:
    with pytest.raises(ResponseValidationError) as info:
        tt.parse_future_reply(b'{"path": 3}', tt.SaveWeightsResponse, request_id="r7")
    assert info.value.field == "$.path" and info.value.request_id == "r7"
    with pytest.raises(ResponseValidationError) as info:
        tt.parse_future_reply(b'{"type": "try_again", "request_id": "r"}', tt.SaveWeightsResponse)
    assert info.value.field == "$.queue_state"
    with pytest.raises(ResponseValidationError) as info:
        tt.parse_future_reply(b'{"error": 5}', tt.SaveWeightsResponse)
    assert info.value.field == "$.error"
    with pytest.raises(ResponseValidationError):
        tt.parse_future_reply(b"[1]", tt.SaveWeightsResponse)
    with pytest.raises(ResponseValidationError):
        tt.parse_future_reply(b"{", tt.SaveWeightsResponse)


# -- ModelInput ----------------------------------------------------------------------------------------------


def test_model_input_helpers() -> None:
    mi = tt.ModelInput.from_ints([1, 2, 3])
    assert mi.to_ints() == [1, 2, 3] and mi.length == 3
    assert wire(mi) == {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3]}]}
    assert tt.ModelInput.from_ints(np.array([4, 5], dtype=np.int32)).to_ints() == [4, 5]
    assert mi.append_int(4).to_ints() == [1, 2, 3, 4] and len(mi.append_int(4).chunks) == 1
    assert mi.to_ints() == [1, 2, 3]  # unchanged
    assert tt.ModelInput.empty().length == 0 and tt.ModelInput.empty().to_ints() == []
    assert tt.ModelInput.empty().append_int(9).to_ints() == [9]
    with pytest.raises(TypeError):
        tt.ModelInput.from_ints([1.5])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        tt.ModelInput.from_ints(np.array([1.0, 2.0]))  # pyright: ignore[reportArgumentType]


def test_model_input_with_images_and_audio() -> None:
    # A TensorContainer header: dtype byte 1, ndim 2, dims 300 (varint 0xac 0x02) and 80.
    dmel = bytes([1, 2, 0xAC, 0x02, 80]) + b"payload"
    mi = tt.ModelInput(
        chunks=[
            tt.EncodedTextChunk(tokens=[1, 2]),
            tt.ImageChunk(data=b"\x89PNG\r\n", format="png", expected_tokens=10),
            tt.ImageAssetPointerChunk(format="jpeg", location="s3://b/k", expected_tokens=5),
            tt.DmelChunk(dmel=dmel),
        ]
    )
    assert mi.length == 2 + 10 + 5 + 300
    body = wire(mi)
    assert body["chunks"][1] == {
        "type": "image",
        "data": base64.b64encode(b"\x89PNG\r\n").decode(),
        "format": "png",
        "expected_tokens": 10,
    }
    assert body["chunks"][3] == {"type": "dmel", "dmel": base64.b64encode(dmel).decode()}
    assert tt.decode(tt.ModelInput, tt.encode(mi)) == mi
    with pytest.raises(ValueError, match="text chunks"):
        mi.to_ints()
    assert mi.append(tt.EncodedTextChunk(tokens=[7])).length == mi.length + 1
    assert tt.DmelChunk(dmel=bytes([254, 0, 1, 7])).length == 7  # constant-tensor marker


def test_chunk_lengths_need_their_facts() -> None:
    with pytest.raises(ValueError, match="expected_tokens"):
        _ = tt.ImageChunk(data=b"x", format="png").length
    with pytest.raises(ValueError, match="expected_tokens"):
        _ = tt.ImageAssetPointerChunk(format="png", location="x").length
    for bad in (b"", bytes([9, 1, 1]), bytes([1, 2, 5]), bytes([1, 0])):
        with pytest.raises(ValueError):
            _ = tt.DmelChunk(dmel=bad).length


def test_unknown_chunk_type_is_rejected() -> None:
    with pytest.raises(ResponseValidationError) as info:
        tt.decode(tt.ModelInput, b'{"chunks": [{"type": "video", "tokens": [1]}]}')
    assert info.value.field == "$.chunks[0].type"


# -- TensorData ---------------------------------------------------------------------------------------------


def test_tensor_from_numpy_dtypes() -> None:
    assert tt.TensorData.from_numpy(np.array([1.5, 2.5], dtype=np.float64)).dtype == "float32"
    assert tt.TensorData.from_numpy(np.array([1, 2], dtype=np.int16)).dtype == "int64"
    assert tt.TensorData.from_numpy(np.array([1, 2], dtype=np.uint8)).dtype == "int64"
    assert tt.TensorData.from_numpy(np.array([True, False])).data == [1, 0]
    td = tt.TensorData.from_numpy(np.arange(6, dtype=np.int32).reshape(2, 3))
    assert (td.dtype, td.shape, td.data) == ("int64", [2, 3], [0, 1, 2, 3, 4, 5])
    with pytest.raises(TypeError):
        tt.TensorData.from_numpy(np.array(["a"]))
    with pytest.raises(TypeError):
        tt.TensorData.from_numpy(np.array([1 + 2j]))
    with pytest.raises(ValueError, match="non-integral"):
        tt.TensorData.from_numpy(np.array([1.5]), "int64")
    assert tt.TensorData.from_numpy(np.array([2.0, 3.0]), "int64").data == [2, 3]
    assert tt.TensorData.from_list([1, 2], "float32").data == [1.0, 2.0]


def test_tensor_to_numpy_respects_dtype_and_shape() -> None:
    arr = tt.TensorData(data=[1, 2, 3, 4, 5, 6], dtype="float32", shape=[3, 2]).to_numpy()
    assert arr.dtype == np.float32 and arr.shape == (3, 2) and arr[2, 1] == 6
    flat = tt.TensorData(data=[1, 2], dtype="int64").to_numpy()
    assert flat.dtype == np.int64 and flat.shape == (2,)
    assert tt.TensorData(data=[], dtype="int64", shape=[0, 3]).to_numpy().shape == (0, 3)
    assert tt.TensorData(data=[1.0, 2.0], dtype="int64").to_numpy().tolist() == [1, 2]
    with pytest.raises(ValueError, match="non-integer"):
        tt.TensorData(data=[1.5], dtype="int64").to_numpy()
    assert tt.TensorData(data=[1, 2, 3, 4], dtype="int64", shape=[2, 2]).tolist() == [[1, 2], [3, 4]]


def test_sparse_tensor_round_trip_and_padding() -> None:
    dense = np.array([[0, 5, 0], [0, 0, 0], [7, 0, 8]], dtype=np.int64)
    sparse = tt.TensorData.sparse_from_numpy(dense)
    assert sparse.is_sparse
    assert (sparse.data, sparse.sparse_crow_indices, sparse.sparse_col_indices) == ([5, 7, 8], [0, 1, 1, 3], [1, 0, 2])
    np.testing.assert_array_equal(sparse.to_numpy(), dense)
    padded = sparse.to_numpy(pad_value=-1)
    assert padded.tolist() == [[-1, 5, -1], [-1, -1, -1], [7, -1, 8]]
    as_minus_one = tt.TensorData.sparse_from_numpy(padded, pad_value=-1)
    np.testing.assert_array_equal(as_minus_one.to_numpy(pad_value=-1), padded)
    assert sparse.to_dense().is_sparse is False and sparse.to_dense().to_numpy().tolist() == dense.tolist()
    assert sparse.numel == 9
    with pytest.raises(ValueError, match="2-D"):
        tt.TensorData.sparse_from_numpy(np.zeros(3))


@pytest.mark.parametrize(
    "fields",
    [
        {"data": [1], "dtype": "int64", "shape": [2]},
        {"data": [1], "dtype": "int64", "shape": [1, 1], "sparse_crow_indices": [0, 1]},
        {"data": [1], "dtype": "int64", "sparse_crow_indices": [0, 1], "sparse_col_indices": [0]},
        {"data": [1], "dtype": "int64", "shape": [2, 2], "sparse_crow_indices": [0, 1], "sparse_col_indices": [0]},
        {"data": [1], "dtype": "int64", "shape": [1, 2], "sparse_crow_indices": [0, 1], "sparse_col_indices": []},
    ],
)
def test_inconsistent_tensor_is_rejected_at_construction(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        tt.TensorData(**fields)
    with pytest.raises(ResponseValidationError):
        tt.decode(tt.TensorData, json.dumps(fields))


@pytest.mark.parametrize(
    ("crow", "cols"),
    [([0, 2, 1], [0, 1]), ([1, 1, 2], [0, 1]), ([0, 1, 2], [0, 5]), ([0, 1, 2], [-1, 0]), ([0, 1, 3], [0, 1])],
)
def test_bad_csr_indices_fail_in_to_numpy(crow: list[int], cols: list[int]) -> None:
    td = tt.TensorData(data=[1, 2], dtype="int64", shape=[2, 2], sparse_crow_indices=crow, sparse_col_indices=cols)
    with pytest.raises(ValueError):
        td.to_numpy()


# -- Datum -------------------------------------------------------------------------------------------------


def test_datum_helper_converts_lists_and_arrays_by_key() -> None:
    d = tt.datum(
        [1, 2, 3],
        target_tokens=[2, 3, 4],
        weights=[1, 1, 0],
        advantages=np.array([0.5, -0.5, 0.0]),
        logprobs=[-1, -2, -3],
        mask=[True, False, True],
        custom_f=[0.25],
    )
    dtypes = {k: v.dtype for k, v in d.loss_fn_inputs.items()}
    assert dtypes == {
        "target_tokens": "int64",
        "weights": "float32",
        "advantages": "float32",
        "logprobs": "float32",
        "mask": "int64",
        "custom_f": "float32",
    }
    assert d.model_input.to_ints() == [1, 2, 3]
    assert d.loss_fn_inputs["weights"].data == [1.0, 1.0, 0.0]
    assert all(isinstance(x, float) for x in d.loss_fn_inputs["weights"].data)
    assert all(isinstance(x, int) for x in d.loss_fn_inputs["target_tokens"].data)
    assert d.loss_fn_inputs["advantages"].to_numpy().dtype == np.float32


def test_datum_from_tokens() -> None:
    d = tt.Datum.from_tokens(np.array([5, 6]), target_tokens=np.array([6, 7]), weights=np.ones(2))
    assert wire(d) == {
        "model_input": {"chunks": [{"type": "encoded_text", "tokens": [5, 6]}]},
        "loss_fn_inputs": {
            "target_tokens": {"data": [6, 7], "dtype": "int64", "shape": [2]},
            "weights": {"data": [1.0, 1.0], "dtype": "float32", "shape": [2]},
        },
    }
    td = tt.TensorData.from_list([6, 7])
    d2 = tt.Datum.from_tokens(tt.ModelInput.from_ints([5, 6]), target_tokens=td, advantages=[1.0, 2.0])
    assert d2.loss_fn_inputs["target_tokens"] is td and set(d2.loss_fn_inputs) == {"target_tokens", "advantages"}
    with pytest.raises(ValueError, match="non-integral"):
        tt.Datum.from_tokens([1], target_tokens=[1.5])
    with pytest.raises(ValueError, match="rectangular"):
        tt.datum([1], target_tokens=[[1, 2], [3]])
    with pytest.raises(TypeError):
        tt.datum([1], target_tokens=["a"])


def test_datum_provenance() -> None:
    d = tt.datum([1, 2, 3], target_tokens=[2, 3, 4])
    spans_in = [tt.ProvenanceSpan.prompt("q1", 2), tt.ProvenanceSpan.sampled("q1", 1, offset=0)]
    spans_out = [tt.ProvenanceSpan.prompt("q1", 1, offset=1), tt.ProvenanceSpan.sampled("q1", 2)]
    p = d.with_provenance(spans_in, spans_out)
    body = wire(p)
    assert body["model_input_spans"] == [
        {"prompt_tokens": {"sequence_id": "q1", "length": 2, "offset": 0}},
        {"sampled_tokens": {"sequence_id": "q1", "length": 1, "offset": 0}},
    ]
    assert tt.decode(tt.Datum, tt.encode(p)) == p
    with pytest.raises(ValueError, match="cover"):
        d.with_provenance(spans_in[:1], spans_out)
    with pytest.raises(ValueError, match="cover"):
        d.with_provenance(spans_in, spans_out[:1])
    with pytest.raises(ValueError, match="pair"):
        tt.Datum(model_input=d.model_input, model_input_spans=spans_in)
    with pytest.raises(ValueError, match="exactly one"):
        tt.ProvenanceSpan()


# -- other helpers ----------------------------------------------------------------------------------------


def test_sampling_params_stop_kinds() -> None:
    assert wire(tt.SamplingParams(stop="\n"))["stop"] == "\n"
    assert wire(tt.SamplingParams(stop=[1, 2]))["stop"] == [1, 2]
    assert wire(tt.SamplingParams(stop=[]))["stop"] == []
    assert "stop" not in wire(tt.SamplingParams())
    with pytest.raises(ValueError, match="mix"):
        tt.SamplingParams(stop=["a", 1])
    with pytest.raises(ResponseValidationError) as info:
        tt.decode(tt.SamplingParams, b'{"stop": ["a", 1]}')
    assert info.value.field == "$"


def test_dimuon_params_bounds() -> None:
    with pytest.raises(ValueError):
        tt.DimuonParams(learning_rate=-1.0)
    with pytest.raises(ValueError):
        tt.DimuonParams(learning_rate=1.0, beta1=1.0)
    with pytest.raises(ValueError):
        tt.DimuonParams(learning_rate=float("nan"))


def test_load_weights_addressing() -> None:
    assert not tt.LoadWeightsRequest(model_id="m", seq_id=1, path="p", optimizer=True).is_create_via_load
    assert tt.LoadWeightsRequest(session_id="s", model_seq_id=1, path="p", optimizer=True).is_create_via_load
    with pytest.raises(ValueError):
        tt.LoadWeightsRequest(path="p", optimizer=True)
    with pytest.raises(ValueError):
        tt.LoadWeightsRequest(model_id="m", session_id="s", path="p", optimizer=True)


def test_tinker_path() -> None:
    p = tt.TinkerPath.parse("tinker://s1:train:0/sampler_weights/step-10")
    assert (p.model_id, p.checkpoint_type, p.name, p.checkpoint_id) == (
        "s1:train:0",
        "sampler",
        "step-10",
        "sampler_weights/step-10",
    )
    assert str(p) == "tinker://s1:train:0/sampler_weights/step-10"
    assert str(tt.TinkerPath(model_id="m", checkpoint_type="external", name="e")) == "tinker://m/external_weights/e"
    for bad in ("http://x/weights/a", "tinker://m/other/a", "tinker://m/weights", "tinker:///weights/a"):
        with pytest.raises(ValueError):
            tt.TinkerPath.parse(bad)


def test_public_names_are_all_exported() -> None:
    assert len(tt.__all__) == len(set(tt.__all__))
    for name in tt.__all__:
        assert hasattr(tt, name), name
    assert tt.RequestErrorCategory is RequestErrorCategory


# -- hypothesis round trips ----------------------------------------------------------------------------------

int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)
float32s = st.floats(width=32, allow_nan=False, allow_infinity=False)

text_chunks = st.builds(tt.EncodedTextChunk, tokens=st.lists(st.integers(0, 2**31 - 1), max_size=20))
image_chunks = st.builds(
    tt.ImageChunk,
    data=st.binary(max_size=32),
    format=st.sampled_from(["png", "jpeg"]),
    expected_tokens=st.none() | st.integers(0, 1000),
)
pointer_chunks = st.builds(
    tt.ImageAssetPointerChunk,
    format=st.sampled_from(["png", "jpeg"]),
    location=st.text(max_size=20),
    expected_tokens=st.none() | st.integers(0, 1000),
)
dmel_chunks = st.builds(tt.DmelChunk, dmel=st.binary(max_size=32))
model_inputs = st.builds(
    tt.ModelInput, chunks=st.lists(st.one_of(text_chunks, image_chunks, pointer_chunks, dmel_chunks), max_size=6)
)

shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5)
dense_arrays = st.one_of(
    hnp.arrays(np.float32, shapes, elements=float32s),
    hnp.arrays(np.int64, shapes, elements=int64s),
)
matrices = st.one_of(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=6), elements=float32s),
    hnp.arrays(
        np.int64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=6),
        elements=st.sampled_from([0, 0, 0, -1, 1, 2**40]),
    ),
)


@given(model_inputs)
def test_model_input_round_trip(mi: tt.ModelInput) -> None:
    assert tt.decode(tt.ModelInput, tt.encode(mi)) == mi
    assert tt.convert(tt.ModelInput, json.loads(tt.encode(mi))) == mi


@given(st.lists(st.integers(0, 2**31 - 1), max_size=50))
def test_model_input_from_ints_round_trip(tokens: list[int]) -> None:
    mi = tt.ModelInput.from_ints(tokens)
    assert mi.to_ints() == tokens and mi.length == len(tokens)
    assert tt.decode(tt.ModelInput, tt.encode(mi)).to_ints() == tokens


@given(dense_arrays)
def test_dense_tensor_round_trip(arr: np.ndarray[Any, Any]) -> None:
    td = tt.TensorData.from_numpy(arr)
    back = tt.decode(tt.TensorData, tt.encode(td))
    assert back == td
    out = back.to_numpy()
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


@given(matrices, st.sampled_from([0, -1]))
def test_sparse_tensor_round_trip(arr: np.ndarray[Any, Any], pad: int) -> None:
    td = tt.TensorData.sparse_from_numpy(arr, pad_value=pad)
    assert td.sparse_crow_indices is not None and len(td.sparse_crow_indices) == arr.shape[0] + 1
    assert len(td.data) == int(np.count_nonzero(arr != pad))
    back = tt.decode(tt.TensorData, tt.encode(td))
    assert back == td
    out = back.to_numpy(pad_value=pad)
    assert out.dtype == arr.dtype
    np.testing.assert_array_equal(out, arr)


@settings(max_examples=50)
@given(
    model_inputs,
    st.dictionaries(st.sampled_from(["target_tokens", "weights", "advantages", "logprobs", "x"]), dense_arrays),
    st.booleans(),
)
def test_datum_round_trip(mi: tt.ModelInput, inputs: dict[str, np.ndarray[Any, Any]], spans: bool) -> None:
    assume("target_tokens" not in inputs or not bool(np.any(inputs["target_tokens"] < 0)))  # token ids are >= 0
    loss_fn_inputs = {k: tt.TensorData.from_numpy(v) for k, v in inputs.items()}
    prov = [tt.ProvenanceSpan.prompt("q", 1)] if spans else None
    d = tt.Datum(model_input=mi, loss_fn_inputs=loss_fn_inputs, model_input_spans=prov, loss_fn_input_spans=prov)
    back = tt.decode(tt.Datum, tt.encode(d))
    assert back == d
    for key, arr in inputs.items():
        np.testing.assert_array_equal(back.loss_fn_inputs[key].to_numpy(), arr)


@settings(max_examples=25)
@given(st.lists(st.tuples(st.lists(st.integers(0, 1000), max_size=8), st.lists(float32s, max_size=8)), max_size=4))
def test_datum_helper_round_trip(rows: list[tuple[list[int], list[float]]]) -> None:
    data = [tt.datum(tokens, target_tokens=tokens, weights=[1.0] * len(tokens), logprobs=lps) for tokens, lps in rows]
    fbi = tt.ForwardBackwardInput(data=data, loss_fn="importance_sampling")
    back = tt.decode(
        tt.ForwardBackwardRequest, tt.encode(tt.ForwardBackwardRequest(forward_backward_input=fbi, model_id="m"))
    )
    assert back.forward_backward_input == fbi and back.seq_id is None and back.forward_only is None
