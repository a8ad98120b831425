"""The acceptance promise under SIGKILL: every message the relay answered 250 to is delivered after a restart
(security-cases.md DUR-02, on a small scale: a real `diag relay` process, killed mid-load)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import mailbox
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib

from diag.lab.pki import TestPKI
from diag.relay.journal import boot_id, read_segment

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


def _start(tmp: Path, port: int, *options: str) -> subprocess.Popen[bytes]:
    with (tmp / "relay.log").open("ab") as log:  # the child keeps its own copy of the descriptor
        relay = subprocess.Popen(
            [sys.executable, "-m", "diag", "relay", "--config", str(tmp / "relay.toml"), "--listen", f"{IP}:{port}",
             "--spool", str(tmp / "spool"), "--maildir", str(tmp / "maildir"), *options],
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


def _killed_mid_load(tmp: Path, port: int, *, delivering: bool = True) -> list[str]:
    """A relay killed with SIGKILL after 150 messages were acknowledged; the Message-IDs acknowledged. Unless
    ``delivering``, its delivery process is stopped from the start (and killed with it), so what it acknowledged
    is still queued."""
    relay = _start(tmp, port)
    child = _child_of(relay)
    if not delivering:
        os.kill(child, signal.SIGSTOP)
    acknowledged: list[str] = []
    try:
        asyncio.run(asyncio.wait_for(_load(port, acknowledged, stop_after=150, relay=relay), 60))
        relay.wait(timeout=10)
    finally:
        relay.kill()
        relay.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # gone already when it was delivering
            os.kill(child, signal.SIGKILL)
    assert relay.returncode == -signal.SIGKILL and len(acknowledged) >= 150
    return acknowledged


def _restarted_delivers(tmp: Path, port: int, acknowledged: list[str]) -> None:
    """A relay started again on the same spool recovers and delivers every message acknowledged."""
    relay = _start(tmp, port)
    try:
        box = tmp / "maildir" / "sink@sink.example"
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


def test_sigkill_loses_nothing_that_was_acknowledged(tmp_path: Path) -> None:
    (tmp_path / "relay.toml").write_text(CONFIG)
    port = _free_port()
    _restarted_delivers(tmp_path, port, _killed_mid_load(tmp_path, port))


def test_a_delivery_process_that_falls_behind_delivers_every_message_once(tmp_path: Path) -> None:
    """Without a crash nothing is delivered twice. The delivery process is stopped mid-load for longer than a
    journal segment lives: the checkpoints write queue files for the messages waiting in the pipe, which the
    delivery process then reads both ways, from the queue and from the pipe, once it runs again."""
    (tmp_path / "relay.toml").write_text(CONFIG)
    port = _free_port()
    relay = _start(tmp_path, port)
    queue = tmp_path / "spool" / "queue"
    sent: list[str] = []
    try:
        child = _child_of(relay)
        os.kill(child, signal.SIGSTOP)
        try:

            async def load() -> None:
                async def session(worker: int) -> None:
                    for n in range(40):
                        message = EmailMessage()
                        message["From"], message["To"] = "load@sink.example", "sink@sink.example"
                        message["Message-ID"] = ident = f"<{worker}.{n}@load.example>"
                        message.set_content("x" * 512)
                        await aiosmtplib.send(message, hostname=IP, port=port, start_tls=False, timeout=10)
                        sent.append(ident)

                await asyncio.gather(*(session(worker) for worker in range(8)))

            asyncio.run(asyncio.wait_for(load(), 60))
            deadline = time.monotonic() + 20
            while not any(queue.glob("*.msg")) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert any(queue.glob("*.msg"))  # checkpoints wrote what the stopped process had not delivered
        finally:
            os.kill(child, signal.SIGCONT)
        box = tmp_path / "maildir" / "sink@sink.example"
        deadline = time.monotonic() + 60
        delivered: list[str] = []
        while time.monotonic() < deadline:
            if box.exists():
                delivered = [str(m["Message-ID"]) for m in mailbox.Maildir(box, create=False)]
            if set(delivered) >= set(sent) and not any(queue.glob("*.msg")):
                break
            time.sleep(0.2)
        time.sleep(1.0)  # a duplicate, if any, would come now
        delivered = [str(m["Message-ID"]) for m in mailbox.Maildir(box, create=False)]
        assert len(sent) == 320 and sorted(delivered) == sorted(sent)
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(timeout=20)
    assert relay.returncode == 0


def test_a_machine_crash_loses_nothing_that_was_acknowledged(tmp_path: Path) -> None:
    """The journal holds the acknowledged messages until their segment's checkpoint writes their queue files: a
    crash of the machine may take away anything else. Killed mid-load, then every queue file a journal segment
    still covers taken away and the segments marked as written in another boot (what a crash and a reboot leave),
    the relay still delivers everything it acknowledged."""
    (tmp_path / "relay.toml").write_text(CONFIG)
    port = _free_port()
    acknowledged = _killed_mid_load(tmp_path, port, delivering=False)
    spool = tmp_path / "spool"
    records = 0
    for segment in sorted((spool / "journal").glob("*.j")):
        for qid, _ in read_segment(segment).records:
            (spool / "queue" / f"{qid}.msg").unlink(missing_ok=True)
            records += 1
        segment.write_bytes(segment.read_bytes().replace(boot_id().encode("ascii"), b"0" * len(boot_id()), 1))
    assert records > 0  # the relay was killed with messages only the journal made durable
    _restarted_delivers(tmp_path, port, acknowledged)


def test_queue_lists_what_waits_and_why(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from diag.relay.spool import Envelope, RecipientStatus, Spool

    (tmp_path / "relay.toml").write_text(CONFIG)
    spool = Spool(tmp_path / "spool")
    qid = spool.store(Envelope("john@contoso.com", ("sun@tailspintoys.com",)), b"Subject: x\r\n\r\nx\r\n")
    later = datetime.now(UTC) + timedelta(minutes=5)
    spool.update(qid, [RecipientStatus("sun@tailspintoys.com", attempts=2, next_attempt=later,
                                       detail="450 4.4.316 Connection refused")])  # fmt: skip
    out = _queue_listing(tmp_path)
    assert qid in out and "from <john@contoso.com>" in out
    assert "<sun@tailspintoys.com> pending, 2 attempts" in out
    assert "450 4.4.316 Connection refused" in out and "1 queued in" in out


def test_queue_neither_waits_on_a_pipe_nor_fails_on_odd_entries_and_names_what_it_cannot_read(tmp_path: Path) -> None:
    from diag.relay.spool import Envelope, Spool

    (tmp_path / "relay.toml").write_text(CONFIG)
    spool = Spool(tmp_path / "spool")
    qid = spool.store(Envelope("john@contoso.com", ("sun@tailspintoys.com",)), b"Subject: x\r\n\r\nx\r\n")
    os.mkfifo(spool.journal.directory / "odd.j")
    os.mkfifo(spool.queue / f"{qid}.state")
    (spool.queue / "odd.msg").mkdir()
    out = _queue_listing(tmp_path)
    assert qid in out and out.splitlines()[-1] == f"1 queued in {tmp_path / 'spool'}"
    shutil.rmtree(tmp_path / "spool" / "queue")
    (tmp_path / "spool" / "queue").write_text("a file where the queue directory goes")
    done = _queue_run(tmp_path)
    assert done.returncode == 3
    queue = tmp_path / "spool" / "queue"
    assert done.stderr.splitlines() == [f"diag: error: cannot read the spool: File exists ({queue})"]


def _queue_run(tmp: Path) -> subprocess.CompletedProcess[str]:
    """`diag relay queue` on the spool under ``tmp``."""
    return subprocess.run(
        [sys.executable, "-m", "diag", "relay", "--config", str(tmp / "relay.toml"), "--spool", str(tmp / "spool"),
         "queue"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def _queue_listing(tmp: Path) -> str:
    """What `diag relay queue` prints for the spool under ``tmp``."""
    done = _queue_run(tmp)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_queue_lists_what_a_crash_left_in_the_journal_alone_while_the_relay_is_stopped(tmp_path: Path) -> None:
    """After a crash of the machine a queue file may be lost while the journal still holds its message: the
    listing shows it, marked, until the relay's next start puts it back. Not while a relay holds the spool: its
    journal then holds what is in flight."""
    from diag.relay.spool import Envelope, Spool

    (tmp_path / "relay.toml").write_text(CONFIG)
    spool = Spool(tmp_path / "spool")
    lost, kept = (Spool.new_qid() for _ in range(2))
    message = (Envelope("john@contoso.com", ("sun@tailspintoys.com",)), b"Subject: x\r\n\r\nx\r\n")
    spool.store_batch([(lost, *message), (kept, *message)])
    closed = spool.journal.close()
    assert closed is not None
    closed.path.write_bytes(closed.path.read_bytes().replace(boot_id().encode(), b"0" * len(boot_id()), 1))
    spool.store(*message, qid=kept)  # its checkpoint wrote it; the crash undid the segment's deletion

    out = _queue_listing(tmp_path)
    assert lost in out and kept in out
    assert out.count("in the journal only: put back in the queue when the relay starts") == 1
    assert out.splitlines()[-1].endswith(", 1 more in its journal (put back when the relay starts)")
    with open(tmp_path / "spool" / "relay.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # as a running relay holds it
        out = _queue_listing(tmp_path)
    assert lost not in out and out.splitlines()[-1] == f"1 queued in {tmp_path / 'spool'}"


def _child_of(relay: subprocess.Popen[bytes]) -> int:
    """The delivery process `diag relay` forked."""
    children = Path(f"/proc/{relay.pid}/task/{relay.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def _running(pid: int) -> bool:
    """Is ``pid`` alive (not gone, not a zombie waiting to be reaped)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_delivery_runs_in_a_child_process_that_ends_with_the_relay(tmp_path: Path) -> None:
    """Intake and delivery are two processes: mail accepted by one is delivered by the other, and a SIGTERM to
    the relay ends both, with status 0."""
    (tmp_path / "relay.toml").write_text(CONFIG)
    port = _free_port()
    relay = _start(tmp_path, port)
    try:
        child = _child_of(relay)
        message = EmailMessage()
        message["From"], message["To"], message["Message-ID"] = "a@sink.example", "sink@sink.example", "<one@x>"
        message.set_content("two processes")
        asyncio.run(aiosmtplib.send(message, hostname=IP, port=port, start_tls=False, timeout=5))
        box = tmp_path / "maildir" / "sink@sink.example"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (box.exists() and len(mailbox.Maildir(box, create=False))):
            time.sleep(0.05)
        assert [str(m["Message-ID"]) for m in mailbox.Maildir(box, create=False)] == ["<one@x>"]
    finally:
        stopping = time.monotonic()
        relay.send_signal(signal.SIGTERM)
        relay.wait(timeout=20)
    assert relay.returncode == 0
    assert not _running(child)
    # A clean stop: the child saw the pipe end (not killed after its grace), well within that grace
    assert "did not stop" not in (tmp_path / "relay.log").read_text() and time.monotonic() - stopping < 5


