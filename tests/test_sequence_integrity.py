"""Issue 7: a model's seq_ids survive every fault: no hole, no lost step, no double step.

Think like the server: after each fault, what does it hold, and does the client's view equal it? The simulator runs a
model's requests in seq_id order and waits (``seq_gap_timeout_s``, 120 s here) for a missing one, so a hole shows up
as a later call taking minutes of (mock) time; it dedups a re-sent ``(model_id, seq_id)``, and counts what it applied.
"""

# pyright: reportPrivateUsage=false

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from _simkit import API_KEY, BASE_URL, ASGIApp, Gate, Receive, Reply, Scope, Send, SimStack, sim_config, sim_stack

from tinkex_trio import types as t
from tinkex_trio._config import Config, RetryConfig
from tinkex_trio._proto import _codec
from tinkex_trio._session import Session, open_session
from tinkex_trio._training import TrainingClient
from tinkex_trio.errors import (
    CircuitOpenError,
    InternalServerError,
    PartiallyAppliedError,
    SequenceInDoubtError,
    UnprocessableEntityError,
)

BASE = "Qwen/Qwen3-8B"
GAP_S = 120.0
QUICK = Config(api_key=API_KEY, base_url=BASE_URL, retry=RetryConfig(max_retries=2))


def datum(n: int = 6) -> t.Datum:
    tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9][: n + 1]
    return t.datum(tokens[:-1], target_tokens=tokens[1:], weights=[1.0] * n)


def seq_of(body: bytes, content_type: str) -> int:
    if content_type.startswith("application/x-protobuf"):
        return _codec.decode_forward_backward_request(body).seq_id
    import json

    return int(json.loads(body)["seq_id"])


@pytest.fixture
async def sim() -> AsyncGenerator[SimStack]:
    async with sim_stack(sim_config(seq_gap_timeout_s=GAP_S)) as stack:
        yield stack


async def new_trainer(session: Session) -> TrainingClient:
    return await session.create_lora_training_client(BASE, rank=4, seed=1)


def model(sim: SimStack, trainer: TrainingClient) -> Any:
    return sim.app.state.models[trainer.model_id]


async def test_a_breaker_refusal_takes_no_seq_id(sim: SimStack, autojump_clock: trio.testing.MockClock) -> None:
    async with sim.session() as session:
        trainer = await new_trainer(session)
        breaker = session.breaker
        assert breaker is not None
        for _ in range(breaker.failure_threshold):
            breaker.record_failure(trio.current_time())
        with pytest.raises(CircuitOpenError):
            await trainer.optim_step(t.AdamParams())
        with pytest.raises(CircuitOpenError):
            await trainer.forward_backward([datum()], "cross_entropy")
        assert sim.rec.requests("optim_step") == [] and sim.rec.requests("forward_backward") == []
        breaker.reset(trio.current_time())
        started = trio.current_time()
        await trainer.forward_backward([datum()], "cross_entropy")
        await trainer.optim_step(t.AdamParams())
        assert trio.current_time() - started < GAP_S / 2  # no wait for a hole
        assert model(sim, trainer).applied_seq_ids == [1, 2]


async def test_retries_ending_in_an_outage_leave_the_step_in_doubt_until_resent(
    sim: SimStack, autojump_clock: trio.testing.MockClock
) -> None:
    async with sim.session(config=QUICK) as session:
        trainer = await new_trainer(session)
        sim.rec.script("optim_step", *[Reply(503, {"detail": "down"})] * 3)
        with pytest.raises(SequenceInDoubtError) as doubt:
            await trainer.optim_step(t.AdamParams())
        assert isinstance(doubt.value.__cause__, InternalServerError)
        assert doubt.value.seq_ids == (1,) and doubt.value.operation == "optim_step"
        assert trainer.in_doubt == (1,)
        sent = sim.rec.requests("optim_step")
        assert len(sent) == 3

        # Every later call is refused with the same typed error, and sends nothing.
        with pytest.raises(SequenceInDoubtError, match="resend_in_doubt"):
            await trainer.forward_backward([datum()], "cross_entropy")
        assert sim.rec.requests("forward_backward") == [] and len(sim.rec.requests("optim_step")) == 3

        # The re-send is the same (model_id, seq_id) with the same idempotency key; the server applies it once.
        future = await trainer.resend_in_doubt()
        assert future is not None
        assert isinstance(await future.result(), t.OptimStepResponse)
        resent = sim.rec.requests("optim_step")[-1]
        assert resent.json()["seq_id"] == 1
        assert resent.headers["x-idempotency-key"] == sent[0].headers["x-idempotency-key"]
        assert trainer.in_doubt == () and await trainer.resend_in_doubt() is None

        started = trio.current_time()
        await trainer.forward_backward([datum()], "cross_entropy")
        assert trio.current_time() - started < GAP_S / 2
        assert model(sim, trainer).applied_seq_ids == [1, 2]
        assert model(sim, trainer).steps_applied == 1


class SpoilAnswers:
    """ASGI middleware: the app handles the chosen requests to ``endpoint`` (by arrival index), then the client gets
    a 200 whose body cannot be read (``body``) instead of the app's answer."""

    def __init__(self, app: ASGIApp, endpoint: str, spoil: set[int], body: bytes = b"<html>oops</html>") -> None:
        self.app = app
        self.endpoint = endpoint
        self.spoil = spoil
        self.body = body
        self.count = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/" + self.endpoint):
            await self.app(scope, receive, send)
            return
        index, self.count = self.count, self.count + 1
        if index not in self.spoil:
            await self.app(scope, receive, send)
            return

        async def swallow(message: Any) -> None:
            pass

        await self.app(scope, receive, swallow)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


