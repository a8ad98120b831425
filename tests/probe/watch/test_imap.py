"""The IMAP watcher against a real Dovecot (tests/probe/conftest.py) and, for PR-02, a deliberately broken
server written here: delivery in the Inbox and in Junk, DSNs, late and forged probes, clean-up that touches
nothing else, login refused, folder missing, no STARTTLS, wrong certificate name, XOAUTH2 checked by Dovecot."""

from __future__ import annotations

import asyncio
import mailbox
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from diag.lab.runner import Lab
from diag.lab.world import JOHN, SUN
from diag.probe.judge import judge_delivery
from diag.probe.message import Kind, Probe
from diag.probe.sender import Accepted, Via, send_probe
from diag.probe.watch import ImapCredentials, ImapWatcher, Observation, WatchError, parse_imap_url, watcher_for
from diag.relay.dsn import bounce
from diag.relay.spool import Envelope, RecipientState, RecipientStatus

if TYPE_CHECKING:
    from conftest import Dovecot  # tests/probe/conftest.py, for the annotations only

KEY = b"probe test key, 32 bytes long!!!"
JOHN_PASSWORD = "john-pass"
ProbeFactory = Callable[..., Probe]


def watcher(server: Dovecot, *, user: str = "john@contoso.com", password: str | None = JOHN_PASSWORD,
            token: str | None = None, folder: str = "INBOX", implicit: bool = False,
            timeout: float = 10) -> ImapWatcher:  # fmt: skip
    target = parse_imap_url(server.url(folder, implicit=implicit))
    return ImapWatcher(target, ImapCredentials(user, password=password, token=token), timeout=timeout,
                       ca_file=server.ca_file, address="127.0.0.1", poll_min=0.05, poll_max=0.3)  # fmt: skip


def observe(server: Dovecot, probe: Probe, deliver: Callable[[], None], *, deadline: float = 10,
            key: bytes | None = KEY, details: bool = False,
            **options: object) -> tuple[Observation, list[Any]]:  # fmt: skip
    """Open, mark, deliver, wait; then remove what was found. Returns the observation and whether each removal
    succeeded (with ``details``: the Removal records)."""

    async def go() -> tuple[Observation, list[Any]]:
        async with watcher(server, **options) as watching:  # type: ignore[arg-type]
            await watching.mark()
            await asyncio.to_thread(deliver)
            seen = await watching.wait(probe.matcher(key), time.monotonic() + deadline)
            found = [item for item in (seen.probe, *seen.dsns, *seen.late) if item is not None]
            removals = await watching.remove(found)
            return seen, list(removals) if details else [removal.removed for removal in removals]

    return asyncio.run(go())


def test_delivered_probe_is_found_with_its_hops(mailboxes: Dovecot, make_probe: ProbeFactory) -> None:
    probe = make_probe()
    mailboxes.append("john@contoso.com", b"Subject: unrelated\r\n\r\nbefore\r\n")
    seen, removed = observe(mailboxes, probe, lambda: mailboxes.append("john@contoso.com", probe.content))
    assert seen.probe is not None and not seen.timed_out and seen.probe.kind is Kind.PROBE
    assert (seen.probe.folder, seen.probe.junk) == ("INBOX", False)
    delivery = judge_delivery(seen.probe.headers, folder=seen.probe.folder, junk=seen.probe.junk,
                              accepted_at=None, observed_at=seen.probe.observed_at)  # fmt: skip
    assert delivery.message_id == probe.message_id
    # PR-09: the probe is gone, the message that was there before is not.
    assert removed == [True] and mailboxes.count("john@contoso.com") == 1


def test_imaps_works_too(mailboxes: Dovecot, make_probe: ProbeFactory) -> None:
    probe = make_probe()
    seen, _ = observe(mailboxes, probe, lambda: mailboxes.append("john@contoso.com", probe.content), implicit=True)
    assert seen.probe is not None


def test_a_probe_in_junk_is_found_there(mailboxes: Dovecot, make_probe: ProbeFactory) -> None:
    probe = make_probe()
    seen, removed = observe(mailboxes, probe, lambda: mailboxes.append("john@contoso.com", probe.content, "Junk"))
    assert seen.probe is not None and (seen.probe.folder, seen.probe.junk) == ("Junk", True)
    assert removed == [True] and mailboxes.count("john@contoso.com", "Junk") == 0


