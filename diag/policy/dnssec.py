"""DNSSEC: is an answer secure, insecure or bogus? Validated with ``dns.dnssec`` from a trust anchor, or taken
from the AD bit of a resolver the operator declared validating.

:func:`validate` is a :class:`~diag.policy.lookup.Process`. From the deepest configured trust anchor (a DS or
DNSKEY rrset for a zone: the root's, or the lab's own) it walks down the name one label at a time:

* the zone's DNSKEY rrset must contain a key whose digest is in the trusted DS set (``dnssec.make_ds``),
  and be signed by it (RFC 4035 §5.2);
* at each name below, a DS query tells a secure delegation (a signed DS rrset: its child zone's DNSKEYs are
  checked the same way) from a name inside the same zone or an insecure delegation (a signed denial of the
  DS; an NSEC/NSEC3 at that name with the NS bit and no DS bit is a delegation without DNSSEC: INSECURE);
* the answer itself must carry a valid RRSIG by the zone's keys (``dnssec.validate``, which checks the
  signature, the key tag and algorithm, and the inception and expiration times against ``now``).

What is proven: signatures (answers, DS, DNSKEY, and the NSEC/NSEC3 records of a negative answer) are fully
validated, and the NSEC/NSEC3 records must prove what the answer claims (:mod:`diag.policy.denial`, else
BOGUS with ``denial-mismatch``): NXDOMAIN with the proof that no wildcard matched (NSEC: RFC 4035 §5.4; NSEC3:
the closest-encloser proof and the wildcard, RFC 5155 §8.4), NODATA (the type and CNAME absent at the name, at
an empty non-terminal, or at the wildcard that would have matched: RFC 4035 §3.1.3, RFC 5155 §8.5 to §8.7), and
every DS denial on the walk down (a delegation without DS, a name of the same zone, or, with NSEC3 opt-out, an
unsigned delegation in an opt-out span: INSECURE with ``opt-out``, RFC 5155 §8.6; an NXDOMAIN in an opt-out span
is likewise insecure, §9.2). An answer synthesised from a wildcard (RRSIG labels below the owner's) needs the
proof that the next closer name does not exist (RFC 4035 §5.3.4, RFC 5155 §8.8). NSEC3 records with an unknown
hash algorithm or flags are ignored; with more than 150 iterations the denial is INSECURE
(``nsec3-iterations``, RFC 9276 §3.2), on the walk down too, so everything below such a denial is.

An answer reached through CNAMEs is validated link by link: each CNAME rrset in its own zone (asked for as
type CNAME), then the target's answer from the target's own chain of trust, for at most 8 CNAMEs (more, or a
loop, is INDETERMINATE with ``cname``). The result is the worst link's state (bogus, then indeterminate, then
insecure) and ``aliases`` lists the targets. Not done: DNAME, and algorithm-downgrade protection across
several DS digests (any DS that matches a key is taken, as RFC 4035 §5.2 allows).

:func:`from_ad_bit` is the other way: trust the resolver's AD bit, which is only safe when that resolver
validates and the path to it cannot be tampered with, i.e. it runs on this host (security-cases.md DNS-19,
RD-27; Postfix's rule for DANE). :func:`ad_bit_trustworthy` says whether a set of nameservers qualifies.
Facts record which way was used (:class:`Method`).
"""

from __future__ import annotations

import enum
import ipaddress
import time
from collections.abc import Generator, Sequence
from typing import TypeVar, cast

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.DNSKEY
import dns.rdtypes.ANY.DS
import dns.rdtypes.ANY.RRSIG
import dns.rrset

from diag.frozen import frozen
from diag.net.dns import Nameserver
from diag.net.dnssec import dnssec
from diag.policy import denial
from diag.policy.anchors import ROOT_ANCHORS, TrustAnchor, parse_anchors
from diag.policy.denial import Cut, Denial, Verdict
from diag.policy.lookup import Process, Question, Reply, ReplyStatus

__all__ = [
    "ROOT_ANCHORS",
    "Chains",
    "Denial",
    "DnssecResult",
    "Method",
    "Reason",
    "Security",
    "TrustAnchor",
    "ad_bit_trustworthy",
    "from_ad_bit",
    "parse_anchors",
    "validate",
]

