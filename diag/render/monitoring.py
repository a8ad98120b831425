"""Views for monitoring systems: a Nagios/Icinga plugin result, a Prometheus textfile, JUnit XML.

Each view is a pure function of a :class:`~diag.model.Report` that returns text; the CLI writes it and exits
with ``report.exit_code``. All three share one state scale, the monitoring-plugin one (CONTRACT.md, exit
codes): 0 ok, 1 warning, 2 critical, 3 unknown. A single check's state is the run's rule applied to that check
alone (:meth:`Verdict.of`): an error or critical finding makes it critical, else a check that could not run
(error, timeout, skipped) is unknown, else a warning finding makes it a warning, else it is ok. A check that
does not apply (``not_applicable``: a domain with a null MX has no mail host to probe) is ok and named nowhere
as a problem; JUnit marks it skipped with the reason.

Measurements come from the checks themselves: a check's spec may name a ``measure`` function
(:mod:`diag.evidence`), which reads its facts in their JSON form (port25: the stage timings of every session;
certificate: the expiry of every presented leaf; e2e: how each probe fared), so nothing here knows a check's
facts, and facts loaded back from a saved JSON report give the same output.

A series is named by what it measures, not by where it was measured: domain, MX host name and stage, never the
address or port (issue 10; the same identity as history's, :func:`~diag.model.subject_host`). The cloud's MX
addresses rotate and the lab picks a port per run, and a label holding them would start a new series on every
run. When a host has several addresses, its one value per label is the worst of them: for each SMTP stage the
slowest address, for the certificate the soonest-expiring one. Which address it was stays in the evidence
(findings, JSON, HTML).

Every string that came from the network is made inert first (:func:`~diag.render.text.sanitize`, which also
escapes the code points XML 1.0 and UTF-8 cannot carry), then escaped by the rules of the format.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from diag.codec import encode
from diag.evidence import STAGES, CertificateExpiry, Measurements, ProbeArrival, StageTimes
from diag.frozen import frozen
from diag.model import CheckResult, DomainReport, Finding, Report, Severity, Status, Verdict, subject_host
from diag.registry import Registry
from diag.render.text import sanitize

if TYPE_CHECKING:
    from prometheus_client.core import GaugeMetricFamily

__all__ = ["STAGES", "check_state", "junit", "nagios", "prometheus"]

_SHORT = 300  # characters of one untrusted string in a summary, label or attribute


def check_state(result: CheckResult) -> Verdict:
    """The state of one check: the run's verdict rule applied to this check alone (see the module docstring)."""
    return Verdict.of((result,))


# --- measurements: what each check measured (its spec's ``measure``), one value per host ---------------------


def _shipped() -> Registry:
    from checks import default_registry  # each check says what its facts measure (imported here, on use)

    return default_registry()


def _measured(domain: DomainReport, registry: Registry) -> list[Measurements]:
    """What the checks of a domain measured, per address, in the order of the checks."""
    found = []
    for result in domain.results:
        spec = registry[result.check_id] if result.check_id in registry else None
        if spec is not None and spec.measure is not None and result.facts is not None:
            facts = encode(result.facts)
            if isinstance(facts, Mapping):
                found.append(spec.measure(facts))
    return found


def _slowest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _timings(measured: list[Measurements]) -> list[StageTimes]:
    """One entry per MX host, in the order the hosts were first probed: per stage, the slowest of its
    addresses (module docstring)."""
    by_host: dict[str, tuple[float | None, ...]] = {}
    for times in (t for m in measured for t in m.stages):
        host = subject_host(times.host)
        before = by_host.get(host, (None,) * len(STAGES))
        by_host[host] = tuple(_slowest(a, b) for a, b in zip(before, times.seconds, strict=True))
    return [StageTimes(host, seconds) for host, seconds in by_host.items()]


