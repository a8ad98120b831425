"""The HTTPS fetch against a real TLS web server on loopback, with certificates from the lab's test PKI."""

from __future__ import annotations

import asyncio
import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from diag.lab.pki import CertKind, TestPKI
from diag.net.https import FetchError, HttpsFacts, client_context, fetch

POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: *.contoso.com\r\nmax_age: 86400\r\n"
ROUTES: dict[str, tuple[int, dict[str, str], bytes]] = {
    "/.well-known/mta-sts.txt": (200, {"Content-Type": "text/plain; charset=utf-8"}, POLICY),
    "/moved": (301, {"Location": "https://elsewhere.test/.well-known/mta-sts.txt"}, b""),
    "/big": (200, {"Content-Type": "text/plain"}, b"x" * 70_000),
    "/exact": (200, {"Content-Type": "text/plain"}, b"y" * 1000),
    "/html": (200, {"Content-Type": "text/html"}, b"<html>version: STSv1</html>"),
    "/untyped": (200, {}, POLICY),
}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, headers, body = ROUTES.get(self.path, (404, {"Content-Type": "text/plain"}, b"not found"))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


class Server:
    """A threading HTTPS server choosing its certificate by SNI: ``<kind>.test`` gets a leaf of that kind."""

    def __init__(self, tmp: Path) -> None:
        pki = TestPKI.create()
        self.context = client_context(pki.write_root(tmp / "root.pem"))
        contexts: dict[str, ssl.SSLContext] = {}
        leaves = {
            "good.test": pki.issue(["good.test"]),
            "expired.test": pki.issue(["expired.test"], kind=CertKind.EXPIRED),
            "future.test": pki.issue(["future.test"], kind=CertKind.NOT_YET_VALID),
            "wrong.test": pki.issue(["other.test"]),
            "selfsigned.test": pki.issue(["selfsigned.test"], kind=CertKind.SELF_SIGNED),
        }
        for name, issued in leaves.items():
            chain, key = issued.write(tmp, name)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(chain, key)
            contexts[name] = context
        default = contexts["good.test"]

        def pick(sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
            sock.context = contexts.get(server_name or "", default)

        default.sni_callback = pick  # type: ignore[assignment]
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = default.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def get(self, host: str, path: str = "/.well-known/mta-sts.txt", **kwargs: object) -> HttpsFacts:
        return asyncio.run(
            fetch(host, "127.0.0.1", path, context=self.context, port=self.port, timeout=10.0, **kwargs)  # type: ignore[arg-type]
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("https"))
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()


def test_a_valid_certificate_gives_the_body_and_its_media_type(server: Server) -> None:
    facts = server.get("good.test")
    assert (facts.error, facts.status, facts.content_type, facts.charset, facts.body) == (
        None, 200, "text/plain", "utf-8", POLICY,
    )  # fmt: skip
    assert facts.url == f"https://good.test:{server.port}/.well-known/mta-sts.txt" and facts.ip == "127.0.0.1"
    assert facts.tls_version in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize(
    ("host", "error"),
    [
        ("wrong.test", FetchError.CERT_NAME_MISMATCH),
        ("expired.test", FetchError.CERT_EXPIRED),
        ("future.test", FetchError.CERT_NOT_YET_VALID),
        ("selfsigned.test", FetchError.CERT_UNTRUSTED),
    ],
)
def test_certificate_failures_are_named_and_nothing_is_read(server: Server, host: str, error: FetchError) -> None:
    facts = server.get(host)
    assert (facts.error, facts.status, facts.body) == (error, None, b"")
    assert facts.detail


def test_without_the_ca_file_the_system_store_does_not_trust_the_lab(server: Server) -> None:
    facts = asyncio.run(fetch("good.test", "127.0.0.1", "/", context=client_context(), port=server.port, timeout=10.0))
    assert facts.error is FetchError.CERT_UNTRUSTED


def test_a_redirect_is_reported_not_followed(server: Server) -> None:
    facts = server.get("good.test", "/moved")
    assert (facts.error, facts.status, facts.location) == (None, 301, "https://elsewhere.test/.well-known/mta-sts.txt")


def test_a_body_over_the_cap_is_too_large_and_one_at_the_cap_is_not(server: Server) -> None:
    big = server.get("good.test", "/big")
    assert (big.error, big.status, len(big.body)) == (FetchError.TOO_LARGE, 200, 65536)
    exact = server.get("good.test", "/exact", max_bytes=1000)
    assert (exact.error, len(exact.body)) == (None, 1000)


@pytest.mark.parametrize(("path", "status", "media"), [("/html", 200, "text/html"), ("/untyped", 200, None),
                                                       ("/nothing", 404, "text/plain")])  # fmt: skip
def test_status_and_media_type_are_facts_for_the_judge(
    server: Server, path: str, status: int, media: str | None
) -> None:
    facts = server.get("good.test", path)
    assert (facts.error, facts.status, facts.content_type) == (None, status, media)


def test_a_closed_port_is_refused() -> None:
    facts = asyncio.run(fetch("good.test", "127.0.0.1", "/", context=client_context(), port=1, timeout=5.0))
    assert facts.error is FetchError.REFUSED
