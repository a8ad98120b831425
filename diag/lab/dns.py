"""The embedded lab's authoritative DNS server, on loopback, over UDP and TCP.

Zones are built from data (:class:`ZoneData`, one :class:`dns.versioned.Zone` per apex) and served by
:class:`DnsServer` with dnspython's wire format, so that real resolvers (dnspython's stub resolver in
particular) see a real authoritative server::

    data = ZoneData()
    data.add_zone("contoso.com")
    data.add("contoso.com", "MX", "0 contoso-com.mail.protection.outlook.com.")
    server = DnsServer(data)
    port = await server.start("127.0.53.1")
    ...
    await server.close()

The server reads the data at query time: records and behaviours changed after :meth:`DnsServer.start`
take effect on the next query (each change is one committed version of its zone).

Answers follow RFC 1034 §4.3.2 for an authoritative server, with these lab choices:

* Responses are minimal: no NS records in the authority section of positive answers and no additional
  section processing (no glue for MX targets). Negative answers carry the zone SOA (RFC 2308).
* A CNAME chain is followed through every zone this server holds, for at most ``MAX_CHAIN`` CNAMEs; a
  loop or an overlong chain ends the answer with the CNAMEs collected so far (NOERROR). A chain leaving
  the served zones ends likewise, as a real authoritative server would.
* A behaviour (:class:`Behaviour`) also applies when a CNAME chain reaches a name under it: the client
  then sees what a recursive resolver would show it (SERVFAIL, or no answer at all).
* Query type ANY is answered with every rrset at the name (RFC 8482 allows this or a minimal answer;
  the full answer is more useful in a lab and deterministic). Zone transfers (AXFR, IXFR) are REFUSED,
  other meta-queries get NOTIMP, classes other than IN are REFUSED.
* Wildcards (RFC 4592): a name that does not exist gets the records of ``*.<closest encloser>`` if that
  exists (not for ANY). No delegations (an NS rrset below an apex is served as plain data: serve a
  child zone with :meth:`ZoneData.add_zone` instead), except that a DS question for a zone apex with a parent
  zone here is answered by the parent (RFC 4035 §3.1.4.1): the DS set of a signed child, or NODATA.
* DNSSEC for the zones signed with :meth:`ZoneData.sign_zone`, to a query with the DO bit (RFC 3225): every
  rrset of the answer gets an RRSIG made at query time (one ECDSA P-256 key per zone, KSK and ZSK in one), and a
  negative answer gets the signed SOA and the NSEC record that matches the name (NODATA) or covers it
  (NXDOMAIN, NODATA at an empty non-terminal) from the zone's NSEC chain, computed from its names at query time
  (RFC 4035 §3.1.3), with the NSEC covering (or, for a wildcard NODATA, matching) the wildcard at the closest
  encloser; an answer synthesised from a wildcard gets the wildcard's RRSIG and the NSEC covering the name. A
  zone signed with ``nsec3`` gets an NSEC3 chain instead (hashed owners of its names and empty non-terminals,
  next hashed owners, type bitmaps, NSEC3PARAM at the apex; with opt-out, unsigned delegations are left out)
  and the RFC 5155 §7.2 proofs: the NSEC3 matching the name, or the closest encloser's, the one covering the
  next closer name and the one covering the wildcard. The server never sets AD: it is authoritative, not a
  validating resolver.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import collections
import contextlib
import enum
import errno
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import cast

import dns.dnssectypes
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.node
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.DNSKEY
import dns.rdtypes.ANY.NSEC3PARAM
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.SPF
import dns.rdtypes.ANY.TXT
import dns.rdtypes.dnskeybase
import dns.rrset
import dns.transaction
import dns.versioned
from cryptography.hazmat.primitives.asymmetric import ec

from diag.errors import LabError
from diag.frozen import frozen
from diag.net.dnssec import dnssec

__all__ = [
    "DEFAULT_TTL",
    "MAX_CHAIN",
    "Behaviour",
    "DnsServer",
    "Transport",
    "ZoneData",
]

DEFAULT_TTL = 300
"""TTL of records added without one, and of the synthesized SOA and NS rrsets."""

MAX_CHAIN = 16
"""Most CNAMEs followed in one answer."""

_NEGATIVE_TTL = 60  # SOA MINIMUM of synthesized SOAs: the negative-caching TTL (RFC 2308 §4)
_MAX_TTL = 2**31 - 1  # RFC 2181 §8
_HEADER_LEN = 12  # RFC 1035 §4.1.1
_PLAIN_UDP_LIMIT = 512  # RFC 1035 §4.2.1
_MAX_UDP_PAYLOAD = 4096  # cap on the client's EDNS payload size, also advertised (RFC 6891 §6.2.5)
_MAX_TCP_MESSAGE = 65535  # RFC 7766 §8: two-byte length prefix
_TXT_CHUNK = 255  # RFC 1035 §3.3: a <character-string> holds at most 255 octets
_OPCODE_MASK = 0x7800  # RFC 1035 §4.1.1: the four opcode bits of the header flags
_BIND_ATTEMPTS = 32
_START_TIMEOUT = 5.0
_CLOSE_TIMEOUT = 2.0
# RFC 4035 §2.5 lets DNSSEC records sit beside a CNAME; nothing else may (RFC 1034 §3.6.2, RFC 2181 §10.1).
_CNAME_COMPANIONS = frozenset({dns.rdatatype.RRSIG, dns.rdatatype.NSEC})
_TEXT_TYPES = frozenset({dns.rdatatype.TXT, dns.rdatatype.SPF})
_TRANSFER_TYPES = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})
_SIGNATURE_VALIDITY = 7 * 86400  # seconds an RRSIG made at query time is valid, and was valid before it
_EXPIRED_BY = 86400  # seconds before the query that an expired zone's signatures ran out


class Behaviour(enum.StrEnum):
    """How the server treats queries at or below a name."""

    ANSWER = "answer"
    """Normal authoritative answers."""
    SERVFAIL = "servfail"
    """Answer every query at or below the name with SERVFAIL."""
    DROP = "drop"
    """Never answer queries at or below the name (a resolver times out)."""
    TRUNCATE = "truncate"
    """Answer with an empty reply flagged truncated (TC), over TCP too: a broken server or middlebox."""
    LOSE_UDP = "lose-udp"
    """Drop the first ``udp_losses`` (a :class:`DnsServer` argument, 2 by default) UDP queries for each name and
    type at or below the name, then answer normally; TCP is answered at once: a rate-limiting authoritative
    server (response rate limiting drops UDP answers) or a lossy path."""
    TCP_ONLY = "tcp-only"
    """Never answer over UDP; answer over TCP: UDP to the server is filtered, or it rate-limits every datagram."""
    SLIP_UDP = "slip-udp"
    """Answer every UDP query with an empty reply flagged truncated (TC), TCP normally: a server whose response
    rate limiting is over the limit for this client and "slips" (NSD's and BIND's ``rrl-slip`` 1)."""
    SLOW_AAAA = "slow-aaaa"
    """Answer AAAA queries at or below the name ``slow_delay`` seconds late (a :class:`DnsServer` argument, 0.4 s
    by default), other types at once: the IPv6 lookup of a host is slower than its IPv4 one (another path,
    another server, a server that mishandles AAAA queries, RFC 4074)."""
    SMALL_UDP = "small-udp"
    """Answer over UDP in 512 octets at most, whatever EDNS payload the client offers (BIND's ``max-udp-size``,
    NSD's ``ipv4-edns-size``): a longer answer is truncated, and the client asks again over TCP."""
    NO_EDNS = "no-edns"
    """Answer a query carrying an OPT record (EDNS, RFC 6891) for a name at or below the name with FORMERR and no
    OPT record, as a server that does not implement EDNS must (RFC 6891 §7); answer a query without one normally
    (which, without the DO bit, carries no DNSSEC records): an old server or a middlebox that strips EDNS. The DS
    question at a zone apex whose parent zone is served here is the parent's servers' to answer, and is answered
    normally."""


# Behaviours that decide only whether, when or how a query is answered; the answer itself is the normal one.
_TRANSPORT_BEHAVIOURS = frozenset(
    {Behaviour.LOSE_UDP, Behaviour.TCP_ONLY, Behaviour.SLIP_UDP, Behaviour.SLOW_AAAA, Behaviour.SMALL_UDP,
     Behaviour.NO_EDNS}
)


class Transport(enum.StrEnum):
    """The transport a query came in on; the keys of :attr:`DnsServer.queries`."""

    UDP = "udp"
    TCP = "tcp"


def _parse_name(text: str) -> dns.name.Name:
    """Parse an absolute or relative-to-root name in A-label form, or raise ValueError."""
    if not text.isascii():
        raise ValueError(f"{text!r}: give internationalized names in A-label (xn--) form")
    try:
        return dns.name.from_text(text, origin=dns.name.root)
    except dns.exception.DNSException as exc:
        raise ValueError(f"{text!r} is not a valid domain name: {exc}") from exc


def _ancestors(name: dns.name.Name) -> Iterator[dns.name.Name]:
    """Yield *name* (absolute) and each of its parents up to and including the root."""
    while True:
        yield name
        if name == dns.name.root:
            return
        name = name.parent()


def _prefixed(label: str, apex: dns.name.Name) -> dns.name.Name:
    """``label.apex``, or the apex itself when the longer name would be too long."""
    try:
        return dns.name.Name((label,)).concatenate(apex)
    except dns.name.NameTooLong:
        return apex


def _text_rdata(rdtype: dns.rdatatype.RdataType, text: str) -> dns.rdata.Rdata:
    """A TXT or SPF rdata holding *text* literally, split into <character-string>s of 255 octets."""
    raw = text.encode()
    chunks = [raw[i : i + _TXT_CHUNK] for i in range(0, len(raw), _TXT_CHUNK)] or [b""]
    if rdtype == dns.rdatatype.SPF:
        return dns.rdtypes.ANY.SPF.SPF(dns.rdataclass.IN, rdtype, chunks)
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, rdtype, chunks)


