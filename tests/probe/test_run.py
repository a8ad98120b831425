"""Running probes (``diag/probe/run.py``) against real servers on loopback: the lab's relays observed in their
Maildirs, and a real Dovecot (tests/probe/conftest.py) reached over IMAP, behind a small SMTP server of this file
that files what it gets into a Dovecot folder (a stand-in for a spam filter). ``diag probe`` itself runs as a
user runs it, in a process of its own."""

from __future__ import annotations

import asyncio
import json
import mailbox
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as Server
from aiosmtpd.smtp import Envelope, Session

from checks import default_registry
from diag.config import MAX_PROBES, ProbeConfig, load_config, parse_config
from diag.context import RunOptions
from diag.errors import UsageError
from diag.lab.dns import DnsServer, ZoneData
from diag.lab.runner import Lab
from diag.lab.world import EXAMPLE_CONFIG
from diag.net.dns import Resolver
from diag.probe.judge import Outcome
from diag.probe.message import build_probe
from diag.probe.run import ProbeFacts, ProbeOptions, ProbeSetup, execute, run_probes
from diag.probe.sender import Stage
from diag.render.json import load_schema

if TYPE_CHECKING:
    from conftest import Dovecot  # tests/probe/conftest.py, for the annotations only

BROKEN = EXAMPLE_CONFIG.parent / "broken-probes.toml"
KEY = "probe key of the tests, 32 chars"


def probes_of(path: Path) -> dict[str, ProbeConfig]:
    return {probe.name: probe for probe in load_config(path).probes}


def run(lab: Lab, probe: ProbeConfig, *, config: Path = EXAMPLE_CONFIG, **options: Any) -> ProbeFacts:
    """One probe through the running lab, as the e2e check runs it."""

    async def go() -> ProbeFacts:
        setup = ProbeSetup(
            resolver=Resolver((lab.nameserver,), timeout=5), timeout=5, ehlo_name="client.probe.test",
            resolve_names=True, ca_file=lab.ca_file, smtp_port=lab.smtp_port, allow_private=True,
            organization=load_config(config),
            options=ProbeOptions(maildir_root=lab.maildir, sends=lab.sent_record(), **options),
        )  # fmt: skip
        return await execute(probe, setup)

    return asyncio.run(go())


def messages(path: Path) -> list[bytes]:
    box = mailbox.Maildir(path, factory=None, create=False)
    return [box.get_bytes(key) for key in box.keys()]


def outcomes(facts: ProbeFacts) -> list[Outcome]:
    return [verdict.outcome for verdict in facts.verdicts]


# --- the lab: delivered, refused, bounced, timed out ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ips", "connector"),
    [
        # on-premises → cloud (the inbound connector) → tailspintoys.com by MX
        ("John to Sun", ["127.0.0.1", "127.0.10.10", "127.0.1.10"], None),
        # Internet → cloud by MX → Connector 2 → on-premises, as diag route predicts
        ("Sun to John", ["127.0.0.1", "127.0.30.10", "127.0.1.10"], "Connector 2"),
    ],
)
def test_delivered_both_ways_with_every_hop(lab: Lab, name: str, ips: list[str], connector: str | None) -> None:
    probe = probes_of(EXAMPLE_CONFIG)[name]
    facts = run(lab, probe)
    assert outcomes(facts) == [Outcome.DELIVERED], facts.verdicts
    # Then the facts carry the Message-ID, both times, the latency and a hop per Received line, TLS on each
    assert facts.accepted is not None and facts.accepted.tls is not None and facts.refused is None
    assert facts.message_id.endswith("@" + probe.sender.rpartition("@")[2] + ">")
    assert facts.accepted_at is not None and facts.observed_at is not None and facts.accepted_at <= facts.observed_at
    assert facts.latency_s is not None and 0 <= facts.latency_s < probe.deadline
    assert [hop.ip for hop in facts.hops] == ips
    assert all(hop.tls_version == "TLSv1.3" and hop.protocol == "ESMTPS" for hop in facts.hops)
    assert [hop.index for hop in facts.hops] == [1, 2, 3] and facts.hops[0].by_host == probe.via
    assert facts.expected_connector == connector
    assert facts.evidence is not None and [t.role for t in facts.evidence.traces][-1] in ("cloud", "internet")
    if connector is not None:
        assert [t.connector for t in facts.evidence.traces if t.role == "cloud"] == [connector]
    # and the probe is gone from the mailbox again
    assert facts.cleanup == () and facts.folder == "INBOX"
    assert facts.watch == f"maildir:{lab.maildir / probe.watch.removeprefix('maildir:')}"
    assert not any(facts.message_id.encode() in message for message in messages(Path(facts.watch[8:])))


def test_keep_leaves_the_probe_and_the_next_run_counts_it_late(lab: Lab) -> None:
    probe = probes_of(EXAMPLE_CONFIG)["John to Bob"]
    path = lab.maildir / "contoso-com.mail.protection.outlook.com" / "bob@contoso.com"
    kept = run(lab, probe, keep=True)
    assert outcomes(kept) == [Outcome.DELIVERED]
    assert any(kept.message_id.encode() in message for message in messages(path))
    time.sleep(1.1)  # tokens carry whole seconds: the next run's must be later to call this one late
    later = run(lab, probe)
    assert outcomes(later) == [Outcome.DELIVERED] and later.late == 1
    assert not any(kept.message_id.encode() in message for message in messages(path))


