"""HTTP transport: one logical request, from its headers to its answer (retries, the circuit breaker, bounded
attempts, status → error mapping), sent on the pools of :mod:`tinkex_trio._pool_set`.

Every request of the client goes through :meth:`Transport.request`. It

* joins the path to ``config.base_url`` and sets the headers every call carries (``X-API-Key``, ``User-Agent``,
  ``X-Idempotency-Key`` on non-GET requests — the same for every retry of one logical request — ``Accept`` and
  ``Content-Type``);
* sends on a lane of the pool of its pool kind (protocol §1.5: training calls never queue behind a thousand sample
  submissions or long-polls), each with the limits of ``config.pools`` (how a pool is built, h11 lanes or httpx
  clients, is :mod:`tinkex_trio._pool_set`);
* maps a non-2xx answer to the :mod:`tinkex_trio.errors` class of its status, and transport failures to
  :class:`~tinkex_trio.errors.APIConnectionError` / :class:`~tinkex_trio.errors.APITimeoutError` (the httpx
  exception as ``__cause__``), or :class:`~tinkex_trio.errors.TLSError` for a certificate or handshake failure that
  retrying cannot fix;
* bounds every attempt (see "Bounded responses" below);
* retries what :class:`~tinkex_trio._retry.RetryPolicy` says to retry, sleeping on trio's clock;
* emits ``tinkex.http.request.{start,stop,exception}`` and ``tinkex.retry`` telemetry;
* goes through the session's circuit breaker (:mod:`tinkex_trio._breaker`), if it has one.

The circuit breaker, on the hot path as plain method calls (no channel hop):

* **Admission**: before the first attempt, an OPEN breaker (or a HALF_OPEN one with every trial slot taken) makes the
  request fail at once with :class:`~tinkex_trio.errors.CircuitOpenError`, nothing sent, and emits
  ``tinkex.circuit_breaker.rejected``. Before a retry, the same check is made whenever the breaker has changed state
  since the request was admitted (or the request was a trial): retries stop as soon as the breaker opens, with
  ``CircuitOpenError`` whose ``__cause__`` is the last error. Not so for a *committed* request
  (:meth:`Transport.request_committed`, a training request with a seq_id): the caller admits it before taking the
  seq_id, and once sent it is settled whatever the breaker says, since the model's later requests wait behind it.
* **The unit is the logical request while CLOSED**: its verdict is its final outcome, after the retries of the policy.
  A request the retries rescued is a success; only a request that ends in a connection error, a timeout or a 5xx
  counts as a failure. Counting attempts instead would open a 5-failures-in-a-row breaker every ~1,400 attempts under a
  merely flaky service (25 % errors), which the retries handle fine.
* **The unit is the attempt while HALF_OPEN**: a trial is one attempt, settled by its answer (a success closes the
  breaker, a failure re-opens it, a 429 frees the slot); a retry must be admitted again.
* **Not guarded** (neither checked nor counted): the ``FUTURES`` and ``TELEMETRY`` pools, i.e. retrieve_future polls.
  A poll asks for work the server has already accepted: failing it fast would abandon that work, polls have their own
  backoff, a long poll's slowness is by design, and their volume would swamp the count. Callers pass ``breaker=False``
  for requests that must go out whatever the breaker says (the session's heartbeat and finish).

Bounded responses: httpx's timeouts bound the connection and each read, not the whole answer, and httpx buffers any
body whole. So each attempt (connect, send, wait for the answer, read its whole body) runs under an overall deadline
(:meth:`Transport._attempt_deadline`: ``timeouts.total_s``, or a call's own shorter timeout ``+ connect_s``) and
fails past it with :class:`~tinkex_trio.errors.APITimeoutError` (retried like any timeout); and the body is streamed
into a buffer of at most ``config.max_response_bytes`` (checked against ``Content-Length`` up front, and against the
decoded bytes as they arrive): past it the attempt fails with :class:`~tinkex_trio.errors.ResponseTooLargeError`
(not retried). The response is closed in every case, so a half-read connection is dropped, never reused.

Cancellation passes straight through: only ``httpx.HTTPError`` and our own API errors are caught. A cancelled request
records no verdict; it only frees its trial slot.
"""

