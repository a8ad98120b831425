"""SPF (RFC 7208): one valid record, within the lookup limits, ending in a real ``all``; with the organization's
configuration, the cloud's include is there and every on-premises egress address passes.

The policy tree is fetched and analysed by :func:`diag.policy.spf.analyze` (every include and redirect, counted
recursively); each egress address is evaluated with :func:`diag.policy.spf.check_host`, exactly as a receiver
does, not by looking for the address in the text. Every DNS question goes through the run's resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from diag import evidence as ev
from diag.context import CheckContext
from diag.evidence import Evidence, Observed, Section
from diag.frozen import frozen
from diag.model import Finding, Severity
from diag.policy.lookup import drive, shown
from diag.policy.spf import (
    DNS_LOOKUP_LIMIT,
    VOID_LOOKUP_LIMIT,
    NodeStatus,
    SpfAnalysis,
    SpfIssue,
    SpfIssueKind,
    SpfResult,
    SpfVerdict,
    analyze,
    check_host,
)
from diag.registry import Check, Outcome

if TYPE_CHECKING:
    from diag.config import Organization

__all__ = [
    "CHECK", "M365_SPF_INCLUDE", "Sender", "SenderVerdict", "SpfFacts", "SpfNodeRow", "SpfSenderRow", "SpfView",
    "assess", "cloud_include", "probe", "senders", "view",
]  # fmt: skip

M365_SPF_INCLUDE = "spf.protection.outlook.com"
"""Microsoft 365's SPF include (Microsoft Learn, "Set up SPF to identify valid email sources")."""
_M365_MX_SUFFIX = ".mail.protection.outlook.com"


@frozen
class Sender:
    """An on-premises egress address to evaluate, and where it was configured."""

    ip: str
    source: str  # "--sender-ip", or "inbound connector 'From on-premises'"


@frozen
class SenderVerdict:
    """What ``check_host()`` gave for one egress address sending as ``postmaster@<domain>``."""

    sender: Sender
    verdict: SpfVerdict


@frozen
class SpfFacts:
    """The domain's SPF policy and, with a configuration, the organization's expectations of it.

    Attributes:
        domain: the domain checked.
        analysis: the policy tree, its counts and problems.
        cloud_include: the include the cloud service needs (None: not checked).
        senders: the on-premises egress addresses evaluated (an accepted domain of the configuration only).
    """

    domain: str
    analysis: SpfAnalysis
    cloud_include: str | None = None
    senders: tuple[SenderVerdict, ...] = ()


_ISSUE_CODES = {
    SpfIssueKind.MULTIPLE_RECORDS: "SPF_MULTIPLE",
    SpfIssueKind.SYNTAX: "SPF_SYNTAX",
    SpfIssueKind.DNS_ERROR: "SPF_DNS_ERROR",
    SpfIssueKind.TOO_MANY_LOOKUPS: "SPF_TOO_MANY_LOOKUPS",
    SpfIssueKind.TOO_MANY_MX_NAMES: "SPF_TOO_MANY_LOOKUPS",
    SpfIssueKind.TOO_MANY_VOID_LOOKUPS: "SPF_TOO_MANY_VOID_LOOKUPS",
    SpfIssueKind.VOID_LOOKUP: "SPF_VOID_LOOKUP",
    SpfIssueKind.INCLUDE_NOT_FOUND: "SPF_INCLUDE_NOT_FOUND",
    SpfIssueKind.REDIRECT_NOT_FOUND: "SPF_INCLUDE_NOT_FOUND",
    SpfIssueKind.LOOP: "SPF_LOOP",
    SpfIssueKind.PASS_ALL: "SPF_PASS_ALL",
    SpfIssueKind.NEUTRAL_ALL: "SPF_NEUTRAL_ALL",
    SpfIssueKind.NO_ALL: "SPF_NO_ALL",
    SpfIssueKind.REDIRECT_IGNORED: "SPF_REDIRECT_IGNORED",
    SpfIssueKind.PTR_USED: "SPF_PTR",
    SpfIssueKind.NOT_WALKED: "SPF_NOT_WALKED",
}
_PERMERROR = "receivers evaluate the policy to permerror, and DMARC then treats SPF as failed"


