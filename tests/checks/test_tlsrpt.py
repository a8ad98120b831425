"""The tlsrpt check: judgement of the record lookup, and the lab's domains."""

from __future__ import annotations

import pytest

from checks.tlsrpt import CHECK, assess
from diag.policy.tlsrpt import RptStatus, TlsRptFacts, parse_record

from .conftest import codes_of


def judge(facts: TlsRptFacts) -> list[tuple[str, str]]:
    findings = assess(facts)
    assert all(f.severity is CHECK.codes[f.code] and f.subject == facts.domain for f in findings)
    return [(f.code, f.message) for f in findings]


def record(text: str) -> TlsRptFacts:
    return TlsRptFacts("contoso.com", RptStatus.FOUND, parse_record(text), (text,))


@pytest.mark.parametrize(
    ("facts", "codes", "words"),
    [
        (record("v=TLSRPTv1; rua=mailto:tls@contoso.com,https://r.example/tls"), ["TLSRPT_OK"],
         "mailto:tls@contoso.com, https://r.example/tls"),
        (record("v=TLSRPTv1; rua=ftp://r.example/"), ["TLSRPT_BAD_URI", "TLSRPT_BAD_URI"], "no usable rua"),
        (record("v=TLSRPTv1; rua=mailto:tls@contoso.com; x"), ["TLSRPT_SYNTAX"], "_smtp._tls.contoso.com"),
        (TlsRptFacts("contoso.com", RptStatus.NONE), ["TLSRPT_MISSING"], "no TLS-RPT record"),
        (TlsRptFacts("contoso.com", RptStatus.MULTIPLE, texts=("a", "b")), ["TLSRPT_MULTIPLE"], "2 TLS-RPT records"),
        (TlsRptFacts("contoso.com", RptStatus.DNS_ERROR, detail="SERVFAIL"), ["TLSRPT_DNS_ERROR"], "SERVFAIL"),
    ],
)  # fmt: skip
def test_judgement(facts: TlsRptFacts, codes: list[str], words: str) -> None:
    found = judge(facts)
    assert [code for code, _ in found] == codes and words in found[-1][1]


@pytest.mark.parametrize(
    ("domain", "expected"),
    [("contoso.com", ["TLSRPT_OK"]), ("tlsrptbad.example", ["TLSRPT_BAD_URI", "TLSRPT_BAD_URI"]),
     ("expired.example", ["TLSRPT_MISSING"])],
)  # fmt: skip
def test_lab_domains(domain_report, domain: str, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert codes_of(domain_report(domain), "tlsrpt") == expected
