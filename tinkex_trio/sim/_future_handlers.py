"""Futures endpoints: retrieve one future (long poll), a sampler's completions, cancel; and rendering results."""

from __future__ import annotations

import logging
from typing import Any

import trio

from tinkex_trio import types as t
from tinkex_trio._proto import _codec
from tinkex_trio.sim._asgi import JSON, PROTOBUF, HTTPError, Request, Response, decode_body, json_response
from tinkex_trio.sim._convert import (
    FwdBwdPayload,
    SamplePayload,
    fwdbwd_output,
    sample_response,
)
from tinkex_trio.sim._core import (
    SimCore,
)
from tinkex_trio.sim._queue import FutureRecord
from tinkex_trio.sim._state import (
    CheckpointRecord,
)

logger = logging.getLogger("tinkex_trio.sim")


def _get_record(sim: SimCore, request_id: str) -> FutureRecord:
    record = sim.queue.get(request_id)
    if record is not None:
        return record
    if sim.queue.is_expired_id(request_id):
        raise HTTPError(410, f"future {request_id} has expired")
    raise HTTPError(404, f"future {request_id} not found")


async def retrieve_future(sim: SimCore, request: Request) -> Response:
    body = decode_body(request, t.FutureRetrieveRequest)
    record = _get_record(sim, body.request_id)
    ready = await sim.queue.wait(record, sim.config.effective_long_poll_s())
    if not ready:
        state = sim.queue.queue_state()
        return json_response(
            t.TryAgainResponse(
                request_id=record.request_id,
                queue_state=state,
                queue_state_reason=_queue_state_reason(sim, state),
            )
        )
    if record.status != "done":
        return json_response(
            t.RequestFailedResponse(
                error=record.error or "the request failed",
                category=t.RequestErrorCategory(record.category),
            )
        )
    response = render_result(sim, record, protobuf=request.accepts_protobuf())
    if body.allow_metadata_only and len(response.body) > sim.config.complete_metadata_threshold_bytes:
        return json_response(t.FutureCompleteMetadata(response_payload_size=len(response.body)))
    return response


def _queue_state_reason(sim: SimCore, state: str) -> str | None:
    if state == "paused_capacity":
        return f"the server is over capacity ({sim.queue.queued_count} requests queued)"
    if state == "paused_rate_limit":
        return "rate limited (simulated)"
    return None


def render_result(sim: SimCore, record: FutureRecord, *, protobuf: bool) -> Response:
    """The finished record's result, as protobuf (fwd/bwd and sample, when accepted) or JSON. Cached per format."""
    result = record.result
    is_proto = protobuf and isinstance(result, FwdBwdPayload | SamplePayload)
    cache_key = "body:proto" if is_proto else "body:json"
    cached = record.extra.get(cache_key)
    if isinstance(cached, bytes):
        return Response(200, cached, PROTOBUF if is_proto else JSON)
    if isinstance(result, FwdBwdPayload):
        output = fwdbwd_output(result.result)
        data = _codec.encode_forward_backward_output(output) if is_proto else t.encode(output)
    elif isinstance(result, SamplePayload):
        sample = sample_response(result)
        data = _codec.encode_sample_response(sample) if is_proto else t.encode(sample)
    elif isinstance(result, CheckpointRecord):
        data = t.encode({"path": result.tinker_path})
    else:
        data = t.encode(result)
    record.extra[cache_key] = data
    sim.queue.account(record, len(data))
    return Response(200, data, PROTOBUF if is_proto else JSON)


def on_future_finished(sim: SimCore, record: FutureRecord) -> None:
    sampler_id = record.extra.get("sampler_id")
    if not isinstance(sampler_id, str):
        return
    sampler = sim.state.samplers.get(sampler_id)
    if sampler is None:
        return
    completion: dict[str, Any]
    if record.status == "done":
        size: int | None = None
        try:
            size = len(render_result(sim, record, protobuf=True).body)
        except Exception:
            logger.exception("sim: could not render sample %s", record.request_id)
        completion = {"state": "finished", "request_id": record.request_id}
        if size is not None:
            completion["response_payload_uncompressed_size"] = size
    else:
        completion = {"state": "failed", "request_id": record.request_id}
    clone = record.extra.get("clone", 0)
    sampler.notify_completion(completion, clone if isinstance(clone, int) else 0)


async def retrieve_futures(sim: SimCore, request: Request) -> Response:
    body = decode_body(request, t.FuturesRetrieveRequest)
    target = body.target
    sampler = sim.state.sampler(target.sampling_session_id)
    for request_id in body.retrieved_request_ids:
        record = sim.queue.get(request_id)
        if record is not None and record.finished:
            record.extra["retrieved"] = True
    max_wait = sim.config.effective_long_poll_s()
    if body.timeout is not None:
        max_wait = min(max(body.timeout, 0.0), max_wait)

    def pending() -> list[dict[str, Any]]:
        # Newest first, stopping at the client's cursor: a poll costs what it returns, not the whole history.
        found: list[dict[str, Any]] = []
        for e in reversed(sampler.completions):
            if e["cursor"] <= body.prev_cursor:
                break
            if e["clone"] == target.cloned_sampler_id:
                found.append(e["completion"])
        found.reverse()
        return found

    found = pending()
    if not found and max_wait > 0:
        with trio.move_on_after(max_wait):
            # Bounded by the deadline above; each wake-up is a new completion on this sampler.
            while not found:
                await sampler.completion_event.wait()
                found = pending()
    cursor = max(sampler.completion_cursor, body.prev_cursor)
    return json_response({"completions": found, "cursor": cursor})


async def cancel_future(sim: SimCore, request: Request) -> Response:
    body = decode_body(request, t.CancelFutureRequest)
    cancelled = sim.queue.cancel(body.request_id)
    return json_response({"request_id": body.request_id, "cancelled": cancelled})
