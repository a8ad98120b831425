"""The delivery plan, without I/O: where each recipient goes, on which TLS terms, which hosts and addresses to
try in which order, and what the outcome is when nothing can be tried.

Where each recipient goes depends on the relay's role (ARCHITECTURE §5):

- every role: a local mailbox (``RelaySettings.is_local``) is stored in its Maildir;
- internet: a reflector address (``RelaySettings.is_reflector``) is answered (:mod:`diag.relay.reflect`);
- cloud: the outbound connector :func:`diag.routing.route` picks (exchange-model §4) — its SmartHosts when
  UseMXRecord is false, else the recipient domain's MX — with the TLS its TlsSettings demand; no connector:
  the MX, with opportunistic TLS;
- onprem: everything else to the smart host, TLS required and the certificate verified for the smart host's name;
- internet: everything else by MX, with opportunistic TLS (only what its ``relay_networks`` sent: a plain mail
  host never relays for anyone else, :mod:`diag.relay.policy`).

Recipients with equal routes share one SMTP transaction (:func:`plan_message` groups them).

TLS levels (exchange-model §1 TlsSettings; security-cases §2.3), enforced by :mod:`diag.relay.transport`:

=========================  ===================================================================================
TlsSettings unset           STARTTLS if offered, certificate not checked; a failed handshake is retried once
                            in plain text on a new connection (Postfix ``may``, RD-21: a deliberate, logged choice)
EncryptionOnly              STARTTLS required, certificate not checked
CertificateValidation       STARTTLS required, chain verified (``ca_file`` or the system store), no name check
DomainValidation            as CertificateValidation, and a certificate name must match TlsDomain
onprem smart host           as DomainValidation with TlsDomain = the smart host's name
=========================  ===================================================================================

One delivery attempt for one route is an :class:`Attempt`, an I/O-free object in the manner of dnspython's
``dns.resolver._Resolution``: it says which DNS question it needs next (:class:`Question`) or which address to
connect to (:class:`Connect`), takes the answer or the session's result, and finally gives each recipient's
:class:`Outcome`. The caller (:mod:`diag.relay.transport`) does the I/O; tests drive it with plain data.

Hosts are tried in order (MX by preference, equal preferences shuffled), each host's A then AAAA addresses, at
most ``address_limit`` addresses per attempt (RD-42). Recipients an address did not settle (a 4xx, a refused
connection, a failed handshake) go on to the next address, like Postfix's; when the connection broke after the
message was sent, the outcome is unknown and no other address is tried in that attempt (RD-32).
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import itertools
import random
import re
from collections.abc import Generator, Iterable, Mapping, Sequence
from typing import Final, cast

import dns.name
import dns.rdtypes.ANY.MX
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
from aiosmtplib.email import quote_address

from diag.config import OutboundConnector, RelayRole, TlsSettings
from diag.errors import DnsError
from diag.frozen import frozen
from diag.net.dns import Answer, DnsStatus, name_text
from diag.relay.settings import RelaySettings
from diag.relay.text import escape, stray_bytes
from diag.routing import recipient_domain, route

__all__ = [
    "LOCAL",
    "NOWHERE",
    "REFLECT",
    "Attempt",
    "Connect",
    "MessagePlan",
    "Outcome",
    "Question",
    "Result",
    "Route",
    "SessionResult",
    "TlsLevel",
    "TlsPolicy",
    "hops",
    "message_refusal",
    "plan_message",
    "route_recipient",
    "tls_policy",
    "unsendable",
]

# DNS-10: at most this many MX hosts are considered (Postfix drops answers of more than 100 records).
_MAX_MX: Final = 100
# RD-02: NUL, a CR not followed by LF, an LF not preceded by CR. aiosmtplib would normalise the CR/LF variants
# but passes NUL through; a message carrying any of them was not cleaned on the way in, so it is not forwarded.
_BAD_CONTENT_REPLY: Final = "554 5.6.0 Message content contains NUL, a bare CR or a bare LF; it is not forwarded"
# RD-41: a message that has passed this many hops is looping (Postfix hopcount_limit = 50).
_MAX_HOPS: Final = 50
_LOOP_REPLY: Final = "554 5.4.6 Too many hops: mail loop detected"
_RECEIVED: Final = re.compile(rb"^received:", re.IGNORECASE | re.MULTILINE)
# DNS-12: an MX target must be a host name; DNS-06: a numeric "name" is an address written as a name.
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME: Final = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_NUMERIC: Final = re.compile(r"[0-9.]+")
# A SmartHosts range is tried address by address; a /8 must not become millions of attempts.
_MAX_RANGE: Final = 256


class Result(enum.StrEnum):
    """What one delivery attempt did for one recipient (the ``result=`` of the log line)."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"
    FAILED = "failed"


