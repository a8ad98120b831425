"""The HTML report (diag.render.html): real lab runs, the hostile lab host, and a payload in every field.

security-cases.md §5: RPT-01 (autoescape everywhere), RPT-02 (no escape hatches), RPT-03 (attributes),
RPT-04 (payload corpus), RPT-05 (CSP, no script, nothing fetched).
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from diag.errors import ConfigError, LabError
from diag.lab import world
from diag.lab.runner import Lab
from diag.lab.smtp import HostKind, LabHost, TlsFiles, start_host
from diag.model import DomainReport, Report
from diag.render import html
from diag.render.html import render_document as render_html
from diag.render.json import dumps, load_report, report_dict

DOMAINS = ("contoso.com", "multi.example", "expired.example", "hostile.example", "servfail.example")
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
# Characters that must never reach the page as themselves (RPT-04): C0 but \n, DEL, C1, bidi controls,
# lone surrogates, line separators, zero-width characters.
RAW_CONTROLS = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2069\ufeff\ud800-\udfff]"
)
# The only elements the report uses; a payload that became markup shows up as another element.
OUR_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "main", "footer", "section", "article", "div",
    "p", "span", "strong", "code", "h1", "h2", "h3", "h4", "h5", "dl", "dt", "dd", "table", "thead", "tbody",
    "tr", "th", "td", "a", "ul", "ol", "li", "br", "details", "summary", "svg", "rect",
}  # fmt: skip
TEMPLATES = resources.files("report_templates")
# Elements after which a browser's innerText has a break; the tests read the page's text the same way.
BLOCKS = {"div", "p", "td", "th", "dt", "dd", "li", "br", "tr", "h1", "h2", "h3", "h4", "h5", "section", "article",
          "header", "summary", "title"}  # fmt: skip


# --- helpers ----------------------------------------------------------------------------------------------

VERDICT_ORDER = ("critical", "unknown", "warning", "ok")
VOID = {"meta", "br", "img", "link", "input", "hr", "wbr", "col", "area", "base", "embed", "source"}


def worst_first(domains: tuple[DomainReport, ...]) -> list[DomainReport]:
    return sorted(domains, key=lambda d: (VERDICT_ORDER.index(d.verdict.value), d.domain))


@dataclass
class Node:
    """An element of a parsed page, enough to ask "what is the text of the element with this id"."""

    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.attrs.get("class", "").split()

    @property
    def text(self) -> str:
        parts = [c if isinstance(c, str) else f" {c.text} " for c in self.children]
        return " ".join("".join(parts).split())

    def iter(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        return [n for n in self.iter() if (tag is None or n.tag == tag) and (cls is None or cls in n.classes)]

    def by_id(self, anchor: str) -> Node:
        (found,) = [n for n in self.iter() if n.attrs.get("id") == anchor]
        return found


class Tree(HTMLParser):
    """The page as a tree of :class:`Node`."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {name: value or "" for name, value in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        if tag not in VOID:
            assert self.stack[-1].tag == tag, (self.stack[-1].tag, tag)
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def tree(page: str) -> Node:
    return Tree(page).root


@pytest.fixture(scope="module")
def report(lab_domains: Callable[..., Report]) -> Report:
    """A few domains of the session's lab run (tests/conftest.py)."""
    return lab_domains(*DOMAINS)


@pytest.fixture(scope="module")
def page(report: Report) -> str:
    return render_html(report_dict(report))


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text, of a page."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))
        if tag in BLOCKS:
            self.text.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in BLOCKS:
            self.text.append(" ")

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def words(self) -> str:
        """The text with whitespace runs as one space."""
        return " ".join("".join(self.text).split())


# Ids come from counters and fixed strings only (RPT-03), and every link points at one of them.
ANCHOR = r"domain-\d+(-check-\d+(-finding-\d+)?)?"
IDS = re.compile(rf"{ANCHOR}|domain-\d+-title|(problems|overview)-title")


def assert_inert(page: str, *, payload: str | None = None) -> Elements:
    """The page has only our elements and attributes; no payload became markup or an attribute; every link
    points at an element of the page."""
    assert not RAW_CONTROLS.search(page), repr(RAW_CONTROLS.search(page))
    parsed = Elements(page)
    ids = [attrs["id"] for _, attrs in parsed.tags if "id" in attrs]
    assert len(ids) == len(set(ids)), "an id is used twice"
    for tag, attrs in parsed.tags:
        assert tag in OUR_TAGS, f"unexpected element <{tag}>"
        for name, value in attrs.items():
            assert not name.startswith("on"), f"event attribute {name} on <{tag}>"
            assert name not in ("src", "style", "srcdoc", "action", "formaction", "background"), (tag, name)
            if name == "href":
                assert re.fullmatch(f"#{ANCHOR}", value), value
                assert value[1:] in ids, f"{value} points at nothing"
            if name == "id":
                assert IDS.fullmatch(value), value
            if payload is not None and len(payload) > 3:
                assert payload not in value, f"payload in {tag} {name}"
    metas = [attrs for tag, attrs in parsed.tags if tag == "meta" and attrs.get("http-equiv")]
    assert [m["http-equiv"] for m in metas] == ["Content-Security-Policy"]
    assert metas[0]["content"].startswith(CSP)
    lowered = page.lower()
    for forbidden in ("<script", "<img", "<iframe", "<object", "<embed", "<link", "<base", "url(", "@import"):
        assert forbidden not in lowered, forbidden
    return parsed


def poison(value: Any, payload: str, keep: tuple[str, ...] = ("schema",)) -> Any:
    """``value`` with every string in it replaced by ``payload``, except the values of the keys in ``keep``
    (the schema name, so it renders)."""
    if isinstance(value, dict):
        return {k: (v if k in keep else poison(v, payload, keep)) for k, v in value.items()}
    if isinstance(value, list):
        return [poison(v, payload, keep) for v in value]
    if isinstance(value, str):
        return payload
    return value


def session(ip: str, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ip": ip, "port": 25, "server_name": "mx.example.com", "reached": "done", "error": None, "detail": "",
        "connect_s": 0.1, "banner_s": 0.1, "ehlo_s": 0.1, "tls_s": 0.1, "greeting_code": 220,
        "greeting": "mx.example.com ESMTP", "ehlo_code": 250, "extensions": ["PIPELINING", "STARTTLS"],
        "helo_fallback": False, "starttls_offered": True, "starttls_code": 220, "starttls_reply": "Ready",
        "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "server_name": "mx.example.com"},
        "tls_extensions": ["PIPELINING"], "transcript": ["S: 220 mx.example.com ESMTP", "C: EHLO probe"],
    }  # fmt: skip
    base.update(changes)
    return base


def certificate(not_after: str, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "subject": "CN=mx.example.com", "issuer": "CN=Example CA", "common_names": ["mx.example.com"],
        "dns_names": ["mx.example.com", "*.example.com"], "not_before": "2026-01-01T00:00:00Z",
        "not_after": not_after, "key_type": "RSA", "key_bits": 2048, "signature_hash": "sha256",
        "sha256": "ab" * 32, "self_issued": False, "pem": "-----BEGIN CERTIFICATE-----",
    }  # fmt: skip
    base.update(changes)
    return base


