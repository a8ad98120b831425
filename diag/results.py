"""A run's results on disk, domain by domain: what the outputs and the history read, a domain at a time.

As each domain finishes, wherever it was checked (in this process or in a worker process, :mod:`diag.workers`),
its results are made ready to write (:func:`checked`: its entry of the JSON document, indented and compact, the
rows the history indexes, its part of the plain-text view) and appended to a file of
that process (:class:`ResultFile`); :class:`RunResults` remembers where each domain is. A run over thousands
of domains so holds none of their facts in memory, the parent process of the workers only copies what they
made, and the outputs read the domains back in input order. The run-wide views
(:class:`~diag.registry.Summary`) are decided when the run ends; in the rare run they change something
(outbound port 25 blocked), the affected domains are decoded, revised and written anew before any output reads
them.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Hashable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from diag.frozen import frozen
from diag.history import DomainRows, compact_json, domain_rows
from diag.model import CheckResult, DomainReport, Report, Status, Verdict
from diag.registry import Registry
from diag.render.json import EntryWriter, domain_dict, entry_text, head_dict
from diag.runner import Summaries, revise, take_notes

__all__ = ["Checked", "HeldReport", "Place", "ResultFile", "RunResults", "Stored", "checked", "unchecked"]

# Worst last: the run's verdict is its worst domain's (Verdict.of over every result gives the same).
_RANK = {Verdict.OK: 0, Verdict.WARNING: 1, Verdict.UNKNOWN: 2, Verdict.CRITICAL: 3}


@frozen
class Checked:
    """One domain's results, ready to write: each output's part made where the domain was checked.

    Attributes:
        index: the domain's place in the run's input.
        domain: the domain (A-label).
        entry: its entry of the JSON document as text, as it stands there (:func:`diag.render.json.entry_text`).
        compact: the same entry as the history stores it (:func:`diag.history.compact_json`).
        rows: what the history indexes of it (:func:`diag.history.domain_rows`).
        plain: its part of the plain-text view, and of the quiet one (:func:`diag.render.terminal.plain_domain`).
        verdict: the domain's verdict.
        notes: what the checks with a run-wide view noted (:func:`diag.runner.take_notes`).
    """

    index: int
    domain: str
    entry: str
    compact: str
    rows: DomainRows
    plain: tuple[str, str]
    verdict: Verdict
    notes: tuple[tuple[str, Hashable], ...]


def checked(index: int, report: DomainReport, registry: Registry, *, writer: EntryWriter | None = None) -> Checked:
    """``report``, the domain at ``index``, ready to write; ``writer`` is the run's (in a run over many domains,
    it encodes facts shared between domains once)."""
    from diag.render.terminal import plain_domain  # with rich: imported only where domains are checked

    writer = writer or EntryWriter()
    entry = writer.domain_dict(report)
    plain = (plain_domain(report), plain_domain(report, quiet=True))
    return Checked(index, report.domain, writer.entry_text(entry), compact_json(entry), domain_rows(entry), plain,
                   report.verdict, take_notes(report, registry))  # fmt: skip


def unchecked(index: int, domain: str, registry: Registry, reason: str) -> Checked:
    """A domain whose checks never reported (its worker died): every check ``error`` with ``reason``."""
    results = tuple(CheckResult(check.id, check.title, Status.ERROR, reason=reason) for check in registry)
    return checked(index, DomainReport(domain, results), registry)


@frozen
class Place:
    """Where a domain is in a :class:`ResultFile`: the offset of its first part and the size of each part (its
    entry, its compact entry, its rows, its plain view and its quiet plain view), which follow one another."""

    offset: int
    sizes: tuple[int, int, int, int, int]


@frozen
class Stored:
    """A domain kept in a worker's :class:`ResultFile`, as the worker reports it to its parent.

    Attributes:
        index: the domain's place in the run's input.
        place: where it is in the worker's file.
        verdict: the domain's verdict.
        notes: what the checks with a run-wide view noted.
    """

    index: int
    place: Place
    verdict: Verdict
    notes: tuple[tuple[str, Hashable], ...]


class ResultFile:
    """Domains' results appended to one file (``path``, or an anonymous temporary file), as UTF-8 text; read
    back by place. Only diag writes and reads it, during one run."""

    def __init__(self, path: Path | None = None) -> None:
        self._file: IO[bytes] = path.open("w+b") if path is not None else tempfile.TemporaryFile()

    def keep(self, checked: Checked) -> Place:
        parts = [text.encode() for text in (checked.entry, checked.compact, checked.rows.to_json(), *checked.plain)]
        self._file.seek(0, 2)
        offset = self._file.tell()
        self._file.write(b"".join(parts))
        sizes = tuple(len(part) for part in parts)
        return Place(offset, sizes)  # type: ignore[arg-type]

    def part(self, place: Place, which: int) -> str:
        """Part number ``which`` of the domain at ``place`` (in the order of :class:`Place`)."""
        self._file.seek(place.offset + sum(place.sizes[:which]))
        return self._file.read(place.sizes[which]).decode()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


_ENTRY, _COMPACT, _ROWS, _PLAIN, _QUIET = range(5)


class RunResults:
    """The results of a run over ``count`` domains, as :func:`diag.workers.check_many` hands them over; a
    context manager that removes its files."""

    def __init__(self, count: int, registry: Registry) -> None:
        self._registry = registry
        self._directory = tempfile.TemporaryDirectory(prefix="diag-results-")  # private: mode 0700
        self._files = [ResultFile()]  # this process's own, then one per worker process
        self._places: list[tuple[int, Place] | None] = [None] * count
        self._verdicts: list[Verdict | None] = [None] * count
        self._summaries = Summaries(registry)
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None

    def __enter__(self) -> RunResults:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for file in self._files:
            file.close()
        self._directory.cleanup()

    def add(self, checked: Checked) -> None:
        """Keep one domain's results, checked in this process (each domain once)."""
        self.add_stored(0, Stored(checked.index, self._files[0].keep(checked), checked.verdict, checked.notes))

    def worker_file(self) -> tuple[int, Path]:
        """A new file for a worker process to keep its domains in: its number (for :meth:`add_stored`) and path.
        Created empty here; the worker opens it for writing."""
        path = Path(self._directory.name) / f"worker-{len(self._files)}"
        self._files.append(ResultFile(path))
        return len(self._files) - 1, path

    def add_stored(self, file: int, stored: Stored) -> None:
        """Take over one domain a worker kept in file number ``file`` (each domain once)."""
        if self._places[stored.index] is not None:
            raise ValueError(f"domain {stored.index} reported twice")
        self._places[stored.index] = (file, stored.place)
        self._verdicts[stored.index] = stored.verdict
        self._summaries.add(stored.index, stored.notes)

    def _file_of(self, index: int) -> tuple[ResultFile, Place]:
        place = self._places[index]
        assert place is not None
        return self._files[place[0]], place[1]

    def finish(self, started_at: datetime, finished_at: datetime) -> None:
        """The run has ended (every worker has written its file and exited): apply the run-wide views."""
        missing = [index for index, place in enumerate(self._places) if place is None]
        if missing:
            raise ValueError(f"{len(missing)} domains never reported, the first at {missing[0]}")
        self.started_at, self.finished_at = started_at, finished_at
        revisers = self._summaries.revisers()
        if not revisers:
            return
        facts = self._registry.facts
        for index in range(len(self._places)):
            file, place = self._file_of(index)
            document = json.loads(file.part(place, _ENTRY))
            if not any(check["id"] in revisers for check in document["checks"]):
                continue
            # Only the revised checks need their facts decoded (a reviser reads them); the others keep the JSON
            # objects they are, which encode as they were.
            report = DomainReport(document["domain"], tuple(
                CheckResult.from_json(check, facts=facts.get(check["id"]) if check["id"] in revisers else None)
                for check in document["checks"]
            ))  # fmt: skip
            revised = checked(index, revise(report, revisers), self._registry)
            self._places[index] = (0, self._files[0].keep(revised))
            self._verdicts[index] = revised.verdict

    @property
    def verdict(self) -> Verdict:
        return max((v for v in self._verdicts if v is not None), key=_RANK.__getitem__, default=Verdict.OK)

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code

    def head(self) -> dict[str, Any]:
        """The run's document without its domains (:func:`diag.render.json.head_dict`)."""
        if self.started_at is None or self.finished_at is None:
            raise RuntimeError("the run has not finished")
        return head_dict(self.started_at, self.finished_at, self.verdict)

    def entries(self) -> Iterator[str]:
        """Each domain's entry of the document, as text, in input order."""
        for index in range(len(self._places)):
            file, place = self._file_of(index)
            yield file.part(place, _ENTRY)

    def records(self) -> Iterator[tuple[DomainRows, str]]:
        """Each domain's rows and compact entry for the history, in input order."""
        for index in range(len(self._places)):
            file, place = self._file_of(index)
            yield DomainRows.from_json(file.part(place, _ROWS)), file.part(place, _COMPACT)

    def plain(self, *, quiet: bool = False) -> Iterator[str]:
        """Each domain's part of the plain-text view, in input order."""
        for index in range(len(self._places)):
            file, place = self._file_of(index)
            yield file.part(place, _QUIET if quiet else _PLAIN)

    def domain_reports(self) -> Iterator[DomainReport]:
        """Each domain's results, in input order, with their facts as the JSON objects they are (for views that
        show statuses and findings)."""
        for entry in self.entries():
            domain = json.loads(entry)
            yield DomainReport(domain["domain"], tuple(CheckResult.from_json(check) for check in domain["checks"]))

    def document(self) -> dict[str, Any]:
        """The whole ``diag.report/1`` document, in memory (for outputs that need all of it at once)."""
        return {**self.head(), "domains": [json.loads(entry) for entry in self.entries()]}

    def report(self) -> Report:
        """The whole report, in memory, facts decoded (for outputs that need all of it at once)."""
        return Report.from_json(self.document(), facts=self._registry.facts)


class HeldReport:
    """A whole report already in memory (``diag report`` re-renders a saved one), read the way
    :class:`RunResults` is read."""

    def __init__(self, report: Report) -> None:
        self._report = report

    @property
    def verdict(self) -> Verdict:
        return self._report.verdict

    def head(self) -> dict[str, Any]:
        return head_dict(self._report.started_at, self._report.finished_at, self._report.verdict)

    def entries(self) -> Iterator[str]:
        for domain in self._report.domains:
            yield entry_text(domain_dict(domain))

    def plain(self, *, quiet: bool = False) -> Iterator[str]:
        from diag.render.terminal import plain_domain

        for domain in self._report.domains:
            yield plain_domain(domain, quiet=quiet)

    def domain_reports(self) -> Iterator[DomainReport]:
        return iter(self._report.domains)

    def document(self) -> dict[str, Any]:
        return {**self.head(), "domains": [domain_dict(domain) for domain in self._report.domains]}

    def report(self) -> Report:
        return self._report
