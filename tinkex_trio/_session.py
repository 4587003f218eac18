"""``open_session()``: the session, and the one nursery that owns every background task (DESIGN §2).

::

    async with tinkex_trio.open_session() as session:      # bootstrap, then one nursery
        trainer = await session.create_lora_training_client("Qwen/Qwen3-8B")
        ...

Entering the block bootstraps (protocol §2): ``client/config`` (mandatory), ``client/dynamic_config`` (a 404 means
the defaults), ``create_session``. Then one nursery runs every background task (the heartbeat, the future pollers);
nothing runs outside it. That nursery is held by a task beside the block's body, in the nursery ``open_session``
opens: a background failure cancels the body, and closing the session cancels the background tasks only.

Leaving the block sends ``POST /sessions/{id}/finish`` with ``success`` (clean exit), ``errored`` (an exception, in
the body or in a background task) or ``interrupted`` (cancellation, Ctrl-C), shielded from cancellation and bounded by
``config.timeouts.finish_s``; then pending futures fail with :class:`~tinkex_trio.errors.SessionClosedError`, the
background tasks are cancelled and the connections closed. An exception leaves the block as itself: the nursery's
ExceptionGroup is unwrapped when it holds a single exception (a user's error, or a lone background failure).
"""

from __future__ import annotations

import itertools
import logging
import ssl
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import cached_property, partial
from typing import Any, Final, cast

import msgspec
import trio

from tinkex_trio import types as _types
from tinkex_trio._breaker import CircuitBreaker
from tinkex_trio._breaker_registry import breaker_for_config
from tinkex_trio._breaker_supervisor import StatsExport, supervise
from tinkex_trio._config import Config
from tinkex_trio._context import SessionContext
from tinkex_trio._endpoints import API_PREFIX as _API
from tinkex_trio._futures import FutureManager
from tinkex_trio._groups import is_interruption, lone_exception, original, reraise
from tinkex_trio._logsink import ResilienceLog
from tinkex_trio._loss_handles import LossHandle
from tinkex_trio._metrics import Metrics, MetricsFeed
from tinkex_trio._models import create_client_from_state, create_custom_loss, create_lora_client
from tinkex_trio._pool_set import PoolKind, TransportFactory
from tinkex_trio._rest import RestClient
from tinkex_trio._sampling import SamplingClient, create_sampling_client
from tinkex_trio._telemetry import FUTURE_QUEUE_STATE, SESSION_HEARTBEAT, TelemetryBus, TelemetryEvent
from tinkex_trio._training import TrainingClient
from tinkex_trio._transport import Transport
from tinkex_trio._validation import (
    check_bool,
    check_create_lora,
    check_metadata,
    check_path,
    check_sampling_client_source,
)
from tinkex_trio._version import __version__
from tinkex_trio.errors import (
    APIError,
    APIStatusError,
    GoneError,
    InvalidArgumentTypeError,
    NotFoundError,
    redact,
)

__all__ = ["SDK_VERSION", "Session", "open_session"]

logger = logging.getLogger("tinkex_trio.session")
_HOOK_IDS: Final = itertools.count(1)

SDK_VERSION: Final = __version__
"""The ``sdk_version`` sent in ``client/config``, ``dynamic_config`` and ``create_session``."""

_HEARTBEAT_WARN_AFTER_S: Final = 120.0
"""Heartbeat failures are logged at INFO until this long has passed without a success, then at WARNING."""
_DETAIL_MAX_CHARS: Final = 1000
_METRICS_CHANNEL_SIZE: Final = 10_000
"""Telemetry events the metrics task may lag behind before the bus drops (and counts) the next ones."""


