"""Creating a training model: a new LoRA model (create_model) or one loaded from a checkpoint (create-via-load).

The session calls these; each takes the session's next ``model_seq_id``, waits for the model, fetches its info
(once, as the official SDK does) and returns its :class:`~tinkex_trio.TrainingClient`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import trio

from tinkex_trio import types
from tinkex_trio._context import SessionContext
from tinkex_trio._endpoints import API_PREFIX as _API
from tinkex_trio._loss_handles import LossHandle, encode_graph, trace_loss
from tinkex_trio._pool_set import PoolKind
from tinkex_trio._results import fetch_info, json_decoder
from tinkex_trio._training import TrainingClient
from tinkex_trio.errors import ResponseValidationError

__all__ = ["create_client_from_state", "create_lora_client"]

_JSON = "application/json"


async def create_lora_client(
    ctx: SessionContext,
    base_model: str,
    rank: int,
    *,
    seed: int | None,
    train_mlp: bool,
    train_attn: bool,
    train_unembed: bool,
    user_metadata: Mapping[str, Any] | None,
    optimizer: types.OptimizerConfig | None = None,
) -> TrainingClient:
    """Create a LoRA model (create_model with the session's next ``model_seq_id``), wait for it, fetch its info."""
    ctx.check_alive()
    model_seq_id = ctx.next_model_seq_id()
    request = types.CreateModelRequest(
        session_id=ctx.session_id,
        model_seq_id=model_seq_id,
        base_model=base_model,
        user_metadata=dict(user_metadata) if user_metadata is not None else None,
        lora_config=types.LoraConfig(
            rank=rank, seed=seed, train_unembed=train_unembed, train_mlp=train_mlp, train_attn=train_attn
        ),
        optimizer_config=optimizer if optimizer is not None else types.AdamOptimizerConfig(),
    )
    reply, roundtrip = await _post_future(
        ctx, "create_model", types.encode(request), _JSON, "Session.create_lora_training_client"
    )
    future = ctx.futures.track(
        reply, "CreateModel", json_decoder(types.CreateModelResponse), create_roundtrip_s=roundtrip
    )
    created = await future.result()
    info = await fetch_info(ctx.transport, created.model_id)
    return TrainingClient(ctx, created.model_id, model_seq_id=model_seq_id, info=info)


async def create_client_from_state(
    ctx: SessionContext,
    path: str,
    *,
    with_optimizer: bool,
    user_metadata: Mapping[str, Any] | None,
) -> TrainingClient:
    """Create a model from a checkpoint (create-via-load: load_weights with session_id + model_seq_id).

    The model id is ``"{session_id}:train:{model_seq_id}"``, as the official SDK builds it; the checkpoint gives
    the base model and LoRA settings.
    """
    ctx.check_alive()
    model_seq_id = ctx.next_model_seq_id()
    model_id = f"{ctx.session_id}:train:{model_seq_id}"
    request = types.LoadWeightsRequest(
        path=path,
        optimizer=with_optimizer,
        session_id=ctx.session_id,
        model_seq_id=model_seq_id,
        user_metadata=dict(user_metadata) if user_metadata is not None else None,
    )
    reply, roundtrip = await _post_future(
        ctx, "load_weights", types.encode(request), _JSON, "Session.create_training_client_from_state"
    )
    future = ctx.futures.track(
        reply, "LoadWeights", json_decoder(types.LoadWeightsResponse), create_roundtrip_s=roundtrip
    )
    loaded = await future.result()
    if loaded.model_id is not None and loaded.model_id != model_id:
        raise ResponseValidationError(
            f"load_weights created model {loaded.model_id!r}, expected {model_id!r}", field="$.model_id"
        )
    info = await fetch_info(ctx.transport, model_id)
    return TrainingClient(ctx, model_id, model_seq_id=model_seq_id, info=info)


async def create_custom_loss(ctx: SessionContext, fn: Callable[..., Any], input_ranks: Mapping[str, int]) -> LossHandle:
    """Trace ``fn`` into a handle; upload it (create_custom_loss, with the session's next ``custom_loss_seq_id``) when
    the server runs custom losses itself, and return the handle with the server's ``loss_id``."""
    ctx.check_alive()
    handle = trace_loss(fn, input_ranks, ctx.session_id)
    if not ctx.client_config.custom_loss_server_side:
        await trio.lowlevel.checkpoint()
        return handle
    request = types.CreateCustomLossRequest(
        session_id=ctx.session_id,
        custom_loss_seq_id=ctx.next_custom_loss_seq_id(),
        name=handle.name,
        inputs=list(handle.inputs),
        graph=encode_graph(handle),
    )
    reply, roundtrip = await _post_future(
        ctx, "create_custom_loss", types.encode(request), _JSON, "Session.create_custom_loss"
    )
    future = ctx.futures.track(
        reply, "CreateCustomLoss", json_decoder(types.CreateCustomLossResponse), create_roundtrip_s=roundtrip
    )
    created = await future.result()
    return dataclasses.replace(handle, loss_id=created.loss_id)


async def _post_future(
    ctx: SessionContext, endpoint: str, body: bytes, content_type: str, sdk_method: str
) -> tuple[types.UntypedAPIFuture, float]:
    """POST a future-returning request on the training pool; return the future reply and the round trip (s).

    The transport retries it per the policy, with one idempotency key for every attempt (and the same seq_id).
    """
    started = trio.current_time()
    reply = await ctx.transport.request_json(
        types.UntypedAPIFuture,
        PoolKind.TRAINING,
        "POST",
        f"{_API}/{endpoint}",
        content=body,
        content_type=content_type,
        sdk_method=sdk_method,
    )
    return reply, trio.current_time() - started
