"""What one SMTP session observed, as facts: the stage it reached, why it stopped, what TLS negotiated.

:mod:`diag.net.smtp` gathers them with aiosmtplib; the checks that judge them, and the run that shares sessions
between checks, import only this module, so a run does not load aiosmtplib before its first packet (the run
imports it in a thread meanwhile: ``lazy_imports`` of :class:`diag.context.RunContext`).
"""

from __future__ import annotations

import enum
from dataclasses import field

from diag.frozen import frozen

__all__ = ["SessionError", "SessionFacts", "SessionStage", "TlsFacts"]


class SessionStage(enum.StrEnum):
    """The last stage a session reached."""

    CONNECT = "connect"
    BANNER = "banner"
    EHLO = "ehlo"
    STARTTLS = "starttls"
    DONE = "done"


class SessionError(enum.StrEnum):
    """Why a session stopped before the end."""

    REFUSED = "refused"
    CONNECT_TIMEOUT = "connect-timeout"
    UNREACHABLE = "unreachable"
    BANNER_TIMEOUT = "banner-timeout"
    GREETING_REJECTED = "greeting-rejected"
    EHLO_REJECTED = "ehlo-rejected"
    STARTTLS_REJECTED = "starttls-rejected"
    TLS_FAILED = "tls-failed"
    TIMEOUT = "timeout"
    DISCONNECTED = "disconnected"
    PROTOCOL = "protocol"


@frozen
class TlsFacts:
    """What the TLS handshake negotiated.

    Attributes:
        version: protocol version as OpenSSL names it (``TLSv1.3``).
        cipher: the cipher suite name.
        server_name: the SNI name sent (the MX host name, without trailing dot).
        chain_der: the certificates the server sent, leaf first, DER-encoded, unverified.
    """

    version: str
    cipher: str
    server_name: str | None
    chain_der: tuple[bytes, ...]


@frozen
class SessionFacts:
    """Everything one SMTP session observed at one address.

    Attributes:
        ip, port: where it connected.
        server_name: the host name the session was opened for (SNI, certificate name).
        reached: the last stage completed (``DONE`` when the session ran to QUIT).
        error: why it stopped early, or None.
        detail: the error's text (server reply or system error), or "".
        connect_s, banner_s, ehlo_s, tls_s: seconds spent connecting, waiting for the greeting, on EHLO, and
            on STARTTLS with its handshake; None for stages not reached.
        greeting_code, greeting: the greeting reply code and text.
        greeting_unfinished: the greeting was a multi-line rejection that never ended (too long, stalled or cut
            off); ``greeting`` holds its first lines.
        ehlo_code: the reply code to EHLO (or HELO when ``helo_fallback``).
        extensions: EHLO keywords with their parameters, as sent, in order (before TLS).
        helo_fallback: EHLO was refused and HELO was used.
        starttls_offered: STARTTLS was among the extensions.
        starttls_code, starttls_reply: the reply to STARTTLS, when sent.
        tls: the TLS handshake's facts, when it succeeded.
        tls_extensions: EHLO extensions after TLS.
        transcript: the conversation, one line per command or reply, client lines prefixed ``C:``, server
            lines ``S:``.
    """

    ip: str
    port: int
    server_name: str
    reached: SessionStage | None = None
    error: SessionError | None = None
    detail: str = ""
    connect_s: float | None = None
    banner_s: float | None = None
    ehlo_s: float | None = None
    tls_s: float | None = None
    greeting_code: int | None = None
    greeting: str = ""
    greeting_unfinished: bool = False
    ehlo_code: int | None = None
    extensions: tuple[str, ...] = ()
    helo_fallback: bool = False
    starttls_offered: bool = False
    starttls_code: int | None = None
    starttls_reply: str = ""
    tls: TlsFacts | None = None
    tls_extensions: tuple[str, ...] = ()
    transcript: tuple[str, ...] = field(default=())

    @property
    def answered_ehlo(self) -> bool:
        """The session got past EHLO (or HELO)."""
        return self.reached in (SessionStage.EHLO, SessionStage.STARTTLS, SessionStage.DONE)
