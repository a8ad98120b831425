"""Authenticated denial of existence: does a set of NSEC or NSEC3 records prove what a negative (or a
wildcard-synthesised) answer claims? Pure functions on dnspython data; the records' signatures are checked by the
caller (:mod:`diag.policy.dnssec`) before they are given here.

NSEC (RFC 4035 §3.1.3, §5.4; RFC 4592 §5.3):

* NXDOMAIN: an NSEC covers the name (and its next owner is not below it, which would make the name an empty
  non-terminal), and an NSEC covers the wildcard at the closest encloser the covering NSEC reveals;
* NODATA: the NSEC at the name lacks the type and CNAME; at an empty non-terminal, the covering NSEC's next
  owner is below the name; for a wildcard (RFC 4035 §3.1.3.4), an NSEC covers the name and the NSEC at
  ``*.<closest encloser>`` lacks the type;
* a wildcard-synthesised answer (§5.3.4): an NSEC covers the next closer name.

NSEC3 (RFC 5155 §8): the closest-encloser proof (an NSEC3 matching the closest encloser, one covering the next
closer name) with, for NXDOMAIN, an NSEC3 covering ``*.<closest encloser>`` (§8.4; INSECURE when the next
closer name is in an opt-out span, where an unsigned delegation may hide: §9.2); NODATA by the NSEC3 matching
the name (§8.5), for DS also by an opt-out NSEC3 covering the next closer name, which proves only that an unsigned
delegation may be there: the answer is insecure (§8.6, §6); wildcard NODATA (§8.7); a wildcard answer by an NSEC3
covering the next closer name (§8.8). NSEC3 records with an unknown hash algorithm or flags are ignored
(§8.1, §8.2). Records whose iteration count is above :data:`MAX_ITERATIONS` are not hashed: RFC 9276 §3.2 lets a
validator answer insecure above 0 iterations, and diag does so above 150, the limit BIND, Unbound, Knot Resolver
and PowerDNS Recursor adopted in 2021 (their signatures are still checked: RFC 9276 §3.2, RFC 5155 §10.3).

An NSEC or NSEC3 at a delegation point (NS without SOA) proves nothing below the cut, and one with DNAME nothing
below the name (RFC 5155 §8.3, RFC 6672 §5.3.4.1): such records do not serve as the closest encloser.
"""

from __future__ import annotations

import base64
import enum
import re
from collections.abc import Sequence

import dns.name
import dns.rdata
import dns.rdatatype
import dns.rdtypes.ANY.NSEC
import dns.rdtypes.ANY.NSEC3
import dns.rrset

from diag.frozen import frozen
from diag.net.dnssec import dnssec

__all__ = [
    "MAX_ITERATIONS",
    "Cut",
    "Denial",
    "Proof",
    "Verdict",
    "delegation",
    "nodata",
    "nxdomain",
    "types_of",
    "wildcard_answer",
]

MAX_ITERATIONS = 150
"""Most NSEC3 hash iterations diag computes; above, the denial is insecure (RFC 9276 §3.2, module docstring)."""

_SHA1 = 1  # RFC 5155 §11: the only NSEC3 hash algorithm
# A hashed owner label: a SHA-1 hash in base32hex without padding (RFC 5155 §3.3), 32 characters.
_HASHED = re.compile(rb"^[0-9a-vA-V]{32}$")
# NSEC3 records of one answer a proof looks at, at most: the closest-encloser proof and a wildcard's need three,
# a NODATA one; a hostile answer could carry hundreds, each costing a hash per name (CVE-2023-50868).
_MAX_NSEC3_RECORDS = 8
_OPT_OUT = 0x01  # RFC 5155 §3.1.2.1; any other flag makes the record unusable (§8.2)


class Denial(enum.StrEnum):
    """Which records denied the name or type."""

    NSEC = "nsec"
    NSEC3 = "nsec3"


class Verdict(enum.StrEnum):
    """What the records prove."""

    PROVEN = "proven"
    INSECURE = "insecure"  # an opt-out span or too many iterations: the name may hold unsigned data
    FAILED = "failed"  # they do not prove the claim: the answer is bogus


class Cut(enum.StrEnum):
    """What a DS denial says about a name below a zone (:func:`delegation`)."""

    INSIDE = "inside"  # no zone cut there: the same zone goes on
    UNSIGNED = "unsigned"  # a delegation without DS, or an opt-out span: the child is insecure


