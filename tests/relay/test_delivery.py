"""Tests of delivery: real SMTP servers, a real DNS server and a real spool on loopback, no mocks.

Receivers are the lab's MAIL hosts (aiosmtpd, Maildir) or :class:`Sink`, a scripted server written here for
what a well-behaved host never does (per-recipient refusals, 421 or a hang-up after the final dot) and for
seeing exactly which commands arrived. Each test has its own 127.91.N.0/24 and one shared SMTP port.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import itertools
import logging
import mailbox
import re
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import pytest

from diag.config import RelayRole, parse_config
from diag.lab.dns import Behaviour, DnsServer, ZoneData
from diag.lab.pki import CertKind, TestPKI
from diag.lab.smtp import HostKind, LabHost, LabHostServer, TlsFiles, start_host
from diag.net.dns import Nameserver, Resolver
from diag.relay.dsn import bounce
from diag.relay.journal import read_done
from diag.relay.mailbox import deliver_local
from diag.relay.queue import Deliverer
from diag.relay.settings import Limits, RelaySettings
from diag.relay.spool import Envelope, QueuedMessage, RecipientState, RecipientStatus, Spool

T = TypeVar("T")

DEADLINE = 30.0
SENDER = "alice@contoso.com"
CONTENT = (
    b"Received: from client.test ([127.0.0.9]) by relay.test with ESMTP; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"From: Alice <alice@contoso.com>\r\n"
    b"Subject: connector test\r\n"
    b"Message-ID: <test-1@contoso.com>\r\n"
    b"\r\n"
    b"Hello.\r\n"
)
LIMITS = Limits(
    operation_timeout=5.0,
    retry_base=timedelta(minutes=5),
    retry_max=timedelta(hours=1),
    max_age=timedelta(days=5),
    queue_scan=0.1,
)
ACCEPTED = '[[AcceptedDomain]]\nDomainName = "contoso.com"\n'
TLS_KINDS = ("plain", "selfsigned", "chainless", "wrongname", "good")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, DEADLINE))


def connector(name: str, domain: str, host: str, tls: str | None = None, tls_domain: str | None = None) -> str:
    lines = [
        "[[OutboundConnector]]",
        f'Name = "{name}"',
        f'RecipientDomains = ["{domain}"]',
        "UseMXRecord = false",
        f'SmartHosts = ["{host}"]',
    ]
    if tls:
        lines.append(f'TlsSettings = "{tls}"')
    if tls_domain:
        lines.append(f'TlsDomain = "{tls_domain}"')
    return "\n".join(lines) + "\n"


# --- the world of one test -------------------------------------------------------------------------------------


class Sink:
    """A scripted SMTP server: EHLO (no STARTTLS), MAIL, RCPT answered from ``rcpt``, DATA answered with
    ``after_dot`` (None: hang up instead). With ``greet=False`` it accepts and never says a word; with
    ``one_message`` it hangs up after its reply to the first message; ``rset`` is its reply to RSET.
    It records every command line and every message it received."""

    def __init__(self, *, rcpt: dict[str, str] | None = None, after_dot: str | None = "250 2.0.0 Ok: queued",
                 greet: bool = True, one_message: bool = False, rset: str = "250 2.0.0 Ok") -> None:  # fmt: skip
        self.rcpt = rcpt or {}
        self.after_dot = after_dot
        self.greet = greet
        self.one_message = one_message
        self.rset = rset
        self.commands: list[str] = []
        self.messages: list[bytes] = []
        self.connections = 0
        self.connected = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self, ip: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, ip, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.connected.set()
        self._writers.add(writer)
        try:
            if not self.greet:
                await reader.read()
                return
            writer.write(b"220 sink.test ESMTP\r\n")
            while line := await reader.readline():
                command = line.decode("ascii", "replace").rstrip("\r\n")
                self.commands.append(command)
                verb = command[:4].upper()
                if verb == "EHLO":
                    writer.write(b"250-sink.test\r\n250 8BITMIME\r\n")
                elif verb == "MAIL":
                    writer.write(b"250 2.1.0 Ok\r\n")
                elif verb == "RCPT":
                    address = command.partition("<")[2].rpartition(">")[0]
                    writer.write(self.rcpt.get(address, "250 2.1.5 Ok").encode() + b"\r\n")
                elif verb == "DATA":
                    writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    data = bytearray()
                    while (chunk := await reader.readline()) not in (b".\r\n", b""):
                        data += chunk
                    self.messages.append(bytes(data))
                    if self.after_dot is None:
                        return  # hang up without a reply: the client cannot know whether the message arrived
                    writer.write(self.after_dot.encode() + b"\r\n")
                    if self.one_message:
                        await writer.drain()
                        return  # hang up, as a server closing an idle session does: the client learns it late
                elif verb == "QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    writer.write(self.rset.encode() + b"\r\n" if verb == "RSET" else b"502 5.5.2 Not implemented\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


class World:
    """A DNS server, SMTP hosts sharing one port, the PKI's files and the relay's spool."""

    def __init__(self, tmp: Path, net: str, pki: TestPKI) -> None:
        self.tmp = tmp
        self.net = net
        self.pki = pki
        self.zone = ZoneData()
        for apex in ("example", "contoso.com"):
            self.zone.add_zone(apex)
        self.dns = DnsServer(self.zone)
        self.port = 0
        self.spool = Spool(tmp / "spool")
        self.hosts_maildir = tmp / "hosts"
        self.ca_file = pki.write_root(tmp / "root.pem")
        self.client_cert, self.client_key = pki.issue(["relay.test"]).write(tmp, "relay")
        self._closers: list[Callable[[], Awaitable[None]]] = [self.dns.close]
        self.resolver: Resolver | None = None

    def ip(self, n: int) -> str:
        return f"{self.net}{n}"

    async def start(self) -> None:
        port = await self.dns.start(self.ip(53))
        self.resolver = Resolver([Nameserver(self.ip(53), port)], timeout=2.0)

    async def close(self) -> None:
        for close in reversed(self._closers):
            await close()

    def name(self, name: str, n: int) -> str:
        self.zone.add(name, "A", self.ip(n))
        return self.ip(n)

    async def mail_host(
        self, name: str, n: int, *, domains: tuple[str, ...], cert: CertKind | None = CertKind.GOOD,
        cert_names: tuple[str, ...] | None = None, kind: HostKind = HostKind.MAIL, **extra: Any,
    ) -> LabHostServer:  # fmt: skip
        ip = self.name(name, n)
        tls = None
        if cert is not None and kind is HostKind.MAIL:
            chain, key = self.pki.issue(list(cert_names or (name,)), kind=cert).write(self.tmp, f"{name}-{n}")
            tls = TlsFiles(chain, key)
        if kind is not HostKind.MAIL:
            domains = ()
        server = await start_host(
            LabHost(name, ip, kind=kind, tls=tls, domains=domains, **extra), self.port, maildir=self.hosts_maildir
        )
        self.port = server.port
        self._closers.append(server.close)
        return server

    async def sink(self, name: str, n: int, sink: Sink) -> Sink:
        self.port = await sink.start(self.name(name, n), self.port)
        self._closers.append(sink.close)
        return sink

    def settings(
        self, config: str = ACCEPTED, *, role: RelayRole = RelayRole.CLOUD, mailboxes: tuple[str, ...] = (),
        smart_host: str | None = None, limits: Limits = LIMITS, allow_private: bool = True,
    ) -> RelaySettings:  # fmt: skip
        return RelaySettings(
            organization=parse_config(config),
            role=role,
            hostname="relay.test",
            listen=(),
            spool=self.spool.root,
            maildir=self.tmp / "mailboxes",
            tls_cert=self.client_cert,
            tls_key=self.client_key,
            ca_file=self.ca_file,
            smtp_port=self.port or 25,
            mailboxes=mailboxes,
            smart_host=smart_host,
            allow_private=allow_private,
            limits=limits,
        )

    def deliverer(self, config: str = ACCEPTED, **kwargs: Any) -> Deliverer:
        stop_grace = kwargs.pop("stop_grace", 5.0)
        assert self.resolver is not None
        return Deliverer(self.settings(config, **kwargs), self.spool, self.resolver, stop_grace=stop_grace)

    def queue(
        self, *recipients: str, sender: str = SENDER, content: bytes = CONTENT, age: timedelta = timedelta(0)
    ) -> str:
        received = datetime.now(UTC) - age
        return self.spool.store(Envelope(sender, tuple(recipients), received_at=received), content)

    def journaled(self, *recipients: str) -> tuple[str, Envelope, str]:
        """A message stored as the intake stores one (the journal alone, no queue file yet): its id, envelope and
        journal segment."""
        qid, envelope = Spool.new_qid(), Envelope(SENDER, tuple(recipients))
        return qid, envelope, self.spool.store_batch([(qid, envelope, CONTENT)])

    def checkpoint(self) -> None:
        """The journal segment being written, closed and checkpointed."""
        closed = self.spool.journal.close()
        assert closed is not None
        self.spool.checkpoint(closed)

    def stored(self, host: str) -> list[bytes]:
        """The messages a lab MAIL host stored."""
        path = self.hosts_maildir / host
        if not path.exists():
            return []
        box = mailbox.Maildir(path, factory=None, create=False)
        return [box.get_bytes(key) for key in box.keys()]

    def statuses(self, qid: str) -> dict[str, RecipientStatus] | None:
        """Each recipient's state; None once the message has left the spool (every recipient final)."""
        try:
            return {status.recipient: status for status in self.spool.get(qid).statuses}
        except FileNotFoundError:
            return None

    def bounces(self) -> list[tuple[Envelope, EmailMessage]]:
        found = []
        for message in self.spool.messages():
            if message.envelope.mail_from == "":
                parsed = email.message_from_bytes(self.spool.content(message.qid), policy=email.policy.default)
                assert isinstance(parsed, EmailMessage)
                found.append((message.envelope, parsed))
        return found


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.create()