from __future__ import annotations

import logging
import platform
import random
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

import httpx
import trio

from tinkex_trio import _secrets
from tinkex_trio import types as _types
from tinkex_trio._breaker import CircuitBreaker
from tinkex_trio._config import Config
from tinkex_trio._guard import BreakerGuard, RetryStep, run_with_retries
from tinkex_trio._h11 import ACCEPT_ENCODING, BodyTooLarge
from tinkex_trio._http_errors import connection_error, error_from_response
from tinkex_trio._pool_set import HttpxPool, LeanPool, PoolKind, PoolSet, TransportFactory
from tinkex_trio._retry import (
    ConnectionFailure,
    RetryPolicy,
    outcome_from_exception,
)
from tinkex_trio._telemetry import HTTP_REQUEST, TelemetryBus
from tinkex_trio._version import __version__
from tinkex_trio.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ResponseTooLargeError,
    ResponseValidationError,
)

__all__ = ["USER_AGENT", "Transport"]

logger = logging.getLogger("tinkex_trio.transport")

T = TypeVar("T")

USER_AGENT = (
    f"tinkex_trio/{__version__} (trio {trio.__version__}; httpx {httpx.__version__}; "
    f"{platform.python_implementation()} {platform.python_version()})"
)


_UNGUARDED_POOLS = frozenset({PoolKind.FUTURES, PoolKind.TELEMETRY})
"""Pools whose requests the circuit breaker neither checks nor counts (see the module docstring)."""

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _declared_length(response: httpx.Response) -> int | None:
    """The response's Content-Length as a number, or None when absent or not a number (httpx then errors itself)."""
    raw = response.headers.get("content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


class _RequestBody(httpx.AsyncByteStream):
    """A request body whose async iteration is a plain iterator rather than an async generator.

    httpx's own ``ByteStream.__aiter__`` is an async generator; when a connection fails while the body is being
    written, that generator is dropped unfinished and trio warns (ResourceWarning) when it is garbage collected
    (encode/httpx#3686). It replaces the stream of a request already built from the bytes, so Content-Length and
    the other headers are httpx's own.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _Once(self._data)


class _Once:
    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        data, self._data = self._data, None
        if data is None:
            raise StopAsyncIteration
        return data


def _redirected(request: httpx.Request, response: httpx.Response) -> httpx.Request | None:
    """The request a redirect answer asks for (httpx's rules: 303 (and 301/302 after a POST) become a GET without a
    body; 307/308 repeat the method and body), or None when ``response`` is not a redirect to follow."""
    location = response.headers.get("location")
    if response.status_code not in _REDIRECTS or location is None:
        return None
    url = request.url.join(location)
    method = request.method
    if (response.status_code == 303 and method != "HEAD") or (response.status_code in (301, 302) and method == "POST"):
        method = "GET"
    headers = httpx.Headers(request.headers)
    headers.pop("host", None)
    content: bytes | None = request.content
    if method != request.method:
        for name in ("content-length", "transfer-encoding", "content-type"):
            headers.pop(name, None)
        content = None
    return httpx.Request(method, url, headers=headers, content=content, extensions=request.extensions)


class Transport:
    """The HTTP layer shared by a session's clients. Close it with :meth:`aclose` (the session does).

    Args:
        config: the session's configuration (base URL, key, timeouts, pool limits, retry policy).
        ssl_context: trust settings for HTTPS; default: the system store, plus ``config.ca_file`` if set.
        telemetry: the bus that receives request events; a private one if not given.
        transport_factory: builds each pool's httpx transport (in-process ASGI apps in tests).
        rng: randomness for retry jitter (seed it for reproducible tests).
        breaker: the circuit breaker every guarded request goes through (none: no breaker).

    Every attempt is bounded in time and in memory (see "Bounded responses" in the module docstring): past its
    deadline it fails with APITimeoutError (retried), past ``config.max_response_bytes`` with ResponseTooLargeError
    (not retried). A certificate or TLS handshake failure is a TLSError, not retried.
    """

    def __init__(
        self,
        config: Config,
        *,
        ssl_context: ssl.SSLContext | None = None,
        telemetry: TelemetryBus | None = None,
        transport_factory: TransportFactory | None = None,
        rng: random.Random | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        # The key never reaches a log or an error, even if this config bypassed validation (msgspec.structs.replace):
        # registering it also makes the HTTP stack's loggers scrub it (see tinkex_trio._secrets).
        _secrets.register_secret(config.api_key)
        self.config = config
        self.breaker = breaker
        self.telemetry = telemetry if telemetry is not None else TelemetryBus(clock=trio.current_time)
        self._pool_set = PoolSet(config, ssl_context=ssl_context, transport_factory=transport_factory)
        self._policy = RetryPolicy(config.retry, rng=rng)
        self._base_headers = {"X-API-Key": config.api_key, "User-Agent": self._user_agent()}
        base = str(httpx.URL(config.base_url))
        self._url_prefix = base if base.endswith("/") else base + "/"

    def __repr__(self) -> str:
        return f"<Transport base_url={self.config.base_url!r} pools={self._pool_set.kinds()}>"

    def _user_agent(self) -> str:
        suffix = self.config.user_agent_suffix
        return f"{USER_AGENT} {suffix}" if suffix else USER_AGENT

    async def aclose(self) -> None:
        """Close every pool's connections. Idempotent."""
        await self._pool_set.aclose()

    async def request(
        self,
        pool: PoolKind,
        method: str,
        path: str,
        *,
        json: object = None,
        content: bytes | None = None,
        content_type: str | None = None,
        accept: str = "application/json",
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        retry: bool = True,
        sdk_method: str | None = None,
        breaker: bool | None = None,
    ) -> httpx.Response:
        """Send one logical request (retrying per the policy when ``retry``) and return the 2xx response.

        ``breaker``: go through the circuit breaker (True), bypass it (False), or decide by pool (None: every pool
        but ``FUTURES`` and ``TELEMETRY``).

        Raises:
            APIStatusError: (a subclass per status) the final answer was not a success.
            APIConnectionError: (or APITimeoutError) no HTTP answer.
            CircuitOpenError: the circuit breaker refused the request (nothing sent) or its retry.
        """
        return await self._request(
            _keep_response,
            pool,
            method,
            path,
            json=json,
            content=content,
            content_type=content_type,
            accept=accept,
            params=params,
            headers=headers,
            timeout=timeout,
            retry=retry,
            sdk_method=sdk_method,
            guard=self.guard(pool, {}, breaker=breaker),
            committed=False,
        )

    async def request_committed(
        self,
        type_: type[T],
        pool: PoolKind,
        path: str,
        *,
        content: bytes,
        content_type: str,
        guard: BreakerGuard,
        idempotency_key: str,
        sdk_method: str | None = None,
    ) -> T:
        """POST a *sequenced* request (one the server dedups by ``(model_id, seq_id)``) and decode its answer.

        The caller has already admitted the request through ``guard`` (``guard.admit(0)``, which raises
        CircuitOpenError before anything is sent) and releases it afterwards. From the first attempt on the request
        is *committed*: its retries are not cut short by the breaker (a later request of the model would wait
        behind its seq_id), and an answer that cannot be read (not JSON, wrong schema, truncated) is re-sent like a
        connection error, with the same body and ``idempotency_key``: the server answers a re-send from its first
        result, so the step is applied once. Retries end per the policy (``max_retries``, ``retry_budget_s``).

        Raises the last error when the retries end; :func:`delivery_known` tells whether the server judged it.
        """
        return await self._request(
            _decoder(type_),
            pool,
            "POST",
            path,
            json=None,
            content=content,
            content_type=content_type,
            accept="application/json",
            params=None,
            headers={"X-Idempotency-Key": idempotency_key},
            timeout=None,
            retry=True,
            sdk_method=sdk_method,
            guard=guard,
            committed=True,
        )

    async def _request(
        self,
        decode: Callable[[httpx.Response], T],
        pool: PoolKind,
        method: str,
        path: str,
        *,
        json: object,
        content: bytes | None,
        content_type: str | None,
        accept: str,
        params: Mapping[str, str | int] | None,
        headers: Mapping[str, str] | None,
        timeout: float | None,
        retry: bool,
        sdk_method: str | None,
        guard: BreakerGuard,
        committed: bool,
    ) -> T:
        """The one retry loop. ``committed``: the caller admitted ``guard`` and releases it (see
        :meth:`request_committed`); otherwise this admits the request, re-checks the breaker before retries and
        releases the guard itself."""
        method = method.upper()
        if json is not None and content is not None:
            raise TypeError("pass json= or content=, not both")
        body: bytes | None = _types.encode(json) if json is not None else content
        req_headers: dict[str, str] = dict(self._base_headers)
        req_headers["Accept"] = accept
        if body is not None:
            req_headers["Content-Type"] = content_type or "application/json"
        if method != "GET":
            req_headers["X-Idempotency-Key"] = f"tinkex-trio-{uuid.uuid4()}"
        if sdk_method is not None:
            req_headers["x-sdk-method"] = sdk_method
        if headers:
            req_headers.update(headers)
        request_timeout = timeout if timeout is not None else self.config.timeouts.request_s
        httpx_timeout = httpx.Timeout(request_timeout, connect=min(self.config.timeouts.connect_s, request_timeout))
        client_pool = self._pool_set.for_kind(pool)
        prepared: httpx.Request | None = None
        if isinstance(client_pool, LeanPool):
            # Built once for every attempt: the same URL, headers and body (retries repeat the idempotency key).
            req_headers.setdefault("Accept-Encoding", ACCEPT_ENCODING)
            prepared = httpx.Request(
                method,
                httpx.URL(self._url_prefix + path.lstrip("/"), params=params),
                headers=req_headers,
                content=body,
                extensions={"timeout": httpx_timeout.as_dict()},
            )
        what = f"{method} {path}"
        meta: dict[str, str | int | float | bool | None] = {"method": method, "path": path, "pool": pool.value}
        started = trio.current_time()
        guard.describe(meta)

        async def attempt_once(attempt: int) -> T:
            response = await self._send_once(
                client_pool, prepared, method, path, body, req_headers, params, httpx_timeout, what, meta, attempt
            )
            return decode(response)

        def next_delay(attempt: int, exc: Exception) -> RetryStep | None:
            if not isinstance(exc, APIError) or not retry:
                return None
            outcome = outcome_from_exception(exc)
            if outcome is None and committed and _unreadable(exc):
                # The server answered but the answer cannot be read: re-send (idempotent) to read it again.
                outcome = ConnectionFailure()
            if outcome is None:
                return None
            decision = self._policy.decide(attempt, outcome, trio.current_time(), started)
            return RetryStep(decision.delay, decision.reason.value) if decision.retry else None

        return await run_with_retries(
            attempt_once, next_delay, guard, self.telemetry, meta, committed=committed, what=what
        )

    def guard(
        self,
        pool: PoolKind,
        meta: Mapping[str, str | int | float | bool | None],
        *,
        breaker: bool | None = None,
    ) -> BreakerGuard:
        """The circuit breaker's bookkeeping for one logical request of ``pool`` (a no-op guard when the request is
        not guarded: no breaker, ``breaker=False``, or ``breaker=None`` on an unguarded pool). Used by
        :meth:`request`, and by callers that run their own retry loop over ``breaker=False`` attempts (sampling)."""
        cb = self.breaker
        if cb is not None and (breaker is False or (breaker is None and pool in _UNGUARDED_POOLS)):
            cb = None
        return BreakerGuard(cb, self.telemetry, meta, self.config.base_url)

    async def _send_once(
        self,
        client_pool: HttpxPool | LeanPool,
        prepared: httpx.Request | None,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        params: Mapping[str, str | int] | None,
        timeout: httpx.Timeout,
        what: str,
        meta: dict[str, str | int | float | bool | None],
        attempt: int,
    ) -> httpx.Response:
        deadline_s = self._attempt_deadline(timeout)
        # The span ends whatever happens: an error is a .exception (its kind: the class we raise), cancellation or
        # Ctrl-C a .stop with cancelled=True (not a failure), and an HTTP answer, whatever its status, a .stop.
        with self.telemetry.span(HTTP_REQUEST, meta, measurements={"attempt": attempt}) as extra:
            response: httpx.Response | None = None
            try:
                # Our own scope: its Cancelled ends here (cancelled_caught); an outer cancellation propagates. Waiting
                # for a free lane counts against the deadline too.
                with trio.move_on_after(deadline_s):
                    if isinstance(client_pool, LeanPool):
                        assert prepared is not None
                        response = await self._send_lean(client_pool, prepared, what)
                    else:
                        lanes = client_pool.lanes
                        client = await lanes.acquire()
                        try:
                            request = client.build_request(
                                method, path, content=body, headers=headers, params=params, timeout=timeout
                            )
                            if body is not None:
                                request.stream = _RequestBody(body)
                            response = await self._send_and_read(client, request, what)
                        finally:
                            lanes.release(client)
            except httpx.HTTPError as exc:
                raise connection_error(exc, what) from exc
            if response is None:
                raise APITimeoutError(
                    f"{what}: no complete answer within {deadline_s:g} s (the attempt's overall deadline; see "
                    "timeouts.total_s)"
                )
            status = response.status_code
            extra["status"] = status
        if 200 <= status < 300:
            return response
        if status == 400 and not response.content:
            # A zero-length 400 is a proxy's reset, not the server's verdict (protocol §7).
            raise APIConnectionError(f"{what}: empty 400 response (connection reset by a proxy)")
        raise error_from_response(response)

    def _attempt_deadline(self, timeout: httpx.Timeout) -> float:
        """The overall deadline of one attempt, in seconds: ``timeouts.total_s`` (default ``2 × request_s``), or,
        for a call with a shorter read timeout of its own (a poll, a heartbeat, ...), that timeout ``+ connect_s``
        when that is sooner."""
        timeouts = self.config.timeouts
        total = timeouts.effective_total_s
        read = timeout.read
        if read is not None and read < timeouts.request_s:
            return min(total, read + timeouts.connect_s)
        return total

    async def _send_lean(self, client_pool: LeanPool, request: httpx.Request, what: str) -> httpx.Response:
        """One attempt on an :class:`~tinkex_trio._h11.H11Lane` (a redirect is followed through the pool's httpx
        client, whose request hook keeps the key on the base URL's origin)."""
        limit = self.config.max_response_bytes
        lanes = client_pool.lanes
        lane = await lanes.acquire()
        try:
            response = await lane.send(request, limit)
        except BodyTooLarge as exc:
            if exc.declared:
                raise ResponseTooLargeError(
                    f"{what}: the response declares {exc.size} bytes (Content-Length), over the limit of {limit} "
                    "(max_response_bytes); not read",
                    limit=limit,
                    size=exc.size,
                    request_id=exc.request_id,
                ) from None
            raise ResponseTooLargeError(
                f"{what}: the response body is over the limit of {limit} bytes (max_response_bytes); "
                f"stopped reading after {exc.size}",
                limit=limit,
                size=exc.size,
                body=exc.head,
                request_id=exc.request_id,
            ) from None
        finally:
            lanes.release(lane)
        redirect = _redirected(request, response)
        if redirect is None:
            return response
        return await self._send_and_read(client_pool.fallback(), redirect, what)

    async def _send_and_read(self, client: httpx.AsyncClient, request: httpx.Request, what: str) -> httpx.Response:
        """Send ``request`` and read its whole body (decoded), at most ``config.max_response_bytes`` of it.

        Returns the response with its body loaded (``response.content`` works). The response is closed whatever
        happens, cancellation included: a body read to its end gives the connection back to the pool, any other
        ending closes the connection (httpx shields that close from cancellation itself).

        Raises:
            ResponseTooLargeError: the declared Content-Length, or the bytes read so far, exceed the limit.
            httpx.HTTPError: the transport failed (the caller maps it).
        """
        limit = self.config.max_response_bytes
        response = await client.send(request, stream=True)
        try:
            rid = response.headers.get("x-request-id")
            declared = _declared_length(response)
            if declared is not None and declared > limit:
                raise ResponseTooLargeError(
                    f"{what}: the response declares {declared} bytes (Content-Length), over the limit of {limit} "
                    "(max_response_bytes); not read",
                    limit=limit,
                    size=declared,
                    request_id=rid,
                )
            buffer = bytearray()
            too_large: ResponseTooLargeError | None = None
            with trio.CancelScope() as reading:
                async for chunk in response.aiter_bytes():
                    if too_large is not None:
                        continue  # bytes h11 had already received when we cut: dropped
                    buffer += chunk
                    if len(buffer) > limit:
                        too_large = ResponseTooLargeError(
                            f"{what}: the response body is over the limit of {limit} bytes (max_response_bytes); "
                            f"stopped reading after {len(buffer)}",
                            limit=limit,
                            size=len(buffer),
                            body=bytes(buffer[:2048]),
                            request_id=rid,
                        )
                        buffer = bytearray()
                        # Not `break`: that would abandon httpx's nested async generators half-way (trio warns when
                        # they are collected). Cancelling makes the next network read raise, which ends every one of
                        # them, and httpcore closes the connection on the way out. This scope catches only its own
                        # Cancelled: the deadline's or the caller's passes through.
                        reading.cancel()
            if too_large is not None:
                raise too_large
            # The answer as a complete response built from the bytes read (aread() would buffer without a bound).
            # They are already decoded: the Content-Encoding header goes, or httpx would decode them twice.
            headers = [(k, v) for k, v in response.headers.raw if k.lower() != b"content-encoding"]
            read = httpx.Response(
                response.status_code,
                headers=headers,
                content=bytes(buffer),
                request=response.request,
                extensions=response.extensions,
            )
            del buffer
        finally:
            await response.aclose()
        return read

    async def request_json(
        self,
        type_: type[T],
        pool: PoolKind,
        method: str,
        path: str,
        **kwargs: Any,
    ) -> T:
        """:meth:`request`, then decode the body as ``type_`` (ResponseValidationError on a bad body)."""
        response = await self.request(pool, method, path, **kwargs)
        return _decoder(type_)(response)


def _keep_response(response: httpx.Response) -> httpx.Response:
    return response


def _decoder(type_: type[T]) -> Callable[[httpx.Response], T]:
    def decode(response: httpx.Response) -> T:
        return _types.decode(type_, response.content, request_id=response.headers.get("x-request-id"))

    return decode


def _unreadable(exc: APIError) -> bool:
    """An answer that came but cannot be read (not one over the size cap: the server would send that again)."""
    return isinstance(exc, ResponseValidationError) and not isinstance(exc, ResponseTooLargeError)
