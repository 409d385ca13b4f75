"""The embedded server as a user sees it: `Server()`, with `.start()`, `.stop()`, the registrations, the
conferences, the offline store and the trace. The work is done by a registrar (registrar.py), a
transaction-stateful proxy (proxy.py, RFC 3261 §16), a digest authenticator (auth.py), an offline store
(offline.py) and a conference focus (conference/: `sip:conference-factory@<server>` creates
`sip:conf-<id>@<server>`), for notebooks, teaching and tests. It binds to loopback unless told otherwise.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import time
import warnings
from typing import TYPE_CHECKING, Any

from ..net.memory import MemoryNetwork, memory_transport
from ..net.transport import TransportLayer
from ..record.budget import process_budget
from ..record.recorder import Trace
from ..runtime import Operation, runtime
from ..sip.transaction import DEFAULT_TIMERS, Timers
from ..sip.uri import bracket
from .auth import Authenticator
from .conference import Focus, FocusLimits
from .offline import OfflineLimits
from .offline_db import OfflineJournal
from .proxy import ProxyCore
from .registrar import Registrar
from .stateless import MAX_WORKERS

if TYPE_CHECKING:
    from .workers import WorkerPool


class Server:
    """The embedded registrar + proxy + conference focus. `Server().start().result()`, or `with Server() as server:`.
    `focus_limits=FocusLimits(...)` bounds the focus (conferences, participants, queues, probe interval).
    `offline_limits=OfflineLimits(...)` bounds the messages kept for offline users (per user, in all, bytes,
    time to live); `OfflineLimits(max_per_user=0)` turns offline delivery off. `device_timeout` is how long a
    registered device may leave a new request without any response before it counts as gone (default 8*T1, 4 s:
    a pager MESSAGE is then kept and answered 202, an INVITE 480, until the device registers again); None waits
    for the transaction's own Timer F / B (64*T1). `offline_store="offline.sqlite"` keeps the offline messages
    (and the users they wait for) in that file, so that a restart loses none of them. `network=nim.MemoryNetwork()`
    runs the server without sockets, on that in-memory network (net/memory.py). `stateless=False` relays every
    request through transactions; by default the common case (a pager MESSAGE to a user with one device over UDP,
    the non-INVITE requests of a dialog, no `users=`) is relayed statelessly (stateless.py, RFC 3261 §16.11).
    `workers=N` runs N processes on the UDP port (workers.py: N-1 worker processes relay the fast path on the
    other cores, the main process does everything else); `Server.stats` adds up their counters, and the
    workers keep no message trace. One process (the default) is what a notebook wants."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        transports: tuple[str, ...] = ("udp", "tcp"),
        users: dict[str, str] | None = None,
        realm: str = "notebook_im",
        min_expires: int = 1,
        max_expires: int = 7200,
        timers: Timers = DEFAULT_TIMERS,
        tls: tuple[str, str] | ssl.SSLContext | None = None,
        tls_port: int = 0,
        advertise: tuple[str, int] | None = None,
        focus_limits: FocusLimits | None = None,
        offline_limits: OfflineLimits | None = None,
        device_timeout: float | None | str = "auto",
        offline_store: str | os.PathLike[str] | None = None,
        network: MemoryNetwork | None = None,
        stateless: bool = True,
        workers: int = 1,
    ) -> None:
        if not isinstance(port, int) or not 0 <= port < 65536:
            raise ValueError(f"port must be an int from 0 (any free port) to 65535, not {port!r}")
        bad = [t for t in transports if t not in ("udp", "tcp")]
        if bad or not transports:
            raise ValueError(f"transports must be a tuple of 'udp' and/or 'tcp', not {transports!r}")
        if not isinstance(realm, str) or not realm or not realm.isprintable() or '"' in realm or "\\" in realm:
            raise ValueError(f"realm must be a non-empty printable str without quotes or backslashes, not {realm!r}")
        if users is not None and not isinstance(users, dict):
            raise TypeError("users must be a dict of user name -> password, e.g. {'alice': 'secret'}")
        if offline_limits is not None and not isinstance(offline_limits, OfflineLimits):
            raise TypeError(
                "offline_limits must be a nim.OfflineLimits(max_per_user=..., max_total=..., ttl=...), "
                f"not {type(offline_limits).__name__}"
            )
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
            raise ValueError(
                f"workers must be an int from 1 to {MAX_WORKERS} (processes sharing the port), not {workers!r}"
            )
        if workers > 1 and (network is not None or "udp" not in transports or users or not stateless):
            raise ValueError(
                "workers > 1 share a UDP port and relay the stateless fast path: they need a real UDP socket "
                "(no network=), 'udp' in transports, stateless=True and no users= (with digest authentication "
                "every request is checked in the main process, so workers would only add a hop)"
            )
        self.workers = workers
        self._pool: WorkerPool | None = None
        self._last_worker_stats: dict[str, int] = {}
        self.trace = Trace(budget=process_budget(), name="server")  # shares the process's trace budget
        self.registrar = Registrar(min_expires=min_expires, max_expires=max_expires)
        self.auth = Authenticator(users, realm=realm) if users else None
        if network is not None and tls is not None:
            raise ValueError("a MemoryNetwork carries udp and tcp, not tls; leave network= out for a TLS server")
        tls_ctx = _server_context(tls) if tls is not None else None
        if network is not None:  # no sockets: the in-memory network of net/memory.py (tests, tutorials)
            sockets: Any = memory_transport(network, host, port, transports=tuple(transports))
        else:
            sockets = TransportLayer(host, port, transports=tuple(transports), tls_server=tls_ctx, tls_port=tls_port)
            sockets.reuse_port = workers > 1
        # the proxy (proxy.py) and the SIP stack it runs on: what does the work behind this facade
        journal = OfflineJournal(offline_store) if offline_store is not None else None
        self.proxy = ProxyCore(
            transport=sockets,
            trace=self.trace,
            registrar=self.registrar,
            auth=self.auth,
            timers=timers,
            focus_limits=focus_limits,
            offline_limits=offline_limits,
            offline_journal=journal,
        )
        # the UDP address to put in Via and Record-Route when peers reach us through a NAT, port forward or relay
        self.proxy.stack.advertise = advertise
        if not isinstance(stateless, bool):
            raise TypeError(f"stateless must be True or False, not {stateless!r}")
        self.proxy.stateless.enabled = stateless
        if device_timeout != "auto":
            if device_timeout is not None and (
                isinstance(device_timeout, bool) or not isinstance(device_timeout, (int, float)) or device_timeout <= 0
            ):
                raise ValueError(f"device_timeout must be a number of seconds > 0, or None, not {device_timeout!r}")
            self.proxy.device_timeout = device_timeout
        self._started = False
        if not users and not _is_loopback(host):
            warnings.warn(
                f"notebook_im Server binds to {host} without users: anyone who can reach it can register. "
                "Pass users={...} (or --users FILE) or bind to 127.0.0.1.",
                UserWarning,
                stacklevel=2,
            )

    @property
    def advertise(self) -> tuple[str, int] | None:
        """The UDP address put in Via and Record-Route (a NAT, port forward or relay in front of the server);
        None: the bound address."""
        return self.proxy.stack.advertise

    @advertise.setter
    def advertise(self, value: tuple[str, int] | None) -> None:
        self.proxy.stack.advertise = value

    @property
    def host(self) -> str:
        return self.proxy.stack.host

    @property
    def port(self) -> int:
        return self.proxy.stack.port

    @property
    def uri(self) -> str:
        host = bracket(self.host)
        return f"sip:{host}:{self.port}"

    @property
    def tls_port(self) -> int | None:
        transport = self.proxy.stack.transport
        return transport.tls_port if transport.tls_server is not None else None

    @property
    def tls_uri(self) -> str | None:
        """`sips:host:port` of the TLS listener (None without `tls=`)."""
        if self.tls_port is None:
            return None
        host = bracket(self.host)
        return f"sips:{host}:{self.tls_port}"

    @property
    def registrations(self) -> dict[str, list[str]]:
        """Address of record -> registered Contact URIs (live bindings only)."""
        return runtime().run_sync(lambda: self.registrar.snapshot(time.monotonic()))

    @property
    def stats(self) -> dict[str, int]:
        """Counters of the SIP core (received, sent, 400s, drops, ...) and of the offline store, prefixed
        `offline_`: stored, delivered, expired, rejected (refused for good by the device), refused (store full),
        duplicates, attempts, and `offline_waiting` (messages kept right now); of the stateless relay, prefixed
        `stateless_`: relayed (requests), responses (relayed back), forged (responses dropped: not to our requests)."""
        offline = self.proxy.offline
        out = {
            **self.proxy.stack.stats,
            **{f"offline_{k}": v for k, v in offline.stats.items()},
            **{f"stateless_{k}": v for k, v in self.proxy.stateless.stats.items()},
            "offline_waiting": len(offline),
        }
        if self.workers > 1:  # the workers' counters (reported twice a second) added in
            totals = self._pool.totals() if self._pool is not None else self._last_worker_stats
            for k, v in totals.items():
                if k in out:
                    out[k] += v
                else:
                    out[f"workers_{k}"] = v
        return out

    @property
    def offline(self) -> dict[str, int]:
        """Address of record -> messages kept for that offline user (a snapshot taken on the loop thread;
        expired messages are dropped first)."""
        return runtime().run_sync(lambda: self.proxy.offline.snapshot(time.monotonic()))

    @property
    def focus(self) -> Focus:
        """The conference focus (RFC 4353): `.conferences`, `.stats`, `.limits` (read them on the loop thread,
        or use `conferences` below)."""
        return self.proxy.focus

    @property
    def conference_factory(self) -> str:
        """The URI to INVITE to create a conference (RFC 4579 ad-hoc conference factory)."""
        host = bracket(self.host)
        return f"sip:conference-factory@{host}:{self.port}"

    @property
    def conferences(self) -> dict[str, list[str]]:
        """Conference URI -> its participants with their status (a snapshot taken on the loop thread)."""
        return runtime().run_sync(self.proxy.focus.snapshot)

    def start(self) -> Operation[Server]:
        """Bind the sockets (UDP and TCP on one port) and start serving."""

        async def run() -> Server:
            if not self._started:
                await self.proxy.start()
                if self.workers > 1:
                    from .workers import WorkerPool  # (sqlite3, subprocesses: only for a server that has workers)

                    pool = WorkerPool(self.proxy, self.workers)
                    try:
                        await pool.start()
                    except BaseException:
                        await self.proxy.close()
                        raise
                    self._pool = pool
                self._started = True
            return self

        return runtime().submit(run(), "Server.start()")

    def stop(self, timeout: float = 10.0) -> None:
        """Close the sockets. Blocking (use `astop()` in async code)."""
        if not self._started:
            return
        rt = runtime()
        if rt.in_loop_thread():
            rt.loop.create_task(self._close())
        else:
            rt.submit(self._close(), "Server.stop()").result(timeout)
        self._started = False

    async def astop(self) -> None:
        """`stop()` for async code."""
        if self._started:
            await runtime().submit(self._close(), "Server.stop()")
            self._started = False

    async def _close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
            self._last_worker_stats = pool.totals()
        await self.proxy.close()

    @property
    def worker_pids(self) -> list[int]:
        """The process ids of the worker processes (empty with `workers=1`, or when stopped)."""
        return self._pool.pids if self._pool is not None else []

    def __enter__(self) -> Server:
        return self.start().result(10)

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def __aenter__(self) -> Server:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.astop()

    def __repr__(self) -> str:
        state = "running" if self._started else "stopped"
        return f"<Server {self.uri} {state}, {len(self.registrar)} bindings>"


def _server_context(tls: tuple[str, str] | ssl.SSLContext) -> ssl.SSLContext:
    if isinstance(tls, ssl.SSLContext):
        return tls
    if not (isinstance(tls, tuple) and len(tls) == 2):
        raise TypeError("tls must be (certfile, keyfile) PEM paths or an ssl.SSLContext")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*tls)
    return ctx


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


__all__ = ["OfflineLimits", "Server"]
