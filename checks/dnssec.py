"""DNSSEC: are the domain's MX answer and each MX host's address answers (A and AAAA) signed and validating?

Validated with ``dns.dnssec`` from the trust anchor (``--trust-anchor``, the root's by default), walking the
chain of DS and DNSKEY records down to the answer, or, with ``--validating-resolver``, taken from the AD bit of
a validating resolver on this host (:mod:`diag.policy.dnssec`); the facts say which. Every question goes through
the run's DNS cache, which the dane check shares: the mx check asks both address types, so validating the AAAA
answer too asks nothing new of the host's own name (a DANE sender needs both secure: RFC 7672 §2.2.1).
"""

from __future__ import annotations

import asyncio

from checks.mx import MxFacts
from diag import evidence as ev
from diag.context import CheckContext
from diag.evidence import Evidence, Observed, Section
from diag.frozen import frozen
from diag.model import Finding, Severity
from diag.policy.dnssec import DnssecResult, Method, Reason, Security, from_ad_bit, validate
from diag.policy.lookup import drive, shown
from diag.registry import Check, Outcome

__all__ = ["CHECK", "DnssecAnswerRow", "DnssecFacts", "DnssecView", "assess", "probe", "secure", "view"]


@frozen
class DnssecFacts:
    """The DNSSEC state of the domain's MX answer, then of each MX host's address answers (A, then AAAA).

    Attributes:
        domain: the domain checked.
        method: validated from the trust anchor, or the AD bit of a validating resolver.
        anchors: the zones of the trust anchors in force (empty with the AD bit).
        results: one per name.
    """

    domain: str
    method: Method
    anchors: tuple[str, ...]
    results: tuple[DnssecResult, ...]


async def secure(ctx: CheckContext, name: str, rdtype: str) -> DnssecResult:
    """The DNSSEC state of one answer, the way the run is told to establish it."""
    if ctx.options.validating_resolver:
        return await drive(from_ad_bit(name, rdtype), ctx.resolver)
    return await drive(validate(name, rdtype, ctx.options.trust_anchors, chains=ctx.run.dnssec_chains), ctx.resolver)


def _subject(result: DnssecResult) -> str:
    return f"{result.name} {result.rdtype}"


def assess(facts: DnssecFacts) -> tuple[Finding, ...]:
    """Judge each answer's state; pure."""
    return tuple(_assess_one(facts, r) for r in facts.results)


def _assess_one(facts: DnssecFacts, r: DnssecResult) -> Finding:
    subject, how = _subject(r), ("by the validating resolver's AD bit" if r.method is Method.AD_BIT else
                                 f"from the trust anchor ({' → '.join(r.chain)})")  # fmt: skip
    through = f" (through the CNAME chain {' → '.join((r.name, *r.aliases))})" if r.aliases else ""
    if r.security is Security.SECURE:
        return CHECK.finding("DNSSEC_OK", subject,
                             f"The {r.rdtype} answer for {r.name}{through} is signed and validates {how}.")  # fmt: skip
    if r.security is Security.INSECURE:
        if r.reason is Reason.NSEC3_ITERATIONS:
            where = (f" (the NSEC3 records of {r.zone} use more hash iterations than validators compute, so they "
                     "treat its denials as unsigned: RFC 9276 §3.2)")  # fmt: skip
        elif r.zone:
            span = " in an NSEC3 opt-out span" if r.reason is Reason.OPT_OUT else ""
            where = f" ({r.zone} is delegated without DS{span})"
        else:
            where = " (the validating resolver set no AD bit)"
        return CHECK.finding(
            "DNSSEC_UNSIGNED", subject,
            f"The {r.rdtype} answer for {r.name} is not DNSSEC-signed{where}: a resolver cannot tell a forged answer "
            "from the real one, and DANE cannot be used for it.",
            f"Sign the zone and publish its DS record at the parent{f' ({r.zone})' if r.zone else ''}.",
        )  # fmt: skip
    if r.security is Security.BOGUS:
        return CHECK.finding(
            "DNSSEC_BOGUS", subject,
            f"The {r.rdtype} answer for {r.name} fails DNSSEC validation ({r.reason.value} in {r.zone}: "
            f"{shown(r.detail)}): validating resolvers answer SERVFAIL, so senders that validate cannot deliver.",
            "Re-sign the zone (check the signer's key rollover and signature refresh) or fix the DS at the parent.",
        )  # fmt: skip
    if r.reason is Reason.NO_DNSSEC_MATERIAL:
        fix = ("Ask a resolver that implements EDNS (--resolver), such as a validating resolver on this host: the "
               "one asked gives no DNSSEC material.")
    elif r.reason is Reason.ANCHOR_UNANSWERED:
        fix = (f"Ask a resolver that answers for the trust anchor's zone ({r.zone}): the one asked (--resolver) "
               "does not, so nothing below it can be validated.")
    else:
        fix = "Check that the name (and every CNAME target on the way) resolves and that --trust-anchor covers it."
    return CHECK.finding(
        "DNSSEC_INDETERMINATE", subject,
        f"The DNSSEC state of the {r.rdtype} answer for {r.name} could not be established ({r.reason.value}"
        f"{': ' + shown(r.detail) if r.detail else ''}).", fix,
    )  # fmt: skip


