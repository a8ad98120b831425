"""Importing PowerShell exports (``diag/config/exchange.py``): both PowerShell versions' shapes, notes, refusals."""

from __future__ import annotations

import codecs
import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from diag.config import (
    AcceptedDomain,
    ConfigFileError,
    ConnectorType,
    InboundConnector,
    Organization,
    OutboundConnector,
    TlsSettings,
    import_exports,
    load_config,
    parse_config,
)

EXPORTS = Path(__file__).parent.parent / "data" / "exports"
SOURCE = Path("contoso.toml")

WHEN = datetime(2019, 3, 15, 2, 31, 53, tzinfo=UTC)


def problems_of(text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigFileError) as caught:
        parse_config(text, SOURCE)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


SETUP_GUIDE = (
    EXPORTS / "contoso-accepted-domains.json",
    EXPORTS / "contoso-outbound-connectors.json",
    EXPORTS / "contoso-inbound-connector.json",
)
MX_NOTE = 'the exports do not say where MX must point; add MxHost = "<tenant>.mail.protection.outlook.com" under'
ON_PREMISES = ConnectorType.ON_PREMISES

CONTOSO = Organization(
    name="contoso.com",
    accepted_domains=(
        AcceptedDomain("contoso.com", default=True),
        AcceptedDomain("sales.contoso.com"),
        AcceptedDomain("fabrikam.com"),
        AcceptedDomain("contoso.onmicrosoft.com", initial_domain=True),
    ),
    outbound_connectors=(
        OutboundConnector(
            "Connector 1",
            connector_type=ON_PREMISES,
            all_accepted_domains=True,
            use_mx_record=False,
            smart_hosts=("mail.contoso.com",),
            tls_settings=TlsSettings.CERTIFICATE_VALIDATION,
            connector_source="AdminUI",
            validation_recipients=("john@contoso.com",),
            is_validated=True,
            last_validation_timestamp=WHEN,
        ),
        OutboundConnector(
            "Connector 2",
            connector_type=ON_PREMISES,
            recipient_domains=("contoso.com",),
            use_mx_record=False,
            smart_hosts=("mail.contoso.com",),
        ),
        OutboundConnector(
            "Connector 3",
            connector_type=ON_PREMISES,
            recipient_domains=("*.contoso.com",),
            use_mx_record=False,
            smart_hosts=("sales-mail.contoso.com",),
            tls_settings=TlsSettings.DOMAIN_VALIDATION,
            tls_domain="*.contoso.com",
            connector_source="AdminUI",
            comment="Sales runs its own mail servers",
        ),
    ),
    inbound_connectors=(
        InboundConnector(
            "From on-premises",
            connector_type=ON_PREMISES,
            sender_domains=("*",),
            tls_sender_certificate_name="*.contoso.com",
            require_tls=True,
            connector_source="AdminUI",
        ),
    ),
)


def test_the_setup_guide_exports_import_into_the_organization() -> None:
    result = import_exports(SETUP_GUIDE)

    assert result.organization == CONTOSO
    assert len(result.notes) == 1 and result.notes[0].startswith(MX_NOTE)  # AdminUI is kept without a note
    assert result.sources == SETUP_GUIDE


def test_exports_round_trip_through_toml(tmp_path: Path) -> None:
    path = tmp_path / "contoso.toml"
    path.write_text(import_exports(SETUP_GUIDE).to_toml(), encoding="utf-8")

    assert load_config(path) == dataclasses.replace(CONTOSO, source=path)
    assert "contoso-inbound-connector.json" in path.read_text().splitlines()[0]


def test_the_order_of_files_and_mixed_kinds_do_not_matter(tmp_path: Path) -> None:
    records: list[object] = []
    for path in reversed(SETUP_GUIDE):
        loaded = json.loads(path.read_text(encoding="utf-8-sig"))
        records += loaded if isinstance(loaded, list) else [loaded]
    mixed = tmp_path / "everything.json"
    mixed.write_text(json.dumps(records), encoding="utf-8")

    assert import_exports([mixed]).organization == CONTOSO


