"""Golden JSON bodies, written from the protocol spec, for every endpoint's response.

Each body must decode with our type, survive an encode/decode round trip, and (where the official SDK has a
pydantic model for it) be accepted by the SDK too, with the same field values. Then every response type is fed
broken versions of its golden body: malformed JSON, a wrong type in each field, each required field missing.
All of them must raise ResponseValidationError naming the field, never a raw msgspec error or a KeyError.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from tinker import types as sdk
from tinker.lib.public_interfaces.rest_client import (
    _SessionTraceExportPollResponse as SdkTraceExportPoll,  # pyright: ignore[reportPrivateUsage]
)
from tinker.types.try_again_response import TryAgainResponse as SdkTryAgainResponse

import tinkex_trio.types as tt
from tinkex_trio.errors import RequestErrorCategory, ResponseValidationError

CHECKPOINT = {
    "checkpoint_id": "weights/ckpt-1",
    "checkpoint_type": "training",
    "time": "2025-03-01T12:30:15.250000Z",
    "tinker_path": "tinker://s1:train:0/weights/ckpt-1",
    "size_bytes": 123456,
    "public": False,
    "user_metadata": {"step": "10"},
    "expires_at": "2025-04-01T00:00:00Z",
}
TRAINING_RUN = {
    "training_run_id": "s1:train:0",
    "base_model": "Qwen/Qwen3-8B",
    "model_owner": "org-1",
    "is_lora": True,
    "lora_rank": 32,
    "last_request_time": "2025-03-01T12:31:00Z",
    "last_checkpoint": CHECKPOINT,
    "corrupted": False,
}

# (case id, our type, golden body, the SDK's pydantic model or None, {attribute path: expected value})
GOLDEN: list[tuple[str, type[Any], dict[str, Any], Any, dict[str, Any]]] = [
    ("client_config_empty", tt.ClientConfigResponse, {}, sdk.ClientConfigResponse, {"fwdbwd_max_chunk_len": 1024}),
    (
        "client_config",
        tt.ClientConfigResponse,
        {"pjwt_auth_enabled": True, "fwdbwd_max_chunk_len": 2, "sample_use_retrieve_futures": True, "new_flag": 1},
        sdk.ClientConfigResponse,
        {"pjwt_auth_enabled": True, "fwdbwd_max_chunk_len": 2, "parallel_fwdbwd_chunks": True},
    ),
    (
        "dynamic_config",
        tt.ClientDynamicConfigResponse,
        {"refresh_interval_sec": 60, "sample_cancel_enabled": True},
        sdk.ClientDynamicConfigResponse,
        {"refresh_interval_sec": 60, "sample_cancel_max_batch_size": 64},
    ),
    ("auth_token", tt.AuthTokenResponse, {"jwt": "a.b.c"}, sdk.AuthTokenResponse, {"jwt": "a.b.c"}),
    (
        "create_session",
        tt.CreateSessionResponse,
        {"session_id": "s1", "type": "create_session", "warning_message": "slow down"},
        sdk.CreateSessionResponse,
        {"session_id": "s1", "warning_message": "slow down", "info_message": None},
    ),
    ("heartbeat_empty", tt.SessionHeartbeatResponse, {}, sdk.SessionHeartbeatResponse, {}),
    ("heartbeat", tt.SessionHeartbeatResponse, {"type": "session_heartbeat"}, sdk.SessionHeartbeatResponse, {}),
    (
        "server_capabilities",
        tt.GetServerCapabilitiesResponse,
        {
            "supported_models": [
                {"model_name": "Qwen/Qwen3-8B", "max_context_length": 32768, "trainable": True, "sampleable": True},
                {},
            ]
        },
        sdk.GetServerCapabilitiesResponse,
        {"supported_models[0].max_context_length": 32768, "supported_models[1].model_name": None},
    ),
    ("healthz", tt.HealthResponse, {"status": "ok"}, sdk.HealthResponse, {"status": "ok"}),
    (
        "future_training",
        tt.UntypedAPIFuture,
        {"request_id": "r1", "model_id": "s1:train:0"},
        sdk.UntypedAPIFuture,
        {"request_id": "r1", "model_id": "s1:train:0", "sample_sequence_ids": None},
    ),
    (
        "future_sample",
        tt.UntypedAPIFuture,
        {"request_id": "r2", "sample_sequence_ids": ["q1", "q2"]},
        sdk.UntypedAPIFuture,
        {"sample_sequence_ids": ["q1", "q2"]},
    ),
    (
        "create_model",
        tt.CreateModelResponse,
        {"model_id": "s1:train:0", "type": "create_model"},
        sdk.CreateModelResponse,
        {"model_id": "s1:train:0"},
    ),
    (
        "get_info",
        tt.GetInfoResponse,
        {
            "type": "get_info",
            "model_id": "s1:train:0",
            "model_data": {"arch": "qwen3", "model_name": "Qwen/Qwen3-8B", "tokenizer_id": "Qwen/Qwen3-8B:main"},
            "optimizer_config": {"type": "dimuon", "version": 1},
            "is_lora": True,
            "lora_rank": 32,
            "model_name": "Qwen/Qwen3-8B",
        },
        sdk.GetInfoResponse,
        {
            "model_data.tokenizer_id": "Qwen/Qwen3-8B:main",
            "lora_rank": 32,
            "optimizer_config": tt.DimuonOptimizerConfig(),
        },
    ),
    (
        "get_info_minimal",
        tt.GetInfoResponse,
        {"model_id": "m", "model_data": {}},
        sdk.GetInfoResponse,
        {"optimizer_config": tt.AdamOptimizerConfig(), "is_lora": None},
    ),
    (
        "forward_backward_output",
        tt.ForwardBackwardOutput,
        {
            "loss_fn_output_type": "TensorData",
            "loss_fn_outputs": [
                {"logprobs": {"data": [-0.5, -1.25], "dtype": "float32", "shape": [2]}},
                {"logprobs": {"data": [-2.0], "dtype": "float32", "shape": [1]}},
            ],
            "metrics": {"loss:sum": 3.75, "e_frac_with_tokens:mean": 1},
        },
        None,
        {"metrics": {"loss:sum": 3.75, "e_frac_with_tokens:mean": 1.0}, "loss_fn_outputs[1].logprobs.data": [-2.0]},
    ),
    (
        "optim_step",
        tt.OptimStepResponse,
        {"metrics": {"grad_norm:mean": 0.5}},
        sdk.OptimStepResponse,
        {"metrics": {"grad_norm:mean": 0.5}},
    ),
    ("optim_step_empty", tt.OptimStepResponse, {}, sdk.OptimStepResponse, {"metrics": None}),
    (
        "save_weights",
        tt.SaveWeightsResponse,
        {"path": "tinker://s1:train:0/weights/ckpt-1"},
        sdk.SaveWeightsResponse,
        {"path": "tinker://s1:train:0/weights/ckpt-1"},
    ),
    (
        "save_weights_for_sampler_named",
        tt.SaveWeightsForSamplerResponse,
        {"path": "tinker://s1:train:0/sampler_weights/s1", "type": "save_weights_for_sampler"},
        sdk.SaveWeightsForSamplerResponseInternal,
        {"path": "tinker://s1:train:0/sampler_weights/s1", "sampling_session_id": None},
    ),
    (
        "save_weights_for_sampler_ephemeral",
        tt.SaveWeightsForSamplerResponse,
        {"sampling_session_id": "s1:sample:1"},
        sdk.SaveWeightsForSamplerResponseInternal,
        {"path": None, "sampling_session_id": "s1:sample:1"},
    ),
    (
        "save_weights_external",
        tt.SaveWeightsExternalResponse,
        {"path": "tinker://s1:train:0/external_weights/e", "size_bytes": 1234},
        sdk.SaveWeightsExternalResponseInternal,
        {"size_bytes": 1234},
    ),
    (
        "load_weights",
        tt.LoadWeightsResponse,
        {"path": "tinker://s1:train:0/weights/a", "model_id": "s1:train:1"},
        sdk.LoadWeightsResponse,
        {"model_id": "s1:train:1"},
    ),
    ("load_weights_empty", tt.LoadWeightsResponse, {}, sdk.LoadWeightsResponse, {"path": None}),
    ("create_custom_loss", tt.CreateCustomLossResponse, {"loss_id": "L1"}, sdk.CreateCustomLossResponse, {}),
    (
        "copy_weights",
        tt.CopyWeightsResponse,
        {"tinker_path": "tinker://s2:train:0/weights/a"},
        sdk.CopyWeightsResponse,
        {"tinker_path": "tinker://s2:train:0/weights/a"},
    ),
    (
        "create_sampling_session",
        tt.CreateSamplingSessionResponse,
        {"sampling_session_id": "s1:sample:0", "type": "create_sampling_session"},
        sdk.CreateSamplingSessionResponse,
        {"sampling_session_id": "s1:sample:0"},
    ),
    (
        "get_sampler",
        tt.GetSamplerResponse,
        {"sampler_id": "s1:sample:0", "base_model": "Qwen/Qwen3-8B", "model_path": "tinker://s1:train:0/x/y"},
        sdk.GetSamplerResponse,
        {"base_model": "Qwen/Qwen3-8B"},
    ),
    (
        "join_sampling_session",
        tt.JoinSamplingSessionResponse,
        {"client_counter": 3},
        sdk.JoinSamplingSessionResponse,
        {"client_counter": 3},
    ),
    (
        "sample_response",
        tt.SampleResponse,
        {
            "sequences": [
                {
                    "stop_reason": "stop",
                    "sequence_id": "q1",
                    "tokens": [11, 12],
                    "logprobs": [-0.1, -0.2],
                    "topk_logprobs": [[[11, -0.1], [3, -2.0]], None],
                },
                {"stop_reason": "length", "sequence_id": "q2", "tokens": []},
            ],
            "prompt_logprobs": [None, -1.5, -0.25],
            "topk_prompt_logprobs": [None, [[4, -0.3]], [[5, -0.2], [6, -3.0]]],
            "target_prompt_logprobs": {"data": [-0.5, 0.0, -1.0, 0.0], "dtype": "float32", "shape": [2, 2]},
            "prompt_alt_tokens": {
                "tokens": {"data": [1, 2], "dtype": "int64", "shape": [2, 1]},
                "logprobs": {"data": [-0.5, -0.7], "dtype": "float32", "shape": [2, 1]},
            },
            "prompt_cache_hit_tokens": 2,
        },
        None,
        {
            "sequences[0].topk_logprobs": [[(11, -0.1), (3, -2.0)], None],
            "sequences[1].stop_reason": "length",
            "prompt_logprobs": [None, -1.5, -0.25],
            "prompt_cache_hit_tokens": 2,
        },
    ),
    (
        "sample_response_minimal",
        tt.SampleResponse,
        {"sequences": [{"stop_reason": "length", "tokens": [1]}]},
        None,
        {"prompt_cache_hit_tokens": 0, "sequences[0].sequence_id": None},
    ),
    (
        "try_again",
        tt.TryAgainResponse,
        {"type": "try_again", "request_id": "r1", "queue_state": "paused_rate_limit", "queue_state_reason": "rate"},
        SdkTryAgainResponse,
        {"queue_state": "paused_rate_limit", "queue_state_reason": "rate"},
    ),
    (
        "complete_metadata",
        tt.FutureCompleteMetadata,
        {"status": "complete_metadata", "response_payload_size": 1048576},
        None,
        {"response_payload_size": 1048576},
    ),
    (
        "request_failed",
        tt.RequestFailedResponse,
        {"error": "bad input", "category": "user"},
        sdk.RequestFailedResponse,
        {"category": RequestErrorCategory.USER},
    ),
    (
        "retrieve_futures",
        tt.FuturesRetrieveResponse,
        {
            "completions": [
                {"state": "finished", "request_id": "a", "response_payload_uncompressed_size": 10},
                {"state": "failed", "request_id": "b"},
                {"state": "finished", "request_id": "c"},
            ],
            "cursor": 7,
        },
        sdk.FuturesRetrieveResponse,
        {
            "completions": [
                tt.FutureFinished(request_id="a", response_payload_uncompressed_size=10),
                tt.FutureFailed(request_id="b"),
                tt.FutureFinished(request_id="c"),
            ],
            "cursor": 7,
        },
    ),
    ("telemetry", tt.TelemetryResponse, {"status": "accepted"}, sdk.TelemetryResponse, {"status": "accepted"}),
    (
        "training_runs",
        tt.TrainingRunsResponse,
        {"training_runs": [TRAINING_RUN], "cursor": {"offset": 0, "limit": 20, "total_count": 1}},
        sdk.TrainingRunsResponse,
        {"cursor.total_count": 1, "training_runs[0].last_checkpoint.size_bytes": 123456},
    ),
    (
        "training_run",
        tt.TrainingRun,
        TRAINING_RUN,
        sdk.TrainingRun,
        {"last_request_time": datetime(2025, 3, 1, 12, 31, tzinfo=UTC), "last_sampler_checkpoint": None},
    ),
    (
        "checkpoints",
        tt.CheckpointsListResponse,
        {"checkpoints": [CHECKPOINT], "cursor": {"offset": 0, "limit": 100, "total_count": 1}},
        sdk.CheckpointsListResponse,
        {"checkpoints[0].checkpoint_id": "weights/ckpt-1", "checkpoints[0].public": False},
    ),
    ("checkpoints_unpaginated", tt.CheckpointsListResponse, {"checkpoints": []}, sdk.CheckpointsListResponse, {}),
    (
        "weights_info",
        tt.WeightsInfoResponse,
        {"base_model": "Qwen/Qwen3-8B", "is_lora": True, "lora_rank": 8, "train_mlp": True},
        sdk.WeightsInfoResponse,
        {"lora_rank": 8, "train_attn": None},
    ),
    ("list_sessions", tt.ListSessionsResponse, {"sessions": ["s1", "s2"]}, sdk.ListSessionsResponse, {}),
    (
        "get_session",
        tt.GetSessionResponse,
        {"training_run_ids": ["s1:train:0"], "sampler_ids": ["s1:sample:0"], "display_name": "run"},
        sdk.GetSessionResponse,
        {"sampler_ids": ["s1:sample:0"], "user_metadata": None},
    ),
    ("trace_export_pending", tt.SessionTraceExportResponse, {"status": "pending"}, SdkTraceExportPoll, {"url": None}),
    (
        "trace_export_ready",
        tt.SessionTraceExportResponse,
        {"status": "ready", "url": "https://storage.example/t.pftrace?sig=1"},
        SdkTraceExportPoll,
        {"url": "https://storage.example/t.pftrace?sig=1"},
    ),
    (
        "trace_export_failed",
        tt.SessionTraceExportResponse,
        {"status": "failed", "error": "out of space"},
        SdkTraceExportPoll,
        {"error": "out of space"},
    ),
    ("trace_export_building", tt.SessionTraceExportResponse, {"status": "building"}, None, {"status": "building"}),
    (
        "audit_log",
        tt.AuditLogResponse,
        {
            "entries": [
                {
                    "timestamp": "2026-03-02T10:17:05Z",
                    "event": "checkpoint_read",
                    "event_details": {"actor": "urn:u", "purpose": "sampling", "bytes": 10},
                    "model_id": "s1:train:0",
                    "tinker_path": "tinker://s1:train:0/weights/a",
                    "purpose": "sampling",
                },
                {"timestamp": "2026-03-02T11:00:00Z", "event": "project_grant_set"},
            ]
        },
        sdk.AuditLogResponse,
        {"entries[0].event_details.bytes": 10, "entries[1].event_details": {}, "entries[1].model_id": None},
    ),
    (
        "billing_usage",
        tt.BillingUsageResponse,
        {
            "data": [
                {
                    "bucket_start": "2026-03-02T10:00:00Z",
                    "bucket_end": "2026-03-02T11:00:00Z",
                    "base_model": "Qwen/Qwen3-8B",
                    "user_id": "urn:u",
                    "session_id": "s1",
                    "project_id": "p1",
                    "estimated_cost_usd": 0.5,
                    "effective_rate_usd_per_million_tokens": 2.5,
                    "event_info": {"type": "sampling_prefill", "cached": True, "token_count": 200000},
                },
                {
                    "bucket_start": "2026-03-02T10:00:00Z",
                    "bucket_end": "2026-03-02T11:00:00Z",
                    "event_info": {"type": "storage", "gigabyte_hours": 1.5},
                },
                {
                    "bucket_start": "2026-03-02T11:00:00Z",
                    "bucket_end": "2026-03-02T12:00:00Z",
                    "event_info": {"type": "checkpoint", "count": 2},
                },
            ],
            "sessions": {"s1": {"user_metadata": {"team": "rl"}}},
            "cost_data_through": "2026-03-01T00:00:00Z",
        },
        sdk.BillingUsageResponse,
        {
            "data[0].event_info": tt.SamplingPrefillBillingEvent(cached=True, token_count=200000),
            "data[1].event_info": tt.StorageBillingEvent(gigabyte_hours=1.5, free=False),
            "data[2].event_info.count": 2,
            "sessions.s1.user_metadata": {"team": "rl"},
        },
    ),
    (
        "billing_usage_empty",
        tt.BillingUsageResponse,
        {"data": []},
        sdk.BillingUsageResponse,
        {"sessions": {}, "cost_data_through": None},
    ),
    (
        "checkpoint_storage",
        tt.CurrentCheckpointStorageUsageResponse,
        {
            "effective_rate_usd_per_gigabyte_month": 0.02,
            "data": [
                {
                    "project_id": "p1",
                    "org_user_urn": "urn:u",
                    "user_email": "u@example.invalid",
                    "checkpoint_count": 3,
                    "size_bytes": 3000000000,
                    "size_gigabytes": 3.0,
                    "estimated_monthly_cost_usd": 0.06,
                }
            ],
        },
        sdk.CurrentCheckpointStorageUsageResponse,
        {"data[0].size_bytes": 3000000000, "data[0].user_name": None},
    ),
    (
        "external_weights_urls",
        tt.ExternalWeightsUrlsResponse,
        {"urls": {"adapter.safetensors": "https://x/y"}, "expires": "2025-03-01T13:00:00Z"},
        sdk.ExternalWeightsUrlsResponse,
        {"expires": datetime(2025, 3, 1, 13, tzinfo=UTC)},
    ),
]

IDS = [case[0] for case in GOLDEN]


def lookup(obj: Any, path: str) -> Any:
    """``a.b[0].c`` on attributes and dict keys."""
    for part in path.replace("[", ".[").split("."):
        if part.startswith("["):
            obj = obj[int(part[1:-1])]
        elif isinstance(obj, dict):
            obj = obj[part]  # pyright: ignore[reportUnknownVariableType]
        else:
            obj = getattr(obj, part)
    return obj


def strip_tags(value: Any) -> Any:
    """Drop ``type`` keys (tags are optional on responses) for a field-by-field comparison with the SDK."""
    if isinstance(value, dict):
        return {k: strip_tags(v) for k, v in value.items() if k != "type"}  # pyright: ignore[reportUnknownVariableType]
    if isinstance(value, list):
        return [strip_tags(v) for v in value]  # pyright: ignore[reportUnknownVariableType]
    return value


@pytest.mark.parametrize(("name", "type_", "body", "sdk_model", "expected"), GOLDEN, ids=IDS)
def test_golden_body_decodes(
    name: str, type_: type[Any], body: dict[str, Any], sdk_model: Any, expected: dict[str, Any]
) -> None:
    raw = json.dumps(body).encode()
    obj = tt.decode(type_, raw)
    assert isinstance(obj, type_)
    for path, value in expected.items():
        assert lookup(obj, path) == value, path
    # Round trip: what we encode decodes back to the same object.
    assert tt.decode(type_, tt.encode(obj)) == obj
    # The same check for an already-parsed body (the client's convert path).
    assert tt.convert(type_, json.loads(raw)) == obj


SDK_CASES = [case for case in GOLDEN if case[3] is not None]


@pytest.mark.parametrize(("name", "type_", "body", "sdk_model", "expected"), SDK_CASES, ids=[c[0] for c in SDK_CASES])
def test_golden_body_agrees_with_sdk(
    name: str, type_: type[Any], body: dict[str, Any], sdk_model: Any, expected: dict[str, Any]
) -> None:
    ours = tt.decode(type_, json.dumps(body).encode())
    theirs = sdk_model.model_validate_json(json.dumps(body))
    # Compare the fields the SDK's model knows (ours may know more, e.g. TryAgainResponse.queue_state_reason,
    # which the SDK reads from the raw dict).
    mine = {k: v for k, v in tt.to_builtins(ours).items() if k in sdk_model.model_fields}
    assert strip_tags(mine) == strip_tags(theirs.model_dump(mode="json", exclude_none=True))


def test_tag_must_match_when_present() -> None:
    with pytest.raises(ResponseValidationError) as info:
        tt.decode(tt.CreateModelResponse, b'{"model_id": "m", "type": "get_info"}')
    assert info.value.field == "$.type"
    with pytest.raises(ResponseValidationError) as info:
        tt.decode(tt.FutureCompleteMetadata, b'{"status": "complete", "response_payload_size": 1}')
    assert info.value.field == "$.status"


def test_unknown_fields_are_ignored_everywhere() -> None:
    body = {
        "loss_fn_output_type": "x",
        "extra": {"deep": [1, 2]},
        "loss_fn_outputs": [{"logprobs": {"data": [1.0], "dtype": "float32", "novel": True}}],
        "metrics": {},
    }
    out = tt.decode(tt.ForwardBackwardOutput, json.dumps(body))
    assert out.loss_fn_outputs[0]["logprobs"].data == [1.0]


# -- broken bodies ---------------------------------------------------------------------------------------------

RESPONSE_TYPES = sorted({case[1] for case in GOLDEN}, key=lambda t: t.__name__)
RICHEST_BODY = {case[1]: case[2] for case in sorted(GOLDEN, key=lambda c: len(json.dumps(c[2])))}


@pytest.mark.parametrize("type_", RESPONSE_TYPES, ids=lambda t: t.__name__)
@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b'{"a": 1,}', b"\xff\xfe", b'{"a": "\\u12"}'])
def test_malformed_json_raises_validation_error(type_: type[Any], raw: bytes) -> None:
    with pytest.raises(ResponseValidationError) as info:
        tt.decode(type_, raw, request_id="req-9")
    err = info.value
    assert type_.__name__ in err.message
    assert err.request_id == "req-9"
    assert err.body == raw


@pytest.mark.parametrize("type_", RESPONSE_TYPES, ids=lambda t: t.__name__)
@pytest.mark.parametrize("raw", [b"[]", b"null", b'"text"', b"3"])
def test_non_object_body_names_the_root(type_: type[Any], raw: bytes) -> None:
    with pytest.raises(ResponseValidationError) as info:
        tt.decode(type_, raw)
    assert info.value.field == "$"


def _wrong_value(value: Any) -> Any:
    # A value of the wrong JSON type for any field: objects get an array, everything else an object.
    return [1] if isinstance(value, dict) else {"unexpected": [1]}


WRONG_TYPED = [
    (type_, f.encode_name)
    for type_ in RESPONSE_TYPES
    for f in msgspec.structs.fields(type_)
    if f.encode_name in RICHEST_BODY[type_]
]


@pytest.mark.parametrize(("type_", "key"), WRONG_TYPED, ids=[f"{t.__name__}.{k}" for t, k in WRONG_TYPED])
def test_wrong_typed_field_is_named(type_: type[Any], key: str) -> None:
    body = dict(RICHEST_BODY[type_])
    body[key] = _wrong_value(body[key])
    with pytest.raises(ResponseValidationError) as info:
        tt.decode(type_, json.dumps(body))
    err = info.value
    assert err.field == f"$.{key}"
    assert f"$.{key}" in err.message
    with pytest.raises(ResponseValidationError) as info:
        tt.convert(type_, body)
    assert info.value.field == f"$.{key}"


MISSING_REQUIRED = [
    (type_, f.encode_name)
    for type_ in RESPONSE_TYPES
    for f in msgspec.structs.fields(type_)
    if f.required and f.encode_name in RICHEST_BODY[type_]
]


@pytest.mark.parametrize(("type_", "key"), MISSING_REQUIRED, ids=[f"{t.__name__}.{k}" for t, k in MISSING_REQUIRED])
def test_missing_required_field_is_named(type_: type[Any], key: str) -> None:
    body = dict(RICHEST_BODY[type_])
    del body[key]
    with pytest.raises(ResponseValidationError) as info:
        tt.decode(type_, json.dumps(body))
    assert info.value.field == f"$.{key}"
    assert key in info.value.message


def test_every_response_type_has_a_required_field_check() -> None:
    # Types with required fields must all be covered by MISSING_REQUIRED (no silent gaps in the table).
    with_required = {t for t in RESPONSE_TYPES if any(f.required for f in msgspec.structs.fields(t))}
    assert with_required == {t for t, _ in MISSING_REQUIRED}


@pytest.mark.parametrize(
    ("type_", "body", "field"),
    [
        (tt.GetInfoResponse, {"model_id": "m", "model_data": {"arch": 3}}, "$.model_data.arch"),
        (
            tt.ForwardBackwardOutput,
            {"loss_fn_output_type": "x", "loss_fn_outputs": [{"logprobs": {"data": [1], "dtype": "float16"}}]},
            "$.loss_fn_outputs[0][...].dtype",
        ),
        (
            tt.ForwardBackwardOutput,
            {"loss_fn_output_type": "x", "loss_fn_outputs": [], "metrics": {"loss:sum": None}},
            "$.metrics[...]",
        ),
        (tt.SampleResponse, {"sequences": [{"stop_reason": "eos", "tokens": []}]}, "$.sequences[0].stop_reason"),
        (tt.SampleResponse, {"sequences": [{"stop_reason": "stop", "tokens": [1.5]}]}, "$.sequences[0].tokens[0]"),
        (tt.SampleResponse, {"sequences": [{"stop_reason": "stop"}]}, "$.sequences[0].tokens"),
        (tt.TryAgainResponse, {"request_id": "r", "queue_state": "paused"}, "$.queue_state"),
        (tt.RequestFailedResponse, {"error": "e", "category": "cosmic"}, "$.category"),
        (
            tt.FuturesRetrieveResponse,
            {"completions": [{"state": "lost", "request_id": "a"}], "cursor": 0},
            "$.completions[0].state",
        ),
        (tt.Checkpoint, {**CHECKPOINT, "time": "yesterday"}, "$.time"),
        (
            tt.BillingUsageResponse,
            {"data": [{"bucket_start": "2026-03-02T10:00:00Z", "bucket_end": "x", "event_info": {"type": "training"}}]},
            "$.data[0].bucket_end",
        ),
        (
            tt.BillingUsageResponse,
            {
                "data": [
                    {
                        "bucket_start": "2026-03-02T10:00:00Z",
                        "bucket_end": "2026-03-02T11:00:00Z",
                        "event_info": {"type": "gpu"},
                    }
                ]
            },
            "$.data[0].event_info.type",
        ),
        (tt.UntypedAPIFuture, {"request_id": "r", "sample_sequence_ids": ["a", 1]}, "$.sample_sequence_ids[1]"),
    ],
)
def test_nested_errors_carry_the_json_path(type_: type[Any], body: dict[str, Any], field: str) -> None:
    with pytest.raises(ResponseValidationError) as info:
        tt.decode(type_, json.dumps(body))
    assert info.value.field == field
    assert field in info.value.message


def test_inconsistent_tensor_in_response_is_a_validation_error() -> None:
    body = {
        "loss_fn_output_type": "x",
        "loss_fn_outputs": [{"logprobs": {"data": [1.0, 2.0], "dtype": "float32", "shape": [3]}}],
    }
    with pytest.raises(ResponseValidationError) as info:
        tt.decode(tt.ForwardBackwardOutput, json.dumps(body))
    assert info.value.field == "$.loss_fn_outputs[0][...]"
    assert "shape" in info.value.message
