"""The judge: classification of what a watcher finds (probe, DSN, late, forged, other), the delivery facts with
connector evidence, DSN reading (PR-05) and the verdicts a later e2e check reports."""

from __future__ import annotations

import asyncio
import mailbox
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from diag.lab.runner import Lab
from diag.lab.world import ECHO, JOHN
from diag.probe.judge import (
    Outcome,
    classify,
    is_reflection,
    is_report,
    judge_delivery,
    judge_round_trip,
    read_dsn,
    verdicts,
)
from diag.probe.message import Kind, Probe
from diag.probe.sender import Accepted, Via, send_probe
from diag.probe.watch import MaildirWatcher, Observation
from diag.relay.dsn import bounce
from diag.relay.spool import Envelope, RecipientState, RecipientStatus

KEY = b"probe test key, 32 bytes long!!!"
DATA = Path(__file__).parent / "data"
ProbeFactory = Callable[..., Probe]
NOW = datetime(2026, 12, 5, 21, 0, tzinfo=UTC)


def corpus(name: str) -> bytes:
    return b"".join(line for line in (DATA / name).read_bytes().splitlines(True) if not line.startswith(b"#"))


def relay_bounce(content: bytes, detail: str = "550 5.1.1 <sun@tailspintoys.com>: Recipient address rejected") -> bytes:
    """A bounce exactly as diag's relay writes one (diag.relay.dsn: text/rfc822-headers returned)."""
    envelope = Envelope(mail_from="john@contoso.com", rcpt_tos=("sun@tailspintoys.com",), received_at=NOW)
    failure = RecipientStatus("sun@tailspintoys.com", RecipientState.FAILED, detail=detail)
    made = bounce(envelope, content, [failure], reporting_mta="contoso-com.mail.protection.outlook.com", now=NOW)
    assert made is not None
    return made[1]


def rfc822_bounce(returned: bytes) -> bytes:
    """A DSN returning the whole original as message/rfc822 (what Exchange Online and Gmail send)."""
    report = EmailMessage(policy=SMTP)
    report["From"] = "postmaster@outlook.com"
    report["Subject"] = "Undeliverable"
    report.set_content("Delivery has failed.")
    report.make_mixed()
    report.set_type("multipart/report")
    report.set_param("report-type", "delivery-status")
    status = EmailMessage(policy=SMTP)
    status.set_type("message/delivery-status")
    first, second = EmailMessage(policy=SMTP), EmailMessage(policy=SMTP)
    first["Reporting-MTA"] = "dns; AM0PR01MB1234.eurprd01.prod.exchangelabs.com"
    second["Final-Recipient"] = "rfc822; sun@tailspintoys.com"
    second["Action"] = "failed"
    second["Status"] = "5.7.64"
    second["Diagnostic-Code"] = "smtp; 550 5.7.64 TenantAttribution; Relay Access Denied"
    second["Remote-MTA"] = "dns; mail.tailspintoys.com"
    status.set_payload([first, second])
    del status["MIME-Version"]
    report.attach(status)
    original = EmailMessage(policy=SMTP)
    original.set_type("message/rfc822")
    from email import message_from_bytes

    original.set_payload([message_from_bytes(returned)])
    report.attach(original)
    return report.as_bytes()


def test_the_probe_is_classified_by_its_headers(make_probe: ProbeFactory) -> None:
    probe = make_probe()
    head = probe.content.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert classify(head, probe.matcher(KEY)) == (Kind.PROBE, None)
    assert not is_report(head)


def test_a_relay_bounce_for_the_probe_is_its_dsn(make_probe: ProbeFactory) -> None:
    probe = make_probe()
    raw = relay_bounce(probe.content)
    assert is_report(raw)
    kind, found = classify(raw, probe.matcher(KEY))
    assert kind is Kind.DSN and found is not None
    assert found.reporting_mta == "dns; contoso-com.mail.protection.outlook.com"
    failed = found.failed
    assert failed is not None and (failed.action, failed.status) == ("failed", "5.1.1")
    assert failed.diagnostic_code == "smtp; 550 5.1.1 <sun@tailspintoys.com>: Recipient address rejected"
    assert found.returned_message_id == probe.message_id


