"""SPF (RFC 7208): parsing with positions, macro expansion (the RFC's own examples), the policy tree with its
counts, and check_host() evaluated to each of the seven results."""

from __future__ import annotations

import ipaddress

import pytest

from diag.policy.lookup import ReplyStatus
from diag.policy.spf import (
    MacroContext,
    MacroError,
    Mechanism,
    NodeStatus,
    Qualifier,
    SpfIssueKind,
    SpfReason,
    SpfResult,
    analyze,
    check_host,
    expand,
    parse_record,
    select_record,
)

from .conftest import Zone

M365 = "spf.protection.outlook.com"


def m365(zone: Zone) -> Zone:
    """The cloud's include, shaped like the real one (an include of further ranges)."""
    zone.add(M365, "TXT", "v=spf1 ip4:40.92.0.0/15 include:spfd.protection.outlook.com -all")
    zone.add("spfd.protection.outlook.com", "TXT", "v=spf1 ip4:52.100.0.0/14 ip6:2a01:111:f400::/48 -all")
    return zone


# --- parsing -------------------------------------------------------------------------------------------------


def test_a_record_parses_into_directives_with_qualifiers_and_positions() -> None:
    record = parse_record("v=spf1 ip4:203.0.113.25 -include:_spf.example.com a:mail.example.com/24//64 ~all")
    assert record.valid
    ip4, include, a, all_ = record.directives
    assert (ip4.mechanism, ip4.network, ip4.qualifier) == (Mechanism.IP4, "203.0.113.25/32", Qualifier.PASS)
    assert ip4.position == 7
    assert (include.qualifier, include.domain_spec, include.position) == (Qualifier.FAIL, "_spf.example.com", 24)
    assert (a.domain_spec, a.cidr4, a.cidr6) == ("mail.example.com", 24, 64)
    assert all_.qualifier is Qualifier.SOFTFAIL and record.all_directive == all_
    assert record.lookups == 2


def test_modifiers_are_read_and_redirect_counts_as_a_lookup() -> None:
    record = parse_record("v=spf1 mx redirect=_spf.example.com exp=explain.%{d} unknown-mod=x")
    assert (record.redirect, record.exp) == ("_spf.example.com", "explain.%{d}")
    assert [m.name for m in record.modifiers] == ["redirect", "exp", "unknown-mod"]
    assert record.valid and record.lookups == 2


def test_version_and_mechanism_names_are_case_insensitive() -> None:
    record = parse_record("V=SPF1 IP4:192.0.2.1 MX -ALL")
    assert record.valid and [d.mechanism for d in record.directives] == [Mechanism.IP4, Mechanism.MX, Mechanism.ALL]


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        ("v=spf1 foo -all", 7, "unknown mechanism 'foo'"),
        ("v=spf1 ip4:192.0.2.300", 11, "not an ip4 address"),
        ("v=spf1 ip4:192.0.2.0/33", 20, "invalid prefix length /33"),
        ("v=spf1 ip6:2001:db8::/129", 21, "invalid prefix length /129"),
        ("v=spf1 include", 7, "needs ':'"),
        ("v=spf1 include:example", 15, "top-level label"),
        ("v=spf1 include:%{x}.example.com", 15, "unknown macro letter"),
        ("v=spf1 exists:%{c}.example.com", 14, "only in explanation text"),
        ("v=spf1 exists:%{d0}.example.com", 14, "must not be zero"),
        ("v=spf1 a:exa%mple.com", 12, "must start a macro"),
        ("v=spf1 redirect=a.example.com redirect=b.example.com", 30, "more than once"),
        ("v=spf1 a:ex\tample.com", 11, "not allowed"),
        ("v=spf1 a:exämple.com", 11, "not allowed"),
        ("v=spf1 all:x", 7, "takes no argument"),
        ("v=spf1 ip4:192.0.2.0//64", 20, "only allowed after a or mx"),
    ],
)
def test_syntax_errors_say_where_they_start(text: str, position: int, words: str) -> None:
    record = parse_record(text)
    assert not record.valid
    first = record.issues[0]
    assert (first.position, words in first.message) == (position, True), first


