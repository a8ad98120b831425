"""Run a lab world: test PKI, DNS server and mail hosts on loopback, in the running event loop.

    async with Lab() as lab:
        options = lab.run_options()     # point checks at it

``diag check --lab`` starts a throw-away lab in its own process; ``diag lab serve`` keeps one running.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import mailbox
import shutil
import socket
import tempfile
from collections import Counter
from datetime import timedelta
from pathlib import Path
from types import TracebackType

from cryptography.hazmat.primitives import serialization

from diag.config import load_config
from diag.context import RunOptions
from diag.errors import LabError
from diag.frozen import frozen
from diag.lab.dns import DnsServer, ZoneData
from diag.lab.latency import TcpDelay, UdpDelay, start_udp_and_tcp
from diag.lab.pki import CertKind, Issued, TestPKI
from diag.lab.policy import TlsaDef
from diag.lab.smtp import HostKind, LabHost, LabHostServer, TlsFiles, start_host
from diag.lab.web import PolicyServer
from diag.lab.world import DNS_IP, EXAMPLE_CONFIG, HostDef, World, default_world
from diag.net.dns import Nameserver
from diag.policy.dnssec import TrustAnchor
from diag.relay.service import Relay
from diag.relay.settings import Limits, RelaySettings

__all__ = ["Lab"]


@frozen
class _RelayHost:
    """A world host that runs the routing relay, with its certificate files (None: it has no certificate)."""

    definition: HostDef
    tls: TlsFiles | None

    @property
    def ip(self) -> str:
        return self.definition.ip

# Attempts at finding one port that is free on every host address (only with an automatic port).
_PORT_ATTEMPTS = 5


class Lab:
    """A running lab world; an async context manager.

    Args:
        world: what to run; the default world of ARCHITECTURE §6 when None.
        smtp_port: the port every mail host listens on; 0 picks a free one.
        dns_port: the DNS server's port (UDP and TCP); 0 picks a free one.
        directory: where certificates and Maildirs go; a temporary directory (removed on close) when None.
        session_timeout: idle timeout of the hosts' SMTP sessions.
        latency: a round-trip time in seconds added to every packet of the lab, DNS included (0: none); the
            servers then listen on other ports behind delaying proxies (diag.lab.latency).
    """

    def __init__(
        self,
        world: World | None = None,
        *,
        smtp_port: int = 0,
        dns_port: int = 0,
        directory: Path | None = None,
        session_timeout: float = 30.0,
        latency: float = 0.0,
    ) -> None:
        self.world = world or default_world()
        self.latency = latency
        self._delays: list[TcpDelay] = []  # in front of the mail hosts, with latency
        self._dns_delays: tuple[UdpDelay, TcpDelay] | None = None
        self._dns_port = 0
        self._want_smtp_port = smtp_port
        self._want_dns_port = dns_port
        self._given_directory = directory
        self._session_timeout = session_timeout
        self._directory: Path | None = None
        self._dns: DnsServer | None = None
        self._hosts: list[LabHostServer | Relay] = []
        self.smtp_port = 0
        self.ca_file = Path()
        self._pki: TestPKI | None = None
        self._runs = 0  # runs given a record of probe sends (sent_record)
        self._chains: dict[str, Issued] = {}
        self.trust_anchors: tuple[TrustAnchor, ...] = ()
        self.anchor_file = Path()
        self._web: list[PolicyServer] = []
        self.https_port = 0

    @property
    def directory(self) -> Path:
        if self._directory is None:
            raise LabError("the lab is not running")
        return self._directory

    @property
    def pki(self) -> TestPKI:
        """The test PKI whose root is ``ca_file``: it issues further certificates the lab trusts (a client
        certificate for ``--client-cert``, good or broken)."""
        if self._pki is None:
            raise LabError("the lab is not running")
        return self._pki

    @property
    def maildir(self) -> Path:
        """The parent of every host's Maildir (``maildir / host name``)."""
        return self.directory / "maildir"

    def sent_record(self) -> Path:
        """A record of probe sends (:mod:`diag.probe.pace`) in the lab's directory, of its own for each run: the
        lab is for trying things, so MinInterval never holds a run in it back, and nothing of it reaches the
        user's record."""
        self._runs += 1
        return self.directory / "sent-probes" / f"run-{self._runs}.json"

    @property
    def dns_queries(self) -> Counter[str]:
        """How many queries the lab's DNS server received, by transport (``udp``, ``tcp``)."""
        if self._dns is None:
            raise LabError("the lab is not running")
        return self._dns.queries

    @property
    def dns_questions(self) -> Counter[tuple[str, str, str]]:
        """How many queries the lab's DNS server received per (name, type, transport)."""
        if self._dns is None:
            raise LabError("the lab is not running")
        return self._dns.questions

    @property
    def nameserver(self) -> Nameserver:
        if self._dns is None:
            raise LabError("the lab is not running")
        return Nameserver(DNS_IP, self._dns_port)

    def run_options(self, **overrides: object) -> RunOptions:
        """Options that point a run at this lab: its resolver, port and CA, and its organization (whose probes
        watch the lab's Maildirs and keep a record of sends of the run's own)."""
        from diag.probe.run import ProbeOptions

        values: dict[str, object] = {
            "organization": load_config(EXAMPLE_CONFIG),
            "nameservers": (self.nameserver,),
            "smtp_port": self.smtp_port,
            "ca_file": self.ca_file,
            "ehlo_name": "probe.diag.invalid",
            "allow_private": True,
            "trust_anchors": self.trust_anchors,
            "https_port": self.https_port,
            "probe": ProbeOptions(maildir_root=self.maildir, sends=self.sent_record()),
        }
        values.update(overrides)
        return RunOptions(**values)  # type: ignore[arg-type]

    def option_text(self) -> str:
        """The command-line options that reach this lab from another process (``diag check``, ``diag relay``)."""
        return f"--resolver {self.nameserver} --smtp-port {self.smtp_port} --ca-file {self.ca_file} --allow-private"

    def check_option_text(self) -> str:
        """:meth:`option_text` and what ``diag check`` adds: the lab's DNSSEC trust anchors and MTA-STS port."""
        return f"{self.option_text()} --trust-anchor {self.anchor_file} --https-port {self.https_port}"

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        if self._given_directory is not None:
            self._given_directory.mkdir(parents=True, exist_ok=True)
            self._directory = self._given_directory
        else:
            self._directory = Path(tempfile.mkdtemp(prefix="diag-lab-"))
        host_defs = await asyncio.to_thread(self._make_hosts)
        zone = ZoneData()
        for apex in self.world.zones:
            zone.add_zone(apex)
        zone.add_all((record.name, record.rdtype, record.rdata) for record in self.world.records)
        for name, behaviour in self.world.behaviours:
            zone.set_behaviour(name, behaviour)
        for tlsa in self.world.tlsa:
            zone.add(f"_25._tcp.{tlsa.host}", "TLSA", self._tlsa_text(tlsa))
        self._sign(zone)
        self._dns = DnsServer(zone)
        try:
            self._dns_port = await self._dns.start(DNS_IP, 0 if self.latency else self._want_dns_port)
        except OSError as exc:
            raise LabError(f"the lab DNS server cannot listen on {DNS_IP}:{self._want_dns_port}: {exc}") from exc
        if self.latency:
            self._dns_delays = await start_udp_and_tcp(
                DNS_IP, self._want_dns_port, (DNS_IP, self._dns_port), self.latency
            )
            self._dns_port = self._dns_delays[0].port
        self.smtp_port = await self._start_hosts(host_defs)
        await self._start_web()

    async def _start_web(self) -> None:
        """The MTA-STS policy hosts, each with a certificate for its name, all on one port."""
        certs = self.directory / "certs"
        for name, ip, policy in self.world.sts:
            kind = self.world.sts_certs.get(name, CertKind.GOOD)
            issued = await asyncio.to_thread(self.pki.issue, [name], kind=kind)
            chain, key = issued.write(certs, name)
            self._web.append(PolicyServer(ip, policy, chain=chain, key=key))
        if not self._web:
            return
        for _attempt in range(_PORT_ATTEMPTS):
            port = _free_port(self._web[0].ip)
            started = await asyncio.gather(*(server.start(port) for server in self._web), return_exceptions=True)
            if not any(isinstance(result, BaseException) for result in started):
                self.https_port = port
                return
            await asyncio.gather(*(server.close() for server in self._web))
        raise LabError(f"no port was free on all {len(self._web)} MTA-STS policy host addresses")

    def _tlsa_text(self, tlsa: TlsaDef) -> str:
        """The TLSA record of ``tlsa``: usage 2 takes the lab's intermediate CA, usage 3 the host's leaf."""
        usage, selector, matching = (int(p) for p in tlsa.parameters.split())
        pki = self.pki
        cert = pki.intermediate if tlsa.of_host == "intermediate" else self._chains[tlsa.of_host].certificate
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        data = (cert.public_bytes(serialization.Encoding.DER) if selector == 0 else
                cert.public_key().public_bytes(serialization.Encoding.DER, spki))  # fmt: skip
        digest = {0: data, 1: hashlib.sha256(data).digest(), 2: hashlib.sha512(data).digest()}[matching]
        return f"{usage} {selector} {matching} {digest.hex()}"

    def _sign(self, zone: ZoneData) -> None:
        """Sign the world's signed zones; a zone whose parent is signed is reached through its DS, the others'
        keys are the lab's trust anchors (written to ``anchor_file`` for ``--trust-anchor``)."""
        anchors = []
        for apex in self.world.signed:
            dnskey = zone.sign_zone(apex, expired=apex in self.world.expired,
                                    nsec3="1 0 0 -" if apex in self.world.nsec3 else None,
                                    opt_out=apex in self.world.opt_out,
                                    broken_denial=apex in self.world.broken_denial,
                                    forged=apex in self.world.forged)  # fmt: skip
            parent = apex.partition(".")[2]
            if not any(parent == other or parent.endswith(f".{other}") for other in self.world.signed):
                anchors.append(TrustAnchor(apex, dnskey=(dnskey,)))
        self.trust_anchors = tuple(anchors)
        self.anchor_file = self.directory / "trust-anchors.txt"
        lines = [f"{a.zone}. IN DNSKEY {key}" for a in anchors for key in a.dnskey]
        self.anchor_file.write_text("".join(f"{line}\n" for line in lines), encoding="ascii")

    def _make_hosts(self) -> list[LabHost | _RelayHost]:
        """Issue each host's certificate and write the files a TLS server needs (blocking: runs in a thread)."""
        pki = self._pki = TestPKI.create()
        foreign = TestPKI.create(org="a CA nobody trusts")
        certs = self.directory / "certs"
        certs.mkdir(exist_ok=True)
        self.ca_file = pki.write_root(certs / "lab-root-ca.pem")
        hosts: list[LabHost | _RelayHost] = []
        for host in self.world.hosts:
            if host.kind is None:
                continue
            tls = None
            if host.cert is not None:
                issuer = foreign if host.foreign_ca else pki
                issued = self._chains[host.name] = issuer.issue(host.names_in_cert, kind=host.cert)
                chain, key = issued.write(certs, host.name)
                tls = TlsFiles(chain=chain, key=key)
            if host.relay is not None:
                hosts.append(_RelayHost(host, tls))
                self._make_mailboxes(host)
                continue
            hosts.append(
                LabHost(
                    name=host.name, ip=host.ip, kind=host.kind, tls=tls, legacy_crypto=host.legacy_crypto,
                    tls_versions=host.tls_versions, greeting=host.greeting, domains=host.domains,
                    script=host.script,
                )
            )  # fmt: skip
        return hosts

    def _make_mailboxes(self, host: HostDef) -> None:
        """A relay host's mailboxes exist from the start, empty, as a new user's do: a probe can watch one before
        its first message arrives."""
        assert host.relay is not None
        for address in host.relay.mailboxes:
            (self.maildir / host.name).mkdir(parents=True, exist_ok=True)
            mailbox.Maildir(self.maildir / host.name / address.lower(), create=True)

    async def _start_hosts(self, hosts: list[LabHost | _RelayHost]) -> int:
        """Start every host on one port; with port 0, find a port free on all their addresses."""
        for _attempt in range(_PORT_ATTEMPTS):
            port = self.smtp_port = self._want_smtp_port or _free_port(hosts[0].ip)
            # With latency, a host listens on another port behind a delaying proxy on this one; a blackhole is
            # left where it is (its connections never complete, a proxy would complete them).
            behind = _free_port(hosts[0].ip) if self.latency else port
            delayed = [h for h in hosts if self.latency and _listens(h)]
            started = await asyncio.gather(
                *(self._start_host(h, behind if h in delayed else port) for h in hosts),
                *(self._start_delay(h, port, behind) for h in delayed),
                return_exceptions=True,
            )  # fmt: skip
            self._hosts = [server for server in started if isinstance(server, LabHostServer | Relay)]
            self._delays += [server for server in started if isinstance(server, TcpDelay)]
            failures = [error for error in started if isinstance(error, BaseException)]
            if not failures:
                return port
            await self._close_hosts()
            first = failures[0]
            cause = first if isinstance(first, OSError) else first.__cause__
            in_use = isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE
            # A port given is retried only when the lab's own port behind the proxies was the one taken.
            if (self._want_smtp_port and not self.latency) or not in_use:
                raise first
        raise LabError(f"no port was free on all {len(hosts)} lab host addresses after {_PORT_ATTEMPTS} tries")

    async def _start_delay(self, host: LabHost | _RelayHost, port: int, behind: int) -> TcpDelay:
        delay = TcpDelay((host.ip, behind), self.latency)
        await delay.start(host.ip, port)
        return delay

    async def _start_host(self, host: LabHost | _RelayHost, port: int) -> LabHostServer | Relay:
        if isinstance(host, LabHost):
            return await start_host(host, port, maildir=self.maildir, timeout=self._session_timeout)
        relay = Relay(self._relay_settings(host, port))
        await relay.start()
        return relay

    def _relay_settings(self, host: _RelayHost, port: int) -> RelaySettings:
        """A relay of the lab: the example organization, the lab's DNS and CA, quick retries."""
        config = host.definition.relay
        assert config is not None
        return RelaySettings(
            organization=load_config(EXAMPLE_CONFIG),
            role=config.role,
            hostname=host.definition.name,
            listen=((host.ip, port),),
            spool=self.directory / "relays" / host.definition.name / "spool",
            maildir=self.maildir / host.definition.name,
            tls_cert=host.tls.chain if host.tls is not None else None,
            tls_key=host.tls.key if host.tls is not None else None,
            ca_file=self.ca_file,
            nameservers=(self.nameserver,),
            smtp_port=self.smtp_port,
            mailboxes=config.mailboxes,
            smart_host=config.smart_host or None,
            relay_networks=config.relay_networks,
            allow_private=True,
            source_ip=host.ip,
            reflect=config.reflect,
            reflect_limit=config.reflect_limit,
            limits=Limits(
                session_timeout=self._session_timeout, operation_timeout=5.0, queue_scan=0.5,
                retry_base=timedelta(seconds=1), retry_max=timedelta(seconds=5),
            ),
        )  # fmt: skip

    def mailbox(self, address: str) -> Path:
        """The Maildir where mail for ``address`` lands in this lab."""
        domain = address.rpartition("@")[2].lower()
        for host in self.world.hosts:
            if host.relay is not None and address.lower() in host.relay.mailboxes:
                return self.maildir / host.name / address.lower()
            if host.relay is None and domain in host.domains:
                return self.maildir / host.name
        raise LabError(f"no lab host keeps mail for {address}")

    async def _close_hosts(self) -> None:
        hosts, self._hosts = self._hosts, []
        delays, self._delays = self._delays, []
        await asyncio.gather(*(server.close() for server in (*hosts, *delays)), return_exceptions=True)

    async def close(self) -> None:
        self._pki = None
        web, self._web = self._web, []
        await asyncio.gather(*(server.close() for server in web), return_exceptions=True)
        await self._close_hosts()
        if self._dns_delays is not None:
            await asyncio.gather(*(delay.close() for delay in self._dns_delays), return_exceptions=True)
            self._dns_delays = None
        if self._dns is not None:
            await self._dns.close()
            self._dns = None
        if self._given_directory is None and self._directory is not None:
            await asyncio.to_thread(shutil.rmtree, self._directory, True)
        self._directory = None

    async def __aenter__(self) -> Lab:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _listens(host: LabHost | _RelayHost) -> bool:
    """Whether the host accepts connections (a blackhole's never complete)."""
    return not isinstance(host, LabHost) or host.kind is not HostKind.BLACKHOLE


def _free_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((ip, 0))
        port: int = probe.getsockname()[1]
        return port