def _certificates(measured: list[Measurements]) -> list[CertificateExpiry]:
    """One entry per MX host that presented a readable leaf: the soonest-expiring, in first-seen order."""
    by_host: dict[str, CertificateExpiry] = {}
    for expiry in (e for m in measured for e in m.certificates):
        host = subject_host(expiry.host)
        if host not in by_host or expiry.not_after < by_host[host].not_after:
            by_host[host] = replace(expiry, host=host)
    return list(by_host.values())


def _arrivals(measured: list[Measurements]) -> list[ProbeArrival]:
    """The end-to-end probes that were sent, one per name (a probe concerns one domain once)."""
    by_name: dict[str, ProbeArrival] = {}
    for arrival in (a for m in measured for a in m.probes):
        by_name.setdefault(arrival.name, arrival)
    return list(by_name.values())


# --- Nagios / Icinga -----------------------------------------------------------------------------------------

_SUMMARY_PROBLEMS = 3
# Monitoring-plugin guidelines, "Performance data" (https://nagios-plugins.org/doc/guidelines.html#AEN200): a
# label may hold anything but "=", and needs quotes (with "'" doubled) for anything else unusual; "|" is
# replaced too, since some parsers split the whole output at it.
_BARE_LABEL = re.compile(r"[A-Za-z0-9_.:/\[\]@+-]+")
_PIPE = "¦"  # shown in place of "|", which separates text from performance data


def _plugin_text(text: str, *, limit: int = _SHORT) -> str:
    return sanitize(text, limit=limit).replace("|", _PIPE)


def _perf_label(text: str) -> str:
    label = sanitize(text, limit=_SHORT).replace("=", "_").replace("|", _PIPE)
    if _BARE_LABEL.fullmatch(label):
        return label
    return "'" + label.replace("'", "''") + "'"


def _perf_number(value: float, *, places: int) -> str:
    text = f"{value:.{places}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _perf(label: str, value: float | None, uom: str = "", *, places: int = 6, warn: str = "", crit: str = "",
          minimum: str = "", maximum: str = "") -> str:  # fmt: skip
    # "U" is the guidelines' literal for a value that could not be determined.
    shown = "U" if value is None else _perf_number(value, places=places) + uom
    return f"{_perf_label(label)}={shown};{warn};{crit};{minimum};{maximum}".rstrip(";")


@frozen
class _Problem:
    rank: tuple[int, int]  # higher is worse: (3 critical, 2 unknown, 1 warning; then severity or status)
    domain: str
    what: str  # "CODE" for a finding, "check status" for a check that could not run


def _problems(domain: DomainReport) -> list[_Problem]:
    """What to name in the summary line: warning-or-worse findings and checks that could not run.

    A skipped check is named only when nothing else explains the domain's state, because it is usually the
    consequence of a failure already named (a check skipped because its requirement failed).
    """
    found = []
    for result in domain.results:
        for finding in result.findings:
            if finding.severity >= Severity.ERROR:
                found.append(_Problem((3, int(finding.severity)), domain.domain, finding.code))
            elif finding.severity is Severity.WARNING:
                found.append(_Problem((1, 0), domain.domain, finding.code))
        if result.status in (Status.ERROR, Status.TIMEOUT):
            found.append(_Problem((2, 1), domain.domain, f"{result.check_id} {result.status.value}"))
    if not found:
        found = [
            _Problem((2, 0), domain.domain, f"{result.check_id} {result.status.value}")
            for result in domain.results
            if result.status is Status.SKIPPED
        ]
    return found


