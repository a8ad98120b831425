"""Trust anchors for DNSSEC validation: a zone and its DS or DNSKEY records, and the root's as IANA publishes them.

Plain data, apart from :mod:`diag.policy.dnssec` (which validates with them), so that a run's options can carry
them without importing the validation (issue 13: start-up).
"""

from __future__ import annotations

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from diag.frozen import frozen

__all__ = ["ROOT_ANCHORS", "TrustAnchor", "parse_anchors"]


@frozen
class TrustAnchor:
    """A trust anchor: a zone and its DS or DNSKEY records (presentation format, e.g. the root's
    ``20326 8 2 e06d44b8...``). ``from_text`` accepts either kind per record."""

    zone: str
    ds: tuple[str, ...] = ()
    dnskey: tuple[str, ...] = ()

    def origin(self) -> dns.name.Name:
        return dns.name.from_text(self.zone)


ROOT_ANCHORS = (
    TrustAnchor(".", ds=(
        "20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D",  # KSK-2017
        "38696 8 2 683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16",  # KSK-2024
    )),
)  # fmt: skip
"""The root zone's trust anchors as IANA publishes them (https://data.iana.org/root-anchors/root-anchors.xml):
the default when no ``--trust-anchor`` is given."""


def parse_anchors(text: str) -> tuple[TrustAnchor, ...]:
    """Trust anchors from zone-file lines, ``<zone> [TTL] [IN] DS|DNSKEY <data>`` (as unbound's
    ``trust-anchor-file`` and IANA's root-anchors publish them); ``;`` and ``#`` start comments. Raises ValueError
    naming the line of the first one that is not a DS or DNSKEY record."""
    records: dict[str, tuple[list[str], list[str]]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(";", 1)[0].split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        kinds = [i for i, field in enumerate(fields) if field.upper() in ("DS", "DNSKEY")]
        if not kinds or kinds[0] == 0 or len(fields) <= kinds[0] + 1:
            raise ValueError(f"line {number}: expected '<zone> DS <data>' or '<zone> DNSKEY <data>'")
        index = kinds[0]
        kind, data = fields[index].upper(), " ".join(fields[index + 1 :])
        try:
            zone = dns.name.from_text(fields[0]).to_text()
            dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(kind), data)
        except (dns.exception.DNSException, ValueError) as exc:
            raise ValueError(f"line {number}: not a valid {kind} record: {exc}") from None
        ds, keys = records.setdefault(zone, ([], []))
        (ds if kind == "DS" else keys).append(data)
    if not records:
        raise ValueError("no DS or DNSKEY record in it")
    return tuple(TrustAnchor(zone, tuple(ds), tuple(keys)) for zone, (ds, keys) in records.items())
