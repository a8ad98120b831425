"""Tests of the relay's SMTP server: real sockets on loopback, real aiosmtplib clients, raw streams for the
malformed input of security-cases.md §1 (RR numbers in the test docstrings), a real spool in tmp_path.

Servers listen on 127.0.83.x (port 0); clients bind 127.0.84.x (untrusted) or 127.0.10.10 (the address of the
OnPremises inbound connector).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import mailbox
import os
import random
import re
import shutil
import socket
import ssl
import string
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP
from cryptography.hazmat.primitives import serialization

from diag.config import RelayRole, parse_config
from diag.errors import ConfigError
from diag.lab.pki import CertKind, Issued, TestPKI
from diag.relay.connections import Connections
from diag.relay.journal import SEGMENT_AGE, Journal, read_segment
from diag.relay.server import _PLAIN_PATH, RelayServer, _RelaySMTP
from diag.relay.settings import Limits, RelaySettings
from diag.relay.spool import Envelope, Spool, _parsed

T = TypeVar("T")

NET = "127.0.83."
CLIENT = "127.0.84.1"
ONPREM_IP = "127.0.10.10"
HOSTNAME = "cloud.lab.example"
EXTERNAL = "relay-test.example"
DEADLINE = 30.0  # bound on each test's event loop
WAIT = 5.0  # bound on each wait for the server
RELAY_DENIED = "550 5.7.64 TenantAttribution; Relay Access Denied"

ORG = parse_config(
    """
[[AcceptedDomain]]
DomainName = "contoso.com"
DomainType = "Authoritative"
Default = true

[[AcceptedDomain]]
DomainName = "fabrikam.com"
DomainType = "InternalRelay"

[[InboundConnector]]
Name = "From on-premises"
ConnectorType = "OnPremises"
SenderDomains = ["*"]
TlsSenderCertificateName = "*.contoso.com"
SenderIPAddresses = ["127.0.10.10"]
"""
)
MAILBOXES = {
    RelayRole.CLOUD: ("john@contoso.com", "postmaster@contoso.com"),
    RelayRole.ON_PREMISES: ("alice@onprem.example",),
    RelayRole.INTERNET: ("sun@sun.example",),
}
LOCAL_RECIPIENT = {
    RelayRole.CLOUD: "john@contoso.com",
    RelayRole.ON_PREMISES: "alice@onprem.example",
    RelayRole.INTERNET: "sun@sun.example",
}


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, DEADLINE))


async def bounded(awaitable: Coroutine[Any, Any, T] | asyncio.Future[T]) -> T:
    return await asyncio.wait_for(awaitable, WAIT)


@dataclass
class Running:
    server: RelayServer
    spool: Spool
    queued: list[str] = field(default_factory=list)

    @property
    def ip(self) -> str:
        return self.server.addresses[0][0]

    @property
    def port(self) -> int:
        return self.server.addresses[0][1]

    def stored(self) -> list[tuple[Envelope, bytes]]:
        """What the spool holds to deliver: its queue files, and the journal's records (no deliverer runs here,
        so none is done)."""
        found = [(m.envelope, self.spool.content(m.qid)) for m in self.spool.messages()]
        for segment in self.spool.journal.segments():
            found += (_parsed(qid, data) for qid, data in read_segment(segment).records)
        return found


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path
    ca_file: Path


@contextlib.asynccontextmanager
async def relay(
    tmp_path: Path,
    octet: int,
    *,
    role: RelayRole = RelayRole.CLOUD,
    tls: Tls | None = None,
    limits: Limits | None = None,
    spool: Spool | None = None,
    listen: tuple[tuple[str, int], ...] | None = None,
    on_checkpoint: Callable[[list[str]], None] | None = None,
) -> AsyncIterator[Running]:
    settings = RelaySettings(
        organization=ORG,
        role=role,
        hostname=HOSTNAME,
        listen=listen or ((NET + str(octet), 0),),
        spool=tmp_path / "spool",
        maildir=tmp_path / "mail",
        tls_cert=tls.cert if tls else None,
        tls_key=tls.key if tls else None,
        ca_file=tls.ca_file if tls else None,
        mailboxes=MAILBOXES[role],
        relay_networks=("127.0.30.0/24",) if role is RelayRole.ON_PREMISES else (),
        limits=limits or Limits(session_timeout=WAIT * 2),
    )
    spool = spool or Spool(settings.spool)
    queued: list[str] = []
    server = RelayServer(
        settings, spool, on_queued=lambda qid, _envelope, _content, _segment: queued.append(qid),
        on_checkpoint=on_checkpoint,
    )  # fmt: skip
    running = Running(server, spool, queued)
    async with running.server:
        yield running


class Raw:
    """A raw SMTP client on asyncio streams, for what no well-behaved client sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, running: Running, source: str = CLIENT) -> Raw:
        reader, writer = await bounded(asyncio.open_connection(running.ip, running.port, local_addr=(source, 0)))
        return cls(reader, writer)

    @classmethod
    async def session(cls, running: Running, source: str = CLIENT) -> Raw:
        """Connected, greeted, EHLO sent."""
        raw = await cls.open(running, source)
        assert (await raw.reply()).startswith(b"220 ")
        assert (await raw.command(b"EHLO client.example")).startswith(b"250 ")
        return raw

    async def lines(self) -> list[bytes]:
        """Every line of one (possibly multi-line) reply."""
        lines = []
        while True:
            line = await bounded(self.reader.readline())
            lines.append(line)
            if line[3:4] != b"-":
                return lines

    async def reply(self) -> bytes:
        """The last line of one reply, without CRLF."""
        return (await self.lines())[-1].rstrip(b"\r\n")

    async def command(self, line: bytes) -> bytes:
        self.writer.write(line + b"\r\n")
        return await self.reply()

    async def rest(self) -> bytes:
        """Everything until the server closes the connection."""
        try:
            return await bounded(self.reader.read())
        except ConnectionResetError:
            return b""
        finally:
            self.writer.close()

    def close(self) -> None:
        self.writer.close()


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.create()


@pytest.fixture
def tls(pki: TestPKI, tmp_path: Path) -> Tls:
    cert, key = pki.issue([HOSTNAME]).write(tmp_path, "server")
    return Tls(cert, key, pki.write_root(tmp_path / "root.pem"))


def client_context(pki: TestPKI, tmp_path: Path, certificate: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=pki.root_pem().decode())
    if certificate is not None:
        chain, key = certificate.write(tmp_path, f"client-{id(certificate)}")
        context.load_cert_chain(chain, key)
    return context


def client(running: Running, source: str = CLIENT) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname=running.ip,
        port=running.port,
        start_tls=False,
        timeout=WAIT,
        source_address=(source, 0),
        local_hostname="client.example",
    )


def message(to: str, *, extra: dict[str, str] | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "probe@external.example"
    msg["To"] = to
    msg["Subject"] = "relay test"
    for name, value in (extra or {}).items():
        msg[name] = value
    msg.set_content("hello\n")
    return msg


# --- accepting and queueing -----------------------------------------------------------------------------------


def test_message_to_an_accepted_domain_is_stored_before_250(tmp_path: Path) -> None:
    """RR-60: the 250 names the queue id of a stored message with the right envelope and a Received line."""

    async def main() -> None:
        async with relay(tmp_path, 1) as running:
            smtp = client(running)
            banner = await smtp.connect()
            assert (banner.code, banner.message) == (220, f"{HOSTNAME} ESMTP")  # RR-44: no aiosmtpd version
            errors, reply = await smtp.sendmail(
                "probe@external.example", ["John@contoso.com"], message("john@contoso.com").as_bytes()
            )
            await smtp.quit()
            assert errors == {}
            qid = reply.removeprefix("2.0.0 Ok: queued as ")
            assert running.queued == [qid]
            ((stored, content),) = running.stored()
            assert (stored.mail_from, stored.rcpt_tos, stored.peer, stored.helo, stored.tls) == (
                "probe@external.example", ("John@contoso.com",), CLIENT, "client.example", "",
            )  # fmt: skip
            assert stored.client_cert_names == ()
            assert re.match(
                rb"Received: from client\.example \(\[127\.0\.84\.1\]\)\r\n"
                rb"\tby cloud\.lab\.example with ESMTP id [0-9a-f]+\r\n"
                rb"\tfor <John@contoso\.com>; \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\n"
                rb"From: probe@external\.example\r\n",
                content,
            )

    run(main())


def test_queued_message_is_logged_on_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with relay(tmp_path, 2) as running:
            smtp = client(running)
            await smtp.connect()
            await smtp.sendmail("", ["john@contoso.com", "postmaster"], message("john@contoso.com").as_bytes())
            await smtp.quit()
            ((stored, _),) = running.stored()
            # RR-08: the null sender is accepted; postmaster without a domain goes to the configured mailbox.
            assert stored.mail_from == ""
            assert stored.rcpt_tos == ("john@contoso.com", "postmaster@contoso.com")

    with caplog.at_level(logging.INFO, logger="diag.relay"):
        run(main())
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("queued ")]
    assert re.fullmatch(
        r"queued qid=[0-9a-f]+ from=<> to=<john@contoso\.com>,<postmaster@contoso\.com> size=\d+ "
        r"peer=127\.0\.84\.1 tls=none id=[0-9a-f]+",
        line,
    )


