"""DMARC (RFC 7489): the record at ``_dmarc.<domain>`` or at the organizational domain (public suffix list), its
policy for the domain and its subdomains, ``pct``, alignment modes, and report destinations in other domains,
which must authorize the reports (RFC 7489 §7.1) or receivers send them nowhere.
"""

from __future__ import annotations

from diag import evidence as ev
from diag.context import CheckContext
from diag.evidence import Evidence, Observed, Section
from diag.frozen import frozen
from diag.model import Finding, Severity
from diag.policy.dmarc import (
    Alignment,
    AuthorizationStatus,
    DmarcDiscovery,
    DmarcIssueKind,
    DmarcPolicy,
    DmarcStatus,
    discover,
)
from diag.policy.lookup import drive, shown
from diag.registry import Check, Outcome

__all__ = ["CHECK", "DmarcFacts", "DmarcReportRow", "DmarcView", "assess", "probe", "view"]


@frozen
class DmarcFacts:
    """What DMARC discovery found, and the public suffix list snapshot it used for organizational domains."""

    discovery: DmarcDiscovery
    psl_snapshot: str = ""


def assess(facts: DmarcFacts) -> tuple[Finding, ...]:
    """Judge the domain's DMARC record; pure."""
    d = facts.discovery
    subject = d.domain
    if d.status is DmarcStatus.NONE:
        where = f"_dmarc.{d.domain}" + (f" or _dmarc.{d.organizational_domain}" if d.organizational_domain !=
                                         d.domain else "")  # fmt: skip
        return (CHECK.finding(
            "DMARC_MISSING", subject,
            f"{d.domain} has no DMARC record (nothing at {where}): receivers apply no policy to mail that forges it, "
            "and the cloud service marks such mail only by its own heuristics.",
            f'Publish a TXT record at _dmarc.{d.domain}: "v=DMARC1; p=none; rua=mailto:..." to start, then '
            "quarantine or reject.",
        ),)  # fmt: skip
    if d.status is DmarcStatus.MULTIPLE:
        return (CHECK.finding(
            "DMARC_MULTIPLE", subject,
            f"_dmarc.{d.found_at or d.domain} holds {len(d.texts)} DMARC records: receivers then apply no DMARC "
            "policy at all (RFC 7489 §6.6.3).", "Keep exactly one v=DMARC1 record.",
        ),)  # fmt: skip
    if d.status is DmarcStatus.DNS_ERROR or d.record is None:
        return (CHECK.finding(
            "DMARC_DNS_ERROR", subject,
            f"DNS gave no answer for the DMARC record of {d.domain} ({shown(d.detail)}); receivers defer judgement "
            "while that lasts.", "Make the domain's nameservers answer for _dmarc names.",
        ),)  # fmt: skip
    record, found = d.record, []
    for issue in record.issues:
        if issue.kind is DmarcIssueKind.PCT_PARTIAL:
            found.append(CHECK.finding(
                "DMARC_PCT_PARTIAL", subject,
                f"The DMARC policy of {d.domain} applies to {record.pct}% of failing mail only (pct={record.pct}).",
                "Raise pct to 100 (or remove it) once the reports show legitimate mail aligned.",
            ))  # fmt: skip
        else:
            found.append(CHECK.finding(
                "DMARC_SYNTAX", subject,
                f"The DMARC record at _dmarc.{d.found_at}: {issue.kind.value}"
                f"{' (' + shown(issue.tag) + ')' if issue.tag else ''}: {shown(issue.detail)}.",
                "Correct the record (RFC 7489 §6.4).",
            ))  # fmt: skip
    policy = record.subdomain_policy if d.inherited else record.policy
    if record.effective_policy is None:
        found.append(CHECK.finding(
            "DMARC_SYNTAX", subject,
            f"The DMARC record at _dmarc.{d.found_at} has no valid p= tag and no report address, so receivers "
            "ignore it (RFC 7489 §6.6.3).", "Add p=none, quarantine or reject.",
        ))  # fmt: skip
    elif (policy or record.effective_policy) is DmarcPolicy.NONE:
        which = f"sp=none of {d.found_at}" if d.inherited else "p=none"
        found.append(CHECK.finding(
            "DMARC_POLICY_NONE", subject,
            f"The DMARC policy of {d.domain} is {which}: failing mail is only reported, never quarantined or "
            "rejected.", "Move to p=quarantine, then p=reject, once the reports show legitimate mail aligned.",
        ))  # fmt: skip
    elif not d.inherited and record.subdomain_policy is DmarcPolicy.NONE:
        found.append(CHECK.finding(
            "DMARC_SUBDOMAIN_NONE", subject,
            f"The DMARC record of {d.domain} asks for {record.policy} but sp=none: mail forging its subdomains "
            "is only reported.", "Set sp to quarantine or reject, or remove it (it then follows p).",
        ))  # fmt: skip
    strict = [name for name, mode in (("adkim", record.adkim), ("aspf", record.aspf)) if mode is Alignment.STRICT]
    if strict:
        found.append(CHECK.finding(
            "DMARC_ALIGNMENT_STRICT", subject,
            f"The DMARC record of {d.domain} asks for strict alignment ({', '.join(f'{n}=s' for n in strict)}): mail "
            "signed or sent from a subdomain (a bounce domain, a newsletter service) fails DMARC.",
            "Keep strict alignment only if every sender uses exactly this domain.",
        ))  # fmt: skip
    for auth in d.authorizations:
        if auth.status is AuthorizationStatus.MISSING:
            found.append(CHECK.finding(
                "DMARC_REPORT_UNAUTHORIZED", subject,
                f"The DMARC {auth.tag} address {shown(auth.uri)} is in another domain, {auth.destination}, which "
                f"publishes no authorization record at {auth.record_name}: receivers send those reports nowhere "
                "(RFC 7489 §7.1).",
                f'Publish "v=DMARC1" as TXT at {auth.record_name}, or report to an address in {d.found_at}.',
            ))  # fmt: skip
        elif auth.status is AuthorizationStatus.DNS_ERROR:
            found.append(CHECK.finding(
                "DMARC_DNS_ERROR", subject,
                f"DNS gave no answer for {auth.record_name}, the authorization of the {auth.tag} address "
                f"{shown(auth.uri)}.", f"Make the nameservers of {auth.destination} answer for it.",
            ))  # fmt: skip
    if not found:
        inherited = f" (inherited from {d.found_at}, sp applies)" if d.inherited else ""
        reports = f"; aggregate reports to {', '.join(shown(u.uri) for u in record.rua)}" if record.rua else ""
        found.insert(0, CHECK.finding(
            "DMARC_OK", subject,
            f"{d.domain} publishes a DMARC policy of {policy or record.effective_policy}{inherited}{reports}.",
        ))  # fmt: skip
    return tuple(found)


