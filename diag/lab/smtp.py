"""SMTP hosts of the embedded lab: loopback servers that behave like real mail hosts, defects included.

Each host listens on its own 127.x.y.z address; all hosts of a lab share one port. The defects are real on
the wire, because the probes of diag are tested against them: a tarpit never sends a byte, a host configured
with a leaf-only chain sends only its leaf, a host with a 554 greeting refuses every command.

A mail host is the relay's own SMTP server (:class:`diag.relay.server.RelayServer`) playing a plain receiving
host: its certificate, TLS versions and greeting come from :func:`mail_host_settings`, its Received line and
Maildir store are the relay's. Only the hosts that no well-behaved server imitates are written here.

    HostKind.MAIL      the relay's server: STARTTLS when ``tls`` is set, every address of ``domains`` kept in
                       one Maildir
    HostKind.TARPIT    accepts TCP, never greets, reads and discards what it gets
    HostKind.GREETING  greets with a fixed reply line (554 and 421 are the useful ones), or with 220 and then
                       answers from a script; STARTTLS when ``tls`` is set and the script does not answer it
    HostKind.ENDLESS   greets with a multi-line reply that never ends: ``421-…`` lines, over and over

Every host tracks its connections, caps them at 256 and aborts them all on ``LabHostServer.close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import re
import socket
import ssl
import warnings
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final, cast

from diag.config import Organization, RelayRole
from diag.errors import ConfigError, LabError
from diag.frozen import frozen
from diag.relay.connections import TOO_MANY_CONNECTIONS, Connections
from diag.relay.server import RelayServer
from diag.relay.settings import Limits, RelaySettings

__all__ = ["HostKind", "LabHost", "LabHostServer", "TlsFiles", "mail_host_settings", "start_host"]

_MAX_CONNECTIONS: Final = 256
# What follows the host name in a mail host's greeting: no software version (security-cases RR-44).
_IDENT: Final = "ESMTP diag lab"
# Every client of a lab host is a part of the lab on loopback: the X-Diag-Trace headers they add are kept.
_LAB_NETWORKS: Final = ("127.0.0.0/8",)
# Upper bound on how long close() waits for aborted connections to be torn down.
_CLOSE_WAIT: Final = 5.0
# A GREETING host ends the session at this many commands (RFC 5321 §3.1 leaves it to the server;
# Postfix's smtpd_hard_error_limit is 20).
_GREETING_COMMAND_LIMIT: Final = 10
# Longest command line a GREETING host buffers: RFC 5321 §4.5.3.1.4 allows 512 octets including CRLF.
_GREETING_LINE_LIMIT: Final = 512
# An ENDLESS host writes this many continuation lines every _ENDLESS_TICK seconds: about 400 KB/s, enough to
# overrun a client's reply limit quickly (aiosmtplib's is 32 KiB) without hogging the lab's event loop.
_ENDLESS_BATCH: Final = 48
_ENDLESS_TICK: Final = 0.01
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
# A scripted reply line: code, then any text but CR and LF. Hostile servers send control characters, bidi
# overrides (as UTF-8) and markup in their replies; the lab imitates them (security-cases RPT-04), so only the
# line framing is enforced here.
_REPLY_LINE = re.compile(r"[2-5][0-5][0-9](?: [^\r\n]*)?")
_SCRIPT_LINE = re.compile(r"[2-5][0-5][0-9](?:[ -][^\r\n]*)?")


class HostKind(enum.StrEnum):
    """What a lab host does with a connection."""

    MAIL = "mail"
    """A plain mail host: the relay's server (:func:`mail_host_settings`); STARTTLS when ``tls`` is set."""
    TARPIT = "tarpit"
    """Accepts TCP, never greets, reads and discards input."""
    GREETING = "greeting"
    """Greets with ``LabHost.greeting``; then answers from ``LabHost.script``, or refuses every command but QUIT.
    With ``LabHost.tls`` it answers STARTTLS (unless the script does) with 220 and a real TLS handshake."""
    BLACKHOLE = "blackhole"
    """Never completes a TCP handshake: connecting times out, as behind a firewall that drops packets."""
    ENDLESS = "endless"
    """Greets with ``LabHost.greeting`` as the continuation line of a multi-line reply (``421-4.7.0 …``), sent
    over and over, never the last line: a rate-limiting server gone wrong. Writes a batch of lines every few
    milliseconds while the client keeps up (flow control stops it otherwise); reads and discards input; closes
    after ten times the session timeout."""


