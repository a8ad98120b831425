"""The delivery transport: the I/O of one delivery attempt — DNS lookups, SMTP sessions, the local mailbox store.

:meth:`Transport.send` drives a :class:`diag.relay.plan.Attempt`: it asks the DNS questions the attempt needs
(:class:`diag.net.dns.Resolver`) and opens the sessions it wants, one address at a time. A session connects,
says EHLO, does STARTTLS as the route's :class:`~diag.relay.plan.TlsPolicy` demands (presenting the relay's
certificate as client certificate), and transfers the message with this hop's ``X-Diag-Trace`` header. Each
reply is kept per recipient (RD-12). Problems are reported in the cloud's own texts (exchange-model §5.2), so
that a probe can match what a message trace would show.

Where TLS is required it is never given up for plain text: aiosmtplib's default ``start_tls=None`` silently
continues without TLS (security-cases finding 5), so the client connects with ``start_tls=False`` and calls
``starttls()`` itself, with the host's name (without its trailing dot: RD-22, RD-23) for SNI.

Inside :meth:`Transport.reusing`, a session that delivered stays open for ``Limits.connection_idle`` seconds for
the next delivery on the very terms it was opened and checked with (:mod:`diag.relay.reuse`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import secrets
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

import aiosmtplib
from cryptography import x509

from diag.errors import ConfigError, DnsError
from diag.net.dns import Resolver
from diag.net.tls import cert_info, load_key_pair
from diag.relay.mailbox import deliver_local
from diag.relay.plan import Attempt, Connect, Outcome, Result, Route, SessionResult, TlsLevel
from diag.relay.reuse import ConnectionCache, Reusable, quit_session
from diag.relay.settings import RelaySettings
from diag.relay.text import one_line, printable
from diag.routing import certificate_matches

__all__ = ["Transport"]

log = logging.getLogger("diag.relay")

# RFC 5321 §4.5.3.2.6: wait at least 10 minutes for the reply to the final dot (RD-33); the per-operation
# timeout is far shorter.
_DATA_DONE_TIMEOUT: Final = 600.0
# RD-37: a bound on one whole SMTP session, against a tarpit that answers each command just in time.
_SESSION_DEADLINE: Final = 900.0
# OpenSSL verify codes meaning "no path to a trusted root": the cloud reports these as UntrustedRoot (§5.2).
_UNTRUSTED_ROOT: Final = frozenset({2, 18, 19, 20, 21})
# exchange-model §5.2: the cloud's texts for connectors it could not use.
_CANNOT_CONNECT: Final = "450 4.4.317 Cannot connect to remote server"
_STARTTLS_REQUIRED: Final = f"{_CANNOT_CONNECT} [Message=451 5.7.3 STARTTLS is required to send mail]"


@dataclass(slots=True)
class _Progress:
    """How far a session got, for deciding what an interruption means: ``sending`` are the recipients whose
    message is on its way (between DATA and the reply to the final dot); ``decided`` and ``retry`` as in
    :class:`~diag.relay.plan.SessionResult`, for the others."""

    sending: list[str] = field(default_factory=list)
    decided: list[Outcome] = field(default_factory=list)
    retry: dict[str, str] = field(default_factory=dict)


class _AddressFailed(Exception):
    """This address cannot take the message now; ``reply`` says why in the cloud's words."""

    def __init__(self, reply: str, *, plaintext: bool = False) -> None:
        super().__init__(reply)
        self.reply = reply
        self.plaintext = plaintext


