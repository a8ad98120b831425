"""Tests of the relay's pure policy: address checks, RCPT decisions by role, content checks, trace headers.

Address forms come from security-cases.md §1.1-§1.2 (nmap smtp-open-relay's 16 pairs, mail-abuse, DSBL,
RR-02-RR-07, RR-20, RR-21); content variants from §1.3 (The-Login, smtpsmug, suuhm).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from diag.config import RelayRole, parse_config
from diag.relay.policy import (
    ACCEPTED,
    REPLY_ACCESS_DENIED,
    REPLY_RELAY_ACCESS_DENIED,
    check_address,
    check_content,
    is_trusted,
    path_argument,
    qualify_recipient,
    queues,
    rcpt_decision,
    received_header,
    strip_trace,
)
from diag.relay.settings import RelaySettings

ORG = parse_config(
    """
[[AcceptedDomain]]
DomainName = "contoso.com"
DomainType = "Authoritative"
Default = true

[[AcceptedDomain]]
DomainName = "fabrikam.com"
DomainType = "InternalRelay"

[[AcceptedDomain]]
DomainName = "hybrid.contoso.net"
DomainType = "Authoritative"

[[OutboundConnector]]
Name = "To on-premises"
ConnectorType = "OnPremises"
RecipientDomains = ["hybrid.contoso.net", "fabrikam.com"]
UseMXRecord = false
SmartHosts = ["mail.contoso.com"]

[[InboundConnector]]
Name = "From on-premises"
ConnectorType = "OnPremises"
SenderDomains = ["*"]
TlsSenderCertificateName = "*.contoso.com"
SenderIPAddresses = ["127.0.10.10"]

