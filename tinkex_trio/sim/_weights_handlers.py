"""Weights endpoints: save (training state, for a sampler, for download), load, and the info of saved weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from tinkex_trio import types as t
from tinkex_trio.sim._asgi import HTTPError, Request, Response, decode_body, json_response
from tinkex_trio.sim._core import (
    SimCore,
    check_ttl,
    existing_model_future,
    find_checkpoint,
    future_response,
    note_seq,
    require_base_model,
    submit_model_op,
)
from tinkex_trio.sim._model import LoraModel
from tinkex_trio.sim._model_types import SimUserError
from tinkex_trio.sim._queue import FutureError, Job
from tinkex_trio.sim._state import (
    CheckpointKind,
    CheckpointRecord,
    ModelRecord,
    check_checkpoint_name,
)


def _save_checkpoint(
    sim: SimCore,
    model: ModelRecord,
    kind: CheckpointKind,
    name: str,
    seq_id: int | None,
    request_type: str,
    respond: Callable[[CheckpointRecord], Any],
    *,
    with_optimizer: bool,
    overwrite: bool,
    ttl_seconds: int | None,
    user_metadata: dict[str, str] | None,
) -> Response:
    """Queue a save of ``model``'s weights (with its optimizer state or not) as checkpoint ``name``; the future's
    result is ``respond(checkpoint)``. An existing checkpoint is replaced only with ``overwrite``."""

    def compute(lora: LoraModel) -> bytes:
        return lora.to_bytes(with_optimizer=with_optimizer)

    def commit(data: bytes) -> Any:
        checkpoint = sim.state.make_checkpoint(
            model, kind, name, data, ttl_seconds=ttl_seconds, user_metadata=user_metadata
        )
        if checkpoint.checkpoint_id in model.checkpoints and not overwrite:
            raise FutureError(f"checkpoint {checkpoint.tinker_path} already exists (use overwrite)", "user")
        model.checkpoints.pop(checkpoint.checkpoint_id, None)
        model.checkpoints[checkpoint.checkpoint_id] = checkpoint
        sim.state.note_expiry(checkpoint.expires_at)
        sim.state.audit_checkpoint("checkpoint_create", checkpoint)
        sim.state.ledger.add_usage("checkpoint", model.session_id, model.base_model, 1)
        return respond(checkpoint)

    return future_response(submit_model_op(sim, model, request_type, seq_id, compute, commit))


def _checkpoint_name(sim: SimCore, name: str | None, seq_id: int | None, prefix: str) -> str:
    if name is None:
        return f"{prefix}-{seq_id if seq_id is not None else sim.state.random_hex(4)}"
    try:
        return check_checkpoint_name(name)
    except SimUserError as exc:
        raise HTTPError(422, str(exc)) from None


_Save = TypeVar("_Save", t.SaveWeightsRequest, t.SaveWeightsForSamplerRequest, t.SaveWeightsExternalRequest)


def _save_request(sim: SimCore, request: Request, type_: type[_Save]) -> tuple[_Save, ModelRecord]:
    """A save request's body and its model; the request holds its seq_id even if it is refused, and a bad TTL is."""
    body = decode_body(request, type_)
    note_seq(request, body.model_id, body.seq_id)
    check_ttl(body.ttl_seconds)
    return body, sim.state.model(body.model_id)


async def save_weights(sim: SimCore, request: Request) -> Response:
    body, model = _save_request(sim, request, t.SaveWeightsRequest)
    return _save_checkpoint(
        sim,
        model,
        "training",
        _checkpoint_name(sim, body.path, body.seq_id, "state"),
        body.seq_id,
        "SaveWeights",
        lambda checkpoint: t.SaveWeightsResponse(path=checkpoint.tinker_path),
        with_optimizer=True,
        overwrite=body.overwrite,
        ttl_seconds=body.ttl_seconds,
        user_metadata=body.user_metadata,
    )


