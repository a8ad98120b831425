"""Where a run's result goes: files (JSON, HTML, Prometheus textfile, JUnit XML) and the view on stdout.

Every file is written atomically (a temporary file in the same directory, then a rename), so a collector or a
browser never reads half of it; a device or a pipe (``/dev/stdout``, a FIFO a collector reads) is written into
instead, since replacing it with a regular file would destroy it.
"""

from __future__ import annotations

import enum
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from diag.errors import ConfigError, UsageError
from diag.frozen import frozen

if TYPE_CHECKING:
    from diag.model import Report
    from diag.results import HeldReport, RunResults

__all__ = ["Outputs", "View", "write_output"]


class View(enum.StrEnum):
    """The view on stdout (``--format``)."""

    TEXT = "text"  # a table on a terminal, plain text otherwise
    NAGIOS = "nagios"  # the Nagios/Icinga plugin line with perfdata


@frozen
class Outputs:
    """Where one result goes; refused when built if a file could not be written there.

    Attributes:
        json: ``--json``: a file, or ``-`` for stdout (then there is no view), or None.
        html: ``--html``: the self-contained HTML report, or None.
        prom: ``--prom``: Prometheus metrics in the textfile collector format, or None.
        junit: ``--junit``: JUnit XML, a test case per check per domain, or None.
        view: ``--format``: the view on stdout.
        quiet: ``-q``: the view shows only problems, nothing when all is well.
        no_color: ``--no-color``: no colour in the terminal view.
    """

    json: str | None = None
    html: Path | None = None
    prom: Path | None = None
    junit: Path | None = None
    view: View = View.TEXT
    quiet: bool = False
    no_color: bool = False

    def __post_init__(self) -> None:
        # Before the run, so that an hour-long run does not end in "cannot write it".
        for option, target in (("--json", self.json if self.json != "-" else None), ("--html", self.html),
                               ("--prom", self.prom), ("--junit", self.junit)):  # fmt: skip
            if target is not None and not Path(target).parent.is_dir():
                raise ConfigError(f"{option} {str(target)!r}: directory {str(Path(target).parent)!r} does not exist")
        if self.json == "-" and self.view is View.NAGIOS:
            raise UsageError("--json - and --format nagios both want stdout; write the JSON to a file")

    def write(self, run: RunResults | Report) -> None:
        """Write every file and the view. The JSON file and the terminal views read the run a domain at a time;
        HTML, Prometheus, JUnit and the Nagios view need the whole run at once and read it into memory."""
        from diag.results import HeldReport, RunResults

        results = run if isinstance(run, RunResults) else HeldReport(run)
        if self.json is not None:
            write_output(self.json, _json_text(results), option="--json")
        whole = (self.html is not None or self.prom is not None or self.junit is not None
                 or (self.json != "-" and self.view is View.NAGIOS))  # fmt: skip
        report = results.report() if whole else None
        if self.html is not None:
            from diag.render.html import render_html

            assert report is not None
            write_output(str(self.html), render_html(report), option="--html")
        if self.prom is not None:
            from diag.render.monitoring import prometheus

            assert report is not None
            write_output(str(self.prom), prometheus(report), option="--prom")
        if self.junit is not None:
            from diag.render.monitoring import junit

            assert report is not None
            write_output(str(self.junit), junit(report), option="--junit")
        if self.json != "-":
            self._show(results, report)

    def _show(self, results: RunResults | HeldReport, report: Report | None) -> None:
        if self.view is View.NAGIOS:
            from diag.render.monitoring import nagios

            assert report is not None
            sys.stdout.write(nagios(report))
        elif sys.stdout.isatty():
            from rich.console import Console

            from diag.render.terminal import rich_domains

            console = Console(no_color=self.no_color, highlight=False)
            rich_domains(results.domain_reports(), results.verdict, console, quiet=self.quiet)
        else:
            from diag.render.terminal import plain_status

            for text in results.plain(quiet=self.quiet):
                sys.stdout.write(text)
            sys.stdout.write(plain_status(results.verdict, quiet=self.quiet))


def _json_text(results: RunResults | HeldReport) -> Iterator[str]:
    """The run's JSON document, a domain at a time (:mod:`diag.render.json`)."""
    from diag.render.json import TAIL_TEXT, head_text

    yield head_text(results.head())
    for index, entry in enumerate(results.entries()):
        yield ",\n" + entry if index else entry
    yield TAIL_TEXT


def write_output(target: str, text: str | Iterable[str], *, option: str) -> None:
    """Write ``text`` (a string, or its pieces one after another) to stdout (``-``) or to the file ``target``
    (see the module docstring); a file that cannot be written is a :class:`ConfigError` naming ``option``."""
    chunks = (text,) if isinstance(text, str) else text
    if target == "-":
        for chunk in chunks:
            sys.stdout.write(chunk)
        return
    import tempfile

    path = Path(target)
    tmp = None
    try:
        if path.exists() and not path.is_file():
            with path.open("w", encoding="utf-8") as handle:
                handle.writelines(chunks)
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(chunks)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise ConfigError(f"{option} {target!r}: cannot write it: {exc.strerror}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
