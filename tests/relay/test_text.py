"""Tests of the text helpers: what a remote server wrote can never start a line of its own."""

from __future__ import annotations

from diag.relay.text import escape, one_line, printable


def test_printable_replaces_every_control_character_and_keeps_the_rest() -> None:
    assert printable("a\r\nb\x00c\x7fd\x9be\ud800f Grüße") == "a??b?c?d?e?f Grüße"


def test_one_line_folds_white_space_and_caps_the_length() -> None:
    assert one_line("  550 5.1.1\r\n  no such\tuser \x1b[31m ") == "550 5.1.1 no such user ?[31m"
    assert len(one_line("x" * 40_000)) == 1000


def test_escape_makes_a_log_field_that_cannot_end_the_line_or_the_quotes() -> None:
    assert escape('a"b\\c\r\nd') == 'a\\"b\\\\c\\r\\nd'
    assert escape("Grüße") == "Gr\\u00fc\\u00dfe"
