"""The simulated Tinker server's ASGI app, in process through httpx.ASGITransport.

Every test takes ``autojump_clock`` (pytest-trio only uses a clock the test itself requests): service times and
long polls cost no wall-clock time.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import numpy as np
import pytest
import trio
import trio.testing

from tinkex_trio import types as t
from tinkex_trio._proto import _codec
from tinkex_trio.sim._app import SimApp, create_app
from tinkex_trio.sim._config import ServiceTime, SimConfig

KEY = {"X-API-Key": "tml-test-key"}
PROTO = "application/x-protobuf"
PATTERN = [1, 2, 3, 4, 5, 6, 7, 8] * 3


def _config(**overrides: Any) -> SimConfig:
    config = SimConfig(compute_in_threads=False, service=ServiceTime(base_s=0.01, per_token_s=0.0))
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


class Sim:
    """A test client for one app: JSON helpers, future polling, a fresh session."""

    def __init__(self, app: SimApp, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client
        self.session_id = ""

    async def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        return await self.client.post(f"/api/v1/{path}", json=body if body is not None else {}, **kwargs)

    async def ok(self, path: str, body: Any = None) -> Any:
        response = await self.post(path, body)
        assert response.status_code == 200, response.text
        return response.json()

    async def poll(
        self, future: dict[str, Any], *, protobuf: bool = False, allow_metadata_only: bool = False
    ) -> httpx.Response:
        headers = {"Accept": PROTO} if protobuf else {}
        return await self.post(
            "retrieve_future",
            {"request_id": future["request_id"], "allow_metadata_only": allow_metadata_only},
            headers=headers,
        )

    async def result(self, future: dict[str, Any], *, protobuf: bool = False) -> Any:
        for _ in range(20):
            response = await self.poll(future, protobuf=protobuf)
            assert response.status_code == 200, response.text
            if response.headers["content-type"].startswith(PROTO):
                return response.content
            body = response.json()
            if body.get("type") != "try_again":
                return body
        raise AssertionError("future never finished")

    async def new_session(self) -> str:
        body = await self.ok("create_session", {"tags": ["t"], "sdk_version": "0.38.0", "type": "create_session"})
        self.session_id = body["session_id"]
        return self.session_id

    async def new_model(self, seq: int = 0, rank: int = 4) -> str:
        future = await self.ok(
            "create_model",
            {
                "session_id": self.session_id,
                "model_seq_id": seq,
                "base_model": "Qwen/Qwen3-8B",
                "lora_config": {"rank": rank, "seed": 7},
                "type": "create_model",
            },
        )
        result = await self.result(future)
        assert result["model_id"] == future["model_id"]
        return str(future["model_id"])

    async def fwdbwd(
        self,
        model_id: str,
        seq_id: int,
        data: list[t.Datum],
        loss_fn: str = "cross_entropy",
        *,
        forward_only: bool = False,
        config: dict[str, float | str] | None = None,
    ) -> dict[str, Any]:
        body = _codec.encode_forward_backward_request(model_id, seq_id, data, loss_fn, config, forward_only)
        response = await self.client.post("/api/v1/forward_backward", content=body, headers={"Content-Type": PROTO})
        assert response.status_code == 200, response.text
        return response.json()

    async def optim(self, model_id: str, seq_id: int, lr: float = 0.05) -> dict[str, Any]:
        return await self.ok(
            "optim_step",
            {"model_id": model_id, "seq_id": seq_id, "adam_params": {"learning_rate": lr}, "type": "optim_step"},
        )


def _data(n: int = 2) -> list[t.Datum]:
    return [t.datum(PATTERN[:-1], target_tokens=PATTERN[1:], weights=[1.0] * (len(PATTERN) - 1)) for _ in range(n)]


@pytest.fixture
async def sim() -> AsyncGenerator[Sim]:
    app = create_app(_config())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sim", headers=KEY) as client:
        yield Sim(app, client)


# -- service endpoints -------------------------------------------------------------------------------------------------


async def test_auth_requires_tml_key(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    url = "/api/v1/get_server_capabilities"
    missing = await sim.client.get(url, headers={"X-API-Key": ""})
    assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
    wrong = await sim.client.get(url, headers={"X-API-Key": "sk-nope"})
    assert wrong.status_code == 401 and "tml-" in wrong.json()["detail"]
    assert "sk-nope" not in wrong.text
    good = await sim.client.get(url)
    assert good.status_code == 200
    assert good.json()["supported_models"][0]["model_name"] == "Qwen/Qwen3-8B"
    health = await sim.client.get("/api/v1/healthz", headers={"X-API-Key": ""})
    assert health.json() == {"status": "ok"}


async def test_unknown_paths_and_methods(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    response = await sim.post("no_such_endpoint")
    assert response.status_code == 404 and "no_such_endpoint" in response.json()["detail"]
    outside = await sim.client.get("/elsewhere")
    assert outside.status_code == 404
    wrong_method = await sim.client.get("/api/v1/create_session")
    assert wrong_method.status_code == 405


async def test_client_config_and_dynamic_config(autojump_clock: trio.testing.MockClock) -> None:
    app = create_app(_config(client_config={"fwdbwd_max_chunk_len": 2}, dynamic_config={"sample_cancel_enabled": True}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sim", headers=KEY) as client:
        config = (await client.post("/api/v1/client/config", json={"sdk_version": "0.38.0"})).json()
        assert config["fwdbwd_max_chunk_len"] == 2
        assert config["pjwt_auth_enabled"] is False and config["parallel_fwdbwd_chunks"] is True
        dynamic = (await client.post("/api/v1/client/dynamic_config", json={"sdk_version": "0.38.0"})).json()
        assert dynamic["sample_cancel_enabled"] is True and dynamic["refresh_interval_sec"] == 300
        assert (await client.post("/api/v1/auth/token", json={})).status_code == 404
        app.config.dynamic_config_enabled = False
        assert (await client.post("/api/v1/client/dynamic_config", json={"sdk_version": "x"})).status_code == 404


async def test_jwt_exchange_when_enabled(autojump_clock: trio.testing.MockClock) -> None:
    app = create_app(_config(jwt_auth_enabled=True))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sim", headers=KEY) as client:
        config = (await client.post("/api/v1/client/config", json={"sdk_version": "0.38.0"})).json()
        assert config["pjwt_auth_enabled"] is True
        jwt = (await client.post("/api/v1/auth/token", json={})).json()["jwt"]
        assert jwt.startswith("eyJ") and jwt.count(".") == 2
        with_jwt = await client.get("/api/v1/get_server_capabilities", headers={"X-API-Key": jwt})
        assert with_jwt.status_code == 200
        app.config.jwt_auth_enabled = False
        rejected = await client.get("/api/v1/get_server_capabilities", headers={"X-API-Key": jwt})
        assert rejected.status_code == 401 and "invalid_token" in rejected.headers["www-authenticate"]


async def test_sessions_heartbeat_finish_and_listing(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    session_id = await sim.new_session()
    assert session_id.startswith("sess-") and ":" not in session_id and "/" not in session_id
    beat = await sim.ok("session_heartbeat", {"session_id": session_id, "type": "session_heartbeat"})
    assert beat in ({}, {"type": "session_heartbeat"})
    assert sim.app.state.sessions[session_id].heartbeats == 1
    unknown = await sim.post("session_heartbeat", {"session_id": "sess-nope", "type": "session_heartbeat"})
    assert unknown.status_code == 404
    await sim.ok(f"sessions/{session_id}/finish", {"reason": {"type": "success"}, "detail": None})
    await sim.ok(f"sessions/{session_id}/finish", {"reason": {"type": "errored"}, "detail": "late"})
    assert sim.app.state.sessions[session_id].finished == "success"
    listing = (await sim.client.get("/api/v1/sessions", params={"limit": 20, "offset": 0})).json()
    assert listing == {"sessions": [session_id]}
    detail = (await sim.client.get(f"/api/v1/sessions/{session_id}")).json()
    assert detail["training_run_ids"] == [] and detail["sampler_ids"] == []
    assert (await sim.client.get("/api/v1/sessions/sess-nope")).status_code == 404
    telemetry = await sim.ok("telemetry", {"events": [{"event": "SESSION_START"}], "session_id": session_id})
    assert telemetry == {"status": "accepted"} and sim.app.state.telemetry_events == 1


BAD_BODIES: list[tuple[str, bytes]] = [
    ("client/config", b"{not json"),
    ("create_session", b"[1, 2]"),
    ("create_session", b'{"tags": "not-a-list", "sdk_version": "x"}'),
    ("session_heartbeat", b"{}"),
    ("create_model", b'{"session_id": 3}'),
    ("get_info", b'{"model_id": null}'),
    ("forward_backward", b'{"model_id": "m"}'),
    ("forward_backward", b"\xff\xfe garbage"),
    ("optim_step", b'{"model_id": "x", "adam_params": {"learning_rate": "fast"}}'),
    ("save_weights", b'{"path": "x"}'),
    ("save_weights_for_sampler", b'{"model_id": 1}'),
    ("load_weights", b'{"path": "tinker://a/weights/b"}'),
    ("create_sampling_session", b'{"session_id": "s"}'),
    ("asample", b'{"prompt": {"chunks": [{"type": "video"}]}, "sampling_params": {}}'),
    ("retrieve_future", b'{"allow_metadata_only": true}'),
    ("retrieve_futures", b'{"target": {}}'),
    ("cancel_future", b"null"),
    ("weights_info", b'{"tinker_path": 5}'),
    ("telemetry", b'{"events": 5}'),
]


@pytest.mark.parametrize(("endpoint", "body"), BAD_BODIES)
async def test_bad_bodies_get_4xx_with_detail(
    sim: Sim, endpoint: str, body: bytes, autojump_clock: trio.testing.MockClock
) -> None:
    response = await sim.client.post(f"/api/v1/{endpoint}", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"] == "application/json"
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]


async def test_bad_protobuf_and_unknown_ids_get_4xx(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    garbage = await sim.client.post(
        "/api/v1/forward_backward", content=b"\x0a\xff\xff\xff", headers={"Content-Type": PROTO}
    )
    assert garbage.status_code == 400 and "protobuf" in garbage.json()["detail"]
    missing_model = await sim.post("get_info", {"model_id": "sess-x:train:0", "type": "get_info"})
    assert missing_model.status_code == 404
    missing_future = await sim.post("retrieve_future", {"request_id": "nope"})
    assert missing_future.status_code == 404
    await sim.new_session()
    bad_base = await sim.post(
        "create_model", {"session_id": sim.session_id, "model_seq_id": 0, "base_model": "nope/model"}
    )
    assert bad_base.status_code == 400 and "nope/model" in bad_base.json()["detail"]
    bad_path = await sim.post("weights_info", {"tinker_path": "s3://bucket/x"})
    assert bad_path.status_code == 422 and "tinker://" in bad_path.json()["detail"]
    assert sim.app.status_counts[500] == 0


# -- training ----------------------------------------------------------------------------------------------------------


async def test_create_model_ids_and_get_info(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    session_id = await sim.new_session()
    model_id = await sim.new_model(seq=0, rank=4)
    assert model_id == f"{session_id}:train:0"
    second = await sim.new_model(seq=1)
    assert second == f"{session_id}:train:1"
    info = await sim.ok("get_info", {"model_id": model_id, "type": "get_info"})
    assert info["model_id"] == model_id and info["lora_rank"] == 4 and info["is_lora"] is True
    assert info["model_data"]["model_name"] == "Qwen/Qwen3-8B"
    assert info["optimizer_config"] == {"type": "adamw"}


async def test_training_loop_loss_falls_and_result_formats(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    await sim.new_session()
    model_id = await sim.new_model()
    data = _data()
    losses: list[float] = []
    seq = 0
    fwd: dict[str, Any] = {}
    for _ in range(6):
        seq += 1
        fwd = await sim.fwdbwd(model_id, seq, data)
        seq += 1
        opt = await sim.optim(model_id, seq)
        raw = await sim.result(fwd, protobuf=True)
        assert isinstance(raw, bytes)
        output = _codec.decode_forward_backward_output(raw)
        losses.append(output.metrics["loss:sum"])
        assert len(output.loss_fn_outputs) == len(data)
        metrics = (await sim.result(opt))["metrics"]
        assert metrics["learning_rate:mean"] == pytest.approx(0.05)
    assert losses[-1] < losses[0] * 0.5
    assert all(b < a for a, b in itertools.pairwise(losses))
    record = sim.app.state.models[model_id]
    assert record.steps_applied == 6 and record.forward_backward_applied == 6
    # The same future polled without protobuf in Accept: the JSON form of ForwardBackwardOutput.
    as_json = await sim.result(fwd)
    assert as_json["metrics"]["loss:sum"] == pytest.approx(losses[-1])
    logprobs = as_json["loss_fn_outputs"][0]["logprobs"]
    assert logprobs["dtype"] == "float32" and logprobs["shape"] == [len(PATTERN) - 1]


async def test_json_forward_backward_and_forward_only(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    await sim.new_session()
    model_id = await sim.new_model()
    data = [t.to_builtins(d) for d in _data(1)]
    body = {"model_id": model_id, "seq_id": 1, "forward_backward_input": {"data": data, "loss_fn": "cross_entropy"}}
    first = await sim.result(await sim.ok("forward_backward", body))
    record = sim.app.state.models[model_id]
    assert record.model is not None
    grads = record.model.gradients()
    assert np.count_nonzero(grads["lora_B"]) > 0
    forward_body = dict(body, seq_id=2, forward_only=True)
    forward = await sim.result(await sim.ok("forward_backward", forward_body))
    assert forward["metrics"]["loss:sum"] == pytest.approx(first["metrics"]["loss:sum"])
    assert record.forward_applied == 1 and record.forward_backward_applied == 1
    # forward() over protobuf too: neither forward-only request accumulated gradients.
    proto_fwd = await sim.result(await sim.fwdbwd(model_id, 3, _data(1), forward_only=True), protobuf=True)
    assert isinstance(proto_fwd, bytes)
    assert record.forward_applied == 2
    for name, grad in record.model.gradients().items():
        assert np.array_equal(grad, grads[name]), name


async def test_seq_ordering_waits_for_gaps(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    sim.app.config.long_poll_s = 5.0
    await sim.new_session()
    model_id = await sim.new_model()
    first = await sim.fwdbwd(model_id, 1, _data(1))
    third = await sim.optim(model_id, 3)
    response = await sim.poll(third)
    assert response.json()["type"] == "try_again"
    assert sim.app.state.models[model_id].applied_seq_ids == [1]
    second = await sim.fwdbwd(model_id, 2, _data(1))
    assert "metrics" in await sim.result(third)
    assert (await sim.result(second))["metrics"]["loss:sum"] > 0
    assert (await sim.result(first))["metrics"]["loss:sum"] > 0
    assert sim.app.state.models[model_id].applied_seq_ids == [1, 2, 3]


async def test_resend_is_idempotent(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    await sim.new_session()
    model_id = await sim.new_model()
    first = await sim.fwdbwd(model_id, 1, _data(1))
    again = await sim.fwdbwd(model_id, 1, _data(1))
    assert again["request_id"] == first["request_id"]
    step = await sim.optim(model_id, 2)
    step_again = await sim.optim(model_id, 2, lr=0.9)
    assert step_again["request_id"] == step["request_id"]
    await sim.result(step)
    late_again = await sim.optim(model_id, 2)
    assert late_again["request_id"] == step["request_id"]
    record = sim.app.state.models[model_id]
    assert record.steps_applied == 1 and record.forward_backward_applied == 1
    assert record.applied_seq_ids == [1, 2]
    # create_model re-sent with the same model_seq_id: the same future.
    create_again = await sim.ok(
        "create_model", {"session_id": sim.session_id, "model_seq_id": 0, "base_model": "Qwen/Qwen3-8B"}
    )
    assert create_again["model_id"] == model_id
    assert sim.app.queue.get(create_again["request_id"]) is not None


async def test_long_poll_try_again(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    sim.app.config.service.base_s = 100.0
    await sim.new_session()
    create = await sim.ok(
        "create_model", {"session_id": sim.session_id, "model_seq_id": 0, "base_model": "Qwen/Qwen3-8B"}
    )
    start = trio.current_time()
    response = await sim.poll(create)
    assert trio.current_time() - start == pytest.approx(30.0)
    body = response.json()
    assert body == {"type": "try_again", "request_id": create["request_id"], "queue_state": "active"}
    for _ in range(3):
        body = (await sim.poll(create)).json()
        if body.get("type") != "try_again":
            break
    assert body["model_id"] == create["model_id"]
    assert trio.current_time() - start == pytest.approx(100.0, abs=0.1)


async def test_queue_states_capacity_and_rate_limit(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    sim.app.config.service.base_s = 50.0
    sim.app.config.long_poll_s = 1.0
    sim.app.config.queue_capacity = 0
    await sim.new_session()
    create = await sim.ok(
        "create_model", {"session_id": sim.session_id, "model_seq_id": 0, "base_model": "Qwen/Qwen3-8B"}
    )
    body = (await sim.poll(create)).json()
    assert body["queue_state"] == "paused_capacity" and "capacity" in body["queue_state_reason"]
    sim.app.config.queue_capacity = 100
    sim.app.config.faults.paused_rate_limit = True
    await trio.sleep(60)  # the work finishes, but delivery is held back
    assert sim.app.queue.get(create["request_id"]) is not None
    body = (await sim.poll(create)).json()
    assert body["type"] == "try_again" and body["queue_state"] == "paused_rate_limit"
    sim.app.config.faults.paused_rate_limit = False
    assert (await sim.poll(create)).json()["model_id"] == create["model_id"]


async def test_complete_metadata_then_payload(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    sim.app.config.complete_metadata_threshold_bytes = 120
    await sim.new_session()
    model_id = await sim.new_model()
    fwd = await sim.fwdbwd(model_id, 1, _data(2))
    await trio.sleep(1)
    first: dict[str, Any] = {}
    for _ in range(5):
        first = (await sim.poll(fwd, protobuf=True, allow_metadata_only=True)).json()
        if first.get("type") != "try_again":
            break
    assert first["status"] == "complete_metadata"
    size: int = first["response_payload_size"]
    payload = await sim.poll(fwd, protobuf=True, allow_metadata_only=False)
    assert payload.headers["content-type"] == PROTO
    assert len(payload.content) == size > 120
    # Small results are answered in full even when metadata-only is allowed.
    step = await sim.optim(model_id, 2)
    await sim.result(step)
    small = (await sim.poll(step, allow_metadata_only=True)).json()
    assert "metrics" in small


async def test_failed_futures_have_categories(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    await sim.new_session()
    model_id = await sim.new_model()
    unknown_loss = await sim.result(await sim.fwdbwd(model_id, 1, _data(1), "no_such_loss"))
    assert unknown_loss["category"] == "user" and "no_such_loss" in unknown_loss["error"]
    missing_input = await sim.result(await sim.fwdbwd(model_id, 2, _data(1), "ppo"))
    assert missing_input["category"] == "user" and "advantages" in missing_input["error"]
    mismatched = [t.datum([1, 2, 3], target_tokens=[2, 3], weights=[1.0, 1.0])]
    shape = await sim.result(await sim.fwdbwd(model_id, 3, mismatched))
    assert shape["category"] == "user" and "shape" in shape["error"]
    sim.app.config.faults.future_failure_rate = 1.0
    injected = await sim.result(await sim.optim(model_id, 4))
    assert injected["category"] == "server"
    sim.app.config.faults.future_failure_rate = 0.0
    ok = await sim.result(await sim.optim(model_id, 5))
    assert "metrics" in ok
    record = sim.app.state.models[model_id]
    assert record.forward_backward_applied == 0 and record.steps_applied == 1


# -- checkpoints -------------------------------------------------------------------------------------------------------


async def test_checkpoint_save_and_load_restore_exactly(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    await sim.new_session()
    model_id = await sim.new_model()
    await sim.result(await sim.fwdbwd(model_id, 1, _data()))
    await sim.result(await sim.optim(model_id, 2))
    saved = await sim.result(await sim.ok("save_weights", {"model_id": model_id, "path": "ckpt", "seq_id": 3}))
    path = saved["path"]
    assert path == f"tinker://{model_id}/weights/ckpt"
    record = sim.app.state.models[model_id]
    assert record.model is not None
    before = record.model.state_dict()
    # Train further, then load the checkpoint back in place (weights and optimizer state).
    await sim.result(await sim.fwdbwd(model_id, 4, _data()))
    await sim.result(await sim.optim(model_id, 5, lr=0.5))
    assert not np.array_equal(record.model.state_dict()["param.lora_B"], before["param.lora_B"])
    load = {"model_id": model_id, "seq_id": 6, "path": path, "optimizer": True, "type": "load_weights"}
    loaded = await sim.result(await sim.ok("load_weights", load))
    assert loaded["path"] == path
    after = record.model.state_dict()
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert np.array_equal(value, after[name]), name
    # Create-via-load: the model id is built from (session_id, model_seq_id).
    create = {"session_id": sim.session_id, "model_seq_id": 1, "path": path, "optimizer": True}
    future = await sim.ok("load_weights", create)
    assert future["model_id"] == f"{sim.session_id}:train:1"
    assert (await sim.result(future))["model_id"] == future["model_id"]
    clone = sim.app.state.models[future["model_id"]].model
    assert clone is not None
    for name, value in before.items():
        assert np.array_equal(value, clone.state_dict()[name]), name
    # Saving under an existing name without overwrite fails the future (user error).
    again = await sim.result(await sim.ok("save_weights", {"model_id": model_id, "path": "ckpt", "seq_id": 7}))
    assert again["category"] == "user" and "exists" in again["error"]
    missing = await sim.post("load_weights", dict(load, seq_id=8, path=f"tinker://{model_id}/weights/none"))
    assert missing.status_code == 404


async def test_rest_training_runs_and_checkpoints(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    await sim.new_session()
    model_id = await sim.new_model()
    path = (await sim.result(await sim.ok("save_weights", {"model_id": model_id, "path": "a", "seq_id": 1})))["path"]
    spath = (
        await sim.result(await sim.ok("save_weights_for_sampler", {"model_id": model_id, "path": "s", "seq_id": 2}))
    )["path"]
    assert spath == f"tinker://{model_id}/sampler_weights/s"
    runs = (await sim.client.get("/api/v1/training_runs", params={"limit": 20, "offset": 0})).json()
    assert runs["cursor"] == {"offset": 0, "limit": 20, "total_count": 1}
    run = (await sim.client.get(f"/api/v1/training_runs/{model_id}", params={"access_scope": "owned"})).json()
    assert run["training_run_id"] == model_id and run["last_checkpoint"]["tinker_path"] == path
    assert run["last_sampler_checkpoint"]["tinker_path"] == spath
    listed = (await sim.client.get(f"/api/v1/training_runs/{model_id}/checkpoints")).json()
    assert [c["checkpoint_id"] for c in listed["checkpoints"]] == ["weights/a", "sampler_weights/s"]
    assert {c["checkpoint_type"] for c in listed["checkpoints"]} == {"training", "sampler"}
    user = (await sim.client.get("/api/v1/checkpoints", params={"limit": 1, "offset": 1})).json()
    assert [c["tinker_path"] for c in user["checkpoints"]] == [spath] and user["cursor"]["total_count"] == 2
    base = f"/api/v1/training_runs/{model_id}/checkpoints/weights/a"
    assert (await sim.client.post(f"{base}/publish")).status_code == 200
    assert sim.app.state.models[model_id].checkpoints["weights/a"].public is True
    assert (await sim.client.delete(f"{base}/publish")).status_code == 200
    assert sim.app.state.models[model_id].checkpoints["weights/a"].public is False
    assert (await sim.client.put(f"{base}/ttl", json={"ttl_seconds": 7200})).status_code == 200
    assert sim.app.state.models[model_id].checkpoints["weights/a"].expires_at is not None
    assert (await sim.client.put(f"{base}/ttl", json={"ttl_seconds": -1})).status_code == 422
    info = await sim.ok("weights_info", {"tinker_path": path})
    assert info["base_model"] == "Qwen/Qwen3-8B" and info["lora_rank"] == 4 and info["is_lora"] is True
    assert (await sim.client.delete(base)).status_code == 200
    assert (await sim.client.delete(base)).status_code == 404
    left = (await sim.client.get(f"/api/v1/training_runs/{model_id}/checkpoints")).json()
    assert [c["checkpoint_id"] for c in left["checkpoints"]] == ["sampler_weights/s"]
    assert (await sim.client.get("/api/v1/training_runs/nope")).status_code == 404
    external = await sim.result(await sim.ok("save_weights_external", {"model_id": model_id, "path": "x", "seq_id": 3}))
    assert external["path"] == f"tinker://{model_id}/external_weights/x" and external["size_bytes"] > 0
    urls = await sim.client.get(
        f"/api/v1/training_runs/{model_id}/checkpoints/external_weights/x/external_weights_urls"
    )
    assert urls.status_code == 200 and urls.json()["urls"] and urls.json()["expires"]
    not_external = await sim.client.get(
        f"/api/v1/training_runs/{model_id}/checkpoints/sampler_weights/s/external_weights_urls"
    )
    assert not_external.status_code == 404
    assert (await sim.client.get("/api/v1/checkpoints", params={"limit": "x"})).status_code == 422


# -- sampling ----------------------------------------------------------------------------------------------------------


def _sample_body(sampler_id: str, seq_id: int, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3]}]},
        "sampling_params": {"max_tokens": 6, "temperature": 0.0, "stop": []},
        "sampling_session_id": sampler_id,
        "seq_id": seq_id,
        "num_samples": 2,
        "type": "sample",
    }
    body.update(extra)
    return body


async def test_sampling_after_training(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    session_id = await sim.new_session()
    model_id = await sim.new_model()
    for step in range(8):
        await sim.fwdbwd(model_id, 2 * step + 1, _data())
        await sim.result(await sim.optim(model_id, 2 * step + 2, lr=0.1))
    save = {"model_id": model_id, "seq_id": 17, "sampling_session_seq_id": 0, "kind": "snapshot"}
    sampler_id = (await sim.result(await sim.ok("save_weights_for_sampler", save)))["sampling_session_id"]
    assert sampler_id == f"{session_id}:sample:0"
    future = await sim.ok("asample", _sample_body(sampler_id, 0, prompt_logprobs=True))
    ids = future["sample_sequence_ids"]
    assert len(ids) == 2 and len(set(ids)) == 2
    raw = await sim.result(future, protobuf=True)
    assert isinstance(raw, bytes)
    response = _codec.decode_sample_response(raw, ids)
    assert [s.tokens for s in response.sequences] == [[4, 5, 6, 7, 8, 1]] * 2
    assert [s.sequence_id for s in response.sequences] == ids
    assert response.prompt_logprobs is not None and response.prompt_logprobs[0] is None
    as_json = await sim.result(future)
    assert as_json["sequences"][0]["tokens"] == [4, 5, 6, 7, 8, 1]
    assert as_json["sequences"][1]["sequence_id"] == ids[1]
    # Re-sent sample (same seq_id): the same future.
    again = await sim.ok("asample", _sample_body(sampler_id, 0))
    assert again["request_id"] == future["request_id"]
    sampler = await sim.client.get(f"/api/v1/samplers/{sampler_id}")
    assert sampler.json() == {"sampler_id": sampler_id, "base_model": "Qwen/Qwen3-8B"}
    bad = await sim.result(await sim.ok("asample", _sample_body(sampler_id, 1, num_samples=0)))
    assert bad["category"] == "user"


async def test_sampling_sessions_from_base_and_path(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    session_id = await sim.new_session()
    model_id = await sim.new_model()
    spath = (
        await sim.result(await sim.ok("save_weights_for_sampler", {"model_id": model_id, "path": "s", "seq_id": 1}))
    )["path"]
    from_path = await sim.ok(
        "create_sampling_session", {"session_id": session_id, "sampling_session_seq_id": 1, "model_path": spath}
    )
    assert from_path["sampling_session_id"] == f"{session_id}:sample:1"
    info = (await sim.client.get(f"/api/v1/samplers/{from_path['sampling_session_id']}")).json()
    assert info["model_path"] == spath and info["base_model"] == "Qwen/Qwen3-8B"
    from_base = await sim.ok(
        "create_sampling_session",
        {"session_id": session_id, "sampling_session_seq_id": 2, "base_model": "meta-llama/Llama-3.2-1B"},
    )
    body = _sample_body(from_base["sampling_session_id"], 0)
    body["sampling_params"] = {"max_tokens": 4, "seed": 3}
    first = await sim.result(await sim.ok("asample", body))
    second = await sim.result(await sim.ok("asample", dict(body, seq_id=1)))
    assert first["sequences"][0]["tokens"] == second["sequences"][0]["tokens"]  # same seed
    joined = await sim.ok("join_sampling_session", {"sampling_session_id": from_base["sampling_session_id"]})
    assert joined["client_counter"] == 1
    detail = (await sim.client.get(f"/api/v1/sessions/{session_id}")).json()
    assert detail["sampler_ids"] == [from_path["sampling_session_id"], from_base["sampling_session_id"]]
    assert detail["training_run_ids"] == [model_id]
    missing = await sim.post("asample", _sample_body(f"{session_id}:sample:99", 0))
    assert missing.status_code == 404


async def test_inflight_sampler_follows_later_saves(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    await sim.new_session()
    model_id = await sim.new_model()
    save = {"model_id": model_id, "seq_id": 1, "sampling_session_seq_id": 0, "kind": "inflight"}
    sampler_id = (await sim.result(await sim.ok("save_weights_for_sampler", save)))["sampling_session_id"]
    before = await sim.result(await sim.ok("asample", _sample_body(sampler_id, 0)))
    for step in range(8):
        await sim.fwdbwd(model_id, 2 * step + 2, _data())
        await sim.result(await sim.optim(model_id, 2 * step + 3, lr=0.1))
    save2 = {"model_id": model_id, "seq_id": 18, "sampling_session_seq_id": 1, "kind": "inflight"}
    await sim.result(await sim.ok("save_weights_for_sampler", save2))
    after = await sim.result(await sim.ok("asample", _sample_body(sampler_id, 1)))
    assert after["sequences"][0]["tokens"] == [4, 5, 6, 7, 8, 1]
    assert before["sequences"][0]["tokens"] != after["sequences"][0]["tokens"]


async def test_retrieve_futures_and_cancel(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    sim.app.config.service.base_s = 5.0
    session_id = await sim.new_session()
    created = await sim.ok(
        "create_sampling_session",
        {"session_id": session_id, "sampling_session_seq_id": 0, "base_model": "Qwen/Qwen3-8B"},
    )
    sampler_id = created["sampling_session_id"]
    sim.app.config.service.workers_per_model = 1
    first = await sim.ok("asample", _sample_body(sampler_id, 0))
    second = await sim.ok("asample", _sample_body(sampler_id, 1))
    cancel = await sim.ok("cancel_future", {"request_id": second["request_id"]})
    assert cancel["cancelled"] is True
    target = {"type": "sampling_session", "sampling_session_id": sampler_id, "cloned_sampler_id": 0}
    ack_only = await sim.ok("retrieve_futures", {"target": target, "prev_cursor": 0, "timeout": 0})
    assert ack_only["completions"] == [{"state": "failed", "request_id": second["request_id"]}]
    polled = await sim.ok("retrieve_futures", {"target": target, "prev_cursor": ack_only["cursor"]})
    assert [c["request_id"] for c in polled["completions"]] == [first["request_id"]]
    finished = polled["completions"][0]
    assert finished["state"] == "finished"
    payload = await sim.poll(first, protobuf=True)
    assert len(payload.content) == finished["response_payload_uncompressed_size"]
    cancelled = await sim.result(second)
    assert cancelled["category"] == "user" and "cancel" in cancelled["error"]


async def test_asample_backpressure(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    sim.app.config.service.base_s = 10.0
    sim.app.config.service.workers_per_model = 1
    sim.app.config.queue_capacity = 1
    session_id = await sim.new_session()
    created = await sim.ok(
        "create_sampling_session",
        {"session_id": session_id, "sampling_session_seq_id": 0, "base_model": "Qwen/Qwen3-8B"},
    )
    sampler_id = created["sampling_session_id"]
    header = {"X-Tinker-Sampling-Backpressure": "1"}
    assert (await sim.post("asample", _sample_body(sampler_id, 0), headers=header)).status_code == 200
    await trio.sleep(1)  # the first sample is running now, not queued
    assert (await sim.post("asample", _sample_body(sampler_id, 1), headers=header)).status_code == 200
    assert sim.app.queue.queued_count == 1
    without_header = await sim.post("asample", _sample_body(sampler_id, 5))
    assert without_header.status_code == 200
    refused = await sim.post("asample", _sample_body(sampler_id, 2), headers=header)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    await trio.sleep(30)
    accepted = await sim.post("asample", _sample_body(sampler_id, 2), headers=header)
    assert accepted.status_code == 200


# -- futures bookkeeping and lifecycle ---------------------------------------------------------------------------------


async def test_expired_futures_answer_410(sim: Sim, autojump_clock: trio.testing.MockClock) -> None:
    sim.app.config.max_retained_futures = 2
    await sim.new_session()
    model_id = await sim.new_model()
    futures = [await sim.optim(model_id, seq) for seq in range(1, 5)]
    await sim.result(futures[-1])
    gone = await sim.poll(futures[0])
    assert gone.status_code == 410 and "expired" in gone.json()["detail"]


async def test_lifespan_runs_the_queue(autojump_clock: trio.testing.MockClock) -> None:
    app = create_app(_config())
    to_app, app_inbox = trio.open_memory_channel[dict[str, Any]](4)
    app_outbox, from_app = trio.open_memory_channel[dict[str, Any]](4)

    async def receive() -> dict[str, Any]:
        return await app_inbox.receive()

    async def send(message: Any) -> None:
        await app_outbox.send(dict(message))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, {"type": "lifespan"}, receive, send)
        await to_app.send({"type": "lifespan.startup"})
        assert (await from_app.receive())["type"] == "lifespan.startup.complete"
        assert app.lifespan_running
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://s", headers=KEY) as client:
            sim = Sim(app, client)
            await sim.new_session()
            await sim.new_model()
        await to_app.send({"type": "lifespan.shutdown"})
        assert (await from_app.receive())["type"] == "lifespan.shutdown.complete"
    assert not app.lifespan_running


async def test_running_helper(autojump_clock: trio.testing.MockClock) -> None:
    app = create_app(_config())
    async with (
        app.running(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://s", headers=KEY) as client,
    ):
        sim = Sim(app, client)
        await sim.new_session()
        model_id = await sim.new_model()
        assert (await sim.result(await sim.optim(model_id, 1)))["metrics"]


async def test_lifespan_cancelled_without_shutdown_leaves_a_working_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = create_app(_config())
    to_app, app_inbox = trio.open_memory_channel[dict[str, Any]](4)
    app_outbox, from_app = trio.open_memory_channel[dict[str, Any]](4)

    async def receive() -> dict[str, Any]:
        return await app_inbox.receive()

    async def send(message: Any) -> None:
        await app_outbox.send(dict(message))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, {"type": "lifespan"}, receive, send)
        await to_app.send({"type": "lifespan.startup"})
        assert (await from_app.receive())["type"] == "lifespan.startup.complete"
        nursery.cancel_scope.cancel()
    assert not app.lifespan_running
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://s", headers=KEY) as client:
        sim = Sim(app, client)
        await sim.new_session()
        model_id = await sim.new_model()
        assert (await sim.result(await sim.optim(model_id, 1)))["metrics"]


async def test_rejected_sequenced_request_uses_up_its_seq_id(autojump_clock: trio.testing.MockClock) -> None:
    await_limit = 5.0
    app = create_app(_config(seq_gap_timeout_s=1000.0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://s", headers=KEY) as client:
        sim = Sim(app, client)
        await sim.new_session()
        model_id = await sim.new_model()
        bad = await sim.post("save_weights", {"model_id": model_id, "path": "a/b", "seq_id": 1})
        assert bad.status_code == 422 and "invalid checkpoint name" in bad.json()["detail"]
        step = await sim.optim(model_id, 2)
        start = trio.current_time()
        assert "metrics" in await sim.result(step)
        assert trio.current_time() - start < await_limit  # did not wait for the gap timeout
        # The rejected seq_id re-sent: a future that fails as the user's error.
        again = await sim.ok("save_weights", {"model_id": model_id, "path": "ok", "seq_id": 1})
        failed = await sim.result(again)
        assert failed["category"] == "user" and "invalid checkpoint name" in failed["error"]
        assert app.state.models[model_id].applied_seq_ids == [2]