@pytest.mark.parametrize("endpoint", ["optim_step", "forward_backward"])
@pytest.mark.parametrize("body", [b"<html>oops</html>", b'{"request_id": '], ids=["html", "truncated-json"])
async def test_an_unreadable_answer_to_a_training_post_is_resent_not_reported(
    sim: SimStack, autojump_clock: trio.testing.MockClock, endpoint: str, body: bytes
) -> None:
    spoiler = SpoilAnswers(sim.rec, endpoint, {0}, body)
    async with open_session(
        API_KEY, BASE_URL, transport_factory=lambda pool: httpx.ASGITransport(app=spoiler)
    ) as session:
        trainer = await new_trainer(session)
        if endpoint == "optim_step":
            await trainer.optim_step(t.AdamParams())
        else:
            await trainer.forward_backward([datum()], "cross_entropy")
        first, second = sim.rec.requests(endpoint)
        assert first.headers["x-idempotency-key"] == second.headers["x-idempotency-key"]
        assert seq_of(first.body, first.headers["content-type"]) == seq_of(second.body, second.headers["content-type"])
        record = model(sim, trainer)
        assert record.applied_seq_ids == [1]  # applied once, although the server saw it twice
        assert (record.steps_applied, record.forward_backward_applied) == (
            (1, 0) if endpoint == "optim_step" else (0, 1)
        )


def chunked_config() -> Any:
    return sim_config(seq_gap_timeout_s=GAP_S, client_config={"fwdbwd_max_chunk_len": 2})


async def test_a_later_chunk_in_doubt_still_sends_the_first_and_resend_completes_the_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with sim_stack(chunked_config()) as sim, sim.session(config=QUICK) as session:
        trainer = await new_trainer(session)
        # 5 datums: chunks seq 1 (2), 2 (2), 3 (1); 2 and 3 go first. Make seq 3 fail until its retries end.
        failing = {3}

        def busy(path: str, body: bytes) -> Reply | None:
            if path.endswith("/forward_backward") and _codec.decode_forward_backward_request(body).seq_id in failing:
                return Reply(503, {"detail": "busy"})
            return None

        gate = Gate(sim.rec, busy)
        async with open_session(config=QUICK, transport_factory=lambda pool: httpx.ASGITransport(app=gate)) as gated:
            trainer = await new_trainer(gated)
            with pytest.raises(SequenceInDoubtError) as doubt:
                await trainer.forward_backward([datum(n) for n in (3, 4, 5, 6, 7)], "cross_entropy")
            assert doubt.value.seq_ids == (3,)
            seqs = [seq_of(s.body, s.headers["content-type"]) for s in sim.rec.requests("forward_backward")]
            assert 1 in seqs and 3 not in seqs  # the first chunk went out: no hole but the one in doubt
            failing.clear()
            future = await trainer.resend_in_doubt()
            assert future is not None
            out = await future.result()
            assert len(out.loss_fn_outputs) == 5
            record = model(sim, trainer)
            assert record.applied_seq_ids == [1, 2, 3] and record.forward_backward_applied == 3
        del session


async def test_a_refused_later_chunk_settles_every_seq_id_and_says_what_was_applied(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with sim_stack(chunked_config()) as sim:
        refused = {3}

        def judge(path: str, body: bytes) -> Reply | None:
            if path.endswith("/forward_backward"):
                decoded = _codec.decode_forward_backward_request(body)
                if decoded.seq_id in refused:
                    # The server judged it (as a 4xx): that seq_id is used up on its side.
                    sim.app.queue.consume_seq(decoded.model_id, decoded.seq_id, "rejected: test")
                    return Reply(422, {"detail": "bad chunk"})
            return None

        gate = Gate(sim.rec, judge)
        async with open_session(API_KEY, BASE_URL, transport_factory=lambda pool: httpx.ASGITransport(app=gate)) as s:
            trainer = await new_trainer(s)
            with pytest.raises(PartiallyAppliedError) as partial:
                await trainer.forward_backward([datum(n) for n in (3, 4, 5, 6, 7)], "cross_entropy")
            assert partial.value.applied == ((0, 2), (2, 4))
            assert [r for r, _ in partial.value.failed] == [(4, 5)]
            assert isinstance(partial.value.__cause__, UnprocessableEntityError)
            assert trainer.in_doubt == ()
            started = trio.current_time()
            await trainer.optim_step(t.AdamParams())
            assert trio.current_time() - started < GAP_S / 2  # every seq_id settled: nothing waits
            record = model(sim, trainer)
            assert record.applied_seq_ids == [1, 2, 4] and record.steps_applied == 1


async def test_cancelled_while_sending_leaves_the_step_in_doubt(
    sim: SimStack, autojump_clock: trio.testing.MockClock
) -> None:
    async with sim.session() as session:
        trainer = await new_trainer(session)
        sim.rec.script("optim_step", Reply(200, {"request_id": "x"}, delay=10.0))
        with trio.move_on_after(1.0) as scope:
            await trainer.optim_step(t.AdamParams())
        assert scope.cancelled_caught
        assert trainer.in_doubt == (1,)
        with pytest.raises(SequenceInDoubtError):
            await trainer.optim_step(t.AdamParams())
        future = await trainer.resend_in_doubt()
        assert future is not None
        await future.result()
        await trainer.optim_step(t.AdamParams())
        assert model(sim, trainer).applied_seq_ids == [1, 2]
