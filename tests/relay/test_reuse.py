"""Tests of the delivery connection cache against a real aiosmtpd server on loopback (no mocks).

The server records the commands that matter for reuse (RSET, QUIT) and can refuse RSET or hang up, as a server
ending an idle session does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from diag.relay.reuse import ConnectionCache, Reusable, quit_session

T = TypeVar("T")

DEADLINE = 20.0
KEY = ("mx.b.example", "127.0.0.1", "opportunistic", False)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, DEADLINE))


class Server:
    """An aiosmtpd server on 127.0.0.1 that records RSET and QUIT, and refuses RSET on the sessions in
    ``refusing``."""

    def __init__(self) -> None:
        self.refusing: set[SMTP] = set()
        self.commands: list[str] = []
        self.sessions: list[SMTP] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.commands.append("RSET")
        return "421 4.4.2 Idle too long, closing" if server in self.refusing else "250 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.commands.append("QUIT")
        return "221 Bye"

    def _session(self) -> SMTP:
        smtp = SMTP(self, hostname="mx.b.example")
        self.sessions.append(smtp)
        return smtp

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(self._session, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for smtp in self.sessions:
            if isinstance(smtp.transport, asyncio.Transport):
                smtp.transport.abort()

    async def client(self, *, opened: float | None = None) -> Reusable:
        """A client session that said EHLO, ready to be kept."""
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, start_tls=False, timeout=5)
        await smtp.connect()
        await smtp.ehlo()
        return Reusable(smtp, "none", asyncio.get_running_loop().time() if opened is None else opened)


@asynccontextmanager
async def serving() -> AsyncIterator[Server]:
    server = Server()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def eventually(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not check():  # noqa: ASYNC110 - the server's record has no change notification to wait on
            await asyncio.sleep(0.01)


def cache(*, idle: float = 30.0, lifetime: float = 300.0, size: int = 4) -> ConnectionCache:
    return ConnectionCache(idle=idle, lifetime=lifetime, size=size)


def test_a_session_given_back_is_taken_again_after_an_rset_and_only_on_its_own_terms() -> None:
    async def scenario() -> None:
        async with serving() as server:
            connections = cache()
            assert await connections.take(KEY) is None  # nothing kept yet: open a new one
            session = await server.client()
            connections.give(KEY, session)
            assert len(connections) == 1

            # Other terms (here: another TLS demand) never get it
            assert await connections.take((*KEY[:2], "encrypt", False)) is None
            assert server.commands == []

            # The same terms get the very session, proved alive by RSET
            assert await connections.take(KEY) is session
            assert server.commands == ["RSET"]
            assert len(connections) == 0
            assert await connections.take(KEY) is None  # one user at a time: taking removes it
            await quit_session(session.smtp)
            await connections.close()

    run(scenario())


def test_the_most_recently_used_session_is_taken_first() -> None:
    async def scenario() -> None:
        async with serving() as server:
            connections = cache()
            older, newer = await server.client(), await server.client()
            connections.give(KEY, older)
            connections.give(KEY, newer)
            assert await connections.take(KEY) is newer
            assert await connections.take(KEY) is older
            for session in (older, newer):
                await quit_session(session.smtp)

    run(scenario())


def test_a_session_that_refuses_rset_is_closed_and_the_next_one_is_used() -> None:
    async def scenario() -> None:
        async with serving() as server:
            connections = cache()
            good, bad = await server.client(), await server.client()
            server.refusing.add(server.sessions[-1])
            connections.give(KEY, good)
            connections.give(KEY, bad)

            assert await connections.take(KEY) is good
            assert server.commands == ["RSET", "RSET"]  # the newest first: refused, then the older one
            await eventually(lambda: not bad.smtp.is_connected)
            assert len(connections) == 0
            await quit_session(good.smtp)

    run(scenario())


def test_a_session_the_server_hung_up_while_idle_is_passed_over() -> None:
    async def scenario() -> None:
        async with serving() as server:
            connections = cache()
            alive, stale = await server.client(), await server.client()
            connections.give(KEY, alive)
            connections.give(KEY, stale)
            hung_up = server.sessions[-1].transport
            assert hung_up is not None
            hung_up.close()

            assert await connections.take(KEY) is alive
            assert not stale.smtp.is_connected
            assert await connections.take(KEY) is None
            await quit_session(alive.smtp)

    run(scenario())


def test_an_idle_session_quits_when_its_idle_time_is_up() -> None:
    async def scenario() -> None:
        async with serving() as server:
            connections = cache(idle=0.1)
            session = await server.client()
            connections.give(KEY, session)
            await eventually(lambda: server.commands == ["QUIT"])
            assert len(connections) == 0
            assert await connections.take(KEY) is None
            assert server.commands == ["QUIT"]  # no RSET: nothing was tried on the closed session

    run(scenario())


def test_a_session_past_its_lifetime_or_beyond_the_size_is_closed_instead_of_kept() -> None:
    async def scenario() -> None:
        async with serving() as server:
            connections = cache(lifetime=60.0, size=1)
            old = await server.client(opened=asyncio.get_running_loop().time() - 60.0)
            connections.give(KEY, old)
            await eventually(lambda: server.commands == ["QUIT"])
            assert len(connections) == 0

            kept, extra = await server.client(), await server.client()
            connections.give(KEY, kept)
            connections.give(("other", "127.0.0.1", "opportunistic", False), extra)  # the size counts every key
            await eventually(lambda: server.commands == ["QUIT", "QUIT"])
            assert len(connections) == 1
            assert not extra.smtp.is_connected
            assert await connections.take(KEY) is kept
            await quit_session(kept.smtp)

    run(scenario())


def test_a_disconnected_session_is_not_kept() -> None:
    async def scenario() -> None:
        async with serving() as server:
            connections = cache()
            session = await server.client()
            session.smtp.close()
            connections.give(KEY, session)
            assert len(connections) == 0
            await connections.close()

    run(scenario())


def test_close_quits_every_idle_session_and_keeps_none_afterwards() -> None:
    async def scenario() -> None:
        async with serving() as server:
            connections = cache()
            sessions = [await server.client() for _ in range(3)]
            connections.give(KEY, sessions[0])
            connections.give(("other", "127.0.0.1", "opportunistic", False), sessions[1])

            await connections.close()
            assert server.commands == ["QUIT", "QUIT"]  # close() waited for the goodbyes
            assert len(connections) == 0

            connections.give(KEY, sessions[2])  # a delivery finishing after the close
            await eventually(lambda: server.commands == ["QUIT"] * 3)
            assert len(connections) == 0

    run(scenario())
