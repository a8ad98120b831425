"""A running relay: the spool recovered, the SMTP server listening, the deliverer working the queue.

    async with Relay(settings):       # in this event loop (the lab, the tests)
        await stopped.wait()

    serve(settings)                   # diag relay: intake here, delivery in a child process, until SIGTERM

Closing stops the listener first (no new 250s), then lets in-flight deliveries finish within a short grace or
leaves them pending in the spool for the next start: nothing acknowledged is lost either way.

:func:`serve` splits the work as Postfix does (smtpd apart from its queue manager and smtp clients): the SMTP
sessions and the 250 after each durable store run in this process, delivery in a child forked before either
starts its event loop, so the two use two cores and a 250 never waits behind delivery.

- One relay per spool: :func:`serve` holds an exclusive lock on ``relay.lock`` in the spool directory (the child
  inherits it), waiting a few seconds for a relay that is leaving.
- The child starts delivering when the parent says ``start`` on the pipe, once it listens: a relay that cannot
  start (an address in use, a bad certificate) leaves the spool alone.
- It learns of each stored message from the pipe: its queue id and, for a message of at most
  ``_HANDED_CONTENT`` octets while the child keeps up, its envelope, content and journal segment, delivered from
  memory as the in-process deliverer does; it marks each one it delivers done in that segment
  (:meth:`Spool.remove`). A larger one, one announced while the pipe is backed up or beyond the deliverer's
  memory budget, and every later attempt, read the message back from the spool (one from the journal once its
  segment's checkpoint wrote its queue file: the parent then announces its id again). What it is handed was
  stored before its 250 like any other message, and the spool stays the authority on what is left to do: the
  child scans it at start and at every ``queue_scan`` as the in-process deliverer does, so a message whose
  announcement was lost (a crash between store and pipe) is delivered all the same, and one the scan reached
  before its announcement is not delivered twice (``Deliverer.queued``).
- It stops when the pipe ends. After SIGTERM or SIGINT the parent says ``stop`` before closing it, and in-flight
  deliveries get ``stop_grace`` to finish; a pipe that ends without it means the parent died (SIGKILL, a crash),
  and the child cancels them at once, so that a relay restarted at once (systemd's Restart=) soon has the spool
  to itself. Either way what was not delivered stays queued.
- If the child ends while the parent still serves, the parent stops too, with an error: a relay that accepts
  mail it cannot deliver would only fill its spool. A child that fails while stopping is an error too.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import json
import logging
import os
import re
import signal
import time
from collections.abc import Coroutine, Iterator
from types import TracebackType
from typing import Any, BinaryIO, Final, cast

from diag.errors import DiagError
from diag.net.dns import Resolver
from diag.relay.queue import Deliverer
from diag.relay.server import RelayServer
from diag.relay.settings import RelaySettings
from diag.relay.spool import LOCK_FILE, Envelope, Spool

__all__ = ["Relay", "serve"]

log = logging.getLogger("diag.relay")


class Relay:
    """One relay instance in the running event loop."""

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.spool = Spool(settings.spool)
        self._resolver = Resolver(settings.nameservers, timeout=settings.limits.operation_timeout)
        self.deliverer = Deliverer(settings, self.spool, self._resolver)
        self.server = RelayServer(
            settings, self.spool, on_queued=self.deliverer.queued, on_checkpoint=self.deliverer.checkpointed
        )
        self._stop = asyncio.Event()
        self._delivering: asyncio.Task[None] | None = None

    async def start(self) -> None:
        quarantined = await asyncio.to_thread(self.spool.recover)
        for qid in quarantined:
            log.error("quarantined damaged spool file qid=%s dir=%s", qid, self.spool.quarantine)
        await self.server.start()
        self._delivering = asyncio.create_task(self.deliverer.run(self._stop), name=f"deliver:{self.settings.hostname}")
        log.info(
            "relay %s role=%s listening on %s spool=%s",
            self.settings.hostname, self.settings.role.value,
            ", ".join(f"{host}:{port}" for host, port in self.settings.listen), self.settings.spool,
        )  # fmt: skip

    async def close(self) -> None:
        try:
            await self.server.close()
            self._stop.set()
            if self._delivering is not None:
                await self._delivering
                self._delivering = None
        finally:
            await self._resolver.aclose()

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


# What the parent writes to the child's pipe: a queue id (Spool.new_qid: lowercase hex) and the journal segment that
# holds the message (when one does) on a line; or the id, the envelope's size, the content's size and the segment on
# a line, followed by the envelope (the spool's JSON) and the content.
_QID: Final = re.compile(rb"([0-9a-f]{8,40})(?: ([0-9a-f]{16}))?")
_HANDED: Final = re.compile(rb"([0-9a-f]{8,40}) ([0-9]{1,10}) ([0-9]{1,10})(?: ([0-9a-f]{16}))?")
# The largest message handed over in the pipe, and the most the parent lets wait in the pipe's buffer: beyond
# either, the child is told the id only and reads the message from the spool (the parent's memory stays bounded).
_HANDED_CONTENT: Final = 256 * 1024
_PIPE_BACKLOG: Final = 4 * 1024 * 1024
# What the child accepts at most on the pipe: a longer line, a larger envelope or content, or a line it does not
# know means the stream is out of step (a bug): delivery stops rather than reading content as announcements.
_LINE_MAX: Final = 128
_ENVELOPE_MAX: Final = 1024 * 1024
# ... between these lines: the first once the relay listens, the last once it stopped taking mail on a signal.
_START: Final = b"start"
_STOP: Final = b"stop"
_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGTERM})
# How long a relay waits for another one (or its delivery process) to let the spool's lock go.
_LOCK_WAIT: Final = 5.0
# Seconds the child lets deliveries in flight finish once the pipe ended (Deliverer's stop_grace), and how much
# longer the parent waits for it before killing it.
_STOP_GRACE: Final = 5.0
_CHILD_WAIT: Final = 5.0


def serve(settings: RelaySettings) -> None:
    """Run the relay in two processes (see the module docstring) until SIGINT or SIGTERM. Raises OSError when
    it cannot listen, :class:`DiagError` when the spool is another relay's or the delivery process failed."""
    spool = Spool(settings.spool)
    with _exclusive(spool):
        for qid in spool.recover():
            log.error("quarantined damaged spool file qid=%s dir=%s", qid, spool.quarantine)
        read_end, write_end = os.pipe()
        # Until each process has its own handling: a signal in between would end one of them halfway (the parent
        # waiting for a child that never sees the pipe end, or the child running the caller's code on).
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            child = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            os.close(read_end)
            os.close(write_end)
            raise
        if child == 0:  # pragma: no cover - the child's coverage is not collected; tests/relay/test_durability.py
            os.close(write_end)
            _deliver_until_the_pipe_ends(settings, read_end)
        os.close(read_end)
        pipe = os.fdopen(write_end, "wb", buffering=0)
        try:
            _run(_intake(settings, spool, pipe, child))
        finally:
            # A second Ctrl-C or SIGTERM from here on is ignored: the wait for the child is bounded and ends both.
            for signum in _SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)  # if the loop never did
            pipe.close()  # if the loop never took over: the child must see the pipe end
            status = _reap(child)
    if status:
        how = f"exit status {status}" if status > 0 else f"signal {-status}"
        raise DiagError(f"the delivery process (pid {child}) failed while stopping ({how}); queued mail stays in "
                        f"{settings.spool}")  # fmt: skip


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop's event loop where it is installed (a dependency on Linux and macOS), else on
    asyncio's. Each of the relay's processes spends most of its CPU in its loop's turns: on uvloop the relay took
    8-29 % less CPU per message (bench/README.md, eleventh pass). Both processes start their loops after the fork."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


