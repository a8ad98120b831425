"""Which outbound connector the cloud uses for a recipient, and who may relay through it: pure decisions.

One implementation for ``diag route``, the checks and the relay (ARCHITECTURE §4). Nothing here does I/O.

Connector selection (exchange-model §4): candidates are enabled outbound connectors that are neither in test
mode nor scoped to transport rules (:attr:`OutboundConnector.candidate`). The cloud picks "the most specific
connector possible", but its documentation lists the order *exact → all accepted domains → wildcard* while its
own worked example needs *exact → wildcard → all accepted domains* (§4.1). Both orders are available
(:class:`RoutingOrder`); :func:`route_both` reports the other order's choice when the two disagree, so that a
check can say the routing depends on undocumented behaviour (``ROUTE_AMBIGUOUS``).

Relay rights (exchange-model §3.2-§3.4): :func:`relay_decision` answers, for one connection and one recipient,
what the cloud would answer at RCPT time. :func:`on_premises_connector` is the one answer to "does an OnPremises
inbound connector recognise this connection?", :func:`ip_in_ranges` the one test of a client address against
configured addresses, :func:`split_address` the one reading of an envelope address's local part: the relay asks
these same functions, so the check and the relay cannot disagree.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import string
from collections.abc import Iterable, Sequence

from diag.config import (
    ConnectorType,
    InboundConnector,
    Organization,
    OutboundConnector,
    domain_in_pattern,
)
from diag.errors import InvalidDomainError
from diag.frozen import frozen
from diag.names import mail_domain
from diag.routing_order import RoutingOrder

__all__ = [
    "REPLY_PARTNER_RESTRICTED",
    "REPLY_RELAY_DENIED",
    "ROUTING_CHARACTERS",
    "InboundMatch",
    "MatchedBy",
    "RelayDecision",
    "RouteDecision",
    "Routing",
    "RoutingOrder",
    "Rule",
    "TransportRuleIssue",
    "certificate_domain",
    "certificate_matches",
    "control_character",
    "ip_in_ranges",
    "on_premises_connector",
    "recipient_domain",
    "relay_decision",
    "route",
    "route_both",
    "split_address",
]

# exchange-model §3.2: what the cloud answers when a relay attempt does not meet the 2023-11-01 requirements.
REPLY_RELAY_DENIED = "550 5.7.64 TenantAttribution; Relay Access Denied"
# exchange-model §3.4, text from BLOG:tlshybrid.
REPLY_PARTNER_RESTRICTED = (
    "550 5.7.51 TenantInboundAttribution; There is a partner connector configured that matched the message's "
    "recipient domain. The connector had either the RestrictDomainsToIPAddresses or RestrictDomainsToCertificate set"
)


class Rule(enum.StrEnum):
    """Why a connector was chosen (CONTRACT.md, "Routing decisions", ``rule``)."""

    EXACT = "exact"
    WILDCARD = "wildcard"
    ALL_ACCEPTED = "all-accepted-domains"
    CATCH_ALL = "catch-all"
    TRANSPORT_RULE = "transport-rule"
    MX = "mx"


class TransportRuleIssue(enum.StrEnum):
    """Why the connector a transport rule names could not be used (domain routing applied instead)."""

    NOT_FOUND = "not-found"
    DISABLED = "disabled"
    TEST_MODE = "test-mode"


@frozen
class RouteDecision:
    """The connector the cloud uses for one recipient domain under one routing order.

    Attributes:
        domain: the recipient domain, lower-case, without a trailing dot.
        order: the routing order the decision was made under.
        connector: the outbound connector used; None when none applies and the message goes by DNS MX.
        rule: why ``connector`` was chosen (:attr:`Rule.MX` when it is None).
        pattern: the ``RecipientDomains`` entry that matched, as configured (exact, wildcard and catch-all
            rules), else None.
        tied_with: names of the other connectors that matched at the same rank; ``connector`` won because its
            name is lowest (``str.casefold``, then plain string order). Sorted the same way.
        transport_rule_connector: the connector name a transport rule asked for, when one was given.
        transport_rule_issue: why that connector could not be used; None when it was used or none was named.
            When set, ``connector`` and ``rule`` are the result of ordinary domain routing.
    """

    domain: str
    order: RoutingOrder
    connector: OutboundConnector | None
    rule: Rule
    pattern: str | None
    tied_with: tuple[str, ...] = ()
    transport_rule_connector: str | None = None
    transport_rule_issue: TransportRuleIssue | None = None

    @property
    def notes(self) -> tuple[str, ...]:
        """One sentence per thing an administrator should know about this decision (ties, an unusable rule)."""
        notes: list[str] = []
        if self.transport_rule_issue is not None:
            why = {
                TransportRuleIssue.NOT_FOUND: "does not exist",
                TransportRuleIssue.DISABLED: "is turned off",
                TransportRuleIssue.TEST_MODE: "is in test mode",
            }[self.transport_rule_issue]
            chosen = f"connector {self.connector.name!r}" if self.connector is not None else "DNS MX routing"
            notes.append(
                f"The transport rule routes {self.domain} to connector {self.transport_rule_connector!r}, which "
                f"{why}; the message would use {chosen} ({self.rule}) instead."
            )
        if self.tied_with and self.connector is not None:
            names = ", ".join(repr(name) for name in (self.connector.name, *self.tied_with))
            notes.append(
                f"Connectors {names} match {self.domain} equally well ({self.rule}"
                f"{' ' + self.pattern if self.pattern else ''}); which one the cloud uses is not documented, "
                f"diag assumes {self.connector.name!r}, the lowest name."
            )
        return tuple(notes)


@frozen
class Routing:
    """What ``diag route`` reports for one recipient.

    Attributes:
        decision: the decision under the requested routing order.
        alternative: the decision under the other order, only when it picks a different connector.
    """

    decision: RouteDecision
    alternative: RouteDecision | None

    @property
    def ambiguous(self) -> bool:
        """Do the two readings of the documentation pick different connectors (``ROUTE_AMBIGUOUS``)?"""
        return self.alternative is not None


# Rank tiers per order; a lower tuple wins. Wildcards are further ranked by the length of their suffix.
_EXACT, _WILDCARD, _ALL_ACCEPTED, _CATCH_ALL = Rule.EXACT, Rule.WILDCARD, Rule.ALL_ACCEPTED, Rule.CATCH_ALL
_TIERS: dict[RoutingOrder, dict[Rule, int]] = {
    RoutingOrder.MOST_SPECIFIC: {_EXACT: 0, _WILDCARD: 1, _ALL_ACCEPTED: 2, _CATCH_ALL: 3},
    RoutingOrder.DOCUMENTED: {_EXACT: 0, _ALL_ACCEPTED: 1, _WILDCARD: 2, _CATCH_ALL: 3},
}


@frozen
class _Match:
    rank: tuple[int, int]
    rule: Rule
    pattern: str | None


def _normalize(domain: str, what: str = "domain") -> str:
    """Lower-case, without a trailing dot; refuses what cannot be a routable A-label domain."""
    name = domain.strip().rstrip(".").lower()
    if not name:
        raise ValueError(f"an empty {what} was given")
    if "@" in name:
        raise ValueError(f"{what} {domain!r} is a mail address; give only its domain (see recipient_domain)")
    if not name.isascii():
        raise ValueError(
            f"{what} {domain!a} is not in A-label form; convert internationalized names first (diag.names.mail_domain)"
        )
    return name


def _matches(connector: OutboundConnector, org: Organization, domain: str, order: RoutingOrder) -> list[_Match]:
    tiers = _TIERS[order]
    found: list[_Match] = []
    for entry in connector.recipient_domains:
        pattern = entry.strip().rstrip(".").lower()
        if not domain_in_pattern(domain, pattern):
            continue
        if pattern == "*":
            found.append(_Match((tiers[_CATCH_ALL], 0), _CATCH_ALL, entry))
        elif pattern.startswith("*."):
            # exchange-model §4.2: the more precise address space wins (EXS:selection), so a longer suffix
            # (*.sales.contoso.com) beats a shorter one (*.contoso.com). Matching suffixes of one domain are
            # nested, so their length orders them.
            found.append(_Match((tiers[_WILDCARD], -len(pattern)), _WILDCARD, entry))
        else:
            found.append(_Match((tiers[_EXACT], 0), _EXACT, entry))
    # Set-OutboundConnector: AllAcceptedDomains "is effective only for OnPremises connectors".
    if (
        connector.all_accepted_domains
        and connector.connector_type is ConnectorType.ON_PREMISES
        and org.accepted(domain) is not None
    ):
        found.append(_Match((tiers[_ALL_ACCEPTED], 0), _ALL_ACCEPTED, None))
    return found


def _name_key(name: str) -> tuple[str, str]:
    return name.casefold(), name


def _by_domain(org: Organization, domain: str, order: RoutingOrder) -> RouteDecision:
    best: list[tuple[_Match, OutboundConnector]] = []
    for connector in org.outbound_connectors:
        if not connector.candidate:
            continue
        matches = _matches(connector, org, domain, order)
        if not matches:
            continue
        match = min(matches, key=lambda m: m.rank)  # the first of equal entries: min() keeps the earliest
        if not best or match.rank < best[0][0].rank:
            best = [(match, connector)]
        elif match.rank == best[0][0].rank:
            best.append((match, connector))
    if not best:
        return RouteDecision(domain, order, None, Rule.MX, None)
    # exchange-model §4.2: Exchange Server finally picks "the connector with the name that has the lowest
    # alphanumeric value"; the cloud's tie-break is undocumented, so the tie is reported (tied_with).
    best.sort(key=lambda pair: _name_key(pair[1].name))
    match, winner = best[0]
    return RouteDecision(domain, order, winner, match.rule, match.pattern, tuple(c.name for _, c in best[1:]))


def _find_connector(org: Organization, name: str) -> OutboundConnector | None:
    # Connector identities are case-insensitive in Exchange; an exact spelling is preferred if names collide.
    named = [c for c in org.outbound_connectors if c.name.casefold() == name.strip().casefold()]
    exact = [c for c in named if c.name == name]
    return next(iter(exact or named), None)


def route(
    org: Organization,
    domain: str,
    order: RoutingOrder = RoutingOrder.MOST_SPECIFIC,
    *,
    transport_rule_connector: str | None = None,
) -> RouteDecision:
    """The outbound connector the cloud uses for mail to ``domain`` (an A-label domain; case and a trailing dot
    do not matter).

    ``transport_rule_connector`` is the connector a transport rule routes the message to
    (``RouteMessageOutboundConnector``, exchange-model §4.2-§4.3). It wins with :attr:`Rule.TRANSPORT_RULE` when
    it exists, is enabled and is not in test mode (it may be ``IsTransportRuleScoped``). Otherwise the decision
    is made by domain as usual and records the problem in ``transport_rule_issue``, so the caller can report it.

    Raises ValueError for an empty domain, a mail address or a domain not in A-label form.
    """
    name = _normalize(domain)
    if transport_rule_connector is None:
        return _by_domain(org, name, order)
    connector = _find_connector(org, transport_rule_connector)
    if connector is None:
        issue = TransportRuleIssue.NOT_FOUND
    elif not connector.enabled:
        issue = TransportRuleIssue.DISABLED
    elif connector.test_mode:
        issue = TransportRuleIssue.TEST_MODE
    else:
        return RouteDecision(name, order, connector, Rule.TRANSPORT_RULE, None, (), connector.name)
    fallback = _by_domain(org, name, order)
    return RouteDecision(
        fallback.domain,
        fallback.order,
        fallback.connector,
        fallback.rule,
        fallback.pattern,
        fallback.tied_with,
        transport_rule_connector,
        issue,
    )


def route_both(
    org: Organization,
    domain: str,
    order: RoutingOrder = RoutingOrder.MOST_SPECIFIC,
    *,
    transport_rule_connector: str | None = None,
) -> Routing:
    """:func:`route` under ``order``, with the other order's decision when it picks a different connector."""
    decision = route(org, domain, order, transport_rule_connector=transport_rule_connector)
    other = route(org, domain, order.other, transport_rule_connector=transport_rule_connector)
    return Routing(decision, other if other.connector != decision.connector else None)


