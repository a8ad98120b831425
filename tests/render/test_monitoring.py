"""The monitoring views: Nagios/Icinga plugin output, Prometheus textfile, JUnit XML.

Each format is checked twice: on a real lab run (states, counts and measured values) and on a synthetic report
full of hostile text (control characters, ``|``, quotes, newlines, ``]]>``), where the output must still parse
and every string must come out inert.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from checks import default_registry
from checks.certificate import CertificateFacts, PresentedCert
from checks.port25 import Port25Facts, Probed
from diag.codec import encode as jsonable
from diag.lab.runner import Lab
from diag.model import CheckResult, DomainReport, Finding, Report, Severity, Status, Verdict
from diag.net.smtp import SessionError, SessionFacts, SessionStage
from diag.net.tls import CertInfo, Trust
from diag.registry import Registry
from diag.render.monitoring import STAGES, check_state, junit, nagios, prometheus
from diag.render.text import sanitize
from diag.runner import run_checks

LAB_DOMAINS = [
    "contoso.com", "expired.example", "expiring.example", "tarpit.example", "servfail.example",
    "refused.example", "multi.example",
]  # fmt: skip
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # anything but tab and newline


@pytest.fixture(scope="module")
def report(lab: Lab) -> Report:
    options = lab.run_options(timeout=1.0)  # the tarpit costs one timeout
    return asyncio.run(run_checks(LAB_DOMAINS, mail_checks(), options))


def mail_checks() -> Registry:
    """The mail checks and the probes: the counts in these tests are about the formats, not about which checks
    there are."""
    return default_registry().select(["mx", "port25", "starttls", "certificate", "connectors", "e2e"])


def _domain(report: Report, name: str) -> DomainReport:
    (domain,) = [d for d in report.domains if d.domain == name]
    return domain


# --- synthetic reports ---------------------------------------------------------------------------------------

T0 = datetime(2026, 11, 26, 20, 0, 0, tzinfo=UTC)
HOSTILE = "evil|one\nINJECTED 'q' \"dq\" a=b \\back\x1b[31m ]]> <x> &amp; \u202e\udc80\x00"


def _finding(severity: Severity, code: str = "CODE", text: str = "text") -> Finding:
    return Finding(code, severity, f"{text} subject", f"{text} message", f"{text} fix", f"{text} cloud")


def _result(check_id: str, status: Status = Status.COMPLETED, *findings: Finding, reason: str | None = None,
            facts: Any = None, ms: int = 0) -> CheckResult:  # fmt: skip
    return CheckResult(check_id, check_id.title(), status, reason, facts, tuple(findings), 0.0, ms / 1000)


def _report(*domains: DomainReport) -> Report:
    return Report(T0, T0 + timedelta(seconds=2), tuple(domains))


def _cert_info(not_after: datetime) -> CertInfo:
    return CertInfo(
        subject="CN=x", issuer="CN=ca", common_names=("x",), dns_names=("x",), not_before=T0 - timedelta(days=1),
        not_after=not_after, key_type="RSA", key_bits=2048, signature_hash="sha256", sha256="00", self_issued=False,
        pem="",
    )  # fmt: skip


def _session(ip: str, **timings: float | None) -> SessionFacts:
    return SessionFacts(ip, 25, "mx", reached=SessionStage.DONE, **timings)  # type: ignore[arg-type]


def _hostile_report() -> Report:
    host = f"mx.{HOSTILE}"
    port25 = Port25Facts((
        Probed(host, _session("192.0.2.1", connect_s=0.25, banner_s=0.5, ehlo_s=0.125, tls_s=1.5)),
        Probed(host, _session("192.0.2.1", connect_s=9.0)),  # the same host again: one series, the slowest
        Probed("mx2.example", SessionFacts("192.0.2.2", 25, "mx2", error=SessionError.REFUSED)),
    ))  # fmt: skip
    endpoint = f"{host} [192.0.2.1]:25"
    certificate = CertificateFacts(
        (PresentedCert(endpoint, host, (_cert_info(T0 + timedelta(days=3)),), Trust.TRUSTED),),
        checked_at=T0, warn_days=30, crit_days=7,
    )  # fmt: skip
    evil = Finding("CERT_EXPIRING_SOON", Severity.ERROR, endpoint, f"msg {HOSTILE}", f"fix {HOSTILE}", HOSTILE)
    return _report(
        DomainReport(HOSTILE, (
            _result("port25", Status.COMPLETED, _finding(Severity.INFO, "SMTP_OK", HOSTILE), facts=port25, ms=40),
            _result("certificate", Status.COMPLETED, evil, _finding(Severity.WARNING, "W|1", HOSTILE),
                    facts=certificate, ms=3),
            _result("connectors", Status.TIMEOUT, reason=f"timeout: {HOSTILE}", ms=1000),
        )),
        DomainReport("ok.example", (_result("mx", Status.COMPLETED, _finding(Severity.INFO, "MX_OK")),)),
    )  # fmt: skip


# --- the state of one check ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "severities", "expected"),
    [
        (Status.COMPLETED, (), Verdict.OK),
        (Status.COMPLETED, (Severity.INFO, Severity.NOTICE), Verdict.OK),
        (Status.COMPLETED, (Severity.WARNING,), Verdict.WARNING),
        (Status.COMPLETED, (Severity.WARNING, Severity.ERROR), Verdict.CRITICAL),
        (Status.COMPLETED, (Severity.CRITICAL,), Verdict.CRITICAL),
        (Status.ERROR, (), Verdict.UNKNOWN),
        (Status.TIMEOUT, (Severity.WARNING,), Verdict.UNKNOWN),
        (Status.SKIPPED, (), Verdict.UNKNOWN),
        (Status.TIMEOUT, (Severity.CRITICAL,), Verdict.CRITICAL),
        (Status.NOT_APPLICABLE, (), Verdict.OK),
    ],
)
def test_check_state_follows_the_verdict_rule(status: Status, severities: tuple[Severity, ...],
                                              expected: Verdict) -> None:  # fmt: skip
    result = _result("x", status, *(_finding(s) for s in severities))
    assert check_state(result) is expected
    assert check_state(result).exit_code == {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}[expected.value]


# --- Nagios --------------------------------------------------------------------------------------------------

_PERF = re.compile(r"""\s*(?:'((?:[^']|'')*)'|([^'=\s]+))=(U|-?[0-9.]+)([a-zA-Z%]*)((?:;[^;\s]*){0,4})""")
VALID_UOM = {"", "s", "ms", "us", "%", "B", "KB", "MB", "TB", "c"}


def parse_plugin(output: str) -> tuple[str, str, dict[str, dict[str, str]], list[str]]:
    """(state, summary, perfdata by label, long lines), by the plugin guidelines' grammar."""
    assert output.endswith("\n")
    first, *long = output[:-1].split("\n")
    text, bar, perf = first.partition(" | ")
    assert bar, first
    match = re.fullmatch(r"DIAG (OK|WARNING|CRITICAL|UNKNOWN) - (.*)", text)
    assert match, text
    data: dict[str, dict[str, str]] = {}
    position = 0
    while position < len(perf):
        item = _PERF.match(perf, position)
        assert item, perf[position:]
        label = item.group(1).replace("''", "'") if item.group(1) is not None else item.group(2)
        assert "=" not in label and label not in data
        assert item.group(4) in VALID_UOM, item.group(0)
        warn, crit, minimum, maximum = ([*item.group(5).split(";")[1:], "", "", "", ""])[:4]
        data[label] = {"value": item.group(3), "uom": item.group(4), "warn": warn, "crit": crit, "min": minimum,
                       "max": maximum}  # fmt: skip
        position = item.end()
    return match.group(1), match.group(2), data, long