class TlsLevel(enum.Enum):
    """How much TLS a route demands."""

    OPPORTUNISTIC = "opportunistic"
    ENCRYPT = "encrypt"
    VERIFY = "verify"


@frozen
class TlsPolicy:
    """The TLS a route demands of every host on it.

    Attributes:
        level: opportunistic, encryption required, or encryption with a verified chain.
        name_check: the certificate must carry a name matching ``name`` (the cloud's DomainValidation).
        name: the pattern for ``name_check`` (TlsDomain); None: the name of the host connected to.
    """

    level: TlsLevel = TlsLevel.OPPORTUNISTIC
    name_check: bool = False
    name: str | None = None

    @property
    def required(self) -> bool:
        """STARTTLS must succeed: never carry on in plain text (RD-20)."""
        return self.level is not TlsLevel.OPPORTUNISTIC


@frozen
class Route:
    """Where a group of recipients goes; recipients with equal routes share one SMTP transaction.

    Attributes:
        label: the spool's ``route``: ``connector:<name>/<rule>``, ``mx``, ``smarthost``, ``local`` or ``reflect``.
        connector: the outbound connector's name, for the trace header.
        rule: why it was chosen (the routing rule, ``mx``, ``smarthost``, ``local``).
        smart_hosts: the hosts to use, in order (unless ``mx``).
        mx: use the MX hosts of ``domain``.
        domain: the recipient domain of an MX route ("" otherwise, so that smart-host routes group domains).
        tls: the TLS it demands.
    """

    label: str
    connector: str | None = None
    rule: str = ""
    smart_hosts: tuple[str, ...] = ()
    mx: bool = False
    domain: str = ""
    tls: TlsPolicy = TlsPolicy()


LOCAL: Final = Route("local", rule="local")
REFLECT: Final = Route("reflect", rule="reflect")  # answered by the reflector, never forwarded
NOWHERE: Final = Route("none", rule="none")  # refused before any route applied


@frozen
class Outcome:
    """One recipient's result of one attempt: the reply (or our own text in the same form) and the host."""

    recipient: str
    result: Result
    reply: str
    host: str = "none"


@frozen
class MessagePlan:
    """What to do with a message's due recipients.

    Attributes:
        groups: the recipients to deliver, by route, in the order they came.
        settled: recipients whose outcome is known without trying (refused, unsendable), with their route.
    """

    groups: Mapping[Route, tuple[str, ...]]
    settled: tuple[tuple[Route, Outcome], ...]


def tls_policy(connector: OutboundConnector) -> TlsPolicy:
    """The TLS a connector's TlsSettings demand; DomainValidation without TlsDomain checks the host's own name."""
    match connector.tls_settings:
        case None:
            return TlsPolicy(TlsLevel.OPPORTUNISTIC)
        case TlsSettings.ENCRYPTION_ONLY:
            return TlsPolicy(TlsLevel.ENCRYPT)
        case TlsSettings.CERTIFICATE_VALIDATION:
            return TlsPolicy(TlsLevel.VERIFY)
        case TlsSettings.DOMAIN_VALIDATION:
            return TlsPolicy(TlsLevel.VERIFY, name_check=True, name=connector.tls_domain or None)


def hops(content: bytes) -> int:
    """How many Received: lines the header section holds."""
    header_end = content.find(b"\r\n\r\n")
    return len(_RECEIVED.findall(content[: header_end if header_end >= 0 else len(content)]))


# Pure, and asked for the sender and every recipient of every message, mostly the same few addresses: cached
# (aiosmtplib's parsing was 4 % of the delivery process's CPU).
@functools.lru_cache(maxsize=4096)
def unsendable(address: str, role: str) -> str | None:
    """RD-10: the text for an address that aiosmtplib would not send byte for byte as authorised, else None.

    aiosmtplib's ``quote_address`` goes through ``email.utils.parseaddr``, which rewrites some addresses
    (``"a\\rx <v@evil.example>"@allowed.example`` becomes ``<v@evil.example>``): sending such an address would
    deliver to a destination nobody authorised.
    """
    try:
        sent = quote_address(address)
    except ValueError as exc:  # RD-11
        return f"553 5.1.3 The {role} address <{escape(address)}> cannot be sent: {exc}"
    if sent != f"<{address}>":
        return (
            f"553 5.1.3 The {role} address <{escape(address)}> would be sent as {escape(sent)}, not as authorised; "
            "it is not sent"
        )
    return None


