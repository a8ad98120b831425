"""Thousands of domains in one run (ARCHITECTURE §9): a bounded window of domains in flight, a worker process
per core, each domain's results written out as it finishes.

:func:`check_many` runs every check on every domain into a :class:`~diag.results.RunResults`: as each domain
finishes, its results are made ready to write (:func:`diag.results.checked`) and appended to a file, and the
run remembers where. Domains finish in any order; each carries its place in the input, and the outputs read
them back in order. A run so holds only the domains in flight, never every fact of every domain. At most
:data:`WINDOW` domains are in flight per event loop, started in input order: enough to overlap many slow answers,
few enough that their DNS questions do not queue behind the resolver's questions in flight until checks run out
of time (with a rate-limiting server, every answer it drops holds a place for a whole try).

With one worker the checks run in this process's event loop. With more, each worker is a process of its own
(a fresh interpreter running :func:`main`: nothing of the parent's event loop, threads or sockets is inherited)
with its own event loop, resolver and answer cache, fed a window of domains by the parent and one more each time
it reports one, so a worker that meets slow hosts simply gets fewer. A worker writes its domains into a file of
its own (in the run's private temporary directory) and reports only where each is, with its verdict and notes:
encoding the results, most of the CPU after DNS, happens side by side in the workers, and the parent copies.

Politeness across workers: the parent holds the run's SMTP sessions and connection limits, and the workers ask
it for every session (:class:`~diag.context.RunContext` with a session source). So an address gets one session
per port per run and never more than ``per_host_connections`` connections at once, however many workers there
are, and every domain whose MX is at that address reads the same session, exactly as in a run in one process.
(Dividing the per-address budget among workers would break the limit with more workers than the budget and probe
every address once per worker; partitioning the domains by MX address would need every MX resolved before the
first check starts.) Each worker has its own resolver, with its own limit of questions in flight. The price
is that the parent makes every TLS handshake; with many domains per mail host, as in practice, sessions are few
and the parent stays mostly idle.

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
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from diag.context import RunContext, RunOptions
from diag.model import DomainReport
from diag.net.smtp_facts import SessionFacts
from diag.registry import Registry
from diag.render.json import EntryWriter
from diag.results import Checked, ResultFile, RunResults, Stored, checked, unchecked
from diag.runner import check_domain

__all__ = ["WINDOW", "check_many", "default_workers"]

log = logging.getLogger(__name__)

WINDOW = 100
"""Domains in flight at once in one event loop."""
# Domains a worker process is worth starting for: one process checks a few hundred domains a second, and a
# worker costs a fraction of a second to start (a fresh interpreter importing the checks).
_DOMAINS_PER_WORKER = 500
_FRAME_HEADER = 4
# Seconds a worker gathers finished domains before reporting them to the parent in one message.
_REPORT_EVERY = 0.02


def default_workers(domains: int) -> int:
    """Worker processes for a run over ``domains`` domains: one per usable core, and one for small runs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, math.ceil(domains / _DOMAINS_PER_WORKER)))


