"""MTA-STS (RFC 8461): the ``_mta-sts`` TXT record, the policy file, MX pattern matching and coverage.

Pure parts: :func:`parse_txt` and :func:`discover_txt` (a process) for the record, :func:`parse_policy` for the
policy body, :func:`judge_fetch` for what the HTTPS answer means under §3.3, :func:`mx_matches` and
:func:`coverage` for §4.1. The driver :func:`fetch_policy` resolves ``mta-sts.<domain>`` with the run's
resolver and fetches ``/.well-known/mta-sts.txt`` with :func:`diag.net.https.fetch` from each of its addresses.

Senders treat a domain as having no MTA-STS when the record is missing, doubled or invalid (§3.1,
security-cases.md DNS-20), and fetch failures or an invalid policy as "no new policy" (RD-26, following
postfix-mta-sts-resolver: no redirects, ``text/plain``, 64 KiB, ``0 ≤ max_age ≤ 31557600``).
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import re
import ssl
from collections.abc import Generator, Sequence

import dns.rdata

from diag.errors import DnsError
from diag.frozen import frozen
from diag.net.dns import DnsStatus, Resolver
from diag.net.https import FetchError, HttpsFacts, fetch
from diag.policy.lookup import Process, Question, Reply, shown
from diag.policy.tags import parse_tags

__all__ = [
    "MAX_AGE_LIMIT",
    "MAX_POLICY_BYTES",
    "POLICY_PATH",
    "FetchProblem",
    "MxCoverage",
    "PolicyIssue",
    "PolicyIssueKind",
    "StsMode",
    "StsPolicy",
    "StsRecord",
    "StsTxtFacts",
    "TxtStatus",
    "coverage",
    "discover_txt",
    "fetch_policy",
    "judge_fetch",
    "mx_matches",
    "parse_policy",
    "parse_txt",
    "select_txt",
]

POLICY_PATH = "/.well-known/mta-sts.txt"
MAX_POLICY_BYTES = 65536
"""RFC 8461 §3.3: "senders SHOULD impose a limit on the response size"; 64 KiB as postfix-mta-sts-resolver."""
MAX_AGE_LIMIT = 31557600
"""RFC 8461 §3.2: max_age is at most 31557600 seconds (about one year)."""

_VERSION = re.compile(r"v=STSv1[ \t]*;")
_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")  # §3.1: sts-id = 1*32(ALPHA / DIGIT)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


@frozen
class StsRecord:
    """A parsed ``_mta-sts`` record: its ``id`` (None when missing or invalid) and problems."""

    text: str
    id: str | None
    issues: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        return self.id is not None and not self.issues


def select_txt(texts: Sequence[str]) -> tuple[str, ...]:
    """§3.1: "records that do not begin with "v=STSv1;" are discarded"."""
    return tuple(t for t in texts if _VERSION.match(t))


def parse_txt(text: str) -> StsRecord:
    """Parse one ``v=STSv1`` record. Never raises."""
    tags = parse_tags(text, case_sensitive=True)
    issues = [f"at {i.position}: {i.message}" for i in tags.issues]
    id_tag = tags.get("id", case_sensitive=True)
    record_id = None
    if id_tag is None:
        issues.append("the required id field is missing")
    elif not _ID.match(id_tag.value):
        issues.append(f"id '{shown(id_tag.value, 40)}' is not 1 to 32 letters and digits")
    else:
        record_id = id_tag.value
    return StsRecord(text, record_id, tuple(issues))


class TxtStatus(enum.StrEnum):
    """What the ``_mta-sts`` lookup found; anything but FOUND means senders see no MTA-STS (§3.1)."""

    FOUND = "found"
    NONE = "none"  # no v=STSv1 record (other TXT records at the name are discarded)
    MULTIPLE = "multiple"  # two or more v=STSv1 records (DNS-20)
    INVALID = "invalid"  # one, but not valid
    DNS_ERROR = "dns-error"


@frozen
class StsTxtFacts:
    """The ``_mta-sts.<domain>`` lookup: status, the record, every TXT string found there, the resolver's words."""

    domain: str
    status: TxtStatus
    record: StsRecord | None = None
    texts: tuple[str, ...] = ()
    detail: str = ""


def discover_txt(domain: str) -> Process[StsTxtFacts]:
    """The process that asks for ``_mta-sts.<domain>`` TXT and selects the record."""
    return Process(_discover_txt(domain.rstrip(".").lower()))


