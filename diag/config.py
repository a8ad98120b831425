"""The organization: accepted domains, inbound and outbound connectors, in Exchange's own vocabulary.

The model is frozen data named after the cloud's cmdlet parameters (ARCHITECTURE §4, exchange-model.md §1-§3,
§9) so that an administrator recognises every field. It is read from a TOML file (:func:`load_config`) and can
be made from the JSON that ``Get-AcceptedDomain``, ``Get-InboundConnector`` and ``Get-OutboundConnector`` piped
to ``ConvertTo-Json`` produce (:func:`import_exports`).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import json
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import tomli_w

from diag.errors import ConfigError, InvalidDomainError
from diag.names import mail_domain, port_number

__all__ = [
    "AcceptedDomain",
    "ConfigFileError",
    "ConnectorType",
    "DomainType",
    "ImportResult",
    "InboundConnector",
    "Organization",
    "OutboundConnector",
    "RelayConfig",
    "RelayRole",
    "TlsSettings",
    "domain_in_pattern",
    "dump_toml",
    "import_exports",
    "load_config",
    "parse_config",
]


class DomainType(enum.StrEnum):
    """``Get-AcceptedDomain`` DomainType."""

    AUTHORITATIVE = "Authoritative"
    INTERNAL_RELAY = "InternalRelay"
    EXTERNAL_RELAY = "ExternalRelay"


class ConnectorType(enum.StrEnum):
    """``ConnectorType`` of inbound and outbound connectors."""

    ON_PREMISES = "OnPremises"
    PARTNER = "Partner"


class TlsSettings(enum.StrEnum):
    """Outbound ``TlsSettings``; unset (None) means opportunistic TLS."""

    ENCRYPTION_ONLY = "EncryptionOnly"
    CERTIFICATE_VALIDATION = "CertificateValidation"
    DOMAIN_VALIDATION = "DomainValidation"


def domain_in_pattern(domain: str, pattern: str) -> bool:
    """Does ``domain`` fall under a connector domain pattern?

    ``*`` matches every domain; ``*.contoso.com`` matches contoso.com and every subdomain of it (exchange-model
    §1, RecipientDomains: "domain and all subdomains"); anything else matches only itself. Whole labels only,
    without regard to case or a trailing dot (security-cases RR-04: no substring matching).
    """
    domain = domain.rstrip(".").lower()
    pattern = pattern.rstrip(".").lower()
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        base = pattern[2:]
        return domain == base or domain.endswith("." + base)
    return domain == pattern


@dataclass(frozen=True, slots=True)
class AcceptedDomain:
    """An accepted domain (``Get-AcceptedDomain``).

    Attributes:
        domain_name: ``DomainName``, an A-label domain.
        domain_type: ``DomainType``.
        match_subdomains: ``MatchSubDomains``: subdomains are accepted too (needs InternalRelay in the cloud).
        default: ``Default``.
        initial_domain: ``InitialDomain`` (the tenant's ``*.onmicrosoft.com`` domain).
    """

    domain_name: str
    domain_type: DomainType = DomainType.AUTHORITATIVE
    match_subdomains: bool = False
    default: bool = False
    initial_domain: bool = False

    def covers(self, domain: str) -> bool:
        """Is ``domain`` this accepted domain (or, with MatchSubDomains, one of its subdomains)?"""
        domain = domain.rstrip(".").lower()
        name = self.domain_name.lower()
        return domain == name or (self.match_subdomains and domain.endswith("." + name))


@dataclass(frozen=True, slots=True)
class OutboundConnector:
    """An outbound connector, cloud to somewhere (``Get-OutboundConnector``), with the cmdlet's defaults."""

    name: str
    enabled: bool = True
    connector_type: ConnectorType = ConnectorType.PARTNER
    recipient_domains: tuple[str, ...] = ()
    all_accepted_domains: bool = False
    is_transport_rule_scoped: bool = False
    use_mx_record: bool = True
    smart_hosts: tuple[str, ...] = ()
    tls_settings: TlsSettings | None = None
    tls_domain: str | None = None
    test_mode: bool = False
    connector_source: str = "Default"
    comment: str = ""
    validation_recipients: tuple[str, ...] = ()
    is_validated: bool = False
    last_validation_timestamp: datetime | None = None

    @property
    def candidate(self) -> bool:
        """Can domain-based routing pick it? Enabled, not in test mode, not scoped to transport rules."""
        return self.enabled and not self.test_mode and not self.is_transport_rule_scoped


@dataclass(frozen=True, slots=True)
class InboundConnector:
    """An inbound connector, somewhere to cloud (``Get-InboundConnector``), with the cmdlet's defaults.

    ``sender_domains`` are patterns as in :func:`domain_in_pattern` (the ``smtp:`` prefix and ``;cost`` of the
    wire format removed); ``sender_ip_addresses`` are IPv4 addresses or CIDR ranges (/24 to /32).
    """

    name: str
    enabled: bool = True
    connector_type: ConnectorType = ConnectorType.PARTNER
    sender_domains: tuple[str, ...] = ("*",)
    sender_ip_addresses: tuple[str, ...] = ()
    tls_sender_certificate_name: str | None = None
    require_tls: bool = False
    restrict_domains_to_certificate: bool = False
    restrict_domains_to_ip_addresses: bool = False
    connector_source: str = "Default"
    comment: str = ""


class RelayRole(enum.StrEnum):
    """The part ``diag relay`` plays."""

    CLOUD = "cloud"
    ON_PREMISES = "onprem"
    INTERNET = "internet"


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """What only the relay needs (the ``[Relay]`` table); ``diag relay`` options override each field.

    Attributes:
        role: cloud (accepted domains and connectors decide), onprem (local mailboxes, the rest to the smart
            host) or internet (a plain mail host for its mailboxes).
        hostname: the name in its greeting, EHLO and Received lines.
        listen: ``address:port`` endpoints to listen on.
        spool, maildir: where queued mail and local mailboxes live.
        tls_cert, tls_key: its certificate (offered with STARTTLS and presented when delivering).
        ca_file: the CAs it trusts for peers' certificates (the system store when unset).
        resolver: DNS servers (``IP[:PORT]``) for MX and smart-host lookups; the system's when empty.
        smtp_port: the port it delivers to.
        mailboxes: the addresses it keeps mail for locally.
        smart_host: onprem role: the host everything not local goes to.
        relay_networks: onprem role: client addresses (IPv4/IPv6 networks) it relays for, like Postfix's
            mynetworks; everyone else may only mail its local mailboxes.
        allow_private: it may deliver to addresses that are not public (the lab).
    """

    role: RelayRole = RelayRole.CLOUD
    hostname: str = ""
    listen: tuple[str, ...] = ()
    spool: str = ""
    maildir: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    ca_file: str = ""
    resolver: tuple[str, ...] = ()
    smtp_port: int = 25
    mailboxes: tuple[str, ...] = ()
    smart_host: str = ""
    relay_networks: tuple[str, ...] = ()
    allow_private: bool = False


@dataclass(frozen=True, slots=True)
class Organization:
    """The whole configuration.

    Attributes:
        name: a label for reports.
        mx_host: the cloud host the accepted domains' MX must point at (``contoso-com.mail.protection.outlook.com``).
        accepted_domains, outbound_connectors, inbound_connectors: as configured, in file order.
        source: the file it was read from, if any.
        relay: the ``[Relay]`` table, for ``diag relay``.
    """

    accepted_domains: tuple[AcceptedDomain, ...] = ()
    outbound_connectors: tuple[OutboundConnector, ...] = ()
    inbound_connectors: tuple[InboundConnector, ...] = ()
    name: str = ""
    mx_host: str | None = None
    source: Path | None = None
    relay: RelayConfig | None = None

    def accepted(self, domain: str) -> AcceptedDomain | None:
        """The accepted domain covering ``domain``: the exact one first, else a MatchSubDomains parent."""
        exact = [a for a in self.accepted_domains if a.domain_name.lower() == domain.rstrip(".").lower()]
        covering = exact or [a for a in self.accepted_domains if a.covers(domain)]
        return max(covering, key=lambda a: len(a.domain_name), default=None)


# --- Reading the TOML configuration ---------------------------------------------------------------------------
#
# One table of field specs per Exchange object drives everything: type checks and normalisation on input,
# the cross-field rules of exchange-model.md §1-§3, the importer's reading of JSON shapes and dump_toml.


class ConfigFileError(ConfigError):
    """A configuration or export file is invalid; ``problems`` holds one ``FILE:LINE: where: what; fix`` line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


class _Invalid(Exception):
    """A value that does not fit its field; the message says what is wrong and how to fix it."""


_Convert = Callable[[object], object]
_KINDS = {bool: "true/false", str: "text", int: "a number", float: "a number", list: "a list", dict: "a table"}
_ADDRESS_SPACE = re.compile(r"^smtp:(.*?)(?:;\d+)?$", re.IGNORECASE)  # wire form of SenderDomains: smtp:*;1
# Windows PowerShell 5.1: "\/Date(1552613513000)\/", in ASCII digits ("٣" is a digit to \d and int)
_PS_DATE = re.compile(r"^/Date\((-?\d+)(?:[+-]\d{4})?\)/$", re.ASCII)
_OUT_OF_RANGE = "is not within the years 1 to 9999 in UTC; write a date and time such as 2019-03-15T02:31:53Z"
# Half of a UTF-16 pair: JSON can escape one alone ("\\ud800"); no UTF-8 file can hold it (RFC 8259 §8.2).
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _kind(value: object) -> str:
    return _KINDS.get(type(value), "a date" if isinstance(value, date) else type(value).__name__)


def _either(words: Sequence[str], conjunction: str = "or") -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {conjunction} {words[-1]}"


def _snake(key: str) -> str:
    """``UseMXRecord`` → ``use_mx_record``: the model attribute of a cmdlet parameter."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", key).lower()


