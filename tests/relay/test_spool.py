"""The spool keeps the acceptance promise: stored means durable and intact, damaged means quarantined."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from diag.relay import spool as spool_module
from diag.relay.journal import boot_id
from diag.relay.spool import Envelope, RecipientState, RecipientStatus, Spool, SpoolError

CONTENT = b"Subject: hello\r\n\r\nbody\r\n"


def envelope(*rcpts: str) -> Envelope:
    return Envelope("john@contoso.com", rcpts or ("sun@tailspintoys.com",), peer="127.0.10.10", tls="TLSv1.3 X")


def test_store_and_read_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    qid = spool.store(envelope("a@x.example", "b@y.example"), CONTENT)
    (message,) = spool.messages()
    assert message.qid == qid and message.size == len(CONTENT)
    stored = message.envelope
    assert (stored.mail_from, stored.rcpt_tos, stored.peer, stored.tls) == (
        "john@contoso.com", ("a@x.example", "b@y.example"), "127.0.10.10", "TLSv1.3 X",
    )  # fmt: skip
    assert [s.recipient for s in message.pending] == ["a@x.example", "b@y.example"]
    assert spool.content(qid) == CONTENT
    assert list((tmp_path / "tmp").iterdir()) == []


def test_states_are_kept_until_every_recipient_is_final(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    qid = spool.store(envelope("a@x.example", "b@y.example"), CONTENT)
    later = datetime.now(UTC) + timedelta(minutes=5)
    spool.update(qid, [RecipientStatus("a@x.example", RecipientState.DELIVERED, 1, detail="250 ok")])
    spool.update(qid, [RecipientStatus("b@y.example", attempts=1, next_attempt=later, detail="451 later")])
    message = Spool(tmp_path).get(qid)  # as a restarted relay sees it
    assert [s.state for s in message.statuses] == [RecipientState.DELIVERED, RecipientState.PENDING]
    assert message.due(datetime.now(UTC)) == ()
    assert [s.recipient for s in message.due(later)] == ["b@y.example"]
    spool.update(qid, [RecipientStatus("b@y.example", RecipientState.FAILED, 2, detail="550 no")])
    assert spool.messages() == [] and list((tmp_path / "queue").iterdir()) == []


def test_remove_ignores_what_is_gone_and_raises_what_it_cannot_remove(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    qid = spool.store(envelope(), CONTENT)
    spool.remove(qid)  # the message file, and no state file to remove
    spool.remove(qid)  # again: nothing left, nothing to say
    assert spool.messages() == []
    # What cannot be removed (here a directory in the state file's place) is an error for the caller to handle
    other = spool.store(envelope(), CONTENT)
    (tmp_path / "queue" / f"{other}.state").mkdir()
    with pytest.raises(OSError):
        spool.remove(other)


def test_envelopes_and_states_come_back_whole_from_their_json() -> None:
    """Every field, none at its default, survives to_json and from_json (to_json names each field itself)."""
    accepted, retry = datetime(2026, 12, 7, 17, 0, tzinfo=UTC), datetime(2026, 12, 7, 18, 0, tzinfo=UTC)
    stored = Envelope("john@contoso.com", ("a@x.example", "b@y.example"), accepted, peer="127.0.10.10",
                      helo="mail.contoso.com", tls="TLSv1.3 X", client_cert_names=("a", "b"))  # fmt: skip
    status = RecipientStatus("a@x.example", RecipientState.FAILED, 3, retry, detail="550 no", route="connector")
    for value in (stored, status):
        data = value.to_json()
        assert list(data) == [f.name for f in dataclasses.fields(value)]
        assert type(value).from_json(json.loads(json.dumps(data))) == value


@pytest.mark.parametrize("cut", [5, 40, -30, -1])
def test_a_damaged_file_is_quarantined_not_delivered(tmp_path: Path, cut: int) -> None:
    spool = Spool(tmp_path)
    qid = spool.store(envelope(), CONTENT)
    path = tmp_path / "queue" / f"{qid}.msg"
    data = path.read_bytes()
    path.write_bytes(data[:cut])  # as a crash or a full disk would leave it
    with pytest.raises(SpoolError):
        spool.content(qid)
    assert spool.recover() == [qid]
    assert spool.messages() == [] and (tmp_path / "quarantine" / f"{qid}.msg").exists()


@pytest.mark.parametrize("kind", ["directory", "pipe", "link"])
@pytest.mark.parametrize("place", ["queue", "journaled", "journaled, another boot", "tmp", "journal", "done"])
def test_what_is_not_a_file_is_quarantined_at_start(tmp_path: Path, kind: str, place: str) -> None:
    """Not a traceback at start-up, nor a read that waits for a writer (a pipe): moved aside like damage. A message
    whose queue file was replaced so is put back from the journal."""
    spool = Spool(tmp_path)
    kept = spool.store(envelope(), CONTENT)
    journaled = Spool.new_qid()
    spool.store_batch([(journaled, envelope(), CONTENT)])
    segment = spool.journal.close()
    assert segment is not None
    if place == "journaled, another boot":
        segment.path.write_bytes(segment.path.read_bytes().replace(boot_id().encode(), b"0" * len(boot_id()), 1))
    # "done": the segment's list of delivered messages (then none is listed, and the message is put back).
    name = {"queue": "odd.msg", "tmp": "odd.msg", "journal": "odd.j", "done": f"{segment.path.stem}.done"}.get(
        place, f"{journaled}.msg"
    )
    odd = tmp_path / {"tmp": "tmp", "journal": "journal", "done": "journal"}.get(place, "queue") / name
    odd.unlink(missing_ok=True)
    if kind == "directory":
        odd.mkdir()
    elif kind == "pipe":
        os.mkfifo(odd)
    else:
        odd.symlink_to(tmp_path / "queue" / f"{kept}.msg")
    with ThreadPoolExecutor(1) as pool:
        recovering = pool.submit(spool.recover)
        try:
            assert recovering.result(timeout=10) == [name.removesuffix(".msg")]
        finally:
            if not recovering.done():  # it opened the pipe to read: a writer lets it go, the test fails
                with open(odd, "wb"):
                    pass
    assert os.path.lexists(tmp_path / "quarantine" / name)
    assert sorted(m.qid for m in spool.messages()) == sorted([kept, journaled])
    assert spool.content(journaled) == CONTENT


def test_what_is_set_aside_replaces_nothing_and_nothing_is_written_through_a_link(tmp_path: Path) -> None:
    """Quarantine keeps what it held before (a number is added to a name taken), and a record quarantined under
    the name of a link set aside is not written through it."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"not the spool's")
    spool = Spool(tmp_path / "spool")
    qid = Spool.new_qid()
    spool.store_batch([(qid, envelope(), CONTENT)])
    spool.journal.close()
    (segment,) = spool.journal.segments()
    data = segment.read_bytes()
    segment.write_bytes(data.replace(CONTENT, CONTENT.replace(b"body", b"bodx")))  # its record now damaged
    (spool.queue / f"{qid}.msg").symlink_to(outside)
    earlier = spool.quarantine / f"{qid}.msg.1"
    (spool.quarantine / f"{qid}.msg").write_bytes(b"quarantined before")
    earlier.write_bytes(b"and this")
    assert sorted(spool.recover()) == [qid, qid]  # the link set aside, the damaged record quarantined
    assert outside.read_bytes() == b"not the spool's"
    assert (spool.quarantine / f"{qid}.msg").read_bytes() == b"quarantined before"
    assert earlier.read_bytes() == b"and this"
    assert (spool.quarantine / f"{qid}.msg.2").is_symlink()
    assert (spool.quarantine / f"{qid}.msg.3").read_bytes().startswith(b"DIAGSPOOL1")
    assert spool.messages() == []