@contextlib.contextmanager
def _exclusive(spool: Spool) -> Iterator[None]:
    """Hold the spool's lock: one relay per spool. Two would deliver each message twice, and one's recovery
    would remove the other's writes in progress. A relay restarted just after a crash waits a little for the
    old delivery process to leave (it cancels its deliveries at once when its relay is gone)."""
    with open(spool.root / LOCK_FILE, "a+b") as lock:
        deadline = time.monotonic() + _LOCK_WAIT
        while True:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DiagError(f"the spool {spool.root} is in use by another diag relay; give each relay its "
                                    "own --spool") from None  # fmt: skip
                time.sleep(0.05)
        yield  # the child inherits the open lock: it is held until both processes have let it go


def _deliver_until_the_pipe_ends(settings: RelaySettings, read_end: int) -> None:
    """The child: deliver until the parent closes the pipe, then leave (never back into the caller's code)."""
    # The parent decides when delivery stops (a Ctrl-C or a service stop reaches both processes): by closing the
    # pipe, once it no longer accepts mail. Signals that came since the fork are dropped with the unblocking.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    code = 0
    try:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            # Nothing is delivered before the relay listens: a relay that cannot start leaves the spool alone.
            if _first_line(pipe) == _START:
                _run(_deliver(settings, pipe))
    except BaseException:
        log.exception("the delivery process failed; queued mail stays in %s", settings.spool)
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _handed(pipe: BinaryIO, loop: asyncio.AbstractEventLoop) -> BinaryIO:
    """A copy of ``pipe`` for the loop's pipe transport to own (``pipe`` stays its caller's to close): a duplicate
    descriptor in a file object that closes it only on asyncio's loop. uvloop's transport closes the descriptor
    itself and then through the file object as well (uvloop issue #763), which would close whatever the number
    names by then: a file another thread just opened."""
    on_uvloop = _loop_name(loop) == "uvloop"
    return cast(BinaryIO, os.fdopen(os.dup(pipe.fileno()), pipe.mode, buffering=0, closefd=not on_uvloop))


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: whose event loop ``loop`` is (by its classes, a subclass's included)."""
    uvloop = any(kind.__module__.partition(".")[0] == "uvloop" for kind in type(loop).__mro__)
    return "uvloop" if uvloop else "asyncio"


def _first_line(pipe: BinaryIO) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        byte = pipe.read(1)
        if not byte:
            return b""
        line += byte
    return line[:-1]


async def _deliver(settings: RelaySettings, pipe: BinaryIO) -> None:
    spool = Spool(settings.spool)
    resolver = Resolver(settings.nameservers, timeout=settings.limits.operation_timeout)
    deliverer = Deliverer(settings, spool, resolver, stop_grace=_STOP_GRACE)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(lambda: _Announcements(deliverer, stop), _handed(pipe, loop))
    gc.freeze()
    try:
        await deliverer.run(stop)
    finally:
        transport.close()
        await resolver.aclose()


class _Announcements(asyncio.Protocol):
    """The child's end of the pipe: each message announced is delivered now, from memory when it came with the
    announcement; the pipe's end stops delivery, at once unless the parent said ``stop`` first."""

    def __init__(self, deliverer: Deliverer, stop: asyncio.Event) -> None:
        self._deliverer = deliverer
        self._stop = stop
        self._buffer = bytearray()
        # A handed message's id, sizes and segment, its bytes to come.
        self._awaited: tuple[str, int, int, str | None] | None = None
        self._told = False
        self._out = False  # out of step: nothing more is read
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._out:
            return
        self._buffer += data
        while True:
            if self._awaited is not None:
                qid, header_size, size, segment = self._awaited
                if len(self._buffer) < header_size + size:
                    return
                header, content = bytes(self._buffer[:header_size]), bytes(self._buffer[header_size:header_size + size])
                del self._buffer[: header_size + size]
                self._awaited = None
                self._handed(qid, header, content, segment)
                continue
            end = self._buffer.find(b"\n", 0, _LINE_MAX + 1)
            if end < 0:
                if len(self._buffer) > _LINE_MAX:
                    self._out_of_step(f"a line longer than {_LINE_MAX} octets")
                return
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if handed := _HANDED.fullmatch(line):
                header_size, size = int(handed[2]), int(handed[3])
                if header_size > _ENVELOPE_MAX or size > _HANDED_CONTENT:
                    self._out_of_step(f"a handed message of {header_size} + {size} octets")
                    return
                segment = handed[4].decode("ascii") if handed[4] else None
                self._awaited = (handed[1].decode("ascii"), header_size, size, segment)
            elif alone := _QID.fullmatch(line):
                self._deliverer.kick(alone[1].decode("ascii"), alone[2].decode("ascii") if alone[2] else None)
            elif line == _STOP:
                self._told = True
            else:
                self._out_of_step(f"the line {line[:40]!r}")
                return

    def _handed(self, qid: str, header: bytes, content: bytes, segment: str | None) -> None:
        try:
            envelope = Envelope.from_json(json.loads(header))
        except Exception:  # whatever the JSON held (RecursionError too), the spool has the message
            log.error("qid=%s: the envelope handed over is damaged; reading the message from the spool", qid)
            self._deliverer.kick(qid, segment)
            return
        self._deliverer.queued(qid, envelope, content, segment)

    def _out_of_step(self, what: str) -> None:
        """The stream cannot be trusted to say where the next announcement starts: delivery stops at once (the
        parent stops too, as when the child dies), and what is queued stays in the spool for the next start."""
        log.error("the pipe from the intake is out of step (%s); delivery stops", what)
        self._out = True
        self._buffer.clear()
        self._awaited = None
        if self._transport is not None:
            self._transport.close()  # connection_lost ends delivery (_end)
        else:
            self._end()

    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def _end(self) -> None:
        if not self._told:
            self._deliverer.stop_grace = 0.0
        self._stop.set()


class _ChildWatch(asyncio.Protocol):
    """The parent's end of the pipe: it breaks when the child is gone."""

    def __init__(self, gone: asyncio.Event) -> None:
        self._gone = gone

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone.set()


async def _intake(settings: RelaySettings, spool: Spool, pipe: BinaryIO, child: int) -> None:
    loop = asyncio.get_running_loop()
    stop, gone = asyncio.Event(), asyncio.Event()
    try:
        for signum in _SIGNALS:
            loop.add_signal_handler(signum, stop.set)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)  # one that came since the fork is handled now
    announce, _ = await loop.connect_write_pipe(lambda: _ChildWatch(gone), _handed(pipe, loop))
    # The transport's copy is now the only one: the child sees the pipe end at the last word, not once the loop has
    # shut down (which waits for the executor's threads, a stalled disk's included).
    pipe.close()

    def queued(qid: str, envelope: Envelope, content: bytes, segment: str | None) -> None:
        _announce(announce, qid, envelope, content, segment)

    def checkpointed(written: list[str]) -> None:  # now in the queue: the child reads them from there
        _say(announce, b"".join(b"%s\n" % qid.encode("ascii") for qid in written))

    try:
        async with RelayServer(settings, spool, on_queued=queued, on_checkpoint=checkpointed):
            _say(announce, _START + b"\n")
            # What start-up made (modules, settings, tables) lives as long as the relay: out of the collector's
            # way, so its full collections walk only what sessions and deliveries create.
            gc.freeze()
            log.info(
                "relay %s role=%s listening on %s spool=%s delivery=pid %d loop=%s",
                settings.hostname, settings.role.value,
                ", ".join(f"{host}:{port}" for host, port in settings.listen), settings.spool, child,
                _loop_name(loop),
            )  # fmt: skip
            waits = [asyncio.create_task(event.wait()) for event in (stop, gone)]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
    finally:
        await _last_word(announce, gone)
    if gone.is_set() and not stop.is_set():
        raise DiagError(f"the delivery process (pid {child}) ended; the relay stopped, queued mail stays in "
                        f"{settings.spool}")  # fmt: skip