[[InboundConnector]]
Name = "Partner"
SenderDomains = ["partner.example"]
SenderIPAddresses = ["127.0.20.20"]
RestrictDomainsToIPAddresses = true
"""
)

D = "relay-test.example"  # an external domain, not a connector domain
S = "cloud.lab.example"  # the relay's own host name
IP = "127.0.0.1"
UNTRUSTED = "127.0.0.99"
RELAY_DENIED = (550, "5.7.64 TenantAttribution; Relay Access Denied")


def settings(role: RelayRole = RelayRole.CLOUD, **overrides: object) -> RelaySettings:
    values: dict[str, object] = {
        "organization": ORG,
        "role": role,
        "hostname": S,
        "listen": (),
        "spool": Path("/nonexistent/spool"),
        "maildir": Path("/nonexistent/maildir"),
        "mailboxes": ("john@contoso.com", "postmaster@contoso.com"),
    }
    if role is RelayRole.ON_PREMISES:
        values["mailboxes"] = ("alice@onprem.example", "postmaster@onprem.example")
        values["relay_networks"] = ("127.0.30.0/24",)
    elif role is RelayRole.INTERNET:
        values["mailboxes"] = ("sun@sun.example",)
        values["relay_networks"] = ("127.0.30.0/24",)
    values.update(overrides)
    return RelaySettings(**values)  # type: ignore[arg-type]


def decide(
    role: RelayRole = RelayRole.CLOUD,
    rcpt: str = "john@contoso.com",
    *,
    mail_from: str = "sender@external.example",
    peer_ip: str = UNTRUSTED,
    cert_names: tuple[str, ...] = (),
) -> tuple[int, str]:
    return rcpt_decision(settings(role), peer_ip=peer_ip, cert_names=cert_names, mail_from=mail_from, rcpt=rcpt)


# --- check_address -------------------------------------------------------------------------------------------

NMAP_PAIRS = [
    ("<>", f"<relaytest@{D}>"),
    (f"<antispam@{D}>", f"<relaytest@{D}>"),
    (f"<antispam@{S}>", f"<relaytest@{D}>"),
    (f"<antispam@[{IP}]>", f"<relaytest@{D}>"),
    (f"<antispam@[{IP}]>", f"<relaytest%{D}@[{IP}]>"),
    (f"<antispam@[{IP}]>", f"<relaytest%{D}@{S}>"),
    (f"<antispam@[{IP}]>", f'<"relaytest@{D}">'),
    (f"<antispam@[{IP}]>", f'<"relaytest%{D}">'),
    (f"<antispam@[{IP}]>", f"<relaytest@{D}@[{IP}]>"),
    (f"<antispam@[{IP}]>", f'<"relaytest@{D}"@[{IP}]>'),
    (f"<antispam@[{IP}]>", f"<relaytest@{D}@{S}>"),
    (f"<antispam@[{IP}]>", f"<@[{IP}]:relaytest@{D}>"),
    (f"<antispam@[{IP}]>", f"<@{S}:relaytest@{D}>"),
    (f"<antispam@[{IP}]>", f"<{D}!relaytest>"),
    (f"<antispam@[{IP}]>", f"<{D}!relaytest@[{IP}]>"),
    (f"<antispam@[{IP}]>", f"<{D}!relaytest@{S}>"),
]

# (address, expected reply for RCPT or None): every nmap recipient form, RR-02, RR-05-RR-07.
RCPT_FORMS = [
    (f"<relaytest@{D}>", None),
    (f"<relaytest%{D}@[{IP}]>", "553 5.1.3 Sender-specified routing (%, ! or @ in the local part) is not accepted"),
    (f"<relaytest%{D}@{S}>", "553 5.1.3 Sender-specified routing (%, ! or @ in the local part) is not accepted"),
    (f'<"relaytest@{D}">', "553 5.1.3 Sender-specified routing (%, ! or @ in the local part) is not accepted"),
    (f'<"relaytest%{D}">', "553 5.1.3 Sender-specified routing (%, ! or @ in the local part) is not accepted"),
    (f"<relaytest@{D}@[{IP}]>", "553 5.1.3 Sender-specified routing (%, ! or @ in the local part) is not accepted"),
    (f'<"relaytest@{D}"@[{IP}]>', "553 5.1.3 Sender-specified routing (%, ! or @ in the local part) is not accepted"),
    (f"<relaytest@{D}@{S}>", "553 5.1.3 Sender-specified routing (%, ! or @ in the local part) is not accepted"),
    (f"<@[{IP}]:relaytest@{D}>", "553 5.1.3 Source routes are not accepted; give only the final mailbox"),
    (f"<@{S}:relaytest@{D}>", "553 5.1.3 Source routes are not accepted; give only the final mailbox"),
    (f"<{D}!relaytest>", "553 5.1.3 Sender-specified routing (%, ! or @ in the local part) is not accepted"),
    (f"<{D}!relaytest@[{IP}]>", "553 5.1.3 Sender-specified routing (%, ! or @ in the local part) is not accepted"),
    (f"<{D}!relaytest@{S}>", "553 5.1.3 Sender-specified routing (%, ! or @ in the local part) is not accepted"),
    # mail-abuse.org and DSBL relaytest(1)
    ('<"nobody@mail-abuse.org">', "553 5.1.3 Sender-specified routing (%, ! or @ in the local part) is not accepted"),
    ("listme@dsbl.org", None),  # without angle brackets: a valid address, left to the relay rules
    ('<"listme%dsbl.org">', "553 5.1.3 Sender-specified routing (%, ! or @ in the local part) is not accepted"),
    (
        '<""listme@dsbl.org""@contoso.com>',
        "553 5.1.3 Sender-specified routing (%, ! or @ in the local part) is not accepted",
    ),
    ("<@contoso.com:listme@dsbl.org>", "553 5.1.3 Source routes are not accepted; give only the final mailbox"),
    # RR-02: routing hidden inside an accepted domain
    (
        "<victim%evil.example@contoso.com>",
        "553 5.1.3 Sender-specified routing (%, ! or @ in the local part) is not accepted",
    ),
    (
        "<evil.example!victim@contoso.com>",
        "553 5.1.3 Sender-specified routing (%, ! or @ in the local part) is not accepted",
    ),
    (
        '<"victim@evil.example"@contoso.com>',
        "553 5.1.3 Sender-specified routing (%, ! or @ in the local part) is not accepted",
    ),
    (
        '<"victim%evil.example"@contoso.com>',
        "553 5.1.3 Sender-specified routing (%, ! or @ in the local part) is not accepted",
    ),
    # RR-05: IP literals and numeric domains
    ("<u@[10.0.0.5]>", "553 5.1.3 Address literals and numeric domains are not accepted"),
    ("<u@[127.0.0.1]>", "553 5.1.3 Address literals and numeric domains are not accepted"),
    ("<u@[IPv6:::1]>", "553 5.1.3 Address literals and numeric domains are not accepted"),
    ("<u@[IPv6:::ffff:10.0.0.1]>", "553 5.1.3 Address literals and numeric domains are not accepted"),
    ("<u@10.0.0.5>", "553 5.1.3 Address literals and numeric domains are not accepted"),
    ("<u@[10.0.0.1.evil]>", "553 5.1.3 Address literals and numeric domains are not accepted"),
    # RR-06: a source route into an accepted domain
    ("<@evil.example:u@contoso.com>", "553 5.1.3 Source routes are not accepted; give only the final mailbox"),
    # RR-07: no domain
    ("<postmaster>", None),
    ("<Postmaster>", None),
    ("postmaster", None),
    ("<relaytest>", "553 5.1.3 The recipient address needs a fully qualified domain"),
    ("<u@localhost>", "553 5.1.3 Bad recipient address syntax"),
    # RR-04: domain matching and look-alikes
    ("<john@CONTOSO.COM>", None),
    ("<john@contoso.com.>", "553 5.1.3 Bad recipient address syntax"),
    (
        "<john@contoso.c\u043em>",
        "553 5.6.7 Non-ASCII recipient addresses need SMTPUTF8, which this server does not offer",
    ),
    (
        "<john@\uff43ontoso.com>",
        "553 5.6.7 Non-ASCII recipient addresses need SMTPUTF8, which this server does not offer",
    ),
    # syntax the stdlib parser would quietly repair
    ("<u(comment)@contoso.com>", "553 5.1.3 Bad recipient address syntax"),
    ('<"unclosed@contoso.com>', "553 5.1.3 Bad recipient address syntax"),
    ("<>", "553 5.1.3 Empty recipient address"),
]


@pytest.mark.parametrize(("address", "expected"), RCPT_FORMS)
def test_check_address_recipient_forms(address: str, expected: str | None) -> None:
    assert check_address(address, sender=False) == expected


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("<>", None),  # RR-08: the null sender
        ("", None),
        (f"<antispam@{D}>", None),
        (f"<antispam@{S}>", None),
        (f"<antispam@[{IP}]>", "553 5.1.7 Address literals and numeric domains are not accepted"),
        ("<spamtest>", "553 5.1.7 The sender address needs a fully qualified domain"),  # mail-abuse test 4
        ("<spamtest@localhost>", "553 5.1.7 Bad sender address syntax"),  # mail-abuse test 3
        ("<postmaster>", "553 5.1.7 The sender address needs a fully qualified domain"),  # only RCPT is special
        ("<dsbl.org!nobody>", "553 5.1.7 Sender-specified routing (%, ! or @ in the local part) is not accepted"),
        ("<@relay.example:a@contoso.com>", "553 5.1.7 Source routes are not accepted; give only the final mailbox"),
        ("<a\x00b@contoso.com>", "553 5.1.7 Bad sender address syntax"),
    ],
)
def test_check_address_sender_forms(address: str, expected: str | None) -> None:
    assert check_address(address, sender=True) == expected


def test_check_address_answers_sender_and_recipient_apart_when_asked_again() -> None:
    # Cached (the server asks twice per address): the same text as sender and as recipient stays two questions
    for _ in range(2):
        assert check_address("<>", sender=True) is None
        assert check_address("<>", sender=False) == "553 5.1.3 Empty recipient address"


@pytest.mark.parametrize(
    "address",
    [
        '<"a\rRCPT TO:<victim@evil.example>"@contoso.com>',
        "<a\x00b@contoso.com>",
        "<a\rb@contoso.com>",
        "<a\nb@contoso.com>",
        '<"a\tb"@contoso.com>',
        '<"a\x0bb"@contoso.com>',
        '<"a\x0cb"@contoso.com>',
        '<"a\x1bb"@contoso.com>',
        '<"a\x7fb"@contoso.com>',
        '<"a\x85b"@contoso.com>',  # C1
        '<"a\rx <v@evil.example>"@contoso.com>',  # security-cases finding 1
    ],
)
def test_control_characters_refused_without_echo(address: str) -> None:
    """RR-20: 553 5.1.3 for RCPT, 553 5.1.7 for MAIL, and the address never appears in the reply."""
    assert check_address(address, sender=False) == "553 5.1.3 Bad recipient address syntax"
    assert check_address(address, sender=True) == "553 5.1.7 Bad sender address syntax"


def test_length_limits() -> None:
    """RR-21: local part 64, domain 255 (RFC 5321 §4.5.3.1), path 256 octets."""
    assert check_address(f"<{'a' * 64}@contoso.com>", sender=False) is None
    assert check_address(f"<{'a' * 65}@contoso.com>", sender=False) == (
        "553 5.1.3 The local part of the recipient address is longer than 64 characters"
    )
    long_domain = ".".join(["a" * 63] * 4) + ".com"  # 260 characters
    assert check_address(f"<u@{long_domain}>", sender=True) == (
        "553 5.1.7 The domain of the sender address is longer than 255 characters"
    )
    path_257 = f"<{'a' * 60}@{'b' * 60}.{'c' * 60}.{'d' * 60}.{'e' * 7}.com>"
    assert len(path_257) == 257
    assert check_address(path_257.replace("eeeeeee", "eeeeee"), sender=False) is None  # 256 octets
    assert check_address(path_257, sender=False) == "553 5.1.3 The recipient address is longer than 256 characters"


def test_nmap_pairs_never_both_accepted_from_an_untrusted_client() -> None:
    """RR-01: for every role, each of nmap's 16 pairs is refused at MAIL or at RCPT, never accepted."""
    for role in RelayRole:
        for mail_from, rcpt in NMAP_PAIRS:
            if check_address(mail_from, sender=True) is not None:
                continue
            if check_address(rcpt, sender=False) is not None:
                continue
            code, _ = decide(role, rcpt, mail_from=mail_from)
            assert code >= 500, (role, mail_from, rcpt)


