"""The mx check: pure judgement on given facts, and the real lookup against the lab's DNS."""

from __future__ import annotations

import asyncio

import pytest

from checks.mx import CHECK, MxFacts, MxHost, assess
from diag.context import CheckContext, RunContext, RunOptions
from diag.errors import DnsError
from diag.lab.dns import DnsServer, ZoneData
from diag.lab.runner import Lab
from diag.model import Severity
from diag.net.dns import DnsStatus, Nameserver

DOMAIN = "example.com"


def codes(facts: MxFacts) -> list[str]:
    return [f.code for f in assess(facts)]


def host(name: str = "mx.example.com", preference: int = 10, *addresses: str, **kw: object) -> MxHost:
    return MxHost(preference, name, addresses or ("192.0.2.1",), name, **kw)  # type: ignore[arg-type]


# Given facts, when judged, then ...


def test_healthy_hosts_are_reported_ok_one_by_one() -> None:
    facts = MxFacts(DOMAIN, DnsStatus.OK, hosts=(host("a.example.com", 10), host("b.example.com", 20)))
    findings = assess(facts)
    assert [(f.code, f.subject, f.severity) for f in findings] == [
        ("MX_OK", "a.example.com", Severity.INFO),
        ("MX_OK", "b.example.com", Severity.INFO),
    ]
    assert "preference 10" in findings[0].message and "192.0.2.1" in findings[0].message


def test_nxdomain_is_critical_and_alone() -> None:
    (finding,) = assess(MxFacts(DOMAIN, DnsStatus.NXDOMAIN))
    assert (finding.code, finding.severity, finding.subject) == ("MX_DOMAIN_NXDOMAIN", Severity.CRITICAL, DOMAIN)
    assert finding.cloud_error == "450 4.4.312 DNS query failed"


def test_null_mx() -> None:
    (finding,) = assess(MxFacts(DOMAIN, DnsStatus.OK, null_mx=True))
    assert (finding.code, finding.severity) == ("MX_NULL", Severity.INFO)


def test_null_mx_of_an_accepted_domain_is_critical() -> None:
    (finding,) = assess(MxFacts(DOMAIN, DnsStatus.OK, null_mx=True, accepted=True))
    assert (finding.code, finding.severity) == ("MX_NULL_ACCEPTED", Severity.CRITICAL)


def test_null_mx_next_to_real_ones_is_an_error() -> None:
    assert codes(MxFacts(DOMAIN, DnsStatus.OK, null_mx=True, hosts=(host(),))) == ["MX_NULL_MIXED", "MX_OK"]


def test_implicit_mx_warns_and_still_reports_the_address() -> None:
    facts = MxFacts(DOMAIN, DnsStatus.NODATA, implicit=True, hosts=(host(DOMAIN, 0),))
    assert codes(facts) == ["MX_NONE_IMPLICIT", "MX_OK"]


def test_implicit_mx_without_address() -> None:
    facts = MxFacts(DOMAIN, DnsStatus.NODATA, implicit=True, hosts=(MxHost(0, DOMAIN),))
    assert codes(facts) == ["MX_NONE_IMPLICIT", "MX_TARGET_NO_ADDRESS"]


def test_cname_target_is_followed_and_warned() -> None:
    facts = MxFacts(DOMAIN, DnsStatus.OK, hosts=(MxHost(10, "mx.example.com", ("192.0.2.1",), "real.example.com"),))
    (finding,) = assess(facts)
    assert (finding.code, finding.severity) == ("MX_TARGET_CNAME", Severity.WARNING)
    assert "real.example.com" in finding.message


def test_ip_literal_target() -> None:
    facts = MxFacts(DOMAIN, DnsStatus.OK, hosts=(MxHost(10, "192.0.2.7", ("192.0.2.7",), "192.0.2.7", True),))
    assert codes(facts) == ["MX_TARGET_IP_LITERAL"]


def test_invalid_target_is_not_looked_up() -> None:
    facts = MxFacts(DOMAIN, DnsStatus.OK, hosts=(MxHost(10, "<svg/onload=alert`1`>.example", valid_name=False),))
    assert codes(facts) == ["MX_TARGET_INVALID"]


def test_target_without_address() -> None:
    (finding,) = assess(MxFacts(DOMAIN, DnsStatus.OK, hosts=(MxHost(10, "mx.example.com"),)))
    assert (finding.code, finding.severity, finding.subject) == (
        "MX_TARGET_NO_ADDRESS", Severity.ERROR, "mx.example.com",
    )  # fmt: skip


def test_duplicates() -> None:
    facts = MxFacts(DOMAIN, DnsStatus.OK, hosts=(host(),), duplicates=("mx.example.com",))
    assert codes(facts) == ["MX_DUPLICATE", "MX_OK"]


