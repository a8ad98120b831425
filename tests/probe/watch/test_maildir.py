"""The Maildir watcher against real files: mailboxes written with the standard library, and the lab's own
Maildirs after a probe went through diag's relays both ways (on-premises → cloud → Internet and back)."""

from __future__ import annotations

import asyncio
import mailbox
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from diag.lab.runner import Lab
from diag.lab.world import JOHN, SUN
from diag.probe.judge import judge_delivery
from diag.probe.message import Kind, Probe
from diag.probe.sender import Accepted, Via, send_probe
from diag.probe.watch import MaildirWatcher, Observation, Removal, WatchError, watcher_for
from diag.relay.dsn import bounce
from diag.relay.spool import Envelope, RecipientState, RecipientStatus

KEY = b"probe test key, 32 bytes long!!!"
ProbeFactory = Callable[..., Probe]


def maildir(path: Path) -> mailbox.Maildir:
    box = mailbox.Maildir(path, create=True)
    box.add_folder("Junk")
    return box


def observe(path: Path, probe: Probe, deliver: Callable[[], None], *, deadline: float = 10,
            remove: bool = True) -> tuple[Observation, tuple[Removal, ...]]:  # fmt: skip
    async def go() -> tuple[Observation, tuple[Removal, ...]]:
        async with MaildirWatcher(path, poll_min=0.02, poll_max=0.2) as watching:
            await watching.mark()
            await asyncio.to_thread(deliver)
            seen = await watching.wait(probe.matcher(KEY), time.monotonic() + deadline)
            found = [item for item in (seen.probe, *seen.dsns, *seen.late) if item is not None]
            return seen, (await watching.remove(found) if remove else ())

    return asyncio.run(go())


def test_delivered_probe_is_found_and_only_it_removed(tmp_path: Path, make_probe: ProbeFactory) -> None:
    box = maildir(tmp_path / "john")
    box.add(b"Subject: there before\r\n\r\nkeep me\r\n")
    probe = make_probe()
    seen, removals = observe(tmp_path / "john", probe, lambda: box.add(probe.content))
    assert seen.probe is not None and (seen.probe.folder, seen.probe.junk, seen.probe.kind) == ("INBOX", False,
                                                                                               Kind.PROBE)  # fmt: skip
    assert seen.probe.headers.endswith(b"\r\n\r\n") and b"This is an end-to-end" not in seen.probe.headers
    assert [removal.removed for removal in removals] == [True]
    assert [message["Subject"] for message in box] == ["there before"]


def test_a_probe_read_into_cur_is_still_removed(tmp_path: Path, make_probe: ProbeFactory) -> None:
    box = maildir(tmp_path / "john")
    probe = make_probe()

    async def go() -> tuple[Removal, ...]:
        async with MaildirWatcher(tmp_path / "john", poll_min=0.02, poll_max=0.2) as watching:
            await watching.mark()
            key = box.add(probe.content)
            seen = await watching.wait(probe.matcher(KEY), time.monotonic() + 10)
            assert seen.probe is not None
            message = box[key]
            message.set_subdir("cur")  # a mail reader saw it: new/ → cur/ with flags
            message.add_flag("S")
            box[key] = message
            return await watching.remove([seen.probe])

    (removal,) = asyncio.run(go())
    assert removal.removed and len(box) == 0


def test_a_probe_in_junk(tmp_path: Path, make_probe: ProbeFactory) -> None:
    box = maildir(tmp_path / "john")
    probe = make_probe()
    seen, removals = observe(tmp_path / "john", probe, lambda: box.get_folder("Junk").add(probe.content))
    assert seen.probe is not None and (seen.probe.folder, seen.probe.junk) == ("Junk", True)
    assert removals[0].removed and len(box.get_folder("Junk")) == 0


def test_timeout_late_and_forged(tmp_path: Path, make_probe: ProbeFactory) -> None:
    box = maildir(tmp_path / "john")
    late = make_probe(run="run-0", now=datetime.now(UTC) - timedelta(hours=1))
    box.add(late.content)  # arrived after run-0 gave up, before this run
    probe = make_probe()
    forged = make_probe(key=b"not our key.....................")
    seen, removals = observe(tmp_path / "john", probe, lambda: box.add(forged.content), deadline=0.5)
    assert seen.timed_out and seen.probe is None and seen.forged == 1
    assert [item.kind for item in seen.late] == [Kind.LATE]
    assert [removal.removed for removal in removals] == [True]
    assert len(box) == 1  # the forged one stays


