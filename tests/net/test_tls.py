"""Certificate facts, chain verification and RFC 6125 name matching, on certificates of the lab's test PKI."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from diag.errors import ConfigError
from diag.lab.pki import CertKind, TestPKI
from diag.net.tls import CertInfo, Trust, cert_info, examine_chain, load_trust_store, name_matches, verify_chain


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.create()


def verdict(pki: TestPKI, kind: CertKind, *, store: tuple = (), at=None):  # type: ignore[no-untyped-def]
    issued = pki.issue(["mx.example.com"], kind=kind)
    return verify_chain(issued.chain, store or (pki.root,), at=at or pki.now)


@pytest.mark.parametrize(
    ("kind", "trust"),
    [
        (CertKind.GOOD, Trust.TRUSTED),
        # Dates and names are judged apart from trust: an expired chain still leads to a trusted root.
        (CertKind.EXPIRED, Trust.TRUSTED),
        (CertKind.NOT_YET_VALID, Trust.TRUSTED),
        (CertKind.EXPIRING, Trust.TRUSTED),
        (CertKind.WEAK_KEY, Trust.TRUSTED),
        (CertKind.SELF_SIGNED, Trust.SELF_SIGNED),
        (CertKind.CHAINLESS, Trust.INCOMPLETE),
        (CertKind.SHA1, Trust.WEAK_SIGNATURE),
    ],
)
def test_trust(pki: TestPKI, kind: CertKind, trust: Trust) -> None:
    assert verdict(pki, kind).trust is trust


def test_another_root_is_untrusted(pki: TestPKI) -> None:
    other = TestPKI.create()
    result = verdict(pki, CertKind.GOOD, store=(other.root,))
    assert result.trust is Trust.UNTRUSTED and result.detail
    # A leaf sent alone under an unknown CA: the missing intermediate is what the server can fix first.
    assert verdict(pki, CertKind.CHAINLESS, store=(other.root,)).trust is Trust.INCOMPLETE


def test_chainless_verifies_when_the_intermediate_is_trusted(pki: TestPKI) -> None:
    # Never fetched: only a store that already holds the intermediate makes a leaf-only chain verify.
    assert verdict(pki, CertKind.CHAINLESS, store=(pki.root, pki.intermediate)).trust is Trust.TRUSTED


def _server_only(pki: TestPKI) -> tuple[x509.Certificate, x509.Certificate]:
    """A leaf whose extended key usage allows serverAuth only, issued by ``pki``'s intermediate."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.example.com")]))
        .issuer_name(pki.intermediate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(pki.now - timedelta(days=1))
        .not_valid_after(pki.now + timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("mail.example.com")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.intermediate_key.public_key()), critical=False
        )
        .sign(pki.intermediate_key, hashes.SHA256())
    )
    return (leaf, pki.intermediate)


@pytest.mark.parametrize(
    ("kind", "trust"),
    [(CertKind.GOOD, Trust.TRUSTED), (CertKind.EXPIRED, Trust.TRUSTED), (CertKind.SELF_SIGNED, Trust.SELF_SIGNED),
     (CertKind.CHAINLESS, Trust.INCOMPLETE)],
)  # fmt: skip
def test_a_client_certificate_is_verified_as_one(pki: TestPKI, kind: CertKind, trust: Trust) -> None:
    issued = pki.issue(["mail.example.com"], kind=kind)
    chain_der = tuple(cert.public_bytes(Encoding.DER) for cert in issued.chain)
    (leaf, *_), result = examine_chain(chain_der, (pki.root,), at=pki.now, client=True)
    assert result.trust is trust and leaf.dns_names == ("mail.example.com",)


def test_a_certificate_only_for_servers_is_no_client_certificate(pki: TestPKI) -> None:
    # OpenSSL refuses it at the handshake ("unsupported certificate purpose"); so does the client verifier
    chain = _server_only(pki)
    assert verify_chain(chain, (pki.root,), at=pki.now).trust is Trust.TRUSTED
    refused = verify_chain(chain, (pki.root,), at=pki.now, client=True)
    assert refused.trust is Trust.UNTRUSTED and refused.detail


