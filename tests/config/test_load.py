"""Reading and checking the TOML configuration (``diag/config/load.py``): the model it makes, one line per problem."""

from __future__ import annotations

import codecs
import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest

from diag.config import (
    AcceptedDomain,
    ConfigFileError,
    ConnectorType,
    DomainType,
    InboundConnector,
    Organization,
    OutboundConnector,
    TlsSettings,
    dump_toml,
    load_config,
    parse_config,
)
from diag.errors import ConfigError, UsageError

SOURCE = Path("contoso.toml")

VALID = """\
# The setup guide's organization, every key used once.
[Organization]
Name = "Contoso"
MxHost = "Contoso-com.mail.protection.outlook.com"

[[AcceptedDomain]]
DomainName = "contoso.com"
DomainType = "authoritative"
Default = true

[[AcceptedDomain]]
DomainName = "sales.contoso.com"
DomainType = "InternalRelay"
MatchSubDomains = true

[[AcceptedDomain]]
DomainName = "bücher.example"
InitialDomain = false

[[OutboundConnector]]
Name = "Connector 1"
Enabled = true
ConnectorType = "OnPremises"
AllAcceptedDomains = true
UseMXRecord = false
SmartHosts = ["mail.contoso.com", "192.0.2.25", "192.0.2.0/28"]
TlsSettings = "certificatevalidation"
TestMode = false
ConnectorSource = "AdminUI"
Comment = "to the on-premises servers"
ValidationRecipients = ["john@Contoso.COM"]
IsValidated = true
LastValidationTimestamp = 2019-03-15T02:31:53Z

[[OutboundConnector]]
Name = "Connector 3"
ConnectorType = "OnPremises"
RecipientDomains = [
    "*.Contoso.com",
    "*",
]
IsTransportRuleScoped = true
UseMXRecord = false
SmartHosts = "sales-mail.contoso.com"
TlsSettings = "DomainValidation"
TlsDomain = "*.contoso.com"
LastValidationTimestamp = "2019-03-15T02:31:53.0000000"

[[InboundConnector]]
Name = "From on-premises"
Enabled = false
ConnectorType = "OnPremises"
SenderDomains = ["smtp:*;1", "contoso.com"]
SenderIPAddresses = ["192.0.2.10", "198.51.100.0/24"]
TlsSenderCertificateName = "*.contoso.com"
RequireTls = true
ConnectorSource = "HybridWizard"
Comment = ""

[[InboundConnector]]
Name = "From Fabrikam"
ConnectorType = "Partner"
SenderDomains = "fabrikam.com"
RestrictDomainsToCertificate = true
RestrictDomainsToIPAddresses = true
"""

WHEN = datetime(2019, 3, 15, 2, 31, 53, tzinfo=UTC)

EXPECTED = Organization(
    name="Contoso",
    mx_host="contoso-com.mail.protection.outlook.com",
    accepted_domains=(
        AcceptedDomain("contoso.com", default=True),
        AcceptedDomain("sales.contoso.com", DomainType.INTERNAL_RELAY, match_subdomains=True),
        AcceptedDomain("xn--bcher-kva.example"),
    ),
    outbound_connectors=(
        OutboundConnector(
            "Connector 1",
            connector_type=ConnectorType.ON_PREMISES,
            all_accepted_domains=True,
            use_mx_record=False,
            smart_hosts=("mail.contoso.com", "192.0.2.25", "192.0.2.0/28"),
            tls_settings=TlsSettings.CERTIFICATE_VALIDATION,
            connector_source="AdminUI",
            comment="to the on-premises servers",
            validation_recipients=("john@contoso.com",),
            is_validated=True,
            last_validation_timestamp=WHEN,
        ),
        OutboundConnector(
            "Connector 3",
            connector_type=ConnectorType.ON_PREMISES,
            recipient_domains=("*.contoso.com", "*"),
            is_transport_rule_scoped=True,
            use_mx_record=False,
            smart_hosts=("sales-mail.contoso.com",),
            tls_settings=TlsSettings.DOMAIN_VALIDATION,
            tls_domain="*.contoso.com",
            last_validation_timestamp=WHEN,
        ),
    ),
    inbound_connectors=(
        InboundConnector(
            "From on-premises",
            enabled=False,
            connector_type=ConnectorType.ON_PREMISES,
            sender_domains=("*", "contoso.com"),
            sender_ip_addresses=("192.0.2.10", "198.51.100.0/24"),
            tls_sender_certificate_name="*.contoso.com",
            require_tls=True,
            connector_source="HybridWizard",
        ),
        InboundConnector(
            "From Fabrikam",
            sender_domains=("fabrikam.com",),
            restrict_domains_to_certificate=True,
            restrict_domains_to_ip_addresses=True,
        ),
    ),
)