@pytest.fixture(scope="module")
def nets() -> Iterator[str]:
    return (f"127.91.{n}." for n in itertools.count(1))


@pytest.fixture
def world_factory(tmp_path: Path, nets: Iterator[str], pki: TestPKI) -> Callable[[], Any]:
    @asynccontextmanager
    async def make() -> AsyncIterator[World]:
        world = World(tmp_path, next(nets), pki)
        try:
            await world.start()
            yield world
        finally:
            await world.close()

    return make


def trace_of(message: bytes) -> str:
    """The relay's X-Diag-Trace line of a message as it arrived downstream."""
    found = re.search(rb"^X-Diag-Trace: (.*?)\r?$", message, re.MULTILINE)
    assert found is not None, message[:300]
    return found.group(1).decode()


def delivery_status(report: EmailMessage) -> list[dict[str, str]]:
    """The field blocks of a DSN's message/delivery-status part."""
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = list(report.iter_parts())
    assert [part.get_content_type() for part in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers",
    ]  # fmt: skip
    blocks = parts[1].get_payload()
    assert isinstance(blocks, list)
    fields = []
    for block in blocks:
        assert isinstance(block, EmailMessage)
        fields.append(dict(block.items()))
    return fields


# --- local delivery -------------------------------------------------------------------------------------------


def test_deliver_local_stores_into_a_maildir_created_on_first_use(tmp_path: Path) -> None:
    deliver_local(tmp_path / "mail", "Bob@Contoso.com", b"Subject: one\r\n\r\nx\r\n")
    deliver_local(tmp_path / "mail", "bob@contoso.com", b"Subject: two\r\n\r\ny\r\n")
    box = mailbox.Maildir(tmp_path / "mail" / "bob@contoso.com", factory=None, create=False)
    assert sorted(box.get_bytes(key) for key in box.keys()) == [
        b"Subject: one\r\n\r\nx\r\n", b"Subject: two\r\n\r\ny\r\n",
    ]  # fmt: skip
    assert len(list((tmp_path / "mail" / "bob@contoso.com" / "new").iterdir())) == 2
    with pytest.raises(ValueError, match="cannot name a mailbox"):
        deliver_local(tmp_path / "mail", "../escape", b"x")


