"""What an end-to-end probe found, as typed facts (ARCHITECTURE §7): the ``e2e`` check's :class:`E2eFacts` and
everything they hold, with no machinery.

The sender (:mod:`diag.probe.sender`), the parsers of ``Received:`` lines and of DSNs (:mod:`diag.probe.received`,
:mod:`diag.probe.judge`) and the run (:mod:`diag.probe.run`) make these facts and export them under their own
names too; they live here so that reading them (the ``e2e`` check's judgement, :meth:`diag.model.Report.from_json`)
loads neither the SMTP client, nor the watchers' IMAP and Maildir code, nor the email parser (issue 13: start-up).
"""

from __future__ import annotations

import enum
import ipaddress
from datetime import datetime

from diag.config import DEFAULT_MIN_INTERVAL
from diag.frozen import frozen

__all__ = [
    "Accepted",
    "Bounce",
    "BounceRecipient",
    "DiagTrace",
    "E2eFacts",
    "Evidence",
    "Held",
    "Hop",
    "Outcome",
    "ProbeFacts",
    "Reflected",
    "Refused",
    "Stage",
    "SubmissionTls",
    "Verdict",
]


# --- the submission (diag.probe.sender) ---------------------------------------------------------------------------


class Stage(enum.StrEnum):
    """Where a submission stopped."""

    CONNECT = "connect"  # TCP, or the greeting
    EHLO = "ehlo"
    STARTTLS = "starttls"  # the STARTTLS command: not offered, or refused
    TLS = "tls"  # the handshake or the certificate (STARTTLS or implicit TLS)
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


@frozen
class SubmissionTls:
    """The TLS of the submission hop.

    Attributes:
        version: as OpenSSL names it (``TLSv1.3``). cipher: the cipher suite.
        implicit: TLS from the first byte (port 465) rather than STARTTLS.
        verified: the certificate chain leads to a trusted CA, is valid now and names ``Via.host``.
        verify_error: why it did not verify ("" when it did).
    """

    version: str
    cipher: str
    implicit: bool
    verified: bool
    verify_error: str


@frozen
class Accepted:
    """The via accepted the probe: its reply to the end of DATA, when (UTC), and the TLS it was sent over."""

    via: str
    code: int
    reply: str
    accepted_at: datetime
    tls: SubmissionTls | None


@frozen
class Refused:
    """The probe was not accepted.

    Attributes:
        via: where it was submitted. stage: where it stopped.
        code: the server's reply code, or None when there was no reply (refused connection, timeout, TLS or
            certificate failure, a precondition of ours such as STARTTLS missing under ``require_tls``).
        reply: the reply text, or what went wrong, one line, without credentials.
        timed_out: no answer arrived within the timeout.
        tls: the TLS of the hop when the session got that far (a certificate failure is shown here too).
    """

    via: str
    stage: Stage
    code: int | None
    reply: str
    timed_out: bool = False
    tls: SubmissionTls | None = None

    @property
    def permanent(self) -> bool:
        """A 5xx reply: the server will not take this probe on another try either."""
        return self.code is not None and 500 <= self.code < 600


# --- the Received lines (diag.probe.received) ---------------------------------------------------------------------


@frozen
class Hop:
    """One ``Received:`` line: one hand-over of the message.

    Attributes:
        index: position in travel order, 1 = the first hand-over (the bottom-most Received line).
        from_host: the name the sending side gave (its HELO), or None.
        from_reverse: the name the receiving side found for the address (reverse DNS), when it wrote one.
        ip: the sending side's address, or None.
        by_host: the receiving server's name, or None.
        protocol: the ``with`` keyword as written (``ESMTPS``, ``esmtpsa``, ``Microsoft SMTP Server``, ``HTTPS``).
        tls: True when the hop used TLS (a TLS version is named or the protocol says so, RFC 3848), False when
            the protocol says it did not, None when the line does not tell.
        tls_version: the TLS version in OpenSSL's spelling (``TLSv1.3``), or None.
        tls_cipher: the cipher suite as written, or None.
        id: the receiving server's id for the message (an Exchange build number is an id, not an address).
        at: the time the receiving server wrote, UTC, or None when missing or unparsable.
        delay_s: seconds since the previous hop, or None (first hop, a time unknown, or clock skew).
        skew_s: when this hop's time is earlier than the previous hop's: by how many seconds (clocks disagree;
            reported here instead of a negative delay).
        raw: the line unfolded, control characters replaced, cut to MAX_FIELD characters.
    """

    index: int
    from_host: str | None
    from_reverse: str | None
    ip: str | None
    by_host: str | None
    protocol: str | None
    tls: bool | None
    tls_version: str | None
    tls_cipher: str | None
    id: str | None
    at: datetime | None
    delay_s: float | None
    skew_s: float | None
    raw: str

    @property
    def loopback(self) -> bool:
        """The hop came from this very host (a content filter hand-over on 127.0.0.1 or ::1)."""
        return self.ip is not None and ipaddress.ip_address(self.ip).is_loopback


