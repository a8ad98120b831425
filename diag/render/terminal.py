"""The terminal view: a rich table per domain on a TTY, stable plain text otherwise.

Every string that came from the network goes through :func:`~diag.render.text.sanitize` and into rich as a
``Text`` object, never as markup, so a banner such as ``[bold]`` or an escape sequence prints as itself. A domain
is shown in its Unicode form with its A-label beside it (:func:`~diag.names.display_domain`); the JSON keeps the
A-label alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO, TYPE_CHECKING

from diag.model import CheckResult, DomainReport, Finding, Report, Severity, Status, Verdict
from diag.names import display_domain
from diag.render.text import sanitize

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

__all__ = ["plain_domain", "plain_status", "render_plain", "render_rich", "rich_domains"]

_SEVERITY_STYLE = {
    Severity.INFO: "green",
    Severity.NOTICE: "cyan",
    Severity.WARNING: "yellow",
    Severity.ERROR: "red",
    Severity.CRITICAL: "bold red",
}
_VERDICT_STYLE = {
    Verdict.OK: "bold green",
    Verdict.WARNING: "bold yellow",
    Verdict.CRITICAL: "bold red",
    Verdict.UNKNOWN: "bold magenta",
}
_STATUS_STYLE = {
    Status.COMPLETED: "green",
    Status.ERROR: "magenta",
    Status.TIMEOUT: "magenta",
    Status.SKIPPED: "dim",
    Status.NOT_APPLICABLE: "dim",
}


def _visible(domain: DomainReport, quiet: bool) -> list[CheckResult]:
    """What to show of a domain: everything, or with ``quiet`` only checks that could not run or found a warning+
    (a check that does not apply is no problem)."""
    return [
        r for r in domain.results
        if not quiet or r.status.could_not_run
        or any(f.severity >= Severity.WARNING for f in r.findings)
    ]  # fmt: skip


def _findings(result: CheckResult, quiet: bool) -> list[Finding]:
    return [f for f in result.findings if not quiet or f.severity >= Severity.WARNING]


def render_plain(report: Report, stream: IO[str], *, quiet: bool = False) -> None:
    """Stable plain text, one fact per line, for pipes, logs and cron mail."""
    for domain in report.domains:
        stream.write(plain_domain(domain, quiet=quiet))
    stream.write(plain_status(report.verdict, quiet=quiet))


def plain_domain(domain: DomainReport, *, quiet: bool = False) -> str:
    """One domain's part of :func:`render_plain` (a run over thousands of domains is shown a domain at a time)."""
    results = _visible(domain, quiet)
    if not results:
        return ""
    lines = [f"{sanitize(display_domain(domain.domain))}: {domain.verdict.value.upper()}"]
    for result in results:
        line = f"  {result.check_id}: {result.status.label} ({result.duration_ms} ms)"
        if result.reason:
            line += f": {sanitize(result.reason)}"
        lines.append(line)
        for finding in _findings(result, quiet):
            lines.append(
                f"    {finding.severity.label.upper()} {finding.code} {sanitize(finding.subject)}: "
                f"{sanitize(finding.message)}"
            )
            if finding.remediation:
                lines.append(f"      fix: {sanitize(finding.remediation)}")
            if finding.cloud_error:
                lines.append(f"      cloud says: {sanitize(finding.cloud_error)}")
    return "\n".join(lines) + "\n"


def plain_status(verdict: Verdict, *, quiet: bool = False) -> str:
    """The last line of :func:`render_plain`: the run's verdict and exit code (none with ``quiet`` when all is
    well)."""
    if quiet and verdict is Verdict.OK:
        return ""
    return f"status: {verdict.value.upper()} (exit {verdict.exit_code})\n"


def render_rich(report: Report, console: Console, *, quiet: bool = False) -> None:
    """A table per domain: a row per check, its findings beneath, severity coloured."""
    rich_domains(report.domains, report.verdict, console, quiet=quiet)


def rich_domains(domains: Iterable[DomainReport], verdict: Verdict, console: Console, *, quiet: bool = False) -> None:
    """:func:`render_rich` of a run read a domain at a time; ``verdict`` is the run's."""
    from rich.table import Table  # rich only on a terminal: the plain view serves pipes and cron without it
    from rich.text import Text

    for domain in domains:
        results = _visible(domain, quiet)
        if not results:
            continue
        title = Text.assemble(
            (sanitize(display_domain(domain.domain)), "bold"), "  ",
            (domain.verdict.value.upper(), _VERDICT_STYLE[domain.verdict]),
        )  # fmt: skip
        table = Table(title=title, title_justify="left", expand=False, show_lines=False)
        table.add_column("check", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("time", justify="right", no_wrap=True)
        table.add_column("findings")
        for result in results:
            status = Text(result.status.label, style=_STATUS_STYLE[result.status])
            detail = Text(sanitize(result.reason or ""), style="magenta" if result.status.could_not_run else "dim")
            table.add_row(Text(f"{result.check_id}", style="bold"), status, f"{result.duration_ms} ms", detail)
            for finding in _findings(result, quiet):
                table.add_row("", "", "", _finding_text(finding))
        console.print(table)
    if not quiet or verdict is not Verdict.OK:
        console.print(
            Text.assemble(
                "status: ", (verdict.value.upper(), _VERDICT_STYLE[verdict]),
                f" (exit {verdict.exit_code})",
            )
        )


def _finding_text(finding: Finding) -> Text:
    from rich.text import Text

    text = Text.assemble(
        (f"{finding.severity.label:<8}", _SEVERITY_STYLE[finding.severity]),
        (finding.code, "bold"), " ", (sanitize(finding.subject), "cyan"), "\n",
        sanitize(finding.message),
    )  # fmt: skip
    if finding.remediation:
        text.append(f"\n→ {sanitize(finding.remediation)}", style="dim")
    if finding.cloud_error:
        text.append(f"\ncloud says: {sanitize(finding.cloud_error)}", style="italic")
    return text
