"""The configuration's tables, declared: each TOML table's keys (the cmdlet parameters), converters and rules.

Everything else is driven by these declarations: the loader's type checks, normalisation and cross-field rules
(exchange-model.md §1-§3), its did-you-mean hints, the importer's reading of the JSON shapes (§8) and
:func:`~diag.config.dump.dump_toml`. A new key is one :class:`Field` line in its table (and the attribute in
``model.py``); a new table is one :class:`Table` here, listed in :data:`TABLES`, with its dataclass and an
``Organization`` attribute in ``model.py``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

from diag.config.model import (
    MAX_PROBES,
    AcceptedDomain,
    ConnectorType,
    DomainType,
    InboundConnector,
    Organization,
    OutboundConnector,
    ProbeConfig,
    RelayConfig,
    RelayRole,
    TlsSettings,
)
from diag.config.values import (
    Convert,
    accepted_domain,
    certificate_name,
    choice,
    connector_name,
    domain,
    endpoint,
    env_name,
    flag,
    integer,
    mailbox,
    network,
    path,
    pattern,
    plain_mailbox,
    probe_address,
    probe_key,
    probe_name,
    seconds,
    selector,
    sender_ip,
    smart_host,
    strings,
    text,
    timestamp,
    via,
    watch_url,
)
from diag.frozen import frozen

__all__ = [
    "ACCEPTED",
    "INBOUND",
    "ORGANIZATION",
    "OUTBOUND",
    "PROBE",
    "RELAY",
    "TABLES",
    "Field",
    "Rule",
    "Table",
]


def _snake(key: str) -> str:
    """``UseMXRecord`` → ``use_mx_record``: the model attribute of a cmdlet parameter."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", key).lower()


@frozen
class Field:
    """One cmdlet parameter: its TOML key, converter, how the importer reads its JSON and whether dumps show it."""

    key: str
    convert: Convert
    json: str = ""  # "list", "enum" or "date" for the JSON shapes of exchange-model §8; "" taken as it is
    always: bool = False  # dump_toml writes it even at its default
    model_name: str = ""  # the model attribute, when it is not the key in snake_case

    @property
    def attr(self) -> str:
        return self.model_name or _snake(self.key)


@frozen
class Rule:
    """A cross-field rule; skipped when a key it ``needs`` is itself invalid, so one mistake gives one line."""

    field: str  # reported on this key's line, or on the table header when the key is absent
    needs: tuple[str, ...]
    broken: Callable[[Mapping[str, Any]], bool]
    message: str


@frozen
class Table:
    """One TOML table (an Exchange object kind): its model class, fields and rules.

    A table with an ``identity`` is an array of tables (``[[AcceptedDomain]]``), one entry per object, unique by
    that key; one without is a single table (``[Relay]``). An array with a ``limit`` holds at most that many
    entries, for the reason ``limit_why`` gives.
    """

    name: str
    model: type[Any]
    fields: tuple[Field, ...]
    rules: tuple[Rule, ...] = ()
    identity: str = ""  # the required key naming an entry ("" for a single table)
    example: str = ""  # an identity value for the "missing" hint
    attr: str = ""  # the Organization attribute it fills ("" for [Organization], which is the Organization)
    limit: int = 0  # at most this many entries (0: no limit)
    limit_why: str = ""  # why, for the line that refuses one more

    @property
    def many(self) -> bool:
        return bool(self.identity)

    def field(self, key: str) -> Field | None:
        return next((field for field in self.fields if field.key == key), None)

    def defaults(self) -> dict[str, object]:
        known = {field.name: field.default for field in dataclasses.fields(self.model)}
        return {field.key: known[field.attr] for field in self.fields}

    def make(self, values: Mapping[str, object]) -> Any:
        return self.model(**{field.attr: values[field.key] for field in self.fields if field.key in values})


def _partner_only(key: str) -> Rule:
    return Rule(
        key,
        (key, "ConnectorType"),
        lambda v: v[key] and v["ConnectorType"] is not ConnectorType.PARTNER,
        'applies only to Partner connectors; remove it or set ConnectorType = "Partner"',  # exchange-model §2
    )


