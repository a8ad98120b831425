"""The pipe between the relay's intake and its delivery process: what the parent writes, the child reads back."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

from diag.relay import service
from diag.relay.spool import Envelope

ENVELOPE = Envelope("john@contoso.com", ("sun@tailspintoys.com", "bob@contoso.com"),
                    datetime(2026, 12, 7, 18, 0, tzinfo=UTC), peer="127.0.10.10", helo="mail.contoso.com")  # fmt: skip
CONTENT = b"Subject: hello\r\n\r\n" + b"x" * 300 + b"\r\n"


class Deliverer:
    """What the child's end of the pipe tells the deliverer."""

    def __init__(self) -> None:
        self.told: list[tuple[str, Envelope | None, bytes | None]] = []

    def kick(self, qid: str | None = None) -> None:
        assert qid is not None
        self.told.append((qid, None, None))

    def queued(self, qid: str, envelope: Envelope, content: bytes) -> None:
        self.told.append((qid, envelope, content))


class Pipe(asyncio.WriteTransport):
    """The parent's end, in memory: what its announcements write."""

    def __init__(self, backlog: int = 0) -> None:
        super().__init__()
        self.written = bytearray()
        self.backlog = backlog

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return self.backlog


def read(data: bytes, step: int) -> tuple[Deliverer, bool]:
    """``data`` through the child's end, ``step`` bytes at a time; what the deliverer was told, and whether the
    parent said stop."""
    deliverer = Deliverer()
    announcements = service._Announcements(deliverer, asyncio.Event())  # type: ignore[arg-type]
    for start in range(0, len(data), step):
        announcements.data_received(data[start : start + step])
    return deliverer, announcements._told


@pytest.mark.parametrize("step", [1, 2, 7, 100, 10_000])
def test_handed_messages_and_bare_ids_come_out_whole_however_the_pipe_cuts_them(step: int) -> None:
    pipe = Pipe()
    service._announce(pipe, "0a1b2c3d4e5f", ENVELOPE, CONTENT)
    pipe.write(b"00ff00ff\n")  # an id alone: read from the spool
    service._announce(pipe, "9999aaaa", ENVELOPE, b"")
    pipe.write(service._STOP + b"\n")
    deliverer, stopped = read(bytes(pipe.written), step)
    handed, alone, empty = ("0a1b2c3d4e5f", ENVELOPE, CONTENT), ("00ff00ff", None, None), ("9999aaaa", ENVELOPE, b"")
    assert deliverer.told == [handed, alone, empty]
    assert stopped


def test_a_large_message_or_a_backed_up_pipe_hands_over_the_id_alone() -> None:
    large = b"x" * (service._HANDED_CONTENT + 1)
    pipe = Pipe()
    service._announce(pipe, "0a1b2c3d", ENVELOPE, large)
    backed_up = Pipe(backlog=service._PIPE_BACKLOG + 1)
    service._announce(backed_up, "0a1b2c3d", ENVELOPE, CONTENT)
    assert bytes(pipe.written) == bytes(backed_up.written) == b"0a1b2c3d\n"


def test_a_damaged_envelope_sends_the_child_to_the_spool() -> None:
    header = json.dumps({"mail_from": "john@contoso.com"}).encode()  # no recipients, no date
    deliverer, _ = read(b"0a1b2c3d %d 2\n%sok" % (len(header), header), 3)
    assert deliverer.told == [("0a1b2c3d", None, None)]