class Session:
    """A Tinker session: its id, configuration, telemetry, and the factories of training and sampling clients.

    Made only by :func:`open_session`, and usable only inside its ``async with`` block: afterwards every call raises
    :class:`~tinkex_trio.errors.SessionClosedError`. After the server answers a heartbeat with 410 (it forgot the
    session) every call raises :class:`~tinkex_trio.errors.SessionExpiredError`.

    Attributes:
        session_id: the server's id for the session.
        config: the configuration (the key is never shown in its repr).
        telemetry: the event bus (HTTP, retry, future queue-state and heartbeat events).
        metrics: the session's :class:`~tinkex_trio.Metrics`, fed by its telemetry when ``config.metrics.enabled``
            (request latency and counts, errors, retries, ...); empty otherwise, and yours to use either way.
        client_config: the server's flags from ``client/config``.
        dynamic_config: the server's flags from ``client/dynamic_config`` (defaults if it answered 404).
    """

    def __init__(self, runner: _SessionRunner, *, dynamic_config: _types.ClientDynamicConfigResponse) -> None:
        ctx = runner.ctx
        self.session_id = ctx.session_id
        self.config = ctx.config
        self.telemetry: TelemetryBus = ctx.telemetry
        self.metrics = runner.metrics
        self.client_config = ctx.client_config
        self.dynamic_config = dynamic_config
        self._transport = ctx.transport
        # What the clients get of the session (they never see the Session itself), including its liveness.
        self._ctx = ctx
        self._rest: RestClient | None = None

    def __repr__(self) -> str:
        state = "closed" if self._ctx.closed else "expired" if self._ctx.expired else "open"
        return f"<Session {self.session_id!r} base_url={self.config.base_url!r} {state}>"

    # -- public API ------------------------------------------------------------------------------------------------

    @cached_property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker of this session's (base_url, api_key), shared with every session of the process that
        uses them (``tx.breakers()``). Never None: when ``config.circuit_breaker.enabled`` is false, a disabled one
        of this session's own (``breaker.enabled`` is False; see :meth:`CircuitBreaker.disabled`), which the
        session's requests do not go through."""
        breaker = self._transport.breaker
        if breaker is not None:
            return breaker
        return CircuitBreaker.disabled(self.config.circuit_breaker, name=self.config.base_url)

    @property
    def rest(self) -> RestClient:
        """A :class:`~tinkex_trio.RestClient` on this session's connections (made on first use)."""
        if self._rest is None:
            self._rest = RestClient(self._transport)
        return self._rest

    async def create_custom_loss(self, fn: Callable[..., Any], input_ranks: Mapping[str, int]) -> LossHandle:
        """Create a custom loss once for this session; pass the handle to ``TrainingClient.forward_backward_custom``.

        ``fn(logprobs, *inputs) -> (loss, metrics)`` is a per-datum loss written with torch (PyTorch needed); the
        per-datum losses are summed. ``input_ranks`` gives the rank of each parameter (0 scalar, 1 ``[T]``, 2
        ``[T, K]``; ``logprobs`` has the rank of ``target_tokens``). It is traced with ``torch.fx`` and checked as
        the official SDK's ``create_custom_loss`` does (torch / math / operator calls only, metrics keyed
        ``custom/<name>:sum`` or ``:mean``; :mod:`tinkex_trio._loss_handles`). When the server runs custom losses
        (``custom_loss_server_side`` in its client config) the graph is uploaded and the loss runs there in one
        forward_backward; otherwise it runs here, in the two calls of a client-side custom loss."""
        self._check_alive()
        return await create_custom_loss(self._ctx, fn, input_ranks)

    def on_queue_state_change(self, callback: Callable[[str, str | None], object]) -> Callable[[], bool]:
        """Call ``callback(queue_state, queue_state_reason)`` whenever a request of this session changes queue state
        on the server: ``"paused_capacity"`` (the service is short of capacity), ``"paused_rate_limit"`` (a limit of
        yours was hit) and back to ``"active"``, as the official SDK's ``on_queue_state_change`` reports them.

        Called inline, from the session's trio thread: keep it quick (a callback that raises is logged and
        detached). The same changes are ``tinkex.future.queue_state`` telemetry events and the counter
        ``tinkex_future_queue_state_changes_total``. Returns a function that detaches the callback."""
        if not callable(callback):
            raise InvalidArgumentTypeError(
                f"callback must be callable, got {type(callback).__name__}", argument="callback"
            )
        handler_id = f"on_queue_state_change-{next(_HOOK_IDS)}"

        def handler(event: TelemetryEvent) -> None:
            state, reason = event.metadata.get("queue_state"), event.metadata.get("queue_state_reason")
            callback(str(state), reason if isinstance(reason, str) else None)

        self.telemetry.attach(handler_id, FUTURE_QUEUE_STATE, handler)
        return partial(self.telemetry.detach, handler_id)

    async def get_server_capabilities(self) -> _types.GetServerCapabilitiesResponse:
        """The models the server supports (``GET /get_server_capabilities``)."""
        self._check_alive()
        return await self._transport.request_json(
            _types.GetServerCapabilitiesResponse,
            PoolKind.SESSION,
            "GET",
            f"{_API}/get_server_capabilities",
            sdk_method="Session.get_server_capabilities",
        )

    async def create_lora_training_client(
        self,
        base_model: str,
        rank: int = 32,
        *,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        user_metadata: Mapping[str, Any] | None = None,
        optimizer: _types.OptimizerConfig | None = None,
    ) -> TrainingClient:
        """Create a LoRA model of ``base_model`` and return its :class:`~tinkex_trio.TrainingClient`.

        ``optimizer`` fixes the model's optimizer family for good: ``types.AdamOptimizerConfig()`` (AdamW, the
        default; step with ``AdamParams``) or ``types.DimuonOptimizerConfig()`` (step with ``DimuonParams``)."""
        check_create_lora(base_model, rank, seed, train_mlp, train_attn, train_unembed, user_metadata)
        given = cast("object", optimizer)  # a caller may pass anything
        if given is not None and not isinstance(given, _types.AdamOptimizerConfig | _types.DimuonOptimizerConfig):
            raise InvalidArgumentTypeError(
                "optimizer must be types.AdamOptimizerConfig() or types.DimuonOptimizerConfig(), "
                f"got {type(given).__name__}",
                argument="optimizer",
            )
        self._check_alive()
        return await create_lora_client(
            self._ctx,
            base_model,
            rank,
            seed=seed,
            train_mlp=train_mlp,
            train_attn=train_attn,
            train_unembed=train_unembed,
            user_metadata=user_metadata,
            optimizer=optimizer,
        )

    async def create_training_client_from_state(
        self,
        path: str,
        *,
        with_optimizer: bool = True,
        user_metadata: Mapping[str, Any] | None = None,
    ) -> TrainingClient:
        """Create a model from a training checkpoint (``tinker://...``), with its optimizer state by default."""
        path, with_optimizer = check_path(path), check_bool(with_optimizer, "with_optimizer")
        user_metadata = check_metadata(user_metadata)
        self._check_alive()
        return await create_client_from_state(
            self._ctx, path, with_optimizer=with_optimizer, user_metadata=user_metadata
        )

    async def create_sampling_client(
        self, *, base_model: str | None = None, model_path: str | None = None, record_stability_info: bool = False
    ) -> SamplingClient:
        """A :class:`~tinkex_trio.SamplingClient` for a base model or for saved sampler weights (``model_path``).

        ``record_stability_info``: the server records every sampled sequence for ``stable_reinforce`` training.
        """
        check_sampling_client_source(base_model, model_path)
        record_stability_info = check_bool(record_stability_info, "record_stability_info")
        self._check_alive()
        return await create_sampling_client(
            self._ctx, base_model=base_model, model_path=model_path, record_stability_info=record_stability_info
        )

    def _check_alive(self) -> None:
        """Raise SessionClosedError after the block has ended, SessionExpiredError after a heartbeat 410."""
        self._ctx.check_alive()


