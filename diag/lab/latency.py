"""Network latency for the lab, without root: delaying proxies in front of its servers.

``diag lab serve --latency 50ms`` puts a :class:`TcpDelay` in front of every lab mail host and a :class:`UdpDelay`
and a :class:`TcpDelay` in front of its DNS server; the servers themselves listen on other ports of the same
addresses. Every packet of the lab then takes the round-trip time it would take over a network with that RTT,
so the time a probe needs can be measured against its critical path (bench/check_latency.py), on loopback and
without ``tc netem``.

How one round trip is spent:

* Each byte is delivered half an RTT after the proxy received it, in each direction, in order.
* A TCP connection: the client's ``connect()`` completes at once (the kernel answers the SYN; no user-space
  program can delay that), so the proxy opens its connection to the server one and a half RTTs later. The
  server's first bytes (an SMTP greeting) then reach the client two RTTs after it connected, and a client that
  sends first (DNS over TCP, a TLS ClientHello) has its bytes delivered when the server's connection is open:
  as over a real network, where ``connect()`` itself takes one RTT, in sum; only the split between the connect
  and the first reply differs.
* A FIN or a reset is passed on like data, half an RTT later; a connection the server refuses is closed.
* A UDP datagram is sent on half an RTT after it arrived, from a socket of the proxy's own per client address,
  and the answer goes back half an RTT after that.

The proxies read without limit while data waits out its delay (the lab carries small messages); a client that
stalls its reading stops the proxy reading from the server (TCP flow control is passed on).
"""

from __future__ import annotations

import asyncio
import errno
import re
from collections import deque
from collections.abc import Callable
from typing import cast

from diag.errors import LabError

__all__ = ["TcpDelay", "UdpDelay", "parse_latency", "start_udp_and_tcp"]

# Bytes due within this much of now are sent in the same callback: the event loop wakes timers that early too.
_SLACK = 0.0005
# A per-client UDP socket with no datagram either way for this long is closed (DNS clients use a fresh source
# port for every query).
_UDP_IDLE = 30.0
_BIND_ATTEMPTS = 32
_LATENCY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$")


def parse_latency(text: str) -> float:
    """``50ms``, ``0.05s`` or ``50`` (milliseconds) as seconds; ValueError says what is wrong."""
    match = _LATENCY.match(text)
    if match is None:
        raise ValueError("expected a round-trip time such as 50ms or 0.05s")
    value = float(match.group(1))
    seconds = value if match.group(2) == "s" else value / 1000
    if seconds > 10:
        raise ValueError("at most 10 s")
    return seconds


class _End:
    """A marker in a :class:`_Delayed` queue: the stream ended with a FIN (``reset`` False) or a reset."""

    def __init__(self, *, reset: bool) -> None:
        self.reset = reset


_FIN = _End(reset=False)
_RESET = _End(reset=True)