_MAX_LABELS = 16  # names below an anchor walked at most: real names are far shorter, hostile ones are cut off
_CHAIN_STEPS = 20_000  # steps a run's Chains keeps: about two per domain of a 10,000-domain run
_MAX_ALIASES = 8  # CNAMEs followed from the name asked (RFC 1034 §3.6.2 discourages chains; resolvers stop near 8)


class Security(enum.StrEnum):
    """RFC 4033 §5: the four states of an answer."""

    SECURE = "secure"  # validated from a trust anchor
    INSECURE = "insecure"  # provably unsigned: a delegation without DS on the way
    BOGUS = "bogus"  # signed, but validation failed
    INDETERMINATE = "indeterminate"  # could not be decided (no anchor, no answer, a CNAME)


class Reason(enum.StrEnum):
    """Why the state is what it is."""

    VALIDATED = "validated"
    INSECURE_DELEGATION = "insecure-delegation"
    NO_ANCHOR = "no-anchor"  # no configured trust anchor covers the name
    ANCHOR_UNANSWERED = "anchor-unanswered"  # the resolver gave no answer for the trust anchor's own DNSKEY
    NO_SIGNATURE = "no-signature"  # data in a signed zone without an RRSIG
    EXPIRED = "expired"  # the RRSIG's expiration is past
    NOT_YET_VALID = "not-yet-valid"  # its inception is in the future
    BAD_SIGNATURE = "bad-signature"  # the signature does not verify with the zone's keys
    NO_MATCHING_KEY = "no-matching-key"  # no DNSKEY matches the DS (or the anchor)
    NO_DNSKEY = "no-dnskey"  # the zone publishes no DNSKEY
    UNSIGNED_DENIAL = "unsigned-denial"  # a negative answer without a signed NSEC/NSEC3
    DENIAL_MISMATCH = "denial-mismatch"  # the NSEC/NSEC3 records do not prove what the answer claims
    OPT_OUT = "opt-out"  # the name is in an NSEC3 opt-out span: it may be an unsigned delegation (RFC 5155 §6)
    NSEC3_ITERATIONS = "nsec3-iterations"  # NSEC3 records with more hash iterations than validators compute
    DNS_ERROR = "dns-error"
    NO_DNSSEC_MATERIAL = "no-dnssec-material"  # the resolver asked does not implement EDNS: no RRSIGs came back
    CNAME = "cname"  # a CNAME loop or a chain longer than diag follows
    AD_BIT = "ad-bit"  # the trusted resolver set AD
    NO_AD_BIT = "no-ad-bit"  # the trusted resolver did not


class Method(enum.StrEnum):
    """How the state was established."""

    VALIDATED = "validated"  # dns.dnssec from a configured trust anchor
    AD_BIT = "ad-bit"  # the AD bit of a resolver declared validating




@frozen
class DnssecResult:
    """The DNSSEC state of one answer.

    Attributes:
        name, rdtype: the question.
        security: secure, insecure, bogus or indeterminate.
        reason: why.
        method: validated from an anchor, or the AD bit.
        zone: the signed zone that answered (secure, bogus) or the delegation left unsigned (insecure).
        status: the answer's status (data, NXDOMAIN, NODATA, or no answer).
        records: the answer's records as text.
        denial: how a negative answer was denied, when it was.
        chain: the zones validated on the way, from the anchor down (through each alias's zone in turn).
        detail: the validator's or resolver's words.
        aliases: the CNAME targets followed from ``name``, in order; each link was validated in its own zone.
            With the AD bit only the last target is known (the resolver followed the chain).
    """

    name: str
    rdtype: str
    security: Security
    reason: Reason
    method: Method = Method.VALIDATED
    zone: str = ""
    status: ReplyStatus = ReplyStatus.ERROR
    records: tuple[str, ...] = ()
    denial: Denial | None = None
    chain: tuple[str, ...] = ()
    detail: str = ""
    aliases: tuple[str, ...] = ()


class _Fail(Exception):
    def __init__(self, security: Security, reason: Reason, zone: str, detail: str) -> None:
        super().__init__(detail)
        self.security, self.reason, self.zone, self.detail = security, reason, zone, detail


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True) if name != dns.name.root else "."


_Step = TypeVar("_Step")


