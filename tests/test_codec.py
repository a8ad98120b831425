"""Facts as JSON and back (diag.codec): every kind of value facts hold, and what a bad value is refused with."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from diag.codec import decode, encode, timestamp


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass(frozen=True, slots=True)
class Inner:
    name: str
    level: Level = Level.LOW


@dataclass(frozen=True, slots=True)
class Everything:
    text: str
    number: int
    seconds: float | None
    flag: bool
    colour: Colour
    at: datetime
    raw: bytes
    where: Path
    names: tuple[str, ...]
    pair: tuple[int, str]
    tags: frozenset[str]
    inner: Inner
    inners: tuple[Inner, ...] = ()
    maybe: Inner | None = None
    anything: Any = None
    later: tuple[str, ...] = field(default_factory=tuple)


SAMPLE = Everything(
    text="mx.example.com \u202e\x1b", number=25, seconds=0.125, flag=True, colour=Colour.BLUE,
    at=datetime(2026, 11, 26, 20, 0, 1, tzinfo=UTC), raw=b"\x00\xff DER", where=Path("/tmp/x.pem"),
    names=("a", "b"), pair=(1, "one"), tags=frozenset({"x"}), inner=Inner("i", Level.HIGH),
    inners=(Inner("j"),), maybe=None, anything={"free": [1, "form"]},
)  # fmt: skip


def test_every_kind_of_value_goes_to_json_and_back() -> None:
    # Given facts holding every kind of value, when they are written as JSON text and read back
    text = json.dumps(encode(SAMPLE))
    again = decode(Everything, json.loads(text))

    # Then they are the same facts, and they write the same text
    assert again == SAMPLE
    assert json.dumps(encode(again)) == text
    assert encode(SAMPLE)["raw"] == "AP8gREVS" and encode(SAMPLE)["at"] == "2026-11-26T20:00:01Z"
    assert encode(SAMPLE)["colour"] == "blue" and encode(SAMPLE)["inner"] == {"name": "i", "level": 2}


def test_a_time_is_utc_to_the_second_and_an_int_in_a_float_field_stays_an_int() -> None:
    moment = datetime(2026, 11, 26, 21, 0, 0, 999_999, tzinfo=timezone(timedelta(hours=1)))
    assert timestamp(moment) == "2026-11-26T20:00:00Z"
    data = encode(SAMPLE) | {"seconds": 2}
    assert decode(Everything, data).seconds == 2 and encode(decode(Everything, data))["seconds"] == 2


def test_missing_fields_with_defaults_take_them() -> None:
    data = encode(SAMPLE)
    for name in ("inners", "maybe", "anything", "later"):
        del data[name]
    assert decode(Everything, data).inners == ()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "green"}, "colour: 'green' is not one of red, blue"),
        ({"number": "25"}, "number: expected an integer, got a string"),
        ({"number": True}, "number: expected an integer, got a boolean"),
        ({"seconds": "fast"}, "seconds: expected a number, got a string"),
        ({"at": "yesterday"}, "at: 'yesterday' is not a time"),
        ({"at": "2026-11-26T20:00:00"}, "at: '2026-11-26T20:00:00' has no time zone"),
        ({"raw": "not base64!"}, "raw: not base64"),
        ({"names": "a"}, "names: expected an array, got a string"),
        ({"names": ["a", 1]}, "names/1: expected a string, got a number"),
        ({"pair": [1]}, "pair: expected 2 items, got 1"),
        ({"inner": {"name": "i", "level": 3}}, "inner/level: 3 is not one of 1, 2"),
        ({"inner": {"level": 1}}, "inner: the field 'name' is missing"),
        ({"inners": [{"name": "j", "extra": 1}]}, "inners/0: unknown field 'extra'"),
        ({"maybe": []}, "maybe: expected an object, got an array"),
        ({"flag": None}, "flag: expected a boolean, got null"),
    ],
)
def test_a_value_that_does_not_fit_is_refused_with_where_and_why(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        decode(Everything, encode(SAMPLE) | change, at="domains/0/checks/1/facts")
    assert str(caught.value) == f"domains/0/checks/1/facts/{message}"


def test_kinds_facts_may_not_hold_are_programming_errors() -> None:
    @dataclass(frozen=True)
    class Bad:
        either: int | str

    with pytest.raises(TypeError, match="only one type or None"):
        decode(Bad, {"either": 1})
    with pytest.raises(TypeError, match="facts cannot hold a complex"):
        encode(Inner(1j))  # type: ignore[arg-type]
