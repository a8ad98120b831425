"""The JSON view of a report: ``diag.report/1`` (CONTRACT.md), validated by the schema shipped beside it."""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from diag import __version__
from diag.errors import ConfigError
from diag.model import CheckResult, DomainReport, Finding, Report, Severity, Status

__all__ = ["SCHEMA", "dumps", "finding_dict", "jsonable", "load_schema", "report_dict", "report_from_dict"]

SCHEMA = "diag.report/1"


def jsonable(value: Any) -> Any:
    """Facts (frozen dataclasses, enums, tuples, bytes, paths, times) as JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | frozenset | set):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime):
        return _timestamp(value)
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def finding_dict(finding: Finding) -> dict[str, Any]:
    return {
        "code": finding.code,
        "severity": finding.severity.label,
        "subject": finding.subject,
        "message": finding.message,
        "remediation": finding.remediation,
        "cloud_error": finding.cloud_error,
    }


def _check(result: CheckResult) -> dict[str, Any]:
    return {
        "id": result.check_id,
        "title": result.title,
        "status": result.status.value,
        "reason": result.reason,
        "duration_ms": result.duration_ms,
        "facts": jsonable(result.facts) if result.facts is not None else {},
        "findings": [finding_dict(f) for f in result.findings],
    }


def report_dict(report: Report) -> dict[str, Any]:
    """The report as the contract's JSON object."""
    return {
        "schema": SCHEMA,
        "tool": {"name": "diag", "version": __version__},
        "started_at": _timestamp(report.started_at),
        "finished_at": _timestamp(report.finished_at),
        "status": report.verdict.value,
        "exit_code": report.exit_code,
        "domains": [
            {
                "domain": domain.domain,
                "status": domain.verdict.value,
                "checks": [_check(result) for result in domain.results],
            }
            for domain in report.domains
        ],
    }


def dumps(report: Report) -> str:
    # ensure_ascii keeps control and bidi characters from servers escaped in the file (RPT-06).
    return json.dumps(report_dict(report), indent=2, ensure_ascii=True) + "\n"


def report_from_dict(document: Mapping[str, Any]) -> Report:
    """A saved ``diag.report/1`` document as a Report again (facts stay JSON), for re-rendering it.

    Raises :class:`~diag.errors.ConfigError` with one line when the document is not such a report.
    """
    try:
        if document.get("schema") != SCHEMA:
            raise ValueError(f"its schema is {document.get('schema')!r}, not {SCHEMA!r}")
        domains = []
        for domain in document["domains"]:
            results = []
            for check in domain["checks"]:
                findings = tuple(
                    Finding(f["code"], Severity[f["severity"].upper()], f["subject"], f["message"],
                            f.get("remediation", ""), f.get("cloud_error"))
                    for f in check["findings"]
                )
                results.append(
                    CheckResult(
                        check["id"], check["title"], Status(check["status"]), check.get("reason"),
                        check.get("facts") or None, findings, 0.0, check.get("duration_ms", 0) / 1000,
                    )
                )
            domains.append(DomainReport(domain["domain"], tuple(results)))
        return Report(_parse(document["started_at"]), _parse(document["finished_at"]), tuple(domains))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"not a diag.report/1 result: {exc}") from None


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def load_schema(name: str = "report") -> dict[str, Any]:
    """A JSON Schema shipped inside the package: ``report`` (diag.report/1) or ``routes`` (diag.routes/1)."""
    text = resources.files("diag").joinpath(f"schemas/{name}.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
