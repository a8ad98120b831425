"""The command line: commands and options only; the work is done by the engine, the lab, the renderers and,
around a check run, diag.unattended (lock, outputs, history, notification).

Heavy modules (dnspython, aiosmtplib, cryptography, rich) are imported inside the commands so that
``diag --help`` answers at once. Usage errors exit 3 with one line on stderr (CONTRACT.md), never 2 (click's
default) and never a traceback.
"""

from __future__ import annotations

import gc
import math
import os
import stat
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import click

from diag import __version__
from diag.errors import ConfigError, DiagError, UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from diag.config import Organization, ProbeConfig
    from diag.net.dns import Nameserver
    from diag.policy.anchors import TrustAnchor
    from diag.probe.run import ProbeOptions
    from diag.registry import Registry
    from diag.relay.settings import RelaySettings

__all__ = ["main"]

EXIT_UNKNOWN = 3


def _fail(message: str) -> NoReturn:
    # One line per problem (a config file may have several), each saying what, where and how to fix it.
    for line in message.splitlines() or [""]:
        click.echo(f"diag: error: {line}", err=True)
    sys.exit(EXIT_UNKNOWN)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``diag`` console script and ``python -m diag``."""
    try:
        code = cli.main(args=argv, prog_name="diag", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        sys.exit(EXIT_UNKNOWN)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        _fail(exc.format_message().replace("\n", " ") + hint)
    except click.ClickException as exc:
        _fail(exc.format_message().replace("\n", " "))
    except UsageError as exc:
        _fail(str(exc))
    except click.Abort:
        click.echo("diag: interrupted", err=True)
        sys.exit(130)
    except DiagError as exc:
        _fail(str(exc))
    except SystemExit as exc:
        # Raised from cli.main only by click's handling of EPIPE (the reader went away: diag ... | head), with
        # status 1, which means "warning" here: nothing more can be said on stdout, nothing to say on stderr.
        sys.exit(EXIT_UNKNOWN if exc.code == 1 else exc.code)
    except OSError as exc:  # the terminal or file we write to fails (a full disk, a closed descriptor)
        _fail(f"cannot write the output: {exc.strerror or exc}")
    try:
        sys.stdout.flush()  # a failure here would otherwise surface at exit as a traceback
    except OSError as exc:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if isinstance(exc, BrokenPipeError):
            sys.exit(EXIT_UNKNOWN)
        _fail(f"cannot write the output: {exc.strerror or exc}")
    # The interpreter's last garbage collection at exit walks every object the command imported or made: 20-30 ms
    # of a check, and the teardown after it 50-100 ms (bench/README.md, start-up). Nothing at exit needs it: what
    # a command writes is closed where it is written, and atexit handlers and weakref finalizers still run. Under
    # -X dev or -W, the collection stays: its warnings (an unclosed socket in a cycle) are what was asked for.
    if not (sys.flags.dev_mode or sys.warnoptions):
        gc.freeze()
    sys.exit(code if isinstance(code, int) else 0)


# Options that may come before the command as well as after it (diag -v check ...).
_EVERYWHERE = ("verbose", "quiet", "no_color")


class _Diag(click.Group):
    """diag's top-level group. -v, -q and --no-color given before the command become the defaults of the
    command's own options of the same name (click's default_map), so each command handles them in one place;
    a command without such an option refuses it. This happens where the command is resolved, which is also
    where ``diag schedule`` resolves the command it validates (diag/schedule.py)."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        given = [p for p in self.params if p.name in _EVERYWHERE and ctx.params.get(p.name)]
        if name is None or command is None or not given:
            return name, command, rest
        own = {param.name for param in command.params}
        for param in given:
            if param.name not in own:
                raise click.UsageError(f"{'/'.join(param.opts)} does not apply to 'diag {name}'", ctx)
        defaults = dict(ctx.default_map or {})
        defaults[name] = {**defaults.get(name, {}), **{param.name: True for param in given if param.name}}
        ctx.default_map = defaults
        return name, command, rest


@click.group(cls=_Diag, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="diag")
@click.option("-q", "--quiet", is_flag=True, help="The command's own -q (show only problems), given before it.")
@click.option("-v", "--verbose", is_flag=True, help="The command's own -v (log to stderr), given before it.")
@click.option("--no-color", is_flag=True, help="The command's own --no-color, given before it.")
def cli(quiet: bool, verbose: bool, no_color: bool) -> None:
    """Validate and diagnose the mail connectors between a cloud mail service and your own SMTP servers.

    Exit codes: 0 OK, 1 warning, 2 critical, 3 unknown (a check could not run, or bad usage).
    """
    del quiet, verbose, no_color  # handed to the command by _Diag.resolve_command


# Click words a refused value in its own way ("'x' is not a valid float range", "File 'f' does not exist."):
# these types refuse in ours, one line that names the option, the value and what it must be (CONTRACT.md).


def _option_name(param: click.Parameter | None) -> str:
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return param.human_readable_name if param is not None else "value"


def _shown(value: object) -> str:
    text = str(value)
    return text if text and text.isprintable() and not any(char.isspace() for char in text) else repr(text)


def _refuse(value: object, param: click.Parameter | None, ctx: click.Context | None, must: str) -> NoReturn:
    raise click.UsageError(f"{_option_name(param)} {_shown(value)}: must be {must}", ctx)


def _unit(unit: str) -> str:
    return f" {unit}" if unit else ""


class _Whole(click.IntRange):
    """A whole number within bounds (``unit`` names what it counts, for the message)."""

    def __init__(self, low: int, high: int, unit: str = "") -> None:
        super().__init__(low, high)
        self.unit = unit

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            _refuse(value, param, ctx, f"a whole number between {self.min} and {self.max}{_unit(self.unit)}")