def finding(code: str, severity: str, subject: str = "mx.example.com [192.0.2.1]:25") -> dict[str, Any]:
    return {
        "code": code, "severity": severity, "subject": subject, "message": f"{code} on {subject}.",
        "remediation": "Do something.", "cloud_error": "450 4.4.317 Cannot connect to remote server",
    }  # fmt: skip


def check(check_id: str, facts: dict[str, Any], *findings: dict[str, Any], **changes: Any) -> dict[str, Any]:
    base = {
        "id": check_id, "title": check_id.title(), "status": "completed", "reason": None, "duration_ms": 5,
        "facts": facts, "findings": list(findings),
    }  # fmt: skip
    base.update(changes)
    return base


def decision(connector: str | None, rule: str, order: str = "most-specific") -> dict[str, Any]:
    body = None
    if connector is not None:
        body = {
            "name": connector, "smart_hosts": ["smtp.example.com"], "use_mx_record": False,
            "tls_settings": "DomainValidation", "tls_domain": "*.example.com",
        }  # fmt: skip
    return {
        "domain": "example.com", "order": order, "connector": body, "rule": rule, "pattern": "example.com",
        "tied_with": ["Connector Z"], "transport_rule_connector": "Connector T", "transport_rule_issue": "disabled",
    }  # fmt: skip


def synthetic() -> dict[str, Any]:
    """A document with every kind of fact the report shows, the hops of a future end-to-end check included."""
    chain = [
        certificate("2026-12-06T12:00:00Z"),
        certificate("2030-01-01T00:00:00Z", subject="CN=Example CA", self_issued=True, dns_names=[]),
    ]
    facts: dict[str, dict[str, Any]] = {
        "mx": {
            "domain": "example.com", "status": "ok", "null_mx": True, "implicit": True,
            "duplicates": ["dup.example.com"], "expected": [], "accepted": True,
            "hosts": [
                {"preference": 10, "name": "mx.example.com", "addresses": ["192.0.2.1", "2001:db8::1"],
                 "canonical_name": "host.example.com", "ip_literal": False, "valid_name": True},
                {"preference": 20, "name": "bad name", "addresses": [], "canonical_name": "", "ip_literal": False,
                 "valid_name": False},
                {"preference": 30, "name": "192.0.2.9", "addresses": ["192.0.2.9"], "canonical_name": "192.0.2.9",
                 "ip_literal": True, "valid_name": True},
                {"preference": 40, "name": "none.example.com", "addresses": [], "canonical_name": "",
                 "ip_literal": False, "valid_name": True},
            ],
        },
        "port25": {
            "probed": [
                {"host": "mx.example.com", "session": session("192.0.2.1")},
                {"host": "slow.example.com", "session": session("192.0.2.2", tls_s=0.5)},
                {"host": "down.example.com", "session": session(
                    "192.0.2.3", reached=None, error="refused", detail="connection refused", connect_s=None,
                    banner_s=None, ehlo_s=None, tls_s=None, tls=None, greeting_code=None, greeting="",
                )},
            ],
            "not_probed": [{"host": "far.example.com", "ip": "10.0.0.1", "why": "not a public address"}],
        },
        "certificate": {
            "certificates": [
                {"endpoint": "mx.example.com [192.0.2.1]:25", "host": "mx.example.com", "chain": chain,
                 "trust": "untrusted", "trust_detail": "unable to get local issuer certificate"},
            ],
            "checked_at": "2026-11-26T12:00:00Z", "warn_days": 30, "crit_days": 7,
        },
        "connectors": {
            "domain": "example.com",
            "accepted": {"domain_name": "example.com", "domain_type": "Authoritative"},
            "mx_at_cloud": True,
            "routing": {"decision": decision("Connector A", "exact"),
                        "alternative": decision("Connector B", "all-accepted-domains", "documented")},
            "smart_hosts": [
                {"name": "smtp.example.com", "ip": "192.0.2.5", "resolve_error": "", "session": session("192.0.2.5"),
                 "chain": chain, "trust": "trusted", "trust_detail": "", "not_probed": ""},
                {"name": "gone.example.com", "ip": None, "resolve_error": "NXDOMAIN", "session": None, "chain": [],
                 "trust": None, "trust_detail": "", "not_probed": ""},
            ],
            "inbound": {
                "cert_source": "client-cert", "cert_names": ["smtp.example.com"], "sender_ip": "192.0.2.5",
                "external_domain": "example.net",
                "relay": {"allowed": False, "reply": "550 5.7.64 TenantAttribution; Relay Access Denied",
                          "reason": "No inbound connector matches.", "inbound_connector": None, "relay": True},
            },
            "checked_at": "2026-11-26T12:00:00Z",
        },
        **policy_facts(),
        "trace": {"hops": [
            {"host": "contoso-com.mail.protection.outlook.com", "ip": "192.0.2.20",
             "tls": {"version": "TLSv1.2", "cipher": "ECDHE-RSA-AES256-GCM-SHA384"}, "connector": "Connector A",
             "delay_s": 1.5},
            {"by": "mx.example.com", "tls": False},
            "a hop given as text",
        ]},
    }  # fmt: skip
    checks = [
        check("mx", facts["mx"], finding("MX_TARGET_INVALID", "error", "bad name")),
        check("port25", facts["port25"], finding("SMTP_CONNECT_REFUSED", "error"), finding("SMTP_OK", "info")),
        check("certificate", facts["certificate"], finding("CERT_EXPIRING", "warning")),
        check("connectors", facts["connectors"], finding("ROUTE_AMBIGUOUS", "notice")),
        check("trace", facts["trace"], finding("E2E_TLS_MISSING", "critical")),
        *(check(policy, facts[policy]) for policy in ("spf", "dkim", "dmarc", "mtasts", "tlsrpt", "dane", "dnssec")),
        check("starttls", {}, status="timeout", reason="timeout: no answer within 10 s"),
    ]
    return {
        "schema": "diag.report/1",
        "tool": {"name": "diag", "version": "0.1.0"},
        "started_at": "2026-11-26T12:00:00Z",
        "finished_at": "2026-11-26T12:00:03Z",
        "status": "critical",
        "exit_code": 2,
        "domains": [
            {"domain": "example.com", "status": "critical", "checks": checks},
            {"domain": "empty.example", "status": "unknown", "checks": []},
        ],
    }


