"""Scheduling: crontab lines and systemd units that run exactly the given diag command."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from diag.errors import UsageError
from diag.schedule import (
    ScheduleError,
    crontab_line,
    default_unit_directory,
    diag_command,
    install_crontab,
    install_systemd,
    systemd_units,
)

DIAG = ["/opt/diag tools/bin/diag"]
ARGV = ["check", "contoso.com", "--quiet", "--json", "/var/lib/diag/run 100%.json", "--mail-to", "it's@contoso.com"]


def _cron_command(line: str) -> str:
    """What cron hands to /bin/sh: the line after the five time fields, with ``\\%`` unescaped."""
    command = line.split(None, 5)[5]
    assert re.search(r"(?<!\\)%", command) is None, "an unescaped % would end the command"
    return command.replace(r"\%", "%")


def _systemd_words(exec_start: str) -> list[str]:
    """ExecStart split as systemd.service(5) describes it: quotes, C escapes, %% and $$."""
    words: list[str] = []
    i, text = 0, exec_start
    while i < len(text):
        if text[i] == " ":
            i += 1
            continue
        word = ""
        if text[i] == '"':
            i += 1
            while text[i] != '"':
                if text[i] == "\\":
                    i += 1
                word += text[i]
                i += 1
            i += 1
        elif text.startswith("\\;", i):
            word, i = ";", i + 2
        else:
            while i < len(text) and text[i] != " ":
                word += text[i]
                i += 1
        words.append(word)
    for word in words:
        assert re.search(r"(?<!%)%(?!%)", word.replace("%%", "")) is None, "a lone % is a specifier"
    return [w.replace("%%", "%").replace("$$", "$") for w in words]


def test_crontab_line_runs_exactly_the_command() -> None:
    line = crontab_line(ARGV, executable=DIAG)
    assert shlex.split(_cron_command(line)) == DIAG + ARGV
    assert r"'/var/lib/diag/run 100\%.json'" in line
    minute, hour, day, month, weekday = line.split()[:5]
    assert 0 <= int(minute) < 60 and (hour, day, month, weekday) == ("*", "*", "*", "*")
    # Same command, same line (install_crontab relies on it)
    assert crontab_line(ARGV, executable=DIAG) == line


@pytest.mark.parametrize(
    ("every", "pattern"),
    [
        ("hourly", r"\d+ \* \* \* \*"),
        ("daily", r"\d+ \d+ \* \* \*"),
        ("15", r"(\*|\d+-59)/15 \* \* \* \*"),
        ("15m", r"(\*|\d+-59)/15 \* \* \* \*"),
        ("5min", r"(\*|\d+-59)/5 \* \* \* \*"),
        ("1", r"\* \* \* \* \*"),
        ("60", r"\d+ \* \* \* \*"),
        ("120", r"\d+ \*/2 \* \* \*"),
        ("1440", r"\d+ \d+ \* \* \*"),
    ],
)
def test_crontab_intervals(every: str, pattern: str) -> None:
    line = crontab_line(["check", "contoso.com"], every=every, executable=DIAG)
    assert re.fullmatch(pattern, " ".join(line.split()[:5])), line


@pytest.mark.parametrize("every", ["7", "0", "90", "weekly", "", "-5", "1441", "2880"])
def test_invalid_every_is_a_one_line_usage_error(every: str) -> None:
    for build in (crontab_line, systemd_units):
        with pytest.raises(UsageError) as raised:
            build(["check", "contoso.com"], every=every, executable=DIAG)
        assert str(raised.value).startswith(f"--every {every!r}: use hourly, daily, or a number of minutes")
        assert "\n" not in str(raised.value)


def test_line_breaks_cannot_be_scheduled() -> None:
    with pytest.raises(UsageError, match="line breaks"):
        crontab_line(["check", "contoso.com\n* * * * * rm -rf ~"], executable=DIAG)
    with pytest.raises(UsageError, match="line breaks"):
        systemd_units(["check", "contoso.com\nExecStartPost=/bin/evil"], executable=DIAG)


def test_bytes_that_are_not_utf8_are_refused_in_one_line() -> None:
    """Given an argument with bytes that are not UTF-8, as Python's argv carries them (PEP 383)."""
    word = os.fsdecode(b"\xff.com")
    for build in (crontab_line, systemd_units):
        with pytest.raises(UsageError) as raised:
            build(["check", word], executable=DIAG)
        assert str(raised.value).startswith(r"argument '\xff.com': bytes that are not UTF-8 cannot be scheduled")


