"""The intake's writer: the messages waiting made durable together by one thread, which wakes the loop once per batch.

A thread per store, each with its own fsync, cost about a millisecond of CPU per message and queued the 250s behind
one another on a 2-core machine (bench/README.md, issue 13). Here the sessions hand their messages to one thread.
While it stores a batch (:meth:`Spool.store_batch`: one journal append, one fdatasync, no file per message), the
next messages gather, and go together in the next batch; then it wakes the loop once to answer the batch's
sessions. No file work runs on the loop, so a disk that stalls (a full journal, writeback throttling) delays the
250s but never the other sessions (RR-56). Closed journal segments are checkpointed on a second thread,
each a segment's age after it was closed: the deliverer has had time to deliver its messages from memory, so the
checkpoint seldom writes a queue file for one it is about to finish. When a checkpoint wrote any,
``on_checkpoint(ids)`` is called on the loop: delivery reads them from the queue then (the messages it could not
be handed, or has not finished).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from diag.relay.journal import Segment
from diag.relay.spool import Envelope, Spool

__all__ = ["BatchWriter", "Stored"]

log = logging.getLogger("diag.relay")

# The most messages in one append: two iovecs each stay within writev's IOV_MAX (1024 on Linux).
_BATCH_MAX: Final = 256
# Seconds between tries of a checkpoint that failed (a full or failing disk).
_CHECKPOINT_RETRY: Final = 30.0
# The most closed segments waiting for their checkpoint: beyond it the writer waits (and the 250s with it), so a
# disk slower than the intake cannot pile segments up without bound. (One whose checkpoint failed no longer counts:
# it is tried again on its own clock, and a disk that fails the checkpoints fails the journal's appends too.)
_CHECKPOINT_BACKLOG: Final = 4

# A message stored: its queue id, and the journal segment that holds it (None for one stored on its own).
Stored = tuple[str, str | None]
_Pending = tuple[str, Envelope, bytes, "asyncio.Future[Stored]"]
_NOTHING: Final = Segment(Path(), ())  # no segment came: only time for a retry


class BatchWriter:
    """Stores messages for the server: :meth:`store` on the loop; :meth:`close` stores what waits and checkpoints
    the open journal segment, so a relay stopped cleanly leaves its messages in queue files alone."""

    def __init__(
        self,
        spool: Spool,
        loop: asyncio.AbstractEventLoop,
        *,
        on_checkpoint: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._spool = spool
        self._loop = loop
        self._on_checkpoint = on_checkpoint
        self._leaving = threading.Event()  # set once the writer stops: checkpoints then wait no more
        self._pending: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        # Once the writer has stopped (closed, or failed), a message handed over is refused at once.
        self._handing = threading.Lock()
        self._stopped = False
        self._closed: queue.SimpleQueue[Segment | None] = queue.SimpleQueue()
        self._backlog = threading.BoundedSemaphore(_CHECKPOINT_BACKLOG)
        # Daemon threads: a disk that never answers must not keep the process from exiting.
        self._checkpointer = threading.Thread(target=self._checkpoint_closed, name="spool-checkpoint", daemon=True)
        self._thread = threading.Thread(target=self._run, name="spool-journal", daemon=True)
        self._checkpointer.start()
        self._thread.start()

    def store(self, qid: str, envelope: Envelope, content: bytes) -> asyncio.Future[Stored]:
        """Store a message; the future is its queue id and journal segment once it is durable, or the error that
        refused it (OSError from the disk)."""
        future: asyncio.Future[Stored] = self._loop.create_future()
        with self._handing:
            if not self._stopped:
                self._pending.put((qid, envelope, content, future))
                return future
        future.set_exception(OSError("the spool writer has stopped"))
        return future

    async def close(self, wait: float) -> None:
        """Store what waits, checkpoint, and stop the threads; at most ``wait`` seconds. A stuck disk is left to
        finish on its own: a batch it was writing was not answered 250, and messages whose checkpoint it holds up
        are in the journal, which start-up replays."""
        self._pending.put(None)
        await asyncio.to_thread(self._thread.join, wait)

    def _run(self) -> None:
        journal = self._spool.journal
        try:
            while True:
                try:
                    item = self._pending.get(timeout=journal.segment_age if journal.writing else None)
                except queue.Empty:
                    self._close_segment()  # idle: its messages need not wait for the next one to be durable
                    continue
                batch: list[_Pending] = []
                while item is not None:
                    batch.append(item)
                    if len(batch) >= _BATCH_MAX:
                        break
                    try:
                        item = self._pending.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    self._store(batch)
                if item is None:
                    return
        except BaseException:  # logged here, and the thread ends: from now on store() refuses at once
            log.exception("the spool writer failed; messages are refused until the relay is restarted")
        finally:
            with self._handing:
                self._stopped = True
            self._leaving.set()
            self._refuse_the_rest()
            with contextlib.suppress(BaseException):
                self._close_segment()
            self._closed.put(None)
            self._checkpointer.join()

    def _store(self, batch: Sequence[_Pending]) -> None:
        results: Sequence[Exception | str]
        try:
            if self._spool.journal.due():
                self._close_segment()
            segment = self._spool.store_batch([(qid, envelope, content) for qid, envelope, content, _ in batch])
            results = [segment] * len(batch)
        except Exception as exc:  # the disk (452 on ENOSPC, else 451), or a bug (451): none of the batch counts
            results = [exc] * len(batch)
        except BaseException as exc:  # the thread ends (SystemExit and the like); the batch is refused first
            self._reply(batch, [OSError(f"the spool writer failed: {exc!r}")] * len(batch))
            raise
        self._reply(batch, results)

    def _reply(self, batch: Sequence[_Pending], results: Sequence[Exception | str]) -> None:
        try:
            self._loop.call_soon_threadsafe(_settle, batch, results)
        except RuntimeError:
            pass  # the loop is closed: nobody waits for the replies

    def _close_segment(self) -> None:
        closed = self._spool.journal.close()
        if closed is not None:
            self._backlog.acquire()  # waits while _CHECKPOINT_BACKLOG segments wait for theirs
            self._closed.put(closed)

    def _checkpoint_closed(self) -> None:
        """The checkpoint thread: each closed segment in turn, until the writer says there are no more. Those whose
        checkpoint failed are tried again every ``_CHECKPOINT_RETRY`` seconds, whether or not other segments come
        meanwhile (and once more when the writer stops): until then their undelivered messages have no queue files,
        so a scan would not find them."""
        failed: dict[Segment, set[str]] = {}  # each with the ids its failed tries moved into the queue
        retry = 0.0
        while True:
            try:
                segment = self._closed.get(timeout=max(0.0, retry - time.monotonic()) if failed else None)
            except queue.Empty:
                segment = _NOTHING
            if failed and (segment is None or time.monotonic() >= retry):
                failed = {old: moved for old, moved in failed.items() if not self._checkpoint(old, moved)}
                retry = time.monotonic() + _CHECKPOINT_RETRY
            if segment is None:
                return  # what still fails is replayed at the next start
            if segment is _NOTHING:
                continue
            self._leaving.wait(segment.closed + self._spool.journal.segment_age - time.monotonic())
            try:
                moved: set[str] = set()
                if not self._checkpoint(segment, moved):
                    if not failed:
                        retry = time.monotonic() + _CHECKPOINT_RETRY
                    failed[segment] = moved
            finally:
                self._backlog.release()

    def _checkpoint(self, segment: Segment, moved: set[str]) -> bool:
        """Checkpoint ``segment``; whether it was. A try writes from the journal, afresh, each queue file an earlier
        one did not move into the queue, so trying again proves what a second fsync of a file whose first one failed
        would not."""
        try:
            written = self._spool.checkpoint(segment, moved)
        except BaseException as exc:  # the thread goes on: the writer would wait for it for good
            log.error("cannot checkpoint the journal segment %s (tried again in %d s, and replayed at the next "
                      "start): %r", segment.path.name, _CHECKPOINT_RETRY, exc)  # fmt: skip
            return False
        if written and self._on_checkpoint is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody delivers any more
                self._loop.call_soon_threadsafe(self._on_checkpoint, written)
        return True

    def _refuse_the_rest(self) -> None:
        """Once stopped: whatever was handed over before is refused, never left waiting (later ones are refused by
        :meth:`store`)."""
        rest: list[_Pending] = []
        while True:
            try:
                item = self._pending.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                rest.append(item)
        if rest:
            self._reply(rest, [OSError("the spool writer has stopped")] * len(rest))


def _settle(batch: Sequence[_Pending], results: Sequence[Exception | str]) -> None:
    """On the loop: each session of a stored batch may answer."""
    for (qid, _, _, future), result in zip(batch, results, strict=True):
        if future.done():
            continue
        if isinstance(result, str):
            future.set_result((qid, result))
        else:
            future.set_exception(result)