def policy_facts() -> dict[str, dict[str, Any]]:
    """The policy checks' facts in a synthetic document: a bit of everything their views show."""
    tlsa = "3 1 1 " + "ab" * 32
    return {
        "spf": {
            "domain": "example.com",
            "analysis": {
                "domain": "example.com", "total_lookups": 2, "void_lookups": 1, "issues": [],
                "include_domains": ["_spf.example.net"],
                "root": {
                    "domain": "example.com", "via": "", "status": "found", "lookups": 2, "total_lookups": 2,
                    "record": {"text": "v=spf1 a:gone.example.com include:_spf.example.net ~all", "issues": []},
                    "void_terms": ["a:gone.example.com"], "detail": "",
                    "children": [{"domain": "_spf.example.net", "via": "include:_spf.example.net",
                                  "status": "dns-error", "record": None, "lookups": 0, "total_lookups": 0,
                                  "void_terms": [], "children": [], "detail": "timeout"}],
                },
            },
            "cloud_include": "spf.protection.outlook.com",
            "senders": [{"sender": {"ip": "192.0.2.5", "source": "--sender-ip"},
                         "verdict": {"result": "softfail", "reason": "default", "matched": None, "detail": ""}}],
        },
        "dkim": {
            "domain": "example.com", "tenant": "contoso",
            "selectors": [
                {"m365": True, "facts": {
                    "name": "selector1._domainkey.example.com", "status": "found",
                    "cname_target": "selector1-example-com._domainkey.contoso.onmicrosoft.com", "texts": [],
                    "key": {"text": "v=DKIM1; t=y; p=MIGf", "key_type": "rsa", "bits": 1024, "revoked": False,
                            "testing": True},
                }},
                {"m365": False, "facts": {"name": "s2._domainkey.example.com", "status": "no-key", "cname_target": None,
                                          "key": None, "texts": []}},
            ],
        },
        "dmarc": {
            "discovery": {
                "domain": "mail.example.com", "organizational_domain": "example.com", "status": "found",
                "found_at": "example.com", "texts": ["v=DMARC1; p=quarantine; sp=none; pct=50; adkim=s; rua=..."],
                "record": {"policy": "quarantine", "subdomain_policy": "none", "pct": 50, "adkim": "s", "aspf": "r",
                           "rua": [{"uri": "mailto:d@example.net"}], "ruf": []},
                "authorizations": [{"tag": "rua", "uri": "mailto:d@example.net", "status": "missing"}],
            },
            "psl_snapshot": "1.1.2.20261023",
        },
        "mtasts": {
            "record": {"domain": "example.com", "status": "found", "record": {"text": "v=STSv1; id=1"}},
            "fetch": {"url": "https://mta-sts.example.com/.well-known/mta-sts.txt", "ip": "192.0.2.8", "status": 200,
                      "content_type": "text/plain", "error": None, "tls_version": "TLSv1.3",
                      "body": "dmVyc2lvbjogU1RTdjEKbW9kZTogdGVzdGluZwo="},
            "policy": {"mode": "testing", "max_age": 3600, "mx": ["mx.example.com"]},
            "coverage": [{"host": "mx.example.com", "pattern": "mx.example.com"},
                         {"host": "backup.example.com", "pattern": None}],
        },
        "tlsrpt": {
            "domain": "example.com", "status": "found", "texts": ["v=TLSRPTv1; rua=ftp://x"],
            "record": {"rua": [{"uri": "ftp://x", "usable": False}],
                       "issues": [["bad-uri", "'ftp://x' is neither mailto:address nor https://host/"]]},
        },
        "dane": {
            "hosts": [{
                "host": "mx.example.com", "name": "_25._tcp.mx.example.com",
                "dnssec": {"security": "secure", "reason": "validated", "status": "ok", "records": [tlsa, "1 0 0 00"]},
                "base": "host-after-expanded", "names": ["mx.example.com", "host.hosting.example"], "signed": True,
                "expanded": {"name": "_25._tcp.host.hosting.example", "status": "nxdomain"},
                "endpoints": [
                    {"endpoint": "mx.example.com [192.0.2.1]:25", "tls": True, "matches": [
                        {"record": {"text": tlsa}, "outcome": "no-match", "position": None,
                         "detail": "the leaf does not match"}]},
                    {"endpoint": "mx.example.com [2001:db8::1]:25", "tls": False, "matches": []},
                ],
            }],
            "checked_at": "2026-11-26T12:00:00Z",
        },
        "dnssec": {
            "domain": "example.com", "method": "validated", "anchors": [""],
            "results": [{"name": "example.com", "rdtype": "MX", "security": "bogus", "reason": "expired",
                         "zone": "example.com", "status": "error", "records": [], "chain": ["", "com", "example.com"],
                         "detail": "signature expired"}],
        },
    }  # fmt: skip


# --- a real lab run ---------------------------------------------------------------------------------------


