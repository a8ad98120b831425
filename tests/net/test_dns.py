"""The resolver against a real DNS server on loopback (the lab's, with its lossy behaviours, or one answering
from a script), reading nameservers given as text (``--resolver``, ``[Relay] Resolver``) and from resolv.conf."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar, cast

import dns.flags
import dns.message
import dns.rdatatype
import dns.rrset
import pytest

from diag.errors import DnsError, DnsTimeoutError
from diag.lab.dns import Behaviour, DnsServer, ZoneData
from diag.net.dns import Answer, DnsStatus, Nameserver, Resolver, parse_nameserver, system_nameservers

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
        resolver = Resolver([Nameserver(IP, port)], timeout=timeout)
        try:
            async with asyncio.timeout(timeout * 3 + 10):
                return await body(server, resolver)
        finally:
            await resolver.aclose()
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


def test_a_server_that_keeps_slipping_is_asked_over_tcp_first() -> None:
    # Given a server over its rate limit for us: every UDP query gets an empty truncated reply ("slip"), TCP the
    # answer, which would have fitted the UDP reply
    data = ZoneData()
    data.add_zone("example")
    for n in range(12):
        data.add(f"d{n}.lossy.example", "MX", f"10 mx.d{n}.lossy.example.")
    data.set_behaviour("lossy.example", Behaviour.SLIP_UDP)

    async def main() -> list[tuple[int, int]]:
        server = DnsServer(data)
        port = await server.start(IP)
        try:
            resolver = Resolver([Nameserver(IP, port)], timeout=5.0)
            counts = []
            for n in range(12):
                answer = await resolver.query(f"d{n}.lossy.example", "MX")
                assert [r.to_text() for r in answer.records] == [f"10 mx.d{n}.lossy.example."]
                counts.append((server.queries["udp"], server.queries["tcp"]))
            await resolver.aclose()
            return counts
        finally:
            await server.close()

    counts = asyncio.run(main())
    # Then each of the first eight questions tried UDP, slipped and went over TCP; from then on, TCP only
    assert counts[7] == (8, 8)
    assert counts[11] == (8, 12)


def slipping_world(names: int, *, tcp_idle_timeout: float = 10.0) -> tuple[ZoneData, dict[str, float]]:
    """Zone data whose names below lossy.example are answered over TCP, every UDP query getting an empty
    truncated reply at once, and DnsServer arguments."""
    data = ZoneData()
    data.add_zone("example")
    for n in range(names):
        data.add(f"d{n}.lossy.example", "MX", f"10 mx.d{n}.lossy.example.")
    data.set_behaviour("lossy.example", Behaviour.SLIP_UDP)
    return data, {"tcp_idle_timeout": tcp_idle_timeout}


async def until(condition: Callable[[], bool], *, within: float) -> None:
    """Wait until ``condition`` holds (a server noticing a closed connection), ``within`` seconds at most; the
    test's assertion then says whether it did."""
    for _ in range(int(within / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)


async def ask_over_tcp(resolver: Resolver, names: range) -> list[str]:
    return [(await resolver.query(f"d{n}.lossy.example", "MX")).records[0].to_text() for n in names]


def test_tcp_questions_to_one_server_share_one_connection_which_aclose_closes() -> None:
    # Given a server that answers the names over TCP only
    data, arguments = slipping_world(6)

    async def main() -> tuple[list[str], int, int, int]:
        server = DnsServer(data, **arguments)
        port = await server.start(IP)
        try:
            resolver = Resolver([Nameserver(IP, port)], timeout=2.0)
            # When six questions are asked one after the other (each truncated over UDP, then asked over TCP)
            answers = await ask_over_tcp(resolver, range(6))
            open_before = server.tcp_clients
            await resolver.aclose()
            await until(lambda: server.tcp_clients == 0, within=1.0)  # the server notices on its next read
            return answers, server.connections, open_before, server.tcp_clients
        finally:
            await server.close()

    answers, connections, open_before, open_after = asyncio.run(main())
    # Then all are answered on one connection, kept open between them and closed by aclose
    assert answers == [f"10 mx.d{n}.lossy.example." for n in range(6)]
    assert (connections, open_before, open_after) == (1, 1, 0)


def test_a_kept_connection_the_server_closed_is_replaced_within_the_try() -> None:
    # Given a server that closes TCP connections idle for 0.2 s
    data, arguments = slipping_world(2, tcp_idle_timeout=0.2)

    async def main() -> tuple[list[str], int, int]:
        server = DnsServer(data, **arguments)
        port = await server.start(IP)
        try:
            resolver = Resolver([Nameserver(IP, port)], timeout=2.0)
            first = await ask_over_tcp(resolver, range(1))
            await asyncio.sleep(0.5)  # the server closes the kept connection
            # When the next question finds the kept connection closed
            second = await ask_over_tcp(resolver, range(1, 2))
            await resolver.aclose()
            return first + second, server.connections, server.queries["udp"]
        finally:
            await server.close()

    answers, connections, udp = asyncio.run(main())
    # Then it is answered on a new connection in the same TCP try: not in a new round over UDP
    assert answers == ["10 mx.d0.lossy.example.", "10 mx.d1.lossy.example."]
    assert (connections, udp) == (2, 2)


def test_a_server_asked_over_tcp_first_whose_tcp_fails_is_asked_over_udp_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a server that slips for the names below lossy.example (TCP answers them) and answers others over UDP
    data, arguments = slipping_world(8, tcp_idle_timeout=0.2)
    data.add("a.plain.example", "MX", "10 mx.plain.example.")
    data.add("b.plain.example", "MX", "10 mx.plain.example.")

    async def main() -> tuple[list[str], list[int]]:
        server = DnsServer(data, **arguments)
        port = await server.start(IP)
        try:
            resolver = Resolver([Nameserver(IP, port)], timeout=5.0)
            # When eight questions slip, which makes it a server asked over TCP first, and its TCP port then
            # refuses connections (the kept one is closed by the server after 0.2 s idle)
            await ask_over_tcp(resolver, range(8))
            assert server._tcp_server is not None
            server._tcp_server.close()
            await asyncio.sleep(0.5)
            plain, given_up = [], []
            for name in ("a.plain.example", "b.plain.example"):
                plain.append((await resolver.query(name, "MX")).records[0].to_text())
                given_up.append(sum("asking it over UDP first again" in r.getMessage() for r in caplog.records))
            await resolver.aclose()
            return plain, given_up
        finally:
            await server.close()

    with caplog.at_level(logging.INFO, logger="diag.net.dns"):
        plain, given_up = asyncio.run(main())
    # Then the first normal question tries TCP, which fails it, and is answered over UDP; so is the second,
    # without trying TCP again
    assert any("asking it over TCP first" in r.getMessage() for r in caplog.records)
    assert plain == ["10 mx.plain.example."] * 2
    assert given_up == [1, 1]


def test_an_empty_truncated_reply_to_a_large_answer_is_no_slip() -> None:
    # Given a server whose TXT answers are too large for 512 octets: it truncates them to the question over UDP
    data = ZoneData()
    data.add_zone("example")
    for n in range(10):
        data.add(f"t{n}.big.example", "TXT", *(f'"{n} {k} {"x" * 200}"' for k in range(4)))

    async def main() -> tuple[int, int]:
        server = DnsServer(data)
        port = await server.start(IP)
        try:
            resolver = Resolver([Nameserver(IP, port)], timeout=5.0)
            # When ten of them are asked (without EDNS: a 512-octet reply)
            for n in range(10):
                assert len((await resolver.query(f"t{n}.big.example", "TXT")).records) == 4
            await resolver.aclose()
            return server.queries["udp"], server.queries["tcp"]
        finally:
            await server.close()

    # Then each is asked over UDP first, truncated, and over TCP: truncating large answers is no rate limiting
    assert asyncio.run(main()) == (10, 10)


def test_a_kept_connection_is_closed_after_waiting_its_idle_time() -> None:
    # Given a connection kept after an answer over TCP
    data, arguments = slipping_world(1, tcp_idle_timeout=60.0)

    async def main() -> tuple[int, int]:
        server = DnsServer(data, **arguments)
        port = await server.start(IP)
        try:
            resolver = Resolver([Nameserver(IP, port)], timeout=2.0)
            await ask_over_tcp(resolver, range(1))
            kept = server.tcp_clients
            # When no question comes for longer than the idle time (5 s)
            started = asyncio.get_running_loop().time()
            await until(lambda: server.tcp_clients == 0, within=8.0)
            waited = asyncio.get_running_loop().time() - started
            assert waited >= 4.5, waited  # not closed before its time
            return kept, server.tcp_clients
        finally:
            await server.close()

    # Then the resolver closes it (the server's own idle timeout is 60 s)
    assert asyncio.run(main()) == (1, 0)


def test_aclose_while_a_lookup_is_under_way_leaves_no_connection_open() -> None:
    # Given a server asked over TCP first (eight slips), whose AAAA answers below slow.example come 0.3 s late
    data, arguments = slipping_world(8)
    data.add("mx.slow.example", "AAAA", "2001:db8::25")
    data.set_behaviour("slow.example", Behaviour.SLOW_AAAA)

    async def main() -> tuple[str, int]:
        server = DnsServer(data, slow_delay=0.3, **arguments)
        port = await server.start(IP)
        try:
            resolver = Resolver([Nameserver(IP, port)], timeout=2.0)
            await ask_over_tcp(resolver, range(8))
            # When the resolver is closed while a question is on a TCP connection
            lookup = asyncio.ensure_future(resolver.query("mx.slow.example", "AAAA"))
            await asyncio.sleep(0.1)
            await resolver.aclose()
            answer = await lookup
            await until(lambda: server.tcp_clients == 0, within=2.0)
            return answer.records[0].to_text(), server.tcp_clients
        finally:
            await server.close()

    # Then the question is answered, and its connection closed afterwards instead of kept
    assert asyncio.run(main()) == ("2001:db8::25", 0)


class TwoWays:
    """A DNS server on loopback whose every reply the test decides: ``udp(query)`` gives the UDP reply (None: no
    reply), ``tcp(query)`` the TCP one (several replies, one after the other; None: hold the connection without
    answering; "close": close it), sent ``tcp_delay`` seconds late."""

    def __init__(
        self, udp: Callable[[dns.message.Message], bytes | None],
        tcp: Callable[[dns.message.Message], bytes | tuple[bytes, ...] | str | None], *, tcp_delay: float = 0.0,
    ) -> None:  # fmt: skip
        self._udp_reply, self._tcp_reply, self._tcp_delay = udp, tcp, tcp_delay
        self.queries: Counter[str] = Counter()
        self.connections = 0
        self.open = 0
        """TCP connections served, and open now."""
        self._servers: list[asyncio.Server | asyncio.DatagramTransport] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        tcp = await asyncio.start_server(self._serve_tcp, IP, 0)
        port = int(tcp.sockets[0].getsockname()[1])
        server = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = cast(asyncio.DatagramTransport, transport)

            def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
                server.queries["udp"] += 1
                reply = server._udp_reply(dns.message.from_wire(data))
                if reply is not None:
                    self.transport.sendto(reply, addr)

        udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(Udp, local_addr=(IP, port))
        self._servers = [tcp, udp]
        return port

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self._writers.append(writer)
        try:
            while True:
                wire = await reader.readexactly(int.from_bytes(await reader.readexactly(2), "big"))
                self.queries["tcp"] += 1
                reply = self._tcp_reply(dns.message.from_wire(wire))
                if reply == "close":
                    break
                if reply is None:
                    await reader.read()  # held until the client goes away
                    break
                await asyncio.sleep(self._tcp_delay)
                for wire in (reply,) if isinstance(reply, bytes) else reply:
                    writer.write(len(wire).to_bytes(2, "big") + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.transport.abort()

    async def close(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        for server in self._servers:
            server.close()


def reply_a(query: dns.message.Message, *, truncated: bool = False, records: bool = True) -> bytes:
    """The reply to ``query`` with an A record (or none), flagged truncated or not."""
    reply = dns.message.make_response(query)
    if records:
        reply.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "A", "192.0.2.25"))
    if truncated:
        reply.flags |= dns.flags.TC
    return reply.to_wire()


def qname(query: dns.message.Message) -> str:
    return query.question[0].name.to_text(omit_final_dot=True)


async def ask_two_ways(server: TwoWays, names: Sequence[str]) -> list[str]:
    """Ask ``names`` (A) one after the other of ``server``; the first address of each."""
    port = await server.start()
    resolver = Resolver([Nameserver(IP, port)], timeout=2.0)
    try:
        return [(await resolver.query(name, "A")).records[0].to_text() for name in names]
    finally:
        await resolver.aclose()
        await server.close()


SLIPPING = [f"d{n}.example" for n in range(8)]  # eight slips in a row: the server is asked over TCP first


def test_data_left_on_a_kept_connection_sends_the_question_on_a_new_one() -> None:
    # Given a server that slips every UDP query and sends every TCP answer twice
    server = TwoWays(lambda q: reply_a(q, truncated=True, records=False), lambda q: (reply_a(q),) * 2)
    # When three questions are asked one after the other
    answers = asyncio.run(ask_two_ways(server, ["a.example", "b.example", "c.example"]))
    # Then each is answered: the duplicate left on the kept connection makes the next question take a new one
    assert answers == ["192.0.2.25"] * 3
    assert server.connections == 3


def test_slips_spread_over_more_than_the_window_do_not_make_a_server_tcp_first() -> None:
    # Given a server that slips every UDP query
    data, arguments = slipping_world(9)

    async def main() -> int:
        server = DnsServer(data, **arguments)
        port = await server.start(IP)
        resolver = Resolver([Nameserver(IP, port)], timeout=2.0)
        try:
            # When eight questions slip over more than two seconds, then a ninth is asked
            for n in range(8):
                await ask_over_tcp(resolver, range(n, n + 1))
                await asyncio.sleep(0.35)
            await ask_over_tcp(resolver, range(8, 9))
            return server.queries["udp"]
        finally:
            await resolver.aclose()
            await server.close()

    # Then the ninth is still asked over UDP first
    assert asyncio.run(main()) == 9


def test_a_truncated_reply_that_carries_records_is_no_slip() -> None:
    # Given a server whose every UDP reply is flagged truncated but carries the record (part of a large answer)
    server = TwoWays(lambda q: reply_a(q, truncated=True), reply_a)
    # When ten questions are asked
    assert asyncio.run(ask_two_ways(server, [f"t{n}.example" for n in range(10)])) == ["192.0.2.25"] * 10
    # Then each went over UDP first: no rate limiting there
    assert server.queries["udp"] == 10


def test_a_server_asked_over_tcp_first_that_closes_a_connection_before_answering_stays_tcp_first() -> None:
    # Given a server that slips and closes the TCP connection on busy.example the first two times it is asked
    closes = Counter[str]()

    def tcp(query: dns.message.Message) -> bytes | str:
        if qname(query) == "busy.example" and closes["busy"] < 2:
            closes["busy"] += 1
            return "close"
        return reply_a(query)

    server = TwoWays(lambda q: reply_a(q, truncated=True, records=False), tcp)
    # When, after eight slips, busy.example is asked (its kept connection closed, then a new one), then another name
    answers = asyncio.run(ask_two_ways(server, [*SLIPPING, "busy.example", "next.example"]))
    # Then both are answered over TCP, the busy server kept as a TCP-first one: no UDP query after the eight slips
    assert answers == ["192.0.2.25"] * 10
    assert server.queries["udp"] == 8


def test_a_server_asked_over_tcp_first_whose_tcp_goes_silent_is_asked_over_udp_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a server that slips for d*.example, answers other names over UDP, and holds TCP questions for
    # silent.example without answering
    def udp(query: dns.message.Message) -> bytes:
        return reply_a(query, truncated=qname(query).startswith("d"), records=not qname(query).startswith("d"))

    def tcp(query: dns.message.Message) -> bytes | None:
        return None if qname(query) == "silent.example" else reply_a(query)

    server = TwoWays(udp, tcp)
    # When, after eight slips, silent.example is asked (its kept connection, then a new one, say nothing), then
    # another name
    with caplog.at_level(logging.INFO, logger="diag.net.dns"):
        answers = asyncio.run(ask_two_ways(server, [*SLIPPING, "silent.example", "plain.example"]))
    # Then silent.example is answered over UDP once a new connection stayed silent for a whole try, and the
    # next name goes over UDP at once
    assert answers == ["192.0.2.25"] * 10
    assert server.queries["udp"] == 10
    assert server.queries["tcp"] == 8 + 2
    assert sum("asking it over UDP first again" in r.getMessage() for r in caplog.records) == 1


def test_at_most_sixteen_connections_are_kept_per_server() -> None:
    # Given a server that slips every UDP query and answers over TCP 0.3 s late
    server = TwoWays(lambda q: reply_a(q, truncated=True, records=False), reply_a, tcp_delay=0.3)

    async def main() -> tuple[int, int]:
        port = await server.start()
        resolver = Resolver([Nameserver(IP, port)], timeout=3.0)
        try:
            # When twenty questions are asked at once, each over its own TCP connection
            await asyncio.gather(*(resolver.query(f"q{n}.example", "A") for n in range(20)))
            await until(lambda: server.open <= 16, within=2.0)
            return server.connections, server.open
        finally:
            await resolver.aclose()
            await server.close()

    # Then sixteen of them are kept for the next questions, the other four closed
    assert asyncio.run(main()) == (20, 16)


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

    # Given a server that answers nothing, over UDP or TCP (the bound in served() fails a lookup that overruns);
    # a budget of 3 s, so that its last third leaves a loaded machine time to open the TCP connection
    message, udp, tcp = served(Behaviour.DROP, fail, timeout=3.0)
    # Then the lookup gave up after both, with the budget it had
    assert message.startswith("no answer for lossy.example MX within 3 s (over UDP and TCP) from ")
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
        resolver = Resolver([Nameserver(IP, port)], timeout=3.0)
        try:
            async with asyncio.timeout(20):
                return await resolver.query("lossy.example", "MX")
        finally:
            await resolver.aclose()
            udp.close()
            server.close()
            await server.wait_closed()

    # When a lookup asks it
    answer = asyncio.run(main())
    # Then the closed connections cost a retry each, not the lookup: the third connection's answer is the result
    assert answer.status is DnsStatus.OK and [r.to_text() for r in answer.records] == ["10 mx.lossy.example."]
    assert len(tcp_connections) == 3


def test_resolv_conf_gives_the_nameservers_in_order_and_the_rotate_and_edns0_options(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# written by hand\n; and commented\nsearch corp.example\nnameserver 192.0.2.53\nnameserver\n"
        "nameserver not-an-address\nnameserver 2001:db8::53\noptions ndots:2 rotate edns0\n"
    )
    assert system_nameservers(conf) == ((Nameserver("192.0.2.53"), Nameserver("2001:db8::53")), True, True)
    conf.write_text("nameserver 192.0.2.53\n")
    assert system_nameservers(conf) == ((Nameserver("192.0.2.53"),), False, False)


def test_without_a_resolv_conf_there_is_no_nameserver(tmp_path: Path) -> None:
    assert system_nameservers(tmp_path / "missing") == ((), False, False)


# A server answering from a script: (name, type) -> the records of the answer and of the additional section.
Script = dict[tuple[str, str], tuple[list[str], list[str]]]


class Scripted(asyncio.DatagramProtocol):
    """A DNS server on loopback that answers each question from a script (NXDOMAIN for what it does not have)
    and counts the questions; ``hold`` holds an A question's answer until the AAAA question has arrived too."""

    def __init__(self, script: Script, *, hold: bool = False) -> None:
        self.script = script
        self.asked: Counter[tuple[str, str]] = Counter()
        self.with_do: set[tuple[str, str]] = set()
        self.hold = hold
        self.held: list[tuple[bytes, tuple[str | int, ...]]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        key = (question.name.to_text(omit_final_dot=True), dns.rdatatype.to_text(question.rdtype))
        self.asked[key] += 1
        if query.ednsflags & dns.flags.DO:
            self.with_do.add(key)
        response = dns.message.make_response(query)
        answer, additional = self.script.get(key, ([], []))
        if not answer:
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.answer = [dns.rrset.from_text(*record.split(" ", 4)) for record in answer]
        response.additional = [dns.rrset.from_text(*record.split(" ", 4)) for record in additional]
        assert self.transport is not None
        if self.hold and key[1] == "A" and not self.asked[key[0], "AAAA"]:
            self.held.append((response.to_wire(), addr))
            return
        self.transport.sendto(response.to_wire(), addr)
        if self.hold and key[1] == "AAAA":
            for wire, held_for in self.held:
                self.transport.sendto(wire, held_for)


def scripted(
    script: Script, body: Callable[[Resolver, Scripted], Awaitable[T]], *, hold: bool = False, dnssec: bool = False,
    ad_bit: bool = False,
) -> T:
    async def main() -> T:
        transport, server = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: Scripted(script, hold=hold), local_addr=(IP, 0)
        )
        try:
            resolver = Resolver([Nameserver(IP, transport.get_extra_info("sockname")[1])], timeout=3.0,
                                dnssec=dnssec, ad_bit=ad_bit)  # fmt: skip
            async with asyncio.timeout(20):
                return await body(resolver, server)
        finally:
            transport.close()

    return asyncio.run(main())


MX = "example.com. 300 IN MX 10 mx.example.com."
MX_A = "mx.example.com. 300 IN A 192.0.2.1"
MX_AAAA = "mx.example.com. 300 IN AAAA 2001:db8::1"


async def mx_and_addresses(resolver: Resolver, server: Scripted) -> tuple[list[str], Counter[tuple[str, str]]]:
    await resolver.query("example.com", "MX")
    a, aaaa = await asyncio.gather(resolver.query("mx.example.com", "A"), resolver.query("mx.example.com", "AAAA"))
    return [r.to_text() for answer in (a, aaaa) for r in answer.records], server.asked


def test_the_addresses_an_mx_answer_gives_for_its_exchange_are_not_asked_for_again() -> None:
    # Given a server that gives the exchange's A and AAAA records with the MX answer (RFC 1035 §3.3.9)
    given = {("example.com", "MX"): ([MX], [MX_A, MX_AAAA]), ("mx.example.com", "A"): ([MX_A], []),
             ("mx.example.com", "AAAA"): ([MX_AAAA], [])}  # fmt: skip
    addresses, asked = scripted(given, mx_and_addresses)
    # Then the addresses are those the server would answer, and only the MX question went on the wire
    assert addresses == ["192.0.2.1", "2001:db8::1"]
    assert asked == Counter({("example.com", "MX"): 1})


def test_a_type_the_additional_section_does_not_give_is_asked_for() -> None:
    given = {("example.com", "MX"): ([MX], [MX_A]), ("mx.example.com", "AAAA"): ([MX_AAAA], [])}
    addresses, asked = scripted(given, mx_and_addresses)
    assert addresses == ["192.0.2.1", "2001:db8::1"]
    assert asked == Counter({("example.com", "MX"): 1, ("mx.example.com", "AAAA"): 1})


def test_additional_records_of_a_name_that_is_no_exchange_of_the_answer_are_ignored() -> None:
    # Given an MX answer whose additional section also claims an address for another name
    given = {("example.com", "MX"): ([MX], ["www.example.net. 300 IN A 198.51.100.66"]),
             ("www.example.net", "A"): (["www.example.net. 300 IN A 192.0.2.80"], [])}  # fmt: skip

    async def ask(resolver: Resolver, server: Scripted) -> tuple[list[str], Counter[tuple[str, str]]]:
        await resolver.query("example.com", "MX")
        answer = await resolver.query("www.example.net", "A")
        return [r.to_text() for r in answer.records], server.asked

    addresses, asked = scripted(given, ask)
    # Then that name is asked for, and its own answer counts
    assert addresses == ["192.0.2.80"] and asked[("www.example.net", "A")] == 1


# RRSIGs as an additional section gives them (the signature bytes are never checked here): by example.com, over
# the owner's three labels, and one made from the wildcard *.example.com (two labels: RFC 4034 §3.1.3).
MX_A_SIG = "mx.example.com. 300 IN RRSIG A 13 3 300 20300101000000 20200101000000 1 example.com. AAAA"
MX_AAAA_SIG = "mx.example.com. 300 IN RRSIG AAAA 13 3 300 20300101000000 20200101000000 1 example.com. AAAA"
MX_AAAA_WILDCARD_SIG = "mx.example.com. 300 IN RRSIG AAAA 13 2 300 20300101000000 20200101000000 1 example.com. AAAA"


def test_with_dnssec_every_question_asks_with_do_and_the_dnssec_question_is_not_asked_again() -> None:
    # Given a resolver for a run that needs DNSSEC material
    given = {("example.com", "MX"): ([MX], []), ("mx.example.com", "A"): ([MX_A, MX_A_SIG], [])}

    async def ask(resolver: Resolver, server: Scripted) -> tuple[Answer, Answer, Scripted]:
        plain = await resolver.query("mx.example.com", "A")
        signed = await resolver.query("mx.example.com", "A", dnssec=True)
        await resolver.query("example.com", "MX")
        await resolver.query("example.com", "MX", dnssec=True)
        return plain, signed, server

    plain, signed, server = scripted(given, ask, dnssec=True)
    # When the mail checks' question comes first, it goes out with DO, its answer keeps the RRSIGs, and the
    # DNSSEC question after it is answered from the cache
    assert plain is signed and signed.dnssec and [s.type_covered for s in signed.signatures] == [dns.rdatatype.A]
    assert server.asked == Counter({("example.com", "MX"): 1, ("mx.example.com", "A"): 1})
    assert server.with_do == {("example.com", "MX"), ("mx.example.com", "A")}


def test_without_dnssec_a_plain_question_goes_without_do_and_a_dnssec_question_asks_again() -> None:
    given = {("mx.example.com", "A"): ([MX_A, MX_A_SIG], [])}

    async def ask(resolver: Resolver, server: Scripted) -> tuple[Answer, Answer, Scripted]:
        plain = await resolver.query("mx.example.com", "A")
        return plain, await resolver.query("mx.example.com", "A", dnssec=True), server

    plain, signed, server = scripted(given, ask)
    assert not plain.dnssec and signed.dnssec and server.asked == Counter({("mx.example.com", "A"): 2})
    assert server.with_do == {("mx.example.com", "A")}


def test_with_dnssec_a_failed_lookup_stands_for_the_dnssec_question_too() -> None:
    # Given a resolver asking with DO, and a nameserver that fails the question (SERVFAIL)
    async def fail(server: DnsServer, resolver: Resolver) -> int:
        for dnssec in (False, True):
            with pytest.raises(DnsError, match="SERVFAIL"):
                await resolver.query("lossy.example", "MX", dnssec=dnssec)
        return server.queries["udp"] + server.queries["tcp"]

    async def main() -> int:
        data = ZoneData()
        data.add_zone("example")
        data.set_behaviour("lossy.example", Behaviour.SERVFAIL)
        server = DnsServer(data)
        port = await server.start(IP)
        try:
            return await fail(server, Resolver([Nameserver(IP, port)], timeout=2.0, dnssec=True))
        finally:
            await server.close()

    # Then the failure was asked for once, not again for the DNSSEC question
    assert asyncio.run(main()) == 1


def test_with_dnssec_the_additional_addresses_are_taken_with_their_rrsigs_only() -> None:
    # Given an MX answer whose additional section signs the exchange's A records but not its AAAA records
    given = {("example.com", "MX"): ([MX], [MX_A, MX_A_SIG, MX_AAAA]), ("mx.example.com", "AAAA"): ([MX_AAAA], [])}

    async def ask(resolver: Resolver, server: Scripted) -> tuple[Answer, Counter[tuple[str, str]]]:
        await resolver.query("example.com", "MX")
        a = await resolver.query("mx.example.com", "A", dnssec=True)
        await resolver.query("mx.example.com", "AAAA", dnssec=True)
        return a, server.asked

    a, asked = scripted(given, ask, dnssec=True)
    # Then the signed A records count as the answer, with their RRSIGs; the unsigned AAAA records are asked for
    assert a.dnssec and [r.to_text() for r in a.records] == ["192.0.2.1"] and len(a.signatures) == 1
    assert asked == Counter({("example.com", "MX"): 1, ("mx.example.com", "AAAA"): 1})


@pytest.mark.parametrize(
    ("additional", "ad_bit"),
    [([MX_AAAA, MX_AAAA_WILDCARD_SIG], False), ([MX_AAAA, MX_AAAA_SIG], True)],
    ids=["wildcard-expansion", "ad-bit"],
)
def test_with_dnssec_additional_addresses_that_need_more_than_their_rrsigs_are_asked_for(
    additional: list[str], ad_bit: bool
) -> None:
    # Given signed AAAA records in the additional section that the section cannot vouch for: expanded from a
    # wildcard (the proof that no closer name exists is not there), or for a run that trusts the AD bit (it
    # covers the answer and authority sections only, RFC 4035 §3.2.3)
    given = {("example.com", "MX"): ([MX], additional), ("mx.example.com", "AAAA"): ([MX_AAAA], [])}

    async def ask(resolver: Resolver, server: Scripted) -> Counter[tuple[str, str]]:
        await resolver.query("example.com", "MX")
        await resolver.query("mx.example.com", "AAAA", dnssec=True)
        return server.asked

    # Then the question is asked
    assert scripted(given, ask, dnssec=True, ad_bit=ad_bit)[("mx.example.com", "AAAA")] == 1


def test_the_mx_check_asks_for_a_and_aaaa_together() -> None:
    # Given a server that answers an exchange's A question only once its AAAA question has arrived too: asked one
    # after the other, the A lookup would never be answered
    given = {("example.com", "MX"): ([MX], []), ("mx.example.com", "A"): ([MX_A], []),
             ("mx.example.com", "AAAA"): ([MX_AAAA], [])}  # fmt: skip

    async def probe(resolver: Resolver, server: Scripted) -> tuple[str, ...]:
        from checks.mx import probe as mx_probe
        from diag.context import CheckContext, RunContext, RunOptions

        run = RunContext(RunOptions(timeout=3.0))
        run.resolver = resolver
        facts = await mx_probe(CheckContext("example.com", run, {}))
        return facts.hosts[0].addresses

    assert scripted(given, probe, hold=True) == ("192.0.2.1", "2001:db8::1")


def test_a_servfail_from_every_nameserver_is_no_usable_answer_and_names_the_server() -> None:
    async def fail(server: DnsServer, resolver: Resolver) -> str:
        with pytest.raises(DnsError) as failed:
            await ask_mx(server, resolver)
        return str(failed.value)

    message = served(Behaviour.SERVFAIL, fail, timeout=2.0)
    assert message.startswith("no usable answer for lossy.example MX: 127.0.53.2:") and message.endswith(
        " answered SERVFAIL"
    )


# --- a nameserver that does not implement EDNS (RFC 6891 §7) ----------------------------------------------------


def without_edns(
    body: Callable[[list[DnsServer], Resolver], Awaitable[T]], *, dnssec: bool, edns_servers: int = 0
) -> T:
    """Run ``body`` against a lab DNS server whose lossy.example does not implement EDNS (FORMERR without OPT to a
    query with it), then ``edns_servers`` more that do, with a Resolver asking them in that order."""

    def zone(behaviour: Behaviour) -> ZoneData:
        data = ZoneData()
        data.add_zone("example")
        data.add("lossy.example", "MX", "10 mx.lossy.example.")
        data.add("mx.lossy.example", "A", "192.0.2.25")
        data.add("other.example", "MX", "10 mx.lossy.example.")
        data.set_behaviour("lossy.example", behaviour)
        return data

    async def main() -> T:
        behaviours = [Behaviour.NO_EDNS] + [Behaviour.ANSWER] * edns_servers
        servers = [DnsServer(zone(behaviour)) for behaviour in behaviours]
        ports = [await server.start(IP) for server in servers]
        try:
            async with asyncio.timeout(20):
                resolver = Resolver([Nameserver(IP, port) for port in ports], timeout=3.0, dnssec=dnssec)
                return await body(servers, resolver)
        finally:
            for server in servers:
                await server.close()

    return asyncio.run(main())


def test_a_server_without_edns_is_asked_again_without_it_and_its_answer_has_no_dnssec_material() -> None:
    async def ask(
        servers: list[DnsServer], resolver: Resolver
    ) -> tuple[Answer, str, Answer, Answer, Counter[str], int]:
        (server,) = servers
        mx = await resolver.query("lossy.example", "MX")
        with pytest.raises(DnsError) as no_material:
            await resolver.query("lossy.example", "MX", dnssec=True)
        a = await resolver.query("mx.lossy.example", "A")
        other = await resolver.query("other.example", "MX", dnssec=True)
        asked = Counter({f"{name} {rdtype}": n for (name, rdtype, _transport), n in server.questions.items()})
        return mx, str(no_material.value), a, other, asked, server.port

    # Given a run asking with EDNS and DO (a DNSSEC check runs), and a server that answers FORMERR without an OPT
    # record to a query with EDNS for lossy.example and the names below it
    mx, no_material, a, other, asked, port = without_edns(ask, dnssec=True)
    # Then the MX question is asked again without EDNS, within the lookup, and its answer is the mail checks'
    assert mx.status is DnsStatus.OK and [r.to_text() for r in mx.records] == ["10 mx.lossy.example."]
    assert not mx.dnssec and not mx.signatures
    # and the DNSSEC question about it is not asked again: it hears that the server gives no DNSSEC material
    assert no_material == (
        f"{IP}:{port} does not implement EDNS (it answered FORMERR to a query with EDNS): its answer "
        "for lossy.example MX carries no DNSSEC material"
    )
    assert mx.no_dnssec == no_material
    # A name below it is asked without EDNS at once; elsewhere EDNS and DO are used as before
    assert [r.to_text() for r in a.records] == ["192.0.2.25"] and a.no_dnssec
    assert other.dnssec and not other.no_dnssec
    assert asked == Counter({"lossy.example MX": 2, "mx.lossy.example A": 1, "other.example MX": 1})


def test_without_dnssec_a_dnssec_question_to_a_server_without_edns_is_asked_once_and_fails_with_the_reason() -> None:
    async def ask(servers: list[DnsServer], resolver: Resolver) -> tuple[Answer, list[str], int]:
        (server,) = servers
        plain = await resolver.query("lossy.example", "MX")  # no EDNS: answered at once
        failures = []
        for _ in range(2):
            with pytest.raises(DnsError) as no_material:
                await resolver.query("lossy.example", "MX", dnssec=True)
            failures.append(str(no_material.value))
        return plain, failures, server.questions[("lossy.example", "MX", "udp")]

    plain, failures, asked = without_edns(ask, dnssec=False)
    # Then the plain question went once, the DNSSEC question once with EDNS and once without: the second DNSSEC
    # question is answered from the cache, with the same reason
    assert plain.status is DnsStatus.OK and asked == 3
    assert failures[0] == failures[1] and "does not implement EDNS" in failures[0]


def test_a_dnssec_question_asks_a_server_that_does_edns_before_asking_one_that_does_not_without_it() -> None:
    async def ask(servers: list[DnsServer], resolver: Resolver) -> tuple[Answer, Answer, list[int], list[int]]:
        first = await resolver.query("lossy.example", "MX", dnssec=True)
        second = await resolver.query("mx.lossy.example", "A", dnssec=True)
        return (first, second, [s.questions[("lossy.example", "MX", "udp")] for s in servers],
                [s.questions[("mx.lossy.example", "A", "udp")] for s in servers])  # fmt: skip

    # Given two nameservers, the first without EDNS (RFC 6891 §6.2.2: DNSSEC must not fall back when it can be had)
    first, second, mx_asked, a_asked = without_edns(ask, dnssec=True, edns_servers=1)
    # Then the second one's answer, with DNSSEC material, is the answer: the first is not asked without EDNS
    assert first.dnssec and not first.no_dnssec and mx_asked == [1, 1]
    # and the next question below that name goes to the server that does EDNS first
    assert second.dnssec and a_asked == [0, 1]


class EdnsRefusing(asyncio.DatagramProtocol):
    """A DNS server on loopback that answers a query without EDNS with an MX record, and one with EDNS with
    ``rcode`` (with an OPT record of its own when ``opt``), or not at all (``rcode`` None)."""

    def __init__(self, rcode: dns.rcode.Rcode | None, *, opt: bool = False) -> None:
        self.rcode, self.opt = rcode, opt
        self.asked: list[bool] = []  # with EDNS or not, per query
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        query = dns.message.from_wire(data)
        self.asked.append(query.edns >= 0)
        response = dns.message.make_response(query)
        if query.edns >= 0:
            if self.rcode is None:
                return
            response.set_rcode(self.rcode)
            response.use_edns(0 if self.opt else False)
        else:
            response.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "MX", "10 mx.lossy.example."))
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


