"""DANE for SMTP (RFC 7672): the TLSA records of each MX host (``_25._tcp.<host>``), DNSSEC-validated, matched
against the certificate chain the host presented in the run's shared SMTP session (the port25 check's).

Only a TLSA set that validates (DNSSEC secure) counts: a TLSA record without DNSSEC is unusable, and a sender
ignores it (RFC 7672 §2.2). DANE-EE records (usage 3) are matched without name or date checks (§3.1.1); DANE-TA
records (usage 2) need the chain below the matched CA to verify and the leaf to name the MX host (§3.2).

An MX host name that is an alias (CNAME) whose chain and addresses validate has its TLSA records looked up at the
fully CNAME-expanded name first, and at the host name only when there are none there (RFC 7672 §2.2.2); both
names are then reference identifiers for DANE-TA (§3.2.2). When the chain is not secure end to end, only the host
name counts. The names come from the dnssec check's address answers (their ``aliases``): nothing is asked twice.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from checks.dnssec import DnssecFacts, secure
from checks.mx import MxFacts
from checks.port25 import Port25Facts
from diag import evidence as ev
from diag.context import CheckContext
from diag.evidence import Evidence, Failing, Observed, Section
from diag.frozen import frozen
from diag.model import Finding, Severity
from diag.policy.dane import Outcome as Match
from diag.policy.dane import TlsaMatch, TlsaRecord, Usage, authenticated, match_chain, parse_tlsa, tlsa_name
from diag.policy.dnssec import DnssecResult, Reason, Security
from diag.policy.lookup import ReplyStatus, shown
from diag.registry import Check, Outcome

__all__ = [
    "CHECK", "DaneEndpointRow", "DaneFacts", "DaneHostRow", "DaneView", "Endpoint", "HostTlsa", "TlsaBase", "TlsaRow",
    "assess", "probe", "view",
]  # fmt: skip

# Exchange Online's DANE errors (exchange-model.md §5.2); 4.7.32x while it retries, 5.7.32x when it gives up.
_DANE_FAILURE = "450 4.7.323 tlsa-invalid: The domain failed DANE validation."
_DNSSEC_INVALID = "450 4.7.324 dnssec-invalid"
_NO_STARTTLS = "450 4.7.321 starttls-not-supported: Destination mail server must support TLS to receive mail."


@frozen
class Endpoint:
    """One address of an MX host and what its presented chain made of the host's TLSA records.

    Attributes:
        endpoint: ``host [ip]:port``.
        tls: the session completed a TLS handshake (DANE needs STARTTLS).
        matches: each TLSA record judged against the presented chain.
    """

    endpoint: str
    tls: bool
    matches: tuple[TlsaMatch, ...] = ()


class TlsaBase(enum.StrEnum):
    """Whose ``_25._tcp`` name the TLSA records were taken from, and why (RFC 7672 §2.2.2)."""

    HOST = "host"  # the MX host name is no alias
    EXPANDED = "expanded"  # an alias whose CNAME chain and addresses validate: its fully CNAME-expanded name
    HOST_AFTER_EXPANDED = "host-after-expanded"  # such an alias, with no TLSA records at the expanded name
    ALIAS_NOT_SECURE = "alias-not-secure"  # an alias whose chain does not validate end to end: the host name only


@frozen
class HostTlsa:
    """The TLSA records of one MX host.

    Attributes:
        host: the MX host name.
        name: where the records were looked up (``_25._tcp.<host>``, or ``_25._tcp.<expanded name>``).
        dnssec: the TLSA answer's DNSSEC state (and its records).
        records: the records that parse as TLSA.
        endpoints: the host's probed addresses.
        base: whose name ``name`` is, and why.
        names: the names a DANE-TA leaf may carry: the host name, and the expanded name when the chain is secure.
        expanded: the answer at the expanded name when it had no TLSA records and the host name was asked next.
        signed: the host is in a signed zone, so DANE senders ask for its TLSA records and defer when that lookup
            fails (RFC 7672 §2.1.1, §2.2.1): its address answers validate, or, for an alias, its own CNAME does.
    """

    host: str
    name: str
    dnssec: DnssecResult
    records: tuple[TlsaRecord, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    base: TlsaBase = TlsaBase.HOST
    names: tuple[str, ...] = ()
    expanded: DnssecResult | None = None
    signed: bool = False


@frozen
class DaneFacts:
    """Every MX host's TLSA records and matches; ``checked_at`` is when DANE-TA leaves were judged valid."""

    hosts: tuple[HostTlsa, ...]
    checked_at: datetime