def test_recipient_given_twice_is_queued_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with relay(tmp_path, 15) as running:
            raw = await Raw.session(running)
            assert await raw.command(b"MAIL FROM:<a@external.example>") == b"250 2.1.0 Ok"
            assert await raw.command(b"RCPT TO:<john@contoso.com>") == b"250 2.1.5 OK"
            assert await raw.command(b"RCPT TO:<JOHN@contoso.com>") == b"250 2.1.5 OK"
            assert (await raw.command(b"DATA")).startswith(b"354 ")
            assert (await raw.command(b"Subject: x\r\n\r\nbody\r\n.")).startswith(b"250 2.0.0 Ok: queued as ")
            raw.close()
            ((envelope, _),) = running.stored()
            assert envelope.rcpt_tos == ("john@contoso.com",)

    run(main())


def test_failing_on_queued_does_not_cost_the_250(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def on_queued(qid: str, envelope: Envelope, content: bytes, segment: str | None) -> None:
        raise RuntimeError("delivery is down")

    async def main() -> None:
        async with relay(tmp_path, 16) as running:
            running.server._on_queued = on_queued
            assert (await send_one(running)).startswith(b"250 2.0.0 Ok: queued as ")
            assert len(running.stored()) == 1

    with caplog.at_level(logging.ERROR, logger="diag.relay"):
        run(main())
    assert "stays queued for the next queue scan" in caplog.text


def test_untrusted_client_cannot_relay(tmp_path: Path) -> None:
    """RR-01, RR-11: the cloud's exact reply for a relay attempt from an unknown IP without a certificate."""

    async def main() -> None:
        async with relay(tmp_path, 3) as running:
            raw = await Raw.session(running)
            assert await raw.command(b"MAIL FROM:<app@contoso.com>") == b"250 2.1.0 Ok"
            assert await raw.command(f"RCPT TO:<relaytest@{EXTERNAL}>".encode()) == RELAY_DENIED.encode()
            assert await raw.command(b"RCPT TO:<unknown@contoso.com>") == (
                b"550 5.4.1 Recipient address rejected: Access denied"
            )
            assert await raw.command(b"DATA") == b"503 Error: need RCPT command"
            raw.close()
            assert running.stored() == []

    run(main())


def test_sender_ip_of_an_onpremises_connector_may_relay(tmp_path: Path) -> None:
    """exchange-model §3.2: SenderIPAddresses match plus an accepted sender domain. Trace headers are kept."""

    async def main() -> None:
        async with relay(tmp_path, 4) as running:
            smtp = client(running, ONPREM_IP)
            await smtp.connect()
            msg = message(f"relaytest@{EXTERNAL}", extra={"X-Diag-Trace": "hop=onprem"})
            errors, _ = await smtp.sendmail("app@contoso.com", [f"relaytest@{EXTERNAL}"], msg.as_bytes())
            await smtp.quit()
            assert errors == {}
            ((stored, content),) = running.stored()
            assert stored.peer == ONPREM_IP and stored.rcpt_tos == (f"relaytest@{EXTERNAL}",)
            assert b"\r\nX-Diag-Trace: hop=onprem\r\n" in content
            # The same sender from elsewhere is refused.
            other = client(running)
            await other.connect()
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
                await other.sendmail("app@contoso.com", [f"relaytest@{EXTERNAL}"], msg.as_bytes())
            other.close()
            ((code, text),) = [(e.code, e.message) for e in refused.value.recipients]
            assert f"{code} {text}" == RELAY_DENIED

    run(main())


def _dual_stack() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _dual_stack(), reason="this machine has no IPv6 loopback to listen on [::]")
@pytest.mark.parametrize(("role", "source", "allowed"), [
    (RelayRole.CLOUD, ONPREM_IP, True),  # SenderIPAddresses 127.0.10.10
    (RelayRole.CLOUD, CLIENT, False),
    (RelayRole.ON_PREMISES, "127.0.30.7", True),  # relay_networks 127.0.30.0/24
    (RelayRole.ON_PREMISES, CLIENT, False),
])  # fmt: skip
def test_an_ipv4_client_of_a_dual_stack_listener_is_recognised(
    tmp_path: Path, role: RelayRole, source: str, allowed: bool
) -> None:
    """A listener on [::] sees IPv4 clients as ::ffff:a.b.c.d; they must match IPv4 ranges as on an IPv4
    listener, for relay rights (cloud: the inbound connector; onprem: its relay networks) alike."""

    async def main() -> None:
        async with relay(tmp_path, 0, role=role, listen=(("::", 0),)) as running:
            reader, writer = await bounded(
                asyncio.open_connection("127.0.0.1", running.port, local_addr=(source, 0))
            )
            raw = Raw(reader, writer)
            assert (await raw.reply()).startswith(b"220 ")
            assert (await raw.command(b"EHLO client.example")).startswith(b"250 ")
            assert await raw.command(b"MAIL FROM:<app@contoso.com>") == b"250 2.1.0 Ok"
            reply = await raw.command(f"RCPT TO:<relaytest@{EXTERNAL}>".encode())
            raw.close()
            if allowed:
                assert reply.startswith(b"250 "), reply
            else:
                assert reply in (RELAY_DENIED.encode(), b"554 5.7.1 Relay access denied"), reply

    run(main())


