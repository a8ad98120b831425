"""Relay throughput: ``diag relay``, Postfix and a floor relay, each between a load client and ``smtp-sink``.

    python bench/relay_throughput.py [--messages N] [--sessions S] [--only diag|floor|postfix] [--mode MODE]
                                     [--repeat R] [--deadline SECONDS] [--no-baseline] [--keep]

Path: this script's asyncio SMTP client -> the MTA under test on 127.0.0.1 -> ``smtp-sink -c`` (Postfix's test
receiver, counting messages). N small messages (about 2 KB, unique Message-IDs, one recipient each) go over S
parallel sessions, first one message per connection, then over S reused connections. For each MTA and mode:
accepted messages, wall time of the load, intake messages/s, p50/p99 acceptance latency (from sending the final
dot of DATA to reading the 250 reply, every message measured), p50/p99 of the whole transaction (MAIL FROM to
that 250), the time until the sink had counted them all (end-to-end rate), and the CPU the MTA and the client
used per message. With ``--repeat R`` each figure is the median over R runs.

- diag: ``diag relay`` as a subprocess in the cloud role (accepted domain source.example, an OnPremises inbound
  connector for 127.0.0.1, an outbound connector for sink.example to the smart host 127.0.0.1 with opportunistic
  TLS), spool and maildir in a temporary directory; every accepted message is fsynced before its 250. It admits
  20 connections per client address (``Limits.connections_per_ip``): with more sessions the rest are greeted
  with 421 and this client tries again after a short pause (counted in the ``421s`` column).
- postfix: a private instance (``postfix -c DIR``) with its own config, queue and data directories in the same
  temporary directory, ``relayhost = [127.0.0.1]:<sink port>``, default fsync behaviour. /etc/postfix and the
  system's mail setup are never touched; the instance is stopped with ``postfix -c DIR stop`` even on errors.
- floor: the least a relay built on aiosmtpd and aiosmtplib (the SMTP server and client diag must use) in diag's
  two-process shape can do (``FLOOR_SERVER``): aiosmtpd with the relay's settings answers 250 at once and hands
  the message in memory to a forked delivery process, whose 20 aiosmtplib clients forward it to the sink over
  connections kept for the run. No disk, no policy, no log: its row bounds what the relay can reach against
  Postfix on this machine.
- floor-fs and floor-j: the same floor with the durability item 1 of issue 13 requires (on disk, file and
  directory entry, before the 250), kept by one writer thread that stores every message waiting and then wakes
  the event loop once. floor-fs keeps a file per message, as Postfix does (and diag did before its journal):
  written, fsynced, renamed into the queue, the directory fsynced once per batch; the file unlinked once
  forwarded. floor-j appends the messages waiting to one journal file with one fdatasync for all of them, as diag
  now does (diag writes a queue file only for a message still undelivered when its journal segment is
  checkpointed); each one forwarded is recorded in a second file. Neither fsyncs what it forgets (a crash may
  repeat a delivery, never lose one). Their rows bound what a relay on these libraries reaches with each way of
  keeping messages.
- sink: the client straight into smtp-sink, as a ceiling: what the client and the sink manage without an MTA.

Every wait is bounded (``--deadline`` per load and per drain); SIGINT and SIGTERM stop the run; everything
started is stopped and the temporary directory removed at the end (``--keep`` keeps it, with the MTAs' logs).
The postfix part needs root (Postfix's master starts as root); smtp-sink runs as ``nobody`` when the script runs
as root. Record results with the machine in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import math
import os
import platform
import pty
import re
import resource
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import BinaryIO

HOST = "127.0.0.1"
SENDER = "load@source.example"
RECIPIENT_DOMAIN = "sink.example"
MESSAGE_SIZE = 2048
READY_TIMEOUT = 20.0  # an MTA or the sink must greet within this
STEP_TIMEOUT = 30.0  # one SMTP command or reply
STOP_TIMEOUT = 15.0  # a process to exit after it was asked to
REFUSED_PAUSE = 0.02  # before trying again after a 421 greeting (a connection cap)
CLK_TCK = os.sysconf("SC_CLK_TCK")

MODES = {"connection": "one message per connection", "reuse": "reused connections"}
# The floor relays (FLOOR_SERVER), by how they keep a message before its 250.
FLOORS = {
    "floor": "with no disk",
    "floor-fs": "with a durable file per message, as Postfix keeps them",
    "floor-j": "with a durable append-only journal, as diag's intake keeps them",
}


# --- the load client ------------------------------------------------------------------------------------------


class SmtpError(Exception):
    """An unexpected reply; ``refused`` when it was a 421 greeting (the server's connection cap)."""

    def __init__(self, reply: str, *, refused: bool = False) -> None:
        super().__init__(reply)
        self.reply = reply
        self.refused = refused


@dataclass
class LoadResult:
    mta: str
    mode: str
    sessions: int
    wanted: int
    accepted: int = 0
    refused: int = 0  # connections greeted with 421 (and tried again)
    failed: int = 0  # messages not accepted (an error reply or a broken connection)
    first_error: str = ""
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)  # final dot to 250
    transactions: list[float] = field(default_factory=list)  # MAIL to the 250 after the final dot
    end_to_end: float | None = None  # seconds from the start of the load until the sink counted every message
    sink_counted: int = 0
    mta_cpu: float | None = None
    intake_cpu: float | None = None  # of mta_cpu, the process that takes the mail in (diag and the floors)
    client_cpu: float = 0.0
    timed_out: bool = False

    def rate(self) -> float:
        return self.accepted / self.wall if self.wall else 0.0

    def e2e_rate(self) -> float | None:
        return self.accepted / self.end_to_end if self.end_to_end else None

    def percentile(self, p: float, *, transaction: bool = False) -> float | None:
        """Nearest-rank percentile of the acceptance latencies (or the whole transactions'), in seconds."""
        values = self.transactions if transaction else self.latencies
        if not values:
            return None
        ordered = sorted(values)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1]


