"""The views of ``diag probe --dry-run`` (``diag/render/plans.py``): plain data in, one line or a JSON list out."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import UTC, datetime

from diag.probe.run import Held, Plan
from diag.render.plans import dumps, line, render_plain

PLAN = Plan(
    name="Bob to John", sender="bob@contoso.com", recipient="john@contoso.com",
    via="contoso-com.mail.protection.outlook.com [192.0.2.10]:25", mx_of="contoso.com",
    watch="imaps://imap.contoso.com/INBOX", deadline_s=300, slow_s=None, min_interval_s=3600, round_trip=False,
)  # fmt: skip


def test_a_probe_that_would_be_sent() -> None:
    assert PLAN.sends
    assert line(PLAN) == (
        "Bob to John: bob@contoso.com -> john@contoso.com via contoso-com.mail.protection.outlook.com [192.0.2.10]:25 "
        "(the MX of contoso.com), watch imaps://imap.contoso.com/INBOX, deadline 300 s, min interval 3600 s: would be "
        "sent"
    )


def test_every_reason_a_probe_would_not_be_sent_is_named() -> None:
    plan = replace(PLAN, via=None, slow_s=60, round_trip=True, held=Held(datetime(2026, 11, 26, tzinfo=UTC), 42.4),
                   problems=("cannot submit the probe: the recipient domain contoso.com accepts no mail (null MX)",))
    assert not plan.sends
    assert line(plan).endswith(
        "via the MX of contoso.com, watch imaps://imap.contoso.com/INBOX, deadline 300 s, slow 60 s, min interval "
        "3600 s, round trip: would not be sent: the same probe was sent 42 s ago (MinInterval 3600 s); cannot submit "
        "the probe: the recipient domain contoso.com accepts no mail (null MX)"
    )
    problem = "the record of probes sent, /x, cannot be kept: Permission denied"
    assert line(replace(PLAN, held=Held(problem=problem))).endswith(f": would not be sent: {problem}")


def test_names_from_dns_are_shown_inert() -> None:
    plan = replace(PLAN, via="mx.\x1b[2Jevil\u202e.example [192.0.2.10]:25")
    shown = line(plan)
    assert "\x1b" not in shown and "\u202e" not in shown and "\\x1b[2Jevil" in shown


def test_the_json_list_has_every_field_and_whether_it_would_be_sent() -> None:
    plans = json.loads(dumps([PLAN, replace(PLAN, name="Held", held=Held(problem="x"))]))
    assert [(plan["name"], plan["sends"]) for plan in plans] == [("Bob to John", True), ("Held", False)]
    assert plans[0] == {
        "name": "Bob to John", "sender": "bob@contoso.com", "recipient": "john@contoso.com",
        "via": "contoso-com.mail.protection.outlook.com [192.0.2.10]:25", "mx_of": "contoso.com",
        "watch": "imaps://imap.contoso.com/INBOX", "deadline_s": 300, "slow_s": None, "min_interval_s": 3600,
        "round_trip": False, "held": None, "problems": [], "sends": True,
    }  # fmt: skip
    assert plans[1]["held"] == {"last_sent_at": None, "age_s": None, "problem": "x"}


def test_one_line_per_probe() -> None:
    stream = io.StringIO()
    render_plain([PLAN, replace(PLAN, name="Other")], stream)
    assert [text.split(":")[0] for text in stream.getvalue().splitlines()] == ["Bob to John", "Other"]
