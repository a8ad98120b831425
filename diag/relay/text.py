"""Text from outside (server replies, addresses, host names) made safe for the spool, logs, headers and bounces.

Shared by the delivery planner, transport and scheduler: a reply a remote server chose ends up in the spool's
state file, a log line, a header and a bounce, so it must not be able to start a line of its own
(security-cases.md RPT-06: CR/LF in a banner means forged log lines).
"""

from __future__ import annotations

import json
import re
from typing import Final

__all__ = ["escape", "one_line", "printable"]

# C0 and C1 controls, DEL, and lone surrogates (a name decoded with surrogateescape).
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# A remote reply can be up to 32 KiB (aiosmtplib's cap); what is kept of it stays readable.
_LIMIT: Final = 1000


def printable(text: str) -> str:
    """``text`` with every control character replaced by ``?`` (for a header line: nothing can end it early)."""
    return _CONTROL.sub("?", text)


def one_line(text: str) -> str:
    """Server text on one line, white space runs folded, control characters replaced, at most 1000 characters."""
    return printable(" ".join(text.split()))[:_LIMIT]


def escape(text: str) -> str:
    """``text`` for a log line: control characters, quotes and backslashes escaped (no forged lines)."""
    return json.dumps(text)[1:-1]