def message(index: int, run_id: str) -> bytes:
    """A message of about MESSAGE_SIZE bytes, CRLF lines, dot-stuffing not needed, a unique Message-ID."""
    head = (
        f"From: Load <{SENDER}>\r\n"
        f"To: <rcpt{index}@{RECIPIENT_DOMAIN}>\r\n"
        f"Subject: relay throughput {index}\r\n"
        f"Date: {formatdate(localtime=False)}\r\n"
        f"Message-ID: <{index}.{run_id}@bench.example>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
    ).encode("ascii")
    line = b"The quick brown fox jumps over the lazy dog, message body padding for the bench.\r\n"
    body = line * max(1, (MESSAGE_SIZE - len(head)) // len(line))
    return head + body


class Client:
    """One SMTP connection: plain, no pipelining, every read bounded by STEP_TIMEOUT."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), STEP_TIMEOUT)
        client = cls(reader, writer)
        try:
            greeting = await client.reply()
            if not greeting.startswith("220"):
                raise SmtpError(greeting, refused=greeting.startswith("421"))
            await client.command("EHLO loadgen.example", "250")
        except BaseException:
            client.abort()
            raise
        return client

    async def reply(self) -> str:
        lines: list[str] = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), STEP_TIMEOUT)
            if not line:
                raise ConnectionError("connection closed" + (f" after {lines[-1]!r}" if lines else ""))
            lines.append(line.decode("ascii", "replace").rstrip("\r\n"))
            if line[3:4] != b"-":
                return "\n".join(lines)

    async def command(self, text: str, expect: str) -> str:
        self.writer.write(text.encode("ascii") + b"\r\n")
        answer = await self.reply()
        if not answer.startswith(expect):
            raise SmtpError(f"{text.split(':')[0]}: {answer}")
        return answer

    async def send(self, index: int, content: bytes) -> tuple[float, float]:
        """One transaction; the seconds from sending the final dot to the 250, and from MAIL to the 250."""
        begun = time.perf_counter()
        await self.command(f"MAIL FROM:<{SENDER}>", "250")
        await self.command(f"RCPT TO:<rcpt{index}@{RECIPIENT_DOMAIN}>", "250")
        await self.command("DATA", "354")
        started = time.perf_counter()
        self.writer.write(content + b".\r\n")
        answer = await self.reply()
        finished = time.perf_counter()
        if not answer.startswith("250"):
            raise SmtpError(f"end of DATA: {answer}")
        return finished - started, finished - begun

    async def quit(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(b"QUIT\r\n")
            await asyncio.wait_for(self.reply(), 5.0)
        self.abort()

    def abort(self) -> None:
        self.writer.transport.abort()


async def run_load(port: int, mta: str, mode: str, messages: int, sessions: int, deadline: float) -> LoadResult:
    """Send ``messages`` over ``sessions`` parallel workers; each message gets one try (421 greetings excepted)."""
    result = LoadResult(mta, mode, sessions, messages)
    run_id = secrets.token_hex(6)
    numbers = iter(range(1, messages + 1))
    loop_deadline = time.monotonic() + deadline

    def failure(exc: BaseException) -> None:
        result.failed += 1
        if not result.first_error:
            result.first_error = f"{type(exc).__name__}: {exc}"

    async def connect() -> Client | None:
        """A connection, trying again after 421 greetings until the deadline."""
        while time.monotonic() < loop_deadline:
            try:
                return await Client.open(port)
            except SmtpError as exc:
                if not exc.refused:
                    raise
                result.refused += 1
                await asyncio.sleep(REFUSED_PAUSE)
        return None

    async def worker() -> None:
        client: Client | None = None
        try:
            for index in numbers:
                content = message(index, run_id)
                if client is None:
                    try:
                        client = await connect()
                    except (OSError, SmtpError, TimeoutError) as exc:
                        failure(exc)
                        continue
                    if client is None:
                        result.timed_out = True
                        return
                try:
                    latency, transaction = await client.send(index, content)
                    result.latencies.append(latency)
                    result.transactions.append(transaction)
                    result.accepted += 1
                except (OSError, SmtpError, TimeoutError) as exc:
                    failure(exc)
                    client.abort()
                    client = None
                    continue
                if mode == "connection":
                    await client.quit()
                    client = None
        finally:
            if client is not None:
                await client.quit()

    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(sessions)]
    done, pending = await asyncio.wait(tasks, timeout=deadline)
    for task in pending:
        task.cancel()
    if pending:
        result.timed_out = True
        await asyncio.wait(pending, timeout=STOP_TIMEOUT)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            failure(task.exception())  # type: ignore[arg-type]
    result.wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    result.client_cpu = (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)
    return result


# --- processes --------------------------------------------------------------------------------------------------


def log_file(path: Path) -> BinaryIO:
    """A file for a subprocess's output (opened before the process starts; the child keeps its own copy)."""
    return open(path, "wb")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (the state is the first), or None when it is gone."""
    try:
        return Path("/proc", str(pid), "stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def session_cpu(sid: int) -> float:
    """CPU seconds of every live process in session ``sid``, with their reaped children (cutime, cstime)."""
    total = 0
    for entry in os.scandir("/proc"):
        fields = proc_stat(entry.name) if entry.name.isdigit() else None
        if fields is not None and int(fields[3]) == sid:
            total += sum(int(value) for value in fields[11:15])
    return total / CLK_TCK


def process_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` alone (utime, stime); 0 when it is gone."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK if fields is not None else 0.0


def session_alive(sid: int) -> bool:
    for entry in os.scandir("/proc"):
        fields = proc_stat(entry.name) if entry.name.isdigit() else None
        if fields is not None and int(fields[3]) == sid and fields[0] != "Z":
            return True
    return False


async def greets(port: int) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 2.0)
    except (OSError, TimeoutError):
        return False
    try:
        line = await asyncio.wait_for(reader.readline(), 2.0)
        writer.write(b"QUIT\r\n")
        return line.startswith(b"220")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.transport.abort()


async def wait_ready(port: int, what: str, alive: Callable[[], bool], log: Path | None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{what} exited before it listened on {HOST}:{port}{tail(log)}")
        if await greets(port):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} did not greet on {HOST}:{port} within {READY_TIMEOUT:g} s{tail(log)}")


def tail(log: Path | None, lines: int = 8) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return "".join(f"\n    {line}" for line in text)


async def stop_process(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT; always reaped."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)


class Sink:
    """``smtp-sink -c`` on a free port; its running count read from its output."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "smtp-sink.err"
        self.count = 0
        self._changed = asyncio.Event()
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        binary = find_tool("smtp-sink")
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        with log_file(self.log) as errors:
            self._process = await asyncio.create_subprocess_exec(
                binary, *user, "-c", f"{HOST}:{self.port}", "1024",
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, start_new_session=True,
            )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        await wait_ready(self.port, "smtp-sink", lambda: self._process.returncode is None, self.log)  # type: ignore[union-attr]

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        pending = b""
        while chunk := await self._process.stdout.read(65536):
            pending += chunk
            *complete, pending = pending.split(b"\r")
            for record in reversed(complete):
                if match := re.search(rb"mesg=(\d+)", record):
                    self.count = int(match[1])
                    self._changed.set()
                    break

    async def reached(self, target: int, deadline: float) -> bool:
        """Wait until the sink counted ``target`` messages, at most until ``deadline`` (monotonic)."""
        while self.count < target:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    async def stop(self) -> None:
        if self._process is not None:
            await stop_process(self._process)
        if self._reader is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 5.0)


