"""The dane check: judgement of TLSA facts, and the lab's DANE domains against the hosts' real chains."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from checks.dane import CHECK, DaneFacts, Endpoint, HostTlsa, TlsaBase, assess
from checks.dnssec import DnssecFacts
from diag.model import Severity
from diag.policy.dane import Outcome, TlsaMatch, parse_tlsa
from diag.policy.dnssec import DnssecResult, Method, Reason, Security
from diag.policy.lookup import ReplyStatus

from .conftest import codes_of

HOST = "mx.contoso.com"
NAME = f"_25._tcp.{HOST}"
EE = parse_tlsa("3 1 1 " + "ab" * 32)
PKIX = parse_tlsa("1 1 1 " + "ab" * 32)
ENDPOINT = f"{HOST} [192.0.2.1]:25"


def tlsa(security: Security = Security.SECURE, status: ReplyStatus = ReplyStatus.OK, reason: Reason = Reason.VALIDATED,
         **extra: object) -> DnssecResult:
    return DnssecResult(NAME, "TLSA", security, reason, status=status, **extra)  # type: ignore[arg-type]


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
        ("forgedsig.example", ["DANE_MX_BOGUS"]),
        ("nsec3.example", ["DANE_OK"]),
        ("tlsabad.nsec3.example", ["DANE_MISMATCH"]),
        ("nsec3bad.example", ["DANE_TLSA_BOGUS"]),  # the denial of its TLSA records does not cover the name
        ("insecure.optout.example", ["DANE_NONE"]),
        ("cnamesigned.example", ["DANE_OK"]),  # the TLSA records of the CNAME-expanded name, mx.nsec3.example
        ("cnameunsigned.example", ["DANE_OK"]),  # the chain is insecure: the record at the host name itself
        ("tlsafail.example", ["DANE_LOOKUP_FAILED"]),  # SERVFAIL on the way to the TLSA records: senders defer
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
    # whatever the case the MX record spells the host in (RFC 4343): the DNSSEC results name it in lower case
    shouting = HostTlsa(HOST.upper(), NAME, tlsa(), (EE,),
                        (Endpoint(ENDPOINT, True, (TlsaMatch(EE, Outcome.MATCHED, 0),)),))  # fmt: skip
    dnssec = DnssecFacts("contoso.com", Method.VALIDATED, (".",), (address,))
    assert [f.code for f in assess(DaneFacts((shouting,), datetime.now(UTC)), dnssec)] == ["DANE_MX_BOGUS"]
    # and a secure or insecure MX answer changes nothing
    fine = DnssecFacts("contoso.com", Method.VALIDATED, (".",), (DnssecResult("contoso.com", "MX", Security.SECURE,
                                                                               Reason.VALIDATED),))  # fmt: skip
    assert [f.code for f in assess(DaneFacts((host,), datetime.now(UTC)), fine)] == ["DANE_OK"]


def test_lab_alias_with_a_secure_chain_takes_the_expanded_names_tlsa_records(domain_report) -> None:  # type: ignore[no-untyped-def]
    # Given cnamesigned.example's MX host is a CNAME into nsec3.example, every link signed, and TLSA records only at
    # the expanded name
    (host,) = domain_report("cnamesigned.example").result("dane").facts.hosts
    # Then they are the ones looked up and matched (RFC 7672 §2.2.2), with both names as reference identifiers
    assert (host.host, host.base, host.name) == ("mx.cnamesigned.example", TlsaBase.EXPANDED,
                                                 "_25._tcp.mx.nsec3.example")  # fmt: skip
    assert (host.names, host.signed, host.expanded) == (("mx.cnamesigned.example", "mx.nsec3.example"), True, None)
    (endpoint,) = host.endpoints
    assert [m.outcome for m in endpoint.matches] == [Outcome.MATCHED]
    (finding,) = domain_report("cnamesigned.example").result("dane").findings
    assert "at _25._tcp.mx.nsec3.example, its CNAME-expanded name" in finding.message


def test_lab_alias_into_an_unsigned_zone_takes_only_the_host_names_tlsa_records(domain_report) -> None:  # type: ignore[no-untyped-def]
    # Given cnameunsigned.example's MX host (in the signed example zone) is a CNAME into unsigned.example, whose
    # own TLSA record is not DNSSEC-signed, and the host name has a signed one
    (host,) = domain_report("cnameunsigned.example").result("dane").facts.hosts
    # Then only the host name's record counts (RFC 7672 §2.2.2): the expanded name is not even asked
    assert (host.base, host.name, host.names) == (TlsaBase.ALIAS_NOT_SECURE, "_25._tcp.mx.cnameunsigned.example",
                                                  ("mx.cnameunsigned.example",))  # fmt: skip
    assert host.dnssec.security is Security.SECURE and host.signed  # its own CNAME validates: a signed zone


def test_lab_tlsa_lookup_failing_in_a_signed_zone_defers(domain_report) -> None:  # type: ignore[no-untyped-def]
    # Given tlsafail.example's MX host validates, but its TLSA lookup gets SERVFAIL on the walk down to it
    report = domain_report("tlsafail.example")
    (host,) = report.result("dane").facts.hosts
    assert (host.signed, host.dnssec.security, host.dnssec.reason) == (True, Security.INDETERMINATE,
                                                                       Reason.DNS_ERROR)  # fmt: skip
    # Then DANE senders defer delivery (RFC 7672 §2.1.1), which the finding says
    (finding,) = report.result("dane").findings
    assert (finding.code, finding.subject) == ("DANE_LOOKUP_FAILED", "mx.tlsafail.example")
    assert "_25._tcp.mx.tlsafail.example" in finding.message and "defer delivery" in finding.message


def dnssec_of(*results: DnssecResult) -> DnssecFacts:
    return DnssecFacts("contoso.com", Method.VALIDATED, (".",), results)


MATCHED = HostTlsa(HOST, NAME, tlsa(), (EE,), (Endpoint(ENDPOINT, True, (TlsaMatch(EE, Outcome.MATCHED, 0),)),))


@pytest.mark.parametrize(
    ("failed", "subject"),
    [
        (DnssecResult("contoso.com", "MX", Security.INDETERMINATE, Reason.DNS_ERROR, zone="com",
                      detail="contoso.com DS: SERVFAIL"), "contoso.com MX"),
        (DnssecResult(HOST, "AAAA", Security.INDETERMINATE, Reason.DNS_ERROR, zone="contoso.com",
                      detail="timed out"), f"{HOST} AAAA"),
        (DnssecResult(HOST, "A", Security.INDETERMINATE, Reason.CNAME, detail="a CNAME loop"), f"{HOST} A"),
    ],
)  # fmt: skip
def test_a_failed_mx_or_address_lookup_defers_dane_senders(failed: DnssecResult, subject: str) -> None:
    # Given matching TLSA records, but the MX or an address lookup failed on its chain of trust
    (finding,) = assess(DaneFacts((MATCHED,), datetime.now(UTC)), dnssec_of(failed))
    # Then DANE senders defer (RFC 7672 §2.1.1): a lookup failure, not a validation failure
    assert (finding.code, finding.subject, finding.severity) == ("DANE_LOOKUP_FAILED", subject, Severity.CRITICAL)
    assert "defer delivery" in finding.message and failed.reason.value in finding.message


def test_no_trust_anchor_for_the_name_defers_nothing() -> None:
    # Given diag's trust anchors do not cover the MX host's name (its configuration, not the zone's)
    uncovered = DnssecResult(HOST, "A", Security.INDETERMINATE, Reason.NO_ANCHOR, detail="no trust anchor covers it")
    # Then nothing says a sender validating from the root defers: the TLSA records are judged as usual
    assert [f.code for f in assess(DaneFacts((MATCHED,), datetime.now(UTC)), dnssec_of(uncovered))] == ["DANE_OK"]


def test_a_failed_tlsa_lookup_defers_only_in_a_signed_zone() -> None:
    failed = tlsa(Security.INDETERMINATE, ReplyStatus.ERROR, reason=Reason.DNS_ERROR, zone="contoso.com",
                  detail="_tcp.mx.contoso.com DS: SERVFAIL")  # fmt: skip
    # Given the host is in a signed zone, a failed TLSA lookup defers delivery (RFC 7672 §2.1.1)
    (finding,) = assess(DaneFacts((HostTlsa(HOST, NAME, failed, signed=True),), datetime.now(UTC)))
    assert (finding.code, finding.subject) == ("DANE_LOOKUP_FAILED", HOST) and "SERVFAIL" in finding.message
    # and outside one, where DANE senders do not ask, it stays a DNS error
    (finding,) = assess(DaneFacts((HostTlsa(HOST, NAME, failed),), datetime.now(UTC)))
    assert finding.code == "DANE_DNS_ERROR"


def test_no_tlsa_at_the_expanded_name_nor_at_the_host_name() -> None:
    expanded = DnssecResult("_25._tcp.host.cloud.example", "TLSA", Security.SECURE, Reason.VALIDATED,
                            status=ReplyStatus.NXDOMAIN)  # fmt: skip
    host = HostTlsa(HOST, NAME, tlsa(status=ReplyStatus.NODATA), base=TlsaBase.HOST_AFTER_EXPANDED,
                    names=(HOST, "host.cloud.example"), expanded=expanded, signed=True)  # fmt: skip
    (finding,) = assess(DaneFacts((host,), datetime.now(UTC)))
    assert finding.code == "DANE_NONE"
    assert f"at _25._tcp.host.cloud.example (its CNAME-expanded name) nor at {NAME}" in finding.message


def test_lab_a_resolver_that_does_not_answer_for_the_root_claims_no_deferral(lab) -> None:  # type: ignore[no-untyped-def]
    # Given the lab's DNS server (authoritative for the lab's zones only: it refuses the root's DNSKEY question)
    # and the root's trust anchors, as `diag check contoso.com --resolver <that server>` without --trust-anchor
    import asyncio

    from checks import default_registry
    from diag.policy.dnssec import ROOT_ANCHORS
    from diag.runner import run_checks

    registry = default_registry().select(["dane"])
    options = lab.run_options(timeout=3.0, trust_anchors=ROOT_ANCHORS)
    (domain,) = asyncio.run(run_checks(["contoso.com"], registry, options)).domains
    # Then nothing can be validated, and that is the vantage point's doing, not the domain's: the DNSSEC states
    # say so, and DANE is "could not be judged", not a deferral by DANE senders
    assert {r.reason for r in domain.result("dnssec").facts.results} == {Reason.ANCHOR_UNANSWERED}
    assert codes_of(domain, "dane") == ["DANE_DNS_ERROR"]
    (finding,) = domain.result("dane").findings
    assert "could not be judged" in finding.message and "trust anchor's keys (. DNSKEY)" in finding.message
