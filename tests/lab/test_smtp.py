"""Tests of the lab's SMTP hosts: real aiosmtplib clients and raw streams against real servers on loopback."""

from __future__ import annotations

import asyncio
import mailbox
import ssl
import warnings
from collections.abc import Awaitable, Coroutine
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import aiosmtplib
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from diag.errors import LabError
from diag.lab.pki import CertKind, Issued, TestPKI
from diag.lab.smtp import HostKind, LabHost, LabHostServer, TlsFiles, start_host

T = TypeVar("T")

# Each test has its own address in 127.0.77.0/24 (all of 127/8 is loopback on Linux) and port 0.
NET = "127.0.77."
DEADLINE = 60.0  # bound on each test's event loop
WAIT = 5.0  # bound on each wait for a server
NO_SERVICE = "554 5.7.1 No SMTP service here"


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, DEADLINE))


async def bounded(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, WAIT)


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.create()


def tls_files(issued: Issued, directory: Path, stem: str) -> TlsFiles:
    chain, key = issued.write(directory, stem)
    return TlsFiles(chain=chain, key=key)


def der(issued: Issued) -> bytes:
    return issued.certificate.public_bytes(Encoding.DER)


def verifying_context(pki: TestPKI, *, with_intermediate: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=pki.root_pem().decode())
    if with_intermediate:
        context.load_verify_locations(cadata=pki.intermediate.public_bytes(Encoding.PEM).decode())
    return context


def legacy_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0 is deprecated: that is the point
        context.minimum_version = ssl.TLSVersion.TLSv1
    return context


def peer_chain(client: aiosmtplib.SMTP) -> list[bytes]:
    """The certificates the server sent, leaf first, as DER, whether or not they were verified."""
    ssl_object = client.get_transport_info("ssl_object")
    if hasattr(ssl_object, "get_unverified_chain"):  # public from Python 3.13, as DER bytes
        return list(ssl_object.get_unverified_chain())
    # Python 3.11/3.12: only the private _ssl object has it, as _ssl.Certificate objects.
    return [cert.public_bytes(2) for cert in ssl_object._sslobj.get_unverified_chain()]  # 2: ENCODING_DER


async def serve(host: LabHost, tmp_path: Path, *, idle: float = 30.0) -> LabHostServer:
    return await start_host(host, 0, maildir=tmp_path / "mail", timeout=idle)


async def connect(server: LabHostServer) -> tuple[aiosmtplib.SMTP, aiosmtplib.SMTPResponse]:
    client = aiosmtplib.SMTP(hostname=server.host.ip, port=server.port, start_tls=False, timeout=WAIT)
    banner = await client.connect()
    return client, banner