def test_expected_mx_pattern() -> None:
    hosts = (host("contoso-com.mail.protection.outlook.com"), host("mail.contoso.com", 20))
    facts = MxFacts(DOMAIN, DnsStatus.OK, hosts=hosts, expected=("*.mail.protection.outlook.com",))
    assert codes(facts) == ["MX_OK", "MX_NOT_EXPECTED"]
    assert assess(facts)[1].subject == "mail.contoso.com"


def test_every_declared_code_is_exercised_above() -> None:
    # Guards against a code that is declared but never emitted (or tested).
    exercised = {
        "MX_OK", "MX_NULL", "MX_NULL_ACCEPTED", "MX_NULL_MIXED", "MX_NONE_IMPLICIT", "MX_DOMAIN_NXDOMAIN",
        "MX_TARGET_CNAME", "MX_TARGET_IP_LITERAL", "MX_TARGET_INVALID", "MX_TARGET_NO_ADDRESS", "MX_DUPLICATE",
        "MX_NOT_EXPECTED",
    }  # fmt: skip
    assert set(CHECK.codes) == exercised


# Against the lab's DNS server, over the wire.


def probe(lab: Lab, domain: str, **options: object) -> MxFacts:
    async def go() -> MxFacts:
        run = RunContext(lab.run_options(**options))
        outcome = await CHECK.run(CheckContext(domain, run, {}))
        assert isinstance(outcome.facts, MxFacts)
        return outcome.facts

    return asyncio.run(go())


def test_lab_organization_domain(lab: Lab) -> None:
    facts = probe(lab, "contoso.com")
    assert [(h.preference, h.name, h.addresses) for h in facts.hosts] == [
        (10, "contoso-com.mail.protection.outlook.com", ("127.0.1.10",))
    ]
    assert codes(facts) == ["MX_OK"]


def test_lab_multi_is_in_preference_order(lab: Lab) -> None:
    facts = probe(lab, "multi.example")
    assert [h.name for h in facts.hosts] == ["mx1.multi.example", "mx2.multi.example", "mx3.multi.example"]


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("nullmx.example", ["MX_NULL"]),
        ("nomx.example", ["MX_NONE_IMPLICIT", "MX_OK"]),
        ("cnamemx.example", ["MX_TARGET_CNAME"]),
        ("dangling.example", ["MX_TARGET_NO_ADDRESS"]),
        ("doesnotexist.example", ["MX_DOMAIN_NXDOMAIN"]),
        ("mixednull.example", ["MX_NULL_MIXED", "MX_OK"]),
        ("iplit.example", ["MX_TARGET_IP_LITERAL"]),
        ("badname.example", ["MX_TARGET_INVALID"]),
        ("dupmx.example", ["MX_DUPLICATE", "MX_OK"]),
    ],
)
def test_lab_defects(lab: Lab, domain: str, expected: list[str]) -> None:
    assert codes(probe(lab, domain)) == expected


def test_lab_cname_target_is_followed(lab: Lab) -> None:
    (mx,) = probe(lab, "cnamemx.example").hosts
    assert (mx.name, mx.canonical_name) == ("mx.cnamemx.example", "host.cnamemx.example")
    assert mx.addresses == ("127.0.20.16",)


def test_lab_expected_mx(lab: Lab) -> None:
    facts = probe(lab, "tailspintoys.com", expect_mx=("*.mail.protection.outlook.com",))
    assert codes(facts) == ["MX_NOT_EXPECTED"]


def test_servfail_is_an_error_never_no_mx(lab: Lab) -> None:
    with pytest.raises(DnsError, match="SERVFAIL"):
        probe(lab, "servfail.example")


def test_an_answer_truncated_even_over_tcp_is_an_error_never_no_mx(lab: Lab) -> None:
    before = lab.dns_queries["tcp"]
    with pytest.raises(DnsError, match="truncated even over TCP"):
        probe(lab, "truncated.example")
    assert lab.dns_queries["tcp"] > before  # dnspython did retry over TCP


def test_unanswered_dns_is_an_error(lab: Lab) -> None:
    options = RunOptions(nameservers=(lab.nameserver.__class__("127.0.53.54", lab.nameserver.port),), timeout=0.3)

    async def go() -> None:
        await CHECK.run(CheckContext("contoso.com", RunContext(options), {}))

    with pytest.raises(DnsError):
        asyncio.run(go())


def test_lab_truncated_answer_is_fetched_over_tcp(lab: Lab) -> None:
    before = lab.dns_queries["tcp"]
    facts = probe(lab, "manymx.example")
    assert len(facts.hosts) == 30 and facts.hosts[0].name == "mx01.manymx.example"
    assert lab.dns_queries["tcp"] > before


