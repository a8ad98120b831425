"""The reflector: a message to a reflector address (``[Relay] Reflect``, internet role) is answered to its
envelope sender with its header section attached, so that one mailbox proves both directions of a round trip
(ARCHITECTURE §7): the attached Received lines are the way there, the reply's own the way back.

An answering machine on the Internet is what backscatter and amplification are made of (security-cases.md), so
the reflector answers only where an RFC 3834 responder may, once, and little:

- never to the null sender (RFC 3834 §2, RFC 5321 §4.5.5), a mail daemon or a reflector address itself;
- never to automatic mail: ``Auto-Submitted`` other than ``no`` (RFC 3834 §2, §5), a report
  (``multipart/report``: a DSN or MDN), list or bulk mail (``List-*`` fields, RFC 2369 and RFC 2919;
  ``Precedence: bulk``, ``list`` or ``junk``);
- never twice for one message: its probe token (``X-Diag-Probe``) and Message-ID are remembered in the spool
  directory (:class:`ReflectLog`) for :data:`WINDOW` plus :data:`FUTURE`, and a message dated outside
  ``[now - WINDOW, now + FUTURE]`` (or not dated) is not answered, so a duplicate can never come after its
  memory is gone; a message with neither token nor Message-ID is not answered (nothing would stop a second);
- at most ``reflect_limit`` replies per envelope sender per hour, and :data:`TOTAL_PER_HOUR` in all;
- nothing amplified: the reply holds the original's header section (cut at :data:`MAX_HEADERS`) and a few
  lines, never the body;
- the reply goes from the null reverse-path (RFC 3834 §3.3; Exim's autoreply does the same), so it is never
  bounced and never answered by a vacation responder or another reflector, and it says ``Auto-Submitted:
  auto-replied``.

The reflector is recorded as answering *before* the reply is stored: a crash or a full disk in between costs
that reply (the probe times out), never a second one.

:func:`reply` is pure (bytes in, the reply or the reason for none out); :class:`ReflectLog` does blocking file
I/O (call it with ``asyncio.to_thread``); the deliverer (:mod:`diag.relay.queue`) puts them together.
"""

from __future__ import annotations

import enum
import io
import itertools
import json
import os
import re
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email import policy
from email.generator import BytesGenerator
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from email.utils import format_datetime, make_msgid, parsedate_to_datetime
from pathlib import Path
from typing import Final

from diag.frozen import frozen
from diag.probe.message import PROBE_HEADER
from diag.relay.disk import fsync_dir
from diag.relay.dsn import header_section, headers_part, original_subject
from diag.relay.spool import Envelope

__all__ = [
    "FUTURE",
    "MAX_HEADERS",
    "TOTAL_PER_HOUR",
    "WINDOW",
    "ReflectLog",
    "Reply",
    "Skip",
    "reply",
]

# How old a message may be and still be answered: longer than any sender retries one message (RFC 5321
# §4.5.4.1 suggests giving up after 4-5 days; the relay's own Limits.max_age is 5 days).
WINDOW: Final = timedelta(days=7)
# How far in the future a message may be dated (a sender's clock that is wrong).
FUTURE: Final = timedelta(days=1)
# Replies in all per hour: bounds the backscatter of senders forged by the thousand, and the memory.
TOTAL_PER_HOUR: Final = 500
# The original's header section is attached up to this size (Exchange Online's own headers take about 10 KiB).
MAX_HEADERS: Final = 64 * 1024
_HOUR: Final = timedelta(hours=1)
_POLICY: Final = policy.SMTP.clone(max_line_length=998)
_BULK: Final = frozenset({"bulk", "list", "junk"})
_DAEMONS: Final = frozenset({"mailer-daemon"})
_MSG_ID: Final = re.compile(r"<[!-;=?-~]{1,900}>")  # printable ASCII without < > and white space
_PROBE_VALUE: Final = re.compile(r"[ -~]{1,1024}")
_REFERENCES_KEPT: Final = 20


class Skip(enum.StrEnum):
    """Why a message to a reflector is not answered (the log line and the recipient's recorded reply say it)."""

    NULL_SENDER = "the null sender"
    DAEMON = "sent by a mail daemon"
    OWN = "sent by a reflector address"
    AUTOMATIC = "automatic mail (Auto-Submitted)"
    REPORT = "a report (multipart/report)"
    LIST = "list or bulk mail"
    UNIDENTIFIED = "neither a probe token nor a Message-ID"
    UNDATED = "no Date within the answered window"
    DUPLICATE = "already answered"
    SENDER_LIMIT = "the sender's hourly limit is reached"
    TOTAL_LIMIT = "the reflector's hourly total is reached"