def test_a_late_probe_is_removed_and_a_forged_one_left_alone(lab: Lab) -> None:
    # Given, in John's mailbox, a probe an earlier run gave up on, and one that only looks like a probe
    probe = probes_of(EXAMPLE_CONFIG)["Sun to John"]
    path = lab.maildir / "mail.contoso.com" / "john@contoso.com"
    earlier = datetime.now(UTC) - timedelta(hours=1)
    late = build_probe(run="run-0", name=probe.name, sender=probe.sender, recipient=probe.recipient,
                       key=KEY.encode(), now=earlier)  # fmt: skip
    forged = build_probe(run="run-0", name=probe.name, sender=probe.sender, recipient=probe.recipient,
                         key=b"somebody else's key, also long.", now=earlier)  # fmt: skip
    box = mailbox.Maildir(path, factory=None, create=False)
    late_key = box.add(late.content)
    forged_key = box.add(forged.content)
    # When the probe runs with the key (DIAG_PROBE_KEY)
    facts = run(lab, probe, environment=(("DIAG_PROBE_KEY", KEY),))
    # Then it is delivered; the late one is counted and removed, the forged one counted and kept
    assert outcomes(facts) == [Outcome.DELIVERED]
    assert facts.late == 1 and facts.forged >= 1  # other tests' probes in this shared mailbox look forged too
    assert late_key not in box.keys() and forged_key in box.keys()  # (the lab's mailbox is shared by the tests)
    box.remove(forged_key)


def test_a_refused_probe_is_judged_at_once(lab: Lab) -> None:
    # Given a probe submitted straight to the cloud from an address no inbound connector knows
    started = time.monotonic()
    facts = run(lab, probes_of(BROKEN)["Relay refused"], config=BROKEN)
    # Then the cloud's refusal at RCPT is the verdict, without waiting for the deadline
    assert time.monotonic() - started < 10
    assert outcomes(facts) == [Outcome.REJECTED]
    assert facts.refused is not None and facts.accepted is None
    assert (facts.refused.stage, facts.refused.code) == (Stage.RCPT, 550)
    assert facts.refused.reply == "550 5.7.64 TenantAttribution; Relay Access Denied"
    assert facts.accepted_at is None and facts.hops == ()


def test_a_bounce_reaches_the_senders_mailbox(lab: Lab) -> None:
    # Given an on-premises server that sends to the cloud without a certificate: it accepts the probe, the
    # cloud refuses to relay it, and it bounces the probe to its sender, whose mailbox is watched
    facts = run(lab, probes_of(BROKEN)["Without a certificate"], config=BROKEN)
    assert outcomes(facts) == [Outcome.BOUNCED]
    assert facts.accepted is not None and facts.bounce is not None and facts.bounce.failed is not None
    assert facts.bounce.failed.status == "5.7.64" and "TenantAttribution" in (facts.bounce.failed.diagnostic_code or "")
    assert facts.bounce.reporting_mta == "dns; nocert.contoso.com"
    assert "reported by dns; nocert.contoso.com" in facts.verdicts[0].detail
    # and the DSN is removed with the probe's clean-up
    assert messages(lab.maildir / "nocert.contoso.com" / "legacy@contoso.com") == []


def test_a_timeout_comes_on_time_and_says_where_the_probe_was(lab: Lab) -> None:
    # Given an on-premises server whose smart host refuses connections: it keeps the probe queued
    probe = replace(probes_of(BROKEN)["Smart host refusing"], deadline=2.0)
    started = time.monotonic()
    facts = run(lab, probe, config=BROKEN)
    elapsed = time.monotonic() - started
    # Then the probe is given up at its deadline (plus the time to submit and look once more), not later
    assert 2.0 <= elapsed < 6.0, elapsed
    assert outcomes(facts) == [Outcome.TIMEOUT]
    assert facts.accepted_at is not None and facts.observed_at is None
    assert "not seen within 2 s; last known: accepted by --via at" in facts.verdicts[0].detail
    assert facts.via.startswith("badhop.contoso.com [127.0.10.13]:")


def test_another_connector_than_predicted_is_a_wrong_route(lab: Lab, tmp_path: Path) -> None:
    # Given a configuration that says contoso.com goes through "Connector X" (the lab's cloud uses Connector 2)
    text = EXAMPLE_CONFIG.read_text().replace('Name = "Connector 2"', 'Name = "Connector X"')
    config = tmp_path / "contoso.toml"
    config.write_text(text)
    facts = run(lab, probes_of(config)["Sun to John"], config=config)
    assert outcomes(facts) == [Outcome.DELIVERED, Outcome.WRONG_ROUTE]
    assert facts.verdicts[1].detail == "expected connector 'Connector X', the cloud used Connector 2"


