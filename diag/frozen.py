"""``@frozen``: ``@dataclass(frozen=True, slots=True)``, cheaper to define.

For each class, :func:`dataclasses.dataclass` writes every method it adds as source text and compiles it: about
0.13 ms a method on a 2-core machine, six methods for a frozen class that compares by value. diag defines over
two hundred such classes, and one ``diag check`` imports about 130 of them, so 110-190 ms of its run went to
compiling them (``bench/startup.py``). Three of those methods do not depend on the class beyond its field names:
``@frozen`` shares one ``__repr__``, ``__eq__`` and ``__hash__`` between all its classes, and leaves ``__init__``
and the frozen ``__setattr__`` and ``__delattr__`` to :mod:`dataclasses`: a class takes a third to a half less
time to define. The classes are dataclasses in every other way (:func:`dataclasses.fields`,
:func:`dataclasses.replace`, ``field(repr=False)``, pickling), and the shared methods give what the generated
ones of Python 3.11 and 3.12 give: the same repr, equality between instances of the same class whose compared
fields are equal as tuples are (``NotImplemented`` for any other object), and the hash of that tuple.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from operator import attrgetter
from reprlib import recursive_repr
from typing import Any, TypeVar, cast, dataclass_transform

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def frozen(cls: type[_T]) -> type[_T]:
    """``cls`` as ``@dataclass(frozen=True, slots=True)`` makes it, with shared ``__repr__``, ``__eq__`` and
    ``__hash__`` (a method ``cls`` defines itself is kept, as dataclasses keep it)."""
    own = set(vars(cls))
    if vars(cls).get("__hash__", ...) is None and "__eq__" in own:
        own.remove("__hash__")  # Python's None for a class defining __eq__ alone: dataclasses add a hash there too
    made = cast(Any, dataclasses.dataclass(frozen=True, slots=True, repr=False, eq=False)(cls))
    fields = dataclasses.fields(made)
    # Class attributes: the compared fields' values as a tuple (a static method), and the names repr shows.
    made.__frozen_key__ = staticmethod(_key(tuple(f.name for f in fields if f.compare)))
    made.__frozen_shown__ = tuple(f.name for f in fields if f.repr)
    for name, method in (("__repr__", _repr), ("__eq__", _eq), ("__hash__", _hash)):
        if name not in own:
            setattr(made, name, method)
    return made  # type: ignore[no-any-return]


def _key(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A function of an instance returning the values of ``names``, always as a tuple."""
    if len(names) > 1:
        return attrgetter(*names)
    if names:
        one = attrgetter(names[0])
        return lambda instance: (one(instance),)
    return lambda instance: ()


@recursive_repr()
def _repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__frozen_shown__)
    return f"{self.__class__.__qualname__}({shown})"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        key = self.__frozen_key__
        return key(self) == key(other)
    return NotImplemented


def _hash(self: Any) -> int:
    return hash(self.__frozen_key__(self))
