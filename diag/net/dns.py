"""DNS probes with dnspython: typed answers, a per-run cache, bounded time.

An answer (data, NXDOMAIN or NODATA) is a fact and is returned; anything that is not an answer (SERVFAIL,
REFUSED, no reachable nameserver, timeout) raises :class:`~diag.errors.DnsError`, so a check can never mistake
"the resolver failed" for "there is no record" (security-cases.md DNS-03).

A lookup gets the operation timeout (``--timeout``) in all, and a lost UDP datagram does not cost all of it:
authoritative servers that rate-limit (response rate limiting drops answers) and busy resolvers lose queries,
and a run over thousands of domains sends many. The first two thirds of the budget are UDP tries, each waiting
a quarter of that (two seconds at most), with a backoff between rounds over the nameservers (0.1 s, doubling, at
most 2 s); if every UDP answer was lost, the last third asks over TCP, which such servers answer and which gets
through where UDP is filtered (RFC 7766 §5: TCP is a full alternative to UDP, not only for truncation). A TCP
connection the server closes or resets before answering (one that rate-limits with truncated answers and cannot
take every connection they bring) is no answer either, and is tried again next round.

A server that keeps answering UDP with empty truncated replies is over its response rate limit for this client
and "slips" (RRL sends a truncated reply in place of some of the answers it drops, so that a real client comes
back over TCP, where there is no limit). An empty truncated reply counts as a slip when the answer over TCP
would have fitted the UDP reply (512 octets, or the EDNS payload offered): servers also truncate a large answer
to the question alone, and that is no slip. After _SLIPS slips within _SLIP_WINDOW seconds, the resolver asks
that server over TCP first for _TCP_FIRST seconds (RFC 7766 §5: a client may use TCP for any query): each
question then costs one TCP exchange instead of a UDP try, often dropped, and a TCP one. When TCP fails such a
server (a timeout, a refused connection), it is asked over UDP again, for the rest of the lookup and the next
questions; not when it answers (even SERVFAIL), nor when it closes or resets a connection before answering,
which a busy server does (tried again next round, over TCP).

A TCP connection carries one question at a time and, once answered, waits for the next question to that server
(at most _IDLE_TCP waiting per server) instead of being closed: RFC 7766 §6.2.1 asks clients to reuse
connections rather than open one per query, and a run that asks over TCP first would otherwise pay a handshake
and a teardown, on both sides, for every question. One that waited _TCP_IDLE seconds is closed (within another
_TCP_IDLE at most). A waiting connection that fails other than by a timeout (the server closed it meanwhile, or
left data on it) is closed and the question goes on a new connection within the same try.
:meth:`Resolver.aclose` closes those still waiting, and a lookup under way at that moment closes its own.

The stub resolution is dnspython's own (``dns.resolver._Resolution``: a nameserver that answers SERVFAIL,
REFUSED, malformed data or a truncated answer over TCP is dropped for the lookup; one that times out is tried
again next round; a truncated UDP answer is asked again over TCP, DNS-08) written over ``dns.asyncquery``,
because ``dns.resolver`` imports ``dns._ddr`` (discovery of designated resolvers, which diag never uses) and
with it a third of dnspython's import time (issue 13: start-up). Without ``--resolver``, the nameservers of
``/etc/resolv.conf`` are asked, as dnspython would (``rotate`` and ``edns0`` are honoured; search lists never
apply, a probe asks for exactly the name it has).

An MX answer's additional section, where a server gives it, is used the way RFC 1035 §3.3.9 (and RFC 3596 §3 for
AAAA) defines it: the A and AAAA records of a mail exchanger named in that answer count as the answers to those
questions for the rest of the run, which saves a round trip before the first connection. Only records owned by
an exchange name of the same answer are taken; a type the section does not give is asked for as usual. A
resolver that asks with the DO bit (:class:`Resolver`) takes them only with the RRSIGs the section gives for them.

A nameserver that does not implement EDNS answers a query carrying an OPT record with FORMERR or NOTIMP and no OPT
record of its own (RFC 6891 §7). Such an answer to a query with EDNS (a DNSSEC question, or ``edns0``) is asked
again of that server without EDNS, within the same lookup budget, after the other nameservers of the round (one
that does EDNS can give the DNSSEC material, RFC 6891 §6.2.2); the resolver remembers it for the rest of the run,
so a later question to that server for that name or a name below it goes without EDNS at once, after the other
servers. The memory is per server and name, as Unbound's per server and zone, because a server may be a front for
several others (the lab's serves every lab domain, only one of them without EDNS). The answer then carries no
DNSSEC material: it answers the plain question, and a DNSSEC question about it raises :class:`~diag.errors.DnsError`
saying so (:attr:`Answer.no_dnssec`). A timeout is never a reason to drop EDNS (DNS flag day 2019).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import random
import socket
from collections import deque
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

# Where the packages for DNS over HTTPS or over QUIC are installed (checkdmarc, for one, asks for dnspython[doh]),
# dnspython imports their clients when dns.query, dns.quic or its asyncio backend is imported: httpx2, httpcore2,
# anyio and h2 took about 100 ms of every check's start (bench/README.md, seventh pass). diag asks over UDP and TCP
# only. The switch is dnspython's own (a private module; a dnspython without it only costs the time again) and holds
# for the whole process, so other code in a process that imported diag's resolver cannot use dnspython's DoH or DoQ.
# It must come before the first of those imports (the next lines; nothing else in diag imports them), hence the
# E402 exemption of this file in pyproject.toml.
with contextlib.suppress(ImportError, AttributeError):
    import dns._features

    dns._features.force("doh", False)
    dns._features.force("doq", False)

import dns.asyncbackend
import dns.asyncquery
import dns.entropy
import dns.exception
import dns.flags
import dns.inet
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.RRSIG
import dns.rrset

if TYPE_CHECKING:
    from dns._asyncbackend import StreamSocket  # dns.asyncbackend's, which mypy does not see re-exported

from diag.errors import DnsError, DnsNoDnssecError, DnsTimeoutError
from diag.frozen import frozen
from diag.names import port_number

__all__ = ["Answer", "DnsStatus", "Nameserver", "Resolver", "name_text", "parse_nameserver", "system_nameservers"]

log = logging.getLogger(__name__)

# Seconds granted beyond the lookup lifetime before the outer deadline cancels it: a try's own timeout is
# checked between tries and can overrun (STYLE.md rule 6).
_GRACE = 1.0
# Questions on the wire at once: a domain with hundreds of MX hosts must not flood the nameserver with a burst
# of A and AAAA queries (UDP answers get dropped, and each costs a retry).
_MAX_IN_FLIGHT = 32
# Answers a run's resolver keeps at most (Resolver._remember): some 20 questions for each of the 100 domains a
# worker has in flight, four times over, and the answers every domain shares (bench/scale.py: 10,000 domains in
# 224 MB).
_CACHE_ENTRIES = 8_000
# How a lookup spends its budget (module docstring): this share on UDP tries, the rest on TCP.
_UDP_SHARE = 2 / 3
# UDP tries that fit into the UDP share when none is answered (the backoff comes on top); each try waits at most
# _MAX_TRY, dnspython's own default per-try timeout.
_UDP_TRIES = 4
_MAX_TRY = 2.0
# Empty truncated UDP replies from one server within a window that make the resolver ask it over TCP first, and
# for how long (module docstring): a run over thousands of domains meets a rate limit within a second.
_SLIPS = 8
_SLIP_WINDOW = 2.0
_TCP_FIRST = 30.0
# The largest UDP reply a query without EDNS may get (RFC 1035 §4.2.1).
_PLAIN_UDP = 512
# Answered TCP connections kept per server for the next questions, and for how long (module docstring): below the
# idle timeouts of common servers (BIND's tcp-idle-timeout 30 s, Unbound's 30 s, NSD's tcp-timeout 120 s).
_IDLE_TCP = 16
_TCP_IDLE = 5.0
# The backoff before each new round over the nameservers: dnspython's (dns.resolver._Resolution).
_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 2.0
# The EDNS payload offered with ``options edns0`` in resolv.conf: dnspython's default (the DNS flag day 2020 size).
_EDNS_PAYLOAD = 1232
_RESOLV_CONF = Path("/etc/resolv.conf")
# Address records a mail exchanger's name may come with in an MX answer's additional section.
_ADDRESS_TYPES = {dns.rdatatype.A: "A", dns.rdatatype.AAAA: "AAAA"}


class DnsStatus(enum.StrEnum):
    """What kind of answer a lookup got."""

    OK = "ok"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"


@frozen
class Nameserver:
    """A DNS server to ask: an IP address and a port."""

    ip: str
    port: int = 53

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@frozen
class Answer:
    """The answer to one question.

    Attributes:
        name: the name asked for, without its trailing dot.
        rdtype: the record type asked for (``MX``).
        status: data, NXDOMAIN or NODATA.
        canonical_name: the name the data was found at, after any CNAME chain; equal to ``name`` without one.
        records: the record data, empty unless ``status`` is OK.
        dnssec: asked with the DO bit (RFC 4035 §3.2.1), so the fields below are filled in.
        signatures: the RRSIGs covering ``records`` (at ``canonical_name``).
        authority: the authority section: for a negative answer, the SOA, the NSEC/NSEC3 records denying the
            name or type, and their RRSIGs (RFC 4035 §3.1.3); for an answer synthesised from a wildcard, the
            NSEC/NSEC3 proving the name itself does not exist (§3.1.3.3).
        authenticated: the AD bit: the resolver says it validated the answer. Only worth anything from a
            validating resolver the operator trusts, over a path nobody can tamper with (security-cases.md
            DNS-19, RD-27).
        no_dnssec: asked for DNSSEC material, but answered by a nameserver that does not implement EDNS (asked
            again without it, RFC 6891 §7), so ``dnssec`` is False and the answer has none: why, naming the
            server. A DNSSEC question about it raises :class:`~diag.errors.DnsError` with this text.
    """

    name: str
    rdtype: str
    status: DnsStatus
    canonical_name: str
    records: tuple[dns.rdata.Rdata, ...] = ()
    dnssec: bool = False
    signatures: tuple[dns.rdtypes.ANY.RRSIG.RRSIG, ...] = ()
    authority: tuple[dns.rrset.RRset, ...] = ()
    authenticated: bool = False
    no_dnssec: str = ""

    @property
    def via_cname(self) -> bool:
        return self.canonical_name.lower() != self.name.lower()


def parse_nameserver(text: str) -> Nameserver:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` as a :class:`Nameserver`; ValueError says what is wrong."""
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError("expected IP, IP:PORT or [IPv6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError("not an IP address (expected IP, IP:PORT or [IPv6]:PORT)") from None
    if not port_text:
        return Nameserver(host)
    return Nameserver(host, port_number(port_text))


def name_text(name: dns.name.Name) -> str:
    """A DNS name as text without its trailing dot: ``ssl`` refuses to match ``mx.example.`` (DNS-13)."""
    return name.to_text(omit_final_dot=True) if name != dns.name.root else "."


def system_nameservers(path: Path = _RESOLV_CONF) -> tuple[tuple[Nameserver, ...], bool, bool]:
    """The ``nameserver`` entries of a resolv.conf file, and whether its options ask for ``rotate`` and
    ``edns0``; no nameserver when the file cannot be read. Entries that are not IP addresses are skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return (), False, False
    servers: list[Nameserver] = []
    options: set[str] = set()
    for line in text.splitlines():
        tokens = line.split()
        if len(tokens) < 2 or tokens[0].startswith(("#", ";")):
            continue
        if tokens[0] == "nameserver":
            try:
                servers.append(Nameserver(str(ipaddress.ip_address(tokens[1]))))
            except ValueError:
                continue
        elif tokens[0] == "options":
            options.update(tokens[1:])
    return tuple(servers), "rotate" in options, "edns0" in options


class _Expired(Exception):
    """A lookup phase used up its lifetime (dnspython's ``LifetimeTimeout``)."""


class _CutShort(dns.exception.Timeout):
    """A TCP try that timed out with less than a whole try's time: at the end of its phase, or on a kept
    connection (which says nothing of new ones)."""


class _Unanswered(Exception):
    """Every nameserver failed to answer (dnspython's ``NoNameservers``); the message lists what each said."""


@frozen
class _Try:
    """One query on the wire: to which nameserver, over TCP or not, with EDNS (an OPT record) or not."""

    server: Nameserver
    tcp: bool
    edns: bool = False
    first: bool = False
    """Over TCP because the server is asked over TCP first (module docstring), not for a truncated answer."""


class _Answered(NamedTuple):
    """A lookup's answer: the response, its CNAME chain (dnspython's reading of it) and the try that got it."""

    response: dns.message.QueryMessage
    chain: dns.message.ChainingResult
    attempt: _Try


def _request(qname: dns.name.Name, rdtype: str, *, edns: bool, dnssec: bool) -> dns.message.QueryMessage:
    if not edns:
        return dns.message.make_query(qname, rdtype)
    request = dns.message.make_query(qname, rdtype, want_dnssec=dnssec, payload=_EDNS_PAYLOAD)
    if dnssec:
        request.flags |= dns.flags.AD
    return request


def _slip_limit(attempt: _Try, exc: Exception) -> int | None:
    """When ``exc`` is a truncated UDP reply with no records (a rate limiter's slip, or a large answer cut to its
    question: told apart by the answer over TCP, :meth:`Resolver._slipped`), the largest UDP reply the answer
    would have fitted: 512 octets, or with EDNS the smaller of the payload offered and the server's own."""
    if attempt.tcp or not isinstance(exc, dns.message.Truncated):
        return None
    reply: dns.message.Message | None = exc.message()  # type: ignore[no-untyped-call]
    if reply is None or reply.answer or reply.authority:
        return None
    if not attempt.edns:
        return _PLAIN_UDP
    return min(_EDNS_PAYLOAD, max(reply.payload, _PLAIN_UDP)) if reply.edns >= 0 else _PLAIN_UDP


async def _close(sock: StreamSocket) -> None:
    await sock.close()  # type: ignore[no-untyped-call]


class _Lookup:
    """The I/O-free part of one lookup phase: which nameserver to ask next, and what an answer or a failure means
    (dnspython's ``_Resolution``, for one name and without search lists, cache or TSIG)."""

    def __init__(
        self, servers: Sequence[Nameserver], *, tcp: bool, edns: bool = False, plain: Collection[Nameserver] = (),
        tcp_first: Collection[Nameserver] = (),
    ) -> None:
        """``edns``: the question goes with EDNS, but to the servers in ``plain`` (known not to implement it),
        which are asked after the others. ``tcp_first``: servers asked over TCP even in a UDP phase, until TCP
        fails them (:attr:`gave_up_tcp`)."""
        self.servers = sorted(servers, key=lambda server: server in plain) if edns else list(servers)
        self._round = self.servers[:]
        self._tcp = tcp
        self._tcp_first = set(tcp_first)
        self.gave_up_tcp: set[Nameserver] = set()
        """The servers asked over TCP first whose TCP failed in this phase (not an answer): asked over UDP again."""
        self._edns = edns
        self._plain = set(plain)
        self._retry: _Try | None = None
        self._backoff = _FIRST_BACKOFF
        self.errors: list[str] = []
        self.edns_refused: dict[Nameserver, str] = {}
        """The servers found in this phase not to implement EDNS, and what they answered a query with it."""

    def next_try(self) -> tuple[_Try, float]:
        """The next query, and how long to wait before sending it; raises _Unanswered when no server is left."""
        if self._retry is not None:
            attempt, self._retry = self._retry, None
            return attempt, 0.0
        wait = 0.0
        if not self._round:  # every server was tried once: a new round, after a backoff
            if not self.servers:
                raise _Unanswered("; ".join(self.errors) or "no nameserver")
            self._round = self.servers[:]
            wait, self._backoff = self._backoff, min(self._backoff * 2, _MAX_BACKOFF)
        server = self._round.pop(0)
        first = not self._tcp and server in self._tcp_first
        return _Try(server, self._tcp or first, self._edns and server not in self._plain, first), wait

    def failed(self, attempt: _Try, exc: Exception) -> None:
        """The query raised ``exc`` instead of returning a response."""
        if isinstance(exc, dns.message.Truncated) and not attempt.tcp:
            # DNS-08: the full answer over TCP, from the same server
            self._retry = _Try(attempt.server, True, attempt.edns)
            return
        self.errors.append(f"{attempt.server} {_failure_text(exc)}")
        refused = isinstance(exc, OSError) and not isinstance(exc, ConnectionResetError)
        timed_out = isinstance(exc, dns.exception.Timeout) and not isinstance(exc, _CutShort)
        if attempt.first and (refused or timed_out):
            # TCP does not get through to it (filtered, refused, a new connection silent for a whole try): over
            # UDP from the next round on. A connection closed or reset before the answer is a busy server's, and
            # a try cut short proves nothing: tried again next round (below).
            self._tcp_first.discard(attempt.server)
            self.gave_up_tcp.add(attempt.server)
            return
        if attempt.tcp and isinstance(exc, EOFError | ConnectionResetError):
            # Closed or reset before answering: a server that rate-limits with truncated answers and cannot take
            # every connection they bring (NSD's rrl-slip under load). Tried again next round, as a timeout is.
            return
        if isinstance(exc, dns.exception.FormError | dns.message.Truncated | EOFError | OSError | NotImplementedError):
            self._drop(attempt.server)  # no good for this lookup; a timeout is tried again next round

    def answered(self, attempt: _Try, response: dns.message.Message) -> _Answered | None:
        """The response and its CNAME chain when it answers the question (NOERROR or NXDOMAIN, with a well-formed
        chain); None when the server is dropped and the next one is asked. YXDOMAIN ends the lookup (it cannot
        improve)."""
        rcode = response.rcode()
        if rcode in (dns.rcode.FORMERR, dns.rcode.NOTIMP) and attempt.edns and response.edns < 0:
            # RFC 6891 §7: a server that does not implement EDNS answers so, without an OPT record; it is asked
            # again without EDNS after the other servers of the round, which may give the DNSSEC material.
            self.errors.append(f"{attempt.server} answered {dns.rcode.to_text(rcode)} to a query with EDNS")
            self.edns_refused[attempt.server] = dns.rcode.to_text(rcode)
            self._plain.add(attempt.server)
            self._round.append(attempt.server)
            return None
        if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) and isinstance(response, dns.message.QueryMessage):
            try:
                chain = response.resolve_chaining()
            except dns.exception.DNSException as exc:  # ChainTooLong (DNS-07), an answer next to NXDOMAIN
                self.errors.append(f"{attempt.server} answered {exc}")
                self._drop(attempt.server)
                return None
            return _Answered(response, chain, attempt)
        self.errors.append(f"{attempt.server} answered {dns.rcode.to_text(rcode)}")
        if rcode == dns.rcode.YXDOMAIN:
            raise _Unanswered("; ".join(self.errors))
        self._drop(attempt.server)
        return None

    def _drop(self, server: Nameserver) -> None:
        if server in self.servers:
            self.servers.remove(server)


def _complete(name: str, rdtype: str, response: dns.message.Message) -> None:
    """Raise DnsError when a response for data is truncated: asked again over TCP and truncated there too, it is
    incomplete, and an incomplete answer is no answer (never "no MX", DNS-08)."""
    if response.flags & dns.flags.TC:
        raise DnsError(f"{name} {rdtype}: the answer is truncated even over TCP")


def _plain_answer(
    name: str, rdtype: str, response: dns.message.QueryMessage, chain: dns.message.ChainingResult, *,
    no_dnssec: str = "",
) -> Answer:
    """The answer in ``response`` without DNSSEC material."""
    canonical_name = name_text(chain.canonical_name)
    if response.rcode() == dns.rcode.NXDOMAIN:
        return Answer(name, rdtype, DnsStatus.NXDOMAIN, canonical_name, no_dnssec=no_dnssec)
    _complete(name, rdtype, response)
    if chain.answer is None:
        return Answer(name, rdtype, DnsStatus.NODATA, canonical_name, no_dnssec=no_dnssec)
    return Answer(name, rdtype, DnsStatus.OK, canonical_name, tuple(chain.answer), no_dnssec=no_dnssec)


def _failure_text(exc: Exception) -> str:
    if isinstance(exc, dns.exception.Timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return f"failed: {exc.strerror}"
    return f"failed: {str(exc) or type(exc).__name__}"


class Resolver:
    """Asks DNS questions for one run and remembers the answers.

    A resolver serves one event loop, and :meth:`aclose` closes the TCP connections it keeps (module docstring).
    Concurrent callers asking the same question share one lookup; answers and failures are cached for the
    life of the object, which is one run (no module-level cache: STYLE.md), up to the last :data:`_CACHE_ENTRIES`
    used: a run over tens of thousands of domains keeps what its domains in flight and their shared names use.

    The cache is per (name, type), and each question goes on the wire once (issue 14: the policy checks share
    the mail checks' answers). A DNSSEC question (``query(dnssec=True)``: the DO and AD bits, RRSIGs and denial
    records kept) needs an answer that was asked with DO. A run whose checks need DNSSEC material (``dnssec``:
    the dnssec and dane checks) therefore asks every question with DO and AD from the start, so the MX and
    address answers the mail checks get carry their RRSIGs, and the DNSSEC questions about them are answered
    from the cache; its failures (SERVFAIL, a timeout) stand for both kinds of question too. Without
    ``dnssec`` a question goes out as before (EDNS only with resolv.conf's ``edns0``), and a DNSSEC question
    about a name already asked without DO asks again; its answer, a superset of the plain one, replaces the
    cached entry for both kinds of question.

    ``ad_bit``: the run takes DNSSEC states from the AD bit of these nameservers (``--validating-resolver``).
    The AD bit of a response vouches for its answer and authority sections only (RFC 4035 §3.2.3), so with it
    the addresses of an MX answer's additional section are not taken (see the module docstring): each is asked,
    and its own AD bit says whether it validated.

    A nameserver that answers FORMERR or NOTIMP without an OPT record to a query with EDNS is asked again without
    it (module docstring), and remembered for the rest of the run for that name and the names below it. In a run
    with ``dnssec``, that second query is a second question on the wire by design; its answer serves the plain
    question, and the DNSSEC question gets a DnsError saying the server gave no DNSSEC material
    (:attr:`Answer.no_dnssec`), which the DNSSEC checks report as an indeterminate state, never a secure one.
    """

    def __init__(
        self, nameservers: Sequence[Nameserver] = (), *, timeout: float = 5.0, dnssec: bool = False,
        ad_bit: bool = False,
    ) -> None:
        self._timeout = timeout
        self._dnssec = dnssec
        self._ad_bit = ad_bit
        self._cache: dict[tuple[str, str], asyncio.Future[Answer]] = {}
        # (nameserver, name) → what the server answered a query with EDNS for that name: it does not implement
        # EDNS, for that name and the names below it (module docstring).
        self._edns_refused: dict[tuple[Nameserver, dns.name.Name], str] = {}
        self._setup_error: str | None = None
        self._in_flight = asyncio.Semaphore(_MAX_IN_FLIGHT)
        # Per server: when its last empty truncated UDP replies came, and until when it is asked over TCP first.
        self._slips: dict[Nameserver, deque[float]] = {}
        self._tcp_first: dict[Nameserver, float] = {}
        # Per server: answered TCP connections waiting for the next question, with when each was last answered.
        self._idle_tcp: dict[Nameserver, list[tuple[StreamSocket, float]]] = {}
        self._sweeper: asyncio.Future[None] | None = None
        self._closed = False
        self._rotate = self._edns = False
        if nameservers:
            self._nameservers = tuple(nameservers)
        else:
            self._nameservers, self._rotate, self._edns = system_nameservers()
            if not self._nameservers:
                self._setup_error = "this host has no DNS resolver configured; use --resolver IP"
        # Each try (UDP, or TCP in the last part) waits this long at most; each phase's lifetime is given per
        # lookup. Truncated UDP answers are asked again over TCP (DNS-08).
        self._try_timeout = min(timeout * _UDP_SHARE / _UDP_TRIES, _MAX_TRY)

    @property
    def nameservers(self) -> tuple[str, ...]:
        return tuple(str(ns) for ns in self._nameservers)

    async def query(self, name: str, rdtype: str, *, dnssec: bool = False) -> Answer:
        """Ask for ``rdtype`` records at ``name`` (an A-label name); raises DnsError when there is no answer.

        ``dnssec``: ask with the DO bit and keep what DNSSEC validation needs (see :class:`Answer`); a resolver
        made with ``dnssec`` does so for every question.
        """
        key = (name.lower().rstrip("."), rdtype.upper())
        future = self._cache.pop(key, None)  # taken out and put back last: the cache keeps what is used last
        if future is not None:
            self._cache[key] = future
        if future is not None and dnssec and not self._dnssec and not await self._asked_with_dnssec(future):
            future = None
        if future is None:
            future = asyncio.ensure_future(self._lookup(*key, dnssec=dnssec or self._dnssec))
            self._remember(key, future)
        answer = await asyncio.shield(future)
        if dnssec and answer.no_dnssec:
            raise DnsNoDnssecError(answer.no_dnssec)
        return answer

    def _remember(self, key: tuple[str, str], future: asyncio.Future[Answer]) -> None:
        """Cache ``future`` for ``key``; beyond :data:`_CACHE_ENTRIES`, forget the answers used longest ago (a
        run over thousands of domains needs a domain's answers while it is checked, and the shared ones, such as
        a cloud's MX hosts and the root's keys, stay in use)."""
        self._cache.pop(key, None)
        self._cache[key] = future
        while len(self._cache) > _CACHE_ENTRIES:
            oldest = next(iter(self._cache))
            if not self._cache[oldest].done():
                break  # still asked for: everything after it is newer
            del self._cache[oldest]

    @staticmethod
    async def _asked_with_dnssec(future: asyncio.Future[Answer]) -> bool:
        """Whether the cached answer is as much as a DNSSEC question gets: asked with DO, or from a server that
        does not implement EDNS (asking again would get the same)."""
        try:
            answer = await asyncio.shield(future)
        except DnsError:
            return False  # a failed plain lookup does not stand in for a DNSSEC one
        return answer.dnssec or bool(answer.no_dnssec)

    async def _lookup(self, name: str, rdtype: str, *, dnssec: bool = False) -> Answer:
        if self._setup_error:
            raise DnsError(self._setup_error)
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as exc:  # a hostile record's name (an escape cut in two, a long label)
            raise DnsError(f"{name} {rdtype}: not a name that can be asked ({exc})") from None
        try:
            # The budget starts when the question goes on the wire: waiting for a slot among the questions in
            # flight is local queueing, and a run with many checks per domain must not time out in it.
            async with self._in_flight:
                async with asyncio.timeout(self._timeout + _GRACE):
                    response, chain, attempt = await self._resolve(qname, rdtype, dnssec=dnssec)
        except (_Expired, TimeoutError):
            raise DnsTimeoutError(
                f"no answer for {name} {rdtype} within {self._timeout:g} s (over UDP and TCP) from "
                f"{self._servers()}"
            ) from None
        except _Unanswered as exc:
            raise DnsError(f"no usable answer for {name} {rdtype}: {exc}") from None
        except dns.exception.DNSException as exc:
            raise DnsError(f"{name} {rdtype}: {exc}") from None
        canonical_name = name_text(chain.canonical_name)
        if dnssec and not attempt.edns:
            # A server that does not implement EDNS answered without it: the answer carries no DNSSEC material,
            # and a DNSSEC question about it hears why (query()). Its additional section is not taken either, so
            # that every DNSSEC question about the exchanges' addresses hears it too.
            refused = self._refused_edns(attempt.server, qname)
            return _plain_answer(name, rdtype, response, chain, no_dnssec=(
                f"{attempt.server} does not implement EDNS (it answered {refused} to a query with EDNS): its answer "
                f"for {name} {rdtype} carries no DNSSEC material"))  # fmt: skip
        if not dnssec:
            answer = _plain_answer(name, rdtype, response, chain)
            if rdtype == "MX" and chain.answer is not None and answer.status is DnsStatus.OK:
                self._take_additional(response, chain.answer, dnssec=False)
            return answer
        authority, authenticated = tuple(response.authority), bool(response.flags & dns.flags.AD)
        if response.rcode() == dns.rcode.NXDOMAIN:
            return Answer(name, rdtype, DnsStatus.NXDOMAIN, canonical_name, dnssec=True, authority=authority,
                          authenticated=authenticated)  # fmt: skip
        _complete(name, rdtype, response)
        if chain.answer is None:
            return Answer(name, rdtype, DnsStatus.NODATA, canonical_name, dnssec=True, authority=authority,
                          authenticated=authenticated)  # fmt: skip
        if rdtype == "MX" and not self._ad_bit:
            self._take_additional(response, chain.answer, dnssec=True)
        covering = response.get_rrset(
            response.answer, chain.canonical_name, chain.answer.rdclass, dns.rdatatype.RRSIG, chain.answer.rdtype
        )
        signatures = tuple(r for r in covering or () if isinstance(r, dns.rdtypes.ANY.RRSIG.RRSIG))
        return Answer(name, rdtype, DnsStatus.OK, canonical_name, tuple(chain.answer), dnssec=True,
                      signatures=signatures, authority=authority, authenticated=authenticated)  # fmt: skip

    def _refused_edns(self, server: Nameserver, qname: dns.name.Name) -> str | None:
        """What ``server`` answered a query with EDNS for ``qname`` or a name above it, when it did not implement
        EDNS; None when it is not known so."""
        if not self._edns_refused:
            return None  # the usual run: no walk up the name for every server of every lookup
        while True:
            refused = self._edns_refused.get((server, qname))
            if refused is not None or qname == dns.name.root:
                return refused
            qname = qname.parent()

    def _take_additional(self, response: dns.message.Message, answer: dns.rrset.RRset, *, dnssec: bool) -> None:
        """The A and AAAA records an MX answer gives for its exchanges, as the answers to those questions (module
        docstring); a question already asked keeps its own answer.

        Asked with DO (``dnssec``), a set is taken only with its RRSIGs from the same section, and not when they
        show a wildcard expansion (fewer labels than the owner name, RFC 4035 §5.3.4): that answer would need
        the authority section's proof that no closer name exists, which an additional section does not carry.
        """
        exchanges = {r.exchange for r in answer if isinstance(r, dns.rdtypes.ANY.MX.MX)}
        for rrset in response.additional:
            rdtype = _ADDRESS_TYPES.get(rrset.rdtype)
            if rdtype is None or rrset.rdclass != dns.rdataclass.IN or rrset.name not in exchanges or not rrset:
                continue
            name = name_text(rrset.name).lower()
            if (name, rdtype) in self._cache:
                continue
            given: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
            if dnssec:
                covering = response.get_rrset(
                    response.additional, rrset.name, rrset.rdclass, dns.rdatatype.RRSIG, rrset.rdtype
                )
                signatures = tuple(r for r in covering or () if isinstance(r, dns.rdtypes.ANY.RRSIG.RRSIG))
                labels = len(rrset.name.labels) - 1  # without the root label
                if not signatures or any(s.labels < labels for s in signatures):
                    continue
                given.set_result(Answer(name, rdtype, DnsStatus.OK, name, tuple(rrset), dnssec=True,
                                        signatures=signatures))  # fmt: skip
            else:
                given.set_result(Answer(name, rdtype, DnsStatus.OK, name, tuple(rrset)))
            self._remember((name, rdtype), given)

    async def _resolve(self, qname: dns.name.Name, rdtype: str, *, dnssec: bool) -> _Answered:
        """UDP tries for the first part of the budget, then TCP for the rest (module docstring)."""
        clock = asyncio.get_running_loop()
        started = clock.time()
        try:
            return await self._ask(qname, rdtype, tcp=False, lifetime=self._timeout * _UDP_SHARE, dnssec=dnssec)
        except _Expired:
            pass  # every UDP answer was lost
        remaining = self._timeout - (clock.time() - started)
        return await self._ask(qname, rdtype, tcp=True, lifetime=max(remaining, 0.001), dnssec=dnssec)

    async def _ask(
        self, qname: dns.name.Name, rdtype: str, *, tcp: bool, lifetime: float, dnssec: bool
    ) -> _Answered:
        """One phase: the nameservers in turn until one answers; raises _Expired when ``lifetime`` runs out.

        A DNSSEC question sets DO (with EDNS, RFC 4035 §3.2.1) and AD (RFC 6840 §5.7): RRSIGs make every answer
        larger, so only a run that needs them asks for them (:class:`Resolver`). A server that does not implement
        EDNS is asked without it (module docstring).
        """
        clock = asyncio.get_running_loop()
        expires = clock.time() + lifetime
        servers = list(self._nameservers)
        if self._rotate:
            random.shuffle(servers)
        edns = dnssec or self._edns
        plain = [server for server in servers if edns and self._refused_edns(server, qname) is not None]
        now = clock.time()
        tcp_first = [server for server in servers if self._tcp_first.get(server, 0.0) > now]
        lookup = _Lookup(servers, tcp=tcp, edns=edns, plain=plain, tcp_first=tcp_first)
        # After an empty truncated UDP reply, until its TCP retry (the next try, to the same server) returns: the
        # size of UDP reply the answer would have fitted
        slip: int | None = None
        requests: dict[bool, dns.message.QueryMessage] = {}  # by EDNS or not, each made when first needed
        try:
            while True:
                attempt, wait = lookup.next_try()
                if wait:
                    await asyncio.sleep(wait)
                left = expires - clock.time()
                if left <= 0:
                    raise _Expired
                request = requests.get(attempt.edns)
                if request is None:
                    request = requests[attempt.edns] = _request(qname, rdtype, edns=attempt.edns, dnssec=dnssec)
                request.id = dns.entropy.random_16()
                try:
                    response = await self._send(request, attempt, min(left, self._try_timeout))
                except Exception as exc:  # judged by _Lookup.failed, as dnspython does
                    slip = _slip_limit(attempt, exc)
                    lookup.failed(attempt, exc)
                    server = attempt.server
                    given_up = attempt.first and server in lookup.gave_up_tcp
                    if given_up and self._tcp_first.pop(server, 0.0) > clock.time():
                        log.info("%s over TCP %s; asking it over UDP first again", server, _failure_text(exc))
                    continue
                if slip is not None and attempt.tcp:
                    self._slipped(attempt.server, slip, response)
                slip = None
                answered = lookup.answered(attempt, response)
                if answered is not None:
                    return answered
        finally:
            for server, rcode in lookup.edns_refused.items():
                self._edns_refused[server, qname] = rcode

    def _slipped(self, server: Nameserver, limit: int, response: dns.message.Message) -> None:
        """``server`` sent an empty truncated reply over UDP, and ``response`` is its answer over TCP: a slip of
        its rate limiting when that answer would have fitted the UDP reply (``limit`` octets; module docstring);
        enough slips make it a server asked over TCP first. Any answer counts, SERVFAIL included: it was one."""
        try:
            size = len(response.to_wire())
        except dns.exception.DNSException:
            return
        if size > limit:
            return  # a large answer, truncated as it had to be
        now = asyncio.get_running_loop().time()
        slips = self._slips.setdefault(server, deque(maxlen=_SLIPS))
        slips.append(now)
        if len(slips) == _SLIPS and now - slips[0] <= _SLIP_WINDOW:
            if self._tcp_first.get(server, 0.0) <= now:
                log.info("%s truncates its UDP answers (rate limiting): asking it over TCP first for %g s", server,
                         _TCP_FIRST)  # fmt: skip
            self._tcp_first[server] = now + _TCP_FIRST
            slips.clear()

    async def aclose(self) -> None:
        """Close the TCP connections waiting for a next question (module docstring); a lookup still under way
        closes its connection when it is done."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        idle = [sock for waiting in self._idle_tcp.values() for sock, _ in waiting]
        self._idle_tcp.clear()
        for sock in idle:
            await _close(sock)

    async def _send(self, request: dns.message.QueryMessage, attempt: _Try, timeout: float) -> dns.message.Message:  # noqa: ASYNC109
        server = attempt.server
        if attempt.tcp:
            return await self._send_tcp(request, server, timeout)
        # A forged or malformed datagram is ignored and the real answer still awaited (DNS-09).
        return await dns.asyncquery.udp(
            request, server.ip, timeout=timeout, port=server.port, raise_on_truncation=True, ignore_errors=True,
            ignore_unexpected=True,
        )  # fmt: skip

    async def _send_tcp(
        self, request: dns.message.QueryMessage, server: Nameserver, timeout: float  # noqa: ASYNC109
    ) -> dns.message.Message:
        """Ask over TCP on a connection waiting for a next question, or on a new one (module docstring)."""
        clock = asyncio.get_running_loop()
        expires = clock.time() + timeout
        waiting = self._idle_tcp.get(server)
        if waiting:
            sock, _ = waiting.pop()  # the most recently answered: kept for at most _TCP_IDLE (_sweep)
            try:
                response = await self._exchange(request, sock, timeout)
            except dns.exception.Timeout:
                raise _CutShort from None  # a kept connection gone silent: says nothing of a new one
            except Exception as exc:  # closed by the server meanwhile, or data left on it: a new connection
                log.debug("%s: a kept TCP connection failed (%s); asking on a new one", server, _failure_text(exc))
            else:
                await self._keep(server, sock)
                return response
        # A new connection silent for (nearly) a whole try is a server whose TCP does not answer; one given less
        # time (at the end of a phase, after a kept connection failed) proves nothing (_CutShort).
        whole = expires - clock.time() >= 0.9 * self._try_timeout
        try:
            backend = dns.asyncbackend.get_default_backend()
            sock = await backend.make_socket(  # type: ignore[no-untyped-call]
                dns.inet.af_for_address(server.ip), socket.SOCK_STREAM, 0, None, (server.ip, server.port),
                max(expires - clock.time(), 0.001),
            )  # fmt: skip
            response = await self._exchange(request, sock, max(expires - clock.time(), 0.001))
        except dns.exception.Timeout:
            if whole:
                raise
            raise _CutShort from None
        await self._keep(server, sock)
        return response

    @staticmethod
    async def _exchange(
        request: dns.message.QueryMessage, sock: StreamSocket, timeout: float  # noqa: ASYNC109
    ) -> dns.message.Message:
        """One question and its answer on ``sock``, which is closed when they do not both pass (a timeout, a
        cancellation or a bad answer leaves it in an unknown state)."""
        try:
            return await dns.asyncquery.tcp(request, "", timeout=timeout, sock=sock)
        except BaseException:
            await _close(sock)
            raise

    async def _keep(self, server: Nameserver, sock: StreamSocket) -> None:
        """Keep an answered connection for the next question to ``server``, or close it (module docstring)."""
        waiting = self._idle_tcp.setdefault(server, [])
        if self._closed or len(waiting) >= _IDLE_TCP:
            await _close(sock)
            return
        waiting.append((sock, asyncio.get_running_loop().time()))
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        """Close the kept connections that waited _TCP_IDLE seconds, every _TCP_IDLE seconds while any is kept."""
        clock = asyncio.get_running_loop()
        try:
            while any(self._idle_tcp.values()):
                await asyncio.sleep(_TCP_IDLE)
                oldest = clock.time() - _TCP_IDLE
                for waiting in list(self._idle_tcp.values()):
                    while waiting and waiting[0][1] <= oldest:  # kept in the order they were answered
                        await _close(waiting.pop(0)[0])
        finally:
            self._sweeper = None

    def _servers(self) -> str:
        return ", ".join(self.nameservers) or "no nameserver"
