"""The process-wide registry of circuit breakers: one :class:`~tinkex_trio._breaker.CircuitBreaker` per
``(base_url, sha256(api_key))``, and the binding of a session's config to its breaker (:func:`breaker_for_config`).

Every session of one process talking to one service with one key shares that breaker: the service's health is the
same whoever asks, so one session's failures protect the others. The raw key is never stored, shown or used as a key:
the registry keys on its fingerprint (:func:`~tinkex_trio._api_key.key_fingerprint`) and names a breaker by its base
URL and the first digits of that fingerprint.

Apart from the state machine (:mod:`tinkex_trio._breaker`), which knows nothing of base URLs, keys, sessions or
threads: this is where breakers are shared. The lookups are locked (several threads may reach the registry, each
with its own trio run); a breaker itself is used from one trio run.
"""

from __future__ import annotations

import threading
from typing import Final

from tinkex_trio._api_key import key_fingerprint
from tinkex_trio._breaker import CircuitBreaker, config_settings
from tinkex_trio._config import CircuitBreakerConfig, Config

__all__ = ["BreakerRegistry", "breaker_for_config", "breakers"]


def _normalize_base_url(base_url: str) -> str:
    return base_url.strip().rstrip("/")


class BreakerRegistry:
    """One :class:`CircuitBreaker` per ``(base_url, sha256(api_key))``, shared by the whole process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}

    def __repr__(self) -> str:
        return f"<BreakerRegistry breakers={len(self)}>"

    def __len__(self) -> int:
        return len(self._breakers)

    def keys(self) -> list[tuple[str, str]]:
        """The ``(base_url, sha256 hex of the key)`` of every breaker."""
        with self._lock:
            return list(self._breakers)

    def for_key(self, base_url: str, api_key: str, config: CircuitBreakerConfig | None = None) -> CircuitBreaker:
        """The breaker of ``(base_url, api_key)``, made on first use.

        With ``config``, the breaker takes its thresholds (the last caller's config wins; the state is kept).
        """
        url = _normalize_base_url(base_url)
        key = (url, key_fingerprint(api_key))
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is None:
                name = f"{url} (key sha256:{key[1][:12]})"
                breaker = (
                    CircuitBreaker.from_config(config, name=name) if config is not None else CircuitBreaker(name=name)
                )
                self._breakers[key] = breaker
            elif config is not None:
                breaker.configure(**config_settings(config))
        breaker.bind_to_current_run()
        return breaker

    def get(self, base_url: str, api_key: str) -> CircuitBreaker | None:
        """The breaker of ``(base_url, api_key)`` if one exists."""
        with self._lock:
            return self._breakers.get((_normalize_base_url(base_url), key_fingerprint(api_key)))

    def clear(self) -> None:
        """Forget every breaker."""
        with self._lock:
            self._breakers.clear()


_REGISTRY: Final = BreakerRegistry()


def breakers() -> BreakerRegistry:
    """The process-wide :class:`BreakerRegistry`: ``breakers().for_key(base_url, api_key).call(fn, *args)``."""
    return _REGISTRY


def breaker_for_config(config: Config) -> CircuitBreaker | None:
    """The registry's breaker for a session's ``(base_url, api_key)`` with its thresholds, for its transport; None
    when ``config.circuit_breaker.enabled`` is false (``TINKEX_CIRCUIT_BREAKER=off``): then the transport neither
    checks nor counts anything, and no supervisor runs (``session.breaker`` is a :meth:`CircuitBreaker.disabled`
    one, for show)."""
    if not config.circuit_breaker.enabled:
        return None
    return breakers().for_key(config.base_url, config.api_key, config.circuit_breaker)
