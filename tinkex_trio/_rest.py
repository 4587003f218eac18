"""RestClient: training runs, checkpoints, sessions and samplers (protocol §3.4).

Every call is one JSON request on the training pool, retried by the transport's policy, and answered directly (no
futures). The client holds no state of its own besides the :class:`~tinkex_trio._transport.Transport` it was built
from, so it is cheap to construct and safe to share between tasks; the session exposes one as ``session.rest``.

Listings come in two forms: ``list_*`` fetches one page (``limit``/``offset``, as the server pages), and ``iter_*``
walks every page and yields the items one by one::

    async for run in session.rest.iter_training_runs(page_size=50):
        print(run.training_run_id, run.base_model)

Paging is by offset, so a listing that changes while it is walked may skip or repeat an item, as on the server.

Checkpoints are named either by ``(training_run_id, checkpoint_id)`` -- where ``checkpoint_id`` is
``"weights/<name>"``, ``"sampler_weights/<name>"`` or ``"external_weights/<name>"`` as in the listings -- or by their
tinker path ``tinker://<training_run_id>/<kind>/<name>`` through the ``*_from_tinker_path`` methods.
"""

from __future__ import annotations

import base64
import json as _json
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, date, datetime
from typing import Final, Generic, TypeVar, get_args
from urllib.parse import quote

import msgspec
import trio

from tinkex_trio import types as t
from tinkex_trio._endpoints import API_PREFIX as _API
from tinkex_trio._pool_set import PoolKind
from tinkex_trio._transport import Transport
from tinkex_trio.errors import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    ResponseValidationError,
    TraceExportError,
)

__all__ = ["RestClient"]

T = TypeVar("T")


def _nonempty(value: str, what: str) -> str:
    """``value``, checked to be a non-empty string (InvalidArgumentError, a ValueError, if not)."""
    if not isinstance(value, str):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise InvalidArgumentTypeError(f"{what} must be a non-empty string, got {value!r}", argument=what)
    if not value:
        raise InvalidArgumentError(f"{what} must be a non-empty string, got {value!r}", argument=what)
    return value


def _segment(value: str, what: str) -> str:
    """``value`` percent-encoded as one path segment (InvalidArgumentError, a ValueError, if it could not be one)."""
    if _nonempty(value, what) in (".", ".."):
        raise InvalidArgumentError(f"{what} must be a non-empty string other than '.' and '..'", argument=what)
    return quote(value, safe=":@")


def _checkpoint_ref(training_run_id: str, checkpoint_id: str) -> t.TinkerPath:
    """Check a ``(training_run_id, checkpoint_id)`` pair by parsing the tinker path it names."""
    if not isinstance(training_run_id, str) or not isinstance(checkpoint_id, str):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError("training_run_id and checkpoint_id must be strings")
    try:
        return t.TinkerPath.parse(f"tinker://{training_run_id}/{checkpoint_id}")
    except ValueError:
        raise ValueError(
            f"not a checkpoint: training_run_id={training_run_id!r}, checkpoint_id={checkpoint_id!r} "
            "(expected checkpoint_id 'weights/<name>', 'sampler_weights/<name>' or 'external_weights/<name>')"
        ) from None


def _as_path(tinker_path: str | t.TinkerPath) -> t.TinkerPath:
    return tinker_path if isinstance(tinker_path, t.TinkerPath) else t.TinkerPath.parse(tinker_path)


def _checkpoint_url(ref: t.TinkerPath, action: str | None = None) -> str:
    kind, name = ref.checkpoint_id.split("/", 1)
    url = (
        f"{_API}/training_runs/{_segment(ref.model_id, 'training_run_id')}"
        f"/checkpoints/{kind}/{_segment(name, 'checkpoint name')}"
    )
    return f"{url}/{action}" if action else url


def _page_args(limit: int, offset: int) -> dict[str, str | int]:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError(f"offset must be an int >= 0, got {offset!r}")
    return {"limit": limit, "offset": offset}


