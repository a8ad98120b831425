"""Received lines as hops: a corpus of real-world headers (tests/probe/data/, each with its source), the dialects
of Postfix, Exchange Online, sendmail, Gmail, Exim and diag's relay, clock skew, and hostile input (PR-04)."""

from __future__ import annotations

import asyncio
import mailbox
import time
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path

import aiosmtplib
import pytest

from diag.lab.runner import Lab
from diag.lab.world import JOHN, SUN
from diag.probe.received import MAX_HOPS, Hop, normalize_tls_version, parse_hops

DATA = Path(__file__).parent / "data"


def corpus(name: str) -> tuple[Hop, ...]:
    raw = b"".join(line for line in (DATA / name).read_bytes().splitlines(True) if not line.startswith(b"#"))
    message = BytesHeaderParser(policy=policy.compat32).parsebytes(raw)
    hops, truncated = parse_hops([str(value) for value in message.get_all("Received") or []])
    assert not truncated
    return hops


def summary(hop: Hop) -> tuple[object, ...]:
    return (hop.from_host, hop.ip, hop.by_host, hop.protocol, hop.tls, hop.tls_version, hop.tls_cipher, hop.id)


def test_corpus_files_name_their_source() -> None:
    for path in DATA.glob("*.headers"):
        assert path.read_text().startswith("# "), f"{path.name} must say where it comes from"


def test_exchange_online_outbound_from_on_premises() -> None:
    hops = corpus("exo-outbound-hybrid.headers")
    assert len(hops) == 8
    on_premises, inbound_connector, internal, outbound = hops[0], hops[1], hops[2], hops[4]
    assert summary(on_premises) == (
        "beas.amd.com", "10.180.168.240", "SATLEXMB04.amd.com", "Microsoft SMTP Server", True, "TLSv1.2",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "15.1.2507.23",
    )  # fmt: skip
    # The on-premises server hands over to EOP: its address is the one in parentheses, never the id's digits.
    assert (inbound_connector.from_host, inbound_connector.ip) == ("SATLEXMB04.amd.com", "165.204.84.17")
    assert inbound_connector.by_host == "SA2PEPF00001507.mail.protection.outlook.com"
    assert inbound_connector.id == "15.20.6521.17"
    assert internal.ip == "2603:10b6:806:3c5:cafe::a6"
    # Microsoft's servers disagree by two seconds: skew, not a negative delay.
    assert (internal.delay_s, internal.skew_s) == (None, 2.0)
    assert hops[3].delay_s == 2.0
    assert outbound.from_reverse == "mail-mw2nam10on2080.outbound.protection.outlook.com"
    assert (outbound.ip, outbound.protocol, outbound.tls) == ("40.107.94.80", "ESMTPS", True)
    assert outbound.tls_version is None  # Postfix names TLS only with smtpd_tls_received_header = yes
    assert (hops[5].protocol, hops[5].tls) == ("ESMTP", False)
    # vger's list expander names no sender.
    assert (hops[6].from_host, hops[6].ip, hops[6].by_host) == (None, None, "vger.kernel.org")


def test_exchange_online_inbound_to_a_mailbox() -> None:
    hops = corpus("exo-inbound.headers")
    assert len(hops) == 15
    sendmail_style = hops[10]
    assert summary(sendmail_style) == (
        "mta-out02.sim.unared.es", "10.10.24.44", "mx02.puc.unared.es", "ESMTP", True, "TLSv1.3",
        "TLS_AES_256_GCM_SHA384", "26J7f85q019879-26J7f85s019879",
    )  # fmt: skip
    eop = hops[11]
    assert (eop.from_host, eop.ip, eop.tls_version, eop.id) == ("mx02.puc.unared.es", "10.10.19.169", "TLSv1.2",
                                                                 "15.20.5438.12")  # fmt: skip
    store = hops[-1]
    assert (store.protocol, store.tls, store.by_host) == ("HTTPS", True, "DB6PR0902MB2040.eurprd09.prod.outlook.com")
    lmtp = hops[5]
    assert (lmtp.protocol, lmtp.tls, lmtp.ip) == ("LMTP", False, "10.10.24.60")
    amavis = hops[2]
    assert amavis.loopback and (amavis.by_host, amavis.protocol) == ("localhost", "ESMTP")
    assert hops[0].from_host is None and hops[0].by_host == "support.unared.es"
    assert all(hop.skew_s is None for hop in hops)


