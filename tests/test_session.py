"""open_session and Session: bootstrap, heartbeats, finish reasons, the one nursery, errors at the public boundary.

Unit tests run the simulator in process (httpx.ASGITransport) under trio's MockClock; the last tests run it on a real
TLS loopback socket (hypercorn, trustme CA) with the real clock.
"""

# pyright: reportPrivateUsage=false

from __future__ import annotations

import logging
from collections.abc import Iterator

import msgspec
import pytest
import trio
import trio.lowlevel
import trio.testing
from _simkit import (
    API_KEY,
    BASE_URL,
    Reply,
    SimStack,
    decode_create_model,
    drain,
    sim_config,
    sim_stack,
    submit_create_model,
)

from tinkex_trio import types as t
from tinkex_trio._config import Config, TimeoutsConfig
from tinkex_trio._rest import RestClient
from tinkex_trio._sampling import SamplingClient
from tinkex_trio._session import SDK_VERSION, open_session
from tinkex_trio._telemetry import SESSION_HEARTBEAT
from tinkex_trio._training import TrainingClient
from tinkex_trio.errors import (
    AuthenticationError,
    ConfigError,
    NotFoundError,
    SessionClosedError,
    SessionExpiredError,
)
from tinkex_trio.sim import Latency, open_sim_server
from tinkex_trio.sim._config import ServiceTime


def finished(sim: SimStack) -> tuple[str | None, str | None]:
    """The finish reason and detail the simulator recorded for its one session."""
    [record] = sim.app.state.sessions.values()
    return record.finished, record.finish_detail


def all_tasks() -> Iterator[trio.lowlevel.Task]:
    root = trio.lowlevel.current_root_task()
    assert root is not None
    stack = [root]
    while stack:
        task = stack.pop()
        yield task
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)


def our_tasks() -> list[str]:
    return [task.name for task in all_tasks() if task.name.startswith("tinkex_trio.")]


# -- bootstrap -------------------------------------------------------------------------------------------------------


async def test_bootstrap_sequence(autojump_clock: trio.testing.MockClock) -> None:
    config = sim_config(client_config={"fwdbwd_max_chunk_len": 7}, dynamic_config={"sample_cancel_enabled": True})
    async with (
        sim_stack(config) as sim,
        sim.session(tags=["exp", "lr-sweep"], user_metadata={"owner": "me", "n": 3}) as session,
    ):
        assert sim.rec.endpoints() == ["client/config", "client/dynamic_config", "create_session"]
        cfg_req, dyn_req, create_req = sim.rec.seen
        assert cfg_req.json() == {"sdk_version": SDK_VERSION}
        assert dyn_req.json() == {"sdk_version": SDK_VERSION}
        assert create_req.json() == {
            "type": "create_session",
            "sdk_version": SDK_VERSION,
            "tags": ["exp", "lr-sweep"],
            "user_metadata": {"owner": "me", "n": 3},
        }
        assert all(s.headers["x-api-key"] == API_KEY for s in sim.rec.seen)
        record = sim.app.state.session(session.session_id)
        assert record.tags == ["exp", "lr-sweep"]
        assert record.user_metadata == {"owner": "me", "n": 3}
        assert session.client_config.fwdbwd_max_chunk_len == 7
        assert session.dynamic_config.sample_cancel_enabled is True
        assert session.config.base_url == BASE_URL
        assert session.telemetry is session._transport.telemetry


async def test_config_tags_and_project_are_sent(autojump_clock: trio.testing.MockClock) -> None:
    config = Config.create(API_KEY, BASE_URL, tags=("from-config",), project_id="proj-1")
    async with sim_stack() as sim, sim.session(config=config) as session:
        assert sim.rec.requests("create_session")[0].json()["tags"] == ["from-config"]
        assert sim.rec.requests("create_session")[0].json()["project_id"] == "proj-1"
        assert sim.app.state.session(session.session_id).project_id == "proj-1"
    async with sim_stack() as sim, sim.session(config=config, tags=["override"]) as session:
        assert sim.app.state.session(session.session_id).tags == ["override"]


async def test_dynamic_config_404_means_defaults(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config(dynamic_config_enabled=False)) as sim, sim.session() as session:
        assert session.dynamic_config == t.ClientDynamicConfigResponse()
        assert [s.status for s in sim.rec.seen] == [200, 404, 200]


