"""Tag lists (``v=DMARC1; p=reject``): the syntax DKIM, DMARC, MTA-STS and TLS-RPT records share.

RFC 6376 §3.2 defines it for DKIM; DMARC (RFC 7489 §6.4), MTA-STS (RFC 8461 §3.1) and TLS-RPT (RFC 8460 §3) use
the same ``name=value`` pairs separated by ``;`` with optional white space. Parsing is bounded and total: a
malformed list gives :class:`SyntaxIssue` s with positions, never an exception.
"""

from __future__ import annotations

import re

from diag.frozen import frozen
from diag.policy.lookup import MAX_TEXT, shown

__all__ = ["SyntaxIssue", "Tag", "TagList", "parse_tags"]

# tag-name = ALPHA *ALNUMPUNC (RFC 6376 §3.2), ALNUMPUNC = ALPHA / DIGIT / "_"
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_WSP = " \t\r\n"


@frozen
class SyntaxIssue:
    """A syntax error in a record: where it starts (0-based character offset) and what is wrong."""

    position: int
    message: str


@frozen
class Tag:
    """One ``name=value`` pair: the name as written, the value without surrounding white space, its offset."""

    name: str
    value: str
    position: int


@frozen
class TagList:
    """A parsed tag list: the tags in order and the syntax issues (duplicates included)."""

    tags: tuple[Tag, ...] = ()
    issues: tuple[SyntaxIssue, ...] = ()

    def get(self, name: str, *, case_sensitive: bool = False) -> Tag | None:
        """The first tag called ``name`` (tag names compare without case unless asked, as DMARC's do)."""
        for tag in self.tags:
            if tag.name == name or (not case_sensitive and tag.name.lower() == name.lower()):
                return tag
        return None

    def names(self) -> tuple[str, ...]:
        return tuple(tag.name.lower() for tag in self.tags)


def parse_tags(text: str, *, case_sensitive: bool = False) -> TagList:
    """Split ``text`` into tags. A trailing ``;`` is allowed; an empty list element, a tag without ``=``, a bad
    name, a value with a control or non-ASCII character, or a repeated name are issues (RFC 6376 §3.2: "Tags
    with duplicate names MUST NOT occur")."""
    if len(text) > MAX_TEXT:
        return TagList(issues=(SyntaxIssue(MAX_TEXT, f"record longer than {MAX_TEXT} characters"),))
    tags: list[Tag] = []
    issues: list[SyntaxIssue] = []
    seen: set[str] = set()
    position = 0
    parts = text.split(";")
    for index, part in enumerate(parts):
        start = position
        position += len(part) + 1
        if not part.strip(_WSP):
            if index != len(parts) - 1:
                issues.append(SyntaxIssue(start, "empty element between ';'"))
            continue
        name, equals, value = part.partition("=")
        stripped_name = name.strip(_WSP)
        name_at = start + len(name) - len(name.lstrip(_WSP))
        if not equals:
            issues.append(SyntaxIssue(name_at, f"'{shown(part.strip(_WSP), 40)}' is not name=value"))
            continue
        if not _TAG_NAME.match(stripped_name):
            issues.append(SyntaxIssue(name_at, f"'{shown(stripped_name, 40)}' is not a valid tag name"))
            continue
        value_at = start + len(name) + 1
        stripped_value = value.strip(_WSP)
        value_at += len(value) - len(value.lstrip(_WSP))
        bad = next((i for i, c in enumerate(stripped_value) if not (" " <= c <= "~" or c == "\t")), None)
        if bad is not None:
            message = f"character '{shown(stripped_value[bad])}' in the value of {stripped_name}"
            issues.append(SyntaxIssue(value_at + bad, message))
            continue
        key = stripped_name if case_sensitive else stripped_name.lower()
        if key in seen:
            issues.append(SyntaxIssue(name_at, f"tag '{stripped_name}' appears more than once"))
            continue
        seen.add(key)
        tags.append(Tag(stripped_name, stripped_value, name_at))
    return TagList(tuple(tags), tuple(issues))
