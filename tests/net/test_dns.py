"""The resolver against a real DNS server on loopback (the lab's, with its lossy behaviours), and reading
nameservers given as text (``--resolver``, ``[Relay] Resolver``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import dns.flags
import dns.message
import dns.rrset
import pytest

from diag.errors import DnsTimeoutError
from diag.lab.dns import Behaviour, DnsServer, ZoneData
from diag.net.dns import Answer, DnsStatus, Nameserver, Resolver, parse_nameserver

IP = "127.0.53.2"
T = TypeVar("T")


def served(behaviour: Behaviour, body: Callable[[DnsServer, Resolver], Awaitable[T]], *, timeout: float) -> T:
    """Run ``body`` against a DNS server whose lossy.example behaves as ``behaviour``, with a Resolver of
    ``timeout`` seconds per lookup; the whole of it is bounded generously (a loaded machine is slow)."""
    data = ZoneData()
    data.add_zone("example")
    data.add("lossy.example", "MX", "10 mx.lossy.example.")
    data.set_behaviour("lossy.example", behaviour)

    async def main() -> T:
        server = DnsServer(data)
        port = await server.start(IP)
        try:
            async with asyncio.timeout(timeout * 3 + 10):
                return await body(server, Resolver([Nameserver(IP, port)], timeout=timeout))
        finally:
            await server.close()

    return asyncio.run(main())


async def ask_mx(server: DnsServer, resolver: Resolver) -> Answer:
    return await resolver.query("lossy.example", "MX")


def test_a_lookup_whose_first_udp_answers_are_lost_is_retried_over_udp_and_answered() -> None:
    async def ask(server: DnsServer, resolver: Resolver) -> tuple[Answer, int, int]:
        answer = await ask_mx(server, resolver)
        return answer, server.queries["udp"], server.queries["tcp"]

    # Given a server that drops the first two UDP queries for each name and type (rate limiting)
    answer, udp, tcp = served(Behaviour.LOSE_UDP, ask, timeout=3.0)
    # Then the third UDP try, within the one lookup's budget, gets the answer (no need for TCP)
    assert answer.status is DnsStatus.OK
    assert [r.to_text() for r in answer.records] == ["10 mx.lossy.example."]
    assert (udp, tcp) == (3, 0)


def test_when_every_udp_answer_is_lost_the_rest_of_the_budget_asks_over_tcp() -> None:
    async def count(server: DnsServer, resolver: Resolver) -> tuple[Answer, int, int]:
        answer = await ask_mx(server, resolver)
        return answer, server.queries["udp"], server.queries["tcp"]

    # Given a server that answers only over TCP
    answer, udp, tcp = served(Behaviour.TCP_ONLY, count, timeout=1.5)
    # Then UDP was tried more than once, and TCP got the answer
    assert answer.status is DnsStatus.OK and udp >= 2 and tcp >= 1


def test_a_server_that_never_answers_ends_in_a_dns_timeout_within_the_budget() -> None:
    async def fail(server: DnsServer, resolver: Resolver) -> tuple[str, int, int]:
        with pytest.raises(DnsTimeoutError) as timed_out:
            await ask_mx(server, resolver)
        return str(timed_out.value), server.queries["udp"], server.queries["tcp"]

    # Given a server that answers nothing, over UDP or TCP (the bound in served() fails a lookup that overruns)
    message, udp, tcp = served(Behaviour.DROP, fail, timeout=1.0)
    # Then the lookup gave up after both, with the budget it had
    assert message.startswith("no answer for lossy.example MX within 1 s (over UDP, then TCP) from ")
    assert udp >= 2 and tcp >= 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.53", Nameserver("192.0.2.53")),
        ("192.0.2.53:5353", Nameserver("192.0.2.53", 5353)),
        ("2001:db8::53", Nameserver("2001:db8::53")),
        ("[2001:db8::53]:5353", Nameserver("2001:db8::53", 5353)),
    ],
)
def test_a_nameserver_is_an_ip_address_and_an_optional_port(text: str, expected: Nameserver) -> None:
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize("port", ["²", "٣", "0", "65536", "x"])
def test_a_port_other_than_ascii_digits_from_1_to_65535_is_refused(port: str) -> None:
    with pytest.raises(ValueError, match=rf"^port '{port}' is not a number from 1 to 65535$"):
        parse_nameserver(f"192.0.2.53:{port}")


def test_a_server_that_truncates_and_then_closes_the_connection_is_asked_again_within_the_budget() -> None:
    # Given a server that rate-limits the way NSD does with rrl-slip: every UDP answer is truncated (TC), and the
    # first TCP connections are closed before an answer (it cannot take them all); the third one is answered
    tcp_connections: list[int] = []

    def reply(wire: bytes, *, truncated: bool) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        if truncated:
            response.flags |= dns.flags.TC
        else:
            response.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "MX", "10 mx.lossy.example."))
        return response.to_wire()

    class Udp(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.transport.sendto(reply(data, truncated=True), addr)  # type: ignore[attr-defined]

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tcp_connections.append(1)
        size = int.from_bytes(await reader.readexactly(2), "big")
        query = await reader.readexactly(size)
        if len(tcp_connections) > 2:
            answer = reply(query, truncated=False)
            writer.write(len(answer).to_bytes(2, "big") + answer)
            await writer.drain()
        writer.close()

    async def main() -> Answer:
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(tcp, IP, 0)
        port = server.sockets[0].getsockname()[1]
        udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=(IP, port))
        try:
            async with asyncio.timeout(20):
                return await Resolver([Nameserver(IP, port)], timeout=3.0).query("lossy.example", "MX")
        finally:
            udp.close()
            server.close()
            await server.wait_closed()

    # When a lookup asks it
    answer = asyncio.run(main())
    # Then the closed connections cost a retry each, not the lookup: the third connection's answer is the result
    assert answer.status is DnsStatus.OK and [r.to_text() for r in answer.records] == ["10 mx.lossy.example."]
    assert len(tcp_connections) == 3
