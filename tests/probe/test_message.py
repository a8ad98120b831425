"""The probe message and its token: unique, authenticated with a key, and never matched by a forgery or a
probe of another run (security-cases.md PR-01)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy

import pytest

from diag.probe.message import PROBE_HEADER, Kind, Probe, ProbeToken, build_probe, new_run_id

KEY = b"probe test key, 32 bytes long!!!"
ProbeFactory = Callable[..., Probe]


def header(probe: Probe) -> str:
    parsed = message_from_bytes(probe.content, policy=policy.compat32)
    return str(parsed[PROBE_HEADER])


def test_the_message_carries_its_correlation(make_probe: ProbeFactory) -> None:
    probe = make_probe(name="John to Sun")
    parsed = message_from_bytes(probe.content, policy=policy.compat32)
    assert parsed["Message-ID"] == probe.message_id and probe.message_id.endswith("@contoso.com>")
    assert (parsed["From"], parsed["To"]) == ("john@contoso.com", "sun@tailspintoys.com")
    assert "John to Sun" in parsed["Subject"] and "run-1" in parsed["Subject"]
    assert parsed["Auto-Submitted"] is None  # the reflector must answer probes (RFC 3834 §2)
    assert b"\r\n" in probe.content and b"\n" not in probe.content.replace(b"\r\n", b"")
    value = header(probe)
    pattern = r"v=1; run=run-1; probe=John%20to%20Sun; sent=\d{8}T\d{6}Z; nonce=[0-9a-f]{32}; mac=[0-9a-f]{64}"
    assert re.fullmatch(pattern, value)


def test_two_probes_never_share_message_id_or_nonce(make_probe: ProbeFactory) -> None:
    first, second = make_probe(), make_probe()
    assert first.message_id != second.message_id and first.token.nonce != second.token.nonce


def test_the_probe_itself_matches(make_probe: ProbeFactory) -> None:
    probe = make_probe()
    assert probe.matcher(KEY).classify(header(probe)) is Kind.PROBE


def test_a_long_unicode_name_stays_one_parsable_header(make_probe: ProbeFactory) -> None:
    name = "Zürich → Genève, Ärger über Ümlaute " * 2
    probe = make_probe(name=name[:64])
    assert probe.matcher(KEY).classify(header(probe)) is Kind.PROBE
    head = probe.content.split(b"\r\n\r\n")[0]
    assert b"X-Diag-Probe: v=1; run=run-1; probe=Z%C3%BCrich" in head  # never RFC 2047 words
    assert probe.content.isascii()  # the body too: 7-bit for servers without 8BITMIME


@pytest.mark.parametrize(
    "mutate",
    [
        lambda value: value.rsplit("; mac=", 1)[0],  # MAC removed
        lambda value: value[:-1] + ("0" if value[-1] != "0" else "1"),  # MAC altered
        lambda value: value.replace("run=run-1", "run=run-0"),  # field changed under the MAC
        lambda value: value.replace("probe=John%20to%20Sun", "probe=John%20to%20Bob"),
    ],
)
def test_a_token_with_a_wrong_or_missing_mac_is_forged(make_probe: ProbeFactory,
                                                         mutate: Callable[[str], str]) -> None:  # fmt: skip
    probe = make_probe()
    assert probe.matcher(KEY).classify(mutate(header(probe))) is Kind.FORGED


def test_without_a_key_the_token_alone_decides(make_probe: ProbeFactory) -> None:
    probe = make_probe(key=None)
    value = header(probe)
    assert "mac=" not in value
    assert probe.matcher(None).classify(value) is Kind.PROBE
    # A keyed matcher never accepts an unkeyed token.
    assert probe.matcher(KEY).classify(value) is Kind.FORGED


def test_an_earlier_run_of_the_same_probe_is_late(make_probe: ProbeFactory) -> None:
    now = datetime.now(UTC)
    old = make_probe(run="run-0", now=now - timedelta(hours=1))
    current = make_probe(run="run-1", now=now)
    assert current.matcher(KEY).classify(header(old)) is Kind.LATE
    # The other way round it is a later run (a concurrent job): not ours, not late.
    assert old.matcher(KEY).classify(header(current)) is Kind.OTHER


def test_another_probe_or_nothing_is_other(make_probe: ProbeFactory) -> None:
    now = datetime.now(UTC)
    other = make_probe(name="Bob to John", run="run-0", now=now - timedelta(hours=1))
    current = make_probe(now=now)
    matcher = current.matcher(KEY)
    assert matcher.classify(header(other)) is Kind.OTHER
    assert matcher.classify(None) is Kind.OTHER
    # Same run and name but another nonce: a copy made by someone without our nonce, not this probe.
    twin = make_probe(now=now)
    assert matcher.classify(header(twin)) is Kind.OTHER


@pytest.mark.parametrize(
    "value",
    [
        "",
        "v=2; run=r; probe=p; sent=20260101T000000Z; nonce=" + "0" * 32,
        "v=1; run=r; run=r; probe=p; sent=20260101T000000Z; nonce=" + "0" * 32,
        "v=1; run=r/../x; probe=p; sent=20260101T000000Z; nonce=" + "0" * 32,
        "v=1; run=r; probe=p; sent=yesterday; nonce=" + "0" * 32,
        "v=1; run=r; probe=p; sent=20260101T000000Z; nonce=short",
        "v=1; run=r; probe=%ff; sent=20260101T000000Z; nonce=" + "0" * 32,
        "v=1; run=r; probe=p; sent=20260101T000000Z; nonce=" + "0" * 32 + "; extra=1",
        "x" * 5000,
    ],
)
def test_malformed_tokens_are_other_without_a_key(make_probe: ProbeFactory, value: str) -> None:
    assert make_probe(key=None).matcher(None).classify(value) is Kind.OTHER


def test_returned_headers_need_message_id_and_token(make_probe: ProbeFactory) -> None:
    probe = make_probe()
    matcher = probe.matcher(KEY)
    value = header(probe)
    assert matcher.classify_returned(value, probe.message_id) is Kind.DSN
    assert matcher.classify_returned(value, "<forged@elsewhere.example>") is Kind.OTHER
    assert matcher.classify_returned(None, probe.message_id) is Kind.OTHER


def test_token_canonical_form_is_stable() -> None:
    token = ProbeToken("run-1", "a;b c", datetime(2026, 11, 26, 20, 0, tzinfo=UTC), "0" * 32)
    assert token.canonical() == f"v=1; run=run-1; probe=a%3Bb%20c; sent=20261126T200000Z; nonce={'0' * 32}"
    assert token.header_value(None) == token.canonical()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"run": "bad run"}, "run id"),
        ({"name": ""}, "probe name"),
        ({"name": "x" * 65}, "probe name"),
        ({"sender": "no-at-sign"}, "address"),
        ({"recipient": "zoë@example.com"}, "address"),
        ({"now": datetime(2026, 1, 1)}, "timezone"),
    ],
)
def test_bad_input_is_refused_with_a_sentence(options: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"run": "r", "name": "n", "sender": "a@b.example", "recipient": "c@d.example",
                                 "key": None, "now": datetime.now(UTC)}  # fmt: skip
    values.update(options)
    with pytest.raises(ValueError, match=message):
        build_probe(**values)  # type: ignore[arg-type]


def test_run_ids_are_unique_and_valid() -> None:
    now = datetime(2026, 11, 26, 20, 0, tzinfo=UTC)
    first, second = new_run_id(now), new_run_id(now)
    assert first != second and first.startswith("20261126T200000Z-")
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", first)