def test_hostile_text_is_a_typed_issue_never_an_exception() -> None:
    assert not parse_record("v=spf1 " + "a" * 100_000).valid
    assert not parse_record("v=spf1 \udcff\x00").valid
    assert parse_record("v=spf1 \udcff").issues[0].message.startswith("unknown mechanism '\\udcff'")


def test_only_records_starting_with_the_version_are_spf_records() -> None:
    texts = ("v=spf10 -all", "google-site-verification=x", "v=spf1", "V=SPF1 -all", "v=spf1-all")
    assert select_record(texts) == ("v=spf1", "V=SPF1 -all")


# --- macros (RFC 7208 §7.4 examples) ---------------------------------------------------------------------------

EXAMPLE = MacroContext("email.example.com", ipaddress.ip_address("192.0.2.3"), "strong-bad@email.example.com")


@pytest.mark.parametrize(
    ("spec", "expanded"),
    [
        ("%{s}", "strong-bad@email.example.com"),
        ("%{o}", "email.example.com"),
        ("%{d}", "email.example.com"),
        ("%{d4}", "email.example.com"),
        ("%{d3}", "email.example.com"),
        ("%{d2}", "example.com"),
        ("%{d1}", "com"),
        ("%{dr}", "com.example.email"),
        ("%{d2r}", "example.email"),
        ("%{l}", "strong-bad"),
        ("%{l-}", "strong.bad"),
        ("%{lr}", "strong-bad"),
        ("%{lr-}", "bad.strong"),
        ("%{l1r-}", "strong"),
        ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
        ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
        ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
        ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
        ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
        ("%{S}", "strong-bad%40email.example.com"),
        ("a%%b%_c%-d", "a%b c%20d"),
    ],
)
def test_macro_expansion_follows_the_rfc_examples(spec: str, expanded: str) -> None:
    assert expand(spec, EXAMPLE) == expanded


def test_ipv6_addresses_expand_to_nibbles() -> None:
    ctx = MacroContext("email.example.com", ipaddress.ip_address("2001:db8::cb01"), "a@email.example.com")
    assert expand("%{ir}.%{v}._spf.%{d2}", ctx) == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
    )


def test_a_sender_without_local_part_is_postmaster_and_long_results_lose_left_labels() -> None:
    ctx = MacroContext("example.com", ipaddress.ip_address("192.0.2.3"), "@example.com")
    assert expand("%{l}", ctx) == "postmaster"
    long = expand("%{d}." + "x" * 60 + "." + "y" * 60 + "." + "z" * 60 + ".w" * 40 + ".example.com", ctx)
    assert len(long) <= 253 and long.endswith(".example.com") and not long.startswith("example.com.x")


def test_a_macro_needing_what_the_context_lacks_is_a_macro_error() -> None:
    with pytest.raises(MacroError):
        expand("%{i}.example.com", MacroContext("example.com"))


# --- the policy tree -------------------------------------------------------------------------------------------


def test_the_tree_has_each_include_with_its_own_record_and_lookup_count(zone: Zone) -> None:
    m365(zone).add("contoso.com", "TXT", "v=spf1 ip4:203.0.113.25 include:spf.protection.outlook.com mx -all")
    zone.add("contoso.com", "MX", "contoso-com.mail.protection.outlook.com")
    analysis = zone.run(analyze("contoso.com"))
    root = analysis.root
    assert (root.status, root.lookups, root.total_lookups) == (NodeStatus.FOUND, 2, 3)
    (cloud,) = root.children
    assert (cloud.domain, cloud.via, cloud.lookups, cloud.total_lookups) == (M365, f"include:{M365}", 1, 1)
    assert cloud.children[0].domain == "spfd.protection.outlook.com" and cloud.children[0].total_lookups == 0
    assert analysis.total_lookups == 3 and analysis.issues == ()
    assert analysis.includes("SPF.protection.outlook.com.") and not analysis.includes("example.com")


