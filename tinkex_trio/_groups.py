"""ExceptionGroups at the public boundary: a lone failure leaves as itself (DESIGN §2).

trio's nurseries group what their tasks raise. Where the library owns the nursery (the session's, the concurrent
chunk sends), a group standing for a single failure is unwrapped, Cancelled members are dropped (cancellation is not
a failure), and a group the *user* raised comes out as the very object they raised.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NoReturn

import trio

__all__ = ["is_interruption", "lone_exception", "original", "reraise"]


def is_interruption(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        members: tuple[BaseException, ...] = exc.exceptions  # pyright: ignore[reportUnknownMemberType,reportUnknownVariableType]
        return all(is_interruption(e) for e in members)
    return isinstance(exc, trio.Cancelled | KeyboardInterrupt | GeneratorExit)


def lone_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The single exception the nursery's group stands for, or None when several things failed.

    Cancelled siblings are dropped (cancellation is not a failure); a group of nothing but Cancelled stands for one.
    Only the nursery's own level is unwrapped: an ExceptionGroup the user raised comes out as itself.
    """
    real = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)]
    if len(real) == 1:
        return real[0]
    if not real:
        return group.exceptions[0]
    return None


def leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        members: tuple[BaseException, ...] = exc.exceptions  # pyright: ignore[reportUnknownMemberType,reportUnknownVariableType]
        for member in members:
            yield from leaves(member)
    else:
        yield exc


def original(exc: BaseException, raised: BaseException | None) -> BaseException:
    """``raised`` (what the body raised) when ``exc`` is trio's copy of it, else ``exc``.

    The body's exception cancels the nursery's scope, which rebuilds an ExceptionGroup passing through it (without
    its Cancelled members, and as a plain ExceptionGroup if the subclass has no ``derive``): the body's own group
    object is what the user should get back.
    """
    if raised is None or exc is raised:
        return exc
    message = group_message(exc)
    if (
        message is not None
        and message == group_message(raised)
        and {id(leaf) for leaf in leaves(exc)} <= {id(leaf) for leaf in leaves(raised)}
    ):
        return raised
    return exc


def group_message(exc: BaseException) -> str | None:
    if isinstance(exc, BaseExceptionGroup):
        message: str = exc.message  # pyright: ignore[reportUnknownMemberType]
        return message
    return None


def reraise(exc: BaseException) -> NoReturn:
    """Raise ``exc`` keeping its own ``__context__`` (not the group it was unwrapped from)."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context