# RFC 7672 §2.1.1: a DANE sender treats an indeterminate answer like a bogus one, as a lookup failure, and
# defers. Of diag's indeterminate reasons, those are the failures of the DNS itself: no answer somewhere on the
# chain of trust (dns-error: SERVFAIL, a timeout, a DS or DNSKEY question unanswered) and a CNAME loop or a chain
# longer than resolvers follow (cname; they answer SERVFAIL). Not "no trust anchor covers the name" (no-anchor):
# that is diag's configuration (--trust-anchor), not the zone's; a sender validating from the root may well find
# the answer secure or insecure, so nothing says it defers. Nor "no DNSSEC material" (no-dnssec-material): the
# resolver diag asks does not implement EDNS, which says nothing about what a sender's resolver gets. Nor "no
# answer for the trust anchor's own keys" (anchor-unanswered): the root's keys are everyone's, so a resolver that
# does not give them (one that answers only its own zones, given with --resolver) is diag's, not the zone's.
_FAILURES = frozenset({Reason.DNS_ERROR, Reason.CNAME})


def _key(host: str) -> str:
    """A host name as the DNSSEC results name it (lower case, no trailing dot): an MX record may spell it in any
    case (RFC 4343)."""
    return host.rstrip(".").lower()


def _failed(r: DnssecResult) -> bool:
    return r.security is Security.INDETERMINATE and r.reason in _FAILURES


def _deferring(results: list[DnssecResult]) -> DnssecResult | None:
    """The answer a DANE sender defers on: a bogus one first, else one whose lookup failed."""
    return next((r for r in results if r.security is Security.BOGUS), None) or next(filter(_failed, results), None)


def assess(facts: DaneFacts, dnssec: DnssecFacts | None = None) -> tuple[Finding, ...]:
    """Judge DANE for each MX host and address; pure. ``dnssec`` (the dnssec check's facts: the MX answer's and
    each MX host's A and AAAA answers' states) turns a bogus or failed one into the deferral DANE senders make
    of it."""
    results = list(dnssec.results) if dnssec else []
    mx = _deferring([r for r in results if r.rdtype == "MX"])
    if mx is not None:  # no MX host is reached at all: there is nothing else to judge
        return (_mx_deferred(mx, "the domain's MX hosts"),)
    found: list[Finding] = []
    for host in facts.hosts:
        # RFC 7672 §2.2.1: both address answers count; a sender that validates gets SERVFAIL for a bogus AAAA
        address = _deferring([r for r in results if r.name == _key(host.host) and r.rdtype in ("A", "AAAA")])
        found.extend([_mx_deferred(address, host.host)] if address is not None else _assess_host(host))
    return tuple(found)


def _mx_deferred(r: DnssecResult, hosts: str) -> Finding:
    # RFC 7672 §2.1.1: a bogus (or failed) MX or address answer is a lookup failure, and a DANE sender defers the
    # mail rather than fall back to delivery without DANE (§2.2.1, §2.2.2).
    if r.security is not Security.BOGUS:
        return CHECK.finding(
            "DANE_LOOKUP_FAILED", f"{r.name} {r.rdtype}",
            f"The {r.rdtype} lookup for {r.name} fails on its chain of trust ({r.reason.value}"
            f"{' in ' + r.zone if r.zone else ''}: {shown(r.detail)}): DANE senders take that as a lookup failure "
            f"and defer delivery to {hosts} instead of sending without DANE (RFC 7672 §2.1.1).",
            "Make the nameservers answer for it, and for the DS and DNSKEY questions on the way, without a CNAME "
            "loop.",
        )  # fmt: skip
    return CHECK.finding(
        "DANE_MX_BOGUS", f"{r.name} {r.rdtype}",
        f"The {r.rdtype} answer for {r.name} fails DNSSEC validation ({r.reason.value} in {r.zone}: "
        f"{shown(r.detail)}): DANE senders defer delivery to {hosts} instead of sending without DANE "
        "(RFC 7672 §2.1.1).",
        "Re-sign the zone or fix its DS at the parent.", cloud_error=_DNSSEC_INVALID,
    )  # fmt: skip


