"""The exception hierarchy of tinkex_trio.

Every failure a user can see is a :class:`TinkexError`. Each error carries the facts needed to act on it
(status, parsed body, request id, category, retry-after) and never the API key: messages and bodies are scrubbed
of the keys in use (with or without their ``tml-`` prefix) and of anything that looks like a Tinker credential
before they are stored.

::

    TinkexError
    ├── APIError
    │   ├── APIStatusError
    │   │   ├── BadRequestError            400
    │   │   ├── AuthenticationError        401
    │   │   ├── BillingError               402
    │   │   ├── PermissionDeniedError      403
    │   │   ├── NotFoundError              404
    │   │   ├── ConflictError              409
    │   │   ├── GoneError                  410
    │   │   ├── UnprocessableEntityError   422
    │   │   ├── RateLimitError             429
    │   │   └── InternalServerError        5xx
    │   ├── APIConnectionError
    │   │   ├── APITimeoutError
    │   │   └── TLSError                   certificate or handshake failure: not retried
    │   └── ResponseValidationError
    │       └── ResponseTooLargeError      the body is over ``max_response_bytes``: not retried
    ├── RequestFailedError                 a future that failed (category user/server/unknown)
    ├── CircuitOpenError                   the breaker is open: failing fast
    ├── SessionExpiredError                the server forgot the session (410 on heartbeat)
    ├── SessionClosedError                 the session's ``async with`` block has ended
    ├── SequenceInDoubtError               a training request's delivery is unknown: its model is stopped
    ├── PartiallyAppliedError              a chunked forward_backward was applied in part
    ├── TrainingHaltedError                a custom loss failed between its two calls: its model is stopped
    ├── TraceExportError                   a session's trace export failed, or was not ready in time
    ├── ConfigError                        bad configuration, raised before any request (also a ValueError)
    └── InvalidArgumentError               a bad argument to a public method, raised before any request (ValueError)
        ├── InvalidArgumentTypeError       the argument has the wrong type (also a TypeError)
        └── BatchItemTooLargeError         a batch item holds a datum over the server's per-request limit
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any

from tinkex_trio import _secrets

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BatchItemTooLargeError",
    "BillingError",
    "CircuitOpenError",
    "ConfigError",
    "ConflictError",
    "GoneError",
    "InternalServerError",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "NotFoundError",
    "PartiallyAppliedError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestErrorCategory",
    "RequestFailedError",
    "ResponseTooLargeError",
    "ResponseValidationError",
    "SequenceInDoubtError",
    "SessionClosedError",
    "SessionExpiredError",
    "TLSError",
    "TinkexError",
    "TraceExportError",
    "TrainingHaltedError",
    "UnprocessableEntityError",
    "redact",
    "status_error_class",
]


def redact(text: str) -> str:
    """Return ``text`` with every API key this process uses (whole, or without its ``tml-`` prefix) and anything
    that looks like a Tinker credential (``tml-...``, a JWT) replaced by ``<redacted>``.

    A key is known once a :class:`~tinkex_trio.Config` has validated it (see :mod:`tinkex_trio._secrets`)."""
    return _secrets.scrub(text)


def _redact_bytes(data: bytes) -> bytes:
    return _secrets.scrub_bytes(data)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact(str(k)): _redact_value(v) for k, v in value.items()}  # pyright: ignore[reportUnknownVariableType,reportUnknownArgumentType]
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]  # pyright: ignore[reportUnknownVariableType]
    return value


class RequestErrorCategory(enum.StrEnum):
    """Who is to blame for a failed future, as the server reports it."""

    UNKNOWN = "unknown"
    SERVER = "server"
    USER = "user"


class TinkexError(Exception):
    """Base class of every error raised by tinkex_trio.

    Every error pickles (to send it to another process) and unpickles to an equal one: same class, ``args`` and
    attributes. ``__cause__``, ``__context__`` and the traceback are not kept, as for any exception.
    """

    def __init__(self, message: str) -> None:
        self._message = redact(message)
        super().__init__(self._message)

    @property
    def message(self) -> str:
        """What went wrong, scrubbed of anything that looks like a credential."""
        return self._message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own __reduce__ rebuilds with cls(*self.args): that fails for every error whose __init__ takes a
        # required keyword (status_code, argument, limit, ...). Rebuild without __init__, then restore __dict__
        # (already redacted: nothing is scrubbed twice).
        return (_unpickle, (type(self), self.args), self.__dict__)


def _unpickle(cls: type[TinkexError], args: tuple[Any, ...]) -> TinkexError:
    """A ``cls`` with these ``args`` and no attributes yet: pickle sets them from the state of ``__reduce__``."""
    error = cls.__new__(cls)
    error.args = args
    return error


class ConfigError(TinkexError, ValueError):
    """The configuration is invalid. Raised when a :class:`~tinkex_trio.Config` is built, before any request.

    ``key`` is the offending setting as a dotted path (``"retry.max_retries"``), or the environment variable's
    name, when the error is about one key; otherwise ``None``.
    """

    key: str | None

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class InvalidArgumentError(TinkexError, ValueError):
    """An argument of a public method (or a field of a request type) is invalid.

    Raised before any request is sent and before any sequence id is taken, so a refused call leaves the client as it
    was. ``argument`` names the offending argument as the caller wrote it, with a path into it when the fault is
    inside (``"data[3]"``, ``"adam.learning_rate"``, ``"user_metadata"``).
    """

    argument: str

    def __init__(self, message: str, *, argument: str) -> None:
        super().__init__(message)
        self.argument = argument


class InvalidArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument has the wrong type (a ``str`` where a sequence of Datum is expected, ``"2"`` for an int)."""


