"""Run history: real lab runs stored in a real SQLite file, and the changes between them."""

from __future__ import annotations

import asyncio
import copy
import json
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from checks import default_registry
from diag.errors import ConfigError
from diag.history import (
    SCHEMA_VERSION,
    Change,
    ChangeKind,
    History,
    default_history_path,
    describe,
    render_history,
)
from diag.lab.runner import Lab
from diag.model import Severity, Verdict
from diag.render.json import report_dict
from diag.runner import run_checks

Document = dict[str, Any]


def _run(lab: Lab, domains: list[str], **options: object) -> Document:
    report = asyncio.run(run_checks(domains, default_registry(), lab.run_options(timeout=2.0, **options)))
    return report_dict(report)


@pytest.fixture(scope="module")
def healthy(lab: Lab) -> Document:
    """contoso.com as it is: all well."""
    return _run(lab, ["contoso.com"])


@pytest.fixture(scope="module")
def expiring(lab: Lab) -> Document:
    """contoso.com with a one-year warning window: its 90-day certificate now draws CERT_EXPIRING."""
    return _run(lab, ["contoso.com"], cert_warn_days=365)


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    with History(tmp_path / "data" / "history.sqlite3") as opened:
        yield opened


def _check(document: Document, check_id: str, domain: str = "contoso.com") -> dict[str, Any]:
    (entry,) = [d for d in document["domains"] if d["domain"] == domain]
    (check,) = [c for c in entry["checks"] if c["id"] == check_id]
    return check  # type: ignore[no-any-return]


def _kinds(changes: list[Change]) -> list[ChangeKind]:
    return [change.kind for change in changes]


def test_lab_documents_are_what_the_tests_expect(healthy: Document, expiring: Document) -> None:
    assert healthy["status"] == "ok"
    assert expiring["status"] == "warning"
    assert "CERT_EXPIRING" in [f["code"] for f in _check(expiring, "certificate")["findings"]]


def test_first_run_is_reported_as_such(history: History, healthy: Document) -> None:
    run_id = history.record(healthy)
    assert history.changes("contoso.com") == [Change(ChangeKind.FIRST_RUN, "contoso.com", "contoso.com", "status ok")]
    assert history.run_changes(run_id) == history.changes("contoso.com")
    assert history.changes("fabrikam.com") == []


def test_new_and_resolved_findings_between_real_runs(history: History, healthy: Document, expiring: Document) -> None:
    # Given a healthy run, then one with CERT_EXPIRING, then a healthy one again
    history.record(healthy)
    second = history.record(expiring)
    third = history.record(healthy)

    # When comparing each run with the one before
    appeared = history.run_changes(second)
    gone = history.run_changes(third)

    # Then the warning appears once and is resolved once, named by its host; info findings (CERT_OK ...) are not
    # compared
    subject = "contoso-com.mail.protection.outlook.com"
    assert _check(expiring, "certificate")["findings"][0]["subject"].startswith(f"{subject} [127.0.1.10]:")
    assert _kinds(appeared) == [ChangeKind.STATUS_CHANGED, ChangeKind.NEW]
    assert appeared[0].detail == "ok → warning"
    new = appeared[1]
    assert (new.code, new.severity, new.subject, new.domain) == (
        "CERT_EXPIRING",
        Severity.WARNING,
        subject,
        "contoso.com",
    )
    assert new.detail.startswith("CERT_EXPIRING (warning): The certificate of ")
    assert _kinds(gone) == [ChangeKind.STATUS_CHANGED, ChangeKind.RESOLVED]
    assert gone[1].code == "CERT_EXPIRING" and gone[1].subject == subject
    # changes() looks at the latest run, or walks back with before=
    assert history.changes("contoso.com") == gone
    assert history.changes("contoso.com", before=third) == appeared


def test_same_run_twice_changes_nothing(history: History, expiring: Document) -> None:
    history.record(expiring)
    history.record(expiring)
    assert history.changes("contoso.com") == []