# --- recipient addresses -------------------------------------------------------------------------------------

# RFC 5321 §4.1.2 Atom characters (RFC 5322 atext); non-ASCII is allowed as well (RFC 6531, SMTPUTF8).
_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~.")
# Characters that ask the next server to route the message further (RFC 5321 Appendix C, the "%" hack and
# UUCP "!" paths). security-cases RR-02: refused even in quoted local parts, as Postfix does.
ROUTING_CHARACTERS = "@%!"


def control_character(text: str) -> str | None:
    """The first control character (C0, DEL, C1) in ``text``, or None (security-cases RR-20)."""
    for char in text:
        code = ord(char)
        if code < 0x20 or 0x7F <= code < 0xA0:
            return char
    return None


def split_address(text: str) -> tuple[str, str, str] | None:
    """An envelope address (without angle brackets) split like ``text.partition("@")``, with a quoted local part
    read as the text it quotes; None when a quoted local part is never closed.

    The one parser of local parts, for :func:`recipient_domain` and the relay's address check. A local part that
    starts with ``"`` is a Quoted-string (RFC 5321 §4.1.2): a backslash takes the next character literally
    (quoted-pairSMTP), so ``"a\\"b"@d`` gives ``('a"b', "@", "d")``. The ``@`` is then the one right after the
    closing quote; other text there comes back whole, with an empty separator, for the caller to refuse
    (``"a"b@c`` gives ``("a", "", "b@c")``). An unquoted local part ends at the first ``@``. Control characters
    are the caller's to refuse first (quoted-pairSMTP allows none).
    """
    if not text.startswith('"'):
        return text.partition("@")
    content: list[str] = []
    index = 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            if index + 1 == len(text):
                return None
            content.append(text[index + 1])
            index += 2
        elif char == '"':
            rest = text[index + 1 :]
            return ("".join(content), "@", rest[1:]) if rest.startswith("@") else ("".join(content), "", rest)
        else:
            content.append(char)
            index += 1
    return None


