"""The lab's mail authentication and transport policy records: the seed organization's, all correct, and one
domain per policy defect.

Data only, like :mod:`diag.lab.world` (which adds these to the default world). What needs the running lab (a
TLSA record is the digest of a certificate the lab's PKI issues at start) is described by :class:`TlsaDef` and
made by :mod:`diag.lab.runner`. DNSSEC: every top zone of the lab is signed, and the lab's trust anchors are
their keys; ``unsigned.example`` is delegated without DS (insecure) and ``badsig.example`` is a signed zone
whose signatures expired (bogus). ``nsec3.example``, ``nsec3bad.example`` and ``optout.example`` deny with NSEC3
(RFC 5155) instead of NSEC: the second with proofs that do not cover the name (bogus), the third with opt-out,
which leaves its unsigned child ``insecure.optout.example`` out of the chain (insecure).
"""

from __future__ import annotations

from diag.frozen import frozen
from diag.lab.pki import CertKind

__all__ = [
    "BROKEN_DENIAL_ZONES",
    "CHILD_ZONES",
    "EXPIRED_ZONES",
    "FORGED_ZONES",
    "NSEC3_ZONES",
    "ONPREM_IPS",
    "OPT_OUT_ZONES",
    "POLICY_HOSTS",
    "POLICY_HOST_ALIASES",
    "POLICY_PURPOSES",
    "SERVFAIL_NAMES",
    "STS_CERTS",
    "STS_DEAD_ADDRESSES",
    "STS_HOSTS",
    "UNSIGNED_ZONES",
    "TlsaDef",
    "policy_records",
    "tlsa_defs",
]

ONPREM_IPS = ("127.0.10.10", "127.0.10.11")  # the on-premises servers' egress addresses (world.py)
CLOUD_SPF = "spf.protection.outlook.com"
CLOUD_EGRESS = "127.0.1.0/24"  # the cloud service's addresses in the lab (world.py)
REPORTS_DOMAIN = "contoso.com"  # where the organization's DMARC and TLS reports go
# RSA public keys (SubjectPublicKeyInfo, base64) for the DKIM records: the lab signs nothing, so only the keys
# are published. 2048 bits is what Microsoft 365 uses; 1024 is the weak one.
DKIM_KEY_2048 = (
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA7UYDt342W3htu4rAcESAUdNyOhuo0B8F39BXAWQ2EnFeUJIVVt+E2dgc"
    "GHgNvfFMBjddM3IPesF/e03wD0ztk3/Fl92xo5ZqZBa6eXY/1PHwRPoDiI1bAW62c9VXtCj0/xvRXjrMqktVG3dqPxx7212LcP/u"
    "jhdmnEhNzlohU0cUY2V26LkEmgzICoFWxfjcGrWV3sEJrrenPTN9xmgKcoOkxYlDZqMChFnRcK+u40P5gXPO7/v5phxuM0c5CUgg"
    "Wu9cmI09of3RPpTI+AanSfdH3INUiLHYzNvTI7xv3ghB8QualoMZopdNYQs7WMi8Tkjk5nFXvr91t/nVuGU6QwIDAQAB"
)
DKIM_KEY_1024 = (
    "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCY0hSWMMUyfg8mUSZ29mEfgTBh3Nvkv+Q28z5RW9HcjEF++306SvuArb9t0ljU"
    "kJXOyVOMmSmzbYu1Myv06nZ/Sc6+JnqekeWBJJ7/zZoX+Pup2Fu/ACmN9eiHCyLdkYwIZ8yZ0PjsTycsctmY7QISuXX2SIi6PF9a"
    "3QYb5u0k7wIDAQAB"
)

# Zones the policy domains need besides world.py's: unsigned delegations, one with expired signatures, one with
# signatures that do not verify, and the NSEC3-signed ones (SHA-1, no iterations, no salt: RFC 9276 §3.1).
CHILD_ZONES = ("unsigned.example", "badsig.example", "forgedsig.example", "nsec3.example", "nsec3bad.example",
               "optout.example", "insecure.optout.example")  # fmt: skip
UNSIGNED_ZONES = ("unsigned.example", "insecure.optout.example")
EXPIRED_ZONES = ("badsig.example",)
FORGED_ZONES = ("forgedsig.example",)
NSEC3_ZONES = ("nsec3.example", "nsec3bad.example", "optout.example")
OPT_OUT_ZONES = ("optout.example",)
BROKEN_DENIAL_ZONES = ("nsec3bad.example",)