_NAME = Field("Name", text(connector_name), always=True)
_ENABLED = Field("Enabled", flag, always=True)
_CONNECTOR_TYPE = Field("ConnectorType", choice(ConnectorType), "enum", always=True)
_SOURCE_AND_COMMENT = (Field("ConnectorSource", text(), "enum"), Field("Comment", text()))
_ON_PREMISES = ConnectorType.ON_PREMISES

ORGANIZATION = Table(
    "Organization",
    Organization,
    (Field("Name", text()), Field("MxHost", text(domain)), Field("SpfInclude", text(domain)),
     Field("DkimSelectors", strings(selector)), Field("ProbeKey", text(probe_key))),
)  # fmt: skip
ACCEPTED = Table(
    "AcceptedDomain",
    AcceptedDomain,
    (
        Field("DomainName", text(accepted_domain), always=True),
        Field("DomainType", choice(DomainType), "enum", always=True),
        Field("MatchSubDomains", flag, model_name="match_subdomains"),
        Field("Default", flag),
        Field("InitialDomain", flag),
    ),
    (
        Rule(
            "MatchSubDomains",
            ("MatchSubDomains", "DomainType"),
            lambda v: v["MatchSubDomains"] and v["DomainType"] is DomainType.AUTHORITATIVE,
            'the cloud accepts subdomains only for InternalRelay domains; set DomainType = "InternalRelay" '
            "or MatchSubDomains = false",
        ),
    ),
    identity="DomainName",
    example="contoso.com",
    attr="accepted_domains",
)
OUTBOUND = Table(
    "OutboundConnector",
    OutboundConnector,
    (
        _NAME,
        _ENABLED,
        _CONNECTOR_TYPE,
        Field("RecipientDomains", strings(pattern), "list"),
        Field("AllAcceptedDomains", flag),
        Field("IsTransportRuleScoped", flag),
        Field("UseMXRecord", flag, always=True),
        Field("SmartHosts", strings(smart_host), "list"),
        Field("TlsSettings", choice(TlsSettings), "enum"),
        Field("TlsDomain", text(certificate_name)),
        Field("TestMode", flag),
        *_SOURCE_AND_COMMENT,
        Field("ValidationRecipients", strings(mailbox), "list"),
        Field("IsValidated", flag),
        Field("LastValidationTimestamp", timestamp, "date"),
    ),
    (
        Rule(
            "UseMXRecord",
            ("UseMXRecord", "SmartHosts"),
            lambda v: not v["UseMXRecord"] and not v["SmartHosts"],
            'false needs smart hosts; add SmartHosts = ["mail.contoso.com"] or set UseMXRecord = true',
        ),
        Rule(
            "SmartHosts",
            ("UseMXRecord", "SmartHosts"),
            lambda v: v["UseMXRecord"] and v["SmartHosts"],
            "ignored while UseMXRecord is true (its default); set UseMXRecord = false to use the smart hosts",
        ),
        Rule(
            "TlsDomain",
            ("TlsDomain", "TlsSettings"),
            lambda v: v["TlsDomain"] is not None and v["TlsSettings"] is not TlsSettings.DOMAIN_VALIDATION,
            'used only with TlsSettings = "DomainValidation"; set that or remove TlsDomain',
        ),
        Rule(
            "TlsSettings",
            ("TlsDomain", "TlsSettings"),
            lambda v: v["TlsSettings"] is TlsSettings.DOMAIN_VALIDATION and v["TlsDomain"] is None,
            "DomainValidation needs TlsDomain, the name the smart hosts' certificate must carry; "
            'add TlsDomain = "mail.contoso.com" or use CertificateValidation',
        ),
        Rule(
            "AllAcceptedDomains",
            ("AllAcceptedDomains", "ConnectorType"),
            lambda v: v["AllAcceptedDomains"] and v["ConnectorType"] is not _ON_PREMISES,
            'needs ConnectorType = "OnPremises" (the default is Partner); set it or use RecipientDomains',
        ),
        Rule(
            "RecipientDomains",
            ("RecipientDomains", "AllAcceptedDomains", "IsTransportRuleScoped"),
            lambda v: not (v["RecipientDomains"] or v["AllAcceptedDomains"] or v["IsTransportRuleScoped"]),
            "the connector routes nothing (no RecipientDomains, AllAcceptedDomains or IsTransportRuleScoped); "
            'add RecipientDomains = ["contoso.com"]',
        ),
    ),
    identity="Name",
    example="Connector 1",
    attr="outbound_connectors",
)
INBOUND = Table(
    "InboundConnector",
    InboundConnector,
    (
        _NAME,
        _ENABLED,
        _CONNECTOR_TYPE,
        Field("SenderDomains", strings(pattern), "list", always=True),
        Field("SenderIPAddresses", strings(sender_ip), "list"),
        Field("TlsSenderCertificateName", text(certificate_name)),
        Field("RequireTls", flag),
        Field("RestrictDomainsToCertificate", flag),
        Field("RestrictDomainsToIPAddresses", flag),
        *_SOURCE_AND_COMMENT,
    ),
    (_partner_only("RestrictDomainsToCertificate"), _partner_only("RestrictDomainsToIPAddresses")),
    identity="Name",
    example="From on-premises",
    attr="inbound_connectors",
)
RELAY = Table(
    "Relay",
    RelayConfig,
    (
        Field("Role", choice(RelayRole)),
        Field("Hostname", text(domain)),
        Field("Listen", strings(endpoint)),
        Field("Spool", text(path)),
        Field("Maildir", text(path)),
        Field("TlsCert", text(path)),
        Field("TlsKey", text(path)),
        Field("CaFile", text(path)),
        Field("Resolver", strings(str.strip)),
        Field("SmtpPort", integer(1, 65535)),
        Field("Mailboxes", strings(mailbox)),
        Field("SmartHost", text(domain)),
        Field("RelayNetworks", strings(network)),
        Field("AllowPrivate", flag),
        Field("Reflect", strings(plain_mailbox)),
        Field("ReflectLimit", integer(1, 10000)),
    ),
    (
        Rule(
            "Reflect",
            ("Reflect", "Role"),
            lambda v: v["Reflect"] and v["Role"] is not RelayRole.INTERNET,
            'only the internet role reflects (a public host answering strangers); set Role = "internet" '
            "or remove Reflect",
        ),
        Rule(
            "Reflect",
            ("Reflect", "Mailboxes"),
            lambda v: bool({a.lower() for a in v["Reflect"]} & {a.lower() for a in v["Mailboxes"]}),
            "an address is either a mailbox or a reflector; remove it from Mailboxes or from Reflect",
        ),
    ),
    attr="relay",
)



