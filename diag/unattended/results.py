"""One run's results on disk, domain by domain: what the outputs and the history read, a domain at a time.

Workers hand over each domain as it finishes (:class:`diag.workers.Checked`: its entry of the JSON document,
encoded), in any order; :class:`RunResults` appends the entry to an anonymous temporary file and remembers where
it is, so a run over thousands of domains holds none of their facts in memory, and the outputs read the domains
back in input order. The run-wide views (:class:`~diag.registry.Summary`) are decided when the run ends; in the
rare run they change (outbound port 25 blocked), the affected entries are decoded, revised and written anew
before any output reads them.
"""

from __future__ import annotations

import json
import pickle
import tempfile
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Any

from diag.history import DomainRows, compact_json, domain_rows
from diag.model import CheckResult, DomainReport, Report, Verdict
from diag.registry import Registry
from diag.render.json import domain_dict, entry_text, head_dict
from diag.runner import Summaries, revise
from diag.workers import Checked, checked

__all__ = ["HeldReport", "RunResults"]

# Worst last: the run's verdict is its worst domain's (Verdict.of over every result gives the same).
_RANK = {Verdict.OK: 0, Verdict.WARNING: 1, Verdict.UNKNOWN: 2, Verdict.CRITICAL: 3}


class RunResults:
    """The results of a run over ``count`` domains (the sink of :func:`diag.workers.check_many`); a context
    manager that removes its file."""

    def __init__(self, count: int, registry: Registry) -> None:
        self._registry = registry
        self._file: IO[bytes] = tempfile.TemporaryFile(prefix="diag-results-")
        # Where each domain's parts are: the offset of its entry, then the sizes of the entry, of the compact
        # entry and of the pickled (rows, view), one after another.
        self._places: list[tuple[int, int, int, int] | None] = [None] * count
        self._verdicts: list[Verdict | None] = [None] * count
        self._summaries = Summaries(registry)
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None

    def __enter__(self) -> RunResults:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def add(self, checked: Checked) -> None:
        """Keep one domain's results (each domain once)."""
        if self._places[checked.index] is not None:
            raise ValueError(f"domain {checked.index} ({checked.domain}) reported twice")
        self._keep(checked)
        self._summaries.add(checked.index, checked.notes)

    def _keep(self, checked: Checked) -> None:
        # Entries are ASCII (ensure_ascii); the pickle is read back only by this object.
        parts = (checked.entry.encode("ascii"), checked.compact.encode("ascii"),
                 pickle.dumps((checked.rows, checked.view), protocol=pickle.HIGHEST_PROTOCOL))  # fmt: skip
        self._file.seek(0, 2)
        offset = self._file.tell()
        self._file.write(b"".join(parts))
        self._places[checked.index] = (offset, *(len(part) for part in parts))  # type: ignore[assignment]
        self._verdicts[checked.index] = checked.verdict

    def _read(self, index: int) -> tuple[bytes, bytes, bytes]:
        place = self._places[index]
        assert place is not None
        offset, entry, compact, rest = place
        self._file.seek(offset)
        data = self._file.read(entry + compact + rest)
        return data[:entry], data[entry : entry + compact], data[entry + compact :]

    def finish(self, started_at: datetime, finished_at: datetime) -> None:
        """The run has ended: every domain has reported; apply the run-wide views."""
        missing = [index for index, place in enumerate(self._places) if place is None]
        if missing:
            raise ValueError(f"{len(missing)} domains never reported, the first at {missing[0]}")
        self.started_at, self.finished_at = started_at, finished_at
        revisers = self._summaries.revisers()
        if not revisers:
            return
        facts = self._registry.facts
        # Revised domains are appended while reading: each is read before anything is appended.
        for index in range(len(self._places)):
            document = json.loads(self._read(index)[0])
            if not any(check["id"] in revisers for check in document["checks"]):
                continue
            # Only the revised checks need their facts decoded (a reviser reads them); the others keep the JSON
            # objects they are, which encode as they were.
            report = DomainReport(document["domain"], tuple(
                CheckResult.from_json(check, facts=facts.get(check["id"]) if check["id"] in revisers else None)
                for check in document["checks"]
            ))  # fmt: skip
            self._keep(checked(index, revise(report, revisers), self._registry))

    @property
    def count(self) -> int:
        return len(self._places)

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
            yield self._read(index)[0].decode("ascii")

    def records(self) -> Iterator[tuple[DomainRows, str]]:
        """Each domain's rows and compact entry for the history, in input order."""
        for index in range(len(self._places)):
            _, compact, rest = self._read(index)
            rows, _view = pickle.loads(rest)  # noqa: S301 - written by _keep, in this process's own temporary file
            yield rows, compact.decode("ascii")

    def domain_reports(self) -> Iterator[DomainReport]:
        """Each domain's results without their facts, in input order (for views that show statuses and
        findings)."""
        for index in range(len(self._places)):
            _rows, view = pickle.loads(self._read(index)[2])  # noqa: S301 - as in records()
            yield view

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

    @property
    def exit_code(self) -> int:
        return self._report.exit_code

    def head(self) -> dict[str, Any]:
        return head_dict(self._report.started_at, self._report.finished_at, self._report.verdict)

    def entries(self) -> Iterator[str]:
        for domain in self._report.domains:
            yield entry_text(domain_dict(domain))

    def records(self) -> Iterator[tuple[DomainRows, str]]:
        for domain in self._report.domains:
            entry = domain_dict(domain)
            yield domain_rows(entry), compact_json(entry)

    def domain_reports(self) -> Iterator[DomainReport]:
        return iter(self._report.domains)

    def document(self) -> dict[str, Any]:
        return {**self.head(), "domains": [domain_dict(domain) for domain in self._report.domains]}

    def report(self) -> Report:
        return self._report
