"""What a user of the official SDK reaches for: client-side custom losses, the weights operations (save_state's
overwrite and metadata, save_weights_external, copy_weights, load_state_with_optimizer), and whoami; each against the
simulator in process under trio's MockClock, with the server's state checked."""

from __future__ import annotations

import base64
import importlib.util
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import httpx
import numpy as np
import pytest
import trio
import trio.testing
from _simkit import API_KEY, BASE_URL, PATTERN, Reply, SimStack, pattern_batch, sim_config, sim_stack

from tinkex_trio import types as t
from tinkex_trio._config import BatchingConfig, Config, RetryConfig
from tinkex_trio._rest import whoami_from_jwt
from tinkex_trio._session import Session
from tinkex_trio._training import TrainingClient
from tinkex_trio.errors import (
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    RequestFailedError,
    SequenceInDoubtError,
    TrainingHaltedError,
)

BASE = "Qwen/Qwen3-8B"


data = pattern_batch


def weights_of(datum: t.Datum) -> np.ndarray[Any, Any]:
    return datum.loss_fn_inputs["weights"].to_numpy()


@pytest.fixture
async def sim() -> AsyncGenerator[SimStack]:
    # pytest-trio takes the clock from the test's own arguments: tests using this fixture also ask for autojump_clock.
    async with sim_stack(sim_config()) as stack:
        yield stack


async def _trainer(session: Session, seed: int = 3) -> TrainingClient:
    return await session.create_lora_training_client(BASE, rank=4, seed=seed)


def cross_entropy_as_custom(batch: list[t.Datum], logprobs: list[np.ndarray[Any, Any]]) -> Any:
    """The built-in cross_entropy, written as a custom loss: C = -sum(w * logprobs), dC/dlogprobs = -w."""
    loss = -sum(float(np.sum(weights_of(d) * lp)) for d, lp in zip(batch, logprobs, strict=True))
    grads = [-weights_of(d) for d in batch]
    return loss, {"custom:mean": 1.5}, grads


async def test_a_custom_loss_equal_to_cross_entropy_trains_as_cross_entropy(
    sim: SimStack, autojump_clock: object
) -> None:
    adam = t.AdamParams(learning_rate=0.05)
    async with sim.session() as session:
        builtin, custom = await _trainer(session), await _trainer(session)
        expected = await builtin.forward_backward(data(), "cross_entropy")
        got = await custom.forward_backward_custom(data(), cross_entropy_as_custom)
        # loss:sum is the custom loss; the server's surrogate (the same here) is kept beside it.
        assert got.metrics["loss:sum"] == pytest.approx(expected.metrics["loss:sum"], rel=1e-5)
        assert got.metrics["surrogate_loss:sum"] == pytest.approx(expected.metrics["loss:sum"], rel=1e-5)
        assert got.metrics["custom:mean"] == 1.5
        await builtin.optim_step(adam)
        await custom.optim_step(adam)
        # Same gradients, same step: the two models now agree.
        after_builtin = await builtin.forward(data(), "cross_entropy")
        after_custom = await custom.forward(data(), "cross_entropy")
        assert after_custom.metrics["loss:sum"] == pytest.approx(after_builtin.metrics["loss:sum"], rel=1e-5)
        assert after_custom.metrics["loss:sum"] < expected.metrics["loss:sum"]
    # Two calls to the server per custom loss: a forward (zero weights), then the fwd/bwd with weights = -grad.
    fwdbwd = [s for s in sim.rec.seen if s.endpoint == "forward_backward"]
    assert len(fwdbwd) == 2 + 1 + 2  # builtin, custom (two), and the two forwards at the end


