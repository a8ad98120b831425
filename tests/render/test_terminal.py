"""The terminal view: plain text for pipes and cron, a rich table on a terminal."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from rich.console import Console

from checks import default_registry
from diag.model import CheckResult, DomainReport, Finding, Report, Severity, Status
from diag.render.terminal import render_plain, render_rich
from diag.render.text import sanitize

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


# --- untrusted text, the verdict line, -q --------------------------------------------------------------------

HOSTILE = "mx\x1b[2J\x07 [bold]evil[/bold] \u202eexe.txt\ninjected: line\r\x9b"
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # anything but a line feed


def _mixed() -> Report:
    """One domain with a critical finding full of hostile text, a warning, an info, a check that timed out and
    one that does not apply; one domain where all is well."""
    evil = Finding("SMTP_GREETING_REJECT", Severity.ERROR, f"{HOSTILE} [192.0.2.1]:25", f"Greets with {HOSTILE}.",
                   f"Fix {HOSTILE}.", f"450 {HOSTILE}")  # fmt: skip
    warn = Finding("CERT_EXPIRING", Severity.WARNING, "mx.example.com [192.0.2.1]:25", "Expires in 20 days.", "Renew.")
    info = Finding("MX_OK", Severity.INFO, "mx.example.com", "mx.example.com resolves.")
    bad = DomainReport("bad.example", (
        CheckResult("mx", "MX records", Status.COMPLETED, findings=(info,), started=0.0, finished=0.012),
        CheckResult("port25", "Port 25", Status.COMPLETED, findings=(evil,)),
        CheckResult("certificate", "TLS certificate", Status.COMPLETED, findings=(warn,)),
        CheckResult("connectors", "Connectors", Status.TIMEOUT, reason=f"timeout: {HOSTILE}"),
        CheckResult("starttls", "STARTTLS", Status.NOT_APPLICABLE, reason="the domain accepts no mail (null MX)"),
    ))  # fmt: skip
    good = DomainReport("good.example", (CheckResult("mx", "MX records", Status.COMPLETED, findings=(info,)),))
    return Report(_AT, _AT, (bad, good))


def _plain(report: Report, *, quiet: bool = False) -> str:
    out = io.StringIO()
    render_plain(report, out, quiet=quiet)
    return out.getvalue()


def _rich(report: Report, *, quiet: bool = False) -> str:
    console = Console(file=io.StringIO(), width=200, color_system="truecolor", force_terminal=True)
    render_rich(report, console, quiet=quiet)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_plain_text_shows_every_check_and_finding_one_fact_per_line() -> None:
    text = _plain(_mixed())

    assert text.splitlines() == [
        "bad.example: CRITICAL",
        "  mx: completed (12 ms)",
        "    INFO MX_OK mx.example.com: mx.example.com resolves.",
        "  port25: completed (0 ms)",
        f"    ERROR SMTP_GREETING_REJECT {sanitize(HOSTILE)} [192.0.2.1]:25: Greets with {sanitize(HOSTILE)}.",
        f"      fix: Fix {sanitize(HOSTILE)}.",
        f"      cloud says: 450 {sanitize(HOSTILE)}",
        "  certificate: completed (0 ms)",
        "    WARNING CERT_EXPIRING mx.example.com [192.0.2.1]:25: Expires in 20 days.",
        "      fix: Renew.",
        f"  connectors: timeout (0 ms): timeout: {sanitize(HOSTILE)}",
        "  starttls: not applicable (0 ms): the domain accepts no mail (null MX)",
        "good.example: OK",
        "  mx: completed (0 ms)",
        "    INFO MX_OK mx.example.com: mx.example.com resolves.",
        "status: CRITICAL (exit 2)",
    ]


@pytest.mark.parametrize("render", [_plain, _rich], ids=["plain", "rich"])
def test_control_characters_from_servers_never_reach_the_terminal(render: Callable[[Report], str]) -> None:
    """RPT-06: escape sequences, bidi controls and line breaks in untrusted text are shown as escapes; rich markup
    in it is text, not style."""
    text = render(_mixed())

    # The only escape sequences are rich's own colours (plain text has none at all).
    assert not RAW.search(re.sub(r"\x1b\[[0-9;]*m", "", text))
    assert "\\x1b[2J\\x07" in text and "U+202Eexe.txt" in text and "\\x0ainjected: line\\x0d\\x9b" in text
    assert "[bold]evil[/bold]" in text
    assert not any(line.startswith("injected") for line in text.splitlines())


def test_the_rich_table_shows_the_same_facts() -> None:
    text = re.sub(r"\x1b\[[0-9;]*m", "", _rich(_mixed()))

    for fact in ("bad.example  CRITICAL", "good.example  OK", "SMTP_GREETING_REJECT", "→ Fix", "cloud says: 450",
                 "not applicable", "timeout", "12 ms"):  # fmt: skip
        assert fact in text, fact
    assert text.rstrip().splitlines()[-1] == "status: CRITICAL (exit 2)"


@pytest.mark.parametrize("render", [_plain, _rich], ids=["plain", "rich"])
def test_quiet_shows_only_problems_and_the_verdict(render: Callable[..., str]) -> None:
    """-q: checks that could not run and findings of warning or worse; a check that does not apply, info findings
    and a domain without problems are left out."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", render(_mixed(), quiet=True))

    assert "SMTP_GREETING_REJECT" in text and "CERT_EXPIRING" in text and "connectors" in text
    assert "MX_OK" not in text and "good.example" not in text and "starttls" not in text
    assert "status: CRITICAL (exit 2)" in text