def test_an_rfc822_bounce_for_the_probe_is_its_dsn(make_probe: ProbeFactory) -> None:
    probe = make_probe()
    kind, found = classify(rfc822_bounce(probe.content), probe.matcher(KEY))
    assert kind is Kind.DSN and found is not None and found.failed is not None
    assert (found.failed.status, found.failed.remote_mta) == ("5.7.64", "dns; mail.tailspintoys.com")


def test_a_bounce_of_another_message_is_other(make_probe: ProbeFactory) -> None:
    probe, other = make_probe(), make_probe()
    assert classify(relay_bounce(other.content), probe.matcher(KEY)) == (Kind.OTHER, None)


def test_a_bounce_with_a_forged_message_id_but_no_token_is_other(make_probe: ProbeFactory) -> None:
    # PR-05: the Message-ID alone (Original-Message-ID forged by a stranger) is not enough.
    probe = make_probe()
    stranger = f"From: x@evil.example\r\nMessage-ID: {probe.message_id}\r\nSubject: hi\r\n\r\nbody\r\n".encode()
    assert classify(relay_bounce(stranger), probe.matcher(KEY)) == (Kind.OTHER, None)


def test_a_bounce_of_an_earlier_run_is_late(make_probe: ProbeFactory) -> None:
    old = make_probe(run="run-0", now=datetime.now(UTC) - timedelta(hours=2))
    probe = make_probe()
    kind, found = classify(relay_bounce(old.content), probe.matcher(KEY))
    assert kind is Kind.LATE and found is not None


