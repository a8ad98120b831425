"""A lock against overlapping runs: an hourly cron job must not start while the last one is still running.

    with RunLock(default_lock_path()):
        ...

The lock is ``flock(LOCK_EX | LOCK_NB)`` on a lock file. The kernel releases it when the holder's file
descriptor is closed, so a run that crashes or is killed leaves no stale lock behind; the PID written into
the file is for people only ("who holds it?"), never for deciding. The file itself is kept: unlinking a lock
file lets a third process lock a fresh inode while a second one still waits on the old one.

Default path (:func:`default_lock_path`): one file per *job* (a hash of the normalised command, see
:class:`diag.unattended.Job`), so that only a second copy of the same cron job is refused while unrelated jobs run
side by side: ``$XDG_CACHE_HOME/diag/diag-<job>.lock``; without it, for root ``/run/diag-<job>.lock`` when
``/run`` is writable, else ``~/.cache/diag/diag-<job>.lock``. ``$XDG_RUNTIME_DIR`` is
deliberately *not* used: cron does not set it while a login shell or a systemd user timer does, so a cron run
and a manual run would lock different files and overlap after all.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path
from types import TracebackType

from diag.errors import UsageError

__all__ = ["RunLock", "default_lock_path"]

# The PID is a handful of digits; more is not a PID this module wrote.
_PID_BYTES = 32


def default_lock_path(job_key: str) -> Path:
    """Where the lock of the job ``job_key`` lives when ``--lock`` is not given (see the module docstring)."""
    name = f"diag-{job_key}.lock"
    cache = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG base directory spec: a relative path is invalid and must be ignored. An explicit cache directory
    # wins, so that separate environments (and test runs) do not share one lock.
    if os.path.isabs(cache):
        return Path(cache) / "diag" / name
    if os.geteuid() == 0 and os.access("/run", os.W_OK):
        return Path("/run") / name
    return Path.home() / ".cache" / "diag" / name


class RunLock:
    """An exclusive, non-blocking lock on ``path``; a context manager.

    Entering creates the file (mode 0600, parent directories 0700) if needed, locks it and writes this
    process's PID into it. When another process (or another ``RunLock`` in this one) holds it, entering
    raises :class:`~diag.errors.UsageError` naming the file and the holder's PID (exit 3, CONTRACT.md).
    Leaving unlocks and closes it; the kernel does the same if the process dies.
    """

    __slots__ = ("_fd", "_job", "_path")

    def __init__(self, path: Path, *, job: str | None = None) -> None:
        self._path = Path(path)
        self._job = job  # what the lock guards, for the refusal ("check contoso.com")
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def locked(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise UsageError(f"the lock {self._path} is already held by this run")
        try:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # O_NOFOLLOW: in a shared directory a planted symlink must not make us truncate another file.
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as error:
            raise UsageError(
                f"cannot open the lock file {self._path}: {error.strerror}; use --lock to choose another file"
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _NotALock("not a regular file")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _read_pid(fd) == "unknown" and os.pread(fd, 1, 0):
                # Something else's file (a mistyped --lock): writing our PID would truncate it.
                fcntl.flock(fd, fcntl.LOCK_UN)
                raise _NotALock("it holds something other than a PID, which locking it would overwrite")
        except _NotALock as problem:
            os.close(fd)
            raise UsageError(
                f"{self._path} is not a diag lock file ({problem}); use --lock to choose another file"
            ) from None
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            run = f"another diag run of this job ({self._job})" if self._job else "another diag run"
            raise UsageError(
                f"{run} holds the lock {self._path} (pid {holder}); wait for it or use --lock to choose another file"
            ) from None
        except OSError as error:
            os.close(fd)
            raise UsageError(f"cannot lock {self._path}: {error.strerror}; use --lock to choose another file") from None
        # The PID is a courtesy to people; a full disk must not stop the run that holds the lock.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the PID would mislead once we are gone
        # Closing the descriptor releases the flock.
        os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({str(self._path)!r}, locked={self.locked})"


class _NotALock(Exception):
    """The lock path names something that is not ours to lock."""


def _read_pid(fd: int) -> str:
    """The PID the holder wrote, or "unknown" (it may not have written it yet)."""
    try:
        text = os.pread(fd, _PID_BYTES, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"
