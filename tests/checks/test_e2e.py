"""The e2e check's judgement (``checks/e2e.py``), pure: a probe's facts as plain data in, findings out, one test per
code. The probes themselves run against the lab and Dovecot in tests/probe/test_run.py and tests/test_cli_probe.py."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from checks import default_registry
from checks.e2e import CHECK, assess, probe_findings
from diag.config import MAX_PROBES, Organization, ProbeConfig
from diag.context import RunOptions
from diag.model import Severity, Status
from diag.probe.judge import Bounce, BounceRecipient, Outcome, Verdict
from diag.probe.received import Hop
from diag.probe.run import E2eFacts, Held, ProbeFacts
from diag.probe.sender import Accepted, Refused, Stage
from diag.runner import run_checks

T0 = datetime(2026, 11, 26, 20, 0, 0, tzinfo=UTC)
ACCEPTED = Accepted("mail.contoso.com [192.0.2.10]:25", 250, "2.0.0 queued", T0, None)
BASE = ProbeFacts(
    name="John to Sun", sender="john@contoso.com", recipient="sun@tailspintoys.com", run="run-1",
    via="mail.contoso.com [192.0.2.10]:25", watch="imaps://imap.tailspintoys.com:993/INBOX", deadline_s=60,
    message_id="<x.diag-probe.1@contoso.com>", accepted=ACCEPTED, accepted_at=T0,
)  # fmt: skip
HOP = Hop(2, "mail.contoso.com", None, "192.0.2.10", "mx.tailspintoys.com", "ESMTP", False, None, None, "abc", T0,
          0.0, None, "from mail.contoso.com ([192.0.2.10]) by mx.tailspintoys.com with ESMTP")  # fmt: skip


def delivered(*extra: Verdict, **fields: object) -> ProbeFacts:
    values: dict[str, object] = {"delivered": True, "folder": "INBOX", "latency_s": 4.2, "hops": (HOP,),
                                 "observed_at": T0}  # fmt: skip
    values.update(fields)
    verdicts = (Verdict(Outcome.DELIVERED, "arrived in INBOX after 4.2 s, 1 hops"), *extra)
    return replace(BASE, verdicts=verdicts, **values)  # type: ignore[arg-type]


def codes(probe: ProbeFacts) -> list[str]:
    return [finding.code for finding in probe_findings(probe)]


def test_a_delivered_probe_names_where_when_and_how_far() -> None:
    (finding,) = probe_findings(delivered())
    assert (finding.code, finding.severity) == ("E2E_DELIVERED", Severity.INFO)
    # The subject names the probe and where it entered (CONTRACT.md: host, IP, port)
    assert finding.subject == "John to Sun via mail.contoso.com [192.0.2.10]:25"
    assert finding.message == (
        "The probe from john@contoso.com to sun@tailspintoys.com arrived in INBOX of "
        "imaps://imap.tailspintoys.com:993/INBOX 4.2 s after mail.contoso.com [192.0.2.10]:25 accepted it, over 1 hop."
    )


@pytest.mark.parametrize(
    ("verdict", "code", "severity", "words"),
    [
        (Verdict(Outcome.TLS_MISSING, "hop 2 (mail.contoso.com -> mx.tailspintoys.com) was not encrypted (ESMTP)",
                 HOP), "E2E_TLS_MISSING", Severity.ERROR, "hop 2 (mail.contoso.com -> mx.tailspintoys.com)"),
        (Verdict(Outcome.WRONG_ROUTE, "expected connector 'Connector 2', the cloud used Connector 1"),
         "E2E_WRONG_ROUTE", Severity.ERROR, "another route than diag route predicts"),
        (Verdict(Outcome.SLOW, "took 42.0 s, more than 30 s"), "E2E_SLOW", Severity.WARNING, "took 42.0 s"),
        (Verdict(Outcome.JUNK, "arrived in the junk folder Junk"), "E2E_JUNK", Severity.WARNING, "junk folder Junk"),
    ],
)
def test_what_the_judge_found_on_the_way(verdict: Verdict, code: str, severity: Severity, words: str) -> None:
    delivered_, found = probe_findings(delivered(verdict))
    assert delivered_.code == "E2E_DELIVERED"
    assert (found.code, found.severity) == (code, severity)
    assert words in found.message and found.remediation


def test_a_refusal_carries_the_reply_and_the_clouds_words() -> None:
    refused = Refused("contoso-com.mail.protection.outlook.com [192.0.2.20]:25", Stage.RCPT, 550,
                      "550 5.7.64 TenantAttribution; Relay Access Denied")  # fmt: skip
    probe = replace(BASE, accepted=None, refused=refused, accepted_at=None,
                    verdicts=(Verdict(Outcome.REJECTED, refused.reply),))  # fmt: skip
    (finding,) = probe_findings(probe)
    assert (finding.code, finding.severity) == ("E2E_REJECTED", Severity.CRITICAL)
    assert "at RCPT: 550 5.7.64 TenantAttribution; Relay Access Denied" in finding.message
    assert finding.cloud_error == "550 5.7.64 TenantAttribution; Relay Access Denied"
    assert "inbound connector" in finding.remediation


def test_a_probe_that_could_not_be_submitted_at_all() -> None:
    refused = Refused("the MX of nullmx.example", Stage.CONNECT, None, "cannot submit the probe: no MX")
    probe = replace(BASE, accepted=None, refused=refused, verdicts=(Verdict(Outcome.REJECTED, refused.reply),))
    (finding,) = probe_findings(probe)
    assert finding.code == "E2E_REJECTED" and finding.cloud_error is None and "no MX" in finding.message


def test_a_bounce_gives_status_diagnostic_and_reporter() -> None:
    failed = BounceRecipient("rfc822; sun@tailspintoys.com", "failed", "5.7.64",
                             "smtp; 550 5.7.64 TenantAttribution; Relay Access Denied", None)  # fmt: skip
    bounce = Bounce("dns; nocert.contoso.com", (failed,), BASE.message_id, None)
    detail = "Status 5.7.64; Diagnostic-Code smtp; 550 5.7.64 ...; reported by dns; nocert.contoso.com"
    (finding,) = probe_findings(replace(BASE, bounce=bounce, verdicts=(Verdict(Outcome.BOUNCED, detail),)))
    assert (finding.code, finding.severity) == ("E2E_BOUNCED", Severity.CRITICAL)
    assert detail in finding.message and finding.cloud_error == "550 5.7.64 TenantAttribution; Relay Access Denied"


def test_a_timeout_says_where_the_probe_was_last_known() -> None:
    verdict = Verdict(Outcome.TIMEOUT, "not seen within 60 s; last known: accepted by --via at ...")
    (finding,) = probe_findings(replace(BASE, verdicts=(verdict,)))
    assert (finding.code, finding.severity) == ("E2E_TIMEOUT", Severity.CRITICAL)
    assert finding.message.endswith(
        "within 60 s; last known: accepted by mail.contoso.com [192.0.2.10]:25 at 2026-11-26 20:00:00 UTC."
    )


def test_a_mailbox_that_cannot_be_watched() -> None:
    # Given a mailbox whose login was refused before anything was sent
    unwatched = replace(BASE, accepted=None, accepted_at=None, watch_error="imaps://...: login refused")
    (finding,) = probe_findings(unwatched)
    assert (finding.code, finding.severity) == ("E2E_WATCH_FAILED", Severity.WARNING)
    assert "so the probe was not sent: imaps://...: login refused" in finding.message
    # Or one that failed after the probe was accepted: what became of it is unknown, nothing else is claimed
    (lost,) = probe_findings(replace(BASE, watch_error="the server closed the connection"))
    assert lost.code == "E2E_WATCH_FAILED" and "was accepted by mail.contoso.com" in lost.message


def test_a_failed_clean_up_is_a_warning_beside_the_verdict() -> None:
    probe = delivered(cleanup=("probe in Junk: folder Junk is read-only",))
    assert codes(probe) == ["E2E_DELIVERED", "E2E_CLEANUP_FAILED"]
    assert "folder Junk is read-only" in probe_findings(probe)[1].message


def test_assess_keeps_the_probes_order() -> None:
    other = replace(delivered(), name="Sun to John")
    findings = assess(E2eFacts((delivered(), other)))
    assert [f.subject.split(" via")[0] for f in findings] == ["John to Sun", "Sun to John"]


def test_the_budget_grows_by_the_longest_deadline() -> None:
    probes = (ProbeConfig("a", deadline=30), ProbeConfig("b", deadline=600))
    options = RunOptions(organization=Organization(probes=probes), timeout=2)
    assert CHECK.budget(2, options) == CHECK.timeout + CHECK.operations * 2 + 600
    assert CHECK.budget(2, RunOptions()) == CHECK.timeout + CHECK.operations * 2


def test_every_judged_outcome_has_its_code() -> None:
    # Every outcome of the judge maps to a declared E2E_ code (the registry checks the declarations)
    assert {f"E2E_{outcome.name}" for outcome in Outcome} <= set(CHECK.codes)


def test_more_probes_than_a_run_may_send_are_not_sent_at_all() -> None:
    # security-cases.md PR-08: an organization made in code (the loader refuses the file) holds 21 probes
    probes = tuple(ProbeConfig(f"Probe {n}", sender="john@contoso.com", recipient="sun@tailspintoys.com",
                               watch="maildir:/nonexistent") for n in range(MAX_PROBES + 1))  # fmt: skip
    options = RunOptions(organization=Organization(probes=probes), timeout=2)
    report = asyncio.run(run_checks(["contoso.com"], default_registry().select(["e2e"]), options))
    result = report.domains[0].result("e2e")
    assert result.status is Status.SKIPPED and result.findings == ()
    assert result.reason == "config: 21 probes, more than the 20 a run may send"


def test_a_probe_held_back_by_its_min_interval_is_a_notice_never_a_pass() -> None:
    held = replace(BASE, accepted=None, accepted_at=None, message_id="", min_interval_s=300,
                   held=Held(T0, 42.4))  # fmt: skip
    (finding,) = probe_findings(held)
    assert (finding.code, finding.severity) == ("E2E_NOT_SENT", Severity.NOTICE)
    assert finding.subject == "John to Sun via mail.contoso.com [192.0.2.10]:25"
    assert finding.message == ("The probe from john@contoso.com to sun@tailspintoys.com was not sent: the same probe "
                               "was sent 42 s ago (MinInterval 300 s).")  # fmt: skip
    assert "MinInterval" in finding.remediation and not held.submitted


def test_a_probe_held_back_because_its_record_cannot_be_kept() -> None:
    problem = "the record of probes sent, /data/diag/history.sent-probes.json, cannot be kept: Permission denied"
    (finding,) = probe_findings(replace(BASE, accepted=None, accepted_at=None, held=Held(problem=problem)))
    assert (finding.code, finding.severity) == ("E2E_NOT_SENT", Severity.NOTICE)
    assert finding.message == f"The probe from john@contoso.com to sun@tailspintoys.com was not sent: {problem}."
