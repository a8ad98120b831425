"""The certificate check: judgement of presented certificates, and the lab's broken certificates."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from checks.certificate import CHECK, CertificateFacts, PresentedCert, assess, examine
from diag.lab.pki import CertKind, TestPKI
from diag.model import Status
from diag.net.tls import Trust

from .conftest import codes_of

HOST = "mx.example.com"


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.create()


def present(pki: TestPKI, kind: CertKind, names: tuple[str, ...], store: tuple, now: datetime) -> PresentedCert:  # type: ignore[type-arg]
    chain = pki.issue(list(names), kind=kind).chain
    ders = tuple(c.public_bytes(Encoding.DER) for c in chain)
    return examine(HOST, f"{HOST} [192.0.2.1]:25", ders, store or (pki.root,), now)


def judge(pki: TestPKI, kind: CertKind = CertKind.GOOD, names: tuple[str, ...] = (HOST,), *,
          store: tuple = (), days_later: float = 0, warn: int = 30, crit: int = 7) -> list[str]:  # type: ignore[type-arg]
    now = pki.now + timedelta(days=days_later)
    presented = present(pki, kind, names, store, now)
    findings = assess(CertificateFacts((presented,), now, warn, crit))
    for finding in findings:
        assert finding.severity is CHECK.codes[finding.code]
        assert finding.subject == f"{HOST} [192.0.2.1]:25"
    return [f.code for f in findings]


def test_good(pki: TestPKI) -> None:
    assert judge(pki) == ["CERT_OK"]


def test_wildcard_covers_the_host(pki: TestPKI) -> None:
    assert judge(pki, names=("*.example.com",)) == ["CERT_OK"]


@pytest.mark.parametrize(
    ("kind", "names", "expected"),
    [
        (CertKind.EXPIRED, (HOST,), ["CERT_EXPIRED"]),
        (CertKind.NOT_YET_VALID, (HOST,), ["CERT_NOT_YET_VALID"]),
        (CertKind.EXPIRING, (HOST,), ["CERT_EXPIRING"]),
        (CertKind.SELF_SIGNED, (HOST,), ["CERT_SELF_SIGNED"]),
        (CertKind.CHAINLESS, (HOST,), ["CERT_CHAIN_INCOMPLETE"]),
        (CertKind.WEAK_KEY, (HOST,), ["CERT_WEAK_KEY"]),
        (CertKind.SHA1, (HOST,), ["CERT_WEAK_SIGNATURE"]),
        (CertKind.MALFORMED, (HOST,), ["CERT_MALFORMED"]),
        (CertKind.GOOD, ("mail.other.example",), ["CERT_NAME_MISMATCH"]),
        (CertKind.EXPIRED, ("mail.other.example",), ["CERT_EXPIRED", "CERT_NAME_MISMATCH"]),
    ],
)
def test_defects(pki: TestPKI, kind: CertKind, names: tuple[str, ...], expected: list[str]) -> None:
    assert judge(pki, kind, names) == expected


def test_a_malformed_certificate_at_one_address_leaves_the_others_judged(pki: TestPKI) -> None:
    # Given two addresses: one presents a good chain, the other a good leaf followed by an unparsable one
    good = present(pki, CertKind.GOOD, (HOST,), (), pki.now)
    leaf = pki.issue([HOST]).certificate.public_bytes(Encoding.DER)
    broken = pki.issue([HOST], kind=CertKind.MALFORMED).certificate.public_bytes(Encoding.DER)
    bad = examine(HOST, f"{HOST} [192.0.2.2]:25", (leaf, broken), (pki.root,), pki.now)

    findings = assess(CertificateFacts((good, bad), pki.now, 30, 7))

    # Then each address has its own verdict, and the parsable leaf is still shown
    assert [(f.code, f.subject) for f in findings] == [
        ("CERT_OK", f"{HOST} [192.0.2.1]:25"), ("CERT_MALFORMED", f"{HOST} [192.0.2.2]:25"),
    ]  # fmt: skip
    assert "certificate 2 of the chain" in findings[1].message
    assert len(bad.chain) == 1 and bad.leaf.dns_names == (HOST,)


def test_untrusted_root(pki: TestPKI) -> None:
    assert judge(pki, store=(TestPKI.create().root,)) == ["CERT_UNTRUSTED"]


def test_expiry_thresholds(pki: TestPKI) -> None:
    # A 90-day certificate: 85 days later 5 days remain, within the critical threshold.
    assert judge(pki, days_later=85) == ["CERT_EXPIRING_SOON"]
    assert judge(pki, days_later=65) == ["CERT_EXPIRING"]
    assert judge(pki, days_later=65, warn=20) == ["CERT_OK"]
    assert judge(pki, days_later=95) == ["CERT_EXPIRED"]


def test_findings_say_what_the_cloud_says(pki: TestPKI) -> None:
    presented = present(pki, CertKind.GOOD, ("mail.other.example",), (), pki.now)
    (mismatch,) = assess(CertificateFacts((presented,), pki.now, 30, 7))
    assert "mail.other.example" in mismatch.message
    assert mismatch.cloud_error == (
        "450 4.4.317 Cannot connect to remote server [Message=SubjectMismatch Expected Subject: mx.example.com. "
        "Presented Subject: CN=mail.other.example]"
    )
    chainless = present(pki, CertKind.CHAINLESS, (HOST,), (), pki.now)
    (incomplete,) = assess(CertificateFacts((chainless,), pki.now, 30, 7))
    assert incomplete.cloud_error == "450 4.4.317 Cannot connect to remote server [Message=UntrustedRoot]"


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("contoso.com", ["CERT_OK"]),
        ("tailspintoys.com", ["CERT_OK"]),
        ("expired.example", ["CERT_EXPIRED"]),
        ("notyetvalid.example", ["CERT_NOT_YET_VALID"]),
        ("wrongname.example", ["CERT_NAME_MISMATCH"]),
        ("selfsigned.example", ["CERT_SELF_SIGNED"]),
        ("chainless.example", ["CERT_CHAIN_INCOMPLETE"]),
        ("weakkey.example", ["CERT_WEAK_KEY"]),
        ("sha1.example", ["CERT_WEAK_SIGNATURE"]),
        ("malformed.example", ["CERT_MALFORMED"]),
        ("expiring.example", ["CERT_EXPIRING"]),
        ("cnamemx.example", ["CERT_OK"]),
        ("untrusted.example", ["CERT_UNTRUSTED"]),
        ("manymx.example", ["CERT_OK"]),
    ],
)
def test_lab(domain_report, domain: str, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert codes_of(domain_report(domain), "certificate") == expected


def test_lab_facts_describe_the_chain_as_sent(domain_report) -> None:  # type: ignore[no-untyped-def]
    good = domain_report("contoso.com").result("certificate").facts.certificates[0]
    assert len(good.chain) == 2 and good.leaf.dns_names[0] == "*.mail.protection.outlook.com"
    chainless = domain_report("chainless.example").result("certificate").facts.certificates[0]
    assert len(chainless.chain) == 1 and chainless.trust is Trust.INCOMPLETE


def test_lab_no_tls_means_skipped(domain_report) -> None:  # type: ignore[no-untyped-def]
    result = domain_report("notls.example").result("certificate")
    assert (result.status, result.reason) == (Status.SKIPPED, "no MX address completed a TLS handshake")