def _parse_rdata(rdtype: dns.rdatatype.RdataType, text: str) -> dns.rdata.Rdata:
    """Parse one rdata from presentation format (TXT/SPF: literal unless quoted), or raise ValueError."""
    if rdtype in _TEXT_TYPES and not text.lstrip().startswith('"'):
        return _text_rdata(rdtype, text)
    if rdtype not in _TEXT_TYPES and not text.isascii():
        raise ValueError(f"{text!r}: give internationalized names in A-label (xn--) form")
    try:
        # relativize=False: names without a trailing dot are relative to the root, like owner names.
        return dns.rdata.from_text(dns.rdataclass.IN, rdtype, text, origin=dns.name.root, relativize=False)
    except (dns.exception.DNSException, ValueError, TypeError) as exc:
        raise ValueError(f"invalid {dns.rdatatype.to_text(rdtype)} rdata {text!r}: {exc}") from exc


@frozen
class _Outcome:
    """The result of looking a question up in the data."""

    behaviour: Behaviour = Behaviour.ANSWER
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR
    authoritative: bool = True
    answer: tuple[dns.rrset.RRset, ...] = ()
    authority: tuple[dns.rrset.RRset, ...] = ()
    wildcards: tuple[tuple[dns.name.Name, dns.name.Name], ...] = ()
    """(name, wildcard) for each answer rrset synthesised from a wildcard (RFC 4592)."""


@frozen
class _ZoneKey:
    """A signed zone's key and how its signatures are made."""

    private: ec.EllipticCurvePrivateKey
    dnskey: dns.rdtypes.ANY.DNSKEY.DNSKEY
    expired: bool
    nsec3: dns.rdtypes.ANY.NSEC3PARAM.NSEC3PARAM | None = None
    """NSEC3 instead of NSEC, with these parameters (RFC 5155)."""
    opt_out: bool = False
    """Unsigned delegations get no NSEC3 and the NSEC3 records carry the opt-out flag (RFC 5155 §6)."""
    broken_denial: bool = False
    """Denials carry the record after the one that covers the name: a proof that proves nothing."""
    forged: bool = False
    """Every signature but the DNSKEY rrset's fails to verify: the data was changed after signing."""


@frozen
class _Reply:
    """What to send back for one received message."""

    wire: bytes | None = None
    """The reply, or None to send nothing."""
    keep_open: bool = True
    """False when the input was not a well-formed query: a TCP connection is then closed."""
    delay: float = 0.0
    """Seconds to wait before sending it."""