class _SessionRunner:
    """The session's life behind the scenes: its background tasks and its closing (made and driven by
    :func:`open_session`; the :class:`Session` a user holds sees none of it)."""

    def __init__(self, ctx: SessionContext, host: _BackgroundHost, metrics: Metrics) -> None:
        self.ctx = ctx
        self.host = host
        self.metrics = metrics
        self.transport = ctx.transport
        self.futures = ctx.futures

    # -- background tasks -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the session's own tasks in its nursery (future pollers start as futures are tracked)."""
        if (breaker := self.transport.breaker) is not None:
            enabled = self.ctx.config.metrics.enabled
            supervisor = partial(
                supervise,
                breaker,
                self.ctx.telemetry,
                base_url=self.ctx.config.base_url,
                set_gauge=self.metrics.set_gauge if enabled else None,
                # Made now, so the session's counts start with the session (the supervisor starts a little later).
                stats=StatsExport(breaker, self.metrics) if enabled else None,
            )
            self.ctx.spawn(supervisor, "tinkex_trio.session.breaker")
        self.ctx.spawn(self._heartbeat_loop, "tinkex_trio.session.heartbeat")
        if self.ctx.config.metrics.enabled:
            # The feed's handler is attached now, so the very first request is counted; its task emits the periodic
            # snapshots and detaches the handler when the session's nursery is cancelled.
            feed = MetricsFeed(self.metrics).attach(self.ctx.telemetry, channel_size=_METRICS_CHANNEL_SIZE)
            self.ctx.spawn(feed.run, "tinkex_trio.session.metrics")
        # Each TrainingClient's batch window (batching.coalesce) runs in this nursery too, started by the client.
        # A later issue starts the dynamic_config refresh here (every max(refresh_interval_sec, 10) s, errors ignored).

    async def _heartbeat_loop(self) -> None:
        """POST session_heartbeat every ``heartbeat_interval_s`` (the first one interval after creation), 10 s
        timeout, one attempt each. A 410 marks the session expired and ends the loop; other failures are logged and
        published as ``tinkex.session.heartbeat`` with ``ok=False``."""
        interval = self.ctx.config.heartbeat_interval_s
        body = _types.SessionHeartbeatRequest(session_id=self.ctx.session_id)
        last_ok = trio.current_time()
        deadline = last_ok + interval
        # Bounded: runs for the life of the session (cancelled with its nursery) and stops on a 410.
        while True:
            await trio.sleep_until(deadline)
            started = trio.current_time()
            # Fixed rate; after a stall (a slow heartbeat), the missed beats are skipped, not sent in a burst.
            deadline = max(deadline + interval, started + interval / 2)
            status: int | None = None
            error: str | None = None
            try:
                await self.transport.request(
                    PoolKind.SESSION,
                    "POST",
                    f"{_API}/session_heartbeat",
                    json=body,
                    timeout=self.ctx.config.timeouts.heartbeat_s,
                    retry=False,
                    breaker=False,  # keeps the session alive through an outage; neither blocked nor counted
                )
            except GoneError:
                self.ctx.expired = True
                self._emit_heartbeat(started, ok=False, status=410, error="GoneError", expired=True)
                logger.error("session %s expired: the server answered 410 to a heartbeat", self.ctx.session_id)
                return
            except APIError as exc:
                status = exc.status_code if isinstance(exc, APIStatusError) else None
                error = type(exc).__name__
                silent_for = trio.current_time() - last_ok
                level = logging.WARNING if silent_for >= _HEARTBEAT_WARN_AFTER_S else logging.INFO
                logger.log(
                    level,
                    "session %s: heartbeat failed (%s); no successful heartbeat for %.0f s",
                    self.ctx.session_id,
                    exc.message,
                    silent_for,
                )
            else:
                last_ok = trio.current_time()
            self._emit_heartbeat(started, ok=error is None, status=status, error=error, expired=False)

    def _emit_heartbeat(
        self, started: float, *, ok: bool, status: int | None, error: str | None, expired: bool
    ) -> None:
        now = trio.current_time()
        self.ctx.telemetry.emit(
            SESSION_HEARTBEAT,
            {"duration_ms": (now - started) * 1000.0},
            {"session_id": self.ctx.session_id, "ok": ok, "status": status, "error": error, "expired": expired},
            time=now,
        )

    # -- closing --------------------------------------------------------------------------------------------------

    async def close(self, reason: _types.FinishReasonType, detail: str | None) -> None:
        """Send finish (shielded, bounded), fail the pending futures, cancel the background tasks."""
        if self.host.failure is not None:
            reason, detail = "errored", _describe(self.host.failure)
        try:
            with trio.CancelScope(shield=True):
                # No batch window needs draining: on a clean exit no caller can still be waiting on one.
                if not self.ctx.expired:
                    await self._send_finish(reason, detail)
                self.ctx.closed = True
                await self.futures.aclose()
        finally:
            # Also after a second Ctrl-C, which trio delivers even inside the shield: the session still ends at
            # once, its pending futures failed.
            self.ctx.closed = True
            self.futures.close_nowait()
            # Cancels the background nursery only: the scope the body runs in is never cancelled by us, so an
            # exception from the body leaves the block untouched (a cancelled scope would rebuild ExceptionGroups).
            self.host.nursery.cancel_scope.cancel()

    async def _send_finish(self, reason: _types.FinishReasonType, detail: str | None) -> None:
        timeout = self.ctx.config.timeouts.finish_s
        with trio.move_on_after(timeout) as scope:
            try:
                await self.transport.request(
                    PoolKind.SESSION,
                    "POST",
                    f"{_API}/sessions/{self.ctx.session_id}/finish",
                    json=_types.FinishSessionRequest.of(reason, detail),
                    timeout=timeout,
                    breaker=False,  # best effort, once, whatever the breaker says
                )
            except APIError as exc:
                logger.warning("session %s: finish (%s) failed: %s", self.ctx.session_id, reason, exc.message)
                return
        if scope.cancelled_caught:
            logger.warning("session %s: finish (%s) timed out after %g s", self.ctx.session_id, reason, timeout)


