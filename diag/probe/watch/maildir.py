"""A Maildir watcher (``maildir:PATH``): the lab's mailboxes, or any server's that stores mail in Maildir.

The folder at PATH (its ``new/`` and ``cur/``) is watched, and so are its Maildir++ subfolders named like a junk
folder (``.Junk``, ``.Spam``: Dovecot's and Courier's layout). The standard library's :mod:`mailbox` lists and
removes messages; a message is read only up to the header section (or, for a possible DSN, up to
diag.probe.judge.MAX_MESSAGE bytes). Watching is polling with backoff: a directory listing is cheap, and it
needs no inotify dependency.
"""

from __future__ import annotations

import asyncio
import mailbox
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from diag.frozen import frozen
from diag.probe.judge import MAX_HEADERS, MAX_MESSAGE
from diag.probe.watch.base import JUNK_NAMES, Arrival, Candidate, Removal, Watcher, WatchError

__all__ = ["MaildirWatcher"]

INBOX: Final = "INBOX"
_LATE_WINDOW: Final = 200  # how many of the newest messages already there are checked for late probes


@frozen
class _Folder:
    name: str
    path: Path
    junk: bool


class MaildirWatcher(Watcher):
    """Watch the Maildir at ``path`` and its junk subfolders."""

    def __init__(self, path: Path, *, poll_min: float = 0.2, poll_max: float = 2.0) -> None:
        super().__init__(poll_min=poll_min, poll_max=poll_max)
        self.path = path
        self._folders: list[_Folder] = []
        self._before: dict[str, set[str]] = {}
        self._recent: list[tuple[str, str]] = []  # (folder, key) already there at the mark, newest first

    @property
    def where(self) -> str:
        return f"maildir:{self.path}"

    async def _open(self) -> None:
        self._folders = await asyncio.to_thread(self._find_folders)

    def check(self) -> None:
        """Raise WatchError when ``path`` is not a Maildir; looks at its directories, reads no message in it (also
        for ``diag probe --dry-run``)."""
        if not (self.path / "new").is_dir() or not (self.path / "cur").is_dir():
            raise WatchError(f"{self.where} is not a Maildir (it has no new/ and cur/ directories)")

    def _find_folders(self) -> list[_Folder]:
        self.check()
        folders = [_Folder(INBOX, self.path, junk=False)]
        try:
            names = mailbox.Maildir(self.path, factory=None, create=False).list_folders()
        except OSError as exc:
            raise WatchError(f"{self.where} cannot be read: {exc.strerror or exc}") from None
        for name in sorted(names):
            if name.rsplit(".", 1)[-1].lower() in JUNK_NAMES:
                folders.append(_Folder(name, self.path / f".{name}", junk=True))
        return folders

    async def _mark(self) -> None:
        self._before, self._recent = await asyncio.to_thread(self._snapshot)

    def _snapshot(self) -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
        before: dict[str, set[str]] = {}
        dated: list[tuple[float, str, str]] = []
        for folder in self._folders:
            keys = set(self._keys(self._box(folder), folder))
            before[folder.name] = keys
            dated.extend((_delivered(key), folder.name, key) for key in keys)
        dated.sort(reverse=True)
        return before, [(name, key) for _, name, key in dated[:_LATE_WINDOW]]

    async def _fresh(self) -> Sequence[Candidate]:
        return await asyncio.to_thread(self._scan)

    def _scan(self) -> list[Candidate]:
        found: list[Candidate] = []
        wanted: list[tuple[_Folder, str]] = []
        by_name = {folder.name: folder for folder in self._folders}
        for name, key in self._recent:
            wanted.append((by_name[name], key))
        self._recent = []  # the messages already there are looked at once, for late probes
        for folder in self._folders:
            box = self._box(folder)
            before = self._before.get(folder.name, set())
            wanted.extend((folder, key) for key in self._keys(box, folder) if key not in before)
        for folder, key in wanted:
            handle = f"{folder.name}/{key}"
            if handle in self._seen:
                continue
            head = self._read_key(folder, key, MAX_HEADERS, headers_only=True)
            if head is not None:
                found.append(Candidate(handle, folder.name, folder.junk, head))
        return found

    async def _read(self, candidate: Candidate) -> bytes:
        folder_name, _, key = candidate.handle.rpartition("/")
        folder = next(folder for folder in self._folders if folder.name == folder_name)
        content = await asyncio.to_thread(self._read_key, folder, key, MAX_MESSAGE, headers_only=False)
        return content if content is not None else candidate.headers

    def _read_key(self, folder: _Folder, key: str, limit: int, *, headers_only: bool) -> bytes | None:
        try:
            with self._box(folder).get_file(key) as file:
                data = file.read(limit)
        except (OSError, KeyError):
            return None  # taken away between listing and reading: nothing to judge
        if headers_only:
            for separator in (b"\r\n\r\n", b"\n\n"):
                end = data.find(separator)
                if end >= 0:
                    return data[: end + len(separator)]
        return data

    async def _remove(self, arrivals: Sequence[Arrival]) -> tuple[Removal, ...]:
        return await asyncio.to_thread(self._unlink, arrivals)

    def _unlink(self, arrivals: Sequence[Arrival]) -> tuple[Removal, ...]:
        done: list[Removal] = []
        by_name = {folder.name: folder for folder in self._folders}
        for arrival in arrivals:
            folder_name, _, key = arrival.handle.rpartition("/")
            box = self._box(by_name[folder_name])
            try:
                box.remove(key)  # finds the message in new/ or cur/, whatever flags a reader gave it
            except KeyError:
                done.append(Removal(arrival, True, "already gone"))
            except OSError as exc:
                done.append(Removal(arrival, False, f"cannot remove it from {folder_name}: {exc.strerror or exc}"))
            else:
                done.append(Removal(arrival, True, f"removed from {folder_name}"))
        return tuple(done)

    async def _close(self) -> None:
        self._folders = []

    def _box(self, folder: _Folder) -> mailbox.Maildir:
        return mailbox.Maildir(folder.path, factory=None, create=False)

    def _keys(self, box: mailbox.Maildir, folder: _Folder) -> list[str]:
        try:
            return list(box.keys())
        except OSError as exc:
            raise WatchError(f"{self.where}: folder {folder.name} cannot be read: {exc.strerror or exc}") from None


def _delivered(key: str) -> float:
    """When a message was delivered, from its Maildir name: "the left part is the delivery time" (the Maildir
    specification, cr.yp.to/proto/maildir.html); 0 for a name that does not follow it."""
    try:
        return float(key.split(".", 1)[0])
    except ValueError:
        return 0.0
