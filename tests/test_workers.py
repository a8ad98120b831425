"""Thousands of domains in one run (diag/workers.py, diag/results.py): worker processes give the same results as
one process, in input order, and a run's results come back from disk as they were written."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from checks import default_registry
from diag.context import RunOptions
from diag.history import History
from diag.lab.runner import Lab
from diag.lab.world import EXAMPLE_CONFIG, PURPOSES
from diag.model import CheckResult, DomainReport, Report, Status
from diag.registry import Check, Outcome, Registry, Summary
from diag.render.json import EntryWriter, dumps, report_dict
from diag.results import RunResults, checked
from diag.unattended import Outputs
from diag.workers import check_many

# What differs between two runs of the same checks: clocks and durations, not results.
# ...and the name a shared SMTP session was opened under (its SNI): one session per address serves every domain
# that reaches it, under the name its first requester knows it by, and which domain asks first differs between
# one process and two (iplit.example reaches mx2.multi.example's address as the literal 127.0.20.18).
VOLATILE = {"started_at", "finished_at", "duration_ms", "checked_at", "server_name"}


def steady(value: Any) -> Any:
    """A result document without what differs between any two runs (times; SMTP stage timings end in _s; the name
    a shared session was opened under)."""
    if isinstance(value, dict):
        return {k: steady(v) for k, v in value.items() if k not in VOLATILE and not k.endswith("_s")}
    if isinstance(value, list):
        return [steady(item) for item in value]
    return value


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_two_workers_give_what_one_process_gives_over_every_lab_domain(lab: Lab, tmp_path: Path) -> None:
    # Given every lab domain (healthy, broken, slow) and every check but the one that sends mail (its probes are
    # new messages each run, and it keeps a run in one process anyway), checked by the command in one process
    # and then by two worker processes. One hash seed for both: the dane and dnssec checks keep some records in
    # the order of a set, which differs between any two processes, workers or not.
    domains = tuple(PURPOSES)
    checks = [check.id for check in default_registry() if "active" not in check.tags]
    env = dict(os.environ, PYTHONHASHSEED="0")
    runs = {}
    for workers in (1, 2):
        out, history = tmp_path / f"w{workers}.json", tmp_path / f"w{workers}.sqlite3"
        command = [sys.executable, "-m", "diag", "check", *domains, *lab.option_text().split(),
                   "--config", str(EXAMPLE_CONFIG), "--ehlo-name", "probe.diag.invalid", "--timeout", "5",
                   *(part for check in checks for part in ("--check", check)), "--workers", str(workers),
                   "--json", str(out), "--history", str(history)]  # fmt: skip
        # When each runs
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert done.stderr == ""
        runs[workers] = (done.returncode, json.loads(out.read_text()), done.stdout, history)

    # Then the results are the same, domain by domain in input order, with the same exit code and view
    (code1, document1, view1, history1), (code2, document2, view2, history2) = runs[1], runs[2]
    assert code1 == code2 == 2
    assert [d["domain"] for d in document2["domains"]] == list(domains)
    assert steady(document2) == steady(document1)
    ms = r"\(\d+ ms\)"
    assert re.sub(ms, "", view2) == re.sub(ms, "", view1)
    assert view2.endswith("status: CRITICAL (exit 2)\n")
    # And the history holds the same rows for each run
    for table in ("domain_runs", "checks", "findings", "mx_hosts", "certificates"):
        with sqlite3.connect(history1) as one, sqlite3.connect(history2) as two:
            query = f"SELECT * FROM {table} ORDER BY rowid"
            assert one.execute(query).fetchall() == two.execute(query).fetchall(), table
        one.close()
        two.close()
    with History(history2, create=False) as kept:
        assert steady(kept.document(1)) == steady(document2)


def test_the_json_file_is_written_a_domain_at_a_time_exactly_as_the_whole_document(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a real report over a few lab domains, three of them at one MX host (so sharing its session's facts)
    registry = default_registry()
    domains = ("contoso.com", "hostile.example", "fabrikam.com", "nullmx.example", "contoso.onmicrosoft.com")
    report = asyncio.run(_run(domains, registry, lab.run_options()))

    # When its domains go through a run's results out of order, written by one writer, and are read back
    writer = EntryWriter()
    with RunResults(len(report.domains), registry) as results:
        for index in (2, 0, 4, 1, 3):
            results.add(checked(index, report.domains[index], registry, writer=writer))
        results.finish(report.started_at, report.finished_at)
        Outputs(json=str(tmp_path / "r.json"), quiet=True).write(results)
        records = list(results.records())
    text = (tmp_path / "r.json").read_text()

    # Then the text is the one json.dumps writes for the whole document, byte for byte
    assert text == json.dumps(report_dict(report), indent=2, ensure_ascii=True) + "\n" == dumps(report)
    assert [rows.domain for rows, _ in records] == list(domains)
    assert [json.loads(compact) for _, compact in records] == report_dict(report)["domains"]


def test_a_run_wide_view_revises_results_written_before_the_run_ended() -> None:
    # Given a check whose run-wide view marks every result once it has seen two domains
    async def ok(ctx: Any) -> Outcome:
        return Outcome({"domain": ctx.domain}, ())

    def revise(notes: Any) -> Any:
        if len(notes) < 2:
            return None
        return lambda result: CheckResult(result.check_id, result.title, Status.ERROR, reason="seen the run",
                                          facts=result.facts, findings=())  # fmt: skip

    registry = Registry([Check("probe", "Probe", ok, {}, summary=Summary(lambda r: r.facts["domain"], revise))])
    report = asyncio.run(_run(("a.example", "b.example"), registry, RunOptions()))

    # When its results go through a run's results
    with RunResults(2, registry) as results:
        for index, domain in enumerate(report.domains):
            results.add(checked(index, domain, registry))
        results.finish(report.started_at, report.finished_at)
        document = results.document()
        plain = "".join(results.plain())

    # Then what every output reads is revised, and the verdict with it
    assert [d["checks"][0]["reason"] for d in document["domains"]] == ["seen the run", "seen the run"]
    assert document["status"] == "unknown" and results.exit_code == 3
    assert plain.count("probe: error") == 2 and "seen the run" in plain


DYING_CHECKS = '''
import os

from diag.registry import Outcome


async def run(ctx):
    if ctx.domain == "dies.example":
        os._exit(7)
    return Outcome({"domain": ctx.domain}, ())
'''


def test_a_worker_that_dies_leaves_errors_for_its_domains_and_the_others_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a check that ends its worker process on one domain (importable by the workers, which are fresh
    # interpreters, and by this process, which pickles the registry for them)
    (tmp_path / "dying_checks.py").write_text(DYING_CHECKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    from dying_checks import run  # type: ignore[import-not-found]

    registry = Registry([Check("probe", "Probe", run, {})])
    domains = ("dies.example", "b.example", "c.example", "d.example")

    # When two workers check four domains, two each
    with RunResults(len(domains), registry) as results:
        started = datetime.now(UTC)
        asyncio.run(check_many(domains, registry, RunOptions(), results, workers=2))
        results.finish(started, datetime.now(UTC))
        checks = [(d["domain"], d["checks"][0]) for d in results.document()["domains"]]

    # Then every domain has a result, in input order: the dead worker's as errors saying so, the other's
    assert [domain for domain, _ in checks] == list(domains)
    died = "internal: the worker process checking it exited with status 7"
    assert (checks[0][1]["status"], checks[0][1]["reason"]) == ("error", died)
    assert checks[1][1]["status"] == "completed" or checks[1][1]["reason"] == died
    assert [check["status"] for _, check in checks[2:]] == ["completed", "completed"]


async def _run(domains: tuple[str, ...], registry: Registry, options: RunOptions) -> Report:
    from diag.runner import run_checks

    return await run_checks(domains, registry, options)


def test_the_command_refuses_a_worker_count_that_is_not_a_whole_number_from_one() -> None:
    done = subprocess.run([sys.executable, "-m", "diag", "check", "contoso.com", "--workers", "0"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 3 and "--workers" in done.stderr


def test_domain_reports_read_back_keep_statuses_and_findings(lab: Lab) -> None:
    registry = default_registry()
    report = asyncio.run(_run(("expired.example",), registry, lab.run_options()))
    with RunResults(1, registry) as results:
        results.add(checked(0, report.domains[0], registry))
        results.finish(report.started_at, report.finished_at)
        (read,) = list(results.domain_reports())
    original: DomainReport = report.domains[0]
    assert read.verdict is original.verdict
    assert [(r.check_id, r.status, r.reason, r.findings, r.duration_ms) for r in read.results] == [
        (r.check_id, r.status, r.reason, r.findings, r.duration_ms) for r in original.results
    ]


def test_a_run_with_a_check_that_sends_mail_stays_in_one_process() -> None:
    # Given a check tagged active (it sends mail: probes are shared and capped per run, which holds in one process)
    async def where(ctx: Any) -> Outcome:
        return Outcome({"pid": os.getpid()}, ())

    registry = Registry([Check("probe", "Probe", where, {}, tags=frozenset({"active"}))])
    # When two workers are asked for
    with RunResults(3, registry) as results:
        started = datetime.now(UTC)
        asyncio.run(check_many(("a.example", "b.example", "c.example"), registry, RunOptions(), results, workers=2))
        results.finish(started, datetime.now(UTC))
        pids = {d["checks"][0]["facts"]["pid"] for d in results.document()["domains"]}
    # Then every domain was checked in this process
    assert pids == {os.getpid()}


def test_workers_run_the_installed_diag_not_one_in_the_current_directory(lab: Lab, tmp_path: Path) -> None:
    # Given a directory holding a diag package of someone else's, which leaves a mark when imported, and the diag
    # command run from there (its console script does not put the current directory on the path)
    script = Path(sys.executable).with_name("diag")
    if not script.exists():
        pytest.skip(f"no diag console script beside {sys.executable}")
    for package in ("diag", "checks"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'a').write({package!r})\n")
    out = tmp_path / "out.json"
    # When two workers check two domains
    done = subprocess.run(
        [str(script), "check", "contoso.com", "fabrikam.com", *lab.option_text().split(), "--check", "mx",
         "--workers", "2", "--json", str(out), "--no-history"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    # Then nothing of that directory ran, and both domains were checked
    assert not (tmp_path / "ran").exists()
    assert done.returncode == 0, done.stderr
    assert [d["checks"][0]["status"] for d in json.loads(out.read_text())["domains"]] == ["completed"] * 2


LAZY_CHECKS = """
import asyncio, sys
from diag.registry import Outcome

