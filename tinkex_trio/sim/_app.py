"""The simulated Tinker server as a plain ASGI app: routing by method and path, auth, lifespan, JSON/protobuf.

::

    app = create_app(SimConfig(...))      # an ASGI callable; app.config is mutable at run time, app.state the state
    # under hypercorn (trio worker): the lifespan opens the nursery that runs the futures queue
    # in tests with httpx.ASGITransport (no lifespan): optionally ``async with app.running(): ...``; without it the
    # queue runs its lanes as trio system tasks of the current run.

Every endpoint of the protocol (§3, §6) is answered; bad input gets a 4xx with a JSON ``{"detail": ...}`` (400 for
a body that is not JSON or not protobuf, 422 for one that does not fit the schema, 404 for unknown ids and paths,
401 for a bad ``X-API-Key``), never a dropped connection. Semantic errors found while running a request (unknown loss,
missing loss input, shape mismatch) fail its future with category ``"user"``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import urllib.parse
import zlib
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt
import trio

from tinkex_trio import types as t
from tinkex_trio.sim._config import SimConfig, SupportedModel
from tinkex_trio.sim._model import (
    MASK_LOGPROB,
    AdamParams,
    DatumArrays,
    DimuonParams,
    FwdBwdResult,
    LoraModel,
    SampleResult,
    SimUserError,
    TopK,
)
from tinkex_trio.sim._queue import FutureError, FutureRecord, FuturesQueue, Job, QueueSettings
from tinkex_trio.sim._state import (
    CheckpointKind,
    CheckpointRecord,
    ModelRecord,
    SamplerRecord,
    SimState,
    StateError,
    check_checkpoint_name,
    parse_tinker_path,
)

__all__ = ["SimApp", "create_app"]

logger = logging.getLogger("tinkex_trio.sim")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MAX_BODY_BYTES = 512 * 1024 * 1024
MAX_NUM_SAMPLES = 4096
"""Most samples one ``asample`` may ask for (each costs a sequence id, a row of output and compute)."""
MAX_SAMPLED_TOKENS = 1 << 20
"""Most tokens one ``asample`` may generate in all (``num_samples * max_tokens``): its result is rendered on the event
loop, which takes about a quarter of a second per million tokens."""
MAX_TTL_SECONDS = 100 * 365 * 86400
"""Largest checkpoint ``ttl_seconds`` (a larger one would overflow the expiry date)."""
_CLONE_STRIDE = 1_000_000_000

S = TypeVar("S")


class HTTPError(Exception):
    """Answer the request with ``status`` and ``{"detail": detail}``."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict[str, str])

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").lower()

    def accepts_protobuf(self) -> bool:
        return PROTOBUF in self.headers.get("accept", "").lower()


@dataclass
class Response:
    status: int = 200
    body: bytes = b"{}"
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict[str, str])


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(status=status, body=t.encode(obj))


def _error_body(detail: str) -> bytes:
    return t.encode({"detail": detail})


# -- request bodies the server reads more leniently than the client types -------------------------------------------


class _FwdBwdInput(msgspec.Struct, kw_only=True):
    data: list[t.Datum]
    loss_fn: str
    loss_fn_config: dict[str, float | str] | None = None


class _FwdBwdJSONRequest(msgspec.Struct, kw_only=True):
    """The JSON form of a forward_backward request; ``forward_input`` (ForwardRequest) is accepted too."""

    model_id: str
    forward_backward_input: _FwdBwdInput | None = None
    forward_input: _FwdBwdInput | None = None
    seq_id: int | None = None
    forward_only: bool | None = None


class _TelemetryBody(msgspec.Struct):
    events: list[Any] = msgspec.field(default_factory=list[Any])


class _ProjectBody(msgspec.Struct):
    project_id: str | None = None


class _LooseObject(msgspec.Struct):
    """Any JSON object (fields ignored)."""


@dataclass
class _FwdBwdWork:
    """What a forward_backward future computes, decoded from JSON or protobuf."""

    model_id: str
    seq_id: int | None
    data: list[t.Datum]
    loss_fn: str
    loss_fn_config: dict[str, float | str] | None
    forward_only: bool


@dataclass
class _FwdBwdPayload:
    result: FwdBwdResult


@dataclass
class _SamplePayload:
    result: SampleResult
    sequence_ids: list[str]


Handler = Callable[[Request], Awaitable[Response]]


