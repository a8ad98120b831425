"""Organizational domains from the bundled Public Suffix List (RFC 7489 §3.2), without the network."""

from __future__ import annotations

import pytest

from diag.policy.orgdomain import OrgDomains


@pytest.fixture(scope="module")
def psl() -> OrgDomains:
    return OrgDomains()


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("contoso.com", "contoso.com"),
        ("Mail.Contoso.com.", "contoso.com"),
        ("a.b.contoso.co.uk", "contoso.co.uk"),
        ("www.contoso.github.io", "contoso.github.io"),  # the private section counts too (RFC 7489 §3.2)
        ("co.uk", "co.uk"),
        ("com", "com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ],
)
def test_the_organizational_domain_is_the_public_suffix_plus_one_label(
    psl: OrgDomains, domain: str, org: str
) -> None:
    assert psl.organizational(domain) == org


def test_the_snapshot_is_named_and_suffixes_are_recognised(psl: OrgDomains) -> None:
    assert psl.snapshot[:1].isdigit()
    assert psl.is_public_suffix("co.uk") and not psl.is_public_suffix("contoso.co.uk")