def _closest(word: str, choices: Iterable[str]) -> str | None:
    lowered = {choice.lower(): choice for choice in choices}
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1)
    return lowered[match[0]] if match else None


# Value normalisers: text in, normalised text out, _Invalid with "what; how to fix" otherwise.


def _domain(text: str) -> str:
    try:
        return mail_domain(text)
    except InvalidDomainError as exc:
        message = str(exc)
        raise _Invalid(message if ";" in message else f"{message}; give a domain such as contoso.com") from None


def _pattern(text: str, *, star: bool = True) -> str:
    """A connector domain: ``contoso.com``, ``*.contoso.com`` or (with ``star``) ``*``; ``smtp:x;1`` stripped."""
    text = _ADDRESS_SPACE.sub(r"\1", text.strip())
    if text == "*":
        if star:
            return text
        raise _Invalid("'*' matches every name; give a domain or *.domain such as *.contoso.com")
    base = text.removeprefix("*.")
    if "*" in base:
        allowed = "* or *.domain" if star else "*.domain"
        raise _Invalid(f"{text!r} has a wildcard inside the name; only {allowed} is allowed, e.g. *.contoso.com")
    return ("*." if base != text else "") + _domain(base)


def _certificate_name(text: str) -> str:
    return _pattern(text, star=False)


