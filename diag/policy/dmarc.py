"""DMARC (RFC 7489, with the tags DMARCbis, RFC 9989, adds): find the record, parse it, check report authorizations.

:func:`discover` is a :class:`~diag.policy.lookup.Process`: it asks for ``_dmarc.<domain>``, falls back to
``_dmarc.<organizational domain>`` (§6.6.3), and then, for each ``rua``/``ruf`` address in another
organizational domain, for the external verification record ``<domain>._report._dmarc.<destination>``
(§7.1). The organizational domains come from the caller (:class:`diag.policy.orgdomain.OrgDomains`), so the
process stays free of the PSL's loading as well as of I/O.

Where DMARCbis changes what a record means it is noted on the field: ``pct`` is gone there (``t=y`` replaces
it), ``np`` and ``psd`` are new, ``rf`` and ``ri`` are gone.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Generator

from diag.frozen import frozen
from diag.policy.lookup import Process, Question, Reply, shown
from diag.policy.tags import TagList, parse_tags

__all__ = [
    "Alignment",
    "AuthorizationStatus",
    "DmarcDiscovery",
    "DmarcIssue",
    "DmarcIssueKind",
    "DmarcPolicy",
    "DmarcRecord",
    "DmarcStatus",
    "ReportAuthorization",
    "ReportUri",
    "discover",
    "parse_record",
    "select_records",
]

_VERSION = re.compile(r"v\s*=\s*DMARC1\s*(;|\Z)")  # §6.4: "v" first, value exactly DMARC1
_MAILBOX = re.compile(r"[^@\s]+@([A-Za-z0-9.-]+)\Z")
_SIZE = re.compile(r"\d+[kmgt]?\Z", re.IGNORECASE)
_FO = frozenset("01ds")
_KNOWN = frozenset({"v", "p", "sp", "np", "pct", "adkim", "aspf", "rua", "ruf", "fo", "rf", "ri", "psd", "t"})


class DmarcPolicy(enum.StrEnum):
    """What the domain owner asks receivers to do with failing mail (§6.3 ``p``)."""

    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


class Alignment(enum.StrEnum):
    """Identifier alignment mode (§3.1): relaxed (same organizational domain) or strict (same name)."""

    RELAXED = "r"
    STRICT = "s"


class DmarcIssueKind(enum.StrEnum):
    """Something wrong with a DMARC record or its discovery."""

    SYNTAX = "syntax"  # the tag list itself is malformed
    NOT_FIRST = "version-not-first"  # v=DMARC1 must be the first tag (§6.4)
    NO_POLICY = "no-policy"  # p missing or invalid (§6.6.3: treated as p=none if rua is valid, else no DMARC)
    BAD_VALUE = "bad-value"  # a known tag with a value outside its grammar
    UNKNOWN_TAG = "unknown-tag"  # ignored by receivers (§6.3), probably a typo
    BAD_URI = "bad-uri"  # a rua/ruf entry that is not a usable mailto: URI
    PCT_PARTIAL = "pct-partial"  # pct below 100: the policy applies to a sample only


@frozen
class DmarcIssue:
    """One problem in a record: its kind, the tag, and what is wrong (with the offset for syntax)."""

    kind: DmarcIssueKind
    tag: str = ""
    detail: str = ""
    position: int = 0


@frozen
class ReportUri:
    """One ``rua``/``ruf`` entry (§6.2): the URI, the destination domain of a ``mailto:``, the size limit."""

    uri: str
    scheme: str
    destination: str | None
    size_limit: str | None = None


@frozen
class DmarcRecord:
    """A parsed DMARC record, with the defaults of §6.3 applied where a tag is absent.

    Attributes:
        text: as published.
        policy: ``p``, or None when missing or invalid (see ``issues``).
        subdomain_policy: ``sp``, defaulting to ``p``.
        nonexistent_policy: ``np`` (RFC 9091, DMARCbis), defaulting to ``sp``.
        pct: percentage of failing mail the policy applies to (RFC 7489; removed in DMARCbis).
        adkim, aspf: alignment modes, relaxed by default.
        rua, ruf: aggregate and failure report addresses.
        fo: failure reporting options (``0`` by default).
        testing: DMARCbis ``t=y``.
        psd: DMARCbis ``psd`` (``y``, ``n``, ``u``) or None.
        issues: problems, in record order.
    """

    text: str
    policy: DmarcPolicy | None = None
    subdomain_policy: DmarcPolicy | None = None
    nonexistent_policy: DmarcPolicy | None = None
    pct: int = 100
    adkim: Alignment = Alignment.RELAXED
    aspf: Alignment = Alignment.RELAXED
    rua: tuple[ReportUri, ...] = ()
    ruf: tuple[ReportUri, ...] = ()
    fo: tuple[str, ...] = ("0",)
    testing: bool = False
    psd: str | None = None
    issues: tuple[DmarcIssue, ...] = ()

    @property
    def effective_policy(self) -> DmarcPolicy | None:
        """What receivers apply: ``p``, or ``none`` when ``p`` is unusable but a valid ``rua`` exists (§6.6.3)."""
        if self.policy is not None:
            return self.policy
        return DmarcPolicy.NONE if any(u.destination for u in self.rua) else None


def select_records(texts: tuple[str, ...]) -> tuple[str, ...]:
    """The TXT records that are DMARC records: starting with ``v=DMARC1`` (§6.6.3 step 3)."""
    return tuple(t for t in texts if _VERSION.match(t.lstrip()))


def _policy(tags: TagList, name: str, issues: list[DmarcIssue]) -> DmarcPolicy | None:
    tag = tags.get(name)
    if tag is None:
        return None
    try:
        return DmarcPolicy(tag.value.lower())
    except ValueError:
        kind = DmarcIssueKind.NO_POLICY if name == "p" else DmarcIssueKind.BAD_VALUE
        message = f"'{shown(tag.value, 60)}' is not none, quarantine or reject"
        issues.append(DmarcIssue(kind, name, message, tag.position))
        return None


def _uris(tags: TagList, name: str, issues: list[DmarcIssue]) -> tuple[ReportUri, ...]:
    tag = tags.get(name)
    if tag is None:
        return ()
    found: list[ReportUri] = []
    for raw in tag.value.split(","):
        text = raw.strip()
        uri, bang, size = text.partition("!")
        scheme, colon, rest = uri.partition(":")
        if bang and not _SIZE.match(size):
            issues.append(DmarcIssue(DmarcIssueKind.BAD_URI, name, f"'{shown(text, 80)}': bad size limit"))
            continue
        if not colon or scheme.lower() != "mailto":
            # §6.2 allows any URI; §6.4 only requires mailto: support, and receivers send to nothing else.
            issues.append(DmarcIssue(DmarcIssueKind.BAD_URI, name, f"'{shown(text, 80)}' is not a mailto: URI"))
            found.append(ReportUri(uri, scheme.lower(), None, size or None))
            continue
        mailbox = _MAILBOX.match(rest)
        if mailbox is None:
            issues.append(DmarcIssue(DmarcIssueKind.BAD_URI, name, f"'{shown(text, 80)}' has no valid address"))
            continue
        found.append(ReportUri(uri, "mailto", mailbox.group(1).rstrip(".").lower(), size or None))
    return tuple(found)


def parse_record(text: str) -> DmarcRecord:
    """Parse one DMARC record (see :func:`select_records`). Never raises; problems are ``issues``."""
    tags = parse_tags(text)
    issues = [DmarcIssue(DmarcIssueKind.SYNTAX, detail=i.message, position=i.position) for i in tags.issues]
    if not tags.tags or tags.tags[0].name.lower() != "v" or tags.tags[0].value != "DMARC1":
        issues.append(DmarcIssue(DmarcIssueKind.NOT_FIRST, "v", "v=DMARC1 must be the first tag"))
    policy = _policy(tags, "p", issues)
    if tags.get("p") is None:
        issues.append(DmarcIssue(DmarcIssueKind.NO_POLICY, "p", "the required p tag is missing"))
    subdomain = _policy(tags, "sp", issues) or policy
    nonexistent = _policy(tags, "np", issues) or subdomain
    pct = 100
    if (pct_tag := tags.get("pct")) is not None:
        if pct_tag.value.isdigit() and 0 <= int(pct_tag.value) <= 100:
            pct = int(pct_tag.value)
            if pct < 100:
                issues.append(DmarcIssue(DmarcIssueKind.PCT_PARTIAL, "pct", f"pct={pct}", pct_tag.position))
        else:
            issues.append(DmarcIssue(DmarcIssueKind.BAD_VALUE, "pct", f"'{shown(pct_tag.value, 20)}' is not 0-100"))
    alignment = {}
    for name in ("adkim", "aspf"):
        tag = tags.get(name)
        alignment[name] = Alignment.RELAXED
        if tag is not None:
            try:
                alignment[name] = Alignment(tag.value.lower())
            except ValueError:
                issues.append(DmarcIssue(DmarcIssueKind.BAD_VALUE, name, f"'{shown(tag.value, 20)}' is not r or s"))
    fo: tuple[str, ...] = ("0",)
    if (fo_tag := tags.get("fo")) is not None:
        fo = tuple(part.strip() for part in fo_tag.value.split(":"))
        if not all(part in _FO for part in fo):
            message = f"'{shown(fo_tag.value, 20)}': options are 0, 1, d, s"
            issues.append(DmarcIssue(DmarcIssueKind.BAD_VALUE, "fo", message))
    testing = False
    if (t_tag := tags.get("t")) is not None:
        testing = t_tag.value.lower() == "y"
        if t_tag.value.lower() not in ("y", "n"):
            issues.append(DmarcIssue(DmarcIssueKind.BAD_VALUE, "t", f"'{shown(t_tag.value, 20)}' is not y or n"))
    psd = None
    if (psd_tag := tags.get("psd")) is not None:
        psd = psd_tag.value.lower()
        if psd not in ("y", "n", "u"):
            message = f"'{shown(psd_tag.value, 20)}' is not y, n or u"
            issues.append(DmarcIssue(DmarcIssueKind.BAD_VALUE, "psd", message))
    if (ri := tags.get("ri")) is not None and not ri.value.isdigit():
        message = f"'{shown(ri.value, 20)}' is not a number of seconds"
        issues.append(DmarcIssue(DmarcIssueKind.BAD_VALUE, "ri", message))
    rua = _uris(tags, "rua", issues)
    ruf = _uris(tags, "ruf", issues)
    for tag in tags.tags:
        if tag.name.lower() not in _KNOWN:
            issues.append(DmarcIssue(DmarcIssueKind.UNKNOWN_TAG, tag.name, "receivers ignore it", tag.position))
    return DmarcRecord(
        text, policy, subdomain, nonexistent, pct, alignment["adkim"], alignment["aspf"], rua, ruf, fo,
        testing, psd, tuple(issues),
    )  # fmt: skip


class DmarcStatus(enum.StrEnum):
    """How discovery ended (§6.6.3)."""

    FOUND = "found"
    NONE = "none"  # no record at the domain or its organizational domain
    MULTIPLE = "multiple"  # more than one v=DMARC1 record where it looked: no DMARC processing
    DNS_ERROR = "dns-error"  # no answer: receivers defer judgement (temperror)


class AuthorizationStatus(enum.StrEnum):
    """The external report destination verification (§7.1)."""

    NOT_NEEDED = "not-needed"  # same organizational domain
    AUTHORIZED = "authorized"  # the verification record exists
    MISSING = "missing"  # receivers will not send reports there
    DNS_ERROR = "dns-error"


@frozen
class ReportAuthorization:
    """Whether one report destination accepts reports for the domain (§7.1).

    Attributes:
        tag: ``rua`` or ``ruf``.
        uri: the entry as written.
        destination: its domain.
        record_name: the verification record's name, when one is needed.
        status: see :class:`AuthorizationStatus`.
    """

    tag: str
    uri: str
    destination: str
    record_name: str | None
    status: AuthorizationStatus


@frozen
class DmarcDiscovery:
    """What DMARC discovery found for a domain.

    Attributes:
        domain: the domain asked about.
        organizational_domain: its organizational domain (RFC 7489 §3.2).
        status: found, none, multiple or DNS error.
        found_at: the domain whose ``_dmarc`` name holds the record (the domain or its organizational domain).
        record: the parsed record when found.
        texts: the ``v=DMARC1`` records where discovery stopped (two or more for MULTIPLE).
        authorizations: one per rua/ruf mailto destination.
        detail: the resolver's words for a DNS error.
    """

    domain: str
    organizational_domain: str
    status: DmarcStatus
    found_at: str | None = None
    record: DmarcRecord | None = None
    texts: tuple[str, ...] = ()
    authorizations: tuple[ReportAuthorization, ...] = ()
    detail: str = ""

    @property
    def inherited(self) -> bool:
        """The record is the organizational domain's, so ``sp`` (not ``p``) applies to this domain."""
        return self.found_at is not None and self.found_at != self.domain


