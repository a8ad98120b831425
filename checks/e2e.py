"""End to end: the organization's ``[[Probe]]`` tables, sent along the real paths and watched for (ARCHITECTURE §7).

Active when ``diag check`` gets a ``--config`` with probes: the probes whose From or To is in the checked domain
run concurrently with the other checks, each within its own ``Deadline`` (the check's budget grows by the longest
one). A probe that concerns two checked domains is sent once and reported under both. ``diag probe`` runs the
same check on probes given on its command line.

The probing lives in :mod:`diag.probe.run`; here its facts become findings, one or more per probe: how it ended
(delivered, rejected at once, bounced, not seen by the deadline) and, for a delivered probe, what the judge found
on the way (a hop without TLS, another route than ``diag route`` predicts, slow, in the junk folder). A mailbox
that cannot be read is ``E2E_WATCH_FAILED``, and the check then ends ``error``: the other probes' findings stand,
but what that probe would have shown is unknown (exit 3 unless something critical was found).

A probe sent less than its ``MinInterval`` ago (by any diag process of the user: security-cases.md PR-08) is not
sent again: ``E2E_NOT_SENT``, a notice, and never a pass. The run that sent it reported what it found; a cron job
that runs more often than the interval is not a problem of the mail flow, so the check stays ``completed`` (a
``skipped`` check would make every such run unknown). When the record of sends cannot be kept at all, the probe
is held back too, and the check ends ``error`` with the reason.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, assert_never

from diag import evidence as ev
from diag.config import MAX_PROBES
from diag.context import CheckContext, RunOptions
from diag.evidence import Evidence, Measurements, MessagePath, Observed, PathHop, ProbeArrival
from diag.frozen import frozen
from diag.model import Finding, Severity
from diag.probe.facts import E2eFacts, Held, ProbeFacts, Verdict
from diag.probe.facts import Outcome as Judged
from diag.registry import Check, Outcome

__all__ = ["CHECK", "E2eView", "assess", "measure", "probe", "probe_findings", "view"]

# The cloud's own texts for what a refusal or a bounce says (exchange-model.md §10), matched by enhanced status
# code, with what to do about each.
_ADVICE = {
    "5.7.64": (
        "550 5.7.64 TenantAttribution; Relay Access Denied",
        "The cloud did not attribute the message to the organization: make an OnPremises inbound connector "
        "recognise the sending server (TlsSenderCertificateName matching its certificate, or its public address in "
        "SenderIPAddresses), and send from an accepted domain.",
    ),
    "5.7.1": (None, "The server refused the sender or recipient: check that the From address may send through "
              "it (authentication, relay rights) and that the recipient exists."),
    "5.1.1": (None, "The recipient does not exist there: check the To address and that its mailbox is set up."),
    "4.4.7": (None, "The message waited in a queue until it expired: look at the reporting server's queue and at "
              "why its next hop did not take it (the Diagnostic-Code)."),
}
_TLS_ADVICE = (
    "Enable STARTTLS on the server that received this hop, and have its sender require it (a connector's "
    "TlsSettings, the on-premises send connector's RequireTLS)."
)


def _subject(probe: ProbeFacts) -> str:
    return f"{probe.name} via {probe.via}"


def _path(probe: ProbeFacts) -> str:
    return f"{probe.sender} to {probe.recipient}"


def _status_code(text: str) -> str | None:
    for word in text.replace(";", " ").replace("[", " ").split():
        parts = word.strip(".,()").split(".")
        if len(parts) == 3 and parts[0] in ("2", "4", "5") and all(part.isdigit() for part in parts):
            return ".".join(parts)
    return None


def _advice(text: str) -> tuple[str | None, str]:
    return _ADVICE.get(_status_code(text) or "", (None, ""))


def _verdict_finding(probe: ProbeFacts, verdict: Verdict) -> Finding:
    subject, path, detail = _subject(probe), _path(probe), verdict.detail
    match verdict.outcome:
        case Judged.DELIVERED:
            hops = len(probe.hops)
            latency = f"{probe.latency_s:.1f} s" if probe.latency_s is not None else "an unknown time"
            trip = ""
            if probe.reflected is not None:
                legs = probe.reflected
                there, back = (f"{s:.1f} s" if s is not None else "an unknown time"
                               for s in (legs.there_s, legs.back_s))  # fmt: skip
                trip = (f" It went there in {there} ({legs.there_hops} hops) to the reflector "
                        f"{legs.reflector or '(unnamed)'}, whose answer came back in {back}.")  # fmt: skip
            return CHECK.finding(
                "E2E_DELIVERED", subject,
                f"The probe from {path} arrived in {probe.folder} of {probe.watch} {latency} after {probe.via} "
                f"accepted it, over {hops} {'hop' if hops == 1 else 'hops'}.{trip}",
            )  # fmt: skip
        case Judged.REJECTED:
            refused = probe.refused
            stage = f" at {refused.stage.value.upper()}" if refused is not None else ""
            cloud_error, remediation = _advice(detail)
            coded = refused is not None and refused.code is not None
            return CHECK.finding(
                "E2E_REJECTED", subject, f"{probe.via} refused the probe from {path}{stage}: {detail}",
                remediation or "Make the server named in Via accept mail from this sender to this recipient, "
                "then run the probe again.",
                cloud_error=cloud_error or (detail if coded else None),
            )  # fmt: skip
        case Judged.BOUNCED:
            failed = probe.bounce.failed if probe.bounce is not None else None
            diagnostic = (failed.diagnostic_code or "") if failed is not None else ""
            cloud_error, remediation = _advice(f"{failed.status if failed else ''} {diagnostic}")
            return CHECK.finding(
                "E2E_BOUNCED", subject,
                f"{probe.via} accepted the probe from {path}, but a delivery status notification for it reached "
                f"{probe.watch}: {detail}.",
                remediation or "Follow the Diagnostic-Code to the server that gave up on the message and fix what it "
                "names; then run the probe again.",
                cloud_error=cloud_error or (diagnostic or None),
            )  # fmt: skip
        case Judged.TIMEOUT:
            where = f"{probe.accepted_at:%Y-%m-%d %H:%M:%S} UTC" if probe.accepted_at is not None else "an unknown time"
            return CHECK.finding(
                "E2E_TIMEOUT", subject,
                f"The probe from {path} was not seen in {probe.watch} within {probe.deadline_s:g} s; last known: "
                f"accepted by {probe.via} at {where}.",
                "Follow it from there: the queue of the server that accepted it, its smart host or connector (a "
                "server that cannot be reached keeps the message queued and retries), the message trace.",
            )  # fmt: skip
        case Judged.TLS_MISSING:
            return CHECK.finding("E2E_TLS_MISSING", subject, f"The probe from {path}: {detail}.", _TLS_ADVICE)
        case Judged.WRONG_ROUTE:
            return CHECK.finding(
                "E2E_WRONG_ROUTE", subject, f"The probe from {path} took another route than diag route predicts: "
                f"{detail}.",
                "Compare the connectors of the configuration given with --config with the cloud's "
                "(Get-OutboundConnector, Get-InboundConnector): one of them is not what you think.",
            )  # fmt: skip
        case Judged.SLOW:
            return CHECK.finding(
                "E2E_SLOW", subject, f"The probe from {path} {detail}.",
                "Look at the delays between the hops (the report's path of the message) to see where it waited.",
            )
        case Judged.JUNK:
            return CHECK.finding(
                "E2E_JUNK", subject, f"The probe from {path} {detail} of {probe.watch}.",
                "Check the spam verdict headers of the message in the junk folder; mail from the on-premises servers "
                "should arrive through the inbound connector, which the cloud trusts (SPF, DKIM and the connector).",
            )  # fmt: skip
        case _:
            assert_never(verdict.outcome)


def _held_finding(probe: ProbeFacts, held: Held) -> Finding:
    if held.problem:
        return CHECK.finding(
            "E2E_NOT_SENT", _subject(probe), f"The probe from {_path(probe)} was not sent: {held.problem}.",
            "Let this user create and replace files in the record's directory (beside the history database; diag "
            "check --history puts it beside another), or remove what stands in the record's place.",
        )  # fmt: skip
    age = f"{held.age_s:.0f} s" if held.age_s is not None else "less than MinInterval"
    return CHECK.finding(
        "E2E_NOT_SENT", _subject(probe),
        f"The probe from {_path(probe)} was not sent: the same probe was sent {age} ago (MinInterval "
        f"{probe.min_interval_s:g} s).",
        "Nothing is wrong with the mail flow: the run that sent it reported what it found. Schedule the runs "
        "further apart than MinInterval, or lower MinInterval in its [[Probe]] table (--min-interval on the "
        "command line) for a test organization.",
    )  # fmt: skip


def probe_findings(probe: ProbeFacts) -> list[Finding]:
    """The findings of one probe; pure."""
    found: list[Finding] = []
    if probe.held is not None:
        found.append(_held_finding(probe, probe.held))
        return found
    if probe.watch_error and not probe.submitted:
        found.append(CHECK.finding(
            "E2E_WATCH_FAILED", _subject(probe),
            f"The mailbox of the probe from {_path(probe)} cannot be watched, so the probe was not sent: "
            f"{probe.watch_error}",
            "Fix the Watch URL or the mailbox's credentials (the variable WatchPasswordEnv names, DIAG_WATCH_TOKEN).",
        ))  # fmt: skip
        return found
    if probe.watch_error:
        found.append(CHECK.finding(
            "E2E_WATCH_FAILED", _subject(probe),
            f"The probe from {_path(probe)} was accepted by {probe.via}, then its mailbox could no longer be read: "
            f"{probe.watch_error}",
            "Check that the mailbox server stays reachable and the credentials stay valid during the Deadline.",
        ))  # fmt: skip
        return found
    found.extend(_verdict_finding(probe, verdict) for verdict in probe.verdicts)
    for line in probe.cleanup:
        found.append(CHECK.finding(
            "E2E_CLEANUP_FAILED", _subject(probe), f"Not removed from {probe.watch}: {line}.",
            "Remove it by hand, and give the watching user the right to delete in that folder (a read-only folder or "
            "a retention hold keeps it).",
        ))  # fmt: skip
    return found


def assess(facts: E2eFacts) -> tuple[Finding, ...]:
    """Judge the probes that concern one domain; pure."""
    return tuple(finding for probe in facts.probes for finding in probe_findings(probe))


def _waits(options: RunOptions) -> float:
    """The longest Deadline of the organization's probes: what the check may wait for arrivals."""
    probes = options.organization.probes if options.organization is not None else ()
    return max((probe.deadline for probe in probes), default=0.0)