@frozen
class Proof:
    """The outcome of a denial check: the records' kind, the verdict, and (unless proven) why, in words.

    ``cut`` is only set by :func:`delegation` when the verdict is PROVEN or INSECURE; ``costly`` says that an
    INSECURE verdict comes from records with more hash iterations than diag computes (else from opt-out)."""

    kind: Denial
    verdict: Verdict
    detail: str = ""
    cut: Cut | None = None
    costly: bool = False


def types_of(record: dns.rdata.Rdata) -> set[int]:
    """The types an NSEC or NSEC3 record's bitmap lists (RFC 4034 §4.1.2)."""
    types: set[int] = set()
    for window, bitmap in getattr(record, "windows", ()):
        for index, byte in enumerate(bitmap):
            for bit in range(8):
                if byte & (0x80 >> bit):
                    types.add(window * 256 + index * 8 + bit)
    return types


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True) if name != dns.name.root else "."


def _wildcard(name: dns.name.Name) -> dns.name.Name:
    return dns.name.Name((b"*",)).concatenate(name)


def _next_closer(qname: dns.name.Name, encloser: dns.name.Name) -> dns.name.Name:
    """The name one label longer than ``encloser`` on the way to ``qname`` (RFC 5155 §1.3)."""
    return dns.name.Name(qname.labels[-(len(encloser.labels) + 1) :])


def _cut_or_dname(types: set[int]) -> bool:
    """A delegation point's NSEC/NSEC3 (NS without SOA) or a DNAME's: it proves nothing about names below."""
    return (dns.rdatatype.NS in types and dns.rdatatype.SOA not in types) or dns.rdatatype.DNAME in types


# --- NSEC ------------------------------------------------------------------------------------------------------


def _covers(owner: dns.name.Name, following: dns.name.Name, name: dns.name.Name) -> bool:
    """RFC 4034 §6.1 canonical order: ``owner < name < next`` (the last NSEC wraps around to the apex)."""
    if owner < following:
        return bool(owner < name < following)
    return bool(name > owner or name < following)


class _Nsecs:
    def __init__(self, rrsets: Sequence[dns.rrset.RRset]) -> None:
        self.records = [(r.name, rd) for r in rrsets for rd in r if isinstance(rd, dns.rdtypes.ANY.NSEC.NSEC)]

    def matching(self, name: dns.name.Name) -> dns.rdtypes.ANY.NSEC.NSEC | None:
        return next((rd for owner, rd in self.records if owner == name), None)

    def covering(self, name: dns.name.Name) -> tuple[dns.name.Name, dns.rdtypes.ANY.NSEC.NSEC] | None:
        """The NSEC proving that nothing exists at or below ``name`` (its next owner is not below it)."""
        for owner, rd in self.records:
            if _covers(owner, rd.next, name) and not rd.next.is_subdomain(name):
                if owner != name and name.is_subdomain(owner) and _cut_or_dname(types_of(rd)):
                    continue  # RFC 4035 §5.4 / RFC 6840 §4.1: a parent-side NSEC says nothing below the cut
                return owner, rd
        return None


def _nsec_encloser(qname: dns.name.Name, owner: dns.name.Name, following: dns.name.Name) -> dns.name.Name:
    """The closest encloser a covering NSEC reveals: the longer common ancestor of the name with the NSEC's owner
    or next owner (RFC 4592 §4.1, RFC 4035 §5.4)."""
    first = qname.fullcompare(owner)[2]
    second = qname.fullcompare(following)[2]
    return dns.name.Name(qname.labels[-max(first, second) :])


def _nsec_nxdomain(qname: dns.name.Name, nsecs: _Nsecs) -> Proof:
    found = nsecs.covering(qname)
    if found is None:
        return Proof(Denial.NSEC, Verdict.FAILED, f"no NSEC covers {_text(qname)}")
    encloser = _nsec_encloser(qname, found[0], found[1].next)
    wildcard = _wildcard(encloser)
    if nsecs.covering(wildcard) is None:
        return Proof(Denial.NSEC, Verdict.FAILED, f"no NSEC proves that {_text(wildcard)} does not exist")
    return Proof(Denial.NSEC, Verdict.PROVEN)


