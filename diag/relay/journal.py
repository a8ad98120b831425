"""The intake's journal: the messages stored at about the same time made durable by one append and one fdatasync.

A queue file per message costs an fsync of its own (on a small VM about 1 ms of CPU and of wall time, whoever
calls it: bench/README.md, issue 13), and creating the file alone costs up to as much again. The journal gathers
every message waiting into one ``write`` and one ``fdatasync``, a group commit, as a database's write-ahead log
does, and the message is answered 250 once its record is on disk. A message delivered, from memory, within a
second or so (a smart host or mailbox that answers at once) has nothing else written for it; one still in flight
or deferred when its segment is checkpointed gets a queue file and its fsync, as with a file per message
(:mod:`diag.relay.writer`, :meth:`~diag.relay.spool.Spool.checkpoint`).

A segment is closed before the next append once it is :data:`SEGMENT_AGE` seconds old or :data:`SEGMENT_BYTES`
long, or after the intake was idle that long. Then each of its messages not delivered yet is written to its queue
file, fsynced, the queue directory too, and the segment is deleted (a checkpoint). The segments left at start-up
are replayed (:meth:`~diag.relay.spool.Spool.recover`).

A segment ``<name>.j`` is a header line, ``DIAGJOURNAL1 <boot id>``, then one record per message: ``<qid>
<length>`` on a line and the queue file's bytes (which carry their own length and SHA-256). The header is fsynced
with the directory before the first record, so a segment whose header is cut short holds nothing that was
acknowledged. Beside it, ``<name>.done`` lists the ids of its messages delivered (every recipient final), one a
line, appended by whoever delivered them (:meth:`Journal.mark_done`) before they forget the message, and never
fsynced: it tells a checkpoint and a replay which records need no queue file. A line a crash of the machine lost
makes a duplicate delivery at worst, never a loss.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import time
from collections.abc import Sequence
from pathlib import Path

from diag.frozen import frozen
from diag.relay.disk import NotAFile, fsync_dir, regular_file

__all__ = [
    "SEGMENT_AGE", "SEGMENT_BYTES", "Journal", "Segment", "SegmentContents", "boot_id", "done_path", "read_done",
    "read_segment",
]

SEGMENT_AGE = 1.0
SEGMENT_BYTES = 8 * 1024 * 1024

_MAGIC = b"DIAGJOURNAL1 "
_FRAME = re.compile(rb"([0-9a-f]{8,40}) ([0-9]{1,10})")
_HEADER_MAX = len(_MAGIC) + 80  # the header line is shorter (a boot id is 36 characters)
_FRAME_MAX = 64  # a record's line is shorter: past this without a line end, the segment is damaged
_DONE_LINE = re.compile(rb"[0-9a-f]{8,40}")
_NAME = re.compile(r"[0-9a-f]{16}")  # a segment's name (Journal._open)
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    """This boot's id (Linux), "" where there is none: a segment written in the same boot was not through a crash of
    the machine, so its done file is whole (the page cache survives a killed process) and says which of its
    messages were delivered; :meth:`~diag.relay.spool.Spool.recover` writes the others again from the journal."""
    try:
        with open(_BOOT_ID, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


@frozen
class Segment:
    """A closed segment: its file, the queue ids of its records (the messages its checkpoint makes durable), and
    when it was closed (``time.monotonic()``)."""

    path: Path
    qids: tuple[str, ...]
    closed: float = 0.0


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


def done_path(segment: Path) -> Path:
    """The file that lists the delivered messages of ``segment`` (the module's docstring)."""
    return segment.with_suffix(".done")


def read_done(segment: Path) -> frozenset[str]:
    """The ids the done file of ``segment`` lists: none when it is missing or no regular file (a pipe is not waited
    on, a link not followed). A line cut short by a crash counts for nothing. Raises OSError when it cannot be read."""
    try:
        data = regular_file(os.fspath(done_path(segment)))
    except (FileNotFoundError, NotAFile):
        return frozenset()
    lines = data.split(b"\n")[:-1]  # the last piece has no line end: cut short, or empty
    return frozenset(line.decode("ascii") for line in lines if _DONE_LINE.fullmatch(line))


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

        Raises OSError; then none of them counts. The segment is cut back to where it was and is closed at the next
        :meth:`due`; its checkpoint writes only what was appended whole. Only if the cut fails too and the relay is
        stopped before that checkpoint does the next start find such a record and deliver it: a duplicate of what
        the client sends again, never a loss."""
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
        fd, closed = self._fd, Segment(self._path, tuple(self._qids), time.monotonic())
        self._fd, self._path, self._size, self._qids, self._broken = None, None, 0, [], False
        with contextlib.suppress(OSError):  # what it holds was fdatasynced; the descriptor is gone either way
            os.close(fd)
        return closed

    def segments(self) -> list[Path]:
        """The segments on disk, oldest first (regular files only: a pipe by a segment's name would hold a read)."""
        with os.scandir(self.directory) as entries:
            return sorted(Path(e.path) for e in entries if e.name.endswith(".j") and e.is_file(follow_symlinks=False))

    @property
    def current(self) -> str | None:
        """The name of the open segment (what :meth:`mark_done` takes), None when none is open."""
        return self._path.stem if self._path is not None else None

    def delete(self, path: Path) -> None:
        """Delete a segment whose messages are durable elsewhere, then its done file, then its checkpoint mark
        (:meth:`holds` relies on that order). Not fsynced: a segment a crash brings back is replayed, which puts
        back what its done file does not list (a duplicate at worst)."""
        path.unlink(missing_ok=True)
        for leftover in (done_path(path), path.with_suffix(".ckpt")):
            leftover.unlink(missing_ok=True)

    def begin_checkpoint(self, path: Path) -> None:
        """Mark segment ``path``'s checkpoint as begun (before it writes any queue file): from now on a deliverer
        takes the queue, not what it was handed, as the authority on its messages (:meth:`holds`)."""
        os.close(os.open(path.with_suffix(".ckpt"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))

    def mark_done(self, segment: str, qid: str) -> None:
        """Record that message ``qid`` of segment ``segment`` (a name :attr:`current` gave) was delivered: called by
        the deliverer, in any process, before it removes the message. Nothing when the segment is gone (checkpointed:
        the message has a queue file, which the deliverer removes). Raises OSError."""
        if not _NAME.fullmatch(segment):
            raise ValueError(f"not a journal segment's name: {segment!r}")
        try:
            fd = os.open(self.directory / f"{segment}.done",
                         os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)  # fmt: skip
        except FileNotFoundError:
            return
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                _write_all(fd, f"{qid}\n".encode("ascii"))
        finally:
            os.close(fd)

    def has(self, segment: str) -> bool:
        """Whether segment ``segment`` is still on disk (its checkpoint has not ended)."""
        return os.path.exists(self.directory / f"{segment}.j")

    def holds(self, segment: str) -> bool:
        """Whether segment ``segment`` is on disk and its checkpoint has not begun: its messages have no queue files,
        and a deliverer handed one delivers it from memory. Once the checkpoint begins, what it was handed may come
        later than a queue scan that delivered the message from the file the checkpoint wrote. The mark is asked
        first: :meth:`delete` removes it last, so a checkpoint that ends between the two questions is seen."""
        return not os.path.exists(self.directory / f"{segment}.ckpt") and self.has(segment)

    def _open(self) -> None:
        path = self.directory / f"{time.time_ns():016x}.j"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            # Its done file first: a deliverer appends to it only while it exists (mark_done).
            os.close(os.open(done_path(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            header = _MAGIC + boot_id().encode("ascii", "replace") + b"\n"
            _write_all(fd, header)
            os.fsync(fd)
            fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            self.delete(path)
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
