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

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2

from diag.errors import ConfigError
from diag.evidence import (
    SEVERITIES,
    MessagePath,
    Observed,
    PathHop,
    Section,
    Shown,
    items,
    mapping,
    mappings,
    moment,
    show_time,
    text,
)
from diag.frozen import frozen
from diag.model import Report
from diag.registry import Registry
from diag.render.json import SCHEMA, kind_problem, report_dict
from diag.render.text import sanitize

__all__ = ["render_document", "render_html"]

_TEMPLATE = "report.html.j2"
# Longest remote value shown in full (RPT-04: aiosmtplib accepts 32 KiB replies); the rest is cut with a note.
_LIMIT = 1000


_SEVERITIES = SEVERITIES
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
# The heading of each part of a domain's evidence (diag.evidence.Section), in the order of the page.
_SECTION_TITLES = {Section.MAIL: "Evidence", Section.POLICY: "Mail authentication and transport policy"}


# --- public API --------------------------------------------------------------------------------------------


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page, each check's evidence shown as the check's spec says
    (:attr:`diag.registry.Check.evidence`; the checks diag ships)."""
    return render_document(report_dict(report))


def render_document(document: Mapping[str, Any]) -> str:
    """:func:`render_html` from the report's contract form (:func:`diag.render.json.report_dict`), which is what
    every check's evidence view reads, defensively: the page stays inert whatever the document holds.

    Raises :class:`ConfigError` with a one-line reason when ``document`` is not ``diag.report/1``.
    """
    problem = _structure_problem(document)
    if problem is not None:
        raise ConfigError(f"cannot render the HTML report: not a {SCHEMA} document: {problem}")
    return _render(_environment(), document)


# --- validation --------------------------------------------------------------------------------------------

def _structure_problem(document: Any) -> str | None:
    """What makes ``document`` unusable for rendering, in a few words (the schema name and the shape of domains,
    checks and findings); None when it is usable. A saved file gets the whole schema
    (:func:`diag.render.json.load_report`)."""
    problem = kind_problem(document)
    if problem is not None:
        return problem
    domains = document.get("domains")
    if not isinstance(domains, list):
        return "domains is not a list"
    for d_index, domain in enumerate(domains):
        where = f"domains/{d_index}"
        if not isinstance(domain, Mapping) or not isinstance(domain.get("domain"), str):
            return f"{where} is not a domain object with a domain name"
        checks = domain.get("checks")
        if not isinstance(checks, list):
            return f"{where}/checks is not a list"
        for c_index, check in enumerate(checks):
            problem = _check_problem(check)
            if problem is not None:
                return f"{where}/checks/{c_index}{problem}"
    return None


def _check_problem(check: Any) -> str | None:
    if not isinstance(check, Mapping) or not isinstance(check.get("id"), str):
        return " is not a check object with an id"
    findings = check.get("findings", [])
    if not isinstance(findings, list):
        return "/findings is not a list"
    for index, finding in enumerate(findings):
        if not isinstance(finding, Mapping) or not isinstance(finding.get("code"), str):
            return f"/findings/{index} is not a finding object with a code"
    return None


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
    from checks import default_registry  # each check says how its facts are shown (imported here, on use)

    return env.get_template(_TEMPLATE).render(report=_report_view(document, default_registry()))


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
#
# The report's frame (verdicts, counts, checks, findings, "Problems to fix") is built here from the document's
# generic parts; the evidence of each check is built by the check itself (diag.evidence), so nothing here knows
# any check's facts.


@frozen
class _Count:
    severity: str
    count: int


@frozen
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

    @property
    def shown(self) -> Shown:
        return Shown(self.code, self.severity, self.subject, self.anchor)


@frozen
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


@frozen
class _Evidence:
    """One card of a domain's evidence: a check's view and its partial, or (template "") the hops of a check
    this diag does not know."""

    kind: str
    template: str
    view: Any
    section: Section = Section.MAIL


@frozen
class _Section:
    """One part of a domain's evidence (diag.evidence.Section): its heading, a CSS token and its cards."""

    token: str
    title: str
    evidence: tuple[_Evidence, ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        """What the part shows, in words (its summary line names them when it is collapsed)."""
        return tuple(dict.fromkeys(e.kind for e in self.evidence))


@frozen
class _Domain:
    anchor: str
    name: str
    status: str
    counts: tuple[_Count, ...]
    incomplete: int
    # The evidence of a domain with nothing to fix starts collapsed (a <details> without "open"; no script).
    evidence_open: bool
    checks: tuple[_Check, ...]
    evidence: tuple[_Evidence, ...]

    @property
    def sections(self) -> tuple[_Section, ...]:
        """The evidence by part, in the order of diag.evidence.Section; parts without a card are left out."""
        return tuple(
            _Section(section.value, _SECTION_TITLES[section], cards)
            for section in Section
            if (cards := tuple(e for e in self.evidence if e.section is section))
        )


@frozen
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


@frozen
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


# The CSP of RPT-05, stricter where it costs nothing: no <base> and no form targets either.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def _report_view(document: Mapping[str, Any], registry: Registry) -> _Report:
    started = moment(document.get("started_at"))
    finished = moment(document.get("finished_at"))
    ordered = _worst_first([mapping(d) for d in items(document.get("domains"))])
    domains = tuple(_domain_view(index, d, finished, registry) for index, d in enumerate(ordered, 1))
    all_findings = [f for d in domains for c in d.checks for f in c.findings]
    verdicts = [d.status for d in domains]
    elapsed = ""
    if started is not None and finished is not None:
        elapsed = _duration((finished - started).total_seconds())
    return _Report(
        csp=_CSP,
        version=text(mapping(document.get("tool")).get("version")),
        status=_token(document.get("status"), _VERDICTS, "unknown"),
        exit_code=text(document.get("exit_code")),
        started=show_time(started, document.get("started_at")),
        finished=show_time(finished, document.get("finished_at")),
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
        return _VERDICT_ORDER.index(verdict), text(domain.get("domain")).casefold()

    return sorted(domains, key=key)


def _domain_view(index: int, domain: Mapping[str, Any], finished: datetime | None, registry: Registry) -> _Domain:
    anchor = f"domain-{index}"
    checks = [mapping(c) for c in items(domain.get("checks"))]
    views = tuple(_check_view(c, f"{anchor}-check-{number}") for number, c in enumerate(checks, 1))
    status = _token(domain.get("status"), _VERDICTS, "unknown")
    return _Domain(
        anchor=anchor,
        name=text(domain.get("domain")),
        status=status,
        counts=_counts(f.severity for c in views for f in c.findings),
        incomplete=sum(1 for c in views if c.status in _NOT_RUN),
        evidence_open=status != "ok" or any(_is_problem(f) for c in views for f in c.findings),
        checks=views,
        evidence=tuple(
            shown
            for check, view in zip(checks, views, strict=True)
            if (shown := _evidence(check, view, finished, registry)) is not None
        ),
    )


def _evidence(check: Mapping[str, Any], view: _Check, finished: datetime | None, registry: Registry
              ) -> _Evidence | None:  # fmt: skip
    """What a completed check shows beside its findings, built by the check itself (its spec's evidence; the
    partial's name comes from the registry, never from the document: RPT-07). A check this diag does not know
    (a result saved by a newer one) shows the message path its facts carry, if any."""
    facts = mapping(check.get("facts"))
    spec = registry[view.id] if view.id in registry else None
    if spec is None:
        hops = _hops(facts.get("hops"))
        return _Evidence("message path", "", MessagePath(view.title, hops)) if hops else None
    if spec.evidence is None or view.status != "completed":
        return None
    shown = spec.evidence.view(Observed(facts, tuple(f.shown for f in view.findings), finished))
    if shown is None:
        return None
    return _Evidence(spec.evidence.kind, f"checks/{spec.id}.html.j2", shown, spec.evidence.section)


def _check_view(check: Mapping[str, Any], anchor: str) -> _Check:
    findings = tuple(
        _Finding(
            anchor=f"{anchor}-finding-{number}",
            severity=_token(f.get("severity"), _SEVERITIES, "info"),
            code=text(f.get("code")),
            subject=text(f.get("subject")),
            message=text(f.get("message")),
            remediation=text(f.get("remediation")),
            cloud_error=text(f.get("cloud_error")),
            subject_in_message=bool(f.get("subject")) and text(f.get("subject")) in text(f.get("message")),
        )
        for number, f in enumerate(mappings(check.get("findings")), 1)
    )
    worst = min((_SEVERITIES.index(f.severity) for f in findings), default=len(_SEVERITIES) - 1)
    duration = check.get("duration_ms")
    status = _token(check.get("status"), _CHECK_STATUSES, "error")
    return _Check(
        anchor=anchor,
        id=text(check.get("id")),
        title=text(check.get("title")) or text(check.get("id")),
        status=status,
        status_label=status.replace("_", " "),
        reason=text(check.get("reason")),
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


# Hops: the evidence of a check this diag does not know whose facts carry a "hops" list (an end-to-end check's
# message path, in a result saved by a newer diag).


def _hops(value: Any) -> tuple[PathHop, ...]:
    hops = []
    for number, hop in enumerate(items(value), 1):
        if not isinstance(hop, Mapping):
            hops.append(PathHop(number, text(hop), "", "", "", ""))
            continue
        tls = hop.get("tls")
        if isinstance(tls, Mapping):
            tls_text = " · ".join(text(tls.get(k)) for k in ("version", "cipher") if tls.get(k))
        elif isinstance(tls, bool):
            tls_text = "yes" if tls else "no"
        else:
            tls_text = text(tls)
        known = ("host", "name", "by", "ip", "address", "tls", "connector")
        detail = "; ".join(f"{text(k)}: {text(v)}" for k, v in hop.items() if k not in known and v not in (None, ""))
        hops.append(PathHop(
            number=number,
            host=text(_first(hop, "host", "name", "by")),
            address=text(_first(hop, "ip", "address")),
            tls=tls_text,
            connector=text(hop.get("connector")),
            detail=detail,
        ))  # fmt: skip
    return tuple(hops)


def _first(hop: Mapping[str, Any], *keys: str) -> Any:
    return next((hop[k] for k in keys if hop.get(k) not in (None, "")), None)


# Loose accessors: a saved document may be edited by anyone, so every field is read defensively
# (diag.evidence has the readers).


def _token(value: Any, allowed: Sequence[str], default: str) -> str:
    """A value from a fixed set, for CSS classes: never document text in an attribute (RPT-03)."""
    return value if isinstance(value, str) and value in allowed else default


def _duration(seconds: float) -> str:
    if seconds < 0:
        return ""
    if seconds < 1:
        return "under 1 s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