def test_a_problem_at_another_address_or_port_is_unchanged(history: History, lab: Lab, expiring: Document) -> None:
    """Issue 10: the same problem seen through another lab (another port) is no change, so no change mail."""
    from diag.notify import should_notify

    async def elsewhere() -> Document:
        async with Lab() as other:
            options = other.run_options(timeout=2.0, cert_warn_days=365)
            return report_dict(await run_checks(["contoso.com"], default_registry(), options))

    moved = asyncio.run(elsewhere())
    before = _check(expiring, "certificate")["findings"][0]["subject"]
    after = _check(moved, "certificate")["findings"][0]["subject"]
    assert before != after  # the evidence keeps the address and port it was seen at
    history.record(expiring)

    # The cloud's addresses rotate, the certificate stays: no change at all, so no change mail.
    port = before.rsplit(":", 1)[1]
    rotated = json.loads(json.dumps(expiring).replace("127.0.1.10", "127.0.1.99").replace(f":{port}", ":2626"))
    assert _check(rotated, "certificate")["findings"][0]["subject"] != before
    changes = history.run_changes(history.record(rotated))
    assert changes == []
    assert not should_notify("change", rotated, changes)

    # The other lab has a CA of its own, so its certificate is really another one; nothing else changed.
    assert _kinds(history.run_changes(history.record(moved))) == [ChangeKind.CERTIFICATE_RENEWED]


def test_the_same_problem_on_two_addresses_is_one_problem(history: History, expiring: Document) -> None:
    twice = copy.deepcopy(expiring)
    finding = _check(twice, "certificate")["findings"][0]
    _check(twice, "certificate")["findings"].append({**finding, "subject": "Contoso-com.mail.protection.outlook.com. "
                                                     "[2001:db8::25]:25"})  # fmt: skip
    history.record(twice)
    assert history.run_changes(history.record(expiring)) == []  # resolved only when gone from every address


def test_certificate_renewed(history: History, healthy: Document) -> None:
    renewed = copy.deepcopy(healthy)
    leaf = _check(renewed, "certificate")["facts"]["certificates"][0]["chain"][0]
    old_sha = leaf["sha256"]
    leaf["sha256"] = "ab" * 32
    leaf["not_after"] = "2031-01-01T00:00:00Z"
    history.record(healthy)
    history.record(renewed)

    (change,) = history.changes("contoso.com")
    endpoint = _check(renewed, "certificate")["facts"]["certificates"][0]["endpoint"]
    assert change.kind is ChangeKind.CERTIFICATE_RENEWED
    assert endpoint.startswith(f"{change.subject} [")
    assert "abababababababab" in change.detail and "2031-01-01" in change.detail
    assert old_sha[:16] in change.detail


def test_mx_changed(history: History, healthy: Document) -> None:
    moved = copy.deepcopy(healthy)
    hosts = _check(moved, "mx")["facts"]["hosts"]
    hosts.append({**hosts[0], "name": "backup-mx.contoso.com", "preference": 20})
    history.record(healthy)
    history.record(moved)

    (change,) = history.changes("contoso.com")
    assert change.kind is ChangeKind.MX_CHANGED
    assert change.detail == (
        "was contoso-com.mail.protection.outlook.com; "
        "now backup-mx.contoso.com, contoso-com.mail.protection.outlook.com"
    )


def test_check_that_could_not_run_does_not_resolve_its_findings(history: History, expiring: Document) -> None:
    timed_out = copy.deepcopy(expiring)
    certificate = _check(timed_out, "certificate")
    certificate.update(status="timeout", reason="check exceeded its 2 s budget", findings=[], facts={})
    timed_out["domains"][0]["status"] = "unknown"
    history.record(expiring)
    history.record(timed_out)

    changes = history.changes("contoso.com")
    assert _kinds(changes) == [ChangeKind.STATUS_CHANGED, ChangeKind.CHECK_CHANGED]
    assert changes[1].subject == "certificate"
    assert changes[1].detail == "completed → timeout (check exceeded its 2 s budget)"


def test_domains_are_compared_with_their_own_previous_run(lab: Lab, history: History, healthy: Document) -> None:
    both = _run(lab, ["contoso.com", "expired.example"])
    history.record(healthy)
    run_id = history.record(both)
    changes = history.run_changes(run_id)
    # contoso.com did not change; expired.example is new to the history and has a problem
    assert [(c.kind, c.domain) for c in changes] == [(ChangeKind.FIRST_RUN, "expired.example")]
    assert changes[0].detail == "status critical"


