"""Async execution of the registry: dependency order, concurrency, time limits, errors turned into results.

Every check of every domain becomes a task that waits for the checks it requires and then runs, so
independent work (all domains, all checks without a path between them) overlaps. A check is bounded by its own
budget and by the run's deadline. Whatever happens inside, the runner returns a result for every selected
check of every domain: ``completed``, ``error`` (with a reason), ``timeout``, ``skipped`` when a requirement
could not run, or ``not_applicable`` when a requirement does not apply (a check that reads nothing but the
sessions of a domain without mail hosts has nothing to examine either). This module is the one place where
exceptions become results (STYLE.md rule 3).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from diag.context import CheckContext, RunContext, RunOptions
from diag.errors import ProbeError, RegistryError
from diag.frozen import frozen
from diag.model import CheckResult, DomainReport, Report, Status
from diag.registry import Check, Outcome, Registry

__all__ = ["NoteFailed", "Summaries", "check_domain", "revise", "run_checks", "take_notes"]

log = logging.getLogger(__name__)


async def run_checks(
    domains: Sequence[str],
    registry: Registry,
    options: RunOptions,
    *,
    on_domain: Callable[[DomainReport], None] | None = None,
) -> Report:
    """Run every check of ``registry`` on every domain; never raises for what a check does.

    ``on_domain`` is called as each domain's checks finish (a progress bar's hook). The whole report is held in
    memory; :mod:`diag.workers` runs thousands of domains without holding them.
    """
    started_at = datetime.now(UTC)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.deadline
    run = RunContext.of(options, registry)

    async def one(domain: str) -> DomainReport:
        report = await check_domain(domain, registry, run, deadline)
        if on_domain is not None:
            on_domain(report)
        return report

    try:
        reports = await asyncio.gather(*(one(domain) for domain in domains))
    finally:
        await run.aclose()
    return Report(started_at=started_at, finished_at=datetime.now(UTC), domains=_summarize(reports, registry))


def _summarize(reports: Sequence[DomainReport], registry: Registry) -> tuple[DomainReport, ...]:
    """Let checks with a run-wide view (:class:`~diag.registry.Summary`) revise their per-domain results."""
    summaries = Summaries(registry)
    for index, report in enumerate(reports):
        summaries.add(index, take_notes(report, registry))
    revisers = summaries.revisers()
    if not revisers:
        return tuple(reports)
    return tuple(revise(report, revisers) for report in reports)


@frozen
class NoteFailed:
    """A summary's note that could not be taken: the check's ``note`` raised (a bug in that check)."""

    reason: str


def take_notes(report: DomainReport, registry: Registry) -> tuple[tuple[str, Hashable], ...]:
    """What each check with a run-wide view notes from this domain's result: (check id, note or NoteFailed)."""
    notes: list[tuple[str, Hashable]] = []
    for result in report.results:
        summary = registry[result.check_id].summary if result.check_id in registry else None
        if summary is None:
            continue
        try:
            notes.append((result.check_id, summary.note(result)))
        except Exception as exc:
            log.debug("noting %s on %s failed", result.check_id, report.domain, exc_info=True)
            notes.append((result.check_id, NoteFailed(_failure(exc))))
    return tuple(notes)


class Summaries:
    """The run-wide views of one run (:class:`~diag.registry.Summary`), gathered domain by domain: each domain's
    notes are added as it finishes (in any order, with its index in the run), the revisions are decided at
    the end. Only distinct notes are kept, so a run of any size holds little.

    A summary that raises, in ``note`` or ``revise``, is a bug in that check: its results on every domain become
    ``error`` with the reason, like any other exception inside a check (STYLE.md rule 3); a reviser that raises
    makes that one result an error.
    """

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._notes: dict[str, dict[Hashable, int]] = {}
        self._failed: dict[str, tuple[int, str]] = {}

    def add(self, index: int, notes: Sequence[tuple[str, Hashable]]) -> None:
        """The notes of the domain at ``index`` (its place in the run)."""
        for check_id, note in notes:
            if isinstance(note, NoteFailed):
                if check_id not in self._failed or index < self._failed[check_id][0]:
                    self._failed[check_id] = (index, note.reason)
                continue
            seen = self._notes.setdefault(check_id, {})
            if index < seen.get(note, index + 1):
                seen[note] = index

    def revisers(self) -> dict[str, Callable[[CheckResult], CheckResult]]:
        """How to revise each result, by check id, for the checks whose results the run changes."""
        revisers: dict[str, Callable[[CheckResult], CheckResult]] = {}
        for check in self._registry:
            if check.summary is None:
                continue
            if check.id in self._failed:
                revisers[check.id] = _failing(self._failed[check.id][1])
                continue
            seen = self._notes.get(check.id, {})
            try:
                reviser = check.summary.revise(sorted(seen, key=seen.__getitem__))
            except Exception as exc:
                log.debug("summarizing %s failed", check.id, exc_info=True)
                revisers[check.id] = _failing(_failure(exc))
                continue
            if reviser is not None:
                revisers[check.id] = _guarded(reviser)
        return revisers


