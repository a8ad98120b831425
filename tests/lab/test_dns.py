"""The lab's authoritative DNS server, queried with dnspython's real clients over loopback."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import dns.asyncquery
import dns.asyncresolver
import dns.dnssec
import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest

from diag.errors import LabError
from diag.lab.dns import Behaviour, DnsServer, ZoneData

IP = "127.0.53.1"
TEST_TIMEOUT = 20.0  # bound on every test's event loop
T = TypeVar("T")


def run(factory: Callable[[], Awaitable[T]]) -> T:
    """Run an async test body with a bound on the whole of it."""

    async def bounded() -> T:
        async with asyncio.timeout(TEST_TIMEOUT):
            return await factory()

    return asyncio.run(bounded())


def sample_data() -> ZoneData:
    data = ZoneData()
    data.add_zone("contoso.com")
    data.add_zone("fabrikam.com.")
    data.add("contoso.com", "MX", "0 contoso-com.mail.protection.outlook.com.")
    data.add("contoso.com", "TXT", "v=spf1 include:spf.protection.outlook.com -all")
    data.add("contoso.com", "A", "192.0.2.1")
    data.add("WWW.Contoso.COM", "A", "192.0.2.2", "192.0.2.3", ttl=60)
    data.add("nomail.contoso.com", "MX", "0 .")
    data.add("relay.contoso.com", "MX", "10 mx.contoso.com.")
    data.add("mx.contoso.com", "CNAME", "smtp.fabrikam.com.")
    data.add("smtp.fabrikam.com", "A", "198.51.100.25")
    data.add("a.b.deep.contoso.com", "A", "192.0.2.9")
    data.add("loop1.contoso.com", "CNAME", "loop2.contoso.com.")
    data.add("loop2.contoso.com", "CNAME", "loop1.contoso.com.")
    data.add("dangling.contoso.com", "CNAME", "gone.contoso.com.")
    data.add("outside.contoso.com", "CNAME", "www.example.org.")
    for i in range(60):
        data.add("big.contoso.com", "A", f"10.0.0.{i}")
    data.add("longtxt.contoso.com", "TXT", "k" * 5000)
    return data


@asynccontextmanager
async def serving(
    data: ZoneData, *, tcp_idle_timeout: float = 10.0, max_tcp_clients: int = 64
) -> AsyncIterator[DnsServer]:
    server = DnsServer(data, tcp_idle_timeout=tcp_idle_timeout, max_tcp_clients=max_tcp_clients)
    await server.start(IP)
    try:
        yield server
    finally:
        await server.close()


def resolver(port: int, *, lifetime: float = 5.0) -> dns.asyncresolver.Resolver:
    res = dns.asyncresolver.Resolver(configure=False)
    res.nameservers = [IP]
    res.port = port
    res.timeout = 2.0
    res.lifetime = lifetime
    return res


async def ask(
    port: int, name: str, rdtype: str, *, tcp: bool = False, payload: int | None = None
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if payload is not None:
        query.use_edns(0, payload=payload)
    if tcp:
        return await dns.asyncquery.tcp(query, IP, timeout=2.0, port=port)
    return await dns.asyncquery.udp(query, IP, timeout=2.0, port=port)


async def raw_udp(port: int, payload: bytes, *, wait: float = 2.0) -> bytes | None:
    """Send one datagram; return the reply, or None if none came within *wait* seconds."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((IP, port))
        await loop.sock_sendall(sock, payload)
        try:
            async with asyncio.timeout(wait):
                return await loop.sock_recv(sock, 65535)
        except TimeoutError:
            return None


def framed(wire: bytes) -> bytes:
    return len(wire).to_bytes(2, "big") + wire


async def read_framed(reader: asyncio.StreamReader) -> dns.message.Message:
    async with asyncio.timeout(2.0):
        length = int.from_bytes(await reader.readexactly(2), "big")
        return dns.message.from_wire(await reader.readexactly(length))


