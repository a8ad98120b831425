"""The probe message and its correlation token: what makes one arrival provably *this* probe.

A probe carries a unique ``Message-ID`` (in the sender's domain) and an ``X-Diag-Probe`` header::

    X-Diag-Probe: v=1; run=20261126T200000Z-3f9a1c; probe=John%20to%20Sun; sent=20261126T200000Z;
     nonce=9b2c...; mac=5d41...

``run`` names the run that sent it, ``probe`` the configured probe, ``sent`` the send time (UTC), ``nonce`` 16
random bytes. With a key (``ProbeKey`` / ``DIAG_PROBE_KEY``), ``mac`` is HMAC-SHA256 over the other fields, so a
message that only looks like a probe is never counted (security-cases.md PR-01). Matching is local and pure
(:meth:`Matcher.classify`): the watchers fetch headers and ask; nothing trusts a server's SEARCH.

The probe deliberately carries no ``Auto-Submitted`` header: RFC 3834 §2 asks responders not to answer
auto-submitted mail, and the reflector (ARCHITECTURE §7) must answer probes.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
import urllib.parse
from dataclasses import field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from typing import Final

from diag.frozen import frozen

__all__ = [
    "PROBE_HEADER",
    "Kind",
    "Matcher",
    "Probe",
    "ProbeToken",
    "build_probe",
    "new_run_id",
]

PROBE_HEADER: Final = "X-Diag-Probe"
_VERSION: Final = "1"
_TIME_FORMAT: Final = "%Y%m%dT%H%M%SZ"
# Run ids and nonces travel inside a header and an IMAP-free local match: keep them to a safe alphabet.
_RUN_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NONCE: Final = re.compile(r"[0-9a-f]{32}")
_MAC: Final = re.compile(r"[0-9a-f]{64}")
# Percent-encoded, 64 characters stay within _VALUE_MAX even when every one is a 4-byte UTF-8 sequence.
_NAME_MAX: Final = 64
# A header value longer than this is not one we wrote (ours is about 200 characters): not parsed at all.
_VALUE_MAX: Final = 1024
_ADDRESS: Final = re.compile(r"[!-~]{1,254}")


class Kind(enum.StrEnum):
    """What a message in a watched mailbox is, for this probe."""

    PROBE = "probe"  # this probe (token equal, MAC valid when a key is set)
    DSN = "dsn"  # a delivery status notification returning this probe's Message-ID and token
    LATE = "late"  # this probe's name from an earlier run: arrived after that run gave up on it
    FORGED = "forged"  # looks like a probe but its MAC is missing or wrong (a key is set): never counted
    OTHER = "other"  # anything else, including other probes and concurrent runs: never touched


@frozen
class ProbeToken:
    """The correlation fields of one probe.

    Attributes:
        run: the run that sent it (``[A-Za-z0-9._-]``, at most 64 characters).
        probe: the probe's name (free text; percent-encoded in the header).
        sent_at: when it was built, UTC, whole seconds.
        nonce: 32 hex digits from :mod:`secrets`.
    """

    run: str
    probe: str
    sent_at: datetime
    nonce: str

    def canonical(self) -> str:
        """The header value without its MAC: what the MAC covers."""
        name = urllib.parse.quote(self.probe, safe="")
        sent = self.sent_at.astimezone(UTC).strftime(_TIME_FORMAT)
        return f"v={_VERSION}; run={self.run}; probe={name}; sent={sent}; nonce={self.nonce}"

    def header_value(self, key: bytes | None) -> str:
        """The ``X-Diag-Probe`` value: the canonical fields, then ``mac=`` when a key is given."""
        text = self.canonical()
        return f"{text}; mac={_mac(key, text)}" if key else text


@frozen
class _Parsed:
    token: ProbeToken
    mac: str | None


def _mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("ascii"), hashlib.sha256).hexdigest()


def _parse(value: str) -> _Parsed | None:
    """The token in an ``X-Diag-Probe`` value, or None when it is not a well-formed one of ours."""
    if len(value) > _VALUE_MAX:
        return None
    fields: dict[str, str] = {}
    for part in " ".join(value.split()).split(";"):
        name, sep, content = part.strip().partition("=")
        if not sep or name in fields:
            return None
        fields[name] = content
    if set(fields) - {"v", "run", "probe", "sent", "nonce", "mac"} or fields.get("v") != _VERSION:
        return None
    try:
        run, nonce, sent = fields["run"], fields["nonce"], fields["sent"]
        name = urllib.parse.unquote(fields["probe"], errors="strict")
        sent_at = datetime.strptime(sent, _TIME_FORMAT).replace(tzinfo=UTC)
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    mac = fields.get("mac")
    if not _RUN_ID.fullmatch(run) or not _NONCE.fullmatch(nonce) or (mac is not None and not _MAC.fullmatch(mac)):
        return None
    return _Parsed(ProbeToken(run, name, sent_at, nonce), mac)


@frozen
class Matcher:
    """What a watcher looks for: this probe's token and Message-ID, and the key that authenticates tokens.

    ``classify`` is pure: a header value (and the Message-ID the message names) in, a :class:`Kind` out.
    """

    token: ProbeToken
    message_id: str
    key: bytes | None = field(default=None, repr=False)

    def classify(self, probe_header: str | None) -> Kind:
        """What a message is whose first ``X-Diag-Probe`` value is ``probe_header`` (None: it has none).

        PR-01: with a key, a token whose MAC is missing or wrong is FORGED, whatever else it says. A token of
        this probe's name from an earlier run is LATE; one from a later run (a concurrent job) is OTHER.
        The Message-ID is not required for PROBE (a gateway may rewrite it); the token is.
        """
        if probe_header is None:
            return Kind.OTHER
        parsed = _parse(probe_header)
        if parsed is None:
            return Kind.OTHER
        if self.key is not None:
            expected = _mac(self.key, parsed.token.canonical())
            if parsed.mac is None or not hmac.compare_digest(parsed.mac, expected):
                return Kind.FORGED
        if parsed.token.probe != self.token.probe:
            return Kind.OTHER
        if parsed.token == self.token:
            return Kind.PROBE
        if parsed.token.run != self.token.run and parsed.token.sent_at < self.token.sent_at:
            return Kind.LATE
        return Kind.OTHER

    def classify_returned(self, probe_header: str | None, message_id: str | None) -> Kind:
        """What a DSN is whose returned headers carry ``probe_header`` and ``message_id`` (PR-05).

        Only a DSN returning both this probe's Message-ID and its token is DSN; one returning an earlier run's
        token is LATE (a late bounce, removed like a late probe); a forged token is FORGED.
        """
        kind = self.classify(probe_header)
        if kind is Kind.PROBE:
            return Kind.DSN if _same_id(message_id, self.message_id) else Kind.OTHER
        return kind


def _same_id(found: str | None, expected: str) -> bool:
    return found is not None and found.strip() == expected


@frozen
class Probe:
    """A built probe, ready to submit.

    Attributes:
        token: its correlation fields.
        message_id: its ``Message-ID`` (with angle brackets).
        sender, recipient: the envelope (and header) addresses.
        subject: the subject line, which names the probe and run.
        content: the whole message, CRLF line ends.
    """

    token: ProbeToken
    message_id: str
    sender: str
    recipient: str
    subject: str
    content: bytes = field(repr=False)

    def matcher(self, key: bytes | None) -> Matcher:
        """The matcher for this probe; ``key`` must be the one it was built with."""
        return Matcher(self.token, self.message_id, key)


def new_run_id(now: datetime) -> str:
    """A run id unique to one run: its UTC start time and 24 random bits (``20261126T200000Z-3f9a1c``)."""
    return f"{now.astimezone(UTC).strftime(_TIME_FORMAT)}-{secrets.token_hex(3)}"


def build_probe(*, run: str, name: str, sender: str, recipient: str, key: bytes | None, now: datetime) -> Probe:
    """Build the probe ``name`` of run ``run`` from ``sender`` to ``recipient``, sent at ``now`` (tz-aware).

    Raises ValueError for a run id outside ``[A-Za-z0-9._-]{1,64}``, an empty or overlong name, an address
    that is not printable ASCII with exactly one ``@`` (the probe asks for no SMTPUTF8), or a naive ``now``.
    """
    if not _RUN_ID.fullmatch(run):
        raise ValueError(f"run id {run!r} must be 1 to 64 letters, digits, '.', '_' or '-'")
    if not name or len(name) > _NAME_MAX or not name.isprintable():
        raise ValueError(f"probe name {name!r} must be 1 to {_NAME_MAX} printable characters")
    for address in (sender, recipient):
        if not _ADDRESS.fullmatch(address) or address.count("@") != 1 or address.startswith("@"):
            raise ValueError(f"address {address!r} must be an ASCII mailbox local@domain")
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    sent_at = now.astimezone(UTC).replace(microsecond=0)
    token = ProbeToken(run, name, sent_at, secrets.token_hex(16))
    domain = sender.rpartition("@")[2].strip("[]")
    message_id = make_msgid(idstring=f"diag-probe.{token.nonce[:12]}", domain=domain)
    subject = f"diag probe {name} (run {run})"

    # 998 (RFC 5322 §2.1.1) keeps X-Diag-Probe on one line: the default 78 would fold a long name into RFC 2047
    # encoded words, which no MTA decodes back.
    message = EmailMessage(policy=SMTP.clone(max_line_length=998))
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = format_datetime(sent_at)
    message["Message-ID"] = message_id
    message[PROBE_HEADER] = token.header_value(key)
    body = (
        f"This is an end-to-end test message of diag (probe {name}, run {run}).\n"
        "It proves that mail along this path arrives; it is removed from the mailbox once observed.\n"
    )
    # 7-bit on the wire whatever the name: a server without 8BITMIME must take the probe too (RFC 6152).
    message.set_content(body, cte="7bit" if body.isascii() else "quoted-printable")
    return Probe(token, message_id, sender, recipient, subject, message.as_bytes())
