"""The connection pools of a transport: one per :class:`PoolKind` (protocol §1.5), made on first use, and how each
is served.

* :class:`LeanPool`: HTTP/1.1 straight to the base URL over :class:`~tinkex_trio._h11.H11Lane` lanes (one h11
  connection each, on trio sockets, without httpx's client layer), with an ``httpx.AsyncClient`` made only to follow
  a redirect.
* :class:`HttpxPool`: ``httpx.AsyncClient`` lanes, wherever httpx is needed: HTTP/2 over TLS (one shared client
  multiplexes the pool), a proxy variable in the environment (httpx honours it), or a :data:`TransportFactory`
  (in-process ASGI apps in tests).

Every lane and client of one :class:`PoolSet` shares one SSL context (the caller's, or the system store plus
``config.ca_file``), and every httpx client carries a request hook that drops ``X-API-Key`` on a redirect away from
the base URL's origin (httpx drops ``Authorization`` there, but knows nothing of ``X-API-Key``).

Apart from :mod:`tinkex_trio._transport`, which sends requests on these pools (headers, retries, the breaker,
bounded attempts) and does not care how a pool was built. Fair admission to one pool's lanes is
:class:`~tinkex_trio._pools.ClientPool`.
"""

from __future__ import annotations

import enum
import os
import ssl
from collections.abc import Callable
from typing import Any

import httpx
import trio

from tinkex_trio._config import Config, PoolLimits
from tinkex_trio._h11 import H11Lane
from tinkex_trio._pools import ClientPool
from tinkex_trio.errors import APIConnectionError

__all__ = ["HttpxPool", "LeanPool", "PoolKind", "PoolSet", "TransportFactory"]


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


_DEFAULT_PORTS = {"http": 80, "https": 443}
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
"""httpx's proxy settings (``trust_env``): while any is set, every pool goes through httpx, which honours them."""
_CLOSE_TIMEOUT_S = 5.0
"""How long :meth:`PoolSet.aclose` waits for each pool to close (it runs shielded from cancellation)."""


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


class HttpxPool:
    """A pool kind served by ``httpx.AsyncClient`` lanes: HTTP/2 (one shared client), a proxy from the environment, or
    a ``transport_factory``."""

    __slots__ = ("lanes",)

    def __init__(self, lanes: ClientPool[httpx.AsyncClient]) -> None:
        self.lanes = lanes

    async def aclose(self, timeout_s: float) -> None:
        await self.lanes.aclose(timeout_s)


class LeanPool:
    """A pool kind served by :class:`~tinkex_trio._h11.H11Lane` lanes (plain or TLS HTTP/1.1, no proxy), with an
    ``httpx.AsyncClient`` made only to follow a redirect."""

    __slots__ = ("_fallback", "_make_fallback", "lanes")

    def __init__(self, lanes: ClientPool[H11Lane], make_fallback: Callable[[], httpx.AsyncClient]) -> None:
        self.lanes = lanes
        self._make_fallback = make_fallback
        self._fallback: httpx.AsyncClient | None = None

    def fallback(self) -> httpx.AsyncClient:
        if self._fallback is None:
            self._fallback = self._make_fallback()
        return self._fallback

    async def aclose(self, timeout_s: float) -> None:
        await self.lanes.aclose(timeout_s)
        fallback, self._fallback = self._fallback, None
        if fallback is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(timeout_s):
                await fallback.aclose()


class PoolSet:
    """The pools of one transport (see the module docstring), each made on first use by :meth:`for_kind`. Close them
    with :meth:`aclose` (the transport does).

    Args:
        config: the session's configuration (base URL, pool limits, timeouts, TLS and HTTP/2 settings).
        ssl_context: trust settings for HTTPS; default: the system store, plus ``config.ca_file`` if set.
        transport_factory: builds each pool's httpx transport (in-process ASGI apps in tests).
    """

    def __init__(
        self,
        config: Config,
        *,
        ssl_context: ssl.SSLContext | None = None,
        transport_factory: TransportFactory | None = None,
    ) -> None:
        self.config = config
        self._ssl_context = ssl_context
        self._transport_factory = transport_factory
        self._pools: dict[PoolKind, HttpxPool | LeanPool] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False
        self._base_url = httpx.URL(config.base_url)

    def kinds(self) -> list[PoolKind]:
        """The kinds whose pool has been made (and not closed), sorted."""
        return sorted(self._pools)

    def _verify(self) -> ssl.SSLContext:
        """The one SSL context of every lane and client of these pools (made on first use)."""
        if self._ssl is None:
            if self._ssl_context is not None:
                self._ssl = self._ssl_context
            elif self.config.ca_file:
                self._ssl = ssl.create_default_context(cafile=self.config.ca_file)
            else:
                self._ssl = httpx.create_ssl_context(verify=self.config.verify)
        return self._ssl

    def _lean(self, shared: bool) -> bool:
        """Whether a pool goes through :class:`~tinkex_trio._h11.H11Lane` lanes: HTTP/1.1 over TCP or TLS to the base
        URL, with no transport factory and no proxy variable in the environment (httpx would use it)."""
        if shared or self._transport_factory is not None or self._base_url.scheme not in _DEFAULT_PORTS:
            return False
        return not any(os.environ.get(name) for name in _PROXY_VARIABLES)

    def for_kind(self, pool: PoolKind) -> HttpxPool | LeanPool:
        """The pool of ``pool``, made on first use (APIConnectionError once closed)."""
        client_pool = self._pools.get(pool)
        if client_pool is not None:
            return client_pool
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
        # HTTP/2 is offered only over TLS (ALPN): there one client multiplexes every request of the pool.
        shared = self.config.http2 and self._base_url.scheme == "https"
        if self._lean(shared):
            url = self._base_url
            port = url.port or _DEFAULT_PORTS[url.scheme]
            tls = self._verify() if url.scheme == "https" else None
            expiry = limits.keepalive_expiry_s
            verify = self._verify()

            def make_lane() -> H11Lane:
                return H11Lane(url.host, port, ssl_context=tls, keepalive_expiry_s=expiry)

            def make_fallback() -> httpx.AsyncClient:
                return httpx.AsyncClient(verify=verify, **common)

            lean = LeanPool(ClientPool(make_lane, max_lanes=limits.max_connections), make_fallback)
            self._pools[pool] = lean
            return lean
        if self._transport_factory is not None:
            factory = self._transport_factory

            def make_client() -> httpx.AsyncClient:
                return httpx.AsyncClient(transport=factory(pool), **common)
        else:
            per_client = limits.max_connections if shared else 1
            keepalive = limits.max_keepalive if shared else 1
            verify = self._verify()

            def make_client() -> httpx.AsyncClient:
                return httpx.AsyncClient(
                    http2=shared,
                    verify=verify,
                    limits=httpx.Limits(
                        max_connections=per_client,
                        max_keepalive_connections=keepalive,
                        keepalive_expiry=limits.keepalive_expiry_s,
                    ),
                    **common,
                )

        client_pool = HttpxPool(ClientPool(make_client, max_lanes=limits.max_connections, shared=shared))
        self._pools[pool] = client_pool
        return client_pool

    async def _drop_key_off_origin(self, request: httpx.Request) -> None:
        """A request hook (every redirect hop goes through it): the key never leaves the base URL's origin."""
        if not _may_carry_key(self._base_url, request.url):
            request.headers.pop("X-API-Key", None)

    async def aclose(self) -> None:
        """Close every pool's connections. Idempotent."""
        self._closed = True
        pools, self._pools = list(self._pools.values()), {}
        for client_pool in pools:
            await client_pool.aclose(_CLOSE_TIMEOUT_S)
