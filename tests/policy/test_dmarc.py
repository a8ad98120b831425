"""DMARC (RFC 7489): records parsed with defaults and issues, discovery at the domain then the organizational
domain, and the external report destination verification (§7.1)."""

from __future__ import annotations

import pytest

from diag.policy.dmarc import (
    Alignment,
    AuthorizationStatus,
    DmarcIssueKind,
    DmarcPolicy,
    DmarcStatus,
    discover,
    parse_record,
    select_records,
)
from diag.policy.lookup import ReplyStatus
from diag.policy.orgdomain import OrgDomains

from .conftest import Zone


@pytest.fixture(scope="module")
def org() -> OrgDomains:
    return OrgDomains()


def kinds(text: str) -> list[DmarcIssueKind]:
    return [i.kind for i in parse_record(text).issues]


def test_a_full_record_is_read_with_its_values() -> None:
    record = parse_record(
        "v=DMARC1; p=reject; sp=quarantine; np=reject; pct=100; adkim=s; aspf=r; fo=1:d; "
        "rua=mailto:dmarc@contoso.com,mailto:agg@reports.example!10m; ruf=mailto:forensic@contoso.com"
    )
    assert record.issues == ()
    assert (record.policy, record.subdomain_policy, record.nonexistent_policy) == (
        DmarcPolicy.REJECT, DmarcPolicy.QUARANTINE, DmarcPolicy.REJECT,
    )  # fmt: skip
    assert (record.adkim, record.aspf, record.fo, record.pct) == (Alignment.STRICT, Alignment.RELAXED, ("1", "d"), 100)
    assert [(u.destination, u.size_limit) for u in record.rua] == [("contoso.com", None), ("reports.example", "10m")]
    assert record.ruf[0].destination == "contoso.com"


def test_defaults_follow_the_rfc() -> None:
    record = parse_record("v=DMARC1; p=quarantine")
    assert (record.subdomain_policy, record.nonexistent_policy) == (DmarcPolicy.QUARANTINE, DmarcPolicy.QUARANTINE)
    assert (record.pct, record.adkim, record.aspf, record.fo, record.testing) == (
        100, Alignment.RELAXED, Alignment.RELAXED, ("0",), False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v=DMARC1", [DmarcIssueKind.NO_POLICY]),
        ("v=DMARC1; p=block", [DmarcIssueKind.NO_POLICY]),
        ("p=reject; v=DMARC1", [DmarcIssueKind.NOT_FIRST]),
        ("v=DMARC1; p=none; sp=maybe", [DmarcIssueKind.BAD_VALUE]),
        ("v=DMARC1; p=none; pct=150", [DmarcIssueKind.BAD_VALUE]),
        ("v=DMARC1; p=reject; pct=20", [DmarcIssueKind.PCT_PARTIAL]),
        ("v=DMARC1; p=none; adkim=x", [DmarcIssueKind.BAD_VALUE]),
        ("v=DMARC1; p=none; fo=2", [DmarcIssueKind.BAD_VALUE]),
        ("v=DMARC1; p=none; rua=dmarc@contoso.com", [DmarcIssueKind.BAD_URI]),
        ("v=DMARC1; p=none; rua=mailto:nobody", [DmarcIssueKind.BAD_URI]),
        ("v=DMARC1; p=none; rua=mailto:a@b.example!10x", [DmarcIssueKind.BAD_URI]),
        ("v=DMARC1; p=none; rua=https://report.example/", [DmarcIssueKind.BAD_URI]),
        ("v=DMARC1; p=none; poilcy=reject", [DmarcIssueKind.UNKNOWN_TAG]),
        ("v=DMARC1; p=none; p=reject", [DmarcIssueKind.SYNTAX]),
        ("v=DMARC1; p=none; t=maybe", [DmarcIssueKind.BAD_VALUE]),
        ("v=DMARC1; p=none; psd=q", [DmarcIssueKind.BAD_VALUE]),
        ("v=DMARC1; p=none; ri=daily", [DmarcIssueKind.BAD_VALUE]),
    ],
)
def test_problems_in_a_record_are_typed(text: str, expected: list[DmarcIssueKind]) -> None:
    assert kinds(text) == expected


def test_an_unusable_policy_with_a_valid_rua_is_treated_as_none() -> None:
    assert parse_record("v=DMARC1; p=bogus; rua=mailto:a@contoso.com").effective_policy is DmarcPolicy.NONE
    assert parse_record("v=DMARC1; p=bogus").effective_policy is None


def test_dmarcbis_tags_are_read() -> None:
    record = parse_record("v=DMARC1; p=reject; t=y; psd=n")
    assert (record.testing, record.psd, record.issues) == (True, "n", ())


