"""The pipe between the relay's intake and its delivery process: what the parent writes, the child reads back."""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from diag.config import AcceptedDomain, Organization, RelayRole
from diag.errors import DiagError
from diag.relay import service
from diag.relay.settings import RelaySettings
from diag.relay.spool import Envelope, Spool

ENVELOPE = Envelope("john@contoso.com", ("sun@tailspintoys.com", "bob@contoso.com"),
                    datetime(2026, 12, 7, 18, 0, tzinfo=UTC), peer="127.0.10.10", helo="mail.contoso.com")  # fmt: skip
CONTENT = b"Subject: hello\r\n\r\n" + b"x" * 300 + b"\r\n"
SEGMENT = "18ef1f5a00000000"  # a journal segment's name


class Deliverer:
    """What the child's end of the pipe tells the deliverer."""

    def __init__(self) -> None:
        self.told: list[tuple[str, Envelope | None, bytes | None, str | None]] = []
        self.stop_grace = 5.0

    def kick(self, qid: str | None = None, segment: str | None = None) -> None:
        assert qid is not None
        self.told.append((qid, None, None, segment))

    def queued(self, qid: str, envelope: Envelope, content: bytes, segment: str | None) -> None:
        self.told.append((qid, envelope, content, segment))


class Pipe(asyncio.WriteTransport):
    """The parent's end, in memory: what its announcements write."""

    def __init__(self, backlog: int = 0) -> None:
        super().__init__()
        self.written = bytearray()
        self.backlog = backlog
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed  # uvloop's transport raises RuntimeError
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return self.backlog


def read(data: bytes, step: int, stop: asyncio.Event | None = None) -> tuple[Deliverer, bool]:
    """``data`` through the child's end, ``step`` bytes at a time; what the deliverer was told, and whether the
    parent said stop."""
    deliverer = Deliverer()
    announcements = service._Announcements(deliverer, stop or asyncio.Event())  # type: ignore[arg-type]
    for start in range(0, len(data), step):
        announcements.data_received(data[start : start + step])
    return deliverer, announcements._told


@pytest.mark.parametrize("step", [1, 2, 7, 100, 10_000])
def test_handed_messages_and_bare_ids_come_out_whole_however_the_pipe_cuts_them(step: int) -> None:
    pipe = Pipe()
    service._announce(pipe, "0a1b2c3d4e5f", ENVELOPE, CONTENT, SEGMENT)
    pipe.write(b"00ff00ff\n")  # an id alone: read from the spool
    service._announce(pipe, "9999aaaa", ENVELOPE, b"", None)  # stored on its own, in no journal segment
    pipe.write(b"00ff00fe %s\n" % SEGMENT.encode())  # an id alone, from a journal segment (the pipe was backed up)
    pipe.write(service._STOP + b"\n")
    deliverer, stopped = read(bytes(pipe.written), step)
    handed, alone = ("0a1b2c3d4e5f", ENVELOPE, CONTENT, SEGMENT), ("00ff00ff", None, None, None)
    assert deliverer.told == [handed, alone, ("9999aaaa", ENVELOPE, b"", None), ("00ff00fe", None, None, SEGMENT)]
    assert stopped


def test_a_large_message_or_a_backed_up_pipe_hands_over_the_id_alone() -> None:
    # At the limits, handed over; one octet beyond, the id alone
    largest, full = b"x" * service._HANDED_CONTENT, Pipe(backlog=service._PIPE_BACKLOG)
    service._announce(full, "0a1b2c3d", ENVELOPE, largest, SEGMENT)
    assert read(bytes(full.written), 4096)[0].told == [("0a1b2c3d", ENVELOPE, largest, SEGMENT)]
    large, pipe = largest + b"x", Pipe()
    service._announce(pipe, "0a1b2c3d", ENVELOPE, large, None)
    backed_up = Pipe(backlog=service._PIPE_BACKLOG + 1)
    service._announce(backed_up, "0a1b2c3d", ENVELOPE, CONTENT, SEGMENT)
    assert bytes(pipe.written) == b"0a1b2c3d\n" and bytes(backed_up.written) == b"0a1b2c3d %s\n" % SEGMENT.encode()


def test_nothing_is_announced_or_said_on_a_pipe_whose_child_is_gone() -> None:
    """uvloop's transport raises on a write once closed: a message stored after the child died stays in the spool
    for the next start, and the last word is not said."""
    pipe = Pipe()
    pipe.closed = True
    service._announce(pipe, "0a1b2c3d", ENVELOPE, CONTENT, SEGMENT)
    asyncio.run(service._last_word(pipe, asyncio.Event()))
    assert pipe.written == b""


