"""diag from cron: monitoring formats, the run lock, the history, notifications and the schedule — through the
real command line against a lab that keeps running between runs (``diag lab serve``)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from mailbox import Maildir
from pathlib import Path
from typing import ClassVar

import pytest

from diag.lock import RunLock


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def diag(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diag", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, serve_lab: Callable[..., tuple[subprocess.Popen[str], list[str]]]
) -> Iterator[tuple[list[str], Path]]:
    """A lab kept running: the options that reach it, and its directory (Maildirs under maildir/)."""
    directory = tmp_path_factory.mktemp("lab")
    serve, reach = serve_lab("--dir", str(directory))
    options = reach[3:]
    try:
        yield options, directory
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=20)


def test_nagios_view() -> None:
    done = diag("check", "contoso.com", "expired.example", "--lab", "--format", "nagios")
    first = done.stdout.splitlines()[0]
    assert first.startswith("DIAG CRITICAL - 2 domains") and " | " in first
    assert done.returncode == 2


def test_prometheus_and_junit_files(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    prom, junit = tmp_path / "diag.prom", tmp_path / "diag.xml"
    done = diag("check", "contoso.com", "expiring.example", "--lab", "--prom", str(prom), "--junit", str(junit), "-q")
    assert done.returncode == 1
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    (run_status,) = families["diag_run_status"].samples
    assert run_status.value == 1
    suites = ET.parse(junit).getroot()
    assert [s.get("name") for s in suites] == ["contoso.com", "expiring.example"]
    assert not list(tmp_path.glob(".diag*"))  # written atomically: no temporary file left behind


def test_domains_file(tmp_path: Path) -> None:
    listed = tmp_path / "domains.txt"
    listed.write_text("# the organization\ncontoso.com\n\nfabrikam.com  # and its sister\n")
    done = diag("check", "--domains-file", str(listed), "--lab", "--json", "-", "--check", "mx")
    assert [d["domain"] for d in json.loads(done.stdout)["domains"]] == ["contoso.com", "fabrikam.com"]
    listed.write_text("contoso.com\nnot a domain\n")
    bad = diag("check", "--domains-file", str(listed), "--lab")
    assert bad.returncode == 3 and f"{listed}:2:" in bad.stderr


def test_a_second_run_does_not_overlap(tmp_path: Path) -> None:
    lock = tmp_path / "diag.lock"
    with RunLock(lock):
        done = diag("check", "contoso.com", "--lab", "--lock", str(lock))
    assert done.returncode == 3
    (line,) = done.stderr.splitlines()
    assert line.startswith("diag: error: another diag run holds the lock") and str(lock) in line
    assert diag("check", "contoso.com", "--lab", "--lock", str(lock), "-q").returncode == 0


def test_two_different_jobs_run_side_by_side_without_lock(tmp_path: Path) -> None:
    """Issue 10: the default lock is per job; before, the second of two unrelated cron jobs exited 3."""
    jobs = [[sys.executable, "-m", "diag", "check", domain, "--lab", "-q", "--json", str(tmp_path / f"{domain}.json")]
            for domain in ("contoso.com", "fabrikam.com")]  # fmt: skip
    running = [subprocess.Popen(job, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for job in jobs]  # fmt: skip
    results = [process.communicate(timeout=60) for process in running]
    assert [process.returncode for process in running] == [0, 0], results
    for domain in ("contoso.com", "fabrikam.com"):
        assert json.loads((tmp_path / f"{domain}.json").read_text())["exit_code"] == 0


def test_a_second_copy_of_the_same_job_is_refused_in_one_line(tmp_path: Path) -> None:
    from diag.lock import default_lock_path
    from diag.unattended import Job

    # The same job as the command line below, spelled the other way round: its lock is held by "the first copy".
    out = tmp_path / "out.json"
    job = Job.of("check", ["fabrikam.com", "contoso.com"], lab=True, outputs={"--json": out})
    with RunLock(default_lock_path(job.key)):
        done = diag("check", "contoso.com", "fabrikam.com", "--lab", "-q", "--json", str(out))
        other = diag("check", "contoso.com", "--lab", "-q")  # another job: not refused
    assert done.returncode == 3
    (line,) = done.stderr.splitlines()
    assert line.startswith("diag: error: another diag run of this job (check contoso.com fabrikam.com) holds the lock")
    assert not out.exists()
    assert other.returncode == 0, other.stderr


def test_report_rerenders_a_saved_result(tmp_path: Path) -> None:
    saved, html = tmp_path / "result.json", tmp_path / "report.html"
    first = diag("check", "contoso.com", "expired.example", "--lab", "--json", str(saved))
    again = diag("report", str(saved), "--html", str(html))
    assert again.returncode == first.returncode == 2
    assert again.stdout == first.stdout
    assert "CERT_EXPIRED" in html.read_text()
    not_a_report = tmp_path / "other.json"
    not_a_report.write_text('{"hello": 1}')
    refused = diag("report", str(not_a_report))
    assert refused.returncode == 3 and len(refused.stderr.splitlines()) == 1


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, object]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        _Hook.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_history_and_exactly_one_notification_for_one_change(served: tuple[list[str], Path],
                                                             tmp_path: Path) -> None:  # fmt: skip
    options, lab_dir = served
    port = options[options.index("--smtp-port") + 1]
    hook = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    history = tmp_path / "history.sqlite3"
    notify = ["--notify-mail", "postmaster@tailspintoys.com", "--smtp-server", f"mail.tailspintoys.com:{port}",
              "--webhook", f"http://127.0.0.1:{hook.server_port}/diag", "--history", str(history), "-q"]  # fmt: skip
    try:
        first = diag("check", "contoso.com", *options, *notify)
        second = diag("check", "contoso.com", *options, *notify, "--cert-warn-days", "365")
        third = diag("check", "contoso.com", *options, *notify, "--cert-warn-days", "365")
    finally:
        hook.shutdown()
    assert (first.returncode, second.returncode, third.returncode) == (0, 1, 1), second.stderr
    assert "notification failed" not in second.stderr
    # The first run was fine and the third changed nothing: only the second is reported.
    mails = list(Maildir(lab_dir / "maildir" / "mail.tailspintoys.com" / "postmaster@tailspintoys.com", create=False))
    assert len(mails) == 1 and "contoso.com" in mails[0]["Subject"]
    assert len(_Hook.received) == 1 and _Hook.received[0]["status"] == "warning"
    shown = diag("history", "contoso.com", "--history", str(history))
    assert shown.returncode == 0 and "CERT_EXPIRING" in shown.stdout
    pruned = diag("history", "--history", str(history), "--prune", "0")  # runs of earlier seconds go
    assert pruned.returncode == 0 and re.match(r"pruned [123] runs? older than 0 days\n", pruned.stdout)


def test_schedule_prints_exactly_the_command(tmp_path: Path) -> None:
    done = diag("schedule", "--every", "30", "check", "contoso.com", "-q", "--html", f"{tmp_path}/diag report.html")
    assert done.returncode == 0
    assert f"check contoso.com -q --html '{tmp_path}/diag report.html'" in done.stdout
    units = diag("schedule", "--systemd", "check", "contoso.com", "-q")
    assert "[Timer]" in units.stdout and "OnCalendar=" in units.stdout
    bad = diag("schedule", "frobnicate")
    assert bad.returncode == 3


def test_schedule_writes_a_line_that_works_from_another_directory(tmp_path: Path) -> None:
    """Issue 10: cron starts the command in the home directory, so relative paths become absolute."""
    import shlex
    import shutil

    from diag.lab.world import EXAMPLE_CONFIG

    shutil.copy(EXAMPLE_CONFIG, tmp_path / "contoso.toml")
    (tmp_path / "out").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "diag", "schedule", "--every", "30", "-q", "check", "contoso.com",
         "--config", "contoso.toml", "--html", "out/report.html", "--json=out/result.json"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    words = shlex.split(done.stdout.split(None, 5)[5])
    expected = ["-q", "check", "contoso.com", "--config", f"{tmp_path}/contoso.toml", "--html",
                f"{tmp_path}/out/report.html", f"--json={tmp_path}/out/result.json"]  # fmt: skip
    assert words[-len(expected) :] == expected


@pytest.mark.parametrize(
    ("command", "line"),
    [
        (["check", "contoso.com", "--frobnicate"], "diag: error: No such option '--frobnicate'"),
        (["check", "contoso.com", "--config", "missing.toml"],
         "diag: error: --config 'missing.toml': cannot read it: No such file or directory"),
        (["check", "contoso.com", "--html", "nowhere/report.html"],
         "diag: error: --html 'nowhere/report.html': directory '"),
        (["check", "contoso.com", "--timeout", "0"], "diag: error: --timeout 0: must be between 0.1 and 600 seconds"),
        (["check", "contoso.com", "--help"], "diag: error: --help: the scheduled command would only print its help"),
        (["-q", "history"], "diag: error: -q/--quiet does not apply to 'diag history'"),
        (["config"], "diag: error: 'diag config' needs a command"),
        (["schedule", "check", "contoso.com"], "diag: error: 'schedule check contoso.com' is not a diag command"),
    ],
)
def test_schedule_refuses_now_what_would_fail_from_cron(tmp_path: Path, command: list[str], line: str) -> None:
    done = subprocess.run([sys.executable, "-m", "diag", "schedule", *command], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 3 and done.stdout == ""
    (error,) = done.stderr.splitlines()
    assert error.startswith(line), error