async def _last_word(pipe: asyncio.WriteTransport, gone: asyncio.Event) -> None:
    """Say ``stop`` and close the pipe: the child finishes what it has in hand and leaves (without the word it
    would take the pipe's end for a crash). close() only queues, so this waits, at most _STOP_GRACE, until what the
    pipe's buffer holds (handed messages, then the word) is written: ``gone`` is set when the transport ends."""
    if pipe.is_closing():  # the child is gone (uvloop's transport refuses a write then, asyncio's drops it)
        return
    pipe.write(_STOP + b"\n")
    pipe.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_STOP_GRACE):
            await gone.wait()


def _announce(pipe: asyncio.WriteTransport, qid: str, envelope: Envelope, content: bytes, segment: str | None) -> None:
    """Tell the child of stored message ``qid``: with its envelope, content and journal segment, or its id alone for
    a large message or while the pipe is backed up (the child then reads it from the spool, where one from the
    journal is once its segment's checkpoint wrote it)."""
    held_in = b" " + segment.encode("ascii") if segment is not None else b""
    if len(content) > _HANDED_CONTENT or pipe.get_write_buffer_size() > _PIPE_BACKLOG:
        _say(pipe, b"%s%s\n" % (qid.encode("ascii"), held_in))
        return
    header = envelope.encoded()
    _say(pipe, b"%s %d %d%s\n%s%s" % (qid.encode("ascii"), len(header), len(content), held_in, header, content))


def _say(pipe: asyncio.WriteTransport, data: bytes) -> None:
    """Write ``data`` to the child, unless its pipe is closing: the child is gone (uvloop's transport refuses a
    write then, asyncio's drops it), and what was stored waits in the spool for the next start."""
    if not pipe.is_closing():
        pipe.write(data)


def _reap(child: int) -> int:
    """Wait for the child to leave after the pipe ended; kill it when it takes longer than its grace allows.
    Its exit status (``os.waitstatus_to_exitcode``: negative for a signal), 0 when it was not ours to wait for."""
    deadline = time.monotonic() + _STOP_GRACE + _CHILD_WAIT
    try:
        while time.monotonic() < deadline:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.02)
        log.error("the delivery process (pid %d) did not stop; killed, its deliveries stay queued", child)
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        return 0  # stopped as its relay asked, if late
    except ChildProcessError:
        return 0