@pytest.mark.parametrize("render", [_plain, _rich], ids=["plain", "rich"])
def test_quiet_prints_nothing_when_all_is_well(render: Callable[..., str]) -> None:
    (_, good) = _mixed().domains
    all_well = Report(_AT, _AT, (good,))

    assert render(all_well, quiet=True) == ""
    assert "status: OK (exit 0)" in re.sub(r"\x1b\[[0-9;]*m", "", render(all_well))


def test_a_check_that_could_not_run_makes_the_verdict_unknown() -> None:
    result = CheckResult("mx", "MX records", Status.ERROR, reason="dns: SERVFAIL")
    text = _plain(Report(_AT, _AT, (DomainReport("servfail.example", (result,)),)), quiet=True)

    assert text == "servfail.example: UNKNOWN\n  mx: error (0 ms): dns: SERVFAIL\nstatus: UNKNOWN (exit 3)\n"


def test_a_lab_run_in_plain_text(lab_domains: Callable[..., Report]) -> None:
    """Given real runs against the lab, then each domain has its verdict line, each check its status line, each
    finding its code and subject, and the last line is the run's verdict with its exit code."""
    report = lab_domains("contoso.com", "expired.example", "refused.example")
    lines = _plain(report).splitlines()

    verdicts = [line for line in lines if not line.startswith(" ")]
    assert verdicts == ["contoso.com: OK", "expired.example: CRITICAL", "refused.example: CRITICAL",
                        "status: CRITICAL (exit 2)"]  # fmt: skip
    assert sum(1 for line in lines if re.fullmatch(r"  \w+: [a-z ]+ \(\d+ ms\)(: .+)?", line)) == 3 * len(
        default_registry().ids
    )
    expired = next(line for line in lines if " CERT_EXPIRED " in line)
    assert expired.startswith("    CRITICAL CERT_EXPIRED mx.expired.example [127.0.20.1]:")
    assert "      cloud says: 450 4.7.320 Certificate validation failed (certificate expired)" in lines
    assert any(line.startswith("    ERROR SMTP_CONNECT_REFUSED mx.refused.example [") for line in lines)


@pytest.mark.parametrize("render", [_plain, _rich], ids=["plain", "rich"])
def test_hostile_policy_records_reach_the_terminal_as_text(lab_domains: Callable[..., Report],
                                                           render: Callable[[Report], str]) -> None:  # fmt: skip
    """Given hostile.example's policy records (markup and template syntax in its SPF policy's host names, U+202E
    and C0 controls in its MTA-STS and TLS-RPT records), then the findings that quote them show escapes, and no
    control or bidi character reaches the terminal."""
    text = render(lab_domains("hostile.example"))

    assert not RAW.search(re.sub(r"\x1b\[[0-9;]*m", "", text))
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert "SPF_INCLUDE_NOT_FOUND" in plain and "include:<script>alert(1)</script>.hostile.example" in plain
    assert "MTASTS_RECORD_INVALID" in plain and "character '\\x1b' in the value of id" in plain
    assert "TLSRPT_SYNTAX" in plain and "character '\\u202e' in the value of rua" in plain