def _nsec_nodata(qname: dns.name.Name, rdtype: int, nsecs: _Nsecs) -> Proof:
    what = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))
    record = nsecs.matching(qname)
    if record is not None:
        types = types_of(record)
        if rdtype in types or dns.rdatatype.CNAME in types:
            return Proof(Denial.NSEC, Verdict.FAILED, f"the NSEC at {_text(qname)} lists {what} or CNAME")
        if rdtype != dns.rdatatype.DS and dns.rdatatype.NS in types and dns.rdatatype.SOA not in types:
            return Proof(Denial.NSEC, Verdict.FAILED, f"the NSEC at {_text(qname)} is the parent side of a cut")
        return Proof(Denial.NSEC, Verdict.PROVEN)
    for owner, rd in nsecs.records:
        if _covers(owner, rd.next, qname) and rd.next.is_subdomain(qname):
            return Proof(Denial.NSEC, Verdict.PROVEN)  # an empty non-terminal (RFC 4035 §3.1.3.2)
    found = nsecs.covering(qname)
    if found is not None:  # RFC 4035 §3.1.3.4: the name would come from a wildcard that lacks the type
        wildcard = _wildcard(_nsec_encloser(qname, found[0], found[1].next))
        source = nsecs.matching(wildcard)
        if source is not None and not types_of(source) & {rdtype, dns.rdatatype.CNAME}:
            return Proof(Denial.NSEC, Verdict.PROVEN)
    return Proof(Denial.NSEC, Verdict.FAILED, f"no NSEC proves that {_text(qname)} has no {what}")


# --- NSEC3 -----------------------------------------------------------------------------------------------------


def _hash_text(raw: bytes) -> str:
    return base64.b32hexencode(raw).decode("ascii").rstrip("=").lower()


class _Nsec3s:
    """The usable NSEC3 records of one zone, by hashed owner."""

    def __init__(self, zone: dns.name.Name, rrsets: Sequence[dns.rrset.RRset]) -> None:
        self.records: list[tuple[str, dns.rdtypes.ANY.NSEC3.NSEC3]] = []
        self.too_costly = False
        parameters: tuple[int, bytes] | None = None
        for rrset in rrsets:
            if rrset.name == dns.name.root or rrset.name.parent() != zone or not _HASHED.match(rrset.name.labels[0]):
                continue  # RFC 5155 §7.1: NSEC3 owners are one label below the apex, a base32hex SHA-1 hash
            for rd in rrset:
                if not isinstance(rd, dns.rdtypes.ANY.NSEC3.NSEC3) or rd.algorithm != _SHA1 or rd.flags & ~_OPT_OUT:
                    continue  # RFC 5155 §8.1, §8.2
                if rd.iterations > MAX_ITERATIONS:
                    self.too_costly = True
                    continue
                # A zone's chain has one set of parameters (RFC 5155 §7.1); records with others are not the
                # chain's, and each other salt would cost hashes of its own (CVE-2023-50868): they are ignored,
                # as are records beyond the few a proof needs.
                if parameters is None:
                    parameters = (rd.iterations, rd.salt)
                if (rd.iterations, rd.salt) != parameters or len(self.records) >= _MAX_NSEC3_RECORDS:
                    continue
                self.records.append((rrset.name.labels[0].decode("ascii").lower(), rd))
        self.zone = zone
        self._hashes: dict[tuple[dns.name.Name, bytes, int], str] = {}

    def _hash(self, name: dns.name.Name, rd: dns.rdtypes.ANY.NSEC3.NSEC3) -> str:
        key = (name, rd.salt, rd.iterations)
        found = self._hashes.get(key)
        if found is None:
            found = self._hashes[key] = dnssec.nsec3_hash(name, rd.salt, rd.iterations, _SHA1).lower()
        return found

    def matching(self, name: dns.name.Name) -> dns.rdtypes.ANY.NSEC3.NSEC3 | None:
        return next((rd for owner, rd in self.records if owner == self._hash(name, rd)), None)

    def covering(self, name: dns.name.Name) -> dns.rdtypes.ANY.NSEC3.NSEC3 | None:
        for owner, rd in self.records:
            hashed, following = self._hash(name, rd), _hash_text(rd.next)
            if owner < following:
                inside = owner < hashed < following
            else:  # the last NSEC3 of the chain wraps around; a chain of one covers every other hash
                inside = hashed > owner or hashed < following
            if inside:
                return rd
        return None

    def closest_encloser(self, qname: dns.name.Name) -> tuple[dns.name.Name, dns.rdtypes.ANY.NSEC3.NSEC3] | str:
        """RFC 5155 §8.3: the closest provable encloser of ``qname`` and the NSEC3 covering the next closer name,
        or why there is no proof."""
        if not qname.is_subdomain(self.zone) or qname == self.zone:
            return f"{_text(qname)} has no encloser in {_text(self.zone)}"
        encloser = qname.parent()
        while True:
            record = self.matching(encloser)
            if record is not None:
                if _cut_or_dname(types_of(record)):
                    return f"the NSEC3 of {_text(encloser)} is a delegation or DNAME: it proves nothing below"
                break
            if encloser == self.zone:
                return f"no NSEC3 matches an encloser of {_text(qname)}"
            encloser = encloser.parent()
        next_closer = _next_closer(qname, encloser)
        covering = self.covering(next_closer)
        if covering is None:
            return f"no NSEC3 covers the next closer name {_text(next_closer)}"
        return encloser, covering


