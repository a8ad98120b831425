"""The certificate each MX address presents over STARTTLS: trusted chain, validity, name, key and signature.

The chain is verified with cryptography's X.509 verifier against the system store or ``--ca-file``, as sent,
without fetching missing intermediates. The name is matched against the MX host name per RFC 6125.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from checks.port25 import Port25Facts
from diag import evidence as ev
from diag.context import CheckContext
from diag.evidence import CertificateExpiry, Evidence, Failing, Measurements, Observed, Shown
from diag.frozen import frozen
from diag.model import Finding, Severity
from diag.net.tls_facts import CertInfo, Trust, name_matches
from diag.registry import Check, Outcome

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "CHECK",
    "CertView",
    "CertificateFacts",
    "CertificateView",
    "PresentedCert",
    "PresentedView",
    "assess",
    "examine",
    "measure",
    "probe",
    "view",
]

_UNTRUSTED = "450 4.4.317 Cannot connect to remote server [Message=UntrustedRoot]"
_INVALID = "450 4.7.320 Certificate validation failed"
_MIN_KEY_BITS = {"RSA": 2048, "DSA": 2048, "EC": 256}


@frozen
class PresentedCert:
    """What one address presented, and what verification said.

    Attributes:
        endpoint: ``host [ip]:port``.
        host: the MX host name the certificate must carry.
        chain: the certificates as sent, leaf first; it ends before the first one that cannot be parsed
            (``trust`` is then MALFORMED), so it may be empty.
        trust: the chain verification's conclusion, judged apart from names and dates.
        trust_detail: the verifier's words when it did not trust the chain.
    """

    endpoint: str
    host: str
    chain: tuple[CertInfo, ...]
    trust: Trust
    trust_detail: str = ""

    @property
    def leaf(self) -> CertInfo:
        return self.chain[0]


@frozen
class CertificateFacts:
    """The certificates presented at every address that completed a TLS handshake.

    Attributes:
        certificates: one per address.
        checked_at: the moment validity was judged against.
        warn_days, crit_days: the expiry thresholds in force.
    """

    certificates: tuple[PresentedCert, ...]
    checked_at: datetime
    warn_days: int
    crit_days: int


def assess(facts: CertificateFacts) -> tuple[Finding, ...]:
    """Judge each presented certificate; pure."""
    found: list[Finding] = []
    for presented in facts.certificates:
        found.extend(_assess_one(presented, facts))
    return tuple(found)


def _assess_one(p: PresentedCert, facts: CertificateFacts) -> list[Finding]:
    if not p.chain:  # not even the server's own certificate could be parsed: nothing else can be judged
        return _trust_findings(p)
    subject, leaf = p.endpoint, p.leaf
    found: list[Finding] = []
    days_left = (leaf.not_after - facts.checked_at).total_seconds() / 86400
    if leaf.not_after < facts.checked_at:
        found.append(CHECK.finding(
            "CERT_EXPIRED", subject,
            f"The certificate of {subject} expired on {leaf.not_after:%Y-%m-%d} ({_days(-days_left)} ago).",
            "Renew the certificate and bind the new one to the receive connector.",
            cloud_error=f"{_INVALID} (certificate expired)",
        ))  # fmt: skip
    elif leaf.not_before > facts.checked_at:
        found.append(CHECK.finding(
            "CERT_NOT_YET_VALID", subject,
            f"The certificate of {subject} is not valid before {leaf.not_before:%Y-%m-%d %H:%M} UTC.",
            "Check the server's clock and the certificate's dates; serve a certificate that is valid now.",
            cloud_error=f"{_INVALID} (certificate not yet valid)",
        ))  # fmt: skip
    elif days_left <= facts.crit_days:
        found.append(CHECK.finding(
            "CERT_EXPIRING_SOON", subject,
            f"The certificate of {subject} expires on {leaf.not_after:%Y-%m-%d}, in {_days(days_left)}.",
            "Renew the certificate now; the cloud service rejects it the moment it expires.",
        ))  # fmt: skip
    elif days_left <= facts.warn_days:
        found.append(CHECK.finding(
            "CERT_EXPIRING", subject,
            f"The certificate of {subject} expires on {leaf.not_after:%Y-%m-%d}, in {_days(days_left)}.",
            "Renew the certificate before it expires and bind the new one to the receive connector.",
        ))  # fmt: skip
    found.extend(_trust_findings(p))
    if not name_matches(p.host, leaf):
        names = ", ".join(leaf.dns_names or leaf.common_names) or "no names"
        found.append(CHECK.finding(
            "CERT_NAME_MISMATCH", subject,
            f"The certificate of {subject} is for {names}, not for {p.host}.",
            f"Serve a certificate whose subject alternative names include {p.host}.",
            cloud_error=f"450 4.4.317 Cannot connect to remote server [Message=SubjectMismatch Expected Subject: "
            f"{p.host}. Presented Subject: {leaf.subject}]",
        ))  # fmt: skip
    minimum = _MIN_KEY_BITS.get(leaf.key_type)
    if minimum is not None and leaf.key_bits < minimum:
        found.append(CHECK.finding(
            "CERT_WEAK_KEY", subject,
            f"The certificate of {subject} has a {leaf.key_bits}-bit {leaf.key_type} key; at least {minimum} "
            "bits are required.",
            f"Issue a new certificate with an RSA key of 2048 bits or more, or an EC key of {_MIN_KEY_BITS['EC']} "
            "bits.",
        ))  # fmt: skip
    weak = [c for c in p.chain if c.weak_signature and not (c.self_issued and c is not leaf)]
    if weak:
        found.append(CHECK.finding(
            "CERT_WEAK_SIGNATURE", subject,
            f"The certificate chain of {subject} is signed with {weak[0].signature_hash.upper()}, which is broken "  # type: ignore[union-attr]
            "and no longer accepted.",
            "Reissue the certificate (and any intermediate) with a SHA-256 signature.",
            cloud_error=_UNTRUSTED,
        ))  # fmt: skip
    if not found:
        found.append(CHECK.finding(
            "CERT_OK", subject,
            f"The certificate of {subject} is trusted, valid until {leaf.not_after:%Y-%m-%d} and names {p.host}.",
        ))  # fmt: skip
    return found


def _days(days: float) -> str:
    whole = max(0, round(days))
    return "1 day" if whole == 1 else f"{whole} days"


def _trust_findings(p: PresentedCert) -> list[Finding]:
    subject = p.endpoint
    match p.trust:
        case Trust.SELF_SIGNED:
            return [CHECK.finding(
                "CERT_SELF_SIGNED", subject,
                f"The certificate of {subject} is self-signed: no certificate authority vouches for it.",
                "Install a certificate issued by a public certificate authority, with its intermediate chain.",
                cloud_error=_UNTRUSTED,
            )]  # fmt: skip
        case Trust.INCOMPLETE:
            return [CHECK.finding(
                "CERT_CHAIN_INCOMPLETE", subject,
                f"{subject} sends its certificate without the intermediate CA certificate ({p.trust_detail}). "
                "The cloud service does not fetch missing intermediates, so it rejects the connection.",
                "Install the full chain (leaf and intermediates) on the receive connector's certificate.",
                cloud_error=_UNTRUSTED,
            )]  # fmt: skip
        case Trust.MALFORMED:
            return [CHECK.finding(
                "CERT_MALFORMED", subject,
                f"{subject} presents a certificate that cannot be parsed ({p.trust_detail}).",
                "Reissue or re-export the certificate and its chain with standard tools; a certificate that does "
                "not parse is rejected by every client.",
                cloud_error=_INVALID,
            )]  # fmt: skip
        case Trust.UNTRUSTED:
            return [CHECK.finding(
                "CERT_UNTRUSTED", subject,
                f"The certificate chain of {subject} does not lead to a trusted certificate authority "
                f"({p.trust_detail}).",
                "Use a certificate from a public certificate authority and send its full chain.",
                cloud_error=_UNTRUSTED,
            )]  # fmt: skip
    return []


def examine(host: str, endpoint: str, chain_der: tuple[bytes, ...], store: tuple[x509.Certificate, ...],
            now: datetime) -> PresentedCert:  # fmt: skip
    """Parse and verify one presented chain (computation only, no I/O)."""
    from diag.net.tls import examine_chain  # cryptography: see probe

    chain, verdict = examine_chain(chain_der, store, at=now)
    return PresentedCert(endpoint, host, chain, verdict.trust, verdict.detail)


# The report's evidence (report_templates/checks/certificate.html.j2) and the expiry dates monitoring exports,
# from the facts as a report holds them.

# Findings the chain's verdict states already ("chain untrusted", "chain self-signed", ...).
_TRUST_CODES = ("CERT_UNTRUSTED", "CERT_SELF_SIGNED", "CERT_CHAIN_INCOMPLETE", "CERT_MALFORMED")


@frozen
class CertView:
    """One certificate of a chain, as a person reads it; ``validity_class`` is a CSS token (good, warn, bad,
    unknown)."""

    role: str
    subject: str
    issuer: str
    names: tuple[str, ...]
    not_before: str
    not_after: str
    validity: str
    validity_class: str
    key: str
    signature: str
    fingerprint: str


@frozen
class PresentedView:
    """One presented chain: where, the chain's verdict (with ", but:" when failing facts follow a trusted
    chain), its CSS token, the verifier's words, the failing facts about the address, and the certificates."""

    endpoint: str
    trust: str
    trust_class: str
    trust_detail: str
    failing: tuple[Failing, ...]
    chain: tuple[CertView, ...]


