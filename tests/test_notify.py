"""Notification: when to notify, real mail through the lab's SMTP hosts, and a real HTTP webhook on loopback."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import mailbox
import os
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from diag.errors import UsageError
from diag.history import Change, ChangeKind
from diag.lab.pki import TestPKI
from diag.lab.runner import Lab
from diag.model import Severity
from diag.notify import (
    NotifyError,
    check_recipients,
    check_webhook_url,
    mail_subject,
    mail_text,
    parse_smtp_server,
    post_webhook,
    send_mail,
    should_notify,
)

TAILSPIN = "mail.tailspintoys.com"
TAILSPIN_IP = "127.0.30.10"
CREDENTIALS = {"DIAG_SMTP_USERNAME": "alerts@contoso.com", "DIAG_SMTP_PASSWORD": "s3cret"}


def _document(status: str = "critical", domains: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    domains = domains or (("contoso.com", "ok"), ("expired.example", "critical"))
    finding = {
        "code": "CERT_EXPIRED",
        "severity": "critical",
        "subject": "mx.expired.example [127.0.20.1]:25",
        "message": "The certificate of mx.expired.example [127.0.20.1]:25 expired on 2026-11-25 (1 day ago).",
        "remediation": "Renew the certificate and bind the new one to the receive connector.",
        "cloud_error": "450 4.7.320 Certificate validation failed (certificate expired)",
    }
    return {
        "schema": "diag.report/1",
        "tool": {"name": "diag", "version": "0.1.0"},
        "started_at": "2026-11-26T20:00:00Z",
        "finished_at": "2026-11-26T20:00:01Z",
        "status": status,
        "exit_code": {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}[status],
        "domains": [
            {
                "domain": name,
                "status": state,
                "checks": [
                    {
                        "id": "certificate",
                        "title": "Certificate",
                        "status": "completed",
                        "reason": None,
                        "duration_ms": 1,
                        "facts": {},
                        "findings": [finding] if state == "critical" else [],
                    }
                ],
            }
            for name, state in domains
        ],
    }


def _html(marker: str) -> str:
    return f"<!DOCTYPE html><html><body><h1>diag report</h1><p id='marker'>{marker}</p></body></html>"


def _delivered(maildir: Path, marker: str, *, wait: float = 10.0) -> list[EmailMessage]:
    # A relay answers 250 once the message is spooled and files it a moment later: wait (bounded) for it.
    deadline = time.monotonic() + wait
    while True:
        found = _find(maildir, marker)
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def _find(maildir: Path, marker: str) -> list[EmailMessage]:
    if not maildir.exists():
        return []
    found = []
    for key in mailbox.Maildir(maildir, factory=None, create=False).keys():
        raw = mailbox.Maildir(maildir, factory=None, create=False).get_bytes(key)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        html = message.get_body(("html",))
        if html is not None and marker in html.get_content():
            found.append(message)
    return found


# -- should_notify -------------------------------------------------------------------------------------------

FIRST = Change(ChangeKind.FIRST_RUN, "contoso.com", "contoso.com", "status ok")
FIRST_BROKEN = Change(ChangeKind.FIRST_RUN, "expired.example", "expired.example", "status critical")
NEW = Change(
    ChangeKind.NEW, "contoso.com", "mx [ip]:25", "CERT_EXPIRING (warning): …", "CERT_EXPIRING", Severity.WARNING
)
RESOLVED = Change(ChangeKind.RESOLVED, "contoso.com", "mx [ip]:25", "…", "CERT_EXPIRING", Severity.WARNING)
RENEWED = Change(ChangeKind.CERTIFICATE_RENEWED, "contoso.com", "mx [ip]:25", "SHA-256 …")
OK_DOC = _document("ok", (("contoso.com", "ok"),))
BROKEN_DOC = _document("critical", (("contoso.com", "ok"), ("expired.example", "critical")))
WARNING_DOC = _document("warning", (("contoso.com", "warning"),))


@pytest.mark.parametrize(
    ("policy", "document", "changes", "expected"),
    [
        ("always", OK_DOC, [], True),
        ("always", OK_DOC, [FIRST], True),
        ("problem", OK_DOC, [NEW], False),
        ("problem", WARNING_DOC, [], True),
        ("problem", BROKEN_DOC, [], True),
        ("problem", _document("unknown", (("contoso.com", "unknown"),)), [], True),
        ("change", OK_DOC, [], False),  # nothing changed
        ("change", OK_DOC, [FIRST], False),  # first run, all well
        ("change", BROKEN_DOC, [FIRST, FIRST_BROKEN], True),  # first run with a problem
        ("change", BROKEN_DOC, [], False),  # still broken, but nothing new
        ("change", WARNING_DOC, [NEW], True),
        ("change", OK_DOC, [RESOLVED], True),  # good news is news too
        ("change", OK_DOC, [RENEWED], True),
        ("change", BROKEN_DOC, [FIRST], False),  # contoso.com is new and ok; expired.example unchanged
    ],
)
def test_should_notify(policy: str, document: dict[str, Any], changes: list[Change], expected: bool) -> None:
    assert should_notify(policy, document, changes) is expected


def test_unknown_policy_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--notify 'sometimes': choose one of always, change, problem"):
        should_notify("sometimes", OK_DOC, [])


# -- mail content --------------------------------------------------------------------------------------------


def test_subject_names_status_and_domains() -> None:
    assert mail_subject(BROKEN_DOC) == "diag: CRITICAL for contoso.com, expired.example"
    many = _document("ok", tuple((f"d{i}.example", "ok") for i in range(5)))
    assert mail_subject(many) == "diag: OK for d0.example, d1.example, d2.example and 2 more"


def test_subject_cannot_carry_a_header() -> None:
    evil = _document("ok", (("contoso.com\r\nBcc: victim@example.com", "ok"),))
    subject = mail_subject(evil)
    assert "\r" not in subject and "\n" not in subject


def test_text_part_lists_problems_and_changes() -> None:
    text = mail_text(BROKEN_DOC, [NEW])
    assert "CRITICAL (exit code 2)" in text
    assert "expired.example: CRITICAL" in text
    assert "critical CERT_EXPIRED mx.expired.example [127.0.20.1]:25" in text
    assert "Fix: Renew the certificate" in text
    assert "Changes since the previous run:\n  contoso.com: new: mx [ip]:25: CERT_EXPIRING (warning)" in text


def test_recipients_are_checked() -> None:
    assert check_recipients("a@contoso.com, B <b@contoso.com>") == ["a@contoso.com", "b@contoso.com"]
    for bad in ("", "nobody", "a@contoso.com\r\nBcc: x@y.z"):
        with pytest.raises(UsageError):
            check_recipients(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("smtp.contoso.com", ("smtp.contoso.com", 25)),
        ("smtp.contoso.com:587", ("smtp.contoso.com", 587)),
        ("localhost", ("localhost", 25)),
        ("bücher.example:465", ("xn--bcher-kva.example", 465)),
        ("192.0.2.25:2525", ("192.0.2.25", 2525)),
        ("[2001:db8::25]:587", ("2001:db8::25", 587)),
        ("[::1]", ("::1", 25)),
        ("::1", ("::1", 25)),
    ],
)
def test_smtp_server_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_smtp_server(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (":", "give the submission server as HOST[:PORT]"),
        (":25", "give the submission server as HOST[:PORT]"),
        ("smtp.contoso.com:", "port '' is not a number"),
        ("smtp.contoso.com:submission", "port 'submission' is not a number"),
        ("[::1]:0", "port '0' is not a number"),
        ("[::1", "write an IPv6 address with a port as [ADDRESS]:PORT"),
        ("[smtp.contoso.com]:25", "write an IPv6 address with a port as [ADDRESS]:PORT"),
        ("smtp..contoso.com", "a host name has labels of 1 to 63"),
        ("smtp contoso.com", "a host name has labels of 1 to 63"),
        ("\u202esmtp.contoso.com", "not a valid internationalized host name"),
    ],
)
def test_smtp_server_that_names_no_usable_server_is_a_usage_error(text: str, reason: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse_smtp_server(text)
    assert str(raised.value).startswith(f"--smtp-server {text!r}: {reason}")
    assert "\n" not in str(raised.value)


# -- real mail through the lab -------------------------------------------------------------------------------


def test_report_mailed_through_the_lab_arrives_over_starttls(lab: Lab) -> None:
    # Given the lab's Internet mail host, which offers STARTTLS with a certificate from the lab CA
    marker = uuid.uuid4().hex
    changes = [NEW]

    # When the report is mailed to a recipient of its domain
    reply = asyncio.run(
        send_mail(
            _html(marker), BROKEN_DOC, to="postmaster@tailspintoys.com", server=TAILSPIN_IP, port=lab.smtp_port,
            sender="diag@contoso.com", ca_file=lab.ca_file, tls_name=TAILSPIN, timeout=5, changes=changes,
            environ={},
        )
    )  # fmt: skip

    # Then it is in the host's Maildir, received over TLS, with both parts and the headers
    assert reply.startswith("2.0.0 Ok")
    (message,) = _delivered(lab.mailbox("postmaster@tailspintoys.com"), marker)
    assert message["Subject"] == "diag: CRITICAL for contoso.com, expired.example"
    assert message["To"] == "postmaster@tailspintoys.com"
    assert message["From"] == "diag@contoso.com"
    assert message["Message-ID"].endswith("@contoso.com>")
    assert message["Date"]
    assert message["Auto-Submitted"] == "auto-generated"
    assert "with ESMTPS" in message["Received"]  # the lab host's trace header: the session used STARTTLS
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    assert text is not None and "expired.example: CRITICAL" in text.get_content()
    assert "contoso.com: new:" in text.get_content()


def test_untrusted_certificate_fails_instead_of_falling_back(lab: Lab) -> None:
    # selfsigned.example's host offers STARTTLS with a self-signed certificate
    marker = uuid.uuid4().hex
    with pytest.raises(NotifyError) as raised:
        asyncio.run(
            send_mail(
                _html(marker), OK_DOC, to="postmaster@selfsigned.example", server="127.0.20.4", port=lab.smtp_port,
                ca_file=lab.ca_file, tls_name="mx.selfsigned.example", timeout=5, environ={},
            )
        )  # fmt: skip
    message = str(raised.value)
    assert "\n" not in message
    assert "certificate is not trusted" in message
    assert _delivered(lab.maildir / "mx.selfsigned.example", marker, wait=0) == []


def test_wrong_certificate_name_fails(lab: Lab) -> None:
    with pytest.raises(NotifyError, match="certificate is not trusted: Hostname mismatch"):
        asyncio.run(
            send_mail(
                _html("x"), OK_DOC, to="postmaster@tailspintoys.com", server=TAILSPIN_IP, port=lab.smtp_port,
                ca_file=lab.ca_file, tls_name="smtp.contoso.com", timeout=5, environ={},
            )
        )  # fmt: skip


def test_without_starttls_credentials_are_never_sent(lab: Lab) -> None:
    # notls.example's host offers no STARTTLS
    with pytest.raises(NotifyError, match="does not offer STARTTLS; credentials are never sent without TLS"):
        asyncio.run(
            send_mail(
                _html("x"), OK_DOC, to="postmaster@notls.example", server="127.0.20.10", port=lab.smtp_port,
                timeout=5, environ=CREDENTIALS,
            )
        )  # fmt: skip


def test_without_starttls_and_credentials_the_mail_goes_in_plain_text(lab: Lab) -> None:
    marker = uuid.uuid4().hex
    asyncio.run(
        send_mail(
            _html(marker), OK_DOC, to="postmaster@notls.example", server="127.0.20.10", port=lab.smtp_port,
            sender="diag@contoso.com", timeout=5, environ={},
        )
    )  # fmt: skip
    (message,) = _delivered(lab.maildir / "mx.notls.example", marker)
    assert "with ESMTP id " in message["Received"]  # not ESMTPS: the session stayed in plain text


def test_credentials_need_a_server_that_offers_auth(lab: Lab) -> None:
    with pytest.raises(NotifyError, match="does not offer AUTH"):
        asyncio.run(
            send_mail(
                _html("x"), OK_DOC, to="postmaster@tailspintoys.com", server=TAILSPIN_IP, port=lab.smtp_port,
                ca_file=lab.ca_file, tls_name=TAILSPIN, timeout=5, environ=CREDENTIALS,
            )
        )  # fmt: skip


def test_refused_recipient_is_one_line(lab: Lab) -> None:
    with pytest.raises(NotifyError) as raised:
        asyncio.run(
            send_mail(
                _html("x"), OK_DOC, to="someone@contoso.com", server="127.0.20.18", port=lab.smtp_port,
                ca_file=lab.ca_file, tls_name="mx2.multi.example", timeout=5, environ={},
            )
        )  # fmt: skip
    assert "recipient someone@contoso.com refused: 554 5.7.1 Relay access denied" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_connection_refused_is_one_line() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(NotifyError, match=rf"^notification mail via 127\.0\.0\.1:{port}: .+"):
        asyncio.run(send_mail("<p>x</p>", OK_DOC, to="a@contoso.com", server="127.0.0.1", port=port, timeout=2))


def test_half_set_credentials_are_refused() -> None:
    with pytest.raises(NotifyError, match="set both DIAG_SMTP_USERNAME and DIAG_SMTP_PASSWORD"):
        asyncio.run(
            send_mail("<p>x</p>", OK_DOC, to="a@contoso.com", server="127.0.0.1", port=1,
                      environ={"DIAG_SMTP_USERNAME": "alerts@contoso.com"})
        )  # fmt: skip


# -- a submission server with AUTH (aiosmtpd on loopback, lab PKI) -------------------------------------------


@dataclass
class _Submission:
    """What a small submission server saw."""

    logins: list[tuple[str, str, bool]] = field(default_factory=list)
    """(username, password, over TLS)."""
    messages: list[bytes] = field(default_factory=list)


class _Authenticator:
    def __init__(self, seen: _Submission) -> None:
        self._seen = seen

    def __call__(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        user, password = data.login.decode(), data.password.decode()
        # The transport in use when the credentials arrived: TLS after STARTTLS, or TLS from the start.
        tls = server.transport is not None and server.transport.get_extra_info("sslcontext") is not None
        self._seen.logins.append((user, password, tls))
        return AuthResult(success=(user, password) == ("alerts@contoso.com", "s3cret"), handled=False)


class _Store:
    def __init__(self, seen: _Submission) -> None:
        self._seen = seen

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.original_content, bytes)
        self._seen.messages.append(envelope.original_content)
        return "250 2.0.0 queued as 1234"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    directory = tmp_path_factory.mktemp("submission-pki")
    authority = TestPKI.create()
    chain, key = authority.issue(["smtp.contoso.test"]).write(directory, "smtp")
    return authority.write_root(directory / "root.pem"), chain, key


async def _with_submission_server(
    pki: tuple[Path, Path, Path], *, starttls: bool, implicit: bool = False, **send: Any
) -> _Submission:
    root, chain, key = pki
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    seen = _Submission()
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        return SMTP(
            _Store(seen), hostname="smtp.contoso.test", tls_context=context if starttls else None,
            authenticator=_Authenticator(seen), auth_require_tls=starttls, loop=loop,
        )  # fmt: skip

    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=context if implicit else None)
    port = server.sockets[0].getsockname()[1]
    try:
        await send_mail(
            _html("submitted"), WARNING_DOC, to="postmaster@contoso.com", server="127.0.0.1", port=port,
            ca_file=root, tls_name="smtp.contoso.test", timeout=5, implicit_tls=implicit, **send,
        )  # fmt: skip
    finally:
        server.close()
        await server.wait_closed()
    return seen


def test_login_after_starttls(pki: tuple[Path, Path, Path]) -> None:
    seen = asyncio.run(_with_submission_server(pki, starttls=True, environ=CREDENTIALS))
    assert seen.logins == [("alerts@contoso.com", "s3cret", True)]
    (raw,) = seen.messages
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["From"] == "alerts@contoso.com"  # the username is an address: it is the default sender
    assert message["Subject"] == "diag: WARNING for contoso.com"


def test_login_over_implicit_tls(pki: tuple[Path, Path, Path]) -> None:
    seen = asyncio.run(_with_submission_server(pki, starttls=False, implicit=True, environ=CREDENTIALS))
    assert seen.logins == [("alerts@contoso.com", "s3cret", True)]
    assert len(seen.messages) == 1


def test_wrong_password_is_one_line(pki: tuple[Path, Path, Path]) -> None:
    wrong = {**CREDENTIALS, "DIAG_SMTP_PASSWORD": "guess"}
    with pytest.raises(NotifyError, match=r"refused: 535 .*") as raised:
        asyncio.run(_with_submission_server(pki, starttls=True, environ=wrong))
    assert "guess" not in str(raised.value)


def test_auth_offered_in_plain_text_is_not_used(pki: tuple[Path, Path, Path]) -> None:
    # A server that offers AUTH without TLS: diag refuses before sending anything (security-cases PC-05)
    with pytest.raises(NotifyError, match="credentials are never sent without TLS"):
        asyncio.run(_with_submission_server(pki, starttls=False, environ=CREDENTIALS))


# -- webhook -------------------------------------------------------------------------------------------------


@dataclass
class _Hook:
    url: str
    requests: list[tuple[str, str, dict[str, str], bytes]]
    answer: list[int]


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Hook]:
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    requests: list[tuple[str, str, dict[str, str], bytes]] = []
    answer = [204]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            requests.append(("POST", self.path, dict(self.headers), body))
            code = answer[0]
            self.send_response(code)
            if 300 <= code < 400:
                self.send_header("Location", "/elsewhere")
            payload = b"" if code == 204 else b"go away\n"
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            requests.append(("GET", self.path, dict(self.headers), b""))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield _Hook(f"http://127.0.0.1:{server.server_address[1]}/hooks/diag", requests, answer)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_webhook_receives_the_json(hook: _Hook) -> None:
    status = asyncio.run(post_webhook(hook.url, BROKEN_DOC, timeout=5))
    assert status == 204
    ((method, path, headers, body),) = hook.requests
    assert (method, path) == ("POST", "/hooks/diag")
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == BROKEN_DOC


def test_webhook_error_answer_is_a_notify_error(hook: _Hook) -> None:
    hook.answer[0] = 500
    with pytest.raises(NotifyError) as raised:
        asyncio.run(post_webhook(hook.url + "?token=secret", BROKEN_DOC, timeout=5))
    message = str(raised.value)
    assert message.startswith(f"webhook {hook.url} answered 500")
    assert "go away" in message and "secret" not in message and "\n" not in message


def test_webhook_redirect_is_not_followed(hook: _Hook) -> None:
    hook.answer[0] = 302
    with pytest.raises(NotifyError, match="answered 302"):
        asyncio.run(post_webhook(hook.url, OK_DOC, timeout=5))
    assert [r[0] for r in hook.requests] == ["POST"]  # no GET to /elsewhere


def test_webhook_unreachable_is_one_line() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(NotifyError, match=rf"^webhook http://127\.0\.0\.1:{port}/x: Connection refused$"):
        asyncio.run(post_webhook(f"http://127.0.0.1:{port}/x", OK_DOC, timeout=2))


def test_webhook_that_never_answers_times_out() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/slow"
        with pytest.raises(NotifyError, match=r"no answer within 0\.5 s"):
            asyncio.run(post_webhook(url, OK_DOC, timeout=0.5))


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "http:///nohost", "http://a b/"])
def test_webhook_url_must_be_http(url: str) -> None:
    with pytest.raises(UsageError):
        check_webhook_url(url)
    with pytest.raises(NotifyError):
        asyncio.run(post_webhook(url, OK_DOC, timeout=1))


def test_webhook_url_beyond_ascii_is_sent_percent_encoded(hook: _Hook) -> None:
    """Given a path and query beyond ASCII, and bytes that are not UTF-8 as argv carries them (PEP 383)."""
    assert asyncio.run(post_webhook(hook.url + "/büro?to=équipe", OK_DOC, timeout=5)) == 204
    assert asyncio.run(post_webhook(hook.url + os.fsdecode(b"/\xff"), OK_DOC, timeout=5)) == 204
    assert [path for _, path, _, _ in hook.requests] == ["/hooks/diag/b%C3%BCro?to=%C3%A9quipe", "/hooks/diag/%FF"]


def test_webhook_host_beyond_ascii_is_accepted_when_it_has_a_name_in_a_labels() -> None:
    assert check_webhook_url("https://bücher.example/hook") == "https://bücher.example/hook"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://a..b/", "labels of 1 to 63"),
        ("http://" + "a" * 64 + "/", "labels of 1 to 63"),
        ("http://" + "a." * 127 + "b/", "253 characters at most"),
        ("http://hooks!example/", "labels of 1 to 63"),
        ("http://\u202e127.0.0.1:9/", "not a valid internationalized host name"),
        ("http://user:pa55@127.0.0.1:9/", "user:password@ is not supported"),
    ],
)
def test_webhook_url_that_cannot_be_sent_is_refused_up_front(url: str, reason: str) -> None:
    with pytest.raises(UsageError, match=re.escape(reason)) as refused:
        check_webhook_url(url)
    with pytest.raises(NotifyError, match=re.escape(reason)) as failed:
        asyncio.run(post_webhook(url, OK_DOC, timeout=1))
    for message in (str(refused.value), str(failed.value)):
        assert "pa55" not in message and "\u202e" not in message and "\n" not in message


def test_https_webhook_verifies_the_certificate(tmp_path: Path) -> None:
    authority = TestPKI.create()
    chain, key = authority.issue(["localhost"]).write(tmp_path, "localhost")
    root = authority.write_root(tmp_path / "root.pem")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        # Trusted through the given CA, for the name in the certificate
        assert asyncio.run(post_webhook(f"https://localhost:{port}/hook", OK_DOC, timeout=5, ca_file=root)) == 200
        # The certificate names localhost, not 127.0.0.1: refused even with the right CA
        with pytest.raises(NotifyError, match="mismatch"):
            asyncio.run(post_webhook(f"https://127.0.0.1:{port}/hook", OK_DOC, timeout=5, ca_file=root))
        # Without the lab CA: refused
        with pytest.raises(NotifyError, match="certificate"):
            asyncio.run(post_webhook(f"https://localhost:{port}/hook", OK_DOC, timeout=5))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert [json.loads(body) for body in received] == [OK_DOC]


def test_webhook_url_secrets_stay_out_of_errors() -> None:
    with pytest.raises(UsageError) as raised:
        check_webhook_url("http://user:pa55@hooks.example:99999/x?token=t0k3n")
    assert "pa55" not in str(raised.value) and "t0k3n" not in str(raised.value)


def test_unusable_ca_file_is_a_notify_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for ca_file, expected in ((tmp_path / "missing.pem", "cannot read the CA file"), (garbage, "no usable")):
        with pytest.raises(NotifyError, match=expected):
            asyncio.run(send_mail("<p>x</p>", OK_DOC, to="a@contoso.com", server="127.0.0.1", port=1, ca_file=ca_file))
        with pytest.raises(NotifyError, match=expected):
            asyncio.run(post_webhook("https://127.0.0.1:1/x", OK_DOC, timeout=1, ca_file=ca_file))
