"""The HTML view of a report: one self-contained file for people, from the ``diag.report/1`` JSON document.

``diag check --html FILE`` and ``diag report RESULT.json --html FILE`` render the same document, so a saved
result renders exactly as the live run did. The page says what to fix first (issue 10): "Problems to fix"
(:func:`_problems`, built from findings and check statuses alone, so it holds for any check), then the domains
worst first, the evidence of a domain with nothing to fix collapsed.

Everything a server sent (banners, EHLO lines, certificate names, DNS names) is hostile until shown otherwise
(security-cases.md §5):

* RPT-01: the Jinja2 environment forces ``autoescape=True``; ``select_autoescape()`` would leave ``.j2``
  templates unescaped.
* RPT-02: no ``|safe``, ``Markup`` or ``{% autoescape false %}`` anywhere (a test greps the templates).
* RPT-03: every attribute is quoted; remote text never goes into ``href``, ``src``, ``style`` or event
  attributes. Class names and ids come from fixed tables or counters here, never from the document: a domain is
  ``domain-N`` (N its place on the page), a check ``domain-N-check-C``, a finding ``domain-N-check-C-finding-F``,
  and every ``href`` is ``#`` and one of these.
* RPT-04: every ``{{ }}`` output passes through :func:`_finalize` (Jinja's ``finalize`` runs before escaping):
  control and bidi characters become visible escapes and long values are cut with a note.
* RPT-05: a Content-Security-Policy meta tag forbids everything but inline styles and ``data:`` images; the
  file has no script and fetches nothing (styles and SVG are inline).
* RPT-07: templates come from the package only; no template is ever built from remote text.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from diag.errors import ConfigError
from diag.render.json import SCHEMA, load_schema
from diag.render.text import sanitize

__all__ = ["load_report", "render_html"]

_TEMPLATE = "report.html.j2"
# Longest remote value shown in full (RPT-04: aiosmtplib accepts 32 KiB replies); the rest is cut with a note.
_LIMIT = 1000
# Width of the widest SMTP timing bar, in CSS pixels.
_BAR_WIDTH = 260
_BAR_HEIGHT = 14


_SEVERITIES = ("critical", "error", "warning", "notice", "info")
_VERDICTS = ("ok", "warning", "critical", "unknown")
# "not_applicable": the check does not apply to the domain (port 25 of a null-MX domain); that is neither a
# problem nor "could not run".
_CHECK_STATUSES = ("completed", "error", "timeout", "skipped", "not_applicable")
# Checks that did not run although they apply ("Not run" in the overview). "skipped" is usually the echo of
# another failure (a requirement that failed), so "Problems to fix" names it only when nothing else explains a
# domain's verdict; error and timeout are always named there: they may hide any problem.
_NOT_RUN = ("error", "timeout", "skipped")
_COULD_NOT_RUN = ("error", "timeout")
# Worst first, as the run's verdict ranks them (CONTRACT.md, exit codes): a check that could not run may hide a
# critical problem, so an unknown domain comes before a warning.
_VERDICT_ORDER = ("critical", "unknown", "warning", "ok")
_STAGES = (
    ("connect", "connect_s", "TCP connect"),
    ("banner", "banner_s", "greeting"),
    ("ehlo", "ehlo_s", "EHLO"),
    ("tls", "tls_s", "STARTTLS and handshake"),
)


# --- public API --------------------------------------------------------------------------------------------


def render_html(document: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page.

    ``document`` is the contract's JSON object (:func:`diag.render.json.report_dict`, or a saved result read by
    :func:`load_report`). Raises :class:`ConfigError` with a one-line reason when it is not ``diag.report/1``.
    """
    problem = _structure_problem(document, strict=False)
    if problem is not None:
        raise ConfigError(f"cannot render the HTML report: not a {SCHEMA} document: {problem}")
    return _render(_environment(), document)


