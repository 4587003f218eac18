"""The simulated server's state: sessions, training models (training runs), sampling sessions and checkpoints.

Plain synchronous bookkeeping, touched only from the trio thread (the numpy work of a future runs in a worker thread
and hands its result back to the trio thread, which records it here). Ids follow the protocol:

- sessions: ``sess-<hex>`` (no ``:`` or ``/``);
- training models (= training run ids): ``{session_id}:train:{model_seq_id}`` (the SDK builds this itself for
  create-via-load);
- sampling sessions: ``{session_id}:sample:{sampling_session_seq_id}``;
- checkpoints: ``tinker://{model_id}/weights/{name}`` (training: weights + optimizer state) and
  ``tinker://{model_id}/sampler_weights/{name}`` (sampler: weights only) and
  ``tinker://{model_id}/external_weights/{name}`` (weights for download); the checkpoint id is the path after the
  training run id (``weights/{name}``, ...).
"""

from __future__ import annotations

import base64
import json
import random
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import trio

from tinkex_trio import types as t
from tinkex_trio.sim._ledger import Ledger
from tinkex_trio.sim._model import LoraModel
from tinkex_trio.sim._model_types import ModelConfig, OptimizerFamily, SimUserError
from tinkex_trio.sim._stability import StabilityStore
from tinkex_trio.sim._trace import TraceExport, TraceSpan

__all__ = [
    "DEFAULT_PROJECT",
    "CheckpointKind",
    "CheckpointRecord",
    "ModelRecord",
    "SamplerRecord",
    "SessionRecord",
    "SimState",
    "StateError",
    "parse_tinker_path",
]

MAX_CACHED_SAMPLERS = 64
"""Sampling weights that keep their cached tables; less recently sampled ones drop them (recomputed when needed)."""
DEFAULT_PROJECT = "default"
"""The project of a session created without one (the simulator's stand-in for the key's default project)."""
MAX_TRACE_SPANS = 50_000
"""Finished requests a session keeps for its trace export (older ones are dropped)."""
MAX_COMPLETIONS = 50_000
"""Completion events a sampling session keeps for ``retrieve_futures`` (older ones are dropped)."""

CheckpointKind = t.CheckpointType


class StateError(Exception):
    """A request refers to something that does not exist or conflicts with the state; the app answers ``status``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _now() -> datetime:
    return datetime.now(UTC)


def parse_tinker_path(path: str) -> t.TinkerPath:
    """Parse a tinker path; a malformed one raises :class:`SimUserError`."""
    try:
        return t.TinkerPath.parse(path)
    except ValueError:
        raise SimUserError(
            f"invalid tinker path {path!r}: expected "
            "tinker://<training_run_id>/<weights|sampler_weights|external_weights>/<name>"
        ) from None


def check_checkpoint_name(name: str) -> str:
    if not name or "/" in name or name in (".", "..") or len(name) > 256:
        raise SimUserError(f"invalid checkpoint name {name!r}: must be non-empty, without '/', at most 256 characters")
    return name


@dataclass
class SessionRecord:
    session_id: str
    tags: list[str]
    user_metadata: dict[str, Any]
    sdk_version: str
    project_id: str | None
    display_name: str | None
    created_at: datetime
    last_heartbeat: float
    """trio time of the last heartbeat (or of the creation)."""
    heartbeats: int = 0
    finished: str | None = None
    """The first finish reason (``success``, ``errored``, ``interrupted``), once finished."""
    finish_detail: str | None = None
    model_ids: list[str] = field(default_factory=list[str])
    sampler_ids: list[str] = field(default_factory=list[str])
    sampling_clients_joined: int = 0
    trace: deque[TraceSpan] = field(default_factory=lambda: deque[TraceSpan](maxlen=MAX_TRACE_SPANS))
    """The latest finished requests of the session's models and samplers, for its trace export."""
    spans_recorded: int = 0
    """Spans ever added to ``trace`` (it drops old ones: this keeps counting)."""
    trace_export: TraceExport | None = None
    """The session's latest trace export job."""

    @property
    def project(self) -> str:
        """The session's project: the one it was created in or moved to, else the key's default project."""
        return self.project_id or DEFAULT_PROJECT

    def record_span(self, span: TraceSpan) -> None:
        self.trace.append(span)
        self.spans_recorded += 1


