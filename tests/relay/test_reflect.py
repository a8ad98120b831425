"""The reflector (diag/relay/reflect.py and its part in the deliverer): which messages are answered, what the
answer holds, and that it is never given twice or too often.

The relay tests run a real internet-role relay on 127.0.86.1 with a real spool; the sender is one of its own
mailboxes, so the reply is delivered to that Maildir without DNS. The pure rules and the memory are tested with
plain data.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import mailbox
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosmtplib
import pytest

from diag.config import AcceptedDomain, Organization, RelayRole
from diag.probe.message import PROBE_HEADER, build_probe
from diag.relay.reflect import FUTURE, TOTAL_PER_HOUR, WINDOW, ReflectLog, Reply, Skip, reply
from diag.relay.service import Relay
from diag.relay.settings import Limits, RelaySettings
from diag.relay.spool import Envelope, Spool

T = TypeVar("T")

IP = "127.0.86.1"
STRANGER = "127.0.86.2"
SUN = "sun@sun.example"
ECHO = "echo@probe.example"
HOSTNAME = "reflector.sun.example"
NOW = datetime(2026, 12, 5, 21, 0, tzinfo=UTC)
DEADLINE = 30.0
ORG = Organization(accepted_domains=(AcceptedDomain("sun.example"),))


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, DEADLINE))


def probe_bytes(*, sender: str = SUN, now: datetime | None = None, run_id: str = "run-1") -> tuple[bytes, str, str]:
    """A real probe to the reflector: its content, Message-ID and X-Diag-Probe value."""
    probe = build_probe(run=run_id, name="Sun round trip", sender=sender, recipient=ECHO, key=b"k" * 32,
                        now=now or datetime.now(UTC))  # fmt: skip
    parsed = email.message_from_bytes(probe.content)
    return probe.content, probe.message_id, " ".join(str(parsed[PROBE_HEADER]).split())


def plain(*extra: str, message_id: str | None = "<plain-1@sun.example>", date: datetime | None = NOW) -> bytes:
    lines = ["From: Sun <sun@sun.example>", f"To: <{ECHO}>", "Subject: hello"]
    if message_id:
        lines.append(f"Message-ID: {message_id}")
    if date is not None:
        lines.append(f"Date: {format_datetime(date)}")
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\nThe body, never returned.\r\n").encode()


def envelope(sender: str = SUN) -> Envelope:
    return Envelope(mail_from=sender, rcpt_tos=(ECHO,), received_at=NOW, peer="192.0.2.1")


def answer(content: bytes, sender: str = SUN, now: datetime = NOW) -> Reply | Skip:
    return reply(envelope(sender), content, reflector=ECHO, reflectors=(ECHO,), hostname=HOSTNAME, now=now)


# --- the rules, pure ------------------------------------------------------------------------------------------


def test_the_reply_returns_the_header_section_to_the_envelope_sender() -> None:
    content, message_id, token = probe_bytes(now=NOW)
    received = b"Received: from mx.contoso.com ([192.0.2.1]) by reflector.sun.example with ESMTPS; x\r\n"

    made = answer(received + content)

    assert isinstance(made, Reply)
    assert made.envelope.mail_from == "" and made.envelope.rcpt_tos == (SUN,)  # RFC 3834 §3.3: null reverse-path
    assert made.keys == (f"probe:{token}", f"id:{message_id}")
    parsed = email.message_from_bytes(made.content, policy=email.policy.default)
    assert parsed["To"].addresses[0].addr_spec == SUN and parsed["From"] == f"diag reflector <{ECHO}>"
    assert parsed["Subject"] == "Re: diag probe Sun round trip (run run-1)"
    assert parsed["In-Reply-To"] == message_id and parsed["References"] == message_id
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed[PROBE_HEADER] == token
    assert parsed["Message-ID"] != message_id and parsed["Message-ID"].endswith(f"@{HOSTNAME}>")
    text, headers = parsed.iter_parts()
    assert text.get_content_type() == "text/plain" and ECHO in text.get_content()
    assert headers.get_content_type() == "text/rfc822-headers"
    returned = headers.get_payload(decode=True)
    assert returned.startswith(received) and message_id.encode() in returned
    assert b"end-to-end test message" not in made.content  # never the body
    assert b"\r\n" in made.content and b"\n" not in made.content.replace(b"\r\n", b"")


def test_references_keep_the_thread_and_a_reply_subject_is_not_doubled() -> None:
    made = answer(plain("References: <a@x.example> <b@x.example>").replace(b"Subject: hello", b"Subject: Re: hi"))

    assert isinstance(made, Reply)
    parsed = email.message_from_bytes(made.content, policy=email.policy.default)
    assert parsed["References"] == "<a@x.example> <b@x.example> <plain-1@sun.example>"
    assert parsed["Subject"] == "Re: hi"
    assert PROBE_HEADER not in parsed  # nothing to carry back


@pytest.mark.parametrize(
    ("extra", "sender", "skip"),
    [
        ((), "", Skip.NULL_SENDER),
        ((), "MAILER-DAEMON@sun.example", Skip.DAEMON),
        ((), ECHO, Skip.OWN),
        (("Auto-Submitted: auto-generated",), SUN, Skip.AUTOMATIC),
        (("Auto-Submitted: Auto-Replied; owner-email=x@y.example",), SUN, Skip.AUTOMATIC),
        (("Content-Type: multipart/report; report-type=delivery-status; boundary=x",), SUN, Skip.REPORT),
        (("List-Id: <news.sun.example>",), SUN, Skip.LIST),
        (("List-Unsubscribe: <mailto:leave@sun.example>",), SUN, Skip.LIST),
        (("Precedence: Bulk",), SUN, Skip.LIST),
        (("Precedence: junk",), SUN, Skip.LIST),
    ],
)
def test_automatic_and_bulk_mail_is_not_answered(extra: tuple[str, ...], sender: str, skip: Skip) -> None:
    assert answer(plain(*extra), sender) is skip


def test_auto_submitted_no_is_answered() -> None:
    assert isinstance(answer(plain("Auto-Submitted: no")), Reply)


def test_a_message_that_cannot_be_told_from_its_duplicates_is_not_answered() -> None:
    assert answer(plain(message_id=None)) is Skip.UNIDENTIFIED
    assert answer(plain(message_id="not an id")) is Skip.UNIDENTIFIED


@pytest.mark.parametrize(
    "date", [None, NOW - WINDOW - timedelta(seconds=1), NOW + FUTURE + timedelta(seconds=1)], ids=str
)
def test_a_message_dated_outside_the_remembered_window_is_not_answered(date: datetime | None) -> None:
    assert answer(plain(date=date)) is Skip.UNDATED


def test_an_overlong_header_section_is_cut_at_a_line() -> None:
    filler = tuple(f"X-Filler-{n}: {'y' * 900}" for n in range(100))

    made = answer(plain(*filler))

    assert isinstance(made, Reply)
    parsed = email.message_from_bytes(made.content, policy=email.policy.default)
    text, headers = parsed.iter_parts()
    returned = headers.get_payload(decode=True)
    assert len(returned) <= 64 * 1024 and returned.endswith(b"\r\n") and b"X-Filler-0:" in returned
    assert "only its first lines are attached" in text.get_content()


# --- the memory -------------------------------------------------------------------------------------------------


def made(n: int, sender: str = SUN) -> Reply:
    result = answer(plain(message_id=f"<m{n}@sun.example>"), sender)
    assert isinstance(result, Reply)
    return result


def test_the_memory_refuses_duplicates_also_after_a_restart(tmp_path: Path) -> None:
    memory = ReflectLog(tmp_path)
    memory.open(NOW)
    assert memory.refusal(made(1), now=NOW, per_sender=5) is None
    memory.record(made(1), NOW)
    assert memory.refusal(made(1), now=NOW, per_sender=5) is Skip.DUPLICATE

    again = ReflectLog(tmp_path)
    again.open(NOW + timedelta(days=3))
    assert again.refusal(made(1), now=NOW + timedelta(days=3), per_sender=5) is Skip.DUPLICATE
    # Forgotten only once no copy of it could be answered any more (its Date is then outside the window).
    later = NOW + WINDOW + FUTURE + timedelta(seconds=1)
    assert again.refusal(made(1), now=later, per_sender=5) is None


def test_the_memory_counts_each_sender_per_hour(tmp_path: Path) -> None:
    memory = ReflectLog(tmp_path)
    memory.open(NOW)
    for n in range(3):
        memory.record(made(n), NOW + timedelta(minutes=n))

    assert memory.refusal(made(9), now=NOW + timedelta(minutes=5), per_sender=3) is Skip.SENDER_LIMIT
    assert memory.refusal(made(9, "moon@sun.example"), now=NOW + timedelta(minutes=5), per_sender=3) is None
    assert memory.refusal(made(9), now=NOW + timedelta(minutes=61), per_sender=3) is None


def test_the_memory_caps_the_total_per_hour(tmp_path: Path) -> None:
    # As a relay that answered that many different senders in the last hour left its memory.
    lines = [f'{{"at":"{NOW.isoformat()}","sender":"user{n}@sun.example","keys":["id:<m{n}@sun.example>"]}}\n'
             for n in range(TOTAL_PER_HOUR)]  # fmt: skip
    (tmp_path / "answered").write_text("".join(lines))
    memory = ReflectLog(tmp_path)
    memory.open(NOW)

    assert memory.refusal(made(TOTAL_PER_HOUR, "new@sun.example"), now=NOW, per_sender=5) is Skip.TOTAL_LIMIT


def test_a_line_cut_short_by_a_crash_loses_only_itself(tmp_path: Path) -> None:
    memory = ReflectLog(tmp_path)
    memory.open(NOW)
    memory.record(made(1), NOW)
    with (tmp_path / "answered").open("ab") as handle:
        handle.write(b'{"at":"2026-12-05T21:00:00+00:00","sen')

    again = ReflectLog(tmp_path)
    again.open(NOW)
    again.record(made(2), NOW)

    third = ReflectLog(tmp_path)
    third.open(NOW)
    assert third.refusal(made(1), now=NOW, per_sender=5) is Skip.DUPLICATE
    assert third.refusal(made(2), now=NOW, per_sender=5) is Skip.DUPLICATE
    assert len((tmp_path / "answered").read_bytes().splitlines()) == 2


# --- a real relay -------------------------------------------------------------------------------------------------


@asynccontextmanager
async def reflector(tmp_path: Path, *, limit: int = 20, reflect: tuple[str, ...] = (ECHO,)) -> AsyncIterator[Relay]:
    settings = RelaySettings(
        organization=ORG,
        role=RelayRole.INTERNET,
        hostname=HOSTNAME,
        listen=((IP, 0),),
        spool=tmp_path / "spool",
        maildir=tmp_path / "mail",
        mailboxes=(SUN,),
        reflect=reflect,
        reflect_limit=limit,
        limits=Limits(session_timeout=10.0, queue_scan=0.1, operation_timeout=5.0),
    )
    async with Relay(settings) as relay:
        yield relay


async def send(relay: Relay, content: bytes, *, sender: str = SUN, recipients: tuple[str, ...] = (ECHO,)) -> None:
    _, port = relay.server.addresses[0]
    async with aiosmtplib.SMTP(hostname=IP, port=port, start_tls=False, timeout=10) as client:
        await client.sendmail(sender, list(recipients), content)


async def settled(relay: Relay) -> None:
    """Wait until the spool is empty, its journal included: the original was delivered (answered or not) and any
    reply too."""
    while await asyncio.to_thread(held, relay.spool):  # noqa: ASYNC110 - the spool has no change notification
        await asyncio.sleep(0.05)


def held(spool: Spool) -> bool:
    return bool(spool.messages() or spool.journal_only(()))


def replies(tmp_path: Path) -> list[mailbox.MaildirMessage]:
    box = tmp_path / "mail" / SUN
    return list(mailbox.Maildir(box, create=False)) if box.exists() else []


def test_a_probe_is_answered_to_its_sender_with_its_headers(tmp_path: Path) -> None:
    content, message_id, token = probe_bytes()

    async def scenario() -> None:
        async with reflector(tmp_path) as relay:
            await send(relay, content)
            await settled(relay)

    run(scenario())

    (found,) = replies(tmp_path)
    assert found["Return-Path"] == "<>"
    assert found["Auto-Submitted"] == "auto-replied" and found["In-Reply-To"] == message_id
    assert " ".join(str(found[PROBE_HEADER]).split()) == token
    attached = next(part for part in found.walk() if part.get_content_type() == "text/rfc822-headers")
    returned = attached.get_payload(decode=True)
    # The reflector's own Received line is the last hop of the way there.
    assert returned.startswith(b"Received: from ") and f"by {HOSTNAME} with ESMTP".encode() in returned
    assert message_id.encode() in returned


def test_the_null_sender_and_automatic_mail_are_stored_but_never_answered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="diag.relay")
    now = datetime.now(UTC)

    async def scenario() -> None:
        async with reflector(tmp_path) as relay:
            await send(relay, plain(message_id="<null@sun.example>", date=now), sender="")
            await send(relay, plain("Auto-Submitted: auto-replied", message_id="<auto@sun.example>", date=now))
            await settled(relay)

    run(scenario())

    assert replies(tmp_path) == []  # no reply and no bounce either
    assert 'reply="250 2.0.0 Not answered: the null sender"' in caplog.text
    assert 'reply="250 2.0.0 Not answered: automatic mail (Auto-Submitted)"' in caplog.text


def test_a_duplicate_is_not_answered_also_after_a_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="diag.relay")
    content, _, _ = probe_bytes()

    async def scenario() -> None:
        async with reflector(tmp_path) as relay:
            await send(relay, content)
            await settled(relay)
        async with reflector(tmp_path) as relay:  # the same spool directory
            await send(relay, content)
            await settled(relay)

    run(scenario())

    assert len(replies(tmp_path)) == 1
    assert 'reply="250 2.0.0 Not answered: already answered"' in caplog.text


def test_one_message_to_two_reflectors_is_answered_once(tmp_path: Path) -> None:
    content, _, _ = probe_bytes()
    second = "echo2@probe.example"

    async def scenario() -> None:
        async with reflector(tmp_path, reflect=(ECHO, second)) as relay:
            await send(relay, content, recipients=(ECHO, second))
            await settled(relay)

    run(scenario())

    assert len(replies(tmp_path)) == 1


def test_a_sender_gets_at_most_the_limit_per_hour(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="diag.relay")

    async def scenario() -> None:
        async with reflector(tmp_path, limit=2) as relay:
            for n in range(3):
                await send(relay, probe_bytes(run_id=f"run-{n}")[0])
            await settled(relay)

    run(scenario())

    assert len(replies(tmp_path)) == 2
    assert "Not answered: the sender's hourly limit is reached" in caplog.text


def test_strangers_may_mail_the_reflector_and_nothing_else(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with reflector(tmp_path) as relay:
            _, port = relay.server.addresses[0]
            async with aiosmtplib.SMTP(hostname=IP, port=port, start_tls=False, timeout=10,
                                       source_address=(STRANGER, 0)) as client:  # fmt: skip
                await client.mail("someone@elsewhere.example")
                assert (await client.rcpt(ECHO)).code == 250
                for other, code in (("victim@elsewhere.example", 554), ("other@probe.example", 550)):
                    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                        await client.rcpt(other)
                    assert refused.value.code == code

    run(scenario())
