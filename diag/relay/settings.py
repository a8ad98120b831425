"""The relay's settings: the ``[Relay]`` table of the organization config, overridden by ``diag relay`` options."""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import field
from datetime import timedelta
from pathlib import Path

from diag.config import Organization, RelayConfig, RelayRole
from diag.config.values import Invalid, plain_mailbox
from diag.errors import ConfigError, InvalidDomainError
from diag.frozen import frozen
from diag.names import mail_domain, port_number
from diag.net.dns import Nameserver, parse_nameserver

__all__ = ["Limits", "RelaySettings", "resolve_settings"]


@frozen
class Limits:
    """Resource limits and schedules (security-cases.md §1.5, §2.5; defaults after Postfix's).

    Attributes:
        message_size: largest message accepted (SIZE, and the DATA limit), bytes.
        recipients: recipients per message; more get 452 4.5.3 (RFC 5321 §4.5.3.1.8 requires at least 100).
        connections: concurrent connections in all; more get 421 4.7.0.
        connections_per_ip: concurrent connections from one address; more get 421 4.7.0.
        session_timeout: idle seconds between commands, and for the whole DATA phase (aiosmtpd's timeout).
        data_sessions: message transfers (DATA) in progress at once; aiosmtpd holds each in memory, so this
            bounds that memory to data_sessions * message_size (RR-53).
        data_wait: seconds a DATA command waits for a free transfer before ``451 4.3.2``.
        operation_timeout: seconds for each network operation when delivering.
        retry_base, retry_max: first retry delay and the cap it doubles up to.
        max_age: a message still undelivered this long after it was received bounces.
        delivery_concurrency: deliveries in progress at once.
        addresses_per_delivery: addresses tried per delivery attempt (Postfix smtp_mx_address_limit).
        queue_scan: seconds between looks at the spool for due messages.
        connection_idle: seconds a delivery session stays open for the next message on the same terms
            (Postfix smtp_connection_cache_time_limit); 0: one connection per delivery.
        connection_lifetime: seconds after its opening a delivery session is no longer reused.
        stress_connections: open connections from which the server is under pressure (Postfix's stress mode):
            sessions that finished no transaction for ``stress_idle`` seconds are closed, and a full server
            closes one of them for each new client (:mod:`diag.relay.connections`).
        stress_idle: seconds without a finished transaction after which a session is idle under pressure
            (Postfix's stress-mode smtpd_timeout).
    """

    message_size: int = 10 * 1024 * 1024
    recipients: int = 100
    connections: int = 200
    connections_per_ip: int = 20
    session_timeout: float = 300.0
    data_sessions: int = 32
    data_wait: float = 30.0
    operation_timeout: float = 30.0
    retry_base: timedelta = timedelta(minutes=5)
    retry_max: timedelta = timedelta(seconds=4000)
    max_age: timedelta = timedelta(days=5)
    delivery_concurrency: int = 20
    addresses_per_delivery: int = 5
    queue_scan: float = 5.0
    connection_idle: float = 2.0
    connection_lifetime: float = 300.0
    stress_connections: int = 150
    stress_idle: float = 10.0