def test_a_dsn_for_the_probe(tmp_path: Path, make_probe: ProbeFactory) -> None:
    box = maildir(tmp_path / "john")
    probe = make_probe()
    now = datetime.now(UTC)
    envelope = Envelope(mail_from=probe.sender, rcpt_tos=(probe.recipient,), received_at=now)
    failure = RecipientStatus(probe.recipient, RecipientState.FAILED, detail="554 5.4.4 no route")
    made = bounce(envelope, probe.content, [failure], reporting_mta="relay.probe.test", now=now)
    assert made is not None
    seen, _ = observe(tmp_path / "john", probe, lambda: box.add(made[1]))
    (dsn,) = seen.dsns
    assert dsn.bounce is not None and dsn.bounce.failed is not None and dsn.bounce.failed.status == "5.4.4"


def test_removal_refuses_what_this_watcher_did_not_find(tmp_path: Path, make_probe: ProbeFactory) -> None:
    box = maildir(tmp_path / "john")
    probe = make_probe()
    seen, _ = observe(tmp_path / "john", probe, lambda: box.add(probe.content), remove=False)
    assert seen.probe is not None

    async def other_watcher() -> tuple[Removal, ...]:
        async with MaildirWatcher(tmp_path / "john") as watching:
            return await watching.remove([seen.probe])  # type: ignore[list-item]

    (removal,) = asyncio.run(other_watcher())
    assert not removal.removed and "not found by this watcher" in removal.detail and len(box) == 1


def test_a_directory_that_is_no_maildir(tmp_path: Path) -> None:
    async def go() -> None:
        async with MaildirWatcher(tmp_path):
            pass

    with pytest.raises(WatchError, match="is not a Maildir"):
        asyncio.run(go())
    assert isinstance(watcher_for(f"maildir:{tmp_path}", timeout=5), MaildirWatcher)
    with pytest.raises(ValueError, match="needs a path"):
        watcher_for("maildir:", timeout=5)


@pytest.mark.parametrize(
    ("server", "name", "sender", "recipient", "ips"),
    [
        # On-premises (John) → the cloud (smart host) → tailspintoys.com by MX (Sun's Maildir).
        ("127.0.10.10", "mail.contoso.com", JOHN, SUN, ["127.0.0.1", "127.0.10.10", "127.0.1.10"]),
        # The Internet (Sun) → the cloud by MX → Connector 2 → on-premises (John's Maildir).
        ("127.0.30.10", "mail.tailspintoys.com", SUN, JOHN, ["127.0.0.1", "127.0.30.10", "127.0.1.10"]),
    ],
)
def test_both_ways_through_the_lab(lab: Lab, make_probe: ProbeFactory, server: str, name: str, sender: str,
                                    recipient: str, ips: list[str]) -> None:  # fmt: skip
    probe = make_probe(sender=sender, recipient=recipient, name=f"{sender} to {recipient}")
    path = lab.mailbox(recipient)
    path.parent.mkdir(parents=True, exist_ok=True)
    mailbox.Maildir(path, create=True)  # the relay creates it on first delivery; watch it from the start

    async def go() -> tuple[Accepted, Observation]:
        async with MaildirWatcher(path, poll_min=0.05, poll_max=0.3) as watching:
            await watching.mark()
            sent = await send_probe(probe, Via(name, lab.smtp_port, address=server), timeout=10,
                                    ehlo_name="client.probe.test", ca_file=lab.ca_file)  # fmt: skip
            assert isinstance(sent, Accepted), sent
            seen = await watching.wait(probe.matcher(KEY), time.monotonic() + 30)
            if seen.probe is not None:
                await watching.remove([seen.probe])
            return sent, seen

    sent, seen = asyncio.run(go())
    assert seen.probe is not None
    assert sent.tls is not None and sent.tls.verified and sent.tls.version == "TLSv1.3"  # STARTTLS when offered
    delivery = judge_delivery(seen.probe.headers, folder=seen.probe.folder, junk=seen.probe.junk,
                              accepted_at=sent.accepted_at, observed_at=seen.probe.observed_at)  # fmt: skip
    assert [hop.ip for hop in delivery.hops] == ips
    assert all(hop.tls_version == "TLSv1.3" for hop in delivery.hops)  # the submission hop included
    assert delivery.latency_s is not None and delivery.latency_s >= 0
    assert delivery.evidence.traces and delivery.evidence.traces[-1].tls == "TLSv1.3"