def message_refusal(sender: str, content: bytes) -> str | None:
    """Why the message as a whole must not be forwarded (RD-02, RD-41, RD-10 for the sender), else None.

    Decided once per message, before any connection: what must never be sent is not connected for.
    """
    if stray_bytes(content):
        return _BAD_CONTENT_REPLY
    if hops(content) > _MAX_HOPS:
        return _LOOP_REPLY
    return unsendable(sender, "sender")


def route_recipient(
    settings: RelaySettings, recipient: str, *, refusal: str | None = None
) -> tuple[Route, Outcome | None]:
    """Where ``recipient`` goes, and the outcome when trying is pointless: refused here, unsendable, or
    ``refusal`` (why the message as a whole must not be forwarded, :func:`message_refusal`). A reflector
    address is never settled here: whatever the message, it gets no bounce (the reflector decides alone)."""
    if settings.is_reflector(recipient):
        return REFLECT, None
    if settings.is_local(recipient):
        return LOCAL, None
    if settings.role is RelayRole.ON_PREMISES:
        if not settings.smart_host:
            reply = "451 4.3.5 No smart host is configured for mail that is not local"
            return NOWHERE, Outcome(recipient, Result.DEFERRED, reply)
        host = settings.smart_host.strip().rstrip(".")
        route_ = Route(
            "smarthost", rule="smarthost", smart_hosts=(host,),
            tls=TlsPolicy(TlsLevel.VERIFY, name_check=True, name=host),
        )  # fmt: skip
    else:
        try:
            domain = recipient_domain(recipient)
        except ValueError as exc:
            return NOWHERE, Outcome(recipient, Result.FAILED, f"553 5.1.3 {exc}")
        # An Internet host sends its users' mail by MX; the cloud routes by connector first.
        internet = settings.role is RelayRole.INTERNET
        route_ = Route("mx", rule="mx", mx=True, domain=domain) if internet else _cloud_route(settings, domain)
    problem = refusal or unsendable(recipient, "recipient")
    if problem:
        return route_, Outcome(recipient, Result.FAILED, problem)
    return route_, None


def _cloud_route(settings: RelaySettings, domain: str) -> Route:
    """The cloud's route to ``domain``: the connector routing picks (exchange-model §4), else the MX."""
    decision = route(settings.organization, domain)
    connector = decision.connector
    if connector is None:
        return Route("mx", rule="mx", mx=True, domain=domain)
    hosts = tuple(host.strip().rstrip(".") for host in connector.smart_hosts)
    return Route(
        f"connector:{connector.name}/{decision.rule}",
        connector.name,
        str(decision.rule),
        smart_hosts=() if connector.use_mx_record else hosts,
        mx=connector.use_mx_record,
        domain=domain if connector.use_mx_record else "",
        tls=tls_policy(connector),
    )


def plan_message(settings: RelaySettings, sender: str, content: bytes, recipients: Iterable[str]) -> MessagePlan:
    """The plan for a message's due ``recipients``: grouped by route, or settled without trying."""
    refusal = message_refusal(sender, content)
    groups: dict[Route, list[str]] = {}
    settled: list[tuple[Route, Outcome]] = []
    for recipient in recipients:
        route_, outcome = route_recipient(settings, recipient, refusal=refusal)
        if outcome is not None:
            settled.append((route_, outcome))
        else:
            groups.setdefault(route_, []).append(recipient)
    return MessagePlan({route_: tuple(group) for route_, group in groups.items()}, tuple(settled))


# --- one attempt: hosts, addresses, sessions ------------------------------------------------------------------


@frozen
class Question:
    """The DNS question an :class:`Attempt` needs answered next: ``rdtype`` (MX, A, AAAA) records at ``name``."""

    name: str
    rdtype: str


@frozen
class Connect:
    """The address an :class:`Attempt` wants a session with next, and for whom.

    Attributes:
        host: the host name (or SmartHosts entry) the address belongs to.
        ip: the address.
        recipients: the recipients not yet settled in this attempt.
        plaintext: opportunistic STARTTLS failed at this address a moment ago; this session goes without.
    """

    host: str
    ip: str
    recipients: tuple[str, ...]
    plaintext: bool = False


@frozen
class SessionResult:
    """What one SMTP session to one address settled.

    Attributes:
        decided: the recipients this session settled (delivered, or failed for good).
        retry: the recipients it did not settle (the next address may), each with the reason.
        stop: the outcome is unknown (the connection broke after the message was sent), so no further address
            is tried in this attempt (RD-32).
        plaintext: opportunistic STARTTLS failed; the address may be tried without (RD-21).
    """

    decided: tuple[Outcome, ...]
    retry: Mapping[str, str]
    stop: bool = False
    plaintext: bool = False


