"""The JSON view of a report: ``diag.report/1`` (CONTRACT.md), validated by the schema shipped beside it.

:func:`report_dict` writes a report as the contract's object; :func:`load_report` reads a saved one back and
validates it against the schema, and :meth:`diag.model.Report.from_json` turns it into the Report it was
written from (``diag report``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from diag import __version__
from diag.codec import encode, timestamp
from diag.errors import ConfigError
from diag.model import REPORT_SCHEMA, CheckResult, Finding, Report
from diag.render.text import sanitize

__all__ = ["SCHEMA", "dumps", "finding_dict", "kind_problem", "load_report", "load_schema", "report_dict"]

SCHEMA = REPORT_SCHEMA


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
        "facts": encode(result.facts) if result.facts is not None else {},
        "findings": [finding_dict(f) for f in result.findings],
    }


def report_dict(report: Report) -> dict[str, Any]:
    """The report as the contract's JSON object."""
    return {
        "schema": SCHEMA,
        "tool": {"name": "diag", "version": __version__},
        "started_at": timestamp(report.started_at),
        "finished_at": timestamp(report.finished_at),
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


def load_schema(name: str = "report") -> dict[str, Any]:
    """A JSON Schema shipped inside the package: ``report`` (diag.report/1) or ``routes`` (diag.routes/1)."""
    text = resources.files("diag").joinpath(f"schemas/{name}.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


# --- reading a saved result ----------------------------------------------------------------------------------


def load_report(path: Path | str) -> dict[str, Any]:
    """Read a result saved by ``diag check --json`` and validate it against the shipped JSON Schema.

    Raises :class:`ConfigError` naming the file and the reason.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        document = json.loads(text, parse_int=_integer)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # _integer's refusal
        raise ConfigError(f"{path}: not a {SCHEMA} result: {exc}") from None
    except RecursionError:  # the parser's own limit, near 1000 levels
        problem: str | None = _TOO_DEEP
    else:
        problem = _TOO_DEEP if _too_deep(document) else _schema_problem(document)
    if problem is not None:
        raise ConfigError(f"{path}: not a {SCHEMA} result: {problem}")
    result: dict[str, Any] = document
    return result


# A result nests about a dozen levels. The renderers walk the facts recursively and would exceed Python's
# recursion limit a few hundred levels down, so a deeper (hand-made) document is refused when it is read.
_MAX_DEPTH = 64
_TOO_DEEP = f"arrays and objects nested more than {_MAX_DEPTH} levels deep"


def _integer(text: str) -> int:
    """A JSON integer, refused (ValueError) beyond what a float holds: the renderers compute with floats."""
    if math.isinf(float(text)):
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits is too large")
    return int(text)


def _too_deep(document: Any) -> bool:
    """Whether arrays and objects nest more than _MAX_DEPTH levels (walked level by level, not recursively)."""
    level = [document]
    for _ in range(_MAX_DEPTH):
        level = [child for item in level for child in _children(item)]
    return any(isinstance(item, dict | list) for item in level)


def _children(item: Any) -> list[Any]:
    if isinstance(item, dict):
        return list(item.values())
    return item if isinstance(item, list) else []


def _schema_problem(document: Any) -> str | None:
    # Another kind of document (diag.routes/1, anything else) is named as such, not by its first schema error.
    problem = kind_problem(document)
    if problem is not None:
        return problem
    # Imported here: only reading a saved result needs it, not every run that writes one.
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema("report"))
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is None:
        return None
    where = "/".join(str(part) for part in error.absolute_path) or "the top level"
    return f"{sanitize(str(error.message), limit=160)} (at {sanitize(where, limit=80)})"


def kind_problem(document: Any) -> str | None:
    """Why ``document`` is not a ``diag.report/1`` document at all (another JSON value, another schema), in a
    few words; None when it says it is one."""
    if not isinstance(document, Mapping):
        return f"expected a JSON object, got {_json_type(document)}"
    if document.get("schema") != SCHEMA:
        found = document.get("schema")
        return f"its schema is {sanitize(repr(found), limit=60)}" if found is not None else "no schema field"
    return None


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