@pytest.mark.parametrize(
    ("arg", "keyword", "expected"),
    [
        ("FROM:<a@b.example>", "FROM:", "<a@b.example>"),
        ("from: <a@b.example> SIZE=10", "FROM:", "<a@b.example>"),
        ('TO:<"a>b"@c.example> NOTIFY=NEVER', "TO:", '<"a>b"@c.example>'),
        ('TO:<"a\\">b"@c.example>', "TO:", '<"a\\">b"@c.example>'),
        ("TO:listme@dsbl.org", "TO:", "listme@dsbl.org"),
        ("TO:<@relay.example:u@c.example>", "TO:", "<@relay.example:u@c.example>"),
        ("TO:<unclosed@c.example", "TO:", None),
        ("FROM:<a@b.example>", "TO:", None),
        (None, "TO:", None),
    ],
)
def test_path_argument(arg: str | None, keyword: str, expected: str | None) -> None:
    assert path_argument(arg, keyword) == expected


# --- rcpt_decision --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rcpt", "kwargs", "expected"),
    [
        ("john@contoso.com", {}, ACCEPTED),
        ("John@CONTOSO.com", {}, ACCEPTED),  # RR-04: case does not matter
        ("<john@contoso.com>", {}, ACCEPTED),
        ("unknown@contoso.com", {}, REPLY_ACCESS_DENIED),  # Authoritative: unknown users refused
        ("unknown@hybrid.contoso.net", {}, ACCEPTED),  # Authoritative but routed by a connector
        ("anyone@fabrikam.com", {}, ACCEPTED),  # InternalRelay: unknown users go on
        ("john@notcontoso.com", {}, RELAY_DENIED),  # RR-04: no substring matching
        ("john@contoso.com.evil.net", {}, RELAY_DENIED),
        ("john@sub.contoso.com", {}, RELAY_DENIED),  # no MatchSubDomains
        (f"relaytest@{D}", {}, RELAY_DENIED),
        (f"relaytest@{D}", {"mail_from": "<>"}, RELAY_DENIED),  # RR-08: relay rules hold for <>
        ("john@contoso.com", {"mail_from": "<>"}, ACCEPTED),
        ("john@contoso.com", {"mail_from": ""}, ACCEPTED),
        # exchange-model §3.2: relay needs (certificate or sender domain accepted) and an OnPremises match
        (f"relaytest@{D}", {"peer_ip": "127.0.10.10", "mail_from": "app@contoso.com"}, ACCEPTED),
        (f"relaytest@{D}", {"peer_ip": "127.0.10.10", "mail_from": "app@external.example"}, RELAY_DENIED),
        (f"relaytest@{D}", {"cert_names": ("mail.contoso.com",)}, ACCEPTED),
        (f"relaytest@{D}", {"cert_names": ("mail.other.example",)}, RELAY_DENIED),
        (f"relaytest@{D}", {"mail_from": "app@contoso.com"}, RELAY_DENIED),  # RR-11: accepted sender alone
        # exchange-model §3.4: a restricted Partner connector
        (
            "john@contoso.com",
            {"mail_from": "x@partner.example"},
            (
                550,
                "5.7.51 TenantInboundAttribution; There is a partner connector configured that matched the "
                "message's recipient domain. The connector had either the RestrictDomainsToIPAddresses or "
                "RestrictDomainsToCertificate set",
            ),
        ),
        ("john@contoso.com", {"mail_from": "x@partner.example", "peer_ip": "127.0.20.20"}, ACCEPTED),
        ("postmaster", {}, ACCEPTED),  # RFC 5321 §4.5.1
    ],
)
def test_rcpt_decision_cloud(rcpt: str, kwargs: dict[str, object], expected: tuple[int, str]) -> None:
    assert decide(RelayRole.CLOUD, rcpt, **kwargs) == expected  # type: ignore[arg-type]


