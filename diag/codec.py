"""Facts as JSON values and back, by their type hints: the lossless round trip of a report's ``facts``.

A check's facts are frozen dataclasses whose fields hold str, int, float, bool, None, enums, datetimes, bytes,
paths, tuples and frozensets of these, and further such dataclasses. :func:`encode` gives the JSON value of
one (what ``diag check --json`` writes); :func:`decode` builds it again from that value and its class, so that
``encode(decode(cls, encode(facts)))`` equals ``encode(facts)``: a saved result reads back into the same typed
facts and writes out byte for byte as it was read.

In JSON a datetime is UTC to the second (``2026-11-26T20:00:00Z``), bytes are base64, an enum is its value, a
tuple or frozenset is an array and a dataclass is an object with one member per field.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["Encoder", "decode", "encode", "timestamp"]

T = TypeVar("T")


def timestamp(moment: datetime) -> str:
    """A moment as JSON writes it: UTC, whole seconds, ``Z``."""
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def encode(value: Any) -> Any:
    """The JSON value of facts (or of any part of them, or of a JSON value itself).

    Raises TypeError for a value of a kind facts may not hold: it could not be read back.
    """
    return _encode(value, None)


class Encoder:
    """:func:`encode` for one run over many domains, remembering the JSON value of the last ``size`` facts
    objects it encoded (by identity): every domain whose MX is at one address holds the same SMTP session's
    facts, and every domain shown one certificate chain the same parsed certificates, which so are encoded once.
    The values it returns may be shared: read them, never change them."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._memo: dict[int, tuple[Any, dict[str, Any]]] = {}
        self._made: set[int] = set()

    def encode(self, value: Any) -> Any:
        """Like :func:`encode`."""
        return _encode(value, self)

    def remembers(self, encoded: Any) -> bool:
        """Whether ``encoded`` is a value this encoder remembers (and so may hand out again)."""
        return id(encoded) in self._made

    def _recall(self, value: Any) -> dict[str, Any] | None:
        kept = self._memo.pop(id(value), None)
        if kept is None or kept[0] is not value:
            return None
        self._memo[id(value)] = kept  # the most recently used last
        return kept[1]

    def _keep(self, value: Any, encoded: dict[str, Any]) -> None:
        if len(self._memo) >= self._size:
            _, dropped = self._memo.pop(next(iter(self._memo)))
            self._made.discard(id(dropped))
        self._memo[id(value)] = (value, encoded)  # the value is held: its id stays its own while remembered
        self._made.add(id(encoded))


def _encode(value: Any, encoder: Encoder | None) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if encoder is None:
            return {f.name: _encode(getattr(value, f.name), None) for f in dataclasses.fields(value)}
        remembered = encoder._recall(value)
        if remembered is None:
            remembered = {f.name: _encode(getattr(value, f.name), encoder) for f in dataclasses.fields(value)}
            encoder._keep(value, remembered)
        return remembered
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime):
        return timestamp(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple | frozenset):
        return [_encode(item, encoder) for item in value]
    if isinstance(value, Mapping):  # a JSON object kept as read (the facts of a check this diag does not know)
        return {str(key): _encode(item, encoder) for key, item in value.items()}
    raise TypeError(f"facts cannot hold a {type(value).__name__}: {value!r}")


def decode(kind: type[T], data: Any, *, at: str = "") -> T:
    """The facts of class ``kind`` from their JSON value.

    Raises ValueError naming where (``probed/0/session/reached``, after ``at``, the place of ``data`` in its
    document) and what is wrong when ``data`` is not such a value; TypeError when ``kind`` holds a type facts
    may not hold (a programming error).
    """
    result: T = _decode(kind, data, tuple(at.split("/")) if at else ())
    return result