@frozen
class Reply:
    """A reply to send.

    Attributes:
        sender: the original's envelope sender, lower-case (whom the per-sender limit counts).
        keys: what identifies the original (``probe:<token>``, ``id:<Message-ID>``), remembered once answered.
        envelope: the reply's envelope: the null sender, the original's sender as its one recipient.
        content: the reply, CRLF line ends, ready for :meth:`~diag.relay.spool.Spool.store`.
    """

    sender: str
    keys: tuple[str, ...]
    envelope: Envelope
    content: bytes


def _parse(section: bytes) -> Message:
    # compat32 keeps values as written; what is read is bounded and cleaned below.
    return BytesHeaderParser(policy=policy.compat32).parsebytes(section)


def _one(value: object) -> str:
    return " ".join(str(value).split())


def _refusal(envelope: Envelope, head: Message, reflectors: Sequence[str]) -> Skip | None:
    sender = envelope.mail_from.lower()
    if not sender:
        return Skip.NULL_SENDER
    if sender.rpartition("@")[0] in _DAEMONS:
        return Skip.DAEMON
    if sender in reflectors:
        return Skip.OWN
    if any(_one(value).split(";")[0].strip().lower() != "no" for value in head.get_all("Auto-Submitted") or []):
        return Skip.AUTOMATIC
    if _one(head.get("Content-Type", "")).lower().startswith("multipart/report"):
        return Skip.REPORT
    if any(name.lower().startswith("list-") for name in head.keys()):
        return Skip.LIST
    if any(_one(value).lower() in _BULK for value in head.get_all("Precedence") or []):
        return Skip.LIST
    return None


def _dated(head: Message, now: datetime) -> bool:
    try:
        date = parsedate_to_datetime(_one(head.get("Date", "")))
    except (TypeError, ValueError, IndexError):
        return False
    if date.tzinfo is None:  # "-0000": the time is UTC, the zone unknown (RFC 5322 §3.3)
        date = date.replace(tzinfo=UTC)
    return now - WINDOW <= date <= now + FUTURE


def _message_id(head: Message) -> str | None:
    value = _one(head.get("Message-ID", ""))
    return value if _MSG_ID.fullmatch(value) else None


def _probe_token(head: Message) -> str | None:
    value = _one(head.get(PROBE_HEADER, ""))
    return value if _PROBE_VALUE.fullmatch(value) else None


def _cut(section: bytes) -> bytes:
    """At most MAX_HEADERS bytes of a header section, cut after a whole line."""
    if len(section) <= MAX_HEADERS:
        return section
    end = section.rfind(b"\r\n", 0, MAX_HEADERS)
    return section[: end + 2] if end >= 0 else b""


def _explanation(envelope: Envelope, reflector: str, hostname: str, *, cut: bool) -> str:
    lines = [
        f"This is an automatic reply of the diag reflector at {hostname}.",
        "",
        f"Your message to <{reflector}> arrived here on {format_datetime(envelope.received_at)}.",
        "Its header section is attached: its Received lines show the way it came, and the Received lines of",
        "this reply show the way back. diag probe --round-trip reads both.",
        "",
        "The reflector answers each message once, never automatic mail, and only a few messages per sender",
        "and hour.",
    ]
    if cut:
        lines += ["", f"The header section was longer than {MAX_HEADERS} bytes; only its first lines are attached."]
    return "\n".join(lines) + "\n"


