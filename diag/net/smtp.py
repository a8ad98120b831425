"""The SMTP session probe: one session per (IP, port) serves every check that needs one.

A session connects to an address, waits for the greeting, says EHLO (HELO if EHLO is refused), starts TLS when
STARTTLS is offered, says EHLO again and quits, recording what it saw at each stage: timings, the greeting,
the extensions, the TLS version and cipher and the certificate chain exactly as sent. It judges nothing;
the port-25, STARTTLS and certificate checks judge the same :class:`SessionFacts` (defined in
:mod:`diag.net.smtp_facts`, which needs no aiosmtplib, and imported here too).

The facts are complete once QUIT is sent: the reply to it says nothing about the server, so it is not part of
them. A caller that passes ``farewells`` gets the facts at once, a round trip sooner, while the goodbye (waiting
for that reply, at most a few seconds, then closing) goes on in a task it owns; without it the session waits for
the reply itself. Either way QUIT is always sent (security-cases.md PC-21).

The TLS handshake is done without verification so that "STARTTLS works" and "the certificate is valid" are
two verdicts; the chain is verified separately (diag.net.tls). The client context accepts old protocols and
weak keys (OpenSSL security level 0) so that a host offering only those is observed, not just "failed".

A greeting that is a multi-line rejection that never ends (``421-`` lines, over and over) is still a rejected
greeting: aiosmtplib gives up on it (its reply limit of 32 KiB, the timeout, or the server closing mid-reply)
and keeps none of its text, so the probe peeks at the first bytes of the greeting before aiosmtplib reads them
and records the code and the first lines from there.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
import warnings
from collections.abc import Iterable
from dataclasses import replace

import aiosmtplib

from diag.net.smtp_facts import SessionError, SessionFacts, SessionStage, TlsFacts

__all__ = ["SessionError", "SessionFacts", "SessionStage", "TlsFacts", "probe_session"]

# How much of the greeting is peeked at before aiosmtplib reads it, and how many of its lines are kept when the
# reply never ends: enough to show the server's words, bounded like any text from the network.
_GREETING_PEEK = 4096
_GREETING_LINES = 5
# A continuation line of a rejecting reply: 4xx or 5xx, then "-" (RFC 5321 §4.2.1).
# The peek may end inside a line: the last one counts as far as it goes.
_REJECT_CONTINUATION = re.compile(rb"([45][0-5][0-9])-([^\r\n]*)(?:\r?\n|\Z)")


def probe_context() -> ssl.SSLContext:
    """A client context that completes a handshake with anything it can, to observe it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # Observe TLS 1.0/1.1-only hosts and weak keys instead of failing on them (security-cases.md PC-14);
    # Python deprecates naming TLSv1 because it is weak, which is exactly what we want to detect.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


class _Recorder:
    """Collects the facts of one session as it goes: the session so far (typed, replaced field by field) and the
    transcript."""

    def __init__(self, ip: str, port: int, server_name: str) -> None:
        self.session = SessionFacts(ip, port, server_name)
        self.transcript: list[str] = []
        self.clock = time.monotonic()
        # The connection's transport as it was before STARTTLS put a TLS transport over it.
        self.transport: asyncio.BaseTransport | None = None

    def lap(self) -> float:
        now = time.monotonic()
        elapsed, self.clock = now - self.clock, now
        return elapsed

    def client(self, line: str) -> None:
        self.transcript.append(f"C: {line}")

    def server(self, code: int, message: str) -> None:
        lines = message.splitlines() or [""]
        for index, line in enumerate(lines):
            sep = " " if index == len(lines) - 1 else "-"
            self.transcript.append(f"S: {code}{sep}{line}")

    def stop(self, error: SessionError, detail: str) -> None:
        self.session = replace(self.session, error=error, detail=detail)

    def facts(self) -> SessionFacts:
        s = self.session
        return replace(
            s, ip=_text(s.ip), server_name=_text(s.server_name), detail=_text(s.detail), greeting=_text(s.greeting),
            extensions=_texts(s.extensions), starttls_reply=_text(s.starttls_reply),
            tls_extensions=_texts(s.tls_extensions), transcript=_texts(self.transcript),
        )  # fmt: skip