class _Seconds(click.FloatRange):
    """A number of seconds within bounds; unlike click.FloatRange, "nan" is refused (it compares false with
    both bounds, so the range lets it through)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = super().convert(value, param, ctx)
        except click.BadParameter:
            number = math.nan
        if number != number:  # NaN is the only value unequal to itself
            _refuse(value, param, ctx, f"between {self.min:g} and {self.max:g} seconds")
        return number


class _Path(click.Path):
    """A path whose refusal is worded like diag's other file errors. Scheduling reads the same attributes
    (diag/schedule.py): ``exists`` marks a file diag reads, ``writable`` one it writes.

    The value is a :class:`pathlib.Path` (a ``str`` with ``as_path=False``), made here rather than by click's
    ``path_type``: pathlib (with urllib.parse and ipaddress) is then imported by the commands that take a path,
    not by every start of ``diag`` (about 9 ms of ``diag --help``, bench/startup.py)."""

    def __init__(self, *, as_path: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._as_path = as_path

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            converted = super().convert(value, param, ctx)
        except click.BadParameter:
            name = f"{_option_name(param)} {str(value)!r}" if isinstance(param, click.Option) else str(value)
            raise click.UsageError(f"{name}: {self._problem(os.fsdecode(value))}", ctx) from None
        if not self._as_path:
            return converted
        from pathlib import Path

        return Path(os.fsdecode(converted))

    def _problem(self, path: str) -> str:
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            return f"cannot read it: {exc.strerror}"
        if stat.S_ISDIR(mode) and not self.dir_okay:
            return "a directory, not a file"
        if not stat.S_ISDIR(mode) and not self.file_okay:
            return "not a directory"
        if self.writable and not os.access(path, os.W_OK):
            return "cannot write it: permission denied"
        return "cannot read it: permission denied"


def _input(*, dash: bool = False) -> _Path:
    """A file diag reads: it must exist (``-``, when allowed, is standard input)."""
    return _Path(dir_okay=False, exists=True, allow_dash=dash)


def _output(*, dash: bool = False) -> _Path:
    """A file diag writes (``-``, when allowed, is standard output; then the value stays a str)."""
    return _Path(as_path=not dash, dir_okay=False, writable=True, allow_dash=dash)


def _parse_resolver(text: str) -> Nameserver:
    from diag.net.dns import parse_nameserver

    try:
        return parse_nameserver(text)
    except ValueError as exc:
        raise UsageError(f"--resolver {text!r}: {exc}") from None


def _check_ca_file(path: Path) -> Path:
    # As the certificate check will read it (diag.net.tls.load_trust_store), before the run: a file the ssl
    # module loads may still hold nothing cryptography reads (TRUSTED CERTIFICATE blocks, a CRL alone, a
    # certificate that is not strict DER). This imports cryptography's X.509 before the first packet, which the
    # run otherwise leaves to its import thread (Check.lazy_imports); only runs given --ca-file pay it.
    from cryptography import x509

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--ca-file {str(path)!r}: cannot read it: {exc.strerror}") from None
    try:
        x509.load_pem_x509_certificates(data)
    except (ValueError, x509.InvalidVersion):
        raise ConfigError(f"--ca-file {str(path)!r}: no PEM certificate in it (expected CA certificates)") from None
    return path


def _probe_options(probes: Sequence[ProbeConfig], history: Path | None) -> ProbeOptions | None:
    """The end-to-end probes' secrets, captured from the environment once, and their record of sends beside the
    history database (none without probes)."""
    if not probes:
        return None
    from diag.probe.pace import default_record_path
    from diag.probe.run import ProbeOptions

    return ProbeOptions.capture(os.environ, probes, sends=default_record_path(history))


def _select(registry: Registry, ids: Sequence[str], *, configured: bool, probing: bool = False) -> Registry:
    from diag.registry import Registry

    unknown = [check_id for check_id in ids if check_id not in registry]
    if unknown:
        raise UsageError(f"--check {unknown[0]!r}: no such check (known: {', '.join(registry.ids)})")
    if not configured:
        # Checks that judge the organization's configuration run only when there is one: without it they
        # are not part of the run at all (rather than "skipped", which would make every run unknown).
        needing = [check_id for check_id in ids if "config" in registry[check_id].tags]
        if needing:
            raise UsageError(f"--check {needing[0]}: needs the organization's configuration (--config FILE)")
        registry = Registry(check for check in registry if "config" not in check.tags)
    elif not probing:
        # Checks that send mail (end-to-end probes) run only for configured [[Probe]] tables.
        needing = [check_id for check_id in ids if "active" in registry[check_id].tags]
        if needing:
            raise UsageError(f"--check {needing[0]}: needs [[Probe]] tables in the configuration")
        registry = Registry(check for check in registry if "active" not in check.tags)
    return registry.select(ids)


def _organization(path: Path | None, *, lab: bool) -> Organization | None:
    """The configuration given, or with --lab the lab's example organization."""
    if path is None and lab:
        path = _lab_example()
    if path is None:
        return None
    from diag.config import load_config  # tomllib and the schema: only when there is a file to read

    return load_config(path)


def _lab_example() -> Path:
    from diag.lab.world import EXAMPLE_CONFIG

    return EXAMPLE_CONFIG