def test_the_relay_process_runs_on_uvloop_and_serves_starttls_on_it(tmp_path: Path) -> None:
    """`diag relay` runs both its processes on uvloop's event loop where uvloop is installed (a dependency on
    Linux and macOS). aiosmtpd's STARTTLS, which hands the connection to asyncio's SSLProtocol, works on it."""
    pki = TestPKI.create()
    chain, key = pki.issue(["sink.relay.example"]).write(tmp_path, "relay")
    (tmp_path / "relay.toml").write_text(CONFIG)
    port = _free_port()
    relay = _start(tmp_path, port, "--tls-cert", str(chain), "--tls-key", str(key))
    try:
        message = EmailMessage()
        message["From"], message["To"], message["Message-ID"] = "a@sink.example", "sink@sink.example", "<tls@x>"
        message.set_content("over TLS")

        async def send() -> None:
            client = aiosmtplib.SMTP(hostname=IP, port=port, start_tls=False, timeout=5)
            await client.connect()
            trust = ssl.create_default_context(cadata=pki.root_pem().decode())
            await client.starttls(server_hostname="sink.relay.example", tls_context=trust)
            await client.send_message(message)
            await client.quit()

        asyncio.run(send())
        box = tmp_path / "maildir" / "sink@sink.example"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (box.exists() and len(mailbox.Maildir(box, create=False))):
            time.sleep(0.05)
        [stored] = list(mailbox.Maildir(box, create=False))
        assert "with ESMTPS" in stored["Received"] and "TLS" in stored["Received"]
        if importlib.util.find_spec("uvloop"):  # the delivery process, which delivered it, runs on uvloop too
            assert "uvloop/loop." in Path(f"/proc/{_child_of(relay)}/maps").read_text()
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(timeout=20)
    assert relay.returncode == 0
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    assert (tmp_path / "relay.log").read_text().splitlines()[0].endswith(f" loop={loop}")


