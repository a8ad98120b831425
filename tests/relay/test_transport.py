"""Tests of the delivery transport against real SMTP servers on loopback (aiosmtpd, or a raw socket server for
what aiosmtpd never does), and of the local mailbox store. No DNS: smart hosts are literal addresses.

TLS, MX and connection reuse are exercised end to end in test_delivery.py; here are the session's own rules:
per-recipient replies, 8BITMIME and SMTPUTF8, the HELO fallback, refused greetings and connections.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from diag.config import Organization, RelayRole
from diag.net.dns import Nameserver, Resolver
from diag.relay.plan import Connect, Outcome, Result, Route, SessionResult, TlsLevel, TlsPolicy
from diag.relay.settings import Limits, RelaySettings
from diag.relay.transport import Transport

T = TypeVar("T")

DEADLINE = 30.0
CONTENT = b"From: Alice <alice@contoso.com>\r\nSubject: x\r\n\r\nHello.\r\n"
OPPORTUNISTIC = Route("connector:to-b/exact", "to-b", "exact", smart_hosts=("placeholder",))
REQUIRED = Route("connector:to-c/exact", "to-c", "exact", smart_hosts=("placeholder",), tls=TlsPolicy(TlsLevel.ENCRYPT))


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, DEADLINE))


class Handler:
    """Records what arrived; answers RCPT from ``rcpt``, MAIL with ``mail`` and the final dot with ``data``
    (None: the default 250); with ``refuse_ehlo`` EHLO gets 502 and only HELO works."""

    def __init__(self) -> None:
        self.rcpt: dict[str, str] = {}
        self.mail: str | None = None
        self.data: str | None = None
        self.refuse_ehlo = False
        self.commands: list[str] = []
        self.mail_options: list[list[str]] = []
        self.messages: list[bytes] = []

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        self.commands.append("EHLO")
        if self.refuse_ehlo:
            return ["502 5.5.2 Command not recognized"]
        session.host_name = hostname
        return responses

    async def handle_HELO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str) -> str:
        self.commands.append("HELO")
        session.host_name = hostname
        return "250 b.example"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.commands.append("MAIL")
        if self.mail is not None:
            return self.mail
        self.mail_options.append(options)
        envelope.mail_from = address
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt.get(address, "250 2.1.5 Ok")
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.original_content, bytes)
        self.messages.append(envelope.original_content)
        return self.data or "250 2.0.0 Ok: queued as 42"


class World:
    """SMTP servers sharing one port on 127.0.92.N, and a transport delivering to that port."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = 0
        self._servers: list[asyncio.Server] = []
        self._sessions: list[SMTP] = []

    async def smtp(self, ip: str, handler: Handler, **options: Any) -> Handler:
        def session() -> SMTP:
            smtp = SMTP(handler, hostname="b.example", **options)
            self._sessions.append(smtp)
            return smtp

        await self._listen(ip, session)
        return handler

    async def raw(self, ip: str, greeting: bytes) -> None:
        """A server that greets with ``greeting`` and hangs up."""

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(greeting)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, ip, self.port)
        self.port = int(server.sockets[0].getsockname()[1])
        self._servers.append(server)

    async def _listen(self, ip: str, factory: Any) -> None:
        server = await asyncio.get_running_loop().create_server(factory, ip, self.port)
        self.port = int(server.sockets[0].getsockname()[1])
        self._servers.append(server)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for smtp in self._sessions:
            if isinstance(smtp.transport, asyncio.Transport):
                smtp.transport.abort()

    def transport(self, *, maildir: Path | None = None) -> Transport:
        settings = RelaySettings(
            organization=Organization(), role=RelayRole.CLOUD, hostname="relay.test", listen=(),
            spool=self.tmp / "spool", maildir=maildir or self.tmp / "mailboxes", smtp_port=self.port or 25,
            allow_private=True, limits=Limits(operation_timeout=5.0),
        )  # fmt: skip
        # Never asked: every host here is a literal address.
        return Transport(settings, Resolver([Nameserver("127.0.0.1", 9)], timeout=1.0))


NETS = (f"127.0.92.{n}" for n in itertools.count(1, 4))


@pytest.fixture
def ips() -> Iterator[str]:
    base = next(NETS).rpartition(".")
    return (f"{base[0]}.{int(base[2]) + n}" for n in range(4))


@asynccontextmanager
async def world(tmp: Path) -> AsyncIterator[World]:
    made = World(tmp)
    try:
        yield made
    finally:
        await made.close()