async def save_weights_for_sampler(sim: SimCore, request: Request) -> Response:
    body, model = _save_request(sim, request, t.SaveWeightsForSamplerRequest)
    if body.path is not None:
        return _save_checkpoint(
            sim,
            model,
            "sampler",
            _checkpoint_name(sim, body.path, body.seq_id, "sampler"),
            body.seq_id,
            "SaveWeightsForSampler",
            lambda checkpoint: t.SaveWeightsForSamplerResponse(path=checkpoint.tinker_path),
            with_optimizer=False,
            overwrite=True,
            ttl_seconds=body.ttl_seconds,
            user_metadata=body.user_metadata,
        )
    if body.sampling_session_seq_id is None:
        raise HTTPError(422, "save_weights_for_sampler needs a path or a sampling_session_seq_id")
    session = sim.state.session(model.session_id)
    sampling_seq = body.sampling_session_seq_id
    inflight = body.kind == "inflight"

    def compute_snapshot(lora: LoraModel) -> LoraModel:
        return lora.snapshot()

    def commit_snapshot(snapshot: LoraModel) -> t.SaveWeightsForSamplerResponse:
        if inflight:
            model.inflight_model = snapshot
        sampler = sim.state.add_sampler(
            session=session,
            sampling_session_seq_id=sampling_seq,
            base_model=model.base_model,
            model_path=None,
            model=snapshot,
            source_model_id=model.model_id if inflight else None,
        )
        return t.SaveWeightsForSamplerResponse(sampling_session_id=sampler.sampling_session_id)

    record = submit_model_op(sim, model, "SaveWeightsForSampler", body.seq_id, compute_snapshot, commit_snapshot)
    return future_response(record)


async def save_weights_external(sim: SimCore, request: Request) -> Response:
    body, model = _save_request(sim, request, t.SaveWeightsExternalRequest)
    return _save_checkpoint(
        sim,
        model,
        "external",
        _checkpoint_name(sim, body.path, body.seq_id, "external"),
        body.seq_id,
        "SaveWeightsExternal",
        lambda cp: t.SaveWeightsExternalResponse(path=cp.tinker_path, size_bytes=cp.size_bytes),
        with_optimizer=False,
        overwrite=True,
        ttl_seconds=body.ttl_seconds,
        user_metadata=None,
    )


async def load_weights(sim: SimCore, request: Request) -> Response:
    body = decode_body(request, t.LoadWeightsRequest)
    if body.model_id is not None:
        note_seq(request, body.model_id, body.seq_id)
        if body.session_id is not None:
            raise HTTPError(422, "load_weights takes either model_id (in place) or session_id (create), not both")
        return _load_in_place(sim, body)
    if body.session_id is None or body.model_seq_id is None:
        raise HTTPError(422, "load_weights needs model_id and seq_id, or session_id and model_seq_id")
    session = sim.state.session(body.session_id)
    model_id = sim.state.model_id_for(session.session_id, body.model_seq_id)
    if (resent := existing_model_future(sim, model_id)) is not None:
        return resent
    checkpoint = find_checkpoint(sim, body.path)
    base_model = body.base_model or checkpoint.base_model
    require_base_model(sim, base_model, training=True)
    if body.optimizer:
        if body.optimizer_config is not None:
            raise HTTPError(422, "optimizer_config cannot override the optimizer state restored from the checkpoint")
        optimizer = checkpoint.optimizer
    else:
        optimizer = "dimuon" if isinstance(body.optimizer_config, t.DimuonOptimizerConfig) else "adamw"
    record = sim.state.add_model(
        session=session,
        model_seq_id=body.model_seq_id,
        base_model=checkpoint.base_model,
        lora_rank=checkpoint.lora_rank,
        optimizer=optimizer,
        lora_flags=checkpoint.lora_flags,
        user_metadata=body.user_metadata,
    )
    data, with_optimizer, path = checkpoint.data, body.optimizer, body.path

    def compute() -> LoraModel:
        try:
            restored = LoraModel.from_bytes(data)
            if with_optimizer:
                restored.load_bytes(data, with_optimizer=True)
                return restored
            fresh = LoraModel(restored.base_model, restored.rank, restored.seed, restored.cfg, optimizer=optimizer)
            fresh.load_bytes(data, with_optimizer=False)
            return fresh
        except SimUserError as exc:
            raise FutureError(str(exc), "user") from None

    def commit(lora: LoraModel) -> t.LoadWeightsResponse:
        record.model = lora
        sim.state.audit_checkpoint("checkpoint_read", checkpoint, purpose="load_weights")
        return t.LoadWeightsResponse(path=path, model_id=record.model_id)

    future, _ = sim.queue.submit(
        record.model_id,
        "LoadWeights",
        Job(compute=compute, commit=commit),
        seq_id=0,
        ordered=True,
        extra={"model_id": record.model_id},
    )
    return future_response(future)


