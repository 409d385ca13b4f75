"""`UdpRelay`: a real UDP hop on loopback that drops, duplicates, delays and reorders datagrams.

Put it between an endpoint and a server (`server=relay.uri`): each client gets its own upstream socket
(like a NAT), so the server's responses and requests find their way back through the relay. Used by the
loss tests and handy in teaching notebooks to watch retransmissions. Runs on the library loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..runtime import Operation, runtime
from .impairment import Impairment

Addr = tuple[str, int]


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay, client: Addr) -> None:
        self.relay = relay
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        # from the target back to the client, through the listening socket
        self.relay.forward(self.relay.listener, data, self.client, self.relay.downstream)


class _Listen(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        asyncio.ensure_future(self.relay.from_client(data, (addr[0], addr[1])))


class UdpRelay:
    """`UdpRelay(target=(host, port), upstream=Impairment(loss=0.2), downstream=Impairment(loss=0.2))`."""

    def __init__(
        self,
        target: Addr,
        *,
        upstream: Impairment | None = None,
        downstream: Impairment | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        max_clients: int = 1000,
    ) -> None:
        self.target = target
        self.upstream = upstream or Impairment()
        self.downstream = downstream or Impairment()
        self.host = host
        self.port = port
        self.max_clients = max_clients
        self.listener: asyncio.DatagramTransport | None = None
        self._clients: dict[Addr, _Upstream] = {}
        self._connecting: dict[Addr, asyncio.Future] = {}

    @property
    def uri(self) -> str:
        return f"sip:{self.host}:{self.port}"

    def start(self) -> Operation[UdpRelay]:
        """Bind the relay's listening socket; resolves with the relay (its `uri` is then final)."""

        async def run() -> UdpRelay:
            loop = asyncio.get_running_loop()
            self.listener, _ = await loop.create_datagram_endpoint(
                lambda: _Listen(self), local_addr=(self.host, self.port)
            )
            self.port = self.listener.get_extra_info("sockname")[1]
            return self

        return runtime().submit(run(), "UdpRelay.start()")

    def stop(self) -> None:
        """Close the relay's sockets (blocking)."""

        async def run() -> None:
            for up in self._clients.values():
                if up.transport:
                    up.transport.close()
            self._clients.clear()
            if self.listener:
                self.listener.close()

        runtime().submit(run(), "UdpRelay.stop()").result(5)

    def __enter__(self) -> UdpRelay:
        return self.start().result(5)

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def from_client(self, data: bytes, client: Addr) -> None:
        """A datagram from a client: on to the target through that client's own upstream socket (like a NAT)."""
        up = self._clients.get(client)
        if up is None:
            if client in self._connecting:
                await self._connecting[client]
                up = self._clients.get(client)
            elif len(self._clients) < self.max_clients:
                loop = asyncio.get_running_loop()
                fut = self._connecting[client] = loop.create_future()
                try:
                    _t, up = await loop.create_datagram_endpoint(
                        lambda: _Upstream(self, client), local_addr=(self.host, 0)
                    )
                    self._clients[client] = up
                finally:
                    fut.set_result(None)
                    del self._connecting[client]
        if up is not None and up.transport is not None:
            self.forward(up.transport, data, self.target, self.upstream)

    def forward(
        self, transport: asyncio.DatagramTransport | None, data: bytes, addr: Addr, impairment: Impairment
    ) -> None:
        """Send a datagram on through `transport`, impaired (dropped, duplicated, delayed, reordered)."""
        if transport is not None:
            impairment.sendto(transport, data, addr)
