"""The SIP core that runs on the library loop: transports + transactions + timers (`SipCore`), and the
user agent of one endpoint on top of it (`UserAgent`): registration, digest retries, pager MESSAGE,
INVITE sessions with their dialogs.

Everything protocol-shaped is decided by the sans-IO state machines of `sip/` and `im/`; this module
only executes their actions (send bytes, arm timers) and routes what they deliver. All methods run on
the runtime loop thread.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from .errors import MessageTooLarge, RequestFailed, TransactionTimeout, TransportError
from .net.impairment import Impairment
from .net.transport import Target, TransportLayer
from .sip import digest, sdp
from .sip.completed import CompletedTransactions
from .sip.dialog import Dialog
from .sip.errors import LocalProtocolError, RemoteProtocolError
from .sip.headers import Headers
from .sip.message import Request, Response, make_response, new_branch, new_call_id, new_tag
from .sip.parser import parse_message
from .sip.transaction import (
    DEFAULT_TIMERS, ClientTransaction, Deliver, ServerTransaction, StartTimer, StopTimer, Terminated, Timeout, Timers,
    Transmit, client_key, make_cancel, server_key,
)
from .sip.uri import Address, SipUri, bracket
from .trace.extract import fields_of
from .trace.recorder import Trace

log = logging.getLogger("notebook_im.ua")

USER_AGENT = "notebook_im/0.1"
ALLOW = "INVITE, ACK, CANCEL, BYE, MESSAGE, OPTIONS, NOTIFY"
ACCEPT = ("application/sdp, text/plain, text/html, text/enriched, application/im-iscomposing+xml, message/cpim, "
          "message/imdn+xml, application/conference-info+xml")
# RFC 3261 §18.1.1: a request within 200 bytes of the path MTU (1500 for Ethernet), or larger than 1300 bytes
# when the MTU is unknown, must go over a congestion-controlled transport (TCP) instead of UDP
UDP_MAX_REQUEST = 1300


def resolve_host(host: str) -> str:
    """An IP literal for `host` (IPv6 brackets removed); names are resolved once (blocking, cached)."""
    h = host.strip("[]")
    try:
        ipaddress.ip_address(h)
        return h
    except ValueError:
        pass
    cached = _RESOLVED.get(h)
    if cached is None:
        cached = socket.getaddrinfo(h, None, type=socket.SOCK_DGRAM)[0][4][0]
        _RESOLVED[h] = cached
    return cached


_RESOLVED: dict[str, str] = {}


def target_of(uri: SipUri) -> Target:
    """Where a request for `uri` goes: its host and port (5060/5061 by default) over its transport."""
    transport = uri.transport
    port = uri.port or (5061 if transport == "tls" else 5060)
    return Target(transport, resolve_host(uri.host), port)


def request_target(request: Request) -> Target:
    routes = request.headers.get_all("Route")
    if routes:
        first = Address.parse(routes[0]).uri
        if "lr" in first.params:
            return target_of(first)
    return target_of(request.uri)


@dataclass
class ClientHandle:
    txn: ClientTransaction
    target: Target
    future: asyncio.Future
    on_provisional: Callable[[Response], None] | None = None
    ack: bytes | None = None            # the ACK we sent for a 2xx, resent when the 2xx is retransmitted
    on_late_2xx: Callable[[Response], None] | None = None  # a proxy relays retransmitted 2xx upstream
    timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    # called with the future as soon as it is settled, in the same turn of the loop (a done callback would wait
    # for the next one: the proxy relays each final response upstream this way, one loop turn sooner)
    on_final: Callable[[asyncio.Future], None] | None = None


@dataclass
class ServerHandle:
    txn: ServerTransaction
    transport: str
    remote: tuple[str, int]
    local: tuple[str, int]
    timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    cancelled: bool = False
    on_cancel: Callable[[], None] | None = None

    @property
    def request(self) -> Request:
        return self.txn.request

    @property
    def answered(self) -> bool:
        return self.txn.last_response is not None and self.txn.last_response.status >= 200


class SipCore:
    """Transport + transaction layer. Subclasses implement `on_request` (and may override `on_stray_response`)."""

    def __init__(self, *, name: str, host: str, port: int, trace: Trace, transports: tuple[str, ...] = ("udp", "tcp"),
                 timers: Timers = DEFAULT_TIMERS, tls_server: ssl.SSLContext | None = None, tls_port: int = 0,
                 tls_client: ssl.SSLContext | None = None, impairment: Impairment | None = None) -> None:
        self.name = name
        self.trace = trace
        self.timers = timers
        self._transport_errors: dict[tuple[str, tuple[str, int]], str] = {}
        self.transport = TransportLayer(host, port, self._on_data, on_drop=self._on_stream_drop,
                                        on_error=self._on_transport_error, transports=transports,
                                        on_lost=self._on_connection_lost,
                                        tls_server=tls_server, tls_port=tls_port, tls_client=tls_client,
                                        impairment=impairment)
        self._clients: dict[tuple[Any, ...], ClientHandle] = {}
        self._servers: dict[tuple[Any, ...], ServerHandle] = {}
        self.stats = {"received": 0, "sent": 0, "bad_request_400": 0, "dropped": 0, "retransmissions_absorbed": 0,
                      "refused_503": 0}
        # live server transactions per source (address, port) and in all: beyond these a flood is refused
        # with 503 (UDP transactions linger 64*T1 after their answer, so this is what bounds memory)
        self.max_transactions_per_source = 20_000
        self.max_transactions = 200_000
        self._per_source: dict[tuple[str, int], int] = {}
        # completed UDP non-INVITE server transactions waiting out Timer J, compacted (see sip/completed.py);
        # they do not count against the limits above, which bound live (unanswered) transactions
        self.completed = CompletedTransactions()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.transport.start()

    async def close(self) -> None:
        self.closed = True
        for h in list(self._clients.values()):
            self._cancel_timers(h.timers)
            if not h.future.done():
                h.future.set_exception(TransactionTimeout(h.txn.request.method, str(h.txn.request.uri), "stack closed"))
                self._finalised(h)
        for sh in list(self._servers.values()):
            self._cancel_timers(sh.timers)
        self._clients.clear()
        self._servers.clear()
        self.completed.clear()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
        await self.transport.close()

    @property
    def host(self) -> str:
        return self.transport.host

    @property
    def port(self) -> int:
        return self.transport.port

    advertise: tuple[str, int] | None = None  # the address peers must use to reach us (NAT, port forward, relay)

    def via(self, transport: str, branch: str | None = None) -> str:
        host, port = self.advertise if self.advertise and transport == "udp" else self.transport.local_addr(transport)
        h = bracket(host)
        # RFC 5923 ;alias on streams: the peer may send requests for our sent-by back over this connection
        # (how Kamailio, with tcp_accept_aliases, reaches a TLS client that has no listener of its own)
        alias = ";alias" if transport != "udp" else ""
        return f"SIP/2.0/{transport.upper()} {h}:{port};branch={branch or new_branch()};rport{alias}"

    # -- sending ----------------------------------------------------------------------------------
    def _send(self, data: bytes, target: Target, message: Request | Response | None = None) -> None:
        """Send `data` (the bytes of `message`, when the caller has it: the trace then indexes its parsed
        header fields instead of scanning the bytes)."""
        if self.closed:
            return
        self.stats["sent"] += 1
        try:
            self.transport.send(data, target)
        except (OSError, RuntimeError) as exc:
            log.warning("%s: send to %s failed: %s", self.name, target, exc)
        # the source address the peer sees: a connection's own local port on TCP/TLS, the socket's on UDP
        self.trace.record_sip("out", target.transport, self.transport.source_addr(target), target.addr, data, self.name,
                              fields=fields_of(message) if message is not None else None)

    def send_stateless(self, message: Request | Response, target: Target) -> None:
        self._send(bytes(message), target, message)

    def send_request(self, request: Request, target: Target | None = None, *,
                     on_provisional: Callable[[Response], None] | None = None) -> ClientHandle:
        """Start a client transaction; `handle.future` resolves with the final response."""
        assert self.loop is not None
        target = target or request_target(request)
        txn = ClientTransaction(request, reliable=target.transport != "udp", timers=self.timers)
        handle = ClientHandle(txn, target, self.loop.create_future(), on_provisional)
        if self.closed:  # nothing can be sent or received any more: fail at once rather than hang
            handle.future.set_exception(TransactionTimeout(request.method, str(request.uri), "stack closed"))
            handle.future.exception()  # fire-and-forget callers (BYE, CANCEL) need not look: no "never retrieved" log
            return handle
        self._clients[txn.key] = handle
        self._execute_client(handle, txn.start())
        return handle

    async def request(self, request: Request, target: Target | None = None, *,
                      on_provisional: Callable[[Response], None] | None = None) -> Response:
        return await self.send_request(request, target, on_provisional=on_provisional).future

    def respond(self, handle: ServerHandle, response: Response) -> None:
        if not response.headers.get("Server") and response.status > 100:
            response.headers.set("Server", USER_AGENT)
        try:
            actions = handle.txn.respond(response)
        except LocalProtocolError:
            log.debug("%s: late response %s ignored", self.name, response)
            return
        self._execute_server(handle, actions)

    def response_target(self, handle: ServerHandle) -> Target:
        if handle.transport != "udp":
            return Target(handle.transport, *handle.remote)
        host, port = handle.txn.request.top_via.response_address()
        return Target("udp", host, port)

    # -- receiving --------------------------------------------------------------------------------
    def _on_data(self, data: bytes, transport: str, remote: tuple[str, int], local: tuple[str, int]) -> None:
        self.stats["received"] += 1
        if len(data) <= 4 and not data.strip():
            return  # keep-alive
        try:
            message = parse_message(data, stream=transport != "udp")
        except RemoteProtocolError as exc:
            # not SIP: it goes to the (bounded) drop list, not the message trace, so garbage cannot fill memory
            self._reject_malformed(exc, data, transport, remote)
            return
        except Exception as exc:  # noqa: BLE001 - a parser bug must cost one datagram, never the stack
            log.exception("%s: parser failed on a datagram from %s", self.name, remote)
            self.stats["dropped"] += 1
            self.trace.record_drop(transport, remote, f"parser error: {type(exc).__name__}", data, self.name)
            return
        self.trace.record_sip("in", transport, local, remote, data, self.name, fields=fields_of(message))
        try:
            if isinstance(message, Request):
                self._on_request_message(message, transport, remote, local)
            else:
                self._on_response_message(message, transport, remote)
        except RemoteProtocolError as exc:
            self._reject_malformed(exc, data, transport, remote)
        except Exception:  # noqa: BLE001 - one bad message must never kill the stack
            log.exception("%s: error handling message from %s", self.name, remote)
            self.stats["dropped"] += 1
            self.trace.record_drop(transport, remote, "internal error while handling", data, self.name)

    def _reject_malformed(self, exc: RemoteProtocolError, data: bytes, transport: str, remote: tuple[str, int]) -> None:
        req = exc.message
        if isinstance(req, Request) and req.method != "ACK":
            try:
                resp = make_response(req, exc.status_code, _reason_phrase(exc))
                via = req.top_via
                if transport == "udp":
                    host = remote[0]
                    port = remote[1] if "rport" in via.params else via.sent_by[1]
                    target = Target("udp", host, port)
                else:
                    target = Target(transport, *remote)
                self.stats["bad_request_400"] += 1
                self.trace.record_drop(transport, remote, f"answered {exc.status_code}: {exc.reason}", data, self.name)
                self.send_stateless(resp, target)
                return
            except (RemoteProtocolError, LocalProtocolError, ValueError):
                pass
        self.stats["dropped"] += 1
        self.trace.record_drop(transport, remote, exc.reason, data, self.name)

    def _on_stream_drop(self, data: bytes, transport: str, remote: tuple[str, int] | None, reason: str) -> None:
        self.stats["dropped"] += 1
        self.trace.record_drop(transport, remote, reason, data, self.name)

    def _on_transport_error(self, transport: str, addr: tuple[str, int], reason: str) -> None:
        self._transport_errors[(transport, addr)] = reason  # read by the Timeout actions below
        for h in list(self._clients.values()):
            if h.target.transport == transport and h.target.addr == addr:
                self._execute_client(h, h.txn.transport_error())
        self._transport_errors.pop((transport, addr), None)

    def _on_request_message(self, req: Request, transport: str, remote: tuple[str, int], local: tuple[str, int]) -> None:
        # RFC 3261 §18.2.1 + RFC 3581: note where the request really came from
        top = req.top_via
        if "rport" in top.params or top.host.strip("[]") != remote[0]:
            params: dict[str, str | None] = {"received": remote[0]}
            if "rport" in top.params:
                params["rport"] = str(remote[1])
            top = top.with_params(**params)
            req.headers.replace_first("via", str(top), top)
        key = server_key(req)
        if req.method == "ACK":
            sh = self._servers.get(key)
            if sh is not None and sh.txn.state.value in ("completed", "confirmed"):
                self._execute_server(sh, sh.txn.receive(req))
                return
            self.on_request(req, None, transport, remote)  # ACK for a 2xx: end to end, no transaction
            return
        existing = self._servers.get(key)
        if existing is not None:
            self.stats["retransmissions_absorbed"] += 1
            self._execute_server(existing, existing.txn.receive(req))
            return
        done = self.completed.get(key)
        if done is not None:  # Completed state (RFC 3261 §17.2.2): the request again, so the response again
            self.stats["retransmissions_absorbed"] += 1
            self._send(done[0], Target(*done[1]))
            return
        if req.method == "CANCEL":
            self._on_cancel(req, transport, remote, local)
            return
        source = remote  # (address, port): one client socket; all of loopback is one address
        if self._per_source.get(source, 0) >= self.max_transactions_per_source or len(self._servers) >= self.max_transactions:
            # a flood from one address: refuse statelessly, remember nothing (memory stays bounded)
            self.stats["refused_503"] += 1
            resp = make_response(req, 503, "Service Unavailable (too many transactions from your address)", to_tag=new_tag())
            resp.headers.set("Retry-After", "5")
            self.send_stateless(resp, self.response_target(ServerHandle(ServerTransaction(req), transport, remote, local)))
            return
        txn = ServerTransaction(req, reliable=transport != "udp", timers=self.timers)
        sh = ServerHandle(txn, transport, remote, local)
        self._servers[key] = sh
        self._per_source[source] = self._per_source.get(source, 0) + 1
        self._execute_server(sh, txn.start())

    def _on_cancel(self, req: Request, transport: str, remote: tuple[str, int], local: tuple[str, int]) -> None:
        txn = ServerTransaction(req, reliable=transport != "udp", timers=self.timers)
        ch = ServerHandle(txn, transport, remote, local)
        self._servers[server_key(req)] = ch
        txn.start()  # the CANCEL is answered here, not delivered to the TU
        invite_key = (server_key(req)[0], server_key(req)[1], "INVITE")
        ih = self._servers.get(invite_key)
        if ih is None or ih.answered:
            self.respond(ch, make_response(req, 481))
            return
        self.respond(ch, make_response(req, 200))
        ih.cancelled = True
        if ih.on_cancel is not None:
            ih.on_cancel()
        else:
            self.on_cancel(ih)

    def on_cancel(self, invite: ServerHandle) -> None:
        """An INVITE we have not answered was cancelled: answer 487 (subclasses may do more)."""
        self.respond(invite, make_response(invite.request, 487, to_tag=new_tag()))

    def _on_response_message(self, resp: Response, transport: str, remote: tuple[str, int]) -> None:
        handle = self._clients.get(client_key(resp))
        if handle is None:
            self.on_stray_response(resp, transport, remote)
            return
        self._execute_client(handle, handle.txn.receive(resp))

    # -- action execution -------------------------------------------------------------------------
    def _execute_client(self, h: ClientHandle, actions: list) -> None:
        for a in actions:
            if isinstance(a, Transmit):
                self._send(bytes(a.message), h.target, a.message)
            elif isinstance(a, StartTimer) and a.name == "K":
                # Completed state of a non-INVITE client transaction (RFC 3261 §17.1.2.2): it only absorbs
                # retransmitted final responses until Timer K. A response matching no transaction is dropped
                # anyway (on_stray_response), so the transaction can go now: the same behaviour on the wire,
                # without keeping 5 s (T4) of transaction objects alive at thousands of requests per second.
                self._forget_client(h)
            elif isinstance(a, StartTimer):
                self._arm(h.timers, a.name, a.delay, lambda n=a.name: self._execute_client(h, h.txn.timer(n)))
            elif isinstance(a, StopTimer):
                self._disarm(h.timers, a.name)
            elif isinstance(a, Deliver):
                resp = a.message
                if resp.status < 200:
                    if h.on_provisional is not None:
                        try:
                            h.on_provisional(resp)
                        except Exception:  # noqa: BLE001
                            log.exception("provisional response handler failed")
                elif not h.future.done():
                    h.future.set_result(resp)
                    self._finalised(h)
                elif h.ack is not None:  # retransmitted 2xx: our ACK was lost, send it again
                    self._send(h.ack, h.target)
                elif h.on_late_2xx is not None:
                    h.on_late_2xx(resp)
            elif isinstance(a, Timeout):
                if not h.future.done():
                    req = h.txn.request
                    reason = self._transport_errors.get((h.target.transport, h.target.addr))
                    if reason is not None:
                        h.future.set_exception(TransportError(req.method, str(req.uri), reason))
                    else:
                        h.future.set_exception(TransactionTimeout(
                            req.method, str(req.uri), f"no response within {64 * self.timers.t1:g} s (timer {a.timer})"))
                    self._finalised(h)
            elif isinstance(a, Terminated):
                self._forget_client(h)

    def _forget_client(self, h: ClientHandle) -> None:
        self._cancel_timers(h.timers)
        if self._clients.get(h.txn.key) is h:
            del self._clients[h.txn.key]

    @staticmethod
    def _finalised(h: ClientHandle) -> None:
        """Run `h.on_final` once the future is settled (its exception then counts as retrieved by it)."""
        cb = h.on_final
        if cb is None:
            return
        h.on_final = None
        h.future.exception()  # marks an exception as retrieved: the callback deals with it (no "never retrieved" log)
        try:
            cb(h.future)
        except Exception:  # noqa: BLE001 - a handler must not break the transaction layer
            log.exception("final response handler failed")

    def _execute_server(self, h: ServerHandle, actions: list) -> None:
        sent: bytes | None = None
        for a in actions:
            if isinstance(a, Transmit):
                sent = bytes(a.message)
                self._send(sent, self.response_target(h), a.message)
            elif isinstance(a, StartTimer):
                if a.name == "J" and sent is not None and a.delay > 0:
                    self._complete(h, sent, a.delay)  # the transaction lives on compactly until Timer J
                    return
                self._arm(h.timers, a.name, a.delay, lambda n=a.name: self._execute_server(h, h.txn.timer(n)))
            elif isinstance(a, StopTimer):
                self._disarm(h.timers, a.name)
            elif isinstance(a, Deliver):
                try:
                    self.on_request(a.message, h, h.transport, h.remote)
                except RemoteProtocolError as exc:
                    if not h.answered:
                        self.respond(h, make_response(h.request, exc.status_code, _reason_phrase(exc)))
                except Exception:  # noqa: BLE001 - answer 500 rather than leave the peer retransmitting
                    log.exception("%s: handler for %s failed", self.name, a.message)
                    if not h.answered:
                        self.respond(h, make_response(h.request, 500))
            elif isinstance(a, Timeout):
                self.on_server_timeout(h)
            elif isinstance(a, Terminated):
                self._forget_server(h, server_key(h.txn.request))

    def _complete(self, h: ServerHandle, response: bytes, timer_j: float) -> None:
        """Move a non-INVITE server transaction that answered over UDP into `self.completed` (its Completed
        state, RFC 3261 §17.2.2) and drop the full transaction object."""
        assert self.loop is not None
        key = server_key(h.txn.request)
        self._forget_server(h, key)
        now = self.loop.time()
        target = self.response_target(h)
        # the target as a plain tuple: an entry made only of strings, numbers and bytes is one the garbage
        # collector stops tracking, and there are thousands of entries per second under load
        self.completed.add(key, response, (target.transport, target.host, target.port), h.remote, now + timer_j)
        if self._sweep_handle is None:
            self._sweep_handle = self.loop.call_later(min(timer_j, 1.0), self._sweep_completed)

    def _sweep_completed(self) -> None:
        """Timer J for the compacted transactions: one timer for all of them, every second at most."""
        assert self.loop is not None
        self.completed.expire(self.loop.time())
        nxt = self.completed.next_expiry()
        self._sweep_handle = None if nxt is None or self.closed else \
            self.loop.call_later(max(0.05, min(1.0, nxt - self.loop.time())), self._sweep_completed)

    def _forget_server(self, h: ServerHandle, key: tuple[Any, ...]) -> None:
        self._cancel_timers(h.timers)
        if self._servers.get(key) is h:
            del self._servers[key]
            left = self._per_source.get(h.remote, 1) - 1
            if left > 0:
                self._per_source[h.remote] = left
            else:
                self._per_source.pop(h.remote, None)

    def _arm(self, timers: dict[str, asyncio.TimerHandle], name: str, delay: float, fn: Callable[[], None]) -> None:
        self._disarm(timers, name)
        assert self.loop is not None
        if delay <= 0:
            self.loop.call_soon(fn)
        else:
            timers[name] = self.loop.call_later(delay, fn)

    @staticmethod
    def _disarm(timers: dict[str, asyncio.TimerHandle], name: str) -> None:
        t = timers.pop(name, None)
        if t is not None:
            t.cancel()

    @staticmethod
    def _cancel_timers(timers: dict[str, asyncio.TimerHandle]) -> None:
        for t in timers.values():
            t.cancel()
        timers.clear()

    # -- hooks --------------------------------------------------------------------------------------
    def on_request(self, request: Request, handle: ServerHandle | None, transport: str, remote: tuple[str, int]) -> None:
        raise NotImplementedError

    def _on_connection_lost(self, transport: str, addr: tuple[str, int]) -> None:
        # requests still waiting for an answer on that connection will not get one: fail them now (the
        # session and pager layers retry a MESSAGE once, over a new connection)
        pending = [h for h in self._clients.values() if h.target.transport == transport and h.target.addr == addr
                   and not h.future.done()]
        if pending:
            self._on_transport_error(transport, addr, f"connection to {addr[0]}:{addr[1]} closed by the peer")
        self.on_connection_lost(transport, addr)

    def on_connection_lost(self, transport: str, addr: tuple[str, int]) -> None:
        """A TCP/TLS connection closed (subclasses may react, e.g. re-register)."""

    def on_stray_response(self, response: Response, transport: str, remote: tuple[str, int]) -> None:
        log.debug("%s: stray response %s dropped", self.name, response)

    def on_server_timeout(self, handle: ServerHandle) -> None:
        log.debug("%s: no ACK for %s", self.name, handle.request)


def _pick_challenge(response: Response) -> digest.Challenge | None:
    """The strongest digest challenge of a 401/407 we support (SHA-256 over MD5, RFC 8760 §2.4)."""
    proxy = response.status == 407
    header = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
    parsed: list[digest.Challenge] = []
    for value in response.headers.get_all(header):  # auth headers are not comma-split: one challenge per field
        try:
            parsed.append(digest.Challenge.parse(value, proxy=proxy))
        except RemoteProtocolError:
            continue
    if not parsed:
        return None
    for algorithm in ("SHA-256", "SHA-256-SESS", "MD5", "MD5-SESS"):
        for c in parsed:
            if c.algorithm == algorithm:
                return c
    return parsed[0]


def _reason_phrase(exc: RemoteProtocolError) -> str:
    """A reason phrase naming the problem (no CR/LF, bounded)."""
    text = exc.reason.replace("\r", " ").replace("\n", " ")
    prefix = {400: "Bad Request", 413: "Request Entity Too Large", 416: "Unsupported URI Scheme",
              488: "Not Acceptable Here", 505: "Version Not Supported", 513: "Message Too Large"}.get(exc.status_code, "Error")
    return f"{prefix} ({text[:120]})"


# ==================================================================================================
class UAListener(Protocol):
    """What the API layer implements to hear from its UserAgent."""

    def on_pager_message(self, request: Request) -> int: ...
    def on_invite(self, request: Request, handle: ServerHandle) -> None: ...
    def on_registration(self, state: str, detail: str) -> None: ...


class DialogUser(Protocol):
    """What a session implements to hear about its dialog."""

    def on_dialog_request(self, request: Request) -> int: ...
    def on_ack(self, request: Request) -> None: ...
    def on_bye(self, request: Request) -> None: ...


class CancelAware:
    """Mixin for a SipCore subclass: while the hook of a cancelled INVITE runs (`ServerHandle.on_cancel` or
    `on_cancel`), `self.cancelling` is the CANCEL request, so the hook can read its Reason header (RFC 3326:
    "answered elsewhere" or not). Taken from the call, not the transaction table: the CANCEL's own server
    transaction may be compacted away as soon as it is answered."""

    cancelling: Request | None = None

    def _on_cancel(self, req: Request, *args: Any) -> None:
        self.cancelling = req
        try:
            super()._on_cancel(req, *args)  # type: ignore[misc]
        finally:
            self.cancelling = None


class UserAgent(CancelAware, SipCore):
    """The SIP user agent of one Endpoint: an address of record, a Contact, an outbound proxy."""

    def __init__(self, *, aor: SipUri, proxy: SipUri | None, transport: str, trace: Trace, local_host: str,
                 local_port: int = 0, username: str | None = None, password: str | None = None,
                 display_name: str | None = None, listener: UAListener | None = None,
                 timers: Timers = DEFAULT_TIMERS, tls_client: ssl.SSLContext | None = None,
                 impairment: Impairment | None = None) -> None:
        super().__init__(name=aor.aor, host=local_host, port=local_port, trace=trace, timers=timers, tls_client=tls_client,
                         impairment=impairment)
        self.aor = aor
        self.proxy = proxy.with_params(lr=None, transport=transport) if proxy is not None else None
        self.default_transport = transport
        self.display_name = display_name
        self.listener = listener
        self.credentials = digest.DigestCredentials(username or aor.user or "", password) if password else None
        # the last digest challenge per (407?, realm): what answers the next one pre-emptively, where that is
        # allowed (`_apply_cached_auth`)
        self._challenges: dict[tuple[bool, str], digest.Challenge] = {}
        self.dialogs: dict[tuple[str, str, str], DialogUser] = {}
        # subscriptions whose SUBSCRIBE is not answered yet: (Call-ID, our tag) -> user; a NOTIFY may overtake
        # the 200 (RFC 6665 §4.1.2.4)
        self.pending_subscriptions: dict[tuple[str, str], Any] = {}
        self.registered_expires: int | None = None
        self._register_call_id = new_call_id(local_host)
        self._register_cseq = 0
        self._refresh_handle: asyncio.TimerHandle | None = None
        self._wanted_expires = 3600
        self._register_failures = 0
        self.retry_base = 1.0    # seconds before the first re-REGISTER after a failure, doubling up to retry_max
        self.retry_max = 60.0
        self.keepalive_interval = 90.0  # CRLF keep-alives to the registrar over TCP/TLS (RFC 5626 suggests 95-120 s)
        self._keepalive_handle: asyncio.TimerHandle | None = None
        self._cseq = 0
        self.instance_tag = new_tag()

    # -- addresses ----------------------------------------------------------------------------------
    @property
    def contact_uri(self) -> SipUri:
        host, port = self.transport.local_addr(self.default_transport)
        params = {"transport": self.default_transport} if self.default_transport != "udp" else {}
        uri = SipUri(host=bracket(host), user=self.aor.user, port=port)
        return uri.with_params(**params) if params else uri

    @property
    def contact(self) -> str:
        return f"<{self.contact_uri}>"

    @property
    def named_contact(self) -> str:
        """The Contact with our display name, for the responses that establish a session."""
        return str(Address(self.contact_uri, self.display_name))

    def local_address(self) -> Address:
        return Address(self.aor, self.display_name)

    def new_request(self, method: str, to: SipUri, *, body: bytes = b"", content_type: str | None = None,
                    call_id: str | None = None, cseq: int | None = None, from_tag: str | None = None,
                    extra: dict[str, str] | None = None, ruri: SipUri | None = None) -> Request:
        """An out-of-dialog request sent through the outbound proxy (pre-loaded Route, RFC 3261 §8.1.2)."""
        if cseq is None:
            self._cseq += 1
            cseq = self._cseq
        h = Headers()
        transport = self.default_transport
        h.add("Via", self.via(transport))
        h.add("Max-Forwards", "70")
        if self.proxy is not None:
            h.add("Route", f"<{self.proxy}>")
        h.add("From", f"{self.local_address()};tag={from_tag or new_tag()}")
        h.add("To", str(Address(to)))
        h.add("Call-ID", call_id or new_call_id(self.host))
        h.add("CSeq", f"{cseq} {method}")
        if method in ("INVITE", "REGISTER", "SUBSCRIBE", "REFER"):
            h.add("Contact", self.contact)
        h.add("User-Agent", USER_AGENT)
        for k, v in (extra or {}).items():
            h.add(k, v)
        if content_type:
            h.add("Content-Type", content_type)
        return Request(method, ruri or to, h, body)

    def _target_for(self, request: Request) -> Target:
        return request_target(request)

    def _congestion_safe(self, request: Request) -> tuple[Target | None, int]:
        """RFC 3261 §18.1.1: a request over `UDP_MAX_REQUEST` bytes that would go over UDP goes over TCP to the
        same host and port instead (servers listen on both; the top Via says TCP). Returns the TCP target
        (None: send as usual) and the request's size."""
        target = self._target_for(request)
        if target.transport != "udp":
            return None, 0
        size = len(bytes(request))
        if size <= UDP_MAX_REQUEST:
            return None, size
        vias = request.headers.get_all("Via")
        vias[0] = self.via("tcp", branch=request.top_via.branch)
        request.headers.set_all("Via", vias)
        return Target("tcp", target.host, target.port), size

    # -- requests with authentication ---------------------------------------------------------------
    async def send_authenticated(self, request: Request, *, on_provisional: Callable[[Response], None] | None = None,
                                 on_handle: Callable[[ClientHandle], None] | None = None) -> tuple[Request, Response]:
        """Send `request`; answer up to two digest challenges; return the request finally sent and the final response.
        A request too large for UDP goes over TCP; if TCP is refused, MessageTooLarge (a TransportError) says so."""
        self._apply_cached_auth(request)
        for attempt in range(3):
            tcp, size = self._congestion_safe(request)
            handle = self.send_request(request, tcp, on_provisional=on_provisional)
            if on_handle is not None:
                on_handle(handle)
            try:
                response = await handle.future
            except TransportError as exc:
                if tcp is None:
                    raise
                raise MessageTooLarge(request.method, str(request.uri), (
                    f"the {request.method} is {size:,} bytes, too large for UDP (RFC 3261 §18.1.1 sends requests over "
                    f"{UDP_MAX_REQUEST} bytes over TCP), and TCP to {tcp.host}:{tcp.port} was unavailable: {exc.reason}"
                )) from None
            if response.status not in (401, 407) or self.credentials is None or attempt == 2:
                return request, response
            challenge = _pick_challenge(response)
            if challenge is None:
                return request, response
            key = (challenge.proxy, challenge.realm)
            previous = self._challenges.get(key)
            if previous is not None and previous.nonce != challenge.nonce and not challenge.stale and attempt > 0:
                return request, response  # wrong credentials: the server challenged again with a fresh nonce
            self._challenges[key] = challenge
            request = self._retry_with_auth(request, challenge)
        return request, response

    def _apply_cached_auth(self, request: Request) -> None:
        """Credentials sent before anyone asks, only where they belong (a digest response is enough for an offline
        dictionary attack on the password, so nobody else may see one): `Authorization` on a REGISTER for a
        registrar realm that challenged with 401, `Proxy-Authorization` on an initial out-of-dialog request for a
        proxy realm that challenged with 407. Everything else (in-dialog requests above all, which reach the peer
        through proxies that need not consume credentials) carries them only after a challenge of its own."""
        if self.credentials is None or not self._challenges:
            return
        register = request.method == "REGISTER"
        if not register and request.to.tag is not None:
            return
        for (proxy, _realm), challenge in self._challenges.items():
            if proxy == register:
                continue
            name = "Proxy-Authorization" if proxy else "Authorization"
            request.headers.add(name, self.credentials.authorize(challenge, request.method, str(request.uri)))

    def _retry_with_auth(self, request: Request, challenge: digest.Challenge) -> Request:
        assert self.credentials is not None
        retry = request.copy()
        vias = retry.headers.get_all("Via")
        vias[0] = self.via(retry.top_via.transport.lower())
        retry.headers.set_all("Via", vias)
        cseq = retry.cseq
        new_number = cseq.number + 1
        if request.method == "REGISTER":
            self._register_cseq = new_number
        else:
            self._cseq = max(self._cseq, new_number)
        retry.headers.set("CSeq", f"{new_number} {cseq.method}")
        name = "Proxy-Authorization" if challenge.proxy else "Authorization"
        retry.headers.set(name, self.credentials.authorize(challenge, request.method, str(request.uri)))
        return retry

    # -- registration ----------------------------------------------------------------------------------
    async def register(self, expires: int = 3600) -> Response:
        if self.proxy is None:
            raise LocalProtocolError("no server to register with")
        if expires:
            self._wanted_expires = expires
        self._register_cseq += 1
        registrar = SipUri(host=self.aor.host)
        req = self.new_request("REGISTER", self.aor, call_id=self._register_call_id, cseq=self._register_cseq,
                               extra={"Expires": str(expires)}, ruri=registrar)
        req.headers.set("Contact", f"{self.contact};expires={expires}")
        _, resp = await self.send_authenticated(req)
        if resp.status >= 300:
            raise RequestFailed("REGISTER", resp.status, resp.reason, str(self.proxy))
        granted = expires
        for c in resp.contacts:
            if c.uri.port == self.contact_uri.port and c.uri.host == self.contact_uri.host:
                e = c.params.get("expires")
                if e and e.isdigit():
                    granted = int(e)
        if resp.expires is not None and not any(c.params.get("expires") for c in resp.contacts):
            granted = resp.expires
        self.registered_expires = granted if expires else None
        self._schedule_refresh(granted if expires else 0)
        if expires and self.default_transport != "udp" and self._keepalive_handle is None and self.loop is not None:
            self._keepalive_handle = self.loop.call_later(self.keepalive_interval, self._keepalive)
        return resp

    def _keepalive(self) -> None:
        self._keepalive_handle = None
        if self.closed or self.registered_expires is None or self.proxy is None or self.loop is None:
            return
        self.transport.keepalive(target_of(self.proxy))
        self._keepalive_handle = self.loop.call_later(self.keepalive_interval, self._keepalive)

    def _schedule_refresh(self, granted: int) -> None:
        if self._refresh_handle is not None:
            self._refresh_handle.cancel()
            self._refresh_handle = None
        if granted <= 0 or self.loop is None:
            return
        # refresh well before expiry: at half the interval for short grants, else 60 s ahead (RFC 3261 §10.2.4 leaves it open)
        delay = granted / 2 if granted < 240 else granted - 60
        self._refresh_handle = self.loop.call_later(delay, self._refresh)

    def _refresh(self) -> None:
        """Re-REGISTER (refresh, or recovery after a failure), retrying with exponential backoff."""
        async def run() -> None:
            self._refresh_handle = None
            try:
                await self.register(self._wanted_expires)
            except Exception as exc:  # noqa: BLE001 - report, then retry with backoff
                self._register_failures += 1
                delay = min(self.retry_base * 2 ** (self._register_failures - 1), self.retry_max)
                delay *= random.uniform(0.8, 1.0)  # spread a classroom's retries after a server restart
                if self.listener:
                    self.listener.on_registration("failed", f"{exc}; retrying in {delay:.1f} s")
                if self.loop is not None and not self.closed and self._refresh_handle is None:
                    self._refresh_handle = self.loop.call_later(delay, self._refresh)
                return
            recovered = self._register_failures > 0
            self._register_failures = 0
            if self.listener:
                self.listener.on_registration("recovered" if recovered else "refreshed",
                                              "registered again" if recovered else "registration refreshed")
        if not self.closed:
            asyncio.ensure_future(run())

    def on_connection_lost(self, transport: str, addr: tuple[str, int]) -> None:
        """Our connection to the registrar dropped (server restart?): register again at once, over a new one."""
        if self.closed or self.proxy is None or self.registered_expires is None:
            return
        try:
            target = target_of(self.proxy)
        except OSError:
            return
        if (target.transport, target.addr) == (transport, addr) and self.loop is not None:
            if self._refresh_handle is not None:
                self._refresh_handle.cancel()
            self._refresh_handle = self.loop.call_later(0.05, self._refresh)

    async def unregister(self) -> Response | None:
        if self._refresh_handle is not None:
            self._refresh_handle.cancel()
            self._refresh_handle = None
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
        if self.registered_expires is None:
            return None
        resp = await self.register(0)
        self.registered_expires = None
        return resp

    # -- pager mode ---------------------------------------------------------------------------------------
    async def send_message(self, to: SipUri, body: bytes, content_type: str,
                           extra: dict[str, str] | None = None) -> Response:
        req = self.new_request("MESSAGE", to, body=body, content_type=content_type, extra=extra)
        _, resp = await self.send_authenticated(req)
        return resp

    # -- sessions -------------------------------------------------------------------------------------------
    async def invite(self, to: SipUri, user: DialogUser, *, on_provisional: Callable[[Response], None] | None = None,
                     on_handle: Callable[[ClientHandle], None] | None = None,
                     accept_types: tuple[str, ...] = sdp.ACCEPT_TYPES,
                     extra: dict[str, str] | None = None) -> tuple[Dialog | None, Response]:
        body = sdp.build(self.host, self.transport.local_addr(self.default_transport)[1], accept_types=accept_types)
        req = self.new_request("INVITE", to, body=body, content_type="application/sdp",
                               extra={"Allow": ALLOW, "Supported": "ms-text-format", **(extra or {})})
        handles: list[ClientHandle] = []

        def keep(h: ClientHandle) -> None:
            handles.append(h)
            if on_handle:
                on_handle(h)
        sent, resp = await self.send_authenticated(req, on_provisional=on_provisional, on_handle=keep)
        if not 200 <= resp.status < 300:
            return None, resp
        dialog = Dialog.from_uac(sent, resp)
        ack = dialog.create_request("ACK", via=self.via(self._dialog_transport(dialog)), cseq=sent.cseq.number)
        ack_bytes = bytes(ack)
        target = request_target(ack)
        self._send(ack_bytes, target)
        if handles:
            handles[-1].ack = ack_bytes
        self.dialogs[dialog.id] = user
        return dialog, resp

    def cancel(self, handle: ClientHandle) -> None:
        """CANCEL a pending INVITE (RFC 3261 §9.1): same branch, Request-URI, Call-ID, From, To, CSeq number."""
        self.send_request(make_cancel(handle.txn.request), handle.target)

    def _dialog_transport(self, dialog: Dialog) -> str:
        if dialog.route_set:
            return dialog.route_set[0].uri.transport
        return dialog.remote_target.transport

    def dialog_request(self, dialog: Dialog, method: str, *, body: bytes = b"", content_type: str | None = None,
                       extra: dict[str, str] | None = None) -> Request:
        req = dialog.create_request(method, via=self.via(self._dialog_transport(dialog)), contact=self.contact,
                                    body=body, content_type=content_type)
        if method != "ACK":
            req.headers.add("User-Agent", USER_AGENT)
        for k, v in (extra or {}).items():
            req.headers.add(k, v)
        return req

    async def send_in_dialog(self, dialog: Dialog, method: str, *, body: bytes = b"", content_type: str | None = None,
                             extra: dict[str, str] | None = None) -> Response:
        req = self.dialog_request(dialog, method, body=body, content_type=content_type, extra=extra)
        sent, resp = await self.send_authenticated(req)
        dialog.local_seq = max(dialog.local_seq, sent.cseq.number)
        return resp

    def accept_invite(self, handle: ServerHandle, dialog: Dialog, user: DialogUser, *,
                      accept_types: tuple[str, ...] = sdp.ACCEPT_TYPES) -> Response:
        """Answer an INVITE with 200 + SDP and retransmit the 2xx until the ACK arrives (RFC 3261 §13.3.1.4)."""
        body = sdp.build(self.host, self.transport.local_addr(self.default_transport)[1], accept_types=accept_types)
        resp = make_response(handle.request, 200, to_tag=dialog.local_tag, body=body, content_type="application/sdp")
        resp.headers.set("Contact", self.named_contact)
        resp.headers.set("Allow", ALLOW)
        self.dialogs[dialog.id] = user
        self.respond(handle, resp)
        if handle.transport == "udp":
            self._retransmit_2xx(handle, resp, self.timers.t1, time.monotonic(), dialog)
        return resp

    def _retransmit_2xx(self, handle: ServerHandle, resp: Response, interval: float, started: float, dialog: Dialog) -> None:
        assert self.loop is not None

        def fire() -> None:
            user = self.dialogs.get(dialog.id)
            if user is None or getattr(user, "acked", True) or self.closed:
                return
            if time.monotonic() - started >= 64 * self.timers.t1:
                user.on_ack_timeout()  # type: ignore[attr-defined]
                return
            self._send(bytes(resp), self.response_target(handle))
            self._retransmit_2xx(handle, resp, min(interval * 2, self.timers.t2), started, dialog)
        self.loop.call_later(interval, fire)

    def forget_dialog(self, dialog: Dialog) -> None:
        self.dialogs.pop(dialog.id, None)

    # -- subscriptions (RFC 6665), as a subscriber ---------------------------------------------------------------
    async def subscribe(self, to: SipUri, event: str, user: Any, *, expires: int, accept: str) -> tuple[Dialog | None, Response]:
        """SUBSCRIBE out of dialog; a NOTIFY that overtakes the 200 reaches `user.on_notify` all the same.
        On 2xx the subscription dialog is registered for `user` and returned."""
        req = self.new_request("SUBSCRIBE", to, extra={"Event": event, "Expires": str(expires), "Accept": accept,
                                                        "Allow": ALLOW})
        key = (req.call_id, req.from_.tag or "")
        self.pending_subscriptions[key] = user
        try:
            sent, resp = await self.send_authenticated(req)
        finally:
            self.pending_subscriptions.pop(key, None)
        if not 200 <= resp.status < 300:
            return None, resp
        dialog = Dialog.from_uac(sent, resp)
        if user.remote_seq is not None:  # NOTIFYs that overtook the 200
            dialog.remote_seq = user.remote_seq
        self.dialogs[dialog.id] = user
        return dialog, resp

    # -- incoming requests ------------------------------------------------------------------------------------
    def on_request(self, request: Request, handle: ServerHandle | None, transport: str, remote: tuple[str, int]) -> None:
        method = request.method
        to_tag = request.to.tag
        if to_tag:  # in-dialog
            user = self.dialogs.get((request.call_id, to_tag, request.from_.tag or ""))
            if user is None and method == "NOTIFY":
                pending = self.pending_subscriptions.get((request.call_id, to_tag))
                if pending is not None:
                    assert handle is not None
                    self.respond(handle, make_response(request, pending.on_notify(request)))
                    return
            if method == "ACK":
                if user is not None:
                    user.on_ack(request)
                return
            assert handle is not None
            if user is None:
                self.respond(handle, make_response(request, 481))
                return
            dialog: Dialog = user.dialog  # type: ignore[attr-defined]
            if not dialog.accept_remote_cseq(request):
                self.respond(handle, make_response(request, 500, "Server Internal Error (CSeq out of order)"))
                return
            if method == "BYE":
                self.respond(handle, make_response(request, 200))
                user.on_bye(request)
            elif method == "MESSAGE":
                status = user.on_dialog_request(request)
                self.respond(handle, make_response(request, status))
            elif method == "INVITE":  # session refresh / target refresh: answer with our SDP
                dialog.update_target(request)
                body = sdp.build(self.host, self.transport.local_addr(self.default_transport)[1])
                resp = make_response(request, 200, body=body, content_type="application/sdp")
                resp.headers.set("Contact", self.contact)
                self.respond(handle, resp)
            elif method == "OPTIONS":
                self._answer_options(request, handle)
            elif method == "NOTIFY" and hasattr(user, "on_notify"):
                self.respond(handle, make_response(request, user.on_notify(request)))  # type: ignore[attr-defined]
            elif method in ("INFO", "UPDATE", "NOTIFY"):
                # a NOTIFY in an INVITE dialog: the end of a REFER's implicit subscription (RFC 3515)
                self.respond(handle, make_response(request, 200))
            else:
                self._method_not_allowed(request, handle)
            return
        if method == "ACK":
            return
        assert handle is not None
        if method == "MESSAGE":
            status = self.listener.on_pager_message(request) if self.listener else 480
            self.respond(handle, make_response(request, status, to_tag=new_tag()))
        elif method == "INVITE":
            if self.listener is None:
                self.respond(handle, make_response(request, 480, to_tag=new_tag()))
                return
            ct = request.content_type
            if request.body and ct != "application/sdp":
                self.respond(handle, make_response(request, 415, to_tag=new_tag()))
                return
            if request.body:
                sdp.parse_message_media(request.body)  # 488 if there is no m=message
            self.listener.on_invite(request, handle)
        elif method == "OPTIONS":
            self._answer_options(request, handle)
        elif method == "BYE":
            self.respond(handle, make_response(request, 481))
        else:
            self._method_not_allowed(request, handle)

    def _answer_options(self, request: Request, handle: ServerHandle) -> None:
        resp = make_response(request, 200, to_tag=None if request.to.tag else new_tag())
        resp.headers.set("Allow", ALLOW)
        resp.headers.set("Accept", ACCEPT)
        resp.headers.set("Contact", self.contact)
        self.respond(handle, resp)

    def _method_not_allowed(self, request: Request, handle: ServerHandle) -> None:
        resp = make_response(request, 405, to_tag=None if request.to.tag else new_tag())
        resp.headers.set("Allow", ALLOW)
        self.respond(handle, resp)