def recipient_domain(address: str) -> str:
    """The domain of an envelope address, lower-case A-label (``john@Sales.Contoso.com`` → ``sales.contoso.com``).

    Only plain mailboxes are routed; everything that could make two parsers disagree about the destination is
    refused with a ValueError that says why (security-cases RR-02, RR-05-RR-07, RR-20):

    - control characters (C0, DEL, C1) anywhere;
    - no ``@`` or nothing after it (``postmaster`` must be handled by the caller: RFC 5321 §4.5.1);
    - sender-specified routing: ``%`` or ``!`` in the local part, ``@`` in a quoted local part, more than one
      ``@``, source routes (``@relay:user@domain``);
    - unquoted local parts with characters outside RFC 5322 atext, unterminated quotes;
    - address literals (``[192.0.2.1]``), numeric and otherwise invalid domains (:func:`diag.names.mail_domain`,
      which also converts internationalized domains to A-labels).

    One pair of angle brackets around the address is allowed.
    """
    shown = repr(address.encode("ascii", "backslashreplace").decode("ascii"))
    control = control_character(address)
    if control is not None:
        raise ValueError(
            f"address {shown} contains the control character U+{ord(control):04X}; envelope addresses must not "
            "contain control characters"
        )
    text = address[1:-1] if address.startswith("<") and address.endswith(">") else address
    if not text:
        raise ValueError("an empty address was given")
    if text.startswith("@"):
        if ":" in text:
            raise ValueError(f"address {shown} has a source route (@host:...); give only the final mailbox")
        raise ValueError(f"address {shown} has an empty local part")
    split = split_address(text)
    if split is None:
        raise ValueError(f"address {shown} has a quoted local part that is never closed")
    local, at, domain = split
    if text.startswith('"'):
        if any(char in local for char in ROUTING_CHARACTERS):
            raise ValueError(
                f"address {shown} has a quoted local part containing @, % or !, which asks for further routing; "
                "it is refused"
            )
        if not at and not domain:
            raise ValueError(f"address {shown} has no domain")
        if not at:
            raise ValueError(f"address {shown} has text after the quoted local part that is not @domain")
    else:
        if "%" in local or "!" in local:
            raise ValueError(
                f"address {shown} uses % or ! routing in its local part (sender-specified routing); it is refused"
            )
        if not at:
            raise ValueError(f"address {shown} has no domain")
        bad = next((char for char in local if char.isascii() and char not in _ATEXT), None)
        if bad is not None:
            raise ValueError(f"address {shown} has {bad!r} in its local part; quote the local part or remove it")
    if "@" in domain:
        raise ValueError(f"address {shown} has more than one @ (sender-specified routing); it is refused")
    if not domain:
        raise ValueError(f"address {shown} has no domain")
    if domain.startswith("["):
        raise ValueError(f"address {shown} has an address literal as its domain; only domain names are routed")
    if domain != domain.strip() or any(char.isspace() for char in domain):
        raise ValueError(f"address {shown} has white space in its domain")
    try:
        return mail_domain(domain)
    except InvalidDomainError as exc:
        raise ValueError(f"address {shown} has an invalid domain: {exc}") from None


