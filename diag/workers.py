"""Thousands of domains in one run (ARCHITECTURE §9): a bounded window of domains in flight, a worker process
per core, each domain's results handed over as it finishes.

:func:`check_many` runs every check on every domain and hands each domain's results to a sink as a
:class:`Checked`: the domain's entry of the JSON document, already encoded, its verdict and its notes for the
run-wide views (:class:`~diag.registry.Summary`). Domains finish in any order; each carries its place in the
input, and the sink puts them back in order (:class:`diag.unattended.results.RunResults`). A run so holds only
the domains in flight, never every fact of every domain. At most :data:`WINDOW` domains are in flight per
event loop, started in input order: enough to overlap thousands of slow answers, few enough that DNS questions
do not queue behind each other until checks run out of time.

With one worker the checks run in this process's event loop. With more, each worker is a process of its own
(a fresh interpreter running :func:`main`: nothing of the parent's event loop, threads or sockets is inherited)
with its own event loop, resolver and answer cache, fed a window of domains by the parent and one more each time
it returns one, so a worker that meets slow hosts simply gets fewer. Encoding the results (most of the CPU after
DNS) happens in the workers.

Politeness across workers: the parent holds the run's SMTP sessions and connection limits, and the workers ask
it for every session (:class:`~diag.context.RunContext` with a session source). So an address gets one session
per port per run and never more than ``per_host_connections`` connections at once, however many workers
there are, and every domain whose MX is at that address reads the same session, exactly as in a run in one
process. (Dividing the per-address budget among workers would break the limit with more workers than the budget
and probe every address once per worker; partitioning the domains by MX address would need every MX resolved
before the first check starts.) The price is that the parent makes every TLS handshake; with many domains per
mail host, as in practice, sessions are few and the parent stays mostly idle.

The workers and the parent speak over the worker's stdin and stdout in frames (a 4-byte length, then a pickle):
only between this process and the children it started, never over a network.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import pickle
import sys
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from diag.context import RunContext, RunOptions
from diag.history import DomainRows, compact_json, domain_rows
from diag.model import CheckResult, DomainReport, Status, Verdict
from diag.net.smtp import SessionFacts
from diag.registry import Registry
from diag.render.json import domain_dict, entry_text
from diag.runner import check_domain, take_notes

__all__ = ["WINDOW", "Checked", "check_many", "default_workers"]

log = logging.getLogger(__name__)

WINDOW = 500
"""Domains in flight at once in one event loop."""
# Domains a worker process is worth starting for: one process checks a few hundred domains a second, and a
# worker costs a fraction of a second to start (a fresh interpreter importing the checks).
_DOMAINS_PER_WORKER = 500
_FRAME_HEADER = 4


@dataclass(frozen=True, slots=True)
class Checked:
    """One domain's results, ready to write: each output's part made where the domain was checked (in a worker
    process, side by side with the others), so that writing them costs the parent little.

    Attributes:
        index: the domain's place in the run's input.
        domain: the domain (A-label).
        entry: its entry of the JSON document as text, as it stands there (:func:`diag.render.json.entry_text`).
        compact: the same entry as the history stores it (:func:`diag.history.compact_json`).
        rows: what the history indexes of it (:func:`diag.history.domain_rows`).
        view: its results without their facts, for the terminal views.
        verdict: the domain's verdict.
        notes: what the checks with a run-wide view noted (:func:`diag.runner.take_notes`).
    """

    index: int
    domain: str
    entry: str
    compact: str
    rows: DomainRows
    view: DomainReport
    verdict: Verdict
    notes: tuple[tuple[str, Hashable], ...]


def checked(index: int, report: DomainReport, registry: Registry) -> Checked:
    """``report``, the domain at ``index``, ready to write."""
    entry = domain_dict(report)
    view = DomainReport(report.domain, tuple(replace(result, facts=None) for result in report.results))
    return Checked(index, report.domain, entry_text(entry), compact_json(entry), domain_rows(entry), view,
                   report.verdict, take_notes(report, registry))  # fmt: skip


def unchecked(index: int, domain: str, registry: Registry, reason: str) -> Checked:
    """A domain whose checks never reported (its worker died): every check ``error`` with ``reason``."""
    results = tuple(CheckResult(check.id, check.title, Status.ERROR, reason=reason) for check in registry)
    return checked(index, DomainReport(domain, results), registry)


def default_workers(domains: int) -> int:
    """Worker processes for a run over ``domains`` domains: one per usable core, and one for small runs."""
    return max(1, min(len(os.sched_getaffinity(0)), math.ceil(domains / _DOMAINS_PER_WORKER)))


async def check_many(
    domains: Sequence[str],
    registry: Registry,
    options: RunOptions,
    sink: Callable[[Checked], None],
    *,
    workers: int = 1,
) -> None:
    """Run every check of ``registry`` on every domain and give each domain's results to ``sink`` as it
    finishes; in this process with one worker, in ``workers`` processes otherwise (module docstring). Never
    raises for what a check does; an exception from ``sink`` ends the run."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.deadline
    run = RunContext(options)
    try:
        if workers <= 1 or len(domains) <= 1:
            await _in_process(list(enumerate(domains)), registry, run, deadline, sink)
        else:
            pending = iter(enumerate(domains))
            pool = [_Worker(registry, options, run, sink) for _ in range(min(workers, len(domains)))]
            try:
                await asyncio.gather(*(worker.drive(pending, deadline) for worker in pool))
            finally:
                for worker in pool:
                    worker.stop()
            for index, domain in pending:  # left when every worker died
                sink(unchecked(index, domain, registry, "internal: no worker process was left to check it"))
    finally:
        await run.aclose()


