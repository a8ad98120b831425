"""The SMTP session probe against the lab's real hosts: what it records at each stage, defects included."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from cryptography import x509

from diag.context import RunContext, RunOptions
from diag.lab.runner import Lab
from diag.lab.smtp import HostKind, LabHost, start_host
from diag.net.smtp import SessionError, SessionFacts, SessionStage, probe_session


def session(lab: Lab, ip: str, name: str, timeout: float = 5.0) -> SessionFacts:
    return asyncio.run(probe_session(ip, lab.smtp_port, name, ehlo_name="probe.diag.invalid", timeout=timeout))


def test_healthy_host_full_session(lab: Lab) -> None:
    facts = session(lab, "127.0.1.10", "contoso-com.mail.protection.outlook.com")
    assert facts.reached is SessionStage.DONE and facts.error is None
    assert facts.greeting_code == 220 and "contoso-com.mail.protection.outlook.com" in facts.greeting
    assert facts.ehlo_code == 250 and not facts.helo_fallback
    assert facts.starttls_offered and facts.starttls_code == 220
    assert facts.tls is not None and facts.tls.version in ("TLSv1.2", "TLSv1.3") and facts.tls.cipher
    assert facts.tls.server_name == "contoso-com.mail.protection.outlook.com"
    leaf, intermediate = (x509.load_der_x509_certificate(der) for der in facts.tls.chain_der)
    assert leaf.issuer == intermediate.subject
    # RFC 3207 §4.2: the client discards what it learned before TLS and asks again.
    assert facts.tls_extensions and not any(e.upper() == "STARTTLS" for e in facts.tls_extensions)
    assert all(t is not None and t >= 0 for t in (facts.connect_s, facts.banner_s, facts.ehlo_s, facts.tls_s))
    assert facts.transcript[0].startswith("S: 220 ") and facts.transcript[-1] == "C: QUIT"


def test_leaf_only_chain_is_recorded_as_sent(lab: Lab) -> None:
    facts = session(lab, "127.0.20.5", "mx.chainless.example")
    assert facts.tls is not None and len(facts.tls.chain_der) == 1


@pytest.mark.parametrize(("ip", "name"), [("127.0.20.6", "mx.weakkey.example"), ("127.0.20.7", "mx.sha1.example")])
def test_weak_certificates_are_observed_not_refused(lab: Lab, ip: str, name: str) -> None:
    facts = session(lab, ip, name)
    assert facts.reached is SessionStage.DONE and facts.tls is not None


def test_old_protocol_only_host_is_observed(lab: Lab) -> None:
    facts = session(lab, "127.0.20.9", "mx.oldtls.example")
    assert facts.tls is not None and facts.tls.version in ("TLSv1", "TLSv1.1")


def test_no_starttls(lab: Lab) -> None:
    facts = session(lab, "127.0.20.10", "mx.notls.example")
    assert facts.reached is SessionStage.DONE and not facts.starttls_offered and facts.tls is None


def test_refused(lab: Lab) -> None:
    facts = session(lab, "127.0.20.11", "mx.refused.example")
    assert (facts.reached, facts.error) == (None, SessionError.REFUSED)


def test_tarpit_never_greets(lab: Lab) -> None:
    facts = session(lab, "127.0.20.12", "mx.tarpit.example", timeout=0.5)
    assert (facts.reached, facts.error) == (SessionStage.CONNECT, SessionError.BANNER_TIMEOUT)
    assert facts.connect_s is not None and facts.banner_s is None


@pytest.mark.parametrize(("ip", "code"), [("127.0.20.13", 554), ("127.0.20.14", 421)])
def test_rejecting_greetings(lab: Lab, ip: str, code: int) -> None:
    facts = session(lab, ip, "mx.example")
    assert (facts.error, facts.greeting_code) == (SessionError.GREETING_REJECTED, code)
    assert facts.detail.startswith(str(code))


def test_one_session_per_address_and_port(lab: Lab) -> None:
    async def go() -> tuple[SessionFacts, SessionFacts, int]:
        run = RunContext(lab.run_options())
        first = run.smtp_session("127.0.30.10", "mail.tailspintoys.com")
        second = run.smtp_session("127.0.30.10", "another.name.example")
        assert first is second
        facts = await first, await second
        count = run.session_count
        await run.aclose()
        return facts[0], facts[1], count

    first, second, count = asyncio.run(go())
    assert first is second and count == 1
    assert first.server_name == "mail.tailspintoys.com"


@pytest.mark.parametrize(
    ("greeting", "script", "where"),
    [
        ("554 5.7.1 \udcff\udcfe go away", (), "greeting"),
        ("220 bytes.example", (("EHLO", "550 5.7.1 \udcc3( no"),), "detail"),
    ],
    ids=["greeting", "ehlo"],
)
def test_bytes_that_are_not_utf8_are_recorded_as_visible_escapes(
    tmp_path: Path, greeting: str, script: tuple[tuple[str, str], ...], where: str
) -> None:
    # Given a server whose replies carry bytes that are not UTF-8 (sent as the surrogates stand for)
    host = LabHost("bytes.example", "127.0.77.91", kind=HostKind.GREETING, greeting=greeting, script=script)

    async def main() -> SessionFacts:
        async with await start_host(host, 0, maildir=tmp_path) as server:
            return await probe_session(host.ip, server.port, host.name, ehlo_name="probe.invalid", timeout=5.0)

    facts = asyncio.run(main())

    # Then the facts are valid Unicode (JSON, SQLite and terminals take them), the bytes shown as \xNN
    text = getattr(facts, where)
    assert "\\xff\\xfe go away" in text or "\\xc3( no" in text
    for value in (facts.greeting, facts.detail, *facts.transcript):
        value.encode("utf-8")


def test_a_session_cancelled_by_the_deadline_ends_at_once_without_a_goodbye() -> None:
    # Given a server that greets, then reads every command and answers none (not even QUIT)
    received: list[bytes] = []
    closed = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 stall.example ESMTP\r\n")
        await writer.drain()
        while line := await reader.readline():
            received.append(line)
        closed.set()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.77.92", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            probe = probe_session("127.0.77.92", port, "stall.example", ehlo_name="probe.invalid", timeout=30.0)
            task = asyncio.create_task(probe)
            while not received:  # noqa: ASYNC110 - waiting for the server to see EHLO
                await asyncio.sleep(0.01)
            # When the run's deadline cancels the session while it waits for the EHLO reply
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(closed.wait(), 5)

    asyncio.run(main())

    # Then the connection was closed without QUIT, whose reply could hold the run past its deadline
    assert [line.split()[0] for line in received] == [b"EHLO"]


# --- a multi-line rejection that never ends ----------------------------------------------------------------


def test_an_endless_421_greeting_is_a_rejected_greeting_with_its_code_and_first_lines(lab: Lab) -> None:
    # Given endless421.example, whose greeting is 421- lines without end (aiosmtplib gives up at 32 KiB)
    facts = session(lab, "127.0.20.28", "mx.endless421.example", timeout=5.0)
    # Then the session records a rejected greeting: code 421, its first lines, and that it never ended
    assert (facts.reached, facts.error, facts.greeting_code) == (
        SessionStage.CONNECT, SessionError.GREETING_REJECTED, 421,
    )  # fmt: skip
    assert facts.greeting_unfinished
    line = "4.7.0 mx.endless421.example Too many connections from your address, try again later"
    assert facts.greeting.split("\n")[0] == line and len(facts.greeting.split("\n")) <= 5
    assert facts.detail.startswith(f"421 {line} (a multi-line greeting that never ended: given up on: ")
    assert facts.transcript[0] == f"S: 421-{line}" and len(facts.transcript) <= 5
    assert facts.banner_s is not None and facts.ehlo_s is None


async def _rejection_that(end: str, timeout: float) -> SessionFacts:  # noqa: ASYNC109 - the probe's timeout
    """Probe a server that greets with two 421- lines and then stalls or hangs up."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"421-4.7.0 busy.example Too many connections\r\n421-4.7.0 come back later\r\n")
        await writer.drain()
        if end == "stalls":
            await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(serve, "127.0.77.93", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        async with asyncio.timeout(timeout * 3):  # the greeting's one timeout, with room for a slow machine
            return await probe_session("127.0.77.93", port, "busy.example", ehlo_name="probe.invalid", timeout=timeout)


@pytest.mark.parametrize(
    ("end", "why"),
    [("stalls", "not finished within 1 s"), ("hangs up", "the server closed the connection in the middle of it")],
)
def test_a_421_greeting_that_stalls_or_is_cut_off_is_still_a_rejected_greeting(end: str, why: str) -> None:
    facts = asyncio.run(_rejection_that(end, timeout=1.0))
    assert (facts.error, facts.greeting_code, facts.greeting_unfinished) == (SessionError.GREETING_REJECTED, 421, True)
    assert facts.greeting.startswith("4.7.0 busy.example Too many connections")
    assert facts.detail == (
        f"421 4.7.0 busy.example Too many connections (a multi-line greeting that never ended: {why})"
    )


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (b"421-4.7.0 a\r\n421-4.7.0 b\r\n421-4.7", (421, ("4.7.0 a", "4.7.0 b", "4.7"))),
        (b"554-no\n554-no\n554-no\n554-no\n554-no\n554-no\n", (554, ("no",) * 5)),  # at most five lines
        (b"421-a\r\n451-b\r\n", (421, ("a",))),  # another code is not the same reply
        (b"220-mx.example ESMTP\r\n", None),  # not a rejection
        (b"421 4.7.0 done\r\n", None),  # a complete one-line reply: aiosmtplib reads it itself
        (b"", None),
    ],
)
def test_the_start_of_an_unfinished_rejection_is_read_from_the_peeked_bytes(
    start: bytes, expected: tuple[int, tuple[str, ...]] | None
) -> None:
    from diag.net.smtp import _unfinished_rejection

    assert _unfinished_rejection(start) == expected