def test_concurrent_first_deliveries_share_one_whole_maildir_and_leave_nothing_behind(tmp_path: Path) -> None:
    # Given eight deliveries racing to create the same new mailbox
    root = tmp_path / "mail"
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda n: deliver_local(root, "bob@contoso.com", b"Subject: %d\r\n\r\n" % n), range(8)))

    # Then every message is in the one Maildir and no half-built directory is left beside it
    assert [entry.name for entry in root.iterdir()] == ["bob@contoso.com"]
    assert len(list((root / "bob@contoso.com" / "new").iterdir())) == 8


def test_a_reader_never_sees_a_half_made_maildir(tmp_path: Path) -> None:
    # Given a reader polling for new mailboxes while they are created, as a mail program or a test would
    root = tmp_path / "mail"
    addresses = [f"user{n}@contoso.com" for n in range(40)]
    half_made: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            for address in addresses:
                path = root / address
                if path.exists() and not all((path / sub).is_dir() for sub in ("tmp", "new", "cur")):
                    half_made.append(address)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for address in addresses:
            deliver_local(root, address, b"Subject: x\r\n\r\n")
    finally:
        done.set()
        reader.join()

    # Then every mailbox it saw was whole
    assert half_made == []


def test_a_mailbox_directory_made_by_hand_is_completed(tmp_path: Path) -> None:
    (tmp_path / "mail" / "bob@contoso.com").mkdir(parents=True)
    deliver_local(tmp_path / "mail", "bob@contoso.com", b"Subject: one\r\n\r\n")
    box = mailbox.Maildir(tmp_path / "mail" / "bob@contoso.com", factory=None, create=False)
    assert len(box) == 1