def _load_in_place(sim: SimCore, body: t.LoadWeightsRequest) -> Response:
    assert body.model_id is not None
    model = sim.state.model(body.model_id)
    checkpoint = find_checkpoint(sim, body.path)
    data, with_optimizer, path = checkpoint.data, body.optimizer, body.path

    def compute(lora: LoraModel) -> None:
        lora.load_bytes(data, with_optimizer=with_optimizer)

    def commit(_: None) -> t.LoadWeightsResponse:
        sim.state.audit_checkpoint("checkpoint_read", checkpoint, purpose="load_weights")
        return t.LoadWeightsResponse(path=path, model_id=model.model_id)

    record = submit_model_op(sim, model, "LoadWeights", body.seq_id, compute, commit)
    return future_response(record)


async def weights_info(sim: SimCore, request: Request) -> Response:
    body = decode_body(request, t.WeightsInfoRequest)
    checkpoint = find_checkpoint(sim, body.tinker_path)
    optimizer_config: t.OptimizerConfig = (
        t.DimuonOptimizerConfig() if checkpoint.optimizer == "dimuon" else t.AdamOptimizerConfig()
    )
    return json_response(
        t.WeightsInfoResponse(
            base_model=checkpoint.base_model,
            is_lora=True,
            lora_rank=checkpoint.lora_rank,
            train_unembed=checkpoint.lora_flags.get("train_unembed"),
            train_mlp=checkpoint.lora_flags.get("train_mlp"),
            train_attn=checkpoint.lora_flags.get("train_attn"),
            optimizer_config=optimizer_config,
        )
    )


async def copy_weights(sim: SimCore, request: Request) -> Response:
    """A copy of a checkpoint in a new session's new training run (which holds no trainable model); answered
    directly, once per idempotency key."""
    body = decode_body(request, t.CopyWeightsRequest)
    key = request.header("x-idempotency-key")
    if key and (done := sim.state.copies.get(key)) is not None:
        return json_response(t.CopyWeightsResponse(tinker_path=done))
    check_ttl(body.ttl_seconds)
    source = find_checkpoint(sim, body.source_path)
    session = sim.state.create_session(
        tags=["copy_weights"],
        user_metadata={"copied_from": source.tinker_path},
        sdk_version="",
        project_id=body.destination_project_id,
        display_name=None,
    )
    run = sim.state.add_model(
        session=session,
        model_seq_id=0,
        base_model=source.base_model,
        lora_rank=source.lora_rank,
        optimizer=source.optimizer,
        lora_flags=source.lora_flags,
        user_metadata={"copied_from": source.tinker_path},
    )
    run.failed = "a copy of weights: it cannot be trained on"
    copy = sim.state.make_checkpoint(
        run, source.kind, source.name, source.data, ttl_seconds=body.ttl_seconds, user_metadata=source.user_metadata
    )
    run.checkpoints[copy.checkpoint_id] = copy
    sim.state.note_expiry(copy.expires_at)
    sim.state.audit_checkpoint("checkpoint_read", source, purpose="copy_weights")
    sim.state.audit_checkpoint("checkpoint_create", copy)
    sim.state.ledger.add_usage("checkpoint", session.session_id, copy.base_model, 1)
    if key:
        sim.state.copies[key] = copy.tinker_path
    return json_response(t.CopyWeightsResponse(tinker_path=copy.tinker_path))
