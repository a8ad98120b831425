"""Connection caps for aiosmtpd servers, which have none of their own (aiosmtpd issue #282, wontfix).

Every SMTP server of diag — the relay and the lab's hosts — tracks its connections here: capped in all and per
client address (security-cases.md RR-50), refused with ``421 4.7.0 Too many connections`` beyond the caps
(RFC 5321 §3.1), and all aborted when the server closes.

Caps alone let a few addresses lock everyone else out: 20 connections from each of 10 addresses, each dripping a
byte now and then, fill a cap of 200 and every new client gets 421. With a :class:`Stress` policy (the relay's)
the server behaves like Postfix in stress mode (STRESS_README): above a high-water mark, a connection that has
not finished a transaction (a 250 to DATA) within ``Stress.idle`` seconds of its opening or its last transaction
counts as idle, whatever bytes it sends; idle connections are closed (``421 4.4.2``) by a sweep, and at once when
a new client finds the server full, the busiest address's idlest first, so room is kept for new addresses.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from typing import Any, Final, cast

from aiosmtpd.smtp import SMTP

from diag.frozen import frozen

__all__ = ["IDLE_UNDER_STRESS", "TOO_MANY_CONNECTIONS", "CappedSMTP", "Connections", "Stress", "peer_ip"]

TOO_MANY_CONNECTIONS: Final = b"421 4.7.0 Too many connections\r\n"
# The methods aiosmtpd finds by name: SMTP commands and AUTH mechanisms.
_COMMAND_PREFIXES: Final = ("smtp_", "auth_")
# Postfix's words for a session it ends in stress mode ("421 4.4.2 <host> Error: timeout exceeded").
IDLE_UNDER_STRESS: Final = b"421 4.4.2 Error: timeout exceeded (idle while the server is busy)\r\n"


@frozen
class Stress:
    """When the server is under pressure, and what counts as idle then.

    Attributes:
        high_water: open connections from which the sweep closes idle ones.
        idle: seconds without a finished transaction after which a connection is idle under pressure.
    """

    high_water: int
    idle: float


class _Open:
    """One tracked connection: its client address, when it last made progress, and its end."""

    __slots__ = ("ip", "lost", "progress")

    def __init__(self, ip: str, lost: asyncio.Future[None], now: float) -> None:
        self.ip = ip
        self.lost = lost
        self.progress = now


def peer_ip(peer: object) -> str:
    """The address in a socket's peer name; aiosmtpd annotates ``Session.peer`` as str but it is the tuple."""
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class Connections:
    """The open sessions of one server: capped in all and per client address, all aborted on close; with a
    ``stress`` policy, idle sessions make room when the server is busy (see the module's docstring)."""

    __slots__ = ("_closing", "_limit", "_open", "_per_ip", "_per_ip_limit", "_stress", "_sweep", "_tasks")

    def __init__(self, limit: int, per_ip: int | None = None, *, stress: Stress | None = None) -> None:
        self._limit = limit
        self._per_ip_limit = limit if per_ip is None else per_ip
        self._stress = stress
        self._closing = False
        self._open: dict[asyncio.Transport, _Open] = {}
        self._per_ip: collections.Counter[str] = collections.Counter()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._sweep: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        """The connections open now."""
        return len(self._open)

    def admit(self, transport: asyncio.Transport, ip: str = "") -> bool:
        """Track ``transport`` if the caps allow it and the server is not closing; False means refuse it.

        Under a stress policy a full server first closes an idle session of another address to make room.
        """
        if self._closing or self._per_ip[ip] >= self._per_ip_limit:
            return False
        loop = asyncio.get_running_loop()
        if len(self._open) >= self._limit and not self._make_room(loop.time()):
            return False
        self._open[transport] = _Open(ip, loop.create_future(), loop.time())
        self._per_ip[ip] += 1
        if self._stress is not None and len(self._open) >= self._stress.high_water and self._sweep is None:
            self._sweep = loop.call_later(self._stress.idle / 2, self._swept)
        return True

    def progress(self, transport: asyncio.Transport) -> None:
        """The session of ``transport`` finished a transaction: it is not idle."""
        entry = self._open.get(transport)
        if entry is not None:
            entry.progress = asyncio.get_running_loop().time()

    def _idle(self, now: float) -> list[tuple[asyncio.Transport, _Open]]:
        assert self._stress is not None
        cutoff = now - self._stress.idle
        return [(transport, entry) for transport, entry in self._open.items() if entry.progress <= cutoff]

    def _make_room(self, now: float) -> bool:
        """Close one idle session, of the address holding the most, the idlest; False when none is idle."""
        if self._stress is None:
            return False
        idle = self._idle(now)
        if not idle:
            return False
        transport, _ = max(idle, key=lambda item: (self._per_ip[item[1].ip], -item[1].progress))
        self._end(transport)
        return True

    def _swept(self) -> None:
        """Above the high-water mark: close every idle session; look again while the pressure lasts."""
        assert self._stress is not None
        self._sweep = None
        loop = asyncio.get_running_loop()
        if self._closing or len(self._open) < self._stress.high_water:
            return
        for transport, _ in self._idle(loop.time()):
            self._end(transport)
        self._sweep = loop.call_later(self._stress.idle / 2, self._swept)

    def _end(self, transport: asyncio.Transport) -> None:
        """Tell an idle session why, close it, and free its place now (its connection_lost comes later)."""
        transport.write(IDLE_UNDER_STRESS)
        if transport.get_write_buffer_size():
            transport.abort()  # a client that stopped reading would keep close() waiting
        transport.close()
        self.release(transport)

    def watch(self, task: asyncio.Future[Any]) -> None:
        """Also wait for ``task`` (a session's handler, a spool write) on close."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def release(self, transport: asyncio.Transport) -> None:
        """Forget ``transport``: its connection is gone. Safe to call twice."""
        entry = self._open.pop(transport, None)
        if entry is None:
            return
        self._per_ip[entry.ip] -= 1
        if self._per_ip[entry.ip] <= 0:
            del self._per_ip[entry.ip]
        if not entry.lost.done():
            entry.lost.set_result(None)

    async def abort_all(self, wait: float) -> None:
        """Refuse new connections, abort the open ones, wait at most ``wait`` seconds until they are gone."""
        self._closing = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        waiting: set[asyncio.Future[Any]] = {entry.lost for entry in self._open.values()}
        for transport in list(self._open):
            # abort(), not close(): close() waits for the write buffer to drain, which a client that stopped
            # reading never allows.
            transport.abort()
        waiting.update(self._tasks)
        if waiting:
            await asyncio.wait(waiting, timeout=wait)


class CappedSMTP(SMTP):
    """aiosmtpd's SMTP protocol, tracked and capped by :class:`Connections`."""

    @classmethod
    @functools.cache
    def _command_attributes(cls) -> list[str]:
        return sorted({name for klass in cls.__mro__ for name in vars(klass) if name.startswith(_COMMAND_PREFIXES)})

    def __dir__(self) -> list[str]:
        """Only the ``smtp_*`` and ``auth_*`` methods, the names aiosmtpd's ``__init__`` looks for in ``dir(self)``.

        aiosmtpd builds its command tables for every connection by walking ``dir(self)`` and calling
        ``inspect.getmembers`` on it, which reads every attribute: 60% of a new session's set-up, a tenth of the
        relay's CPU per message with one message per connection (bench/relay_throughput.py). The tables come out
        the same (tests/relay/test_connections.py holds them to it).
        """
        return self._command_attributes()

    def __init__(self, handler: Any, connections: Connections, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._connections = connections
        self._tcp_transport: asyncio.Transport | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._tcp_transport is not None:
            # The second call comes from STARTTLS, with the TLS transport on top of the tracked TCP one.
            super().connection_made(transport)
            return
        # A TCP stream's transport; uvloop's (diag/relay/service.py) derive from no asyncio class, so this is
        # said to the type checker rather than asked with isinstance.
        self._tcp_transport = transport = cast(asyncio.Transport, transport)
        if not self._connections.admit(transport, peer_ip(transport.get_extra_info("peername"))):
            # RFC 5321 §3.1: a server that cannot serve the client greets with 421 and closes.
            self._refused = True
            transport.write(TOO_MANY_CONNECTIONS)
            transport.close()
            return
        super().connection_made(transport)
        if self._handler_coroutine is not None:
            self._connections.watch(self._handler_coroutine)

    def connection_lost(self, error: Exception | None) -> None:
        if self._tcp_transport is not None:
            self._connections.release(self._tcp_transport)
        if self._refused:
            return
        super().connection_lost(error)
