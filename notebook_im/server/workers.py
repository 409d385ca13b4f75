"""A server on every core: `Server(workers=N)` / `notebook-im serve --workers N`.

The main process is the whole server (registrar, proxy, offline store, focus, TCP and TLS). N-1 worker processes
bind the same UDP port with SO_REUSEPORT, so the kernel spreads the datagrams over all N sockets by source
address. A worker relays what the stateless fast path takes (stateless.py: a pager MESSAGE to a user with one
device over UDP, the non-INVITE requests of a dialog, and the responses to these) with a copy of the registrar
that it keeps up to date from the main process's SQLite file (shared.py). Everything else it hands, as it came
and with the address it came from, to the main process over a Unix socket pair (SEQPACKET: message boundaries
kept, and a burst waits in the buffer); the main process handles it as if its own socket had read it, and
answers from the shared port, so the peer sees one server.

The processes tell each other, over the same socket pairs (worker to worker through the main process), what the
fast path needs across them: that a device answered a request another process timed (the kernel may deliver
the answer to any of them), that a worker found a device dead (the main process marks the binding, and the file
tells the other workers), and each worker's counters twice a second (`Server.stats` adds them up). A worker
keeps no message trace: a server with workers is for throughput, and `Server.trace` has what the main process
handled (all of it with the default `workers=1`).

A worker exits when its standard input closes, so it never outlives the main process.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import shutil
import socket
import struct
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.sink import NullSink
from ..core.stack import mark_received
from ..net.base import Addr
from ..net.transport import TransportLayer
from ..sip.message import Request
from ..sip.parser import parse_message
from ..sip.transaction import Timers, server_key
from .registrar import Binding, Registrar
from .shared import BindingReplica, SharedBindings

if TYPE_CHECKING:
    from .proxy import ProxyCore

log = logging.getLogger("notebook_im.server")

RAW, ANSWERED, DEAD, STATS = b"R", b"A", b"D", b"S"
_PORT = struct.Struct(">H")


def _pack_raw(data: bytes, remote: Addr) -> bytes:
    host = remote[0].encode()
    return RAW + _PORT.pack(remote[1]) + bytes([len(host)]) + host + data


def _unpack_raw(msg: bytes) -> tuple[bytes, Addr]:
    port = _PORT.unpack_from(msg, 1)[0]
    n = msg[3]
    return msg[4 + n :], (msg[4 : 4 + n].decode(), port)


MAX_QUEUED = 100_000  # messages waiting for buffer space on a link before new ones are dropped (and counted)


class _Link:
    """One end of a connected Unix SEQPACKET socket pair between the main process and a worker: messages keep
    their boundaries, and a burst waits in the socket buffer (4 MiB) and then in a bounded queue for the peer to
    read, rather than being lost (a Unix *datagram* socket queues only net.unix.max_dgram_qlen, 10, messages)."""

    def __init__(self, sock: socket.socket, on_message: Callable[[bytes], None]) -> None:
        self.sock = sock
        sock.setblocking(False)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
            except OSError:
                pass
        self.on_message = on_message
        self._queue: collections.deque[bytes] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.lost = 0
        self.closed = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._ready)

    def _ready(self) -> None:
        for _ in range(64):
            try:
                msg = self.sock.recv(70_000)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg = b""
            if not msg:  # the other end closed
                self.close()
                return
            try:
                self.on_message(msg)
            except Exception:  # noqa: BLE001 - one bad message must not stop the link
                log.exception("server workers: a message between processes failed")

    def send(self, msg: bytes) -> None:
        if self.closed:
            return
        if not self._queue:
            try:
                self.sock.send(msg)
                return
            except (BlockingIOError, InterruptedError):
                if self._loop is not None:
                    self._loop.add_writer(self.sock.fileno(), self._writable)
            except OSError:
                self.lost += 1
                return
        if len(self._queue) >= MAX_QUEUED:
            self.lost += 1
            return
        self._queue.append(msg)

    def _writable(self) -> None:
        while self._queue:
            try:
                self.sock.send(self._queue[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.lost += 1
            self._queue.popleft()
        if self._loop is not None:
            self._loop.remove_writer(self.sock.fileno())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.sock.fileno())
            if self._queue:
                self._loop.remove_writer(self.sock.fileno())
        self._queue.clear()
        self.sock.close()


class WorkerPool:
    """The main process's side: starts the workers, takes what they hand over, answers their news."""

    def __init__(self, proxy: ProxyCore, count: int) -> None:
        self.proxy = proxy
        self.count = count
        self._dir = Path(tempfile.mkdtemp(prefix="notebook_im-workers-"))
        self.shared = SharedBindings(self._dir / "bindings.sqlite")
        self._links: dict[int, _Link] = {}  # worker index -> its link
        self._procs: list[asyncio.subprocess.Process] = []
        self.worker_stats: dict[int, dict[str, int]] = {}
        self.handed_over = 0

    async def start(self) -> None:
        """Start the workers (after the main process bound its port) and wait until each has bound it too."""
        proxy = self.proxy
        proxy.registrar.mirror = self.shared
        relay = proxy.stateless
        relay.answered = lambda index, branch: self._to(index, ANSWERED + bytes([index]) + branch.encode())
        loop = asyncio.get_running_loop()
        transport = proxy.stack.transport
        host, port = transport.local_addr("udp")
        config = {
            "dir": str(self._dir),
            "host": host,
            "port": port,
            "key": relay.key.hex(),
            "timers": [proxy.stack.timers.t1, proxy.stack.timers.t2, proxy.stack.timers.t4],
            "device_timeout": proxy.device_timeout,
            "advertise": list(proxy.stack.advertise) if proxy.stack.advertise else None,
            "tcp_port": transport.local_addr("tcp")[1] if "tcp" in transport.transports else None,
            "main_pid": os.getpid(),
        }
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        for index in range(1, self.count):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            fd = theirs.fileno()
            link = _Link(ours, self._message)
            link.start(loop)
            self._links[index] = link
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "notebook_im.server.workers",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    env=env,
                    pass_fds=(fd,),
                )
            finally:
                theirs.close()  # the worker has its copy
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write((json.dumps({**config, "index": index, "fd": fd}) + "\n").encode())
            await proc.stdin.drain()
            self._procs.append(proc)
        for index, proc in enumerate(self._procs, 1):
            assert proc.stdout is not None
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), 30)
            except asyncio.TimeoutError:
                line = b""
            if line.strip() != b"ready":
                await self.close()
                raise OSError(f"server worker {index} did not start (exit status {proc.returncode}): {line[:200]!r}")

    def _to(self, index: int, msg: bytes) -> None:
        """Send `msg` to worker `index` (the main process's own news it handles itself)."""
        if index == 0:
            self._message(msg)
        else:
            link = self._links.get(index)
            if link is not None:
                link.send(msg)

    def _message(self, msg: bytes) -> None:
        kind = msg[:1]
        proxy = self.proxy
        if kind == RAW:
            data, remote = _unpack_raw(msg)
            self.handed_over += 1
            proxy.stack.data_received(data, "udp", remote, proxy.stack.transport.local_addr("udp"))
        elif kind == ANSWERED:  # A + the index of the process that timed the request + its branch
            if msg[1] == 0:
                proxy.stateless.device_answered(msg[2:].decode())
            else:  # one worker to another: passed on
                self._to(msg[1], msg)
        elif kind == DEAD:
            aor, key = json.loads(msg[1:])
            for binding in proxy.registrar.lookup(aor, time.monotonic()):
                if str(binding.contact) == key:
                    proxy.registrar.mark_dead(binding)
        elif kind == STATS:
            index, stats = json.loads(msg[1:])
            self.worker_stats[int(index)] = stats

    def totals(self) -> dict[str, int]:
        """The workers' counters added up (as last reported, twice a second)."""
        out: dict[str, int] = {}
        for stats in self.worker_stats.values():
            for k, v in stats.items():
                out[k] = out.get(k, 0) + v
        return out

    async def close(self) -> None:
        """Stop the workers (their standard input closes; killed if they do not go within 3 s)."""
        for proc in self._procs:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
        for proc in self._procs:
            try:
                await asyncio.wait_for(proc.wait(), 3)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        self._procs.clear()
        for link in self._links.values():
            link.close()
        self._links.clear()
        self.proxy.registrar.mirror = None
        self.shared.close()
        for path in self._dir.iterdir():
            path.unlink(missing_ok=True)
        self._dir.rmdir()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]


