"""The journal: a batch is durable in one append, a segment cut short keeps what was whole, and start-up puts back
what the queue lacks (only what a killed process left unqueued; after a machine crash, whatever is missing)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import resource
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from diag.relay import spool as spool_module
from diag.relay.journal import SEGMENT_BYTES, Journal, Segment, boot_id, read_done, read_segment
from diag.relay.spool import Envelope, RecipientState, RecipientStatus, Spool

CONTENT = b"Subject: hello\r\n\r\nbody\r\n"
OTHER_BOOT = "00000000-0000-4000-8000-000000000000"


def envelope(*rcpts: str) -> Envelope:
    return Envelope("john@contoso.com", rcpts or ("sun@tailspintoys.com",), peer="127.0.10.10")


def batch(spool: Spool, count: int) -> list[str]:
    """Store ``count`` messages together, as the intake does."""
    qids = [Spool.new_qid() for _ in range(count)]
    assert spool.store_batch([(qid, envelope(), CONTENT + qid.encode()) for qid in qids]) == current(spool)
    return qids


def current(spool: Spool) -> str:
    """The name of the journal segment being written."""
    name = spool.journal.current
    assert name is not None
    return name


def as_after_a_reboot(segment: Path) -> None:
    """The segment as a machine crash leaves it for the next boot: written under another boot id."""
    data = segment.read_bytes()
    segment.write_bytes(data.replace(boot_id().encode("ascii"), OTHER_BOOT.encode("ascii"), 1))


# --- segments --------------------------------------------------------------------------------------------------


def test_a_segment_reads_back_record_by_record(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append([("0123456789abcdef", b"one\n"), ("fedcba9876543210", b"two two")])
    journal.append([("00112233445566778899", b"")])
    assert journal.writing
    closed = journal.close()
    assert closed is not None and not journal.writing and journal.close() is None
    assert closed.qids == ("0123456789abcdef", "fedcba9876543210", "00112233445566778899")
    assert journal.segments() == [closed.path]
    contents = read_segment(closed.path)
    assert contents.boot == boot_id() != ""
    assert contents.records == (("0123456789abcdef", b"one\n"), ("fedcba9876543210", b"two two"),
                                ("00112233445566778899", b""))  # fmt: skip
    assert contents.damaged == b""


def two_batches(directory: Path, second: bytes) -> Path:
    """A closed segment of two batches: "kept", then ``second``."""
    journal = Journal(directory)
    journal.append([("0123456789abcdef", b"kept")])
    journal.append([("fedcba9876543210", second)])
    closed = journal.close()
    assert closed is not None
    return closed.path


@pytest.mark.parametrize("cut", [1, 5, 20, 25])
def test_a_record_cut_short_at_the_end_is_left_out(tmp_path: Path, cut: int) -> None:
    """What a crash during the append leaves: that batch was never acknowledged (its fdatasync did not return).
    Its bytes are kept aside all the same: damage to a record's length looks the same."""
    segment = two_batches(tmp_path, b"cut short")
    segment.write_bytes(segment.read_bytes()[:-cut])
    contents = read_segment(segment)
    assert contents.records == (("0123456789abcdef", b"kept"),)
    assert contents.damaged == b"fedcba9876543210 9\ncut short"[:-cut]


@pytest.mark.parametrize("data", [b"", b"DIAGJOUR", b"DIAGJOURNAL1 1234"])
def test_a_segment_whose_header_was_cut_short_holds_nothing(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "1.j").write_bytes(data)
    assert read_segment(tmp_path / "1.j").records == () and read_segment(tmp_path / "1.j").damaged == b""


def test_what_cannot_be_framed_is_kept_as_damaged(tmp_path: Path) -> None:
    segment = two_batches(tmp_path, b"after the damage")
    data = segment.read_bytes()
    at = data.index(b"fedcba9876543210")
    segment.write_bytes(data[:at] + b"?" + data[at + 1 :])
    contents = read_segment(segment)
    assert contents.records == (("0123456789abcdef", b"kept"),)
    assert contents.damaged == b"?edcba9876543210 16\nafter the damage"
    (tmp_path / "2.j").write_bytes(b"not a journal at all\n")
    assert read_segment(tmp_path / "2.j").damaged == b"not a journal at all\n"