async def probe(ctx: CheckContext) -> E2eFacts | None:
    """Send the probes that concern the domain and watch for them (:func:`diag.probe.run.execute`); None when no
    probe concerns it."""
    org = ctx.options.organization
    probes = [probe for probe in org.probes if probe.concerns(ctx.domain)] if org is not None else []
    if not probes:
        return None
    # The sender, the watchers and the judge load here, for a run that sends probes (issue 13: start-up).
    from diag.probe.run import ProbeSetup, execute

    setup = ProbeSetup.of(ctx.options, ctx.resolver)
    # Shared in the run: a probe from one checked domain to another is sent once (asyncio.shield: one domain's
    # check timing out does not cancel the probe the other one waits for).
    shared = [ctx.run.once(("e2e", probe.name), functools.partial(execute, probe, setup)) for probe in probes]
    return E2eFacts(tuple(await asyncio.gather(*(asyncio.shield(future) for future in shared))))


async def run(ctx: CheckContext) -> Outcome:
    org = ctx.options.organization
    if org is not None and len(org.probes) > MAX_PROBES:
        # The loader refuses such a configuration; one built in code is held to the same cap (PR-08).
        return Outcome.skip(f"config: {len(org.probes)} probes, more than the {MAX_PROBES} a run may send")
    facts = await probe(ctx)
    if facts is None:
        return Outcome.inapplicable(f"no [[Probe]] is sent from or to {ctx.domain}")
    unseen = [f"watch: {probe.watch_error}" for probe in facts.probes if probe.watch_error]
    unseen += [f"record: {probe.held.problem}" for probe in facts.probes if probe.held and probe.held.problem]
    incomplete = None
    if unseen:
        more = f" (and {len(unseen) - 1} more)" if len(unseen) > 1 else ""
        incomplete = f"{unseen[0]}{more}"
    return Outcome(facts, assess(facts), incomplete=incomplete)


