"""The judge: what an arrived message or a bounce proves, as typed facts. Pure: bytes in, facts out, no I/O.

- :func:`classify` decides what a message found in a watched mailbox is for one probe: the probe itself, a DSN
  for it, a late probe of an earlier run, a forgery, or something else (security-cases.md PR-01, PR-05).
- :func:`judge_delivery` turns the arrived probe's header section into a :class:`Delivery`: hops (see
  :mod:`diag.probe.received`), the connector evidence, latency.
- :func:`read_dsn` reads an RFC 3464 delivery status notification (``multipart/report;
  report-type=delivery-status``, RFC 6522) into a :class:`Bounce`, with the headers it returns.
- :func:`judge_round_trip` reads a reflector's answer to a probe (``diag probe --round-trip``,
  :mod:`diag.relay.reflect`) into a :class:`RoundTrip`: the way there from the header section it returns, the
  way back from its own ``Received:`` lines.
- :func:`verdicts` turns the sender's and the watcher's facts into :class:`Verdict` records, one per finding a
  later ``checks/e2e.py`` reports (``E2E_DELIVERED``, ``E2E_REJECTED``, ...), without the finding registry.

Everything read here comes from strangers: input is cut to :data:`MAX_MESSAGE` bytes first, nesting is counted
before the MIME parser sees it (a report bomb never reaches it), and header values are bounded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser, HeaderParser
from email.utils import parsedate_to_datetime
from typing import Final

from diag.frozen import frozen
from diag.probe.facts import Bounce, BounceRecipient, DiagTrace, Evidence, Hop, Outcome, Verdict
from diag.probe.message import PROBE_HEADER, Kind, Matcher
from diag.probe.received import parse_hops

__all__ = [
    "MAX_HEADERS",
    "MAX_MESSAGE",
    "Bounce",
    "BounceRecipient",
    "Delivery",
    "DiagTrace",
    "Evidence",
    "Outcome",
    "RoundTrip",
    "Verdict",
    "classify",
    "is_reflection",
    "is_report",
    "judge_delivery",
    "judge_round_trip",
    "read_dsn",
    "verdicts",
]

MAX_HEADERS: Final = 64 * 1024  # a header section larger than this is cut (real ones are a few KiB)
MAX_MESSAGE: Final = 256 * 1024  # what is read of a DSN: its status part and returned headers come first
_MAX_MULTIPARTS: Final = 8  # a DSN has one multipart/report, perhaps one multipart/alternative inside
_MAX_RECIPIENTS: Final = 50
_MAX_VALUE: Final = 1000
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_MULTIPART: Final = re.compile(rb"multipart/", re.IGNORECASE)
_REPORT: Final = re.compile(r"multipart/report", re.IGNORECASE)
_RETURNED_TYPES: Final = frozenset({"message/rfc822", "text/rfc822-headers", "message/rfc822-headers"})


def _header_parser() -> BytesHeaderParser:
    # compat32 keeps trace fields as written: the default policy would decode RFC 2047 words in them.
    return BytesHeaderParser(policy=policy.compat32)


def _value(message: Message, name: str) -> str | None:
    """A header value unfolded, control characters replaced, bounded; None when absent."""
    raw = message.get(name)
    if raw is None:
        return None
    return _CONTROL.sub("?", " ".join(str(raw)[:_MAX_VALUE].split()))


def _head(raw: bytes) -> bytes:
    """The header section of ``raw`` (up to and including the empty line), at most MAX_HEADERS bytes."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = raw.find(separator, 0, MAX_HEADERS)
        if end >= 0:
            return raw[: end + len(separator)]
    return raw[:MAX_HEADERS]


def _is_multipart_report(headers: bytes) -> bool:
    content_type = _value(_header_parser().parsebytes(_head(headers)), "Content-Type")
    return content_type is not None and _REPORT.match(content_type.strip()) is not None


def is_reflection(headers: bytes) -> bool:
    """Is this (a message's header section) a reflector's answer to a probe: ``Auto-Submitted: auto-replied``
    (RFC 3834 §5) with an ``X-Diag-Probe`` token (:mod:`diag.relay.reflect`)? Its evidence is in the body."""
    head = _header_parser().parsebytes(_head(headers))
    submitted = _value(head, "Auto-Submitted")
    if submitted is None or head.get(PROBE_HEADER) is None:
        return False
    return submitted.split(";")[0].strip().lower() == "auto-replied"