def test_internet_role_delivers_local_mailboxes_and_sends_the_rest_by_mx(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            qid = world.queue("bob@contoso.com", "eve@elsewhere.example")
            deliverer = world.deliverer(role=RelayRole.INTERNET, mailboxes=("bob@contoso.com",))
            await deliverer.deliver_once(qid)

            box = mailbox.Maildir(world.tmp / "mailboxes" / "bob@contoso.com", factory=None, create=False)
            (stored,) = [box.get_bytes(key) for key in box.keys()]
            assert stored == b"Return-Path: <alice@contoso.com>\r\n" + CONTENT
            # eve is not a mailbox here: her domain's MX is looked up (this world's DNS has no such domain).
            statuses = world.statuses(qid)
            if statuses is None:  # failed for good: bounced
                ((_envelope, report),) = world.bounces()
                _, failed = delivery_status(report)
                assert failed["Final-Recipient"] == "rfc822; eve@elsewhere.example"
            else:
                (eve,) = [s for s in statuses if s.recipient == "eve@elsewhere.example"]
                assert eve.route == "mx" and eve.attempts == 1

    run(scenario())


# --- cloud routing -------------------------------------------------------------------------------------------


def test_connector_smart_host_gets_the_message_with_this_hops_trace_header(
    world_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            await world.mail_host("mail.contoso.com", 10, domains=("contoso.com",))
            config = ACCEPTED + connector("Connector 2", "contoso.com", "mail.contoso.com", "CertificateValidation")
            qid = world.queue("bob@contoso.com")
            with caplog.at_level(logging.INFO, logger="diag.relay"):
                await world.deliverer(config).deliver_once(qid)

            assert world.statuses(qid) is None
            (message,) = world.stored("mail.contoso.com")
            lines = message.split(b"\r\n")
            # Downstream's own trace lines on top, then this hop's trace header, then what the relay received.
            assert lines[0] == b"Return-Path: <alice@contoso.com>"
            trace = lines.index(next(line for line in lines if line.startswith(b"X-Diag-Trace:")))
            assert lines[trace + 1].startswith(b"Received: from client.test")
            assert trace_of(message) == (
                f'hop=relay.test; role=cloud; connector="Connector 2"; rule=exact; '
                f"to=mail.contoso.com[{world.ip(10)}]; tls=TLSv1.3"
            )
            assert message.endswith(CONTENT)
            (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("delivery ")]
            assert re.fullmatch(
                rf"delivery qid={qid} from=<alice@contoso.com> to=<bob@contoso.com> "
                rf"route=connector:Connector 2/exact host=mail.contoso.com\[{re.escape(world.ip(10))}\] "
                r'result=delivered reply="250 2.0.0 Ok: queued" latency_ms=\d+',
                line,
            ), line

    run(scenario())


# The TLS matrix: a connector's TlsSettings against hosts with no STARTTLS and with each kind of certificate.
# Per host: (outcome, what the trace header's tls= or the deferral's detail must contain).
DELIVERED_TLS = ("delivered", "tls=TLSv1.3")
NO_STARTTLS = ("pending", "[Message=451 5.7.3 STARTTLS is required to send mail]")
UNTRUSTED = ("pending", "4.4.317 Cannot connect to remote server [Message=UntrustedRoot")
MATRIX: dict[str | None, dict[str, tuple[str, str]]] = {
    None: {"plain": ("delivered", "tls=none"), "selfsigned": DELIVERED_TLS, "chainless": DELIVERED_TLS,
           "wrongname": DELIVERED_TLS, "good": DELIVERED_TLS},
    "EncryptionOnly": {"plain": NO_STARTTLS, "selfsigned": DELIVERED_TLS, "chainless": DELIVERED_TLS,
                       "wrongname": DELIVERED_TLS, "good": DELIVERED_TLS},
    "CertificateValidation": {"plain": NO_STARTTLS, "selfsigned": UNTRUSTED, "chainless": UNTRUSTED,
                              "wrongname": DELIVERED_TLS, "good": DELIVERED_TLS},
    "DomainValidation": {"plain": NO_STARTTLS, "selfsigned": UNTRUSTED, "chainless": UNTRUSTED,
                         "wrongname": ("pending", "[Message=SubjectMismatch Expected Subject: *.mx.example. "
                                                  "Presented Subject: CN=wrong.example.org.]"),
                         "good": DELIVERED_TLS},
}  # fmt: skip


@pytest.mark.parametrize("tls", list(MATRIX), ids=lambda tls: tls or "unset")
def test_tls_matrix(world_factory: Any, tls: str | None) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            plain = await world.sink("plain.mx.example", 10, Sink())
            certs = {"selfsigned": CertKind.SELF_SIGNED, "chainless": CertKind.CHAINLESS, "good": CertKind.GOOD,
                     "wrongname": CertKind.GOOD}  # fmt: skip
            for n, (kind, cert) in enumerate(certs.items(), start=11):
                names = ("wrong.example.org",) if kind == "wrongname" else None
                await world.mail_host(
                    f"{kind}.mx.example", n, domains=(f"{kind}.example",), cert=cert, cert_names=names
                )
            tls_domain = "*.mx.example" if tls == "DomainValidation" else None
            config = ACCEPTED + "".join(
                connector(f"to-{kind}", f"{kind}.example", f"{kind}.mx.example", tls, tls_domain) for kind in TLS_KINDS
            )
            qid = world.queue(*(f"user@{kind}.example" for kind in TLS_KINDS))
            await world.deliverer(config).deliver_once(qid)

            statuses = world.statuses(qid)
            for kind, (outcome, evidence) in MATRIX[tls].items():
                recipient = f"user@{kind}.example"
                if outcome == "pending":
                    assert statuses is not None
                    status = statuses[recipient]
                    assert status.state is RecipientState.PENDING, (kind, status)
                    assert evidence in status.detail, (kind, status.detail)
                    assert status.route == f"connector:to-{kind}/exact"
                    continue
                arrived = plain.messages if kind == "plain" else world.stored(f"{kind}.mx.example")
                assert len(arrived) == 1, (kind, statuses)
                assert evidence in trace_of(arrived[0]), kind
                assert f'connector="to-{kind}"; rule=exact' in trace_of(arrived[0])
                assert statuses is None or statuses[recipient].state is RecipientState.DELIVERED
            if MATRIX[tls]["plain"] == NO_STARTTLS:
                # Never plain text where TLS is required: the session ended before MAIL FROM.
                assert plain.connections == 1
                assert not any(command.upper().startswith(("MAIL", "RCPT", "DATA")) for command in plain.commands)

    run(scenario())


def test_opportunistic_tls_that_fails_is_retried_in_plain_text(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            # The host offers STARTTLS but only TLS 1.0/1.1, which the relay refuses: the handshake fails.
            await world.mail_host(
                "old.mx.example", 10, domains=("old.example",), legacy_crypto=True,
                tls_versions=(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1),
            )  # fmt: skip
            qid = world.queue("user@old.example")
            await world.deliverer(ACCEPTED + connector("to-old", "old.example", "old.mx.example")).deliver_once(qid)

            assert world.statuses(qid) is None
            (message,) = world.stored("old.mx.example")
            assert trace_of(message).endswith("tls=none")

    run(scenario())


@pytest.mark.parametrize("cert_name", ["smart.mx.example", "other.mx.example"])
def test_onprem_role_sends_everything_not_local_to_the_verified_smart_host(world_factory: Any, cert_name: str) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            await world.mail_host("smart.mx.example", 10, domains=("fabrikam.example",), cert_names=(cert_name,))
            qid = world.queue("bob@contoso.com", "carol@fabrikam.example")
            deliverer = world.deliverer(
                role=RelayRole.ON_PREMISES, mailboxes=("bob@contoso.com",), smart_host="smart.mx.example"
            )
            await deliverer.deliver_once(qid)

            assert (world.tmp / "mailboxes" / "bob@contoso.com" / "new").is_dir()
            if cert_name == "smart.mx.example":
                assert world.statuses(qid) is None
                (message,) = world.stored("smart.mx.example")
                assert trace_of(message) == (
                    f"hop=relay.test; role=onprem; connector=none; rule=smarthost; "
                    f"to=smart.mx.example[{world.ip(10)}]; tls=TLSv1.3"
                )
            else:
                statuses = world.statuses(qid)
                assert statuses is not None
                assert statuses["bob@contoso.com"].state is RecipientState.DELIVERED
                assert statuses["bob@contoso.com"].route == "local"
                carol = statuses["carol@fabrikam.example"]
                assert carol.state is RecipientState.PENDING and carol.route == "smarthost"
                assert "SubjectMismatch Expected Subject: smart.mx.example" in carol.detail
                assert world.stored("smart.mx.example") == []

    run(scenario())


# --- MX -------------------------------------------------------------------------------------------------------


def test_mx_in_preference_order_past_a_refusing_and_a_rejecting_host(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            world.name("first.mx.example", 10)  # nothing listens there: connection refused
            await world.mail_host("second.mx.example", 11, domains=(), kind=HostKind.GREETING,
                                  greeting="554 5.7.1 No SMTP service here")  # fmt: skip
            await world.mail_host("third.mx.example", 12, domains=("pref.example",))
            world.zone.add(
                "pref.example", "MX", "30 third.mx.example.", "10 first.mx.example.", "20 second.mx.example."
            )

            qid = world.queue("user@pref.example")
            await world.deliverer().deliver_once(qid)
            assert world.statuses(qid) is None
            (message,) = world.stored("third.mx.example")
            # No connector: the MX, with opportunistic TLS.
            assert trace_of(message) == (
                f"hop=relay.test; role=cloud; connector=none; rule=mx; to=third.mx.example[{world.ip(12)}]; tls=TLSv1.3"
            )

            # At most addresses_per_delivery addresses per attempt (RD-42): two are not enough here.
            qid = world.queue("user@pref.example")
            limits = Limits(operation_timeout=5.0, addresses_per_delivery=2)
            await world.deliverer(limits=limits).deliver_once(qid)
            statuses = world.statuses(qid)
            assert statuses is not None
            status = statuses["user@pref.example"]
            assert status.state is RecipientState.PENDING and status.route == "mx"
            assert status.detail.startswith("554 5.7.1 No SMTP service here")
            assert len(world.stored("third.mx.example")) == 1

    run(scenario())


def test_mx_answers_decide_each_recipient(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            await world.mail_host("implicit.example", 10, domains=("implicit.example",))  # A record, no MX
            world.zone.add("nullmx.example", "MX", "0 .")
            world.zone.add("broken.example", "A", world.ip(10))
            world.zone.set_behaviour("broken.example", Behaviour.SERVFAIL)
            recipients = ("a@nullmx.example", "b@nxdomain.example", "c@broken.example", "d@implicit.example")
            qid = world.queue(*recipients)
            await world.deliverer().deliver_once(qid)

            statuses = world.statuses(qid)
            assert statuses is not None
            null_mx, nxdomain, servfail, implicit = (statuses[r] for r in recipients)
            assert null_mx.state is RecipientState.FAILED and null_mx.detail.startswith("556 5.1.10 ")
            assert nxdomain.state is RecipientState.FAILED and nxdomain.detail.startswith("550 5.1.2 ")
            # DNS-03: a failed MX lookup defers; it is not taken for "no MX", which would fall back to the A record.
            assert servfail.state is RecipientState.PENDING and servfail.detail.startswith(
                "450 4.4.312 DNS query failed"
            )
            assert implicit.state is RecipientState.DELIVERED
            (message,) = world.stored("implicit.example")
            assert message.count(b"X-Diag-Trace:") == 1
            ((_, report),) = world.bounces()
            _, first, second = delivery_status(report)
            assert (first["Final-Recipient"], first["Status"]) == ("rfc822; a@nullmx.example", "5.1.10")
            assert (second["Final-Recipient"], second["Status"]) == ("rfc822; b@nxdomain.example", "5.1.2")

    run(scenario())


def test_non_public_addresses_are_not_used_unless_allowed(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            await world.mail_host("mx.private.example", 10, domains=("private.example",))
            world.zone.add("private.example", "MX", "10 mx.private.example.")
            qid = world.queue("user@private.example")
            await world.deliverer(allow_private=False).deliver_once(qid)
            assert world.stored("mx.private.example") == []
            ((_, report),) = world.bounces()
            _, failed = delivery_status(report)
            assert failed["Status"] == "5.4.4" and "no public address" in failed["Diagnostic-Code"]

    run(scenario())


# --- replies: retry, failure, bounces -------------------------------------------------------------------------


def test_4xx_keeps_the_recipient_pending_with_exponential_backoff(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            sink = await world.sink("b.mx.example", 10, Sink(rcpt={"user@b.example": "451 4.7.1 Greylisted"}))
            deliverer = world.deliverer(ACCEPTED + connector("to-b", "b.example", "b.mx.example"))
            qid = world.queue("user@b.example")

            before = datetime.now(UTC)
            await deliverer.deliver_once(qid)
            after = datetime.now(UTC)
            statuses = world.statuses(qid)
            assert statuses is not None
            first = statuses["user@b.example"]
            assert (first.state, first.attempts, first.detail) == (RecipientState.PENDING, 1, "451 4.7.1 Greylisted")
            assert first.next_attempt is not None
            assert before + LIMITS.retry_base <= first.next_attempt <= after + LIMITS.retry_base

            await deliverer.deliver_once(qid)  # not due yet: nothing happens
            assert sink.connections == 1

            due_now = RecipientStatus(first.recipient, first.state, first.attempts, before, first.detail, first.route)
            world.spool.update(qid, [due_now])
            before = datetime.now(UTC)
            await deliverer.deliver_once(qid)
            after = datetime.now(UTC)
            statuses = world.statuses(qid)
            assert statuses is not None
            second = statuses["user@b.example"]
            assert second.attempts == 2 and second.next_attempt is not None
            assert before + 2 * LIMITS.retry_base <= second.next_attempt <= after + 2 * LIMITS.retry_base
            assert sink.messages == [] and world.bounces() == []

    run(scenario())


def test_5xx_fails_the_recipient_and_bounces_to_the_sender(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            reply = "550 5.1.1 <user@b.example>: Recipient address rejected: User unknown"
            await world.sink("b.mx.example", 10, Sink(rcpt={"user@b.example": reply}))
            qid = world.queue("user@b.example")
            await world.deliverer(ACCEPTED + connector("to-b", "b.example", "b.mx.example")).deliver_once(qid)

            assert world.statuses(qid) is None
            ((envelope, report),) = world.bounces()
            assert (envelope.mail_from, envelope.rcpt_tos) == ("", (SENDER,))
            assert report["To"].addresses[0].addr_spec == SENDER
            assert report["Subject"] == "Undeliverable: connector test"
            assert report["Auto-Submitted"] == "auto-replied"
            per_message, failed = delivery_status(report)
            assert per_message["Reporting-MTA"] == "dns; relay.test"
            assert failed == failed | {
                "Final-Recipient": "rfc822; user@b.example",
                "Action": "failed",
                "Status": "5.1.1",
                "Diagnostic-Code": f"smtp; {reply}",
            }
            text, _, headers = report.iter_parts()
            assert "user@b.example" in text.get_content() and reply in text.get_content()
            assert "Message-ID: <test-1@contoso.com>" in headers.get_payload()
            assert "Hello." not in headers.get_payload()

    run(scenario())


def test_a_failing_message_from_the_null_sender_is_not_bounced(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            await world.sink("b.mx.example", 10, Sink(rcpt={"user@b.example": "550 5.1.1 User unknown"}))
            qid = world.queue("user@b.example", sender="")
            await world.deliverer(ACCEPTED + connector("to-b", "b.example", "b.mx.example")).deliver_once(qid)
            assert world.statuses(qid) is None
            assert world.spool.messages() == []

    run(scenario())


def test_bounce_is_none_for_the_null_sender() -> None:
    failure = RecipientStatus("x@b.example", RecipientState.FAILED, 1, None, "550 5.1.1 nope", "mx")
    envelope = Envelope("", ("x@b.example",))
    assert bounce(envelope, CONTENT, [failure], reporting_mta="relay.test", now=datetime.now(UTC)) is None


def test_partial_rcpt_acceptance_is_kept_per_recipient(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            replies = {"bad@b.example": "550 5.1.1 User unknown", "later@b.example": "452 4.2.2 Mailbox full"}
            sink = await world.sink("b.mx.example", 10, Sink(rcpt=replies))
            qid = world.queue("good@b.example", "bad@b.example", "later@b.example")
            await world.deliverer(ACCEPTED + connector("to-b", "b.example", "b.mx.example")).deliver_once(qid)

            assert len(sink.messages) == 1  # one transaction for all three, the message sent once
            assert [c for c in sink.commands if c.startswith("RCPT")] == [
                "RCPT TO:<good@b.example>", "RCPT TO:<bad@b.example>", "RCPT TO:<later@b.example>",
            ]  # fmt: skip
            statuses = world.statuses(qid)
            assert statuses is not None
            assert {r: (s.state, s.detail) for r, s in statuses.items()} == {
                "good@b.example": (RecipientState.DELIVERED, "250 2.0.0 Ok: queued"),
                "bad@b.example": (RecipientState.FAILED, "550 5.1.1 User unknown"),
                "later@b.example": (RecipientState.PENDING, "452 4.2.2 Mailbox full"),
            }
            ((_, report),) = world.bounces()
            _, failed = delivery_status(report)
            assert failed["Final-Recipient"] == "rfc822; bad@b.example"

    run(scenario())


def test_a_connector_with_mx_routing_applies_its_tls_settings_to_the_mx(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            sink = await world.sink("mx.partner.example", 10, Sink())
            world.zone.add("partner.example", "MX", "10 mx.partner.example.")
            config = ACCEPTED + (
                '[[OutboundConnector]]\nName = "Partner"\nRecipientDomains = ["partner.example"]\n'
                'TlsSettings = "EncryptionOnly"\n'
            )
            qid = world.queue("user@partner.example")
            await world.deliverer(config).deliver_once(qid)

            statuses = world.statuses(qid)
            assert statuses is not None
            status = statuses["user@partner.example"]
            assert status.state is RecipientState.PENDING and status.route == "connector:Partner/exact"
            assert "451 5.7.3 STARTTLS is required" in status.detail
            assert sink.connections == 1 and sink.messages == []

    run(scenario())


def test_a_message_past_max_age_fails_as_expired(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            await world.sink("b.mx.example", 10, Sink(rcpt={"user@b.example": "451 4.3.0 Try later"}))
            qid = world.queue("user@b.example", age=timedelta(days=6))
            await world.deliverer(ACCEPTED + connector("to-b", "b.example", "b.mx.example")).deliver_once(qid)

            assert world.statuses(qid) is None
            ((_, report),) = world.bounces()
            _, failed = delivery_status(report)
            assert failed["Status"] == "4.4.7"
            assert failed["Diagnostic-Code"].startswith("smtp; 550 4.4.7 QUEUE.Expired; message expired")
            assert "LastError=451 4.3.0 Try later" in failed["Diagnostic-Code"]

    run(scenario())


# --- envelope and content integrity ---------------------------------------------------------------------------

REWRITTEN = '"a\rx <v@evil.example>"@allowed.example'  # aiosmtplib would send RCPT TO:<v@evil.example>


def test_rd10_an_address_the_client_would_rewrite_is_failed_and_never_sent(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            sink = await world.sink("smart.mx.example", 10, Sink())
            qid = world.queue(REWRITTEN)
            await world.deliverer(role=RelayRole.ON_PREMISES, smart_host="smart.mx.example").deliver_once(qid)

            assert sink.connections == 0
            assert world.statuses(qid) is None
            ((_, report),) = world.bounces()
            _, failed = delivery_status(report)
            assert failed["Status"] == "5.1.3"
            assert "would be sent as <v@evil.example>" in failed["Diagnostic-Code"]

            # The same for a sender: every recipient fails, nothing is sent.
            qid = world.queue("user@b.example", sender=REWRITTEN)
            config = ACCEPTED + connector("to-b", "b.example", "smart.mx.example")
            await world.deliverer(config).deliver_once(qid)
            assert sink.connections == 0
            assert world.statuses(qid) is None

            # RD-11: an address aiosmtplib refuses to put on a command line (ValueError) fails for good too.
            qid = world.queue('"a\nb"@b.example')
            await world.deliverer(role=RelayRole.ON_PREMISES, smart_host="smart.mx.example").deliver_once(qid)
            assert sink.connections == 0
            assert world.statuses(qid) is None
            reports = [report for _, report in world.bounces()]
            assert any("cannot be sent" in delivery_status(r)[1]["Diagnostic-Code"] for r in reports)

    run(scenario())


def test_content_with_nul_is_not_forwarded(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            sink = await world.sink("b.mx.example", 10, Sink())
            qid = world.queue("user@b.example", content=CONTENT + b"smuggled\r\n\x00.\r\nMAIL FROM:<x@y>\r\n")
            await world.deliverer(ACCEPTED + connector("to-b", "b.example", "b.mx.example")).deliver_once(qid)

            assert sink.connections == 0
            ((_, report),) = world.bounces()
            _, failed = delivery_status(report)
            assert failed["Status"] == "5.6.0"

    run(scenario())


# --- downstream faults ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after_dot", "detail"),
    [("421 4.3.2 Shutting down", "421 4.3.2 Shutting down"), (None, "outcome unknown")],
    ids=["421-after-dot", "closed-after-dot"],
)
def test_no_250_after_the_final_dot_keeps_the_recipient_pending(
    world_factory: Any, after_dot: str | None, detail: str
) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            sink = await world.sink("b.mx.example", 10, Sink(after_dot=after_dot))
            qid = world.queue("user@b.example")
            await world.deliverer(ACCEPTED + connector("to-b", "b.example", "b.mx.example")).deliver_once(qid)

            assert len(sink.messages) == 1  # it did arrive; a retry may duplicate it, which RD-32 accepts
            statuses = world.statuses(qid)
            assert statuses is not None
            status = statuses["user@b.example"]
            assert status.state is RecipientState.PENDING and status.attempts == 1
            assert detail in status.detail
            assert world.bounces() == []

    run(scenario())


# --- the queue runner -----------------------------------------------------------------------------------------


async def eventually(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not check():  # noqa: ASYNC110 - the spool has no change notification to wait on
            await asyncio.sleep(0.02)


def test_run_delivers_after_a_kick_and_returns_when_stopped(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            deliverer = world.deliverer(mailboxes=("bob@contoso.com",), limits=Limits(queue_scan=3600.0))
            stop = asyncio.Event()
            runner = asyncio.create_task(deliverer.run(stop))
            await asyncio.sleep(0)
            qid = world.queue("bob@contoso.com")
            deliverer.kick()
            await eventually(lambda: world.statuses(qid) is None)
            assert (world.tmp / "mailboxes" / "bob@contoso.com" / "new").is_dir()
            stop.set()
            await runner

    run(scenario())


def test_run_cancels_a_stuck_delivery_at_stop_and_leaves_it_pending(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            sink = await world.sink("b.mx.example", 10, Sink(greet=False))
            deliverer = world.deliverer(
                ACCEPTED + connector("to-b", "b.example", "b.mx.example"),
                limits=Limits(operation_timeout=20.0, queue_scan=0.05),
                stop_grace=0.2,
            )
            qid = world.queue("user@b.example")
            stop = asyncio.Event()
            runner = asyncio.create_task(deliverer.run(stop))
            await asyncio.wait_for(sink.connected.wait(), 10)
            stop.set()
            await asyncio.wait_for(runner, 10)

            statuses = world.statuses(qid)
            assert statuses is not None
            assert statuses["user@b.example"] == RecipientStatus("user@b.example")  # untouched: retried after restart

    run(scenario())


# --- messages handed over in memory (Deliverer.queued: the relay's pipe, the in-process server) ----------------


def test_a_message_the_scan_delivered_before_its_announcement_came_is_not_delivered_again(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            sink = await world.sink("b.mx.example", 10, Sink())
            deliverer = world.deliverer(ACCEPTED + connector("to-b", "b.example", "b.mx.example"), limits=REUSE)
            qid = world.queue("user@b.example")
            envelope = world.spool.get(qid).envelope
            async with working(deliverer):
                # Given a message the scan found and delivered first
                await delivered(world, qid)
                # When its announcement comes after all, with the message
                deliverer.queued(qid, envelope, CONTENT)
                await eventually(lambda: not deliverer._handed and not deliverer._active)
            # Then it was sent once, and nothing of it is left in memory
            assert len(sink.messages) == 1 and deliverer._handed_bytes == 0

    run(scenario())


def test_a_message_from_the_journal_is_delivered_from_memory_and_its_checkpoint_writes_nothing(
    world_factory: Any,
) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            sink = await world.sink("b.mx.example", 10, Sink())
            deliverer = world.deliverer(ACCEPTED + connector("to-b", "b.example", "b.mx.example"), limits=REUSE)
            qid, envelope, segment = world.journaled("user@b.example")
            async with working(deliverer):
                deliverer.queued(qid, envelope, CONTENT, segment)
                await eventually(lambda: len(sink.messages) == 1 and not deliverer._active)
            assert read_done(world.spool.journal.directory / f"{segment}.j") == {qid}
            world.checkpoint()
            assert world.spool.messages() == [] and list(world.spool.tmp.iterdir()) == []
            assert len(sink.messages) == 1

    run(scenario())


@pytest.mark.parametrize("checkpoint", ["ended", "under way"])
def test_a_journal_message_the_scan_delivered_is_not_delivered_again_when_handed_late(
    world_factory: Any, checkpoint: str
) -> None:
    """The pipe may hand a message over after its segment's checkpoint wrote its queue file and a scan delivered
    it from there (the pipe backed up); while the checkpoint is under way the segment is still there."""

    async def scenario() -> None:
        async with world_factory() as world:
            sink = await world.sink("b.mx.example", 10, Sink())
            deliverer = world.deliverer(ACCEPTED + connector("to-b", "b.example", "b.mx.example"), limits=REUSE)
            qid, envelope, segment = world.journaled("user@b.example")
            if checkpoint == "ended":
                world.checkpoint()
            else:
                world.spool.journal.begin_checkpoint(world.spool.journal.directory / f"{segment}.j")
                world.spool.store(envelope, CONTENT, qid=qid)  # the file it wrote; the segment not deleted yet
            async with working(deliverer):
                await delivered(world, qid)
                deliverer.queued(qid, envelope, CONTENT, segment)
                await eventually(lambda: not deliverer._handed and not deliverer._active)
            assert len(sink.messages) == 1

    run(scenario())


def test_a_queue_file_written_for_a_message_delivered_from_memory_is_not_delivered_again(world_factory: Any) -> None:
    """A checkpoint that read the segment's done file before the message was marked writes its queue file, and
    removes it only once it read the file again: scans meanwhile leave it alone."""

    async def scenario() -> None:
        async with world_factory() as world:
            sink = await world.sink("b.mx.example", 10, Sink())
            deliverer = world.deliverer(ACCEPTED + connector("to-b", "b.example", "b.mx.example"), limits=REUSE)
            qid, envelope, segment = world.journaled("user@b.example")
            scans = 0
            listing = world.spool.messages

            def counted() -> list[QueuedMessage]:
                nonlocal scans
                scans += 1
                return listing()

            world.spool.messages = counted  # type: ignore[method-assign]
            async with working(deliverer):
                deliverer.queued(qid, envelope, CONTENT, segment)
                await eventually(lambda: len(sink.messages) == 1 and not deliverer._active)
                world.spool.store(envelope, CONTENT, qid=qid)  # what the checkpoint wrote
                seen = scans
                await eventually(lambda: scans >= seen + 5)
            assert len(sink.messages) == 1

    run(scenario())


@pytest.mark.parametrize("with_segment", [True, False], ids=["with its segment", "without"])
def test_a_message_announced_by_id_alone_is_marked_done_in_its_segment(world_factory: Any, with_segment: bool) -> None:
    """A backed-up pipe announces a message by id alone, with its journal segment. Delivered from the queue file
    of a checkpoint that failed halfway (the segment stays), it is marked done there, so a restart does not send it
    again; without the segment it would be."""

    async def scenario() -> None:
        async with world_factory() as world:
            sink = await world.sink("b.mx.example", 10, Sink())
            deliverer = world.deliverer(ACCEPTED + connector("to-b", "b.example", "b.mx.example"), limits=REUSE)
            qid, envelope, segment = world.journaled("user@b.example")
            path = world.spool.journal.directory / f"{segment}.j"
            world.spool.journal.close()
            world.spool.journal.begin_checkpoint(path)
            world.spool.store(envelope, CONTENT, qid=qid)  # the file a try moved in before it failed
            async with working(deliverer):
                deliverer.kick(qid, segment if with_segment else None)
                await delivered(world, qid)
            assert len(sink.messages) == 1 and world.spool.journal.has(segment)
            assert (qid in read_done(path)) is with_segment
            Spool(world.spool.root).recover()  # the relay started again
            assert [m.qid for m in world.spool.messages()] == ([] if with_segment else [qid])

    run(scenario())


def test_a_handed_message_already_attempted_goes_by_its_recorded_states(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            sink = await world.sink("b.mx.example", 10, Sink())
            deliverer = world.deliverer(ACCEPTED + connector("to-b", "b.example", "b.mx.example"), limits=REUSE)
            # Given a message whose first attempt delivered to one recipient and deferred the other for an hour
            qid = world.queue("one@b.example", "two@b.example")
            later = datetime.now(UTC) + timedelta(hours=1)
            world.spool.update(qid, [RecipientStatus("one@b.example", RecipientState.DELIVERED, 1),
                                     RecipientStatus("two@b.example", attempts=1, next_attempt=later)])  # fmt: skip
            # When it is handed over (late) and attempted
            deliverer.queued(qid, world.spool.get(qid).envelope, CONTENT)
            await deliverer.deliver_once(qid)
            # Then nobody gets it: one has it, the other is not due
            assert sink.messages == [] and sink.connections == 0
            statuses = world.statuses(qid)
            assert statuses is not None and statuses["two@b.example"].attempts == 1

    run(scenario())


def test_a_message_handed_while_its_attempt_is_under_way_is_not_kept(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            sink = await world.sink("b.mx.example", 10, Sink(greet=False))
            deliverer = world.deliverer(
                ACCEPTED + connector("to-b", "b.example", "b.mx.example"),
                limits=Limits(operation_timeout=20.0, queue_scan=3600.0), stop_grace=0.2,
            )  # fmt: skip
            qid = world.queue("user@b.example")
            attempt = asyncio.create_task(deliverer.deliver_once(qid))
            await asyncio.wait_for(sink.connected.wait(), 10)
            deliverer.queued(qid, world.spool.get(qid).envelope, CONTENT)
            assert deliverer._handed == {} and deliverer._handed_bytes == 0
            attempt.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await attempt

    run(scenario())


# --- connection reuse -----------------------------------------------------------------------------------------

REUSE = Limits(operation_timeout=5.0, queue_scan=0.05, connection_idle=30.0)


@asynccontextmanager
async def working(deliverer: Deliverer) -> AsyncIterator[asyncio.Task[None]]:
    """The deliverer working the queue for the block; stopped (and its stop awaited) when the block ends."""
    stop = asyncio.Event()
    runner = asyncio.create_task(deliverer.run(stop))
    try:
        yield runner
    finally:
        stop.set()
        await asyncio.wait_for(runner, 10)


def queued(world: World, deliverer: Deliverer, recipient: str) -> str:
    qid = world.queue(recipient)
    deliverer.kick(qid)
    return qid


async def delivered(world: World, *qids: str) -> None:
    await eventually(lambda: all(world.statuses(qid) is None for qid in qids))


def attempts(world: World, qid: str, recipient: str) -> int:
    statuses = world.statuses(qid)
    return statuses[recipient].attempts if statuses else 0


def test_messages_to_one_smart_host_share_one_session_which_quits_when_the_relay_stops(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            sink = await world.sink("b.mx.example", 10, Sink())
            deliverer = world.deliverer(ACCEPTED + connector("to-b", "b.example", "b.mx.example"), limits=REUSE)
            async with working(deliverer):
                # When three messages are queued one after the other for the same smart host
                for n in range(3):
                    await delivered(world, queued(world, deliverer, f"user{n}@b.example"))

                # Then one connection carried them, each later one after an RSET
                assert sink.connections == 1
                assert len(sink.messages) == 3
                assert [c.split()[0] for c in sink.commands].count("RSET") == 2
            # and stopping the relay says QUIT
            assert sink.commands[-1] == "QUIT"

    run(scenario())


@pytest.mark.parametrize(
    "sink",
    [
        pytest.param(lambda: Sink(one_message=True), id="hangs-up"),
        pytest.param(lambda: Sink(rset="421 4.4.2 Idle too long, closing"), id="rset-refused"),
    ],
)
def test_a_session_the_server_ended_while_idle_is_replaced_and_nothing_is_deferred(
    world_factory: Any, sink: Callable[[], Sink]
) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            # Given a smart host that ends each session after one message, by hanging up or refusing RSET
            server = await world.sink("b.mx.example", 10, sink())
            deliverer = world.deliverer(ACCEPTED + connector("to-b", "b.example", "b.mx.example"), limits=REUSE)
            async with working(deliverer):
                # When two messages follow each other
                await delivered(world, queued(world, deliverer, "one@b.example"))
                second = queued(world, deliverer, "two@b.example")

                # Then the second goes over a new connection at once: delivered, not deferred for a retry
                await delivered(world, second)
                assert server.connections == 2
                assert len(server.messages) == 2

    run(scenario())


def test_an_idle_session_quits_when_its_time_is_up(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            sink = await world.sink("b.mx.example", 10, Sink())
            limits = Limits(operation_timeout=5.0, queue_scan=0.05, connection_idle=0.2)
            deliverer = world.deliverer(ACCEPTED + connector("to-b", "b.example", "b.mx.example"), limits=limits)
            async with working(deliverer) as runner:
                await delivered(world, queued(world, deliverer, "user@b.example"))

                # The relay is still running, and the session ends on its own
                await eventually(lambda: sink.commands[-1:] == ["QUIT"])
                assert not runner.done()

    run(scenario())


def test_a_session_opened_without_tls_never_serves_a_route_that_requires_it(world_factory: Any) -> None:
    async def scenario() -> None:
        async with world_factory() as world:
            # Given one host behind two connectors: b.example opportunistic, c.example EncryptionOnly
            sink = await world.sink("b.mx.example", 10, Sink())  # offers no STARTTLS
            config = (
                ACCEPTED
                + connector("to-b", "b.example", "b.mx.example")
                + connector("to-c", "c.example", "b.mx.example", tls="EncryptionOnly")
            )
            deliverer = world.deliverer(config, limits=REUSE)
            async with working(deliverer):
                # When a message for b.example went in plain text and one for c.example follows
                await delivered(world, queued(world, deliverer, "user@b.example"))
                second = queued(world, deliverer, "user@c.example")
                await eventually(lambda: attempts(world, second, "user@c.example") > 0)

                # Then the second opened its own connection, found no STARTTLS and was not sent
                assert sink.connections == 2
                assert len(sink.messages) == 1
                status = (world.statuses(second) or {})["user@c.example"]
                assert status.state is RecipientState.PENDING
                assert "STARTTLS" in status.detail

    run(scenario())