class Chains:
    """The steps of the chain of trust one run has validated: each zone's checked DNSKEY rrset and what the DS
    question at each name proved (a secure delegation, an unsigned one, no cut), or how it failed. Every answer
    below the same zones walks the same steps: the root's and a TLD's keys are verified once per run, not once
    per name and domain. The steps depend only on the run's answers (cached for the run) and its trust anchors,
    so one :class:`Chains` serves one run, with one set of anchors, at one time; the last :data:`_CHAIN_STEPS`
    steps are kept.
    """

    def __init__(self) -> None:
        self._steps: dict[tuple[str, dns.name.Name], object] = {}

    def step(
        self, kind: str, name: dns.name.Name, compute: Generator[Question, Reply, _Step]
    ) -> Generator[Question, Reply, _Step]:
        """The ``kind`` step at ``name``: remembered, or computed (asking its questions) and remembered."""
        key = (kind, name)
        if key in self._steps:
            known = self._steps[key]
            compute.close()
            if isinstance(known, _Fail):
                raise _Fail(known.security, known.reason, known.zone, known.detail)
            return cast(_Step, known)
        try:
            value = yield from compute
        except _Fail as fail:
            # Only what validated data proved is kept: a step that could not be decided (no answer, a timeout,
            # a process out of questions) is asked again by the next name that needs it.
            if fail.security is not Security.INDETERMINATE:
                self._remember(key, fail)
            raise
        self._remember(key, value)
        return value

    def _remember(self, key: tuple[str, dns.name.Name], value: object) -> None:
        if len(self._steps) >= _CHAIN_STEPS:
            del self._steps[next(iter(self._steps))]
        self._steps[key] = value


def _steps(
    chains: Chains | None, kind: str, name: dns.name.Name, compute: Generator[Question, Reply, _Step]
) -> Generator[Question, Reply, _Step]:
    if chains is None:
        return (yield from compute)
    return (yield from chains.step(kind, name, compute))


def validate(
    name: str, rdtype: str, anchors: Sequence[TrustAnchor], *, now: float | None = None, chains: Chains | None = None
) -> Process[DnssecResult]:
    """The process validating the ``rdtype`` answer at ``name`` from the deepest of ``anchors``.

    ``now`` (seconds since the epoch) is the time signatures must be valid at; the current time by default.
    ``chains``: the run's validated steps of the chain of trust, taken from and added to (:class:`Chains`).
    """
    return Process(_validate(name.rstrip(".").lower(), rdtype.upper(), tuple(anchors), now, chains))


def _validate(
    name: str, rdtype: str, anchors: tuple[TrustAnchor, ...], now: float | None, chains: Chains | None
) -> Generator[Question, Reply, DnssecResult]:
    at = time.time() if now is None else now
    links: list[DnssecResult] = []
    aliases: list[str] = []
    current = name
    while True:
        link, target = yield from _link(current, rdtype, anchors, at, chains)
        links.append(link)
        if not target or link.security is Security.BOGUS:
            break
        if target == name or target in aliases or len(aliases) >= _MAX_ALIASES:
            detail = f"{current} is an alias for {target}: a CNAME loop or more than {_MAX_ALIASES} CNAMEs"
            links.append(DnssecResult(target, rdtype, Security.INDETERMINATE, Reason.CNAME, detail=detail))
            break
        aliases.append(target)
        current = target
    return _combined(name, rdtype, links, tuple(aliases))


# Most severe first: a bogus link makes the answer bogus, one that cannot be decided indeterminate, an insecure
# one insecure (RFC 4035 §5: every rrset of a chain is validated in its own zone).
_RANK = (Security.BOGUS, Security.INDETERMINATE, Security.INSECURE, Security.SECURE)


def _combined(name: str, rdtype: str, links: list[DnssecResult], aliases: tuple[str, ...]) -> DnssecResult:
    """One result for the answer at ``name`` from its links: the first alias, the next, …, the final answer."""
    final = links[-1]
    worst = min(links, key=lambda link: _RANK.index(link.security))
    chain = tuple(dict.fromkeys(zone for link in links for zone in link.chain))
    detail = worst.detail
    if aliases and worst is not links[0] and worst.detail:
        detail = f"{worst.name}: {worst.detail}"
    return DnssecResult(name, rdtype, worst.security, worst.reason, worst.method, zone=worst.zone,
                        status=final.status, records=final.records, denial=final.denial, chain=chain, detail=detail,
                        aliases=aliases)  # fmt: skip