def test_a_lab_run_renders_verdicts_findings_and_evidence(report: Report, page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    parsed = assert_inert(page)
    text = parsed.words
    for domain in DOMAINS:
        assert domain in text
    # Header: the run's time and verdict; then one verdict per domain.
    assert report.finished_at.strftime("%Y-%m-%d %H:%M:%S UTC") in text
    assert "CRITICAL" in text
    badges = [a["class"] for t, a in parsed.tags if t == "span" and a.get("class", "").startswith("badge ")]
    assert badges == [f"badge verdict-{d.verdict.value}" for d in worst_first(report.domains)]
    # Findings with remediation and the cloud's error text.
    assert "CERT_EXPIRED" in text and "expired 1 day ago" in text
    assert "450 4.7.320 Certificate validation failed" in text
    assert "SMTP_CONNECT_REFUSED" in text and "Start the SMTP service" in text
    # A check that could not run says why.
    assert "Could not run: dns: no usable answer for servfail.example" in text
    # Evidence: MX table, timings, TLS, certificates, routing.
    assert "mx2.multi.example" in text and "127.0.20.18" in text
    assert sum(1 for t, a in parsed.tags if t == "svg" and a.get("class") == "bar") == 5  # not for a refusal
    assert "TLSv1.3" in text
    assert re.search(r"SHA-256 ([0-9A-F]{2}:){31}[0-9A-F]{2}", text)
    assert "Connector 2" in text and "CertificateValidation" in text and "exact match on contoso.com" in text


def test_every_payload_of_the_hostile_host_is_shown_as_inert_text(report: Report) -> None:
    hostile = next(d for d in report.domains if d.domain == "hostile.example")
    page = render_html(report_dict(Report(report.started_at, report.finished_at, (hostile,))))
    parsed = assert_inert(page)
    text = "".join(parsed.text)
    # Markup from the greeting, EHLO lines and certificate names is text, in the page's text.
    assert '<script>alert(1)</script> "><img src=x onerror=alert(1)> {{7*7}} U+202Eexe.txt \\x1b[2J\\x07' in text
    for line in ("X-ATTR ' onmouseover=alert(1) x='", "X-LINK javascript:alert(1)", "X-PWN <svg onload=window",
                 "X-TABLE </td></tr></table><h1>pwned</h1>", "X-BIDI U+202Eexe.txtU+2066",
                 "X-CTRL \\x1b[31mred\\x1b[0m\\x07\\x00", "X-TEMPLATE {{7*7}} ${7*7}"):  # fmt: skip
        assert line in text, line
    assert "CN=U+202E\\<b\\>mx.hostile.example\\</b\\>" in text
    assert "ctl\\x1b[2J\\x07.hostile.example" in text
    # The DNS name, as dnspython presents its bytes.
    assert "<svg/onload=alert`1`>" in text and "\\226\\128\\174gnp.exe\\027[2J\\007" in text
    # Never evaluated as a template, never markup: no tag carries an event handler or the payloads' tags.
    assert "{{7*7}}.hostile.example" in text and "49.hostile.example" not in text and "X-TEMPLATE 49" not in text
    # Policy records: markup and template syntax in the SPF policy's host names, controls and bidi in the others.
    assert "v=spf1 include:<script>alert(1)</script>.hostile.example a:{{7*7}}.hostile.example -all" in text
    assert "finds nothing: a:{{7*7}}.hostile.example" in text
    assert 'rua=mailto:"><svg/onload=alert(1)>@hostile.example; x-note=U+202Eexe.txt\\x1b[2J\\x07' in text
    assert "id=<b>{{7*7}}</b>\\x1b[31m" in text and "mailto:U+202E<i>tls</i>@hostile.example" in text
    assert not re.search(r"<[^>]*\bon(error|load|mouseover)\s*=", page, re.IGNORECASE)
    assert "<h1>pwned" not in page and "<svg onload" not in page and "<svg/onload" not in page


def test_the_hostile_host_really_sends_its_payloads(report: Report) -> None:
    """The lab's hostile host (diag/lab/world.py) on the wire, as the probe recorded it."""
    hostile = next(d for d in report.domains if d.domain == "hostile.example")
    mx = hostile.result("mx").facts
    assert [h.valid_name for h in mx.hosts] == [True, False]
    assert mx.hosts[1].name.startswith("<script>alert\\(1\\)</script>.")
    (probed,) = hostile.result("port25").facts.probed
    s = probed.session
    # Bytes that are not UTF-8 are recorded as visible escapes, so that every later reader gets valid text.
    assert s.greeting == world.HOSTILE_GREETING[4:].replace("\udcff\udcfe", "\\xff\\xfe")
    assert "X-CTRL \x1b[31mred\x1b[0m\x07\x00" in s.extensions and "X-BIDI \u202eexe.txt\u2066" in s.extensions
    assert "X-BYTES \\xc3( \\xff" in s.extensions
    assert s.tls is not None and s.tls.version == "TLSv1.3"
    (presented,) = hostile.result("certificate").facts.certificates
    assert presented.leaf.common_names == ("\u202e<b>mx.hostile.example</b>",)
    assert presented.leaf.dns_names == world.HOSTILE_CERT_NAMES[1:]
    assert [f.code for f in hostile.result("certificate").findings] == ["CERT_OK"]


# --- the lab's scripted GREETING host with STARTTLS ---------------------------------------------------------


@pytest.mark.parametrize("pipelined", [b"", b"EHLO injected\r\n"], ids=["alone", "pipelined"])
def test_a_greeting_host_with_tls_upgrades_and_drops_pipelined_plaintext(lab: Lab, pipelined: bytes) -> None:
    async def main() -> None:
        reader, writer = await asyncio.open_connection("127.0.20.26", lab.smtp_port)
        try:
            greeting = await asyncio.wait_for(reader.readline(), 5)
            assert greeting == world.HOSTILE_GREETING.encode("utf-8", "surrogateescape") + b"\r\n"
            # A command pipelined after STARTTLS (CVE-2011-0411) must not be answered, in plaintext or after TLS;
            # the first command after the handshake must be answered encrypted, however fast it comes.
            writer.write(b"STARTTLS\r\n" + pipelined)
            assert await asyncio.wait_for(reader.readline(), 5) == b"220 2.0.0 Ready to start TLS\r\n"
            context = ssl.create_default_context(cafile=lab.ca_file)
            await asyncio.wait_for(writer.start_tls(context, server_hostname="mx.hostile.example"), 5)
            writer.write(b"EHLO probe.example\r\n")
            lines = [await asyncio.wait_for(reader.readline(), 5) for _ in world.HOSTILE_EHLO.split("\r\n")]
            assert b"".join(lines) == world.HOSTILE_EHLO.encode("utf-8", "surrogateescape") + b"\r\n"
            writer.write(b"QUIT\r\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"221 2.0.0 Bye\r\n"
        finally:
            writer.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    "host",
    [
        LabHost("g.example", "127.0.77.90", kind=HostKind.GREETING, greeting="220 g",
                script=(("EHLO", "250-g\n250 injected"),)),
        LabHost("g.example", "127.0.77.90", kind=HostKind.GREETING, greeting="220 g", script=(("EHLO", "hello"),)),
        LabHost("t.example", "127.0.77.90", kind=HostKind.TARPIT, tls=TlsFiles(Path("c.pem"), Path("k.pem"))),
        LabHost("g.example", "127.0.77.90", kind=HostKind.GREETING, greeting="220 a\rb"),
    ],
)  # fmt: skip
def test_scripted_replies_must_keep_their_line_framing(tmp_path: Path, host: LabHost) -> None:
    with pytest.raises(LabError):
        asyncio.run(start_host(host, 0, maildir=tmp_path))


# --- templates and payload corpus (RPT-01 ... RPT-05) ------------------------------------------------------

PAYLOADS = [
    "<script>window.__pwned=1</script>",
    '"><img src=x onerror=alert(1)>',
    "' onmouseover=alert(1) x='",
    "javascript:alert(1)",
    "</td></tr></table></dl></div><p>",
    "{{7*7}}{% raw %}${7*7}",
    "<svg/onload=alert`1`>",
    "a\x00b\r\nc\x1b[2J\x07d\x9b",
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200b\u2028\ufeff",
    "bad utf-8 \udcff\udc80 and a lone \ud800",
    "<" + "A" * 32 * 1024 + ">",
]


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: repr(p[:24]))
def test_every_field_of_every_template_carries_a_payload_inertly(payload: str) -> None:
    env = html._environment()
    loaded: list[str] = []
    assert env.loader is not None
    get_source = env.loader.get_source

    def recording(environment: Any, name: str) -> Any:
        loaded.append(name)
        return get_source(environment, name)

    env.loader.get_source = recording  # type: ignore[method-assign,assignment]
    document = poison(synthetic(), payload)
    page = html._render(env, document)
    assert render_html(document) == page
    assert_inert(page, payload=payload)
    # Every template file was used.
    shipped = {p.name for p in TEMPLATES.iterdir() if p.name.endswith((".j2", ".css"))}
    assert set(loaded) == shipped
    page.encode("utf-8")  # lone surrogates would not even encode
    if payload.startswith("<A"):
        assert "more characters)" in page and len(page) < 2_000_000
    if "{{7*7}}" in payload:
        assert "{{7*7}}" in page
    # With check ids, severities and statuses kept, the evidence, the problems and the failing facts beside a
    # chain carry the payload too (fully poisoned, no check is known, every finding is "info", every check "error").
    document = poison(synthetic(), payload, keep=("schema", "id", "severity", "status", "trust"))
    page = render_html(document)
    parsed = assert_inert(page, payload=payload)
    root = tree(page)
    assert [r.severity for r in problem_rows(root)] == ["critical", "error", "error", "unknown", "warning"]
    assert root.all("a", "failing")
    if 3 < len(payload) < 1000 and payload.isprintable() and payload.isascii():  # longer ones are cut
        assert payload in "".join(parsed.text)