def test_a_single_object_file() -> None:
    assert json.loads(SETUP_GUIDE[2].read_text()).__class__ is dict

    result = import_exports([SETUP_GUIDE[2]])

    assert result.organization.inbound_connectors == CONTOSO.inbound_connectors
    assert any("no accepted domains" in note for note in result.notes)


def test_a_utf8_bom_file() -> None:
    assert SETUP_GUIDE[0].read_bytes().startswith(codecs.BOM_UTF8)

    assert import_exports([SETUP_GUIDE[0]]).organization.accepted_domains == CONTOSO.accepted_domains


def test_a_utf16_file(tmp_path: Path) -> None:
    """Windows PowerShell 5.1's ``ConvertTo-Json > file`` writes UTF-16 with a BOM."""
    path = tmp_path / "outbound.json"
    path.write_bytes(SETUP_GUIDE[1].read_text().encode("utf-16"))

    assert import_exports([path]).organization.outbound_connectors == CONTOSO.outbound_connectors


def test_windows_powershell_51_dates_and_value_wrappers() -> None:
    result = import_exports([EXPORTS / "ps51-partner-outbound-connector.json"])

    assert result.organization.outbound_connectors == (
        OutboundConnector(
            "Fabrikam partner",
            recipient_domains=("fabrikam.net", "*.fabrikam.net"),
            tls_settings=TlsSettings.DOMAIN_VALIDATION,
            tls_domain="mail.fabrikam.net",
            validation_recipients=("postmaster@fabrikam.net",),
            is_validated=True,
            last_validation_timestamp=datetime(2019, 3, 15, 1, 31, 53, tzinfo=UTC),
        ),
    )


def test_integer_enums_are_refused_with_the_way_to_export_names() -> None:
    path = EXPORTS / "ps51-integer-enums.json"

    with pytest.raises(ConfigFileError) as caught:
        import_exports([path])

    first, second = caught.value.problems
    assert first.startswith(
        f"{path}: object 1 (OutboundConnector 'Connector 1'): ConnectorType, TlsSettings and ConnectorSource are "
        "numbers, not names; export again with ConvertTo-Json -EnumsAsStrings (PowerShell 7) or "
    )
    assert """Select-Object @{n='ConnectorType';e={"$($_.ConnectorType)"}}""" in first
    assert second.startswith(f"{path}: object 2 (OutboundConnector 'Connector 2'): ConnectorType and ConnectorSource")


def test_an_unknown_tls_settings_value_is_kept_and_noted() -> None:
    path = EXPORTS / "unknown-tlssettings.json"

    result = import_exports([SETUP_GUIDE[0], path])

    assert result.organization.outbound_connectors[0].tls_settings is None
    assert result.notes[0] == (
        f"{path}: object 1 (OutboundConnector 'Gateway'): TlsSettings: 'DaneValidation' is not a TlsSettings value; "
        "use EncryptionOnly, CertificateValidation or DomainValidation (kept as written; `diag config check` "
        "reports it)"
    )
    text = result.to_toml()
    assert 'TlsSettings = "DaneValidation"' in text
    line = text.splitlines().index('TlsSettings = "DaneValidation"') + 1
    assert problems_of(text) == (
        f"contoso.toml:{line}: OutboundConnector[1].TlsSettings: 'DaneValidation' is not a TlsSettings value; "
        "use EncryptionOnly, CertificateValidation or DomainValidation",
    )


def test_a_value_breaking_a_rule_is_imported_and_noted(tmp_path: Path) -> None:
    record = json.loads(SETUP_GUIDE[1].read_text())[2] | {"TlsDomain": None}
    path = tmp_path / "outbound.json"
    path.write_text(json.dumps(record))

    result = import_exports([path])

    assert result.organization.outbound_connectors[0].tls_settings is TlsSettings.DOMAIN_VALIDATION
    assert result.notes[0].startswith(
        f"{path}: object 1 (OutboundConnector 'Connector 3'): TlsSettings: DomainValidation needs TlsDomain"
    )