BASE = '[[AcceptedDomain]]\nDomainName = "contoso.com"\n'  # lines 1-2; the snippets below start on line 3
OUT = [
    "[[OutboundConnector]]",  # 3
    'Name = "Connector 1"',  # 4
    'ConnectorType = "OnPremises"',  # 5
    'RecipientDomains = ["contoso.com"]',  # 6
    "UseMXRecord = false",  # 7
    'SmartHosts = ["mail.contoso.com"]',  # 8
]
IN = [
    "[[InboundConnector]]",  # 3
    'Name = "From on-premises"',  # 4
    'ConnectorType = "OnPremises"',  # 5
    'SenderDomains = ["*"]',  # 6
]


def out(*extra: str, without: tuple[str, ...] = ()) -> list[str]:
    """The valid outbound connector of lines 3-8, minus the keys ``without``, plus ``extra`` lines after it."""
    return [line for line in OUT if line.split(" =")[0] not in without] + list(extra)


def inbound(*extra: str) -> list[str]:
    return IN + list(extra)


def problems_of(text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigFileError) as caught:
        parse_config(text, SOURCE)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


# --- a valid file ---------------------------------------------------------------------------------------------


def test_a_complete_config_loads_into_the_model(tmp_path: Path) -> None:
    path = tmp_path / "contoso.toml"
    path.write_text(VALID, encoding="utf-8")

    organization = load_config(path)

    assert organization == dataclasses.replace(EXPECTED, source=path)


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "contoso.toml"
    path.write_bytes(codecs.BOM_UTF8 + VALID.encode())

    assert load_config(path) == dataclasses.replace(EXPECTED, source=path)


def test_only_accepted_domains_are_required() -> None:
    organization = parse_config('[[AcceptedDomain]]\nDomainName = "contoso.com"\n')

    assert organization == Organization(accepted_domains=(AcceptedDomain("contoso.com"),))


def test_the_mail_authentication_keys_of_the_organization() -> None:
    text = ('[Organization]\nSpfInclude = "SPF.Example.NET"\nDkimSelectors = ["S2048", "2024.mail"]\n'
            '[[AcceptedDomain]]\nDomainName = "contoso.com"\n')  # fmt: skip
    organization = parse_config(text)
    assert (organization.spf_include, organization.dkim_selectors) == ("spf.example.net", ("s2048", "2024.mail"))
    assert parse_config(dump_toml(organization)) == organization


@pytest.mark.parametrize("selector", ["bad_selector", "-s1", "a..b", ""])
def test_a_dkim_selector_is_dns_labels(selector: str) -> None:
    text = f'[Organization]\nDkimSelectors = ["{selector}"]\n[[AcceptedDomain]]\nDomainName = "a.com"\n'
    (problem,) = problems_of(text)
    assert "Organization.DkimSelectors" in problem and "is not a DKIM selector" in problem


def test_connector_names_need_only_be_unique_per_kind() -> None:
    text = BASE + "\n".join(OUT + IN).replace("From on-premises", "Connector 1")

    organization = parse_config(text)

    assert organization.outbound_connectors[0].name == organization.inbound_connectors[0].name == "Connector 1"


