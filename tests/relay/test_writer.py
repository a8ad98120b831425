"""The intake's writer: every message handed over gets an answer, segments are closed under steady load, and a
disk slower than the intake holds the intake back instead of piling segments up."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from diag.relay import writer as writer_module
from diag.relay.journal import Journal, Segment
from diag.relay.spool import Envelope, Spool
from diag.relay.writer import BatchWriter

CONTENT = b"Subject: hello\r\n\r\nbody\r\n"
ENVELOPE = Envelope("john@contoso.com", ("sun@tailspintoys.com",))
WAIT = 10.0


class Stop(BaseException):
    """Not an Exception: what ends a thread (as SystemExit would)."""


class StoppingSpool(Spool):
    def store_batch(self, messages: Sequence[tuple[str, Envelope, bytes]]) -> str:
        raise Stop


class WatchedSpool(Spool):
    """Checkpoints counted, and held until released."""

    def __init__(self, root: Path, journal: Journal) -> None:
        super().__init__(root)
        self.journal = journal
        self.checkpoints: list[Segment] = []
        self.release = threading.Event()
        self.release.set()

    def checkpoint(self, segment: Segment, moved: set[str] | None = None) -> list[str]:
        assert self.release.wait(WAIT)
        written = super().checkpoint(segment, moved)
        self.checkpoints.append(segment)
        return written


def test_a_writer_that_stops_refuses_what_it_has_and_all_that_comes_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        writer = BatchWriter(StoppingSpool(tmp_path), asyncio.get_running_loop())
        try:
            with pytest.raises(OSError, match="the spool writer failed"):
                await asyncio.wait_for(writer.store(Spool.new_qid(), ENVELOPE, CONTENT), WAIT)
            await asyncio.to_thread(writer._thread.join, WAIT)  # gone: nothing reads what is handed over now
            with pytest.raises(OSError, match="the spool writer has stopped"):
                await asyncio.wait_for(writer.store(Spool.new_qid(), ENVELOPE, CONTENT), WAIT)
        finally:
            await writer.close(WAIT)

    asyncio.run(main())
    assert "the spool writer failed" in caplog.text


class SlowStoppingSpool(Spool):
    def store_batch(self, messages: Sequence[tuple[str, Envelope, bytes]]) -> str:
        time.sleep(0.2)  # long enough for the next message to be handed over meanwhile
        raise Stop


def test_what_was_handed_over_while_the_writer_failed_is_refused_too(tmp_path: Path) -> None:
    async def main() -> None:
        writer = BatchWriter(SlowStoppingSpool(tmp_path), asyncio.get_running_loop())
        try:
            failing = writer.store(Spool.new_qid(), ENVELOPE, CONTENT)
            await asyncio.sleep(0.05)
            waiting = writer.store(Spool.new_qid(), ENVELOPE, CONTENT)  # in the queue while the batch fails
            with pytest.raises(OSError, match="the spool writer failed"):
                await asyncio.wait_for(failing, WAIT)
            with pytest.raises(OSError, match="the spool writer has stopped"):
                await asyncio.wait_for(waiting, WAIT)
        finally:
            await writer.close(WAIT)

    asyncio.run(main())


def test_more_messages_than_one_append_takes_are_stored_in_several(tmp_path: Path) -> None:
    """writev takes at most 1024 buffers (two a message): 600 messages waiting at once go in more than one batch,
    and the writer's thread ends once closed."""
    spool = Spool(tmp_path)

    async def main() -> None:
        writer = BatchWriter(spool, asyncio.get_running_loop())
        try:
            stored = [writer.store(Spool.new_qid(), ENVELOPE, CONTENT) for _ in range(600)]
            await asyncio.wait_for(asyncio.gather(*stored), WAIT)
        finally:
            await writer.close(WAIT)
        assert not writer._thread.is_alive()

    asyncio.run(main())
    assert len(spool.messages()) == 600 and spool.journal.segments() == []


def test_segments_are_closed_and_checkpointed_under_steady_load(tmp_path: Path) -> None:
    """Never idle for a segment's age, the writer still closes each segment once it is old enough."""
    spool = WatchedSpool(tmp_path, Journal(tmp_path / "journal", segment_age=0.2))

    async def main() -> None:
        writer = BatchWriter(spool, asyncio.get_running_loop())
        try:
            for _ in range(12):  # 0.6 s, a message every 0.05 s
                await asyncio.wait_for(writer.store(Spool.new_qid(), ENVELOPE, CONTENT), WAIT)
                await asyncio.sleep(0.05)
            async with asyncio.timeout(WAIT):  # before close(), which checkpoints the last one
                while not spool.checkpoints:  # noqa: ASYNC110 - the checkpoint thread tells nobody
                    await asyncio.sleep(0.01)
        finally:
            await writer.close(WAIT)

    asyncio.run(main())
    assert spool.journal.segments() == [] and len(spool.messages()) == 12