# Mail hosts of the DANE domains: (name, address).
POLICY_HOSTS = (("mx.dane.example", "127.0.20.30"), ("mx.danebad.example", "127.0.20.31"),
                ("mx.unsigned.example", "127.0.20.32"), ("mx.nsec3.example", "127.0.20.34"),
                ("mx.tlsabad.nsec3.example", "127.0.20.35"), ("mx.nsec3bad.example", "127.0.20.36"),
                ("mx.tlsafail.example", "127.0.20.37"))  # fmt: skip
# Other names in a policy host's certificate: a CNAME to it.
POLICY_HOST_ALIASES = {"mx.nsec3.example": ("mx.cnamesigned.example",),
                       "mx.unsigned.example": ("mx.cnameunsigned.example",)}  # fmt: skip
# Names whose DNS answers SERVFAIL (world.py makes them a Behaviour): tlsafail.example's TLSA lookup fails on the
# walk down to it (the DS question at _tcp), while the host's own name and addresses validate.
SERVFAIL_NAMES = ("_tcp.mx.tlsafail.example",)

# MTA-STS policy hosts (RFC 8461 §3.3): name, address, policy body. The lab serves them over HTTPS (diag.lab.web).
STS_HOSTS = (
    ("mta-sts.contoso.com", "127.0.10.30",
     "version: STSv1\nmode: enforce\nmx: *.mail.protection.outlook.com\nmax_age: 604800\n"),
    ("mta-sts.stsnotcovering.example", "127.0.20.33",
     "version: STSv1\nmode: enforce\nmx: mx.elsewhere.example\nmax_age: 604800\n"),
    # Two addresses, two policies: which one a sender applies depends on the address it reaches.
    ("mta-sts.stsdiffer.example", "127.0.20.39",
     "version: STSv1\nmode: enforce\nmx: mx2.multi.example\nmax_age: 604800\n"),
    ("mta-sts.stsdiffer.example", "127.0.20.40",
     "version: STSv1\nmode: none\nmx: mx2.multi.example\nmax_age: 86400\n"),
    ("mta-sts.stsbadcert.example", "127.0.20.38",
     "version: STSv1\nmode: enforce\nmx: mx2.multi.example\nmax_age: 604800\n"),
    ("mta-sts.stsfailover.example", "127.0.20.35",
     "version: STSv1\nmode: enforce\nmx: mx2.multi.example\nmax_age: 604800\n"),
)  # fmt: skip
# Policy hosts whose certificate is not a good one (diag.lab.pki.CertKind).
STS_CERTS = {"mta-sts.stsbadcert.example": CertKind.EXPIRED}
# More addresses of MTA-STS policy hosts, where nothing listens (connections are refused); each is published
# before the host's own address, so a sender tries it first.
STS_DEAD_ADDRESSES = (("mta-sts.stsfailover.example", "127.0.20.34"),)

POLICY_PURPOSES = {
    "spflookups.example": "SPF policy needing 11 DNS lookups through its includes (permerror)",
    "spfonprem.example": "SPF without the on-premises servers' addresses (accepted with --sender-ip 127.0.10.10)",
    "spfplusall.example": "SPF record ending in +all",
    "nopolicy.example": "no SPF and no DMARC record",
    "dkimweak.example": "DKIM key of 1024 bits at selector s1024 (as an accepted domain with DkimSelectors s1024)",
    "dmarcrua.example": "DMARC aggregate reports to another domain that has not authorized them (RFC 7489 §7.1)",
    "dmarcnone.example": "DMARC policy p=none (monitoring only)",
    "tlsrptbad.example": "TLS-RPT record with a report URI that is neither mailto: nor https:",
    "stsnotcovering.example": "MTA-STS policy whose mx: patterns do not cover its MX host",
    "stsfailover.example": "MTA-STS policy host with two addresses: the first refuses connections, the second "
    "serves the policy",
    "dane.example": "DNSSEC-signed TLSA record (3 1 1) matching the MX host's key",
    "danebad.example": "TLSA record that matches no certificate the MX host presents",
    "unsigned.example": "zone delegated without DS (not DNSSEC-signed); its MX host's TLSA is therefore unusable",
    "badsig.example": "DNSSEC signatures expired: validating resolvers answer SERVFAIL (bogus)",
    "forgedsig.example": "DNSSEC signatures that do not verify (the data changed after signing): bogus",
    "stsbadcert.example": "MTA-STS policy host whose certificate has expired: senders cannot fetch the policy",
    "stsdiffer.example": "MTA-STS policy host with two addresses serving different policies (enforce and none)",
    "nsec3.example": "NSEC3-signed zone (RFC 5155) with a TLSA record (3 1 1) matching the MX host's key",
    "tlsabad.nsec3.example": "TLSA record in the NSEC3-signed zone that matches no certificate the MX host presents",
    "mail.wild.nsec3.example": "MX and SPF answers synthesised from a wildcard in the NSEC3-signed zone",
    "cnamesigned.example": "MX host name is a CNAME into another signed zone (nsec3.example): its TLSA records are "
    "those of the CNAME-expanded name (RFC 7672 §2.2.2)",
    "cnameunsigned.example": "MX host name is a CNAME into an unsigned zone (unsigned.example): only the TLSA record "
    "at the host name counts (3 1 1, matching), not the one at the expanded name (RFC 7672 §2.2.2)",
    "tlsafail.example": "its MX host's TLSA lookup fails (SERVFAIL on the way) in a signed zone: DANE senders defer",
    "nsec3bad.example": "NSEC3 denials that do not cover the name: its MX host's missing TLSA is bogus",
    "insecure.optout.example": "zone delegated without DS inside an NSEC3 opt-out span of its parent (insecure)",
}