@pytest.mark.skipif(not _dual_stack(), reason="this machine has no IPv6 loopback to listen on [::]")
def test_ipv4_and_ipv6_listeners_on_one_port_both_start(tmp_path: Path) -> None:
    """Listen = ["0.0.0.0:P", "[::]:P"] keeps working: the [::] listener stays IPv6-only then."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main() -> None:
        async with relay(tmp_path, 0, listen=(("0.0.0.0", port), ("::", port))) as running:
            assert {address for address, _ in running.server.addresses} == {"0.0.0.0", "::"}

    run(main())


def test_untrusted_client_loses_its_trace_headers(tmp_path: Path) -> None:
    async def main() -> None:
        async with relay(tmp_path, 5) as running:
            smtp = client(running)
            await smtp.connect()
            msg = message("john@contoso.com", extra={"X-Diag-Trace": "forged", "X-Other": "kept"})
            await smtp.sendmail("a@external.example", ["john@contoso.com"], msg.as_bytes())
            await smtp.quit()
            ((_, content),) = running.stored()
            assert b"X-Diag-Trace" not in content and b"\r\nX-Other: kept\r\n" in content

    run(main())


# --- STARTTLS and client certificates -------------------------------------------------------------------------


def test_client_certificate_of_an_onpremises_connector_may_relay(pki: TestPKI, tls: Tls, tmp_path: Path) -> None:
    """exchange-model §3.2 (1a + 2): a verified certificate named under TlsSenderCertificateName "*.contoso.com"
    relays for any sender, from any IP."""
    certificate = pki.issue(["mail.contoso.com"])

    async def main() -> None:
        async with relay(tmp_path, 6, tls=tls) as running:
            smtp = client(running)
            await smtp.connect()
            await smtp.starttls(server_hostname=HOSTNAME, tls_context=client_context(pki, tmp_path, certificate))
            await smtp.ehlo()
            assert not smtp.supports_extension("auth") and not smtp.supports_extension("starttls")
            errors, _ = await smtp.sendmail(
                "anyone@external.example", [f"relaytest@{EXTERNAL}"], message(f"relaytest@{EXTERNAL}").as_bytes()
            )
            await smtp.quit()
            assert errors == {}
            ((stored, content),) = running.stored()
            assert stored.client_cert_names == ("mail.contoso.com",)
            assert re.fullmatch(r"TLSv1\.[23] \S+", stored.tls)
            assert f"with ESMTPS ({stored.tls}) id ".encode() in content

    run(main())


def test_starttls_without_client_certificate_gives_no_identity(pki: TestPKI, tls: Tls, tmp_path: Path) -> None:
    async def main() -> None:
        async with relay(tmp_path, 7, tls=tls) as running:
            smtp = client(running)
            await smtp.connect()
            await smtp.starttls(server_hostname=HOSTNAME, tls_context=client_context(pki, tmp_path))
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
                await smtp.sendmail("a@external.example", [f"relaytest@{EXTERNAL}"], b"Subject: x\r\n\r\nx\r\n")
            await smtp.sendmail("a@external.example", ["john@contoso.com"], b"Subject: x\r\n\r\nx\r\n")
            await smtp.quit()
            ((stored, _),) = running.stored()
            assert stored.client_cert_names == () and stored.tls.startswith("TLSv1.")

    run(main())


def test_certificate_from_another_ca_does_not_count(pki: TestPKI, tls: Tls, tmp_path: Path) -> None:
    """RR-11: an unverified certificate is no identity. Python's ssl has no verify callback, so with
    CERT_OPTIONAL the server ends the handshake; the client cannot relay either way."""
    foreign = TestPKI.create(org="someone else").issue(["mail.contoso.com"])

    async def main() -> None:
        async with relay(tmp_path, 8, tls=tls) as running:
            smtp = client(running)
            await smtp.connect()
            with pytest.raises((ssl.SSLError, aiosmtplib.SMTPException, ConnectionError)):
                await smtp.starttls(server_hostname=HOSTNAME, tls_context=client_context(pki, tmp_path, foreign))
                await smtp.ehlo()
                await smtp.sendmail("a@external.example", [f"relaytest@{EXTERNAL}"], b"Subject: x\r\n\r\nx\r\n")
            smtp.close()
            raw = await Raw.session(running)
            assert await raw.command(b"MAIL FROM:<a@external.example>") == b"250 2.1.0 Ok"
            assert await raw.command(f"RCPT TO:<relaytest@{EXTERNAL}>".encode()) == RELAY_DENIED.encode()
            raw.close()
            assert running.stored() == []

    run(main())


@pytest.mark.parametrize("kind", [CertKind.EXPIRED, CertKind.NOT_YET_VALID, CertKind.SELF_SIGNED, CertKind.CHAINLESS])
def test_an_invalid_certificate_with_the_connectors_name_is_refused_at_the_handshake(
    pki: TestPKI, tls: Tls, tmp_path: Path, kind: CertKind
) -> None:
    """What the connectors check predicts (INBOUND_CERT_INVALID): a matching name does not save a certificate
    the verifier refuses; the handshake ends and no session is recognised by it."""
    broken = pki.issue(["mail.contoso.com"], kind=kind)

    async def main() -> None:
        async with relay(tmp_path, 8, tls=tls) as running:
            smtp = client(running)
            await smtp.connect()
            with pytest.raises((ssl.SSLError, aiosmtplib.SMTPException, ConnectionError)):
                await smtp.starttls(server_hostname=HOSTNAME, tls_context=client_context(pki, tmp_path, broken))
                await smtp.ehlo()
            smtp.close()
            assert running.stored() == []

    run(main())


def test_tls_below_1_2_is_refused(pki: TestPKI, tls: Tls, tmp_path: Path) -> None:
    """RR-43: only TLS 1.2 and later."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 are deprecated: that is the point
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1

    async def main() -> None:
        async with relay(tmp_path, 17, tls=tls) as running:
            smtp = client(running)
            await smtp.connect()
            with pytest.raises((ssl.SSLError, aiosmtplib.SMTPException, ConnectionError)):
                await smtp.starttls(server_hostname=HOSTNAME, tls_context=context)
            smtp.close()

    run(main())


@pytest.mark.parametrize(
    "injected",
    [b"MAIL FROM:<injected@evil.example>\r\n", b"RSET\r\n", b"EHLO injected.example\r\n", b"AUTH PLAIN AGFiAGM=\r\n"],
)
def test_plaintext_injected_with_starttls_is_discarded(pki: TestPKI, tls: Tls, tmp_path: Path, injected: bytes) -> None:
    """RR-40 (CVE-2024-34083), RR-41: commands pipelined after STARTTLS are thrown away and the session starts
    over after the handshake (RFC 3207 §4.2)."""

    async def main() -> None:
        async with relay(tmp_path, 9, tls=tls) as running:
            raw = await Raw.session(running)
            assert await raw.command(b"MAIL FROM:<before-tls@external.example>") == b"250 2.1.0 Ok"
            raw.writer.write(b"STARTTLS\r\n" + injected)
            assert await raw.reply() == b"220 Ready to start TLS"
            await bounded(raw.writer.start_tls(client_context(pki, tmp_path), server_hostname=HOSTNAME))
            # Neither the injected EHLO nor the one before TLS counts, nor the MAIL before TLS.
            assert await raw.command(b"MAIL FROM:<a@external.example>") == b"503 Error: send HELO first"
            raw.writer.write(b"EHLO client.example\r\n")
            lines = await raw.lines()
            assert not any(b"AUTH" in line or b"STARTTLS" in line for line in lines)
            assert await raw.command(b"RCPT TO:<john@contoso.com>") == b"503 Error: need MAIL command"
            assert await raw.command(b"QUIT") == b"221 Bye"
            raw.close()
            assert running.stored() == []

    run(main())


def test_greeting_and_ehlo_offer_no_auth(tmp_path: Path, tls: Tls) -> None:
    """RR-44, RR-09: no version in the banner; no AUTH offered or accepted; STARTTLS offered, not required."""

    async def main() -> None:
        async with relay(tmp_path, 10, tls=tls) as running:
            raw = await Raw.open(running)
            assert await raw.reply() == f"220 {HOSTNAME} ESMTP".encode()
            raw.writer.write(b"EHLO client.example\r\n")
            ehlo = [line.rstrip(b"\r\n") for line in await raw.lines()]
            assert ehlo[0] == f"250-{HOSTNAME}".encode()
            assert b"250-STARTTLS" in ehlo and b"250-SIZE 10485760" in ehlo
            assert not any(b"AUTH" in line or b"SMTPUTF8" in line for line in ehlo)
            assert await raw.command(b"AUTH PLAIN AGFiAGM=") == b"502 5.5.1 Error: command not implemented"
            # RR-42: plaintext mail is served (RFC 3207: a public MX must not require STARTTLS).
            assert await raw.command(b"MAIL FROM:<a@external.example>") == b"250 2.1.0 Ok"
            raw.close()

    run(main())


def test_a_multi_line_reply_is_one_write(tmp_path: Path) -> None:
    """nmap's smtp-open-relay reads one segment per reply: an EHLO reply written line by line made it take the
    tail of the EHLO reply for the answer to RCPT and report an open relay that refused every recipient."""

    async def main() -> None:
        async with relay(tmp_path, 10) as running:
            raw = await Raw.open(running)
            await raw.reply()
            raw.writer.write(b"EHLO client.example\r\n")
            first_read = await asyncio.wait_for(raw.reader.read(65536), WAIT)
            assert first_read.startswith(f"250-{HOSTNAME}\r\n".encode()) and b"\r\n250 " in first_read
            raw.close()

    run(main())


# --- open relay and address forms -----------------------------------------------------------------------------

