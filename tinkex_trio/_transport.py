"""HTTP transport: one ``httpx.AsyncClient`` per pool kind, request/response, retries, status → error mapping.

Every request of the client goes through :meth:`Transport.request`. It

* joins the path to ``config.base_url`` and sets the headers every call carries (``X-API-Key``, ``User-Agent``,
  ``X-Idempotency-Key`` on non-GET requests — the same for every retry of one logical request — ``Accept`` and
  ``Content-Type``);
* sends on the ``httpx.AsyncClient`` of its pool kind (protocol §1.5: training calls never queue behind a thousand
  sample submissions or long-polls), each with the limits of ``config.pools``;
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

import enum
import logging
import platform
import random
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

import httpx
import msgspec
import trio

from tinkex_trio import _secrets
from tinkex_trio import types as _types
from tinkex_trio._breaker import CircuitBreaker, Permit, Verdict, classify_exception
from tinkex_trio._config import Config, PoolLimits
from tinkex_trio._retry import (
    ConnectionFailure,
    RetryPolicy,
    is_retryable_status,
    outcome_from_exception,
    parse_retry_after,
)
from tinkex_trio._telemetry import (
    CIRCUIT_BREAKER_REJECTED,
    HTTP_REQUEST_EXCEPTION,
    HTTP_REQUEST_START,
    HTTP_REQUEST_STOP,
    RETRY,
    TelemetryBus,
)
from tinkex_trio._version import __version__
from tinkex_trio.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    CircuitOpenError,
    ResponseTooLargeError,
    ResponseValidationError,
    TLSError,
    status_error_class,
)

__all__ = ["USER_AGENT", "BreakerGuard", "PoolKind", "Transport", "TransportFactory", "delivery_known"]

logger = logging.getLogger("tinkex_trio.transport")

T = TypeVar("T")

USER_AGENT = (
    f"tinkex_trio/{__version__} (trio {trio.__version__}; httpx {httpx.__version__}; "
    f"{platform.python_implementation()} {platform.python_version()})"
)


class PoolKind(enum.StrEnum):
    """The connection pools of protocol §1.5: each kind has its own ``httpx.AsyncClient`` and limits."""

    TRAINING = "training"
    SAMPLING = "sampling"
    SESSION = "session"
    FUTURES = "futures"
    TELEMETRY = "telemetry"


TransportFactory = Callable[[PoolKind], httpx.AsyncBaseTransport]
"""Builds the httpx transport of a pool: called once per :class:`PoolKind`, when the session first uses that pool, and
the transport is closed with the pool's client when the session ends. Public as ``tinkex_trio.TransportFactory``
(``open_session(transport_factory=...)``; tests pass ``lambda pool: httpx.ASGITransport(app=app)``)."""

_UNGUARDED_POOLS = frozenset({PoolKind.FUTURES, PoolKind.TELEMETRY})
"""Pools whose requests the circuit breaker neither checks nor counts (see the module docstring)."""


def _request_id_of(response: httpx.Response, body: object) -> str | None:
    rid = response.headers.get("x-request-id")
    if rid:
        return rid
    if isinstance(body, dict):
        value = body.get("request_id")  # pyright: ignore[reportUnknownMemberType,reportUnknownVariableType]
        if isinstance(value, str):
            return value
    return None


def _parse_error_body(response: httpx.Response) -> object:
    content = response.content
    if not content:
        return None
    try:
        return msgspec.json.decode(content)
    except msgspec.DecodeError:
        return content.decode("utf-8", errors="replace")[:2048]


def error_from_response(response: httpx.Response) -> APIStatusError:
    """The :class:`~tinkex_trio.errors.APIStatusError` subclass for a non-success response."""
    body = _parse_error_body(response)
    cls = status_error_class(response.status_code)
    return cls(
        status_code=response.status_code,
        body=body,
        request_id=_request_id_of(response, body),
        retry_after=parse_retry_after(response.headers),
        headers=dict(response.headers.items()),
    )


_DEFAULT_PORTS = {"http": 80, "https": 443}
_CLOSE_TIMEOUT_S = 5.0
"""How long :meth:`Transport.aclose` waits for each pool to close (it runs shielded from cancellation)."""


def _may_carry_key(base: httpx.URL, url: httpx.URL) -> bool:
    """Whether a request to ``url`` may carry the key given to ``base``: the same origin, or its https upgrade.

    httpx drops ``Authorization`` on a redirect to another origin, but knows nothing of ``X-API-Key``.
    """
    if url.host != base.host:
        return False
    base_port = base.port or _DEFAULT_PORTS.get(base.scheme)
    port = url.port or _DEFAULT_PORTS.get(url.scheme)
    if url.scheme == base.scheme:
        return port == base_port
    # httpx's "https upgrade": http on port 80 redirected to https on port 443 of the same host.
    return base.scheme == "http" and url.scheme == "https" and base_port == 80 and port == 443


def _connection_error(exc: httpx.HTTPError, what: str) -> APIConnectionError:
    """The error for an httpx failure; the caller raises it ``from exc`` (httpx exceptions carry no headers, so the
    cause chain cannot show the key)."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"{what}: request timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError) and (ssl_exc := _fatal_ssl_error(exc)) is not None:
        return _tls_error(exc, ssl_exc, what)
    detail = str(exc) or _root_detail(exc) or type(exc).__name__
    return APIConnectionError(f"{what}: connection error: {detail}")