@frozen
class TlsaDef:
    """A TLSA record for a lab host's port 25, computed from the certificate the lab issues it.

    Attributes:
        host: the mail host (its _25._tcp name holds the record).
        parameters: usage, selector and matching type ("3 1 1").
        of_host: whose certificate the data is taken from; another host's gives a record that does not match.
    """

    host: str
    parameters: str
    of_host: str


def tlsa_defs(cloud_host: str) -> tuple[TlsaDef, ...]:
    return (
        TlsaDef(cloud_host, "3 1 1", cloud_host),  # the seed: DANE for the cloud's MX host
        TlsaDef("mx.dane.example", "3 1 1", "mx.dane.example"),
        TlsaDef("mx.dane.example", "2 0 1", "intermediate"),  # DANE-TA: the lab's intermediate CA
        TlsaDef("mx.danebad.example", "3 1 1", "mx.dane.example"),  # another host's key: no match
        TlsaDef("mx.unsigned.example", "3 1 1", "mx.unsigned.example"),  # matches, but without DNSSEC
        TlsaDef("mx.nsec3.example", "3 1 1", "mx.nsec3.example"),
        TlsaDef("mx.tlsabad.nsec3.example", "3 1 1", "mx.nsec3.example"),  # another host's key: no match
        # at the alias's own name, in the signed example zone: the one that counts, as the chain is not secure
        TlsaDef("mx.cnameunsigned.example", "3 1 1", "mx.unsigned.example"),
        # The record exists (so no validator proves it away from a cached NSEC, RFC 8198), but its lookup fails.
        TlsaDef("mx.tlsafail.example", "3 1 1", "mx.tlsafail.example"),
    )


def _healthy(domain: str, *, spf: str = "v=spf1 -all") -> list[tuple[str, str, str]]:
    # RFC 7505 §4: a domain that sends no mail says so with "v=spf1 -all".
    return [(domain, "TXT", spf), (f"_dmarc.{domain}", "TXT", "v=DMARC1; p=reject")]