async def test_a_nonlinear_custom_loss_sends_its_gradient_as_weights(sim: SimStack, autojump_clock: object) -> None:
    seen: list[list[np.ndarray[Any, Any]]] = []

    def squared(batch: list[t.Datum], logprobs: list[np.ndarray[Any, Any]]) -> Any:
        seen.append([lp.copy() for lp in logprobs])
        return sum(float(np.sum(lp**2)) for lp in logprobs), {}, [2 * lp for lp in logprobs]

    async with sim.session() as session:
        trainer = await _trainer(session)
        reference = await trainer.forward(data(), "cross_entropy")
        out = await trainer.forward_backward_custom(data(), squared)
    logprobs = [o["logprobs"].to_numpy() for o in reference.loss_fn_outputs]
    for got, want in zip(seen[0], logprobs, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert out.metrics["loss:sum"] == pytest.approx(sum(float(np.sum(lp**2)) for lp in logprobs), rel=1e-5)
    assert out.metrics["surrogate_loss:sum"] == pytest.approx(
        sum(float(np.sum(2 * lp * lp)) for lp in logprobs), rel=1e-4
    )  # cross-entropy with weights -2 lp: -sum(-2 lp * lp)


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (lambda b, lp: (1.0, {}), "must return \\(loss, metrics, grads\\)"),
        (lambda b, lp: (1.0, {}, [g[:-1] for g in lp]), "has shape"),
        (lambda b, lp: (float("nan"), {}, lp), "not finite"),
        (lambda b, lp: (1.0, {}, lp[:-1]), "gradients for"),
        (lambda b, lp: (1.0, {"m": "x"}, lp), "not a number"),
    ],
)
async def test_a_bad_custom_loss_is_refused_before_the_second_call(
    sim: SimStack, returned: Any, message: str, autojump_clock: object
) -> None:
    async with sim.session() as session:
        trainer = await _trainer(session)
        with pytest.raises(InvalidArgumentError, match=message):
            await trainer.forward_backward_custom(data(), returned)
        # Only the forward went out, nothing waits on the server; the client is halted until resumed.
        assert len([s for s in sim.rec.seen if s.endpoint == "forward_backward"]) == 1
        assert trainer.halted
        trainer.resume()
        await trainer.forward_backward(data(), "cross_entropy")
        await trainer.optim_step(t.AdamParams(learning_rate=0.01))
        model = sim.app.state.models[trainer.model_id]
        assert model.steps_applied == 1 and model.forward_backward_applied == 1


def broken(batch: list[t.Datum], logprobs: list[np.ndarray[Any, Any]]) -> Any:
    raise ZeroDivisionError("bug in the loss")


async def test_a_failed_custom_loss_halts_the_client_until_resume(sim: SimStack, autojump_clock: object) -> None:
    async with sim.session() as session:
        trainer, other = await _trainer(session), await _trainer(session)
        await trainer.forward_backward(data(), "cross_entropy")  # accumulated before the failure: kept
        assert not trainer.halted
        with pytest.raises(ZeroDivisionError, match="bug in the loss"):
            await trainer.forward_backward_custom(data(), broken)
        assert trainer.halted and not other.halted
        sent = len(sim.rec.seen)
        for call in (
            lambda: trainer.optim_step(t.AdamParams(learning_rate=0.05)),
            lambda: trainer.forward_backward(data(), "cross_entropy"),
            lambda: trainer.forward_backward_custom(data(), cross_entropy_as_custom),
            lambda: trainer.forward_backward_batch([(data(), "cross_entropy", None)]),
            lambda: trainer.save_state("halted"),
        ):
            with pytest.raises(TrainingHaltedError, match=r"trainer\.resume\(\)") as halted:
                await call()
            assert isinstance(halted.value.__cause__, ZeroDivisionError)
            assert "ZeroDivisionError: bug in the loss" in str(halted.value)
            assert halted.value.model_id == trainer.model_id
            assert halted.value.operation == "forward_backward_custom"
        assert len(sim.rec.seen) == sent  # nothing was sent while halted
        await other.forward_backward(data(), "cross_entropy")  # another model of the session goes on
        model = sim.app.state.models[trainer.model_id]
        assert (model.forward_applied, model.forward_backward_applied, model.steps_applied) == (1, 1, 0)

        trainer.resume()
        assert not trainer.halted
        trainer.resume()  # nothing to resume: a no-op
        await trainer.optim_step(t.AdamParams(learning_rate=0.05))
        # The server holds what the client says: the first forward_backward's gradients applied by one step, and the
        # failed call's forward (no gradients); no seq_id was skipped.
        assert (model.forward_applied, model.forward_backward_applied, model.steps_applied) == (1, 1, 1)
        assert model.applied_seq_ids == [1, 2, 3]