NMAP_PAIRS = [
    ("<>", f"<relaytest@{EXTERNAL}>"),
    (f"<antispam@{EXTERNAL}>", f"<relaytest@{EXTERNAL}>"),
    (f"<antispam@{HOSTNAME}>", f"<relaytest@{EXTERNAL}>"),
    ("<antispam@[{ip}]>", f"<relaytest@{EXTERNAL}>"),
    ("<antispam@[{ip}]>", f"<relaytest%{EXTERNAL}@[{{ip}}]>"),
    ("<antispam@[{ip}]>", f"<relaytest%{EXTERNAL}@{HOSTNAME}>"),
    ("<antispam@[{ip}]>", f'<"relaytest@{EXTERNAL}">'),
    ("<antispam@[{ip}]>", f'<"relaytest%{EXTERNAL}">'),
    ("<antispam@[{ip}]>", f"<relaytest@{EXTERNAL}@[{{ip}}]>"),
    ("<antispam@[{ip}]>", f'<"relaytest@{EXTERNAL}"@[{{ip}}]>'),
    ("<antispam@[{ip}]>", f"<relaytest@{EXTERNAL}@{HOSTNAME}>"),
    ("<antispam@[{ip}]>", f"<@[{{ip}}]:relaytest@{EXTERNAL}>"),
    ("<antispam@[{ip}]>", f"<@{HOSTNAME}:relaytest@{EXTERNAL}>"),
    ("<antispam@[{ip}]>", f"<{EXTERNAL}!relaytest>"),
    ("<antispam@[{ip}]>", f"<{EXTERNAL}!relaytest@[{{ip}}]>"),
    ("<antispam@[{ip}]>", f"<{EXTERNAL}!relaytest@{HOSTNAME}>"),
]
# mail-abuse.org and DSBL forms, RR-02 and RR-05-RR-07 recipients, each after a valid sender.
MORE_RECIPIENTS = [
    '<"nobody@mail-abuse.org">',
    "listme@dsbl.org",
    '<"listme%dsbl.org">',
    '<""listme@dsbl.org""@contoso.com>',
    "<@contoso.com:listme@dsbl.org>",
    "<victim%evil.example@contoso.com>",
    "<evil.example!victim@contoso.com>",
    '<"victim@evil.example"@contoso.com>',
    '<"victim%evil.example"@contoso.com>',
    "<u@[127.0.0.1]>",
    "<u@[IPv6:::1]>",
    "<u@10.0.0.5>",
    "<u@[10.0.0.1.evil]>",
    "<@evil.example:john@contoso.com>",
    "<relaytest>",
    "<john(comment)@contoso.com>",
    "<john@contoso.com.>",
    "<john@contoso.com.evil.net>",
    "<john@notcontoso.com>",
]


@pytest.mark.parametrize("role", list(RelayRole))
def test_no_open_relay_for_nmap_and_classic_forms(tmp_path: Path, role: RelayRole) -> None:
    """RR-01, RR-02, RR-05-RR-07: every form is refused with 5xx at RCPT time (or its MAIL is), per role."""
    octet = {RelayRole.CLOUD: 11, RelayRole.ON_PREMISES: 12, RelayRole.INTERNET: 13}[role]

    async def main() -> None:
        async with relay(tmp_path, octet, role=role) as running:
            raw = await Raw.session(running)
            pairs = [(m.replace("{ip}", running.ip), r.replace("{ip}", running.ip)) for m, r in NMAP_PAIRS]
            pairs += [(f"<antispam@{EXTERNAL}>", rcpt) for rcpt in MORE_RECIPIENTS]
            for mail_from, rcpt in pairs:
                await raw.command(f"MAIL FROM:{mail_from}".encode())
                reply = await raw.command(f"RCPT TO:{rcpt}".encode())
                assert reply[:1] == b"5", (mail_from, rcpt, reply)
                assert await raw.command(b"RSET") == b"250 OK"
            # The relay's own recipient works in the same session.
            assert await raw.command(b"MAIL FROM:<antispam@relay-test.example>") == b"250 2.1.0 Ok"
            local = LOCAL_RECIPIENT[role].encode()
            assert await raw.command(b"RCPT TO:<" + local + b">") == b"250 2.1.5 OK"
            raw.close()
            assert running.stored() == []

    run(main())


def test_raw_path_is_checked_as_well_as_the_parsed_one(tmp_path: Path) -> None:
    """RR-06, RR-20, RR-21, RR-23: what aiosmtpd's parser would repair or drop is refused, without echo."""

    async def main() -> None:
        async with relay(tmp_path, 14) as running:
            raw = await Raw.session(running)
            assert await raw.command(b"MAIL FROM:<a@external.example>") == b"250 2.1.0 Ok"
            # The stdlib parser turns this into john@contoso.com; the source route is refused instead.
            assert await raw.command(b"RCPT TO:<@evil.example:john@contoso.com>") == (
                b"553 5.1.3 Source routes are not accepted; give only the final mailbox"
            )
            assert await raw.command(b'RCPT TO:<"a\rRCPT TO:<victim@evil.example>"@contoso.com>') == (
                b"553 5.1.3 Bad recipient address syntax"
            )
            assert await raw.command(b"RCPT TO:<" + b"a" * 65 + b"@contoso.com>") == (
                b"553 5.1.3 The local part of the recipient address is longer than 64 characters"
            )
            assert await raw.command("RCPT TO:<jöhn@contoso.com>".encode()) == b"500 Error: strict ASCII mode"
            assert await raw.command(b"NOOP " + b"x" * 600) == b"500 Command line too long"
            assert await raw.command(b"RCPT TO:<x@contoso.com> NOTIFY=NEVER") == (
                b"555 RCPT TO parameters not recognized or not implemented"  # RR-22
            )
            assert await raw.command(b"RCPT TO:<john@contoso.com>") == b"250 2.1.5 OK"
            assert await raw.command(b"MAIL FROM:<x@[127.0.0.1]>") == b"503 Error: nested MAIL command"
            assert await raw.command(b"RSET") == b"250 OK"
            assert await raw.command(b"MAIL FROM:<x\x01@external.example>") == b"553 5.1.7 Bad sender address syntax"
            raw.close()

    run(main())


# --- smuggling and pipelining ---------------------------------------------------------------------------------

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
    b"MAIL FROM:<smuggled@evil.example>\r\nRCPT TO:<john@contoso.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n"
)


@pytest.mark.parametrize("name", VARIANTS)
def test_smuggling_variant_yields_at_most_one_message(tmp_path: Path, name: str) -> None:
    """RR-30-RR-32, RR-36: one reply after the real end of data, never a second transaction; content with a
    bare CR, bare LF or NUL is refused and nothing is stored."""

    async def main() -> None:
        async with relay(tmp_path, 20) as running:
            raw = await Raw.session(running)
            assert await raw.command(b"MAIL FROM:<real@external.example>") == b"250 2.1.0 Ok"
            assert await raw.command(b"RCPT TO:<john@contoso.com>") == b"250 2.1.5 OK"
            assert (await raw.command(b"DATA")).startswith(b"354 ")
            raw.writer.write(b"Subject: test\r\n\r\nhello" + VARIANTS[name] + SMUGGLED)
            reply = await raw.reply()
            raw.writer.write(b"QUIT\r\n")
            assert await raw.rest() == b"221 Bye\r\n"  # no replies to smuggled commands
            stored = running.stored()
            if name == "crlf.":
                # "\r\n.MAIL FROM..." is a dot-stuffed body line: one message, the smuggled text in its body.
                assert reply.startswith(b"250 2.0.0 Ok: queued as ")
                ((envelope, content),) = stored
                assert envelope.mail_from == "real@external.example"
                assert b"\r\nMAIL FROM:<smuggled@evil.example>\r\n" in content
            else:
                assert reply.startswith(b"550 5.6.11 Message refused: it contains ")
                assert stored == []

    run(main())


def test_command_ending_in_bare_lf_ends_the_session(tmp_path: Path) -> None:
    """RR-33: aiosmtpd would take LF alone as the end of a command; the relay closes with 421 instead."""

    async def main() -> None:
        async with relay(tmp_path, 21) as running:
            raw = await Raw.open(running)
            assert (await raw.reply()).startswith(b"220 ")
            raw.writer.write(b"EHLO client.example\nMAIL FROM:<a@external.example>\n")
            assert await raw.rest() == b"421 4.5.2 Error: bare <LF> received; lines must end with <CR><LF>\r\n"
            raw = await Raw.session(running)
            assert await raw.command(b"MAIL FROM:<a@external.example>") == b"250 2.1.0 Ok"
            raw.writer.write(b"RCPT TO:<john@contoso.com>\n")
            assert await raw.rest() == b"421 4.5.2 Error: bare <LF> received; lines must end with <CR><LF>\r\n"

    run(main())


