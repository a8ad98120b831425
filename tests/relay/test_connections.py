"""Connection caps for aiosmtpd servers (diag/relay/connections.py), against a real server on loopback."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosmtplib
from aiosmtpd.smtp import SMTP

from diag.lab.pki import TestPKI
from diag.relay.connections import TOO_MANY_CONNECTIONS, CappedSMTP, Connections, peer_ip


class Handler:
    """aiosmtpd's default behaviour for every command: nothing to override."""


@asynccontextmanager
async def server(connections: Connections, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """A capped aiosmtpd server on loopback (offering STARTTLS with ``tls``); yields its port."""
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        lambda: CappedSMTP(Handler(), connections, hostname="caps.test", tls_context=tls, require_starttls=False),
        "127.0.0.1", 0,
    )  # fmt: skip
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        await connections.abort_all(wait=2)
        await listener.wait_closed()


async def greeting(port: int, source: str = "127.0.0.1") -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect from ``source`` (127.0.0.0/8 is all loopback on Linux, so each is a client address of its own)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    return await asyncio.wait_for(reader.readline(), 5), reader, writer


def test_peer_ip_reads_the_address_out_of_a_peer_name() -> None:
    assert peer_ip(("127.0.0.1", 4242)) == "127.0.0.1"
    assert peer_ip(("::1", 4242, 0, 0)) == "::1"
    assert peer_ip(None) == "" and peer_ip(()) == "" and peer_ip("127.0.0.1") == ""


def test_beyond_the_per_address_cap_a_client_gets_421_and_the_connection_closes() -> None:
    async def scenario() -> None:
        async with server(Connections(10, per_ip=2)) as port:
            first, second = await greeting(port), await greeting(port)
            assert first[0].startswith(b"220 ") and second[0].startswith(b"220 ")
            line, reader, writer = await greeting(port)
            assert line == TOO_MANY_CONNECTIONS  # RFC 5321 §3.1
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            # Another client address still gets in.
            other = await greeting(port, "127.0.0.2")
            assert other[0].startswith(b"220 ")
            for _, _, w in (first, second, other):
                w.close()

    asyncio.run(scenario())


def test_the_total_cap_counts_every_address_and_frees_a_place_when_a_client_leaves() -> None:
    async def scenario() -> None:
        async with server(Connections(2)) as port:
            one = await greeting(port, "127.0.0.1")
            two = await greeting(port, "127.0.0.2")
            refused, _, writer = await greeting(port, "127.0.0.3")
            assert refused == TOO_MANY_CONNECTIONS
            writer.close()
            one[2].write(b"QUIT\r\n")
            assert (await asyncio.wait_for(one[1].readline(), 5)).startswith(b"221")
            await asyncio.wait_for(one[1].read(), 5)
            # The slot is freed when the server sees the connection go; give it a few turns of the loop.
            for _ in range(50):
                line, _, writer = await greeting(port, "127.0.0.3")
                writer.close()
                if line != TOO_MANY_CONNECTIONS:
                    break
                await asyncio.sleep(0.05)
            assert line.startswith(b"220 ")
            two[2].close()

    asyncio.run(scenario())


def test_abort_all_drops_every_client_and_refuses_newcomers() -> None:
    async def scenario() -> None:
        connections = Connections(10)
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(lambda: CappedSMTP(Handler(), connections, hostname="caps.test"),
                                            "127.0.0.1", 0)  # fmt: skip
        port = listener.sockets[0].getsockname()[1]
        line, reader, writer = await greeting(port)
        assert line.startswith(b"220 ")
        writer.write(b"NOOP\r\n" * 20000)  # a client busy sending, never reading
        await writer.drain()
        assert len(connections) == 1
        await connections.abort_all(wait=30)
        assert len(connections) == 0
        # The client sees the connection end (EOF, or a reset for the replies it never read).
        try:
            while await asyncio.wait_for(reader.read(65536), 5):
                pass
        except ConnectionResetError:
            pass
        late, _, late_writer = await greeting(port)
        assert late == TOO_MANY_CONNECTIONS
        late_writer.close()
        writer.close()
        listener.close()
        await listener.wait_closed()

    asyncio.run(scenario())