@frozen
class CertificateView:
    """The chains presented at the domain's MX addresses."""

    certificates: tuple[PresentedView, ...]


def view(observed: Observed) -> CertificateView | None:
    failing = ev.failing_by_subject(observed.findings)
    certificates = tuple(
        _presented(p, observed.finished, failing) for p in ev.mappings(observed.facts.get("certificates"))
    )
    return CertificateView(certificates) if certificates else None


def _presented(p: Mapping[str, Any], at: datetime | None, failing: Mapping[str, list[Shown]]) -> PresentedView:
    """One presented chain. "Trusted" judges the chain alone (issuer and signatures); the leaf's dates, names
    and key are separate findings, named right beside that verdict so it never reads as "all is well"."""
    trust = ev.text(p.get("trust"))
    chain = ev.mappings(p.get("chain"))
    certs = tuple(_cert(c, index, len(chain), at) for index, c in enumerate(chain))
    endpoint = ev.text(p.get("endpoint"))
    trusted = trust == Trust.TRUSTED.value
    facts = tuple(
        Failing.of(f, _cert_fact(f.code, certs[0] if certs else None, ev.text(p.get("host"))))
        for f in failing.get(endpoint, [])
        if trusted or f.code not in _TRUST_CODES
    )
    verdict = f"chain {trust}" if trust else "chain not judged"
    trust_class = "good" if trusted else "bad"
    if facts:
        verdict += ", but:" if trusted else "; also:"
    if trusted and facts:
        trust_class = "bad" if any(f.tone == "bad" for f in facts) else "warn"
    return PresentedView(endpoint, verdict, trust_class, ev.text(p.get("trust_detail")), facts, certs)