def test_a_long_segment_is_due_for_closing(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    assert not journal.due()
    journal.append([("0123456789abcdef", b"x" * 1024)])
    assert not journal.due()
    journal.append([("fedcba9876543210", b"x" * SEGMENT_BYTES)])
    assert journal.due()


def test_a_failed_append_counts_for_nothing_and_closes_the_segment(tmp_path: Path) -> None:
    """A real write failure: the file size limit, which fails a write as a full disk does. The first write takes
    what fits (a short count), and the failure is the one the disk gives (EFBIG here, ENOSPC on a full disk: the
    server's 452), not a made-up one."""
    journal = Journal(tmp_path)
    journal.append([("0123456789abcdef", b"kept")])
    (segment,) = journal.segments()
    size = segment.stat().st_size
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, limits[1]))
    try:
        with pytest.raises(OSError) as failed:
            journal.append([("fedcba9876543210", b"x" * 100)])
        assert failed.value.errno == errno.EFBIG
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert journal.due()  # closed before the next append
    closed = journal.close()
    assert closed is not None and closed.qids == ("0123456789abcdef",)
    assert closed.path.stat().st_size == size
    assert read_segment(closed.path).records == (("0123456789abcdef", b"kept"),)


# --- the spool around it ---------------------------------------------------------------------------------------


