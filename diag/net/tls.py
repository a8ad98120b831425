"""Certificates as facts, with cryptography: parse what a server sent, verify the chain, match host names. The
facts themselves (:class:`CertInfo`, :class:`Trust`) and the name matching are in :mod:`diag.net.tls_facts`,
which needs no cryptography; they are imported here too.

Verification never fetches missing intermediates (the cloud service does not either: exchange-model.md §5.2,
"Exchange Online doesn't fetch intermediate certificates on-demand"), so a server that sends only its leaf
is found out here exactly as it would be there.
"""

from __future__ import annotations

import hashlib
import ssl
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import DNSName
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from diag.errors import ConfigError
from diag.net.tls_facts import WEAK_HASHES, CertInfo, Trust, TrustVerdict, name_matches

__all__ = [
    "MALFORMED_ERRORS",
    "CertInfo",
    "Trust",
    "TrustVerdict",
    "cert_info",
    "examine_chain",
    "load_key_pair",
    "load_trust_store",
    "name_matches",
    "verify_chain",
]

# What cryptography raises for a certificate it cannot parse: bad DER, a malformed or repeated extension, an
# unknown X.509 version, a name of a type it does not know.
MALFORMED_ERRORS = (ValueError, x509.DuplicateExtension, x509.InvalidVersion, x509.UnsupportedGeneralNameType)


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        return tuple(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                     .get_values_for_type(x509.DNSName))  # fmt: skip
    except x509.ExtensionNotFound:
        return ()


def _common_names(cert: x509.Certificate) -> tuple[str, ...]:
    return tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))


def _signature_hash(cert: x509.Certificate) -> str | None:
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:  # an unknown algorithm is a fact to record, not a crash
        return cert.signature_algorithm_oid.dotted_string
    return algorithm.name if algorithm is not None else None


def cert_info(cert: x509.Certificate) -> CertInfo:
    """The facts of ``cert``. Raises ValueError (or another of :data:`MALFORMED_ERRORS`) when its encoding or an
    extension is malformed; cryptography parses some parts only when they are read."""
    try:
        key_type, key_bits = _key(cert.public_key())
    except UnsupportedAlgorithm:  # a key type cryptography does not know: a fact, not a crash
        key_type, key_bits = cert.public_key_algorithm_oid.dotted_string, 0
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        common_names=_common_names(cert),
        dns_names=_dns_names(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_type=key_type,
        key_bits=key_bits,
        signature_hash=_signature_hash(cert),
        sha256=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        self_issued=cert.subject == cert.issuer,
        pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    )


def _key(key: object) -> tuple[str, int]:
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC", key.curve.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    return type(key).__name__, 0


def load_key_pair(context: ssl.SSLContext, cert: Path, key: Path | None) -> None:
    """Load a certificate chain and its private key into ``context``; raises ConfigError for an encrypted key
    (nobody is there to type a passphrase: OpenSSL would prompt on a terminal and fail obscurely without one),
    OSError or ssl.SSLError otherwise."""

    def no_passphrase() -> bytes:
        raise ConfigError(f"the private key {key or cert} is encrypted: give an unencrypted key (chmod 600)")

    context.load_cert_chain(cert, key, password=no_passphrase)


def load_trust_store(ca_file: Path | None) -> tuple[x509.Certificate, ...]:
    """The CA certificates to trust: ``ca_file``'s, or the system store's (blocking; call it in a thread)."""
    if ca_file is not None:
        return _load_pem_file(ca_file)
    paths = ssl.get_default_verify_paths()
    certs: list[x509.Certificate] = []
    if paths.cafile and Path(paths.cafile).is_file():
        certs.extend(_load_pem_file(Path(paths.cafile)))
    elif paths.capath and Path(paths.capath).is_dir():
        for entry in sorted(Path(paths.capath).iterdir()):
            if entry.is_file() and entry.suffix in (".pem", ".crt", ".0"):
                try:
                    certs.extend(x509.load_pem_x509_certificates(entry.read_bytes()))
                except ValueError:
                    continue
    if not certs:
        raise ConfigError("no system CA certificates found; give the CAs to trust with --ca-file")
    return tuple(certs)