class ZoneData:
    """Authoritative zones and their records, built from data: one :class:`dns.versioned.Zone` per apex.

    Names are absolute or relative-to-root text, compared case-insensitively; internationalized names are
    given in A-label form. Rdatas are in zone-file presentation format, names in them relative to the root.
    TXT and SPF rdatas are taken literally (one string, split into 255-octet character-strings) unless they
    start with a double quote, in which case they are parsed as presentation format (``'"a" "b"'``).
    A name belongs to the zone of the most specific apex at or above it; adding a zone below another moves the
    records at and below its apex into it.
    """

    __slots__ = ("_behaviours", "_chains", "_hashed", "_keys", "_signatures", "_zones")

    def __init__(self) -> None:
        """Start with no zones."""
        self._zones: dict[dns.name.Name, dns.versioned.Zone] = {}
        self._behaviours: dict[dns.name.Name, Behaviour] = {}
        self._keys: dict[dns.name.Name, _ZoneKey] = {}
        # RRSIGs made, by zone, day and the signed rrset's text: signing is the lab's costliest work per query.
        self._signatures: dict[tuple[dns.name.Name, int, str], dns.rrset.RRset] = {}
        # Each signed zone's NSEC chain (its names in canonical order), made on the first negative answer after a
        # change: sorting a zone's names for every negative answer would cost more than the answer itself.
        self._chains: dict[dns.name.Name, list[dns.name.Name]] = {}
        # An NSEC3-signed zone's chain, (hashed owner, name) in hash order, made and dropped like the NSEC chain.
        self._hashed: dict[dns.name.Name, list[tuple[str, dns.name.Name]]] = {}

    def add_zone(self, apex: str) -> None:
        """Serve *apex* authoritatively, with a synthesized SOA and NS rrset. Adding it again does nothing.

        Raises ValueError if the name is invalid or holds a CNAME.
        """
        name = _parse_name(apex)
        if name in self._zones:
            return
        parent = self._zone_of(name)
        moved = self._zones[parent].get_node(name) if parent is not None else None
        if moved is not None and moved.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME) is not None:
            raise ValueError(f"{name}: a zone apex cannot hold a CNAME (RFC 1034 §3.6.2)")
        zone = dns.versioned.Zone(name, relativize=False)
        ns_name = _prefixed("ns1", name)
        soa = f"{ns_name} {_prefixed('hostmaster', name)} 1 3600 600 86400 {_NEGATIVE_TTL}"
        with zone.writer() as txn:
            if parent is not None:
                # The parent zone's records at and below the new apex are the new zone's now.
                with self._zones[parent].writer() as parent_txn:
                    for owner in [n for n in parent_txn.iterate_names() if n.is_subdomain(name)]:
                        node = parent_txn.get_node(owner)
                        assert node is not None
                        for rdataset in node:
                            txn.add(owner, rdataset)
                        parent_txn.delete(owner)
            txn.add(name, DEFAULT_TTL, dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SOA, soa))
            txn.add(name, DEFAULT_TTL, dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.NS, ns_name.to_text()))
        self._zones[name] = zone
        self._chains.clear()
        self._hashed.clear()

    def add(self, name: str, rdtype: str, *rdatas: str, ttl: int = DEFAULT_TTL) -> None:
        """Add records of type *rdtype* at *name*, e.g. ``add("contoso.com", "MX", "0 mx.contoso.com.")``.

        Records of the same name and type form one rrset, whose TTL is the smallest given. An SOA added at
        an apex replaces the synthesized one; NS records at an apex join the synthesized ``ns1`` record.

        Raises ValueError if the name is not under an added zone apex, if the type, an rdata or the TTL is
        invalid, or if a CNAME would coexist with other data at the name (RFC 1034 §3.6.2).
        """
        self.add_all([(name, rdtype, rdatas)], ttl=ttl)

    def add_all(self, records: Iterable[tuple[str, str, Sequence[str]]], *, ttl: int = DEFAULT_TTL) -> None:
        """Add each ``(name, rdtype, rdatas)`` of *records* as :meth:`add` does, in one version per zone: adding
        a zone's records one by one commits a version each, which copies the zone's names each time.

        All or nothing: on ValueError (see :meth:`add`), no record of *records* is added.
        """
        prepared = [self._prepare(name, rdtype, rdatas, ttl) for name, rdtype, rdatas in records]
        writers: dict[dns.name.Name, dns.transaction.Transaction] = {}
        with contextlib.ExitStack() as stack:  # an exception rolls back every zone's transaction
            for owner, apex, rtype, parsed in prepared:
                txn = writers.get(apex)
                if txn is None:
                    txn = writers[apex] = stack.enter_context(self._zones[apex].writer())
                _check_coexistence(owner, apex, rtype, parsed, txn.get_node(owner))
                rdataset = dns.rdataset.from_rdata_list(ttl, parsed)
                # dnspython would replace other data by a CNAME (and an SOA by another) silently: checked above.
                if rtype == dns.rdatatype.SOA:
                    txn.replace(owner, rdataset)
                else:
                    txn.add(owner, rdataset)
        for apex in writers:
            self._chains.pop(apex, None)
            self._hashed.pop(apex, None)

    def _prepare(
        self, name: str, rdtype: str, rdatas: Sequence[str], ttl: int
    ) -> tuple[dns.name.Name, dns.name.Name, dns.rdatatype.RdataType, list[dns.rdata.Rdata]]:
        """The owner, its zone, the type and the parsed rdatas of records to add; raises ValueError (add())."""
        owner = _parse_name(name)
        apex = self._zone_of(owner)
        if apex is None:
            raise ValueError(f"{owner} is not under any zone apex; call add_zone() first")
        try:
            rtype = dns.rdatatype.RdataType.make(rdtype)
        except (dns.exception.DNSException, ValueError) as exc:
            raise ValueError(f"unknown record type {rdtype!r}") from exc
        if rtype == dns.rdatatype.NONE or dns.rdatatype.is_metatype(rtype):
            raise ValueError(f"{rdtype!r} is a meta type, not a record type")
        if not rdatas:
            raise ValueError("give at least one rdata")
        if isinstance(ttl, bool) or not 0 <= ttl <= _MAX_TTL:
            raise ValueError(f"TTL {ttl!r} is not in 0..{_MAX_TTL} (RFC 2181 §8)")
        return owner, apex, rtype, [_parse_rdata(rtype, text) for text in rdatas]

    def sign_zone(
        self, apex: str, *, expired: bool = False, nsec3: str | None = None, opt_out: bool = False,
        broken_denial: bool = False, forged: bool = False,
    ) -> str:
        """Sign the zone at *apex* (added before) with a new key; returns its DNSKEY record (presentation
        format), the trust anchor for the zone. Its DNSKEY rrset is published at the apex, and a parent zone
        served here answers the DS question for it.

        *expired*: every signature of the zone ran out a day before the query (a zone whose re-signing
        stopped), so validators find it bogus. *nsec3*: deny with NSEC3 instead of NSEC, with these NSEC3PARAM
        parameters (``"1 0 0 -"``: SHA-1, no iterations, no salt, as RFC 9276 §3.1 advises), published at the
        apex; *opt_out*: leave unsigned delegations out of the NSEC3 chain (RFC 5155 §6). *broken_denial*: every
        NSEC or NSEC3 that should cover a name is replaced by the next one of the chain, which does not (a
        signer bug: validators find those answers bogus). *forged*: the signature of every rrset but the DNSKEY
        rrset has a flipped byte, as if the data had been changed on the way (the zone's keys validate, its
        answers are bogus). Raises ValueError if *apex* is not a zone apex or the
        NSEC3 parameters do not parse.
        """
        name = _parse_name(apex)
        zone = self._zones.get(name)
        if zone is None:
            raise ValueError(f"{name} is not a zone apex; call add_zone() first")
        param = None
        if nsec3 is not None:
            param = cast(dns.rdtypes.ANY.NSEC3PARAM.NSEC3PARAM, _parse_rdata(dns.rdatatype.NSEC3PARAM, nsec3))
        elif opt_out:
            raise ValueError("opt-out is an NSEC3 feature: give nsec3 parameters too")
        private = ec.generate_private_key(ec.SECP256R1())
        dnskey = dnssec.make_dnskey(
            private.public_key(), dns.dnssectypes.Algorithm.ECDSAP256SHA256, flags=dns.rdtypes.dnskeybase.Flag.ZONE
            | dns.rdtypes.dnskeybase.Flag.SEP,
        )  # fmt: skip
        self._keys[name] = _ZoneKey(private, dnskey, expired, param, opt_out, broken_denial, forged)
        with zone.writer() as txn:
            txn.replace(name, dns.rdataset.from_rdata(DEFAULT_TTL, dnskey))
            if param is not None:
                txn.replace(name, dns.rdataset.from_rdata(0, param))  # RFC 5155 §4: its TTL is 0
        self._chains.clear()  # the parent's NSEC at the cut now lists DS
        self._hashed.clear()
        return dnskey.to_text()

    def set_behaviour(self, name: str, behaviour: Behaviour) -> None:
        """Apply *behaviour* to queries at or below *name*; the most specific name set wins.

        The name need not be under a zone. Raises ValueError if the name is invalid.
        """
        self._behaviours[_parse_name(name)] = Behaviour(behaviour)

    def _zone_of(self, name: dns.name.Name) -> dns.name.Name | None:
        """The most specific apex at or above *name*, or None."""
        for ancestor in _ancestors(name):
            if ancestor in self._zones:
                return ancestor
        return None

    def _behaviour_at(self, name: dns.name.Name) -> Behaviour:
        """The behaviour of the most specific name set at or above *name*."""
        for ancestor in _ancestors(name):
            behaviour = self._behaviours.get(ancestor)
            if behaviour is not None:
                return behaviour
        return Behaviour.ANSWER

    def _exists(self, zone: dns.versioned.Zone, name: dns.name.Name) -> bool:
        """Whether *name*, without data of its own, is an empty non-terminal: a name with data or a zone apex
        lies below it (RFC 8020: it exists, so it gets NODATA, not NXDOMAIN)."""
        return any(other.is_subdomain(name) for other in (*zone.nodes, *self._zones))

    def _encloser(self, apex: dns.name.Name, name: dns.name.Name) -> dns.name.Name:
        """The closest encloser of *name*, which does not exist: its nearest existing ancestor (RFC 4592 §3.3.1)."""
        zone = self._zones[apex]
        for ancestor in _ancestors(name.parent()):
            if ancestor == apex or zone.get_node(ancestor) is not None or self._exists(zone, ancestor):
                return ancestor
        return apex

    def _negative_soa(self, apex: dns.name.Name) -> dns.rrset.RRset:
        """The zone's SOA for a negative answer, its TTL lowered to the SOA MINIMUM (RFC 2308 §3)."""
        soa = self._zones[apex].find_rdataset(apex, dns.rdatatype.SOA)
        rdata = cast(dns.rdtypes.ANY.SOA.SOA, soa[0])
        return dns.rrset.from_rdata(apex, min(soa.ttl, rdata.minimum), rdata)

    def _resolve(self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType) -> _Outcome:
        """Answer *qname*/*qtype* (class IN) like an authoritative server (RFC 1034 §4.3.2)."""
        answer: list[dns.rrset.RRset] = []
        wildcards: list[tuple[dns.name.Name, dns.name.Name]] = []
        seen: set[dns.name.Name] = set()
        name = qname
        while True:
            behaviour = self._behaviour_at(name)
            if behaviour != Behaviour.ANSWER and behaviour not in _TRANSPORT_BEHAVIOURS:
                return _Outcome(behaviour=behaviour, rcode=dns.rcode.SERVFAIL, authoritative=False)
            apex = self._zone_of(name)
            if qtype == dns.rdatatype.DS and apex == name and not answer:
                parent = self._parent_zone(name)
                if parent is not None:  # RFC 4035 §3.1.4.1: the parent side of the zone cut answers
                    ds = self._ds_rrset(name)
                    if ds is None:
                        return _Outcome(authority=(self._negative_soa(parent),))
                    return _Outcome(answer=(ds,))
            if apex is None:
                if not answer:
                    return _Outcome(rcode=dns.rcode.REFUSED, authoritative=False)
                # The chain left our authority: the client follows it elsewhere (§4.3.2 step 3.a).
                return _Outcome(answer=tuple(answer))
            zone = self._zones[apex]
            node = zone.get_node(name)
            if node is None and not self._exists(zone, name):
                source = _wildcard(self._encloser(apex, name))
                node = zone.get_node(source) if qtype != dns.rdatatype.ANY and source.is_wild() else None
                if node is None:
                    # RFC 6604: with a CNAME chain, the rcode describes the last name.
                    return _Outcome(rcode=dns.rcode.NXDOMAIN, answer=tuple(answer),
                                    authority=(self._negative_soa(apex),), wildcards=tuple(wildcards))  # fmt: skip
                wildcards.append((name, source))  # RFC 4592 §3.3.1: the wildcard's data, at the name asked
            rdatasets: Iterable[dns.rdataset.Rdataset] = node or ()
            if qtype == dns.rdatatype.ANY and node:
                return _Outcome(answer=(*answer, *(_rrset(name, r) for r in sorted(rdatasets, key=_by_type))))
            found = {rdataset.rdtype: rdataset for rdataset in rdatasets}
            if qtype in found:
                return _Outcome(answer=(*answer, _rrset(name, found[qtype])), wildcards=tuple(wildcards))
            cname = found.get(dns.rdatatype.CNAME)
            if cname is None:  # NODATA
                return _Outcome(answer=tuple(answer), authority=(self._negative_soa(apex),),
                                wildcards=tuple(wildcards))  # fmt: skip
            answer.append(_rrset(name, cname))
            seen.add(name)
            name = cast(dns.rdtypes.ANY.CNAME.CNAME, cname[0]).target
            if name in seen or len(answer) >= MAX_CHAIN:
                return _Outcome(answer=tuple(answer))

    # --- DNSSEC (module docstring) ---------------------------------------------------------------------------

    def _parent_zone(self, apex: dns.name.Name) -> dns.name.Name | None:
        return self._zone_of(apex.parent()) if apex != dns.name.root else None

    def _answered_by_parent(self, name: dns.name.Name, qtype: dns.rdatatype.RdataType) -> bool:
        """Is this the DS question at the apex of a zone whose parent zone is served here (RFC 4035 §3.1.4.1)?"""
        return qtype == dns.rdatatype.DS and name in self._zones and self._parent_zone(name) is not None

    def _ds_rrset(self, child: dns.name.Name) -> dns.rrset.RRset | None:
        key = self._keys.get(child)
        if key is None:
            return None
        ds = dnssec.make_ds(child, key.dnskey, dns.dnssectypes.DSDigest.SHA256)
        return dns.rrset.from_rdata(child, DEFAULT_TTL, ds)

    def _signer_of(self, rrset: dns.rrset.RRset) -> dns.name.Name | None:
        """The zone whose key signs *rrset*: the parent for a DS set at a cut, else the owner's zone."""
        zone = self._zone_of(rrset.name)
        if rrset.rdtype == dns.rdatatype.DS and zone == rrset.name:
            zone = self._parent_zone(rrset.name)
        return zone

    def _rrsig(self, rrset: dns.rrset.RRset, zone: dns.name.Name, now: float) -> dns.rrset.RRset:
        cache_key = (zone, int(now // 86400), rrset.to_text())
        cached = self._signatures.get(cache_key)
        if cached is None:
            cached = self._signatures[cache_key] = self._sign_rrset(rrset, zone, now)
        return cached

    def _sign_rrset(self, rrset: dns.rrset.RRset, zone: dns.name.Name, now: float) -> dns.rrset.RRset:
        key = self._keys[zone]
        if key.expired:
            inception, expiration = now - 2 * _SIGNATURE_VALIDITY, now - _EXPIRED_BY
        else:
            inception, expiration = now - _SIGNATURE_VALIDITY, now + _SIGNATURE_VALIDITY
        rrsig = dnssec.sign(rrset, key.private, zone, key.dnskey, inception=inception, expiration=expiration)
        if key.forged and rrset.rdtype != dns.rdatatype.DNSKEY:
            forged = rrsig.replace(signature=bytes([rrsig.signature[0] ^ 0xFF]) + rrsig.signature[1:])
            return dns.rrset.from_rdata(rrset.name, rrset.ttl, forged)
        return dns.rrset.from_rdata(rrset.name, rrset.ttl, rrsig)

    def _chain(self, apex: dns.name.Name) -> list[dns.name.Name]:
        """The zone's owner names in canonical order (RFC 4034 §6.1): its names with data and the cuts to the
        child zones directly below it (RFC 4035 §2.3: an NSEC at each delegation point)."""
        chain = self._chains.get(apex)
        if chain is None:
            cuts = [child for child in self._zones if child != apex and self._parent_zone(child) == apex]
            chain = self._chains[apex] = sorted({*self._zones[apex].nodes, *cuts})
        return chain

    def _types_at(self, apex: dns.name.Name, owner: dns.name.Name) -> set[dns.rdatatype.RdataType]:
        """The types at *owner* in the zone: at a delegation point, only the cut's (RFC 4035 §2.3)."""
        if owner != apex and owner in self._zones:
            return {dns.rdatatype.NS} | ({dns.rdatatype.DS} if owner in self._keys else set())
        return {rdataset.rdtype for rdataset in self._zones[apex].get_node(owner) or ()}

    def _nsec(self, apex: dns.name.Name, name: dns.name.Name) -> dns.rrset.RRset:
        """The NSEC at *name* if it owns one, else the one covering it (with a broken denial: the one after)."""
        chain = self._chain(apex)
        index = bisect.bisect_right(chain, name) - 1
        owner = chain[index]
        following = chain[(index + 1) % len(chain)]
        if self._keys[apex].broken_denial and owner != name:
            following = dns.name.Name((b"\x00",)).concatenate(owner)  # the owner's successor: a span of nothing
        types = self._types_at(apex, owner) | {dns.rdatatype.RRSIG, dns.rdatatype.NSEC}
        text = " ".join([following.to_text(), *sorted(dns.rdatatype.to_text(t) for t in types)])
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.NSEC, text)
        return dns.rrset.from_rdata(owner, _NEGATIVE_TTL, rdata)

    def _hashed_chain(self, apex: dns.name.Name) -> list[tuple[str, dns.name.Name]]:
        """The NSEC3 chain: every name of the NSEC chain and every empty non-terminal (RFC 5155 §7.1), less the
        unsigned delegations of an opt-out zone (§6), by hash."""
        chain = self._hashed.get(apex)
        if chain is None:
            key = self._keys[apex]
            assert key.nsec3 is not None
            names = set(self._chain(apex))
            if key.opt_out:
                names -= {n for n in names if n != apex and n in self._zones and n not in self._keys}
            for name in list(names):
                while name != apex:
                    name = name.parent()
                    names.add(name)
            param = key.nsec3
            chain = self._hashed[apex] = sorted(
                (dnssec.nsec3_hash(n, param.salt, param.iterations, param.algorithm).lower(), n) for n in names
            )
        return chain

    def _nsec3(self, apex: dns.name.Name, name: dns.name.Name, *, match: bool) -> dns.rrset.RRset:
        """The NSEC3 matching *name* (*match*, which must be in the chain) or covering its hash."""
        key = self._keys[apex]
        param = key.nsec3
        assert param is not None
        chain = self._hashed_chain(apex)
        hashed = dnssec.nsec3_hash(name, param.salt, param.iterations, param.algorithm).lower()
        index = bisect.bisect_right([h for h, _name in chain], hashed) - 1
        if not match and chain[index % len(chain)][0] == hashed:
            index -= 1  # a name in the chain asked to be covered: the record before it (never in the lab's use)
        owner_hash, owner = chain[index % len(chain)]
        following = chain[(index + 1) % len(chain)][0]
        if key.broken_denial and not match:  # the span ends right after the owner: it covers no name
            following = base64.b32hexencode((int(base64.b32hexdecode(owner_hash.upper()).hex(), 16) + 1)
                                            .to_bytes(20, "big")).decode("ascii").lower()  # fmt: skip
        types = self._types_at(apex, owner)
        if types and not (owner != apex and owner in self._zones and owner not in self._keys):
            types.add(dns.rdatatype.RRSIG)  # an unsigned delegation's NS is not signed (RFC 4035 §2.2)
        salt = param.to_text().split()[3]
        text = " ".join([str(param.algorithm), "1" if key.opt_out else "0", str(param.iterations), salt,
                         following.upper(), *sorted(dns.rdatatype.to_text(t) for t in types)])  # fmt: skip
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.NSEC3, text)
        return dns.rrset.from_rdata(dns.name.Name((owner_hash.encode(),)).concatenate(apex), _NEGATIVE_TTL, rdata)

    def _denial(self, apex: dns.name.Name, name: dns.name.Name) -> list[dns.rrset.RRset]:
        """The NSEC or NSEC3 records proving what the zone has at *name* and what it has not: the record at an
        existing name; for a name that does not exist, the proof of that and of the wildcard at its closest
        encloser (or, when that wildcard answered, the wildcard's own record) (RFC 4035 §3.1.3, RFC 5155 §7.2)."""
        zone = self._zones[apex]
        exists = zone.get_node(name) is not None or self._exists(zone, name)
        if self._keys[apex].nsec3 is None:
            if exists:
                return [self._nsec(apex, name)]
            return [self._nsec(apex, name), self._nsec(apex, _wildcard(self._encloser(apex, name)))]
        names = {n for _hash, n in self._hashed_chain(apex)}
        if name in names:
            return [self._nsec3(apex, name, match=True)]
        # The closest provable encloser and the next closer name (RFC 5155 §7.2.1); an opt-out delegation
        # (RFC 5155 §7.2.4) is not in the chain either.
        encloser = next(a for a in _ancestors(name.parent()) if a in names)
        next_closer = dns.name.Name(name.labels[-(len(encloser.labels) + 1) :])
        # Covering records first: where one owner both matches and covers, the first one sent is kept (a broken
        # denial's short span then stands, and still matches).
        proof = [self._nsec3(apex, next_closer, match=False)]
        if not exists:
            wildcard = _wildcard(encloser)
            proof.append(self._nsec3(apex, wildcard, match=wildcard in names))
        return [*proof, self._nsec3(apex, encloser, match=True)]

    def _dnssec_records(
        self, qname: dns.name.Name, outcome: _Outcome
    ) -> tuple[list[dns.rrset.RRset], list[dns.rrset.RRset]]:
        """The RRSIGs for the answer section, and the signed denial for the authority section: of a negative
        answer, and of the name behind an answer synthesised from a wildcard (RFC 4035 §3.1.3.3)."""
        now = time.time()
        sources = dict(outcome.wildcards)
        answer: list[dns.rrset.RRset] = []
        proofs: list[tuple[dns.name.Name, dns.name.Name]] = []
        for rrset in outcome.answer:
            zone = self._signer_of(rrset)
            if zone not in self._keys:
                continue
            source = sources.get(rrset.name)
            if source is None:
                answer.append(self._rrsig(rrset, zone, now))
                continue
            # The wildcard's signature, at the name asked: its labels field tells the validator (RFC 4035 §5.3.2).
            rrsig = self._rrsig(dns.rrset.from_rdata_list(source, rrset.ttl, list(rrset)), zone, now)
            answer.append(dns.rrset.from_rdata_list(rrset.name, rrsig.ttl, list(rrsig)))
            proofs.append((zone, rrset.name))
        authority: list[dns.rrset.RRset] = []
        soas = [r for r in outcome.authority if r.rdtype == dns.rdatatype.SOA]
        if soas and soas[0].name in self._keys:
            apex = soas[0].name
            last = qname
            if outcome.answer and outcome.answer[-1].rdtype == dns.rdatatype.CNAME:
                last = cast(dns.rdtypes.ANY.CNAME.CNAME, outcome.answer[-1][0]).target
            authority.append(self._rrsig(soas[0], apex, now))
            proofs.append((apex, last))
        seen: set[tuple[dns.name.Name, int]] = set()
        for zone, name in proofs:
            for record in self._denial(zone, name):
                if (record.name, record.rdtype) not in seen:
                    seen.add((record.name, record.rdtype))
                    authority += [record, self._rrsig(record, zone, now)]
        return answer, authority