def test_more_than_ten_lookups_counted_recursively_is_an_issue(zone: Zone) -> None:
    zone.add("big.example", "TXT", "v=spf1 " + " ".join(f"include:i{n}.example" for n in range(6)) + " -all")
    for n in range(6):
        zone.add(f"i{n}.example", "TXT", f"v=spf1 exists:e{n}.example -all")
        zone.add(f"e{n}.example", "A", "127.0.0.2")
    analysis = zone.run(analyze("big.example"))
    assert analysis.total_lookups == 12
    (issue,) = analysis.issues
    assert (issue.kind, issue.detail) == (SpfIssueKind.TOO_MANY_LOOKUPS, "12 > 10")


def test_void_lookups_are_counted_and_more_than_two_is_an_issue(zone: Zone) -> None:
    zone.add("void.example", "TXT", "v=spf1 a:gone1.void.example mx:gone2.void.example exists:gone3.void.example -all")
    analysis = zone.run(analyze("void.example"))
    assert analysis.void_lookups == 3
    assert analysis.root.void_terms == ("a:gone1.void.example", "mx:gone2.void.example", "exists:gone3.void.example")
    assert analysis.has(SpfIssueKind.TOO_MANY_VOID_LOOKUPS) and analysis.has(SpfIssueKind.VOID_LOOKUP)


def test_an_include_of_an_ancestor_is_a_loop_not_an_endless_walk(zone: Zone) -> None:
    zone.add("a.example", "TXT", "v=spf1 include:b.example -all")
    zone.add("b.example", "TXT", "v=spf1 include:A.example. -all")
    analysis = zone.run(analyze("a.example"))
    loop = analysis.root.children[0].children[0]
    assert loop.status is NodeStatus.LOOP
    assert [i.kind for i in analysis.issues] == [SpfIssueKind.LOOP]
    assert analysis.issues[0].domain == "b.example"


@pytest.mark.parametrize(
    ("target_data", "status"),
    [({}, NodeStatus.NXDOMAIN), ({"A": "192.0.2.1"}, NodeStatus.NO_RECORD), ({"TXT": "not spf"}, NodeStatus.NO_RECORD)],
)
def test_an_include_that_does_not_resolve_is_reported(
    zone: Zone, target_data: dict[str, str], status: NodeStatus
) -> None:
    zone.add("inc.example", "TXT", "v=spf1 include:missing.example -all")
    for rdtype, text in target_data.items():
        zone.add("missing.example", rdtype, text)
    analysis = zone.run(analyze("inc.example"))
    assert analysis.root.children[0].status is status
    (issue,) = analysis.issues
    assert (issue.kind, issue.domain) == (SpfIssueKind.INCLUDE_NOT_FOUND, "inc.example")
    assert issue.term == "include:missing.example"


@pytest.mark.parametrize(
    ("record", "kind"),
    [
        ("v=spf1 +all", SpfIssueKind.PASS_ALL),
        ("v=spf1 ip4:192.0.2.1 all", SpfIssueKind.PASS_ALL),
        ("v=spf1 ?all", SpfIssueKind.NEUTRAL_ALL),
        ("v=spf1 ip4:192.0.2.1", SpfIssueKind.NO_ALL),
        ("v=spf1 ptr -all", SpfIssueKind.PTR_USED),
    ],
)
def test_weak_endings_are_issues(zone: Zone, record: str, kind: SpfIssueKind) -> None:
    zone.add("weak.example", "TXT", record)
    assert [i.kind for i in zone.run(analyze("weak.example")).issues] == [kind]


def test_the_all_that_ends_a_redirected_policy_is_the_target_s(zone: Zone) -> None:
    zone.add("r.example", "TXT", "v=spf1 redirect=_spf.r.example")
    zone.add("_spf.r.example", "TXT", "v=spf1 ip4:192.0.2.0/24 ?all")
    analysis = zone.run(analyze("r.example"))
    assert [i.kind for i in analysis.issues] == [SpfIssueKind.NEUTRAL_ALL]
    assert analysis.root.children[0].via == "redirect=_spf.r.example" and analysis.total_lookups == 1


