"""The lab's world: the organization of the setup guide, an Internet domain, and one broken domain per defect.

A world is data: DNS zones and records, and mail hosts with the certificate (or defect) each one serves.
:mod:`diag.lab.runner` turns it into running servers. Every defect is real on the wire; the table
:data:`PURPOSES` says what each domain demonstrates.

Addresses (all loopback; 127.0.0.0/8 needs no configuration on Linux):
    127.0.53.53     the lab's DNS server
    127.0.1.0/24    the cloud service (contoso-com.mail.protection.outlook.com)
    127.0.10.0/24   the organization's on-premises servers (mail.contoso.com, sales-mail.contoso.com, and two with a
                    broken connector to the cloud: nocert.contoso.com, badhop.contoso.com)
    127.0.20.0/24   one host per broken domain
    127.0.30.0/24   Internet mail hosts (tailspintoys.com)
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path

from diag.config import RelayConfig, RelayRole
from diag.frozen import frozen
from diag.lab.dns import Behaviour
from diag.lab.pki import CertKind
from diag.lab.policy import (
    BROKEN_DENIAL_ZONES,
    CHILD_ZONES,
    EXPIRED_ZONES,
    FORGED_ZONES,
    NSEC3_ZONES,
    OPT_OUT_ZONES,
    POLICY_HOST_ALIASES,
    POLICY_HOSTS,
    POLICY_PURPOSES,
    SERVFAIL_NAMES,
    STS_CERTS,
    STS_HOSTS,
    UNSIGNED_ZONES,
    TlsaDef,
    policy_records,
    tlsa_defs,
)
from diag.lab.smtp import HostKind

__all__ = [
    "ACCEPTED_DOMAINS",
    "BADHOP_USER",
    "BOB",
    "CLOUD_HOST",
    "DNS_IP",
    "ECHO",
    "EXAMPLE_CONFIG",
    "JOHN",
    "NOCERT_USER",
    "PURPOSES",
    "SUN",
    "HostDef",
    "Record",
    "World",
    "default_world",
]

DNS_IP = "127.0.53.53"
JOHN, BOB, SUN = "john@contoso.com", "bob@contoso.com", "sun@tailspintoys.com"
# The reflector on Sun's host (diag.relay.reflect): a probe to it comes back to its sender.
ECHO = "echo@tailspintoys.com"
# The mailboxes of the two on-premises servers whose connector to the cloud is broken (_broken_on_premises).
NOCERT_USER, BADHOP_USER = "legacy@contoso.com", "branch@contoso.com"
# The setup guide's organization with its three connectors, pointing at the lab's smart hosts.
EXAMPLE_CONFIG = Path(__file__).parent / "examples" / "contoso.toml"
CLOUD_HOST = "contoso-com.mail.protection.outlook.com"
ACCEPTED_DOMAINS = ("contoso.com", "sales.contoso.com", "fabrikam.com", "contoso.onmicrosoft.com")


@frozen
class Record:
    """One DNS record set: owner name, type and data in zone-file syntax."""

    name: str
    rdtype: str
    rdata: tuple[str, ...]


@frozen
class HostDef:
    """A mail host of the world.

    Attributes:
        name: its host name (gets an A record, unless ``address_record`` is False).
        ip: its loopback address.
        kind: what listens there; None means nothing listens (connections are refused).
        cert: the certificate it serves with STARTTLS, or None for no STARTTLS.
        cert_names: the names in its certificate; default: its host name.
        greeting: the greeting of a GREETING host.
        script: a GREETING host's answers to commands after a 220 greeting (see diag.lab.smtp.LabHost).
        foreign_ca: the certificate comes from a CA that clients do not trust.
        domains: recipient domains it accepts mail for, every address kept in its one Maildir.
        tls_versions: the TLS versions it offers (min, max); None for the defaults.
        address_record: publish ``name A ip`` (False when another record, e.g. a CNAME target, carries it).
        relay: run the whole routing relay here in this role, with these mailboxes, a queue and delivery (the
            setup guide's world: the cloud, the on-premises server, an Internet host). Without it a MAIL host
            is the relay's server alone as a plain mail host (:func:`diag.lab.smtp.mail_host_settings`).
    """

    name: str
    ip: str
    kind: HostKind | None = HostKind.MAIL
    cert: CertKind | None = CertKind.GOOD
    cert_names: tuple[str, ...] = ()
    greeting: str | None = None
    script: tuple[tuple[str, str | None], ...] = ()
    foreign_ca: bool = False
    domains: tuple[str, ...] = ()
    tls_versions: tuple[ssl.TLSVersion, ssl.TLSVersion] | None = None
    address_record: bool = True
    relay: RelayConfig | None = None

    @property
    def names_in_cert(self) -> tuple[str, ...]:
        return self.cert_names or (self.name,)

    @property
    def legacy_crypto(self) -> bool:
        return self.cert in (CertKind.WEAK_KEY, CertKind.SHA1)


@frozen
class World:
    """Zones, records, per-subtree DNS behaviours and hosts.

    DNSSEC: the zones in ``signed`` are signed (each zone's key is a trust anchor of the lab, except for a zone
    whose parent zone is signed too: that one is reached through its DS), those in ``expired`` with signatures
    that ran out, those in ``forged`` with signatures that do not verify; those in ``nsec3`` deny with NSEC3
    (``opt_out``: with opt-out; ``broken_denial``: with proofs that do not cover the name) instead of NSEC.
    ``tlsa`` lists the TLSA records made from the certificates the
    lab issues, ``sts`` the MTA-STS policy hosts (name, address, policy) served over HTTPS, ``sts_certs`` the
    kind of certificate a policy host gets when it is not a good one.
    """

    zones: tuple[str, ...]
    records: tuple[Record, ...]
    hosts: tuple[HostDef, ...]
    behaviours: tuple[tuple[str, Behaviour], ...] = ()
    signed: tuple[str, ...] = ()
    expired: tuple[str, ...] = ()
    forged: tuple[str, ...] = ()
    nsec3: tuple[str, ...] = ()
    opt_out: tuple[str, ...] = ()
    broken_denial: tuple[str, ...] = ()
    tlsa: tuple[TlsaDef, ...] = ()
    sts: tuple[tuple[str, str, str], ...] = ()
    sts_certs: Mapping[str, CertKind] = field(default_factory=dict)


# What each lab domain demonstrates, for `diag lab serve` and the README.
PURPOSES = {
    "contoso.com": "accepted domain of the organization; MX is the cloud service",
    "sales.contoso.com": "accepted domain; MX is the cloud service",
    "fabrikam.com": "accepted domain; MX is the cloud service",
    "contoso.onmicrosoft.com": "the tenant's initial domain; MX is the cloud service",
    "tailspintoys.com": f"an Internet domain with its own healthy mail host, and a reflector ({ECHO})",
    "expired.example": "certificate expired",
    "notyetvalid.example": "certificate not yet valid",
    "wrongname.example": "certificate for another name",
    "selfsigned.example": "self-signed certificate",
    "chainless.example": "leaf certificate served without its intermediate",
    "weakkey.example": "RSA-1024 key",
    "sha1.example": "certificate signed with SHA-1",
    "expiring.example": "certificate expires in 10 days",
    "malformed.example": "certificate that cannot be parsed (a non-ASCII byte in a SAN DNS name)",
    "untrusted.example": "certificate from a CA nobody trusts",
    "oldtls.example": "offers only TLS 1.0 and 1.1",
    "notls.example": "no STARTTLS",
    "refused.example": "nothing listens: connection refused",
    "tarpit.example": "accepts TCP, never greets",
    "blackhole.example": "drops connections: TCP connect times out",
    "rejecting.example": "greets with 554",
    "ratelimited.example": "greets with 421",
    "endless421.example": "greets with a multi-line 421 reply that never ends (421- lines until the client gives up)",
    "heloonly.example": "rejects EHLO, accepts only HELO (no ESMTP, no STARTTLS)",
    "ehlodrop.example": "greets, then hangs up at EHLO",
    "badstarttls.example": "offers STARTTLS, then answers it with 454",
    "nullmx.example": "null MX (RFC 7505)",
    "mixednull.example": "null MX next to a real MX",
    "nomx.example": "no MX, an A record only (implicit MX)",
    "cnamemx.example": "MX target is a CNAME",
    "dangling.example": "MX target has no address",
    "noedns.example": "its DNS does not implement EDNS (FORMERR without OPT to a query with EDNS, plain queries "
    "answered): the mail checks pass on the plain answers, which carry no DNSSEC material",
    "iplit.example": "MX target is an IP address",
    "badname.example": "MX target is not a valid host name",
    "dupmx.example": "the same MX host listed twice",
    "manymx.example": "30 MX hosts on one address: the answer is truncated over UDP (its DNS sends at most 512 "
    "octets over UDP, EDNS or not), fetched over TCP",
    "multi.example": "three MX hosts: one refused, two healthy",
    "servfail.example": "its DNS answers SERVFAIL",
    "lossy.example": "its DNS drops the first two UDP queries for each name and type (rate limiting): answered on "
    "a later try",
    "truncated.example": "its DNS answers are truncated over UDP and TCP alike (never complete)",
    "slowaaaa.example": "its MX host's AAAA answer (no IPv6) comes 0.4 s after its A answer: the SMTP session "
    "starts on the A answer",
    "notaccepted.example": "MX at the cloud host, but not an accepted domain of the organization",
    "hostile.example": "markup, template syntax, control and bidi characters in its MX name, SMTP replies, "
    "certificate names and policy records",
    **POLICY_PURPOSES,
}


def _broken(domain: str, octet: int, **host: object) -> tuple[Record, HostDef]:
    """A domain whose single MX host ``mx.<domain>`` at 127.0.20.<octet> carries one defect."""
    name = f"mx.{domain}"
    domains = (domain,) if host.get("kind", HostKind.MAIL) is HostKind.MAIL else ()
    return Record(domain, "MX", (f"10 {name}.",)), HostDef(name, f"127.0.20.{octet}", domains=domains, **host)  # type: ignore[arg-type]


# --- hostile.example: remote text that tries to become code in a report (security-cases RPT-01..RPT-04) -------
# Each payload travels as far as its channel carries it on the wire:
#   DNS: an MX target whose labels carry any byte (zone-file escapes: \( is "(", \032 a space, \226\128\174
#        the UTF-8 of U+202E, \027 ESC, \007 BEL). The mx check refuses it as a host name (DNS-12), so the domain
#        also has a normal MX, mx.hostile.example, which is reachable.
#   SMTP: the greeting and every EHLO line: markup, attribute breakers, template syntax, U+202E and U+2066 sent as
#        UTF-8, C0 controls (ESC, BEL, NUL) and bytes that are not UTF-8 (written here as the surrogates that
#        "surrogateescape" sends as those bytes); only CR and LF are left out, as they end a reply line.
#   TLS: the certificate's subject CN (a UTF8String: markup and U+202E) and its DNS names (IA5String: ASCII,
#        markup and controls, no bidi); mx.hostile.example is among them, so the chain verifies and only the
#        text is hostile.
#   Policy records (TXT, any byte): an SPF record that is valid but names hosts made of markup and template
#        syntax (the include and the a term find nothing), and DMARC, MTA-STS and TLS-RPT records with markup,
#        U+202E and C0 controls in their values.
HOSTILE_MX = (
    r"<script>alert\(1\)</script>.\"><img\032src=x\032onerror=alert\(1\)>.{{7*7}}."
    r"<svg/onload=alert`1`>.\226\128\174gnp.exe\027[2J\007.hostile.example."
)
HOSTILE_GREETING = (
    '220 mx.hostile.example ESMTP <script>alert(1)</script> "><img src=x onerror=alert(1)> {{7*7}} '
    "\u202eexe.txt \x1b[2J\x07 \udcff\udcfe"
)
HOSTILE_EHLO = "\r\n".join((
    "250-mx.hostile.example Hello <script>alert(1)</script>",
    "250-X-IMG \"><img src=x onerror=alert(1)>",
    "250-X-ATTR ' onmouseover=alert(1) x='",
    "250-X-TEMPLATE {{7*7}} ${7*7}",
    "250-X-LINK javascript:alert(1)",
    "250-X-TABLE </td></tr></table><h1>pwned</h1>",
    "250-X-BIDI \u202eexe.txt\u2066",
    "250-X-CTRL \x1b[31mred\x1b[0m\x07\x00",
    "250-X-BYTES \udcc3( \udcff",
    "250-X-PWN <svg onload=window.__pwned=1>",
    "250-PIPELINING",
    "250 STARTTLS",
))  # fmt: skip
HOSTILE_CERT_NAMES = (
    "\u202e<b>mx.hostile.example</b>",  # subject CN only (not ASCII)
    "mx.hostile.example",
    "<script>alert(1)</script>.hostile.example",
    '"><img src=x onerror=alert(1)>',
    "{{7*7}}.hostile.example",
    "ctl\x1b[2J\x07.hostile.example",
)


HOSTILE_POLICY = (
    ("hostile.example", "v=spf1 include:<script>alert(1)</script>.hostile.example a:{{7*7}}.hostile.example -all"),
    ("_dmarc.hostile.example",
     'v=DMARC1; p=reject; rua=mailto:"><svg/onload=alert(1)>@hostile.example; x-note=\u202eexe.txt\x1b[2J\x07'),
    ("_mta-sts.hostile.example", "v=STSv1; id=<b>{{7*7}}</b>\x1b[31m"),
    ("_smtp._tls.hostile.example", "v=TLSRPTv1; rua=javascript:alert(1),mailto:\u202e<i>tls</i>@hostile.example"),
)


def _hostile() -> tuple[tuple[Record, ...], HostDef]:
    """hostile.example: a real, reachable mail host whose every text is an attack on whoever displays it."""
    host = HostDef(
        "mx.hostile.example", "127.0.20.26", kind=HostKind.GREETING, cert_names=HOSTILE_CERT_NAMES,
        greeting=HOSTILE_GREETING, script=(("EHLO", HOSTILE_EHLO), ("HELO", "250 mx.hostile.example")),
    )  # fmt: skip
    records = [Record("hostile.example", "MX", ("10 mx.hostile.example.", f"20 {HOSTILE_MX}"))]
    records += [Record(name, "TXT", (text,)) for name, text in HOSTILE_POLICY]
    return tuple(records), host


def _broken_on_premises(users: tuple[str, ...]) -> tuple[HostDef, ...]:
    """Two more on-premises servers of contoso.com, each with its connector to the cloud broken, for the end-to-end
    probes of examples/broken-probes.toml (``diag probe --lab --config examples/broken-probes.toml``):

    - nocert.contoso.com sends without a certificate, from an address no inbound connector lists: the cloud
      refuses to relay its mail (550 5.7.64 TenantAttribution), and it bounces the probe to its sender;
    - badhop.contoso.com has a smart host that refuses connections (mx.refused.example): its mail stays queued.
    """
    nocert = HostDef(
        "nocert.contoso.com", "127.0.10.12", cert=None,
        relay=RelayConfig(role=RelayRole.ON_PREMISES, mailboxes=(NOCERT_USER,), smart_host=CLOUD_HOST,
                          relay_networks=users),
    )  # fmt: skip
    badhop = HostDef(
        "badhop.contoso.com", "127.0.10.13",
        relay=RelayConfig(role=RelayRole.ON_PREMISES, mailboxes=(BADHOP_USER,), smart_host="mx.refused.example",
                          relay_networks=users),
    )  # fmt: skip
    return nocert, badhop


def default_world() -> World:
    """The world of the setup guide plus the broken domains (issue #2, ARCHITECTURE §6)."""
    # The setup guide's people: Bob's mailbox is in the cloud, John's on-premises, Sun's on the Internet. Their
    # own mail programs connect from 127.0.0.1, the network the on-premises and Internet hosts relay for.
    users = ("127.0.0.1/32",)
    cloud = HostDef(
        CLOUD_HOST, "127.0.1.10",
        cert_names=("*.mail.protection.outlook.com", "mail.protection.outlook.com"),
        relay=RelayConfig(role=RelayRole.CLOUD, mailboxes=(BOB,)),
    )  # fmt: skip
    onprem = HostDef(
        "mail.contoso.com", "127.0.10.10",
        relay=RelayConfig(role=RelayRole.ON_PREMISES, mailboxes=(JOHN, "postmaster@contoso.com"),
                          smart_host=CLOUD_HOST, relay_networks=users),
    )  # fmt: skip
    sales = HostDef("sales-mail.contoso.com", "127.0.10.11", domains=("sales.contoso.com",))
    tailspin = HostDef(
        "mail.tailspintoys.com", "127.0.30.10",
        relay=RelayConfig(role=RelayRole.INTERNET, mailboxes=(SUN, "postmaster@tailspintoys.com"),
                          relay_networks=users, reflect=(ECHO,)),
    )  # fmt: skip
    records = [Record(domain, "MX", (f"10 {CLOUD_HOST}.",)) for domain in ACCEPTED_DOMAINS]
    records.append(Record("tailspintoys.com", "MX", ("10 mail.tailspintoys.com.",)))
    hosts = [cloud, onprem, sales, tailspin, *_broken_on_premises(users)]

    broken = [
        _broken("expired.example", 1, cert=CertKind.EXPIRED),
        _broken("notyetvalid.example", 2, cert=CertKind.NOT_YET_VALID),
        _broken("wrongname.example", 3, cert_names=("mail.unrelated.example",)),
        _broken("selfsigned.example", 4, cert=CertKind.SELF_SIGNED),
        _broken("chainless.example", 5, cert=CertKind.CHAINLESS),
        _broken("weakkey.example", 6, cert=CertKind.WEAK_KEY),
        _broken("sha1.example", 7, cert=CertKind.SHA1),
        _broken("expiring.example", 8, cert=CertKind.EXPIRING),
        _broken("malformed.example", 27, cert=CertKind.MALFORMED),
        _broken("oldtls.example", 9, tls_versions=(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)),
        _broken("notls.example", 10, cert=None),
        _broken("refused.example", 11, kind=None),
        _broken("tarpit.example", 12, kind=HostKind.TARPIT, cert=None),
        _broken("blackhole.example", 20, kind=HostKind.BLACKHOLE, cert=None),
        _broken("untrusted.example", 22, foreign_ca=True),
        _broken(
            "heloonly.example", 23, kind=HostKind.GREETING, cert=None, greeting="220 mx.heloonly.example SMTP",
            script=(("EHLO", "502 5.5.2 Error: command not recognized"), ("HELO", "250 mx.heloonly.example")),
        ),
        _broken(
            "ehlodrop.example", 24, kind=HostKind.GREETING, cert=None, greeting="220 mx.ehlodrop.example ESMTP",
            script=(("EHLO", None),),
        ),
        _broken(
            "badstarttls.example", 25, kind=HostKind.GREETING, cert=None,
            greeting="220 mx.badstarttls.example ESMTP",
            script=(
                ("EHLO", "250-mx.badstarttls.example\r\n250-PIPELINING\r\n250 STARTTLS"),
                ("STARTTLS", "454 4.7.0 TLS not available due to temporary reason"),
            ),
        ),
        _broken(
            "rejecting.example", 13, kind=HostKind.GREETING, cert=None,
            greeting="554 5.7.1 mx.rejecting.example No SMTP service here",
        ),
        _broken(
            "ratelimited.example", 14, kind=HostKind.GREETING, cert=None,
            greeting="421 4.7.0 mx.ratelimited.example Too many connections from your address, try again later",
        ),
        _broken("slowaaaa.example", 90),
        _broken("noedns.example", 91),
        _broken(
            "endless421.example", 28, kind=HostKind.ENDLESS, cert=None,
            greeting="421 4.7.0 mx.endless421.example Too many connections from your address, try again later",
        ),
    ]  # fmt: skip
    for record, host in broken:
        records.append(record)
        hosts.append(host)

    records.append(Record("nullmx.example", "MX", ("0 .",)))
    hosts.append(HostDef("nomx.example", "127.0.20.15", domains=("nomx.example",)))
    records.append(Record("cnamemx.example", "MX", ("10 mx.cnamemx.example.",)))
    records.append(Record("mx.cnamemx.example", "CNAME", ("host.cnamemx.example.",)))
    records.append(Record("host.cnamemx.example", "A", ("127.0.20.16",)))
    hosts.append(
        HostDef(
            "mx.cnamemx.example", "127.0.20.16", cert_names=("mx.cnamemx.example", "host.cnamemx.example"),
            domains=("cnamemx.example",), address_record=False,
        )
    )  # fmt: skip
    records.append(Record("dangling.example", "MX", ("10 mx.dangling.example.",)))
    records.append(
        Record("multi.example", "MX", ("10 mx1.multi.example.", "20 mx2.multi.example.", "30 mx3.multi.example."))
    )
    hosts.append(HostDef("mx1.multi.example", "127.0.20.17", kind=None))
    hosts.append(HostDef("mx2.multi.example", "127.0.20.18", domains=("multi.example",)))
    hosts.append(HostDef("mx3.multi.example", "127.0.20.19", domains=("multi.example",)))
    records.append(Record("servfail.example", "MX", ("10 mx.servfail.example.",)))
    records.append(Record("lossy.example", "MX", ("10 mx2.multi.example.",)))
    records.append(Record("truncated.example", "MX", ("10 mx2.multi.example.",)))
    records.append(Record("notaccepted.example", "MX", (f"10 {CLOUD_HOST}.",)))
    records.append(Record("mixednull.example", "MX", ("0 .", "10 mx2.multi.example.")))
    records.append(Record("iplit.example", "MX", ("10 127.0.20.18.",)))
    records.append(Record("badname.example", "MX", ("10 bad_name.badname.example.",)))
    records.append(Record("dupmx.example", "MX", ("10 mx2.multi.example.", "20 mx2.multi.example.")))
    # Enough records that the answer exceeds 512 bytes, which its DNS sends at most over UDP even to a client
    # offering more with EDNS (a run with DNSSEC checks asks with DO): the client then asks over TCP (DNS-08).
    many = tuple(f"{n} mx{n:02d}.manymx.example." for n in range(1, 31))
    records.append(Record("manymx.example", "MX", many))
    records.extend(Record(f"mx{n:02d}.manymx.example", "A", ("127.0.20.21",)) for n in range(1, 31))
    hosts.append(
        HostDef("mx01.manymx.example", "127.0.20.21", cert_names=("*.manymx.example",), domains=("manymx.example",),
                address_record=False)
    )  # fmt: skip

    hosts.extend(HostDef(name, ip, domains=(name.removeprefix("mx."),),
                         cert_names=(name, *POLICY_HOST_ALIASES.get(name, ()))) for name, ip in POLICY_HOSTS)
    # hostile.example publishes its own policy records (_hostile), not the healthy baseline.
    for name, rdtype, rdata in policy_records(ACCEPTED_DOMAINS, tuple(d for d in PURPOSES if d != "hostile.example")):
        records.append(Record(name, rdtype, (rdata,)))

    hostile_records, hostile_host = _hostile()
    records.extend(hostile_records)
    hosts.append(hostile_host)

    for host in hosts:
        if host.address_record:
            records.append(Record(host.name, "A", (host.ip,)))
    # Zone apexes: the organization's domains, outlook.com for the cloud host, and all of .example (so a
    # misspelt lab domain gets a real NXDOMAIN).
    top = ("contoso.com", "fabrikam.com", "contoso.onmicrosoft.com", "outlook.com", "tailspintoys.com", "example")
    # noedns.example is a zone of its own, delegated without DS: its "server" (the lab's, at or below the name)
    # does not implement EDNS, the parent's answers the DS question as usual.
    zones = (*top, *CHILD_ZONES, "noedns.example")
    return World(
        zones=zones,
        records=tuple(records),
        hosts=tuple(hosts),
        behaviours=(
            ("servfail.example", Behaviour.SERVFAIL),
            ("truncated.example", Behaviour.TRUNCATE),
            ("lossy.example", Behaviour.LOSE_UDP),
            ("slowaaaa.example", Behaviour.SLOW_AAAA),
            ("manymx.example", Behaviour.SMALL_UDP),
            *((name, Behaviour.SERVFAIL) for name in SERVFAIL_NAMES),
            ("noedns.example", Behaviour.NO_EDNS),
        ),
        signed=tuple(z for z in zones if z not in (*UNSIGNED_ZONES, "noedns.example")),
        expired=EXPIRED_ZONES,
        forged=FORGED_ZONES,
        nsec3=NSEC3_ZONES,
        opt_out=OPT_OUT_ZONES,
        broken_denial=BROKEN_DENIAL_ZONES,
        tlsa=tlsa_defs(CLOUD_HOST),
        sts=STS_HOSTS,
        sts_certs=STS_CERTS,
    )
