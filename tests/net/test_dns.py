"""Reading nameservers given as text (``--resolver``, ``[Relay] Resolver``)."""

from __future__ import annotations

import pytest

from diag.net.dns import Nameserver, parse_nameserver


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.53", Nameserver("192.0.2.53")),
        ("192.0.2.53:5353", Nameserver("192.0.2.53", 5353)),
        ("2001:db8::53", Nameserver("2001:db8::53")),
        ("[2001:db8::53]:5353", Nameserver("2001:db8::53", 5353)),
    ],
)
def test_a_nameserver_is_an_ip_address_and_an_optional_port(text: str, expected: Nameserver) -> None:
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize("port", ["²", "٣", "0", "65536", "x"])
def test_a_port_other_than_ascii_digits_from_1_to_65535_is_refused(port: str) -> None:
    with pytest.raises(ValueError, match=rf"^port '{port}' is not a number from 1 to 65535$"):
        parse_nameserver(f"192.0.2.53:{port}")