def test_relative_executable_is_refused() -> None:
    with pytest.raises(UsageError, match="absolute path"):
        crontab_line(["check"], executable=["diag"])


def test_systemd_units_run_exactly_the_command() -> None:
    argv = [*ARGV, "$HOME", 'say "hi"', "back\\slash", ";", ""]
    units = systemd_units(argv, executable=DIAG)
    assert sorted(units) == ["diag.service", "diag.timer"]
    service, timer = units["diag.service"], units["diag.timer"]
    (exec_start,) = [line[len("ExecStart=") :] for line in service.splitlines() if line.startswith("ExecStart=")]
    assert _systemd_words(exec_start) == DIAG + argv
    assert '"/var/lib/diag/run 100%%.json"' in exec_start
    assert '"$$HOME"' in exec_start
    assert "Type=oneshot" in service
    assert "OnCalendar=hourly" in timer
    assert "Persistent=true" in timer
    delay = int(re.search(r"RandomizedDelaySec=(\d+)", timer).group(1))  # type: ignore[union-attr]
    assert 0 < delay <= 300
    assert "WantedBy=timers.target" in timer


@pytest.mark.parametrize(
    ("every", "calendar"), [("hourly", "hourly"), ("daily", "daily"), ("15", "*:00/15:00"), ("360", "00/6:00:00")]
)
def test_systemd_calendar(every: str, calendar: str) -> None:
    timer = systemd_units(["check", "contoso.com"], every=every, executable=DIAG)["diag.timer"]
    assert f"OnCalendar={calendar}\n" in timer
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:
        checked = subprocess.run([analyze, "calendar", calendar], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    units = systemd_units(["-c", "print('100%')", "a b"], executable=[sys.executable], name="diag-test")
    for name, content in units.items():
        (tmp_path / name).write_text(content)
    checked = subprocess.run(
        [analyze, "verify", *(str(tmp_path / name) for name in units)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr
    assert "diag-test" not in checked.stderr, checked.stderr


def test_systemd_environment_file_and_name() -> None:
    units = systemd_units(["check"], executable=DIAG, name="diag-contoso", environment_file=Path("/etc/diag/env"))
    assert sorted(units) == ["diag-contoso.service", "diag-contoso.timer"]
    assert "EnvironmentFile=-/etc/diag/env\n" in units["diag-contoso.service"]
    assert "Run diag-contoso.service (hourly)" in units["diag-contoso.timer"]
    for bad in ("diag.service", "a/b", "", "x y"):
        with pytest.raises(UsageError, match="--name"):
            systemd_units(["check"], executable=DIAG, name=bad)


def test_install_systemd_writes_units_and_never_runs_systemctl(tmp_path: Path) -> None:
    units = systemd_units(["check", "contoso.com"], executable=DIAG)
    directory = tmp_path / "systemd" / "user"

    done = install_systemd(units, directory, system=False)

    assert done.paths == (directory / "diag.service", directory / "diag.timer")
    for path in done.paths:
        assert path.read_text() == units[path.name]
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert done.command == "systemctl --user daemon-reload && systemctl --user enable --now diag.timer"
    assert "loginctl enable-linger" in done.note
    assert sorted(p.name for p in directory.iterdir()) == ["diag.service", "diag.timer"]  # no temporary left

    # Running it again (say with another interval) replaces diag's own files
    again = install_systemd(systemd_units(["check"], every="15", executable=DIAG), directory, system=True)
    assert "OnCalendar=*:00/15:00" in (directory / "diag.timer").read_text()
    assert again.command == "systemctl daemon-reload && systemctl enable --now diag.timer"
    assert again.note == ""


def test_install_systemd_does_not_overwrite_foreign_units(tmp_path: Path) -> None:
    (tmp_path / "diag.service").write_text("[Service]\nExecStart=/usr/local/bin/my-own-diag\n")
    with pytest.raises(ScheduleError, match="was not written by diag"):
        install_systemd(systemd_units(["check"], executable=DIAG), tmp_path)
    assert "my-own-diag" in (tmp_path / "diag.service").read_text()
    assert not (tmp_path / "diag.timer").exists()


def test_default_unit_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_unit_directory() == tmp_path / "systemd" / "user"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_unit_directory() == Path("/etc/systemd/system")


def test_diag_command_is_this_installation() -> None:
    command = diag_command()
    assert os.path.isabs(command[0])
    beside = Path(sys.executable).parent / "diag"
    if beside.exists():
        assert command == [os.path.abspath(beside)]
    else:
        assert command[1:] in ([], ["-P", "-m", "diag"])
    # And it runs
    version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "diag" in version.stdout


# -- crontab, with a stand-in crontab program that keeps the table in a file ---------------------------------

FAKE_CRONTAB = """#!/bin/sh
table="$FAKE_CRONTAB_FILE"
case "$1" in
  -l) if [ -f "$table" ]; then cat "$table"; else echo "no crontab for $(id -un)" >&2; exit 1; fi ;;
  -) cat > "$table" ;;
  *) echo "usage: crontab [-l | -]" >&2; exit 2 ;;
esac
"""


@pytest.fixture
def fake_crontab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    program = tmp_path / "bin" / "crontab"
    program.parent.mkdir()
    program.write_text(FAKE_CRONTAB)
    program.chmod(0o755)
    table = tmp_path / "table"
    monkeypatch.setenv("FAKE_CRONTAB_FILE", str(table))
    return str(program), table


def test_install_crontab_appends_once(fake_crontab: tuple[str, Path]) -> None:
    program, table = fake_crontab
    line = crontab_line(ARGV, executable=DIAG)

    # Given no crontab yet, when installing twice
    assert install_crontab(line, crontab=program) is True
    assert install_crontab(line, crontab=program) is False

    # Then the line is there once
    assert table.read_text() == line + "\n"


def test_install_crontab_keeps_existing_entries(fake_crontab: tuple[str, Path]) -> None:
    program, table = fake_crontab
    table.write_text("MAILTO=admin@contoso.com\n0 3 * * * /usr/bin/backup")  # no final newline
    line = crontab_line(["check", "contoso.com"], executable=DIAG)
    assert install_crontab(line, crontab=program) is True
    assert table.read_text() == f"MAILTO=admin@contoso.com\n0 3 * * * /usr/bin/backup\n{line}\n"


def test_install_crontab_reports_failures(tmp_path: Path, fake_crontab: tuple[str, Path]) -> None:
    with pytest.raises(ScheduleError, match="'/nonexistent/crontab' command is not installed"):
        install_crontab("0 * * * * /bin/true", crontab="/nonexistent/crontab")
    failing = tmp_path / "bin" / "failing-crontab"
    failing.write_text("#!/bin/sh\necho 'crontab: cannot open /var/spool/cron: Permission denied' >&2\nexit 1\n")
    failing.chmod(0o755)
    with pytest.raises(ScheduleError, match=r"^crontab -l failed: crontab: cannot open /var/spool/cron: Permission"):
        install_crontab("0 * * * * /bin/true", crontab=str(failing))
    with pytest.raises(UsageError, match="one non-empty line"):
        install_crontab("0 * * * * /bin/true\n0 * * * * /bin/evil", crontab=fake_crontab[0])


# --- prepare: the command checked as diag will parse it, its paths made absolute ------------------------------


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with an input file of each kind and an output directory."""
    for name in ("contoso.toml", "domains.txt", "ca.pem", "a.json", "b.json", "result.json"):
        (tmp_path / name).write_text("x")
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_prepare_makes_every_path_absolute_however_it_is_spelled(here: Path) -> None:
    from diag.cli import cli
    from diag.schedule import prepare

    argv = ["-q", "check", "contoso.com", "--config", "contoso.toml", "--domains-file=domains.txt", "--ca-file",
            "./ca.pem", "--html", "out/r.html", "--json", "-", "--prom=out/m.prom", "--lock", "out/l", "-v",
            "--timeout", "5", "--", "fabrikam.com"]  # fmt: skip

    prepared = prepare(cli, argv)

    assert prepared.command == ("check",)
    assert prepared.argv == (
        "-q", "check", "contoso.com", "--config", f"{here}/contoso.toml", f"--domains-file={here}/domains.txt",
        "--ca-file", f"{here}/ca.pem", "--html", f"{here}/out/r.html", "--json", "-", f"--prom={here}/out/m.prom",
        "--lock", f"{here}/out/l", "-v", "--timeout", "5", "--", "fabrikam.com",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "expected", "command"),
    [
        (["config", "import", "a.json", "b.json", "-oout/c.toml"],
         ["config", "import", "{here}/a.json", "{here}/b.json", "-o{here}/out/c.toml"], ("config", "import")),
        (["config", "check", "--", "contoso.toml"], ["config", "check", "--", "{here}/contoso.toml"],
         ("config", "check")),
        (["report", "result.json", "--html", "out/r.html"], ["report", "{here}/result.json", "--html",
         "{here}/out/r.html"], ("report",)),
        (["report", "-"], ["report", "-"], ("report",)),
        (["relay", "--config", "contoso.toml", "--spool", "spool", "queue"],
         ["relay", "--config", "{here}/contoso.toml", "--spool", "{here}/spool", "queue"], ("relay", "queue")),
        (["lab", "serve", "--dir", "not/yet"], ["lab", "serve", "--dir", "{here}/not/yet"], ("lab", "serve")),
        (["--no-color", "check", "-qv", "contoso.com"], ["--no-color", "check", "-qv", "contoso.com"], ("check",)),
    ],
)
def test_prepare_reads_arguments_and_subcommands(
    here: Path, argv: list[str], expected: list[str], command: tuple[str, ...]
) -> None:
    from diag.cli import cli
    from diag.schedule import prepare

    prepared = prepare(cli, argv)

    assert prepared.argv == tuple(word.format(here=here) for word in expected)
    assert prepared.command == command


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "contoso.com", "--frobnicate"], "No such option '--frobnicate'"),
        (["check", "contoso.com", "--config", "missing.toml"],
         "--config 'missing.toml': cannot read it: No such file or directory (see 'diag check --help')"),
        (["check", "contoso.com", "--config", "out"], "--config 'out': a directory, not a file"),
        (["report", "missing.json"], "missing.json: cannot read it: No such file or directory"),
        (["check", "contoso.com", "--json", "nowhere/r.json"], "--json 'nowhere/r.json': directory '{here}/nowhere' "
         "does not exist"),
        (["config", "import", "a.json", "-o", "nowhere/c.toml"], "--output 'nowhere/c.toml': directory"),
        (["check", "contoso.com", "--smtp-port", "0"], "--smtp-port 0: must be a whole number between 1 and 65535"),
        (["check", "contoso.com", "--format", "xml"], "Invalid value for '--format'"),
        (["-h"], "-h: the scheduled command would only print its help; leave -h out"),
        (["--version"], "--version: the scheduled command would only print its version"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["lab"], "'diag lab' needs a command (see 'diag lab --help')"),
        (["relay", "--config", "contoso.toml", "frobnicate"], "No such command 'frobnicate'"),
        (["-v", "report", "result.json"], "-v/--verbose does not apply to 'diag report'"),
        (["history", "contoso.com", "extra"], "Got unexpected extra argument (extra)"),
    ],
)
def test_prepare_refuses_in_one_line_what_the_command_would_refuse(here: Path, argv: list[str], message: str) -> None:
    from diag.cli import cli
    from diag.schedule import prepare

    with pytest.raises(UsageError) as raised:
        prepare(cli, argv)

    assert str(raised.value).startswith(message.format(here=here)), raised.value
    assert "\n" not in str(raised.value)