# A TLS connection cut short (EOF, reset, a syscall error) during the handshake is transport trouble like any other
# and is retried; every other ssl.SSLError is a verdict of the handshake itself, which a retry would repeat.
_TRANSIENT_SSL_ERRORS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes/contexts, outermost first (each once: a chain may loop)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and not any(current is seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _fatal_ssl_error(exc: httpx.ConnectError) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` behind a failed connection when retrying cannot fix it (see _TRANSIENT_SSL_ERRORS)."""
    for link in _exception_chain(exc):
        if isinstance(link, ssl.SSLError):
            return None if isinstance(link, _TRANSIENT_SSL_ERRORS) else link
    return None


def _root_detail(exc: BaseException) -> str:
    """The message of the innermost exception in the chain that has one (httpx's ConnectError is often empty)."""
    for link in reversed(_exception_chain(exc)):
        if text := str(link):
            return text
    return ""


def _tls_error(exc: httpx.ConnectError, ssl_exc: ssl.SSLError, what: str) -> TLSError:
    try:
        url = exc.request.url
        host = f"{url.host}:{url.port}" if url.port is not None else url.host
    except RuntimeError:  # an httpx exception raised without a request (never by client.send)
        host = "the server"
    # getattr: the ssl module sets these attributes only on the errors it raises itself.
    if isinstance(ssl_exc, ssl.SSLCertVerificationError):
        verify_message: str | None = getattr(ssl_exc, "verify_message", None)
        reason = verify_message or str(ssl_exc) or "unknown reason"
        return TLSError(
            f"{what}: TLS certificate verify failed: {reason} (hostname {host}); "
            "trust the server's CA with ca_file= or ssl_context=, or check base_url"
        )
    ssl_reason: str | None = getattr(ssl_exc, "reason", None)
    reason = (ssl_reason or str(ssl_exc)).lower().replace("_", " ")
    hint = (
        " (does the server speak plain HTTP on this port? then base_url should be http://)"
        if "wrong version number" in reason or "record layer failure" in reason
        else ""
    )
    return TLSError(f"{what}: TLS handshake with {host} failed: {reason}{hint}")


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


class BreakerGuard:
    """The circuit breaker's view of one logical request that may take several attempts (see the module docstring).

    ``admit`` before each attempt (a live CLOSED permit is kept; otherwise the breaker is asked again and may raise
    :class:`~tinkex_trio.errors.CircuitOpenError`), ``attempt_failed`` after a failed attempt (settles a HALF_OPEN
    trial), ``stop_if_opened`` before waiting for a retry, ``settle`` with the request's final verdict, and ``release``
    in a ``finally`` (no verdict: cancellation, Ctrl-C). With no breaker every method is a no-op.
    """

    __slots__ = ("_base_url", "_breaker", "_meta", "_permit", "_telemetry")

    def __init__(
        self,
        breaker: CircuitBreaker | None,
        telemetry: TelemetryBus,
        meta: Mapping[str, str | int | float | bool | None],
        base_url: str,
    ) -> None:
        self._breaker = breaker
        self._telemetry = telemetry
        self._meta = meta
        self._base_url = base_url
        self._permit: Permit | None = None

    def describe(self, meta: Mapping[str, str | int | float | bool | None]) -> None:
        """Give the guard the request's telemetry metadata, unless its maker already did."""
        if not self._meta:
            self._meta = meta

    def admit(self, attempt: int, cause: APIError | None = None) -> None:
        """Admission before an attempt; raises CircuitOpenError (``from cause``) when the breaker refuses."""
        breaker, permit = self._breaker, self._permit
        if breaker is None:
            return
        if permit is not None and not permit.settled and permit.generation == breaker.generation:
            return
        if permit is not None:
            breaker.release(permit)  # stale or settled: a no-op, for clarity
        now = trio.current_time()
        try:
            self._permit = breaker.before_call(now)
        except CircuitOpenError as exc:
            self._telemetry.emit(
                CIRCUIT_BREAKER_REJECTED,
                {"retry_after_s": exc.retry_after, "attempt": attempt},
                {**self._meta, "state": breaker.state.value, "base_url": self._base_url},
                time=now,
            )
            if cause is not None:
                raise exc from cause
            raise

    def attempt_failed(self, verdict: Verdict) -> None:
        """A failed attempt: a HALF_OPEN trial is settled by its attempt, not by the request's final outcome."""
        if self._breaker is not None and self._permit is not None and self._permit.trial:
            self._breaker.record(verdict, trio.current_time(), self._permit)

    def stop_if_opened(self, attempt: int, cause: APIError) -> None:
        """Before waiting for a retry: if the breaker has opened meanwhile, raise CircuitOpenError now."""
        breaker = self._breaker
        if breaker is not None:
            breaker.poll(trio.current_time())
            if breaker.open_until is not None:
                self.admit(attempt, cause)

    def settle(self, verdict: Verdict) -> None:
        """The logical request's final verdict."""
        if self._breaker is not None and self._permit is not None:
            self._breaker.record(verdict, trio.current_time(), self._permit)

    def release(self) -> None:
        """End without a verdict (frees a trial slot); a no-op once settled."""
        if self._breaker is not None and self._permit is not None and not self._permit.settled:
            self._breaker.release(self._permit)


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
        self._ssl_context = ssl_context
        self._transport_factory = transport_factory
        self._policy = RetryPolicy(config.retry, rng=rng)
        self._clients: dict[PoolKind, httpx.AsyncClient] = {}
        self._closed = False
        self._base_headers = {"X-API-Key": config.api_key, "User-Agent": self._user_agent()}
        self._base_url = httpx.URL(config.base_url)

    def __repr__(self) -> str:
        return f"<Transport base_url={self.config.base_url!r} pools={sorted(self._clients)}>"

    def _user_agent(self) -> str:
        suffix = self.config.user_agent_suffix
        return f"{USER_AGENT} {suffix}" if suffix else USER_AGENT

    def _verify(self) -> ssl.SSLContext | bool:
        if self._ssl_context is not None:
            return self._ssl_context
        if self.config.ca_file:
            return ssl.create_default_context(cafile=self.config.ca_file)
        return self.config.verify

    def _client(self, pool: PoolKind) -> httpx.AsyncClient:
        client = self._clients.get(pool)
        if client is not None:
            return client
        if self._closed:
            raise APIConnectionError("the transport is closed (the session has ended)")
        limits: PoolLimits = getattr(self.config.pools, pool.value)
        timeouts = self.config.timeouts
        common: dict[str, Any] = {
            "base_url": self.config.base_url,
            "timeout": httpx.Timeout(timeouts.request_s, connect=timeouts.connect_s),
            "follow_redirects": True,
            "event_hooks": {"request": [self._drop_key_off_origin]},
        }
        if self._transport_factory is not None:
            client = httpx.AsyncClient(transport=self._transport_factory(pool), **common)
        else:
            client = httpx.AsyncClient(
                http2=self.config.http2,
                verify=self._verify(),
                limits=httpx.Limits(
                    max_connections=limits.max_connections,
                    max_keepalive_connections=limits.max_keepalive,
                    keepalive_expiry=limits.keepalive_expiry_s,
                ),
                **common,
            )
        self._clients[pool] = client
        return client

    async def _drop_key_off_origin(self, request: httpx.Request) -> None:
        """A request hook (every redirect hop goes through it): the key never leaves the base URL's origin."""
        if not _may_carry_key(self._base_url, request.url):
            request.headers.pop("X-API-Key", None)

    async def aclose(self) -> None:
        """Close every pool's connections. Idempotent."""
        self._closed = True
        clients, self._clients = list(self._clients.values()), {}
        with trio.CancelScope(shield=True):
            for client in clients:
                # Shielded, so bounded: a connection that will not close is dropped (its socket is closed anyway).
                with trio.move_on_after(_CLOSE_TIMEOUT_S):
                    await client.aclose()

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
        client = self._client(pool)
        what = f"{method} {path}"
        meta: dict[str, str | int | float | bool | None] = {"method": method, "path": path, "pool": pool.value}
        started = trio.current_time()
        attempt = 0
        guard.describe(meta)
        if not committed:
            guard.admit(attempt)
        try:
            while True:
                try:
                    response = await self._send_once(
                        client, method, path, body, req_headers, params, httpx_timeout, what, meta, attempt
                    )
                    result = decode(response)
                except APIError as exc:
                    verdict = classify_exception(exc)
                    guard.attempt_failed(verdict)
                    outcome = outcome_from_exception(exc) if retry else None
                    if (
                        outcome is None
                        and committed
                        and isinstance(exc, ResponseValidationError)
                        and not isinstance(exc, ResponseTooLargeError)
                    ):
                        # The server answered but the answer cannot be read: re-send (idempotent) to read it again.
                        # (Not one over the size cap: the server keeps that answer and would send it again.)
                        outcome = ConnectionFailure()
                    if outcome is None:
                        guard.settle(verdict)
                        raise
                    now = trio.current_time()
                    decision = self._policy.decide(attempt, outcome, now, started)
                    if not decision.retry:
                        guard.settle(verdict)
                        raise
                    if not committed:
                        guard.stop_if_opened(attempt + 1, exc)  # do not wait for a retry it will refuse
                    self.telemetry.emit(
                        RETRY,
                        {"delay_s": decision.delay, "attempt": attempt + 1},
                        {**meta, "reason": decision.reason.value, "error": type(exc).__name__},
                    )
                    logger.debug("retrying %s in %.3fs (%s)", what, decision.delay, decision.reason.value)
                    await trio.sleep(decision.delay)
                    attempt += 1
                    if not committed:
                        guard.admit(attempt, exc)
                else:
                    guard.settle(Verdict.SUCCESS)
                    return result
        finally:
            # Cancellation, Ctrl-C, or an error that is no outcome: no verdict; frees a trial slot (no-op if settled).
            if not committed:
                guard.release()

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
        client: httpx.AsyncClient,
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
        bus = self.telemetry
        start = trio.current_time()
        bus.emit(HTTP_REQUEST_START, {"attempt": attempt}, meta, time=start)
        deadline_s = self._attempt_deadline(timeout)
        try:
            request = client.build_request(method, path, content=body, headers=headers, params=params, timeout=timeout)
            if body is not None:
                request.stream = _RequestBody(body)
            response: httpx.Response | None = None
            # Our own scope: its Cancelled ends here (cancelled_caught); an outer cancellation propagates untouched.
            with trio.move_on_after(deadline_s):
                response = await self._send_and_read(client, request, what)
            if response is None:
                raise APITimeoutError(
                    f"{what}: no complete answer within {deadline_s:g} s (the attempt's overall deadline; see "
                    "timeouts.total_s)"
                )
        except httpx.HTTPError as exc:
            err = _connection_error(exc, what)
            end = trio.current_time()
            bus.emit(
                HTTP_REQUEST_EXCEPTION,
                {"duration_ms": (end - start) * 1000.0, "attempt": attempt},
                {**meta, "kind": type(err).__name__},
                time=end,
            )
            raise err from exc
        except BaseException as exc:
            # The span ends whatever happened (the bus's convention: cancellation or Ctrl-C is a .stop with
            # cancelled=True, not a failure), and the exception propagates untouched.
            end = trio.current_time()
            measurements = {"duration_ms": (end - start) * 1000.0, "attempt": attempt}
            if isinstance(exc, Exception):
                bus.emit(HTTP_REQUEST_EXCEPTION, measurements, {**meta, "kind": type(exc).__name__}, time=end)
            else:
                bus.emit(HTTP_REQUEST_STOP, measurements, {**meta, "cancelled": True}, time=end)
            raise
        end = trio.current_time()
        status = response.status_code
        bus.emit(
            HTTP_REQUEST_STOP,
            {"duration_ms": (end - start) * 1000.0, "attempt": attempt},
            {**meta, "status": status},
            time=end,
        )
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
            # httpx has no public way to attach a body read by hand; aread() would buffer it unbounded.
            response._content = bytes(buffer)  # pyright: ignore[reportPrivateUsage]
            del buffer
        finally:
            await response.aclose()
        return response

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


def delivery_known(exc: BaseException) -> bool:
    """Whether a request that ended with ``exc`` was *judged by the server*: a status it will answer the same way
    again (400, 401, 403, 404, 422, ...: retrying cannot change it). Everything else (a connection error, a
    timeout, 408/409/429/5xx, an answer that could not be read, cancellation) leaves its fate unknown: the server
    may or may not have applied it."""
    return isinstance(exc, APIStatusError) and not is_retryable_status(exc.status_code)