def test_nagios_lab_run_states_and_summary(report: Report) -> None:
    state, summary, _, long = parse_plugin(nagios(report))
    assert report.exit_code == 2
    assert state == "CRITICAL"
    assert summary.startswith("7 domains: 4 critical, 1 unknown, 1 warning, 1 ok; expired.example CERT_EXPIRED, ")
    assert summary.endswith("+3 more")  # the rest of the seven problems, the worst named first
    assert "tarpit.example SMTP_BANNER_TIMEOUT" in summary
    # One line per finding of warning or worse and one per check that could not run; nothing else.
    expected = sum(
        r.status.could_not_run + sum(f.severity >= Severity.WARNING for f in r.findings)
        for d in report.domains for r in d.results
    )  # fmt: skip
    assert len(long) == expected == 14
    assert any(line.startswith("[CRITICAL] expired.example certificate: CERT_EXPIRED mx.expired.") for line in long)
    assert any(line.startswith("[WARNING] expiring.example certificate: CERT_EXPIRING ") for line in long)
    assert "[UNKNOWN] servfail.example mx: error - dns: no usable answer" in "\n".join(long)
    assert "[UNKNOWN] servfail.example port25: skipped - requires mx, which ended error" in long


def test_nagios_lab_run_perfdata(report: Report) -> None:
    _, _, perf, _ = parse_plugin(nagios(report))
    assert {perf[f"domains_{s}"]["value"] for s in ("ok", "warning", "unknown")} == {"1"}
    assert perf["domains_critical"]["value"] == "4"
    assert perf["time"]["uom"] == "s"
    probed = _domain(report, "contoso.com").result("port25").facts.probed[0]
    for stage in STAGES:
        item = perf[f"contoso.com {probed.host} {stage}"]
        assert (item["uom"], item["min"]) == ("s", "0")
        assert float(item["value"]) == pytest.approx(getattr(probed.session, f"{stage}_s"), abs=1e-6)
    # Stages not reached are "U" (could not be determined), so the series stay the same from run to run.
    refused = _domain(report, "refused.example").result("port25").facts.probed[0]
    assert {perf[f"refused.example {refused.host} {s}"]["value"] for s in STAGES} == {"U"}
    tarpit = _domain(report, "tarpit.example").result("port25").facts.probed[0]
    assert perf[f"tarpit.example {tarpit.host} connect"]["value"] != "U"
    assert perf[f"tarpit.example {tarpit.host} banner"]["value"] == "U"
    # Certificate days left: unitless, the run's thresholds as "alert below" ranges.
    expired = _domain(report, "expired.example").result("certificate").facts.certificates[0]
    item = perf[f"expired.example {expired.host} cert_days"]
    assert (item["uom"], item["warn"], item["crit"]) == ("", "30:", "7:")
    assert -2 < float(item["value"]) < 0
    expiring = _domain(report, "expiring.example").result("certificate").facts.certificates[0]
    assert 9 < float(perf[f"expiring.example {expiring.host} cert_days"]["value"]) <= 10
    # Issue 10: labels name the host, never the address or port it was reached at.
    assert not [label for label in perf if "[" in label or "127." in label]