@dataclass
class CheckpointRecord:
    training_run_id: str
    kind: CheckpointKind
    name: str
    data: bytes
    """``LoraModel.to_bytes``: weights and, for training checkpoints, the optimizer state."""
    base_model: str
    lora_rank: int
    optimizer: OptimizerFamily
    lora_flags: dict[str, bool]
    time: datetime
    user_metadata: dict[str, str] | None = None
    expires_at: datetime | None = None
    public: bool = False

    @property
    def checkpoint_id(self) -> str:
        return self.path.checkpoint_id

    @property
    def tinker_path(self) -> str:
        return str(self.path)

    @property
    def path(self) -> t.TinkerPath:
        return t.TinkerPath(model_id=self.training_run_id, checkpoint_type=self.kind, name=self.name)

    @property
    def size_bytes(self) -> int:
        return len(self.data)

    def set_ttl(self, ttl_seconds: int | None) -> None:
        self.expires_at = None if ttl_seconds is None else self.time + timedelta(seconds=ttl_seconds)

    def to_json(self) -> dict[str, Any]:
        """The protocol's Checkpoint object."""
        out: dict[str, Any] = {
            "checkpoint_id": self.checkpoint_id,
            "checkpoint_type": self.kind,
            "time": self.time.isoformat(),
            "tinker_path": self.tinker_path,
            "size_bytes": self.size_bytes,
            "public": self.public,
        }
        if self.user_metadata is not None:
            out["user_metadata"] = self.user_metadata
        if self.expires_at is not None:
            out["expires_at"] = self.expires_at.isoformat()
        return out


@dataclass
class ModelRecord:
    """A training model (= a training run). ``model`` is ``None`` until its create/load future has run."""

    model_id: str
    session_id: str
    base_model: str
    lora_rank: int
    optimizer: OptimizerFamily
    lora_flags: dict[str, bool]
    user_metadata: dict[str, Any] | None
    created_at: datetime
    model: LoraModel | None = None
    last_request_time: datetime = field(default_factory=_now)
    steps_applied: int = 0
    """Optimizer steps applied through optim_step (each exactly once, however often it was re-sent)."""
    forward_backward_applied: int = 0
    forward_applied: int = 0
    applied_seq_ids: list[int] = field(default_factory=list[int])
    """The seq_ids whose work was applied, in order of application."""
    checkpoints: dict[str, CheckpointRecord] = field(default_factory=dict[str, CheckpointRecord])
    inflight_model: LoraModel | None = None
    """The shared weights of this model's ``inflight`` sampling sessions (replaced by every inflight save)."""
    failed: str | None = None
    """Why creating the model failed (then every later request fails too)."""

    def touch(self) -> None:
        self.last_request_time = _now()

    def last_checkpoint(self, kind: CheckpointKind) -> CheckpointRecord | None:
        found = [c for c in self.checkpoints.values() if c.kind == kind]
        return found[-1] if found else None

    def to_training_run(self, owner: str) -> dict[str, Any]:
        """The protocol's TrainingRun object."""
        out: dict[str, Any] = {
            "training_run_id": self.model_id,
            "base_model": self.base_model,
            "model_owner": owner,
            "is_lora": True,
            "corrupted": self.failed is not None,
            "lora_rank": self.lora_rank,
            "last_request_time": self.last_request_time.isoformat(),
        }
        last = self.last_checkpoint("training")
        if last is not None:
            out["last_checkpoint"] = last.to_json()
        last_sampler = self.last_checkpoint("sampler")
        if last_sampler is not None:
            out["last_sampler_checkpoint"] = last_sampler.to_json()
        if self.user_metadata is not None:
            out["user_metadata"] = {str(k): str(v) for k, v in self.user_metadata.items()}
        return out