@pytest.mark.parametrize(
    "written",
    [
        "2019-03-15T02:31:53Z",
        '"2019-03-15T02:31:53.0000000"',
        '"2019-03-15T02:31:53.0000000Z"',
        '"2019-03-15 02:31:53z"',
        "2019-03-15T04:31:53+02:00",
        "2019-03-15T02:31:53",
        '"/Date(1552617113000)/"',
    ],
)
def test_timestamps_in_every_form_become_utc(written: str) -> None:
    text = BASE + "\n".join(out(f"LastValidationTimestamp = {written}"))

    connector = parse_config(text).outbound_connectors[0]

    assert connector.last_validation_timestamp == WHEN
    assert connector.last_validation_timestamp.tzinfo is UTC


@pytest.mark.parametrize(
    ("written", "shown"),
    [
        ("0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00+01:00"),
        ("9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59-01:00"),
        ('"9999-12-31T23:59:59-01:00"', "9999-12-31T23:59:59-01:00"),
        ('"/Date(253402300800000)/"', "'/Date(253402300800000)/'"),
        ('"/Date(-99999999999999999)/"', "'/Date(-99999999999999999)/'"),
        (f'"/Date({"9" * 5000})/"', f"'/Date({'9' * 5000})/'"),  # more digits than int() reads
    ],
)
def test_timestamps_outside_the_years_1_to_9999_in_utc_are_refused(written: str, shown: str) -> None:
    found = problems_of(BASE + "\n".join(out(f"LastValidationTimestamp = {written}")))

    assert found == (
        f"contoso.toml:9: OutboundConnector[1].LastValidationTimestamp: {shown} is not within the years 1 to 9999 "
        "in UTC; write a date and time such as 2019-03-15T02:31:53Z",
    )


# --- one problem, one line: file, line, table, field, what is wrong and how to fix it -------------------------

