"""The run lock: one diag run at a time per lock file, released by the kernel even when the holder dies."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from diag.errors import UsageError
from diag.lock import RunLock, default_lock_path

HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from diag.lock import RunLock

    with RunLock(Path(sys.argv[1])):
        print("locked", flush=True)
        sys.stdin.read()  # hold until the test closes our stdin (or kills us)
    print("released", flush=True)
    """
)


def test_second_holder_in_the_same_process_gets_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "diag.lock"
    with RunLock(path) as first:
        assert first.locked
        with pytest.raises(UsageError) as raised, RunLock(path):
            pass
    message = str(raised.value)
    assert message == (
        f"another diag run holds the lock {path} (pid {os.getpid()}); wait for it or use --lock to choose another file"
    )
    assert "\n" not in message


def test_lock_can_be_taken_again_after_release(tmp_path: Path) -> None:
    path = tmp_path / "diag.lock"
    with RunLock(path):
        pass
    with RunLock(path) as again:
        assert again.locked
    assert not again.locked


def test_lock_file_is_private_and_holds_the_pid(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "diag.lock"
    with RunLock(path):
        assert path.read_text() == f"{os.getpid()}\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The file stays (unlinking it would let two runs lock different inodes) but no longer names us.
    assert path.exists()
    assert path.read_text() == ""


def test_lock_held_by_another_process_and_released_when_it_dies(tmp_path: Path) -> None:
    path = tmp_path / "diag.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match=rf"\(pid {holder.pid}\)"), RunLock(path):
            pass
        # A crash: SIGKILL gives the holder no chance to clean up; the kernel releases the flock.
        holder.kill()
        holder.wait(timeout=10)
        with RunLock(path) as mine:
            assert mine.locked
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)


def test_lock_released_by_a_holder_that_finishes(tmp_path: Path) -> None:
    path = tmp_path / "diag.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "locked"
    holder.stdin.close()
    assert holder.stdout.readline().strip() == "released"
    holder.wait(timeout=10)
    with RunLock(path):
        pass


def test_symlinked_lock_file_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    link = tmp_path / "diag.lock"
    link.symlink_to(victim)
    with pytest.raises(UsageError, match="cannot open the lock file"), RunLock(link):
        pass
    assert victim.read_text() == "keep me"


def test_a_file_that_is_not_a_lock_is_refused_and_left_intact(tmp_path: Path) -> None:
    # A mistyped --lock must not truncate someone's file, nor replace a device with a lock
    precious = tmp_path / "notes.txt"
    precious.write_text("precious\n")
    with pytest.raises(UsageError, match=r"is not a diag lock file \(it holds something other than a PID"):
        RunLock(precious).acquire()
    assert precious.read_text() == "precious\n"
    with pytest.raises(UsageError, match=r"is not a diag lock file \(not a regular file"):
        RunLock(Path("/dev/null")).acquire()


def test_unusable_lock_directory_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="--lock"), RunLock(blocker / "diag.lock"):
        pass


def test_default_lock_path_for_a_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "runtime"))
    # XDG_RUNTIME_DIR is ignored on purpose: cron does not set it, so cron and shell runs would lock different files.
    assert default_lock_path("0123") == tmp_path / "cache" / "diag" / "diag-0123.lock"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert default_lock_path("0123") == Path.home() / ".cache" / "diag" / "diag-0123.lock"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_lock_path("0123") == Path.home() / ".cache" / "diag" / "diag-0123.lock"


def test_default_lock_path_for_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    # An explicit cache directory wins, so separate environments (and test runs) never share a lock...
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_lock_path("0123") == tmp_path / "cache" / "diag" / "diag-0123.lock"
    # ...otherwise root (cron sets no XDG variables) uses the system's runtime directory.
    monkeypatch.delenv("XDG_CACHE_HOME")
    writable = os.access("/run", os.W_OK)
    expected = Path("/run/diag-0123.lock") if writable else Path.home() / ".cache" / "diag" / "diag-0123.lock"
    assert default_lock_path("0123") == expected