def revise(report: DomainReport, revisers: Mapping[str, Callable[[CheckResult], CheckResult]]) -> DomainReport:
    """``report`` with its results revised by the run-wide views (:meth:`Summaries.revisers`)."""
    results = tuple(revisers[r.check_id](r) if r.check_id in revisers else r for r in report.results)
    return DomainReport(report.domain, results)


def _failure(exc: Exception) -> str:
    return f"internal: summarizing the run failed: {type(exc).__name__}: {exc}"


def _failing(reason: str) -> Callable[[CheckResult], CheckResult]:
    def failed(result: CheckResult) -> CheckResult:
        return replace(result, status=Status.ERROR, reason=reason, findings=())

    return failed


def _guarded(reviser: Callable[[CheckResult], CheckResult]) -> Callable[[CheckResult], CheckResult]:
    def revised(result: CheckResult) -> CheckResult:
        try:
            return reviser(result)
        except Exception as exc:
            log.debug("revising %s failed", result.check_id, exc_info=True)
            return _failing(_failure(exc))(result)

    return revised


async def check_domain(domain: str, registry: Registry, run: RunContext, deadline: float) -> DomainReport:
    """Every check of ``registry`` on one domain, within the run's ``deadline`` (event-loop time); never raises
    for what a check does."""
    tasks: dict[str, asyncio.Task[CheckResult]] = {}
    for check in registry.execution_order():  # requirements first, so their tasks exist
        requirements = [tasks[dep] for dep in check.requires]
        tasks[check.id] = asyncio.create_task(
            _run_check(check, domain, requirements, run, deadline), name=f"{domain}:{check.id}"
        )
    results = await asyncio.gather(*(tasks[check_id] for check_id in registry.ids))
    return DomainReport(domain=domain, results=tuple(results))


async def _run_check(
    check: Check,
    domain: str,
    requirements: list[asyncio.Task[CheckResult]],
    run: RunContext,
    deadline: float,
) -> CheckResult:
    done = await asyncio.gather(*requirements)
    loop = asyncio.get_running_loop()
    started = loop.time()
    # Could not run outweighs does not apply: a requirement that failed may hide what would have applied.
    unmet = [result for result in done if result.status.could_not_run]
    if unmet:
        first = unmet[0]
        return CheckResult(
            check.id, check.title, Status.SKIPPED,
            reason=f"requires {first.check_id}, which ended {first.status.value}",
            started=started, finished=started,
        )  # fmt: skip
    moot = [result for result in done if result.status is Status.NOT_APPLICABLE]
    if moot:
        first = moot[0]
        return CheckResult(
            check.id, check.title, Status.NOT_APPLICABLE,
            reason=f"requires {first.check_id}, which is not applicable: {first.reason}",
            started=started, finished=started,
        )  # fmt: skip
    if started >= deadline:
        return CheckResult(
            check.id, check.title, Status.TIMEOUT, reason="run deadline reached before the check could start",
            started=started, finished=started,
        )  # fmt: skip
    budget = check.budget(run.options.timeout, run.options)
    ends_by_deadline = started + budget > deadline
    context = CheckContext(domain, run, {result.check_id: result.facts for result in done})
    try:
        async with asyncio.timeout_at(min(started + budget, deadline)):
            outcome = await check.run(context)
        if not isinstance(outcome, Outcome):
            raise RegistryError(f"check {check.id!r} returned {type(outcome).__name__}, not Outcome")
        if outcome.skipped is not None:
            return CheckResult(
                check.id, check.title, Status.SKIPPED, reason=outcome.skipped, started=started, finished=loop.time()
            )
        if outcome.not_applicable is not None:
            return CheckResult(
                check.id, check.title, Status.NOT_APPLICABLE, reason=outcome.not_applicable, started=started,
                finished=loop.time(),
            )  # fmt: skip
        for finding in outcome.findings:
            if check.codes.get(finding.code) is not finding.severity:
                raise RegistryError(f"check {check.id!r} emitted undeclared finding {finding.code!r}")
        if outcome.incomplete is not None:
            return CheckResult(
                check.id, check.title, Status.ERROR, reason=outcome.incomplete, facts=outcome.facts,
                findings=outcome.findings, started=started, finished=loop.time(),
            )  # fmt: skip
    except ProbeError as exc:
        # Before TimeoutError: a DNS timeout is a probe failure with its own reason (DnsTimeoutError).
        return CheckResult(
            check.id, check.title, Status.ERROR, reason=f"{exc.reason}: {exc}",
            started=started, finished=loop.time(),
        )  # fmt: skip
    except TimeoutError:
        reason = "run deadline reached" if ends_by_deadline else f"check exceeded its {budget:g} s budget"
        return CheckResult(
            check.id, check.title, Status.TIMEOUT, reason=reason, started=started, finished=loop.time()
        )
    except Exception as exc:
        # A bug in a check must not take the run down; it is reported as an error with its cause.
        log.debug("check %s on %s crashed", check.id, domain, exc_info=True)
        return CheckResult(
            check.id, check.title, Status.ERROR, reason=f"internal: {type(exc).__name__}: {exc}",
            started=started, finished=loop.time(),
        )  # fmt: skip
    return CheckResult(
        check.id, check.title, Status.COMPLETED, facts=outcome.facts, findings=outcome.findings,
        started=started, finished=loop.time(),
    )  # fmt: skip