class _DeadReporter:
    """A worker registrar's mirror: a device found dead goes to the main process, which owns the registrar;
    local expiries need no report (the main process expires the same bindings itself)."""

    def __init__(self, link: _Link) -> None:
        self.link = link

    def put(self, binding: Binding) -> None:
        if binding.dead:
            self.link.send(DEAD + json.dumps([binding.aor, str(binding.contact)]).encode())

    def drop(self, aor: str, key: str) -> None:
        return None


class Worker:
    """A worker process's receiving side (it replaces the stack as the transport's listener): the fast path
    here, everything else to the main process as it came."""

    def __init__(self, proxy: ProxyCore, link: _Link, replica: BindingReplica, index: int) -> None:
        self.proxy = proxy
        self.stack = proxy.stack
        self.relay = proxy.stateless
        self.link = link
        self.replica = replica
        self.index = index
        self.handed_over = 0
        # the transactions whose requests went to the main process, until 64*T1 after: their retransmissions go
        # there too, to the transaction that absorbs them, rather than being relayed afresh once the user is back
        # online (oldest first; bounded)
        self._handed: OrderedDict[tuple[Any, ...], float] = OrderedDict()
        self.handed_for = 64 * proxy.stack.timers.t1
        self.max_handed = 100_000

    def data_received(self, data: bytes, transport: str, remote: Addr, local: Addr) -> None:
        stack = self.stack
        stack.stats["received"] += 1
        stack.note_heard(remote)
        if len(data) <= 4 and not data.strip():
            return  # keep-alive
        request: Request | None = None
        try:
            message = parse_message(data)
            if isinstance(message, Request):
                request = message
                taken = False
                if message.method != "ACK" and message.method != "CANCEL" and not self._was_handed(message):
                    mark_received(message, remote)
                    self.replica.refresh()
                    plan = self.relay.plan(message, transport)
                    if plan is not None:
                        self.relay.forward(message, plan, data, remote)
                        taken = True
            else:
                taken = self.relay.response(message, transport)
        except Exception:  # noqa: BLE001 - malformed, or anything odd: the main process answers it (400 ...)
            taken = False
        if not taken:
            self.hand_over(data, remote, request)

    def hand_over(self, data: bytes, remote: Addr, request: Request | None = None) -> None:
        """Send a datagram to the main process as it came; a request's transaction is remembered (above)."""
        if request is None:
            try:
                parsed = parse_message(data)
            except Exception:  # noqa: BLE001 - the main process answers it (400) or drops it
                parsed = None
            request = parsed if isinstance(parsed, Request) else None
        if request is not None:
            try:
                key = server_key(request)
            except Exception:  # noqa: BLE001 - no usable Via or CSeq: nothing to match retransmissions by
                key = None
            if key is not None:
                handed = self._handed
                handed.pop(key, None)
                handed[key] = time.monotonic() + self.handed_for
                while len(handed) > self.max_handed:
                    handed.popitem(last=False)
        self.handed_over += 1
        self.link.send(_pack_raw(data, remote))

    def _was_handed(self, request: Request) -> bool:
        handed = self._handed
        if not handed:
            return False
        now = time.monotonic()
        while handed:  # forget the expired ones first (oldest first: each expiry is later than the one before)
            key, until = next(iter(handed.items()))
            if until > now:
                break
            del handed[key]
        return server_key(request) in handed

    def dropped(self, data: bytes, transport: str, remote: Addr | None, reason: str) -> None:
        self.stack.dropped(data, transport, remote, reason)

    def send_failed(self, transport: str, addr: Addr, reason: str) -> None:
        return None

    def connection_lost(self, transport: str, addr: Addr) -> None:
        return None

    def message(self, msg: bytes) -> None:
        if msg[:1] == ANSWERED:
            self.relay.device_answered(msg[2:].decode())

    def stats(self) -> dict[str, int]:
        return {
            "received": self.stack.stats["received"],
            "sent": self.stack.stats["sent"],
            "handed_over": self.handed_over,
            **{f"stateless_{k}": v for k, v in self.relay.stats.items()},
        }