def test_rcpt_decision_postmaster_needs_a_mailbox() -> None:
    bare = settings(mailboxes=("john@contoso.com",))
    assert rcpt_decision(bare, peer_ip=UNTRUSTED, cert_names=(), mail_from="", rcpt="Postmaster") == (
        550,
        "5.1.1 <Postmaster>: Recipient address rejected: User unknown",
    )
    assert qualify_recipient(settings(), "<Postmaster>") == "postmaster@contoso.com"
    assert qualify_recipient(settings(), "john@contoso.com") == "john@contoso.com"


@pytest.mark.parametrize(
    ("role", "rcpt", "peer_ip", "expected"),
    [
        (RelayRole.ON_PREMISES, "alice@onprem.example", UNTRUSTED, ACCEPTED),
        (RelayRole.ON_PREMISES, "ALICE@onprem.example", UNTRUSTED, ACCEPTED),
        # A colleague whose mailbox is elsewhere (in the cloud): the users' own network may mail them.
        (RelayRole.ON_PREMISES, "bob@onprem.example", "127.0.30.5", ACCEPTED),
        (
            RelayRole.ON_PREMISES,
            "bob@onprem.example",
            UNTRUSTED,
            (550, "5.1.1 <bob@onprem.example>: Recipient address rejected: User unknown"),
        ),
        (RelayRole.ON_PREMISES, f"relaytest@{D}", "127.0.30.5", ACCEPTED),  # relay_networks
        (RelayRole.ON_PREMISES, f"relaytest@{D}", UNTRUSTED, REPLY_RELAY_ACCESS_DENIED),
        (RelayRole.ON_PREMISES, "john@contoso.com", UNTRUSTED, REPLY_RELAY_ACCESS_DENIED),
        (RelayRole.INTERNET, "sun@sun.example", UNTRUSTED, ACCEPTED),
        (
            RelayRole.INTERNET,
            "moon@sun.example",
            UNTRUSTED,
            (550, "5.1.1 <moon@sun.example>: Recipient address rejected: User unknown"),
        ),
        (RelayRole.INTERNET, f"relaytest@{D}", UNTRUSTED, REPLY_RELAY_ACCESS_DENIED),
        (RelayRole.INTERNET, f"relaytest@{D}", "127.0.30.5", ACCEPTED),  # its users send out by MX
        (
            RelayRole.INTERNET,
            "postmaster",
            UNTRUSTED,
            (550, "5.1.1 <postmaster>: Recipient address rejected: User unknown"),
        ),
    ],
)
def test_rcpt_decision_onprem_and_internet(role: RelayRole, rcpt: str, peer_ip: str, expected: tuple[int, str]) -> None:
    assert decide(role, rcpt, peer_ip=peer_ip, mail_from="") == expected