def test_content_sent_before_354_ends_the_session(tmp_path: Path) -> None:
    """RR-34: content pipelined with DATA gets 554 5.5.0 and a closed connection, nothing stored, and is never
    run as commands, also when DATA itself would be refused."""

    async def main() -> None:
        async with relay(tmp_path, 22) as running:
            raw = await Raw.session(running)
            raw.writer.write(
                b"MAIL FROM:<a@external.example>\r\nRCPT TO:<john@contoso.com>\r\nDATA\r\n"
                b"Subject: x\r\n\r\nbody\r\n.\r\n"
            )
            assert await raw.rest() == (
                b"250 2.1.0 Ok\r\n250 2.1.5 OK\r\n554 5.5.0 Error: SMTP protocol synchronization\r\n"
            )
            raw = await Raw.session(running)
            raw.writer.write(
                f"MAIL FROM:<a@external.example>\r\nRCPT TO:<x@{EXTERNAL}>\r\nDATA\r\n".encode()
                + SMUGGLED.replace(b"smuggled@", b"stuffed@")
            )
            assert await raw.rest() == (
                b"250 2.1.0 Ok\r\n" + RELAY_DENIED.encode() + b"\r\n554 5.5.0 Error: SMTP protocol synchronization\r\n"
            )
            assert running.stored() == []

    run(main())


def test_second_transaction_pipelined_after_the_dot_is_not_stored(tmp_path: Path) -> None:
    """smtpsmug's "pipelining" test: the first message is queued, the stuffed one is not."""

    async def main() -> None:
        async with relay(tmp_path, 23) as running:
            raw = await Raw.session(running)
            assert await raw.command(b"MAIL FROM:<real@external.example>") == b"250 2.1.0 Ok"
            assert await raw.command(b"RCPT TO:<john@contoso.com>") == b"250 2.1.5 OK"
            assert (await raw.command(b"DATA")).startswith(b"354 ")
            raw.writer.write(b"Subject: one\r\n\r\nbody\r\n.\r\n" + SMUGGLED)
            replies = (await raw.rest()).split(b"\r\n")
            assert replies[0].startswith(b"250 2.0.0 Ok: queued as ")
            assert replies[1:] == [
                b"250 2.1.0 Ok",
                b"250 2.1.5 OK",
                b"554 5.5.0 Error: SMTP protocol synchronization",
                b"",
            ]
            ((envelope, _),) = running.stored()
            assert envelope.mail_from == "real@external.example"

    run(main())


# --- limits ---------------------------------------------------------------------------------------------------


def test_message_transfers_in_progress_are_capped(tmp_path: Path) -> None:
    """RR-53: aiosmtpd holds a message in memory while it arrives; only data_sessions transfers run at once."""
    limits = Limits(data_sessions=1, data_wait=0.3, session_timeout=WAIT * 2)

    async def ready(running: Running) -> Raw:
        raw = await Raw.open(running)
        await raw.reply()
        for line in (b"EHLO client.example", b"MAIL FROM:<a@external.example>", b"RCPT TO:<john@contoso.com>"):
            assert (await raw.command(line)).startswith(b"250")
        return raw

    async def main() -> None:
        async with relay(tmp_path, 31, limits=limits) as running:
            first, second = await ready(running), await ready(running)
            assert await first.command(b"DATA") == b"354 End data with <CR><LF>.<CR><LF>"
            assert await second.command(b"DATA") == b"451 4.3.2 Too many messages in transfer, try again later"
            first.writer.write(b"Subject: one\r\n\r\nbody\r\n.\r\n")
            assert (await first.reply()).startswith(b"250 2.0.0 Ok: queued as ")
            # The transfer slot is free again for the waiting client, in the same session.
            assert await second.command(b"DATA") == b"354 End data with <CR><LF>.<CR><LF>"
            second.writer.write(b"Subject: two\r\n\r\nbody\r\n.\r\n")
            assert (await second.reply()).startswith(b"250 2.0.0 Ok: queued as ")
            first.close()
            second.close()

    run(main())


def test_connection_caps_total_and_per_ip(tmp_path: Path) -> None:
    """RR-50: 421 4.7.0 and close beyond connections_per_ip from one address and beyond connections in all."""
    limits = Limits(connections=3, connections_per_ip=2, session_timeout=WAIT * 2)

    async def greeting(running: Running, source: str) -> tuple[Raw, bytes]:
        raw = await Raw.open(running, source)
        return raw, await raw.reply()

    async def main() -> None:
        async with relay(tmp_path, 30, limits=limits) as running:
            a1, first = await greeting(running, "127.0.84.1")
            a2, second = await greeting(running, "127.0.84.1")
            assert first.startswith(b"220 ") and second.startswith(b"220 ")
            a3, third = await greeting(running, "127.0.84.1")
            assert third == b"421 4.7.0 Too many connections" and await a3.rest() == b""
            b1, other_ip = await greeting(running, "127.0.84.2")
            assert other_ip.startswith(b"220 ")
            c1, over_total = await greeting(running, "127.0.84.3")
            assert over_total == b"421 4.7.0 Too many connections"
            # A freed slot is given out again once the server has seen the connection go.
            assert await a1.command(b"QUIT") == b"221 Bye"
            a1.close()
            for _ in range(100):
                again, line = await greeting(running, "127.0.84.1")
                again.close()
                if line.startswith(b"220 "):
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("the freed connection slot was never given out again")
            for raw in (a2, b1, c1):
                raw.close()

    run(main())


def test_size_limit_at_mail_and_at_data(tmp_path: Path) -> None:
    """RR-21, RR-38: SIZE above the limit → 552 at MAIL; a larger DATA → 552 after it, nothing stored."""
    limits = Limits(message_size=2000, session_timeout=WAIT * 2)

    async def main() -> None:
        async with relay(tmp_path, 31, limits=limits) as running:
            raw = await Raw.open(running)
            await raw.reply()
            raw.writer.write(b"EHLO client.example\r\n")
            assert b"250-SIZE 2000\r\n" in await raw.lines()
            assert await raw.command(b"MAIL FROM:<a@external.example> SIZE=2001") == (
                b"552 5.3.4 Message size exceeds fixed maximum message size"
            )
            assert await raw.command(b"MAIL FROM:<a@external.example> SIZE=2000") == b"250 2.1.0 Ok"
            assert await raw.command(b"RCPT TO:<john@contoso.com>") == b"250 2.1.5 OK"
            assert (await raw.command(b"DATA")).startswith(b"354 ")
            raw.writer.write(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 40)
            assert await raw.command(b".") == b"552 5.3.4 Message size exceeds fixed maximum message size"
            # RR-38: a 1001-octet line is aiosmtpd's; a 999-octet one is ours (RFC 5322 §2.1.1).
            assert await raw.command(b"MAIL FROM:<a@external.example>") == b"250 2.1.0 Ok"
            assert await raw.command(b"RCPT TO:<john@contoso.com>") == b"250 2.1.5 OK"
            assert (await raw.command(b"DATA")).startswith(b"354 ")
            raw.writer.write(b"Subject: long\r\n\r\n" + b"y" * 999 + b"\r\n")
            assert await raw.command(b".") == (
                b"550 5.6.0 Message refused: a line is longer than 998 characters (RFC 5322 section 2.1.1)"
            )
            raw.close()
            assert running.stored() == []

    run(main())


def test_recipient_cap(tmp_path: Path) -> None:
    """RR-21: recipients beyond the limit get 452 4.5.3; the accepted ones are queued."""
    limits = Limits(recipients=3, session_timeout=WAIT * 2)

    async def main() -> None:
        async with relay(tmp_path, 32, limits=limits) as running:
            raw = await Raw.session(running)
            assert await raw.command(b"MAIL FROM:<a@external.example>") == b"250 2.1.0 Ok"
            for user in (b"a", b"b", b"c"):
                assert await raw.command(b"RCPT TO:<" + user + b"@fabrikam.com>") == b"250 2.1.5 OK"
            assert await raw.command(b"RCPT TO:<d@fabrikam.com>") == b"452 4.5.3 Too many recipients"
            assert (await raw.command(b"DATA")).startswith(b"354 ")
            assert (await raw.command(b"Subject: x\r\n\r\nbody\r\n.")).startswith(b"250 2.0.0 Ok: queued as ")
            raw.close()
            ((envelope, content),) = running.stored()
            assert envelope.rcpt_tos == ("a@fabrikam.com", "b@fabrikam.com", "c@fabrikam.com")
            assert b"\tby cloud.lab.example with ESMTP id " in content and b"for <" not in content

    run(main())