@frozen
class _Lookup:
    """A host's usable addresses, A before AAAA; ``problem`` when there are none (temporary: DNS failed)."""

    addresses: tuple[str, ...]
    problem: str = ""
    temporary: bool = False


@frozen
class _RouteFailed:
    """The route has no host to try: ``result`` (DEFERRED or FAILED) with ``reply`` for every recipient on it."""

    result: Result
    reply: str


_Step = Question | Connect
_Reply = Answer | DnsError | SessionResult


class Attempt:
    """One delivery attempt for the recipients of one route, without I/O.

    Drive it until :meth:`step` is None, then read :attr:`outcomes`::

        while (step := attempt.step()) is not None:
            if isinstance(step, Question):
                attempt.answer(<the Answer, or the DnsError raised, for step.name / step.rdtype>)
            else:
                attempt.connected(<the SessionResult of a session with step.ip for step.recipients>)

    ``own_name`` is the relay's host name (an MX list naming it is cut there, DNS-15); ``allow_private`` lets
    non-public addresses be used; ``rng`` shuffles equal MX preferences (DNS-14).
    """

    def __init__(
        self,
        route_: Route,
        recipients: Sequence[str],
        *,
        own_name: str,
        allow_private: bool,
        address_limit: int,
        rng: random.Random,
    ) -> None:
        self.route = route_
        self.recipients = tuple(recipients)
        self._own_name = own_name.rstrip(".").lower()
        self._allow_private = allow_private
        self._address_limit = max(1, address_limit)
        self._rng = rng
        self._outcomes: tuple[Outcome, ...] | None = None
        self._steps = self._run()
        self._current: _Step | None = None
        self._advance(None)

    def step(self) -> Question | Connect | None:
        """What to do next; None when the attempt is over."""
        return self._current

    def answer(self, reply: Answer | DnsError) -> None:
        """The answer to the current :class:`Question`, or the error the lookup raised (no answer: DNS-03)."""
        if not isinstance(self._current, Question):
            raise RuntimeError(f"no question is waiting for an answer (current step: {self._current!r})")
        self._advance(reply)

    def connected(self, result: SessionResult) -> None:
        """What the session of the current :class:`Connect` settled."""
        if not isinstance(self._current, Connect):
            raise RuntimeError(f"no connection is waiting for its result (current step: {self._current!r})")
        self._advance(result)

    @property
    def outcomes(self) -> tuple[Outcome, ...]:
        """Each recipient's outcome of this attempt; only once :meth:`step` is None."""
        if self._outcomes is None:
            raise RuntimeError(f"the attempt is not over (current step: {self._current!r})")
        return self._outcomes

    def _advance(self, reply: _Reply | None) -> None:
        try:
            self._current = self._steps.send(reply)
        except StopIteration as done:
            self._current = None
            self._outcomes = tuple(done.value)

    # The attempt as one sequential story; each ``yield`` hands a step out and receives its reply. answer() and
    # connected() only send the reply type belonging to the step, so the casts below hold.

    def _run(self) -> Generator[_Step, _Reply | None, list[Outcome]]:
        route_, recipients = self.route, self.recipients
        hosts = yield from self._hosts()
        if isinstance(hosts, _RouteFailed):
            return [Outcome(recipient, hosts.result, hosts.reply) for recipient in recipients]
        outcomes: list[Outcome] = []
        remaining: dict[str, str] = dict.fromkeys(recipients, "")
        where, tried, stop = "none", 0, False
        problems: list[_Lookup] = []
        for host in hosts:
            lookup = yield from self._addresses(host, literals=not route_.mx)
            if lookup.problem:
                problems.append(lookup)
            for ip in lookup.addresses:
                if tried >= self._address_limit or stop:
                    break
                tried += 1
                session = cast(SessionResult, (yield Connect(host, ip, tuple(remaining))))
                if session.plaintext:
                    session = cast(SessionResult, (yield Connect(host, ip, tuple(remaining), plaintext=True)))
                outcomes += session.decided
                remaining, where = dict(session.retry), f"{host}[{ip}]"
                stop = session.stop or not remaining
            if tried >= self._address_limit or stop:
                break
        if tried == 0:
            reply, result = _no_address(route_, hosts, problems)
            return [Outcome(recipient, result, reply) for recipient in recipients]
        return outcomes + [Outcome(recipient, Result.DEFERRED, why, where) for recipient, why in remaining.items()]

    def _hosts(self) -> Generator[_Step, _Reply | None, list[str] | _RouteFailed]:
        """The hosts to try in order: the smart hosts, or the MX hosts (DNS-01..DNS-16)."""
        route_ = self.route
        if not route_.mx:
            if not route_.smart_hosts:  # the config refuses this; an Organization made in code might not
                return _RouteFailed(Result.DEFERRED, f"451 4.3.5 Connector {route_.connector!r} has no SmartHosts")
            return list(route_.smart_hosts)
        domain = route_.domain
        answer = cast(Answer | DnsError, (yield Question(domain, "MX")))
        if isinstance(answer, DnsError):
            # DNS-03: a lookup that failed is no answer: defer, and never fall back to the A record.
            return _RouteFailed(Result.DEFERRED, f"450 4.4.312 DNS query failed [Message=MX of {domain}: {answer}]")
        return _mx_hosts(domain, answer, own_name=self._own_name, rng=self._rng)

    def _addresses(self, host: str, *, literals: bool) -> Generator[_Step, _Reply | None, _Lookup]:
        """The addresses of ``host``, non-public ones dropped. With ``literals`` (SmartHosts), ``host`` may also
        be an IP address or a CIDR range; an MX target written as an address is refused instead (DNS-06)."""
        if literals and (listed := _literal_addresses(host)) is not None:
            return self._usable(host, list(listed))
        if not _HOST_NAME.fullmatch(host) or _NUMERIC.fullmatch(host):
            return _Lookup((), f"554 5.4.4 {escape(host)} is not a valid host name; not used")
        addresses: list[str] = []
        failed = ""
        for rdtype in ("A", "AAAA"):
            answer = cast(Answer | DnsError, (yield Question(host, rdtype)))
            if isinstance(answer, DnsError):
                failed = f"450 4.4.312 DNS query failed [Message={host} {rdtype}: {answer}]"
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
        if self._allow_private:
            return _Lookup(tuple(addresses))
        public = tuple(ip for ip in addresses if ipaddress.ip_address(ip).is_global)
        if public:
            return _Lookup(public)
        return _Lookup((), f"550 5.4.4 {host} has no public address ({', '.join(addresses[:3])}); not used")


