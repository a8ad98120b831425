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
    "flag",
    "integer",
    "mailbox",
    "network",
    "path",
    "pattern",
    "selector",
    "sender_ip",
    "smart_host",
    "strings",
    "text",
    "timestamp",
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