def _issue_finding(facts: SpfFacts, issue: SpfIssue) -> Finding:
    subject = facts.domain
    where = f"the SPF record of {issue.domain}" + (f" (reached by {shown(issue.term)})" if issue.term and
                                                     issue.kind in _REACHED else "")  # fmt: skip
    term, detail = shown(issue.term), shown(issue.detail)
    code = _ISSUE_CODES[issue.kind]
    kind = issue.kind
    if kind is SpfIssueKind.MULTIPLE_RECORDS:
        return CHECK.finding(code, subject, f"{where.capitalize()} is published {detail}: {_PERMERROR} (RFC 7208 "
                             "§4.5).", "Merge the records into one v=spf1 record.")  # fmt: skip
    if kind is SpfIssueKind.SYNTAX:
        return CHECK.finding(code, subject, f"{where.capitalize()} is not valid SPF ({detail}): {_PERMERROR}.",
                             "Correct the record's syntax (RFC 7208 §12).")
    if kind is SpfIssueKind.DNS_ERROR:
        return CHECK.finding(code, subject, f"DNS gave no answer for {where} ({detail}); while that lasts, "
                             "receivers evaluate SPF to temperror and defer or accept unchecked.",
                             "Make the domain's nameservers answer for this name.")  # fmt: skip
    if kind is SpfIssueKind.TOO_MANY_LOOKUPS:
        return CHECK.finding(code, subject, f"The SPF policy of {facts.domain} needs {facts.analysis.total_lookups} "
                             f"DNS-querying terms counted through its includes, more than the {DNS_LOOKUP_LIMIT} "
                             f"RFC 7208 §4.6.4 allows: {_PERMERROR}.",
                             "Remove includes that are not needed, or replace a and mx terms by ip4/ip6.")  # fmt: skip
    if kind is SpfIssueKind.TOO_MANY_MX_NAMES:
        return CHECK.finding(code, subject, f"The term {term} in {where} names more MX hosts ({detail}) than the 10 "
                             f"RFC 7208 §4.6.4 allows: {_PERMERROR} when it is evaluated.",
                             "List the sending addresses with ip4/ip6 instead of mx.")  # fmt: skip
    if kind is SpfIssueKind.TOO_MANY_VOID_LOOKUPS:
        return CHECK.finding(code, subject, f"The SPF policy of {facts.domain} has {facts.analysis.void_lookups} "
                             f"lookups that find nothing, more than the {VOID_LOOKUP_LIMIT} RFC 7208 §4.6.4 "
                             f"allows: {_PERMERROR}.",
                             "Remove the terms that name domains without records.")  # fmt: skip
    if kind is SpfIssueKind.VOID_LOOKUP:
        return CHECK.finding(code, subject, f"The term {term} in {where} finds nothing ({detail}); it counts "
                             "towards the limit of two void lookups.", "Remove the term or publish the records.")
    if kind in (SpfIssueKind.INCLUDE_NOT_FOUND, SpfIssueKind.REDIRECT_NOT_FOUND):
        return CHECK.finding(code, subject, f"The SPF record of {issue.domain} has {term}, whose domain publishes "
                             f"no SPF record ({detail}): {_PERMERROR} (RFC 7208 §5.2, §6.1).",
                             "Correct the include's domain name or remove the term.")  # fmt: skip
    if kind is SpfIssueKind.LOOP:
        return CHECK.finding(code, subject, f"The SPF record of {issue.domain} reaches itself again through {term} "
                             f"({detail}): {_PERMERROR}.", "Remove the include or redirect that closes the loop.")
    if kind is SpfIssueKind.PASS_ALL:
        return CHECK.finding(code, subject, f"The SPF record of {facts.domain} ends in {term}: any host on the "
                             "Internet passes SPF as this domain.", "End the record with -all (or ~all).")
    if kind is SpfIssueKind.NEUTRAL_ALL:
        return CHECK.finding(code, subject, f"The SPF record of {facts.domain} ends in {term}: strangers get "
                             "neutral, so the record protects nothing.", "End the record with -all (or ~all).")
    if kind is SpfIssueKind.NO_ALL:
        return CHECK.finding(code, subject, f"The SPF record of {facts.domain} has neither an all term nor a "
                             "redirect: unlisted hosts get neutral (RFC 7208 §4.7).", "End the record with -all.")
    if kind is SpfIssueKind.REDIRECT_IGNORED:
        return CHECK.finding(code, subject, f"The SPF record of {issue.domain} has {term} next to an all term, "
                             "which makes receivers ignore the redirect (RFC 7208 §6.1).",
                             "Remove the redirect or the all term.")  # fmt: skip
    if kind is SpfIssueKind.PTR_USED:
        return CHECK.finding(code, subject, f"The SPF record of {issue.domain} uses {term}, which RFC 7208 §5.5 says "
                             "not to use: it is slow, and many receivers skip it.",
                             "Replace ptr with ip4/ip6 or a terms.")  # fmt: skip
    return CHECK.finding(code, subject, f"The term {term} in the SPF record of {issue.domain} was not followed "
                         f"({detail}); what it includes is not counted here.",
                         "Check that part of the policy by hand.")  # fmt: skip