async def _in_process(
    domains: Sequence[tuple[int, str]], registry: Registry, run: RunContext, deadline: float,
    sink: Callable[[Checked], None],
) -> None:  # fmt: skip
    window = asyncio.Semaphore(WINDOW)

    async def one(index: int, domain: str) -> None:
        try:
            sink(checked(index, await check_domain(domain, registry, run, deadline), registry))
        finally:
            window.release()

    async with asyncio.TaskGroup() as group:
        for index, domain in domains:
            await window.acquire()
            group.create_task(one(index, domain), name=domain)


# --- the parent's side -----------------------------------------------------------------------------------------


class _Worker:
    """One worker process as the parent sees it: started by :meth:`drive`, fed domains, answered sessions."""

    def __init__(self, registry: Registry, options: RunOptions, run: RunContext,
                 sink: Callable[[Checked], None]) -> None:  # fmt: skip
        self._registry = registry
        self._options = options
        self._run = run
        self._sink = sink
        self._process: asyncio.subprocess.Process | None = None
        self._in_flight: dict[int, str] = {}
        self._answers: set[asyncio.Task[None]] = set()

    async def drive(self, pending: Iterator[tuple[int, str]], deadline: float) -> None:
        """Start the process, feed it domains from ``pending`` (shared with the other workers) until none is
        left, and hand over its results; a worker that dies leaves its domains as errors."""
        process = self._process = await asyncio.create_subprocess_exec(
            # Not "-m diag.workers": the worker's classes must be pickled under this module's name, not __main__'s.
            sys.executable, "-c", "from diag.workers import main; main()",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdin is not None and process.stdout is not None
        remaining = deadline - asyncio.get_running_loop().time()
        verbose = logging.getLogger().isEnabledFor(logging.DEBUG)  # diag check -v
        self._send(("setup", self._registry, self._options, remaining, verbose))
        self._feed(pending, WINDOW)
        while self._in_flight:
            frame = await _read_frame(process.stdout)
            if frame is None:
                break
            match frame:
                case ("session", int(request), str(ip), int(port), str(name)):
                    task = asyncio.create_task(self._answer(request, ip, port, name))
                    self._answers.add(task)
                    task.add_done_callback(self._answers.discard)
                case ("done", Checked() as result):
                    del self._in_flight[result.index]
                    self._sink(result)
                    self._feed(pending, 1)
        process.stdin.close()
        code = await process.wait()
        for index, domain in sorted(self._in_flight.items()):
            reason = f"internal: the worker process checking it exited with status {code}"
            self._sink(unchecked(index, domain, self._registry, reason))
        self._in_flight.clear()

    def _feed(self, pending: Iterator[tuple[int, str]], count: int) -> None:
        batch = list(itertools.islice(pending, count))
        if batch:
            self._in_flight.update(batch)
            self._send(("check", batch))

    async def _answer(self, request: int, ip: str, port: int, name: str) -> None:
        try:
            facts: SessionFacts | BaseException = await asyncio.shield(self._run.smtp_session(ip, name, port=port))
        except Exception as exc:
            facts = exc
        self._send(("session", request, facts))

    def _send(self, message: tuple[Any, ...]) -> None:
        assert self._process is not None and self._process.stdin is not None
        if not self._process.stdin.is_closing():
            _write_frame(self._process.stdin, message)

    def stop(self) -> None:
        """End the process and the parent's pending answers (after :meth:`drive`, or when the run failed)."""
        for task in self._answers:
            task.cancel()
        if self._process is not None and self._process.returncode is None:
            self._process.kill()


def _write_frame(writer: asyncio.StreamWriter, message: tuple[Any, ...]) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(len(data).to_bytes(_FRAME_HEADER, "big") + data)


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    """The next message, or None at the end of the stream."""
    try:
        size = int.from_bytes(await reader.readexactly(_FRAME_HEADER), "big")
        # Frames come only from the other end of our own pipe: this process's parent or child (module docstring).
        return pickle.loads(await reader.readexactly(size))  # noqa: S301
    except asyncio.IncompleteReadError:
        return None


# --- the worker's side -----------------------------------------------------------------------------------------


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Check the domains the parent sends until it closes the pipe, asking it for every SMTP session."""
    loop = asyncio.get_running_loop()
    setup = await _read_frame(reader)
    if setup is None:
        return
    _, registry, options, remaining, verbose = setup
    if verbose:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="diag: worker: %(name)s: %(message)s")
    deadline = loop.time() + remaining
    requests = itertools.count()
    waiting: dict[int, asyncio.Future[SessionFacts]] = {}

    # The parent's answer is a SessionFacts, or the exception probing raised there.

    async def session(ip: str, port: int, server_name: str) -> SessionFacts:
        request = next(requests)
        waiting[request] = answer = loop.create_future()
        _write_frame(writer, ("session", request, ip, port, server_name))
        try:
            facts: SessionFacts = await answer
        finally:
            waiting.pop(request, None)
        return facts

    run = RunContext(options, sessions=session)
    domains: set[asyncio.Task[None]] = set()

    async def one(index: int, domain: str) -> None:
        try:
            result = checked(index, await check_domain(domain, registry, run, deadline), registry)
        except Exception as exc:  # encoding the results failed: a bug, reported as the domain's result
            log.debug("checking %s failed", domain, exc_info=True)
            result = unchecked(index, domain, registry, f"internal: {type(exc).__name__}: {exc}")
        _write_frame(writer, ("done", result))
        await writer.drain()

    while (frame := await _read_frame(reader)) is not None:
        match frame:
            case ("check", list(batch)):
                for index, domain in batch:
                    task = asyncio.create_task(one(index, domain), name=domain)
                    domains.add(task)
                    task.add_done_callback(domains.discard)
            case ("session", int(request), answer):
                future = waiting.get(request)
                if future is not None and not future.done():
                    if isinstance(answer, BaseException):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
    await asyncio.gather(*domains)
    await run.aclose()
    await writer.drain()


async def _worker_main(read_fd: int, write_fd: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0))
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(write_fd, "wb", 0)
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    try:
        await _serve(reader, writer)
    finally:
        writer.close()


def main() -> None:
    """A worker process of :func:`check_many`, spoken to over stdin and stdout."""
    frames_out = os.dup(1)
    os.dup2(2, 1)  # whatever else writes to stdout goes to stderr, never into the frames
    asyncio.run(_worker_main(0, frames_out))