class Transport:
    """Delivers groups of recipients: :meth:`send` over SMTP along a route, :meth:`store` to local mailboxes."""

    def __init__(self, settings: RelaySettings, resolver: Resolver) -> None:
        self._settings = settings
        self._resolver = resolver
        self._contexts: dict[bool, ssl.SSLContext] = {}
        self._random = secrets.SystemRandom()
        # Sessions kept open between deliveries, inside reusing() only.
        self._connections: ConnectionCache | None = None

    @asynccontextmanager
    async def reusing(self) -> AsyncIterator[None]:
        """Keep sessions that delivered open between deliveries for the block (``Limits.connection_idle`` > 0);
        every one still open is closed (QUIT) when the block ends."""
        limits = self._settings.limits
        if limits.connection_idle <= 0:
            yield
            return
        self._connections = ConnectionCache(
            idle=limits.connection_idle,
            lifetime=limits.connection_lifetime,
            size=max(1, limits.delivery_concurrency),
        )
        try:
            yield
        finally:
            connections, self._connections = self._connections, None
            await connections.close()

    async def store(self, sender: str, recipients: Sequence[str], content: bytes) -> list[Outcome]:
        """Store the message in each recipient's local Maildir."""
        # RFC 5321 §4.4: the final delivery adds Return-Path with the envelope sender.
        message = f"Return-Path: <{printable(sender)}>\r\n".encode() + content
        outcomes = []
        for recipient in recipients:
            try:
                await asyncio.to_thread(deliver_local, self._settings.maildir, recipient, message)
            except ValueError as exc:
                outcomes.append(Outcome(recipient, Result.FAILED, f"550 5.1.1 {exc}", "local"))
            except OSError as exc:
                reply = f"451 4.3.0 Cannot store the message in the mailbox: {exc.strerror or exc}"
                outcomes.append(Outcome(recipient, Result.DEFERRED, reply, "local"))
            else:
                outcomes.append(Outcome(recipient, Result.DELIVERED, "250 2.0.0 Delivered to the mailbox", "local"))
        return outcomes

    async def send(self, route: Route, sender: str, recipients: Sequence[str], content: bytes) -> tuple[Outcome, ...]:
        """One attempt along ``route``: the DNS questions and sessions its :class:`Attempt` asks for."""
        settings = self._settings
        attempt = Attempt(
            route,
            recipients,
            own_name=settings.hostname,
            allow_private=settings.allow_private,
            address_limit=settings.limits.addresses_per_delivery,
            rng=self._random,
        )
        last: SessionResult | None = None
        while (step := attempt.step()) is not None:
            if isinstance(step, Connect):
                if step.plaintext and last is not None:
                    why = next(iter(last.retry.values()), "")
                    log.warning(
                        "delivery to %s[%s]: opportunistic TLS failed, trying without: %s", step.host, step.ip, why
                    )
                last = await self.session(route, step, sender, content)
                attempt.connected(last)
                continue
            try:
                answer = await self._resolver.query(step.name, step.rdtype)
            except DnsError as exc:
                attempt.answer(exc)
            else:
                attempt.answer(answer)
        return attempt.outcomes

    # --- one SMTP session -------------------------------------------------------------------------------------

    async def session(self, route: Route, to: Connect, sender: str, content: bytes) -> SessionResult:
        """One session with ``to.ip`` for ``to.recipients``: a kept one on the same terms, else a new one."""
        host, ip, recipients = to.host, to.ip, list(to.recipients)
        where = f"[LastAttemptedServerName={host}] [LastAttemptedIP={ip}:{self._settings.smtp_port}]"
        # A kept session serves only a delivery on the very terms it was opened and checked with.
        terms = (host, ip, route.tls, to.plaintext)
        connections = self._connections
        kept = await connections.take(terms) if connections is not None else None
        smtp = kept.smtp if kept is not None else self._client(ip)
        opened = kept.opened if kept is not None else asyncio.get_running_loop().time()
        progress = _Progress()
        reusable: Reusable | None = None
        try:
            async with asyncio.timeout(_SESSION_DEADLINE):
                tls = kept.tls if kept is not None else await self._open(smtp, route, host, where, to.plaintext)
                session = await self._transfer(smtp, route, host, ip, tls, sender, recipients, content, progress)
                reusable = Reusable(smtp, tls, opened)
                return session
        except _AddressFailed as exc:
            return SessionResult((), dict.fromkeys(recipients, exc.reply), plaintext=exc.plaintext)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            timed_out = isinstance(exc, TimeoutError)
            if progress.sending:
                # RD-32: the message may have arrived; keep it queued (a duplicate is acceptable, a loss is not)
                # and try no other address in this attempt.
                what = "timed out" if timed_out else "was closed"
                reply = f"451 4.4.318 Connection {what} after the message was sent, outcome unknown {where}"
                retry = dict.fromkeys(progress.sending, reply) | progress.retry
                return SessionResult(tuple(progress.decided), retry, stop=True)
            if timed_out:
                reply = f"450 4.4.315 Connection timed out {where}"
            else:
                reply = f"450 4.4.318 Connection was closed abruptly [Message={one_line(str(exc))}] {where}"
            return SessionResult((), dict.fromkeys(recipients, reply))
        finally:
            if reusable is not None and connections is not None:
                connections.give(terms, reusable)
            else:
                await quit_session(smtp)

    def _client(self, ip: str) -> aiosmtplib.SMTP:
        settings = self._settings
        source = settings.source_ip if settings.source_ip and _same_family(ip, settings.source_ip) else None
        return aiosmtplib.SMTP(
            hostname=ip,
            port=settings.smtp_port,
            local_hostname=settings.hostname,
            timeout=settings.limits.operation_timeout,
            start_tls=False,
            # Send from the relay's own address, so peers identify it by IP as an inbound connector would.
            source_address=(source, 0) if source else None,
        )

    async def _open(self, smtp: aiosmtplib.SMTP, route: Route, host: str, where: str, plaintext: bool) -> str:
        """Connect, EHLO, STARTTLS as the route demands; returns the TLS version, or "none"."""
        try:
            await smtp.connect()
        except aiosmtplib.SMTPConnectResponseError as exc:
            raise _AddressFailed(f"{_reply(exc.code, exc.message)} {where}") from None  # RD-31: next host
        except aiosmtplib.SMTPConnectTimeoutError:
            raise _AddressFailed(f"450 4.4.315 Connection timed out {where}") from None
        except (aiosmtplib.SMTPConnectError, OSError) as exc:
            raise _AddressFailed(f"450 4.4.316 Connection refused [Message={one_line(str(exc))}] {where}") from None
        required = route.tls.required
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError as exc:
            if required:  # RD-36: no HELO fallback where TLS is required (STARTTLS needs EHLO)
                raise _AddressFailed(f"{_reply(exc.code, exc.message)} {where}") from None
            try:
                await smtp.helo()
            except aiosmtplib.SMTPHeloError as helo_exc:
                raise _AddressFailed(f"{_reply(helo_exc.code, helo_exc.message)} {where}") from None
        if plaintext or not (required or smtp.supports_extension("starttls")):
            return "none"
        if not smtp.supports_extension("starttls"):
            raise _AddressFailed(f"{_STARTTLS_REQUIRED} {where}")  # RD-20: never carry on in plain text
        try:
            context = await self._context(verify=route.tls.level is TlsLevel.VERIFY)
        except (OSError, ssl.SSLError, ConfigError) as exc:
            raise _AddressFailed(f"451 4.3.5 Cannot load this host's TLS settings: {exc}") from None
        try:
            await smtp.starttls(server_hostname=_server_name(host, smtp.hostname), tls_context=context)
        except aiosmtplib.SMTPResponseException as exc:
            message = f"{_CANNOT_CONNECT} [Message={_reply(exc.code, exc.message)}] {where}"
            if required:  # RD-21
                raise _AddressFailed(message) from None
            log.warning("delivery to %s: STARTTLS refused (%s); opportunistic TLS, continuing without", host, message)
            return "none"
        except ssl.SSLCertVerificationError as exc:
            raise _AddressFailed(_certificate_reply(exc, where)) from None
        except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
            why = f"TLS negotiation failed: {one_line(str(exc))}"
            raise _AddressFailed(f"{_CANNOT_CONNECT} [Message={why}] {where}", plaintext=not required) from None
        ssl_object = smtp.get_transport_info("ssl_object")
        if ssl_object is None:
            raise _AddressFailed(f"{_CANNOT_CONNECT} [Message=no TLS session after STARTTLS] {where}")
        if route.tls.name_check:
            pattern = route.tls.name or host
            der = ssl_object.getpeercert(binary_form=True)
            info = cert_info(x509.load_der_x509_certificate(der)) if der else None
            # The cloud matches "the subject name or subject alternative name (SAN)" (exchange-model §1).
            names = (*info.dns_names, *info.common_names) if info is not None else ()
            if not certificate_matches(pattern, names):
                presented = info.subject if info is not None else "no certificate"
                raise _AddressFailed(
                    f"{_CANNOT_CONNECT} [Message=SubjectMismatch Expected Subject: {pattern}. "
                    f"Presented Subject: {one_line(presented)}.] {where}"
                )
        version = str(ssl_object.version() or "TLS")
        try:
            await smtp.ehlo()  # RFC 3207 §4.2: what was learnt before TLS is forgotten
        except aiosmtplib.SMTPHeloError as exc:
            raise _AddressFailed(f"{_reply(exc.code, exc.message)} {where}") from None
        return version

    async def _transfer(
        self,
        smtp: aiosmtplib.SMTP,
        route: Route,
        host: str,
        ip: str,
        tls: str,
        sender: str,
        recipients: list[str],
        content: bytes,
        progress: _Progress,
    ) -> SessionResult:
        """MAIL, RCPT per recipient, DATA: each recipient's reply is its own outcome (RD-12)."""
        where = f"{host}[{ip}]"
        # The planner refused content with NUL, bare CR or bare LF (RD-02); the header cannot add such bytes.
        message = self._trace_header(route, host, ip, tls) + content
        options: list[str] = []
        if not message.isascii():
            if not smtp.supports_extension("8bitmime"):
                # RD-05: never send 8-bit data to a server that did not offer 8BITMIME (RFC 6152).
                reply = f"554 5.6.3 Conversion required but not supported: {host} does not offer 8BITMIME"
                return SessionResult(tuple(Outcome(r, Result.FAILED, reply, where) for r in recipients), {})
            options.append("BODY=8BITMIME")
        encoding = "ascii"
        if not all(address.isascii() for address in (sender, *recipients)):
            if not smtp.supports_extension("smtputf8"):
                reply = f"553 5.6.7 {host} does not offer SMTPUTF8, needed for a non-ASCII address (RFC 6531)"
                return SessionResult(tuple(Outcome(r, Result.FAILED, reply, where) for r in recipients), {})
            options.append("SMTPUTF8")
            encoding = "utf-8"
        try:
            await smtp.mail(sender, options=options, encoding=encoding)
        except aiosmtplib.SMTPResponseException as exc:
            reply = _reply(exc.code, exc.message)
            if exc.code >= 500:
                return SessionResult(tuple(Outcome(r, Result.FAILED, reply, where) for r in recipients), {})
            return SessionResult((), dict.fromkeys(recipients, reply))
        except ValueError as exc:  # RD-11: aiosmtplib refuses CR/LF in an address; permanent, not retried
            reply = f"553 5.1.7 The sender address cannot be sent: {exc}"
            return SessionResult(tuple(Outcome(r, Result.FAILED, reply, where) for r in recipients), {})
        decided: list[Outcome] = []
        retry: dict[str, str] = {}
        accepted: list[str] = []
        for recipient in recipients:
            try:
                await smtp.rcpt(recipient, encoding=encoding)
            except aiosmtplib.SMTPResponseException as exc:
                reply = _reply(exc.code, exc.message)
                if exc.code >= 500:
                    decided.append(Outcome(recipient, Result.FAILED, reply, where))
                else:
                    retry[recipient] = reply
            except ValueError as exc:  # RD-11
                reply = f"553 5.1.3 The recipient address cannot be sent: {exc}"
                decided.append(Outcome(recipient, Result.FAILED, reply, where))
            else:
                accepted.append(recipient)
        if not accepted:
            return SessionResult(tuple(decided), retry)
        progress.sending, progress.decided, progress.retry = accepted, decided, retry
        limits = self._settings.limits
        try:
            response = await smtp.data(message, timeout=max(limits.operation_timeout, _DATA_DONE_TIMEOUT))
        except aiosmtplib.SMTPResponseException as exc:
            # A reply to DATA or to the final dot: the server decided, so the outcome is known.
            progress.sending = []
            reply = _reply(exc.code, exc.message)
            if exc.code >= 500:
                return SessionResult((*decided, *(Outcome(r, Result.FAILED, reply, where) for r in accepted)), retry)
            return SessionResult(tuple(decided), dict.fromkeys(accepted, reply) | retry)
        progress.sending = []
        done = _reply(response.code, response.message)
        return SessionResult((*decided, *(Outcome(r, Result.DELIVERED, done, where) for r in accepted)), retry)

    def _trace_header(self, route: Route, host: str, ip: str, tls: str) -> bytes:
        """This hop's ``X-Diag-Trace`` line: connector, rule, next hop and TLS, for probes to prove the route."""
        settings = self._settings
        connector = json.dumps(route.connector) if route.connector is not None else "none"
        line = (
            f"X-Diag-Trace: hop={settings.hostname}; role={settings.role.value}; connector={connector}; "
            f"rule={route.rule}; to={host}[{ip}]; tls={tls}"
        )
        return printable(line).encode("ascii", "replace") + b"\r\n"

    async def _context(self, *, verify: bool) -> ssl.SSLContext:
        context = self._contexts.get(verify)
        if context is None:
            context = await asyncio.to_thread(self._make_context, verify)
            self._contexts[verify] = context
        return context

    def _make_context(self, verify: bool) -> ssl.SSLContext:
        settings = self._settings
        if verify:
            cafile = str(settings.ca_file) if settings.ca_file is not None else None
            context = ssl.create_default_context(cafile=cafile)
            # Names are matched by certificate_matches with the connector's rules (TlsDomain may be *.domain),
            # not by ssl's host-name check.
            context.check_hostname = False
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if settings.tls_cert is not None:
            load_key_pair(context, settings.tls_cert, settings.tls_key)
        return context


def _same_family(a: str, b: str) -> bool:
    return ipaddress.ip_address(a).version == ipaddress.ip_address(b).version


def _certificate_reply(exc: ssl.SSLCertVerificationError, where: str) -> str:
    reason = one_line(str(exc.verify_message or exc.reason or exc))
    if exc.verify_code in _UNTRUSTED_ROOT:
        # exchange-model §5.2: a missing intermediate or unknown root reads "UntrustedRoot".
        return f"{_CANNOT_CONNECT} [Message=UntrustedRoot ({reason})] {where}"
    return f"450 4.7.320 Certificate validation failed [Message={reason}] {where}"


def _server_name(host: str, ip: str | None) -> str:
    """The name for SNI: the host name (already without its trailing dot, RD-23), or for a smart host given as an
    address or range the address connected to."""
    try:
        ipaddress.ip_network(host, strict=False)
    except ValueError:
        return host
    return ip or host


def _reply(code: int, message: str) -> str:
    return f"{code} {one_line(message)}".strip()