def _summary(report: Report) -> str:
    states = Counter(domain.verdict for domain in report.domains)
    total = len(report.domains)
    counts = ", ".join(
        f"{states[state]} {state.value}"
        for state in (Verdict.CRITICAL, Verdict.UNKNOWN, Verdict.WARNING, Verdict.OK)
        if states[state]
    )
    text = f"{total} domain{'' if total == 1 else 's'}" + (f": {counts}" if counts else "")
    problems: Counter[tuple[str, str]] = Counter()
    ranks: dict[tuple[str, str], tuple[int, int]] = {}
    for domain in report.domains:
        for problem in _problems(domain):
            key = (problem.domain, problem.what)
            problems[key] += 1
            ranks[key] = max(ranks.get(key, problem.rank), problem.rank)
    # Worst first; among equals, report order (sorted() is stable, Counter keeps insertion order).
    ordered = sorted(problems, key=lambda key: ranks[key], reverse=True)
    named = [
        f"{domain} {what}" + (f" (x{problems[(domain, what)]})" if problems[(domain, what)] > 1 else "")
        for domain, what in ordered[:_SUMMARY_PROBLEMS]
    ]
    if len(ordered) > _SUMMARY_PROBLEMS:
        named.append(f"+{len(ordered) - _SUMMARY_PROBLEMS} more")
    if named:
        text += "; " + ", ".join(named)
    return _plugin_text(text, limit=1000)


# The statuses of a check that did not run although it applies, named by their own [UNKNOWN] line. Listed, not
# "anything but completed": a check that does not apply to a domain is no problem to name.
_NOT_RUN = (Status.ERROR, Status.TIMEOUT, Status.SKIPPED)


def _long_output(report: Report) -> Iterator[str]:
    for domain in report.domains:
        for result in domain.results:
            where = f"{domain.domain} {result.check_id}"
            if result.status in _NOT_RUN:
                reason = f" - {result.reason}" if result.reason else ""
                yield _plugin_text(f"[UNKNOWN] {where}: {result.status.value}{reason}", limit=1000)
            for finding in result.findings:
                if finding.severity >= Severity.WARNING:
                    yield _plugin_text(
                        f"[{finding.severity.label.upper()}] {where}: {finding.code} {finding.subject} - "
                        f"{finding.message}",
                        limit=1000,
                    )


def _perfdata(report: Report, registry: Registry) -> Iterator[str]:
    states = Counter(domain.verdict for domain in report.domains)
    for state in Verdict:
        yield _perf(f"domains_{state.value}", states[state], minimum="0")
    run_seconds = (report.finished_at - report.started_at).total_seconds()
    yield _perf("time", max(0.0, run_seconds), "s", places=3, minimum="0")
    for domain in report.domains:
        measured = _measured(domain, registry)
        for timings in _timings(measured):
            for stage, seconds in zip(STAGES, timings.seconds, strict=True):
                yield _perf(f"{domain.domain} {timings.host} {stage}", seconds, "s", minimum="0")
        for cert in _certificates(measured):
            # Days left, unitless: the guidelines know no unit for days. "N:" alerts below N (guidelines,
            # "Threshold and ranges").
            warn = f"{_perf_number(cert.warn_days, places=2)}:" if cert.warn_days is not None else ""
            crit = f"{_perf_number(cert.crit_days, places=2)}:" if cert.crit_days is not None else ""
            yield _perf(f"{domain.domain} {cert.host} cert_days", cert.days_left, places=2, warn=warn, crit=crit)
        for probe in _arrivals(measured):
            # Latency of an arrived probe ("U" when it did not arrive), its Slow and Deadline as thresholds.
            warn = _perf_number(probe.slow, places=3) if probe.slow is not None else ""
            crit = _perf_number(probe.deadline, places=3) if probe.deadline is not None else ""
            latency = probe.latency if probe.delivered else None
            yield _perf(f"{domain.domain} {probe.name} latency", latency, "s", places=3, warn=warn, crit=crit,
                        minimum="0")  # fmt: skip