def test_a_report_bomb_is_not_parsed() -> None:
    depth = 5000
    parts = [f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n' for i in range(depth)]
    bomb = ('Content-Type: multipart/report; report-type=delivery-status; boundary="top"\r\n\r\n--top\r\n'
            + "".join(parts)).encode()  # fmt: skip
    assert is_report(bomb)
    assert read_dsn(bomb) is None
    huge = b'Content-Type: multipart/report; boundary="x"\r\n\r\n--x\r\n' + b"A" * 5_000_000
    assert read_dsn(huge) is None


def test_a_multipart_report_without_delivery_status_is_no_dsn() -> None:
    raw = (b'Content-Type: multipart/report; report-type=disposition-notification; boundary="x"\r\n\r\n'
           b"--x\r\nContent-Type: text/plain\r\n\r\nread\r\n--x--\r\n")  # fmt: skip
    assert read_dsn(raw) is None


def test_delivery_facts_from_exchange_online_outbound_headers() -> None:
    accepted = datetime(2023, 6, 19, 19, 5, 17, tzinfo=UTC)
    observed = datetime(2023, 6, 19, 19, 5, 31, tzinfo=UTC)
    delivery = judge_delivery(corpus("exo-outbound-hybrid.headers"), folder="INBOX", junk=False,
                              accepted_at=accepted, observed_at=observed)  # fmt: skip
    assert delivery.latency_s == 14.0 and len(delivery.hops) == 8 and not delivery.hops_truncated
    assert delivery.message_id == "<20230619190503.4061-1-wyes.karny@amd.com>"
    evidence = delivery.evidence
    assert (evidence.from_entity, evidence.auth_as, evidence.originator_org) == ("HybridOnPrem", "Anonymous", "amd.com")
    assert evidence.connecting_ip == "165.204.84.17" and evidence.through_on_premises_connector is True


def test_delivery_facts_from_exchange_online_inbound_headers() -> None:
    delivery = judge_delivery(corpus("exo-inbound.headers"), folder="INBOX", junk=False, accepted_at=None,
                              observed_at=NOW)  # fmt: skip
    evidence = delivery.evidence
    assert (evidence.from_entity, evidence.directionality, evidence.auth_as) == ("Internet", "Incoming", "Anonymous")
    assert evidence.through_on_premises_connector is False and delivery.latency_s is None


def test_diag_traces_in_travel_order() -> None:
    content = corpus("diag-relay.headers")
    extra = (b'X-Diag-Trace: hop=mail.contoso.com; role=onprem; connector=none; rule=smarthost; '
             b"to=contoso-com.mail.protection.outlook.com[127.0.1.10]; tls=TLSv1.3\r\n")  # fmt: skip
    delivery = judge_delivery(content.replace(b"From: sun", extra + b"From: sun"), folder="INBOX", junk=False,
                              accepted_at=None, observed_at=NOW)  # fmt: skip
    # The lower line was written first: the on-premises relay's, then the cloud's.
    first, second = delivery.evidence.traces
    assert (first.role, first.connector, first.rule) == ("onprem", None, "smarthost")
    assert (second.hop, second.role, second.connector, second.rule) == (
        "contoso-com.mail.protection.outlook.com", "cloud", "Connector 2", "exact")  # fmt: skip
    assert (second.to, second.tls) == ("mail.contoso.com[127.0.10.10]", "TLSv1.3")
    assert delivery.evidence.through_on_premises_connector is None


def test_a_trace_with_a_semicolon_in_the_connector_name() -> None:
    head = (b'X-Diag-Trace: hop=h; role=cloud; connector="a; b"; rule=exact; to=x[127.0.0.1]; tls=none\r\n'
            b"X-Diag-Trace: broken\r\n\r\n")  # fmt: skip
    delivery = judge_delivery(head, folder="INBOX", junk=False, accepted_at=None, observed_at=NOW)
    (trace,) = delivery.evidence.traces
    assert (trace.connector, trace.rule, trace.tls) == ("a; b", "exact", "none")


# --- verdicts -------------------------------------------------------------------------------------------------


def delivered(name: str = "diag-relay.headers", *, folder: str = "INBOX", junk: bool = False,
              latency: float = 3.0):  # type: ignore[no-untyped-def]  # fmt: skip
    return judge_delivery(corpus(name), folder=folder, junk=junk, accepted_at=NOW,
                          observed_at=NOW + timedelta(seconds=latency))  # fmt: skip


def outcomes(found: tuple[object, ...]) -> list[Outcome]:
    return [verdict.outcome for verdict in found]  # type: ignore[attr-defined]


def test_rejected_outranks_everything() -> None:
    (verdict,) = verdicts(refused="550 5.7.64 TenantAttribution; Relay Access Denied", delivery=None, bounce=None,
                          accepted_at=None, deadline_s=60)  # fmt: skip
    assert verdict.outcome is Outcome.REJECTED and "5.7.64" in verdict.detail


def test_bounced_names_status_diagnostic_and_reporter(make_probe: ProbeFactory) -> None:
    probe = make_probe()
    found = read_dsn(relay_bounce(probe.content))
    (verdict,) = verdicts(refused=None, delivery=None, bounce=found, accepted_at=NOW, deadline_s=60)
    assert verdict.outcome is Outcome.BOUNCED
    assert "Status 5.1.1" in verdict.detail and "Recipient address rejected" in verdict.detail
    assert "contoso-com.mail.protection.outlook.com" in verdict.detail


def test_timeout_says_where_it_was_last_known() -> None:
    (verdict,) = verdicts(refused=None, delivery=None, bounce=None, accepted_at=NOW, deadline_s=120)
    assert verdict.outcome is Outcome.TIMEOUT and "120 s" in verdict.detail and NOW.isoformat() in verdict.detail


def test_delivered_through_diag_relays_with_tls() -> None:
    found = verdicts(refused=None, delivery=delivered(), bounce=None, accepted_at=NOW, deadline_s=60,
                     minimum_tls="TLSv1.2", expected_connector="Connector 2")  # fmt: skip
    assert outcomes(found) == [Outcome.DELIVERED]


def test_junk_slow_and_wrong_route() -> None:
    found = verdicts(refused=None, delivery=delivered(folder="Junk", junk=True, latency=90), bounce=None,
                     accepted_at=NOW, deadline_s=600, slow_s=60, expected_connector="Connector 1")  # fmt: skip
    assert outcomes(found) == [Outcome.DELIVERED, Outcome.JUNK, Outcome.SLOW, Outcome.WRONG_ROUTE]
    assert "'Connector 1'" in found[-1].detail and "Connector 2" in found[-1].detail


def test_a_hop_in_clear_or_below_the_minimum_is_tls_missing() -> None:
    found = verdicts(refused=None, delivery=delivered("exo-outbound-hybrid.headers"), bounce=None, accepted_at=NOW,
                     deadline_s=60, minimum_tls="TLSv1.3", expect_on_premises_connector=True)  # fmt: skip
    missing = [verdict for verdict in found if verdict.outcome is Outcome.TLS_MISSING]
    # Four Exchange hops at TLS 1.2 are below 1.3; the list server hop (ESMTP) was in clear; vger's
    # expander and local hand-overs name no network sender and are not judged.
    assert [verdict.hop.index for verdict in missing if verdict.hop] == [1, 2, 3, 4, 6, 8]
    assert "not encrypted" in missing[4].detail
    assert Outcome.WRONG_ROUTE not in outcomes(found)


def test_expected_on_premises_connector_but_arrived_from_the_internet() -> None:
    found = verdicts(refused=None, delivery=delivered("exo-inbound.headers"), bounce=None, accepted_at=NOW,
                     deadline_s=60, expect_on_premises_connector=True)  # fmt: skip
    (wrong,) = [verdict for verdict in found if verdict.outcome is Outcome.WRONG_ROUTE]
    assert "FromEntityHeader Internet" in wrong.detail


@pytest.mark.parametrize("name", sorted(path.name for path in DATA.glob("*.headers")))
def test_every_corpus_sample_yields_a_delivery(name: str) -> None:
    delivery = delivered(name)
    assert delivery.hops and all(hop.index == position for position, hop in enumerate(delivery.hops, start=1))


# --- round trips (the relay's reflector, diag.relay.reflect) -----------------------------------------------------

THERE = (
    b"Received: from contoso-com.mail.protection.outlook.com ([127.0.1.10])\r\n"
    b"\tby mail.tailspintoys.com with ESMTPS (TLSv1.3 TLS_AES_256_GCM_SHA384) id r3\r\n"
    b"\tfor <echo@tailspintoys.com>; Sat, 05 Dec 2026 21:00:04 +0000\r\n"
    b'X-Diag-Trace: hop=contoso-com.mail.protection.outlook.com; role=cloud; connector=none; rule=mx; '
    b"to=mail.tailspintoys.com[127.0.30.10]; tls=TLSv1.3\r\n"
    b"Received: from mail.contoso.com ([127.0.10.10])\r\n"
    b"\tby contoso-com.mail.protection.outlook.com with ESMTPS (TLSv1.3 TLS_AES_256_GCM_SHA384) id r2\r\n"
    b"\tfor <echo@tailspintoys.com>; Sat, 05 Dec 2026 21:00:02 +0000\r\n"
    b"Received: from client.probe.test ([127.0.0.1])\r\n"
    b"\tby mail.contoso.com with ESMTPS (TLSv1.3 TLS_AES_256_GCM_SHA384) id r1\r\n"
    b"\tfor <echo@tailspintoys.com>; Sat, 05 Dec 2026 21:00:01 +0000\r\n"
)  # fmt: skip
BACK = (
    b'X-Diag-Trace: hop=contoso-com.mail.protection.outlook.com; role=cloud; connector="Connector 2"; rule=exact; '
    b"to=mail.contoso.com[127.0.10.10]; tls=TLSv1.3\r\n"
    b"Received: from contoso-com.mail.protection.outlook.com ([127.0.1.10])\r\n"
    b"\tby mail.contoso.com with ESMTPS (TLSv1.3 TLS_AES_256_GCM_SHA384) id b2\r\n"
    b"\tfor <john@contoso.com>; Sat, 05 Dec 2026 21:00:09 +0000\r\n"
    b"Received: from mail.tailspintoys.com ([127.0.30.10])\r\n"
    b"\tby contoso-com.mail.protection.outlook.com with ESMTPS (TLSv1.3 TLS_AES_256_GCM_SHA384) id b1\r\n"
    b"\tfor <john@contoso.com>; Sat, 05 Dec 2026 21:00:07 +0000\r\n"
)  # fmt: skip


def reflected(probe: Probe, *, there: bytes = THERE, back: bytes = BACK, answered: datetime | None = None) -> bytes:
    """The reflector's answer to ``probe`` as it arrives in John's mailbox: the answer diag's relay makes for the
    probe as the reflector stored it, behind the Received lines of the way back."""
    from diag.relay.reflect import Reply, reply

    envelope = Envelope(mail_from=probe.sender, rcpt_tos=(probe.recipient,), received_at=NOW)
    made = reply(envelope, there + probe.content, reflector=probe.recipient, reflectors=(probe.recipient,),
                 hostname="mail.tailspintoys.com", now=answered or NOW + timedelta(seconds=5))  # fmt: skip
    assert isinstance(made, Reply)
    return back + made.content


def test_a_reflected_probe_is_the_probe_and_is_read_whole(make_probe: ProbeFactory) -> None:
    probe = make_probe(recipient="echo@tailspintoys.com", now=NOW)
    raw = reflected(probe)
    head = raw.split(b"\r\n\r\n")[0] + b"\r\n\r\n"

    assert classify(head, probe.matcher(KEY)) == (Kind.PROBE, None)  # the token (and its MAC) came back
    assert is_reflection(head) and is_report(head)  # watchers read its body, where the way there is
    assert not is_reflection(probe.content) and not is_reflection(relay_bounce(probe.content))
    assert read_dsn(raw) is None


def test_a_round_trip_splits_the_way_there_from_the_way_back(make_probe: ProbeFactory) -> None:
    probe = make_probe(recipient="echo@tailspintoys.com", now=NOW)
    accepted, observed = NOW + timedelta(seconds=1), NOW + timedelta(seconds=10)

    trip = judge_round_trip(reflected(probe), folder="INBOX", junk=False, accepted_at=accepted, observed_at=observed)

    assert trip is not None and trip.reflector == "mail.tailspintoys.com"
    there, back = trip.there, trip.back
    assert [hop.ip for hop in there.hops] == ["127.0.0.1", "127.0.10.10", "127.0.1.10"]
    assert [hop.ip for hop in back.hops] == ["127.0.30.10", "127.0.1.10"]
    assert there.message_id == probe.message_id and back.message_id != probe.message_id
    assert (there.folder, there.observed_at, there.latency_s) == ("mail.tailspintoys.com", NOW + timedelta(seconds=4),
                                                                  3.0)  # fmt: skip
    assert (back.folder, back.accepted_at, back.latency_s) == ("INBOX", NOW + timedelta(seconds=5), 5.0)
    assert [trace.connector for trace in there.evidence.traces] == [None]  # the cloud sent it by MX
    assert [trace.connector for trace in back.evidence.traces] == ["Connector 2"]
    # Both legs numbered through, with the delay across the turn (the reflector's arrival to the cloud's).
    assert [hop.index for hop in trip.hops] == [1, 2, 3, 4, 5] and trip.hops[3].delay_s == 3.0
    assert trip.latency_s == 9.0 and not trip.hops_truncated
    whole = trip.whole
    assert whole.hops == trip.hops and whole.message_id == probe.message_id and whole.latency_s == 9.0
    found = verdicts(refused=None, delivery=whole, bounce=None, accepted_at=accepted, deadline_s=60,
                     minimum_tls="TLSv1.2", expected_connector="Connector 2")  # fmt: skip
    assert outcomes(found) == [Outcome.DELIVERED]
    assert [trace.connector for trace in whole.evidence.traces] == [None, "Connector 2"]
    # The cloud used no Connector 1 on either leg.
    found = verdicts(refused=None, delivery=whole, bounce=None, accepted_at=accepted, deadline_s=60,
                     expected_connector="Connector 1")  # fmt: skip
    assert outcomes(found) == [Outcome.DELIVERED, Outcome.WRONG_ROUTE]


def test_a_round_trip_with_a_hop_in_clear_is_tls_missing(make_probe: ProbeFactory) -> None:
    probe = make_probe(recipient="echo@tailspintoys.com", now=NOW)
    # The reflector on a public address (hand-overs on loopback are not judged), answering in clear.
    back = BACK.replace(b"ESMTPS (TLSv1.3 TLS_AES_256_GCM_SHA384) id b1", b"ESMTP id b1").replace(
        b"[127.0.30.10]", b"[192.0.2.30]")  # fmt: skip

    trip = judge_round_trip(reflected(probe, back=back), folder="Junk", junk=True, accepted_at=NOW, observed_at=NOW)

    assert trip is not None and trip.whole.junk
    found = verdicts(refused=None, delivery=trip.whole, bounce=None, accepted_at=NOW, deadline_s=60)
    (missing,) = [verdict for verdict in found if verdict.outcome is Outcome.TLS_MISSING]
    assert missing.hop is not None and missing.hop.index == 4 and missing.hop.ip == "192.0.2.30"


def test_skewed_clocks_make_no_negative_leg(make_probe: ProbeFactory) -> None:
    probe = make_probe(recipient="echo@tailspintoys.com", now=NOW)
    # The reflector's clock is a minute behind: it received the probe "before" --via accepted it.
    trip = judge_round_trip(reflected(probe), folder="INBOX", junk=False, accepted_at=NOW + timedelta(minutes=1),
                            observed_at=NOW + timedelta(minutes=1, seconds=5))  # fmt: skip

    assert trip is not None and trip.there.latency_s is None and trip.latency_s == 5.0


def test_what_is_no_reflection_is_no_round_trip(make_probe: ProbeFactory) -> None:
    probe = make_probe(recipient="echo@tailspintoys.com", now=NOW)
    headless = reflected(probe).replace(b"text/rfc822-headers", b"text/plain")

    for raw in (probe.content, relay_bounce(probe.content), headless):
        assert judge_round_trip(raw, folder="INBOX", junk=False, accepted_at=NOW, observed_at=NOW) is None


def test_a_round_trip_through_the_labs_reflector(lab: Lab, make_probe: ProbeFactory) -> None:
    """John → on-premises → cloud → tailspintoys.com's reflector → the cloud's MX → Connector 2 → John."""
    probe = make_probe(sender=JOHN, recipient=ECHO, name="John round trip")
    path = lab.mailbox(JOHN)
    path.parent.mkdir(parents=True, exist_ok=True)
    mailbox.Maildir(path, create=True)

    async def go() -> tuple[Accepted, Observation]:
        async with MaildirWatcher(path, poll_min=0.05, poll_max=0.3) as watching:
            await watching.mark()
            sent = await send_probe(probe, Via("mail.contoso.com", lab.smtp_port, address="127.0.10.10"),
                                    timeout=10, ehlo_name="client.probe.test", ca_file=lab.ca_file)  # fmt: skip
            assert isinstance(sent, Accepted), sent
            seen = await watching.wait(probe.matcher(KEY), time.monotonic() + 30)
            if seen.probe is not None:
                await watching.remove([seen.probe])
            return sent, seen

    sent, seen = asyncio.run(go())

    assert seen.probe is not None and seen.probe.kind is Kind.PROBE
    trip = judge_round_trip(seen.probe.headers, folder=seen.probe.folder, junk=seen.probe.junk,
                            accepted_at=sent.accepted_at, observed_at=seen.probe.observed_at)  # fmt: skip
    assert trip is not None and trip.reflector == "mail.tailspintoys.com"
    assert [hop.ip for hop in trip.there.hops] == ["127.0.0.1", "127.0.10.10", "127.0.1.10"]
    assert [hop.ip for hop in trip.back.hops] == ["127.0.30.10", "127.0.1.10"]
    assert [(trace.role, trace.connector) for trace in trip.there.evidence.traces] == [("onprem", None),
                                                                                         ("cloud", None)]
    assert [(trace.role, trace.connector) for trace in trip.back.evidence.traces] == [("cloud", "Connector 2")]
    assert all(hop.tls_version == "TLSv1.3" for hop in trip.hops)
    found = verdicts(refused=None, delivery=trip.whole, bounce=None, accepted_at=sent.accepted_at, deadline_s=30,
                     minimum_tls="TLSv1.2", expected_connector="Connector 2")  # fmt: skip
    assert outcomes(found) == [Outcome.DELIVERED]