# --- storage failures -----------------------------------------------------------------------------------------


class FullSpool(Spool):
    """No room left, for a message stored on its own (a large one) and for a batch; which was asked is noted."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.asked: list[str] = []

    def store(self, envelope: Envelope, content: bytes, *, qid: str | None = None) -> str:
        self.asked.append("alone")
        raise OSError(errno.ENOSPC, "No space left on device")

    def store_batch(self, messages: Sequence[tuple[str, Envelope, bytes]]) -> str:
        self.asked.append("batched")
        raise OSError(errno.ENOSPC, "No space left on device")


class BrokenSpool(Spool):
    def store_batch(self, messages: Sequence[tuple[str, Envelope, bytes]]) -> str:
        raise RuntimeError("secret detail /var/lib/diag/spool")


class SlowJournal(Journal):
    """Blocks in append() until released: a disk that takes its time to fsync."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.entered = threading.Event()
        self.release = threading.Event()

    def append(self, records: Sequence[tuple[str, bytes]]) -> None:
        self.entered.set()
        assert self.release.wait(WAIT)
        super().append(records)


class SlowSpool(Spool):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.journal = slow = SlowJournal(root / "journal")
        self.entered, self.release = slow.entered, slow.release


def test_slow_clients_filling_every_connection_do_not_lock_a_new_client_out(tmp_path: Path) -> None:
    """Issue 13: 20 connections from each of 10 addresses (the default caps: 200 in all, 20 per address), each
    dripping a byte now and then and never finishing a transaction; a new client is still served, and the
    drippers are told why they go (Postfix's stress mode)."""
    limits = Limits(session_timeout=WAIT * 6, stress_idle=0.5)

    async def main() -> None:
        async with relay(tmp_path, 31, limits=limits) as running:
            drippers = [await Raw.session(running, f"127.0.85.{1 + n // 20}") for n in range(200)]
            last_words = [asyncio.create_task(dripper.reader.readline()) for dripper in drippers]
            # The server is full: without a stress policy the next client would get "421 4.7.0 Too many
            # connections". The drippers keep sending, so a per-read timeout would never end them.
            for _ in range(3):
                for dripper in drippers:
                    if not dripper.writer.is_closing():
                        dripper.writer.write(b"N")
                await asyncio.sleep(0.25)
            raw = await Raw.session(running, "127.0.86.1")
            assert await raw.command(b"MAIL FROM:<a@external.example>") == b"250 2.1.0 Ok"
            assert await raw.command(b"RCPT TO:<john@contoso.com>") == b"250 2.1.5 OK"
            assert (await raw.command(b"DATA")).startswith(b"354 ")
            assert (await raw.command(b"Subject: x\r\n\r\nbody\r\n.")).startswith(b"250 2.0.0 Ok: queued as ")
            assert await raw.command(b"QUIT") == b"221 Bye"
            raw.close()
            # Above the high-water mark (150) the sweep ends idle sessions, with Postfix's reply; below it, the
            # pressure is off and the rest are left to the usual timeout.
            await asyncio.sleep(limits.stress_idle * 2)
            ends = [task.result() for task in last_words if task.done()]
            assert 200 - limits.stress_connections < len(ends) < 200
            assert set(ends) == {b"421 4.4.2 Error: timeout exceeded (idle while the server is busy)\r\n"}
            for task in last_words:
                task.cancel()
            for dripper in drippers:
                dripper.close()
            assert len(running.queued) == 1

    run(main())


def test_under_pressure_a_client_that_finishes_transactions_is_not_idle(tmp_path: Path) -> None:
    """A busy client is kept; a full server of busy clients still refuses the next one (the caps hold)."""
    limits = Limits(connections=2, connections_per_ip=2, session_timeout=WAIT * 2, stress_connections=1,
                    stress_idle=0.6)  # fmt: skip

    async def transaction(raw: Raw) -> None:
        assert await raw.command(b"MAIL FROM:<a@external.example>") == b"250 2.1.0 Ok"
        assert await raw.command(b"RCPT TO:<john@contoso.com>") == b"250 2.1.5 OK"
        assert (await raw.command(b"DATA")).startswith(b"354 ")
        assert (await raw.command(b"Subject: x\r\n\r\nbody\r\n.")).startswith(b"250 2.0.0 ")

    async def main() -> None:
        async with relay(tmp_path, 32, limits=limits) as running:
            busy = [await Raw.session(running, "127.0.87.1") for _ in range(2)]
            for _ in range(4):  # past the idle time, with a finished transaction every 0.25 s
                await asyncio.gather(*(transaction(raw) for raw in busy))
                await asyncio.sleep(0.25)
            late = await Raw.open(running, "127.0.87.2")
            assert await late.reply() == b"421 4.7.0 Too many connections"
            late.close()
            for raw in busy:
                assert await raw.command(b"NOOP") == b"250 OK"
                raw.close()

    run(main())


async def send_one(running: Running, body: bytes = b"body\r\n") -> bytes:
    raw = await Raw.session(running)
    assert await raw.command(b"MAIL FROM:<a@external.example>") == b"250 2.1.0 Ok"
    assert await raw.command(b"RCPT TO:<john@contoso.com>") == b"250 2.1.5 OK"
    assert (await raw.command(b"DATA")).startswith(b"354 ")
    reply = await raw.command(b"Subject: x\r\n\r\n" + body + b".")
    raw.close()
    return reply


@pytest.mark.parametrize("lines", [1, 3000], ids=["batched", "stored alone"])
def test_unwritable_spool_gives_451_and_stores_nothing(tmp_path: Path, lines: int) -> None:
    """RR-55, RR-62: a spool that cannot be written → 451 4.3.0, no 250, no file left behind: the journal for a
    message stored in a batch, tmp/ for one above 256 KB, stored on its own."""
    spool = Spool(tmp_path / "spool")
    directory = spool.journal.directory if lines == 1 else spool.tmp
    os.chmod(directory, 0o555)
    if os.geteuid() == 0:  # root ignores directory permissions: take the directory away instead
        os.chmod(directory, 0o755)
        shutil.rmtree(directory)
        directory.write_text("not a directory")

    async def main() -> None:
        async with relay(tmp_path, 40, spool=spool) as running:
            assert await send_one(running, (b"x" * 100 + b"\r\n") * lines) == (
                b"451 4.3.0 Temporary failure, try again later"
            )
            assert running.queued == []
            assert list(spool.queue.iterdir()) == []

    try:
        run(main())
    finally:
        if directory.is_dir():
            os.chmod(directory, 0o755)


@pytest.mark.parametrize("lines", [1, 3000], ids=["batched", "stored alone"])
def test_full_disk_gives_452(tmp_path: Path, lines: int) -> None:
    """RR-61: ENOSPC → 452 4.3.1 Insufficient system storage, for a message stored in a batch and for one above
    256 KB, stored on its own."""

    spool = FullSpool(tmp_path / "spool")

    async def main() -> None:
        async with relay(tmp_path, 41, spool=spool) as running:
            assert await send_one(running, (b"x" * 100 + b"\r\n") * lines) == b"452 4.3.1 Insufficient system storage"
            assert running.queued == []
            assert spool.asked == ["batched" if lines == 1 else "alone"]

    run(main())


def test_unexpected_error_is_not_leaked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """RR-55: the client gets a generic 451; the details go to the log."""

    async def main() -> None:
        async with relay(tmp_path, 42, spool=BrokenSpool(tmp_path / "spool")) as running:
            assert await send_one(running) == b"451 4.3.0 Temporary failure, try again later"

    with caplog.at_level(logging.ERROR, logger="diag.relay"):
        run(main())
    assert "secret detail" in caplog.text


