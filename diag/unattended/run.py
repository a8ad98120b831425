"""One ``diag check`` run from start to end: the request the command line makes, and :func:`execute`.

:func:`execute` takes the job's lock, runs the engine (in a throw-away lab with ``lab``), writes the outputs,
keeps the run in the history and notifies, in that order, and returns the exit code (CONTRACT.md). The lock is
held throughout: a second copy of the job is refused until the first has notified. The results go to disk as
each domain finishes (:class:`~diag.results.RunResults`) and the outputs and the history read them
from there, so a run over thousands of domains never holds all their facts.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING

from diag.frozen import frozen
from diag.unattended.job import Job
from diag.unattended.notification import Notification
from diag.unattended.outputs import Outputs

if TYPE_CHECKING:
    from diag.context import RunOptions
    from diag.history import Change
    from diag.lock import RunLock
    from diag.registry import Registry
    from diag.results import RunResults

__all__ = ["CheckRequest", "execute", "job_lock"]


@frozen
class CheckRequest:
    """One ``diag check`` run as asked for, checked and typed.

    Attributes:
        domains: the domains to check (A-labels), each once, in the order given.
        registry: the checks to run: the ``--check`` selection with what it requires.
        options: the engine's options for the run.
        outputs: where the result goes.
        notification: who hears about the run, and when; None for nobody.
        checks: the ``--check`` selection as given (empty for every check): part of the job's identity.
        config: ``--config``: the organization's configuration file, or None; part of the job's identity.
        lab: run against a throw-away lab on loopback, whose resolver, port and CAs replace the options' own.
        lock: ``--lock``: the lock file; None for the job's own lock file, taken only when stdout is not a
            terminal (nobody watches: cron, systemd), see :class:`~diag.unattended.job.Job`.
        history: ``--history``: the history file; None for the default under the user's data directory.
        keep_history: False (``--no-history``) to keep the run out of the history.
        workers: ``--workers``: processes checking domains side by side (:mod:`diag.workers`); None for one per
            usable core on a large run and one on a small one. Not part of the job's identity: the results are the
            same.
    """

    domains: tuple[str, ...]
    registry: Registry
    options: RunOptions
    outputs: Outputs = field(default_factory=Outputs)
    notification: Notification | None = None
    checks: tuple[str, ...] = ()
    config: Path | None = None
    lab: bool = False
    lock: Path | None = None
    history: Path | None = None
    keep_history: bool = True
    workers: int | None = None

    @property
    def job(self) -> Job:
        """The job this run is: what it checks and the files it writes."""
        written: Mapping[str, str | Path | None] = {
            "--json": self.outputs.json, "--html": self.outputs.html, "--prom": self.outputs.prom,
            "--junit": self.outputs.junit, "--history": self.history if self.keep_history else None,
        }  # fmt: skip
        return Job.of("check", self.domains, checks=self.checks, config=self.config, lab=self.lab, outputs=written)


def execute(request: CheckRequest) -> int:
    """Run ``request`` (see the module docstring) and return its exit code.

    Raises :class:`~diag.errors.DiagError` in one line: a :class:`~diag.errors.UsageError` when another copy of
    the job holds the lock, a :class:`~diag.errors.ConfigError` when an output or the history cannot be
    written. A notification that fails is one line on stderr and leaves the exit code as it is.
    """
    from diag.results import RunResults

    with _lock(request), RunResults(len(request.domains), request.registry) as results:
        asyncio.run(_engine(request, results))
        request.outputs.write(results)
        changes = _remember(request, results)
        notification = request.notification
        if notification is not None and notification.wanted:
            notification.send(request.options, results, changes)
        return results.exit_code


def _lock(request: CheckRequest) -> RunLock | AbstractContextManager[None]:
    return job_lock(request.lock, request.job)


def job_lock(path: Path | None, job: Job) -> RunLock | AbstractContextManager[None]:
    """The lock of a run of ``job``: ``path`` (``--lock``), else the job's own lock file when nobody watches
    (stdout is not a terminal: cron, systemd), else none. ``diag probe`` takes its lock here too."""
    from diag.lock import RunLock, default_lock_path

    if path is not None:
        return RunLock(path)
    if sys.stdout.isatty():
        return nullcontext()
    return RunLock(default_lock_path(job.key), job=job.describe())


def _remember(request: CheckRequest, results: RunResults) -> list[Change]:
    """Keep the run in the history and return what changed since each domain's previous run."""
    if not request.keep_history:
        return []
    from diag.history import History, default_history_path

    with History(request.history or default_history_path()) as history:
        return list(history.run_changes(history.record_parts(results.head(), results.records())))


async def _engine(request: CheckRequest, results: RunResults) -> None:
    if not request.lab:
        await _checks(request, request.options, results)
        return
    import dataclasses

    from diag.lab.runner import Lab

    async with Lab() as running:
        lab_options = running.run_options()
        probe = request.options.probe  # the lab's probes watch its Maildirs, and keep its own record of sends
        options = dataclasses.replace(
            request.options, nameservers=lab_options.nameservers, smtp_port=lab_options.smtp_port,
            ca_file=lab_options.ca_file, ehlo_name=lab_options.ehlo_name, allow_private=True,
            trust_anchors=lab_options.trust_anchors, https_port=lab_options.https_port,
            probe=probe and dataclasses.replace(probe, maildir_root=running.maildir, sends=running.sent_record()),
        )  # fmt: skip
        await _checks(request, options, results)


async def _checks(request: CheckRequest, options: RunOptions, results: RunResults) -> None:
    """Run the checks into ``results``; with a progress bar on stderr for someone watching, when there is more
    than one domain to count."""
    from datetime import UTC, datetime

    from diag.workers import check_many, default_workers

    domains = request.domains
    workers = request.workers if request.workers is not None else default_workers(len(domains))
    started_at = datetime.now(UTC)
    if not (sys.stderr.isatty() and len(domains) > 1):
        await check_many(domains, request.registry, options, results, workers=workers)
        results.finish(started_at, datetime.now(UTC))
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("checking"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:  # fmt: skip
        task = bar.add_task("domains", total=len(domains))
        await check_many(domains, request.registry, options, results, workers=workers,
                         on_domain=lambda: bar.advance(task))  # fmt: skip
    results.finish(started_at, datetime.now(UTC))