def test_at_start_what_the_spool_does_not_read_is_left_alone(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for directory in ("queue", "tmp", "journal"):
        (tmp_path / directory / "lost+found").mkdir()
    assert spool.recover() == []
    assert all((tmp_path / directory / "lost+found").is_dir() for directory in ("queue", "tmp", "journal"))


def test_a_state_that_is_no_file_is_no_state(tmp_path: Path) -> None:
    """A pipe by a state file's name, read by a queue listing or a delivery: no state (every recipient pending),
    not a read that waits for a writer; set aside at the next start."""
    spool = Spool(tmp_path)
    qid = spool.store(envelope(), CONTENT)
    os.mkfifo(tmp_path / "queue" / f"{qid}.state")
    [message] = spool.messages()
    assert message.statuses[0].state is RecipientState.PENDING
    assert spool.recover() == [f"{qid}.state"] and [m.qid for m in spool.messages()] == [qid]


def test_a_queue_listing_skips_what_is_not_a_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    kept = spool.store(envelope(), CONTENT)
    (tmp_path / "queue" / "odd.msg").mkdir()
    os.mkfifo(tmp_path / "queue" / "pipe.msg")
    assert [m.qid for m in spool.messages()] == [kept]  # not waiting for a writer on the pipe


def test_flipped_byte_is_caught_by_the_checksum(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    qid = spool.store(envelope(), CONTENT)
    path = tmp_path / "queue" / f"{qid}.msg"
    data = bytearray(path.read_bytes())
    data[data.index(b"body")] ^= 0x20
    path.write_bytes(bytes(data))
    assert spool.recover() == [qid]


def test_recover_drops_unfinished_writes_and_keeps_good_messages(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    qid = spool.store(envelope(), CONTENT)
    (tmp_path / "tmp" / "half.msg").write_bytes(b"DIAGSPOOL1\n{")
    assert spool.recover() == []
    assert [m.qid for m in spool.messages()] == [qid]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_damaged_state_file_means_trying_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    qid = spool.store(envelope("a@x.example", "b@y.example"), CONTENT)
    spool.update(qid, [RecipientStatus("a@x.example", RecipientState.DELIVERED)])
    (tmp_path / "queue" / f"{qid}.state").write_text("{not json")
    assert [s.state for s in spool.get(qid).statuses] == [RecipientState.PENDING, RecipientState.PENDING]


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / "queue").rmdir()
    (tmp_path / "queue").write_text("not a directory")  # the rename into the queue fails, as on a broken disk
    with pytest.raises(OSError):
        spool.store(envelope(), CONTENT)
    assert list((tmp_path / "tmp").iterdir()) == []


class _DirectoryFsyncs:
    """Stands in for the spool's directory fsync: records each call, and can hold the first one until released."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_running = threading.Event()
        self.release_first = threading.Event()
        self.release_first.set()

    def __call__(self, directory: Path) -> None:
        self.calls += 1
        if self.calls == 1:
            self.first_running.set()
            assert self.release_first.wait(10)


def test_concurrent_stores_share_directory_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    fsyncs = _DirectoryFsyncs()
    fsyncs.release_first.clear()
    monkeypatch.setattr(spool_module, "fsync_dir", fsyncs)
    with ThreadPoolExecutor(max_workers=9) as pool:
        first = pool.submit(spool.store, envelope(), CONTENT)
        assert fsyncs.first_running.wait(10)
        # Eight stores rename while the first fsync runs: none may return before a fsync that began after its
        # rename, and they all share the second one.
        others = [pool.submit(spool.store, envelope(), CONTENT) for _ in range(8)]
        time.sleep(0.2)
        assert not any(future.done() for future in [first, *others])
        fsyncs.release_first.set()
        stored = [future.result(10) for future in [first, *others]]
    assert len(set(stored)) == 9 and len(spool.messages()) == 9
    assert fsyncs.calls == 2


def test_a_failed_directory_fsync_fails_the_store_and_the_next_one_syncs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    calls: list[Path] = []

    def failing_once(directory: Path) -> None:
        calls.append(directory)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_module, "fsync_dir", failing_once)
    with pytest.raises(OSError, match="Input/output error"):
        spool.store(envelope(), CONTENT)
    # Refused, so nothing is left to deliver: not in tmp/, nor renamed into the queue before the fsync failed
    assert list((tmp_path / "tmp").iterdir()) == [] and list((tmp_path / "queue").iterdir()) == []
    qid = spool.store(envelope(), CONTENT)
    assert len(calls) == 2 and [m.qid for m in spool.messages()] == [qid]


def test_removal_is_not_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    qid = spool.store(envelope(), CONTENT)
    fsyncs = _DirectoryFsyncs()
    monkeypatch.setattr(spool_module, "fsync_dir", fsyncs)
    spool.update(qid, [RecipientStatus("sun@tailspintoys.com", RecipientState.DELIVERED, 1)])
    assert spool.messages() == [] and fsyncs.calls == 0


def test_update_with_the_callers_states_does_not_read_the_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    qid = spool.store(envelope("a@x.example", "b@y.example"), CONTENT)
    current = spool.get(qid).statuses
    reads: list[str] = []
    monkeypatch.setattr(spool, "get", reads.append)
    later = datetime.now(UTC) + timedelta(minutes=5)
    spool.update(qid, [RecipientStatus("b@y.example", attempts=1, next_attempt=later)], current=current)
    monkeypatch.undo()
    assert reads == [] and [s.attempts for s in spool.get(qid).statuses] == [0, 1]
