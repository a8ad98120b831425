"""The lab's latency (``diag lab serve --latency``): every DNS and SMTP answer really takes the round-trip time,
and the delaying proxies change nothing else. Real servers and clients on loopback; time is asserted from below
only (a loaded machine is slower, never faster)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import aiosmtplib
import dns.asyncquery
import dns.message
import pytest

from checks import default_registry
from diag.lab.latency import TcpDelay, UdpDelay, parse_latency
from diag.lab.runner import Lab
from diag.runner import run_checks

T = TypeVar("T")

RTT = 0.2
# asyncio may run a timer up to a millisecond early, and the proxies send what is due within half a millisecond
EARLY = 0.005
CONTOSO_MX = "127.0.1.10"


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


@pytest.fixture(scope="module")
def slow_lab() -> Iterator[Lab]:
    """A lab with RTT seconds of latency, running in a thread of its own like the session's lab."""
    loop = asyncio.new_event_loop()
    lab = Lab(latency=RTT)
    thread = threading.Thread(target=loop.run_forever, name="diag-slow-lab", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(lab.start(), loop).result(timeout=60)
    try:
        yield lab
    finally:
        asyncio.run_coroutine_threadsafe(lab.close(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.mark.parametrize(("text", "seconds"), [("50ms", 0.05), ("50", 0.05), ("0.2s", 0.2), (" 120 ms ", 0.12)])
def test_a_latency_is_milliseconds_or_seconds(text: str, seconds: float) -> None:
    assert parse_latency(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "fast", "-5ms", "50us", "11s"])
def test_a_latency_that_is_no_round_trip_time_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected a round-trip time|at most 10 s"):
        parse_latency(text)


def test_a_dns_answer_over_udp_takes_a_round_trip(slow_lab: Lab) -> None:
    async def ask() -> tuple[float, dns.message.Message]:
        query = dns.message.make_query("contoso.com", "MX")
        start = time.perf_counter()
        reply = await dns.asyncquery.udp(query, slow_lab.nameserver.ip, port=slow_lab.nameserver.port, timeout=10)
        return time.perf_counter() - start, reply

    elapsed, reply = run(ask())
    assert elapsed >= RTT - EARLY
    (mx,) = reply.answer
    assert mx.to_text() == "contoso.com. 300 IN MX 10 contoso-com.mail.protection.outlook.com."


def test_a_dns_answer_over_tcp_takes_the_connection_and_a_round_trip(slow_lab: Lab) -> None:
    async def ask() -> tuple[float, dns.message.Message]:
        query = dns.message.make_query("contoso.com", "MX")
        start = time.perf_counter()
        reply = await dns.asyncquery.tcp(query, slow_lab.nameserver.ip, port=slow_lab.nameserver.port, timeout=10)
        return time.perf_counter() - start, reply

    elapsed, reply = run(ask())
    assert elapsed >= 2 * RTT - EARLY
    assert reply.answer and slow_lab.dns_queries["tcp"] >= 1


def test_an_smtp_greeting_takes_the_connection_and_a_round_trip_and_each_reply_one(slow_lab: Lab) -> None:
    async def converse() -> tuple[float, float, int]:
        smtp = aiosmtplib.SMTP(hostname=CONTOSO_MX, port=slow_lab.smtp_port, timeout=10, start_tls=False)
        start = time.perf_counter()
        await smtp.connect()
        greeted = time.perf_counter()
        reply = await smtp.ehlo()
        answered = time.perf_counter()
        await smtp.quit()
        return greeted - start, answered - greeted, reply.code

    greeting, ehlo, code = run(converse())
    assert greeting >= 2 * RTT - EARLY and ehlo >= RTT - EARLY and code == 250


def test_results_through_the_latency_equal_those_without_it(lab: Lab, slow_lab: Lab) -> None:
    # Given the same domains checked in a lab without latency and in one with it (a refused host, a healthy one,
    # TLS, certificates)
    domains = ["contoso.com", "multi.example", "refused.example", "expired.example", "notls.example"]

    def findings(where: Lab) -> list[tuple[str, str, list[str]]]:
        # The mail checks: the policy checks and the probes add questions and messages, not other paths.
        registry = default_registry().select(["mx", "port25", "starttls", "certificate"])
        report = run(run_checks(domains, registry, where.run_options(timeout=10)))
        return [(d.domain, r.check_id, [f.code for f in r.findings]) for d in report.domains for r in d.results]

    # Then every check of every domain found the same
    assert findings(slow_lab) == findings(lab)


def test_a_connection_the_server_refuses_is_reset_for_the_client() -> None:
    async def connect() -> bytes:
        # Given a proxy in front of a port nobody listens on
        async with TcpDelay(("127.0.77.95", _closed_port("127.0.77.95")), 0.05) as proxy:
            port = await proxy.start("127.0.77.95")
            reader, writer = await asyncio.open_connection("127.0.77.95", port)
            try:
                # Then the client's connection ends (as refused) instead of staying open
                return await asyncio.wait_for(reader.read(), 10)
            except ConnectionResetError:
                return b""
            finally:
                writer.close()

    assert run(connect()) == b""


def test_a_half_closed_connection_still_gets_its_answer_through_the_proxy() -> None:
    async def exchange() -> bytes:
        # Given a server that answers once the client has finished sending (a FIN), like a DNS-over-TCP client
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read()
            writer.write(data.upper())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.77.96", 0)
        async with server, TcpDelay(("127.0.77.96", server.sockets[0].getsockname()[1]), 0.05) as proxy:
            port = await proxy.start("127.0.77.96")
            reader, writer = await asyncio.open_connection("127.0.77.96", port)
            writer.write(b"hello")
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return answer

    assert run(exchange()) == b"HELLO"


def test_udp_answers_go_back_to_each_client_after_a_round_trip() -> None:
    async def echo() -> tuple[list[bytes], float]:
        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
                self.transport.sendto(data[::-1], addr)  # type: ignore[attr-defined]

        loop = asyncio.get_running_loop()
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.77.97", 0))
        proxy = UdpDelay(("127.0.77.97", server.get_extra_info("sockname")[1]), 0.1)
        port = await proxy.start("127.0.77.97")
        answers: list[asyncio.Future[bytes]] = [loop.create_future(), loop.create_future()]

        class Client(asyncio.DatagramProtocol):
            def __init__(self, index: int) -> None:
                self.index = index

            def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
                answers[self.index].set_result(data)

        start = time.perf_counter()
        clients = [
            (await loop.create_datagram_endpoint(lambda i=i: Client(i), remote_addr=("127.0.77.97", port)))[0]
            for i in range(2)
        ]
        for client, text in zip(clients, (b"abc", b"xyz"), strict=True):
            client.sendto(text)
        got = [await asyncio.wait_for(answer, 10) for answer in answers]
        elapsed = time.perf_counter() - start
        for client in clients:
            client.close()
        await proxy.close()
        server.close()
        return got, elapsed

    got, elapsed = run(echo())
    assert got == [b"cba", b"zyx"] and elapsed >= 0.1 - EARLY


def _closed_port(ip: str) -> int:
    with socket.socket() as probe:
        probe.bind((ip, 0))
        port: int = probe.getsockname()[1]
        return port
