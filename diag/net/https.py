"""One HTTPS GET as facts: status, media type, a capped body, or why it failed. For the MTA-STS policy fetch.

The standard library's ``http.client`` does the HTTP (status line, headers, chunked and length-delimited
bodies) and ``ssl`` the TLS with full certificate validation (the system store or a CA file, the host name
checked by OpenSSL); the blocking call runs in a worker thread. ``httpx`` was the alternative: it is async
and well kept, but importing it costs about 45 ms more than ``http.client`` (``python -X importtime``, on top
of diag's own ~40 ms) for one small GET per domain, and it brings anyio, httpcore, h11 and certifi along.

The connection goes to an address the caller resolved with the run's resolver (so the lab's DNS and the run's
cache apply), while SNI, the certificate check and the ``Host`` header use the name. Redirects are never
followed (``http.client`` does not follow them; RFC 8461 §3.3 forbids it), the body is read up to a cap, and
the whole exchange, connection and TLS handshake included, is bounded by one deadline: the socket timeout is
set to the time left before each step and the deadline is checked between reads, so the worker thread outlives
the caller's deadline (which :func:`fetch` enforces) by at most one read's timeout.
"""

from __future__ import annotations

import asyncio
import enum
import http.client
import socket
import ssl
import time
from pathlib import Path

from diag.frozen import frozen

__all__ = ["FetchError", "HttpsFacts", "client_context", "fetch"]

_GRACE = 1.0  # seconds the outer deadline allows beyond the fetch's own
_CHUNK = 4096

# OpenSSL verification results worth naming (include/openssl/x509_vfy.h).
_X509_V_ERR_CERT_NOT_YET_VALID = 9
_X509_V_ERR_CERT_HAS_EXPIRED = 10
_X509_V_ERR_HOSTNAME_MISMATCH = 62


class FetchError(enum.StrEnum):
    """Why a fetch produced no usable response."""

    RESOLVE_FAILED = "resolve-failed"  # the caller found no address for the host (set by callers)
    REFUSED = "refused"
    CONNECT_FAILED = "connect-failed"
    TIMEOUT = "timeout"
    CERT_EXPIRED = "cert-expired"
    CERT_NOT_YET_VALID = "cert-not-yet-valid"
    CERT_NAME_MISMATCH = "cert-name-mismatch"
    CERT_UNTRUSTED = "cert-untrusted"
    TLS_FAILED = "tls-failed"
    HTTP_ERROR = "http-error"  # the server's answer is not HTTP the client can read
    TOO_LARGE = "too-large"  # the body exceeds the cap


@frozen
class HttpsFacts:
    """What one HTTPS GET observed.

    Attributes:
        url: ``https://host[:port]/path``.
        ip: the address connected to ("" when none was found).
        status: the HTTP status code, None without a response.
        content_type: the media type, lower case, without parameters (``text/plain``); None when absent.
        charset: the ``charset`` parameter, when given.
        location: the ``Location`` header (a redirect's target).
        body: the body, at most the cap; empty without a response.
        error: why there is no usable response, None when there is one.
        detail: the error's text (the verifier's or the system's words).
        tls_version: the negotiated protocol (``TLSv1.3``).
    """

    url: str
    ip: str
    status: int | None = None
    content_type: str | None = None
    charset: str | None = None
    location: str | None = None
    body: bytes = b""
    error: FetchError | None = None
    detail: str = ""
    tls_version: str | None = None


