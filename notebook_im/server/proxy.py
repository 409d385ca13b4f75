"""The proxy of the embedded server (RFC 3261 §16): a transaction-stateful proxy and registrar front end, the
handler of its own `SipStack`.

It is never an open relay: an initial request is routed only to a user registered with this server (404 for
unknown users, 480 for known but offline ones, 202 and the offline store for a pager-mode MESSAGE to a user
who is offline), an in-dialog request only to a registered contact, and with `users=` only after
authentication or inside a dialog this server record-routed itself (its Record-Route carries a dialog token).
A user registered from several devices gets an initial request on all of them at once (forking.py: RFC 3261
§16.7; the first to answer an INVITE wins, the others are CANCELled as "completed elsewhere"). Dialogs are
record-routed (double Record-Route when the two legs use different transports) so in-dialog requests pass
through it and appear in its trace. Requests addressed to the conference focus go to it (conference/).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..core.sink import TraceSink
from ..core.stack import ClientHandle, ServerHandle, SipStack
from ..core.targets import target_of
from ..net.base import Target, Transport
from ..sip import reason as reason_mod
from ..sip.date import format_date
from ..sip.message import Request, Response, make_response, new_tag
from ..sip.reason import Reason
from ..sip.transaction import DEFAULT_TIMERS, Timers, make_cancel
from ..sip.uri import Address, SipUri, bracket
from .auth import Authenticator
from .conference import Focus, FocusLimits
from .forking import CancelBranches, EndBranch, Relay, ResponseContext
from .offline import TRANSIENT, OfflineLimits, OfflineStore, Refused, StoredMessage, is_composing
from .offline_db import OfflineJournal, OfflineStoreError
from .registrar import Binding, Registrar, aor_key
from .stateless import StatelessRelay

log = logging.getLogger("notebook_im.server")

DIALOG_PARAM = "dlg"  # the Record-Route URI parameter that carries a dialog's token


class ProxyCore:
    """Registrar + proxy logic, the handler of a `SipStack` it owns (core/stack.py)."""

    def __init__(
        self,
        *,
        transport: Transport,
        trace: TraceSink,
        registrar: Registrar,
        auth: Authenticator | None = None,
        timers: Timers = DEFAULT_TIMERS,
        focus_limits: FocusLimits | None = None,
        offline_limits: OfflineLimits | None = None,
        offline_journal: OfflineJournal | None = None,
    ) -> None:
        self.stack = SipStack(name="server", transport=transport, sink=trace, timers=timers, handler=self)
        self.registrar = registrar
        self.auth = auth
        self.focus = Focus(self, focus_limits)
        self._forwarded: dict[int, Fork] = {}  # id(server handle) -> its branches downstream
        self.offline = OfflineStore(offline_limits, journal=offline_journal)
        self.journal = offline_journal
        self._delivering: set[str] = set()  # AORs whose stored messages are being delivered right now
        self._dialog_secret = secrets.token_bytes(32)  # keys the dialog tokens of our Record-Routes
        # how long a device may leave a request unanswered (no response at all, not even 100/180) before it counts
        # as gone: a few retransmissions (0.5 + 1 + 2 s at T1 = 500 ms), not Timer F's 64*T1 (32 s). Its binding is
        # then skipped (dead) until it registers again; a pager MESSAGE is kept for later and answered 202
        self.device_timeout: float | None = 8 * timers.t1
        # the fast path (stateless.py): the common requests relayed without transactions
        self.stateless = StatelessRelay(self)
        self.stack.stateless = self.stateless.offer

    async def start(self) -> None:
        if self.journal is not None:  # what a previous run kept: the messages, and the users they wait for
            self.journal.open()
            rows, known = self.journal.load()
            for aor in known:
                self.registrar.remember(aor)
            self.offline.restore(rows, time.monotonic(), time.time())
        await self.stack.start()

    async def close(self) -> None:
        self.focus.close()
        self.stateless.close()
        await self.stack.close()
        if self.journal is not None:
            self.journal.close()

    # -- StackHandler: the rest of it ---------------------------------------------------------------------------
    def on_stray_response(self, response: Response, transport: str, remote: tuple[str, int]) -> None:
        if self.stateless.response(response, transport):
            return
        log.debug("server: stray response %s dropped", response)

    def on_server_timeout(self, handle: ServerHandle) -> None:
        log.debug("server: no ACK for %s", handle.request)

    def on_connection_lost(self, transport: str, addr: tuple[str, int]) -> None:
        """A TCP/TLS flow closed: the devices registered over it cannot be reached any more (a client behind a NAT
        or without a listener has no other way in, RFC 5626), so they count as offline at once."""
        for binding in self.registrar.from_source(*addr):
            if binding.transport == transport:
                self.registrar.mark_dead(binding)

    def is_us(self, uri: SipUri) -> bool:
        host = uri.host.strip("[]")
        port = uri.port or (5061 if uri.transport == "tls" else 5060)
        if self.stack.advertise is not None and (host, port) == self.stack.advertise:
            return True
        if host not in (self.stack.host, "localhost"):
            return False
        return port == self.stack.port or (
            self.stack.transport.tls_server is not None and port == self.stack.transport.tls_port
        )

    def past_us(self, routes: list[str]) -> list[str]:
        """Loose routing: `routes` without the leading entries that name us (two of them after a double
        Record-Route)."""
        first = 0
        while first < len(routes) and self.is_us(Address.parse(routes[first]).uri):
            first += 1
        return routes[first:]

    def aor_of(self, uri: SipUri) -> str:
        """The address of record a Request-URI (or From URI) names: `sip:bob@<this server>` is the one user
        called bob, whatever the domain they registered."""
        aor = aor_key(uri)
        if uri.user and self.is_us(uri):
            aor = self.registrar.aor_for_user(uri.user) or aor
        return aor

    def rr_uri(self, transport: str, dialog_token: str) -> str:
        """Our Record-Route entry for `transport`, carrying the dialog's token (see `dialog_token`)."""
        host, port = self.stack.host, self.stack.transport.tls_port if transport == "tls" else self.stack.port
        if self.stack.advertise is not None and transport == "udp":
            host, port = self.stack.advertise
        host = bracket(host)
        return f"<sip:{host}:{port};transport={transport};lr;{DIALOG_PARAM}={dialog_token}>"

    def dialog_token(self, call_id: str, tag: str) -> str:
        """A MAC of the Call-ID and the From tag of a request that makes a dialog, under a secret of this server.
        It goes in our Record-Route, so every request of that dialog carries it back in its Route: with `users=`
        it is what lets an in-dialog request through without credentials (it proves that this server routed the
        dialog's first request, after authenticating its sender). Stateless: no table grows with the dialogs."""
        mac = hmac.new(self._dialog_secret, f"{call_id}\n{tag}".encode("utf-8", "surrogateescape"), hashlib.sha256)
        return mac.hexdigest()[:20]

    def _routed_dialog(self, request: Request) -> bool:
        """Does the request's Route name us with the token of its own dialog (made with either tag: the caller's
        tag is the From tag one way and the To tag the other)?"""
        call_id = request.call_id
        tags = [t for t in (request.from_.tag, request.to.tag) if t]
        for value in request.headers.get_all("Route"):
            uri = Address.parse(value).uri
            if not self.is_us(uri):
                return False
            token = uri.params.get(DIALOG_PARAM)
            if token and any(hmac.compare_digest(token, self.dialog_token(call_id, t)) for t in tags):
                return True
        return False

    def _needs_credentials(self, request: Request) -> bool:
        """With `users=`: whether `request` must authenticate. Exempt: CANCEL (hop by hop, it only matches a
        transaction its INVITE opened), an OPTIONS ping to the server itself, and in-dialog requests of a dialog
        this server record-routed (`_routed_dialog`) or owns (the focus's, made after authenticating)."""
        method = request.method
        if method == "CANCEL":
            return False
        if request.to.tag is None:
            return not (method == "OPTIONS" and not request.uri.user and not request.headers.get("Route"))
        return not (self.focus.wants(request) or self._routed_dialog(request))

    # -- requests -----------------------------------------------------------------------------------------
    def on_request(
        self, request: Request, handle: ServerHandle | None, transport: str, remote: tuple[str, int]
    ) -> None:
        mf = request.max_forwards
        if handle is None:  # ACK for a 2xx: forward statelessly along its route
            if self.focus.wants(request):
                self.focus.on_request(request, None)
                return
            if self.auth is not None and not self._routed_dialog(request):
                # an ACK cannot be challenged: with users=, only one of a dialog we routed goes on
                self.stack.stats["dropped"] += 1
                self.stack.sink.record_drop(
                    transport, remote, "ACK outside a dialog this server routed", bytes(request), self.stack.name
                )
                return
            self._forward_ack(request)
            return
        if mf is not None and mf <= 0 and not (request.method == "OPTIONS" and self.is_us(request.uri)):
            self.stack.respond(handle, make_response(request, 483, to_tag=new_tag()))
            return
        if (
            self.auth is not None
            and self._needs_credentials(request)
            and not self._authenticated(request, handle, remote)
        ):
            return
        if request.method == "REGISTER":
            self._register(request, handle, transport, remote)
            return
        routes = self.past_us(request.headers.get_all("Route"))
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
                self.stack.respond(handle, resp)
            else:
                self.stack.respond(
                    handle, make_response(request, 404, "Not Found (no user in the Request-URI)", to_tag=new_tag())
                )
            return
        aor = self.aor_of(request.uri)
        bindings = self.registrar.live(aor, time.monotonic())
        if not bindings:
            self._offline(request, handle, aor)
            return
        self._fork(handle, self._branches(request, bindings, transport), aor=aor)

    # -- offline users (offline.py) ---------------------------------------------------------------------------
    def _offline(self, request: Request, handle: ServerHandle, aor: str) -> None:
        """Nobody is registered for `aor`: 404 if we never heard of the user, else keep a pager-mode MESSAGE for
        them (202) or, for anything else (or if the store is off or full), 480 / 503."""
        user = request.uri.user or ""
        configured = self.auth is not None and user in self.auth.users
        if aor not in self.registrar.known and not configured:
            self.stack.respond(handle, make_response(request, 404, "Not Found (no such user here)", to_tag=new_tag()))
            return
        if aor not in self.registrar.known and self.is_us(request.uri):
            # sip:carol@<this server> for a user of users= who never registered: we do not know the address
            # of record they will register, so there is nowhere to keep the message
            self.stack.respond(
                handle,
                make_response(
                    request, 480, f"Temporarily Unavailable ({user} has not registered here yet)", to_tag=new_tag()
                ),
            )
            return
        storable = (
            request.method == "MESSAGE" and self.offline.enabled and not is_composing(request)
        )  # "typing" goes stale: not kept
        if not storable:
            self.stack.respond(
                handle, make_response(request, 480, "Temporarily Unavailable (not registered now)", to_tag=new_tag())
            )
            return
        try:
            kept: StoredMessage | Refused = self.offline.store(aor, request, time.monotonic(), time.time())
        except OfflineStoreError as exc:  # not on disk, so no 202: the sender may try again (offline_db.py)
            kept = Refused(503, f"Service Unavailable ({exc})")
        if isinstance(kept, Refused):
            resp = make_response(request, kept.status, kept.reason, to_tag=new_tag())
            if kept.status == 503:
                resp.headers.set("Retry-After", "60")
            self.stack.respond(handle, resp)
            return
        self.stack.respond(
            handle,
            make_response(request, 202, f"Accepted (stored for later delivery: {aor} is offline)", to_tag=new_tag()),
        )

    def _deliver_offline(self, aor: str) -> None:
        """Start handing `aor` their stored messages (one delivery run per user at a time)."""
        if self.stack.closed or aor in self._delivering or not self.offline.count(aor):
            return
        self._delivering.add(aor)
        asyncio.ensure_future(self._drain(aor))

    async def _drain(self, aor: str) -> None:
        """Deliver the messages waiting for `aor`, oldest first and one at a time (so they arrive in order), to
        all of the user's devices (forked like a live message). A transient failure stops the run and keeps the
        message; another run starts at the next REGISTER or after `retry_interval`, until it expires."""
        retry = False
        try:
            while not self.stack.closed:
                now = time.monotonic()
                msg = self.offline.next(aor, now)
                bindings = self.registrar.live(aor, now) if msg is not None else []
                if msg is None or not bindings:
                    return
                done: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
                self._fork(
                    None,
                    self._branches(msg.request.copy(), bindings, "udp"),
                    on_final=lambda resp, done=done: done.done() or done.set_result(resp),
                )
                resp = await done
                if 200 <= resp.status < 300:
                    self.offline.delivered(msg)
                elif resp.status in TRANSIENT:
                    log.info("offline message for %s not delivered (%s %s); kept", aor, resp.status, resp.reason)
                    retry = True
                    return
                else:
                    log.info(
                        "offline message for %s refused by the device (%s %s); dropped", aor, resp.status, resp.reason
                    )
                    self.offline.rejected(msg)
        finally:
            self._delivering.discard(aor)
            if retry and not self.stack.closed and self.stack.loop is not None:
                self.stack.loop.call_later(self.offline.limits.retry_interval, self._deliver_offline, aor)

    def _branches(self, request: Request, bindings: list[Binding], transport: str) -> list[Hop]:
        """One copy of an initial request per device of the user (RFC 3261 §16.6), each with its Request-URI and
        Record-Route. Two bindings that reach the same socket make one branch: a device must not get a request
        twice (it would answer the second copy 482 Loop Detected)."""
        branches: list[Hop] = []
        seen: set[tuple[str, tuple[str, int]]] = set()
        for binding in bindings:
            target = self.binding_target(binding)
            if (target.transport, target.addr) in seen:
                continue
            seen.add((target.transport, target.addr))
            fwd = request.copy()
            fwd.uri = binding.contact
            if request.method in ("INVITE", "SUBSCRIBE", "REFER"):
                token = self.dialog_token(request.call_id, request.from_.tag or "")
                if target.transport != transport:
                    fwd.headers.prepend("Record-Route", self.rr_uri(transport, token))
                    fwd.headers.prepend("Record-Route", self.rr_uri(target.transport, token))
                else:
                    fwd.headers.prepend("Record-Route", self.rr_uri(transport, token))
            branches.append((fwd, target, binding))
        return branches

    def _authenticated(self, request: Request, handle: ServerHandle, remote: tuple[str, int]) -> bool:
        """Check the credentials of a request that needs them (`_needs_credentials`): they must be valid and
        be those of the user it claims to come from (the To user for REGISTER, the From user otherwise)."""
        assert self.auth is not None
        method = request.method
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
            self.stack.respond(handle, resp)
            return False
        claimed = (request.to if method == "REGISTER" else request.from_).uri.user
        if claimed != result.user:
            self.stack.respond(
                handle,
                make_response(
                    request,
                    403,
                    f"Forbidden (authenticated as {result.user}, but the request claims {claimed})",
                    to_tag=new_tag(),
                ),
            )
            return False
        request.headers.remove("Proxy-Authorization")  # consumed here; the next hop must not see them
        request.headers.remove("Authorization")
        return True

    def party_target(self, request: Request, transport: str, remote: tuple[str, int]) -> Target | None:
        """Where this server may send requests to the party that sent `request` (the focus's relayed MESSAGEs and
        NOTIFYs): one of the contacts its From user registered here, never an address a request merely names.
        The binding whose Contact the request's Contact names wins; else the one registered from the address the
        request came from (the same device behind a NAT). None for anybody else (the caller answers 403)."""
        uri = request.from_.uri
        if not uri.user:
            return None
        bindings = self.registrar.lookup(self.aor_of(uri), time.monotonic())
        if not bindings:
            return None
        contacts = request.contacts
        if contacts:
            named = contacts[0].uri
            wanted = (named.host.strip("[]").lower(), named.port or 5060)
            for b in bindings:
                if b.contact_addr == wanted:
                    return self.binding_target(b)
        for b in bindings:
            if b.source == remote and b.transport == transport:
                return self.binding_target(b)
        return None

    def binding_target(self, binding: Binding) -> Target:
        """Where requests for a registered device go (RFC 3261 §16.5/§16.6: the Contact it registered), except
        - over TCP/TLS, while the connection its REGISTER came on is open: that connection (the only way to
          reach a client without a listener, RFC 5923/5626);
        - where it asked for its flow (RFC 5626 outbound: `;ob`, or `reg-id` + `+sip.instance`);
        - where its Contact cannot be right as seen from here (a client behind a NAT; Kamailio's `nat_uac_test`
          idea): its REGISTER came from another address than its Via says, or its Contact is a private,
          loopback or link-local address registered from another host: its source.
        A Contact on another port of the same host is a third-party registration (RFC 3261 §10: a load rig
        or a softphone with separate sockets): it gets the request at its Contact, as Kamailio does."""
        if binding.transport != "udp" and self.stack.transport.has_connection(binding.source):
            return Target(binding.transport, *binding.source)
        if binding.outbound or _behind_nat(binding):
            if binding.transport == "udp":
                return Target("udp", *binding.source)
        try:
            return target_of(binding.contact)
        except OSError:  # a Contact naming a host we cannot resolve: its source is the only way back
            return Target(binding.transport, *binding.source)

    def _route_in_dialog(self, request: Request, handle: ServerHandle, transport: str, routes: list[str]) -> None:
        next_hop = Address.parse(routes[0]).uri if routes else request.uri
        now = time.monotonic()
        binding = self.registrar.find_contact(next_hop.host.strip("[]"), next_hop.port, now)
        if binding is None:
            self.stack.respond(
                handle,
                make_response(
                    request,
                    404 if request.method != "BYE" else 481,
                    "Not Found (not a contact registered here; this server relays nothing else)",
                ),
            )
            return
        target = self.binding_target(binding) if not routes else target_of(next_hop)
        self._fork(handle, [(request.copy(), target, binding if not routes else None)])

    def _fork(
        self,
        handle: ServerHandle | None,
        branches: list[Hop],
        on_final: Callable[[Response], None] | None = None,
        *,
        aor: str | None = None,
    ) -> Fork | None:
        """Forward on every branch at once (one branch for in-dialog requests). The answer goes to the server
        transaction `handle`, or to `on_final` (the offline store's deliveries, which have no upstream). For an
        initial request to the user `aor`, devices that all stopped answering make the user offline for it."""
        if handle is not None and any(t.transport == "udp" for _, t, _ in branches) and too_big_for_udp(handle.request):
            # (it came over TCP: sent on over UDP it would fail at every try, and the device would look dead)
            self.stack.reply(handle, 513, "Message Too Large (it does not fit in one UDP datagram to the device)")
            return None
        if handle is not None:

            def upstream(resp: Response) -> None:
                if aor is not None and resp.status >= 300 and fork.all_silent:
                    self._devices_gone(handle, aor)
                else:
                    self.stack.respond(handle, self._upstream(resp))

            fork = Fork(
                self,
                branches,
                upstream,
                late_2xx=lambda resp: self.stack.send_stateless(
                    self._upstream(resp), self.stack.response_target(handle)
                ),
                device_timeout=self.device_timeout if aor is not None else None,
            )
            self._forwarded[id(handle)] = fork
            fork.on_done = lambda: self._forwarded.pop(id(handle), None)
        else:
            assert on_final is not None
            fork = Fork(self, branches, on_final, device_timeout=self.device_timeout)
        fork.start()
        return fork

    def _devices_gone(self, handle: ServerHandle, aor: str) -> None:
        """Every device of `aor` left the request unanswered (crashed, unplugged, asleep behind a NAT): a definite
        answer now instead of Timer F's 32 s: a pager MESSAGE is kept for later (202), anything else 480."""
        request = handle.request
        if request.method == "MESSAGE":
            self._offline(request, handle, aor)
        else:
            self.stack.reply(handle, 480, "Temporarily Unavailable (the user's devices do not answer)")

    @staticmethod
    def _upstream(resp: Response) -> Response:
        up = resp.copy()
        up.headers.pop_first("Via")  # ours (RFC 3261 §16.7 step 3)
        return up

    def _forward_ack(self, request: Request) -> None:
        routes = self.past_us(request.headers.get_all("Route"))
        request.headers.set_all("Route", routes)
        next_hop = Address.parse(routes[0]).uri if routes else request.uri
        binding = self.registrar.find_contact(next_hop.host.strip("[]"), next_hop.port, time.monotonic())
        if binding is None:
            return
        target = self.binding_target(binding) if not routes else target_of(next_hop)
        mf = request.max_forwards
        request.headers.set("Max-Forwards", str((mf if mf is not None else 70) - 1))
        request.headers.prepend("Via", self.stack.via(target.transport))
        self.stack.send_stateless(request, target)

    def on_cancel(self, invite: ServerHandle, cancel: Request) -> None:
        fork = self._forwarded.get(id(invite))
        if fork is None:
            self.stack.reply(invite, 487)
            return
        # CANCEL every ringing device, passing on the caller's Reason (RFC 3326); their 487s come back on the
        # client transactions and the response context relays the best of them
        reasons = reason_mod.parse_all(cancel.headers.get_all("Reason"))
        fork.run(fork.ctx.cancel(reasons[0] if reasons else None))

    def _register(self, request: Request, handle: ServerHandle, transport: str, remote: tuple[str, int]) -> None:
        if any(not c.wildcard and self.is_us(c.uri) for c in request.contacts):
            # requests for that user would come back to us, and round again until Max-Forwards ran out: a few
            # hundred datagrams for each one sent (RFC 3261 §16.3 loop detection would only catch it at the end)
            self.stack.reply(handle, 403, "Forbidden (a Contact that names this server would route in a loop)")
            return
        now = time.monotonic()
        status, bindings, reason = self.registrar.register(request, transport, remote, now)
        if status == 423:
            resp = make_response(request, 423, to_tag=new_tag())
            resp.headers.set("Min-Expires", reason)
            self.stack.respond(handle, resp)
            return
        resp = make_response(request, status, None if status == 200 else reason, to_tag=new_tag())
        for b in bindings:
            resp.headers.add("Contact", f"<{b.contact}>;expires={b.remaining(now)}")
        resp.headers.set("Date", format_date(time.time()))
        self.stack.respond(handle, resp)
        if status == 200 and bindings:
            if self.journal is not None:
                self.journal.know(bindings[0].aor)
            self._deliver_offline(bindings[0].aor)  # messages kept while the user was offline, now