CASES = {
    "enum typo": (
        out('TlsSettings = "DomainValidaton"'),
        "contoso.toml:9: OutboundConnector[1].TlsSettings: 'DomainValidaton' is not a TlsSettings value; "
        "use EncryptionOnly, CertificateValidation or DomainValidation",
    ),
    "enum not text": (out("TlsSettings = 2"), "contoso.toml:9: OutboundConnector[1].TlsSettings: found a number; use"),
    "connector type": (
        out('ConnectorType = "OnPrem"', without=("ConnectorType",)),
        "contoso.toml:8: OutboundConnector[1].ConnectorType: 'OnPrem' is not a ConnectorType value; "
        "use OnPremises or Partner",
    ),
    "domain type": (
        ["[[AcceptedDomain]]", 'DomainName = "fabrikam.com"', 'DomainType = "Relay"'],
        "contoso.toml:5: AcceptedDomain[2].DomainType: 'Relay' is not a DomainType value; "
        "use Authoritative, InternalRelay or ExternalRelay",
    ),
    "bool as text": (
        out('Enabled = "yes"'),
        "contoso.toml:9: OutboundConnector[1].Enabled: found text; write true or false, without quotes",
    ),
    "text as number": (
        out("Comment = 5"),
        "contoso.toml:9: OutboundConnector[1].Comment: found a number; write text in double quotes",
    ),
    "list as number": (
        out("ValidationRecipients = 5"),
        'contoso.toml:9: OutboundConnector[1].ValidationRecipients: found a number; write a list of strings such as ["',
    ),
    "list holding a number": (
        out('SmartHosts = ["mail.contoso.com", 25]', without=("SmartHosts",)),
        "contoso.toml:8: OutboundConnector[1].SmartHosts: found a list holding a number; write a list of strings",
    ),
    "name missing": (
        out(without=("Name",)),
        'contoso.toml:3: OutboundConnector[1].Name: missing; add Name = "Connector 1"',
    ),
    "name empty": (
        [IN[0], 'Name = " "', *IN[2:]],
        "contoso.toml:4: InboundConnector[1].Name: is empty; give it a name",
    ),
    "name too long": (
        [OUT[0], f'Name = "{"x" * 65}"', *OUT[2:]],
        "contoso.toml:4: OutboundConnector[1].Name: 65 characters, more than the 64 Exchange allows; shorten it",
    ),
    "duplicate connector name": (
        OUT + [line.replace("Connector 1", "CONNECTOR 1") for line in OUT],
        "contoso.toml:10: OutboundConnector[2].Name: 'CONNECTOR 1' is already the Name of OutboundConnector[1]; "
        "each may appear only once",
    ),
    "duplicate accepted domain": (
        ["[[AcceptedDomain]]", 'DomainName = "Contoso.COM."'],
        "contoso.toml:4: AcceptedDomain[2].DomainName: 'contoso.com' is already the DomainName of AcceptedDomain[1]",
    ),
    "accepted domain syntax": (
        ["[[AcceptedDomain]]", 'DomainName = "fabrikam..com"'],
        "contoso.toml:4: AcceptedDomain[2].DomainName: 'fabrikam..com' is not a valid domain name: label ''",
    ),
    "accepted domain wildcard": (
        ["[[AcceptedDomain]]", 'DomainName = "*.fabrikam.com"'],
        "contoso.toml:4: AcceptedDomain[2].DomainName: '*.fabrikam.com' is a wildcard; an accepted domain is one",
    ),
    "match subdomains on authoritative": (
        ["[[AcceptedDomain]]", 'DomainName = "fabrikam.com"', "MatchSubDomains = true"],
        "contoso.toml:5: AcceptedDomain[2].MatchSubDomains: the cloud accepts subdomains only for InternalRelay "
        'domains; set DomainType = "InternalRelay" or MatchSubDomains = false',
    ),
    "recipient domain syntax": (
        out('RecipientDomains = ["contoso.com", "contoso_sales.com"]', without=("RecipientDomains",)),
        "contoso.toml:8: OutboundConnector[1].RecipientDomains: 'contoso_sales.com' is not a valid domain name",
    ),
    "embedded wildcard": (
        out('RecipientDomains = ["a.*.contoso.com"]', without=("RecipientDomains",)),
        "contoso.toml:8: OutboundConnector[1].RecipientDomains: 'a.*.contoso.com' has a wildcard inside the name; "
        "only * or *.domain is allowed",
    ),
    "wildcard without dot": (
        out('RecipientDomains = "*contoso.com"', without=("RecipientDomains",)),
        "contoso.toml:8: OutboundConnector[1].RecipientDomains: '*contoso.com' has a wildcard inside the name",
    ),
    "smart host name": (
        out('SmartHosts = ["mail"]', without=("SmartHosts",)),
        "contoso.toml:8: OutboundConnector[1].SmartHosts: 'mail' is not a fully qualified domain name (it has no "
        "dot); give a host name (mail.contoso.com), an IP address or a CIDR range",
    ),
    "smart host with port": (
        out('SmartHosts = ["mail.contoso.com:587"]', without=("SmartHosts",)),
        "contoso.toml:8: OutboundConnector[1].SmartHosts: 'mail.contoso.com:587' has a port; smart hosts take none",
    ),
    "smart host range": (
        out('SmartHosts = ["192.0.2.0/33"]', without=("SmartHosts",)),
        "contoso.toml:8: OutboundConnector[1].SmartHosts: '192.0.2.0/33' is not a valid CIDR range",
    ),
    "no smart hosts": (
        out(without=("SmartHosts",)),
        "contoso.toml:7: OutboundConnector[1].UseMXRecord: false needs smart hosts; add SmartHosts = [",
    ),
    "smart hosts with MX routing": (
        out("UseMXRecord = true", without=("UseMXRecord",)),
        "contoso.toml:7: OutboundConnector[1].SmartHosts: ignored while UseMXRecord is true (its default); "
        "set UseMXRecord = false to use the smart hosts",
    ),
    "smart hosts with default MX routing": (
        out(without=("UseMXRecord",)),
        "contoso.toml:7: OutboundConnector[1].SmartHosts: ignored while UseMXRecord is true",
    ),
    "TlsDomain without DomainValidation": (
        out('TlsSettings = "CertificateValidation"', 'TlsDomain = "mail.contoso.com"'),
        'contoso.toml:10: OutboundConnector[1].TlsDomain: used only with TlsSettings = "DomainValidation"',
    ),
    "DomainValidation without TlsDomain": (
        out('TlsSettings = "DomainValidation"'),
        "contoso.toml:9: OutboundConnector[1].TlsSettings: DomainValidation needs TlsDomain",
    ),
    "TlsDomain star": (
        out('TlsSettings = "DomainValidation"', 'TlsDomain = "*"'),
        "contoso.toml:10: OutboundConnector[1].TlsDomain: '*' matches every name; give a domain or *.domain",
    ),
    "AllAcceptedDomains on a partner connector": (
        out("AllAcceptedDomains = true", without=("ConnectorType",)),
        'contoso.toml:8: OutboundConnector[1].AllAcceptedDomains: needs ConnectorType = "OnPremises"',
    ),
    "routes nothing": (
        out(without=("RecipientDomains",)),
        "contoso.toml:3: OutboundConnector[1].RecipientDomains: the connector routes nothing",
    ),
    "routes nothing, empty list": (
        out("RecipientDomains = []", without=("RecipientDomains",)),
        "contoso.toml:8: OutboundConnector[1].RecipientDomains: the connector routes nothing",
    ),
    "validation recipient": (
        out('ValidationRecipients = ["john"]'),
        "contoso.toml:9: OutboundConnector[1].ValidationRecipients: 'john' is not a mail address",
    ),
    "timestamp text": (
        out('LastValidationTimestamp = "yesterday"'),
        "contoso.toml:9: OutboundConnector[1].LastValidationTimestamp: 'yesterday' is not a date and time; "
        "write it like 2019-03-15T02:31:53Z",
    ),
    "timestamp in other digits": (
        out('LastValidationTimestamp = "/Date(١٥٥٢٦١٧١١٣٠٠٠)/"'),
        "contoso.toml:9: OutboundConnector[1].LastValidationTimestamp: '/Date(١٥٥٢٦١٧١١٣٠٠٠)/' is not a date and time",
    ),
    "timestamp date only": (
        out("LastValidationTimestamp = 2019-03-15"),
        "contoso.toml:9: OutboundConnector[1].LastValidationTimestamp: found a date; write a date and time",
    ),
    "sender IPv6": (
        inbound('SenderIPAddresses = ["192.0.2.10", "2001:db8::25"]'),
        "contoso.toml:7: InboundConnector[1].SenderIPAddresses: '2001:db8::25' is IPv6, which the cloud does not "
        "support here",
    ),
    "sender range too wide": (
        inbound('SenderIPAddresses = "10.0.0.0/16"'),
        "contoso.toml:7: InboundConnector[1].SenderIPAddresses: '10.0.0.0/16' is wider than /24; the cloud accepts "
        "/24 to /32",
    ),
    "sender range syntax": (
        inbound('SenderIPAddresses = ["192.0.2.1-192.0.2.9"]'),
        "contoso.toml:7: InboundConnector[1].SenderIPAddresses: '192.0.2.1-192.0.2.9' is not an IPv4 address",
    ),
    "sender domain wildcard": (
        [*IN[:3], 'SenderDomains = ["smtp:a.*.contoso.com;1"]'],
        "contoso.toml:6: InboundConnector[1].SenderDomains: 'a.*.contoso.com' has a wildcard inside the name",
    ),
    "certificate name": (
        inbound('TlsSenderCertificateName = "mail.*.contoso.com"'),
        "contoso.toml:7: InboundConnector[1].TlsSenderCertificateName: 'mail.*.contoso.com' has a wildcard inside "
        "the name; only *.domain is allowed",
    ),
    "restrict to certificate on-premises": (
        inbound("RestrictDomainsToCertificate = true"),
        "contoso.toml:7: InboundConnector[1].RestrictDomainsToCertificate: applies only to Partner connectors; "
        'remove it or set ConnectorType = "Partner"',
    ),
    "restrict to IP on-premises": (
        inbound("RestrictDomainsToIPAddresses = true"),
        "contoso.toml:7: InboundConnector[1].RestrictDomainsToIPAddresses: applies only to Partner connectors",
    ),
    "mx host": (
        ["[Organization]", 'MxHost = "contoso-com"'],
        "contoso.toml:4: Organization.MxHost: 'contoso-com' is not a fully qualified domain name",
    ),
    "unknown key, close": (
        out('SmartHost = ["mail.contoso.com"]', without=("SmartHosts",)),
        "contoso.toml:8: OutboundConnector[1].SmartHost: unknown key; did you mean SmartHosts?",
    ),
    "unknown key, case": (
        out("useMxRecord = false", without=("UseMXRecord",)),
        "contoso.toml:8: OutboundConnector[1].useMxRecord: unknown key; did you mean UseMXRecord?",
    ),
    "unknown key, far": (
        inbound("EFSkipLastIP = true"),
        "contoso.toml:7: InboundConnector[1].EFSkipLastIP: unknown key; remove it (InboundConnector keys: Name, "
        "Enabled, ConnectorType, SenderDomains,",
    ),
    "unknown table, close": (
        ["[[OutboundConnectors]]", 'Name = "Connector 1"'],
        "contoso.toml:3: OutboundConnectors: not a table diag knows; did you mean OutboundConnector?",
    ),
    "relay port out of range": (
        ["[Relay]", "SmtpPort = 70000"],
        "contoso.toml:4: Relay.SmtpPort: 70000 is outside 1..65535",
    ),
    "relay listen without port": (
        ["[Relay]", 'Listen = ["127.0.0.1"]'],
        "contoso.toml:4: Relay.Listen: '127.0.0.1' is not address:port",
    ),
    "relay listen port not a number": (
        ["[Relay]", 'Listen = ["127.0.0.1:²"]'],
        "contoso.toml:4: Relay.Listen: '127.0.0.1:²' has no valid port; write it like 127.0.0.1:2525",
    ),
    "relay listen port in other digits": (
        ["[Relay]", 'Listen = ["[::1]:٣"]'],
        "contoso.toml:4: Relay.Listen: '[::1]:٣' has no valid port; write it like 127.0.0.1:2525",
    ),
    "relay role": (
        ["[Relay]", 'Role = "mx"'],
        "contoso.toml:4: Relay.Role: 'mx' is not a RelayRole value; use cloud, onprem or internet",
    ),
    "reflector in the cloud role": (
        ["[Relay]", 'Reflect = ["echo@probe.example"]'],
        "contoso.toml:4: Relay.Reflect: only the internet role reflects (a public host answering strangers); "
        'set Role = "internet" or remove Reflect',
    ),
    "reflector in the onprem role": (
        ["[Relay]", 'Role = "onprem"', 'Reflect = ["echo@probe.example"]'],
        "contoso.toml:5: Relay.Reflect: only the internet role reflects",
    ),
    "reflector address without a domain": (
        ["[Relay]", 'Role = "internet"', 'Reflect = ["echo"]'],
        "contoso.toml:5: Relay.Reflect: 'echo' is not a mail address; write it like john@contoso.com",
    ),
    "reflector address with routing": (
        ["[Relay]", 'Role = "internet"', 'Reflect = ["echo%victim.example@probe.example"]'],
        "contoso.toml:5: Relay.Reflect: 'echo%victim.example@probe.example' is not a plain mail address "
        "(letters, digits and . _ + = - before the @, at most 64); write it like echo@probe.example",
    ),
    "reflector address with a bad domain": (
        ["[Relay]", 'Role = "internet"', 'Reflect = ["echo@probe..example"]'],
        "contoso.toml:5: Relay.Reflect: 'probe..example' is not a valid domain name",
    ),
    "reflector address that is also a mailbox": (
        ["[Relay]", 'Role = "internet"', 'Mailboxes = ["Echo@probe.example"]', 'Reflect = ["echo@probe.example"]'],
        "contoso.toml:6: Relay.Reflect: an address is either a mailbox or a reflector; remove it from Mailboxes "
        "or from Reflect",
    ),
    "reflector limit zero": (
        ["[Relay]", 'Role = "internet"', 'Reflect = ["echo@probe.example"]', "ReflectLimit = 0"],
        "contoso.toml:6: Relay.ReflectLimit: 0 is outside 1..10000",
    ),
    "unknown table, far": (
        ["[Tenant]", 'Id = "x"'],
        "contoso.toml:3: Tenant: not a table diag knows; remove it (the tables are Organization, Relay, "
        "AcceptedDomain, OutboundConnector, InboundConnector and Probe)",
    ),
    "organization as array": (
        ["[[Organization]]", 'Name = "x"'],
        "contoso.toml:3: Organization: must be one table; write [Organization], not [[Organization]]",
    ),
}


