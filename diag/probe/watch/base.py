"""The watcher interface and the waiting loop every watcher shares.

A watcher observes one mailbox: :meth:`Watcher.open` (connect, log in, find the folders), :meth:`Watcher.mark`
before the probe is sent (remember what is already there), :meth:`Watcher.wait` until the probe or a DSN for it
arrives or the deadline passes, :meth:`Watcher.remove` to clean up what it found, :meth:`Watcher.close`.
A concrete watcher implements four small hooks (``_open``, ``_mark``, ``_fresh``, ``_pause``) plus ``_read``,
``_remove`` and ``_close``; matching, late and forged probes, backoff and deadlines live here once. A Graph
mailbox or Exchange Online's message trace fit the same hooks: ``_fresh`` returns what arrived since the mark,
``_pause`` waits for a change notification or the next poll.

Errors a watcher cannot get past (login refused, folder missing, TLS failure, a server breaking the protocol)
are :class:`WatchError` with one line for a person; the caller reports ``E2E_WATCH_FAILED`` and exits 3.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Sequence
from dataclasses import field
from datetime import UTC, datetime
from types import TracebackType
from typing import Final, Self

from diag.errors import ProbeError
from diag.frozen import frozen
from diag.probe.judge import Bounce, classify, is_report
from diag.probe.message import Kind, Matcher

__all__ = ["Arrival", "Candidate", "Observation", "Removal", "WatchError", "Watcher"]

_KEPT_KINDS: Final = frozenset({Kind.PROBE, Kind.DSN, Kind.LATE})
# Junk and spam folders by name, where the server does not mark one with SPECIAL-USE \Junk (RFC 6154): Exchange
# ("Junk Email", "Junk E-mail"), Dovecot and Thunderbird ("Junk"), Gmail and others ("Spam", "[Gmail]/Spam").
JUNK_NAMES: Final = frozenset({"junk", "spam", "junk email", "junk e-mail", "junk-e-mail", "bulk mail"})


class WatchError(ProbeError, ConnectionError):
    """The mailbox could not be watched; the message is one line naming the mailbox and what went wrong."""

    reason = "watch"


@frozen
class Arrival:
    """A message the watcher found that concerns the probe.

    Attributes:
        kind: PROBE, DSN or LATE (see :class:`diag.probe.message.Kind`).
        folder: where it was found, as the mailbox names it.
        junk: that folder is a junk/spam folder.
        handle: the watcher's own reference to it (IMAP ``UIDVALIDITY:UID``, a Maildir key); only
            :meth:`Watcher.remove` of the same watcher understands it.
        headers: its header section (for a DSN: as much of the message as was read), bounded.
        observed_at: when the watcher first saw it (UTC).
        bounce: the DSN's facts, for a DSN (and a late one).
    """

    kind: Kind
    folder: str
    junk: bool
    handle: str
    headers: bytes = field(repr=False)
    observed_at: datetime
    bounce: Bounce | None = None


@frozen
class Observation:
    """What one wait saw.

    Attributes:
        probe: the probe itself, if it arrived.
        dsns: DSNs for the probe (the watched mailbox is the sender's).
        late: probes (and bounces) of earlier runs of the same probe, to count and remove.
        forged: how many messages looked like probes but failed the token check (never touched).
        timed_out: the deadline passed before the probe or a DSN for it arrived.
    """

    probe: Arrival | None
    dsns: tuple[Arrival, ...]
    late: tuple[Arrival, ...]
    forged: int
    timed_out: bool


@frozen
class Removal:
    """The clean-up of one arrival: done, or why not (security-cases.md PR-09: a warning, never a verdict)."""

    arrival: Arrival
    removed: bool
    detail: str


@frozen
class Candidate:
    """A message a watcher hook found since the mark: where it is, and its header section as read."""

    handle: str
    folder: str
    junk: bool
    headers: bytes


class Watcher(abc.ABC):
    """One observed mailbox. Use as ``async with watcher:`` (open, close) or call the methods in order.

    ``poll_min`` / ``poll_max``: the first and the longest pause between two looks at the mailbox; each pause is
    half again as long as the one before (a watcher that is told of changes, such as IMAP IDLE, returns early).
    """

    def __init__(self, *, poll_min: float, poll_max: float) -> None:
        if not 0 < poll_min <= poll_max:
            raise ValueError("poll_min must be positive and at most poll_max")
        self.poll_min, self.poll_max = poll_min, poll_max
        self._found: dict[str, Arrival] = {}
        self._seen: set[str] = set()

    @property
    @abc.abstractmethod
    def where(self) -> str:
        """The mailbox, for messages: no password, no token."""

    async def open(self) -> None:
        """Connect and find the folders to watch; raises WatchError."""
        await self._open()

    async def mark(self) -> None:
        """Remember what the mailbox holds now, before the probe is sent; raises WatchError."""
        self._seen.clear()
        await self._mark()

    async def wait(self, matcher: Matcher, deadline: float) -> Observation:
        """Look until the probe or a DSN for it arrives, or until ``deadline`` (a :func:`time.monotonic` value).

        Raises WatchError when the mailbox cannot be read any more.
        """
        late: list[Arrival] = []
        dsns: list[Arrival] = []
        forged = 0
        pause = self.poll_min
        while True:
            for candidate in await self._fresh():
                if candidate.handle in self._seen:
                    continue
                kind, bounce, content = await self._judge(candidate, matcher)
                self._seen.add(candidate.handle)
                if kind is Kind.FORGED:
                    forged += 1
                if kind not in _KEPT_KINDS:
                    continue
                arrival = Arrival(
                    kind, candidate.folder, candidate.junk, candidate.handle, content, datetime.now(UTC), bounce
                )
                self._found[arrival.handle] = arrival
                if kind is Kind.LATE:
                    late.append(arrival)
                elif kind is Kind.DSN:
                    dsns.append(arrival)
                else:
                    return Observation(arrival, tuple(dsns), tuple(late), forged, timed_out=False)
            if dsns:
                return Observation(None, tuple(dsns), tuple(late), forged, timed_out=False)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Observation(None, (), tuple(late), forged, timed_out=True)
            await self._pause(min(pause, remaining))
            pause = min(pause * 1.5, self.poll_max)

    async def _judge(self, candidate: Candidate, matcher: Matcher) -> tuple[Kind, Bounce | None, bytes]:
        content = candidate.headers
        if is_report(content):  # possibly a DSN: its returned headers are in the body
            content = await self._read(candidate)
        kind, bounce = classify(content, matcher)
        return kind, bounce, content

    async def remove(self, arrivals: Sequence[Arrival]) -> tuple[Removal, ...]:
        """Remove these arrivals; only ones this watcher found (PR-09: nothing else is ever touched)."""
        mine = [arrival for arrival in arrivals if self._found.get(arrival.handle) == arrival]
        refused = [
            Removal(arrival, False, "not found by this watcher; left alone") for arrival in arrivals
            if arrival not in mine
        ]  # fmt: skip
        done = await self._remove(mine) if mine else ()
        for removal in done:
            if removal.removed:
                self._found.pop(removal.arrival.handle, None)
        return (*done, *refused)

    async def close(self) -> None:
        """Log out and release everything; never raises for network trouble."""
        await self._close()

    async def __aenter__(self) -> Self:
        try:
            await self.open()
        except BaseException:
            await self.close()  # a half-open session (connected, login refused) is released too
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    async def _mark(self) -> None: ...

    @abc.abstractmethod
    async def _fresh(self) -> Sequence[Candidate]:
        """Messages that arrived since the mark (and, on the first call after it, the most recent ones that were
        already there: late probes of an earlier run arrive between runs). Already seen ones may repeat."""

    @abc.abstractmethod
    async def _read(self, candidate: Candidate) -> bytes:
        """As much of the whole message as a DSN needs (bounded: diag.probe.judge.MAX_MESSAGE)."""

    async def _pause(self, seconds: float) -> None:
        """Wait before the next look; a watcher told of changes returns as soon as one happens."""
        await asyncio.sleep(seconds)

    @abc.abstractmethod
    async def _remove(self, arrivals: Sequence[Arrival]) -> tuple[Removal, ...]: ...

    @abc.abstractmethod
    async def _close(self) -> None: ...