async def behind_a_failing_custom_loss(
    trainer: TrainingClient, calls: dict[str, Callable[[], Awaitable[object]]]
) -> dict[str, object]:
    """Start a custom loss that raises; once it holds the turn (its forward in flight), make ``calls`` from their own
    tasks. Every outcome by name (``"custom"`` and each call's): its result or the exception it raised."""
    outcomes: dict[str, object] = {}

    async def run(name: str, call: Callable[[], Awaitable[object]]) -> None:
        try:
            outcomes[name] = await call()
        except Exception as exc:
            outcomes[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "custom", lambda: trainer.forward_backward_custom(data(), broken))
        await trio.testing.wait_all_tasks_blocked()
        for name, call in calls.items():
            nursery.start_soon(run, name, call)
    return outcomes


async def test_work_queued_behind_a_failed_custom_loss_is_refused(sim: SimStack, autojump_clock: object) -> None:
    async with sim.session() as session:
        trainer = await _trainer(session)
        outcomes = await behind_a_failing_custom_loss(
            trainer,
            {
                "step": lambda: trainer.optim_step(t.AdamParams(learning_rate=0.05)),
                "submit": lambda: trainer.submit_forward_backward(data(), "cross_entropy"),
            },
        )
        assert isinstance(outcomes["custom"], ZeroDivisionError)
        # The optim_step was written to apply the custom loss's gradients: it is refused, not run without them.
        assert isinstance(outcomes["step"], TrainingHaltedError)
        assert isinstance(outcomes["submit"], TrainingHaltedError)
        model = sim.app.state.models[trainer.model_id]
        assert (model.steps_applied, model.forward_backward_applied) == (0, 0)
        assert sim.rec.requests("optim_step") == []


async def test_work_in_the_batch_window_behind_a_failed_custom_loss_is_refused(
    sim: SimStack, autojump_clock: object
) -> None:
    window = Config(api_key=API_KEY, base_url=BASE_URL, batching=BatchingConfig(coalesce=True))
    async with sim.session(config=window) as session:
        trainer = await _trainer(session)
        # Two forward_backward calls wait in the batch window, to be merged and sent after the custom loss.
        outcomes = await behind_a_failing_custom_loss(
            trainer,
            {
                "a": lambda: trainer.forward_backward(data(), "cross_entropy"),
                "b": lambda: trainer.forward_backward(data(), "cross_entropy"),
            },
        )
        assert isinstance(outcomes["custom"], ZeroDivisionError)
        assert isinstance(outcomes["a"], TrainingHaltedError) and isinstance(outcomes["b"], TrainingHaltedError)
        assert sim.app.state.models[trainer.model_id].forward_backward_applied == 0
        trainer.resume()
        await trainer.forward_backward(data(), "cross_entropy")  # the window goes on
        assert sim.app.state.models[trainer.model_id].forward_backward_applied == 1


async def test_a_custom_loss_cancelled_between_its_calls_halts_the_client(
    sim: SimStack, autojump_clock: object
) -> None:
    async with sim.session() as session:
        trainer = await _trainer(session)
        with trio.move_on_after(0.5) as scope:  # the forward takes 1 s on the simulator
            await trainer.forward_backward_custom(data(), cross_entropy_as_custom)
        assert scope.cancelled_caught  # the cancellation went through, not swallowed
        assert trainer.halted
        with pytest.raises(TrainingHaltedError, match="it was cancelled") as halted:
            await trainer.optim_step(t.AdamParams(learning_rate=0.05))
        assert halted.value.__cause__ is None
        trainer.resume()
        await trainer.optim_step(t.AdamParams(learning_rate=0.05))
        model = sim.app.state.models[trainer.model_id]
        assert (model.forward_applied, model.forward_backward_applied, model.steps_applied) == (1, 0, 1)


async def test_a_custom_loss_whose_second_call_is_in_doubt_is_settled_by_resend_not_halted(
    sim: SimStack, autojump_clock: object
) -> None:
    def outage_after_forward(batch: list[t.Datum], logprobs: list[np.ndarray[Any, Any]]) -> Any:
        # The service goes down between the two calls: every try of the second one gets a 503.
        sim.rec.script("forward_backward", *[Reply(503, {"detail": "down"})] * 3)
        return cross_entropy_as_custom(batch, logprobs)

    quick = Config(api_key=API_KEY, base_url=BASE_URL, retry=RetryConfig(max_retries=2))
    async with sim.session(config=quick) as session:
        trainer = await _trainer(session)
        with pytest.raises(SequenceInDoubtError):
            await trainer.forward_backward_custom(data(), outage_after_forward)
        # Its gradients may or may not be on the server: the sequence's own guard, not a halt.
        assert not trainer.halted and trainer.in_doubt == (2,)
        resent = await trainer.resend_in_doubt()
        assert resent is not None
        await resent.result()
        await trainer.optim_step(t.AdamParams(learning_rate=0.05))
        model = sim.app.state.models[trainer.model_id]
        assert (model.forward_applied, model.forward_backward_applied, model.steps_applied) == (1, 1, 1)