def _nsec3_nxdomain(qname: dns.name.Name, nsec3s: _Nsec3s) -> Proof:
    if nsec3s.matching(qname) is not None:
        return Proof(Denial.NSEC3, Verdict.FAILED, f"an NSEC3 matches {_text(qname)}: it exists")
    found = nsec3s.closest_encloser(qname)
    if isinstance(found, str):
        return Proof(Denial.NSEC3, Verdict.FAILED, found)
    encloser, covering = found
    wildcard = _wildcard(encloser)
    if nsec3s.covering(wildcard) is None:  # RFC 5155 §8.4
        return Proof(Denial.NSEC3, Verdict.FAILED, f"no NSEC3 covers the wildcard {_text(wildcard)}")
    if covering.flags & _OPT_OUT:  # RFC 5155 §9.2: an unsigned delegation may hide in an opt-out span
        return Proof(Denial.NSEC3, Verdict.INSECURE, f"{_text(qname)} is in an opt-out span")
    return Proof(Denial.NSEC3, Verdict.PROVEN)


def _nsec3_nodata(qname: dns.name.Name, rdtype: int, nsec3s: _Nsec3s) -> Proof:
    what = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))
    record = nsec3s.matching(qname)
    if record is not None:  # RFC 5155 §8.5, §8.6
        types = types_of(record)
        if rdtype != dns.rdatatype.DS and dns.rdatatype.NS in types and dns.rdatatype.SOA not in types:
            # RFC 4035 §5.4, RFC 6840 §4.1: the parent's record at a cut says nothing of the child's data
            return Proof(Denial.NSEC3, Verdict.FAILED, f"the NSEC3 of {_text(qname)} is the parent side of a cut")
        if rdtype in types or dns.rdatatype.CNAME in types:
            return Proof(Denial.NSEC3, Verdict.FAILED, f"the NSEC3 of {_text(qname)} lists {what} or CNAME")
        return Proof(Denial.NSEC3, Verdict.PROVEN)
    found = nsec3s.closest_encloser(qname)
    if isinstance(found, str):
        return Proof(Denial.NSEC3, Verdict.FAILED, f"no NSEC3 matches {_text(qname)} and {found}")
    encloser, covering = found
    if rdtype == dns.rdatatype.DS and covering.flags & _OPT_OUT:
        # RFC 5155 §8.6: an unsigned delegation may be in the opt-out span
        return Proof(Denial.NSEC3, Verdict.INSECURE, f"{_text(qname)} is in an opt-out span")
    source = nsec3s.matching(_wildcard(encloser))  # RFC 5155 §8.7
    if source is None or types_of(source) & {rdtype, dns.rdatatype.CNAME}:
        return Proof(Denial.NSEC3, Verdict.FAILED, f"no NSEC3 proves that {_text(qname)} has no {what}")
    return Proof(Denial.NSEC3, Verdict.PROVEN)


# --- the claims ------------------------------------------------------------------------------------------------


def _kinds(zone: dns.name.Name, rrsets: Sequence[dns.rrset.RRset]) -> tuple[_Nsecs, _Nsec3s]:
    return _Nsecs(rrsets), _Nsec3s(zone, rrsets)


def _nsec3_unusable(nsec3s: _Nsec3s) -> Proof:
    if nsec3s.too_costly:
        detail = f"the NSEC3 records use more than {MAX_ITERATIONS} hash iterations (RFC 9276 §3.2)"
        return Proof(Denial.NSEC3, Verdict.INSECURE, detail, costly=True)
    return Proof(Denial.NSEC3, Verdict.FAILED, "no NSEC3 record with a known hash algorithm and flags")


