"""What a check shows beside its findings: its evidence in the HTML report and its measurements for monitoring.

Each check owns how its facts are shown. Its spec (:class:`~diag.registry.Check`) names an :class:`Evidence`
(the view data for its template partial, ``report_templates/checks/<id>.html.j2``) and a ``measure`` function
(the SMTP stage timings and certificate expiries the monitoring formats export); the renderers know no check's
facts, only these types.

Both read the facts as a report holds them: their JSON form (:func:`diag.codec.encode`), which is what a saved
result contains. They read it defensively, every member with a type check and a fallback: the HTML report
renders any ``diag.report/1`` document, one edited by hand included, and whatever it holds must come out as
inert text (security-cases.md RPT-04), never as an exception. The loose readers for that are here
(:func:`text`, :func:`items`, :func:`mapping`, :func:`mappings`, :func:`moment`, :func:`number`), with the
pieces several checks' views share: how an SMTP session ended, and the failing findings named beside a
verdict.

A domain's evidence comes in sections (:class:`Section`): what was seen along the mail's path (MX, sessions,
certificates, routing, probes), and the domain's mail authentication and transport policy (SPF, DKIM, DMARC,
MTA-STS, TLS-RPT, DANE, DNSSEC). A check's :class:`Evidence` names its section.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from diag.frozen import frozen

__all__ = [
    "SEVERITIES",
    "STAGES",
    "CertificateExpiry",
    "Evidence",
    "Failing",
    "Measurements",
    "MessagePath",
    "Observed",
    "PathHop",
    "ProbeArrival",
    "Section",
    "Shown",
    "StageTimes",
    "endpoint",
    "failing_by_subject",
    "items",
    "mapping",
    "mappings",
    "moment",
    "number",
    "outcome",
    "show_time",
    "text",
    "tls_text",
]

SEVERITIES = ("critical", "error", "warning", "notice", "info")
"""Severity labels, worst first: the only severity words a view or a CSS class may carry."""

STAGES = ("connect", "banner", "ehlo", "tls")
"""The SMTP session stages timed per address: TCP connect, greeting, EHLO, STARTTLS with its handshake."""


# --- what a view gets, and what a check declares ------------------------------------------------------------


@frozen
class Shown:
    """One finding of the check as the report shows it: enough for its evidence to name it and link to it.

    Attributes:
        code: the finding code.
        severity: its severity label, one of :data:`SEVERITIES`.
        subject: what it is about (``host [ip]:port``), as the findings name it.
        anchor: the id of the finding's element in the report (a link target; never document text).
    """

    code: str
    severity: str
    subject: str
    anchor: str

    @property
    def problem(self) -> bool:
        """Warning or worse: something to fix, which the evidence about its subject must not hide."""
        return SEVERITIES.index(self.severity) <= SEVERITIES.index("warning")


@frozen
class Observed:
    """What a check's evidence view is built from.

    Attributes:
        facts: the check's facts in their JSON form (an empty mapping when it has none).
        findings: the check's findings, as the report shows them.
        finished: when the run finished (validity is judged against it, so a saved report stays true), or None
            when the document does not say.
    """

    facts: Mapping[str, Any]
    findings: tuple[Shown, ...]
    finished: datetime | None


class Section(enum.StrEnum):
    """The part of a domain's evidence a check's evidence is shown in, in the order of the report."""

    MAIL = "mail"
    """What was seen along the mail's path: MX hosts, SMTP sessions, certificates, routing, probes."""
    POLICY = "policy"
    """The domain's mail authentication and transport policy: SPF, DKIM, DMARC, MTA-STS, TLS-RPT, DANE, DNSSEC."""


@frozen
class Evidence:
    """How a check shows its facts in the HTML report.

    Attributes:
        kind: what it shows, in a few words (``MX records``); named in the summary line of its section when it
            starts collapsed.
        view: builds the data its template partial (``report_templates/checks/<check id>.html.j2``) renders,
            as ``view``, from a completed check; None when there is nothing to show.
        section: the part of the domain's evidence it belongs to.
    """

    kind: str
    view: Callable[[Observed], Any]
    section: Section = Section.MAIL


@frozen
class PathHop:
    """One hop of a message's path as the report draws it (the fields report_templates/macros.html.j2's hops
    macro reads): the server that wrote the Received line, the TLS, and the rest in words."""

    number: int
    host: str
    address: str
    tls: str
    connector: str
    detail: str


@frozen
class MessagePath:
    """A message's path: a title (which message, how it ended) and a hop per Received line."""

    title: str
    hops: tuple[PathHop, ...]


@frozen
class StageTimes:
    """How long each SMTP session stage took at one address of a host.

    Attributes:
        host: the host the address belongs to (an MX host name), as the findings name it.
        seconds: per stage, in :data:`STAGES` order; None for a stage the session did not reach.
    """

    host: str
    seconds: tuple[float | None, ...]


