"""TLS-RPT (RFC 8460 §3): record selection and rua URIs."""

from __future__ import annotations

import pytest

from diag.policy.lookup import ReplyStatus
from diag.policy.tlsrpt import RptIssue, RptStatus, discover, parse_record

from .conftest import Zone


def test_a_record_with_mailto_and_https_destinations(zone: Zone) -> None:
    zone.add("_smtp._tls.contoso.test", "TXT", "v=TLSRPTv1; rua=mailto:tls@contoso.test,https://reports.example/tls")
    facts = zone.run(discover("contoso.test"))
    assert facts.status is RptStatus.FOUND and facts.record is not None and facts.record.valid
    assert [(u.scheme, u.destination) for u in facts.record.rua] == [
        ("mailto", "contoso.test"), ("https", "reports.example"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "issues"),
    [
        ("v=TLSRPTv1;", [RptIssue.NO_RUA]),
        ("v=TLSRPTv1; rua=tls@contoso.test", [RptIssue.BAD_URI, RptIssue.NO_RUA]),
        ("v=TLSRPTv1; rua=http://reports.example/", [RptIssue.BAD_URI, RptIssue.NO_RUA]),
        ("v=TLSRPTv1; rua=mailto:nobody,mailto:ok@contoso.test", [RptIssue.BAD_URI]),
        ("v=TLSRPTv1; rua=mailto:a@contoso.test; rua=mailto:b@contoso.test", [RptIssue.SYNTAX]),
    ],
)
def test_problems_are_typed(text: str, issues: list[RptIssue]) -> None:
    assert [kind for kind, _ in parse_record(text).issues] == issues


@pytest.mark.parametrize(
    ("records", "status"),
    [
        ((), RptStatus.NONE),
        (("v=TLSRPTv2; rua=mailto:a@b.example",), RptStatus.NONE),
        (("v=TLSRPTv1; rua=mailto:a@b.example", "v=TLSRPTv1; rua=mailto:c@b.example"), RptStatus.MULTIPLE),
    ],
)
def test_anything_but_one_record_means_no_tls_rpt(zone: Zone, records: tuple[str, ...], status: RptStatus) -> None:
    if records:
        zone.add("_smtp._tls.contoso.test", "TXT", *records)
    facts = zone.run(discover("contoso.test"))
    assert (facts.status, facts.record) == (status, None)


def test_no_answer_is_a_dns_error(zone: Zone) -> None:
    zone.fail("_smtp._tls.contoso.test", "TXT", ReplyStatus.ERROR)
    assert zone.run(discover("contoso.test")).status is RptStatus.DNS_ERROR