def is_report(headers: bytes) -> bool:
    """Is this (a message's header section) worth reading whole: a ``multipart/report`` (possibly a DSN) or a
    reflector's answer (:func:`is_reflection`), whose evidence is in the body?"""
    return _is_multipart_report(headers) or is_reflection(headers)


# --- the connector evidence -----------------------------------------------------------------------------------


def _traces(message: Message) -> tuple[DiagTrace, ...]:
    found: list[DiagTrace] = []
    for raw in (message.get_all("X-Diag-Trace") or [])[:50]:
        trace = _trace(_CONTROL.sub("?", " ".join(str(raw)[:_MAX_VALUE].split())))
        if trace is not None:
            found.append(trace)
    return tuple(reversed(found))  # each relay prepends its line: the newest is on top


def _trace(text: str) -> DiagTrace | None:
    fields: dict[str, str] = {}
    rest = text
    # connector= is JSON-quoted and may hold "; " itself: take it apart first.
    match = re.search(r'connector=("(?:[^"\\]|\\.)*"|none)', rest)
    if match is not None:
        fields["connector"] = match.group(1)
        rest = rest[: match.start()] + rest[match.end() :]
    for part in rest.split(";"):
        name, sep, content = part.strip().partition("=")
        if sep:
            fields.setdefault(name, content)
    if not {"hop", "role", "connector", "rule", "to", "tls"} <= set(fields):
        return None
    connector: str | None = None
    if fields["connector"] != "none":
        try:
            decoded = json.loads(fields["connector"])
        except ValueError:
            return None
        connector = decoded if isinstance(decoded, str) else None
    return DiagTrace(fields["hop"], fields["role"], connector, fields["rule"], fields["to"], fields["tls"])


def _evidence(message: Message) -> Evidence:
    connecting = _value(message, "X-MS-Exchange-CrossTenant-OriginalAttributedTenantConnectingIp") or ""
    ip = re.search(r"Ip=\[([0-9A-Fa-f:.]+)\]", connecting)
    return Evidence(
        traces=_traces(message),
        from_entity=_value(message, "X-MS-Exchange-CrossTenant-FromEntityHeader"),
        directionality=_value(message, "X-MS-Exchange-Organization-MessageDirectionality"),
        auth_as=_value(message, "X-MS-Exchange-Organization-AuthAs")
        or _value(message, "X-MS-Exchange-CrossTenant-AuthAs"),
        originator_org=_value(message, "X-OriginatorOrg"),
        connecting_ip=ip.group(1) if ip else None,
    )


# --- delivery -------------------------------------------------------------------------------------------------


@frozen
class Delivery:
    """The probe arrived: where, when, along which hops.

    Attributes:
        message_id: the arrived message's Message-ID (a gateway may have rewritten it).
        folder: where the watcher saw it (``INBOX``, ``Junk``, a Maildir folder).
        junk: the folder is a junk/spam folder (``E2E_JUNK``).
        accepted_at: when ``--via`` accepted it (UTC), when known.
        observed_at: when the watcher saw it (UTC).
        latency_s: ``observed_at - accepted_at`` in seconds, when both are known.
        hops: the Received lines in travel order (see :class:`diag.probe.received.Hop`).
        hops_truncated: more Received lines than were read (PR-04).
        evidence: the connector evidence.
    """

    message_id: str | None
    folder: str
    junk: bool
    accepted_at: datetime | None
    observed_at: datetime
    latency_s: float | None
    hops: tuple[Hop, ...]
    hops_truncated: bool
    evidence: Evidence


def judge_delivery(
    headers: bytes, *, folder: str, junk: bool, accepted_at: datetime | None, observed_at: datetime
) -> Delivery:
    """The facts of an arrived probe from its header section (extra body bytes are ignored)."""
    message = _header_parser().parsebytes(_head(headers))
    hops, truncated = parse_hops([str(value) for value in message.get_all("Received") or []])
    latency = (observed_at - accepted_at).total_seconds() if accepted_at is not None else None
    return Delivery(
        message_id=_value(message, "Message-ID"),
        folder=folder,
        junk=junk,
        accepted_at=accepted_at,
        observed_at=observed_at,
        latency_s=latency,
        hops=hops,
        hops_truncated=truncated,
        evidence=_evidence(message),
    )


# --- bounces --------------------------------------------------------------------------------------------------