async def assert_still_answers(port: int) -> None:
    reply = await ask(port, "contoso.com", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert [rd.to_text() for rd in reply.answer[0]] == ["192.0.2.1"]


# --- answers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_a_mx_txt_answers(tcp: bool) -> None:
    async def body() -> None:
        async with serving(sample_data()) as server:
            res = resolver(server.port)
            a = await res.resolve("www.contoso.com.", "A", tcp=tcp)
            assert sorted(rd.to_text() for rd in a) == ["192.0.2.2", "192.0.2.3"]
            assert a.rrset is not None and a.rrset.ttl == 60
            assert a.response.flags & dns.flags.AA

            mx = await res.resolve("contoso.com.", "MX", tcp=tcp)
            assert [rd.to_text() for rd in mx] == ["0 contoso-com.mail.protection.outlook.com."]
            assert mx.response.flags & dns.flags.AA

            null_mx = await res.resolve("nomail.contoso.com.", "MX", tcp=tcp)
            assert [(rd.preference, rd.exchange) for rd in null_mx] == [(0, dns.name.root)]

            txt = await res.resolve("contoso.com.", "TXT", tcp=tcp)
            assert [rd.strings for rd in txt] == [(b"v=spf1 include:spf.protection.outlook.com -all",)]
            assert server.queries["tcp" if tcp else "udp"] >= 4

    run(body)


def test_lookup_is_case_insensitive_and_echoes_the_question() -> None:
    async def body() -> None:
        async with serving(sample_data()) as server:
            reply = await ask(server.port, "wWw.CONTOSO.cOm", "a")
            assert reply.rcode() == dns.rcode.NOERROR
            assert reply.flags & dns.flags.AA
            assert reply.question[0].name.to_text() == "wWw.CONTOSO.cOm."  # 0x20 case preserved
            assert sorted(rd.to_text() for rd in reply.answer[0]) == ["192.0.2.2", "192.0.2.3"]
            a = await resolver(server.port).resolve("WWW.contoso.com.", "A")
            assert len(a) == 2

    run(body)


def test_zone_apex_has_soa_and_ns_and_any_returns_every_rrset() -> None:
    async def body() -> None:
        async with serving(sample_data()) as server:
            res = resolver(server.port)
            soa = await res.resolve("contoso.com.", "SOA")
            assert soa.rrset is not None and soa.rrset[0].mname == dns.name.from_text("ns1.contoso.com.")
            ns = await res.resolve("fabrikam.com.", "NS")
            assert [rd.to_text() for rd in ns] == ["ns1.fabrikam.com."]
            reply = await ask(server.port, "contoso.com", "ANY", tcp=True)
            types = {rrset.rdtype for rrset in reply.answer}
            assert types == {
                dns.rdatatype.SOA,
                dns.rdatatype.NS,
                dns.rdatatype.MX,
                dns.rdatatype.TXT,
                dns.rdatatype.A,
            }

    run(body)


def test_data_changes_after_start_are_served() -> None:
    async def body() -> None:
        data = sample_data()
        async with serving(data) as server:
            res = resolver(server.port)
            with pytest.raises(dns.resolver.NXDOMAIN):
                await res.resolve("late.contoso.com.", "A")
            data.add("late.contoso.com", "A", "192.0.2.77")
            late = await res.resolve("late.contoso.com.", "A")
            assert [rd.to_text() for rd in late] == ["192.0.2.77"]

    run(body)


# --- CNAME chains -----------------------------------------------------------------------------------


def test_cname_chain_is_followed_across_served_zones() -> None:
    async def body() -> None:
        async with serving(sample_data()) as server:
            res = resolver(server.port)
            mx = await res.resolve("relay.contoso.com.", "MX")
            target = mx.rrset[0].exchange if mx.rrset is not None else None
            assert target == dns.name.from_text("mx.contoso.com.")

            a = await res.resolve(target, "A")
            assert a.canonical_name == dns.name.from_text("smtp.fabrikam.com.")
            assert [rd.to_text() for rd in a] == ["198.51.100.25"]

            reply = await ask(server.port, "mx.contoso.com", "A")
            assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
            assert reply.flags & dns.flags.AA

            # Asking for the CNAME itself does not chase it.
            cname = await ask(server.port, "mx.contoso.com", "CNAME")
            assert [rrset.rdtype for rrset in cname.answer] == [dns.rdatatype.CNAME]

    run(body)


def test_cname_loop_is_answered_without_hanging() -> None:
    async def body() -> None:
        async with serving(sample_data()) as server:
            reply = await ask(server.port, "loop1.contoso.com", "A")
            assert reply.rcode() == dns.rcode.NOERROR
            assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.CNAME] * 2
            # dnspython follows the looping chain up to its own limit and rejects the answer.
            with pytest.raises(dns.exception.DNSException):
                await resolver(server.port).resolve("loop1.contoso.com.", "A")
            await assert_still_answers(server.port)

    run(body)


def test_long_cname_chain_is_cut() -> None:
    async def body() -> None:
        data = ZoneData()
        data.add_zone("chain.test")
        for i in range(40):
            data.add(f"c{i}.chain.test", "CNAME", f"c{i + 1}.chain.test.")
        async with serving(data) as server:
            reply = await ask(server.port, "c0.chain.test", "A")
            assert reply.rcode() == dns.rcode.NOERROR
            assert len(reply.answer) == 16

    run(body)


def test_cname_to_missing_name_is_nxdomain_and_leaving_our_zones_ends_the_chain() -> None:
    async def body() -> None:
        async with serving(sample_data()) as server:
            reply = await ask(server.port, "dangling.contoso.com", "A")
            assert reply.rcode() == dns.rcode.NXDOMAIN  # RFC 6604: rcode of the last name
            assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.CNAME]
            assert reply.authority[0].rdtype == dns.rdatatype.SOA
            with pytest.raises(dns.resolver.NXDOMAIN):
                await resolver(server.port).resolve("dangling.contoso.com.", "A")

            outside = await ask(server.port, "outside.contoso.com", "A")
            assert outside.rcode() == dns.rcode.NOERROR
            assert [rrset.rdtype for rrset in outside.answer] == [dns.rdatatype.CNAME]
            assert outside.flags & dns.flags.AA

    run(body)


# --- negative answers -------------------------------------------------------------------------------