async def test_submit_custom_then_optim_step_is_pipelined_in_order(sim: SimStack, autojump_clock: object) -> None:
    async with sim.session() as session:
        trainer = await _trainer(session)
        future = await trainer.submit_forward_backward_custom(data(), cross_entropy_as_custom)
        step = await trainer.submit_optim_step(t.AdamParams(learning_rate=0.05))
        out, _ = await future.result(), await step.result()
        assert out.metrics["loss:sum"] > 0
        model = sim.app.state.models[trainer.model_id]
        assert model.steps_applied == 1 and model.forward_backward_applied == 1 and model.forward_applied == 1


async def test_custom_loss_arguments_are_checked(sim: SimStack, autojump_clock: object) -> None:
    async with sim.session() as session:
        trainer = await _trainer(session)
        with pytest.raises(InvalidArgumentError, match="autograd"):
            await trainer.forward_backward_custom(data(), cross_entropy_as_custom, autograd="jax")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="loss_fn must be a function"):
            await trainer.forward_backward_custom(data(), "cross_entropy")  # type: ignore[arg-type]
        no_targets = [t.Datum(model_input=t.ModelInput.from_ints([1, 2]), loss_fn_inputs={"weights": [1.0, 1.0]})]
        with pytest.raises(InvalidArgumentError, match="target_tokens"):
            await trainer.forward_backward_custom(no_targets, cross_entropy_as_custom)
        if importlib.util.find_spec("torch") is None:
            with pytest.raises(InvalidArgumentError, match="PyTorch"):
                await trainer.forward_backward_custom(data(), cross_entropy_as_custom, autograd="torch")
    assert not [s for s in sim.rec.seen if s.endpoint == "forward_backward"][1:]  # at most the torch one's forward


async def test_save_state_overwrite_and_user_metadata(sim: SimStack, autojump_clock: object) -> None:
    async with sim.session() as session:
        trainer = await _trainer(session)
        path = await trainer.save_state("ckpt", user_metadata={"step": "1"})
        with pytest.raises((ConflictError, RequestFailedError)):
            await trainer.save_state("ckpt")
        assert await trainer.save_state("ckpt", overwrite=True, user_metadata={"step": "2"}) == path
        listed = await session.rest.list_checkpoints(trainer.model_id)
        (checkpoint,) = [c for c in listed.checkpoints if c.tinker_path == path]
        assert checkpoint.user_metadata == {"step": "2"}
        with pytest.raises(InvalidArgumentError, match="user_metadata"):
            await trainer.save_state("other", user_metadata={"step": 3})  # type: ignore[dict-item]


async def test_save_weights_external_and_its_urls(sim: SimStack, autojump_clock: object) -> None:
    async with sim.session() as session:
        trainer = await _trainer(session)
        saved = await trainer.save_weights_external("export", ttl_seconds=7200)
        assert saved.path == f"tinker://{trainer.model_id}/external_weights/export" and (saved.size_bytes or 0) > 0
        urls = await session.rest.get_external_weights_urls(saved.path)
        assert urls.urls
        with pytest.raises(InvalidArgumentError, match="recipients"):
            await trainer.save_weights_external("x", age_encryption_recipients=[])