# --- the connector evidence and the DSNs (diag.probe.judge) -------------------------------------------------------


@frozen
class DiagTrace:
    """One ``X-Diag-Trace`` line: what a diag relay decided for this message (diag.relay.transport).

    Attributes:
        hop: the relay's host name. role: cloud, onprem or internet. connector: the outbound connector's name,
        or None when none applied. rule: the routing rule (exact, wildcard, mx, smarthost, ...). to: the next
        hop as ``host[ip]``. tls: the TLS version of the next hop, or ``none``.
    """

    hop: str
    role: str
    connector: str | None
    rule: str
    to: str
    tls: str


@frozen
class Evidence:
    """What the headers say about the route beyond the Received lines.

    Attributes:
        traces: diag relays' ``X-Diag-Trace`` lines, in travel order.
        from_entity: Exchange Online's ``X-MS-Exchange-CrossTenant-FromEntityHeader`` (``HybridOnPrem`` =
            arrived through an OnPremises inbound connector; ``Internet``; ``Hosted``), exchange-model.md §7.2.
        directionality: ``X-MS-Exchange-Organization-MessageDirectionality`` (``Incoming`` | ``Originating``).
        auth_as: ``X-MS-Exchange-Organization-AuthAs``, else ``X-MS-Exchange-CrossTenant-AuthAs``
            (``Anonymous``, ``Internal``, ``Partner``).
        originator_org: ``X-OriginatorOrg``: the organization Exchange Online attributed the message to.
        connecting_ip: the ``Ip=[...]`` of ``X-MS-Exchange-CrossTenant-OriginalAttributedTenantConnectingIp``: the
            address that connected to Exchange Online.
    """

    traces: tuple[DiagTrace, ...]
    from_entity: str | None
    directionality: str | None
    auth_as: str | None
    originator_org: str | None
    connecting_ip: str | None

    @property
    def through_on_premises_connector(self) -> bool | None:
        """Did Exchange Online take the message in through an OnPremises inbound connector? None: no EXO header."""
        if self.from_entity is None:
            return None
        return self.from_entity.lower() == "hybridonprem"


@frozen
class BounceRecipient:
    """One per-recipient block of a DSN (RFC 3464 §2.3): Final-Recipient, Action, Status, Diagnostic-Code,
    Remote-MTA, each as written (None when absent)."""

    final_recipient: str | None
    action: str | None
    status: str | None
    diagnostic_code: str | None
    remote_mta: str | None


@frozen
class Bounce:
    """A delivery status notification: the reporting MTA, the recipients it reports, and the Message-ID and
    probe token of the message it returns (``returned_message_id``, ``returned_probe``)."""

    reporting_mta: str | None
    recipients: tuple[BounceRecipient, ...]
    returned_message_id: str | None
    returned_probe: str | None

    @property
    def failed(self) -> BounceRecipient | None:
        """The first recipient whose Action is ``failed`` (else the first one reported)."""
        for recipient in self.recipients:
            if (recipient.action or "").lower() == "failed":
                return recipient
        return self.recipients[0] if self.recipients else None


# --- the verdicts (diag.probe.judge) ------------------------------------------------------------------------------


class Outcome(enum.StrEnum):
    """What one probe's facts amount to; ``checks/e2e.py`` maps each to its finding code (``E2E_<NAME>``)."""

    DELIVERED = "delivered"
    REJECTED = "rejected"
    BOUNCED = "bounced"
    TIMEOUT = "timeout"
    TLS_MISSING = "tls-missing"
    WRONG_ROUTE = "wrong-route"
    SLOW = "slow"
    JUNK = "junk"