def _discover_txt(domain: str) -> Generator[Question, Reply, StsTxtFacts]:
    reply = yield Question(f"_mta-sts.{domain}", "TXT")
    if not reply.status.answered:
        return StsTxtFacts(domain, TxtStatus.DNS_ERROR, detail=reply.detail or reply.status)
    selected = select_txt(reply.records)
    if not selected:
        return StsTxtFacts(domain, TxtStatus.NONE, texts=reply.records)
    if len(selected) > 1:
        return StsTxtFacts(domain, TxtStatus.MULTIPLE, texts=reply.records)
    record = parse_txt(selected[0])
    status = TxtStatus.FOUND if record.valid else TxtStatus.INVALID
    return StsTxtFacts(domain, status, record, reply.records)


class StsMode(enum.StrEnum):
    """The policy mode (§5)."""

    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


class PolicyIssueKind(enum.StrEnum):
    """A problem in a policy file; each makes the policy invalid for senders except UNKNOWN_FIELD."""

    NOT_TEXT = "not-text"  # not ASCII text
    BAD_LINE = "bad-line"  # a line that is not "key: value"
    VERSION = "version"  # version missing or not STSv1
    MODE = "mode"  # mode missing or not enforce/testing/none
    MAX_AGE = "max-age"  # max_age missing, not a number, or above 31557600
    NO_MX = "no-mx"  # mode enforce/testing without any mx
    BAD_MX = "bad-mx"  # an mx pattern that is not a host name or *.domain
    DUPLICATE = "duplicate"  # a single-valued field given twice


@frozen
class PolicyIssue:
    """One problem, with the 1-based line it is on (0 for the whole file)."""

    kind: PolicyIssueKind
    line: int
    detail: str = ""