def _client_certificate(path: Path) -> tuple[bytes, ...]:
    """The chain in a --client-cert PEM file (leaf first), as DER; the leaf must parse and name a host."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from diag.net.tls import MALFORMED_ERRORS, cert_info

    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"--client-cert {str(path)!r}: cannot read it: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"--client-cert {str(path)!r}: no PEM certificate in it") from None
    try:
        info = cert_info(certs[0])
    except MALFORMED_ERRORS as exc:
        raise ConfigError(f"--client-cert {str(path)!r}: the certificate cannot be parsed: {exc}") from None
    if not (info.dns_names or info.common_names):
        raise ConfigError(f"--client-cert {str(path)!r}: the certificate names no host (no SAN, no CN)")
    return tuple(cert.public_bytes(Encoding.DER) for cert in certs)


def _trust_anchors(path: Path) -> tuple[TrustAnchor, ...]:
    from diag.policy.anchors import parse_anchors

    try:
        return parse_anchors(path.read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--trust-anchor {str(path)!r}: cannot read it: {getattr(exc, 'strerror', exc)}") from None
    except ValueError as exc:
        raise ConfigError(f"--trust-anchor {str(path)!r}: {exc}") from None


def _validating(flag: bool, resolvers: Sequence[str], *, lab: bool) -> bool:
    """``--validating-resolver`` only for resolvers on this host: a remote AD bit can be forged on the way."""
    if not flag:
        return False
    from diag.policy.dnssec import ad_bit_trustworthy

    if lab or not ad_bit_trustworthy([_parse_resolver(r) for r in resolvers]):
        raise UsageError("--validating-resolver needs --resolver on this host (127.0.0.1, ::1): the AD bit of a "
                         "resolver elsewhere can be forged on the way")  # fmt: skip
    return flag


def _ip(text: str, option: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise UsageError(f"{option} {text!r}: not an IP address") from None


@cli.command()
@click.argument("domains", nargs=-1, metavar="DOMAIN...")
@click.option("--resolver", "resolvers", multiple=True, metavar="IP[:PORT]",
              help="DNS server to ask (repeatable). Default: the system's resolver.")
@click.option("--smtp-port", type=_Whole(1, 65535), default=None,
              help="Port to probe mail hosts on.  [default: 25]")
@click.option("--ca-file", type=_input(), default=None, metavar="PEM",
              help="Trust these CA certificates instead of the system store.")
@click.option("--ehlo-name", metavar="NAME", default=None, help="Name to announce in EHLO. Default: this host's.")
@click.option("--timeout", type=_Seconds(0.1, 600), default=10.0, show_default=True, metavar="SECONDS",
              help="Time limit of each network operation.")
@click.option("--deadline", type=_Seconds(1, 86400), default=300.0, show_default=True, metavar="SECONDS",
              help="Time limit of the whole run.")
@click.option("--check", "check_ids", multiple=True, metavar="ID",
              help="Run only this check and what it needs (repeatable).")
@click.option("--expect-mx", multiple=True, metavar="GLOB",
              help="Every MX host must match this pattern, e.g. '*.mail.protection.outlook.com' (repeatable).")
@click.option("--config", "config_path", type=_input(), default=None,
              metavar="FILE", help="The organization's configuration (TOML): enables the connectors check.")
@click.option("--routing-order", type=click.Choice(["most-specific", "documented"]), default="most-specific",
              show_default=True, help="How outbound connectors are ranked (see 'diag route --help').")
@click.option("--client-cert", type=_input(), default=None, metavar="PEM",
              help="The certificate chain (leaf first) the on-premises server presents to the cloud. Default: its "
              "listener's.")
@click.option("--sender-ip", default=None, metavar="IP", help="The address the on-premises server sends from.")
@click.option("--https-port", type=_Whole(1, 65535), default=443, show_default=True,
              help="Port to fetch MTA-STS policies on (mta-sts.DOMAIN).")
@click.option("--trust-anchor", "trust_anchor", type=_input(), default=None, metavar="FILE",
              help="DNSSEC trust anchors (DS or DNSKEY lines in zone-file form). Default: the root zone's.")
@click.option("--validating-resolver", is_flag=True,
              help="Take DNSSEC results from the AD bit of --resolver (a validating resolver on this host) "
              "instead of validating from the trust anchor.")
@click.option("--allow-private", is_flag=True,
              help="Also probe MX addresses that are not public (loopback, private ranges); refused by default.")
@click.option("--cert-warn-days", type=_Whole(0, 3650, "days"), default=30, show_default=True, metavar="DAYS",
              help="A certificate expiring within DAYS is a warning.")
@click.option("--cert-crit-days", type=_Whole(0, 3650, "days"), default=7, show_default=True, metavar="DAYS",
              help="A certificate expiring within DAYS is an error.")
@click.option("--json", "json_out", type=_output(dash=True), metavar="FILE|-", default=None,
              help="Write the JSON result to FILE or stdout.")
@click.option("--html", "html_out", type=_output(), default=None, metavar="FILE",
              help="Write a self-contained HTML report.")
@click.option("--format", "view", type=click.Choice(["text", "nagios"]), default="text", show_default=True,
              help="The view on stdout: a table or plain text, or the Nagios/Icinga plugin line with perfdata.")
@click.option("--prom", "prom_out", type=_output(), default=None, metavar="FILE",
              help="Write Prometheus metrics (textfile collector format).")
@click.option("--junit", "junit_out", type=_output(), default=None, metavar="FILE",
              help="Write JUnit XML: a test case per check per domain.")
@click.option("--domains-file", type=_input(), default=None, metavar="FILE",
              help="Also check the domains listed in FILE, one per line ('#' starts a comment).")
@click.option("--workers", type=_Whole(1, 256), default=None, metavar="N",
              help="Check domains in N processes side by side. Default: one per usable core for large runs, one for "
              "small ones.")
@click.option("--lock", "lock_path", type=_output(), default=None, metavar="FILE",
              help="Refuse to overlap another run holding FILE. Default: a per-user lock file when not on a terminal.")
@click.option("--history", "history_path", type=_output(), default=None,
              metavar="DB", help="Keep the run in this SQLite file. Default: under the user's data directory.")
@click.option("--no-history", is_flag=True, help="Do not keep this run in the history.")
@click.option("--notify", "notify_policy", type=click.Choice(["always", "change", "problem"]), default="change",
              show_default=True, help="When to send --notify-mail / --webhook.")
@click.option("--notify-mail", metavar="ADDR", default=None, help="Mail the HTML report to ADDR (comma-separated).")
@click.option("--smtp-server", metavar="HOST[:PORT]", default=None,
              help="Submit --notify-mail here (credentials from DIAG_SMTP_USERNAME/DIAG_SMTP_PASSWORD).")
@click.option("--webhook", metavar="URL", default=None, help="POST the JSON result to URL.")
@click.option("--lab", is_flag=True, help="Run against a throw-away embedded lab on loopback.")
@click.option("-q", "--quiet", is_flag=True, help="Show only problems; nothing when all is well.")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens to stderr.")
@click.option("--no-color", is_flag=True, help="No colour in the terminal view.")
def check(
    domains: tuple[str, ...],
    resolvers: tuple[str, ...],
    smtp_port: int | None,
    ca_file: Path | None,
    ehlo_name: str | None,
    timeout: float,
    deadline: float,
    check_ids: tuple[str, ...],
    expect_mx: tuple[str, ...],
    config_path: Path | None,
    routing_order: str,
    client_cert: Path | None,
    sender_ip: str | None,
    https_port: int,
    trust_anchor: Path | None,
    validating_resolver: bool,
    allow_private: bool,
    cert_warn_days: int,
    cert_crit_days: int,
    json_out: str | None,
    html_out: Path | None,
    view: str,
    prom_out: Path | None,
    junit_out: Path | None,
    domains_file: Path | None,
    workers: int | None,
    lock_path: Path | None,
    history_path: Path | None,
    no_history: bool,
    notify_policy: str,
    notify_mail: str | None,
    smtp_server: str | None,
    webhook: str | None,
    lab: bool,
    quiet: bool,
    verbose: bool,
    no_color: bool,
) -> int:
    """Check the mail setup of each DOMAIN: MX, port 25, STARTTLS, certificates, connectors.

    Every address of every MX host is probed concurrently, with one SMTP session per address. From cron: -q
    prints nothing when all is well, runs do not overlap (--lock), each run is kept (--history) and
    --notify-mail/--webhook report what changed.
    """
    from checks import default_registry
    from diag.context import RunOptions
    from diag.names import local_host_name, mail_domain
    from diag.routing_order import RoutingOrder
    from diag.unattended import CheckRequest, Notification, Outputs, View, execute

    if verbose:
        import logging

        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="diag: %(name)s: %(message)s")
    if lab and (resolvers or smtp_port or ca_file):
        raise UsageError("--lab sets --resolver, --smtp-port and --ca-file itself; give either --lab or those")
    listed = _domains_file(domains_file) if domains_file else []
    names = list(dict.fromkeys(mail_domain(domain) for domain in (*domains, *listed)))
    if not names:
        raise UsageError("no domain to check: give DOMAIN arguments or --domains-file")
    if lab:
        _in_the_lab(names)
    notification = None
    if notify_mail or webhook or smtp_server:  # diag.notify (mail, HTTP) is imported only for a run that notifies
        from diag.notify import NotifyPolicy

        notification = Notification(NotifyPolicy(notify_policy), mail=notify_mail, smtp_server=smtp_server,
                                    webhook=webhook)  # fmt: skip
    outputs = Outputs(json=json_out, html=html_out, view=View(view), prom=prom_out, junit=junit_out, quiet=quiet,
                      no_color=no_color)  # fmt: skip
    organization = _organization(config_path, lab=lab)
    probes = organization.probes if organization is not None else ()
    configured = organization is not None
    # Without a configuration the checks that need one are not even imported, nor, with --check, the checks not
    # asked for, unless --check names a check that is then missing: the whole registry says what it needs, or
    # which checks there are.
    registry = default_registry(configured=configured, only=check_ids)
    if not all(check_id in registry for check_id in check_ids):
        registry = default_registry()
    registry = _select(registry, check_ids, configured=configured, probing=bool(probes))
    options = RunOptions(
        nameservers=tuple(_parse_resolver(r) for r in resolvers),
        smtp_port=smtp_port or 25,
        ca_file=_check_ca_file(ca_file) if ca_file else None,
        ehlo_name=ehlo_name or local_host_name(),
        timeout=timeout,
        deadline=deadline,
        expect_mx=expect_mx,
        allow_private=allow_private,
        cert_warn_days=max(cert_warn_days, cert_crit_days),
        cert_crit_days=cert_crit_days,
        organization=organization,
        routing_order=RoutingOrder(routing_order),
        client_cert=_client_certificate(client_cert) if client_cert else (),
        sender_ip=_ip(sender_ip, "--sender-ip") if sender_ip else None,
        probe=_probe_options(probes, history_path),
        https_port=https_port,
        validating_resolver=_validating(validating_resolver, resolvers, lab=lab),
    )
    if trust_anchor:
        import dataclasses

        options = dataclasses.replace(options, trust_anchors=_trust_anchors(trust_anchor))
    return execute(CheckRequest(
        tuple(names), registry, options, outputs=outputs, notification=notification, checks=check_ids,
        config=config_path, lab=lab, lock=lock_path, history=history_path, keep_history=not no_history,
        workers=workers,
    ))  # fmt: skip


def _domains_file(path: Path) -> list[str]:
    from diag.names import mail_domain

    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--domains-file {str(path)!r}: cannot read it: {getattr(exc, 'strerror', exc)}") from None
    domains = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if entry:
            try:
                domains.append(mail_domain(entry))
            except UsageError as exc:
                raise ConfigError(f"{path}:{number}: {exc}") from None
    if not domains:
        # Refused even when DOMAIN arguments are given too: a file named on purpose that lists nothing is most
        # likely a generator that failed or the wrong file, and checking only the other domains would hide it.
        raise ConfigError(f"--domains-file {str(path)!r}: no domain in it (it is empty or has only comments and "
                          "blank lines)")  # fmt: skip
    return domains


def _in_the_lab(names: Sequence[str]) -> None:
    """Refuse, before starting it, a domain the throw-away lab does not have: it would only fail in DNS."""
    from diag.lab.world import PURPOSES
    from diag.names import display_domain

    missing = [name for name in names if name not in PURPOSES]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UsageError(
            f"the lab has no domain {display_domain(missing[0])}{more}: --lab checks only the lab's own domains "
            "(see 'diag lab domains')"
        )


@cli.command()
@click.argument("addresses", nargs=-1, required=True, metavar="ADDRESS...")
@click.option("--config", "config_path", type=_input(), default=None,
              metavar="FILE", help="The organization's configuration (TOML).")
@click.option("--lab", is_flag=True, help="Use the lab's example organization (examples/contoso.toml).")
@click.option("--routing-order", type=click.Choice(["most-specific", "documented"]), default="most-specific",
              show_default=True,
              help="most-specific: exact, longest wildcard, all accepted domains, '*' (the documentation's worked "
                   "example); documented: exact, all accepted domains, wildcard, '*' (its listed order).")
@click.option("--json", "json_out", type=_output(dash=True), metavar="FILE|-", default=None,
              help="Write diag.routes/1 JSON to FILE or stdout.")
def route(addresses: tuple[str, ...], config_path: Path | None, lab: bool, routing_order: str,
          json_out: str | None) -> int:  # fmt: skip
    """Which outbound connector the cloud uses for each recipient ADDRESS, and why.

    Like the cloud's Get-OutboundConnectorReport, with the rule that chose the connector and the other
    reading of the rules when it picks differently (ROUTE_AMBIGUOUS).
    """
    from checks.connectors import route_findings
    from diag.model import Verdict
    from diag.render.routes import RouteReport, dumps, render_plain
    from diag.routing import RoutingOrder, recipient_domain, route_both

    if config_path is None and not lab:
        raise UsageError("diag route needs the organization's configuration: --config FILE (or --lab)")
    if config_path is not None and lab:
        raise UsageError("give either --config or --lab, not both")
    org = _organization(config_path, lab=lab)
    assert org is not None
    order = RoutingOrder(routing_order)
    items = []
    for address in addresses:
        try:
            domain = recipient_domain(address)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        routing = route_both(org, domain, order)
        findings = [f for f in route_findings(domain, routing, org) if f.code != "ROUTE_CONNECTOR"]
        items.append(RouteReport(address, routing, tuple(findings)))
    if json_out is not None:
        from diag.unattended import write_output

        write_output(json_out, dumps(items, order), option="--json")
    if json_out != "-":
        render_plain(items, sys.stdout)
    return Verdict.of_findings(f for item in items for f in item.findings).exit_code


@cli.command()
@click.option("--from", "sender", metavar="ADDR", default=None, help="The probe's sender (envelope and From).")
@click.option("--to", "recipient", metavar="ADDR", default=None, help="The probe's recipient.")
@click.option("--via", metavar="HOST[:PORT]", default=None,
              help="Where the probe enters (port 465: implicit TLS).  [default: the recipient domain's MX, port 25]")
@click.option("--watch", metavar="URL", default=None,
              help="Where its arrival is observed: maildir:PATH, imap://HOST[:PORT]/FOLDER (STARTTLS) or imaps://...; "
                   "password from DIAG_WATCH_PASSWORD, or an OAuth2 token from DIAG_WATCH_TOKEN (XOAUTH2).")
@click.option("--watch-user", metavar="USER", default=None, help="The IMAP user, unless the URL names it.")
@click.option("--deadline", type=_Seconds(1, 86400), default=None, metavar="SECONDS",
              help="How long after its acceptance it may take to arrive.  [default: 300]")
@click.option("--slow", type=_Seconds(0, 86400), default=None, metavar="SECONDS",
              help="An arrival later than this is a warning (E2E_SLOW).")
@click.option("--min-interval", type=_Seconds(1, 86400), default=None, metavar="SECONDS",
              help="Do not send the probe again if this diag user sent it less than SECONDS ago.  [default: 60]")
@click.option("--round-trip", is_flag=True,
              help="--to is a reflector (a diag relay's Reflect address) and --watch the sender's mailbox: wait "
                   "for its answer and report both legs.")
@click.option("--dry-run", is_flag=True,
              help="Show what would be sent (From, To, Via looked up, Watch, times), one line per probe, or the "
                   "JSON list with --json; send nothing, log in nowhere.")
@click.option("--keep", is_flag=True, help="Leave the probe (and any DSN) in the mailbox.")
@click.option("--require-tls", is_flag=True, help="Refuse to submit the probe without TLS.")
@click.option("--auth", "auth_user", metavar="USER", default=None,
              help="Authenticate the submission as USER with the password in DIAG_SMTP_PASSWORD.")
@click.option("--client-cert", type=_input(), default=None, metavar="PEM",
              help="Present this certificate chain when submitting.")
@click.option("--client-key", type=_input(), default=None, metavar="PEM",
              help="Its private key, when not in the --client-cert file.")
@click.option("--config", "config_path", type=_input(), default=None, metavar="FILE",
              help="The organization's configuration: run its [[Probe]] tables; its connectors predict the route.")
@click.option("--name", default=None, metavar="NAME", help="Run only the [[Probe]] of this Name.")
@click.option("--lab", is_flag=True,
              help="In a throw-away lab: its example configuration's four probes unless others are given.")
@click.option("--resolver", "resolvers", multiple=True, metavar="IP[:PORT]",
              help="DNS server to ask (repeatable). Default: the system's resolver.")
@click.option("--ca-file", type=_input(), default=None, metavar="PEM",
              help="Trust these CA certificates instead of the system store (SMTP and IMAP alike).")
@click.option("--ehlo-name", metavar="NAME", default=None, help="Name to announce in EHLO. Default: this host's.")
@click.option("--allow-private", is_flag=True,
              help="Submit to an MX address that is not public (loopback, private ranges); refused by default.")
@click.option("--timeout", type=_Seconds(0.1, 600), default=10.0, show_default=True, metavar="SECONDS",
              help="Time limit of each network operation.")
@click.option("--json", "json_out", type=_output(dash=True), metavar="FILE|-", default=None,
              help="Write the JSON result to FILE or stdout.")
@click.option("--html", "html_out", type=_output(), default=None, metavar="FILE",
              help="Write a self-contained HTML report.")
@click.option("--lock", "lock_path", type=_output(), default=None, metavar="FILE",
              help="Refuse to overlap another run holding FILE. Default: a per-user lock file when not on a terminal.")
@click.option("-q", "--quiet", is_flag=True, help="Show only problems; nothing when all is well.")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens to stderr.")
@click.option("--no-color", is_flag=True, help="No colour in the terminal view.")
def probe(sender: str | None, recipient: str | None, via: str | None, watch: str | None, watch_user: str | None,
          deadline: float | None, slow: float | None, min_interval: float | None, round_trip: bool, dry_run: bool,
          keep: bool, require_tls: bool,
          auth_user: str | None,
          client_cert: Path | None, client_key: Path | None, config_path: Path | None, name: str | None, lab: bool,
          resolvers: tuple[str, ...], ca_file: Path | None, ehlo_name: str | None, allow_private: bool,
          timeout: float, json_out: str | None, html_out: Path | None, lock_path: Path | None, quiet: bool,
          verbose: bool, no_color: bool) -> int:  # fmt: skip
    """Send an end-to-end test message and prove it arrived: where, when, over which hops, with which TLS.

    One probe: --from, --to and --watch (and --via). Or the [[Probe]] tables of --config (--name: one of them).
    Or --lab alone: the lab's four flows, John<->Sun and John<->Bob. Exit codes as for diag check; a mailbox that
    cannot be read is E2E_WATCH_FAILED, exit 3. At most 20 probes a run, and a probe this user sent less than its
    MinInterval ago is not sent again (E2E_NOT_SENT). --dry-run shows what would be sent, and exits 0.
    """
    from checks import default_registry
    from diag.context import RunOptions
    from diag.names import local_host_name
    from diag.probe.run import (
        SMTP_PASSWORD_VARIABLE,
        ProbeOptions,
        Request,
        plan_probes,
        requested_probes,
        run_probes,
    )
    from diag.unattended import Job, Outputs, job_lock, write_output

    if verbose:
        import logging

        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="diag: %(name)s: %(message)s")
    if lab and (resolvers or ca_file):
        raise UsageError("--lab sets --resolver and --ca-file itself; give either --lab or those")
    if client_key is not None and client_cert is None:
        raise UsageError("--client-key needs --client-cert")
    if dry_run and html_out is not None:
        raise UsageError("--dry-run writes no report; give --json FILE|- for the list of what would be sent")
    if auth_user is not None and not os.environ.get(SMTP_PASSWORD_VARIABLE):
        raise UsageError(f"--auth {auth_user}: set the password in {SMTP_PASSWORD_VARIABLE}")
    request = Request(sender, recipient, via, watch, watch_user, deadline, slow, name, lab, round_trip, min_interval)
    organization = _organization(config_path, lab=lab)
    probes = requested_probes(request, organization)
    outputs = Outputs(json=json_out, html=html_out, quiet=quiet, no_color=no_color)
    options = RunOptions(
        nameservers=tuple(_parse_resolver(r) for r in resolvers),
        ca_file=_check_ca_file(ca_file) if ca_file else None,
        ehlo_name=ehlo_name or local_host_name(),
        timeout=timeout,
        allow_private=allow_private,
        organization=organization,
        probe=ProbeOptions.capture(os.environ, probes, keep=keep, require_tls=require_tls, auth_user=auth_user,
                                   client_cert=client_cert, client_key=client_key),
    )
    import asyncio

    if dry_run:  # no lock: nothing is sent, and a cron run in progress must not refuse a look
        from diag.render.plans import dumps, render_plain

        plans = asyncio.run(plan_probes(probes, options, lab=lab))
        if json_out is not None:
            write_output(json_out, dumps(plans), option="--json")
        if json_out != "-":
            render_plain(plans, sys.stdout)
        return 0
    domains = {address.rpartition("@")[2] for probe in probes for address in (probe.sender, probe.recipient)}
    job = Job.of("probe", domains, config=config_path, lab=lab, outputs={"--json": json_out, "--html": html_out})
    with job_lock(lock_path, job):
        report = asyncio.run(run_probes(probes, default_registry().select(["e2e"]), options, lab=lab))
        outputs.write(report)
    return report.exit_code


@cli.command()
@click.argument("result", type=_input(dash=True), metavar="RESULT.json|-")
@click.option("--html", "html_out", type=_output(), default=None, metavar="FILE",
              help="Write the HTML report to FILE.")
@click.option("--format", "view", type=click.Choice(["text", "nagios"]), default="text", show_default=True,
              help="The view on stdout.")
@click.option("--prom", "prom_out", type=_output(), default=None, metavar="FILE")
@click.option("--junit", "junit_out", type=_output(), default=None, metavar="FILE")
@click.option("-q", "--quiet", is_flag=True, help="Show only problems.")
@click.option("--no-color", is_flag=True, help="No colour in the terminal view.")
def report(result: Path, html_out: Path | None, view: str, prom_out: Path | None, junit_out: Path | None,
           quiet: bool, no_color: bool) -> int:  # fmt: skip
    """Re-render a saved JSON result (diag check --json) as HTML, terminal view or monitoring formats.

    RESULT.json is '-' to read it from standard input: diag check contoso.com --json - | diag report - --html r.html
    """
    from checks import default_registry
    from diag.model import Report
    from diag.render.text import sanitize
    from diag.unattended import Outputs, View

    document, where = _load_result(result)
    try:
        saved = Report.from_json(document, facts=default_registry().facts)
    except ValueError as exc:
        raise ConfigError(f"{where}: not a diag.report/1 result: {sanitize(str(exc), limit=300)}") from None
    Outputs(html=html_out, view=View(view), prom=prom_out, junit=junit_out, quiet=quiet, no_color=no_color).write(saved)
    return saved.exit_code


def _load_result(result: Path) -> tuple[dict[str, Any], str]:
    """A saved result from a file or, for ``-``, standard input, validated the same way; and where it came
    from, for messages."""
    from pathlib import Path

    from diag.render.json import load_report

    if str(result) != "-":
        return load_report(result), str(result)
    # load_report reads a path: /dev/stdin is this process's standard input, be it a pipe, a file or a terminal.
    stdin = Path("/dev/stdin")
    try:
        return load_report(stdin), "standard input"
    except ConfigError as exc:
        raise ConfigError(str(exc).replace(f"{stdin}:", "standard input:", 1)) from None


@cli.command()
@click.option("--json", "json_out", type=_output(dash=True), metavar="FILE|-", default=None,
              help="Write the catalogue as diag.codes/1 JSON to FILE or stdout.")
def codes(json_out: str | None) -> int:
    """Every finding code diag may report, with its check, default severity and meaning."""
    from checks import default_registry

    rows = [(check.id, check.codes[code].label, code, check.meanings[code])
            for check in default_registry() for code in check.codes]  # fmt: skip
    if json_out is not None:
        import json

        from diag.unattended import write_output

        catalogue = {"schema": "diag.codes/1", "codes": [
            {"code": code, "check": check_id, "severity": severity, "meaning": meaning}
            for check_id, severity, code, meaning in rows
        ]}  # fmt: skip
        write_output(json_out, json.dumps(catalogue, indent=2, ensure_ascii=True) + "\n", option="--json")
    if json_out != "-":
        widths = [max(len(row[column]) for row in rows) for column in range(3)]
        for row in rows:
            click.echo("  ".join([*(value.ljust(width) for value, width in zip(row[:3], widths, strict=True)), row[3]]))
    return 0


@cli.command()
@click.argument("domain", required=False)
@click.option("--history", "history_path", type=_output(), default=None,
              metavar="DB", help="The history file. Default: under the user's data directory.")
@click.option("--limit", type=_Whole(1, 10000), default=20, show_default=True, help="Runs to show.")
@click.option("--prune", "keep_days", type=_Whole(0, 36500, "days"), default=None, metavar="DAYS",
              help="First delete the runs older than DAYS days (an hourly run adds about 9000 a year).")
def history(domain: str | None, history_path: Path | None, limit: int, keep_days: int | None) -> int:
    """The runs kept so far and what changed between them (new and resolved findings, renewals, MX changes)."""
    from diag.history import History, default_history_path, render_history
    from diag.names import mail_domain

    with History(history_path or default_history_path(), create=False) as kept:
        if keep_days is not None:
            pruned = kept.prune(keep_days=keep_days)
            click.echo(f"pruned {pruned} {'run' if pruned == 1 else 'runs'} older than {keep_days} days")
        click.echo(render_history(kept, mail_domain(domain) if domain else None, limit=limit), nl=False)
    return 0


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--every", default="hourly", show_default=True, metavar="WHEN",
              help="hourly, daily, or a number of minutes (15, 30, 120...).")
@click.option("--systemd", is_flag=True, help="A systemd service and timer instead of a crontab line.")
@click.option("--name", default="diag", show_default=True, help="The systemd unit name.")
@click.option("--install", is_flag=True, help="Install it (the user's crontab, or the unit files).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="COMMAND...")
def schedule(every: str, systemd: bool, name: str, install: bool, command: tuple[str, ...]) -> int:
    """Run a diag COMMAND regularly: print (or --install) the crontab line or systemd units for exactly it.

    The COMMAND is checked now as diag will parse it then (options, values, input files), and its relative
    paths become absolute, since cron and systemd do not start it in this directory.

    Example: diag schedule --every 30 check contoso.com -q --html /var/www/diag.html
    """
    import shlex

    from diag.schedule import crontab_line, diag_command, install_crontab, install_systemd, prepare, systemd_units

    prepared = prepare(cli, command)
    if prepared.command[:1] == ("schedule",):
        raise UsageError(f"{shlex.join(command)!r} is not a diag command to schedule (e.g. check contoso.com -q)")
    if systemd:
        units = systemd_units(prepared.argv, every=every, name=name)
        if not install:
            for filename, text in units.items():
                click.echo(f"# {filename}\n{text}")
            return 0
        done = install_systemd(units)
        lines = [f"runs: {shlex.join([*diag_command(), *prepared.argv])}", *(f"wrote {path}" for path in done.paths),
                 f"now run: {done.command}"]  # fmt: skip
        click.echo("\n".join([*lines, done.note] if done.note else lines))
        return 0
    line = crontab_line(prepared.argv, every=every)
    click.echo(line)
    if install:
        click.echo("installed in your crontab" if install_crontab(line) else "already in your crontab")
    return 0


@cli.group(invoke_without_command=True)
@click.option("--config", "config_path", type=_input(), default=None,
              metavar="FILE", help="The organization's configuration, with its [Relay] table.")
@click.option("--role", type=click.Choice(["cloud", "onprem", "internet"]), default=None,
              help="The part it plays.  [default: the config's, else cloud]")
@click.option("--listen", multiple=True, metavar="ADDR:PORT",
              help="Listen here (repeatable).  [default: 127.0.0.1:2525]")
@click.option("--hostname", default=None, metavar="NAME", help="Its name in greetings and Received lines.")
@click.option("--spool", type=_Path(file_okay=False), default=None, metavar="DIR",
              help="The durable queue.")
@click.option("--maildir", type=_Path(file_okay=False), default=None, metavar="DIR",
              help="The parent of the local mailboxes' Maildirs.")
@click.option("--tls-cert", type=_input(), default=None, metavar="PEM",
              help="Its certificate chain: offered with STARTTLS, presented when delivering.")
@click.option("--tls-key", type=_input(), default=None, metavar="PEM")
@click.option("--resolver", "resolvers", multiple=True, metavar="IP[:PORT]", help="DNS server (repeatable).")
@click.option("--ca-file", type=_input(), default=None, metavar="PEM",
              help="CAs trusted for peers' certificates instead of the system store.")
@click.option("--smtp-port", type=_Whole(1, 65535), default=None, help="The port it delivers to.")
@click.option("--allow-private", is_flag=True,
              help="Also deliver to addresses that are not public (an on-premises smart host on 10.x or 192.168.x); "
                   "refused by default, like the config's AllowPrivate.")
@click.option("--reflect", "reflectors", multiple=True, metavar="ADDR",
              help="Internet role: answer every message to ADDR with its headers attached, so that `diag probe "
                   "--round-trip` proves both directions (repeatable; replaces the config's Reflect).")
@click.pass_context
def relay(ctx: click.Context, config_path: Path | None, role: str | None, listen: tuple[str, ...],
          hostname: str | None, spool: Path | None, maildir: Path | None, tls_cert: Path | None,
          tls_key: Path | None, resolvers: tuple[str, ...], ca_file: Path | None,
          smtp_port: int | None, allow_private: bool, reflectors: tuple[str, ...]) -> int:  # fmt: skip
    """Run the routing relay in the foreground (cloud, on-premises or Internet role); stop with Ctrl-C/SIGTERM.

    It accepts mail like the cloud (accepted domains, relay rights by inbound connector), spools it durably,
    and delivers by connector or MX with the TLS each connector demands. Options win over the [Relay] table.
    """
    from diag.config import RelayRole
    from diag.relay.settings import resolve_settings

    if config_path is None:
        raise UsageError("diag relay needs the organization's configuration: --config FILE")
    org = _organization(config_path, lab=False)
    assert org is not None
    settings = resolve_settings(
        org, role=RelayRole(role) if role else None, hostname=hostname, listen=[_listen(text) for text in listen],
        spool=spool, maildir=maildir, tls_cert=tls_cert, tls_key=tls_key,
        nameservers=[_parse_resolver(text) for text in resolvers], smtp_port=smtp_port,
        ca_file=_check_ca_file(ca_file) if ca_file else None, allow_private=allow_private, reflect=reflectors,
    )  # fmt: skip
    if ctx.invoked_subcommand is not None:
        ctx.obj = settings
        return 0
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="diag relay: %(message)s")
    # One line per queued message and per delivery attempt (ours); aiosmtpd's per-command chatter stays off.
    logging.getLogger("diag").setLevel(logging.INFO)
    # The format shows the message alone: no caller, thread or process to find for each line (the logging
    # HOWTO's "Optimization"); a few per cent of the relay's CPU per message.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False

    from diag.relay.service import serve

    try:
        serve(settings)
    except OSError as exc:  # a port in use, a spool it may not read or write
        raise DiagError(f"the relay cannot start: {_os_error(exc)}") from None
    return 0


def _os_error(exc: OSError) -> str:
    """What went wrong, for a one-line error: the system's words, and the path they are about when there is one."""
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def _listen(text: str) -> str:
    from diag.names import port_number

    host, colon, port = text.rpartition(":")
    try:
        port_number(port if colon else "")
    except ValueError:
        raise UsageError(f"--listen {text!r}: expected ADDR:PORT, e.g. 127.0.0.1:2525 or [::1]:2525") from None
    _ip(host.strip("[]"), "--listen")
    return text


