"""The result model: frozen data, no I/O.

A run produces one :class:`Report`; it holds a :class:`DomainReport` per checked domain, which holds a
:class:`CheckResult` per check, which holds the typed facts the check observed and the :class:`Finding` s it
judged from them. Exit codes and verdicts follow ../shared/design/CONTRACT.md (monitoring-plugin convention).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import field
from datetime import UTC, datetime
from typing import Any

from diag.codec import decode
from diag.frozen import frozen

__all__ = [
    "REPORT_SCHEMA",
    "CheckResult",
    "DomainReport",
    "Finding",
    "Report",
    "Severity",
    "Status",
    "Verdict",
    "subject_host",
]

REPORT_SCHEMA = "diag.report/1"
"""The name and version of the JSON document of a report (CONTRACT.md)."""

# The address part of a subject: " [192.0.2.1]:25", " [2001:db8::1]:25" or " [192.0.2.1]" (CONTRACT.md: a subject
# names the host and, where a connection is involved, the IP and port).
_ADDRESS_PART = re.compile(r" \[[0-9A-Fa-f:.]+\](?::\d+)?$")


def subject_host(subject: str) -> str:
    """What a finding is about without the address it was reached at: ``mx.contoso.com [192.0.2.1]:25`` →
    ``mx.contoso.com``; a subject without an address is itself. Case and a trailing dot do not count.

    A problem's identity across runs (history, ``--notify change``) is check + code + this: the cloud's MX
    addresses rotate and the lab picks a port per run, and neither makes a problem new or resolved.
    """
    return _ADDRESS_PART.sub("", subject).rstrip(".").lower()


class Severity(enum.IntEnum):
    """How bad a finding is; ordered, so ``max()`` gives the worst."""

    INFO = 0
    NOTICE = 1
    WARNING = 2
    ERROR = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()


class Status(enum.StrEnum):
    """Whether a check ran: *completed* (its findings are its verdict), *not applicable* (there is nothing for
    it to examine, and that is no problem: a domain with a null MX has no mail host to connect to), or could
    not run, and why (error, timeout, skipped because something it needs did not complete)."""

    COMPLETED = "completed"
    ERROR = "error"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"
    NOT_APPLICABLE = "not_applicable"

    @property
    def label(self) -> str:
        """The status for people: ``not applicable``."""
        return self.value.replace("_", " ")

    @property
    def could_not_run(self) -> bool:
        """Error, timeout or skipped: what the check would have found is unknown. (Completed and not
        applicable leave nothing unknown.)"""
        return self not in (Status.COMPLETED, Status.NOT_APPLICABLE)


class Verdict(enum.StrEnum):
    """The verdict for a domain or a whole run, with its monitoring-plugin exit code."""

    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"
    UNKNOWN = "unknown"

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES[self]

    @classmethod
    def of(cls, results: Iterable[CheckResult]) -> Verdict:
        """Critical beats unknown beats warning beats ok.

        A check that could not run may hide a critical problem, so it outweighs a warning; a critical finding
        is certain, so it outweighs the unknown (CONTRACT.md, exit codes). A check that does not apply hides
        nothing: it counts as neither.
        """
        results = list(results)
        incomplete = any(result.status.could_not_run for result in results)
        return cls._judge((f.severity for r in results for f in r.findings), incomplete=incomplete)

    @classmethod
    def of_findings(cls, findings: Iterable[Finding]) -> Verdict:
        """The verdict of findings alone (from work that cannot be incomplete, like ``diag route``)."""
        return cls._judge((f.severity for f in findings), incomplete=False)

    @classmethod
    def _judge(cls, severities: Iterable[Severity], *, incomplete: bool) -> Verdict:
        worst = max(severities, default=None)
        if worst is not None and worst >= Severity.ERROR:
            return cls.CRITICAL
        if incomplete:
            return cls.UNKNOWN
        if worst is Severity.WARNING:
            return cls.WARNING
        return cls.OK


_EXIT_CODES = {Verdict.OK: 0, Verdict.WARNING: 1, Verdict.CRITICAL: 2, Verdict.UNKNOWN: 3}


@frozen
class Finding:
    """One judgement about one subject.

    Attributes:
        code: stable finding code (CONTRACT.md), e.g. ``CERT_EXPIRED``.
        severity: the code's severity (declared by the check that emits it).
        subject: what it is about: ``host [ip]:port`` when a connection is involved, else a host or domain.
        message: one sentence for a person: what is wrong (or what was verified).
        remediation: what to do about it; empty for positive findings.
        cloud_error: the error text the cloud service shows for this problem, when it would fail because of it.
    """

    code: str
    severity: Severity
    subject: str
    message: str
    remediation: str = ""
    cloud_error: str | None = None


@frozen
class CheckResult:
    """The outcome of one check on one domain.

    Attributes:
        check_id: the check's id (``mx``).
        title: the check's title for people.
        status: completed, not applicable, or why it could not run.
        reason: for error/timeout/skipped, a short reason starting with its category (``dns: SERVFAIL``); for
            not applicable, why the check does not apply (``the domain accepts no mail (null MX)``).
        facts: the typed facts the check observed (a frozen dataclass), or None when it did not complete.
        findings: the check's judgements, in the order it made them.
        started: event-loop time when the check started (monotonic seconds; for ordering, not for display).
        finished: event-loop time when the check finished.
    """

    check_id: str
    title: str
    status: Status
    reason: str | None = None
    facts: Any = None
    findings: tuple[Finding, ...] = ()
    started: float = 0.0
    finished: float = 0.0

    @property
    def duration_ms(self) -> int:
        return max(0, round((self.finished - self.started) * 1000))

    @classmethod
    def from_json(cls, check: Mapping[str, Any], *, facts: type[Any] | None = None, where: str = "") -> CheckResult:
        """One check of a ``diag.report/1`` document (an element of a domain's ``checks``) as the result it was
        written from: its facts decoded into ``facts`` (the check's facts class), or left as the JSON object they
        are when ``facts`` is None. ``where`` prefixes the place named in a ValueError. See
        :meth:`Report.from_json`.
        """
        check_id = _field(check, "id", str)
        findings = []
        for index, f in enumerate(_field(check, "findings", list)):
            severity = _severity(_field(f, "severity", str), f"{where}/findings/{index}")
            findings.append(Finding(_field(f, "code", str), severity, _field(f, "subject", str),
                                    _field(f, "message", str), _field(f, "remediation", str), f.get("cloud_error")))
        try:
            status = Status(_field(check, "status", str))
        except ValueError:
            raise ValueError(f"{where}/status: {check['status']!r} is not a check status") from None
        observed: Any = _field(check, "facts", dict) or None
        if observed is not None and facts is not None:
            observed = decode(facts, observed, at=f"{where}/facts")
        # The document keeps a check's duration, not its start and end: a report needs nothing more.
        duration = _field(check, "duration_ms", int) / 1000
        return cls(check_id, _field(check, "title", str), status, check.get("reason"), observed, tuple(findings),
                   0.0, duration)  # fmt: skip


@frozen
class DomainReport:
    """All check results for one domain, in registry order."""

    domain: str
    results: tuple[CheckResult, ...]

    @property
    def verdict(self) -> Verdict:
        return Verdict.of(self.results)

    def result(self, check_id: str) -> CheckResult:
        for result in self.results:
            if result.check_id == check_id:
                return result
        raise KeyError(check_id)


@frozen
class Report:
    """One run of ``diag check``."""

    started_at: datetime
    finished_at: datetime
    domains: tuple[DomainReport, ...] = field(default_factory=tuple)

    @property
    def verdict(self) -> Verdict:
        return Verdict.of(result for domain in self.domains for result in domain.results)

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code

    @classmethod
    def from_json(cls, document: Mapping[str, Any], *, facts: Mapping[str, type[Any]]) -> Report:
        """A ``diag.report/1`` document (``diag check --json``, parsed) as the Report it was written from.

        The one way back from a saved result. ``facts`` maps a check id to the class of its facts (the
        registry's :attr:`~diag.registry.Registry.facts`); a check's facts are decoded into that class
        (:func:`diag.codec.decode`), so writing the report again gives the same document. The facts of a check
        not in ``facts`` (one this diag does not know) stay the JSON object they are; an empty object is no
        facts (None), as the document writes them. Verdicts and exit codes are not read: they follow from the
        findings and statuses.

        Raises ValueError naming where (``domains/0/checks/1/facts/probed/0/session/reached``) and what is
        wrong when the document is not such a report.
        """
        if document.get("schema") != REPORT_SCHEMA:
            raise ValueError(f"its schema is {document.get('schema')!r}, not {REPORT_SCHEMA!r}")
        try:
            domains = []
            for d, domain in enumerate(_field(document, "domains", list)):
                checks = enumerate(_field(domain, "checks", list))
                results = tuple(
                    CheckResult.from_json(check, facts=facts.get(check.get("id")), where=f"domains/{d}/checks/{c}")
                    for c, check in checks
                )
                domains.append(DomainReport(_field(domain, "domain", str), results))
            return cls(_moment(document, "started_at"), _moment(document, "finished_at"), tuple(domains))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a report: {exc}") from None


def _field(mapping: Mapping[str, Any], name: str, kind: type) -> Any:
    value = mapping[name]
    if not isinstance(value, kind):
        raise TypeError(f"{name} is not a {kind.__name__}")
    return value


def _severity(label: str, where: str) -> Severity:
    try:
        return Severity[label.upper()]
    except KeyError:
        raise ValueError(f"{where}/severity: {label!r} is not a severity") from None


def _moment(document: Mapping[str, Any], name: str) -> datetime:
    try:
        return datetime.fromisoformat(_field(document, name, str).replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        raise ValueError(f"{name}: {document[name]!r} is not a time") from None
