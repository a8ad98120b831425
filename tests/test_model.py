"""The result model: verdicts and exit codes per CONTRACT.md."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from diag.model import CheckResult, DomainReport, Finding, Report, Severity, Status, Verdict


def result(status: Status = Status.COMPLETED, *severities: Severity) -> CheckResult:
    findings = tuple(Finding(f"X_{s.name}", s, "host", "message") for s in severities)
    return CheckResult("x", "X", status, reason=None if status is Status.COMPLETED else "why", findings=findings)


@pytest.mark.parametrize(
    ("results", "verdict", "code"),
    [
        ([result(Status.COMPLETED, Severity.INFO, Severity.NOTICE)], Verdict.OK, 0),
        ([result(Status.COMPLETED)], Verdict.OK, 0),
        ([result(Status.COMPLETED, Severity.WARNING)], Verdict.WARNING, 1),
        ([result(Status.COMPLETED, Severity.ERROR)], Verdict.CRITICAL, 2),
        ([result(Status.COMPLETED, Severity.CRITICAL)], Verdict.CRITICAL, 2),
        ([result(Status.ERROR)], Verdict.UNKNOWN, 3),
        ([result(Status.TIMEOUT)], Verdict.UNKNOWN, 3),
        ([result(Status.SKIPPED)], Verdict.UNKNOWN, 3),
        # A check that does not apply hides nothing: it is neither "could not run" nor a finding.
        ([result(Status.NOT_APPLICABLE)], Verdict.OK, 0),
        ([result(Status.COMPLETED, Severity.INFO), result(Status.NOT_APPLICABLE)], Verdict.OK, 0),
        ([result(Status.COMPLETED, Severity.WARNING), result(Status.NOT_APPLICABLE)], Verdict.WARNING, 1),
        ([result(Status.NOT_APPLICABLE), result(Status.SKIPPED)], Verdict.UNKNOWN, 3),
        # A check that could not run may hide something worse than a warning...
        ([result(Status.COMPLETED, Severity.WARNING), result(Status.ERROR)], Verdict.UNKNOWN, 3),
        # ...but a certain critical finding is reported as critical.
        ([result(Status.COMPLETED, Severity.ERROR), result(Status.TIMEOUT)], Verdict.CRITICAL, 2),
        ([], Verdict.OK, 0),
    ],
)
def test_verdict_and_exit_code(results: list[CheckResult], verdict: Verdict, code: int) -> None:
    assert Verdict.of(results) is verdict
    report = Report(datetime.now(UTC), datetime.now(UTC), (DomainReport("example.com", tuple(results)),))
    assert report.verdict is verdict
    assert report.exit_code == code


def test_report_verdict_is_the_worst_domain() -> None:
    ok = DomainReport("a.example", (result(Status.COMPLETED, Severity.INFO),))
    bad = DomainReport("b.example", (result(Status.COMPLETED, Severity.CRITICAL),))
    report = Report(datetime.now(UTC), datetime.now(UTC), (ok, bad))
    assert (ok.verdict, bad.verdict, report.verdict) == (Verdict.OK, Verdict.CRITICAL, Verdict.CRITICAL)


def test_status_labels_and_which_statuses_could_not_run() -> None:
    assert [s.label for s in Status] == ["completed", "error", "timeout", "skipped", "not applicable"]
    assert [s for s in Status if s.could_not_run] == [Status.ERROR, Status.TIMEOUT, Status.SKIPPED]


def test_severity_is_ordered_and_labelled() -> None:
    assert Severity.INFO < Severity.NOTICE < Severity.WARNING < Severity.ERROR < Severity.CRITICAL
    assert [s.label for s in Severity] == ["info", "notice", "warning", "error", "critical"]


def test_duration_and_lookup() -> None:
    timed = CheckResult("mx", "MX", Status.COMPLETED, started=1.0, finished=1.25)
    assert timed.duration_ms == 250
    domain = DomainReport("example.com", (timed,))
    assert domain.result("mx") is timed
    with pytest.raises(KeyError):
        domain.result("nope")
