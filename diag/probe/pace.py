"""How often the same probe may be sent (security-cases.md PR-08: probes sent in a loop by cron to a real
organization).

A probe is the same probe when its Name, From, To and Via are (:func:`identity`, without regard to case). It is
not sent again within its ``MinInterval`` seconds of the last time it was sent by any diag process of the user:
the :class:`SentRecord`, a small JSON file beside the history database (:func:`default_record_path`), keeps when
each probe was last sent. Two cron jobs at once take turns under a lock file beside it (``flock``), and the
record is replaced atomically (a temporary file, then a rename), so nobody reads half of it.

A record that cannot be parsed (damaged, truncated, edited by hand) is taken as empty, with a log line: the
worst that costs is one probe sent early. One that cannot be read or written at all is an ``OSError`` for the
caller, who then holds the probe back: pacing that cannot be kept is not skipped.

The lab keeps a record of its own in its directory for each run (:meth:`diag.lab.runner.Lab.sent_record`), so
trying things there is never held back and never touches the user's record.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from diag.config import ProbeConfig
from diag.frozen import frozen

__all__ = ["SCHEMA", "LastSent", "SentRecord", "default_record_path", "identity"]

log = logging.getLogger(__name__)

SCHEMA: Final = "diag.sent-probes/1"
_KEEP_S: Final = 86400.0  # the largest MinInterval: an older send holds nothing back
_MAX_BYTES: Final = 1 << 20  # a user's probes take a few KiB; a larger file is not a record this module wrote
_LOCK_WAIT_S: Final = 10.0  # a holder keeps the lock for one read and one write: milliseconds
_LOCK_POLL_S: Final = 0.02

Identity = tuple[str, str, str, str]


def default_record_path(history: Path | None = None) -> Path:
    """Where the record lives: beside the history database ``history`` (``--history``), else beside the user's
    (:func:`diag.history.default_history_path`): ``~/.local/share/diag/history.sent-probes.json``."""
    if history is None:
        from diag.history import default_history_path

        history = default_history_path()
    return history.with_name(f"{history.stem}.sent-probes.json")


def identity(probe: ProbeConfig) -> Identity:
    """What makes two probes the same: Name, From, To and Via (empty for the recipient's MX), in lower case."""
    return (probe.name.lower(), probe.sender.lower(), probe.recipient.lower(), (probe.via or "").lower())


@frozen
class LastSent:
    """The last send of a probe that holds it back.

    Attributes:
        at: when it was sent (UTC). age_s: the seconds since (0 when the clock has gone back since).
    """

    at: datetime
    age_s: float


class SentRecord:
    """The record at ``path`` of when each probe was last sent (see the module docstring). Its methods block on
    the file system (and on the lock, at most ten seconds): call them from a thread in async code."""

    __slots__ = ("_path",)

    def __init__(self, path: Path) -> None:
        self._path = Path(path)

    @property
    def path(self) -> Path:
        return self._path

    def last(self, probe: ProbeConfig, *, now: float | None = None) -> LastSent | None:
        """The last send of ``probe`` when it was less than its MinInterval before ``now`` (``time.time()``): it
        may not be sent now. Reads without the lock (the record is only ever replaced whole); raises OSError."""
        return _recent(self._read(), probe, time.time() if now is None else now)

    def claim(self, probe: ProbeConfig, *, now: float | None = None) -> LastSent | None:
        """Record that ``probe`` is sent now, unless it was sent less than its MinInterval ago: then that send is
        returned and nothing is recorded. Looking and recording happen under the lock, so of two processes
        claiming the same probe at once only one may send it. Raises OSError (TimeoutError when the lock stays
        held)."""
        with self._locked():
            moment = time.time() if now is None else now
            sends = self._read()
            recent = _recent(sends, probe, moment)
            if recent is not None:
                return recent
            sends[identity(probe)] = moment
            self._write({key: at for key, at in sends.items() if abs(moment - at) < _KEEP_S})
        return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = self._path.with_name(f"{self._path.name}.lock")
        # O_NOFOLLOW: a symlink planted in a shared directory must not make us create or lock another file.
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            give_up = time.monotonic() + _LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= give_up:
                        raise TimeoutError(f"{lock} stayed locked by another process for {_LOCK_WAIT_S:g} s") from None
                    time.sleep(_LOCK_POLL_S)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> dict[Identity, float]:
        try:
            with self._path.open("rb") as handle:
                data = handle.read(_MAX_BYTES + 1)
        except FileNotFoundError:
            return {}
        try:
            if len(data) > _MAX_BYTES:
                raise ValueError(f"larger than {_MAX_BYTES} bytes")
            try:
                document = json.loads(data.decode("utf-8"))
            except RecursionError:
                raise ValueError("nested too deeply") from None
            return _parse(document)
        except ValueError as exc:  # UnicodeDecodeError and json.JSONDecodeError are ValueErrors
            log.warning("%s: the record of probes sent is damaged (%s); taken as empty", self._path, exc)
            return {}

    def _write(self, sends: Mapping[Identity, float]) -> None:
        document = {
            "schema": SCHEMA,
            "sent": [{"name": name, "from": sender, "to": recipient, "via": via, "at": at}
                     for (name, sender, recipient, via), at in sorted(sends.items())],
        }  # fmt: skip
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=f".{self._path.name}.")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=1)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __repr__(self) -> str:
        return f"SentRecord({str(self._path)!r})"


def _parse(document: Any) -> dict[Identity, float]:
    """The sends of a record's JSON document; ValueError saying what is wrong with it."""
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise ValueError(f"not a {SCHEMA} document")
    sent = document.get("sent")
    if not isinstance(sent, list):
        raise ValueError("no list of sends")
    sends: dict[Identity, float] = {}
    for entry in sent:
        if not isinstance(entry, dict):
            raise ValueError("a send that is not an object")
        fields = [entry.get(key) for key in ("name", "from", "to", "via")]
        at = entry.get("at")
        if not all(isinstance(value, str) for value in fields):
            raise ValueError("a send without its name, from, to and via")
        if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
            raise ValueError("a send without its time")
        name, sender, recipient, via = (str(value).lower() for value in fields)
        sends[(name, sender, recipient, via)] = float(at)
    return sends


def _recent(sends: Mapping[Identity, float], probe: ProbeConfig, now: float) -> LastSent | None:
    at = sends.get(identity(probe))
    # Within the interval either way: a send recorded "in the future" (the clock went back) holds the probe back
    # only as long as it would have otherwise, not until the clock catches up.
    if at is None or abs(now - at) >= probe.min_interval:
        return None
    return LastSent(datetime.fromtimestamp(at, UTC), max(now - at, 0.0))
