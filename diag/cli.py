"""The command line: commands and options only; the work is done by the engine, the lab and the renderers.

Heavy modules (dnspython, aiosmtplib, cryptography, rich) are imported inside the commands so that
``diag --help`` answers at once. Usage errors exit 3 with one line on stderr (CONTRACT.md), never 2 (click's
default) and never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from diag import __version__
from diag.errors import ConfigError, DiagError, UsageError

if TYPE_CHECKING:
    from diag.config import Organization
    from diag.context import RunOptions
    from diag.model import Report
    from diag.net.dns import Nameserver
    from diag.registry import Registry

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
    sys.exit(code if isinstance(code, int) else 0)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="diag")
def cli() -> None:
    """Validate and diagnose the mail connectors between a cloud mail service and your own SMTP servers.

    Exit codes: 0 OK, 1 warning, 2 critical, 3 unknown (a check could not run, or bad usage).
    """


def _parse_resolver(text: str) -> Nameserver:
    import ipaddress

    from diag.net.dns import Nameserver

    host, port = text, 53
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise UsageError(f"--resolver {text!r}: expected IP, IP:PORT or [IPv6]:PORT")
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(text, port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"--resolver {text!r}: not an IP address (expected IP, IP:PORT or [IPv6]:PORT)") from None
    return Nameserver(host, port)


def _port(option: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"--resolver {option!r}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def _check_ca_file(path: Path) -> Path:
    from cryptography import x509

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--ca-file {str(path)!r}: cannot read it: {exc.strerror}") from None
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"--ca-file {str(path)!r}: no PEM certificate in it (expected CA certificates)") from None
    return path


def _ehlo_name() -> str:
    """This host's name for EHLO: its FQDN when the system knows one quickly."""
    name = socket.gethostname()
    return name if "." in name else f"{name}.localdomain" if name else "localhost.localdomain"


def _select(registry: Registry, ids: Sequence[str], *, configured: bool) -> Registry:
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
    return registry.select(ids)


def _organization(path: Path | None, *, lab: bool) -> Organization | None:
    """The configuration given, or with --lab the lab's example organization."""
    from diag.config import load_config

    if path is None and lab:
        path = _lab_example()
    return load_config(path) if path is not None else None


def _lab_example() -> Path:
    from diag.lab.world import EXAMPLE_CONFIG

    return EXAMPLE_CONFIG


def _certificate_names(path: Path) -> tuple[str, ...]:
    from cryptography import x509

    from diag.net.tls import cert_info

    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"--client-cert {str(path)!r}: cannot read it: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"--client-cert {str(path)!r}: no PEM certificate in it") from None
    info = cert_info(certs[0])
    names = info.dns_names or info.common_names
    if not names:
        raise ConfigError(f"--client-cert {str(path)!r}: the certificate names no host (no SAN, no CN)")
    return names


def _ip(text: str, option: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise UsageError(f"{option} {text!r}: not an IP address") from None


@cli.command()
@click.argument("domains", nargs=-1, required=True, metavar="DOMAIN...")
@click.option("--resolver", "resolvers", multiple=True, metavar="IP[:PORT]",
              help="DNS server to ask (repeatable). Default: the system's resolver.")
@click.option("--smtp-port", type=click.IntRange(1, 65535), default=None,
              help="Port to probe mail hosts on.  [default: 25]")
@click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False), default=None, metavar="PEM",
              help="Trust these CA certificates instead of the system store.")
@click.option("--ehlo-name", metavar="NAME", default=None, help="Name to announce in EHLO. Default: this host's.")
@click.option("--timeout", type=click.FloatRange(0.1, 600), default=10.0, show_default=True, metavar="SECONDS",
              help="Time limit of each network operation.")
@click.option("--deadline", type=click.FloatRange(1, 86400), default=300.0, show_default=True, metavar="SECONDS",
              help="Time limit of the whole run.")
@click.option("--check", "check_ids", multiple=True, metavar="ID",
              help="Run only this check and what it needs (repeatable).")