def _accepted_domain(text: str) -> str:
    if "*" in text:
        raise _Invalid(
            f"{text!r} is a wildcard; an accepted domain is one domain (to accept its subdomains set "
            'MatchSubDomains = true with DomainType = "InternalRelay")'
        )
    return _domain(text)


def _smart_host(text: str) -> str:
    text = text.strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if "/" in text:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise _Invalid(f"{text!r} is not a valid CIDR range; write it like 192.0.2.0/28") from None
        return text.lower()
    host, colon, port = text.rpartition(":")
    if colon and port.isdigit():
        raise _Invalid(f"{text!r} has a port; smart hosts take none (the cloud uses port 25), write {host!r}")
    try:
        return mail_domain(text)
    except InvalidDomainError as exc:
        raise _Invalid(f"{exc}; give a host name (mail.contoso.com), an IP address or a CIDR range") from None


def _sender_ip(text: str) -> str:
    """exchange-model §2: "single IPv4 or CIDR with mask /24 … /32"; "IPv6 addresses are not supported"."""
    text = text.strip()
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _Invalid(f"{text!r} is not an IPv4 address or range; write it like 198.51.100.0/24") from None
    if network.version == 6:
        raise _Invalid(f"{text!r} is IPv6, which the cloud does not support here; give your servers' IPv4 addresses")
    if network.prefixlen < 24:
        raise _Invalid(f"{text!r} is wider than /24; the cloud accepts /24 to /32, so list it as /24 ranges")
    return text


def _mailbox(text: str) -> str:
    local, at, domain = text.strip().rpartition("@")
    if not (at and local):
        raise _Invalid(f"{text!r} is not a mail address; write it like john@contoso.com")
    return f"{local}@{_domain(domain)}"


def _name(text: str) -> str:
    if not text.strip():
        raise _Invalid("is empty; give it a name")
    if len(text) > 64:
        raise _Invalid(f"{len(text)} characters, more than the 64 Exchange allows; shorten it")
    return text


def _when(value: object) -> datetime:
    """A UTC date-time from TOML, ISO 8601 text (up to 7 fractional digits, with or without Z) or /Date(ms)/."""
    if isinstance(value, str):
        text = value.strip()
        if match := _PS_DATE.match(text):
            try:
                return datetime.fromtimestamp(int(match[1]) / 1000, UTC)
            except (OverflowError, OSError, ValueError):  # past time_t or year 9999 (by platform), or int()'s digits
                raise _Invalid(f"{value!r} {_OUT_OF_RANGE}") from None
        text = text.removesuffix("z") + "Z" if text.endswith("z") else text
        text = re.sub(r"(\.\d{6})\d+", r"\1", text)  # .NET writes 7 fractional digits, Python reads 6
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise _Invalid(f"{value!r} is not a date and time; write it like 2019-03-15T02:31:53Z") from None
    if not isinstance(value, datetime):
        raise _Invalid(f"found {_kind(value)}; write a date and time such as 2019-03-15T02:31:53Z")
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)  # Exchange stores UTC
    except OverflowError:
        raise _Invalid(f"{value.isoformat()} {_OUT_OF_RANGE}") from None


# Converters: a TOML value in, a model value out.


def _text(check: Callable[[str], str] | None = None) -> _Convert:
    def convert(value: object) -> object:
        if not isinstance(value, str):
            raise _Invalid(f"found {_kind(value)}; write text in double quotes")
        return check(value) if check else value

    return convert


def _strings(check: Callable[[str], str]) -> _Convert:
    def convert(value: object) -> object:
        items = [value] if isinstance(value, str) else value  # a single string is a one-item list
        fix = 'write a list of strings such as ["contoso.com"]'
        if not isinstance(items, list):
            raise _Invalid(f"found {_kind(value)}; {fix}")
        for item in items:
            if not isinstance(item, str):
                raise _Invalid(f"found a list holding {_kind(item)}; {fix}")
        return tuple(check(item) for item in items)

    return convert


def _integer(low: int, high: int) -> _Convert:
    def convert(value: object) -> object:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Invalid(f"found {_kind(value)}; write a whole number without quotes")
        if not low <= value <= high:
            raise _Invalid(f"{value} is outside {low}..{high}")
        return value

    return convert


def _network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise _Invalid(f"{text!r} is not an address or network; write it like 192.0.2.0/24") from None


def _endpoint(text: str) -> str:
    host, _, port = text.strip().rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise _Invalid(f"{text!r} is not address:port; write it like 127.0.0.1:2525 or [::1]:2525") from None
    try:
        port_number(port)
    except ValueError:
        raise _Invalid(f"{text!r} has no valid port; write it like 127.0.0.1:2525") from None
    return text.strip()


