"""The spool keeps the acceptance promise: stored means durable and intact, damaged means quarantined."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

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
