"""Delivery: the spool's due recipients go to a local Maildir, a connector's smart hosts, the MX, or the smart host.

Where each recipient goes depends on the relay's role (ARCHITECTURE §5):

- every role: a local mailbox (``RelaySettings.is_local``) is stored in its Maildir;
- cloud: the outbound connector :func:`diag.routing.route` picks (exchange-model §4) — its SmartHosts when
  UseMXRecord is false, else the recipient domain's MX — with the TLS its TlsSettings demand; no connector:
  the MX, with opportunistic TLS;
- onprem: everything else to the smart host, TLS required and the certificate verified for the smart host's name;
- internet: nothing else (a plain mail host never relays).

Recipients that share a route share one SMTP transaction. Each reply is kept per recipient (RD-12): 2xx
delivered, 5xx failed, 4xx and every connection, TLS or timeout problem pending with exponential backoff until
``Limits.max_age``, then failed as expired. Failures are bounced (RFC 3464, :mod:`diag.relay.dsn`): the bounce is
stored in the spool before the failure is recorded, so a crash in between costs a duplicate bounce, never a
lost one; likewise a recipient is recorded as delivered only after the remote 250 (a crash in between costs a
duplicate delivery, never a loss: RD-43).

Hosts are tried in order (MX by preference, equal preferences shuffled), each host's A then AAAA addresses, at
most ``Limits.addresses_per_delivery`` addresses per attempt (RD-42). Recipients an address did not settle (a
4xx, a refused connection, a failed handshake) go on to the next address, like Postfix's; when the connection
breaks after the message was sent, the outcome is unknown and no other address is tried in that attempt (RD-32).
While :meth:`Deliverer.run` works the queue, a session that delivered stays open for ``Limits.connection_idle``
seconds for the next delivery on the same terms (:mod:`diag.relay.reuse`).

TLS levels (exchange-model §1 TlsSettings; security-cases §2.3):

=========================  ===================================================================================
TlsSettings unset           STARTTLS if offered, certificate not checked; a failed handshake is retried once
                            in plain text on a new connection (Postfix ``may``, RD-21: a deliberate, logged choice)
EncryptionOnly              STARTTLS required, certificate not checked
CertificateValidation       STARTTLS required, chain verified (``ca_file`` or the system store), no name check
DomainValidation            as CertificateValidation, and a certificate name must match TlsDomain
onprem smart host           as DomainValidation with TlsDomain = the smart host's name
=========================  ===================================================================================

Where TLS is required it is never given up for plain text: aiosmtplib's default ``start_tls=None`` silently
continues without TLS (security-cases finding 5), so the client connects with ``start_tls=False`` and calls
``starttls()`` itself, with the host's name (without its trailing dot: RD-22, RD-23) for SNI.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import ipaddress
import itertools
import json
import logging
import re
import secrets
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import aiosmtplib
import dns.name
import dns.rdtypes.ANY.MX
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
from aiosmtplib.email import quote_address
from cryptography import x509

from diag.config import OutboundConnector, RelayRole, TlsSettings
from diag.errors import ConfigError, DnsError
from diag.net.dns import DnsStatus, Resolver, name_text
from diag.net.tls import cert_info, load_key_pair
from diag.relay import dsn
from diag.relay.mailbox import deliver_local
from diag.relay.reuse import ConnectionCache, Reusable, quit_session
from diag.relay.settings import RelaySettings
from diag.relay.spool import Envelope, RecipientState, RecipientStatus, Spool, SpoolError
from diag.routing import certificate_matches, recipient_domain, route

__all__ = ["Deliverer"]

log = logging.getLogger("diag.relay")

# RFC 5321 §4.5.3.2.6: wait at least 10 minutes for the reply to the final dot (RD-33); the per-operation
# timeout is far shorter.
_DATA_DONE_TIMEOUT: Final = 600.0
# RD-37: a bound on one whole SMTP session, against a tarpit that answers each command just in time.
_SESSION_DEADLINE: Final = 900.0
# DNS-10: at most this many MX hosts are considered (Postfix drops answers of more than 100 records).
_MAX_MX: Final = 100
# RD-02: NUL, a CR not followed by LF, an LF not preceded by CR. aiosmtplib would normalise the CR/LF variants
# but passes NUL through; a message carrying any of them was not cleaned on the way in, so it is not forwarded.
_BAD_CONTENT: Final = re.compile(rb"\x00|\r(?!\n)|(?<!\r)\n")
_BAD_CONTENT_REPLY: Final = "554 5.6.0 Message content contains NUL, a bare CR or a bare LF; it is not forwarded"
# RD-41: a message that has passed this many hops is looping (Postfix hopcount_limit = 50).
_MAX_HOPS: Final = 50
_LOOP_REPLY: Final = "554 5.4.6 Too many hops: mail loop detected"
_RECEIVED: Final = re.compile(rb"^received:", re.IGNORECASE | re.MULTILINE)


def _same_family(a: str, b: str) -> bool:
    return ipaddress.ip_address(a).version == ipaddress.ip_address(b).version


def _hops(content: bytes) -> int:
    """How many Received: lines the header section holds."""
    header_end = content.find(b"\r\n\r\n")
    return len(_RECEIVED.findall(content[: header_end if header_end >= 0 else len(content)]))
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# DNS-12: an MX target must be a host name; DNS-06: a numeric "name" is an address written as a name.
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME: Final = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_NUMERIC: Final = re.compile(r"[0-9.]+")
# OpenSSL verify codes meaning "no path to a trusted root": the cloud reports these as UntrustedRoot (§5.2).
_UNTRUSTED_ROOT: Final = frozenset({2, 18, 19, 20, 21})
# exchange-model §5.2: the cloud's texts for connectors it could not use.
_CANNOT_CONNECT: Final = "450 4.4.317 Cannot connect to remote server"
_STARTTLS_REQUIRED: Final = f"{_CANNOT_CONNECT} [Message=451 5.7.3 STARTTLS is required to send mail]"


class Result(enum.StrEnum):
    """What one delivery attempt did for one recipient (the ``result=`` of the log line)."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"
    FAILED = "failed"


