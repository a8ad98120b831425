"""The embedded lab's throwaway test PKI: a root, an intermediate, and leaves good and deliberately broken.

Everything is built in memory with ``cryptography``; nothing touches disk until :meth:`Issued.write` or
:meth:`TestPKI.write_root`. Keys are EC P-256 (fast to generate) except for :attr:`CertKind.WEAK_KEY`. All
validity periods are computed from one reference time, :attr:`TestPKI.now`, so a lab run is reproducible in
time even though keys and serial numbers are random.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from dataclasses import field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from diag.frozen import frozen

__all__ = ["CertKind", "Issued", "TestPKI"]

_DAY = timedelta(days=1)
# AlgorithmIdentifier ecdsa-with-SHA1 (1.2.840.10045.4.1), parameters absent as RFC 3279 §2.2.3 requires.
_ECDSA_WITH_SHA1 = bytes.fromhex("3009 0607 2a8648ce3d0401")


# The SAN name that a MALFORMED leaf's bytes replace (same length, so no DER length changes).
_PLACEHOLDER: Final = "unparsable-name.invalid"


class CertKind(enum.StrEnum):
    """Which leaf to issue: a good one, or one broken in exactly one way a TLS client should notice."""

    GOOD = "good"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    SELF_SIGNED = "self-signed"
    CHAINLESS = "chainless"
    WEAK_KEY = "weak-key"
    SHA1 = "sha1"
    EXPIRING = "expiring"
    MALFORMED = "malformed"


@frozen
class Issued:
    """A leaf certificate as a server would deploy it.

    ``names`` are the DNS names it was issued for (the first is also the subject CN), ``kind`` how it is
    broken, ``certificate`` the leaf itself, ``key_pem`` its private key (PKCS#8 PEM, unencrypted) and
    ``chain`` what the server sends in its Certificate message: the leaf first, then the intermediate unless
    the kind is :attr:`CertKind.SELF_SIGNED` or :attr:`CertKind.CHAINLESS`.
    """

    names: tuple[str, ...]
    kind: CertKind
    certificate: x509.Certificate
    key_pem: bytes = field(repr=False)
    chain: tuple[x509.Certificate, ...]

    def chain_pem(self) -> bytes:
        """The chain as concatenated PEM blocks, leaf first."""
        return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in self.chain)

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``{stem}.chain.pem`` (0o644) and ``{stem}.key.pem`` (0o600) into *directory*; return both."""
        chain_path, key_path = directory / f"{stem}.chain.pem", directory / f"{stem}.key.pem"
        _write(chain_path, self.chain_pem(), 0o644)
        _write(key_path, self.key_pem, 0o600)
        return chain_path, key_path


@frozen
class TestPKI:
    """A two-level CA that issues lab leaves.

    ``root`` is the self-signed trust anchor (the client's ``--ca-file``), ``intermediate`` the CA that signs
    the leaves, ``now`` the tz-aware UTC reference time every validity period is computed from (whole seconds,
    as X.509 times carry no fractions), and ``root_key`` / ``intermediate_key`` the CAs' private keys.
    """

    __test__: ClassVar[bool] = False  # the name starts with "Test"; keep pytest from collecting it

    root: x509.Certificate
    intermediate: x509.Certificate
    now: datetime
    root_key: ec.EllipticCurvePrivateKey = field(repr=False)
    intermediate_key: ec.EllipticCurvePrivateKey = field(repr=False)

    @classmethod
    def create(cls, *, now: datetime | None = None, org: str = "diag lab") -> TestPKI:
        """Create a fresh root and intermediate; validity is computed from *now* (tz-aware; default: now)."""
        if now is None:
            now = datetime.now(UTC)
        elif now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        # X.509 times have no fractional seconds (RFC 5280 §4.1.2.5.1, §4.1.2.5.2): truncate so that `now` and
        # the certificates' validity compare exactly.
        now = now.astimezone(UTC).replace(microsecond=0)
        root_key, intermediate_key = _ec_key(), _ec_key()
        root_name = _name("diag lab root CA", org)
        root = _ca(root_name, root_key, root_name, root_key, now, days=3650, path_length=None)
        # path_length=0 (RFC 5280 §4.2.1.9): the intermediate may sign leaves only.
        inter_name = _name("diag lab intermediate CA", org)
        intermediate = _ca(inter_name, intermediate_key, root_name, root_key, now, days=1825, path_length=0)
        return cls(root, intermediate, now, root_key, intermediate_key)

    def issue(self, names: Sequence[str], *, kind: CertKind = CertKind.GOOD) -> Issued:
        """Issue a leaf for *names* (A-labels; wildcards allowed), broken as *kind* says.

        A first name that is not ASCII goes into the subject CN only: a dNSName is an IA5String (RFC 5280
        §4.2.1.6) and cannot carry it, but a CN (UTF8String) can, and hostile servers put text such as bidi
        overrides there (security-cases RPT-04).
        """
        if isinstance(names, str):
            raise TypeError("names must be a sequence of names, not a single string")
        if not names:
            raise ValueError("a certificate needs at least one name")
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        key = rsa.generate_private_key(65537, 1024) if kind is CertKind.WEAK_KEY else _ec_key()  # noqa: S505
        not_before, not_after = {
            CertKind.EXPIRED: (self.now - 60 * _DAY, self.now - _DAY),
            CertKind.NOT_YET_VALID: (self.now + 10 * _DAY, self.now + 400 * _DAY),
            CertKind.EXPIRING: (self.now - _DAY, self.now + 10 * _DAY),
        }.get(kind, (self.now - _DAY, self.now + 90 * _DAY))
        # ub-common-name is 64 (RFC 5280 appendix A): a longer first name lives in the SAN alone, which must
        # then be critical (§4.2.1.6).
        dns_names = [name for name in names if name.isascii()]
        if not dns_names:
            raise ValueError("a certificate needs at least one ASCII (A-label) name")
        if kind is CertKind.MALFORMED:
            dns_names.append(_PLACEHOLDER)
        fits = len(names[0]) <= 64
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])] if fits else [])
        self_signed = kind is CertKind.SELF_SIGNED
        signer = key if self_signed else self.intermediate_key
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject if self_signed else self.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(list(map(x509.DNSName, dns_names))), critical=not fits)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(key_encipherment=isinstance(key, rsa.RSAPrivateKey)), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            # RFC 5280 §4.2.1.1 lets a self-signed certificate omit the AKI, but verifiers (cryptography's
            # among them) then reject it for the missing extension rather than for being untrusted.
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
            )
        )
        if kind is CertKind.SHA1:
            certificate = _sign_sha1(builder, self.intermediate_key)
        elif kind is CertKind.MALFORMED:
            certificate = _with_unparsable_name(builder.sign(signer, hashes.SHA256()))
        else:
            certificate = builder.sign(signer, hashes.SHA256())
        leaf_only = self_signed or kind is CertKind.CHAINLESS
        chain = (certificate,) if leaf_only else (certificate, self.intermediate)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return Issued(tuple(names), kind, certificate, key_pem, chain)

    def root_pem(self) -> bytes:
        """The root certificate as PEM: the CA bundle a client trusts."""
        return self.root.public_bytes(serialization.Encoding.PEM)

    def write_root(self, path: Path) -> Path:
        """Write :meth:`root_pem` to *path* (0o644) and return *path*."""
        _write(path, self.root_pem(), 0o644)
        return path