def _link(
    name: str, rdtype: str, anchors: tuple[TrustAnchor, ...], at: float, chains: Chains | None
) -> Generator[Question, Reply, tuple[DnssecResult, str]]:
    """The state of the answer at ``name`` in its own zone, walked down from the deepest anchor, and the CNAME
    target when ``name`` is an alias (the CNAME rrset is then what is validated here)."""
    try:
        qname = dns.name.from_text(name)
    except dns.exception.DNSException as exc:  # a CNAME target from a hostile zone
        return DnssecResult(name, rdtype, Security.INDETERMINATE, Reason.DNS_ERROR,
                            detail=f"not a name that can be validated ({exc})"), ""  # fmt: skip
    covering = [a for a in anchors if qname.is_subdomain(a.origin())]
    if not covering:
        plain = yield Question(name, rdtype, dnssec=True)
        target = yield from _alias_target(name, plain)
        result = DnssecResult(name, rdtype, Security.INDETERMINATE, Reason.NO_ANCHOR, status=plain.status,
                              records=plain.records, detail="no trust anchor covers it")  # fmt: skip
        return result, target
    anchor = max(covering, key=lambda a: len(a.origin()))
    zone = anchor.origin()
    chain: list[str] = []
    last: Reply | None = None
    target = ""
    try:
        try:
            keys = yield from _steps(chains, "keys", zone, _zone_keys(zone, anchor, None, at))
        except _Fail as fail:
            if fail.security is Security.INDETERMINATE and fail.reason is Reason.DNS_ERROR:
                # Nothing below the anchor can be validated; a resolver that does not answer for the anchor's zone
                # (the root's, by default) is diag's vantage point, not something of the name's zone.
                raise _Fail(fail.security, Reason.ANCHOR_UNANSWERED, fail.zone, fail.detail) from None
            raise
        chain.append(_text(zone))
        top = zone
        labels = qname.relativize(top).labels if qname != top else ()
        if len(labels) > _MAX_LABELS:
            raise _Fail(Security.INDETERMINATE, Reason.DNS_ERROR, _text(zone), "the name has too many labels")
        for depth in range(len(labels) - 1, -1, -1):
            child = dns.name.Name(labels[depth:]).concatenate(top)
            step = yield from _steps(chains, "cut", child, _delegation(child, zone, keys, at))
            if step is None:
                continue  # not a zone cut: the same zone goes on
            if isinstance(step, _Unsigned):
                # Provably unsigned below: the answer itself is still fetched, for what it says.
                last = yield Question(name, rdtype, dnssec=True)
                target = yield from _alias_target(name, last)
                result = DnssecResult(name, rdtype, Security.INSECURE, step.reason, zone=step.zone,
                                      status=last.status, records=last.records, chain=tuple(chain),
                                      detail=step.detail)  # fmt: skip
                return result, target
            keys = yield from _steps(chains, "keys", child, _zone_keys(child, None, step, at))
            zone = child
            chain.append(_text(zone))
        last = yield Question(name, rdtype, dnssec=True)
        if last.status.answered and last.canonical_name:
            # An alias: its CNAME rrset is validated here, the target in its own zone by the next link.
            last = yield Question(name, "CNAME", dnssec=True)
            if last.status is not ReplyStatus.OK or not last.records:
                raise _Fail(Security.INDETERMINATE, Reason.DNS_ERROR, _text(zone),
                            f"{name} answers as an alias, but its CNAME question gets {last.status}")  # fmt: skip
            target = last.records[0]
            denial = _check_answer(last, qname, "CNAME", zone, keys, at)
        else:
            denial = _check_answer(last, qname, rdtype, zone, keys, at)
    except _Fail as fail:
        status = last.status if last is not None else ReplyStatus.ERROR
        records = last.records if last is not None else ()
        result = DnssecResult(name, rdtype, fail.security, fail.reason, zone=fail.zone, status=status,
                              records=records, chain=tuple(chain), detail=fail.detail)  # fmt: skip
        return result, (target if fail.security is not Security.BOGUS else "")
    result = DnssecResult(name, rdtype, Security.SECURE, Reason.VALIDATED, zone=_text(zone), status=last.status,
                          records=last.records, denial=denial, chain=tuple(chain))  # fmt: skip
    return result, target


def _alias_target(name: str, reply: Reply) -> Generator[Question, Reply, str]:
    """The CNAME target of ``name`` when ``reply`` came through an alias, without validation; "" otherwise."""
    if not (reply.status.answered and reply.canonical_name):
        return ""
    cname = yield Question(name, "CNAME", dnssec=True)
    return cname.records[0] if cname.status is ReplyStatus.OK and cname.records else ""


