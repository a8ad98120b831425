"""@frozen (diag.frozen): a class it makes behaves as ``@dataclass(frozen=True, slots=True)`` makes it."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from dataclasses import dataclass, field
from typing import Any

import pytest

from diag.frozen import frozen


@frozen
class Shared:
    name: str
    port: int = 25
    tags: tuple[str, ...] = ()
    password: str | None = field(default=None, repr=False)
    noted: float = field(default=0.0, compare=False)


@dataclass(frozen=True, slots=True)
class Generated:
    name: str
    port: int = 25
    tags: tuple[str, ...] = ()
    password: str | None = field(default=None, repr=False)
    noted: float = field(default=0.0, compare=False)


@frozen
class Other:
    name: str
    port: int = 25


@frozen
class Single:
    value: float


@frozen
class Empty:
    pass


@frozen
class Node:
    name: str
    children: list[Any] = field(default_factory=list, compare=False)


@frozen
class Own:
    name: str

    def __repr__(self) -> str:
        return f"<{self.name}>"


@frozen
class OwnEquality:
    name: str
    port: int = 25

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OwnEquality) and self.name.lower() == other.name.lower()


@frozen
class OwnHash:
    name: str

    def __hash__(self) -> int:
        return 7


@dataclass(frozen=True, slots=True)
class GeneratedOwnEquality:
    name: str
    port: int = 25

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GeneratedOwnEquality) and self.name.lower() == other.name.lower()


@frozen
class Derived(Shared):
    pass


class Outer:
    @frozen
    class Inner:
        value: int


SAMPLES = [
    ("mx1", 25, ("a",), "secret", 1.5),
    ("mx1", 25, ("a",), None, 2.5),
    ("mx1", 25, ("a",), None, 9.5),
    ("mx2", 587, (), None, 0.0),
]


@pytest.mark.parametrize("values", SAMPLES)
def test_repr_is_the_dataclass_repr_and_hides_fields_marked_repr_false(values: tuple[Any, ...]) -> None:
    shared = repr(Shared(*values))

    assert shared == repr(Generated(*values)).replace("Generated(", "Shared(", 1)
    assert "secret" not in shared


@pytest.mark.parametrize("left", SAMPLES)
@pytest.mark.parametrize("right", SAMPLES)
def test_equality_and_hash_follow_the_compared_fields_as_the_dataclass_ones_do(
    left: tuple[Any, ...], right: tuple[Any, ...]
) -> None:
    equal = Shared(*left) == Shared(*right)

    assert equal == (Generated(*left) == Generated(*right))
    assert (Shared(*left) != Shared(*right)) is not equal
    if equal:
        assert hash(Shared(*left)) == hash(Shared(*right))


def test_records_that_differ_in_any_compared_field_hash_apart() -> None:
    records = [
        Shared("mx1"),
        Shared("mx2"),
        Shared("mx1", 587),
        Shared("mx1", tags=("a",)),
        Shared("mx1", password="x"),
    ]

    assert len({hash(r) for r in records}) == len(records)
    assert len(set(records)) == len(records)
    assert {Shared("mx1", noted=1.0): "first"}[Shared("mx1", noted=2.0)] == "first"


def test_instances_of_different_classes_are_never_equal() -> None:
    other: object = Other("mx1")
    assert Shared("mx1") != other
    assert Shared("mx1").__eq__(other) is NotImplemented
    derived: object = Derived("mx1")
    assert Shared("mx1") != derived and derived != Shared("mx1")
    assert Generated("mx1") != derived
    as_tuple: object = ("mx1", 25, (), None, 0.0)
    assert Shared("mx1") != as_tuple


def test_a_single_field_compares_as_a_tuple_does_and_no_field_at_all_is_equal_to_itself() -> None:
    nan = float("nan")

    assert Single(nan) == Single(nan)  # as (nan,) == (nan,), and as dataclasses' own __eq__ before Python 3.13
    assert Single(1.0) != Single(2.0)
    assert hash(Single(1.0)) == hash(Single(1.0))
    assert Empty() == Empty()
    assert hash(Empty()) == hash(Empty())
    assert repr(Empty()) == "Empty()"


def test_a_method_the_class_defines_is_kept() -> None:
    assert repr(Own("x")) == "<x>"
    assert Own("x") == Own("x")
    assert OwnEquality("MX", 25) == OwnEquality("mx", 587)
    assert hash(OwnHash("a")) == 7


def test_a_class_defining_eq_alone_is_hashed_by_its_fields_as_a_dataclass_is() -> None:
    assert hash(GeneratedOwnEquality("mx")) == hash(GeneratedOwnEquality("mx"))  # dataclasses add a hash
    assert hash(OwnEquality("mx", 25)) == hash(OwnEquality("mx", 25)) != hash(OwnEquality("mx", 587))


def test_repr_names_a_nested_class_by_its_qualified_name() -> None:
    assert repr(Outer.Inner(1)) == "Outer.Inner(value=1)"


def test_repr_of_a_record_that_contains_itself_does_not_recurse() -> None:
    node = Node("root")
    node.children.append(node)

    assert repr(node) == "Node(name='root', children=[...])"


def test_the_class_is_a_frozen_slotted_dataclass() -> None:
    record = Shared("mx1", tags=("a",), password="secret")

    with pytest.raises(dataclasses.FrozenInstanceError):
        record.name = "mx2"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del record.port
    assert not hasattr(record, "__dict__")
    assert dataclasses.is_dataclass(record)
    assert [f.name for f in dataclasses.fields(record)] == ["name", "port", "tags", "password", "noted"]
    assert dataclasses.replace(record, port=587) == Shared("mx1", 587, ("a",), "secret")
    assert dataclasses.asdict(record)["password"] == "secret"
    assert Shared.__match_args__ == ("name", "port", "tags", "password", "noted")


def test_copies_and_pickles_are_equal_to_the_original() -> None:
    record = Shared("mx1", 25, ("a",), "secret", 1.5)

    for again in (pickle.loads(pickle.dumps(record)), copy.copy(record), copy.deepcopy(record)):
        assert again == record
        assert again.password == "secret"
        assert again.noted == 1.5