_REACHED = frozenset({SpfIssueKind.MULTIPLE_RECORDS, SpfIssueKind.SYNTAX, SpfIssueKind.DNS_ERROR})


def assess(facts: SpfFacts) -> tuple[Finding, ...]:
    """Judge the policy and the organization's senders; pure."""
    analysis, subject = facts.analysis, facts.domain
    if not analysis.published:
        return (CHECK.finding(
            "SPF_MISSING", subject,
            f"{facts.domain} publishes no SPF record, so receivers cannot tell its servers from forgers (SPF result "
            "none) and DMARC can pass only through DKIM.",
            f'Publish one TXT record at {facts.domain}: "v=spf1 <your senders> -all".',
        ),)  # fmt: skip
    found = [_issue_finding(facts, issue) for issue in analysis.issues]
    if facts.cloud_include is not None and not analysis.includes(facts.cloud_include):
        found.append(CHECK.finding(
            "SPF_CLOUD_INCLUDE_MISSING", subject,
            f"The SPF policy of {facts.domain} does not include {facts.cloud_include}, so mail the cloud service "
            "sends for the domain fails SPF.",
            f"Add include:{facts.cloud_include} to the record.",
        ))  # fmt: skip
    for checked in facts.senders:
        found.append(_sender_finding(facts, checked))
    if not any(f.severity > Severity.NOTICE for f in found):
        found.insert(0, CHECK.finding(
            "SPF_OK", subject,
            f"{facts.domain} publishes one valid SPF record, using {analysis.total_lookups} of {DNS_LOOKUP_LIMIT} "
            "DNS lookups and ending in a restrictive all.",
        ))  # fmt: skip
    return tuple(found)


def _sender_finding(facts: SpfFacts, checked: SenderVerdict) -> Finding:
    verdict, sender = checked.verdict, checked.sender
    subject = f"{facts.domain} from {sender.ip}"
    if verdict.result is SpfResult.PASS:
        via = f" (matched {shown(verdict.matched.directive)} in {verdict.matched.domain})" if verdict.matched else ""
        return CHECK.finding("SPF_SENDER_PASS", subject, f"The on-premises address {sender.ip} ({sender.source}) "
                             f"passes SPF for {facts.domain}{via}.")  # fmt: skip
    why = f": {shown(verdict.detail)}" if verdict.detail else ""
    return CHECK.finding(
        "SPF_SENDER_NOT_PERMITTED", subject,
        f"Mail from the on-premises address {sender.ip} ({sender.source}) gets SPF {verdict.result.value} for "
        f"{facts.domain} ({verdict.reason.value}{why}), so receivers may reject or junk what it sends directly.",
        f"Add ip4:{sender.ip} (or ip6:) to the SPF record of {facts.domain}, or send through the cloud.",
    )  # fmt: skip


