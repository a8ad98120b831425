"""DKIM keys (RFC 6376 §3.6.1, RFC 8301) of the organization's accepted domains: Microsoft 365's two selector
CNAMEs and every selector the configuration lists (``DkimSelectors``).

For Microsoft 365 (an Exchange Online ``MxHost``), ``selector1._domainkey`` and ``selector2._domainkey`` of each
custom accepted domain must be CNAMEs to the tenant's keys (the documented forms are in
:mod:`diag.policy.dkim`) that resolve to usable keys; the tenant's initial ``*.onmicrosoft.com`` domain is
signed by Microsoft without them. Each configured selector must publish one key: readable, RSA of at least
1024 bits (2048 recommended), not revoked; ``t=y`` (testing) is noted.
"""

from __future__ import annotations

import asyncio

from diag import evidence as ev
from diag.config import Organization
from diag.context import CheckContext
from diag.evidence import Evidence, Failing, Observed, Section
from diag.frozen import frozen
from diag.model import Finding, Severity
from diag.policy.dkim import (
    M365_SELECTORS,
    RECOMMENDED_RSA_BITS,
    DkimIssueKind,
    KeyStatus,
    M365Form,
    SelectorFacts,
    classify_m365_target,
    lookup_selector,
)
from diag.policy.lookup import drive, shown
from diag.registry import Check, Outcome

__all__ = ["CHECK", "DkimFacts", "DkimSelectorRow", "DkimView", "Selector", "assess", "probe", "tenant_of", "view"]

_M365_MX_SUFFIX = ".mail.protection.outlook.com"
_INVALID = (DkimIssueKind.SYNTAX, DkimIssueKind.VERSION, DkimIssueKind.BAD_KEY, DkimIssueKind.UNKNOWN_KEY_TYPE,
            DkimIssueKind.NOT_EMAIL, DkimIssueKind.SHA1_ONLY)  # fmt: skip


@frozen
class Selector:
    """One selector looked up: its facts, and whether it is one of Microsoft 365's (which must be a CNAME)."""

    facts: SelectorFacts
    m365: bool = False


@frozen
class DkimFacts:
    """The selectors of one accepted domain.

    Attributes:
        domain: the accepted domain.
        tenant: the tenant's ``<tenant>.onmicrosoft.com`` prefix, when known (Microsoft 365's CNAMEs must name it).
        selectors: Microsoft 365's two (for a custom domain in Microsoft 365), then the configured ones.
    """

    domain: str
    tenant: str | None
    selectors: tuple[Selector, ...]


def assess(facts: DkimFacts) -> tuple[Finding, ...]:
    """Judge every selector; pure."""
    found: list[Finding] = []
    for selector in facts.selectors:
        found.extend(_assess_selector(facts, selector))
    return tuple(found)


def _assess_selector(facts: DkimFacts, selector: Selector) -> list[Finding]:
    s = selector.facts
    subject = s.name
    if selector.m365:
        problem = _m365_problem(facts, s)
        if problem is not None:
            return [problem]
    if s.status is KeyStatus.DNS_ERROR:
        return [CHECK.finding("DKIM_DNS_ERROR", subject, f"DNS gave no answer for {s.name} ({shown(s.detail)}).",
                              "Make the domain's nameservers answer for its _domainkey names.")]
    if s.status in (KeyStatus.NXDOMAIN, KeyStatus.NO_KEY):
        via = f" (its CNAME points at {s.cname_target}, which has none)" if s.cname_target else ""
        return [CHECK.finding(
            "DKIM_KEY_MISSING", subject,
            f"No DKIM key is published at {s.name}{via}: mail signed with selector {s.selector} fails DKIM.",
            "Publish the signer's public key there (for Microsoft 365, enable DKIM signing for the domain).",
        )]  # fmt: skip
    if s.status is KeyStatus.MULTIPLE or s.key is None:
        return [CHECK.finding(
            "DKIM_MULTIPLE", subject,
            f"{s.name} holds {len(s.texts)} key records: verifiers may pick either (RFC 6376 §3.6.2.2).",
            "Keep exactly one key record per selector.",
        )]  # fmt: skip
    key = s.key
    if key.revoked:
        return [CHECK.finding(
            "DKIM_KEY_REVOKED", subject,
            f"The key at {s.name} is revoked (empty p=): mail still signed with selector {s.selector} fails DKIM.",
            "Publish the current key, or remove the selector from DkimSelectors if it is retired.",
        )]  # fmt: skip
    findings = []
    for issue in key.issues:
        if issue.kind in _INVALID:
            findings.append(CHECK.finding(
                "DKIM_KEY_INVALID", subject,
                f"The key record at {s.name} is unusable ({issue.kind.value}: {shown(issue.detail)}).",
                "Publish the key record exactly as the signer produces it (v=DKIM1; k=rsa; p=...).",
            ))  # fmt: skip
        elif issue.kind is DkimIssueKind.WEAK_KEY:
            findings.append(CHECK.finding(
                "DKIM_KEY_WEAK", subject,
                f"The key at {s.name} has {key.bits} bits: verifiers do not accept RSA keys below 1024 bits (RFC 8301 "
                "§3.2), so its signatures fail.", f"Rotate to a {RECOMMENDED_RSA_BITS}-bit key.",
            ))  # fmt: skip
        elif issue.kind is DkimIssueKind.SHORT_KEY:
            findings.append(CHECK.finding(
                "DKIM_KEY_SHORT", subject,
                f"The key at {s.name} has {key.bits} bits; RFC 8301 §3.2 asks for at least {RECOMMENDED_RSA_BITS}.",
                f"Rotate to a {RECOMMENDED_RSA_BITS}-bit key.",
            ))  # fmt: skip
    if key.testing:
        findings.append(CHECK.finding(
            "DKIM_TESTING", subject,
            f"The key at {s.name} says t=y: the domain is testing DKIM, and verifiers may treat its signatures as "
            "absent (RFC 6376 §3.6.1).", "Remove t=y once signing works.",
        ))  # fmt: skip
    if not any(f.severity > Severity.NOTICE for f in findings):
        via = f" through its CNAME to {s.cname_target}" if s.cname_target else ""
        findings.insert(0, CHECK.finding(
            "DKIM_OK", subject, f"{s.name} publishes a usable {key.key_type.upper()} key of {key.bits} bits{via}.",
        ))  # fmt: skip
    return findings