def test_runs_are_listed_newest_first(history: History, lab: Lab, healthy: Document, expiring: Document) -> None:
    first = history.record(healthy)
    second = history.record(_run(lab, ["contoso.com", "expired.example"]))
    third = history.record(expiring)

    runs = history.runs()
    assert [r.run_id for r in runs] == [third, second, first]
    assert runs[0].status is Verdict.WARNING and runs[0].exit_code == 1
    assert runs[1].status is Verdict.CRITICAL
    assert [(d.domain, d.status) for d in runs[1].domains] == [
        ("contoso.com", Verdict.OK),
        ("expired.example", Verdict.CRITICAL),
    ]
    assert runs[0].started_at.tzinfo is not None
    assert [r.run_id for r in history.runs(limit=1)] == [third]
    only = history.runs("expired.example")
    assert [r.run_id for r in only] == [second]
    assert [d.domain for d in only[0].domains] == ["expired.example"]
    assert history.document(second)["domains"][1]["domain"] == "expired.example"


def test_render_history(history: History, healthy: Document, expiring: Document) -> None:
    history.record(healthy)
    history.record(expiring)
    text = render_history(history)
    lines = text.splitlines()
    assert lines[0] == f"Run history in {history.path} (newest first, 2 runs)"
    assert lines[2].startswith("#2  ") and "WARNING" in lines[2] and "contoso.com warning" in lines[2]
    assert lines[3] == "    contoso.com: status changed: ok → warning"
    assert lines[4].startswith("    contoso.com: new: contoso-com.mail.protection.outlook.com: CERT_EXPIRING")
    assert "CERT_EXPIRING (warning)" in lines[4]
    assert lines[6].startswith("#1  ") and "OK" in lines[6]
    assert lines[7] == "    contoso.com: first run: status ok"
    assert "No runs recorded for fabrikam.com" in render_history(history, "fabrikam.com")
    one = render_history(history, "contoso.com", limit=1).splitlines()
    assert one[0] == f"Run history of contoso.com in {history.path} (newest first, 1 run)"
    assert one[2].startswith("#2  ") and one[2].endswith("UTC  WARNING")


def test_describe_makes_server_text_inert() -> None:
    change = Change(ChangeKind.NEW, "contoso.com", "mx\x1b[31m.contoso.com", "X (warning): evil\r\nInjected: yes")
    line = describe(change)
    assert "\x1b" not in line and "\r" not in line and "\n" not in line
    assert "\\x1b" in line


def test_database_is_private_versioned_and_in_wal_mode(tmp_path: Path, healthy: Document) -> None:
    path = tmp_path / "nested" / "history.sqlite3"
    with History(path) as history:
        history.record(healthy)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        stored = db.execute("SELECT status, document FROM runs").fetchall()
    db.close()
    # The document is the compact JSON as UTF-8 bytes (written into the database a domain at a time)
    assert stored[0][0] == "ok" and json.loads(stored[0][1]) == healthy
    # Reopened: the schema is there already
    with History(path) as history:
        assert len(history.runs()) == 1


def test_failed_write_leaves_nothing_behind(history: History, healthy: Document) -> None:
    broken = copy.deepcopy(healthy)
    del broken["domains"][0]["checks"][2]["findings"]  # fails half-way through the domain
    with pytest.raises(KeyError):
        history.record(broken)
    assert history.runs() == []


def test_not_a_report_is_refused(history: History) -> None:
    with pytest.raises(ValueError, match=r"diag\.report/1"):
        history.record({"schema": "diag.routes/1"})


