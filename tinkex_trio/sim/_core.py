"""What every handler of the simulator shares: `SimCore` (configuration, state, futures queue, counters) and the
checks and submissions that more than one area of the protocol needs.

Handlers are functions ``(sim, request) -> response`` over a `SimCore`; `tinkex_trio.sim._app.SimApp` is one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from tinkex_trio import types as t
from tinkex_trio.sim._asgi import HTTPError, Request, Response, json_response
from tinkex_trio.sim._config import SimConfig, SupportedModel
from tinkex_trio.sim._model import LoraModel
from tinkex_trio.sim._model_types import SimUserError
from tinkex_trio.sim._queue import FutureError, FutureRecord, FuturesQueue, Job, QueueSettings
from tinkex_trio.sim._state import CheckpointRecord, ModelRecord, SimState

__all__ = [
    "MAX_TTL_SECONDS",
    "SimCore",
    "check_training_seq",
    "check_ttl",
    "existing_model_future",
    "find_checkpoint",
    "future_response",
    "note_seq",
    "require_base_model",
    "submit_model_op",
    "supported",
]

MAX_TTL_SECONDS = 100 * 365 * 86400
"""Largest checkpoint ``ttl_seconds`` (a larger one would overflow the expiry date)."""


class SimCore:
    """The simulated server without its HTTP front. ``config`` may be replaced or mutated at run time; ``state``
    holds sessions, models, samplers and checkpoints; ``queue`` the futures; ``request_counts`` counts requests per
    endpoint name and ``status_counts`` responses per status."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config: SimConfig = config if config is not None else SimConfig()
        self.state = SimState(seed=self.config.seed)
        self.queue = FuturesQueue(self._queue_settings, seed=self.config.seed)
        self.request_counts: Counter[str] = Counter()
        self.status_counts: Counter[int] = Counter()
        self.lifespan_running = False

    def _queue_settings(self) -> QueueSettings:
        config = self.config
        faults = config.faults
        return QueueSettings(
            base_s=config.service.base_s,
            per_token_s=config.service.per_token_s,
            workers=config.service.workers_per_model,
            queue_capacity=config.queue_capacity,
            seq_gap_timeout_s=config.seq_gap_timeout_s,
            future_failure_rate=faults.future_failure_rate,
            fail_future=faults.future_fails,
            forced_queue_state="paused_rate_limit" if faults.paused_rate_limit else None,
            max_retained=config.max_retained_futures,
            max_retained_bytes=config.max_retained_bytes,
            threads=config.compute_in_threads,
        )


def note_seq(request: Request, model_id: str, seq_id: int | None) -> None:
    """Remember which (model, seq_id) this request holds, so that rejecting it still uses up the seq_id."""
    if seq_id is not None:
        request.params["seq_model_id"] = model_id
        request.params["seq_id"] = str(seq_id)


def supported(sim: SimCore, base_model: str) -> SupportedModel | None:
    entry = sim.config.find_model(base_model)
    if entry is None and sim.config.allow_unknown_base_models:
        return SupportedModel(base_model)
    return entry


def require_base_model(sim: SimCore, base_model: str, *, training: bool) -> SupportedModel:
    entry = supported(sim, base_model)
    if entry is None:
        names = ", ".join(m.model_name for m in sim.config.supported_models)
        raise HTTPError(400, f"unsupported base model {base_model!r}; supported: {names}")
    if training and not entry.trainable:
        raise HTTPError(400, f"base model {base_model!r} is not trainable")
    if not training and not entry.sampleable:
        raise HTTPError(400, f"base model {base_model!r} is not sampleable")
    return entry


def future_response(record: FutureRecord) -> Response:
    future = t.UntypedAPIFuture(
        request_id=record.request_id,
        model_id=record.extra.get("model_id"),
        sample_sequence_ids=record.extra.get("sample_sequence_ids"),
    )
    return json_response(future)


def check_ttl(ttl_seconds: int | None) -> None:
    if ttl_seconds is not None and not 0 < ttl_seconds <= MAX_TTL_SECONDS:
        raise HTTPError(
            422, f"ttl_seconds must be in [1, {MAX_TTL_SECONDS}] (or null for no expiry), got {ttl_seconds}"
        )


def check_training_seq(seq_id: int | None) -> None:
    if seq_id is not None and seq_id < 1:
        raise HTTPError(422, f"seq_id must be >= 1 (0 is the model's creation), got {seq_id}")


def submit_model_op(
    sim: SimCore,
    model: ModelRecord,
    request_type: str,
    seq_id: int | None,
    compute: Callable[[LoraModel], Any],
    commit: Callable[[Any], Any],
    *,
    tokens: int = 0,
    threaded: bool = True,
) -> FutureRecord:
    """Queue one request in the model's ordered lane (idempotent on ``(model_id, seq_id)``)."""
    check_training_seq(seq_id)
    if seq_id is not None:
        existing = sim.queue.lookup_seq(model.model_id, seq_id)
        if existing is not None:
            return existing

    def run() -> Any:
        if model.model is None:
            raise FutureError(f"model {model.model_id} is not available: {model.failed or 'never created'}")
        try:
            return compute(model.model)
        except SimUserError as exc:
            raise FutureError(str(exc), "user") from None

    def finish(value: Any) -> Any:
        model.touch()
        if seq_id is not None:
            model.applied_seq_ids.append(seq_id)
        return commit(value)

    job = Job(compute=run, commit=finish, tokens=tokens, threaded=threaded)
    record, _ = sim.queue.submit(
        model.model_id, request_type, job, seq_id=seq_id, ordered=True, extra={"model_id": model.model_id}
    )
    return record


def find_checkpoint(sim: SimCore, path: str) -> CheckpointRecord:
    try:
        return sim.state.find_checkpoint(path)
    except SimUserError as exc:
        raise HTTPError(422, str(exc)) from None


def existing_model_future(sim: SimCore, model_id: str) -> Response | None:
    """A model creation (create_model, create-via-load) re-sent: the first one's future (its seq 0), so the model
    is created once. HTTPError 400 if a model with that id exists without such a record."""
    existing = sim.queue.lookup_seq(model_id, 0)
    if existing is not None:
        return future_response(existing)
    if model_id in sim.state.models:
        raise HTTPError(400, f"model {model_id} already exists")
    return None