def _path(text: str) -> str:
    if re.search(r"[\x00-\x1f]", text):  # the system refuses NUL in a path; the others are slips of the keyboard
        raise _Invalid(f"{text!r} holds a control character; write the path without it")
    return text


def _flag(value: object) -> object:
    if not isinstance(value, bool):
        raise _Invalid(f"found {_kind(value)}; write true or false, without quotes")
    return value


def _enum(cls: type[enum.StrEnum]) -> _Convert:
    names = [member.value for member in cls]

    def convert(value: object) -> object:
        if not isinstance(value, str):
            raise _Invalid(f"found {_kind(value)}; use {_either(names)} in double quotes")
        for member in cls:
            if member.value.lower() == value.strip().lower():
                return member
        raise _Invalid(f"{value!r} is not a {cls.__name__} value; use {_either(names)}")

    return convert


@dataclass(frozen=True, slots=True)
class _Field:
    """One cmdlet parameter: its TOML key, converter, how the importer reads its JSON and whether dumps show it."""

    key: str
    convert: _Convert
    json: str = ""  # "list", "enum" or "date" for the JSON shapes of exchange-model §8; "" taken as it is
    always: bool = False  # dump_toml writes it even at its default
    model_name: str = ""  # the model attribute, when it is not the key in snake_case

    @property
    def attr(self) -> str:
        return self.model_name or _snake(self.key)


@dataclass(frozen=True, slots=True)
class _Rule:
    """A cross-field rule; skipped when a key it ``needs`` is itself invalid, so one mistake gives one line."""

    field: str  # reported on this key's line, or on the table header when the key is absent
    needs: tuple[str, ...]
    broken: Callable[[Mapping[str, Any]], bool]
    message: str


@dataclass(frozen=True, slots=True)
class _Table:
    """One TOML table (an Exchange object kind): its model class, fields and rules."""

    name: str
    model: type[Any]
    fields: tuple[_Field, ...]
    rules: tuple[_Rule, ...] = ()
    identity: str = ""  # the required key naming an entry ("" for the single [Organization] table)
    example: str = ""

    def field(self, key: str) -> _Field | None:
        return next((field for field in self.fields if field.key == key), None)

    def defaults(self) -> dict[str, object]:
        known = {field.name: field.default for field in dataclasses.fields(self.model)}
        return {field.key: known[field.attr] for field in self.fields}

    def make(self, values: Mapping[str, object]) -> Any:
        return self.model(**{field.attr: values[field.key] for field in self.fields if field.key in values})


def _partner_only(key: str) -> _Rule:
    return _Rule(
        key,
        (key, "ConnectorType"),
        lambda v: v[key] and v["ConnectorType"] is not ConnectorType.PARTNER,
        'applies only to Partner connectors; remove it or set ConnectorType = "Partner"',  # exchange-model §2
    )


_NAME = _Field("Name", _text(_name), always=True)
_ENABLED = _Field("Enabled", _flag, always=True)
_CONNECTOR_TYPE = _Field("ConnectorType", _enum(ConnectorType), "enum", always=True)
_SOURCE_AND_COMMENT = (_Field("ConnectorSource", _text(), "enum"), _Field("Comment", _text()))
_ON_PREMISES = ConnectorType.ON_PREMISES