def _m365_problem(facts: DkimFacts, s: SelectorFacts) -> Finding | None:
    if s.cname_target is None:
        if s.status is KeyStatus.DNS_ERROR:
            return None  # judged as a DNS error
        return CHECK.finding(
            "DKIM_M365_CNAME_MISSING", s.name,
            f"{s.name} is not a CNAME to the tenant's DKIM key, so Microsoft 365 cannot sign mail from {facts.domain} "
            f"with its own domain (it signs with the onmicrosoft.com domain, which DMARC does not align).",
            "Publish the two CNAMEs Get-DkimSigningConfig shows (Selector1CNAME, Selector2CNAME), then enable "
            "DKIM signing for the domain.",
        )  # fmt: skip
    target = classify_m365_target(facts.domain, s.selector, s.cname_target)
    wrong = ""
    if target.form is M365Form.OTHER:
        wrong = "which is not one of Microsoft 365's key names"
    elif not target.for_domain:
        wrong = "the key name of another domain or selector"
    elif facts.tenant is not None and target.tenant != facts.tenant:
        wrong = f"a key of the tenant {target.tenant}, not {facts.tenant}"
    if wrong:
        return CHECK.finding(
            "DKIM_M365_CNAME_WRONG", s.name,
            f"{s.name} is a CNAME to {s.cname_target}, {wrong}: Microsoft 365's signatures for {facts.domain} will "
            "not verify.", "Copy the exact Selector1CNAME/Selector2CNAME values from Get-DkimSigningConfig.",
        )  # fmt: skip
    return None


def tenant_of(org: Organization) -> str | None:
    """The tenant's prefix: the initial (``*.onmicrosoft.com``) accepted domain's first label."""
    initial = [a for a in org.accepted_domains if a.initial_domain or a.domain_name.endswith(".onmicrosoft.com")]
    for accepted in initial:
        if accepted.domain_name.lower().endswith(".onmicrosoft.com"):
            return accepted.domain_name.lower().removesuffix(".onmicrosoft.com")
    return None


def _m365(org: Organization) -> bool:
    return bool(org.mx_host and org.mx_host.lower().endswith(_M365_MX_SUFFIX))


def _wanted(org: Organization, domain: str) -> list[tuple[str, bool]]:
    """The selectors to look up under ``domain``, each with whether it is one of Microsoft 365's."""
    m365 = _m365(org) and not domain.endswith(".onmicrosoft.com")
    wanted = [(name, True) for name in M365_SELECTORS] if m365 else []
    return wanted + [(name, False) for name in org.dkim_selectors if (name, True) not in wanted]


async def probe(ctx: CheckContext) -> DkimFacts | None:
    """The key records of the selectors the organization's configuration names for the domain; None when it
    names none (no configuration, or no selector to check)."""
    org = ctx.options.organization
    wanted = _wanted(org, ctx.domain) if org is not None else []
    if org is None or not wanted:
        return None
    looked_up = await asyncio.gather(*(drive(lookup_selector(ctx.domain, name), ctx.resolver) for name, _ in wanted))
    selectors = tuple(Selector(facts, m365) for facts, (_name, m365) in zip(looked_up, wanted, strict=True))
    return DkimFacts(ctx.domain, tenant_of(org), selectors)


