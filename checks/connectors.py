"""Connectors: does the organization's configuration route each domain where it should, will the smart hosts pass
the cloud's own connector validation, and will the cloud recognise the on-premises server when it sends?

Active when ``diag check`` gets ``--config``. Routing and relay rights come from :mod:`diag.routing` (one
implementation for this check, ``diag route`` and the relay); smart hosts are probed with the same shared SMTP
sessions as the mail checks, and judged the way the cloud validates a connector (exchange-model.md §5): resolve
→ connect → EHLO → TLS as ``TlsSettings`` demands.

The on-premises server's certificate (``--client-cert``, else the one its listener serves) is judged the way
the cloud and diag's own relay judge a client certificate before they attribute a connection by it: the chain
as presented must lead to a trusted CA (no fetching of intermediates) and the certificate must be within its
validity period. One that is not counts for nothing, whatever names it carries: the connection is then
attributed by address only, and relaying fails with ``550 5.7.64 TenantAttribution; Relay Access Denied``
(exchange-model.md §10 #1: "chain incomplete" among the causes; the relay refuses it at the handshake).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from checks.mx import MxFacts
from diag import evidence as ev
from diag.config import AcceptedDomain, ConnectorType, DomainType, Organization, OutboundConnector, TlsSettings
from diag.context import CheckContext, is_public
from diag.errors import DnsError
from diag.evidence import Evidence, Failing, Observed, Shown
from diag.frozen import frozen
from diag.model import Finding, Severity
from diag.net.dns import DnsStatus
from diag.net.smtp_facts import SessionError, SessionFacts
from diag.net.tls_facts import CertInfo, Trust
from diag.registry import Check, Outcome
from diag.routing import (
    RelayDecision,
    Routing,
    Rule,
    certificate_domain,
    certificate_matches,
    on_premises_connector,
    relay_decision,
    route_both,
)

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "CHECK",
    "ConnectorsFacts",
    "ConnectorsView",
    "DecisionView",
    "InboundFacts",
    "SmartHostProbe",
    "SmartHostView",
    "assess",
    "probe",
    "route_findings",
    "view",
]

# A recipient outside every accepted domain, for the relay prediction ("may John mail Sun on the Internet?").
_EXTERNAL_CANDIDATES = ("example.net", "example.org", "example.com")
# The cloud's reply when it cannot attribute a relayed message to the organization (exchange-model.md §10 #1).
_TENANT_ATTRIBUTION = "550 5.7.64 TenantAttribution; Relay Access Denied"


@frozen
class SmartHostProbe:
    """One address of one smart host (or MX host, for a connector that routes by MX).

    Attributes:
        name: the smart host as configured (a host name or an IP address).
        ip: the address probed; None when the name did not resolve.
        resolve_error: why the name has no address ("NXDOMAIN", "no A/AAAA record", a DNS error), or "".
        session: the shared SMTP session's facts at ``ip``.
        chain: the certificates the host sent over STARTTLS, leaf first.
        trust, trust_detail: chain verification against the trust store, apart from names and dates.
        not_probed: why the address was left alone ("not a public address"), or "".
    """

    name: str
    ip: str | None = None
    resolve_error: str = ""
    session: SessionFacts | None = None
    chain: tuple[CertInfo, ...] = ()
    trust: Trust | None = None
    trust_detail: str = ""
    not_probed: str = ""

    @property
    def endpoint(self) -> str:
        if self.ip is None:
            return self.name
        port = f":{self.session.port}" if self.session is not None else ""
        return f"{self.name} [{self.ip}]{port}"


@frozen
class InboundFacts:
    """How the cloud would see the on-premises server when it sends as the domain.

    Attributes:
        cert_source: where the certificate came from: ``client-cert`` (``--client-cert``), ``smart-host``
            (the certificate the on-premises server's port-25 listener serves) or "" (none known).
        cert_names: the certificate's DNS names.
        sender_ip: the address it sends from (``--sender-ip``), if given.
        external_domain: the Internet recipient domain the relay prediction was made for.
        relay: the relay-rights decision for mail from the domain to ``external_domain``; it counts the
            certificate only when the certificate is valid (trusted and within its dates).
        certificate: the certificate itself (the leaf), when one is known and could be parsed.
        trust, trust_detail: the chain verified as a client certificate against the trust store, apart from
            dates (None when no certificate is known).
    """

    cert_source: str
    cert_names: tuple[str, ...]
    sender_ip: str | None
    external_domain: str
    relay: RelayDecision
    certificate: CertInfo | None = None
    trust: Trust | None = None
    trust_detail: str = ""


@frozen
class ConnectorsFacts:
    """What the configuration says about the domain and what the smart hosts showed.

    Attributes:
        domain: the checked domain.
        accepted: its accepted-domain entry, if any.
        mx_at_cloud: the domain's MX points at the organization's cloud host (None when the config names none).
        routing: the connector the cloud picks for the domain, and the other order's pick when it differs.
        smart_hosts: the chosen connector's targets, probed.
        inbound: the on-premises side, for accepted domains.
        checked_at: the moment certificate dates were judged against.
    """

    domain: str
    accepted: AcceptedDomain | None
    mx_at_cloud: bool | None
    routing: Routing
    smart_hosts: tuple[SmartHostProbe, ...]
    inbound: InboundFacts | None
    checked_at: datetime

    @property
    def connector(self) -> OutboundConnector | None:
        return self.routing.decision.connector


# Judgement (pure).


def route_findings(domain: str, routing: Routing, org: Organization) -> list[Finding]:
    """Findings about which connector the cloud picks; shared with ``diag route``."""
    found: list[Finding] = []
    decision = routing.decision
    connector = decision.connector
    accepted = org.accepted(domain)
    if connector is not None:
        how = _rule_text(decision.rule.value, decision.pattern)
        targets = ", ".join(connector.smart_hosts) if not connector.use_mx_record else "the MX hosts of the domain"
        tls = connector.tls_settings.value if connector.tls_settings else "opportunistic"
        found.append(CHECK.finding(
            "ROUTE_CONNECTOR", domain,
            f"The cloud sends mail for {domain} through the outbound connector '{connector.name}' ({how}) to "
            f"{targets}, TLS {tls}.",
        ))  # fmt: skip
    elif accepted is not None and accepted.domain_type is DomainType.INTERNAL_RELAY:
        found.append(CHECK.finding(
            "ROUTE_NONE", domain,
            f"{domain} is an InternalRelay accepted domain but no outbound connector applies to it: mail for "
            "recipients without a cloud mailbox never leaves the cloud.",
            f"Add {domain} to an OnPremises outbound connector's RecipientDomains (or set AllAcceptedDomains), "
            "enabled and not in test mode.",
        ))  # fmt: skip
    elif accepted is not None:
        found.append(CHECK.finding(
            "ROUTE_CLOUD", domain,
            f"No outbound connector applies to {domain}: it is Authoritative, so the cloud delivers its mail to "
            "cloud mailboxes only and rejects unknown recipients.",
        ))  # fmt: skip
    if routing.alternative is not None:
        other = routing.alternative
        found.append(CHECK.finding(
            "ROUTE_AMBIGUOUS", domain,
            f"The two readings of the cloud's connector rules disagree for {domain}: the {decision.order.value} "
            f"order picks {_pick(decision.connector)} ({decision.rule.value}), the {other.order.value} order picks "
            f"{_pick(other.connector)} ({other.rule.value}).",
            "Make one connector the only match for the domain (e.g. list it exactly in RecipientDomains), so "
            "routing does not depend on undocumented precedence.",
        ))  # fmt: skip
    if decision.tied_with:
        found.append(CHECK.finding(
            "ROUTE_TIE", domain,
            f"Several outbound connectors match {domain} equally ({_pick(connector)}, "
            f"{', '.join(repr(n) for n in decision.tied_with)}); diag assumes the lowest name wins.",
            "Remove the overlap so that exactly one connector matches the domain.",
        ))  # fmt: skip
    return found


def _pick(connector: OutboundConnector | None) -> str:
    return f"'{connector.name}'" if connector else "no connector (DNS MX)"


def _rule_text(rule: str, pattern: str | None) -> str:
    return f"{rule} match on {pattern}" if pattern else rule


def assess(facts: ConnectorsFacts, org: Organization) -> tuple[Finding, ...]:
    """Judge the configuration, the smart hosts and the inbound side for one domain; pure."""
    domain = facts.domain
    found: list[Finding] = []
    if facts.accepted is None:
        if facts.mx_at_cloud:
            found.append(CHECK.finding(
                "DOMAIN_NOT_ACCEPTED", domain,
                f"The MX of {domain} points at the cloud host {org.mx_host}, but {domain} is not an accepted "
                "domain: the cloud rejects the mail it receives for it.",
                f"Add {domain} as an accepted domain (New-AcceptedDomain), or point its MX elsewhere.",
                cloud_error="550 5.4.1 Relay Access Denied",
            ))  # fmt: skip
        else:
            via = f"the connector '{facts.connector.name}'" if facts.connector else "its MX records"
            found.append(CHECK.finding(
                "DOMAIN_EXTERNAL", domain,
                f"{domain} is not an accepted domain of the organization; the cloud delivers mail for it via {via}.",
            ))  # fmt: skip
    found.extend(route_findings(domain, facts.routing, org))
    connector = facts.connector
    if connector is not None:
        for probe in facts.smart_hosts:
            found.append(_assess_smart_host(probe, connector, facts.checked_at))
    if facts.inbound is not None:
        found.extend(_assess_inbound(facts, org))
    return tuple(found)


def _assess_smart_host(p: SmartHostProbe, connector: OutboundConnector, now: datetime) -> Finding:
    subject = p.endpoint
    where = f"the smart host {subject} of '{connector.name}'"
    if p.resolve_error:
        return CHECK.finding(
            "SMARTHOST_RESOLVE_FAILED", subject,
            f"The smart host {p.name} of '{connector.name}' has no address ({p.resolve_error}).",
            "Correct the SmartHosts entry or publish an A record for it; the cloud resolves it in public DNS.",
            cloud_error="450 4.4.312 DNS query failed",
        )  # fmt: skip
    if p.not_probed:
        return CHECK.finding(
            "SMARTHOST_CONNECT_FAILED", subject,
            f"{_first_up(where)} resolves to {p.ip}, {p.not_probed}: the cloud cannot reach it.",
            "Publish the smart host's public address, or run diag with --allow-private to probe it anyway.",
            cloud_error="450 4.4.315 Connection timed out",
        )  # fmt: skip
    s = p.session
    assert s is not None
    match s.error:
        case SessionError.REFUSED:
            return CHECK.finding(
                "SMARTHOST_CONNECT_FAILED", subject, f"{_first_up(where)} refuses connections on port {s.port}.",
                "Open port 25 on the smart host to the cloud service's addresses and check the SMTP service.",
                cloud_error="450 4.4.316 Connection refused [Message=Socket error code 10061]",
            )  # fmt: skip
        case SessionError.CONNECT_TIMEOUT | SessionError.UNREACHABLE:
            return CHECK.finding(
                "SMARTHOST_CONNECT_FAILED", subject, f"{_first_up(where)} does not answer ({s.detail}).",
                "Check that the smart host is up and that firewalls let the cloud service's addresses in on port 25.",
                cloud_error="450 4.4.315 Connection timed out",
            )  # fmt: skip
    if not s.answered_ehlo:
        text = f"{s.greeting_code} {s.greeting}".strip() if s.greeting_code else s.detail
        return CHECK.finding(
            "SMARTHOST_EHLO_FAILED", subject,
            f"{_first_up(where)} does not complete the SMTP greeting and EHLO ({s.error.value if s.error else ''}: "
            f"{text}).",
            "Check that the smart host is a mail server accepting the cloud's connections (receive connector).",
            cloud_error=f"450 4.4.317 Cannot connect to remote server [Message={text}]",
        )  # fmt: skip
    tls_required = connector.tls_settings is not None
    if tls_required and (s.tls is None or not s.tls.chain_der):
        why = "does not offer STARTTLS" if not s.starttls_offered else f"fails STARTTLS ({s.detail})"
        return CHECK.finding(
            "SMARTHOST_TLS_FAILED", subject,
            f"{_first_up(where)} {why}, but the connector requires TLS ({connector.tls_settings}).",
            "Enable STARTTLS with a certificate on the smart host's receive connector.",
            cloud_error="450 4.4.317 Cannot connect to remote server [Message=451 5.7.3 STARTTLS is required to send "
            "mail]",
        )  # fmt: skip
    if connector.tls_settings in (TlsSettings.CERTIFICATE_VALIDATION, TlsSettings.DOMAIN_VALIDATION):
        if p.trust is not Trust.TRUSTED:
            return CHECK.finding(
                "SMARTHOST_TLS_FAILED", subject,
                f"The certificate of {where} is not trusted ({p.trust.value if p.trust else 'unknown'}: "
                f"{p.trust_detail}), and the connector demands {connector.tls_settings}.",
                "Serve a certificate from a public certificate authority with its full chain (the cloud does not "
                "fetch missing intermediates).",
                cloud_error="450 4.4.317 Cannot connect to remote server [Message=UntrustedRoot]",
            )  # fmt: skip
        leaf = p.chain[0]
        if not leaf.not_before <= now <= leaf.not_after:
            state = "expired" if now > leaf.not_after else "not yet valid"
            return CHECK.finding(
                "SMARTHOST_TLS_FAILED", subject,
                f"The certificate of {where} is {state} (valid {leaf.not_before:%Y-%m-%d} to "
                f"{leaf.not_after:%Y-%m-%d}).",
                "Renew the smart host's certificate and bind it to its receive connector.",
                cloud_error="450 4.7.320 Certificate validation failed",
            )  # fmt: skip
        if connector.tls_settings is TlsSettings.DOMAIN_VALIDATION and connector.tls_domain:
            names = leaf.dns_names or leaf.common_names
            if not certificate_matches(connector.tls_domain, names):
                return CHECK.finding(
                    "SMARTHOST_TLSDOMAIN_MISMATCH", subject,
                    f"The certificate of {where} is for {', '.join(names) or 'no names'}, which does not match the "
                    f"connector's TlsDomain {connector.tls_domain}.",
                    f"Serve a certificate with a name under {connector.tls_domain}, or correct TlsDomain.",
                    cloud_error=f"450 4.4.317 Cannot connect to remote server [Message=SubjectMismatch Expected "
                    f"Subject: {connector.tls_domain}. Presented Subject: {leaf.subject}]",
                )  # fmt: skip
    tls = f"{s.tls.version}" if s.tls else "no TLS"
    return CHECK.finding(
        "SMARTHOST_OK", subject,
        f"{_first_up(where)} passes the cloud's connector validation (EHLO, {tls}, "
        f"TlsSettings {connector.tls_settings or 'opportunistic'}).",
    )


def _first_up(text: str) -> str:
    return text[:1].upper() + text[1:]


def _certificate_problem(inbound: InboundFacts, now: datetime) -> tuple[str, str] | None:
    """Why the cloud would not accept the on-premises server's certificate, and what to do; None when it would
    (or when there is no certificate). The chain is judged before the dates, as a verifier fails on it first."""
    leaf = inbound.certificate
    detail = f" ({inbound.trust_detail})" if inbound.trust_detail else ""
    match inbound.trust:
        case None | Trust.TRUSTED:
            pass
        case Trust.SELF_SIGNED:
            return "is self-signed: no certificate authority vouches for it", _USE_A_CA
        case Trust.INCOMPLETE:
            return (
                f"comes without its intermediate CA certificate{detail}, and the cloud does not fetch missing "
                "intermediates",
                "Configure the on-premises server to send its full chain (leaf and intermediates)"
                + ("; give --client-cert the chain as the server sends it." if inbound.cert_source == "client-cert"
                   else "."),
            )
        case Trust.UNTRUSTED:
            return f"does not lead to a trusted certificate authority{detail}", _USE_A_CA
        case Trust.WEAK_SIGNATURE:
            return f"is signed with a hash the cloud refuses{detail}", _USE_A_CA
        case Trust.MALFORMED:
            return f"cannot be parsed{detail}", "Reissue or re-export the certificate and its chain."
    if leaf is not None and now > leaf.not_after:
        return f"expired on {leaf.not_after:%Y-%m-%d}", _RENEW
    if leaf is not None and now < leaf.not_before:
        return f"is not valid before {leaf.not_before:%Y-%m-%d}", _RENEW
    return None


_CERT_SOURCES = {"client-cert": "as given with --client-cert", "smart-host": "as its port-25 listener serves it"}
_USE_A_CA = (
    "Use a certificate from a public certificate authority, with its full chain, on the on-premises server's "
    "send connector."
)
_RENEW = "Renew the on-premises server's certificate and bind it to the connector it sends to the cloud with."


def _assess_inbound(facts: ConnectorsFacts, org: Organization) -> list[Finding]:
    inbound = facts.inbound
    assert inbound is not None
    domain = facts.domain
    who = _who(inbound)
    if inbound.trust is None and not inbound.cert_names and inbound.sender_ip is None:
        return [CHECK.finding(
            "INBOUND_UNCHECKED", domain,
            f"No certificate or address of the on-premises server is known, so diag cannot tell whether the cloud "
            f"will recognise its mail for {domain}.",
            "Give --client-cert PEM (the certificate the on-premises server presents) or --sender-ip IP.",
        )]  # fmt: skip
    found: list[Finding] = []
    relay = inbound.relay
    problem = _certificate_problem(inbound, facts.checked_at)
    # The connector the certificate's names would match, were the certificate valid.
    by_name = on_premises_connector(org, ip=None, cert_names=inbound.cert_names) if problem else None
    if problem is not None:
        why, remediation = problem
        names = ", ".join(inbound.cert_names) or "names unknown"
        consequence = (
            f"so its name matching the inbound connector '{by_name.connector.name}' does not count"
            if by_name is not None else "so the cloud cannot recognise the server by it"
        )
        found.append(CHECK.finding(
            "INBOUND_CERT_INVALID", domain,
            f"The certificate of the on-premises server ({names}, {_CERT_SOURCES.get(inbound.cert_source, '')}) "
            f"{why}: the cloud does not accept it as the server's identity, {consequence}; only the server's "
            "address can still make an inbound connector recognise it.",
            remediation,
            cloud_error=_TENANT_ATTRIBUTION,
        ))  # fmt: skip
    if inbound.cert_names and certificate_domain(org, inbound.cert_names) is None:
        found.append(CHECK.finding(
            "INBOUND_CERT_NOT_ACCEPTED_DOMAIN", domain,
            f"The certificate of the on-premises server ({', '.join(inbound.cert_names)}) names no accepted "
            "domain: the cloud cannot attribute its mail to the organization by certificate.",
            "Use a certificate whose name is in an accepted domain (e.g. *.contoso.com), or add that domain as an "
            "accepted domain.",
            cloud_error=_TENANT_ATTRIBUTION,
        ))  # fmt: skip
    if relay.inbound_connector is None and by_name is None:  # (else INBOUND_CERT_INVALID says why)
        found.append(CHECK.finding(
            "INBOUND_NO_MATCH", domain,
            f"The on-premises server ({who}) matches no OnPremises inbound connector: the cloud treats its mail "
            "as anonymous Internet mail.",
            "Set the inbound connector's TlsSenderCertificateName to the certificate's domain, or add the server's "
            "public address to SenderIPAddresses.",
            cloud_error=_TENANT_ATTRIBUTION,
        ))  # fmt: skip
    if not relay.allowed:
        found.append(CHECK.finding(
            "RELAY_DENIED", domain,
            f"The cloud would refuse to relay mail from {domain} to the Internet ({inbound.external_domain}): "
            f"{relay.reason}",
            "Make the inbound connector recognise the on-premises server (certificate or address) and use a "
            "certificate or sender domain that is an accepted domain.",
            cloud_error=relay.reply,
        ))  # fmt: skip
    if not found:
        found.append(CHECK.finding(
            "INBOUND_OK", domain,
            f"The on-premises server ({who}) matches the inbound connector '{relay.inbound_connector.name}' "  # type: ignore[union-attr]
            f"and may relay mail from {domain} to the Internet.",
        ))  # fmt: skip
    return found


def _who(inbound: InboundFacts) -> str:
    parts = []
    if inbound.cert_names:
        parts.append(f"certificate {', '.join(inbound.cert_names)} from its {inbound.cert_source.replace('-', ' ')}")
    if inbound.sender_ip:
        parts.append(f"address {inbound.sender_ip}")
    return "; ".join(parts)


# Probing.


async def _probe_smart_host(ctx: CheckContext, name: str, store: tuple[x509.Certificate, ...], now: datetime
                            ) -> list[SmartHostProbe]:  # fmt: skip
    from diag.net.tls import examine_chain  # cryptography: see CHECK.lazy_imports

    try:
        ipaddress.ip_address(name)
        addresses: tuple[str, ...] = (name,)
    except ValueError:
        try:
            a, aaaa = await asyncio.gather(ctx.resolver.query(name, "A"), ctx.resolver.query(name, "AAAA"))
        except DnsError as exc:
            return [SmartHostProbe(name, resolve_error=str(exc))]
        addresses = tuple(r.to_text() for r in (*a.records, *aaaa.records))
        if not addresses:
            why = "NXDOMAIN" if a.status is DnsStatus.NXDOMAIN else "no A or AAAA record"
            return [SmartHostProbe(name, resolve_error=why)]

    async def address(ip: str) -> SmartHostProbe:
        if not ctx.options.allow_private and not is_public(ip):
            return SmartHostProbe(name, ip, not_probed="not a public address")
        session = await ctx.run.smtp_session(ip, name)
        chain: tuple[CertInfo, ...] = ()
        trust, detail = None, ""
        if session.tls is not None and session.tls.chain_der:
            chain, verdict = examine_chain(session.tls.chain_der, store, at=now)
            trust, detail = verdict.trust, verdict.detail
        return SmartHostProbe(name, ip, session=session, chain=chain, trust=trust, trust_detail=detail)

    # Concurrently: one silent address must not hold up the others.
    return list(await asyncio.gather(*(address(ip) for ip in addresses[: ctx.options.max_addresses_per_host])))


def _external_domain(org: Organization) -> str:
    return next(d for d in _EXTERNAL_CANDIDATES if org.accepted(d) is None)


async def probe(ctx: CheckContext, org: Organization) -> ConnectorsFacts:
    """Route the domain by the organization's connectors, probe the chosen connector's smart hosts, and see how
    the cloud would take the on-premises server's mail."""
    domain = ctx.domain
    mx = ctx.facts("mx", MxFacts)
    accepted = org.accepted(domain)
    mx_at_cloud = None
    if org.mx_host:
        mx_at_cloud = any(h.name.lower() == org.mx_host.lower() for h in mx.hosts)
    routing = route_both(org, domain, ctx.options.routing_order)
    connector = routing.decision.connector
    onprem = connector is not None and connector.connector_type is ConnectorType.ON_PREMISES
    now = datetime.now(UTC)
    # The CAs are needed to judge a smart host's certificate for TlsSettings, and the on-premises server's
    # certificate (its own, or its listener's) for the inbound side.
    judges_certificates = (connector is not None and connector.tls_settings is not None) or (
        accepted is not None and (bool(ctx.options.client_cert) or onprem)
    )
    store = await ctx.run.trust_store() if judges_certificates else ()
    smart_hosts: list[SmartHostProbe] = []
    if connector is not None:
        targets = connector.smart_hosts if not connector.use_mx_record else tuple(h.name for h in mx.hosts)
        for probes in await asyncio.gather(*(_probe_smart_host(ctx, t, store, now) for t in targets)):
            smart_hosts.extend(probes)
    inbound = None
    if accepted is not None:
        inbound = _inbound(ctx, org, domain, smart_hosts if onprem else [], store, now)
    return ConnectorsFacts(domain, accepted, mx_at_cloud, routing, tuple(smart_hosts), inbound, now)


async def run(ctx: CheckContext) -> Outcome:
    org = ctx.options.organization
    if org is None:
        return Outcome.skip("no organization configuration (--config)")
    facts = await probe(ctx, org)
    return Outcome(facts, assess(facts, org))


def _inbound(ctx: CheckContext, org: Organization, domain: str, onprem: list[SmartHostProbe],
             store: tuple[x509.Certificate, ...], now: datetime) -> InboundFacts:  # fmt: skip
    from diag.net.tls import examine_chain  # cryptography: see CHECK.lazy_imports

    chain_der, source = ctx.options.client_cert, "client-cert"
    if not chain_der:
        sessions = (p.session for p in onprem if p.session is not None)
        served = next((s.tls.chain_der for s in sessions if s.tls is not None and s.tls.chain_der), ())
        chain_der, source = served, "smart-host" if served else ""
    leaf: CertInfo | None = None
    trust: Trust | None = None
    detail = ""
    if chain_der:
        # Verified as the client certificate it is when the server sends mail to the cloud.
        chain, verdict = examine_chain(chain_der, store, at=now, client=True)
        leaf, trust, detail = (chain[0] if chain else None), verdict.trust, verdict.detail
    names = (leaf.dns_names or leaf.common_names) if leaf is not None else ()
    valid = leaf is not None and trust is Trust.TRUSTED and leaf.not_before <= now <= leaf.not_after
    external = _external_domain(org)
    # The cloud attributes a connection by a certificate it accepted, never by one it refused (on_premises_connector
    # wants verified names).
    decision = relay_decision(
        org, ip=ctx.options.sender_ip, cert_names=names if valid else (), sender_domain=domain,
        recipient_domain=external,
    )  # fmt: skip
    return InboundFacts(source, tuple(names), ctx.options.sender_ip, external, decision, leaf, trust, detail)


# The report's evidence (report_templates/checks/connectors.html.j2), from the facts as a report holds them.

_RULES = {
    Rule.EXACT.value: "exact match",
    Rule.WILDCARD.value: "wildcard match",
    Rule.ALL_ACCEPTED.value: "all accepted domains",
    Rule.CATCH_ALL.value: "catch-all (*)",
    Rule.TRANSPORT_RULE.value: "a transport rule",
    Rule.MX.value: "no connector: DNS MX",
}


@frozen
class DecisionView:
    """One reading of the routing order: the connector it picks (or none: DNS MX), by which rule, where it
    sends and with what TLS, and notes (ties, transport rules)."""

    order: str
    connector: str
    rule: str
    smart_hosts: tuple[str, ...]
    tls_settings: str
    tls_domain: str
    notes: tuple[str, ...]


@frozen
class SmartHostView:
    """One smart host address: its session's outcome (a CSS token and words), TLS, chain verdict and the failing
    findings about it when the chain is trusted."""

    endpoint: str
    outcome: str
    outcome_label: str
    tls: str
    trust: str
    failing: tuple[Failing, ...]
    detail: str


@frozen
class ConnectorsView:
    """The routing evidence: whether the domain is accepted, the decision and the other reading's when it
    differs, the smart hosts, and the inbound side as label and value rows."""

    accepted: str
    decision: DecisionView
    alternative: DecisionView | None
    smart_hosts: tuple[SmartHostView, ...]
    inbound: tuple[tuple[str, str], ...]


def view(observed: Observed) -> ConnectorsView:
    facts = observed.facts
    failing = ev.failing_by_subject(observed.findings)
    routing = ev.mapping(facts.get("routing"))
    accepted = ev.mapping(facts.get("accepted"))
    if accepted:
        accepted_text = f"accepted domain ({ev.text(accepted.get('domain_type')) or 'type unknown'})"
    else:
        accepted_text = "not an accepted domain of the organization"
    alternative = routing.get("alternative")
    return ConnectorsView(
        accepted=accepted_text,
        decision=_decision(ev.mapping(routing.get("decision"))),
        alternative=_decision(ev.mapping(alternative)) if isinstance(alternative, Mapping) else None,
        smart_hosts=tuple(_smart_host(h, failing) for h in ev.mappings(facts.get("smart_hosts"))),
        inbound=_inbound_rows(ev.mapping(facts.get("inbound"))),
    )


def _decision(decision: Mapping[str, Any]) -> DecisionView:
    connector = ev.mapping(decision.get("connector"))
    rule = ev.text(decision.get("rule"))
    pattern = ev.text(decision.get("pattern"))
    rule_text = _RULES.get(rule, rule)
    if pattern:
        rule_text = f"{rule_text} on {pattern}"
    notes = []
    tied = [ev.text(t) for t in ev.items(decision.get("tied_with"))]
    if tied:
        notes.append("tied with " + ", ".join(tied) + "; the lowest name wins")
    if decision.get("transport_rule_connector"):
        issue = ev.text(decision.get("transport_rule_issue"))
        named = ev.text(decision.get("transport_rule_connector"))
        notes.append(f"a transport rule names {named}" + (f" ({issue}: not used)" if issue else ""))
    if connector.get("use_mx_record"):
        smart_hosts: tuple[str, ...] = ("the MX hosts of the domain",)
    else:
        smart_hosts = tuple(ev.text(h) for h in ev.items(connector.get("smart_hosts")))
    return DecisionView(
        order=ev.text(decision.get("order")),
        connector=ev.text(connector.get("name")) if connector else "",
        rule=rule_text,
        smart_hosts=smart_hosts,
        tls_settings=(ev.text(connector.get("tls_settings")) or "opportunistic") if connector else "",
        tls_domain=ev.text(connector.get("tls_domain")),
        notes=tuple(notes),
    )


def _smart_host(h: Mapping[str, Any], failing: Mapping[str, list[Shown]]) -> SmartHostView:
    session = ev.mapping(h.get("session"))
    name, ip = ev.text(h.get("name")), ev.text(h.get("ip"))
    endpoint = ev.endpoint(name, session) if session else (f"{name} [{ip}]" if ip else name)
    if h.get("resolve_error"):
        outcome, label, detail = "bad", "not resolved", ev.text(h.get("resolve_error"))
    elif h.get("not_probed"):
        outcome, label, detail = "unknown", "not probed", ev.text(h.get("not_probed"))
    elif session:
        outcome, label = ev.outcome(session)
        detail = ev.text(session.get("detail")) if session.get("error") else ""
    else:
        outcome, label, detail = "unknown", "not probed", ""
    trust = ev.text(h.get("trust"))
    # A trusted chain next to a smart host that fails validation (expired leaf, TlsDomain mismatch): the failing
    # finding is named in the same cell, as for the MX certificates.
    facts = (
        tuple(Failing.of(f, f.code) for f in failing.get(endpoint, [])) if trust == Trust.TRUSTED.value else ()
    )
    if h.get("trust_detail"):
        trust = f"{trust}: {ev.text(h.get('trust_detail'))}"
    return SmartHostView(endpoint, outcome, label, ev.tls_text(session), trust, facts, detail)


def _inbound_rows(inbound: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    if not inbound:
        return ()
    rows = []
    names = ", ".join(ev.text(n) for n in ev.items(inbound.get("cert_names")))
    source = {"client-cert": "--client-cert", "smart-host": "the smart host's certificate"}.get(
        ev.text(inbound.get("cert_source")), ev.text(inbound.get("cert_source"))
    )
    rows.append(("Certificate names", f"{names} (from {source})" if names and source else names or "none known"))
    if inbound.get("sender_ip"):
        rows.append(("Sending address", ev.text(inbound.get("sender_ip"))))
    relay = ev.mapping(inbound.get("relay"))
    if relay:
        connector = ev.text(ev.mapping(relay.get("inbound_connector")).get("name"))
        rows.append(("Inbound connector", connector or "none matches"))
        verdict = "allowed" if relay.get("allowed") else f"refused: {ev.text(relay.get('reply'))}"
        rows.append((f"Relay to {ev.text(inbound.get('external_domain'))}", verdict))
        if relay.get("reason"):
            rows.append(("Why", ev.text(relay.get("reason"))))
    return tuple(rows)


CHECK = Check(
    id="connectors",
    title="Connectors",
    run=run,
    facts=ConnectorsFacts,
    evidence=Evidence("routing", view),
    requires=("mx",),
    tags=frozenset({"config"}),
    lazy_imports=("diag.net.tls",),  # cryptography, to examine the chains (_probe_smart_host, _inbound)
    timeout=10.0,
    operations=9,  # smart-host address lookups, then a whole SMTP session (see port25)
    codes={
        "DOMAIN_NOT_ACCEPTED": Severity.ERROR,
        "DOMAIN_EXTERNAL": Severity.INFO,
        "ROUTE_CONNECTOR": Severity.INFO,
        "ROUTE_CLOUD": Severity.INFO,
        "ROUTE_NONE": Severity.ERROR,
        "ROUTE_AMBIGUOUS": Severity.WARNING,
        "ROUTE_TIE": Severity.WARNING,
        "SMARTHOST_OK": Severity.INFO,
        "SMARTHOST_RESOLVE_FAILED": Severity.ERROR,
        "SMARTHOST_CONNECT_FAILED": Severity.ERROR,
        "SMARTHOST_EHLO_FAILED": Severity.ERROR,
        "SMARTHOST_TLS_FAILED": Severity.ERROR,
        "SMARTHOST_TLSDOMAIN_MISMATCH": Severity.ERROR,
        "INBOUND_OK": Severity.INFO,
        "INBOUND_UNCHECKED": Severity.NOTICE,
        "INBOUND_CERT_INVALID": Severity.ERROR,
        "INBOUND_CERT_NOT_ACCEPTED_DOMAIN": Severity.ERROR,
        "INBOUND_NO_MATCH": Severity.ERROR,
        "RELAY_DENIED": Severity.ERROR,
    },
    meanings={
        "DOMAIN_NOT_ACCEPTED": "The domain's MX points at the cloud, but it is not an accepted domain.",
        "DOMAIN_EXTERNAL": "The domain is not an accepted domain; the cloud delivers its mail like any other.",
        "ROUTE_CONNECTOR": "The outbound connector the cloud uses for the domain, and the rule that chose it.",
        "ROUTE_CLOUD": "No connector applies to an Authoritative domain: its mail stays in cloud mailboxes.",
        "ROUTE_NONE": "An InternalRelay domain has no outbound connector: its mail never leaves the cloud.",
        "ROUTE_AMBIGUOUS": "The two readings of the cloud's connector precedence pick different connectors.",
        "ROUTE_TIE": "Several outbound connectors match the domain equally.",
        "SMARTHOST_OK": "The smart host passes the cloud's connector validation (resolve, connect, EHLO, TLS).",
        "SMARTHOST_RESOLVE_FAILED": "A smart host of the connector has no address in DNS.",
        "SMARTHOST_CONNECT_FAILED": "A smart host refuses or ignores connections, or its address is not public.",
        "SMARTHOST_EHLO_FAILED": "A smart host does not complete the SMTP greeting and EHLO.",
        "SMARTHOST_TLS_FAILED": "A smart host fails the TLS its connector's TlsSettings demand.",
        "SMARTHOST_TLSDOMAIN_MISMATCH": "A smart host's certificate does not match the connector's TlsDomain.",
        "INBOUND_OK": "The on-premises server matches an OnPremises inbound connector and may relay.",
        "INBOUND_UNCHECKED": "No certificate or address of the on-premises server is known to judge it by.",
        "INBOUND_CERT_INVALID": "The on-premises server's certificate is expired, not yet valid, untrusted or "
        "self-signed, so the cloud does not recognise it.",
        "INBOUND_CERT_NOT_ACCEPTED_DOMAIN": "The on-premises server's certificate names no accepted domain.",
        "INBOUND_NO_MATCH": "The on-premises server matches no OnPremises inbound connector.",
        "RELAY_DENIED": "The cloud would refuse to relay the on-premises server's mail to the Internet.",
    },
)