def policy_records(accepted: tuple[str, ...], lab_domains: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(name, type, data) of every policy record: the seed's, a healthy baseline for the other lab domains (so
    that each shows only its own defect), and the defect domains'."""
    records: list[tuple[str, str, str]] = [(CLOUD_SPF, "TXT", f"v=spf1 ip4:{CLOUD_EGRESS} -all")]
    onprem = " ".join(f"ip4:{ip}" for ip in ONPREM_IPS)
    for domain in accepted:
        records.append((domain, "TXT", f"v=spf1 {onprem} include:{CLOUD_SPF} -all"))
        records.append((f"_dmarc.{domain}", "TXT", f"v=DMARC1; p=reject; rua=mailto:dmarc-reports@{REPORTS_DOMAIN}"))
        records.append((f"_smtp._tls.{domain}", "TXT", "v=TLSRPTv1; rua=mailto:tls-reports@contoso.com"))
        if domain != REPORTS_DOMAIN and not domain.endswith(f".{REPORTS_DOMAIN}"):
            # RFC 7489 §7.1: contoso.com accepts the DMARC reports of the organization's other domains.
            records.append((f"{domain}._report._dmarc.{REPORTS_DOMAIN}", "TXT", "v=DMARC1"))
        dashed = domain.replace(".", "-")
        for selector in ("selector1", "selector2"):
            target = f"{selector}-{dashed}._domainkey.contoso.onmicrosoft.com"
            records.append((f"{selector}._domainkey.{domain}", "CNAME", f"{target}."))
            records.append((target, "TXT", f"v=DKIM1; k=rsa; p={DKIM_KEY_2048}"))
    records.append(("_mta-sts.contoso.com", "TXT", "v=STSv1; id=2026010101"))
    records.extend((name, "A", ip) for name, ip in STS_DEAD_ADDRESSES)
    records.extend((name, "A", ip) for name, ip, _policy in STS_HOSTS)
    for domain in lab_domains:
        if domain not in accepted and domain not in POLICY_PURPOSES:
            records.extend(_healthy(domain))
    includes = [f"i{n}.spflookups.example" for n in range(1, 12)]
    records.append(("spflookups.example", "TXT", "v=spf1 " + " ".join(f"include:{i}" for i in includes) + " -all"))
    records.extend((name, "TXT", "v=spf1 -all") for name in includes)
    records.append(("_dmarc.spflookups.example", "TXT", "v=DMARC1; p=reject"))
    records.extend(_healthy("spfonprem.example", spf=f"v=spf1 include:{CLOUD_SPF} -all"))
    records.extend(_healthy("spfplusall.example", spf="v=spf1 mx +all"))
    records.append(("spfonprem.example", "MX", "10 mx2.multi.example."))
    records.append(("spfplusall.example", "MX", "10 mx2.multi.example."))
    records.append(("spflookups.example", "MX", "10 mx2.multi.example."))
    records.append(("nopolicy.example", "MX", "10 mx2.multi.example."))
    records.append(("dmarcrua.example", "MX", "10 mx2.multi.example."))
    records.append(("dmarcrua.example", "TXT", "v=spf1 mx -all"))
    records.append(("_dmarc.dmarcrua.example", "TXT", "v=DMARC1; p=reject; rua=mailto:reports@tailspintoys.com"))
    records.append(("dmarcnone.example", "MX", "10 mx2.multi.example."))
    records.append(("dmarcnone.example", "TXT", "v=spf1 mx -all"))
    records.append(("_dmarc.dmarcnone.example", "TXT", "v=DMARC1; p=none"))
    records.append(("tlsrptbad.example", "MX", "10 mx2.multi.example."))
    records.extend(_healthy("tlsrptbad.example"))
    records.append(("_smtp._tls.tlsrptbad.example", "TXT", "v=TLSRPTv1; rua=ftp://reports.tlsrptbad.example/"))
    for domain in ("stsnotcovering.example", "stsfailover.example", "stsbadcert.example", "stsdiffer.example"):
        records.append((domain, "MX", "10 mx2.multi.example."))
        records.extend(_healthy(domain))
        records.append((f"_mta-sts.{domain}", "TXT", "v=STSv1; id=2026010101"))
    for domain in ("dane.example", "danebad.example", "unsigned.example"):
        records.append((domain, "MX", f"10 mx.{domain}."))
        records.extend(_healthy(domain))
    records.append(("dkimweak.example", "MX", "10 mx2.multi.example."))
    records.extend(_healthy("dkimweak.example"))
    records.append(("s1024._domainkey.dkimweak.example", "TXT", f"v=DKIM1; k=rsa; p={DKIM_KEY_1024}"))
    for domain in ("badsig.example", "forgedsig.example"):
        records.append((domain, "MX", "10 mx2.multi.example."))
        records.extend(_healthy(domain))
    for domain in ("nsec3.example", "tlsabad.nsec3.example", "nsec3bad.example"):
        records.append((domain, "MX", f"10 mx.{domain}."))
        records.extend(_healthy(domain))
    # RFC 4592: every name below wild.nsec3.example that does not exist gets the wildcard's records (no _dmarc
    # record at the lab domain: it would make the name exist, and the wildcard would no longer apply to it).
    records.append(("*.wild.nsec3.example", "MX", "10 mx2.multi.example."))
    records.append(("*.wild.nsec3.example", "TXT", "v=spf1 -all"))
    records.append(("cnamesigned.example", "MX", "10 mx.cnamesigned.example."))
    records.append(("mx.cnamesigned.example", "CNAME", "mx.nsec3.example."))
    records.extend(_healthy("cnamesigned.example"))
    records.append(("cnameunsigned.example", "MX", "10 mx.cnameunsigned.example."))
    records.append(("mx.cnameunsigned.example", "CNAME", "mx.unsigned.example."))
    records.extend(_healthy("cnameunsigned.example"))
    records.append(("tlsafail.example", "MX", "10 mx.tlsafail.example."))
    records.extend(_healthy("tlsafail.example"))
    records.append(("insecure.optout.example", "MX", "10 mx2.multi.example."))
    records.extend(_healthy("insecure.optout.example"))
    return records