@click.option("--expect-mx", multiple=True, metavar="GLOB",
              help="Every MX host must match this pattern, e.g. '*.mail.protection.outlook.com' (repeatable).")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              metavar="FILE", help="The organization's configuration (TOML): enables the connectors check.")
@click.option("--routing-order", type=click.Choice(["most-specific", "documented"]), default="most-specific",
              show_default=True, help="How outbound connectors are ranked (see 'diag route --help').")
@click.option("--client-cert", type=click.Path(path_type=Path, dir_okay=False), default=None, metavar="PEM",
              help="The certificate the on-premises server presents to the cloud. Default: its listener's.")
@click.option("--sender-ip", default=None, metavar="IP", help="The address the on-premises server sends from.")
@click.option("--allow-private", is_flag=True,
              help="Also probe MX addresses that are not public (loopback, private ranges); refused by default.")
@click.option("--cert-warn-days", type=click.IntRange(0, 3650), default=30, show_default=True, metavar="DAYS",
              help="A certificate expiring within DAYS is a warning.")
@click.option("--cert-crit-days", type=click.IntRange(0, 3650), default=7, show_default=True, metavar="DAYS",
              help="A certificate expiring within DAYS is an error.")
@click.option("--json", "json_out", metavar="FILE|-", default=None, help="Write the JSON result to FILE or stdout.")
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
    allow_private: bool,
    cert_warn_days: int,
    cert_crit_days: int,
    json_out: str | None,
    lab: bool,
    quiet: bool,
    verbose: bool,
    no_color: bool,
) -> int:
    """Check the mail setup of each DOMAIN: MX, port 25, STARTTLS, certificates.

    Every address of every MX host is probed concurrently, with one SMTP session per address.
    """
    from checks import default_registry
    from diag.context import RunOptions
    from diag.names import mail_domain

    if verbose:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="diag: %(name)s: %(message)s")
    if lab and (resolvers or smtp_port or ca_file):
        raise UsageError("--lab sets --resolver, --smtp-port and --ca-file itself; give either --lab or those")
    from diag.routing import RoutingOrder

    names = list(dict.fromkeys(mail_domain(domain) for domain in domains))
    organization = _organization(config_path, lab=lab)
    registry = _select(default_registry(), check_ids, configured=organization is not None)
    options = RunOptions(
        nameservers=tuple(_parse_resolver(r) for r in resolvers),
        smtp_port=smtp_port or 25,
        ca_file=_check_ca_file(ca_file) if ca_file else None,
        ehlo_name=ehlo_name or _ehlo_name(),
        timeout=timeout,
        deadline=deadline,
        expect_mx=expect_mx,
        allow_private=allow_private,
        cert_warn_days=max(cert_warn_days, cert_crit_days),
        cert_crit_days=cert_crit_days,
        organization=organization,
        routing_order=RoutingOrder(routing_order),
        client_cert_names=_certificate_names(client_cert) if client_cert else (),
        sender_ip=_ip(sender_ip, "--sender-ip") if sender_ip else None,
    )
    json_path = None if json_out in (None, "-") else Path(json_out)
    if json_path is not None and not json_path.parent.is_dir():
        raise ConfigError(f"--json {json_out!r}: directory {str(json_path.parent)!r} does not exist")
    report = asyncio.run(_run(names, registry, options, lab=lab))
    _output(report, json_out=json_out, json_path=json_path, quiet=quiet, no_color=no_color)
    return report.exit_code


async def _run(domains: list[str], registry: Registry, options: RunOptions, *, lab: bool) -> Report:
    from diag.runner import run_checks

    if not lab:
        return await run_checks(domains, registry, options)
    import dataclasses

    from diag.lab.runner import Lab

    async with Lab() as running:
        lab_options = running.run_options()
        options = dataclasses.replace(
            options, nameservers=lab_options.nameservers, smtp_port=lab_options.smtp_port,
            ca_file=lab_options.ca_file, ehlo_name=lab_options.ehlo_name, allow_private=True,
        )  # fmt: skip
        return await run_checks(domains, registry, options)