async def run(ctx: CheckContext) -> Outcome:
    org = ctx.options.organization
    if org is None:
        return Outcome.skip("no organization configuration (--config)")
    if org.accepted(ctx.domain) is None:
        return Outcome.inapplicable(f"{ctx.domain} is not an accepted domain of the organization")
    facts = await probe(ctx)
    if facts is None:
        why = "Microsoft 365 signs the initial domain itself" if _m365(org) else "not Microsoft 365"
        return Outcome.inapplicable(f"no DKIM selector to check ({why}, no DkimSelectors)")
    return Outcome(facts, assess(facts))


# The report's evidence (report_templates/checks/dkim.html.j2), from the facts as a report holds them (their JSON
# form, read defensively: diag.evidence).

_KEY_STATES = {
    KeyStatus.MULTIPLE.value: "more than one key record",
    KeyStatus.NO_KEY.value: "no key record",
    KeyStatus.NXDOMAIN.value: "no such name",
    KeyStatus.DNS_ERROR.value: "no answer from DNS",
}


@frozen
class DkimSelectorRow:
    """One selector as the report shows it.

    Attributes:
        name: ``<selector>._domainkey.<domain>``.
        kind: whose selector it is (Microsoft 365's, or configured in DkimSelectors).
        cname_target: where its CNAME points ("" without one).
        key: the key in words (``RSA, 2048 bits``; ``revoked``; why there is none).
        record: the key record as published.
        failing: its findings of warning or worse, linked.
    """

    name: str
    kind: str
    cname_target: str
    key: str
    record: str
    failing: tuple[Failing, ...]


@frozen
class DkimView:
    """The DKIM evidence: the tenant Microsoft 365's CNAMEs must name, and a row per selector."""

    tenant: str
    selectors: tuple[DkimSelectorRow, ...]


def view(observed: Observed) -> DkimView:
    failing = ev.failing_by_subject(observed.findings)
    rows = []
    for selector in ev.mappings(observed.facts.get("selectors")):
        facts = ev.mapping(selector.get("facts"))
        name = ev.text(facts.get("name"))
        key = ev.mapping(facts.get("key"))
        words = [_KEY_STATES.get(ev.text(facts.get("status")), "")]
        if key:
            bits = f", {ev.text(key.get('bits'))} bits" if key.get("bits") else ""
            words.append(f"{ev.text(key.get('key_type')).upper()}{bits}")
            words += [flag for flag, on in (("revoked", key.get("revoked")), ("testing (t=y)", key.get("testing")))
                      if on]  # fmt: skip
        rows.append(DkimSelectorRow(
            name=name,
            kind="Microsoft 365" if selector.get("m365") else "DkimSelectors",
            cname_target=ev.text(facts.get("cname_target")),
            key="; ".join(w for w in words if w),
            record=ev.text(key.get("text")) or "; ".join(ev.text(t) for t in ev.items(facts.get("texts"))),
            failing=tuple(Failing.of(f, f.code) for f in failing.get(name, ())),
        ))  # fmt: skip
    return DkimView(ev.text(observed.facts.get("tenant")), tuple(rows))


CHECK = Check(
    id="dkim",
    title="DKIM keys",
    run=run,
    facts=DkimFacts,
    evidence=Evidence("DKIM keys", view, Section.POLICY),
    operations=2,
    tags=frozenset({"config"}),
    codes={
        "DKIM_OK": Severity.INFO,
        "DKIM_M365_CNAME_MISSING": Severity.WARNING,
        "DKIM_M365_CNAME_WRONG": Severity.ERROR,
        "DKIM_KEY_MISSING": Severity.ERROR,
        "DKIM_MULTIPLE": Severity.ERROR,
        "DKIM_KEY_INVALID": Severity.ERROR,
        "DKIM_KEY_WEAK": Severity.ERROR,
        "DKIM_KEY_SHORT": Severity.WARNING,
        "DKIM_KEY_REVOKED": Severity.WARNING,
        "DKIM_TESTING": Severity.NOTICE,
        "DKIM_DNS_ERROR": Severity.WARNING,
    },
    meanings={
        "DKIM_OK": "The selector publishes one usable key (RSA of 2048 bits or more, or Ed25519).",
        "DKIM_M365_CNAME_MISSING": "Microsoft 365's selector1/selector2 of a custom domain is not a CNAME to the "
        "tenant's key.",
        "DKIM_M365_CNAME_WRONG": "The selector CNAME points at another tenant's, domain's or service's key.",
        "DKIM_KEY_MISSING": "No key record at the selector (or at its CNAME's target).",
        "DKIM_MULTIPLE": "More than one key record at the selector.",
        "DKIM_KEY_INVALID": "The key record is malformed, of an unknown type, not for email, or SHA-1 only.",
        "DKIM_KEY_WEAK": "An RSA key below 1024 bits: verifiers reject its signatures (RFC 8301).",
        "DKIM_KEY_SHORT": "An RSA key below 2048 bits (RFC 8301 recommends 2048).",
        "DKIM_KEY_REVOKED": "A configured selector's key is revoked (empty p=).",
        "DKIM_TESTING": "The key says t=y: the domain is testing DKIM.",
        "DKIM_DNS_ERROR": "A DKIM lookup got no answer.",
    },
)