@pytest.mark.parametrize(
    ("results", "state", "summary"),
    [
        ((_result("mx", Status.COMPLETED, _finding(Severity.INFO, "MX_OK")),), "OK", "1 domain: 1 ok"),
        ((_result("mx", Status.COMPLETED, _finding(Severity.WARNING, "W")),),
         "WARNING", "1 domain: 1 warning; a.example W"),
        ((_result("mx", Status.COMPLETED, _finding(Severity.ERROR, "E"), _finding(Severity.ERROR, "E")),),
         "CRITICAL", "1 domain: 1 critical; a.example E (x2)"),
        ((_result("mx", Status.TIMEOUT, reason="timeout: 5 s"), _result("port25", Status.SKIPPED, reason="r")),
         "UNKNOWN", "1 domain: 1 unknown; a.example mx timeout"),
        ((_result("mx", Status.SKIPPED, reason="not configured"),),
         "UNKNOWN", "1 domain: 1 unknown; a.example mx skipped"),
    ],
)  # fmt: skip
def test_nagios_state_per_verdict(results: tuple[CheckResult, ...], state: str, summary: str) -> None:
    report = _report(DomainReport("a.example", results))
    got_state, got_summary, perf, _ = parse_plugin(nagios(report))
    assert (got_state, got_summary) == (state, summary)
    assert got_state.lower() == report.verdict.value
    assert perf[f"domains_{report.verdict.value}"]["value"] == "1"


def _null_mx_report() -> Report:
    """A domain with a null MX only: MX judged, the checks that need a mail host not applicable."""
    why = "the domain accepts no mail (null MX)"
    return _report(DomainReport("nullmx.example", (
        _result("mx", Status.COMPLETED, _finding(Severity.INFO, "MX_NULL")),
        _result("port25", Status.NOT_APPLICABLE, reason=why),
        _result("starttls", Status.NOT_APPLICABLE, reason=f"requires port25, which is not applicable: {why}"),
    )))  # fmt: skip


def test_monitoring_views_count_a_check_that_does_not_apply_as_ok() -> None:
    report = _null_mx_report()
    # Nagios: OK, and nothing named as a problem or as "could not run"
    state, summary, perf, long = parse_plugin(nagios(report))
    assert (state, summary, long) == ("OK", "1 domain: 1 ok", [])
    assert perf["domains_ok"]["value"] == "1"
    # Prometheus: every check state 0
    families = {f.name: f for f in text_string_to_metric_families(prometheus(report))}
    assert {s.labels["check"]: s.value for s in families["diag_check_status"].samples} == {
        "mx": 0, "port25": 0, "starttls": 0,
    }  # fmt: skip
    assert families["diag_run_status"].samples[0].value == 0
    # JUnit: skipped with the reason, not an error
    root = parse_junit(junit(report))
    assert {key: root.get(key) for key in ("tests", "failures", "errors", "skipped")} == {
        "tests": "3", "failures": "0", "errors": "0", "skipped": "2",
    }  # fmt: skip
    skipped = case(root, "nullmx.example", "port25").find("skipped")
    assert skipped is not None
    assert skipped.get("message") == "not applicable: the domain accepts no mail (null MX)"


