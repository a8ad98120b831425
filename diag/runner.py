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
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from diag.context import CheckContext, RunContext, RunOptions
from diag.errors import ProbeError, RegistryError
from diag.model import CheckResult, DomainReport, Report, Status
from diag.registry import Check, Outcome, Registry

__all__ = ["run_checks"]

log = logging.getLogger(__name__)


async def run_checks(
    domains: Sequence[str],
    registry: Registry,
    options: RunOptions,
    *,
    on_domain: Callable[[DomainReport], None] | None = None,
) -> Report:
    """Run every check of ``registry`` on every domain; never raises for what a check does.

    ``on_domain`` is called as each domain's checks finish (a progress bar's hook).
    """
    started_at = datetime.now(UTC)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.deadline
    run = RunContext(options)

    async def one(domain: str) -> DomainReport:
        report = await _run_domain(domain, registry, run, deadline)
        if on_domain is not None:
            on_domain(report)
        return report

    try:
        reports = await asyncio.gather(*(one(domain) for domain in domains))
    finally:
        await run.aclose()
    return Report(started_at=started_at, finished_at=datetime.now(UTC), domains=_summarize(reports, registry))


def _summarize(reports: Sequence[DomainReport], registry: Registry) -> tuple[DomainReport, ...]:
    """Let checks with a run-wide view replace their per-domain results.

    A summary hook that raises, or returns a different number of results, is a bug in that check: its results
    become ``error`` with the reason, like any other exception inside a check (STYLE.md rule 3).
    """
    rows = [list(report.results) for report in reports]
    for index, check in enumerate(registry):
        if check.summarize is None or not rows:
            continue
        column = [row[index] for row in rows]
        try:
            replaced = list(check.summarize(column))
            if len(replaced) != len(column):
                raise RegistryError(f"returned {len(replaced)} results for {len(column)} domains")
        except Exception as exc:
            log.debug("summarizing %s failed", check.id, exc_info=True)
            reason = f"internal: summarizing the run failed: {type(exc).__name__}: {exc}"
            replaced = [replace(result, status=Status.ERROR, reason=reason, findings=()) for result in column]
        for row, result in zip(rows, replaced, strict=True):
            row[index] = result
    return tuple(DomainReport(report.domain, tuple(row)) for report, row in zip(reports, rows, strict=True))


async def _run_domain(domain: str, registry: Registry, run: RunContext, deadline: float) -> DomainReport:
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
