"""What a configuration value may be: converters from a TOML (or exported JSON) value to the model's value.

Each converter returns the normalised value or raises :class:`Invalid` whose message is the rest of a problem
line, ``what is wrong; how to fix it``. The loader adds ``FILE:LINE: Table[i].Field:`` in front; the importer
adds the export file and object. The wording speaks the administrator's language: "found a number", not
"expected str".
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime

from diag.errors import InvalidDomainError
from diag.names import mail_domain, port_number

__all__ = [
    "Convert",
    "Invalid",
    "accepted_domain",
    "certificate_name",
    "choice",
    "connector_name",
    "domain",
    "either",
    "endpoint",
    "env_name",
    "flag",
    "integer",
    "mailbox",
    "network",
    "path",
    "pattern",
    "plain_mailbox",
    "probe_address",
    "probe_key",
    "probe_name",
    "seconds",
    "selector",
    "sender_ip",
    "smart_host",
    "strings",
    "text",
    "timestamp",
    "via",
    "watch_url",
]


class Invalid(Exception):
    """A value that does not fit its field; the message says what is wrong and how to fix it."""


Convert = Callable[[object], object]
_KINDS = {bool: "true/false", str: "text", int: "a number", float: "a number", list: "a list", dict: "a table"}
_ADDRESS_SPACE = re.compile(r"^smtp:(.*?)(?:;\d+)?$", re.IGNORECASE)  # wire form of SenderDomains: smtp:*;1
# Windows PowerShell 5.1: "\/Date(1552613513000)\/", in ASCII digits ("٣" is a digit to \d and int)
_PS_DATE = re.compile(r"^/Date\((-?\d+)(?:[+-]\d{4})?\)/$", re.ASCII)
_OUT_OF_RANGE = "is not within the years 1 to 9999 in UTC; write a date and time such as 2019-03-15T02:31:53Z"


def _kind(value: object) -> str:
    return _KINDS.get(type(value), "a date" if isinstance(value, date) else type(value).__name__)


def either(words: Sequence[str], conjunction: str = "or") -> str:
    """``a, b or c``: choices as a sentence names them."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {conjunction} {words[-1]}"


# Value normalisers: text in, normalised text out.


def domain(text: str) -> str:
    try:
        return mail_domain(text)
    except InvalidDomainError as exc:
        message = str(exc)
        raise Invalid(message if ";" in message else f"{message}; give a domain such as contoso.com") from None


def pattern(text: str, *, star: bool = True) -> str:
    """A connector domain: ``contoso.com``, ``*.contoso.com`` or (with ``star``) ``*``; ``smtp:x;1`` stripped."""
    text = _ADDRESS_SPACE.sub(r"\1", text.strip())
    if text == "*":
        if star:
            return text
        raise Invalid("'*' matches every name; give a domain or *.domain such as *.contoso.com")
    base = text.removeprefix("*.")
    if "*" in base:
        allowed = "* or *.domain" if star else "*.domain"
        raise Invalid(f"{text!r} has a wildcard inside the name; only {allowed} is allowed, e.g. *.contoso.com")
    return ("*." if base != text else "") + domain(base)


def certificate_name(text: str) -> str:
    return pattern(text, star=False)


def accepted_domain(text: str) -> str:
    if "*" in text:
        raise Invalid(
            f"{text!r} is a wildcard; an accepted domain is one domain (to accept its subdomains set "
            'MatchSubDomains = true with DomainType = "InternalRelay")'
        )
    return domain(text)


_SELECTOR = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")


def selector(text: str) -> str:
    """A DKIM selector (RFC 6376 §3.1): one or more DNS labels, such as ``s2048`` or ``2024.mail``."""
    value = text.strip().lower()
    if not _SELECTOR.match(value) or len(value) > 200:
        raise Invalid(f"{text!r} is not a DKIM selector; write DNS labels such as \"selector1\" or \"s2024\"")
    return value


def smart_host(text: str) -> str:
    text = text.strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if "/" in text:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise Invalid(f"{text!r} is not a valid CIDR range; write it like 192.0.2.0/28") from None
        return text.lower()
    host, colon, port = text.rpartition(":")
    if colon and port.isdigit():
        raise Invalid(f"{text!r} has a port; smart hosts take none (the cloud uses port 25), write {host!r}")
    try:
        return mail_domain(text)
    except InvalidDomainError as exc:
        raise Invalid(f"{exc}; give a host name (mail.contoso.com), an IP address or a CIDR range") from None


