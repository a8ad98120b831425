"""The lab's test PKI: each kind of leaf is good or broken in exactly the advertised way."""

from __future__ import annotations

import ssl
import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from diag.lab.pki import CertKind, Issued, TestPKI

NAME = "mx1.contoso.test"
WILDCARD = "*.mail.protection.outlook.com"
DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.create()


def verify(
    pki: TestPKI,
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    name: str = NAME,
    at: datetime | None = None,
) -> None:
    """Raise VerificationError unless *leaf* chains to the root and is valid for *name* at *at* (pki.now)."""
    builder = PolicyBuilder().store(Store([pki.root])).time(at or pki.now)
    builder.build_server_verifier(x509.DNSName(name)).verify(leaf, intermediates)


def issue(pki: TestPKI, kind: CertKind) -> Issued:
    return pki.issue([NAME, "mx2.contoso.test"], kind=kind)


def test_cas_are_shaped_per_rfc5280(pki: TestPKI) -> None:
    root, intermediate = pki.root, pki.intermediate
    assert root.subject == root.issuer
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "diag lab root CA"
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "diag lab"
    assert intermediate.issuer == root.subject
    for cert, path_length in ((root, None), (intermediate, 0)):
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical and constraints.value.ca and constraints.value.path_length == path_length
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert cert.not_valid_before_utc == pki.now - 365 * DAY  # covers the EXPIRED leaf's window
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = intermediate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest
    intermediate.verify_directly_issued_by(root)
    assert root.not_valid_after_utc == pki.now + 3650 * DAY
    assert intermediate.not_valid_after_utc == pki.now + 1825 * DAY


def test_good_leaf_verifies_and_is_shaped_for_a_server(pki: TestPKI) -> None:
    issued = issue(pki, CertKind.GOOD)
    leaf = issued.certificate
    assert issued.chain == (leaf, pki.intermediate)
    verify(pki, leaf, [pki.intermediate])
    verify(pki, leaf, [pki.intermediate], name="mx2.contoso.test")
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == NAME
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == [NAME, "mx2.contoso.test"]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).critical
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_encipherment
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    assert (leaf.not_valid_before_utc, leaf.not_valid_after_utc) == (pki.now - DAY, pki.now + 90 * DAY)


def test_good_leaf_fails_for_another_name(pki: TestPKI) -> None:
    with pytest.raises(VerificationError):
        verify(pki, issue(pki, CertKind.GOOD).certificate, [pki.intermediate], name="mx.fabrikam.test")


def test_wildcard_leaf_verifies_for_a_tenant_host(pki: TestPKI) -> None:
    leaf = pki.issue([WILDCARD]).certificate
    verify(pki, leaf, [pki.intermediate], name="contoso-com.mail.protection.outlook.com")
    with pytest.raises(VerificationError):  # a wildcard covers exactly one label (RFC 6125 §6.4.3)
        verify(pki, leaf, [pki.intermediate], name="a.b.mail.protection.outlook.com")


@pytest.mark.parametrize(
    ("kind", "inside"), [(CertKind.EXPIRED, -30 * DAY), (CertKind.NOT_YET_VALID, 30 * DAY)]
)
def test_out_of_validity_fails_now_but_verifies_inside(
    pki: TestPKI, kind: CertKind, inside: timedelta
) -> None:
    issued = issue(pki, kind)
    assert issued.chain == (issued.certificate, pki.intermediate)
    with pytest.raises(VerificationError):
        verify(pki, issued.certificate, [pki.intermediate])
    verify(pki, issued.certificate, [pki.intermediate], at=pki.now + inside)


def test_self_signed_is_untrusted(pki: TestPKI) -> None:
    issued = issue(pki, CertKind.SELF_SIGNED)
    leaf = issued.certificate
    assert leaf.issuer == leaf.subject
    assert issued.chain == (leaf,)
    leaf.verify_directly_issued_by(leaf)
    with pytest.raises(VerificationError):
        verify(pki, leaf, [])
    with pytest.raises(VerificationError):
        verify(pki, leaf, [pki.intermediate])


def test_chainless_needs_the_intermediate(pki: TestPKI) -> None:
    issued = issue(pki, CertKind.CHAINLESS)
    assert issued.chain == (issued.certificate,)
    with pytest.raises(VerificationError):
        verify(pki, issued.certificate, list(issued.chain[1:]))
    verify(pki, issued.certificate, [pki.intermediate])


def test_weak_key_is_rsa_1024_and_otherwise_good(pki: TestPKI) -> None:
    issued = issue(pki, CertKind.WEAK_KEY)
    key = issued.certificate.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size == 1024 and key.public_numbers().e == 65537
    assert issued.certificate.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    assert issued.chain == (issued.certificate, pki.intermediate)
    issued.certificate.verify_directly_issued_by(pki.intermediate)