def test_the_same_object_twice_is_imported_once() -> None:
    result = import_exports([SETUP_GUIDE[2], SETUP_GUIDE[2]])

    assert len(result.organization.inbound_connectors) == 1
    assert (
        f"{SETUP_GUIDE[2]}: object 1 (InboundConnector 'From on-premises'): skipped: the same Name as"
        in (result.notes[0])
    )


def test_an_empty_export_is_skipped_with_a_note(tmp_path: Path) -> None:
    path = tmp_path / "inbound.json"
    path.write_text("\r\n")

    result = import_exports([SETUP_GUIDE[0], path])

    assert result.notes[0] == f"{path}: no objects in it (the cmdlet returned nothing); skipped"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[\n  {"DomainName": "contoso.com",\n  "DomainType": }\n]', ":3: invalid JSON: Expecting value at column 17"),
        ('{"Name": "x", "Colour": "blue"}', ": object 1 (named 'x'): neither an accepted domain nor one kind of"),
        ('{"Name": "x", "SmartHosts": [], "SenderDomains": []}', ": object 1 (named 'x'): neither"),
        ('["contoso.com"]', ": item 1 is not a JSON object; give the output of Get-AcceptedDomain,"),
        (
            '{"Name": "x", "SmartHosts": [{"Address": "mail.contoso.com"}]}',
            ": object 1 (OutboundConnector 'x'): SmartHosts holds JSON objects, not text; export it as text, e.g. "
            "Select-Object @{n='SmartHosts';e={[string[]]$_.SmartHosts}}",
        ),
        (
            '{"Name": "x", "TlsDomain": {"Domain": "contoso.com"}, "SmartHosts": []}',
            ": object 1 (OutboundConnector 'x'): TlsDomain holds JSON objects, not text; export it as text, e.g. "
            """Select-Object @{n='TlsDomain';e={"$($_.TlsDomain)"}}""",
        ),
        ("[" * 5000 + "]" * 5000, ": invalid JSON: nested too deeply; give the output of Get-AcceptedDomain,"),
        ('{"Name": "x", "SmartHosts": [], "Count": ' + "9" * 5000 + "}", ": invalid JSON: a number too large; give"),
        (
            '{"Name": "x", "SmartHosts": ["mail.contoso.com"], "Comment": "to \\ud800"}',
            ": object 1 (OutboundConnector 'x'): Comment is not valid Unicode (half a surrogate pair); correct it in "
            "Exchange",
        ),
        (
            '{"Name": "x\\udc00", "SmartHosts": ["mail.contoso.com", "\\ud83d.contoso.com"]}',
            ": object 1 (OutboundConnector 'x\\udc00'): Name is not valid Unicode (half a surrogate pair); correct it",
        ),
    ],
)
def test_files_that_are_not_exports_are_refused(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "export.json"
    path.write_text(content)

    with pytest.raises(ConfigFileError) as caught:
        import_exports([path])

    assert caught.value.problems[0].startswith(f"{path}{expected}"), caught.value.problems


def test_a_timestamp_outside_the_years_1_to_9999_is_kept_and_noted(tmp_path: Path) -> None:
    record = {"Name": "C", "SmartHosts": ["a.com"], "UseMXRecord": False, "RecipientDomains": ["a.com"]}
    path = tmp_path / "outbound.json"
    path.write_text(json.dumps([record | {"LastValidationTimestamp": "/Date(99999999999999999)/"}]))

    result = import_exports([SETUP_GUIDE[0], path])

    assert result.organization.outbound_connectors[0].last_validation_timestamp is None
    assert result.notes[0] == (
        f"{path}: object 1 (OutboundConnector 'C'): LastValidationTimestamp: '/Date(99999999999999999)/' is not "
        "within the years 1 to 9999 in UTC; write a date and time such as 2019-03-15T02:31:53Z (kept as written; "
        "`diag config check` reports it)"
    )
    assert "is not within the years 1 to 9999" in problems_of(result.to_toml())[0]


def test_every_bad_file_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError) as caught:
        import_exports([tmp_path / "missing.json", EXPORTS / "ps51-integer-enums.json"])

    assert caught.value.problems[0] == f"{tmp_path / 'missing.json'}: cannot read it: No such file or directory"
    assert len(caught.value.problems) == 3
