"""The future a caller holds (:class:`APIFuture`) and the outcome its poller sets (:class:`Outcome`).

:class:`~tinkex_trio._futures.FutureManager` makes both: it keeps the outcome and completes it from its poll task;
the caller only ever waits on the future. See :mod:`tinkex_trio._futures` for what a poll does.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, Final, Generic, TypeVar

import trio

from tinkex_trio.errors import APITimeoutError

__all__ = ["APIFuture", "Outcome"]

T = TypeVar("T")


class _Pending:
    """Sentinel for "no result yet"."""

    __slots__ = ()


_PENDING: Final = _Pending()


class Outcome(Generic[T]):
    """The outcome of an :class:`APIFuture`: set once, by the FutureManager that holds it."""

    __slots__ = ("error", "event", "value")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.value: T | _Pending = _PENDING
        self.error: BaseException | None = None

    def set_result(self, value: T) -> bool:
        """Resolve with ``value``; ignored (returns False) if the outcome is already known."""
        if self.event.is_set():
            return False
        self.value = value
        self.event.set()
        return True

    def set_exception(self, error: BaseException) -> bool:
        """Fail with ``error``; ignored (returns False) if the outcome is already known."""
        if self.event.is_set():
            return False
        self.error = error
        self.event.set()
        return True


class APIFuture(Generic[T]):
    """The eventual result of a request the server runs in the background.

    The session polls for it as soon as it exists; :meth:`result` only waits. A future never outlives its session:
    one still pending when the session closes fails with :class:`~tinkex_trio.errors.SessionClosedError`.
    ``await fut`` is ``await fut.result()``.

    Attributes:
        request_id: the server's id for the request.
        request_type: what kind of request it is (``"ForwardBackward"``, ``"Sample"``, ...).
        model_id: the model the request belongs to, when the server said so.
        sample_sequence_ids: for a sample: one id per sequence, in order.
    """

    __slots__ = ("_outcome", "model_id", "request_id", "request_type", "sample_sequence_ids")

    def __init__(
        self,
        request_id: str,
        request_type: str,
        *,
        model_id: str | None = None,
        sample_sequence_ids: Sequence[str] | None = None,
        outcome: Outcome[T] | None = None,
    ) -> None:
        self.request_id = request_id
        self.request_type = request_type
        self.model_id = model_id
        self.sample_sequence_ids: list[str] | None = list(sample_sequence_ids) if sample_sequence_ids else None
        # Completed by whoever holds the outcome (the FutureManager that made this future), never through the future.
        self._outcome: Outcome[T] = outcome if outcome is not None else Outcome()

    def __repr__(self) -> str:
        if not self._outcome.event.is_set():
            state = "pending"
        elif self._outcome.error is not None:
            state = f"failed: {type(self._outcome.error).__name__}"
        else:
            state = "done"
        return f"<APIFuture {self.request_type} request_id={self.request_id!r} {state}>"

    def done(self) -> bool:
        """Whether the outcome (a result or an error) is known."""
        return self._outcome.event.is_set()

    def exception(self) -> BaseException | None:
        """The error the future failed with; ``None`` if it succeeded. Raises RuntimeError while it is pending."""
        if not self._outcome.event.is_set():
            raise RuntimeError(f"future {self.request_id!r} is still pending")
        return self._outcome.error

    async def result(self, timeout: float | None = None) -> T:
        """Wait for the result and return it, or raise the error the future failed with.

        ``timeout`` (seconds) limits only this wait: past it, :class:`~tinkex_trio.errors.APITimeoutError` is raised
        and the poll goes on (call ``result()`` again later). Cancelling the waiting task cancels only the wait.
        """
        if not self._outcome.event.is_set():
            if timeout is None:
                await self._outcome.event.wait()
            else:
                with trio.move_on_after(timeout):
                    await self._outcome.event.wait()
                if not self._outcome.event.is_set():
                    raise APITimeoutError(
                        f"timed out after {timeout:g} s waiting for the result of {self.request_type} request "
                        f"{self.request_id!r} (it is still being polled)",
                        request_id=self.request_id,
                    )
        else:
            await trio.lowlevel.checkpoint()
        if self._outcome.error is not None:
            # A waiter whose own scope is cancelled gets Cancelled, not the error: when a cancelled session fails
            # its futures with SessionClosedError, that error must not race the cancellation out of the block.
            await trio.lowlevel.checkpoint_if_cancelled()
            raise self._outcome.error
        value = self._outcome.value
        assert not isinstance(value, _Pending)
        return value

    def __await__(self) -> Generator[Any, None, T]:
        return self.result().__await__()