def cloud_include(org: Organization) -> str | None:
    """The include the cloud needs: configured, or Microsoft 365's when the MX host is Exchange Online's."""
    if org.spf_include:
        return org.spf_include
    if org.mx_host and org.mx_host.lower().endswith(_M365_MX_SUFFIX):
        return M365_SPF_INCLUDE
    return None


def senders(org: Organization, sender_ip: str | None) -> tuple[Sender, ...]:
    """The egress addresses to evaluate: ``--sender-ip`` and the OnPremises inbound connectors' addresses (a
    range by its first address), each once."""
    found: dict[str, Sender] = {}
    if sender_ip:
        found[sender_ip] = Sender(sender_ip, "--sender-ip")
    for connector in org.inbound_connectors:
        if not connector.enabled or connector.connector_type.value != "OnPremises":
            continue
        for entry in connector.sender_ip_addresses:
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                continue
            ip = str(network.network_address)
            found.setdefault(ip, Sender(ip, f"inbound connector '{connector.name}'"))
    return tuple(found.values())


async def probe(ctx: CheckContext) -> SpfFacts:
    analysis = await drive(analyze(ctx.domain), ctx.resolver)
    org = ctx.options.organization
    if org is None or org.accepted(ctx.domain) is None or not analysis.published:
        return SpfFacts(ctx.domain, analysis)
    egress = senders(org, ctx.options.sender_ip)
    verdicts = await asyncio.gather(*(drive(check_host(s.ip, ctx.domain), ctx.resolver) for s in egress))
    pairs = tuple(SenderVerdict(s, v) for s, v in zip(egress, verdicts, strict=True))
    return SpfFacts(ctx.domain, analysis, cloud_include(org), pairs)


async def run(ctx: CheckContext) -> Outcome:
    facts = await probe(ctx)
    return Outcome(facts, assess(facts))


# The report's evidence (report_templates/checks/spf.html.j2), from the facts as a report holds them (their JSON
# form, read defensively: diag.evidence).

# What fetching a record of the tree gave, in words, and its tone (a CSS token: outcome-good, -bad, -unknown).
_NODE_STATES = {
    NodeStatus.FOUND.value: ("", "good"),
    NodeStatus.NO_RECORD.value: ("no SPF record", "bad"),
    NodeStatus.NXDOMAIN.value: ("the domain does not exist", "bad"),
    NodeStatus.MULTIPLE.value: ("more than one SPF record", "bad"),
    NodeStatus.SYNTAX.value: ("not valid SPF", "bad"),
    NodeStatus.DNS_ERROR.value: ("no answer from DNS", "bad"),
    NodeStatus.INVALID_DOMAIN.value: ("not a valid domain name", "bad"),
    NodeStatus.LOOP.value: ("a loop: already being evaluated", "bad"),
    NodeStatus.MACRO.value: ("not followed: its name needs the sender (macro)", "unknown"),
    NodeStatus.NOT_FOLLOWED.value: ("not followed: the tree is too large", "unknown"),
}
# Deepest level of the tree shown: the analysis follows 10 levels of includes; a hand-edited result may nest
# deeper, and a view must not recurse without bound.
_SHOWN_DEPTH = 12


