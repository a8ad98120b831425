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

What runs from cron must work there, so ``diag schedule`` first passes the command through :func:`prepare`: it is
parsed by diag's own click commands as it will be then (an unknown option, a bad value or a missing input file is
refused now, once, rather than every half hour by mail), and every relative path becomes absolute, since cron
starts commands in the home directory and systemd in ``/``. Which values are paths, and which of them diag reads
or writes, comes from the options' click types: ``click.Path(exists=True)`` is an input that must exist,
``click.Path(writable=True)`` an output whose directory must exist, ``-`` (where allowed) stays standard
input or output.
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
from pathlib import Path
from typing import TYPE_CHECKING, Final

from diag.errors import DiagError, UsageError
from diag.frozen import frozen

if TYPE_CHECKING:
    import click

__all__ = [
    "Prepared",
    "ScheduleError",
    "SystemdInstall",
    "crontab_line",
    "default_unit_directory",
    "diag_command",
    "install_crontab",
    "install_systemd",
    "prepare",
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


@frozen
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


@frozen
class _Interval:
    minutes: int

    @property
    def label(self) -> str:
        if self.minutes == 60:
            return "hourly"
        if self.minutes == _MINUTES_PER_DAY:
            return "daily"
        return f"every {self.minutes} minutes"


@frozen
class Prepared:
    """A command line checked by :func:`prepare`.

    Attributes:
        argv: the arguments to schedule, relative paths made absolute; otherwise as given.
        command: the command they run, as words (``("check",)``, ``("relay", "queue")``).
    """

    argv: tuple[str, ...]
    command: tuple[str, ...]


def prepare(group: click.Group, argv: Sequence[str], *, name: str = "diag") -> Prepared:
    """Parse ``argv`` with ``group`` (diag's click commands) without running it, and make its paths absolute.

    Relative paths are taken from the current directory, which is also where inputs are checked to exist. Raises
    :class:`UsageError` with one line for what the command would refuse when it runs: an unknown command or
    option, a bad value, a missing input, an output in a directory that does not exist, or ``--help``/
    ``--version`` (which would only print).
    """
    import click

    words: list[str] = []
    tokens = list(argv)
    command: click.Command = group
    parent: click.Context | None = None
    path = name
    out: list[str] = []
    while True:
        probe = click.Context(command, info_name=path.rpartition(" ")[2], parent=parent, **command.context_settings)
        try:
            rewritten, remaining = _walk(command, command.get_params(probe), tokens)
            if isinstance(command, click.Group) and not remaining and not command.invoke_without_command:
                raise UsageError(f"'{path}' needs a command (see '{path} --help')")
            # Parsing alone: values are converted and checked (and eager --help/--version were refused above).
            ctx = command.make_context(path.rpartition(" ")[2], list(tokens), parent=parent)
        except click.exceptions.NoArgsIsHelpError:
            raise UsageError(f"'{path}' needs a command (see '{path} --help')") from None
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else path
            raise UsageError(f"{exc.format_message()} (see '{where} --help')".replace("\n", " ")) from None
        out += rewritten
        if not isinstance(command, click.Group) or not remaining:
            break
        try:
            sub, found, rest = command.resolve_command(ctx, remaining)
        except click.UsageError as exc:
            raise UsageError(f"{exc.format_message()} (see '{path} --help')") from None
        assert sub is not None and found is not None
        out.append(remaining[0])
        words.append(sub)
        command, parent, tokens, path = found, ctx, rest, f"{path} {sub}"
    return Prepared(tuple(out), tuple(words))


def _walk(
    command: click.Command, params: Sequence[click.Parameter], words: Sequence[str]
) -> tuple[list[str], list[str]]:
    """``words`` with path values made absolute, as click's parser reads them (click.parser: long options with
    ``=`` or a separate value, clusters of short flags, a short option's attached value, ``--`` ending options),
    and, for a group, the tokens from its command on (which are left as they are, for the next level)."""
    import click

    options: dict[str, click.Option] = {}
    for param in params:
        if isinstance(param, click.Option):
            for opt in (*param.opts, *param.secondary_opts):
                options[opt] = param
    arguments = [param for param in params if isinstance(param, click.Argument)]
    group = isinstance(command, click.Group)
    out = list(words)
    positional: list[int] = []
    i = 0
    while i < len(out):
        word = out[i]
        if word == "--":
            positional += range(i + 1, len(out))
            break
        if len(word) > 1 and word.startswith("-"):
            i = _option(out, i, options)
            continue
        if group:
            return out[:i], out[i:]
        positional.append(i)
        i += 1
    # Extra positional values (which click refuses) have no argument and stay as they are.
    for index, argument in zip(positional, _assign(arguments, len(positional)), strict=False):
        out[index] = _path_value(argument, out[index])
    return out, []


def _option(out: list[str], i: int, options: Mapping[str, click.Option]) -> int:
    """Rewrite the option at ``out[i]`` (and its values); the index after it. Unknown options are left to click."""
    word = out[i]
    long, eq, attached = word.partition("=")
    if long in options:
        param = _schedulable(long, options[long])
        if eq:
            out[i] = f"{long}={_path_value(param, attached)}"
            return i + 1
        return _values(out, i + 1, param)
    for position in range(1, len(word)):
        param_ = options.get(f"-{word[position]}")
        if param_ is None:
            return i + 1
        _schedulable(f"-{word[position]}", param_)
        if _takes_value(param_):
            if position + 1 < len(word):
                out[i] = word[: position + 1] + _path_value(param_, word[position + 1 :])
                return i + 1
            return _values(out, i + 1, param_)
    return i + 1


def _schedulable(opt: str, param: click.Option) -> click.Option:
    # Eager options that are no value of the command (--help, --version) print and exit as soon as they are
    # parsed: refused before parsing, so that checking the command prints nothing.
    if param.is_eager and not param.expose_value:
        what = max(param.opts, key=len).lstrip("-")
        raise UsageError(f"{opt}: the scheduled command would only print its {what}; leave {opt} out")
    return param


def _takes_value(param: click.Option) -> bool:
    return not (param.is_flag or param.count)


def _values(out: list[str], start: int, param: click.Option) -> int:
    if not _takes_value(param):
        return start
    end = min(start + max(param.nargs, 1), len(out))
    for index in range(start, end):
        out[index] = _path_value(param, out[index])
    return end


def _assign(arguments: Sequence[click.Argument], count: int) -> list[click.Argument]:
    """Which argument each of ``count`` positional values goes to (click.parser._unpack_args, for nargs 1 and
    at most one nargs=-1)."""
    fixed = sum(max(argument.nargs, 0) for argument in arguments)
    taken: list[click.Argument] = []
    for argument in arguments:
        many = count - fixed if argument.nargs == -1 else argument.nargs
        taken += [argument] * max(many, 0)
    return taken[:count]


def _path_value(param: click.Parameter, value: str) -> str:
    """``value`` made absolute when ``param`` takes a path; an output's directory must exist."""
    import click

    kind = param.type
    if not isinstance(kind, click.Path) or (kind.allow_dash and value == "-"):
        return value
    absolute = Path(value).absolute()
    if kind.writable and not kind.exists and not absolute.parent.is_dir():
        label = max(param.opts, key=len) if isinstance(param, click.Option) else param.human_readable_name
        raise UsageError(f"{label} {value!r}: directory {str(absolute.parent)!r} does not exist")
    return str(absolute)


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
    # -P: cron's working directory (the home directory) is not put first on the path, as -m alone would, so a
    # diag directory there cannot stand in for the installed one.
    return [os.path.abspath(interpreter or "python3"), "-P", "-m", "diag"]


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
