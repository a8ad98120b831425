"""Run diag unattended: a crontab line or a systemd timer that runs exactly a given diag command.

    line = crontab_line(["check", "contoso.com", "--quiet"], every="hourly")
    install_crontab(line)                       # appended to the user's crontab, once

    units = systemd_units(["check", "contoso.com", "--quiet"], every="15")
    install_systemd(units)                      # diag.service + diag.timer; prints nothing, runs nothing

The command is the diag of this installation, by absolute path (cron's PATH is minimal): the ``diag`` script
beside the running interpreter, else ``diag`` on PATH, else ``<python> -m diag``. Arguments are quoted for the
shell cron hands the line to (with ``%`` escaped, which cron would turn into a newline) and for systemd's
ExecStart syntax (``%`` specifiers and ``$`` variables escaped), so what runs is exactly the given argv.

``every``: ``hourly``, ``daily``, or a number of minutes that divides an hour or a day evenly (5, 10, 15, 20,
30, 120, 360, …; ``15m`` and ``15min`` are accepted too), since cron and OnCalendar repeat within the hour or
the day. Cron runs at a fixed minute derived from the command, so that two scheduled commands do not start at
the same moment and the same command always yields the same line (which keeps :func:`install_crontab`
idempotent); systemd timers get a small ``RandomizedDelaySec`` instead. Neither starts a run while the last
one is still going: systemd does not restart an active oneshot service, and for cron diag's run lock
(diag.lock) makes the second run exit 3 with one line.

Installing never runs ``systemctl``: :func:`install_systemd` writes the unit files and returns the command to
enable them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from diag.errors import DiagError, UsageError

__all__ = [
    "ScheduleError",
    "SystemdInstall",
    "crontab_line",
    "default_unit_directory",
    "diag_command",
    "install_crontab",
    "install_systemd",
    "systemd_units",
]

_MARKER: Final = "# Written by diag schedule; running it again replaces this file."
_MINUTES_PER_DAY: Final = 24 * 60
# RandomizedDelaySec: a twentieth of the interval, at most five minutes.
_MAX_DELAY: Final = 300
_SUBPROCESS_TIMEOUT: Final = 30
_UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\-]{1,200}")
# Arguments that need no quoting in ExecStart (systemd.service(5), "Command lines").
_SYSTEMD_PLAIN = re.compile(r"[A-Za-z0-9_@+=:,./-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# How Python's argv carries bytes that are not UTF-8 (PEP 383: surrogateescape).
_UNDECODABLE = re.compile("[\udc80-\udcff]")


class ScheduleError(DiagError):
    """The schedule could not be installed (crontab missing or failing, a unit file not writable)."""


@dataclass(frozen=True, slots=True)
class SystemdInstall:
    """What :func:`install_systemd` did.

    Attributes:
        paths: the unit files written.
        command: the shell command that loads and starts the timer (for the user to run).
        note: advice to print with it, or "".
    """

    paths: tuple[Path, ...]
    command: str
    note: str = ""


@dataclass(frozen=True, slots=True)
class _Interval:
    minutes: int

    @property
    def label(self) -> str:
        if self.minutes == 60:
            return "hourly"
        if self.minutes == _MINUTES_PER_DAY:
            return "daily"
        return f"every {self.minutes} minutes"


def _interval(every: str) -> _Interval:
    text = every.strip().lower()
    if text == "hourly":
        return _Interval(60)
    if text == "daily":
        return _Interval(_MINUTES_PER_DAY)
    match = re.fullmatch(r"(\d{1,5})\s*(?:m|min|minutes?)?", text)
    if match is not None:
        minutes = int(match.group(1))
        if 1 <= minutes <= 60 and 60 % minutes == 0:
            return _Interval(minutes)
        if 60 < minutes <= _MINUTES_PER_DAY and minutes % 60 == 0 and _MINUTES_PER_DAY % minutes == 0:
            return _Interval(minutes)
    raise UsageError(
        f"--every {every!r}: use hourly, daily, or a number of minutes that divides an hour or a day evenly "
        "(5, 10, 15, 20, 30, 120, 360, ...)"
    )


def diag_command() -> list[str]:
    """The absolute command that runs this installation's diag."""
    interpreter = sys.executable
    if interpreter:
        beside = Path(os.path.abspath(interpreter)).parent / "diag"
        if beside.is_file() and os.access(beside, os.X_OK):
            return [str(beside)]
    found = shutil.which("diag")
    if found is not None:
        return [os.path.abspath(found)]
    return [os.path.abspath(interpreter or "python3"), "-m", "diag"]


