"""What the relay answers to each envelope address and message, and the trace it adds: pure decisions, no I/O.

The SMTP server (:mod:`diag.relay.server`) asks these functions and sends their replies verbatim; tests feed them
plain data. Replies never echo an address that failed :func:`check_address`: it may hold control characters
(which would end our reply line early) or non-ASCII text (which an ASCII-only session cannot send).

The attacks these defend against are catalogued in ../shared/reference/security-cases.md §1 (RR-xx numbers below);
the cloud's relay rules are exchange-model.md §3 and live in :mod:`diag.routing` (:func:`~diag.routing.relay_decision`,
:func:`~diag.routing.on_premises_connector`, :func:`~diag.routing.ip_in_ranges`), as does the parser of local parts
(:func:`~diag.routing.split_address`): this module keeps only the relay's own replies, so the connectors check and
the relay cannot judge a connection or an address differently.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from email.utils import format_datetime
from typing import Final

from diag.config import DomainType, RelayRole
from diag.relay.settings import RelaySettings
from diag.relay.text import stray_bytes
from diag.routing import (
    ROUTING_CHARACTERS,
    control_character,
    ip_in_ranges,
    on_premises_connector,
    recipient_domain,
    relay_decision,
    route,
    split_address,
)

__all__ = [
    "ACCEPTED",
    "REPLY_ACCESS_DENIED",
    "REPLY_RELAY_ACCESS_DENIED",
    "TRACE_HEADER",
    "check_address",
    "check_content",
    "is_trusted",
    "path_argument",
    "qualify_recipient",
    "queues",
    "rcpt_decision",
    "received_header",
    "strip_trace",
]

ACCEPTED: Final = (250, "2.1.5 OK")
# exchange-model §3.1: an Authoritative domain rejects unknown recipients (Directory-Based Edge Blocking).
REPLY_ACCESS_DENIED: Final = (550, "5.4.1 Recipient address rejected: Access denied")
# Postfix's reject_unauth_destination text (security-cases RR-01).
REPLY_RELAY_ACCESS_DENIED: Final = (554, "5.7.1 Relay access denied")
# The relay's own trace header (ARCHITECTURE §5): connector, rule and TLS of each hop, read by the probes. Only
# trusted clients' copies are kept, so nobody else can forge a route.
TRACE_HEADER: Final = "X-Diag-Trace"

# RFC 5321 §4.5.3.1.1-§4.5.3.1.3.
_LOCAL_PART_MAX: Final = 64
_DOMAIN_MAX: Final = 255
_PATH_MAX: Final = 256
# RFC 5322 §2.1.1: a line is at most 998 characters, CRLF excluded.
_LINE_MAX: Final = 998
_HOST: Final = re.compile(
    r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*"
)
_LITERAL: Final = re.compile(r"\[(?:IPv6:[0-9A-Fa-f:.]+|[0-9.]+)\]")
_ATOM: Final = re.compile(r"[A-Za-z0-9._/+=-]+")


def check_address(address: str, *, sender: bool) -> str | None:
    """None if the envelope address (with or without one pair of angle brackets) may be used, else the reply.

    Refused (553; x.1.7 for MAIL FROM, x.1.3 for RCPT TO): control characters (RR-20), non-ASCII (SMTPUTF8 is
    not offered; RFC 6531 §3.7.4.1 gives 5.6.7), source routes (RR-06: stdlib and aiosmtpd drop them silently, we
    refuse the path rather than guess), ``%``, ``!`` or ``@`` routing in the local part, quoted or not (RR-02:
    Postfix's rule, because the server behind a connector may honour the ``%`` hack), address literals and
    numeric domains (RR-05), addresses without a domain (RR-07) except ``postmaster`` as a recipient (RFC 5321
    §4.5.1), local part > 64, domain > 255 or path > 256 octets (RR-21). The null sender (``""``/``<>``) is
    accepted for MAIL FROM (RR-08).
    """
    return _check_path(address[1:-1] if address.startswith("<") and address.endswith(">") else address, sender)


# Pure, and asked twice for every MAIL and RCPT (the path as sent, then as aiosmtpd parsed it, without its angle
# brackets): cached, the second question costs nothing. It was 7 % of the relay's intake CPU under load
# (bench/relay_throughput.py, a new recipient per message).
@functools.lru_cache(maxsize=4096)
def _check_path(text: str, sender: bool) -> str | None:
    code = "5.1.7" if sender else "5.1.3"
    what = "sender" if sender else "recipient"
    if sender and not text:
        return None
    if not text:
        return f"553 {code} Empty {what} address"
    if control_character(text) is not None:
        return f"553 {code} Bad {what} address syntax"
    if not text.isascii():
        return f"553 5.6.7 Non-ASCII {what} addresses need SMTPUTF8, which this server does not offer"
    if text.startswith("@"):
        return f"553 {code} Source routes are not accepted; give only the final mailbox"
    split = split_address(text)
    if split is None:
        return f"553 {code} Bad {what} address syntax"
    # Text after a quoted local part that is not "@domain" stays in `domain`: an "@" there is routing too
    # (DSBL's ""listme@dsbl.org""@contoso.com).
    local, at, domain = split
    if any(char in local for char in ROUTING_CHARACTERS) or "@" in domain:
        return f"553 {code} Sender-specified routing (%, ! or @ in the local part) is not accepted"
    if not at and not domain:
        if not sender and text.lower() == "postmaster":
            return None
        return f"553 {code} The {what} address needs a fully qualified domain"
    if len(text.rpartition("@")[0]) > _LOCAL_PART_MAX:  # as written, quotes included
        return f"553 {code} The local part of the {what} address is longer than 64 characters"
    if len(domain) > _DOMAIN_MAX:
        return f"553 {code} The domain of the {what} address is longer than 255 characters"
    if len(text) + 2 > _PATH_MAX:
        return f"553 {code} The {what} address is longer than 256 characters"
    if domain.startswith("[") or domain.rstrip(".").rpartition(".")[2].isdigit():
        return f"553 {code} Address literals and numeric domains are not accepted"
    if domain.endswith("."):
        return f"553 {code} Bad {what} address syntax"
    try:
        recipient_domain(text)
    except ValueError:
        return f"553 {code} Bad {what} address syntax"
    return None


def path_argument(arg: str | None, keyword: str) -> str | None:
    """The path of a ``MAIL FROM:``/``RCPT TO:`` argument exactly as sent (``<...>`` included); None if unclear.

    aiosmtpd hands the hooks what the stdlib header parser made of the path, which drops source routes, comments
    and white space and unquotes quoted pairs (``<"a\\b"@d>`` becomes ``ab@d``). The server checks the raw path
    too, so nothing the parser throws away can pass unseen. Quoted strings may contain ``>``.
    """
    if arg is None or arg[: len(keyword)].upper() != keyword.upper():
        return None
    text = arg[len(keyword) :].lstrip()
    if not text.startswith("<"):
        return text.split(" ", 1)[0] or None
    quoted = False
    index = 1
    while index < len(text):
        char = text[index]
        if quoted and char == "\\":
            index += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return text[: index + 1]
        index += 1
    return None


def _canonical(address: str) -> str | None:
    """``local@domain`` lower-case with the domain as an A-label; None when it has no routable domain."""
    text = address[1:-1] if address.startswith("<") and address.endswith(">") else address
    try:
        domain = recipient_domain(text)
    except ValueError:
        return None
    return f"{text.rpartition('@')[0]}@{domain}".lower()


def qualify_recipient(settings: RelaySettings, rcpt: str) -> str:
    """The address to queue for an accepted recipient: a bare ``postmaster`` becomes the configured postmaster
    mailbox (the first ``postmaster@...`` in ``settings.mailboxes``); anything else stays as given."""
    if rcpt.strip("<>").lower() == "postmaster":
        return next((box for box in settings.mailboxes if box.partition("@")[0] == "postmaster"), rcpt)
    return rcpt


def _reply(text: str) -> tuple[int, str]:
    code, _, rest = text.partition(" ")
    return int(code), rest


def _user_unknown(rcpt: str) -> tuple[int, str]:
    return 550, f"5.1.1 <{rcpt}>: Recipient address rejected: User unknown"


def rcpt_decision(
    settings: RelaySettings, *, peer_ip: str, cert_names: Sequence[str], mail_from: str, rcpt: str
) -> tuple[int, str]:
    """The reply to ``RCPT TO:<rcpt>`` by role, for an address that passed :func:`check_address`.

    - cloud: a recipient in an accepted domain is accepted unless a restricted Partner inbound connector refuses
      the connection (550 5.7.51, :func:`diag.routing.relay_decision`), or the domain is Authoritative, the user
      is not in ``settings.mailboxes`` and no outbound connector routes the domain (550 5.4.1: the cloud
      rejects unknown recipients of an Authoritative domain). InternalRelay (and ExternalRelay) domains accept
      any user: unknown ones go on by connector. Other recipients need relay rights (550 5.7.64 otherwise).
    - onprem and internet: local mailboxes (and the internet role's reflector addresses) from anyone; any other
      recipient only from ``relay_networks`` (the users' own network, like Postfix's mynetworks: their mail goes
      on to the smart host or by MX, including colleagues of a local domain whose mailbox is elsewhere, e.g. in
      the cloud); from everyone else unknown users of a local domain get 550 5.1.1 and other domains 554 5.7.1.

    Every role: any user of a ``catch_all`` domain is accepted from anyone (it is kept here).

    ``mail_from`` is the envelope sender (``""`` or ``<>`` for the null sender). A bare ``postmaster`` is
    accepted when a postmaster mailbox is configured (see :func:`qualify_recipient`).
    """
    rcpt = rcpt[1:-1] if rcpt.startswith("<") and rcpt.endswith(">") else rcpt
    if rcpt.lower() == "postmaster":
        qualified = qualify_recipient(settings, rcpt)
        return ACCEPTED if qualified != rcpt else _user_unknown(rcpt)
    canonical = _canonical(rcpt)
    if canonical is None:
        return 553, "5.1.3 Bad recipient address syntax"
    if settings.catches(canonical):
        return ACCEPTED
    domain = canonical.rpartition("@")[2]
    known = canonical in settings.mailboxes
    if settings.role is RelayRole.CLOUD:
        return _cloud(settings, peer_ip, cert_names, mail_from, domain, known=known)
    if known or settings.is_reflector(canonical) or ip_in_ranges(peer_ip, settings.relay_networks):
        return ACCEPTED
    if domain in settings.local_domains:
        return _user_unknown(rcpt)
    return REPLY_RELAY_ACCESS_DENIED


def _cloud(
    settings: RelaySettings, peer_ip: str, cert_names: Sequence[str], mail_from: str, domain: str, *, known: bool
) -> tuple[int, str]:
    org = settings.organization
    sender = _canonical(mail_from)
    decision = relay_decision(
        org,
        ip=peer_ip or None,
        cert_names=cert_names,
        sender_domain=sender.rpartition("@")[2] if sender else None,
        recipient_domain=domain,
    )
    if not decision.allowed:
        assert decision.reply is not None
        return _reply(decision.reply)
    accepted = org.accepted(domain)
    if accepted is not None and accepted.domain_type is DomainType.AUTHORITATIVE and not known:
        if route(org, domain).connector is None:
            return REPLY_ACCESS_DENIED
    return ACCEPTED


def queues(settings: RelaySettings) -> bool:
    """May :func:`rcpt_decision` accept a recipient that is not in a ``catch_all`` domain (mail to queue)?

    Not for a plain mail host (no cloud role, no mailboxes, no relay networks): it keeps all it accepts.
    """
    return settings.role is RelayRole.CLOUD or bool(settings.mailboxes) or bool(settings.relay_networks)


def is_trusted(settings: RelaySettings, *, peer_ip: str, cert_names: Sequence[str]) -> bool:
    """Is the client one of ours, whose trace headers are kept?

    cloud: the connection matches an enabled OnPremises inbound connector by IP (SenderIPAddresses) or by a
    verified certificate (TlsSenderCertificateName), :func:`diag.routing.on_premises_connector`, the decision
    that also grants relay rights. onprem and internet: the peer is in ``relay_networks``, or it proved who it is
    with a certificate our CAs verified (the cloud delivering over its connector does): its trace is then
    attributable, which is what a probe needs to prove the route end to end. Every role: the peer is in
    ``trace_networks``.
    """
    if ip_in_ranges(peer_ip, settings.trace_networks):
        return True
    if settings.role is not RelayRole.CLOUD:
        return ip_in_ranges(peer_ip, settings.relay_networks) or bool(cert_names)
    return on_premises_connector(settings.organization, ip=peer_ip, cert_names=cert_names) is not None


def check_content(data: bytes) -> str | None:
    """None if the DATA content (dot-unstuffed, CRLF line ends kept) may be queued, else the reply.

    Refused: bare CR, bare LF and NUL anywhere (RR-31, RR-32), and lines longer than 998 octets (RR-38, RD-04).

    Why reject instead of normalising: every smuggling variant (§1.3) is a byte sequence that two servers read
    differently, one as text and one as the end of the message. aiosmtpd 1.4.6 already ends DATA only at
    ``<CRLF>.<CRLF>``, but it keeps the stray bytes, and a relay forwards them to servers whose parsers we do not
    know: aiosmtplib rewrites bare CR/LF on the way out but passes NUL through (RD-02), and a downstream server
    that drops NUL turns ``\\r\\n\\x00.\\r\\n`` into an end of data. Normalising would make us guess which
    reading the sender meant (and would break any DKIM signature made over the original bytes); refusing
    means the relay never forwards bytes that a downstream server could parse differently. Legitimate mail
    software sends CRLF only, so this costs nothing (Sendmail 8.18, chasquid and KumoMTA also refuse).
    """
    found = stray_bytes(data)
    if found:
        listed = " and ".join((", ".join(found[:-1]), found[-1])) if len(found) > 1 else found[0]
        return f"550 5.6.11 Message refused: it contains {listed}; lines must end with CRLF and NUL is not allowed"
    if any(len(line) > _LINE_MAX for line in data.split(b"\r\n")):
        return "550 5.6.0 Message refused: a line is longer than 998 characters (RFC 5322 section 2.1.1)"
    return None


def _from_part(helo: str, peer_ip: str) -> str:
    try:
        address = ipaddress.ip_address(peer_ip)
    except ValueError:
        literal = "[unknown]"
    else:
        literal = f"[IPv6:{address.compressed}]" if address.version == 6 else f"[{address}]"
    # The HELO name is the client's text; RFC 5321 §4.4 wants a Domain or an address literal there, and anything
    # else could end the header or open a comment.
    name = helo if len(helo) <= _DOMAIN_MAX and (_HOST.fullmatch(helo) or _LITERAL.fullmatch(helo)) else "unknown"
    return f"from {name} ({literal})"


def received_header(
    *,
    helo: str,
    peer_ip: str,
    hostname: str,
    qid: str,
    recipients: Sequence[str],
    when: datetime,
    esmtp: bool = True,
    tls_version: str = "",
    tls_cipher: str = "",
) -> str:
    """The ``Received:`` field this hop adds (RFC 5321 §4.4), folded, ending in CRLF.

    ``Received: from <helo> ([<peer ip>])`` / ``by <hostname> with ESMTPS (<TLS version> <cipher>) id <qid>`` /
    ``for <rcpt>; <date>``. The protocol is SMTP, ESMTP or ESMTPS (RFC 3848); ``for`` is given only for a single
    recipient, so one recipient's copy does not list the others. ``when`` must be timezone-aware.
    """
    protocol = "ESMTPS" if tls_version else ("ESMTP" if esmtp else "SMTP")
    tls = " ".join(part for part in (tls_version, tls_cipher) if part and _ATOM.fullmatch(part))
    with_part = f"with {protocol}" + (f" ({tls})" if tls else "")
    ident = f" id {qid}" if _ATOM.fullmatch(qid) else ""
    lines = [f"Received: {_from_part(helo, peer_ip)}", f"by {hostname} {with_part}{ident}"]
    if len(recipients) == 1 and recipients[0].isprintable() and recipients[0].isascii():
        lines.append(f"for <{recipients[0].strip('<>')}>")
    lines[-1] += f"; {_date(when.replace(microsecond=0), when.utcoffset())}"
    return "\r\n\t".join(lines) + "\r\n"


@functools.lru_cache(maxsize=8)
def _date(when: datetime, offset: timedelta | None) -> str:
    """The RFC 5322 date of a ``Received:`` field, to the second: made once a second, not once a message. The
    ``offset`` is part of the key: the same instant in two zones compares equal but is written differently."""
    return format_datetime(when)


def strip_trace(content: bytes, header: str) -> bytes:
    """``content`` without any header field named ``header`` (any case), continuation lines included.

    Only the header section is touched: it ends at the first empty line, or at the first line that is neither
    a header field nor a continuation. The body is returned byte for byte.
    """
    name = header.lower().encode("ascii")
    lines = content.splitlines(keepends=True)
    kept: list[bytes] = []
    dropping = False
    for index, line in enumerate(lines):
        if line in (b"\r\n", b"\n", b"\r"):
            kept.extend(lines[index:])
            break
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        field, colon, _ = line.partition(b":")
        if not colon or not field.strip() or any(c <= 32 or c >= 127 for c in field.rstrip(b" \t")):
            kept.extend(lines[index:])
            break
        dropping = field.rstrip(b" \t").lower() == name
        if not dropping:
            kept.append(line)
    return b"".join(kept)