def _check_coexistence(
    owner: dns.name.Name,
    apex: dns.name.Name,
    rtype: dns.rdatatype.RdataType,
    parsed: list[dns.rdata.Rdata],
    node: dns.node.Node | None,
) -> None:
    """Raise ValueError if adding *parsed* to *node* breaks the CNAME or SOA rules."""
    present = {rdataset.rdtype: rdataset for rdataset in node or ()}
    if rtype == dns.rdatatype.SOA:
        if owner != apex:
            raise ValueError(f"{owner}: an SOA record belongs at a zone apex only")
        if len(parsed) != 1:
            raise ValueError(f"{owner}: a zone has exactly one SOA record")
    if rtype == dns.rdatatype.CNAME:
        others = [t for t in present if t != dns.rdatatype.CNAME and t not in _CNAME_COMPANIONS]
        if others:
            kinds = ", ".join(sorted(dns.rdatatype.to_text(t) for t in others))
            raise ValueError(f"{owner} has {kinds} data: a CNAME cannot coexist with it (RFC 1034 §3.6.2)")
        targets = set(parsed) | set(present.get(dns.rdatatype.CNAME, ()))
        if len(targets) > 1:
            raise ValueError(f"{owner}: a name holds at most one CNAME record (RFC 1034 §3.6.2)")
    elif rtype not in _CNAME_COMPANIONS and dns.rdatatype.CNAME in present:
        raise ValueError(f"{owner} holds a CNAME: no other data may coexist with it (RFC 1034 §3.6.2)")


