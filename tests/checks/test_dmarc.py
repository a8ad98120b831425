"""The dmarc check: judgement of discovery facts, and the lab's DMARC domains."""

from __future__ import annotations

import pytest

from checks.dmarc import CHECK, DmarcFacts, assess
from diag.policy.dmarc import (
    AuthorizationStatus,
    DmarcDiscovery,
    DmarcStatus,
    ReportAuthorization,
    parse_record,
)

from .conftest import codes_of

DOMAIN = "contoso.com"


def judge(discovery: DmarcDiscovery) -> list[tuple[str, str]]:
    findings = assess(DmarcFacts(discovery))
    for finding in findings:
        assert finding.severity is CHECK.codes[finding.code] and finding.subject == discovery.domain
    return [(f.code, f.message) for f in findings]


def found(text: str, *, domain: str = DOMAIN, at: str = DOMAIN, **extra: object) -> DmarcDiscovery:
    return DmarcDiscovery(domain, DOMAIN, DmarcStatus.FOUND, at, parse_record(text), (text,), **extra)  # type: ignore[arg-type]


def test_a_reject_policy_is_ok_and_names_its_reports() -> None:
    ((code, message),) = judge(found("v=DMARC1; p=reject; rua=mailto:d@contoso.com"))
    assert code == "DMARC_OK" and "reject" in message and "mailto:d@contoso.com" in message


def test_a_subdomain_inherits_sp_from_the_organizational_domain() -> None:
    ((code, message),) = judge(found("v=DMARC1; p=reject; sp=quarantine", domain="sales.contoso.com"))
    assert code == "DMARC_OK" and "quarantine (inherited from contoso.com, sp applies)" in message
    ((code, message),) = judge(found("v=DMARC1; p=reject; sp=none", domain="sales.contoso.com"))
    assert code == "DMARC_POLICY_NONE" and "sp=none of contoso.com" in message


@pytest.mark.parametrize(
    ("text", "codes", "words"),
    [
        ("v=DMARC1; p=none", ["DMARC_POLICY_NONE"], "p=none"),
        ("v=DMARC1; p=reject; sp=none", ["DMARC_SUBDOMAIN_NONE"], "sp=none"),
        ("v=DMARC1; p=quarantine; pct=20", ["DMARC_PCT_PARTIAL"], "20%"),
        ("v=DMARC1; p=reject; adkim=s; aspf=s", ["DMARC_ALIGNMENT_STRICT"], "adkim=s, aspf=s"),
        ("v=DMARC1; p=reject; fo=9", ["DMARC_SYNTAX"], "fo"),
        ("v=DMARC1; p=sometimes", ["DMARC_SYNTAX", "DMARC_SYNTAX"], "no valid p= tag"),
    ],
)
def test_record_problems(text: str, codes: list[str], words: str) -> None:
    found_codes = judge(found(text))
    assert [code for code, _ in found_codes] == codes and words in found_codes[-1][1]


@pytest.mark.parametrize(
    ("discovery", "code", "words"),
    [
        (DmarcDiscovery("sales.contoso.com", DOMAIN, DmarcStatus.NONE), "DMARC_MISSING",
         "_dmarc.sales.contoso.com or _dmarc.contoso.com"),
        (DmarcDiscovery(DOMAIN, DOMAIN, DmarcStatus.MULTIPLE, DOMAIN, texts=("v=DMARC1; p=none",) * 2),
         "DMARC_MULTIPLE", "2 DMARC records"),
        (DmarcDiscovery(DOMAIN, DOMAIN, DmarcStatus.DNS_ERROR, detail="SERVFAIL"), "DMARC_DNS_ERROR", "SERVFAIL"),
    ],
)  # fmt: skip
def test_discovery_failures(discovery: DmarcDiscovery, code: str, words: str) -> None:
    ((found_code, message),) = judge(discovery)
    assert found_code == code and words in message


def test_report_destinations_in_other_domains_need_their_authorization() -> None:
    name = "contoso.com._report._dmarc.reports.example"
    missing = ReportAuthorization("rua", "mailto:a@reports.example", "reports.example", name,
                                  AuthorizationStatus.MISSING)  # fmt: skip
    failed = ReportAuthorization("ruf", "mailto:f@reports.example", "reports.example", name,
                                 AuthorizationStatus.DNS_ERROR)  # fmt: skip
    codes = judge(found("v=DMARC1; p=reject; rua=mailto:a@reports.example", authorizations=(missing, failed)))
    assert [code for code, _ in codes] == ["DMARC_REPORT_UNAUTHORIZED", "DMARC_DNS_ERROR"]
    assert name in codes[0][1] and "§7.1" in codes[0][1]


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("contoso.com", ["DMARC_OK"]),
        ("sales.contoso.com", ["DMARC_OK"]),
        ("fabrikam.com", ["DMARC_OK"]),  # its reports go to contoso.com, which authorizes them (RFC 7489 §7.1)
        ("dmarcrua.example", ["DMARC_REPORT_UNAUTHORIZED"]),
        ("dmarcnone.example", ["DMARC_POLICY_NONE"]),
        ("nopolicy.example", ["DMARC_MISSING"]),
        ("servfail.example", ["DMARC_DNS_ERROR"]),
    ],
)
def test_lab_domains(domain_report, domain: str, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert codes_of(domain_report(domain), "dmarc") == expected
