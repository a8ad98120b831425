"""Run history: every run's JSON document (``diag.report/1``) in SQLite, and what changed between runs.

    with History(default_history_path()) as history:
        run_id = history.record(report_dict(report))
        changes = history.run_changes(run_id)

The whole contract document is kept as compact JSON; beside it, the parts that changes are computed from are
indexed per domain: the domain's status, each check's status, each finding (code, severity, subject), the MX
host names and each endpoint's leaf certificate fingerprint.

What counts as a change between a domain's run and its previous run:

* ``status changed``: the domain's status (ok, warning, critical, unknown).
* ``check changed``: a check that ran in both runs ended differently (completed, error, timeout, skipped,
  not_applicable).
* ``new`` / ``resolved``: a finding of severity notice or worse, identified by check, code and host name
  (:func:`~diag.model.subject_host`: the subject without ``[ip]:port``), that appeared or disappeared. The
  cloud's MX addresses rotate and the lab picks a port per run: the same problem at a new address is unchanged,
  and a problem is resolved only when no address of the host shows it. Info findings (the ``*_OK`` codes,
  routing facts) are not compared: they come and go with whatever was verified and would be noise. Findings
  are compared only for checks that completed in both runs, so a check that timed out does not make every
  problem it would have found look "resolved".
* ``MX changed``: the set of MX host names (compared when the MX check completed in both runs).
* ``certificate renewed``: a host whose addresses present none of the leaf certificates (SHA-256) they presented
  before (compared for hosts whose certificates were seen in both runs; new addresses serving the same
  certificate are not a renewal).
* ``first run``: the domain has no earlier run; notification policies treat it specially (diag.notify).

Runs are ordered by their id (the order they were recorded), not by their clocks. The database is versioned
with ``PRAGMA user_version``, runs in WAL mode so that ``diag history`` can read while a run writes, and writes
each run in one transaction. A database that is not one of ours, corrupted (or holding a value diag does not
write, such as an unknown status), or written by a newer diag raises a one-line :class:`~diag.errors.ConfigError`
naming the file.

Default path (:func:`default_history_path`): ``$XDG_DATA_HOME/diag/history.sqlite3`` or
``~/.local/share/diag/history.sqlite3``; the directory is created 0700 and the file 0600 (findings describe the
organization's mail infrastructure).
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from diag.errors import ConfigError
from diag.frozen import frozen
from diag.model import Severity, Verdict, subject_host
from diag.render.text import sanitize

__all__ = [
    "SCHEMA_VERSION",
    "Change",
    "ChangeKind",
    "DomainRows",
    "DomainStatus",
    "History",
    "RunSummary",
    "compact_json",
    "default_history_path",
    "describe",
    "domain_rows",
    "render_history",
]

SCHEMA_VERSION: Final = 1
_REPORT_SCHEMA: Final = "diag.report/1"
# How long a writer waits for another writer's transaction (the run lock normally prevents that).
_BUSY_TIMEOUT: Final = 10.0
# Messages from servers can be long; a history line needs only the start.
_MESSAGE_LIMIT: Final = 300
_FINGERPRINT_SHOWN: Final = 16
# Bytes copied at a time from a run's document into the database.
_BLOB_CHUNK: Final = 1 << 20
# Domains whose rows are inserted together.
_ROWS_BATCH: Final = 256

_SCHEMA: Final = """
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    started_at  TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    status      TEXT NOT NULL,
    exit_code   INTEGER NOT NULL,
    document    TEXT NOT NULL
);
CREATE TABLE domain_runs (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    domain TEXT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (run_id, domain)
);
CREATE INDEX domain_runs_by_domain ON domain_runs(domain, run_id);
CREATE TABLE checks (
    run_id   INTEGER NOT NULL,
    domain   TEXT NOT NULL,
    check_id TEXT NOT NULL,
    status   TEXT NOT NULL,
    reason   TEXT,
    PRIMARY KEY (run_id, domain, check_id),
    FOREIGN KEY (run_id, domain) REFERENCES domain_runs(run_id, domain) ON DELETE CASCADE
);
CREATE TABLE findings (
    run_id   INTEGER NOT NULL,
    domain   TEXT NOT NULL,
    check_id TEXT NOT NULL,
    code     TEXT NOT NULL,
    severity TEXT NOT NULL,
    subject  TEXT NOT NULL,
    message  TEXT NOT NULL,
    FOREIGN KEY (run_id, domain) REFERENCES domain_runs(run_id, domain) ON DELETE CASCADE
);
CREATE INDEX findings_by_run ON findings(run_id, domain);
CREATE TABLE mx_hosts (
    run_id     INTEGER NOT NULL,
    domain     TEXT NOT NULL,
    preference INTEGER NOT NULL,
    name       TEXT NOT NULL,
    FOREIGN KEY (run_id, domain) REFERENCES domain_runs(run_id, domain) ON DELETE CASCADE
);
CREATE INDEX mx_hosts_by_run ON mx_hosts(run_id, domain);
CREATE TABLE certificates (
    run_id    INTEGER NOT NULL,
    domain    TEXT NOT NULL,
    endpoint  TEXT NOT NULL,
    host      TEXT NOT NULL,
    sha256    TEXT NOT NULL,
    not_after TEXT NOT NULL,
    FOREIGN KEY (run_id, domain) REFERENCES domain_runs(run_id, domain) ON DELETE CASCADE
);
CREATE INDEX certificates_by_run ON certificates(run_id, domain);
"""


def default_history_path() -> Path:
    """``$XDG_DATA_HOME/diag/history.sqlite3``, else ``~/.local/share/diag/history.sqlite3``."""
    data = os.environ.get("XDG_DATA_HOME", "")
    # The XDG base directory spec: a relative path is invalid and must be ignored.
    base = Path(data) if os.path.isabs(data) else Path.home() / ".local" / "share"
    return base / "diag" / "history.sqlite3"


class ChangeKind(enum.StrEnum):
    """What changed for a domain between two runs (see the module docstring)."""

    STATUS_CHANGED = "status changed"
    CHECK_CHANGED = "check changed"
    NEW = "new"
    RESOLVED = "resolved"
    MX_CHANGED = "MX changed"
    CERTIFICATE_RENEWED = "certificate renewed"
    FIRST_RUN = "first run"


@frozen
class Change:
    """One change of a domain since its previous run.

    Attributes:
        kind: what changed.
        domain: the domain it belongs to.
        subject: what it is about: the domain (status, MX, first run), a check id (check changed), a finding's
            subject (new, resolved) or an endpoint ``host [ip]:port`` (certificate renewed).
        detail: the change for a person: "ok → warning", a finding's code, severity and message, the MX hosts
            before and after, the fingerprints and expiry dates. Text from servers is kept as stored; render it
            through :func:`describe`, which makes it inert.
        code: the finding code, for ``new`` and ``resolved``; "" otherwise.
        severity: the finding's severity, for ``new`` and ``resolved``; None otherwise.
    """

    kind: ChangeKind
    domain: str
    subject: str
    detail: str
    code: str = ""
    severity: Severity | None = None


@frozen
class DomainStatus:
    """A domain's status in one run."""

    domain: str
    status: Verdict


