"""Bounces (diag/relay/dsn.py): RFC 3464 delivery status notifications, built as bytes and read back with the
standard library's parser, as a receiving mail client would."""

from __future__ import annotations

import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parsedate_to_datetime

import pytest

from diag.relay.dsn import bounce, status_code
from diag.relay.spool import Envelope, RecipientState, RecipientStatus

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
RECEIVED = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CONTENT = (
    b"From: john@contoso.com\r\nTo: sun@tailspintoys.com\r\nSubject: Quarterly  figures\r\n"
    b"Message-ID: <q4@contoso.com>\r\n\r\nThe body stays with the sender.\r\n"
)
ENVELOPE = Envelope("john@contoso.com", ("sun@tailspintoys.com", "ann@tailspintoys.com"), RECEIVED)


def failed(recipient: str, detail: str) -> RecipientStatus:
    return RecipientStatus(recipient, RecipientState.FAILED, attempts=3, detail=detail)


def parse(content: bytes) -> EmailMessage:
    message = BytesParser(policy=email.policy.default).parsebytes(content)
    assert isinstance(message, EmailMessage)
    return message


@pytest.mark.parametrize(
    ("detail", "status"),
    [
        ("550 5.1.1 <sun@tailspintoys.com>: Recipient address rejected", "5.1.1"),
        ("450 4.7.320 Certificate validation failed", "4.7.320"),
        ("550-5.7.64 TenantAttribution; Relay Access Denied", "5.7.64"),
        ("  554 5.0.0 with leading blanks", "5.0.0"),
        ("451 temporary, no enhanced code", "4.0.0"),
        ("550", "5.0.0"),
        ("550 5.1.1234 not an enhanced code (four digits)", "5.0.0"),
        ("connection refused", "5.0.0"),
        ("", "5.0.0"),
    ],
)
def test_status_code_takes_the_enhanced_code_else_the_class(detail: str, status: str) -> None:
    assert status_code(detail) == status


def test_a_bounce_goes_from_the_null_sender_to_the_original_sender() -> None:
    made = bounce(ENVELOPE, CONTENT, [failed("sun@tailspintoys.com", "550 5.1.1 no such user")],
                  reporting_mta="relay.contoso.com", now=NOW)  # fmt: skip
    assert made is not None
    envelope, content = made
    assert (envelope.mail_from, envelope.rcpt_tos, envelope.received_at) == ("", ("john@contoso.com",), NOW)
    message = parse(content)
    assert [a.addr_spec for a in message["To"].addresses] == ["john@contoso.com"]
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@relay.contoso.com>"
    assert message["Subject"] == "Undeliverable: Quarterly figures"
    assert message["Auto-Submitted"] == "auto-replied"  # RFC 3834 §5
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert b"\r\n" in content and b"\n" not in content.replace(b"\r\n", b"")


