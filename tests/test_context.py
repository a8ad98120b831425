"""What a check receives (diag/context.py): the run's shared SMTP sessions, trust store and typed facts, against
the lab on loopback."""

from __future__ import annotations

import asyncio
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from diag.context import CheckContext, RunContext, RunOptions
from diag.lab.runner import Lab
from diag.net.smtp import SessionStage

CLOUD_IP = "127.0.1.10"  # contoso-com.mail.protection.outlook.com in the lab
TARPIT_IP = "127.0.20.12"  # mx.tarpit.example: accepts TCP, never greets


@dataclass(frozen=True, slots=True)
class Facts:
    value: int


def test_one_session_per_address_and_port_serves_every_requester(lab: Lab) -> None:
    async def scenario() -> None:
        run = RunContext(lab.run_options(timeout=5))
        try:
            first = run.smtp_session(CLOUD_IP, "contoso-com.mail.protection.outlook.com")
            again = run.smtp_session(CLOUD_IP, "another.name.for.it")
            explicit = run.smtp_session(CLOUD_IP, "x", port=lab.smtp_port)
            assert first is again is explicit
            assert run.session_count == 1
            facts = await first
            assert facts.reached is SessionStage.DONE
            # The name of the first requester is the one the session was opened for (SNI).
            assert facts.server_name == "contoso-com.mail.protection.outlook.com"
            other_port = run.smtp_session(CLOUD_IP, "x", port=1)
            assert other_port is not first and run.session_count == 2
            await asyncio.gather(other_port, return_exceptions=True)
        finally:
            await run.aclose()

    asyncio.run(scenario())


def test_aclose_cancels_a_session_nobody_waited_for(lab: Lab) -> None:
    async def scenario() -> None:
        run = RunContext(lab.run_options(timeout=60))
        session = run.smtp_session(TARPIT_IP, "mx.tarpit.example")
        await asyncio.sleep(0.1)  # connected, waiting for a banner that never comes
        await asyncio.wait_for(run.aclose(), 10)
        assert session.cancelled()

    asyncio.run(scenario())


def test_the_trust_store_is_loaded_once_per_run(lab: Lab) -> None:
    async def scenario() -> None:
        run = RunContext(lab.run_options())
        try:
            first, second = await asyncio.gather(run.trust_store(), run.trust_store())
            assert first is second and first
            assert any("diag lab" in cert.subject.rfc4514_string() for cert in first)
        finally:
            await run.aclose()

    asyncio.run(scenario())


def test_the_https_context_is_made_once_per_run_and_trusts_the_ca_file(lab: Lab) -> None:
    async def scenario() -> None:
        run = RunContext(lab.run_options())
        try:
            first, second = await asyncio.gather(run.https_context(), run.https_context())
            assert first is second
            assert first.verify_mode is ssl.CERT_REQUIRED and first.check_hostname
            assert any(("organizationName", "diag lab") in rdn for ca in first.get_ca_certs() for rdn in ca["subject"])
        finally:
            await run.aclose()

    asyncio.run(scenario())


