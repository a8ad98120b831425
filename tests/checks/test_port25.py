"""The port25 check: judgement of session facts, the lab's broken hosts, and egress blocking."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from checks import default_registry
from checks.port25 import CHECK, NULL_MX, SUMMARY, NotProbed, Port25Facts, Probed, assess
from diag.lab.runner import Lab
from diag.model import CheckResult, Severity, Status, Verdict
from diag.net.smtp import SessionError, SessionFacts, SessionStage
from diag.runner import run_checks

from .conftest import codes_of

HEALTHY = SessionFacts(
    "192.0.2.1", 25, "mx.example.com", reached=SessionStage.DONE, greeting_code=220, greeting="mx ESMTP",
    ehlo_code=250, extensions=("PIPELINING", "STARTTLS"), starttls_offered=True,
)  # fmt: skip


def judge(**changes: object) -> tuple[str, Severity, str, str | None]:
    (finding,) = assess(Port25Facts((Probed("mx.example.com", replace(HEALTHY, **changes)),)))  # type: ignore[arg-type]
    return finding.code, finding.severity, finding.message, finding.cloud_error


def test_healthy() -> None:
    code, severity, message, _ = judge()
    assert (code, severity) == ("SMTP_OK", Severity.INFO)
    assert "mx.example.com [192.0.2.1]:25" in message


@pytest.mark.parametrize(
    ("changes", "code", "cloud"),
    [
        ({"reached": None, "error": SessionError.REFUSED}, "SMTP_CONNECT_REFUSED", "450 4.4.316"),
        ({"reached": None, "error": SessionError.CONNECT_TIMEOUT}, "SMTP_CONNECT_TIMEOUT", "450 4.4.315"),
        ({"reached": None, "error": SessionError.UNREACHABLE, "detail": "Network is unreachable"},
         "SMTP_CONNECT_FAILED", None),
        ({"reached": SessionStage.CONNECT, "error": SessionError.BANNER_TIMEOUT}, "SMTP_BANNER_TIMEOUT", "450 4.4.315"),
        ({"reached": SessionStage.CONNECT, "error": SessionError.DISCONNECTED}, "SMTP_SESSION_FAILED", "450 4.4.318"),
        ({"reached": SessionStage.BANNER, "error": SessionError.TIMEOUT}, "SMTP_SESSION_FAILED", "450 4.4.318"),
        ({"reached": SessionStage.BANNER, "error": SessionError.EHLO_REJECTED}, "SMTP_EHLO_REJECTED", "450 4.4.317"),
        ({"helo_fallback": True, "starttls_offered": False}, "SMTP_EHLO_REJECTED", "450 4.4.317"),
        # STARTTLS trouble is the starttls check's to judge; port 25 itself works.
        ({"reached": SessionStage.EHLO, "error": SessionError.TLS_FAILED}, "SMTP_OK", None),
        ({"reached": SessionStage.STARTTLS, "error": SessionError.EHLO_REJECTED}, "SMTP_OK", None),
    ],
)  # fmt: skip
def test_session_defects(changes: dict[str, object], code: str, cloud: str | None) -> None:
    found, severity, _, cloud_error = judge(**changes)
    assert found == code
    assert severity is CHECK.codes[code]
    assert (cloud_error or "").startswith(cloud or "")


def test_greetings_quote_the_server() -> None:
    _, _, message, cloud = judge(
        reached=SessionStage.CONNECT, error=SessionError.GREETING_REJECTED, greeting_code=421, greeting="4.7.0 busy"
    )
    assert "rate limiting" in message and "421 4.7.0 busy" in message
    assert cloud == "450 4.4.317 Cannot connect to remote server [Message=421 4.7.0 busy]"
    _, _, message, _ = judge(
        reached=SessionStage.CONNECT, error=SessionError.GREETING_REJECTED, greeting_code=554, greeting="go away"
    )
    assert "rate limiting" not in message and "554 go away" in message


def test_an_endless_421_greeting_is_rate_limiting_quoted_by_its_first_line() -> None:
    code, severity, message, cloud = judge(
        reached=SessionStage.CONNECT, error=SessionError.GREETING_REJECTED, greeting_code=421,
        greeting="4.7.0 busy\n4.7.0 busy\n4.7.0 busy", greeting_unfinished=True,
    )  # fmt: skip
    assert (code, severity) == ("SMTP_GREETING_REJECT", Severity.ERROR)
    assert "greets with 421 in a multi-line reply that never ends: it is rate limiting" in message
    assert message.endswith("(421 4.7.0 busy).")
    assert cloud == "450 4.4.317 Cannot connect to remote server [Message=421 4.7.0 busy]"


def test_private_addresses_are_not_probed() -> None:
    facts = Port25Facts((), (NotProbed("mx.example.com", "10.0.0.5", "not a public address"),))
    (finding,) = assess(facts)
    assert (finding.code, finding.subject) == ("SMTP_TARGET_NOT_PUBLIC", "mx.example.com [10.0.0.5]")


def test_addresses_over_the_cap_are_a_warning_not_silence() -> None:
    # Given a host listing 298 addresses: the first 10 answer well, the rest are over the cap
    probed = tuple(Probed("mx.example.com", replace(HEALTHY, ip=f"192.0.2.{i}")) for i in range(10))
    skipped = tuple(NotProbed("mx.example.com", f"198.51.100.{i}", "over 10 addresses") for i in range(288))
    findings = assess(Port25Facts(probed, skipped))

    # Then the ten are OK, and one warning for the host says how many were not checked
    assert [f.code for f in findings] == ["SMTP_ADDRESSES_NOT_PROBED"] + ["SMTP_OK"] * 10
    warning = findings[0]
    assert warning.severity is Severity.WARNING and warning.subject == "mx.example.com"
    assert "288 of them (198.51.100.0, 198.51.100.1, 198.51.100.2, ...)" in warning.message


def result(*errors: SessionError | None) -> CheckResult:
    probed = tuple(Probed("mx.example.com", replace(HEALTHY, ip=f"192.0.2.{i}", error=e)) for i, e in enumerate(errors))
    facts = Port25Facts(probed)
    return CheckResult("port25", "Port 25", Status.COMPLETED, facts=facts, findings=assess(facts))


def test_egress_blocked_when_every_connection_of_the_run_timed_out() -> None:
    timeout = SessionError.CONNECT_TIMEOUT
    summarized = SUMMARY.apply([result(timeout, timeout), result(timeout)])
    for item in summarized:
        assert item.status is Status.ERROR and item.reason is not None and item.reason.startswith("egress")
        assert [f.code for f in item.findings] == ["SMTP_EGRESS_BLOCKED"]


@pytest.mark.parametrize("other", [None, SessionError.REFUSED, SessionError.BANNER_TIMEOUT])
def test_no_egress_verdict_when_anything_answered(other: SessionError | None) -> None:
    results = [result(SessionError.CONNECT_TIMEOUT), result(other)]
    assert SUMMARY.apply(results) == results


# Against the lab.


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("contoso.com", ["SMTP_OK"]),
        ("refused.example", ["SMTP_CONNECT_REFUSED"]),
        ("tarpit.example", ["SMTP_BANNER_TIMEOUT"]),
        ("blackhole.example", ["SMTP_CONNECT_TIMEOUT"]),
        ("rejecting.example", ["SMTP_GREETING_REJECT"]),
        ("ratelimited.example", ["SMTP_GREETING_REJECT"]),
        ("endless421.example", ["SMTP_GREETING_REJECT"]),
        ("multi.example", ["SMTP_CONNECT_REFUSED", "SMTP_OK", "SMTP_OK"]),
        ("heloonly.example", ["SMTP_EHLO_REJECTED"]),
        ("ehlodrop.example", ["SMTP_SESSION_FAILED"]),
        # Thirty MX names on one address: one session, one verdict.
        ("manymx.example", ["SMTP_OK"]),
    ],
)
def test_lab(domain_report, domain: str, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert codes_of(domain_report(domain), "port25") == expected


def test_lab_subjects_name_host_address_and_port(domain_report, lab: Lab) -> None:  # type: ignore[no-untyped-def]
    findings = domain_report("multi.example").result("port25").findings
    assert [f.subject for f in findings] == [
        f"mx{n}.multi.example [127.0.20.{16 + n}]:{lab.smtp_port}" for n in (1, 2, 3)
    ]


def test_lab_null_mx_alone_is_not_applicable_and_ok(domain_report) -> None:  # type: ignore[no-untyped-def]
    # Given a domain whose only MX record is the null MX (RFC 7505)
    report = domain_report("nullmx.example")
    # Then there is nothing to probe, and that is what the domain declares, not a failure
    port25, starttls, certificate = (report.result(c) for c in ("port25", "starttls", "certificate"))
    assert (port25.status, port25.reason) == (Status.NOT_APPLICABLE, NULL_MX)
    for follower in (starttls, certificate):
        assert (follower.status, follower.reason) == (
            Status.NOT_APPLICABLE, f"requires port25, which is not applicable: {NULL_MX}",
        )  # fmt: skip
    assert (report.verdict, report.verdict.exit_code) == (Verdict.OK, 0)


def test_lab_mx_hosts_without_addresses_could_not_be_probed(domain_report) -> None:  # type: ignore[no-untyped-def]
    # Given MX hosts that exist but have no address: the mx check reports the error, port25 could not run
    report = domain_report("dangling.example")
    result = report.result("port25")
    assert (result.status, result.reason) == (Status.SKIPPED, "the MX check found no address to connect to")
    assert report.verdict is Verdict.CRITICAL


def test_lab_null_mx_next_to_a_real_mx_is_probed(domain_report) -> None:  # type: ignore[no-untyped-def]
    assert domain_report("mixednull.example").result("port25").status is Status.COMPLETED


def test_lab_private_addresses_refused_without_allow_private(lab: Lab) -> None:
    options = lab.run_options(allow_private=False)
    report = asyncio.run(run_checks(["contoso.com"], default_registry().select(["port25"]), options))
    assert codes_of(report.domains[0], "port25") == ["SMTP_TARGET_NOT_PUBLIC"]


def test_lab_egress_blocked(lab: Lab) -> None:
    options = lab.run_options(timeout=0.5)
    report = asyncio.run(run_checks(["blackhole.example"], default_registry(), options))
    port25 = report.domains[0].result("port25")
    assert port25.status is Status.ERROR and [f.code for f in port25.findings] == ["SMTP_EGRESS_BLOCKED"]
    assert report.exit_code == 3


def test_lab_one_session_per_address_serves_every_domain_and_check(lab_report) -> None:  # type: ignore[no-untyped-def]
    # The organization's four domains share the cloud host's address: one session served them all.
    sessions = [
        d.result("port25").facts.probed[0].session
        for d in lab_report.domains
        if d.domain in ("contoso.com", "sales.contoso.com", "fabrikam.com", "contoso.onmicrosoft.com")
    ]
    assert len(sessions) == 4 and all(s is sessions[0] for s in sessions)


def test_lab_shared_address_is_judged_by_each_domains_host_name(domain_report, lab: Lab) -> None:  # type: ignore[no-untyped-def]
    # multi.example and dupmx.example reach 127.0.20.18 as mx2.multi.example, iplit.example by its address:
    # one session, but each domain's findings name (and check the certificate against) its own host name.
    subjects = {d: [f.subject for f in domain_report(d).result("certificate").findings]
                for d in ("multi.example", "dupmx.example", "iplit.example")}  # fmt: skip
    port = lab.smtp_port
    assert f"mx2.multi.example [127.0.20.18]:{port}" in subjects["multi.example"]
    assert subjects["dupmx.example"] == [f"mx2.multi.example [127.0.20.18]:{port}"]
    assert subjects["iplit.example"] == [f"127.0.20.18 [127.0.20.18]:{port}"]
    assert codes_of(domain_report("multi.example"), "certificate") == ["CERT_OK", "CERT_OK"]
