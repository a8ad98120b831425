"""The dane check: judgement of TLSA facts, and the lab's DANE domains against the hosts' real chains."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from checks.dane import CHECK, DaneFacts, Endpoint, HostTlsa, assess
from diag.policy.dane import Outcome, TlsaMatch, parse_tlsa
from diag.policy.dnssec import DnssecResult, Reason, Security
from diag.policy.lookup import ReplyStatus

from .conftest import codes_of

HOST = "mx.contoso.com"
NAME = f"_25._tcp.{HOST}"
EE = parse_tlsa("3 1 1 " + "ab" * 32)
PKIX = parse_tlsa("1 1 1 " + "ab" * 32)
ENDPOINT = f"{HOST} [192.0.2.1]:25"


def tlsa(security: Security = Security.SECURE, status: ReplyStatus = ReplyStatus.OK, **extra: object) -> DnssecResult:
    return DnssecResult(NAME, "TLSA", security, Reason.VALIDATED, status=status, **extra)  # type: ignore[arg-type]


def judge(host: HostTlsa) -> list[tuple[str, str, str]]:
    findings = assess(DaneFacts((host,), datetime.now(UTC)))
    assert all(f.severity is CHECK.codes[f.code] for f in findings)
    return [(f.code, f.subject, f.message) for f in findings]


@pytest.mark.parametrize(
    ("host", "code", "subject", "words"),
    [
        (HostTlsa(HOST, NAME, tlsa(), (EE,), (Endpoint(ENDPOINT, True, (TlsaMatch(EE, Outcome.MATCHED, 0),)),)),
         "DANE_OK", ENDPOINT, "3 1 1"),
        (HostTlsa(HOST, NAME, tlsa(), (EE,), (Endpoint(ENDPOINT, True, (TlsaMatch(EE, Outcome.NO_MATCH),)),)),
         "DANE_MISMATCH", ENDPOINT, "no-match"),
        (HostTlsa(HOST, NAME, tlsa(), (EE,), (Endpoint(ENDPOINT, False),)), "DANE_NO_TLS", ENDPOINT, "STARTTLS"),
        (HostTlsa(HOST, NAME, tlsa(status=ReplyStatus.NXDOMAIN)), "DANE_NONE", HOST, "no TLSA records"),
        (HostTlsa(HOST, NAME, tlsa(status=ReplyStatus.TIMEOUT, detail="no answer")), "DANE_DNS_ERROR", HOST,
         "no answer"),
        (HostTlsa(HOST, NAME, tlsa(Security.BOGUS, detail="expired"), (EE,)), "DANE_TLSA_BOGUS", HOST,
         "fail DNSSEC validation"),
        (HostTlsa(HOST, NAME, tlsa(Security.INSECURE), (EE,)), "DANE_TLSA_INSECURE", HOST, "not DNSSEC-signed"),
        (HostTlsa(HOST, NAME, tlsa(Security.INDETERMINATE), (EE,)), "DANE_TLSA_INSECURE", HOST, "unknown"),
        (HostTlsa(HOST, NAME, tlsa(), (PKIX,)), "DANE_TLSA_UNUSABLE", HOST, "not for SMTP"),
    ],
)  # fmt: skip
def test_each_state_has_its_code(host: HostTlsa, code: str, subject: str, words: str) -> None:
    ((found, found_subject, message),) = judge(host)
    assert (found, found_subject) == (code, subject) and words in message


@pytest.mark.parametrize(
    ("host", "words"),
    [
        (HostTlsa(HOST, NAME, tlsa(), (EE,), (Endpoint(ENDPOINT, True, (TlsaMatch(EE, Outcome.NO_MATCH),)),)),
         "4.7.323 tlsa-invalid"),
        (HostTlsa(HOST, NAME, tlsa(Security.BOGUS), (EE,)), "4.7.324 dnssec-invalid"),
        (HostTlsa(HOST, NAME, tlsa(), (EE,), (Endpoint(ENDPOINT, False),)), "4.7.321 starttls-not-supported"),
    ],
)  # fmt: skip
def test_failures_say_what_the_cloud_reports(host: HostTlsa, words: str) -> None:
    (finding,) = assess(DaneFacts((host,), datetime.now(UTC)))
    assert finding.cloud_error is not None and words in finding.cloud_error


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("contoso.com", ["DANE_OK"]),
        ("dane.example", ["DANE_OK"]),
        ("danebad.example", ["DANE_MISMATCH"]),
        ("unsigned.example", ["DANE_TLSA_INSECURE"]),
        ("expired.example", ["DANE_NONE"]),
    ],
)
def test_lab_domains(domain_report, domain: str, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert codes_of(domain_report(domain), "dane") == expected


def test_lab_dane_ta_and_ee_both_match_the_presented_chain(domain_report) -> None:  # type: ignore[no-untyped-def]
    (host,) = domain_report("dane.example").result("dane").facts.hosts
    (endpoint,) = host.endpoints
    # (an rrset has no order: sorted by usage)
    assert sorted((m.record.usage, m.outcome, m.position) for m in endpoint.matches) == [(2, Outcome.MATCHED, 1),
                                                                                         (3, Outcome.MATCHED, 0)]