_ORGANIZATION = _Table("Organization", Organization, (_Field("Name", _text()), _Field("MxHost", _text(_domain))))
_ACCEPTED = _Table(
    "AcceptedDomain",
    AcceptedDomain,
    (
        _Field("DomainName", _text(_accepted_domain), always=True),
        _Field("DomainType", _enum(DomainType), "enum", always=True),
        _Field("MatchSubDomains", _flag, model_name="match_subdomains"),
        _Field("Default", _flag),
        _Field("InitialDomain", _flag),
    ),
    (
        _Rule(
            "MatchSubDomains",
            ("MatchSubDomains", "DomainType"),
            lambda v: v["MatchSubDomains"] and v["DomainType"] is DomainType.AUTHORITATIVE,
            'the cloud accepts subdomains only for InternalRelay domains; set DomainType = "InternalRelay" '
            "or MatchSubDomains = false",
        ),
    ),
    identity="DomainName",
    example="contoso.com",
)
_OUTBOUND = _Table(
    "OutboundConnector",
    OutboundConnector,
    (
        _NAME,
        _ENABLED,
        _CONNECTOR_TYPE,
        _Field("RecipientDomains", _strings(_pattern), "list"),
        _Field("AllAcceptedDomains", _flag),
        _Field("IsTransportRuleScoped", _flag),
        _Field("UseMXRecord", _flag, always=True),
        _Field("SmartHosts", _strings(_smart_host), "list"),
        _Field("TlsSettings", _enum(TlsSettings), "enum"),
        _Field("TlsDomain", _text(_certificate_name)),
        _Field("TestMode", _flag),
        *_SOURCE_AND_COMMENT,
        _Field("ValidationRecipients", _strings(_mailbox), "list"),
        _Field("IsValidated", _flag),
        _Field("LastValidationTimestamp", _when, "date"),
    ),
    (
        _Rule(
            "UseMXRecord",
            ("UseMXRecord", "SmartHosts"),
            lambda v: not v["UseMXRecord"] and not v["SmartHosts"],
            'false needs smart hosts; add SmartHosts = ["mail.contoso.com"] or set UseMXRecord = true',
        ),
        _Rule(
            "SmartHosts",
            ("UseMXRecord", "SmartHosts"),
            lambda v: v["UseMXRecord"] and v["SmartHosts"],
            "ignored while UseMXRecord is true (its default); set UseMXRecord = false to use the smart hosts",
        ),
        _Rule(
            "TlsDomain",
            ("TlsDomain", "TlsSettings"),
            lambda v: v["TlsDomain"] is not None and v["TlsSettings"] is not TlsSettings.DOMAIN_VALIDATION,
            'used only with TlsSettings = "DomainValidation"; set that or remove TlsDomain',
        ),
        _Rule(
            "TlsSettings",
            ("TlsDomain", "TlsSettings"),
            lambda v: v["TlsSettings"] is TlsSettings.DOMAIN_VALIDATION and v["TlsDomain"] is None,
            "DomainValidation needs TlsDomain, the name the smart hosts' certificate must carry; "
            'add TlsDomain = "mail.contoso.com" or use CertificateValidation',
        ),
        _Rule(
            "AllAcceptedDomains",
            ("AllAcceptedDomains", "ConnectorType"),
            lambda v: v["AllAcceptedDomains"] and v["ConnectorType"] is not _ON_PREMISES,
            'needs ConnectorType = "OnPremises" (the default is Partner); set it or use RecipientDomains',
        ),
        _Rule(
            "RecipientDomains",
            ("RecipientDomains", "AllAcceptedDomains", "IsTransportRuleScoped"),
            lambda v: not (v["RecipientDomains"] or v["AllAcceptedDomains"] or v["IsTransportRuleScoped"]),
            "the connector routes nothing (no RecipientDomains, AllAcceptedDomains or IsTransportRuleScoped); "
            'add RecipientDomains = ["contoso.com"]',
        ),
    ),
    identity="Name",
    example="Connector 1",
)
_INBOUND = _Table(
    "InboundConnector",
    InboundConnector,
    (
        _NAME,
        _ENABLED,
        _CONNECTOR_TYPE,
        _Field("SenderDomains", _strings(_pattern), "list", always=True),
        _Field("SenderIPAddresses", _strings(_sender_ip), "list"),
        _Field("TlsSenderCertificateName", _text(_certificate_name)),
        _Field("RequireTls", _flag),
        _Field("RestrictDomainsToCertificate", _flag),
        _Field("RestrictDomainsToIPAddresses", _flag),
        *_SOURCE_AND_COMMENT,
    ),
    (_partner_only("RestrictDomainsToCertificate"), _partner_only("RestrictDomainsToIPAddresses")),
    identity="Name",
    example="From on-premises",
)
_RELAY = _Table(
    "Relay",
    RelayConfig,
    (
        _Field("Role", _enum(RelayRole)),
        _Field("Hostname", _text(_domain)),
        _Field("Listen", _strings(_endpoint)),
        _Field("Spool", _text(_path)),
        _Field("Maildir", _text(_path)),
        _Field("TlsCert", _text(_path)),
        _Field("TlsKey", _text(_path)),
        _Field("CaFile", _text(_path)),
        _Field("Resolver", _strings(lambda text: text.strip())),
        _Field("SmtpPort", _integer(1, 65535)),
        _Field("Mailboxes", _strings(_mailbox)),
        _Field("SmartHost", _text(_domain)),
        _Field("RelayNetworks", _strings(_network)),
        _Field("AllowPrivate", _flag),
    ),
)
_SINGLE_TABLES = (_ORGANIZATION, _RELAY)
_ENTRY_TABLES = (_ACCEPTED, _OUTBOUND, _INBOUND)
_TABLES = {table.name: table for table in (*_SINGLE_TABLES, *_ENTRY_TABLES)}


@dataclass(frozen=True, slots=True)
class _Problem:
    table: str
    index: int  # 1-based entry of an array of tables; 0 for [Organization] and whole tables
    field: str
    message: str

    @property
    def where(self) -> str:
        table = f"{self.table}[{self.index}]" if self.index else self.table
        return f"{table}.{self.field}" if self.field else table


class _Lines:
    """Line numbers of table headers and ``Key =`` lines, which tomllib does not report."""

    _ARRAY = re.compile(r'^\s*\[\[\s*"?([^\]"]+?)"?\s*\]\]')
    _TABLE = re.compile(r'^\s*\[\s*"?([^\]"]+?)"?\s*\]')
    _KEY = re.compile(r'^\s*"?([A-Za-z0-9_-]+)"?\s*=')

    def __init__(self, text: str) -> None:
        self.headers: dict[tuple[str, int], int] = {}
        self.keys: dict[tuple[str, int, str], int] = {}
        counts: dict[str, int] = {}
        current, in_string = ("", 0), False
        for number, line in enumerate(text.splitlines(), 1):
            if not in_string:
                if match := self._ARRAY.match(line):
                    counts[match[1]] = counts.get(match[1], 0) + 1
                    current = (match[1], counts[match[1]])
                    self.headers.setdefault(current, number)
                elif match := self._TABLE.match(line):
                    current = (match[1], 0)
                    self.headers.setdefault(current, number)
                elif match := self._KEY.match(line):
                    self.keys.setdefault((*current, match[1]), number)
            if (line.count('"""') + line.count("'''")) % 2:  # a multi-line string opens or closes
                in_string = not in_string

    def find(self, problem: _Problem) -> int:
        table, index = problem.table, problem.index
        return (
            self.keys.get((table, index, problem.field))
            or self.headers.get((table, index))
            or self.headers.get((table, 1))
            or self.keys.get(("", 0, table))
            or 1
        )


