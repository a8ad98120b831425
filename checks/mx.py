"""MX records: which hosts receive mail for the domain, in preference order, with their addresses.

RFC 5321 §5.1 (MX lookup, implicit MX), RFC 7505 (null MX), RFC 2181 §10.3 (an MX target must not be an alias).
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import re
from collections.abc import Sequence

import dns.rdtypes.ANY.MX

from diag import evidence as ev
from diag.context import CheckContext
from diag.evidence import Evidence, Observed
from diag.frozen import frozen
from diag.model import Finding, Severity
from diag.net.dns import Answer, DnsStatus, name_text
from diag.registry import Check, Outcome

__all__ = ["CHECK", "MxFacts", "MxHost", "MxRow", "MxView", "assess", "probe", "view"]

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$", re.IGNORECASE)


@frozen
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


@frozen
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


class _EarlySessions:
    """Hands each MX address to the run as soon as its A or AAAA answer is in (:meth:`RunContext.address_known`,
    which starts the SMTP session when the run has a check that needs it), instead of when every MX host is
    resolved: the connection is made while slower lookups are still out.

    The port25 check later asks for the same sessions; so that each is opened under the name port25 gives it (the
    SNI), an address is handed over as port25 would pick it: in MX order (once every earlier host's addresses of
    that family are known), under the first host that lists it, with its index among its host's addresses (IPv4
    first, then IPv6) for the per-host cap.
    """

    def __init__(self, ctx: CheckContext, names: Sequence[str]) -> None:
        loop = asyncio.get_running_loop()
        self._ctx = ctx
        self._names = names
        self._v4: list[asyncio.Future[tuple[str, ...]]] = [loop.create_future() for _ in names]
        self._v6: list[asyncio.Future[tuple[str, ...]]] = [loop.create_future() for _ in names]
        self._tasks = tuple(asyncio.ensure_future(self._hand_over(family)) for family in (self._v4, self._v6))

    def known(self, position: int, rdtype: str, addresses: tuple[str, ...]) -> None:
        """The addresses of the ``position``-th host for ``rdtype`` (A or AAAA) are known."""
        future = (self._v4 if rdtype == "A" else self._v6)[position]
        if not future.done():
            future.set_result(addresses)

    async def _hand_over(self, family: list[asyncio.Future[tuple[str, ...]]]) -> None:
        handed: set[str] = set()
        for position, name in enumerate(self._names):
            addresses = await family[position]
            offset = len(await self._v4[position]) if family is self._v6 else 0
            for index, ip in enumerate(addresses, start=offset):
                if ip not in handed and self._ctx.run.address_known(ip, index, name):
                    handed.add(ip)

    def close(self) -> None:
        """Stop waiting: the mx check is done (or failed, and some answers will never come)."""
        for task in self._tasks:
            task.cancel()


async def _host(
    ctx: CheckContext, preference: int, name: str, early: _EarlySessions | None = None, position: int = 0
) -> MxHost:
    if _ip_literal(name):
        # Postfix uses such a target as an address (security-cases.md DNS-06); so do we, after flagging it.
        literal = name.strip("[]")
        if early is not None:
            ipv4 = ipaddress.ip_address(literal).version == 4
            early.known(position, "A", (literal,) if ipv4 else ())
            early.known(position, "AAAA", () if ipv4 else (literal,))
        return MxHost(preference, name, (literal,), name, ip_literal=True)
    if not _valid_host_name(name):
        # Never look up or connect to a name that cannot be a host (DNS-12).
        if early is not None:
            early.known(position, "A", ())
            early.known(position, "AAAA", ())
        return MxHost(preference, name, valid_name=False)

    async def addresses(rdtype: str) -> tuple[Answer, tuple[str, ...]]:
        answer = await ctx.resolver.query(name, rdtype)
        found = tuple(r.to_text() for r in answer.records)
        if early is not None:
            early.known(position, rdtype, found)
        return answer, found

    (a, v4), (aaaa, v6) = await asyncio.gather(addresses("A"), addresses("AAAA"))
    return MxHost(preference, name, v4 + v6, a.canonical_name if a.records else aaaa.canonical_name)


async def _hosts(ctx: CheckContext, targets: Sequence[tuple[int, str]]) -> tuple[MxHost, ...]:
    """Resolve every target at once, in MX order, handing each address over early when the run wants it."""
    early = _EarlySessions(ctx, [name for _, name in targets]) if ctx.run.early_sessions else None
    try:
        return tuple(await asyncio.gather(*(
            _host(ctx, preference, name, early, position) for position, (preference, name) in enumerate(targets)
        )))  # fmt: skip
    finally:
        if early is not None:
            early.close()


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
        implicit = await _hosts(ctx, [(0, domain)])
        return MxFacts(domain, answer.status, implicit=True, hosts=implicit, expected=expected, accepted=accepted)
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
    hosts = await _hosts(ctx, targets)
    return MxFacts(
        domain, answer.status, null_mx=null_mx, hosts=hosts, duplicates=tuple(duplicates),
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


@frozen
class MxRow:
    """One MX host in the report's table: its preference, name and addresses, and what is odd about it."""

    preference: str
    name: str
    addresses: tuple[str, ...]
    notes: tuple[str, ...]


@frozen
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