async def open_raw(server: LabHostServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await bounded(asyncio.open_connection(server.host.ip, server.port))


async def reply(reader: asyncio.StreamReader) -> bytes:
    """The last line of one (possibly multi-line) reply."""
    while True:
        line = await bounded(reader.readline())
        if line[3:4] != b"-":
            return line


async def command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes) -> bytes:
    writer.write(line + b"\r\n")
    return await reply(reader)


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Read until the server closes the connection; return what it still sent."""
    try:
        rest = await bounded(reader.read())
    except ConnectionResetError:
        rest = b""
    assert reader.at_eof() or rest == b""
    return rest


def message(to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "probe@sender.example"
    msg["To"] = to
    msg["Subject"] = "diag lab probe 42"
    msg.set_content("hello\n")
    return msg


# --- MAIL with STARTTLS ---------------------------------------------------------------------------


def test_mail_host_with_good_chain_offers_starttls_and_sends_leaf_and_intermediate(
    pki: TestPKI, tmp_path: Path
) -> None:
    name = "mx.good.example"
    issued = pki.issue([name])
    host = LabHost(name, NET + "1", tls=tls_files(issued, tmp_path, "good"))

    async def main() -> None:
        async with await serve(host, tmp_path) as server:
            client, banner = await connect(server)
            try:
                assert (banner.code, banner.message) == (220, f"{name} ESMTP diag lab")
                await client.ehlo()
                assert client.supports_extension("starttls")
                await client.starttls(server_hostname=name, tls_context=verifying_context(pki))
                assert client.get_transport_info("peercert")["subject"] == ((("commonName", name),),)
                assert peer_chain(client) == [der(issued), pki.intermediate.public_bytes(Encoding.DER)]
                await client.ehlo()
                # RFC 3207 §4.2: not offered again; and a receiving host offers no AUTH.
                assert not client.supports_extension("starttls")
                assert not client.supports_extension("auth")
                assert (await client.quit()).code == 221
            finally:
                client.close()

    run(main())


def test_mail_host_with_chainless_certificate_sends_only_its_leaf(pki: TestPKI, tmp_path: Path) -> None:
    name = "mx.chainless.example"
    issued = pki.issue([name], kind=CertKind.CHAINLESS)
    host = LabHost(name, NET + "2", tls=tls_files(issued, tmp_path, "chainless"))

    async def main() -> None:
        async with await serve(host, tmp_path) as server:
            # A client that trusts only the root cannot build the path: the intermediate is really missing.
            client, _ = await connect(server)
            try:
                with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
                    await client.starttls(server_hostname=name, tls_context=verifying_context(pki))
            finally:
                client.close()
            # One that already holds the intermediate verifies the leaf, and sees that only the leaf came.
            client, _ = await connect(server)
            try:
                context = verifying_context(pki, with_intermediate=True)
                await client.starttls(server_hostname=name, tls_context=context)
                assert peer_chain(client) == [der(issued)]
            finally:
                client.close()

    run(main())


@pytest.mark.parametrize("kind", [CertKind.WEAK_KEY, CertKind.SHA1])
def test_mail_host_with_legacy_certificate_completes_a_legacy_handshake(
    pki: TestPKI, tmp_path: Path, kind: CertKind
) -> None:
    name = f"mx.{kind.value}.example"
    issued = pki.issue([name], kind=kind)
    host = LabHost(name, NET + "3", tls=tls_files(issued, tmp_path, kind.value), legacy_crypto=True)

    async def main() -> None:
        async with await serve(host, tmp_path) as server:
            client, _ = await connect(server)
            try:
                await client.starttls(server_hostname=name, tls_context=legacy_context())
                assert peer_chain(client)[0] == der(issued)
                assert (await client.noop()).code == 250
            finally:
                client.close()

    run(main())


def test_legacy_certificate_without_legacy_crypto_cannot_start(pki: TestPKI, tmp_path: Path) -> None:
    name = "mx.weak.example"
    issued = pki.issue([name], kind=CertKind.WEAK_KEY)
    host = LabHost(name, NET + "4", tls=tls_files(issued, tmp_path, "weak"))
    if ssl.create_default_context().security_level < 2:
        pytest.skip("OpenSSL's default security level accepts RSA-1024 here")

    async def main() -> None:
        with pytest.raises(LabError, match="cannot load"):
            await serve(host, tmp_path)

    run(main())


def test_outdated_host_offers_only_tls_1_0_and_1_1(pki: TestPKI, tmp_path: Path) -> None:
    name = "mx.outdated.example"
    versions = (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
    host = LabHost(name, NET + "5", tls=tls_files(pki.issue([name]), tmp_path, "old"), tls_versions=versions)

    async def main() -> None:
        async with await serve(host, tmp_path) as server:
            client, _ = await connect(server)
            try:
                # Python's default client wants TLS 1.2 or later; the server ends the handshake.
                with pytest.raises((ssl.SSLError, aiosmtplib.SMTPServerDisconnected)):
                    await client.starttls(server_hostname=name, tls_context=verifying_context(pki))
            finally:
                client.close()
            client, _ = await connect(server)
            try:
                await client.starttls(server_hostname=name, tls_context=legacy_context())
                assert client.get_transport_info("ssl_object").version() == "TLSv1.1"
            finally:
                client.close()

    run(main())


# --- MAIL without TLS, recipients and delivery ----------------------------------------------------


def test_mail_host_without_tls_offers_no_starttls_and_hides_its_software(tmp_path: Path) -> None:
    host = LabHost("mx.plain.example", NET + "10")

    async def main() -> None:
        async with await serve(host, tmp_path) as server:
            client, banner = await connect(server)
            try:
                assert banner.message == "mx.plain.example ESMTP diag lab"
                assert "Python" not in banner.message
                await client.ehlo()
                assert not client.supports_extension("starttls")
                assert not client.supports_extension("smtputf8")
                assert client.esmtp_extensions["size"] == str(10 * 1024 * 1024)
            finally:
                client.close()

    run(main())


def test_message_to_an_accepted_domain_lands_in_the_hosts_maildir(tmp_path: Path) -> None:
    host = LabHost("mx.sun.example", NET + "11", domains=("sun.example",))

    async def main() -> None:
        async with await serve(host, tmp_path) as server:
            client, _ = await connect(server)
            try:
                # Domains match without regard to case (RFC 5321 §2.4).
                errors, response = await client.send_message(message("alice@SUN.example"))
                assert errors == {}
                assert response.startswith("2.0.0")
            finally:
                client.close()

    run(main())
    stored = list(mailbox.Maildir(tmp_path / "mail" / "mx.sun.example", factory=None, create=False))
    assert len(stored) == 1
    assert stored[0]["Subject"] == "diag lab probe 42"
    assert stored[0]["Return-Path"] == "<probe@sender.example>"
    # The relay's Received line: the mail host is the relay's server.
    assert "by mx.sun.example with ESMTP id " in " ".join(stored[0]["Received"].split())


RELAY_DENIED = (554, "5.7.1 Relay access denied")


@pytest.mark.parametrize(
    ("recipient", "refusal"),
    [
        ("bob@other.example", RELAY_DENIED),
        ("bob@notsun.example", RELAY_DENIED),  # a naive endswith() would accept it
        ("bob@sun.example.evil.example", RELAY_DENIED),
        ("bob@sub.sun.example", RELAY_DENIED),
        ("postmaster", (550, "5.1.1 <postmaster>: Recipient address rejected: User unknown")),
    ],
)
def test_recipient_outside_the_hosts_domains_is_refused(
    tmp_path: Path, recipient: str, refusal: tuple[int, str]
) -> None:
    host = LabHost("mx.sun.example", NET + "12", domains=("sun.example",))

    async def main() -> None:
        async with await serve(host, tmp_path) as server:
            client, _ = await connect(server)
            try:
                await client.ehlo()
                await client.mail("probe@sender.example")
                with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                    await client.rcpt(recipient)
                assert (refused.value.code, refused.value.message) == refusal
            finally:
                client.close()

    run(main())


@pytest.mark.parametrize(
    ("verb", "address", "expected"),
    [
        # Security-cases RR-20: the domain after the last '@' is accepted, the text before it is an injection.
        (
            b"RCPT TO:",
            b'<"a\rx <v@evil.example>"@sun.example>',
            b"553 5.1.3 Bad recipient address syntax\r\n",
        ),
        (b"RCPT TO:", b'<"a\x00b"@sun.example>', b"553 5.1.3 Bad recipient address syntax\r\n"),
        (b"RCPT TO:", b'<"a\x7fb"@sun.example>', b"553 5.1.3 Bad recipient address syntax\r\n"),
        (b"MAIL FROM:", b'<"a\rb"@sender.example>', b"553 5.1.7 Bad sender address syntax\r\n"),
    ],
)
def test_address_with_control_character_is_refused_with_553(
    tmp_path: Path, verb: bytes, address: bytes, expected: bytes
) -> None:
    # aiosmtplib refuses to send CR itself, so this client speaks raw bytes.
    host = LabHost("mx.sun.example", NET + "13", domains=("sun.example",))

    async def main() -> None:
        async with await serve(host, tmp_path) as server:
            reader, writer = await open_raw(server)
            try:
                assert (await reply(reader)).startswith(b"220 ")
                assert (await command(reader, writer, b"EHLO probe.example")).startswith(b"250 ")
                if verb == b"RCPT TO:":
                    assert (
                        await command(reader, writer, b"MAIL FROM:<p@sender.example>") == b"250 2.1.0 Ok\r\n"
                    )
                assert await command(reader, writer, verb + address) == expected
            finally:
                writer.close()

    run(main())


def test_storage_failure_answers_451_without_the_exception_text(tmp_path: Path) -> None:
    host = LabHost("mx.sun.example", NET + "14", domains=("sun.example",))
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("the Maildir parent is a file, so storing fails\n")

    async def main() -> None:
        server = await start_host(host, 0, maildir=blocker, timeout=30.0)
        async with server:
            client, _ = await connect(server)
            try:
                with pytest.raises(aiosmtplib.SMTPDataError) as failed:
                    await client.send_message(message("alice@sun.example"))
                assert (failed.value.code, failed.value.message) == (451, "4.3.0 Temporary failure, try again later")
                # The session goes on: the failure was temporary.
                assert (await client.noop()).code == 250
            finally:
                client.close()

    run(main())


# --- TARPIT ---------------------------------------------------------------------------------------


def test_tarpit_accepts_but_never_sends_a_byte(tmp_path: Path) -> None:
    host = LabHost("tarpit.example", NET + "20", kind=HostKind.TARPIT)

    async def main() -> None:
        server = await serve(host, tmp_path)
        reader, writer = await open_raw(server)
        try:
            writer.write(b"EHLO probe.example\r\n")
            await bounded(writer.drain())
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.5)
            await bounded(server.close())
            assert await closed_by_server(reader) == b""
        finally:
            writer.close()

    run(main())


def test_tarpit_lets_go_after_ten_times_the_timeout(tmp_path: Path) -> None:
    host = LabHost("tarpit.example", NET + "21", kind=HostKind.TARPIT)

    async def main() -> None:
        async with await serve(host, tmp_path, idle=0.05) as server:
            reader, writer = await open_raw(server)
            try:
                assert await closed_by_server(reader) == b""
            finally:
                writer.close()

    run(main())


# --- GREETING -------------------------------------------------------------------------------------


def test_554_greeting_is_refused_by_aiosmtplib_connect(tmp_path: Path) -> None:
    host = LabHost("nosmtp.example", NET + "30", kind=HostKind.GREETING, greeting=NO_SERVICE)

    async def main() -> None:
        async with await serve(host, tmp_path) as server:
            client = aiosmtplib.SMTP(hostname=server.host.ip, port=server.port, start_tls=False, timeout=WAIT)
            with pytest.raises(aiosmtplib.SMTPConnectResponseError) as refused:
                await client.connect()
            assert refused.value.code == 554
            client.close()

    run(main())


def test_554_greeting_keeps_the_session_until_quit(tmp_path: Path) -> None:
    host = LabHost("nosmtp.example", NET + "31", kind=HostKind.GREETING, greeting=NO_SERVICE)

    async def main() -> None:
        async with await serve(host, tmp_path) as server:
            reader, writer = await open_raw(server)
            try:
                assert await reply(reader) == NO_SERVICE.encode() + b"\r\n"
                # RFC 5321 §3.1: every command but QUIT gets 503.
                assert await command(reader, writer, b"EHLO probe.example") == (
                    b"503 5.5.1 Bad sequence of commands\r\n"
                )
                assert await command(reader, writer, b"quit") == b"221 2.0.0 Bye\r\n"
                assert await closed_by_server(reader) == b""
            finally:
                writer.close()

    run(main())


def test_554_greeting_ends_the_session_at_the_tenth_command(tmp_path: Path) -> None:
    host = LabHost("nosmtp.example", NET + "32", kind=HostKind.GREETING, greeting=NO_SERVICE)

    async def main() -> None:
        async with await serve(host, tmp_path) as server:
            reader, writer = await open_raw(server)
            try:
                await reply(reader)
                writer.write(b"NOOP\r\n" * 12)
                replies = [await reply(reader) for _ in range(10)]
                assert replies[:9] == [b"503 5.5.1 Bad sequence of commands\r\n"] * 9
                assert replies[9] == b"421 4.7.0 Too many errors\r\n"
                assert await closed_by_server(reader) == b""
            finally:
                writer.close()

    run(main())


def test_554_greeting_ends_an_idle_session_at_the_timeout(tmp_path: Path) -> None:
    host = LabHost("nosmtp.example", NET + "33", kind=HostKind.GREETING, greeting=NO_SERVICE)

    async def main() -> None:
        async with await serve(host, tmp_path, idle=0.1) as server:
            reader, writer = await open_raw(server)
            try:
                await reply(reader)
                assert await closed_by_server(reader) == b"421 4.4.2 Timeout exceeded\r\n"
            finally:
                writer.close()

    run(main())


def test_421_greeting_closes_right_after_the_line(tmp_path: Path) -> None:
    greeting = "421 4.7.0 Too many connections, try later"
    host = LabHost("busy.example", NET + "34", kind=HostKind.GREETING, greeting=greeting)

    async def main() -> None:
        async with await serve(host, tmp_path) as server:
            reader, writer = await open_raw(server)
            try:
                assert await closed_by_server(reader) == greeting.encode() + b"\r\n"
            finally:
                writer.close()
            client = aiosmtplib.SMTP(hostname=server.host.ip, port=server.port, start_tls=False, timeout=WAIT)
            with pytest.raises(aiosmtplib.SMTPConnectResponseError) as refused:
                await client.connect()
            assert refused.value.code == 421
            client.close()

    run(main())


# --- ENDLESS --------------------------------------------------------------------------------------


RATE_LIMITED = "421 4.7.0 Too many connections, try later"


def test_endless_host_sends_continuation_lines_and_never_the_last_one(tmp_path: Path) -> None:
    host = LabHost("endless.example", NET + "36", kind=HostKind.ENDLESS, greeting=RATE_LIMITED)

    async def main() -> None:
        async with await serve(host, tmp_path) as server:
            reader, writer = await open_raw(server)
            try:
                # Far more than any client's reply limit, every line a continuation of the same 421 reply
                received = await bounded(reader.readexactly(200_000))
                lines = received.split(b"\r\n")
                assert set(lines[:-1]) == {b"421-4.7.0 Too many connections, try later"}
            finally:
                writer.close()
            # aiosmtplib gives up on it: the reply outgrows its limit, and it keeps none of the text
            client = aiosmtplib.SMTP(hostname=server.host.ip, port=server.port, start_tls=False, timeout=WAIT)
            with pytest.raises(aiosmtplib.SMTPResponseException) as too_long:
                await client.connect()
            assert "too long" in too_long.value.message.lower()
            client.close()

    run(main())


def test_endless_host_lets_go_after_ten_times_the_timeout(tmp_path: Path) -> None:
    host = LabHost("endless.example", NET + "37", kind=HostKind.ENDLESS, greeting=RATE_LIMITED)

    async def main() -> None:
        async with await serve(host, tmp_path, idle=0.05) as server:
            reader, writer = await open_raw(server)
            try:
                received = await closed_by_server(reader)
                assert received and all(line.startswith(b"421-") for line in received.split(b"\r\n")[:-1])
            finally:
                writer.close()

    run(main())


# --- connections: close and cap -------------------------------------------------------------------


def test_close_aborts_idle_mail_sessions_promptly(pki: TestPKI, tmp_path: Path) -> None:
    name = "mx.idle.example"
    host = LabHost(name, NET + "40", tls=tls_files(pki.issue([name]), tmp_path, "idle"))

    async def main() -> None:
        server = await serve(host, tmp_path, idle=300.0)
        clients = [(await connect(server))[0] for _ in range(5)]
        for client in clients[:3]:
            await client.ehlo()
        # One session idles inside TLS: close() must reach through the TLS layer too.
        await clients[3].starttls(server_hostname=name, tls_context=verifying_context(pki))
        await bounded(server.close())
        for client in clients:
            with pytest.raises(aiosmtplib.SMTPServerDisconnected):
                await client.noop()
            client.close()
        # Not listening any more.
        with pytest.raises(OSError):
            await bounded(asyncio.open_connection(host.ip, server.port))
        await bounded(server.close())  # again: a no-op

    run(main())


@pytest.mark.parametrize(
    ("kind", "greeting", "refusal"),
    [
        (HostKind.MAIL, None, b"421 4.7.0 Too many connections\r\n"),
        (HostKind.GREETING, NO_SERVICE, b"421 4.7.0 Too many connections\r\n"),
        (HostKind.TARPIT, None, b""),
    ],
)
def test_257th_connection_is_refused(
    tmp_path: Path, kind: HostKind, greeting: str | None, refusal: bytes
) -> None:
    host = LabHost("capped.example", NET + "41", kind=kind, greeting=greeting)

    async def admitted(server: LabHostServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Open one more connection: the streams if the host took it, None (and closed) if it refused."""
        reader, writer = await open_raw(server)
        if kind is HostKind.TARPIT:
            # The tarpit refuses by closing; an admitted connection gets nothing at all.
            try:
                first = await asyncio.wait_for(reader.read(1), 0.5)
            except TimeoutError:
                return reader, writer
        else:
            first = await bounded(reader.readline())
            if first != refusal:
                return reader, writer
        assert first + await closed_by_server(reader) == refusal
        writer.close()
        return None

    async def main() -> None:
        async with await serve(host, tmp_path) as server:
            # Clients connect one after the other, and the host accepts in that order, so the first 256 are
            # admitted and counted before the 257th arrives.
            streams = [await open_raw(server) for _ in range(256)]
            try:
                if kind is not HostKind.TARPIT:
                    for reader, _ in streams:
                        assert not (await reply(reader)).startswith(b"421")
                assert await admitted(server) is None
                # A place frees up once the host has seen a client leave.
                streams.pop()[1].close()
                for _ in range(20):
                    if (again := await admitted(server)) is not None:
                        streams.append(again)
                        break
                    await asyncio.sleep(0.1)
                else:
                    pytest.fail("no place freed up after a client left")
            finally:
                for _, writer in streams:
                    writer.close()

    run(main())


