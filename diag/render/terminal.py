"""The terminal view: a rich table per domain on a TTY, stable plain text otherwise.

Every string that came from the network goes through :func:`~diag.render.text.sanitize` and into rich as a
``Text`` object, never as markup, so a banner such as ``[bold]`` or an escape sequence prints as itself. A domain
is shown in its Unicode form with its A-label beside it (:func:`~diag.names.display_domain`); the JSON keeps the
A-label alone.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING

from diag.model import CheckResult, DomainReport, Finding, Report, Severity, Status, Verdict
from diag.names import display_domain
from diag.render.text import sanitize

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

__all__ = ["render_plain", "render_rich"]

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


def _visible(report: Report, quiet: bool) -> list[tuple[DomainReport, list[CheckResult]]]:
    """What to show: everything, or with ``quiet`` only checks that could not run or found a warning+ (a check
    that does not apply is no problem)."""
    shown = []
    for domain in report.domains:
        results = [
            r for r in domain.results
            if not quiet or r.status.could_not_run
            or any(f.severity >= Severity.WARNING for f in r.findings)
        ]  # fmt: skip
        if results:
            shown.append((domain, results))
    return shown


def _findings(result: CheckResult, quiet: bool) -> list[Finding]:
    return [f for f in result.findings if not quiet or f.severity >= Severity.WARNING]


def render_plain(report: Report, stream: IO[str], *, quiet: bool = False) -> None:
    """Stable plain text, one fact per line, for pipes, logs and cron mail."""
    for domain, results in _visible(report, quiet):
        stream.write(f"{sanitize(display_domain(domain.domain))}: {domain.verdict.value.upper()}\n")
        for result in results:
            line = f"  {result.check_id}: {result.status.label} ({result.duration_ms} ms)"
            if result.reason:
                line += f": {sanitize(result.reason)}"
            stream.write(line + "\n")
            for finding in _findings(result, quiet):
                stream.write(
                    f"    {finding.severity.label.upper()} {finding.code} {sanitize(finding.subject)}: "
                    f"{sanitize(finding.message)}\n"
                )
                if finding.remediation:
                    stream.write(f"      fix: {sanitize(finding.remediation)}\n")
                if finding.cloud_error:
                    stream.write(f"      cloud says: {sanitize(finding.cloud_error)}\n")
    if not quiet or report.verdict is not Verdict.OK:
        stream.write(f"status: {report.verdict.value.upper()} (exit {report.exit_code})\n")


def render_rich(report: Report, console: Console, *, quiet: bool = False) -> None:
    """A table per domain: a row per check, its findings beneath, severity coloured."""
    from rich.table import Table  # rich only on a terminal: render_plain serves pipes and cron without it
    from rich.text import Text

    for domain, results in _visible(report, quiet):
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
    if not quiet or report.verdict is not Verdict.OK:
        console.print(
            Text.assemble(
                "status: ", (report.verdict.value.upper(), _VERDICT_STYLE[report.verdict]),
                f" (exit {report.exit_code})",
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
