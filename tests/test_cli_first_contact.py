"""First contact with the command line (issue 10, item 6): the code catalogue, results from a pipe, clear words
for empty files, domains the lab lacks and numbers out of range, IDNs in both forms, options before the command,
and ``diag relay --allow-private``. Real processes, the embedded lab, no mocks."""

from __future__ import annotations

import asyncio
import json
import mailbox
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import click
import pytest

from checks import default_registry
from diag.lab.runner import Lab
from diag.lab.world import BOB


@pytest.fixture(autouse=True)
def private_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every diag process of these tests keeps its history and lock in a directory of its own."""
    home = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    return home


def diag(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diag", *args], capture_output=True, text=True, timeout=timeout,
                          input=stdin, stdin=subprocess.DEVNULL if stdin is None else None)  # fmt: skip


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A saved result (what diag check --json writes) of one domain where all is well."""
    from diag.model import CheckResult, DomainReport, Finding, Report, Severity, Status
    from diag.render.json import report_dict

    at = datetime(2026, 11, 26, 20, 0, tzinfo=UTC)
    found = Finding("MX_OK", Severity.INFO, "mail.contoso.com", "mail.contoso.com (MX preference 10) resolves.")
    result = CheckResult("mx", "MX records", Status.COMPLETED, findings=(found,))
    path = tmp_path / "result.json"
    path.write_text(json.dumps(report_dict(Report(at, at, (DomainReport("contoso.com", (result,)),)))))
    return path


def one_error(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused command writes: exit 3, nothing else on stderr, no traceback."""
    assert done.returncode == 3, (done.returncode, done.stderr)
    (line,) = done.stderr.splitlines()
    assert line.startswith("diag: error: ")
    return line.removeprefix("diag: error: ")


# --- diag codes -------------------------------------------------------------------------------------------------


def test_codes_prints_every_code_with_its_check_severity_and_meaning() -> None:
    declared = [(c.id, c.codes[code].label, code, c.meanings[code]) for c in default_registry() for code in c.codes]

    done = diag("codes")

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(declared)
    for line, (check_id, severity, code, meaning) in zip(lines, declared, strict=True):
        assert re.fullmatch(rf"{check_id} +{severity} +{code} +{re.escape(meaning)}", line), line
    assert re.fullmatch(r"certificate +critical +CERT_EXPIRED +The certificate has expired\.", lines[
        [d[2] for d in declared].index("CERT_EXPIRED")])  # fmt: skip


def test_codes_as_json() -> None:
    done = diag("codes", "--json", "-")

    catalogue = json.loads(done.stdout)
    assert catalogue["schema"] == "diag.codes/1"
    assert {"code": "MX_NULL_ACCEPTED", "check": "mx", "severity": "critical",
            "meaning": default_registry()["mx"].meanings["MX_NULL_ACCEPTED"]} in catalogue["codes"]  # fmt: skip
    assert len(catalogue["codes"]) == sum(len(check.codes) for check in default_registry())


# --- diag report - ----------------------------------------------------------------------------------------------


def test_report_reads_a_result_from_standard_input(tmp_path: Path, saved: Path) -> None:
    piped = diag("report", "-", "--format", "nagios", "--html", str(tmp_path / "r.html"), stdin=saved.read_text())

    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == diag("report", str(saved), "--format", "nagios").stdout
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{", "standard input: not JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        ('{"schema": "other/1"}', "standard input: not a diag.report/1 result: "),
    ],
)
def test_report_validates_standard_input_like_a_file(text: str, error: str) -> None:
    assert one_error(diag("report", "-", stdin=text)).startswith(error)


def test_report_refuses_facts_that_do_not_read_back(tmp_path: Path, saved: Path) -> None:
    """A saved result goes back through Report.from_json: facts the check's own class cannot hold are named."""
    document = json.loads(saved.read_text())
    document["domains"][0]["checks"][0]["facts"] = {"domain": "contoso.com", "status": "\u202eok"}
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(document))

    error = one_error(diag("report", str(edited)))

    assert error == (f"{edited}: not a diag.report/1 result: domains/0/checks/0/facts/status: "
                     "'\\u202eok' is not one of ok, nxdomain, nodata")  # fmt: skip


