"""The organization: accepted domains, inbound and outbound connectors and the relay's table, as frozen data.

Named after the cloud's cmdlet parameters (ARCHITECTURE §4, exchange-model.md §1-§3, §9) so that an
administrator recognises every field. Plain data with no I/O: checks, routing and the relay import only this.
"""

from __future__ import annotations

import enum
from dataclasses import field
from datetime import datetime
from pathlib import Path
from typing import Final

from diag.frozen import frozen

__all__ = [
    "DEFAULT_MIN_INTERVAL",
    "MAX_PROBES",
    "AcceptedDomain",
    "ConnectorType",
    "DomainType",
    "InboundConnector",
    "Organization",
    "OutboundConnector",
    "ProbeConfig",
    "RelayConfig",
    "RelayRole",
    "TlsSettings",
    "domain_in_pattern",
]

# Probes go to real organizations, and cron repeats them (security-cases.md PR-08): a run sends at most this many,
# and the same probe is not sent again within its MinInterval (seconds, by default this), by any diag process.
MAX_PROBES: Final = 20
DEFAULT_MIN_INTERVAL: Final = 60.0


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


@frozen
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


@frozen
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


@frozen
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


@frozen
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
        reflect: internet role: addresses that answer every message with its header section (the reflector,
            ARCHITECTURE §7), so one mailbox proves both directions of a round trip.
        reflect_limit: replies the reflector sends one envelope sender per hour at most.
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
    reflect: tuple[str, ...] = ()
    reflect_limit: int = 20


@frozen
class ProbeConfig:
    """An end-to-end probe (a ``[[Probe]]`` table): a test message sent along a real path and watched for.

    Attributes:
        name: ``Name``, unique among the probes; it names the probe in its token, subject and findings.
        sender, recipient: ``From`` and ``To``: the envelope and header addresses (ASCII).
        via: ``Via``: where the probe enters, ``HOST[:PORT]``; None: the recipient domain's MX.
        watch: ``Watch``: where its arrival is observed: ``maildir:PATH``, ``imap://HOST[:PORT]/FOLDER`` or
            ``imaps://…``. A relative Maildir path is taken from the configuration file's directory.
        watch_user: ``WatchUser``: the IMAP user, unless the URL names it.
        watch_password_env: ``WatchPasswordEnv``: the environment variable holding the IMAP password.
        deadline: ``Deadline``: seconds from its acceptance within which it must arrive.
        slow: ``Slow``: seconds above which its arrival is slow; None: never.
        round_trip: ``RoundTrip``: ``To`` is a reflector (a diag relay's ``Reflect`` address) and ``Watch`` the
            sender's mailbox: the probe counts once the reflector's answer is back, with both legs' hops.
        min_interval: ``MinInterval``: seconds within which the same probe (its Name, From, To and Via) is not
            sent again, by any diag process of the user (:mod:`diag.probe.pace`).
    """

    name: str
    sender: str = ""
    recipient: str = ""
    via: str | None = None
    watch: str = ""
    watch_user: str | None = None
    watch_password_env: str = "DIAG_WATCH_PASSWORD"  # noqa: S105 - the name of a variable, not its value
    deadline: float = 300.0
    slow: float | None = None
    round_trip: bool = False
    min_interval: float = DEFAULT_MIN_INTERVAL

    def concerns(self, domain: str) -> bool:
        """Is ``domain`` the domain of its From or its To address?"""
        domain = domain.rstrip(".").lower()
        return domain in (self.sender.rpartition("@")[2].lower(), self.recipient.rpartition("@")[2].lower())


@frozen
class Organization:
    """The whole configuration.

    Attributes:
        name: a label for reports.
        mx_host: the cloud host the accepted domains' MX must point at (``contoso-com.mail.protection.outlook.com``).
        spf_include: the domain the cloud's SPF include names (``spf.protection.outlook.com``); None: derived from
            ``mx_host`` for Microsoft 365, not checked otherwise.
        dkim_selectors: DKIM selectors the organization signs with besides Microsoft 365's (on-premises signers,
            third-party senders): each must publish a usable key under every accepted domain.
        accepted_domains, outbound_connectors, inbound_connectors: as configured, in file order.
        source: the file it was read from, if any.
        relay: the ``[Relay]`` table, for ``diag relay``.
        probes: the ``[[Probe]]`` tables, in file order.
        probe_key: ``ProbeKey``: the key of the probes' HMAC (``DIAG_PROBE_KEY`` wins over it).
    """

    accepted_domains: tuple[AcceptedDomain, ...] = ()
    outbound_connectors: tuple[OutboundConnector, ...] = ()
    inbound_connectors: tuple[InboundConnector, ...] = ()
    name: str = ""
    mx_host: str | None = None
    spf_include: str | None = None
    dkim_selectors: tuple[str, ...] = ()
    source: Path | None = None
    relay: RelayConfig | None = None
    probes: tuple[ProbeConfig, ...] = ()
    probe_key: str | None = field(default=None, repr=False)

    def accepted(self, domain: str) -> AcceptedDomain | None:
        """The accepted domain covering ``domain``: the exact one first, else a MatchSubDomains parent."""
        exact = [a for a in self.accepted_domains if a.domain_name.lower() == domain.rstrip(".").lower()]
        covering = exact or [a for a in self.accepted_domains if a.covers(domain)]
        return max(covering, key=lambda a: len(a.domain_name), default=None)