def test_nxdomain_carries_the_zone_soa() -> None:
    async def body() -> None:
        async with serving(sample_data()) as server:
            with pytest.raises(dns.resolver.NXDOMAIN):
                await resolver(server.port).resolve("nosuch.contoso.com.", "A")
            reply = await ask(server.port, "nosuch.contoso.com", "MX")
            assert reply.rcode() == dns.rcode.NXDOMAIN
            assert reply.flags & dns.flags.AA
            assert not reply.answer
            soa = reply.authority[0]
            assert soa.rdtype == dns.rdatatype.SOA and soa.name == dns.name.from_text("contoso.com.")
            assert soa.ttl == min(300, soa[0].minimum)  # RFC 2308 §3

    run(body)


def test_nodata_and_empty_non_terminal() -> None:
    async def body() -> None:
        async with serving(sample_data()) as server:
            res = resolver(server.port)
            with pytest.raises(dns.resolver.NoAnswer):
                await res.resolve("www.contoso.com.", "MX")
            for name in ("deep.contoso.com", "b.deep.contoso.com"):  # names with only names below them
                with pytest.raises(dns.resolver.NoAnswer):
                    await res.resolve(f"{name}.", "A")
                reply = await ask(server.port, name, "TXT")
                assert reply.rcode() == dns.rcode.NOERROR
                assert reply.flags & dns.flags.AA
                assert not reply.answer
                assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]

    run(body)


def test_nested_zones_and_the_names_between_them() -> None:
    async def body() -> None:
        data = ZoneData()
        data.add_zone("sub.a.contoso.com")  # child first: the parent learns about it all the same
        data.add_zone("contoso.com")
        data.add("www.sub.a.contoso.com", "A", "192.0.2.50")
        async with serving(data) as server:
            between = await ask(server.port, "a.contoso.com", "A")
            assert between.rcode() == dns.rcode.NOERROR and not between.answer
            assert between.authority[0].name == dns.name.from_text("contoso.com.")
            child = await ask(server.port, "nosuch.sub.a.contoso.com", "A")
            assert child.rcode() == dns.rcode.NXDOMAIN
            assert child.authority[0].name == dns.name.from_text("sub.a.contoso.com.")
            www = await resolver(server.port).resolve("www.sub.a.contoso.com.", "A")
            assert [rd.to_text() for rd in www] == ["192.0.2.50"]

    run(body)


def test_a_zone_added_below_another_takes_over_its_names() -> None:
    async def body() -> None:
        data = ZoneData()
        data.add_zone("contoso.com")
        data.add("www.sub.contoso.com", "A", "192.0.2.60")
        data.add("sub.contoso.com", "NS", "ns.elsewhere.example.")
        data.add_zone("sub.contoso.com")
        async with serving(data) as server:
            www = await ask(server.port, "www.sub.contoso.com", "A")
            assert [rd.to_text() for rd in www.answer[0]] == ["192.0.2.60"]
            ns = await ask(server.port, "sub.contoso.com", "NS")
            assert sorted(rd.to_text() for rd in ns.answer[0]) == ["ns.elsewhere.example.", "ns1.sub.contoso.com."]
            missing = await ask(server.port, "nosuch.sub.contoso.com", "A")
            assert missing.rcode() == dns.rcode.NXDOMAIN
            assert missing.authority[0].name == dns.name.from_text("sub.contoso.com.")
            parent = await ask(server.port, "nosuch.contoso.com", "A")
            assert parent.authority[0].name == dns.name.from_text("contoso.com.")

    run(body)


def test_names_outside_the_zones_are_refused() -> None:
    async def body() -> None:
        async with serving(sample_data()) as server:
            reply = await ask(server.port, "www.example.org", "A")
            assert reply.rcode() == dns.rcode.REFUSED
            assert not reply.flags & dns.flags.AA
            with pytest.raises(dns.resolver.NoNameservers):
                await resolver(server.port).resolve("www.example.org.", "A")
            # A suffix is not a subdomain.
            reply = await ask(server.port, "notcontoso.com", "A")
            assert reply.rcode() == dns.rcode.REFUSED

    run(body)


# --- size limits and truncation ---------------------------------------------------------------------


def test_big_answer_is_truncated_over_udp_and_complete_over_tcp() -> None:
    async def body() -> None:
        async with serving(sample_data()) as server:
            truncated = await ask(server.port, "big.contoso.com", "A")
            assert truncated.flags & dns.flags.TC
            assert not truncated.answer and not truncated.authority
            assert truncated.question[0].name == dns.name.from_text("big.contoso.com.")
            assert server.queries["tcp"] == 0

            answer = await resolver(server.port).resolve("big.contoso.com.", "A")
            assert answer.rrset is not None and len(answer.rrset) == 60
            assert server.queries["tcp"] == 1

    run(body)