def test_redirect_beside_all_is_ignored_and_said_so(zone: Zone) -> None:
    zone.add("r.example", "TXT", "v=spf1 -all redirect=_spf.r.example")
    analysis = zone.run(analyze("r.example"))
    assert [i.kind for i in analysis.issues] == [SpfIssueKind.REDIRECT_IGNORED]
    assert analysis.total_lookups == 0 and analysis.root.children == ()


def test_a_redirect_to_nothing_is_reported(zone: Zone) -> None:
    zone.add("r.example", "TXT", "v=spf1 redirect=gone.example")
    assert [i.kind for i in zone.run(analyze("r.example")).issues] == [SpfIssueKind.REDIRECT_NOT_FOUND]


def test_an_mx_with_more_than_ten_names_is_an_issue(zone: Zone) -> None:
    zone.add("m.example", "TXT", "v=spf1 mx -all")
    zone.add("m.example", "MX", *(f"mx{n}.m.example" for n in range(11)))
    assert [i.kind for i in zone.run(analyze("m.example")).issues] == [SpfIssueKind.TOO_MANY_MX_NAMES]


def test_an_include_with_address_macros_is_shown_but_not_walked(zone: Zone) -> None:
    zone.add("mac.example", "TXT", "v=spf1 include:%{ir}.%{v}._spf.mac.example include:_spf.%{d} -all")
    zone.add("_spf.mac.example", "TXT", "v=spf1 -all")
    analysis = zone.run(analyze("mac.example"))
    first, second = analysis.root.children
    assert first.status is NodeStatus.MACRO and second.status is NodeStatus.FOUND
    assert [i.kind for i in analysis.issues] == [SpfIssueKind.NOT_WALKED]


@pytest.mark.parametrize(
    ("records", "status", "kind"),
    [
        ((), NodeStatus.NXDOMAIN, SpfIssueKind.NO_RECORD),
        (("v=spf1 -all", "v=spf1 +all"), NodeStatus.MULTIPLE, SpfIssueKind.MULTIPLE_RECORDS),
        (("v=spf1 ipv4:192.0.2.1 -all",), NodeStatus.SYNTAX, SpfIssueKind.SYNTAX),
    ],
)
def test_the_top_record_missing_doubled_or_broken(
    zone: Zone, records: tuple[str, ...], status: NodeStatus, kind: SpfIssueKind
) -> None:
    if records:
        zone.add("x.example", "TXT", *records)
    analysis = zone.run(analyze("x.example"))
    assert analysis.root.status is status and [i.kind for i in analysis.issues] == [kind]
    assert analysis.published is (status is not NodeStatus.NXDOMAIN)


def test_no_answer_is_a_dns_error_not_a_missing_record(zone: Zone) -> None:
    zone.fail("x.example", "TXT", ReplyStatus.TIMEOUT)
    analysis = zone.run(analyze("x.example"))
    assert analysis.root.status is NodeStatus.DNS_ERROR and analysis.published
    assert [i.kind for i in analysis.issues] == [SpfIssueKind.DNS_ERROR]


# --- check_host() ---------------------------------------------------------------------------------------------


def contoso(zone: Zone, record: str = "v=spf1 ip4:203.0.113.25 include:spf.protection.outlook.com -all") -> Zone:
    return m365(zone).add("contoso.com", "TXT", record)


@pytest.mark.parametrize(
    ("ip", "result", "directive", "path"),
    [
        ("203.0.113.25", SpfResult.PASS, "ip4:203.0.113.25", ()),
        ("40.93.1.2", SpfResult.PASS, "ip4:40.92.0.0/15", (f"include:{M365}",)),
        ("2a01:111:f400::5", SpfResult.PASS, "ip6:2a01:111:f400::/48",
         (f"include:{M365}", "include:spfd.protection.outlook.com")),
        ("198.51.100.7", SpfResult.FAIL, "-all", ()),
        ("::ffff:203.0.113.25", SpfResult.PASS, "ip4:203.0.113.25", ()),
    ],
)  # fmt: skip
def test_check_host_matches_addresses_through_includes(
    zone: Zone, ip: str, result: SpfResult, directive: str, path: tuple[str, ...]
) -> None:
    verdict = contoso(zone).run(check_host(ip, "contoso.com"))
    assert (verdict.result, verdict.reason) == (result, SpfReason.MATCHED)
    assert verdict.matched is not None and (verdict.matched.directive, verdict.matched.path) == (directive, path)
    assert verdict.sender == "postmaster@contoso.com"


