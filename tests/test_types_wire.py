"""Our request bodies against the official SDK's, field for field.

For every JSON request the SDK sends, the SDK's own model is serialised the way the SDK does it
(``model_dump(exclude_unset=False, exclude_none=True, mode="json")``), and compared with what our Struct
encodes; then the SDK's body is decoded with our type (as the simulator does) and must give back our object.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from tinker import types as sdk
from tinker._compat import model_dump
from tinker.types._pydantic_types.tensor_data import TensorData as SdkTensorData
from tinker.types.futures_retrieve_request import SamplingSessionFuturesTarget as SdkFuturesTarget
from tinker.types.generic_event import GenericEvent as SdkGenericEvent

import tinkex_trio.types as tt


def sdk_body(request: Any) -> Any:
    """What the SDK puts on the wire for ``request``."""
    return model_dump(request, exclude_unset=False, exclude_none=True, mode="json")


def our_body(request: Any) -> Any:
    return msgspec.json.decode(tt.encode(request))


NOW = datetime(2025, 3, 1, 12, 30, 15, 250000, tzinfo=UTC)

CASES: list[tuple[str, Any, Any]] = [
    ("client_config", sdk.ClientConfigRequest(sdk_version="0.38.0"), tt.ClientConfigRequest(sdk_version="0.38.0")),
    (
        "create_session",
        sdk.CreateSessionRequest(tags=["a", "b"], user_metadata={"k": "v"}, sdk_version="0.38.0"),
        tt.CreateSessionRequest(tags=["a", "b"], user_metadata={"k": "v"}, sdk_version="0.38.0"),
    ),
    (
        "create_session_full",
        sdk.CreateSessionRequest(tags=[], user_metadata={}, sdk_version="0.38.0", project_id="p1", display_name="run"),
        tt.CreateSessionRequest(sdk_version="0.38.0", project_id="p1", display_name="run"),
    ),
    ("heartbeat", sdk.SessionHeartbeatRequest(session_id="s1"), tt.SessionHeartbeatRequest(session_id="s1")),
    (
        "create_model_lora_adam",
        sdk.CreateModelRequest(
            session_id="s1", model_seq_id=0, base_model="Qwen/Qwen3-8B", lora_config=sdk.LoraConfig(rank=32)
        ),
        tt.CreateModelRequest(
            session_id="s1", model_seq_id=0, base_model="Qwen/Qwen3-8B", lora_config=tt.LoraConfig(rank=32)
        ),
    ),
    (
        "create_model_dimuon",
        sdk.CreateModelRequest(
            session_id="s1",
            model_seq_id=3,
            base_model="m",
            user_metadata={"x": 1},
            lora_config=sdk.LoraConfig(rank=8, seed=7, train_mlp=False),
            optimizer_config=sdk.DimuonOptimizerConfig(),
        ),
        tt.CreateModelRequest(
            session_id="s1",
            model_seq_id=3,
            base_model="m",
            user_metadata={"x": 1},
            lora_config=tt.LoraConfig(rank=8, seed=7, train_mlp=False),
            optimizer_config=tt.DimuonOptimizerConfig(),
        ),
    ),
    ("get_info", sdk.GetInfoRequest(model_id="s1:train:0"), tt.GetInfoRequest(model_id="s1:train:0")),
    (
        "optim_step_adam",
        sdk.OptimStepRequest(adam_params=sdk.AdamParams(learning_rate=3e-4), model_id="m", seq_id=2),
        tt.OptimStepRequest(adam_params=tt.AdamParams(learning_rate=3e-4), model_id="m", seq_id=2),
    ),
    (
        "optim_step_dimuon",
        sdk.OptimStepRequest(optimizer_params=sdk.DimuonParams(learning_rate=0.02), model_id="m", seq_id=5),
        tt.OptimStepRequest(optimizer_params=tt.DimuonParams(learning_rate=0.02), model_id="m", seq_id=5),
    ),
    (
        "save_weights",
        sdk.SaveWeightsRequest(model_id="m", path="ckpt-1", seq_id=4, ttl_seconds=3600, user_metadata={"a": "b"}),
        tt.SaveWeightsRequest(model_id="m", path="ckpt-1", seq_id=4, ttl_seconds=3600, user_metadata={"a": "b"}),
    ),
    (
        "save_weights_for_sampler_named",
        sdk.SaveWeightsForSamplerRequest(model_id="m", path="s1", seq_id=6),
        tt.SaveWeightsForSamplerRequest(model_id="m", path="s1", seq_id=6),
    ),
    (
        "save_weights_for_sampler_ephemeral",
        sdk.SaveWeightsForSamplerRequest(model_id="m", seq_id=7, sampling_session_seq_id=2, kind="inflight"),
        tt.SaveWeightsForSamplerRequest(model_id="m", seq_id=7, sampling_session_seq_id=2, kind="inflight"),
    ),
    (
        "save_weights_external",
        sdk.SaveWeightsExternalRequest(model_id="m", path="ext", seq_id=8, age_encryption_recipients=["age1x"]),
        tt.SaveWeightsExternalRequest(model_id="m", path="ext", seq_id=8, age_encryption_recipients=["age1x"]),
    ),
    (
        "load_weights_in_place",
        sdk.LoadWeightsRequest(model_id="m", seq_id=1, path="tinker://m/weights/a", optimizer=True),
        tt.LoadWeightsRequest(model_id="m", seq_id=1, path="tinker://m/weights/a", optimizer=True),
    ),
    (
        "load_weights_create",
        sdk.LoadWeightsRequest(
            session_id="s1",
            model_seq_id=1,
            path="tinker://m/weights/a",
            optimizer=False,
            base_model="b",
            optimizer_config=sdk.AdamOptimizerConfig(),
            weights_access_token="tok",
        ),
        tt.LoadWeightsRequest(
            session_id="s1",
            model_seq_id=1,
            path="tinker://m/weights/a",
            optimizer=False,
            base_model="b",
            optimizer_config=tt.AdamOptimizerConfig(),
            weights_access_token="tok",
        ),
    ),
    (
        "create_custom_loss",
        sdk.CreateCustomLossRequest(
            session_id="s1",
            custom_loss_seq_id=0,
            name="my_loss",
            inputs=[sdk.CustomLossInput(name="logprobs", rank=1)],
            graph=sdk.CustomLossGraph(
                nodes=[
                    sdk.CustomLossNode(op="placeholder", name="logprobs", target="logprobs"),
                    sdk.CustomLossNode(
                        op="call_function", name="neg", target="operator.neg", args=[{"ref": "logprobs"}]
                    ),
                    sdk.CustomLossNode(op="output", name="output", target="output", args=[{"ref": "neg"}]),
                ]
            ),
        ),
        tt.CreateCustomLossRequest(
            session_id="s1",
            custom_loss_seq_id=0,
            name="my_loss",
            inputs=[tt.CustomLossInput(name="logprobs", rank=1)],
            graph=tt.CustomLossGraph(
                nodes=[
                    tt.CustomLossNode(op="placeholder", name="logprobs", target="logprobs"),
                    tt.CustomLossNode(
                        op="call_function", name="neg", target="operator.neg", args=[{"ref": "logprobs"}]
                    ),
                    tt.CustomLossNode(op="output", name="output", target="output", args=[{"ref": "neg"}]),
                ]
            ),
        ),
    ),
    (
        "copy_weights",
        sdk.CopyWeightsRequest(source_path="tinker://m/weights/a", session_id="s1", model_seq_id=2),
        tt.CopyWeightsRequest(source_path="tinker://m/weights/a", session_id="s1", model_seq_id=2),
    ),
    (
        "create_sampling_session",
        sdk.CreateSamplingSessionRequest(session_id="s1", sampling_session_seq_id=0, model_path="tinker://m/x/y"),
        tt.CreateSamplingSessionRequest(session_id="s1", sampling_session_seq_id=0, model_path="tinker://m/x/y"),
    ),
    (
        "join_sampling_session",
        sdk.JoinSamplingSessionRequest(sampling_session_id="s1:sample:0"),
        tt.JoinSamplingSessionRequest(sampling_session_id="s1:sample:0"),
    ),
    (
        "sample_minimal",
        sdk.SampleRequest(
            prompt=sdk.ModelInput.from_ints([1, 2, 3]),
            sampling_params=sdk.SamplingParams(max_tokens=16),
            sampling_session_id="s1:sample:0",
            seq_id=1,
        ),
        tt.SampleRequest(
            prompt=tt.ModelInput.from_ints([1, 2, 3]),
            sampling_params=tt.SamplingParams(max_tokens=16),
            sampling_session_id="s1:sample:0",
            seq_id=1,
        ),
    ),
    (
        "sample_full",
        sdk.SampleRequest(
            num_samples=4,
            prompt=sdk.ModelInput(
                chunks=[
                    sdk.EncodedTextChunk(tokens=[5, 6]),
                    sdk.ImageChunk(data=b"\x89PNG", format="png", expected_tokens=4),
                    sdk.ImageAssetPointerChunk(format="jpeg", location="s3://x", expected_tokens=2),
                    sdk.DmelChunk(dmel=b"\x01\x02\x03\x00"),
                ]
            ),
            sampling_params=sdk.SamplingParams(max_tokens=8, seed=3, stop=["\n"], temperature=0.7, top_k=5, top_p=0.9),
            sampling_session_id="s1:sample:0",
            seq_id=2,
            prompt_logprobs=True,
            topk_prompt_logprobs=2,
            topk_sample_logprobs=3,
            target_prompt_logprobs=SdkTensorData(data=[1, 2, -1, 4], dtype="int64", shape=[2, 2]),
            prompt_alt_tokens_k=2,
            prompt_logprobs_last_n=1,
            record_stability_info=False,
        ),
        tt.SampleRequest(
            num_samples=4,
            prompt=tt.ModelInput(
                chunks=[
                    tt.EncodedTextChunk(tokens=[5, 6]),
                    tt.ImageChunk(data=b"\x89PNG", format="png", expected_tokens=4),
                    tt.ImageAssetPointerChunk(format="jpeg", location="s3://x", expected_tokens=2),
                    tt.DmelChunk(dmel=b"\x01\x02\x03\x00"),
                ]
            ),
            sampling_params=tt.SamplingParams(max_tokens=8, seed=3, stop=["\n"], temperature=0.7, top_k=5, top_p=0.9),
            sampling_session_id="s1:sample:0",
            seq_id=2,
            prompt_logprobs=True,
            topk_prompt_logprobs=2,
            topk_sample_logprobs=3,
            target_prompt_logprobs=tt.TensorData(data=[1, 2, -1, 4], dtype="int64", shape=[2, 2]),
            prompt_alt_tokens_k=2,
            prompt_logprobs_last_n=1,
            record_stability_info=False,
        ),
    ),
    (
        "sample_stop_tokens_empty",
        sdk.SampleRequest(prompt=sdk.ModelInput.from_ints([1]), sampling_params=sdk.SamplingParams(stop=[]), seq_id=0),
        tt.SampleRequest(prompt=tt.ModelInput.from_ints([1]), sampling_params=tt.SamplingParams(stop=[]), seq_id=0),
    ),
    (
        "sample_stop_token_ids",
        sdk.SampleRequest(
            prompt=sdk.ModelInput.from_ints([1]), sampling_params=sdk.SamplingParams(stop=[7, 8]), seq_id=0
        ),
        tt.SampleRequest(prompt=tt.ModelInput.from_ints([1]), sampling_params=tt.SamplingParams(stop=[7, 8]), seq_id=0),
    ),
    (
        "retrieve_future",
        sdk.FutureRetrieveRequest(request_id="r1", allow_metadata_only=True),
        tt.FutureRetrieveRequest(request_id="r1", allow_metadata_only=True),
    ),
    (
        "retrieve_futures",
        sdk.FuturesRetrieveRequest(
            target=SdkFuturesTarget(sampling_session_id="s1:sample:0", cloned_sampler_id=1),
            prev_cursor=5,
            timeout=0,
            retrieved_request_ids=["a"],
        ),
        tt.FuturesRetrieveRequest(
            target=tt.SamplingSessionFuturesTarget(sampling_session_id="s1:sample:0", cloned_sampler_id=1),
            prev_cursor=5,
            timeout=0,
            retrieved_request_ids=["a"],
        ),
    ),
    (
        "telemetry",
        sdk.TelemetrySendRequest(
            events=[
                sdk.SessionStartEvent(
                    event="SESSION_START", event_id="e0", event_session_index=0, severity="INFO", timestamp=NOW
                ),
                sdk.SessionEndEvent(
                    event="SESSION_END",
                    event_id="e1",
                    event_session_index=1,
                    severity="INFO",
                    timestamp=NOW,
                    duration="0:00:05.5",
                ),
                sdk.UnhandledExceptionEvent(
                    event="UNHANDLED_EXCEPTION",
                    event_id="e2",
                    event_session_index=2,
                    severity="ERROR",
                    timestamp=NOW,
                    error_type="ValueError",
                    error_message="bad",
                    traceback="Traceback ...",
                ),
                SdkGenericEvent(
                    event="GENERIC_EVENT",
                    event_id="e3",
                    event_session_index=3,
                    severity="WARNING",
                    timestamp=NOW,
                    event_name="RetryHandler.execute.exception",
                    event_data={"status_code": 429, "kind": "x"},
                ),
            ],
            platform="Linux",
            sdk_version="0.38.0",
            session_id="sessionless-1",
            process_uuid="p",
        ),
        tt.TelemetryBatch(
            events=[
                tt.SessionStartEvent(event_id="e0", event_session_index=0, severity="INFO", timestamp=NOW),
                tt.SessionEndEvent(
                    event_id="e1", event_session_index=1, severity="INFO", timestamp=NOW, duration="0:00:05.5"
                ),
                tt.UnhandledExceptionEvent(
                    event_id="e2",
                    event_session_index=2,
                    severity="ERROR",
                    timestamp=NOW,
                    error_type="ValueError",
                    error_message="bad",
                    traceback="Traceback ...",
                ),
                tt.GenericEvent(
                    event_id="e3",
                    event_session_index=3,
                    severity="WARNING",
                    timestamp=NOW,
                    event_name="RetryHandler.execute.exception",
                    event_data={"status_code": 429, "kind": "x"},
                ),
            ],
            platform="Linux",
            sdk_version="0.38.0",
            session_id="sessionless-1",
            process_uuid="p",
        ),
    ),
]


@pytest.mark.parametrize(("name", "sdk_request", "ours"), CASES, ids=[c[0] for c in CASES])
def test_request_body_matches_sdk(name: str, sdk_request: Any, ours: Any) -> None:
    assert our_body(ours) == sdk_body(sdk_request)


@pytest.mark.parametrize(("name", "sdk_request", "ours"), CASES, ids=[c[0] for c in CASES])
def test_sdk_request_body_decodes_to_ours(name: str, sdk_request: Any, ours: Any) -> None:
    assert tt.decode(type(ours), json.dumps(sdk_body(sdk_request)).encode()) == ours


def test_none_inside_containers_is_kept_like_the_sdk() -> None:
    # exclude_none drops None *fields*, not None values inside dicts and lists.
    sdk_req = sdk.CreateSessionRequest(tags=[], user_metadata={"a": None, "n": {"x": None}}, sdk_version="v")
    ours = tt.CreateSessionRequest(sdk_version="v", user_metadata={"a": None, "n": {"x": None}})
    assert our_body(ours) == sdk_body(sdk_req)


def test_finish_body_sends_null_detail() -> None:
    # The SDK posts {"reason": {"type": status}, "detail": detail} as a plain dict: detail=None goes out as null.
    assert our_body(tt.FinishSessionRequest.of("interrupted")) == {"reason": {"type": "interrupted"}, "detail": None}
    assert our_body(tt.FinishSessionRequest.of("errored", "boom")) == {"reason": {"type": "errored"}, "detail": "boom"}


def test_forward_backward_json_form_matches_sdk_pydantic_input() -> None:
    from tinker.types._pydantic_types.forward_backward_input import ForwardBackwardInput as SdkFBI

    sdk_input = SdkFBI.model_validate(
        {
            "data": [
                {
                    "model_input": {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3]}]},
                    "loss_fn_inputs": {"target_tokens": [2, 3, 4], "weights": [1.0, 0.5, 0.0]},
                }
            ],
            "loss_fn": "cross_entropy",
            "loss_fn_config": {"beta": 0.1, "loss_id": "L"},
        }
    )
    ours = tt.ForwardBackwardInput(
        data=[tt.datum([1, 2, 3], target_tokens=[2, 3, 4], weights=[1.0, 0.5, 0.0])],
        loss_fn="cross_entropy",
        loss_fn_config={"beta": 0.1, "loss_id": "L"},
    )
    assert our_body(ours) == sdk_body(sdk_input)
