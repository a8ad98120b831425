"""Connector selection and relay rights (diag/routing.py): plain data in, decisions out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from diag.config import (
    AcceptedDomain,
    ConnectorType,
    DomainType,
    InboundConnector,
    Organization,
    OutboundConnector,
    RelayRole,
    parse_config,
)
from diag.relay.policy import is_trusted
from diag.relay.settings import RelaySettings
from diag.routing import (
    REPLY_PARTNER_RESTRICTED,
    REPLY_RELAY_DENIED,
    RoutingOrder,
    Rule,
    TransportRuleIssue,
    certificate_matches,
    ip_in_ranges,
    on_premises_connector,
    recipient_domain,
    relay_decision,
    route,
    route_both,
    split_address,
)

ON_PREMISES = ConnectorType.ON_PREMISES
MOST, DOC = RoutingOrder.MOST_SPECIFIC, RoutingOrder.DOCUMENTED


def out(name: str, *domains: str, **fields: object) -> OutboundConnector:
    return OutboundConnector(name, recipient_domains=domains, **fields)  # type: ignore[arg-type]


def org_with(*connectors: OutboundConnector, accepted: tuple[AcceptedDomain, ...] = ()) -> Organization:
    return Organization(accepted_domains=accepted, outbound_connectors=connectors)


# --- the setup guide's worked example (exchange-model §4.1), a golden test --------------------------------------

EXAMPLE = Organization(
    accepted_domains=(
        AcceptedDomain("contoso.com", default=True),
        AcceptedDomain("sales.contoso.com"),
        AcceptedDomain("fabrikam.com"),
        AcceptedDomain("contoso.onmicrosoft.com", initial_domain=True),
    ),
    outbound_connectors=(
        OutboundConnector("Connector 1", connector_type=ON_PREMISES, all_accepted_domains=True),
        OutboundConnector("Connector 2", connector_type=ON_PREMISES, recipient_domains=("contoso.com",)),
        OutboundConnector("Connector 3", connector_type=ON_PREMISES, recipient_domains=("*.contoso.com",)),
    ),
)


@pytest.mark.parametrize(
    ("address", "connector", "rule", "pattern", "alternative"),
    [
        ("john@fabrikam.com", "Connector 1", Rule.ALL_ACCEPTED, None, None),
        ("john@contoso.com", "Connector 2", Rule.EXACT, "contoso.com", None),
        ("john@sales.contoso.com", "Connector 3", Rule.WILDCARD, "*.contoso.com", ("Connector 1", Rule.ALL_ACCEPTED)),
        ("john@tailspintoys.com", None, Rule.MX, None, None),
    ],
)
def test_worked_example(
    address: str, connector: str | None, rule: Rule, pattern: str | None, alternative: tuple[str, Rule] | None
) -> None:
    routing = route_both(EXAMPLE, recipient_domain(address))
    decision = routing.decision
    assert (decision.connector.name if decision.connector else None, decision.rule) == (connector, rule)
    assert decision.pattern == pattern
    assert decision.order is MOST
    assert decision.tied_with == ()
    if alternative is None:
        assert routing.alternative is None
        assert not routing.ambiguous
    else:
        assert routing.ambiguous
        assert routing.alternative is not None
        assert routing.alternative.order is DOC
        assert routing.alternative.connector is not None
        assert (routing.alternative.connector.name, routing.alternative.rule) == alternative


def test_worked_example_under_the_documented_order() -> None:
    routing = route_both(EXAMPLE, "sales.contoso.com", DOC)
    assert routing.decision.connector is not None and routing.decision.connector.name == "Connector 1"
    assert routing.decision.rule is Rule.ALL_ACCEPTED
    assert routing.alternative is not None and routing.alternative.connector is not None
    assert (routing.alternative.connector.name, routing.alternative.rule) == ("Connector 3", Rule.WILDCARD)


# --- rules and ranks -------------------------------------------------------------------------------------------

ACCEPTED = (AcceptedDomain("contoso.com"), AcceptedDomain("corp.example", DomainType.INTERNAL_RELAY, True))


@pytest.mark.parametrize(
    ("connectors", "domain", "order", "winner", "rule", "pattern"),
    [
        # exact beats everything, in both orders
        ((out("W", "*.contoso.com"), out("E", "contoso.com")), "contoso.com", MOST, "E", Rule.EXACT, "contoso.com"),
        ((out("W", "*.contoso.com"), out("E", "contoso.com")), "contoso.com", DOC, "E", Rule.EXACT, "contoso.com"),
        (
            (out("A", connector_type=ON_PREMISES, all_accepted_domains=True), out("E", "contoso.com")),
            "contoso.com",
            DOC,
            "E",
            Rule.EXACT,
            "contoso.com",
        ),
        # a wildcard covers its own base domain and every subdomain, but not look-alikes
        ((out("W", "*.contoso.com"),), "contoso.com", MOST, "W", Rule.WILDCARD, "*.contoso.com"),
        ((out("W", "*.contoso.com"),), "a.b.contoso.com", MOST, "W", Rule.WILDCARD, "*.contoso.com"),
        ((out("W", "*.contoso.com"),), "notcontoso.com", MOST, None, Rule.MX, None),
        ((out("W", "*.contoso.com"),), "contoso.com.evil.example", MOST, None, Rule.MX, None),
        ((out("E", "contoso.com"),), "sales.contoso.com", MOST, None, Rule.MX, None),
        # the longest matching wildcard wins, whatever the names
        (
            (out("A", "*.contoso.com"), out("Z", "*.sales.contoso.com")),
            "eu.sales.contoso.com",
            MOST,
            "Z",
            Rule.WILDCARD,
            "*.sales.contoso.com",
        ),
        (
            (out("A", "*.contoso.com"), out("Z", "*.sales.contoso.com")),
            "sales.contoso.com",
            DOC,
            "Z",
            Rule.WILDCARD,
            "*.sales.contoso.com",
        ),
        (
            (out("A", "*.contoso.com"), out("Z", "*.sales.contoso.com")),
            "hr.contoso.com",
            MOST,
            "A",
            Rule.WILDCARD,
            "*.contoso.com",
        ),
        # "*" is the catch-all, last in both orders
        ((out("C", "*"), out("W", "*.contoso.com")), "x.contoso.com", MOST, "W", Rule.WILDCARD, "*.contoso.com"),
        ((out("C", "*"), out("W", "*.contoso.com")), "tailspintoys.com", MOST, "C", Rule.CATCH_ALL, "*"),
        (
            (out("C", "*"), out("A", connector_type=ON_PREMISES, all_accepted_domains=True)),
            "contoso.com",
            MOST,
            "A",
            Rule.ALL_ACCEPTED,
            None,
        ),
        (
            (out("C", "*"), out("A", connector_type=ON_PREMISES, all_accepted_domains=True)),
            "contoso.com",
            DOC,
            "A",
            Rule.ALL_ACCEPTED,
            None,
        ),
        # all accepted domains: only for accepted domains, only for OnPremises connectors
        ((out("A", connector_type=ON_PREMISES, all_accepted_domains=True),), "fabrikam.com", MOST, None, Rule.MX, None),
        ((out("P", all_accepted_domains=True),), "contoso.com", MOST, None, Rule.MX, None),
        ((out("P", "*", all_accepted_domains=True),), "contoso.com", MOST, "P", Rule.CATCH_ALL, "*"),
        # MatchSubDomains is honoured, and only where set
        (
            (out("A", connector_type=ON_PREMISES, all_accepted_domains=True),),
            "eu.corp.example",
            MOST,
            "A",
            Rule.ALL_ACCEPTED,
            None,
        ),
        (
            (out("A", connector_type=ON_PREMISES, all_accepted_domains=True),),
            "sales.contoso.com",
            MOST,
            None,
            Rule.MX,
            None,
        ),
        # a connector is ranked by its best entry; the entry is reported as configured
        ((out("M", "*", "*.contoso.com", "Contoso.COM."),), "contoso.com", MOST, "M", Rule.EXACT, "Contoso.COM."),
        (
            (out("M", "*", "*.contoso.com"), out("N", "*.sales.contoso.com")),
            "sales.contoso.com",
            MOST,
            "N",
            Rule.WILDCARD,
            "*.sales.contoso.com",
        ),
        # case and trailing dots, on both sides
        ((out("E", "CONTOSO.com."),), "Contoso.Com.", MOST, "E", Rule.EXACT, "CONTOSO.com."),
        ((out("W", "*.Contoso.COM"),), "MAIL.contoso.com", MOST, "W", Rule.WILDCARD, "*.Contoso.COM"),
        # IDN domains compare in A-label form
        ((out("E", "xn--bcher-kva.example"),), "XN--BCHER-KVA.example", MOST, "E", Rule.EXACT, "xn--bcher-kva.example"),
        # nothing at all
        ((), "contoso.com", MOST, None, Rule.MX, None),
    ],
)
def test_rules(
    connectors: tuple[OutboundConnector, ...],
    domain: str,
    order: RoutingOrder,
    winner: str | None,
    rule: Rule,
    pattern: str | None,
) -> None:
    decision = route(org_with(*connectors, accepted=ACCEPTED), domain, order)
    assert (decision.connector.name if decision.connector else None) == winner
    assert decision.rule is rule
    assert decision.pattern == pattern
    assert decision.domain == domain.rstrip(".").lower()
    assert decision.order is order


@pytest.mark.parametrize(
    ("connector", "domain"),
    [
        (out("X", "contoso.com", enabled=False), "contoso.com"),
        (out("X", "contoso.com", test_mode=True), "contoso.com"),
        (out("X", "contoso.com", is_transport_rule_scoped=True), "contoso.com"),
        (out("X", "*", is_transport_rule_scoped=True), "tailspintoys.com"),
        (out("X", connector_type=ON_PREMISES, all_accepted_domains=True, enabled=False), "contoso.com"),
    ],
)
def test_connectors_that_are_never_picked_by_domain(connector: OutboundConnector, domain: str) -> None:
    fallback = out("Fallback", "*")
    decision = route(org_with(connector, fallback, accepted=ACCEPTED), domain)
    assert decision.connector == fallback
    assert decision.rule is Rule.CATCH_ALL
    assert decision.tied_with == ()


@pytest.mark.parametrize(
    ("connectors", "domain", "order", "winner", "tied_with"),
    [
        ((out("b", "contoso.com"), out("A", "contoso.com")), "contoso.com", MOST, "A", ("b",)),
        ((out("B", "contoso.com"), out("a", "contoso.com")), "contoso.com", MOST, "a", ("B",)),
        # same casefold: plain string order decides ("A" < "a")
        ((out("a", "contoso.com"), out("A", "contoso.com")), "contoso.com", MOST, "A", ("a",)),
        ((out("W2", "*.contoso.com"), out("W1", "*.contoso.com")), "x.contoso.com", MOST, "W1", ("W2",)),
        ((out("C2", "*"), out("C1", "*"), out("C3", "*")), "tailspintoys.com", MOST, "C1", ("C2", "C3")),
        (
            (
                out("Y", connector_type=ON_PREMISES, all_accepted_domains=True),
                out("X", connector_type=ON_PREMISES, all_accepted_domains=True),
            ),
            "contoso.com",
            DOC,
            "X",
            ("Y",),
        ),
        # different ranks are not ties
        ((out("A", "*"), out("B", "*.contoso.com")), "x.contoso.com", MOST, "B", ()),
        # a wildcard entry and an exact entry in two connectors: no tie, the exact one wins
        ((out("A", "*.contoso.com"), out("B", "contoso.com")), "contoso.com", MOST, "B", ()),
    ],
)
def test_ties_go_to_the_lowest_name(
    connectors: tuple[OutboundConnector, ...],
    domain: str,
    order: RoutingOrder,
    winner: str,
    tied_with: tuple[str, ...],
) -> None:
    decision = route(org_with(*connectors, accepted=ACCEPTED), domain, order)
    assert decision.connector is not None and decision.connector.name == winner
    assert decision.tied_with == tied_with
    if tied_with:
        (note,) = decision.notes
        assert repr(winner) in note and all(repr(name) in note for name in tied_with)
        assert "lowest name" in note
    else:
        assert decision.notes == ()


def test_the_winner_is_independent_of_file_order() -> None:
    a, b = out("Alpha", "contoso.com"), out("beta", "contoso.com")
    assert route(org_with(a, b), "contoso.com") == route(org_with(b, a), "contoso.com")


# --- transport rules ---------------------------------------------------------------------------------------------

SCOPED = out("Scoped", is_transport_rule_scoped=True, smart_hosts=("relay.contoso.com",))
DOMAIN = out("Domain", "contoso.com")


@pytest.mark.parametrize(
    ("connectors", "requested", "winner", "rule", "issue"),
    [
        ((SCOPED, DOMAIN), "Scoped", "Scoped", Rule.TRANSPORT_RULE, None),
        ((SCOPED, DOMAIN), "scoped", "Scoped", Rule.TRANSPORT_RULE, None),  # identities are case-insensitive
        ((SCOPED, DOMAIN), "Domain", "Domain", Rule.TRANSPORT_RULE, None),  # an unscoped connector may be named too
        ((SCOPED, DOMAIN), "Missing", "Domain", Rule.EXACT, TransportRuleIssue.NOT_FOUND),
        ((replace(SCOPED, enabled=False), DOMAIN), "Scoped", "Domain", Rule.EXACT, TransportRuleIssue.DISABLED),
        ((replace(SCOPED, test_mode=True), DOMAIN), "Scoped", "Domain", Rule.EXACT, TransportRuleIssue.TEST_MODE),
        ((replace(SCOPED, enabled=False),), "Scoped", None, Rule.MX, TransportRuleIssue.DISABLED),
    ],
)
def test_transport_rule_connector(
    connectors: tuple[OutboundConnector, ...],
    requested: str,
    winner: str | None,
    rule: Rule,
    issue: TransportRuleIssue | None,
) -> None:
    for order in RoutingOrder:
        decision = route(org_with(*connectors), "contoso.com", order, transport_rule_connector=requested)
        assert (decision.connector.name if decision.connector else None) == winner
        assert decision.rule is rule
        assert decision.transport_rule_issue is issue
        if issue is None:
            assert decision.pattern is None and decision.tied_with == () and decision.notes == ()
        else:
            assert decision.transport_rule_connector == requested
            (note,) = decision.notes
            assert repr(requested) in note


def test_transport_rule_decisions_are_never_ambiguous() -> None:
    example = replace(EXAMPLE, outbound_connectors=(*EXAMPLE.outbound_connectors, SCOPED))
    routing = route_both(example, "sales.contoso.com", transport_rule_connector="Scoped")
    assert routing.decision.rule is Rule.TRANSPORT_RULE
    assert routing.alternative is None


def test_scoped_connector_without_a_rule_is_ignored() -> None:
    assert route(org_with(SCOPED), "contoso.com").rule is Rule.MX


@pytest.mark.parametrize("domain", ["", " ", ".", "john@contoso.com", "bücher.example"])
def test_route_refuses_what_is_not_an_a_label_domain(domain: str) -> None:
    with pytest.raises(ValueError, match=r"empty|mail address|A-label"):
        route(EXAMPLE, domain)


# --- recipient addresses ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "domain"),
    [
        ("john@Sales.Contoso.com", "sales.contoso.com"),
        ("john@contoso.com.", "contoso.com"),
        ("<john@contoso.com>", "contoso.com"),
        ('"john smith"@contoso.com', "contoso.com"),
        ('"john\\"smith"@contoso.com', "contoso.com"),
        ("john.o'neil+tag@contoso.com", "contoso.com"),
        ("jörg@bücher.example", "xn--bcher-kva.example"),  # SMTPUTF8 local part; the domain becomes an A-label
        ("x@xn--bcher-kva.example", "xn--bcher-kva.example"),
    ],
)
def test_recipient_domain(address: str, domain: str) -> None:
    assert recipient_domain(address) == domain


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("", "empty"),
        ("<>", "empty"),
        ("postmaster", "no domain"),
        ("relaytest@", "no domain"),
        ('"relaytest@contoso.com"', "quoted local part containing @"),  # nmap 7: quoted, no domain
        ('"a@b"@c.example', "quoted local part containing @"),  # nmap 10
        ('"relaytest%tailspintoys.com"@contoso.com', "quoted local part containing @, % or !"),
        ('"victim!x"@contoso.com', "quoted local part containing @, % or !"),
        ("a%b@c.example", "% or ! routing"),  # RR-02 percent hack
        ("relaytest%tailspintoys.com", "% or ! routing"),  # nmap 8 without quotes
        ("tailspintoys.com!relaytest", "% or ! routing"),  # nmap 14 bang path
        ("tailspintoys.com!relaytest@contoso.com", "% or ! routing"),  # nmap 16
        ("relaytest@tailspintoys.com@contoso.com", "more than one @"),  # nmap 11 double @
        ("@evil.example:u@contoso.com", "source route"),  # RR-06
        ("<@[192.0.2.1]:relaytest@tailspintoys.com>", "source route"),  # nmap 12
        ("@contoso.com", "empty local part"),
        ('""listme@dsbl.org""@contoso.com', "text after the quoted local part"),  # DSBL
        ('"open@contoso.com', "never closed"),
        ("u@[192.0.2.1]", "address literal"),  # RR-05
        ("u@[IPv6:::1]", "address literal"),
        ("u@192.0.2.1", "IP address"),
        ("u@localhost", "no dot"),
        ("u@contoso..com", "invalid domain"),
        ("u@ contoso.com", "white space"),
        ("john smith@contoso.com", "' '"),
        ("a<b@contoso.com", "'<'"),
        ('a"rcpt@contoso.com', "'\"'"),
        ("a\rb@contoso.com", "U+000D"),  # RR-20
        ('"a\r\nRCPT TO:<v@evil.example>"@contoso.com', "U+000D"),
        ("a\x00b@contoso.com", "U+0000"),
        ("a\tb@contoso.com", "U+0009"),
        ("a\x7fb@contoso.com", "U+007F"),
        ("a\x85b@contoso.com", "U+0085"),
        ("a@contoso.com\n", "U+000A"),
    ],
)
def test_recipient_domain_refuses(address: str, why: str) -> None:
    with pytest.raises(ValueError) as caught:
        recipient_domain(address)
    assert why in str(caught.value)
    assert "\r" not in str(caught.value) and "\x00" not in str(caught.value)


# --- certificate names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "names", "expected"),
    [
        ("*.contoso.com", ["contoso.com"], True),
        ("*.contoso.com", ["mail.contoso.com"], True),
        ("*.contoso.com", ["a.b.contoso.com"], True),
        ("*.contoso.com", ["*.contoso.com"], True),
        ("*.contoso.com", ["*.sales.contoso.com"], True),
        ("*.contoso.com", ["*.com"], False),
        ("*.contoso.com", ["notcontoso.com"], False),
        ("*.contoso.com", ["contoso.com.evil.example"], False),
        ("*.contoso.com", ["fabrikam.com", "MAIL.Contoso.com."], True),
        ("*.Contoso.COM.", ["mail.contoso.com"], True),
        ("mail.contoso.com", ["mail.contoso.com"], True),
        ("mail.contoso.com", ["MAIL.CONTOSO.COM."], True),
        ("Mail.Contoso.com.", ["mail.contoso.com"], True),
        ("mail.contoso.com", ["*.contoso.com"], True),  # RFC 6125: one label
        ("a.mail.contoso.com", ["*.contoso.com"], False),  # not two labels
        ("contoso.com", ["*.contoso.com"], False),  # a wildcard does not cover its base
        ("contoso.com", ["*.com"], False),  # nor does a wildcard under a single label
        ("mail.contoso.com", ["contoso.com"], False),
        ("mail.contoso.com", ["smtp.contoso.com"], False),
        ("mail.contoso.com", [], False),
        ("", ["mail.contoso.com"], False),
        ("*", ["mail.contoso.com"], False),
    ],
)
def test_certificate_matches(pattern: str, names: list[str], expected: bool) -> None:
    assert certificate_matches(pattern, names) is expected


# --- relay rights ------------------------------------------------------------------------------------------------

CERT_CONNECTOR = InboundConnector(
    "On-premises by certificate", connector_type=ON_PREMISES, tls_sender_certificate_name="*.contoso.com"
)
IP_CONNECTOR = InboundConnector(
    "On-premises by IP", connector_type=ON_PREMISES, sender_ip_addresses=("203.0.113.0/28", "198.51.100.7")
)
RELAY_ORG = Organization(
    accepted_domains=(AcceptedDomain("contoso.com"), AcceptedDomain("corp.example", DomainType.INTERNAL_RELAY, True)),
    inbound_connectors=(CERT_CONNECTOR, IP_CONNECTOR),
)
OWN_IP = "203.0.113.5"
OTHER_IP = "192.0.2.99"


@pytest.mark.parametrize(
    ("ip", "certs", "sender", "recipient", "allowed", "connector", "relay", "reason"),
    [
        # certificate-based connector: the certificate domain is accepted, any sender may relay (§3.2 Q&A)
        (
            OTHER_IP,
            ["mail.contoso.com"],
            "tailspintoys.com",
            "fabrikam.com",
            True,
            CERT_CONNECTOR,
            True,
            "mail.contoso.com",
        ),
        (None, ["*.contoso.com"], None, "fabrikam.com", True, CERT_CONNECTOR, True, "certificate"),
        (OTHER_IP, ["contoso.com"], "contoso.com", "fabrikam.com", True, CERT_CONNECTOR, True, "by certificate"),
        # the certificate matches no connector and its domain is not accepted
        (OTHER_IP, ["mail.tailspintoys.com"], "contoso.com", "fabrikam.com", False, None, True, "match no enabled"),
        (OTHER_IP, ["mail.tailspintoys.com"], "tailspintoys.com", "fabrikam.com", False, None, True, "neither"),
        # IP-based connector: the envelope sender domain must be accepted
        (OWN_IP, [], "contoso.com", "fabrikam.com", True, IP_CONNECTOR, True, "sender domain contoso.com"),
        (OWN_IP, [], "eu.corp.example", "fabrikam.com", True, IP_CONNECTOR, True, "by IP address"),  # MatchSubDomains
        (OWN_IP, [], "sales.contoso.com", "fabrikam.com", False, IP_CONNECTOR, True, "sales.contoso.com"),
        (OWN_IP, [], "tailspintoys.com", "fabrikam.com", False, IP_CONNECTOR, True, "neither the certificate domain"),
        (OWN_IP, [], None, "fabrikam.com", False, IP_CONNECTOR, True, "null sender"),
        # ... unless the certificate domain is accepted (it matches no connector here, the IP does)
        (
            OWN_IP,
            ["relay.corp.example"],
            "tailspintoys.com",
            "fabrikam.com",
            True,
            IP_CONNECTOR,
            True,
            "relay.corp.example",
        ),
        # the sender domain is accepted but the connection matches no connector
        (OTHER_IP, [], "contoso.com", "fabrikam.com", False, None, True, "192.0.2.99"),
        (None, [], "contoso.com", "fabrikam.com", False, None, True, "no IP address and no certificate"),
        # IPv4 CIDR edges of 203.0.113.0/28 and a single address
        ("203.0.113.0", [], "contoso.com", "fabrikam.com", True, IP_CONNECTOR, True, "allowed"),
        ("203.0.113.15", [], "contoso.com", "fabrikam.com", True, IP_CONNECTOR, True, "allowed"),
        ("203.0.113.16", [], "contoso.com", "fabrikam.com", False, None, True, "refused"),
        ("203.0.112.255", [], "contoso.com", "fabrikam.com", False, None, True, "refused"),
        ("198.51.100.7", [], "contoso.com", "fabrikam.com", True, IP_CONNECTOR, True, "allowed"),
        ("198.51.100.8", [], "contoso.com", "fabrikam.com", False, None, True, "refused"),
        ("::ffff:203.0.113.5", [], "contoso.com", "fabrikam.com", True, IP_CONNECTOR, True, "allowed"),
        ("2001:db8::5", [], "contoso.com", "fabrikam.com", False, None, True, "refused"),
        ("not an ip", [], "contoso.com", "fabrikam.com", False, None, True, "refused"),
        # mail to the organization is not a relay
        (OTHER_IP, [], "tailspintoys.com", "contoso.com", True, None, False, "not a relay"),
        (None, [], None, "Contoso.COM.", True, None, False, "not a relay"),
        (OTHER_IP, [], "tailspintoys.com", "hr.corp.example", True, None, False, "not a relay"),
        (OWN_IP, [], "contoso.com", "contoso.com", True, IP_CONNECTOR, False, "On-premises by IP"),
        # a subdomain of an accepted domain without MatchSubDomains is outside the organization
        (OTHER_IP, [], "tailspintoys.com", "sales.contoso.com", False, None, True, "refused"),
    ],
)
def test_relay_rights(
    ip: str | None,
    certs: list[str],
    sender: str | None,
    recipient: str,
    allowed: bool,
    connector: InboundConnector | None,
    relay: bool,
    reason: str,
) -> None:
    decision = relay_decision(RELAY_ORG, ip=ip, cert_names=certs, sender_domain=sender, recipient_domain=recipient)
    assert decision.allowed is allowed
    assert decision.reply == (None if allowed else REPLY_RELAY_DENIED)
    assert decision.inbound_connector == connector
    assert decision.relay is relay
    assert reason in decision.reason
    assert decision.reason.endswith(".")


@pytest.mark.parametrize(
    ("connectors", "ip", "certs", "sender", "failed", "not_failed"),
    [
        # the certificate domain is accepted, but only an IP-based connector exists and the IP is not in it
        ((IP_CONNECTOR,), OTHER_IP, ["mail.contoso.com"], "tailspintoys.com", "match no enabled", "neither"),
        # the IP matches a connector, but neither the certificate domain nor the sender domain is accepted
        ((IP_CONNECTOR,), OWN_IP, [], "tailspintoys.com", "neither", "match no enabled"),
        # both halves fail: both are named
        ((IP_CONNECTOR,), OTHER_IP, [], "tailspintoys.com", "neither", None),
    ],
)
def test_relay_refusal_names_the_half_that_failed(
    connectors: tuple[InboundConnector, ...],
    ip: str,
    certs: list[str],
    sender: str,
    failed: str,
    not_failed: str | None,
) -> None:
    org = replace(RELAY_ORG, inbound_connectors=connectors)
    decision = relay_decision(org, ip=ip, cert_names=certs, sender_domain=sender, recipient_domain="fabrikam.com")
    assert not decision.allowed
    assert decision.reply == REPLY_RELAY_DENIED
    assert failed in decision.reason
    if not_failed is None:
        assert "match no enabled" in decision.reason
    else:
        assert not_failed not in decision.reason


@pytest.mark.parametrize(
    ("enabled", "connector_type"),
    [
        (False, ConnectorType.ON_PREMISES),  # disabled connectors never match
        (True, ConnectorType.PARTNER),  # a Partner connector never grants relay
    ],
)
def test_relay_needs_an_enabled_on_premises_connector(enabled: bool, connector_type: ConnectorType) -> None:
    connectors = tuple(
        replace(c, enabled=enabled, connector_type=connector_type) for c in (CERT_CONNECTOR, IP_CONNECTOR)
    )
    org = replace(RELAY_ORG, inbound_connectors=connectors)
    for ip, certs in ((OWN_IP, []), (OTHER_IP, ["mail.contoso.com"])):
        decision = relay_decision(
            org, ip=ip, cert_names=certs, sender_domain="contoso.com", recipient_domain="fabrikam.com"
        )
        assert not decision.allowed
        assert decision.reply == REPLY_RELAY_DENIED
        assert decision.inbound_connector is None


PARTNER_BY_IP = InboundConnector(
    "Filter by IP",
    sender_domains=("*.fabrikam.com",),
    sender_ip_addresses=("192.0.2.0/24",),
    restrict_domains_to_ip_addresses=True,
)
PARTNER_BY_CERT = InboundConnector(
    "Filter by certificate",
    sender_domains=("tailspintoys.com",),
    tls_sender_certificate_name="mx.tailspintoys.com",
    restrict_domains_to_certificate=True,
)
PARTNER_OPEN = InboundConnector("Unrestricted partner", sender_domains=("*",), require_tls=True)


@pytest.mark.parametrize(
    ("connectors", "ip", "certs", "sender", "allowed", "via", "reason"),
    [
        ((PARTNER_BY_IP,), "192.0.2.10", [], "fabrikam.com", True, PARTNER_BY_IP, "Filter by IP"),
        ((PARTNER_BY_IP,), "192.0.2.10", [], "mail.fabrikam.com", True, PARTNER_BY_IP, "accepted"),
        ((PARTNER_BY_IP,), "198.51.100.1", [], "fabrikam.com", False, None, "198.51.100.1"),
        ((PARTNER_BY_IP,), None, [], "mail.fabrikam.com", False, None, "SenderIPAddresses"),
        ((PARTNER_BY_IP,), "198.51.100.1", [], "tailspintoys.com", True, None, "not a relay"),  # not its sender
        ((PARTNER_BY_IP,), "198.51.100.1", [], None, True, None, "not a relay"),  # the null sender matches nothing
        ((replace(PARTNER_BY_IP, enabled=False),), "198.51.100.1", [], "fabrikam.com", True, None, "not a relay"),
        ((PARTNER_BY_CERT,), OTHER_IP, ["mx.tailspintoys.com"], "tailspintoys.com", True, PARTNER_BY_CERT, "accepted"),
        ((PARTNER_BY_CERT,), OTHER_IP, ["*.tailspintoys.com"], "tailspintoys.com", True, PARTNER_BY_CERT, "accepted"),
        ((PARTNER_BY_CERT,), OTHER_IP, ["mx.fabrikam.com"], "tailspintoys.com", False, None, "mx.fabrikam.com"),
        ((PARTNER_BY_CERT,), OTHER_IP, [], "tailspintoys.com", False, None, "presented no certificate"),
        (
            (replace(PARTNER_BY_CERT, tls_sender_certificate_name=None),),
            OTHER_IP,
            ["mx.tailspintoys.com"],
            "tailspintoys.com",
            False,
            None,
            "none is set",
        ),
        ((PARTNER_OPEN,), OTHER_IP, [], "fabrikam.com", True, None, "not a relay"),  # no restriction, no refusal
        # one satisfied restricted connector is enough
        (
            (PARTNER_BY_IP, replace(PARTNER_BY_IP, name="Second filter", sender_ip_addresses=("198.51.100.0/24",))),
            "198.51.100.1",
            [],
            "fabrikam.com",
            True,
            None,
            "Second filter",
        ),
    ],
)
def test_partner_restrictions(
    connectors: tuple[InboundConnector, ...],
    ip: str | None,
    certs: list[str],
    sender: str | None,
    allowed: bool,
    via: InboundConnector | None,
    reason: str,
) -> None:
    org = replace(RELAY_ORG, inbound_connectors=connectors)
    decision = relay_decision(org, ip=ip, cert_names=certs, sender_domain=sender, recipient_domain="contoso.com")
    assert decision.allowed is allowed
    assert decision.relay is False
    assert decision.reply == (None if allowed else REPLY_PARTNER_RESTRICTED)
    assert reason in decision.reason
    if via is not None:
        assert decision.inbound_connector == via


def test_partner_restriction_reply_is_the_clouds_text() -> None:
    assert REPLY_PARTNER_RESTRICTED == (
        "550 5.7.51 TenantInboundAttribution; There is a partner connector configured that matched the message's "
        "recipient domain. The connector had either the RestrictDomainsToIPAddresses or RestrictDomainsToCertificate "
        "set"
    )
    assert REPLY_RELAY_DENIED == "550 5.7.64 TenantAttribution; Relay Access Denied"


def test_partner_restrictions_do_not_apply_to_relay() -> None:
    org = replace(RELAY_ORG, inbound_connectors=(IP_CONNECTOR, PARTNER_BY_IP))
    decision = relay_decision(
        org, ip=OWN_IP, cert_names=[], sender_domain="fabrikam.com", recipient_domain="tailspintoys.com"
    )
    assert decision.reply == REPLY_RELAY_DENIED  # fabrikam.com is not accepted: refused as a relay, not 5.7.51


# --- the one test of a client address and the one reader of local parts (issue 11) ------------------------------


@pytest.mark.parametrize(
    ("ip", "ranges", "expected"),
    [
        ("127.0.0.1", ["127.0.0.0/8"], True),
        ("::ffff:127.0.0.1", ["127.0.0.0/8"], True),  # an IPv4 peer of a dual-stack listener
        ("::ffff:192.0.2.9", ["192.0.2.9"], True),
        ("192.0.2.9", ["::ffff:0:0/96"], True),
        ("fe80::1%eth0", ["fe80::/10"], True),
        ("2001:db8::1", ["2001:db8::/32"], True),
        ("2001:db8::1", ["192.0.2.0/24"], False),
        ("192.0.2.9", ["127.0.0.1/8"], False),
        ("127.9.9.9", [" 127.0.0.1/8 "], True),  # host bits ignored, blanks stripped
        ("192.0.2.9", ["192.0.2.1-192.0.2.20"], False),  # ranges are RemoteIPRanges syntax, not SenderIPAddresses
        ("192.0.2.9", ["not an address", ""], False),
        ("", ["0.0.0.0/0"], False),
        (None, ["0.0.0.0/0"], False),
        ("garbage", ["0.0.0.0/0"], False),
    ],
)
def test_ip_in_ranges(ip: str | None, ranges: list[str], expected: bool) -> None:
    assert ip_in_ranges(ip, ranges) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("john@contoso.com", ("john", "@", "contoso.com")),
        ("postmaster", ("postmaster", "", "")),
        ('"john smith"@contoso.com', ("john smith", "@", "contoso.com")),
        ('"a\\"b"@d', ('a"b', "@", "d")),
        ('"a"b@c', ("a", "", "b@c")),
        ('"listme@dsbl.org"@contoso.com', ("listme@dsbl.org", "@", "contoso.com")),
        ('"unclosed@contoso.com', None),
    ],
)
def test_split_address_is_the_one_reader_of_local_parts(text: str, expected: tuple[str, str, str] | None) -> None:
    assert split_address(text) == expected


def test_the_check_and_the_relay_recognise_a_mapped_address_alike() -> None:
    org = parse_config(
        '[[AcceptedDomain]]\nDomainName = "contoso.com"\nDomainType = "Authoritative"\n'
        '[[InboundConnector]]\nName = "From on-premises"\nConnectorType = "OnPremises"\nSenderDomains = ["*"]\n'
        'SenderIPAddresses = ["127.0.0.0/24"]\n'
    )
    for ip in ("127.0.0.1", "::ffff:127.0.0.1"):
        match = on_premises_connector(org, ip=ip, cert_names=())
        assert match is not None and match.connector.name == "From on-premises"
        assert relay_decision(org, ip=ip, cert_names=(), sender_domain="contoso.com",
                              recipient_domain="tailspintoys.com").allowed  # fmt: skip
        settings = RelaySettings(organization=org, role=RelayRole.CLOUD, hostname="cloud.test", listen=(),
                                 spool=Path("unused"), maildir=Path("unused"))  # fmt: skip
        assert is_trusted(settings, peer_ip=ip, cert_names=())