def _cert_fact(code: str, leaf: CertView | None, host: str) -> str:
    """A few words for what a certificate finding says about the leaf; the code itself for any other finding."""
    if leaf is not None and code in ("CERT_EXPIRED", "CERT_NOT_YET_VALID") and leaf.validity:
        return f"leaf {leaf.validity}"
    if leaf is not None and code in ("CERT_EXPIRING", "CERT_EXPIRING_SOON") and leaf.validity:
        return f"leaf expires soon: {leaf.validity}"
    if code == "CERT_NAME_MISMATCH" and host:
        return f"leaf does not name {host}"
    if leaf is not None and code == "CERT_WEAK_KEY" and leaf.key:
        return f"weak key: {leaf.key}"
    if code == "CERT_WEAK_SIGNATURE":
        return "weak signature"
    return code


def _cert(c: Mapping[str, Any], index: int, length: int, at: datetime | None) -> CertView:
    if index == 0:
        role = "leaf" if length > 1 or not c.get("self_issued") else "leaf (self-signed)"
    else:
        role = "root (sent by the server)" if c.get("self_issued") else "intermediate"
    not_before, not_after = ev.moment(c.get("not_before")), ev.moment(c.get("not_after"))
    validity, validity_class = _validity(not_before, not_after, at)
    key_bits = c.get("key_bits")
    key_type = ev.text(c.get("key_type"))
    return CertView(
        role=role,
        subject=ev.text(c.get("subject")),
        issuer=ev.text(c.get("issuer")),
        names=tuple(ev.text(n) for n in ev.items(c.get("dns_names"))),
        not_before=ev.show_time(not_before, c.get("not_before")),
        not_after=ev.show_time(not_after, c.get("not_after")),
        validity=validity,
        validity_class=validity_class,
        key=f"{key_type} {ev.text(key_bits)} bits".strip() if key_bits else key_type,
        signature=ev.text(c.get("signature_hash")).upper(),
        fingerprint=_fingerprint(ev.text(c.get("sha256"))),
    )


def _validity(not_before: datetime | None, not_after: datetime | None, at: datetime | None) -> tuple[str, str]:
    """Days left against the run's finish time (not the time of rendering: a saved report stays true)."""
    if at is None or not_after is None:
        return "", "unknown"
    if not_before is not None and at < not_before:
        return f"not valid for {_days((not_before - at).total_seconds() / 86400)} yet", "bad"
    left = (not_after - at).total_seconds() / 86400
    if left < 0:
        return f"expired {_days(-left)} ago", "bad"
    return f"{_days(left)} left", "warn" if left <= 30 else "good"