@frozen
class SpfNodeRow:
    """One record of the SPF policy tree as the report draws it.

    Attributes:
        via: the term that reached it (``include:spf.protection.outlook.com``); "" for the domain's own record.
        domain: whose record it is.
        record: the record's text, as published ("" when there is none).
        state: what fetching it gave, in words ("" when one record was found).
        tone: ``good``, ``bad`` or ``unknown`` (a CSS token).
        lookups: DNS-querying terms in the record itself, and in it and everything below it.
        notes: its terms that found nothing, and what else the analysis said.
        children: the records it includes or redirects to.
    """

    via: str
    domain: str
    record: str
    state: str
    tone: str
    lookups: str
    notes: tuple[str, ...]
    children: tuple[SpfNodeRow, ...]


@frozen
class SpfSenderRow:
    """An on-premises egress address and the result ``check_host()`` gave it."""

    ip: str
    source: str
    result: str
    tone: str
    detail: str


@frozen
class SpfView:
    """The SPF evidence: the lookup counts against their limits, the cloud's include, the policy tree and the
    egress addresses evaluated."""

    lookups: str
    lookups_tone: str
    void: str
    void_tone: str
    cloud_include: str
    cloud_included: bool
    tree: SpfNodeRow | None
    senders: tuple[SpfSenderRow, ...]


def view(observed: Observed) -> SpfView:
    facts = observed.facts
    analysis = ev.mapping(facts.get("analysis"))
    total, void = ev.number(analysis.get("total_lookups")), ev.number(analysis.get("void_lookups"))
    include = ev.text(facts.get("cloud_include"))
    reached = {ev.text(d).lower() for d in ev.items(analysis.get("include_domains"))}
    root = analysis.get("root")
    return SpfView(
        lookups=f"{ev.text(analysis.get('total_lookups'))} of {DNS_LOOKUP_LIMIT}",
        lookups_tone="bad" if total is None or total > DNS_LOOKUP_LIMIT else "good",
        void=f"{ev.text(analysis.get('void_lookups'))} of {VOID_LOOKUP_LIMIT}",
        void_tone="bad" if void is None or void > VOID_LOOKUP_LIMIT else "good",
        cloud_include=include,
        cloud_included=include.lower() in reached,
        tree=_node_row(root, 0) if isinstance(root, Mapping) else None,
        senders=tuple(_sender_row(ev.mapping(s)) for s in ev.mappings(facts.get("senders"))),
    )


def _node_row(node: Mapping[str, Any], depth: int) -> SpfNodeRow:
    state, tone = _NODE_STATES.get(ev.text(node.get("status")), (ev.text(node.get("status")), "unknown"))
    record = ev.mapping(node.get("record"))
    if record and ev.items(record.get("issues")):
        tone = "bad"
    notes = [f"finds nothing: {ev.text(term)}" for term in ev.items(node.get("void_terms"))]
    if ev.text(node.get("detail")):
        notes.append(ev.text(node.get("detail")))
    children = ev.mappings(node.get("children"))
    if children and depth >= _SHOWN_DEPTH:
        notes.append(f"{len(children)} more records below are not shown")
        children = []
    own, below = ev.text(node.get("lookups")), ev.text(node.get("total_lookups"))
    return SpfNodeRow(
        via=ev.text(node.get("via")),
        domain=ev.text(node.get("domain")),
        record=ev.text(record.get("text")),
        state=state,
        tone=tone,
        lookups=own if own == below else f"{own} here, {below} with what it includes",
        notes=tuple(notes),
        children=tuple(_node_row(child, depth + 1) for child in children),
    )


def _sender_row(checked: Mapping[str, Any]) -> SpfSenderRow:
    sender, verdict = ev.mapping(checked.get("sender")), ev.mapping(checked.get("verdict"))
    result = ev.text(verdict.get("result"))
    matched = ev.mapping(verdict.get("matched"))
    if matched:
        detail = f"matched {ev.text(matched.get('directive'))} in {ev.text(matched.get('domain'))}"
    else:
        detail = " ".join(x for x in (ev.text(verdict.get("reason")), ev.text(verdict.get("detail"))) if x)
    return SpfSenderRow(
        ip=ev.text(sender.get("ip")), source=ev.text(sender.get("source")), result=result,
        tone="good" if result == SpfResult.PASS.value else "bad", detail=detail,
    )  # fmt: skip