class BatchItemTooLargeError(InvalidArgumentError):
    """An item of ``forward_backward_batch`` holds a datum too large for any request: its estimated size is over the
    server's limit on one forward_backward request (``fwdbwd_max_chunk_bytes_count``), and a datum cannot be split.

    Raised before anything of the batch is sent (no ``seq_id`` taken). ``argument`` is ``"items[<index>]"``.

    Attributes:
        index: the item's index in the batch.
        datum_index: the datum's index in the item's data.
        size: the datum's estimated size in bytes.
        limit: the limit in bytes.
    """

    index: int
    datum_index: int
    size: int
    limit: int

    def __init__(self, message: str, *, index: int, datum_index: int, size: int, limit: int) -> None:
        super().__init__(message, argument=f"items[{index}]")
        self.index = index
        self.datum_index = datum_index
        self.size = size
        self.limit = limit


class APIError(TinkexError):
    """A request to the Tinker API did not produce a usable result."""

    request_id: str | None

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class APIStatusError(APIError):
    """The server answered with a non-success HTTP status.

    Attributes:
        status_code: the HTTP status.
        body: the parsed JSON body, else the body text, else ``None``.
        retry_after: seconds the server asked us to wait (``retry-after-ms`` / ``retry-after``), if any.
        headers: the response headers (lower-cased names).
    """

    status_code: int
    body: object
    retry_after: float | None
    headers: dict[str, str]

    def __init__(
        self,
        message: str | None = None,
        *,
        status_code: int,
        body: object = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if message is None:
            message = f"Error code: {status_code} - {body!r}" if body is not None else f"Error code: {status_code}"
        super().__init__(message, request_id=request_id)
        self.status_code = status_code
        self.body = _redact_value(body)
        self.retry_after = retry_after
        self.headers = {k.lower(): redact(v) for k, v in (headers or {}).items() if k.lower() != "x-api-key"}


class BadRequestError(APIStatusError):
    """HTTP 400."""


class AuthenticationError(APIStatusError):
    """HTTP 401."""


class BillingError(APIStatusError):
    """HTTP 402."""


class PermissionDeniedError(APIStatusError):
    """HTTP 403."""


class NotFoundError(APIStatusError):
    """HTTP 404."""


class ConflictError(APIStatusError):
    """HTTP 409."""


class GoneError(APIStatusError):
    """HTTP 410: the resource (a session, a future) is gone."""


class UnprocessableEntityError(APIStatusError):
    """HTTP 422."""


class RateLimitError(APIStatusError):
    """HTTP 429."""


class InternalServerError(APIStatusError):
    """HTTP 5xx."""


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: BillingError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The error class for an HTTP status, per protocol §11 (5xx → InternalServerError, else APIStatusError)."""
    if status_code >= 500:
        return InternalServerError
    return _STATUS_CLASSES.get(status_code, APIStatusError)


class APIConnectionError(APIError):
    """The request did not get an HTTP response: connection refused or reset, TLS failure, protocol error."""

    def __init__(self, message: str = "Connection error.", *, request_id: str | None = None) -> None:
        super().__init__(message, request_id=request_id)


class APITimeoutError(APIConnectionError):
    """The request timed out."""

    def __init__(self, message: str = "Request timed out.", *, request_id: str | None = None) -> None:
        super().__init__(message, request_id=request_id)


class TLSError(APIConnectionError):
    """The TLS handshake failed in a way that retrying cannot fix: the server's certificate did not verify (unknown
    CA, expired, issued for another host name) or the two sides do not speak TLS alike (e.g. ``https://`` to a plain
    HTTP port: "wrong version number").

    Never retried, and neutral for the circuit breaker: the same handshake would fail the same way, and the fix is
    in the configuration (trust the server's CA with ``ca_file`` or an ``ssl_context``, correct ``base_url``), not in
    the service's health. The message names the host and the reason (e.g. ``certificate verify failed:
    self-signed certificate in certificate chain``); ``__cause__`` is the httpx exception, whose chain ends in the
    ``ssl.SSLError``. A TLS connection cut short (EOF or reset during the handshake) is an ordinary, retried
    :class:`APIConnectionError`, not this.
    """


class ResponseValidationError(APIError):
    """The server's answer was not valid: not JSON, or a field of the wrong type or missing.

    Attributes:
        field: the JSON path of the offending field (e.g. ``$.sequences[0].tokens``), if known.
        body: the raw body (truncated to 2 KiB), for diagnosis.
    """

    field: str | None
    body: bytes | None

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        body: bytes | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.field = field
        # Redacted before it is cut to 2 KiB, so that no key is cut in half (a server may echo the request back).
        self.body = _redact_bytes(body[:8192])[:2048] if body is not None else None


class ResponseTooLargeError(ResponseValidationError):
    """The response body is larger than ``Config.max_response_bytes``: the client stopped reading it.

    Raised as soon as the declared ``Content-Length`` or the bytes read so far (after content decoding) pass the
    limit; the connection is closed, so at most about ``limit`` bytes were buffered. It is a
    :class:`ResponseValidationError` because the answer exists but is unusable, and like one it is not retried by the
    HTTP layer: the server would send the same body again (for a POST, its answer under the same idempotency key).
    Neutral for the circuit breaker. A ``retrieve_future`` poll counts it as an unreadable answer (a few re-polls,
    then the future fails with it). Raise ``max_response_bytes`` if the answer is legitimately that large.

    Attributes:
        limit: the limit in bytes (``Config.max_response_bytes``).
        size: the declared Content-Length, or the bytes read when reading stopped.
    """

    limit: int
    size: int

    def __init__(
        self,
        message: str,
        *,
        limit: int,
        size: int,
        body: bytes | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, body=body, request_id=request_id)
        self.limit = limit
        self.size = size


class RequestFailedError(TinkexError):
    """The server ran the request and it failed (a future's ``{"error": ..., "category": ...}`` reply).

    ``category`` tells who is to blame: ``user`` (bad input: do not retry), ``server`` or ``unknown``.
    """

    request_id: str | None
    category: RequestErrorCategory

    def __init__(
        self,
        message: str,
        *,
        request_id: str | None = None,
        category: RequestErrorCategory | str = RequestErrorCategory.UNKNOWN,
    ) -> None:
        super().__init__(message)
        self.request_id = request_id
        try:
            self.category = RequestErrorCategory(category)
        except ValueError:
            self.category = RequestErrorCategory.UNKNOWN


class CircuitOpenError(TinkexError):
    """The circuit breaker for this (base_url, key) is open: the call failed fast without a request.

    ``retry_after`` is the number of seconds until the breaker lets a trial call through: ``math.inf`` when it was
    forced open (``CircuitBreaker.force_open``), which lasts until it is reset.
    """

    # Raised on the fast path of every refused call: the state lives in ``args`` (``(message, retry_after, breaker,
    # half_open)``, set by BaseException in C, no attribute dict to fill), and the message is built only when someone
    # reads it (it needs no scrubbing when it is ours: a breaker's name holds a key fingerprint, never the key).

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float = 0.0,
        breaker: str | None = None,
        half_open: bool = False,
    ) -> None:
        Exception.__init__(self, "" if message is None else redact(message), retry_after, breaker, half_open)

    @classmethod
    def rejected(cls, retry_after: float, breaker: str, half_open: bool = False) -> CircuitOpenError:
        """The error of a refused call, made without running ``__init__`` (the breaker's hot path; same as
        ``CircuitOpenError(retry_after=retry_after, breaker=breaker, half_open=half_open)``)."""
        return cls.__new__(cls, "", retry_after, breaker, half_open)

    @property
    def retry_after(self) -> float:
        return self.args[1]

    @property
    def message(self) -> str:
        given, retry_after, breaker, half_open = self.args
        if given:
            return given
        name = breaker or "circuit breaker"
        if half_open:
            return f"{name}: circuit breaker is half-open and its trial calls are in flight"
        if retry_after == math.inf:
            return f"{name}: circuit breaker is forced open (until it is reset)"
        if breaker is None:
            return "circuit breaker is open"
        return f"{name}: circuit breaker is open; next trial call in {retry_after:.3g} s"

    def __str__(self) -> str:
        return self.message


class SessionExpiredError(TinkexError):
    """The server no longer knows this session (it answered 410 to a heartbeat). Open a new session."""


class SessionClosedError(TinkexError):
    """The session is closed (its ``async with`` block has ended, or is ending): a call was made on it afterwards,
    or a future was still pending when it closed. Futures never outlive their session."""


class SequenceInDoubtError(TinkexError):
    """A training request that took a ``seq_id`` may or may not have reached the server, and its model is stopped.

    The server runs a model's requests in ``seq_id`` order, so nothing later can go until that ``seq_id`` is settled.
    Raised by the call whose delivery is unknown (its retries ended without the server's verdict, or it was
    cancelled while being sent: ``__cause__`` is the last error), and then by every later call on the same
    TrainingClient, which sends nothing. Recover with :meth:`TrainingClient.resend_in_doubt` (re-sends the same
    ``(model_id, seq_id)``, which the server applies at most once, and returns its future), or start over from a
    checkpoint in a new TrainingClient. Do not repeat the operation by hand: it may already be applied.

    Attributes:
        model_id: the model.
        seq_ids: the ``seq_id`` (several for a chunked forward_backward) whose fate is unknown.
        operation: what it was, e.g. ``"optim_step"``.
    """

    model_id: str
    seq_ids: tuple[int, ...]
    operation: str

    def __init__(self, message: str, *, model_id: str, seq_ids: tuple[int, ...], operation: str) -> None:
        super().__init__(message)
        self.model_id = model_id
        self.seq_ids = seq_ids
        self.operation = operation


class TrainingHaltedError(TinkexError):
    """A custom loss failed after its forward pass and before its gradients reached the server, and its model is
    stopped, as the official SDK stops it.

    :meth:`TrainingClient.forward_backward_custom` makes two calls: a forward for the log-probabilities, then the
    forward_backward carrying your loss's gradients. If anything fails in between (your function raises or returns
    something unusable, the second call is refused, the call is cancelled), work submitted behind it on the same
    client, such as an ``optim_step`` queued from another task, would run without the gradients it was written to
    apply. So the client refuses every later training request with this error (``__cause__`` is the original failure,
    when there was one) and sends nothing, until :meth:`TrainingClient.resume` accepts the model as the server holds
    it: the failed call's gradients are not accumulated, anything accumulated before it still is.

    Attributes:
        model_id: the model.
        operation: the call that failed, ``"forward_backward_custom"``.
    """

    model_id: str
    operation: str

    def __init__(self, message: str, *, model_id: str, operation: str) -> None:
        super().__init__(message)
        self.model_id = model_id
        self.operation = operation


class TraceExportError(TinkexError):
    """:meth:`RestClient.export_session_trace` got no download URL: the server's export job failed (``status`` is
    ``"failed"`` and ``error`` the server's reason), or the trace was still being built when the wait's bound ran
    out (``status`` is the last one the server reported, ``error`` is None).

    Attributes:
        session_id: the session whose trace was asked for.
        status: the export job's last status.
        error: the server's reason for a failed job (scrubbed of credentials), else None.
    """

    session_id: str
    status: str
    error: str | None

    def __init__(self, message: str, *, session_id: str, status: str, error: str | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.status = status
        self.error = None if error is None else redact(error)


class PartiallyAppliedError(TinkexError):
    """Some chunks of one chunked forward_backward call were applied by the server and others were not.

    A call whose data span several requests (chunks) cannot be undone piecewise: the gradients of ``applied`` are
    accumulated on the server, those of ``failed`` are not. Every ``seq_id`` of the call is settled, so the model goes
    on; to drop the partial gradients, load a checkpoint (:meth:`TrainingClient.load_state`), or accept them.

    Attributes:
        applied: the ``(start, stop)`` datum index ranges the server applied.
        failed: ``((start, stop), error)`` for each range it did not apply; ``__cause__`` is the first error.
    """

    applied: tuple[tuple[int, int], ...]
    failed: tuple[tuple[tuple[int, int], TinkexError], ...]

    def __init__(
        self,
        message: str,
        *,
        applied: tuple[tuple[int, int], ...],
        failed: tuple[tuple[tuple[int, int], TinkexError], ...],
    ) -> None:
        super().__init__(message)
        self.applied = applied
        self.failed = failed