def test_nagios_hostile_text_stays_inert() -> None:
    report = _hostile_report()
    output = nagios(report)
    state, summary, perf, long = parse_plugin(output)
    assert state == "CRITICAL"
    assert output.count("|") == 1  # only the separator: "|" in text is shown as "¦"
    assert "¦" in summary and "¦" in "".join(long)
    assert not CONTROL.search(output)
    assert "\\x1b[31m" in output and "\\x0a" in output and "U+202E" in output and "U+DC80" in output
    # Lines: the first, the ERROR and the WARNING finding, the timed-out check; no line was injected.
    assert len(long) == 3 and not any(line.startswith("INJECTED") for line in output.split("\n"))
    assert long[0].startswith("[ERROR] evil¦one\\x0aINJECTED")

    # Labels: quoted, single quotes doubled, "=" replaced; the parser gets them back; one per series. The host
    # is named as history names it (diag.model.subject_host: lower case), without its address.
    def label(text: str) -> str:
        return sanitize(text).replace("=", "_").replace("|", "¦").replace("\udc80", "U+DC80")

    host = f"mx.{HOSTILE}".lower()
    assert perf[label(f"{HOSTILE} {host} connect")]["value"] == "9"  # two sessions of one host: the slowest
    assert perf[label(f"{HOSTILE} {host} tls")]["value"] == "1.5"
    assert "'q''" in output
    days = perf[label(f"{HOSTILE} {host} cert_days")]
    assert (days["value"], days["warn"], days["crit"]) == ("3", "30:", "7:")
    assert perf[label(f"{HOSTILE} mx2.example connect")]["value"] == "U"
    output.encode("utf-8")  # no lone surrogate left


def test_nagios_reads_facts_loaded_back_from_json(report: Report) -> None:
    """Facts as plain JSON values (a saved report) give the same output as the live dataclasses."""
    loaded = replace(report, domains=tuple(
        replace(d, results=tuple(replace(r, facts=jsonable(r.facts) if r.facts is not None else None)
                                 for r in d.results))
        for d in report.domains
    ))  # fmt: skip
    assert nagios(loaded) == nagios(report)
    assert prometheus(loaded) == prometheus(report)


# --- Prometheus ----------------------------------------------------------------------------------------------


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Metric name → {sorted labels: value}, through the reference client's parser."""
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge" and family.documentation, family.name
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            assert key not in found.setdefault(sample.name, {}), (sample.name, key)
            found[sample.name][key] = sample.value
    return found