async def test_copy_weights_makes_one_copy_in_a_new_run(sim: SimStack, autojump_clock: object) -> None:
    async with sim.session() as session:
        trainer = await _trainer(session)
        await trainer.forward_backward(data(), "cross_entropy")
        await trainer.optim_step(t.AdamParams(learning_rate=0.05))
        source = await trainer.save_state("to-copy")
        copied = await trainer.copy_weights("to-copy", ttl_seconds=3600)
        assert copied != source and copied.endswith("/weights/to-copy")
        run_id = t.TinkerPath.parse(copied).model_id
        assert run_id != trainer.model_id
        copy = sim.app.state.find_checkpoint(copied)
        assert copy.data == sim.app.state.find_checkpoint(source).data and copy.expires_at is not None
        # A model loaded from the copy has the source's weights.
        loaded = await session.create_training_client_from_state(copied)
        a = await trainer.forward(data(), "cross_entropy")
        b = await loaded.forward(data(), "cross_entropy")
        assert a.metrics["loss:sum"] == pytest.approx(b.metrics["loss:sum"], rel=1e-6)
        with pytest.raises(NotFoundError):
            await session.rest.copy_weights("tinker://nope:train:0/weights/x")
    requests = [s for s in sim.rec.seen if s.endpoint == "copy_weights"]
    assert requests[0].headers["x-idempotency-key"] and "x-tinker-weights-access-token" not in requests[0].headers


async def test_copy_weights_retried_keeps_its_key_and_the_server_copies_once(
    sim: SimStack, autojump_clock: object
) -> None:
    async with sim.session() as session:
        trainer = await _trainer(session)
        source = await trainer.save_state("once")
        runs_before = len(sim.app.state.models)
        sim.rec.script("copy_weights", Reply(status=503, body={"detail": "busy"}))
        copied = await session.rest.copy_weights(source)
    requests = sim.rec.requests("copy_weights")
    assert len(requests) == 2 and len({r.headers["x-idempotency-key"] for r in requests}) == 1
    assert len(sim.app.state.models) == runs_before + 1
    # The server side: the same key again is answered from the first copy, nothing copied twice.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app), base_url=BASE_URL) as raw:
        again = await raw.post(
            "/api/v1/copy_weights",
            json={"source_path": source},
            headers={"X-API-Key": API_KEY, "X-Idempotency-Key": requests[0].headers["x-idempotency-key"]},
        )
    assert again.json() == {"tinker_path": copied} and len(sim.app.state.models) == runs_before + 1


async def test_load_state_with_optimizer_is_load_state_with_both(sim: SimStack, autojump_clock: object) -> None:
    async with sim.session() as session:
        trainer = await _trainer(session)
        path = await trainer.save_state("both")
        await trainer.load_state_with_optimizer(path)
    loads = [s.json() for s in sim.rec.seen if s.endpoint == "load_weights"]
    assert loads[-1]["optimizer"] is True and loads[-1]["path"] == path


async def test_whoami_reads_the_identity_token(autojump_clock: object) -> None:
    config = sim_config()
    config.jwt_auth_enabled = True
    async with sim_stack(config) as stack, stack.session() as session:
        me = await session.rest.whoami()
    assert me.user_urn.startswith("sim-user-") and me.org_urn == "sim-org" and me.email
    async with sim_stack(sim_config()) as stack, stack.session() as session:
        with pytest.raises(NotFoundError):
            await session.rest.whoami()


def test_whoami_of_a_jwt_key_needs_no_request() -> None:
    claims = base64.urlsafe_b64encode(json.dumps({"sub": "urn:u", "org_id": "urn:o"}).encode()).rstrip(b"=").decode()
    me = whoami_from_jwt(f"eyJhbGciOiJub25lIn0.{claims}.sig")
    assert (me.user_urn, me.org_urn, me.email) == ("urn:u", "urn:o", None)
    with pytest.raises(Exception, match="claims"):
        whoami_from_jwt("eyJ.not-json.x")


async def test_on_queue_state_change_reports_paused_and_active(autojump_clock: object) -> None:
    config = sim_config()
    async with sim_stack(config) as stack, stack.session() as session:
        seen: list[tuple[str, str | None]] = []
        detach = session.on_queue_state_change(lambda state, reason: seen.append((state, reason)))
        trainer = await _trainer(session)
        stack.rec.script(
            "retrieve_future",
            Reply(body={"type": "try_again", "request_id": "x", "queue_state": "paused_capacity"}),
            Reply(body={"type": "try_again", "request_id": "x", "queue_state": "active"}),
        )
        await trainer.forward_backward(data(), "cross_entropy")
        assert seen == [("paused_capacity", None), ("active", None)]
        assert session.metrics.counter_total("tinkex_future_queue_state_changes_total") == 2
        assert detach() is True
        with pytest.raises(InvalidArgumentError):
            session.on_queue_state_change("not callable")  # type: ignore[arg-type]