def test_nothing_arrives_by_the_deadline(mailboxes: Dovecot, make_probe: ProbeFactory) -> None:
    probe = make_probe()
    seen, _ = observe(mailboxes, probe, lambda: mailboxes.append("john@contoso.com", b"Subject: x\r\n\r\ny\r\n"),
                      deadline=0.5)  # fmt: skip
    assert seen.timed_out and seen.probe is None


def test_late_forged_and_foreign_messages(mailboxes: Dovecot, make_probe: ProbeFactory) -> None:
    probe = make_probe()
    late = make_probe(run="run-0", now=datetime.now(UTC) - timedelta(hours=1))
    forged = make_probe(key=b"another key, not ours............")
    other = make_probe(name="Bob to John")
    # The late probe arrived between runs, before this run's mark: it is found all the same.
    mailboxes.append("john@contoso.com", late.content)

    def deliver() -> None:
        for content in (forged.content, other.content, probe.content):
            mailboxes.append("john@contoso.com", content)

    seen, removed = observe(mailboxes, probe, deliver)
    assert seen.probe is not None and [item.kind for item in seen.late] == [Kind.LATE]
    assert seen.forged == 1
    # The probe and the late probe are removed; the forged and the other probe stay (PR-01, PR-09).
    assert removed == [True, True] and mailboxes.count("john@contoso.com") == 2


def test_a_dsn_for_the_probe_ends_the_wait(mailboxes: Dovecot, make_probe: ProbeFactory) -> None:
    probe = make_probe()
    now = datetime.now(UTC)
    envelope = Envelope(mail_from=probe.sender, rcpt_tos=(probe.recipient,), received_at=now)
    failure = RecipientStatus(probe.recipient, RecipientState.FAILED, detail="550 5.1.1 unknown recipient")
    made = bounce(envelope, probe.content, [failure], reporting_mta="relay.probe.test", now=now)
    other = bounce(envelope, make_probe().content, [failure], reporting_mta="relay.probe.test", now=now)
    assert made is not None and other is not None

    def deliver() -> None:
        mailboxes.append("john@contoso.com", other[1])  # a bounce of another probe: not this one's
        mailboxes.append("john@contoso.com", made[1])

    seen, removed = observe(mailboxes, probe, deliver)
    assert seen.probe is None and not seen.timed_out
    (dsn,) = seen.dsns
    assert dsn.bounce is not None and dsn.bounce.failed is not None and dsn.bounce.failed.status == "5.1.1"
    assert removed == [True] and mailboxes.count("john@contoso.com") == 1


def test_a_lab_message_through_the_relays_then_dovecot(lab: Lab, mailboxes: Dovecot,
                                                       make_probe: ProbeFactory) -> None:  # fmt: skip
    """The probe travels Sun → cloud → Connector 2 → John through diag's relays; John's copy is put into
    Dovecot; the IMAP watcher finds it and the judge reads every hop."""
    probe = make_probe(sender=SUN, recipient=JOHN)
    result = asyncio.run(send_probe(probe, Via("mail.tailspintoys.com", lab.smtp_port, address="127.0.30.10"),
                                    timeout=10, ehlo_name="client.probe.test", ca_file=lab.ca_file))  # fmt: skip
    assert isinstance(result, Accepted)
    deadline = time.monotonic() + 20
    content = None
    while content is None and time.monotonic() < deadline:
        path = lab.mailbox(JOHN)
        if path.exists():
            box = mailbox.Maildir(path, create=False)
            mine = [key for key in box.keys() if probe.message_id.encode() in box.get_bytes(key)]
            content = box.get_bytes(mine[0]) if mine else None
        time.sleep(0.1)
    assert content is not None
    seen, _ = observe(mailboxes, probe, lambda: mailboxes.append("john@contoso.com", content))
    assert seen.probe is not None
    delivery = judge_delivery(seen.probe.headers, folder="INBOX", junk=False, accepted_at=result.accepted_at,
                              observed_at=seen.probe.observed_at)  # fmt: skip
    assert [hop.ip for hop in delivery.hops] == ["127.0.0.1", "127.0.30.10", "127.0.1.10"]
    assert [hop.tls_version for hop in delivery.hops][1:] == ["TLSv1.3", "TLSv1.3"]
    (trace,) = delivery.evidence.traces
    assert (trace.connector, trace.rule) == ("Connector 2", "exact")
    assert delivery.latency_s is not None and delivery.latency_s >= 0