class SimApp:
    """The ASGI app. ``config`` may be replaced or mutated at run time; ``state`` holds sessions, models, samplers and
    checkpoints; ``queue`` the futures; ``request_counts`` counts requests per endpoint name."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config: SimConfig = config if config is not None else SimConfig()
        self.state = SimState(seed=self.config.seed)
        self.queue = FuturesQueue(self._queue_settings, seed=self.config.seed)
        self.queue.add_completion_listener(self._on_future_finished)
        self.request_counts: Counter[str] = Counter()
        self.status_counts: Counter[int] = Counter()
        self.lifespan_running = False
        self._routes: dict[tuple[str, str], Handler] = {}
        self._register_routes()

    # -- ASGI -------------------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Run the futures queue in a nursery that lives from lifespan startup to shutdown."""
        shutdown = False
        async with trio.open_nursery() as nursery:
            message = await receive()
            if message.get("type") != "lifespan.startup":
                return
            self.queue.attach_nursery(nursery)
            self.lifespan_running = True
            try:
                await send({"type": "lifespan.startup.complete"})
                # Bounded: the lifespan protocol sends exactly one shutdown message (or the server cancels us).
                while not shutdown:
                    message = await receive()
                    shutdown = message.get("type") == "lifespan.shutdown"
            finally:
                # Also when the server cancels the lifespan task: never leave the queue pointing at a dead nursery.
                self.queue.attach_nursery(None)
                self.lifespan_running = False
            nursery.cancel_scope.cancel()
        await send({"type": "lifespan.shutdown.complete"})

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncGenerator[SimApp]:
        """Run the futures queue in a nursery of the caller (for in-process tests without a lifespan)."""
        async with trio.open_nursery() as nursery:
            self.queue.attach_nursery(nursery)
            try:
                yield self
            finally:
                self.queue.attach_nursery(None)
                nursery.cancel_scope.cancel()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or [])
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
        body = bytearray()
        too_large = False
        # Bounded by the client's body: each message carries a chunk, the last one has more_body=False.
        while True:
            message = await receive()
            if message.get("type") == "http.disconnect":
                return
            chunk: bytes = message.get("body", b"")
            if len(body) + len(chunk) > MAX_BODY_BYTES:
                too_large = True
            else:
                body.extend(chunk)
            if not message.get("more_body", False):
                break
        query = {
            k: v[-1] for k, v in urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1")).items() if v
        }
        path: str = scope.get("path", "/")
        request = Request(
            method=str(scope.get("method", "GET")).upper(),
            path=path.rstrip("/") or "/",
            query=query,
            headers=headers,
            body=bytes(body),
        )
        if too_large:
            response = Response(413, _error_body(f"request body larger than {MAX_BODY_BYTES} bytes"))
        else:
            response = await self.handle(request)
        self.status_counts[response.status] += 1
        out_headers = [
            (b"content-type", response.content_type.encode("latin-1")),
            (b"content-length", str(len(response.body)).encode("latin-1")),
        ]
        out_headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items())
        await send({"type": "http.response.start", "status": response.status, "headers": out_headers})
        await send({"type": "http.response.body", "body": response.body, "more_body": False})

    async def handle(self, request: Request) -> Response:
        """Route and run one request; every failure becomes a JSON error response."""
        try:
            # Checkpoints whose TTL ran out are gone (and their bytes freed) before anything can see them.
            self.state.purge_expired_checkpoints()
            handler, name = self._route(request)
            self.request_counts[name] += 1
            if name != "healthz":
                self._check_auth(request)
            return await handler(request)
        except HTTPError as exc:
            self._consume_rejected_seq(request, exc.detail)
            return Response(exc.status, _error_body(exc.detail), headers=exc.headers)
        except StateError as exc:
            self._consume_rejected_seq(request, exc.detail)
            return Response(exc.status, _error_body(exc.detail))
        except SimUserError as exc:
            self._consume_rejected_seq(request, str(exc))
            return Response(400, _error_body(str(exc)))
        except Exception as exc:
            logger.exception("sim: unexpected error in %s %s", request.method, request.path)
            return Response(500, _error_body(f"internal server error: {type(exc).__name__}: {exc}"))

    # -- routing ----------------------------------------------------------------------------------------------------

    def _register_routes(self) -> None:
        post = {
            "client/config": self._client_config,
            "client/dynamic_config": self._dynamic_config,
            "auth/token": self._auth_token,
            "create_session": self._create_session,
            "session_heartbeat": self._heartbeat,
            "create_model": self._create_model,
            "get_info": self._get_info,
            "forward_backward": self._forward_backward,
            "forward": self._forward_backward,
            "optim_step": self._optim_step,
            "save_weights": self._save_weights,
            "save_weights_for_sampler": self._save_weights_for_sampler,
            "save_weights_external": self._save_weights_external,
            "load_weights": self._load_weights,
            "create_sampling_session": self._create_sampling_session,
            "join_sampling_session": self._join_sampling_session,
            "asample": self._asample,
            "retrieve_future": self._retrieve_future,
            "retrieve_futures": self._retrieve_futures,
            "cancel_future": self._cancel_future,
            "weights_info": self._weights_info,
            "telemetry": self._telemetry,
        }
        get = {
            "get_server_capabilities": self._capabilities,
            "healthz": self._healthz,
            "training_runs": self._list_training_runs,
            "checkpoints": self._list_user_checkpoints,
            "sessions": self._list_sessions,
        }
        for name, handler in post.items():
            self._routes[("POST", f"/api/v1/{name}")] = handler
        for name, handler in get.items():
            self._routes[("GET", f"/api/v1/{name}")] = handler

    def _route(self, request: Request) -> tuple[Handler, str]:
        path = request.path
        exact = self._routes.get((request.method, path))
        if exact is not None:
            return exact, path.removeprefix("/api/v1/")
        if not path.startswith("/api/v1/"):
            raise HTTPError(404, f"not found: {request.method} {path}")
        parts = path.removeprefix("/api/v1/").split("/")
        method = request.method
        if parts[0] == "sessions" and len(parts) >= 2:
            request.params["session_id"] = parts[1]
            if len(parts) == 2 and method == "GET":
                return self._get_session, "sessions/{id}"
            if len(parts) == 3 and parts[2] == "finish" and method == "POST":
                return self._finish_session, "sessions/{id}/finish"
            if len(parts) == 3 and parts[2] == "project" and method == "PUT":
                return self._set_session_project, "sessions/{id}/project"
        if parts[0] == "samplers" and len(parts) == 2 and method == "GET":
            request.params["sampler_id"] = parts[1]
            return self._get_sampler, "samplers/{id}"
        if parts[0] == "training_runs" and len(parts) >= 2:
            request.params["training_run_id"] = parts[1]
            if len(parts) == 2 and method == "GET":
                return self._get_training_run, "training_runs/{id}"
            if len(parts) >= 3 and parts[2] == "checkpoints":
                rest = parts[3:]
                if not rest and method == "GET":
                    return self._list_run_checkpoints, "training_runs/{id}/checkpoints"
                if len(rest) >= 2:
                    request.params["checkpoint_id"] = f"{rest[0]}/{rest[1]}"
                    action = rest[2] if len(rest) == 3 else None
                    if len(rest) == 2 and method == "DELETE":
                        return self._delete_checkpoint, "checkpoints/{id} DELETE"
                    if action == "publish" and method in ("POST", "DELETE"):
                        return self._publish_checkpoint, "checkpoints/{id}/publish"
                    if action == "ttl" and method == "PUT":
                        return self._set_checkpoint_ttl, "checkpoints/{id}/ttl"
                    if action == "external_weights_urls" and method == "GET":
                        return self._external_weights_urls, "checkpoints/{id}/external_weights_urls"
        known_paths = {p for (_, p) in self._routes}
        if path in known_paths:
            raise HTTPError(405, f"method {request.method} not allowed on {path}")
        raise HTTPError(404, f"not found: {request.method} {path}")

    @staticmethod
    def _note_seq(request: Request, model_id: str, seq_id: int | None) -> None:
        """Remember which (model, seq_id) this request holds, so that rejecting it still uses up the seq_id."""
        if seq_id is not None:
            request.params["seq_model_id"] = model_id
            request.params["seq_id"] = str(seq_id)

    def _consume_rejected_seq(self, request: Request, detail: str) -> None:
        """A sequenced request rejected with a 4xx still takes its seq_id (the client will not send it again), so
        the model's later requests do not wait for it."""
        model_id = request.params.get("seq_model_id")
        seq = request.params.get("seq_id")
        if model_id is None or seq is None or not self.queue.has_lane(model_id):
            return
        if int(seq) >= 1:
            self.queue.consume_seq(model_id, int(seq), f"rejected: {detail}")

    def _check_auth(self, request: Request) -> None:
        key = request.header("x-api-key")
        if key.startswith("tml-") and len(key) > 4:
            return
        if key.startswith("eyJ") and self.config.jwt_auth_enabled and key.count(".") == 2:
            return
        if not key:
            raise HTTPError(401, "missing X-API-Key header")
        if key.startswith("eyJ"):
            raise HTTPError(401, "invalid token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        raise HTTPError(401, "invalid API key: it must start with 'tml-'")

    # -- body decoding ----------------------------------------------------------------------------------------------

    @staticmethod
    def _decode(request: Request, type_: type[S]) -> S:
        body = request.body
        if request.headers.get("content-encoding", "").lower() in ("gzip", "deflate", "zstd"):
            body = _decompress(body, request.headers["content-encoding"].lower())
        if not body.strip():
            body = b"{}"
        try:
            return t.decoder_for(type_).decode(body)
        except msgspec.ValidationError as exc:
            raise HTTPError(422, f"invalid request body: {exc}") from None
        except msgspec.DecodeError as exc:
            raise HTTPError(400, f"request body is not valid JSON: {exc}") from None

    # -- settings for the queue -------------------------------------------------------------------------------------

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

    # -- session and service ----------------------------------------------------------------------------------------

    async def _client_config(self, request: Request) -> Response:
        self._decode(request, _LooseObject)
        body: dict[str, Any] = t.to_builtins(t.ClientConfigResponse())
        body["pjwt_auth_enabled"] = self.config.jwt_auth_enabled
        body.update(self.config.client_config)
        return json_response(body)

    async def _dynamic_config(self, request: Request) -> Response:
        if not self.config.dynamic_config_enabled:
            raise HTTPError(404, "dynamic config is disabled on this server")
        self._decode(request, _LooseObject)
        body: dict[str, Any] = t.to_builtins(t.ClientDynamicConfigResponse())
        body.update(self.config.dynamic_config)
        return json_response(body)

    async def _auth_token(self, request: Request) -> Response:
        if not self.config.jwt_auth_enabled:
            raise HTTPError(404, "JWT exchange is disabled on this server")
        if not request.header("x-api-key").startswith("tml-"):
            raise HTTPError(401, "the token exchange needs an API key starting with 'tml-'")
        self._decode(request, _LooseObject)
        return json_response(t.AuthTokenResponse(jwt=self.state.issue_jwt(self.config.jwt_lifetime_s)))

    async def _create_session(self, request: Request) -> Response:
        body = self._decode(request, t.CreateSessionRequest)
        session = self.state.create_session(
            tags=body.tags,
            user_metadata=body.user_metadata,
            sdk_version=body.sdk_version,
            project_id=body.project_id,
            display_name=body.display_name,
        )
        return json_response(
            t.CreateSessionResponse(
                session_id=session.session_id, info_message="connected to the tinkex_trio simulator"
            )
        )

    async def _heartbeat(self, request: Request) -> Response:
        body = self._decode(request, t.SessionHeartbeatRequest)
        session = self.state.session(body.session_id)
        session.heartbeats += 1
        session.last_heartbeat = trio.current_time()
        return json_response(t.SessionHeartbeatResponse())

    async def _finish_session(self, request: Request) -> Response:
        session = self.state.session(request.params["session_id"])
        body = self._decode(request, t.FinishSessionRequest)
        if session.finished is None:
            session.finished = body.reason.type
            session.finish_detail = body.detail
        return json_response({})

    async def _capabilities(self, request: Request) -> Response:
        models = [
            t.SupportedModel(
                model_name=m.model_name,
                max_context_length=m.max_context_length,
                trainable=m.trainable,
                sampleable=m.sampleable,
            )
            for m in self.config.supported_models
        ]
        return json_response(t.GetServerCapabilitiesResponse(supported_models=models))

    async def _healthz(self, request: Request) -> Response:
        return json_response(t.HealthResponse(status="ok"))

    async def _telemetry(self, request: Request) -> Response:
        if not self.config.telemetry_enabled:
            raise HTTPError(404, "telemetry is disabled on this server")
        body = self._decode(request, _TelemetryBody)
        self.state.telemetry_batches += 1
        self.state.telemetry_events += len(body.events)
        return json_response(t.TelemetryResponse(status="accepted"))

    # -- helpers ----------------------------------------------------------------------------------------------------

    def _supported(self, base_model: str) -> SupportedModel | None:
        entry = self.config.find_model(base_model)
        if entry is None and self.config.allow_unknown_base_models:
            return SupportedModel(base_model)
        return entry

    def _require_base_model(self, base_model: str, *, training: bool) -> SupportedModel:
        entry = self._supported(base_model)
        if entry is None:
            names = ", ".join(m.model_name for m in self.config.supported_models)
            raise HTTPError(400, f"unsupported base model {base_model!r}; supported: {names}")
        if training and not entry.trainable:
            raise HTTPError(400, f"base model {base_model!r} is not trainable")
        if not training and not entry.sampleable:
            raise HTTPError(400, f"base model {base_model!r} is not sampleable")
        return entry

    def _future_response(self, record: FutureRecord) -> Response:
        future = t.UntypedAPIFuture(
            request_id=record.request_id,
            model_id=record.extra.get("model_id"),
            sample_sequence_ids=record.extra.get("sample_sequence_ids"),
        )
        return json_response(future)

    @staticmethod
    def _check_ttl(ttl_seconds: int | None) -> None:
        if ttl_seconds is not None and not 0 < ttl_seconds <= MAX_TTL_SECONDS:
            raise HTTPError(
                422, f"ttl_seconds must be in [1, {MAX_TTL_SECONDS}] (or null for no expiry), got {ttl_seconds}"
            )

    @staticmethod
    def _check_training_seq(seq_id: int | None) -> None:
        if seq_id is not None and seq_id < 1:
            raise HTTPError(422, f"seq_id must be >= 1 (0 is the model's creation), got {seq_id}")

    def _submit_model_op(
        self,
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
        self._check_training_seq(seq_id)
        if seq_id is not None:
            existing = self.queue.lookup_seq(model.model_id, seq_id)
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
        record, _ = self.queue.submit(
            model.model_id, request_type, job, seq_id=seq_id, ordered=True, extra={"model_id": model.model_id}
        )
        return record

    # -- training ---------------------------------------------------------------------------------------------------

    async def _create_model(self, request: Request) -> Response:
        body = self._decode(request, t.CreateModelRequest)
        session = self.state.session(body.session_id)
        self._require_base_model(body.base_model, training=True)
        model_id = self.state.model_id_for(session.session_id, body.model_seq_id)
        existing = self.queue.lookup_seq(model_id, 0)
        if existing is not None:
            return self._future_response(existing)
        if model_id in self.state.models:
            raise HTTPError(400, f"model {model_id} already exists")
        lora = body.lora_config or t.LoraConfig(rank=32)
        cfg = self.config.model
        if not 1 <= lora.rank <= cfg.max_lora_rank:
            raise HTTPError(422, f"lora_config.rank must be in [1, {cfg.max_lora_rank}], got {lora.rank}")
        optimizer = "dimuon" if isinstance(body.optimizer_config, t.DimuonOptimizerConfig) else "adamw"
        seed = lora.seed if lora.seed is not None else self.state.random_seed()
        record = self.state.add_model(
            session=session,
            model_seq_id=body.model_seq_id,
            base_model=body.base_model,
            lora_rank=lora.rank,
            optimizer=optimizer,
            lora_flags={
                "train_unembed": lora.train_unembed,
                "train_mlp": lora.train_mlp,
                "train_attn": lora.train_attn,
            },
            user_metadata=body.user_metadata,
        )
        base_model, rank = body.base_model, lora.rank

        def compute() -> LoraModel:
            try:
                return LoraModel(base_model, rank, seed, cfg, optimizer=optimizer)
            except SimUserError as exc:
                raise FutureError(str(exc), "user") from None

        def commit(model: LoraModel) -> Any:
            record.model = model
            return t.CreateModelResponse(model_id=record.model_id)

        future, _ = self.queue.submit(
            record.model_id,
            "CreateModel",
            Job(compute=compute, commit=commit, tokens=0),
            seq_id=0,
            ordered=True,
            extra={"model_id": record.model_id},
        )
        return self._future_response(future)

    async def _get_info(self, request: Request) -> Response:
        body = self._decode(request, t.GetInfoRequest)
        record = self.state.model(body.model_id)
        entry = self._supported(record.base_model)
        tokenizer_id = (entry.tokenizer_id if entry is not None else None) or record.base_model
        optimizer_config: t.OptimizerConfig = (
            t.DimuonOptimizerConfig() if record.optimizer == "dimuon" else t.AdamOptimizerConfig()
        )
        return json_response(
            t.GetInfoResponse(
                model_id=record.model_id,
                model_data=t.ModelData(
                    arch=entry.arch if entry is not None else "sim-bigram",
                    model_name=record.base_model,
                    tokenizer_id=tokenizer_id,
                ),
                optimizer_config=optimizer_config,
                is_lora=True,
                lora_rank=record.lora_rank,
                model_name=record.base_model,
            )
        )

    def _decode_fwdbwd(self, request: Request) -> _FwdBwdWork:
        body = request.body
        encoding = request.headers.get("content-encoding", "").lower()
        if encoding:
            body = _decompress(body, encoding)
        if PROTOBUF in request.content_type:
            from tinkex_trio._proto import _codec

            try:
                decoded = _codec.decode_forward_backward_request(body)
            except Exception as exc:
                raise HTTPError(400, f"request body is not a valid ForwardBackwardRequest protobuf: {exc}") from None
            return _FwdBwdWork(
                model_id=decoded.model_id,
                seq_id=decoded.seq_id,
                data=list(decoded.data),
                loss_fn=decoded.loss_fn,
                loss_fn_config=decoded.loss_fn_config,
                forward_only=decoded.forward_only,
            )
        try:
            parsed = t.decoder_for(_FwdBwdJSONRequest).decode(body)
        except msgspec.ValidationError as exc:
            raise HTTPError(422, f"invalid request body: {exc}") from None
        except msgspec.DecodeError as exc:
            raise HTTPError(400, f"request body is not valid JSON: {exc}") from None
        fwd_input = parsed.forward_backward_input or parsed.forward_input
        if fwd_input is None:
            raise HTTPError(422, "invalid request body: missing forward_backward_input")
        forward_only = bool(parsed.forward_only) or (
            parsed.forward_backward_input is None or request.path.endswith("/forward")
        )
        return _FwdBwdWork(
            model_id=parsed.model_id,
            seq_id=parsed.seq_id,
            data=fwd_input.data,
            loss_fn=fwd_input.loss_fn,
            loss_fn_config=fwd_input.loss_fn_config,
            forward_only=forward_only,
        )

    async def _forward_backward(self, request: Request) -> Response:
        work = self._decode_fwdbwd(request)
        self._note_seq(request, work.model_id, work.seq_id)
        model = self.state.model(work.model_id)
        tokens = sum(_model_input_length(d.model_input) for d in work.data)

        def compute(lora: LoraModel) -> FwdBwdResult:
            arrays = [_datum_arrays(i, d) for i, d in enumerate(work.data)]
            return lora.forward_backward(arrays, work.loss_fn, work.loss_fn_config, forward_only=work.forward_only)

        def commit(result: FwdBwdResult) -> _FwdBwdPayload:
            if work.forward_only:
                model.forward_applied += 1
            else:
                model.forward_backward_applied += 1
            return _FwdBwdPayload(result)

        record = self._submit_model_op(
            model, "Forward" if work.forward_only else "ForwardBackward", work.seq_id, compute, commit, tokens=tokens
        )
        return self._future_response(record)

    async def _optim_step(self, request: Request) -> Response:
        body = self._decode(request, t.OptimStepRequest)
        self._note_seq(request, body.model_id, body.seq_id)
        model = self.state.model(body.model_id)
        params: AdamParams | DimuonParams
        if body.optimizer_params is not None:
            p = body.optimizer_params
            params = DimuonParams(learning_rate=p.learning_rate, grad_clip_norm=p.grad_clip_norm, beta1=p.beta1)
        else:
            a = body.adam_params or t.AdamParams()
            params = AdamParams(
                learning_rate=a.learning_rate,
                beta1=a.beta1,
                beta2=a.beta2,
                eps=a.eps,
                weight_decay=a.weight_decay,
                grad_clip_norm=a.grad_clip_norm,
            )

        def compute(lora: LoraModel) -> dict[str, float]:
            return lora.optim_step(params)

        def commit(metrics: dict[str, float]) -> t.OptimStepResponse:
            model.steps_applied += 1
            return t.OptimStepResponse(metrics=metrics)

        record = self._submit_model_op(model, "OptimStep", body.seq_id, compute, commit)
        return self._future_response(record)

    def _save_checkpoint(
        self,
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
            checkpoint = self.state.make_checkpoint(
                model, kind, name, data, ttl_seconds=ttl_seconds, user_metadata=user_metadata
            )
            if checkpoint.checkpoint_id in model.checkpoints and not overwrite:
                raise FutureError(f"checkpoint {checkpoint.tinker_path} already exists (use overwrite)", "user")
            model.checkpoints.pop(checkpoint.checkpoint_id, None)
            model.checkpoints[checkpoint.checkpoint_id] = checkpoint
            self.state.note_expiry(checkpoint.expires_at)
            return respond(checkpoint)

        return self._future_response(self._submit_model_op(model, request_type, seq_id, compute, commit))

    def _checkpoint_name(self, name: str | None, seq_id: int | None, prefix: str) -> str:
        if name is None:
            return f"{prefix}-{seq_id if seq_id is not None else self.state.random_hex(4)}"
        try:
            return check_checkpoint_name(name)
        except SimUserError as exc:
            raise HTTPError(422, str(exc)) from None

    async def _save_weights(self, request: Request) -> Response:
        body = self._decode(request, t.SaveWeightsRequest)
        self._note_seq(request, body.model_id, body.seq_id)
        self._check_ttl(body.ttl_seconds)
        model = self.state.model(body.model_id)
        return self._save_checkpoint(
            model,
            "training",
            self._checkpoint_name(body.path, body.seq_id, "state"),
            body.seq_id,
            "SaveWeights",
            lambda checkpoint: t.SaveWeightsResponse(path=checkpoint.tinker_path),
            with_optimizer=True,
            overwrite=body.overwrite,
            ttl_seconds=body.ttl_seconds,
            user_metadata=body.user_metadata,
        )

    async def _save_weights_for_sampler(self, request: Request) -> Response:
        body = self._decode(request, t.SaveWeightsForSamplerRequest)
        self._note_seq(request, body.model_id, body.seq_id)
        self._check_ttl(body.ttl_seconds)
        model = self.state.model(body.model_id)
        if body.path is not None:
            return self._save_checkpoint(
                model,
                "sampler",
                self._checkpoint_name(body.path, body.seq_id, "sampler"),
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
        session = self.state.session(model.session_id)
        sampling_seq = body.sampling_session_seq_id
        inflight = body.kind == "inflight"

        def compute_snapshot(lora: LoraModel) -> LoraModel:
            return lora.snapshot()

        def commit_snapshot(snapshot: LoraModel) -> t.SaveWeightsForSamplerResponse:
            if inflight:
                model.inflight_model = snapshot
            sampler = self.state.add_sampler(
                session=session,
                sampling_session_seq_id=sampling_seq,
                base_model=model.base_model,
                model_path=None,
                model=snapshot,
                source_model_id=model.model_id if inflight else None,
            )
            return t.SaveWeightsForSamplerResponse(sampling_session_id=sampler.sampling_session_id)

        record = self._submit_model_op(model, "SaveWeightsForSampler", body.seq_id, compute_snapshot, commit_snapshot)
        return self._future_response(record)

    async def _save_weights_external(self, request: Request) -> Response:
        body = self._decode(request, t.SaveWeightsExternalRequest)
        self._note_seq(request, body.model_id, body.seq_id)
        self._check_ttl(body.ttl_seconds)
        model = self.state.model(body.model_id)
        return self._save_checkpoint(
            model,
            "external",
            self._checkpoint_name(body.path, body.seq_id, "external"),
            body.seq_id,
            "SaveWeightsExternal",
            lambda cp: t.SaveWeightsExternalResponse(path=cp.tinker_path, size_bytes=cp.size_bytes),
            with_optimizer=False,
            overwrite=True,
            ttl_seconds=body.ttl_seconds,
            user_metadata=None,
        )

    def _find_checkpoint(self, path: str) -> CheckpointRecord:
        try:
            return self.state.find_checkpoint(path)
        except SimUserError as exc:
            raise HTTPError(422, str(exc)) from None

    async def _load_weights(self, request: Request) -> Response:
        body = self._decode(request, t.LoadWeightsRequest)
        if body.model_id is not None:
            self._note_seq(request, body.model_id, body.seq_id)
            if body.session_id is not None:
                raise HTTPError(422, "load_weights takes either model_id (in place) or session_id (create), not both")
            return self._load_in_place(body)
        if body.session_id is None or body.model_seq_id is None:
            raise HTTPError(422, "load_weights needs model_id and seq_id, or session_id and model_seq_id")
        session = self.state.session(body.session_id)
        model_id = self.state.model_id_for(session.session_id, body.model_seq_id)
        existing = self.queue.lookup_seq(model_id, 0)
        if existing is not None:
            return self._future_response(existing)
        if model_id in self.state.models:
            raise HTTPError(400, f"model {model_id} already exists")
        checkpoint = self._find_checkpoint(body.path)
        base_model = body.base_model or checkpoint.base_model
        self._require_base_model(base_model, training=True)
        if body.optimizer:
            if body.optimizer_config is not None:
                raise HTTPError(
                    422, "optimizer_config cannot override the optimizer state restored from the checkpoint"
                )
            optimizer = checkpoint.optimizer
        else:
            optimizer = "dimuon" if isinstance(body.optimizer_config, t.DimuonOptimizerConfig) else "adamw"
        record = self.state.add_model(
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
            return t.LoadWeightsResponse(path=path, model_id=record.model_id)

        future, _ = self.queue.submit(
            record.model_id,
            "LoadWeights",
            Job(compute=compute, commit=commit),
            seq_id=0,
            ordered=True,
            extra={"model_id": record.model_id},
        )
        return self._future_response(future)

    def _load_in_place(self, body: t.LoadWeightsRequest) -> Response:
        assert body.model_id is not None
        model = self.state.model(body.model_id)
        checkpoint = self._find_checkpoint(body.path)
        data, with_optimizer, path = checkpoint.data, body.optimizer, body.path

        def compute(lora: LoraModel) -> None:
            lora.load_bytes(data, with_optimizer=with_optimizer)

        def commit(_: None) -> t.LoadWeightsResponse:
            return t.LoadWeightsResponse(path=path, model_id=model.model_id)

        record = self._submit_model_op(model, "LoadWeights", body.seq_id, compute, commit)
        return self._future_response(record)

    async def _weights_info(self, request: Request) -> Response:
        body = self._decode(request, t.WeightsInfoRequest)
        checkpoint = self._find_checkpoint(body.tinker_path)
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

    # -- sampling ---------------------------------------------------------------------------------------------------

    def _sampler_from_path(self, model_path: str) -> tuple[str, LoraModel]:
        checkpoint = self._find_checkpoint(model_path)
        try:
            return checkpoint.base_model, LoraModel.from_bytes(checkpoint.data)
        except SimUserError as exc:
            raise HTTPError(422, f"cannot sample from {model_path}: {exc}") from None

    async def _create_sampling_session(self, request: Request) -> Response:
        body = self._decode(request, t.CreateSamplingSessionRequest)
        session = self.state.session(body.session_id)
        sampler_id = self.state.sampler_id_for(session.session_id, body.sampling_session_seq_id)
        existing = self.state.samplers.get(sampler_id)
        if existing is None:
            if body.model_path is not None:
                base_model, model = self._sampler_from_path(body.model_path)
            elif body.base_model is not None:
                self._require_base_model(body.base_model, training=False)
                base_model, model = body.base_model, self.state.base_model(body.base_model, self.config.model)
            else:
                raise HTTPError(422, "create_sampling_session needs a base_model or a model_path")
            existing = self.state.add_sampler(
                session=session,
                sampling_session_seq_id=body.sampling_session_seq_id,
                base_model=base_model,
                model_path=body.model_path,
                model=model,
            )
        return json_response(t.CreateSamplingSessionResponse(sampling_session_id=existing.sampling_session_id))

    async def _get_sampler(self, request: Request) -> Response:
        sampler = self.state.sampler(request.params["sampler_id"])
        return json_response(
            t.GetSamplerResponse(
                sampler_id=sampler.sampling_session_id, base_model=sampler.base_model, model_path=sampler.model_path
            )
        )

    async def _join_sampling_session(self, request: Request) -> Response:
        body = self._decode(request, t.JoinSamplingSessionRequest)
        sampler = self.state.sampler(body.sampling_session_id)
        sampler.client_counter += 1
        return json_response(t.JoinSamplingSessionResponse(client_counter=sampler.client_counter))

    def _adhoc_sampler(self, body: t.SampleRequest) -> SamplerRecord:
        key = body.model_path or body.base_model
        if key is None:
            raise HTTPError(422, "asample needs a sampling_session_id, a model_path or a base_model")
        sampler_id = f"adhoc:{key}"
        existing = self.state.samplers.get(sampler_id)
        if existing is not None:
            return existing
        if body.model_path is not None:
            base_model, model = self._sampler_from_path(body.model_path)
        else:
            assert body.base_model is not None
            self._require_base_model(body.base_model, training=False)
            base_model, model = body.base_model, self.state.base_model(body.base_model, self.config.model)
        record = SamplerRecord(
            sampling_session_id=sampler_id,
            session_id="",
            base_model=base_model,
            model_path=body.model_path,
            model=model,
        )
        self.state.samplers[sampler_id] = record
        return record

    async def _asample(self, request: Request) -> Response:
        body = self._decode(request, t.SampleRequest)
        if body.sampling_session_id is not None:
            sampler = self.state.sampler(body.sampling_session_id)
        else:
            sampler = self._adhoc_sampler(body)
        lane = sampler.sampling_session_id
        if body.seq_id is not None:
            existing = self.queue.lookup_seq(lane, body.seq_id)
            if existing is not None:
                return self._future_response(existing)
        if (
            request.header("x-tinker-sampling-backpressure")
            and self.queue.queued_count >= self.config.queue_capacity > 0
        ):
            raise HTTPError(429, "sampling queue is full; retry shortly", {"Retry-After": "1"})
        params = body.sampling_params
        stop_tokens, stop_sequences = _stop_spec(params.stop, self.config.model.vocab_size)
        max_tokens = params.max_tokens if params.max_tokens is not None else self.config.model.default_max_tokens
        if body.num_samples > MAX_NUM_SAMPLES or body.num_samples * max(max_tokens, 1) > MAX_SAMPLED_TOKENS:
            raise HTTPError(
                422,
                f"num_samples must be at most {MAX_NUM_SAMPLES} and num_samples * max_tokens at most "
                f"{MAX_SAMPLED_TOKENS}, got {body.num_samples} and {max_tokens}",
            )
        seed = params.seed
        if seed is None:
            # A sequenced request's draw depends only on (server seed, sampler, seq_id), not on the order in which
            # concurrent requests arrive, so a seeded server samples the same tokens run after run.
            salt = str(body.seq_id) if body.seq_id is not None else self.state.random_hex(4)
            seed = zlib.crc32(f"{self.config.seed}/{lane}/{salt}".encode())
        tokens_cost = _model_input_length(body.prompt) + max(body.num_samples, 1) * max(max_tokens, 0)
        state = self.state

        def compute() -> SampleResult:
            try:
                prompt = _prompt_tokens(body.prompt)
                target = (
                    body.target_prompt_logprobs.to_numpy(pad_value=-1)
                    if body.target_prompt_logprobs is not None
                    else None
                )
                with sampler.lock:
                    model = state.sampler_model(sampler)
                    return model.sample(
                        prompt,
                        num_samples=body.num_samples,
                        max_tokens=max_tokens,
                        temperature=params.temperature,
                        top_k=params.top_k,
                        top_p=params.top_p,
                        seed=seed,
                        stop_tokens=stop_tokens,
                        stop_sequences=stop_sequences,
                        prompt_logprobs=bool(body.prompt_logprobs),
                        topk_prompt_logprobs=body.topk_prompt_logprobs,
                        topk_sample_logprobs=body.topk_sample_logprobs,
                        target_prompt_logprobs=target,
                        prompt_alt_tokens_k=body.prompt_alt_tokens_k,
                        prompt_logprobs_last_n=body.prompt_logprobs_last_n,
                    )
            except (SimUserError, ValueError) as exc:
                raise FutureError(str(exc), "user") from None

        record_box: list[FutureRecord] = []

        def commit(result: SampleResult) -> _SamplePayload:
            sampler.samples_applied += 1
            ids: list[str] = record_box[0].extra["sample_sequence_ids"] if record_box else []
            return _SamplePayload(result, ids)

        record, is_new = self.queue.submit(
            lane,
            "Sample",
            Job(compute=compute, commit=commit, tokens=tokens_cost),
            seq_id=body.seq_id,
            ordered=False,
            extra={"sampler_id": lane, "clone": (body.seq_id or 0) // _CLONE_STRIDE},
        )
        if is_new:
            record.extra["sample_sequence_ids"] = [f"{record.request_id}:{i}" for i in range(max(body.num_samples, 0))]
            record_box.append(record)
        return self._future_response(record)

    # -- futures ----------------------------------------------------------------------------------------------------

    def _get_record(self, request_id: str) -> FutureRecord:
        record = self.queue.get(request_id)
        if record is not None:
            return record
        if self.queue.is_expired_id(request_id):
            raise HTTPError(410, f"future {request_id} has expired")
        raise HTTPError(404, f"future {request_id} not found")

    async def _retrieve_future(self, request: Request) -> Response:
        body = self._decode(request, t.FutureRetrieveRequest)
        record = self._get_record(body.request_id)
        ready = await self.queue.wait(record, self.config.effective_long_poll_s())
        if not ready:
            state = self.queue.queue_state()
            return json_response(
                t.TryAgainResponse(
                    request_id=record.request_id,
                    queue_state=state,
                    queue_state_reason=self._queue_state_reason(state),
                )
            )
        if record.status != "done":
            return json_response(
                t.RequestFailedResponse(
                    error=record.error or "the request failed",
                    category=t.RequestErrorCategory(record.category),
                )
            )
        response = self._render_result(record, protobuf=request.accepts_protobuf())
        if body.allow_metadata_only and len(response.body) > self.config.complete_metadata_threshold_bytes:
            return json_response(t.FutureCompleteMetadata(response_payload_size=len(response.body)))
        return response

    def _queue_state_reason(self, state: str) -> str | None:
        if state == "paused_capacity":
            return f"the server is over capacity ({self.queue.queued_count} requests queued)"
        if state == "paused_rate_limit":
            return "rate limited (simulated)"
        return None

    def _render_result(self, record: FutureRecord, *, protobuf: bool) -> Response:
        """The finished record's result, as protobuf (fwd/bwd and sample, when accepted) or JSON. Cached per format."""
        result = record.result
        is_proto = protobuf and isinstance(result, _FwdBwdPayload | _SamplePayload)
        cache_key = "body:proto" if is_proto else "body:json"
        cached = record.extra.get(cache_key)
        if isinstance(cached, bytes):
            return Response(200, cached, PROTOBUF if is_proto else JSON)
        if isinstance(result, _FwdBwdPayload):
            output = _fwdbwd_output(result.result)
            if is_proto:
                from tinkex_trio._proto import _codec

                data = _codec.encode_forward_backward_output(output)
            else:
                data = t.encode(output)
        elif isinstance(result, _SamplePayload):
            sample = _sample_response(result)
            if is_proto:
                from tinkex_trio._proto import _codec

                data = _codec.encode_sample_response(sample)
            else:
                data = t.encode(sample)
        elif isinstance(result, CheckpointRecord):
            data = t.encode({"path": result.tinker_path})
        else:
            data = t.encode(result)
        record.extra[cache_key] = data
        self.queue.account(record, len(data))
        return Response(200, data, PROTOBUF if is_proto else JSON)

    def _on_future_finished(self, record: FutureRecord) -> None:
        sampler_id = record.extra.get("sampler_id")
        if not isinstance(sampler_id, str):
            return
        sampler = self.state.samplers.get(sampler_id)
        if sampler is None:
            return
        completion: dict[str, Any]
        if record.status == "done":
            size: int | None = None
            try:
                size = len(self._render_result(record, protobuf=True).body)
            except Exception:
                logger.exception("sim: could not render sample %s", record.request_id)
            completion = {"state": "finished", "request_id": record.request_id}
            if size is not None:
                completion["response_payload_uncompressed_size"] = size
        else:
            completion = {"state": "failed", "request_id": record.request_id}
        clone = record.extra.get("clone", 0)
        sampler.notify_completion(completion, clone if isinstance(clone, int) else 0)

    async def _retrieve_futures(self, request: Request) -> Response:
        body = self._decode(request, t.FuturesRetrieveRequest)
        target = body.target
        sampler = self.state.sampler(target.sampling_session_id)
        for request_id in body.retrieved_request_ids:
            record = self.queue.get(request_id)
            if record is not None and record.finished:
                record.extra["retrieved"] = True
        max_wait = self.config.effective_long_poll_s()
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

    async def _cancel_future(self, request: Request) -> Response:
        body = self._decode(request, t.CancelFutureRequest)
        cancelled = self.queue.cancel(body.request_id)
        return json_response({"request_id": body.request_id, "cancelled": cancelled})

    # -- REST: training runs, checkpoints, sessions -----------------------------------------------------------------

    @staticmethod
    def _paging(request: Request, default_limit: int) -> tuple[int, int]:
        try:
            limit = int(request.query.get("limit", default_limit))
            offset = int(request.query.get("offset", 0))
        except ValueError:
            raise HTTPError(422, "limit and offset must be integers") from None
        if limit < 0 or offset < 0:
            raise HTTPError(422, "limit and offset must be >= 0")
        return limit, offset

    def _training_run(self, record: ModelRecord) -> t.TrainingRun:
        return t.convert(t.TrainingRun, record.to_training_run(self.config.owner))

    async def _list_training_runs(self, request: Request) -> Response:
        limit, offset = self._paging(request, 20)
        runs = list(self.state.models.values())
        page = runs[offset : offset + limit]
        return json_response(
            t.TrainingRunsResponse(
                training_runs=[self._training_run(r) for r in page],
                cursor=t.Cursor(offset=offset, limit=limit, total_count=len(runs)),
            )
        )

    async def _get_training_run(self, request: Request) -> Response:
        return json_response(self._training_run(self.state.model(request.params["training_run_id"])))

    async def _list_run_checkpoints(self, request: Request) -> Response:
        model = self.state.model(request.params["training_run_id"])
        checkpoints = [t.convert(t.Checkpoint, c.to_json()) for c in model.checkpoints.values()]
        return json_response(t.CheckpointsListResponse(checkpoints=checkpoints))

    async def _list_user_checkpoints(self, request: Request) -> Response:
        limit, offset = self._paging(request, 100)
        everything = self.state.all_checkpoints()
        page = [t.convert(t.Checkpoint, c.to_json()) for c in everything[offset : offset + limit]]
        return json_response(
            t.CheckpointsListResponse(
                checkpoints=page, cursor=t.Cursor(offset=offset, limit=limit, total_count=len(everything))
            )
        )

    def _checkpoint_from_params(self, request: Request) -> tuple[ModelRecord, CheckpointRecord]:
        model = self.state.model(request.params["training_run_id"])
        checkpoint_id = request.params["checkpoint_id"]
        try:
            parse_tinker_path(f"tinker://{model.model_id}/{checkpoint_id}")
        except SimUserError as exc:
            raise HTTPError(422, str(exc)) from None
        checkpoint = model.checkpoints.get(checkpoint_id)
        if checkpoint is None:
            raise HTTPError(404, f"checkpoint {checkpoint_id!r} of {model.model_id} not found")
        return model, checkpoint

    async def _delete_checkpoint(self, request: Request) -> Response:
        model, checkpoint = self._checkpoint_from_params(request)
        del model.checkpoints[checkpoint.checkpoint_id]
        return json_response({})

    async def _publish_checkpoint(self, request: Request) -> Response:
        _, checkpoint = self._checkpoint_from_params(request)
        checkpoint.public = request.method == "POST"
        return json_response({})

    async def _set_checkpoint_ttl(self, request: Request) -> Response:
        _, checkpoint = self._checkpoint_from_params(request)
        body = self._decode(request, t.SetCheckpointTtlRequest)
        self._check_ttl(body.ttl_seconds)
        checkpoint.set_ttl(body.ttl_seconds)
        self.state.note_expiry(checkpoint.expires_at)
        return json_response({})

    async def _external_weights_urls(self, request: Request) -> Response:
        _, checkpoint = self._checkpoint_from_params(request)
        if checkpoint.kind != "external":
            raise HTTPError(404, f"{checkpoint.tinker_path} is not an external weights checkpoint")
        quoted = urllib.parse.quote(checkpoint.tinker_path.removeprefix("tinker://"), safe="")
        expires = datetime.now(UTC) + timedelta(hours=1)
        return json_response(
            t.ExternalWeightsUrlsResponse(
                urls={"adapter_model.npz": f"https://sim.invalid/external/{quoted}/adapter_model.npz"},
                expires=expires,
            )
        )

    async def _list_sessions(self, request: Request) -> Response:
        limit, offset = self._paging(request, 20)
        ids = list(self.state.sessions)
        return json_response(t.ListSessionsResponse(sessions=ids[offset : offset + limit]))

    async def _get_session(self, request: Request) -> Response:
        session = self.state.session(request.params["session_id"])
        return json_response(
            t.GetSessionResponse(
                training_run_ids=list(session.model_ids),
                sampler_ids=list(session.sampler_ids),
                user_metadata={str(k): str(v) for k, v in session.user_metadata.items()},
                display_name=session.display_name,
            )
        )

    async def _set_session_project(self, request: Request) -> Response:
        session = self.state.session(request.params["session_id"])
        body = self._decode(request, _ProjectBody)
        session.project_id = body.project_id
        return json_response({})


def create_app(config: SimConfig | None = None) -> SimApp:
    """A new simulated Tinker server (an ASGI app) with its own state."""
    return SimApp(config)


# -- conversions between the wire types and the numpy model ------------------------------------------------------------


def _decompress(body: bytes, encoding: str) -> bytes:
    """The decompressed body, at most ``MAX_BODY_BYTES`` of it (a larger one is a 413, not an out-of-memory)."""
    limit = MAX_BODY_BYTES
    too_large = HTTPError(413, f"decompressed request body larger than {limit} bytes")
    try:
        if encoding in ("gzip", "deflate"):
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
            out = inflater.decompress(body, limit + 1)
            if len(out) > limit or inflater.unconsumed_tail:
                raise too_large
            if not inflater.eof:
                raise HTTPError(400, f"request body is not valid {encoding}: truncated stream")
            return out
        if encoding == "zstd":
            try:
                import zstandard  # pyright: ignore[reportMissingImports]
            except ImportError:
                raise HTTPError(415, "zstd request bodies need the 'zstandard' package on the server") from None
            decompressor: Any = zstandard.ZstdDecompressor()  # pyright: ignore[reportUnknownMemberType]
            data: bytes = decompressor.stream_reader(body).read(limit + 1)
            if len(data) > limit:
                raise too_large
            return data
    except zlib.error as exc:
        raise HTTPError(400, f"request body is not valid {encoding}: {exc}") from None
    except HTTPError:
        raise
    except Exception as exc:
        raise HTTPError(400, f"request body is not valid {encoding}: {exc}") from None
    raise HTTPError(415, f"unsupported Content-Encoding {encoding!r}")


def _model_input_length(model_input: t.ModelInput) -> int:
    total = 0
    for chunk in model_input.chunks:
        if isinstance(chunk, t.EncodedTextChunk):
            total += len(chunk.tokens)
        else:
            with contextlib.suppress(Exception):
                total += int(chunk.length)
    return total


def _prompt_tokens(model_input: t.ModelInput) -> npt.NDArray[np.int64]:
    parts: list[list[int]] = []
    for chunk in model_input.chunks:
        if not isinstance(chunk, t.EncodedTextChunk):
            kind = getattr(chunk, "type", type(chunk).__name__)
            raise SimUserError(f"the simulator only supports encoded_text chunks, got a {kind!r} chunk")
        parts.append(chunk.tokens)
    flat = [tok for part in parts for tok in part]
    return np.asarray(flat, dtype=np.int64)


def _datum_arrays(index: int, datum: t.Datum) -> DatumArrays:
    try:
        tokens = _prompt_tokens(datum.model_input)
    except SimUserError as exc:
        raise SimUserError(f"datum {index}: {exc}") from None
    inputs: dict[str, npt.NDArray[Any]] = {}
    for name, tensor in datum.loss_fn_inputs.items():
        try:
            inputs[name] = tensor.to_numpy()
        except ValueError as exc:
            raise SimUserError(f"datum {index}: loss_fn_inputs[{name!r}]: {exc}") from None
    return DatumArrays(tokens=tokens, loss_fn_inputs=inputs)


def _stop_spec(stop: str | list[str | int] | None, vocab: int) -> tuple[list[int] | None, list[list[int]]]:
    """``(stop_tokens, stop_sequences)`` for the model. Strings are byte-tokenised (token = byte % vocab)."""
    if stop is None:
        return None, []
    if isinstance(stop, str):
        return None, [[b % vocab for b in stop.encode("utf-8")]] if stop else []
    if not stop:
        return [], []
    tokens = [s for s in stop if isinstance(s, int)]
    strings = [s for s in stop if isinstance(s, str)]
    sequences = [[b % vocab for b in s.encode("utf-8")] for s in strings if s]
    return (tokens if tokens else None), sequences


def _fwdbwd_output(result: FwdBwdResult) -> t.ForwardBackwardOutput:
    outputs: list[dict[str, t.TensorData]] = [
        {name: t.TensorData.from_numpy(arr, "float32") for name, arr in out.items()} for out in result.loss_fn_outputs
    ]
    return t.ForwardBackwardOutput(
        loss_fn_output_type="TensorData", loss_fn_outputs=outputs, metrics=dict(result.metrics)
    )


def _topk_entries(topk: TopK) -> list[list[tuple[int, float]] | None]:
    entries: list[list[tuple[int, float]] | None] = []
    for ids_row, lp_row in zip(topk.token_ids.tolist(), topk.logprobs.tolist(), strict=True):
        pairs = [(int(i), float(lp)) for i, lp in zip(ids_row, lp_row, strict=True) if lp > MASK_LOGPROB]
        entries.append(pairs if pairs else None)
    return entries


def _sample_response(payload: _SamplePayload) -> t.SampleResponse:
    result = payload.result
    sequences: list[t.SampledSequence] = []
    for i, seq in enumerate(result.sequences):
        sequence_id = payload.sequence_ids[i] if i < len(payload.sequence_ids) else None
        sequences.append(
            t.SampledSequence(
                stop_reason=seq.stop_reason,
                tokens=[int(x) for x in seq.tokens.tolist()],
                sequence_id=sequence_id,
                logprobs=[float(x) for x in seq.logprobs.tolist()],
                topk_logprobs=_topk_entries(seq.topk) if seq.topk is not None else None,
            )
        )
    prompt_logprobs: list[float | None] | None = None
    if result.prompt_logprobs is not None:
        prompt_logprobs = [None if math.isnan(x) else float(x) for x in result.prompt_logprobs.tolist()]
    alt: t.PromptAltTokens | None = None
    if result.prompt_alt_tokens is not None and result.prompt_alt_logprobs is not None:
        alt = t.PromptAltTokens(
            tokens=t.TensorData.from_numpy(result.prompt_alt_tokens, "int64"),
            logprobs=t.TensorData.from_numpy(result.prompt_alt_logprobs, "float32"),
        )
    return t.SampleResponse(
        sequences=sequences,
        prompt_logprobs=prompt_logprobs,
        topk_prompt_logprobs=_topk_entries(result.topk_prompt) if result.topk_prompt is not None else None,
        target_prompt_logprobs=(
            t.TensorData.from_numpy(result.target_prompt_logprobs, "float32")
            if result.target_prompt_logprobs is not None
            else None
        ),
        prompt_alt_tokens=alt,
        prompt_cache_hit_tokens=0,
    )
