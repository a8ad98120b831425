"""DNSSEC validation against the lab's DNS server, which signs zones at query time (diag.lab.dns)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import dns.dnssec
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from diag.lab.dns import Behaviour, DnsServer, ZoneData
from diag.net.dns import Nameserver, Resolver
from diag.policy.dnssec import (
    ROOT_ANCHORS,
    Chains,
    Denial,
    DnssecResult,
    Method,
    Reason,
    Security,
    TrustAnchor,
    ad_bit_trustworthy,
    from_ad_bit,
    parse_anchors,
    validate,
)
from diag.policy.lookup import Process, Reply, ReplyStatus, Signed, ask, drive

IP = "127.0.53.7"
T = TypeVar("T")


def run(factory: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(20):
            return await factory()

    return asyncio.run(bounded())


def world() -> tuple[ZoneData, str]:
    """example (signed) with a signed child, an unsigned child and a child whose signatures expired."""
    data = ZoneData()
    for apex in ("example", "signed.example", "plain.example", "stale.example"):
        data.add_zone(apex)
    data.add("mx.example", "A", "127.0.0.3")
    data.add("mx.signed.example", "A", "127.0.0.1")
    data.add("_25._tcp.mx.signed.example", "TLSA", "3 1 1 " + "ab" * 32)
    data.add("alias.signed.example", "CNAME", "mx.signed.example.")
    data.add("mx.plain.example", "A", "127.0.0.2")
    data.add("mx.stale.example", "A", "127.0.0.4")
    data.add("broken.example", "A", "127.0.0.5")
    data.set_behaviour("broken.example", Behaviour.SERVFAIL)
    data.add("*.wild.signed.example", "TXT", "from the wildcard")
    # NSEC3 zones: a correct one (with a wildcard, an empty non-terminal and a CNAME target), one whose denials
    # do not cover the name, an opt-out one with an unsigned child, one with too many hash iterations.
    for apex in ("hashed.example", "badproof.example", "optout.example", "child.optout.example", "costly.example"):
        data.add_zone(apex)
    data.add("mx.hashed.example", "A", "127.0.0.6")
    data.add("_25._tcp.mx.hashed.example", "TLSA", "3 1 1 " + "cd" * 32)
    data.add("*.wild.hashed.example", "A", "127.0.0.7")
    data.add("www.signed.example", "CNAME", "mx.hashed.example.")
    data.add_all([(f"c{n}.signed.example", "CNAME", [f"c{n + 1}.signed.example."]) for n in range(10)])
    data.add("c10.signed.example", "CNAME", "mx.signed.example.")
    data.add("mx.badproof.example", "A", "127.0.0.8")
    data.add("mx.child.optout.example", "A", "127.0.0.9")
    data.add("mx.costly.example", "A", "127.0.0.10")
    anchor = data.sign_zone("example")
    data.sign_zone("signed.example")
    data.sign_zone("stale.example", expired=True)
    data.sign_zone("hashed.example", nsec3="1 0 0 -")
    data.sign_zone("badproof.example", nsec3="1 0 0 -", broken_denial=True)
    data.sign_zone("optout.example", nsec3="1 0 0 -", opt_out=True)
    data.sign_zone("costly.example", nsec3="1 0 151 abcd")
    return data, anchor


@asynccontextmanager
async def lab_resolver() -> AsyncIterator[tuple[Resolver, str, ZoneData]]:
    data, anchor = world()
    server = DnsServer(data)
    port = await server.start(IP)
    resolver = Resolver([Nameserver(IP, port)], timeout=3.0)
    try:
        yield resolver, anchor, data
    finally:
        await resolver.aclose()
        await server.close()


def check(name: str, rdtype: str, *, anchors: Callable[[str], list[TrustAnchor]] | None = None,
          now: float | None = None) -> DnssecResult:  # fmt: skip
    async def body() -> DnssecResult:
        async with lab_resolver() as (resolver, anchor, _data):
            chosen = anchors(anchor) if anchors else [TrustAnchor("example", dnskey=(anchor,))]
            return await drive(validate(name, rdtype, chosen, now=now), resolver)

    return run(body)


def test_data_in_a_signed_child_zone_is_secure_through_its_ds() -> None:
    result = check("_25._tcp.mx.signed.example", "TLSA")
    assert (result.security, result.reason, result.method) == (Security.SECURE, Reason.VALIDATED, Method.VALIDATED)
    assert result.chain == ("example", "signed.example") and result.zone == "signed.example"
    assert result.records == ("3 1 1 " + "ab" * 32,)


def test_a_ds_anchor_works_like_a_dnskey_anchor() -> None:
    def ds_anchor(dnskey: str) -> list[TrustAnchor]:
        key = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DNSKEY, dnskey)
        return [TrustAnchor("example", ds=(dns.dnssec.make_ds("example.", key, "SHA256").to_text(),))]

    assert check("mx.example", "A", anchors=ds_anchor).security is Security.SECURE


def test_nxdomain_and_nodata_are_proven_by_nsec() -> None:
    missing = check("nothing.signed.example", "A")
    no_type = check("mx.signed.example", "AAAA")
    assert (missing.security, missing.status, missing.denial) == (Security.SECURE, ReplyStatus.NXDOMAIN, Denial.NSEC)
    assert (no_type.security, no_type.status, no_type.denial) == (Security.SECURE, ReplyStatus.NODATA, Denial.NSEC)


def test_an_empty_non_terminal_is_proven_by_the_nsec_covering_it() -> None:
    result = check("_tcp.mx.signed.example", "TLSA")
    assert (result.security, result.status, result.denial) == (Security.SECURE, ReplyStatus.NODATA, Denial.NSEC)


def test_a_delegation_without_ds_is_insecure() -> None:
    result = check("mx.plain.example", "A")
    assert (result.security, result.reason, result.zone) == (Security.INSECURE, Reason.INSECURE_DELEGATION,
                                                             "plain.example")  # fmt: skip
    assert result.chain == ("example",)
    assert (result.status, result.records) == (ReplyStatus.OK, ("127.0.0.2",))  # the answer, unsigned


def test_expired_signatures_are_bogus() -> None:
    result = check("mx.stale.example", "A")
    assert (result.security, result.reason, result.zone) == (Security.BOGUS, Reason.EXPIRED, "stale.example")


def test_signatures_checked_at_another_time() -> None:
    later = check("mx.example", "A", now=time.time() + 30 * 86400)
    earlier = check("mx.example", "A", now=time.time() - 30 * 86400)
    assert (later.security, later.reason) == (Security.BOGUS, Reason.EXPIRED)
    assert (earlier.security, earlier.reason) == (Security.BOGUS, Reason.NOT_YET_VALID)


def test_an_anchor_that_matches_no_key_is_bogus() -> None:
    data = ZoneData()
    data.add_zone("example")
    other = data.sign_zone("example")  # another zone's key: the lab's own key differs
    result = check("mx.example", "A", anchors=lambda _anchor: [TrustAnchor("example", dnskey=(other,))])
    assert (result.security, result.reason) == (Security.BOGUS, Reason.NO_MATCHING_KEY)


def test_an_anchor_for_an_unsigned_zone_finds_no_dnskey() -> None:
    def anchors(anchor: str) -> list[TrustAnchor]:
        return [TrustAnchor("example", dnskey=(anchor,)), TrustAnchor("plain.example", dnskey=(anchor,))]

    result = check("mx.plain.example", "A", anchors=anchors)
    assert (result.security, result.reason) == (Security.BOGUS, Reason.NO_DNSKEY)


def test_the_deepest_covering_anchor_is_used_and_none_is_indeterminate() -> None:
    outside = check("mail.contoso.com", "A")
    assert (outside.security, outside.reason) == (Security.INDETERMINATE, Reason.NO_ANCHOR)


def test_an_alias_is_validated_link_by_link() -> None:
    result = check("alias.signed.example", "A")
    assert (result.security, result.reason, result.aliases) == (Security.SECURE, Reason.VALIDATED,
                                                                ("mx.signed.example",))  # fmt: skip
    assert result.records == ("127.0.0.1",)


def test_a_failing_server_is_indeterminate_not_bogus() -> None:
    result = check("broken.example", "A")
    assert (result.security, result.reason) == (Security.INDETERMINATE, Reason.DNS_ERROR)


def test_the_lab_sets_no_ad_bit_so_the_ad_method_says_insecure() -> None:
    async def body() -> DnssecResult:
        async with lab_resolver() as (resolver, _anchor, _data):
            return await drive(from_ad_bit("mx.signed.example", "A"), resolver)

    result = run(body)
    assert (result.security, result.reason, result.method) == (Security.INSECURE, Reason.NO_AD_BIT, Method.AD_BIT)


def answered(process: Process[DnssecResult], reply: Reply) -> DnssecResult:
    assert process.question is not None and process.question.dnssec
    process.answer(reply)
    return process.result


def test_a_validating_resolvers_ad_bit_is_secure() -> None:
    reply = Reply(ReplyStatus.OK, ("127.0.0.1",), signed=Signed(authenticated=True))
    result = answered(from_ad_bit("mx.contoso.com", "A"), reply)
    assert (result.security, result.reason, result.records) == (Security.SECURE, Reason.AD_BIT, ("127.0.0.1",))
    assert result.aliases == ()


def test_the_ad_bit_names_the_last_cname_target_the_resolver_followed() -> None:
    # Given the validating resolver found the address through CNAMEs (it follows them itself)
    reply = Reply(ReplyStatus.OK, ("127.0.0.1",), canonical_name="host.cloud.example",
                  signed=Signed(authenticated=True))  # fmt: skip
    result = answered(from_ad_bit("mx.contoso.com", "A"), reply)
    # Then the result knows the fully expanded name (what DANE looks up TLSA records at: RFC 7672 §2.2.2)
    assert (result.security, result.aliases) == (Security.SECURE, ("host.cloud.example",))


def test_no_answer_from_the_validating_resolver_is_indeterminate() -> None:
    result = answered(from_ad_bit("mx.contoso.com", "A"), Reply(ReplyStatus.ERROR, detail="SERVFAIL"))
    assert (result.security, result.detail) == (Security.INDETERMINATE, "SERVFAIL")


def test_unsigned_data_in_a_signed_zone_is_bogus() -> None:
    # What a stripping middlebox would hand over: the DNSKEY is fine, the answer comes without its RRSIG.
    async def body() -> DnssecResult:
        async with lab_resolver() as (resolver, anchor, _data):
            process = validate("mx.example", "A", [TrustAnchor("example", dnskey=(anchor,))])
            while (question := process.question) is not None:
                reply = await ask(resolver, question)
                if question.rdtype == "A" and reply.signed is not None:
                    reply = Reply(reply.status, reply.records, signed=Signed(reply.signed.rrset))
                process.answer(reply)
            return process.result

    result = run(body)
    assert (result.security, result.reason) == (Security.BOGUS, Reason.NO_SIGNATURE)


@pytest.mark.parametrize(
    ("servers", "trusted"),
    [((), False), ((Nameserver("127.0.0.53"),), True), ((Nameserver("::1", 5353),), True),
     ((Nameserver("127.0.0.1"), Nameserver("192.0.2.53")), False)],
)  # fmt: skip
def test_only_a_resolver_on_this_host_is_trusted_for_the_ad_bit(servers: tuple[Nameserver, ...], trusted: bool) -> None:
    assert ad_bit_trustworthy(servers) is trusted


def test_a_dnssec_question_after_a_plain_one_is_asked_again_with_do() -> None:
    async def body() -> tuple[bool, bool, int]:
        async with lab_resolver() as (resolver, _anchor, _data):
            plain = await resolver.query("mx.signed.example", "A")
            signed = await resolver.query("mx.signed.example", "A", dnssec=True)
            again = await resolver.query("mx.signed.example", "A")
            return plain.dnssec, signed.dnssec and again.dnssec, len(signed.signatures)

    assert run(body) == (False, True, 1)


def test_names_are_compared_in_canonical_form() -> None:
    assert check("MX.Signed.Example.", "a").security is Security.SECURE


def test_trust_anchors_are_read_from_zone_file_lines() -> None:
    text = """; IANA's root anchors
    . 172800 IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D
    example. IN DNSKEY 257 3 13 mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==
    """
    root, lab = parse_anchors(text)
    assert (root.zone, lab.zone) == (".", "example.")
    assert root.ds == (ROOT_ANCHORS[0].ds[0],) and len(lab.dnskey) == 1


@pytest.mark.parametrize(("text", "words"), [("", "no DS or DNSKEY"), ("example. IN A 192.0.2.1", "line 1"),
                                              ("\n. DS 20326 8 2 zz", "line 2: not a valid DS")])  # fmt: skip
def test_trust_anchor_files_that_say_nothing_usable_are_refused(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_anchors(text)


@pytest.mark.parametrize(
    ("name", "rdtype", "status"),
    [("nothing.hashed.example", "A", ReplyStatus.NXDOMAIN), ("a.b.nothing.hashed.example", "A", ReplyStatus.NXDOMAIN),
     ("mx.hashed.example", "AAAA", ReplyStatus.NODATA), ("_tcp.mx.hashed.example", "TLSA", ReplyStatus.NODATA),
     ("_25._tcp.mx.hashed.example", "TLSA", ReplyStatus.OK)],
)  # fmt: skip
def test_nsec3_denials_are_proven(name: str, rdtype: str, status: ReplyStatus) -> None:
    # NXDOMAIN: closest encloser, next closer, wildcard (RFC 5155 §8.4); NODATA and the empty non-terminal: the
    # matching NSEC3 (§8.5); the TLSA's walk down proves the DS denials of the names on the way.
    result = check(name, rdtype)
    assert (result.security, result.status) == (Security.SECURE, status), result.detail
    assert result.chain == ("example", "hashed.example")
    assert result.denial == (Denial.NSEC3 if status is not ReplyStatus.OK else None)


@pytest.mark.parametrize(
    ("name", "rdtype", "status", "denial"),
    [("a.wild.signed.example", "TXT", ReplyStatus.OK, Denial.NSEC),
     ("x.y.wild.signed.example", "A", ReplyStatus.NODATA, Denial.NSEC),
     ("host.wild.hashed.example", "A", ReplyStatus.OK, Denial.NSEC3),
     ("host.wild.hashed.example", "TXT", ReplyStatus.NODATA, Denial.NSEC3)],
)  # fmt: skip
def test_wildcard_answers_come_with_the_proof_that_the_name_does_not_exist(
    name: str, rdtype: str, status: ReplyStatus, denial: Denial
) -> None:
    result = check(name, rdtype)
    assert (result.security, result.status) == (Security.SECURE, status), result.detail
    assert result.denial is (denial if status is ReplyStatus.NODATA else Denial.NSEC if "signed" in name
                             else Denial.NSEC3)  # fmt: skip


def test_a_denial_that_does_not_cover_the_name_is_bogus() -> None:
    result = check("nothing.badproof.example", "A")
    assert (result.security, result.reason, result.zone) == (Security.BOGUS, Reason.DENIAL_MISMATCH,
                                                             "badproof.example")  # fmt: skip
    assert "covers" in result.detail
    assert check("mx.badproof.example", "A").security is Security.SECURE  # a positive answer needs no denial


def test_an_unsigned_delegation_in_an_opt_out_span_is_insecure() -> None:
    result = check("mx.child.optout.example", "A")
    assert (result.security, result.reason, result.zone) == (Security.INSECURE, Reason.OPT_OUT,
                                                             "child.optout.example")  # fmt: skip
    assert result.records == ("127.0.0.9",)
    # RFC 5155 §9.2: an NXDOMAIN whose next closer name is in an opt-out span may hide an unsigned delegation
    assert (check("nothing.optout.example", "A").security, check("nothing.optout.example", "A").reason) == (
        Security.INSECURE, Reason.OPT_OUT)


def test_nsec3_with_more_iterations_than_validators_compute_is_insecure() -> None:
    result = check("nothing.costly.example", "A")
    assert (result.security, result.reason) == (Security.INSECURE, Reason.NSEC3_ITERATIONS)


def test_a_cname_into_another_signed_zone_is_secure_through_both() -> None:
    result = check("www.signed.example", "A")
    assert (result.security, result.aliases, result.records) == (Security.SECURE, ("mx.hashed.example",),
                                                                 ("127.0.0.6",))  # fmt: skip
    assert result.chain == ("example", "signed.example", "hashed.example")


def test_an_alias_into_a_bogus_or_unsigned_zone_takes_the_worse_state() -> None:
    stale, plain = check("mx.stale.example", "A"), check("mx.plain.example", "A")
    assert (stale.security, plain.security) == (Security.BOGUS, Security.INSECURE)

    async def body() -> tuple[DnssecResult, DnssecResult]:
        async with lab_resolver() as (resolver, anchor, data):
            data.add("tostale.signed.example", "CNAME", "mx.stale.example.")
            data.add("toplain.signed.example", "CNAME", "mx.plain.example.")
            anchors = [TrustAnchor("example", dnskey=(anchor,))]
            return (await drive(validate("tostale.signed.example", "A", anchors), resolver),
                    await drive(validate("toplain.signed.example", "A", anchors), resolver))

    bogus, insecure = run(body)
    assert (bogus.security, bogus.reason, bogus.zone) == (Security.BOGUS, Reason.EXPIRED, "stale.example")
    assert (insecure.security, insecure.records) == (Security.INSECURE, ("127.0.0.2",))


def test_a_chain_of_more_cnames_than_followed_is_indeterminate() -> None:
    result = check("c0.signed.example", "A")
    assert (result.security, result.reason) == (Security.INDETERMINATE, Reason.CNAME)
    assert len(result.aliases) == 8 and check("c3.signed.example", "A").security is Security.SECURE


# A run's validated steps of the chain of trust (Chains): walked once, then taken as they are.

CHAIN_CASES = [
    ("mx.example", "A"), ("_25._tcp.mx.signed.example", "TLSA"), ("nothing.signed.example", "A"),
    ("mx.plain.example", "A"), ("mx.stale.example", "A"), ("nothing.stale.example", "A"), ("mx.hashed.example", "A"),
    ("www.signed.example", "A"), ("mx.child.optout.example", "A"), ("broken.example", "A"),
    ("mx.badproof.example", "AAAA"), ("_25._tcp.mx.signed.example", "TLSA"),
]  # fmt: skip


def test_a_runs_chains_give_every_answer_the_state_a_fresh_walk_gives_with_fewer_questions() -> None:
    async def body() -> tuple[list[tuple[DnssecResult, int]], list[tuple[DnssecResult, int]]]:
        async with lab_resolver() as (resolver, anchor, _data):
            anchors = [TrustAnchor("example", dnskey=(anchor,))]
            chains = Chains()

            async def each(shared: Chains | None) -> list[tuple[DnssecResult, int]]:
                done = []
                for name, rdtype in CHAIN_CASES:
                    process = validate(name, rdtype, anchors, chains=shared)
                    done.append((await drive(process, resolver), process.asked))
                return done

            return await each(None), await each(chains)

    fresh, shared = run(body)
    assert [result for result, _ in shared] == [result for result, _ in fresh]
    # the first walk down to example's keys is the same; after it, every step known is not asked for again
    assert shared[0][1] == fresh[0][1]
    assert all(with_chains <= alone for (_, with_chains), (_, alone) in zip(shared, fresh, strict=True))
    assert sum(asked for _, asked in shared) < sum(asked for _, asked in fresh)
    # the same name again: only the answer itself
    assert shared[-1][1] == 1
    assert {result.security for result, _ in shared} == {Security.SECURE, Security.INSECURE, Security.BOGUS,
                                                         Security.INDETERMINATE}  # fmt: skip


def test_a_step_that_could_not_be_decided_is_not_kept_for_the_run() -> None:
    # Given one run's Chains and a name whose DNS fails on the way (broken.example answers SERVFAIL)
    async def body() -> tuple[int, int, DnssecResult]:
        async with lab_resolver() as (resolver, anchor, _data):
            anchors = [TrustAnchor("example", dnskey=(anchor,))]
            chains = Chains()
            first = validate("mx.broken.example", "A", anchors, chains=chains)
            await drive(first, resolver)
            again = validate("mx.broken.example", "A", anchors, chains=chains)
            result = await drive(again, resolver)
            return first.asked, again.asked, result

    first, again, result = run(body)
    # Then the failing step is asked again (a timeout or a process out of questions must not fail every later
    # name of the run), while example's keys, validated, are not
    assert result.security is Security.INDETERMINATE
    assert again == first - 1


def test_a_cname_target_whose_last_label_ends_in_an_escaped_dot_is_a_state_not_a_crash() -> None:
    # Given a signed alias whose target's last label is the literal "example." (a hostile zone's escape)
    async def body() -> DnssecResult:
        data, anchor = world()
        data.add("esc.signed.example", "CNAME", "a.b.example\\..")
        server = DnsServer(data)
        port = await server.start(IP)
        try:
            resolver = Resolver([Nameserver(IP, port)], timeout=3.0)
            anchors = [TrustAnchor("example", dnskey=(anchor,))]
            return await drive(validate("esc.signed.example", "A", anchors), resolver)
        finally:
            await server.close()

    # Then the validation ends with a state (the target cannot be asked), not an exception
    result = run(body)
    assert result.security is Security.INDETERMINATE and result.aliases


def test_a_forged_alias_in_a_ds_answer_does_not_make_the_walk_skip_a_secure_delegation() -> None:
    # Given an attacker who answers the DS question of signed.example (a secure delegation) with an alias, with or
    # without a forged CNAME record to back it
    async def forged(mode: str) -> DnssecResult:
        async with lab_resolver() as (resolver, anchor, _data):
            process = validate("_25._tcp.mx.signed.example", "TLSA", [TrustAnchor("example", dnskey=(anchor,))])
            while (question := process.question) is not None:
                if (question.name, question.rdtype) == ("signed.example", "DS"):
                    reply = Reply(ReplyStatus.OK, ("1 2 3 4",), canonical_name="evil.example", signed=Signed())
                elif (question.name, question.rdtype) == ("signed.example", "CNAME") and mode == "cname":
                    record = dns.rrset.from_text("signed.example.", 60, "IN", "CNAME", "evil.example.")
                    reply = Reply(ReplyStatus.OK, ("evil.example",), signed=Signed(record, ()))
                else:
                    reply = await ask(resolver, question)
                process.answer(reply)
            return process.result

    # Then the alias is checked as the zone's signed data: an unsigned one is bogus, a missing one undecided; the
    # walk never goes on inside example as though there were no cut
    unsigned = run(lambda: forged("cname"))
    missing = run(lambda: forged("none"))
    assert (unsigned.security, unsigned.reason) == (Security.BOGUS, Reason.NO_SIGNATURE)
    assert missing.security is Security.INDETERMINATE


def test_names_below_an_alias_and_aliases_from_wildcards_are_validated() -> None:
    # Given TLSA records below aliased MX host names (RFC 7672 §2.2.2), in an NSEC and an NSEC3 zone, and aliases
    # synthesised from wildcards, one in a zone whose NSEC3 records use too many iterations
    async def body() -> list[DnssecResult]:
        data, anchor = world()
        data.add("_25._tcp.alias.signed.example", "TLSA", "3 1 1 " + "ef" * 32)
        data.add("mx2.hashed.example", "CNAME", "mx.signed.example.")
        data.add("_25._tcp.mx2.hashed.example", "TLSA", "3 1 1 " + "ef" * 32)
        data.add("*.w.costly.example", "CNAME", "mx.signed.example.")
        server = DnsServer(data)
        port = await server.start(IP)
        try:
            resolver = Resolver([Nameserver(IP, port)], timeout=3.0)
            anchors = [TrustAnchor("example", dnskey=(anchor,))]
            return [await drive(validate(name, rdtype, anchors), resolver) for name, rdtype in (
                ("_25._tcp.alias.signed.example", "TLSA"), ("_25._tcp.mx2.hashed.example", "TLSA"),
                ("x.w.costly.example", "A"))]  # fmt: skip
        finally:
            await server.close()

    below, below3, costly = run(body)
    # Then the TLSA records are secure, and the alias behind the unusable denial is insecure with its answer and
    # target still known (the walk goes on to what the alias points at)
    assert below.security is Security.SECURE and below3.security is Security.SECURE
    assert (costly.security, costly.status, costly.records) == (Security.INSECURE, ReplyStatus.OK, ("127.0.0.1",))
    assert costly.aliases == ("mx.signed.example",)