def test_only_records_starting_with_the_version_count() -> None:
    assert select_records(("v=DMARC1; p=none", "v=DMARC2; p=none", "p=none; v=DMARC1", " v = DMARC1")) == (
        "v=DMARC1; p=none", " v = DMARC1",
    )  # fmt: skip


def test_the_record_is_found_at_the_domain(zone: Zone, org: OrgDomains) -> None:
    zone.add("_dmarc.contoso.com", "TXT", "v=DMARC1; p=reject; rua=mailto:d@contoso.com", "unrelated")
    found = zone.run(discover("contoso.com", org.organizational))
    assert (found.status, found.found_at, found.inherited) == (DmarcStatus.FOUND, "contoso.com", False)
    assert found.record is not None and found.record.policy is DmarcPolicy.REJECT
    (auth,) = found.authorizations
    assert (auth.status, auth.record_name) == (AuthorizationStatus.NOT_NEEDED, None)


def test_a_subdomain_without_a_record_inherits_the_organizational_domain_s(zone: Zone, org: OrgDomains) -> None:
    zone.add("_dmarc.contoso.co.uk", "TXT", "v=DMARC1; p=reject; sp=none")
    found = zone.run(discover("Sales.Contoso.co.uk.", org.organizational))
    assert (found.status, found.found_at, found.organizational_domain) == (
        DmarcStatus.FOUND, "contoso.co.uk", "contoso.co.uk",
    )  # fmt: skip
    assert found.inherited and found.record is not None and found.record.subdomain_policy is DmarcPolicy.NONE
    assert [str(q) for q in zone.asked] == ["_dmarc.sales.contoso.co.uk TXT", "_dmarc.contoso.co.uk TXT"]


@pytest.mark.parametrize(
    ("records", "status"),
    [((), DmarcStatus.NONE), (("v=DMARC1; p=none", "v=DMARC1; p=reject"), DmarcStatus.MULTIPLE)],
)
def test_none_or_two_records_mean_no_dmarc(
    zone: Zone, org: OrgDomains, records: tuple[str, ...], status: DmarcStatus
) -> None:
    if records:
        zone.add("_dmarc.contoso.com", "TXT", *records)
    found = zone.run(discover("contoso.com", org.organizational))
    assert (found.status, found.record, len(found.texts)) == (status, None, len(records))


def test_two_records_at_the_domain_do_not_fall_back_to_the_organizational_domain(zone: Zone, org: OrgDomains) -> None:
    zone.add("_dmarc.a.contoso.com", "TXT", "v=DMARC1; p=none", "v=DMARC1; p=none")
    zone.add("_dmarc.contoso.com", "TXT", "v=DMARC1; p=reject")
    assert zone.run(discover("a.contoso.com", org.organizational)).status is DmarcStatus.MULTIPLE


def test_no_answer_is_a_dns_error(zone: Zone, org: OrgDomains) -> None:
    zone.fail("_dmarc.contoso.com", "TXT", ReplyStatus.TIMEOUT)
    found = zone.run(discover("contoso.com", org.organizational))
    assert (found.status, found.detail) == (DmarcStatus.DNS_ERROR, "SERVFAIL")


def test_reports_to_another_domain_need_its_verification_record(zone: Zone, org: OrgDomains) -> None:
    zone.add(
        "_dmarc.contoso.com", "TXT",
        "v=DMARC1; p=reject; rua=mailto:a@dmarc.vendor.example,mailto:b@other.example; ruf=mailto:c@broken.example",
    )  # fmt: skip
    zone.add("contoso.com._report._dmarc.dmarc.vendor.example", "TXT", "v=DMARC1")
    zone.add("contoso.com._report._dmarc.other.example", "TXT", "v=spf1 -all")
    zone.fail("contoso.com._report._dmarc.broken.example", "TXT")
    found = zone.run(discover("contoso.com", org.organizational))
    assert [(a.tag, a.destination, a.status) for a in found.authorizations] == [
        ("rua", "dmarc.vendor.example", AuthorizationStatus.AUTHORIZED),
        ("rua", "other.example", AuthorizationStatus.MISSING),
        ("ruf", "broken.example", AuthorizationStatus.DNS_ERROR),
    ]
    assert found.authorizations[0].record_name == "contoso.com._report._dmarc.dmarc.vendor.example"


def test_the_verification_name_uses_the_domain_the_record_came_from(zone: Zone, org: OrgDomains) -> None:
    zone.add("_dmarc.contoso.com", "TXT", "v=DMARC1; p=reject; rua=mailto:a@vendor.example")
    found = zone.run(discover("sub.contoso.com", org.organizational))
    assert found.authorizations[0].record_name == "contoso.com._report._dmarc.vendor.example"