# The report's evidence (report_templates/checks/e2e.html.j2) and the monitoring measurements, from the facts as a
# report holds them (their JSON form, read defensively: diag.evidence).


@frozen
class E2eView:
    """The end-to-end evidence: a path per probe."""

    paths: tuple[MessagePath, ...]


def _path_hop(number: int, hop: Mapping[str, Any]) -> PathHop:
    version = " · ".join(ev.text(hop.get(key)) for key in ("tls_version", "tls_cipher") if hop.get(key))
    tls = hop.get("tls")
    sender = " ".join(part for part in (ev.text(hop.get("from_host")),
                                        f"[{ev.text(hop.get('ip'))}]" if hop.get("ip") else "") if part)  # fmt: skip
    facts = [f"from {sender}" if sender else "", ev.text(hop.get("protocol")), ev.text(hop.get("at"))]
    delay, skew = ev.number(hop.get("delay_s")), ev.number(hop.get("skew_s"))
    if delay is not None:
        facts.append(f"+{delay:.0f} s")
    if skew is not None:
        facts.append(f"its clock {skew:.0f} s behind the previous hop's")
    return PathHop(
        number=number, host=ev.text(hop.get("by_host")), address="",
        tls=version or ("yes" if tls is True else "no" if tls is False else ""), connector="",
        detail="; ".join(fact for fact in facts if fact),
    )  # fmt: skip


