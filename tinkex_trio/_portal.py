"""One trio run in a dedicated thread, owning one session, and the door other threads call it through.

:class:`Portal` is what :mod:`tinkex_trio.blocking` stands on. Its thread runs ``trio.run``; inside, the session is
opened with :func:`tinkex_trio.open_session`, and every call from another thread becomes a task in a nursery nested in
the session's block. The calling thread waits on a :class:`concurrent.futures.Future`, so it can be any thread: the
main thread, a pool of scoring threads, a thread with a running asyncio loop (Jupyter). A call's exception is raised
in the calling thread as it is (the same :class:`~tinkex_trio.errors.TinkexError` types); nothing of trio's
(``trio.Cancelled``) ever crosses over: a call still running when the session closes fails with
:class:`~tinkex_trio.errors.SessionClosedError`.

Closing tells the trio thread how the session ends (``success``, ``errored`` with the caller's exception described,
or ``interrupted`` after Ctrl-C in the caller), cancels the calls in flight, lets the session finish (its
``POST .../finish`` is bounded), and joins the thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Final, Generic, TypeVar, cast

import trio

from tinkex_trio._apifuture import APIFuture
from tinkex_trio._groups import lone_exception
from tinkex_trio.errors import SessionClosedError

__all__ = ["CallerError", "Future", "Portal"]

T = TypeVar("T")

JOIN_TIMEOUT_S: Final = 30.0
"""How long :meth:`Portal.close` waits for the thread: the session's finish request is bounded well below it."""


class CallerError(Exception):
    """Carries, into the trio thread, the exception that ended a blocking session's ``with`` block in the caller's
    thread: the session is finished as ``errored`` with this description (the exception itself stays with its
    thread and is raised there)."""


class _Stop:
    """Why the session ends: None for success, else the exception to raise in its block."""

    __slots__ = ("exception",)

    def __init__(self, exception: BaseException | None) -> None:
        self.exception = exception


class Portal:
    """A trio run in a thread of its own, holding the session ``opener`` yields, until :meth:`close`.

    ``opener`` is an async context manager factory (``lambda: tx.open_session(...)``); its errors (a refused key, a
    bad configuration) are raised by the constructor in the calling thread.
    """

    def __init__(self, opener: Callable[[], Any], *, name: str = "tinkex-trio") -> None:
        self._opener = opener
        self._ready: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._token: trio.lowlevel.TrioToken | None = None
        self._calls: trio.Nursery | None = None
        self._stop_event: trio.Event | None = None
        self._stop: _Stop | None = None
        self._closed = False
        self._ended_with: BaseException | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        try:
            session = self._ready.result()
        except BaseException:  # the opener failed: its thread is ending; raise its error here, leaving no thread
            self._closed = True
            self._thread.join()
            raise
        self.session: Any = session
        """The async session, owned by the portal's thread: reach it through :meth:`call`."""

    # -- the trio thread ----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # the thread's end: everything goes to a waiting caller, or nowhere
            if not self._ready.done():
                self._ready.set_exception(exc)
            elif self._stop is None:  # the session ended on its own (expired, a background failure): say why
                self._ended_with = exc
            # Otherwise an interruption we raised ourselves (close after Ctrl-C) or the caller's error carrier.

    def _closed_error(self) -> SessionClosedError:
        ended = self._ended_with
        if ended is None:
            return SessionClosedError("the blocking session is closed")
        if isinstance(ended, BaseExceptionGroup):
            group = cast("BaseExceptionGroup[BaseException]", ended)
            ended = lone_exception(group) or group
        error = SessionClosedError(f"the blocking session ended: {type(ended).__name__}: {ended}")
        error.__cause__ = ended
        return error

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop_event = trio.Event()
        async with self._opener() as session:
            async with trio.open_nursery() as calls:
                self._calls = calls
                self._ready.set_result(session)
                await self._stop_event.wait()
                calls.cancel_scope.cancel()
            stop = self._stop
            if stop is not None and stop.exception is not None:
                raise stop.exception  # finishes the session as errored / interrupted

    async def _run_call(
        self, done: concurrent.futures.Future[Any], fn: Callable[..., Awaitable[Any]], args: Any
    ) -> None:
        if not done.set_running_or_notify_cancel():  # the caller gave up before it started
            return
        try:
            result = await fn(*args[0], **args[1])
        except trio.Cancelled:
            done.set_exception(SessionClosedError("the blocking session closed while this call was running"))
            raise
        except BaseException as exc:  # it belongs to the calling thread, raised there
            done.set_exception(exc)
            if isinstance(exc, KeyboardInterrupt):
                raise
        else:
            done.set_result(result)

    # -- any other thread ---------------------------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        """Start ``await fn(*args, **kwargs)`` in the trio thread; its result (or exception) arrives in the returned
        future. :class:`SessionClosedError` once the session is closed."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("a blocking session was called from its own trio thread: use the async API there")
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def start() -> None:  # in the trio thread, as a run_sync_soon callback: it must not raise
            if self._calls is not None and self._stop is None:
                try:
                    self._calls.start_soon(self._run_call, done, fn, (args, kwargs))
                    return
                except RuntimeError:  # the nursery closed: the session ended on its own
                    pass
            if done.set_running_or_notify_cancel():
                done.set_exception(self._closed_error())

        token = self._token
        with self._lock:
            if self._closed or token is None:
                raise self._closed_error()
            try:
                token.run_sync_soon(start)
            except trio.RunFinishedError:
                error = self._closed_error()
                raise error from error.__cause__
        return done

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """``await fn(*args, **kwargs)`` in the trio thread, waiting for it here."""
        return self.submit(fn, *args, **kwargs).result()

    def call_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` (a plain function) in the trio thread, waiting for it here."""
        if self._closed or self._token is None:
            raise self._closed_error()
        try:
            return trio.from_thread.run_sync(functools.partial(fn, *args, **kwargs), trio_token=self._token)
        except trio.RunFinishedError:
            error = self._closed_error()
            raise error from error.__cause__

    def iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        """The items of an async iterator, each fetched in the trio thread."""
        while True:
            try:
                yield self.call(anext, iterator)
            except StopAsyncIteration:
                return

    def close(self, exception: BaseException | None = None, *, timeout: float = JOIN_TIMEOUT_S) -> None:
        """End the session (``success`` without ``exception``; ``interrupted`` for a KeyboardInterrupt; else
        ``errored``, described by ``exception``) and join the thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            token, event = self._token, self._stop_event
        if isinstance(exception, KeyboardInterrupt):
            carried: BaseException | None = KeyboardInterrupt()
        elif exception is not None:
            carried = CallerError(f"{type(exception).__name__}: {exception}")
        else:
            carried = None
        self._stop = _Stop(carried)
        if token is not None and event is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(event.set)
        self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def thread(self) -> threading.Thread:
        return self._thread


class Future(Generic[T]):
    """A blocking twin of :class:`~tinkex_trio.APIFuture`: what a blocking ``submit_*`` returns once the server
    accepted the request. ``result(timeout=None)`` waits in the calling thread (``TimeoutError`` after ``timeout``
    seconds; the request goes on)."""

    __slots__ = ("_future", "_portal")

    def __init__(self, portal: Portal, future: APIFuture[T]) -> None:
        self._portal = portal
        self._future = future

    def result(self, timeout: float | None = None) -> T:
        return self._portal.submit(self._future.result).result(timeout)

    def done(self) -> bool:
        return self._future.done()

    @property
    def request_id(self) -> str:
        return self._future.request_id

    def __repr__(self) -> str:
        return f"<blocking {self._future!r}>"