def test_gmail_exim_and_postfix_submission() -> None:
    hops = corpus("gmail-exim-postfix.headers")
    assert len(hops) == 8
    submission, exim_auth, exim, gmail = hops[:4]
    assert (submission.protocol, submission.tls, submission.ip) == ("ESMTPSA", True, "192.168.1.20")
    assert summary(exim_auth) == ("slartibartfast.improbability.net", "51.155.134.81",
                                  "s1234.lon1.mysecurecloudhost.com", "esmtpsa", True, "TLSv1.3",
                                  "TLS_AES_256_GCM_SHA384", "1vIkUl-00000003uN9-2zvy")  # fmt: skip
    assert (exim.tls_version, exim.delay_s) == ("TLSv1.3", 10.0)
    assert summary(gmail) == ("out13-60.antispamcloud.com", "185.201.17.60", "mx.google.com", "ESMTPS", True,
                              "TLSv1.3", "TLS_AES_256_GCM_SHA384",
                              "ffacd0b85a97d-42b2e033f2fsi5321334f8f.765.2025.11.11.01.17.17")  # fmt: skip
    assert gmail.from_reverse == "out13-60.antispamcloud.com"  # "name. [ip]": the root dot dropped
    google_internal = hops[4]
    assert (google_internal.by_host, google_internal.protocol, google_internal.ip) == (
        "2002:a05:600d:7:b0:477:563b:1ae3", "SMTP", None)  # fmt: skip
    assert hops[5].delay_s == 524.0  # the list held it for almost nine minutes


def test_postfix_tls13_line() -> None:
    hops = corpus("postfix-tls13.headers")
    relay = hops[1]
    assert summary(relay) == ("smtp.kernel.org", "52.25.139.140", "dfw.source.kernel.org", "ESMTPS", True, "TLSv1.3",
                              "TLS_AES_256_GCM_SHA384", "9FB4E63121")  # fmt: skip
    assert relay.from_reverse == "relay.kernel.org"


def test_sendmail_proofpoint_and_exchange_on_premises() -> None:
    hops = corpus("sendmail-exchange.headers")
    exchange, sendmail, proofpoint, local_filter = hops[:4]
    assert (exchange.protocol, exchange.tls_version, exchange.id) == ("Microsoft SMTP Server", "TLSv1.2", "15.2.986.42")
    assert summary(sendmail) == ("nalasex01a.na.qualcomm.com", "10.47.209.196", "NALASPPMTA01.qualcomm.com", "ESMTPS",
                                 True, "TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384", "3523QQ8d017143")  # fmt: skip
    assert (proofpoint.from_reverse, proofpoint.ip) == ("Global_NAT1.qualcomm.com", "129.46.96.20")
    assert local_filter.loopback and local_filter.tls is False


def test_diag_relay_lines() -> None:
    hops = corpus("diag-relay.headers")
    assert [summary(hop) for hop in hops] == [
        ("localhost", "127.0.0.1", "mail.tailspintoys.com", "ESMTP", False, None, None, "18ee77af5bdb1a615077d27b"),
        ("mail.tailspintoys.com", "127.0.30.10", "contoso-com.mail.protection.outlook.com", "ESMTPS", True, "TLSv1.3",
         "TLS_AES_256_GCM_SHA384", "18ee77af5c6f9aa91bf850f9"),
        ("contoso-com.mail.protection.outlook.com", "127.0.1.10", "mail.contoso.com", "ESMTPS", True, "TLSv1.3",
         "TLS_AES_256_GCM_SHA384", "18ee77af5d01969ccc9ae2f2"),
    ]  # fmt: skip