def _utc_instant(value: datetime | str, what: str) -> tuple[datetime, str]:
    """``value`` (a datetime with a time zone, or an RFC 3339 string) and its RFC 3339 form in UTC."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidArgumentError(f"{what} must be an RFC 3339 date-time, got {value!r}", argument=what) from None
    elif isinstance(value, datetime):  # pyright: ignore[reportUnnecessaryIsInstance]
        moment = value
    else:
        raise InvalidArgumentTypeError(f"{what} must be a datetime or an RFC 3339 string, got {value!r}", argument=what)
    if moment.utcoffset() is None:
        raise InvalidArgumentError(
            f"{what} must carry a time zone (a 'Z' or '+00:00' suffix, or tzinfo=UTC), got {value!r}", argument=what
        )
    moment = moment.astimezone(UTC)
    return moment, moment.isoformat().replace("+00:00", "Z")


class _Pages(AsyncIterator[T], Generic[T]):
    """The items of an offset-paged listing, fetched a page at a time as the iteration reaches them.

    A plain iterator object rather than an async generator: it holds nothing between pages, so leaving an ``async for``
    early needs no clean-up (trio warns about async generators dropped before they finish). ``fetch(offset)`` returns
    a page and whether it is the last one. A cancelled fetch is simply repeated by the next ``__anext__``.
    """

    def __init__(self, fetch: Callable[[int], Awaitable[tuple[list[T], bool]]]) -> None:
        self._fetch = fetch
        self._buffer: deque[T] = deque()
        self._offset = 0
        self._done = False
        self._fetching = False

    def __aiter__(self) -> _Pages[T]:
        return self

    async def __anext__(self) -> T:
        while not self._buffer:
            if self._done:
                raise StopAsyncIteration
            if self._fetching:
                raise RuntimeError("this listing is already being iterated by another task")
            self._fetching = True
            try:
                items, last = await self._fetch(self._offset)
            finally:
                self._fetching = False
            self._offset += len(items)
            self._done = last or not items  # an empty page always ends the walk: every request makes progress
            self._buffer.extend(items)
        return self._buffer.popleft()


class RestClient:
    """The REST side of the Tinker API: look up and manage training runs, checkpoints, sessions and samplers.

    Get one from a session: ``session.rest``. The constructor is not public API: it takes the session's private
    transport, whose type may change in any release.
    """

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def __repr__(self) -> str:
        return f"<RestClient base_url={self._transport.config.base_url!r}>"

    # -- plumbing -----------------------------------------------------------------------------------------------

    async def _get(self, type_: type[T], path: str, method: str, params: Mapping[str, str | int] | None = None) -> T:
        return await self._transport.request_json(
            type_, PoolKind.TRAINING, "GET", path, params=params, sdk_method=f"RestClient.{method}"
        )

    async def _send(self, http_method: str, path: str, method: str, *, json: object = None) -> None:
        """A call whose answer carries nothing we need (any 2xx body is accepted and ignored)."""
        await self._transport.request(
            PoolKind.TRAINING, http_method, path, json=json, sdk_method=f"RestClient.{method}"
        )

    # -- training runs ------------------------------------------------------------------------------------------

    async def list_training_runs(
        self,
        limit: int = 20,
        offset: int = 0,
        access_scope: t.AccessScope = "owned",
        *,
        project_id: str | None = None,
    ) -> t.TrainingRunsResponse:
        """One page of training runs, with the server's cursor (``offset``, ``limit``, ``total_count``).

        ``access_scope="accessible"`` also lists runs shared with you; ``project_id`` keeps those of one project.
        """
        params: dict[str, str | int] = {**_page_args(limit, offset), "access_scope": access_scope}
        if project_id is not None:
            params["project_id"] = project_id
        return await self._get(t.TrainingRunsResponse, f"{_API}/training_runs", "list_training_runs", params)

    def iter_training_runs(
        self,
        *,
        page_size: int = 50,
        access_scope: t.AccessScope = "owned",
        project_id: str | None = None,
    ) -> AsyncIterator[t.TrainingRun]:
        """Every training run, fetched ``page_size`` at a time as the iteration reaches them."""
        _page_args(page_size, 0)

        async def fetch(offset: int) -> tuple[list[t.TrainingRun], bool]:
            page = await self.list_training_runs(page_size, offset, access_scope, project_id=project_id)
            return page.training_runs, offset + len(page.training_runs) >= page.cursor.total_count

        return _Pages(fetch)

    async def get_training_run(self, training_run_id: str, access_scope: t.AccessScope = "owned") -> t.TrainingRun:
        """One training run (a training model: its id is the ``model_id`` of the TrainingClient)."""
        path = f"{_API}/training_runs/{_segment(training_run_id, 'training_run_id')}"
        return await self._get(t.TrainingRun, path, "get_training_run", {"access_scope": access_scope})

    async def get_training_run_by_tinker_path(
        self, tinker_path: str | t.TinkerPath, access_scope: t.AccessScope = "owned"
    ) -> t.TrainingRun:
        """The training run that owns the checkpoint at ``tinker_path``."""
        return await self.get_training_run(_as_path(tinker_path).model_id, access_scope)

    # -- checkpoints --------------------------------------------------------------------------------------------

    async def list_checkpoints(self, training_run_id: str) -> t.CheckpointsListResponse:
        """Every checkpoint (training, sampler and external) of one training run."""
        path = f"{_API}/training_runs/{_segment(training_run_id, 'training_run_id')}/checkpoints"
        return await self._get(t.CheckpointsListResponse, path, "list_checkpoints")

    async def list_user_checkpoints(self, limit: int = 100, offset: int = 0) -> t.CheckpointsListResponse:
        """One page of the checkpoints of all your training runs."""
        return await self._get(
            t.CheckpointsListResponse, f"{_API}/checkpoints", "list_user_checkpoints", _page_args(limit, offset)
        )

    def iter_user_checkpoints(self, *, page_size: int = 100) -> AsyncIterator[t.Checkpoint]:
        """Every checkpoint of all your training runs, fetched ``page_size`` at a time."""
        _page_args(page_size, 0)

        async def fetch(offset: int) -> tuple[list[t.Checkpoint], bool]:
            page = await self.list_user_checkpoints(page_size, offset)
            count = len(page.checkpoints)
            if page.cursor is None:  # without a cursor, a short page is the last one
                return page.checkpoints, count < page_size
            return page.checkpoints, offset + count >= page.cursor.total_count

        return _Pages(fetch)

    async def delete_checkpoint(self, training_run_id: str, checkpoint_id: str) -> None:
        """Delete a checkpoint for good."""
        ref = _checkpoint_ref(training_run_id, checkpoint_id)
        await self._send("DELETE", _checkpoint_url(ref), "delete_checkpoint")

    async def delete_checkpoint_from_tinker_path(self, tinker_path: str | t.TinkerPath) -> None:
        """:meth:`delete_checkpoint`, naming the checkpoint by its tinker path."""
        await self._send("DELETE", _checkpoint_url(_as_path(tinker_path)), "delete_checkpoint_from_tinker_path")

    async def publish_checkpoint(self, training_run_id: str, checkpoint_id: str) -> None:
        """Make a checkpoint public (loadable by anyone who knows its path)."""
        ref = _checkpoint_ref(training_run_id, checkpoint_id)
        await self._send("POST", _checkpoint_url(ref, "publish"), "publish_checkpoint")

    async def publish_checkpoint_from_tinker_path(self, tinker_path: str | t.TinkerPath) -> None:
        """:meth:`publish_checkpoint`, naming the checkpoint by its tinker path."""
        await self._send(
            "POST", _checkpoint_url(_as_path(tinker_path), "publish"), "publish_checkpoint_from_tinker_path"
        )

    async def unpublish_checkpoint(self, training_run_id: str, checkpoint_id: str) -> None:
        """Make a public checkpoint private again."""
        ref = _checkpoint_ref(training_run_id, checkpoint_id)
        await self._send("DELETE", _checkpoint_url(ref, "publish"), "unpublish_checkpoint")

    async def unpublish_checkpoint_from_tinker_path(self, tinker_path: str | t.TinkerPath) -> None:
        """:meth:`unpublish_checkpoint`, naming the checkpoint by its tinker path."""
        await self._send(
            "DELETE", _checkpoint_url(_as_path(tinker_path), "publish"), "unpublish_checkpoint_from_tinker_path"
        )

    async def set_checkpoint_ttl(self, training_run_id: str, checkpoint_id: str, ttl_seconds: int | None) -> None:
        """Expire a checkpoint ``ttl_seconds`` after it was saved, or never (``None``).

        The server decides which lifetimes it accepts (the Tinker service: one hour to ten years).
        """
        ref = _checkpoint_ref(training_run_id, checkpoint_id)
        await self._set_ttl(ref, ttl_seconds, "set_checkpoint_ttl")

    async def set_checkpoint_ttl_from_tinker_path(
        self, tinker_path: str | t.TinkerPath, ttl_seconds: int | None
    ) -> None:
        """:meth:`set_checkpoint_ttl`, naming the checkpoint by its tinker path."""
        await self._set_ttl(_as_path(tinker_path), ttl_seconds, "set_checkpoint_ttl_from_tinker_path")

    async def _set_ttl(self, ref: t.TinkerPath, ttl_seconds: int | None, method: str) -> None:
        if ttl_seconds is not None and (isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int)):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"ttl_seconds must be an int or None, got {ttl_seconds!r}")
        # ``ttl_seconds`` has no default, so ``None`` goes out as ``null`` (= no expiry), as the server expects.
        await self._send(
            "PUT", _checkpoint_url(ref, "ttl"), method, json=t.SetCheckpointTtlRequest(ttl_seconds=ttl_seconds)
        )

    async def get_external_weights_urls(self, tinker_path: str | t.TinkerPath) -> t.ExternalWeightsUrlsResponse:
        """Signed download URLs, one per file, of an ``external_weights`` checkpoint, valid until ``expires``."""
        ref = _as_path(tinker_path)
        if ref.checkpoint_type != "external":
            raise ValueError(
                "get_external_weights_urls needs an external weights checkpoint "
                f"(tinker://<training_run_id>/external_weights/<name>), got {str(ref)!r}"
            )
        return await self._get(
            t.ExternalWeightsUrlsResponse, _checkpoint_url(ref, "external_weights_urls"), "get_external_weights_urls"
        )

    async def get_weights_info(self, tinker_path: str | t.TinkerPath) -> t.WeightsInfoResponse:
        """What a checkpoint holds: its base model, LoRA rank and flags, optimizer family."""
        body = t.WeightsInfoRequest(tinker_path=str(_as_path(tinker_path)))
        return await self._transport.request_json(
            t.WeightsInfoResponse,
            PoolKind.TRAINING,
            "POST",
            f"{_API}/weights_info",
            json=body,
            sdk_method="RestClient.get_weights_info",
        )

    # -- sessions and samplers ----------------------------------------------------------------------------------

    # -- weights and identity ---------------------------------------------------------------------------------------

    async def copy_weights(
        self,
        path: str | t.TinkerPath,
        *,
        destination_project_id: str | None = None,
        ttl_seconds: int | None = None,
        weights_access_token: str | None = None,
    ) -> str:
        """Copy the weights at ``path`` (either kind: training or sampler) into ``destination_project_id`` (default:
        the key's default project), in a new training run of its own; return the copy's tinker path.

        Storage is shared with the source, so no bytes are duplicated, and the copy cannot be trained on.
        ``weights_access_token`` lets you copy weights readable under another account. One idempotency key covers
        every retry, so a retried copy is made once."""
        source = str(_as_path(path))
        if ttl_seconds is not None and (isinstance(ttl_seconds, bool) or ttl_seconds < 1):
            raise InvalidArgumentError(f"ttl_seconds must be None or >= 1, got {ttl_seconds!r}", argument="ttl_seconds")
        headers = {"X-Idempotency-Key": f"tinkex-trio-{uuid.uuid4()}"}
        if weights_access_token is not None:
            headers["X-Tinker-Weights-Access-Token"] = weights_access_token
        body = t.CopyWeightsRequest(
            source_path=source, destination_project_id=destination_project_id, ttl_seconds=ttl_seconds
        )
        reply = await self._transport.request_json(
            t.CopyWeightsResponse,
            PoolKind.TRAINING,
            "POST",
            f"{_API}/copy_weights",
            json=body,
            headers=headers,
            sdk_method="RestClient.copy_weights",
        )
        return reply.tinker_path

    async def whoami(self) -> t.WhoamiResponse:
        """Who the credential in use is: user URN, organization URN and, for a user, the email.

        Read from the claims of a JWT: the key itself when it is one, else one the server issues for the key
        (``POST /auth/token``; a server that issues none answers NotFoundError)."""
        key = self._transport.config.api_key
        if not key.startswith("eyJ"):
            issued = await self._transport.request_json(
                t.AuthTokenResponse,
                PoolKind.TRAINING,
                "POST",
                f"{_API}/auth/token",
                json={},
                sdk_method="RestClient.whoami",
            )
            key = issued.jwt
        return whoami_from_jwt(key)

    async def list_sessions(
        self, limit: int = 20, offset: int = 0, access_scope: t.AccessScope = "owned"
    ) -> t.ListSessionsResponse:
        """One page of your session ids."""
        params: dict[str, str | int] = {**_page_args(limit, offset), "access_scope": access_scope}
        return await self._get(t.ListSessionsResponse, f"{_API}/sessions", "list_sessions", params)

    def iter_sessions(self, *, page_size: int = 50, access_scope: t.AccessScope = "owned") -> AsyncIterator[str]:
        """Every session id, fetched ``page_size`` at a time (the listing has no cursor: a short page ends it)."""
        _page_args(page_size, 0)

        async def fetch(offset: int) -> tuple[list[str], bool]:
            page = await self.list_sessions(page_size, offset, access_scope)
            return page.sessions, len(page.sessions) < page_size

        return _Pages(fetch)

    async def search_sessions(self, request: t.SessionSearchRequest | None = None) -> t.SessionSearchResponse:
        """One page of a session search, newest first (default: your own sessions, 50 a page). Pass the page's
        ``next_cursor`` as the next request's ``cursor`` (``msgspec.structs.replace(request, cursor=...)``), or walk
        every page with :meth:`iter_search_sessions`. Experimental on the service's side, as in the official SDK."""
        body = t.SessionSearchRequest() if request is None else request
        if not isinstance(body, t.SessionSearchRequest):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise InvalidArgumentError(
                f"request must be a types.SessionSearchRequest, got {type(body).__name__}", argument="request"
            )
        if not 1 <= body.limit <= _MAX_SEARCH_LIMIT:
            raise InvalidArgumentError(f"limit must be 1 to {_MAX_SEARCH_LIMIT}, got {body.limit}", argument="limit")
        return await self._transport.request_json(
            t.SessionSearchResponse,
            PoolKind.TRAINING,
            "POST",
            f"{_API}/sessions/search",
            json=body,
            sdk_method="RestClient.search_sessions",
        )

    def iter_search_sessions(self, request: t.SessionSearchRequest | None = None) -> AsyncIterator[t.SessionSummary]:
        """Every session a search matches, a page at a time (following ``next_cursor``)."""
        current = [t.SessionSearchRequest() if request is None else request]

        async def fetch(_offset: int) -> tuple[list[t.SessionSummary], bool]:
            page = await self.search_sessions(current[0])
            if page.next_cursor is not None:
                current[0] = msgspec.structs.replace(current[0], cursor=page.next_cursor)
            return page.sessions, page.next_cursor is None

        return _Pages(fetch)

    async def get_session(self, session_id: str, access_scope: t.AccessScope = "owned") -> t.GetSessionResponse:
        """A session's training runs, samplers and metadata."""
        path = f"{_API}/sessions/{_segment(session_id, 'session_id')}"
        return await self._get(t.GetSessionResponse, path, "get_session", {"access_scope": access_scope})

    async def assign_session_project(self, session_id: str, project_id: str) -> None:
        """Move a session, with its training runs and samplers, into the project ``project_id`` (or from its
        project to another one; a session cannot be taken out of every project).

        Raises InvalidArgumentError for an empty or non-string id, before anything is sent; BadRequestError when the
        server finds no project id in the request, PermissionDeniedError when the key may not use the project, and
        NotFoundError for a session it does not know or may not see."""
        path = f"{_API}/sessions/{_segment(session_id, 'session_id')}/project"
        body = t.AssignSessionProjectRequest(project_id=_nonempty(project_id, "project_id"))
        await self._send("PUT", path, "assign_session_project", json=body)

    async def export_session_trace(self, session_id: str) -> str:
        """Have the server build a trace of the session's training and sampling requests (a timeline to open in
        https://ui.perfetto.dev), wait until it is ready, and return its signed download URL: a plain GET, with no
        credentials, fetches the file. The URL expires (on the Tinker service, after about an hour); call again for
        a fresh one (a trace that is up to date is not rebuilt).

        The export job is polled: again after 1 s, then at intervals doubling up to 5 s, for at most 30 minutes
        (wrap the call in ``trio.move_on_after`` or ``trio.fail_after`` for less). Each poll is one request, retried
        by the transport's policy; cancelling the call cancels only the wait, never the server's job.

        Raises InvalidArgumentError for an empty session id, before anything is sent; NotFoundError for a session the
        server does not know; TraceExportError when the job fails (``.error`` is the server's reason) or is still
        not ready after 30 minutes; ResponseValidationError for a ``"ready"`` answer without a URL."""
        path = f"{_API}/sessions/{_segment(session_id, 'session_id')}/trace_export"
        deadline = trio.current_time() + _TRACE_EXPORT_LIMIT_S
        delay = _TRACE_POLL_FIRST_S
        while True:
            reply = await self._get(t.SessionTraceExportResponse, path, "export_session_trace")
            if reply.status == "ready":
                if not reply.url:
                    raise ResponseValidationError("trace export is ready but has no url", field="$.url")
                return reply.url
            if reply.status == "failed":
                raise TraceExportError(
                    f"trace export of session {session_id} failed: {reply.error or 'no reason given'}",
                    session_id=session_id,
                    status=reply.status,
                    error=reply.error,
                )
            left = deadline - trio.current_time()
            if left <= 0:
                raise TraceExportError(
                    f"trace export of session {session_id} still {reply.status!r} after {_TRACE_EXPORT_LIMIT_S:.0f} s",
                    session_id=session_id,
                    status=reply.status,
                )
            await trio.sleep(min(delay, left))
            delay = min(2 * delay, _TRACE_POLL_MAX_S)

    async def get_sampler(self, sampler_id: str) -> t.GetSamplerResponse:
        """A sampling session: its base model and, for one made from a checkpoint, the checkpoint's path."""
        path = f"{_API}/samplers/{_segment(sampler_id, 'sampler_id')}"
        return await self._get(t.GetSamplerResponse, path, "get_sampler")

    # -- admin reads (the official SDK's AdminClient) ---------------------------------------------------------------

    async def get_audit_log(self, event_type: t.AuditEventType = "all", day: date | None = None) -> t.AuditLogResponse:
        """The organization's audit log for one UTC day, midnight to midnight (default: today), oldest first: who
        read, saved, published or deleted checkpoints, changed projects, teams or the organization. ``event_type``
        keeps one resource's events (``"checkpoints"``, ``"projects"``, ``"teams"``, ``"organizations"``).

        Needs the organization's admin role (PermissionDeniedError otherwise). Raises InvalidArgumentError for an
        unknown ``event_type`` and InvalidArgumentTypeError for a ``day`` that is not a ``datetime.date`` (a
        ``datetime`` is refused: its day depends on its time zone), before anything is sent."""
        if event_type not in _AUDIT_EVENT_TYPES:
            raise InvalidArgumentError(
                f"event_type must be one of {sorted(_AUDIT_EVENT_TYPES)}, got {event_type!r}", argument="event_type"
            )
        params: dict[str, str | int] = {"event_type": event_type}
        if day is not None:
            if isinstance(day, datetime) or not isinstance(day, date):  # pyright: ignore[reportUnnecessaryIsInstance]
                raise InvalidArgumentTypeError(f"day must be a datetime.date, got {day!r}", argument="day")
            params["day"] = day.isoformat()
        return await self._get(t.AuditLogResponse, f"{_API}/audit", "get_audit_log", params)

    async def get_billing_usage(
        self, starting_on: datetime | str, ending_before: datetime | str
    ) -> t.BillingUsageResponse:
        """The organization's usage, in one event per UTC hour, kind of usage, base model and session, from
        ``starting_on`` (inclusive) to ``ending_before`` (exclusive): tokens trained on, prompt tokens and sampled
        tokens, checkpoints saved, storage. Each event's ``event_info`` says what it counts (match on its class);
        costs are gross estimates, not amounts due. The service's figures may lag by a few hours.

        Both bounds are datetimes with a time zone, or RFC 3339 strings (``"2026-07-13T00:00:00Z"``), sent in UTC.
        The service wants them on whole UTC hours, ``starting_on`` not in the future and at most 14 days apart
        (BadRequestError otherwise), and the billing view role (PermissionDeniedError). Raises InvalidArgumentError,
        before anything is sent, for a bound without a time zone, one that is not a date-time, or ``ending_before``
        not after ``starting_on``."""
        start, start_text = _utc_instant(starting_on, "starting_on")
        end, end_text = _utc_instant(ending_before, "ending_before")
        if end <= start:
            raise InvalidArgumentError(
                f"ending_before ({end_text}) must be after starting_on ({start_text})", argument="ending_before"
            )
        params: dict[str, str | int] = {"starting_on": start_text, "ending_before": end_text}
        return await self._get(t.BillingUsageResponse, f"{_API}/billing/usage/events", "get_billing_usage", params)

    async def get_current_checkpoint_storage_usage(
        self, project_id: str | None = None
    ) -> t.CurrentCheckpointStorageUsageResponse:
        """The checkpoints the organization holds now (or those of ``project_id``), grouped by project and session
        owner: how many, their size, and what keeping them for 720 hours would cost at the current rate (a gross
        estimate). The service's figures may lag by an hour or two. Needs the billing view role."""
        params: dict[str, str | int] = {}
        if project_id is not None:
            params["project_id"] = _nonempty(project_id, "project_id")
        return await self._get(
            t.CurrentCheckpointStorageUsageResponse,
            f"{_API}/billing/usage/checkpoints/current",
            "get_current_checkpoint_storage_usage",
            params,
        )


_MAX_SEARCH_LIMIT: Final = 200
_AUDIT_EVENT_TYPES: Final = frozenset[str](get_args(t.AuditEventType))
_TRACE_POLL_FIRST_S: Final = 1.0
"""Wait before the second poll of a trace export job; each later wait doubles, up to `_TRACE_POLL_MAX_S`."""
_TRACE_POLL_MAX_S: Final = 5.0
"""Longest wait between two polls of a trace export job (the official SDK polls every 5 s)."""
_TRACE_EXPORT_LIMIT_S: Final = 1800.0
"""How long `RestClient.export_session_trace` waits for the trace, from its first poll (the SDK waits forever)."""


def whoami_from_jwt(token: str) -> t.WhoamiResponse:
    """The identity claims (``sub``, ``org_id``, ``email``) of a JWT; its signature is not checked (the server does
    that: here it only names the caller)."""
    try:
        payload = token.split(".")[1]
        claims = _json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return t.WhoamiResponse(user_urn=str(claims["sub"]), org_urn=str(claims["org_id"]), email=claims.get("email"))
    except (IndexError, ValueError, KeyError, TypeError, AttributeError):
        raise ResponseValidationError("the identity token has no readable sub / org_id claims") from None
