"""Tests of the delivery scheduler: the run loop, kicks, holding, bounces, concurrency, retry schedule.

A real spool in a temporary directory; where a disk must fail or be watched, a :class:`Spool` subclass stands
in for the disk (as in test_server.py). Recipients are local mailboxes, messages the planner refuses (no
connection needed), or a literal-IP smart host on loopback: no DNS is asked in these tests. End-to-end delivery
behaviour is in test_delivery.py.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import mailbox
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from diag.config import AcceptedDomain, Organization, OutboundConnector, RelayRole
from diag.net.dns import Nameserver, Resolver
from diag.relay.plan import Outcome, Result
from diag.relay.queue import Deliverer, next_status
from diag.relay.settings import Limits, RelaySettings
from diag.relay.spool import Envelope, QueuedMessage, RecipientState, RecipientStatus, Spool

T = TypeVar("T")

DEADLINE = 30.0
CONTENT = b"From: Bob <bob@contoso.com>\r\nSubject: x\r\n\r\nHello.\r\n"
REFUSED = b"Subject: x\r\n\r\nNUL \x00\r\n"  # RD-02: failed without a connection
HOUR = timedelta(hours=1)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, DEADLINE))


class WatchedSpool(Spool):
    """A spool that counts full scans, can refuse to record states or store bounces (a full disk), can fail
    unexpectedly when recording, and can hold ``get`` until released."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.scans = 0  # begun
        self.scans_done = 0  # read
        self.gets = 0
        self.contents = 0
        self.updates_to_refuse = 0
        self.refuse_bounces = False
        self.bounces_refused = 0
        self.broken = False
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def messages(self) -> list[QueuedMessage]:
        self.scans += 1
        found = super().messages()
        self.scans_done += 1
        return found

    def get(self, qid: str) -> QueuedMessage:
        self.gets += 1
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(DEADLINE)
        return super().get(qid)

    def content(self, qid: str) -> bytes:
        self.contents += 1
        return super().content(qid)

    def update(
        self,
        qid: str,
        statuses: Sequence[RecipientStatus],
        *,
        current: Sequence[RecipientStatus] | None = None,
        segment: str | None = None,
    ) -> None:
        if self.broken:
            raise RuntimeError("a bug")
        if self.updates_to_refuse:
            self.updates_to_refuse -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        super().update(qid, statuses, current=current, segment=segment)

    def remove(self, qid: str, *, segment: str | None = None) -> None:
        # Removing a finished message records its outcome too (the deliverer calls it instead of update)
        if self.broken:
            raise RuntimeError("a bug")
        if self.updates_to_refuse:
            self.updates_to_refuse -= 1
            raise OSError(errno.EIO, "Input/output error")
        super().remove(qid, segment=segment)

    def store(self, envelope: Envelope, content: bytes, *, qid: str | None = None) -> str:
        if self.refuse_bounces and envelope.mail_from == "":
            self.bounces_refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().store(envelope, content, qid=qid)


class Relay:
    """A deliverer on a watched spool, with local mailboxes bob@ and carol@contoso.com."""

    def __init__(
        self,
        tmp: Path,
        *,
        limits: Limits,
        connectors: tuple[OutboundConnector, ...] = (),
        port: int = 25,
        kind: type[Deliverer] = Deliverer,
    ) -> None:
        self.tmp = tmp
        self.spool = WatchedSpool(tmp / "spool")
        org = Organization(accepted_domains=(AcceptedDomain("contoso.com"),), outbound_connectors=connectors)
        settings = RelaySettings(
            organization=org, role=RelayRole.CLOUD, hostname="relay.test", listen=(), spool=self.spool.root,
            maildir=tmp / "mailboxes", mailboxes=("bob@contoso.com", "carol@contoso.com"), smtp_port=port,
            allow_private=True, limits=limits,
        )  # fmt: skip
        # Never asked in these tests (no route here needs DNS): a port nothing listens on.
        self.deliverer = kind(settings, self.spool, Resolver([Nameserver("127.0.0.1", 9)], timeout=1.0))

    def queue(self, *recipients: str, sender: str = "alice@contoso.com", content: bytes = CONTENT) -> str:
        return self.spool.store(Envelope(sender, recipients), content)

    def mailbox(self, address: str) -> list[bytes]:
        path = self.tmp / "mailboxes" / address
        if not path.exists():
            return []
        box = mailbox.Maildir(path, factory=None, create=False)
        return [box.get_bytes(key) for key in box.keys()]

    def statuses(self, qid: str) -> dict[str, RecipientStatus] | None:
        try:
            return {status.recipient: status for status in self.spool.get(qid).statuses}
        except FileNotFoundError:
            return None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        stop = asyncio.Event()
        runner = asyncio.create_task(self.deliverer.run(stop))
        try:
            yield
        finally:
            stop.set()
            await asyncio.wait_for(runner, 10)


