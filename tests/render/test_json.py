"""The JSON view (diag.render.json): diag.report/1 as the contract writes it, and the way back to a Report.

A lab run over every lab domain with every check (the session's, tests/conftest.py: sessions refused, cut,
stalled and completed, every kind of certificate, routing, probes, and policy records good, broken or hostile)
goes to JSON, back through ``Report.from_json`` and to JSON again, byte for byte; constructed reports pin the
document's shape.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import jsonschema

from checks import default_registry
from diag import __version__
from diag.model import CheckResult, DomainReport, Finding, Report, Severity, Status
from diag.render.json import dumps, load_schema, report_dict

AT = datetime(2026, 11, 26, 20, 0, tzinfo=UTC)


def test_a_lab_report_reads_back_into_the_same_report_and_writes_the_same_bytes(lab_report: Report) -> None:
    # Given the JSON of a lab run with every check
    registry = default_registry()
    text = dumps(lab_report)

    # When it is read back
    again = Report.from_json(json.loads(text), facts=registry.facts)

    # Then it writes the very same text, and every check's facts are its own typed facts again
    assert dumps(again) == text
    typed = {r.check_id for d in again.domains for r in d.results if isinstance(r.facts, registry.facts[r.check_id])}
    assert typed == set(registry.ids)
    assert not [r for d in again.domains for r in d.results if r.facts is not None and r.check_id not in typed]
    # What a report holds beyond the facts comes back as it was.
    assert [(d.domain, d.verdict) for d in again.domains] == [(d.domain, d.verdict) for d in lab_report.domains]
    assert [r.findings for d in again.domains for r in d.results] == [
        r.findings for d in lab_report.domains for r in d.results
    ]
    assert again.exit_code == lab_report.exit_code


def test_the_lab_report_matches_the_shipped_schema(lab_report: Report) -> None:
    jsonschema.validate(json.loads(dumps(lab_report)), load_schema())


def test_a_report_is_written_as_the_contract_shows_it() -> None:
    # Given a report with a finding, a check that did not run and one without facts
    finding = Finding("CERT_EXPIRED", Severity.CRITICAL, "mx.example.com [192.0.2.1]:25", "Expired.", "Renew it.",
                      "450 4.7.320 Certificate validation failed")  # fmt: skip
    results = (
        CheckResult("certificate", "TLS certificate", Status.COMPLETED, findings=(finding,), started=1.0,
                    finished=1.012),
        CheckResult("connectors", "Connectors", Status.TIMEOUT, reason="timeout: no answer"),
    )
    report = Report(AT, AT.replace(second=3), (DomainReport("example.com", results),))

    # When it is written
    document = report_dict(report)

    # Then it has the contract's members, verdicts and exit code included, and facts are {} when there are none
    assert document == {
        "schema": "diag.report/1", "tool": {"name": "diag", "version": __version__},
        "started_at": "2026-11-26T20:00:00Z", "finished_at": "2026-11-26T20:00:03Z", "status": "critical",
        "exit_code": 2,
        "domains": [{"domain": "example.com", "status": "critical", "checks": [
            {"id": "certificate", "title": "TLS certificate", "status": "completed", "reason": None,
             "duration_ms": 12, "facts": {}, "findings": [
                 {"code": "CERT_EXPIRED", "severity": "critical", "subject": "mx.example.com [192.0.2.1]:25",
                  "message": "Expired.", "remediation": "Renew it.",
                  "cloud_error": "450 4.7.320 Certificate validation failed"}]},
            {"id": "connectors", "title": "Connectors", "status": "timeout", "reason": "timeout: no answer",
             "duration_ms": 0, "facts": {}, "findings": []},
        ]}],
    }  # fmt: skip
    jsonschema.validate(document, load_schema())


def test_text_from_servers_stays_escaped_in_the_file() -> None:
    """RPT-06: control and bidi characters a server sent are \\u escapes in the file, never raw."""
    finding = Finding("SMTP_OK", Severity.INFO, "mx.example.com", "Greets with \x1b[2J\u202e.")
    report = Report(AT, AT, (DomainReport("example.com", (CheckResult("port25", "P", Status.COMPLETED,
                                                                       findings=(finding,)),)),))  # fmt: skip
    text = dumps(report)
    assert text.isascii() and "\\u001b[2J\\u202e" in text and text.endswith("}\n")
    assert json.loads(text)["domains"][0]["checks"][0]["findings"][0]["message"] == finding.message
