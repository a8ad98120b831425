"""What checks show beside their findings (diag.evidence): the loose readers, the shared pieces, and the promise
every shipped check's view and measure keep: any JSON in, never an exception out."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import pytest

from checks import default_registry
from diag.codec import encode
from diag.evidence import (
    Failing,
    Measurements,
    Observed,
    Shown,
    endpoint,
    failing_by_subject,
    items,
    mapping,
    mappings,
    moment,
    number,
    outcome,
    show_time,
    text,
    tls_text,
)
from diag.model import Report

AT = datetime(2026, 11, 26, 20, 0, tzinfo=UTC)


def test_the_loose_readers_never_fail() -> None:
    assert [text(v) for v in (None, "a", True, False, 3, 1.5, ["x"], {"k": 1})] == [
        "", "a", "yes", "no", "3", "1.5", '["x"]', '{"k": 1}',
    ]  # fmt: skip
    assert items("no") == [] and items([1]) == [1]
    assert mapping([]) == {} and mappings([{"a": 1}, 2, "x"]) == [{"a": 1}]
    assert [number(v) for v in (1, 0.5, True, "1", float("nan"), float("inf"))] == [1.0, 0.5, None, None, None, None]
    assert moment("2026-11-26T21:00:00+01:00") == AT and moment("2026-11-26T20:00:00") == AT
    assert moment("soon") is None and moment(5) is None
    assert show_time(AT, "x") == "2026-11-26 20:00:00 UTC" and show_time(None, "<b>") == "<b>"


def test_a_session_is_named_and_its_end_told_in_words() -> None:
    done = {"ip": "192.0.2.1", "port": 25, "reached": "done", "tls": {"version": "TLSv1.3", "cipher": "X"}}
    assert endpoint("mx.example.com", done) == "mx.example.com [192.0.2.1]:25"
    assert endpoint("mx.example.com", {}) == "mx.example.com"
    assert outcome(done) == ("good", "completed")
    assert outcome({"error": "connect-timeout"}) == ("bad", "connect timeout")
    assert outcome({"reached": "ehlo"}) == ("unknown", "ehlo") and outcome({}) == ("unknown", "not reached")
    assert tls_text(done) == "TLSv1.3 · X"
    assert tls_text({"starttls_offered": True}) == "STARTTLS offered, no TLS session"
    assert tls_text({"reached": "done"}) == "no STARTTLS" and tls_text({}) == ""


def test_failing_findings_are_warnings_and_worse_by_subject() -> None:
    shown = [Shown("A_OK", "info", "x", "f1"), Shown("B", "warning", "x", "f2"), Shown("C", "critical", "y", "f3"),
             Shown("D", "notice", "y", "f4")]  # fmt: skip
    assert failing_by_subject(shown) == {"x": [shown[1]], "y": [shown[2]]}
    assert Failing.of(shown[1], "words") == Failing("words", "warn", "f2")
    assert Failing.of(shown[2], "words").tone == "bad"


# --- every shipped check's view and measure take any JSON ------------------------------------------------------

WRONG = (None, True, -1, 1e308, "<b>x</b>", [], {}, [1, "two", None, {"k": []}])


def spoiled(value: Any, wrong: Any) -> Any:
    """``value`` with every leaf (string, number, boolean, null) replaced by ``wrong``."""
    if isinstance(value, dict):
        return {k: spoiled(v, wrong) for k, v in value.items()}
    if isinstance(value, list):
        return [spoiled(v, wrong) for v in value]
    return wrong


@pytest.fixture(scope="module")
def lab_facts(lab_domains: Callable[..., Report]) -> dict[str, list[dict[str, Any]]]:
    """The JSON facts of every check on a few lab domains (refused, tarpit, expired certificate, routed, DANE
    mismatch, MTA-STS not covering, hostile policy records)."""
    report = lab_domains("contoso.com", "expired.example", "refused.example", "multi.example", "fabrikam.com",
                         "danebad.example", "stsnotcovering.example", "hostile.example")  # fmt: skip
    found: dict[str, list[dict[str, Any]]] = {}
    for domain in report.domains:
        for result in domain.results:
            if result.facts is not None:
                found.setdefault(result.check_id, []).append(encode(result.facts))
    return found


def test_every_view_and_measure_takes_any_json(lab_facts: dict[str, list[dict[str, Any]]]) -> None:
    """Given the facts of a lab run with every leaf replaced by a value of the wrong kind, then no check's view
    or measure raises: the HTML report renders whatever a document holds (RPT-04)."""
    registry = default_registry()
    shown = (Shown("CERT_EXPIRED", "critical", "x", "a"),)
    shown_checks = [c for c in registry if c.evidence is not None or c.measure is not None]
    assert {c.id for c in shown_checks} <= set(lab_facts)
    for check in shown_checks:
        for facts in lab_facts[check.id]:
            for candidate in (facts, {}, *(spoiled(facts, wrong) for wrong in WRONG)):
                if check.evidence is not None:
                    check.evidence.view(Observed(candidate, shown, AT))
                    check.evidence.view(Observed(candidate, (), None))
                if check.measure is not None:
                    assert isinstance(check.measure(candidate), Measurements)


def test_every_check_with_evidence_has_its_partial_and_every_partial_its_check() -> None:
    partials = {p.name for p in resources.files("report_templates").joinpath("checks").iterdir()}
    with_evidence = {f"{c.id}.html.j2" for c in default_registry() if c.evidence is not None}
    assert partials == with_evidence