def test_the_default_via_is_the_recipient_domains_mx(lab: Lab) -> None:
    facts = run(lab, probes_of(EXAMPLE_CONFIG)["Bob to John"])
    assert outcomes(facts) == [Outcome.DELIVERED]
    assert facts.via == f"contoso-com.mail.protection.outlook.com [127.0.1.10]:{lab.smtp_port}"


@pytest.mark.parametrize(
    ("recipient", "allow_private", "why"),
    [
        ("someone@nullmx.example", True, "the recipient domain nullmx.example accepts no mail (null MX)"),
        ("someone@nowhere.example", True, "the recipient domain nowhere.example does not exist in DNS (NXDOMAIN)"),
        ("someone@dangling.example", True, "no MX of dangling.example can be used: mx.dangling.example does not "
                                           "exist in DNS (NXDOMAIN)"),
        ("sun@tailspintoys.com", False, "no MX of tailspintoys.com can be used: the MX mail.tailspintoys.com is at "
                                        "127.0.30.10, not a public address (give --allow-private to use it)"),
    ],
)
def test_an_mx_that_cannot_be_used(lab: Lab, recipient: str, allow_private: bool, why: str) -> None:
    probe = ProbeConfig("nowhere", sender="john@contoso.com", recipient=recipient,
                        watch="maildir:mail.contoso.com/john@contoso.com", deadline=5)  # fmt: skip

    async def go() -> ProbeFacts:
        setup = ProbeSetup(resolver=Resolver((lab.nameserver,), timeout=5), timeout=5, ehlo_name="client.probe.test",
                           allow_private=allow_private,
                           options=ProbeOptions(maildir_root=lab.maildir, sends=lab.sent_record()))  # fmt: skip
        return await execute(probe, setup)

    facts = asyncio.run(go())
    assert outcomes(facts) == [Outcome.REJECTED]
    assert facts.refused is not None and facts.refused.reply == f"cannot submit the probe: {why}"


def test_a_maildir_that_is_none_is_a_watch_failure_and_nothing_is_sent(lab: Lab, tmp_path: Path) -> None:
    probe = replace(probes_of(EXAMPLE_CONFIG)["John to Sun"], watch=f"maildir:{tmp_path}")
    facts = run(lab, probe)
    assert not facts.submitted and facts.verdicts == ()
    assert facts.watch_error == f"maildir:{tmp_path} is not a Maildir (it has no new/ and cur/ directories)"


# --- IMAP: Dovecot behind a filing SMTP server ---------------------------------------------------------------


@dataclass
class Filer:
    """An SMTP server that files every message it accepts into a folder of the recipient's Dovecot mailbox, with
    a Received line of its own; ``then`` runs after filing (to make the folder read-only, say)."""

    dovecot: Dovecot
    port: int = 0
    folder: str = "INBOX"
    then: Callable[[], None] | None = None
    filed: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Server, session: Session, envelope: Envelope) -> str:
        stamp = format_datetime(datetime.now(UTC))
        received = f"Received: from client.probe.test (localhost [127.0.0.1]) by filer.probe.test with ESMTP; {stamp}"
        content = received.encode() + b"\r\n" + (envelope.original_content or b"")
        for recipient in envelope.rcpt_tos:
            await asyncio.to_thread(self.dovecot.append, recipient, content, self.folder)
            self.filed.append(recipient)
        if self.then is not None:
            await asyncio.to_thread(self.then)
        return "250 2.0.0 filed"


@pytest.fixture
def filer(mailboxes: Dovecot) -> Iterator[Filer]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    handler = Filer(mailboxes, port)
    controller = Controller(handler, hostname="127.0.0.1", port=handler.port)
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()