def one(found: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    return found[name][tuple(sorted(labels.items()))]


def test_prometheus_lab_run(report: Report) -> None:
    text = prometheus(report)
    found = samples(text)
    assert all(name.startswith("diag_") for name in found)
    assert one(found, "diag_run_status") == 2
    assert one(found, "diag_last_run_timestamp_seconds") == pytest.approx(report.finished_at.timestamp())
    states = {"contoso.com": 0, "expired.example": 2, "expiring.example": 1, "servfail.example": 3}
    for domain, state in states.items():
        assert one(found, "diag_domain_status", domain=domain) == state
    assert one(found, "diag_check_status", domain="expired.example", check="certificate") == 2
    assert one(found, "diag_check_status", domain="expiring.example", check="certificate") == 1
    assert one(found, "diag_check_status", domain="servfail.example", check="mx") == 3
    assert one(found, "diag_check_status", domain="tarpit.example", check="starttls") == 3
    assert one(found, "diag_check_status", domain="tarpit.example", check="port25") == 2
    assert {v for k, v in found["diag_check_status"].items() if ("domain", "contoso.com") in k} == {0}
    # Every severity of every check has a sample, zeros included.
    assert len(found["diag_findings"]) == len(LAB_DOMAINS) * len(mail_checks().ids) * len(Severity)
    assert one(found, "diag_findings", domain="expired.example", check="certificate", severity="critical") == 1
    assert one(found, "diag_findings", domain="expired.example", check="certificate", severity="info") == 0
    assert one(found, "diag_findings", domain="contoso.com", check="connectors", severity="info") == 3
    tarpit = _domain(report, "tarpit.example").result("port25").duration_ms / 1000
    assert one(found, "diag_check_duration_seconds", domain="tarpit.example", check="port25") == tarpit
    cert = _domain(report, "expired.example").result("certificate").facts.certificates[0]
    assert one(found, "diag_certificate_expiry_timestamp_seconds", domain="expired.example",
               host=cert.host) == pytest.approx(cert.leaf.not_after.timestamp(), abs=1)  # fmt: skip
    assert len(found["diag_certificate_expiry_timestamp_seconds"]) == 5  # contoso, expired, expiring, multi (2)
    probed = _domain(report, "contoso.com").result("port25").facts.probed[0]
    for stage in STAGES:
        value = one(found, "diag_smtp_stage_seconds", domain="contoso.com", host=probed.host, stage=stage)
        assert value == getattr(probed.session, f"{stage}_s") > 0
    # Issue 10: no series is named by an address or port.
    labels = {name for series in found.values() for key in series for name, _ in key}
    assert labels == {"domain", "check", "severity", "host", "stage", "probe"}
    by_domain = {dict(k)["domain"] for k in found["diag_smtp_stage_seconds"]}
    assert "refused.example" not in by_domain  # no stage reached: no sample (not a fake zero)
    assert {dict(k)["stage"] for k in found["diag_smtp_stage_seconds"] if ("domain", "tarpit.example") in k} == {
        "connect"
    }


def test_prometheus_now_sets_the_run_timestamp(report: Report) -> None:
    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    found = samples(prometheus(report, now=moment))
    assert one(found, "diag_last_run_timestamp_seconds") == moment.timestamp()
    assert "# TYPE diag_last_run_timestamp_seconds gauge\n" in prometheus(report, now=moment)


def test_prometheus_hostile_labels_are_escaped() -> None:
    text = prometheus(_hostile_report())
    assert text.endswith("\n")
    for line in text.splitlines():
        assert line.startswith(("# HELP diag_", "# TYPE diag_", "diag_")), line  # no injected line
    assert not CONTROL.search(text)
    assert '\\"dq\\"' in text and "\\\\back" in text  # the format's escapes for " and \
    found = samples(text)
    shown = sanitize(HOSTILE).replace("\udc80", "U+DC80")
    assert "\\x0a" in shown  # the newline became visible text, so no raw newline reaches the file
    assert one(found, "diag_domain_status", domain=shown) == 2
    assert one(found, "diag_check_status", domain=shown, check="connectors") == 3
    assert one(found, "diag_findings", domain=shown, check="certificate", severity="warning") == 1
    host = sanitize(f"mx.{HOSTILE}".lower()).replace("\udc80", "U+DC80")
    stage = {dict(k)["stage"]: v for k, v in found["diag_smtp_stage_seconds"].items() if dict(k)["host"] == host}
    assert stage == {"connect": 9.0, "banner": 0.5, "ehlo": 0.125, "tls": 1.5}  # one host twice: the slowest
    (expiry,) = found["diag_certificate_expiry_timestamp_seconds"].items()
    assert dict(expiry[0]) == {"domain": shown, "host": host}
    assert expiry[1] == (T0 + timedelta(days=3)).timestamp()
    text.encode("utf-8")


def test_prometheus_empty_report_is_valid() -> None:
    found = samples(prometheus(_report()))
    assert one(found, "diag_run_status") == 0
    assert "diag_domain_status" not in found


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian: prometheus)")
@pytest.mark.parametrize("which", ["lab", "hostile", "empty"])
def test_promtool_accepts_the_output(which: str, request: pytest.FixtureRequest) -> None:
    synthetic = {"hostile": _hostile_report, "empty": _report}
    report: Report = request.getfixturevalue("report") if which == "lab" else synthetic[which]()
    promtool = shutil.which("promtool")
    assert promtool is not None
    checked = subprocess.run([promtool, "check", "metrics"], input=prometheus(report), capture_output=True,
                             text=True, timeout=60, check=False)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""  # not even a lint remark


# --- series identity (issue 10) ------------------------------------------------------------------------------


def _series(report: Report) -> tuple[set[str], set[tuple[str, tuple[tuple[str, str], ...]]]]:
    """The Nagios perfdata labels and the Prometheus series (name and labels) of a report."""
    _, _, perf, _ = parse_plugin(nagios(report))
    found = samples(prometheus(report))
    return set(perf), {(name, key) for name, series in found.items() for key in series}


def test_the_same_problems_on_another_port_keep_their_series(lab: Lab, report: Report) -> None:
    """Given the same lab domains served by a second lab on another port, then the output names the same series:
    labels hold domain, host and stage, never the address or port (which would start a new series each run)."""
    domains = ["contoso.com", "expired.example", "multi.example", "refused.example"]

    async def elsewhere() -> tuple[Report, int]:
        async with Lab() as other:
            return await run_checks(domains, mail_checks(), other.run_options(timeout=1.0)), other.smtp_port

    here = _report(*(_domain(report, name) for name in domains))
    there, port = asyncio.run(elsewhere())
    assert port != lab.smtp_port
    # The findings keep the address and port they were seen at; the series names leave them out.
    assert _domain(there, "expired.example").result("certificate").findings[0].subject.endswith(f":{port}")
    assert _series(here) == _series(there)
    perf, _ = _series(there)
    assert "expired.example mx.expired.example cert_days" in perf
    assert {"multi.example mx1.multi.example connect", "multi.example mx2.multi.example tls"} <= perf