class _Delayed:
    """One direction of a connection: what was received, each piece sent ``delay`` seconds later, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, finished: Callable[[], None]) -> None:
        self._loop = loop
        self._delay = delay
        self._finished = finished
        self._queue: deque[tuple[float, bytes | _End]] = deque()
        self._target: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def push(self, data: bytes | _End) -> None:
        self._queue.append((self._loop.time() + self._delay, data))
        self._schedule()

    def connect(self, target: asyncio.Transport) -> None:
        """Send to ``target`` from now on (what became due before is sent at once)."""
        self._target = target
        self._schedule()

    def abort(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._queue.clear()

    def _schedule(self) -> None:
        if self._timer is None and self._queue and self._target is not None:
            self._timer = self._loop.call_at(self._queue[0][0], self._flush)

    def _flush(self) -> None:
        self._timer = None
        target = self._target
        assert target is not None
        due = self._loop.time() + _SLACK
        while self._queue and self._queue[0][0] <= due:
            _, data = self._queue.popleft()
            if target.is_closing():
                self._queue.clear()
                return
            if isinstance(data, bytes):
                target.write(data)
            elif data.reset:
                target.abort()
                return
            else:
                try:
                    target.write_eof()
                except OSError:  # the peer is gone already (it reset the connection)
                    target.abort()
                    return
                self._finished()
        self._schedule()


class _Side(asyncio.Protocol):
    """One of the two connections of a proxied TCP connection: what it receives goes into ``outbound``."""

    def __init__(self, pair: _Pair, outbound: _Delayed) -> None:
        self._pair = pair
        self._outbound = outbound
        self._ended = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._outbound.push(data)

    def eof_received(self) -> bool:
        self._ended = True
        self._outbound.push(_FIN)  # the other direction stays open (a half-close) until it ends too
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._ended and not self._pair.closing:
            self._outbound.push(_RESET)  # reset, or closed under us: the other side is aborted as well
        self._pair.side_lost()

    def pause_writing(self) -> None:
        self._pair.other(self).pause_reading()

    def resume_writing(self) -> None:
        self._pair.other(self).resume_reading()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


class _Pair:
    """A client's connection to the proxy and the proxy's connection to the server."""

    def __init__(self, proxy: TcpDelay, loop: asyncio.AbstractEventLoop, rtt: float) -> None:
        self._proxy = proxy
        self._ended = 0
        self.closing = False
        self.up = _Delayed(loop, rtt / 2, self._direction_ended)  # client to server
        self.down = _Delayed(loop, rtt / 2, self._direction_ended)  # server to client
        self.client = _Side(self, self.up)
        self.server = _Side(self, self.down)
        self.opening: asyncio.Task[None] | None = None

    def other(self, side: _Side) -> _Side:
        return self.server if side is self.client else self.client

    def _direction_ended(self) -> None:
        self._ended += 1
        if self._ended == 2:  # a FIN each way: both connections are done
            self.closing = True
            for side in (self.client, self.server):
                if side.transport is not None:
                    side.transport.close()

    def side_lost(self) -> None:
        if self.opening is not None and not self.opening.done() and self.client.transport is not None:
            if self.client.transport.is_closing():
                self.opening.cancel()  # the client left before the server's connection was opened
        if all(s.transport is None or s.transport.is_closing() for s in (self.client, self.server)):
            self._proxy.forget(self)

    def abort(self) -> None:
        self.closing = True
        if self.opening is not None:
            self.opening.cancel()
        for direction in (self.up, self.down):
            direction.abort()
        for side in (self.client, self.server):
            if side.transport is not None:
                side.transport.abort()


class TcpDelay:
    """A TCP proxy that adds ``rtt`` seconds of round-trip time (module docstring); an async context manager."""

    def __init__(self, upstream: tuple[str, int], rtt: float) -> None:
        self._upstream = upstream
        self._rtt = rtt
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self.port = 0

    async def start(self, ip: str, port: int = 0) -> int:
        """Listen on ``ip``:``port`` (0 picks a free port); returns the port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: self._accepted(loop), ip, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def _accepted(self, loop: asyncio.AbstractEventLoop) -> asyncio.Protocol:
        pair = _Pair(self, loop, self._rtt)
        self._pairs.add(pair)
        pair.opening = loop.create_task(self._open(pair, loop))
        return pair.client

    async def _open(self, pair: _Pair, loop: asyncio.AbstractEventLoop) -> None:
        await asyncio.sleep(self._rtt * 1.5)  # the handshake's round trip and the client's first half (docstring)
        try:
            await loop.create_connection(lambda: pair.server, *self._upstream)
        except OSError:
            pair.abort()  # a reset, as from the server
            self.forget(pair)
            return
        assert pair.server.transport is not None and pair.client.transport is not None
        pair.up.connect(pair.server.transport)
        pair.down.connect(pair.client.transport)

    def forget(self, pair: _Pair) -> None:
        self._pairs.discard(pair)

    async def close(self) -> None:
        """Stop listening and abort every proxied connection."""
        if self._server is not None:
            self._server.close()
        for pair in list(self._pairs):
            pair.abort()
        self._pairs.clear()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> TcpDelay:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class _UdpFront(asyncio.DatagramProtocol):
    """The proxy's listening socket: datagrams from clients in, delayed answers out."""

    def __init__(self, proxy: UdpDelay) -> None:
        self._proxy = proxy
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._proxy.from_client(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for a client that went away


class _UdpBack(asyncio.DatagramProtocol):
    """The proxy's socket for one client address: its datagrams to the server, the server's answers back."""

    def __init__(self, proxy: UdpDelay, client: tuple[str | int, ...]) -> None:
        self._proxy = proxy
        self._client = client
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: list[bytes] = []
        self.last_used = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        for data in self.waiting:
            self.transport.sendto(data)
        self.waiting.clear()

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.waiting.append(data)
        elif not self.transport.is_closing():
            self.transport.sendto(data)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._proxy.from_server(data, self._client, self)

    def error_received(self, exc: Exception) -> None:
        pass  # the server is not listening: the client's query goes unanswered, as a lost datagram would


class UdpDelay:
    """A UDP proxy that adds ``rtt`` seconds of round-trip time (module docstring)."""

    def __init__(self, upstream: tuple[str, int], rtt: float) -> None:
        self._upstream = upstream
        self._rtt = rtt
        self._front: _UdpFront | None = None
        self._backs: dict[tuple[str | int, ...], _UdpBack] = {}
        self._opening: set[asyncio.Task[object]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0

    async def start(self, ip: str, port: int = 0) -> int:
        """Listen on ``ip``:``port`` (0 picks a free port); returns the port."""
        self._loop = asyncio.get_running_loop()
        transport, self._front = await self._loop.create_datagram_endpoint(
            lambda: _UdpFront(self), local_addr=(ip, port)
        )
        self.port = int(transport.get_extra_info("sockname")[1])
        self._sweeper = self._loop.call_later(_UDP_IDLE, self._sweep)
        return self.port

    def from_client(self, data: bytes, client: tuple[str | int, ...]) -> None:
        assert self._loop is not None
        back = self._backs.get(client)
        if back is None:
            back = self._backs[client] = _UdpBack(self, client)
            task: asyncio.Task[object] = self._loop.create_task(
                self._loop.create_datagram_endpoint(lambda: back, remote_addr=self._upstream)
            )
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)
        back.last_used = self._loop.time()
        self._loop.call_later(self._rtt / 2, back.send, data)

    def from_server(self, data: bytes, client: tuple[str | int, ...], back: _UdpBack) -> None:
        assert self._loop is not None
        back.last_used = self._loop.time()
        self._loop.call_later(self._rtt / 2, self._answer, data, client)

    def _answer(self, data: bytes, client: tuple[str | int, ...]) -> None:
        front = self._front.transport if self._front is not None else None
        if front is not None and not front.is_closing():
            front.sendto(data, client)

    def _sweep(self) -> None:
        assert self._loop is not None
        idle_since = self._loop.time() - _UDP_IDLE
        for client, back in list(self._backs.items()):
            if back.last_used < idle_since and back.transport is not None:
                back.transport.close()
                del self._backs[client]
        self._sweeper = self._loop.call_later(_UDP_IDLE, self._sweep)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in self._opening:
            task.cancel()
        for back in self._backs.values():
            if back.transport is not None:
                back.transport.close()
        self._backs.clear()
        if self._front is not None and self._front.transport is not None:
            self._front.transport.close()


async def start_udp_and_tcp(ip: str, port: int, upstream: tuple[str, int], rtt: float) -> tuple[UdpDelay, TcpDelay]:
    """Delaying proxies for UDP and TCP on the same ``ip``:``port`` (as DNS needs them); 0 picks a port free for
    both. Raises LabError when the port cannot be bound."""
    last_error: OSError | None = None
    for _ in range(_BIND_ATTEMPTS if port == 0 else 1):
        udp = UdpDelay(upstream, rtt)
        try:
            bound = await udp.start(ip, port)
        except OSError as exc:
            last_error = exc
            break
        tcp = TcpDelay(upstream, rtt)
        try:
            await tcp.start(ip, bound)
        except OSError as exc:
            await udp.close()
            last_error = exc
            if port == 0 and exc.errno == errno.EADDRINUSE:
                continue  # the kernel's free UDP port may be taken for TCP: try another one
            break
        return udp, tcp
    raise LabError(f"cannot bind the delaying proxies to {ip}:{port}: {last_error}") from last_error