def test_a_relay_whose_delivery_process_dies_stops_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "relay.toml").write_text(CONFIG)
    port = _free_port()
    relay = _start(tmp_path, port)
    try:
        os.kill(_child_of(relay), signal.SIGKILL)
        relay.wait(timeout=20)
    finally:
        _stopped(relay)
    assert relay.returncode == 3
    lines = (tmp_path / "relay.log").read_text().splitlines()
    assert lines[-1].startswith("diag: error: the delivery process (pid ") and "queued mail stays in" in lines[-1]


def test_the_delivery_process_leaves_when_the_relay_is_killed(tmp_path: Path) -> None:
    (tmp_path / "relay.toml").write_text(CONFIG)
    port = _free_port()
    relay = _start(tmp_path, port)
    child = _child_of(relay)
    relay.kill()
    relay.wait(timeout=10)
    deadline = time.monotonic() + 15
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child)


TARPIT_CONFIG = """
[[AcceptedDomain]]
DomainName = "source.example"
DomainType = "Authoritative"
Default = true

[[OutboundConnector]]
Name = "To the tarpit"
ConnectorType = "Partner"
RecipientDomains = ["elsewhere.example"]
UseMXRecord = false
SmartHosts = ["{ip}"]

[[InboundConnector]]
Name = "From on-premises"
ConnectorType = "OnPremises"
SenderDomains = ["*"]
SenderIPAddresses = ["127.0.0.1", "{ip}"]

[Relay]
Role = "cloud"
Hostname = "relay.test.example"
SmtpPort = {port}
AllowPrivate = true
"""


