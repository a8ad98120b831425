"""The dnssec check: judgement of validation results, and the lab's signed, unsigned and bogus zones."""

from __future__ import annotations

import asyncio

import pytest

from checks import default_registry
from checks.dnssec import CHECK, DnssecFacts, assess
from diag.lab.runner import Lab
from diag.policy.dnssec import Denial, DnssecResult, Method, Reason, Security
from diag.policy.lookup import ReplyStatus
from diag.runner import run_checks

from .conftest import codes_of


def judge(*results: DnssecResult) -> list[tuple[str, str, str]]:
    findings = assess(DnssecFacts("contoso.com", Method.VALIDATED, (".",), results))
    assert all(f.severity is CHECK.codes[f.code] for f in findings)
    return [(f.code, f.subject, f.message) for f in findings]


@pytest.mark.parametrize(
    ("result", "code", "words"),
    [
        (DnssecResult("contoso.com", "MX", Security.SECURE, Reason.VALIDATED, chain=(".", "com", "contoso.com")),
         "DNSSEC_OK", "validates from the trust anchor (. → com → contoso.com)"),
        (DnssecResult("contoso.com", "MX", Security.SECURE, Reason.AD_BIT, Method.AD_BIT), "DNSSEC_OK", "AD bit"),
        (DnssecResult("contoso.com", "MX", Security.INSECURE, Reason.INSECURE_DELEGATION, zone="contoso.com"),
         "DNSSEC_UNSIGNED", "contoso.com is delegated without DS"),
        (DnssecResult("contoso.com", "MX", Security.INSECURE, Reason.NO_AD_BIT, Method.AD_BIT), "DNSSEC_UNSIGNED",
         "set no AD bit"),
        (DnssecResult("contoso.com", "MX", Security.BOGUS, Reason.EXPIRED, zone="contoso.com", detail="expired"),
         "DNSSEC_BOGUS", "SERVFAIL"),
        (DnssecResult("contoso.com", "MX", Security.INDETERMINATE, Reason.NO_ANCHOR, detail="no trust anchor"),
         "DNSSEC_INDETERMINATE", "no-anchor: no trust anchor"),
    ],
)  # fmt: skip
def test_each_state_has_its_code(result: DnssecResult, code: str, words: str) -> None:
    ((found, subject, message),) = judge(result)
    assert found == code and subject == "contoso.com MX" and words in message


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        # the MX answer, then each MX host's A and AAAA answers (the lab's hosts have no IPv6: a validated NODATA)
        ("contoso.com", ["DNSSEC_OK", "DNSSEC_OK", "DNSSEC_OK"]),
        ("unsigned.example", ["DNSSEC_UNSIGNED", "DNSSEC_UNSIGNED", "DNSSEC_UNSIGNED"]),
        ("badsig.example", ["DNSSEC_BOGUS", "DNSSEC_OK", "DNSSEC_OK"]),
        ("forgedsig.example", ["DNSSEC_BOGUS", "DNSSEC_OK", "DNSSEC_OK"]),  # its keys validate, its MX's signature not
        ("cnamemx.example", ["DNSSEC_OK", "DNSSEC_OK", "DNSSEC_OK"]),  # the MX host's CNAME and its target, each
        ("nullmx.example", ["DNSSEC_OK"]),
        ("nsec3.example", ["DNSSEC_OK", "DNSSEC_OK", "DNSSEC_OK"]),  # the AAAA denied with NSEC3
        ("mail.wild.nsec3.example", ["DNSSEC_OK", "DNSSEC_OK", "DNSSEC_OK"]),  # with the proof that the name does
        ("cnamesigned.example", ["DNSSEC_OK", "DNSSEC_OK", "DNSSEC_OK"]),
        ("nsec3bad.example", ["DNSSEC_OK", "DNSSEC_OK", "DNSSEC_OK"]),
        ("insecure.optout.example", ["DNSSEC_UNSIGNED", "DNSSEC_OK", "DNSSEC_OK"]),
        ("cnameunsigned.example", ["DNSSEC_OK", "DNSSEC_UNSIGNED", "DNSSEC_UNSIGNED"]),  # a CNAME into unsigned.example
        ("tlsafail.example", ["DNSSEC_OK", "DNSSEC_OK", "DNSSEC_OK"]),  # only its TLSA lookup fails
    ],
)
def test_lab_domains(domain_report, domain: str, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert codes_of(domain_report(domain), "dnssec") == expected


def test_lab_with_the_ad_bit_of_a_resolver_that_does_not_validate(lab: Lab) -> None:
    # Given the lab's DNS server declared validating (it is authoritative and never sets AD)
    registry = default_registry().select(["dnssec"])
    options = lab.run_options(timeout=3.0, validating_resolver=True)
    (domain,) = asyncio.run(run_checks(["contoso.com"], registry, options)).domains
    # Then nothing is taken as validated
    assert codes_of(domain, "dnssec") == ["DNSSEC_UNSIGNED", "DNSSEC_UNSIGNED", "DNSSEC_UNSIGNED"]
    assert domain.result("dnssec").facts.method is Method.AD_BIT


@pytest.mark.parametrize("validating_resolver", [False, True], ids=["trust-anchor", "ad-bit"])
def test_lab_dns_without_edns_gives_the_mail_checks_their_answers_and_no_dnssec_state(
    lab: Lab, validating_resolver: bool
) -> None:
    # Given noedns.example, whose DNS answers FORMERR without an OPT record to every query with EDNS (an old server)
    registry = default_registry().select(["dnssec"])
    options = lab.run_options(timeout=3.0, validating_resolver=validating_resolver)
    (domain,) = asyncio.run(run_checks(["noedns.example"], registry, options)).domains
    # Then the mx check has the answers asked again without EDNS, and no answer comes out secure: each state is
    # indeterminate, and says that the resolver gave no DNSSEC material (the path's fault, not the zone's)
    assert codes_of(domain, "mx") == ["MX_OK"]
    assert codes_of(domain, "dnssec") == ["DNSSEC_INDETERMINATE"] * 3
    results = domain.result("dnssec").facts.results
    assert [(r.name, r.rdtype, r.security, r.reason) for r in results] == [
        ("noedns.example", "MX", Security.INDETERMINATE, Reason.NO_DNSSEC_MATERIAL),
        ("mx.noedns.example", "A", Security.INDETERMINATE, Reason.NO_DNSSEC_MATERIAL),
        ("mx.noedns.example", "AAAA", Security.INDETERMINATE, Reason.NO_DNSSEC_MATERIAL),
    ]
    assert all("does not implement EDNS" in r.detail and "carries no DNSSEC material" in r.detail for r in results)


def test_lab_cname_into_another_signed_zone_walks_both_zones(domain_report) -> None:  # type: ignore[no-untyped-def]
    (_mx, host, host6) = domain_report("cnamesigned.example").result("dnssec").facts.results
    assert (host.name, host.aliases, host.chain) == ("mx.cnamesigned.example", ("mx.nsec3.example",),
                                                     ("example", "nsec3.example"))  # fmt: skip
    assert host.records == ("127.0.20.34",)
    # and the AAAA answer too: the same CNAME, then the target's NODATA proven by NSEC3 in nsec3.example
    assert (host6.rdtype, host6.security, host6.status, host6.aliases) == ("AAAA", Security.SECURE,
                                                                           ReplyStatus.NODATA, ("mx.nsec3.example",))
    assert host6.denial is Denial.NSEC3


@pytest.mark.parametrize(
    ("result", "words"),
    [
        (DnssecResult("a.optout.example", "MX", Security.INSECURE, Reason.OPT_OUT, zone="a.optout.example"),
         "a.optout.example is delegated without DS in an NSEC3 opt-out span"),
        (DnssecResult("costly.example", "MX", Security.INSECURE, Reason.NSEC3_ITERATIONS, zone="costly.example"),
         "RFC 9276"),
        (DnssecResult("contoso.com", "MX", Security.SECURE, Reason.VALIDATED, aliases=("a.example", "b.example")),
         "through the CNAME chain contoso.com → a.example → b.example"),
    ],
)  # fmt: skip
def test_insecure_denials_and_aliases_are_named(result: DnssecResult, words: str) -> None:
    ((_code, _subject, message),) = judge(result)
    assert words in message


def test_lab_forged_signature_is_a_bad_signature_not_an_expired_one(domain_report) -> None:  # type: ignore[no-untyped-def]
    mx, *_hosts = domain_report("forgedsig.example").result("dnssec").facts.results
    assert (mx.security, mx.reason) == (Security.BOGUS, Reason.BAD_SIGNATURE)
    expired, *_hosts = domain_report("badsig.example").result("dnssec").facts.results
    assert expired.reason is Reason.EXPIRED