@frozen
class CertificateExpiry:
    """When the leaf certificate one address of a host presented expires, and the thresholds it was judged by.

    Attributes:
        host: the host the address belongs to (an MX host name).
        not_after: the leaf's notAfter.
        checked_at: when it was judged; None when the facts do not say.
        warn_days, crit_days: the run's expiry thresholds in days, when known.
    """

    host: str
    not_after: datetime
    checked_at: datetime | None
    warn_days: float | None
    crit_days: float | None

    @property
    def days_left(self) -> float | None:
        if self.checked_at is None:
            return None
        return (self.not_after - self.checked_at).total_seconds() / 86400


@frozen
class ProbeArrival:
    """How one end-to-end probe that was sent fared, with its thresholds.

    Attributes:
        name: the probe's name (its ``[[Probe]]`` Name).
        delivered: it arrived in the watched mailbox by its deadline.
        latency: seconds from its acceptance to its arrival; None when it did not arrive.
        slow, deadline: its Slow and Deadline in seconds, when known.
    """

    name: str
    delivered: bool
    latency: float | None
    slow: float | None
    deadline: float | None


@frozen
class Measurements:
    """What a check measured, per address (per probe), for the monitoring formats (which keep one value per
    host)."""

    stages: tuple[StageTimes, ...] = ()
    certificates: tuple[CertificateExpiry, ...] = ()
    probes: tuple[ProbeArrival, ...] = ()


# --- loose readers of JSON facts ----------------------------------------------------------------------------


def text(value: Any) -> str:
    """Any JSON value as text: a string as it is, null as "", a boolean as yes/no, anything else as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def items(value: Any) -> list[Any]:
    """An array, or nothing."""
    return value if isinstance(value, list) else []


def mapping(value: Any) -> Mapping[str, Any]:
    """An object, or an empty one."""
    return value if isinstance(value, Mapping) else {}


def mappings(value: Any) -> list[Mapping[str, Any]]:
    """The objects of an array."""
    return [item for item in items(value) if isinstance(item, Mapping)]


def number(value: Any) -> float | None:
    """A finite number (not a boolean), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def moment(value: Any) -> datetime | None:
    """A time in ISO 8601 as an aware UTC datetime (a time without zone is taken as UTC), or None."""
    if not isinstance(value, str):
        return None
    try:
        found = datetime.fromisoformat(value)
    except ValueError:
        return None
    return found.replace(tzinfo=UTC) if found.tzinfo is None else found.astimezone(UTC)


def show_time(when: datetime | None, raw: Any) -> str:
    """A time for people (``2026-11-26 20:00:00 UTC``), or the value as it was when it is not a time."""
    return f"{when:%Y-%m-%d %H:%M:%S} UTC" if when is not None else text(raw)


# --- shared pieces: SMTP sessions, failing findings ---------------------------------------------------------


def endpoint(host: str, session: Mapping[str, Any]) -> str:
    """``host [ip]:port`` for a session (the findings' subject), or the host alone when it has no address."""
    ip, port = text(session.get("ip")), text(session.get("port"))
    return f"{host} [{ip}]:{port}" if ip else host


def outcome(session: Mapping[str, Any]) -> tuple[str, str]:
    """How a session ended: a CSS token from a fixed set (good, bad, unknown) and the words for it."""
    error = session.get("error")
    if error:
        return "bad", text(error).replace("-", " ")
    if session.get("reached") == "done":
        return "good", "completed"
    return "unknown", text(session.get("reached")) or "not reached"


def tls_text(session: Mapping[str, Any]) -> str:
    """The TLS a session negotiated (``TLSv1.3 · TLS_AES_256_GCM_SHA384``), or why there was none."""
    tls = mapping(session.get("tls"))
    if tls:
        return " · ".join(x for x in (text(tls.get("version")), text(tls.get("cipher"))) if x)
    if session.get("starttls_offered"):
        return "STARTTLS offered, no TLS session"
    return "no STARTTLS" if session.get("reached") else ""


@frozen
class Failing:
    """A failing fact shown beside a verdict that would read as "all is well" alone, linked to its finding.

    Attributes:
        text: the fact in a few words (``leaf expired 1 day ago``).
        tone: a CSS token: ``bad`` (error or worse) or ``warn``.
        anchor: the finding's element id.
    """

    text: str
    tone: str
    anchor: str

    @classmethod
    def of(cls, finding: Shown, words: str) -> Failing:
        return cls(words, "warn" if finding.severity == "warning" else "bad", finding.anchor)


def failing_by_subject(findings: Sequence[Shown]) -> dict[str, list[Shown]]:
    """The findings of warning or worse, by subject: what the evidence about that subject must show."""
    found: dict[str, list[Shown]] = {}
    for finding in findings:
        if finding.problem:
            found.setdefault(finding.subject, []).append(finding)
    return found
