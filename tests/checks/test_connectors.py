"""The connectors check: routing verdicts, the cloud's smart-host validation, and the inbound side — judged on
the lab's organization (examples/contoso.toml), its broken smart hosts (examples/broken-smarthosts.toml) and
small configurations written for one finding each."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from checks import default_registry
from diag.config import Organization, load_config, parse_config
from diag.lab.pki import CertKind, TestPKI
from diag.lab.runner import Lab
from diag.lab.world import EXAMPLE_CONFIG
from diag.model import DomainReport, Severity
from diag.runner import run_checks

from .conftest import codes_of

BROKEN = EXAMPLE_CONFIG.parent / "broken-smarthosts.toml"


def check(lab: Lab, domains: list[str], org: Organization, **options: object) -> list[DomainReport]:
    registry = default_registry().select(["connectors", "mx"])
    run_options = lab.run_options(organization=org, timeout=1.0, **options)
    return list(asyncio.run(run_checks(domains, registry, run_options)).domains)


def config(text: str) -> Organization:
    return parse_config(text, Path("test.toml"))


def client_cert(pki: TestPKI, *names: str, kind: CertKind = CertKind.GOOD) -> tuple[bytes, ...]:
    """A chain as an on-premises server would present it (``--client-cert``), issued by ``pki``."""
    return tuple(cert.public_bytes(Encoding.DER) for cert in pki.issue(names, kind=kind).chain)


ORG = """
[Organization]
MxHost = "contoso-com.mail.protection.outlook.com"
[[AcceptedDomain]]
DomainName = "contoso.com"
DomainType = "InternalRelay"
"""


# The lab's organization: everything green, and the documented ambiguity for sales.contoso.com.


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("contoso.com", ["ROUTE_CONNECTOR", "SMARTHOST_OK", "INBOUND_OK"]),
        ("sales.contoso.com", ["ROUTE_CONNECTOR", "ROUTE_AMBIGUOUS", "SMARTHOST_OK", "INBOUND_OK"]),
        ("fabrikam.com", ["ROUTE_CONNECTOR", "SMARTHOST_OK", "INBOUND_OK"]),
        ("contoso.onmicrosoft.com", ["ROUTE_CONNECTOR", "SMARTHOST_OK", "INBOUND_OK"]),
        ("tailspintoys.com", ["DOMAIN_EXTERNAL"]),
        ("notaccepted.example", ["DOMAIN_NOT_ACCEPTED"]),
    ],
)
def test_lab_organization(domain_report, domain: str, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert codes_of(domain_report(domain), "connectors") == expected


def test_lab_route_names_the_connector_and_rule(domain_report) -> None:  # type: ignore[no-untyped-def]
    route, ambiguous, *_ = domain_report("sales.contoso.com").result("connectors").findings
    assert "'Connector 3'" in route.message and "*.contoso.com" in route.message
    assert "Connector 1" in ambiguous.message and ambiguous.severity is Severity.WARNING


# One broken smart host per code (examples/broken-smarthosts.toml).


@pytest.mark.parametrize(
    ("domain", "code", "cloud"),
    [
        ("dangling.example", "SMARTHOST_RESOLVE_FAILED", "450 4.4.312"),
        ("refused.example", "SMARTHOST_CONNECT_FAILED", "450 4.4.316"),
        ("blackhole.example", "SMARTHOST_CONNECT_FAILED", "450 4.4.315"),
        ("ehlodrop.example", "SMARTHOST_EHLO_FAILED", "450 4.4.317"),
        ("notls.example", "SMARTHOST_TLS_FAILED", "450 4.4.317 Cannot connect to remote server [Message=451 5.7.3"),
        ("chainless.example", "SMARTHOST_TLS_FAILED", "450 4.4.317 Cannot connect to remote server [Message=Untr"),
        ("expired.example", "SMARTHOST_TLS_FAILED", "450 4.7.320"),
        ("malformed.example", "SMARTHOST_TLS_FAILED", "450 4.4.317 Cannot connect to remote server [Message=Untr"),
        ("wrongname.example", "SMARTHOST_TLSDOMAIN_MISMATCH", "450 4.4.317 Cannot connect to remote server [Message=S"),
    ],
)
def test_lab_broken_smart_hosts(lab: Lab, domain: str, code: str, cloud: str) -> None:
    (report,) = check(lab, [domain], load_config(BROKEN))
    findings = report.result("connectors").findings
    assert [f.code for f in findings] == ["DOMAIN_EXTERNAL", "ROUTE_CONNECTOR", code]
    assert (findings[-1].cloud_error or "").startswith(cloud)


# Configurations written for one finding each.


def test_internal_relay_domain_without_connector(lab: Lab) -> None:
    (report,) = check(lab, ["contoso.com"], config(ORG))
    assert codes_of(report, "connectors")[:1] == ["ROUTE_NONE"]


def test_authoritative_domain_without_connector_stays_in_the_cloud(lab: Lab) -> None:
    (report,) = check(lab, ["contoso.com"], config(ORG.replace("InternalRelay", "Authoritative")))
    assert codes_of(report, "connectors") == ["ROUTE_CLOUD", "INBOUND_UNCHECKED"]


def test_tied_connectors(lab: Lab) -> None:
    tie = ORG + "".join(
        f'[[OutboundConnector]]\nName = "{name}"\nConnectorType = "OnPremises"\nRecipientDomains = ["contoso.com"]\n'
        'UseMXRecord = false\nSmartHosts = ["mail.contoso.com"]\n'
        for name in ("Zulu", "Alpha")
    )
    (report,) = check(lab, ["contoso.com"], config(tie))
    findings = report.result("connectors").findings
    assert [f.code for f in findings][:2] == ["ROUTE_CONNECTOR", "ROUTE_TIE"]
    assert "'Alpha'" in findings[0].message


def test_inbound_certificate_outside_the_accepted_domains(lab: Lab) -> None:
    unrelated = client_cert(lab.pki, "mail.unrelated.example")
    (report,) = check(lab, ["contoso.com"], load_config(EXAMPLE_CONFIG), client_cert=unrelated)
    codes = codes_of(report, "connectors")
    assert codes[-3:] == ["INBOUND_CERT_NOT_ACCEPTED_DOMAIN", "INBOUND_NO_MATCH", "RELAY_DENIED"]
    denied = report.result("connectors").findings[-1]
    assert denied.cloud_error == "550 5.7.64 TenantAttribution; Relay Access Denied"


# ::ffff:127.0.10.10 is how a dual-stack relay listener sees 127.0.10.10: the check judges it as the relay does
# (tests/relay/test_server.py, test_an_ipv4_client_of_a_dual_stack_listener_is_recognised).
@pytest.mark.parametrize("sender_ip", ["127.0.10.10", "::ffff:127.0.10.10"])
def test_inbound_by_address(lab: Lab, sender_ip: str) -> None:
    org = load_config(EXAMPLE_CONFIG)
    unrelated = client_cert(lab.pki, "mail.unrelated.example")
    (ok,) = check(lab, ["contoso.com"], org, client_cert=unrelated, sender_ip=sender_ip)
    # The address matches the OnPremises connector and the sender domain is accepted: relay allowed, but the
    # certificate still names no accepted domain.
    assert codes_of(ok, "connectors")[-1] == "INBOUND_CERT_NOT_ACCEPTED_DOMAIN"
    (bad,) = check(lab, ["contoso.com"], org, client_cert=unrelated, sender_ip="192.0.2.1")
    assert codes_of(bad, "connectors")[-2:] == ["INBOUND_NO_MATCH", "RELAY_DENIED"]


# The on-premises server's certificate is judged as the cloud (and diag's relay) judges a client certificate:
# a matching name does not help a certificate that is expired, not yet valid, self-signed or untrusted.

INVALID = [
    (CertKind.EXPIRED, "expired on "),
    (CertKind.NOT_YET_VALID, "is not valid before "),
    (CertKind.SELF_SIGNED, "is self-signed"),
    (CertKind.CHAINLESS, "comes without its intermediate CA certificate (no certificate for the issuer "),
]


@pytest.mark.parametrize(("kind", "why"), INVALID)
def test_an_invalid_client_certificate_is_refused_even_when_its_name_matches(
    lab: Lab, kind: CertKind, why: str
) -> None:
    # Given --client-cert mail.contoso.com (the inbound connector wants *.contoso.com), broken one way
    chain = client_cert(lab.pki, "mail.contoso.com", kind=kind)
    (report,) = check(lab, ["contoso.com"], load_config(EXAMPLE_CONFIG), client_cert=chain)
    findings = report.result("connectors").findings
    # Then the cloud would not accept it: an error with the cloud's text, never INBOUND_OK
    assert [f.code for f in findings][-2:] == ["INBOUND_CERT_INVALID", "RELAY_DENIED"]
    invalid = findings[-2]
    assert invalid.severity is Severity.ERROR
    assert invalid.message.startswith(
        f"The certificate of the on-premises server (mail.contoso.com, as given with --client-cert) {why}"
    )
    assert "its name matching the inbound connector 'From on-premises' does not count" in invalid.message
    assert invalid.cloud_error == "550 5.7.64 TenantAttribution; Relay Access Denied"


def test_a_client_certificate_from_a_ca_nobody_trusts_is_refused(lab: Lab) -> None:
    chain = client_cert(TestPKI.create(org="a CA nobody trusts"), "mail.contoso.com")
    (report,) = check(lab, ["contoso.com"], load_config(EXAMPLE_CONFIG), client_cert=chain)
    assert codes_of(report, "connectors")[-2:] == ["INBOUND_CERT_INVALID", "RELAY_DENIED"]
    assert "does not lead to a trusted certificate authority" in report.result("connectors").findings[-2].message


def test_a_valid_client_certificate_with_the_right_name_is_recognised(lab: Lab) -> None:
    chain = client_cert(lab.pki, "mail.contoso.com")
    (report,) = check(lab, ["contoso.com"], load_config(EXAMPLE_CONFIG), client_cert=chain)
    assert codes_of(report, "connectors")[-1] == "INBOUND_OK"


def test_an_expired_certificate_is_invalid_even_when_the_address_is_recognised(lab: Lab) -> None:
    chain = client_cert(lab.pki, "mail.contoso.com", kind=CertKind.EXPIRED)
    org = load_config(EXAMPLE_CONFIG)
    (report,) = check(lab, ["contoso.com"], org, client_cert=chain, sender_ip="127.0.10.10")
    # The address still lets it relay; the certificate is still wrong, and nothing says "OK"
    assert codes_of(report, "connectors")[-1:] == ["INBOUND_CERT_INVALID"]


SMART_HOST_ORG = """
[Organization]
Name = "Test"
[[AcceptedDomain]]
DomainName = "{domain}"
DomainType = "InternalRelay"
[[OutboundConnector]]
Name = "To on-premises"
ConnectorType = "OnPremises"
RecipientDomains = ["{domain}"]
UseMXRecord = false
SmartHosts = ["{host}"]
[[InboundConnector]]
Name = "From on-premises"
ConnectorType = "OnPremises"
SenderDomains = ["*"]
TlsSenderCertificateName = "*.{domain}"
"""


@pytest.mark.parametrize(
    ("domain", "why"),
    [
        ("expired.example", "expired on "),
        ("notyetvalid.example", "is not valid before "),
        ("selfsigned.example", "is self-signed"),
        ("chainless.example", "comes without its intermediate CA certificate"),
        ("untrusted.example", "does not lead to a trusted certificate authority"),
    ],
)
def test_the_smart_hosts_listener_certificate_is_judged_too(lab: Lab, domain: str, why: str) -> None:
    # Given an on-premises server (the smart host mx.<domain>) whose certificate names mx.<domain>, which the
    # inbound connector's *.<domain> matches, but which is broken; the outbound connector is opportunistic
    org = config(SMART_HOST_ORG.format(domain=domain, host=f"mx.{domain}"))
    (report,) = check(lab, [domain], org)
    findings = report.result("connectors").findings
    # Then the inbound side is an error (the relay would refuse this certificate at the handshake)
    assert [f.code for f in findings] == ["ROUTE_CONNECTOR", "SMARTHOST_OK", "INBOUND_CERT_INVALID", "RELAY_DENIED"]
    assert f"(mx.{domain}, as its port-25 listener serves it) {why}" in findings[2].message


def test_a_smart_host_with_a_valid_certificate_is_recognised_by_it(lab: Lab) -> None:
    org = config(SMART_HOST_ORG.format(domain="tailspintoys.com", host="mail.tailspintoys.com"))
    (report,) = check(lab, ["tailspintoys.com"], org)
    assert codes_of(report, "connectors") == ["ROUTE_CONNECTOR", "SMARTHOST_OK", "INBOUND_OK"]


def test_accepted_domain_mx_must_point_at_the_cloud(lab: Lab) -> None:
    org = config(ORG + '[[AcceptedDomain]]\nDomainName = "tailspintoys.com"\n')
    (report,) = check(lab, ["tailspintoys.com"], org)
    assert "MX_NOT_EXPECTED" in codes_of(report, "mx")


def test_null_mx_on_an_accepted_domain_is_critical(lab: Lab) -> None:
    org = config(ORG + '[[AcceptedDomain]]\nDomainName = "nullmx.example"\n')
    (report,) = check(lab, ["nullmx.example"], org)
    (finding,) = report.result("mx").findings
    assert (finding.code, finding.severity) == ("MX_NULL_ACCEPTED", Severity.CRITICAL)


def test_the_addresses_of_a_smart_host_are_probed_at_once() -> None:
    # Given a smart host with two addresses, both accepting TCP and never greeting (tarpits)
    from checks.connectors import _probe_smart_host
    from diag.context import CheckContext, RunContext, RunOptions
    from diag.lab.dns import DnsServer, ZoneData
    from diag.net.dns import Nameserver

    zone = ZoneData()
    zone.add_zone("example")
    zone.add("smart.example", "A", "127.0.77.61", "127.0.77.62")
    events: list[tuple[str, str]] = []

    async def go() -> None:
        async def tarpit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            ip = writer.get_extra_info("sockname")[0]
            events.append(("open", ip))
            await reader.read()  # until the client gives up and closes
            events.append(("closed", ip))
            writer.close()

        dns = DnsServer(zone)
        dns_port = await dns.start("127.0.77.53")
        first = await asyncio.start_server(tarpit, "127.0.77.61", 0)
        port = first.sockets[0].getsockname()[1]
        second = await asyncio.start_server(tarpit, "127.0.77.62", port)
        try:
            options = RunOptions(nameservers=(Nameserver("127.0.77.53", dns_port),), smtp_port=port, timeout=0.5,
                                 allow_private=True)  # fmt: skip
            probes = await _probe_smart_host(
                CheckContext("contoso.com", RunContext(options), {}), "smart.example", (), datetime.now(UTC)
            )
            assert sorted(p.ip for p in probes) == ["127.0.77.61", "127.0.77.62"]
            await asyncio.sleep(0.1)  # let the servers see the closes
        finally:
            first.close()
            second.close()
            await dns.close()

    asyncio.run(go())

    # Then both were open before either was given up: one silent address does not hold up the other
    assert [kind for kind, _ in events[:2]] == ["open", "open"]
