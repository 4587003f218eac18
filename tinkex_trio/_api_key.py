"""The API key: what a well-formed Tinker credential is (:func:`validate_api_key`), and how to show one without
revealing it (:func:`redact_key`, :func:`key_fingerprint`).

An accepted key is registered with :mod:`tinkex_trio._secrets`, so errors and the HTTP stack's logs redact it.
"""

from __future__ import annotations

import hashlib

from tinkex_trio import _secrets
from tinkex_trio.errors import ConfigError

__all__ = ["key_fingerprint", "redact_key", "validate_api_key"]

_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _is_jwt(key: str) -> bool:
    parts = key.split(".")
    if len(parts) != 3 or not parts[0].startswith("eyJ") or not parts[1]:
        return False
    # The signature may be empty (an unsigned token); the header and payload may not.
    return all(all(c in _B64URL for c in part) for part in parts)


def validate_api_key(key: object) -> str:
    """Return ``key`` if it is a well-formed Tinker credential, else raise :class:`ConfigError`.

    A credential is a static key starting with ``tml-`` or a JWT (``eyJ...``, three dot-separated base64url
    segments), in printable ASCII (no whitespace, control or non-ASCII characters). The error message never
    contains the key. An accepted key is registered with :func:`tinkex_trio._secrets.register_secret`, so that
    errors and the HTTP stack's logs redact it (also without its ``tml-`` prefix).
    """
    if key is None or key == "":
        raise ConfigError("api_key: no API key given: pass api_key= or set TINKER_API_KEY", key="api_key")
    if not isinstance(key, str):
        raise ConfigError(f"api_key: expected str, got {type(key).__name__}", key="api_key")
    if any(c.isspace() or not c.isprintable() for c in key):
        raise ConfigError("api_key: the key contains whitespace or control characters", key="api_key")
    if not key.isascii():
        # Checked here, not left to httpx: a header value must be ASCII, and the UnicodeEncodeError httpx would raise
        # quotes the whole value in its message.
        raise ConfigError("api_key: the key contains non-ASCII characters (expected printable ASCII)", key="api_key")
    if key.startswith("tml-"):
        if len(key) == len("tml-"):
            raise ConfigError("api_key: the key is empty after the 'tml-' prefix", key="api_key")
        _secrets.register_secret(key)
        return key
    if _is_jwt(key):
        _secrets.register_secret(key)
        return key
    raise ConfigError(
        "api_key: the key must start with the 'tml-' prefix or be a JWT ('eyJ...', three segments)", key="api_key"
    )


def redact_key(key: str) -> str:
    """A printable stand-in for a key: its public prefix (``tml-`` or ``eyJ``) and ``…redacted``."""
    if key.startswith("tml-"):
        return "tml-…redacted"
    if key.startswith("eyJ"):
        return "eyJ…redacted"
    return "…redacted"


def key_fingerprint(key: str) -> str:
    """A stable, non-reversible identifier of a key (first 16 hex digits of its sha256), for registry keys and logs."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