@pytest.mark.parametrize(("lines", "expected"), CASES.values(), ids=CASES.keys())
def test_each_rule_reports_one_line_with_its_place(lines: list[str], expected: str) -> None:
    found = problems_of(BASE + "\n".join(lines) + "\n")

    assert len(found) == 1, found
    assert found[0].startswith(expected), found[0]


def test_the_internet_role_takes_reflector_addresses_and_their_limit() -> None:
    org = parse_config(
        BASE + '[Relay]\nRole = "internet"\nReflect = ["Echo@Probe.Example", "echo.2@bücher.example"]\n'
        "ReflectLimit = 5\n"
    )

    assert org.relay is not None
    assert org.relay.reflect == ("echo@probe.example", "echo.2@xn--bcher-kva.example")
    assert org.relay.reflect_limit == 5


def test_a_reflector_has_a_sensible_default_limit() -> None:
    org = parse_config(BASE + '[Relay]\nRole = "internet"\nReflect = ["echo@probe.example"]\n')

    assert org.relay is not None and org.relay.reflect_limit == 20


@pytest.mark.parametrize("key", ["Spool", "Maildir", "TlsCert", "TlsKey", "CaFile"])
@pytest.mark.parametrize(("written", "shown"), [("\\u0000", "\\x00"), ("\\n", "\\n"), ("\\u001f", "\\x1f")])
def test_relay_paths_with_control_characters_are_refused(key: str, written: str, shown: str) -> None:
    found = problems_of(f'{BASE}[Relay]\n{key} = "/var/spool{written}relay"\n')

    assert found == (
        f"contoso.toml:4: Relay.{key}: '/var/spool{shown}relay' holds a control character; write the path without it",
    )