async def probe(ctx: CheckContext) -> DnssecFacts:
    mx = ctx.facts("mx", MxFacts)
    names = [(ctx.domain, "MX")]
    hosts = dict.fromkeys(h.name for h in mx.hosts if h.valid_name and not h.ip_literal)
    names += [(host, rdtype) for host in hosts for rdtype in ("A", "AAAA")]
    results = await asyncio.gather(*(secure(ctx, name, rdtype) for name, rdtype in names))
    method = Method.AD_BIT if ctx.options.validating_resolver else Method.VALIDATED
    anchors = () if ctx.options.validating_resolver else tuple(a.zone for a in ctx.options.trust_anchors)
    return DnssecFacts(ctx.domain, method, anchors, tuple(results))


async def run(ctx: CheckContext) -> Outcome:
    facts = await probe(ctx)
    return Outcome(facts, assess(facts))


# The report's evidence (report_templates/checks/dnssec.html.j2), from the facts as a report holds them (their
# JSON form, read defensively: diag.evidence).

_TONES = {Security.SECURE.value: "good", Security.INSECURE.value: "warn", Security.BOGUS.value: "bad"}


@frozen
class DnssecAnswerRow:
    """One answer's DNSSEC state: the question, secure/insecure/bogus/indeterminate with its tone, why, the
    zones validated on the way and the answer's records."""

    question: str
    state: str
    tone: str
    reason: str
    chain: str
    records: tuple[str, ...]


@frozen
class DnssecView:
    """The DNSSEC evidence: how the states were established (``method``) and a row per answer."""

    method: str
    answers: tuple[DnssecAnswerRow, ...]


def view(observed: Observed) -> DnssecView:
    facts = observed.facts
    if facts.get("method") == Method.AD_BIT.value:
        method = "from the AD bit of the validating resolver on this host"
    else:
        anchors = ", ".join(ev.text(a) or "." for a in ev.items(facts.get("anchors")))
        method = f"validated by diag from the trust anchors of: {anchors or 'none'}"
    rows = []
    for result in ev.mappings(facts.get("results")):
        security = ev.text(result.get("security"))
        why = [ev.text(result.get("reason")), ev.text(result.get("detail"))]
        if ev.text(result.get("zone")):
            why.append(f"zone {ev.text(result.get('zone'))}")
        rows.append(DnssecAnswerRow(
            question=f"{ev.text(result.get('name'))} {ev.text(result.get('rdtype'))}",
            state=security,
            tone=_TONES.get(security, "unknown"),
            reason="; ".join(w for w in why if w),
            chain=" → ".join(ev.text(z) or "." for z in ev.items(result.get("chain"))),
            records=tuple(ev.text(r) for r in ev.items(result.get("records"))),
        ))  # fmt: skip
    return DnssecView(method, tuple(rows))


CHECK = Check(
    id="dnssec",
    title="DNSSEC",
    run=run,
    facts=DnssecFacts,
    evidence=Evidence("DNSSEC", view, Section.POLICY),
    requires=("mx",),
    operations=6,
    tags=frozenset({"dnssec"}),
    codes={
        "DNSSEC_OK": Severity.INFO,
        "DNSSEC_UNSIGNED": Severity.NOTICE,
        "DNSSEC_BOGUS": Severity.ERROR,
        "DNSSEC_INDETERMINATE": Severity.NOTICE,
    },
    meanings={
        "DNSSEC_OK": "The answer (the domain's MX, an MX host's address) is signed and validates.",
        "DNSSEC_UNSIGNED": "The answer is provably unsigned (a delegation without DS on the way).",
        "DNSSEC_BOGUS": "The answer is signed but fails validation: validating resolvers answer SERVFAIL.",
        "DNSSEC_INDETERMINATE": "The DNSSEC state could not be established (no answer, a CNAME loop, no trust anchor).",
    },
)