# --------------------------------------------------------------------------------------------------------------------
# open_session
# --------------------------------------------------------------------------------------------------------------------


class _BackgroundHost:
    """A task holding the nursery of the session's background tasks (heartbeat, pollers, the breaker
    supervisor, batch window and metrics tasks).

    The body of ``async with open_session()`` runs in the parent nursery, beside this task: a background failure
    ends this task with that exception (unwrapped), which cancels the body; closing the session cancels only this
    nursery.
    """

    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None
        self.failure: Exception | None = None

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "the background host has not started"
        return self._nursery

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery(strict_exception_groups=True) as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        except BaseExceptionGroup as group:
            lone = lone_exception(group)
            failure = lone if lone is not None else group
            if isinstance(failure, Exception) and not is_interruption(failure):
                self.failure = failure
                logger.error("session background task failed: %r", failure)
            if lone is None:
                raise
            reraise(lone)


def _resolve_config(api_key: str | None, base_url: str | None, config: Config | None, tags: Sequence[str]) -> Config:
    if isinstance(tags, str):
        raise TypeError("tags must be a sequence of str, not a str")
    overrides: dict[str, Any] = {}
    if tags:
        overrides["tags"] = tuple(tags)
    if config is None:
        return Config.create(api_key, base_url, **overrides)
    if api_key is not None:
        overrides["api_key"] = api_key
    if base_url is not None:
        overrides["base_url"] = base_url
    return msgspec.structs.replace(config, **overrides) if overrides else config


