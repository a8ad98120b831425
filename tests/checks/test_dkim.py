"""The dkim check: judgement of selector facts, and the lab's accepted domains and weak key."""

from __future__ import annotations

import asyncio
import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from checks import default_registry
from checks.dkim import CHECK, DkimFacts, Selector, assess, tenant_of
from diag.config import AcceptedDomain, Organization
from diag.lab.policy import DKIM_KEY_1024, DKIM_KEY_2048
from diag.lab.runner import Lab
from diag.model import Status
from diag.policy.dkim import KeyStatus, SelectorFacts, parse_key
from diag.runner import run_checks

from .conftest import codes_of

DOMAIN = "contoso.com"
M365 = "selector1-contoso-com._domainkey.contoso.onmicrosoft.com"


def key(text: str, *, selector: str = "selector1", target: str | None = M365) -> SelectorFacts:
    return SelectorFacts(DOMAIN, selector, f"{selector}._domainkey.{DOMAIN}", target, KeyStatus.FOUND, parse_key(text),
                         (text,))  # fmt: skip


def judge(*selectors: Selector, tenant: str | None = "contoso") -> list[tuple[str, str]]:
    findings = assess(DkimFacts(DOMAIN, tenant, selectors))
    assert all(f.severity is CHECK.codes[f.code] and f.subject.endswith(f"._domainkey.{DOMAIN}") for f in findings)
    return [(f.code, f.message) for f in findings]


GOOD = f"v=DKIM1; k=rsa; p={DKIM_KEY_2048}"


def test_microsoft_365s_cname_to_a_2048_bit_key_is_ok() -> None:
    ((code, message),) = judge(Selector(key(GOOD), m365=True))
    assert code == "DKIM_OK" and "2048 bits" in message and M365 in message


@pytest.mark.parametrize(
    ("target", "tenant", "code", "words"),
    [
        (None, "contoso", "DKIM_M365_CNAME_MISSING", "not a CNAME"),
        ("dkim.example.net", "contoso", "DKIM_M365_CNAME_WRONG", "not one of Microsoft 365's"),
        ("selector1-fabrikam-com._domainkey.contoso.onmicrosoft.com", "contoso", "DKIM_M365_CNAME_WRONG",
         "another domain"),
        (M365.replace(".contoso.", ".northwind."), "contoso", "DKIM_M365_CNAME_WRONG", "tenant northwind"),
    ],
)  # fmt: skip
def test_microsoft_365s_cname_problems(target: str | None, tenant: str, code: str, words: str) -> None:
    ((found, message),) = judge(Selector(key(GOOD, target=target), m365=True), tenant=tenant)
    assert found == code and words in message


@pytest.mark.parametrize(
    ("facts", "codes", "words"),
    [
        (key(f"v=DKIM1; k=rsa; p={DKIM_KEY_1024}", target=None), ["DKIM_KEY_SHORT"], "1024 bits"),
        (key("v=DKIM1; k=rsa; p=", target=None), ["DKIM_KEY_REVOKED"], "revoked"),
        (key("v=DKIM1; k=rsa; p=bm90IGEga2V5", target=None), ["DKIM_KEY_INVALID"], "bad-key"),
        (key(f"v=DKIM1; t=y; k=rsa; p={DKIM_KEY_2048}", target=None), ["DKIM_OK", "DKIM_TESTING"], "t=y"),
        (SelectorFacts(DOMAIN, "s1", f"s1._domainkey.{DOMAIN}", "k.example.net", KeyStatus.NXDOMAIN),
         ["DKIM_KEY_MISSING"], "k.example.net, which has none"),
        (SelectorFacts(DOMAIN, "s1", f"s1._domainkey.{DOMAIN}", None, KeyStatus.MULTIPLE, texts=("a", "b")),
         ["DKIM_MULTIPLE"], "2 key records"),
        (SelectorFacts(DOMAIN, "s1", f"s1._domainkey.{DOMAIN}", None, KeyStatus.DNS_ERROR, detail="SERVFAIL"),
         ["DKIM_DNS_ERROR"], "SERVFAIL"),
    ],
)  # fmt: skip
def test_configured_selector_problems(facts: SelectorFacts, codes: list[str], words: str) -> None:
    found = judge(Selector(facts))
    assert [code for code, _ in found] == codes and words in found[-1][1]


def test_a_key_below_1024_bits_is_weak() -> None:
    # cryptography generates no such key; a public key needs only a 512-bit modulus
    small = rsa.RSAPublicNumbers(65537, (1 << 511) | 12345).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ((code, message),) = judge(Selector(key(f"v=DKIM1; p={base64.b64encode(small).decode()}", target=None)))
    assert code == "DKIM_KEY_WEAK" and "512 bits" in message


def test_the_tenant_is_the_initial_domains_prefix() -> None:
    org = Organization(accepted_domains=(AcceptedDomain("contoso.com"), AcceptedDomain("contoso.onmicrosoft.com")))
    assert tenant_of(org) == "contoso" and tenant_of(Organization()) is None


@pytest.mark.parametrize(
    ("domain", "expected"),
    [("contoso.com", ["DKIM_OK", "DKIM_OK"]), ("fabrikam.com", ["DKIM_OK", "DKIM_OK"])],
)
def test_lab_accepted_domains(domain_report, domain: str, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert codes_of(domain_report(domain), "dkim") == expected


def test_lab_initial_and_foreign_domains_are_not_applicable(domain_report) -> None:  # type: ignore[no-untyped-def]
    assert domain_report("contoso.onmicrosoft.com").result("dkim").status is Status.NOT_APPLICABLE
    assert domain_report("expired.example").result("dkim").status is Status.NOT_APPLICABLE


def test_lab_configured_selector_with_a_1024_bit_key(lab: Lab) -> None:
    org = Organization(accepted_domains=(AcceptedDomain("dkimweak.example"),), dkim_selectors=("s1024", "gone"))
    registry = default_registry().select(["dkim"])
    report = asyncio.run(run_checks(["dkimweak.example"], registry, lab.run_options(organization=org, timeout=1.0)))
    (domain,) = report.domains
    assert codes_of(domain, "dkim") == ["DKIM_KEY_SHORT", "DKIM_KEY_MISSING"]