class _Tls(enum.Enum):
    OPPORTUNISTIC = "opportunistic"
    ENCRYPT = "encrypt"
    VERIFY = "verify"


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a group of recipients goes; recipients with equal routes share one SMTP transaction.

    Attributes:
        label: the spool's ``route``: ``connector:<name>/<rule>``, ``mx``, ``smarthost`` or ``local``.
        connector: the outbound connector's name, for the trace header.
        rule: why it was chosen (the routing rule, ``mx``, ``smarthost``, ``local``).
        smart_hosts: the hosts to use, in order (unless ``mx``).
        mx: use the MX hosts of ``domain``.
        domain: the recipient domain of an MX route ("" otherwise, so that smart-host routes group domains).
        tls: the TLS level.
        name_check: the certificate must carry a name matching ``tls_name``.
        tls_name: the pattern for ``name_check`` (TlsDomain); None: the name of the host connected to.
    """

    label: str
    connector: str | None = None
    rule: str = ""
    smart_hosts: tuple[str, ...] = ()
    mx: bool = False
    domain: str = ""
    tls: _Tls = _Tls.OPPORTUNISTIC
    name_check: bool = False
    tls_name: str | None = None


_LOCAL: Final = _Route("local", rule="local")
_NOWHERE: Final = _Route("none", rule="none")  # refused before any route applied


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One recipient's result of one attempt: the reply (or our own text in the same form) and the host."""

    recipient: str
    result: Result
    reply: str
    host: str = "none"


@dataclass(slots=True)
class _Session:
    """What one SMTP session to one address settled.

    ``retry`` are the recipients this address did not settle (the next address may), each with the reason.
    ``stop``: the outcome is unknown (the connection broke after the message was sent), so no further address
    is tried in this attempt. ``plaintext``: opportunistic STARTTLS failed; the address may be tried without.
    """

    decided: list[_Outcome]
    retry: dict[str, str]
    stop: bool = False
    plaintext: bool = False


@dataclass(slots=True)
class _Progress:
    """How far a session got, for deciding what an interruption means: ``sending`` are the recipients whose
    message is on its way (between DATA and the reply to the final dot); ``decided`` and ``retry`` as in
    :class:`_Session`, for the others."""

    sending: list[str] = field(default_factory=list)
    decided: list[_Outcome] = field(default_factory=list)
    retry: dict[str, str] = field(default_factory=dict)


class _AddressFailed(Exception):
    """This address cannot take the message now; ``reply`` says why in the cloud's words."""

    def __init__(self, reply: str, *, plaintext: bool = False) -> None:
        super().__init__(reply)
        self.reply = reply
        self.plaintext = plaintext


class _RouteFailed(Exception):
    """The route has no host to try: ``result`` is DEFERRED or FAILED for every recipient on it."""

    def __init__(self, result: Result, reply: str) -> None:
        super().__init__(reply)
        self.result = result
        self.reply = reply


@dataclass(frozen=True, slots=True)
class _Lookup:
    """A host's usable addresses, A before AAAA; ``problem`` when there are none (temporary: DNS failed)."""

    addresses: tuple[str, ...]
    problem: str = ""
    temporary: bool = False


