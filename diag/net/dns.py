"""DNS probes with dnspython: typed answers, a per-run cache, bounded time.

An answer (data, NXDOMAIN or NODATA) is a fact and is returned; anything that is not an answer (SERVFAIL,
REFUSED, no reachable nameserver, timeout) raises :class:`~diag.errors.DnsError`, so a check can never mistake
"the resolver failed" for "there is no record" (security-cases.md DNS-03).

A lookup gets the operation timeout (``--timeout``) in all, and a lost UDP datagram does not cost all of it:
authoritative servers that rate-limit (response rate limiting drops answers) and busy resolvers lose queries,
and a run over thousands of domains sends many. The first two thirds of the budget are UDP tries, each waiting
a quarter of that (two seconds at most), with dnspython's own backoff between rounds (0.1 s, doubling, at most
2 s); if every UDP answer was lost, the last third asks over TCP, which such servers answer and which gets
through where UDP is filtered (RFC 7766 §5: TCP is a full alternative to UDP, not only for truncation). A server
that rate-limits may also answer with a truncated reply and then close the TCP connection the client opens for
it (it cannot take them all): that is no answer either, and the lookup asks again after a pause (0.1 s,
doubling, at most 1 s) while its budget lasts.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdatatype
import dns.resolver

from diag.errors import DnsError, DnsTimeoutError
from diag.names import port_number

__all__ = ["Answer", "DnsStatus", "Nameserver", "Resolver", "name_text", "parse_nameserver"]

# Seconds granted beyond the lookup lifetime before the outer deadline cancels it: dnspython's own lifetime
# check happens between tries and can overrun (STYLE.md rule 6).
_GRACE = 1.0
# Questions on the wire at once: a domain with hundreds of MX hosts must not flood the nameserver with a burst
# of A and AAAA queries (UDP answers get dropped, and each costs a retry).
_MAX_IN_FLIGHT = 64
# How a lookup spends its budget (module docstring): this share on UDP tries, the rest on TCP.
_UDP_SHARE = 2 / 3
# UDP tries that fit into the UDP share when none is answered (dnspython's backoff comes on top); each try
# waits at most _MAX_TRY, dnspython's own default per-try timeout.
_UDP_TRIES = 4
_MAX_TRY = 2.0
# A server that closed or reset the connection is asked again after this pause, doubling up to _MAX_PAUSE.
_FIRST_PAUSE = 0.1
_MAX_PAUSE = 1.0
# What ends a try without an answer (see _unanswered).
_UNANSWERED = (EOFError, ConnectionResetError, dns.exception.Timeout, dns.message.Truncated)


class DnsStatus(enum.StrEnum):
    """What kind of answer a lookup got."""

    OK = "ok"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"


@dataclass(frozen=True, slots=True)
class Nameserver:
    """A DNS server to ask: an IP address and a port."""

    ip: str
    port: int = 53

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to one question.

    Attributes:
        name: the name asked for, without its trailing dot.
        rdtype: the record type asked for (``MX``).
        status: data, NXDOMAIN or NODATA.
        canonical_name: the name the data was found at, after any CNAME chain; equal to ``name`` without one.
        records: the record data, empty unless ``status`` is OK.
    """

    name: str
    rdtype: str
    status: DnsStatus
    canonical_name: str
    records: tuple[dns.rdata.Rdata, ...] = ()

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


def _unanswered(exc: dns.resolver.NoNameservers) -> bool:
    """Whether every try of a failed lookup ended without an answer from the server, as if it were lost: a
    truncated UDP answer whose retry over TCP the server closed or reset (a server that rate-limits answers with
    truncated ones, then cannot take every connection), or a timeout. A refused datagram or connection (nothing
    listens there), a malformed answer and SERVFAIL or REFUSED are answers of a kind, and final."""
    errors = exc.kwargs.get("errors") or []
    return bool(errors) and all(
        response is None and isinstance(error, _UNANSWERED) and not isinstance(error, ConnectionRefusedError)
        for _server, _tcp, _port, error, response in errors
    )


def name_text(name: dns.name.Name) -> str:
    """A DNS name as text without its trailing dot: ``ssl`` refuses to match ``mx.example.`` (DNS-13)."""
    return name.to_text(omit_final_dot=True) if name != dns.name.root else "."


