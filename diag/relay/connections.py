"""Connection caps for aiosmtpd servers, which have none of their own (aiosmtpd issue #282, wontfix).

Every SMTP server of diag — the relay and the lab's hosts — tracks its connections here: capped in all and per
client address (security-cases.md RR-50), refused with ``421 4.7.0 Too many connections`` beyond the caps
(RFC 5321 §3.1), and all aborted when the server closes.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Final

from aiosmtpd.smtp import SMTP

__all__ = ["TOO_MANY_CONNECTIONS", "CappedSMTP", "Connections", "peer_ip"]

TOO_MANY_CONNECTIONS: Final = b"421 4.7.0 Too many connections\r\n"


def peer_ip(peer: object) -> str:
    """The address in a socket's peer name; aiosmtpd annotates ``Session.peer`` as str but it is the tuple."""
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class Connections:
    """The open sessions of one server: capped in all and per client address, all aborted on close."""

    __slots__ = ("_closing", "_limit", "_open", "_per_ip", "_per_ip_limit", "_tasks")

    def __init__(self, limit: int, per_ip: int | None = None) -> None:
        self._limit = limit
        self._per_ip_limit = limit if per_ip is None else per_ip
        self._closing = False
        self._open: dict[asyncio.BaseTransport, tuple[str, asyncio.Future[None]]] = {}
        self._per_ip: collections.Counter[str] = collections.Counter()
        self._tasks: set[asyncio.Future[Any]] = set()

    def __len__(self) -> int:
        """The connections open now."""
        return len(self._open)

    def admit(self, transport: asyncio.BaseTransport, ip: str = "") -> bool:
        """Track ``transport`` if the caps allow it and the server is not closing; False means refuse it."""
        if self._closing or len(self._open) >= self._limit or self._per_ip[ip] >= self._per_ip_limit:
            return False
        self._open[transport] = (ip, asyncio.get_running_loop().create_future())
        self._per_ip[ip] += 1
        return True

    def watch(self, task: asyncio.Future[Any]) -> None:
        """Also wait for ``task`` (a session's handler, a spool write) on close."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def release(self, transport: asyncio.BaseTransport) -> None:
        """Forget ``transport``: its connection is gone. Safe to call twice."""
        entry = self._open.pop(transport, None)
        if entry is None:
            return
        ip, lost = entry
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]
        if not lost.done():
            lost.set_result(None)

    async def abort_all(self, wait: float) -> None:
        """Refuse new connections, abort the open ones, wait at most ``wait`` seconds until they are gone."""
        self._closing = True
        waiting: set[asyncio.Future[Any]] = {lost for _, lost in self._open.values()}
        for transport in list(self._open):
            # abort(), not close(): close() waits for the write buffer to drain, which a client that stopped
            # reading never allows.
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
            else:
                transport.close()
        waiting.update(self._tasks)
        if waiting:
            await asyncio.wait(waiting, timeout=wait)


class CappedSMTP(SMTP):
    """aiosmtpd's SMTP protocol, tracked and capped by :class:`Connections`."""

    def __init__(self, handler: Any, connections: Connections, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._connections = connections
        self._tcp_transport: asyncio.BaseTransport | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._tcp_transport is not None:
            # The second call comes from STARTTLS, with the TLS transport on top of the tracked TCP one.
            super().connection_made(transport)
            return
        self._tcp_transport = transport
        if not self._connections.admit(transport, peer_ip(transport.get_extra_info("peername"))):
            # RFC 5321 §3.1: a server that cannot serve the client greets with 421 and closes.
            self._refused = True
            assert isinstance(transport, asyncio.WriteTransport)
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