class Deliverer:
    """Works the spool: :meth:`run` until stopped; :meth:`deliver_once` for one message.

    ``stop_grace``: seconds :meth:`run` lets deliveries in flight finish after ``stop`` is set; those still
    running then are cancelled and stay pending in the spool, to be retried after a restart.
    """

    def __init__(self, settings: RelaySettings, spool: Spool, resolver: Resolver, *, stop_grace: float = 5.0) -> None:
        self._settings = settings
        self._spool = spool
        self._resolver = resolver
        self._stop_grace = stop_grace
        self._slots = asyncio.Semaphore(max(1, settings.limits.delivery_concurrency))
        self._wake = asyncio.Event()
        self._kicked = False
        self._fresh: deque[str] = deque()
        self._active: set[str] = set()
        # Messages whose outcome could not be recorded (disk full, I/O error), with the loop time until which
        # run() leaves them alone: retrying at every scan would send a duplicate to the receiver each time.
        self._held: dict[str, float] = {}
        self._contexts: dict[bool, ssl.SSLContext] = {}
        self._random = secrets.SystemRandom()
        # Sessions kept open between deliveries while run() works the queue (deliver_once alone keeps none).
        self._connections: ConnectionCache | None = None

    def kick(self, qid: str | None = None) -> None:
        """Deliver ``qid`` (just queued) now, or with no id look at the whole spool now, not at the next scan.

        A queued message is handed over by id: rescanning every envelope in the spool for each new message
        cost a fifth of the relay's CPU under load (bench/relay_throughput.py).
        """
        if qid is None:
            self._kicked = True
        else:
            self._fresh.append(qid)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver due messages until ``stop`` is set, at most ``delivery_concurrency`` at a time."""
        loop = asyncio.get_running_loop()
        limits = self._settings.limits
        in_flight: dict[str, asyncio.Task[None]] = {}
        backlog: deque[str] = deque()
        watcher = asyncio.create_task(stop.wait())
        watcher.add_done_callback(lambda _: self._wake.set())
        next_scan = loop.time()
        if limits.connection_idle > 0:
            self._connections = ConnectionCache(
                idle=limits.connection_idle,
                lifetime=limits.connection_lifetime,
                size=max(1, limits.delivery_concurrency),
            )
        try:
            while not stop.is_set():
                self._wake.clear()
                if self._kicked or loop.time() >= next_scan:
                    self._kicked = False
                    self._fresh.clear()  # the scan finds them too
                    next_scan = loop.time() + limits.queue_scan
                    backlog = deque(qid for qid in await self._due() if qid not in in_flight)
                while self._fresh:
                    qid = self._fresh.popleft()
                    if qid not in in_flight and qid not in backlog:
                        backlog.append(qid)
                while backlog and len(in_flight) < max(1, limits.delivery_concurrency):
                    qid = backlog.popleft()
                    task = asyncio.create_task(self._attempt(qid), name=f"deliver:{qid}")
                    in_flight[qid] = task
                    task.add_done_callback(functools.partial(self._finished, in_flight, qid))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_scan - loop.time())):
                        await self._wake.wait()
        finally:
            watcher.cancel()
            await self._drain(list(in_flight.values()))
            connections, self._connections = self._connections, None
            if connections is not None:
                await connections.close()

    async def deliver_once(self, qid: str) -> None:
        """One attempt for every due recipient of message ``qid``; its outcome is recorded in the spool."""
        if qid in self._active:
            return
        self._active.add(qid)
        try:
            await self._deliver(qid)
        finally:
            self._active.discard(qid)

    # --- the queue runner ---------------------------------------------------------------------------------

    def _finished(self, in_flight: dict[str, asyncio.Task[None]], qid: str, _task: asyncio.Task[None]) -> None:
        in_flight.pop(qid, None)
        self._wake.set()

    async def _due(self) -> list[str]:
        try:
            messages = await asyncio.to_thread(self._spool.messages)
        except OSError as exc:
            log.error("cannot read the spool %s: %s", self._spool.root, exc)
            return []
        now, clock = datetime.now(UTC), time.monotonic()
        self._held = {qid: until for qid, until in self._held.items() if until > clock}
        return [message.qid for message in messages if message.due(now) and message.qid not in self._held]

    async def _attempt(self, qid: str) -> None:
        try:
            await self.deliver_once(qid)
        except Exception:
            # A bug or a spool that cannot be written: the message stays pending and is tried at the next scan.
            log.exception("delivery qid=%s failed unexpectedly; it stays queued", qid)

    async def _drain(self, tasks: list[asyncio.Task[None]]) -> None:
        if not tasks:
            return
        _, unfinished = await asyncio.wait(tasks, timeout=self._stop_grace)
        for task in unfinished:
            task.cancel()
        if unfinished:
            log.info("stopping: %d deliveries cancelled, they stay queued", len(unfinished))
            await asyncio.wait(unfinished)

    # --- one message --------------------------------------------------------------------------------------

    async def _deliver(self, qid: str) -> None:
        try:
            message = await asyncio.to_thread(self._spool.get, qid)
            content = await asyncio.to_thread(self._spool.content, qid)
        except (FileNotFoundError, SpoolError):
            return  # finished meanwhile, or damaged: recover() quarantines it at the next start
        now = datetime.now(UTC)
        due = {status.recipient: status for status in message.due(now)}
        if not due:
            return
        envelope = message.envelope
        groups: dict[_Route, list[str]] = {}
        settled: list[tuple[_Route, _Outcome]] = []
        # RD-02, RD-10 and RD-41 for the whole message, once: what must never be sent is not connected for.
        refusal = (
            _BAD_CONTENT_REPLY if _BAD_CONTENT.search(content)
            else _LOOP_REPLY if _hops(content) > _MAX_HOPS
            else _unsendable(envelope.mail_from, "sender")
        )  # fmt: skip
        for recipient in due:
            route_, outcome = self._plan(recipient, refusal)
            if outcome is not None:
                settled.append((route_, outcome))
            else:
                groups.setdefault(route_, []).append(recipient)

        lock = asyncio.Lock()  # one state file per message: its updates must not interleave
        failures: list[RecipientStatus] = []
        started = time.monotonic()

        async def record(route_: _Route, outcomes: Sequence[_Outcome]) -> None:
            latency = int((time.monotonic() - started) * 1000)
            updates: list[RecipientStatus] = []
            for outcome in outcomes:
                status = self._next_status(due[outcome.recipient], outcome, route_.label, envelope)
                _log_attempt(qid, envelope.mail_from, route_.label, outcome, status, latency)
                (failures if status.state is RecipientState.FAILED else updates).append(status)
            if updates:
                async with lock:
                    await self._record(qid, updates)

        async def deliver_group(route_: _Route, recipients: list[str]) -> None:
            async with self._slots:
                if route_ is _LOCAL:
                    outcomes = await self._deliver_local(envelope, recipients, content)
                else:
                    outcomes = await self._deliver_remote(route_, envelope.mail_from, recipients, content)
            await record(route_, outcomes)

        for route_, outcome in settled:
            await record(route_, [outcome])
        results = await asyncio.gather(
            *(deliver_group(route_, recipients) for route_, recipients in groups.items()), return_exceptions=True
        )
        if failures:
            await self._fail(qid, envelope, content, failures)
        for result in results:
            if isinstance(result, BaseException):
                raise result  # the group's recipients stay pending; _attempt logs it

    def _plan(self, recipient: str, refusal: str | None) -> tuple[_Route, _Outcome | None]:
        """Where ``recipient`` goes, and the outcome when trying is pointless: refused here, unsendable, or
        ``refusal`` (why the message as a whole must not be forwarded)."""
        settings = self._settings
        if settings.is_local(recipient):
            return _LOCAL, None
        if settings.role is RelayRole.ON_PREMISES:
            if not settings.smart_host:
                reply = "451 4.3.5 No smart host is configured for mail that is not local"
                return _NOWHERE, _Outcome(recipient, Result.DEFERRED, reply)
            host = settings.smart_host.strip().rstrip(".")
            route_ = _Route("smarthost", None, "smarthost", (host,), tls=_Tls.VERIFY, name_check=True, tls_name=host)
        else:
            try:
                domain = recipient_domain(recipient)
            except ValueError as exc:
                return _NOWHERE, _Outcome(recipient, Result.FAILED, f"553 5.1.3 {exc}")
            # An Internet host sends its users' mail by MX; the cloud routes by connector first.
            internet = settings.role is RelayRole.INTERNET
            route_ = _Route("mx", None, "mx", mx=True, domain=domain) if internet else self._cloud_route(domain)
        problem = refusal or _unsendable(recipient, "recipient")
        if problem:
            return route_, _Outcome(recipient, Result.FAILED, problem)
        return route_, None

    def _cloud_route(self, domain: str) -> _Route:
        """The cloud's route to ``domain``: the connector routing picks (exchange-model §4), else the MX."""
        decision = route(self._settings.organization, domain)
        connector = decision.connector
        if connector is None:
            return _Route("mx", None, "mx", mx=True, domain=domain)
        tls, name_check, tls_name = _tls_policy(connector)
        hosts = tuple(host.strip().rstrip(".") for host in connector.smart_hosts)
        return _Route(
            f"connector:{connector.name}/{decision.rule}",
            connector.name,
            str(decision.rule),
            smart_hosts=() if connector.use_mx_record else hosts,
            mx=connector.use_mx_record,
            domain=domain if connector.use_mx_record else "",
            tls=tls,
            name_check=name_check,
            tls_name=tls_name,
        )

    def _next_status(self, old: RecipientStatus, outcome: _Outcome, label: str, envelope: Envelope) -> RecipientStatus:
        limits = self._settings.limits
        now = datetime.now(UTC)
        attempts = old.attempts + 1
        if outcome.result is Result.DELIVERED:
            return RecipientStatus(old.recipient, RecipientState.DELIVERED, attempts, None, outcome.reply, label)
        if outcome.result is Result.FAILED:
            return RecipientStatus(old.recipient, RecipientState.FAILED, attempts, None, outcome.reply, label)
        if now - envelope.received_at >= limits.max_age:
            # The cloud's own words for a message that outlived its queue time (exchange-model §5.2: retried
            # for a day, then NDR'd); the DSN takes its status, 4.4.7, from here.
            detail = f"550 4.4.7 QUEUE.Expired; message expired [LastError={outcome.reply}]"
            return RecipientStatus(old.recipient, RecipientState.FAILED, attempts, None, detail, label)
        delay = min(limits.retry_base * 2 ** min(old.attempts, 32), limits.retry_max)
        return RecipientStatus(old.recipient, RecipientState.PENDING, attempts, now + delay, outcome.reply, label)

    async def _record(self, qid: str, statuses: list[RecipientStatus]) -> None:
        try:
            await asyncio.to_thread(self._spool.update, qid, statuses)
        except OSError as exc:
            # The recipients stay as they were (pending and due): retried after a pause, a duplicate at worst.
            log.error("delivery qid=%s: cannot record the outcome in the spool, holding it: %s", qid, exc)
            self._hold(qid)

    def _hold(self, qid: str) -> None:
        self._held[qid] = time.monotonic() + self._settings.limits.retry_base.total_seconds()

    async def _fail(self, qid: str, envelope: Envelope, content: bytes, failures: list[RecipientStatus]) -> None:
        """Store the bounce, then record the failures: a crash in between repeats the bounce, never loses it."""
        made = dsn.bounce(envelope, content, failures, reporting_mta=self._settings.hostname, now=datetime.now(UTC))
        if made is not None:
            try:
                bounce_qid = await asyncio.to_thread(self._spool.store, *made)
            except OSError as exc:
                log.error("delivery qid=%s: cannot store the bounce, failures stay pending: %s", qid, exc)
                self._hold(qid)
                return
            log.info(
                "bounce qid=%s for=%s to=<%s> recipients=%d", bounce_qid, qid, _esc(envelope.mail_from), len(failures)
            )
            self.kick()
        await self._record(qid, failures)

    # --- local and remote delivery ------------------------------------------------------------------------

    async def _deliver_local(self, envelope: Envelope, recipients: list[str], content: bytes) -> list[_Outcome]:
        # RFC 5321 §4.4: the final delivery adds Return-Path with the envelope sender.
        message = f"Return-Path: <{_header_text(envelope.mail_from)}>\r\n".encode() + content
        outcomes = []
        for recipient in recipients:
            try:
                await asyncio.to_thread(deliver_local, self._settings.maildir, recipient, message)
            except ValueError as exc:
                outcomes.append(_Outcome(recipient, Result.FAILED, f"550 5.1.1 {exc}", "local"))
            except OSError as exc:
                reply = f"451 4.3.0 Cannot store the message in the mailbox: {exc.strerror or exc}"
                outcomes.append(_Outcome(recipient, Result.DEFERRED, reply, "local"))
            else:
                outcomes.append(_Outcome(recipient, Result.DELIVERED, "250 2.0.0 Delivered to the mailbox", "local"))
        return outcomes

    async def _deliver_remote(
        self, route_: _Route, sender: str, recipients: list[str], content: bytes
    ) -> list[_Outcome]:
        try:
            hosts = await self._hosts(route_)
        except _RouteFailed as exc:
            return [_Outcome(recipient, exc.result, exc.reply) for recipient in recipients]
        limit = max(1, self._settings.limits.addresses_per_delivery)
        outcomes: list[_Outcome] = []
        remaining = dict.fromkeys(recipients, "")
        where, tried, stop = "none", 0, False
        problems: list[_Lookup] = []
        for host in hosts:
            lookup = await self._addresses(host, literals=not route_.mx)
            if lookup.problem:
                problems.append(lookup)
            for ip in lookup.addresses:
                if tried >= limit or stop:
                    break
                tried += 1
                session = await self._session(route_, host, ip, sender, list(remaining), content)
                if session.plaintext:
                    why = next(iter(session.retry.values()), "")
                    log.warning("delivery to %s[%s]: opportunistic TLS failed, trying without: %s", host, ip, why)
                    session = await self._session(route_, host, ip, sender, list(remaining), content, plaintext=True)
                outcomes += session.decided
                remaining, where = session.retry, f"{host}[{ip}]"
                stop = session.stop or not remaining
            if tried >= limit or stop:
                break
        if tried == 0:
            reply, result = _no_address(route_, hosts, problems)
            return [_Outcome(recipient, result, reply) for recipient in recipients]
        return outcomes + [_Outcome(recipient, Result.DEFERRED, why, where) for recipient, why in remaining.items()]

    async def _hosts(self, route_: _Route) -> list[str]:
        """The hosts to try in order: the smart hosts, or the MX hosts (DNS-01..DNS-16)."""
        if not route_.mx:
            if not route_.smart_hosts:  # the config refuses this; an Organization made in code might not
                raise _RouteFailed(Result.DEFERRED, f"451 4.3.5 Connector {route_.connector!r} has no SmartHosts")
            return list(route_.smart_hosts)
        domain = route_.domain
        try:
            answer = await self._resolver.query(domain, "MX")
        except DnsError as exc:
            # DNS-03: a lookup that failed is no answer: defer, and never fall back to the A record.
            raise _RouteFailed(
                Result.DEFERRED, f"450 4.4.312 DNS query failed [Message=MX of {domain}: {exc}]"
            ) from None
        if answer.status is DnsStatus.NXDOMAIN:
            raise _RouteFailed(Result.FAILED, f"550 5.1.2 The domain {domain} does not exist (DNS NXDOMAIN)")
        records = [record for record in answer.records if isinstance(record, dns.rdtypes.ANY.MX.MX)]
        if answer.status is DnsStatus.NODATA or not records:
            return [domain]  # RFC 5321 §5.1: no MX, the domain itself is the implicit MX (DNS-02)
        if any(record.exchange == dns.name.root for record in records):
            # RFC 7505 §3 (DNS-04): a null MX, even beside other MXs, means the domain accepts no mail.
            raise _RouteFailed(
                Result.FAILED, f"556 5.1.10 Recipient address rejected: {domain} does not accept mail (null MX)"
            )
        ranked: dict[int, list[str]] = {}
        for record in records:
            ranked.setdefault(record.preference, []).append(name_text(record.exchange))
        own = self._settings.hostname.rstrip(".").lower()
        own_preference = min((p for p, names in ranked.items() if own in (n.lower() for n in names)), default=None)
        hosts: list[str] = []
        for preference in sorted(ranked):
            if own_preference is not None and preference >= own_preference:
                break  # DNS-15: only MXs better than this host itself
            names = ranked[preference]
            self._random.shuffle(names)  # DNS-14, RFC 5321 §5.1: spread the load over equal preferences
            hosts += names
        if not hosts:
            raise _RouteFailed(
                Result.FAILED, f"554 5.4.6 Mail for {domain} loops back to myself ({own} is its best MX)"
            )
        return hosts[:_MAX_MX]

    async def _addresses(self, host: str, *, literals: bool) -> _Lookup:
        """The addresses of ``host``, non-public ones dropped. With ``literals`` (SmartHosts), ``host`` may also
        be an IP address or a CIDR range; an MX target written as an address is refused instead (DNS-06)."""
        if literals:
            try:
                network = ipaddress.ip_network(host, strict=False)
            except ValueError:
                pass
            else:
                hosts = network.hosts() if network.num_addresses > 1 else iter([network.network_address])
                return self._usable(host, [str(address) for address in itertools.islice(hosts, 256)])
        if not _HOST_NAME.fullmatch(host) or _NUMERIC.fullmatch(host):
            return _Lookup((), f"554 5.4.4 {_esc(host)} is not a valid host name; not used")
        addresses: list[str] = []
        failed = ""
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.query(host, rdtype)
            except DnsError as exc:
                failed = f"450 4.4.312 DNS query failed [Message={host} {rdtype}: {exc}]"
                continue
            addresses += [
                record.address
                for record in answer.records
                if isinstance(record, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA)
            ]
        lookup = self._usable(host, addresses)
        if not lookup.addresses and failed:
            return _Lookup((), failed, temporary=True)
        return lookup

    def _usable(self, host: str, addresses: list[str]) -> _Lookup:
        if not addresses:
            return _Lookup((), f"550 5.4.4 {host} has no address (A or AAAA)")
        if self._settings.allow_private:
            return _Lookup(tuple(addresses))
        public = tuple(ip for ip in addresses if ipaddress.ip_address(ip).is_global)
        if public:
            return _Lookup(public)
        return _Lookup((), f"550 5.4.4 {host} has no public address ({', '.join(addresses[:3])}); not used")

    # --- one SMTP session -------------------------------------------------------------------------------------

    async def _session(
        self,
        route_: _Route,
        host: str,
        ip: str,
        sender: str,
        recipients: list[str],
        content: bytes,
        *,
        plaintext: bool = False,
    ) -> _Session:
        settings = self._settings
        where = f"[LastAttemptedServerName={host}] [LastAttemptedIP={ip}:{settings.smtp_port}]"
        # A kept session serves only a delivery on the very terms it was opened and checked with.
        terms = (host, ip, route_.tls, route_.name_check, route_.tls_name, plaintext)
        connections = self._connections
        kept = await connections.take(terms) if connections is not None else None
        smtp = kept.smtp if kept is not None else self._client(ip)
        opened = kept.opened if kept is not None else asyncio.get_running_loop().time()
        progress = _Progress()
        reusable: Reusable | None = None
        try:
            async with asyncio.timeout(_SESSION_DEADLINE):
                tls = kept.tls if kept is not None else await self._open(smtp, route_, host, where, plaintext=plaintext)
                session = await self._transfer(smtp, route_, host, ip, tls, sender, recipients, content, progress)
                reusable = Reusable(smtp, tls, opened)
                return session
        except _AddressFailed as exc:
            return _Session([], dict.fromkeys(recipients, exc.reply), plaintext=exc.plaintext)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            timed_out = isinstance(exc, TimeoutError)
            if progress.sending:
                # RD-32: the message may have arrived; keep it queued (a duplicate is acceptable, a loss is not)
                # and try no other address in this attempt.
                what = "timed out" if timed_out else "was closed"
                reply = f"451 4.4.318 Connection {what} after the message was sent, outcome unknown {where}"
                return _Session(progress.decided, dict.fromkeys(progress.sending, reply) | progress.retry, stop=True)
            if timed_out:
                reply = f"450 4.4.315 Connection timed out {where}"
            else:
                reply = f"450 4.4.318 Connection was closed abruptly [Message={_one_line(str(exc))}] {where}"
            return _Session([], dict.fromkeys(recipients, reply))
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

    async def _open(self, smtp: aiosmtplib.SMTP, route_: _Route, host: str, where: str, *, plaintext: bool) -> str:
        """Connect, EHLO, STARTTLS as the route demands; returns the TLS version, or "none"."""
        try:
            await smtp.connect()
        except aiosmtplib.SMTPConnectResponseError as exc:
            raise _AddressFailed(f"{_reply(exc.code, exc.message)} {where}") from None  # RD-31: next host
        except aiosmtplib.SMTPConnectTimeoutError:
            raise _AddressFailed(f"450 4.4.315 Connection timed out {where}") from None
        except (aiosmtplib.SMTPConnectError, OSError) as exc:
            raise _AddressFailed(f"450 4.4.316 Connection refused [Message={_one_line(str(exc))}] {where}") from None
        required = route_.tls is not _Tls.OPPORTUNISTIC
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
            context = await self._context(verify=route_.tls is _Tls.VERIFY)
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
            why = f"TLS negotiation failed: {_one_line(str(exc))}"
            raise _AddressFailed(f"{_CANNOT_CONNECT} [Message={why}] {where}", plaintext=not required) from None
        ssl_object = smtp.get_transport_info("ssl_object")
        if ssl_object is None:
            raise _AddressFailed(f"{_CANNOT_CONNECT} [Message=no TLS session after STARTTLS] {where}")
        if route_.name_check:
            pattern = route_.tls_name or host
            der = ssl_object.getpeercert(binary_form=True)
            info = cert_info(x509.load_der_x509_certificate(der)) if der else None
            # The cloud matches "the subject name or subject alternative name (SAN)" (exchange-model §1).
            names = (*info.dns_names, *info.common_names) if info is not None else ()
            if not certificate_matches(pattern, names):
                presented = info.subject if info is not None else "no certificate"
                raise _AddressFailed(
                    f"{_CANNOT_CONNECT} [Message=SubjectMismatch Expected Subject: {pattern}. "
                    f"Presented Subject: {_one_line(presented)}.] {where}"
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
        route_: _Route,
        host: str,
        ip: str,
        tls: str,
        sender: str,
        recipients: list[str],
        content: bytes,
        progress: _Progress,
    ) -> _Session:
        """MAIL, RCPT per recipient, DATA: each recipient's reply is its own outcome (RD-12)."""
        where = f"{host}[{ip}]"
        # The content passed _BAD_CONTENT in _deliver; the header cannot add such bytes (_trace_header).
        message = self._trace_header(route_, host, ip, tls) + content
        options: list[str] = []
        if not message.isascii():
            if not smtp.supports_extension("8bitmime"):
                # RD-05: never send 8-bit data to a server that did not offer 8BITMIME (RFC 6152).
                reply = f"554 5.6.3 Conversion required but not supported: {host} does not offer 8BITMIME"
                return _Session([_Outcome(r, Result.FAILED, reply, where) for r in recipients], {})
            options.append("BODY=8BITMIME")
        encoding = "ascii"
        if not all(address.isascii() for address in (sender, *recipients)):
            if not smtp.supports_extension("smtputf8"):
                reply = f"553 5.6.7 {host} does not offer SMTPUTF8, needed for a non-ASCII address (RFC 6531)"
                return _Session([_Outcome(r, Result.FAILED, reply, where) for r in recipients], {})
            options.append("SMTPUTF8")
            encoding = "utf-8"
        try:
            await smtp.mail(sender, options=options, encoding=encoding)
        except aiosmtplib.SMTPResponseException as exc:
            reply = _reply(exc.code, exc.message)
            if exc.code >= 500:
                return _Session([_Outcome(r, Result.FAILED, reply, where) for r in recipients], {})
            return _Session([], dict.fromkeys(recipients, reply))
        except ValueError as exc:  # RD-11: aiosmtplib refuses CR/LF in an address; permanent, not retried
            reply = f"553 5.1.7 The sender address cannot be sent: {exc}"
            return _Session([_Outcome(r, Result.FAILED, reply, where) for r in recipients], {})
        decided: list[_Outcome] = []
        retry: dict[str, str] = {}
        accepted: list[str] = []
        for recipient in recipients:
            try:
                await smtp.rcpt(recipient, encoding=encoding)
            except aiosmtplib.SMTPResponseException as exc:
                reply = _reply(exc.code, exc.message)
                if exc.code >= 500:
                    decided.append(_Outcome(recipient, Result.FAILED, reply, where))
                else:
                    retry[recipient] = reply
            except ValueError as exc:  # RD-11
                reply = f"553 5.1.3 The recipient address cannot be sent: {exc}"
                decided.append(_Outcome(recipient, Result.FAILED, reply, where))
            else:
                accepted.append(recipient)
        if not accepted:
            return _Session(decided, retry)
        progress.sending, progress.decided, progress.retry = accepted, decided, retry
        limits = self._settings.limits
        try:
            response = await smtp.data(message, timeout=max(limits.operation_timeout, _DATA_DONE_TIMEOUT))
        except aiosmtplib.SMTPResponseException as exc:
            # A reply to DATA or to the final dot: the server decided, so the outcome is known.
            progress.sending = []
            reply = _reply(exc.code, exc.message)
            if exc.code >= 500:
                return _Session(decided + [_Outcome(r, Result.FAILED, reply, where) for r in accepted], retry)
            return _Session(decided, dict.fromkeys(accepted, reply) | retry)
        progress.sending = []
        done = _reply(response.code, response.message)
        decided += [_Outcome(r, Result.DELIVERED, done, where) for r in accepted]
        return _Session(decided, retry)

    def _trace_header(self, route_: _Route, host: str, ip: str, tls: str) -> bytes:
        """This hop's ``X-Diag-Trace`` line: connector, rule, next hop and TLS, for probes to prove the route."""
        settings = self._settings
        connector = json.dumps(route_.connector) if route_.connector is not None else "none"
        line = (
            f"X-Diag-Trace: hop={settings.hostname}; role={settings.role.value}; connector={connector}; "
            f"rule={route_.rule}; to={host}[{ip}]; tls={tls}"
        )
        return _CONTROL.sub("?", line).encode("ascii", "replace") + b"\r\n"

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