def test_slow_disk_does_not_stall_other_sessions(tmp_path: Path) -> None:
    """RR-56: while one message is being written, other clients are greeted and served."""
    spool = SlowSpool(tmp_path / "spool")

    async def main() -> None:
        async with relay(tmp_path, 43, spool=spool) as running:
            writing = asyncio.create_task(send_one(running))
            assert await bounded(asyncio.to_thread(spool.entered.wait, WAIT))
            other = await Raw.session(running)
            assert await other.command(b"NOOP") == b"250 OK"
            other.close()
            assert not writing.done()  # no 250 before the write returned
            spool.release.set()
            assert (await bounded(writing)).startswith(b"250 2.0.0 Ok: queued as ")
            assert len(running.queued) == 1

    try:
        run(main())
    finally:
        spool.release.set()


class FailingJournal(Journal):
    """A disk that fails the journal's write: every append raises EIO."""

    def append(self, records: Sequence[tuple[str, bytes]]) -> None:
        raise OSError(errno.EIO, "Input/output error")


def test_a_message_is_in_the_journal_alone_before_its_checkpoint_and_in_the_queue_alone_after_a_clean_stop(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with relay(tmp_path, 44) as running:
            assert (await send_one(running)).startswith(b"250 2.0.0 Ok: queued as ")
            (qid,) = running.queued
            (segment,) = running.spool.journal.segments()
            assert [q for q, _ in read_segment(segment).records] == [qid]
            assert running.spool.messages() == [] and list(running.spool.tmp.iterdir()) == []  # no file yet
        # Stopped: the segment was checkpointed (its message written to its queue file, fsynced) and deleted
        assert running.spool.journal.segments() == [] and [m.qid for m in running.spool.messages()] == [qid]

    run(main())


def test_a_checkpoint_names_the_queue_files_it_wrote_to_delivery(tmp_path: Path) -> None:
    """No deliverer here: the message is not delivered, so the checkpoint at the stop writes its queue file, and
    says so (delivery then reads it from there)."""
    checkpointed: list[str] = []

    async def main() -> None:
        async with relay(tmp_path, 47, on_checkpoint=checkpointed.extend) as running:
            assert (await send_one(running)).startswith(b"250 ")
        async with asyncio.timeout(WAIT):
            while not checkpointed:  # noqa: ASYNC110 - the checkpoint thread tells the loop, in a moment
                await asyncio.sleep(0.01)
        assert checkpointed == running.queued == [m.qid for m in running.spool.messages()]

    run(main())


def test_an_idle_intake_checkpoints_its_segment(tmp_path: Path) -> None:
    async def main() -> None:
        async with relay(tmp_path, 45) as running:
            assert (await send_one(running)).startswith(b"250 ")
            assert len(running.spool.journal.segments()) == 1
            async with asyncio.timeout(SEGMENT_AGE + WAIT):
                while running.spool.journal.segments():  # noqa: ASYNC110 - a directory has no change notification
                    await asyncio.sleep(0.05)
            assert len(running.spool.messages()) == 1

    run(main())


def test_a_journal_that_cannot_be_written_refuses_the_message_and_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.journal = FailingJournal(spool.journal.directory)

    async def main() -> None:
        async with relay(tmp_path, 46, spool=spool) as running:
            assert await send_one(running) == b"451 4.3.0 Temporary failure, try again later"
            assert running.queued == [] and spool.messages() == [] and list(spool.tmp.iterdir()) == []

    run(main())


# --- a plain mail host: catch-all domains kept in one Maildir ------------------------------------------------


def plain_host(tmp_path: Path, octet: int, **overrides: Any) -> RelaySettings:
    """A plain receiving host: the internet role, every address of sun.example kept in ``tmp_path / "kept"``."""
    values: dict[str, Any] = {
        "organization": ORG, "role": RelayRole.INTERNET, "hostname": "mx.sun.example",
        "listen": ((NET + str(octet), 0),), "spool": tmp_path / "spool", "maildir": tmp_path / "kept",
        "catch_all": ("sun.example",), "limits": Limits(session_timeout=WAIT * 2),
    }  # fmt: skip
    values.update(overrides)
    return RelaySettings(**values)


def plain_client(server: RelayServer) -> aiosmtplib.SMTP:
    ip, port = server.addresses[0]
    return aiosmtplib.SMTP(
        hostname=ip, port=port, start_tls=False, timeout=WAIT, source_address=(CLIENT, 0),
        local_hostname="client.example",
    )  # fmt: skip


def kept(maildir: Path) -> list[bytes]:
    box = mailbox.Maildir(maildir, factory=None, create=False)
    return [box.get_bytes(key) for key in box.keys()]


def test_catch_all_mail_is_kept_in_the_maildir_before_250(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """RFC 5321 §6.1 as for queued mail; §4.4: final delivery adds the Return-Path. Nothing is queued."""
    settings = plain_host(tmp_path, 70, ident="ESMTP lab host")

    async def main() -> None:
        async with RelayServer(settings, None) as server:
            smtp = plain_client(server)
            banner = await smtp.connect()
            assert (banner.code, banner.message) == (220, "mx.sun.example ESMTP lab host")
            errors, reply = await smtp.sendmail(
                "probe@external.example", ["Alice@SUN.example", "bob@sun.example"], message("a@sun.example").as_bytes()
            )
            assert (errors, reply) == ({}, "2.0.0 Ok: queued")
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
                await smtp.sendmail("probe@external.example", [f"a@{EXTERNAL}"], b"Subject: x\r\n\r\nx\r\n")
            assert [(r.code, r.message) for r in refused.value.recipients] == [(554, "5.7.1 Relay access denied")]
            await smtp.quit()

    with caplog.at_level(logging.INFO, logger="diag.relay"):
        run(main())
    (content,) = kept(tmp_path / "kept")
    assert re.match(
        rb"Return-Path: <probe@external\.example>\r\n"
        rb"Received: from client\.example \(\[127\.0\.84\.1\]\)\r\n"
        rb"\tby mx\.sun\.example with ESMTP id [0-9a-f]+; \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\n"
        rb"From: probe@external\.example\r\n",
        content,
    )
    assert not settings.spool.exists()
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("kept ")]
    assert re.fullmatch(
        r"kept id=[0-9a-f]+ from=<probe@external\.example> to=<Alice@SUN\.example>,<bob@sun\.example> "
        r"size=\d+ peer=127\.0\.84\.1 tls=none",
        line,
    )


def test_one_message_for_kept_and_queued_recipients_is_both(tmp_path: Path) -> None:
    settings = plain_host(tmp_path, 71, mailboxes=("sun@moon.example",))
    spool = Spool(settings.spool)
    queued: list[str] = []

    async def main() -> None:
        async with RelayServer(settings, spool, on_queued=lambda qid, _env, _data, _seg: queued.append(qid)) as server:
            smtp = plain_client(server)
            await smtp.connect()
            _, reply = await smtp.sendmail(
                "", ["a@sun.example", "sun@moon.example"], message("a@sun.example").as_bytes()
            )
            await smtp.quit()
            assert reply == f"2.0.0 Ok: queued as {queued[0]}"

    run(main())
    (stored,) = spool.messages()
    assert stored.envelope.rcpt_tos == ("sun@moon.example",)
    # The same message with the same Received line; the queued copy is still on its way: no Return-Path yet.
    assert kept(tmp_path / "kept") == [b"Return-Path: <>\r\n" + spool.content(stored.qid)]
    assert spool.content(stored.qid).startswith(b"Received: ")


def test_a_maildir_that_cannot_be_written_gives_451(tmp_path: Path) -> None:
    """RR-55: the failure is temporary and the session goes on."""
    blocker = tmp_path / "blocker"
    blocker.write_text("the Maildir's parent is a file\n")
    settings = plain_host(tmp_path, 72, maildir=blocker / "kept")

    async def main() -> None:
        async with RelayServer(settings, None) as server:
            smtp = plain_client(server)
            await smtp.connect()
            with pytest.raises(aiosmtplib.SMTPDataError) as failed:
                await smtp.sendmail("a@external.example", ["a@sun.example"], b"Subject: x\r\n\r\nx\r\n")
            assert (failed.value.code, failed.value.message) == (451, "4.3.0 Temporary failure, try again later")
            assert (await smtp.noop()).code == 250
            smtp.close()

    run(main())


def test_only_a_server_that_queues_nothing_may_do_without_a_spool(tmp_path: Path) -> None:
    RelayServer(plain_host(tmp_path, 73), None)
    for may_queue in ({"mailboxes": ("sun@moon.example",)}, {"relay_networks": ("127.0.84.0/24",)},
                      {"role": RelayRole.CLOUD}):  # fmt: skip
        with pytest.raises(ConfigError, match="needs a spool"):
            RelayServer(plain_host(tmp_path, 73, **may_queue), None)


@pytest.mark.parametrize("traced", [True, False])
def test_trace_networks_keep_their_trace_headers(tmp_path: Path, traced: bool) -> None:
    """The lab's hosts keep every hop's X-Diag-Trace; other clients' copies are dropped (no forged routes)."""
    settings = plain_host(tmp_path, 74, trace_networks=("127.0.84.0/24",) if traced else ())

    async def main() -> None:
        async with RelayServer(settings, None) as server:
            smtp = plain_client(server)
            await smtp.connect()
            msg = message("a@sun.example", extra={"X-Diag-Trace": "hop=upstream"})
            await smtp.sendmail("a@external.example", ["a@sun.example"], msg.as_bytes())
            await smtp.quit()

    run(main())
    (content,) = kept(tmp_path / "kept")
    assert (b"\r\nX-Diag-Trace: hop=upstream\r\n" in content) is traced


def test_a_plain_host_can_play_an_outdated_one(pki: TestPKI, tmp_path: Path) -> None:
    """TLS 1.0-1.1 only, an RSA-1024 key (OpenSSL level 0), and no client certificate asked for: a client with
    one from a CA the host does not know still completes the handshake."""
    cert, key = pki.issue(["mx.sun.example"], kind=CertKind.WEAK_KEY).write(tmp_path, "weak")
    settings = plain_host(
        tmp_path, 75, tls_cert=cert, tls_key=key, legacy_crypto=True, client_certificates=False,
        tls_versions=(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1),
    )  # fmt: skip
    legacy = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    legacy.check_hostname = False
    legacy.verify_mode = ssl.CERT_NONE
    legacy.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 are deprecated: that is the point
        legacy.minimum_version = ssl.TLSVersion.TLSv1
    foreign_chain, foreign_key = TestPKI.create(org="someone else").issue(["client.example"]).write(tmp_path, "c")
    legacy.load_cert_chain(foreign_chain, foreign_key)

    async def main() -> None:
        async with RelayServer(settings, None) as server:
            smtp = plain_client(server)
            await smtp.connect()
            with pytest.raises((ssl.SSLError, aiosmtplib.SMTPException, ConnectionError)):
                await smtp.starttls(server_hostname="mx.sun.example", tls_context=client_context(pki, tmp_path))
            smtp.close()
            smtp = plain_client(server)
            await smtp.connect()
            await smtp.starttls(server_hostname="mx.sun.example", tls_context=legacy)
            assert smtp.get_transport_info("ssl_object").version() == "TLSv1.1"
            await smtp.sendmail("a@external.example", ["a@sun.example"], b"Subject: x\r\n\r\nx\r\n")
            await smtp.quit()

    run(main())
    (content,) = kept(tmp_path / "kept")
    assert b"with ESMTPS (TLSv1.1 " in content, content


# --- start and close ------------------------------------------------------------------------------------------


def test_close_is_prompt_with_idle_clients(tmp_path: Path) -> None:
    """close() aborts idle sessions and one in the middle of DATA, and stops listening."""

    async def main() -> None:
        async with relay(tmp_path, 50) as running:
            address = (running.ip, running.port)
            idle = [await Raw.session(running) for _ in range(3)]
            in_data = await Raw.session(running)
            assert await in_data.command(b"MAIL FROM:<a@external.example>") == b"250 2.1.0 Ok"
            assert await in_data.command(b"RCPT TO:<john@contoso.com>") == b"250 2.1.5 OK"
            assert (await in_data.command(b"DATA")).startswith(b"354 ")
            in_data.writer.write(b"Subject: never finished\r\n")
            await bounded(running.server.close())
            for raw in (*idle, in_data):
                assert await raw.rest() == b""
                raw.close()
            with pytest.raises(OSError):
                await bounded(asyncio.open_connection(*address))
            assert running.stored() == []

    run(main())


def test_start_fails_cleanly_on_a_bad_address_or_certificate(tmp_path: Path, tls: Tls) -> None:
    async def main() -> None:
        base = RelaySettings(
            organization=ORG,
            role=RelayRole.CLOUD,
            hostname=HOSTNAME,
            listen=((NET + "60", 0), ("192.0.2.1", 0)),  # TEST-NET-1 is not ours to bind
            spool=tmp_path / "spool",
            maildir=tmp_path / "mail",
        )
        server = RelayServer(base, Spool(base.spool))
        with pytest.raises(OSError, match=r"cannot listen on 192\.0\.2\.1:0"):
            await server.start()
        assert server.addresses == ()
        broken = replace(base, listen=((NET + "60", 0),), tls_cert=tls.key, tls_key=tls.key)
        with pytest.raises(ConfigError, match="cannot load its TLS certificate"):
            await RelayServer(broken, Spool(base.spool)).start()
        # An encrypted key: one clear line, never a passphrase prompt (the relay runs unattended)
        encrypted = tmp_path / "encrypted.key"
        key = serialization.load_pem_private_key(tls.key.read_bytes(), password=None)
        encrypted.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ))  # fmt: skip
        locked = replace(base, listen=((NET + "60", 0),), tls_cert=tls.cert, tls_key=encrypted)
        with pytest.raises(ConfigError, match=r"encrypted\.key is encrypted: give an unencrypted key"):
            await RelayServer(locked, Spool(base.spool)).start()

    run(main())


