"""An in-memory network: transports that pass SIP messages to each other on the library's loop, no sockets.

`MemoryNetwork()` hands out `MemoryTransport`s (the `base.Transport` protocol, as the sockets of
`transport.TransportLayer` are), one per endpoint or server:

    network = nim.MemoryNetwork()
    server = nim.Server(network=network).start().result()
    platform = nim.Platform(network=network)
    alice = platform.endpoint("sip:alice@example.test", server=server, impairment=nim.Impairment(loss=0.2, seed=1))

Why: the loss tests (and a tutorial that wants a lossy network on demand) need a network whose misbehaviour is
decided by the test and nothing else. Over real UDP the kernel adds its own (a full socket buffer drops
datagrams, two cores shared with the test make delivery late by tens of milliseconds), so a test of "20% loss"
was really "20% plus whatever the machine did", and it had to run with generous timers. Here a datagram is
lost, duplicated, delayed or held back exactly as its sender's `Impairment` draws from its seeded generator, in
send order, and an undamaged one arrives on the next loop iteration, so the same seeds give the same losses and
the timers can be as short as a LAN allows.

What it models: UDP (datagrams, to whoever holds the address when they arrive; to nobody if no one does), and TCP
as a reliable, ordered message pipe (a connection exists between two transports once one has sent to the other;
sending to an address nobody listens on fails as a refused connection; closing a transport tells its peers the
connection was lost). Not modelled: TLS (use sockets for that), partial stream reads, MTU.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .base import Addr, Target, TransportEvents

if TYPE_CHECKING:  # pragma: no cover
    from .impairment import Impairment

FIRST_PORT = 20000


class MemoryNetwork:
    """Addresses -> transports, and the delivery between them. One network per test (or notebook); the
    transports of different networks never see each other."""

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self._bound: dict[Addr, MemoryTransport] = {}
        self._next_port = FIRST_PORT
        self.sent = 0  # datagrams and stream messages handed to the network
        self.unreachable = 0  # datagrams that arrived where nobody listens

    def transport(
        self,
        host: str | None = None,
        port: int = 0,
        *,
        transports: tuple[str, ...] = ("udp", "tcp"),
        impairment: Impairment | None = None,
    ) -> MemoryTransport:
        """A new transport on this network (bound when the stack starts it); `port=0` takes the next free port.
        `impairment` damages the datagrams it sends (its streams stay reliable, as TCP is)."""
        return MemoryTransport(self, host or self.host, port, transports=transports, impairment=impairment)

    def bind(self, transport: MemoryTransport) -> int:
        """Give `transport` its address (the port asked for, or the next free one); OSError if taken."""
        port = transport.port
        if port == 0:
            while (transport.host, self._next_port) in self._bound:
                self._next_port += 1
            port = self._next_port
            self._next_port += 1
        if (transport.host, port) in self._bound:
            raise OSError(f"address {transport.host}:{port} is already in use on this memory network")
        self._bound[(transport.host, port)] = transport
        return port

    def unbind(self, transport: MemoryTransport) -> None:
        """Free `transport`'s address (it closed): datagrams sent there are lost from now on."""
        if self._bound.get(transport.addr) is transport:
            del self._bound[transport.addr]

    def at(self, addr: Addr) -> MemoryTransport | None:
        """The transport bound at `addr`, if any."""
        return self._bound.get(addr)

    def __repr__(self) -> str:
        return f"<MemoryNetwork {len(self._bound)} transports, {self.sent} sent>"


class MemoryTransport:
    """One endpoint's or server's transport on a `MemoryNetwork` (all methods on the library's loop)."""

    tls_port = 0
    tls_server: object | None = None

    def __init__(
        self,
        network: MemoryNetwork,
        host: str,
        port: int,
        *,
        transports: tuple[str, ...],
        impairment: Impairment | None,
    ) -> None:
        self.network = network
        self.host = host
        self.port = port
        self.transports = transports
        self.impairment = impairment
        self.events: TransportEvents | None = None
        self.streams: set[Addr] = set()  # addresses this transport has a "connection" with
        self.closing = False
        self._bound = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def addr(self) -> Addr:
        return (self.host, self.port)

    def attach(self, events: TransportEvents) -> None:
        self.events = events

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.port = self.network.bind(self)
        self._bound = True
        self.closing = False

    async def close(self) -> None:
        self.closing = True
        if self._bound:
            self.network.unbind(self)
            self._bound = False
        for addr in list(self.streams):  # our connections end: the other side hears it, as with a FIN
            peer = self.network.at(addr)
            if peer is not None and self.addr in peer.streams:
                peer.streams.discard(self.addr)
                peer.lost(self.addr)
        self.streams.clear()

    def lost(self, addr: Addr) -> None:
        """The stream connection with `addr` closed (its transport went away)."""
        if self.events is not None and not self.closing:
            self.events.connection_lost("tcp", addr)

    def local_addr(self, transport: str) -> Addr:
        return self.addr

    def source_addr(self, target: Target) -> Addr:
        return self.addr

    def has_connection(self, addr: Addr) -> bool:
        return addr in self.streams

    @property
    def connection_count(self) -> int:
        return len(self.streams)

    def keepalive(self, target: Target) -> None:
        """Nothing to keep alive: a memory connection does not time out."""

    def send(self, data: bytes, target: Target) -> None:
        if self.closing or self._loop is None:
            raise RuntimeError("transport is closed")
        if target.transport not in ("udp", "tcp"):
            raise ValueError(f"a memory network carries udp and tcp, not {target.transport!r}")
        self.network.sent += 1
        if target.transport == "tcp":
            self._send_stream(data, target.addr)
            return
        delays = self.impairment.decide() if self.impairment is not None else [0.0]
        for delay in delays:
            if delay <= 0:
                self._loop.call_soon(self._arrive, data, target.addr)
            else:
                self._loop.call_later(delay, self._arrive, data, target.addr)

    def _arrive(self, data: bytes, addr: Addr) -> None:
        dest = self.network.at(addr)
        if dest is None or dest.closing or dest.events is None or "udp" not in dest.transports:
            self.network.unreachable += 1  # as a datagram to a closed port: gone
            return
        dest.events.data_received(data, "udp", self.addr, addr)

    def _send_stream(self, data: bytes, addr: Addr) -> None:
        assert self._loop is not None
        dest = self.network.at(addr)
        if dest is None or dest.closing or "tcp" not in dest.transports:
            if self.events is not None:
                self._loop.call_soon(self._refused, addr)
            return
        self.streams.add(addr)
        dest.streams.add(self.addr)
        self._loop.call_soon(self._arrive_stream, dest, data)

    def _refused(self, addr: Addr) -> None:
        if self.events is not None:
            self.events.send_failed("tcp", addr, "connection refused (nobody listens there on the memory network)")

    def _arrive_stream(self, dest: MemoryTransport, data: bytes) -> None:
        if dest.closing or dest.events is None:
            return
        dest.events.data_received(data, "tcp", self.addr, dest.addr)

    def __repr__(self) -> str:
        return f"<MemoryTransport {self.host}:{self.port}{' closed' if self.closing else ''}>"


def memory_transport(network: Any, host: str, port: int, **kwargs: Any) -> MemoryTransport:
    """`network.transport(...)` with a clear error for anything that is not a MemoryNetwork."""
    if not isinstance(network, MemoryNetwork):
        raise TypeError(f"network must be a nim.MemoryNetwork(), not {type(network).__name__}")
    return network.transport(host, port, **kwargs)