async def test_client_config_is_mandatory(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim:
        sim.rec.script("client/config", Reply(status=404, body={"detail": "no"}))
        with pytest.raises(NotFoundError):
            async with sim.session():
                pytest.fail("the session must not open")  # pragma: no cover
        assert sim.rec.endpoints() == ["client/config"]
        assert our_tasks() == []


async def test_bad_key_fails_before_any_request(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim:
        with pytest.raises(ConfigError) as info:
            async with open_session("not-a-key", BASE_URL, transport_factory=sim.transport_factory):
                pytest.fail("the session must not open")  # pragma: no cover
        assert "not-a-key" not in str(info.value)
        assert sim.rec.seen == []


async def test_refused_key_is_an_authentication_error(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim:
        sim.rec.script("client/config", Reply(status=401, body={"detail": "who are you"}))
        with pytest.raises(AuthenticationError):
            async with sim.session():
                pytest.fail("the session must not open")  # pragma: no cover


# -- heartbeats ------------------------------------------------------------------------------------------------------


async def test_heartbeat_every_interval(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        rx = session.telemetry.subscribe(events=SESSION_HEARTBEAT)
        opened = trio.current_time()
        await trio.sleep(55)
        beats = sim.rec.requests("session_heartbeat")
        assert [round(b.at - opened, 6) for b in beats] == [10, 20, 30, 40, 50]
        assert sim.app.state.session(session.session_id).heartbeats == 5
        assert beats[0].json() == {"type": "session_heartbeat", "session_id": session.session_id}
        events = drain(rx)
        assert [e.metadata["ok"] for e in events] == [True] * 5
        assert all(e.metadata["session_id"] == session.session_id for e in events)


async def test_heartbeat_interval_from_config(autojump_clock: trio.testing.MockClock) -> None:
    config = Config.create(API_KEY, BASE_URL, heartbeat_interval_s=3.0)
    async with sim_stack() as sim, sim.session(config=config):
        await trio.sleep(31)
        assert len(sim.rec.requests("session_heartbeat")) == 10


async def test_heartbeat_410_expires_the_session(autojump_clock: trio.testing.MockClock) -> None:
    config = sim_config()
    config.faults.heartbeat_410 = True
    async with sim_stack(config) as sim:
        async with sim.session() as session:
            rx = session.telemetry.subscribe(events=SESSION_HEARTBEAT)
            await session.get_server_capabilities()  # alive before the heartbeat
            await trio.sleep(10.5)
            with pytest.raises(SessionExpiredError, match="410"):
                await session.get_server_capabilities()
            with pytest.raises(SessionExpiredError):
                await session.create_lora_training_client("Qwen/Qwen3-8B")
            await trio.sleep(60)
            assert len(sim.rec.requests("session_heartbeat")) == 1  # the loop stopped
            [event] = drain(rx)
            assert event.metadata == {
                "session_id": session.session_id,
                "ok": False,
                "status": 410,
                "error": "GoneError",
                "expired": True,
            }
            assert "expired" in repr(session)
        # The server has forgotten the session: no finish is sent, and leaving the block is not an error.
        assert sim.rec.requests(f"sessions/{session.session_id}/finish") == []


async def test_heartbeat_failures_are_logged_not_fatal(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = sim_config()
    config.faults.set_endpoint("session_heartbeat", error_rates={503: 1.0})
    caplog.set_level(logging.INFO, logger="tinkex_trio.session")
    async with sim_stack(config) as sim, sim.session() as session:
        rx = session.telemetry.subscribe(events=SESSION_HEARTBEAT)
        await trio.sleep(135)
        config.faults.clear_endpoint("session_heartbeat")
        await trio.sleep(10)
        events = drain(rx)
        assert [e.metadata["ok"] for e in events] == [False] * 13 + [True]
        assert events[0].metadata["status"] == 503 and events[0].metadata["error"] == "InternalServerError"
        assert [s.status for s in sim.rec.requests("session_heartbeat")] == [503] * 13 + [200]  # no retries
        assert (await session.get_server_capabilities()).supported_models
    failures = [r for r in caplog.records if "heartbeat failed" in r.getMessage()]
    assert len(failures) == 13
    # INFO at first, WARNING once 120 s have passed without a success.
    assert [r.levelno for r in failures] == [logging.INFO] * 11 + [logging.WARNING] * 2
    assert all(API_KEY not in r.getMessage() for r in caplog.records)


# -- finish reasons --------------------------------------------------------------------------------------------------


async def test_finish_success(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim:
        async with sim.session() as session:
            pass
        assert finished(sim) == ("success", None)
        [req] = sim.rec.requests(f"sessions/{session.session_id}/finish")
        assert req.json() == {"reason": {"type": "success"}, "detail": None}


async def test_finish_errored_and_the_exception_comes_out_as_itself(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim:
        with pytest.raises(ValueError, match="bad data") as info:
            async with sim.session():
                raise ValueError(f"bad data for {API_KEY}")
        assert type(info.value) is ValueError
        reason, detail = finished(sim)
        assert reason == "errored"
        assert detail is not None and detail.startswith("ValueError: bad data")
        assert API_KEY not in detail


class MyGroup(ExceptionGroup[Exception]):
    """A subclass without ``derive``: a rebuilt copy would be a plain ExceptionGroup."""


async def test_user_exception_group_comes_out_as_itself(autojump_clock: trio.testing.MockClock) -> None:
    mine = MyGroup("mine", [KeyError("a"), KeyError("b")])
    async with sim_stack() as sim:
        with pytest.raises(MyGroup) as info:
            async with sim.session():
                raise mine
        assert info.value is mine
        assert finished(sim)[0] == "errored"


async def test_finish_interrupted_on_cancellation(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim:
        with trio.move_on_after(25) as scope:
            async with sim.session():
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert finished(sim) == ("interrupted", "Cancelled")
        assert our_tasks() == []


async def test_finish_interrupted_on_keyboard_interrupt(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim:
        with pytest.raises(KeyboardInterrupt):
            async with sim.session():
                raise KeyboardInterrupt
        assert finished(sim) == ("interrupted", "KeyboardInterrupt")


async def test_finish_is_bounded_in_time(autojump_clock: trio.testing.MockClock) -> None:
    config = Config.create(API_KEY, BASE_URL, timeouts=TimeoutsConfig(finish_s=4.0))
    async with sim_stack() as sim:
        async with sim.session(config=config) as session:
            sim.rec.script(f"sessions/{session.session_id}/finish", Reply(delay=1000.0, body={}))
            left = trio.current_time()
        assert trio.current_time() - left == pytest.approx(4.0)
        assert len(sim.rec.requests(f"sessions/{session.session_id}/finish")) == 1
        assert our_tasks() == []


async def test_finish_failure_does_not_fail_the_exit(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with sim_stack() as sim:
        async with sim.session() as session:
            sim.rec.script(f"sessions/{session.session_id}/finish", Reply(status=403, body={"detail": "no"}))
        assert finished(sim) == (None, None)
        assert any("finish (success) failed" in r.getMessage() for r in caplog.records)


# -- background tasks ------------------------------------------------------------------------------------------------


async def test_lone_background_failure_is_not_an_exception_group(autojump_clock: trio.testing.MockClock) -> None:
    async def broken() -> None:
        await trio.sleep(3)
        raise RuntimeError("background task broke")

    async with sim_stack() as sim:
        with pytest.raises(RuntimeError, match="background task broke") as info:
            async with sim.session() as session:
                session._ctx.spawn(broken, "tinkex_trio.test.broken")
                await trio.sleep_forever()
        assert type(info.value) is RuntimeError
        assert info.value.__context__ is None
        reason, detail = finished(sim)
        assert reason == "errored"
        assert detail == "RuntimeError: background task broke"
        assert our_tasks() == []


async def test_no_task_outlives_the_session(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config(service=ServiceTime(base_s=500.0))) as sim:
        assert our_tasks() == []
        async with sim.session() as session:
            reply = await submit_create_model(session)
            fut = session._ctx.futures.track(reply, "CreateModel", decode_create_model)
            await trio.sleep(1)
            running = our_tasks()
            assert "tinkex_trio.session.heartbeat" in running
            assert f"tinkex_trio.future:{fut.request_id}" in running
        assert our_tasks() == []
        assert fut.done()
        with pytest.raises(SessionClosedError):
            await fut.result()
        with pytest.raises(SessionClosedError):
            await session.get_server_capabilities()
        assert "closed" in repr(session)
        with pytest.raises(SessionClosedError):
            session._ctx.spawn(trio.sleep_forever, "tinkex_trio.test.late")
        requests_at_exit = len(sim.rec.seen)
        await trio.sleep(100)
        assert len(sim.rec.seen) == requests_at_exit  # nothing polls or beats any more


# -- the Session object ----------------------------------------------------------------------------------------------


async def test_session_api(autojump_clock: trio.testing.MockClock) -> None:
    sim_cfg = sim_config(service=ServiceTime(base_s=0.5))
    async with sim_stack(sim_cfg) as sim, sim.session() as session:
        assert API_KEY not in repr(session) and session.session_id in repr(session)
        caps = await session.get_server_capabilities()
        assert "Qwen/Qwen3-8B" in [m.model_name for m in caps.supported_models]
        assert sim.rec.requests("get_server_capabilities")[0].headers["x-sdk-method"] == (
            "Session.get_server_capabilities"
        )
        assert isinstance(session.rest, RestClient) and session.rest is session.rest

        trainer = await session.create_lora_training_client("Qwen/Qwen3-8B", rank=4, seed=1)
        assert isinstance(trainer, TrainingClient)
        assert trainer.model_id == f"{session.session_id}:train:0"
        body = sim.rec.requests("create_model")[0].json()
        assert body["model_seq_id"] == 0 and body["lora_config"]["rank"] == 4 and body["lora_config"]["seed"] == 1

        path = await trainer.save_state("ckpt")
        restored = await session.create_training_client_from_state(path, with_optimizer=False)
        assert restored.model_id == f"{session.session_id}:train:1"
        assert sim.rec.requests("load_weights")[0].json()["optimizer"] is False

        sampler = await session.create_sampling_client(base_model="Qwen/Qwen3-8B")
        assert isinstance(sampler, SamplingClient)
        assert sim.rec.requests("create_sampling_session")[0].json()["sampling_session_seq_id"] == 0

    assert session._ctx.next_model_seq_id() == 2
    assert session._ctx.next_sampling_session_seq_id() == 1
    assert [session._ctx.next_custom_loss_seq_id() for _ in range(2)] == [0, 1]


# -- over TLS loopback -----------------------------------------------------------------------------------------------


async def test_integration_over_tls_loopback() -> None:
    config = sim_config(service=ServiceTime(base_s=0.01))
    config.compute_in_threads = True
    with trio.fail_after(60):
        async with open_sim_server(config, tls=True) as server:
            assert server.base_url.startswith("https://127.0.0.1:")
            async with open_session(
                API_KEY, server.base_url, tags=["tls"], ssl_context=server.client_ssl_context()
            ) as session:
                caps = await session.get_server_capabilities()
                assert caps.supported_models
                trainer = await session.create_lora_training_client("Qwen/Qwen3-8B", rank=2)
                assert trainer.model_id.startswith(session.session_id)
            assert server.stats.requests[("client/config", 200)] == 1
            assert server.stats.requests[("create_session", 200)] == 1
            assert server.stats.requests[("sessions/{id}/finish", 200)] == 1
            assert server.stats.requests[("retrieve_future", 200)] >= 1
            assert set(server.stats.http_versions) == {"2"}  # HTTP/2 through ALPN


async def test_integration_errored_over_tls_loopback() -> None:
    with trio.fail_after(60):
        async with open_sim_server(sim_config(service=ServiceTime(base_s=0.01)), tls=True) as server:
            with pytest.raises(ZeroDivisionError):
                async with open_session(API_KEY, server.base_url, ssl_context=server.client_ssl_context()):
                    _ = 1 / 0
            assert server.stats.requests[("sessions/{id}/finish", 200)] == 1


async def test_heartbeat_timeout_over_tls_loopback() -> None:
    """A heartbeat the server holds for 5 s fails after the 0.3 s heartbeat timeout, without a retry.

    No sleeping: the test waits for the first two heartbeat events, bounded by a deadline."""
    sim_cfg = sim_config(service=ServiceTime(base_s=0.01))
    sim_cfg.faults.set_endpoint("session_heartbeat", latency=Latency.fixed(5.0))
    config = Config.create(API_KEY, "https://placeholder.invalid", heartbeat_interval_s=0.5)
    config = msgspec.structs.replace(config, timeouts=TimeoutsConfig(heartbeat_s=0.3))
    with trio.fail_after(60):
        async with open_sim_server(sim_cfg, tls=True) as server:
            async with open_session(
                base_url=server.base_url, config=config, ssl_context=server.client_ssl_context()
            ) as session:
                rx = session.telemetry.subscribe(events=SESSION_HEARTBEAT)
                events = [await rx.receive(), await rx.receive()]
                assert session._check_alive() is None  # failures are not fatal
            assert [e.metadata["error"] for e in events] == ["APITimeoutError"] * 2
            # each beat gave up after its own timeout, long before the server's 5 s hold ended
            assert all(0.3 <= e.measurements["duration_ms"] / 1000 < 5.0 for e in events)
            # One attempt per beat (a third beat may have started while the session was closing).
            assert 2 <= server.stats.faults[("latency", "session_heartbeat")] <= 3