def test_edns_payload_size_is_honoured_and_echoed() -> None:
    async def body() -> None:
        async with serving(sample_data()) as server:
            fits = await ask(server.port, "big.contoso.com", "A", payload=1232)
            assert not fits.flags & dns.flags.TC
            assert fits.edns == 0
            assert len(fits.answer[0]) == 60

            # Sizes below 512 count as 512 (RFC 6891 §6.2.5): the small answer still fits.
            small = await ask(server.port, "contoso.com", "MX", payload=100)
            assert not small.flags & dns.flags.TC and small.edns == 0

            # Beyond the 4096 cap: truncated with EDNS kept, complete over TCP.
            long = await ask(server.port, "longtxt.contoso.com", "TXT", payload=65000)
            assert long.flags & dns.flags.TC and long.edns == 0 and not long.answer
            complete = await ask(server.port, "longtxt.contoso.com", "TXT", tcp=True)
            assert b"".join(complete.answer[0][0].strings) == b"k" * 5000

            plain = await ask(server.port, "contoso.com", "MX")
            assert plain.edns == -1  # no OPT without one in the query

    run(body)


def test_edns_version_other_than_zero_gets_badvers() -> None:
    async def body() -> None:
        async with serving(sample_data()) as server:
            query = dns.message.make_query("contoso.com", "A")
            query.use_edns(1)
            reply = await dns.asyncquery.udp(query, IP, timeout=2.0, port=server.port)
            assert reply.rcode() == dns.rcode.BADVERS
            assert reply.edns == 0

    run(body)


# --- behaviours -------------------------------------------------------------------------------------


def test_servfail_behaviour_applies_below_the_name_and_most_specific_wins() -> None:
    async def body() -> None:
        data = sample_data()
        data.set_behaviour("contoso.com", Behaviour.SERVFAIL)
        data.set_behaviour("www.contoso.com", Behaviour.ANSWER)
        async with serving(data) as server:
            res = resolver(server.port)
            with pytest.raises(dns.resolver.NoNameservers):
                await res.resolve("contoso.com.", "MX")
            reply = await ask(server.port, "nosuch.sub.contoso.com", "A", tcp=True)
            assert reply.rcode() == dns.rcode.SERVFAIL
            www = await res.resolve("www.contoso.com.", "A")
            assert len(www) == 2
            # A chain reaching the failing name fails as a recursive resolver would show it.
            data.set_behaviour("smtp.fabrikam.com", Behaviour.SERVFAIL)
            data.set_behaviour("contoso.com", Behaviour.ANSWER)
            chained = await ask(server.port, "mx.contoso.com", "A")
            assert chained.rcode() == dns.rcode.SERVFAIL

    run(body)


def test_drop_behaviour_makes_the_resolver_time_out() -> None:
    async def body() -> None:
        data = sample_data()
        data.set_behaviour("www.contoso.com", Behaviour.DROP)
        data.set_behaviour("silent.example", Behaviour.DROP)  # behaviours need no zone
        async with serving(data) as server:
            res = resolver(server.port, lifetime=0.5)
            with pytest.raises(dns.resolver.LifetimeTimeout):
                await res.resolve("www.contoso.com.", "A")
            with pytest.raises(dns.resolver.LifetimeTimeout):
                await res.resolve("x.silent.example.", "A", tcp=True)
            await assert_still_answers(server.port)

    run(body)


def test_lose_udp_behaviour_drops_the_first_udp_queries_per_name_and_type_and_answers_tcp() -> None:
    async def body() -> None:
        data = sample_data()
        data.set_behaviour("contoso.com", Behaviour.LOSE_UDP)
        server = DnsServer(data, udp_losses=2)
        await server.start(IP)
        try:
            mx = dns.message.make_query("contoso.com", "MX").to_wire()
            # The first two UDP queries for contoso.com MX go unanswered, the third is answered
            assert await raw_udp(server.port, mx, wait=0.3) is None
            assert await raw_udp(server.port, mx, wait=0.3) is None
            assert dns.message.from_wire(await raw_udp(server.port, mx) or b"").answer
            # Counted per name and type: another type, and a name below, lose their own first queries
            a = dns.message.make_query("www.contoso.com", "A").to_wire()
            assert await raw_udp(server.port, a, wait=0.3) is None
            # TCP is answered at once
            reply = await ask(server.port, "contoso.com", "TXT", tcp=True)
            assert reply.rcode() == dns.rcode.NOERROR and reply.answer
        finally:
            await server.close()
        with pytest.raises(ValueError, match="udp_losses"):
            DnsServer(data, udp_losses=-1)

    run(body)


def test_tcp_only_behaviour_never_answers_udp() -> None:
    async def body() -> None:
        data = sample_data()
        data.set_behaviour("contoso.com", Behaviour.TCP_ONLY)
        async with serving(data) as server:
            query = dns.message.make_query("contoso.com", "MX").to_wire()
            for _ in range(3):
                assert await raw_udp(server.port, query, wait=0.3) is None
            reply = await ask(server.port, "contoso.com", "MX", tcp=True)
            assert [rd.to_text() for rd in reply.answer[0]] == ["0 contoso-com.mail.protection.outlook.com."]
            reply = await ask(server.port, "smtp.fabrikam.com", "A")  # elsewhere UDP is answered
            assert reply.answer

    run(body)


def test_truncate_behaviour_flags_every_answer_truncated_over_udp_and_tcp() -> None:
    async def body() -> None:
        data = sample_data()
        data.set_behaviour("contoso.com", Behaviour.TRUNCATE)
        async with serving(data) as server:
            for tcp in (False, True):
                reply = await ask(server.port, "contoso.com", "MX", tcp=tcp)
                assert reply.flags & dns.flags.TC and not reply.answer
                assert reply.rcode() == dns.rcode.NOERROR

    run(body)


