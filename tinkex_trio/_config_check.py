"""Validation of the config Structs: the constraints their fields declare (``msgspec.Meta``), checked by msgspec and
worded as :class:`~tinkex_trio.errors.ConfigError`, whose ``key`` is the setting's dotted path.

A message names the setting, the constraint and the value: ``retry.max_retries: expected `int` >= 0, got -1``; the
value is never shown for ``api_key``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal, cast, get_args, get_origin

import msgspec

from tinkex_trio.errors import ConfigError

__all__ = ["Checked", "config_error", "shown"]


def shown(value: object) -> str:
    """``repr(value)``, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_TYPE_GOT = re.compile(r", got `[^`]*`$")
_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _bounds(annotation: object) -> str:
    """The bounds ``msgspec.Meta`` puts on ``annotation`` (or on the member of an optional), e.g. ``" >= 0"``."""
    for candidate in (annotation, *get_args(annotation)):
        if get_origin(candidate) is Annotated:
            metas = [meta for meta in get_args(candidate)[1:] if isinstance(meta, msgspec.Meta)]
            bounds = [f" {sign} {getattr(meta, name)}" for meta in metas for name, sign in _BOUNDS]
            return " and".join(bound for bound in bounds if not bound.endswith(" None"))
    return ""


def _detail(message: str, key: str, value: object, annotation: object) -> str:
    """msgspec's ``message`` about ``value`` (the setting ``key``, of type ``annotation``), as a ConfigError says it:
    lower-case, with the value itself (never for ``api_key``) rather than its type's name, and with the field's
    bounds when msgspec only names its type."""
    if key == "api_key":
        return message[:1].lower() + message[1:]
    if get_origin(annotation) is Literal:  # msgspec says "Invalid enum value 'x'", not what is valid
        message = "expected " + " or ".join(repr(choice) for choice in get_args(annotation))
    elif _TYPE_GOT.search(message):
        message = _TYPE_GOT.sub("", message) + _bounds(annotation)
    return f"{message[:1].lower()}{message[1:]}, got {shown(value)}"


@functools.cache
def _field_types(cls: type[msgspec.Struct]) -> dict[str, object]:
    return {field.name: field.type for field in msgspec.structs.fields(cls)}


def _struct_class(annotation: object) -> type[msgspec.Struct] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct) else None


def _checked(key: str, value: object, annotation: object) -> object:
    """``value`` converted to ``annotation`` (an int for a float becomes a float), or ConfigError naming ``key``."""
    if (cls := _struct_class(annotation)) is not None:
        # A section given to a constructor must be built already (and so validated); a mapping is for create().
        if not isinstance(value, cls):
            raise ConfigError(f"{key}: expected {cls.__name__}, got {shown(value)}", key=key)
        return value
    try:
        checked: object = msgspec.convert(value, annotation)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{key}: {_detail(str(exc), key, value, annotation)}", key=key) from None
    if isinstance(checked, float) and not math.isfinite(checked):  # msgspec.Meta bounds must be finite themselves
        raise ConfigError(f"{key}: expected a finite `float`{_bounds(annotation)}, got {shown(value)}", key=key)
    return checked


class Checked(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of the config Structs: each field is checked against its annotation when the Struct is built, so a Struct
    made by its constructor is as valid as one made by ``msgspec.convert``."""

    _key_prefix: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name, annotation in _field_types(type(self)).items():
            value = getattr(self, name)
            checked = _checked(self._key_prefix + name, value, annotation)
            if checked is not value:
                msgspec.structs.force_setattr(self, name, checked)
        self._check()

    def _check(self) -> None:
        """Checks msgspec constraints cannot express (between fields, or about the outside world), once every field
        is valid."""

    def _fail(self, name: str, detail: str) -> None:
        key = self._key_prefix + name
        raise ConfigError(f"{key}: {detail}", key=key)


_AT = re.compile(r"(?P<detail>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.DOTALL)
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]")
_UNKNOWN = re.compile(r"Object contains unknown field `(.*)`")


def config_error(exc: msgspec.ValidationError, data: Mapping[str, Any], root: type[msgspec.Struct]) -> ConfigError:
    """The ConfigError for msgspec's error converting ``data`` to ``root``."""
    match = _AT.fullmatch(str(exc))
    assert match is not None  # the pattern matches any text
    detail, path = match["detail"], match["path"] or ""
    names: list[str] = []
    value: Any = data
    annotation: object = root
    for step in _STEP.finditer(path):
        if step[1] is not None:
            names.append(step[1])
            value = cast("Mapping[str, Any]", value).get(step[1]) if isinstance(value, Mapping) else None
            cls = _struct_class(annotation)
            annotation = _field_types(cls).get(step[1]) if cls is not None else None
        else:
            value = cast("Sequence[Any]", value)[int(step[2])] if isinstance(value, list | tuple) else None
            annotation = None
    prefix = ".".join(names)
    cause = exc.__cause__
    if isinstance(cause, ConfigError):  # from a __post_init__: its key is relative to the Struct at ``path``
        if not prefix or cause.key is None or cause.key.startswith(prefix + "."):
            return cause
        return ConfigError(f"{prefix}.{cause.message}", key=f"{prefix}.{cause.key}")
    if unknown := _UNKNOWN.fullmatch(detail):
        key = ".".join([*names, unknown[1]])
        return ConfigError(f"unknown config key {key!r}", key=key)
    where = path.removeprefix(".") or "config"
    return ConfigError(f"{where}: {_detail(detail, prefix, value, annotation)}", key=prefix or None)
