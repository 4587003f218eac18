"""The simulator's HTTP plumbing: the ASGI types, a request read into memory, a response, and body decoding.

Handlers see a `Request` (method, path, query, headers, whole body, path parameters) and return a `Response`; an
`HTTPError` raised anywhere becomes a JSON ``{"detail": ...}`` answer with its status.
"""

from __future__ import annotations

import urllib.parse
import zlib
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from tinkex_trio import types as t

__all__ = [
    "JSON",
    "MAX_BODY_BYTES",
    "PROTOBUF",
    "ASGIApp",
    "HTTPError",
    "Message",
    "Receive",
    "Request",
    "Response",
    "Scope",
    "Send",
    "decode_body",
    "decompress",
    "error_body",
    "json_response",
    "read_request",
    "send_response",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MAX_BODY_BYTES = 512 * 1024 * 1024

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
    """One HTTP request, body included; ``params`` holds the path parameters of its route (and notes of handlers)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict[str, str])
    scheme: str = "http"

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)

    @property
    def origin(self) -> str:
        """``scheme://host[:port]`` as the client addressed this server (for URLs that point back at it)."""
        return f"{self.scheme}://{self.headers.get('host') or 'localhost'}"

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


def error_body(detail: str) -> bytes:
    return t.encode({"detail": detail})


async def read_request(scope: Scope, receive: Receive) -> Request | Response | None:
    """The request of an ``http`` scope; a 413 response for a body over `MAX_BODY_BYTES` (read to its end, so the
    connection stays usable); None when the client disconnected first."""
    raw_headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or [])
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
    body = bytearray()
    too_large = False
    # Bounded by the client's body: each message carries a chunk, the last one has more_body=False.
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return None
        chunk: bytes = message.get("body", b"")
        if len(body) + len(chunk) > MAX_BODY_BYTES:
            too_large = True
        else:
            body.extend(chunk)
        if not message.get("more_body", False):
            break
    if too_large:
        return Response(413, error_body(f"request body larger than {MAX_BODY_BYTES} bytes"))
    query = {k: v[-1] for k, v in urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1")).items() if v}
    path: str = scope.get("path", "/")
    return Request(
        method=str(scope.get("method", "GET")).upper(),
        path=path.rstrip("/") or "/",
        query=query,
        headers=headers,
        body=bytes(body),
        scheme=str(scope.get("scheme") or "http"),
    )


async def send_response(send: Send, response: Response) -> None:
    headers = [
        (b"content-type", response.content_type.encode("latin-1")),
        (b"content-length", str(len(response.body)).encode("latin-1")),
    ]
    headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items())
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": False})


def decode_body(request: Request, type_: type[S]) -> S:
    """The JSON body as a ``type_`` (an empty body is ``{}``): 400 when it is not JSON, 422 when it does not fit.

    A gzip, deflate or zstd body is decompressed first; any other ``Content-Encoding`` is ignored.
    """
    body = request.body
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "deflate", "zstd"):
        body = decompress(body, encoding)
    if not body.strip():
        body = b"{}"
    try:
        return t.decoder_for(type_).decode(body)
    except msgspec.ValidationError as exc:
        raise HTTPError(422, f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from None


def decompress(body: bytes, encoding: str) -> bytes:
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
