"""Writing the organization as TOML (``diag/config/dump.py``); the round trips are in test_load and test_exchange."""

from __future__ import annotations

from diag.config import AcceptedDomain, Organization, dump_toml


def test_dump_toml_writes_only_what_matters() -> None:
    text = dump_toml(Organization(accepted_domains=(AcceptedDomain("contoso.com"),)))

    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert body == ["[[AcceptedDomain]]", 'DomainName = "contoso.com"', 'DomainType = "Authoritative"']
