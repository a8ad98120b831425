"""The spool: a message answered 250 is on stable storage first, and survives a crash until delivered.

A message stored on its own (:meth:`Spool.store`: bounces, replies, and the intake's messages above 256 KB) is one
file written to ``tmp/``, flushed and fsynced, renamed into ``queue/``, and the directory fsynced — only then may
the server answer 250 (RFC 5321 §6.1; security-cases.md §6: Postfix's
mail_stream_finish_file order). The directory fsync is a group commit: stores that finish their rename while
one is running share the next one, so under load a message costs about one fsync (its file's), not two.

The intake stores the messages it takes in batches instead (:meth:`Spool.store_batch`, from
:class:`diag.relay.writer.BatchWriter`): the batch appended to the journal (:mod:`diag.relay.journal`) with one
fdatasync for all of it, before any of them is answered 250, and no queue file yet. The deliverer, handed each
message in memory, records the ones it delivers in the segment's done file (:meth:`Spool.remove` with the
segment's name). A checkpoint (:meth:`Spool.checkpoint`) writes the queue file of each message of a closed segment
that is not done, fsynced, before deleting the segment; :meth:`Spool.recover` replays the segments left at
start-up. A message in the queue directory is therefore one that waited longer than its segment (about a second
or two), or one stored on its own.

The file carries a one-line JSON envelope, the content, and a trailer with the length and SHA-256 of both, so a
file cut short by a crash is recognised and quarantined instead of delivered truncated (like Postfix's END
record). Per-recipient delivery state lives beside it in ``<id>.state``, replaced
atomically; a message is removed only when every recipient reached a final state, so a crash between a remote
250 and the removal costs at most a duplicate, never a loss (RD-43). Removal is not fsynced, the trade-off Postfix
makes too: a crash soon after a delivery may bring the unlinked file back and deliver it again (a duplicate),
but cannot lose anything, and the busy path saves a directory fsync per message.

All methods block (file I/O and fsync); call them with ``asyncio.to_thread``. :meth:`remove` is the exception
the deliverer makes: a line appended to a journal segment's done file and two unlinks, no fsync, called on its
event loop as Postfix's qmgr removes finished queue files on its own.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import hashlib
import json
import os
import secrets
import stat
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import field
from datetime import UTC, datetime
from pathlib import Path

from diag.frozen import frozen
from diag.relay.disk import NotAFile, fsync_dir, regular_file, write_durably
from diag.relay.journal import Journal, Segment, SegmentContents, boot_id, read_done, read_segment

__all__ = [
    "Envelope", "QueuedMessage", "RecipientState", "RecipientStatus", "Spool", "SpoolError", "merged", "settled",
]

_MAGIC = b"DIAGSPOOL1\n"
# The file whose lock a relay holds while it uses the spool (diag/relay/service.py).
LOCK_FILE = "relay.lock"
_TRAILER = b"\n#END "


class SpoolError(OSError):
    """A spool file is missing or damaged."""


class RecipientState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@frozen
class Envelope:
    """What the relay knows about a message besides its content.

    Attributes:
        mail_from: the envelope sender; "" for the null sender of a bounce.
        rcpt_tos: the accepted recipients, in the order given.
        received_at: when the message was accepted.
        peer: the address of the client that sent it.
        helo: the name the client announced.
        tls: the TLS version and cipher of the session (``TLSv1.3 TLS_AES_256_GCM_SHA384``), or "".
        client_cert_names: the DNS names of the client's certificate, if it presented a valid one.
    """

    mail_from: str
    rcpt_tos: tuple[str, ...]
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    peer: str = ""
    helo: str = ""
    tls: str = ""
    client_cert_names: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        # Field by field: dataclasses.asdict deep-copies every value, a few per cent of the relay's CPU per message.
        return {
            "mail_from": self.mail_from, "rcpt_tos": list(self.rcpt_tos), "received_at": self.received_at.isoformat(),
            "peer": self.peer, "helo": self.helo, "tls": self.tls, "client_cert_names": list(self.client_cert_names),
        }  # fmt: skip

    def encoded(self) -> bytes:
        """The envelope as the spool file's header line holds it (and the relay's pipe hands it over), without the
        line end: compact JSON, read back with ``from_json(json.loads(...))``."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Envelope:
        return cls(
            mail_from=str(data["mail_from"]),
            rcpt_tos=tuple(str(r) for r in data["rcpt_tos"]),  # type: ignore[attr-defined]
            received_at=datetime.fromisoformat(str(data["received_at"])),
            peer=str(data.get("peer", "")),
            helo=str(data.get("helo", "")),
            tls=str(data.get("tls", "")),
            client_cert_names=tuple(str(n) for n in data.get("client_cert_names", ())),  # type: ignore[attr-defined]
        )