@pytest.mark.parametrize("role", list(RelayRole))
def test_rcpt_decision_catch_all_domain_takes_anyone_from_anyone(role: RelayRole) -> None:
    kept = settings(role, catch_all=("sun.example", "moon.example"))
    for rcpt in ("moon@sun.example", "Anyone@MOON.example", "<x@moon.example>"):
        assert rcpt_decision(kept, peer_ip=UNTRUSTED, cert_names=(), mail_from="", rcpt=rcpt) == ACCEPTED
    # Only those domains: not their subdomains, nor a domain that merely ends the same way (RR-04).
    for rcpt in ("x@sub.sun.example", "x@notsun.example", "x@sun.example.evil.net"):
        assert rcpt_decision(kept, peer_ip=UNTRUSTED, cert_names=(), mail_from="", rcpt=rcpt) != ACCEPTED, rcpt


def test_a_plain_mail_host_queues_nothing() -> None:
    plain = settings(RelayRole.INTERNET, mailboxes=(), relay_networks=(), catch_all=("sun.example",))
    assert not queues(plain)
    # What it refuses: another domain from anyone, a bare postmaster (no mailbox to give it to).
    assert rcpt_decision(plain, peer_ip=IP, cert_names=("mail.contoso.com",), mail_from="", rcpt=f"a@{D}") == (
        REPLY_RELAY_ACCESS_DENIED
    )
    assert rcpt_decision(plain, peer_ip=IP, cert_names=(), mail_from="", rcpt="postmaster")[0] == 550
    assert queues(settings(RelayRole.CLOUD, mailboxes=(), catch_all=("sun.example",)))
    assert queues(settings(RelayRole.INTERNET, relay_networks=(), catch_all=("sun.example",)))
    assert queues(settings(RelayRole.ON_PREMISES, mailboxes=(), catch_all=("sun.example",)))