# --- relay rights ------------------------------------------------------------------------------------------


@frozen
class RelayDecision:
    """What the cloud answers when a connection offers one recipient (exchange-model §3.2-§3.4).

    Attributes:
        allowed: the cloud accepts the recipient.
        reply: the SMTP reply the cloud gives when it refuses, exact text; None when allowed.
        reason: one sentence for a person, naming what matched or what is missing.
        inbound_connector: the enabled inbound connector that matched the connection, if any: an OnPremises
            connector matched by IP or certificate, else (mail to accepted domains) a restricted Partner
            connector whose restriction the connection satisfies.
        relay: the recipient is outside the accepted domains (relay to the Internet).
    """

    allowed: bool
    reply: str | None
    reason: str
    inbound_connector: InboundConnector | None
    relay: bool


def _clean_name(name: str) -> str:
    return name.strip().rstrip(".").lower()


def certificate_matches(pattern: str, cert_names: Sequence[str]) -> bool:
    """Does a certificate with these names match ``TlsSenderCertificateName`` or ``TlsDomain`` ``pattern``?

    - ``*.contoso.com`` matches the names contoso.com and anything below it, and certificate wildcards that
      cover no more than that (``*.contoso.com``, ``*.sales.contoso.com``), as the connector's "domain and all
      subdomains" reading of ``*.`` (exchange-model §1, §3.2).
    - ``mail.contoso.com`` matches that name, or a certificate wildcard covering it by exactly one label
      (RFC 6125 §6.4.3: ``*.contoso.com`` covers mail.contoso.com, not contoso.com nor a.b.contoso.com). A
      certificate wildcard directly under a single label (``*.com``) covers nothing.

    Case and trailing dots do not matter; other partial wildcards (``w*.contoso.com``) match only literally.
    """
    wanted = _clean_name(pattern)
    if not wanted or wanted == "*":
        return False
    for raw in cert_names:
        name = _clean_name(raw)
        if not name:
            continue
        if wanted.startswith("*."):
            base = wanted[2:]
            covered = name.removeprefix("*.")
            if covered == base or covered.endswith("." + base):
                return True
        elif name == wanted:
            return True
        elif name.startswith("*.") and "." in name[2:]:
            label, _, parent = wanted.partition(".")
            if label and parent == name[2:]:
                return True
    return False


