"""The one exception tree of diag.

    DiagError                      base of everything diag raises on purpose
    ├── UsageError                 the command was used wrongly (exit 3, one line on stderr)
    │   ├── InvalidDomainError     a domain name that cannot be checked
    │   └── ConfigError            an unreadable or invalid file given on the command line
    ├── RegistryError              the check registry is inconsistent (a programming error)
    ├── LabError                   the embedded lab could not start
    └── ProbeError                 a network probe could not gather its facts; ``reason`` is the
        │                          category reported in a check result ("dns")
        └── DnsError               DNS failure that is not an answer (SERVFAIL, REFUSED, malformed)
            └── DnsTimeoutError    also a builtin ``TimeoutError``

Network errors also subclass the builtin ``ConnectionError``/``TimeoutError`` so that callers who only know
the standard library can still catch them.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DiagError",
    "DnsError",
    "DnsNoDnssecError",
    "DnsTimeoutError",
    "InvalidDomainError",
    "LabError",
    "ProbeError",
    "RegistryError",
    "UsageError",
]


class DiagError(Exception):
    """Base class of every error diag raises on purpose."""


class UsageError(DiagError):
    """The command was used wrongly: bad option, unreadable file, invalid domain name."""


class InvalidDomainError(UsageError):
    """A domain name that is not a valid mail domain."""


class ConfigError(UsageError):
    """A file named on the command line cannot be read or is invalid."""


class RegistryError(DiagError):
    """The check registry is inconsistent: duplicate ids, unknown or cyclic dependencies."""


class LabError(DiagError):
    """The embedded lab could not start."""


class ProbeError(DiagError):
    """A probe could not gather its facts. ``reason`` names the category shown in a check result."""

    reason = "probe"


class DnsError(ProbeError, ConnectionError):
    """A DNS lookup failed without an answer (SERVFAIL, REFUSED, no nameserver, malformed reply)."""

    reason = "dns"


class DnsNoDnssecError(DnsError):
    """A DNSSEC question got an answer without DNSSEC material: the nameserver asked does not implement EDNS.
    A fact about the path to the resolver diag asks, not about the zone."""


class DnsTimeoutError(DnsError, TimeoutError):
    """No DNS answer arrived within the lookup's lifetime."""