@frozen
class RecipientStatus:
    """Where delivery to one recipient stands.

    Attributes:
        recipient: the address.
        state: pending, delivered or failed (final: a bounce was or will be made).
        attempts: delivery attempts so far.
        next_attempt: when to try again (pending only).
        detail: the last reply or error, for ``diag relay queue`` and the bounce.
        route: how it was (or will be) delivered: connector and rule, or "local".
    """

    recipient: str
    state: RecipientState = RecipientState.PENDING
    attempts: int = 0
    next_attempt: datetime | None = None
    detail: str = ""
    route: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "recipient": self.recipient, "state": self.state.value, "attempts": self.attempts,
            "next_attempt": self.next_attempt.isoformat() if self.next_attempt else None, "detail": self.detail,
            "route": self.route,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, object]) -> RecipientStatus:
        nxt = data.get("next_attempt")
        return cls(
            recipient=str(data["recipient"]),
            state=RecipientState(str(data["state"])),
            attempts=int(data.get("attempts", 0)),  # type: ignore[call-overload]
            next_attempt=datetime.fromisoformat(str(nxt)) if nxt else None,
            detail=str(data.get("detail", "")),
            route=str(data.get("route", "")),
        )


@frozen
class QueuedMessage:
    """A message in the queue, with its recipients' states."""

    qid: str
    envelope: Envelope
    size: int
    statuses: tuple[RecipientStatus, ...]

    @property
    def pending(self) -> tuple[RecipientStatus, ...]:
        return tuple(s for s in self.statuses if s.state is RecipientState.PENDING)

    def due(self, now: datetime) -> tuple[RecipientStatus, ...]:
        return tuple(s for s in self.pending if s.next_attempt is None or s.next_attempt <= now)