def test_a_host_with_several_addresses_has_one_value_per_label() -> None:
    """Given one MX host reached at two addresses, then each stage is the slower address's time and the
    certificate the sooner-expiring one; rotating the addresses and port changes nothing."""

    def run(first: str, second: str, port: int) -> Report:
        port25 = Port25Facts((
            Probed("MX.example.com.", replace(_session(first, connect_s=0.5, banner_s=0.25, tls_s=None), port=port)),
            Probed("mx.example.com", replace(_session(second, connect_s=0.125, banner_s=2.0, ehlo_s=0.25),
                                             port=port)),
        ))  # fmt: skip
        certificate = CertificateFacts((
            PresentedCert(f"mx.example.com [{first}]:{port}", "mx.example.com", (_cert_info(T0 + timedelta(days=40)),),
                          Trust.TRUSTED),
            PresentedCert(f"mx.example.com [{second}]:{port}", "mx.example.com", (_cert_info(T0 + timedelta(days=5)),),
                          Trust.TRUSTED),
        ), checked_at=T0, warn_days=30, crit_days=7)  # fmt: skip
        return _report(DomainReport("example.com", (
            _result("port25", Status.COMPLETED, facts=port25),
            _result("certificate", Status.COMPLETED, facts=certificate),
        )))  # fmt: skip

    report = run("192.0.2.1", "2001:db8::1", 25)
    _, _, perf, _ = parse_plugin(nagios(report))
    timings = {label: item["value"] for label, item in perf.items() if label.startswith("example.com ")}
    assert timings == {
        "example.com mx.example.com connect": "0.5", "example.com mx.example.com banner": "2",
        "example.com mx.example.com ehlo": "0.25", "example.com mx.example.com tls": "U",
        "example.com mx.example.com cert_days": "5",
    }  # fmt: skip
    found = samples(prometheus(report))
    assert found["diag_smtp_stage_seconds"] == {
        (("domain", "example.com"), ("host", "mx.example.com"), ("stage", stage)): value
        for stage, value in (("connect", 0.5), ("banner", 2.0), ("ehlo", 0.25))
    }  # fmt: skip
    assert found["diag_certificate_expiry_timestamp_seconds"] == {
        (("domain", "example.com"), ("host", "mx.example.com")): (T0 + timedelta(days=5)).timestamp()
    }
    rotated = run("2001:db8::1", "198.51.100.7", 2525)
    assert nagios(rotated) == nagios(report) and prometheus(rotated) == prometheus(report)


# --- JUnit ---------------------------------------------------------------------------------------------------

# The structure Jenkins' junit-10.xsd and GitLab's parser read (names and order of children).
SUITE_ATTRIBUTES = {"name", "tests", "failures", "errors", "skipped", "time", "timestamp"}
CASE_CHILDREN = ["skipped", "error", "failure", "system-out", "system-err"]


def parse_junit(text: str) -> ET.Element:
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n')
    root = ET.fromstring(text.encode("utf-8"))
    assert root.tag == "testsuites"
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in root:
        assert suite.tag == "testsuite" and set(suite.attrib) == SUITE_ATTRIBUTES
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", suite.get("timestamp", ""))
        assert suite[0].tag == "properties"
        cases = suite.findall("testcase")
        assert len(cases) + 1 == len(suite)
        counts = {"tests": len(cases), "failures": 0, "errors": 0, "skipped": 0}
        for case in cases:
            assert case.get("classname") == suite.get("name") and case.get("name")
            float(case.get("time", "x"))
            tags = [child.tag for child in case]
            assert tags == sorted(tags, key=CASE_CHILDREN.index), tags
            outcomes = [tag for tag in tags if tag in ("skipped", "error", "failure")]
            assert len(outcomes) <= 1
            for tag, key in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
                counts[key] += tag in outcomes
        for key, value in counts.items():
            assert suite.get(key) == str(value), (suite.get("name"), key)
            totals[key] += value
        assert float(suite.get("time", "x")) == pytest.approx(sum(float(c.get("time", "0")) for c in cases))
    for key, value in totals.items():
        assert root.get(key) == str(value), key
    float(root.get("time", "x"))
    return root


def case(root: ET.Element, domain: str, check: str) -> ET.Element:
    (found,) = [c for c in root.iter("testcase") if c.get("classname") == domain and c.get("name") == check]
    return found


