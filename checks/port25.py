"""Port 25: every address of every MX host accepts a connection, greets and answers EHLO.

One SMTP session per address (shared with the starttls and certificate checks) records the facts; this check
judges the connection, the greeting (RFC 5321 §3.1, §4.2: 421 and 554 greetings) and EHLO (§4.1.1.1).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

from checks.mx import MxFacts
from diag import evidence as ev
from diag.context import NOT_PUBLIC, CheckContext
from diag.evidence import STAGES, Evidence, Measurements, Observed, StageTimes
from diag.frozen import frozen
from diag.model import CheckResult, Finding, Severity, Status
from diag.net.smtp_facts import SessionError, SessionFacts, SessionStage
from diag.registry import Check, Outcome, Summary

__all__ = [
    "CHECK",
    "NULL_MX",
    "SUMMARY",
    "Bar",
    "NotProbed",
    "Port25Facts",
    "Port25View",
    "Probed",
    "Segment",
    "SessionView",
    "assess",
    "measure",
    "probe",
    "view",
]


NULL_MX = "the domain accepts no mail (null MX)"
"""Why port25 (and the checks that read its sessions) do not apply to a domain with a null MX only."""


@frozen
class NotProbed:
    """An MX address that was deliberately not contacted, and why: ``"not a public address"``, or
    ``"over N addresses"`` when its host lists more than ``RunOptions.max_addresses_per_host``."""

    host: str
    ip: str
    why: str


@frozen
class Probed:
    """One MX address of the domain and the session held with it.

    Attributes:
        host: the MX host name this domain reaches the address by (what its certificate must name).
        session: the session's facts; shared with every other domain that reaches the same address.
    """

    host: str
    session: SessionFacts

    @property
    def endpoint(self) -> str:
        """``host [ip]:port``: how findings name their subject."""
        ip = self.session.ip
        return f"{self.host} [{ip}]:{self.session.port}"


@frozen
class Port25Facts:
    """The SMTP sessions at every MX address, in MX preference order.

    Attributes:
        probed: one per address probed.
        not_probed: addresses left alone: not public (without ``--allow-private``) or over the per-host cap.
    """

    probed: tuple[Probed, ...]
    not_probed: tuple[NotProbed, ...] = ()


async def probe(ctx: CheckContext) -> Port25Facts | None:
    mx = ctx.facts("mx", MxFacts)
    options = ctx.options
    targets: list[tuple[str, str]] = []  # (host, ip): one session per address, named after its first host
    seen: set[str] = set()
    not_probed: list[NotProbed] = []
    for host in mx.hosts:
        for index, ip in enumerate(host.addresses):
            if ip in seen:
                continue
            why = options.not_probed(ip, index)
            if why is not None:
                not_probed.append(NotProbed(host.name, ip, why))
            else:
                seen.add(ip)
                targets.append((host.name, ip))
    if not targets and not not_probed:
        return None
    sessions = await asyncio.gather(*(ctx.run.smtp_session(ip, name) for name, ip in targets))
    probed = tuple(Probed(name, session) for (name, _), session in zip(targets, sessions, strict=True))
    return Port25Facts(probed, tuple(not_probed))


def assess(facts: Port25Facts) -> tuple[Finding, ...]:
    """Judge each session; pure."""
    found: list[Finding] = []
    over_cap: dict[str, list[NotProbed]] = {}
    for item in facts.not_probed:
        if item.why == NOT_PUBLIC:
            found.append(CHECK.finding(
                "SMTP_TARGET_NOT_PUBLIC", f"{item.host} [{item.ip}]",
                f"The MX host {item.host} resolves to {item.ip}, which is not a public address; it was not probed, "
                "and senders on the Internet cannot reach it.",
                "Publish the host's public address in DNS, or run diag with --allow-private to probe it anyway.",
            ))  # fmt: skip
        else:
            over_cap.setdefault(item.host, []).append(item)
    for host, items in over_cap.items():
        # A hostile or broken zone can hide a bad address behind many good ones: unchecked is not "passed".
        shown = ", ".join(item.ip for item in items[:3]) + (", ..." if len(items) > 3 else "")
        found.append(CHECK.finding(
            "SMTP_ADDRESSES_NOT_PROBED", host,
            f"The MX host {host} lists more addresses than diag probes per host ({items[0].why}): "
            f"{len(items)} of them ({shown}) were not checked, and senders may be sent to any of them.",
            "Publish only the addresses that serve mail for this host; a mail host normally has a few.",
        ))  # fmt: skip
    for probed in facts.probed:
        found.append(_assess_session(probed))
    return tuple(found)


def _assess_session(probed: Probed) -> Finding:
    s, subject = probed.session, probed.endpoint
    match s.error:
        case SessionError.REFUSED:
            return CHECK.finding(
                "SMTP_CONNECT_REFUSED", subject,
                f"{subject} refuses connections: nothing listens on port {s.port}, or a firewall rejects them.",
                "Start the SMTP service on that address or open port 25 to the cloud service's addresses.",
                cloud_error="450 4.4.316 Connection refused [Message=Socket error code 10061]",
            )  # fmt: skip
        case SessionError.CONNECT_TIMEOUT:
            return CHECK.finding(
                "SMTP_CONNECT_TIMEOUT", subject,
                f"{subject} does not answer connection attempts ({s.detail}); packets are probably dropped.",
                "Check that the host is up and that firewalls allow inbound TCP port 25 from the cloud service.",
                cloud_error="450 4.4.315 Connection timed out",
            )  # fmt: skip
        case SessionError.UNREACHABLE:
            return CHECK.finding(
                "SMTP_CONNECT_FAILED", subject,
                f"{subject} cannot be reached from here: {s.detail}.",
                "Check routing to that address (an IPv6 address needs IPv6 connectivity on both sides).",
            )  # fmt: skip
        case SessionError.BANNER_TIMEOUT:
            return CHECK.finding(
                "SMTP_BANNER_TIMEOUT", subject,
                f"{subject} accepts the TCP connection but never sends its SMTP greeting ({s.detail}).",
                "Check the SMTP service: it may be overloaded or hung, or a proxy or firewall may hold the "
                "connection (a tarpit).",
                cloud_error="450 4.4.315 Connection timed out",
            )  # fmt: skip
        case SessionError.GREETING_REJECTED:
            # An endless multi-line greeting is judged by its code all the same (RFC 5321 §4.2.1); its first
            # line stands for it.
            shown = s.greeting.splitlines()[0] if s.greeting_unfinished and s.greeting else s.greeting
            text = f"{s.greeting_code} {shown}".strip()
            how = " in a multi-line reply that never ends" if s.greeting_unfinished else ""
            limited = s.greeting_code == 421
            return CHECK.finding(
                "SMTP_GREETING_REJECT", subject,
                (f"{subject} greets with 421{how}: it is rate limiting or refusing connections for now ({text})."
                 if limited else f"{subject} refuses the session in its greeting{how} ({text})."),
                ("Check the server's connection limits and whether it blocks the cloud service's addresses."
                 if limited else "Allow the cloud service's addresses on the server's receive connector."),
                cloud_error=f"450 4.4.317 Cannot connect to remote server [Message={text}]",
            )  # fmt: skip
        case SessionError.EHLO_REJECTED if not s.answered_ehlo:  # (after STARTTLS it is the starttls check's)
            return CHECK.finding(
                "SMTP_EHLO_REJECTED", subject,
                f"{subject} rejects EHLO and HELO ({s.detail}).",
                "Check the receive connector's HELO/EHLO restrictions.",
                cloud_error="450 4.4.317 Cannot connect to remote server",
            )  # fmt: skip
        case SessionError.DISCONNECTED if s.reached is SessionStage.CONNECT:
            return CHECK.finding(
                "SMTP_SESSION_FAILED", subject,
                f"{subject} closes the connection before greeting ({s.detail}).",
                "Check the SMTP service and any proxy or firewall in front of it.",
                cloud_error="450 4.4.318 Connection was closed abruptly",
            )  # fmt: skip
        case SessionError.TIMEOUT | SessionError.DISCONNECTED | SessionError.PROTOCOL if (
            s.reached is SessionStage.BANNER
        ):
            return CHECK.finding(
                "SMTP_SESSION_FAILED", subject,
                f"{subject} greets but fails at EHLO ({s.error.value}: {s.detail}).",
                "Check the SMTP service and any SMTP-inspecting firewall in front of it.",
                cloud_error="450 4.4.318 Connection was closed abruptly",
            )  # fmt: skip
    if s.helo_fallback:
        return CHECK.finding(
            "SMTP_EHLO_REJECTED", subject,
            f"{subject} rejects EHLO and accepts only HELO: it offers no SMTP extensions, so no STARTTLS.",
            "Enable ESMTP (EHLO) on the receive connector.",
            cloud_error="450 4.4.317 Cannot connect to remote server",
        )  # fmt: skip
    return CHECK.finding(
        "SMTP_OK", subject,
        f"{subject} accepts connections, greets with {s.greeting_code} and answers EHLO.",
    )


_Note = tuple[tuple[SessionError | None, int], ...]


def _note(result: CheckResult) -> _Note:
    """What a domain's result tells about egress: how each of its sessions ended, and on which port."""
    if not isinstance(result.facts, Port25Facts):
        return ()
    return tuple((p.session.error, p.session.port) for p in result.facts.probed)


