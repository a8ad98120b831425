"""DANE for SMTP (RFC 7672, RFC 7671, RFC 6698): TLSA records parsed and matched against a presented chain.

:func:`parse_tlsa` reads one TLSA record (``3 1 1 <hex>``); :func:`match_chain` says, for each record, whether
the chain a mail host presented satisfies it. What an SMTP client may use (RFC 7672 §3.1):

* usage 3, DANE-EE: the leaf certificate (selector 0) or its public key (selector 1) matches; names and
  validity dates are not checked (RFC 7672 §3.1.1, RFC 7671 §5.1);
* usage 2, DANE-TA: a certificate of the presented chain other than the leaf matches (RFC 7671 §5.2.2: the
  trust anchor must be in the chain for the client to use it), the chain from that certificate down to the
  leaf verifies, the leaf is valid now, and it names the MX host or, for an alias, its CNAME-expanded name
  (RFC 7672 §3.2.2, §3.2.3);
* usages 0 and 1 (PKIX-TA, PKIX-EE) are unusable for SMTP (RFC 7672 §3.1.3), and so are unknown usages,
  selectors and matching types, and a digest of the wrong length (RFC 7671 §4.1).

Matching types: 0 the full data, 1 SHA-256, 2 SHA-512 (RFC 6698 §2.1.3). A host is authenticated when any
usable record matches; a TLSA set without a usable record is as if there were none (RFC 7672 §2.2).

The matching imports cryptography when it first runs, not with this module: the dane check's run imports it in a
thread meanwhile (``lazy_imports``), off the way to the run's first packet.
"""

from __future__ import annotations

import enum
import hashlib
import warnings
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from diag.frozen import frozen
from diag.net.tls_facts import Trust, name_matches

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "Outcome",
    "TlsaMatch",
    "TlsaRecord",
    "Usage",
    "authenticated",
    "match_chain",
    "parse_tlsa",
    "tlsa_name",
]

_DIGEST_SIZES = {1: 32, 2: 64}  # matching type -> digest length in octets (RFC 6698 §2.1.3)


class Usage(enum.IntEnum):
    """RFC 6698 §2.1.1 certificate usages, named as RFC 7218 §2.1 does."""

    PKIX_TA = 0
    PKIX_EE = 1
    DANE_TA = 2
    DANE_EE = 3


class Outcome(enum.StrEnum):
    """What one TLSA record made of the presented chain."""

    MATCHED = "matched"  # the record authenticates the host
    NO_MATCH = "no-match"  # usable, but no certificate (or key) of the chain matches
    CHAIN_INVALID = "chain-invalid"  # DANE-TA: the anchor matched, the chain below it does not verify
    EXPIRED = "expired"  # DANE-TA: the leaf is outside its validity period
    NAME_MISMATCH = "name-mismatch"  # DANE-TA: the leaf does not name the MX host
    UNUSABLE = "unusable"  # not for SMTP (usage 0/1), unknown parameters, or a malformed record


@frozen
class TlsaRecord:
    """One TLSA record (RFC 6698 §2.1).

    Attributes:
        usage, selector, matching_type: the three parameters as published.
        data: the certificate association data.
        text: the record as published (presentation format), for messages.
    """

    usage: int
    selector: int
    matching_type: int
    data: bytes
    text: str

    @property
    def problem(self) -> str:
        """Why an SMTP client cannot use this record, or "" when it can."""
        if self.usage in (Usage.PKIX_TA, Usage.PKIX_EE):
            return f"usage {self.usage} ({Usage(self.usage).name.replace('_', '-')}) is not for SMTP (RFC 7672 §3.1.3)"
        if self.usage not in (Usage.DANE_TA, Usage.DANE_EE):
            return f"unknown usage {self.usage}"
        if self.selector not in (0, 1):
            return f"unknown selector {self.selector}"
        if self.matching_type not in (0, 1, 2):
            return f"unknown matching type {self.matching_type}"
        size = _DIGEST_SIZES.get(self.matching_type)
        if size is not None and len(self.data) != size:
            return f"matching type {self.matching_type} needs {size} octets of data, the record has {len(self.data)}"
        if not self.data:
            return "no association data"
        return ""


def tlsa_name(host: str, port: int = 25) -> str:
    """Where the TLSA records of ``host``'s SMTP service are published (RFC 6698 §3, RFC 7672 §2.2.3)."""
    return f"_{port}._tcp.{host.rstrip('.').lower()}"


