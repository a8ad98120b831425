"""The lab's MTA-STS policy hosts: HTTPS on loopback, serving ``/.well-known/mta-sts.txt`` (RFC 8461 §3.2).

Just enough HTTP/1.1 for a policy fetch: one GET per connection, the policy as ``text/plain`` with its length,
404 for any other path, 405 for any other method, and the connection closed after each answer. The request
head is read with a size cap and a time limit, so a silent or flooding client cannot hold a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

__all__ = ["POLICY_PATH", "PolicyServer"]

POLICY_PATH = "/.well-known/mta-sts.txt"
_MAX_HEAD = 8192
_READ_TIMEOUT = 10.0


class PolicyServer:
    """One policy host: a TLS listener at ``ip:port`` with the host's certificate, serving ``policy``."""

    def __init__(self, ip: str, policy: str, *, chain: Path, key: Path) -> None:
        self.ip = ip
        self._policy = policy.encode("ascii")
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(chain, key)
        self._server: asyncio.Server | None = None

    async def start(self, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, self.ip, port, ssl=self._tls, limit=_MAX_HEAD)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = head.split(b"\r\n", 1)[0].decode("ascii", "replace").partition(" ")
            path = rest.partition(" ")[0]
            if method != "GET":
                status, body = "405 Method Not Allowed", b""
            elif path != POLICY_PATH:
                status, body = "404 Not Found", b""
            else:
                status, body = "200 OK", self._policy
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode("ascii") + body)  # fmt: skip
            async with asyncio.timeout(_READ_TIMEOUT):
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError, ssl.SSLError):
            pass  # the client went away, stalled, sent too much or failed the handshake
        finally:
            writer.transport.abort()