@pytest.mark.parametrize(
    "header", [json.dumps({"mail_from": "john@contoso.com"}).encode(), b"[" * 100_000, b"\xff"],
    ids=["no recipients", "too deep", "not UTF-8"],
)  # fmt: skip
def test_a_damaged_envelope_sends_the_child_to_the_spool_and_the_next_record_still_counts(header: bytes) -> None:
    pipe = Pipe()
    pipe.write(b"0a1b2c3d %d 2\n%sok" % (len(header), header))
    service._announce(pipe, "0a1b2c3e", ENVELOPE, CONTENT, SEGMENT)
    deliverer, _ = read(bytes(pipe.written), 3)
    assert deliverer.told == [("0a1b2c3d", None, None, None), ("0a1b2c3e", ENVELOPE, CONTENT, SEGMENT)]


@pytest.mark.parametrize(
    "garbage",
    [b"x" * (service._LINE_MAX + 1), b"0a1b2c3d %d 10\n" % (service._ENVELOPE_MAX + 1),
     b"0a1b2c3d 10 %d\n" % (service._HANDED_CONTENT + 1), b"Subject: hello\n", b"0a1b2c3d 2 2 ../../etc\n"],
    ids=["a line without end", "a huge envelope", "a huge content", "an unknown line", "no segment's name"],
)  # fmt: skip
def test_a_pipe_out_of_step_stops_delivery_at_once_and_reads_nothing_more(garbage: bytes) -> None:
    pipe = Pipe()
    pipe.write(garbage)
    service._announce(pipe, "0a1b2c3d", ENVELOPE, CONTENT, SEGMENT)
    pipe.write(b"00ff00ff\n" + service._STOP + b"\n")
    stop = asyncio.Event()
    deliverer, told_stop = read(bytes(pipe.written), 50, stop)
    # Nothing after the garbage is taken for an announcement, and delivery ends as after a crash (no grace)
    assert deliverer.told == [] and not told_stop
    assert stop.is_set() and deliverer.stop_grace == 0.0


def test_the_last_word_waits_until_the_pipe_has_written_everything(tmp_path: Path) -> None:
    """The parent's buffer may hold megabytes of handed messages at stop: they and ``stop`` reach the child."""
    read_end, write_end = os.pipe()
    received = bytearray()

    def drain() -> None:  # a child that reads slowly
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                received.extend(chunk)
                time.sleep(0.001)

    reader = threading.Thread(target=drain)
    reader.start()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        gone = asyncio.Event()
        transport, _ = await loop.connect_write_pipe(lambda: service._ChildWatch(gone), os.fdopen(write_end, "wb", 0))
        for n in range(40):
            service._announce(transport, f"{n:08x}", ENVELOPE, b"x" * 100_000, SEGMENT)
        assert transport.get_write_buffer_size() > 1_000_000  # the child is behind
        await service._last_word(transport, gone)

    asyncio.run(scenario())
    reader.join(30)
    deliverer, told_stop = read(bytes(received), 65536)
    assert len(deliverer.told) == 40 and told_stop


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_delivery_process_gone_before_the_relay_listens_is_one_error(tmp_path: Path, loop: str) -> None:
    """The intake's pipe to the child is closed at its other end before the relay says start: uvloop's transport
    refuses a write then, and the relay must still stop with its one-line error, not a traceback."""
    factory = pytest.importorskip("uvloop").new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    settings = RelaySettings(
        organization=Organization(accepted_domains=(AcceptedDomain("sink.example"),)),
        role=RelayRole.INTERNET,
        hostname="sink.relay.example",
        listen=(("127.0.0.1", 0),),
        spool=tmp_path / "spool",
        maildir=tmp_path / "mail",
        mailboxes=("sink@sink.example",),
    )
    read_end, write_end = os.pipe()
    os.close(read_end)  # the child is gone
    with pytest.raises(DiagError, match=r"the delivery process \(pid 1\) ended"):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(service._intake(settings, Spool(settings.spool), os.fdopen(write_end, "wb", buffering=0), 1))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_loop_s_copy_of_the_pipe_is_closed_once_by_its_transport(loop: str) -> None:
    """uvloop's pipe transport closes its descriptor, then the file object it was given (uvloop issue #763): that
    one must not close it again. asyncio's closes it through the file object alone: that one must."""
    factory = pytest.importorskip("uvloop").new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    read_end, write_end = os.pipe()
    pipe = os.fdopen(write_end, "wb", buffering=0)

    async def main() -> None:
        handed = service._handed(pipe, asyncio.get_running_loop())
        assert isinstance(handed, io.FileIO) and handed.closefd is (loop == "asyncio") and handed.fileno() != write_end
        copy = handed.fileno()
        transport, _ = await asyncio.get_running_loop().connect_write_pipe(asyncio.Protocol, handed)
        transport.close()
        await asyncio.sleep(0.05)
        with pytest.raises(OSError):
            os.fstat(copy)  # closed: not leaked

    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())
        os.fstat(write_end)  # the caller's copy stays the caller's
    finally:
        pipe.close()
        os.close(read_end)