async def _run_worker(config: dict[str, Any]) -> None:
    from .proxy import ProxyCore

    index = int(config["index"])
    directory = Path(config["dir"])
    transport = TransportLayer(config["host"], int(config["port"]), transports=("udp",))
    transport.reuse_port = True
    registrar = Registrar()
    proxy = ProxyCore(transport=transport, trace=NullSink(), registrar=registrar, timers=Timers(*config["timers"]))
    proxy.device_timeout = config["device_timeout"]
    proxy.stack.advertise = tuple(config["advertise"]) if config["advertise"] else None  # type: ignore[assignment]
    proxy.stateless.key = bytes.fromhex(config["key"])
    proxy.stateless.index = index
    replica = BindingReplica(directory / "bindings.sqlite", registrar)
    worker: Worker | None = None
    link = _Link(
        socket.socket(fileno=int(config["fd"])), lambda msg: worker.message(msg) if worker is not None else None
    )
    registrar.mirror = _DeadReporter(link)
    proxy.stateless.answered = lambda i, branch: link.send(ANSWERED + bytes([i]) + branch.encode())
    # a request whose device died goes to the main process as it came (after the news of the death: in order)
    proxy.stateless.adopt = lambda data, remote: worker.hand_over(data, remote) if worker is not None else None
    await proxy.stack.start()
    if config.get("tcp_port"):  # the main process's TCP port: the worker's idea of "us" (is_us, Via) matches
        transport.tcp_addr = (config["host"], int(config["tcp_port"]))
    worker = Worker(proxy, link, replica, index)
    transport.attach(worker)
    loop = asyncio.get_running_loop()
    link.start(loop)
    stop = asyncio.Event()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)

    async def watch_stdin() -> None:
        await reader.read()  # EOF: the main process closed our stdin, or died
        stop.set()

    async def report() -> None:
        while True:
            link.send(STATS + json.dumps([index, worker.stats()]).encode())
            await asyncio.sleep(0.5)

    tasks = [asyncio.ensure_future(watch_stdin()), asyncio.ensure_future(report())]
    await stop.wait()
    for t in tasks:
        t.cancel()
    link.send(STATS + json.dumps([index, worker.stats()]).encode())
    await proxy.close()
    link.close()
    replica.close()
    if not _alive(int(config["main_pid"])):  # the main process died without stop(): its files are ours to remove
        shutil.rmtree(directory, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (dead, not yet reaped) is gone too
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True


def main() -> None:
    """`python -m notebook_im.server.workers`: one worker, configured by a JSON line on standard input."""
    from ..runtime import new_loop

    config = json.loads(sys.stdin.buffer.readline())
    loop, _ = new_loop()
    try:
        loop.run_until_complete(_run_worker(config))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
