"""Untrusted text stays text: what a banner, certificate name or DNS name may contain is made visible and inert.

Control characters (C0, DEL, C1) could rewrite a terminal or forge log lines, bidirectional controls could
reorder what a person reads, and invisible characters hide what is there (security-cases.md RPT-04, RPT-06);
lone surrogates (aiosmtplib decodes invalid UTF-8 with surrogateescape) and U+FFFE/U+FFFF cannot even be
written as UTF-8 or XML. Each is shown as an escape instead, the same way in every view: terminal, HTML and the
monitoring formats.
"""

from __future__ import annotations

import re

__all__ = ["sanitize"]

_UNSAFE = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\u00ad\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069"
    "\ud800-\udfff\ufeff\ufff9-\ufffb\ufffe\uffff]"
)
_LIMIT = 2000


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"U+{code:04X}"


def sanitize(text: str, *, limit: int = _LIMIT) -> str:
    """``text`` with control, bidi and invisible characters escaped, tabs kept, cut to ``limit`` characters."""
    cleaned = _UNSAFE.sub(_escape, text.replace("\t", " "))
    if len(cleaned) > limit:
        return f"{cleaned[:limit]}… ({len(cleaned) - limit} more characters)"
    return cleaned
