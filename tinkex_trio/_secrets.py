"""Secrets never leak: a process-wide registry of API keys, the redaction built on it, and a logging filter.

* :func:`register_secret` records a key the client is about to use (:func:`~tinkex_trio.validate_api_key` calls it
  for every key it accepts, and every :class:`~tinkex_trio._transport.Transport` for its config's key) and installs
  the log filters. The registry holds the strings needed to find the key in text, and nothing else: the key itself,
  the part after ``tml-`` (a server may echo the key without its prefix), their ``repr``/JSON-escaped spellings (how
  a key looks inside a logged ``bytes`` or a raw JSON body) and the ``repr`` of the key's HPACK Huffman code (how it
  looks inside a logged HTTP/2 header block).
* :func:`scrub` / :func:`scrub_bytes` replace every registered secret (longest first, so a whole key is never
  half-replaced by its suffix) and anything shaped like a Tinker credential (``tml-...`` or a JWT) with
  ``<redacted>``. :func:`tinkex_trio.errors.redact` is :func:`scrub`: every error message, body and repr goes
  through it.
* :func:`install_log_filters` attaches a :class:`ScrubFilter` to the loggers of the HTTP stack (``httpx``,
  ``httpcore.*``, ``h2``, ``hpack.*``) and to tinkex_trio's own: a record that mentions a secret is rewritten before
  any handler sees it. (A filter attached to a logger runs only for records logged *on that logger*, not on its
  children, hence the explicit list of the loggers those packages actually use.)

Why a filter, whatever the HPACK representation: at DEBUG ``hpack`` logs every header it adds to its table in clear,
every header block it encodes or decodes (Huffman-coded values, a public code anyone can decode, never-indexed
fields included) and every header it decodes in clear (the simulator's server side, in the same process in tests).

HPACK never-indexed for ``X-API-Key``: there is no public way to get it with httpx/httpcore (checked against httpcore
1.0.9, h2 4.4, hpack 4.2). hpack honours a never-indexed field only when the header *tuple* is an
``hpack.NeverIndexedHeaderTuple`` (or a 3-tuple with ``sensitive=True``), but httpcore's HTTP/2 connection rebuilds
every request header as a plain ``(name.lower(), value)`` 2-tuple before calling ``h2``'s ``send_headers``, so any
marking made above httpcore is dropped; h2's own list of sensitive names is fixed; and the HPACK encoder lives on
httpcore's private ``_h2_state``. Reaching it would mean patching httpcore internals, which this project does not do.
The consequence is limited: the key goes into the *connection's* dynamic table (per connection, never shared across
connections or with other origins), so an on-path compression-oracle attack would need TLS-level visibility of frame
sizes and control of other headers on the same connection.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterable

import hpack

__all__ = [
    "LOGGER_NAMES",
    "ScrubFilter",
    "install_log_filters",
    "register_secret",
    "scrub",
    "scrub_bytes",
]

REDACTED = "<redacted>"

# A Tinker key (``tml-`` then anything printable: Config accepts any such key, so the match runs to the next space,
# quote, bracket or separator) or a JWT (three base64url segments starting with ``eyJ``).
_PATTERN = r"tml-[^\s\"'`<>\\,;&)\]}]+|eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"
_PATTERN_RE = re.compile(_PATTERN)
_PATTERN_BYTES_RE = re.compile(_PATTERN.encode("ascii"))

_MIN_BARE_SUFFIX = 8
"""The part of a key after ``tml-`` is registered on its own only from this length: a shorter one would redact
ordinary words everywhere (and is no real key: the whole ``tml-...`` form is still redacted by the pattern)."""

_lock = threading.Lock()
_local = threading.local()
_secrets: set[str] = set()
# Rebuilt on each registration (rare: once per distinct key), read without the lock (a reference swap is atomic).
_secret_re: re.Pattern[str] | None = None
_secret_bytes_re: re.Pattern[bytes] | None = None


def _spellings(text: str) -> Iterable[str]:
    """``text`` and how it reads inside a str repr, a bytes repr and a JSON string (escapes differ)."""
    yield text
    yield repr(text)[1:-1]
    yield repr(text.encode("utf-8"))[2:-1]
    yield json.dumps(text)[1:-1]


def _hpack_huffman(value: bytes) -> bytes:
    """``value`` as it appears inside an HTTP/2 header block: its HPACK Huffman code (RFC 7541 §5.2), which anyone
    can decode, and which hpack logs at DEBUG within every header block it encodes or decodes.

    Computed with hpack's public ``Encoder`` (the encoder h2 uses, with Huffman coding on, as h2 calls it): a fresh
    encoder writes the never-indexed field ``k: value`` as ``0x10``, the name literal (``0x81`` and one byte of
    code), then the value literal: a length with a 7-bit prefix (RFC 7541 §5.1) and the code. ``b""`` if the block is
    not shaped as expected (a future hpack): the plain spellings are still registered."""
    # hpack logs the block it encodes at DEBUG, i.e. this very code: the filter (installed by register_secret, the
    # caller) drops the records of this call.
    _local.computing = True
    try:
        block = hpack.Encoder().encode([(b"k", value, True)], huffman=True)
    finally:
        _local.computing = False
    if len(block) < 4 or block[:2] != b"\x10\x81":
        return b""
    pos, length = 4, block[3] & 0x7F
    if length == 0x7F:
        shift = 0
        while pos < len(block):
            byte = block[pos]
            pos += 1
            length += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
    code = block[pos:]
    return code if len(code) == length else b""


def _bytes_spellings(data: bytes) -> Iterable[str]:
    """How ``data`` reads inside the repr of a longer bytes object: quoted with ``'`` (then ``'`` is escaped) or,
    when that object holds ``'`` and no ``"``, with ``"``."""
    single = repr(data + b'"')[2:-2]  # the trailing '"' forces '-quoting
    yield single
    yield single.replace("\\'", "'")


