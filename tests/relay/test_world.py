"""The setup guide's world on loopback: John on-premises, Bob in the cloud, Sun on the Internet. Each message
arrives, by the connector the guide says, and its trace proves the route (ARCHITECTURE §5, §6)."""

from __future__ import annotations

import asyncio
import mailbox
import time
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest

from diag.lab.runner import Lab
from diag.lab.world import BOB, JOHN, SUN

ONPREM, CLOUD, INTERNET = "127.0.10.10", "127.0.1.10", "127.0.30.10"


def send(lab: Lab, server: str, sender: str, recipient: str, subject: str) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, recipient, subject
    message.set_content(f"{subject}\n")
    # The users' mail programs connect from 127.0.0.1, the network their own host relays for.
    asyncio.run(aiosmtplib.send(message, hostname=server, port=lab.smtp_port, start_tls=False, timeout=10))


def arrived(lab: Lab, address: str, subject: str, wait: float = 20.0) -> mailbox.MaildirMessage:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        path: Path = lab.mailbox(address)
        if path.exists():
            for message in mailbox.Maildir(path, create=False):
                if message["Subject"] == subject:
                    return message
        time.sleep(0.1)
    raise AssertionError(f"{subject!r} did not reach {address} within {wait} s")


def traces(message: mailbox.MaildirMessage) -> list[str]:
    return [" ".join(str(t).split()) for t in message.get_all("X-Diag-Trace") or []]


@pytest.mark.parametrize(
    ("server", "sender", "recipient", "expected"),
    [
        # John (on-premises) to Sun (Internet): on-premises → cloud (smart host, TLS, client certificate) →
        # tailspintoys.com by MX.
        (ONPREM, JOHN, SUN, ["hop=contoso-com.mail.protection.outlook.com; role=cloud; connector=none; rule=mx",
                             "hop=mail.contoso.com; role=onprem; connector=none; rule=smarthost"]),
        # Sun to John: Sun's host → the cloud by MX → Connector 2 (exact contoso.com) → on-premises.
        (INTERNET, SUN, JOHN, ['hop=contoso-com.mail.protection.outlook.com; role=cloud; connector="Connector 2"; '
                               "rule=exact"]),
        # John to Bob: on-premises → the cloud, where Bob's mailbox is.
        (ONPREM, JOHN, BOB, ["hop=mail.contoso.com; role=onprem; connector=none; rule=smarthost"]),
        # Bob to John: from the cloud through Connector 2 to on-premises.
        (CLOUD, BOB, JOHN, ['hop=contoso-com.mail.protection.outlook.com; role=cloud; connector="Connector 2"; '
                            "rule=exact"]),
    ],
)  # fmt: skip
def test_mail_flows_by_the_guides_connectors(lab: Lab, server: str, sender: str, recipient: str,
                                             expected: list[str]) -> None:  # fmt: skip
    subject = f"flow {time.monotonic_ns()}"
    send(lab, server, sender, recipient, subject)
    message = arrived(lab, recipient, subject)
    found = traces(message)
    assert len(found) == len(expected), found
    for trace, start in zip(found, expected, strict=True):
        assert trace.startswith(start), (trace, start)
        assert "tls=TLSv1.3" in trace  # every hop between the hosts is encrypted
    # Every hop names its TLS in its Received line.
    assert any("TLSv1.3" in str(line) for line in message.get_all("Received") or [])


def test_the_cloud_refuses_to_relay_for_strangers(lab: Lab) -> None:
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        send(lab, CLOUD, "spammer@elsewhere.example", SUN, "relay attempt")
    (error,) = refused.value.recipients
    assert (error.code, error.message) == (550, "5.7.64 TenantAttribution; Relay Access Denied")