def _revise(notes: Sequence[Hashable]) -> Callable[[CheckResult], CheckResult] | None:
    """SMTP_EGRESS_BLOCKED: when every address probed in the whole run timed out connecting (none refused,
    none answered), outbound port 25 is blocked from *this* host (common on cloud VMs and home lines), so the
    targets are not to blame: every such result becomes "could not run", with the explanation."""
    sessions = [session for note in notes for session in cast(_Note, note)]
    if not sessions or any(error is not SessionError.CONNECT_TIMEOUT for error, _port in sessions):
        return None
    port = sessions[0][1]

    def blocked(result: CheckResult) -> CheckResult:
        if not isinstance(result.facts, Port25Facts) or not result.facts.probed:
            return result
        finding = CHECK.finding(
            "SMTP_EGRESS_BLOCKED", ", ".join(p.endpoint for p in result.facts.probed),
            f"Every connection to port {port} timed out, for every domain of this run: outbound "
            "port 25 is most likely blocked from the host diag runs on, so these servers could not be judged.",
            "Run diag from a host that may connect out on port 25 (many cloud providers and ISPs block it), "
            "or ask for the block to be lifted.",
        )  # fmt: skip
        return replace(
            result, status=Status.ERROR, reason="egress: outbound port 25 appears blocked from this host",
            findings=(finding,),
        )  # fmt: skip

    return blocked