async def probe(ctx: CheckContext) -> DmarcFacts:
    psl = await ctx.run.org_domains()
    discovery = await drive(discover(ctx.domain, psl.organizational), ctx.resolver)
    return DmarcFacts(discovery, psl.snapshot)


async def run(ctx: CheckContext) -> Outcome:
    facts = await probe(ctx)
    return Outcome(facts, assess(facts))


# The report's evidence (report_templates/checks/dmarc.html.j2), from the facts as a report holds them (their
# JSON form, read defensively: diag.evidence).

_POLICY_TONES = {DmarcPolicy.REJECT.value: "good", DmarcPolicy.QUARANTINE.value: "good", DmarcPolicy.NONE.value: "warn"}
_ALIGNMENT = {Alignment.RELAXED.value: "relaxed", Alignment.STRICT.value: "strict"}
_AUTHORIZATION = {
    AuthorizationStatus.NOT_NEEDED.value: ("in the domain itself", "good"),
    AuthorizationStatus.AUTHORIZED.value: ("authorized by the receiving domain", "good"),
    AuthorizationStatus.MISSING.value: ("not authorized by the receiving domain: no reports", "bad"),
    AuthorizationStatus.DNS_ERROR.value: ("authorization unknown: no answer from DNS", "unknown"),
}


@frozen
class DmarcReportRow:
    """A report destination (``rua``, ``ruf``) and whether its domain takes the reports (RFC 7489 §7.1)."""

    tag: str
    uri: str
    state: str
    tone: str


@frozen
class DmarcView:
    """The DMARC evidence: where the record was found, as published, and what it asks of receivers.

    ``where`` is in words (``_dmarc.contoso.com``, or the organizational domain's record, or why there is none);
    ``policy`` and ``subdomain_policy`` are the p and sp that apply, with their tone (a CSS token).
    """

    where: str
    where_tone: str
    records: tuple[str, ...]
    policy: str
    policy_tone: str
    subdomain_policy: str
    subdomain_tone: str
    pct: str
    alignment: str
    reports: tuple[DmarcReportRow, ...]
    psl: str


