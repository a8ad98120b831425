"""A running relay: the spool recovered, the SMTP server listening, the deliverer working the queue.

    async with Relay(settings):
        await stopped.wait()

Closing stops the listener first (no new 250s), then lets in-flight deliveries finish within a short grace or
leaves them pending in the spool for the next start: nothing acknowledged is lost either way.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from types import TracebackType

from diag.net.dns import Resolver
from diag.relay.queue import Deliverer
from diag.relay.server import RelayServer
from diag.relay.settings import RelaySettings
from diag.relay.spool import Spool

__all__ = ["Relay"]

log = logging.getLogger("diag.relay")


class Relay:
    """One relay instance in the running event loop."""

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.spool = Spool(settings.spool)
        resolver = Resolver(settings.nameservers, timeout=settings.limits.operation_timeout)
        self.deliverer = Deliverer(settings, self.spool, resolver)
        self.server = RelayServer(settings, self.spool, on_queued=self.deliverer.queued)
        self._stop = asyncio.Event()
        self._delivering: asyncio.Task[None] | None = None

    async def start(self) -> None:
        quarantined = await asyncio.to_thread(self.spool.recover)
        for qid in quarantined:
            log.error("quarantined damaged spool file qid=%s dir=%s", qid, self.spool.quarantine)
        await self.server.start()
        # What start-up made (modules, settings, tables) lives as long as the relay: out of the collector's
        # way, so its full collections walk only what sessions and deliveries create.
        gc.freeze()
        self._delivering = asyncio.create_task(self.deliverer.run(self._stop), name=f"deliver:{self.settings.hostname}")
        log.info(
            "relay %s role=%s listening on %s spool=%s",
            self.settings.hostname, self.settings.role.value,
            ", ".join(f"{host}:{port}" for host, port in self.settings.listen), self.settings.spool,
        )  # fmt: skip

    async def close(self) -> None:
        await self.server.close()
        self._stop.set()
        if self._delivering is not None:
            await self._delivering
            self._delivering = None

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