def read_dsn(raw: bytes) -> Bounce | None:
    """The DSN in ``raw``, or None when it is not one (PR-05: bounded, and a report bomb is not parsed at all).

    A DSN is a ``multipart/report`` whose direct parts include ``message/delivery-status``; the returned
    headers come from its ``message/rfc822``, ``text/rfc822-headers`` or ``message/rfc822-headers`` part.
    """
    data = raw[:MAX_MESSAGE]
    if not _is_multipart_report(data) or len(_MULTIPART.findall(data)) > _MAX_MULTIPARTS:
        return None
    try:
        message = BytesParser(policy=policy.compat32).parsebytes(data)
    except (RecursionError, ValueError, LookupError):  # the parser is lenient; these are what it still raises
        return None
    parts = message.get_payload()
    if not message.is_multipart() or not isinstance(parts, list):
        return None
    status: Message | None = None
    returned: Message | None = None
    for part in parts:
        if not isinstance(part, Message):
            continue
        kind = part.get_content_type()
        if kind == "message/delivery-status" and status is None:
            status = part
        elif kind in _RETURNED_TYPES and returned is None:
            returned = _returned_headers(part)
    if status is None:
        return None
    blocks = [block for block in status.get_payload() if isinstance(block, Message)]
    if not blocks:
        return None
    recipients = tuple(
        BounceRecipient(
            final_recipient=_value(block, "Final-Recipient"),
            action=_value(block, "Action"),
            status=_value(block, "Status"),
            diagnostic_code=_value(block, "Diagnostic-Code"),
            remote_mta=_value(block, "Remote-MTA"),
        )
        for block in blocks[1 : 1 + _MAX_RECIPIENTS]
    )
    return Bounce(
        reporting_mta=_value(blocks[0], "Reporting-MTA"),
        recipients=recipients,
        returned_message_id=_value(returned, "Message-ID") if returned is not None else None,
        returned_probe=_value(returned, PROBE_HEADER) if returned is not None else None,
    )


def _returned_headers(part: Message) -> Message | None:
    payload = part.get_payload()
    if isinstance(payload, list):  # message/rfc822: the parser made the returned message a sub-message
        first = payload[0] if payload else None
        return first if isinstance(first, Message) else None
    if isinstance(payload, str):  # text/rfc822-headers: plain text to parse as a header section
        text = part.get_payload(decode=True)
        body = text.decode("utf-8", "replace") if isinstance(text, bytes) else payload
        return HeaderParser(policy=policy.compat32).parsestr(body[:MAX_HEADERS])
    return None


# --- round trips ----------------------------------------------------------------------------------------------


@frozen
class RoundTrip:
    """A probe that a reflector answered (``diag probe --round-trip``): the way there and the way back.

    Attributes:
        there: the probe's way to the reflector, from the header section the answer returned; its hops end with
            the reflector's own Received line. ``accepted_at`` is when ``--via`` accepted the probe,
            ``observed_at`` when the reflector received it (that line's time, else the answer's Date), ``folder``
            the reflector's host name (``reflector`` when unknown), ``junk`` False.
        back: the answer's way from the reflector to the watched mailbox, from its own Received lines.
            ``accepted_at`` is when the reflector answered (its Date), ``observed_at`` when the watcher saw it.
        reflector: the reflector's host name (the receiving side of the last hop there), when known.
        hops: both legs in travel order, numbered through, the delay across the turn included.
        hops_truncated: more Received lines than were read, on either leg (PR-04).
        latency_s: from ``--via``'s acceptance to the watcher's observation, when both are known.

    A leg's latency is None where its clocks disagree (an end earlier than its start): skew is not a delay.
    """

    there: Delivery
    back: Delivery
    reflector: str | None
    hops: tuple[Hop, ...]
    hops_truncated: bool
    latency_s: float | None

    @property
    def whole(self) -> Delivery:
        """The whole trip as one :class:`Delivery`, for :func:`verdicts`: every hop of both legs, the total
        latency and diag's traces of both legs. Exchange Online's per-message headers differ by leg (the probe
        leaves through the on-premises connector, the answer comes back from the Internet), so they are left
        out here: judge them on ``there`` and ``back``."""
        return Delivery(
            message_id=self.there.message_id,
            folder=self.back.folder,
            junk=self.back.junk,
            accepted_at=self.there.accepted_at,
            observed_at=self.back.observed_at,
            latency_s=self.latency_s,
            hops=self.hops,
            hops_truncated=self.hops_truncated,
            evidence=Evidence(self.there.evidence.traces + self.back.evidence.traces, None, None, None, None, None),
        )


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    """Seconds from ``start`` to ``end``; None when either is unknown or the clocks disagree. Header dates have
    whole seconds: an ``end`` read from a header up to a second before a precise ``start`` is the same second."""
    if start is None or end is None:
        return None
    seconds = (end - start).total_seconds()
    if seconds < 0:
        return 0.0 if seconds > -1 and (start.microsecond == 0) != (end.microsecond == 0) else None
    return seconds