def _wildcard(name: dns.name.Name) -> dns.name.Name:
    """``*.name`` (the apex itself when the longer name would be too long: then no wildcard matches)."""
    return _prefixed("*", name)


def _by_type(rdataset: dns.rdataset.Rdataset) -> int:
    return int(rdataset.rdtype)


def _rrset(name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    """*rdataset* as the rrset of owner *name* (the name as asked for, or as the CNAME chain named it)."""
    return dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset))


def _header_only(wire: bytes, rcode: dns.rcode.Rcode) -> bytes:
    """A reply of just a header echoing the id, opcode and RD of *wire*, for messages we cannot parse."""
    flags = int.from_bytes(wire[2:4], "big")
    reply = dns.message.Message(id=int.from_bytes(wire[0:2], "big"))
    # RFC 1035 §4.1.1: the opcode is copied into the response; dnspython clients check it matches.
    reply.flags = dns.flags.QR | (flags & (_OPCODE_MASK | dns.flags.RD))
    reply.set_rcode(rcode)
    return reply.to_wire()


def _udp_limit(query: dns.message.Message) -> int:
    """The largest UDP reply *query*'s sender accepts."""
    if query.edns < 0:
        return _PLAIN_UDP_LIMIT
    # RFC 6891 §6.2.5: payload sizes below 512 are treated as 512.
    return max(_PLAIN_UDP_LIMIT, min(query.payload, _MAX_UDP_PAYLOAD))


