"""The intake's journal: the messages stored at about the same time made durable by one append and one fdatasync.

A queue file per message costs an fsync of its own (on a small VM about 1 ms of CPU and of wall time, whoever
calls it: bench/README.md, issue 13). The journal gathers every message waiting into one ``write`` and one
``fdatasync``, a group commit, as a database's write-ahead log does. The spool still keeps each message as its
queue file, which delivery reads, updates and removes as before; the file is only written without an fsync of its
own, so what is on disk when the server answers 250 is its journal record (:mod:`diag.relay.writer`).

A segment is closed before the next append once it is :data:`SEGMENT_AGE` seconds old or :data:`SEGMENT_BYTES`
long, or after the intake was idle that long. Then its messages still queued are fsynced in their queue files,
the queue directory too, and the segment is deleted (a checkpoint: :meth:`~diag.relay.spool.Spool.checkpoint`).
The segments left at start-up are replayed (:meth:`~diag.relay.spool.Spool.recover`).

A segment is a header line, ``DIAGJOURNAL1 <boot id>``, then one record per message: ``<qid> <length>`` on a line
and the queue file's bytes (which carry their own length and SHA-256). The header is fsynced with the directory
before the first record, so a segment whose header is cut short holds nothing that was acknowledged.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

from diag.frozen import frozen
from diag.relay.disk import fsync_dir

__all__ = ["SEGMENT_AGE", "SEGMENT_BYTES", "Journal", "Segment", "SegmentContents", "boot_id", "read_segment"]

SEGMENT_AGE = 1.0
SEGMENT_BYTES = 8 * 1024 * 1024

_MAGIC = b"DIAGJOURNAL1 "
_FRAME = re.compile(rb"([0-9a-f]{8,40}) ([0-9]{1,10})")
_HEADER_MAX = len(_MAGIC) + 80  # the header line is shorter (a boot id is 36 characters)
_FRAME_MAX = 64  # a record's line is shorter: past this without a line end, the segment is damaged
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    """This boot's id (Linux), "" where there is none: a segment written in the same boot was not through a crash of
    the machine, so which of its messages are still queued can be read from the queue (the page cache survives a
    killed process); :meth:`~diag.relay.spool.Spool.recover` writes those again from the journal all the same."""
    try:
        with open(_BOOT_ID, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


@frozen
class Segment:
    """A closed segment: its file, and the queue ids of its records (the messages its checkpoint makes durable)."""

    path: Path
    qids: tuple[str, ...]


@frozen
class SegmentContents:
    """What a segment read back holds.

    Attributes:
        boot: the boot id it was written in ("" when unknown or the header is damaged).
        records: each whole record's queue id and bytes, in order.
        damaged: the bytes after the last whole record, when there are any: a batch cut short by a crash (never
            acknowledged: its fdatasync did not return), or damage that hides where records start (kept for a
            human either way: the two cannot be told apart).
    """

    boot: str
    records: tuple[tuple[str, bytes], ...]
    damaged: bytes = b""


def read_segment(path: Path) -> SegmentContents:
    """Read a segment back (at start-up). Raises OSError when it cannot be read."""
    data = path.read_bytes()
    end = data.find(b"\n", 0, _HEADER_MAX)
    if end < 0 or not data.startswith(_MAGIC):
        # Cut short before its header was whole (nothing in it was acknowledged), or not a segment at all.
        torn = end < 0 and len(data) < _HEADER_MAX and _MAGIC.startswith(data[: len(_MAGIC)])
        return SegmentContents("", (), b"" if torn else data)
    boot = data[len(_MAGIC) : end].decode("ascii", "replace")
    records: list[tuple[str, bytes]] = []
    position = end + 1
    while position < len(data):
        end = data.find(b"\n", position, position + _FRAME_MAX)
        frame = _FRAME.fullmatch(data, position, end) if end >= 0 else None
        start, length = end + 1, int(frame[2]) if frame else 0
        if frame is None or start + length > len(data):
            return SegmentContents(boot, tuple(records), data[position:])
        records.append((frame[1].decode("ascii"), data[start : start + length]))
        position = start + length
    return SegmentContents(boot, tuple(records))


class Journal:
    """The segments in ``directory``, and the one being written. Only one thread may write (the intake's).

    ``segment_age`` and ``segment_bytes``: when a segment is due for closing (:meth:`due`), and ``segment_age``
    how long an idle writer keeps it open."""

    def __init__(
        self, directory: Path, *, segment_age: float = SEGMENT_AGE, segment_bytes: int = SEGMENT_BYTES
    ) -> None:
        self.directory = directory
        self.segment_age = segment_age
        self._segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd: int | None = None
        self._path: Path | None = None
        self._opened = 0.0
        self._size = 0
        self._qids: list[str] = []
        self._broken = False

    @property
    def writing(self) -> bool:
        """Whether a segment is open (and will need closing once the intake is idle)."""
        return self._fd is not None

    def due(self) -> bool:
        """Whether the open segment should be closed before the next append: old, long, or a write to it failed."""
        return self._fd is not None and (
            self._broken or self._size >= self._segment_bytes or time.monotonic() - self._opened >= self.segment_age
        )

    def append(self, records: Sequence[tuple[str, bytes]]) -> None:
        """Append ``records`` (queue id and queue file bytes) and fdatasync them: durable when this returns.

        Raises OSError; then none of them counts. The segment is cut back to where it was (best effort: a record
        left behind is found at start-up with no queue file, and not delivered unless the machine crashed) and is
        closed at the next :meth:`due`."""
        if self._fd is None:
            self._open()
        assert self._fd is not None
        frames: list[bytes] = []
        for qid, data in records:
            frames += (b"%s %d\n" % (qid.encode("ascii"), len(data)), data)
        total = sum(map(len, frames))
        try:
            written = os.writev(self._fd, frames)
            if written < total:  # a disk nearly full writes what fits; the rest then says why not (ENOSPC)
                _write_all(self._fd, b"".join(frames)[written:])
            os.fdatasync(self._fd)
        except OSError:
            self._broken = True
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._size += total
        self._qids += (qid for qid, _ in records)

    def close(self) -> Segment | None:
        """Close the open segment; what its checkpoint needs, or None when none was open."""
        if self._fd is None or self._path is None:
            return None
        fd, closed = self._fd, Segment(self._path, tuple(self._qids))
        self._fd, self._path, self._size, self._qids, self._broken = None, None, 0, [], False
        with contextlib.suppress(OSError):  # what it holds was fdatasynced; the descriptor is gone either way
            os.close(fd)
        return closed

    def segments(self) -> list[Path]:
        """The segments on disk, oldest first (regular files only: a pipe by a segment's name would hold a read)."""
        with os.scandir(self.directory) as entries:
            return sorted(Path(e.path) for e in entries if e.name.endswith(".j") and e.is_file(follow_symlinks=False))

    def delete(self, path: Path) -> None:
        """Delete a segment whose messages are durable elsewhere. Not fsynced: a segment a crash brings back is
        replayed, which finds its messages' queue files (or, after a machine crash, repeats a delivery at worst)."""
        path.unlink(missing_ok=True)

    def _open(self) -> None:
        path = self.directory / f"{time.time_ns():016x}.j"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            header = _MAGIC + boot_id().encode("ascii", "replace") + b"\n"
            _write_all(fd, header)
            os.fsync(fd)
            fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._fd, self._path, self._opened, self._size = fd, path, time.monotonic(), len(header)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``; raises OSError (ENOSPC when the disk is full)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written == 0:
            raise OSError(errno.EIO, "the journal took no more data")
        view = view[written:]