async def _bootstrap(
    transport: Transport, config: Config, user_metadata: Mapping[str, Any] | None
) -> tuple[_types.ClientConfigResponse, _types.ClientDynamicConfigResponse, str]:
    """client/config → dynamic_config → create_session (protocol §2). Returns the configs and the session id."""
    client_config = await transport.request_json(
        _types.ClientConfigResponse,
        PoolKind.SESSION,
        "POST",
        f"{_API}/client/config",
        json=_types.ClientConfigRequest(sdk_version=SDK_VERSION),
    )
    if client_config.pjwt_auth_enabled:
        # Protocol §1.2: the JWT exchange is optional for the server; a later issue may add it (/auth/token).
        logger.info("the server offers JWT authentication; tinkex_trio keeps sending the API key")
    try:
        dynamic_config = await transport.request_json(
            _types.ClientDynamicConfigResponse,
            PoolKind.SESSION,
            "POST",
            f"{_API}/client/dynamic_config",
            json=_types.ClientDynamicConfigRequest(sdk_version=SDK_VERSION),
        )
    except NotFoundError:
        dynamic_config = _types.ClientDynamicConfigResponse()
    created = await transport.request_json(
        _types.CreateSessionResponse,
        PoolKind.SESSION,
        "POST",
        f"{_API}/create_session",
        json=_types.CreateSessionRequest(
            sdk_version=SDK_VERSION,
            tags=list(config.tags),
            user_metadata=dict(user_metadata) if user_metadata is not None else {},
            project_id=config.project_id,
        ),
    )
    for level, message in (
        (logging.INFO, created.info_message),
        (logging.WARNING, created.warning_message),
        (logging.ERROR, created.error_message),
    ):
        if message:
            logger.log(level, "create_session: %s", message)
    return client_config, dynamic_config, created.session_id


