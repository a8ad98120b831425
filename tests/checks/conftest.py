"""The checks' lab tests read the session's shared run of every check over every lab domain (tests/conftest.py:
``lab_report``, ``domain_report``)."""

from __future__ import annotations

from diag.model import DomainReport


def codes_of(report: DomainReport, check_id: str) -> list[str]:
    return [f.code for f in report.result(check_id).findings]