def discover(domain: str, organizational: Callable[[str], str]) -> Process[DmarcDiscovery]:
    """The process that finds ``domain``'s DMARC record and checks its report destinations.

    ``organizational`` maps a domain to its organizational domain (``OrgDomains().organizational``).
    """
    return Process(_discover(domain.rstrip(".").lower(), organizational))


def _lookup(name: str) -> Generator[Question, Reply, tuple[DmarcStatus, tuple[str, ...], str]]:
    reply = yield Question(f"_dmarc.{name}", "TXT")
    if not reply.status.answered:
        return DmarcStatus.DNS_ERROR, (), reply.detail or reply.status.value
    texts = select_records(reply.records)
    if not texts:
        return DmarcStatus.NONE, (), ""
    if len(texts) > 1:
        return DmarcStatus.MULTIPLE, texts, ""
    return DmarcStatus.FOUND, texts, ""


def _discover(domain: str, organizational: Callable[[str], str]) -> Generator[Question, Reply, DmarcDiscovery]:
    org = organizational(domain)
    status, texts, detail = yield from _lookup(domain)
    found_at = domain
    if status is DmarcStatus.NONE and org != domain:
        status, texts, detail = yield from _lookup(org)
        found_at = org
    if status is not DmarcStatus.FOUND:
        return DmarcDiscovery(domain, org, status, texts=texts, detail=detail)
    record = parse_record(texts[0])
    authorizations: list[ReportAuthorization] = []
    for tag, uris in (("rua", record.rua), ("ruf", record.ruf)):
        for uri in uris:
            if uri.destination is None:
                continue
            authorizations.append((yield from _authorize(tag, uri, found_at, organizational)))
    return DmarcDiscovery(domain, org, status, found_at, record, texts, tuple(authorizations))


def _authorize(
    tag: str, uri: ReportUri, found_at: str, organizational: Callable[[str], str]
) -> Generator[Question, Reply, ReportAuthorization]:
    assert uri.destination is not None
    if organizational(uri.destination) == organizational(found_at):
        return ReportAuthorization(tag, uri.uri, uri.destination, None, AuthorizationStatus.NOT_NEEDED)
    # §7.1: "<domain>._report._dmarc.<destination>", the domain being the one the policy was retrieved from.
    name = f"{found_at}._report._dmarc.{uri.destination}"
    reply = yield Question(name, "TXT")
    if not reply.status.answered:
        status = AuthorizationStatus.DNS_ERROR
    elif select_records(reply.records):
        status = AuthorizationStatus.AUTHORIZED
    else:
        status = AuthorizationStatus.MISSING
    return ReportAuthorization(tag, uri.uri, uri.destination, name, status)