def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, org: str) -> x509.Name:
    attributes = [(NameOID.COMMON_NAME, common_name), (NameOID.ORGANIZATION_NAME, org)]
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])


def _key_usage(*, key_encipherment: bool = False, ca: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=key_encipherment,  # RSA key transport (pre-TLS 1.3); meaningless for EC keys
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _ca(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    now: datetime,
    *,
    days: int,
    path_length: int | None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Back-dated a year, not a day: path validation checks every certificate at one validation time
        # (RFC 5280 §6.1.3), so an EXPIRED leaf (from now-60d) verifies in its own past only if its CAs do.
        .not_valid_before(now - 365 * _DAY)
        .not_valid_after(now + days * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if key is not issuer_key:  # RFC 5280 §4.2.1.1: required on all but self-signed certificates
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _sign_sha1(builder: x509.CertificateBuilder, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    # CertificateBuilder.sign() refuses SHA-1, but the raw ECDSA primitive still accepts it. So build the
    # TBSCertificate via a SHA-256 signature, swap its signature AlgorithmIdentifier (which RFC 5280 §4.1.2.3
    # requires to equal the outer signatureAlgorithm), and assemble the Certificate (§4.1) by hand.
    [(_, tbs_body)] = _der_items(builder.sign(key, hashes.SHA256()).tbs_certificate_bytes)
    tbs_fields = [_der(tag, body) for tag, body in _der_items(tbs_body)]
    tbs_fields[2] = _ECDSA_WITH_SHA1  # version, serialNumber, signature, issuer, ...
    tbs = _der(0x30, b"".join(tbs_fields))
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA1()))  # noqa: S303 - a deliberately weak lab certificate
    return x509.load_der_x509_certificate(_der(0x30, tbs + _ECDSA_WITH_SHA1 + _der(0x03, b"\0" + signature)))


def _with_unparsable_name(certificate: x509.Certificate) -> x509.Certificate:
    # A subjectAltName dNSName is an IA5String (RFC 5280 §4.2.1.6): bytes above 0x7F make the extension
    # unparsable for strict decoders (cryptography's), while OpenSSL still loads and serves the certificate.
    # The signature no longer matches either; parsing fails first.
    der = certificate.public_bytes(serialization.Encoding.DER)
    placeholder = _PLACEHOLDER.encode("ascii")
    if der.count(placeholder) != 1:
        raise AssertionError("the placeholder name must occur exactly once")
    return x509.load_der_x509_certificate(der.replace(placeholder, b"\xff" * len(placeholder)))


def _der(tag: int, body: bytes) -> bytes:
    """One DER TLV (single-byte tag, definite length)."""
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, body) pairs of the DER TLVs concatenated in *data*."""
    items = []
    while data:
        tag, size, start = data[0], data[1], 2
        if size & 0x80:
            start += size & 0x7F
            size = int.from_bytes(data[2:start], "big")
        items.append((tag, data[start : start + size]))
        data = data[start + size :]
    return items


def _write(path: Path, data: bytes, mode: int) -> None:
    # Create with the final mode so a key is never readable by others, even briefly; fchmod as well because
    # the umask narrows the creation mode and an existing file keeps its old one.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), mode)
        file.write(data)