class _PinnedConnection(http.client.HTTPSConnection):
    """An HTTPS connection to a given address, with SNI, certificate name and Host taken from ``host``."""

    def __init__(self, host: str, ip: str, port: int, *, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._ip = ip
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        try:
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """The TLS context of :func:`fetch`: certificates validated against ``ca_file`` or the system store, the host
    name checked, TLS 1.2 or newer.

    Blocking, and costly with the system store: OpenSSL parses every CA in it, about 50 ms of CPU for the 144 of
    a Debian system (``ca-certificates``). Make it once and share it between fetches, threads included (a run
    does: :meth:`diag.context.RunContext.https_context`).
    """
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _cert_error(exc: ssl.SSLCertVerificationError) -> FetchError:
    return {
        _X509_V_ERR_CERT_HAS_EXPIRED: FetchError.CERT_EXPIRED,
        _X509_V_ERR_CERT_NOT_YET_VALID: FetchError.CERT_NOT_YET_VALID,
        _X509_V_ERR_HOSTNAME_MISMATCH: FetchError.CERT_NAME_MISMATCH,
    }.get(exc.verify_code, FetchError.CERT_UNTRUSTED)


def _get(
    url: str, host: str, ip: str, port: int, path: str, context: ssl.SSLContext, timeout: float, cap: int
) -> HttpsFacts:
    deadline = time.monotonic() + timeout

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the deadline passed")
        return remaining

    conn = _PinnedConnection(host, ip, port, context=context, timeout=timeout)
    try:
        conn.connect()
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        tls_version = sock.version()
        sock.settimeout(left())
        conn.request("GET", path, headers={"Accept": "text/plain", "Connection": "close", "User-Agent": "diag"})
        sock.settimeout(left())
        response = conn.getresponse()
        body = bytearray()
        # The connection closes its socket object once the headers say "close" (the response keeps reading
        # from it), so the body's reads keep the last timeout set and the deadline is checked between them.
        while len(body) <= cap:
            left()
            chunk = response.read(_CHUNK)
            if not chunk:
                break
            body += chunk
        message = response.headers
        facts = HttpsFacts(
            url, ip, response.status,
            message.get_content_type() if message.get("Content-Type") else None,
            message.get_content_charset(), message.get("Location"), bytes(body[:cap]),
            tls_version=tls_version,
        )  # fmt: skip
        if len(body) > cap:
            return _with_error(facts, FetchError.TOO_LARGE, f"the body is larger than {cap} bytes")
        return facts
    except ssl.SSLCertVerificationError as exc:
        return HttpsFacts(url, ip, error=_cert_error(exc), detail=exc.verify_message or str(exc))
    except ssl.SSLError as exc:
        return HttpsFacts(url, ip, error=FetchError.TLS_FAILED, detail=exc.reason or str(exc))
    except TimeoutError:
        return HttpsFacts(url, ip, error=FetchError.TIMEOUT, detail=f"no complete answer within {timeout:g} s")
    except ConnectionRefusedError as exc:
        return HttpsFacts(url, ip, error=FetchError.REFUSED, detail=exc.strerror or str(exc))
    except http.client.HTTPException as exc:
        return HttpsFacts(url, ip, error=FetchError.HTTP_ERROR, detail=f"{type(exc).__name__}: {exc}")
    except OSError as exc:
        return HttpsFacts(url, ip, error=FetchError.CONNECT_FAILED, detail=exc.strerror or str(exc))
    finally:
        conn.close()


def _with_error(facts: HttpsFacts, error: FetchError, detail: str) -> HttpsFacts:
    return HttpsFacts(
        facts.url, facts.ip, facts.status, facts.content_type, facts.charset, facts.location, facts.body,
        error, detail, facts.tls_version,
    )  # fmt: skip


async def fetch(
    host: str,
    ip: str,
    path: str,
    *,
    context: ssl.SSLContext,
    port: int = 443,
    timeout: float = 10.0,  # noqa: ASYNC109 - bounds the whole exchange inside the worker thread, see above
    max_bytes: int = 65536,
) -> HttpsFacts:
    """GET ``https://host:port/path`` from ``ip`` over ``context`` (:func:`client_context`); the answer or the
    failure as facts, never an exception.

    ``max_bytes`` caps the body (one byte more is read to tell a body of exactly the cap from a larger one).
    """
    shown_port = "" if port == 443 else f":{port}"
    url = f"https://{host}{shown_port}{path}"
    try:
        async with asyncio.timeout(timeout + _GRACE):
            return await asyncio.to_thread(_get, url, host, ip, port, path, context, timeout, max_bytes)
    except TimeoutError:
        return HttpsFacts(url, ip, error=FetchError.TIMEOUT, detail=f"no complete answer within {timeout:g} s")