Hop = tuple[Request, Target, "Binding | None"]  # a request as forwarded, where it goes, the device it is for


@dataclass
class Branch:
    """One copy of a forked request: where it goes, its client transaction, and its CANCEL bookkeeping."""

    request: Request  # as forwarded (the proxy's Via goes on top when it is sent)
    target: Target
    binding: Binding | None = None  # the registered device it goes to (None: a next hop that is no device)
    client: ClientHandle | None = None
    ringing: bool = False  # a provisional response came: a CANCEL may be sent now (§9.1)
    cancel_reason: Reason | None | bool = False  # False: no CANCEL wanted; else the Reason to send with it
    timer: asyncio.TimerHandle | None = None  # the device's time to answer (ProxyCore.device_timeout)
    silent: bool = False  # the device did not answer in time: given up, its binding dead


class Fork:
    """A request forwarded on one or more branches (RFC 3261 §16.6-16.7): the client transactions, and the
    sans-IO `ResponseContext` (forking.py) that says what goes upstream and which branches to CANCEL.
    `upstream(resp)` gets responses as they came from downstream (the caller strips the proxy's Via)."""

    def __init__(
        self,
        core: ProxyCore,
        branches: list[Hop],
        upstream: Callable[[Response], None],
        late_2xx: Callable[[Response], None] | None = None,
        device_timeout: float | None = None,
    ) -> None:
        self.core = core
        self.branches = [Branch(req, target, binding) for req, target, binding in branches]
        self.device_timeout = device_timeout
        self.ctx = ResponseContext(branches[0][0].method, len(branches))
        self.upstream = upstream
        self.late_2xx = late_2xx
        self.on_done: Callable[[], None] | None = None

    def start(self) -> None:
        """Send every branch (§16.6 steps 7-8: Max-Forwards decremented, our Via on top)."""
        core = self.core
        for i, b in enumerate(self.branches):
            mf = b.request.max_forwards
            b.request.headers.set("Max-Forwards", str((mf if mf is not None else 70) - 1))
            b.request.headers.prepend("Via", core.stack.via(b.target.transport))
            b.client = core.stack.send_request(
                b.request, b.target, on_provisional=lambda r, i=i: self._provisional(i, r)
            )
            if self.late_2xx is not None:
                b.client.on_late_2xx = self.late_2xx
            if b.client.future.done():  # (a closed stack fails the request at once)
                self._final(i, b.client.future)
            else:
                b.client.on_final = lambda fut, i=i: self._final(i, fut)
                if self.device_timeout and b.binding is not None and core.stack.loop is not None:
                    b.timer = core.stack.loop.call_later(self.device_timeout, self._silent, i)

    @property
    def all_silent(self) -> bool:
        """Did every device leave the request unanswered (each given up after `device_timeout`)?"""
        return all(b.silent for b in self.branches)

    def _silent(self, i: int) -> None:
        """A device left the request without any response for `device_timeout`: give the branch up (a 408 for
        the response context) and mark the binding dead, so that the next request does not wait for it. Unless
        the device's address was heard from meanwhile: then it is alive on a lossy path, and Timer F decides."""
        b = self.branches[i]
        b.timer = None
        if b.client is None or b.client.future.done() or b.ringing:
            return
        stack = self.core.stack
        heard = stack.heard_from(b.target.addr)
        if heard is not None and stack.loop is not None and stack.loop.time() - heard < self.device_timeout:
            return
        b.silent = True
        if b.binding is not None:
            self.core.registrar.mark_dead(b.binding)
        log.info(
            "server: %s did not answer a %s within %g s: offline until it registers again",
            b.target,
            b.request.method,
            self.device_timeout,
        )
        self.core.stack.abandon_client(b.client, f"the device did not answer within {self.device_timeout:g} s")

    def _provisional(self, i: int, resp: Response) -> None:
        b = self.branches[i]
        if b.timer is not None:  # it answers: alive, however long it rings
            b.timer.cancel()
            b.timer = None
        if not b.ringing:
            b.ringing = True
            if b.cancel_reason is not False:  # the CANCEL waited for this provisional response (§9.1)
                self._send_cancel(b)
        self.run(self.ctx.provisional(i, resp))

    def _final(self, i: int, fut: asyncio.Future) -> None:
        b = self.branches[i]
        if b.timer is not None:
            b.timer.cancel()
            b.timer = None
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            resp = make_response(
                b.request,
                408,
                f"Request Timeout (no answer from {b.target.transport}:{b.target.host}:{b.target.port})",
                to_tag=new_tag(),
            )
        else:
            resp = fut.result()
        self.run(self.ctx.final(i, resp))
        if self.ctx.done:
            if self.on_done is not None:
                self.on_done()
                self.on_done = None
            # the branches' provisional handlers point back at this fork: drop them so that the fork, its
            # transactions and messages are freed by reference counting now, not by a garbage-collector pass
            # (at thousands of relays per second those passes cost as much as the relaying)
            for b in self.branches:
                if b.client is not None:
                    b.client.on_provisional = None

    def run(self, actions: list) -> None:
        """Execute the response context's actions."""
        for a in actions:
            if isinstance(a, Relay):
                self.upstream(a.response)
            elif isinstance(a, CancelBranches):
                for i in a.branches:
                    b = self.branches[i]
                    b.cancel_reason = a.reason
                    if b.ringing:
                        self._send_cancel(b)
            elif isinstance(a, EndBranch):
                b = self.branches[a.branch]
                ack = self.core.stack.ack_and_bye(b.request, a.response, b.target, a.reason)
                if b.client is not None and ack is not None:
                    b.client.ack = ack  # a retransmitted 2xx gets the ACK again, not relayed upstream

    def _send_cancel(self, b: Branch) -> None:
        if b.client is None or b.client.future.done():
            return
        cancel = make_cancel(b.request)
        if isinstance(b.cancel_reason, Reason):
            cancel.headers.add("Reason", str(b.cancel_reason))
        # a device that never answers the CANCEL does not hold the caller: the INVITE client transaction's
        # Timer B (kept running while it rings, sip/transaction.py) ends the branch with a 408 after 64*T1
        self.core.stack.send_request(cancel, b.target)


UDP_MAX = 65_507  # the largest UDP payload over IPv4


def too_big_for_udp(request: Request) -> bool:
    """Would `request`, with the Via and Record-Route a proxy adds, overflow one UDP datagram? (Only a request
    with a large body can: the serialisation is not paid for the others.)"""
    return len(request.body) > UDP_MAX - 8_192 and len(bytes(request)) + 1_024 > UDP_MAX


def _behind_nat(binding: Binding) -> bool:
    """True when the device sits behind a NAT and only its source address reaches it: its REGISTER was rewritten
    on the way (`Binding.natted`), or its Contact is a private, loopback, link-local or shared (CGNAT) address
    of another host than the one the REGISTER came from."""
    if binding.natted:
        return True
    host = binding.contact.host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: resolved and used as it is
    try:
        source = ipaddress.ip_address(binding.source[0])
    except ValueError:
        return False
    if ip == source or (ip.is_loopback and source.is_loopback):  # the same host: its Contact is right
        return False
    return ip.is_private or ip.is_loopback or ip.is_link_local or ip in _SHARED


_SHARED = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598 carrier-grade NAT space