def test_relay_texts() -> None:
    assert REPLY_RELAY_ACCESS_DENIED == (554, "5.7.1 Relay access denied")
    assert REPLY_ACCESS_DENIED == (550, "5.4.1 Recipient address rejected: Access denied")


def test_is_trusted() -> None:
    cloud = settings()
    assert is_trusted(cloud, peer_ip="127.0.10.10", cert_names=())
    assert is_trusted(cloud, peer_ip="::ffff:127.0.10.10", cert_names=())
    assert is_trusted(cloud, peer_ip=UNTRUSTED, cert_names=("mail.contoso.com",))
    assert not is_trusted(cloud, peer_ip=UNTRUSTED, cert_names=())
    assert not is_trusted(cloud, peer_ip="127.0.20.20", cert_names=())  # a Partner connector is not ours
    assert not is_trusted(cloud, peer_ip=UNTRUSTED, cert_names=("mail.fabrikam.example",))
    onprem = settings(RelayRole.ON_PREMISES)
    assert is_trusted(onprem, peer_ip="127.0.30.7", cert_names=())
    # A client whose certificate our CAs verified (the cloud over its connector) is attributable too.
    assert is_trusted(onprem, peer_ip="127.0.10.10", cert_names=("mail.contoso.com",))
    assert not is_trusted(onprem, peer_ip="127.0.10.10", cert_names=())
    # trace_networks: trusted for their trace in every role, without relay rights.
    for role in RelayRole:
        traced = settings(role, trace_networks=("127.0.0.0/8",))
        assert is_trusted(traced, peer_ip=UNTRUSTED, cert_names=())
        assert is_trusted(traced, peer_ip="::ffff:127.0.0.99", cert_names=())
        assert not is_trusted(traced, peer_ip="192.0.2.1", cert_names=())
        assert rcpt_decision(traced, peer_ip=UNTRUSTED, cert_names=(), mail_from="", rcpt=f"a@{D}")[0] != 250


# --- check_content --------------------------------------------------------------------------------------------

