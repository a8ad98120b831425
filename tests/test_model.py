"""The result model: verdicts and exit codes per CONTRACT.md."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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


# --- Report.from_json: the one way back from a saved result -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    host: str
    port: int


def saved(**check: Any) -> dict[str, Any]:
    base = {"id": "x", "title": "X", "status": "completed", "reason": None, "duration_ms": 250,
            "facts": {"host": "mx.example.com", "port": 25},
            "findings": [{"code": "X_OK", "severity": "info", "subject": "mx.example.com", "message": "Fine.",
                          "remediation": "", "cloud_error": None}]}  # fmt: skip
    return {
        "schema": "diag.report/1", "tool": {"name": "diag", "version": "0.1.0"},
        "started_at": "2026-11-26T20:00:00Z", "finished_at": "2026-11-26T20:00:01Z", "status": "ok",
        "exit_code": 0, "domains": [{"domain": "example.com", "status": "ok", "checks": [base | check]}],
    }  # fmt: skip


def test_from_json_reads_a_saved_result_back_with_typed_facts() -> None:
    # Given a saved result of a check whose facts class is known
    report = Report.from_json(saved(), facts={"x": Seen})

    # Then the report is what was written: times, findings, duration and the facts as their class
    assert report.started_at == datetime(2026, 11, 26, 20, 0, tzinfo=UTC)
    (domain,) = report.domains
    (result,) = domain.results
    assert (result.check_id, result.status, result.duration_ms) == ("x", Status.COMPLETED, 250)
    assert result.facts == Seen("mx.example.com", 25)
    assert result.findings == (Finding("X_OK", Severity.INFO, "mx.example.com", "Fine.", "", None),)


def test_from_json_keeps_unknown_facts_as_json_and_empty_facts_as_none() -> None:
    # A check this diag does not know keeps its facts as they are; {} is how the document writes "no facts".
    assert Report.from_json(saved(), facts={}).domains[0].results[0].facts == {"host": "mx.example.com", "port": 25}
    empty = saved(status="skipped", reason="no address", facts={}, findings=[])
    assert Report.from_json(empty, facts={"x": Seen}).domains[0].results[0].facts is None


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"schema": "diag.routes/1"}, "its schema is 'diag.routes/1', not 'diag.report/1'"),
        (saved(facts={"host": "mx.example.com", "port": "25"}),
         "domains/0/checks/0/facts/port: expected an integer, got a string"),
        (saved(status="done"), "domains/0/checks/0/status: 'done' is not a check status"),
        (saved(findings=[{"code": "X_OK", "severity": "fatal"}]),
         "domains/0/checks/0/findings/0/severity: 'fatal' is not a severity"),
        (saved() | {"finished_at": "later"}, "finished_at: 'later' is not a time"),
        (saved() | {"domains": [{"domain": "example.com"}]}, "not a report: 'checks'"),
    ],
)  # fmt: skip
def test_from_json_names_what_is_wrong(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Report.from_json(document, facts={"x": Seen})
    assert str(caught.value) == message