def reply(
    envelope: Envelope, content: bytes, *, reflector: str, reflectors: Sequence[str], hostname: str, now: datetime
) -> Reply | Skip:
    """The reply to a message (``envelope``, ``content`` as stored) for the reflector address ``reflector``, or
    why there is none. ``reflectors`` are all the relay's reflector addresses (lower-case); ``now`` is tz-aware.

    Decides only what the message itself shows; whether it was answered before and the hourly limits are
    :meth:`ReflectLog.refusal`'s.
    """
    section = header_section(content)
    head = _parse(section)
    refusal = _refusal(envelope, head, reflectors)
    if refusal is not None:
        return refusal
    token, message_id = _probe_token(head), _message_id(head)
    if token is None and message_id is None:
        return Skip.UNIDENTIFIED
    if not _dated(head, now):
        return Skip.UNDATED
    attached = _cut(section)
    subject = original_subject(section)

    answer = EmailMessage(policy=_POLICY)
    answer["From"] = f"diag reflector <{reflector}>"
    answer["To"] = f"<{envelope.mail_from}>"
    # RFC 3834 §3.1.5 asks for the original subject behind a marker; "Re:" keeps the probe's name and run visible.
    answer["Subject"] = subject if subject.lower().startswith("re:") else f"Re: {subject}".rstrip()
    answer["Date"] = format_datetime(now)
    answer["Message-ID"] = make_msgid(idstring="diag-reflect", domain=hostname)
    if message_id is not None:
        # RFC 5322 §3.6.4, RFC 3834 §3.1.4: the parent's References, then the parent itself.
        references = [ref for ref in _MSG_ID.findall(_one(head.get("References", ""))) if ref != message_id]
        answer["In-Reply-To"] = message_id
        answer["References"] = " ".join([*references[-_REFERENCES_KEPT:], message_id])
    answer["Auto-Submitted"] = "auto-replied"  # RFC 3834 §5
    if token is not None:
        answer[PROBE_HEADER] = token  # carried back: the sender's watcher knows its probe's return leg by it
    answer["MIME-Version"] = "1.0"
    text = EmailMessage(policy=_POLICY)
    text.set_payload(_explanation(envelope, reflector, hostname, cut=len(attached) < len(section)), charset="us-ascii")
    del text["MIME-Version"]
    answer.set_type("multipart/mixed")
    answer.set_payload([text, headers_part(attached)])

    buffer = io.BytesIO()
    BytesGenerator(buffer, mangle_from_=False, policy=_POLICY).flatten(answer)
    keys = (*([f"probe:{token}"] if token else []), *([f"id:{message_id}"] if message_id else []))
    reply_envelope = Envelope(mail_from="", rcpt_tos=(envelope.mail_from,), received_at=now, helo=hostname)
    return Reply(envelope.mail_from.lower(), keys, reply_envelope, buffer.getvalue())


@frozen
class _Answered:
    at: datetime
    sender: str
    keys: tuple[str, ...]

    def line(self) -> bytes:
        data = {"at": self.at.isoformat(), "sender": self.sender, "keys": list(self.keys)}
        return json.dumps(data, separators=(",", ":")).encode("utf-8") + b"\n"


def _answered(line: bytes) -> _Answered | None:
    try:
        data = json.loads(line)
        at = datetime.fromisoformat(data["at"])
        sender, keys = data["sender"], data["keys"]
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by a crash
    if at.tzinfo is None or not isinstance(sender, str) or not isinstance(keys, list):
        return None
    return _Answered(at, sender, tuple(str(key) for key in keys))


class ReflectLog:
    """What the reflector answered lately, kept in ``directory/answered`` (one JSON line per reply, each fsynced
    before the reply is stored) and in memory: the keys of the last ``WINDOW + FUTURE``, the replies of the last
    hour. Blocking: call :meth:`open` and :meth:`record` with ``asyncio.to_thread``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "answered"
        self._records: deque[_Answered] = deque()
        self._keys: dict[str, datetime] = {}
        self._written = 0

    def open(self, now: datetime) -> None:
        """Read what was answered; the file is rewritten without the records that expired (and without a line a
        crash cut short, which would otherwise swallow the next one)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            record = _answered(line)
            if record is not None:
                self._remember(record)
        self._forget(now)
        self._compact()

    def refusal(self, reply: Reply, *, now: datetime, per_sender: int) -> Skip | None:
        """Why ``reply`` must not be sent now: its original was answered before, or an hourly limit is reached."""
        self._forget(now)
        if any(key in self._keys for key in reply.keys):
            return Skip.DUPLICATE
        hour = list(itertools.takewhile(lambda record: record.at > now - _HOUR, reversed(self._records)))
        if sum(record.sender == reply.sender for record in hour) >= per_sender:
            return Skip.SENDER_LIMIT
        if len(hour) >= TOTAL_PER_HOUR:
            return Skip.TOTAL_LIMIT
        return None

    def record(self, reply: Reply, now: datetime) -> None:
        """Remember ``reply`` as sent, durably; raises OSError when it cannot be written (then it is not sent)."""
        record = _Answered(now, reply.sender, reply.keys)
        created = not self.path.exists()
        with open(self.path, "ab") as handle:
            handle.write(record.line())
            handle.flush()
            os.fsync(handle.fileno())
        if created:
            fsync_dir(self.directory)
        self._remember(record)
        self._written += 1
        if self._written > max(1000, len(self._records)):
            self._compact()

    def _remember(self, record: _Answered) -> None:
        self._records.append(record)
        for key in record.keys:
            self._keys[key] = record.at

    def _forget(self, now: datetime) -> None:
        cutoff = now - WINDOW - FUTURE
        while self._records and self._records[0].at < cutoff:
            expired = self._records.popleft()
            for key in expired.keys:
                if self._keys.get(key) == expired.at:
                    del self._keys[key]

    def _compact(self) -> None:
        tmp = self.directory / "answered.tmp"
        with open(tmp, "wb") as handle:
            handle.writelines(record.line() for record in self._records)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.directory)
        self._written = 0