def test_a_synthetic_report_shows_every_kind_of_evidence() -> None:
    page = render_html(synthetic())
    text = assert_inert(page).words
    # Severity counts, a check that timed out with its reason, remediation and cloud error.
    assert "1 critical 2 error 1 warning 1 notice 1 info" in text
    assert "Could not run: timeout: no answer within 10 s" in text
    assert "The cloud says: 450 4.4.317 Cannot connect to remote server" in text
    # MX notes.
    assert "null MX" in text and "implicit MX" in text and "Listed more than once: dup.example.com" in text
    assert "alias (CNAME) for host.example.com" in text and "not a valid host name" in text
    assert "an IP address, not a host name" in text and "no A/AAAA record" in text
    # Certificates: days left against the run's finish (2026-11-26T12:00:03Z), fingerprint, key.
    assert "10 days left" in text and "1131 days left" in text and "RSA 2048 bits, signed with SHA256" in text
    assert ("AB:" * 32)[:-1] in text and "chain untrusted" in text and "root (sent by the server)" in text
    # Routing: both readings, tie, transport rule, smart hosts, inbound.
    assert "Connector A" in text and "Connector B" in text and "routing order documented" in text
    assert "tied with Connector Z" in text and "a transport rule names Connector T (disabled: not used)" in text
    assert "gone.example.com" in text and "not resolved" in text
    assert "refused: 550 5.7.64 TenantAttribution; Relay Access Denied" in text
    # Hops of an end-to-end check.
    assert "Path of the message: Trace" in text  # a check this diag does not know, with hops in its facts
    assert "contoso-com.mail.protection.outlook.com [192.0.2.20] TLS TLSv1.2" in text
    assert "connector Connector A" in text and "delay_s: 1.5" in text and "a hop given as text" in text
    # Not probed addresses; a domain without checks.
    assert "far.example.com [10.0.0.1]: not a public address" in text
    assert "empty.example" in text
    # The policy section: SPF counts, tree and senders; DKIM keys; DMARC; MTA-STS; TLS-RPT; DANE; DNSSEC.
    for words in (
        "Mail authentication and transport policy",
        "DNS lookups 2 of 10", "Void lookups 1 of 2", "Cloud include spf.protection.outlook.com missing",
        "finds nothing: a:gone.example.com", "include:_spf.example.net _spf.example.net no answer from DNS",
        "192.0.2.5 --sender-ip softfail default",
        "RSA, 1024 bits; testing (t=y)", "s2._domainkey.example.com DkimSelectors \N{EN DASH} no key record",
        "_dmarc.example.com (the organizational domain's record applies)", "Policy (p) quarantine",
        "Subdomains (sp) none", "Applied to (pct) 50 %", "DKIM strict, SPF relaxed",
        "mailto:d@example.net not authorized by the receiving domain: no reports",
        "Mode testing", "max_age 3600 s (1 h)", "backup.example.com no mx pattern: reported only", "mode: testing",
        "bad-uri: 'ftp://x' is neither mailto:address nor https://host/", "ftp://x not usable",
        "DANE-EE, public key, SHA-256",
        "PKIX-EE, full certificate, exact not usable: usage 1 (PKIX-EE) is not for SMTP",
        "no record matches: 3 1 1 abab", "[2001:db8::1]:25 no TLS: DANE senders do not deliver",
        "mx.example.com: an alias for host.hosting.example, every link validated; no TLSA records at "
        "_25._tcp.host.hosting.example (nxdomain), so the host name's count (RFC 7672 §2.2.2); in a signed zone",
        "Names a DANE-TA certificate may carry: mx.example.com, host.hosting.example",
        "example.com MX bogus expired; signature expired; zone example.com chain: . → com → example.com",
        "validated by diag from the trust anchors of: .",
    ):  # fmt: skip
        assert words in text, words


# --- the policy section (issue 14) ---------------------------------------------------------------------------

POLICY_DOMAINS = ("contoso.com", "spflookups.example", "dmarcnone.example", "stsnotcovering.example", "dane.example",
                  "danebad.example", "unsigned.example", "badsig.example", "cnamesigned.example")  # fmt: skip


def policy_part(root: Node, domain: str) -> Node:
    (section,) = [s for s in root.all("section", "domain") if s.all("h2")[0].text == domain]
    (part,) = section.all("details", "evidence-policy")
    return part


def test_the_policy_section_shows_each_domains_policy(lab_domains: Callable[..., Report]) -> None:
    # Given the lab's policy domains, then each domain's policy section shows
    page = render_html(report_dict(lab_domains(*POLICY_DOMAINS)))
    assert_inert(page)
    root = tree(page)
    text = {domain: policy_part(root, domain).text for domain in POLICY_DOMAINS}
    # the SPF policy tree with its lookup count (the domain's record and its eleven includes),
    (spf, *_) = policy_part(root, "spflookups.example").all("div", "card")
    assert "DNS lookups 11 of 10" in spf.text and len(spf.all("li", "tree-node")) == 12
    assert "include:i11.spflookups.example i11.spflookups.example lookups: 0 v=spf1 -all" in spf.text
    assert "Cloud include spf.protection.outlook.com included" in text["contoso.com"]
    # the DMARC policy,
    assert "Policy (p) none" in text["dmarcnone.example"] and "Policy (p) reject" in text["contoso.com"]
    # the MTA-STS mode and which pattern covers each MX host,
    assert "Mode enforce" in text["contoso.com"]
    assert "contoso-com.mail.protection.outlook.com *.mail.protection.outlook.com" in text["contoso.com"]
    assert "mx2.multi.example no mx pattern: senders refuse it" in text["stsnotcovering.example"]
    # the DANE match per MX address,
    assert "mx.dane.example [127.0.20.30]:" in text["dane.example"]
    for match in (r"3 1 1 [0-9a-f]{64} matches the leaf", r"2 0 1 [0-9a-f]{64} matches the CA certificate at chain "
                  r"position 1"):  # in the order of the rrset, which DNS does not keep
        assert re.search(match, text["dane.example"]), match
    assert re.search(r"\[127\.0\.20\.31\]:\d+ no record matches: 3 1 1 [0-9a-f]{64}: no-match", text["danebad.example"])
    assert "DNSSEC insecure" in text["unsigned.example"]
    assert "senders ignore the records: they are not DNSSEC-validated" in text["unsigned.example"]
    assert ("mx.cnamesigned.example: an alias for mx.nsec3.example, every link validated: the CNAME-expanded name's "
            "records count first") in text["cnamesigned.example"]
    assert "_25._tcp.mx.nsec3.example" in text["cnamesigned.example"]
    # and the DNSSEC state of each answer.
    assert "badsig.example MX bogus" in text["badsig.example"]
    assert "mx2.multi.example A secure" in text["badsig.example"]
    assert "unsigned.example MX insecure" in text["unsigned.example"] and "contoso.com MX secure" in text["contoso.com"]


def test_a_check_that_does_not_apply_is_shown_as_such_not_as_could_not_run(lab_domains: Callable[..., Report]
                                                                            ) -> None:  # fmt: skip
    # Given a domain with a null MX only: port25, starttls, certificate and dane do not apply (nor dkim: it is
    # not an accepted domain; nor e2e: none of the lab's probes is sent from or to it)
    page = render_html(report_dict(lab_domains("nullmx.example")))
    parsed = assert_inert(page)
    # Then they say so, with the reason, and the domain counts no check as "not run"
    assert "Does not apply: the domain accepts no mail (null MX)" in parsed.words
    assert "Could not run" not in parsed.words
    classes = [attrs.get("class", "") for _, attrs in parsed.tags]
    assert classes.count("status status-not_applicable") == 6
    assert "num has-unknown" not in page  # the summary's "Not run" column counts none


