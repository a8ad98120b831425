"""Certificates as facts, without cryptography: what a chain verification concluded, one certificate as a person
reads it, and whether it names a host. :mod:`diag.net.tls` makes these from what a server sent, with cryptography;
the checks that judge them import only this module, so a run does not load cryptography before its first packet
(it imports it in a thread meanwhile: ``lazy_imports`` of :class:`diag.context.RunContext`).
"""

from __future__ import annotations

import enum
from datetime import datetime

from diag.frozen import frozen

__all__ = ["WEAK_HASHES", "CertInfo", "Trust", "TrustVerdict", "name_matches"]

# Signature hash algorithms no verifier accepts any more.
WEAK_HASHES = ("sha1", "md5")


class Trust(enum.StrEnum):
    """What chain verification concluded."""

    TRUSTED = "trusted"
    SELF_SIGNED = "self-signed"
    INCOMPLETE = "incomplete"
    UNTRUSTED = "untrusted"
    WEAK_SIGNATURE = "weak-signature"
    MALFORMED = "malformed"


@frozen
class TrustVerdict:
    """The chain verification's conclusion and, when it failed, the verifier's words."""

    trust: Trust
    detail: str = ""


@frozen
class CertInfo:
    """One certificate, as a person reads it.

    Attributes:
        subject, issuer: distinguished names (RFC 4514 text).
        common_names: the subject's CN values.
        dns_names: the subjectAltName DNS names.
        not_before, not_after: the validity period (UTC).
        key_type: ``RSA``, ``EC``, ``Ed25519``, ``Ed448`` or ``DSA``.
        key_bits: the key size in bits.
        signature_hash: the signature's hash algorithm (``sha256``), or None where the algorithm has none.
        sha256: the SHA-256 fingerprint of the DER encoding, hex.
        self_issued: subject and issuer are the same name.
        pem: the certificate itself.
    """

    subject: str
    issuer: str
    common_names: tuple[str, ...]
    dns_names: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    key_type: str
    key_bits: int
    signature_hash: str | None
    sha256: str
    self_issued: bool
    pem: str

    @property
    def weak_signature(self) -> bool:
        return self.signature_hash in WEAK_HASHES


def name_matches(host: str, info: CertInfo) -> bool:
    """RFC 6125 §6.4: does the certificate name ``host``?

    DNS names from subjectAltName; the subject CN only when there are none (§6.4.4); a wildcard only as the
    whole left-most label, standing for exactly one label, never directly under a top-level domain (§6.4.3).
    Names compare without their trailing dot and without regard to case (security-cases.md PC-11).
    """
    wanted = host.rstrip(".").lower()
    for pattern in info.dns_names or info.common_names:
        candidate = pattern.rstrip(".").lower()
        if candidate == wanted:
            return True
        if candidate.startswith("*.") and candidate.count(".") >= 2:
            first, _, rest = wanted.partition(".")
            if first and rest == candidate[2:]:
                return True
    return False