async def eventually(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not check():  # noqa: ASYNC110 - the spool has no change notification to wait on
            await asyncio.sleep(0.01)


# --- the retry schedule -----------------------------------------------------------------------------------------

LIMITS = Limits(retry_base=timedelta(minutes=5), retry_max=timedelta(hours=1), max_age=timedelta(days=5))
RECEIVED = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("attempts", "delay"),
    [(0, timedelta(minutes=5)), (1, timedelta(minutes=10)), (3, timedelta(minutes=40)), (4, HOUR), (400, HOUR)],
)
def test_a_deferral_waits_the_base_delay_doubled_per_attempt_up_to_the_cap(attempts: int, delay: timedelta) -> None:
    now = RECEIVED + timedelta(hours=2)
    old = RecipientStatus("user@b.example", attempts=attempts)
    outcome = Outcome("user@b.example", Result.DEFERRED, "451 4.3.0 later", "mx[192.0.3.1]")
    assert next_status(old, outcome, "mx", received_at=RECEIVED, limits=LIMITS, now=now) == RecipientStatus(
        "user@b.example", RecipientState.PENDING, attempts + 1, now + delay, "451 4.3.0 later", "mx"
    )


def test_a_deferral_past_the_maximum_age_fails_as_expired_with_the_last_error() -> None:
    now = RECEIVED + timedelta(days=5)
    old = RecipientStatus("user@b.example", attempts=7)
    outcome = Outcome("user@b.example", Result.DEFERRED, "450 4.4.316 Connection refused")
    assert next_status(old, outcome, "mx", received_at=RECEIVED, limits=LIMITS, now=now) == RecipientStatus(
        "user@b.example", RecipientState.FAILED, 8, None,
        "550 4.4.7 QUEUE.Expired; message expired [LastError=450 4.4.316 Connection refused]", "mx",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("result", "state"), [(Result.DELIVERED, RecipientState.DELIVERED), (Result.FAILED, RecipientState.FAILED)]
)
def test_a_delivery_or_a_failure_is_final_even_past_the_maximum_age(result: Result, state: RecipientState) -> None:
    now = RECEIVED + timedelta(days=30)
    outcome = Outcome("user@b.example", result, "250 2.0.0 Ok")
    status = next_status(
        RecipientStatus("user@b.example", attempts=2), outcome, "local", received_at=RECEIVED, limits=LIMITS, now=now
    )
    assert status == RecipientStatus("user@b.example", state, 3, None, "250 2.0.0 Ok", "local")


# --- the run loop -------------------------------------------------------------------------------------------------