def test_timing_bars_are_computed_in_python_and_scaled_to_the_slowest_session() -> None:
    page = render_html(synthetic())
    rects = re.findall(r'<rect class="stage stage-(\w+)" x="(\d+\.\d\d)" y="0" width="([\d.]+)"', page)
    # First session: 4 x 0.1 s of a slowest total of 0.8 s (the second session's TLS takes 0.5 s) = 260 px.
    assert rects[:4] == [("connect", "0.00", "32.50"), ("banner", "32.50", "32.50"), ("ehlo", "65.00", "32.50"),
                         ("tls", "97.50", "32.50")]  # fmt: skip
    assert rects[7] == ("tls", "97.50", "162.50")
    assert "400 ms" in page and "800 ms" in page


def test_hops_are_left_out_when_no_check_carries_them() -> None:
    document = synthetic()
    document["domains"][0]["checks"] = [c for c in document["domains"][0]["checks"] if c["id"] != "trace"]
    assert "Path of the message" not in render_html(document)


def test_templates_have_no_escape_hatches_scripts_or_remote_resources() -> None:
    """RPT-01, RPT-02, RPT-03, RPT-05: enforced on the template sources themselves."""
    sources = {p.name: p.read_text(encoding="utf-8") for p in TEMPLATES.iterdir() if p.name.endswith((".j2", ".css"))}
    assert set(sources) >= {"report.html.j2", "macros.html.j2", "report.css"}
    for name, source in sources.items():
        lowered = source.lower()
        for hatch in ("|safe", "| safe", "markup", "autoescape false", "autoescape off", "|tojson", "xmlattr"):
            assert hatch not in lowered.replace(" |", "|"), (name, hatch)
        assert "<script" not in lowered and "url(" not in lowered and "@import" not in lowered, name
        assert not re.search(r"\son\w+\s*=", lowered), name
        assert not re.search(r"\s(src|style)\s*=", lowered), name
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg\")", lowered), name
        # Attributes are always quoted: with the quoted values taken out, no tag has an "=" left.
        for tag in re.findall(r"<[a-z][^>]*>", source):
            assert "=" not in re.sub(r'=\s*"[^"]*"', "", tag), (name, tag)
    assert html._environment().autoescape is True


def test_the_checks_partials_keep_the_same_rules() -> None:
    """Each check's evidence partial (report_templates/checks/) keeps RPT-01 ... RPT-05 like the main templates."""
    partials = {p.name: p.read_text(encoding="utf-8") for p in TEMPLATES.joinpath("checks").iterdir()}
    assert set(partials) >= {"mx.html.j2", "port25.html.j2", "certificate.html.j2", "connectors.html.j2"}
    for name, source in partials.items():
        lowered = source.lower()
        for hatch in ("|safe", "| safe", "markup", "autoescape false", "autoescape off", "|tojson", "xmlattr"):
            assert hatch not in lowered.replace(" |", "|"), (name, hatch)
        assert "<script" not in lowered and "url(" not in lowered and "@import" not in lowered, name
        assert not re.search(r"\son\w+\s*=", lowered), name
        assert not re.search(r"\s(src|style)\s*=", lowered), name
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg\")", lowered), name
        assert "{% include" not in lowered and "{% extends" not in lowered, name  # RPT-07: no template by name
        for tag in re.findall(r"<[a-z][^>]*>", source):
            assert "=" not in re.sub(r'=\s*"[^"]*"', "", tag), (name, tag)


def test_rendering_twice_gives_the_same_page_and_no_state_is_kept() -> None:
    assert render_html(synthetic()) == render_html(synthetic())
    assert html._environment() is not html._environment()


# --- what to fix first (issue 10, item 5) -----------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    severity: str
    domain: str
    subject: str
    code: str
    fix: str
    target: Node


def problem_rows(root: Node) -> list[Row]:
    """The rows of the "Problems to fix" block, each with the element its code links to."""
    (block,) = root.all("section", "problems")
    rows = []
    for tr in block.all("tr", "fix"):
        severity, domain, subject, problem = tr.all("td")
        (link,) = problem.all("a", "code")
        (domain_link,) = domain.all("a")
        assert root.by_id(domain_link.attrs["href"][1:]).all("h2")[0].text == domain.text
        (fix,) = problem.all("span", "fix-text")
        rows.append(Row(severity.text, domain.text, subject.text, link.text, fix.text,
                        root.by_id(link.attrs["href"][1:])))  # fmt: skip
    return rows


def domain_order(root: Node) -> list[str]:
    return [section.all("h2")[0].text for section in root.all("section", "domain")]


def test_domains_are_sorted_worst_first_then_by_name() -> None:
    """Given domains in any order, the overview and the details list them critical, unknown, warning, ok, and
    by name within a verdict."""
    document = synthetic()
    example = document["domains"][0]
    document["domains"] = [
        {"domain": name, "status": status, "checks": [check("mx", {}, finding("MX_OK", "info", name))]}
        for name, status in [("b-ok.example", "ok"), ("z-warn.example", "warning"), ("a-ok.example", "ok"),
                             ("y-unknown.example", "unknown"), ("a-warn.example", "warning")]
    ] + [example]  # fmt: skip
    root = tree(render_html(document))
    expected = ["example.com", "y-unknown.example", "a-warn.example", "z-warn.example", "a-ok.example",
                "b-ok.example"]  # fmt: skip
    assert domain_order(root) == expected
    (overview,) = root.all("table", "summary")
    assert [row.all("td")[0].text for row in overview.all("tbody")[0].all("tr")] == expected
    # Anchors follow the page's order.
    assert [s.attrs["id"] for s in root.all("section", "domain")] == [f"domain-{n}" for n in range(1, 7)]


def test_problems_to_fix_lists_every_warning_or_worse_worst_first(report: Report, page: str) -> None:
    """Given a lab run, the block above the details names every finding of warning or worse and every check
    that could not run: worst first, then by the domain's place, then in order of appearance; each row links to
    the finding (or check) itself."""
    root = tree(page)
    assert_inert(page)
    rows = problem_rows(root)
    order = [d.domain for d in worst_first(report.domains)]
    expected = []
    for rank in ("critical", "error", "unknown", "warning"):
        for domain in worst_first(report.domains):
            for result in domain.results:
                if rank == "unknown" and result.status.value in ("error", "timeout"):
                    expected.append((rank, domain.domain, f"{result.check_id} {result.status.value}"))
                expected.extend((rank, domain.domain, f.code) for f in result.findings if f.severity.label == rank)
    assert [(r.severity, r.domain, r.code) for r in rows] == expected
    assert [r.severity for r in rows][:1] == ["critical"] and "unknown" in [r.severity for r in rows]
    assert [order.index(r.domain) for r in rows if r.severity == "error"] == sorted(
        order.index(r.domain) for r in rows if r.severity == "error"
    )
    # Each row: subject, one-line fix and the cloud's text; its link leads to the finding in the details.
    expired = next(r for r in rows if r.code == "CERT_EXPIRED")
    assert expired.domain == "expired.example" and expired.subject.startswith("mx.expired.example [127.0.20.1]:")
    assert expired.fix == "Renew the certificate and bind the new one to the receive connector."
    assert expired.target.tag == "li" and "CERT_EXPIRED" in expired.target.text
    assert expired.subject in expired.target.text
    (cell,) = [tr for tr in root.all("tr", "fix") if "CERT_EXPIRED" in tr.text]
    assert "The cloud says: 450 4.7.320 Certificate validation failed (certificate expired)" in cell.text
    # A check that could not run: "could not check" and its reason; the link leads to the check.
    (servfail,) = [r for r in rows if r.domain == "servfail.example" and r.severity == "unknown"]
    assert servfail.code == "mx error" and servfail.subject == "MX records (mx)"
    assert servfail.fix.startswith("Could not check: dns: no usable answer for servfail.example")
    assert servfail.target.tag == "article" and "Could not run: dns" in servfail.target.text
    # Its consequences (skipped checks) are not listed: the failure that explains them is.
    assert not [r for r in rows if "skipped" in r.code]
    # Info findings and OK domains are not problems.
    assert "contoso.com" not in {r.domain for r in rows}
    assert "MX_OK" not in {r.code for r in rows}


