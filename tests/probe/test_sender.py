"""The sender against real aiosmtpd servers on loopback: accepted, refused at each stage, TLS both ways, AUTH only
over verified TLS, and never a password in what it returns (security-cases.md PC-05, PR-06)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from diag.probe.message import Probe, build_probe
from diag.probe.sender import Accepted, Credentials, Refused, Stage, Via, send_probe, verification_required

NAME = "mail.probe.test"
PASSWORD = "s3cret-Pa55word"


@dataclass
class Handler:
    """Records what arrived; refuses at the stage it is told to."""

    refuse: str = ""
    received: list[bytes] = field(default_factory=list)
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:  # fmt: skip
        if self.refuse == "mail":
            return "553 5.7.1 Sender rejected"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:  # fmt: skip
        if self.refuse == "rcpt":
            return "550 5.7.64 TenantAttribution; Relay Access Denied"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refuse == "data":
            return "554 5.7.1 Message rejected as spam"
        self.received.append(envelope.original_content or b"")
        return "250 2.0.0 queued as ABC123"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     auth_data: Any) -> AuthResult:  # fmt: skip
        assert isinstance(auth_data, LoginPassword)
        self.logins.append((auth_data.login, auth_data.password))
        if auth_data.password == PASSWORD.encode():
            return AuthResult(success=True)
        # A hostile server echoes what it was sent: the sender must not carry it on.
        echo = f"535 5.7.8 bad credentials {auth_data.password.decode()} {auth_data.login.decode()}"
        return AuthResult(success=False, handled=False, message=echo)


@asynccontextmanager
async def smtp_server(handler: Handler, *, starttls: ssl.SSLContext | None = None,
                      implicit: ssl.SSLContext | None = None, auth: bool = False,
                      auth_require_tls: bool = True) -> AsyncIterator[int]:  # fmt: skip
    """A real aiosmtpd server on 127.0.0.1 and a free port, yielding the port."""

    def factory() -> SMTP:
        return SMTP(
            handler,
            hostname=NAME,
            tls_context=starttls,
            require_starttls=False,
            authenticator=handler.authenticate if auth else None,
            auth_require_tls=auth_require_tls,
            auth_exclude_mechanism=["CRAM-MD5"],
        )

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0, ssl=implicit)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


Issuer = Callable[[str], tuple[Path, Path]]


def probe() -> Probe:
    return build_probe(run="run-1", name="John to Sun", sender="john@contoso.com", recipient="sun@tailspintoys.com",
                       key=None, now=datetime.now(UTC))  # fmt: skip


def server_context(issue: Issuer, name: str = NAME) -> ssl.SSLContext:
    chain, key = issue(name)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    return context


def run(handler: Handler, *, host: str = NAME, server_options: dict[str, Any] | None = None,
        **options: Any) -> Accepted | Refused:  # fmt: skip
    async def go() -> Accepted | Refused:
        async with smtp_server(handler, **(server_options or {})) as port:
            return await send_probe(
                probe(), Via(host, port, address="127.0.0.1"), timeout=5, ehlo_name="probe.diag.test", **options
            )

    return asyncio.run(go())


def test_accepted_in_clear_records_the_reply_and_time() -> None:
    handler = Handler()
    result = run(handler)
    assert isinstance(result, Accepted)
    assert (result.code, result.reply) == (250, "2.0.0 queued as ABC123")
    assert result.accepted_at.tzinfo is not None and result.tls is None
    (content,) = handler.received
    assert b"X-Diag-Probe: v=1; run=run-1;" in content


def test_starttls_is_used_when_offered_and_verified(issue: Issuer, ca_file: Path) -> None:
    handler = Handler()
    result = run(handler, server_options={"starttls": server_context(issue)}, ca_file=ca_file)
    assert isinstance(result, Accepted) and result.tls is not None
    assert result.tls.version in ("TLSv1.2", "TLSv1.3") and result.tls.cipher
    assert result.tls.verified and result.tls.verify_error == "" and not result.tls.implicit


def test_an_mx_with_a_certificate_for_another_name_is_a_fact_not_a_refusal(issue: Issuer, ca_file: Path) -> None:
    # Port 25 without credentials is an MX hop: opportunistic TLS (RFC 3207 §4.1), the failure is reported.
    handler = Handler()
    context = server_context(issue, "other.probe.test")

    async def go() -> Accepted | Refused:
        async with smtp_server(handler, starttls=context) as port:
            return await send_probe(probe(), Via(NAME, port, address="127.0.0.1"), timeout=5,
                                    ehlo_name="probe.diag.test", ca_file=ca_file, verify=False)  # fmt: skip

    result = asyncio.run(go())
    assert isinstance(result, Accepted) and result.tls is not None
    assert not result.tls.verified and "no matching subjectAltName for mail.probe.test" in result.tls.verify_error


def test_who_must_verify() -> None:
    # An MX hop (port 25, no credentials) reports a failed verification; submission refuses it.
    assert not verification_required(Via(NAME, 25), credentials=None)
    assert verification_required(Via(NAME, 25), credentials=Credentials("john", PASSWORD))
    assert verification_required(Via(NAME, 587), credentials=None)
    assert verification_required(Via(NAME, 465), credentials=None)


def test_submission_refuses_a_certificate_that_does_not_verify(issue: Issuer, ca_file: Path) -> None:
    # Any port but 25 is submission: verification is required before AUTH or MAIL.
    handler = Handler()
    result = run(handler, server_options={"starttls": server_context(issue, "other.probe.test")},
                 ca_file=ca_file)  # fmt: skip
    assert isinstance(result, Refused) and result.stage is Stage.TLS and result.code is None
    assert "does not verify" in result.reply and result.tls is not None and not result.tls.verified
    assert handler.received == []


def test_implicit_tls(issue: Issuer, ca_file: Path) -> None:
    handler = Handler()
    result = run(handler, server_options={"implicit": server_context(issue)}, ca_file=ca_file,
                 implicit_tls=True)  # fmt: skip
    assert isinstance(result, Accepted) and result.tls is not None and result.tls.implicit and result.tls.verified


def test_implicit_tls_against_a_plain_server_fails_at_the_tls_stage(issue: Issuer, ca_file: Path) -> None:
    result = run(Handler(), ca_file=ca_file, implicit_tls=True)
    assert isinstance(result, Refused) and result.stage is Stage.TLS


@pytest.mark.parametrize(
    ("refuse", "stage", "code"), [("mail", Stage.MAIL, 553), ("rcpt", Stage.RCPT, 550), ("data", Stage.DATA, 554)]
)
def test_refusals_name_their_stage_and_reply(refuse: str, stage: Stage, code: int) -> None:
    result = run(Handler(refuse=refuse))
    assert isinstance(result, Refused)
    assert (result.stage, result.code, result.permanent) == (stage, code, True)
    assert result.reply.startswith(str(code))


def test_require_tls_refuses_a_server_without_starttls() -> None:
    handler = Handler()
    result = run(handler, require_tls=True)
    assert isinstance(result, Refused) and result.stage is Stage.STARTTLS and result.code is None
    assert handler.received == []


def test_auth_over_verified_tls(issue: Issuer, ca_file: Path) -> None:
    handler = Handler()
    result = run(handler, server_options={"starttls": server_context(issue), "auth": True}, ca_file=ca_file,
                 credentials=Credentials("john@contoso.com", PASSWORD))  # fmt: skip
    assert isinstance(result, Accepted)
    assert handler.logins == [(b"john@contoso.com", PASSWORD.encode())]


def test_credentials_are_never_sent_in_clear_even_when_auth_is_offered() -> None:
    handler = Handler()
    result = run(handler, server_options={"auth": True, "auth_require_tls": False},
                 credentials=Credentials("john@contoso.com", PASSWORD))  # fmt: skip
    assert isinstance(result, Refused) and result.stage is Stage.STARTTLS
    assert handler.logins == [] and handler.received == []


def test_a_refused_login_never_carries_the_password(issue: Issuer, ca_file: Path) -> None:
    handler = Handler()
    wrong = "Wr0ng-pass"
    result = run(handler, server_options={"starttls": server_context(issue), "auth": True}, ca_file=ca_file,
                 credentials=Credentials("john@contoso.com", wrong))  # fmt: skip
    assert isinstance(result, Refused) and (result.stage, result.code) == (Stage.AUTH, 535)
    assert handler.logins and wrong not in result.reply and wrong not in repr(result)
    assert "***" in result.reply
    assert wrong not in repr(Credentials("john@contoso.com", wrong))


def test_connection_refused_is_a_fact(tmp_path: Path) -> None:
    async def go() -> Accepted | Refused:
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        return await send_probe(probe(), Via(NAME, port, address="127.0.0.1"), timeout=5, ehlo_name="x.test")

    result = asyncio.run(go())
    assert isinstance(result, Refused) and (result.stage, result.code) == (Stage.CONNECT, None)
    assert "cannot connect" in result.reply


def test_a_silent_server_times_out_at_the_greeting() -> None:
    async def go() -> Accepted | Refused:
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            return await send_probe(probe(), Via(NAME, port, address="127.0.0.1"), timeout=0.5,
                                    ehlo_name="x.test")  # fmt: skip
        finally:
            server.close()

    result = asyncio.run(go())
    assert isinstance(result, Refused) and result.stage is Stage.CONNECT and result.timed_out


def test_greeting_rejection() -> None:
    class Rejecting(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(b"554 5.3.2 No service here\r\n")

    async def go() -> Accepted | Refused:
        server = await asyncio.get_running_loop().create_server(Rejecting, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            return await send_probe(probe(), Via(NAME, port, address="127.0.0.1"), timeout=2, ehlo_name="x.test")
        finally:
            server.close()

    result = asyncio.run(go())
    assert isinstance(result, Refused) and (result.stage, result.code) == (Stage.CONNECT, 554)


def test_via_names_the_address_it_connects_to() -> None:
    assert str(Via("mx.contoso.com", 25, address="192.0.2.5")) == "mx.contoso.com [192.0.2.5]:25"
    assert str(Via("mx.contoso.com")) == "mx.contoso.com:25"