# --- helpers ----------------------------------------------------------------------------------------------


def _tls_policy(connector: OutboundConnector) -> tuple[_Tls, bool, str | None]:
    """(level, name check, pattern) for a connector's TlsSettings; DomainValidation without TlsDomain checks the
    host's own name."""
    match connector.tls_settings:
        case None:
            return _Tls.OPPORTUNISTIC, False, None
        case TlsSettings.ENCRYPTION_ONLY:
            return _Tls.ENCRYPT, False, None
        case TlsSettings.CERTIFICATE_VALIDATION:
            return _Tls.VERIFY, False, None
        case TlsSettings.DOMAIN_VALIDATION:
            return _Tls.VERIFY, True, connector.tls_domain or None


def _unsendable(address: str, role: str) -> str | None:
    """RD-10: the text for an address that aiosmtplib would not send byte for byte as authorised, else None.

    aiosmtplib's ``quote_address`` goes through ``email.utils.parseaddr``, which rewrites some addresses
    (``"a\\rx <v@evil.example>"@allowed.example`` becomes ``<v@evil.example>``): sending such an address would
    deliver to a destination nobody authorised.
    """
    try:
        sent = quote_address(address)
    except ValueError as exc:  # RD-11
        return f"553 5.1.3 The {role} address <{_esc(address)}> cannot be sent: {exc}"
    if sent != f"<{address}>":
        return (
            f"553 5.1.3 The {role} address <{_esc(address)}> would be sent as {_esc(sent)}, not as authorised; "
            "it is not sent"
        )
    return None