def test_small_udp_behaviour_truncates_over_udp_what_exceeds_512_octets_whatever_the_edns_payload() -> None:
    async def body() -> None:
        data = sample_data()
        data.set_behaviour("big.contoso.com", Behaviour.SMALL_UDP)
        data.add("big.fabrikam.com", "A", *(f"10.0.1.{i}" for i in range(60)))
        data.add("one.big.contoso.com", "A", "10.0.2.1")
        async with serving(data) as server:
            # Given an answer of about 1000 octets asked over UDP with room for 4096 (EDNS)
            reply = await ask(server.port, "big.contoso.com", "A", payload=4096)
            # Then it is truncated, and complete over TCP
            assert reply.flags & dns.flags.TC and not reply.answer
            reply = await ask(server.port, "big.contoso.com", "A", tcp=True)
            assert len(reply.answer[0]) == 60
            # A short answer below it fits, and elsewhere the EDNS payload counts
            assert (await ask(server.port, "one.big.contoso.com", "A", payload=4096)).answer
            reply = await ask(server.port, "big.fabrikam.com", "A", payload=4096)
            assert not reply.flags & dns.flags.TC and len(reply.answer[0]) == 60
            # Each query is counted per question and transport
            assert server.questions[("big.contoso.com", "A", "udp")] == 1
            assert server.questions[("big.contoso.com", "A", "tcp")] == 1

    run(body)


def test_no_edns_behaviour_answers_formerr_without_opt_to_a_query_with_edns_and_plain_queries_normally() -> None:
    async def body() -> None:
        data = sample_data()
        data.set_behaviour("contoso.com", Behaviour.NO_EDNS)
        async with serving(data) as server:
            for tcp in (False, True):
                # Given a query with EDNS (and the DO bit), then FORMERR without an OPT record (RFC 6891 §7)
                query = dns.message.make_query("contoso.com", "MX", want_dnssec=True, payload=1232)
                reply = await (dns.asyncquery.tcp if tcp else dns.asyncquery.udp)(query, IP, timeout=2.0,
                                                                                   port=server.port)  # fmt: skip
                assert reply.rcode() == dns.rcode.FORMERR and reply.edns < 0 and not reply.answer
                # and the same question without EDNS is answered
                reply = await ask(server.port, "contoso.com", "MX", tcp=tcp)
                assert [rd.to_text() for rd in reply.answer[0]] == ["0 contoso-com.mail.protection.outlook.com."]
            # Elsewhere EDNS is answered with EDNS
            reply = await ask(server.port, "smtp.fabrikam.com", "A", payload=1232)
            assert reply.rcode() == dns.rcode.NOERROR and reply.edns == 0 and reply.answer
            # Both queries are counted
            assert server.questions[("contoso.com", "MX", "udp")] == 2

    run(body)


# --- hostile input ----------------------------------------------------------------------------------


def test_garbage_and_responses_over_udp_do_not_stop_the_server() -> None:
    async def body() -> None:
        async with serving(sample_data()) as server:
            # Too short for a header: ignored.
            assert await raw_udp(server.port, b"\x01\x02\x03", wait=0.3) is None
            # A response (QR=1) is never answered, even a well-formed one.
            response = dns.message.make_response(dns.message.make_query("contoso.com", "A"))
            assert await raw_udp(server.port, response.to_wire(), wait=0.3) is None
            assert await raw_udp(server.port, b"\xff" * 40, wait=0.3) is None
            # A readable header with a broken body: FORMERR with the same id.
            garbage = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"\x07contoso"
            reply = dns.message.from_wire(await raw_udp(server.port, garbage) or b"")
            assert reply.id == 0x4242 and reply.rcode() == dns.rcode.FORMERR
            assert reply.flags & dns.flags.QR
            await assert_still_answers(server.port)

    run(body)


def test_question_count_and_opcode_are_checked() -> None:
    async def body() -> None:
        async with serving(sample_data()) as server:
            two = dns.message.make_query("contoso.com", "A")
            two.find_rrset(
                two.question,
                dns.name.from_text("www.contoso.com."),
                dns.rdataclass.IN,
                dns.rdatatype.A,
                create=True,
                force_unique=True,
            )
            assert len(two.question) == 2
            reply = await dns.asyncquery.udp(two, IP, timeout=2.0, port=server.port)
            assert reply.rcode() == dns.rcode.FORMERR

            none = dns.message.make_query("contoso.com", "A")
            none.question = []
            reply = await dns.asyncquery.udp(none, IP, timeout=2.0, port=server.port)
            assert reply.rcode() == dns.rcode.FORMERR

            notify = dns.message.make_query("contoso.com", "SOA")
            notify.set_opcode(dns.opcode.NOTIFY)
            reply = await dns.asyncquery.udp(notify, IP, timeout=2.0, port=server.port)
            assert reply.rcode() == dns.rcode.NOTIMP
            assert reply.opcode() == dns.opcode.NOTIFY

            transfer = await ask(server.port, "contoso.com", "AXFR", tcp=True)
            assert transfer.rcode() == dns.rcode.REFUSED
            chaos = dns.message.make_query("version.bind", "TXT", "CH")
            reply = await dns.asyncquery.udp(chaos, IP, timeout=2.0, port=server.port)
            assert reply.rcode() == dns.rcode.REFUSED
            await assert_still_answers(server.port)

    run(body)