async def session(
    transport: Transport, ip: str, *recipients: str, route: Route = OPPORTUNISTIC, sender: str = "alice@contoso.com",
    content: bytes = CONTENT,
) -> SessionResult:  # fmt: skip
    return await transport.session(route, Connect("mx.b.example", ip, recipients), sender, content)


def test_each_recipient_keeps_its_own_reply_and_the_message_carries_this_hops_trace(
    tmp_path: Path, ips: Iterator[str]
) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as made:
            ip = next(ips)
            handler = await made.smtp(ip, Handler())
            handler.rcpt = {"gone@b.example": "550 5.1.1 No such user", "busy@b.example": "452 4.2.2 Mailbox full"}
            route = Route("connector:to-b/exact", "to-b", "exact", smart_hosts=(ip,))
            recipients = ("ok@b.example", "gone@b.example", "busy@b.example")
            outcomes = await made.transport().send(route, "alice@contoso.com", recipients, CONTENT)

            where = f"{ip}[{ip}]"
            assert sorted(outcomes, key=lambda o: o.recipient) == [
                Outcome("busy@b.example", Result.DEFERRED, "452 4.2.2 Mailbox full", where),
                Outcome("gone@b.example", Result.FAILED, "550 5.1.1 No such user", where),
                Outcome("ok@b.example", Result.DELIVERED, "250 2.0.0 Ok: queued as 42", where),
            ]
            [message] = handler.messages
            trace = f'X-Diag-Trace: hop=relay.test; role=cloud; connector="to-b"; rule=exact; to={ip}[{ip}]; tls=none'
            assert message == trace.encode() + b"\r\n" + CONTENT

    run(scenario())


def test_rd05_8bit_content_goes_only_to_a_server_that_offers_8bitmime(tmp_path: Path, ips: Iterator[str]) -> None:
    content = "Subject: Grüße\r\n\r\nÄ\r\n".encode()

    async def scenario() -> None:
        async with world(tmp_path) as made:
            seven, eight = next(ips), next(ips)
            no_8bit = await made.smtp(seven, Handler(), decode_data=True)  # aiosmtpd offers no 8BITMIME then
            with_8bit = await made.smtp(eight, Handler())
            transport = made.transport()

            refused = await session(transport, seven, "user@b.example", content=content)
            reply = "554 5.6.3 Conversion required but not supported: mx.b.example does not offer 8BITMIME"
            assert refused == SessionResult(
                (Outcome("user@b.example", Result.FAILED, reply, f"mx.b.example[{seven}]"),), {}
            )
            assert "MAIL" not in no_8bit.commands

            sent = await session(transport, eight, "user@b.example", content=content)
            assert [o.result for o in sent.decided] == [Result.DELIVERED]
            assert with_8bit.mail_options == [["BODY=8BITMIME"]]

    run(scenario())


def test_a_non_ascii_address_goes_only_to_a_server_that_offers_smtputf8(tmp_path: Path, ips: Iterator[str]) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as made:
            plain, utf8 = next(ips), next(ips)
            await made.smtp(plain, Handler())
            with_utf8 = await made.smtp(utf8, Handler(), enable_SMTPUTF8=True)
            transport = made.transport()

            refused = await session(transport, plain, "jürgen@b.example")
            [outcome] = refused.decided
            assert outcome.result is Result.FAILED
            assert (
                outcome.reply
                == "553 5.6.7 mx.b.example does not offer SMTPUTF8, needed for a non-ASCII address (RFC 6531)"
            )

            sent = await session(transport, utf8, "jürgen@b.example")
            assert [o.result for o in sent.decided] == [Result.DELIVERED]
            assert with_utf8.mail_options == [["SMTPUTF8"]]

    run(scenario())


@pytest.mark.parametrize(
    ("reply", "failed"), [("550 5.7.1 Sender refused", True), ("451 4.7.1 Try again later", False)]
)
def test_a_refused_sender_fails_or_defers_every_recipient(
    tmp_path: Path, ips: Iterator[str], reply: str, failed: bool
) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as made:
            ip = next(ips)
            handler = await made.smtp(ip, Handler())
            handler.mail = reply
            result = await session(made.transport(), ip, "a@b.example", "b@b.example")
            if failed:
                assert [(o.recipient, o.result, o.reply) for o in result.decided] == [
                    ("a@b.example", Result.FAILED, reply), ("b@b.example", Result.FAILED, reply),
                ]  # fmt: skip
                assert result.retry == {}
            else:
                assert result.decided == () and result.retry == {"a@b.example": reply, "b@b.example": reply}
            assert handler.messages == []

    run(scenario())