def _required(key: str, example: str) -> Rule:
    return Rule(key, (key,), lambda v: not v[key], f"missing; add {key} = {example}")


PROBE = Table(
    "Probe",
    ProbeConfig,
    (
        Field("Name", text(probe_name), always=True),
        Field("From", text(probe_address), always=True, model_name="sender"),
        Field("To", text(probe_address), always=True, model_name="recipient"),
        Field("Via", text(via)),
        Field("Watch", text(watch_url), always=True),
        Field("WatchUser", text()),
        Field("WatchPasswordEnv", text(env_name)),
        Field("Deadline", seconds(1, 86400)),
        Field("Slow", seconds(0, 86400)),
        Field("RoundTrip", flag, model_name="round_trip"),
        Field("MinInterval", seconds(1, 86400)),
    ),
    (
        _required("From", '"john@contoso.com"'),
        _required("To", '"sun@tailspintoys.com"'),
        _required("Watch", '"imaps://imap.tailspintoys.com/INBOX" (or maildir:PATH)'),
        Rule(
            "Slow",
            ("Slow", "Deadline"),
            lambda v: v["Slow"] is not None and v["Slow"] >= v["Deadline"],
            "is not below Deadline, so no probe could ever be slow; lower it or raise Deadline",
        ),
        Rule(
            "WatchUser",
            ("WatchUser", "Watch"),
            lambda v: v["WatchUser"] is not None and v["Watch"].startswith("maildir:"),
            "applies only to IMAP; remove it or watch an imap:// or imaps:// URL",
        ),
    ),
    identity="Name",
    example="John to Sun",
    attr="probes",
    # security-cases.md PR-08: probes go to real organizations, and cron repeats them.
    limit=MAX_PROBES,
    limit_why=f"a run sends at most {MAX_PROBES} probes, so that a cron job cannot flood an organization",
)

# In this order in the hint for an unknown table and in dump_toml's output.
TABLES: dict[str, Table] = {
    table.name: table for table in (ORGANIZATION, RELAY, ACCEPTED, OUTBOUND, INBOUND, PROBE)
}