def _assess_host(h: HostTlsa) -> list[Finding]:
    d = h.dnssec
    if d.security is Security.BOGUS:
        # Before the answer's status: a negative answer whose denial does not validate is no "no TLSA" either
        # (RFC 7672 §2.1.1).
        return [CHECK.finding(
            "DANE_TLSA_BOGUS", h.host,
            f"The TLSA answer at {h.name} (its records or their denial) fails DNSSEC validation ({d.reason.value}: "
            f"{shown(d.detail)}): DANE senders treat that as a failure and defer delivery to the host (RFC 7672 "
            "§2.1.1).",
            "Re-sign the zone or fix its DS at the parent.", cloud_error=_DNSSEC_INVALID,
        )]  # fmt: skip
    if h.signed and _failed(d):
        # RFC 7672 §2.1.1: in a signed zone a TLSA lookup failure is no "no TLSA" (outside one, senders do not ask).
        return [CHECK.finding(
            "DANE_LOOKUP_FAILED", h.host,
            f"The TLSA lookup at {h.name} fails ({d.reason.value}{' in ' + d.zone if d.zone else ''}: "
            f"{shown(d.detail)}) while {h.host} is in a signed zone: DANE senders take that as a lookup failure and "
            "defer delivery to the host instead of sending without DANE (RFC 7672 §2.1.1).",
            f"Make the nameservers answer TLSA questions for {h.name} (and the DS questions on the way).",
        )]  # fmt: skip
    if d.status is not ReplyStatus.OK:
        if d.reason in (Reason.NO_DNSSEC_MATERIAL, Reason.ANCHOR_UNANSWERED):
            gave = ("no DNSSEC material" if d.reason is Reason.NO_DNSSEC_MATERIAL else
                    f"no answer for the trust anchor's keys ({d.zone} DNSKEY)")  # fmt: skip
            return [CHECK.finding(
                "DANE_DNS_ERROR", h.host,
                f"DANE for {h.host} could not be judged: the resolver diag asked gave {gave} for {h.name} TLSA "
                f"({shown(d.detail)}).",
                "Run diag with a resolver that implements EDNS and answers for the whole DNS (--resolver), such as a "
                "validating resolver on this host.",
            )]  # fmt: skip
        if not d.status.answered:
            return [CHECK.finding("DANE_DNS_ERROR", h.host, f"DNS gave no answer for {h.name} TLSA "
                                  f"({shown(d.detail)}).", "Make the nameservers answer for it.")]  # fmt: skip
        where = h.name if h.expanded is None else f"{h.expanded.name} (its CNAME-expanded name) nor at {h.name}"
        return [CHECK.finding("DANE_NONE", h.host, f"{h.host} publishes no TLSA records at {where}: senders use "
                              "TLS without DANE authentication (MTA-STS may still apply).")]  # fmt: skip
    if d.security is not Security.SECURE:
        why = {Security.INSECURE: "the zone is not DNSSEC-signed"}.get(d.security, f"its DNSSEC state is unknown "
                                                                                    f"({d.reason.value})")
        return [CHECK.finding(
            "DANE_TLSA_INSECURE", h.host,
            f"{h.name} publishes TLSA records, but {why}: senders ignore TLSA records without DNSSEC "
            "(RFC 7672 §2.2), so the records protect nothing.",
            "Sign the zone (and publish its DS), or remove the TLSA records.",
        )]  # fmt: skip
    usable = [r for r in h.records if not r.problem]
    if not usable:
        problems = "; ".join(f"{shown(r.text, 40)}: {r.problem}" for r in h.records) or "none parses as TLSA"
        return [CHECK.finding(
            "DANE_TLSA_UNUSABLE", h.host,
            f"None of the TLSA records at {h.name} is usable for SMTP ({problems}); senders proceed as if there "
            "were none (RFC 7672 §2.2).", "Publish 3 1 1 (DANE-EE) or 2 1 1 (DANE-TA) records.",
        )]  # fmt: skip
    return [_assess_endpoint(h, e) for e in h.endpoints]


