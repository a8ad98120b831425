"""The starttls check: judgement of session facts and the lab's hosts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from checks.port25 import Probed
from checks.starttls import CHECK, StarttlsFacts, assess
from diag.model import Status
from diag.net.smtp import SessionError, SessionFacts, SessionStage, TlsFacts

from .conftest import codes_of

TLS = TlsFacts("TLSv1.3", "TLS_AES_256_GCM_SHA384", "mx.example.com", (b"der",))
HEALTHY = SessionFacts(
    "192.0.2.1", 25, "mx.example.com", reached=SessionStage.DONE, greeting_code=220, ehlo_code=250,
    starttls_offered=True, starttls_code=220, tls=TLS,
)  # fmt: skip


def judge(**changes: object) -> tuple[str, str]:
    (finding,) = assess(StarttlsFacts((Probed("mx.example.com", replace(HEALTHY, **changes)),)))  # type: ignore[arg-type]
    assert finding.severity is CHECK.codes[finding.code]
    return finding.code, finding.message


def test_ok_names_version_and_cipher() -> None:
    code, message = judge()
    assert code == "STARTTLS_OK" and "TLSv1.3" in message and "TLS_AES_256_GCM_SHA384" in message


@pytest.mark.parametrize(
    ("changes", "code", "words"),
    [
        ({"starttls_offered": False, "tls": None}, "STARTTLS_NOT_OFFERED", "EHLO does not list STARTTLS"),
        ({"starttls_offered": False, "tls": None, "helo_fallback": True}, "STARTTLS_NOT_OFFERED", "only HELO"),
        ({"reached": SessionStage.EHLO, "tls": None, "error": SessionError.STARTTLS_REJECTED,
          "detail": "454 4.7.0 TLS not available"}, "STARTTLS_FAILED", "454 4.7.0 TLS not available"),
        ({"reached": SessionStage.EHLO, "tls": None, "error": SessionError.TLS_FAILED,
          "detail": "TLS handshake failed: NO_SHARED_CIPHER"}, "STARTTLS_FAILED", "NO_SHARED_CIPHER"),
        ({"reached": SessionStage.STARTTLS, "error": SessionError.DISCONNECTED, "detail": "closed"},
         "STARTTLS_FAILED", "fails at EHLO"),
        ({"tls": replace(TLS, version="TLSv1")}, "TLS_PROTOCOL_OLD", "TLSv1"),
        ({"tls": replace(TLS, version="TLSv1.1")}, "TLS_PROTOCOL_OLD", "TLSv1.1"),
    ],
)  # fmt: skip
def test_defects(changes: dict[str, object], code: str, words: str) -> None:
    found, message = judge(**changes)
    assert found == code and words in message


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("contoso.com", ["STARTTLS_OK"]),
        ("notls.example", ["STARTTLS_NOT_OFFERED"]),
        ("oldtls.example", ["TLS_PROTOCOL_OLD"]),
        ("multi.example", ["STARTTLS_OK", "STARTTLS_OK"]),
        ("heloonly.example", ["STARTTLS_NOT_OFFERED"]),
        ("badstarttls.example", ["STARTTLS_FAILED"]),
    ],
)
def test_lab(domain_report, domain: str, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert codes_of(domain_report(domain), "starttls") == expected


@pytest.mark.parametrize("domain", ["refused.example", "tarpit.example", "rejecting.example"])
def test_lab_nothing_to_judge_is_skipped_not_passed(domain_report, domain: str) -> None:  # type: ignore[no-untyped-def]
    result = domain_report(domain).result("starttls")
    assert (result.status, result.findings) == (Status.SKIPPED, ())
    assert result.reason == "no MX address answered EHLO"
