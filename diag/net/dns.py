"""DNS probes with dnspython: typed answers, a per-run cache, bounded time.

An answer (data, NXDOMAIN or NODATA) is a fact and is returned; anything that is not an answer (SERVFAIL,
REFUSED, no reachable nameserver, timeout) raises :class:`~diag.errors.DnsError`, so a check can never mistake
"the resolver failed" for "there is no record" (security-cases.md DNS-03).

A lookup gets the operation timeout (``--timeout``) in all, and a lost UDP datagram does not cost all of it:
authoritative servers that rate-limit (response rate limiting drops answers) and busy resolvers lose queries,
and a run over thousands of domains sends many. The first two thirds of the budget are UDP tries, each waiting
a quarter of that (two seconds at most), with dnspython's own backoff between rounds (0.1 s, doubling, at most
2 s); if every UDP answer was lost, the last third asks over TCP, which such servers answer and which gets
through where UDP is filtered (RFC 7766 §5: TCP is a full alternative to UDP, not only for truncation).
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
import dns.rdtypes.ANY.RRSIG
import dns.resolver
import dns.rrset

from diag.errors import DnsError, DnsTimeoutError
from diag.names import port_number

__all__ = ["Answer", "DnsStatus", "Nameserver", "Resolver", "name_text", "parse_nameserver"]

# Seconds granted beyond the lookup lifetime before the outer deadline cancels it: dnspython's own lifetime
# check happens between tries and can overrun (STYLE.md rule 6).
_GRACE = 1.0
# Questions on the wire at once: a domain with hundreds of MX hosts must not flood the nameserver with a burst
# of A and AAAA queries (UDP answers get dropped, and each costs a retry).
_MAX_IN_FLIGHT = 32
# How a lookup spends its budget (module docstring): this share on UDP tries, the rest on TCP.
_UDP_SHARE = 2 / 3
# UDP tries that fit into the UDP share when none is answered (dnspython's backoff comes on top); each try
# waits at most _MAX_TRY, dnspython's own default per-try timeout.
_UDP_TRIES = 4
_MAX_TRY = 2.0
# EDNS payload for DNSSEC questions: the DNS Flag Day 2020 size, which avoids IP fragmentation; larger answers
# come over TCP (dnspython retries a truncated answer there).
_DNSSEC_PAYLOAD = 1232


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
        dnssec: asked with the DO bit (RFC 4035 §3.2.1), so the fields below are filled in.
        signatures: the RRSIGs covering ``records`` (at ``canonical_name``).
        authority: the authority section: for a negative answer, the SOA, the NSEC/NSEC3 records denying the
            name or type, and their RRSIGs (RFC 4035 §3.1.3).
        authenticated: the AD bit: the resolver says it validated the answer. Only worth anything from a
            validating resolver the operator trusts, over a path nobody can tamper with (security-cases.md
            DNS-19, RD-27).
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


class Resolver:
    """Asks DNS questions for one run and remembers the answers.

    Concurrent callers asking the same question share one lookup; answers and failures are cached for the
    life of the object, which is one run (no module-level cache: STYLE.md).

    The cache is per (name, type). A DNSSEC question (``dnssec=True``: the DO bit, RRSIGs and denial records
    kept) is answered from the cache only by an answer that was itself asked with DO; it otherwise asks again
    and its answer, a superset of the plain one, replaces the cached entry for both kinds of question.
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
        # The same servers asked with DO (and AD, RFC 6840 §5.7), for DNSSEC questions only: RRSIGs make every
        # answer larger, and the mail checks do not need them.
        self._dnssec_resolver = dns.asyncresolver.Resolver(configure=False)
        self._dnssec_resolver.nameservers = self._resolver.nameservers
        self._dnssec_resolver.timeout = self._resolver.timeout
        self._dnssec_resolver.lifetime = timeout
        self._dnssec_resolver.retry_servfail = False
        self._dnssec_resolver.use_edns(0, dns.flags.DO, _DNSSEC_PAYLOAD)
        self._dnssec_resolver.flags = dns.flags.RD | dns.flags.AD

    @property
    def nameservers(self) -> tuple[str, ...]:
        return tuple(str(ns) for ns in self._resolver.nameservers)

    async def query(self, name: str, rdtype: str, *, dnssec: bool = False) -> Answer:
        """Ask for ``rdtype`` records at ``name`` (an A-label name); raises DnsError when there is no answer.

        ``dnssec``: ask with the DO bit and keep what DNSSEC validation needs (see :class:`Answer`).
        """
        key = (name.lower().rstrip("."), rdtype.upper())
        future = self._cache.get(key)
        if future is not None and dnssec and not await self._has_dnssec(future):
            future = None
        if future is None:
            future = asyncio.ensure_future(self._lookup(*key, dnssec=dnssec))
            self._cache[key] = future
        return await asyncio.shield(future)

    @staticmethod
    async def _has_dnssec(future: asyncio.Future[Answer]) -> bool:
        try:
            return (await asyncio.shield(future)).dnssec
        except DnsError:
            return False  # a failed plain lookup does not stand in for a DNSSEC one

    async def _lookup(self, name: str, rdtype: str, *, dnssec: bool = False) -> Answer:
        if self._setup_error:
            raise DnsError(self._setup_error)
        qname = dns.name.from_text(name)
        resolver = self._dnssec_resolver if dnssec else self._resolver
        try:
            # The budget starts when the question goes on the wire: waiting for a slot among the questions in
            # flight is local queueing, and a run with many checks per domain must not time out in it.
            async with self._in_flight:
                async with asyncio.timeout(self._timeout + _GRACE):
                    answer = await self._resolve(resolver, qname, rdtype)
        except dns.resolver.NXDOMAIN as exc:
            canonical = exc.canonical_name if exc.kwargs.get("qnames") else qname
            if dnssec:
                responses: dict[dns.name.Name, dns.message.Message] = exc.responses()  # type: ignore[no-untyped-call]
                response = responses.get(canonical) or next(iter(responses.values()), None)
                return Answer(
                    name, rdtype, DnsStatus.NXDOMAIN, name_text(canonical), dnssec=True,
                    authority=tuple(response.authority) if response is not None else (),
                    authenticated=response is not None and bool(response.flags & dns.flags.AD),
                )  # fmt: skip
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
        if dnssec:
            return _dnssec_answer(name, rdtype, canonical_name, answer)
        if answer.rrset is None:
            return Answer(name, rdtype, DnsStatus.NODATA, canonical_name)
        return Answer(name, rdtype, DnsStatus.OK, canonical_name, tuple(answer.rrset))

    async def _resolve(
        self, resolver: dns.asyncresolver.Resolver, qname: dns.name.Name, rdtype: str
    ) -> dns.resolver.Answer:
        """UDP tries for the first part of the budget, then TCP for the rest (module docstring)."""
        clock = asyncio.get_running_loop()
        started = clock.time()
        try:
            return await resolver.resolve(
                qname, rdtype, search=False, raise_on_no_answer=False, lifetime=self._timeout * _UDP_SHARE
            )
        except dns.resolver.LifetimeTimeout:
            pass  # every UDP answer was lost
        remaining = self._timeout - (clock.time() - started)
        return await resolver.resolve(
            qname, rdtype, tcp=True, search=False, raise_on_no_answer=False, lifetime=max(remaining, 0.001)
        )

    def _servers(self) -> str:
        return ", ".join(self.nameservers) or "no nameserver"


def _dnssec_answer(name: str, rdtype: str, canonical_name: str, answer: dns.resolver.Answer) -> Answer:
    response = answer.response
    authenticated = bool(response.flags & dns.flags.AD)
    if answer.rrset is None:
        return Answer(
            name, rdtype, DnsStatus.NODATA, canonical_name, dnssec=True, authority=tuple(response.authority),
            authenticated=authenticated,
        )  # fmt: skip
    covering = response.get_rrset(
        response.answer, answer.canonical_name, answer.rrset.rdclass, dns.rdatatype.RRSIG, answer.rrset.rdtype
    )
    signatures = tuple(r for r in covering or () if isinstance(r, dns.rdtypes.ANY.RRSIG.RRSIG))
    return Answer(
        name, rdtype, DnsStatus.OK, canonical_name, tuple(answer.rrset), dnssec=True, signatures=signatures,
        authenticated=authenticated,
    )  # fmt: skip

