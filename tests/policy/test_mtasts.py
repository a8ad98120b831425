"""MTA-STS (RFC 8461): the TXT record (DNS-20), the policy file, §4.1 pattern matching and MX coverage, the
§3.3 rules for the fetched answer, and the fetch itself through a real DNS server and HTTPS server on loopback."""

from __future__ import annotations

import asyncio
import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from diag.lab.dns import DnsServer, ZoneData
from diag.lab.pki import TestPKI
from diag.net.dns import Nameserver, Resolver
from diag.net.https import FetchError, HttpsFacts, client_context
from diag.policy.lookup import ReplyStatus
from diag.policy.mtasts import (
    FetchProblem,
    MxCoverage,
    PolicyIssueKind,
    StsMode,
    TxtStatus,
    coverage,
    discover_txt,
    fetch_policy,
    judge_fetch,
    mx_matches,
    parse_policy,
    parse_txt,
)

from .conftest import Zone

GOOD = b"version: STSv1\r\nmode: enforce\r\nmx: mail.contoso.test\r\nmx: *.backup.contoso.test\r\nmax_age: 604800\r\n"


# --- the TXT record ------------------------------------------------------------------------------------------


def test_one_valid_record_is_found(zone: Zone) -> None:
    zone.add("_mta-sts.contoso.test", "TXT", "v=STSv1; id=20260101T000000", "some-other=thing")
    facts = zone.run(discover_txt("Contoso.test."))
    assert facts.status is TxtStatus.FOUND and facts.record is not None and facts.record.id == "20260101T000000"


@pytest.mark.parametrize(
    ("records", "status"),
    [
        ((), TxtStatus.NONE),
        (("v=STSv2; id=1",), TxtStatus.NONE),  # DNS-20: a non-STSv1 record alone means no MTA-STS
        (("v=STSv1; id=1", "v=STSv1; id=2"), TxtStatus.MULTIPLE),  # DNS-20: two records mean no MTA-STS
        (("v=STSv1; id=not-alnum!",), TxtStatus.INVALID),
        (("v=STSv1; id=" + "a" * 33,), TxtStatus.INVALID),
        (("v=STSv1;",), TxtStatus.INVALID),
    ],
)
def test_anything_but_exactly_one_valid_record_means_no_mta_sts(
    zone: Zone, records: tuple[str, ...], status: TxtStatus
) -> None:
    if records:
        zone.add("_mta-sts.contoso.test", "TXT", *records)
    assert zone.run(discover_txt("contoso.test")).status is status


def test_no_answer_is_a_dns_error(zone: Zone) -> None:
    zone.fail("_mta-sts.contoso.test", "TXT", ReplyStatus.TIMEOUT)
    assert zone.run(discover_txt("contoso.test")).status is TxtStatus.DNS_ERROR


def test_record_issues_are_listed() -> None:
    assert parse_txt("v=STSv1; id=abc; ext=1").valid
    assert parse_txt("v=STSv1").issues == ("the required id field is missing",)


# --- the policy ----------------------------------------------------------------------------------------------


def test_a_policy_is_read_with_lf_or_crlf_lines() -> None:
    for body in (GOOD, GOOD.replace(b"\r\n", b"\n")):
        policy = parse_policy(body)
        assert (policy.version, policy.mode, policy.max_age, policy.valid) == ("STSv1", StsMode.ENFORCE, 604800, True)
        assert policy.mx == ("mail.contoso.test", "*.backup.contoso.test")


def test_mode_none_needs_no_mx_and_unknown_fields_are_ignored() -> None:
    policy = parse_policy(b"version: STSv1\nmode: none\nmax_age: 0\nfuture: field\n")
    assert (policy.mode, policy.max_age, policy.valid) == (StsMode.NONE, 0, True)


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"mode: enforce\nmx: a.example\nmax_age: 1\n", PolicyIssueKind.VERSION),
        (b"version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", PolicyIssueKind.VERSION),
        (b"version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n", PolicyIssueKind.MODE),
        (b"version: STSv1\nmode: enforce\nmx: a.example\n", PolicyIssueKind.MAX_AGE),
        (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n", PolicyIssueKind.MAX_AGE),
        (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", PolicyIssueKind.MAX_AGE),
        (b"version: STSv1\nmode: testing\nmax_age: 86400\n", PolicyIssueKind.NO_MX),
        (b"version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n", PolicyIssueKind.BAD_MX),
        (b"version: STSv1\nmode: enforce\nmode: none\nmx: a.example\nmax_age: 1\n", PolicyIssueKind.DUPLICATE),
        (b"version: STSv1\nmode enforce\nmx: a.example\nmax_age: 1\n", PolicyIssueKind.BAD_LINE),
        (b"<html>\xff</html>", PolicyIssueKind.NOT_TEXT),
    ],
)
def test_an_invalid_policy_says_why(body: bytes, kind: PolicyIssueKind) -> None:
    policy = parse_policy(body)
    assert not policy.valid and kind in [i.kind for i in policy.issues], policy.issues


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("mail.contoso.test", "MAIL.contoso.test.", True),
        ("*.contoso.test", "mx1.contoso.test", True),
        ("*.contoso.test", "contoso.test", False),  # §4.1: the wildcard stands for one label, not none
        ("*.contoso.test", "a.b.contoso.test", False),  # nor for two
        ("mail.contoso.test", "mail.contoso.test.evil", False),
    ],
)
def test_mx_patterns_match_as_section_4_1_says(pattern: str, host: str, matches: bool) -> None:
    assert mx_matches(pattern, host) is matches


