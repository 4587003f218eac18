"""APIFuture and FutureManager: every retrieve_future answer of protocol §6, against the simulator in process.

Every test runs under trio's MockClock (``autojump_clock``): long polls and backoffs cost no wall-clock time, and the
times the Recorder notes are exact, so backoff schedules are checked to the millisecond.
"""

# pyright: reportPrivateUsage=false

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from _simkit import Reply, Seen, SimStack, decode_create_model, drain, sim_config, sim_stack, submit_create_model

from tinkex_trio import types as t
from tinkex_trio._futures import (
    MAX_BAD_REPLY_RETRIES,
    MAX_BAD_REQUEST_RETRIES,
    APIFuture,
)
from tinkex_trio._polling import TRY_AGAIN_MIN_INTERVAL_S
from tinkex_trio._pool_set import PoolKind
from tinkex_trio._retry import POLL_ERROR_BACKOFF_BASE_S, POLL_ERROR_BACKOFF_MAX_S, poll_backoff
from tinkex_trio._session import Session
from tinkex_trio._telemetry import FUTURE_QUEUE_STATE
from tinkex_trio.errors import (
    APITimeoutError,
    BadRequestError,
    BillingError,
    GoneError,
    NotFoundError,
    RequestErrorCategory,
    RequestFailedError,
    ResponseValidationError,
    SessionClosedError,
)
from tinkex_trio.sim._config import ServiceTime

PROTO = "application/x-protobuf"
MIN_ERROR_GAP = POLL_ERROR_BACKOFF_BASE_S * 0.75  # poll_error_backoff(0) with the most jitter


def polls(sim: SimStack) -> list[Seen]:
    return sim.rec.requests("retrieve_future")


def gaps(seen: list[Seen]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(seen)]


def as_json(response: httpx.Response) -> Any:
    return response.json()


async def track_model(session: Session, **kwargs: Any) -> APIFuture[t.CreateModelResponse]:
    reply = await submit_create_model(session)
    return session._ctx.futures.track(reply, "CreateModel", decode_create_model, **kwargs)


def track_fake(
    session: Session, request_type: str = "CreateModel", decode: Any = None, **kwargs: Any
) -> APIFuture[Any]:
    """A future for a request id the simulator never issued (for scripted answers)."""
    reply = t.UntypedAPIFuture(request_id="fake-1")
    return session._ctx.futures.track(reply, request_type, decode or as_json, **kwargs)


# -- the happy path --------------------------------------------------------------------------------------------------