def ip_in_ranges(ip: str | None, ranges: Iterable[str]) -> bool:
    """Is the client address ``ip`` in one of ``ranges`` (single addresses and CIDR networks, IPv4 or IPv6)?

    The one test of a client address against configured addresses: an inbound connector's SenderIPAddresses
    (exchange-model §2: a single IPv4 address or a CIDR range; the config refuses anything else) and the onprem
    relay's RelayNetworks alike.

    - An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) is the IPv4 address it maps (RFC 4291 §2.5.5.2): a
      listener on ``[::]`` that also takes IPv4 (IPV6_V6ONLY off) reports its IPv4 peers in that form (RFC 3493
      §3.7), and such a peer must match ``192.0.2.0/24`` as it does on an IPv4 listener (SenderIPAddresses holds
      IPv4 only: "IPv6 addresses are not supported"). Conversely an IPv4 address matches a ``::ffff:0:0/96``
      entry.
    - A zone (``fe80::1%eth0``) does not matter: the address is compared without it.
    - Host bits in an entry are ignored (``127.0.0.1/8`` is 127.0.0.0/8). Entries that are neither an address
      nor a network never match, nor do ``a-b`` ranges: Exchange takes them for a receive connector's
      RemoteIPRanges, not for SenderIPAddresses (exchange-model §2, §6.2).
    - ``ip`` None, empty or not an address matches nothing.
    """
    if not ip:
        return False
    forms = _address_forms(ip)
    return any(
        form.version == network.version and form in network
        for network in _networks(tuple(ranges))
        for form in forms
    )