def test_a_fresh_lab_message_parses_like_the_corpus_copy(lab: Lab) -> None:
    """The relay writes today what diag-relay.headers holds: Sun → cloud → Connector 2 → John, live."""
    subject = f"received {time.monotonic_ns()}"
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = SUN, JOHN, subject
    message.set_content("hops\n")
    asyncio.run(aiosmtplib.send(message, hostname="127.0.30.10", port=lab.smtp_port, start_tls=False, timeout=10))
    deadline = time.monotonic() + 20
    arrived = None
    while arrived is None and time.monotonic() < deadline:
        path = lab.mailbox(JOHN)
        if path.exists():
            arrived = next((m for m in mailbox.Maildir(path, create=False) if m["Subject"] == subject), None)
        time.sleep(0.1)
    assert arrived is not None
    hops, _ = parse_hops([str(value) for value in arrived.get_all("Received") or []])
    assert [(hop.ip, hop.protocol, hop.tls_version) for hop in hops] == [
        ("127.0.0.1", "ESMTP", None),
        ("127.0.30.10", "ESMTPS", "TLSv1.3"),
        ("127.0.1.10", "ESMTPS", "TLSv1.3"),
    ]
    assert hops[2].by_host == "mail.contoso.com" and all(hop.at is not None for hop in hops)


@pytest.mark.parametrize(
    ("line", "version", "cipher"),
    [
        ("from a ([192.0.2.1]) by b with esmtps (TLS1.0:RSA_AES_256_CBC_SHA1:32) (Exim 4.71) id x; "
         "Wed, 17 Jul 2019 04:19:52 -0400", "TLSv1", "RSA_AES_256_CBC_SHA1"),
        ("from a (a [192.0.2.1]) by relay.mimecast.com with ESMTP with STARTTLS (version=TLSv1.3, "
         "cipher=TLS_AES_256_GCM_SHA384) id us-mta-1; Wed, 26 Nov 2025 11:36:15 -0500", "TLSv1.3",
         "TLS_AES_256_GCM_SHA384"),
        ("from source ([12.158.40.254]) (using TLSv1) by exprod.postini.com; Wed, 08 Jan 2007 14:39:55 PST",
         "TLSv1", None),
    ],
)  # fmt: skip
def test_other_dialects(line: str, version: str, cipher: str | None) -> None:
    (hop,), _ = parse_hops([line])
    assert (hop.tls, hop.tls_version, hop.tls_cipher, hop.ip) == (True, version, cipher, hop.ip)
    assert hop.ip in ("192.0.2.1", "12.158.40.254")


@pytest.mark.parametrize(
    ("written", "normal"),
    [("TLS1_2", "TLSv1.2"), ("TLS1.3", "TLSv1.3"), ("TLSv1.3", "TLSv1.3"), ("TLS1_0", "TLSv1"), ("TLSv1", "TLSv1"),
     ("TLSv1/SSLv3", "TLSv1/SSLv3"), ("SSLv3", "SSLv3")],
)  # fmt: skip
def test_tls_versions_in_one_spelling(written: str, normal: str) -> None:
    assert normalize_tls_version(written) == normal


def test_an_exchange_id_is_never_an_address() -> None:
    (hop,), _ = parse_hops(["from mail.contoso.com by ex1.contoso.com with Microsoft SMTP Server id 15.1.2.3; "
                            "Mon, 1 Jan 2024 00:00:00 +0000"])  # fmt: skip
    assert (hop.ip, hop.id, hop.tls) == (None, "15.1.2.3", False)


@pytest.mark.parametrize("date", ["", "yesterday", "Mon, 99 Foo 2024 99:99:99 +9999", "Tue, 1 Jan 99999 00:00 +0000"])
def test_a_bogus_date_is_unknown(date: str) -> None:
    (hop,), _ = parse_hops([f"from a ([192.0.2.1]) by b with ESMTP id x; {date}"])
    assert hop.at is None and hop.by_host == "b"


def test_hostile_received_lines_are_bounded() -> None:
    hostile = "from evil (\u202e<script>alert(1)</script> [192.0.2.66]) by x\x00y with ESMTP " + "A" * 100_000
    values = [hostile] * 10_000
    hops, truncated = parse_hops(values)
    assert truncated and len(hops) == MAX_HOPS
    assert all(len(hop.raw) <= 4096 for hop in hops)
    assert "\x00" not in hops[0].raw and hops[0].ip == "192.0.2.66"
    assert hops[0].by_host is None  # "x?y" is no host name


def test_a_line_without_clauses() -> None:
    (hop,), _ = parse_hops(["garbage without structure"])
    assert (hop.from_host, hop.by_host, hop.protocol, hop.tls, hop.at) == (None, None, None, None, None)