def test_a_key_outside_any_table() -> None:
    found = problems_of('Name = "Contoso"\n' + BASE)

    assert found == ("contoso.toml:1: Name: a key outside any table; put it under a header like [Organization]",)


def test_an_array_of_tables_written_as_one_table() -> None:
    found = problems_of('[AcceptedDomain]\nDomainName = "contoso.com"\n')

    assert found == (
        "contoso.toml:1: AcceptedDomain: must be an array of tables; write [[AcceptedDomain]], one per entry",
    )


@pytest.mark.parametrize("text", ["# nothing yet\n", "AcceptedDomain = []\n"])
def test_a_file_without_accepted_domains_is_refused(text: str) -> None:
    assert problems_of(text) == (
        "contoso.toml:1: AcceptedDomain: none configured; add an [[AcceptedDomain]] for each domain",
    )


def test_every_problem_is_reported_at_once_in_line_order() -> None:
    text = "\n".join(
        [
            "[[OutboundConnector]]",  # 1
            'Name = "Connector 1"',  # 2
            'TlsSettings = "Strict"',  # 3
            'RecipientDomains = ["contoso.com"]',  # 4
            "UseMXRecord = false",  # 5
            "[[InboundConnector]]",  # 6
            'SenderIPAddresses = ["2001:db8::1"]',  # 7
            "Colour = 'blue'",  # 8
        ]
    )

    found = problems_of(text)

    assert [line.split(": ", 2)[:2] for line in found] == [
        ["contoso.toml:1", "AcceptedDomain"],
        ["contoso.toml:3", "OutboundConnector[1].TlsSettings"],
        ["contoso.toml:5", "OutboundConnector[1].UseMXRecord"],
        ["contoso.toml:6", "InboundConnector[1].Name"],
        ["contoso.toml:7", "InboundConnector[1].SenderIPAddresses"],
        ["contoso.toml:8", "InboundConnector[1].Colour"],
    ]


