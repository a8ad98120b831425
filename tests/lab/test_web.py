"""The lab's MTA-STS policy host, fetched with diag's own HTTPS probe over loopback."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

from diag.lab.pki import TestPKI
from diag.lab.web import POLICY_PATH, PolicyServer
from diag.net.https import HttpsFacts, client_context, fetch

IP = "127.0.41.1"
HOST = "mta-sts.contoso.com"
POLICY = "version: STSv1\nmode: enforce\nmx: *.contoso.com\nmax_age: 604800\n"


def serve_and(tmp_path: Path, action):  # type: ignore[no-untyped-def]
    pki = TestPKI.create()
    chain, key = pki.issue([HOST]).write(tmp_path, HOST)
    ca = pki.write_root(tmp_path / "ca.pem")

    async def body():  # type: ignore[no-untyped-def]
        server = PolicyServer(IP, POLICY, chain=chain, key=key)
        with socket.socket() as probe:
            probe.bind((IP, 0))
            port = probe.getsockname()[1]
        await server.start(port)
        try:
            async with asyncio.timeout(20):
                return await action(port, ca)
        finally:
            await server.close()

    return asyncio.run(body())


def test_the_policy_is_served_as_text_plain(tmp_path: Path) -> None:
    facts: HttpsFacts = serve_and(
        tmp_path, lambda port, ca: fetch(HOST, IP, POLICY_PATH, port=port, context=client_context(ca))
    )
    assert (facts.status, facts.content_type, facts.body) == (200, "text/plain", POLICY.encode())
    assert facts.error is None and facts.tls_version in ("TLSv1.2", "TLSv1.3")


def test_other_paths_are_not_found(tmp_path: Path) -> None:
    facts: HttpsFacts = serve_and(tmp_path, lambda port, ca: fetch(HOST, IP, "/", port=port,
                                                                   context=client_context(ca)))
    assert (facts.status, facts.body) == (404, b"")


def test_other_methods_are_not_allowed_and_the_connection_closes(tmp_path: Path) -> None:
    async def post(port: int, ca: Path) -> bytes:
        context = ssl.create_default_context(cafile=str(ca))
        reader, writer = await asyncio.open_connection(IP, port, ssl=context, server_hostname=HOST)
        writer.write(f"POST {POLICY_PATH} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        answer = await reader.read()  # until the server closes
        writer.close()
        return answer

    answer: bytes = serve_and(tmp_path, post)
    assert answer.startswith(b"HTTP/1.1 405 ")