@pytest.fixture(scope="session")
def imap_dns() -> Iterator[str]:
    """A DNS server that knows the Dovecot server's name (imap.probe.test is 127.0.0.1), for --resolver."""
    zone = ZoneData()
    zone.add_zone("probe.test")
    zone.add("imap.probe.test", "A", "127.0.0.1")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="probe-dns", daemon=True)
    thread.start()
    server = DnsServer(zone)
    port = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(timeout=10)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def diag(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DIAG_")}
    return subprocess.run(
        [sys.executable, "-m", "diag", *args], capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, env={**environment, **(env or {})},
    )  # fmt: skip


@pytest.fixture(autouse=True)
def private_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every diag process of these tests keeps its lock in a directory of its own."""
    home = tmp_path_factory.mktemp("state")
    for name in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.setenv(name, str(home / name.lower()))


def imap_probe(filer: Filer, dns: str, *options: str, to: str = "john@contoso.com") -> list[str]:
    url = f"imap://imap.probe.test:{filer.dovecot.imap_port}/INBOX"
    return ["probe", "--from", "sun@tailspintoys.com", "--to", to, "--via", f"127.0.0.1:{filer.port}",
            "--watch", url, "--watch-user", to, "--resolver", dns, "--ca-file", str(filer.dovecot.ca_file),
            "--deadline", "20", "--timeout", "5", *options]  # fmt: skip


def test_imap_delivered_and_cleaned_up(filer: Filer, imap_dns: str, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    done = diag(*imap_probe(filer, imap_dns, "--json", str(out)), env={"DIAG_WATCH_PASSWORD": "john-pass"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "INFO E2E_DELIVERED sun@tailspintoys.com to john@contoso.com via [127.0.0.1]:" in done.stdout
    assert filer.filed == ["john@contoso.com"] and filer.dovecot.count("john@contoso.com") == 0
    assert "john-pass" not in out.read_text() + done.stdout + done.stderr  # PR-06


def test_imap_junk_is_a_warning_not_a_loss(filer: Filer, imap_dns: str) -> None:
    filer.folder = "Junk"
    done = diag(*imap_probe(filer, imap_dns), env={"DIAG_WATCH_PASSWORD": "john-pass"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "INFO E2E_DELIVERED" in done.stdout and "WARNING E2E_JUNK" in done.stdout
    assert "arrived in the junk folder Junk" in done.stdout and filer.dovecot.count("john@contoso.com", "Junk") == 0


def test_imap_clean_up_that_fails_is_reported_and_the_verdict_stays(filer: Filer, imap_dns: str) -> None:
    # PR-09: the probe lands in a folder the user may not change (its Maildir directories are not writable)
    junk = filer.dovecot.mail_root / "john@contoso.com" / "Maildir" / ".Junk"
    modes: dict[Path, int] = {}

    def read_only() -> None:
        for path in (junk, junk / "cur", junk / "new", junk / "tmp"):
            modes[path] = path.stat().st_mode
            path.chmod(0o555)

    filer.folder, filer.then = "Junk", read_only
    try:
        done = diag(*imap_probe(filer, imap_dns), env={"DIAG_WATCH_PASSWORD": "john-pass"})
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "WARNING E2E_CLEANUP_FAILED" in done.stdout and "folder Junk is read-only" in done.stdout
    assert "INFO E2E_DELIVERED" in done.stdout and filer.dovecot.count("john@contoso.com", "Junk") == 1


def test_imap_wrong_password_is_exit_3_with_one_clear_line(filer: Filer, imap_dns: str) -> None:
    done = diag(*imap_probe(filer, imap_dns), env={"DIAG_WATCH_PASSWORD": "not-johns-password"})
    assert done.returncode == 3, done.stdout + done.stderr
    (line,) = [line for line in done.stdout.splitlines() if "E2E_WATCH_FAILED" in line]
    assert "cannot be watched, so the probe was not sent" in line and "imap.probe.test" in line
    assert "  e2e: error (" in done.stdout and filer.filed == []
    assert "not-johns-password" not in done.stdout + done.stderr  # PR-06


def test_imap_without_a_password_is_a_watch_failure_that_says_what_to_set(filer: Filer, imap_dns: str) -> None:
    done = diag(*imap_probe(filer, imap_dns))
    assert done.returncode == 3
    assert "no credentials: set DIAG_WATCH_PASSWORD to the password (or DIAG_WATCH_TOKEN" in done.stdout


def test_imap_xoauth2_with_a_token(filer: Filer, imap_dns: str) -> None:
    done = diag(*imap_probe(filer, imap_dns, to="bob@contoso.com"), env={"DIAG_WATCH_TOKEN": "valid-token-for-bob"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "INFO E2E_DELIVERED" in done.stdout and filer.dovecot.count("bob@contoso.com") == 0
    assert "valid-token-for-bob" in filer.dovecot.introspection.asked


# --- diag probe, the command ---------------------------------------------------------------------------------


def test_diag_probe_lab_runs_the_four_flows(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    done = diag("probe", "--lab", "--json", str(out), "--html", str(tmp_path / "report.html"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("INFO E2E_DELIVERED") == 4 and done.stdout.endswith("status: OK (exit 0)\n")
    document = json.loads(out.read_text())
    jsonschema.validate(document, load_schema())
    assert [d["domain"] for d in document["domains"]] == ["contoso.com", "tailspintoys.com"]
    probes = [p["name"] for d in document["domains"] for c in d["checks"] for p in c["facts"]["probes"]]
    assert sorted(probes) == ["Bob to John", "John to Bob", "John to Sun", "Sun to John"]
    assert "Path of the message: Sun to John (delivered)" in (tmp_path / "report.html").read_text()


def test_diag_probe_one_probe_in_the_lab_watches_its_recipients_mailbox() -> None:
    done = diag("probe", "--lab", "--from", "john@contoso.com", "--to", "sun@tailspintoys.com", "--via",
                "mail.contoso.com", "--slow", "0")  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "INFO E2E_DELIVERED john@contoso.com to sun@tailspintoys.com via mail.contoso.com [127.0.10.10]:" in (
        done.stdout
    )
    assert "WARNING E2E_SLOW" in done.stdout and "more than 0 s" in done.stdout


def test_a_round_trip_through_the_reflector_reports_both_legs(lab: Lab) -> None:
    """John → on-premises → cloud → tailspintoys.com's reflector → the cloud's MX → Connector 2 → John."""
    probe = ProbeConfig(name="John round trip", sender="john@contoso.com", recipient="echo@tailspintoys.com",
                        via="mail.contoso.com", watch="maildir:mail.contoso.com/john@contoso.com", deadline=60,
                        round_trip=True)  # fmt: skip
    facts = run(lab, probe)
    assert outcomes(facts) == [Outcome.DELIVERED], facts.verdicts
    assert facts.reflected is not None and facts.reflected.reflector == "mail.tailspintoys.com"
    # Three hops there (on-premises, cloud, the reflector), two back (the cloud's MX, on-premises).
    assert facts.reflected.there_hops == 3
    assert [hop.ip for hop in facts.hops] == ["127.0.0.1", "127.0.10.10", "127.0.1.10", "127.0.30.10", "127.0.1.10"]
    assert facts.reflected.there_s is not None and facts.reflected.back_s is not None
    assert facts.evidence is not None and ("cloud", "Connector 2") in [
        (trace.role, trace.connector) for trace in facts.evidence.traces
    ]
    assert facts.cleanup == ()


def test_diag_probe_round_trip_in_the_lab() -> None:
    done = diag("probe", "--lab", "--from", "john@contoso.com", "--to", "echo@tailspintoys.com", "--round-trip",
                "--via", "mail.contoso.com", "--watch", "maildir:mail.contoso.com/john@contoso.com")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "INFO E2E_DELIVERED" in done.stdout and "reflector mail.tailspintoys.com" in done.stdout


def test_diag_probe_picks_a_configured_probe_by_name() -> None:
    done = diag("probe", "--lab", "--config", str(BROKEN), "--name", "Relay refused")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "CRITICAL E2E_REJECTED Relay refused via contoso-com.mail.protection.outlook.com [127.0.1.10]:" in (
        done.stdout
    )
    assert "cloud says: 550 5.7.64 TenantAttribution; Relay Access Denied" in done.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--from", "john@contoso.com"], "a probe needs --from ADDR and --to ADDR"),
        (["--from", "john@contoso.com", "--to", "sun@tailspintoys.com"], "a probe needs --watch"),
        (["--from", "jöhn@contoso.com", "--to", "a@b.example", "--watch", "maildir:/x"],
         "--from 'jöhn@contoso.com': 'jöhn@contoso.com' is not an ASCII mail address"),
        (["--from", "a@b.example", "--to", "a@b.example", "--watch", "pop3://x"], "--watch 'pop3://x': "),
        (["--from", "a@b.example", "--to", "a@b.example", "--watch", "maildir:/x", "--via", "h:0"], "--via 'h:0': "),
        (["--from", "a@b.example", "--to", "a@b.example", "--watch", "maildir:/x", "--deadline", "10", "--slow",
          "10"], "--slow 10: must be below the deadline (10 s)"),
        (["--from", "a@b.example", "--to", "a@b.example", "--watch", "maildir:/x", "--watch-user", "u"],
         "--watch-user applies only to an imap:// or imaps:// --watch"),
        ([], "diag probe needs --from, --to and --watch, or --config FILE with [[Probe]] tables, or --lab"),
        (["--lab", "--name", "nobody"], "--name 'nobody': no such [[Probe]] (the configuration has 'John to Sun'"),
        (["--lab", "--deadline", "5"], "a [[Probe]] table has its own Via, Watch, Deadline, Slow and MinInterval"),
        (["--lab", "--min-interval", "5"], "a [[Probe]] table has its own Via, Watch, Deadline, Slow and MinInterval"),
        (["--from", "a@b.example", "--to", "a@b.example", "--watch", "maildir:/x", "--min-interval", "0"],
         "--min-interval 0: must be between 1 and 86400 seconds"),
        (["--lab", "--resolver", "127.0.0.1"], "--lab sets --resolver and --ca-file itself"),
        (["--lab", "--dry-run", "--html", "/tmp/r.html"], "--dry-run writes no report; give --json FILE|- for"),
        (["--from", "a@b.example", "--to", "a@b.example", "--watch", "maildir:/x", "--auth", "u"],
         "--auth u: set the password in DIAG_SMTP_PASSWORD"),
        (["--config", str(Path(__file__).parents[2] / "examples" / "broken-smarthosts.toml")],
         "broken-smarthosts.toml: no [[Probe]] table to run"),
    ],
)
def test_usage_errors_are_one_line_and_exit_3(args: list[str], expected: str) -> None:
    done = diag("probe", *args)
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1 and expected in done.stderr, done.stderr


# --- diag check: the e2e check ------------------------------------------------------------------------------


def test_a_probe_concerning_two_checked_domains_is_sent_once(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    done = diag("check", "contoso.com", "tailspintoys.com", "--lab", "--check", "e2e", "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(out.read_text())
    ids = [{p["name"]: p["message_id"] for p in d["checks"][0]["facts"]["probes"]} for d in document["domains"]]
    contoso, tailspin = ids
    assert set(tailspin) == {"John to Sun", "Sun to John"} and len(contoso) == 4
    assert tailspin["John to Sun"] == contoso["John to Sun"] and tailspin["Sun to John"] == contoso["Sun to John"]


def test_an_unwatchable_mailbox_makes_the_check_unknown_beside_the_other_probes(tmp_path: Path) -> None:
    # Given the lab's probes and one whose IMAP server's certificate is not for the name in its URL
    config = tmp_path / "contoso.toml"
    config.write_text(EXAMPLE_CONFIG.read_text() + '\n[[Probe]]\nName = "Unwatchable"\nFrom = "john@contoso.com"\n'
                      'To = "bob@contoso.com"\nVia = "mail.contoso.com"\nWatch = "imaps://127.0.0.1:1/INBOX"\n'
                      'WatchUser = "bob"\n')  # fmt: skip
    assert parse_config(config.read_text()).probes[-1].name == "Unwatchable"
    done = diag("check", "contoso.com", "--lab", "--config", str(config), "--check", "e2e",
                env={"DIAG_WATCH_PASSWORD": "secret"})  # fmt: skip
    # Then the check ends error with the reason, the four lab probes' findings stand, and the run is unknown
    assert done.returncode == 3, done.stdout + done.stderr
    assert "  e2e: error (" in done.stdout and "): watch: imaps://127.0.0.1:1/INBOX" in done.stdout
    assert done.stdout.count("INFO E2E_DELIVERED") == 4 and "WARNING E2E_WATCH_FAILED Unwatchable" in done.stdout
    assert "secret" not in done.stdout + done.stderr


# --- PR-08: probes sent in a loop by cron to a real organization ---------------------------------------------


def probe_tables(count: int, **keys: str) -> str:
    extra = "".join(f"{key} = {value}\n" for key, value in keys.items())
    return "".join(f'\n[[Probe]]\nName = "Probe {n}"\nFrom = "john@contoso.com"\nTo = "sun@tailspintoys.com"\n'
                   f'Via = "mail.contoso.com"\nWatch = "maildir:mail.tailspintoys.com/sun@tailspintoys.com"\n{extra}'
                   for n in range(1, count + 1))  # fmt: skip


def test_a_configuration_with_21_probes_is_refused_before_anything_is_sent(lab: Lab, tmp_path: Path) -> None:
    config = tmp_path / "contoso.toml"
    config.write_text(BROKEN.read_text() + probe_tables(MAX_PROBES + 1 - len(probes_of(BROKEN))))
    inbox = lab.maildir / "mail.tailspintoys.com" / "sun@tailspintoys.com"
    before = len(messages(inbox))
    done = diag("probe", "--config", str(config), "--resolver", str(lab.nameserver), "--ca-file", str(lab.ca_file))
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1
    assert f"{config}:" in done.stderr and ": Probe[21]: 21 [[Probe]] tables, but a run sends at most 20" in (
        done.stderr
    )
    assert len(messages(inbox)) == before


def test_a_run_of_more_probes_than_the_cap_is_refused_in_code_too() -> None:
    # The loader refuses such a configuration; probes made in code meet the same cap before anything starts.
    probes = [ProbeConfig(f"Probe {n}", sender="john@contoso.com", recipient="sun@tailspintoys.com",
                          watch="maildir:/nonexistent") for n in range(MAX_PROBES + 1)]  # fmt: skip
    with pytest.raises(UsageError, match="21 probes, but a run sends at most 20"):
        asyncio.run(run_probes(probes, default_registry().select(["e2e"]), RunOptions()))


SUN = "mail.tailspintoys.com/sun@tailspintoys.com"


def lab_probe(lab: Lab, *options: str) -> list[str]:
    """``diag probe`` from another process to the running lab, as to a real organization: John to Sun through the
    on-premises server, watched in Sun's Maildir and kept there (--keep), so the Maildir counts what was sent."""
    return ["probe", "--from", "john@contoso.com", "--to", "sun@tailspintoys.com", "--via",
            f"mail.contoso.com:{lab.smtp_port}", "--watch", f"maildir:{lab.maildir / SUN}", "--resolver",
            str(lab.nameserver), "--ca-file", str(lab.ca_file), "--timeout", "5", "--keep", *options]  # fmt: skip


@pytest.fixture
def sun_inbox(lab: Lab) -> Iterator[mailbox.Maildir]:
    """Sun's lab Maildir; what a test adds to it is removed afterwards."""
    box = mailbox.Maildir(lab.maildir / SUN, factory=None, create=False)
    before = set(box.keys())
    yield box
    for key in set(box.keys()) - before:
        box.remove(key)


def test_a_probe_is_not_sent_again_within_its_min_interval(lab: Lab, sun_inbox: mailbox.Maildir,
                                                          tmp_path: Path) -> None:  # fmt: skip
    count = len(sun_inbox)
    first = diag(*lab_probe(lab, "--min-interval", "30"))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "INFO E2E_DELIVERED" in first.stdout and len(sun_inbox) == count + 1
    # When the same probe runs again (another process, a minute of cron later) within its MinInterval
    out = tmp_path / "again.json"
    again = diag(*lab_probe(lab, "--min-interval", "30", "--json", str(out)))
    # Then nothing is sent, the run says why, and that is a notice (exit 0), never a delivery
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(sun_inbox) == count + 1
    assert "NOTICE E2E_NOT_SENT john@contoso.com to sun@tailspintoys.com via mail.contoso.com:" in again.stdout
    assert "was not sent: the same probe was sent " in again.stdout and " s ago (MinInterval 30 s)." in again.stdout
    assert "E2E_DELIVERED" not in again.stdout
    (check,) = json.loads(out.read_text())["domains"][0]["checks"]
    (facts,) = check["facts"]["probes"]
    assert check["status"] == "completed" and [f["code"] for f in check["findings"]] == ["E2E_NOT_SENT"]
    assert facts["held"]["last_sent_at"] and 0 <= facts["held"]["age_s"] < 30 and facts["min_interval_s"] == 30
    assert facts["accepted"] is None and facts["refused"] is None and facts["message_id"] == ""
    # and once the interval has passed (here a MinInterval of 1 s), it is sent again
    time.sleep(1.1)
    sent = set(sun_inbox.keys())
    later = diag(*lab_probe(lab, "--min-interval", "1"))
    assert later.returncode == 0, later.stdout + later.stderr
    # (the first run's kept probe is late for this one, and removed: one probe, another one)
    assert "INFO E2E_DELIVERED" in later.stdout and len(sun_inbox) == count + 1 and set(sun_inbox.keys()) != sent


def test_two_runs_at_once_send_the_probe_once(lab: Lab, sun_inbox: mailbox.Maildir, tmp_path: Path) -> None:
    # Two cron jobs (different jobs: each writes its own result, so neither job lock refuses the other)
    count = len(sun_inbox)
    runs = [subprocess.Popen([sys.executable, "-m", "diag", *lab_probe(lab, "--json", str(tmp_path / f"{n}.json"))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
            for n in range(2)]  # fmt: skip
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert sorted("E2E_NOT_SENT" in output for output in outputs) == [False, True], outputs
    assert len(sun_inbox) == count + 1


def test_a_damaged_record_of_sends_is_taken_as_empty(lab: Lab, sun_inbox: mailbox.Maildir) -> None:
    record = Path(os.environ["XDG_DATA_HOME"]) / "diag" / "history.sent-probes.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"schema": "diag.sent-probes/1", "sent": [{"name": "john to sun", "fr')  # cut short
    count = len(sun_inbox)
    done = diag(*lab_probe(lab))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "INFO E2E_DELIVERED" in done.stdout and len(sun_inbox) == count + 1
    assert f"{record}: the record of probes sent is damaged (Unterminated string" in done.stderr
    assert [entry["name"] for entry in json.loads(record.read_text())["sent"]] == [
        "john@contoso.com to sun@tailspintoys.com"
    ]


def test_a_record_of_sends_that_cannot_be_kept_holds_the_probe_back(lab: Lab, sun_inbox: mailbox.Maildir,
                                                                    tmp_path: Path) -> None:  # fmt: skip
    # Given a data directory that is a file: the record beside the history cannot be read or written
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    count = len(sun_inbox)
    done = diag(*lab_probe(lab), env={"XDG_DATA_HOME": str(blocker)})
    # Then the probe is not sent, and the check cannot say what it would have found: exit 3
    assert done.returncode == 3, done.stdout + done.stderr
    assert len(sun_inbox) == count
    assert f"was not sent: the record of probes sent, {blocker}/diag/history.sent-probes.json, cannot be kept: " in (
        done.stdout
    )
    assert " ms): record: the record of probes sent, " in done.stdout


def test_the_labs_runs_keep_their_own_record_and_are_never_held_back(lab: Lab) -> None:
    # The same probe twice in a row in the shared lab: each run has a record of its own in the lab's directory
    probe = probes_of(EXAMPLE_CONFIG)["Bob to John"]
    assert [outcomes(run(lab, probe)) for _ in range(2)] == [[Outcome.DELIVERED]] * 2
    assert not (Path(os.environ["XDG_DATA_HOME"]) / "diag").exists()
    assert len(list((lab.directory / "sent-probes").glob("run-*.json"))) >= 2


def test_a_dry_run_sends_nothing_and_shows_what_would_be_sent(lab: Lab, sun_inbox: mailbox.Maildir,
                                                              tmp_path: Path) -> None:  # fmt: skip
    count = len(sun_inbox)
    done = diag(*lab_probe(lab, "--dry-run", "--slow", "20"))
    assert done.returncode == 0, done.stdout + done.stderr
    # Then one line: the probe, Via as it would be used (looked up), the mailbox, its times, and that it would go
    assert done.stdout == (
        f"john@contoso.com to sun@tailspintoys.com: john@contoso.com -> sun@tailspintoys.com via mail.contoso.com "
        f"[127.0.10.10]:{lab.smtp_port}, watch maildir:{lab.maildir / SUN}, deadline 300 s, slow 20 s, min interval "
        "60 s: would be sent\n"
    )
    # and nothing was sent, and no send was recorded
    assert len(sun_inbox) == count and not (Path(os.environ["XDG_DATA_HOME"]) / "diag").exists()
    # Once it has been sent, a dry run says it would be held back
    sent = diag(*lab_probe(lab))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    again = diag(*lab_probe(lab, "--dry-run", "--json", "-"))
    assert again.returncode == 0, again.stdout + again.stderr
    (plan,) = json.loads(again.stdout)
    assert plan["via"] == f"mail.contoso.com [127.0.10.10]:{lab.smtp_port}" and plan["mx_of"] is None
    assert (plan["sends"], plan["problems"], plan["min_interval_s"]) == (False, [], 60)
    assert plan["held"]["last_sent_at"] and plan["held"]["age_s"] < 60
    assert len(sun_inbox) == count + 1


def test_a_dry_run_of_a_configuration_says_what_stands_in_the_way(lab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "plans.json"
    done = diag("probe", "--config", str(EXAMPLE_CONFIG), "--resolver", str(lab.nameserver), "--ca-file",
                str(lab.ca_file), "--dry-run", "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["John to Sun", "Sun to John", "John to Bob", "Bob to John"]
    # Relative Maildirs are taken from the configuration's directory, where there are none
    examples = EXAMPLE_CONFIG.parent
    assert lines[0].endswith(f"would not be sent: the mailbox cannot be watched: maildir:{examples / SUN} is not a "
                             "Maildir (it has no new/ and cur/ directories)")  # fmt: skip
    # Without Via, the recipient domain's MX, looked up; a private address is refused as a run would refuse it
    assert "Bob to John: bob@contoso.com -> john@contoso.com via the MX of contoso.com, watch " in lines[3]
    assert ("cannot submit the probe: no MX of contoso.com can be used: the MX contoso-com.mail.protection.outlook.com "
            "is at 127.0.1.10, not a public address (give --allow-private to use it)") in lines[3]  # fmt: skip
    plans = json.loads(out.read_text())
    assert [plan["sends"] for plan in plans] == [False] * 4 and plans[3]["via"] is None
    assert plans[3]["mx_of"] == "contoso.com" and (plans[0]["deadline_s"], plans[0]["slow_s"]) == (60, 30)
    # With --allow-private, the MX found: "host [ip]:port (the MX of contoso.com)"
    allowed = diag("probe", "--config", str(EXAMPLE_CONFIG), "--resolver", str(lab.nameserver), "--ca-file",
                   str(lab.ca_file), "--name", "Bob to John", "--dry-run", "--allow-private")  # fmt: skip
    assert "via contoso-com.mail.protection.outlook.com [127.0.1.10]:25 (the MX of contoso.com)" in allowed.stdout


def test_a_dry_run_logs_in_nowhere_and_names_missing_credentials(filer: Filer, imap_dns: str) -> None:
    logged = filer.dovecot.log.read_text(errors="replace")
    done = diag(*imap_probe(filer, imap_dns, "--dry-run"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.endswith(
        f"min interval 60 s: would not be sent: the mailbox cannot be watched: imap://imap.probe.test:"
        f"{filer.dovecot.imap_port}/INBOX: no credentials: set DIAG_WATCH_PASSWORD to the password (or "
        "DIAG_WATCH_TOKEN to an OAuth2 access token for XOAUTH2)\n"
    )
    with_password = diag(*imap_probe(filer, imap_dns, "--dry-run"), env={"DIAG_WATCH_PASSWORD": "john-pass"})
    assert with_password.stdout.endswith(": would be sent\n") and "john-pass" not in with_password.stdout
    # Nothing was submitted, and Dovecot saw no connection (it logs every one, with or without a login)
    assert filer.filed == [] and filer.dovecot.log.read_text(errors="replace") == logged


def test_a_dry_run_in_the_lab() -> None:
    done = diag("probe", "--lab", "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(done.stdout.splitlines()) == 4 and done.stdout.count(": would be sent\n") == 4


def test_diag_check_keeps_the_record_of_sends_beside_its_history(lab: Lab, sun_inbox: mailbox.Maildir,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    config = tmp_path / "contoso.toml"
    config.write_text(BROKEN.read_text().split("[[Probe]]")[0] + '[[Probe]]\nName = "John to Sun"\n'
                      'From = "john@contoso.com"\nTo = "sun@tailspintoys.com"\nVia = "mail.contoso.com"\n'
                      f'Watch = "maildir:{lab.maildir / SUN}"\nMinInterval = 600\n')  # fmt: skip
    check = ["check", "contoso.com", "--config", str(config), "--check", "e2e", "--resolver", str(lab.nameserver),
             "--smtp-port", str(lab.smtp_port), "--ca-file", str(lab.ca_file), "--history",
             str(tmp_path / "runs.sqlite3")]  # fmt: skip
    first = diag(*check)
    assert first.returncode == 0 and "INFO E2E_DELIVERED John to Sun" in first.stdout, first.stdout + first.stderr
    record = json.loads((tmp_path / "runs.sent-probes.json").read_text())
    assert [entry["name"] for entry in record["sent"]] == ["john to sun"]
    again = diag(*check)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "NOTICE E2E_NOT_SENT John to Sun" in again.stdout and "(MinInterval 600 s)" in again.stdout
    assert not (Path(os.environ["XDG_DATA_HOME"]) / "diag" / "history.sent-probes.json").exists()