def _no_address(route_: _Route, hosts: Sequence[str], problems: Sequence[_Lookup]) -> tuple[str, Result]:
    """Why no address could be tried; permanent only when DNS answered for an MX route (DNS-16)."""
    temporary = [p for p in problems if p.temporary]
    if temporary:
        return temporary[-1].problem, Result.DEFERRED
    reply = problems[-1].problem if problems else f"550 5.4.4 No usable host among {', '.join(hosts)}"
    if not route_.mx:
        # A connector's smart host that does not resolve is the cloud's "Resolve task failed": retried
        # (exchange-model §5.2, 450 4.4.312).
        return f"450 4.4.312 DNS query failed [Message={reply}]", Result.DEFERRED
    return reply, Result.FAILED


def _certificate_reply(exc: ssl.SSLCertVerificationError, where: str) -> str:
    reason = _one_line(str(exc.verify_message or exc.reason or exc))
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
    return f"{code} {_one_line(message)}".strip()


def _one_line(text: str) -> str:
    """Server text on one line, control characters replaced: it goes into the spool, logs and bounces."""
    return _CONTROL.sub("?", " ".join(text.split()))[:1000]


def _header_text(text: str) -> str:
    return _CONTROL.sub("?", text)


def _esc(text: str) -> str:
    """``text`` for a log line: control characters, quotes and backslashes escaped (no forged lines)."""
    return json.dumps(text)[1:-1]


def _log_attempt(
    qid: str, sender: str, route_label: str, outcome: _Outcome, status: RecipientStatus, latency_ms: int
) -> None:
    result = {
        RecipientState.DELIVERED: Result.DELIVERED,
        RecipientState.FAILED: Result.FAILED,
        RecipientState.PENDING: Result.DEFERRED,
    }[status.state]
    log.info(
        'delivery qid=%s from=<%s> to=<%s> route=%s host=%s result=%s reply="%s" latency_ms=%d',
        qid,
        _esc(sender),
        _esc(outcome.recipient),
        _esc(route_label),
        _esc(outcome.host),
        result,
        _esc(status.detail),
        latency_ms,
    )
