"""Tests of the delivery planner with plain data: no network, no spool, no clock.

DNS answers are :class:`diag.net.dns.Answer` values built here; an :class:`Attempt` is driven by :func:`drive`,
which answers its questions from a table and its connections from a script, and records every step.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dns.rdata
import pytest

from diag.config import AcceptedDomain, Organization, OutboundConnector, RelayRole, TlsSettings
from diag.errors import DnsError, DnsTimeoutError
from diag.net.dns import Answer, DnsStatus
from diag.relay.dsn import status_code
from diag.relay.plan import (
    LOCAL,
    NOWHERE,
    Attempt,
    Connect,
    Outcome,
    Question,
    Result,
    Route,
    SessionResult,
    TlsLevel,
    TlsPolicy,
    hops,
    message_refusal,
    plan_message,
    route_recipient,
    tls_policy,
)
from diag.relay.settings import RelaySettings

CLEAN = b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\nSubject: x\r\n\r\nHello.\r\n"
TO_B = OutboundConnector(
    "to-b", recipient_domains=("b.example",), use_mx_record=False, smart_hosts=("mx.b.example.", "192.0.2.7")
)


def settings(
    *connectors: OutboundConnector, role: RelayRole = RelayRole.CLOUD, mailboxes: tuple[str, ...] = (),
    smart_host: str | None = None,
) -> RelaySettings:  # fmt: skip
    org = Organization(accepted_domains=(AcceptedDomain("contoso.com"),), outbound_connectors=connectors)
    return RelaySettings(
        organization=org, role=role, hostname="relay.test", listen=(), spool=Path("unused"), maildir=Path("unused"),
        mailboxes=mailboxes, smart_host=smart_host,
    )  # fmt: skip


def answer(name: str, rdtype: str, *records: str, status: DnsStatus = DnsStatus.OK) -> Answer:
    data = tuple(dns.rdata.from_text("IN", rdtype, record) for record in records)
    if status is DnsStatus.OK and not data:
        status = DnsStatus.NODATA
    return Answer(name, rdtype, status, name, data)


def host(name: str, *ips: str) -> dict[tuple[str, str], Answer | DnsError]:
    """The A and AAAA answers for ``name``."""
    return {
        (name, "A"): answer(name, "A", *(ip for ip in ips if ":" not in ip)),
        (name, "AAAA"): answer(name, "AAAA", *(ip for ip in ips if ":" in ip)),
    }


def delivered(to: Connect) -> SessionResult:
    return SessionResult(
        tuple(Outcome(r, Result.DELIVERED, "250 2.0.0 Ok", f"{to.host}[{to.ip}]") for r in to.recipients), {}
    )


def deferred(to: Connect) -> SessionResult:
    return SessionResult((), dict.fromkeys(to.recipients, f"450 4.2.0 busy at {to.ip}"))


@dataclass
class Drive:
    """What driving an attempt did: the questions asked, the connections made, and the outcomes."""

    questions: list[Question] = field(default_factory=list)
    connects: list[Connect] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)


def drive(
    attempt: Attempt,
    dns_answers: Mapping[tuple[str, str], Answer | DnsError],
    session: Callable[[Connect], SessionResult] = delivered,
) -> Drive:
    done = Drive()
    while (step := attempt.step()) is not None:
        if isinstance(step, Question):
            done.questions.append(step)
            attempt.answer(dns_answers[(step.name, step.rdtype)])  # a question the test did not expect: KeyError
        else:
            done.connects.append(step)
            attempt.connected(session(step))
    done.outcomes = {outcome.recipient: outcome for outcome in attempt.outcomes}
    assert sorted(done.outcomes) == sorted(attempt.recipients)  # every recipient gets exactly one outcome
    return done


def attempt(
    route: Route, *recipients: str, allow_private: bool = True, address_limit: int = 5, seed: int = 0
) -> Attempt:
    return Attempt(
        route, recipients or ("user@b.example",), own_name="relay.test", allow_private=allow_private,
        address_limit=address_limit, rng=random.Random(seed),
    )  # fmt: skip


def mx_route(domain: str = "b.example") -> Route:
    return Route("mx", rule="mx", mx=True, domain=domain)


def smart_route(*hosts: str) -> Route:
    return Route("connector:to-b/exact", "to-b", "exact", smart_hosts=hosts)


# --- routes ---------------------------------------------------------------------------------------------------


def test_a_local_mailbox_is_stored_here_in_every_role() -> None:
    for role in RelayRole:
        local = settings(TO_B, role=role, mailboxes=("bob@b.example",), smart_host="smart.example")
        assert route_recipient(local, "Bob@B.example") == (LOCAL, None)


def test_the_cloud_sends_by_the_connector_routing_picks_to_its_smart_hosts() -> None:
    route, outcome = route_recipient(settings(TO_B), "user@b.example")
    assert outcome is None
    assert route == Route(
        "connector:to-b/exact", "to-b", "exact", smart_hosts=("mx.b.example", "192.0.2.7"), mx=False, domain=""
    )


def test_a_connector_with_use_mx_record_sends_to_the_domains_mx_on_its_tls_terms() -> None:
    by_mx = OutboundConnector("by-mx", recipient_domains=("*.b.example",), tls_settings=TlsSettings.ENCRYPTION_ONLY)
    route, outcome = route_recipient(settings(by_mx), "user@sales.b.example")
    assert outcome is None
    assert route == Route(
        "connector:by-mx/wildcard", "by-mx", "wildcard", mx=True, domain="sales.b.example",
        tls=TlsPolicy(TlsLevel.ENCRYPT),
    )  # fmt: skip


def test_the_cloud_without_a_connector_and_an_internet_host_send_by_mx_opportunistically() -> None:
    # The cloud: no connector covers c.example
    assert route_recipient(settings(TO_B), "user@c.example") == (mx_route("c.example"), None)
    # An Internet host never routes by connector, even where one would match
    internet = settings(TO_B, role=RelayRole.INTERNET, mailboxes=("sun@tailspintoys.com",))
    route, outcome = route_recipient(internet, "user@b.example")
    assert (route, outcome) == (mx_route("b.example"), None)
    assert route.tls == TlsPolicy(TlsLevel.OPPORTUNISTIC) and not route.tls.required


def test_onprem_sends_everything_not_local_to_its_smart_host_verified_by_name() -> None:
    onprem = settings(role=RelayRole.ON_PREMISES, mailboxes=("bob@contoso.com",), smart_host=" Smart.Example. ")
    route, outcome = route_recipient(onprem, "user@anywhere.example")
    assert outcome is None
    assert route == Route(
        "smarthost", rule="smarthost", smart_hosts=("Smart.Example",),
        tls=TlsPolicy(TlsLevel.VERIFY, name_check=True, name="Smart.Example"),
    )  # fmt: skip


def test_onprem_without_a_smart_host_defers() -> None:
    onprem = settings(role=RelayRole.ON_PREMISES, mailboxes=("bob@contoso.com",))
    route, outcome = route_recipient(onprem, "user@anywhere.example")
    assert route is NOWHERE
    assert outcome == Outcome(
        "user@anywhere.example", Result.DEFERRED, "451 4.3.5 No smart host is configured for mail that is not local"
    )


def test_an_address_without_a_routable_domain_fails() -> None:
    route, outcome = route_recipient(settings(), "user@[192.0.2.1]")
    assert route is NOWHERE
    assert outcome is not None and outcome.result is Result.FAILED
    assert outcome.reply == (
        "553 5.1.3 address 'user@[192.0.2.1]' has an address literal as its domain; only domain names are routed"
    )


def test_rd10_rd11_an_address_the_client_would_rewrite_or_refuse_fails_on_its_route() -> None:
    # The onprem role takes any recipient its clients may relay; the cloud's routing refuses these earlier.
    onprem = settings(role=RelayRole.ON_PREMISES, mailboxes=("bob@contoso.com",), smart_host="smart.example")
    route, outcome = route_recipient(onprem, '"a\rx <v@evil.example>"@b.example')
    assert route.label == "smarthost"
    assert outcome is not None and outcome.result is Result.FAILED
    assert outcome.reply == (
        '553 5.1.3 The recipient address <\\"a\\rx <v@evil.example>\\"@b.example> would be sent as '
        "<v@evil.example>, not as authorised; it is not sent"
    )
    route, outcome = route_recipient(onprem, '"a\nb"@b.example')
    assert route.label == "smarthost"
    assert outcome is not None and outcome.result is Result.FAILED
    assert outcome.reply.startswith('553 5.1.3 The recipient address <\\"a\\nb\\"@b.example> cannot be sent: ')


def test_a_message_refusal_fails_every_recipient_but_local_ones() -> None:
    relay = settings(TO_B, mailboxes=("bob@contoso.com",))
    plan = plan_message(
        relay, "alice@contoso.com", b"Subject: x\r\n\r\nNUL \x00\r\n", ["user@b.example", "bob@contoso.com"]
    )
    # RD-02 forbids forwarding; storing in a local mailbox is no forwarding
    assert plan.groups == {LOCAL: ("bob@contoso.com",)}
    [(route, outcome)] = plan.settled
    assert route.label == "connector:to-b/exact"
    assert outcome == Outcome(
        "user@b.example",
        Result.FAILED,
        "554 5.6.0 Message content contains NUL, a bare CR or a bare LF; it is not forwarded",
    )


def test_recipients_on_one_route_share_a_group_and_mx_routes_are_per_domain() -> None:
    two_domains = OutboundConnector(
        "to-b", recipient_domains=("b.example", "b2.example"), use_mx_record=False, smart_hosts=("mx.b.example",)
    )
    recipients = ["one@b.example", "x@c.example", "two@b2.example", "y@d.example", "z@c.example", "bad@[192.0.2.1]"]
    plan = plan_message(settings(two_domains), "alice@contoso.com", CLEAN, recipients)
    assert plan.groups == {
        Route("connector:to-b/exact", "to-b", "exact", smart_hosts=("mx.b.example",)): (
            "one@b.example", "two@b2.example",
        ),
        mx_route("c.example"): ("x@c.example", "z@c.example"),
        mx_route("d.example"): ("y@d.example",),
    }  # fmt: skip
    assert [(route, outcome.recipient) for route, outcome in plan.settled] == [(NOWHERE, "bad@[192.0.2.1]")]


# --- TLS policy per TlsSettings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tls", "domain", "policy"),
    [
        (None, None, TlsPolicy(TlsLevel.OPPORTUNISTIC)),
        (TlsSettings.ENCRYPTION_ONLY, None, TlsPolicy(TlsLevel.ENCRYPT)),
        (TlsSettings.CERTIFICATE_VALIDATION, None, TlsPolicy(TlsLevel.VERIFY)),
        (TlsSettings.DOMAIN_VALIDATION, "*.b.example", TlsPolicy(TlsLevel.VERIFY, name_check=True, name="*.b.example")),
        # DomainValidation without TlsDomain: the name of the host connected to
        (TlsSettings.DOMAIN_VALIDATION, None, TlsPolicy(TlsLevel.VERIFY, name_check=True, name=None)),
        (TlsSettings.DOMAIN_VALIDATION, "", TlsPolicy(TlsLevel.VERIFY, name_check=True, name=None)),
    ],
)
def test_tls_policy_follows_tls_settings(tls: TlsSettings | None, domain: str | None, policy: TlsPolicy) -> None:
    connector = OutboundConnector("c", smart_hosts=("h.example",), tls_settings=tls, tls_domain=domain)
    assert tls_policy(connector) == policy
    assert policy.required is (tls is not None)


# --- the message as a whole -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [b"\x00", b"a\rb", b"a\nb"])
def test_rd02_content_with_nul_a_bare_cr_or_a_bare_lf_is_not_forwarded(bad: bytes) -> None:
    refusal = message_refusal("alice@contoso.com", b"Subject: x\r\n\r\n" + bad + b"\r\n")
    assert refusal is not None and refusal.startswith("554 5.6.0 ")


def test_rd41_more_than_50_received_lines_in_the_header_is_a_loop() -> None:
    received = b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    body = b"\r\n" + received * 80  # Received lines in the body do not count
    assert hops(received * 50 + body) == 50
    assert message_refusal("alice@contoso.com", received * 50 + body) is None
    assert message_refusal("alice@contoso.com", received * 51 + body) == "554 5.4.6 Too many hops: mail loop detected"
    assert hops(b"RECEIVED: x\r\nX-Received: y\r\n") == 1  # case-insensitive, and only the field itself


def test_an_unsendable_sender_refuses_the_message_and_the_null_sender_does_not() -> None:
    refusal = message_refusal('"a\rx <v@evil.example>"@contoso.com', CLEAN)
    assert refusal is not None and refusal.startswith("553 5.1.3 The sender address ")
    assert message_refusal("", CLEAN) is None
    assert message_refusal("alice@contoso.com", CLEAN) is None


# --- hosts and addresses ----------------------------------------------------------------------------------------


def test_smart_hosts_are_tried_in_order_a_before_aaaa_and_literals_need_no_dns() -> None:
    route = smart_route("mx.b.example", "192.0.2.7")
    done = drive(attempt(route), host("mx.b.example", "2001:db8::1", "203.0.113.5"), deferred)
    assert done.questions == [Question("mx.b.example", "A"), Question("mx.b.example", "AAAA")]
    assert [(c.host, c.ip) for c in done.connects] == [
        ("mx.b.example", "203.0.113.5"), ("mx.b.example", "2001:db8::1"), ("192.0.2.7", "192.0.2.7"),
    ]  # fmt: skip


def test_a_smart_host_range_is_tried_address_by_address_up_to_256() -> None:
    route = smart_route("10.0.0.0/8")
    done = drive(attempt(route, address_limit=1000), {}, deferred)
    assert [c.ip for c in done.connects[:2]] == ["10.0.0.1", "10.0.0.2"]
    assert len(done.connects) == 256


def test_mx_hosts_go_by_preference_with_equal_preferences_shuffled() -> None:
    mx = answer("b.example", "MX", "20 backup.b.example.", "10 one.b.example.", "10 two.b.example.")
    dns_answers: dict[tuple[str, str], Answer | DnsError] = {("b.example", "MX"): mx}
    for name, ip in (("one", "203.0.113.1"), ("two", "203.0.113.2"), ("backup", "203.0.113.3")):
        dns_answers |= host(f"{name}.b.example", ip)
    orders = set()
    for seed in range(20):
        done = drive(attempt(mx_route(), seed=seed), dns_answers, deferred)
        orders.add(tuple(c.host for c in done.connects))
    # DNS-14: both orders of the equal pair occur; the backup is always last (and names lose their final dot)
    assert orders == {
        ("one.b.example", "two.b.example", "backup.b.example"),
        ("two.b.example", "one.b.example", "backup.b.example"),
    }


def test_only_mx_hosts_better_than_this_host_are_used_and_its_own_best_mx_is_a_loop() -> None:
    dns_answers = {
        ("b.example", "MX"): answer("b.example", "MX", "10 better.b.example.", "20 RELAY.test.", "30 worse.b.example."),
        **host("better.b.example", "203.0.113.1"),
    }
    done = drive(attempt(mx_route()), dns_answers)
    assert [c.host for c in done.connects] == ["better.b.example"]  # DNS-15

    own_best = {("b.example", "MX"): answer("b.example", "MX", "10 relay.test.", "20 worse.b.example.")}
    done = drive(attempt(mx_route()), own_best)
    assert done.connects == []
    assert done.outcomes["user@b.example"] == Outcome(
        "user@b.example", Result.FAILED, "554 5.4.6 Mail for b.example loops back to myself (relay.test is its best MX)"
    )


def test_at_most_100_mx_hosts_are_considered() -> None:
    records = [f"{n} mx{n}.b.example." for n in range(150)]
    dns_answers: dict[tuple[str, str], Answer | DnsError] = {("b.example", "MX"): answer("b.example", "MX", *records)}
    for n in range(150):
        dns_answers |= host(f"mx{n}.b.example")
    done = drive(attempt(mx_route()), dns_answers)
    asked = {q.name for q in done.questions} - {"b.example"}
    assert asked == {f"mx{n}.b.example" for n in range(100)}  # DNS-10


@pytest.mark.parametrize(
    ("mx", "reply"),
    [
        (
            answer("b.example", "MX", status=DnsStatus.NXDOMAIN),
            "550 5.1.2 The domain b.example does not exist (DNS NXDOMAIN)",
        ),
        (
            answer("b.example", "MX", "0 .", "10 mx.b.example."),
            "556 5.1.10 Recipient address rejected: b.example does not accept mail (null MX)",
        ),
    ],
    ids=["nxdomain", "null-mx"],
)
def test_a_domain_that_takes_no_mail_fails_without_any_further_question(mx: Answer, reply: str) -> None:
    done = drive(attempt(mx_route()), {("b.example", "MX"): mx})
    assert done.questions == [Question("b.example", "MX")] and done.connects == []
    assert done.outcomes["user@b.example"] == Outcome("user@b.example", Result.FAILED, reply)


def test_no_mx_means_the_domain_itself_is_the_mx() -> None:
    dns_answers = {("b.example", "MX"): answer("b.example", "MX"), **host("b.example", "203.0.113.9")}
    done = drive(attempt(mx_route()), dns_answers)
    assert [(c.host, c.ip) for c in done.connects] == [("b.example", "203.0.113.9")]  # DNS-02
    assert done.outcomes["user@b.example"].result is Result.DELIVERED


def test_an_mx_lookup_that_failed_defers_and_never_falls_back_to_the_a_record() -> None:
    done = drive(attempt(mx_route()), {("b.example", "MX"): DnsTimeoutError("no answer within 5 s")})
    assert done.questions == [Question("b.example", "MX")]  # DNS-03
    assert done.outcomes["user@b.example"] == Outcome(
        "user@b.example",
        Result.DEFERRED,
        "450 4.4.312 DNS query failed [Message=MX of b.example: no answer within 5 s]",
    )


# --- no address ----------------------------------------------------------------------------------------------


def test_mx_hosts_without_addresses_fail_the_recipient() -> None:
    dns_answers = {
        ("b.example", "MX"): answer("b.example", "MX", "10 one.b.example.", "20 two.b.example."),
        **host("one.b.example"),
        **host("two.b.example"),
    }
    done = drive(attempt(mx_route()), dns_answers)
    outcome = done.outcomes["user@b.example"]
    assert outcome == Outcome("user@b.example", Result.FAILED, "550 5.4.4 two.b.example has no address (A or AAAA)")
    assert status_code(outcome.reply) == "5.4.4"  # the bounce's Status (RFC 3463: unable to route)


def test_non_public_addresses_are_dropped_unless_allowed() -> None:
    dns_answers = {
        ("b.example", "MX"): answer("b.example", "MX", "10 in.b.example."),
        **host("in.b.example", "10.1.2.3"),
    }
    done = drive(attempt(mx_route(), allow_private=False), dns_answers)
    assert done.connects == []
    assert done.outcomes["user@b.example"] == Outcome(
        "user@b.example", Result.FAILED, "550 5.4.4 in.b.example has no public address (10.1.2.3); not used"
    )
    allowed = drive(attempt(mx_route(), allow_private=True), dns_answers)
    assert [c.ip for c in allowed.connects] == ["10.1.2.3"]
    # Beside a public address, a private one is left out
    mixed = {**dns_answers, **host("in.b.example", "10.1.2.3", "192.0.3.1", "fd00::1")}
    done = drive(attempt(mx_route(), allow_private=False), mixed, deferred)
    assert [c.ip for c in done.connects] == ["192.0.3.1"]


@pytest.mark.parametrize("target", ["bad_name.b.example", "192.0.2.1"])
def test_an_mx_target_that_is_not_a_host_name_is_not_looked_up(target: str) -> None:
    done = drive(attempt(mx_route()), {("b.example", "MX"): answer("b.example", "MX", f"10 {target}.")})
    assert done.questions == [Question("b.example", "MX")]  # DNS-06, DNS-12
    assert done.outcomes["user@b.example"] == Outcome(
        "user@b.example", Result.FAILED, f"554 5.4.4 {target} is not a valid host name; not used"
    )


def test_a_failed_address_lookup_defers_when_no_host_had_an_address() -> None:
    dns_answers: dict[tuple[str, str], Answer | DnsError] = {
        ("b.example", "MX"): answer("b.example", "MX", "10 one.b.example.", "20 two.b.example."),
        ("one.b.example", "A"): DnsError("SERVFAIL"),
        ("one.b.example", "AAAA"): answer("one.b.example", "AAAA"),
        **host("two.b.example"),
    }
    done = drive(attempt(mx_route()), dns_answers)
    assert done.outcomes["user@b.example"] == Outcome(
        "user@b.example", Result.DEFERRED, "450 4.4.312 DNS query failed [Message=one.b.example A: SERVFAIL]"
    )


def test_a_failed_a_lookup_does_not_lose_the_aaaa_addresses() -> None:
    dns_answers: dict[tuple[str, str], Answer | DnsError] = {
        ("b.example", "MX"): answer("b.example", "MX", "10 one.b.example."),
        ("one.b.example", "A"): DnsError("SERVFAIL"),
        ("one.b.example", "AAAA"): answer("one.b.example", "AAAA", "2001:db8::5"),
    }
    done = drive(attempt(mx_route()), dns_answers)
    assert [c.ip for c in done.connects] == ["2001:db8::5"]


def test_a_smart_host_without_an_address_is_the_clouds_resolve_failure_and_retried() -> None:
    done = drive(attempt(smart_route("mx.b.example")), host("mx.b.example"))
    assert done.outcomes["user@b.example"] == Outcome(
        "user@b.example", Result.DEFERRED,
        "450 4.4.312 DNS query failed [Message=550 5.4.4 mx.b.example has no address (A or AAAA)]",
    )  # fmt: skip


def test_a_connector_without_smart_hosts_defers() -> None:
    done = drive(attempt(smart_route()), {})
    assert done.outcomes["user@b.example"] == Outcome(
        "user@b.example", Result.DEFERRED, "451 4.3.5 Connector 'to-b' has no SmartHosts"
    )


# --- sessions within one attempt ---------------------------------------------------------------------------------


def test_recipients_an_address_did_not_settle_go_on_to_the_next() -> None:
    def first_refuses_one(to: Connect) -> SessionResult:
        if to.ip == "203.0.113.1":
            decided = (Outcome("a@b.example", Result.FAILED, "550 5.1.1 no such user", "one[203.0.113.1]"),)
            return SessionResult(decided, {"b@b.example": "451 4.3.0 later", "c@b.example": "451 4.3.0 later"})
        return delivered(to)

    route = smart_route("203.0.113.1", "203.0.113.2")
    done = drive(attempt(route, "a@b.example", "b@b.example", "c@b.example"), {}, first_refuses_one)
    assert [c.recipients for c in done.connects] == [
        ("a@b.example", "b@b.example", "c@b.example"), ("b@b.example", "c@b.example"),
    ]  # fmt: skip
    assert {r: o.result for r, o in done.outcomes.items()} == {
        "a@b.example": Result.FAILED, "b@b.example": Result.DELIVERED, "c@b.example": Result.DELIVERED,
    }  # fmt: skip


def test_rd42_at_most_the_address_limit_is_tried_and_the_last_reply_is_kept() -> None:
    route = smart_route(*(f"203.0.113.{n}" for n in range(1, 9)))
    done = drive(attempt(route, address_limit=3), {}, deferred)
    assert [c.ip for c in done.connects] == ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
    assert done.outcomes["user@b.example"] == Outcome(
        "user@b.example", Result.DEFERRED, "450 4.2.0 busy at 203.0.113.3", "203.0.113.3[203.0.113.3]"
    )


def test_rd32_an_unknown_outcome_stops_the_attempt() -> None:
    def broke_after_the_dot(to: Connect) -> SessionResult:
        return SessionResult((), dict.fromkeys(to.recipients, "451 4.4.318 outcome unknown"), stop=True)

    done = drive(attempt(smart_route("203.0.113.1", "203.0.113.2")), {}, broke_after_the_dot)
    assert [c.ip for c in done.connects] == ["203.0.113.1"]
    assert done.outcomes["user@b.example"].result is Result.DEFERRED


def test_rd21_a_failed_opportunistic_handshake_is_retried_once_in_plain_text_beyond_the_limit() -> None:
    def tls_fails(to: Connect) -> SessionResult:
        if to.plaintext:
            return deferred(to)
        return SessionResult((), dict.fromkeys(to.recipients, "450 4.4.317 TLS negotiation failed"), plaintext=True)

    done = drive(attempt(smart_route("203.0.113.1", "203.0.113.2"), address_limit=1), {}, tls_fails)
    assert [(c.ip, c.plaintext) for c in done.connects] == [("203.0.113.1", False), ("203.0.113.1", True)]


def test_later_hosts_are_not_looked_up_once_everyone_is_settled() -> None:
    dns_answers = {
        ("b.example", "MX"): answer("b.example", "MX", "10 one.b.example.", "20 two.b.example."),
        **host("one.b.example", "203.0.113.1"),
    }
    done = drive(attempt(mx_route()), dns_answers)  # two.b.example is not in the table: asking would fail
    assert [q.name for q in done.questions] == ["b.example", "one.b.example", "one.b.example"]


def test_the_attempt_refuses_replies_out_of_turn() -> None:
    pending = attempt(mx_route())
    assert pending.step() == Question("b.example", "MX")
    with pytest.raises(RuntimeError):
        pending.connected(SessionResult((), {}))
    with pytest.raises(RuntimeError):
        _ = pending.outcomes
    connecting = attempt(smart_route("203.0.113.1"))
    assert isinstance(connecting.step(), Connect)
    with pytest.raises(RuntimeError):
        connecting.answer(answer("x", "A"))