def _assess_endpoint(h: HostTlsa, e: Endpoint) -> Finding:
    if not e.tls:
        return CHECK.finding(
            "DANE_NO_TLS", e.endpoint,
            f"{h.host} publishes DNSSEC-signed TLSA records, but {e.endpoint} completed no STARTTLS handshake: DANE "
            "senders do not deliver to it (RFC 7672 §2.2).", "Make STARTTLS work on this address.",
            cloud_error=_NO_STARTTLS,
        )  # fmt: skip
    if authenticated(e.matches):
        which = ", ".join(shown(m.record.text, 24) for m in e.matches if m.outcome is Match.MATCHED)
        at = f" at {h.name}, its CNAME-expanded name" if h.base is TlsaBase.EXPANDED else ""
        return CHECK.finding("DANE_OK", e.endpoint, f"The chain {e.endpoint} presents matches its TLSA records{at} "
                             f"({which}).")  # fmt: skip
    reasons = "; ".join(f"{shown(m.record.text, 24)}: {m.outcome.value}{': ' + m.detail if m.detail else ''}"
                        for m in e.matches)  # fmt: skip
    return CHECK.finding(
        "DANE_MISMATCH", e.endpoint,
        f"No TLSA record at {h.name} matches the chain {e.endpoint} presents ({reasons}): DANE senders refuse to "
        "deliver to it.",
        "Publish TLSA records for the certificate the server now uses (publish the new one before a rollover).",
        cloud_error=_DANE_FAILURE,
    )  # fmt: skip


def _parse(texts: tuple[str, ...]) -> tuple[TlsaRecord, ...]:
    records = []
    for text in texts:
        try:
            records.append(parse_tlsa(text))
        except ValueError:
            continue
    return tuple(records)


def _nothing(r: DnssecResult) -> bool:
    """The answer holds no TLSA records, provably (a validated or provably unsigned denial)."""
    return r.status.void and r.security in (Security.SECURE, Security.INSECURE)


async def _lookup(
    ctx: CheckContext, host: str, addresses: list[DnssecResult]
) -> tuple[TlsaBase, DnssecResult, tuple[str, ...], DnssecResult | None, bool]:
    """Where ``host``'s TLSA records are (RFC 7672 §2.2.2), from its address answers' DNSSEC states: the base, the
    answer, the reference names, the answer at the expanded name when the host name was asked after it, and
    whether the host is in a signed zone."""
    secure_addresses = bool(addresses) and all(r.security is Security.SECURE for r in addresses)
    aliases = next((r.aliases for r in addresses if r.aliases), ())
    if not aliases:
        return TlsaBase.HOST, await secure(ctx, tlsa_name(host), "TLSA"), (host,), None, secure_addresses
    if secure_addresses:
        target = aliases[-1]
        expanded = await secure(ctx, tlsa_name(target), "TLSA")
        if not _nothing(expanded):
            return TlsaBase.EXPANDED, expanded, (host, target), None, True
        result = await secure(ctx, tlsa_name(host), "TLSA")
        return TlsaBase.HOST_AFTER_EXPANDED, result, (host, target), expanded, True
    # The chain does not validate end to end: the expanded name could be anyone's, only the host name counts. The
    # host is still in a signed zone when its own CNAME validates (validating the addresses from the trust anchor
    # asked that question already; with the AD bit it is asked here).
    own, result = await asyncio.gather(secure(ctx, host, "CNAME"), secure(ctx, tlsa_name(host), "TLSA"))
    return TlsaBase.ALIAS_NOT_SECURE, result, (host,), None, own.security is Security.SECURE


async def probe(ctx: CheckContext) -> DaneFacts | None:
    """The TLSA records of each MX host name, matched per address; None when there is no host name."""
    mx = ctx.facts("mx", MxFacts)
    port25 = ctx.facts("port25", Port25Facts)
    dnssec = ctx.facts("dnssec", DnssecFacts)
    hosts = [h.name for h in mx.hosts if h.valid_name and not h.ip_literal]
    hosts = list(dict.fromkeys(hosts))
    if not hosts:
        return None
    lookups = await asyncio.gather(*(
        _lookup(ctx, host, [r for r in dnssec.results if r.name == _key(host) and r.rdtype in ("A", "AAAA")])
        for host in hosts
    ))  # fmt: skip
    now = datetime.now(UTC)
    facts_hosts = []
    for host, (base, result, names, expanded, signed) in zip(hosts, lookups, strict=True):
        records = _parse(result.records)
        endpoints = tuple(
            Endpoint(p.endpoint, p.session.tls is not None,
                     match_chain(records, p.session.tls.chain_der, host, at=now, names=names)
                     if p.session.tls else ())
            for p in port25.probed if p.host == host
        )  # fmt: skip
        facts_hosts.append(HostTlsa(host, result.name, result, records, endpoints, base, names, expanded, signed))
    return DaneFacts(tuple(facts_hosts), now)


async def run(ctx: CheckContext) -> Outcome:
    facts = await probe(ctx)
    if facts is None:
        return Outcome.inapplicable("no MX host name to look up TLSA records for")
    return Outcome(facts, assess(facts, ctx.facts("dnssec", DnssecFacts)))


