"""HTTP answers and failures → :mod:`tinkex_trio.errors`, translated once, at the boundary (httpx's way).

* :func:`error_from_response`: a non-2xx answer → the :class:`~tinkex_trio.errors.APIStatusError` of its status, with
  its parsed body, request id and ``Retry-After``.
* :func:`connection_error`: an ``httpx.HTTPError`` → :class:`~tinkex_trio.errors.APIConnectionError` /
  :class:`~tinkex_trio.errors.APITimeoutError`, or :class:`~tinkex_trio.errors.TLSError` for the TLS failures
  retrying cannot fix (certificate verification, host name, wrong protocol), always chained to the cause.
* :func:`delivery_known`: whether an error is the server's own verdict on a request.
"""

from __future__ import annotations

import ssl

import httpx
import msgspec

from tinkex_trio._retry import is_retryable_status, parse_retry_after
from tinkex_trio.errors import APIConnectionError, APIStatusError, APITimeoutError, TLSError, status_error_class

__all__ = ["connection_error", "delivery_known", "error_from_response"]


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


def connection_error(exc: httpx.HTTPError, what: str) -> APIConnectionError:
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


def delivery_known(exc: BaseException) -> bool:
    """Whether a request that ended with ``exc`` was *judged by the server*: a status it will answer the same way
    again (400, 401, 403, 404, 422, ...: retrying cannot change it). Everything else (a connection error, a
    timeout, 408/409/429/5xx, an answer that could not be read, cancellation) leaves its fate unknown: the server
    may or may not have applied it."""
    return isinstance(exc, APIStatusError) and not is_retryable_status(exc.status_code)