def nxdomain(qname: dns.name.Name, zone: dns.name.Name, rrsets: Sequence[dns.rrset.RRset]) -> Proof:
    """Do ``rrsets`` (validated NSEC/NSEC3 of ``zone``) prove that ``qname`` does not exist, wildcard included?"""
    nsecs, nsec3s = _kinds(zone, rrsets)
    if nsecs.records:
        return _nsec_nxdomain(qname, nsecs)
    if not nsec3s.records:
        return _nsec3_unusable(nsec3s)
    return _nsec3_nxdomain(qname, nsec3s)


def nodata(qname: dns.name.Name, rdtype: int, zone: dns.name.Name, rrsets: Sequence[dns.rrset.RRset]) -> Proof:
    """Do ``rrsets`` prove that ``qname`` exists (or matches a wildcard) without ``rdtype`` records? For DS, an
    opt-out span is INSECURE (RFC 5155 §8.6)."""
    nsecs, nsec3s = _kinds(zone, rrsets)
    if nsecs.records:
        return _nsec_nodata(qname, rdtype, nsecs)
    if not nsec3s.records:
        return _nsec3_unusable(nsec3s)
    return _nsec3_nodata(qname, rdtype, nsec3s)


def wildcard_answer(
    qname: dns.name.Name, labels: int, zone: dns.name.Name, rrsets: Sequence[dns.rrset.RRset]
) -> Proof:
    """An answer at ``qname`` whose RRSIG has ``labels`` labels (fewer than the name's) was synthesised from the
    wildcard at the closest encloser (its last ``labels`` labels): do ``rrsets`` prove that the next closer name
    does not exist (RFC 4035 §5.3.4, RFC 5155 §8.8)?"""
    encloser = dns.name.Name(qname.labels[-(labels + 1) :])
    next_closer = _next_closer(qname, encloser)
    nsecs, nsec3s = _kinds(zone, rrsets)
    if nsecs.records:
        if nsecs.covering(next_closer) is None:
            return Proof(Denial.NSEC, Verdict.FAILED, f"no NSEC proves that {_text(next_closer)} does not exist")
        return Proof(Denial.NSEC, Verdict.PROVEN)
    if not nsec3s.records:
        if nsec3s.too_costly:
            return _nsec3_unusable(nsec3s)
        return Proof(Denial.NSEC, Verdict.FAILED, f"a wildcard answer without proof that {_text(qname)} does "
                                                  "not exist")  # fmt: skip
    if nsec3s.covering(next_closer) is None:
        return Proof(Denial.NSEC3, Verdict.FAILED, f"no NSEC3 covers the next closer name {_text(next_closer)}")
    return Proof(Denial.NSEC3, Verdict.PROVEN)


def delegation(
    child: dns.name.Name, zone: dns.name.Name, nxdomain_answer: bool, rrsets: Sequence[dns.rrset.RRset]
) -> Proof:
    """A DS question for ``child`` (one label below what ``zone`` was walked to) got a negative answer: is
    ``child`` a delegation without DS (``Cut.UNSIGNED``), in an opt-out span (``Cut.UNSIGNED``, INSECURE), or no
    cut (``Cut.INSIDE``: a name of the zone, an empty non-terminal or no name at all)? FAILED when the records
    prove none of these."""
    nsecs, nsec3s = _kinds(zone, rrsets)
    if nxdomain_answer:
        proof = nxdomain(child, zone, rrsets)
        return Proof(proof.kind, proof.verdict, proof.detail, Cut.INSIDE if proof.verdict is not Verdict.FAILED
                     else None, proof.costly)  # fmt: skip
    proof = nodata(child, dns.rdatatype.DS, zone, rrsets)
    if proof.verdict is Verdict.FAILED:
        return proof
    if proof.verdict is Verdict.INSECURE:
        return Proof(proof.kind, proof.verdict, proof.detail, Cut.UNSIGNED, proof.costly)
    record: dns.rdata.Rdata | None = nsecs.matching(child) if nsecs.records else nsec3s.matching(child)
    types = types_of(record) if record is not None else set()
    if dns.rdatatype.NS in types and dns.rdatatype.SOA not in types:
        return Proof(proof.kind, Verdict.PROVEN, f"{_text(child)} is delegated without DS", Cut.UNSIGNED)
    return Proof(proof.kind, Verdict.PROVEN, cut=Cut.INSIDE)
