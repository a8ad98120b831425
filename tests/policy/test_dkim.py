"""DKIM key records (RFC 6376 §3.6.1, RFC 8301 key sizes) and Microsoft 365's selector CNAMEs."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from diag.policy.dkim import (
    DkimIssueKind,
    KeyStatus,
    M365Form,
    classify_m365_target,
    lookup_selector,
    m365_targets,
    parse_key,
)
from diag.policy.lookup import ReplyStatus

from .conftest import Zone


def rsa_p(bits: int, *, pkcs1: bool = False) -> str:
    # Keys below 1024 bits cannot be generated any more; a public key is only numbers, so make one.
    key = (
        rsa.RSAPublicNumbers(65537, 2 ** (bits - 1) + 111).public_key()
        if bits < 1024
        else rsa.generate_private_key(65537, bits).public_key()
    )
    form = serialization.PublicFormat.PKCS1 if pkcs1 else serialization.PublicFormat.SubjectPublicKeyInfo
    return base64.b64encode(key.public_bytes(serialization.Encoding.DER, form)).decode()


@pytest.fixture(scope="module")
def p2048() -> str:
    return rsa_p(2048)


def kinds(text: str) -> list[DkimIssueKind]:
    return [i.kind for i in parse_key(text).issues]


def test_a_2048_bit_rsa_key_is_read_with_its_size(p2048: str) -> None:
    key = parse_key(f"v=DKIM1; k=rsa; p={p2048}")
    assert (key.key_type, key.bits, key.revoked, key.testing) == ("rsa", 2048, False, False)
    assert key.issues == () and key.usable


def test_key_sizes_follow_rfc_8301() -> None:
    assert kinds(f"v=DKIM1; p={rsa_p(1024)}") == [DkimIssueKind.SHORT_KEY]
    weak = parse_key(f"v=DKIM1; p={rsa_p(512)}")
    assert (weak.bits, [i.kind for i in weak.issues], weak.usable) == (512, [DkimIssueKind.WEAK_KEY], False)


def test_a_bare_pkcs1_key_and_white_space_inside_p_are_accepted() -> None:
    p = rsa_p(1024, pkcs1=True)
    assert parse_key(f"p={p[:40]} {p[40:]}").bits == 1024


def test_an_ed25519_key_is_256_bits() -> None:
    raw = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert parse_key(f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}").bits == 256


def test_empty_p_is_a_revoked_key_and_t_flags_are_read(p2048: str) -> None:
    revoked = parse_key("v=DKIM1; p=")
    assert (revoked.revoked, revoked.usable, revoked.issues) == (True, False, ())
    testing = parse_key(f"v=DKIM1; t=y:s; p={p2048}")
    assert (testing.testing, testing.strict, testing.usable) == (True, True, True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v=DKIM1; p=not*base64", [DkimIssueKind.BAD_KEY]),
        ("v=DKIM1; p=AAAA", [DkimIssueKind.BAD_KEY]),
        ("v=DKIM1; k=ed25519; p=AAAA", [DkimIssueKind.BAD_KEY]),
        ("v=DKIM1; k=dsa; p=AAAA", [DkimIssueKind.UNKNOWN_KEY_TYPE]),
        ("v=DKIM1; k=rsa", [DkimIssueKind.BAD_KEY]),
        ("v=DKIM2; p=", [DkimIssueKind.VERSION]),
        ("p=; v=DKIM1", [DkimIssueKind.VERSION]),
        ("v=DKIM1; s=other; p=", [DkimIssueKind.NOT_EMAIL]),
        ("v=DKIM1; h=sha1; p=", [DkimIssueKind.SHA1_ONLY]),
        ("v=DKIM1; p=; p=", [DkimIssueKind.SYNTAX]),
    ],
)
def test_problems_are_typed(text: str, expected: list[DkimIssueKind]) -> None:
    assert kinds(text) == expected


def test_tag_names_are_case_sensitive() -> None:
    assert kinds("v=DKIM1; P=abc") == [DkimIssueKind.BAD_KEY]


def test_a_selector_behind_a_cname_is_followed_and_its_target_kept(zone: Zone, p2048: str) -> None:
    target = "selector1-contoso-com._domainkey.contoso.onmicrosoft.com"
    zone.add("selector1._domainkey.contoso.com", "CNAME", target)
    zone.add("selector1._domainkey.contoso.com", "TXT", f"v=DKIM1; k=rsa; p={p2048}")
    facts = zone.run(lookup_selector("Contoso.com.", "Selector1"))
    assert (facts.name, facts.cname_target, facts.status) == (
        "selector1._domainkey.contoso.com", target, KeyStatus.FOUND,
    )  # fmt: skip
    assert facts.key is not None and facts.key.bits == 2048


@pytest.mark.parametrize(
    ("setup", "status"),
    [
        (lambda z: None, KeyStatus.NXDOMAIN),
        (lambda z: z.add("s._domainkey.contoso.com", "TXT", "some verification string"), KeyStatus.NO_KEY),
        (lambda z: z.add("s._domainkey.contoso.com", "TXT", "v=DKIM1; p=", "v=DKIM1; p="), KeyStatus.MULTIPLE),
        (lambda z: z.fail("s._domainkey.contoso.com", "TXT", ReplyStatus.TIMEOUT), KeyStatus.DNS_ERROR),
    ],
)
def test_a_selector_without_exactly_one_key(zone: Zone, setup, status: KeyStatus) -> None:  # type: ignore[no-untyped-def]
    setup(zone)
    facts = zone.run(lookup_selector("contoso.com", "s"))
    assert (facts.status, facts.key, facts.cname_target) == (status, None, None)


def test_the_documented_microsoft_365_targets() -> None:
    assert m365_targets("sales.contoso.com", "contoso.onmicrosoft.com") == (
        "selector1-sales-contoso-com._domainkey.contoso.onmicrosoft.com",
        "selector2-sales-contoso-com._domainkey.contoso.onmicrosoft.com",
    )


@pytest.mark.parametrize(
    ("selector", "target", "form", "tenant", "for_domain", "partition"),
    [
        ("selector1", "selector1-contoso-com._domainkey.contoso.onmicrosoft.com.", M365Form.ONMICROSOFT,
         "contoso", True, None),
        ("selector2", "selector2-contoso-com._domainkey.cohovineyardandwinery.r-v1.dkim.mail.microsoft",
         M365Form.DKIM_MAIL_MICROSOFT, "cohovineyardandwinery", True, "r"),
        ("selector1", "selector1-fabrikam-com._domainkey.contoso.onmicrosoft.com", M365Form.ONMICROSOFT,
         "contoso", False, None),
        ("selector1", "selector2-contoso-com._domainkey.contoso.onmicrosoft.com", M365Form.ONMICROSOFT,
         "contoso", False, None),
        ("selector1", "s1.dkim.example.net", M365Form.OTHER, None, False, None),
    ],
)  # fmt: skip
def test_microsoft_365_cname_targets_in_both_documented_forms(
    selector: str, target: str, form: M365Form, tenant: str | None, for_domain: bool, partition: str | None
) -> None:
    read = classify_m365_target("contoso.com", selector, target)
    assert (read.form, read.tenant, read.for_domain, read.partition) == (form, tenant, for_domain, partition)