def _fingerprint(hex_digest: str) -> str:
    if re.fullmatch(r"[0-9a-fA-F]{64}", hex_digest):
        return ":".join(hex_digest[i : i + 2] for i in range(0, 64, 2)).upper()
    return hex_digest


def measure(facts: Mapping[str, Any]) -> Measurements:
    """When the leaf of every presented chain expires, with the thresholds it was judged by."""
    checked_at = ev.moment(facts.get("checked_at"))
    warn, crit = ev.number(facts.get("warn_days")), ev.number(facts.get("crit_days"))
    expiries = []
    for presented in ev.mappings(facts.get("certificates")):
        chain = ev.items(presented.get("chain"))
        not_after = ev.moment(ev.mapping(chain[0]).get("not_after")) if chain else None
        if not_after is not None:
            expiries.append(CertificateExpiry(ev.text(presented.get("host")), not_after, checked_at, warn, crit))
    return Measurements(certificates=tuple(expiries))


async def probe(ctx: CheckContext) -> CertificateFacts | None:
    """The chains the port25 check's sessions received, each verified against the trust store; None when no
    session completed a TLS handshake."""
    port25 = ctx.facts("port25", Port25Facts)
    with_tls = [(p, p.session.tls) for p in port25.probed if p.session.tls is not None and p.session.tls.chain_der]
    if not with_tls:
        return None
    # cryptography, which diag.net.tls loads, is not needed before the first handshake: the run imports it in a
    # thread meanwhile (CHECK.lazy_imports), off the way to the first packet.
    from diag.net.tls import examine_chain

    store = await ctx.run.trust_store()
    # To the second, as reports write the time: then every domain whose MX shares an address within that second
    # shares one parse and verification of its chain (a run over thousands of domains meets few chains).
    now = datetime.now(UTC).replace(microsecond=0)
    presented = []
    for p, tls in with_tls:
        examined = partial(examine_chain, tls.chain_der, store, at=now)
        chain, verdict = ctx.run.remember(("certificate", tls.chain_der, now), examined)
        presented.append(PresentedCert(p.endpoint, p.host, chain, verdict.trust, verdict.detail))
    return CertificateFacts(tuple(presented), now, ctx.options.cert_warn_days, ctx.options.cert_crit_days)


async def run(ctx: CheckContext) -> Outcome:
    facts = await probe(ctx)
    if facts is None:
        return Outcome.skip("no MX address completed a TLS handshake")
    return Outcome(facts, assess(facts))


CHECK = Check(
    id="certificate",
    title="TLS certificate",
    run=run,
    facts=CertificateFacts,
    evidence=Evidence("certificates", view),
    measure=measure,
    requires=("port25",),
    lazy_imports=("diag.net.tls",),  # cryptography, to examine the chains (probe)
    codes={
        "CERT_OK": Severity.INFO,
        "CERT_EXPIRED": Severity.CRITICAL,
        "CERT_NOT_YET_VALID": Severity.CRITICAL,
        "CERT_EXPIRING": Severity.WARNING,
        "CERT_EXPIRING_SOON": Severity.ERROR,
        "CERT_UNTRUSTED": Severity.ERROR,
        "CERT_MALFORMED": Severity.ERROR,
        "CERT_CHAIN_INCOMPLETE": Severity.ERROR,
        "CERT_SELF_SIGNED": Severity.ERROR,
        "CERT_NAME_MISMATCH": Severity.ERROR,
        "CERT_WEAK_KEY": Severity.ERROR,
        "CERT_WEAK_SIGNATURE": Severity.ERROR,
    },
    meanings={
        "CERT_OK": "The certificate is trusted, valid now and names the MX host.",
        "CERT_EXPIRED": "The certificate has expired.",
        "CERT_NOT_YET_VALID": "The certificate is not valid yet.",
        "CERT_EXPIRING": "The certificate expires within --cert-warn-days (30 by default).",
        "CERT_EXPIRING_SOON": "The certificate expires within --cert-crit-days (7 by default).",
        "CERT_UNTRUSTED": "The certificate chain does not lead to a trusted certificate authority.",
        "CERT_MALFORMED": "A certificate the server sends cannot be parsed.",
        "CERT_CHAIN_INCOMPLETE": "The server sends its certificate without the intermediate CA certificate.",
        "CERT_SELF_SIGNED": "The certificate is self-signed.",
        "CERT_NAME_MISMATCH": "The certificate does not name the MX host (RFC 6125).",
        "CERT_WEAK_KEY": "The certificate's key is too small (RSA or DSA under 2048 bits, EC under 256).",
        "CERT_WEAK_SIGNATURE": "The certificate chain is signed with a broken hash (SHA-1 or MD5).",
    },
)
