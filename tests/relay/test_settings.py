"""The relay's settings: the [Relay] table and the options of ``diag relay``, checked where they meet."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from diag.config import AcceptedDomain, Organization, RelayConfig, RelayRole
from diag.errors import ConfigError
from diag.relay.settings import resolve_settings

ORG = Organization(accepted_domains=(AcceptedDomain("contoso.com"),))


def test_the_host_name_option_names_the_spool_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))

    settings = resolve_settings(ORG, hostname="Relay.Contoso.COM.")

    assert settings.hostname == "relay.contoso.com"
    assert settings.spool == tmp_path / "diag" / "relay" / "relay.contoso.com" / "spool"


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("/abs", "--hostname: '/abs' is not a domain name (no URLs or paths)"),
        ("../../etc", "--hostname: '../../etc' is not a domain name (no URLs or paths)"),
        ("..", "--hostname: '..' is not a valid domain name: label '' must be 1-63 letters, digits or hyphens, "),
        ("", "--hostname: an empty domain name was given"),
    ],
)
def test_a_host_name_option_that_is_not_a_domain_is_refused(hostname: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_settings(ORG, hostname=hostname)

    assert str(caught.value).startswith(expected), caught.value


def test_a_listen_port_in_other_digits_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^listen address '127\.0\.0\.1:٣': port '٣' is not a number from 1 to "):
        resolve_settings(ORG, listen=["127.0.0.1:٣"])


def test_a_resolver_port_in_other_digits_is_refused() -> None:
    org = Organization(accepted_domains=ORG.accepted_domains, relay=RelayConfig(resolver=("192.0.2.53:²",)))

    with pytest.raises(ConfigError, match=r"^\[Relay\] Resolver: port '²' is not a number from 1 to 65535$"):
        resolve_settings(org)


@pytest.mark.parametrize(
    ("in_table", "option", "allowed"),
    [(False, False, False), (False, True, True), (True, False, True), (True, True, True)],
)
def test_allow_private_comes_from_the_table_or_the_option(in_table: bool, option: bool, allowed: bool) -> None:
    """``diag relay --allow-private`` permits what ``AllowPrivate = true`` permits; neither can forbid the other."""
    org = Organization(accepted_domains=ORG.accepted_domains, relay=RelayConfig(allow_private=in_table))

    assert resolve_settings(org, allow_private=option).allow_private is allowed


INTERNET = RelayConfig(role=RelayRole.INTERNET, mailboxes=("sun@tailspintoys.com",))


def test_the_reflect_option_replaces_the_tables_list() -> None:
    org = Organization(
        accepted_domains=ORG.accepted_domains,
        relay=replace(INTERNET, reflect=("echo@probe.example",), reflect_limit=7),
    )

    assert resolve_settings(org).reflect == ("echo@probe.example",)
    settings = resolve_settings(org, reflect=["Echo2@Probe.Example"])
    assert settings.reflect == ("echo2@probe.example",)
    assert settings.reflect_limit == 7
    assert settings.is_reflector("ECHO2@probe.example") and not settings.is_local("echo2@probe.example")
    # Unknown users of the reflector's domain are refused as unknown, not as relaying.
    assert "probe.example" in settings.local_domains


@pytest.mark.parametrize("role", [RelayRole.CLOUD, RelayRole.ON_PREMISES])
def test_only_the_internet_role_reflects(role: RelayRole) -> None:
    org = Organization(accepted_domains=ORG.accepted_domains, relay=replace(INTERNET, reflect=("echo@probe.example",),
                                                                          smart_host="mail.contoso.com"))  # fmt: skip

    with pytest.raises(ConfigError, match=rf"^only the internet role reflects .*, not the {role.value} role; "):
        resolve_settings(org, role=role)


def test_a_reflect_option_that_is_not_a_plain_address_is_refused() -> None:
    org = Organization(accepted_domains=ORG.accepted_domains, relay=INTERNET)

    with pytest.raises(ConfigError, match=r"^--reflect: 'a%b@probe\.example' is not a plain mail address"):
        resolve_settings(org, reflect=["a%b@probe.example"])


def test_a_reflector_cannot_be_a_mailbox_too() -> None:
    org = Organization(accepted_domains=ORG.accepted_domains, relay=INTERNET)

    with pytest.raises(ConfigError, match=r"^sun@tailspintoys\.com is a mailbox in \[Relay\] and a reflector"):
        resolve_settings(org, reflect=["Sun@tailspintoys.com"])