@frozen
class StsPolicy:
    """A parsed policy file (§3.2).

    Attributes:
        version: the ``version`` value, None when missing.
        mode: the mode, None when missing or invalid.
        max_age: seconds, None when missing or invalid.
        mx: the mx patterns in order.
        issues: problems; the policy is valid only without them.
    """

    version: str | None = None
    mode: StsMode | None = None
    max_age: int | None = None
    mx: tuple[str, ...] = ()
    issues: tuple[PolicyIssue, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.issues


def _valid_pattern(pattern: str) -> bool:
    name = pattern[2:] if pattern.startswith("*.") else pattern
    labels = name.rstrip(".").split(".")
    return len(labels) >= 2 and all(_LABEL.match(label) for label in labels)


def parse_policy(body: bytes) -> StsPolicy:
    """Parse a policy body (LF or CRLF lines of ``key: value``, §3.2 and erratum 6253). Never raises."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as exc:
        return StsPolicy(issues=(PolicyIssue(PolicyIssueKind.NOT_TEXT, 0, f"byte {exc.start} is not ASCII"),))
    issues: list[PolicyIssue] = []
    single: dict[str, tuple[str, int]] = {}
    mx: list[str] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        value = value.strip(" \t")
        if not colon or not key or key != key.strip():
            issues.append(PolicyIssue(PolicyIssueKind.BAD_LINE, number, f"'{shown(line, 60)}' is not 'key: value'"))
            continue
        if key == "mx":
            if not _valid_pattern(value):
                issues.append(PolicyIssue(PolicyIssueKind.BAD_MX, number, f"'{shown(value, 60)}'"))
            else:
                mx.append(value.rstrip(".").lower())
            continue
        if key in single:
            issues.append(PolicyIssue(PolicyIssueKind.DUPLICATE, number, f"{key} was given on line {single[key][1]}"))
            continue
        single[key] = (value, number)  # unknown keys are ignored (§3.2)
    version = single.get("version", (None, 0))[0]
    if version != "STSv1":
        issues.append(PolicyIssue(PolicyIssueKind.VERSION, single.get("version", ("", 0))[1], f"version: {version}"))
    mode = None
    mode_text, mode_line = single.get("mode", ("", 0))
    try:
        mode = StsMode(mode_text)
    except ValueError:
        issues.append(PolicyIssue(PolicyIssueKind.MODE, mode_line, f"mode: '{shown(mode_text, 20)}'"))
    max_age = None
    age_text, age_line = single.get("max_age", ("", 0))
    if age_text.isascii() and age_text.isdigit() and len(age_text) <= 10 and int(age_text) <= MAX_AGE_LIMIT:
        max_age = int(age_text)
    else:
        issues.append(PolicyIssue(PolicyIssueKind.MAX_AGE, age_line, f"max_age: '{shown(age_text, 20)}'"))
    if mode in (StsMode.ENFORCE, StsMode.TESTING) and not mx:
        issues.append(PolicyIssue(PolicyIssueKind.NO_MX, 0, f"mode {mode} names no mx"))
    return StsPolicy(version, mode, max_age, tuple(mx), tuple(issues))


def mx_matches(pattern: str, host: str) -> bool:
    """§4.1: exact (without case or trailing dot), or ``*.`` standing for exactly one leftmost label."""
    pattern = pattern.rstrip(".").lower()
    host = host.rstrip(".").lower()
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return host == pattern


@frozen
class MxCoverage:
    """One MX host and the first policy pattern that matches it; None means senders in enforce mode refuse it."""

    host: str
    pattern: str | None


def coverage(patterns: Sequence[str], mx_hosts: Sequence[str]) -> tuple[MxCoverage, ...]:
    """Each MX host with the pattern covering it."""
    return tuple(
        MxCoverage(host, next((p for p in patterns if mx_matches(p, host)), None)) for host in mx_hosts
    )


class FetchProblem(enum.StrEnum):
    """Why a fetched answer is not a policy senders accept (§3.3)."""

    FETCH_FAILED = "fetch-failed"  # no answer: connection, TLS or certificate failure, too large, timeout
    REDIRECT = "redirect"  # "HTTP 3xx redirects MUST NOT be followed"
    NOT_OK = "not-ok"  # any status other than 200
    NOT_TEXT_PLAIN = "not-text-plain"  # §3.2: the media type MUST be text/plain


def judge_fetch(facts: HttpsFacts) -> FetchProblem | None:
    """What the HTTPS answer is under §3.3; None when its body is the policy to parse."""
    if facts.error is not None or facts.status is None:
        return FetchProblem.FETCH_FAILED
    if 300 <= facts.status < 400:
        return FetchProblem.REDIRECT
    if facts.status != 200:
        return FetchProblem.NOT_OK
    if facts.content_type != "text/plain":
        return FetchProblem.NOT_TEXT_PLAIN
    return None


async def fetch_policy(
    domain: str,
    resolver: Resolver,
    *,
    context: ssl.SSLContext,
    timeout: float = 10.0,  # noqa: ASYNC109 - passed to the fetch, which bounds the whole exchange
    port: int = 443,
    max_addresses: int = 10,
) -> tuple[HttpsFacts, ...]:
    """Fetch ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` from every address of the host at once (IPv4
    ones first, then IPv6, each in ascending order), resolved with the run's resolver, over ``context``
    (:func:`diag.net.https.client_context`: the certificate validated against a CA file or the system store); one
    answer per address, in that order, within the one ``timeout``.

    Every address, not only the first that answers: a sender tries them in the order DNS gives (servers rotate
    it) and moves on when one fails, so an address that fails costs some senders time and others the policy,
    and which one a single try meets first is chance. Tried together, a silent address takes none of the
    others' time. At most ``max_addresses`` are tried (hostile DNS may list hundreds; DNS-10).
    """
    host = f"mta-sts.{domain.rstrip('.').lower()}"
    shown_port = "" if port == 443 else f":{port}"
    url = f"https://{host}{shown_port}{POLICY_PATH}"
    try:
        addresses = [r.to_text() for rdtype in ("A", "AAAA")
                     for r in sorted(await _addresses(resolver, host, rdtype), key=_address_key)]  # fmt: skip
    except DnsError as exc:
        return (HttpsFacts(url, "", error=FetchError.RESOLVE_FAILED, detail=str(exc)),)
    if not addresses:
        return (HttpsFacts(url, "", error=FetchError.RESOLVE_FAILED, detail=f"{host} has no address"),)
    return tuple(await asyncio.gather(*(
        fetch(host, ip, POLICY_PATH, context=context, port=port, timeout=timeout, max_bytes=MAX_POLICY_BYTES)
        for ip in addresses[:max_addresses]
    )))  # fmt: skip


def _address_key(rdata: dns.rdata.Rdata) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(rdata.to_text())


async def _addresses(resolver: Resolver, host: str, rdtype: str) -> tuple[dns.rdata.Rdata, ...]:
    answer = await resolver.query(host, rdtype)
    return answer.records if answer.status is DnsStatus.OK else ()
