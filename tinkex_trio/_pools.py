"""The httpx clients of one connection pool kind, and fair admission to them.

Why not one ``httpx.AsyncClient`` with N connections: under HTTP/1.1, httpcore's pool rescans every connection for
every queued request on every event (O(connections²) per request), closes idle connections as soon as there are
more connections than keep-alive slots (it counts all of them, not the idle ones: encode/httpcore#1035), and can
hand one idle connection to several waiting requests, the losers retrying with ``ConnectionNotAvailable``. At 200
concurrent samples that was two thirds of the client's CPU and a 5 s p99.

So a pool of *lanes*: each lane is an ``httpx.AsyncClient`` holding at most one connection (kept alive), and a lane
carries one request at a time. :meth:`ClientPool.acquire` hands out an idle lane (the most recently used, whose
connection is warm), makes a new one while there are fewer than ``max_lanes``, or waits its turn, first come first
served: O(1) per request, and httpcore never queues, races or evicts. Over HTTP/2 (TLS with ALPN) one client
multiplexes every request on its connections, and the pool is that one client (``shared=True``).

A lane is an ``httpx.AsyncClient`` for HTTP/2, a proxy or a transport factory; for HTTP/1.1 straight to the base
URL it is an :class:`~tinkex_trio._h11.H11Lane` (one h11 connection over trio sockets, without httpx's client layer).

Every lane shares the transport's one SSL context (building one loads the CA store: ~15 ms and ~1 MiB each).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import trio

__all__ = ["ClientPool", "Lane"]


class Lane(Protocol):
    """What a pool holds: an ``httpx.AsyncClient``, or an :class:`~tinkex_trio._h11.H11Lane` (the lean HTTP/1.1
    path, where a lane is one connection slot)."""

    async def aclose(self) -> None: ...


L = TypeVar("L", bound=Lane)


class _Waiter(Generic[L]):
    __slots__ = ("client", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.client: L | None = None


class ClientPool(Generic[L]):
    """Lanes of one pool kind (see the module docstring).

    Args:
        make_client: builds one lane (``shared``: the one client).
        max_lanes: how many lanes, i.e. requests in flight, at most (``config.pools.<kind>.max_connections``).
        shared: one client for every request (HTTP/2), no admission.
    """

    def __init__(self, make_client: Callable[[], L], *, max_lanes: int, shared: bool = False) -> None:
        self._make_client = make_client
        self._max_lanes = max(max_lanes, 1)
        self._shared = make_client() if shared else None
        self._all: list[L] = [self._shared] if self._shared is not None else []
        self._idle: list[L] = []
        self._waiters: deque[_Waiter[L]] = deque()

    @property
    def lanes(self) -> int:
        """The clients made so far."""
        return len(self._all)

    async def acquire(self) -> L:
        """A client for one request; give it back with :meth:`release`. Waits (cancellable) while every lane is busy;
        a checkpoint only when it waits."""
        if self._shared is not None:
            return self._shared
        if self._idle:
            return self._idle.pop()
        if len(self._all) < self._max_lanes:
            client = self._make_client()
            self._all.append(client)
            return client
        waiter = _Waiter[L]()
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.client is not None:
                self.release(waiter.client)  # handed over as we were cancelled: to the next in line
            else:
                self._waiters.remove(waiter)
            raise
        assert waiter.client is not None
        return waiter.client

    def release(self, client: L) -> None:
        """Give a client back: to the longest waiter, else to the idle lanes (not a checkpoint)."""
        if client is self._shared:
            return
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.client = client
            waiter.event.set()
        else:
            self._idle.append(client)

    async def aclose(self, timeout_s: float) -> None:
        """Close every client, shielded, each bounded by ``timeout_s`` (a connection that will not close is
        dropped: its socket is closed anyway)."""
        clients, self._all, self._idle = self._all, [], []
        with trio.CancelScope(shield=True):
            for client in clients:
                with trio.move_on_after(timeout_s):
                    await client.aclose()