def test_tcp_clients_that_misbehave_do_not_stop_the_server() -> None:
    async def body() -> None:
        async with serving(sample_data()) as server:
            # A partial length prefix, then gone.
            _reader, writer = await asyncio.open_connection(IP, server.port)
            writer.write(b"\x00")
            await writer.drain()
            writer.close()
            # A length, part of the message, then gone.
            _reader, writer = await asyncio.open_connection(IP, server.port)
            writer.write(b"\x00\x40" + b"\x12\x34\x01")
            await writer.drain()
            writer.close()
            # Framed garbage with a readable header: one FORMERR, then the server closes.
            reader, writer = await asyncio.open_connection(IP, server.port)
            writer.write(framed(struct.pack("!HHHHHH", 7, 0, 1, 0, 0, 0) + b"\xc0\x0c"))
            reply = await read_framed(reader)
            assert reply.id == 7 and reply.rcode() == dns.rcode.FORMERR
            async with asyncio.timeout(2.0):
                assert await reader.read() == b""
            writer.close()

            await assert_still_answers(server.port)
            reply = await ask(server.port, "contoso.com", "MX", tcp=True)
            assert reply.rcode() == dns.rcode.NOERROR

    run(body)


def test_several_queries_on_one_tcp_connection() -> None:
    async def body() -> None:
        async with serving(sample_data()) as server:
            reader, writer = await asyncio.open_connection(IP, server.port)
            first = dns.message.make_query("contoso.com", "MX")
            second = dns.message.make_query("www.contoso.com", "A")
            writer.write(framed(first.to_wire()) + framed(second.to_wire()))  # pipelined (RFC 7766 §6.2.1.1)
            replies = [await read_framed(reader), await read_framed(reader)]
            assert first.is_response(replies[0]) and second.is_response(replies[1])
            writer.write(framed(dns.message.make_query("nosuch.contoso.com", "A").to_wire()))
            assert (await read_framed(reader)).rcode() == dns.rcode.NXDOMAIN
            writer.close()
            assert server.queries["tcp"] == 3

    run(body)


def test_idle_tcp_clients_are_closed() -> None:
    async def body() -> None:
        async with serving(sample_data(), tcp_idle_timeout=0.2) as server:
            reader, writer = await asyncio.open_connection(IP, server.port)
            async with asyncio.timeout(5.0):
                assert await reader.read() == b""
            writer.close()

    run(body)


def test_extra_tcp_clients_are_closed() -> None:
    async def body() -> None:
        async with serving(sample_data(), max_tcp_clients=1) as server:
            reader, writer = await asyncio.open_connection(IP, server.port)
            writer.write(framed(dns.message.make_query("contoso.com", "A").to_wire()))
            assert (await read_framed(reader)).rcode() == dns.rcode.NOERROR  # now surely registered

            extra_reader, extra_writer = await asyncio.open_connection(IP, server.port)
            async with asyncio.timeout(2.0):
                try:
                    assert await extra_reader.read() == b""
                except ConnectionResetError:
                    pass  # an abort may arrive as a reset
            extra_writer.close()

            writer.write(framed(dns.message.make_query("www.contoso.com", "A").to_wire()))
            assert (await read_framed(reader)).rcode() == dns.rcode.NOERROR
            writer.close()

    run(body)


def test_close_is_prompt_with_an_idle_tcp_client() -> None:
    async def body() -> None:
        server = DnsServer(sample_data(), tcp_idle_timeout=60.0)
        port = await server.start(IP)
        reader, writer = await asyncio.open_connection(IP, port)
        writer.write(framed(dns.message.make_query("contoso.com", "A").to_wire()))
        await read_framed(reader)
        async with asyncio.timeout(3.0):  # far below the idle timeout
            await server.close()
            try:
                assert await reader.read() == b""
            except ConnectionResetError:
                pass
        writer.close()

    run(body)


# --- start -------------------------------------------------------------------------------------------


def test_start_binds_udp_and_tcp_on_one_port() -> None:
    async def body() -> None:
        server = DnsServer(sample_data())
        assert server.port == 0
        port = await server.start(IP)
        try:
            assert port == server.port and port > 0
            assert (await ask(port, "contoso.com", "A")).rcode() == dns.rcode.NOERROR
            assert (await ask(port, "contoso.com", "A", tcp=True)).rcode() == dns.rcode.NOERROR
            assert server.queries == {"udp": 1, "tcp": 1}
            with pytest.raises(LabError):
                await DnsServer(ZoneData()).start(IP, port)  # taken
            with pytest.raises(LabError):
                await DnsServer(ZoneData()).start("192.0.2.1")  # not ours: loopback only here
        finally:
            await server.close()
        with pytest.raises(RuntimeError):
            await server.start(IP)

    run(body)


# --- data validation --------------------------------------------------------------------------------


