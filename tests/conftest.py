"""Shared fixtures: one lab world on loopback for the whole test session, and one run of every check over every
lab domain against it.

The lab runs in its own thread with its own event loop, as a separate server process would; tests talk to it
over real sockets with real clients (dnspython, aiosmtplib), never through mocks.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from checks import default_registry
from diag.lab.runner import Lab
from diag.lab.world import PURPOSES
from diag.model import DomainReport, Report
from diag.runner import run_checks

# Seconds per network operation in the shared run: the tarpit and the blackhole each cost one timeout, once; two
# leave room for the DNS questions of the policy checks, which the lab's one DNS server answers (signing as it
# goes) while the mail checks keep its thread busy.
LAB_RUN_TIMEOUT = 2.0


class LabThread:
    """A :class:`Lab` running in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.lab = Lab()
        self._thread = threading.Thread(target=self.loop.run_forever, name="diag-lab", daemon=True)

    def start(self) -> Lab:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.lab.start(), self.loop).result(timeout=30)
        return self.lab

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.lab.close(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    runner = LabThread()
    try:
        yield runner.start()
    finally:
        runner.stop()


@pytest.fixture(scope="session")
def lab_report(lab: Lab) -> Report:
    """Every check over every lab domain, once per session: the checks' lab tests, the round trip of the JSON
    view and the renderers' lab tests read it (tests/checks, tests/render, tests/test_evidence.py)."""
    return asyncio.run(run_checks(list(PURPOSES), default_registry(), lab.run_options(timeout=LAB_RUN_TIMEOUT)))


@pytest.fixture
def domain_report(lab_report: Report):  # type: ignore[no-untyped-def]
    """The shared run's report of one domain."""

    def get(domain: str) -> DomainReport:
        (report,) = [d for d in lab_report.domains if d.domain == domain]
        return report

    return get


@pytest.fixture(scope="session")
def lab_domains(lab_report: Report) -> Callable[..., Report]:
    """The shared run's report of the given domains alone."""

    def subset(*domains: str) -> Report:
        return Report(lab_report.started_at, lab_report.finished_at,
                      tuple(d for d in lab_report.domains if d.domain in domains))  # fmt: skip

    return subset


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve_lab(*extra: str, attempts: int = 5) -> tuple[subprocess.Popen[str], list[str]]:
    """``diag lab serve`` on fresh ports, and the command its second line says reaches it. A port free on
    127.0.0.1 may be held on a lab address (127.0.10.10, ...) by another test's lab, which runs side by side under
    xdist: then it is started again on other ports. Any other failure fails the test with the lab's words."""
    for _ in range(attempts):
        serve = subprocess.Popen(
            [sys.executable, "-m", "diag", "lab", "serve", "--smtp-port", str(_free_port()),
             "--dns-port", str(_free_port()), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert serve.stdout is not None
        lines = [serve.stdout.readline() for _ in range(2)]
        if "reach it with: " in lines[1]:
            return serve, lines[1].split("reach it with: ", 1)[1].split()
        _, err = serve.communicate(timeout=20)
        assert "address already in use" in err, err
    raise AssertionError(f"diag lab serve found no free port in {attempts} attempts")


@pytest.fixture(scope="session")
def serve_lab() -> Callable[..., tuple[subprocess.Popen[str], list[str]]]:
    """Start ``diag lab serve`` (extra options as arguments): the process, and the command that reaches it."""
    return _serve_lab
