"""The mtasts check: judgement of record, fetch and policy facts, and the lab's policy hosts over HTTPS."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from checks import default_registry
from checks.mtasts import CHECK, MtaStsFacts, assess
from diag.lab.runner import Lab
from diag.net import https
from diag.net.https import FetchError, HttpsFacts, client_context
from diag.policy.mtasts import MxCoverage, StsTxtFacts, TxtStatus, parse_policy, parse_txt
from diag.runner import run_checks

from .conftest import codes_of

DOMAIN = "contoso.com"
URL = "https://mta-sts.contoso.com/.well-known/mta-sts.txt"
RECORD = StsTxtFacts(DOMAIN, TxtStatus.FOUND, parse_txt("v=STSv1; id=1"), ("v=STSv1; id=1",))
SERVED = HttpsFacts(URL, "192.0.2.1", 200, "text/plain", tls_version="TLSv1.3")
POLICY = "version: STSv1\nmode: enforce\nmx: *.mail.protection.outlook.com\nmax_age: 604800\n"
CLOUD = "contoso-com.mail.protection.outlook.com"


def judge(facts: MtaStsFacts) -> list[tuple[str, str, str]]:
    findings = assess(facts)
    assert all(f.severity is CHECK.codes[f.code] for f in findings)
    return [(f.code, f.subject, f.message) for f in findings]


def policy_facts(text: str, *covered: MxCoverage) -> MtaStsFacts:
    return MtaStsFacts(RECORD, SERVED, policy=parse_policy(text.encode()), coverage=covered)


def test_an_enforced_policy_covering_every_mx_is_ok() -> None:
    ((code, subject, message),) = judge(policy_facts(POLICY, MxCoverage(CLOUD, "*.mail.protection.outlook.com")))
    assert (code, subject) == ("MTASTS_OK", DOMAIN) and "mode enforce" in message and "TLSv1.3" in message


@pytest.mark.parametrize(
    ("text", "codes"),
    [
        (POLICY.replace("enforce", "testing"), ["MTASTS_OK", "MTASTS_MODE_TESTING"]),
        (POLICY.replace("enforce", "none"), ["MTASTS_OK", "MTASTS_MODE_NONE"]),
        (POLICY.replace("604800", "3600"), ["MTASTS_OK", "MTASTS_MAX_AGE_SHORT"]),
        (POLICY.replace("STSv1", "STSv2"), ["MTASTS_POLICY_INVALID"]),
    ],
)
def test_policy_modes_and_problems(text: str, codes: list[str]) -> None:
    assert [c for c, _, _ in judge(policy_facts(text, MxCoverage(CLOUD, "*.mail.protection.outlook.com")))] == codes


def test_an_uncovered_mx_is_refused_under_enforce_and_reported_under_testing() -> None:
    gap = MxCoverage("mx.contoso.com", None)
    ((code, subject, message),) = judge(policy_facts(POLICY, gap))
    assert (code, subject) == ("MTASTS_MX_NOT_COVERED", "mx.contoso.com") and "refuse to deliver" in message
    cloud_error = assess(policy_facts(POLICY, gap))[0].cloud_error
    assert cloud_error == "450 4.4.8 MX hosts of contoso.com failed MTA-STS validation"
    codes = [c for c, _, _ in judge(policy_facts(POLICY.replace("enforce", "testing"), gap))]
    assert codes == ["MTASTS_MODE_TESTING", "MTASTS_MX_NOT_COVERED_TESTING"]


@pytest.mark.parametrize(
    ("fetch", "words"),
    [
        (HttpsFacts(URL, "192.0.2.1", error=FetchError.CERT_UNTRUSTED, detail="unable to get local issuer"),
         "cert-untrusted: unable to get local issuer"),
        (HttpsFacts(URL, "192.0.2.1", 301, location="https://www.contoso.com/"), "must not follow"),
        (HttpsFacts(URL, "192.0.2.1", 404, "text/html"), "HTTP 404"),
        (HttpsFacts(URL, "192.0.2.1", 200, "text/html"), "text/html, not text/plain"),
    ],
)  # fmt: skip
def test_fetch_failures(fetch: HttpsFacts, words: str) -> None:
    ((code, _subject, message),) = judge(MtaStsFacts(RECORD, fetch))
    assert code == "MTASTS_FETCH_FAILED" and words in message


REFUSED = HttpsFacts(URL, "192.0.2.2", error=FetchError.REFUSED, detail="Connection refused")


def test_an_address_of_the_policy_host_that_fails_is_named_while_another_serves_the_policy() -> None:
    # Given a policy served at one address of the policy host, and another address that refuses connections
    facts = MtaStsFacts(RECORD, SERVED, policy=parse_policy(POLICY.encode()),
                        coverage=(MxCoverage(CLOUD, "*.mail.protection.outlook.com"),), others=(REFUSED,))  # fmt: skip
    ((code, subject, message),) = judge(facts)
    # Then the failing address is the finding's subject, with what it did and where the policy came from
    assert (code, subject) == ("MTASTS_ADDRESS_FAILED", "mta-sts.contoso.com [192.0.2.2]")
    assert "at 192.0.2.2 (refused: Connection refused), only at 192.0.2.1" in message
    # and an address answering 404 is no policy either
    other = HttpsFacts(URL, "2001:db8::1", 404, "text/html")
    codes = [(c, s) for c, s, _ in judge(MtaStsFacts(RECORD, SERVED, policy=parse_policy(POLICY.encode()),
                                                     others=(REFUSED, other)))]  # fmt: skip
    assert codes == [("MTASTS_ADDRESS_FAILED", "mta-sts.contoso.com [192.0.2.2]"),
                     ("MTASTS_ADDRESS_FAILED", "mta-sts.contoso.com [2001:db8::1]")]  # fmt: skip


def test_when_no_address_of_the_policy_host_serves_the_policy_the_fetch_fails_naming_each() -> None:
    timeout = HttpsFacts(URL, "192.0.2.1", error=FetchError.TIMEOUT, detail="no complete answer within 5 s")
    ((code, subject, message),) = judge(MtaStsFacts(RECORD, timeout, others=(REFUSED,)))
    assert (code, subject) == ("MTASTS_FETCH_FAILED", DOMAIN)
    assert "(192.0.2.1: timeout: no complete answer within 5 s; 192.0.2.2: refused: Connection refused)" in message


@pytest.mark.parametrize(
    ("facts", "code", "words"),
    [
        (MtaStsFacts(StsTxtFacts(DOMAIN, TxtStatus.NONE)), "MTASTS_MISSING", "_mta-sts.contoso.com"),
        (MtaStsFacts(StsTxtFacts(DOMAIN, TxtStatus.DNS_ERROR, detail="SERVFAIL")), "MTASTS_DNS_ERROR", "SERVFAIL"),
        (MtaStsFacts(StsTxtFacts(DOMAIN, TxtStatus.MULTIPLE, texts=("v=STSv1; id=1", "v=STSv1; id=2"))),
         "MTASTS_RECORD_INVALID", "2 v=STSv1 records"),
        (MtaStsFacts(StsTxtFacts(DOMAIN, TxtStatus.INVALID, parse_txt("v=STSv1;"))), "MTASTS_RECORD_INVALID",
         "id field is missing"),
        (MtaStsFacts(RECORD, not_fetched="its address 10.0.0.1 is not public"), "MTASTS_FETCH_FAILED", "not public"),
    ],
)  # fmt: skip
def test_record_problems(facts: MtaStsFacts, code: str, words: str) -> None:
    ((found, _subject, message),) = judge(facts)
    assert found == code and words in message


@pytest.mark.parametrize(
    ("domain", "expected"),
    [("contoso.com", ["MTASTS_OK"]), ("stsnotcovering.example", ["MTASTS_MX_NOT_COVERED"]),
     ("fabrikam.com", ["MTASTS_MISSING"]), ("stsfailover.example", ["MTASTS_ADDRESS_FAILED"]),
     ("stsbadcert.example", ["MTASTS_FETCH_FAILED"]), ("stsdiffer.example", ["MTASTS_ADDRESS_FAILED"])],
)  # fmt: skip
def test_lab_domains(domain_report, domain: str, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert codes_of(domain_report(domain), "mtasts") == expected


def test_lab_policy_host_certificate_is_validated(lab: Lab) -> None:
    # Given the system store instead of the lab's CA, the policy host's certificate is untrusted
    registry = default_registry().select(["mtasts"])
    options = lab.run_options(timeout=3.0, ca_file=None)
    (domain,) = asyncio.run(run_checks(["contoso.com"], registry, options)).domains
    (finding,) = domain.result("mtasts").findings
    assert finding.code == "MTASTS_FETCH_FAILED" and "cert-untrusted" in finding.message


def test_a_run_makes_one_tls_context_for_every_policy_fetch(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    # Loading the system store costs ~50 ms of CPU: once per run, not once per policy host address
    made: list[ssl.SSLContext] = []

    def counted(ca_file: Path | None = None) -> ssl.SSLContext:
        made.append(client_context(ca_file))
        return made[-1]

    monkeypatch.setattr(https, "client_context", counted)
    registry = default_registry().select(["mtasts"])
    domains = ["contoso.com", "stsfailover.example", "stsdiffer.example"]
    report = asyncio.run(run_checks(domains, registry, lab.run_options()))
    fetched = [d.result("mtasts").facts for d in report.domains]
    assert sum(1 + len(f.others) for f in fetched) >= 5  # every address of three policy hosts
    assert len(made) == 1


def test_lab_policy_host_on_a_private_address_is_left_alone(lab: Lab) -> None:
    registry = default_registry().select(["mtasts"])
    (domain,) = asyncio.run(run_checks(["contoso.com"], registry, lab.run_options(allow_private=False))).domains
    (finding,) = domain.result("mtasts").findings
    assert finding.code == "MTASTS_FETCH_FAILED" and "127.0.10.30 is not public" in finding.message


def test_lab_policy_host_with_an_expired_certificate(domain_report) -> None:  # type: ignore[no-untyped-def]
    # RFC 8461 §3.3: the policy host's certificate must be valid; senders treat the domain as having no policy
    (finding,) = domain_report("stsbadcert.example").result("mtasts").findings
    assert "cert-expired" in finding.message and "certificate has expired" in finding.message


def test_an_address_that_serves_another_policy_is_named() -> None:
    # Given the policy host's second address serving a policy of its own (mode none), the first the enforced one
    other = HttpsFacts(URL, "192.0.2.3", 200, "text/plain", tls_version="TLSv1.3",
                       body=POLICY.replace("enforce", "none").encode())  # fmt: skip
    facts = MtaStsFacts(RECORD, SERVED, policy=parse_policy(POLICY.encode()),
                        coverage=(MxCoverage(CLOUD, "*.mail.protection.outlook.com"),), others=(other,))  # fmt: skip
    ((code, subject, message),) = judge(facts)
    # Then that address is named, with both policies: a sender applies whichever it reached
    assert (code, subject) == ("MTASTS_ADDRESS_FAILED", "mta-sts.contoso.com [192.0.2.3]")
    assert "serves another policy at 192.0.2.3 (mode none" in message and "than at 192.0.2.1 (mode enforce" in message
    # but the same policy written otherwise (CRLF line ends, another order of lines) is the same policy
    same = HttpsFacts(URL, "192.0.2.3", 200, "text/plain", tls_version="TLSv1.3",
                      body="\r\n".join(reversed(POLICY.strip().splitlines())).encode())  # fmt: skip
    facts = MtaStsFacts(RECORD, SERVED, policy=parse_policy(POLICY.encode()),
                        coverage=(MxCoverage(CLOUD, "*.mail.protection.outlook.com"),), others=(same,))  # fmt: skip
    assert [code for code, _, _ in judge(facts)] == ["MTASTS_OK"]


def test_invalid_policies_at_other_addresses_are_told_as_invalid_and_alike() -> None:
    broken = POLICY.replace("mode: enforce", "mode: sometimes").encode()
    other = HttpsFacts(URL, "192.0.2.3", 200, "text/plain", tls_version="TLSv1.3", body=broken)
    facts = MtaStsFacts(RECORD, SERVED, policy=parse_policy(POLICY.encode()),
                        coverage=(MxCoverage(CLOUD, "*.mail.protection.outlook.com"),), others=(other,))  # fmt: skip
    ((code, _subject, message),) = judge(facts)
    assert code == "MTASTS_ADDRESS_FAILED" and "at 192.0.2.3 (an invalid policy) than at 192.0.2.1 (mode enforce" in (
        message)
    # two policies senders both ignore are no difference to report; a repeated mx line changes nothing either
    twice = HttpsFacts(URL, "192.0.2.4", 200, "text/plain", body=POLICY.replace("max_age", "max_age: x\nz").encode())
    assert [c for c, _, _ in judge(MtaStsFacts(RECORD, SERVED, policy=parse_policy(broken), others=(twice,)))] == [
        "MTASTS_POLICY_INVALID"]
    repeated = HttpsFacts(URL, "192.0.2.5", 200, "text/plain", body=(POLICY + "mx: *.mail.protection.outlook.com\n"
                                                                     ).encode())  # fmt: skip
    facts = MtaStsFacts(RECORD, SERVED, policy=parse_policy(POLICY.encode()),
                        coverage=(MxCoverage(CLOUD, "*.mail.protection.outlook.com"),), others=(repeated,))  # fmt: skip
    assert [c for c, _, _ in judge(facts)] == ["MTASTS_OK"]