CHECK = Check(
    id="spf",
    title="SPF record",
    run=run,
    facts=SpfFacts,
    evidence=Evidence("SPF policy", view, Section.POLICY),
    operations=4,
    codes={
        "SPF_OK": Severity.INFO,
        "SPF_SENDER_PASS": Severity.INFO,
        "SPF_MISSING": Severity.WARNING,
        "SPF_MULTIPLE": Severity.ERROR,
        "SPF_SYNTAX": Severity.ERROR,
        "SPF_TOO_MANY_LOOKUPS": Severity.ERROR,
        "SPF_TOO_MANY_VOID_LOOKUPS": Severity.ERROR,
        "SPF_INCLUDE_NOT_FOUND": Severity.ERROR,
        "SPF_LOOP": Severity.ERROR,
        "SPF_PASS_ALL": Severity.ERROR,
        "SPF_NEUTRAL_ALL": Severity.WARNING,
        "SPF_NO_ALL": Severity.WARNING,
        "SPF_DNS_ERROR": Severity.WARNING,
        "SPF_VOID_LOOKUP": Severity.NOTICE,
        "SPF_REDIRECT_IGNORED": Severity.NOTICE,
        "SPF_PTR": Severity.NOTICE,
        "SPF_NOT_WALKED": Severity.NOTICE,
        "SPF_CLOUD_INCLUDE_MISSING": Severity.ERROR,
        "SPF_SENDER_NOT_PERMITTED": Severity.ERROR,
    },
    meanings={
        "SPF_OK": "One valid SPF record, within the lookup limits, ending in -all or ~all.",
        "SPF_SENDER_PASS": "An on-premises egress address passes the evaluated SPF policy.",
        "SPF_MISSING": "The domain publishes no SPF record.",
        "SPF_MULTIPLE": "More than one SPF record (permerror, RFC 7208 §4.5).",
        "SPF_SYNTAX": "An SPF record in the policy is not valid (permerror).",
        "SPF_TOO_MANY_LOOKUPS": "More than 10 DNS-querying terms counted through includes, or an mx with more than "
        "10 names (permerror, RFC 7208 §4.6.4).",
        "SPF_TOO_MANY_VOID_LOOKUPS": "More than 2 lookups that find nothing (permerror, RFC 7208 §4.6.4).",
        "SPF_INCLUDE_NOT_FOUND": "An include or redirect names a domain without an SPF record (permerror).",
        "SPF_LOOP": "An include or redirect leads back to a record already being evaluated.",
        "SPF_PASS_ALL": "The record ends in +all: anyone passes.",
        "SPF_NEUTRAL_ALL": "The record ends in ?all: it protects nothing.",
        "SPF_NO_ALL": "The record has no all term and no redirect: unlisted hosts get neutral.",
        "SPF_DNS_ERROR": "A lookup for the policy got no answer (temperror while it lasts).",
        "SPF_VOID_LOOKUP": "An a, mx or exists term names a domain without records.",
        "SPF_REDIRECT_IGNORED": "A redirect next to an all term, which makes receivers ignore it.",
        "SPF_PTR": "The record uses ptr, which RFC 7208 §5.5 says not to use.",
        "SPF_NOT_WALKED": "A term was not followed (macros needing the sender, or a tree too large).",
        "SPF_CLOUD_INCLUDE_MISSING": "The policy does not include the cloud service's SPF domain (--config).",
        "SPF_SENDER_NOT_PERMITTED": "An on-premises egress address (--sender-ip, inbound connector) does not pass.",
    },
)