def test_hundreds_of_mx_hosts_are_looked_up_without_flooding_the_nameserver() -> None:
    # Given a domain with 400 MX hosts, each with an address (an answer only TCP can carry)
    zone = ZoneData()
    zone.add_zone("example")
    zone.add("many.example", "MX", *(f"10 mx{n}.many.example." for n in range(400)))
    for n in range(400):
        zone.add(f"mx{n}.many.example", "A", f"192.0.2.{n % 250 + 1}")

    async def go() -> MxFacts:
        server = DnsServer(zone)
        port = await server.start("127.0.77.53")
        try:
            options = RunOptions(nameservers=(Nameserver("127.0.77.53", port),), timeout=2.0)
            outcome = await CHECK.run(CheckContext("many.example", RunContext(options), {}))
        finally:
            await server.close()
        assert isinstance(outcome.facts, MxFacts)
        return outcome.facts

    # Then the 800 A and AAAA questions, asked a few at a time, are all answered
    facts = asyncio.run(go())
    assert len(facts.hosts) == 400 and all(host.addresses for host in facts.hosts)


# Sessions started as soon as an address is known (issue 13, item 3): the run opens the SMTP session at an MX
# address when its A answer is in, not when every lookup of the mx check is.


def first_session(lab: Lab, domain: str, *, early: bool) -> tuple[float | None, float, MxFacts]:
    """When (loop time) the run first had an SMTP session under way, and when the mx check finished."""

    async def go() -> tuple[float | None, float, MxFacts]:
        run = RunContext(lab.run_options(), early_sessions=early)
        loop = asyncio.get_running_loop()
        seen: list[float] = []

        async def watch() -> None:
            while run.session_count == 0:  # noqa: ASYNC110 - the run has no event for it: look, as a test may
                await asyncio.sleep(0.002)
            seen.append(loop.time())

        watcher = asyncio.create_task(watch())
        try:
            outcome = await CHECK.run(CheckContext(domain, run, {}))
            finished = loop.time()
            await asyncio.sleep(0.01)  # a session the check started at its very end is seen too
        finally:
            watcher.cancel()
            await run.aclose()
        assert isinstance(outcome.facts, MxFacts)
        return (seen[0] if seen else None), finished, outcome.facts

    return asyncio.run(go())


def test_the_session_starts_on_the_a_answer_while_the_slow_aaaa_is_out(lab: Lab) -> None:
    # slowaaaa.example's name server answers AAAA 0.4 s after A: the session is under way before the mx check
    # has its last answer.
    started, finished, facts = first_session(lab, "slowaaaa.example", early=True)
    assert [h.addresses for h in facts.hosts] == [("127.0.20.90",)]
    assert started is not None and started < finished


def test_without_a_session_check_the_mx_check_opens_nothing(lab: Lab) -> None:
    started, _, facts = first_session(lab, "slowaaaa.example", early=False)
    assert facts.hosts and started is None


def test_the_cap_and_the_private_rule_hold_for_early_sessions(lab: Lab) -> None:
    async def count(domain: str, **options: object) -> int:
        run = RunContext(lab.run_options(**options), early_sessions=True)
        try:
            await CHECK.run(CheckContext(domain, run, {}))
            await asyncio.sleep(0.01)
            return run.session_count
        finally:
            await run.aclose()

    assert asyncio.run(count("multi.example")) == 3
    assert asyncio.run(count("multi.example", allow_private=False)) == 0
    assert asyncio.run(count("multi.example", max_addresses_per_host=0)) == 0


@pytest.mark.parametrize("domain", ["manymx.example", "multi.example", "mixednull.example", "iplit.example"])
def test_early_sessions_are_the_ones_port25_asks_for(lab: Lab, domain: str) -> None:
    # Each session is named (SNI) after the first host in MX order that lists its address, as port25 names it,
    # however the lookups came in: a run with early sessions probes exactly what a run without them does.
    from dataclasses import replace

    from checks import port25
    from diag.registry import Registry
    from diag.runner import run_checks

    def sessions(registry: Registry) -> list[tuple[str, str, str]]:
        report = asyncio.run(run_checks([domain], registry, lab.run_options()))
        facts = report.domains[0].results[1].facts
        assert isinstance(facts, port25.Port25Facts)
        return [(p.host, p.session.server_name, p.session.ip) for p in facts.probed]

    early = Registry([CHECK, port25.CHECK])
    late = Registry([CHECK, replace(port25.CHECK, tags=frozenset())])
    assert early.tagged("sessions") and not late.tagged("sessions")
    assert sessions(early) == sessions(late) != []