def test_sessions_one_after_another_in_one_event_loop_all_complete(lab: Lab) -> None:
    # After a session with TLS the transport beneath it waits for the server's close_notify; the next socket must
    # not get its descriptor number while the event loop still polls it ("File descriptor N is used by
    # transport"), which is how a worker's parent probes one host after another.
    async def in_turn() -> list[SessionFacts]:
        return [
            await probe_session(ip, lab.smtp_port, name, ehlo_name="probe.diag.invalid", timeout=5.0)
            for ip, name in [("127.0.1.10", "contoso-com.mail.protection.outlook.com"),
                             ("127.0.10.10", "mail.contoso.com"), ("127.0.30.10", "mail.tailspintoys.com")] * 2
        ]  # fmt: skip

    for facts in asyncio.run(in_turn()):
        assert (facts.reached, facts.error) == (SessionStage.DONE, None), facts.detail


# --- the goodbye: QUIT is always sent, its reply is not waited for by a run ---------------------------------


def test_a_run_gets_the_facts_without_waiting_for_the_reply_to_quit_which_is_still_sent() -> None:
    # Given a server that greets, answers EHLO, and holds its reply to QUIT until told to answer
    received: list[bytes] = []
    answer_quit = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 slow-bye.example ESMTP\r\n")
        while line := await reader.readline():
            received.append(line.split()[0])
            if line.startswith(b"EHLO"):
                writer.write(b"250-slow-bye.example\r\n250 HELP\r\n")
            elif line.startswith(b"QUIT"):
                await answer_quit.wait()
                writer.write(b"221 bye\r\n")
            await writer.drain()
        writer.close()

    async def main() -> tuple[SessionFacts, bool]:
        server = await asyncio.start_server(serve, "127.0.77.94", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            run = RunContext(RunOptions(ehlo_name="probe.invalid", timeout=30.0, smtp_port=port))
            # When the run's session ends (bounded below the 5 s a session waits for that reply at most: one that
            # waited would end only after the bound)
            async with asyncio.timeout(4):
                facts = await run.smtp_session("127.0.77.94", "slow-bye.example")
                while b"QUIT" not in received:  # noqa: ASYNC110 - waiting for the server to read QUIT
                    await asyncio.sleep(0.01)
            answered_before = answer_quit.is_set()
            answer_quit.set()
            await run.aclose()
            return facts, answered_before

    facts, answered_before = asyncio.run(main())
    # Then the facts came while the reply to QUIT was still held, and the server got the QUIT
    assert not answered_before
    assert received == [b"EHLO", b"QUIT"]
    assert facts.reached is SessionStage.DONE and facts.transcript[-1] == "C: QUIT"


def test_the_facts_of_a_run_equal_those_of_a_session_that_waits_for_the_goodbye(lab: Lab) -> None:
    async def both() -> tuple[SessionFacts, SessionFacts]:
        waited = await probe_session(
            "127.0.1.10", lab.smtp_port, "contoso-com.mail.protection.outlook.com", ehlo_name="probe.diag.invalid",
            timeout=5.0,
        )  # fmt: skip
        run = RunContext(lab.run_options(timeout=5.0))
        try:
            return waited, await run.smtp_session("127.0.1.10", "contoso-com.mail.protection.outlook.com")
        finally:
            await run.aclose()

    waited, run = asyncio.run(both())
    timings = {"connect_s": None, "banner_s": None, "ehlo_s": None, "tls_s": None}
    assert dataclasses.replace(run, **timings) == dataclasses.replace(waited, **timings)
