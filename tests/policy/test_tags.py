"""Tag lists shared by DKIM, DMARC, MTA-STS and TLS-RPT records (RFC 6376 §3.2)."""

from __future__ import annotations

from diag.policy.tags import parse_tags


def test_tags_split_on_semicolons_with_white_space_around_names_and_values() -> None:
    tags = parse_tags("v=DMARC1;  p = reject ;rua=mailto:a@example.com;")
    assert [(t.name, t.value, t.position) for t in tags.tags] == [
        ("v", "DMARC1", 0), ("p", "reject", 11), ("rua", "mailto:a@example.com", 23),
    ]  # fmt: skip
    assert tags.issues == () and tags.get("P") is not None and tags.get("P", case_sensitive=True) is None


def test_malformed_elements_are_issues_with_positions_and_parsing_goes_on() -> None:
    tags = parse_tags("v=1;;x;1a=2;k=v\x00w;k=again;ok=yes")
    assert [(i.position, i.message) for i in tags.issues] == [
        (4, "empty element between ';'"),
        (5, "'x' is not name=value"),
        (7, "'1a' is not a valid tag name"),
        (15, "character '\\x00' in the value of k"),
    ]
    assert tags.names() == ("v", "k", "ok") and tags.get("k") is not None and tags.get("k").value == "again"  # type: ignore[union-attr]


def test_a_repeated_tag_is_an_issue_and_the_first_one_counts() -> None:
    tags = parse_tags("p=none; P=reject")
    assert [i.message for i in tags.issues] == ["tag 'P' appears more than once"]
    assert tags.get("p").value == "none"  # type: ignore[union-attr]


def test_huge_or_binary_text_is_bounded() -> None:
    assert parse_tags("a=" + "b" * 100_000).issues[0].message.startswith("record longer than")
    assert parse_tags("a=\udcff").issues[0].message == "character '\\udcff' in the value of a"
