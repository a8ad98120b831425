"""What a cron run adds around the engine (diag/unattended/): which job a run is (the same job however it is
spelled, another job when it checks or writes something else), and a check run from start to end, driven by a typed
request against the lab on loopback: lock, outputs, history, notification."""

from __future__ import annotations

import email
import email.policy
import json
import mailbox
import socket
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import replace
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from checks import default_registry
from diag.context import RunOptions
from diag.errors import ConfigError, UsageError
from diag.history import History
from diag.lab.runner import Lab
from diag.lock import RunLock, default_lock_path
from diag.notify import NotifyPolicy
from diag.unattended import CheckRequest, Job, Notification, Outputs, View, execute, write_output


def test_the_same_job_spelled_differently_has_one_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    one = Job.of("check", ["fabrikam.com", "contoso.com"], checks=["mx", "port25"], config=Path("org.toml"),
                 outputs={"--html": "out.html", "--json": None})  # fmt: skip
    two = Job.of("check", ["contoso.com", "fabrikam.com", "contoso.com"], checks=["port25", "mx"],
                 config=tmp_path / "org.toml", outputs={"--json": "-", "--html": tmp_path / "out.html"})  # fmt: skip
    assert one == two and one.key == two.key
    assert len(one.key) == 16 and int(one.key, 16) >= 0
    assert one.config == str(tmp_path / "org.toml")
    assert one.outputs == (("--html", str(tmp_path / "out.html")),)


@pytest.mark.parametrize(
    "other",
    [
        Job.of("check", ["fabrikam.com"]),
        Job.of("check", ["contoso.com", "fabrikam.com"]),
        Job.of("check", ["contoso.com"], checks=["mx"]),
        Job.of("check", ["contoso.com"], config=Path("/etc/diag/contoso.toml")),
        Job.of("check", ["contoso.com"], lab=True),
        Job.of("check", ["contoso.com"], outputs={"--prom": "/var/lib/node_exporter/diag.prom"}),
        Job.of("check", ["contoso.com"], outputs={"--history": "/var/lib/diag/other.db"}),
    ],
)
def test_another_domain_check_config_or_output_is_another_job(other: Job) -> None:
    assert Job.of("check", ["contoso.com"]).key != other.key


def test_a_job_describes_itself_in_a_few_words() -> None:
    assert Job.of("check", ["fabrikam.com", "contoso.com"]).describe() == "check contoso.com fabrikam.com"
    many = Job.of("check", [f"d{i:04}.example" for i in range(1000)])
    assert many.describe() == "check d0000.example d0001.example d0002.example and 997 more"
    assert Job.of("check", ["xn--mnchen-3ya.example"]).describe() == "check münchen.example (xn--mnchen-3ya.example)"


# -- a check run from start to end: execute(CheckRequest) against the lab on loopback ---------------------------


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default history and lock files of these runs live in the test's own directory."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def request_for(lab: Lab, *domains: str, checks: tuple[str, ...] = (), **fields: Any) -> CheckRequest:
    """What ``diag check DOMAIN... --resolver ... --smtp-port ... --ca-file ... --config contoso.toml`` asks for."""
    options = fields.pop("options", lab.run_options(timeout=5))
    return CheckRequest(domains, default_registry().select(checks), options, checks=checks, **fields)


class Hook(BaseHTTPRequestHandler):
    """A webhook receiver on loopback; ``on_post`` runs while the sender waits for the answer."""

    received: ClassVar[list[dict[str, Any]]] = []
    on_post: ClassVar[Callable[[], None]] = staticmethod(lambda: None)

    def do_POST(self) -> None:
        Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        Hook.on_post()
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    """The URL of a fresh webhook receiver; what it received is in ``Hook.received``."""
    Hook.received = []
    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/diag"
    finally:
        server.shutdown()
        server.server_close()
        Hook.on_post = staticmethod(lambda: None)