def refusing(rcode: dns.rcode.Rcode | None, *, opt: bool = False, timeout: float = 3.0) -> tuple[str, list[bool]]:
    """Ask a DNSSEC question of an EdnsRefusing server: the DnsError's text, and which queries carried EDNS."""

    async def main() -> tuple[str, list[bool]]:
        transport, server = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: EdnsRefusing(rcode, opt=opt), local_addr=(IP, 0)
        )
        try:
            resolver = Resolver([Nameserver(IP, transport.get_extra_info("sockname")[1])], timeout=timeout,
                                dnssec=True)  # fmt: skip
            async with asyncio.timeout(timeout * 3 + 10):
                with pytest.raises(DnsError) as failed:
                    await resolver.query("lossy.example", "MX", dnssec=True)
                return str(failed.value), server.asked
        finally:
            transport.close()

    return asyncio.run(main())


@pytest.mark.parametrize("rcode", [dns.rcode.FORMERR, dns.rcode.NOTIMP])
def test_formerr_or_notimp_without_opt_to_an_edns_query_is_asked_again_without_edns(rcode: dns.rcode.Rcode) -> None:
    message, asked = refusing(rcode)
    assert asked == [True, False] and f"(it answered {dns.rcode.to_text(rcode)} to a query with EDNS)" in message