@relay.command("queue")
@click.pass_obj
def relay_queue(settings: RelaySettings) -> int:
    """List what waits in the relay's spool, and why."""
    from datetime import UTC, datetime

    from diag.relay.spool import Spool
    from diag.render.text import sanitize

    if not settings.spool.is_dir():
        raise ConfigError(f"{settings.spool}: no spool there (give --spool DIR or the config's [Relay] Spool)")
    try:
        spool = Spool(settings.spool)
        with spool.idle() as idle:
            messages = spool.messages()
            # A relay that is not running may have left messages in its journal alone (killed before their segment's
            # checkpoint, or a crash of the machine lost their queue files): its next start puts them back. A running
            # relay's journal holds its messages until their segment's checkpoint, about two seconds at most while
            # its disk keeps up (longer for a segment whose checkpoint fails): they are not listed.
            journal_only = spool.journal_only({m.qid for m in messages}) if idle else []
    except OSError as exc:
        raise DiagError(f"cannot read the spool: {_os_error(exc)}") from None
    unqueued = {message.qid for message in journal_only}
    now = datetime.now(UTC)
    for message in (*messages, *journal_only):
        age = int((now - message.envelope.received_at).total_seconds())
        click.echo(f"{message.qid}  {message.size} bytes  {age} s old  from <{sanitize(message.envelope.mail_from)}>")
        for status in message.statuses:
            when = f", next try {status.next_attempt:%H:%M:%S}" if status.next_attempt else ""
            detail = f": {sanitize(status.detail)}" if status.detail else ""
            state = f"{status.state.value}, {status.attempts} attempts{when}{detail}"
            click.echo(f"  <{sanitize(status.recipient)}> {state}")
        if message.qid in unqueued:
            click.echo("  in the journal only: put back in the queue when the relay starts")
    more = f", {len(journal_only)} more in its journal (put back when the relay starts)" if journal_only else ""
    click.echo(f"{len(messages)} queued in {settings.spool}{more}")
    return 0


