"""Public names carry the public module that exports them (as trio's ``fixup_module_metadata`` and httpx do).

``tinkex_trio.Session`` is defined in ``tinkex_trio._session``; after :func:`fixup_module_metadata` its
``__module__`` is ``"tinkex_trio"``, so reprs, tracebacks, ``help()`` and pickles name ``tinkex_trio.Session``: the
path users import, which stays put when the private modules are rearranged.

A class's string annotations (``from __future__ import annotations``) are resolved in ``sys.modules[cls.__module__]``
by msgspec (to decode a Struct) and by ``typing.get_type_hints``. The public module does not define the names they
use (``Any``, a private helper type), so they are resolved first, in the module that defines the class.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable, Mapping
from typing import Final

__all__ = ["PUBLIC_MODULES", "fixup_module_metadata"]

PUBLIC_MODULES: Final = frozenset(
    {"tinkex_trio", "tinkex_trio.errors", "tinkex_trio.types", "tinkex_trio.sim", "tinkex_trio.blocking"}
)
"""The modules whose names are public API: a name at home in one of them keeps it (``tinkex_trio.AdamParams`` is
``tinkex_trio.types.AdamParams``)."""


def fixup_module_metadata(module_name: str, names: Iterable[str], namespace: Mapping[str, object]) -> None:
    """Set ``__module__`` to ``module_name`` on each class and function of ``namespace`` listed in ``names`` (the
    module's ``__all__``) whose module is not one of :data:`PUBLIC_MODULES`.

    Only objects exported under their own ``__name__`` at top level are changed, and no name is changed, so pickle
    (which looks objects up as ``__module__`` + ``__qualname__``) finds every changed one in ``module_name``. Other
    values (modules, constants, ``Literal`` aliases, an alias of a class under another name) are left alone. A
    class's own string annotations are replaced by the objects they name first (see the module docstring).
    """
    for name in names:
        obj = namespace[name]
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if obj.__module__ in PUBLIC_MODULES or not obj.__module__.startswith("tinkex_trio."):
            continue
        if obj.__name__ != name or obj.__qualname__ != name:
            continue  # an alias: its own name may not be exported here, and pickle looks it up by that name
        if inspect.isclass(obj):
            _resolve_annotations(obj)
        obj.__module__ = module_name


def _resolve_annotations(cls: type) -> None:
    """Replace the string annotations of ``cls`` by what they name, evaluated where ``cls`` is defined (what msgspec
    and ``typing.get_type_hints`` would evaluate them to there). Left as they are if one does not resolve there
    (a name imported only for type checkers): such annotations did not resolve before the fixup either."""
    own = inspect.get_annotations(cls)  # its own, as written
    if not any(isinstance(value, str) for value in own.values()):
        return
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:
        return
    cls.__annotations__ = {name: hints[name] for name in own}