def _version_4(der: bytes) -> bytes:
    # The TBSCertificate's explicit version [0] INTEGER 2 (v3) made 3, a version X.509 does not define.
    assert der.count(bytes.fromhex("a003020102")) == 1
    return der.replace(bytes.fromhex("a003020102"), bytes.fromhex("a003020103"))


@pytest.mark.parametrize(
    ("mangle", "words"),
    [
        (lambda pki: pki.issue(["mx.example.com"], kind=CertKind.MALFORMED).certificate, "subject_alternative_name"),
        (lambda pki: _version_4(pki.issue(["mx.example.com"]).certificate.public_bytes(Encoding.DER)), "version"),
        (lambda pki: b"\x30\x03\x02\x01\x01", "leaf"),
    ],
    ids=["unparsable-san", "version-4", "not-a-certificate"],
)
def test_a_certificate_that_cannot_be_parsed_is_a_verdict_not_a_crash(pki: TestPKI, mangle, words) -> None:  # type: ignore[no-untyped-def]
    made = mangle(pki)
    der = made if isinstance(made, bytes) else made.public_bytes(Encoding.DER)
    infos, verdict = examine_chain((der,), (pki.root,), at=pki.now)
    assert infos == () and verdict.trust is Trust.MALFORMED
    assert verdict.detail.startswith("the leaf: ") and words.lower() in verdict.detail.lower()


def test_cert_info(pki: TestPKI) -> None:
    info = cert_info(pki.issue(["mx.example.com", "mail.example.com"]).certificate)
    assert info.dns_names == ("mx.example.com", "mail.example.com")
    assert info.common_names == ("mx.example.com",)
    assert (info.key_type, info.key_bits, info.signature_hash) == ("EC", 256, "sha256")
    assert len(info.sha256) == 64 and info.pem.startswith("-----BEGIN CERTIFICATE-----")
    assert info.not_after - info.not_before > timedelta(days=30)
    weak = cert_info(pki.issue(["mx.example.com"], kind=CertKind.WEAK_KEY).certificate)
    assert (weak.key_type, weak.key_bits) == ("RSA", 1024)
    assert cert_info(pki.issue(["mx.example.com"], kind=CertKind.SHA1).certificate).weak_signature


def names(*dns: str, cn: tuple[str, ...] = ()) -> CertInfo:
    return CertInfo("", "", cn, dns, None, None, "EC", 256, "sha256", "", False, "")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "info", "matches"),
    [
        ("mx.example.com", names("mx.example.com"), True),
        ("MX.Example.COM", names("mx.example.com"), True),
        ("mx.example.com.", names("mx.example.com"), True),  # trailing dot stripped (PC-11)
        ("mx.example.com", names("mx.example.com."), True),
        ("mx.example.com", names("mail.example.com"), False),
        ("mx.example.com", names("*.example.com"), True),
        ("a.mx.example.com", names("*.example.com"), False),  # one label only
        ("example.com", names("*.example.com"), False),
        ("mx.example.com", names("m*.example.com"), False),  # partial wildcards are not honoured
        ("mx.com", names("*.com"), False),  # never directly under a top-level domain
        ("mx.example.com", names(cn=("mx.example.com",)), True),  # CN only without SAN
        ("mx.example.com", names("other.example.com", cn=("mx.example.com",)), False),  # SAN wins over CN
        ("mx.example.com", names(), False),
    ],
)
def test_name_matches(host: str, info: CertInfo, matches: bool) -> None:
    assert name_matches(host, info) is matches


def test_trust_store_from_file_and_errors(pki: TestPKI, tmp_path: Path) -> None:
    path = pki.write_root(tmp_path / "ca.pem")
    assert load_trust_store(path) == (pki.root,)
    (tmp_path / "empty.pem").write_text("nothing here")
    with pytest.raises(ConfigError):
        load_trust_store(tmp_path / "empty.pem")
    with pytest.raises(ConfigError):
        load_trust_store(tmp_path / "missing.pem")


def test_system_trust_store_loads() -> None:
    assert len(load_trust_store(None)) > 10