SUMMARY = Summary(_note, _revise)
"""The run-wide egress verdict (:class:`~diag.registry.Summary`)."""


# The report's evidence (report_templates/checks/port25.html.j2) and the stage timings monitoring exports, from
# the facts as a report holds them.

_STAGE_LABELS = {"connect": "TCP connect", "banner": "greeting", "ehlo": "EHLO", "tls": "STARTTLS and handshake"}
# Width of the widest timing bar and height of every bar, in CSS pixels.
_BAR_WIDTH = 260
_BAR_HEIGHT = 14


@frozen
class Segment:
    """One stage of a timing bar: where it starts and how wide it is (CSS pixels), and its milliseconds."""

    stage: str
    label: str
    x: str
    width: str
    ms: str


@frozen
class Bar:
    """A session's stage timings as a horizontal stacked bar (inline SVG)."""

    width: str
    height: str
    segments: tuple[Segment, ...]
    total_ms: str
    summary: str


@frozen
class SessionView:
    """One SMTP session: where, how it ended (a CSS token and its words), its timings and what the server said."""

    endpoint: str
    outcome: str
    outcome_label: str
    detail: str
    bar: Bar | None
    greeting: str
    extensions: tuple[str, ...]
    tls: str
    transcript: tuple[str, ...]


@frozen
class Port25View:
    """The sessions at every MX address, the addresses left alone and why, and the stages the bars show."""

    sessions: tuple[SessionView, ...]
    not_probed: tuple[tuple[str, str], ...]
    stages: tuple[tuple[str, str], ...] = tuple(_STAGE_LABELS.items())


def view(observed: Observed) -> Port25View | None:
    probed = [(ev.text(p.get("host")), ev.mapping(p.get("session"))) for p in ev.mappings(observed.facts.get("probed"))]
    # The bars share one scale: the slowest session of the domain fills its bar.
    longest = max((sum(sec for _, _, sec in _stages(s)) for _, s in probed), default=0.0)
    sessions = tuple(_session(host, s, longest) for host, s in probed)
    not_probed = tuple(
        (f"{ev.text(n.get('host'))} [{ev.text(n.get('ip'))}]", ev.text(n.get("why")))
        for n in ev.mappings(observed.facts.get("not_probed"))
    )
    if not sessions and not not_probed:
        return None
    return Port25View(sessions, not_probed)


def _session(host: str, s: Mapping[str, Any], longest: float) -> SessionView:
    outcome, label = ev.outcome(s)
    code = s.get("greeting_code")
    greeting = ev.text(s.get("greeting"))
    return SessionView(
        endpoint=ev.endpoint(host, s),
        outcome=outcome,
        outcome_label=label,
        detail=ev.text(s.get("detail")) if ev.text(s.get("error")) else "",
        bar=_bar(_stages(s), longest),
        greeting=f"{ev.text(code)} {greeting}".strip() if code is not None else greeting,
        extensions=tuple(ev.text(e) for e in ev.items(s.get("extensions"))),
        tls=ev.tls_text(s),
        transcript=tuple(ev.text(line) for line in ev.items(s.get("transcript"))),
    )