def _text(value: str) -> str:
    """Server text as valid Unicode: aiosmtplib decodes replies with "surrogateescape", so bytes that are not
    UTF-8 arrive as lone surrogates, which no JSON parser, SQLite or terminal takes; they become ``\\xff``."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _texts(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(_text(value) for value in values)


async def probe_session(
    ip: str,
    port: int,
    server_name: str,
    *,
    ehlo_name: str,
    timeout: float,  # noqa: ASYNC109 - bounds each operation; the caller's deadline bounds the session
    farewells: set[asyncio.Task[None]] | None = None,
) -> SessionFacts:
    """Run one probing SMTP session; never raises for network trouble, records it instead.

    ``timeout`` bounds each network operation (connect, each reply, the TLS handshake). With ``farewells``, the
    goodbye after QUIT goes on in a task added to that set, which the caller cancels or awaits when it is done
    (module docstring); the task leaves the set when it ends.
    """
    rec = _Recorder(ip, port, server_name)
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    smtp: aiosmtplib.SMTP | None = None
    try:
        smtp = await _session(rec, sock, ip, port, server_name, ehlo_name=ehlo_name, timeout=timeout)
    finally:
        if smtp is None or not smtp.is_connected:  # no goodbye to say: ended early, cancelled or crashed
            _hang_up(rec, smtp, sock)
    if smtp is None or not smtp.is_connected:
        return rec.facts()
    rec.client("QUIT")
    facts = rec.facts()
    goodbye = asyncio.ensure_future(_quit(smtp))
    # A done callback runs even for a task cancelled before it started: the connection is always closed.
    goodbye.add_done_callback(lambda _task: _hang_up(rec, smtp, sock))
    if farewells is None:
        await goodbye
    else:
        farewells.add(goodbye)
        goodbye.add_done_callback(farewells.discard)
    return facts


async def _session(rec: _Recorder, sock: socket.socket, ip: str, port: int, server_name: str, *, ehlo_name: str,
                   timeout: float) -> aiosmtplib.SMTP | None:  # noqa: ASYNC109 - as probe_session's  # fmt: skip
    """The session up to QUIT; returns the client when there is one to say goodbye with."""
    try:
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, (ip, port))
    except ConnectionRefusedError:
        rec.stop(SessionError.REFUSED, "connection refused")
        return None
    except TimeoutError:
        rec.stop(SessionError.CONNECT_TIMEOUT, f"no TCP connection within {timeout:g} s")
        return None
    except OSError as exc:
        rec.stop(SessionError.UNREACHABLE, exc.strerror or str(exc))
        return None
    rec.session = replace(rec.session, connect_s=rec.lap(), reached=SessionStage.CONNECT)
    waited = time.monotonic()
    try:
        start = await _peek(sock, timeout)
    except TimeoutError:
        rec.stop(SessionError.BANNER_TIMEOUT, f"no greeting within {timeout:g} s")
        return None
    smtp = aiosmtplib.SMTP(sock=sock, local_hostname=ehlo_name, timeout=timeout, start_tls=False, use_tls=False)
    try:
        # The greeting gets one timeout in all: the wait for its first byte counts.
        remaining = max(timeout - (time.monotonic() - waited), 0.001)
        await _converse(smtp, rec, server_name, start, remaining)
    except BaseException:
        # Cancelled by the run's deadline (or a bug): no time for a goodbye that may take seconds.
        _hang_up(rec, smtp, sock)
        raise
    return smtp


def _hang_up(rec: _Recorder, smtp: aiosmtplib.SMTP | None, sock: socket.socket) -> None:
    """Close the connection now, whatever state it is in.

    The connection's own transport is aborted before its socket is closed: a TLS transport closed politely waits
    for the server's close_notify with the connection's transport still open, and a socket closed under an open
    transport frees its descriptor for the next connection while the event loop still counts it as in use.
    """
    raw = rec.transport or (smtp.transport if smtp is not None else None)
    if isinstance(raw, asyncio.Transport):
        raw.abort()
    elif raw is not None:
        raw.close()
    if smtp is not None:
        smtp.close()
    sock.close()


async def _peek(sock: socket.socket, timeout: float) -> bytes:  # noqa: ASYNC109 - the greeting's own bound
    """The first bytes of the greeting, left in the socket for aiosmtplib to read (``MSG_PEEK``).

    Waits until the socket is readable; raises TimeoutError when nothing arrives within ``timeout`` (a tarpit).
    Returns b"" when the server closed or reset the connection; aiosmtplib then finds that out itself.
    """
    loop = asyncio.get_running_loop()
    readable = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(sock.fileno(), ready)
    try:
        async with asyncio.timeout(timeout):
            await readable
    finally:
        loop.remove_reader(sock.fileno())
    try:
        return sock.recv(_GREETING_PEEK, socket.MSG_PEEK)
    except OSError:  # BlockingIOError on a spurious wake-up, ConnectionResetError: nothing to keep
        return b""


def _unfinished_rejection(start: bytes) -> tuple[int, tuple[str, ...]] | None:
    """The code and first lines of ``start`` when it opens a multi-line 4xx/5xx reply, else None."""
    code: bytes | None = None
    lines: list[str] = []
    position = 0
    while len(lines) < _GREETING_LINES and (match := _REJECT_CONTINUATION.match(start, position)):
        if code is not None and match.group(1) != code:
            break
        code, position = match.group(1), match.end()
        lines.append(match.group(2).decode("utf-8", "surrogateescape").strip(" \t"))
    if code is None:
        return None
    return int(code), tuple(lines)


async def _converse(smtp: aiosmtplib.SMTP, rec: _Recorder, server_name: str, start: bytes, greeting_within: float
                    ) -> None:  # fmt: skip
    """The session after the TCP connect; ``start`` is the peeked start of the greeting, which must be complete
    within ``greeting_within`` seconds."""
    try:
        greeting = await smtp.connect(timeout=greeting_within)
    except aiosmtplib.SMTPConnectResponseError as exc:
        rec.session = replace(rec.session, banner_s=rec.lap(), greeting_code=exc.code, greeting=exc.message)
        rec.server(exc.code, exc.message)
        rec.stop(SessionError.GREETING_REJECTED, f"{exc.code} {exc.message}")
        return
    except (aiosmtplib.SMTPException, OSError) as exc:
        rejection = _unfinished_rejection(start)
        if rejection is not None:
            # RFC 5321 §4.2.1: the code on the first line is the reply's code; a 421 greeting that never ends
            # is still "service not available" (rate limiting), not a broken session.
            _unfinished_greeting(rec, *rejection, exc, smtp.timeout)
        elif isinstance(exc, aiosmtplib.SMTPTimeoutError):
            rec.stop(SessionError.BANNER_TIMEOUT, f"no greeting within {smtp.timeout:g} s")
        else:
            rec.stop(SessionError.DISCONNECTED, f"before the greeting: {exc}")
        return
    rec.session = replace(rec.session, banner_s=rec.lap(), greeting_code=greeting.code, greeting=greeting.message)
    rec.server(greeting.code, greeting.message)
    rec.session = replace(rec.session, reached=SessionStage.BANNER)

    if not await _hello(smtp, rec, after_tls=False):
        return
    rec.session = replace(rec.session, reached=SessionStage.EHLO)
    if not smtp.supports_extension("starttls"):
        rec.session = replace(rec.session, reached=SessionStage.DONE)
        return
    rec.session = replace(rec.session, starttls_offered=True)

    rec.client("STARTTLS")
    rec.transport = smtp.transport
    try:
        reply = await smtp.starttls(server_hostname=server_name, tls_context=probe_context())
    except aiosmtplib.SMTPResponseException as exc:
        rec.session = replace(rec.session, tls_s=rec.lap(), starttls_code=exc.code, starttls_reply=exc.message)
        rec.server(exc.code, exc.message)
        rec.stop(SessionError.STARTTLS_REJECTED, f"{exc.code} {exc.message}")
        return
    except aiosmtplib.SMTPTimeoutError:
        rec.stop(SessionError.TLS_FAILED, f"no STARTTLS reply or handshake within {smtp.timeout:g} s")
        return
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
        rec.stop(SessionError.TLS_FAILED, _tls_error_text(exc))
        return
    rec.session = replace(rec.session, tls_s=rec.lap(), starttls_code=reply.code, starttls_reply=reply.message)
    rec.server(reply.code, reply.message)
    ssl_object = smtp.transport.get_extra_info("ssl_object") if smtp.transport else None
    if ssl_object is None:
        rec.stop(SessionError.TLS_FAILED, "STARTTLS answered but no TLS session was established")
        return
    cipher = ssl_object.cipher()
    tls = TlsFacts(
        version=ssl_object.version() or "",
        cipher=cipher[0] if cipher else "",
        server_name=server_name,
        chain_der=_peer_chain(ssl_object),
    )
    rec.session = replace(rec.session, tls=tls, reached=SessionStage.STARTTLS)
    if await _hello(smtp, rec, after_tls=True):
        rec.session = replace(rec.session, reached=SessionStage.DONE)


def _unfinished_greeting(
    rec: _Recorder, code: int, lines: tuple[str, ...], exc: BaseException, timeout: float | None
) -> None:
    rec.session = replace(
        rec.session, banner_s=rec.lap(), greeting_code=code, greeting="\n".join(lines), greeting_unfinished=True
    )
    rec.transcript.extend(f"S: {code}-{line}" for line in lines)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError):
        why = f"not finished within {timeout or 0:g} s"
    elif isinstance(exc, aiosmtplib.SMTPResponseException):
        why = f"given up on: {exc.message}"
    else:
        why = "the server closed the connection in the middle of it"
    rec.stop(SessionError.GREETING_REJECTED, f"{code} {lines[0]} (a multi-line greeting that never ended: {why})")


async def _hello(smtp: aiosmtplib.SMTP, rec: _Recorder, *, after_tls: bool) -> bool:
    """EHLO, falling back to HELO before TLS (RFC 5321 §4.1.4); records the extensions."""
    rec.client(f"EHLO {smtp.local_hostname}")
    try:
        reply = await smtp.ehlo()
    except aiosmtplib.SMTPHeloError as exc:
        rec.server(exc.code, exc.message)
        if after_tls:
            rec.stop(SessionError.EHLO_REJECTED, f"EHLO after STARTTLS: {exc.code} {exc.message}")
            return False
        rec.client(f"HELO {smtp.local_hostname}")
        try:
            reply = await smtp.helo()
        except aiosmtplib.SMTPHeloError as helo_exc:
            rec.server(helo_exc.code, helo_exc.message)
            rec.session = replace(rec.session, ehlo_s=rec.lap(), ehlo_code=helo_exc.code)
            rec.stop(SessionError.EHLO_REJECTED, f"{exc.code} {exc.message}; HELO: {helo_exc.code}")
            return False
        except (aiosmtplib.SMTPException, OSError) as helo_exc:
            rec.stop(_stop_for(helo_exc), str(helo_exc))
            return False
        rec.session = replace(rec.session, helo_fallback=True)
    except (aiosmtplib.SMTPException, OSError) as exc:
        rec.stop(_stop_for(exc), str(exc))
        return False
    rec.server(reply.code, reply.message)
    lines = tuple(line.strip() for line in reply.message.splitlines()[1:] if line.strip())
    if after_tls:
        rec.session = replace(rec.session, tls_extensions=lines)
    else:
        rec.session = replace(rec.session, ehlo_s=rec.lap(), ehlo_code=reply.code, extensions=lines)
    return True


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    """Say goodbye (security-cases.md PC-21) and wait a little for the reply; the caller closes the connection."""
    try:
        async with asyncio.timeout(min(smtp.timeout or 5.0, 5.0)):
            await smtp.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        pass  # the server went away or does not answer: closed all the same


def _stop_for(exc: BaseException) -> SessionError:
    if isinstance(exc, TimeoutError):
        return SessionError.TIMEOUT
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return SessionError.DISCONNECTED
    return SessionError.PROTOCOL


def _tls_error_text(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError):
        return f"TLS handshake failed: {cause.reason or cause}"
    return f"TLS handshake failed: {exc}"


def _peer_chain(ssl_object: ssl.SSLObject) -> tuple[bytes, ...]:
    """The certificates the server sent, leaf first, as DER.

    The unverified chain is public API from Python 3.13 (``SSLObject.get_unverified_chain``); on 3.11 and
    3.12 the same method exists on the private ``_sslobj``. Without either only the leaf can be read.
    """
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if getter is not None:
        import _ssl  # the private module's DER constant, for the private method's return type

        chain = getter() or []
        return tuple(
            cert if isinstance(cert, bytes) else cert.public_bytes(_ssl.ENCODING_DER) for cert in chain
        )
    leaf = ssl_object.getpeercert(binary_form=True)
    return (leaf,) if leaf else ()