# The report's evidence (report_templates/checks/dane.html.j2), from the facts as a report holds them (their JSON
# form, read defensively: diag.evidence).

_SELECTORS = {0: "full certificate", 1: "public key"}
_MATCHING = {0: "exact", 1: "SHA-256", 2: "SHA-512"}
_SECURITY_TONES = {Security.SECURE.value: "good", Security.INSECURE.value: "warn", Security.BOGUS.value: "bad"}
_CHAIN_PLACES = {0: "the leaf"}


@frozen
class TlsaRow:
    """A TLSA record as published, what its parameters mean (RFC 7218 names) and why SMTP cannot use it, if so."""

    text: str
    meaning: str
    problem: str


@frozen
class DaneEndpointRow:
    """One address of the host: whether its presented chain matches a TLSA record, in words, with its tone."""

    endpoint: str
    result: str
    tone: str
    failing: tuple[Failing, ...]


@frozen
class DaneHostRow:
    """One MX host: where its TLSA records are, why that name and whether DANE senders ask for them at all
    (``lookup``, in words), the names a DANE-TA leaf may carry (when more than the host name), their DNSSEC
    state, the records and each address's match."""

    host: str
    name: str
    dnssec: str
    dnssec_tone: str
    records: tuple[TlsaRow, ...]
    endpoints: tuple[DaneEndpointRow, ...]
    lookup: str = ""
    names: str = ""


@frozen
class DaneView:
    """The DANE evidence: a block per MX host."""

    hosts: tuple[DaneHostRow, ...]


def view(observed: Observed) -> DaneView:
    failing = ev.failing_by_subject(observed.findings)
    hosts = []
    for host in ev.mappings(observed.facts.get("hosts")):
        dnssec = ev.mapping(host.get("dnssec"))
        security, status = ev.text(dnssec.get("security")), ev.text(dnssec.get("status"))
        records = tuple(_tlsa_row(ev.text(text)) for text in ev.items(dnssec.get("records")))
        if status == ReplyStatus.OK.value:
            state = f"DNSSEC {security}" + (f" ({ev.text(dnssec.get('reason'))})" if security != "secure" else "")
        else:
            state = f"no TLSA records ({status}), DNSSEC {security}" if status else ""
        names = [ev.text(n) for n in ev.items(host.get("names"))]
        hosts.append(DaneHostRow(
            host=ev.text(host.get("host")),
            name=ev.text(host.get("name")),
            lookup=_lookup_words(host, names),
            names=", ".join(names) if len(names) > 1 else "",
            dnssec=state,
            dnssec_tone=_SECURITY_TONES.get(security, "unknown") if records or security == "bogus" else "plain",
            records=records,
            endpoints=tuple(_endpoint_row(e, failing, secure=security == Security.SECURE.value)
                            for e in ev.mappings(host.get("endpoints"))) if records else (),
        ))  # fmt: skip
    return DaneView(tuple(hosts))


def _lookup_words(host: Mapping[str, Any], names: list[str]) -> str:
    """Why the records were looked up where they were (RFC 7672 §2.2.2), and whether senders ask at all."""
    base, target = ev.text(host.get("base")), names[-1] if len(names) > 1 else ""
    expanded = ev.mapping(host.get("expanded"))
    words = {
        TlsaBase.EXPANDED.value: f"an alias for {target}, every link validated: the CNAME-expanded name's records "
                                 "count first (RFC 7672 §2.2.2)",
        TlsaBase.HOST_AFTER_EXPANDED.value: f"an alias for {target}, every link validated; no TLSA records at "
                                            f"{ev.text(expanded.get('name'))} ({ev.text(expanded.get('status'))}), "
                                            "so the host name's count (RFC 7672 §2.2.2)",
        TlsaBase.ALIAS_NOT_SECURE.value: "an alias whose CNAME chain does not validate end to end: only the host "
                                         "name's records count (RFC 7672 §2.2.2)",
    }.get(base, "")
    if host.get("signed") is True:
        zone = "in a signed zone: DANE senders ask for its TLSA records, and defer when that lookup fails"
    elif host.get("signed") is False:
        zone = ("its address answers do not validate as secure: DANE senders ask for the TLSA records of hosts in "
                "signed zones only (RFC 7672 §2.2.1)")
    else:
        zone = ""
    return "; ".join(w for w in (words, zone) if w)