async def check_many(
    domains: Sequence[str],
    registry: Registry,
    options: RunOptions,
    results: RunResults,
    *,
    workers: int = 1,
    on_domain: Callable[[], None] | None = None,
) -> None:
    """Run every check of ``registry`` on every domain into ``results``, each domain as it finishes; in this
    process with one worker or with a check that sends mail, in ``workers`` processes otherwise (module
    docstring). ``on_domain`` is called as each domain finishes (a progress bar's hook). Never raises for what a
    check does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.deadline
    run = RunContext.of(options, registry)

    def add(result: Checked) -> None:
        results.add(result)
        if on_domain is not None:
            on_domain()

    # A check that sends mail (tagged active: the e2e probes) shares each probe between the domains it concerns
    # and caps the probes of a run (RunContext.once): that holds only within one process.
    active = registry.tagged("active")
    try:
        if workers <= 1 or len(domains) <= 1 or active:
            await _in_process(list(enumerate(domains)), registry, run, deadline, add)
        else:
            pending = iter(enumerate(domains))
            count = min(workers, len(domains))
            pool = [_Worker(registry, options, run, results, add, on_domain) for _ in range(count)]
            # A full window each, or an equal share of a smaller run: the first worker must not take it all.
            first = min(WINDOW, math.ceil(len(domains) / len(pool)))
            try:
                await asyncio.gather(*(worker.drive(pending, deadline, first) for worker in pool))
            finally:
                for worker in pool:
                    worker.stop()
            for index, domain in pending:  # left when every worker died
                add(unchecked(index, domain, registry, "internal: no worker process was left to check it"))
    finally:
        await run.aclose()


async def _in_process(
    domains: Sequence[tuple[int, str]], registry: Registry, run: RunContext, deadline: float,
    add: Callable[[Checked], None],
) -> None:  # fmt: skip
    window = asyncio.Semaphore(WINDOW)
    writer = EntryWriter()

    async def one(index: int, domain: str) -> None:
        try:
            add(_checked(index, domain, await check_domain(domain, registry, run, deadline), registry, writer))
        finally:
            window.release()

    async with asyncio.TaskGroup() as group:
        for index, domain in domains:
            await window.acquire()
            group.create_task(one(index, domain), name=domain)


def _checked(index: int, domain: str, report: DomainReport, registry: Registry, writer: EntryWriter) -> Checked:
    """:func:`~diag.results.checked`; when making the outputs' parts fails (a bug), the domain's result says so."""
    try:
        return checked(index, report, registry, writer=writer)
    except Exception as exc:
        log.debug("writing the results of %s failed", domain, exc_info=True)
        return unchecked(index, domain, registry, f"internal: {type(exc).__name__}: {exc}")


# --- the parent's side -----------------------------------------------------------------------------------------


def _worker_environment() -> dict[str, str]:
    """The worker imports the very diag its parent runs, from where the parent imported it (an installation, a
    checkout on PYTHONPATH), and never from the current directory: a ``diag`` or ``checks`` package there (a
    checkout, or files someone else could write) would otherwise run in the workers in place of the installed
    code."""
    where = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (_SOURCE, where)))}


# The directory that holds the diag package this process runs (site-packages, or a checkout).
_SOURCE = str(Path(__file__).resolve().parents[1])


class _Worker:
    """One worker process as the parent sees it: started by :meth:`drive`, fed domains, answered sessions."""

    def __init__(
        self, registry: Registry, options: RunOptions, run: RunContext, results: RunResults,
        add: Callable[[Checked], None], on_domain: Callable[[], None] | None,
    ) -> None:  # fmt: skip
        self._registry = registry
        self._options = options
        self._run = run
        self._results = results
        self._add = add
        self._on_domain = on_domain
        self._process: asyncio.subprocess.Process | None = None
        self._in_flight: dict[int, str] = {}
        self._answers: set[asyncio.Task[None]] = set()

    async def drive(self, pending: Iterator[tuple[int, str]], deadline: float, first: int) -> None:
        """Start the process, feed it ``first`` domains from ``pending`` (shared with the other workers) and one
        more for each it reports until none is left, and take over its results; a worker that dies leaves its
        domains as errors."""
        process = self._process = await asyncio.create_subprocess_exec(
            # Not "-m diag.workers": the worker's classes must be pickled under this module's name, not __main__'s.
            # -P: not the current directory first on the path, as -c would put it (see _worker_environment).
            sys.executable, "-P", "-c", "from diag.workers import main; main()",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=_worker_environment(),
        )  # fmt: skip
        assert process.stdin is not None and process.stdout is not None
        remaining = deadline - asyncio.get_running_loop().time()
        verbose = logging.getLogger().isEnabledFor(logging.DEBUG)  # diag check -v
        file, path = self._results.worker_file()
        self._send(("setup", self._registry, self._options, remaining, str(path), verbose))
        self._feed(pending, first)
        while self._in_flight:
            frame = await _read_frame(process.stdout)
            if frame is None:
                break
            match frame:
                case ("session", int(request), str(ip), int(port), str(name)):
                    task = asyncio.create_task(self._answer(request, ip, port, name))
                    self._answers.add(task)
                    task.add_done_callback(self._answers.discard)
                case ("done", tuple(batch)):
                    for stored in batch:
                        del self._in_flight[stored.index]
                        self._results.add_stored(file, stored)
                        if self._on_domain is not None:
                            self._on_domain()
                    self._feed(pending, len(batch))
        process.stdin.close()
        code = await process.wait()
        for index, domain in sorted(self._in_flight.items()):
            reason = f"internal: the worker process checking it exited with status {code}"
            self._add(unchecked(index, domain, self._registry, reason))
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
    _, registry, options, remaining, path, verbose = setup
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

    run = RunContext.of(options, registry, sessions=session)
    domains: set[asyncio.Task[None]] = set()
    kept = ResultFile(Path(path))
    entries = EntryWriter()

    finished: list[Stored] = []
    report_due: asyncio.TimerHandle | None = None

    def report() -> None:
        """Tell the parent about the domains finished since the last report (one message, not one each)."""
        nonlocal report_due
        report_due = None
        kept.flush()  # before the parent hears of them
        _write_frame(writer, ("done", tuple(finished)))
        finished.clear()

    async def one(index: int, domain: str) -> None:
        nonlocal report_due
        result = _checked(index, domain, await check_domain(domain, registry, run, deadline), registry, entries)
        finished.append(Stored(index, kept.keep(result), result.verdict, result.notes))
        if report_due is None:
            report_due = loop.call_later(_REPORT_EVERY, report)

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
    if report_due is not None:
        report_due.cancel()
        report()
    kept.close()
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
    # Ctrl-C reaches the whole process group: the parent stops its workers itself (and they print nothing).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_worker_main(0, frames_out))
