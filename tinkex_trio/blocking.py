"""tinkex_trio without ``async``/``await``: for scripts, thread pools, Jupyter notebooks and other programs that are not
Trio programs.

::

    from tinkex_trio import blocking

    with blocking.open_session(base_url="http://127.0.0.1:8000") as session:
        trainer = session.create_lora_training_client("tiny-sim", rank=8)
        trainer.forward_backward(data, "cross_entropy")
        trainer.optim_step(tx.AdamParams(learning_rate=1e-3))
        sampler = trainer.save_weights_and_get_sampling_client("s1")
        result = sampler.sample(prompt, num_samples=1, sampling_params=params)  # from many threads at once

A blocking session runs one ``trio.run`` in a thread of its own, which owns the session's nursery; every method of
the session, :class:`TrainingClient`, :class:`SamplingClient` and :class:`RestClient` is the async method of the same
name, arguments and return type, run there while the calling thread waits (the twins are generated from the async
classes, so the two APIs cannot drift). Any thread may call, many at once; the calling thread may run an asyncio
loop (Jupyter). Errors are raised in the calling thread as the same :mod:`tinkex_trio.errors` types. ``submit_*``
methods return a :class:`Future` whose ``result(timeout=None)`` blocks.

The session lasts until the ``with`` block ends, or until :meth:`Session.close` (``session =
blocking.open_session(...)`` in one notebook cell, ``session.close()`` in another). Leaving the block normally
finishes it as ``success``; an exception as ``errored``; Ctrl-C as ``interrupted``. Calls still running in other
threads then fail with :class:`~tinkex_trio.errors.SessionClosedError`.
"""

from __future__ import annotations

import ssl
import weakref
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tinkex_trio import _blocking_api, _portal, _public
from tinkex_trio._blocking_api import RestClient, SamplingClient, TrainingClient
from tinkex_trio._portal import Future
from tinkex_trio._session import open_session as _open_async

if TYPE_CHECKING:  # annotations only: not names of this module
    from tinkex_trio._config import Config
    from tinkex_trio._session import TransportFactory

__all__ = ["Future", "RestClient", "SamplingClient", "Session", "TrainingClient", "open_session"]


class Session(_blocking_api.Session):
    """A blocking session (see the module docstring): the methods of :class:`tinkex_trio.Session` without ``await``,
    a context manager, and :meth:`close`."""

    __slots__ = ("__weakref__", "_finalizer")

    def __init__(self, portal: _portal.Portal) -> None:
        super().__init__(portal, portal.session)
        # A session nobody closed is finished when it is collected or at interpreter exit, not dropped.
        self._finalizer = weakref.finalize(self, portal.close)

    def close(self, exception: BaseException | None = None) -> None:
        """Finish the session (``success``; with ``exception``: ``errored``, or ``interrupted`` for a
        KeyboardInterrupt) and stop its thread. Idempotent; every later call raises ``SessionClosedError``."""
        self._portal.close(exception)
        self._finalizer.detach()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (or the ``with`` block ended)."""
        return self._portal.closed

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(exc)


def open_session(
    api_key: str | None = None,
    base_url: str | None = None,
    *,
    config: Config | None = None,
    tags: Sequence[str] = (),
    user_metadata: Mapping[str, Any] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    transport_factory: TransportFactory | None = None,
) -> Session:
    """Open a Tinker session in a thread of its own and return its blocking :class:`Session` (the arguments of
    :func:`tinkex_trio.open_session`). Use it as a context manager, or call :meth:`Session.close` when done.

    Raises what the async ``open_session`` raises (``ConfigError``, ``AuthenticationError``, ...) in the calling
    thread, leaving no thread behind."""

    def opener() -> Any:
        return _open_async(
            api_key,
            base_url,
            config=config,
            tags=tags,
            user_metadata=user_metadata,
            ssl_context=ssl_context,
            transport_factory=transport_factory,
        )

    return Session(_portal.Portal(opener, name="tinkex-trio-session"))


_public.fixup_module_metadata(__name__, __all__, globals())
