"""The relay's settings: the ``[Relay]`` table of the organization config, overridden by ``diag relay`` options."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from diag.config import Organization, RelayRole
from diag.net.dns import Nameserver

__all__ = ["Limits", "RelaySettings"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits and schedules (security-cases.md §1.5, §2.5; defaults after Postfix's).

    Attributes:
        message_size: largest message accepted (SIZE, and the DATA limit), bytes.
        recipients: recipients per message; more get 452 4.5.3 (RFC 5321 §4.5.3.1.8 requires at least 100).
        connections: concurrent connections in all; more get 421 4.7.0.
        connections_per_ip: concurrent connections from one address; more get 421 4.7.0.
        session_timeout: idle seconds between commands, and for the whole DATA phase (aiosmtpd's timeout).
        operation_timeout: seconds for each network operation when delivering.
        retry_base, retry_max: first retry delay and the cap it doubles up to.
        max_age: a message still undelivered this long after it was received bounces.
        delivery_concurrency: deliveries in progress at once.
        addresses_per_delivery: addresses tried per delivery attempt (Postfix smtp_mx_address_limit).
        queue_scan: seconds between looks at the spool for due messages.
    """

    message_size: int = 10 * 1024 * 1024
    recipients: int = 100
    connections: int = 200
    connections_per_ip: int = 20
    session_timeout: float = 300.0
    operation_timeout: float = 30.0
    retry_base: timedelta = timedelta(minutes=5)
    retry_max: timedelta = timedelta(seconds=4000)
    max_age: timedelta = timedelta(days=5)
    delivery_concurrency: int = 20
    addresses_per_delivery: int = 5
    queue_scan: float = 5.0


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """Everything a running relay needs, resolved.

    Attributes:
        organization: accepted domains and connectors (the cloud role routes by them).
        role: cloud, onprem or internet.
        hostname: the name in its greeting, EHLO and Received lines.
        listen: (address, port) endpoints.
        spool, maildir: the durable queue and the parent of local Maildirs (``maildir / address``).
        tls_cert, tls_key: its certificate: offered with STARTTLS, presented as client certificate.
        ca_file: CAs trusted for peers' certificates; the system store when None.
        nameservers: DNS servers; the system's when empty.
        smtp_port: the port it delivers to.
        mailboxes: local addresses (lower-case).
        smart_host: onprem role: where everything not local goes.
        relay_networks: onprem role: client networks it relays for.
        allow_private: may deliver to non-public addresses.
        limits: resource limits and schedules.
    """

    organization: Organization
    role: RelayRole
    hostname: str
    listen: tuple[tuple[str, int], ...]
    spool: Path
    maildir: Path
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ca_file: Path | None = None
    nameservers: tuple[Nameserver, ...] = ()
    smtp_port: int = 25
    mailboxes: tuple[str, ...] = ()
    smart_host: str | None = None
    relay_networks: tuple[str, ...] = ()
    allow_private: bool = False
    limits: Limits = field(default_factory=Limits)

    @property
    def local_domains(self) -> frozenset[str]:
        """Domains whose mailboxes are kept here: unknown users there are refused at RCPT."""
        return frozenset(address.rpartition("@")[2] for address in self.mailboxes)

    def is_local(self, address: str) -> bool:
        return address.lower() in self.mailboxes

    def trusted_client(self, ip: str) -> bool:
        """Is ``ip`` in the networks this (onprem) relay relays for?"""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(net) for net in self.relay_networks)
