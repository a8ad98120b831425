"""Denial proofs on plain dnspython data (diag.policy.denial): the cases a correct server never sends."""

from __future__ import annotations

import dns.dnssec
import dns.name
import dns.rdatatype
import dns.rrset

from diag.policy.denial import Denial, Verdict, nodata, nxdomain, wildcard_answer

ZONE = dns.name.from_text("example.")


def nsec(owner: str, following: str, types: str = "A RRSIG NSEC") -> dns.rrset.RRset:
    return dns.rrset.from_text(f"{owner}.example.", 60, "IN", "NSEC", f"{following}.example. {types}")


def nsec3(owner_of: str, next_of: str, *, algorithm: int = 1, flags: int = 0, iterations: int = 0,
          types: str = "A RRSIG") -> dns.rrset.RRset:  # fmt: skip
    def hashed(name: str) -> str:
        return dns.dnssec.nsec3_hash(dns.name.from_text(name, ZONE), b"", 0, 1)

    return dns.rrset.from_text(f"{hashed(owner_of)}.example.", 60, "IN", "NSEC3",
                               f"{algorithm} {flags} {iterations} - {hashed(next_of)} {types}")  # fmt: skip


def q(name: str) -> dns.name.Name:
    return dns.name.from_text(name, ZONE)


def test_an_nsec_nxdomain_without_the_wildcard_proof_fails() -> None:
    # b < c.example < d covers the name, but nothing says *.example does not exist (it sorts before "b")
    proof = nxdomain(q("c"), ZONE, [nsec("b", "d")])
    assert (proof.kind, proof.verdict) == (Denial.NSEC, Verdict.FAILED) and "*.example" in proof.detail
    assert nxdomain(q("c"), ZONE, [nsec("b", "d"), nsec("example", "b", "SOA NS RRSIG NSEC")]).verdict is (
        Verdict.PROVEN)


def test_an_nsec_whose_next_owner_is_below_the_name_proves_an_empty_non_terminal_not_nxdomain() -> None:
    assert nxdomain(q("c"), ZONE, [nsec("b", "x.c")]).verdict is Verdict.FAILED
    assert nodata(q("c"), dns.rdatatype.A, ZONE, [nsec("b", "x.c")]).verdict is Verdict.PROVEN


def test_a_parent_side_nsec_proves_nothing_below_the_cut() -> None:
    # RFC 4035 §5.4: the NSEC at the delegation point child.example (NS, no SOA) covers names of the child zone
    proof = nxdomain(q("x.child"), ZONE, [nsec("child", "d", "NS RRSIG NSEC"), nsec("example", "b", "SOA NS")])
    assert proof.verdict is Verdict.FAILED


def test_nodata_fails_when_the_nsec_lists_the_type_or_a_cname() -> None:
    assert nodata(q("b"), dns.rdatatype.A, ZONE, [nsec("b", "d")]).verdict is Verdict.FAILED
    assert nodata(q("b"), dns.rdatatype.TXT, ZONE, [nsec("b", "d", "CNAME RRSIG NSEC")]).verdict is Verdict.FAILED


def test_nsec3_with_an_unknown_hash_algorithm_or_flags_is_ignored() -> None:
    # RFC 5155 §8.1, §8.2: the records would prove it, but cannot be used
    for record in (nsec3("b", "b", algorithm=2), nsec3("b", "b", flags=2)):
        proof = nodata(q("b"), dns.rdatatype.TXT, ZONE, [record])
        assert (proof.kind, proof.verdict) == (Denial.NSEC3, Verdict.FAILED)
    assert nodata(q("b"), dns.rdatatype.TXT, ZONE, [nsec3("b", "b")]).verdict is Verdict.PROVEN


def test_nsec3_above_the_iteration_limit_is_insecure() -> None:
    proof = nodata(q("b"), dns.rdatatype.TXT, ZONE, [nsec3("b", "b", iterations=151)])
    assert proof.verdict is Verdict.INSECURE and "RFC 9276" in proof.detail


def test_a_wildcard_answer_needs_the_next_closer_name_covered() -> None:
    # a.b.example answered from *.example (RRSIG labels 1): b.example must be proven absent
    assert wildcard_answer(q("a.b"), 1, ZONE, []).verdict is Verdict.FAILED
    assert wildcard_answer(q("a.b"), 1, ZONE, [nsec("a", "c")]).verdict is Verdict.PROVEN
    assert wildcard_answer(q("a.b"), 1, ZONE, [nsec("a", "b")]).verdict is Verdict.FAILED  # b exists


def test_the_parent_side_nsec3_of_a_cut_denies_only_ds() -> None:
    # RFC 4035 §5.4, RFC 6840 §4.1: the parent's NSEC3 at child.example (NS, no SOA) proves the child has no DS,
    # and nothing about the child zone's own data: replayed as "child.example has no MX", it is no proof
    cut = nsec3("child", "child", types="NS")
    assert nodata(q("child"), dns.rdatatype.DS, ZONE, [cut]).verdict is Verdict.PROVEN
    assert nodata(q("child"), dns.rdatatype.MX, ZONE, [cut]).verdict is Verdict.FAILED
    # the child's apex record (with SOA) may deny its own types
    assert nodata(q("child"), dns.rdatatype.MX, ZONE, [nsec3("child", "child", types="SOA NS")]).verdict is (
        Verdict.PROVEN)


def test_nsec3_records_that_are_not_a_hash_or_use_other_parameters_are_not_used() -> None:
    record = nsec3("b", "b")
    # an owner label that is no base32hex SHA-1 hash (a hostile signer's byte included) is skipped, not decoded
    bad_owner = dns.rrset.from_text("b\\200d.example.", 60, "IN", "NSEC3", record[0].to_text())
    assert nodata(q("b"), dns.rdatatype.TXT, ZONE, [bad_owner]).verdict is Verdict.FAILED
    # a first record with another salt sets the chain's parameters: the matching record with no salt is not used
    other = dns.rrset.from_text(f"{'0' * 32}.example.", 60, "IN", "NSEC3", "1 0 0 ab " + "1" * 32 + " A")
    assert nodata(q("b"), dns.rdatatype.TXT, ZONE, [other, record]).verdict is Verdict.FAILED
    assert nodata(q("b"), dns.rdatatype.TXT, ZONE, [record]).verdict is Verdict.PROVEN


def test_an_nsec3_record_owned_by_the_root_or_another_zone_is_not_used() -> None:
    # (a hostile zone may sign records of any owner; dnspython validates them all the same)
    record = nsec3("b", "b")[0].to_text()
    for owner in (".", "com.", "x.other."):
        stray = dns.rrset.from_text(owner, 60, "IN", "NSEC3", record)
        assert nodata(q("b"), dns.rdatatype.TXT, ZONE, [stray]).verdict is Verdict.FAILED