def test_checkpoints_that_fall_behind_hold_the_intake_back(tmp_path: Path) -> None:
    """Segments closed at every batch, checkpoints stuck: after four waiting, the next store waits too."""
    spool = WatchedSpool(tmp_path, Journal(tmp_path / "journal", segment_bytes=1))
    spool.release.clear()

    async def main() -> None:
        writer = BatchWriter(spool, asyncio.get_running_loop())
        try:
            # The first batch opens a segment; each next one closes the one before: the first closed is taken by
            # the checkpoint thread (and stuck there), three more wait for it, and the fifth batch's segment is
            # open. The sixth must close it, and finds four closed segments waiting.
            for _ in range(5):
                await asyncio.wait_for(writer.store(Spool.new_qid(), ENVELOPE, CONTENT), WAIT)
            held = writer.store(Spool.new_qid(), ENVELOPE, CONTENT)
            await asyncio.sleep(0.5)
            assert not held.done() and len(spool.journal.segments()) == 5
            spool.release.set()
            await asyncio.wait_for(held, WAIT)
        finally:
            spool.release.set()
            await writer.close(WAIT)

    asyncio.run(main())
    assert len(spool.checkpoints) == 6 and spool.journal.segments() == [] and len(spool.messages()) == 6


class FailingOnceSpool(Spool):
    """The first checkpoint fails (a full disk that then had room again)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.tries = 0

    def checkpoint(self, segment: Segment, moved: set[str] | None = None) -> list[str]:
        self.tries += 1
        if self.tries == 1:
            raise OSError(28, "No space left on device")
        return super().checkpoint(segment, moved)


def test_a_failed_checkpoint_is_tried_again_and_delivery_told_of_the_files_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Until its checkpoint, an undelivered message has no queue file: a scan would never find it."""
    monkeypatch.setattr(writer_module, "_CHECKPOINT_RETRY", 0.05)
    spool = FailingOnceSpool(tmp_path)
    spool.journal = Journal(tmp_path / "journal", segment_age=0.05)
    told: list[list[str]] = []

    async def main() -> None:
        writer = BatchWriter(spool, asyncio.get_running_loop(), on_checkpoint=told.append)
        try:
            qid, segment = await asyncio.wait_for(writer.store(Spool.new_qid(), ENVELOPE, CONTENT), WAIT)
            assert segment == spool.journal.current
            async with asyncio.timeout(WAIT):
                while not told:  # noqa: ASYNC110 - the checkpoint thread tells nobody else
                    await asyncio.sleep(0.01)
            assert [m.qid for m in spool.messages()] == [qid] and spool.tries == 2
            assert spool.journal.segments() == [] and told == [[qid]]  # delivery is told which to read
        finally:
            await writer.close(WAIT)

    asyncio.run(main())
    assert "cannot checkpoint the journal segment" in caplog.text


def test_a_checkpoint_that_wrote_nothing_tells_delivery_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    told: list[list[str]] = []

    async def main() -> None:
        writer = BatchWriter(spool, asyncio.get_running_loop(), on_checkpoint=told.append)
        try:
            qid, segment = await asyncio.wait_for(writer.store(Spool.new_qid(), ENVELOPE, CONTENT), WAIT)
            spool.remove(qid, segment=segment)  # delivered from memory
        finally:
            await writer.close(WAIT)
        await asyncio.sleep(0)  # what the checkpoint thread asked of the loop, if anything, runs now

    asyncio.run(main())
    assert told == [] and spool.messages() == [] and spool.journal.segments() == []


def test_a_failed_checkpoint_is_tried_again_while_other_segments_keep_closing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "_CHECKPOINT_RETRY", 0.2)
    spool = FailingOnceSpool(tmp_path)
    spool.journal = Journal(tmp_path / "journal", segment_age=0.05)

    async def main() -> None:
        writer = BatchWriter(spool, asyncio.get_running_loop())
        try:
            first, _ = await asyncio.wait_for(writer.store(Spool.new_qid(), ENVELOPE, CONTENT), WAIT)
            async with asyncio.timeout(WAIT):
                while first not in {m.qid for m in spool.messages()}:  # a segment closes every 0.05 s meanwhile
                    await asyncio.wait_for(writer.store(Spool.new_qid(), ENVELOPE, CONTENT), WAIT)
                    await asyncio.sleep(0.02)
        finally:
            await writer.close(WAIT)

    asyncio.run(main())