@pytest.mark.parametrize(("reply", "failed"), [("554 5.6.0 Content refused", True), ("451 4.3.0 Later", False)])
def test_the_reply_to_the_final_dot_decides_for_every_accepted_recipient(
    tmp_path: Path, ips: Iterator[str], reply: str, failed: bool
) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as made:
            ip = next(ips)
            handler = await made.smtp(ip, Handler())
            handler.rcpt = {"gone@b.example": "550 5.1.1 No such user"}
            handler.data = reply
            result = await session(made.transport(), ip, "ok@b.example", "gone@b.example")
            where = f"mx.b.example[{ip}]"
            gone = Outcome("gone@b.example", Result.FAILED, "550 5.1.1 No such user", where)
            if failed:
                assert result == SessionResult((gone, Outcome("ok@b.example", Result.FAILED, reply, where)), {})
            else:
                assert result == SessionResult((gone,), {"ok@b.example": reply})

    run(scenario())


def test_a_server_refusing_ehlo_gets_helo_unless_tls_is_required(tmp_path: Path, ips: Iterator[str]) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as made:
            ip = next(ips)
            handler = await made.smtp(ip, Handler())
            handler.refuse_ehlo = True
            transport = made.transport()

            sent = await session(transport, ip, "user@b.example")
            assert [o.result for o in sent.decided] == [Result.DELIVERED]
            assert handler.commands[:3] == ["EHLO", "HELO", "MAIL"]

            # RD-36: STARTTLS needs EHLO, so where TLS is required there is no HELO fallback
            handler.commands.clear()
            refused = await session(transport, ip, "user@b.example", route=REQUIRED)
            where = f"[LastAttemptedServerName=mx.b.example] [LastAttemptedIP={ip}:{made.port}]"
            assert refused == SessionResult((), {"user@b.example": f"502 5.5.2 Command not recognized {where}"})
            assert handler.commands == ["EHLO"]

    run(scenario())


def test_rd31_a_refusing_greeting_or_connection_sends_the_recipients_on_to_the_next_host(
    tmp_path: Path, ips: Iterator[str]
) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as made:
            refusing, closed, accepting = next(ips), next(ips), next(ips)
            await made.raw(refusing, b"554 5.3.2 Not accepting mail\r\n")
            handler = await made.smtp(accepting, Handler())  # nothing listens on ``closed``
            transport = made.transport()

            greeted = await session(transport, refusing, "user@b.example")
            assert greeted.decided == ()
            assert greeted.retry["user@b.example"].startswith("554 5.3.2 Not accepting mail [LastAttemptedServerName=")
            connection = await session(transport, closed, "user@b.example")
            assert connection.retry["user@b.example"].startswith("450 4.4.316 Connection refused [Message=")

            route = Route("connector:to-b/exact", "to-b", "exact", smart_hosts=(refusing, closed, accepting))
            outcomes = await transport.send(route, "alice@contoso.com", ["user@b.example"], CONTENT)
            assert [(o.result, o.host) for o in outcomes] == [(Result.DELIVERED, f"{accepting}[{accepting}]")]
            assert len(handler.messages) == 1

    run(scenario())


# --- local mailboxes ----------------------------------------------------------------------------------------------


def test_local_delivery_adds_return_path_and_reports_each_mailbox(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as made:
            transport = made.transport()
            outcomes = await transport.store("alice@contoso.com", ["bob@contoso.com", "../x@contoso.com"], CONTENT)
            assert outcomes[0] == Outcome(
                "bob@contoso.com", Result.DELIVERED, "250 2.0.0 Delivered to the mailbox", "local"
            )
            assert outcomes[1].result is Result.FAILED and outcomes[1].reply.startswith("550 5.1.1 address ")
            [stored] = list((tmp_path / "mailboxes" / "bob@contoso.com" / "new").iterdir())
            assert stored.read_bytes() == b"Return-Path: <alice@contoso.com>\r\n" + CONTENT

            # A disk that cannot take it: deferred, not failed
            (tmp_path / "full").write_text("not a directory")
            broken = made.transport(maildir=tmp_path / "full")
            [deferred] = await broken.store("alice@contoso.com", ["bob@contoso.com"], CONTENT)
            assert deferred.result is Result.DEFERRED
            assert deferred.reply.startswith("451 4.3.0 Cannot store the message in the mailbox: ")

    run(scenario())
