"""DANE TLSA records matched against chains from the lab's test PKI (real certificates, no network)."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from diag.lab.pki import CertKind, TestPKI
from diag.policy.dane import Outcome, TlsaRecord, Usage, authenticated, match_chain, parse_tlsa, tlsa_name

HOST = "mx.contoso.com"


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.create()


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def record(usage: int, selector: int, matching: int, data: bytes) -> TlsaRecord:
    return parse_tlsa(f"{usage} {selector} {matching} {data.hex()}")


def chain(pki: TestPKI, names: tuple[str, ...] = (HOST,), kind: CertKind = CertKind.GOOD) -> tuple[bytes, ...]:
    return tuple(der(cert) for cert in pki.issue(names, kind=kind).chain)


def test_tlsa_name_is_port_and_protocol_under_the_host() -> None:
    assert tlsa_name("MX.Contoso.com.") == "_25._tcp.mx.contoso.com"


def test_parse_reads_the_parameters_and_hex_with_spaces() -> None:
    parsed = parse_tlsa("3 1 1 ABCD ef01")
    assert (parsed.usage, parsed.selector, parsed.matching_type, parsed.data) == (3, 1, 1, bytes.fromhex("abcdef01"))


@pytest.mark.parametrize("text", ["3 1 1", "3 x 1 ab", "3 1 1 zz", "256 1 1 ab"])
def test_parse_refuses_what_is_not_a_tlsa_record(text: str) -> None:
    with pytest.raises(ValueError):
        parse_tlsa(text)


@pytest.mark.parametrize(
    ("selector", "matching", "pick"),
    [
        (0, 0, lambda c: der(c)),
        (0, 1, lambda c: hashlib.sha256(der(c)).digest()),
        (0, 2, lambda c: hashlib.sha512(der(c)).digest()),
        (1, 0, lambda c: spki(c)),
        (1, 1, lambda c: hashlib.sha256(spki(c)).digest()),
        (1, 2, lambda c: hashlib.sha512(spki(c)).digest()),
    ],
)
def test_dane_ee_matches_the_leaf_by_every_selector_and_matching_type(pki: TestPKI, selector, matching, pick) -> None:
    issued = pki.issue([HOST])
    presented = tuple(der(c) for c in issued.chain)
    (match,) = match_chain([record(3, selector, matching, pick(issued.certificate))], presented, HOST, at=pki.now)
    assert match.outcome is Outcome.MATCHED and match.position == 0
    assert authenticated([match])


def test_dane_ee_ignores_names_and_expiry(pki: TestPKI) -> None:
    # RFC 7672 §3.1.1: an expired certificate for another name still matches a 3 1 1 record.
    issued = pki.issue(["other.example"], kind=CertKind.EXPIRED)
    tlsa = record(3, 1, 1, hashlib.sha256(spki(issued.certificate)).digest())
    (match,) = match_chain([tlsa], tuple(der(c) for c in issued.chain), HOST, at=pki.now)
    assert match.outcome is Outcome.MATCHED


def test_dane_ee_with_another_key_is_no_match(pki: TestPKI) -> None:
    other = pki.issue([HOST]).certificate
    (match,) = match_chain([record(3, 1, 1, hashlib.sha256(spki(other)).digest())], chain(pki), HOST, at=pki.now)
    assert match.outcome is Outcome.NO_MATCH and match.position is None
    assert not authenticated([match])


def test_dane_ta_matches_the_intermediate_and_checks_the_chain_below_it(pki: TestPKI) -> None:
    tlsa = record(2, 0, 1, hashlib.sha256(der(pki.intermediate)).digest())
    (match,) = match_chain([tlsa], chain(pki), HOST, at=pki.now)
    assert match.outcome is Outcome.MATCHED and match.position == 1


def test_dane_ta_wants_the_host_name_in_the_leaf(pki: TestPKI) -> None:
    tlsa = record(2, 1, 1, hashlib.sha256(spki(pki.intermediate)).digest())
    (match,) = match_chain([tlsa], chain(pki, ("mail.unrelated.example",)), HOST, at=pki.now)
    assert match.outcome is Outcome.NAME_MISMATCH


def test_dane_ta_takes_the_cname_expanded_name_as_a_reference_identifier(pki: TestPKI) -> None:
    # Given HOST is an alias (secure chain) for a host whose leaf names only the expanded name
    tlsa = record(2, 1, 1, hashlib.sha256(spki(pki.intermediate)).digest())
    presented = chain(pki, ("host.hosting.example",))
    # Then the expanded name is a reference identifier too (RFC 7672 §3.2.2), and without it the leaf names neither
    (match,) = match_chain([tlsa], presented, HOST, at=pki.now, names=("host.hosting.example",))
    assert match.outcome is Outcome.MATCHED
    (match,) = match_chain([tlsa], presented, HOST, at=pki.now, names=("other.hosting.example",))
    assert (match.outcome, match.detail) == (Outcome.NAME_MISMATCH,
                                             f"the leaf does not name {HOST} or other.hosting.example")


def test_dane_ta_wants_a_leaf_valid_now(pki: TestPKI) -> None:
    tlsa = record(2, 1, 1, hashlib.sha256(spki(pki.intermediate)).digest())
    (match,) = match_chain([tlsa], chain(pki, kind=CertKind.EXPIRED), HOST, at=pki.now)
    assert match.outcome is Outcome.EXPIRED


def test_dane_ta_whose_anchor_did_not_sign_the_leaf_is_an_invalid_chain(pki: TestPKI) -> None:
    # The leaf comes from another PKI; the presented "intermediate" is this one's: it matches, but signed nothing.
    stranger = TestPKI.create(org="another CA")
    presented = (der(stranger.issue([HOST]).certificate), der(pki.intermediate))
    tlsa = record(2, 0, 1, hashlib.sha256(der(pki.intermediate)).digest())
    (match,) = match_chain([tlsa], presented, HOST, at=pki.now)
    assert match.outcome is Outcome.CHAIN_INVALID and match.position == 1


def test_dane_ta_must_be_in_the_presented_chain(pki: TestPKI) -> None:
    tlsa = record(2, 0, 1, hashlib.sha256(der(pki.root)).digest())  # the root is not sent by the server
    (match,) = match_chain([tlsa], chain(pki), HOST, at=pki.now)
    assert match.outcome is Outcome.NO_MATCH


def test_dane_ta_never_matches_the_leaf_itself(pki: TestPKI) -> None:
    issued = pki.issue([HOST])
    tlsa = record(2, 0, 0, der(issued.certificate))
    (match,) = match_chain([tlsa], tuple(der(c) for c in issued.chain), HOST, at=pki.now)
    assert match.outcome is Outcome.NO_MATCH


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0 0 1 " + "ab" * 32, "not for SMTP"),
        ("1 1 1 " + "ab" * 32, "not for SMTP"),
        ("4 1 1 " + "ab" * 32, "unknown usage"),
        ("3 2 1 " + "ab" * 32, "unknown selector"),
        ("3 1 3 " + "ab" * 32, "unknown matching type"),
        ("3 1 1 " + "ab" * 31, "needs 32 octets"),
        ("3 1 2 " + "ab" * 32, "needs 64 octets"),
    ],
)
def test_records_an_smtp_client_cannot_use(pki: TestPKI, text: str, why: str) -> None:
    (match,) = match_chain([parse_tlsa(text)], chain(pki), HOST, at=pki.now)
    assert match.outcome is Outcome.UNUSABLE and why in match.detail
    assert parse_tlsa(text).problem


def test_pkix_usages_are_unusable_even_when_they_match(pki: TestPKI) -> None:
    issued = pki.issue([HOST])
    tlsa = record(Usage.PKIX_EE, 1, 1, hashlib.sha256(spki(issued.certificate)).digest())
    (match,) = match_chain([tlsa], tuple(der(c) for c in issued.chain), HOST, at=pki.now)
    assert match.outcome is Outcome.UNUSABLE


def test_one_matching_record_among_several_authenticates(pki: TestPKI) -> None:
    issued = pki.issue([HOST])
    presented = tuple(der(c) for c in issued.chain)
    stale = record(3, 1, 1, b"\0" * 32)
    fresh = record(3, 1, 1, hashlib.sha256(spki(issued.certificate)).digest())
    matches = match_chain([stale, fresh], presented, HOST, at=pki.now + timedelta(days=1))
    assert [m.outcome for m in matches] == [Outcome.NO_MATCH, Outcome.MATCHED]
    assert authenticated(matches)


def test_an_unreadable_chain_matches_nothing(pki: TestPKI) -> None:
    (match,) = match_chain([record(3, 1, 1, b"\0" * 32)], (b"not a certificate",), HOST, at=pki.now)
    assert match.outcome is Outcome.NO_MATCH and "no readable certificate" in match.detail