def test_a_message_handed_over_by_id_is_delivered_without_another_scan(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay = Relay(tmp_path, limits=Limits(queue_scan=3600.0))
        async with relay.running():
            await eventually(lambda: relay.spool.scans == 1)  # the scan at start
            qid = relay.queue("bob@contoso.com")
            relay.deliverer.kick(qid)
            await eventually(lambda: relay.statuses(qid) is None)
            assert len(relay.mailbox("bob@contoso.com")) == 1
            assert relay.spool.scans == 1

    run(scenario())


def test_a_message_handed_over_in_memory_is_delivered_without_reading_the_spool(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay = Relay(tmp_path, limits=Limits(queue_scan=3600.0))
        async with relay.running():
            await eventually(lambda: relay.spool.scans == 1)
            envelope = Envelope("alice@contoso.com", ("bob@contoso.com", "carol@contoso.com"))
            qid = relay.spool.store(envelope, CONTENT)
            relay.deliverer.queued(qid, envelope, CONTENT)
            await eventually(lambda: not (relay.spool.queue / f"{qid}.msg").exists())
            assert (relay.spool.gets, relay.spool.contents, relay.spool.scans) == (0, 0, 1)
            assert relay.mailbox("bob@contoso.com") and relay.mailbox("carol@contoso.com")

    run(scenario())


class AnnouncedLate(Deliverer):
    """Its announcement of ``late`` comes as the scan's attempt of that message ends: once the attempt has let the
    message go, before the run loop has seen the attempt finish."""

    late: tuple[str, Envelope, bytes] | None = None

    async def deliver_once(self, qid: str) -> None:
        await super().deliver_once(qid)
        if self.late is not None and self.late[0] == qid:
            late, self.late = self.late, None
            self.queued(*late)


def test_a_message_announced_as_its_attempt_ends_is_not_kept_in_memory(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay = Relay(tmp_path, limits=Limits(queue_scan=3600.0), kind=AnnouncedLate)
        envelope = Envelope("alice@contoso.com", ("bob@contoso.com",))
        qid = relay.spool.store(envelope, CONTENT)
        deliverer = relay.deliverer
        assert isinstance(deliverer, AnnouncedLate)
        deliverer.late = (qid, envelope, CONTENT)
        async with relay.running():  # the scan at start finds the message first
            await eventually(lambda: deliverer.late is None and relay.statuses(qid) is None)
            # The late announcement is looked at all the same: the spool says the message is done, so it is dropped
            await eventually(lambda: not deliverer._handed)
        assert len(relay.mailbox("bob@contoso.com")) == 1 and deliverer._handed_bytes == 0

    run(scenario())


def test_a_held_message_announced_as_its_attempt_ends_waits_for_its_pause(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay = Relay(tmp_path, limits=Limits(queue_scan=3600.0, retry_base=HOUR), kind=AnnouncedLate)
        relay.spool.updates_to_refuse = 1  # the first attempt's outcome cannot be recorded: the message is held
        envelope = Envelope("alice@contoso.com", ("bob@contoso.com",))
        qid = relay.spool.store(envelope, CONTENT)
        deliverer = relay.deliverer
        assert isinstance(deliverer, AnnouncedLate)
        deliverer.late = (qid, envelope, CONTENT)
        async with relay.running():
            await eventually(lambda: deliverer.late is None and not deliverer._handed)
            await asyncio.sleep(0.1)  # time enough for a second delivery, were there one
        assert len(relay.mailbox("bob@contoso.com")) == 1
        assert relay.statuses(qid) == {"bob@contoso.com": RecipientStatus("bob@contoso.com")}

    run(scenario())


def test_a_message_announced_after_it_was_done_is_not_kept_in_memory_when_a_scan_comes_first(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay = Relay(tmp_path, limits=Limits(queue_scan=3600.0))
        async with relay.running():
            await eventually(lambda: relay.spool.scans_done == 1)
            await asyncio.sleep(0.05)  # the first scan's results taken in: the loop waits for news
            # Given a message an earlier attempt finished (gone from the spool), announced late, with a scan due
            envelope = Envelope("alice@contoso.com", ("bob@contoso.com",))
            qid = relay.spool.store(envelope, CONTENT)
            relay.spool.remove(qid)
            relay.deliverer.queued(qid, envelope, CONTENT)
            relay.deliverer.kick()
            # Then the scan does not make it forget the announcement: it is looked at, found done, and dropped
            await eventually(lambda: relay.spool.scans == 2 and not relay.deliverer._handed)
        assert relay.mailbox("bob@contoso.com") == [] and relay.deliverer._handed_bytes == 0

    run(scenario())


def test_what_the_deliverer_keeps_of_journal_segments_goes_with_them(tmp_path: Path) -> None:
    """The segment of each message handed over from the journal, and the ids it delivered from memory: kept while
    the segment is on disk, forgotten at the first scan after its checkpoint."""

    async def scenario() -> None:
        relay = Relay(tmp_path, limits=Limits(queue_scan=0.05))
        delivered, waiting = Spool.new_qid(), Spool.new_qid()
        envelope = Envelope("alice@contoso.com", ("bob@contoso.com",))
        segment = relay.spool.store_batch([(delivered, envelope, CONTENT), (waiting, envelope, CONTENT)])
        relay.deliverer.kick(waiting, segment)  # announced by id alone: read from the queue once written there
        async with relay.running():
            relay.deliverer.queued(delivered, envelope, CONTENT, segment)
            await eventually(lambda: len(relay.mailbox("bob@contoso.com")) == 1)
            assert relay.deliverer._segments == {waiting: segment} and relay.deliverer._done == {delivered: segment}
            closed = relay.spool.journal.close()
            assert closed is not None
            relay.deliverer.checkpointed(relay.spool.checkpoint(closed))
            await eventually(lambda: len(relay.mailbox("bob@contoso.com")) == 2)
            scans = relay.spool.scans_done
            await eventually(lambda: relay.spool.scans_done >= scans + 2)
            assert relay.deliverer._segments == {} and relay.deliverer._done == {}

    run(scenario())


def test_a_message_queued_without_a_kick_is_found_by_the_next_scan(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay = Relay(tmp_path, limits=Limits(queue_scan=0.05))
        async with relay.running():
            await eventually(lambda: relay.spool.scans >= 1)
            qid = relay.queue("bob@contoso.com")
            await eventually(lambda: relay.statuses(qid) is None)
            assert len(relay.mailbox("bob@contoso.com")) == 1

    run(scenario())


def test_a_stored_bounce_is_delivered_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay = Relay(tmp_path, limits=Limits(queue_scan=3600.0))
        async with relay.running():
            await eventually(lambda: relay.spool.scans == 1)
            # A message from a local sender that cannot be forwarded: it fails, and the bounce goes to bob
            qid = relay.queue("user@b.example", sender="bob@contoso.com", content=REFUSED)
            relay.deliverer.kick(qid)
            await eventually(lambda: relay.spool.messages() == [])
            assert relay.statuses(qid) is None
            [bounce] = relay.mailbox("bob@contoso.com")
            assert b"multipart/report" in bounce

    run(scenario())


def test_deliveries_beyond_the_concurrency_wait_for_a_free_place(tmp_path: Path) -> None:
    tried_before: list[int] = []  # per connection: how many messages had been tried when it opened
    relay: Relay | None = None

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert relay is not None
        tried_before.append(sum(_tried(relay, qid) for qid in queued))
        await reader.read()  # never greets; the relay gives up after its operation timeout and hangs up
        writer.close()

    async def scenario() -> None:
        nonlocal relay
        server = await asyncio.start_server(silent, "127.0.0.2", 0)
        port = int(server.sockets[0].getsockname()[1])
        to_b = OutboundConnector(
            "to-b", recipient_domains=("b.example",), use_mx_record=False, smart_hosts=("127.0.0.2",)
        )
        limits = Limits(queue_scan=3600.0, delivery_concurrency=1, operation_timeout=0.5)
        relay = started = Relay(tmp_path, limits=limits, connectors=(to_b,), port=port)
        queued.extend([started.queue("one@b.example"), started.queue("two@b.example")])
        try:
            async with started.running():
                await eventually(lambda: all(_tried(started, qid) for qid in queued))
        finally:
            server.close()

    queued: list[str] = []
    run(scenario())
    # One delivery at a time: the second connection opened only once the first attempt was over and recorded
    assert tried_before == [0, 1]


def _tried(relay: Relay, qid: str) -> bool:
    statuses = relay.statuses(qid) or {}
    return bool(statuses) and all(status.attempts > 0 for status in statuses.values())


# --- when the spool fails -------------------------------------------------------------------------------------


@pytest.mark.parametrize("carol_due", [True, False], ids=["finished, not removed", "pending, state not written"])
def test_a_message_whose_outcome_cannot_be_recorded_is_held_not_delivered_at_every_scan(
    tmp_path: Path, carol_due: bool
) -> None:
    async def scenario() -> None:
        relay = Relay(tmp_path, limits=Limits(queue_scan=0.02, retry_base=HOUR))
        qid = relay.queue("bob@contoso.com", "carol@contoso.com")
        carol = RecipientStatus("carol@contoso.com")
        if not carol_due:  # after bob's delivery the message stays, with a new state to write
            carol = RecipientStatus("carol@contoso.com", attempts=1, next_attempt=datetime.now(UTC) + HOUR)
            relay.spool.update(qid, [carol])
        relay.spool.updates_to_refuse = 1_000
        async with relay.running():
            await eventually(lambda: len(relay.mailbox("bob@contoso.com")) == 1)
            scans = relay.spool.scans
            await eventually(lambda: relay.spool.scans >= scans + 10)
        # Delivered once; the outcome could not be recorded, and later scans left the message alone
        assert len(relay.mailbox("bob@contoso.com")) == 1
        assert relay.statuses(qid) == {"bob@contoso.com": RecipientStatus("bob@contoso.com"), carol.recipient: carol}

    run(scenario())


def test_a_held_message_is_tried_again_after_the_pause_a_duplicate_at_worst(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay = Relay(tmp_path, limits=Limits(queue_scan=0.02, retry_base=timedelta(milliseconds=1)))
        relay.spool.updates_to_refuse = 1
        qid = relay.queue("bob@contoso.com")
        async with relay.running():
            await eventually(lambda: relay.statuses(qid) is None)
        assert len(relay.mailbox("bob@contoso.com")) == 2

    run(scenario())


def test_failures_whose_bounce_cannot_be_stored_stay_pending_are_held_and_bounce_later(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay = Relay(tmp_path, limits=Limits(queue_scan=0.02, retry_base=HOUR))
        relay.spool.refuse_bounces = True
        qid = relay.queue("user@b.example", "other@b.example", content=REFUSED)
        async with relay.running():
            await eventually(lambda: relay.spool.bounces_refused == 1)
            scans = relay.spool.scans
            await eventually(lambda: relay.spool.scans >= scans + 10)
        # No bounce, so the failures are not recorded either: untouched, and not tried at every scan
        assert relay.spool.bounces_refused == 1
        assert relay.statuses(qid) == {
            "user@b.example": RecipientStatus("user@b.example"),
            "other@b.example": RecipientStatus("other@b.example"),
        }
        assert [m.qid for m in relay.spool.messages()] == [qid]

        relay.spool.refuse_bounces = False
        await relay.deliverer.deliver_once(qid)
        assert relay.statuses(qid) is None
        [bounce] = relay.spool.messages()
        assert bounce.envelope.mail_from == "" and bounce.envelope.rcpt_tos == ("alice@contoso.com",)

    run(scenario())


def test_an_unexpected_error_is_logged_and_the_message_stays_queued(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        relay = Relay(tmp_path, limits=Limits(queue_scan=3600.0))
        relay.spool.broken = True
        async with relay.running():
            await eventually(lambda: relay.spool.scans == 1)
            qid = relay.queue("bob@contoso.com")
            relay.deliverer.kick(qid)
            await eventually(lambda: f"delivery qid={qid} failed unexpectedly; it stays queued" in caplog.text)
        assert relay.statuses(qid) == {"bob@contoso.com": RecipientStatus("bob@contoso.com")}

    with caplog.at_level(logging.ERROR, logger="diag.relay"):
        run(scenario())


# --- one message ---------------------------------------------------------------------------------------------------


def test_a_message_already_being_delivered_is_not_delivered_twice_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay = Relay(tmp_path, limits=Limits())
        qid = relay.queue("bob@contoso.com")
        relay.spool.gate = threading.Event()
        first = asyncio.create_task(relay.deliverer.deliver_once(qid))
        try:
            assert await asyncio.to_thread(relay.spool.entered.wait, DEADLINE)
            await relay.deliverer.deliver_once(qid)  # returns at once: the first attempt owns the message
            assert relay.spool.gets == 1
        finally:
            relay.spool.gate.set()
        await first
        assert len(relay.mailbox("bob@contoso.com")) == 1 and relay.statuses(qid) is None

    run(scenario())


def test_a_message_that_left_the_spool_meanwhile_is_skipped(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay = Relay(tmp_path, limits=Limits())
        qid = relay.queue("bob@contoso.com")
        relay.spool.remove(qid)
        await relay.deliverer.deliver_once(qid)
        assert relay.mailbox("bob@contoso.com") == []

    run(scenario())


def test_only_due_recipients_are_tried(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay = Relay(tmp_path, limits=Limits())
        qid = relay.queue("bob@contoso.com", "carol@contoso.com")
        later = RecipientStatus("carol@contoso.com", attempts=1, next_attempt=datetime.now(UTC) + HOUR, detail="451 x")
        relay.spool.update(qid, [later])
        await relay.deliverer.deliver_once(qid)
        assert len(relay.mailbox("bob@contoso.com")) == 1 and relay.mailbox("carol@contoso.com") == []
        assert relay.statuses(qid) == {
            "bob@contoso.com": RecipientStatus("bob@contoso.com", RecipientState.DELIVERED, 1, None,
                                               "250 2.0.0 Delivered to the mailbox", "local"),
            "carol@contoso.com": later,
        }  # fmt: skip

    run(scenario())
