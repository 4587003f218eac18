"""Writes :mod:`tinkex_trio._blocking_api`, the blocking twins of the async clients, from the async classes themselves.

Run ``python -m tinkex_trio._blocking_gen`` after changing a public method of :class:`~tinkex_trio.Session`,
:class:`~tinkex_trio.TrainingClient`, :class:`~tinkex_trio.SamplingClient` or :class:`~tinkex_trio.RestClient`;
``tests/test_blocking.py`` fails while the file on disk differs from what this module renders, so the two APIs
cannot drift. Every twin has the async method's name, parameters (names, kinds, annotations, defaults), docstring
and return type, with the clients and futures it returns swapped for their blocking twins:

==========================================  =====================================================================
async return type                           blocking twin returns
==========================================  =====================================================================
``TrainingClient`` / ``SamplingClient`` /   the blocking class of the same name, wrapping it
``RestClient``
``APIFuture[X]`` (``| None``)               ``Future[X]`` (``| None``): ``result(timeout=None)`` blocks
``AsyncIterator[X]``                        ``Iterator[X]``, each item fetched in the session's thread
anything else                               the same value
==========================================  =====================================================================

A method with ``@typing.overload`` variants gets the same overloads (their return types must be plain values).
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import types as _pytypes
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

__all__ = ["TARGET", "render"]

TARGET: Final = Path(__file__).with_name("_blocking_api.py")

_TWINS: Final = ("Session", "TrainingClient", "SamplingClient", "RestClient")
_ATTRIBUTES: Final = {
    # Instance attributes (set in __init__, so invisible on the class) read as they are.
    "Session": (("session_id", "str"), ("config", "Config"), ("metrics", "Metrics"), ("telemetry", "TelemetryBus")),
}
_ATTRIBUTE_IMPORTS: Final = {"Config": "tinkex_trio", "Metrics": "tinkex_trio", "TelemetryBus": "tinkex_trio"}
_BUILTINS: Final = frozenset({"str", "int", "float", "bool", "None", "list", "tuple", "dict", "set", "bytes", "object"})
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _classes() -> dict[str, type]:
    import tinkex_trio

    return {name: getattr(tinkex_trio, name) for name in _TWINS}


def _members(cls: type) -> list[tuple[str, Any]]:
    """Public members in definition order (the class's own; none of these classes inherit public ones)."""
    return [(name, value) for name, value in vars(cls).items() if not name.startswith("_")]


def _rewrite(annotation: str) -> str:
    annotation = re.sub(r"\bAPIFuture\b", "Future", annotation)
    return re.sub(r"\bAsyncIterator\b", "Iterator", annotation)


class _Imports:
    """The names the twins' annotations use, each imported from where the async module got it."""

    def __init__(self, aliases: dict[str, str]) -> None:
        self.lines: dict[str, str] = {}
        self.objects: dict[str, Any] = {}
        self.aliases = aliases

    def need(self, annotation: str, namespace: dict[str, Any]) -> str:
        """Import what ``annotation`` names; return it with module aliases made one (``t.X`` → ``types.X``)."""
        for alias, obj in namespace.items():
            if isinstance(obj, _pytypes.ModuleType) and obj.__name__ == "tinkex_trio.types" and alias != "types":
                annotation = re.sub(rf"\b{alias}\.", "types.", annotation)
        self._need(annotation, namespace)
        return annotation

    def _need(self, annotation: str, namespace: dict[str, Any]) -> None:
        for ident in _IDENT.findall(annotation):
            if ident in _BUILTINS or ident in _TWINS or ident == "Future":
                continue
            if ident == "Iterator":
                self.lines[ident] = "from collections.abc import Iterator"
                continue
            if ident in self.aliases:
                self.lines[ident] = self.aliases[ident]
                continue
            first = ident.split(".")[0]
            if first not in namespace:  # an attribute after a dot (types.Datum -> "Datum") or a literal's text
                continue
            self._add(first, namespace[first] if first != "types" else sys.modules["tinkex_trio.types"])

    def _add(self, name: str, obj: Any) -> None:
        if name in self.objects:
            if self.objects[name] is not obj:
                raise RuntimeError(f"two meanings of {name!r} in the async clients' annotations")
            return
        self.objects[name] = obj
        if isinstance(obj, _pytypes.ModuleType):
            self.lines[name] = f"import {obj.__name__} as {name}"
            return
        module = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if qualname == name and (module in ("typing", "collections.abc") or (isinstance(obj, type) and module)):
            self.lines[name] = f"from {module} import {name}"
        else:  # a type alias: from the module that defines it
            raise RuntimeError(f"cannot tell where {name!r} comes from: add it to tinkex_trio._blocking_gen._ALIASES")

    def render(self) -> list[str]:
        plain = sorted(line for line in self.lines.values() if line.startswith("import "))
        froms = sorted(line for line in self.lines.values() if line.startswith("from "))
        return plain + froms


def _docstring(obj: Any, indent: str) -> list[str]:
    doc = inspect.getdoc(obj)
    if not doc:
        return []
    doc = doc.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    lines = doc.splitlines()
    out = [f'{indent}"""{lines[0]}']
    out.extend(f"{indent}{line}" if line else "" for line in lines[1:])
    if len(lines) == 1:
        out[0] += '"""'
    else:
        out.append(f'{indent}"""')
    return out


def _params(fn: Callable[..., Any], imports: _Imports) -> tuple[list[str], list[str]]:
    """The twin's parameter lines and the arguments of its call of ``fn``."""
    signature = inspect.signature(fn)
    namespace: dict[str, Any] = getattr(fn, "__globals__", {})
    params = ["        self,"]
    call: list[str] = []
    star = False
    for param in list(signature.parameters.values())[1:]:
        annotation = _rewrite(str(param.annotation)) if param.annotation is not inspect.Parameter.empty else "Any"
        annotation = imports.need(annotation, namespace)
        if param.kind is inspect.Parameter.KEYWORD_ONLY and not star:
            params.append("        *,")
            star = True
        default = "" if param.default is inspect.Parameter.empty else f" = {param.default!r}"
        params.append(f"        {param.name}: {annotation}{default},")
        call.append(f"{param.name}={param.name}" if param.kind is inspect.Parameter.KEYWORD_ONLY else param.name)
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise RuntimeError(f"{fn.__qualname__}: *args / **kwargs are not supported by the generator")
    return params, call


def _overloads(name: str, fn: Callable[..., Any], imports: _Imports) -> list[str]:
    """The ``@overload`` stubs of ``fn``, rendered for its twin (none if it has none)."""
    out: list[str] = []
    for variant in typing.get_overloads(fn):
        params, _ = _params(variant, imports)
        returned = str(inspect.signature(variant).return_annotation)
        blocking_return = imports.need(_rewrite(returned), getattr(variant, "__globals__", {}))
        if returned in _TWINS or "APIFuture" in returned or "AsyncIterator" in returned:
            raise RuntimeError(f"{fn.__qualname__}: overloads returning clients or futures are not supported")
        imports.lines["overload"] = "from typing import overload"
        out.extend(["    @overload", f"    def {name}(", *params, f"    ) -> {blocking_return}: ...", ""])
    return out


def _method(name: str, fn: Callable[..., Any], imports: _Imports) -> list[str]:
    signature = inspect.signature(fn)
    namespace: dict[str, Any] = getattr(fn, "__globals__", {})
    params, call = _params(fn, imports)
    returned = str(signature.return_annotation)
    blocking_return = imports.need(_rewrite(returned), namespace)
    args = ", ".join(call)
    target = f"self._inner.{name}"
    invoke = f"self._portal.call({target}{', ' + args if args else ''})"
    if returned in _TWINS:
        body = f"return {returned}(self._portal, {invoke})"
    elif re.fullmatch(r"APIFuture\[.*\]", returned):
        body = f"return Future(self._portal, {invoke})"
    elif re.fullmatch(r"APIFuture\[.*\] \| None", returned):
        body = f"future = {invoke}\n        return None if future is None else Future(self._portal, future)"
    elif returned.startswith("AsyncIterator["):
        body = f"return self._portal.iterate({target}({args}))"
    elif inspect.iscoroutinefunction(fn):
        body = f"return {invoke}"
    else:  # a plain method: run it in the session's thread too, where its object lives
        body = f"return self._portal.call_sync({target}{', ' + args if args else ''})"
    out = [*_overloads(name, fn, imports), f"    def {name}(", *params, f"    ) -> {blocking_return}:"]
    out.extend(_docstring(fn, "        "))
    out.append(f"        {body}")
    return out


def _property(name: str, prop: Any, imports: _Imports) -> list[str]:
    fget: Any = prop.fget if isinstance(prop, property) else prop.func
    returned = imports.need(str(inspect.signature(fget).return_annotation), getattr(fget, "__globals__", {}))
    out = ["    @property", f"    def {name}(self) -> {returned}:"]
    out.extend(_docstring(fget, "        "))
    if returned in _TWINS:
        out.append(f"        return {returned}(self._portal, self._inner.{name})")
    else:
        out.append(f"        return self._inner.{name}")
    return out


_ALIASES: Final = {
    # Type aliases (no __qualname__ to find them by), from the modules that define them.
    "LossFn": "from tinkex_trio._submission import LossFn",
    "LossFnConfig": "from tinkex_trio._submission import LossFnConfig",
    "FwdBwdItem": "from tinkex_trio._submission import FwdBwdItem",
    "CustomLossFn": "from tinkex_trio._custom_loss import CustomLossFn",
    "Autograd": "from tinkex_trio._custom_loss import Autograd",
}


def render() -> str:
    """The source of :mod:`tinkex_trio._blocking_api`."""
    imports = _Imports(dict(_ALIASES))
    blocks: list[list[str]] = []
    for twin, cls in _classes().items():
        lines = [f"class {twin}:"]
        lines.extend(_docstring_for_class(twin, cls))
        lines.append("")
        lines.append('    __slots__ = ("_inner", "_portal")')
        lines.append("")
        lines.append(f"    def __init__(self, portal: Portal, inner: _async.{twin}) -> None:")
        lines.append("        self._portal = portal")
        lines.append("        self._inner = inner")
        lines.append("")
        lines.append("    def __repr__(self) -> str:")
        lines.append('        return f"<blocking {self._inner!r}>"')
        for attribute, annotation in _attributes(twin, cls):
            if annotation in _ATTRIBUTE_IMPORTS:
                imports.lines[annotation] = f"from {_ATTRIBUTE_IMPORTS[annotation]} import {annotation}"
            lines.append("")
            lines.append("    @property")
            lines.append(f"    def {attribute}(self) -> {annotation}:")
            lines.append(f"        return self._inner.{attribute}")
        for name, member in _members(cls):
            lines.append("")
            if isinstance(member, property) or _is_cached_property(member):
                lines.extend(_property(name, member, imports))
            elif callable(member):
                lines.extend(_method(name, member, imports))
        blocks.append(lines)
    head = [
        '"""The blocking twins of the async clients, generated by ``python -m tinkex_trio._blocking_gen``: no edits.',
        "",
        "Each method runs its async twin in the session's trio thread (:class:`tinkex_trio._portal.Portal`) and waits",
        "for it in the calling thread. See :mod:`tinkex_trio.blocking`.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        *imports.render(),
        "",
        "import tinkex_trio as _async",
        "from tinkex_trio._portal import Future, Portal",
        "",
        f"__all__ = {sorted(_TWINS)!r}".replace("'", '"'),
    ]
    body: list[str] = []
    for block in blocks:
        body.extend(["", "", *block])
    return _ruff("\n".join(head + body) + "\n")


def _ruff(source: str) -> str:
    """``source`` with its imports sorted and formatted by ruff (a dev dependency), as the repository's own code."""
    for args in (("check", "--fix-only", "--select", "I", "--exit-zero"), ("format",)):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(TARGET), "-"],
            input=source,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ruff {args[0]} failed on the generated blocking API: {done.stderr.strip()}")
        source = done.stdout
    return source


def _attributes(twin: str, cls: type) -> list[tuple[str, str]]:
    """The public instance attributes of ``cls`` to read through: those its class body annotates (``model_id: str``),
    then those only its ``__init__`` sets (``_ATTRIBUTES``)."""
    found: dict[str, str] = {}
    for name, annotation in inspect.get_annotations(cls).items():
        if not name.startswith("_") and not hasattr(cls, name):
            found[name] = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    found.update(_ATTRIBUTES.get(twin, ()))
    return list(found.items())


def _is_cached_property(member: Any) -> bool:
    from functools import cached_property

    return isinstance(member, cached_property)


def _docstring_for_class(twin: str, cls: type) -> list[str]:
    del cls
    return [
        f'    """The blocking twin of :class:`tinkex_trio.{twin}`: the same methods without ``await``, callable from',
        '    any thread; each runs in the session\'s trio thread."""',
    ]


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is out of date: run python -m tinkex_trio._blocking_gen", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
