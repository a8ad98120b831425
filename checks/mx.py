"""MX records: which hosts receive mail for the domain, in preference order, with their addresses.

RFC 5321 §5.1 (MX lookup, implicit MX), RFC 7505 (null MX), RFC 2181 §10.3 (an MX target must not be an alias).
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import re
from dataclasses import dataclass

import dns.rdtypes.ANY.MX

from diag import evidence as ev
from diag.context import CheckContext
from diag.evidence import Evidence, Observed
from diag.model import Finding, Severity
from diag.net.dns import DnsStatus, name_text
from diag.registry import Check, Outcome

__all__ = ["CHECK", "MxFacts", "MxHost", "MxRow", "MxView", "assess", "probe", "view"]

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class MxHost:
    """One mail exchanger.

    Attributes:
        preference: MX preference (lower is tried first); 0 for the implicit MX.
        name: the target host name, without trailing dot.
        addresses: its IPv4 then IPv6 addresses (the literal itself for an IP-literal target).
        canonical_name: where its address records were found after CNAMEs; equal to ``name`` without one.
        ip_literal: the target is an IP address written as a name.
        valid_name: the target is a syntactically valid host name (letters, digits, hyphens).
    """

    preference: int
    name: str
    addresses: tuple[str, ...] = ()
    canonical_name: str = ""
    ip_literal: bool = False
    valid_name: bool = True

    @property
    def via_cname(self) -> bool:
        return bool(self.canonical_name) and self.canonical_name.lower() != self.name.lower()


@dataclass(frozen=True, slots=True)
class MxFacts:
    """What DNS said about the domain's mail exchangers.

    Attributes:
        domain: the domain, as an A-label name.
        status: the MX query's outcome (data, NXDOMAIN or NODATA).
        null_mx: the domain publishes a null MX (``0 .``): it accepts no mail.
        implicit: no MX records; the domain's own addresses are the implicit MX.
        hosts: the usable mail exchangers in preference order (null MX entries excluded).
        duplicates: host names listed more than once.
        expected: the patterns MX hosts were required to match (``--expect-mx``, and the cloud host of the
            organization's configuration for its accepted domains).
        accepted: the domain is an accepted domain of the organization's configuration.
    """

    domain: str
    status: DnsStatus
    null_mx: bool = False
    implicit: bool = False
    hosts: tuple[MxHost, ...] = ()
    duplicates: tuple[str, ...] = ()
    expected: tuple[str, ...] = ()
    accepted: bool = False


def _valid_host_name(name: str) -> bool:
    return all(_LABEL.match(label) for label in name.split("."))


def _ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


async def _host(ctx: CheckContext, preference: int, name: str) -> MxHost:
    if _ip_literal(name):
        # Postfix uses such a target as an address (security-cases.md DNS-06); so do we, after flagging it.
        return MxHost(preference, name, (name.strip("[]"),), name, ip_literal=True)
    if not _valid_host_name(name):
        # Never look up or connect to a name that cannot be a host (DNS-12).
        return MxHost(preference, name, valid_name=False)
    a, aaaa = await asyncio.gather(ctx.resolver.query(name, "A"), ctx.resolver.query(name, "AAAA"))
    addresses = tuple(r.to_text() for r in a.records) + tuple(r.to_text() for r in aaaa.records)
    return MxHost(preference, name, addresses, a.canonical_name if a.records else aaaa.canonical_name)


async def probe(ctx: CheckContext) -> MxFacts:
    domain = ctx.domain
    expected = ctx.options.expect_mx
    org = ctx.options.organization
    accepted = org is not None and org.accepted(domain) is not None
    if accepted and org is not None and org.mx_host:
        expected = (*expected, org.mx_host)
    answer = await ctx.resolver.query(domain, "MX")
    if answer.status is DnsStatus.NXDOMAIN:
        return MxFacts(domain, answer.status, expected=expected, accepted=accepted)
    if answer.status is DnsStatus.NODATA:
        implicit = await _host(ctx, 0, domain)
        return MxFacts(domain, answer.status, implicit=True, hosts=(implicit,), expected=expected, accepted=accepted)
    records = sorted(
        (r for r in answer.records if isinstance(r, dns.rdtypes.ANY.MX.MX)),
        key=lambda r: (r.preference, name_text(r.exchange).lower()),
    )
    null_mx = any(name_text(r.exchange) == "." for r in records)
    targets: list[tuple[int, str]] = []
    seen: set[str] = set()
    duplicates: list[str] = []
    for record in records:
        name = name_text(record.exchange)
        if name == ".":
            continue
        if name.lower() in seen:
            duplicates.append(name)
            continue
        seen.add(name.lower())
        targets.append((record.preference, name))
    hosts = await asyncio.gather(*(_host(ctx, preference, name) for preference, name in targets))
    return MxFacts(
        domain, answer.status, null_mx=null_mx, hosts=tuple(hosts), duplicates=tuple(duplicates),
        expected=expected, accepted=accepted,
    )  # fmt: skip


def assess(facts: MxFacts) -> tuple[Finding, ...]:
    """Judge the MX facts; pure."""
    domain = facts.domain
    found: list[Finding] = []
    if facts.status is DnsStatus.NXDOMAIN:
        return (
            CHECK.finding(
                "MX_DOMAIN_NXDOMAIN", domain,
                f"The domain {domain} does not exist in DNS (NXDOMAIN), so no mail can be delivered to it.",
                "Check the spelling, or register and delegate the domain before pointing mail at it.",
                cloud_error="450 4.4.312 DNS query failed",
            ),
        )  # fmt: skip
    if facts.null_mx:
        if facts.hosts:
            found.append(CHECK.finding(
                "MX_NULL_MIXED", domain,
                f"{domain} publishes a null MX (0 .) next to other MX records; receivers may treat the whole "
                "domain as accepting no mail.",
                "Remove the null MX record if the domain receives mail, or the other MX records if it does not "
                "(RFC 7505 §3).",
            ))  # fmt: skip
        elif facts.accepted:
            return (
                CHECK.finding(
                    "MX_NULL_ACCEPTED", domain,
                    f"{domain} is an accepted domain of the organization but publishes a null MX (0 .): every "
                    "sender bounces mail to it (556 5.1.10).",
                    "Replace the null MX with the cloud service's MX host for the domain.",
                ),
            )  # fmt: skip
        else:
            return (
                CHECK.finding(
                    "MX_NULL", domain,
                    f"{domain} publishes a null MX (0 .): it declares that it accepts no mail (senders bounce "
                    "with 556 5.1.10).",
                    "Nothing to do if the domain never receives mail; otherwise replace the null MX with the "
                    "real mail exchangers.",
                ),
            )  # fmt: skip
    if facts.implicit:
        found.append(CHECK.finding(
            "MX_NONE_IMPLICIT", domain,
            f"{domain} has no MX record; senders fall back to its own address records (implicit MX).",
            f"Publish an MX record for {domain} naming the host that should receive its mail "
            "(RFC 5321 §5.1).",
        ))  # fmt: skip
    for name in facts.duplicates:
        found.append(CHECK.finding(
            "MX_DUPLICATE", name,
            f"{name} is listed more than once among the MX records of {domain}.",
            "Remove the duplicate MX record; keep one entry per host with the intended preference.",
        ))  # fmt: skip
    for host in facts.hosts:
        found.extend(_assess_host(facts, host))
    return tuple(found)


def _assess_host(facts: MxFacts, host: MxHost) -> list[Finding]:
    found: list[Finding] = []
    subject = host.name
    if host.ip_literal:
        found.append(CHECK.finding(
            "MX_TARGET_IP_LITERAL", subject,
            f"The MX record of {facts.domain} names an IP address ({host.name}) instead of a host name.",
            "Point the MX record at a host name that has an A/AAAA record (RFC 5321 §5.1 requires a name).",
        ))  # fmt: skip
    elif not host.valid_name:
        found.append(CHECK.finding(
            "MX_TARGET_INVALID", subject,
            f"The MX target of {facts.domain} is not a valid host name; it was not looked up or contacted.",
            "Correct the MX record: a host name has only letters, digits and hyphens in its labels.",
        ))  # fmt: skip
        return found
    if host.via_cname:
        found.append(CHECK.finding(
            "MX_TARGET_CNAME", subject,
            f"The MX target {host.name} is an alias (CNAME) for {host.canonical_name}; it was followed.",
            f"Point the MX record at {host.canonical_name} directly (RFC 2181 §10.3).",
        ))  # fmt: skip
    if not host.addresses:
        found.append(CHECK.finding(
            "MX_TARGET_NO_ADDRESS", subject,
            f"The MX host {host.name} has no A or AAAA record, so no mail can be delivered to it.",
            f"Publish an address record for {host.name} or remove it from the MX records of {facts.domain}.",
            cloud_error="450 4.4.312 DNS query failed",
        ))  # fmt: skip
    if facts.expected and not any(fnmatch.fnmatchcase(host.name.lower(), p.lower()) for p in facts.expected):
        found.append(CHECK.finding(
            "MX_NOT_EXPECTED", subject,
            f"The MX host {host.name} of {facts.domain} does not match the expected "
            f"{' or '.join(facts.expected)}.",
            "Point the domain's MX record at the expected host, or correct the expectation.",
        ))  # fmt: skip
    if host.addresses and not found:
        kind = "implicit MX" if facts.implicit else f"MX preference {host.preference}"
        found.append(CHECK.finding(
            "MX_OK", subject,
            f"{host.name} ({kind}) resolves to {', '.join(host.addresses)}.",
        ))  # fmt: skip
    return found


# The report's evidence (report_templates/checks/mx.html.j2), from the facts as a report holds them.


@dataclass(frozen=True, slots=True)
class MxRow:
    """One MX host in the report's table: its preference, name and addresses, and what is odd about it."""

    preference: str
    name: str
    addresses: tuple[str, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MxView:
    """The MX evidence: notes about the domain (null MX, implicit MX, NXDOMAIN, duplicates), a row per host."""

    notes: tuple[str, ...]
    rows: tuple[MxRow, ...]


def view(observed: Observed) -> MxView:
    facts = observed.facts
    notes = []
    if facts.get("null_mx"):
        notes.append("The domain publishes a null MX (0 .): it accepts no mail.")
    if facts.get("implicit"):
        notes.append("No MX records: the domain's own address is the implicit MX (RFC 5321 §5.1).")
    if facts.get("status") == DnsStatus.NXDOMAIN.value:
        notes.append("The domain does not exist (NXDOMAIN).")
    for name in ev.items(facts.get("duplicates")):
        notes.append(f"Listed more than once: {ev.text(name)}")
    rows = []
    for host in ev.mappings(facts.get("hosts")):
        name = ev.text(host.get("name"))
        canonical = ev.text(host.get("canonical_name"))
        host_notes = []
        if host.get("ip_literal"):
            host_notes.append("an IP address, not a host name")
        elif host.get("valid_name") is False:
            host_notes.append("not a valid host name: not looked up")
        elif not ev.items(host.get("addresses")):
            host_notes.append("no A/AAAA record")
        if canonical and canonical.lower() != name.lower() and not host.get("ip_literal"):
            host_notes.append(f"alias (CNAME) for {canonical}")
        rows.append(MxRow(
            preference=ev.text(host.get("preference")),
            name=name,
            addresses=tuple(ev.text(a) for a in ev.items(host.get("addresses"))),
            notes=tuple(host_notes),
        ))  # fmt: skip
    return MxView(tuple(notes), tuple(rows))


async def run(ctx: CheckContext) -> Outcome:
    facts = await probe(ctx)
    return Outcome(facts, assess(facts))


CHECK = Check(
    id="mx",
    title="MX records",
    run=run,
    facts=MxFacts,
    evidence=Evidence("MX records", view),
    timeout=5.0,
    operations=2,  # the MX query, then the targets' A and AAAA queries (concurrently)
    codes={
        "MX_OK": Severity.INFO,
        "MX_NULL": Severity.INFO,
        "MX_NULL_ACCEPTED": Severity.CRITICAL,
        "MX_NULL_MIXED": Severity.ERROR,
        "MX_NONE_IMPLICIT": Severity.WARNING,
        "MX_DOMAIN_NXDOMAIN": Severity.CRITICAL,
        "MX_TARGET_CNAME": Severity.WARNING,
        "MX_TARGET_IP_LITERAL": Severity.ERROR,
        "MX_TARGET_INVALID": Severity.ERROR,
        "MX_TARGET_NO_ADDRESS": Severity.ERROR,
        "MX_DUPLICATE": Severity.WARNING,
        "MX_NOT_EXPECTED": Severity.ERROR,
    },
    meanings={
        "MX_OK": "An MX host has a valid name and addresses, and matches the expected hosts.",
        "MX_NULL": "The domain publishes a null MX: it declares that it receives no mail (RFC 7505).",
        "MX_NULL_ACCEPTED": "An accepted domain publishes a null MX: every sender bounces its mail.",
        "MX_NULL_MIXED": "A null MX next to other MX records: receivers may take the domain as receiving no mail.",
        "MX_NONE_IMPLICIT": "No MX record: senders fall back to the domain's own addresses (implicit MX).",
        "MX_DOMAIN_NXDOMAIN": "The domain does not exist in DNS (NXDOMAIN).",
        "MX_TARGET_CNAME": "An MX target is an alias (CNAME), which RFC 2181 §10.3 forbids.",
        "MX_TARGET_IP_LITERAL": "An MX record names an IP address instead of a host name.",
        "MX_TARGET_INVALID": "An MX target is not a valid host name; it is neither looked up nor contacted.",
        "MX_TARGET_NO_ADDRESS": "An MX host has no A or AAAA record.",
        "MX_DUPLICATE": "The same host is listed more than once among the MX records.",
        "MX_NOT_EXPECTED": "An MX host does not match --expect-mx or the organization's cloud MX host.",
    },
)