def _stages(s: Mapping[str, Any]) -> list[tuple[str, str, float]]:
    """The stages the session reached with their seconds (a negative or missing time is no time)."""
    found = []
    for stage, label in _STAGE_LABELS.items():
        seconds = ev.number(s.get(f"{stage}_s"))
        if seconds is not None and seconds >= 0:
            found.append((stage, label, seconds))
    return found


def _bar(stages: list[tuple[str, str, float]], longest: float) -> Bar | None:
    if not stages or longest <= 0:
        return None
    scale = _BAR_WIDTH / longest
    x = 0.0
    segments = []
    for stage, label, seconds in stages:
        width = seconds * scale
        segments.append(Segment(stage, label, f"{x:.2f}", f"{max(width, 0.5):.2f}", _ms(seconds)))
        x += width
    total = sum(seconds for _, _, seconds in stages)
    summary = ", ".join(f"{label} {_ms(seconds)} ms" for _, label, seconds in stages)
    return Bar(f"{_BAR_WIDTH}", f"{_BAR_HEIGHT}", tuple(segments), _ms(total), summary)


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"


def measure(facts: Mapping[str, Any]) -> Measurements:
    """The stage timings of every session, per address."""
    times = []
    for probed in ev.mappings(facts.get("probed")):
        session = probed.get("session")
        if isinstance(session, Mapping):
            seconds = tuple(ev.number(session.get(f"{stage}_s")) for stage in STAGES)
            times.append(StageTimes(ev.text(probed.get("host")), seconds))
    return Measurements(stages=tuple(times))


async def run(ctx: CheckContext) -> Outcome:
    mx = ctx.facts("mx", MxFacts)
    if mx.null_mx and not mx.hosts:
        # RFC 7505 §3: a null MX alone declares that the domain accepts no mail; there is no host to probe, and
        # that is what the domain says, not a failure (the mx check judges the null MX itself).
        return Outcome.inapplicable(NULL_MX)
    facts = await probe(ctx)
    if facts is None:
        return Outcome.skip("the MX check found no address to connect to")
    return Outcome(facts, assess(facts))


CHECK = Check(
    id="port25",
    title="Port 25 reachability",
    run=run,
    facts=Port25Facts,
    evidence=Evidence("SMTP sessions", view),
    measure=measure,
    requires=("mx",),
    tags=frozenset({"sessions"}),
    timeout=10.0,
    # connect, greeting, EHLO, STARTTLS, handshake, EHLO, QUIT: one after another in each session (the
    # sessions themselves run concurrently), plus one more for waiting on the per-host connection limit.
    operations=8,
    summary=SUMMARY,
    codes={
        "SMTP_OK": Severity.INFO,
        "SMTP_CONNECT_REFUSED": Severity.ERROR,
        "SMTP_CONNECT_TIMEOUT": Severity.ERROR,
        "SMTP_CONNECT_FAILED": Severity.ERROR,
        "SMTP_BANNER_TIMEOUT": Severity.ERROR,
        "SMTP_GREETING_REJECT": Severity.ERROR,
        "SMTP_EHLO_REJECTED": Severity.ERROR,
        "SMTP_SESSION_FAILED": Severity.ERROR,
        "SMTP_TARGET_NOT_PUBLIC": Severity.WARNING,
        "SMTP_ADDRESSES_NOT_PROBED": Severity.WARNING,
        "SMTP_EGRESS_BLOCKED": Severity.NOTICE,
    },
    meanings={
        "SMTP_OK": "The address accepts a connection, greets with 220 and answers EHLO.",
        "SMTP_CONNECT_REFUSED": "The address refuses connections on the SMTP port.",
        "SMTP_CONNECT_TIMEOUT": "Connecting to the address times out: packets are probably dropped.",
        "SMTP_CONNECT_FAILED": "The address cannot be reached from where diag runs (no route to it).",
        "SMTP_BANNER_TIMEOUT": "The server accepts the connection but never sends its greeting.",
        "SMTP_GREETING_REJECT": "The server refuses the session in its greeting (4xx or 5xx; 421: rate limiting).",
        "SMTP_EHLO_REJECTED": "The server rejects EHLO: no SMTP extensions, so no STARTTLS.",
        "SMTP_SESSION_FAILED": "The server closes or breaks the session before EHLO completes.",
        "SMTP_TARGET_NOT_PUBLIC": "An MX address is not public, so it was not probed (see --allow-private).",
        "SMTP_ADDRESSES_NOT_PROBED": "An MX host has more addresses than diag probes per host; some were not checked.",
        "SMTP_EGRESS_BLOCKED": "Every connection of the run timed out: outbound port 25 is blocked where diag runs.",
    },
)