def _describe(exc: BaseException) -> str:
    text = redact(f"{type(exc).__name__}: {exc}")
    return text if len(text) <= _DETAIL_MAX_CHARS else text[: _DETAIL_MAX_CHARS - 1] + "…"


def _finish_reason(exc: BaseException) -> tuple[_types.FinishReasonType, str | None]:
    if is_interruption(exc):
        return "interrupted", type(exc).__name__
    return "errored", _describe(exc)


@asynccontextmanager
async def open_session(
    api_key: str | None = None,
    base_url: str | None = None,
    *,
    config: Config | None = None,
    tags: Sequence[str] = (),
    user_metadata: Mapping[str, Any] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    transport_factory: TransportFactory | None = None,
) -> AsyncGenerator[Session]:
    """Open a Tinker session for the duration of an ``async with`` block.

    Args:
        api_key: ``tml-...`` (default: ``TINKER_API_KEY``); overrides ``config.api_key`` when both are given.
        base_url: the service root (default: ``TINKER_BASE_URL``, then the production URL).
        config: a :class:`~tinkex_trio.Config`; without it one is built with :meth:`Config.create`.
        tags: session tags (default: ``config.tags``, i.e. ``TINKER_TAGS``).
        user_metadata: free-form metadata stored with the session.
        ssl_context: trust settings for HTTPS (e.g. a private CA).
        transport_factory: builds each connection pool's httpx transport (tests: ``httpx.ASGITransport``).

    Raises ConfigError before any request if the configuration is invalid, and the bootstrap's errors
    (e.g. AuthenticationError) if the server refuses the session.
    """
    user_metadata = check_metadata(user_metadata)
    cfg = _resolve_config(api_key, base_url, config, tags)
    raised: BaseException | None = None  # what the body raised, if anything
    transport = Transport(
        cfg,
        ssl_context=ssl_context,
        telemetry=TelemetryBus(clock=trio.current_time),
        transport_factory=transport_factory,
        breaker=breaker_for_config(cfg),
    )
    # Attached before the bootstrap: a session retrying an unreachable service says so from its first retries.
    ResilienceLog().attach(transport.telemetry)
    try:
        client_config, dynamic_config, session_id = await _bootstrap(transport, cfg, user_metadata)
        try:
            async with trio.open_nursery(strict_exception_groups=True) as nursery:
                host = _BackgroundHost()
                await nursery.start(host.run, name="tinkex_trio.session.background")
                futures = FutureManager(
                    transport,
                    host.nursery,
                    transport.telemetry,
                    billing_pause_s=float(client_config.billing_exception_max_pause_duration_sec),
                )
                ctx = SessionContext(
                    session_id=session_id,
                    config=cfg,
                    client_config=client_config,
                    transport=transport,
                    futures=futures,
                    nursery=host.nursery,
                )
                runner = _SessionRunner(ctx, host, Metrics(cfg.metrics, clock=trio.current_time))
                session = Session(runner, dynamic_config=dynamic_config)
                runner.start()
                reason: _types.FinishReasonType = "success"
                detail: str | None = None
                try:
                    yield session
                except BaseException as exc:
                    raised = exc
                    reason, detail = _finish_reason(exc)
                    raise
                finally:
                    await runner.close(reason, detail)
        except BaseExceptionGroup as group:
            lone = lone_exception(group)
            if lone is None:
                raise
            reraise(original(lone, raised))
    finally:
        raised = None
        await transport.aclose()