def test_xoauth2_is_checked_by_dovecot(mailboxes: Dovecot, make_probe: ProbeFactory) -> None:
    probe = make_probe()
    seen, _ = observe(mailboxes, probe, lambda: mailboxes.append("bob@contoso.com", probe.content),
                      user="bob@contoso.com", password=None, token="valid-token-for-bob")  # fmt: skip
    assert seen.probe is not None
    assert "valid-token-for-bob" in mailboxes.introspection.asked  # Dovecot really asked the endpoint


def test_an_inactive_token_is_refused(mailboxes: Dovecot) -> None:
    async def go() -> None:
        async with watcher(mailboxes, user="bob@contoso.com", password=None, token="expired-token"):
            pass

    with pytest.raises(WatchError, match="login refused") as refused:
        asyncio.run(go())
    assert "expired-token" not in str(refused.value)
    assert "expired-token" in mailboxes.introspection.asked


def test_a_wrong_password_is_a_watch_error(dovecot: Dovecot) -> None:
    async def go() -> None:
        async with watcher(dovecot, password="wrong-password-123"):
            pass

    with pytest.raises(WatchError, match="login refused") as refused:
        asyncio.run(go())
    message = str(refused.value)
    assert "\n" not in message and "wrong-password-123" not in message and "john@contoso.com" in message


def test_a_missing_folder_is_a_watch_error(dovecot: Dovecot) -> None:
    async def go() -> None:
        async with watcher(dovecot, folder="NoSuchFolder") as watching:
            await watching.mark()

    with pytest.raises(WatchError, match="'NoSuchFolder' cannot be opened"):
        asyncio.run(go())


def test_no_starttls_means_no_credentials_leave(dovecot: Dovecot) -> None:
    """PR-03: the listener at 127.0.0.2 has ssl = no; the watcher refuses before sending anything."""
    target = parse_imap_url(f"imap://{dovecot.plain_address}:{dovecot.plain_port}/INBOX")
    watching = ImapWatcher(target, ImapCredentials("john@contoso.com", password=JOHN_PASSWORD), timeout=5,
                           ca_file=dovecot.ca_file)  # fmt: skip

    async def go() -> None:
        async with watching:
            pass

    with pytest.raises(WatchError, match="does not offer STARTTLS"):
        asyncio.run(go())
    log = dovecot.log.read_text(errors="replace")
    assert "user=<john@contoso.com>" not in log.split("127.0.0.2")[-1]  # no login attempt from there


def test_a_certificate_for_another_name_is_refused_before_login(dovecot: Dovecot) -> None:
    target = parse_imap_url(f"imaps://other.probe.test:{dovecot.imaps_port}/INBOX")
    watching = ImapWatcher(target, ImapCredentials("john@contoso.com", password=JOHN_PASSWORD), timeout=5,
                           ca_file=dovecot.ca_file, address="127.0.0.1")  # fmt: skip

    async def go() -> None:
        async with watching:
            pass

    with pytest.raises(WatchError, match="certificate does not verify"):
        asyncio.run(go())


def test_watcher_for_builds_from_urls(tmp_path: Path) -> None:
    built = watcher_for("imaps://john%40contoso.com@imap.contoso.com/Inbox", password="Pw-7781", timeout=5)
    assert isinstance(built, ImapWatcher)
    assert built.where == "imaps://imap.contoso.com:993/Inbox (user john@contoso.com)"
    assert "Pw-7781" not in repr(built.credentials)
    with pytest.raises(ValueError, match="no user"):
        watcher_for("imap://imap.contoso.com/INBOX", password="p", timeout=5)
    with pytest.raises(ValueError, match="not both"):
        watcher_for("imap://imap.contoso.com/INBOX", user="u", password="p", token="t", timeout=5)
    with pytest.raises(ValueError, match="does not belong"):
        watcher_for("imap://u:secret@imap.contoso.com/INBOX", timeout=5)
    with pytest.raises(ValueError, match="imap:// or imaps://"):
        watcher_for("pop3://imap.contoso.com/", user="u", password="p", timeout=5)
    assert parse_imap_url("imap://imap.contoso.com").port == 143
    assert parse_imap_url("imap://imap.contoso.com/Junk%20E-mail").folder == "Junk E-mail"
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        ImapCredentials("u", password="a\r\nb LOGOUT")


