"""TLS-RPT (RFC 8460): the ``_smtp._tls`` record and its report URIs.

§3: "records that do not begin with "v=TLSRPTv1;" are discarded. If the number of resulting records is not
one, senders MUST assume the recipient domain does not implement TLSRPT." ``rua`` is a comma-separated list
of ``mailto:`` and ``https:`` URIs (§3, ``tlsrpt-uri``).
"""

from __future__ import annotations

import enum
import re
import urllib.parse
from collections.abc import Generator, Sequence

from diag.frozen import frozen
from diag.policy.lookup import Process, Question, Reply, shown
from diag.policy.tags import parse_tags

__all__ = [
    "RptIssue",
    "RptStatus",
    "RptUri",
    "TlsRptFacts",
    "TlsRptRecord",
    "discover",
    "parse_record",
    "select_records",
]

_VERSION = re.compile(r"v=TLSRPTv1[ \t]*;")
_MAILBOX = re.compile(r"[^@\s]+@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)\Z")


class RptIssue(enum.StrEnum):
    """A problem with a TLS-RPT record."""

    SYNTAX = "syntax"
    NO_RUA = "no-rua"  # the required rua is missing or has no usable URI
    BAD_URI = "bad-uri"  # an entry that is neither mailto: with an address nor https: with a host


@frozen
class RptUri:
    """One ``rua`` entry: the URI, its scheme, the mail domain or web host it sends to, and whether it is usable."""

    uri: str
    scheme: str
    destination: str | None
    usable: bool


@frozen
class TlsRptRecord:
    """A parsed record: the rua entries and the problems (kind and detail)."""

    text: str
    rua: tuple[RptUri, ...] = ()
    issues: tuple[tuple[RptIssue, str], ...] = ()

    @property
    def valid(self) -> bool:
        return not self.issues


def select_records(texts: Sequence[str]) -> tuple[str, ...]:
    return tuple(t for t in texts if _VERSION.match(t))


def _uri(text: str) -> RptUri:
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if colon and scheme == "mailto":
        mailbox = _MAILBOX.match(urllib.parse.unquote(rest.split("?", 1)[0]))
        return RptUri(text, scheme, mailbox.group(1).lower() if mailbox else None, mailbox is not None)
    if colon and scheme == "https":
        host = urllib.parse.urlsplit(text).hostname
        return RptUri(text, scheme, host, bool(host and "." in host))
    return RptUri(text, scheme if colon else "", None, False)


def parse_record(text: str) -> TlsRptRecord:
    """Parse one ``v=TLSRPTv1`` record. Never raises."""
    tags = parse_tags(text, case_sensitive=True)
    issues = [(RptIssue.SYNTAX, f"at {i.position}: {i.message}") for i in tags.issues]
    rua_tag = tags.get("rua", case_sensitive=True)
    uris = tuple(_uri(part.strip()) for part in rua_tag.value.split(",") if part.strip()) if rua_tag else ()
    for uri in uris:
        if not uri.usable:
            issues.append((RptIssue.BAD_URI, f"'{shown(uri.uri, 80)}' is neither mailto:address nor https://host/"))
    if not any(uri.usable for uri in uris):
        issues.append((RptIssue.NO_RUA, "no usable rua URI"))
    return TlsRptRecord(text, uris, tuple(issues))


class RptStatus(enum.StrEnum):
    FOUND = "found"
    NONE = "none"
    MULTIPLE = "multiple"  # senders assume no TLS-RPT
    DNS_ERROR = "dns-error"


@frozen
class TlsRptFacts:
    """The ``_smtp._tls.<domain>`` lookup: status, the parsed record, the selected texts, the resolver's words."""

    domain: str
    status: RptStatus
    record: TlsRptRecord | None = None
    texts: tuple[str, ...] = ()
    detail: str = ""


def discover(domain: str) -> Process[TlsRptFacts]:
    """The process that asks for ``_smtp._tls.<domain>`` TXT and selects the record."""
    return Process(_discover(domain.rstrip(".").lower()))


def _discover(domain: str) -> Generator[Question, Reply, TlsRptFacts]:
    reply = yield Question(f"_smtp._tls.{domain}", "TXT")
    if not reply.status.answered:
        return TlsRptFacts(domain, RptStatus.DNS_ERROR, detail=reply.detail or reply.status)
    selected = select_records(reply.records)
    if not selected:
        return TlsRptFacts(domain, RptStatus.NONE)
    if len(selected) > 1:
        return TlsRptFacts(domain, RptStatus.MULTIPLE, texts=selected)
    return TlsRptFacts(domain, RptStatus.FOUND, parse_record(selected[0]), selected)