def test_the_report_has_text_status_and_headers_parts_and_never_the_body() -> None:
    failures = [failed("sun@tailspintoys.com", "550 5.1.1 no such user"),
                failed("ann@tailspintoys.com", "450 4.4.7 QUEUE.Expired")]  # fmt: skip
    made = bounce(ENVELOPE, CONTENT, failures, reporting_mta="relay.contoso.com", now=NOW)
    assert made is not None
    text, status, headers = parse(made[1]).iter_parts()
    assert text.get_content_type() == "text/plain"
    assert "sun@tailspintoys.com" in text.get_content() and "550 5.1.1 no such user" in text.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_message, *per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; relay.contoso.com"
    assert [(b["Final-Recipient"], b["Action"], b["Status"]) for b in per_recipient] == [
        ("rfc822; sun@tailspintoys.com", "failed", "5.1.1"),
        ("rfc822; ann@tailspintoys.com", "failed", "4.4.7"),
    ]
    assert per_recipient[0]["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert headers.get_content_type() == "text/rfc822-headers"
    returned = headers.get_payload(decode=True)
    assert b"Message-ID: <q4@contoso.com>" in returned
    assert b"The body stays with the sender." not in made[1]  # not a reflector (RR-08)


def test_the_null_sender_and_an_empty_failure_list_get_no_bounce() -> None:
    null = Envelope("", ("john@contoso.com",), RECEIVED)
    assert bounce(null, CONTENT, [failed("john@contoso.com", "550 5.1.1")], reporting_mta="r", now=NOW) is None
    assert bounce(ENVELOPE, CONTENT, [], reporting_mta="r", now=NOW) is None


def test_hostile_replies_stay_on_one_printable_line() -> None:
    hostile = "550 5.7.1 no\r\nBcc: victim@example.net\x00\x1b[31m" + "x" * 5000
    made = bounce(ENVELOPE, CONTENT, [failed("sun@tailspintoys.com", hostile)], reporting_mta="relay\r\nX: y",
                  now=NOW)  # fmt: skip
    assert made is not None
    message = parse(made[1])
    assert "Bcc" not in message and "X" not in message
    _text, status, _headers = message.iter_parts()
    (block,) = status.get_payload()[1:]
    diagnostic = block["Diagnostic-Code"]
    assert "\n" not in diagnostic and "\x1b" not in diagnostic and "\x00" not in diagnostic
    assert diagnostic.endswith("...") and len(diagnostic) < 1000
    assert block["Status"] == "5.7.1"


def test_non_ascii_original_headers_come_back_readable() -> None:
    content = "From: jürgen@contoso.com\r\nSubject: Grüße\r\n\r\nbody\r\n".encode()
    made = bounce(ENVELOPE, content, [failed("sun@tailspintoys.com", "550 5.1.1")], reporting_mta="r", now=NOW)
    assert made is not None
    message = parse(made[1])
    assert message["Subject"] == "Undeliverable: Grüße"
    headers = list(message.iter_parts())[2]
    assert headers["Content-Transfer-Encoding"] == "quoted-printable"
    assert "jürgen@contoso.com" in headers.get_payload(decode=True).decode("utf-8")


def test_a_message_without_a_body_or_subject_still_bounces() -> None:
    made = bounce(ENVELOPE, b"From: john@contoso.com\r\n", [failed("sun@tailspintoys.com", "")],
                  reporting_mta="r", now=NOW)  # fmt: skip
    assert made is not None
    message = parse(made[1])
    assert message["Subject"] == "Undeliverable message"
    (block,) = list(message.iter_parts())[1].get_payload()[1:]
    assert block["Status"] == "5.0.0" and "Diagnostic-Code" not in block


@pytest.mark.parametrize(
    ("subject", "shown"),
    [
        ("=?utf-8?b?AAA?=", "Undeliverable: ??"),
        ("=?utf-8?q?=1B[31mred?=", "Undeliverable: ?[31mred"),
        ("=?utf-8?q?Gr=C3=BC=C3=9Fe?=", "Undeliverable: Grüße"),
    ],
)
def test_the_original_subject_keeps_its_text_but_loses_control_characters(subject: str, shown: str) -> None:
    content = f"From: john@contoso.com\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()
    made = bounce(ENVELOPE, content, [failed("sun@tailspintoys.com", "550 5.1.1")], reporting_mta="r", now=NOW)
    assert made is not None
    assert parse(made[1])["Subject"] == shown


def test_the_dates_say_when_the_message_arrived_and_when_delivery_was_last_tried() -> None:
    # Given a message received a day before the relay gave up on it
    made = bounce(ENVELOPE, CONTENT, [failed("sun@tailspintoys.com", "550 5.1.1")], reporting_mta="relay.contoso.com",
                  now=NOW)  # fmt: skip
    assert made is not None
    envelope, content = made
    message = parse(content)
    _text, status, _headers = message.iter_parts()
    per_message, per_recipient = status.get_payload()
    # Then the report is dated now, from the reporting MTA, and RFC 3464 §2.2.5, §2.3.7 date the arrival and the
    # last attempt
    assert parsedate_to_datetime(message["Date"]) == NOW and envelope.helo == "relay.contoso.com"
    assert parsedate_to_datetime(per_message["Arrival-Date"]) == RECEIVED
    assert parsedate_to_datetime(per_recipient["Last-Attempt-Date"]) == NOW
    assert message["Message-ID"].endswith("@relay.contoso.com>")