def test_junit_lab_run(report: Report) -> None:
    root = parse_junit(junit(report))
    assert {key: root.get(key) for key in ("tests", "failures", "errors", "skipped")} == {
        "tests": "42", "failures": "4", "errors": "1", "skipped": "14",
    }  # fmt: skip
    # The lab's probes concern contoso.com only: its e2e testcase passes, listing the four arrivals; the other
    # domains' e2e testcases are skipped as not applicable.
    e2e = case(root, "contoso.com", "e2e")
    assert e2e.find("failure") is None and (e2e.findtext("system-out") or "").count("INFO E2E_DELIVERED") == 4
    assert case(root, "expired.example", "e2e").find("skipped") is not None
    assert [s.get("name") for s in root] == LAB_DOMAINS
    statuses = {s.get("name"): s.find("properties/property[@name='status']").get("value") for s in root}  # type: ignore[union-attr]
    assert statuses == {d.domain: d.verdict.value for d in report.domains}
    failure = case(root, "expired.example", "certificate").find("failure")
    assert failure is not None and failure.get("type") == "CERT_EXPIRED"
    assert "expired on" in failure.get("message", "")
    assert "fix: Renew the certificate" in (failure.text or "")
    assert "cloud says: 450 4.7.320" in (failure.text or "")
    multi = case(root, "multi.example", "port25")
    assert multi.find("failure").get("type") == "SMTP_CONNECT_REFUSED"  # type: ignore[union-attr]
    assert (multi.findtext("system-out") or "").count("INFO SMTP_OK") == 2  # what was verified shows too
    error = case(root, "servfail.example", "mx").find("error")
    assert error is not None and error.get("type") == "error" and "SERVFAIL" in error.get("message", "")
    skipped = case(root, "servfail.example", "port25").find("skipped")
    assert skipped is not None and skipped.get("message") == "requires mx, which ended error"
    # A warning passes, visibly.
    expiring = case(root, "expiring.example", "certificate")
    assert [child.tag for child in expiring] == ["system-out"]
    assert (expiring.findtext("system-out") or "").startswith("WARNING CERT_EXPIRING ")
    tarpit = case(root, "tarpit.example", "port25")
    assert float(tarpit.get("time", "0")) == _domain(report, "tarpit.example").result("port25").duration_ms / 1000


# --- the policy checks (issue 14): carried like any check, through their findings -------------------------------


def test_the_policy_checks_in_every_monitoring_format(lab_domains: Callable[..., Report]) -> None:
    """Given the shared lab run's seed domain and three policy defects, then the plugin line names the policy
    findings, Prometheus has a status and finding counts per policy check, and JUnit a testcase per policy check
    (failing on an error finding) beside the mail checks'."""
    report = lab_domains("contoso.com", "spflookups.example", "danebad.example", "badsig.example")
    policy = ("spf", "dkim", "dmarc", "mtasts", "tlsrpt", "dane", "dnssec")

    state, summary, _, long = parse_plugin(nagios(report))
    assert state == "CRITICAL" and summary.startswith("4 domains: 3 critical, 1 ok; ")
    for line in ("[CRITICAL] danebad.example dane: DANE_MISMATCH mx.danebad.example [127.0.20.31]:",
                 "[ERROR] spflookups.example spf: SPF_TOO_MANY_LOOKUPS spflookups.example - The SPF policy",
                 "[ERROR] badsig.example dnssec: DNSSEC_BOGUS badsig.example MX - "):  # fmt: skip
        assert any(entry.startswith(line) for entry in long), line

    found = samples(prometheus(report))
    for check_id in policy:
        assert one(found, "diag_check_status", domain="contoso.com", check=check_id) == 0, check_id
    assert one(found, "diag_findings", domain="spflookups.example", check="spf", severity="error") == 1
    assert one(found, "diag_check_status", domain="danebad.example", check="dane") == 2
    # its MX host's A and AAAA answers
    assert one(found, "diag_findings", domain="badsig.example", check="dnssec", severity="info") == 2

    root = parse_junit(junit(report))
    assert {c.get("name") for c in root.iter("testcase") if c.get("classname") == "contoso.com"} >= set(policy)
    assert all(case(root, "contoso.com", check_id).find("failure") is None for check_id in policy)
    failure = case(root, "spflookups.example", "spf").find("failure")
    assert failure is not None and failure.get("type") == "SPF_TOO_MANY_LOOKUPS"
    assert case(root, "spflookups.example", "dkim").find("skipped") is not None  # not an accepted domain
    assert case(root, "badsig.example", "dnssec").find("failure").get("type") == "DNSSEC_BOGUS"  # type: ignore[union-attr]


def test_junit_warnings_fail_on_request(report: Report) -> None:
    root = parse_junit(junit(report, warnings_fail=True))
    assert root.get("failures") == "5"
    failure = case(root, "expiring.example", "certificate").find("failure")
    assert failure is not None and failure.get("type") == "CERT_EXPIRING"