async def test_result_and_poll_request(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        fut = await track_model(session, create_roundtrip_s=0.25)
        assert not fut.done()
        assert "pending" in repr(fut)
        result = await fut.result()
        assert result.model_id == fut.model_id == f"{session.session_id}:train:0"
        assert fut.done() and fut.exception() is None
        assert "done" in repr(fut)
        [poll] = polls(sim)
        assert poll.json() == {"request_id": fut.request_id, "allow_metadata_only": True}
        assert poll.headers["x-tinker-request-iteration"] == "0"
        assert poll.headers["x-tinker-request-type"] == "CreateModel"
        assert poll.headers["x-tinker-create-promise-roundtrip-time"] == "0.25"
        assert poll.headers["accept"] == "application/json"
        assert poll.headers["x-api-key"].startswith("tml-")
        # The answer came when the model was ready: one long poll, 1 s of service time.
        assert fut.request_id in {s.json()["request_id"] for s in polls(sim)}
        assert await fut == result  # awaiting the future itself is result()


async def test_polling_progresses_without_anyone_waiting(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        fut = await track_model(session)
        await trio.sleep(5)
        assert fut.done()
        assert len(polls(sim)) == 1
        before = trio.current_time()
        assert (await fut.result()).model_id
        assert trio.current_time() == before


# -- try_again / queue state -----------------------------------------------------------------------------------------


async def test_try_again_repolls_at_once_and_reports_queue_state_changes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = sim_config(long_poll_s=1.0, service=ServiceTime(base_s=4.5))
    config.faults.paused_rate_limit = True
    async with sim_stack(config) as sim, sim.session() as session:
        rx = session.telemetry.subscribe(events=FUTURE_QUEUE_STATE)
        fut = await track_model(session)
        await trio.sleep(2.5)
        config.faults.paused_rate_limit = False
        await fut.result()
        seen = polls(sim)
        # try_again at 1, 2 (paused), 3, 4 (active), the result at 4.5: five polls, each sent right after the last.
        assert [s.headers["x-tinker-request-iteration"] for s in seen] == ["0", "1", "2", "3", "4"]
        assert all(1.0 <= g < 1.0 + TRY_AGAIN_MIN_INTERVAL_S for g in gaps(seen))
        events = drain(rx)
        assert [(e.metadata["previous_queue_state"], e.metadata["queue_state"]) for e in events] == [
            (None, "paused_rate_limit"),
            ("paused_rate_limit", "active"),
        ]
        assert all(e.metadata["request_id"] == fut.request_id for e in events)
        assert events[0].metadata["request_type"] == "CreateModel"


async def test_try_again_without_long_poll_is_not_a_tight_loop(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        rx = session.telemetry.subscribe(events=FUTURE_QUEUE_STATE)
        try_again = Reply(body={"type": "try_again", "request_id": "x", "queue_state": "active"})
        sim.rec.script("retrieve_future", *[try_again] * 20)
        fut = await track_model(session)
        await fut.result()
        seen = polls(sim)
        assert len(seen) == 21
        # The first quick try_again is re-polled at once; quick ones in a row then wait the minimum interval.
        quick = [g for g in gaps(seen) if g < TRY_AGAIN_MIN_INTERVAL_S - 1e-9]
        assert len(quick) <= len(seen) // 2, gaps(seen)
        assert trio.current_time() >= (len(seen) // 2 - 1) * TRY_AGAIN_MIN_INTERVAL_S
        assert len(drain(rx)) == 1  # the state never changed after the first report


# -- complete_metadata -----------------------------------------------------------------------------------------------


async def test_complete_metadata_repolls_once_with_full_payload(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config(complete_metadata_threshold_bytes=0)) as sim, sim.session() as session:
        fut = await track_model(session)
        assert (await fut.result()).model_id
        assert [s.json()["allow_metadata_only"] for s in polls(sim)] == [True, False]


async def test_complete_metadata_twice_is_a_bad_reply(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        metadata = Reply(body={"status": "complete_metadata", "response_payload_size": 10})
        sim.rec.script("retrieve_future", *[metadata] * (MAX_BAD_REPLY_RETRIES + 2))
        fut = track_fake(session)
        with pytest.raises(ResponseValidationError, match="complete_metadata"):
            await fut.result()
        # One metadata-only poll, then full polls answered complete_metadata: 1 + N re-polls, then failure.
        assert [s.json()["allow_metadata_only"] for s in polls(sim)] == [True] + [False] * (MAX_BAD_REPLY_RETRIES + 1)


# -- failed futures --------------------------------------------------------------------------------------------------


async def test_failed_future_with_user_category(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        model = await (await track_model(session)).result()
        body = {
            "model_id": model.model_id,
            "seq_id": 1,
            "forward_backward_input": {
                "data": [
                    {"model_input": {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3]}]}, "loss_fn_inputs": {}}
                ],
                "loss_fn": "cross_entropy",
            },
        }
        reply = await session._transport.request_json(
            t.UntypedAPIFuture, PoolKind.TRAINING, "POST", "/api/v1/forward_backward", json=body
        )
        fut = session._ctx.futures.track(reply, "ForwardBackward", as_json)
        with pytest.raises(RequestFailedError) as info:
            await fut.result()
        assert info.value.category is RequestErrorCategory.USER
        assert info.value.request_id == fut.request_id
        assert isinstance(fut.exception(), RequestFailedError)
        assert polls(sim)[-1].headers["x-tinker-request-type"] == "ForwardBackward"


async def test_failed_future_with_server_category(autojump_clock: trio.testing.MockClock) -> None:
    config = sim_config()
    config.faults.future_failure_rate = 1.0
    async with sim_stack(config) as sim, sim.session() as session:
        fut = await track_model(session)
        with pytest.raises(RequestFailedError) as info:
            await fut.result()
        assert info.value.category is RequestErrorCategory.SERVER
        assert len(polls(sim)) == 1


async def test_failed_future_with_unknown_category_word(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        sim.rec.script("retrieve_future", Reply(body={"error": "boom", "category": "martian"}))
        with pytest.raises(RequestFailedError, match="boom") as info:
            await track_fake(session).result()
        assert info.value.category is RequestErrorCategory.UNKNOWN


# -- HTTP errors on the poll -----------------------------------------------------------------------------------------


async def test_5xx_is_repolled_after_a_growing_jittered_backoff(autojump_clock: trio.testing.MockClock) -> None:
    config = sim_config()
    config.faults.set_endpoint("retrieve_future", error_rates={503: 1.0})
    async with sim_stack(config) as sim, sim.session() as session:
        fut = await track_model(session)
        await trio.sleep(20)
        seen = polls(sim)
        # 0.25, 0.5, 1, 2, 4, 5, 5 ... (times 0.75-1): a handful of polls in 20 s, never a tight loop.
        assert 6 <= len(seen) <= 10
        assert all(s.status == 503 for s in seen)
        g = gaps(seen)
        assert min(g) >= MIN_ERROR_GAP
        assert max(g) <= POLL_ERROR_BACKOFF_MAX_S
        assert g[3] > g[0]  # it grows
        config.faults.clear_endpoint("retrieve_future")
        assert (await fut.result()).model_id
        assert polls(sim)[-1].status == 200


async def test_408_with_queue_state_is_repolled_and_reported(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        rx = session.telemetry.subscribe(events=FUTURE_QUEUE_STATE)
        busy = Reply(status=408, body={"queue_state": "paused_capacity", "queue_state_reason": "busy"})
        sim.rec.script("retrieve_future", busy, busy, Reply(status=500, body={"detail": "oops"}))
        fut = await track_model(session)
        assert (await fut.result()).model_id
        seen = polls(sim)
        assert [s.status for s in seen] == [408, 408, 500, 200]
        assert min(gaps(seen)) >= MIN_ERROR_GAP
        [event] = drain(rx)
        assert event.metadata["queue_state"] == "paused_capacity"
        assert event.metadata["queue_state_reason"] == "busy"


async def test_429_and_connection_errors_back_off_exponentially(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        sim.rec.script(
            "retrieve_future",
            Reply(status=429, body={"detail": "slow down"}),
            Reply(status=429, body={"detail": "slow down"}),
            httpx.ConnectError("refused"),
            httpx.ReadTimeout("timed out"),
        )
        fut = await track_model(session)
        assert (await fut.result()).model_id
        assert gaps(polls(sim)) == pytest.approx([poll_backoff(0), poll_backoff(1), poll_backoff(2), poll_backoff(3)])
        assert [poll_backoff(n) for n in range(4)] == [1.0, 2.0, 4.0, 8.0]


async def test_connection_backoff_resets_on_any_http_response(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        sim.rec.script(
            "retrieve_future",
            httpx.ConnectError("refused"),
            httpx.ConnectError("refused"),
            Reply(status=503, body={"detail": "x"}),
            httpx.ConnectError("refused"),
        )
        fut = await track_model(session)
        await fut.result()
        g = gaps(polls(sim))
        assert g[:2] == pytest.approx([1.0, 2.0])
        assert MIN_ERROR_GAP <= g[2] <= POLL_ERROR_BACKOFF_BASE_S
        assert g[3] == pytest.approx(1.0)  # back to poll_backoff(0) after the 503


async def test_429_retry_after_is_honoured(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        sim.rec.script("retrieve_future", Reply(status=429, body={}, headers={"Retry-After": "7"}))
        await (await track_model(session)).result()
        assert gaps(polls(sim)) == pytest.approx([7.0])


async def test_400_is_repolled_three_times_then_fails(autojump_clock: trio.testing.MockClock) -> None:
    config = sim_config()
    config.faults.set_endpoint("retrieve_future", error_rates={400: 1.0})
    async with sim_stack(config) as sim, sim.session() as session:
        fut = await track_model(session)
        with pytest.raises(BadRequestError):
            await fut.result()
        assert len(polls(sim)) == 1 + MAX_BAD_REQUEST_RETRIES == 4


async def test_a_few_400s_then_success(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        bad = Reply(status=400, body={"detail": "bad"})
        sim.rec.script("retrieve_future", bad, bad, bad)
        assert (await (await track_model(session)).result()).model_id
        assert [s.status for s in polls(sim)] == [400, 400, 400, 200]


async def test_410_fails_with_gone(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        sim.rec.script("retrieve_future", Reply(status=410, body={"detail": "expired"}))
        fut = await track_model(session)
        with pytest.raises(GoneError) as info:
            await fut.result()
        assert info.value.status_code == 410
        assert len(polls(sim)) == 1


async def test_other_4xx_fails_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        fut = track_fake(session)  # the simulator never issued this id: 404
        with pytest.raises(NotFoundError):
            await fut.result()
        assert [s.status for s in polls(sim)] == [404]


async def test_402_is_waited_out_within_the_billing_pause(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        billing = Reply(status=402, body={"detail": "pay up"})
        sim.rec.script("retrieve_future", billing, billing)
        assert (await (await track_model(session)).result()).model_id
        assert gaps(polls(sim)) == pytest.approx([5.0, 5.0])


async def test_402_fails_after_the_billing_pause(autojump_clock: trio.testing.MockClock) -> None:
    config = sim_config(client_config={"billing_exception_max_pause_duration_sec": 12})
    config.faults.set_endpoint("retrieve_future", error_rates={402: 1.0})
    async with sim_stack(config) as sim, sim.session() as session:
        fut = await track_model(session)
        with pytest.raises(BillingError):
            await fut.result()
        assert [s.at - polls(sim)[0].at for s in polls(sim)] == pytest.approx([0.0, 5.0, 10.0])


# -- bodies ----------------------------------------------------------------------------------------------------------


async def test_unreadable_answers_are_repolled_then_fail(autojump_clock: trio.testing.MockClock) -> None:
    config = sim_config()
    config.faults.set_endpoint("retrieve_future", malformed_rate=1.0)
    async with sim_stack(config) as sim, sim.session() as session:
        fut = await track_model(session)
        with pytest.raises(ResponseValidationError):
            await fut.result()
        seen = polls(sim)
        assert len(seen) == 1 + MAX_BAD_REPLY_RETRIES
        assert min(gaps(seen)) >= MIN_ERROR_GAP


async def test_one_unreadable_answer_then_success(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        sim.rec.script("retrieve_future", Reply(body=b"{not json"))
        assert (await (await track_model(session)).result()).model_id
        assert len(polls(sim)) == 2


async def test_protobuf_answer_goes_to_the_decoder(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        sim.rec.script("retrieve_future", Reply(body=b"\x0a\x01x", content_type=PROTO))

        def raw(response: httpx.Response) -> tuple[str, bytes]:
            return ("proto", response.content)

        fut = track_fake(session, "Sample", raw, accept_proto=True)
        assert await fut.result() == ("proto", b"\x0a\x01x")
        [poll] = polls(sim)
        assert poll.headers["accept"] == PROTO
        assert poll.headers["x-tinker-request-type"] == "Sample"
        assert "x-tinker-create-promise-roundtrip-time" not in poll.headers


async def test_decoder_errors_become_response_validation_errors(autojump_clock: trio.testing.MockClock) -> None:
    def broken(response: httpx.Response) -> Any:
        raise ValueError("not what I expected")

    async with sim_stack() as sim, sim.session() as session:
        sim.rec.script("retrieve_future", *[Reply(body={"anything": 1})] * (MAX_BAD_REPLY_RETRIES + 1))
        fut = track_fake(session, decode=broken)
        with pytest.raises(ResponseValidationError) as info:
            await fut.result()
        assert isinstance(info.value.__cause__, ValueError)
        assert info.value.request_id == "fake-1"
        assert len(polls(sim)) == MAX_BAD_REPLY_RETRIES + 1


async def test_protobuf_only_for_proto_request_types(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        with pytest.raises(ValueError, match="protobuf"):
            track_fake(session, "OptimStep", accept_proto=True)
        assert polls(sim) == []


# -- waiting ---------------------------------------------------------------------------------------------------------


async def test_cancelling_a_waiter_cancels_only_the_wait(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config(service=ServiceTime(base_s=5.0))) as sim, sim.session() as session:
        fut = await track_model(session)
        with trio.move_on_after(1.0) as scope:
            await fut.result()
        assert scope.cancelled_caught
        assert not fut.done()
        result = await fut.result()
        assert result.model_id
        # The poll was never disturbed: one long poll, answered when the model was ready.
        [poll] = polls(sim)
        assert poll.status == 200


async def test_result_timeout_leaves_the_poll_running(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config(service=ServiceTime(base_s=5.0))) as sim, sim.session() as session:
        fut = await track_model(session)
        start = trio.current_time()
        with pytest.raises(APITimeoutError) as info:
            await fut.result(timeout=2.0)
        assert trio.current_time() - start == pytest.approx(2.0)
        assert info.value.request_id == fut.request_id
        assert not fut.done()
        with pytest.raises(RuntimeError):
            fut.exception()
        assert (await fut.result(timeout=10.0)).model_id
        assert len(polls(sim)) == 1


async def test_many_waiters_get_the_same_result(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        fut = await track_model(session)
        results: list[t.CreateModelResponse] = []

        async def wait() -> None:
            results.append(await fut.result())

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(wait)
        assert len(results) == 3 and results[0] is results[1] is results[2]
        assert len(polls(sim)) == 1


# -- closing ---------------------------------------------------------------------------------------------------------


async def test_session_close_fails_pending_futures(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config(service=ServiceTime(base_s=1000.0))) as sim:
        async with sim.session() as session:
            fut = await track_model(session)
            await trio.sleep(1)
            assert session._ctx.futures.pending_count == 1
        assert fut.done()
        with pytest.raises(SessionClosedError, match="session closed"):
            await fut.result()
        assert session._ctx.futures.pending_count == 0
        with pytest.raises(SessionClosedError):
            track_fake(session)


async def test_aclose_wakes_waiters_with_session_closed(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack(sim_config(service=ServiceTime(base_s=1000.0))) as sim, sim.session() as session:
        fut = await track_model(session)
        errors: list[BaseException] = []

        async def wait() -> None:
            try:
                await fut.result()
            except SessionClosedError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.sleep(3)
            await session._ctx.futures.aclose()
        assert len(errors) == 1
        assert session._ctx.futures.pending_count == 0
        assert session._ctx.futures.closed


# -- combine ---------------------------------------------------------------------------------------------------------


async def test_combine_in_order(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        a, b = await track_model(session), await track_model(session)

        def ids(results: list[t.CreateModelResponse]) -> list[str]:
            return [r.model_id for r in results]

        both = session._ctx.futures.combine([a, b], ids)
        assert await both.result() == [f"{session.session_id}:train:0", f"{session.session_id}:train:1"]
        assert both.request_id == f"{a.request_id}+{b.request_id}"
        assert both.request_type == "CreateModel"
        assert len(polls(sim)) == 2


async def test_combine_failures(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_stack() as sim, sim.session() as session:
        a = await track_model(session)

        def explode(results: list[t.CreateModelResponse]) -> int:
            raise KeyError("metric")

        with pytest.raises(ResponseValidationError, match="combined"):
            await session._ctx.futures.combine([a], explode).result()
        sim.rec.script("retrieve_future", Reply(status=410, body={}))
        b = await track_model(session)
        with pytest.raises(GoneError):
            await session._ctx.futures.combine([a, b], len).result()
        with pytest.raises(ValueError):
            session._ctx.futures.combine([], len)


async def test_unreadable_answers_count_only_in_a_row(autojump_clock: trio.testing.MockClock) -> None:
    # Review fix: a readable answer (try_again) between two unreadable ones ends the run, so a long poll on a
    # server that now and then truncates a body does not fail after MAX_BAD_REPLY_RETRIES scattered bad answers.
    async with sim_stack() as sim, sim.session() as session:
        bad = Reply(body=b"{not json")
        try_again = Reply(body={"type": "try_again", "request_id": "x", "queue_state": "active"})
        sim.rec.script("retrieve_future", *[bad, try_again] * (MAX_BAD_REPLY_RETRIES + 1))
        assert (await (await track_model(session)).result()).model_id
        assert len(polls(sim)) == 2 * (MAX_BAD_REPLY_RETRIES + 1) + 1