@cli.group()
def config() -> None:
    """The organization's configuration: validate it, or import it from Exchange PowerShell exports."""


@config.command("check")
@click.argument("path", type=_input(), metavar="FILE")
def config_check(path: Path) -> int:
    """Validate FILE; each problem is reported with its line and field, and how to fix it (exit 3)."""
    from diag.config import load_config

    org = load_config(path)
    click.echo(
        f"{path}: ok: {len(org.accepted_domains)} accepted domains, {len(org.outbound_connectors)} outbound "
        f"and {len(org.inbound_connectors)} inbound connectors"
    )
    return 0


@config.command("import")
@click.argument("paths", nargs=-1, required=True, type=_input(),
                metavar="FILE.json...")
@click.option("-o", "--output", type=_output(), default=None, metavar="FILE",
              help="Write the TOML here instead of to stdout.")
def config_import(paths: tuple[Path, ...], output: Path | None) -> int:
    """Convert Get-AcceptedDomain, Get-InboundConnector and Get-OutboundConnector JSON into a config file.

    Export with: Get-OutboundConnector | ConvertTo-Json -Depth 4 -EnumsAsStrings > outbound.json (PowerShell 7;
    likewise for the other two cmdlets).
    """
    from diag.config import import_exports
    from diag.unattended import write_output

    result = import_exports(paths)
    for note in result.notes:
        click.echo(f"diag: note: {note}", err=True)
    write_output(str(output) if output else "-", result.to_toml(), option="-o")
    return 0