def _one_line_config_error(path: Path, *, create: bool = True) -> str:
    with pytest.raises(ConfigError) as raised, History(path, create=create):
        pass
    message = str(raised.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_garbage_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    path.write_bytes(b"this is not a database at all\n" * 200)
    assert "file is not a database" in _one_line_config_error(path)


def test_damaged_database_is_a_config_error(tmp_path: Path, healthy: Document) -> None:
    path = tmp_path / "history.sqlite3"
    with History(path) as history:
        for _ in range(5):
            history.record(healthy)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(path.read_bytes())
    page = 4096
    data[page : len(data)] = b"\xff" * (len(data) - page)  # every page but the header page
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError) as raised, History(path) as damaged:
        damaged.runs()
        damaged.changes("contoso.com")
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("update", "value", "reason"),
    [
        ("UPDATE runs SET status = ?", "bogus", "'bogus' is not a valid Verdict"),
        ("UPDATE domain_runs SET status = ?", "bogus", "'bogus' is not a valid Verdict"),
        ("UPDATE runs SET started_at = ?", "garbage", "Invalid isoformat string"),
        ("UPDATE runs SET finished_at = ?", b"\xff", "a bytes value where text belongs"),
        ("UPDATE mx_hosts SET name = ? WHERE run_id = 2", b"\xff", "a bytes value where text belongs"),
    ],
)
def test_a_stored_value_diag_does_not_write_is_a_config_error(
    tmp_path: Path, healthy: Document, update: str, value: str | bytes, reason: str
) -> None:
    """Given a history whose tables were edited by hand, listing it (after --prune) names the file in one line."""
    path = tmp_path / "history.sqlite3"
    with History(path) as history:
        history.record(healthy)
        history.record(healthy)
    with sqlite3.connect(path) as db:
        db.execute(update, (value,))
    db.close()
    with pytest.raises(ConfigError) as raised, History(path, create=False) as damaged:
        damaged.prune(keep_days=30)
        render_history(damaged)
    message = str(raised.value)
    assert f"the history database {path} is damaged: {reason}" in message and "\n" not in message


def test_newer_schema_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    with History(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    assert "newer diag" in _one_line_config_error(path)


def test_foreign_database_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE runs (x)")
    db.close()
    assert "not a diag run history" in _one_line_config_error(path)


def test_missing_database_without_create(tmp_path: Path) -> None:
    path = tmp_path / "typo.sqlite3"
    assert "no run history" in _one_line_config_error(path, create=False)
    assert not path.exists()


def test_default_history_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_history_path() == tmp_path / "diag" / "history.sqlite3"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_history_path() == Path.home() / ".local" / "share" / "diag" / "history.sqlite3"


def test_prune_keeps_recent_runs(history: History, healthy: Document) -> None:
    old = copy.deepcopy(healthy)
    old["started_at"] = "2001-01-01T00:00:00Z"
    history.record(old)
    recent = history.record(healthy)
    assert history.prune(keep_days=30) == 1
    assert [r.run_id for r in history.runs()] == [recent]
    assert _kinds(history.changes("contoso.com")) == [ChangeKind.FIRST_RUN]


def _open_fresh(path: str) -> str:
    try:
        with History(Path(path)):
            return "ok"
    except ConfigError as exc:
        return str(exc)


def test_first_runs_started_together_all_open_the_new_history(tmp_path: Path) -> None:
    """Two cron jobs whose first run starts at the same moment: SQLite may refuse the switch of a new database to
    WAL at once ("database is locked") instead of waiting; preparation is serialised, so every opener succeeds."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    with context.Pool(6) as pool:
        for attempt in range(60):
            path = str(tmp_path / f"history-{attempt}.db")
            assert pool.map(_open_fresh, [path] * 6) == ["ok"] * 6


def test_a_probe_that_stops_arriving_is_a_new_problem(history: History, lab: Lab, healthy: Document) -> None:
    # Given a healthy run (the lab's four probes arrive), then one where John's probe to Sun goes through an
    # on-premises server whose smart host refuses connections
    import dataclasses

    from diag.config import load_config
    from diag.lab.world import EXAMPLE_CONFIG

    org = load_config(EXAMPLE_CONFIG)
    broken = tuple(
        dataclasses.replace(probe, via="badhop.contoso.com", sender="branch@contoso.com", deadline=2.0)
        if probe.name == "John to Sun" else probe
        for probe in org.probes
    )  # fmt: skip
    stuck = _run(lab, ["contoso.com"], organization=dataclasses.replace(org, probes=broken))
    history.record(healthy)
    changes = history.run_changes(history.record(stuck))
    # Then the timeout is new, named by the probe and the host it entered at (not the lab's port)
    assert _kinds(changes) == [ChangeKind.STATUS_CHANGED, ChangeKind.NEW]
    assert (changes[1].code, changes[1].subject) == ("E2E_TIMEOUT", "john to sun via badhop.contoso.com")