# --- definitions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        LabHost("bad name", NET + "50"),
        LabHost("../escape", NET + "50"),
        LabHost("g.example", NET + "50", kind=HostKind.GREETING),
        LabHost("g.example", NET + "50", kind=HostKind.GREETING, greeting="554 x\r\n250 injected"),
        LabHost("g.example", NET + "50", kind=HostKind.GREETING, greeting="hello"),
        LabHost("m.example", NET + "50", greeting="554 5.7.1 No"),
        LabHost("t.example", NET + "50", kind=HostKind.TARPIT, domains=("t.example",)),
        LabHost("e.example", NET + "50", kind=HostKind.ENDLESS),
        LabHost("e.example", NET + "50", kind=HostKind.ENDLESS, greeting="421 x", script=(("EHLO", "250 x"),)),
    ],
)
def test_inconsistent_definition_is_a_lab_error(tmp_path: Path, host: LabHost) -> None:
    with pytest.raises(LabError):
        run(serve(host, tmp_path))


def test_address_in_use_is_a_lab_error(tmp_path: Path) -> None:
    host = LabHost("mx.twice.example", NET + "51")

    async def main() -> None:
        async with await serve(host, tmp_path) as first:
            with pytest.raises(LabError, match="cannot listen"):
                await start_host(host, first.port, maildir=tmp_path, timeout=30.0)

    run(main())