async def run(ctx):
    for _ in range(1000):  # until the run's import thread has begun the import (or 10 s: then it never will)
        if "lazy_marker" in sys.modules:
            break
        await asyncio.sleep(0.01)
    import lazy_marker  # waits for that import to end, or imports it here if the run never did
    return Outcome(None, ())
"""


@pytest.mark.parametrize("engine", ["run_checks", "check_many"])
def test_a_run_imports_its_checks_lazy_imports_in_its_import_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    # Given a check that names a module in lazy_imports and waits for it in its run
    (tmp_path / "lazy_checks.py").write_text(LAZY_CHECKS)
    (tmp_path / "lazy_marker.py").write_text("import threading\nIMPORTED_IN = threading.current_thread().name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lazy_marker", raising=False)
    from lazy_checks import run  # type: ignore[import-not-found]

    registry = Registry([Check("probe", "Probe", run, {}, lazy_imports=("lazy_marker",))])
    # When the engine runs it
    if engine == "run_checks":
        from diag.runner import run_checks

        asyncio.run(run_checks(["a.example"], registry, RunOptions()))
    else:
        with RunResults(1, registry) as results:
            asyncio.run(check_many(("a.example",), registry, RunOptions(), results, workers=1))
    # Then the run's import thread imported it, not the check
    assert sys.modules["lazy_marker"].IMPORTED_IN == "diag-imports"
