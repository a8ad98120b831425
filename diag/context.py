"""What a check receives: its target, the run's options, and the run's shared probes.

One :class:`RunContext` lives for one run. It owns the resolver (with its answer cache), the SMTP session
cache (one session per IP and port, shared by every check and every domain that needs it) and the connection
limits. Each check gets a :class:`CheckContext`: the domain, the run context, and the facts of the checks it
requires.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import sys
import threading
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from diag.frozen import frozen
from diag.net.dns import Nameserver, Resolver
from diag.net.smtp_facts import SessionFacts
from diag.policy.anchors import ROOT_ANCHORS, TrustAnchor
from diag.policy.orgdomain import OrgDomains
from diag.routing_order import RoutingOrder

if TYPE_CHECKING:
    import ssl

    from cryptography import x509

    from diag.config import Organization
    from diag.policy.dnssec import Chains
    from diag.probe.run import ProbeOptions
    from diag.registry import Registry

__all__ = ["NOT_PUBLIC", "CheckContext", "RunContext", "RunOptions", "SessionSource", "is_public"]

F = TypeVar("F")
T = TypeVar("T")

NOT_PUBLIC = "not a public address"
"""Why an MX address was not probed: it is not public and ``--allow-private`` was not given (RunOptions.not_probed)."""

# Values RunContext.remember keeps at most: distinct certificate chains of a run, usually a few per mail provider.
_REMEMBERED = 4096


@frozen
class RunOptions:
    """The knobs of one run.

    Attributes:
        nameservers: DNS servers to ask; empty means the system's resolver.
        smtp_port: the port mail hosts are probed on (25 on the Internet; the lab uses another).
        ca_file: trust these CA certificates instead of the system store.
        ehlo_name: the name the probe announces in EHLO.
        timeout: seconds for each network operation (connect, each SMTP reply, a DNS lookup).
        deadline: seconds for the whole run.
        per_host_connections: concurrent connections to one IP address, at most (politeness).
        total_connections: concurrent connections in all, at most.
        expect_mx: shell-style patterns every MX host of a checked domain must match (``*.example.net``).
        allow_private: connect to MX addresses that are not public (loopback, private ranges); refused by
            default, since a domain's DNS could otherwise aim the probe at internal hosts (security-cases PC-20).
        max_addresses_per_host: addresses probed per MX host at most (hostile DNS may list hundreds; DNS-10).
        cert_warn_days, cert_crit_days: a certificate expiring within this many days is a warning, an error.
        organization: the organization's configuration (``--config``); checks tagged ``config`` need it.
        routing_order: how connectors are ranked (``most-specific`` or ``documented``).
        client_cert: the certificate chain the on-premises server presents to the cloud (``--client-cert``), DER,
            leaf first, intermediates as the server sends them; empty: use the chain its port-25 listener
            serves.
        sender_ip: the address the on-premises server sends to the cloud from (``--sender-ip``).
        probe: what the end-to-end probes of the organization's ``[[Probe]]`` tables take from outside them
            (run id, secrets captured from the environment, ``--keep``...); None: no secrets, defaults.
    """

    nameservers: tuple[Nameserver, ...] = ()
    smtp_port: int = 25
    ca_file: Path | None = None
    ehlo_name: str = "localhost"
    timeout: float = 10.0
    deadline: float = 300.0
    per_host_connections: int = 2
    total_connections: int = 64
    expect_mx: tuple[str, ...] = ()
    allow_private: bool = False
    max_addresses_per_host: int = 10
    cert_warn_days: int = 30
    cert_crit_days: int = 7
    organization: Organization | None = None
    routing_order: RoutingOrder = RoutingOrder.MOST_SPECIFIC
    client_cert: tuple[bytes, ...] = ()
    sender_ip: str | None = None
    https_port: int = 443
    trust_anchors: tuple[TrustAnchor, ...] = ROOT_ANCHORS
    validating_resolver: bool = False
    probe: ProbeOptions | None = None

    def not_probed(self, ip: str, index: int) -> str | None:
        """Why the MX address ``ip``, its host's ``index``-th (IPv4 first, then IPv6), is not to be contacted, or
        None when it may be: over ``max_addresses_per_host`` (DNS-10), or not public without ``allow_private``
        (PC-20). The one rule for the port25 check and for the sessions the mx check starts early."""
        if index >= self.max_addresses_per_host:
            return f"over {self.max_addresses_per_host} addresses"
        if not self.allow_private and not is_public(ip):
            return NOT_PUBLIC
        return None


def is_public(ip: str) -> bool:
    """Is ``ip`` a public (global) address? Not for loopback, private ranges or text that is no address."""
    try:
        return ipaddress.ip_address(ip).is_global
    except ValueError:
        return False


SessionSource = Callable[[str, int, str], Awaitable[SessionFacts]]
"""Where a run's SMTP sessions come from: ``source(ip, port, server_name)`` returns the session's facts."""


class RunContext:
    """The probes and limits shared by every check of one run.

    ``sessions``: where the SMTP sessions come from; None to probe from this process, within the run's
    connection limits. A worker process of a run over many domains asks its parent instead, which holds the
    run's sessions and limits for every worker (:mod:`diag.workers`).

    ``early_sessions``: a check of the run opens the SMTP session at every MX address (tagged ``sessions``), so
    the mx check starts each session as soon as it knows the address (:meth:`address_known`) rather than when
    every MX host is resolved: the connection is under way while the other lookups are.

    ``dnssec``: a check of the run reads DNSSEC material (tagged ``dnssec``), so the resolver asks every question
    with the DO bit from the start and nothing is asked twice (issue 14); with ``--validating-resolver`` it also
    leaves the additional section's addresses alone (their AD bit is unknown).

    ``lazy_imports``: modules the run imports when it first needs them (:meth:`imports_for`: the checks'
    :attr:`Check.lazy_imports`, cryptography's, and aiosmtplib's for the MX sessions). A thread imports them from
    the start, while the run waits for its first answers, so that neither the first packet nor a check waits for
    them (issue 13: a ``diag check`` over a 50 ms path spends about 60 ms of imports before its first packet
    otherwise).
    """

    def __init__(
        self, options: RunOptions, *, sessions: SessionSource | None = None, early_sessions: bool = False,
        dnssec: bool = False, lazy_imports: Sequence[str] = (),
    ) -> None:
        self.options = options
        self._source = sessions
        self.early_sessions = early_sessions
        self.resolver = Resolver(options.nameservers, timeout=options.timeout, dnssec=dnssec,
                                 ad_bit=dnssec and options.validating_resolver)  # fmt: skip
        self._sessions: dict[tuple[str, int], asyncio.Future[SessionFacts]] = {}
        self._per_host: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(options.per_host_connections)
        )
        self._total = asyncio.Semaphore(options.total_connections)
        # Sessions say goodbye here, off the critical path: a check never waits for the reply to QUIT.
        self._farewells: set[asyncio.Task[None]] = set()
        self._remembered: dict[Hashable, Any] = {}
        self._shared: dict[Hashable, asyncio.Future[Any]] = {}
        self._chains: Chains | None = None
        wanted = tuple(module for module in lazy_imports if module not in sys.modules)
        if wanted:
            threading.Thread(target=_import_all, args=(wanted,), name="diag-imports", daemon=True).start()

    @classmethod
    def of(cls, options: RunOptions, registry: Registry, *, sessions: SessionSource | None = None) -> RunContext:
        """The context of a run of ``registry``'s checks: their tags and lazy imports set it up."""
        return cls(options, sessions=sessions, early_sessions=registry.tagged("sessions"),
                   dnssec=registry.tagged("dnssec"),
                   lazy_imports=cls.imports_for(registry, own_sessions=sessions is None))  # fmt: skip

    @staticmethod
    def imports_for(registry: Registry, *, own_sessions: bool) -> tuple[str, ...]:
        """The modules a run of ``registry`` imports in its thread: the checks' :attr:`Check.lazy_imports`, and the
        SMTP client (aiosmtplib) when a check opens the MX sessions (tagged ``sessions``) and the run opens them
        itself (``own_sessions``). A worker process asks its parent for its sessions (:data:`SessionSource`) and
        needs no SMTP client. (The connectors check, run without the MX checks, imports it when it first opens a
        session.)"""
        # The SMTP client first: the run's first session starts as soon as an MX address is known, well before
        # any chain is examined (the thread imports one module after the other).
        client = ("diag.net.smtp",) if own_sessions and registry.tagged("sessions") else ()
        return client + tuple(module for module in registry.lazy_imports() if module not in client)

    def smtp_session(self, ip: str, server_name: str, *, port: int | None = None) -> asyncio.Future[SessionFacts]:
        """The probing session at ``ip`` (one per IP and port per run), started on first request.

        ``server_name`` is the host name the first requester knows the address by; it is used for SNI.
        """
        key = (ip, self.options.smtp_port if port is None else port)
        future = self._sessions.get(key)
        if future is None:
            future = asyncio.ensure_future(self._open_session(*key, server_name))
            self._sessions[key] = future
        return future

    def address_known(self, ip: str, index: int, server_name: str) -> bool:
        """The mx check learnt ``ip``, the ``index``-th address of the MX host ``server_name`` that the port25
        check will name the session after: with :attr:`early_sessions`, start that session now, unless the
        address is one not to contact (:meth:`RunOptions.not_probed`). Says whether the session was started."""
        if not self.early_sessions or self.options.not_probed(ip, index) is not None:
            return False
        self.smtp_session(ip, server_name)
        return True

    @property
    def dnssec_chains(self) -> Chains:
        """The chain of trust's validated steps (DNSKEY rrsets, zone cuts), shared by every DNSSEC validation of
        the run; made on first use (a run without DNSSEC checks does not import the validation)."""
        if self._chains is None:
            from diag.policy.dnssec import Chains

            self._chains = Chains()
        return self._chains

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    async def _open_session(self, ip: str, port: int, server_name: str) -> SessionFacts:
        if self._source is not None:
            return await self._source(ip, port, server_name)
        from diag.net.smtp import probe_session  # aiosmtplib: see imports_for

        async with self._total, self._per_host[ip]:
            return await probe_session(
                ip, port, server_name, ehlo_name=self.options.ehlo_name, timeout=self.options.timeout,
                farewells=self._farewells,
            )  # fmt: skip

    async def trust_store(self) -> tuple[x509.Certificate, ...]:
        """The CA certificates to verify against (``--ca-file`` or the system store), loaded once per run."""
        from diag.net.tls import load_trust_store  # cryptography: only when a certificate is examined

        loaded = self.once("trust-store", lambda: asyncio.to_thread(load_trust_store, self.options.ca_file))
        return await asyncio.shield(loaded)

    def https_context(self) -> asyncio.Future[ssl.SSLContext]:
        """The TLS context of the run's HTTPS fetches (``--ca-file`` or the system store), made once per run in a
        thread and begun on the first call, so a check can start it before it needs it: with the system store it
        costs about 50 ms of CPU (:func:`diag.net.https.client_context`). Await it shielded (:meth:`once`)."""
        from diag.net.https import client_context

        return self.once("https-context", lambda: asyncio.to_thread(client_context, self.options.ca_file))

    def remember(self, key: Hashable, make: Callable[[], F]) -> F:
        """What the pure computation ``make`` gives for ``key``, made once per run: the same certificate chain,
        served at one address to every domain whose MX is there, is parsed and verified once. The last
        :data:`_REMEMBERED` values are kept."""
        if key in self._remembered:
            value: F = self._remembered[key]
            return value
        value = make()
        if len(self._remembered) >= _REMEMBERED:
            del self._remembered[next(iter(self._remembered))]
        self._remembered[key] = value
        return value

    async def org_domains(self) -> OrgDomains:
        """The public suffix list (DMARC's organizational domains), loaded once per run."""
        return await asyncio.shield(self.once(OrgDomains, lambda: asyncio.to_thread(OrgDomains)))

    def once(self, key: Hashable, start: Callable[[], Coroutine[Any, Any, T]]) -> asyncio.Future[T]:
        """The outcome of ``start()``, begun on the first request for ``key`` and shared by every later request in
        this run: an end-to-end probe that concerns two checked domains is sent once. Await it shielded, so that
        one requester's timeout does not cancel it for the others."""
        future = self._shared.get(key)
        if future is None:
            future = asyncio.ensure_future(start())
            self._shared[key] = future
        return future

    async def aclose(self) -> None:
        """Cancel sessions and shared work no check waited for (a check that timed out leaves them behind), and
        goodbyes still waiting for the reply to QUIT: the run is over, and the connections are closed, the
        resolver's too."""
        pending: list[asyncio.Future[Any]] = [*self._sessions.values(), *self._shared.values(), *self._farewells]
        for future in pending:
            future.cancel()
        try:
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            await self.resolver.aclose()


@frozen
class CheckContext:
    """What one check, running on one domain, receives.

    Attributes:
        domain: the domain under check, as an A-label name without trailing dot.
        run: the run's shared probes and options.
        facts_by_check: the facts of the checks this check requires, by check id.
    """

    domain: str
    run: RunContext
    facts_by_check: Mapping[str, Any]

    @property
    def options(self) -> RunOptions:
        return self.run.options

    @property
    def resolver(self) -> Resolver:
        return self.run.resolver

    def facts(self, check_id: str, kind: type[F]) -> F:
        """The facts of a required check, typed."""
        facts = self.facts_by_check[check_id]
        if not isinstance(facts, kind):
            raise TypeError(f"facts of {check_id!r} are {type(facts).__name__}, not {kind.__name__}")
        return facts


def _import_all(modules: Sequence[str]) -> None:
    """Import ``modules``, one after the other (in a thread of its own: Python's import locks let the run import
    one of them at the same time, it then waits for this thread's import to finish)."""
    for module in modules:
        # A module that fails to import is imported again where it is needed, which then meets the error.
        with contextlib.suppress(Exception):
            importlib.import_module(module)