def _output(report: Report, *, json_out: str | None, json_path: Path | None, quiet: bool, no_color: bool) -> None:
    if json_out is not None:
        from diag.render.json import dumps

        text = dumps(report)
        if json_path is None:
            sys.stdout.write(text)
            return
        try:
            json_path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--json {json_out!r}: cannot write it: {exc.strerror}") from None
    if sys.stdout.isatty():
        from rich.console import Console

        from diag.render.terminal import render_rich

        render_rich(report, Console(no_color=no_color, highlight=False), quiet=quiet)
    else:
        from diag.render.terminal import render_plain

        render_plain(report, sys.stdout, quiet=quiet)


@cli.command()
@click.argument("addresses", nargs=-1, required=True, metavar="ADDRESS...")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              metavar="FILE", help="The organization's configuration (TOML).")
@click.option("--lab", is_flag=True, help="Use the lab's example organization (examples/contoso.toml).")
@click.option("--routing-order", type=click.Choice(["most-specific", "documented"]), default="most-specific",
              show_default=True,
              help="most-specific: exact, longest wildcard, all accepted domains, '*' (the documentation's worked "
                   "example); documented: exact, all accepted domains, wildcard, '*' (its listed order).")
@click.option("--json", "json_out", metavar="FILE|-", default=None, help="Write diag.routes/1 JSON to FILE or stdout.")
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
        _write(json_out, dumps(items, order))
    if json_out != "-":
        render_plain(items, sys.stdout)
    return Verdict.of_findings(f for item in items for f in item.findings).exit_code


def _write(target: str, text: str) -> None:
    if target == "-":
        sys.stdout.write(text)
        return
    try:
        Path(target).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {target!r}: {exc.strerror}") from None


@cli.group()
def config() -> None:
    """The organization's configuration: validate it, or import it from Exchange PowerShell exports."""


@config.command("check")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE")
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
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False),
                metavar="FILE.json...")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), default=None, metavar="FILE",
              help="Write the TOML here instead of to stdout.")
def config_import(paths: tuple[Path, ...], output: Path | None) -> int:
    """Convert Get-AcceptedDomain, Get-InboundConnector and Get-OutboundConnector JSON into a config file.

    Export with: Get-OutboundConnector | ConvertTo-Json -Depth 4 -EnumsAsStrings > outbound.json (PowerShell 7;
    likewise for the other two cmdlets).
    """
    from diag.config import import_exports

    result = import_exports(paths)
    for note in result.notes:
        click.echo(f"diag: note: {note}", err=True)
    _write(str(output) if output else "-", result.to_toml())
    return 0


@cli.group()
def lab() -> None:
    """The embedded lab: a world of DNS and mail hosts on loopback, defects included."""


@lab.command("serve")
@click.option("--smtp-port", type=click.IntRange(1, 65535), default=2525, show_default=True,
              help="Port every lab mail host listens on.")
@click.option("--dns-port", type=click.IntRange(1, 65535), default=5353, show_default=True,
              help="Port of the lab's DNS server (UDP and TCP).")
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Keep certificates and Maildirs here. Default: a temporary directory, removed at exit.")
def lab_serve(smtp_port: int, dns_port: int, directory: Path | None) -> int:
    """Run the lab in the foreground until interrupted; prints the options that reach it."""
    from diag.lab.runner import Lab

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with Lab(smtp_port=smtp_port, dns_port=dns_port, directory=directory) as running:
            click.echo(f"diag lab: running; maildirs in {running.maildir}")
            click.echo(f"reach it with: diag check DOMAIN {running.option_text()}")
            click.echo("domains: " + " ".join(_lab_domains()), nl=True)
            await stop.wait()
        click.echo("diag lab: stopped", err=True)

    asyncio.run(serve())
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