def _date(message: Message) -> datetime | None:
    value = _value(message, "Date")
    try:
        when = parsedate_to_datetime(value or "")
    except (TypeError, ValueError, IndexError):
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def judge_round_trip(
    message: bytes, *, folder: str, junk: bool, accepted_at: datetime | None, observed_at: datetime
) -> RoundTrip | None:
    """The round trip a reflector's answer proves, or None when ``message`` (as much as the watcher read, see
    :func:`is_report`) is not such an answer or returns no header section (``text/rfc822-headers``,
    ``message/rfc822-headers`` or ``message/rfc822``)."""
    data = message[:MAX_MESSAGE]
    if not is_reflection(data) or len(_MULTIPART.findall(data)) > _MAX_MULTIPARTS:
        return None
    try:
        answer = BytesParser(policy=policy.compat32).parsebytes(data)
    except (RecursionError, ValueError, LookupError):
        return None
    parts = answer.get_payload()
    if not answer.is_multipart() or not isinstance(parts, list):
        return None
    kinds = [part for part in parts if isinstance(part, Message) and part.get_content_type() in _RETURNED_TYPES]
    returned = _returned_headers(kinds[0]) if kinds else None
    if returned is None:
        return None
    there_values = [str(value) for value in returned.get_all("Received") or []]
    back_values = [str(value) for value in answer.get_all("Received") or []]
    there_hops, there_cut = parse_hops(there_values)
    back_hops, back_cut = parse_hops(back_values)
    hops, cut = parse_hops(back_values + there_values)
    answered = _date(answer)
    last = there_hops[-1] if there_hops else None
    reflector = last.by_host if last is not None else None
    turned = (last.at if last is not None else None) or answered or observed_at
    there = Delivery(
        message_id=_value(returned, "Message-ID"),
        folder=reflector or "reflector",
        junk=False,
        accepted_at=accepted_at,
        observed_at=turned,
        latency_s=_seconds(accepted_at, turned),
        hops=there_hops,
        hops_truncated=there_cut,
        evidence=_evidence(returned),
    )
    back = Delivery(
        message_id=_value(answer, "Message-ID"),
        folder=folder,
        junk=junk,
        accepted_at=answered,
        observed_at=observed_at,
        latency_s=_seconds(answered, observed_at),
        hops=back_hops,
        hops_truncated=back_cut,
        evidence=_evidence(answer),
    )
    return RoundTrip(there, back, reflector, hops, cut or there_cut or back_cut, _seconds(accepted_at, observed_at))


# --- classification -------------------------------------------------------------------------------------------


def classify(message: bytes, matcher: Matcher) -> tuple[Kind, Bounce | None]:
    """What a message in a watched mailbox is for ``matcher``'s probe, with its DSN facts when it is a bounce.

    ``message`` is its header section, or as much of the whole message as the watcher read when
    :func:`is_report` said it may be a DSN. A DSN counts only when its returned headers carry this probe's
    Message-ID *and* token (PR-05); one returning an earlier run's token is LATE.
    """
    head = _header_parser().parsebytes(_head(message))
    own = matcher.classify(_value(head, PROBE_HEADER))
    if own is not Kind.OTHER:
        return own, None
    bounce = read_dsn(message)
    if bounce is None:
        return Kind.OTHER, None
    kind = matcher.classify_returned(bounce.returned_probe, bounce.returned_message_id)
    return kind, bounce if kind in (Kind.DSN, Kind.LATE) else None


# --- verdicts -------------------------------------------------------------------------------------------------