def nagios(report: Report) -> str:
    """The report as a monitoring-plugin result (Nagios, Icinga, Naemon, Checkmk's classic checks).

    The first line is ``DIAG <STATE> - <summary> | <performance data>``: the run's state, how many domains
    are in each state, and the worst problems by domain and code. Performance data follow the plugin
    guidelines (``'label'=value[UOM];[warn];[crit];[min];[max]``): domains per state, the run's duration, the
    seconds of each SMTP stage per MX host (``'DOMAIN HOST STAGE'``: the slowest of the host's addresses; ``U``
    when none reached the stage), and the days left on each MX host's certificate (``'DOMAIN HOST cert_days'``:
    the soonest-expiring of its addresses) with the run's expiry thresholds as ``warn:``/``crit:`` ranges, and the
    latency of each end-to-end probe that was sent (``'DOMAIN PROBE latency'``, ``U`` when it did not arrive) with
    its Slow and Deadline as thresholds. Labels name no address or port (module docstring), so a graph keeps its
    series from run to run. Every following line names one finding of warning or worse, or one check that could
    not run. No text carries ``|`` (shown as
    ``¦``) or a control character. The process exit code is ``report.exit_code``.
    """
    perfdata: dict[str, str] = {}  # one value per label: graphing tools key their series by it
    for item in _perfdata(report, _shipped()):
        perfdata.setdefault(item.rpartition("=")[0], item)
    first = f"DIAG {report.verdict.name} - {_summary(report)} | {' '.join(perfdata.values())}"
    return "\n".join([first, *_long_output(report)]) + "\n"


# --- Prometheus ----------------------------------------------------------------------------------------------


class _Family:
    """One gauge family: its samples by label values, the first of duplicate series kept."""

    def __init__(self, name: str, help_text: str, *labels: str) -> None:
        self.name, self.help, self.labels = name, help_text, labels
        self.samples: dict[tuple[str, ...], float] = {}

    def add(self, value: float, *values: str) -> None:
        # Label values are made inert first; prometheus_client then escapes backslash, quote and line feed.
        self.samples.setdefault(tuple(sanitize(text) for text in values), value)

    def metric(self) -> GaugeMetricFamily:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(self.name, self.help, labels=self.labels)
        for values, value in self.samples.items():
            family.add_metric(values, value)
        return family


@frozen
class _Collector:
    """The families of one report, as prometheus_client collects them (a custom collector, no global state)."""

    families: tuple[_Family, ...]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return (family.metric() for family in self.families)


def _unix(moment: datetime) -> float:
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()


_STATES = "0 ok, 1 warning, 2 critical, 3 unknown"


