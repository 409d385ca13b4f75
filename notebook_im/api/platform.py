"""Platform: the root object (UCCAPI `UccPlatform`): owns the trace and the endpoints.

The asyncio loop itself is process-wide (`runtime.Runtime`), so several platforms can coexist (two users
in one notebook is the usual teaching setup) and one going away does not stop the others.
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Any

from ..net.impairment import Impairment
from ..net.memory import MemoryNetwork
from ..record.budget import TraceBudget, parse_size, process_budget
from ..record.recorder import Trace
from ..runtime import Operation, runtime
from ..sip.transaction import DEFAULT_TIMERS, Timers
from ..sip.uri import SipUri
from . import checks
from .endpoint import Endpoint
from .manager import parse_remote_uri
from .messages import DEFAULT_WINDOW

TRANSPORTS = ("udp", "tcp", "tls")


def local_host_for(server_host: str) -> str:
    """The local address that routes to `server_host` (a UDP connect sends nothing)."""
    host = server_host.strip("[]")
    if host in ("127.0.0.1", "localhost") or host.startswith("127."):
        return "127.0.0.1"
    if host == "::1":
        return "::1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, 5060))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def client_context(*, verify: bool = True, ca_file: str | None = None) -> ssl.SSLContext:
    """The TLS client context of an endpoint: system CAs (or `ca_file`), hostname checked, unless `verify=False`."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Platform:
    """`with nim.Platform() as platform:` ... `platform.endpoint(uri, server=...)`.

    `history="chat.sqlite"` (or a directory, which then holds `history.sqlite`) keeps the trace in a SQLite
    file as it is recorded, and loads what an earlier run wrote there: `trace.sip()`, `.messages()`,
    `.events()`, `endpoint.history()` and `ChatPanel(endpoint)` show the earlier conversations too. One Platform
    writes a store at a time (`HistoryInUse` otherwise); `shutdown()` flushes and closes it.

    Memory is bounded whatever the traffic: the trace counts against `trace_budget` (by default the process's
    shared budget, `nim.trace_budget()`, 96 MiB for every platform and server trace together; a TraceBudget to
    share another, or a size such as "64MiB" for one of its own), evicting its oldest rows past it (still in the
    history store when there is one); each session keeps its newest `message_window` (10,000) messages as
    objects, older ones read back from the history store on access. `max_trace_records` caps the SIP messages
    kept in memory on top of the budget (None: the budget alone).
    """

    def __init__(
        self,
        name: str = "notebook_im",
        *,
        max_trace_records: int | None = None,
        timers: Timers | None = None,
        history: Any = None,
        network: MemoryNetwork | None = None,
        trace_budget: Any = None,
        message_window: int = DEFAULT_WINDOW,
    ) -> None:
        if timers is not None and not isinstance(timers, Timers):
            raise TypeError("timers must be a nim.Timers(t1=..., t2=..., t4=...)")
        if network is not None and not isinstance(network, MemoryNetwork):
            raise TypeError(
                f"network must be a nim.MemoryNetwork() (or None for real sockets), not {type(network).__name__}"
            )
        # None: endpoints use real sockets; a MemoryNetwork: they talk over it, with no sockets (net/memory.py)
        self.network = network
        self.name = name
        self.timers = timers or DEFAULT_TIMERS
        if isinstance(message_window, bool) or not isinstance(message_window, int) or message_window < 1:
            raise ValueError(f"message_window must be a positive int (messages per session), not {message_window!r}")
        # the newest messages each session keeps as ChatMessage objects (older ones: from the history store)
        self.message_window = message_window
        if trace_budget is None:
            budget = process_budget()  # shared with every Platform and Server of this process
        elif isinstance(trace_budget, TraceBudget):
            budget = trace_budget
        else:
            budget = TraceBudget(parse_size(trace_budget, "trace_budget"))  # a budget of this trace's own
        self.trace = Trace(max_records=max_trace_records, budget=budget, name=f"platform {name}")
        self.history_store: Any = None  # the HistoryStore when history= was given
        if history is not None:
            from ..record.store import HistoryStore  # sqlite3 only when asked for
            from .records import CODEC

            store = HistoryStore(history, CODEC)
            try:
                store.load_into(self.trace)
            except BaseException:
                store.close()
                raise
            self.trace.attach_store(store.start())
            self.history_store = store
        self._endpoints: list[Endpoint] = []
        self._shut = False
        runtime()  # start the loop thread now, not inside the first call

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints)

    def endpoint(
        self,
        uri: str,
        *,
        server: Any = None,
        username: str | None = None,
        password: str | None = None,
        transport: str | None = None,
        local_port: int = 0,
        local_host: str | None = None,
        display_name: str | None = None,
        expires: int = 3600,
        verify: bool = True,
        ca_file: str | None = None,
        impairment: Impairment | None = None,
    ) -> Operation[Endpoint]:
        """Create and enable an endpoint for `uri` (UCCAPI create + `IUccEndpoint.Enable`).

        `server` is the registrar/proxy: a `nim.Server`, or its URI such as 'sip:127.0.0.1:5060' (or
        'sips:host:5061' for TLS). Without a server the endpoint only listens (peers reach it at its `contact`).
        `transport` is "udp" (default), "tcp" or "tls" (default "tls" for a sips: server URI). TLS verifies the
        server certificate against the system CAs, or `ca_file`; `verify=False` turns that off (labs only).
        `impairment` (a `nim.Impairment`) drops/delays/reorders the UDP datagrams this endpoint sends: for tests
        and for watching retransmissions in a tutorial. On a `Platform(network=nim.MemoryNetwork())` the endpoint
        uses no sockets. Resolves once REGISTER succeeded.
        """
        if self._shut:
            raise RuntimeError("this Platform was shut down; create a new nim.Platform()")
        aor = parse_remote_uri(uri, "uri")
        if transport is None:
            transport = "udp"
            text = getattr(server, "uri", server)
            if isinstance(text, str) and (text.lower().startswith("sips:") or "transport=tls" in text.lower()):
                transport = "tls"
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
        if transport == "tls" and self.network is not None:
            raise ValueError(
                "a MemoryNetwork carries udp and tcp, not tls; use real sockets (a Platform without network=) for TLS"
            )
        if ca_file is not None and not os.path.isfile(ca_file):
            raise FileNotFoundError(
                f"ca_file {ca_file!r} does not exist; give the PEM file of the CA that signed the server certificate"
            )
        if not isinstance(local_port, int) or not 0 <= local_port < 65536:
            raise ValueError(f"local_port must be an int from 0 (any free port) to 65535, not {local_port!r}")
        if password is not None and not isinstance(password, str):
            raise TypeError("password must be a str")
        display_name = checks.display_name(display_name)
        username = checks.username(username)
        if not isinstance(expires, int) or expires < 0:
            raise ValueError(f"expires must be a non-negative number of seconds, not {expires!r}")
        server_uri: SipUri | None = None
        if server is not None:
            text = getattr(server, "tls_uri" if transport == "tls" else "uri", server)
            if text is None:
                raise ValueError("this nim.Server has no TLS listener; create it with Server(tls=(certfile, keyfile))")
            if not isinstance(text, str):
                raise TypeError(
                    f"server must be a nim.Server or a URI string like 'sip:127.0.0.1:5060', not {type(server).__name__}"
                )
            server_uri = checks.sip_uri(text, "server", user=False)
        host = local_host or (local_host_for(server_uri.host) if server_uri else "127.0.0.1")
        tls_client = client_context(verify=verify, ca_file=ca_file) if transport == "tls" else None
        ep = Endpoint(
            self,
            aor,
            server=server_uri,
            transport=transport,
            local_host=host,
            local_port=local_port,
            username=username,
            password=password,
            display_name=display_name,
            expires=expires,
            tls_client=tls_client,
            impairment=impairment,
        )
        self._endpoints.append(ep)
        return runtime().submit(ep.aenable(), f"endpoint({uri!r})")

    async def _shutdown(self) -> None:
        for ep in list(self._endpoints):
            try:
                await ep.adisable()
            except Exception:  # noqa: BLE001 - shut down everything we can
                pass
        self._close_history()

    def _close_history(self) -> None:
        """Write what the history store still has queued and close it (the trace keeps recording in memory)."""
        store = self.history_store
        if store is not None:
            self.trace.detach_store()
            store.close()

    def shutdown(self, timeout: float = 15.0) -> None:
        """Disable every endpoint (BYE, un-REGISTER), close sockets, then flush and close the history store.
        Blocking; use `ashutdown` in async code."""
        if self._shut:
            return
        self._shut = True
        rt = runtime()
        if rt.in_loop_thread():
            rt.loop.create_task(self._shutdown())
            return
        try:
            rt.submit(self._shutdown(), "shutdown()").result(timeout)
        finally:
            self._close_history()  # also when disabling timed out: the store must not stay locked

    async def ashutdown(self) -> None:
        """`shutdown()` for async code: disables every endpoint without blocking the caller's loop."""
        if self._shut:
            return
        self._shut = True
        await runtime().submit(self._shutdown(), "shutdown()")

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    async def __aenter__(self) -> Platform:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.ashutdown()

    def __repr__(self) -> str:
        history = f", history {str(self.history_store.path)!r}" if self.history_store is not None else ""
        return f"<Platform {self.name!r}: {len(self._endpoints)} endpoints, {self.trace!r}{history}>"
