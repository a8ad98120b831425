"""Bounces: RFC 3464 delivery status notifications for recipients the relay gave up on.

A bounce is a ``multipart/report; report-type=delivery-status`` message (RFC 6522) from the null sender to the
original envelope sender: a part a person reads, the machine-readable ``message/delivery-status`` part, and the
original headers as ``text/rfc822-headers`` (not the whole message: the sender has it, and returning it would
make the relay a reflector). A message from the null sender is never bounced (RFC 5321 §4.5.5, RR-08), which
also ends any bounce loop.

Pure: builds bytes, does no I/O. The bytes have CRLF line ends, ready for :meth:`Spool.store`.
"""

from __future__ import annotations

import email.charset
import email.policy
import io
import re
from collections.abc import Sequence
from datetime import datetime
from email.generator import BytesGenerator
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from email.utils import format_datetime, make_msgid

from diag.relay.spool import Envelope, RecipientStatus

__all__ = ["bounce", "header_section", "headers_part", "original_subject", "status_code"]

# policy.SMTP gives CRLF line ends; 998 (RFC 5322 §2.1.1) keeps the DSN fields on one line instead of folding
# an unbreakable reply into RFC 2047 encoded words, which a DSN parser would not decode.
_POLICY = email.policy.SMTP.clone(max_line_length=998)
_ENHANCED = re.compile(r"[245]\d\d[ -]([45]\.\d{1,3}\.\d{1,3})(?![.\d])")
_BASIC = re.compile(r"([45])\d\d(?:[ -]|$)")
_UNSAFE = re.compile(r"[^\x20-\x7e]")
# A remote reply can be up to 32 KiB (aiosmtplib's cap); a DSN field stays well below the line limit.
_FIELD_LIMIT = 900


def status_code(detail: str) -> str:
    """The RFC 3463 status for a failure: the enhanced code of its reply (``550 5.1.1 ...`` → 5.1.1), else the
    class of its basic code (4.0.0 / 5.0.0), else 5.0.0.

    A message that expired in the queue carries ``4.4.7`` in its detail, as the cloud's ``550 4.4.7
    QUEUE.Expired`` does.
    """
    text = detail.lstrip()
    enhanced = _ENHANCED.match(text)
    if enhanced is not None:
        return enhanced.group(1)
    basic = _BASIC.match(text)
    if basic is not None:
        return f"{basic.group(1)}.0.0"
    return "5.0.0"


def bounce(
    envelope: Envelope,
    content: bytes,
    failures: Sequence[RecipientStatus],
    *,
    reporting_mta: str,
    now: datetime,
) -> tuple[Envelope, bytes] | None:
    """The bounce for ``failures`` of the message (``envelope``, ``content``), or None when it must not have one.

    Returns the bounce's envelope (null sender, the original sender as its one recipient, received ``now``)
    and its content. None when the original sender is the null sender or nothing failed.
    """
    if envelope.mail_from == "" or not failures:
        return None
    original = header_section(content)
    subject = original_subject(original)

    report = EmailMessage(policy=_POLICY)
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{_field(reporting_mta)}>"
    report["To"] = f"<{_field(envelope.mail_from)}>"
    report["Subject"] = f"Undeliverable: {subject}" if subject else "Undeliverable message"
    report["Date"] = format_datetime(now)
    report["Message-ID"] = make_msgid(domain=_field(reporting_mta) or None)
    # RFC 3834 §5: a DSN is auto-replied, so that vacation responders and the like stay silent.
    report["Auto-Submitted"] = "auto-replied"
    report["MIME-Version"] = "1.0"
    report.set_type("multipart/report")
    report.set_param("report-type", "delivery-status")
    report.set_payload(
        [
            _text_part(_explanation(envelope, failures, reporting_mta)),
            _status_part(envelope, failures, reporting_mta, now),
            headers_part(original),
        ]
    )

    buffer = io.BytesIO()
    BytesGenerator(buffer, mangle_from_=False, policy=_POLICY).flatten(report)
    bounce_envelope = Envelope(mail_from="", rcpt_tos=(envelope.mail_from,), received_at=now, helo=reporting_mta)
    return bounce_envelope, buffer.getvalue()


