"""The runner: dependency order, concurrency, time limits, and every failure turned into a result."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace

import pytest

from checks import default_registry
from diag.context import CheckContext, RunOptions
from diag.errors import DnsError, DnsTimeoutError
from diag.lab.runner import Lab
from diag.model import Severity, Status, Verdict
from diag.registry import Check, Outcome, Registry, Summary
from diag.runner import run_checks

OPTIONS = RunOptions(deadline=30.0)


def make(check_id: str, run, *requires: str, timeout: float = 10.0, codes=None) -> Check:  # type: ignore[no-untyped-def]
    return Check(check_id, check_id, run, codes or {}, requires=requires, timeout=timeout)


async def ok(ctx: CheckContext) -> Outcome:
    return Outcome({"domain": ctx.domain}, ())


async def crash(ctx: CheckContext) -> Outcome:
    raise RuntimeError("boom")


async def hang(ctx: CheckContext) -> Outcome:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def one_second(ctx: CheckContext) -> Outcome:
    await asyncio.sleep(1.0)
    return Outcome(None, ())


def run(registry: Registry, domains: tuple[str, ...] = ("example.com",), options: RunOptions = OPTIONS):  # type: ignore[no-untyped-def]
    return asyncio.run(run_checks(domains, registry, options))


def test_dependents_see_their_requirements_facts() -> None:
    seen = {}

    async def reader(ctx: CheckContext) -> Outcome:
        seen.update(ctx.facts("first", dict))
        return Outcome(None, ())

    report = run(Registry([make("first", ok), make("second", reader, "first")]))
    assert [r.status for r in report.domains[0].results] == [Status.COMPLETED, Status.COMPLETED]
    assert seen == {"domain": "example.com"}


def test_a_crash_becomes_an_error_with_its_reason() -> None:
    report = run(Registry([make("bad", crash)]))
    result = report.domains[0].result("bad")
    assert result.status is Status.ERROR
    assert result.reason == "internal: RuntimeError: boom"
    assert result.findings == ()
    assert report.exit_code == 3


def test_probe_errors_carry_their_category() -> None:
    async def servfail(ctx: CheckContext) -> Outcome:
        raise DnsError("SERVFAIL from 192.0.2.53")

    async def dns_timeout(ctx: CheckContext) -> Outcome:
        raise DnsTimeoutError("no answer within 5 s")

    report = run(Registry([make("a", servfail), make("b", dns_timeout)]))
    a, b = report.domains[0].results
    assert (a.status, a.reason) == (Status.ERROR, "dns: SERVFAIL from 192.0.2.53")
    # A DNS timeout is a DNS failure of the check, not the check running out of time.
    assert (b.status, b.reason) == (Status.ERROR, "dns: no answer within 5 s")


def test_skips_propagate_down_the_graph() -> None:
    registry = Registry([make("root", crash), make("child", ok, "root"), make("grandchild", ok, "child"),
                         make("other", ok)])  # fmt: skip
    results = {r.check_id: r for r in run(registry).domains[0].results}
    assert results["root"].status is Status.ERROR
    assert results["child"].status is Status.SKIPPED
    assert results["child"].reason == "requires root, which ended error"
    assert results["grandchild"].status is Status.SKIPPED
    assert results["grandchild"].reason == "requires child, which ended skipped"
    assert results["other"].status is Status.COMPLETED


def test_a_check_over_its_budget_times_out() -> None:
    report = run(Registry([make("slow", hang, timeout=0.2), make("after", ok, "slow")]))
    slow, after = report.domains[0].results
    assert (slow.status, slow.reason) == (Status.TIMEOUT, "check exceeded its 0.2 s budget")
    assert after.status is Status.SKIPPED


def test_the_run_deadline_stops_everything() -> None:
    report = run(Registry([make("slow", hang, timeout=60)]), options=replace(OPTIONS, deadline=1.0))
    result = report.domains[0].result("slow")
    assert (result.status, result.reason) == (Status.TIMEOUT, "run deadline reached")


def test_independent_checks_overlap() -> None:
    registry = Registry([make("a", one_second), make("b", one_second), make("c", one_second, "a")])
    results = {r.check_id: r for r in run(registry).domains[0].results}
    a, b, c = results["a"], results["b"], results["c"]
    # Independent checks ran at the same time: each started before the other finished.
    assert a.started < b.finished and b.started < a.finished
    # A dependent started only after its requirement finished.
    assert c.started >= a.finished


def test_domains_run_concurrently() -> None:
    report = run(Registry([make("a", one_second)]), domains=("one.example", "two.example"))
    one, two = (d.results[0] for d in report.domains)
    assert one.started < two.finished and two.started < one.finished


def test_undeclared_findings_are_refused() -> None:
    async def rogue(ctx: CheckContext) -> Outcome:
        from diag.model import Finding

        return Outcome(None, (Finding("NOT_MINE", Severity.INFO, "x", "y"),))

    result = run(Registry([make("rogue", rogue)])).domains[0].result("rogue")
    assert result.status is Status.ERROR
    assert "undeclared finding 'NOT_MINE'" in (result.reason or "")


def test_a_run_returns_a_result_for_every_check_and_domain() -> None:
    registry = Registry([make("a", ok), make("b", crash), make("c", hang, "a", timeout=0.1), make("d", ok, "b")])
    report = run(registry, domains=("one.example", "two.example"))
    assert [d.domain for d in report.domains] == ["one.example", "two.example"]
    for domain in report.domains:
        assert [r.check_id for r in domain.results] == list(registry.ids)


def test_nothing_to_examine_is_skipped_with_the_reason() -> None:
    async def empty(ctx: CheckContext) -> Outcome:
        return Outcome.skip("no address to connect to")

    result = run(Registry([make("empty", empty)])).domains[0].result("empty")
    assert (result.status, result.reason, result.findings) == (Status.SKIPPED, "no address to connect to", ())


async def moot(ctx: CheckContext) -> Outcome:
    return Outcome.inapplicable("the domain accepts no mail")


def test_a_check_with_nothing_to_examine_is_not_applicable_and_leaves_the_verdict_ok() -> None:
    # Given a check that finds it does not apply, its dependents, and an independent check
    registry = Registry([make("moot", moot), make("child", ok, "moot"), make("grandchild", ok, "child"),
                         make("other", ok)])  # fmt: skip
    # When they run
    report = run(registry)
    results = {r.check_id: r for r in report.domains[0].results}
    # Then the check and everything that needs it are not applicable, each naming why, and nothing is unknown
    assert (results["moot"].status, results["moot"].reason) == (Status.NOT_APPLICABLE, "the domain accepts no mail")
    assert (results["child"].status, results["child"].reason) == (
        Status.NOT_APPLICABLE, "requires moot, which is not applicable: the domain accepts no mail",
    )  # fmt: skip
    assert results["grandchild"].status is Status.NOT_APPLICABLE
    assert results["grandchild"].reason == (
        "requires child, which is not applicable: requires moot, which is not applicable: the domain accepts no mail"
    )
    assert results["moot"].findings == () and results["moot"].facts is None
    assert (report.verdict, report.exit_code) == (Verdict.OK, 0)


def test_a_requirement_that_could_not_run_outweighs_one_that_does_not_apply() -> None:
    registry = Registry([make("moot", moot), make("bad", crash), make("both", ok, "moot", "bad")])
    result = run(registry).domains[0].result("both")
    assert (result.status, result.reason) == (Status.SKIPPED, "requires bad, which ended error")


def test_budget_grows_with_the_operation_timeout() -> None:
    async def slow(ctx: CheckContext) -> Outcome:
        await asyncio.sleep(0.4)
        return Outcome(None, ())

    check = Check("slow", "slow", slow, {}, timeout=0.1, operations=2)
    assert check.budget(0.2) == pytest.approx(0.5)
    # Seconds of margin, not milliseconds: a loaded 2-core machine may stretch the 0.4 s sleep a lot.
    completed = run(Registry([check]), options=replace(OPTIONS, timeout=2.0)).domains[0].result("slow")
    assert completed.status is Status.COMPLETED
    # The budget's timer is due before the sleep's, so load only delays both: the order holds.
    timed_out = run(Registry([check]), options=replace(OPTIONS, timeout=0.1)).domains[0].result("slow")
    assert (timed_out.status, timed_out.reason) == (Status.TIMEOUT, "check exceeded its 0.3 s budget")


def test_a_summary_sees_every_domain_and_a_broken_one_is_an_error() -> None:
    seen = []

    def revise(notes):  # type: ignore[no-untyped-def]
        seen.append(list(notes))
        return lambda r: replace(r, reason="summarized")

    def broken(notes):  # type: ignore[no-untyped-def]
        raise RuntimeError("bug")

    def unnoted(result):  # type: ignore[no-untyped-def]
        raise ValueError(f"cannot note {result.facts['domain']}")

    def failing(result):  # type: ignore[no-untyped-def]
        if result.facts["domain"] == "two.example":
            raise KeyError("two")
        return result

    def domain(result):  # type: ignore[no-untyped-def]
        return result.facts["domain"]

    registry = Registry([
        Check("a", "a", ok, {}, summary=Summary(domain, revise)),
        Check("b", "b", ok, {}, summary=Summary(domain, broken)),
        Check("c", "c", ok, {}, summary=Summary(unnoted, revise)),
        Check("d", "d", ok, {}, summary=Summary(domain, lambda notes: failing)),
        Check("e", "e", ok, {}, summary=Summary(lambda r: "same", lambda notes: None)),
    ])  # fmt: skip
    report = run(registry, domains=("one.example", "two.example", "one.example"))
    # The distinct notes, in the order of the domains; the note that failed never reached its revise
    assert seen == [["one.example", "two.example"]]
    assert [d.result("a").reason for d in report.domains] == ["summarized"] * 3
    for domain_report in report.domains:
        b, c, e = domain_report.result("b"), domain_report.result("c"), domain_report.result("e")
        assert (b.status, b.reason) == (Status.ERROR, "internal: summarizing the run failed: RuntimeError: bug")
        assert (c.status, c.reason) == (
            Status.ERROR, "internal: summarizing the run failed: ValueError: cannot note one.example"
        )
        assert (e.status, e.reason) == (Status.COMPLETED, None)
    # A reviser that fails on one result makes that result an error, not its neighbours
    assert [d.result("d").status for d in report.domains] == [Status.COMPLETED, Status.ERROR, Status.COMPLETED]
    assert report.domains[1].result("d").reason == "internal: summarizing the run failed: KeyError: 'two'"
    assert report.exit_code == 3




def test_waiting_widens_the_budget_by_what_the_options_say() -> None:
    # Given a check that waits (as the e2e check waits for its probes' Deadline) longer than its own budget
    async def patient(ctx: CheckContext) -> Outcome:
        await asyncio.sleep(0.4)
        return Outcome(None, ())

    check = Check("patient", "patient", patient, {}, timeout=0.1, waits=lambda options: options.timeout * 10)
    assert check.budget(0.5) == pytest.approx(0.1) and check.budget(0.5, OPTIONS) == pytest.approx(0.1 + 100)
    # Then the runner gives it that time
    assert run(Registry([check])).domains[0].result("patient").status is Status.COMPLETED


def test_an_incomplete_outcome_keeps_its_findings_and_ends_error() -> None:
    # Given a check that judged part of what it examines and could not see the rest
    async def partial(ctx: CheckContext) -> Outcome:
        return Outcome({"seen": 1}, (check.finding("PART_CRITICAL", ctx.domain, "bad"),), incomplete="watch: gone")

    check = Check("partial", "partial", partial, {"PART_CRITICAL": Severity.CRITICAL, "PART_WARNING": Severity.WARNING},
                  meanings={"PART_CRITICAL": "c", "PART_WARNING": "w"})  # fmt: skip
    result = run(Registry([check])).domains[0].result("partial")
    # Then it is an error with the reason, its facts and findings kept: a certain critical finding still counts
    assert (result.status, result.reason, result.facts) == (Status.ERROR, "watch: gone", {"seen": 1})
    assert [f.code for f in result.findings] == ["PART_CRITICAL"]
    assert Verdict.of([result]) is Verdict.CRITICAL
    # and with nothing worse than a warning, what it could not see makes the verdict unknown (exit 3)
    warning = replace(result, findings=(check.finding("PART_WARNING", "example.com", "meh"),))
    assert Verdict.of([warning]) is Verdict.UNKNOWN


def asked_during(lab: Lab, domains: list[str], **options: object) -> Counter[tuple[str, str, str]]:
    """The questions the lab's DNS server received, per (name, type, transport), while every check ran on
    ``domains`` in one run."""
    before = Counter(lab.dns_questions)
    # A generous timeout: on a loaded machine a UDP try of 2/3 of 5 s / 4 could time out and be asked again.
    report = asyncio.run(run_checks(domains, default_registry(), lab.run_options(timeout=10.0, **options)))
    ran = {r.status for d in report.domains for r in d.results}
    assert ran <= {Status.COMPLETED, Status.NOT_APPLICABLE}  # dkim and e2e: not accepted domains, no probes
    return lab.dns_questions - before


@pytest.mark.parametrize("validating_resolver", [False, True], ids=["trust-anchor", "ad-bit"])
def test_a_run_of_every_check_asks_each_dns_question_once(lab: Lab, validating_resolver: bool) -> None:
    # Given signed lab domains with TLSA records (dane.example), three MX hosts (multi.example), an MX answer too
    # long for UDP (manymx.example), MX hosts that are aliases (cnamesigned.example: its TLSA records are the
    # expanded name's; cnameunsigned.example: the chain is not secure), and every check, the mail checks' and the
    # DNSSEC-validating ones
    asked = asked_during(lab, ["dane.example", "multi.example", "manymx.example", "cnamesigned.example",
                               "cnameunsigned.example"], validating_resolver=validating_resolver)  # fmt: skip
    udp = Counter({(name, rdtype): n for (name, rdtype, transport), n in asked.items() if transport == "udp"})
    tcp = Counter({(name, rdtype): n for (name, rdtype, transport), n in asked.items() if transport == "tcp"})
    # Then the MX, address, TLSA and chain-of-trust questions were asked, each once over UDP (issue 14)
    assert {("dane.example", "MX"), ("mx.dane.example", "A"), ("_25._tcp.mx.dane.example", "TLSA"),
            ("mx3.multi.example", "AAAA"), ("_25._tcp.mx.cnameunsigned.example", "TLSA")} <= set(udp)  # fmt: skip
    assert ("_25._tcp.mx.nsec3.example", "TLSA") in udp or validating_resolver  # the AD bit: no chain is secure
    assert ("_25._tcp.mx.unsigned.example", "TLSA") not in udp  # an insecure chain's expanded name is not asked
    assert ("example", "DNSKEY") in udp or validating_resolver
    assert [question for question, n in udp.items() if n > 1] == []
    # and over TCP only the truncated UDP answer, once
    assert tcp == Counter({("manymx.example", "MX"): 1})