def test_add_validation() -> None:
    data = ZoneData()
    data.add_zone("contoso.com")
    with pytest.raises(ValueError, match="not under any zone"):
        data.add("example.org", "A", "192.0.2.1")
    with pytest.raises(ValueError, match="not under any zone"):
        data.add("notcontoso.com", "A", "192.0.2.1")

    data.add("www.contoso.com", "A", "192.0.2.1")
    with pytest.raises(ValueError, match="CNAME"):
        data.add("www.contoso.com", "CNAME", "other.contoso.com.")
    data.add("alias.contoso.com", "CNAME", "www.contoso.com.")
    data.add("ALIAS.contoso.com", "CNAME", "www.contoso.com.")  # the same record again is harmless
    with pytest.raises(ValueError, match="CNAME"):
        data.add("alias.contoso.com", "TXT", "hello")
    with pytest.raises(ValueError, match="at most one CNAME"):
        data.add("alias.contoso.com", "CNAME", "elsewhere.contoso.com.")
    with pytest.raises(ValueError, match="CNAME"):
        data.add("contoso.com", "CNAME", "www.contoso.com.")  # the apex holds SOA and NS
    with pytest.raises(ValueError, match="CNAME"):
        data.add_zone("alias.contoso.com")

    with pytest.raises(ValueError, match="record type"):
        data.add("www.contoso.com", "NOSUCHTYPE", "x")
    with pytest.raises(ValueError, match="meta type"):
        data.add("www.contoso.com", "ANY", "x")
    with pytest.raises(ValueError, match="invalid A rdata"):
        data.add("www.contoso.com", "A", "not-an-address")
    with pytest.raises(ValueError, match="invalid MX rdata"):
        data.add("www.contoso.com", "MX", "mx.contoso.com.")
    with pytest.raises(ValueError, match="at least one"):
        data.add("www.contoso.com", "A")
    with pytest.raises(ValueError, match="TTL"):
        data.add("www.contoso.com", "A", "192.0.2.5", ttl=-1)
    with pytest.raises(ValueError, match="apex"):
        data.add("www.contoso.com", "SOA", "ns1.contoso.com. h.contoso.com. 1 2 3 4 5")
    with pytest.raises(ValueError, match="A-label"):
        data.add("bücher.contoso.com", "A", "192.0.2.1")
    with pytest.raises(ValueError, match="valid domain name"):
        data.add("a..contoso.com", "A", "192.0.2.1")
    with pytest.raises(ValueError, match="valid domain name"):
        data.set_behaviour("x" * 64 + ".contoso.com", Behaviour.DROP)
    data.add("xn--bcher-kva.contoso.com", "A", "192.0.2.1")  # A-label form is fine


def test_add_all_adds_records_of_several_zones_at_once_or_none_of_them() -> None:
    async def body(data: ZoneData) -> list[str]:
        async with serving(data) as server:
            names = ("a.contoso.com", "b.fabrikam.com", "c.contoso.com")
            answers = [await ask(server.port, name, "A") for name in names]
            return [dns.rcode.to_text(a.rcode()) for a in answers]

    data = ZoneData()
    data.add_zone("contoso.com")
    data.add_zone("fabrikam.com")
    data.add_all([("a.contoso.com", "A", ("192.0.2.1",)), ("b.fabrikam.com", "A", ("192.0.2.2", "192.0.2.3"))])
    # A record that conflicts with one before it in the same call (a CNAME beside data) adds nothing at all.
    with pytest.raises(ValueError, match="CNAME"):
        data.add_all([("c.contoso.com", "A", ("192.0.2.4",)), ("x.fabrikam.com", "A", ("192.0.2.5",)),
                      ("c.contoso.com", "CNAME", ("a.contoso.com.",))])  # fmt: skip
    with pytest.raises(ValueError, match="invalid A rdata"):
        data.add_all([("c.contoso.com", "A", ("192.0.2.4",)), ("d.contoso.com", "A", ("nope",))])

    assert run(lambda: body(data)) == ["NOERROR", "NOERROR", "NXDOMAIN"]


def test_txt_rdata_is_literal_unless_quoted() -> None:
    async def body() -> None:
        data = ZoneData()
        data.add_zone("contoso.com")
        data.add("plain.contoso.com", "TXT", "v=DKIM1; k=rsa; p=" + "A" * 400)
        data.add("quoted.contoso.com", "TXT", '"first part" "second"')
        async with serving(data) as server:
            res = resolver(server.port)
            plain = await res.resolve("plain.contoso.com.", "TXT", tcp=True)
            strings = plain.rrset[0].strings if plain.rrset is not None else ()
            assert [len(s) for s in strings] == [255, 418 - 255]  # split into character-strings
            assert b"".join(strings) == b"v=DKIM1; k=rsa; p=" + b"A" * 400
            quoted = await res.resolve("quoted.contoso.com.", "TXT")
            assert [rd.strings for rd in quoted] == [(b"first part", b"second")]

    run(body)


# --- DNSSEC ------------------------------------------------------------------------------------------------------


def signed_data() -> ZoneData:
    data = ZoneData()
    for apex in ("example", "child.example", "plain.example"):
        data.add_zone(apex)
    data.add("mx.example", "A", "192.0.2.1")
    data.add("mx.child.example", "A", "192.0.2.2")
    data.sign_zone("example")
    data.sign_zone("child.example")
    return data


