"""`SipStack`: the transaction layer on the library loop, built by composition.

It takes a transport (`net.base.Transport`: sockets, or the in-memory network of the tests), a sink that records
what goes over the wire (`sink.TraceSink`: the trace), and a handler that gets the requests transactions deliver
(`StackHandler`: the user agent of an endpoint, or the embedded server's proxy). Everything protocol-shaped is
decided by the sans-IO transaction tables of `sip/transaction.py`; the stack executes their actions (send bytes,
arm timers, deliver to the handler) and keeps bounded state: live server transactions per source and in all
(503 beyond), answered UDP non-INVITE transactions compacted until Timer J (sip/completed.py).

All methods run on the loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import TransactionTimeout, TransportError
from ..net.base import Addr, Target, Transport
from ..sip.completed import CompletedTransactions
from ..sip.dialog import Dialog
from ..sip.errors import LocalProtocolError, RemoteProtocolError
from ..sip.message import Request, Response, make_response, new_branch, new_tag
from ..sip.parser import parse_message
from ..sip.reason import Reason
from ..sip.transaction import (
    DEFAULT_TIMERS,
    ClientTransaction,
    Deliver,
    ServerTransaction,
    StartTimer,
    StopTimer,
    Terminated,
    Timeout,
    Timers,
    Transmit,
    client_key,
    server_key,
)
from ..sip.uri import bracket
from .sink import TraceSink
from .targets import request_target

log = logging.getLogger("notebook_im.core")

USER_AGENT = "notebook_im/0.1"


@dataclass
class ClientHandle:
    """A client transaction in flight: `future` resolves with the final response (or a Timeout/TransportError)."""

    txn: ClientTransaction
    target: Target
    future: asyncio.Future
    on_provisional: Callable[[Response], None] | None = None
    ack: bytes | None = None  # the ACK we sent for a 2xx, resent when the 2xx is retransmitted
    on_late_2xx: Callable[[Response], None] | None = None  # a proxy relays retransmitted 2xx upstream
    timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    # called with the future as soon as it is settled, in the same turn of the loop (a done callback would wait
    # for the next one: the proxy relays each final response upstream this way, one loop turn sooner)
    on_final: Callable[[asyncio.Future], None] | None = None


@dataclass
class ServerHandle:
    """A server transaction: answer it with `stack.respond(handle, response)`."""

    txn: ServerTransaction
    transport: str
    remote: Addr
    local: Addr
    timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    cancelled: bool = False
    # an INVITE whose owner wants to hear a CANCEL itself (a ringing session): called with the CANCEL request
    on_cancel: Callable[[Request], None] | None = None

    @property
    def request(self) -> Request:
        return self.txn.request

    @property
    def answered(self) -> bool:
        return self.txn.last_response is not None and self.txn.last_response.status >= 200


class StackHandler(Protocol):
    """What the owner of a stack implements: where delivered requests and the other news go."""

    def on_request(self, request: Request, handle: ServerHandle | None, transport: str, remote: Addr) -> None:
        """A new request (`handle` None: an ACK for a 2xx, which has no transaction)."""

    def on_cancel(self, invite: ServerHandle, cancel: Request) -> None:
        """A CANCEL for an INVITE we have not answered (already answered 200 by the stack)."""

    def on_stray_response(self, response: Response, transport: str, remote: Addr) -> None:
        """A response that matches no client transaction (a proxy's late 2xx, ...)."""

    def on_server_timeout(self, handle: ServerHandle) -> None:
        """No ACK came for a final response to an INVITE (Timer H)."""

    def on_connection_lost(self, transport: str, addr: Addr) -> None:
        """A stream connection closed (requests waiting on it were failed already)."""


class SipStack:
    """Transport + transaction layer. Give it a transport, a sink and (before `start`) a handler."""

    def __init__(
        self,
        *,
        name: str,
        transport: Transport,
        sink: TraceSink,
        timers: Timers = DEFAULT_TIMERS,
        handler: StackHandler | None = None,
    ) -> None:
        self.name = name
        self.sink = sink
        self.timers = timers
        self.handler = handler
        self.transport = transport
        transport.attach(self)
        self._transport_errors: dict[tuple[str, Addr], str] = {}
        self._clients: dict[tuple[Any, ...], ClientHandle] = {}
        self._servers: dict[tuple[Any, ...], ServerHandle] = {}
        self.stats = {
            "received": 0,
            "sent": 0,
            "bad_request_400": 0,
            "dropped": 0,
            "retransmissions_absorbed": 0,
            "refused_503": 0,
        }
        # live server transactions per source (address, port) and in all: beyond these a flood is refused
        # with 503 (UDP transactions linger 64*T1 after their answer, so this is what bounds memory)
        self.max_transactions_per_source = 20_000
        self.max_transactions = 200_000
        self._per_source: dict[Addr, int] = {}
        # completed UDP non-INVITE server transactions waiting out Timer J, compacted (see sip/completed.py);
        # they do not count against the limits above, which bound live (unanswered) transactions
        self.completed = CompletedTransactions()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        # when each address last sent us anything (loop time), so that a proxy can tell a device that is gone from
        # one on a lossy path; bounded (the oldest addresses are forgotten first)
        self._heard: dict[Addr, float] = {}
        self.max_heard = 65_536
        # the address peers must use to reach us over UDP (a NAT, a port forward, a relay in front of us)
        self.advertise: Addr | None = None
        # a handler's stateless path: offered each new request that no transaction absorbed (not ACK, not
        # CANCEL), with the bytes it came as, before a server transaction is made for it; True means it was dealt
        # with (the proxy's stateless relay, server/stateless.py). Retransmissions of a request it took come to it
        # again; a request it gives back later (`adopt`) is not offered again.
        self.stateless: Callable[[Request, str, Addr, bytes], bool] | None = None

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

    @property
    def live_server_transactions(self) -> int:
        """Server transactions still held in full (not yet compacted or ended): what the flood limits bound."""
        return len(self._servers)

    def via(self, transport: str, branch: str | None = None) -> str:
        host, port = self.advertise if self.advertise and transport == "udp" else self.transport.local_addr(transport)
        h = bracket(host)
        # RFC 5923 ;alias on streams: the peer may send requests for our sent-by back over this connection
        # (how Kamailio, with tcp_accept_aliases, reaches a TLS client that has no listener of its own)
        alias = ";alias" if transport != "udp" else ""
        return f"SIP/2.0/{transport.upper()} {h}:{port};branch={branch or new_branch()};rport{alias}"

    # -- sending ----------------------------------------------------------------------------------
    def send_bytes(self, data: bytes, target: Target, message: Request | Response | None = None) -> None:
        """Send `data` outside any transaction's retransmissions (an ACK for a 2xx, a retransmitted 2xx, a
        stateless answer) and record it; `message` is its parse when the caller has it (the trace then indexes
        its fields instead of scanning the bytes)."""
        if self.closed:
            return
        self.stats["sent"] += 1
        try:
            self.transport.send(data, target)
        except (OSError, RuntimeError, ValueError) as exc:  # (uvloop raises ValueError for a bad address)
            log.warning("%s: send to %s failed: %s", self.name, target, exc)
        # the source address the peer sees: a connection's own local port on TCP/TLS, the socket's on UDP
        self.sink.record_sip(
            "out", target.transport, self.transport.source_addr(target), target.addr, data, self.name, message=message
        )

    def send_stateless(self, message: Request | Response, target: Target) -> None:
        self.send_bytes(bytes(message), target, message)

    def send_request(
        self,
        request: Request,
        target: Target | None = None,
        *,
        on_provisional: Callable[[Response], None] | None = None,
    ) -> ClientHandle:
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

    async def request(
        self,
        request: Request,
        target: Target | None = None,
        *,
        on_provisional: Callable[[Response], None] | None = None,
    ) -> Response:
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

    def reply(
        self,
        handle: ServerHandle,
        status: int,
        reason: str | None = None,
        *,
        tag: str | None | bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer `handle` with a bodiless response: `tag=True` adds a fresh To tag (out of dialog), a string that
        tag, False none (in dialog). The one place a handler's plain answers are built."""
        to_tag = new_tag() if tag is True else (tag or None)
        resp = make_response(handle.request, status, reason, to_tag=to_tag)
        for name, value in (headers or {}).items():
            resp.headers.set(name, value)
        self.respond(handle, resp)

    def abandon_client(self, h: ClientHandle, reason: str) -> None:
        """Give up a client transaction that has had no answer (a device that stopped answering, found out
        sooner than Timer F would): no more retransmissions, and its future fails with TransactionTimeout."""
        self._forget_client(h)
        if not h.future.done():
            req = h.txn.request
            h.future.set_exception(TransactionTimeout(req.method, str(req.uri), reason))
            self._finalised(h)

    def response_target(self, handle: ServerHandle) -> Target:
        if handle.transport != "udp":
            return Target(handle.transport, *handle.remote)
        host, port = handle.txn.request.top_via.response_address()
        return Target("udp", host, port)

    def retransmit_2xx(
        self, handle: ServerHandle, response: Response, acked: Callable[[], bool], on_timeout: Callable[[], None]
    ) -> None:
        """RFC 3261 §13.3.1.4: a UAS retransmits its 2xx to an INVITE over UDP (T1 doubling to T2) until
        `acked()` says the ACK came, and calls `on_timeout()` after 64*T1 without one. Over a reliable
        transport nothing is retransmitted. Shared by the user agent and the conference focus."""
        if handle.transport != "udp":
            return
        assert self.loop is not None
        data = bytes(response)
        started = time.monotonic()

        def fire(interval: float) -> None:
            if acked() or self.closed:
                return
            if time.monotonic() - started >= 64 * self.timers.t1:
                on_timeout()
                return
            self.send_bytes(data, self.response_target(handle))
            nxt = min(interval * 2, self.timers.t2)
            self.loop.call_later(nxt, fire, nxt)  # type: ignore[union-attr]

        self.loop.call_later(self.timers.t1, fire, self.timers.t1)

    def ack_and_bye(self, invite: Request, resp: Response, dest: Target, reason: Reason | None = None) -> bytes | None:
        """ACK a 2xx to an INVITE we sent, then BYE that dialog at once (a call nobody wants any more: the
        conference ended while it rang, or another device answered first). Returns the ACK, to resend if the
        2xx is retransmitted. Both go straight to `dest`, the device, not along the route set."""
        try:
            dialog = Dialog.from_uac(invite, resp)
        except (LocalProtocolError, RemoteProtocolError):
            return None
        dialog.route_set = []
        ack = bytes(dialog.create_request("ACK", via=self.via(dest.transport), cseq=invite.cseq.number))
        self.send_bytes(ack, dest)
        bye = dialog.create_request("BYE", via=self.via(dest.transport))
        if reason is not None:
            bye.headers.add("Reason", str(reason))
        self.send_request(bye, dest)
        return ack

    # -- TransportEvents (what the transport reports) ----------------------------------------------
    def heard_from(self, addr: Addr) -> float | None:
        """When `addr` last sent us anything (loop time), or None."""
        return self._heard.get(addr)

    def note_heard(self, remote: Addr) -> None:
        """`remote` sent us something just now (see `heard_from`)."""
        heard = self._heard
        if heard.pop(remote, None) is None and len(heard) >= self.max_heard:
            del heard[next(iter(heard))]
        if self.loop is not None:
            heard[remote] = self.loop.time()

    def data_received(self, data: bytes, transport: str, remote: Addr, local: Addr) -> None:
        self.stats["received"] += 1
        self.note_heard(remote)
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
            self.sink.record_drop(transport, remote, f"parser error: {type(exc).__name__}", data, self.name)
            return
        self.sink.record_sip("in", transport, local, remote, data, self.name, message=message)
        try:
            if isinstance(message, Request):
                self._on_request_message(message, transport, remote, local, data)
            else:
                self._on_response_message(message, transport, remote)
        except RemoteProtocolError as exc:
            self._reject_malformed(exc, data, transport, remote)
        except Exception:  # noqa: BLE001 - one bad message must never kill the stack
            log.exception("%s: error handling message from %s", self.name, remote)
            self.stats["dropped"] += 1
            self.sink.record_drop(transport, remote, "internal error while handling", data, self.name)

    def dropped(self, data: bytes, transport: str, remote: Addr | None, reason: str) -> None:
        self.stats["dropped"] += 1
        self.sink.record_drop(transport, remote, reason, data, self.name)

    def send_failed(self, transport: str, addr: Addr, reason: str) -> None:
        self._transport_errors[(transport, addr)] = reason  # read by the Timeout actions below
        for h in list(self._clients.values()):
            if h.target.transport == transport and h.target.addr == addr:
                self._execute_client(h, h.txn.transport_error())
        self._transport_errors.pop((transport, addr), None)

    def connection_lost(self, transport: str, addr: Addr) -> None:
        # requests still waiting for an answer on that connection will not get one: fail them now (the
        # session and pager layers retry a MESSAGE once, over a new connection)
        pending = [
            h
            for h in self._clients.values()
            if h.target.transport == transport and h.target.addr == addr and not h.future.done()
        ]
        if pending:
            self.send_failed(transport, addr, f"connection to {addr[0]}:{addr[1]} closed by the peer")
        if self.handler is not None:
            self.handler.on_connection_lost(transport, addr)

    # -- receiving --------------------------------------------------------------------------------
    def _reject_malformed(self, exc: RemoteProtocolError, data: bytes, transport: str, remote: Addr) -> None:
        req = exc.message
        if isinstance(req, Request) and req.method != "ACK":
            try:
                resp = make_response(req, exc.status_code, reason_phrase(exc))
                via = req.top_via
                if transport == "udp":
                    host = remote[0]
                    port = remote[1] if "rport" in via.params else via.sent_by[1]
                    target = Target("udp", host, port)
                else:
                    target = Target(transport, *remote)
                self.stats["bad_request_400"] += 1
                self.sink.record_drop(transport, remote, f"answered {exc.status_code}: {exc.reason}", data, self.name)
                self.send_stateless(resp, target)
                return
            except (RemoteProtocolError, LocalProtocolError, ValueError):
                pass
        self.stats["dropped"] += 1
        self.sink.record_drop(transport, remote, exc.reason, data, self.name)

    def adopt(self, data: bytes, transport: str, remote: Addr) -> None:
        """Handle a request that came earlier (and was recorded then) as if it had just arrived, with a
        transaction this time: the stateless relay's request whose device turned out dead (server/stateless.py)."""
        try:
            message = parse_message(data, stream=transport != "udp")
            if isinstance(message, Request):
                self._on_request_message(message, transport, remote, self.transport.local_addr(transport), None)
        except Exception:  # noqa: BLE001 - it parsed once; anything now is a bug, which must not reach the caller
            log.exception("%s: adopting a request from %s failed", self.name, remote)

    def _on_request_message(
        self, req: Request, transport: str, remote: Addr, local: Addr, data: bytes | None = None
    ) -> None:
        mark_received(req, remote)
        key = server_key(req)
        if req.method == "ACK":
            sh = self._servers.get(key)
            if sh is not None and sh.txn.state.value in ("completed", "confirmed"):
                self._execute_server(sh, sh.txn.receive(req))
                return
            self._deliver(req, None, transport, remote)  # ACK for a 2xx: end to end, no transaction
            return
        existing = self._servers.get(key)
        if existing is not None:
            self.stats["retransmissions_absorbed"] += 1
            self._execute_server(existing, existing.txn.receive(req))
            return
        done = self.completed.get(key)
        if done is not None:  # Completed state (RFC 3261 §17.2.2): the request again, so the response again
            self.stats["retransmissions_absorbed"] += 1
            self.send_bytes(done[0], Target(*done[1]))
            return
        if req.method == "CANCEL":
            self._on_cancel(req, transport, remote, local)
            return
        if data is not None and self.stateless is not None and self.stateless(req, transport, remote, data):
            return  # relayed without a transaction (the proxy's fast path, RFC 3261 §16.11)
        source = remote  # (address, port): one client socket; all of loopback is one address
        if (
            self._per_source.get(source, 0) >= self.max_transactions_per_source
            or len(self._servers) >= self.max_transactions
        ):
            # a flood from one address: refuse statelessly, remember nothing (memory stays bounded)
            self.stats["refused_503"] += 1
            resp = make_response(
                req, 503, "Service Unavailable (too many transactions from your address)", to_tag=new_tag()
            )
            resp.headers.set("Retry-After", "5")
            self.send_stateless(
                resp, self.response_target(ServerHandle(ServerTransaction(req), transport, remote, local))
            )
            return
        txn = ServerTransaction(req, reliable=transport != "udp", timers=self.timers)
        sh = ServerHandle(txn, transport, remote, local)
        self._servers[key] = sh
        self._per_source[source] = self._per_source.get(source, 0) + 1
        self._execute_server(sh, txn.start())

    def _on_cancel(self, req: Request, transport: str, remote: Addr, local: Addr) -> None:
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
            ih.on_cancel(req)
        elif self.handler is not None:
            self.handler.on_cancel(ih, req)
        else:
            self.respond(ih, make_response(ih.request, 487, to_tag=new_tag()))

    def _on_response_message(self, resp: Response, transport: str, remote: Addr) -> None:
        handle = self._clients.get(client_key(resp))
        if handle is None:
            if self.handler is not None:
                self.handler.on_stray_response(resp, transport, remote)
            return
        self._execute_client(handle, handle.txn.receive(resp))

    def _deliver(self, request: Request, handle: ServerHandle | None, transport: str, remote: Addr) -> None:
        if self.handler is None:
            if handle is not None and not handle.answered:
                self.respond(handle, make_response(request, 503, to_tag=new_tag()))
            return
        self.handler.on_request(request, handle, transport, remote)

    # -- action execution -------------------------------------------------------------------------
    def _execute_client(self, h: ClientHandle, actions: list) -> None:
        for a in actions:
            if isinstance(a, Transmit):
                self.send_bytes(bytes(a.message), h.target, a.message)
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
                    self.send_bytes(h.ack, h.target)
                elif h.on_late_2xx is not None:
                    h.on_late_2xx(resp)
            elif isinstance(a, Timeout):
                if not h.future.done():
                    req = h.txn.request
                    reason = self._transport_errors.get((h.target.transport, h.target.addr))
                    if reason is not None:
                        h.future.set_exception(TransportError(req.method, str(req.uri), reason))
                    else:
                        h.future.set_exception(
                            TransactionTimeout(
                                req.method,
                                str(req.uri),
                                f"no response within {64 * self.timers.t1:g} s (timer {a.timer})",
                            )
                        )
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
                self.send_bytes(sent, self.response_target(h), a.message)
            elif isinstance(a, StartTimer):
                if a.name == "J" and sent is not None and a.delay > 0:
                    self._complete(h, sent, a.delay)  # the transaction lives on compactly until Timer J
                    return
                self._arm(h.timers, a.name, a.delay, lambda n=a.name: self._execute_server(h, h.txn.timer(n)))
            elif isinstance(a, StopTimer):
                self._disarm(h.timers, a.name)
            elif isinstance(a, Deliver):
                try:
                    self._deliver(a.message, h, h.transport, h.remote)
                except RemoteProtocolError as exc:
                    if not h.answered:
                        self.respond(h, make_response(h.request, exc.status_code, reason_phrase(exc)))
                except Exception:  # noqa: BLE001 - answer 500 rather than leave the peer retransmitting
                    log.exception("%s: handler for %s failed", self.name, a.message)
                    if not h.answered:
                        self.respond(h, make_response(h.request, 500))
            elif isinstance(a, Timeout):
                if self.handler is not None:
                    self.handler.on_server_timeout(h)
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
        self._sweep_handle = (
            None
            if nxt is None or self.closed
            else self.loop.call_later(max(0.05, min(1.0, nxt - self.loop.time())), self._sweep_completed)
        )

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


def mark_received(req: Request, remote: Addr) -> None:
    """RFC 3261 §18.2.1 + RFC 3581: note in the top Via where the request really came from. A `received` the
    sender wrote itself is overwritten: responses go to the address the request came from, never to one the
    sender names (else one datagram would make us send answers, and their retransmissions, to a victim)."""
    top = req.top_via
    params_in = top.params
    if (
        "rport" in params_in
        or top.host.strip("[]") != remote[0]
        or ("received" in params_in and params_in["received"] != remote[0])
    ):
        params: dict[str, str | None] = {"received": remote[0]}
        if "rport" in params_in:
            params["rport"] = str(remote[1])
        top = top.with_params(**params)
        req.headers.replace_first("via", str(top), top)


def reason_phrase(exc: RemoteProtocolError) -> str:
    """A reason phrase naming the problem (no CR/LF, bounded)."""
    text = exc.reason.replace("\r", " ").replace("\n", " ")
    prefix = {
        400: "Bad Request",
        413: "Request Entity Too Large",
        416: "Unsupported URI Scheme",
        488: "Not Acceptable Here",
        505: "Version Not Supported",
        513: "Message Too Large",
    }.get(exc.status_code, "Error")
    return f"{prefix} ({text[:120]})"