@frozen
class TlsFiles:
    """The certificate files a host serves over STARTTLS."""

    chain: Path
    """PEM: the leaf first, then whatever chain the host serves (nothing more for a leaf-only host)."""
    key: Path
    """PEM private key of the leaf."""


@frozen
class LabHost:
    """One SMTP host of the lab."""

    name: str
    """Host name: in the banner ("220 <name> ESMTP diag lab"), the Received line and as the Maildir folder name."""
    ip: str
    """Loopback address the host listens on."""
    kind: HostKind = HostKind.MAIL
    tls: TlsFiles | None = None
    """Certificate for STARTTLS; None: STARTTLS is not offered (a GREETING host advertises it in its script)."""
    legacy_crypto: bool = False
    """The certificate uses SHA-1 or RSA-1024: load it at OpenSSL security level 0."""
    tls_versions: tuple[ssl.TLSVersion, ssl.TLSVersion] | None = None
    """(minimum, maximum) TLS version offered, e.g. TLSv1..TLSv1_1 for an outdated host; None: defaults."""
    greeting: str | None = None
    """For GREETING: the full reply line without CRLF, e.g. "554 5.7.1 No SMTP service here"; any text but CR and
    LF, sent as UTF-8 (lone surrogates as the bytes "surrogateescape" makes of them: not UTF-8). For ENDLESS:
    the same kind of line, sent as a continuation line ("421-4.7.0 ...") that repeats forever."""
    domains: tuple[str, ...] = ()
    """Recipient domains (A-labels) the host accepts mail for: every address in them, kept in one Maildir."""
    script: tuple[tuple[str, str | None], ...] = ()
    """For GREETING: (verb, reply) pairs answering commands after a 220 greeting; a None reply closes the
    connection without a word; verbs not listed get 502. Replies may span lines ("250-a\r\n250 b")."""


class LabHostServer:
    """A running lab host, as returned by :func:`start_host`. Also an async context manager that closes it."""

    __slots__ = ("_connections", "_host", "_port", "_relay", "_server", "_sockets")

    def __init__(
        self,
        host: LabHost,
        port: int,
        server: asyncio.Server | None,
        connections: Connections,
        sockets: tuple[socket.socket, ...] = (),
        relay: RelayServer | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._server = server
        self._connections = connections
        self._sockets = sockets
        self._relay = relay

    @property
    def host(self) -> LabHost:
        """The host definition this server runs."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port it listens on (the chosen one when started with port 0)."""
        return self._port

    async def close(self) -> None:
        """Stop listening and abort every open connection. Returns within a few seconds; safe to repeat."""
        for sock in self._sockets:
            sock.close()
        if self._relay is not None:
            await self._relay.close()
        if self._server is None:
            return
        self._server.close()
        # On 3.11 Server.wait_closed() returns at once and leaves accepted connections open; on 3.12+ it
        # waits for them. Aborting them ourselves makes both behave the same.
        await self._connections.abort_all(_CLOSE_WAIT)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), _CLOSE_WAIT)

    async def __aenter__(self) -> LabHostServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"LabHostServer({self._host.name!r}, {self._host.kind}, {self._host.ip}:{self._port})"


async def start_host(
    host: LabHost,
    port: int,
    *,
    maildir: Path,
    timeout: float = 30.0,  # noqa: ASYNC109 - the hosts' session idle timeout, not a deadline for this call
) -> LabHostServer:
    """Start ``host`` on ``host.ip``:``port`` (0 picks a free port) on the running event loop.

    ``maildir`` is the parent of a mail host's Maildir (``maildir / host.name``), created on first delivery.
    ``timeout`` is the idle timeout of a session; a tarpit holds a connection for at most ten times that.
    Raises :class:`LabError` when the definition is inconsistent, the certificate cannot be loaded or the
    address cannot be bound.
    """
    _validate(host, timeout)
    loop = asyncio.get_running_loop()
    if host.kind is HostKind.BLACKHOLE:
        return await _start_blackhole(host, port)
    if host.kind is HostKind.MAIL:
        return await _start_mail_host(host, port, maildir, timeout)
    connections = Connections(_MAX_CONNECTIONS)
    factory: Callable[[], asyncio.BaseProtocol]
    match host.kind:
        case HostKind.TARPIT:

            def factory() -> asyncio.BaseProtocol:
                return _Tarpit(connections, timeout * 10)

        case HostKind.BLACKHOLE | HostKind.MAIL:  # pragma: no cover - started above
            raise AssertionError("unreachable")

        case HostKind.ENDLESS:
            assert host.greeting is not None  # checked by _validate
            code, _, text = host.greeting.partition(" ")
            line = f"{code}-{text}".encode("utf-8", "surrogateescape") + b"\r\n"

            def factory() -> asyncio.BaseProtocol:
                return _Endless(connections, line, timeout * 10)

        case HostKind.GREETING:
            assert host.greeting is not None  # checked by _validate
            greeting = host.greeting
            script = {verb.upper().encode("ascii"): reply for verb, reply in host.script}
            greeter_tls = _server_context(host) if host.tls is not None else None

            def factory() -> asyncio.BaseProtocol:
                return _Greeter(connections, greeting, timeout, script, greeter_tls)

    try:
        server = await loop.create_server(factory, host.ip, port)
    except OSError as error:
        message = f"lab host {host.name}: cannot listen on {host.ip}:{port}: {error.strerror}"
        raise LabError(message) from error
    bound: int = server.sockets[0].getsockname()[1]
    return LabHostServer(host, bound, server, connections)