def _unanswered(reply: Reply, zone: dns.name.Name, what: str) -> _Fail:
    """The failure for a question that got no answer: the DNS's (no answer on the chain of trust), or the path's
    when the resolver diag asks gave no DNSSEC material."""
    reason = Reason.NO_DNSSEC_MATERIAL if reply.no_dnssec else Reason.DNS_ERROR
    return _Fail(Security.INDETERMINATE, reason, _text(zone), f"{what}: {reply.detail or reply.status}")


def _signed(reply: Reply, zone: dns.name.Name, what: str) -> tuple[dns.rrset.RRset, tuple[dns.rdata.Rdata, ...]]:
    if not reply.status.answered:
        raise _unanswered(reply, zone, what)
    if reply.canonical_name:
        raise _Fail(Security.INDETERMINATE, Reason.CNAME, _text(zone), f"{what} is an alias for {reply.canonical_name}")
    signed = reply.signed
    if signed is None or signed.rrset is None:
        raise _Fail(Security.BOGUS, Reason.NO_DNSKEY, _text(zone), f"{what}: no records")
    return signed.rrset, signed.signatures


def _verify(
    rrset: dns.rrset.RRset, signatures: Sequence[dns.rdata.Rdata], zone: dns.name.Name,
    keys: dns.rrset.RRset, at: float, what: str,
) -> None:
    """Validate ``rrset`` with ``keys`` of ``zone``; a failure is BOGUS with the most telling reason."""
    sigs = [s for s in signatures if isinstance(s, dns.rdtypes.ANY.RRSIG.RRSIG) and s.signer == zone]
    if not sigs:
        raise _Fail(Security.BOGUS, Reason.NO_SIGNATURE, _text(zone), f"{what} has no RRSIG by {_text(zone)}")
    sigset = dns.rrset.from_rdata_list(rrset.name, 0, sigs)
    try:
        dnssec.validate(rrset, sigset, {zone: keys}, now=at)
    except (dns.exception.ValidationFailure, dns.exception.UnsupportedAlgorithm, dns.exception.DeniedByPolicy) as exc:
        if all(s.expiration < at for s in sigs):
            reason = Reason.EXPIRED
        elif all(s.inception > at for s in sigs):
            reason = Reason.NOT_YET_VALID
        else:
            reason = Reason.BAD_SIGNATURE
        raise _Fail(Security.BOGUS, reason, _text(zone), f"{what}: {exc}") from None


def _zone_keys(
    zone: dns.name.Name, anchor: TrustAnchor | None, ds_rrset: dns.rrset.RRset | None, at: float
) -> Generator[Question, Reply, dns.rrset.RRset]:
    """The zone's DNSKEY rrset, checked against the anchor or the parent's DS set and self-signed by it."""
    reply = yield Question(_text(zone), "DNSKEY", dnssec=True)
    rrset, signatures = _signed(reply, zone, f"{_text(zone)} DNSKEY")
    keys = [k for k in rrset if isinstance(k, dns.rdtypes.ANY.DNSKEY.DNSKEY)]
    if anchor is not None and anchor.dnskey:
        wanted = {dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DNSKEY, text) for text in anchor.dnskey}
        trusted = [k for k in keys if k in wanted]
    else:
        if anchor is not None:
            ds_set = [dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DS, text) for text in anchor.ds]
        else:
            assert ds_rrset is not None
            ds_set = list(ds_rrset)
        trusted = [k for k in keys if _matches_ds(zone, k, ds_set)]
    if not trusted:
        raise _Fail(Security.BOGUS, Reason.NO_MATCHING_KEY, _text(zone), f"no DNSKEY of {_text(zone)} matches its DS")
    _verify(rrset, signatures, zone, dns.rrset.from_rdata_list(zone, 0, trusted), at, f"{_text(zone)} DNSKEY")
    return rrset


def _matches_ds(zone: dns.name.Name, key: dns.rdtypes.ANY.DNSKEY.DNSKEY, ds_set: Sequence[dns.rdata.Rdata]) -> bool:
    for ds in ds_set:
        if not isinstance(ds, dns.rdtypes.ANY.DS.DS) or ds.algorithm != key.algorithm:
            continue
        try:
            if dnssec.make_ds(zone, key, ds.digest_type) == ds:
                return True
        except (dns.exception.DNSException, ValueError):
            continue
    return False



