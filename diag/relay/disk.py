"""The steps that make what the relay writes durable, shared by its stores (spool, journal, Maildir, reflector), and
the read of a file of theirs that waits on no pipe and follows no link.

Blocking: call them from a worker thread, as their callers are.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["NotAFile", "fsync_dir", "fsync_file", "regular_file", "write_durably"]


def fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (files created, renamed or removed in it) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    """Make the data of the file at ``path``, written by whoever, durable. Raises FileNotFoundError when it is gone."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (created or truncated) and fsync it; its directory entry is the caller's to sync."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class NotAFile(OSError):
    """What is at a path the spool reads is no regular file (a directory, a link, a pipe)."""


def regular_file(path: str) -> bytes:
    """The bytes of the regular file at ``path``; NotAFile for anything else there (a pipe is opened without
    waiting for a writer, a link not followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise NotAFile(errno.ELOOP, "a link", path) from None
    with open(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotAFile(errno.EINVAL, "not a regular file", path)
        return handle.read()