def mail_host_settings(host: LabHost, port: int, *, maildir: Path, timeout: float) -> RelaySettings:
    """The relay settings that make :class:`RelayServer` the plain mail host ``host`` (``HostKind.MAIL``).

    The internet role without mailboxes or relay rights: every address of ``host.domains`` is kept in the
    Maildir ``maildir / host.name`` from anyone, everything else refused, nothing queued (the server runs
    without a spool; ``spool`` names that Maildir only because the field is required). It keeps its clients'
    trace headers (they are the lab), asks no client for a certificate, offers the TLS versions and loads the
    legacy certificate ``host`` asks for, and admits 256 connections, from one address too (the lab's clients
    all come from loopback).
    """
    return RelaySettings(
        organization=Organization(),
        role=RelayRole.INTERNET,
        hostname=host.name,
        listen=((host.ip, port),),
        spool=maildir / host.name,
        maildir=maildir / host.name,
        tls_cert=host.tls.chain if host.tls is not None else None,
        tls_key=host.tls.key if host.tls is not None else None,
        limits=Limits(connections=_MAX_CONNECTIONS, connections_per_ip=_MAX_CONNECTIONS, session_timeout=timeout),
        catch_all=tuple(domain.lower() for domain in host.domains),
        trace_networks=_LAB_NETWORKS,
        ident=_IDENT,
        tls_versions=host.tls_versions,
        legacy_crypto=host.legacy_crypto,
        client_certificates=False,
    )


async def _start_mail_host(host: LabHost, port: int, maildir: Path, idle: float) -> LabHostServer:
    relay = RelayServer(mail_host_settings(host, port, maildir=maildir, timeout=idle), None)
    try:
        await relay.start()
    except ConfigError as error:
        assert host.tls is not None  # the certificate is all a mail host's settings load
        raise LabError(f"lab host {host.name}: cannot load {host.tls.chain}: {error.__cause__ or error}") from error
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise LabError(f"lab host {host.name}: cannot listen on {host.ip}:{port}: {reason}") from error
    # The relay tracks (and on close aborts) its connections itself.
    return LabHostServer(host, relay.addresses[0][1], None, Connections(0), relay=relay)