# End-of-data variants (security-cases §1.3): The-Login inbound and outbound lists, smtpsmug --test, suuhm.
VARIANTS = {
    "lf.lf": b"\n.\n",
    "lf.cr": b"\n.\r",
    "cr.lf": b"\r.\n",
    "cr.cr": b"\r.\r",
    "lf.crlf": b"\n.\r\n",
    "cr.crlf": b"\r.\r\n",
    "crlf-nul.crlf": b"\r\n\x00.\r\n",
    "crlf.cr-crlf": b"\r\n.\r\r\n",
    "crcrlf.cr-crlf": b"\r\r\n.\r\r\n",
    "crlf.lf": b"\r\n.\n",
    "crlf.cr": b"\r\n.\r",
    "crlf.nul-crlf": b"\r\n.\x00\r\n",
    "crlf-nul.cr": b"\r\n\x00.\r",
    "crlf-nul.lf": b"\r\n\x00.\n",
    "crlf.": b"\r\n.",
    "lflf.crlf": b"\n\n.\r\n",
}
SMUGGLED = (
    b"MAIL FROM:<smuggled@evil.example>\r\nRCPT TO:<v@contoso.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n"
)


def smuggling_payload(variant: bytes) -> bytes:
    """RR-30: what the client sends after 354, real end of data included."""
    return b"From: a@external.example\r\nSubject: test\r\n\r\nhello" + variant + SMUGGLED


def as_received(wire: bytes) -> tuple[bytes, bytes]:
    """What aiosmtpd 1.4.6 makes of DATA: (content up to the first line ".\\r\\n", dot-unstuffed; the rest)."""
    lines = re.split(rb"(?<=\r\n)", wire)
    content: list[bytes] = []
    for index, line in enumerate(lines):
        if line == b".\r\n":
            return b"".join(content), b"".join(lines[index + 1 :])
        content.append(line[1:] if line.startswith(b".") else line)
    raise AssertionError("no end of data")


@pytest.mark.parametrize("name", VARIANTS)
def test_smuggling_variants(name: str) -> None:
    """RR-30-RR-32, RR-36: one message per payload; every variant with a stray CR, LF or NUL is refused."""
    content, rest = as_received(smuggling_payload(VARIANTS[name]))
    assert rest == b""  # aiosmtpd sees one message only
    reply = check_content(content)
    if name == "crlf.":
        # "\r\n." + "MAIL FROM..." is an ordinary dot-stuffed line: the smuggled text is body text of the one
        # message, and a downstream server gets it dot-stuffed again.
        assert reply is None
        assert b"\r\nMAIL FROM:<smuggled@evil.example>\r\n" in content
    else:
        assert reply is not None and reply.startswith("550 5.6.11 Message refused: it contains ")


def test_check_content_names_what_it_found() -> None:
    assert check_content(b"a\nb\r\n") == (
        "550 5.6.11 Message refused: it contains bare LF; lines must end with CRLF and NUL is not allowed"
    )
    assert check_content(b"a\rb\r\n") == (
        "550 5.6.11 Message refused: it contains bare CR; lines must end with CRLF and NUL is not allowed"
    )
    assert check_content(b"a\x00b\r\n") == (
        "550 5.6.11 Message refused: it contains NUL; lines must end with CRLF and NUL is not allowed"
    )
    assert check_content(b"a\rb\nc\x00\r\n") == (
        "550 5.6.11 Message refused: it contains bare CR, bare LF and NUL; lines must end with CRLF and NUL is "
        "not allowed"
    )
    assert check_content(b"\nSubject: x\r\n") is not None  # at the very start
    assert check_content(b"Subject: x\r\n\r\nbody\r") is not None  # at the very end


def test_check_content_line_length() -> None:
    """RR-38, RD-04: 998 characters is the most a line may have (RFC 5322 §2.1.1)."""
    assert check_content(b"Subject: x\r\n\r\n" + b"a" * 998 + b"\r\n") is None
    assert check_content(b"Subject: x\r\n\r\n" + b"a" * 999 + b"\r\n") == (
        "550 5.6.0 Message refused: a line is longer than 998 characters (RFC 5322 section 2.1.1)"
    )


def test_check_content_accepts_ordinary_mail() -> None:
    assert check_content(b"") is None
    assert check_content(b"Subject: x\r\n\r\nline\r\n\r\n.leading dot was unstuffed\r\n\xc3\xa9 8bit\r\n") is None


