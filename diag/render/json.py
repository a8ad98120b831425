"""The JSON view of a report: ``diag.report/1`` (CONTRACT.md), validated by the schema shipped beside it.

:func:`report_dict` writes a report as the contract's object; :func:`load_report` reads a saved one back and
validates it against the schema, and :meth:`diag.model.Report.from_json` turns it into the Report it was
written from (``diag report``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from diag import __version__
from diag.codec import Encoder, encode, timestamp
from diag.errors import ConfigError
from diag.model import REPORT_SCHEMA, CheckResult, DomainReport, Finding, Report, Verdict
from diag.render.text import sanitize

__all__ = [
    "SCHEMA",
    "TAIL_TEXT",
    "EntryWriter",
    "check_dict",
    "domain_dict",
    "dumps",
    "entry_text",
    "finding_dict",
    "head_dict",
    "head_text",
    "kind_problem",
    "load_report",
    "load_schema",
    "report_dict",
]

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


def check_dict(result: CheckResult, *, encoder: Encoder | None = None) -> dict[str, Any]:
    """One check's result as the contract's object (an element of a domain's ``checks``); its facts encoded by
    ``encoder`` when given (:class:`~diag.codec.Encoder`: the returned object may share parts with others)."""
    if result.facts is None:
        facts: Any = {}
    else:
        facts = encoder.encode(result.facts) if encoder is not None else encode(result.facts)
    return {
        "id": result.check_id,
        "title": result.title,
        "status": result.status.value,
        "reason": result.reason,
        "duration_ms": result.duration_ms,
        "facts": facts,
        "findings": [finding_dict(f) for f in result.findings],
    }


def domain_dict(domain: DomainReport, *, encoder: Encoder | None = None) -> dict[str, Any]:
    """One domain's results as the contract's object (an element of ``domains``); see :func:`check_dict`."""
    return {
        "domain": domain.domain,
        "status": domain.verdict.value,
        "checks": [check_dict(result, encoder=encoder) for result in domain.results],
    }


def head_dict(started_at: datetime, finished_at: datetime, verdict: Verdict) -> dict[str, Any]:
    """Everything of a run's document but its ``domains``."""
    return {
        "schema": SCHEMA,
        "tool": {"name": "diag", "version": __version__},
        "started_at": timestamp(started_at),
        "finished_at": timestamp(finished_at),
        "status": verdict.value,
        "exit_code": verdict.exit_code,
    }


def report_dict(report: Report) -> dict[str, Any]:
    """The report as the contract's JSON object."""
    return {
        **head_dict(report.started_at, report.finished_at, report.verdict),
        "domains": [domain_dict(domain) for domain in report.domains],
    }


# The document as a file, written a domain at a time (a run over thousands of domains never holds it whole):
# head_text(head) + ",\n".join(entry_text(domain) ...) + TAIL_TEXT is exactly json.dumps(document, indent=2,
# ensure_ascii=True) + "\n". ensure_ascii also keeps control and bidi characters from servers escaped in the
# file (RPT-06), and so no string holds a raw line break: indenting an entry's lines cannot touch its data.

_ENTRY_INDENT = " " * 4  # an entry of "domains" stands two levels deep
TAIL_TEXT = "\n  ]\n}\n"
"""What follows the last domain's entry in the document's text."""


def head_text(head: Mapping[str, Any]) -> str:
    """The document's text up to its first domain's entry (``head`` from :func:`head_dict`)."""
    text = json.dumps({**head, "domains": []}, indent=2, ensure_ascii=True)
    return text.removesuffix("[]\n}") + "[\n"


def entry_text(entry: Mapping[str, Any], *, writer: EntryWriter | None = None) -> str:
    """One domain's entry (from :func:`domain_dict`) as it stands in the document's text."""
    out = [_ENTRY_INDENT]
    _write(entry, 2, out, writer)
    return "".join(out)


class EntryWriter:
    """Domains' entries for one run over many domains (:meth:`domain_dict`, :meth:`entry_text`), encoding facts
    shared between domains once (:class:`~diag.codec.Encoder`) and writing their text once, too."""

    def __init__(self, size: int = 512) -> None:
        self.encoder = Encoder(size)
        self._size = size
        self._texts: dict[tuple[int, int], tuple[Any, str]] = {}

    def domain_dict(self, domain: DomainReport) -> dict[str, Any]:
        return domain_dict(domain, encoder=self.encoder)

    def entry_text(self, entry: Mapping[str, Any]) -> str:
        return entry_text(entry, writer=self)

    def _text(self, value: Any, level: int) -> str:
        key = (id(value), level)
        kept = self._texts.pop(key, None)
        if kept is None or kept[0] is not value:
            out: list[str] = []
            _write_container(value, level, out, self)
            kept = (value, "".join(out))
            if len(self._texts) >= self._size:
                del self._texts[next(iter(self._texts))]
        self._texts[key] = kept  # the most recently used last; the value is held, so its id stays its own
        return kept[1]


# The text json.dumps(value, indent=2, ensure_ascii=True) gives, written directly: json's own indenting encoder
# is pure Python and the slowest part of writing an entry. A mapping with a key that is not a string (none in a
# report) is left to json itself.

_ESCAPE = json.encoder.encode_basestring_ascii


def _write(value: Any, level: int, out: list[str], writer: EntryWriter | None) -> None:
    if isinstance(value, str):
        out.append(_ESCAPE(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        out.append(_float(value))
    elif writer is not None and writer.encoder.remembers(value):
        out.append(writer._text(value, level))
    else:
        _write_container(value, level, out, writer)


def _write_container(value: Any, level: int, out: list[str], writer: EntryWriter | None) -> None:
    if isinstance(value, Mapping):
        if not value:
            out.append("{}")
            return
        if not all(isinstance(key, str) for key in value):
            out.append(json.dumps(value, indent=2, ensure_ascii=True).replace("\n", "\n" + "  " * level))
            return
        inner = ",\n" + "  " * (level + 1)
        out.append("{" + inner[1:])
        for position, (key, item) in enumerate(value.items()):
            if position:
                out.append(inner)
            out.append(_ESCAPE(key) + ": ")
            _write(item, level + 1, out, writer)
        out.append("\n" + "  " * level + "}")
    elif isinstance(value, list | tuple):
        if not value:
            out.append("[]")
            return
        inner = ",\n" + "  " * (level + 1)
        out.append("[" + inner[1:])
        for position, item in enumerate(value):
            if position:
                out.append(inner)
            _write(item, level + 1, out, writer)
        out.append("\n" + "  " * level + "]")
    else:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _float(value: float) -> str:
    if value != value:
        return "NaN"
    if value == math.inf:
        return "Infinity"
    if value == -math.inf:
        return "-Infinity"
    return float.__repr__(value)


def dumps(report: Report) -> str:
    """The report's document as text (what ``--json`` writes)."""
    head = head_text(head_dict(report.started_at, report.finished_at, report.verdict))
    return head + ",\n".join(entry_text(domain_dict(domain)) for domain in report.domains) + TAIL_TEXT


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
