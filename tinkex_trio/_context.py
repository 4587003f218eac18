"""The small, explicit object the clients of a session talk down through.

A :class:`~tinkex_trio.TrainingClient` or :class:`~tinkex_trio.SamplingClient` needs a handful of the session's
parts: the transport, the future poller, the configuration the server sent, the telemetry bus, the session's
nursery (to start a task of its own), the per-session counters, and whether the session is still alive. They get
exactly those, through a :class:`SessionContext` the session makes, instead of reaching into ``Session``; so the
clients never import the session module, and imports go one way::

    errors/types/_config → pure cores → _transport/_futures → _context → clients → _session → __init__

The context also owns the session's liveness (``closed``, ``expired``): the session sets it, every client call checks
it (:meth:`SessionContext.check_alive`).
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import trio

from tinkex_trio import types
from tinkex_trio._config import Config
from tinkex_trio._futures import FutureManager
from tinkex_trio._telemetry import TelemetryBus
from tinkex_trio._transport import Transport
from tinkex_trio.errors import SessionClosedError, SessionExpiredError

__all__ = ["SessionContext"]


class SessionContext:
    """What the clients of one session share (see the module docstring).

    Attributes:
        session_id: the server's id of the session.
        config: the session's configuration.
        client_config: the server's flags from ``client/config`` (chunk limits, ...).
        transport: sends every request.
        futures: polls every future; ``futures.track(reply, ...)`` makes an :class:`~tinkex_trio.APIFuture`.
        telemetry: the session's event bus.
        closed: the session's ``async with`` block has ended (set by the session).
        expired: the server answered 410 to a heartbeat (set by the session).
    """

    __slots__ = (
        "_custom_loss_seq_ids",
        "_model_seq_ids",
        "_nursery",
        "_sampling_session_seq_ids",
        "client_config",
        "closed",
        "config",
        "expired",
        "futures",
        "session_id",
        "telemetry",
        "transport",
    )

    def __init__(
        self,
        *,
        session_id: str,
        config: Config,
        client_config: types.ClientConfigResponse,
        transport: Transport,
        futures: FutureManager,
        nursery: trio.Nursery,
    ) -> None:
        self.session_id = session_id
        self.config = config
        self.client_config = client_config
        self.transport = transport
        self.futures = futures
        self.telemetry: TelemetryBus = transport.telemetry
        self._nursery = nursery
        self._model_seq_ids = itertools.count()
        self._sampling_session_seq_ids = itertools.count()
        self._custom_loss_seq_ids = itertools.count()
        self.closed = False
        self.expired = False

    def check_alive(self) -> None:
        """Raise SessionClosedError after the block has ended, SessionExpiredError after a heartbeat 410 (not a
        checkpoint)."""
        if self.closed:
            raise SessionClosedError(f"session {self.session_id!r} is closed: its async with block has ended")
        if self.expired:
            raise SessionExpiredError(
                f"session {self.session_id!r} has expired: the server answered 410 to a heartbeat; open a new session"
            )

    def spawn(self, fn: Callable[[], Awaitable[object]], name: str) -> None:
        """Run ``fn()`` in the session's nursery. If it raises, the session ends (finish reason ``errored``) and the
        ``async with`` block raises that exception, as itself. Raises SessionClosedError once the session is ending."""
        if not self.closed:
            try:
                self._nursery.start_soon(fn, name=name)
                return
            except RuntimeError:  # the nursery is closed: a background failure is ending the session
                pass
        raise SessionClosedError(f"session {self.session_id!r} is closed: cannot start {name}")

    def next_model_seq_id(self) -> int:
        """0, 1, 2, ... per session: the ``model_seq_id`` of create_model and create-via-load."""
        return next(self._model_seq_ids)

    def next_sampling_session_seq_id(self) -> int:
        """0, 1, 2, ... per session, shared by create_sampling_session and the ephemeral save_weights_for_sampler."""
        return next(self._sampling_session_seq_ids)

    def next_custom_loss_seq_id(self) -> int:
        """0, 1, 2, ... per session: the ``custom_loss_seq_id`` of create_custom_loss."""
        return next(self._custom_loss_seq_ids)