@frozen
class RunSummary:
    """One recorded run.

    Attributes:
        run_id: its id in the history (increasing in the order runs were recorded).
        started_at, finished_at: the run's times (UTC) from its document.
        status: the whole run's status.
        exit_code: the run's exit code (CONTRACT.md).
        domains: the status of each domain it checked, in the run's order (only the asked-for domain when the
            runs were listed for one domain).
    """

    run_id: int
    started_at: datetime
    finished_at: datetime
    status: Verdict
    exit_code: int
    domains: tuple[DomainStatus, ...]


@frozen
class _Snapshot:
    """What one run saw of one domain, as far as changes are concerned."""

    run_id: int
    domain: str
    status: str
    checks: Mapping[str, tuple[str, str | None]]
    """check id → (status, reason)."""
    findings: Mapping[tuple[str, str, str], tuple[str, str]]
    """(check id, code, host) → (severity, message), for findings of severity notice or worse: a problem is
    identified by its host, not by the address it was seen at (:func:`~diag.model.subject_host`)."""
    mx: tuple[str, ...] | None
    """MX host names; None when the MX check did not complete."""
    certificates: Mapping[str, frozenset[tuple[str, str]]]
    """host → its addresses' (leaf SHA-256, leaf not_after)."""


@frozen
class DomainRows:
    """What the history indexes of one domain's entry (:func:`domain_rows`), ready to insert.

    Attributes:
        domain: the domain.
        status: its status.
        checks: (check id, status, reason) of each check.
        findings: (check id, code, severity, subject, message) of each finding, in order.
        mx_hosts: (preference, name) of each MX host, when the MX check completed.
        certificates: (endpoint, host, leaf SHA-256, leaf not-after) of each presented chain, when the
            certificate check completed.
    """

    domain: str
    status: str
    checks: tuple[tuple[str, str, str | None], ...]
    findings: tuple[tuple[str, str, str, str, str], ...]
    mx_hosts: tuple[tuple[int, str], ...]
    certificates: tuple[tuple[str, str, str, str], ...]

    def to_json(self) -> str:
        """The rows as compact JSON (a run keeps them on disk until it records them)."""
        return compact_json([self.domain, self.status, self.checks, self.findings, self.mx_hosts, self.certificates])

    @classmethod
    def from_json(cls, text: str) -> DomainRows:
        """The rows :meth:`to_json` wrote."""
        domain, status, checks, findings, mx_hosts, certificates = json.loads(text)
        return cls(domain, status, *(tuple(map(tuple, rows)) for rows in (checks, findings, mx_hosts, certificates)))


