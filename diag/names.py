"""Names and numbers typed by people: internationalized domain names converted, ports read strictly, everything
else refused with a reason."""

from __future__ import annotations

import ipaddress
import re
import socket

from diag.errors import InvalidDomainError

__all__ = ["display_domain", "local_host_name", "mail_domain", "port_number"]

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def local_host_name() -> str:
    """This host's name for EHLO and a default sender domain, fully qualified even when the system's is not.

    Receivers refuse an EHLO name or a sender domain without a dot (RFC 5321 §4.1.4, §4.1.2), so a bare host name
    gets ``.localdomain``.
    """
    name = socket.gethostname()
    if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", name):
        return "localhost.localdomain"
    return name if "." in name.strip(".") else f"{name}.localdomain"


def mail_domain(text: str) -> str:
    """The A-label form of a mail domain given as text (``bücher.example`` → ``xn--bcher-kva.example``).

    IDNA 2008 with UTS #46 mapping, as mail software converts addresses (security-cases.md DNS-18). Raises
    :class:`InvalidDomainError` with a one-line explanation for anything that is not a host name.
    """
    raw = text.strip()
    if not raw:
        raise InvalidDomainError("an empty domain name was given")
    shown = raw.encode("ascii", "backslashreplace").decode("ascii")
    if "@" in raw:
        raise InvalidDomainError(f"{shown!r} is a mail address; give only its domain ({shown.rsplit('@', 1)[-1]!r})")
    if "://" in raw or "/" in raw:
        raise InvalidDomainError(f"{shown!r} is not a domain name (no URLs or paths)")
    literal = raw.strip("[]")
    # Only digits and dots (IPv4) or a colon (IPv6) can make an address: the relay asks this of every path.
    if ":" in literal or literal.replace(".", "").isdigit():
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            pass
        else:
            raise InvalidDomainError(f"{shown!r} is an IP address; diag checks domains (give the mail domain)")
    name = raw[:-1] if raw.endswith(".") else raw
    if name.isascii():
        ascii_name = name.lower()
    else:
        import idna  # imported here: only internationalized names need it

        try:
            ascii_name = idna.encode(name, uts46=True, transitional=False).decode("ascii")
        except idna.IDNAError as exc:
            raise InvalidDomainError(f"{shown!r} is not a valid internationalized domain name: {exc}") from None
    labels = ascii_name.split(".")
    if len(labels) < 2:
        raise InvalidDomainError(f"{shown!r} is not a fully qualified domain name (it has no dot)")
    if len(ascii_name) > 253:
        raise InvalidDomainError(f"{shown!r} is longer than the 253 characters a domain name may have")
    for label in labels:
        if not _LABEL.match(label):
            raise InvalidDomainError(
                f"{shown!r} is not a valid domain name: label {label!r} must be 1-63 letters, digits or "
                "hyphens, not starting or ending with a hyphen"
            )
    if ascii_name.isascii() and labels[-1].isdigit():
        raise InvalidDomainError(f"{shown!r} is not a valid domain name: the top-level label is numeric")
    return ascii_name


def display_domain(name: str) -> str:
    """A domain as people should see it: ``münchen.example (xn--mnchen-3ya.example)`` when its A-labels decode to
    something else, else ``name`` unchanged.

    The Unicode form is what the administrator typed and recognises; the A-label beside it is what DNS and the
    JSON carry, and keeps a look-alike (a Cyrillic letter for a Latin one) from passing for the real name. A name whose
    A-labels do not decode under IDNA 2008 is shown as it is. The result may hold any letter: views escape it
    as they escape all text (diag.render.text.sanitize).
    """
    if "xn--" not in name.lower():
        return name
    import idna  # imported here: only internationalized names need it

    try:
        unicode = idna.decode(name)
    except UnicodeError:  # idna.IDNAError is one; the Punycode codec raises the other kinds
        return name
    return name if unicode == name.lower() else f"{unicode} ({name})"


def port_number(text: str) -> int:
    """A TCP port written in ASCII digits, 1 to 65535; ValueError otherwise.

    ``str.isdigit`` alone is not enough: it accepts "²" (which ``int`` refuses) and "٣" (which ``int`` reads
    as 3).
    """
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or not 0 < int(text) < 65536:
        raise ValueError(f"port {text!r} is not a number from 1 to 65535")
    return int(text)