def test_coverage_names_each_mx_and_its_pattern() -> None:
    patterns = parse_policy(GOOD).mx
    hosts = ["mail.contoso.test", "mx2.backup.contoso.test", "contoso-test.mail.protection.outlook.com"]
    assert coverage(patterns, hosts) == (
        MxCoverage("mail.contoso.test", "mail.contoso.test"),
        MxCoverage("mx2.backup.contoso.test", "*.backup.contoso.test"),
        MxCoverage("contoso-test.mail.protection.outlook.com", None),
    )


@pytest.mark.parametrize(
    ("facts", "problem"),
    [
        (HttpsFacts("u", "ip", 200, "text/plain", body=GOOD), None),
        (HttpsFacts("u", "ip", error=FetchError.CERT_EXPIRED), FetchProblem.FETCH_FAILED),
        (HttpsFacts("u", "ip", 200, "text/plain", error=FetchError.TOO_LARGE), FetchProblem.FETCH_FAILED),
        (HttpsFacts("u", "ip", 301, location="https://x/"), FetchProblem.REDIRECT),
        (HttpsFacts("u", "ip", 404, "text/plain"), FetchProblem.NOT_OK),
        (HttpsFacts("u", "ip", 200, "text/html", body=GOOD), FetchProblem.NOT_TEXT_PLAIN),
        (HttpsFacts("u", "ip", 200, None, body=GOOD), FetchProblem.NOT_TEXT_PLAIN),
    ],
)
def test_the_fetched_answer_is_judged_by_section_3_3(facts: HttpsFacts, problem: FetchProblem | None) -> None:
    assert judge_fetch(facts) is problem


# --- the fetch through real servers ----------------------------------------------------------------------------


class PolicyHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        found = self.path == "/.well-known/mta-sts.txt"
        body = GOOD if found else b"no"
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def policy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    tmp = tmp_path_factory.mktemp("mtasts")
    pki = TestPKI.create()
    chain, key = pki.issue(["mta-sts.contoso.test"]).write(tmp, "leaf")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PolicyHandler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], pki.write_root(tmp / "root.pem")
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_policy_is_fetched_from_the_address_the_run_s_resolver_gives(policy_server: tuple[int, Path]) -> None:
    port, ca_file = policy_server
    data = ZoneData()
    data.add_zone("contoso.test")
    # Nothing listens on 127.0.0.2 (the server is bound to 127.0.0.1): connections there are refused
    data.add("mta-sts.contoso.test", "A", "127.0.0.2", "127.0.0.1")

    async def scenario() -> tuple[tuple[HttpsFacts, ...], tuple[HttpsFacts, ...]]:
        server = DnsServer(data)
        dns_port = await server.start("127.0.53.14")
        try:
            resolver = Resolver([Nameserver("127.0.53.14", dns_port)], timeout=5.0)
            context = client_context(ca_file)
            found = await fetch_policy("contoso.test", resolver, context=context, port=port, timeout=10.0)
            missing = await fetch_policy("nowhere.contoso.test", resolver, context=context, port=port, timeout=10.0)
            return found, missing
        finally:
            await server.close()

    (first, second), (missing,) = asyncio.run(scenario())
    # Then every address is tried, in ascending order: one refuses, the other serves the policy
    assert (first.ip, first.error) == ("127.0.0.1", None)
    assert (second.ip, second.error) == ("127.0.0.2", FetchError.REFUSED)
    assert (judge_fetch(first), first.url) == (None, f"https://mta-sts.contoso.test:{port}/.well-known/mta-sts.txt")
    assert parse_policy(first.body).mx == ("mail.contoso.test", "*.backup.contoso.test")
    assert (missing.error, missing.ip) == (FetchError.RESOLVE_FAILED, "")