def parse_tlsa(text: str) -> TlsaRecord:
    """One TLSA record from its presentation format (``usage selector type hex``, hex may hold spaces);
    raises ValueError when it is not one."""
    fields = text.split()
    if len(fields) < 4:
        raise ValueError(f"{text!r} is not a TLSA record (usage, selector, matching type, data)")
    try:
        usage, selector, matching_type = (int(field) for field in fields[:3])
        data = bytes.fromhex("".join(fields[3:]))
    except ValueError:
        raise ValueError(f"{text!r} is not a TLSA record (numbers, then hexadecimal data)") from None
    if not all(0 <= value <= 255 for value in (usage, selector, matching_type)):
        raise ValueError(f"{text!r}: the parameters are octets (0-255)")
    return TlsaRecord(usage, selector, matching_type, data, text)


@frozen
class TlsaMatch:
    """One record judged against one presented chain.

    Attributes:
        record: the TLSA record.
        outcome: what it made of the chain.
        position: the chain position (0 = leaf) of the certificate it matched, None when none did.
        detail: why, in a few words.
    """

    record: TlsaRecord
    outcome: Outcome
    position: int | None = None
    detail: str = ""


def _selected(cert: x509.Certificate, selector: int) -> bytes:
    from cryptography.hazmat.primitives import serialization

    if selector == 0:
        return cert.public_bytes(serialization.Encoding.DER)
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _associated(cert: x509.Certificate, record: TlsaRecord) -> bool:
    data = _selected(cert, record.selector)
    if record.matching_type == 1:
        data = hashlib.sha256(data).digest()
    elif record.matching_type == 2:
        data = hashlib.sha512(data).digest()
    return data == record.data


def _load(chain_der: Sequence[bytes]) -> list[x509.Certificate]:
    """The readable prefix of the chain (a certificate that cannot be parsed ends it, as in diag.net.tls)."""
    from cryptography import x509
    from cryptography.utils import CryptographyDeprecationWarning

    from diag.net.tls import MALFORMED_ERRORS

    certs: list[x509.Certificate] = []
    for der in chain_der:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                certs.append(x509.load_der_x509_certificate(der))
        except MALFORMED_ERRORS:
            break
    return certs


def match_chain(
    records: Sequence[TlsaRecord], chain_der: Sequence[bytes], host: str, *, at: datetime, names: Sequence[str] = ()
) -> tuple[TlsaMatch, ...]:
    """Judge each of ``records`` against the chain ``host`` presented (DER, leaf first), at time ``at``.

    ``names`` are more names a DANE-TA leaf may carry instead of ``host``: the CNAME-expanded name when ``host``
    is an alias whose chain is secure (RFC 7672 §3.2.2 makes both reference identifiers).
    """
    chain = _load(chain_der)
    reference = tuple(dict.fromkeys((host, *names)))
    return tuple(_match(record, chain, reference, at) for record in records)


def _match(record: TlsaRecord, chain: list[x509.Certificate], names: tuple[str, ...], at: datetime) -> TlsaMatch:
    problem = record.problem
    if problem:
        return TlsaMatch(record, Outcome.UNUSABLE, detail=problem)
    if not chain:
        return TlsaMatch(record, Outcome.NO_MATCH, detail="the server presented no readable certificate")
    if record.usage == Usage.DANE_EE:
        if _associated(chain[0], record):
            return TlsaMatch(record, Outcome.MATCHED, 0)
        return TlsaMatch(record, Outcome.NO_MATCH, detail="the leaf certificate does not match")
    for position in range(1, len(chain)):
        if _associated(chain[position], record):
            return _trust_anchored(record, chain[: position + 1], names, at)
    return TlsaMatch(record, Outcome.NO_MATCH, detail="no CA certificate of the presented chain matches")


def _trust_anchored(
    record: TlsaRecord, chain: list[x509.Certificate], names: tuple[str, ...], at: datetime
) -> TlsaMatch:
    """DANE-TA: the matched certificate, last in ``chain``, is the trust anchor of the rest."""
    from diag.net.tls import MALFORMED_ERRORS, cert_info, verify_chain

    position = len(chain) - 1
    verdict = verify_chain(chain[:-1], [chain[-1]], at=at)
    if verdict.trust is not Trust.TRUSTED:
        return TlsaMatch(record, Outcome.CHAIN_INVALID, position, verdict.detail or verdict.trust.value)
    try:
        leaf = cert_info(chain[0])
    except MALFORMED_ERRORS as exc:
        return TlsaMatch(record, Outcome.CHAIN_INVALID, position, f"the leaf: {exc}")
    if not leaf.not_before <= at <= leaf.not_after:
        return TlsaMatch(record, Outcome.EXPIRED, position, f"the leaf is valid {leaf.not_before} to {leaf.not_after}")
    if not any(name_matches(name, leaf) for name in names):
        return TlsaMatch(record, Outcome.NAME_MISMATCH, position, f"the leaf does not name {' or '.join(names)}")
    return TlsaMatch(record, Outcome.MATCHED, position)


def authenticated(matches: Sequence[TlsaMatch]) -> bool:
    """Does any usable record authenticate the host?"""
    return any(match.outcome is Outcome.MATCHED for match in matches)
