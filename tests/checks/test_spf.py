"""The spf check: judgement of policy facts, and the lab's seed and SPF defect domains."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from checks import default_registry
from checks.spf import CHECK, Sender, SenderVerdict, SpfFacts, SpfNodeRow, assess, cloud_include, senders, view
from diag.codec import encode
from diag.config import AcceptedDomain, InboundConnector, Organization
from diag.config.model import ConnectorType
from diag.evidence import Observed
from diag.lab.runner import Lab
from diag.model import DomainReport
from diag.policy.spf import (
    NodeStatus,
    SpfAnalysis,
    SpfIssue,
    SpfIssueKind,
    SpfMatch,
    SpfNode,
    SpfReason,
    SpfResult,
    SpfVerdict,
)
from diag.runner import run_checks

from .conftest import codes_of

DOMAIN = "contoso.com"
FOUND = SpfNode(DOMAIN, "", NodeStatus.FOUND, lookups=1, total_lookups=1)
HEALTHY = SpfAnalysis(DOMAIN, FOUND, 1, 0, (), ("spf.protection.outlook.com",))


def judge(analysis: SpfAnalysis = HEALTHY, **facts: object) -> list[tuple[str, str]]:
    findings = assess(SpfFacts(DOMAIN, analysis, **facts))  # type: ignore[arg-type]
    for finding in findings:
        assert finding.severity is CHECK.codes[finding.code]
        assert finding.subject.startswith(DOMAIN)
    return [(f.code, f.message) for f in findings]


def test_a_healthy_policy_is_ok_and_names_the_lookups_used() -> None:
    ((code, message),) = judge()
    assert code == "SPF_OK" and "using 1 of 10 DNS lookups" in message


def test_no_record_is_missing_and_nothing_else() -> None:
    absent = SpfAnalysis(DOMAIN, SpfNode(DOMAIN, "", NodeStatus.NO_RECORD), 0, 0,
                         (SpfIssue(SpfIssueKind.NO_RECORD, DOMAIN),))  # fmt: skip
    assert [code for code, _ in judge(absent, cloud_include="spf.protection.outlook.com")] == ["SPF_MISSING"]


@pytest.mark.parametrize(
    ("issue", "code", "words"),
    [
        (SpfIssue(SpfIssueKind.MULTIPLE_RECORDS, DOMAIN, "", "2 records"), "SPF_MULTIPLE", "2 records"),
        (SpfIssue(SpfIssueKind.SYNTAX, "a.example", "include:a.example", "at 7: unknown mechanism"), "SPF_SYNTAX",
         "reached by include:a.example"),
        (SpfIssue(SpfIssueKind.DNS_ERROR, DOMAIN, "", "SERVFAIL"), "SPF_DNS_ERROR", "SERVFAIL"),
        (SpfIssue(SpfIssueKind.TOO_MANY_LOOKUPS, DOMAIN, "", "11 > 10"), "SPF_TOO_MANY_LOOKUPS", "more than the 10"),
        (SpfIssue(SpfIssueKind.TOO_MANY_MX_NAMES, DOMAIN, "mx", "12 > 10"), "SPF_TOO_MANY_LOOKUPS", "12 > 10"),
        (SpfIssue(SpfIssueKind.TOO_MANY_VOID_LOOKUPS, DOMAIN, "", "3 > 2"), "SPF_TOO_MANY_VOID_LOOKUPS", "the 2"),
        (SpfIssue(SpfIssueKind.VOID_LOOKUP, DOMAIN, "a:gone.example", "gone.example has no records"),
         "SPF_VOID_LOOKUP", "a:gone.example"),
        (SpfIssue(SpfIssueKind.INCLUDE_NOT_FOUND, DOMAIN, "include:gone.example", "nxdomain"),
         "SPF_INCLUDE_NOT_FOUND", "include:gone.example"),
        (SpfIssue(SpfIssueKind.REDIRECT_NOT_FOUND, DOMAIN, "redirect=gone.example", "no-record"),
         "SPF_INCLUDE_NOT_FOUND", "redirect=gone.example"),
        (SpfIssue(SpfIssueKind.LOOP, DOMAIN, "include:contoso.com", "contoso.com is already being evaluated"),
         "SPF_LOOP", "include:contoso.com"),
        (SpfIssue(SpfIssueKind.PASS_ALL, DOMAIN, "+all"), "SPF_PASS_ALL", "+all"),
        (SpfIssue(SpfIssueKind.NEUTRAL_ALL, DOMAIN, "?all"), "SPF_NEUTRAL_ALL", "?all"),
        (SpfIssue(SpfIssueKind.NO_ALL, DOMAIN), "SPF_NO_ALL", "neither an all term nor a redirect"),
        (SpfIssue(SpfIssueKind.REDIRECT_IGNORED, DOMAIN, "redirect=b.example"), "SPF_REDIRECT_IGNORED",
         "redirect=b.example"),
        (SpfIssue(SpfIssueKind.PTR_USED, DOMAIN, "ptr"), "SPF_PTR", "§5.5"),
        (SpfIssue(SpfIssueKind.NOT_WALKED, DOMAIN, "include:%{i}.x.example", "macros need an address"),
         "SPF_NOT_WALKED", "macros need an address"),
    ],
)  # fmt: skip
def test_each_problem_of_the_tree_has_its_code(issue: SpfIssue, code: str, words: str) -> None:
    found = judge(replace(HEALTHY, issues=(issue,), total_lookups=11, void_lookups=3))
    assert found[-1][0] == code and words in found[-1][1]
    # a notice leaves the verdict OK, anything worse replaces it
    assert (found[0][0] == "SPF_OK") is (CHECK.codes[code].label in ("info", "notice"))


def test_the_clouds_include_is_required_with_a_configuration() -> None:
    found = judge(replace(HEALTHY, include_domains=()), cloud_include="spf.protection.outlook.com")
    assert [code for code, _ in found] == ["SPF_CLOUD_INCLUDE_MISSING"]
    assert "does not include spf.protection.outlook.com" in found[0][1]


def test_each_sender_is_judged_by_its_evaluated_result() -> None:
    passing = SpfVerdict("192.0.2.1", DOMAIN, "postmaster@contoso.com", SpfResult.PASS, SpfReason.MATCHED,
                         SpfMatch("ip4:192.0.2.1", DOMAIN))  # fmt: skip
    failing = SpfVerdict("192.0.2.9", DOMAIN, "postmaster@contoso.com", SpfResult.FAIL, SpfReason.MATCHED,
                         SpfMatch("-all", DOMAIN))  # fmt: skip
    found = judge(senders=(SenderVerdict(Sender("192.0.2.1", "--sender-ip"), passing),
                           SenderVerdict(Sender("192.0.2.9", "inbound connector 'On-prem'"), failing)))  # fmt: skip
    assert [code for code, _ in found] == ["SPF_SENDER_PASS", "SPF_SENDER_NOT_PERMITTED"]
    assert "matched ip4:192.0.2.1" in found[0][1] and "gets SPF fail" in found[1][1] and "On-prem" in found[1][1]


def test_the_cloud_include_comes_from_the_configuration_or_from_exchange_onlines_mx_host() -> None:
    assert cloud_include(Organization(spf_include="spf.example.net")) == "spf.example.net"
    exchange_online = Organization(mx_host="contoso-com.mail.protection.outlook.com")
    assert cloud_include(exchange_online) == "spf.protection.outlook.com"
    assert cloud_include(Organization(mx_host="mx.example.net")) is None


def test_senders_are_the_option_and_the_on_premises_connectors_addresses_once_each() -> None:
    org = Organization(inbound_connectors=(
        InboundConnector("On-prem", connector_type=ConnectorType.ON_PREMISES,
                         sender_ip_addresses=("192.0.2.1", "198.51.100.0/24")),
        InboundConnector("Partner", sender_ip_addresses=("203.0.113.5",)),
        InboundConnector("Off", enabled=False, connector_type=ConnectorType.ON_PREMISES,
                         sender_ip_addresses=("203.0.113.6",)),
    ))  # fmt: skip
    assert [(s.ip, s.source) for s in senders(org, "192.0.2.1")] == [
        ("192.0.2.1", "--sender-ip"), ("198.51.100.0", "inbound connector 'On-prem'")]  # fmt: skip


# --- the view ---------------------------------------------------------------------------------------------------


def test_the_view_shows_the_tree_with_each_records_lookups() -> None:
    child = SpfNode("spf.protection.outlook.com", "include:spf.protection.outlook.com", NodeStatus.FOUND)
    missing = SpfNode("gone.example", "include:gone.example", NodeStatus.NXDOMAIN)
    root = SpfNode(DOMAIN, "", NodeStatus.FOUND, lookups=2, total_lookups=2, void_terms=("a:x.example",),
                   children=(child, missing))  # fmt: skip
    facts = SpfFacts(DOMAIN, SpfAnalysis(DOMAIN, root, 2, 1, ()), "spf.protection.outlook.com")

    shown = view(Observed(encode(facts), (), None))

    assert (shown.lookups, shown.lookups_tone, shown.void) == ("2 of 10", "good", "1 of 2")
    assert shown.cloud_include == "spf.protection.outlook.com" and not shown.cloud_included  # not in include_domains
    assert shown.tree is not None and shown.tree.notes == ("finds nothing: a:x.example",)
    assert [(c.via, c.state, c.tone) for c in shown.tree.children] == [
        ("include:spf.protection.outlook.com", "", "good"),
        ("include:gone.example", "the domain does not exist", "bad"),
    ]


def test_the_view_stops_at_a_depth_no_analysis_reaches() -> None:
    # Given a hand-edited result nesting includes 40 deep (an analysis follows 10)
    node: dict[str, object] = {"domain": "d40.example", "status": "found"}
    for depth in range(39, -1, -1):
        node = {"domain": f"d{depth}.example", "status": "found", "children": [node]}

    shown = view(Observed({"analysis": {"root": node, "total_lookups": 40}}, (), None))

    # Then the view draws 13 levels and says that more is below, without recursing further
    levels: list[SpfNodeRow] = []
    row = shown.tree
    while row is not None:
        levels.append(row)
        row = row.children[0] if row.children else None
    assert len(levels) == 13 and levels[-1].notes == ("1 more records below are not shown",)
    assert shown.lookups_tone == "bad"


# --- the lab ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("contoso.com", ["SPF_OK", "SPF_SENDER_PASS", "SPF_SENDER_PASS"]),
        ("fabrikam.com", ["SPF_OK", "SPF_SENDER_PASS", "SPF_SENDER_PASS"]),
        ("spflookups.example", ["SPF_TOO_MANY_LOOKUPS"]),
        ("spfplusall.example", ["SPF_PASS_ALL"]),
        ("nopolicy.example", ["SPF_MISSING"]),
        ("expired.example", ["SPF_OK"]),
    ],
)
def test_lab_domains(domain_report, domain: str, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert codes_of(domain_report(domain), "spf") == expected


def test_lab_on_premises_address_missing_from_an_accepted_domains_policy(lab: Lab) -> None:
    # Given spfonprem.example as an accepted domain of an organization whose on-premises server sends from
    # 127.0.10.10, and a policy that includes only the cloud
    org = Organization(
        accepted_domains=(AcceptedDomain("spfonprem.example"),), mx_host="x.mail.protection.outlook.com",
        inbound_connectors=(InboundConnector("On-prem", connector_type=ConnectorType.ON_PREMISES,
                                             sender_ip_addresses=("127.0.10.10",)),),
    )  # fmt: skip
    registry = default_registry().select(["spf"])
    report = asyncio.run(run_checks(["spfonprem.example"], registry, lab.run_options(organization=org, timeout=1.0,
                                                                                     sender_ip="127.0.10.11")))
    (domain,) = report.domains
    # Then both addresses are evaluated against the real policy, and fail
    result: DomainReport = domain
    assert codes_of(result, "spf") == ["SPF_SENDER_NOT_PERMITTED", "SPF_SENDER_NOT_PERMITTED"]
    assert [f.subject for f in result.result("spf").findings] == ["spfonprem.example from 127.0.10.11",
                                                                  "spfonprem.example from 127.0.10.10"]