def test_to_dict_is_the_wire_form_as_plain_data() -> None:
    datum = data(1)[0]
    plain = datum.to_dict()
    assert plain["model_input"]["chunks"][0]["tokens"] == PATTERN[:8]
    assert plain["loss_fn_inputs"]["weights"]["data"] == [1.0] * 8
    assert json.loads(json.dumps(plain)) == plain


async def test_create_lora_training_client_with_the_dimuon_optimizer(autojump_clock: object) -> None:
    async with sim_stack(sim_config()) as stack, stack.session() as session:
        trainer = await session.create_lora_training_client(BASE, rank=4, optimizer=t.DimuonOptimizerConfig())
        assert stack.app.state.models[trainer.model_id].optimizer == "dimuon"
        await trainer.forward_backward(data(), "cross_entropy")
        await trainer.optim_step(t.DimuonParams(learning_rate=0.01))
        with pytest.raises(InvalidArgumentError, match="optimizer"):
            await session.create_lora_training_client(BASE, optimizer="adam")  # type: ignore[arg-type]


async def test_search_sessions_filters_pages_and_reports_status(autojump_clock: object) -> None:
    async with sim_stack(sim_config()) as stack:
        for name, metadata in (("nightly run a", {"team": "rl"}), ("nightly run b", {"team": "sl"}), ("adhoc", {})):
            async with stack.session(user_metadata=metadata) as finished:
                stack.app.state.sessions[finished.session_id].display_name = name
        async with stack.session() as session:
            rest = session.rest
            nightly = await rest.search_sessions(t.SessionSearchRequest(display_name="NIGHTLY"))
            assert sorted(s.display_name or "" for s in nightly.sessions) == ["nightly run a", "nightly run b"]
            rl = await rest.search_sessions(t.SessionSearchRequest(user_metadata={"team": "rl"}))
            assert [s.display_name for s in rl.sessions] == ["nightly run a"]
            assert isinstance(rl.sessions[0].status, t.ClientSessionFinished)
            assert rl.sessions[0].status.reason.type == "success"
            active = await rest.search_sessions(t.SessionSearchRequest(statuses=[t.ActiveSessionStatusQuery()]))
            assert [s.session_id for s in active.sessions] == [session.session_id]
            # Pages of 2 through the cursor: every session once, newest first.
            walked = [s.session_id async for s in rest.iter_search_sessions(t.SessionSearchRequest(limit=2))]
            assert len(walked) == len(set(walked)) == 4 and walked[0] == session.session_id
            nobody = t.SessionSearchRequest(owner=t.UserSearchOwner(owner_urns=["urn:someone-else"]))
            assert (await rest.search_sessions(nobody)).sessions == []
            with pytest.raises(InvalidArgumentError, match="limit"):
                await rest.search_sessions(t.SessionSearchRequest(limit=500))
    searches = stack.rec.requests("sessions/search")
    assert searches[0].json()["owner"] == {"type": "own"} and searches[0].json()["display_name"] == "NIGHTLY"


def test_torch_conversions_say_what_they_need(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # as on a machine without PyTorch
    tensor = t.TensorData.from_numpy(np.arange(4, dtype=np.float32))
    with pytest.raises(ImportError, match="PyTorch"):
        tensor.to_torch()
    with pytest.raises(ImportError, match="PyTorch"):
        t.TensorData.from_torch(object())


def test_torch_conversions_round_trip_through_a_tensor_like(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types as pytypes

    class FakeTensor:  # what from_torch uses of a torch tensor
        def __init__(self, array: np.ndarray[Any, Any]) -> None:
            self.array = array

        def detach(self) -> FakeTensor:
            return self

        def cpu(self) -> FakeTensor:
            return self

        def numpy(self) -> np.ndarray[Any, Any]:
            return self.array

    fake = pytypes.ModuleType("torch")
    fake.from_numpy = FakeTensor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", fake)
    tensor = t.TensorData.from_torch(FakeTensor(np.array([[1, 2], [3, 4]], dtype=np.int64)))
    assert tensor.dtype == "int64" and tensor.shape == [2, 2]
    back = tensor.to_torch()
    assert isinstance(back, FakeTensor) and back.array.tolist() == [[1, 2], [3, 4]]
