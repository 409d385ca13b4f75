"""A UDP socket on the library loop that reads datagrams in batches (the stock asyncio loop only).

asyncio's own datagram transport reads one datagram per readiness event: under load every SIP message then
costs a full turn of the event loop (an epoll_wait system call and the loop's bookkeeping) before the next is
read, about a tenth of what answering a MESSAGE costs. This endpoint reads up to `BATCH` datagrams each time
the socket is readable, and sends with a plain `sendto`, queueing only when the kernel's send buffer is full
(then it waits for the socket to be writable, as asyncio's transport does). uvloop's transport (libuv, in C)
needs none of this, so it is used as is when the loop is uvloop (see runtime.new_loop).

It offers the part of `asyncio.DatagramTransport` the transport layer uses: `sendto`, `close`,
`get_extra_info("sockname" | "socket")` and `is_closing`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Callable
from typing import Any

log = logging.getLogger("notebook_im.net")

BATCH = 64  # datagrams read per readiness event, at most (bounded: other work gets its turn)
MAX_DATAGRAM = 65535
MAX_QUEUED = 10_000  # datagrams waiting for send-buffer space before new ones are dropped (UDP may drop)


class BatchedUdp:
    """A bound UDP socket whose datagrams go to `on_datagram(data, addr)`."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, on_datagram: Callable[[bytes, Any], None]
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._on_datagram = on_datagram
        self._queue: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._closed = False
        self.dropped_sends = 0
        sock.setblocking(False)
        loop.add_reader(self._fd, self._read_ready)

    @classmethod
    def bind(
        cls,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        on_datagram: Callable[[bytes, Any], None],
        *,
        reuse_port: bool = False,
    ) -> BatchedUdp:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if reuse_port:  # several processes of one server share the port (server/workers.py)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            return cls(loop, sock, on_datagram)
        except BaseException:
            sock.close()
            raise

    def _read_ready(self) -> None:
        recvfrom, deliver = self._sock.recvfrom, self._on_datagram
        for _ in range(BATCH):
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket: not fatal for UDP
                log.debug("udp receive error: %s", exc)
                continue
            deliver(data, addr)
            if self._closed:
                return

    def sendto(self, data: bytes, addr: Any) -> None:
        if self._closed:
            raise RuntimeError("UDP socket is closed")
        if not self._queue:
            try:
                self._sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._fd, self._write_ready)
            except OSError as exc:  # unreachable destination etc.: UDP reports and goes on
                log.debug("udp send to %s failed: %s", addr, exc)
                return
        if len(self._queue) >= MAX_QUEUED:
            self.dropped_sends += 1
            return
        self._queue.append((data, addr))

    def _write_ready(self) -> None:
        while self._queue:
            data, addr = self._queue[0]
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("udp send to %s failed: %s", addr, exc)
            self._queue.popleft()
        self._loop.remove_writer(self._fd)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._sock.getsockname()
        if name == "socket":
            return self._sock
        return default

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        if self._queue:
            self._loop.remove_writer(self._fd)
            self._queue.clear()
        self._sock.close()