# Asked at every delivery along a smart host: cached (parsing the address was 1 % of the delivery process's CPU).
@functools.lru_cache(maxsize=256)
def _literal_addresses(host: str) -> tuple[str, ...] | None:
    """The addresses a smart host written as an IP address or CIDR range stands for (at most ``_MAX_RANGE``), or
    None for a host name."""
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        return None
    hosts = network.hosts() if network.num_addresses > 1 else iter([network.network_address])
    return tuple(str(address) for address in itertools.islice(hosts, _MAX_RANGE))


def _mx_hosts(domain: str, answer: Answer, *, own_name: str, rng: random.Random) -> list[str] | _RouteFailed:
    """The MX hosts of ``domain`` to try, in order, from the MX ``answer``; or why the domain takes no mail."""
    if answer.status is DnsStatus.NXDOMAIN:
        return _RouteFailed(Result.FAILED, f"550 5.1.2 The domain {domain} does not exist (DNS NXDOMAIN)")
    records = [record for record in answer.records if isinstance(record, dns.rdtypes.ANY.MX.MX)]
    if answer.status is DnsStatus.NODATA or not records:
        return [domain]  # RFC 5321 §5.1: no MX, the domain itself is the implicit MX (DNS-02)
    if any(record.exchange == dns.name.root for record in records):
        # RFC 7505 §3 (DNS-04): a null MX, even beside other MXs, means the domain accepts no mail.
        return _RouteFailed(
            Result.FAILED, f"556 5.1.10 Recipient address rejected: {domain} does not accept mail (null MX)"
        )
    ranked: dict[int, list[str]] = {}
    for record in records:
        ranked.setdefault(record.preference, []).append(name_text(record.exchange))
    own = own_name.rstrip(".").lower()
    own_preference = min((p for p, names in ranked.items() if own in (n.lower() for n in names)), default=None)
    hosts: list[str] = []
    for preference in sorted(ranked):
        if own_preference is not None and preference >= own_preference:
            break  # DNS-15: only MXs better than this host itself
        names = ranked[preference]
        rng.shuffle(names)  # DNS-14, RFC 5321 §5.1: spread the load over equal preferences
        hosts += names
    if not hosts:
        return _RouteFailed(Result.FAILED, f"554 5.4.6 Mail for {domain} loops back to myself ({own} is its best MX)")
    return hosts[:_MAX_MX]


def _no_address(route_: Route, hosts: Sequence[str], problems: Sequence[_Lookup]) -> tuple[str, Result]:
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