# --- PR-02: a deliberately broken IMAP server ---------------------------------------------------------------


class Hostile:
    """An IMAP server over TLS that behaves after LOGIN as ``mode`` says: ``literal`` announces a 999999999-byte
    literal in its LIST answer, ``flood`` sends untagged lines without end, ``silent`` never answers again."""

    def __init__(self, mode: str, chain: Path, key: Path) -> None:
        self.mode = mode
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(chain, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        self.listener.settimeout(10)
        try:
            raw, _ = self.listener.accept()
        except OSError:
            return
        with self.context.wrap_socket(raw, server_side=True) as conn:
            conn.settimeout(2)
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hostile ready\r\n")
            reader = conn.makefile("rb")
            try:
                while not self.stop.is_set():
                    line = reader.readline()
                    if not line:
                        return
                    tag, _, command = line.partition(b" ")
                    verb = command.split(b" ", 1)[0].upper().strip()
                    if verb == b"CAPABILITY":
                        conn.sendall(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK done\r\n")
                    elif verb == b"LOGIN":
                        conn.sendall(tag + b" OK logged in\r\n")
                    elif self.mode == "literal":
                        conn.sendall(b"* LIST () \".\" {999999999}\r\n")
                        while not self.stop.is_set():
                            conn.sendall(b"A" * 65536)
                            self.sent += 65536
                    elif self.mode == "flood":
                        chunk = b"* OK flood\r\n" * 5000
                        while not self.stop.is_set():
                            conn.sendall(chunk)
                            self.sent += len(chunk)
                    else:  # silent
                        self.stop.wait(30)
                        return
            except OSError:
                return  # the client hung up, as it should

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(timeout=15)


@pytest.fixture
def hostile(issue: Callable[[str], tuple[Path, Path]]) -> Iterator[Callable[[str], Hostile]]:
    servers: list[Hostile] = []

    def start(mode: str) -> Hostile:
        server = Hostile(mode, *issue("hostile.probe.test"))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize("mode", ["literal", "flood", "silent"])
def test_a_hostile_server_ends_the_watch_bounded(hostile: Callable[[str], Hostile], ca_file: Path, mode: str) -> None:
    server = hostile(mode)
    target = parse_imap_url(f"imaps://hostile.probe.test:{server.port}/INBOX")
    watching = ImapWatcher(target, ImapCredentials("u", password="p"), timeout=1.0, ca_file=ca_file,
                           address="127.0.0.1")  # fmt: skip

    async def go() -> None:
        async with watching:
            pass

    with pytest.raises(WatchError) as failed:
        asyncio.run(go())
    assert "\n" not in str(failed.value)
    server.stop.set()
    # The literal was refused on announcement, not read: far less than its 999999999 bytes were taken in; the
    # flood was cut at the byte budget or the time limit, whichever came first.
    assert server.sent < 200 * 1024 * 1024


def test_a_read_only_folder_is_watched_and_its_clean_up_reported(mailboxes: Dovecot,
                                                                 make_probe: ProbeFactory) -> None:  # fmt: skip
    """PR-09: a folder the user may not change (here: its Maildir directories are not writable) is still
    watched; the probe in it is found, and its removal is reported as impossible, never forced."""
    probe = make_probe()
    mailboxes.append("john@contoso.com", probe.content, "Junk")
    junk = mailboxes.mail_root / "john@contoso.com" / "Maildir" / ".Junk"
    modes = {path: path.stat().st_mode for path in (junk, junk / "cur", junk / "new", junk / "tmp")}
    for path in modes:
        path.chmod(0o555)
    try:
        seen, removals = observe(mailboxes, probe, lambda: None, details=True)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert seen.probe is not None and (seen.probe.folder, seen.probe.junk) == ("Junk", True)
    (removal,) = removals
    assert not removal.removed and removal.detail == "folder Junk is read-only"
    assert mailboxes.count("john@contoso.com", "Junk") == 1