def test_a_problem_without_a_fix_shows_its_message_and_an_empty_block_says_so() -> None:
    document = synthetic()
    document["domains"][0]["checks"][2]["findings"][0]["remediation"] = ""
    rows = problem_rows(tree(render_html(document)))
    assert next(r for r in rows if r.code == "CERT_EXPIRING").fix == "CERT_EXPIRING on mx.example.com [192.0.2.1]:25."
    # The document's order of ranks: critical, error, could not run, warning.
    assert [(r.severity, r.code) for r in rows] == [
        ("critical", "E2E_TLS_MISSING"), ("error", "MX_TARGET_INVALID"), ("error", "SMTP_CONNECT_REFUSED"),
        ("unknown", "starttls timeout"), ("warning", "CERT_EXPIRING"),
    ]  # fmt: skip
    healthy = synthetic()
    healthy["domains"] = [
        {"domain": "ok.example", "status": "ok", "checks": [check("mx", {}, finding("MX_OK", "info"))]},
    ]
    root = tree(render_html(healthy))
    (block,) = root.all("section", "problems")
    assert block.all("table") == []
    assert "Nothing to fix: no finding of warning or worse, and every check ran." in block.text


def test_skipped_and_not_applicable_checks() -> None:
    """A skipped check is named only when nothing else explains a domain's verdict; a check that does not
    apply (not_applicable: port 25 of a null-MX domain) is no problem and is not counted as not run."""
    skipped = check("port25", {}, status="skipped", reason="the MX check found no address to connect to")
    not_applicable = check("starttls", {}, status="not_applicable", reason="the domain accepts no mail (null MX)")
    document = synthetic()
    document["domains"] = [
        {"domain": "skipped.example", "status": "unknown",
         "checks": [check("mx", {}, finding("MX_OK", "info")), skipped]},
        {"domain": "nullmx.example", "status": "ok",
         "checks": [check("mx", {}, finding("MX_NULL", "info")), not_applicable]},
    ]  # fmt: skip
    page = render_html(document)
    root = tree(page)
    assert_inert(page)
    rows = problem_rows(root)
    assert [(r.domain, r.code, r.fix) for r in rows] == [
        ("skipped.example", "port25 skipped", "Not checked: the MX check found no address to connect to"),
    ]
    nullmx = root.by_id("domain-2")
    assert "not applicable" in nullmx.text and "Does not apply: the domain accepts no mail (null MX)" in nullmx.text
    assert "Could not run" not in nullmx.text
    (overview,) = root.all("table", "summary")
    not_run = [row.all("td")[-1].text for row in overview.all("tbody")[0].all("tr")]
    assert not_run == ["1", "\N{EN DASH}"]


def test_ok_domains_evidence_starts_collapsed(report: Report, page: str) -> None:
    """OK domains' evidence is a closed <details> (no script needed to open it); the others' is open."""
    root = tree(page)
    for domain in report.domains:
        (section,) = [s for s in root.all("section", "domain") if s.all("h2")[0].text == domain.domain]
        evidence = section.all("details", "evidence")
        parts = [d.classes[1] for d in evidence]
        if domain.domain == "servfail.example":  # no MX answer: nothing was seen on the mail's path, only the
            assert parts == ["evidence-policy"]  # policy lookups, which failed too
        else:
            assert parts == ["evidence-mail", "evidence-policy"], domain.domain
        for part in evidence:
            assert ("open" in part.attrs) is (domain.verdict.value != "ok"), domain.domain
            # The checks stay in view either way.
            assert section.all("article", "check") and part.all("article", "check") == []
    (contoso,) = [s for s in root.all("section", "domain") if s.all("h2")[0].text == "contoso.com"]
    summary = contoso.all("details", "evidence")[0].all("summary")[0].text
    assert summary == ("Evidence nothing to fix, so collapsed: MX records, SMTP sessions, certificates, routing, "
                       "message path")  # the lab probes' paths


@pytest.fixture(scope="module")
def bad_leaves(lab_domains: Callable[..., Report]) -> Node:
    return tree(render_html(report_dict(lab_domains("contoso.com", "expired.example", "wrongname.example"))))


def presented_head(root: Node, endpoint: str) -> Node:
    """The heading line of the chain presented at ``endpoint`` (host, or host [ip]:port) in the certificates."""
    (head,) = [
        n for card in root.all("div", "presented") for n in card.all("div", "session-head")
        if n.all("span", "endpoint")[0].text.startswith(endpoint)
    ]  # fmt: skip
    return head


@pytest.mark.parametrize(
    ("host", "badge", "fact", "code"),
    [
        ("mx.expired.example", "chain trusted, but:", "leaf expired 1 day ago", "CERT_EXPIRED"),
        ("mx.wrongname.example", "chain trusted, but:", "leaf does not name mx.wrongname.example",
         "CERT_NAME_MISMATCH"),
    ],
)  # fmt: skip
def test_a_trusted_chain_is_never_shown_alone_beside_a_failing_leaf(
    bad_leaves: Node, host: str, badge: str, fact: str, code: str
) -> None:
    """Given the lab's expired and wrong-name certificates (trusted chains), the "chain trusted" badge carries
    the failing fact right beside it, in the bad style, linked to the finding."""
    head = presented_head(bad_leaves, host)
    (verdict,) = head.all("span", "outcome")
    assert verdict.text == badge and "outcome-bad" in verdict.classes
    (failing,) = head.all("a", "failing")
    assert failing.text == fact and "outcome-bad" in failing.classes
    target = bad_leaves.by_id(failing.attrs["href"][1:])
    assert target.tag == "li" and code in target.text


def test_a_healthy_chain_is_just_trusted(bad_leaves: Node) -> None:
    head = presented_head(bad_leaves, "contoso-com.mail.protection.outlook.com")
    (verdict,) = head.all("span", "outcome")
    assert verdict.text == "chain trusted" and "outcome-good" in verdict.classes
    assert head.all("a", "failing") == []


