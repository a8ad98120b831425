"""The steps that make what the relay writes durable, shared by its stores (spool, journal, Maildir, reflector).

Blocking: call them from a worker thread, as their callers are.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir", "fsync_file", "write_durably"]


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