# The relay asks for every RCPT and every message with the same few addresses and ranges: parsed once each.
@functools.lru_cache(maxsize=1024)
def _address_forms(ip: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    """``ip`` and the other form it has (IPv4 and its IPv4-mapped IPv6 address); () for a non-address."""
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return ()
    if isinstance(address, ipaddress.IPv4Address):
        return (address, ipaddress.IPv6Address(f"::ffff:{address}"))
    if address.ipv4_mapped is not None:
        return (address, address.ipv4_mapped)
    return (address,)


@functools.lru_cache(maxsize=256)
def _networks(ranges: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The entries of ``ranges`` that are an address or a network, as networks."""
    networks = []
    for entry in ranges:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue
    return tuple(networks)


class MatchedBy(enum.StrEnum):
    """What of a connection an inbound connector recognised."""

    CERTIFICATE = "certificate"
    """The certificate matches ``TlsSenderCertificateName``."""
    IP_ADDRESS = "IP address"
    """The sending IP is in ``SenderIPAddresses``."""


@frozen
class InboundMatch:
    """An inbound connector that recognises a connection.

    Attributes:
        connector: the connector.
        by: how it recognised the connection (the certificate is tried first).
    """

    connector: InboundConnector
    by: MatchedBy


def on_premises_connector(org: Organization, *, ip: str | None, cert_names: Sequence[str]) -> InboundMatch | None:
    """The first enabled OnPremises inbound connector that recognises the connection, or None.

    ``ip`` is the sending IP (None if unknown), ``cert_names`` the DNS names of the certificate the sender
    presented (empty without one; the caller must have verified it). A connector recognises the connection by
    its TlsSenderCertificateName (:func:`certificate_matches`) or its SenderIPAddresses (:func:`ip_in_ranges`),
    exchange-model §3.2 condition 2. The one decision for the check's relay prediction and the relay itself
    (whose rights and kept trace headers follow it).
    """
    for connector in org.inbound_connectors:
        if not connector.enabled or connector.connector_type is not ConnectorType.ON_PREMISES:
            continue
        pattern = connector.tls_sender_certificate_name
        if pattern and certificate_matches(pattern, cert_names):
            return InboundMatch(connector, MatchedBy.CERTIFICATE)
        if ip_in_ranges(ip, connector.sender_ip_addresses):
            return InboundMatch(connector, MatchedBy.IP_ADDRESS)
    return None


def certificate_domain(org: Organization, cert_names: Sequence[str]) -> tuple[str, str] | None:
    """The first certificate name in an accepted domain, with that accepted domain.

    exchange-model §3.2 requires the "SMTP certificate domain" to be an accepted domain. A wildcard name
    (``*.contoso.com``) stands for contoso.com, and a host name inside an accepted domain (mail.contoso.com)
    is taken to belong to it, whatever MatchSubDomains says [Inf]. The blog's answers only call adding such a
    subdomain as its own accepted domain the "safest" choice, and the HCW note there has connectors name
    ``*.contoso.com`` precisely because mail.contoso.com "may not be registered domains in Office 365".
    """
    for raw in cert_names:
        name = _clean_name(raw).removeprefix("*.")
        if not name:
            continue
        for accepted in org.accepted_domains:
            domain = _clean_name(accepted.domain_name)
            if name == domain or name.endswith("." + domain):
                return _clean_name(raw), domain
    return None


def _describe_certificate(cert_names: Sequence[str]) -> str:
    names = ", ".join(name for name in (_clean_name(raw) for raw in cert_names) if name)
    return f"the certificate ({names})" if names else "no certificate"


def _describe_connection(ip: str | None, cert_names: Sequence[str]) -> str:
    return f"{f'the IP address {ip}' if ip else 'no IP address'} and {_describe_certificate(cert_names)}"


def relay_decision(
    org: Organization,
    *,
    ip: str | None,
    cert_names: Sequence[str],
    sender_domain: str | None,
    recipient_domain: str,
) -> RelayDecision:
    """Would the cloud accept ``recipient_domain`` from this connection (exchange-model §3.2-§3.4)?

    ``ip`` is the sending IP (None if unknown), ``cert_names`` the names (SAN DNS names) of the certificate the
    sender presented (empty without one), ``sender_domain`` the envelope sender's domain (None for ``<>``).

    - Mail to an accepted domain is not a relay and is allowed, unless an enabled Partner inbound connector's
      SenderDomains match the sender domain and its RestrictDomainsToIPAddresses / RestrictDomainsToCertificate
      is not met by the connection (``550 5.7.51``).
    - Mail outside the accepted domains is a relay: allowed only when the certificate domain or the envelope
      sender domain is an accepted domain *and* the IP or certificate matches an enabled OnPremises inbound
      connector; otherwise ``550 5.7.64``.
    """
    recipient = _normalize(recipient_domain, "recipient domain")
    sender = _clean_name(sender_domain) if sender_domain else None
    on_premises = on_premises_connector(org, ip=ip, cert_names=cert_names)
    matched = on_premises.connector if on_premises else None

    if org.accepted(recipient) is not None:
        return _to_organization(org, recipient, sender, ip, cert_names, matched)

    # exchange-model §3.2, condition 1: certificate domain (1a) or envelope sender domain (1b) is accepted.
    certificate = certificate_domain(org, cert_names)
    accepted_sender = sender is not None and org.accepted(sender) is not None
    if certificate is not None:
        first = f"the certificate name {certificate[0]} is in the accepted domain {certificate[1]}"
    elif accepted_sender:
        first = f"the sender domain {sender} is an accepted domain"
    else:
        sender_text = f"the sender domain {sender}" if sender else "the null sender <>"
        first = f"neither the certificate domain nor {sender_text} is an accepted domain"
    # Condition 2: the IP or certificate matches an OnPremises inbound connector.
    if on_premises is not None:
        second = (
            f"the connection matches the OnPremises inbound connector {on_premises.connector.name!r} by "
            f"{on_premises.by}"
        )
    else:
        second = f"{_describe_connection(ip, cert_names)} match no enabled OnPremises inbound connector"
    if (certificate is not None or accepted_sender) and on_premises is not None:
        return RelayDecision(True, None, f"Relay to {recipient} allowed: {first}, and {second}.", matched, True)
    if certificate is None and not accepted_sender and on_premises is None:
        why = f"{first}, and {second}"
    elif on_premises is None:
        why = second
    else:
        why = first
    return RelayDecision(False, REPLY_RELAY_DENIED, f"Relay to {recipient} refused: {why}.", matched, True)


def _to_organization(
    org: Organization,
    recipient: str,
    sender: str | None,
    ip: str | None,
    cert_names: Sequence[str],
    matched: InboundConnector | None,
) -> RelayDecision:
    """Mail to an accepted domain: only restricted Partner inbound connectors refuse it (exchange-model §3.4).

    A connection that satisfies one restricted Partner connector covering the sender domain is attributed to
    it; it is refused only when every such connector's restriction fails. Both restrictions must hold when a
    connector sets both [Inf].
    """
    failed: list[tuple[InboundConnector, str]] = []
    partner: InboundConnector | None = None
    for connector in org.inbound_connectors:
        if not connector.enabled or connector.connector_type is not ConnectorType.PARTNER or sender is None:
            continue
        if not (connector.restrict_domains_to_ip_addresses or connector.restrict_domains_to_certificate):
            continue
        if not any(domain_in_pattern(sender, pattern) for pattern in connector.sender_domains):
            continue
        if connector.restrict_domains_to_ip_addresses and not ip_in_ranges(ip, connector.sender_ip_addresses):
            failed.append((connector, f"only from its SenderIPAddresses, which do not include {ip or 'an unknown IP'}"))
        elif connector.restrict_domains_to_certificate and not certificate_matches(
            connector.tls_sender_certificate_name or "", cert_names
        ):
            wanted = connector.tls_sender_certificate_name or "a TlsSenderCertificateName (none is set)"
            presented = (
                f"{_describe_certificate(cert_names)} does not match it"
                if any(_clean_name(raw) for raw in cert_names)
                else "the connection presented no certificate"
            )
            failed.append((connector, f"only with a certificate matching {wanted}, but {presented}"))
        elif partner is None:
            partner = connector
    if partner is None and failed:
        connector, how = failed[0]
        return RelayDecision(
            False,
            REPLY_PARTNER_RESTRICTED,
            f"Mail from {sender} to {recipient} refused: the Partner inbound connector {connector.name!r} covers "
            f"{sender} and accepts it {how}.",
            matched,
            False,
        )
    via = matched or partner
    suffix = f" through the inbound connector {via.name!r}" if via is not None else ""
    return RelayDecision(
        True, None, f"Mail to {recipient}, an accepted domain, is not a relay and is accepted{suffix}.", via, False
    )