def _tlsa_row(text: str) -> TlsaRow:
    try:
        record = parse_tlsa(text)
    except ValueError as exc:
        return TlsaRow(text, "", str(exc))
    usage = Usage(record.usage).name.replace("_", "-") if record.usage in tuple(Usage) else f"usage {record.usage}"
    meaning = ", ".join((usage, _SELECTORS.get(record.selector, f"selector {record.selector}"),
                         _MATCHING.get(record.matching_type, f"matching type {record.matching_type}")))  # fmt: skip
    return TlsaRow(text, meaning, record.problem)


def _endpoint_row(endpoint: Mapping[str, Any], failing: Mapping[str, list[ev.Shown]], *, secure: bool
                  ) -> DaneEndpointRow:  # fmt: skip
    name = ev.text(endpoint.get("endpoint"))
    matches = ev.mappings(endpoint.get("matches"))
    matched = [m for m in matches if m.get("outcome") == Match.MATCHED.value]
    if endpoint.get("tls") is not True:
        result, tone = "no TLS: DANE senders do not deliver", "bad"
    elif matched:
        places = [_CHAIN_PLACES.get(p, f"the CA certificate at chain position {p}") if isinstance(p, int) else
                  "the chain" for p in (m.get("position") for m in matched)]  # fmt: skip
        texts = [ev.text(ev.mapping(m.get("record")).get("text")) for m in matched]
        result = "; ".join(f"{text} matches {place}" for text, place in zip(texts, places, strict=True))
        tone = "good"
    else:
        why = [f"{ev.text(ev.mapping(m.get('record')).get('text'))}: {ev.text(m.get('outcome'))}"
               + (f" ({ev.text(m.get('detail'))})" if m.get("detail") else "") for m in matches]  # fmt: skip
        result, tone = "no record matches" + (f": {'; '.join(why)}" if why else ""), "bad"
    if not secure:  # RFC 7672 §2.2: senders ignore TLSA records that do not validate, matching or not
        result, tone = f"{result}; senders ignore the records: they are not DNSSEC-validated", "warn"
    return DaneEndpointRow(name, result, tone, tuple(Failing.of(f, f.code) for f in failing.get(name, ())))


CHECK = Check(
    id="dane",
    title="DANE (TLSA)",
    run=run,
    facts=DaneFacts,
    evidence=Evidence("DANE", view, Section.POLICY),
    requires=("mx", "port25", "dnssec"),
    operations=6,
    tags=frozenset({"dnssec"}),
    lazy_imports=("diag.net.tls",),  # cryptography, to match the records (diag.policy.dane.match_chain)
    codes={
        "DANE_OK": Severity.INFO,
        "DANE_NONE": Severity.INFO,
        "DANE_MISMATCH": Severity.CRITICAL,
        "DANE_NO_TLS": Severity.CRITICAL,
        "DANE_TLSA_BOGUS": Severity.CRITICAL,
        "DANE_MX_BOGUS": Severity.CRITICAL,
        "DANE_LOOKUP_FAILED": Severity.CRITICAL,
        "DANE_TLSA_INSECURE": Severity.WARNING,
        "DANE_TLSA_UNUSABLE": Severity.WARNING,
        "DANE_DNS_ERROR": Severity.WARNING,
    },
    meanings={
        "DANE_OK": "A DNSSEC-validated TLSA record matches the chain the MX address presents.",
        "DANE_NONE": "The MX host publishes no TLSA records (no DANE).",
        "DANE_MISMATCH": "No usable TLSA record matches the presented chain: DANE senders do not deliver.",
        "DANE_NO_TLS": "TLSA records are published, but the address completes no STARTTLS handshake.",
        "DANE_TLSA_BOGUS": "The TLSA answer (records or their denial) fails DNSSEC validation: DANE senders defer.",
        "DANE_MX_BOGUS": "The MX answer or an MX host's address fails DNSSEC validation: DANE senders defer.",
        "DANE_LOOKUP_FAILED": "The MX, an address or (in a signed zone) the TLSA lookup fails on its chain of trust "
        "(no answer, a CNAME loop): DANE senders defer.",
        "DANE_TLSA_INSECURE": "TLSA records without DNSSEC (unsigned zone or unknown state): unusable.",
        "DANE_TLSA_UNUSABLE": "Only TLSA records an SMTP client cannot use (usage 0/1, unknown parameters).",
        "DANE_DNS_ERROR": "The TLSA lookup got no answer.",
    },
)