def test_formerr_with_an_opt_record_is_no_reason_to_drop_edns() -> None:
    # Given a server that implements EDNS (its FORMERR carries an OPT record): the query itself was refused
    message, asked = refusing(dns.rcode.FORMERR, opt=True)
    assert asked == [True] and message.endswith(" answered FORMERR")


def test_a_server_that_never_answers_a_query_with_edns_is_not_asked_without_it() -> None:
    # Given a server that answers plain queries over UDP but drops every query with EDNS (and takes no TCP)
    message, asked = refusing(None, timeout=1.5)
    # Then no answer is no reason to drop EDNS (DNS flag day 2019): every UDP try carried it, and the lookup fails
    assert len(asked) >= 2 and all(asked) and "EDNS" not in message


def test_the_cache_keeps_the_answers_used_last(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a resolver that keeps three answers (a run keeps thousands)
    monkeypatch.setattr("diag.net.dns._CACHE_ENTRIES", 3)

    async def body(server: DnsServer, resolver: Resolver) -> list[int]:
        asked = []
        for name in ("a", "b", "c", "a", "d", "a", "b"):  # "a" is used again before "d" pushes one out
            await resolver.query(f"{name}.cache.example", "A")
            asked.append(server.queries["udp"])
        return asked

    data = ZoneData()
    data.add_zone("cache.example")
    for name in "abcd":
        data.add(f"{name}.cache.example", "A", "192.0.2.1")

    async def run() -> list[int]:
        server = DnsServer(data)
        port = await server.start(IP)
        try:
            return await body(server, Resolver([Nameserver(IP, port)], timeout=3.0))
        finally:
            await server.close()

    # Then each question goes out once while it is among the last three used; "b", pushed out by "d", is asked again
    assert asyncio.run(run()) == [1, 2, 3, 3, 4, 4, 5]
