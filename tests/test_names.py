"""Domain names from the command line: IDNA conversion and clear refusals."""

from __future__ import annotations

import ipaddress

import pytest

from diag.errors import InvalidDomainError
from diag.names import display_domain, mail_domain, port_number


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("contoso.com", "contoso.com"),
        ("Contoso.COM.", "contoso.com"),
        ("  contoso.com ", "contoso.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),  # UTS #46 maps case before conversion
        ("faß.de", "xn--fa-hia.de"),  # IDNA 2008, not the transitional ss mapping of IDNA 2003
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("münchen.de", "xn--mnchen-3ya.de"),
    ],
)
def test_accepted(given: str, expected: str) -> None:
    assert mail_domain(given) == expected


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("", "empty"),
        ("john@contoso.com", "mail address"),
        ("https://contoso.com/", "URL"),
        ("192.0.2.1", "IP address"),
        ("[2001:db8::1]", "IP address"),
        ("localhost", "no dot"),
        ("-bad.example", "label '-bad'"),
        ("a..example", "label ''"),
        ("under_score.example", "label 'under_score'"),
        ("x" * 64 + ".example", "1-63"),
        (("a" * 60 + ".") * 5 + "com", "253"),
        ("contoso.123", "numeric"),
        ("evil\x1b[2J.example", "label"),
        ("☃\u200d.example", "internationalized"),
    ],
)
def test_refused_with_a_reason(given: str, why: str) -> None:
    with pytest.raises(InvalidDomainError, match=None) as caught:
        mail_domain(given)
    message = str(caught.value)
    assert why in message
    assert "\n" not in message and "\x1b" not in message


@pytest.mark.parametrize(
    "text",
    ["192.0.2.1", "[192.0.2.1]", "2001:db8::1", "[::1]", "::ffff:192.0.2.1", "fe80::1%eth0", "1.2.3", "01.2.3.4",
     "192.0.2.256", "\u0661\u0669\u0662.0.2.1", "1:2", "mail.contoso.com", "²3.example"],
)  # fmt: skip
def test_an_ip_address_is_refused_exactly_when_ipaddress_reads_one(text: str) -> None:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        address = False
    else:
        address = True
    try:
        mail_domain(text)
    except InvalidDomainError as exc:
        refused_as_address = "IP address" in str(exc)
    else:
        refused_as_address = False
    assert refused_as_address == address


@pytest.mark.parametrize("text", ["1", "25", "65535"])
def test_port_number_accepts_ascii_digits_in_range(text: str) -> None:
    assert port_number(text) == int(text)


@pytest.mark.parametrize("text", ["", "0", "65536", "-1", "+25", " 25", "2 5", "²", "٣", "25a", "0x19", "9" * 5000])
def test_port_number_refuses_everything_else(text: str) -> None:
    with pytest.raises(ValueError, match="is not a number from 1 to 65535"):
        port_number(text)


@pytest.mark.parametrize(
    ("a_label", "shown"),
    [
        ("xn--mnchen-3ya.example", "münchen.example (xn--mnchen-3ya.example)"),
        ("mail.xn--bcher-kva.example", "mail.bücher.example (mail.xn--bcher-kva.example)"),
        ("xn--80ak6aa92e.com", "аррӏе.com (xn--80ak6aa92e.com)"),  # noqa: RUF001 - a look-alike keeps its A-label
        ("contoso.com", "contoso.com"),
        ("xn--zz.example", "xn--zz.example"),  # not valid Punycode: shown as it is
        ("xn--ls8h.la", "xn--ls8h.la"),  # decodes to an emoji, which IDNA 2008 does not allow: shown as it is
    ],
)
def test_a_domain_is_displayed_as_u_label_with_its_a_label(a_label: str, shown: str) -> None:
    assert display_domain(a_label) == shown


def test_display_and_conversion_are_inverse() -> None:
    for typed in ("münchen.example", "bücher.example", "faß.de"):
        a_label = mail_domain(typed)
        assert display_domain(a_label) == f"{typed} ({a_label})"
