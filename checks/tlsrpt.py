"""TLS-RPT (RFC 8460): the ``_smtp._tls`` record that tells senders where to report TLS failures: its syntax and
its report URIs (``mailto:`` with an address, or ``https:``).

TLS-RPT is optional: a domain without it is told so as a notice, since without reports an MTA-STS or DANE
failure stays unseen by the domain's owner.
"""

from __future__ import annotations

from diag import evidence as ev
from diag.context import CheckContext
from diag.evidence import Evidence, Observed, Section
from diag.frozen import frozen
from diag.model import Finding, Severity
from diag.policy.lookup import drive, shown
from diag.policy.tlsrpt import RptIssue, RptStatus, TlsRptFacts, discover
from diag.registry import Check, Outcome

__all__ = ["CHECK", "TlsRptView", "assess", "probe", "view"]


def assess(facts: TlsRptFacts) -> tuple[Finding, ...]:
    """Judge the domain's TLS-RPT record; pure."""
    subject, name = facts.domain, f"_smtp._tls.{facts.domain}"
    if facts.status is RptStatus.NONE:
        return (CHECK.finding(
            "TLSRPT_MISSING", subject,
            f"{facts.domain} publishes no TLS-RPT record at {name}: senders cannot report failed TLS deliveries to "
            "it, so an MTA-STS or DANE problem goes unnoticed.",
            f'Publish "v=TLSRPTv1; rua=mailto:tls-reports@{facts.domain}" as TXT at {name}.',
        ),)  # fmt: skip
    if facts.status is RptStatus.MULTIPLE:
        return (CHECK.finding(
            "TLSRPT_MULTIPLE", subject,
            f"{name} holds {len(facts.texts)} TLS-RPT records: senders then send no reports (RFC 8460 §3).",
            "Keep exactly one v=TLSRPTv1 record.",
        ),)  # fmt: skip
    if facts.status is RptStatus.DNS_ERROR or facts.record is None:
        return (CHECK.finding(
            "TLSRPT_DNS_ERROR", subject, f"DNS gave no answer for {name} ({shown(facts.detail)}).",
            "Make the domain's nameservers answer for it.",
        ),)  # fmt: skip
    record = facts.record
    found = []
    for kind, detail in record.issues:
        code = "TLSRPT_BAD_URI" if kind in (RptIssue.BAD_URI, RptIssue.NO_RUA) else "TLSRPT_SYNTAX"
        found.append(CHECK.finding(
            code, subject, f"The TLS-RPT record at {name}: {shown(detail)}.",
            "List report addresses as rua=mailto:address or rua=https://host/path (RFC 8460 §3).",
        ))  # fmt: skip
    if not found:
        destinations = ", ".join(shown(uri.uri) for uri in record.rua)
        found.append(CHECK.finding("TLSRPT_OK", subject, f"{facts.domain} asks for TLS reports to {destinations}."))
    return tuple(found)


async def probe(ctx: CheckContext) -> TlsRptFacts:
    return await drive(discover(ctx.domain), ctx.resolver)


async def run(ctx: CheckContext) -> Outcome:
    facts = await probe(ctx)
    return Outcome(facts, assess(facts))


# The report's evidence (report_templates/checks/tlsrpt.html.j2), from the facts as a report holds them (their
# JSON form, read defensively: diag.evidence).

_STATES = {
    RptStatus.NONE.value: ("no TLS-RPT record", "warn"),
    RptStatus.MULTIPLE.value: ("more than one TLS-RPT record: senders send no reports", "bad"),
    RptStatus.DNS_ERROR.value: ("no answer from DNS", "bad"),
}


@frozen
class TlsRptView:
    """The TLS-RPT evidence: the record as published, what is wrong with it, and each report URI with whether
    senders can use it (``(uri, usable)``)."""

    records: tuple[str, ...]
    state: str
    tone: str
    problems: tuple[str, ...]
    uris: tuple[tuple[str, bool], ...]


def view(observed: Observed) -> TlsRptView:
    facts = observed.facts
    record = ev.mapping(facts.get("record"))
    state, tone = _STATES.get(ev.text(facts.get("status")), ("", "good"))
    problems = tuple(": ".join(ev.text(part) for part in ev.items(issue)) for issue in ev.items(record.get("issues")))
    if problems and not state:
        state, tone = "malformed", "bad"
    return TlsRptView(
        records=tuple(ev.text(t) for t in ev.items(facts.get("texts"))),
        state=state,
        tone=tone,
        problems=problems,
        uris=tuple((ev.text(u.get("uri")), u.get("usable") is True) for u in ev.mappings(record.get("rua"))),
    )


CHECK = Check(
    id="tlsrpt",
    title="TLS-RPT record",
    run=run,
    facts=TlsRptFacts,
    evidence=Evidence("TLS-RPT record", view, Section.POLICY),
    operations=1,
    codes={
        "TLSRPT_OK": Severity.INFO,
        "TLSRPT_MISSING": Severity.NOTICE,
        "TLSRPT_MULTIPLE": Severity.WARNING,
        "TLSRPT_SYNTAX": Severity.WARNING,
        "TLSRPT_BAD_URI": Severity.WARNING,
        "TLSRPT_DNS_ERROR": Severity.WARNING,
    },
    meanings={
        "TLSRPT_OK": "One valid TLS-RPT record with usable report URIs.",
        "TLSRPT_MISSING": "No TLS-RPT record: TLS delivery failures are not reported to the domain.",
        "TLSRPT_MULTIPLE": "More than one TLS-RPT record: senders send no reports.",
        "TLSRPT_SYNTAX": "The TLS-RPT record is malformed.",
        "TLSRPT_BAD_URI": "A rua entry is neither mailto:address nor https://host/, or none is usable.",
        "TLSRPT_DNS_ERROR": "The TLS-RPT lookup got no answer.",
    },
)
