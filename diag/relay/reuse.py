"""Delivery connection reuse: a session that has delivered stays open a moment for the next delivery on the same
terms, as Postfix's ``smtp`` keeps its connection cache (``smtp_connection_cache_time_limit`` 2 s, at most
``smtp_connection_reuse_time_limit`` 300 s per connection).

A session is reused only on exactly the terms it was opened with (the caller's key: host name, address and the
TLS demands), so that a route requiring TLS never gets a plain-text session and a certificate checked for one
name never serves another. Before reuse, RSET (RFC 5321 §4.1.1.5) proves the session alive and clears whatever
a previous transaction left open; a session that fails it is closed, and the next one, or a new connection, is
used instead. An idle session is closed (QUIT) when its idle time is up, and every one when the cache closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Final

import aiosmtplib

from diag.frozen import frozen

__all__ = ["ConnectionCache", "Reusable", "quit_session"]

# A QUIT or an RSET is one short exchange: never wait long for it.
_EXCHANGE_TIMEOUT: Final = 5.0


@frozen
class Reusable:
    """An open session and what it was opened with: ``tls`` the TLS version negotiated (or "none"), ``opened``
    the loop time it was opened at."""

    smtp: aiosmtplib.SMTP
    tls: str
    opened: float


class ConnectionCache:
    """Idle delivery sessions by their terms; one user at a time per session (taking it removes it).

    ``idle``: seconds an unused session stays open; ``lifetime``: seconds after its opening a session is no
    longer reused; ``size``: idle sessions kept in all (more are closed at once).
    """

    __slots__ = ("_closed", "_closing", "_idle", "_idle_time", "_lifetime", "_size")

    def __init__(self, *, idle: float, lifetime: float, size: int) -> None:
        self._idle_time = idle
        self._lifetime = lifetime
        self._size = size
        self._idle: dict[Hashable, list[tuple[Reusable, asyncio.TimerHandle]]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._idle.values())

    async def take(self, key: Hashable) -> Reusable | None:
        """An idle session on these terms that answered RSET, or None: then open a new one."""
        entries = self._idle.get(key)
        while entries:
            session, expiry = entries.pop()  # the most recently used: the likeliest to be alive
            expiry.cancel()
            if not entries:
                del self._idle[key]
            try:
                async with asyncio.timeout(_EXCHANGE_TIMEOUT):
                    await session.smtp.rset()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                self._quit(session.smtp)
                entries = self._idle.get(key)
                continue
            return session
        return None

    def give(self, key: Hashable, session: Reusable) -> None:
        """Keep ``session`` for the next delivery on these terms, or close it when it should not be kept."""
        loop = asyncio.get_running_loop()
        if (
            self._closed
            or not session.smtp.is_connected
            or loop.time() - session.opened >= self._lifetime
            or len(self) >= self._size
        ):
            self._quit(session.smtp)
            return
        expiry = loop.call_later(self._idle_time, self._expire, key, session)
        self._idle.setdefault(key, []).append((session, expiry))

    async def close(self) -> None:
        """Close every idle session and wait (briefly) for the goodbyes."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for entries in idle.values():
            for session, expiry in entries:
                expiry.cancel()
                self._quit(session.smtp)
        if self._closing:
            await asyncio.wait(set(self._closing))

    def _expire(self, key: Hashable, session: Reusable) -> None:
        entries = self._idle.get(key, [])
        for index, (kept, _) in enumerate(entries):
            if kept is session:
                del entries[index]
                break
        if not entries:
            self._idle.pop(key, None)
        self._quit(session.smtp)

    def _quit(self, smtp: aiosmtplib.SMTP) -> None:
        task = asyncio.create_task(quit_session(smtp), name="smtp-quit")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


async def quit_session(smtp: aiosmtplib.SMTP) -> None:
    """Always say goodbye (PC-21), but never wait long for it."""
    if not smtp.is_connected:
        return
    try:
        async with asyncio.timeout(_EXCHANGE_TIMEOUT):
            await smtp.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        smtp.close()
