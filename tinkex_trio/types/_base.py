"""The base Struct of the wire model and the ``sent`` default helper.

Encoding rule (protocol preamble): a field whose value is ``None`` is left out of the JSON body, and every
non-null value is sent, defaults included. msgspec's ``omit_defaults=True`` leaves out a field whose value *is*
its declared default; declaring a non-null default through a factory (``sent(...)``) defeats that check, so the
only values ever omitted are ``None`` defaults. Containers get a fresh copy per instance.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

__all__ = ["WireStruct", "sent"]

T = TypeVar("T")


class WireStruct(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of every wire message: keyword-only, ``None`` fields omitted, non-null defaults sent."""

    def to_dict(self) -> dict[str, Any]:
        """This message as plain Python data (dicts, lists, str, numbers), as it goes on the wire: for logging
        and JSON (the official SDK's ``model_dump()``). Numpy-backed fields become lists."""
        out: dict[str, Any] = _TO_BUILTINS[0](self)
        return out


_TO_BUILTINS: list[Callable[[Any], Any]] = [msgspec.to_builtins]
"""What :meth:`WireStruct.to_dict` converts with: ``types._codec.to_builtins`` once that module is imported (it
knows the numpy-backed fields; it imports this module, so it registers itself: :func:`use_to_builtins`)."""


def use_to_builtins(convert: Callable[[Any], Any]) -> None:
    _TO_BUILTINS[0] = convert


def _is_mutable(value: object) -> bool:
    return isinstance(value, list | dict | set | msgspec.Struct)


def sent(default: T) -> T:
    """Declare a non-null default that is always sent on the wire (never omitted by ``omit_defaults``)."""
    if _is_mutable(default):

        def make_copy() -> T:
            return copy.copy(default)

        return msgspec.field(default_factory=make_copy)

    def make() -> T:
        return default

    return msgspec.field(default_factory=make)