# --- an empty --domains-file ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arguments", [[], ["contoso.com"]])
def test_an_empty_domains_file_says_so(tmp_path: Path, arguments: list[str]) -> None:
    """Refused even beside DOMAIN arguments: a file meant to list domains that lists none is a mistake to show."""
    listed = tmp_path / "domains.txt"
    listed.write_text("# our domains, one per line\n\n   \n")

    error = one_error(diag("check", *arguments, "--domains-file", str(listed), "--lab"))

    assert error == (f"--domains-file {str(listed)!r}: no domain in it (it is empty or has only comments and blank "
                     "lines)")  # fmt: skip


# --- a domain the lab does not have -----------------------------------------------------------------------------


def test_lab_refuses_a_domain_it_does_not_have_and_points_at_its_list() -> None:
    error = one_error(diag("check", "contoso.com", "example.org", "münchen.example", "--lab"))

    assert error == ("the lab has no domain example.org (and 1 more): --lab checks only the lab's own domains "
                     "(see 'diag lab domains')")  # fmt: skip
    assert one_error(diag("check", "münchen.example", "--lab")).startswith(
        "the lab has no domain münchen.example (xn--mnchen-3ya.example): "
    )


# --- internationalized domain names -----------------------------------------------------------------------------


def test_an_idn_is_shown_with_its_a_label_and_the_json_keeps_the_a_label(lab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    reach = lab.option_text().split()

    done = diag("check", "münchen.example", *reach, "--check", "mx", "--json", str(out))

    assert done.returncode == 2, done.stderr
    assert done.stdout.splitlines()[0] == "münchen.example (xn--mnchen-3ya.example): CRITICAL"
    assert [d["domain"] for d in json.loads(out.read_text())["domains"]] == ["xn--mnchen-3ya.example"]


# --- -v, -q and --no-color before the command -------------------------------------------------------------------


def test_quiet_and_verbose_work_before_the_command_too(lab: Lab, saved: Path) -> None:
    loud = diag("report", str(saved))
    assert loud.returncode == 0 and loud.stdout.startswith("contoso.com: OK\n")

    quiet = diag("-q", "report", str(saved))
    verbose = diag("-v", "check", "contoso.com", *lab.option_text().split(), "--check", "mx")

    assert quiet.returncode == 0 and quiet.stdout == ""
    assert verbose.returncode == 0 and re.search(r"^diag: [\w.]+: ", verbose.stderr, re.MULTILINE), verbose.stderr


def test_an_option_before_a_command_that_lacks_it_is_refused() -> None:
    assert one_error(diag("-v", "report", "-")) == "-v/--verbose does not apply to 'diag report' (see 'diag --help')"


def _on_a_terminal(*args: str) -> str:
    """What ``diag *args`` writes to a terminal (a pseudo-terminal that announces colours)."""
    primary, secondary = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"}
    env.pop("NO_COLOR", None)
    with subprocess.Popen([sys.executable, "-m", "diag", *args], stdin=subprocess.DEVNULL, stdout=secondary,
                          stderr=subprocess.DEVNULL, env=env) as process:  # fmt: skip
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        process.wait(timeout=60)
    os.close(primary)
    return b"".join(chunks).decode()


# An SGR sequence that sets a foreground colour (30-37, 90-97, 38;5;n or 38;2;r;g;b).
_COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-79]|9[0-7]|38;[25][0-9;]*)m")


def test_no_color_works_before_the_command_too(saved: Path) -> None:
    coloured = _on_a_terminal("report", str(saved))
    plain = _on_a_terminal("--no-color", "report", str(saved))

    assert "MX_OK" in coloured and _COLOUR.search(coloured)
    assert "MX_OK" in plain and not _COLOUR.search(plain)


# --- our words for numbers out of range -------------------------------------------------------------------------


def _number_options() -> Iterator[tuple[list[str], click.Option]]:
    """Every option of every command that takes a number: (the words that reach its command, the option)."""
    from diag.cli import cli

    def walk(command: click.Command, path: list[str]) -> Iterator[tuple[list[str], click.Option]]:
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(param.type, click.types._NumberParamTypeBase):
                yield path, param
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])

    return walk(cli, [])


NUMBER_OPTIONS = [(path, max(option.opts, key=len)) for path, option in _number_options()]


