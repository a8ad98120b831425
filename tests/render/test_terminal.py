"""The terminal view: plain text for pipes and cron, a rich table on a terminal."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console

from diag.model import CheckResult, DomainReport, Finding, Report, Severity, Status
from diag.render.terminal import render_plain, render_rich

_AT = datetime(2026, 11, 26, 20, 0, tzinfo=UTC)


def _report(domain: str) -> Report:
    finding = Finding("MX_DOMAIN_NXDOMAIN", Severity.CRITICAL, domain, f"The domain {domain} does not exist.")
    result = CheckResult("mx", "MX records", Status.COMPLETED, findings=(finding,))
    return Report(_AT, _AT, (DomainReport(domain, (result,)),))


def test_an_internationalized_domain_is_shown_with_both_forms_in_plain_text() -> None:
    """Given a result for an IDN (kept as its A-label), then the header shows the U-label and the A-label."""
    out = io.StringIO()

    render_plain(_report("xn--mnchen-3ya.example"), out)

    assert out.getvalue().splitlines()[0] == "münchen.example (xn--mnchen-3ya.example): CRITICAL"


def test_an_internationalized_domain_is_shown_with_both_forms_in_the_table() -> None:
    console = Console(file=io.StringIO(), width=120, no_color=True)

    render_rich(_report("xn--mnchen-3ya.example"), console)

    assert "münchen.example (xn--mnchen-3ya.example)  CRITICAL" in console.file.getvalue()  # type: ignore[attr-defined]


def test_an_ascii_domain_is_shown_as_it_is() -> None:
    out = io.StringIO()

    render_plain(_report("contoso.com"), out)

    assert out.getvalue().startswith("contoso.com: CRITICAL\n")
