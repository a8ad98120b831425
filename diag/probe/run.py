"""Running end-to-end probes: where the sender, a watcher and the judge are strung together (ARCHITECTURE §7),
for the ``e2e`` check and ``diag probe``.

:func:`execute` runs one probe, configured as a ``[[Probe]]`` table (:class:`~diag.config.ProbeConfig`), and
returns its :class:`ProbeFacts`. In order:

1. the watcher opens the mailbox and marks what is there (a mailbox that cannot be read ends the probe before
   anything is sent: a probe nobody can observe proves nothing);
2. the probe is built (Message-ID, ``X-Diag-Probe`` token, with an HMAC when a key is set) and submitted through
   ``Via``, by default the recipient domain's MX on the run's SMTP port (25 outside the lab);
3. the watcher waits until it arrives, a DSN for it arrives, or ``Deadline`` seconds after its acceptance;
4. the judge turns what arrived into hops, connector evidence and verdicts, compared with the connector
   ``diag route`` predicts for the recipient when the organization has outbound connectors;
5. the probe and its DSNs are removed (unless ``keep``), and so are late probes of earlier runs.

Before anything (the mailbox is not even opened), and again just before submitting, under a lock, the record of
sends (:mod:`diag.probe.pace`) is asked whether the same probe was sent less than its ``MinInterval`` ago by any
diag process of the user; then it is not sent, and its facts say so (``held``; security-cases.md PR-08).

:func:`plan` finds what :func:`execute` would do without doing it (``diag probe --dry-run``): where the probe
would enter (the MX looked up), the mailbox (its credentials present, a Maildir's directories there; no login), its
times, and whether the record of sends would hold it back; nothing is sent, opened or recorded.

Network trouble never raises here: it becomes facts (a refusal, a watch failure, a failed clean-up). Findings are
``checks/e2e.py``'s to make. Secrets (``DIAG_WATCH_PASSWORD`` and the variables ``WatchPasswordEnv`` names,
``DIAG_WATCH_TOKEN``, ``DIAG_SMTP_PASSWORD``, ``DIAG_PROBE_KEY``) are captured once in :class:`ProbeOptions`, which
shows none of them, and no fact carries one (security-cases.md PR-06).

Where names are looked up: the MX of the recipient domain always through the run's resolver (``--resolver``,
else the system's DNS servers); the host of an explicit ``Via`` or of an IMAP URL through it only when a
resolver was given (``--resolver``, the lab), else by the system (so ``/etc/hosts`` counts). Only addresses found
through the recipient's MX are refused when they are not public (``--allow-private``: security-cases.md PC-20):
the operator names the others.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

import dns.rdtypes.ANY.MX

from diag.config import MAX_PROBES, ConnectorType, Organization, ProbeConfig
from diag.errors import DnsError, LabError, UsageError
from diag.frozen import frozen
from diag.net.dns import DnsStatus, Resolver, name_text
from diag.probe.facts import Accepted, E2eFacts, Held, ProbeFacts, Reflected, Refused, Stage
from diag.probe.judge import judge_delivery, judge_round_trip, verdicts
from diag.probe.message import build_probe, new_run_id
from diag.probe.pace import LastSent, SentRecord, default_record_path
from diag.probe.sender import Credentials, Via, send_probe
from diag.probe.watch import Arrival, MaildirWatcher, Watcher, WatchError, parse_imap_url, watcher_for
from diag.routing import RoutingOrder, route

if TYPE_CHECKING:
    from diag.context import RunOptions
    from diag.lab.runner import Lab
    from diag.model import Report
    from diag.registry import Registry

__all__ = [
    "KEY_VARIABLE",
    "SMTP_PASSWORD_VARIABLE",
    "TOKEN_VARIABLE",
    "E2eFacts",
    "Held",
    "Plan",
    "ProbeFacts",
    "ProbeOptions",
    "ProbeSetup",
    "Request",
    "execute",
    "parse_via",
    "plan",
    "plan_probes",
    "requested_probes",
    "run_probes",
    "watch_text",
]

KEY_VARIABLE: Final = "DIAG_PROBE_KEY"
SMTP_PASSWORD_VARIABLE: Final = "DIAG_SMTP_PASSWORD"  # noqa: S105 - the name of a variable, not its value
TOKEN_VARIABLE: Final = "DIAG_WATCH_TOKEN"  # noqa: S105 - the name of a variable, not its value
_MINIMUM_CONNECTOR_TLS: Final = "TLSv1.2"  # what the cloud negotiates at least on a connector with TlsSettings


def _new_run() -> str:
    return new_run_id(datetime.now(UTC))


@frozen
class ProbeOptions:
    """What probes take from outside their ``[[Probe]]`` tables: run-wide submission options and the secrets.

    Attributes:
        run: the run id every probe of this run carries in its token.
        environment: the environment variables probes may read, captured once, as (name, value) pairs; never
            shown (PR-06).
        maildir_root: where a relative ``maildir:`` path starts (under ``--lab``: the lab's Maildir directory);
            None: the configuration file's directory.
        keep: leave this run's probe and its DSNs in the mailbox (``--keep``); late probes of earlier runs are
            removed all the same.
        require_tls: refuse to submit without TLS (``--require-tls``).
        auth_user: authenticate as this user with ``DIAG_SMTP_PASSWORD`` (``--auth``).
        client_cert, client_key: present this certificate when submitting.
        sends: the record of sends that MinInterval is kept against (:class:`~diag.probe.pace.SentRecord`); None:
            the user's, beside the default history database. ``diag check --history`` and the lab name their own.
    """

    run: str = field(default_factory=_new_run)
    environment: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    maildir_root: Path | None = None
    keep: bool = False
    require_tls: bool = False
    auth_user: str | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    sends: Path | None = None

    @classmethod
    def capture(cls, environ: Mapping[str, str], probes: Iterable[ProbeConfig], **options: object) -> ProbeOptions:
        """The options with the variables the probes may read taken from ``environ`` (``os.environ``)."""
        names = {KEY_VARIABLE, SMTP_PASSWORD_VARIABLE, TOKEN_VARIABLE, *(probe.watch_password_env for probe in probes)}
        found = tuple(sorted((name, environ[name]) for name in names if environ.get(name)))
        return cls(environment=found, **options)  # type: ignore[arg-type]

    def variable(self, name: str) -> str | None:
        return dict(self.environment).get(name)

    def record(self) -> SentRecord:
        """The record of sends (``sends``)."""
        return SentRecord(self.sends or default_record_path())

    def key(self, organization: Organization | None) -> bytes | None:
        """The HMAC key: ``DIAG_PROBE_KEY``, else the organization's ``ProbeKey``; None: no HMAC."""
        text = self.variable(KEY_VARIABLE) or (organization.probe_key if organization is not None else None)
        return text.encode("utf-8") if text else None


@frozen
class ProbeSetup:
    """Everything a probe needs besides its own table, from the run.

    Attributes:
        resolver: the run's resolver. resolve_names: a resolver was given (``--resolver``, the lab), so host names
            of ``Via`` and of IMAP URLs are looked up there too.
        timeout: seconds for each network operation. ca_file: the CAs to trust instead of the system store.
        ehlo_name: the name the sender announces. smtp_port: the port of a ``Via`` without one and of the MX.
        allow_private: submit to an MX address that is not public.
        organization: the configuration (its connectors predict the route); None without ``--config``.
        routing_order: how connectors are ranked for that prediction.
        options: the run-wide probe options and secrets.
    """

    resolver: Resolver
    timeout: float
    ehlo_name: str
    resolve_names: bool = False
    ca_file: Path | None = None
    smtp_port: int = 25
    allow_private: bool = False
    organization: Organization | None = None
    routing_order: RoutingOrder = RoutingOrder.MOST_SPECIFIC
    options: ProbeOptions = field(default_factory=ProbeOptions)

    @classmethod
    def of(cls, options: RunOptions, resolver: Resolver) -> ProbeSetup:
        """The setup of a check run with ``options``."""
        return cls(
            resolver=resolver, timeout=options.timeout, ehlo_name=options.ehlo_name,
            resolve_names=bool(options.nameservers), ca_file=options.ca_file, smtp_port=options.smtp_port,
            allow_private=options.allow_private, organization=options.organization,
            routing_order=options.routing_order, options=options.probe or ProbeOptions(),
        )  # fmt: skip


# --- where the probe enters ---------------------------------------------------------------------------------


def parse_via(text: str, default_port: int) -> tuple[str, int]:
    """``HOST[:PORT]``, ``IP[:PORT]`` or ``[IPv6][:PORT]`` (as :func:`diag.config.values.via` normalised it) as host and
    port; the port defaults to ``default_port``."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest else default_port
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, default_port


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class _NoVia(Exception):
    """The probe cannot be submitted: no MX, no address, an address that may not be used."""


async def _address(resolver: Resolver, host: str) -> str:
    """The first address of ``host`` (A, then AAAA) through the run's resolver; raises _NoVia or DnsError."""
    for rdtype in ("A", "AAAA"):
        answer = await resolver.query(host, rdtype)
        if answer.records:
            return answer.records[0].to_text()
        if answer.status is DnsStatus.NXDOMAIN:
            raise _NoVia(f"{host} does not exist in DNS (NXDOMAIN)")
    raise _NoVia(f"{host} has no A or AAAA record")


async def _via(config: ProbeConfig, setup: ProbeSetup) -> Via:
    """Where to submit: the configured ``Via``, else the recipient domain's MX (RFC 5321 §5.1: the preferred host
    with an address; no MX at all: the domain itself)."""
    resolver = setup.resolver
    if config.via is not None:
        host, port = parse_via(config.via, setup.smtp_port)
        if _is_ip(host) or not setup.resolve_names:
            return Via(host, port)
        return Via(host, port, await _address(resolver, host))
    domain = config.recipient.rpartition("@")[2].lower()
    answer = await resolver.query(domain, "MX")
    if answer.status is DnsStatus.NXDOMAIN:
        raise _NoVia(f"the recipient domain {domain} does not exist in DNS (NXDOMAIN)")
    records = sorted(
        (record for record in answer.records if isinstance(record, dns.rdtypes.ANY.MX.MX)),
        key=lambda record: record.preference,
    )
    hosts = [name_text(record.exchange) for record in records] or [domain]
    if "." in hosts:  # RFC 7505: a null MX, the domain accepts no mail
        raise _NoVia(f"the recipient domain {domain} accepts no mail (null MX)")
    problems: list[str] = []
    for host in hosts:
        try:
            address = await _address(resolver, host)
        except _NoVia as exc:
            problems.append(str(exc))
            continue
        if not setup.allow_private and not ipaddress.ip_address(address).is_global:
            problems.append(f"the MX {host} is at {address}, not a public address (give --allow-private to use it)")
            continue
        return Via(host, setup.smtp_port, address)
    raise _NoVia(f"no MX of {domain} can be used: {'; '.join(problems)}")


def _via_text(via: Via) -> str:
    """``host [ip]:port``: the subject form of CONTRACT.md, so history knows the probe without its address."""
    if via.address and via.address != via.host:
        return f"{via.host} [{via.address}]:{via.port}"
    if _is_ip(via.host):
        return f"[{via.host}]:{via.port}"
    return f"{via.host}:{via.port}"


# --- where its arrival is observed --------------------------------------------------------------------------


def watch_text(config: ProbeConfig, setup: ProbeSetup) -> str:
    """The watched mailbox for people: its URL or Maildir path, no credentials."""
    if config.watch.startswith("maildir:"):
        return f"maildir:{_maildir(config, setup)}"
    return config.watch


def _maildir(config: ProbeConfig, setup: ProbeSetup) -> Path:
    path = Path(config.watch.removeprefix("maildir:")).expanduser()
    if path.is_absolute():
        return path
    root = setup.options.maildir_root
    if root is None and setup.organization is not None and setup.organization.source is not None:
        root = setup.organization.source.parent
    return root / path if root is not None else path.absolute()


async def _watcher(config: ProbeConfig, setup: ProbeSetup) -> Watcher:
    """The watcher for the probe's ``Watch``; raises WatchError with one line when it cannot be made."""
    if config.watch.startswith("maildir:"):
        return MaildirWatcher(_maildir(config, setup))
    options = setup.options
    password = options.variable(config.watch_password_env)
    token = None if password is not None else options.variable(TOKEN_VARIABLE)
    if password is None and token is None:
        raise WatchError(
            f"{config.watch}: no credentials: set {config.watch_password_env} to the password (or "
            f"{TOKEN_VARIABLE} to an OAuth2 access token for XOAUTH2)"
        )
    try:
        target = parse_imap_url(config.watch)
        address = None
        if setup.resolve_names and not _is_ip(target.host):
            address = await _address(setup.resolver, target.host)
        return watcher_for(
            config.watch, user=config.watch_user, password=password, token=token, timeout=setup.timeout,
            ca_file=setup.ca_file, address=address,
        )  # fmt: skip
    except (ValueError, _NoVia, DnsError) as exc:
        raise WatchError(f"{config.watch}: {exc}") from None


# --- the route diag predicts --------------------------------------------------------------------------------


@frozen
class _Prediction:
    connector: str | None = None
    minimum_tls: str | None = None
    on_premises: bool | None = None


def _predict(config: ProbeConfig, via: Via | None, setup: ProbeSetup) -> _Prediction:
    """What the configuration says about the probe's route: the outbound connector the cloud should use for the
    recipient (and the TLS its TlsSettings demand), and whether the cloud should take it in through an
    OnPremises inbound connector (it enters at an on-premises smart host, from an accepted domain)."""
    org = setup.organization
    if org is None or not (org.outbound_connectors or org.inbound_connectors):
        return _Prediction()
    decision = route(org, config.recipient.rpartition("@")[2], setup.routing_order)
    connector = decision.connector
    on_premises = None
    if via is not None and org.accepted(config.sender.rpartition("@")[2]) is not None:
        smart_hosts = {
            host.lower()
            for outbound in org.outbound_connectors if outbound.connector_type is ConnectorType.ON_PREMISES
            for host in outbound.smart_hosts
        }  # fmt: skip
        if via.host.lower() in smart_hosts:
            on_premises = True
    return _Prediction(
        connector=connector.name if connector is not None else None,
        minimum_tls=_MINIMUM_CONNECTOR_TLS if connector is not None and connector.tls_settings is not None else None,
        on_premises=on_premises,
    )


# --- one probe ----------------------------------------------------------------------------------------------


async def execute(config: ProbeConfig, setup: ProbeSetup) -> ProbeFacts:
    """Run the probe ``config``: watch, submit, wait, judge, clean up (module docstring). Never raises for the
    network; the whole takes at most the operation timeouts plus ``config.deadline``."""
    named = _via_text(Via(*parse_via(config.via, setup.smtp_port))) if config.via is not None else None
    facts = ProbeFacts(
        name=config.name, sender=config.sender, recipient=config.recipient, run=setup.options.run,
        via=named or f"the MX of {config.recipient.rpartition('@')[2]}", watch=watch_text(config, setup),
        deadline_s=config.deadline, slow_s=config.slow, min_interval_s=config.min_interval,
    )  # fmt: skip
    record = setup.options.record()
    # Asked before the mailbox is opened, so a probe held back logs in nowhere; asked again (and the send
    # recorded) under the lock just before submitting, where two processes cannot both pass.
    held = await _held(record, record.last, config)
    if held is not None:
        return replace(facts, held=held)
    try:
        watcher = await _watcher(config, setup)
        async with watcher:
            return await _watched(config, setup, watcher, record, facts)
    except WatchError as exc:
        return replace(facts, watch_error=str(exc))


async def _held(record: SentRecord, ask: Callable[[ProbeConfig], LastSent | None], config: ProbeConfig
                ) -> Held | None:  # fmt: skip
    """Whether ``record`` holds ``config`` back; ``ask`` is its ``last`` (a look) or ``claim`` (a look and, when
    the probe may go, the record of its send). A record that cannot be kept holds it back too (PR-08)."""
    try:
        last = await asyncio.to_thread(ask, config)
    except OSError as exc:
        return Held(problem=f"the record of probes sent, {record.path}, cannot be kept: {exc.strerror or exc}")
    return None if last is None else Held(last.at, last.age_s)


async def _watched(config: ProbeConfig, setup: ProbeSetup, watcher: Watcher, record: SentRecord,
                   facts: ProbeFacts) -> ProbeFacts:  # fmt: skip
    options = setup.options
    key = options.key(setup.organization)
    await watcher.mark()
    via: Via | None = None
    try:
        via = await _via(config, setup)
    except (_NoVia, DnsError) as exc:
        problem = f"cannot submit the probe: {exc}"
    if via is not None and (held := await _held(record, record.claim, config)) is not None:
        return replace(facts, held=held)
    prediction = _predict(config, via, setup)
    probe = build_probe(run=options.run, name=config.name, sender=config.sender, recipient=config.recipient,
                        key=key, now=datetime.now(UTC))  # fmt: skip
    matcher = probe.matcher(key)
    facts = replace(facts, message_id=probe.message_id, expected_connector=prediction.connector)
    submission: Accepted | Refused
    if via is None:
        submission = Refused(facts.via, Stage.CONNECT, None, problem)
    else:
        facts = replace(facts, via=_via_text(via))
        password = options.variable(SMTP_PASSWORD_VARIABLE)
        credentials = Credentials(options.auth_user, password or "") if options.auth_user else None
        submission = await send_probe(
            probe, via, timeout=setup.timeout, ehlo_name=setup.ehlo_name, require_tls=options.require_tls,
            credentials=credentials, client_cert=options.client_cert, client_key=options.client_key,
            ca_file=setup.ca_file,
        )  # fmt: skip
    if isinstance(submission, Refused):
        facts = replace(facts, refused=submission)
        verdict = verdicts(refused=submission.reply, delivery=None, bounce=None, accepted_at=None,
                           deadline_s=config.deadline)  # fmt: skip
        facts = replace(facts, verdicts=verdict)
        # Nothing to wait for; one look at the mailbox still finds late probes of earlier runs to remove.
        try:
            seen = await watcher.wait(matcher, time.monotonic())
        except WatchError as exc:
            return replace(facts, cleanup=(f"the mailbox could not be searched for late probes: {exc}",))
        facts = replace(facts, late=len(seen.late), forged=seen.forged)
        return replace(facts, cleanup=await _clean(watcher, (), seen.late))
    accepted_at = submission.accepted_at
    facts = replace(facts, accepted=submission, accepted_at=accepted_at)
    try:
        seen = await watcher.wait(matcher, time.monotonic() + config.deadline)
    except WatchError as exc:
        return replace(facts, watch_error=str(exc))
    delivery = None
    if seen.probe is not None:
        arrival = seen.probe
        trip = None
        if config.round_trip:
            # The reflector's answer: its own Received lines are the way back, the header section it returned
            # the way there. Anything else that arrived is judged as a plain delivery.
            trip = judge_round_trip(arrival.headers, folder=arrival.folder, junk=arrival.junk,
                                    accepted_at=accepted_at, observed_at=arrival.observed_at)  # fmt: skip
        if trip is not None:
            delivery = trip.whole
            facts = replace(facts, reflected=Reflected(trip.reflector, len(trip.there.hops), trip.there.latency_s,
                                                       trip.back.latency_s))  # fmt: skip
        else:
            delivery = judge_delivery(arrival.headers, folder=arrival.folder, junk=arrival.junk,
                                      accepted_at=accepted_at, observed_at=arrival.observed_at)  # fmt: skip
        facts = replace(
            facts, observed_at=delivery.observed_at, latency_s=delivery.latency_s, delivered=True,
            folder=delivery.folder, junk=delivery.junk, hops=delivery.hops, hops_truncated=delivery.hops_truncated,
            evidence=delivery.evidence,
        )  # fmt: skip
    bounce = next((dsn.bounce for dsn in seen.dsns if dsn.bounce is not None), None)
    verdict = verdicts(
        refused=None, delivery=delivery, bounce=bounce, accepted_at=accepted_at, deadline_s=config.deadline,
        slow_s=config.slow, minimum_tls=prediction.minimum_tls, expected_connector=prediction.connector,
        expect_on_premises_connector=prediction.on_premises,
    )  # fmt: skip
    if bounce is not None and facts.observed_at is None:
        facts = replace(facts, observed_at=seen.dsns[0].observed_at)
    facts = replace(facts, bounce=bounce, verdicts=verdict, late=len(seen.late), forged=seen.forged)
    own = () if options.keep else tuple(item for item in (seen.probe, *seen.dsns) if item is not None)
    return replace(facts, cleanup=await _clean(watcher, own, seen.late))


async def _clean(watcher: Watcher, own: Sequence[Arrival], late: Sequence[Arrival]) -> tuple[str, ...]:
    """Remove the probe, its DSNs and late probes; what could not be removed, one line each (PR-09)."""
    if not own and not late:
        return ()
    try:
        removals = await watcher.remove([*own, *late])
    except WatchError as exc:
        return (f"nothing could be removed: {exc}",)
    return tuple(
        f"{removal.arrival.kind.value} in {removal.arrival.folder}: {removal.detail}"
        for removal in removals
        if not removal.removed
    )


# --- what would be sent ------------------------------------------------------------------------------------


@frozen
class Plan:
    """What a run would do with one probe (``diag probe --dry-run``), found without sending, logging in or
    recording anything.

    Attributes:
        name, sender, recipient: the probe (its ``Name``, ``From`` and ``To``).
        via: where it would be submitted, ``host [ip]:port`` as looked up now (an explicit ``Via`` only where a run
            would look it up: with ``--resolver``; as configured when that fails); None when the recipient
            domain's MX cannot be used (``problems`` says why).
        mx_of: the recipient domain when the probe goes to its MX (no ``Via``); None for an explicit ``Via``.
        watch: the mailbox that would be watched, without credentials.
        deadline_s, slow_s, min_interval_s, round_trip: its ``Deadline``, ``Slow``, ``MinInterval`` and
            ``RoundTrip``.
        held: the record of sends would hold it back (the same probe was sent less than ``MinInterval`` ago).
        problems: what would keep a run from sending it or from seeing it arrive, one line each.
    """

    name: str
    sender: str
    recipient: str
    via: str | None
    mx_of: str | None
    watch: str
    deadline_s: float
    slow_s: float | None
    min_interval_s: float
    round_trip: bool
    held: Held | None = None
    problems: tuple[str, ...] = ()

    @property
    def sends(self) -> bool:
        """A run would send it now."""
        return self.held is None and not self.problems


async def plan(config: ProbeConfig, setup: ProbeSetup) -> Plan:
    """What :func:`execute` would do with ``config`` (:class:`Plan`), found without sending it, opening its
    mailbox or recording anything: only DNS lookups and a look at a Maildir's directories."""
    domain = config.recipient.rpartition("@")[2]
    record = setup.options.record()
    held = await _held(record, record.last, config)
    problems: list[str] = []
    try:
        watcher = await _watcher(config, setup)  # made, not opened: an IMAP watcher connects when entered
        if isinstance(watcher, MaildirWatcher):
            await asyncio.to_thread(watcher.check)
    except WatchError as exc:
        problems.append(f"the mailbox cannot be watched: {exc}")
    via: str | None
    try:
        via = _via_text(await _via(config, setup))
    except (_NoVia, DnsError) as exc:
        via = _via_text(Via(*parse_via(config.via, setup.smtp_port))) if config.via is not None else None
        problems.append(f"cannot submit the probe: {exc}")
    return Plan(
        name=config.name, sender=config.sender, recipient=config.recipient, via=via,
        mx_of=domain if config.via is None else None, watch=watch_text(config, setup), deadline_s=config.deadline,
        slow_s=config.slow, min_interval_s=config.min_interval, round_trip=config.round_trip, held=held,
        problems=tuple(problems),
    )  # fmt: skip


# --- diag probe ---------------------------------------------------------------------------------------------


@frozen
class Request:
    """What ``diag probe`` was asked on its command line (besides the run's options).

    Attributes:
        sender, recipient, via, watch, watch_user, deadline, slow, min_interval: one probe given by ``--from``,
            ``--to``, ``--via``, ``--watch``, ``--watch-user``, ``--deadline``, ``--slow`` and ``--min-interval``;
            None where not given.
        name: ``--name``: run only this configured probe.
        lab: ``--lab``: in a throw-away lab (the example configuration's probes when no other is named).
        round_trip: ``--round-trip``: the one probe's ``--to`` is a reflector (:attr:`ProbeConfig.round_trip`).
    """

    sender: str | None = None
    recipient: str | None = None
    via: str | None = None
    watch: str | None = None
    watch_user: str | None = None
    deadline: float | None = None
    slow: float | None = None
    name: str | None = None
    lab: bool = False
    round_trip: bool = False
    min_interval: float | None = None

    @property
    def one(self) -> bool:
        """A probe is given on the command line (rather than taken from the configuration)."""
        return self.round_trip or any(value is not None for value in (self.sender, self.recipient, self.via,
                                                                      self.watch, self.watch_user, self.deadline,
                                                                      self.slow, self.min_interval))  # fmt: skip


def requested_probes(request: Request, organization: Organization | None) -> tuple[ProbeConfig, ...]:
    """The probes ``diag probe`` runs: the one of its command line, else the configuration's (``--name``: that
    one). Raises UsageError with one line for what cannot work."""
    from diag.config.values import Invalid, probe_address, via, watch_url

    if request.one:
        if request.sender is None and request.recipient is None and organization is not None and organization.probes:
            raise UsageError("--via, --watch, --deadline and the like describe a probe given with --from and --to; a "
                             "[[Probe]] table has its own Via, Watch, Deadline, Slow and MinInterval")
        if request.name is not None:
            raise UsageError("--name picks a probe of the configuration; with --from and --to, give no --name")
        if request.sender is None or request.recipient is None:
            raise UsageError("a probe needs --from ADDR and --to ADDR (or --config FILE with [[Probe]] tables)")
        if request.watch is None and not request.lab:
            raise UsageError("a probe needs --watch: maildir:PATH, imap://HOST/FOLDER or imaps://HOST/FOLDER")
        values: dict[str, str] = {}
        for option, value, convert in (("--from", request.sender, probe_address), ("--to", request.recipient,
                                       probe_address), ("--via", request.via, via), ("--watch", request.watch,
                                       watch_url)):  # fmt: skip
            if value is not None:
                try:
                    values[option] = str(convert(value))
                except Invalid as exc:
                    raise UsageError(f"{option} {value!r}: {exc}") from None
        watch = values.get("--watch", "")
        if watch.startswith("maildir:") and not request.lab:  # relative to here, not to a configuration file
            watch = f"maildir:{Path(watch.removeprefix('maildir:')).expanduser().absolute()}"
        if request.watch_user is not None and watch.startswith("maildir:"):
            raise UsageError("--watch-user applies only to an imap:// or imaps:// --watch")
        sender, recipient = values["--from"], values["--to"]
        given = (("deadline", request.deadline), ("slow", request.slow), ("min_interval", request.min_interval))
        timing = {key: value for key, value in given if value is not None}
        probe = ProbeConfig(
            name=f"{sender} to {recipient}", sender=sender, recipient=recipient, via=values.get("--via"), watch=watch,
            watch_user=request.watch_user, round_trip=request.round_trip, **timing,  # type: ignore[arg-type]
        )  # fmt: skip
        if probe.slow is not None and probe.slow >= probe.deadline:
            raise UsageError(f"--slow {probe.slow:g}: must be below the deadline ({probe.deadline:g} s)")
        return (probe,)
    probes = organization.probes if organization is not None else ()
    if organization is None:
        raise UsageError("diag probe needs --from, --to and --watch, or --config FILE with [[Probe]] tables, or --lab")
    if not probes:
        raise UsageError(f"{organization.source or 'the configuration'}: no [[Probe]] table to run")
    if request.name is not None:
        chosen = tuple(probe for probe in probes if probe.name == request.name)
        if not chosen:
            names = ", ".join(repr(probe.name) for probe in probes)
            raise UsageError(f"--name {request.name!r}: no such [[Probe]] (the configuration has {names})")
        return chosen
    return probes


async def run_probes(probes: Sequence[ProbeConfig], registry: Registry, options: RunOptions, *, lab: bool = False
                     ) -> Report:  # fmt: skip
    """``diag probe``: run ``probes`` through ``registry`` (the ``e2e`` check), once each, concurrently; with
    ``lab``, in a throw-away lab, where a probe without ``Watch`` watches its recipient's lab mailbox.

    The probes are grouped by their sender's domain and each group runs as that domain's ``e2e`` check, so every
    probe is reported once, under the domain it was sent from (``diag check`` reports a probe under each
    checked domain it concerns).

    At most :data:`~diag.config.MAX_PROBES` probes (security-cases.md PR-08); more are refused (UsageError).
    """
    _capped(probes)
    if not lab:
        return await _run(probes, options, registry)
    from diag.lab.runner import Lab

    async with Lab() as running:
        return await _run(*_in_lab(running, probes, options), registry)


async def plan_probes(probes: Sequence[ProbeConfig], options: RunOptions, *, lab: bool = False) -> tuple[Plan, ...]:
    """``diag probe --dry-run``: what :func:`run_probes` would do with ``probes`` (:func:`plan`), in their order;
    with ``lab``, in a throw-away lab started for it. Nothing is sent, opened or recorded."""
    _capped(probes)
    if not lab:
        return await _plan(probes, options)
    from diag.lab.runner import Lab

    async with Lab() as running:
        return await _plan(*_in_lab(running, probes, options))


def _capped(probes: Sequence[ProbeConfig]) -> None:
    if len(probes) > MAX_PROBES:
        raise UsageError(f"{len(probes)} probes, but a run sends at most {MAX_PROBES}")


def _in_lab(lab: Lab, probes: Sequence[ProbeConfig], options: RunOptions
            ) -> tuple[Sequence[ProbeConfig], RunOptions]:  # fmt: skip
    """The probes and options of a run in ``lab``: its resolver, port and CAs, its Maildirs (a probe without
    ``Watch`` watches its recipient's), and a record of sends of the run's own."""
    reach = lab.run_options()
    probe = options.probe or ProbeOptions()
    options = replace(
        options, nameservers=reach.nameservers, smtp_port=reach.smtp_port, ca_file=reach.ca_file,
        ehlo_name=reach.ehlo_name, allow_private=True,
        probe=replace(probe, maildir_root=lab.maildir, sends=lab.sent_record()),
    )  # fmt: skip
    try:
        probes = [probe if probe.watch else replace(probe, watch=f"maildir:{lab.mailbox(probe.recipient)}")
                  for probe in probes]  # fmt: skip
    except LabError as exc:
        raise UsageError(f"{exc}; give --watch") from None
    return probes, options


async def _plan(probes: Sequence[ProbeConfig], options: RunOptions) -> tuple[Plan, ...]:
    resolver = Resolver(options.nameservers, timeout=options.timeout)
    setup = ProbeSetup.of(options, resolver)
    try:
        return tuple(await asyncio.gather(*(plan(probe, setup) for probe in probes)))
    finally:
        await resolver.aclose()


async def _run(probes: Sequence[ProbeConfig], options: RunOptions, registry: Registry) -> Report:
    from diag.model import Report
    from diag.runner import run_checks

    groups: dict[str, list[ProbeConfig]] = {}
    for probe in probes:
        groups.setdefault(probe.sender.rpartition("@")[2].lower(), []).append(probe)
    organization = options.organization or Organization()
    # The run may take as long as its longest probe's check (its Deadline and every operation), and a little more.
    options = replace(options, organization=replace(organization, probes=tuple(probes)))
    options = replace(options, deadline=max(check.budget(options.timeout, options) for check in registry) + 10)
    started_at = datetime.now(UTC)
    reports = await asyncio.gather(*(
        run_checks([domain], registry, replace(options, organization=replace(organization, probes=tuple(group))))
        for domain, group in groups.items()
    ))  # fmt: skip
    return Report(started_at, datetime.now(UTC), tuple(domain for report in reports for domain in report.domains))