def prometheus(report: Report, *, now: datetime | None = None) -> str:
    """The report in the Prometheus text exposition format, for node_exporter's textfile collector.

    Every metric is a gauge named ``diag_*``; states use the monitoring-plugin scale (module docstring).
    ``diag_findings`` has a sample for every severity of every check, zeros included, so series do not come and
    go between runs. ``diag_certificate_expiry_timestamp_seconds`` and ``diag_smtp_stage_seconds`` are labelled
    ``domain`` and ``host`` (and ``stage``), never with an address or port, one sample per MX host (module
    docstring). End-to-end probes that were sent have ``diag_probe_delivered{domain,probe}`` (1 or 0) and, when
    they arrived, ``diag_probe_latency_seconds{domain,probe}``. Samples carry no timestamps (the textfile
    collector rejects them); the time of the run is ``diag_last_run_timestamp_seconds``: ``now`` when given (the
    moment the file is written), else the moment the run finished. The text is prometheus_client's own exposition
    of a registry made for this report.
    """
    # Imported here: the client library is needed for this format only, not for every run's start-up.
    from prometheus_client import CollectorRegistry, generate_latest

    run_status = _Family("diag_run_status", f"State of the whole run ({_STATES}); the exit code.")
    last_run = _Family("diag_last_run_timestamp_seconds", "Unix time of the last run.")
    run_duration = _Family("diag_run_duration_seconds", "Wall-clock duration of the last run.")
    domain_status = _Family("diag_domain_status", f"State of a domain ({_STATES}).", "domain")
    check_status = _Family(
        "diag_check_status",
        f"State of a check on a domain ({_STATES}; 3 when it could not run and found nothing critical).",
        "domain", "check",
    )  # fmt: skip
    check_duration = _Family("diag_check_duration_seconds", "Time a check took on a domain.", "domain", "check")
    findings = _Family("diag_findings", "Findings of a check on a domain, by severity.", "domain", "check", "severity")
    cert_expiry = _Family(
        "diag_certificate_expiry_timestamp_seconds",
        "Unix time at which the leaf certificate of an MX host expires (notAfter; the soonest of its addresses).",
        "domain", "host",
    )  # fmt: skip
    stage = _Family(
        "diag_smtp_stage_seconds",
        "Seconds an SMTP session stage took at an MX host (connect, banner, ehlo, tls; the slowest of its "
        "addresses); absent when no address reached it.",
        "domain", "host", "stage",
    )  # fmt: skip
    probe_latency = _Family(
        "diag_probe_latency_seconds",
        "Seconds from an end-to-end probe's acceptance to its arrival in the watched mailbox; absent when it did "
        "not arrive.",
        "domain", "probe",
    )  # fmt: skip
    probe_delivered = _Family(
        "diag_probe_delivered", "Whether an end-to-end probe arrived in the watched mailbox by its deadline (1 or 0).",
        "domain", "probe",
    )  # fmt: skip

    registry = _shipped()
    run_status.add(report.verdict.exit_code)
    last_run.add(_unix(now if now is not None else report.finished_at))
    run_duration.add(max(0.0, (report.finished_at - report.started_at).total_seconds()))
    for domain in report.domains:
        name = domain.domain
        domain_status.add(domain.verdict.exit_code, name)
        for result in domain.results:
            check_status.add(check_state(result).exit_code, name, result.check_id)
            check_duration.add(result.duration_ms / 1000, name, result.check_id)
            severities = Counter(finding.severity for finding in result.findings)
            for severity in Severity:
                findings.add(severities[severity], name, result.check_id, severity.label)
        measured = _measured(domain, registry)
        for cert in _certificates(measured):
            cert_expiry.add(_unix(cert.not_after), name, cert.host)
        for timings in _timings(measured):
            for stage_name, seconds in zip(STAGES, timings.seconds, strict=True):
                if seconds is not None:
                    stage.add(seconds, name, timings.host, stage_name)
        for probe in _arrivals(measured):
            probe_delivered.add(int(probe.delivered), name, probe.name)
            if probe.delivered and probe.latency is not None:
                probe_latency.add(probe.latency, name, probe.name)

    collected = CollectorRegistry(auto_describe=False)
    collected.register(_Collector((run_status, last_run, run_duration, domain_status, check_status, check_duration,
                                   findings, cert_expiry, stage, probe_latency, probe_delivered)))  # fmt: skip
    return generate_latest(collected).decode("utf-8")


# --- JUnit XML -----------------------------------------------------------------------------------------------


def _seconds(milliseconds: float) -> str:
    return f"{max(0.0, milliseconds) / 1000:.3f}"


def _finding_block(finding: Finding) -> str:
    lines = [f"{finding.severity.label.upper()} {finding.code} {finding.subject}", f"  {finding.message}"]
    if finding.remediation:
        lines.append(f"  fix: {finding.remediation}")
    if finding.cloud_error:
        lines.append(f"  cloud says: {finding.cloud_error}")
    return "\n".join(sanitize(line) for line in lines)


def _finding_line(finding: Finding) -> str:
    return sanitize(f"{finding.severity.label.upper()} {finding.code} {finding.subject}: {finding.message}")


def _worst(findings: Iterable[Finding]) -> Finding:
    return max(findings, key=lambda finding: finding.severity)  # the first of the worst