def verdicts(
    *,
    refused: str | None,
    delivery: Delivery | None,
    bounce: Bounce | None,
    accepted_at: datetime | None,
    deadline_s: float,
    slow_s: float | None = None,
    minimum_tls: str | None = None,
    expected_connector: str | None = None,
    expect_on_premises_connector: bool | None = None,
) -> tuple[Verdict, ...]:
    """The verdicts for one probe.

    ``refused``: the refusal text when ``--via`` refused the probe (then nothing else counts). ``delivery`` /
    ``bounce``: what the watcher saw (a bounce outranks a delivery seen later in the same wait). Neither:
    the deadline passed. ``slow_s``: latency above which the delivery is slow. ``minimum_tls``: the weakest
    TLS version acceptable on each hop between hosts (``TLSv1.2`` for a connector's TlsSettings); any hop
    without TLS is reported regardless, except hand-overs on loopback (content filters). ``expected_connector``:
    the outbound connector ``diag route`` predicts, checked against diag relays' traces when there are any;
    ``expect_on_premises_connector``: whether Exchange Online should have taken the probe in through an
    OnPremises inbound connector (checked when its headers say).
    """
    if refused is not None:
        return (Verdict(Outcome.REJECTED, refused),)
    if bounce is not None:
        failed = bounce.failed
        parts = [f"Status {failed.status or 'unknown'}" if failed else "no recipient block"]
        if failed is not None and failed.diagnostic_code:
            parts.append(f"Diagnostic-Code {failed.diagnostic_code}")
        parts.append(f"reported by {bounce.reporting_mta or 'an unnamed MTA'}")
        return (Verdict(Outcome.BOUNCED, "; ".join(parts)),)
    if delivery is None:
        where = f"accepted by --via at {accepted_at.isoformat()}" if accepted_at else "never accepted"
        return (Verdict(Outcome.TIMEOUT, f"not seen within {deadline_s:g} s; last known: {where}"),)
    found: list[Verdict] = []
    latency = f"{delivery.latency_s:.1f} s" if delivery.latency_s is not None else "unknown latency"
    found.append(Verdict(Outcome.DELIVERED, f"arrived in {delivery.folder} after {latency}, {len(delivery.hops)} hops"))
    if delivery.junk:
        found.append(Verdict(Outcome.JUNK, f"arrived in the junk folder {delivery.folder}"))
    if slow_s is not None and delivery.latency_s is not None and delivery.latency_s > slow_s:
        found.append(Verdict(Outcome.SLOW, f"took {delivery.latency_s:.1f} s, more than {slow_s:g} s"))
    found.extend(_tls_verdicts(delivery.hops, minimum_tls))
    found.extend(_route_verdicts(delivery.evidence, expected_connector, expect_on_premises_connector))
    return tuple(found)


_TLS_ORDER: Final = {"SSLv2": 0, "SSLv3": 1, "TLSv1": 2, "TLSv1.1": 3, "TLSv1.2": 4, "TLSv1.3": 5}


def _tls_verdicts(hops: Sequence[Hop], minimum: str | None) -> list[Verdict]:
    found: list[Verdict] = []
    for hop in hops:
        if hop.loopback or hop.ip is None:
            continue  # a hand-over inside one host, or a line that names no sender: no network hop to judge
        name = f"hop {hop.index} ({hop.from_host or hop.ip} -> {hop.by_host or 'unknown'})"
        if hop.tls is False:
            found.append(Verdict(Outcome.TLS_MISSING, f"{name} was not encrypted ({hop.protocol})", hop))
        elif minimum is not None and hop.tls_version in _TLS_ORDER and minimum in _TLS_ORDER:
            if _TLS_ORDER[hop.tls_version] < _TLS_ORDER[minimum]:
                found.append(Verdict(Outcome.TLS_MISSING, f"{name} used {hop.tls_version}, below {minimum}", hop))
    return found


def _route_verdicts(evidence: Evidence, connector: str | None, on_premises: bool | None) -> list[Verdict]:
    found: list[Verdict] = []
    if connector is not None and evidence.traces:
        used = [trace.connector for trace in evidence.traces if trace.role == "cloud"]
        if used and connector not in used:
            names = ", ".join(name or "none" for name in used)
            found.append(Verdict(Outcome.WRONG_ROUTE, f"expected connector {connector!r}, the cloud used {names}"))
    through = evidence.through_on_premises_connector
    if on_premises is not None and through is not None and through != on_premises:
        said = f"FromEntityHeader {evidence.from_entity}"
        wanted = "through" if on_premises else "not through"
        found.append(Verdict(Outcome.WRONG_ROUTE, f"expected {wanted} the OnPremises inbound connector; {said}"))
    return found