def test_a_line_inside_a_multi_line_string_is_not_a_key() -> None:
    text = BASE + "\n".join(out('Comment = """', 'TlsSettings = "x"', '"""', 'TlsSettings = "Strict"')) + "\n"

    assert problems_of(text)[0].startswith("contoso.toml:12: OutboundConnector[1].TlsSettings: 'Strict'")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            BASE + "[[OutboundConnector]]\nTlsSettings = DomainValidation\n",
            "contoso.toml:4: TOML syntax error: "
            "Invalid value at column 15; text needs double quotes and true/false are lower-case",
        ),
        (BASE + "[[OutboundConnector]]\nEnabled = True\n", "contoso.toml:4: TOML syntax error: Invalid value"),
        (BASE + 'SmartHosts = ["mail.contoso.com",\n', "contoso.toml:3: TOML syntax error: "),  # end of document
        ("[Organization]\n\n[Organization]\n", "contoso.toml:3: TOML syntax error: Cannot declare"),
    ],
)
def test_syntax_errors_name_their_line(text: str, expected: str) -> None:
    found = problems_of(text)

    assert len(found) == 1 and found[0].startswith(expected), found
    assert "(at " not in found[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BASE + "x = " + "[" * 5000 + "]" * 5000 + "\n", "contoso.toml: not valid TOML: nested too deeply"),
        (BASE + "x = " + "9" * 5000 + "\n", "contoso.toml: not valid TOML: a number too large"),  # int() reads 4300
    ],
)
def test_toml_beyond_what_python_reads_is_refused(text: str, expected: str) -> None:
    assert problems_of(text) == (expected,)


def test_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read it: No such file or directory$"):
        load_config(tmp_path / "missing.toml")


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(BASE.encode() + b'[Organization]\nName = "K\xf6ln"\n')

    with pytest.raises(ConfigFileError) as caught:
        load_config(path)

    assert caught.value.problems == (f"{path}:4: not UTF-8 text; save the file as UTF-8",)


def test_config_errors_are_usage_errors() -> None:
    """The CLI turns UsageError into exit code 3 and one line per problem (CONTRACT.md)."""
    assert issubclass(ConfigFileError, ConfigError) and issubclass(ConfigFileError, UsageError)


# --- reading back what dump_toml writes -----------------------------------------------------------------------


def test_dump_toml_reads_back_into_the_same_organization() -> None:
    text = dump_toml(EXPECTED, sources=[Path("a.json"), Path("b.json")])

    assert text.startswith("# Generated by `diag config import` from a.json, b.json.\n")
    assert parse_config(text) == EXPECTED