def domain_rows(domain: Mapping[str, Any]) -> DomainRows:
    """The rows of one domain's entry of a ``diag.report/1`` document (pure: no I/O)."""
    checks: list[tuple[str, str, str | None]] = []
    findings: list[tuple[str, str, str, str, str]] = []
    mx_hosts: list[tuple[int, str]] = []
    certificates: list[tuple[str, str, str, str]] = []
    for check in domain["checks"]:
        check_id = check["id"]
        checks.append((check_id, check["status"], check.get("reason")))
        findings.extend((check_id, f["code"], f["severity"], f["subject"], f["message"]) for f in check["findings"])
        if check["status"] != "completed":
            continue
        facts = check.get("facts") or {}
        if check_id == "mx":
            mx_hosts.extend((host.get("preference", 0), host["name"]) for host in facts.get("hosts", ()))
        elif check_id == "certificate":
            for cert in facts.get("certificates", ()):
                if cert.get("chain"):
                    leaf = cert["chain"][0]
                    host = cert.get("host", "")
                    certificates.append((cert["endpoint"], host, leaf["sha256"], leaf.get("not_after", "")))
    return DomainRows(domain["domain"], domain["status"], tuple(checks), tuple(findings), tuple(mx_hosts),
                      tuple(certificates))  # fmt: skip