def test_a_batch_is_in_the_journal_alone_and_its_checkpoint_writes_what_is_not_delivered(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    delivered, waiting = batch(spool, 2)
    assert spool.messages() == [] and list(spool.tmp.iterdir()) == []  # no file per message
    spool.remove(delivered, segment=current(spool))  # delivered from memory
    closed = spool.journal.close()
    assert closed is not None
    spool.checkpoint(closed)
    assert [m.qid for m in spool.messages()] == [waiting] and spool.content(waiting) == CONTENT + waiting.encode()
    assert list(spool.journal.directory.iterdir()) == []  # the segment, its done file and its mark gone


def test_a_message_delivered_while_its_checkpoint_writes_it_leaves_no_queue_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deliverer marks a message done, then removes its files; the checkpoint reads the done file, writes the
    others' queue files, and reads it again. Marked done between the two reads (after its removal found no file),
    the file the checkpoint wrote for it is removed: a later scan would deliver it again."""
    spool = Spool(tmp_path)
    (qid,) = batch(spool, 1)
    segment = current(spool)
    reads = 0

    def read_done_as_the_deliverer_finishes(path: Path) -> frozenset[str]:
        nonlocal reads
        reads += 1
        done = read_done(path)
        if reads == 1:
            spool.remove(qid, segment=segment)  # between the checkpoint's two reads
        return done

    monkeypatch.setattr(spool_module, "read_done", read_done_as_the_deliverer_finishes)
    closed = spool.journal.close()
    assert closed is not None
    spool.checkpoint(closed)
    assert reads == 2 and spool.messages() == [] and spool.journal.segments() == []


def test_what_marks_a_message_done(tmp_path: Path) -> None:
    """A segment's done file lists its delivered messages; once the segment is gone, marking one makes no file."""
    spool = Spool(tmp_path)
    (qid,) = batch(spool, 1)
    segment = current(spool)
    assert spool.journal.holds(segment)
    spool.remove(qid, segment=segment)
    closed = spool.journal.close()
    assert closed is not None and read_done(closed.path) == {qid}
    spool.checkpoint(closed)
    assert not spool.journal.has(segment)
    spool.journal.mark_done(segment, Spool.new_qid())  # a message of that segment delivered after its checkpoint
    assert list(spool.journal.directory.iterdir()) == []
    with pytest.raises(ValueError):
        spool.journal.mark_done("../queue/x", qid)


def test_a_deliverer_holds_to_what_it_was_handed_only_until_the_checkpoint_begins(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    batch(spool, 1)
    segment = current(spool)
    closed = spool.journal.close()
    assert closed is not None and spool.journal.holds(segment)
    spool.journal.begin_checkpoint(closed.path)
    assert spool.journal.has(segment) and not spool.journal.holds(segment)
    spool.journal.delete(closed.path)
    assert not spool.journal.has(segment) and list(spool.journal.directory.iterdir()) == []


def test_a_checkpoint_that_ends_while_a_deliverer_asks_is_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """holds() asks two questions; the checkpoint may end between them. Asked in the other order, the segment
    would seem not yet checkpointed, and what the deliverer was handed would count over the queue."""
    spool = Spool(tmp_path)
    batch(spool, 1)
    segment = current(spool)
    closed = spool.journal.close()
    assert closed is not None
    spool.journal.begin_checkpoint(closed.path)
    real, asked = os.path.exists, []

    def exists(path: str | os.PathLike[str]) -> bool:
        found = real(path)
        if not asked:
            spool.journal.delete(closed.path)  # the checkpoint ends right after the first question
        asked.append(path)
        return found

    monkeypatch.setattr(os.path, "exists", exists)
    assert not spool.journal.holds(segment)


def failed_halfway(
    spool: Spool, closed: Segment, monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], None] = lambda: None
) -> set[str]:
    """A checkpoint of ``closed`` that writes its first queue file (``meanwhile`` happening as it starts to) and
    finds the disk full at the second; the ids it moved into the queue."""
    real, writes = spool_module.write_durably, []

    def full_on_the_second(path: str | os.PathLike[str], data: bytes) -> None:
        writes.append(path)
        if len(writes) == 1:
            meanwhile()
        elif len(writes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    moved: set[str] = set()
    with monkeypatch.context() as patched:
        patched.setattr(spool_module, "write_durably", full_on_the_second)
        with pytest.raises(OSError):
            spool.checkpoint(closed, moved)
    return moved


def test_a_checkpoint_tried_again_after_failing_halfway_does_not_bring_back_what_was_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first try moved one queue file into the queue, then the disk was full; a scan delivered that message
    from its file (knowing no segment to mark it done in). The next try marks it done instead of writing it again."""
    spool = Spool(tmp_path)
    first, second = batch(spool, 2)
    closed = spool.journal.close()
    assert closed is not None
    moved = failed_halfway(spool, closed, monkeypatch)
    assert moved == {first} and [m.qid for m in spool.messages()] == [first]
    spool.remove(first)  # delivered by a scan
    assert spool.checkpoint(closed, moved) == [second]
    assert [m.qid for m in spool.messages()] == [second] and spool.journal.segments() == []


def test_a_message_delivered_while_a_failed_checkpoint_moved_it_in_leaves_no_queue_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first try read the done file, the deliverer then finished the message (its mark made, no file to
    remove), the try moved the message's file into the queue and failed on the next one. The next try finds it
    done: it removes that file too, or a scan would deliver it again once the segment is gone."""
    spool = Spool(tmp_path)
    finished, other = batch(spool, 2)
    segment = current(spool)
    closed = spool.journal.close()
    assert closed is not None
    moved = failed_halfway(spool, closed, monkeypatch, meanwhile=lambda: spool.remove(finished, segment=segment))
    assert moved == {finished}
    assert spool.checkpoint(closed, moved) == [other]
    assert [m.qid for m in spool.messages()] == [other] and spool.journal.segments() == []


def test_after_a_killed_process_what_was_not_delivered_is_put_back(tmp_path: Path) -> None:
    """The same boot: the page cache kept every file, the done file whole. A record it lists was delivered; every
    other one is put back, with the recipients' states recorded so far (a state file comes before the queue file
    for a message tried before its checkpoint)."""
    spool = Spool(tmp_path)
    delivered, waiting, tried = batch(spool, 3)
    segment = current(spool)
    spool.remove(delivered, segment=segment)
    spool.update(tried, [RecipientStatus("sun@tailspintoys.com", attempts=1, detail="451 later")],
                 current=[RecipientStatus("sun@tailspintoys.com")], segment=segment)  # fmt: skip
    assert Spool(tmp_path).recover() == []
    assert sorted(m.qid for m in spool.messages()) == sorted([waiting, tried])
    assert spool.content(waiting) == CONTENT + waiting.encode()
    assert spool.get(tried).statuses[0].detail == "451 later"
    assert list(spool.journal.directory.iterdir()) == [] and list(spool.tmp.iterdir()) == []


def test_a_queue_file_a_checkpoint_left_for_a_message_marked_done_is_removed_at_start(tmp_path: Path) -> None:
    """Killed between a checkpoint's writing a delivered message's queue file and its removing it."""
    spool = Spool(tmp_path)
    (qid,) = batch(spool, 1)
    spool.remove(qid, segment=current(spool))
    spool.store(envelope(), CONTENT, qid=qid)
    assert Spool(tmp_path).recover() == []
    assert spool.messages() == []


def test_after_a_machine_crash_what_the_queue_lacks_is_put_back(tmp_path: Path) -> None:
    """Another boot: the done file may have lost lines, a queue file its data. A record listed done stays
    delivered; one whose queue file is whole (a checkpoint wrote it, the crash undid the segment's deletion) keeps
    it and its recipients' states; every other one is put back, a delivered one whose line was lost too (a
    duplicate, as a crash after a removal gives in Postfix)."""
    spool = Spool(tmp_path)
    lost, torn, whole, delivered, unlisted = batch(spool, 5)
    segment = current(spool)
    for qid in (torn, whole):
        spool.store(envelope(), CONTENT + qid.encode(), qid=qid)
    torn_file = spool.queue / f"{torn}.msg"
    torn_file.write_bytes(torn_file.read_bytes()[:30])
    spool.update(whole, [RecipientStatus("sun@tailspintoys.com", attempts=1, detail="451 later")])
    spool.remove(delivered, segment=segment)
    spool.remove(unlisted)  # delivered, but its line in the done file did not survive
    (closed,) = spool.journal.segments()
    as_after_a_reboot(closed)
    assert Spool(tmp_path).recover() == []
    assert sorted(m.qid for m in spool.messages()) == sorted([lost, torn, whole, unlisted])
    for qid in (lost, torn, unlisted):
        assert spool.content(qid) == CONTENT + qid.encode()
    assert spool.get(whole).statuses[0].detail == "451 later"
    assert list(spool.journal.directory.iterdir()) == []


def test_what_a_crash_left_of_a_deleted_segment_goes_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for name in ("18ef000000000000.done", "18ef000000000000.ckpt"):
        (spool.journal.directory / name).touch()
    assert spool.recover() == [] and list(spool.journal.directory.iterdir()) == []


def test_what_only_the_journal_holds_is_listed_until_a_start_puts_it_back(tmp_path: Path) -> None:
    """For `diag relay queue` on a relay that is not running: exactly what the next start puts back besides what
    the queue lists. After a crash of the machine, the messages whose queue files were lost or cut short; after a
    killed process, those not delivered whose segment was not checkpointed. Not one delivered, nor one the queue
    lists."""
    spool = Spool(tmp_path)
    lost, emptied, queued = batch(spool, 3)
    for qid in (emptied, queued):  # its checkpoint wrote them; a crash undid the segment's deletion
        spool.store(envelope(), CONTENT + qid.encode(), qid=qid)
    (spool.queue / f"{emptied}.msg").write_bytes(b"")  # what a crash often leaves
    closed = spool.journal.close()
    assert closed is not None
    as_after_a_reboot(closed.path)  # then this boot's: one delivered, one not yet
    delivered, still = batch(spool, 2)
    spool.remove(delivered, segment=current(spool))
    listed = {m.qid for m in spool.messages()}
    assert listed == {queued}
    only = {m.qid: m for m in spool.journal_only(listed)}
    assert sorted(only) == sorted([lost, emptied, still])
    assert only[lost].envelope.mail_from == "john@contoso.com" and only[lost].size == len(CONTENT + lost.encode())
    assert only[lost].statuses[0].state is RecipientState.PENDING
    assert Spool(tmp_path).recover() == []
    assert {m.qid for m in spool.messages()} == listed | set(only)  # what the listing said the start would do
    assert spool.journal_only(listed | set(only)) == []


def test_a_spool_is_idle_while_no_relay_holds_its_lock_and_held_while_so(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with spool.idle() as idle:  # no lock file yet: made
        assert idle
        with open(tmp_path / "relay.lock", "a+b") as relay, pytest.raises(BlockingIOError):
            fcntl.flock(relay.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # no relay starts meanwhile
    with open(tmp_path / "relay.lock", "a+b") as relay:
        fcntl.flock(relay.fileno(), fcntl.LOCK_EX)  # a running relay
        with spool.idle() as idle:
            assert not idle
    (tmp_path / "relay.lock").unlink()
    os.mkfifo(tmp_path / "relay.lock")  # no file: who holds what cannot be told (and opening must not wait)
    with spool.idle() as idle:
        assert not idle


def test_a_damaged_record_is_quarantined_and_so_is_what_cannot_be_framed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    flipped, after = batch(spool, 2)
    (segment,) = spool.journal.segments()
    as_after_a_reboot(segment)
    data = bytearray(segment.read_bytes())
    data[data.index(b"body")] ^= 0x20  # the first record's content no longer matches its checksum
    at = data.index(after.encode())
    data[at] = ord("?")  # the second record's line can no longer be read
    segment.write_bytes(bytes(data))
    assert sorted(Spool(tmp_path).recover()) == sorted([flipped, segment.stem])
    assert spool.messages() == []
    assert (spool.quarantine / f"{flipped}.msg").exists()
    assert (spool.quarantine / f"{segment.stem}.journal").read_bytes().startswith(b"?")
    assert spool.journal.segments() == []


def test_states_recorded_before_a_crash_survive_the_replay(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (qid,) = batch(spool, 1)
    spool.update(qid, [RecipientStatus("sun@tailspintoys.com", RecipientState.PENDING, 2, detail="451 again")],
                 current=[RecipientStatus("sun@tailspintoys.com")])  # fmt: skip
    assert spool.messages() == []  # no queue file: its segment was not checkpointed
    (segment,) = spool.journal.segments()
    as_after_a_reboot(segment)
    assert Spool(tmp_path).recover() == []
    assert spool.get(qid).statuses[0].attempts == 2


def test_a_damaged_envelope_nested_too_deep_is_quarantined(tmp_path: Path) -> None:
    """A queue file whose checksum holds but whose envelope is JSON nested deeper than the parser recurses (only
    damage or a hostile hand can make one): quarantined at start-up, not a crash."""
    spool = Spool(tmp_path)
    qid = Spool.new_qid()
    header = b"[" * 100_000 + b"]" * 100_000 + b"\n"
    with pytest.raises(RecursionError):
        json.loads(header)
    body = header + CONTENT
    digest = hashlib.sha256(body).hexdigest().encode()
    (spool.queue / f"{qid}.msg").write_bytes(b"DIAGSPOOL1\n" + body + b"\n#END %d %s\n" % (len(body), digest))
    assert spool.recover() == [qid]


# --- the order of what reaches the disk ------------------------------------------------------------------------


@pytest.fixture
def disk_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """Every fsync, fdatasync, rename, replace and unlink from here on, with the path it was about, in order (each
    one is still made: this only watches)."""
    calls: list[tuple[str, str]] = []

    def watching(name: str, real: Callable[..., object], by_fd: bool) -> Callable[..., object]:
        def call(*args: object) -> object:
            about = os.readlink(f"/proc/self/fd/{args[0]}") if by_fd else os.fspath(args[0])  # type: ignore[arg-type]
            calls.append((name, about))
            return real(*args)

        return call

    watched = (("fsync", True), ("fdatasync", True), ("rename", False), ("replace", False), ("unlink", False))
    for name, by_fd in watched:
        monkeypatch.setattr(os, name, watching(name, getattr(os, name), by_fd))
    yield calls


def first(calls: list[tuple[str, str]], name: str, about: str | Path) -> int:
    return calls.index((name, os.fspath(about)))


def test_a_batch_is_on_disk_in_the_journal_alone(tmp_path: Path, disk_calls: list[tuple[str, str]]) -> None:
    spool = Spool(tmp_path)
    batch(spool, 3)
    (segment,) = spool.journal.segments()
    synced = first(disk_calls, "fdatasync", segment)
    # The segment itself first: its header, and its name in the journal's directory.
    assert first(disk_calls, "fsync", segment) < synced and first(disk_calls, "fsync", spool.journal.directory) < synced
    assert [name for name, _ in disk_calls] == ["fsync", "fsync", "fdatasync"]  # no file per message, no move


def test_a_checkpoint_makes_the_files_durable_before_it_deletes_the_segment(
    tmp_path: Path, disk_calls: list[tuple[str, str]]
) -> None:
    spool = Spool(tmp_path)
    delivered, waiting = batch(spool, 2)
    spool.remove(delivered, segment=current(spool))
    closed = spool.journal.close()
    assert closed is not None
    spool.checkpoint(closed)
    deleted = first(disk_calls, "unlink", closed.path)
    moved = first(disk_calls, "rename", spool.tmp / f"{waiting}.msg")
    assert first(disk_calls, "fsync", spool.tmp / f"{waiting}.msg") < moved < first(disk_calls, "fsync", spool.queue)
    assert first(disk_calls, "fsync", spool.queue) < deleted
    assert ("rename", os.fspath(spool.tmp / f"{delivered}.msg")) not in disk_calls


@pytest.mark.parametrize("reboot", [False, True], ids=["killed", "crashed"])
def test_a_replay_writes_the_messages_again_and_durably_before_it_deletes_the_segment(
    tmp_path: Path, disk_calls: list[tuple[str, str]], reboot: bool
) -> None:
    """Killed or crashed before a checkpoint, the journal is the only durable copy: a relay started again must not
    delete it before the queue files are written, fsynced, in place: a crash of the machine soon after would lose
    them."""
    spool = Spool(tmp_path)
    (queued,) = batch(spool, 1)
    (segment,) = spool.journal.segments()
    if reboot:
        as_after_a_reboot(segment)
    assert Spool(tmp_path).recover() == []
    deleted = first(disk_calls, "unlink", segment)
    rewritten = first(disk_calls, "replace", spool.tmp / f"{queued}.msg")
    assert first(disk_calls, "fsync", spool.tmp / f"{queued}.msg") < rewritten
    assert rewritten < first(disk_calls, "fsync", spool.queue) < deleted
    assert spool.content(queued) == CONTENT + queued.encode()


@pytest.mark.parametrize("reboot", [False, True], ids=["killed", "crashed"])
def test_a_queue_file_that_reads_whole_is_written_again_from_the_journal_unless_a_reboot_read_it(
    tmp_path: Path, reboot: bool
) -> None:
    """A checkpoint's fsync failed (EIO), and the segment stayed: in the same boot the queue file may read whole
    from memory and not be on disk, and a second fsync would succeed without saying so, so it is written again
    from the journal. After a reboot what reads whole was read from the disk: it is left as it is (with the
    recipients' states it goes with). Here it differs from the record, to tell which was kept."""
    spool = Spool(tmp_path)
    (queued,) = batch(spool, 1)
    spool.store(envelope(), b"Subject: as the file holds it\r\n\r\n", qid=queued)
    if reboot:
        as_after_a_reboot(spool.journal.segments()[0])
    assert Spool(tmp_path).recover() == []
    kept = b"Subject: as the file holds it\r\n\r\n" if reboot else CONTENT + queued.encode()
    assert spool.content(queued) == kept


def test_a_checkpoint_that_cannot_write_a_queue_file_leaves_its_segment_for_the_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    stuck, other = batch(spool, 2)
    (spool.queue / f"{stuck}.msg").mkdir()
    (spool.queue / f"{stuck}.msg" / "x").touch()  # a non-empty directory in its place: the move fails
    closed = spool.journal.close()
    assert closed is not None
    with pytest.raises(OSError):
        spool.checkpoint(closed)
    assert spool.journal.segments() == [closed.path]
    assert Spool(tmp_path).recover() == [stuck]  # set aside, then put back from the journal
    assert sorted(m.qid for m in spool.messages()) == sorted([stuck, other])
