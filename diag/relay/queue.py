"""The delivery scheduler: works the spool's due recipients, records what became of them, and bounces failures.

:class:`Deliverer` is the only part of delivery that touches the spool. For each message it takes the due
recipients, asks :func:`diag.relay.plan.plan_message` where they go, hands each group to the
:class:`~diag.relay.transport.Transport` (at most ``Limits.delivery_concurrency`` at a time), and records each
recipient's new state (RD-12): delivered, failed, or pending with exponential backoff until ``Limits.max_age``,
then failed as expired (:func:`next_status`).

Failures are bounced (RFC 3464, :mod:`diag.relay.dsn`): the bounce is stored in the spool before the failure is
recorded, so a crash in between costs a duplicate bounce, never a lost one; likewise a recipient is recorded as
delivered only after the remote 250 (a crash in between costs a duplicate delivery, never a loss: RD-43). A
message whose outcome cannot be recorded (disk full, I/O error) is held for ``Limits.retry_base`` rather than
retried at every scan, which would send the receiver a duplicate each time.

While :meth:`Deliverer.run` works the queue, the transport keeps sessions that delivered open for the next
delivery on the same terms (:meth:`~diag.relay.transport.Transport.reusing`).

A reflector address (internet role) is delivered by answering (:mod:`diag.relay.reflect`): the reply is
recorded in the reflector's memory, then stored in the spool like a bounce. Whether it is answered or not, the
recipient is delivered: a message the reflector declines is never bounced (that would be the backscatter the
reflector's rules avoid).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime

from diag.net.dns import Resolver
from diag.relay import dsn, reflect
from diag.relay.plan import LOCAL, REFLECT, Outcome, Result, Route, plan_message
from diag.relay.settings import Limits, RelaySettings
from diag.relay.spool import (
    Envelope,
    QueuedMessage,
    RecipientState,
    RecipientStatus,
    Spool,
    SpoolError,
    merged,
    settled,
)
from diag.relay.text import escape
from diag.relay.transport import Transport

__all__ = ["Deliverer", "next_status"]

log = logging.getLogger("diag.relay")

# At most this much content handed over in memory by Deliverer.queued and not yet delivered; more is read back.
_HANDED_BYTES = 64 * 1024 * 1024


def next_status(
    old: RecipientStatus, outcome: Outcome, route: str, *, received_at: datetime, limits: Limits, now: datetime
) -> RecipientStatus:
    """A recipient's state after an attempt with ``outcome`` along ``route`` (the spool's route label).

    A deferral waits ``retry_base`` doubled per earlier attempt, at most ``retry_max``; once the message is
    ``max_age`` old it fails as expired instead.
    """
    attempts = old.attempts + 1
    if outcome.result is Result.DELIVERED:
        return RecipientStatus(old.recipient, RecipientState.DELIVERED, attempts, None, outcome.reply, route)
    if outcome.result is Result.FAILED:
        return RecipientStatus(old.recipient, RecipientState.FAILED, attempts, None, outcome.reply, route)
    if now - received_at >= limits.max_age:
        # The cloud's own words for a message that outlived its queue time (exchange-model §5.2: retried
        # for a day, then NDR'd); the DSN takes its status, 4.4.7, from here.
        detail = f"550 4.4.7 QUEUE.Expired; message expired [LastError={outcome.reply}]"
        return RecipientStatus(old.recipient, RecipientState.FAILED, attempts, None, detail, route)
    delay = min(limits.retry_base * 2 ** min(old.attempts, 32), limits.retry_max)
    return RecipientStatus(old.recipient, RecipientState.PENDING, attempts, now + delay, outcome.reply, route)


class Deliverer:
    """Works the spool: :meth:`run` until stopped; :meth:`deliver_once` for one message.

    ``stop_grace``: seconds :meth:`run` lets deliveries in flight finish after ``stop`` is set; those still
    running then are cancelled and stay pending in the spool, to be retried after a restart. It may be changed
    until then (0: cancel them at once).
    """

    def __init__(self, settings: RelaySettings, spool: Spool, resolver: Resolver, *, stop_grace: float = 5.0) -> None:
        self._settings = settings
        self._spool = spool
        self._transport = Transport(settings, resolver)
        self.stop_grace = stop_grace
        self._slots = asyncio.Semaphore(max(1, settings.limits.delivery_concurrency))
        self._wake = asyncio.Event()
        self._kicked = False
        self._fresh: deque[str] = deque()
        # Messages just queued, as the server had them in memory: delivery need not read them back from disk.
        self._handed: dict[str, tuple[Envelope, bytes]] = {}
        self._handed_bytes = 0
        # The journal segment of each message announced from one (Spool.store_batch): it has no queue file until
        # that segment's checkpoint, and is marked done there when delivered. Then, until the segment is gone, the
        # ids delivered so: a queue file the checkpoint wrote meanwhile is not theirs to deliver again.
        self._segments: dict[str, str] = {}
        self._done: dict[str, str] = {}
        self._active: set[str] = set()
        # Messages whose outcome could not be recorded (disk full, I/O error), with the time.monotonic() until which
        # run() leaves them alone: retrying at every scan would send a duplicate to the receiver each time.
        self._held: dict[str, float] = {}
        # The reflector's memory, read from the spool directory on first use; the lock makes "answered before?"
        # and "remember it" one step, so two deliveries of one probe at once give one reply.
        self._reflected: reflect.ReflectLog | None = None
        self._reflecting = asyncio.Lock()

    def kick(self, qid: str | None = None, segment: str | None = None) -> None:
        """Deliver ``qid`` (just queued, in journal segment ``segment`` when it names one; or just written to the
        queue by its segment's checkpoint) now, or with no id look at the whole spool now, not at the next scan.

        A queued message is handed over by id: rescanning every envelope in the spool for each new message
        cost a fifth of the relay's CPU under load (bench/relay_throughput.py).
        """
        if qid is not None and segment is not None:
            self._segments[qid] = segment
        if qid is None:
            self._kicked = True
        else:
            self._fresh.append(qid)
        self._wake.set()

    def queued(self, qid: str, envelope: Envelope, content: bytes, segment: str | None = None) -> None:
        """The server stored message ``qid`` (in journal segment ``segment``, when it names one): deliver it now,
        from memory (what :meth:`kick` does, without reading it back). Beyond ``_HANDED_BYTES`` of messages waiting
        their turn, they are read from disk (one from the journal once its segment's checkpoint wrote it).

        The spool stays the authority on what is left to do (:meth:`_load`): in the relay's delivery process the
        announcement may come after the message is in the queue, where a scan may find it first."""
        if qid not in self._active and self._handed_bytes + len(content) <= _HANDED_BYTES:
            self._unhand(qid)
            self._handed[qid] = (envelope, content)
            self._handed_bytes += len(content)
        self.kick(qid, segment)

    def checkpointed(self, qids: Sequence[str]) -> None:
        """Their journal segment's checkpoint wrote these messages to the queue (not delivered yet, or handed over
        too late): each is looked at now, from there."""
        for qid in qids:
            self.kick(qid)

    def _unhand(self, qid: str) -> tuple[Envelope, bytes] | None:
        handed = self._handed.pop(qid, None)
        if handed is not None:
            self._handed_bytes -= len(handed[1])
        return handed

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver due messages until ``stop`` is set, at most ``delivery_concurrency`` at a time."""
        loop = asyncio.get_running_loop()
        limits = self._settings.limits
        in_flight: dict[str, asyncio.Task[None]] = {}
        # Ids waiting for a place, in order; a dict, not a deque: a checkpoint may name thousands at once, and each
        # is looked up in it before it is added.
        backlog: dict[str, None] = {}
        watcher = asyncio.create_task(stop.wait())
        watcher.add_done_callback(lambda _: self._wake.set())
        next_scan = loop.time()
        async with self._transport.reusing():
            try:
                while not stop.is_set():
                    self._wake.clear()
                    if self._kicked or loop.time() >= next_scan:
                        self._kicked = False
                        self._fresh.clear()  # the scan finds them too
                        next_scan = loop.time() + limits.queue_scan
                        backlog = dict.fromkeys(qid for qid in await self._due() if qid not in in_flight)
                        # Except a message handed over in memory that is done meanwhile (a scan reached it before
                        # its announcement came): it is looked at all the same, or it would stay in memory.
                        for qid in list(self._handed):
                            if qid not in backlog and qid not in in_flight and self._admitted(qid):
                                backlog[qid] = None
                    while self._fresh:
                        qid = self._fresh.popleft()
                        if qid not in in_flight and qid not in backlog and self._admitted(qid):
                            backlog[qid] = None
                    while backlog and len(in_flight) < max(1, limits.delivery_concurrency):
                        qid = next(iter(backlog))
                        del backlog[qid]
                        task = asyncio.create_task(self._attempt(qid), name=f"deliver:{qid}")
                        in_flight[qid] = task
                        task.add_done_callback(functools.partial(self._finished, in_flight, qid))
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, next_scan - loop.time())):
                            await self._wake.wait()
            finally:
                watcher.cancel()
                await self._drain(list(in_flight.values()))

    async def deliver_once(self, qid: str) -> None:
        """One attempt for every due recipient of message ``qid``; its outcome is recorded in the spool."""
        if qid in self._active:
            return
        self._active.add(qid)
        try:
            await self._deliver(qid)
        finally:
            self._active.discard(qid)
            self._unhand(qid)  # handed while this attempt was under way: the spool has what is left

    # --- the queue runner ---------------------------------------------------------------------------------

    def _admitted(self, qid: str) -> bool:
        """Whether announced message ``qid`` may be attempted now: not while it is held (its last outcome could not
        be recorded). A held message waits for its pause and is then read from the spool; what was handed over
        is let go."""
        if self._held.get(qid, 0.0) > time.monotonic():
            self._unhand(qid)
            return False
        return True

    def _finished(self, in_flight: dict[str, asyncio.Task[None]], qid: str, _task: asyncio.Task[None]) -> None:
        in_flight.pop(qid, None)
        if qid in self._handed:
            # Handed over after its attempt let it go, while the run loop still saw it in flight and so skipped
            # it: looked at again, or it would stay in memory (the spool then says whether anything is left).
            self._fresh.append(qid)
        self._wake.set()

    async def _due(self) -> list[str]:
        # Segments gone are told before the listing: a queue file their checkpoint wrote for a message delivered
        # from memory is removed before the segment is, so the listing cannot find it once it is forgotten here.
        known = set(self._segments.values()) | set(self._done.values())
        gone = {segment for segment in known if not self._spool.journal.has(segment)}
        try:
            messages = await asyncio.to_thread(self._spool.messages)
        except OSError as exc:
            log.error("cannot read the spool %s: %s", self._spool.root, exc)
            return []
        if gone:
            self._segments = {qid: segment for qid, segment in self._segments.items() if segment not in gone}
            self._done = {qid: segment for qid, segment in self._done.items() if segment not in gone}
        now, clock = datetime.now(UTC), time.monotonic()
        self._held = {qid: until for qid, until in self._held.items() if until > clock}
        return [message.qid for message in messages if message.due(now) and message.qid not in self._held]

    async def _attempt(self, qid: str) -> None:
        try:
            await self.deliver_once(qid)
        except Exception:
            # A bug or a spool that cannot be written: the message stays pending and is tried at the next scan.
            log.exception("delivery qid=%s failed unexpectedly; it stays queued", qid)

    async def _drain(self, tasks: list[asyncio.Task[None]]) -> None:
        if not tasks:
            return
        _, unfinished = await asyncio.wait(tasks, timeout=self.stop_grace)
        for task in unfinished:
            task.cancel()
        if unfinished:
            log.info("stopping: %d deliveries cancelled, they stay queued", len(unfinished))
            await asyncio.wait(unfinished)

    # --- one message --------------------------------------------------------------------------------------

    async def _load(self, qid: str) -> tuple[QueuedMessage, bytes] | None:
        """The message and its content, as handed over by :meth:`queued` or from the spool; None when it is gone
        (finished meanwhile), not in the queue yet (its segment's checkpoint writes it, and a scan then finds it),
        or damaged (:meth:`Spool.recover` quarantines it at the next start)."""
        handed = self._unhand(qid)
        if qid in self._done:
            return None  # delivered from memory: a queue file its segment's checkpoint wrote meanwhile goes too
        segment = self._segments.get(qid)
        if handed is not None and segment is not None and self._spool.journal.holds(segment):  # two stat calls
            # Only in the journal: no queue file yet; the recipients' states an earlier attempt recorded, if any.
            envelope, content = handed
            return QueuedMessage(qid, envelope, len(content), self._spool.statuses(qid, envelope)), content
        fresh = self._spool.fresh(qid) if handed is not None else False  # two stat calls
        if handed is not None and fresh is None:
            # Not in the queue: a scan found it before its announcement came and it is done, or its segment's
            # checkpoint has begun and not written it yet (a scan finds it once written: the checkpoint says so).
            return None
        try:
            if handed is not None and fresh:
                # As stored: no recipient's state recorded yet, every one pending and due.
                envelope, content = handed
                statuses = tuple(RecipientStatus(recipient) for recipient in envelope.rcpt_tos)
                return QueuedMessage(qid, envelope, len(content), statuses), content
            message = await asyncio.to_thread(self._spool.get, qid)  # attempted before: its recorded states
            content = handed[1] if handed is not None else await asyncio.to_thread(self._spool.content, qid)
        except (FileNotFoundError, SpoolError):
            return None
        return message, content

    async def _deliver(self, qid: str) -> None:
        loaded = await self._load(qid)
        if loaded is None:
            return
        message, content = loaded
        due = {status.recipient: status for status in message.due(datetime.now(UTC))}
        if not due:
            return
        envelope = message.envelope
        plan = plan_message(self._settings, envelope.mail_from, content, due)
        lock = asyncio.Lock()  # one state file per message: its updates must not interleave
        current = list(message.statuses)  # every recipient's state as recorded, kept here to spare reading it back
        failures: list[RecipientStatus] = []
        started = time.monotonic()

        async def record(route: Route, outcomes: Sequence[Outcome]) -> None:
            latency = int((time.monotonic() - started) * 1000)
            now = datetime.now(UTC)
            updates: list[RecipientStatus] = []
            for outcome in outcomes:
                status = next_status(
                    due[outcome.recipient], outcome, route.label,
                    received_at=envelope.received_at, limits=self._settings.limits, now=now,
                )  # fmt: skip
                _log_attempt(qid, envelope.mail_from, route.label, outcome, status, latency)
                (failures if status.state is RecipientState.FAILED else updates).append(status)
            if updates:
                async with lock:
                    if await self._record(qid, updates, current):
                        current[:] = merged(current, updates)

        async def deliver_group(route: Route, recipients: tuple[str, ...]) -> None:
            async with self._slots:
                if route is LOCAL:
                    outcomes: Sequence[Outcome] = await self._transport.store(envelope.mail_from, recipients, content)
                elif route is REFLECT:
                    outcomes = [await self._reflect(qid, envelope, content, recipient) for recipient in recipients]
                else:
                    outcomes = await self._transport.send(route, envelope.mail_from, recipients, content)
            await record(route, outcomes)

        for route, outcome in plan.settled:
            await record(route, [outcome])
        results = await asyncio.gather(
            *(deliver_group(route, recipients) for route, recipients in plan.groups.items()), return_exceptions=True
        )
        if failures:
            await self._fail(qid, envelope, content, failures, current)
        for result in results:
            if isinstance(result, BaseException):
                raise result  # the group's recipients stay pending; _attempt logs it

    async def _reflect(self, qid: str, envelope: Envelope, content: bytes, recipient: str) -> Outcome:
        """Answer the message for the reflector address ``recipient``, or decline to; the recipient's outcome."""
        settings = self._settings
        now = datetime.now(UTC)
        made = reflect.reply(
            envelope, content, reflector=recipient.lower(), reflectors=settings.reflect, hostname=settings.hostname,
            now=now,
        )  # fmt: skip
        if isinstance(made, reflect.Reply):
            async with self._reflecting:
                try:
                    if self._reflected is None:
                        memory = reflect.ReflectLog(self._spool.root / "reflect")
                        await asyncio.to_thread(memory.open, now)
                        self._reflected = memory
                    refusal = self._reflected.refusal(made, now=now, per_sender=settings.reflect_limit)
                    if refusal is None:
                        await asyncio.to_thread(self._reflected.record, made, now)
                except OSError as exc:
                    # Not remembered, so not sent: tried again later like any delivery to a full disk.
                    return Outcome(recipient, Result.DEFERRED, f"451 4.3.0 Cannot record the reply: {exc}", "reflect")
            made = refusal or made
        if isinstance(made, reflect.Skip):
            return Outcome(recipient, Result.DELIVERED, f"250 2.0.0 Not answered: {made}", "reflect")
        try:
            reply_qid = await asyncio.to_thread(self._spool.store, made.envelope, made.content)
        except OSError as exc:
            # Already remembered as answered and never sent twice, so this one reply is lost (diag.relay.reflect
            # says why that is the right way round).
            log.error("reflect qid=%s: cannot store the reply, it is not sent: %s", qid, exc)
            return Outcome(recipient, Result.DELIVERED, f"250 2.0.0 Not answered: cannot store the reply: {exc}",
                           "reflect")  # fmt: skip
        log.info("reflect qid=%s for=%s to=<%s>", reply_qid, qid, escape(envelope.mail_from))
        self.queued(reply_qid, made.envelope, made.content)
        return Outcome(recipient, Result.DELIVERED, f"250 2.0.0 Answered: reply queued as {reply_qid}", "reflect")

    async def _record(self, qid: str, statuses: list[RecipientStatus], current: Sequence[RecipientStatus]) -> bool:
        """Record ``statuses`` (``current``: every recipient's state before them); False when it failed."""
        try:
            segment = self._segments.get(qid)
            if settled(merged(current, statuses)):
                # Done with: marked done in its journal segment (a line appended), its two files unlinked, no fsync.
                # That is cheap enough for the event loop, where Postfix's qmgr removes finished queue files too; a
                # worker-thread hop per message was a quarter of the delivery process's CPU under load
                # (bench/relay_throughput.py).
                self._spool.remove(qid, segment=segment)
                if segment is not None:
                    del self._segments[qid]
                    self._done[qid] = segment
            else:
                await asyncio.to_thread(self._spool.update, qid, statuses, current=current, segment=segment)
        except OSError as exc:
            # The recipients stay as they were (pending and due): retried after a pause, a duplicate at worst.
            log.error("delivery qid=%s: cannot record the outcome in the spool, holding it: %s", qid, exc)
            self._hold(qid)
            return False
        return True

    def _hold(self, qid: str) -> None:
        self._held[qid] = time.monotonic() + self._settings.limits.retry_base.total_seconds()

    async def _fail(
        self,
        qid: str,
        envelope: Envelope,
        content: bytes,
        failures: list[RecipientStatus],
        current: Sequence[RecipientStatus],
    ) -> None:
        """Store the bounce, then record the failures: a crash in between repeats the bounce, never loses it."""
        made = dsn.bounce(envelope, content, failures, reporting_mta=self._settings.hostname, now=datetime.now(UTC))
        if made is not None:
            try:
                bounce_qid = await asyncio.to_thread(self._spool.store, *made)
            except OSError as exc:
                log.error("delivery qid=%s: cannot store the bounce, failures stay pending: %s", qid, exc)
                self._hold(qid)
                return
            log.info(
                "bounce qid=%s for=%s to=<%s> recipients=%d", bounce_qid, qid, escape(envelope.mail_from), len(failures)
            )
            self.queued(bounce_qid, *made)
        await self._record(qid, failures, current)


def _log_attempt(qid: str, sender: str, route: str, outcome: Outcome, status: RecipientStatus, latency_ms: int) -> None:
    result = {
        RecipientState.DELIVERED: Result.DELIVERED,
        RecipientState.FAILED: Result.FAILED,
        RecipientState.PENDING: Result.DEFERRED,
    }[status.state]
    log.info(
        'delivery qid=%s from=<%s> to=<%s> route=%s host=%s result=%s reply="%s" latency_ms=%d',
        qid,
        escape(sender),
        escape(outcome.recipient),
        escape(route),
        escape(outcome.host),
        result,
        escape(status.detail),
        latency_ms,
    )