def load_report(path: Path | str) -> dict[str, Any]:
    """Read a result saved by ``diag check --json`` and validate it against the shipped JSON Schema.

    The schema is checked with ``jsonschema`` when it is installed, else structurally. Raises
    :class:`ConfigError` naming the file and the reason.
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


# --- validation --------------------------------------------------------------------------------------------

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
        level = [child for item in level for child in (item.values() if isinstance(item, dict) else _list(item))]
    return any(isinstance(item, dict | list) for item in level)


def _schema_problem(document: Any) -> str | None:
    # Another kind of document (diag.routes/1, anything else) is named as such, not by its first schema error.
    if not isinstance(document, Mapping) or document.get("schema") != SCHEMA:
        return _structure_problem(document, strict=False)
    try:
        jsonschema = importlib.import_module("jsonschema")
    except ImportError:  # a test dependency only: fall back to the structural check
        return _structure_problem(document, strict=True)
    validator = jsonschema.Draft202012Validator(load_schema("report"))
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is None:
        return None
    where = "/".join(str(part) for part in error.absolute_path) or "the top level"
    return f"{sanitize(str(error.message), limit=160)} (at {sanitize(where, limit=80)})"


def _structure_problem(document: Any, *, strict: bool) -> str | None:
    """What makes ``document`` unusable as a report, in a few words; None when it is usable.

    Loose (``strict=False``, for rendering): the schema name and the shape of domains, checks and findings.
    Strict (for saved files without jsonschema): also the required fields and their enumerations.
    """
    if not isinstance(document, Mapping):
        return f"expected a JSON object, got {_json_type(document)}"
    if document.get("schema") != SCHEMA:
        found = document.get("schema")
        return f"its schema is {sanitize(repr(found), limit=60)}" if found is not None else "no schema field"
    if strict:
        for key in ("tool", "started_at", "finished_at", "status", "exit_code"):
            if key not in document:
                return f"the field {key} is missing"
        if document["status"] not in _VERDICTS:
            return "status is not one of " + ", ".join(_VERDICTS)
    domains = document.get("domains")
    if not isinstance(domains, list):
        return "domains is not a list"
    for d_index, domain in enumerate(domains):
        where = f"domains/{d_index}"
        if not isinstance(domain, Mapping) or not isinstance(domain.get("domain"), str):
            return f"{where} is not a domain object with a domain name"
        if strict and domain.get("status") not in _VERDICTS:
            return f"{where}/status is not one of " + ", ".join(_VERDICTS)
        checks = domain.get("checks")
        if not isinstance(checks, list):
            return f"{where}/checks is not a list"
        for c_index, check in enumerate(checks):
            problem = _check_problem(check, strict=strict)
            if problem is not None:
                return f"{where}/checks/{c_index}{problem}"
    return None


def _check_problem(check: Any, *, strict: bool) -> str | None:
    if not isinstance(check, Mapping) or not isinstance(check.get("id"), str):
        return " is not a check object with an id"
    if strict and check.get("status") not in _CHECK_STATUSES:
        return "/status is not one of " + ", ".join(_CHECK_STATUSES)
    findings = check.get("findings", [])
    if not isinstance(findings, list):
        return "/findings is not a list"
    for index, finding in enumerate(findings):
        if not isinstance(finding, Mapping) or not isinstance(finding.get("code"), str):
            return f"/findings/{index} is not a finding object with a code"
        if strict and finding.get("severity") not in _SEVERITIES:
            return f"/findings/{index}/severity is not one of " + ", ".join(_SEVERITIES)
    return None


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# --- Jinja2 ------------------------------------------------------------------------------------------------


def _environment() -> jinja2.Environment:
    """A fresh environment per rendering (no module-level state)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("report_templates", ""),
        # RPT-01: forced on; select_autoescape() does not cover .j2.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["clip"] = _clip
    return env


def _render(env: jinja2.Environment, document: Mapping[str, Any]) -> str:
    return env.get_template(_TEMPLATE).render(report=_report_view(document))


def _finalize(value: Any) -> Any:
    """Every ``{{ }}`` output, before autoescaping: remote text made visible and inert (RPT-04).

    Output that is already HTML (a macro's, which Jinja escaped while rendering it) passes as it is; no value
    from the document can be such output, as JSON gives plain strings.
    """
    if isinstance(value, str) and not hasattr(value, "__html__"):
        return _clip(value, _LIMIT)
    return value


def _clip(value: Any, limit: int = _LIMIT) -> str:
    """Control, bidi and invisible characters as escapes; at most ``limit`` characters, then a note."""
    return sanitize(str(value), limit=limit)


# --- view model: plain, typed values for the templates; all arithmetic happens here -----------------------


@dataclass(frozen=True, slots=True)
class _Count:
    severity: str
    count: int


@dataclass(frozen=True, slots=True)
class _Finding:
    anchor: str
    severity: str
    code: str
    subject: str
    message: str
    remediation: str
    cloud_error: str
    # The message names the subject already (as CONTRACT.md asks), so the subject need not be repeated.
    subject_in_message: bool


@dataclass(frozen=True, slots=True)
class _Check:
    anchor: str
    id: str
    title: str
    status: str
    status_label: str
    reason: str
    duration_ms: str
    worst: str
    findings: tuple[_Finding, ...]