def test_evaluation_stops_at_the_first_match(zone: Zone) -> None:
    verdict = contoso(zone).run(check_host("203.0.113.25", "contoso.com"))
    assert verdict.lookups == 0 and zone.asked == [zone.asked[0]]


@pytest.mark.parametrize(("all_", "result"), [("~all", SpfResult.SOFTFAIL), ("?all", SpfResult.NEUTRAL)])
def test_the_all_qualifier_decides_for_strangers(zone: Zone, all_: str, result: SpfResult) -> None:
    zone.add("x.example", "TXT", f"v=spf1 ip4:192.0.2.1 {all_}")
    assert zone.run(check_host("198.51.100.1", "x.example")).result is result


def test_no_match_and_no_all_is_neutral_by_default(zone: Zone) -> None:
    zone.add("x.example", "TXT", "v=spf1 ip4:192.0.2.1")
    verdict = zone.run(check_host("198.51.100.1", "x.example"))
    assert (verdict.result, verdict.reason) == (SpfResult.NEUTRAL, SpfReason.DEFAULT)


@pytest.mark.parametrize(
    ("setup", "result", "reason"),
    [
        (lambda z: z.add("x.example", "A", "192.0.2.1"), SpfResult.NONE, SpfReason.NO_RECORD),
        (lambda z: None, SpfResult.NONE, SpfReason.NO_RECORD),
        (lambda z: z.add("x.example", "TXT", "v=spf1 -all", "v=spf1 ~all"), SpfResult.PERMERROR,
         SpfReason.MULTIPLE_RECORDS),
        (lambda z: z.add("x.example", "TXT", "v=spf1 ip4:bad -all"), SpfResult.PERMERROR, SpfReason.SYNTAX),
        (lambda z: z.fail("x.example", "TXT"), SpfResult.TEMPERROR, SpfReason.DNS_ERROR),
        (lambda z: z.add("x.example", "TXT", "v=spf1 include:gone.example -all"), SpfResult.PERMERROR,
         SpfReason.INCLUDE_NOT_FOUND),
        (lambda z: z.add("x.example", "TXT", "v=spf1 redirect=gone.example"), SpfResult.PERMERROR,
         SpfReason.REDIRECT_NOT_FOUND),
        (lambda z: z.add("x.example", "TXT", "v=spf1 a:a.x.example -all").fail("a.x.example", "A"),
         SpfResult.TEMPERROR, SpfReason.DNS_ERROR),
    ],
)  # fmt: skip
def test_the_error_results(zone: Zone, setup, result: SpfResult, reason: SpfReason) -> None:  # type: ignore[no-untyped-def]
    setup(zone)
    verdict = zone.run(check_host("192.0.2.9", "x.example"))
    assert (verdict.result, verdict.reason) == (result, reason), verdict.detail


def test_an_include_that_fails_does_not_match_and_evaluation_goes_on(zone: Zone) -> None:
    zone.add("x.example", "TXT", "v=spf1 include:other.example ip4:192.0.2.9 -all")
    zone.add("other.example", "TXT", "v=spf1 -all")
    verdict = zone.run(check_host("192.0.2.9", "x.example"))
    assert verdict.result is SpfResult.PASS and verdict.matched is not None
    assert verdict.matched.directive == "ip4:192.0.2.9" and verdict.lookups == 1


def test_the_eleventh_lookup_is_a_permerror(zone: Zone) -> None:
    zone.add("x.example", "TXT", "v=spf1 " + " ".join(f"a:h{n}.x.example" for n in range(11)) + " -all")
    for n in range(11):
        zone.add(f"h{n}.x.example", "A", "198.51.100.1")
    verdict = zone.run(check_host("192.0.2.9", "x.example"))
    assert (verdict.result, verdict.reason, verdict.lookups) == (SpfResult.PERMERROR, SpfReason.TOO_MANY_LOOKUPS, 11)
    assert "a:h10.x.example" in verdict.detail