def register_secret(key: str) -> None:
    """Remember ``key`` so that :func:`scrub` (hence every error) and every log record of the HTTP stack (the filters
    are installed first: :func:`install_log_filters`) replace it with ``<redacted>``: the whole key, in clear or as
    the HPACK Huffman code of an HTTP/2 header value, and, for a ``tml-`` key, the part after the prefix (when at
    least 8 characters long). Idempotent and cheap for a known key."""
    install_log_filters()
    if not key or key in _secrets:  # the key itself is always one of its registered spellings
        return
    forms: set[str] = set(_spellings(key))
    if key.startswith("tml-") and len(key) - len("tml-") >= _MIN_BARE_SUFFIX:
        forms.update(_spellings(key[len("tml-") :]))
    if key.isascii() and (code := _hpack_huffman(key.encode("ascii"))):
        # The X-API-Key header's value in HTTP/2 header blocks, as hpack logs them.
        forms.update(_bytes_spellings(code))
    global _secret_re, _secret_bytes_re
    with _lock:
        if forms <= _secrets:
            return
        _secrets.update(forms)
        # Longest first: the regex engine takes the first alternative that matches, so the whole key wins over
        # its suffix and no fragment of a key is left behind.
        ordered = sorted(_secrets, key=lambda s: (-len(s), s))
        alternation = "|".join(re.escape(s) for s in ordered)
        _secret_re = re.compile(alternation)
        _secret_bytes_re = re.compile(alternation.encode("utf-8"))


def scrub(text: str) -> str:
    """``text`` with every registered secret, and anything that looks like a Tinker credential, replaced by
    ``<redacted>``."""
    secret_re = _secret_re
    if secret_re is not None:
        text = secret_re.sub(REDACTED, text)
    return _PATTERN_RE.sub(REDACTED, text)


def scrub_bytes(data: bytes) -> bytes:
    """:func:`scrub` for bytes (a raw response body)."""
    secret_re = _secret_bytes_re
    if secret_re is not None:
        data = secret_re.sub(REDACTED.encode("ascii"), data)
    return _PATTERN_BYTES_RE.sub(REDACTED.encode("ascii"), data)


class ScrubFilter(logging.Filter):
    """A logging filter that rewrites a record when it mentions a secret (it drops none but those of the client's own
    computation of a key's HPACK code, see :func:`register_secret`): the message is
    formatted with its arguments, scrubbed, and stored as the record's ``msg`` with no ``args``; a pending
    exception traceback and stack info are formatted and scrubbed too (formatters use ``exc_text`` when set)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_local, "computing", False):
            return False  # hpack logging the key's Huffman code while _hpack_huffman computes it
        try:
            message = record.getMessage()
        except Exception:
            # Bad arguments: logging would print them in its error report, so print them scrubbed instead.
            message = f"{record.msg!s} (arguments: {record.args!r})"
        clean = scrub(message)
        # The arguments are checked too: a format like ``%.4s`` may show less of an argument than a handler that
        # reads ``record.args`` (a structured formatter) would.
        if clean != message or (record.args and scrub(args := repr(record.args)) != args):
            record.msg = clean
            record.args = None
        if record.exc_info and not record.exc_text:
            # Formatted here only when it must be scrubbed (a formatter uses ``exc_text`` when set, else formats).
            text = logging.Formatter().formatException(record.exc_info)
            if scrub(text) != text:
                record.exc_text = text
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


LOGGER_NAMES: tuple[str, ...] = (
    # hpack logs every header it encodes or decodes, values included, at DEBUG.
    "hpack",
    "hpack.hpack",
    "hpack.table",
    "hpack.huffman",
    # h2 logs through a logger passed in its H2Configuration (httpcore passes none); "h2" covers users who do.
    "h2",
    "h2.connection",
    "h2.stream",
    "httpcore",
    "httpcore.connection",
    "httpcore.connection_pool",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
    "httpx",
    "tinkex_trio",
    "tinkex_trio.breaker",
    "tinkex_trio.futures",
    "tinkex_trio.metrics",
    "tinkex_trio.resilience",
    "tinkex_trio.cli",
    "tinkex_trio.sampling",
    "tinkex_trio.session",
    "tinkex_trio.telemetry",
    "tinkex_trio.training",
    "tinkex_trio.transport",
    "tinkex_trio.sim",
    "tinkex_trio.sim.server",
)
"""The loggers :func:`install_log_filters` protects: every logger the HTTP stack and tinkex_trio log on."""

_FILTER = ScrubFilter()


def install_log_filters() -> None:
    """Attach the shared :class:`ScrubFilter` to every logger of :data:`LOGGER_NAMES` (idempotent: a logger never
    gets it twice). Uses only ``logging``'s public API; loggers are created if they do not exist yet."""
    for name in LOGGER_NAMES:
        logging.getLogger(name).addFilter(_FILTER)  # addFilter ignores a filter already there
