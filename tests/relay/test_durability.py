"""The acceptance promise under SIGKILL: every message the relay answered 250 to is delivered after a restart
(security-cases.md DUR-02, on a small scale: a real `diag relay` process, killed mid-load)."""

from __future__ import annotations

import asyncio
import mailbox
import os
import signal
import socket
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib

CONFIG = """
[[AcceptedDomain]]
DomainName = "sink.example"

[Relay]
Role = "internet"
Hostname = "sink.relay.example"
Mailboxes = ["sink@sink.example"]
"""
IP = "127.0.61.1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((IP, 0))
        return int(sock.getsockname()[1])


def _start(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    with (tmp / "relay.log").open("ab") as log:  # the child keeps its own copy of the descriptor
        relay = subprocess.Popen(
            [sys.executable, "-m", "diag", "relay", "--config", str(tmp / "relay.toml"), "--listen", f"{IP}:{port}",
             "--spool", str(tmp / "spool"), "--maildir", str(tmp / "maildir")],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((IP, port), timeout=0.2):
                return relay
        except OSError:
            time.sleep(0.05)
    relay.kill()
    raise AssertionError("the relay did not start listening")


async def _load(port: int, acknowledged: list[str], *, stop_after: int, relay: subprocess.Popen[bytes]) -> None:
    """Send messages over 8 sessions; SIGKILL the relay once ``stop_after`` were acknowledged."""

    async def session(worker: int) -> None:
        for n in range(10_000):
            message = EmailMessage()
            message["From"], message["To"] = "load@sink.example", "sink@sink.example"
            message["Message-ID"] = ident = f"<{worker}.{n}.{time.monotonic_ns()}@load.example>"
            message["Subject"] = "durability"
            message.set_content("x" * 512)
            try:
                await aiosmtplib.send(message, hostname=IP, port=port, start_tls=False, timeout=5)
            except (aiosmtplib.SMTPException, OSError):
                return  # the relay is gone: whatever was not acknowledged may be lost
            acknowledged.append(ident)
            if len(acknowledged) >= stop_after and relay.poll() is None:
                os.kill(relay.pid, signal.SIGKILL)

    await asyncio.gather(*(session(worker) for worker in range(8)))


def test_sigkill_loses_nothing_that_was_acknowledged(tmp_path: Path) -> None:
    (tmp_path / "relay.toml").write_text(CONFIG)
    port = _free_port()
    relay = _start(tmp_path, port)
    acknowledged: list[str] = []
    try:
        asyncio.run(asyncio.wait_for(_load(port, acknowledged, stop_after=150, relay=relay), 60))
        relay.wait(timeout=10)
        assert relay.returncode == -signal.SIGKILL and len(acknowledged) >= 150
        relay = _start(tmp_path, port)  # the same spool: it recovers and delivers what waited
        box = tmp_path / "maildir" / "sink@sink.example"
        deadline = time.monotonic() + 60
        delivered: set[str] = set()
        while time.monotonic() < deadline:
            if box.exists():
                delivered = {str(m["Message-ID"]) for m in mailbox.Maildir(box, create=False)}
            if delivered >= set(acknowledged):
                break
            time.sleep(0.2)
        assert set(acknowledged) - delivered == set()
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(timeout=20)
    assert relay.returncode == 0


def test_queue_lists_what_waits_and_why(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from diag.relay.spool import Envelope, RecipientStatus, Spool

    (tmp_path / "relay.toml").write_text(CONFIG)
    spool = Spool(tmp_path / "spool")
    qid = spool.store(Envelope("john@contoso.com", ("sun@tailspintoys.com",)), b"Subject: x\r\n\r\nx\r\n")
    later = datetime.now(UTC) + timedelta(minutes=5)
    spool.update(qid, [RecipientStatus("sun@tailspintoys.com", attempts=2, next_attempt=later,
                                       detail="450 4.4.316 Connection refused")])  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "diag", "relay", "--config", str(tmp_path / "relay.toml"),
         "--spool", str(tmp_path / "spool"), "queue"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert qid in done.stdout and "from <john@contoso.com>" in done.stdout
    assert "<sun@tailspintoys.com> pending, 2 attempts" in done.stdout
    assert "450 4.4.316 Connection refused" in done.stdout and "1 queued in" in done.stdout
