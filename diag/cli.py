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
    from diag.context import RunOptions
    from diag.model import Report
    from diag.net.dns import Nameserver
    from diag.registry import Registry

__all__ = ["main"]

EXIT_UNKNOWN = 3


def _fail(message: str) -> NoReturn:
    click.echo(f"diag: error: {message}", err=True)
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


def _select(registry: Registry, ids: Sequence[str]) -> Registry:
    unknown = [check_id for check_id in ids if check_id not in registry]
    if unknown:
        raise UsageError(f"--check {unknown[0]!r}: no such check (known: {', '.join(registry.ids)})")
    return registry.select(ids)


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
    names = list(dict.fromkeys(mail_domain(domain) for domain in domains))
    registry = _select(default_registry(), check_ids)
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