def test_an_include_loop_ends_in_permerror_by_the_lookup_limit(zone: Zone) -> None:
    zone.add("a.example", "TXT", "v=spf1 include:b.example -all")
    zone.add("b.example", "TXT", "v=spf1 include:a.example -all")
    verdict = zone.run(check_host("192.0.2.9", "a.example"))
    assert (verdict.result, verdict.reason) == (SpfResult.PERMERROR, SpfReason.TOO_MANY_LOOKUPS)


def test_the_third_void_lookup_is_a_permerror(zone: Zone) -> None:
    zone.add("x.example", "TXT", "v=spf1 a:g1.x.example a:g2.x.example a:g3.x.example -all")
    verdict = zone.run(check_host("192.0.2.9", "x.example"))
    assert (verdict.result, verdict.reason, verdict.void_lookups) == (
        SpfResult.PERMERROR, SpfReason.TOO_MANY_VOID_LOOKUPS, 3,
    )  # fmt: skip


def test_mx_matches_the_addresses_of_its_names_and_more_than_ten_names_is_a_permerror(zone: Zone) -> None:
    zone.add("x.example", "TXT", "v=spf1 mx/24 -all").add("x.example", "MX", "mx1.x.example")
    zone.add("mx1.x.example", "A", "192.0.2.1")
    assert zone.run(check_host("192.0.2.200", "x.example")).result is SpfResult.PASS
    many = Zone().add("x.example", "TXT", "v=spf1 mx -all").add("x.example", "MX", *(f"m{n}.x" for n in range(11)))
    verdict = many.run(check_host("192.0.2.1", "x.example"))
    assert (verdict.result, verdict.reason) == (SpfResult.PERMERROR, SpfReason.TOO_MANY_MX_NAMES)


def test_a_uses_the_address_family_of_the_client_and_the_dual_cidr(zone: Zone) -> None:
    zone.add("x.example", "TXT", "v=spf1 a//64 -all").add("x.example", "A", "192.0.2.1")
    zone.add("x.example", "AAAA", "2001:db8::1")
    assert zone.run(check_host("2001:db8::ffff", "x.example")).result is SpfResult.PASS
    assert zone.run(check_host("192.0.2.2", "x.example")).result is SpfResult.FAIL


def test_exists_expands_macros_with_the_client_address(zone: Zone) -> None:
    zone.add("x.example", "TXT", "v=spf1 exists:%{ir}.%{l}._spf.%{d} -all")
    zone.add("9.2.0.192.john._spf.x.example", "A", "127.0.0.2")
    assert zone.run(check_host("192.0.2.9", "x.example", "john@x.example")).result is SpfResult.PASS
    assert zone.run(check_host("192.0.2.9", "x.example", "jane@x.example")).result is SpfResult.FAIL


def test_ptr_matches_only_validated_names(zone: Zone) -> None:
    zone.add("x.example", "TXT", "v=spf1 ptr -all")
    zone.add("9.2.0.192.in-addr.arpa", "PTR", "evil.attacker.example", "mail.x.example")
    zone.add("mail.x.example", "A", "192.0.2.9")
    assert zone.run(check_host("192.0.2.9", "x.example")).result is SpfResult.PASS
    forged = Zone().add("x.example", "TXT", "v=spf1 ptr -all").add("9.2.0.192.in-addr.arpa", "PTR", "mail.x.example")
    assert forged.run(check_host("192.0.2.9", "x.example")).result is SpfResult.FAIL


def test_redirect_evaluates_the_target_s_policy(zone: Zone) -> None:
    zone.add("x.example", "TXT", "v=spf1 redirect=_spf.x.example")
    zone.add("_spf.x.example", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    verdict = zone.run(check_host("192.0.2.9", "x.example"))
    assert verdict.result is SpfResult.PASS and verdict.matched is not None
    assert verdict.matched.domain == "_spf.x.example" and verdict.lookups == 1