@frozen
class Verdict:
    """One conclusion about a probe, with the sentence that explains it and the hop it concerns (if one)."""

    outcome: Outcome
    detail: str
    hop: Hop | None = None


# --- one probe and the check's facts (diag.probe.run) -------------------------------------------------------------


@frozen
class Reflected:
    """A round trip (``--round-trip``): the reflector answered the probe and the answer came back.

    Attributes:
        reflector: the reflector's host name, when its Received line names it.
        there_hops: how many of the probe's ``hops`` are the way there (the rest are the way back).
        there_s, back_s: each leg's seconds (None where its clocks disagree: skew is not a delay).
    """

    reflector: str | None
    there_hops: int
    there_s: float | None
    back_s: float | None


@frozen
class Held:
    """A probe that was not sent, although nothing on the way stood against it (security-cases.md PR-08).

    Attributes:
        last_sent_at: when the same probe (its Name, From, To and Via) was last sent, less than its MinInterval
            ago, by this or another diag process of the user; None when ``problem`` says why that could not be
            known.
        age_s: the seconds since that send.
        problem: the record of sends could not be read or written, one line ("" when it could); the probe is held
            back then too, since its interval could not be kept.
    """

    last_sent_at: datetime | None = None
    age_s: float | None = None
    problem: str = ""


@frozen
class ProbeFacts:
    """One probe, sent and watched for.

    Attributes:
        name, sender, recipient: the probe (its ``Name``, ``From`` and ``To``).
        run: the run id in its token. message_id: its Message-ID ("" when it was never built).
        via: where it was submitted, ``host [ip]:port`` (``host:port`` when the system resolved the name).
        watch: the mailbox watched, without credentials.
        deadline_s, slow_s, min_interval_s: its ``Deadline``, ``Slow`` and ``MinInterval``.
        expected_connector: the outbound connector ``diag route`` predicts for the recipient, or None (no
            configuration, or mail for it goes by MX).
        accepted, refused: the answer of ``via``: it accepted the probe (with the TLS of that hop), or refused
            it (at which stage, with which reply); both None when nothing was submitted (the mailbox could not be
            watched).
        accepted_at, observed_at, latency_s: when ``via`` accepted it, when the watcher saw it (UTC), and the
            seconds between.
        delivered: it arrived (in any folder). folder: where. junk: that folder is a junk folder.
        hops: one record per ``Received:`` line, in travel order. hops_truncated: more lines than were read.
        evidence: the connector evidence of its headers (diag relays' traces, Exchange Online's headers).
        reflected: for a round trip, the reflector and the two legs (``hops`` holds both, numbered through).
        bounce: the DSN for it that reached the mailbox.
        verdicts: the judge's verdicts.
        late: late probes (and bounces) of earlier runs found in the mailbox, and removed.
        forged: messages that looked like probes but failed the token check (left alone).
        cleanup: what could not be removed, one line each (security-cases.md PR-09).
        watch_error: why the mailbox could not be watched, one line ("" when it could).
        held: why it was not sent although it could have been: the same probe was sent less than its
            MinInterval ago (None when it was not held back).
    """

    name: str
    sender: str
    recipient: str
    run: str
    via: str
    watch: str
    deadline_s: float
    slow_s: float | None = None
    min_interval_s: float = DEFAULT_MIN_INTERVAL
    message_id: str = ""
    expected_connector: str | None = None
    accepted: Accepted | None = None
    refused: Refused | None = None
    accepted_at: datetime | None = None
    observed_at: datetime | None = None
    latency_s: float | None = None
    delivered: bool = False
    folder: str | None = None
    junk: bool = False
    hops: tuple[Hop, ...] = ()
    hops_truncated: bool = False
    evidence: Evidence | None = None
    reflected: Reflected | None = None
    bounce: Bounce | None = None
    verdicts: tuple[Verdict, ...] = ()
    late: int = 0
    forged: int = 0
    cleanup: tuple[str, ...] = ()
    watch_error: str = ""
    held: Held | None = None

    @property
    def submitted(self) -> bool:
        """``via`` answered: it accepted or refused the probe (False: the mailbox could not be watched first, or
        the probe was held back)."""
        return self.accepted is not None or self.refused is not None


@frozen
class E2eFacts:
    """The probes that concern one domain, in the order the configuration lists them."""

    probes: tuple[ProbeFacts, ...]