def test_the_lazy_imports_are_imported_in_a_thread_and_one_that_fails_is_left_to_its_user(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module whose import waits for the test's word, one that cannot be imported, and the gate between them
    gate = "import threading\nentered, go = threading.Event(), threading.Event()\n"
    (tmp_path / "diag_test_gate.py").write_text(gate)
    (tmp_path / "diag_test_slow_module.py").write_text(
        "import threading\nimport diag_test_gate\nIMPORTED_IN = threading.current_thread().name\n"
        "diag_test_gate.entered.set()\nassert diag_test_gate.go.wait(30)\n"
    )
    (tmp_path / "diag_test_broken_module.py").write_text("raise ImportError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("diag_test_gate", "diag_test_slow_module", "diag_test_broken_module"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import diag_test_gate  # type: ignore[import-not-found]

    async def scenario() -> None:
        run = RunContext(lab.run_options(), lazy_imports=("diag_test_broken_module", "diag_test_slow_module"))
        await run.aclose()

    # The run is made and closed while the slow import is still under way: the imports do not hold it up
    asyncio.run(scenario())
    assert diag_test_gate.entered.wait(30)
    diag_test_gate.go.set()
    import diag_test_slow_module  # type: ignore[import-not-found]  # waits for the thread's import to end

    assert diag_test_slow_module.IMPORTED_IN == "diag-imports"
    with pytest.raises(ImportError, match="broken on purpose"):
        import diag_test_broken_module  # type: ignore[import-not-found]  # noqa: F401


def test_facts_of_a_required_check_are_typed(lab: Lab) -> None:
    async def scenario() -> None:
        run = RunContext(lab.run_options())
        try:
            ctx = CheckContext("contoso.com", run, {"mx": Facts(1), "port25": "not facts"})
            assert ctx.facts("mx", Facts) == Facts(1)
            assert ctx.options is run.options and ctx.resolver is run.resolver
            with pytest.raises(TypeError, match="facts of 'port25' are str, not Facts"):
                ctx.facts("port25", Facts)
            with pytest.raises(KeyError):
                ctx.facts("certificate", Facts)
        finally:
            await run.aclose()

    asyncio.run(scenario())


async def _accepted_while_waiting(options: RunOptions, targets: list[str], *, more_than: int) -> int:
    """Ask ``options``'s run context for a session with each of ``targets`` (addresses on loopback, each with a
    server of its own that accepts and never greets) and return how many connections the servers accepted by the
    time ``more_than`` were, or a second passed with the sessions still waiting for their banners."""
    accepted = 0
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        held.append(writer)

    servers = [await asyncio.start_server(silent, ip, 0) for ip in targets]
    run = RunContext(options)
    try:
        for ip, listener in zip(targets, servers, strict=True):
            run.smtp_session(ip, "silent.test", port=listener.sockets[0].getsockname()[1])
        for _ in range(20):
            if accepted > more_than:
                break
            await asyncio.sleep(0.05)
        return accepted
    finally:
        await run.aclose()
        for writer in held:
            writer.close()
        for listener in servers:
            listener.close()
            await listener.wait_closed()


@pytest.mark.parametrize("limit", [1, 2])
def test_connections_to_one_address_are_bounded_politely(limit: int) -> None:
    # Given a run allowing `limit` connections per address, and three mail hosts on one address that never greet
    options = RunOptions(timeout=30, per_host_connections=limit)
    # When a session with each is asked for, then only `limit` connect while the others wait their turn
    assert asyncio.run(_accepted_while_waiting(options, ["127.0.0.1"] * 3, more_than=limit)) == limit


def test_connections_in_all_are_bounded_across_addresses() -> None:
    options = RunOptions(timeout=30, total_connections=2)
    targets = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert asyncio.run(_accepted_while_waiting(options, targets, more_than=2)) == 2


def test_a_run_remembers_a_computation_once_per_key() -> None:
    made = []

    def make(value: str) -> str:
        made.append(value)
        return value.upper()

    async def body() -> None:
        run = RunContext(RunOptions())
        assert run.remember(("k", 1), lambda: make("a")) == "A"
        assert run.remember(("k", 1), lambda: make("b")) == "A"
        assert run.remember(("k", 2), lambda: make("c")) == "C"
        assert RunContext(RunOptions()).remember(("k", 1), lambda: make("d")) == "D"  # another run, its own values

    asyncio.run(body())
    assert made == ["a", "c", "d"]


def test_once_shares_one_piece_of_work_per_key_in_a_run() -> None:
    # Given two checks asking for the same probe in one run (it concerns both checked domains)
    started: list[str] = []

    async def probe(name: str) -> str:
        started.append(name)
        await asyncio.sleep(0.01)
        return f"sent {name}"

    async def go() -> list[str]:
        run = RunContext(RunOptions())
        try:
            futures = [run.once(("e2e", name), lambda name=name: probe(name)) for name in ("a", "a", "b")]
            return list(await asyncio.gather(*(asyncio.shield(future) for future in futures)))
        finally:
            await run.aclose()

    # Then it is done once per key, and every asker gets its outcome
    assert asyncio.run(go()) == ["sent a", "sent a", "sent b"]
    assert started == ["a", "b"]
