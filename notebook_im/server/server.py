"""The embedded server: a registrar, a transaction-stateful proxy (RFC 3261 §16) and a conference focus
(focus.py: RFC 4353/4579/4575, `sip:conference-factory@<server>` creates `sip:conf-<id>@<server>`) for
notebooks, teaching and tests.

It binds to loopback unless told otherwise and is never an open relay: an initial request is routed only
to a user registered with it (404 for unknown users, 480 for known but offline ones), and an in-dialog
request only to a registered contact. Dialogs are record-routed (double Record-Route when the two legs
use different transports) so in-dialog requests pass through it and appear in its trace.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
import warnings
from typing import Any

from ..net.transport import Target
from ..runtime import Operation, runtime
from ..sip.message import Request, Response, make_response, new_branch, new_tag
from ..sip.uri import Address, SipUri, bracket
from ..trace.recorder import Trace
from ..sip.transaction import DEFAULT_TIMERS, Timers, make_cancel
from ..ua import USER_AGENT, ClientHandle, ServerHandle, SipCore, target_of
from .auth import Authenticator
from .focus import Focus, FocusLimits
from .registrar import Binding, Registrar, aor_key

log = logging.getLogger("notebook_im.server")


class ProxyCore(SipCore):
    """Registrar + proxy logic on top of the SIP core."""

    def __init__(self, *, host: str, port: int, trace: Trace, registrar: Registrar, transports: tuple[str, ...],
                 auth: Authenticator | None = None, timers: Timers = DEFAULT_TIMERS,
                 tls_server: ssl.SSLContext | None = None, tls_port: int = 0,
                 focus_limits: FocusLimits | None = None) -> None:
        super().__init__(name="server", host=host, port=port, trace=trace, transports=transports, timers=timers,
                         tls_server=tls_server, tls_port=tls_port)
        self.registrar = registrar
        self.auth = auth
        self.focus = Focus(self, focus_limits)
        self._forwarded: dict[int, ClientHandle] = {}   # id(server handle) -> downstream client transaction

    async def close(self) -> None:
        self.focus.close()
        await super().close()

    def is_us(self, uri: SipUri) -> bool:
        host = uri.host.strip("[]")
        port = uri.port or (5061 if uri.transport == "tls" else 5060)
        if self.advertise is not None and (host, port) == self.advertise:
            return True
        if host not in (self.host, "localhost"):
            return False
        return port == self.port or (self.transport.tls_server is not None and port == self.transport.tls_port)

    def rr_uri(self, transport: str) -> str:
        host, port = self.host, self.transport.tls_port if transport == "tls" else self.port
        if self.advertise is not None and transport == "udp":
            host, port = self.advertise
        host = bracket(host)
        return f"<sip:{host}:{port};transport={transport};lr>"

    # -- requests -----------------------------------------------------------------------------------------
    def on_request(self, request: Request, handle: ServerHandle | None, transport: str, remote: tuple[str, int]) -> None:
        mf = request.max_forwards
        if handle is None:  # ACK for a 2xx: forward statelessly along its route
            if self.focus.wants(request):
                self.focus.on_request(request, None)
                return
            self._forward_ack(request)
            return
        if mf is not None and mf <= 0 and not (request.method == "OPTIONS" and self.is_us(request.uri)):
            self.respond(handle, make_response(request, 483, to_tag=new_tag()))
            return
        if self.auth is not None and not self._authenticated(request, handle, remote):
            return
        if request.method == "REGISTER":
            self._register(request, handle, transport, remote)
            return
        routes = request.headers.get_all("Route")
        # loose routing: pop the Route entries that name us (two of them after a double Record-Route)
        out_transport: str | None = None
        while routes:
            first = Address.parse(routes[0]).uri
            if not self.is_us(first):
                break
            out_transport = first.params.get("transport") or out_transport
            routes.pop(0)
        if request.to.tag is None:
            # an initial request: a pre-loaded Route names the outbound proxy the client used to reach us
            # (which may be an address we do not know as ours: a NAT, a relay, a DNS name). We route it
            # ourselves, only to registered users, so the Route set is dropped (Kamailio's example does too).
            routes = []
        request.headers.set_all("Route", routes)
        if not routes and self.focus.wants(request):  # the conference focus (focus.py) answers these itself
            self.focus.on_request(request, handle)
            return
        if request.to.tag is not None:
            self._route_in_dialog(request, handle, transport, routes)
            return
        if not request.uri.user:
            if request.method == "OPTIONS":
                resp = make_response(request, 200, to_tag=new_tag())
                resp.headers.set("Allow", "INVITE, ACK, CANCEL, BYE, MESSAGE, OPTIONS, REGISTER")
                self.respond(handle, resp)
            else:
                self.respond(handle, make_response(request, 404, "Not Found (no user in the Request-URI)", to_tag=new_tag()))
            return
        aor = aor_key(request.uri)
        if self.is_us(request.uri):  # sip:bob@<this server>: the user of that name, whatever their domain
            aor = self.registrar.aor_for_user(request.uri.user) or aor
        bindings = self.registrar.lookup(aor, time.monotonic())
        if not bindings:
            if aor in self.registrar.known:
                self.respond(handle, make_response(request, 480, "Temporarily Unavailable (not registered now)", to_tag=new_tag()))
            else:
                self.respond(handle, make_response(request, 404, "Not Found (no such user here)", to_tag=new_tag()))
            return
        binding = bindings[0]
        fwd = request.copy()
        fwd.uri = binding.contact
        target = self._binding_target(binding)
        if request.method in ("INVITE", "SUBSCRIBE", "REFER"):
            if target.transport != transport:
                fwd.headers.prepend("Record-Route", self.rr_uri(transport))
                fwd.headers.prepend("Record-Route", self.rr_uri(target.transport))
            else:
                fwd.headers.prepend("Record-Route", self.rr_uri(transport))
        self._forward(fwd, handle, target)

    def _authenticated(self, request: Request, handle: ServerHandle, remote: tuple[str, int]) -> bool:
        """With users configured, every request but ACK/CANCEL/keep-alive OPTIONS must carry valid credentials
        of the user it claims to come from (the To user for REGISTER, the From user otherwise)."""
        assert self.auth is not None
        method = request.method
        if method in ("ACK", "CANCEL") or (method == "OPTIONS" and not request.uri.user):
            return True
        now = time.monotonic()
        result = self.auth.check(request, remote[0], now, proxy=method != "REGISTER")
        if not result.ok:
            if result.status in (401, 407):
                resp = make_response(request, result.status, to_tag=new_tag())
                header = "WWW-Authenticate" if result.status == 401 else "Proxy-Authenticate"
                for value in self.auth.challenges(now, stale=result.stale):
                    resp.headers.add(header, value)
            else:
                resp = make_response(request, result.status, result.reason, to_tag=new_tag())
                log.warning("authentication failed for %s from %s: %s", request.from_.uri, remote[0], result.reason)
            self.respond(handle, resp)
            return False
        claimed = (request.to if method == "REGISTER" else request.from_).uri.user
        if claimed != result.user:
            self.respond(handle, make_response(
                request, 403, f"Forbidden (authenticated as {result.user}, but the request claims {claimed})", to_tag=new_tag()))
            return False
        request.headers.remove("Proxy-Authorization")  # consumed here; the next hop must not see them
        request.headers.remove("Authorization")
        return True

    def _binding_target(self, binding: Binding) -> Target:
        if binding.transport != "udp" and self.transport.has_connection(binding.source):
            return Target(binding.transport, *binding.source)
        if binding.transport == "udp":
            # reach the client where its REGISTER came from (symmetric response routing, works behind NAT)
            return Target("udp", *binding.source)
        return target_of(binding.contact)

    def _route_in_dialog(self, request: Request, handle: ServerHandle, transport: str, routes: list[str]) -> None:
        next_hop = Address.parse(routes[0]).uri if routes else request.uri
        now = time.monotonic()
        binding = self.registrar.find_contact(next_hop.host.strip("[]"), next_hop.port, now)
        if binding is None:
            self.respond(handle, make_response(request, 404 if request.method != "BYE" else 481,
                                               "Not Found (not a contact registered here; this server relays nothing else)"))
            return
        fwd = request.copy()
        target = self._binding_target(binding) if not routes else target_of(next_hop)
        self._forward(fwd, handle, target)

    def _forward(self, fwd: Request, handle: ServerHandle, target: Target) -> None:
        mf = fwd.max_forwards
        fwd.headers.set("Max-Forwards", str((mf if mf is not None else 70) - 1))
        fwd.headers.prepend("Via", self.via(target.transport))

        def provisional(resp: Response) -> None:
            if resp.status == 100 or handle.answered:
                return
            self.respond(handle, self._upstream(resp))

        client = self.send_request(fwd, target, on_provisional=provisional)
        client.on_late_2xx = lambda resp: self.send_stateless(self._upstream(resp), self.response_target(handle))
        self._forwarded[id(handle)] = client

        def done(fut: asyncio.Future) -> None:
            self._forwarded.pop(id(handle), None)
            if handle.answered:
                return
            exc = fut.exception()
            if exc is not None:
                self.respond(handle, make_response(handle.request, 408, "Request Timeout (no answer downstream)", to_tag=new_tag()))
            else:
                self.respond(handle, self._upstream(fut.result()))
        client.future.add_done_callback(done)

    @staticmethod
    def _upstream(resp: Response) -> Response:
        up = resp.copy()
        vias = up.headers.get_all("Via")
        up.headers.set_all("Via", vias[1:])
        return up

    def _forward_ack(self, request: Request) -> None:
        routes = request.headers.get_all("Route")
        while routes and self.is_us(Address.parse(routes[0]).uri):
            routes.pop(0)
        request.headers.set_all("Route", routes)
        next_hop = Address.parse(routes[0]).uri if routes else request.uri
        binding = self.registrar.find_contact(next_hop.host.strip("[]"), next_hop.port, time.monotonic())
        if binding is None:
            return
        target = self._binding_target(binding) if not routes else target_of(next_hop)
        mf = request.max_forwards
        request.headers.set("Max-Forwards", str((mf if mf is not None else 70) - 1))
        request.headers.prepend("Via", self.via(target.transport))
        self.send_stateless(request, target)

    def on_cancel(self, invite: ServerHandle) -> None:
        client = self._forwarded.get(id(invite))
        if client is None:
            super().on_cancel(invite)
            return
        self.send_request(make_cancel(client.txn.request), client.target)
        # the downstream 487 comes back on the client transaction and is relayed upstream

    def _register(self, request: Request, handle: ServerHandle, transport: str, remote: tuple[str, int]) -> None:
        now = time.monotonic()
        status, bindings, reason = self.registrar.register(request, transport, remote, now)
        if status == 423:
            resp = make_response(request, 423, to_tag=new_tag())
            resp.headers.set("Min-Expires", reason)
            self.respond(handle, resp)
            return
        resp = make_response(request, status, None if status == 200 else reason, to_tag=new_tag())
        for b in bindings:
            resp.headers.add("Contact", f"<{b.contact}>;expires={b.remaining(now)}")
        resp.headers.set("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()))
        self.respond(handle, resp)


class Server:
    """The embedded registrar + proxy + conference focus. `Server().start().result()`, or `with Server() as server:`.
    `focus_limits=FocusLimits(...)` bounds the focus (conferences, participants, queues, probe interval)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, transports: tuple[str, ...] = ("udp", "tcp"),
                 users: dict[str, str] | None = None, realm: str = "notebook_im", min_expires: int = 1,
                 max_expires: int = 7200, timers: Timers = DEFAULT_TIMERS,
                 tls: "tuple[str, str] | ssl.SSLContext | None" = None, tls_port: int = 0,
                 advertise: tuple[str, int] | None = None, focus_limits: FocusLimits | None = None) -> None:
        if not isinstance(port, int) or not 0 <= port < 65536:
            raise ValueError(f"port must be an int from 0 (any free port) to 65535, not {port!r}")
        bad = [t for t in transports if t not in ("udp", "tcp")]
        if bad or not transports:
            raise ValueError(f"transports must be a tuple of 'udp' and/or 'tcp', not {transports!r}")
        if users is not None and not isinstance(users, dict):
            raise TypeError("users must be a dict of user name -> password, e.g. {'alice': 'secret'}")
        self.trace = Trace()
        self.registrar = Registrar(min_expires=min_expires, max_expires=max_expires)
        self.auth = Authenticator(users, realm=realm) if users else None
        tls_ctx = _server_context(tls) if tls is not None else None
        self._core = ProxyCore(host=host, port=port, trace=self.trace, registrar=self.registrar, transports=tuple(transports),
                               auth=self.auth, timers=timers, tls_server=tls_ctx, tls_port=tls_port,
                               focus_limits=focus_limits)
        # the UDP address to put in Via and Record-Route when peers reach us through a NAT, port forward or relay
        self._core.advertise = advertise
        self._started = False
        if not users and not _is_loopback(host):
            warnings.warn(f"notebook_im Server binds to {host} without users: anyone who can reach it can register. "
                          "Pass users={...} (or --users FILE) or bind to 127.0.0.1.", UserWarning, stacklevel=2)

    @property
    def host(self) -> str:
        return self._core.host

    @property
    def port(self) -> int:
        return self._core.port

    @property
    def uri(self) -> str:
        host = bracket(self.host)
        return f"sip:{host}:{self.port}"

    @property
    def tls_port(self) -> int | None:
        return self._core.transport.tls_port if self._core.transport.tls_server is not None else None

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
        return dict(self._core.stats)

    @property
    def focus(self) -> Focus:
        """The conference focus (RFC 4353): `.conferences`, `.stats`, `.limits` (read them on the loop thread,
        or use `conferences` below)."""
        return self._core.focus

    @property
    def conference_factory(self) -> str:
        """The URI to INVITE to create a conference (RFC 4579 ad-hoc conference factory)."""
        host = bracket(self.host)
        return f"sip:conference-factory@{host}:{self.port}"

    @property
    def conferences(self) -> dict[str, list[str]]:
        """Conference URI -> its participants with their status (a snapshot taken on the loop thread)."""
        return runtime().run_sync(self._core.focus.snapshot)

    def start(self) -> Operation["Server"]:
        """Bind the sockets (UDP and TCP on one port) and start serving."""
        async def run() -> "Server":
            if not self._started:
                await self._core.start()
                self._started = True
            return self
        return runtime().submit(run(), "Server.start()")

    def stop(self, timeout: float = 10.0) -> None:
        """Close the sockets. Blocking (use `astop()` in async code)."""
        if not self._started:
            return
        rt = runtime()
        if rt.in_loop_thread():
            rt.loop.create_task(self._core.close())
        else:
            rt.submit(self._core.close(), "Server.stop()").result(timeout)
        self._started = False

    async def astop(self) -> None:
        """`stop()` for async code."""
        if self._started:
            await runtime().submit(self._core.close(), "Server.stop()")
            self._started = False

    def __enter__(self) -> "Server":
        return self.start().result(10)

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def __aenter__(self) -> "Server":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.astop()

    def __repr__(self) -> str:
        state = "running" if self._started else "stopped"
        return f"<Server {self.uri} {state}, {len(self.registrar)} bindings>"


def _server_context(tls: "tuple[str, str] | ssl.SSLContext") -> ssl.SSLContext:
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


__all__ = ["Server", "USER_AGENT"]