def test_a_session_that_starts_tls_counts_once_and_frees_its_place_when_it_ends(tmp_path: Path) -> None:
    # Given a server that offers STARTTLS and admits one connection per client address
    pki = TestPKI.create()
    chain, key = pki.issue(["caps.test"]).write(tmp_path, "server")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(chain, key)
    trust = ssl.create_default_context(cadata=pki.root_pem().decode())

    async def scenario() -> None:
        connections = Connections(10, per_ip=1)
        async with server(connections, tls) as port:
            # When a client starts TLS (aiosmtpd calls connection_made again, with the TLS transport)
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=5)
            await client.connect()
            await client.starttls(server_hostname="caps.test", tls_context=trust)
            # Then the session goes on over TLS as one connection: not refused, not counted twice, still counted
            assert (await client.ehlo()).code == 250 and client.get_transport_info("ssl_object") is not None
            assert len(connections) == 1
            refused, _, writer = await greeting(port)
            assert refused == TOO_MANY_CONNECTIONS
            writer.close()
            # And when it ends, its place is free again for the same address
            await client.quit()
            for _ in range(100):
                if not len(connections):
                    break
                await asyncio.sleep(0.05)
            line, _, writer = await greeting(port)
            assert line.startswith(b"220 ")
            writer.close()

    asyncio.run(scenario())


class _Transport(asyncio.Transport):
    """A transport that is only an identity: release() and admit() never touch it; abort_all() aborts it."""

    def abort(self) -> None:
        pass


def test_release_is_safe_twice_and_for_an_unknown_transport() -> None:
    async def scenario() -> None:
        connections = Connections(1)
        transport = _Transport()
        assert connections.admit(transport, "192.0.2.1")
        assert not connections.admit(_Transport(), "192.0.2.2")  # total cap of 1
        connections.release(transport)
        connections.release(transport)
        connections.release(_Transport())
        assert connections.admit(_Transport(), "192.0.2.1")
        await connections.abort_all(wait=0.1)
        assert not connections.admit(_Transport(), "192.0.2.3")  # closing: nobody new

    asyncio.run(scenario())


def test_the_command_tables_are_aiosmtpds_own() -> None:
    """CappedSMTP narrows dir() to what aiosmtpd looks up by name; the tables it builds must not change."""
    from diag.relay.server import _RelaySMTP

    async def scenario() -> None:
        connections = Connections(1)
        capped = CappedSMTP(Handler(), connections, hostname="caps.test")
        plain = SMTP(Handler(), hostname="caps.test")
        assert capped._smtp_methods.keys() == plain._smtp_methods.keys()
        assert capped._auth_methods.keys() == plain._auth_methods.keys()
        assert {"EHLO", "MAIL", "RCPT", "DATA", "STARTTLS"} <= capped._smtp_methods.keys()
        # The relay's own protocol adds and overrides commands: the names are those of a full dir() walk.
        every = {name for name in dir(_RelaySMTP) if name.startswith(("smtp_", "auth_"))}
        assert set(_RelaySMTP._command_attributes()) == every

    asyncio.run(scenario())


def test_the_relay_handlers_hook_tables_are_those_of_a_full_walk() -> None:
    """The relay's handler narrows dir() to its hooks; aiosmtpd's hook, AUTH and EHLO-form lookups must not
    change."""
    from diag.relay.server import _Handler, _RelaySMTP

    class Walked(_Handler):
        def __dir__(self) -> list[str]:
            return object.__dir__(self)

    class Server:
        settings = None

    async def scenario() -> None:
        tables = []
        for handler in (_Handler(Server()), Walked(Server())):  # type: ignore[arg-type]
            smtp = _RelaySMTP(handler, Connections(1), asyncio.Semaphore(1), 1.0, hostname="caps.test")
            tables.append((sorted(smtp._handle_hooks), sorted(smtp._auth_methods), smtp._ehlo_hook_ver))
        assert tables[0] == tables[1]
        assert tables[0][0] == ["DATA", "EHLO", "MAIL", "RCPT"] and tables[0][2] == "new"

    asyncio.run(scenario())
