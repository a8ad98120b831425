"""The intake's writer: the messages waiting made durable together by one thread, which wakes the loop once per batch.

A thread per store, each with its own fsync, cost about a millisecond of CPU per message and queued the 250s behind
one another on a 2-core machine (bench/README.md, issue 13). Here the sessions hand their messages to one thread.
While it stores a batch (:meth:`Spool.store_batch`: queue files without an fsync of their own, one journal append,
one fdatasync), the next messages gather, and go together in the next batch; then it wakes the loop once to answer
the batch's sessions. No file work runs on the loop, so a disk that stalls (a full journal, writeback throttling)
delays the 250s but never the other sessions (RR-56). Closed journal segments are checkpointed on a second thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Sequence
from typing import Final

from diag.relay.journal import Segment
from diag.relay.spool import Envelope, Spool

__all__ = ["BatchWriter"]

log = logging.getLogger("diag.relay")

# The most messages in one append: two iovecs each stay within writev's IOV_MAX (1024 on Linux).
_BATCH_MAX: Final = 256
# The most closed segments waiting for their checkpoint: beyond it the writer waits (and the 250s with it), so a
# disk slower than the intake cannot pile segments up without bound.
_CHECKPOINT_BACKLOG: Final = 4

_Pending = tuple[str, Envelope, bytes, "asyncio.Future[str]"]


class BatchWriter:
    """Stores messages for the server: :meth:`store` on the loop; :meth:`close` stores what waits and checkpoints
    the open journal segment, so a relay stopped cleanly leaves its messages in queue files alone."""

    def __init__(self, spool: Spool, loop: asyncio.AbstractEventLoop) -> None:
        self._spool = spool
        self._loop = loop
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

    def store(self, qid: str, envelope: Envelope, content: bytes) -> asyncio.Future[str]:
        """Store a message; the future is its queue id once it is durable and queued, or the error that refused it
        (OSError from the disk)."""
        future: asyncio.Future[str] = self._loop.create_future()
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
            self._refuse_the_rest()
            with contextlib.suppress(BaseException):
                self._close_segment()
            self._closed.put(None)
            self._checkpointer.join()

    def _store(self, batch: Sequence[_Pending]) -> None:
        results: Sequence[Exception | None]
        try:
            if self._spool.journal.due():
                self._close_segment()
            results = self._spool.store_batch([(qid, envelope, content) for qid, envelope, content, _ in batch])
        except Exception as exc:
            # A bug: the batch is refused (451). One it had moved into the queue is delivered all the same (a
            # duplicate when the client sends it again), none is lost.
            results = [exc] * len(batch)
        except BaseException as exc:  # the thread ends (SystemExit and the like); the batch is refused first
            self._reply(batch, [OSError(f"the spool writer failed: {exc!r}")] * len(batch))
            raise
        self._reply(batch, results)

    def _reply(self, batch: Sequence[_Pending], results: Sequence[Exception | None]) -> None:
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
        """The checkpoint thread: each closed segment in turn, until the writer says there are no more."""
        while (segment := self._closed.get()) is not None:
            try:
                self._spool.checkpoint(segment)
            except BaseException as exc:  # the thread goes on: the writer would wait for it for good
                # The segment stays, replayed at the next start; its files' fsync is not tried again here (after a
                # failed fsync Linux may have dropped the dirty pages, so a second one proves nothing).
                log.error("cannot checkpoint the journal segment %s (it is replayed at the next start): %r",
                          segment.path.name, exc)  # fmt: skip
            finally:
                self._backlog.release()

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


def _settle(batch: Sequence[_Pending], results: Sequence[Exception | None]) -> None:
    """On the loop: each session of a stored batch may answer."""
    for (qid, _, _, future), error in zip(batch, results, strict=True):
        if future.done():
            continue
        if error is None:
            future.set_result(qid)
        else:
            future.set_exception(error)