def compact_json(value: Any) -> str:
    """``value`` as the history stores documents: compact JSON, ASCII only."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


class History:
    """The run history in the SQLite file ``path``; a context manager that opens and closes it.

    Args:
        path: the database file.
        create: create the file (and its directory) when missing; with False a missing file raises
            :class:`ConfigError` (``diag history`` should not leave empty databases behind a typo).
    """

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self._path = Path(path)
        self._create = create
        self._db: sqlite3.Connection | None = None

    @property
    def path(self) -> Path:
        return self._path

    # -- opening -------------------------------------------------------------------------------------------

    def open(self) -> None:
        if self._db is not None:
            return
        if self._path.exists() and not self._path.is_file():
            # SQLite writes a journal beside its database: /dev/null as the history would leave /dev/null-journal.
            raise ConfigError(
                f"the history {self._path} is not a regular file; choose another with --history, or use --no-history"
            )
        if not self._path.exists():
            if not self._create:
                raise ConfigError(f"no run history at {self._path}: no run has been recorded there yet")
            self._make_file()
        try:
            db = sqlite3.connect(self._path, timeout=_BUSY_TIMEOUT, isolation_level=None)
        except sqlite3.Error as error:
            raise self._error(error) from None
        try:
            with self._preparing():
                self._prepare(db)
        except BaseException:
            db.close()
            raise
        self._db = db

    @contextlib.contextmanager
    def _preparing(self) -> Iterator[None]:
        """Serialise preparation between processes: switching a new database to WAL needs an exclusive lock
        that SQLite may refuse at once ("database is locked") instead of waiting out the busy timeout, so two
        first runs started together (two cron jobs) could fail. An flock on the file is independent of SQLite's
        own POSIX locks (flock(2)), so it cannot deadlock with them."""
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            raise ConfigError(f"cannot open the history database {self._path}: {error.strerror}") from None
        try:
            deadline = time.monotonic() + _BUSY_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise ConfigError(
                            f"the history database {self._path} cannot be used: another process keeps preparing it; "
                            "try again later"
                        ) from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _make_file(self) -> None:
        try:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Created here rather than by SQLite so that it is private; SQLite gives the WAL the same mode.
            os.close(os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError as error:
            raise ConfigError(f"cannot create the history database {self._path}: {error.strerror}") from None

    def _prepare(self, db: sqlite3.Connection) -> None:
        with self._errors():
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"the history database {self._path} was written by a newer diag (schema {version}, this "
                    f"diag knows {SCHEMA_VERSION}); upgrade diag or choose another history file"
                )
            db.execute("PRAGMA foreign_keys = ON")
            # WAL: readers (diag history) and the writer (the hourly run) do not block each other. On a file
            # system without shared memory SQLite stays in its default mode, which is merely slower.
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            if version == 0:
                self._create_schema(db)

    def _create_schema(self, db: sqlite3.Connection) -> None:
        with self._transaction(db):
            # Only inside the write lock: two first runs at once must not both create the schema.
            if db.execute("PRAGMA user_version").fetchone()[0] != 0:
                return
            if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise ConfigError(
                    f"{self._path} is an SQLite database, but not a diag run history; choose another history file"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def __enter__(self) -> History:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- errors and transactions ---------------------------------------------------------------------------

    def _error(self, error: sqlite3.Error) -> ConfigError:
        text = str(error) or type(error).__name__
        if "locked" in text or "busy" in text:
            hint = "another process is writing it; try again later"
        else:
            hint = "move it away or choose another history file"
        return ConfigError(f"the history database {self._path} cannot be used: {text}; {hint}")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as error:
            raise self._error(error) from None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Like :meth:`_errors`, and a stored value that diag does not write (ValueError) is damage too."""
        with self._errors():
            try:
                yield
            except ValueError as error:
                raise ConfigError(
                    f"the history database {self._path} is damaged: {sanitize(str(error), limit=_MESSAGE_LIMIT)}; "
                    "move it away or choose another history file"
                ) from None

    @contextlib.contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[None]:
        # IMMEDIATE: take the write lock at BEGIN, so a busy database fails (after the busy timeout) before
        # anything is half written.
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the history is not open; use it as a context manager")
        return self._db

    # -- writing -------------------------------------------------------------------------------------------

    def record(self, document: Mapping[str, Any]) -> int:
        """Store one run (a ``diag.report/1`` document, as from ``report_dict``); return its run id."""
        _check_schema(document)
        head = {key: value for key, value in document.items() if key != "domains"}
        return self.record_parts(head, ((domain_rows(d), compact_json(d)) for d in document["domains"]))

    def record_parts(self, head: Mapping[str, Any], domains: Iterable[tuple[DomainRows, str]]) -> int:
        """Store one run given as its document without ``domains`` and, one at a time, each domain's rows and
        its entry of the document as compact JSON (:func:`domain_rows`, :func:`compact_json`: made where the
        domain was checked, so a run over thousands of domains is never held whole); return its run id.

        The document is kept as compact JSON, written into the database a domain at a time (SQLite's
        incremental BLOB I/O), so it is stored as UTF-8 bytes rather than as text; :meth:`document` reads both.
        """
        _check_schema(head)
        db = self._conn
        # The compact document, exactly as compact_json(document) would write it: the head, then the domains
        # ("domains" is the document's last member).
        opening = compact_json({**head, "domains": []})
        with tempfile.TemporaryFile() as text, self._errors(), self._transaction(db):
            cursor = db.execute(
                "INSERT INTO runs (started_at, finished_at, status, exit_code, document) VALUES (?, ?, ?, ?, '')",
                (head["started_at"], head["finished_at"], head["status"], head["exit_code"]),
            )
            run_id = cursor.lastrowid
            assert run_id is not None
            text.write(opening.removesuffix("]}").encode("ascii"))
            batch: list[DomainRows] = []
            for index, (rows, entry) in enumerate(domains):
                batch.append(rows)
                if len(batch) == _ROWS_BATCH:
                    self._insert(db, run_id, batch)
                    batch.clear()
                text.write(b"," if index else b"")
                text.write(entry.encode("ascii"))
            self._insert(db, run_id, batch)
            text.write(b"]}")
            size = text.tell()
            db.execute("UPDATE runs SET document = zeroblob(?) WHERE id = ?", (size, run_id))
            text.seek(0)
            with db.blobopen("runs", "document", run_id) as blob:
                while chunk := text.read(_BLOB_CHUNK):
                    blob.write(chunk)
        return run_id

    def _insert(self, db: sqlite3.Connection, run_id: int, batch: Sequence[DomainRows]) -> None:
        """The rows of a few domains, a statement per table (fewer round trips into SQLite than per domain)."""
        db.executemany("INSERT INTO domain_runs (run_id, domain, status) VALUES (?, ?, ?)",
                       [(run_id, rows.domain, rows.status) for rows in batch])  # fmt: skip
        db.executemany(
            "INSERT OR REPLACE INTO checks (run_id, domain, check_id, status, reason) VALUES (?, ?, ?, ?, ?)",
            [(run_id, rows.domain, *check) for rows in batch for check in rows.checks],
        )
        db.executemany(
            "INSERT INTO findings (run_id, domain, check_id, code, severity, subject, message) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(run_id, rows.domain, *finding) for rows in batch for finding in rows.findings],
        )
        db.executemany(
            "INSERT INTO mx_hosts (run_id, domain, preference, name) VALUES (?, ?, ?, ?)",
            [(run_id, rows.domain, *host) for rows in batch for host in rows.mx_hosts],
        )
        db.executemany(
            "INSERT INTO certificates (run_id, domain, endpoint, host, sha256, not_after) VALUES (?, ?, ?, ?, ?, ?)",
            [(run_id, rows.domain, *cert) for rows in batch for cert in rows.certificates],
        )

    def prune(self, *, keep_days: int) -> int:
        """Delete runs that started more than ``keep_days`` days ago; return how many were deleted.

        An hourly run adds about 9000 runs a year. A domain whose last run is pruned starts over with a
        ``first run`` next time.
        """
        if keep_days < 0:
            raise ValueError("keep_days must not be negative")
        cutoff = _timestamp(datetime.now(UTC) - timedelta(days=keep_days))
        db = self._conn
        with self._errors(), self._transaction(db):
            return db.execute("DELETE FROM runs WHERE started_at < ?", (cutoff,)).rowcount

    # -- reading -------------------------------------------------------------------------------------------

    def runs(self, domain: str | None = None, limit: int = 20) -> list[RunSummary]:
        """The last ``limit`` runs, newest first; only runs that checked ``domain`` when it is given."""
        db = self._conn
        with self._reading():
            if domain is None:
                rows = db.execute(
                    "SELECT id, started_at, finished_at, status, exit_code FROM runs ORDER BY id DESC LIMIT ?",
                    (limit,),
                ).fetchall()
            else:
                rows = db.execute(
                    "SELECT r.id, r.started_at, r.finished_at, r.status, r.exit_code FROM runs r "
                    "JOIN domain_runs d ON d.run_id = r.id WHERE d.domain = ? ORDER BY r.id DESC LIMIT ?",
                    (domain, limit),
                ).fetchall()
            summaries = []
            for run_id, started, finished, status, exit_code in rows:
                statuses = db.execute(
                    "SELECT domain, status FROM domain_runs WHERE run_id = ? ORDER BY rowid", (run_id,)
                ).fetchall()
                summaries.append(
                    RunSummary(
                        run_id, _parse_time(started), _parse_time(finished), Verdict(status), exit_code,
                        tuple(DomainStatus(name, Verdict(state)) for name, state in statuses
                              if domain is None or name == domain),
                    )
                )  # fmt: skip
        return summaries

    def document(self, run_id: int) -> dict[str, Any]:
        """The stored ``diag.report/1`` document of a run."""
        with self._errors():
            row = self._conn.execute("SELECT document FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(run_id)
        try:
            document: dict[str, Any] = json.loads(row[0])
        except ValueError:
            raise ConfigError(f"the history database {self._path}: run {run_id} holds no valid JSON") from None
        return document

    def changes(self, domain: str, *, before: int | None = None) -> list[Change]:
        """What changed for ``domain`` in its latest run, compared with its run before that.

        With ``before``, the latest run *older than* run ``before`` is taken instead, so that
        ``changes(d, before=run_id)`` walks back through the history. One run only: a ``first run`` change;
        no run at all: nothing.
        """
        with self._reading():
            query = "SELECT max(run_id) FROM domain_runs WHERE domain = ?"
            params: tuple[object, ...] = (domain,)
            if before is not None:
                query += " AND run_id < ?"
                params = (domain, before)
            latest = self._conn.execute(query, params).fetchone()[0]
            if latest is None:
                return []
            return self._changes_at(domain, latest)

    def run_changes(self, run_id: int) -> list[Change]:
        """What changed in run ``run_id`` for each of its domains, compared with that domain's previous run."""
        with self._reading():
            domains = [row[0] for row in self._conn.execute(
                "SELECT domain FROM domain_runs WHERE run_id = ? ORDER BY rowid", (run_id,)
            )]  # fmt: skip
            return [change for domain in domains for change in self._changes_at(domain, run_id)]

    def _changes_at(self, domain: str, run_id: int) -> list[Change]:
        previous_id = self._conn.execute(
            "SELECT max(run_id) FROM domain_runs WHERE domain = ? AND run_id < ?", (domain, run_id)
        ).fetchone()[0]
        if previous_id is None:
            # A first run needs only the domain's status, not its whole snapshot (a first run over thousands of
            # domains would read every row it just wrote).
            row = self._conn.execute(
                "SELECT status FROM domain_runs WHERE run_id = ? AND domain = ?", (run_id, domain)
            ).fetchone()
            return [] if row is None else [Change(ChangeKind.FIRST_RUN, domain, domain, f"status {row[0]}")]
        current = self._snapshot(domain, run_id)
        if current is None:
            return []
        previous = self._snapshot(domain, previous_id)
        assert previous is not None
        return _compare(previous, current)

    def _snapshot(self, domain: str, run_id: int) -> _Snapshot | None:
        db = self._conn
        row = db.execute("SELECT status FROM domain_runs WHERE run_id = ? AND domain = ?", (run_id, domain)).fetchone()
        if row is None:
            return None
        key = (run_id, domain)
        checks = {
            check_id: (status, reason)
            for check_id, status, reason in db.execute(
                "SELECT check_id, status, reason FROM checks WHERE run_id = ? AND domain = ?", key
            )
        }
        findings: dict[tuple[str, str, str], tuple[str, str]] = {}
        for check_id, code, severity, subject, message in db.execute(
            "SELECT check_id, code, severity, subject, message FROM findings WHERE run_id = ? AND domain = ? "
            "ORDER BY rowid", key,
        ):  # fmt: skip
            if _severity(severity) > Severity.INFO:
                findings.setdefault((check_id, code, subject_host(subject)), (severity, message))
        mx = None
        if checks.get("mx", ("",))[0] == "completed":
            mx = tuple(_text(name) for (name,) in db.execute(
                "SELECT name FROM mx_hosts WHERE run_id = ? AND domain = ? ORDER BY preference, rowid", key
            ))  # fmt: skip
        certificates: dict[str, frozenset[tuple[str, str]]] = {}
        for endpoint, sha256, not_after in db.execute(
            "SELECT endpoint, sha256, not_after FROM certificates WHERE run_id = ? AND domain = ?", key
        ):
            host = subject_host(endpoint)
            certificates[host] = certificates.get(host, frozenset()) | {(sha256, not_after)}
        return _Snapshot(run_id, domain, row[0], checks, findings, mx, certificates)


def _check_schema(document: Mapping[str, Any]) -> None:
    if document.get("schema") != _REPORT_SCHEMA:
        raise ValueError(f"not a {_REPORT_SCHEMA} document: schema is {document.get('schema')!r}")


def _compare(previous: _Snapshot, current: _Snapshot) -> list[Change]:
    """The changes of one domain from ``previous`` to ``current`` (no I/O; rules in the module docstring)."""
    domain = current.domain
    changes: list[Change] = []
    if previous.status != current.status:
        changes.append(Change(ChangeKind.STATUS_CHANGED, domain, domain, f"{previous.status} → {current.status}"))
    both = [check_id for check_id in current.checks if check_id in previous.checks]
    for check_id in both:
        (before, _), (after, reason) = previous.checks[check_id], current.checks[check_id]
        if before != after:
            detail = f"{before} → {after}" + (f" ({reason})" if reason and after != "completed" else "")
            changes.append(Change(ChangeKind.CHECK_CHANGED, domain, check_id, detail))
    completed = {c for c in both if previous.checks[c][0] == current.checks[c][0] == "completed"}
    for (check_id, code, host), (severity, message) in current.findings.items():
        if check_id in completed and (check_id, code, host) not in previous.findings:
            changes.append(Change(ChangeKind.NEW, domain, host, f"{code} ({severity}): {message}", code,
                                  _severity(severity)))  # fmt: skip
    for (check_id, code, host), (severity, _message) in previous.findings.items():
        if check_id in completed and (check_id, code, host) not in current.findings:
            changes.append(Change(ChangeKind.RESOLVED, domain, host, f"{code} ({severity}) is no longer found",
                                  code, _severity(severity)))  # fmt: skip
    if previous.mx is not None and current.mx is not None:
        was, now = {n.lower() for n in previous.mx}, {n.lower() for n in current.mx}
        if was != now:
            detail = f"was {', '.join(sorted(was)) or 'none'}; now {', '.join(sorted(now)) or 'none'}"
            changes.append(Change(ChangeKind.MX_CHANGED, domain, domain, detail))
    for host, leaves in current.certificates.items():
        old = previous.certificates.get(host)
        # A host whose addresses changed but serve the same certificates was not renewed.
        if old is not None and not leaves & old:
            sha256, not_after = max(leaves, key=lambda leaf: leaf[1])
            was_sha256, was_not_after = max(old, key=lambda leaf: leaf[1])
            detail = (
                f"SHA-256 {sha256[:_FINGERPRINT_SHOWN]}… valid until {not_after[:10]} "
                f"(was {was_sha256[:_FINGERPRINT_SHOWN]}… valid until {was_not_after[:10]})"
            )
            changes.append(Change(ChangeKind.CERTIFICATE_RENEWED, domain, host, detail))
    return changes


def describe(change: Change) -> str:
    """One line for a person, with server-supplied text made inert."""
    subject = "" if change.subject == change.domain else f" {change.subject}:"
    return sanitize(f"{change.domain}: {change.kind.value}:{subject} {change.detail}", limit=_MESSAGE_LIMIT)


def render_history(history: History, domain: str | None = None, *, limit: int = 20) -> str:
    """The plain-text view of ``diag history [DOMAIN]``: the last runs, newest first, each with its changes."""
    runs = history.runs(domain, limit)
    if not runs:
        scope = f" for {sanitize(domain)}" if domain else ""
        return f"No runs recorded{scope} in {history.path}.\n"
    scope = f" of {sanitize(domain)}" if domain else ""
    lines = [f"Run history{scope} in {history.path} (newest first, {len(runs)} run{'s' if len(runs) != 1 else ''})"]
    for run in runs:
        when = run.started_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        if domain is None:
            statuses = ", ".join(f"{sanitize(d.domain)} {d.status.value}" for d in run.domains)
            summary = f"{run.status.value.upper():<8}  {statuses}"
        else:
            summary = " ".join(d.status.value.upper() for d in run.domains)
        lines.append("")
        lines.append(f"#{run.run_id}  {when}  {summary}")
        changes = [c for c in history.run_changes(run.run_id) if domain is None or c.domain == domain]
        if not changes:
            lines.append("    no changes since the previous run")
        lines.extend(f"    {describe(change)}" for change in changes)
    return "\n".join(lines) + "\n"


def _severity(label: str) -> Severity:
    try:
        return Severity[label.upper()]
    except KeyError:
        # A severity from a newer diag: treat it as worth comparing rather than dropping it.
        return Severity.WARNING


def _text(value: object) -> str:
    """A value of a TEXT column; ValueError for anything else (SQLite keeps a BLOB or a number as it is)."""
    if not isinstance(value, str):
        raise ValueError(f"a {type(value).__name__} value where text belongs")
    return value


def _parse_time(value: object) -> datetime:
    moment = datetime.fromisoformat(_text(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