def test_malformed_loads_into_openssl_but_its_names_cannot_be_parsed(pki: TestPKI, tmp_path: Path) -> None:
    issued = issue(pki, CertKind.MALFORMED)
    # A server can deploy it: OpenSSL loads it with its key.
    chain, key = issued.write(tmp_path, "malformed")
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(chain, key)
    # A strict parser cannot read its subjectAltName.
    with pytest.raises(ValueError, match="subject_alternative_name"):
        issued.certificate.extensions  # noqa: B018 - parsing is the point


def test_sha1_is_signed_by_the_intermediate_with_sha1(pki: TestPKI) -> None:
    issued = issue(pki, CertKind.SHA1)
    leaf = issued.certificate
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA1)
    assert leaf.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA1
    assert issued.chain == (leaf, pki.intermediate)
    assert leaf.issuer == pki.intermediate.subject
    # cryptography refuses SHA-1 in verify_directly_issued_by(), so check the signature with the primitive.
    issuer_key = pki.intermediate.public_key()
    assert isinstance(issuer_key, ec.EllipticCurvePublicKey)
    issuer_key.verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(hashes.SHA1()))


def test_expiring_is_valid_for_ten_more_days(pki: TestPKI) -> None:
    leaf = issue(pki, CertKind.EXPIRING).certificate
    assert leaf.not_valid_after_utc - pki.now == 10 * DAY
    verify(pki, leaf, [pki.intermediate])
    with pytest.raises(VerificationError):
        verify(pki, leaf, [pki.intermediate], at=pki.now + 11 * DAY)


def test_validity_is_computed_from_the_given_now() -> None:
    now = datetime(2031, 5, 17, 8, 30, 15, 999_999, tzinfo=timezone(timedelta(hours=2)))
    pki = TestPKI.create(now=now, org="Contoso lab")
    expected = datetime(2031, 5, 17, 6, 30, 15, tzinfo=UTC)
    assert pki.now == expected and pki.now.tzinfo is UTC
    assert pki.root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Contoso lab"
    expected_windows = {
        CertKind.GOOD: (-1, 90),
        CertKind.EXPIRED: (-60, -1),
        CertKind.NOT_YET_VALID: (10, 400),
        CertKind.EXPIRING: (-1, 10),
    }
    for kind, (start, end) in expected_windows.items():
        leaf = pki.issue([NAME], kind=kind).certificate
        assert (leaf.not_valid_before_utc, leaf.not_valid_after_utc) == (
            expected + start * DAY,
            expected + end * DAY,
        )
    verify(pki, pki.issue([NAME]).certificate, [pki.intermediate])


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone"):
        TestPKI.create(now=datetime(2031, 1, 1))  # naive on purpose


def test_names_must_be_given(pki: TestPKI) -> None:
    with pytest.raises(ValueError, match="at least one name"):
        pki.issue([])
    with pytest.raises(TypeError):
        pki.issue(NAME)


def test_a_name_too_long_for_the_cn_goes_to_a_critical_san(pki: TestPKI) -> None:
    name = "a" * 60 + ".contoso.test"
    leaf = pki.issue([name]).certificate
    assert len(leaf.subject) == 0
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    verify(pki, leaf, [pki.intermediate], name=name)


def test_each_leaf_gets_a_fresh_key_and_serial(pki: TestPKI) -> None:
    first, second = issue(pki, CertKind.GOOD), issue(pki, CertKind.GOOD)
    assert first.certificate.serial_number != second.certificate.serial_number
    assert first.key_pem != second.key_pem
    assert first.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


@pytest.mark.parametrize(("kind", "count"), [(CertKind.GOOD, 2), (CertKind.CHAINLESS, 1)])
def test_write_creates_chain_and_key_with_modes(
    pki: TestPKI, tmp_path: Path, kind: CertKind, count: int
) -> None:
    issued = issue(pki, kind)
    stale = tmp_path / "mx.key.pem"
    stale.write_bytes(b"old")
    stale.chmod(0o666)
    chain_path, key_path = issued.write(tmp_path, "mx")
    assert (chain_path, key_path) == (tmp_path / "mx.chain.pem", stale)
    assert stat.S_IMODE(chain_path.stat().st_mode) == 0o644
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_bytes() == issued.key_pem
    assert chain_path.read_bytes().count(b"-----BEGIN CERTIFICATE-----") == count
    assert x509.load_pem_x509_certificates(chain_path.read_bytes()) == list(issued.chain)


def test_root_pem_round_trips(pki: TestPKI, tmp_path: Path) -> None:
    assert x509.load_pem_x509_certificate(pki.root_pem()) == pki.root
    path = pki.write_root(tmp_path / "ca.pem")
    assert path == tmp_path / "ca.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert x509.load_pem_x509_certificates(path.read_bytes()) == [pki.root]


def test_kinds_are_stable_labels() -> None:
    assert [kind.value for kind in CertKind] == [
        "good",
        "expired",
        "not-yet-valid",
        "self-signed",
        "chainless",
        "weak-key",
        "sha1",
        "expiring",
        "malformed",
    ]
    assert TestPKI.__test__ is False