def test_failing_facts_beside_synthetic_chains() -> None:
    """Every warning-or-worse certificate finding of the address is named: a warning in the warning style, an
    untrusted chain keeps its own verdict and adds the other facts; a trusted smart host names its finding."""
    document = synthetic()
    checks = document["domains"][0]["checks"]
    certificate_check = checks[2]
    presented = certificate_check["facts"]["certificates"][0]
    presented["trust"] = "trusted"
    root = tree(render_html(document))
    head = presented_head(root, "mx.example.com [192.0.2.1]:25")
    assert [n.text for n in head.all("span", "outcome")] == ["chain trusted, but:"]
    assert "outcome-warn" in head.all("span", "outcome")[0].classes
    assert [(a.text, a.classes) for a in head.all("a", "failing")] == [
        ("leaf expires soon: 10 days left", ["outcome", "outcome-warn", "failing"])
    ]
    presented["trust"] = "self-signed"
    certificate_check["findings"] = [finding("CERT_SELF_SIGNED", "error"), finding("CERT_WEAK_KEY", "error"),
                                     finding("CERT_NEW_CODE", "error")]  # fmt: skip
    head = presented_head(tree(render_html(document)), "mx.example.com [192.0.2.1]:25")
    assert head.all("span", "outcome")[0].text == "chain self-signed; also:"
    assert [a.text for a in head.all("a", "failing")] == ["weak key: RSA 2048 bits", "CERT_NEW_CODE"]
    # The smart host smtp.example.com has a trusted chain; a failing finding about it is named in its row.
    connectors = checks[3]
    connectors["findings"].append(finding("SMARTHOST_TLS_FAILED", "error", "smtp.example.com [192.0.2.5]:25"))
    root = tree(render_html(document))
    (row,) = [tr for tr in root.all("tr") if tr.text.startswith("smtp.example.com [192.0.2.5]:25")]
    assert row.all("td")[-1].text == "trusted, but: SMARTHOST_TLS_FAILED"
    assert root.by_id(row.all("a", "failing")[0].attrs["href"][1:]).tag == "li"


# --- saved results ---------------------------------------------------------------------------------------


def test_a_saved_result_renders_exactly_like_the_live_run(report: Report, tmp_path: Path) -> None:
    saved = tmp_path / "result.json"
    saved.write_text(dumps(report), encoding="utf-8")
    assert render_html(load_report(saved)) == render_html(report_dict(report))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"schema": "diag.routes/1", "routing_order": "most-specific", "routes": []}', "diag.routes/1"),
        ("[]", "an array"),
        ("{}", "schema"),
        ('{"schema": "diag.report/1"}', "required"),
        ("{not json", "not JSON"),
        ("\ufeff{}", "not JSON"),
        ("[" * 1000 + "]" * 1000, "nested more than 64 levels deep"),
        ("9" * 5000, "an integer of 5000 digits is too large"),
    ],
)
def test_a_file_that_is_not_a_report_is_a_config_error(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "other.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_report(path)
    message = str(caught.value)
    assert str(path) in message and reason in message and "\n" not in message


def test_an_invalid_report_names_the_field(report: Report, tmp_path: Path) -> None:
    document = json.loads(dumps(report))
    document["domains"][0]["checks"][0]["findings"][0]["severity"] = "<script>\u202e"
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"domains/0/checks/0/findings/0/severity") as caught:
        load_report(path)
    assert "\u202e" not in str(caught.value)


@pytest.mark.parametrize(
    ("check_id", "path", "value", "reason"),
    [
        ("mx", ("duration_ms",), 10**400, "an integer of 401 digits is too large"),
        ("port25", ("facts", "probed", 0, "session", "connect_s"), 10**400, "too large"),
        ("certificate", ("facts", "warn_days"), -(10**400), "too large"),
        ("mx", ("facts", "deep"), json.loads("[" * 900 + "]" * 900), "nested more than 64 levels deep"),
    ],
    ids=["duration_ms", "connect_s", "warn_days", "deep facts"],
)
def test_numbers_beyond_a_float_and_deep_facts_are_refused_when_read(
    report: Report, tmp_path: Path, check_id: str, path: tuple[str | int, ...], value: Any, reason: str
) -> None:
    """Given a saved result the schema accepts, but with a number or a nesting no renderer can handle."""
    document = json.loads(dumps(report))
    target = next(c for c in document["domains"][0]["checks"] if c["id"] == check_id)
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    saved = tmp_path / "edited.json"
    saved.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(ConfigError, match=reason):
        load_report(saved)


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.json: cannot read it"):
        load_report(tmp_path / "missing.json")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ConfigError, match=r"binary\.json: not UTF-8"):
        load_report(binary)


@pytest.mark.parametrize(
    "document",
    [{"schema": "diag.routes/1", "routes": []}, {"schema": "diag.report/1"},
     {"schema": "diag.report/1", "domains": [1]},
     {"schema": "diag.report/1", "domains": [{"domain": "a", "checks": [{"id": "mx", "findings": [{}]}]}]}],
)  # fmt: skip
def test_render_html_refuses_what_is_not_a_report(document: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"not a diag\.report/1 document"):
        render_html(document)


def test_each_probe_draws_its_path_and_one_that_never_arrived_shows_how_far_it_got() -> None:
    # Given an e2e check with a delivered probe (two Received hops, one of them without TLS and behind in time)
    # and one that was accepted but never seen
    hop = {"index": 1, "from_host": "client.example", "ip": "192.0.2.9", "by_host": "mail.contoso.com",
           "protocol": "ESMTPSA", "tls": True, "tls_version": "TLSv1.3", "tls_cipher": "TLS_AES_256_GCM_SHA384",
           "at": "2026-11-26T12:00:00Z", "delay_s": None, "skew_s": None, "raw": "from client.example ..."}
    second = {**hop, "index": 2, "from_host": "mail.contoso.com", "ip": "192.0.2.10", "by_host": "<b>mx</b>",
              "protocol": "ESMTP", "tls": False, "tls_version": None, "tls_cipher": None, "skew_s": 3.0}
    probes = {"probes": [
        {"name": "John to Sun", "via": "mail.contoso.com [192.0.2.10]:587", "hops": [hop, second],
         "accepted_at": "2026-11-26T12:00:00Z"},
        {"name": "Sun to John", "via": "mx.contoso.com [192.0.2.20]:25", "hops": [],
         "accepted_at": "2026-11-26T12:00:01Z", "verdicts": [{"outcome": "timeout", "detail": "not seen"}]},
    ]}  # fmt: skip
    document = synthetic()
    document["domains"][0]["checks"].append(check("e2e", probes, finding("E2E_TIMEOUT", "critical"),
                                                  title="End to end"))
    page = render_html(document)
    text = assert_inert(page).words
    # Then each probe's path is drawn under its name, a hop per Received line named by the server that wrote it
    assert "Path of the message: John to Sun" in text
    assert "1 mail.contoso.com TLS TLSv1.3 · TLS_AES_256_GCM_SHA384" in text
    assert "from client.example [192.0.2.9]; ESMTPSA; 2026-11-26T12:00:00Z" in text
    assert "2 <b>mx</b> TLS no" in text and "<b>mx</b>" not in page  # server text stays text
    assert "from mail.contoso.com [192.0.2.10]; ESMTP; 2026-11-26T12:00:00Z" in text
    assert "its clock 3 s behind the previous hop's" in text
    # and the probe that never arrived ends where it was last known
    assert "Path of the message: Sun to John (timeout)" in text
    assert "mx.contoso.com [192.0.2.20]:25 accepted at 2026-11-26T12:00:01Z; not seen in the watched mailbox" in text
