"""STARTTLS: every MX address that answers EHLO offers STARTTLS and completes a TLS handshake (RFC 3207).

The handshake is judged on its own, without certificate verification: "STARTTLS works" and "the certificate
is valid" are separate verdicts (the certificate check judges the second).
"""

from __future__ import annotations

from checks.port25 import Port25Facts, Probed
from diag.context import CheckContext
from diag.frozen import frozen
from diag.model import Finding, Severity
from diag.net.smtp_facts import SessionError, SessionStage
from diag.registry import Check, Outcome

__all__ = ["CHECK", "OLD_PROTOCOLS", "StarttlsFacts", "assess", "probe"]

# The cloud service no longer negotiates TLS 1.0 or 1.1 (RFC 8996 deprecates both).
OLD_PROTOCOLS = frozenset({"SSLv3", "TLSv1", "TLSv1.1"})


@frozen
class StarttlsFacts:
    """The addresses that answered EHLO, whose STARTTLS behaviour is judged (see port25's facts for all)."""

    probed: tuple[Probed, ...]


def assess(facts: StarttlsFacts) -> tuple[Finding, ...]:
    """Judge STARTTLS at each address; pure."""
    return tuple(_assess_session(p) for p in facts.probed)


def _assess_session(probed: Probed) -> Finding:
    s, subject = probed.session, probed.endpoint
    if not s.starttls_offered:
        why = "it answers only HELO (no extensions)" if s.helo_fallback else "EHLO does not list STARTTLS"
        return CHECK.finding(
            "STARTTLS_NOT_OFFERED", subject,
            f"{subject} does not offer STARTTLS ({why}), so mail to it travels unencrypted and connectors "
            "that require TLS cannot deliver to it.",
            "Enable STARTTLS with a certificate for this host name on the receive connector.",
            cloud_error="450 4.4.317 Cannot connect to remote server [Message=451 5.7.3 STARTTLS is required "
            "to send mail]",
        )  # fmt: skip
    if s.tls is None or s.error is not None:
        if s.error is SessionError.STARTTLS_REJECTED:
            what = f"answers STARTTLS with {s.detail}"
        elif s.reached is SessionStage.STARTTLS:
            what = f"completes the handshake but then fails at EHLO ({s.detail})"
        else:
            what = f"fails the TLS handshake ({s.detail})"
        return CHECK.finding(
            "STARTTLS_FAILED", subject,
            f"{subject} offers STARTTLS but {what}.",
            "Check the receive connector's certificate and TLS configuration (protocols, ciphers, key).",
            cloud_error="450 4.4.317 Cannot connect to remote server",
        )  # fmt: skip
    if s.tls.version in OLD_PROTOCOLS:
        return CHECK.finding(
            "TLS_PROTOCOL_OLD", subject,
            f"{subject} negotiates only {s.tls.version}; TLS 1.0 and 1.1 are deprecated (RFC 8996) and refused "
            "by the cloud service.",
            "Enable TLS 1.2 (and 1.3) on the server; update its TLS library if it cannot.",
            cloud_error="450 4.4.317 Cannot connect to remote server",
        )  # fmt: skip
    return CHECK.finding(
        "STARTTLS_OK", subject,
        f"{subject} offers STARTTLS and negotiates {s.tls.version} with {s.tls.cipher}.",
    )


async def probe(ctx: CheckContext) -> StarttlsFacts | None:
    """The port25 check's sessions that got past EHLO (the shared sessions already tried STARTTLS); None when
    none did."""
    port25 = ctx.facts("port25", Port25Facts)
    reached = tuple(p for p in port25.probed if p.session.answered_ehlo)
    return StarttlsFacts(reached) if reached else None


async def run(ctx: CheckContext) -> Outcome:
    facts = await probe(ctx)
    if facts is None:
        return Outcome.skip("no MX address answered EHLO")
    return Outcome(facts, assess(facts))


CHECK = Check(
    id="starttls",
    title="STARTTLS",
    run=run,
    facts=StarttlsFacts,
    requires=("port25",),
    codes={
        "STARTTLS_OK": Severity.INFO,
        "STARTTLS_NOT_OFFERED": Severity.ERROR,
        "STARTTLS_FAILED": Severity.ERROR,
        "TLS_PROTOCOL_OLD": Severity.ERROR,
    },
    meanings={
        "STARTTLS_OK": "The server offers STARTTLS and completes a TLS handshake.",
        "STARTTLS_NOT_OFFERED": "The server does not offer STARTTLS: mail to it travels unencrypted.",
        "STARTTLS_FAILED": "STARTTLS is offered, but refused, or the handshake or the EHLO after it fails.",
        "TLS_PROTOCOL_OLD": "The server negotiates only TLS 1.0 or 1.1, which the cloud refuses (RFC 8996).",
    },
)