class Spool:
    """A durable message queue in a directory: ``tmp/``, ``queue/`` and ``quarantine/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.queue = root / "queue"
        self.quarantine = root / "quarantine"
        for directory in (self.tmp, self.queue, self.quarantine):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._queue_sync = _GroupSync(self.queue)
        self._tmp_dir, self._queue_dir = os.fspath(self.tmp), os.fspath(self.queue)
        self.journal = Journal(root / "journal")

    @staticmethod
    def new_qid() -> str:
        """A fresh queue id: time-ordered, unique (for a Received line written before the message is stored)."""
        return f"{time.time_ns():x}{secrets.token_hex(4)}"

    def store(self, envelope: Envelope, content: bytes, *, qid: str | None = None) -> str:
        """Write a message durably and return its queue id. Raises OSError (e.g. ENOSPC, EIO) and leaves nothing
        to deliver: neither the unfinished write nor a file renamed into the queue whose directory entry could not
        be made durable (the caller refuses the message, so delivering it would send it twice)."""
        qid = qid or self.new_qid()
        # Strings, not Paths: this runs for every message.
        tmp, queued = os.path.join(self._tmp_dir, f"{qid}.msg"), os.path.join(self._queue_dir, f"{qid}.msg")
        renamed = False
        try:
            with open(tmp, "xb") as handle:
                handle.write(_encoded(envelope, content))
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp, queued)
            renamed = True
            self._queue_sync.sync()
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(queued if renamed else tmp)
            raise
        return qid

    def store_batch(self, messages: Sequence[tuple[str, Envelope, bytes]]) -> str:
        """Store messages (queue id, envelope, content) durably together (the module's docstring): all appended to
        the journal under one fdatasync. Returns the name of the journal segment that holds them, for
        :meth:`remove`. Raises OSError, and then none of them counts. Only one thread may call it at a time (the
        journal has one writer)."""
        self.journal.append([(qid, _encoded(envelope, content)) for qid, envelope, content in messages])
        segment = self.journal.current
        assert segment is not None  # the append opened one
        return segment

    def checkpoint(self, segment: Segment, moved: set[str] | None = None) -> list[str]:
        """Write the queue file of each message of the closed journal ``segment`` not delivered yet, fsynced, and
        the queue directory; then delete the segment. The ids written (and not found done meanwhile). Raises
        OSError; the segment then stays, replayed at start-up.

        A message the deliverer finishes meanwhile may get its queue file after the deliverer removed what it
        could: so the done file is read again once the files are in the queue, and those are removed (the
        deliverer marks a message done before it removes its files, so one of the two removes it).

        ``moved``: the ids whose queue files this segment's earlier, failed checkpoints moved into the queue; this
        one adds those it moves. Their files were fsynced before the move, so they are not written again, and one
        that is gone was delivered from it meanwhile (by a scan, which knew no segment to mark it done in): it is
        marked done, not brought back."""
        moved = set() if moved is None else moved
        self.journal.begin_checkpoint(segment.path)
        for qid in moved:
            if not os.path.exists(os.path.join(self._queue_dir, f"{qid}.msg")):
                self.journal.mark_done(segment.path.stem, qid)
        done = read_done(segment.path)
        pending = [qid for qid in segment.qids if qid not in done]
        if any(qid not in moved for qid in pending):  # the segment is read only when a file is to be written from it
            records = dict(read_segment(segment.path).records)
            missing = [qid for qid in pending if qid not in records]
            if missing:
                raise OSError(errno.EIO, f"the journal segment lacks {len(missing)} of its records", str(segment.path))
            for qid in pending:
                if qid in moved:
                    continue
                tmp = os.path.join(self._tmp_dir, f"{qid}.msg")
                write_durably(tmp, records[qid])
                os.rename(tmp, os.path.join(self._queue_dir, f"{qid}.msg"))
                moved.add(qid)
        if moved:
            self._queue_sync.sync()
            done = read_done(segment.path)
            for qid in done.intersection(moved):  # finished after the first read (or before an earlier try's move)
                self.remove(qid)
        self.journal.delete(segment.path)
        return [qid for qid in pending if qid not in done]

    def recover(self) -> list[str]:
        """At start-up: replay the journal, drop unfinished writes, quarantine damaged messages; returns the
        quarantined ids (and the names of journal segments whose damaged part was quarantined, and of what was set
        aside as no file). Runs under the spool's lock: nothing else changes the spool meanwhile."""
        aside, replaced = self._set_aside()
        bad = aside + self._replay(also=replaced)
        with os.scandir(self.journal.directory) as entries:  # what a crash left of a segment deleted
            kept = [e.path for e in entries if e.name.endswith((".done", ".ckpt")) and e.is_file(follow_symlinks=False)]
        for name in kept:
            if not os.path.exists(os.path.splitext(name)[0] + ".j"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
        with os.scandir(self._tmp_dir) as entries:
            leftovers = [entry.path for entry in entries if entry.is_file(follow_symlinks=False)]
        for leftover in leftovers:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        for path in sorted(self.queue.glob("*.msg")):
            try:
                self._read(path)
            except SpoolError:
                bad.append(path.stem)
                os.rename(path, self._quarantined(path.name))
        if bad:
            fsync_dir(self.queue)
        return bad

    def _set_aside(self) -> tuple[list[str], frozenset[str]]:
        """Quarantine what bears a name the spool reads (``queue/`` and ``tmp/``: ``*.msg``, ``*.state``;
        ``journal/``: ``*.j``, ``*.done``) but is no regular file (a directory, a link, a pipe: no message, and a
        pipe would hold a read for good), before anything reads it. The names moved, and the ids whose queue file
        was one of them (put back from the journal by the replay)."""
        moved, replaced = [], set()
        for directory, suffixes in ((self.queue, (".msg", ".state")), (self.tmp, (".msg", ".state")),
                                    (self.journal.directory, (".j", ".done"))):  # fmt: skip
            with os.scandir(directory) as entries:
                odd = [e for e in entries if e.name.endswith(suffixes) and not e.is_file(follow_symlinks=False)]
            for entry in odd:
                os.rename(entry.path, self._quarantined(entry.name))
                moved.append(entry.name.removesuffix(".msg"))
                if directory is self.queue and entry.name.endswith(".msg"):
                    replaced.add(entry.name.removesuffix(".msg"))
        return moved, frozenset(replaced)

    def _quarantined(self, name: str) -> Path:
        """Where ``name`` goes in ``quarantine/``: a path nothing holds yet (a number added when one does), so that
        nothing quarantined before is replaced, and nothing is written through a link found there."""
        path, number = self.quarantine / name, 0
        while os.path.lexists(path):
            number += 1
            path = self.quarantine / f"{name}.{number}"
        return path

    def _replay(self, also: frozenset[str] = frozenset()) -> list[str]:
        """Put back in the queue, durably, what the journal holds for messages not yet delivered, then delete the
        segments.

        A record its segment's done file lists was delivered: its queue file, if a checkpoint cut short left one,
        is removed. A segment written in this boot went through a killed process at most, and its done file is
        whole: every other record is put back. After a crash of the machine (another boot, or no boot id), the done
        file may have lost lines and the queue files their data: a record whose queue file is whole is left to it,
        and each other one not listed done is put back; a message delivered before its segment's checkpoint may
        then be delivered again (a duplicate, never a loss, as after removals a crash undid). Every message put
        back is written again from its record, fsynced, not just fsynced where it lies: a queue file whose fsync
        once failed (a write-back error) may read whole from memory and not be on disk, and a second fsync would
        not say so. ``also``: ids whose queue file was set aside as no file at all (:meth:`_set_aside`), put back
        from the journal whatever the boot, unless done."""
        bad: list[str] = []
        segments = self.journal.segments()
        for path, contents, same_boot, done in self._read_segments(segments):
            for qid, data in contents.records:
                if qid in done:
                    self.remove(qid)
                    continue
                if qid not in also and not self._wanted(qid, same_boot=same_boot):
                    continue
                queued, tmp = os.path.join(self._queue_dir, f"{qid}.msg"), self.tmp / f"{qid}.msg"
                try:
                    _parsed(f"{qid}.msg", data)
                except SpoolError:
                    write_durably(self._quarantined(f"{qid}.msg"), data)
                    bad.append(qid)
                    continue
                write_durably(tmp, data)
                os.replace(tmp, queued)
            if contents.damaged:
                write_durably(self._quarantined(f"{path.stem}.journal"), contents.damaged)
                bad.append(path.stem)
        if segments:
            fsync_dir(self.queue)
            fsync_dir(self.quarantine)
            for path in segments:
                self.journal.delete(path)
            fsync_dir(self.journal.directory)
        return bad

    @contextlib.contextmanager
    def idle(self) -> Iterator[bool]:
        """Whether no relay uses the spool; while True, the spool's lock is held shared, so that none starts
        meanwhile (a relay starting waits for it, diag/relay/service.py). False also when the lock file is no
        regular file: who holds what cannot be told then."""
        try:
            fd = os.open(self.root / LOCK_FILE, os.O_RDONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW, 0o600)
        except OSError:
            yield False
            return
        try:
            idle = stat.S_ISREG(os.fstat(fd).st_mode)
            if idle:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    idle = False
            yield idle
        finally:
            os.close(fd)  # lets the lock go

    def _wanted(self, qid: str, *, same_boot: bool) -> bool:
        """Whether replay puts message ``qid``, not listed done, back from its record (see :meth:`_replay`)."""
        if same_boot:
            return True
        queued = os.path.join(self._queue_dir, f"{qid}.msg")
        try:
            mode: int | None = os.lstat(queued).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            return True  # set aside at the start, then put back (recover)
        return mode is None or not self._intact(queued)  # read back after a reboot: an intact file is on disk

    def journal_only(self, listed: Collection[str]) -> list[QueuedMessage]:
        """The messages the next start puts back from the journal besides those ``listed`` (the ids
        :meth:`messages` gave): after a crash of the machine, those whose queue files were lost or cut short;
        after a killed process, those not delivered whose segment was not checkpointed yet. Read from their records,
        with the recipients' states recorded so far. For a spool no relay is using (:meth:`idle`)."""
        found = []
        for _, contents, same_boot, done in self._read_segments(self.journal.segments()):
            for qid, data in contents.records:
                if qid in listed or qid in done or not self._wanted(qid, same_boot=same_boot):
                    continue
                try:
                    envelope, content = _parsed(f"{qid}.msg", data)
                except SpoolError:
                    continue  # quarantined at the start
                found.append(QueuedMessage(qid, envelope, len(content), self.statuses(qid, envelope)))
        return found

    @staticmethod
    def _read_segments(paths: Sequence[Path]) -> Iterator[tuple[Path, SegmentContents, bool, frozenset[str]]]:
        """Each journal segment at ``paths``, read; whether it was written in this boot (a machine crash since:
        another boot id, or none to tell); and the ids its done file lists."""
        now = boot_id()
        for path in paths:
            contents = read_segment(path)
            yield path, contents, bool(now) and contents.boot == now, read_done(path)

    def _intact(self, path: str) -> bool:
        try:
            self._read(Path(path))
        except (OSError, SpoolError):
            return False
        return True

    def messages(self) -> list[QueuedMessage]:
        """Every message in the queue, oldest first, with its recipients' states.

        Only envelopes are read (a queue scan must not read every body); contents are verified when read
        for delivery and by :meth:`recover`.
        """
        with os.scandir(self._queue_dir) as entries:  # what is not a file is no message (and a pipe would hang)
            names = sorted(e.name for e in entries if e.name.endswith(".msg") and e.is_file(follow_symlinks=False))
        found = []
        for name in names:
            try:
                found.append(self._queued(self.queue / name))
            except (SpoolError, FileNotFoundError):
                continue
        return found

    def fresh(self, qid: str) -> bool | None:
        """Whether message ``qid`` is queued as stored, with no recipient's state recorded yet; None when it is not
        in the queue: no longer (every recipient final), or not yet (in the journal alone until its segment's
        checkpoint writes it)."""
        if not os.path.exists(os.path.join(self._queue_dir, f"{qid}.msg")):
            return None
        return not os.path.exists(os.path.join(self._queue_dir, f"{qid}.state"))

    def get(self, qid: str) -> QueuedMessage:
        return self._queued(self.queue / f"{qid}.msg")

    def _queued(self, path: Path) -> QueuedMessage:
        with open(path, "rb") as handle:
            if handle.read(len(_MAGIC)) != _MAGIC:
                raise SpoolError(f"{path.name}: not a spool file")
            header = handle.readline()
            size = os.fstat(handle.fileno()).st_size
        try:
            envelope = Envelope.from_json(json.loads(header))
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise SpoolError(f"{path.name}: damaged envelope: {exc}") from None
        # The size of the content: the file less its magic, envelope line and trailer ("#END <len> <sha256>").
        trailer = len(_TRAILER) + len(f"{size} ") + 64 + 1
        content_size = max(0, size - len(_MAGIC) - len(header) - trailer)
        return QueuedMessage(path.stem, envelope, content_size, self.statuses(path.stem, envelope))

    def content(self, qid: str) -> bytes:
        """The message content, verified against its trailer."""
        return self._read(self.queue / f"{qid}.msg")[1]

    def update(
        self,
        qid: str,
        statuses: Sequence[RecipientStatus],
        *,
        current: Sequence[RecipientStatus] | None = None,
        segment: str | None = None,
    ) -> None:
        """Record recipients' new states durably; remove the message when none is pending any more.

        ``current``: every recipient's state as the caller knows it (the deliverer keeps them), which saves
        reading the message's envelope and state back from disk; read from the spool when None. The state file
        may come before the queue file: a message from the journal has none until its segment's checkpoint.
        ``segment``: as for :meth:`remove`.
        """
        current = merged(self.get(qid).statuses if current is None else current, statuses)
        if settled(current):
            self.remove(qid, segment=segment)
            return
        data = json.dumps([s.to_json() for s in current]).encode("utf-8")
        tmp = self.tmp / f"{qid}.state"
        write_durably(tmp, data)
        os.replace(tmp, self.queue / f"{qid}.state")
        self._queue_sync.sync()

    def remove(self, qid: str, *, segment: str | None = None) -> None:
        """Forget a finished message. Not fsynced (see the module's docstring): a crash may bring it back.

        ``segment``: the journal segment that holds the message, when it was stored in a batch (its name, from
        :meth:`store_batch`): the message is marked done there first, so that neither the segment's checkpoint
        nor a replay writes it back (Journal.mark_done). Raises OSError."""
        if segment is not None:
            self.journal.mark_done(segment, qid)
        for suffix in (".msg", ".state"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._queue_dir, qid + suffix))

    def statuses(self, qid: str, envelope: Envelope) -> tuple[RecipientStatus, ...]:
        """Message ``qid``'s recipients' states as recorded so far: each one pending when none is recorded."""
        try:
            data = regular_file(os.path.join(self._queue_dir, f"{qid}.state"))
            saved = {s.recipient: s for s in map(RecipientStatus.from_json, json.loads(data))}
        except (FileNotFoundError, NotAFile):  # none; or no file at all (set aside at the next start)
            saved = {}
        except (ValueError, KeyError, TypeError):
            # A damaged state file loses only progress: every recipient is tried again (a duplicate at worst).
            saved = {}
        return tuple(saved.get(r, RecipientStatus(r)) for r in envelope.rcpt_tos)

    def _read(self, path: Path) -> tuple[Envelope, bytes]:
        return _parsed(path.name, path.read_bytes())


def _encoded(envelope: Envelope, content: bytes) -> bytes:
    """A queue file's bytes: the magic, the envelope line, the content, and the trailer that covers both."""
    header = envelope.encoded() + b"\n"
    digest = hashlib.sha256(header + content).hexdigest()
    return b"".join((_MAGIC, header, content, _TRAILER, f"{len(header) + len(content)} {digest}\n".encode("ascii")))


def _parsed(name: str, data: bytes) -> tuple[Envelope, bytes]:
    """A queue file's envelope and content, verified against its trailer; SpoolError names ``name``."""
    if not data.startswith(_MAGIC):
        raise SpoolError(f"{name}: not a spool file")
    body_end = data.rfind(_TRAILER)
    if body_end < 0:
        raise SpoolError(f"{name}: no trailer (cut short)")
    body = data[len(_MAGIC) : body_end]
    try:
        trailer = data[body_end + len(_TRAILER) :].decode("ascii")
        length_text, digest = trailer.removesuffix("\n").split(" ")
        length = int(length_text)
    except ValueError:
        raise SpoolError(f"{name}: damaged trailer") from None
    if not trailer.endswith("\n"):
        raise SpoolError(f"{name}: trailer cut short")
    if length != len(body) or hashlib.sha256(body).hexdigest() != digest:
        raise SpoolError(f"{name}: length or checksum mismatch")
    header, _, content = body.partition(b"\n")
    try:
        envelope = Envelope.from_json(json.loads(header))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise SpoolError(f"{name}: damaged envelope: {exc}") from None
    return envelope, content


def merged(known: Sequence[RecipientStatus], updates: Sequence[RecipientStatus]) -> tuple[RecipientStatus, ...]:
    """Every recipient's state: ``known``, with ``updates`` in place of their recipients' (a recipient ``known``
    lacks comes last)."""
    states = {status.recipient: status for status in known}
    states.update({status.recipient: status for status in updates})
    return tuple(states.values())


def settled(statuses: Sequence[RecipientStatus]) -> bool:
    """Whether no recipient is pending any more: the message is done, and leaves the spool."""
    return all(status.state is not RecipientState.PENDING for status in statuses)


class _GroupSync:
    """fsync of one directory, shared by the threads that need it at the same time (a group commit).

    :meth:`sync` returns once a directory fsync that *started after the call* has finished, so the caller's
    earlier rename is covered. While one fsync runs, the callers that arrive wait for it and then share the next
    one: N concurrent stores cost about two directory fsyncs instead of N.
    """

    __slots__ = ("_changed", "_directory", "_done", "_running", "_started")

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._changed = threading.Condition()
        self._started = 0  # fsyncs begun
        self._done = 0  # the latest fsync that finished without error
        self._running = False

    def sync(self) -> None:
        """Make every directory change this thread made before the call durable. Raises OSError from fsync."""
        with self._changed:
            needed = self._started + 1  # the first fsync to begin from now on
            while self._done < needed:
                if self._running:
                    self._changed.wait()
                    continue
                self._running = True
                self._started += 1
                mine = self._started
                self._changed.release()
                synced = False
                try:
                    fsync_dir(self._directory)
                    synced = True
                finally:
                    self._changed.acquire()
                    self._running = False
                    if synced:  # a failed fsync covers nobody: its waiters start another
                        self._done = mine
                    self._changed.notify_all()