@dataclass
class SamplerRecord:
    """A sampling session: fixed weights (a snapshot), or the live ``inflight`` weights of a training model."""

    sampling_session_id: str
    session_id: str
    base_model: str
    model_path: str | None
    model: LoraModel | None
    source_model_id: str | None = None
    """For ``inflight`` sessions: the training model whose ``inflight_model`` is sampled."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """One LoraModel is not thread-safe: sampling workers take turns on the numpy part."""
    client_counter: int = 0
    samples_applied: int = 0
    completions: deque[dict[str, Any]] = field(default_factory=lambda: deque[dict[str, Any]](maxlen=MAX_COMPLETIONS))
    """The latest events for ``retrieve_futures``: ``{"cursor", "clone", "completion"}``, cursors ascending."""
    completion_cursor: int = 0
    """The cursor of the latest event (events are numbered 1, 2, ...)."""
    completion_event: trio.Event = field(default_factory=trio.Event)

    def notify_completion(self, completion: dict[str, Any], clone: int) -> None:
        self.completion_cursor += 1
        self.completions.append({"cursor": self.completion_cursor, "clone": clone, "completion": completion})
        self.completion_event.set()
        self.completion_event = trio.Event()


class SimState:
    """All state of one simulated server."""

    def __init__(self, *, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self.sessions: dict[str, SessionRecord] = {}
        self.models: dict[str, ModelRecord] = {}
        self.samplers: dict[str, SamplerRecord] = {}
        self.telemetry_events: int = 0
        self.telemetry_batches: int = 0
        self.issued_jwts: int = 0
        self.copies: dict[str, str] = {}
        self.trace_exports: dict[str, TraceExport] = {}
        """Every session's latest trace export job, by ``export_id`` (the key of its download URL)."""
        self.ledger = Ledger(lambda: self.clock())
        """The audit log and usage counters of the admin reads (by ``clock``, which a test may replace)."""
        """copy_weights answers by idempotency key: a retried copy is made once."""
        self._base_models: dict[tuple[str, ModelConfig], LoraModel] = {}
        self._base_lock = threading.Lock()
        self._sampled: OrderedDict[int, LoraModel] = OrderedDict()
        """The most recently sampled weights, by ``id`` (touched from worker threads, under ``_sampled_lock``)."""
        self._sampled_lock = threading.Lock()
        self.clock: Callable[[], datetime] = _now
        """Wall-clock time for checkpoint expiry (replaceable in tests)."""
        self._next_expiry: datetime | None = None
        """The earliest ``expires_at`` of any checkpoint (or earlier), so that purging is cheap when nothing is due."""
        self.expired_checkpoints = 0
        self.stability = StabilityStore()
        """Sequences sampled with ``record_stability_info``, for ``stable_reinforce`` (expiring by ``clock``)."""

    # -- ids --------------------------------------------------------------------------------------------------------

    def random_hex(self, nbytes: int = 8) -> str:
        return f"{self._rng.getrandbits(8 * nbytes):0{2 * nbytes}x}"

    def random_seed(self) -> int:
        return self._rng.getrandbits(62)

    # -- sessions ---------------------------------------------------------------------------------------------------

    def create_session(
        self,
        *,
        tags: list[str],
        user_metadata: dict[str, Any],
        sdk_version: str,
        project_id: str | None,
        display_name: str | None,
    ) -> SessionRecord:
        session_id = f"sess-{self.random_hex(8)}"
        while session_id in self.sessions:
            session_id = f"sess-{self.random_hex(8)}"
        record = SessionRecord(
            session_id=session_id,
            tags=list(tags),
            user_metadata=dict(user_metadata),
            sdk_version=sdk_version,
            project_id=project_id,
            display_name=display_name,
            created_at=_now(),
            last_heartbeat=trio.current_time(),
        )
        self.sessions[session_id] = record
        return record

    def session(self, session_id: str) -> SessionRecord:
        record = self.sessions.get(session_id)
        if record is None:
            raise StateError(404, f"session {session_id!r} not found")
        return record

    # -- models -----------------------------------------------------------------------------------------------------

    @staticmethod
    def model_id_for(session_id: str, model_seq_id: int) -> str:
        return f"{session_id}:train:{model_seq_id}"

    @staticmethod
    def sampler_id_for(session_id: str, sampling_session_seq_id: int) -> str:
        return f"{session_id}:sample:{sampling_session_seq_id}"

    def add_model(
        self,
        *,
        session: SessionRecord,
        model_seq_id: int,
        base_model: str,
        lora_rank: int,
        optimizer: OptimizerFamily,
        lora_flags: dict[str, bool],
        user_metadata: dict[str, Any] | None,
    ) -> ModelRecord:
        model_id = self.model_id_for(session.session_id, model_seq_id)
        record = ModelRecord(
            model_id=model_id,
            session_id=session.session_id,
            base_model=base_model,
            lora_rank=lora_rank,
            optimizer=optimizer,
            lora_flags=dict(lora_flags),
            user_metadata=user_metadata,
            created_at=_now(),
        )
        self.models[model_id] = record
        session.model_ids.append(model_id)
        return record

    def model(self, model_id: str) -> ModelRecord:
        record = self.models.get(model_id)
        if record is None:
            raise StateError(404, f"model {model_id!r} not found")
        return record

    # -- checkpoints ------------------------------------------------------------------------------------------------

    def note_expiry(self, expires_at: datetime | None) -> None:
        """Remember that a checkpoint expires at ``expires_at`` (call after setting a TTL)."""
        if expires_at is not None and (self._next_expiry is None or expires_at < self._next_expiry):
            self._next_expiry = expires_at

    def purge_expired_checkpoints(self) -> int:
        """Delete every checkpoint whose TTL has run out; returns how many. Cheap when none is due."""
        now = self.clock()
        if self._next_expiry is None or now < self._next_expiry:
            return 0
        purged = 0
        next_expiry: datetime | None = None
        for model in self.models.values():
            for checkpoint_id, checkpoint in list(model.checkpoints.items()):
                expires_at = checkpoint.expires_at
                if expires_at is None:
                    continue
                if expires_at <= now:
                    del model.checkpoints[checkpoint_id]
                    purged += 1
                elif next_expiry is None or expires_at < next_expiry:
                    next_expiry = expires_at
        self._next_expiry = next_expiry
        self.expired_checkpoints += purged
        return purged

    def find_checkpoint(self, path: str) -> CheckpointRecord:
        """The checkpoint at ``path``; a malformed path raises SimUserError, a missing one StateError(404)."""
        parsed = parse_tinker_path(path)
        model = self.models.get(parsed.model_id)
        checkpoint = model.checkpoints.get(parsed.checkpoint_id) if model is not None else None
        if checkpoint is None:
            raise StateError(404, f"checkpoint {path!r} not found")
        return checkpoint

    def all_checkpoints(self) -> list[CheckpointRecord]:
        found = [c for m in self.models.values() for c in m.checkpoints.values()]
        found.sort(key=lambda c: c.time)
        return found

    def audit_checkpoint(self, event: str, checkpoint: CheckpointRecord, purpose: str | None = None) -> None:
        """Record ``event`` (``checkpoint_create``, ``checkpoint_read``, ...) on ``checkpoint`` in the audit log."""
        run = self.models.get(checkpoint.training_run_id)
        session_id = run.session_id if run is not None else None
        self.ledger.audit_checkpoint(event, checkpoint.tinker_path, checkpoint.training_run_id, session_id, purpose)

    @staticmethod
    def make_checkpoint(
        record: ModelRecord,
        kind: CheckpointKind,
        name: str,
        data: bytes,
        *,
        ttl_seconds: int | None,
        user_metadata: dict[str, str] | None,
    ) -> CheckpointRecord:
        checkpoint = CheckpointRecord(
            training_run_id=record.model_id,
            kind=kind,
            name=name,
            data=data,
            base_model=record.base_model,
            lora_rank=record.lora_rank,
            optimizer=record.optimizer,
            lora_flags=dict(record.lora_flags),
            time=_now(),
            user_metadata=user_metadata,
        )
        checkpoint.set_ttl(ttl_seconds)
        return checkpoint

    # -- samplers ---------------------------------------------------------------------------------------------------

    def base_model(self, base_model: str, cfg: ModelConfig) -> LoraModel:
        """The untrained base model (a LoRA model whose update is zero), cached per name and config."""
        key = (base_model, cfg)
        with self._base_lock:
            model = self._base_models.get(key)
            if model is None:
                model = LoraModel(base_model, 1, 0, cfg)
                self._base_models[key] = model
            return model

    def add_sampler(
        self,
        *,
        session: SessionRecord,
        sampling_session_seq_id: int,
        base_model: str,
        model_path: str | None,
        model: LoraModel | None,
        source_model_id: str | None = None,
    ) -> SamplerRecord:
        sampler_id = self.sampler_id_for(session.session_id, sampling_session_seq_id)
        existing = self.samplers.get(sampler_id)
        if existing is not None:
            return existing
        record = SamplerRecord(
            sampling_session_id=sampler_id,
            session_id=session.session_id,
            base_model=base_model,
            model_path=model_path,
            model=model,
            source_model_id=source_model_id,
        )
        self.samplers[sampler_id] = record
        session.sampler_ids.append(sampler_id)
        return record

    def sampler(self, sampling_session_id: str) -> SamplerRecord:
        record = self.samplers.get(sampling_session_id)
        if record is None:
            raise StateError(404, f"sampling session {sampling_session_id!r} not found")
        return record

    def sampler_model(self, record: SamplerRecord) -> LoraModel:
        """The weights a sample on ``record`` uses right now."""
        model = record.model
        if record.source_model_id is not None:
            source = self.models.get(record.source_model_id)
            if source is not None and source.inflight_model is not None:
                model = source.inflight_model
        if model is None:
            raise SimUserError(f"sampling session {record.sampling_session_id!r} has no weights")
        self._touch_sampled(model)
        return model

    def _touch_sampled(self, model: LoraModel) -> None:
        # Every snapshot sampler (one per save_weights_and_get_sampling_client, i.e. per RL iteration) would otherwise
        # keep ~2.5 MB of tables forever: only the most recently sampled MAX_CACHED_SAMPLERS keep theirs.
        with self._sampled_lock:
            self._sampled[id(model)] = model
            self._sampled.move_to_end(id(model))
            while len(self._sampled) > MAX_CACHED_SAMPLERS:
                _, stale = self._sampled.popitem(last=False)
                stale.drop_caches()

    # -- auth -------------------------------------------------------------------------------------------------------

    def issue_jwt(self, lifetime_s: int) -> str:
        """An unsigned JWT with ``exp``/``iat``/``sub``/``org_id`` claims (the SDK does not check signatures)."""
        now = int(_now().timestamp())
        header = {"alg": "none", "typ": "JWT"}
        claims = {
            "sub": f"sim-user-{self.random_hex(4)}",
            "org_id": "sim-org",
            "email": "sim@example.invalid",
            "iat": now,
            "exp": now + max(lifetime_s, 1),
        }
        self.issued_jwts += 1

        def part(obj: dict[str, Any]) -> str:
            raw = json.dumps(obj, separators=(",", ":")).encode()
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        return f"{part(header)}.{part(claims)}.sim"