async def _start_blackhole(host: LabHost, port: int) -> LabHostServer:
    """A listener whose accept queue is full and never drained.

    With a backlog of 0 Linux queues one connection; the lab makes that one itself. Further SYNs are dropped
    while the queue is full (tcp_abort_on_overflow=0, the default), so a client's connect() times out exactly
    as it does against a firewall that drops packets, on loopback and without root.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind((host.ip, port))
        listener.listen(0)
        filler.setblocking(False)
        async with asyncio.timeout(_CLOSE_WAIT):
            await asyncio.get_running_loop().sock_connect(filler, listener.getsockname())
    except (OSError, TimeoutError) as error:
        listener.close()
        filler.close()
        raise LabError(f"lab host {host.name}: cannot listen on {host.ip}:{port}: {error}") from error
    bound: int = listener.getsockname()[1]
    return LabHostServer(host, bound, None, Connections(0), (filler, listener))


def _validate(host: LabHost, timeout: float) -> None:
    # The name goes into the banner and becomes a directory name: keep it to host-name characters.
    if not _HOST_NAME.fullmatch(host.name):
        raise LabError(f"lab host {host.name!r}: not a usable host name")
    if not timeout > 0:
        raise LabError(f"lab host {host.name}: timeout must be positive, not {timeout}")
    if host.kind in (HostKind.GREETING, HostKind.ENDLESS):
        if host.greeting is None or not _REPLY_LINE.fullmatch(host.greeting):
            raise LabError(f"lab host {host.name}: {host.kind.name} needs a one-line reply such as '554 5.7.1 ...'")
        if host.script and host.kind is HostKind.ENDLESS:
            raise LabError(f"lab host {host.name}: an ENDLESS host never gets to answer commands: no script")
        for verb, reply in host.script:
            if reply is not None and not all(map(_SCRIPT_LINE.fullmatch, reply.split("\r\n"))):
                raise LabError(f"lab host {host.name}: the {verb} reply must be reply lines joined by CRLF")
    elif host.greeting is not None or host.script:
        raise LabError(f"lab host {host.name}: only a GREETING or ENDLESS host has a greeting or a script")
    if host.kind not in (HostKind.MAIL, HostKind.GREETING) and host.tls is not None:
        raise LabError(f"lab host {host.name}: only a MAIL or GREETING host has tls")
    if host.kind != HostKind.MAIL and host.domains:
        raise LabError(f"lab host {host.name}: only a MAIL host has domains")


def _server_context(host: LabHost) -> ssl.SSLContext:
    assert host.tls is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    old_protocol = host.tls_versions is not None and host.tls_versions[0] < ssl.TLSVersion.TLSv1_2
    if host.legacy_crypto or old_protocol:
        # Must come before load_cert_chain: at the default level OpenSSL 3 refuses to load an RSA-1024 key
        # or SHA-1 signed certificate, and TLS 1.0/1.1 cannot sign handshakes at level 1 or above.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    if host.tls_versions is not None:
        with warnings.catch_warnings():
            # An outdated host is the point here: silence "ssl.TLSVersion.TLSv1 is deprecated".
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version, context.maximum_version = host.tls_versions
    try:
        context.load_cert_chain(host.tls.chain, host.tls.key)
    except (OSError, ssl.SSLError) as error:
        raise LabError(f"lab host {host.name}: cannot load {host.tls.chain}: {error}") from error
    return context


class _Tarpit(asyncio.Protocol):
    """Accepts the connection and never writes a byte; closes it after ``hold`` seconds."""

    def __init__(self, connections: Connections, hold: float) -> None:
        self._connections = connections
        self._hold = hold
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # asyncio's or uvloop's (no asyncio base class)
        self._transport = transport
        if not self._connections.admit(transport):
            transport.close()
            return
        self._timer = asyncio.get_running_loop().call_later(self._hold, transport.close)

    def data_received(self, data: bytes) -> None:
        # Read and discard: a tarpit keeps the client's writes flowing so that only the missing greeting
        # stalls it.
        del data

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._connections.release(self._transport)


class _Endless(asyncio.Protocol):
    """Sends ``line`` (a continuation line, ``421-…``) in batches, forever: a greeting that never ends.

    Writing pauses while the transport's buffer is above its high-water mark (asyncio's flow control), so a
    client that stops reading costs the lab a bounded buffer, not memory without end; ``hold`` seconds after
    the connection was made it is closed.
    """

    def __init__(self, connections: Connections, line: bytes, hold: float) -> None:
        self._connections = connections
        self._batch = line * _ENDLESS_BATCH
        self._hold = hold
        self._transport: asyncio.Transport | None = None
        self._closer: asyncio.TimerHandle | None = None
        self._next: asyncio.TimerHandle | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # asyncio's or uvloop's (no asyncio base class)
        if not self._connections.admit(transport):
            transport.write(TOO_MANY_CONNECTIONS)
            transport.close()
            return
        self._transport = transport
        self._closer = asyncio.get_running_loop().call_later(self._hold, transport.close)
        self._write()

    def _write(self) -> None:
        self._next = None
        if self._transport is None or self._transport.is_closing() or self._paused:
            return
        self._transport.write(self._batch)
        self._next = asyncio.get_running_loop().call_later(_ENDLESS_TICK, self._write)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._next is None:
            self._write()

    def data_received(self, data: bytes) -> None:
        del data  # the client's commands get no answer: the greeting is not over yet

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._closer, self._next):
            if timer is not None:
                timer.cancel()
        if self._transport is not None:
            self._connections.release(self._transport)
            self._transport = None


class _Greeter(asyncio.Protocol):
    """Greets with a fixed reply line. 421: closes at once. A 220 greeting with a script: answers from it, and
    with ``tls`` answers STARTTLS by upgrading the connection. Other codes: refuses every command but QUIT."""

    def __init__(
        self,
        connections: Connections,
        greeting: str,
        timeout: float,
        script: dict[bytes, str | None],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._connections = connections
        self._greeting = greeting
        self._script = script if greeting.startswith("220") else {}
        self._tls = tls if greeting.startswith("220") else None
        self._timeout = timeout
        self._tcp: asyncio.Transport | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._buffer = bytearray()
        self._commands = 0
        # Between STARTTLS and the end of the handshake: decrypted input waits until replies can be encrypted.
        self._upgrading = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # asyncio's or uvloop's (no asyncio base class)
        if not self._connections.admit(transport):
            transport.write(TOO_MANY_CONNECTIONS)
            transport.close()
            return
        self._tcp = self._transport = transport
        transport.write(self._greeting.encode("utf-8", "surrogateescape") + b"\r\n")
        if self._greeting.startswith("421"):
            # RFC 5321 §3.8: after a 421 the server closes the channel without waiting for QUIT.
            transport.close()
            return
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._buffer += data
        if not self._upgrading:
            self._process()

    def _process(self) -> None:
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            if not self._answer(line):
                return
        if len(self._buffer) > _GREETING_LINE_LIMIT:
            self._finish(b"500 5.5.2 Line too long\r\n")

    def _answer(self, line: bytes) -> bool:
        """Reply to one command line; False when the session is over."""
        self._commands += 1
        verb = line.split(maxsplit=1)[0].upper() if line.strip() else b""
        if verb == b"QUIT":
            self._finish(b"221 2.0.0 Bye\r\n")
            return False
        if self._commands >= _GREETING_COMMAND_LIMIT:
            # Postfix answers its hard error limit with 421 instead of the command's reply.
            self._finish(b"421 4.7.0 Too many errors\r\n")
            return False
        assert self._transport is not None
        if verb == b"STARTTLS" and verb not in self._script and self._tls is not None:
            self._start_tls(self._tls)
            return False
        if self._script:
            if verb in self._script and self._script[verb] is None:
                self._transport.abort()  # a server that hangs up mid-session
                return False
            reply = self._script.get(verb) or "502 5.5.2 Error: command not recognized"
            self._transport.write(reply.encode("utf-8", "surrogateescape") + b"\r\n")
            return True
        # RFC 5321 §3.1: after a 554 greeting the server MUST wait for QUIT and answer every other command
        # with 503.
        self._transport.write(b"503 5.5.1 Bad sequence of commands\r\n")
        return True

    def _start_tls(self, context: ssl.SSLContext) -> None:
        assert self._transport is not None
        # Stop reading before the 220 goes out, so the client's handshake reaches the TLS layer, not
        # data_received; whatever the client pipelined after STARTTLS is dropped (CVE-2011-0411, RFC 3207 §4.2).
        self._transport.pause_reading()
        self._buffer.clear()
        self._tls = None  # once per session
        self._upgrading = True
        self._transport.write(b"220 2.0.0 Ready to start TLS\r\n")
        self._connections.watch(asyncio.get_running_loop().create_task(self._upgrade(self._transport, context)))

    async def _upgrade(self, plain: asyncio.Transport, context: ssl.SSLContext) -> None:
        try:
            secured = await asyncio.get_running_loop().start_tls(
                plain, self, context, server_side=True, ssl_handshake_timeout=self._timeout
            )
        except (OSError, ssl.SSLError, TimeoutError, RuntimeError) as error:
            # A client refusing the certificate is everyday business in a lab of broken hosts.
            logging.getLogger(__name__).info("lab host: TLS handshake failed: %r", error)
            plain.abort()
            return
        if secured is None:  # pragma: no cover - start_tls returns None only when the loop is closing
            plain.abort()
            return
        # The first command after the handshake may have been decrypted before start_tls returned.
        self._transport, self._upgrading = secured, False
        if not secured.is_closing():
            self._process()

    def _expire(self) -> None:
        # RFC 5321 §4.5.3.2.7 server timeout; Postfix says so with a 421 4.4.2 before closing.
        self._finish(b"421 4.4.2 Timeout exceeded\r\n")

    def _finish(self, reply: bytes) -> None:
        assert self._transport is not None
        if self._transport.is_closing():
            return
        self._transport.write(reply)
        self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        # The TCP transport is the one tracked, also after a STARTTLS upgrade.
        if self._tcp is not None:
            self._connections.release(self._tcp)