@cli.group()
def lab() -> None:
    """The embedded lab: a world of DNS and mail hosts on loopback, defects included."""


@lab.command("serve")
@click.option("--smtp-port", type=_Whole(1, 65535), default=2525, show_default=True,
              help="Port every lab mail host listens on.")
@click.option("--dns-port", type=_Whole(1, 65535), default=5353, show_default=True,
              help="Port of the lab's DNS server (UDP and TCP).")
@click.option("--dir", "directory", type=_Path(file_okay=False), default=None,
              help="Keep certificates and Maildirs here. Default: a temporary directory, removed at exit.")
@click.option("--latency", "latency_text", default=None, metavar="RTT",
              help="Add this round-trip time to every lab packet, DNS included (e.g. 50ms), through delaying "
              "proxies.")
def lab_serve(smtp_port: int, dns_port: int, directory: Path | None, latency_text: str | None) -> int:
    """Run the lab in the foreground until interrupted; prints the options that reach it."""
    import asyncio
    import signal

    from diag.lab.latency import parse_latency
    from diag.lab.runner import Lab

    try:
        latency = parse_latency(latency_text) if latency_text is not None else 0.0
    except ValueError as exc:
        raise UsageError(f"--latency {latency_text!r}: {exc}") from None

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with Lab(smtp_port=smtp_port, dns_port=dns_port, directory=directory, latency=latency) as running:
            delayed = f"; every packet {latency * 1000:g} ms round trip" if latency else ""
            click.echo(f"diag lab: running; maildirs in {running.maildir}{delayed}")
            click.echo(f"reach it with: diag check DOMAIN {running.check_option_text()}")
            click.echo("domains: " + " ".join(_lab_domains()), nl=True)
            await stop.wait()
        click.echo("diag lab: stopped", err=True)

    try:
        asyncio.run(serve())
    except OSError as exc:  # a port in use, a --dir that cannot be made
        raise DiagError(f"the lab cannot start: {_os_error(exc)}") from None
    return 0


@lab.command("domains")
def lab_domains() -> int:
    """List the lab's domains and what each one demonstrates."""
    from diag.lab.world import PURPOSES

    width = max(map(len, PURPOSES))
    for domain, purpose in PURPOSES.items():
        click.echo(f"{domain:<{width}}  {purpose}")
    return 0


def _lab_domains() -> list[str]:
    from diag.lab.world import PURPOSES

    return list(PURPOSES)