class _OneProcess:
    """An MTA this script runs as one subprocess, in a session of its own (with whatever it forks)."""

    _process: asyncio.subprocess.Process | None = None

    def cpu(self) -> float | None:
        return session_cpu(self._process.pid) if self._process and self._process.returncode is None else None

    def intake_cpu(self) -> float | None:
        """The CPU of the process started, which takes the mail in; the rest of its session (the delivery process
        it forked) is ``cpu()`` less this."""
        return process_cpu(self._process.pid) if self._process and self._process.returncode is None else None

    async def stop(self) -> None:
        if self._process is not None:
            await stop_process(self._process)


class DiagRelay(_OneProcess):
    """``diag relay`` in the cloud role, delivering sink.example to the sink."""

    name = "diag"

    def __init__(self, workdir: Path, sink_port: int) -> None:
        self.dir = workdir / "diag"
        self.port = free_port()
        self.sink_port = sink_port
        self.log = self.dir / "relay.log"
        self.spool = self.dir / "spool"
        self.maildir = self.dir / "maildir"
        # None: no file per message (its journal; a queue file only for what a checkpoint finds undelivered)
        self.files: Path | None = None

    def config(self) -> str:
        return f"""\
[Organization]
Name = "relay throughput bench"

[[AcceptedDomain]]
DomainName = "source.example"
DomainType = "Authoritative"
Default = true

[[OutboundConnector]]
Name = "To the sink"
ConnectorType = "Partner"
RecipientDomains = ["{RECIPIENT_DOMAIN}"]
UseMXRecord = false
SmartHosts = ["{HOST}"]

[[InboundConnector]]
Name = "From on-premises"
ConnectorType = "OnPremises"
SenderDomains = ["*"]
SenderIPAddresses = ["{HOST}"]

[Relay]
Role = "cloud"
Hostname = "relay.bench.example"
Spool = "{self.spool}"
Maildir = "{self.maildir}"
AllowPrivate = true
"""

    async def start(self) -> None:
        self.dir.mkdir()
        config = self.dir / "relay.toml"
        config.write_text(self.config())
        script = Path(sys.executable).with_name("diag")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "diag"]
        with log_file(self.log) as log:
            self._process = await asyncio.create_subprocess_exec(
                *command, "relay", "--config", str(config), "--listen", f"{HOST}:{self.port}",
                "--smtp-port", str(self.sink_port),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        await wait_ready(self.port, "diag relay", lambda: self._process.returncode is None, self.log)  # type: ignore[union-attr]



# The floor of any relay built from the parts diag must use, in diag's shape: two processes, as `diag relay`
# (diag/relay/service.py), each with its start-up objects frozen out of the garbage collector. The intake is
# aiosmtpd's SMTP protocol with the relay's settings (no TLS configured, as in this bench's relay); it answers 250
# to every message at once and hands it, in memory, through a pipe to a forked delivery process, where 20 aiosmtplib
# clients (the relay's delivery concurrency), each on one connection to the sink kept for the whole run (as the
# relay keeps its connections to a smart host), forward the messages. No disk, no policy, no routing, no log, no
# retries (a forwarder's error ends the run): no relay made of these two libraries in this shape takes messages in
# or passes them on with less work on this machine, so this row bounds what issue 13 item 1 can reach.
FLOOR_SERVER = """
import asyncio, collections, gc, os, pickle, struct, sys, threading
import aiosmtplib
from aiosmtpd.smtp import SMTP

HOST, PORT, SINK, STORAGE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
SPOOL = sys.argv[5] if len(sys.argv) > 5 else ""
NAME = "floor.bench.example"


class Writer:
    # One thread stores every message waiting, then wakes the loop once for all of them: the cheapest durable
    # store known here (a thread per message costs a wake-up each way per message).
    def __init__(self, loop):
        self.loop = loop
        self.waiting = collections.deque()
        self.wake = threading.Condition()
        self.number = 0
        self.journal = os.open(os.path.join(SPOOL, "journal"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        threading.Thread(target=self.run, daemon=True).start()

    def store(self, content):
        done = self.loop.create_future()
        with self.wake:
            self.waiting.append((done, content))
            self.wake.notify()
        return done

    def run(self):
        while True:
            with self.wake:
                while not self.waiting:
                    self.wake.wait()
                batch = list(self.waiting)
                self.waiting.clear()
            names = self.files(batch) if STORAGE == "files" else self.append(batch)
            self.loop.call_soon_threadsafe(self.stored, batch, names)

    def files(self, batch):
        # A file per message, as Postfix keeps them: written, fsynced, renamed; the directory fsynced.
        names = []
        for _, content in batch:
            self.number += 1
            tmp, queued = (os.path.join(SPOOL, part, str(self.number)) for part in ("tmp", "queue"))
            with open(tmp, "xb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp, queued)
            names.append(queued)
        directory = os.open(os.path.join(SPOOL, "queue"), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return names

    def append(self, batch):
        # An append-only journal: every message waiting in one write, one fdatasync (a group commit).
        numbers = list(range(self.number + 1, self.number + 1 + len(batch)))
        self.number += len(batch)
        os.write(self.journal, b"".join(b"%d %d\\n%s" % (n, len(c), c) for n, (_, c) in zip(numbers, batch)))
        os.fdatasync(self.journal)
        return [str(n) for n in numbers]

    def stored(self, batch, names):
        for (done, _), name in zip(batch, names):
            done.set_result(name)


class Handler:
    def __init__(self, pipe, writer):
        self.pipe = pipe
        self.writer = writer

    async def handle_DATA(self, server, session, envelope):
        name = await self.writer.store(envelope.content) if self.writer else None
        data = pickle.dumps((envelope.mail_from, envelope.rcpt_tos, envelope.content, name))
        self.pipe.write(struct.pack("!I", len(data)) + data)
        return "250 2.0.0 Ok: queued"

async def intake(fd):
    loop = asyncio.get_running_loop()
    pipe, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(fd, "wb", 0))
    handler = Handler(pipe, Writer(loop) if STORAGE != "memory" else None)
    factory = lambda: SMTP(handler, hostname=NAME, ident="ESMTP", require_starttls=False, enable_SMTPUTF8=False,
                           decode_data=False, data_size_limit=10485760, timeout=300, auth_required=False, loop=loop)
    server = await loop.create_server(factory, HOST, PORT)
    gc.freeze()
    await server.serve_forever()

async def forward(queue, done):
    client = aiosmtplib.SMTP(hostname=HOST, port=SINK, local_hostname=NAME, start_tls=False, timeout=30)
    await client.connect()
    while True:
        sender, recipients, content, name = await queue.get()
        await client.sendmail(sender, recipients, content)
        # Forgotten without an fsync (a crash may repeat a delivery, never lose one): the file unlinked, or the
        # journal's number recorded as delivered.
        if STORAGE == "files":
            os.unlink(name)
        elif STORAGE == "journal":
            os.write(done, b"%s\\n" % name.encode())

async def deliver(fd):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0))
    queue = asyncio.Queue()
    done = os.open(os.path.join(SPOOL, "delivered"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if SPOOL else -1
    forwarders = [asyncio.create_task(forward(queue, done)) for _ in range(20)]
    gc.freeze()
    try:
        while True:
            size = struct.unpack("!I", await reader.readexactly(4))[0]
            queue.put_nowait(pickle.loads(await reader.readexactly(size)))
    except asyncio.IncompleteReadError:
        return  # the intake ended

read_end, write_end = os.pipe()
if os.fork() == 0:
    os.close(write_end)
    asyncio.run(deliver(read_end))
    os._exit(0)
os.close(read_end)
asyncio.run(intake(write_end))
"""


class AiosmtpdFloor(_OneProcess):
    """The floor relay (FLOOR_SERVER) in a process of its own, forwarding to the sink, messages in memory only."""

    name = "floor"
    storage = "memory"

    def __init__(self, workdir: Path, sink_port: int) -> None:
        self.port = free_port()
        self.sink_port = sink_port
        self.log = workdir / f"{self.name}.log"
        self.spool = workdir / self.name
        self.files: Path | None = self.spool / "tmp" if self.storage == "files" else None

    async def start(self) -> None:
        arguments = [HOST, str(self.port), str(self.sink_port), self.storage]
        if self.storage != "memory":
            for directory in ("tmp", "queue"):
                (self.spool / directory).mkdir(parents=True, exist_ok=True)
            arguments.append(str(self.spool))
        with log_file(self.log) as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", FLOOR_SERVER, *arguments,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        await wait_ready(self.port, f"the {self.name} relay", lambda: self._process.returncode is None, self.log)  # type: ignore[union-attr]


class FilesFloor(AiosmtpdFloor):
    """The floor with item 1's durability kept as diag and Postfix keep it, a file per message: written, fsynced,
    renamed into the queue and the directory fsynced before the 250; unlinked once forwarded."""

    name = "floor-fs"
    storage = "files"


class JournalFloor(AiosmtpdFloor):
    """The floor with the same durability in an append-only journal: the messages waiting written together and
    one fdatasync for all of them before their 250s; each one forwarded recorded in a second file."""

    name = "floor-j"
    storage = "journal"


class PostfixInstance:
    """A private Postfix instance: ``postfix -c DIR`` with its queue and data directories under DIR."""

    name = "postfix"

    def __init__(self, workdir: Path, sink_port: int) -> None:
        self.dir = workdir / "postfix"
        self.config_dir = self.dir / "etc"
        self.queue = self.dir / "queue"
        self.files: Path | None = self.queue / "incoming"  # where cleanup creates each queue file
        self.data = self.dir / "data"
        self.log = self.dir / "maillog"
        self.port = free_port()
        self.sink_port = sink_port
        self.master_pid: int | None = None
        self.started = False

    def main_cf(self) -> str:
        return f"""\
# A private instance for bench/relay_throughput.py; nothing here is shared with /etc/postfix.
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {self.data}
maillog_file = {self.log}
maillog_file_prefixes = /var, /dev/stdout, {self.dir}
myhostname = postfix.bench.example
mydomain = bench.example
myorigin = $myhostname
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [{HOST}]:{self.sink_port}
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_tls_security_level = may
alias_maps =
alias_database =
local_recipient_maps =
biff = no
"""

    def master_cf(self) -> str:
        # Debian's master.cf, without chroot (the queue is not a prepared chroot) and with smtpd on our port only.
        services = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""
        return f"{HOST}:{self.port} inet n - n - - smtpd\n{services}"

    async def postfix(self, *args: str, limit: float = 60.0) -> tuple[int, str]:
        """Run ``postfix -c DIR <args>``; its exit status and what it said.

        Postfix's commands print their errors only to a terminal (else to the mail log, which is not running
        yet when a start fails), so their output goes to a pseudo-terminal.
        """
        reader, writer = pty.openpty()
        try:
            process = await asyncio.create_subprocess_exec(
                find_tool("postfix"), "-c", str(self.config_dir), *args,
                stdin=subprocess.DEVNULL, stdout=writer, stderr=writer,
            )  # fmt: skip
        finally:
            os.close(writer)
        try:
            await asyncio.wait_for(process.wait(), limit)
        except TimeoutError:
            await stop_process(process)
            return -1, f"postfix {' '.join(args)} did not finish within {limit:g} s"
        finally:
            output = drain_pty(reader)
        return process.returncode or 0, output

    async def start(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("Postfix's master must be started by root (run this script as root for postfix)")
        for directory in (self.config_dir, self.queue, self.data):
            directory.mkdir(parents=True)
        # Postfix daemons run as mail_owner: they must reach the queue and own the data directory.
        for directory in (self.dir.parent, self.dir):
            directory.chmod(0o755)
        shutil.chown(self.data, user=postfix_setting("mail_owner") or "postfix")
        (self.config_dir / "main.cf").write_text(self.main_cf())
        (self.config_dir / "master.cf").write_text(self.master_cf())
        self.started = True  # from here on, stop() runs `postfix stop`
        code, output = await self.postfix("start")
        if code != 0:
            raise RuntimeError(f"postfix -c {self.config_dir} start failed ({code}): {output}{tail(self.log)}")
        pid_file = self.queue / "pid" / "master.pid"
        with contextlib.suppress(OSError, ValueError):
            self.master_pid = int(pid_file.read_text().split()[0])
        await wait_ready(self.port, "postfix", lambda: self.master_pid is None or pid_alive(self.master_pid), self.log)

    def cpu(self) -> float | None:
        return session_cpu(self.master_pid) if self.master_pid and pid_alive(self.master_pid) else None

    async def stop(self) -> None:
        if not self.started:
            return
        code, output = await self.postfix("stop")
        if code != 0 and self.master_pid and pid_alive(self.master_pid):
            print(f"postfix -c {self.config_dir} stop failed ({code}): {output}; sending SIGTERM", file=sys.stderr)
            os.kill(self.master_pid, signal.SIGTERM)  # the master we started; it stops its children
        if self.master_pid:
            deadline = time.monotonic() + STOP_TIMEOUT
            # Polling /proc: nothing signals the exit of processes that are not our children.
            while session_alive(self.master_pid) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            if session_alive(self.master_pid):
                print(f"postfix processes of session {self.master_pid} still running", file=sys.stderr)


Mta = DiagRelay | AiosmtpdFloor | FilesFloor | JournalFloor | PostfixInstance


def drain_pty(fd: int) -> str:
    """What is waiting on the master side of a pseudo-terminal, without blocking; the descriptor is closed."""
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:  # EAGAIN: nothing more for now; EIO: every writer has closed it
        pass
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n").strip()


def pid_alive(pid: int) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def find_tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if found is None:
        raise RuntimeError(f"{name} not found (it comes with Postfix: apt-get install postfix)")
    return found


def postfix_setting(name: str) -> str:
    try:
        postconf = find_tool("postconf")
        output = subprocess.run([postconf, "-dh", name], capture_output=True, text=True, timeout=10).stdout
    except (RuntimeError, OSError, subprocess.TimeoutExpired):
        return ""
    return output.strip()


def become_subreaper() -> None:
    """Postfix's master detaches and leaves its children to whoever reaps orphans: make that this process, so
    none of them stays behind as a zombie of an init that does not reap (PR_SET_CHILD_SUBREAPER, Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)


def reap_orphans(timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)


# --- the run ----------------------------------------------------------------------------------------------------


async def measure_mta(mta: Mta | None, sink: Sink, args: argparse.Namespace, results: list[LoadResult]) -> None:
    """Every mode, ``--repeat`` times, against one MTA (None: straight into the sink); each run is drained into
    the sink before the next starts."""
    port = mta.port if mta is not None else sink.port
    name = mta.name if mta is not None else "sink"
    for _ in range(args.repeat):
        for mode in args.modes:
            before_count = sink.count
            cpu_before = mta.cpu() if mta is not None else None
            intake_before = mta.intake_cpu() if isinstance(mta, _OneProcess) else None
            started = time.monotonic()
            result = await run_load(port, name, mode, args.messages, args.sessions, args.deadline)
            drained = await sink.reached(before_count + result.accepted, time.monotonic() + args.deadline)
            if drained:
                result.end_to_end = time.monotonic() - started
            result.sink_counted = sink.count - before_count
            cpu_after = mta.cpu() if mta is not None else None
            if cpu_before is not None and cpu_after is not None:
                result.mta_cpu = cpu_after - cpu_before
            intake_after = mta.intake_cpu() if isinstance(mta, _OneProcess) else None
            if intake_before is not None and intake_after is not None:
                result.intake_cpu = intake_after - intake_before
            report_line(result, drained)
            results.append(result)


def report_line(result: LoadResult, drained: bool) -> None:
    notes = []
    if result.refused:
        notes.append(f"{result.refused} connections refused with 421 and tried again")
    if result.timed_out:
        notes.append("load deadline reached")
    if result.failed:
        notes.append(f"{result.failed} failed, first: {result.first_error}")
    if not drained:
        notes.append(f"sink counted only {result.sink_counted}/{result.accepted} within the deadline")
    e2e = f", all in the sink after {result.end_to_end:.2f} s" if result.end_to_end is not None else ""
    print(
        f"  {result.mta:<8} {MODES[result.mode]:<26} {result.accepted}/{result.wanted} accepted "
        f"in {result.wall:.2f} s ({result.rate():.0f}/s){e2e}" + (f" ({'; '.join(notes)})" if notes else ""),
        flush=True,
    )


@dataclass(frozen=True)
class Summary:
    """The runs of one MTA and mode: totals, and the median of each figure over the runs."""

    mta: str
    mode: str
    sessions: int
    runs: int
    accepted: int
    refused: int
    wall: float | None
    rate: float | None
    p50: float | None
    p99: float | None
    txn_p50: float | None
    txn_p99: float | None
    end_to_end: float | None  # None when a run was not drained in time
    e2e_rate: float | None
    mta_cpu_per_message: float | None
    intake_cpu_per_message: float | None
    client_cpu_per_message: float | None

    @classmethod
    def of(cls, runs: list[LoadResult]) -> Summary:
        def median(values: list[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return statistics.median(known) if known and len(known) == len(values) else None

        first = runs[0]
        return cls(
            first.mta, first.mode, first.sessions, len(runs),
            accepted=sum(r.accepted for r in runs),
            refused=sum(r.refused for r in runs),
            wall=median([r.wall for r in runs]),
            rate=median([r.rate() for r in runs]),
            p50=median([r.percentile(50) for r in runs]),
            p99=median([r.percentile(99) for r in runs]),
            txn_p50=median([r.percentile(50, transaction=True) for r in runs]),
            txn_p99=median([r.percentile(99, transaction=True) for r in runs]),
            end_to_end=median([r.end_to_end for r in runs]),
            e2e_rate=median([r.e2e_rate() for r in runs]),
            mta_cpu_per_message=median([r.mta_cpu / r.accepted if r.mta_cpu is not None and r.accepted else None
                                        for r in runs]),
            intake_cpu_per_message=median([r.intake_cpu / r.accepted if r.intake_cpu is not None and r.accepted
                                           else None for r in runs]),
            client_cpu_per_message=median([r.client_cpu / r.accepted if r.accepted else None for r in runs]),
        )  # fmt: skip


def ms(seconds: float | None) -> str:
    return f"{seconds * 1000:.1f}" if seconds is not None else "-"


def number(value: float | None, digits: int = 0) -> str:
    return f"{value:.{digits}f}" if value is not None else "-"


def print_table(results: list[LoadResult]) -> None:
    groups: dict[tuple[str, str], list[LoadResult]] = {}
    for result in results:
        groups.setdefault((result.mta, result.mode), []).append(result)
    rows = {key: Summary.of(runs) for key, runs in groups.items()}
    runs = max(row.runs for row in rows.values())
    header = (
        f"{'MTA':<8} {'mode':<26} {'sess':>4} {'accepted':>8} {'421s':>5} {'wall s':>6} {'msg/s':>6} "
        f"{'p50 ms':>6} {'p99 ms':>6} {'txn p50':>7} {'txn p99':>7} {'e2e s':>6} {'e2e msg/s':>9} "
        f"{'MTA CPU':>7} {'client CPU':>10}"
    )
    print(f"\n{'median of ' + str(runs) + ' runs' if runs > 1 else 'one run'} per row; CPU in ms per message")
    print(header)
    print("-" * len(header))
    for r in rows.values():
        print(
            f"{r.mta:<8} {MODES[r.mode]:<26} {r.sessions:>4} {r.accepted:>8} {r.refused:>5} {number(r.wall, 2):>6} "
            f"{number(r.rate):>6} {ms(r.p50):>6} {ms(r.p99):>6} {ms(r.txn_p50):>7} {ms(r.txn_p99):>7} "
            f"{number(r.end_to_end, 2):>6} {number(r.e2e_rate):>9} {ms(r.mta_cpu_per_message):>7} "
            f"{ms(r.client_cpu_per_message):>10}"
        )
    print(
        "p50/p99: final dot to 250; txn: MAIL FROM to that 250; e2e: load start until the sink counted every "
        "accepted message"
    )
    split = [r for r in rows.values() if r.intake_cpu_per_message is not None and r.mta_cpu_per_message is not None]
    if split:
        print("\nMTA CPU by process, ms per message: the intake (the process started) and delivery (the one it forked)")
        for r in split:
            assert r.intake_cpu_per_message is not None and r.mta_cpu_per_message is not None
            delivery = r.mta_cpu_per_message - r.intake_cpu_per_message
            print(f"  {r.mta:<8} {MODES[r.mode]:<26} intake {ms(r.intake_cpu_per_message)}, delivery {ms(delivery)}")

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}" if a is not None and b else "-"

    for name in ("diag", *FLOORS):
        lines = []
        for mode in MODES:
            mta, postfix = rows.get((name, mode)), rows.get(("postfix", mode))
            if mta is not None and postfix is not None:
                lines.append(
                    f"  {MODES[mode]:<26} intake {ratio(mta.rate, postfix.rate)}, "
                    f"end-to-end {ratio(mta.e2e_rate, postfix.e2e_rate)}, p50 {ratio(mta.p50, postfix.p50)}, "
                    f"p99 {ratio(mta.p99, postfix.p99)}, txn p50 {ratio(mta.txn_p50, postfix.txn_p50)}, "
                    f"CPU per message {ratio(mta.mta_cpu_per_message, postfix.mta_cpu_per_message)}"
                )
        if lines:
            print(f"\n{name} / Postfix (rates: above 1 favours {name}; latencies and CPU: below 1 favours {name}):")
            print("\n".join(lines))
    for name, what in FLOORS.items():
        lines = []
        for mode in MODES:
            diag, floor = rows.get(("diag", mode)), rows.get((name, mode))
            if diag is not None and floor is not None:
                lines.append(
                    f"  {MODES[mode]:<26} intake {ratio(diag.rate, floor.rate)}, "
                    f"end-to-end {ratio(diag.e2e_rate, floor.e2e_rate)}, p50 {ratio(diag.p50, floor.p50)}, "
                    f"CPU per message {ratio(diag.mta_cpu_per_message, floor.mta_cpu_per_message)}"
                )
        if lines:
            print(f"\ndiag / {name} (what the relay's own work costs against the least its libraries do {what}):")
            print("\n".join(lines))


def create_cost(directory: Path, files: int = 300) -> float:
    """Milliseconds to create an empty file in ``directory`` (the files are removed). diag, floor-fs and Postfix
    create a file per message, and on this project's 2-core VM the cost differs by ten times and more from one
    directory to another of the same file system, and over time: 0.02-0.09 ms in some, 0.6-0.9 ms in others
    (ext4's inode allocation; bench/README.md, eleventh pass). Each MTA's row is read with its own figure."""
    names = [directory / f"create-cost-{os.getpid()}-{number}" for number in range(files)]
    try:
        start = time.perf_counter()
        for name in names:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return (time.perf_counter() - start) / files * 1000
    finally:
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(name)


def machine() -> str:
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{ssl.OPENSSL_VERSION}, Postfix {postfix_setting('mail_version') or 'not found'}"
    )


async def run_all(args: argparse.Namespace, workdir: Path, started: list[Sink | Mta],
                  results: list[LoadResult]) -> None:  # fmt: skip
    """The measurements; whatever is started goes into ``started`` first, for measure() to stop."""
    sink = Sink(workdir)
    started.append(sink)
    await sink.start()
    if not args.no_baseline:
        await measure_mta(None, sink, args, results)
    for kind in (DiagRelay, AiosmtpdFloor, FilesFloor, JournalFloor, PostfixInstance):
        if args.only not in (None, kind.name):
            continue
        mta = kind(workdir, sink.port)
        started.append(mta)
        try:
            await mta.start()
            if mta.files is not None:
                print(f"  {kind.name:<8} creating a file where it keeps messages costs {create_cost(mta.files):.3f} ms",
                      flush=True)  # fmt: skip
            await measure_mta(mta, sink, args, results)
        except (RuntimeError, OSError, LookupError) as exc:
            print(f"  {kind.name}: not measured: {exc}", flush=True)
        finally:
            started.remove(mta)
            await stop_quietly(mta)


async def stop_quietly(component: Sink | Mta) -> None:
    try:
        await component.stop()
    except Exception as exc:  # a cleanup step that fails must not skip the others
        print(f"cleanup: stopping {type(component).__name__}: {exc}", file=sys.stderr)


async def measure(args: argparse.Namespace, workdir: Path) -> tuple[list[LoadResult], bool]:
    """Run the measurements in a task that SIGINT and SIGTERM cancel; stop everything started in any case.

    The cleanup runs here, outside the cancelled task, so a signal cannot cut it short; each of its steps is
    bounded. Returns the results so far and whether the run was interrupted.
    """
    print(machine())
    print(
        f"{args.messages} messages of about {MESSAGE_SIZE} bytes, {args.sessions} sessions, "
        f"modes: {', '.join(MODES[m] for m in args.modes)}; work directory {workdir}",
    )
    print(f"creating a file in the work directory costs {create_cost(workdir):.3f} ms", flush=True)
    results: list[LoadResult] = []
    started: list[Sink | Mta] = []
    loop = asyncio.get_running_loop()
    work = asyncio.create_task(run_all(args, workdir, started, results))
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, work.cancel)
    interrupted = False
    try:
        await work
    except asyncio.CancelledError:
        interrupted = True
    finally:
        for component in reversed(started):
            await stop_quietly(component)
    return results, interrupted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per MTA and mode (default 2000)")
    parser.add_argument("--sessions", type=int, default=20, help="parallel SMTP sessions (default 20)")
    parser.add_argument("--only", choices=("diag", *FLOORS, "postfix"), help="measure one MTA only")
    parser.add_argument(
        "--mode", choices=("connection", "reuse", "both"), default="both",
        help="one message per connection, reused connections, or both (default)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="runs of each MTA and mode; medians shown")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds allowed per load and per drain")
    parser.add_argument("--no-baseline", action="store_true", help="skip the client-straight-to-sink run")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, spools, logs)")
    args = parser.parse_args()
    if min(args.messages, args.sessions, args.repeat) < 1 or args.deadline <= 0:
        parser.error("--messages, --sessions, --repeat and --deadline must be positive")
    args.modes = list(MODES) if args.mode == "both" else [args.mode]

    become_subreaper()
    workdir = Path(tempfile.mkdtemp(prefix="relay-throughput-"))
    results: list[LoadResult] = []
    try:
        results, interrupted = asyncio.run(measure(args, workdir))
        if interrupted:
            print("interrupted; everything started was stopped", file=sys.stderr)
    finally:
        reap_orphans()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if results:
        print_table(results)


if __name__ == "__main__":
    main()
