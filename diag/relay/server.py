"""The relay's SMTP server: aiosmtpd, hardened as security-cases.md §1 asks, with durable acceptance.

    server = RelayServer(settings, spool, on_queued=deliverer.queued)
    await server.start()      # listens on every settings.listen endpoint, on the running loop
    ...
    await server.close()      # stops listening, aborts sessions, waits a bounded time

What aiosmtpd does not do, this module adds (RR numbers of security-cases.md):

- recipient policy in ``handle_RCPT`` always (RR-01-RR-07, RR-11: without the hook aiosmtpd accepts everyone,
  RR-03), with the raw path checked as well as aiosmtpd's parse of it (the parser silently drops source routes,
  comments and quoting);
- connection caps, total and per IP, answered ``421 4.7.0 Too many connections`` (RR-50; aiosmtpd #282);
- DATA content refused on bare CR, bare LF, NUL and lines over 998 octets (RR-30-RR-32, RR-38);
- a command line ending in a bare LF closes the session with 421 (RR-33): aiosmtpd reads commands up to LF, so
  it is detected on the bytes as they arrive, before aiosmtpd splits them;
- content sent before the 354 reply closes the session with 554 5.5.0 (RR-34, Postfix's
  smtpd_forbid_unauth_pipelining): otherwise a refused DATA would run the content as commands;
- replies that name no internals: 451 4.3.0 for every unexpected error (RR-55), a greeting without the
  aiosmtpd version (RR-44), no AUTH (a receiving MX offers none);
- ``250`` only once the message is on stable storage (RR-60): up to 256 KB, in the journal, appended with the
  messages stored at the same time under one fdatasync by :class:`~diag.relay.writer.BatchWriter` (a queue file
  only if its segment's checkpoint finds it undelivered); a larger one through :meth:`Spool.store` (write, fsync,
  rename, fsync of the directory). Both on threads of their own, so the loop keeps serving (RR-56); ENOSPC gives
  452 4.3.1 (RR-61), anything else 451 4.3.0.
  Mail for a catch-all domain (``RelaySettings.catch_all``: a plain mail host's final delivery) goes straight
  into its Maildir instead, as durably (:func:`diag.relay.mailbox.store`), with the same replies.

STARTTLS state reset and the discarding of plaintext pipelined after STARTTLS (RR-40, RR-41) are aiosmtpd's own
(1.4.6); the tests hold it to that.

Known limits: Python's ssl has no verify callback, so a client certificate that does not verify against the
trusted CAs ends the handshake (CERT_OPTIONAL) instead of leaving the session anonymous as Postfix's
smtpd_tls_ask_ccert does; it never grants relay rights either way (RR-11). The STARTTLS handshake is bounded by
asyncio's default of 60 s and the session timeout (RR-43). :meth:`Spool.store` chooses the queue id, so the
``Received:`` line carries an id of its own, which the "queued" log line pairs with the queue id.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import inspect
import logging
import re
import socket
import ssl
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, cast

from aiosmtpd.smtp import SMTP, Session, TLSSetupException
from aiosmtpd.smtp import Envelope as SMTPEnvelope

from diag.errors import ConfigError
from diag.net.tls import load_key_pair
from diag.relay import mailbox, policy
from diag.relay.connections import CappedSMTP, Connections, Stress, peer_ip
from diag.relay.settings import RelaySettings
from diag.relay.spool import Envelope, Spool
from diag.relay.writer import BatchWriter, Stored

__all__ = ["RelayServer"]

log = logging.getLogger("diag.relay")

# How long close() waits for each of: the aborted sessions, each listener, the spool writes in progress.
_CLOSE_WAIT: Final = 5.0
# The largest message stored in a batch (BatchWriter: through the journal); a larger one is written and fsynced on
# its own, so a batch never waits behind it.
_BATCHED: Final = 256 * 1024

_BARE_LF: Final = b"421 4.5.2 Error: bare <LF> received; lines must end with <CR><LF>\r\n"
_SYNCHRONIZATION: Final = "554 5.5.0 Error: SMTP protocol synchronization"
_TEMPORARY: Final = "451 4.3.0 Temporary failure, try again later"
_NO_STORAGE: Final = "452 4.3.1 Insufficient system storage"
_TOO_MANY_RECIPIENTS: Final = "452 4.5.3 Too many recipients"
_TOO_BIG: Final = "552 5.3.4 Message size exceeds fixed maximum message size"
_NOT_OFFERED: Final = "502 5.5.1 Error: command not implemented"
# Mail for catch-all domains only: in the Maildir, nothing left in the queue.
_KEPT: Final = "250 2.0.0 Ok: queued"
# aiosmtpd's fixed replies without an enhanced status code that we give in the usual wording (RFC 3463).
_REWORDED: Final = {
    "552 Error: message size exceeds fixed maximum message size": _TOO_BIG,
    "552 Error: Too much mail data": _TOO_BIG,
}
_STORAGE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


def _tls_facts(session: Session) -> tuple[str, tuple[str, ...]]:
    """("TLSv1.3 TLS_AES_256_GCM_SHA384" or "", the DNS names of the client's *verified* certificate)."""
    extra: Any = session.ssl
    if not extra:
        return "", ()
    cipher = extra.get("cipher") or ("", "", 0)
    # The version negotiated, not the cipher's (cipher()[1] is the version that defined the suite: "TLSv1.0" for
    # ECDHE-RSA-AES256-SHA, also in a TLS 1.1 or 1.2 session).
    ssl_object = extra.get("ssl_object")
    version = (ssl_object.version() if ssl_object is not None else None) or cipher[1]
    tls = " ".join(part for part in (str(version), str(cipher[0])) if part)
    # getpeercert() is an empty dict for a certificate that was not validated and None without one; with
    # CERT_OPTIONAL an untrusted certificate fails the handshake anyway. Only a verified one is an identity (RR-11).
    peercert = extra.get("peercert") or {}
    names = tuple(str(value) for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS")
    return tls, names


def _dual_stack_socket(port: int) -> socket.socket:
    """A listener on ``[::]`` that takes IPv4 clients too, as an administrator who lists ``[::]:25`` expects
    (RFC 3493 §5.3: IPV6_V6ONLY off); asyncio turns IPV6_V6ONLY on for every IPv6 listener it makes itself.
    IPv4 peers then appear as ``::ffff:a.b.c.d``, which :func:`diag.routing.ip_in_ranges` maps back."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _server_context(settings: RelaySettings) -> ssl.SSLContext:
    assert settings.tls_cert is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    versions = settings.tls_versions
    if settings.legacy_crypto or (versions is not None and versions[0] < ssl.TLSVersion.TLSv1_2):
        # Before the certificate is loaded: at the default level OpenSSL 3 refuses to load an RSA-1024 key or a
        # SHA-1 signed certificate, and TLS 1.0/1.1 cannot sign handshakes at level 1 or above.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    if versions is None:
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # RR-43
    else:
        with warnings.catch_warnings():
            # An outdated host is the point here: silence "ssl.TLSVersion.TLSv1 is deprecated".
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version, context.maximum_version = versions
    try:
        load_key_pair(context, settings.tls_cert, settings.tls_key)
        if settings.client_certificates:
            # Ask for a client certificate without requiring one: the cloud attributes connections by it
            # (exchange-model §3.2-§3.3), but a public MX must serve clients without one.
            context.verify_mode = ssl.CERT_OPTIONAL
            if settings.ca_file is not None:
                context.load_verify_locations(cafile=settings.ca_file)
            else:
                context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"relay {settings.hostname}: cannot load its TLS certificate or CAs: {error}") from error
    return context


class _Handler:
    """aiosmtpd hooks: address checks, relay policy by role, content checks and durable queueing."""

    def __init__(self, server: RelayServer) -> None:
        self._server = server
        self._settings = server.settings

    def __dir__(self) -> list[str]:
        """Only the hooks: aiosmtpd builds its hook and AUTH tables for every connection from ``dir(handler)``
        and ``inspect.getmembers(handler)``, which otherwise read every attribute, ``object``'s included. The
        tables come out the same (tests/relay/test_connections.py)."""
        return _HOOKS

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: SMTPEnvelope, hostname: str, responses: list[str]
    ) -> list[str]:
        # aiosmtpd offers AUTH after STARTTLS and then fails every login; a receiving MX offers none.
        session.host_name = hostname
        return [line for line in responses if not line[4:].upper().startswith("AUTH")]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: SMTPEnvelope, address: str, mail_options: list[str]
    ) -> str:
        refusal = policy.check_address(address, sender=True)
        if refusal is not None:
            return refusal
        # aiosmtpd gives the null sender as "<>" and relies on mail_from being truthy; it is "" in our Envelope.
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: SMTPEnvelope, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = policy.check_address(address, sender=False)
        if refusal is not None:
            return refusal
        if len(envelope.rcpt_tos) >= self._settings.limits.recipients:
            return _TOO_MANY_RECIPIENTS  # RFC 5321 §4.5.3.1.10: 452, the client sends the rest later
        _, cert_names = _tls_facts(session)
        code, text = policy.rcpt_decision(
            self._settings,
            peer_ip=peer_ip(session.peer),
            cert_names=cert_names,
            mail_from=envelope.mail_from or "",
            rcpt=address,
        )
        if code == 250:
            recipient = policy.qualify_recipient(self._settings, address)
            # A recipient given twice is queued (and delivered) once, as Postfix's cleanup does.
            if recipient.lower() not in (known.lower() for known in envelope.rcpt_tos):
                envelope.rcpt_tos.append(recipient)
                envelope.rcpt_options.extend(rcpt_options)
        return f"{code} {text}"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SMTPEnvelope) -> str:
        content = envelope.original_content
        assert isinstance(content, bytes)  # decode_data=False
        peer = peer_ip(session.peer)
        refusal = policy.check_content(content)
        if refusal is not None:
            log.info("refused message from=<%s> peer=%s: %s", _sender(envelope), peer, refusal)
            return refusal
        tls, cert_names = _tls_facts(session)
        if not policy.is_trusted(self._settings, peer_ip=peer, cert_names=cert_names):
            content = policy.strip_trace(content, policy.TRACE_HEADER)
        now = datetime.now(UTC)
        received_id = Spool.new_qid()  # the queue id, named in the Received line before the message is stored
        version, _, cipher = tls.partition(" ")
        header = policy.received_header(
            helo=session.host_name or "",
            peer_ip=peer,
            hostname=self._settings.hostname,
            qid=received_id,
            recipients=envelope.rcpt_tos,
            when=now,
            esmtp=session.extended_smtp,
            tls_version=version,
            tls_cipher=cipher,
        )
        message = Envelope(
            mail_from=_sender(envelope),
            rcpt_tos=tuple(envelope.rcpt_tos),
            received_at=now,
            peer=peer,
            helo=session.host_name or "",
            tls=tls,
            client_cert_names=cert_names,
        )
        data = header.encode("ascii") + content
        kept = tuple(rcpt for rcpt in message.rcpt_tos if self._settings.catches(rcpt))
        if kept:
            refusal = await self._server._keep(replace(message, rcpt_tos=kept), data, received_id)
            if refusal is not None:
                return refusal
            if len(kept) == len(message.rcpt_tos):
                return _KEPT
        # Stored for the catch-all recipients already: if queueing the others fails, the client's retry gives
        # the former a duplicate, never a loss (RFC 5321 §6.1).
        queued = tuple(rcpt for rcpt in message.rcpt_tos if rcpt not in kept)
        return await self._server._queue(replace(message, rcpt_tos=queued), data, received_id)


_HOOKS: Final = sorted(name for name in vars(_Handler) if name.startswith("handle_"))
# aiosmtpd asks every new connection for handle_EHLO's signature (to tell its old four-argument form); a function's
# __signature__ is what inspect.signature returns without working it out again (PEP 362).
_Handler.handle_EHLO.__signature__ = inspect.signature(_Handler.handle_EHLO)  # type: ignore[attr-defined]


def _sender(envelope: SMTPEnvelope) -> str:
    sender = envelope.mail_from or ""
    return "" if sender == "<>" else sender


_CONTINUATION = re.compile(r"^\d{3}-")
# A plain <local@domain> path, as nearly every client sends it, and parameters after a space: a dot-atom local part
# (RFC 5321 §4.1.2) and an LDH domain. aiosmtpd parses paths with the email package's header parser, a tenth of a
# session's CPU; for these it gives the same address and parameters (tests/relay/test_server.py holds it to that).
# A local part with "=?" is left to aiosmtpd: its parser decodes RFC 2047 encoded words in it.
_PLAIN_PATH = re.compile(
    r"<(?![^>]*=\?)((?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)>"
    r"(?:[ \t]+([A-Za-z0-9][\x21-\x7e]*(?:[ \t]+[\x21-\x7e]+)*))?"
)
_BUSY = "451 4.3.2 Too many messages in transfer, try again later"


class _RelaySMTP(CappedSMTP):
    """aiosmtpd's protocol with the relay's additions (see the module docstring)."""

    # RFC 5321 §4.5.3.1.1 (RR-21); aiosmtpd's default 0 means unlimited.
    local_part_limit = 64
    command_size_limit = 512

    def __init__(
        self, handler: _Handler, connections: Connections, data_slots: asyncio.Semaphore, data_wait: float,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        # aiosmtpd keeps command_size_limits on the class, shared by every session, and grows MAIL's limit by
        # 26 on each EHLO; each session gets its own here.
        self.command_size_limits = collections.defaultdict(lambda: _RelaySMTP.command_size_limit)
        super().__init__(handler, connections, **kwargs)
        self._data_slots = data_slots
        self._data_wait = data_wait
        self._in_data = False
        self._continued: list[str] = []
        self._last_byte = b""

    def data_received(self, data: bytes) -> None:
        if self._refused or self.transport is None:
            return
        # RR-33: aiosmtpd splits commands at LF alone and keeps no trace of the line end, so bare LFs are found
        # here, in the bytes as they arrive. Outside DATA content a bare LF is a client bug or a probe for
        # smuggling-friendly parsing: the session ends before aiosmtpd sees the bytes. Inside DATA (from our 354
        # to our next reply) check_content refuses the message instead; commands a client pipelines in the same
        # segment as the final dot are therefore not checked, which RFC 2920 forbids without PIPELINING anyway
        # and which cannot end a message early.
        bare = data.count(b"\n") - data.count(b"\r\n") - (data[:1] == b"\n" and self._last_byte == b"\r")
        self._last_byte = data[-1:]
        if bare and not self._in_data:
            log.info("closing session of %s: bare LF in a command", peer_ip(self.session and self.session.peer))
            transport = cast(asyncio.Transport, self.transport)  # see CappedSMTP.connection_made
            transport.write(_BARE_LF)
            transport.close()
            return
        super().data_received(data)

    # --- replies and commands ---------------------------------------------------------------------------

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status = _REWORDED.get(status, status)
            if _CONTINUATION.match(status):
                # A multi-line reply (EHLO) goes out in one write, as Postfix sends it: clients that read one
                # segment per reply (nmap's smtp-open-relay among them) otherwise mistake its tail for the next
                # command's reply.
                self._continued.append(status)
                return
            if self._continued:
                status, self._continued = "\r\n".join([*self._continued, status]), []
            if self._in_data and status.startswith("250") and self._tcp_transport is not None:
                self._connections.progress(self._tcp_transport)  # a finished transaction: not idle
            # Content may follow only a 354; any other reply ends the DATA phase.
            self._in_data = status.startswith("354")
        await super().push(status)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = _PLAIN_PATH.fullmatch(arg) if arg else None
        if plain is None:
            return super()._getaddr(arg)
        address, rest = plain.group(1), plain.group(2) or ""
        if self.local_part_limit and address.rindex("@") > self.local_part_limit:
            return None, None
        return address, rest

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default reply is "500 Error: (<class>) <text>": it leaks internals and turns a local
        # problem into a permanent failure (RR-55). RFC 5321 §4.2.3: 451 is a local error.
        peer = peer_ip(self.session and self.session.peer)
        if isinstance(error, TLSSetupException):
            log.info("TLS handshake with %s failed: %r", peer, error.__cause__)
        else:
            log.error("session error with %s", peer, exc_info=error)
        return _TEMPORARY

    async def smtp_EHLO(self, hostname: str) -> None:
        self.command_size_limits.pop("MAIL", None)  # aiosmtpd adds 26 for SIZE on every EHLO
        await super().smtp_EHLO(hostname)

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self._raw_path_refused(arg, "FROM:", sender=True):
            return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self._raw_path_refused(arg, "TO:", sender=False):
            return
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        # RR-34: we do not offer PIPELINING, and even with it DATA must be the last command of a group
        # (RFC 2920 §3.1). Content already waiting when DATA is read was sent without waiting for 354; if
        # DATA were refused (no recipient), aiosmtpd would run that content as commands.
        # aiosmtpd's reader is a StreamReader; its buffer is what aiosmtpd itself clears after STARTTLS.
        buffered: bytearray = self._reader._buffer  # type: ignore[attr-defined]
        if buffered:
            log.info("closing session of %s: content sent before 354", peer_ip(self.session and self.session.peer))
            # Dropped, so the command loop finds nothing more to run before the connection is gone.
            buffered.clear()
            await self.push(_SYNCHRONIZATION)
            assert self.transport is not None
            self.transport.close()
            return
        # aiosmtpd holds a message in memory while it is transferred; bounding the transfers in progress bounds
        # that memory (RR-53): at most data_sessions * message_size, however many clients are connected.
        try:
            async with asyncio.timeout(self._data_wait):
                await self._data_slots.acquire()
        except TimeoutError:
            await self.push(_BUSY)
            return
        try:
            await super().smtp_DATA(arg)
        finally:
            self._data_slots.release()

    async def smtp_AUTH(self, arg: str) -> None:
        # A receiving MX offers no AUTH (Postfix: smtpd_sasl_auth_enable = no); relay rights come from IP
        # addresses and certificates only.
        await self.push(_NOT_OFFERED)

    async def _raw_path_refused(self, arg: str | None, keyword: str, *, sender: bool) -> bool:
        """Check the path as sent; True when a refusal was sent. aiosmtpd checks what it parsed afterwards."""
        assert self.session is not None and self.envelope is not None
        if not self.session.host_name or bool(self.envelope.mail_from) != (not sender):
            return False  # aiosmtpd answers 503: HELO missing, MAIL missing, or MAIL nested
        path = policy.path_argument(arg, keyword)
        if path is None:
            return False  # aiosmtpd answers 501 for what it cannot parse either
        refusal = policy.check_address(path, sender=sender)
        if refusal is None:
            return False
        await self.push(refusal)
        return True


class RelayServer:
    """The relay's SMTP listener: every ``settings.listen`` endpoint, on the running event loop.

    ``on_queued(qid, envelope, content, segment)`` is called (on the loop) after each message is stored, so delivery
    can start at once without reading it back; ``segment`` names the journal segment that holds it, None for one
    stored on its own (:meth:`Spool.remove` takes it). ``on_checkpoint(ids)`` is called (on the loop) when a journal
    segment's checkpoint wrote queue files, with their ids: delivery reads them from there. Spool writes run on
    threads of their own, so a 250 never waits behind delivery's file work on the loop's default executor.
    ``spool`` may be None for a plain mail host that keeps all it accepts (:func:`policy.queues` is False). Also an
    async context manager that starts and closes it.
    """

    def __init__(
        self,
        settings: RelaySettings,
        spool: Spool | None,
        *,
        on_queued: Callable[[str, Envelope, bytes, str | None], None] | None = None,
        on_checkpoint: Callable[[list[str]], None] | None = None,
    ) -> None:
        if spool is None and policy.queues(settings):
            raise ConfigError(f"relay {settings.hostname}: it may accept mail to queue, so it needs a spool")
        self.settings = settings
        self.spool = spool
        self._on_queued = on_queued
        self._on_checkpoint = on_checkpoint
        self._servers: list[asyncio.Server] = []
        self._connections = self._new_connections()
        self._writer: ThreadPoolExecutor | None = None
        self._batches: BatchWriter | None = None

    def _new_connections(self) -> Connections:
        limits = self.settings.limits
        stress = Stress(limits.stress_connections, limits.stress_idle)
        return Connections(limits.connections, limits.connections_per_ip, stress=stress)

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """The (address, port) pairs it listens on; the chosen ports when ``settings.listen`` said 0."""
        return tuple(
            (str(name[0]), int(name[1]))
            for server in self._servers
            for name in (s.getsockname() for s in server.sockets)
        )

    async def start(self) -> None:
        """Listen on every endpoint. Raises :class:`ConfigError` for an unusable certificate, OSError when an
        address cannot be bound (nothing is left listening then)."""
        settings = self.settings
        limits = settings.limits
        loop = asyncio.get_running_loop()
        tls_context = _server_context(settings) if settings.tls_cert is not None else None
        handler = _Handler(self)
        self._connections = connections = self._new_connections()
        # One writer per session that may be in DATA at once: a store never waits for a thread.
        self._writer = ThreadPoolExecutor(max_workers=limits.data_sessions, thread_name_prefix="spool-writer")
        if self.spool is not None:
            self._batches = BatchWriter(self.spool, loop, on_checkpoint=self._on_checkpoint)
        data_slots = asyncio.Semaphore(limits.data_sessions)

        def factory() -> asyncio.BaseProtocol:
            return _RelaySMTP(
                handler,
                connections,
                data_slots,
                limits.data_wait,
                hostname=settings.hostname,
                # aiosmtpd greets "220 <hostname> <ident>"; its default ident names its version (RR-44).
                ident=settings.ident,
                tls_context=tls_context,
                require_starttls=False,  # RFC 3207 §4: a publicly referenced MX must not require it (RR-42)
                enable_SMTPUTF8=False,  # RR-23
                decode_data=False,
                data_size_limit=limits.message_size,
                timeout=limits.session_timeout,
                auth_required=False,
                loop=loop,
            )

        try:
            # A [::] listener takes IPv4 too unless the configuration also lists an IPv4 address on that port,
            # which it would then collide with ("address already in use").
            ipv4_ports = {port for host, port in settings.listen if ":" not in host}
            for host, port in settings.listen:
                try:
                    if host == "::" and port not in ipv4_ports:
                        listener = await loop.create_server(factory, sock=_dual_stack_socket(port))
                    else:
                        listener = await loop.create_server(factory, host, port)
                    self._servers.append(listener)
                except OSError as error:
                    raise OSError(error.errno, f"relay {settings.hostname}: cannot listen on {host}:{port}: "
                                  f"{error.strerror}") from error  # fmt: skip
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop listening, abort open sessions, wait at most a few seconds for them and for spool writes in
        progress. Safe to repeat."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        # On 3.11 Server.wait_closed() returns at once and leaves accepted connections open; on 3.12+ it
        # waits for them. Aborting them ourselves makes both behave the same.
        await self._connections.abort_all(_CLOSE_WAIT)
        for server in servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), _CLOSE_WAIT)
        writer, self._writer = self._writer, None
        if writer is not None:
            # Writes still running finish on their threads (their messages were not answered 250 yet).
            writer.shutdown(wait=False)
        batches, self._batches = self._batches, None
        if batches is not None:
            await batches.close(_CLOSE_WAIT)

    async def __aenter__(self) -> RelayServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _queue(self, envelope: Envelope, data: bytes, received_id: str) -> str:
        """Store a message; the DATA reply. 250 only once it is on stable storage (RFC 5321 §6.1)."""
        assert self.spool is not None  # only catch-all recipients are accepted without one (__init__)
        write: asyncio.Future[Stored]
        if self._batches is not None and len(data) <= _BATCHED:
            write = self._batches.store(received_id, envelope, data)
        else:
            store = functools.partial(_alone, self.spool, envelope, data, received_id)
            write = asyncio.get_running_loop().run_in_executor(self._writer, store)
        # A message that was stored is announced to delivery whether or not its 250 reached the client (a
        # duplicate at worst, RFC 5321 §6.1).
        write.add_done_callback(lambda done: self._stored(done, envelope, data, received_id))
        refusal = await self._durably(write)
        return refusal or f"250 2.0.0 Ok: queued as {write.result()[0]}"

    async def _keep(self, envelope: Envelope, data: bytes, received_id: str) -> str | None:
        """Store a message for catch-all recipients in their Maildir, with the Return-Path of final delivery
        (RFC 5321 §4.4); None once it is on stable storage, else the DATA reply."""
        content = f"Return-Path: <{envelope.mail_from}>\r\n".encode("ascii") + data
        store = functools.partial(mailbox.store, self.settings.maildir, content)
        write = asyncio.get_running_loop().run_in_executor(self._writer, store)
        write.add_done_callback(lambda done: self._kept(done, envelope, len(content), received_id))
        return await self._durably(write)

    async def _durably(self, write: asyncio.Future[Any]) -> str | None:
        """Wait for a write to stable storage; None once it is done, else the reply that says why not."""
        self._connections.watch(write)
        try:
            # Shielded: a client that hangs up during the write does not cancel it.
            await asyncio.shield(write)
        except OSError as error:
            if error.errno in _STORAGE_ERRNOS:
                return _NO_STORAGE
            return _TEMPORARY
        except Exception:
            return _TEMPORARY
        return None

    def _kept(self, write: asyncio.Future[None], envelope: Envelope, size: int, received_id: str) -> None:
        if write.cancelled():
            return
        error = write.exception()
        if error is not None:
            log.error(
                "cannot keep message from=<%s> peer=%s in %s: %r", envelope.mail_from, envelope.peer,
                self.settings.maildir, error, exc_info=None if isinstance(error, OSError) else error,
            )  # fmt: skip
            return
        log.info(
            "kept id=%s from=<%s> to=%s size=%d peer=%s tls=%s", received_id, envelope.mail_from,
            ",".join(f"<{r}>" for r in envelope.rcpt_tos), size, envelope.peer,
            envelope.tls.replace(" ", "/") or "none",
        )  # fmt: skip

    def _stored(self, write: asyncio.Future[Stored], envelope: Envelope, data: bytes, received_id: str) -> None:
        if write.cancelled():
            return
        error = write.exception()
        if error is not None:
            # Logged here with its details; the client gets a reply without them (RR-55).
            log.error(
                "cannot queue message from=<%s> peer=%s: %r", envelope.mail_from, envelope.peer, error,
                exc_info=None if isinstance(error, OSError) else error,
            )  # fmt: skip
            return
        qid, segment = write.result()
        log.info(
            "queued qid=%s from=<%s> to=%s size=%d peer=%s tls=%s id=%s",
            qid, envelope.mail_from, ",".join(f"<{r}>" for r in envelope.rcpt_tos), len(data), envelope.peer,
            envelope.tls.replace(" ", "/") or "none", received_id,
        )  # fmt: skip
        if self._on_queued is not None:
            try:
                self._on_queued(qid, envelope, data, segment)
            except Exception:
                log.exception("on_queued(%s) failed; the message stays queued for the next queue scan", qid)


def _alone(spool: Spool, envelope: Envelope, data: bytes, qid: str) -> Stored:
    """Store a message on its own (a file and its fsync, not the journal): a worker thread's job."""
    return spool.store(envelope, data, qid=qid), None