@frozen
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
        source_ip: the address it sends from (its first specific listen address), or None for the system's choice.
        limits: resource limits and schedules.
        reflect: internet role: reflector addresses (lower-case): each message to one is answered to its
            envelope sender with its header section attached (:mod:`diag.relay.reflect`).
        reflect_limit: replies per envelope sender per hour at most.
        catch_all: domains (lower-case A-labels) whose every address is kept here, all in one Maildir,
            ``maildir`` itself: a plain mail host's final delivery (Postfix: a virtual domain with a catch-all
            address). Such mail is stored before the 250 reply instead of queued: the store is as durable as
            the spool (:mod:`diag.relay.mailbox`), and nothing is left to deliver.
        trace_networks: clients whose trace headers are kept although they have no relay rights (the lab's
            mail hosts keep every hop's trace: each client of theirs is a part of the lab on loopback).
        ident: what follows the host name in the greeting (``220 <hostname> <ident>``).
        tls_versions: (minimum, maximum) TLS version offered with STARTTLS; None: TLS 1.2 and later (RR-43).
            Lower only to play an outdated host (the lab's ``oldtls.example``).
        legacy_crypto: load the certificate at OpenSSL security level 0, which an RSA-1024 key, a SHA-1
            signature or TLS 1.0/1.1 need; only to play such a host (the lab's ``weakkey``, ``sha1``).
        client_certificates: ask STARTTLS clients for a certificate (verified against ``ca_file``); the cloud
            attributes connections by it. False: never ask, as a plain receiving host need not.
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
    source_ip: str | None = None
    limits: Limits = field(default_factory=Limits)
    reflect: tuple[str, ...] = ()
    reflect_limit: int = 20
    catch_all: tuple[str, ...] = ()
    trace_networks: tuple[str, ...] = ()
    ident: str = "ESMTP"
    tls_versions: tuple[ssl.TLSVersion, ssl.TLSVersion] | None = None
    legacy_crypto: bool = False
    client_certificates: bool = True

    def __post_init__(self) -> None:
        if self.reflect and self.role is not RelayRole.INTERNET:
            raise ValueError(f"reflector addresses need the internet role, not {self.role.value}")

    @property
    def local_domains(self) -> frozenset[str]:
        """Domains whose mailboxes (or reflectors) are here: unknown users there are refused at RCPT."""
        return frozenset(address.rpartition("@")[2] for address in (*self.mailboxes, *self.reflect))

    def is_local(self, address: str) -> bool:
        return address.lower() in self.mailboxes

    def is_reflector(self, address: str) -> bool:
        return address.lower() in self.reflect

    def catches(self, address: str) -> bool:
        """Is ``address`` (``local@domain``, the domain an A-label) in one of the ``catch_all`` domains?"""
        return address.rpartition("@")[2].lower() in self.catch_all


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        return host.strip("[]"), port_number(port)
    except ValueError as exc:
        raise ConfigError(f"listen address {text!r}: {exc}") from None


def _data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "diag" / "relay"


def resolve_settings(
    org: Organization,
    *,
    role: RelayRole | None = None,
    hostname: str | None = None,
    listen: Sequence[str] = (),
    spool: Path | None = None,
    maildir: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    ca_file: Path | None = None,
    nameservers: Sequence[Nameserver] = (),
    smtp_port: int | None = None,
    allow_private: bool = False,
    reflect: Sequence[str] = (),
    limits: Limits | None = None,
) -> RelaySettings:
    """The settings of a relay: the config's ``[Relay]`` table with the given options winning.

    ``allow_private`` (``--allow-private``) permits delivery to non-public addresses even when the table's
    ``AllowPrivate`` is off: an on-premises smart host on 10.x or 192.168.x is such an address. ``reflect``
    (``--reflect``, repeatable) replaces the table's ``Reflect`` list; either needs the internet role.

    Raises :class:`~diag.errors.ConfigError` with one line for combinations that cannot run.
    """
    table = org.relay or RelayConfig()
    role = role or table.role
    cert = tls_cert or (Path(table.tls_cert) if table.tls_cert else None)
    key = tls_key or (Path(table.tls_key) if table.tls_key else None)
    if (cert is None) != (key is None):
        raise ConfigError("give the relay's certificate and its key together (--tls-cert and --tls-key)")
    smart_host = table.smart_host or None
    if role is RelayRole.ON_PREMISES and not smart_host:
        raise ConfigError("the onprem role needs SmartHost in [Relay]: the host all outgoing mail goes to")
    if role is not RelayRole.CLOUD and not table.mailboxes:
        raise ConfigError(f"the {role.value} role needs Mailboxes in [Relay]: the addresses it keeps mail for")
    reflectors = _reflectors(reflect) if reflect else table.reflect
    if reflectors and role is not RelayRole.INTERNET:
        raise ConfigError(
            f"only the internet role reflects (a public host answering strangers), not the {role.value} role; "
            "use --role internet or drop --reflect and the [Relay] Reflect list"
        )
    mailboxes = tuple(address.lower() for address in table.mailboxes)
    if both := sorted(set(reflectors) & set(mailboxes)):
        raise ConfigError(f"{both[0]} is a mailbox in [Relay] and a reflector; an address is one or the other")
    endpoints = tuple(_endpoint(text) for text in (listen or table.listen or ("127.0.0.1:2525",)))
    try:
        # A path component below (home), so checked as the config checks its Hostname: a domain, no "/" or "..".
        name = mail_domain(hostname) if hostname is not None else table.hostname or socket.gethostname()
    except InvalidDomainError as exc:
        raise ConfigError(f"--hostname: {exc}") from None
    home = _data_dir() / name
    try:
        servers = tuple(nameservers) or tuple(parse_nameserver(text) for text in table.resolver)
    except ValueError as exc:
        raise ConfigError(f"[Relay] Resolver: {exc}") from None
    return RelaySettings(
        organization=org,
        role=role,
        hostname=name,
        listen=endpoints,
        spool=spool or (Path(table.spool) if table.spool else home / "spool"),
        maildir=maildir or (Path(table.maildir) if table.maildir else home / "maildir"),
        tls_cert=cert,
        tls_key=key,
        ca_file=ca_file or (Path(table.ca_file) if table.ca_file else None),
        nameservers=servers,
        smtp_port=smtp_port or table.smtp_port,
        mailboxes=mailboxes,
        smart_host=smart_host,
        relay_networks=table.relay_networks,
        allow_private=allow_private or table.allow_private,
        source_ip=next((host for host, _ in endpoints if not ipaddress.ip_address(host).is_unspecified), None),
        limits=limits or Limits(),
        reflect=reflectors,
        reflect_limit=table.reflect_limit,
    )


def _reflectors(addresses: Sequence[str]) -> tuple[str, ...]:
    try:
        return tuple(plain_mailbox(address) for address in addresses)
    except Invalid as exc:
        raise ConfigError(f"--reflect: {exc}") from None