@frozen
class _Unsigned:
    """A walk step that proved the rest of the name unsigned."""

    zone: str
    reason: Reason
    detail: str


def _delegation(
    child: dns.name.Name, zone: dns.name.Name, keys: dns.rrset.RRset, at: float
) -> Generator[Question, Reply, dns.rrset.RRset | _Unsigned | None]:
    """Is ``child`` a secure delegation (its DS rrset), provably unsigned, or inside ``zone`` (None)?"""
    reply = yield Question(_text(child), "DS", dnssec=True)
    if not reply.status.answered:
        raise _unanswered(reply, zone, f"{_text(child)} DS")
    if reply.canonical_name:
        # An alias is no zone cut (RFC 1034 §3.6.2: no NS beside a CNAME), and names below it may exist (the TLSA
        # records at _25._tcp of an aliased MX host, RFC 7672 §2.2.2): the walk goes on in this zone, once the
        # CNAME is shown to be this zone's signed data, so that a forged alias cannot make it skip a cut.
        cname = yield Question(_text(child), "CNAME", dnssec=True)
        if not cname.status.answered:
            raise _unanswered(cname, zone, f"{_text(child)} CNAME")
        if cname.status is not ReplyStatus.OK or not cname.records:
            detail = f"{_text(child)} DS answers as an alias, but its CNAME question gets {cname.status}"
            raise _Fail(Security.INDETERMINATE, Reason.DNS_ERROR, _text(zone), detail)
        try:
            _check_answer(cname, child, "CNAME", zone, keys, at)
        except _Fail as fail:
            if fail.security is Security.INSECURE:  # an alias from a wildcard behind an unusable denial
                return _Unsigned(fail.zone, fail.reason, fail.detail)
            raise
        return None
    signed = reply.signed
    if reply.status is ReplyStatus.OK and signed is not None and signed.rrset is not None:
        _verify(signed.rrset, signed.signatures, zone, keys, at, f"{_text(child)} DS")
        return signed.rrset
    what = f"{_text(child)} DS"
    proofs = _denial_records(reply, zone, keys, at, what)
    proof = denial.delegation(child, zone, reply.status is ReplyStatus.NXDOMAIN, proofs)
    if proof.verdict is Verdict.FAILED:
        raise _Fail(Security.BOGUS, Reason.DENIAL_MISMATCH, _text(zone), f"{what}: {proof.detail}")
    if proof.verdict is Verdict.INSECURE:
        reason = _insecure_reason(proof)
        where = _text(child) if reason is Reason.OPT_OUT else _text(zone)
        return _Unsigned(where, reason, f"{what}: {proof.detail}")
    if proof.cut is Cut.UNSIGNED:
        return _Unsigned(_text(child), Reason.INSECURE_DELEGATION, f"{_text(child)} is delegated without DS")
    return None


def _insecure_reason(proof: denial.Proof) -> Reason:
    return Reason.NSEC3_ITERATIONS if proof.costly else Reason.OPT_OUT


def _denial_records(
    reply: Reply, zone: dns.name.Name, keys: dns.rrset.RRset, at: float, what: str
) -> list[dns.rrset.RRset]:
    """The NSEC/NSEC3 rrsets of a negative answer, each validated; none at all is an unsigned denial."""
    authority = reply.signed.authority if reply.signed is not None else ()
    proofs = [r for r in authority if r.rdtype in (dns.rdatatype.NSEC, dns.rdatatype.NSEC3)]
    if not proofs:
        raise _Fail(Security.BOGUS, Reason.UNSIGNED_DENIAL, _text(zone), f"{what}: no NSEC/NSEC3 proves it")
    for rrset in proofs:
        sigs = [
            s for r in authority if r.rdtype == dns.rdatatype.RRSIG and r.name == rrset.name for s in r
            if isinstance(s, dns.rdtypes.ANY.RRSIG.RRSIG) and s.type_covered == rrset.rdtype
        ]  # fmt: skip
        _verify(rrset, sigs, zone, keys, at, f"{what}: {_text(rrset.name)} {dns.rdatatype.to_text(rrset.rdtype)}")
    return proofs