def _field(text: str, limit: int = _FIELD_LIMIT) -> str:
    """``text`` safe for a header or DSN field: printable ASCII on one line, shortened to ``limit``."""
    clean = _UNSAFE.sub("?", text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def header_section(content: bytes) -> bytes:
    """The header lines of ``content`` (up to the empty line, which is left out); all of it when it has no body."""
    end = content.find(b"\r\n\r\n")
    if end < 0:
        end = content.find(b"\n\n")
    return content if end < 0 else content[: end + 2]


def original_subject(headers: bytes) -> str:
    """The decoded Subject of a header section, on one line, at most 200 characters; "" when it has none."""
    try:
        parsed = BytesHeaderParser(policy=email.policy.default).parsebytes(headers)
        subject = parsed.get("Subject")
    except Exception:  # a header the parser chokes on must not stop the bounce: it just has no subject then
        return ""
    if subject is None:
        return ""
    # Encoded words can carry any character: control characters (NUL, ESC) become "?" like in _field, while
    # other Unicode is kept (the header is re-encoded on the way out).
    words = " ".join(str(subject).split())
    return "".join(char if char.isprintable() else "?" for char in words)[:200]


def _explanation(envelope: Envelope, failures: Sequence[RecipientStatus], reporting_mta: str) -> str:
    lines = ["Delivery has failed to these recipients:", ""]
    for failure in failures:
        lines.append(f"  {_field(failure.recipient)}")
        lines.append(f"    The last reply was: {_field(failure.detail) or 'none'}")
        lines.append("")
    lines += [
        "Diagnostic information for administrators:",
        f"Generating server: {_field(reporting_mta)}",
        f"Original message received: {format_datetime(envelope.received_at)}",
        "",
    ]
    return "\n".join(lines)


def _text_part(text: str) -> EmailMessage:
    part = EmailMessage(policy=_POLICY)
    part.set_payload(text, charset="us-ascii")
    del part["MIME-Version"]
    return part


def _status_part(
    envelope: Envelope, failures: Sequence[RecipientStatus], reporting_mta: str, now: datetime
) -> EmailMessage:
    """The ``message/delivery-status`` part: per-message fields, then one block per recipient (RFC 3464 §2)."""
    message_fields = EmailMessage(policy=_POLICY)
    message_fields["Reporting-MTA"] = f"dns; {_field(reporting_mta)}"
    message_fields["Arrival-Date"] = format_datetime(envelope.received_at)
    blocks: list[Message | str] = [message_fields]
    for failure in failures:
        block = EmailMessage(policy=_POLICY)
        block["Final-Recipient"] = f"rfc822; {_field(failure.recipient)}"
        block["Action"] = "failed"
        block["Status"] = status_code(failure.detail)
        if failure.detail:
            block["Diagnostic-Code"] = f"smtp; {_field(failure.detail)}"
        block["Last-Attempt-Date"] = format_datetime(now)
        blocks.append(block)
    part = EmailMessage(policy=_POLICY)
    part.set_type("message/delivery-status")
    del part["MIME-Version"]
    part.set_payload(blocks)
    return part


def headers_part(headers: bytes) -> EmailMessage:
    """A ``text/rfc822-headers`` part (RFC 6522) holding a header section; quoted-printable when not ASCII."""
    text = headers.decode("utf-8", "replace").replace("\x00", "")
    part = EmailMessage(policy=_POLICY)
    if text.isascii():
        part.set_payload(text)
        part.set_type("text/rfc822-headers")
    else:
        # RFC 6532 headers: keep them readable; quoted-printable rather than the utf-8 default of base64.
        charset = email.charset.Charset("utf-8")
        charset.body_encoding = email.charset.QP
        part.set_payload(text, charset=charset)
        part.set_type("text/rfc822-headers")
    del part["MIME-Version"]
    return part
