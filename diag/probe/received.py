"""``Received:`` lines as hops: who handed the message to whom, when, how, and with which TLS.

RFC 5321 §4.4 defines the trace field (``from`` … ``by`` … ``via`` … ``with`` … ``id`` … ``for`` … ``; date``) and
RFC 3848 the ``with`` keywords (SMTP, ESMTP, ESMTPA, ESMTPS, ESMTPSA, LMTP…). What servers actually write
varies; the dialects parsed here, each with a sample in tests/probe/data/:

- Postfix: ``(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) …)`` in the ``from`` comments;
- Exchange and Exchange Online: ``with Microsoft SMTP Server (version=TLS1_2, cipher=TLS_ECDHE_…) id
  15.20.7452.28`` — that id is a build number, never an address;
- sendmail, Proofpoint and Gmail: ``(version=TLSv1.2 cipher=ECDHE-RSA-AES256-GCM-SHA384 bits=256 verify=NOT)``,
  ``(version=TLS1_3 cipher=TLS_AES_256_GCM_SHA384 bits=256/256)``;
- Exim: ``with esmtps (TLS1.3) tls TLS_AES_256_GCM_SHA384`` (OpenSSL) or ``with esmtps
  (TLS1.0:RSA_AES_256_CBC_SHA1:32)`` (GnuTLS);
- diag's relay (diag.relay.policy.received_header): ``with ESMTPS (TLSv1.3 TLS_AES_256_GCM_SHA384)``.

The address of a hop is read only from its ``from`` clause (a bracketed literal or Exchange's bare ``(10.1.2.3)``
comment), never from ``id`` or ``with``. Parsing is bounded (security-cases.md PR-04): at most :data:`MAX_HOPS`
lines, each cut to :data:`MAX_FIELD` characters; a date that does not parse is unknown (None), not an error.
Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

from diag.probe.facts import Hop

__all__ = ["MAX_FIELD", "MAX_HOPS", "Hop", "normalize_tls_version", "parse_hops"]

MAX_HOPS: Final = 100  # Postfix's hopcount_limit is 50; a message with more is looping or hostile
MAX_FIELD: Final = 4096  # characters of one Received value that are read (real ones are < 1000)

_KEYWORDS: Final = frozenset({"from", "by", "via", "with", "id", "for"})
# RFC 3848 §4 (and RFC 6531's UTF8 forms): the "S" variants mean the hop used TLS.
_TLS_PROTOCOLS: Final = frozenset(
    {"ESMTPS", "ESMTPSA", "LMTPS", "LMTPSA", "UTF8SMTPS", "UTF8SMTPSA", "UTF8LMTPS", "UTF8LMTPSA", "HTTPS"}
)
_PLAIN_PROTOCOLS: Final = frozenset({"SMTP", "ESMTP", "ESMTPA", "LMTP", "LMTPA", "UTF8SMTP", "UTF8SMTPA", "HTTP"})
_VERSION_WORD: Final = r"(?:TLSv?1(?:[._][0-3])?|SSLv[23])"
_POSTFIX: Final = re.compile(rf"\busing\s+({_VERSION_WORD})(?:\s+with\s+cipher\s+([A-Za-z0-9_.-]+))?", re.I)
_KEYVALUE_VERSION: Final = re.compile(r"\bversion=([A-Za-z0-9_./]+)", re.I)
_KEYVALUE_CIPHER: Final = re.compile(r"\bcipher=([A-Za-z0-9_.-]+)", re.I)
_EXIM: Final = re.compile(rf"\(({_VERSION_WORD})(?::([A-Za-z0-9_-]+))?(?::\d+)?\)(?:\s+tls\s+([A-Za-z0-9_.-]+))?", re.I)
_DIAG: Final = re.compile(rf"\(({_VERSION_WORD})\s+([A-Za-z0-9_.-]+)\)", re.I)
_BRACKETED_IP: Final = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]")
_BARE_IP: Final = re.compile(r"\(\s*([0-9A-Fa-f:.]+)\s*\)")
_HOST: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def normalize_tls_version(text: str) -> str:
    """A TLS version in OpenSSL's spelling: ``TLS1_2``/``TLS1.2``/``TLSv1.2`` → ``TLSv1.2``, ``TLS1_0`` → ``TLSv1``.

    Anything else (``TLSv1/SSLv3``, ``SSLv3``) is returned as written.
    """
    match = re.fullmatch(r"TLSv?1(?:[._]([0-3]))?", text, re.I)
    if match is None:
        return text
    minor = match.group(1)
    return "TLSv1" if minor in (None, "0") else f"TLSv1.{minor}"


def parse_hops(values: Sequence[str]) -> tuple[tuple[Hop, ...], bool]:
    """The hops of a message from its ``Received:`` values in header order (newest first).

    Returns the hops in travel order (oldest first) and whether lines were left out: only the newest
    :data:`MAX_HOPS` lines are read, the ones nearest the mailbox.
    """
    kept = list(values[:MAX_HOPS])
    hops: list[Hop] = []
    previous: datetime | None = None
    for index, value in enumerate(reversed(kept), start=1):
        hop = _parse_one(value, index)
        if previous is not None and hop.at is not None:
            seconds = (hop.at - previous).total_seconds()
            if seconds < 0:
                hop = replace(hop, skew_s=-seconds)
            else:
                hop = replace(hop, delay_s=seconds)
        previous = hop.at
        hops.append(hop)
    return tuple(hops), len(values) > MAX_HOPS


def _parse_one(value: str, index: int) -> Hop:
    text = _CONTROL.sub("?", " ".join(value[:MAX_FIELD].split()))
    clauses_text, date_text = _split_date(text)
    clauses = _clauses(clauses_text)
    from_clause = clauses.get("from", "")
    with_clause = clauses.get("with", "")
    version, cipher = _tls(text, with_clause)
    protocol = _first_word(with_clause)
    if version is not None:
        tls: bool | None = True
    elif protocol is not None and protocol.upper() in _TLS_PROTOCOLS:
        tls = True
    elif protocol is not None and (protocol.upper() in _PLAIN_PROTOCOLS or protocol == "Microsoft SMTP Server"):
        # Exchange names the TLS version whenever the hop used TLS, so its line without one was in clear.
        tls = False
    else:
        tls = None
    from_host, reverse, ip = _from_parts(from_clause)
    return Hop(
        index=index,
        from_host=from_host,
        from_reverse=reverse,
        ip=ip,
        by_host=_by_host(_first_token(clauses.get("by", ""))),
        protocol=protocol,
        tls=tls,
        tls_version=normalize_tls_version(version) if version is not None else None,
        tls_cipher=cipher,
        id=_first_token(clauses.get("id", "")) or None,
        at=_date(date_text),
        delay_s=None,
        skew_s=None,
        raw=text,
    )


def _split_date(text: str) -> tuple[str, str]:
    """The clauses and the date after the last ``;`` outside comments (RFC 5321 §4.4: ``; date-time``)."""
    depth, cut = 0, -1
    for position, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        elif char == ";" and depth == 0:
            cut = position
    if cut < 0:
        return text, ""
    return text[:cut], text[cut + 1 :]


def _clauses(text: str) -> dict[str, str]:
    """The keyword clauses at comment depth 0; a clause keeps its comments. A repeated keyword (Mimecast's
    ``with ESMTP with STARTTLS``) extends the first clause of its name."""
    clauses: dict[str, str] = {}
    current: str | None = None
    depth = 0
    words: list[str] = []

    def close() -> None:
        if current is not None:
            joined = " ".join(words)
            clauses[current] = f"{clauses[current]} {joined}".strip() if current in clauses else joined

    for word in re.findall(r"\S+", text):
        if depth == 0 and word.lower() in _KEYWORDS:
            close()
            current, words = word.lower(), []
        else:
            words.append(word)
        depth = max(0, depth + word.count("(") - word.count(")"))
    close()
    return clauses


def _tls(text: str, with_clause: str) -> tuple[str | None, str | None]:
    """The TLS version and cipher the line names, in whichever dialect it uses."""
    postfix = _POSTFIX.search(text)
    if postfix is not None:
        return postfix.group(1), postfix.group(2)
    version = _KEYVALUE_VERSION.search(text)
    if version is not None:
        cipher = _KEYVALUE_CIPHER.search(text)
        return version.group(1).rstrip(",;"), cipher.group(1).rstrip(",;") if cipher else None
    diag = _DIAG.search(with_clause)
    if diag is not None:
        return diag.group(1), diag.group(2)
    exim = _EXIM.search(with_clause)
    if exim is not None:
        return exim.group(1), exim.group(3) or exim.group(2)
    return None, None


def _from_parts(clause: str) -> tuple[str | None, str | None, str | None]:
    """HELO name, reverse name and address of a ``from`` clause."""
    if not clause:
        return None, None, None
    first = _first_token(clause)
    ip = None
    literal = _BRACKETED_IP.fullmatch(first)
    if literal is not None:
        ip = _ip(literal.group(1))
    reverse = None
    for match in _BRACKETED_IP.finditer(clause):
        if ip is None:
            ip = _ip(match.group(1))
        # Postfix and sendmail write "(reverse.name [ip])"; Gmail "(name. [ip])".
        before = clause[: match.start()].rstrip().rsplit("(", 1)[-1].split()
        if reverse is None and before:
            reverse = _host(before[-1].rstrip("."))
    if ip is None:
        for match in _BARE_IP.finditer(clause):  # Exchange: "from host (10.1.2.3) by ..."
            ip = _ip(match.group(1))
            if ip is not None:
                break
    helo = None if literal is not None else _host(first)
    return helo, reverse, ip


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _first_token(clause: str) -> str:
    """The clause's first word outside comments."""
    depth = 0
    for word in clause.split():
        if depth == 0 and not word.startswith("("):
            return word.rstrip(";,")
        depth = max(0, depth + word.count("(") - word.count(")"))
    return ""


def _first_word(with_clause: str) -> str | None:
    """The protocol: the ``with`` clause up to its first comment (``Microsoft SMTP Server`` is three words)."""
    head = with_clause.split("(", 1)[0].split()
    if not head:
        return None
    if [word.lower() for word in head[:3]] == ["microsoft", "smtp", "server"]:
        return "Microsoft SMTP Server"
    return head[0]


def _by_host(text: str) -> str | None:
    """The receiving server: a name, or an address (Google's internal hops write ``by 2002:a05:...``)."""
    return _host(text) or _ip(text.strip("[]"))


def _host(text: str) -> str | None:
    return text if text and _HOST.fullmatch(text) else None


def _date(text: str) -> datetime | None:
    text = text.strip()
    if not text:
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    # RFC 5322 §3.3: "-0000" is UTC with an unknown local zone; parsedate_to_datetime returns it naive.
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