def view(observed: Observed) -> E2eView | None:
    paths = []
    for probe in ev.mappings(observed.facts.get("probes")):
        verdicts = ev.mappings(probe.get("verdicts"))
        ended = f" ({ev.text(verdicts[0].get('outcome'))})" if verdicts and verdicts[0].get("outcome") else ""
        hops = [_path_hop(number, hop) for number, hop in enumerate(ev.mappings(probe.get("hops")), 1)]
        if not hops and probe.get("accepted_at"):
            last = f"accepted at {ev.text(probe.get('accepted_at'))}; not seen in the watched mailbox since"
            hops.append(PathHop(1, ev.text(probe.get("via")), "", "", "", last))
        reflected = ev.mapping(probe.get("reflected"))
        turn = ev.number(reflected.get("there_hops")) if reflected else None
        if turn is not None and 1 <= turn <= len(hops):
            # The way there ends at the reflector: its answer travels the rest of the path back.
            at = int(turn) - 1
            hops[at] = replace(hops[at], detail="; ".join(filter(None, (hops[at].detail, "the reflector answered"))))
            ended += " · round trip"
        if hops:
            paths.append(MessagePath(f"{ev.text(probe.get('name'))}{ended}", tuple(hops)))
    return E2eView(tuple(paths)) if paths else None


def measure(facts: Mapping[str, Any]) -> Measurements:
    """How each probe that was sent fared: delivered or not, its latency, its Slow and Deadline."""
    arrivals = tuple(
        ProbeArrival(
            name=ev.text(probe.get("name")), delivered=probe.get("delivered") is True,
            latency=ev.number(probe.get("latency_s")), slow=ev.number(probe.get("slow_s")),
            deadline=ev.number(probe.get("deadline_s")),
        )
        for probe in ev.mappings(facts.get("probes"))
        if probe.get("accepted") is not None or probe.get("refused") is not None
    )  # fmt: skip
    return Measurements(probes=arrivals)


CHECK = Check(
    id="e2e",
    title="End to end",
    run=run,
    tags=frozenset({"config", "active"}),
    timeout=10.0,
    # Per probe, concurrently: the MX and its address, the watcher's connect, TLS, login, folders and mark, the
    # submission's connect, greeting, EHLO, STARTTLS, EHLO, AUTH, MAIL, RCPT, DATA, then reading and removing.
    operations=18,
    waits=_waits,
    facts=E2eFacts,
    evidence=Evidence("message path", view),
    measure=measure,
    codes={
        "E2E_DELIVERED": Severity.INFO,
        "E2E_REJECTED": Severity.CRITICAL,
        "E2E_BOUNCED": Severity.CRITICAL,
        "E2E_TIMEOUT": Severity.CRITICAL,
        "E2E_TLS_MISSING": Severity.ERROR,
        "E2E_WRONG_ROUTE": Severity.ERROR,
        "E2E_SLOW": Severity.WARNING,
        "E2E_JUNK": Severity.WARNING,
        "E2E_WATCH_FAILED": Severity.WARNING,
        "E2E_CLEANUP_FAILED": Severity.WARNING,
        "E2E_NOT_SENT": Severity.NOTICE,
    },
    meanings={
        "E2E_DELIVERED": "The probe arrived in the watched mailbox; its latency and hops are in the facts.",
        "E2E_REJECTED": "The server named in Via refused the probe at once (the reply is in the message).",
        "E2E_BOUNCED": "A delivery status notification for the probe reached the watched mailbox.",
        "E2E_TIMEOUT": "The probe was not seen by its Deadline; the message says where it was last known.",
        "E2E_TLS_MISSING": "A hop between servers had no TLS, or weaker TLS than the connector's TlsSettings demand.",
        "E2E_WRONG_ROUTE": "The probe arrived through another connector or host than diag route predicts.",
        "E2E_SLOW": "The probe arrived, but later than its Slow threshold.",
        "E2E_JUNK": "The probe arrived in the junk or spam folder.",
        "E2E_WATCH_FAILED": "The watched mailbox could not be read (login refused, folder missing): the check ends "
        "error.",
        "E2E_CLEANUP_FAILED": "The probe or its DSN could not be removed from the watched mailbox.",
        "E2E_NOT_SENT": "The probe was not sent: the same probe was sent less than its MinInterval ago (or the record "
        "of sends could not be kept, and the check ends error).",
    },
)