def sender_ip(text: str) -> str:
    """exchange-model §2: "single IPv4 or CIDR with mask /24 … /32"; "IPv6 addresses are not supported"."""
    text = text.strip()
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise Invalid(f"{text!r} is not an IPv4 address or range; write it like 198.51.100.0/24") from None
    if network.version == 6:
        raise Invalid(f"{text!r} is IPv6, which the cloud does not support here; give your servers' IPv4 addresses")
    if network.prefixlen < 24:
        raise Invalid(f"{text!r} is wider than /24; the cloud accepts /24 to /32, so list it as /24 ranges")
    return text


def mailbox(text: str) -> str:
    local, at, host = text.strip().rpartition("@")
    if not (at and local):
        raise Invalid(f"{text!r} is not a mail address; write it like john@contoso.com")
    return f"{local}@{domain(host)}"


# A dot-atom of the characters every MTA passes unquoted (RFC 5322 §3.2.3 atext without the ones that route or
# quote: % ! " and the like; security-cases RR-02).
_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9_+=-]+(?:\.[A-Za-z0-9_+=-]+)*")


def plain_mailbox(text: str) -> str:
    """A mailbox written in the plainest form: a dot-atom local part of at most 64 characters (RFC 5321
    §4.5.3.1.1), lower-case, with the domain as an A-label."""
    address = mailbox(text)
    local = address.rpartition("@")[0]
    if not _PLAIN_LOCAL.fullmatch(local) or len(local) > 64:
        raise Invalid(
            f"{text!r} is not a plain mail address (letters, digits and . _ + = - before the @, at most 64); "
            "write it like echo@probe.example"
        )
    return address.lower()


def connector_name(text: str) -> str:
    if not text.strip():
        raise Invalid("is empty; give it a name")
    if len(text) > 64:
        raise Invalid(f"{len(text)} characters, more than the 64 Exchange allows; shorten it")
    return text


def network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise Invalid(f"{text!r} is not an address or network; write it like 192.0.2.0/24") from None


def endpoint(text: str) -> str:
    host, _, port = text.strip().rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise Invalid(f"{text!r} is not address:port; write it like 127.0.0.1:2525 or [::1]:2525") from None
    try:
        port_number(port)
    except ValueError:
        raise Invalid(f"{text!r} has no valid port; write it like 127.0.0.1:2525") from None
    return text.strip()


def path(text: str) -> str:
    if re.search(r"[\x00-\x1f]", text):  # the system refuses NUL in a path; the others are slips of the keyboard
        raise Invalid(f"{text!r} holds a control character; write the path without it")
    return text


def probe_name(text: str) -> str:
    """A probe's name travels in its token and subject: 1 to 64 printable characters."""
    if not text.strip():
        raise Invalid("is empty; give the probe a name such as \"John to Sun\"")
    if len(text) > 64 or not text.isprintable():
        raise Invalid(f"{text!r} must be at most 64 printable characters; shorten it")
    return text


def probe_address(text: str) -> str:
    """A probe's From or To: a mail address in ASCII (the probe asks for no SMTPUTF8)."""
    address = mailbox(text)
    if not address.isascii() or any(char.isspace() or not char.isprintable() for char in address):
        raise Invalid(f"{text!r} is not an ASCII mail address without spaces; probes send without SMTPUTF8")
    return address


def via(text: str) -> str:
    """``HOST[:PORT]``, ``IP[:PORT]`` or ``[IPv6][:PORT]``: where a probe enters."""
    text = text.strip()
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise Invalid(f"{text!r} is not HOST[:PORT]; write an IPv6 address like [2001:db8::25]:587")
        port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if port:
        try:
            port_number(port)
        except ValueError:
            raise Invalid(f"{text!r} has no valid port; write it like mail.contoso.com:587") from None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        name = domain(host)
        return f"{name}:{port}" if port else name
    return text