def view(observed: Observed) -> DmarcView:
    facts = observed.facts
    d = ev.mapping(facts.get("discovery"))
    domain, found_at, status = ev.text(d.get("domain")), ev.text(d.get("found_at")), ev.text(d.get("status"))
    record = ev.mapping(d.get("record"))
    if status == DmarcStatus.FOUND.value and found_at:
        inherited = found_at.lower() != domain.lower()
        where = f"_dmarc.{found_at}" + (" (the organizational domain's record applies)" if inherited else "")
        tone = "good"
    else:
        where = {
            DmarcStatus.NONE.value: "no DMARC record",
            DmarcStatus.MULTIPLE.value: f"more than one DMARC record at _dmarc.{found_at or domain}: none applies",
            DmarcStatus.DNS_ERROR.value: f"no answer from DNS: {ev.text(d.get('detail'))}",
        }.get(status, status)
        tone = "bad" if status != DmarcStatus.NONE.value else "warn"
    authorizations = {(ev.text(a.get("tag")), ev.text(a.get("uri"))): ev.text(a.get("status"))
                      for a in ev.mappings(d.get("authorizations"))}  # fmt: skip
    reports = []
    for tag in ("rua", "ruf"):
        for entry in ev.mappings(record.get(tag)):
            uri = ev.text(entry.get("uri"))
            state, report_tone = _AUTHORIZATION.get(authorizations.get((tag, uri), ""), ("not checked", "unknown"))
            reports.append(DmarcReportRow(tag, uri, state, report_tone))
    policy, subdomain = ev.text(record.get("policy")), ev.text(record.get("subdomain_policy"))
    alignment = (f"DKIM {_ALIGNMENT.get(ev.text(record.get('adkim')), ev.text(record.get('adkim')))}, "
                 f"SPF {_ALIGNMENT.get(ev.text(record.get('aspf')), ev.text(record.get('aspf')))}")  # fmt: skip
    return DmarcView(
        where=where,
        where_tone=tone,
        records=tuple(ev.text(t) for t in ev.items(d.get("texts"))),
        policy=policy,
        policy_tone=_POLICY_TONES.get(policy, "bad"),
        subdomain_policy=subdomain,
        subdomain_tone=_POLICY_TONES.get(subdomain, "bad"),
        pct=f"{ev.text(record.get('pct'))} %" if record.get("pct") is not None else "",
        alignment=alignment if record else "",
        reports=tuple(reports),
        psl=ev.text(facts.get("psl_snapshot")),
    )


CHECK = Check(
    id="dmarc",
    title="DMARC record",
    run=run,
    facts=DmarcFacts,
    evidence=Evidence("DMARC policy", view, Section.POLICY),
    operations=3,
    codes={
        "DMARC_OK": Severity.INFO,
        "DMARC_MISSING": Severity.WARNING,
        "DMARC_MULTIPLE": Severity.ERROR,
        "DMARC_SYNTAX": Severity.ERROR,
        "DMARC_DNS_ERROR": Severity.WARNING,
        "DMARC_POLICY_NONE": Severity.NOTICE,
        "DMARC_SUBDOMAIN_NONE": Severity.NOTICE,
        "DMARC_PCT_PARTIAL": Severity.NOTICE,
        "DMARC_ALIGNMENT_STRICT": Severity.NOTICE,
        "DMARC_REPORT_UNAUTHORIZED": Severity.WARNING,
    },
    meanings={
        "DMARC_OK": "One valid DMARC record applies to the domain, with a quarantine or reject policy.",
        "DMARC_MISSING": "No DMARC record at _dmarc of the domain or of its organizational domain.",
        "DMARC_MULTIPLE": "More than one DMARC record where receivers look: no DMARC policy applies.",
        "DMARC_SYNTAX": "The DMARC record has a malformed tag, a bad value or no usable policy.",
        "DMARC_DNS_ERROR": "A DMARC lookup got no answer.",
        "DMARC_POLICY_NONE": "The policy (or the inherited sp) is none: failing mail is only reported.",
        "DMARC_SUBDOMAIN_NONE": "p is quarantine or reject, but sp=none leaves subdomains unprotected.",
        "DMARC_PCT_PARTIAL": "pct below 100: the policy applies to a sample of failing mail only.",
        "DMARC_ALIGNMENT_STRICT": "Strict alignment (adkim=s or aspf=s): mail from subdomains fails DMARC.",
        "DMARC_REPORT_UNAUTHORIZED": "A rua/ruf address in another domain without its authorization record "
        "(RFC 7489 §7.1).",
    },
)