def _build(
    table: _Table, index: int, entry: Mapping[str, object], problems: list[_Problem]
) -> dict[str, object] | None:
    """Convert and check one table's keys; the values by key, or None when the entry has no valid identity."""
    values: dict[str, object] = {}
    bad: set[str] = set()
    for key, raw in entry.items():
        field = table.field(key)
        if field is None:
            keys = [f.key for f in table.fields]
            match = _closest(key, keys)
            fix = f"did you mean {match}?" if match else f"remove it ({table.name} keys: {_either(keys, 'and')})"
            bad.add(match or key)  # a misspelt key is not also reported as missing by the rules
            problems.append(_Problem(table.name, index, key, f"unknown key; {fix}"))
            continue
        try:
            values[key] = field.convert(raw)
        except _Invalid as exc:
            bad.add(key)
            problems.append(_Problem(table.name, index, key, str(exc)))
    view = table.defaults() | values
    problems.extend(
        _Problem(table.name, index, rule.field, rule.message)
        for rule in table.rules
        if bad.isdisjoint(rule.needs) and rule.broken(view)
    )
    if table.identity and table.identity not in values:
        if table.identity not in bad:
            problems.append(
                _Problem(table.name, index, table.identity, f'missing; add {table.identity} = "{table.example}"')
            )
        return None
    return values


def _check_unique(table: _Table, entries: Sequence[Mapping[str, object] | None], problems: list[_Problem]) -> None:
    """Connector names (per kind) and accepted domains are unique, without regard to case, as in Exchange."""
    seen: dict[str, int] = {}
    for index, values in enumerate(entries, 1):
        if values is not None:
            name = str(values[table.identity])
            if (first := seen.setdefault(name.lower(), index)) != index:
                problems.append(
                    _Problem(
                        table.name,
                        index,
                        table.identity,
                        f"{name!r} is already the {table.identity} of {table.name}[{first}]; "
                        "each may appear only once, so remove or rename one",
                    )
                )


def _read(document: Mapping[str, object]) -> tuple[Organization, list[_Problem]]:
    problems: list[_Problem] = []
    singles: dict[str, dict[str, object] | None] = {}
    entries: dict[str, list[dict[str, object] | None]] = {table.name: [] for table in _ENTRY_TABLES}
    for key, value in document.items():
        table = _TABLES.get(key)
        if table in _SINGLE_TABLES:
            if isinstance(value, dict):
                singles[key] = _build(table, 0, value, problems)
            else:
                problems.append(_Problem(key, 0, "", f"must be one table; write [{key}], not [[{key}]]"))
        elif table is not None:
            if isinstance(value, list) and all(isinstance(item, dict) for item in value):
                entries[key] = [_build(table, index, item, problems) for index, item in enumerate(value, 1)]
            else:
                problems.append(_Problem(key, 0, "", f"must be an array of tables; write [[{key}]], one per entry"))
        elif isinstance(value, dict | list):
            match = _closest(key, _TABLES)
            fix = f"did you mean {match}?" if match else f"remove it (the tables are {_either(list(_TABLES), 'and')})"
            problems.append(_Problem(key, 0, "", f"not a table diag knows; {fix}"))
        else:
            problems.append(_Problem(key, 0, "", "a key outside any table; put it under a header like [Organization]"))
    for table in _ENTRY_TABLES:
        _check_unique(table, entries[table.name], problems)
    if document.get(_ACCEPTED.name, []) == []:
        problems.append(_Problem(_ACCEPTED.name, 0, "", "none configured; add an [[AcceptedDomain]] for each domain"))
    made = {name: tuple(_TABLES[name].make(v) for v in values if v is not None) for name, values in entries.items()}
    organization: Organization = _ORGANIZATION.make(singles.get(_ORGANIZATION.name) or {})
    relay = singles.get(_RELAY.name)
    organization = dataclasses.replace(
        organization,
        accepted_domains=made[_ACCEPTED.name],
        outbound_connectors=made[_OUTBOUND.name],
        inbound_connectors=made[_INBOUND.name],
        relay=_RELAY.make(relay) if relay is not None else None,
    )
    return organization, problems


