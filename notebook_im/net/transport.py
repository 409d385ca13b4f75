"""asyncio transports for SIP over sockets: one UDP socket and one TCP listener per local address (plus a TLS
listener when given a server context), and a pool of TCP/TLS connections keyed by the remote address. It
implements the `net.base.Transport` protocol; a stack `attach`es to it to hear what arrives.

Stream framing uses the sans-IO `StreamFramer`. Connections are reused in both directions: a response
or a request to an address we already have a connection with goes over that connection (how a
registered TCP client is reached through the flow it opened, RFC 5626 style).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

from ..sip.errors import RemoteProtocolError
from ..sip.parser import StreamFramer
from .base import Addr, Target, TransportEvents
from .impairment import Impairment
from .udp import BatchedUdp

log = logging.getLogger("notebook_im.net")

LINGER = 2.0  # seconds a stream is read and discarded after an answer-then-close
LINGER_BYTES = 32 * 2**20  # ... and bytes at most

__all__ = ["Addr", "LINGER", "LINGER_BYTES", "Target", "TransportLayer"]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: TransportLayer) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        self.owner.deliver(data, "udp", (addr[0], addr[1]), self.owner.udp_addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)


class _Stream(asyncio.Protocol):
    """One TCP or TLS connection: frames messages by Content-Length and hands them to the owner."""

    def __init__(self, owner: TransportLayer, remote: Addr | None = None, name: str = "tcp") -> None:
        self.owner = owner
        self.name = name
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.remote: Addr | None = remote
        self.local: Addr = owner.tcp_addr if name == "tcp" else owner.tls_addr
        self.last_activity = owner.now()
        self.partial_since: float | None = None  # when an incomplete message started waiting in the framer
        self._held: list[bytes] | None = None  # writes held while a batch of received messages is handled
        self.lingering: int | None = None  # bytes discarded since an answer-then-close began (`_linger`)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.remote = (peer[0], peer[1])
        sock = transport.get_extra_info("sockname")
        if sock:
            self.local = (sock[0], sock[1])
        if self.remote is not None:
            if len(self.owner.connections) >= self.owner.max_connections:
                self.owner.report_drop(b"", self.name, self.remote, "connection refused: too many open connections")
                transport.close()
                return
            self.owner.connections[self.remote] = self
        sock_obj = transport.get_extra_info("socket")
        if sock_obj is not None:
            try:
                sock_obj.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        if self.lingering is not None:  # answered and half-closed: discard the rest, bounded
            self.lingering += len(data)
            if self.lingering > LINGER_BYTES and self.transport is not None:
                self.transport.close()
            return
        now = self.last_activity = self.owner.now()
        try:
            messages = self.framer.feed(data)
            if self.framer.buffered:
                if self.partial_since is None:
                    self.partial_since = now
            else:
                self.partial_since = None
        except RemoteProtocolError as exc:
            self.owner.report_drop(data, self.name, self.remote, f"unframeable stream: {exc.reason}")
            if self.transport:
                self.transport.close()
            return
        if len(messages) == 1:
            self.owner.deliver(messages[0], self.name, self.remote or ("", 0), self.local)
        elif messages:
            # several messages in one read (a busy peer): what we write back meanwhile goes out in one send() at
            # the end, not one system call per response
            self._held = []
            try:
                for m in messages:
                    self.owner.deliver(m, self.name, self.remote or ("", 0), self.local)
            finally:
                held, self._held = self._held, None
                if held:
                    self._write_now(b"".join(held))
        broken = self.framer.broken
        if broken is not None and self.transport is not None and not self.transport.is_closing():
            # the last message was answered (413); the rest of its body cannot be skipped: close once written
            self.owner.report_drop(b"", self.name, self.remote, f"unframeable stream: {broken.reason}")
            self._linger()

    def _linger(self) -> None:
        """Close after an answer without losing it: a peer still sending (a 10 MB body) would get a reset for
        the unread bytes, and a reset can destroy the answer before it is read. So: half-close (our FIN after the
        answer), read and discard what still comes for a while (`LINGER` seconds, `LINGER_BYTES` at most), then
        close (the lingering close of HTTP servers). TLS cannot half-close: it closes at once."""
        t = self.transport
        assert t is not None
        if not t.can_write_eof():
            t.close()
            return
        t.write_eof()
        self.lingering = 0
        loop = asyncio.get_running_loop()
        loop.call_later(LINGER, t.close)

    def eof_received(self) -> bool | None:
        return None  # the peer is done sending: close our side too (after what we still have to write)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.remote is not None and self.owner.connections.get(self.remote) is self:
            del self.owner.connections[self.remote]
            if self.owner.events is not None and not self.owner.closing:
                self.owner.events.connection_lost(self.name, self.remote)

    def write(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
        else:
            self._write_now(data)

    def _write_now(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.last_activity = self.owner.now()
            self.transport.write(data)


class TransportLayer:
    """UDP + TCP on one local address. All methods run on the runtime loop."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        transports: tuple[str, ...] = ("udp", "tcp"),
        tls_server: ssl.SSLContext | None = None,
        tls_port: int = 0,
        tls_client: ssl.SSLContext | None = None,
        impairment: Impairment | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.events: TransportEvents | None = None  # the stack that hears what arrives (`attach`)
        self.transports = transports
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.AbstractServer | None = None
        self.connections: dict[Addr, _Stream] = {}  # open stream connections by remote address (either side)
        self._pending: dict[Addr, asyncio.Task] = {}
        self._pending_data: dict[Addr, list[bytes]] = {}
        self.udp_addr: Addr = (host, port)
        self.tcp_addr: Addr = (host, port)
        # TLS: a listener (servers) on its own port, and a client context for connections we open
        self.tls_server = tls_server
        self.tls_client = tls_client
        self.tls_port = tls_port
        self.tls_addr: Addr = (host, tls_port)
        self._tls_listener: asyncio.AbstractServer | None = None
        self.impairment = impairment  # loss/reorder applied to datagrams we send (tests, teaching)
        self.closing = False
        self.reuse_port = False  # SO_REUSEPORT on the UDP socket: a server's worker processes share its port
        # stream hygiene: an idle connection is closed after idle_timeout s; a peer that leaves a message
        # incomplete for read_timeout s (slowloris) is cut off; at most max_connections are open at once
        self.idle_timeout: float | None = 600.0
        self.read_timeout: float = 30.0
        self.max_connections = 10_000
        self._sweeper: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, events: TransportEvents) -> None:
        """Report received data, drops, send failures and lost connections to `events` (the stack)."""
        self.events = events

    def now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.read_timeout / 2, (self.idle_timeout or 2.0) / 2))
            now = self.now()
            for conn in list(self.connections.values()):
                if conn.transport is None or conn.transport.is_closing():
                    continue
                if conn.partial_since is not None and now - conn.partial_since > self.read_timeout:
                    self.report_drop(
                        b"",
                        conn.name,
                        conn.remote,
                        f"incomplete message for {self.read_timeout:g} s: connection closed",
                    )
                    conn.transport.close()
                elif self.idle_timeout is not None and now - conn.last_activity > self.idle_timeout:
                    conn.transport.close()

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        if self._sweeper is None and any(t in self.transports for t in ("tcp", "tls")):
            self._sweeper = loop.create_task(self._sweep())
        last_exc: Exception | None = None
        for _attempt in range(20):
            try:
                await self._bind(loop)
                return
            except OSError as exc:  # port 0: UDP got a port that TCP cannot have; try another
                last_exc = exc
                await self._close_listeners()
                if self.port:
                    raise
        raise OSError(f"could not bind UDP and TCP to one port on {self.host}: {last_exc}")

    async def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        port = self.port
        if "udp" in self.transports:
            if isinstance(loop, asyncio.SelectorEventLoop):  # stock asyncio: read datagrams in batches (net/udp.py)
                proto = _Udp(self)
                self._udp = BatchedUdp.bind(  # type: ignore[assignment]
                    loop, self.host, port, proto.datagram_received, reuse_port=self.reuse_port
                )
            else:  # uvloop: its own transport is already fast
                family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
                self._udp, _ = await loop.create_datagram_endpoint(
                    lambda: _Udp(self), local_addr=(self.host, port), family=family, reuse_port=self.reuse_port or None
                )
            sock = self._udp.get_extra_info("sockname")
            port = sock[1]
            self.udp_addr = (self.host, port)
            s = self._udp.get_extra_info("socket")
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    s.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
                except OSError:
                    pass
        if "tcp" in self.transports:
            self._server = await loop.create_server(lambda: _Stream(self), self.host, port, reuse_address=True)
            port = self._server.sockets[0].getsockname()[1]
            self.tcp_addr = (self.host, port)
        self.port = port
        if self.tls_server is not None and self._tls_listener is None:
            self._tls_listener = await loop.create_server(
                lambda: _Stream(self, name="tls"),
                self.host,
                self.tls_port,
                ssl=self.tls_server,
                reuse_address=True,
                ssl_handshake_timeout=10,
            )
            self.tls_port = self._tls_listener.sockets[0].getsockname()[1]
            self.tls_addr = (self.host, self.tls_port)

    async def _close_listeners(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._server is not None:
            self._server.close()
            self._server = None

    def deliver(self, data: bytes, transport: str, remote: Addr, local: Addr) -> None:
        """What a socket or stream received: to the attached stack."""
        if self.events is not None:
            self.events.data_received(data, transport, remote, local)

    def report_drop(self, data: bytes, transport: str, remote: Addr | None, reason: str) -> None:
        """Bytes dropped (an unframeable stream, a refused connection): to the attached stack, to count."""
        if self.events is not None:
            self.events.dropped(data, transport, remote, reason)

    def local_addr(self, transport: str) -> Addr:
        if transport == "udp":
            return self.udp_addr
        if transport == "tls" and self._tls_listener is not None:
            return self.tls_addr
        return self.tcp_addr

    def has_connection(self, addr: Addr) -> bool:
        return addr in self.connections

    def source_addr(self, target: Target) -> Addr:
        """The local address datagrams/segments to `target` leave from (for traces and pcaps)."""
        if target.transport != "udp":
            conn = self.connections.get(target.addr)
            if conn is not None:
                return conn.local
        return self.local_addr(target.transport)

    def keepalive(self, target: Target) -> None:
        """RFC 5626 §3.5.1 CRLF keep-alive on an open stream connection (keeps NATs and idle timers quiet)."""
        conn = self.connections.get(target.addr)
        if conn is not None:
            conn.write(b"\r\n\r\n")

    @property
    def connection_count(self) -> int:
        return len(self.connections)

    def send(self, data: bytes, target: Target) -> None:
        """Send bytes; TCP connects first if no connection to the address exists."""
        if target.transport == "udp":
            if self._udp is None:
                raise RuntimeError("transport is closed")
            if self.impairment is None:
                self._udp.sendto(data, target.addr)
            else:
                self.impairment.sendto(self._udp, data, target.addr)
            return
        if target.transport not in ("tcp", "tls"):
            raise ValueError(f"unsupported transport {target.transport!r}")
        conn = self.connections.get(target.addr)
        if conn is not None:
            conn.write(data)
            return
        self._pending_data.setdefault(target.addr, []).append(data)
        if target.addr not in self._pending:
            self._pending[target.addr] = asyncio.get_running_loop().create_task(
                self._connect(target.addr, target.transport)
            )

    async def _connect(self, addr: Addr, name: str = "tcp") -> None:
        loop = asyncio.get_running_loop()
        kwargs: dict = {}
        if name == "tls":
            kwargs = {
                "ssl": self.tls_client or ssl.create_default_context(),
                "server_hostname": addr[0],
                "ssl_handshake_timeout": 10,
            }
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: _Stream(self, addr, name), addr[0], addr[1], **kwargs), 15
            )
        except ssl.SSLCertVerificationError as exc:
            self._connect_failed(
                addr,
                name,
                f"TLS certificate verification failed for {addr[0]}:{addr[1]}: "
                f"{exc.verify_message or exc.reason} (pass ca_file=... to trust its CA, "
                "or verify=False in a lab)",
            )
            return
        except (OSError, asyncio.TimeoutError) as exc:
            what = "TLS connection" if name == "tls" else "connection"
            self._connect_failed(addr, name, f"{what} to {addr[0]}:{addr[1]} failed: {exc or type(exc).__name__}")
            return
        self._pending.pop(addr, None)
        conn = self.connections.get(addr)
        for data in self._pending_data.pop(addr, []):
            if conn is not None:
                conn.write(data)

    def _connect_failed(self, addr: Addr, name: str, reason: str) -> None:
        self._pending.pop(addr, None)
        self._pending_data.pop(addr, None)
        if self.events is not None:
            self.events.send_failed(name, addr, reason)

    async def close(self) -> None:
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for task in self._pending.values():
            task.cancel()
        self._pending.clear()
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.close()
        self.connections.clear()
        for listener in (self._server, self._tls_listener):
            if listener is not None:
                listener.close()
                try:
                    await asyncio.wait_for(listener.wait_closed(), 2)
                except asyncio.TimeoutError:
                    pass
        self._tls_listener = None
        await self._close_listeners()
