"""The dane check: judgement of TLSA facts, and the lab's DANE domains against the hosts' real chains."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from checks.dane import CHECK, DaneFacts, Endpoint, HostTlsa, assess
from checks.dnssec import DnssecFacts
from diag.policy.dane import Outcome, TlsaMatch, parse_tlsa
from diag.policy.dnssec import DnssecResult, Method, Reason, Security
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
         "fails DNSSEC validation"),
        (HostTlsa(HOST, NAME, tlsa(Security.BOGUS, ReplyStatus.NXDOMAIN, detail="no NSEC3 covers it")),
         "DANE_TLSA_BOGUS", HOST, "defer delivery"),  # a bogus denial is no "no TLSA"
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
        ("badsig.example", ["DANE_MX_BOGUS"]),  # the MX answer is bogus: DANE senders defer (RFC 7672 §2.1.1)
        ("nsec3.example", ["DANE_OK"]),
        ("tlsabad.nsec3.example", ["DANE_MISMATCH"]),
        ("nsec3bad.example", ["DANE_TLSA_BOGUS"]),  # the denial of its TLSA records does not cover the name
        ("insecure.optout.example", ["DANE_NONE"]),
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


def test_a_bogus_mx_or_address_answer_defers_dane_senders() -> None:
    # Given the TLSA records match, but the dnssec check found the domain's MX answer (then a host's A, its AAAA)
    # bogus
    host = HostTlsa(HOST, NAME, tlsa(), (EE,), (Endpoint(ENDPOINT, True, (TlsaMatch(EE, Outcome.MATCHED, 0),)),))
    mx = DnssecResult("contoso.com", "MX", Security.BOGUS, Reason.EXPIRED, zone="contoso.com", detail="expired")
    address = DnssecResult(HOST, "A", Security.BOGUS, Reason.BAD_SIGNATURE, zone="contoso.com")
    address6 = DnssecResult(HOST, "AAAA", Security.BOGUS, Reason.EXPIRED, zone="contoso.com")
    for bogus, subject in ((mx, "contoso.com MX"), (address, f"{HOST} A"), (address6, f"{HOST} AAAA")):
        dnssec = DnssecFacts("contoso.com", Method.VALIDATED, (".",), (bogus,))
        (finding,) = assess(DaneFacts((host,), datetime.now(UTC)), dnssec)
        # Then the dane check says the senders defer, naming the bogus answer, with the cloud's error
        assert (finding.code, finding.subject) == ("DANE_MX_BOGUS", subject)
        assert "defer delivery" in finding.message and finding.cloud_error is not None
    # and a secure or insecure MX answer changes nothing
    fine = DnssecFacts("contoso.com", Method.VALIDATED, (".",), (DnssecResult("contoso.com", "MX", Security.SECURE,
                                                                               Reason.VALIDATED),))  # fmt: skip
    assert [f.code for f in assess(DaneFacts((host,), datetime.now(UTC)), fine)] == ["DANE_OK"]