def _testcase(suite: ET.Element, domain: str, result: CheckResult, *, warnings_fail: bool) -> str:
    """Add one check as a testcase; return its outcome: passed, failure, error or skipped."""
    case = ET.SubElement(suite, "testcase", classname=sanitize(domain, limit=_SHORT),
                         name=sanitize(result.check_id, limit=_SHORT), time=_seconds(result.duration_ms))  # fmt: skip
    threshold = Severity.WARNING if warnings_fail else Severity.ERROR
    failing = [finding for finding in result.findings if finding.severity >= threshold]
    # One outcome per testcase, by the verdict's order: a certain critical problem beats "could not run".
    outcome = "passed"
    if any(finding.severity >= Severity.ERROR for finding in failing):
        outcome = "failure"
    elif result.status in (Status.ERROR, Status.TIMEOUT):
        outcome = "error"
    elif result.status in (Status.SKIPPED, Status.NOT_APPLICABLE):
        outcome = "skipped"
    elif failing:
        outcome = "failure"
    reason = sanitize(result.reason or result.status.label)
    if result.status is Status.NOT_APPLICABLE:
        reason = sanitize(f"not applicable: {result.reason or 'nothing to examine'}")
    if outcome == "skipped":
        ET.SubElement(case, "skipped", message=reason)
    elif outcome == "error":
        error = ET.SubElement(case, "error", message=reason, type=result.status.value)
        error.text = reason
    elif outcome == "failure":
        worst = _worst(failing)
        failure = ET.SubElement(case, "failure", message=sanitize(worst.message, limit=1000),
                                type=sanitize(worst.code, limit=_SHORT))  # fmt: skip
        failure.text = "\n".join(_finding_block(finding) for finding in failing)
    lines = [_finding_line(finding) for finding in result.findings]
    if result.status is not Status.COMPLETED and outcome == "failure":
        lines.insert(0, f"check {result.status.value}: {reason}")
    if lines:
        ET.SubElement(case, "system-out").text = "\n".join(lines)
    return outcome


def junit(report: Report, *, warnings_fail: bool = False) -> str:
    """The report as JUnit XML (the schema Jenkins and GitLab read): a testsuite per domain, a testcase per check.

    A testcase has one outcome: ``<failure>`` when a finding is error or critical (``type`` is the worst
    finding's code, the text lists every such finding with its fix); else ``<error>`` when the check could not
    run (error, timeout: ``type`` is the status, the message the reason); else ``<skipped>`` with the reason
    when it was skipped or does not apply (``not applicable: ...``); else it passes. Warnings do not fail a
    testcase unless ``warnings_fail``: the run's exit code 1 already flags them to CI, and a failed test in a
    JUnit report reads as "broken". Every testcase's ``<system-out>`` lists all its findings, warnings and
    positive ones included, so the report shows what was verified.
    """
    totals: Counter[str] = Counter()
    root = ET.Element("testsuites", name="diag")
    for domain in report.domains:
        suite = ET.SubElement(root, "testsuite", name=sanitize(domain.domain, limit=_SHORT))
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", name="status", value=domain.verdict.value)
        outcomes = Counter(
            _testcase(suite, domain.domain, result, warnings_fail=warnings_fail) for result in domain.results
        )
        totals.update(outcomes)
        suite.attrib.update(_counts(outcomes, len(domain.results)))
        # A suite's time is the sum of its testcases' (as JUnit runners write it); checks overlap in time.
        suite.set("time", _seconds(sum(result.duration_ms for result in domain.results)))
        suite.set("timestamp", report.started_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    root.attrib.update(_counts(totals, sum(len(domain.results) for domain in report.domains)))
    root.set("time", _seconds((report.finished_at - report.started_at).total_seconds() * 1000))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _counts(outcomes: Counter[str], tests: int) -> dict[str, str]:
    return {
        "tests": str(tests),
        "failures": str(outcomes["failure"]),
        "errors": str(outcomes["error"]),
        "skipped": str(outcomes["skipped"]),
    }