@dataclass(frozen=True, slots=True)
class _MxRow:
    preference: str
    name: str
    addresses: tuple[str, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Mx:
    notes: tuple[str, ...]
    rows: tuple[_MxRow, ...]


@dataclass(frozen=True, slots=True)
class _Segment:
    stage: str
    label: str
    x: str
    width: str
    ms: str


@dataclass(frozen=True, slots=True)
class _Bar:
    width: str
    height: str
    segments: tuple[_Segment, ...]
    total_ms: str
    summary: str


@dataclass(frozen=True, slots=True)
class _Session:
    endpoint: str
    outcome: str
    outcome_label: str
    detail: str
    bar: _Bar | None
    greeting: str
    extensions: tuple[str, ...]
    tls: str
    transcript: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Cert:
    role: str
    subject: str
    issuer: str
    names: tuple[str, ...]
    not_before: str
    not_after: str
    validity: str
    validity_class: str
    key: str
    signature: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class _Failing:
    """A failing fact shown beside a "trusted" verdict, linked to the finding that states it."""

    text: str
    tone: str  # CSS token: "bad" (error or worse) or "warn"
    anchor: str


@dataclass(frozen=True, slots=True)
class _Presented:
    endpoint: str
    trust: str  # the chain's verdict, with ", but:" when failing facts follow a trusted chain
    trust_class: str
    trust_detail: str
    failing: tuple[_Failing, ...]
    chain: tuple[_Cert, ...]


@dataclass(frozen=True, slots=True)
class _Decision:
    order: str
    connector: str
    rule: str
    smart_hosts: tuple[str, ...]
    tls_settings: str
    tls_domain: str
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _SmartHost:
    endpoint: str
    outcome: str
    outcome_label: str
    tls: str
    trust: str
    failing: tuple[_Failing, ...]
    detail: str


@dataclass(frozen=True, slots=True)
class _Routing:
    accepted: str
    decision: _Decision
    alternative: _Decision | None
    smart_hosts: tuple[_SmartHost, ...]
    inbound: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class _Hop:
    number: int
    host: str
    address: str
    tls: str
    connector: str
    detail: str


@dataclass(frozen=True, slots=True)
class _Hops:
    title: str
    hops: tuple[_Hop, ...]


@dataclass(frozen=True, slots=True)
class _Domain:
    anchor: str
    name: str
    status: str
    counts: tuple[_Count, ...]
    incomplete: int
    # The evidence of a domain with nothing to fix starts collapsed (a <details> without "open"; no script).
    evidence_open: bool
    checks: tuple[_Check, ...]
    mx: _Mx | None
    sessions: tuple[_Session, ...]
    not_probed: tuple[tuple[str, str], ...]
    certificates: tuple[_Presented, ...]
    routing: _Routing | None
    hops: tuple[_Hops, ...]

    @property
    def evidence_kinds(self) -> tuple[str, ...]:
        """What the evidence part shows, in words (its summary line names them when it is collapsed)."""
        kinds = (
            ("MX records", self.mx is not None),
            ("SMTP sessions", bool(self.sessions or self.not_probed)),
            ("certificates", bool(self.certificates)),
            ("routing", self.routing is not None),
            ("message path", bool(self.hops)),
        )
        return tuple(name for name, shown in kinds if shown)


@dataclass(frozen=True, slots=True)
class _Problem:
    """One row of "Problems to fix": a finding of warning or worse, or a check that could not run."""

    tone: str  # CSS token and the words of its pill: a severity, or "unknown" for a check that did not run
    domain: str
    domain_anchor: str
    subject: str
    code: str
    fix: str
    cloud_error: str
    anchor: str


@dataclass(frozen=True, slots=True)
class _Report:
    csp: str
    version: str
    status: str
    exit_code: str
    started: str
    finished: str
    elapsed: str
    counts: tuple[_Count, ...]
    domain_verdicts: tuple[_Count, ...]
    problems: tuple[_Problem, ...]
    domains: tuple[_Domain, ...]
    stages: tuple[tuple[str, str], ...] = field(default=tuple((stage, label) for stage, _, label in _STAGES))


# The CSP of RPT-05, stricter where it costs nothing: no <base> and no form targets either.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def _report_view(document: Mapping[str, Any]) -> _Report:
    started = _time(document.get("started_at"))
    finished = _time(document.get("finished_at"))
    ordered = _worst_first([_dict(d) for d in _list(document.get("domains"))])
    domains = tuple(_domain_view(index, d, finished) for index, d in enumerate(ordered, 1))
    all_findings = [f for d in domains for c in d.checks for f in c.findings]
    verdicts = [d.status for d in domains]
    elapsed = ""
    if started is not None and finished is not None:
        elapsed = _duration((finished - started).total_seconds())
    return _Report(
        csp=_CSP,
        version=_text(_dict(document.get("tool")).get("version")),
        status=_token(document.get("status"), _VERDICTS, "unknown"),
        exit_code=_text(document.get("exit_code")),
        started=_show_time(started, document.get("started_at")),
        finished=_show_time(finished, document.get("finished_at")),
        elapsed=elapsed,
        counts=_counts(f.severity for f in all_findings),
        domain_verdicts=tuple(_Count(v, verdicts.count(v)) for v in _VERDICT_ORDER),
        problems=_problems(domains),
        domains=domains,
    )


def _worst_first(domains: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Domains by verdict, worst first, and by name within a verdict (sorted() is stable for equal names)."""

    def key(domain: Mapping[str, Any]) -> tuple[int, str]:
        verdict = _token(domain.get("status"), _VERDICTS, "unknown")
        return _VERDICT_ORDER.index(verdict), _text(domain.get("domain")).casefold()

    return sorted(domains, key=key)


def _domain_view(index: int, domain: Mapping[str, Any], finished: datetime | None) -> _Domain:
    anchor = f"domain-{index}"
    checks = [_dict(c) for c in _list(domain.get("checks"))]
    views = tuple(_check_view(c, f"{anchor}-check-{number}") for number, c in enumerate(checks, 1))
    facts = {_text(c.get("id")): _dict(c.get("facts")) for c in checks if c.get("status") == "completed"}
    sessions, not_probed = _sessions(facts.get("port25", {}))
    status = _token(domain.get("status"), _VERDICTS, "unknown")
    cert_failing = _failing_by_subject(views, "certificate")
    smart_host_failing = _failing_by_subject(views, "connectors")
    return _Domain(
        anchor=anchor,
        name=_text(domain.get("domain")),
        status=status,
        counts=_counts(f.severity for c in views for f in c.findings),
        incomplete=sum(1 for c in views if c.status in _NOT_RUN),
        evidence_open=status != "ok" or any(_is_problem(f) for c in views for f in c.findings),
        checks=views,
        mx=_mx(facts["mx"]) if "mx" in facts else None,
        sessions=sessions,
        not_probed=not_probed,
        certificates=tuple(
            _presented(p, finished, cert_failing) for p in _dicts(facts.get("certificate", {}).get("certificates"))
        ),
        routing=_routing(facts["connectors"], smart_host_failing) if "connectors" in facts else None,
        hops=tuple(
            _Hops(_text(c.get("title")) or _text(c.get("id")), hops)
            for c in checks
            if (hops := _hops(_dict(c.get("facts")).get("hops")))
        ) + tuple(
            _Hops(f"{_text(c.get('title')) or _text(c.get('id'))}: {_text(p.get('name'))}{_probe_verdict(p)}", hops)
            for c in checks
            for p in _dicts(_dict(c.get("facts")).get("probes"))
            if (hops := _probe_hops(p))
        ),
    )


def _check_view(check: Mapping[str, Any], anchor: str) -> _Check:
    findings = tuple(
        _Finding(
            anchor=f"{anchor}-finding-{number}",
            severity=_token(f.get("severity"), _SEVERITIES, "info"),
            code=_text(f.get("code")),
            subject=_text(f.get("subject")),
            message=_text(f.get("message")),
            remediation=_text(f.get("remediation")),
            cloud_error=_text(f.get("cloud_error")),
            subject_in_message=bool(f.get("subject")) and _text(f.get("subject")) in _text(f.get("message")),
        )
        for number, f in enumerate(_dicts(check.get("findings")), 1)
    )
    worst = min((_SEVERITIES.index(f.severity) for f in findings), default=len(_SEVERITIES) - 1)
    duration = check.get("duration_ms")
    status = _token(check.get("status"), _CHECK_STATUSES, "error")
    return _Check(
        anchor=anchor,
        id=_text(check.get("id")),
        title=_text(check.get("title")) or _text(check.get("id")),
        status=status,
        status_label=status.replace("_", " "),
        reason=_text(check.get("reason")),
        duration_ms=f"{duration} ms" if isinstance(duration, int) and not isinstance(duration, bool) else "",
        worst=_SEVERITIES[worst],
        findings=findings,
    )


def _counts(severities: Iterable[str]) -> tuple[_Count, ...]:
    found = list(severities)
    return tuple(_Count(s, found.count(s)) for s in _SEVERITIES)


# Problems to fix: generic, from findings and check statuses only (no check's facts), so it holds for any check.


def _is_problem(finding: _Finding) -> bool:
    return _SEVERITIES.index(finding.severity) <= _SEVERITIES.index("warning")


def _problems(domains: Sequence[_Domain]) -> tuple[_Problem, ...]:
    """Every finding of warning or worse and every check that could not run, worst first.

    Rank: critical and error findings, then checks that could not run (they may hide anything, so they outweigh
    a warning, as in the verdict), then warnings; then the domain's place on the page (worst domain first), then
    the order of appearance. A domain that is not OK but has none of these (only skipped checks) shows its
    skipped checks, so that every domain that is not OK has a row.
    """
    ranked: list[tuple[int, int, int, _Problem]] = []
    for place, domain in enumerate(domains):
        rows: list[tuple[int, _Problem]] = []
        skipped: list[tuple[int, _Problem]] = []
        for check in domain.checks:
            for f in check.findings:
                if _is_problem(f):
                    rank = {"critical": 0, "error": 1}.get(f.severity, 3)
                    rows.append((rank, _Problem(
                        tone=f.severity, domain=domain.name, domain_anchor=domain.anchor,
                        subject=f.subject, code=f.code, fix=f.remediation or f.message, cloud_error=f.cloud_error,
                        anchor=f.anchor,
                    )))  # fmt: skip
            if check.status in _NOT_RUN:
                words = "Could not check" if check.status in _COULD_NOT_RUN else "Not checked"
                row = _Problem(
                    tone="unknown", domain=domain.name, domain_anchor=domain.anchor,
                    subject=f"{check.title} ({check.id})" if check.title != check.id else check.id,
                    code=f"{check.id} {check.status}", fix=f"{words}: {check.reason or check.status}", cloud_error="",
                    anchor=check.anchor,
                )  # fmt: skip
                (rows if check.status in _COULD_NOT_RUN else skipped).append((2, row))
        if not rows and domain.status != "ok":
            rows = skipped
        ranked.extend((rank, place, order, row) for order, (rank, row) in enumerate(rows))
    return tuple(row for *_, row in sorted(ranked, key=lambda item: item[:3]))


def _failing_by_subject(checks: Sequence[_Check], check_id: str) -> dict[str, list[_Finding]]:
    """The findings of warning or worse of one check, by subject: what evidence about that subject must show."""
    found: dict[str, list[_Finding]] = {}
    for check in checks:
        if check.id == check_id:
            for f in check.findings:
                if _is_problem(f):
                    found.setdefault(f.subject, []).append(f)
    return found


def _tone(finding: _Finding) -> str:
    return "warn" if finding.severity == "warning" else "bad"


# MX


def _mx(facts: Mapping[str, Any]) -> _Mx:
    notes = []
    if facts.get("null_mx"):
        notes.append("The domain publishes a null MX (0 .): it accepts no mail.")
    if facts.get("implicit"):
        notes.append("No MX records: the domain's own address is the implicit MX (RFC 5321 §5.1).")
    if facts.get("status") == "nxdomain":
        notes.append("The domain does not exist (NXDOMAIN).")
    for name in _list(facts.get("duplicates")):
        notes.append(f"Listed more than once: {_text(name)}")
    rows = []
    for host in _dicts(facts.get("hosts")):
        name = _text(host.get("name"))
        canonical = _text(host.get("canonical_name"))
        host_notes = []
        if host.get("ip_literal"):
            host_notes.append("an IP address, not a host name")
        elif host.get("valid_name") is False:
            host_notes.append("not a valid host name: not looked up")
        elif not _list(host.get("addresses")):
            host_notes.append("no A/AAAA record")
        if canonical and canonical.lower() != name.lower() and not host.get("ip_literal"):
            host_notes.append(f"alias (CNAME) for {canonical}")
        rows.append(_MxRow(
            preference=_text(host.get("preference")),
            name=name,
            addresses=tuple(_text(a) for a in _list(host.get("addresses"))),
            notes=tuple(host_notes),
        ))  # fmt: skip
    return _Mx(tuple(notes), tuple(rows))


# SMTP sessions


def _sessions(facts: Mapping[str, Any]) -> tuple[tuple[_Session, ...], tuple[tuple[str, str], ...]]:
    probed = [(_text(p.get("host")), _dict(p.get("session"))) for p in _dicts(facts.get("probed"))]
    longest = max((_session_seconds(s) for _, s in probed), default=0.0)
    sessions = tuple(_session(host, s, longest) for host, s in probed)
    not_probed = tuple(
        (f"{_text(n.get('host'))} [{_text(n.get('ip'))}]", _text(n.get("why"))) for n in _dicts(facts.get("not_probed"))
    )
    return sessions, not_probed


def _session_seconds(session: Mapping[str, Any]) -> float:
    return sum(s for _, key, _ in _STAGES if (s := _seconds(session.get(key))) is not None)


def _session(host: str, s: Mapping[str, Any], longest: float) -> _Session:
    error = _text(s.get("error"))
    outcome, label = _outcome(s)
    code = s.get("greeting_code")
    greeting = _text(s.get("greeting"))
    tls = _dict(s.get("tls"))
    return _Session(
        endpoint=_endpoint(host, s),
        outcome=outcome,
        outcome_label=label,
        detail=_text(s.get("detail")) if error else "",
        bar=_bar(s, longest),
        greeting=f"{_text(code)} {greeting}".strip() if code is not None else greeting,
        extensions=tuple(_text(e) for e in _list(s.get("extensions"))),
        tls=_tls_text(tls, s),
        transcript=tuple(_text(line) for line in _list(s.get("transcript"))),
    )


def _outcome(s: Mapping[str, Any]) -> tuple[str, str]:
    """A CSS class from a fixed set, and the words for it."""
    error = s.get("error")
    if error:
        return "bad", _text(error).replace("-", " ")
    if s.get("reached") == "done":
        return "good", "completed"
    return "unknown", _text(s.get("reached")) or "not reached"


def _endpoint(host: str, s: Mapping[str, Any]) -> str:
    ip, port = _text(s.get("ip")), _text(s.get("port"))
    return f"{host} [{ip}]:{port}" if ip else host


def _tls_text(tls: Mapping[str, Any], s: Mapping[str, Any]) -> str:
    if tls:
        return " · ".join(x for x in (_text(tls.get("version")), _text(tls.get("cipher"))) if x)
    if s.get("starttls_offered"):
        return "STARTTLS offered, no TLS session"
    return "no STARTTLS" if s.get("reached") else ""


def _bar(s: Mapping[str, Any], longest: float) -> _Bar | None:
    """The stage timings as a horizontal stacked bar, scaled so the slowest session of the domain fills it."""
    stages = [(stage, label, sec) for stage, key, label in _STAGES if (sec := _seconds(s.get(key))) is not None]
    if not stages or longest <= 0:
        return None
    scale = _BAR_WIDTH / longest
    x = 0.0
    segments = []
    for stage, label, sec in stages:
        width = sec * scale
        segments.append(_Segment(stage, label, f"{x:.2f}", f"{max(width, 0.5):.2f}", _ms(sec)))
        x += width
    total = sum(sec for _, _, sec in stages)
    summary = ", ".join(f"{label} {_ms(sec)} ms" for _, label, sec in stages)
    return _Bar(f"{_BAR_WIDTH}", f"{_BAR_HEIGHT}", tuple(segments), _ms(total), summary)


def _seconds(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"


# Certificates


# Findings the chain verdict states already ("chain untrusted", "chain self-signed", ...).
_TRUST_CODES = ("CERT_UNTRUSTED", "CERT_SELF_SIGNED", "CERT_CHAIN_INCOMPLETE", "CERT_MALFORMED")


def _presented(p: Mapping[str, Any], at: datetime | None, failing: Mapping[str, list[_Finding]]) -> _Presented:
    """One presented chain. "Trusted" judges the chain alone (issuer and signatures); the leaf's dates, names
    and key are separate findings, named right beside that verdict so it never reads as "all is well"."""
    trust = _text(p.get("trust"))
    chain = _dicts(p.get("chain"))
    certs = tuple(_cert(c, index, len(chain), at) for index, c in enumerate(chain))
    endpoint = _text(p.get("endpoint"))
    trusted = trust == "trusted"
    facts = tuple(
        _Failing(_cert_fact(f.code, certs[0] if certs else None, _text(p.get("host"))), _tone(f), f.anchor)
        for f in failing.get(endpoint, [])
        if trusted or f.code not in _TRUST_CODES
    )
    verdict = f"chain {trust}" if trust else "chain not judged"
    trust_class = "good" if trusted else "bad"
    if facts:
        verdict += ", but:" if trusted else "; also:"
    if trusted and facts:
        trust_class = "bad" if any(f.tone == "bad" for f in facts) else "warn"
    return _Presented(
        endpoint=endpoint,
        trust=verdict,
        trust_class=trust_class,
        trust_detail=_text(p.get("trust_detail")),
        failing=facts,
        chain=certs,
    )


def _cert_fact(code: str, leaf: _Cert | None, host: str) -> str:
    """A few words for what a certificate finding says about the leaf; the code itself for any other finding."""
    if leaf is not None and code in ("CERT_EXPIRED", "CERT_NOT_YET_VALID") and leaf.validity:
        return f"leaf {leaf.validity}"
    if leaf is not None and code in ("CERT_EXPIRING", "CERT_EXPIRING_SOON") and leaf.validity:
        return f"leaf expires soon: {leaf.validity}"
    if code == "CERT_NAME_MISMATCH" and host:
        return f"leaf does not name {host}"
    if leaf is not None and code == "CERT_WEAK_KEY" and leaf.key:
        return f"weak key: {leaf.key}"
    if code == "CERT_WEAK_SIGNATURE":
        return "weak signature"
    return code


def _cert(c: Mapping[str, Any], index: int, length: int, at: datetime | None) -> _Cert:
    if index == 0:
        role = "leaf" if length > 1 or not c.get("self_issued") else "leaf (self-signed)"
    else:
        role = "root (sent by the server)" if c.get("self_issued") else "intermediate"
    not_before, not_after = _time(c.get("not_before")), _time(c.get("not_after"))
    validity, validity_class = _validity(not_before, not_after, at)
    key_bits = c.get("key_bits")
    return _Cert(
        role=role,
        subject=_text(c.get("subject")),
        issuer=_text(c.get("issuer")),
        names=tuple(_text(n) for n in _list(c.get("dns_names"))),
        not_before=_show_time(not_before, c.get("not_before")),
        not_after=_show_time(not_after, c.get("not_after")),
        validity=validity,
        validity_class=validity_class,
        key=f"{_text(c.get('key_type'))} {_text(key_bits)} bits".strip() if key_bits else _text(c.get("key_type")),
        signature=_text(c.get("signature_hash")).upper(),
        fingerprint=_fingerprint(_text(c.get("sha256"))),
    )


def _validity(not_before: datetime | None, not_after: datetime | None, at: datetime | None) -> tuple[str, str]:
    """Days left against the run's finish time (not the time of rendering: a saved report stays true)."""
    if at is None or not_after is None:
        return "", "unknown"
    if not_before is not None and at < not_before:
        return f"not valid for {_days((not_before - at).total_seconds() / 86400)} yet", "bad"
    left = (not_after - at).total_seconds() / 86400
    if left < 0:
        return f"expired {_days(-left)} ago", "bad"
    return f"{_days(left)} left", "warn" if left <= 30 else "good"


def _days(days: float) -> str:
    whole = round(days)  # as the certificate check counts them
    return "1 day" if whole == 1 else f"{whole} days"


def _fingerprint(hex_digest: str) -> str:
    if re.fullmatch(r"[0-9a-fA-F]{64}", hex_digest):
        return ":".join(hex_digest[i : i + 2] for i in range(0, 64, 2)).upper()
    return hex_digest


# Routing


def _routing(facts: Mapping[str, Any], failing: Mapping[str, list[_Finding]]) -> _Routing:
    routing = _dict(facts.get("routing"))
    accepted = _dict(facts.get("accepted"))
    if accepted:
        accepted_text = f"accepted domain ({_text(accepted.get('domain_type')) or 'type unknown'})"
    else:
        accepted_text = "not an accepted domain of the organization"
    alternative = routing.get("alternative")
    return _Routing(
        accepted=accepted_text,
        decision=_decision(_dict(routing.get("decision"))),
        alternative=_decision(_dict(alternative)) if isinstance(alternative, Mapping) else None,
        smart_hosts=tuple(_smart_host(h, failing) for h in _dicts(facts.get("smart_hosts"))),
        inbound=_inbound(_dict(facts.get("inbound"))),
    )


_RULES = {
    "exact": "exact match",
    "wildcard": "wildcard match",
    "all-accepted-domains": "all accepted domains",
    "catch-all": "catch-all (*)",
    "transport-rule": "a transport rule",
    "mx": "no connector: DNS MX",
}


def _decision(decision: Mapping[str, Any]) -> _Decision:
    connector = _dict(decision.get("connector"))
    rule = _text(decision.get("rule"))
    pattern = _text(decision.get("pattern"))
    rule_text = _RULES.get(rule, rule)
    if pattern:
        rule_text = f"{rule_text} on {pattern}"
    notes = []
    tied = [_text(t) for t in _list(decision.get("tied_with"))]
    if tied:
        notes.append("tied with " + ", ".join(tied) + "; the lowest name wins")
    if decision.get("transport_rule_connector"):
        issue = _text(decision.get("transport_rule_issue"))
        named = _text(decision.get("transport_rule_connector"))
        notes.append(f"a transport rule names {named}" + (f" ({issue}: not used)" if issue else ""))
    if connector.get("use_mx_record"):
        smart_hosts: tuple[str, ...] = ("the MX hosts of the domain",)
    else:
        smart_hosts = tuple(_text(h) for h in _list(connector.get("smart_hosts")))
    return _Decision(
        order=_text(decision.get("order")),
        connector=_text(connector.get("name")) if connector else "",
        rule=rule_text,
        smart_hosts=smart_hosts,
        tls_settings=(_text(connector.get("tls_settings")) or "opportunistic") if connector else "",
        tls_domain=_text(connector.get("tls_domain")),
        notes=tuple(notes),
    )


def _smart_host(h: Mapping[str, Any], failing: Mapping[str, list[_Finding]]) -> _SmartHost:
    session = _dict(h.get("session"))
    name, ip = _text(h.get("name")), _text(h.get("ip"))
    endpoint = _endpoint(name, session) if session else (f"{name} [{ip}]" if ip else name)
    if h.get("resolve_error"):
        outcome, label, detail = "bad", "not resolved", _text(h.get("resolve_error"))
    elif h.get("not_probed"):
        outcome, label, detail = "unknown", "not probed", _text(h.get("not_probed"))
    elif session:
        outcome, label = _outcome(session)
        detail = _text(session.get("detail")) if session.get("error") else ""
    else:
        outcome, label, detail = "unknown", "not probed", ""
    trust = _text(h.get("trust"))
    # A trusted chain next to a smart host that fails validation (expired leaf, TlsDomain mismatch): the failing
    # finding is named in the same cell, as for the MX certificates.
    facts = tuple(_Failing(f.code, _tone(f), f.anchor) for f in failing.get(endpoint, [])) if trust == "trusted" else ()
    if h.get("trust_detail"):
        trust = f"{trust}: {_text(h.get('trust_detail'))}"
    tls = _tls_text(_dict(session.get("tls")), session)
    return _SmartHost(endpoint, outcome, label, tls, trust, facts, detail)


def _inbound(inbound: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    if not inbound:
        return ()
    rows = []
    names = ", ".join(_text(n) for n in _list(inbound.get("cert_names")))
    source = {"client-cert": "--client-cert", "smart-host": "the smart host's certificate"}.get(
        _text(inbound.get("cert_source")), _text(inbound.get("cert_source"))
    )
    rows.append(("Certificate names", f"{names} (from {source})" if names and source else names or "none known"))
    if inbound.get("sender_ip"):
        rows.append(("Sending address", _text(inbound.get("sender_ip"))))
    relay = _dict(inbound.get("relay"))
    if relay:
        connector = _text(_dict(relay.get("inbound_connector")).get("name"))
        rows.append(("Inbound connector", connector or "none matches"))
        verdict = "allowed" if relay.get("allowed") else f"refused: {_text(relay.get('reply'))}"
        rows.append((f"Relay to {_text(inbound.get('external_domain'))}", verdict))
        if relay.get("reason"):
            rows.append(("Why", _text(relay.get("reason"))))
    return tuple(rows)


# Hops (generic: any check whose facts carry a "hops" list, such as an end-to-end check)


def _hops(value: Any) -> tuple[_Hop, ...]:
    hops = []
    for number, hop in enumerate(_list(value), 1):
        if not isinstance(hop, Mapping):
            hops.append(_Hop(number, _text(hop), "", "", "", ""))
            continue
        tls = hop.get("tls")
        if isinstance(tls, Mapping):
            tls_text = " · ".join(_text(tls.get(k)) for k in ("version", "cipher") if tls.get(k))
        elif isinstance(tls, bool):
            tls_text = "yes" if tls else "no"
        else:
            tls_text = _text(tls)
        known = ("host", "name", "by", "ip", "address", "tls", "connector")
        detail = "; ".join(f"{_text(k)}: {_text(v)}" for k, v in hop.items() if k not in known and v not in (None, ""))
        hops.append(_Hop(
            number=number,
            host=_text(_first(hop, "host", "name", "by")),
            address=_text(_first(hop, "ip", "address")),
            tls=tls_text,
            connector=_text(hop.get("connector")),
            detail=detail,
        ))  # fmt: skip
    return tuple(hops)


def _probe_verdict(probe: Mapping[str, Any]) -> str:
    """How the probe ended, for the top of its path: `` (delivered)``, `` (timeout)``..."""
    verdicts = _dicts(probe.get("verdicts"))
    return f" ({_text(verdicts[0].get('outcome'))})" if verdicts and verdicts[0].get("outcome") else ""


def _probe_hops(probe: Mapping[str, Any]) -> tuple[_Hop, ...]:
    """An end-to-end probe's path (diag.probe.run.ProbeFacts): a hop per Received line, each named by the server
    that wrote it; a probe that never arrived shows how far it got (accepted by its Via)."""
    hops = []
    for number, hop in enumerate(_dicts(probe.get("hops")), 1):
        tls = hop.get("tls")
        version = " · ".join(_text(hop.get(k)) for k in ("tls_version", "tls_cipher") if hop.get(k))
        sender = " ".join(part for part in (_text(hop.get("from_host")), f"[{_text(hop.get('ip'))}]"
                                            if hop.get("ip") else "") if part)  # fmt: skip
        facts = [f"from {sender}" if sender else "", _text(hop.get("protocol")), _text(hop.get("at"))]
        if isinstance(hop.get("delay_s"), int | float):
            facts.append(f"+{float(hop['delay_s']):.0f} s")
        if isinstance(hop.get("skew_s"), int | float):
            facts.append(f"its clock {float(hop['skew_s']):.0f} s behind the previous hop's")
        hops.append(_Hop(
            number=number,
            host=_text(hop.get("by_host")),
            address="",
            tls=version or ("yes" if tls is True else "no" if tls is False else ""),
            connector="",
            detail="; ".join(fact for fact in facts if fact),
        ))  # fmt: skip
    if not hops and probe.get("accepted_at"):
        hops.append(_Hop(1, _text(probe.get("via")), "", "", "", f"accepted at {_text(probe.get('accepted_at'))}; "
                         "not seen in the watched mailbox since"))  # fmt: skip
    return tuple(hops)


def _first(mapping: Mapping[str, Any], *keys: str) -> Any:
    return next((mapping[k] for k in keys if mapping.get(k) not in (None, "")), None)


# Loose accessors: a saved document may be edited by anyone, so every field is read defensively.


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in _list(value) if isinstance(item, Mapping)]


def _token(value: Any, allowed: Sequence[str], default: str) -> str:
    """A value from a fixed set, for CSS classes: never document text in an attribute (RPT-03)."""
    return value if isinstance(value, str) and value in allowed else default


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _show_time(moment: datetime | None, raw: Any) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment is not None else _text(raw)


def _duration(seconds: float) -> str:
    if seconds < 0:
        return ""
    if seconds < 1:
        return "under 1 s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
