"""The sender: submit one probe through ``--via`` and record what the server answered, as typed facts.

Port 465 is implicit TLS (RFC 8314 §3.3); on any other port STARTTLS is used whenever it is offered, and
``require_tls`` refuses to go on without it. The reply to DATA is the first piece of evidence: accepted (with
the time and the TLS of this hop) or refused (the reply, at the stage that refused it). :func:`send_probe`
never raises for network trouble and never puts a password into any text it returns (security-cases.md PR-06).

Certificates. The handshake itself does not verify (so that a bad certificate is observed, not just "failed");
the chain, dates and name are then verified with cryptography against ``ca_file`` or the system store, for the
name the probe was told to reach (``Via.host``; an address literal is matched as an address). What happens with
a failed verification depends on the hop:

- When credentials are sent, or the port is not 25 (submission), verification is required: the probe is
  refused at the TLS stage before AUTH or MAIL, as any mail client would refuse.
- On port 25 without credentials the via is an MX: SMTP between servers is opportunistic (RFC 3207 §4.1; the
  cloud and Internet MTAs deliver to an MX whose certificate does not verify unless MTA-STS, DANE or a
  connector's TlsSettings say otherwise), so the probe goes on and the failure is a fact in
  :attr:`SubmissionTls.verified` / :attr:`SubmissionTls.verify_error` for the caller to judge.

``verify=True`` / ``False`` overrides that choice.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import ssl
from dataclasses import field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import aiosmtplib
from cryptography import x509
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from diag.errors import ConfigError
from diag.frozen import frozen
from diag.net.tls import load_key_pair, load_trust_store
from diag.probe.facts import Accepted, Refused, Stage, SubmissionTls
from diag.probe.message import Probe

__all__ = [
    "Accepted",
    "Credentials",
    "Refused",
    "Stage",
    "SubmissionTls",
    "Via",
    "send_probe",
    "verification_required",
]

_IMPLICIT_TLS_PORT: Final = 465
_MX_PORT: Final = 25
_REPLY_MAX: Final = 500
_QUIT_TIMEOUT: Final = 5.0


@frozen
class Via:
    """Where the probe enters: ``host`` (the name to verify the certificate for and send as SNI) and ``port``;
    ``address`` is where to connect when it is not ``host`` itself (an MX address the caller resolved)."""

    host: str
    port: int = _MX_PORT
    address: str | None = None

    def __str__(self) -> str:
        where = f" [{self.address}]" if self.address and self.address != self.host else ""
        return f"{self.host}{where}:{self.port}"


@frozen
class Credentials:
    """AUTH credentials for submission; the password never appears in a repr or in any returned text."""

    user: str
    password: str = field(repr=False)


class _Stop(Exception):
    """Ends a submission with its Refused facts."""

    def __init__(self, refused: Refused) -> None:
        super().__init__(refused.reply)
        self.refused = refused


async def send_probe(
    probe: Probe,
    via: Via,
    *,
    timeout: float,  # noqa: ASYNC109 - bounds each network operation, not the whole submission
    ehlo_name: str,
    require_tls: bool = False,
    credentials: Credentials | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    ca_file: Path | None = None,
    verify: bool | None = None,
    implicit_tls: bool | None = None,
) -> Accepted | Refused:
    """Submit ``probe`` through ``via``; every network operation is bounded by ``timeout`` seconds.

    ``implicit_tls``: TLS from the first byte; default: when the port is 465.

    Raises ConfigError only for the caller's own files (an unreadable CA file, client certificate or key).
    """
    must_verify = verify if verify is not None else verification_required(via, credentials=credentials)
    store = await asyncio.to_thread(load_trust_store, ca_file)
    context = _context(client_cert, client_key)
    implicit = implicit_tls if implicit_tls is not None else via.port == _IMPLICIT_TLS_PORT
    session = _Session(probe, via, timeout, credentials, implicit)
    try:
        return await session.run(
            ehlo_name=ehlo_name, context=context, store=store, require_tls=require_tls, must_verify=must_verify
        )
    except _Stop as stop:
        return stop.refused
    finally:
        await session.close()


def verification_required(via: Via, *, credentials: Credentials | None) -> bool:
    """Must the certificate verify before the probe goes on? Yes for submission (credentials, or any port but
    25); no for an MX hop, where a failure is reported instead (see the module docstring)."""
    return credentials is not None or via.port != _MX_PORT


def _context(client_cert: Path | None, client_key: Path | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Verified separately (module docstring), so that a failure is a fact with the verifier's words.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if client_cert is not None:
        try:
            load_key_pair(context, client_cert, client_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the client certificate {client_cert}: {exc}") from None
    return context


class _Session:
    def __init__(self, probe: Probe, via: Via, timeout: float, credentials: Credentials | None, implicit: bool) -> None:
        self.probe, self.via, self.timeout, self.credentials = probe, via, timeout, credentials
        self.implicit = implicit
        self.smtp: aiosmtplib.SMTP | None = None
        self.tls: SubmissionTls | None = None

    def stop(self, stage: Stage, code: int | None, reply: str, *, timed_out: bool = False) -> _Stop:
        return _Stop(Refused(str(self.via), stage, code, self._scrub(reply), timed_out, self.tls))

    def _scrub(self, text: str) -> str:
        """One line, bounded, with no trace of the password (a hostile server may echo our AUTH lines)."""
        line = " ".join(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").split())
        if self.credentials is not None and self.credentials.password:
            secret = self.credentials.password
            user = self.credentials.user
            forms = {
                secret,
                _b64(secret),
                _b64(f"\0{user}\0{secret}"),
                _b64(f"{user}\0{user}\0{secret}"),
            }
            for form in sorted(forms, key=len, reverse=True):
                line = line.replace(form, "***")
        return line[:_REPLY_MAX]

    async def run(
        self,
        *,
        ehlo_name: str,
        context: ssl.SSLContext,
        store: tuple[x509.Certificate, ...],
        require_tls: bool,
        must_verify: bool,
    ) -> Accepted:
        implicit = self.implicit
        sock = await self._connect()
        smtp = aiosmtplib.SMTP(
            hostname=self.via.host,
            sock=sock,
            local_hostname=ehlo_name,
            timeout=self.timeout,
            use_tls=implicit,
            start_tls=False,
            tls_context=context if implicit else None,
        )
        self.smtp = smtp
        await self._greet(smtp)
        if implicit:
            self._record_tls(smtp, implicit=True, store=store, must_verify=must_verify)
        await self._ehlo(smtp)
        if not implicit:
            if smtp.supports_extension("starttls"):
                await self._starttls(smtp, context)
                self._record_tls(smtp, implicit=False, store=store, must_verify=must_verify)
                await self._ehlo(smtp)  # RFC 3207 §4.2: what was learnt before TLS is forgotten
            elif require_tls:
                raise self.stop(Stage.STARTTLS, None, f"{self.via} does not offer STARTTLS and TLS is required")
            elif self.credentials is not None:
                # security-cases PC-05: credentials only after TLS, even when AUTH is offered in clear.
                raise self.stop(
                    Stage.STARTTLS, None, f"{self.via} does not offer STARTTLS; credentials are never sent in clear"
                )
        if self.credentials is not None:
            await self._auth(smtp)
        return await self._transfer(smtp)

    async def _connect(self) -> socket.socket:
        address = self.via.address or self.via.host
        try:
            sock = await asyncio.to_thread(socket.create_connection, (address, self.via.port), self.timeout)
        except TimeoutError:
            raise self.stop(
                Stage.CONNECT, None, f"no connection to {self.via} within {self.timeout:g} s", timed_out=True
            ) from None
        except OSError as exc:
            raise self.stop(Stage.CONNECT, None, f"cannot connect to {self.via}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        return sock

    async def _greet(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.connect()
        except aiosmtplib.SMTPConnectResponseError as exc:
            raise self.stop(Stage.CONNECT, exc.code, f"{exc.code} {exc.message}") from None
        except (aiosmtplib.SMTPConnectTimeoutError, aiosmtplib.SMTPTimeoutError):
            raise self.stop(
                Stage.CONNECT, None, f"no greeting from {self.via} within {self.timeout:g} s", timed_out=True
            ) from None
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            stage = Stage.TLS if self.implicit else Stage.CONNECT
            raise self.stop(stage, None, f"{self.via}: {_cause(exc)}") from None

    async def _ehlo(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError as exc:
            if smtp.get_transport_info("sslcontext") is not None:  # after TLS, EHLO is the only way on
                raise self.stop(Stage.EHLO, exc.code, f"{exc.code} {exc.message}") from None
            try:
                await smtp.helo()  # RFC 5321 §4.1.4: a server without EHLO may still take HELO
            except aiosmtplib.SMTPHeloError as helo_exc:
                raise self.stop(Stage.EHLO, helo_exc.code, f"{helo_exc.code} {helo_exc.message}") from None
            except (aiosmtplib.SMTPException, OSError) as helo_exc:
                raise self._failed(Stage.EHLO, helo_exc) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise self._failed(Stage.EHLO, exc) from None

    async def _starttls(self, smtp: aiosmtplib.SMTP, context: ssl.SSLContext) -> None:
        try:
            await smtp.starttls(server_hostname=self.via.host, tls_context=context)
        except aiosmtplib.SMTPResponseException as exc:
            raise self.stop(Stage.STARTTLS, exc.code, f"{exc.code} {exc.message}") from None
        except aiosmtplib.SMTPTimeoutError:
            raise self.stop(
                Stage.TLS, None, f"no TLS handshake with {self.via} within {self.timeout:g} s", timed_out=True
            ) from None
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise self.stop(Stage.TLS, None, f"TLS handshake with {self.via} failed: {_cause(exc)}") from None

    def _record_tls(
        self, smtp: aiosmtplib.SMTP, *, implicit: bool, store: tuple[x509.Certificate, ...], must_verify: bool
    ) -> None:
        ssl_object = smtp.get_transport_info("ssl_object")
        if ssl_object is None:
            raise self.stop(Stage.TLS, None, f"{self.via}: no TLS session was established")
        cipher = ssl_object.cipher()
        der = ssl_object.getpeercert(binary_form=True)
        chain = _peer_chain(ssl_object)
        error = _verify(der, chain, store, self.via.host)
        self.tls = SubmissionTls(
            version=str(ssl_object.version() or ""),
            cipher=cipher[0] if cipher else "",
            implicit=implicit,
            verified=not error,
            verify_error=error,
        )
        if error and must_verify:
            raise self.stop(Stage.TLS, None, f"the certificate of {self.via} does not verify: {error}")

    async def _auth(self, smtp: aiosmtplib.SMTP) -> None:
        assert self.credentials is not None  # run() calls this only with credentials
        if smtp.get_transport_info("sslcontext") is None:
            raise self.stop(Stage.AUTH, None, "credentials are never sent without TLS")
        try:
            await smtp.login(self.credentials.user, self.credentials.password)
        except aiosmtplib.SMTPResponseException as exc:
            raise self.stop(Stage.AUTH, exc.code, f"{exc.code} {exc.message}") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise self._failed(Stage.AUTH, exc) from None

    async def _transfer(self, smtp: aiosmtplib.SMTP) -> Accepted:
        for stage in (Stage.MAIL, Stage.RCPT):
            try:
                if stage is Stage.MAIL:
                    await smtp.mail(self.probe.sender)
                else:
                    await smtp.rcpt(self.probe.recipient)
            except aiosmtplib.SMTPResponseException as exc:
                raise self.stop(stage, exc.code, f"{exc.code} {exc.message}") from None
            except (aiosmtplib.SMTPException, OSError) as exc:
                raise self._failed(stage, exc) from None
        try:
            reply = await smtp.data(self.probe.content)
        except aiosmtplib.SMTPResponseException as exc:
            raise self.stop(Stage.DATA, exc.code, f"{exc.code} {exc.message}") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise self._failed(Stage.DATA, exc) from None
        return Accepted(str(self.via), reply.code, self._scrub(reply.message), datetime.now(UTC), self.tls)

    def _failed(self, stage: Stage, exc: BaseException) -> _Stop:
        timed_out = isinstance(exc, (TimeoutError, aiosmtplib.SMTPTimeoutError))
        return self.stop(stage, None, f"{self.via}: {_cause(exc)}", timed_out=timed_out)

    async def close(self) -> None:
        """QUIT when the session is still open (security-cases PC-21), but never wait long for it."""
        smtp = self.smtp
        if smtp is None or not smtp.is_connected:
            return
        try:
            async with asyncio.timeout(min(self.timeout, _QUIT_TIMEOUT)):
                await smtp.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            smtp.close()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError):
        return str(cause.reason or cause)
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return str(exc) or type(exc).__name__


def _peer_chain(ssl_object: ssl.SSLObject) -> list[bytes]:
    """The certificates the server sent, leaf first (see diag.net.smtp._peer_chain for the 3.11 detour)."""
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if getter is None:
        leaf = ssl_object.getpeercert(binary_form=True)
        return [leaf] if leaf else []
    import _ssl  # the private module's DER constant, for the private method's return type

    return [cert if isinstance(cert, bytes) else cert.public_bytes(_ssl.ENCODING_DER) for cert in getter() or []]


def _verify(leaf_der: bytes | None, chain: list[bytes], store: tuple[x509.Certificate, ...], host: str) -> str:
    """ "" when the chain verifies now for ``host`` against ``store``, else the verifier's reason."""
    if not leaf_der:
        return "the server sent no certificate"
    try:
        leaf = x509.load_der_x509_certificate(leaf_der)
        intermediates = [x509.load_der_x509_certificate(der) for der in chain[1:]]
    except ValueError as exc:
        return f"unreadable certificate: {exc}"
    try:
        subject: DNSName | IPAddress = IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = DNSName(host.rstrip("."))
    try:
        PolicyBuilder().store(Store(list(store))).time(datetime.now(UTC)).build_server_verifier(subject).verify(
            leaf, intermediates
        )
    except (VerificationError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return ""
