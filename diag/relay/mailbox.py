"""Local delivery: a message for one of the relay's own mailboxes goes into that mailbox's Maildir, and mail
for a catch-all domain into the relay's one Maildir of those (:attr:`RelaySettings.catch_all`).

Maildir is the standard format (any mail tool reads it) and needs no locking. The standard library writes the
message to ``tmp/`` and moves it to ``new/`` but never fsyncs, so after a power loss the file can be empty or
gone although the relay already recorded the recipient as delivered and forgot the message. Here the file and
every directory entry on its way are fsynced before :func:`deliver_local` returns (security-cases.md §6,
RD-43: "delivered" is recorded only for mail that is on stable storage).

Blocking (file I/O and fsync): call it with ``asyncio.to_thread``.
"""

from __future__ import annotations

import mailbox
import os
from pathlib import Path

from diag.relay.disk import fsync_dir, fsync_file

__all__ = ["deliver_local", "mailbox_path", "store"]

_SUBDIRS = ("tmp", "new", "cur")


def mailbox_path(maildir_root: Path, address: str) -> Path:
    """The Maildir of ``address``: ``maildir_root / address`` in lower case (mailboxes are configured so).

    Raises ValueError for an address that cannot be a single directory name (a path separator, a NUL, a
    leading dot), so that no address can reach outside ``maildir_root``.
    """
    name = address.lower()
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\x00" in name:
        raise ValueError(f"address {address!r} cannot name a mailbox directory")
    return maildir_root / name


def deliver_local(maildir_root: Path, address: str, content: bytes) -> None:
    """Store ``content`` in the Maildir of ``address`` (created on first use) and make it durable.

    Raises OSError when the message cannot be stored; then nothing was delivered (at worst an unreferenced
    file in ``tmp/``, which Maildir readers ignore).
    """
    store(mailbox_path(maildir_root, address), content)


def store(path: Path, content: bytes) -> None:
    """Store ``content`` in the Maildir ``path`` (created on first use, its parent too) and make it durable.

    Raises OSError when the message cannot be stored, as :func:`deliver_local` does.
    """
    if not path.is_dir():
        _create_maildir(path.parent, path)
    elif not all((path / sub).is_dir() for sub in _SUBDIRS):
        # A directory made by hand (or half made by an older version): complete it in place.
        for sub in _SUBDIRS:
            (path / sub).mkdir(mode=0o700, exist_ok=True)
    key = mailbox.Maildir(path, factory=None, create=False).add(content)
    stored = path / "new" / key
    fsync_file(stored)
    fsync_dir(stored.parent)


def _create_maildir(maildir_root: Path, path: Path) -> None:
    """Create the Maildir ``path`` so that it appears whole: a reader never sees it without ``cur/`` or ``new/``.

    It is built under a temporary name and renamed into place; when another delivery renamed its own first,
    that one is kept (Maildir(create=True) instead fails when two deliveries create it at once).
    """
    maildir_root.mkdir(parents=True, exist_ok=True)
    building = maildir_root / f".new-{os.getpid()}-{os.urandom(6).hex()}"
    building.mkdir(mode=0o700)
    try:
        for sub in _SUBDIRS:
            (building / sub).mkdir(mode=0o700)
            fsync_dir(building / sub)
        fsync_dir(building)
        try:
            building.rename(path)
        except OSError:
            if not path.is_dir():
                raise
    finally:
        if building.exists():
            for sub in _SUBDIRS:
                (building / sub).rmdir()
            building.rmdir()
    # The new Maildir's entry must survive too, or the message goes with it.
    fsync_dir(maildir_root)
