"""Shared fixtures: one lab world on loopback for the whole test session.

The lab runs in its own thread with its own event loop, as a separate server process would; tests talk to it
over real sockets with real clients (dnspython, aiosmtplib), never through mocks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from diag.lab.runner import Lab


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