def test_junit_outcome_priority() -> None:
    """One outcome per testcase, in the verdict's order: critical finding, could not run, warning."""
    results = (
        _result("a", Status.ERROR, _finding(Severity.CRITICAL, "C"), reason="error: boom"),
        _result("b", Status.TIMEOUT, _finding(Severity.WARNING, "W"), reason="timeout: 5 s"),
        _result("c", Status.COMPLETED, _finding(Severity.WARNING, "W"), _finding(Severity.ERROR, "E1"),
                _finding(Severity.CRITICAL, "C2"), _finding(Severity.ERROR, "E3")),
        _result("d", Status.COMPLETED),
    )  # fmt: skip
    root = parse_junit(junit(_report(DomainReport("d.example", results)), warnings_fail=True))
    a = case(root, "d.example", "a")
    assert [child.tag for child in a] == ["failure", "system-out"]
    assert (a.findtext("system-out") or "").startswith("check error: error: boom\n")
    assert case(root, "d.example", "b").find("error").get("type") == "timeout"  # type: ignore[union-attr]
    c = case(root, "d.example", "c").find("failure")
    assert c is not None and c.get("type") == "C2"  # the worst finding names the failure
    headings = [line.split()[1] for line in (c.text or "").splitlines() if not line.startswith(" ")]
    assert headings == ["W", "E1", "C2", "E3"]
    assert len(case(root, "d.example", "d")) == 0


def test_junit_hostile_text_stays_inert() -> None:
    text = junit(_hostile_report())
    assert not CONTROL.search(text.replace("\n", ""))
    text.encode("utf-8")
    root = parse_junit(text)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "1", "1")
    shown = sanitize(HOSTILE).replace("\udc80", "U+DC80")
    suite = root[0]
    assert suite.get("name") == shown
    certificate = case(root, shown, "certificate")
    failure = certificate.find("failure")
    assert failure is not None and failure.get("type") == "CERT_EXPIRING_SOON"
    assert failure.get("message") == f"msg {shown}"
    assert f"fix {shown}" in (failure.text or "") and "]]>" in (failure.text or "")  # round-trips as text
    assert "<x> &amp;" in (failure.text or "")
    assert "WARNING W|1" in (certificate.findtext("system-out") or "")
    error = case(root, shown, "connectors").find("error")
    assert error is not None and error.get("message") == f"timeout: {shown}" and error.get("type") == "timeout"


# --- end-to-end probes ---------------------------------------------------------------------------------------


def test_probes_in_perfdata_and_prometheus(report: Report) -> None:
    # Given the lab run, whose contoso.com ran the lab's four probes as its e2e check
    probes = {p.name: p for p in _domain(report, "contoso.com").result("e2e").facts.probes}
    assert len(probes) == 4 and all(p.delivered for p in probes.values())
    # Then the plugin line has each probe's latency, with its Slow and Deadline as warning and critical thresholds
    _, _, perf, _ = parse_plugin(nagios(report))
    item = perf["contoso.com John to Sun latency"]
    assert (item["uom"], item["warn"], item["crit"], item["min"]) == ("s", "30", "60", "0")
    assert float(item["value"]) == pytest.approx(probes["John to Sun"].latency_s, abs=1e-3)
    # and Prometheus has a delivered flag and a latency per probe, labelled by domain and probe only
    found = samples(prometheus(report))
    for name, probe in probes.items():
        assert one(found, "diag_probe_delivered", domain="contoso.com", probe=name) == 1
        assert one(found, "diag_probe_latency_seconds", domain="contoso.com", probe=name) == pytest.approx(
            probe.latency_s
        )
    assert {labels for labels in found["diag_probe_delivered"]} == {
        (("domain", "contoso.com"), ("probe", name)) for name in probes
    }


def test_a_probe_that_did_not_arrive_is_not_delivered_and_has_no_latency() -> None:
    facts = {"probes": [
        {"name": "Lost", "accepted": {"code": 250}, "delivered": False, "latency_s": None, "slow_s": None,
         "deadline_s": 60},
        {"name": "Unwatched", "accepted": None, "refused": None, "delivered": False},
    ]}  # fmt: skip
    result = CheckResult("e2e", "End to end", Status.COMPLETED, facts=facts, started=0, finished=1)
    report = Report(T0, T0, (DomainReport("contoso.com", (result,)),))
    found = samples(prometheus(report))
    assert found["diag_probe_delivered"] == {(("domain", "contoso.com"), ("probe", "Lost")): 0}
    assert "diag_probe_latency_seconds" not in found
    _, _, perf, _ = parse_plugin(nagios(report))
    assert perf["contoso.com Lost latency"]["value"] == "U" and "contoso.com Unwatched latency" not in perf