def test_a_run_writes_every_output_and_the_view_and_keeps_the_run(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a request for a healthy and a broken domain with every file output and a history
    outputs = Outputs(json=str(tmp_path / "r.json"), html=tmp_path / "r.html", prom=tmp_path / "r.prom",
                      junit=tmp_path / "r.xml")  # fmt: skip
    history = tmp_path / "history.sqlite3"
    request = request_for(lab, "contoso.com", "expired.example", outputs=outputs, history=history)

    # When it is executed
    code = execute(request)

    # Then the exit code is the worst result's, each file says so, the view is on stdout and the run is kept
    assert code == 2
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["exit_code"] == 2
    assert [domain["domain"] for domain in document["domains"]] == ["contoso.com", "expired.example"]
    assert "CERT_EXPIRED" in (tmp_path / "r.html").read_text()
    assert "diag_run_status 2" in (tmp_path / "r.prom").read_text()
    assert [suite.get("name") for suite in ET.parse(tmp_path / "r.xml").getroot()] == ["contoso.com", "expired.example"]
    shown = capsys.readouterr()
    assert "CERT_EXPIRED" in shown.out and shown.err == ""
    with History(history, create=False) as kept:
        (run,) = kept.runs()
    assert run.exit_code == 2
    assert [(domain.domain, domain.status.value) for domain in run.domains] == [
        ("contoso.com", "ok"), ("expired.example", "critical"),
    ]  # fmt: skip
    assert not list(tmp_path.glob(".r.*"))  # written atomically: no temporary file left behind


def test_json_on_stdout_is_the_only_thing_there_and_the_nagios_view_is_one_line(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert execute(request_for(lab, "contoso.com", checks=("mx",), outputs=Outputs(json="-"))) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "ok"
    assert execute(request_for(lab, "contoso.com", checks=("mx",), outputs=Outputs(view=View.NAGIOS))) == 0
    assert capsys.readouterr().out.startswith("DIAG OK - 1 domain")


def test_the_history_goes_to_the_default_file_unless_it_is_turned_off(lab: Lab, tmp_path: Path) -> None:
    default = tmp_path / "data" / "diag" / "history.sqlite3"
    assert execute(request_for(lab, "contoso.com", checks=("mx",), keep_history=False)) == 0
    assert not default.exists()
    assert execute(request_for(lab, "contoso.com", checks=("mx",))) == 0
    with History(default, create=False) as kept:
        assert [run.exit_code for run in kept.runs("contoso.com")] == [0]


def test_a_second_copy_of_the_job_is_refused_before_it_runs(lab: Lab, tmp_path: Path) -> None:
    # Given a request without --lock, from a process whose stdout is no terminal (cron), whose job's lock is held
    out = tmp_path / "out.json"
    request = request_for(lab, "fabrikam.com", "contoso.com", outputs=Outputs(json=str(out)))
    with RunLock(default_lock_path(request.job.key)):
        # When it is executed, then it is refused in one line that names the job, and nothing is written
        with pytest.raises(UsageError, match=r"^another diag run of this job \(check contoso.com fabrikam.com\) "
                                             r"holds the lock .*diag-[0-9a-f]{16}\.lock"):  # fmt: skip
            execute(request)
    assert not out.exists() and not (tmp_path / "data").exists()


def test_an_explicit_lock_is_held_until_the_notification_is_sent_and_then_released(
    lab: Lab, tmp_path: Path, hook: str
) -> None:
    # Given a request with --lock FILE that notifies a webhook after every run
    lock = tmp_path / "diag.lock"
    refusals: list[str] = []

    def while_notified() -> None:  # a second run, started while the first one is notifying
        with pytest.raises(UsageError) as raised:
            RunLock(lock).acquire()
        refusals.append(str(raised.value))

    Hook.on_post = staticmethod(while_notified)
    notification = Notification(NotifyPolicy.ALWAYS, webhook=hook)
    request = request_for(lab, "contoso.com", checks=("mx",), lock=lock, notification=notification)

    # When it is executed
    assert execute(request) == 0

    # Then the lock was still held while the webhook was called, and is free afterwards
    assert len(Hook.received) == 1 and Hook.received[0]["status"] == "ok"
    (refusal,) = refusals
    assert refusal.startswith(f"another diag run holds the lock {lock} (pid ")
    with RunLock(lock):
        pass


def test_an_output_that_cannot_be_written_stops_the_run_before_the_history_and_frees_the_lock(
    lab: Lab, tmp_path: Path
) -> None:
    # Given a request whose HTML directory disappears after the command line was read
    (tmp_path / "www").mkdir()
    outputs = Outputs(html=tmp_path / "www" / "report.html")
    history, lock = tmp_path / "history.sqlite3", tmp_path / "diag.lock"
    request = request_for(lab, "contoso.com", checks=("mx",), outputs=outputs, history=history, lock=lock)
    (tmp_path / "www").rmdir()

    # When it is executed, then it fails in one line naming the option, keeps nothing, and leaves the lock free
    with pytest.raises(ConfigError, match=r"^--html '.*report.html': cannot write it: No such file or directory$"):
        execute(request)
    assert not history.exists()
    with RunLock(lock):
        pass


def test_notified_once_for_one_change_by_mail_and_webhook(lab: Lab, tmp_path: Path, hook: str) -> None:
    # Given runs that notify on change by mail, through the lab's Internet mail host found in the lab's DNS,
    # and by webhook; this test's mail is told apart by the name the runs announce (the sender's domain)
    marker = f"u{uuid.uuid4().hex}.diag.invalid"
    notification = Notification(NotifyPolicy.CHANGE, mail="postmaster@tailspintoys.com",
                                smtp_server=f"mail.tailspintoys.com:{lab.smtp_port}", webhook=hook)  # fmt: skip
    history = tmp_path / "history.sqlite3"

    def run(warn_days: int) -> int:
        options = lab.run_options(timeout=5, ehlo_name=marker, cert_warn_days=warn_days)
        return execute(request_for(lab, "contoso.com", options=options, notification=notification, history=history))

    # When a first run is fine, a second finds the certificate expiring within a year, a third finds the same
    codes = [run(30), run(365), run(365)]

    # Then only the second run is reported, once by each means
    assert codes == [0, 1, 1]
    assert [sent["status"] for sent in Hook.received] == ["warning"]
    mails = delivered(lab.mailbox("postmaster@tailspintoys.com"), marker)
    assert [mail["Subject"] for mail in mails] == ["diag: WARNING for contoso.com"]


def test_a_failed_notification_is_one_line_on_stderr_and_keeps_the_exit_code(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a webhook on a loopback port nobody listens on
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/diag"
    notification = Notification(NotifyPolicy.ALWAYS, webhook=url)

    # When a run with a problem notifies it
    code = execute(request_for(lab, "expired.example", notification=notification, keep_history=False))

    # Then the run's own exit code stands, and stderr has one line saying why nobody heard of it
    assert code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("diag: notification failed: ") and "refused" in line.lower()


def test_a_lab_request_runs_in_a_throw_away_lab_with_its_resolver_port_and_cas(tmp_path: Path) -> None:
    # Given the options of a machine with no route to the lab (the system resolver, port 25, the system's CAs)
    registry = default_registry().select(["certificate"])
    outputs = Outputs(json=str(tmp_path / "r.json"))
    request = CheckRequest(("contoso.com",), registry, RunOptions(timeout=5), outputs=outputs, checks=("certificate",),
                           lab=True, keep_history=False)  # fmt: skip

    # When it is executed with lab
    code = execute(request)

    # Then the lab's resolver, port and CA were used: the certificate was reached and verified
    document = json.loads((tmp_path / "r.json").read_text())
    results = {result["id"]: result["status"] for result in document["domains"][0]["checks"]}
    assert (code, results) == (0, {"mx": "completed", "port25": "completed", "certificate": "completed"})


def test_the_job_of_a_request_is_the_job_of_its_command_line(lab: Lab, tmp_path: Path) -> None:
    outputs = Outputs(json="-", html=tmp_path / "r.html")
    request = request_for(lab, "contoso.com", checks=("mx",), outputs=outputs, config=Path("contoso.toml"),
                          history=tmp_path / "h.db")  # fmt: skip
    assert request.job == Job.of("check", ["contoso.com"], checks=["mx"], config=Path("contoso.toml"),
                                 outputs={"--html": tmp_path / "r.html", "--history": tmp_path / "h.db"})  # fmt: skip
    assert replace(request, keep_history=False).job == Job.of(
        "check", ["contoso.com"], checks=["mx"], config=Path("contoso.toml"), outputs={"--html": tmp_path / "r.html"}
    )
    # The default history file is not spelled out: the job stays the same when $XDG_DATA_HOME changes.
    assert replace(request, history=None).job == replace(request, keep_history=False).job


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"html": Path("/nonexistent/dir/r.html")}, ConfigError,
         "--html '/nonexistent/dir/r.html': directory '/nonexistent/dir' does not exist"),
        ({"json": "/nonexistent/r.json"}, ConfigError,
         "--json '/nonexistent/r.json': directory '/nonexistent' does not exist"),
        ({"json": "-", "view": View.NAGIOS}, UsageError,
         "--json - and --format nagios both want stdout; write the JSON to a file"),
    ],
)
def test_outputs_that_cannot_be_written_are_refused_when_asked_for(
    fields: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        Outputs(**fields)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mail": "postmaster@contoso.com"}, "--notify-mail needs --smtp-server HOST[:PORT] to submit the report to"),
        ({"mail": "not an address", "smtp_server": "smtp.contoso.com"}, "--notify-mail"),
        ({"webhook": "ftp://hooks.example/diag"}, "--webhook"),
        ({"smtp_server": "smtp.contoso.com:submission"}, "--smtp-server 'smtp.contoso.com:submission': port"),
    ],
)
def test_a_notification_that_cannot_be_sent_is_refused_when_asked_for(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as raised:
        Notification(NotifyPolicy.CHANGE, **fields)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_write_output_replaces_a_file_whole_and_names_the_option_when_it_cannot(tmp_path: Path) -> None:
    target = tmp_path / "r.txt"
    target.write_text("old, and longer than the new text\n")
    write_output(str(target), "new\n", option="--prom")
    assert target.read_text() == "new\n" and target.stat().st_mode & 0o777 == 0o644
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^--junit '.*/file/r.xml': cannot write it: Not a directory$"):
        write_output(str(tmp_path / "file" / "r.xml"), "x", option="--junit")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file", "r.txt"]


def delivered(maildir: Path, marker: str, *, wait: float = 10.0) -> list[EmailMessage]:
    """The messages in ``maildir`` that mention ``marker``; a relay files a message a moment after its 250."""
    deadline = time.monotonic() + wait
    while True:
        found = []
        if maildir.exists():
            box = mailbox.Maildir(maildir, factory=None, create=False)
            for key in box.keys():
                raw = box.get_bytes(key)
                if marker.encode() in raw:
                    message = email.message_from_bytes(raw, policy=email.policy.default)
                    assert isinstance(message, EmailMessage)
                    found.append(message)
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)
