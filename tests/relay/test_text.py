"""Tests of the text helpers: what a remote server wrote can never start a line of its own."""

from __future__ import annotations

import itertools
import re

from diag.relay.text import escape, one_line, printable, stray_bytes


def test_printable_replaces_every_control_character_and_keeps_the_rest() -> None:
    assert printable("a\r\nb\x00c\x7fd\x9be\ud800f Grüße") == "a??b?c?d?e?f Grüße"


def test_one_line_folds_white_space_and_caps_the_length() -> None:
    assert one_line("  550 5.1.1\r\n  no such\tuser \x1b[31m ") == "550 5.1.1 no such user ?[31m"
    assert len(one_line("x" * 40_000)) == 1000


def test_escape_makes_a_log_field_that_cannot_end_the_line_or_the_quotes() -> None:
    assert escape('a"b\\c\r\nd') == 'a\\"b\\\\c\\r\\nd'
    assert escape("Grüße") == "Gr\\u00fc\\u00dfe"


def test_stray_bytes_finds_exactly_the_bare_crs_bare_lfs_and_nuls_the_patterns_define() -> None:
    # Every string of up to six bytes from these four, against the definitions as patterns: a CR not followed by
    # LF, an LF not preceded by CR, NUL (at the start, the end, in runs, in CRLF pairs and in LFCR)
    definitions = {
        "bare CR": re.compile(rb"\r(?!\n)"), "bare LF": re.compile(rb"(?<!\r)\n"), "NUL": re.compile(rb"\x00"),
    }  # fmt: skip
    for length in range(7):
        for parts in itertools.product((b"a", b"\r", b"\n", b"\x00"), repeat=length):
            data = b"".join(parts)
            expected = tuple(name for name, pattern in definitions.items() if pattern.search(data))
            assert stray_bytes(data) == expected, data


def test_stray_bytes_passes_a_message_of_crlf_lines() -> None:
    assert stray_bytes(b"Subject: x\r\n\r\nbody\r\n.. stuffed\r\n") == ()