def _load_pem_file(path: Path) -> tuple[x509.Certificate, ...]:
    try:
        with warnings.catch_warnings():
            # System bundles carry old roots with RFC 5280 blemishes (e.g. a zero serial number); they are
            # the operator's trust decision, not ours to warn about on every run.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            return tuple(x509.load_pem_x509_certificates(path.read_bytes()))
    except (OSError, *MALFORMED_ERRORS) as exc:
        raise ConfigError(f"cannot load CA certificates from {path}: {exc}") from None


def verify_chain(
    chain: Sequence[x509.Certificate], store: Sequence[x509.Certificate], *, at: datetime, client: bool = False
) -> TrustVerdict:
    """Does the chain as sent lead to a trusted CA? Judged apart from names and from validity dates.

    The name given to the verifier is one the leaf itself carries, and the time is moved inside the leaf's
    validity period: a wrong name and an expired certificate are separate findings, not "untrusted".
    ``client`` verifies a certificate a TLS client presents (extended key usage clientAuth, as OpenSSL checks
    a client certificate at the handshake) instead of a server's.
    """
    leaf, intermediates = chain[0], list(chain[1:])
    if any(_signature_hash(cert) in WEAK_HASHES for cert in chain if cert not in store):
        # cryptography refuses SHA-1/MD5 signatures outright, so trust cannot be judged beyond that.
        return TrustVerdict(Trust.WEAK_SIGNATURE, "the chain carries a SHA-1 or MD5 signature")
    if leaf.subject == leaf.issuer and leaf not in store and _signed_by(leaf, leaf):
        return TrustVerdict(Trust.SELF_SIGNED, "the certificate is signed by its own key")
    when = min(max(at, leaf.not_valid_before_utc), leaf.not_valid_after_utc)
    name = _own_name(leaf)
    try:
        policy = PolicyBuilder().store(Store(list(store))).time(when)
        if client:
            policy.build_client_verifier().verify(leaf, intermediates)
        else:
            policy.build_server_verifier(DNSName(name)).verify(leaf, intermediates)
    except VerificationError as exc:
        top = chain[-1]
        if not _is_ca(top) and top.issuer not in {cert.subject for cert in store}:
            # The chain stops at an end-entity certificate whose issuer nobody has: the server left out its
            # intermediate. (A chain that ends in a CA we do not know is untrusted instead.)
            return TrustVerdict(Trust.INCOMPLETE, f"no certificate for the issuer {top.issuer.rfc4514_string()}")
        return TrustVerdict(Trust.UNTRUSTED, str(exc))
    except ValueError as exc:  # a name the verifier cannot take (e.g. no usable DNS name in the leaf)
        return TrustVerdict(Trust.UNTRUSTED, str(exc))
    return TrustVerdict(Trust.TRUSTED)


def examine_chain(
    chain_der: Sequence[bytes], store: Sequence[x509.Certificate], *, at: datetime, client: bool = False
) -> tuple[tuple[CertInfo, ...], TrustVerdict]:
    """A chain as a server (or, with ``client``, a client: see :func:`verify_chain`) sent it (DER, leaf first):
    each certificate as facts, and the trust verdict.

    A certificate that cannot be read ends the chain there, with the verdict ``MALFORMED``: no verifier
    (the cloud's included) accepts a chain it cannot parse.
    """
    chain: list[x509.Certificate] = []
    infos: list[CertInfo] = []
    for position, der in enumerate(chain_der):
        try:
            with warnings.catch_warnings():
                # A negative or zero serial number draws a deprecation warning: the server's blemish, not ours.
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                cert = x509.load_der_x509_certificate(der)
            infos.append(cert_info(cert))
        except MALFORMED_ERRORS as exc:
            which = "the leaf" if position == 0 else f"certificate {position + 1} of the chain"
            return tuple(infos), TrustVerdict(Trust.MALFORMED, f"{which}: {exc}")
        chain.append(cert)
    return tuple(infos), verify_chain(chain, store, at=at, client=client)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def _own_name(leaf: x509.Certificate) -> str:
    """A concrete host name the leaf is for: its first DNS name, a wildcard's label filled in."""
    for name in _dns_names(leaf) or _common_names(leaf):
        return f"x{name[1:]}" if name.startswith("*.") else name
    return "invalid"