def test_the_fast_path_parse_of_plain_paths_is_aiosmtpds() -> None:
    """The relay parses <local@domain> paths itself; for every path it takes (a varied, seeded corpus, about half
    of it plain) address and parameters are what aiosmtpd's own parser gives, the local-part limit included."""
    rnd = random.Random(5321)
    atext = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
    odd = atext + '.()<>"[]\\ @,;:'
    printable = "".join(chr(code) for code in range(0x21, 0x7F))

    def word(chars: str, longest: int = 6) -> str:
        if rnd.random() < 0.03:  # an RFC 2047 encoded word, which aiosmtpd's parser decodes
            return f"=?utf-8?q?{rnd.choice(['sink', 'a_b', '=40', 'x'])}?="
        return "".join(rnd.choice(chars) for _ in range(rnd.randint(1, longest)))

    async def scenario() -> None:
        ours = _RelaySMTP(object(), Connections(1), asyncio.Semaphore(1), 1.0, hostname="parse.test")
        theirs = SMTP(object(), hostname="parse.test")
        theirs.local_part_limit = ours.local_part_limit
        taken = 0
        for _ in range(20000):
            local = ".".join(
                word(atext if rnd.random() < 0.9 else odd, 70 if rnd.random() < 0.05 else 6)
                for _ in range(rnd.randint(1, 3))
            )
            domain = ".".join(
                word(string.ascii_letters + string.digits + "-" if rnd.random() < 0.9 else odd)
                for _ in range(rnd.randint(1, 3))
            )
            params = "".join(
                rnd.choice([" ", "\t", "  ", ""]) + word(printable if rnd.random() < 0.5 else "SIZEBODY=0123")
                for _ in range(rnd.randint(0, 3))
            )
            path = f"<{local}@{domain}>{params}".strip()
            plain = _PLAIN_PATH.fullmatch(path) is not None
            taken += plain
            try:
                expected = theirs._getaddr(path)
            except Exception as error:  # the email package's parser fails on some domain literals
                assert not plain, path
                with pytest.raises(type(error)):
                    ours._getaddr(path)
                continue
            assert ours._getaddr(path) == expected, path
        assert taken > 5000  # the fast path is exercised, not only the fallback
        assert ours._getaddr("<" + "a" * 65 + "@example.com>") == (None, None)
        assert ours._getaddr("<a@example.com> SIZE=10") == ("a@example.com", "SIZE=10")
        assert ours._getaddr("<=?utf-8?q?sink?=@example.com>") == ("sink@example.com", "")

    asyncio.run(scenario())
