"""The record of probe sends (``diag/probe/pace.py``): a real file, real locks and, for two cron jobs at once, two
real processes. The probes that it holds back are sent (or not) against the lab in tests/probe/test_run.py."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from diag.config import DEFAULT_MIN_INTERVAL, ProbeConfig
from diag.probe.pace import SCHEMA, LastSent, SentRecord, default_record_path

PROBE = ProbeConfig("John to Sun", sender="john@contoso.com", recipient="sun@tailspintoys.com",
                    via="mail.contoso.com", watch="maildir:/x", min_interval=60)  # fmt: skip
T0 = 1_800_000_000.0


def test_a_probe_sent_is_held_back_for_its_min_interval(tmp_path: Path) -> None:
    record = SentRecord(tmp_path / "sent.json")
    # Given nothing recorded, the probe may go, and claiming it records the send
    assert record.last(PROBE, now=T0) is None
    assert record.claim(PROBE, now=T0) is None
    # Then within its MinInterval it is held back, with when it was sent and how long ago
    held = LastSent(datetime.fromtimestamp(T0, UTC), 59.5)
    assert record.last(PROBE, now=T0 + 59.5) == held
    assert record.claim(PROBE, now=T0 + 59.5) == held
    # and a refused claim records nothing: at the interval the probe may go again
    assert record.claim(PROBE, now=T0 + 60) is None
    assert record.last(PROBE, now=T0 + 61) == LastSent(datetime.fromtimestamp(T0 + 60, UTC), 1.0)


def test_the_same_probe_is_its_name_from_to_and_via_in_any_case(tmp_path: Path) -> None:
    record = SentRecord(tmp_path / "sent.json")
    record.claim(PROBE, now=T0)
    same = ProbeConfig("JOHN to sun", sender="John@Contoso.com", recipient="SUN@tailspintoys.com",
                       via="Mail.Contoso.com", watch="imaps://elsewhere/INBOX", deadline=5)  # fmt: skip
    assert record.last(same, now=T0 + 1) is not None
    for other in (replace(PROBE, via=None), replace(PROBE, via="mail.contoso.com:587"), replace(PROBE, name="Other"),
                  replace(PROBE, recipient="bob@contoso.com"), replace(PROBE, sender="bob@contoso.com")):  # fmt: skip
        assert record.last(other, now=T0 + 1) is None, other


def test_each_probes_own_interval_decides(tmp_path: Path) -> None:
    record = SentRecord(tmp_path / "sent.json")
    record.claim(PROBE, now=T0)
    assert record.last(replace(PROBE, min_interval=5), now=T0 + 6) is None
    assert record.last(replace(PROBE, min_interval=3600), now=T0 + 600) is not None
    assert PROBE.min_interval == 60 == DEFAULT_MIN_INTERVAL


def test_a_clock_gone_back_holds_a_probe_no_longer_than_its_interval(tmp_path: Path) -> None:
    record = SentRecord(tmp_path / "sent.json")
    record.claim(PROBE, now=T0)
    assert record.last(PROBE, now=T0 - 30) == LastSent(datetime.fromtimestamp(T0, UTC), 0.0)
    assert record.last(PROBE, now=T0 - 3600) is None


def test_the_record_is_a_small_private_json_file_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "new" / "sent.json"
    record = SentRecord(path)
    record.claim(ProbeConfig("Old", sender="a@b.example", recipient="c@d.example", watch="maildir:/x"), now=T0 - 90000)
    # Sends older than the longest MinInterval (a day) are dropped at the next write
    record.claim(PROBE, now=T0)
    record.claim(ProbeConfig("Other", sender="a@b.example", recipient="c@d.example", watch="maildir:/x"), now=T0 + 1)
    document = json.loads(path.read_text())
    assert document["schema"] == SCHEMA
    assert document["sent"] == [
        {"name": "john to sun", "from": "john@contoso.com", "to": "sun@tailspintoys.com", "via": "mail.contoso.com",
         "at": T0},
        {"name": "other", "from": "a@b.example", "to": "c@d.example", "via": "", "at": T0 + 1},
    ]  # fmt: skip
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # Only the record and its lock file: no temporary file is left behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["sent.json", "sent.json.lock"]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{\"schema\": \"diag.sent-probes/1\", \"sent\": [{\"name\": ", "Expecting value"),
        (b"\xff\xfe garbage", "codec can't decode"),
        (b'{"schema": "something else", "sent": []}', "not a diag.sent-probes/1 document"),
        (b'{"schema": "diag.sent-probes/1", "sent": {}}', "no list of sends"),
        (b'{"schema": "diag.sent-probes/1", "sent": [{"name": "x", "from": "a", "to": "b", "via": "", "at": "now"}]}',
         "a send without its time"),
        (b'{"schema": "diag.sent-probes/1", "sent": [{"name": "x", "at": 1}]}', "a send without its name"),
        (b'{"schema": "diag.sent-probes/1", "sent": [{"name": "x", "from": "a", "to": "b", "via": "", "at": NaN}]}',
         "a send without its time"),
        (b"[" * 100_000, "nested too deeply"),
        (b" " * (1 << 20) + b"{}", "larger than 1048576 bytes"),
    ],
    ids=["truncated", "not UTF-8", "another schema", "no list", "bad time", "missing fields", "NaN", "deep", "huge"],
)
def test_a_damaged_record_is_taken_as_empty_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, why: str
) -> None:
    path = tmp_path / "sent.json"
    path.write_bytes(content)
    record = SentRecord(path)
    with caplog.at_level(logging.WARNING, logger="diag.probe.pace"):
        assert record.last(PROBE, now=T0) is None
        assert record.claim(PROBE, now=T0) is None
    assert caplog.records and all(r.levelno == logging.WARNING for r in caplog.records)
    assert f"{path}: the record of probes sent is damaged (" in caplog.text and why in caplog.text
    # and the next write replaces it with a sound record
    assert record.last(PROBE, now=T0 + 1) is not None
    assert json.loads(path.read_text())["schema"] == SCHEMA


def test_a_record_that_cannot_be_kept_is_an_error_for_the_caller(tmp_path: Path) -> None:
    # (The caller holds the probe back: pacing that cannot be kept is not skipped.)
    blocker = tmp_path / "a file"
    blocker.write_text("not a directory")
    record = SentRecord(blocker / "sent.json")
    with pytest.raises(NotADirectoryError):
        record.last(PROBE)
    with pytest.raises(FileExistsError):
        record.claim(PROBE)


def test_the_record_lives_beside_the_history_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_record_path() == tmp_path / "data" / "diag" / "history.sent-probes.json"
    assert default_record_path(tmp_path / "runs.sqlite3") == tmp_path / "runs.sent-probes.json"


CLAIM = """
import sys, time
from diag.config import ProbeConfig
from diag.probe.pace import SentRecord
probe = ProbeConfig("John to Sun", sender="john@contoso.com", recipient="sun@tailspintoys.com", watch="maildir:/x")
record = SentRecord(sys.argv[1])
sys.stdin.readline()  # every process is ready: claim at once
print("sent" if record.claim(probe) is None else "held")
"""


def test_of_many_processes_claiming_one_probe_at_once_one_sends(tmp_path: Path) -> None:
    # Two cron jobs (here eight processes) reach the same probe at the same moment: the lock lets one send it.
    path = tmp_path / "sent.json"
    command = [sys.executable, "-c", CLAIM, str(path)]
    processes = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(8)]
    outputs = [process.communicate("go\n", timeout=60)[0].strip() for process in processes]
    assert sorted(outputs) == ["held"] * 7 + ["sent"]
    assert len(json.loads(path.read_text())["sent"]) == 1


def test_a_claim_waits_for_the_lock_another_process_holds(tmp_path: Path) -> None:
    # Given another process in the middle of its claim (it holds the lock file beside the record)
    path = tmp_path / "sent.json"
    path.parent.mkdir(exist_ok=True)
    fd = os.open(tmp_path / "sent.json.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    results: list[LastSent | None] = []
    claimer = threading.Thread(target=lambda: results.append(SentRecord(path).claim(PROBE)))
    try:
        claimer.start()
        time.sleep(0.3)
        # Then this claim neither reads nor writes until the lock is free
        assert claimer.is_alive() and not path.exists()
    finally:
        os.close(fd)
    claimer.join(timeout=10)
    assert results == [None] and path.exists()