def _render(response: dns.message.Message, limit: int) -> bytes:
    """Render *response* in at most *limit* octets, else truncate it to its question with TC set."""
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        # RFC 1035 §4.2.1 / RFC 2181 §9: the client retries over TCP (RFC 7766 §5) on TC.
        response.answer = []
        response.authority = []
        response.additional = []
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit)


class _UdpProtocol(asyncio.DatagramProtocol):
    """Answers each datagram in place: lookups are in-memory, so there is nothing to wait for."""

    __slots__ = ("_handle", "_transport")

    def __init__(self, handle: Callable[[bytes, Transport], _Reply]) -> None:
        self._handle = handle
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = self._handle(data, Transport.UDP)
        if reply.wire is None:
            return
        if reply.delay > 0:
            asyncio.get_running_loop().call_later(reply.delay, self._send, reply.wire, addr)
        else:
            self._send(reply.wire, addr)

    def _send(self, wire: bytes, addr: tuple[str | int, ...]) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(wire, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from clients that went away before our reply: nothing to do.
        pass


class DnsServer:
    """An authoritative DNS server for a :class:`ZoneData`, on UDP and TCP on one port.

    ``queries`` counts the messages received per transport (``"udp"``, ``"tcp"``), for tests; ``questions``
    counts the queries per question and transport (``("mx.example", "A", "udp")``), for tests of what a client
    asks (issue 14: nothing twice).
    """

    __slots__ = (
        "_closing",
        "_data",
        "_log",
        "_lost",
        "_max_tcp_clients",
        "_port",
        "_slow_delay",
        "_tcp_clients",
        "_tcp_idle_timeout",
        "_tcp_server",
        "_udp",
        "_udp_losses",
        "connections",
        "queries",
        "questions",
    )

    def __init__(
        self, data: ZoneData, *, tcp_idle_timeout: float = 10.0, max_tcp_clients: int = 64, udp_losses: int = 2,
        slow_delay: float = 0.4,
    ) -> None:
        """Serve *data*; TCP clients idle for *tcp_idle_timeout* seconds are closed (RFC 7766 §6.2.3).

        *udp_losses* is how many UDP queries for each name and type :attr:`Behaviour.LOSE_UDP` drops, counted
        over the server's life; *slow_delay* is how late :attr:`Behaviour.SLOW_AAAA` answers.
        """
        if tcp_idle_timeout <= 0:
            raise ValueError("tcp_idle_timeout must be positive")
        if max_tcp_clients < 1:
            raise ValueError("max_tcp_clients must be at least 1")
        if udp_losses < 0:
            raise ValueError("udp_losses must not be negative")
        self._udp_losses = udp_losses
        self._slow_delay = slow_delay
        self._lost: collections.Counter[tuple[dns.name.Name, dns.rdatatype.RdataType]] = collections.Counter()
        self._data = data
        self._tcp_idle_timeout = tcp_idle_timeout
        self._max_tcp_clients = max_tcp_clients
        self._log = logging.getLogger(__name__)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.Server | None = None
        self._tcp_clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._port = 0
        self._closing = False
        self.queries: collections.Counter[str] = collections.Counter()
        self.connections = 0
        """TCP connections served."""
        self.questions: collections.Counter[tuple[str, str, str]] = collections.Counter()

    @property
    def tcp_clients(self) -> int:
        """TCP connections open now."""
        return len(self._tcp_clients)

    @property
    def port(self) -> int:
        """The UDP and TCP port the server listens on; 0 before :meth:`start`."""
        return self._port

    async def start(self, host: str, port: int = 0) -> int:
        """Listen on *host* (an IP address), UDP and TCP on the same *port*; 0 picks a port free for both.

        Returns the port. Raises LabError if the sockets cannot be bound.
        """
        if self._udp is not None or self._closing:
            raise RuntimeError("a DnsServer starts once")
        loop = asyncio.get_running_loop()
        last_error: OSError | None = None
        for _ in range(_BIND_ATTEMPTS if port == 0 else 1):
            udp: asyncio.DatagramTransport | None = None
            try:
                async with asyncio.timeout(_START_TIMEOUT):  # binding is local: this only guards the bound
                    udp, _protocol = await loop.create_datagram_endpoint(
                        lambda: _UdpProtocol(self._handle), local_addr=(host, port)
                    )
                    bound = int(udp.get_extra_info("sockname")[1])
                    self._tcp_server = await asyncio.start_server(self._serve_tcp, host, bound)
            except OSError as exc:  # TimeoutError included
                if udp is not None:
                    udp.close()
                last_error = exc
                # The kernel's free UDP port may be taken for TCP: try another one.
                if udp is not None and port == 0 and exc.errno == errno.EADDRINUSE:
                    continue
                break
            self._udp = udp
            self._port = bound
            return bound
        raise LabError(f"cannot bind the DNS server to {host}:{port}: {last_error}") from last_error

    async def close(self) -> None:
        """Close the sockets and abort open TCP clients; returns within a few seconds at most."""
        self._closing = True
        if self._udp is not None:
            self._udp.close()
        if self._tcp_server is not None:
            self._tcp_server.close()
        for writer in list(self._tcp_clients.values()):
            writer.transport.abort()
        tasks = list(self._tcp_clients)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=_CLOSE_TIMEOUT)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=_CLOSE_TIMEOUT)
        if self._tcp_server is not None:
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await self._tcp_server.wait_closed()
            except TimeoutError:
                self._log.debug("DNS TCP server did not report closed in time")

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer length-framed queries on one connection until EOF, idleness or garbage (RFC 7766)."""
        task = asyncio.current_task()
        if self._closing or task is None or len(self._tcp_clients) >= self._max_tcp_clients:
            writer.transport.abort()
            return
        self._tcp_clients[task] = writer
        self.connections += 1
        try:
            while True:
                # One bound covers waiting for the next query and reading it: RFC 7766 §6.2.3 idle
                # timeout, and no client can hold a slot by trickling a message in.
                async with asyncio.timeout(self._tcp_idle_timeout):
                    length = int.from_bytes(await reader.readexactly(2), "big")
                    wire = await reader.readexactly(length)
                reply = self._handle(wire, Transport.TCP)
                if reply.delay > 0:
                    await asyncio.sleep(reply.delay)
                if reply.wire is not None:
                    writer.write(len(reply.wire).to_bytes(2, "big") + reply.wire)
                    async with asyncio.timeout(self._tcp_idle_timeout):
                        await writer.drain()
                if not reply.keep_open:
                    break
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            pass  # client went away, stalled or was aborted by close()
        except asyncio.CancelledError:
            # Only close() cancels this task, after aborting it; ending normally keeps asyncio's
            # client_connected_cb bookkeeping from reporting the cancellation as an error.
            pass
        except Exception:
            self._log.exception("DNS TCP client handler failed")
        finally:
            writer.transport.abort()
            del self._tcp_clients[task]

    def _handle(self, wire: bytes, transport: Transport) -> _Reply:
        """Count and answer one received message; never raises."""
        self.queries[transport.value] += 1
        try:
            return self._answer(wire, transport)
        except Exception:
            self._log.exception("DNS server failed on a %d-octet message", len(wire))
            return _Reply(keep_open=False)

    def _lose(self, name: dns.name.Name, qtype: dns.rdatatype.RdataType) -> bool:
        """Whether a UDP query for *name*/*qtype* goes unanswered by a transport behaviour (counting it)."""
        behaviour = self._data._behaviour_at(name)
        if behaviour == Behaviour.TCP_ONLY:
            return True
        if behaviour == Behaviour.LOSE_UDP and self._lost[name, qtype] < self._udp_losses:
            self._lost[name, qtype] += 1
            return True
        return False

    def _answer(self, wire: bytes, transport: Transport) -> _Reply:
        """The reply to one received message."""
        if len(wire) < _HEADER_LEN:
            return _Reply(keep_open=False)
        flags = int.from_bytes(wire[2:4], "big")
        if flags & dns.flags.QR:
            # Never answer a response: that is how reflection loops between servers start.
            return _Reply(keep_open=False)
        if dns.opcode.from_flags(flags) != dns.opcode.QUERY:
            return _Reply(_header_only(wire, dns.rcode.NOTIMP))
        try:
            query = dns.message.from_wire(wire)
        except dns.message.UnknownTSIGKey:
            # RFC 8945 §5.2.2: a key we do not know.
            return _Reply(_header_only(wire, dns.rcode.NOTAUTH))
        except Exception:
            return _Reply(_header_only(wire, dns.rcode.FORMERR), keep_open=False)

        limit = _MAX_TCP_MESSAGE if transport == Transport.TCP else _udp_limit(query)
        response = dns.message.make_response(query, our_payload=_MAX_UDP_PAYLOAD)
        if len(query.question) != 1:
            response.question = []
            response.set_rcode(dns.rcode.FORMERR)
            return _Reply(_render(response, limit))
        if query.edns > 0:
            response.set_rcode(dns.rcode.BADVERS)  # RFC 6891 §6.1.3: we speak EDNS version 0 only
            return _Reply(_render(response, limit))

        question = query.question[0]
        qtype = question.rdtype
        asked = question.name.to_text(omit_final_dot=True).lower(), dns.rdatatype.to_text(qtype), transport.value
        self.questions[asked] += 1
        if question.rdclass != dns.rdataclass.IN or qtype in _TRANSFER_TYPES:
            response.set_rcode(dns.rcode.REFUSED)
            return _Reply(_render(response, limit))
        if qtype != dns.rdatatype.ANY and dns.rdatatype.is_metatype(qtype):
            response.set_rcode(dns.rcode.NOTIMP)
            return _Reply(_render(response, limit))

        if (query.edns >= 0 and self._data._behaviour_at(question.name) == Behaviour.NO_EDNS
                and not self._data._answered_by_parent(question.name, qtype)):  # fmt: skip
            response.use_edns(False)
            response.set_rcode(dns.rcode.FORMERR)
            return _Reply(_render(response, limit))
        if transport == Transport.UDP and self._lose(question.name, qtype):
            return _Reply()
        if transport == Transport.UDP and self._data._behaviour_at(question.name) == Behaviour.SLIP_UDP:
            response.flags |= dns.flags.TC
            return _Reply(_render(response, limit))
        if transport == Transport.UDP and self._data._behaviour_at(question.name) == Behaviour.SMALL_UDP:
            limit = _PLAIN_UDP_LIMIT
        outcome = self._data._resolve(question.name, qtype)
        if outcome.behaviour == Behaviour.DROP:
            return _Reply()
        if outcome.behaviour == Behaviour.TRUNCATE:
            response.flags |= dns.flags.TC
            return _Reply(_render(response, limit))
        response.set_rcode(outcome.rcode)
        if outcome.authoritative:
            response.flags |= dns.flags.AA
        response.answer = list(outcome.answer)
        response.authority = list(outcome.authority)
        if query.ednsflags & dns.flags.DO:
            signatures, denial = self._data._dnssec_records(question.name, outcome)
            response.answer += signatures
            response.authority += denial
        slow = qtype == dns.rdatatype.AAAA and self._data._behaviour_at(question.name) == Behaviour.SLOW_AAAA
        return _Reply(_render(response, limit), delay=self._slow_delay if slow else 0.0)