def _decode(hint: Any, data: Any, path: tuple[str, ...]) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return data
    if origin is typing.Union or origin is types.UnionType:
        return _union(hint, data, path)
    if origin is tuple:
        return _tuple(hint, data, path)
    if origin is frozenset:
        (item,) = typing.get_args(hint)
        return frozenset(_decode(item, value, (*path, str(index))) for index, value in enumerate(_array(data, path)))
    if hint is type(None):
        if data is not None:
            raise _error(path, f"expected null, got {_kind(data)}")
        return None
    if not isinstance(hint, type):
        raise TypeError(f"facts cannot hold {hint!r}")
    if dataclasses.is_dataclass(hint):
        return _dataclass(hint, data, path)
    if issubclass(hint, enum.Enum):
        try:
            return hint(data)
        except ValueError:
            known = ", ".join(str(member.value) for member in hint)
            raise _error(path, f"{data!r} is not one of {known}") from None
    if hint is bool:
        return _expect(data, bool, path)
    if hint is int:
        if isinstance(data, bool):
            raise _error(path, "expected an integer, got a boolean")
        return _expect(data, int, path)
    if hint is float:
        # An int stays an int, so that it is written back as it was read.
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise _error(path, f"expected a number, got {_kind(data)}")
        return data
    if hint is str:
        return _expect(data, str, path)
    if hint is datetime:
        return _datetime(data, path)
    if hint is bytes:
        try:
            return base64.b64decode(_expect(data, str, path), validate=True)
        except binascii.Error:
            raise _error(path, "not base64") from None
    if hint is Path:
        return Path(_expect(data, str, path))
    raise TypeError(f"facts cannot hold a {hint.__name__}")


def _dataclass(kind: type, data: Any, path: tuple[str, ...]) -> Any:
    if not isinstance(data, Mapping):
        raise _error(path, f"expected an object, got {_kind(data)}")
    hints = typing.get_type_hints(kind)
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise _error(path, f"unknown field {unknown[0]!r}")
    values = {}
    for name, spec in fields.items():
        if name in data:
            if spec.init:
                values[name] = _decode(hints[name], data[name], (*path, name))
        elif spec.init and spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise _error(path, f"the field {name!r} is missing")
    return kind(**values)


def _union(hint: Any, data: Any, path: tuple[str, ...]) -> Any:
    options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if len(options) != 1:
        raise TypeError(f"facts cannot hold {hint!r}: only one type or None")
    return None if data is None else _decode(options[0], data, path)


def _tuple(hint: Any, data: Any, path: tuple[str, ...]) -> tuple[Any, ...]:
    args = typing.get_args(hint)
    items = _array(data, path)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_decode(args[0], value, (*path, str(index))) for index, value in enumerate(items))
    if len(items) != len(args):
        raise _error(path, f"expected {len(args)} items, got {len(items)}")
    pairs = enumerate(zip(args, items, strict=True))
    return tuple(_decode(arg, value, (*path, str(index))) for index, (arg, value) in pairs)


def _datetime(data: Any, path: tuple[str, ...]) -> datetime:
    text = _expect(data, str, path)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _error(path, f"{text!r} is not a time") from None
    if moment.tzinfo is None:
        raise _error(path, f"{text!r} has no time zone")
    return moment.astimezone(UTC)


def _array(data: Any, path: tuple[str, ...]) -> list[Any]:
    if not isinstance(data, list):
        raise _error(path, f"expected an array, got {_kind(data)}")
    return data


def _expect(data: Any, kind: type[T], path: tuple[str, ...]) -> T:
    if not isinstance(data, kind):
        raise _error(path, f"expected {_NAMES.get(kind, kind.__name__)}, got {_kind(data)}")
    return data


_NAMES: dict[type, str] = {str: "a string", int: "an integer", bool: "a boolean", float: "a number"}


def _kind(data: Any) -> str:
    if data is None:
        return "null"
    if isinstance(data, bool):
        return "a boolean"
    if isinstance(data, int | float):
        return "a number"
    if isinstance(data, str):
        return "a string"
    if isinstance(data, list):
        return "an array"
    if isinstance(data, Mapping):
        return "an object"
    return type(data).__name__


def _error(path: tuple[str, ...], problem: str) -> ValueError:
    return ValueError(f"{'/'.join(path)}: {problem}" if path else problem)