def test_every_number_option_is_found() -> None:
    assert len(NUMBER_OPTIONS) >= 10 and (["check"], "--timeout") in NUMBER_OPTIONS


@pytest.mark.parametrize(("path", "option"), NUMBER_OPTIONS, ids=[" ".join([*p, o]) for p, o in NUMBER_OPTIONS])
@pytest.mark.parametrize("value", ["x", "-1e9", "1e99", "nan", ""])
def test_a_number_out_of_range_is_refused_in_our_words(path: list[str], option: str, value: str) -> None:
    """Given any number option of any command and a value that is no number or out of its range, then the
    command line is refused in one line of ours (no "is not a valid float range"), without running anything."""
    from diag.cli import cli
    from diag.errors import UsageError
    from diag.schedule import prepare

    with pytest.raises(UsageError) as raised:  # parsing only: the command's own parser, nothing runs
        prepare(cli, [*path, option, value, *(["x.example"] if path == ["check"] else [])])

    shown = value or "''"
    assert re.fullmatch(rf"{option} {re.escape(shown)}: must be (a whole number )?between \S+ and \S+( \w+)? "
                        rf"\(see 'diag {' '.join(path)} --help'\)", str(raised.value)), raised.value  # fmt: skip


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["check", "contoso.com", "--timeout", "0"], "--timeout 0: must be between 0.1 and 600 seconds"),
        (["check", "contoso.com", "--deadline", "soon"], "--deadline soon: must be between 1 and 86400 seconds"),
        (["check", "contoso.com", "--smtp-port", "25.5"], "--smtp-port 25.5: must be a whole number between 1 and "
         "65535"),
        (["check", "contoso.com", "--cert-warn-days", "4000"], "--cert-warn-days 4000: must be a whole number "
         "between 0 and 3650 days"),
        (["history", "--limit", "0"], "--limit 0: must be a whole number between 1 and 10000"),
        (["lab", "serve", "--dns-port", "70000"], "--dns-port 70000: must be a whole number between 1 and 65535"),
    ],
)
def test_the_words_of_a_refused_number(args: list[str], error: str) -> None:
    line = one_error(diag(*args))

    assert line.startswith(error), line
    assert "valid" not in line and "range" not in line


# --- diag relay --allow-private -----------------------------------------------------------------------------------

RELAY_IP = "127.0.64.1"
BRANCH = """
[[AcceptedDomain]]
DomainName = "contoso.com"

[Relay]
Role = "onprem"
Hostname = "branch.contoso.com"
SmartHost = "contoso-com.mail.protection.outlook.com"
Mailboxes = ["branch@contoso.com"]
RelayNetworks = ["127.0.0.0/8"]
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((RELAY_IP, 0))
        return int(sock.getsockname()[1])


def test_relay_allow_private_delivers_to_a_smart_host_on_a_private_address(lab: Lab, tmp_path: Path) -> None:
    """Given an on-premises relay whose smart host (the lab's cloud) has a loopback address, and --allow-private
    on its command line (not AllowPrivate in its file), then mail through it reaches the cloud mailbox."""
    (tmp_path / "branch.toml").write_text(BRANCH)
    port = _free_port()
    relay = subprocess.Popen(
        [sys.executable, "-m", "diag", "relay", "--config", str(tmp_path / "branch.toml"), "--listen",
         f"{RELAY_IP}:{port}", "--spool", str(tmp_path / "spool"), "--maildir", str(tmp_path / "maildir"),
         *lab.option_text().replace("--allow-private", "").split(), "--allow-private"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while relay.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection((RELAY_IP, port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        assert relay.poll() is None, relay.stderr.read() if relay.stderr else ""
        subject = f"private smart host {time.monotonic_ns()}"
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "branch@contoso.com", BOB, subject
        message.set_content("through a smart host on a private address\n")
        asyncio.run(aiosmtplib.send(message, hostname=RELAY_IP, port=port, start_tls=False, timeout=10))
        box = lab.mailbox(BOB)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if box.exists() and any(m["Subject"] == subject for m in mailbox.Maildir(box, create=False)):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"{subject!r} did not reach {BOB}")
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.communicate(timeout=20)
    assert relay.returncode == 0