class Resolver:
    """Asks DNS questions for one run and remembers the answers.

    Concurrent callers asking the same question share one lookup; answers and failures are cached for the
    life of the object, which is one run (no module-level cache: STYLE.md).
    """

    def __init__(self, nameservers: Sequence[Nameserver] = (), *, timeout: float = 5.0) -> None:
        self._timeout = timeout
        self._cache: dict[tuple[str, str], asyncio.Future[Answer]] = {}
        self._setup_error: str | None = None
        self._in_flight = asyncio.Semaphore(_MAX_IN_FLIGHT)
        try:
            self._resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        except dns.resolver.NoResolverConfiguration:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._setup_error = "this host has no DNS resolver configured; use --resolver IP"
        if nameservers:
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(ns.ip, ns.port) for ns in nameservers
            ]
        # Each try (UDP, or TCP in the last part) waits this long at most; each phase's lifetime is given per
        # lookup. Truncated UDP answers are retried over TCP by dnspython itself (DNS-08).
        self._resolver.timeout = min(timeout * _UDP_SHARE / _UDP_TRIES, _MAX_TRY)
        self._resolver.lifetime = timeout
        self._resolver.retry_servfail = False

    @property
    def nameservers(self) -> tuple[str, ...]:
        return tuple(str(ns) for ns in self._resolver.nameservers)

    async def query(self, name: str, rdtype: str) -> Answer:
        """Ask for ``rdtype`` records at ``name`` (an A-label name); raises DnsError when there is no answer."""
        key = (name.lower().rstrip("."), rdtype.upper())
        future = self._cache.get(key)
        if future is None:
            future = asyncio.ensure_future(self._lookup(*key))
            self._cache[key] = future
        return await asyncio.shield(future)

    async def _lookup(self, name: str, rdtype: str) -> Answer:
        if self._setup_error:
            raise DnsError(self._setup_error)
        qname = dns.name.from_text(name)
        try:
            async with self._in_flight, asyncio.timeout(self._timeout + _GRACE):
                answer = await self._resolve(qname, rdtype)
        except dns.resolver.NXDOMAIN as exc:
            canonical = exc.canonical_name if exc.kwargs.get("qnames") else qname
            return Answer(name, rdtype, DnsStatus.NXDOMAIN, name_text(canonical))
        except (dns.resolver.LifetimeTimeout, TimeoutError):
            raise DnsTimeoutError(
                f"no answer for {name} {rdtype} within {self._timeout:g} s (over UDP, then TCP) from "
                f"{self._servers()}"
            ) from None
        except dns.resolver.NoNameservers as exc:
            raise DnsError(f"no usable answer for {name} {rdtype}: {exc}") from None
        except dns.exception.DNSException as exc:
            raise DnsError(f"{name} {rdtype}: {exc}") from None
        if answer.response.flags & dns.flags.TC:
            # dnspython retried over TCP and got a truncated answer there too: it is incomplete, and an
            # incomplete answer is no answer (never "no MX", DNS-08).
            raise DnsError(f"{name} {rdtype}: the answer is truncated even over TCP")
        canonical_name = name_text(answer.canonical_name)
        if answer.rrset is None:
            return Answer(name, rdtype, DnsStatus.NODATA, canonical_name)
        return Answer(name, rdtype, DnsStatus.OK, canonical_name, tuple(answer.rrset))

    async def _resolve(self, qname: dns.name.Name, rdtype: str) -> dns.resolver.Answer:
        """UDP tries for the first part of the budget, then TCP for the rest (module docstring); a server that
        closed or reset the connection instead of answering is asked again after a pause."""
        clock = asyncio.get_running_loop()
        started = clock.time()
        udp_until, until = started + self._timeout * _UDP_SHARE, started + self._timeout
        tcp, pause = False, _FIRST_PAUSE
        while True:
            try:
                return await self._resolver.resolve(
                    qname, rdtype, tcp=tcp, search=False, raise_on_no_answer=False,
                    lifetime=max((until if tcp else udp_until) - clock.time(), 0.001),
                )  # fmt: skip
            except dns.resolver.LifetimeTimeout:
                if tcp:
                    raise
                tcp = True  # every UDP answer was lost
                continue
            except dns.resolver.NoNameservers as exc:
                if not _unanswered(exc):
                    raise
            if clock.time() + pause >= until:
                raise TimeoutError  # no answer within the budget, only closed connections
            await asyncio.sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE)
            tcp = tcp or clock.time() >= udp_until

    def _servers(self) -> str:
        return ", ".join(self.nameservers) or "no nameserver"