def _command(argv: Sequence[str], executable: Sequence[str] | None) -> list[str]:
    if isinstance(argv, str):
        raise TypeError("argv must be a sequence of arguments, not a string")
    command = [*(executable if executable is not None else diag_command()), *argv]
    for word in command:
        if _CONTROL.search(word):
            raise UsageError(f"argument {word!r}: line breaks and control characters cannot be scheduled")
        if _UNDECODABLE.search(word):
            shown = word.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
            raise UsageError(
                f"argument '{shown}': bytes that are not UTF-8 cannot be scheduled (crontabs and unit files are "
                "written as UTF-8 text)"
            )
    if not os.path.isabs(command[0]):
        raise UsageError(f"{command[0]!r}: the scheduled command needs an absolute path")
    return command


def crontab_line(argv: Sequence[str], *, every: str = "hourly", executable: Sequence[str] | None = None) -> str:
    """The crontab line (no newline) that runs ``diag <argv>``.

    Args:
        argv: diag's arguments, without the program name: ``["check", "contoso.com", "--quiet"]``.
        every: hourly, daily, or minutes (module docstring).
        executable: the program to run instead of :func:`diag_command`.
    """
    interval = _interval(every)
    # crontab(5): an unescaped % ends the command and starts its standard input; cron removes the backslash.
    command = shlex.join(_command(argv, executable)).replace("%", r"\%")
    spread = zlib.crc32(command.encode("utf-8"))
    minute, hour = spread % 60, (spread // 60) % 24
    minutes = interval.minutes
    if minutes < 60:
        offset = minute % minutes
        first = "*" if offset == 0 else f"{offset}-59"
        fields = f"{first}/{minutes} * * * *" if minutes > 1 else "* * * * *"
    elif minutes == 60:
        fields = f"{minute} * * * *"
    elif minutes == _MINUTES_PER_DAY:
        fields = f"{minute} {hour} * * *"
    else:
        fields = f"{minute} */{minutes // 60} * * *"
    return f"{fields} {command}"


def _systemd_word(word: str) -> str:
    """One ExecStart argument, quoted so that systemd passes it on unchanged."""
    if word == ";":
        # A lone ";" separates commands (systemd.service(5)); escaped it is an argument.
        quoted = r"\;"
    elif _SYSTEMD_PLAIN.fullmatch(word):
        quoted = word
    else:
        quoted = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    # Specifiers (%n, %h, ...) and environment variables ($VAR) are expanded everywhere in the line.
    return quoted.replace("%", "%%").replace("$", "$$")


def _oncalendar(interval: _Interval) -> str:
    minutes = interval.minutes
    if minutes == 60:
        return "hourly"
    if minutes == _MINUTES_PER_DAY:
        return "daily"
    if minutes < 60:
        return f"*:00/{minutes}:00"
    return f"00/{minutes // 60}:00:00"


def systemd_units(
    argv: Sequence[str],
    *,
    every: str = "hourly",
    name: str = "diag",
    executable: Sequence[str] | None = None,
    environment_file: Path | None = None,
) -> dict[str, str]:
    """``{name}.service`` (oneshot, runs ``diag <argv>``) and ``{name}.timer``: file name → content.

    Args:
        argv: diag's arguments, without the program name.
        every: hourly, daily, or minutes (module docstring).
        name: the units' name.
        executable: the program to run instead of :func:`diag_command`.
        environment_file: an ``EnvironmentFile=`` for the service, e.g. with ``DIAG_SMTP_PASSWORD``
            (systemd reads it; a missing file is not an error).
    """
    interval = _interval(every)
    if not _UNIT_NAME.fullmatch(name) or name.endswith((".service", ".timer")):
        raise UsageError(f"--name {name!r}: a unit name of letters, digits and -_.: without a suffix")
    exec_start = " ".join(_systemd_word(word) for word in _command(argv, executable))
    environment = ""
    if environment_file is not None:
        if not environment_file.is_absolute() or _CONTROL.search(str(environment_file)):
            raise UsageError(f"environment file {str(environment_file)!r}: give an absolute path")
        environment = f"EnvironmentFile=-{_systemd_word(str(environment_file))}\n"
    delay = min(_MAX_DELAY, interval.minutes * 60 // 20)
    service = (
        f"{_MARKER}\n"
        "[Unit]\n"
        "Description=diag: validate the mail connectors\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"{environment}"
        f"ExecStart={exec_start}\n"
    )
    timer = (
        f"{_MARKER}\n"
        "[Unit]\n"
        f"Description=Run {name}.service ({interval.label})\n"
        "\n"
        "[Timer]\n"
        f"OnCalendar={_oncalendar(interval)}\n"
        "Persistent=true\n"
        f"RandomizedDelaySec={delay}\n"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )
    return {f"{name}.service": service, f"{name}.timer": timer}


def default_unit_directory() -> Path:
    """``/etc/systemd/system`` for root, else ``$XDG_CONFIG_HOME/systemd/user`` or ``~/.config/systemd/user``."""
    if os.geteuid() == 0:
        return Path("/etc/systemd/system")
    config = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(config) if os.path.isabs(config) else Path.home() / ".config"
    return base / "systemd" / "user"


def install_systemd(
    units: Mapping[str, str], directory: Path | None = None, *, system: bool | None = None
) -> SystemdInstall:
    """Write ``units`` into ``directory`` (default :func:`default_unit_directory`); never runs systemctl.

    A file of the same name is replaced only if diag wrote it; otherwise :class:`ScheduleError`. ``system``
    chooses ``systemctl`` or ``systemctl --user`` in the returned command (default: system units for root).
    """
    target = directory if directory is not None else default_unit_directory()
    system = os.geteuid() == 0 if system is None else system
    timers = [unit for unit in units if unit.endswith(".timer")]
    if len(timers) != 1 or any("/" in unit or unit.startswith(".") for unit in units):
        raise UsageError("install_systemd needs the units of systemd_units(): one .timer and its .service")
    for unit in units:
        path = target / unit
        if path.exists() and not _written_by_us(path):
            raise ScheduleError(f"{path} exists and was not written by diag; remove it or choose another --name")
    written = []
    try:
        target.mkdir(parents=True, exist_ok=True)
        for unit, content in units.items():
            written.append(_write_atomically(target / unit, content))
    except OSError as error:
        raise ScheduleError(f"cannot write the unit files into {target}: {error.strerror}") from None
    systemctl = "systemctl" if system else "systemctl --user"
    command = f"{systemctl} daemon-reload && {systemctl} enable --now {shlex.quote(timers[0])}"
    note = (
        ""
        if system
        else "User timers run only while you are logged in unless lingering is on: loginctl enable-linger "
        + shlex.quote(_user_name())
    )
    return SystemdInstall(tuple(written), command, note)


def _written_by_us(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8", errors="replace") as file:
            return file.readline().rstrip("\n") == _MARKER
    except OSError:
        return False


def _write_atomically(path: Path, content: str) -> Path:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(content)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def install_crontab(line: str, *, crontab: str = "crontab") -> bool:
    """Append ``line`` to the user's crontab; False (and no change) when it is already there.

    ``crontab`` is the program to use (``crontab -l`` to read, ``crontab -`` to replace).
    """
    if "\n" in line or "\r" in line or not line.strip():
        raise UsageError("a crontab entry is one non-empty line")
    program = shutil.which(crontab)
    if program is None:
        raise ScheduleError(
            f"the {crontab!r} command is not installed, so there is no crontab to add to; install cron or "
            "schedule diag with a systemd timer"
        )
    listed = _run([program, "-l"], None)
    if listed.returncode == 0:
        current = listed.stdout
    elif "no crontab" in listed.stderr.lower():
        current = ""
    else:
        raise ScheduleError(f"crontab -l failed: {_first_line(listed.stderr) or f'exit {listed.returncode}'}")
    if line.strip() in (existing.strip() for existing in current.splitlines()):
        return False
    if current and not current.endswith("\n"):
        current += "\n"
    replaced = _run([program, "-"], current + line + "\n")
    if replaced.returncode != 0:
        raise ScheduleError(f"crontab - failed: {_first_line(replaced.stderr) or f'exit {replaced.returncode}'}")
    return True


def _run(command: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(  # noqa: S603 - a fixed program with fixed arguments, no shell
            command, input=stdin, capture_output=True, text=True, timeout=_SUBPROCESS_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise ScheduleError(f"{shlex.join(command)} did not finish within {_SUBPROCESS_TIMEOUT} s") from None
    except OSError as error:
        raise ScheduleError(f"cannot run {command[0]}: {error.strerror}") from None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""