def _stopped(relay: subprocess.Popen[bytes]) -> None:
    if relay.poll() is None:
        relay.kill()
        relay.wait(timeout=10)


def test_a_delivery_process_whose_relay_died_cancels_its_deliveries_at_once(tmp_path: Path) -> None:
    """After SIGTERM deliveries in flight get a grace to finish; when the relay is killed the child stops them at
    once, so a relay restarted at once does not find it still working the same spool."""
    with socket.socket() as tarpit:  # accepts and never greets
        tarpit.bind((IP, 0))
        tarpit.listen(8)
        tarpit.settimeout(20)
        (tmp_path / "relay.toml").write_text(TARPIT_CONFIG.format(ip=IP, port=tarpit.getsockname()[1]))
        port = _free_port()
        relay = _start(tmp_path, port)
        try:
            child = _child_of(relay)
            message = EmailMessage()
            message["From"], message["To"], message["Message-ID"] = "a@source.example", "b@elsewhere.example", "<t@x>"
            message.set_content("to the tarpit")
            asyncio.run(aiosmtplib.send(message, hostname=IP, port=port, start_tls=False, timeout=5))
            held, _ = tarpit.accept()  # the child is delivering: it waits for the smart host's greeting
            with held:
                relay.kill()
                relay.wait(timeout=10)
                killed = time.monotonic()
                while _running(child) and time.monotonic() < killed + 10:
                    time.sleep(0.02)
                assert not _running(child)
                assert time.monotonic() - killed < 2.5  # not the 5 s grace a SIGTERM gives
        finally:
            _stopped(relay)
    assert "deliveries cancelled, they stay queued" in (tmp_path / "relay.log").read_text()


def test_a_relay_that_cannot_listen_delivers_nothing_and_says_why(tmp_path: Path) -> None:
    """The delivery process waits for the relay to listen: one that cannot start leaves the spool alone."""
    from diag.relay.spool import Envelope, Spool

    (tmp_path / "relay.toml").write_text(CONFIG)
    spool = Spool(tmp_path / "spool")
    qid = spool.store(Envelope("a@sink.example", ("sink@sink.example",)), b"Subject: x\r\n\r\nwaiting\r\n")
    with socket.socket() as taken:
        taken.bind((IP, 0))
        taken.listen(1)
        done = subprocess.run(
            [sys.executable, "-m", "diag", "relay", "--config", str(tmp_path / "relay.toml"), "--listen",
             f"{IP}:{taken.getsockname()[1]}", "--spool", str(tmp_path / "spool"),
             "--maildir", str(tmp_path / "maildir")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert done.returncode == 3
    assert done.stderr.splitlines()[-1].startswith("diag: error: the relay cannot start: ")
    assert "address already in use" in done.stderr.splitlines()[-1]
    assert [message.qid for message in spool.messages()] == [qid]
    assert not (tmp_path / "maildir").exists() or not any((tmp_path / "maildir").rglob("new/*"))


def test_a_spool_that_cannot_be_set_up_is_named_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "relay.toml").write_text(CONFIG)
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "queue").write_text("a file where the queue directory goes")
    done = subprocess.run(
        [sys.executable, "-m", "diag", "relay", "--config", str(tmp_path / "relay.toml"), "--listen",
         f"{IP}:{_free_port()}", "--spool", str(tmp_path / "spool"), "--maildir", str(tmp_path / "maildir")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 3
    assert done.stderr.splitlines() == [
        f"diag: error: the relay cannot start: File exists ({tmp_path / 'spool' / 'queue'})"
    ]


def test_two_relays_on_one_spool_are_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "relay.toml").write_text(CONFIG)
    relay = _start(tmp_path, _free_port())
    try:
        done = subprocess.run(
            [sys.executable, "-m", "diag", "relay", "--config", str(tmp_path / "relay.toml"), "--listen",
             f"{IP}:{_free_port()}", "--spool", str(tmp_path / "spool")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(timeout=20)
    assert done.returncode == 3
    assert done.stderr.splitlines() == [
        f"diag: error: the spool {tmp_path / 'spool'} is in use by another diag relay; give each relay its own --spool"
    ]
    assert relay.returncode == 0