def watch_url(text: str) -> str:
    """Where a probe's arrival is observed: ``maildir:PATH``, ``imap://…`` or ``imaps://…``."""
    from diag.probe.watch.imap import parse_imap_url

    if text.startswith("maildir:"):
        path(text)
        if not text.removeprefix("maildir:"):
            raise Invalid("maildir: needs a path; write it like maildir:/var/mail/john")
        return text
    if not text.startswith(("imap://", "imaps://")):
        raise Invalid(f"{text!r} is not a mailbox to watch; write maildir:PATH, imap://HOST/FOLDER or imaps://HOST/FOLDER")
    try:
        parse_imap_url(text)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return text


def env_name(text: str) -> str:
    """The name of an environment variable (the value never belongs in the file)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        raise Invalid(f"{text!r} is not the name of an environment variable; write it like DIAG_WATCH_PASSWORD")
    return text


def probe_key(text: str) -> str:
    """The probes' HMAC key: long enough not to be guessed."""
    if len(text) < 16:
        raise Invalid(f"{len(text)} characters are too few to keep forged probes out; use at least 16, "
                      "such as the output of: openssl rand -hex 32")
    return text


# Converters: any value in, the model's value out.


def timestamp(value: object) -> datetime:
    """A UTC date-time from TOML, ISO 8601 text (up to 7 fractional digits, with or without Z) or /Date(ms)/."""
    if isinstance(value, str):
        text = value.strip()
        if match := _PS_DATE.match(text):
            try:
                return datetime.fromtimestamp(int(match[1]) / 1000, UTC)
            except (OverflowError, OSError, ValueError):  # past time_t or year 9999 (by platform), or int()'s digits
                raise Invalid(f"{value!r} {_OUT_OF_RANGE}") from None
        text = text.removesuffix("z") + "Z" if text.endswith("z") else text
        text = re.sub(r"(\.\d{6})\d+", r"\1", text)  # .NET writes 7 fractional digits, Python reads 6
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise Invalid(f"{value!r} is not a date and time; write it like 2019-03-15T02:31:53Z") from None
    if not isinstance(value, datetime):
        raise Invalid(f"found {_kind(value)}; write a date and time such as 2019-03-15T02:31:53Z")
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)  # Exchange stores UTC
    except OverflowError:
        raise Invalid(f"{value.isoformat()} {_OUT_OF_RANGE}") from None


def text(check: Callable[[str], str] | None = None) -> Convert:
    """Text, then ``check`` on it."""

    def convert(value: object) -> object:
        if not isinstance(value, str):
            raise Invalid(f"found {_kind(value)}; write text in double quotes")
        return check(value) if check else value

    return convert


def strings(check: Callable[[str], str]) -> Convert:
    """A list of texts (a single text is a one-item list), ``check`` on each, as a tuple."""

    def convert(value: object) -> object:
        items = [value] if isinstance(value, str) else value
        fix = 'write a list of strings such as ["contoso.com"]'
        if not isinstance(items, list):
            raise Invalid(f"found {_kind(value)}; {fix}")
        for item in items:
            if not isinstance(item, str):
                raise Invalid(f"found a list holding {_kind(item)}; {fix}")
        return tuple(check(item) for item in items)

    return convert


def integer(low: int, high: int) -> Convert:
    """A whole number from ``low`` to ``high``."""

    def convert(value: object) -> object:
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid(f"found {_kind(value)}; write a whole number without quotes")
        if not low <= value <= high:
            raise Invalid(f"{value} is outside {low}..{high}")
        return value

    return convert


def seconds(low: float, high: float) -> Convert:
    """A number of seconds from ``low`` to ``high``."""

    def convert(value: object) -> object:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise Invalid(f"found {_kind(value)}; write a number of seconds without quotes")
        if not low <= value <= high:  # NaN fails both comparisons
            raise Invalid(f"{value} is outside {low:g}..{high:g} seconds")
        return float(value)

    return convert


def flag(value: object) -> object:
    """true or false."""
    if not isinstance(value, bool):
        raise Invalid(f"found {_kind(value)}; write true or false, without quotes")
    return value


def choice(cls: type[enum.StrEnum]) -> Convert:
    """One of an enum's values, without regard to case."""
    names = [member.value for member in cls]

    def convert(value: object) -> object:
        if not isinstance(value, str):
            raise Invalid(f"found {_kind(value)}; use {either(names)} in double quotes")
        for member in cls:
            if member.value.lower() == value.strip().lower():
                return member
        raise Invalid(f"{value!r} is not a {cls.__name__} value; use {either(names)}")

    return convert