def _check_answer(
    reply: Reply, qname: dns.name.Name, rdtype: str, zone: dns.name.Name, keys: dns.rrset.RRset, at: float
) -> Denial | None:
    """Validate the final answer: its signature (and, synthesised from a wildcard, the proof that the name itself
    does not exist), or the denial of a negative answer. An INSECURE denial (opt-out, too many NSEC3
    iterations) raises INSECURE."""
    what = f"{_text(qname)} {rdtype}"
    if not reply.status.answered:
        raise _unanswered(reply, zone, what)
    if reply.canonical_name:
        raise _Fail(Security.INDETERMINATE, Reason.CNAME, _text(zone), f"{what} is an alias for {reply.canonical_name}")
    signed = reply.signed
    if reply.status is ReplyStatus.OK and signed is not None and signed.rrset is not None:
        _verify(signed.rrset, signed.signatures, zone, keys, at, what)
        labels = _expanded_from(signed.rrset.name, signed.signatures, zone)
        if labels is None:
            return None
        proof = denial.wildcard_answer(qname, labels, zone, _denial_records(reply, zone, keys, at, what))
    elif reply.status is ReplyStatus.NXDOMAIN:
        proof = denial.nxdomain(qname, zone, _denial_records(reply, zone, keys, at, what))
    else:
        wanted = dns.rdatatype.from_text(rdtype)
        proof = denial.nodata(qname, wanted, zone, _denial_records(reply, zone, keys, at, what))
    if proof.verdict is Verdict.FAILED:
        raise _Fail(Security.BOGUS, Reason.DENIAL_MISMATCH, _text(zone), f"{what}: {proof.detail}")
    if proof.verdict is Verdict.INSECURE:
        raise _Fail(Security.INSECURE, _insecure_reason(proof), _text(zone), f"{what}: {proof.detail}")
    return proof.kind


def _expanded_from(owner: dns.name.Name, signatures: Sequence[dns.rdata.Rdata], zone: dns.name.Name) -> int | None:
    """The label count of the wildcard's closest encloser when the answer was synthesised from a wildcard (the
    RRSIG's labels field is below the owner's label count: RFC 4035 §5.3.2), else None."""
    count = len(owner.labels) - 1 - (1 if owner.is_wild() else 0)
    labels = [s.labels for s in signatures if isinstance(s, dns.rdtypes.ANY.RRSIG.RRSIG) and s.signer == zone]
    return min(labels) if labels and min(labels) < count else None


def ad_bit_trustworthy(nameservers: Sequence[Nameserver]) -> bool:
    """May the AD bit be trusted from these nameservers? Only if every one is on this host (loopback): a remote
    resolver's AD bit crosses a network anyone on the path can forge (security-cases.md DNS-19 and RD-27; RFC
    6698 §4.1). The system's resolver (no nameservers given) is not trusted: which one it is is not known here."""
    if not nameservers:
        return False
    return all(ipaddress.ip_address(server.ip).is_loopback for server in nameservers)


def from_ad_bit(name: str, rdtype: str) -> Process[DnssecResult]:
    """The process taking the DNSSEC state from the AD bit of a resolver declared validating (the caller has
    checked :func:`ad_bit_trustworthy`). No AD means "not validated": INSECURE or unknown, never SECURE."""
    return Process(_from_ad_bit(name.rstrip(".").lower(), rdtype.upper()))


def _from_ad_bit(name: str, rdtype: str) -> Generator[Question, Reply, DnssecResult]:
    reply = yield Question(name, rdtype, dnssec=True)
    if not reply.status.answered:
        reason = Reason.NO_DNSSEC_MATERIAL if reply.no_dnssec else Reason.DNS_ERROR
        return DnssecResult(name, rdtype, Security.INDETERMINATE, reason, Method.AD_BIT,
                            status=reply.status, detail=reply.detail)  # fmt: skip
    # The resolver followed any CNAMEs itself: only the name it found the data at is known (the last alias).
    aliases = (reply.canonical_name,) if reply.canonical_name else ()
    if reply.signed is not None and reply.signed.authenticated:
        return DnssecResult(name, rdtype, Security.SECURE, Reason.AD_BIT, Method.AD_BIT, status=reply.status,
                            records=reply.records, aliases=aliases)  # fmt: skip
    return DnssecResult(name, rdtype, Security.INSECURE, Reason.NO_AD_BIT, Method.AD_BIT, status=reply.status,
                        records=reply.records, detail="the validating resolver did not set AD",
                        aliases=aliases)  # fmt: skip