def _syntax_error(shown: str, text: str, exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    position = re.search(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)", message)
    line = int(position[1]) if position and position[1] else max(len(text.splitlines()), 1)
    detail = message[: position.start()] if position else message
    if position and position[2]:
        detail += f" at column {position[2]}"
    if detail.startswith("Invalid value"):
        detail += "; text needs double quotes and true/false are lower-case"
    return f"{shown}:{line}: TOML syntax error: {detail}"


def parse_config(text: str, source: Path | None = None) -> Organization:
    """The organization described by a TOML text; :class:`ConfigFileError` lists every problem, one per line."""
    shown = str(source) if source is not None else "<config>"
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError([_syntax_error(shown, text, exc)]) from None
    except RecursionError:
        raise ConfigFileError([f"{shown}: not valid TOML: nested too deeply"]) from None
    except ValueError:  # Python reads integers of at most 4300 digits (sys.get_int_max_str_digits)
        raise ConfigFileError([f"{shown}: not valid TOML: a number too large"]) from None
    organization, problems = _read(document)
    if problems:
        lines = _Lines(text)
        located = sorted(((lines.find(problem), problem) for problem in problems), key=lambda pair: pair[0])
        raise ConfigFileError([f"{shown}:{line}: {problem.where}: {problem.message}" for line, problem in located])
    return dataclasses.replace(organization, source=source)


def _read_text(path: Path) -> str:
    """A file's text: UTF-8 with or without BOM, or UTF-16 with BOM (Windows PowerShell's ``>``)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigFileError([f"{path}: cannot read it: {exc.strerror or exc}"]) from None
    try:
        return data.decode("utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigFileError([f"{path}:{line}: not UTF-8 text; save the file as UTF-8"]) from None


def load_config(path: Path) -> Organization:
    """The organization described by the TOML file at ``path`` (see :func:`parse_config`)."""
    return parse_config(_read_text(path), path)


# --- Importing PowerShell exports and writing TOML ------------------------------------------------------------

_OUTBOUND_MARKS = frozenset({"SmartHosts", "UseMXRecord", "RecipientDomains", "TlsSettings", "AllAcceptedDomains"})
_INBOUND_MARKS = frozenset({"SenderDomains", "SenderIPAddresses", "TlsSenderCertificateName", "RequireTls"})
_NOT_AN_EXPORT = "give the output of Get-AcceptedDomain, Get-InboundConnector or Get-OutboundConnector | ConvertTo-Json"

Verbatim = tuple[str, int, str, object]  # (table, 1-based index, key, value written as found in the export)


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What ``diag config import`` made of the exports.

    Attributes:
        organization: the imported organization; an invalid value is left at the model's default here.
        notes: one line per thing worth knowing (unknown values kept, objects skipped, settings to add).
        sources: the export files, in the order given.
        verbatim: values that did not validate, written to the TOML as found so ``diag config check`` reports them.
    """

    organization: Organization
    notes: tuple[str, ...] = ()
    sources: tuple[Path, ...] = ()
    verbatim: tuple[Verbatim, ...] = ()

    def to_toml(self) -> str:
        """The TOML configuration, values that did not validate included as found."""
        return dump_toml(self.organization, sources=self.sources, verbatim=self.verbatim)


def _json_objects(path: Path) -> list[dict[str, object]]:
    """The objects of one ``ConvertTo-Json`` file: one object, an array, or PS 5.1's ``{"value": [...]}``."""
    text = _read_text(path)
    if not text.strip():
        return []
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        problem = f"{path}:{exc.lineno}: invalid JSON: {exc.msg} at column {exc.colno}; {_NOT_AN_EXPORT}"
        raise ConfigFileError([problem]) from None
    except RecursionError:
        raise ConfigFileError([f"{path}: invalid JSON: nested too deeply; {_NOT_AN_EXPORT}"]) from None
    except ValueError:  # Python reads integers of at most 4300 digits (sys.get_int_max_str_digits)
        raise ConfigFileError([f"{path}: invalid JSON: a number too large; {_NOT_AN_EXPORT}"]) from None
    if isinstance(document, dict) and set(document) <= {"value", "Count"} and isinstance(document.get("value"), list):
        document = document["value"]
    items = document if isinstance(document, list) else [document]
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise ConfigFileError([f"{path}: item {number} is not a JSON object; {_NOT_AN_EXPORT}"])
    return items


def _table_of(record: Mapping[str, object]) -> _Table | None:
    if "DomainName" in record and "DomainType" in record:
        return _ACCEPTED
    outbound, inbound = not _OUTBOUND_MARKS.isdisjoint(record), not _INBOUND_MARKS.isdisjoint(record)
    return None if outbound == inbound else _OUTBOUND if outbound else _INBOUND


def _as_text(field: _Field | None) -> str:
    """How to make PowerShell write a property as text: a calculated property of Select-Object."""
    key = field.key if field else ""
    value = f"[string[]]$_.{key}" if field and field.json == "list" else f'"$($_.{key})"'
    return f"as text, e.g. Select-Object @{{n='{key}';e={{{value}}}}}"


def _from_json(table: _Table, record: Mapping[str, object], label: str, errors: list[str]) -> dict[str, object]:
    """The record's values in TOML shape (exchange-model §8); fields missing from it keep the model's defaults."""
    values: dict[str, object] = {}
    numbers: list[str] = []
    for field in table.fields:
        value = record.get(field.key)
        if isinstance(value, dict) and "value" in value and field.json in ("list", "date"):
            value = value["value"]  # Windows PowerShell 5.1 wraps collections and dates in {"value": ...}
        if value is None:
            continue
        if field.json == "enum" and isinstance(value, int) and not isinstance(value, bool):
            numbers.append(field.key)
        elif isinstance(value, dict) or (isinstance(value, list) and not all(isinstance(i, str) for i in value)):
            errors.append(f"{label}: {field.key} holds JSON objects, not text; export it {_as_text(field)}")
        elif _SURROGATE.search("".join(value) if isinstance(value, list) else str(value)):
            errors.append(f"{label}: {field.key} is not valid Unicode (half a surrogate pair); correct it in Exchange")
        else:
            values[field.key] = value
    if numbers:
        # Windows PowerShell 5.1 writes enums as numbers; the numbering is not ours to guess (exchange-model §8).
        errors.append(
            f"{label}: {_either(numbers, 'and')} {'is a number' if len(numbers) == 1 else 'are numbers'}, not names; "
            f"export again with ConvertTo-Json -EnumsAsStrings (PowerShell 7) or {_as_text(table.field(numbers[0]))}"
        )
    return values


def import_exports(paths: Sequence[Path]) -> ImportResult:
    """Read ``Get-AcceptedDomain``/``Get-InboundConnector``/``Get-OutboundConnector | ConvertTo-Json`` files.

    Kinds may be mixed across and within files; they are told apart by their fields. Raises
    :class:`ConfigFileError` for unreadable files, bad JSON, objects that are not Exchange exports and enums
    written as numbers; everything else is imported, with a note where a value needs attention.
    """
    errors: list[str] = []
    notes: list[str] = []
    found: dict[str, list[tuple[str, dict[str, object]]]] = {table.name: [] for table in _ENTRY_TABLES}
    for path in paths:
        try:
            records = _json_objects(path)
        except ConfigFileError as exc:
            errors.extend(exc.problems)
            continue
        if not records:
            notes.append(f"{path}: no objects in it (the cmdlet returned nothing); skipped")
        for number, record in enumerate(records, 1):
            table = _table_of(record)
            name = record.get("Name", record.get("DomainName", record.get("Identity")))
            label = f"{path}: object {number}" + (f" ({table.name if table else 'named'} {name!r})" if name else "")
            if table is None:
                errors.append(f"{label}: neither an accepted domain nor one kind of connector; {_NOT_AN_EXPORT}")
            else:
                found[table.name].append((label, _from_json(table, record, label, errors)))
    if errors:
        raise ConfigFileError(errors)
    verbatim: list[Verbatim] = []
    made = {table.name: _import_table(table, found[table.name], notes, verbatim) for table in _ENTRY_TABLES}
    accepted: tuple[AcceptedDomain, ...] = made[_ACCEPTED.name]
    if not accepted:
        notes.append("no accepted domains in these exports; add the output of Get-AcceptedDomain | ConvertTo-Json")
    notes.append(
        'the exports do not say where MX must point; add MxHost = "<tenant>.mail.protection.outlook.com" '
        "under [Organization]"
    )
    main = next((a for a in accepted if a.default), accepted[0] if accepted else None)
    organization = Organization(
        accepted_domains=accepted,
        outbound_connectors=made[_OUTBOUND.name],
        inbound_connectors=made[_INBOUND.name],
        name=main.domain_name if main else "",
    )
    return ImportResult(organization, tuple(notes), tuple(paths), tuple(verbatim))


def _import_table(
    table: _Table, found: Sequence[tuple[str, dict[str, object]]], notes: list[str], verbatim: list[Verbatim]
) -> tuple[Any, ...]:
    made: list[Any] = []
    seen: dict[str, str] = {}
    for label, raw in found:
        problems: list[_Problem] = []
        values = _build(table, 0, raw, problems)
        if values is None:
            notes.append(f"{label}: skipped: {'; '.join(f'{p.field} {p.message}' for p in problems)}")
            continue
        name = str(values[table.identity]).lower()
        if name in seen:
            notes.append(f"{label}: skipped: the same {table.identity} as {seen[name]}")
            continue
        seen[name] = label
        made.append(table.make(values))
        for problem in problems:
            kept = problem.field in raw and problem.field not in values
            if kept:
                verbatim.append((table.name, len(made), problem.field, raw[problem.field]))
            how = "kept as written; `diag config check` reports it" if kept else "`diag config check` reports it"
            notes.append(f"{label}: {problem.field}: {problem.message} ({how})")
    return tuple(made)


def _toml_value(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    return list(value) if isinstance(value, tuple) else value


def _dump_entry(table: _Table, item: object, index: int, kept: Mapping[tuple[str, int, str], object]) -> dict[str, Any]:
    defaults = table.defaults()
    entry: dict[str, Any] = {}
    for field in table.fields:
        value = kept.get((table.name, index, field.key), getattr(item, field.attr))
        if value is not None and (field.always or value != defaults[field.key]):
            entry[field.key] = _toml_value(value)
    return entry


def dump_toml(organization: Organization, *, sources: Sequence[Path] = (), verbatim: Iterable[Verbatim] = ()) -> str:
    """The organization as a TOML configuration that :func:`load_config` reads back.

    Writes names, the routing keys and every non-default value; ``verbatim`` values replace the model's (see
    :class:`ImportResult`).
    """
    kept = {(table, index, key): value for table, index, key, value in verbatim}
    # Each header written here: tomli_w would make short arrays of tables inline, which reads badly.
    head = _dump_entry(_ORGANIZATION, organization, 0, kept)
    chunks = [f"[{_ORGANIZATION.name}]\n{tomli_w.dumps(head)}"] if head else []
    for table, items in zip(
        _ENTRY_TABLES,
        (organization.accepted_domains, organization.outbound_connectors, organization.inbound_connectors),
        strict=True,
    ):
        for index, item in enumerate(items, 1):
            chunks.append(f"[[{table.name}]]\n{tomli_w.dumps(_dump_entry(table, item, index, kept))}")
    origin = f" from {', '.join(str(path) for path in sources)}" if sources else ""
    return (
        f"# Generated by `diag config import`{origin}.\n"
        "# The keys are the Exchange cmdlets' parameter names; check the file with `diag config check`.\n\n"
        + "\n".join(chunks)
    )