async def ask_do(port: int, name: str, rdtype: str) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, want_dnssec=True, use_edns=0, payload=1232)
    return await dns.asyncquery.tcp(query, IP, timeout=2.0, port=port)


def test_a_signed_zone_signs_answers_only_for_queries_with_the_do_bit() -> None:
    async def body() -> tuple[dns.message.Message, dns.message.Message]:
        async with serving(signed_data()) as server:
            return await ask(server.port, "mx.example", "A", tcp=True), await ask_do(server.port, "mx.example", "A")

    plain, signed = run(body)
    assert [r.rdtype for r in plain.answer] == [dns.rdatatype.A]
    assert sorted(r.rdtype for r in signed.answer) == [dns.rdatatype.A, dns.rdatatype.RRSIG]
    assert not signed.flags & dns.flags.AD  # an authoritative server does not validate


def test_the_dnskey_is_published_and_signed_by_itself() -> None:
    async def body() -> dns.message.Message:
        async with serving(signed_data()) as server:
            return await ask_do(server.port, "example", "DNSKEY")

    response = run(body)
    keys = response.find_rrset(response.answer, dns.name.from_text("example."), dns.rdataclass.IN,
                               dns.rdatatype.DNSKEY)  # fmt: skip
    sigs = response.find_rrset(response.answer, dns.name.from_text("example."), dns.rdataclass.IN,
                               dns.rdatatype.RRSIG, dns.rdatatype.DNSKEY)  # fmt: skip
    dns.dnssec.validate(keys, sigs, {dns.name.from_text("example."): keys})  # raises when it does not validate


def test_negative_answers_carry_the_signed_soa_and_an_nsec() -> None:
    async def body() -> tuple[dns.message.Message, dns.message.Message]:
        async with serving(signed_data()) as server:
            return await ask_do(server.port, "nope.example", "A"), await ask_do(server.port, "mx.example", "TXT")

    nxdomain, nodata = run(body)
    assert nxdomain.rcode() == dns.rcode.NXDOMAIN and nodata.rcode() == dns.rcode.NOERROR
    soa, nsec, rrsig = dns.rdatatype.SOA, dns.rdatatype.NSEC, dns.rdatatype.RRSIG
    # NXDOMAIN: the NSEC covering the name and the one covering *.example (no wildcard matched, RFC 4035 §3.1.3.2)
    for response, nsecs in ((nxdomain, 2), (nodata, 1)):
        kinds = sorted((r.rdtype, r.covers) for r in response.authority)
        assert kinds == sorted([(soa, 0), (rrsig, soa)] + [(nsec, 0), (rrsig, nsec)] * nsecs)
    assert {r.name.to_text() for r in nxdomain.authority if r.rdtype == nsec} == {"mx.example.", "example."}
    nsec = nodata.find_rrset(nodata.authority, dns.name.from_text("mx.example."), dns.rdataclass.IN, dns.rdatatype.NSEC)
    assert "A RRSIG NSEC" in nsec.to_text()


def test_a_name_added_after_start_enters_the_nsec_chain() -> None:
    # Given a signed zone served, whose NSEC chain was made for a negative answer
    async def body() -> tuple[str, str]:
        data = signed_data()
        async with serving(data) as server:
            before = await ask_do(server.port, "nb.example", "A")
            data.add("na.example", "A", "192.0.2.9")
            after = await ask_do(server.port, "nb.example", "A")
        owners = [[r.name.to_text() for r in m.authority if r.rdtype == dns.rdatatype.NSEC] for m in (before, after)]
        return owners[0][0], owners[1][0]

    # Then the next denial is made from the chain with the new name in it
    assert run(body) == ("mx.example.", "na.example.")


def test_the_parent_answers_ds_for_its_child_zones() -> None:
    async def body() -> tuple[dns.message.Message, dns.message.Message]:
        async with serving(signed_data()) as server:
            return await ask_do(server.port, "child.example", "DS"), await ask_do(server.port, "plain.example", "DS")

    secure, insecure = run(body)
    assert [(r.rdtype, r.covers) for r in secure.answer] == [(dns.rdatatype.DS, 0),
                                                             (dns.rdatatype.RRSIG, dns.rdatatype.DS)]  # fmt: skip
    rrsig = secure.answer[1][0]
    assert rrsig.signer == dns.name.from_text("example.")
    # The unsigned child: NODATA from the parent, its NSEC at the cut shows NS and no DS.
    assert not insecure.answer
    nsec = insecure.find_rrset(insecure.authority, dns.name.from_text("plain.example."), dns.rdataclass.IN,
                               dns.rdatatype.NSEC)  # fmt: skip
    assert nsec[0].to_text().endswith("NS RRSIG NSEC")


def test_an_unsigned_zone_answers_do_queries_without_signatures() -> None:
    async def body() -> dns.message.Message:
        async with serving(sample_data()) as server:
            return await ask_do(server.port, "contoso.com", "MX")

    assert [r.rdtype for r in run(body).answer] == [dns.rdatatype.MX]


def test_signing_wants_a_zone_apex() -> None:
    with pytest.raises(ValueError, match="not a zone apex"):
        sample_data().sign_zone("www.contoso.com")