# --- Received and trace headers -------------------------------------------------------------------------------

WHEN = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_received_header_format() -> None:
    header = received_header(
        helo="mail.contoso.com",
        peer_ip="127.0.10.10",
        hostname=S,
        qid="ABC123",
        recipients=["relaytest@relay-test.example"],
        when=WHEN,
        tls_version="TLSv1.3",
        tls_cipher="TLS_AES_256_GCM_SHA384",
    )
    assert header == (
        "Received: from mail.contoso.com ([127.0.10.10])\r\n"
        f"\tby {S} with ESMTPS (TLSv1.3 TLS_AES_256_GCM_SHA384) id ABC123\r\n"
        "\tfor <relaytest@relay-test.example>; Wed, 02 Jan 2030 03:04:05 +0000\r\n"
    )


def test_received_header_without_tls_and_several_recipients() -> None:
    header = received_header(
        helo="[127.0.0.5]", peer_ip="::1", hostname=S, qid="X1", recipients=["a@b.example", "c@d.example"], when=WHEN
    )
    assert header == (
        f"Received: from [127.0.0.5] ([IPv6:::1])\r\n\tby {S} with ESMTP id X1; Wed, 02 Jan 2030 03:04:05 +0000\r\n"
    )
    helo = received_header(
        helo="client", peer_ip="127.0.0.5", hostname=S, qid="X1", recipients=[], when=WHEN, esmtp=False
    )
    assert "with SMTP id X1;" in helo


def test_received_header_dates_each_message_in_its_own_second_and_zone() -> None:
    def date(when: datetime) -> str:
        return received_header(helo="a.example", peer_ip="127.0.0.5", hostname=S, qid="X1", recipients=[],
                               when=when).rsplit("; ", 1)[1].removesuffix("\r\n")  # fmt: skip

    assert date(WHEN.replace(microsecond=999_999)) == "Wed, 02 Jan 2030 03:04:05 +0000"
    assert date(WHEN + timedelta(seconds=1)) == "Wed, 02 Jan 2030 03:04:06 +0000"
    # The same instant elsewhere is written in that zone's time (and equal datetimes share a cache key otherwise)
    assert date(WHEN.astimezone(timezone(timedelta(hours=1)))) == "Wed, 02 Jan 2030 04:04:05 +0100"


@pytest.mark.parametrize("helo", ["evil\r\nX-Injected: 1", "a (comment", "a;b", "x" * 300, "caf\u00e9.example", ""])
def test_received_header_never_carries_a_bad_helo(helo: str) -> None:
    header = received_header(helo=helo, peer_ip="127.0.0.5", hostname=S, qid="X1", recipients=[], when=WHEN)
    assert header.startswith("Received: from unknown ([127.0.0.5])\r\n")
    assert header.count("\r\n") == 2 and header.isascii()


def test_strip_trace() -> None:
    content = (
        b"X-Diag-Trace: hop=1 forged\r\n"
        b"Subject: hello\r\n"
        b"x-diag-trace: second\r\n"
        b"\tcontinued\r\n"
        b" also continued\r\n"
        b"X-Diag-Trace-Other: kept\r\n"
        b"X-DIAG-TRACE : odd spacing\r\n"
        b"To: a@b.example\r\n"
        b"\r\n"
        b"X-Diag-Trace: in the body, kept\r\n"
    )
    assert strip_trace(content, "X-Diag-Trace") == (
        b"Subject: hello\r\nX-Diag-Trace-Other: kept\r\nTo: a@b.example\r\n\r\nX-Diag-Trace: in the body, kept\r\n"
    )


def test_strip_trace_stops_at_the_end_of_the_header_section() -> None:
    no_body = b"X-Diag-Trace: a\r\nSubject: x\r\n"
    assert strip_trace(no_body, "X-Diag-Trace") == b"Subject: x\r\n"
    not_a_header = b"Subject: x\r\nthis is no header\r\nX-Diag-Trace: kept\r\n"
    assert strip_trace(not_a_header, "X-Diag-Trace") == not_a_header
    assert strip_trace(b"", "X-Diag-Trace") == b""
