"""What the SIP stack needs of a transport, and what a transport tells the stack: two small protocols, so that
the stack takes a transport instead of building one (the sockets of `transport.TransportLayer`, or the
in-memory network of `memory.MemoryNetwork` that the loss tests use to run deterministically and fast).

`Target` names where a message goes: a transport name ("udp", "tcp", "tls") and an address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

Addr = tuple[str, int]


@dataclass(frozen=True)
class Target:
    """Where to send: transport name ("udp"/"tcp"/"tls"), host and port."""

    transport: str
    host: str
    port: int

    @property
    def addr(self) -> Addr:
        return (self.host, self.port)


class TransportEvents(Protocol):
    """What a transport reports to the stack attached to it (all on the loop thread)."""

    def data_received(self, data: bytes, transport: str, remote: Addr, local: Addr) -> None:
        """One datagram, or one message framed from a stream."""

    def dropped(self, data: bytes, transport: str, remote: Addr | None, reason: str) -> None:
        """Bytes that could not be framed (a stream that is then closed), or a refused connection."""

    def send_failed(self, transport: str, addr: Addr, reason: str) -> None:
        """Nothing can be sent to `addr` (connection refused, TLS verification failed, ...)."""

    def connection_lost(self, transport: str, addr: Addr) -> None:
        """A stream connection to `addr` closed."""


class Transport(Protocol):
    """What the stack asks of a transport (all on the loop thread)."""

    host: str
    port: int
    tls_port: int
    tls_server: object | None

    def attach(self, events: TransportEvents) -> None:
        """Report to `events` from now on (the stack calls this once, when it takes the transport)."""

    async def start(self) -> None:
        """Bind (the ports of a `port=0` transport are known afterwards)."""

    async def close(self) -> None:
        """Unbind and close every connection."""

    def send(self, data: bytes, target: Target) -> None:
        """Send bytes (a stream transport connects first when it has no connection to the address)."""

    def local_addr(self, transport: str) -> Addr:
        """Our address on `transport` (what goes in Via and Contact)."""

    def source_addr(self, target: Target) -> Addr:
        """The local address bytes to `target` leave from (a connection's own port on streams)."""

    def has_connection(self, addr: Addr) -> bool:
        """Is a stream connection to `addr` open (so a request can reach a client without a listener)?"""

    def keepalive(self, target: Target) -> None:
        """Send an RFC 5626 CRLF keep-alive on the connection to `target`, if there is one."""
