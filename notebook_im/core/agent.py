"""`UserAgent`: the SIP user agent of one endpoint, on a `SipStack` it owns and handles.

It keeps what belongs to one address of record: the registration (driven by the sans-IO `im.registration`
machine: refresh, back-off, keep-alive, un-register), credentials (`auth.ClientAuth`), the Contact, the
outbound proxy, the dialogs of its sessions and subscriptions; and it builds and sends requests: pager MESSAGE,
INVITE, in-dialog requests, SUBSCRIBE. What a request means to the user (a session, a message) is the API
layer's business: it hears from the agent through the small `AgentListener` and `DialogUser` protocols.

All methods run on the loop thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import NO_ANSWER, MessageTooLarge, RequestFailed, TransportError
from ..im import registration as reg
from ..net.base import Addr, Target, Transport
from ..sip import coding, sdp
from ..sip.dialog import Dialog
from ..sip.errors import LocalProtocolError, RemoteProtocolError
from ..sip.message import Request, Response, make_request, make_response, new_call_id, new_tag
from ..sip.transaction import DEFAULT_TIMERS, Timers, make_cancel
from ..sip.uri import Address, SipUri, bracket
from .auth import ClientAuth
from .sink import TraceSink
from .stack import USER_AGENT, ClientHandle, ServerHandle, SipStack, reason_phrase
from .targets import resolve_request_target, resolve_target, target_of

log = logging.getLogger("notebook_im.ua")

ALLOW = "INVITE, ACK, CANCEL, BYE, MESSAGE, OPTIONS, NOTIFY, INFO"
ACCEPT = (
    "application/sdp, text/plain, text/html, text/enriched, application/im-iscomposing+xml, message/cpim, "
    "message/imdn+xml, application/conference-info+xml"
)
# RFC 3261 §18.1.1: a request within 200 bytes of the path MTU (1500 for Ethernet), or larger than 1300 bytes
# when the MTU is unknown, must go over a congestion-controlled transport (TCP) instead of UDP
UDP_MAX_REQUEST = 1300
KEEPALIVE_INTERVAL = 90.0  # CRLF keep-alives to the registrar over TCP/TLS (RFC 5626 suggests 95-120 s)


class AgentListener(Protocol):
    """What the API layer (the Endpoint) implements to hear from its user agent."""

    def on_pager_message(self, request: Request) -> int:
        """An out-of-dialog MESSAGE; returns the status to answer."""

    def on_invite(self, request: Request, handle: ServerHandle) -> None:
        """A new INVITE (answered later through the handle)."""

    def on_registration(self, report: reg.Report, detail: str) -> None:
        """The registration refreshed, failed (retrying) or recovered."""


class DialogUser(Protocol):
    """What a session (or a subscription) implements to hear about its dialog."""

    dialog: Dialog | None

    def on_dialog_request(self, request: Request) -> int:
        """An in-dialog MESSAGE or INFO (OCS clients type with INFO); returns the status to answer."""

    def on_ack(self, request: Request) -> None: ...

    def on_ack_timeout(self) -> None: ...

    def on_bye(self, request: Request) -> None: ...

    def on_notify(self, request: Request) -> int:
        """A NOTIFY in this dialog (a conference roster); returns the status to answer."""


class UserAgent:
    """The user agent of one address of record: `UserAgent(transport, sink, aor=..., proxy=..., ...)`."""

    def __init__(
        self,
        transport: Transport,
        sink: TraceSink,
        *,
        aor: SipUri,
        proxy: SipUri | None,
        transport_name: str,
        username: str | None = None,
        password: str | None = None,
        display_name: str | None = None,
        listener: AgentListener | None = None,
        timers: Timers = DEFAULT_TIMERS,
    ) -> None:
        self.stack = SipStack(name=aor.aor, transport=transport, sink=sink, timers=timers, handler=self)
        # OCS first messages (ms-text-format in an INVITE) that could not be read; the INVITE was answered anyway
        self.stack.stats["first_messages_dropped"] = 0
        self.aor = aor
        self.proxy = proxy.with_params(lr=None, transport=transport_name) if proxy is not None else None
        self.proxy_target: Target | None = None  # the proxy's address, resolved when the agent starts
        self.default_transport = transport_name
        self.display_name = display_name
        self.listener = listener
        self.auth = ClientAuth(username or aor.user or "", password)
        self.dialogs: dict[tuple[str, str, str], DialogUser] = {}
        # subscriptions whose SUBSCRIBE is not answered yet: (Call-ID, our tag) -> user; a NOTIFY may overtake
        # the 200 (RFC 6665 §4.1.2.4)
        self.pending_subscriptions: dict[tuple[str, str], Any] = {}
        self.registration = reg.Registration(keepalive=KEEPALIVE_INTERVAL if transport_name != "udp" else None)
        self._reg_timers: dict[str, asyncio.TimerHandle] = {}
        self._reg_waiter: asyncio.Future | None = None  # the first REGISTER's outcome, for `register()`
        self._register_call_id = ""
        self._register_cseq = 0
        self._cseq = 0

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.stack.start()
        self._register_call_id = new_call_id(self.stack.host)
        if self.proxy is not None:
            self.proxy_target = await resolve_target(self.proxy)

    async def close(self) -> None:
        for t in self._reg_timers.values():
            t.cancel()
        self._reg_timers.clear()
        await self.stack.close()

    @property
    def closed(self) -> bool:
        return self.stack.closed

    @property
    def timers(self) -> Timers:
        return self.stack.timers

    @property
    def stats(self) -> dict[str, int]:
        return self.stack.stats

    def via(self, transport: str, branch: str | None = None) -> str:
        return self.stack.via(transport, branch)

    def respond(self, handle: ServerHandle, response: Response) -> None:
        self.stack.respond(handle, response)

    def reply(
        self,
        handle: ServerHandle,
        status: int,
        reason: str | None = None,
        *,
        tag: str | None | bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.stack.reply(handle, status, reason, tag=tag, headers=headers)

    # -- addresses ----------------------------------------------------------------------------------
    @property
    def local_addr(self) -> Addr:
        return self.stack.transport.local_addr(self.default_transport)

    @property
    def contact_uri(self) -> SipUri:
        host, port = self.local_addr
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

    def sdp_offer(self, accept_types: tuple[str, ...] = sdp.ACCEPT_TYPES, media: str = "message") -> bytes:
        """Our `m=message ... sip null` session description (`m=x-ms-message` to answer an OCS 2005 offer)."""
        return sdp.build(self.stack.host, self.local_addr[1], accept_types=accept_types, media=media)

    def new_request(
        self,
        method: str,
        to: SipUri,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        call_id: str | None = None,
        cseq: int | None = None,
        from_tag: str | None = None,
        extra: dict[str, str] | None = None,
        ruri: SipUri | None = None,
    ) -> Request:
        """An out-of-dialog request sent through the outbound proxy (pre-loaded Route, RFC 3261 §8.1.2)."""
        if cseq is None:
            self._cseq += 1
            cseq = self._cseq
        wants_contact = method in ("INVITE", "REGISTER", "SUBSCRIBE", "REFER")
        return make_request(
            method,
            ruri or to,
            via=self.via(self.default_transport),
            from_=f"{self.local_address()};tag={from_tag or new_tag()}",
            to=str(Address(to)),
            call_id=call_id or new_call_id(self.stack.host),
            cseq=cseq,
            routes=[f"<{self.proxy}>"] if self.proxy is not None else (),
            contact=self.contact if wants_contact else None,
            headers=[("User-Agent", USER_AGENT), *(extra or {}).items()],
            body=body,
            content_type=content_type,
        )

    async def _congestion_safe(self, request: Request) -> tuple[Target, int]:
        """Where to send `request`, and its size. RFC 3261 §18.1.1: a request over `UDP_MAX_REQUEST` bytes that
        would go over UDP goes over TCP to the same host and port instead (servers listen on both; the top Via
        says TCP); size 0 means it was not too large."""
        target = await resolve_request_target(request)
        if target.transport != "udp":
            return target, 0
        size = len(bytes(request))
        if size <= UDP_MAX_REQUEST:
            return target, 0
        vias = request.headers.get_all("Via")
        vias[0] = self.via("tcp", branch=request.top_via.branch)
        request.headers.set_all("Via", vias)
        return Target("tcp", target.host, target.port), size

    # -- requests with authentication ---------------------------------------------------------------
    async def send_authenticated(
        self,
        request: Request,
        *,
        on_provisional: Callable[[Response], None] | None = None,
        on_handle: Callable[[ClientHandle], None] | None = None,
    ) -> tuple[Request, Response]:
        """Send `request`; answer up to two digest challenges; return the request finally sent and the final
        response. A request too large for UDP goes over TCP; if TCP is refused, MessageTooLarge says so."""
        self.auth.apply_cached(request)
        for attempt in range(3):
            target, size = await self._congestion_safe(request)
            handle = self.stack.send_request(request, target, on_provisional=on_provisional)
            if on_handle is not None:
                on_handle(handle)
            try:
                response = await handle.future
            except TransportError as exc:
                if not size:
                    raise
                raise MessageTooLarge(
                    request.method,
                    str(request.uri),
                    (
                        f"the {request.method} is {size:,} bytes, too large for UDP (RFC 3261 §18.1.1 sends requests over "
                        f"{UDP_MAX_REQUEST} bytes over TCP), and TCP to {target.host}:{target.port} was unavailable: "
                        f"{exc.reason}"
                    ),
                ) from None
            if response.status not in (401, 407) or attempt == 2:
                return request, response
            challenge = self.auth.challenge_to_answer(response, attempt)
            if challenge is None:
                return request, response
            request = self._retry(request)
            self.auth.authorize(request, challenge)
        return request, response

    def _retry(self, request: Request) -> Request:
        """`request` again for a new transaction: a new Via branch and the next CSeq."""
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
        return retry

    # -- registration (im/registration.py decides; this carries it out) -------------------------------
    async def register(self, expires: int = 3600) -> None:
        """The first REGISTER (raises RequestFailed / TransactionTimeout / TransportError if it fails); from then
        on the registration refreshes itself, retries with back-off and reports through the listener."""
        if self.proxy is None:
            raise LocalProtocolError("no server to register with")
        self.registration.expires = expires
        loop = asyncio.get_running_loop()
        self._reg_waiter = loop.create_future()
        self._run_registration(self.registration.start())
        await self._reg_waiter

    async def unregister(self) -> None:
        """Expires: 0 if registered (bounded by the caller); every registration timer stops."""
        loop = asyncio.get_running_loop()
        self._reg_waiter = loop.create_future()
        self._run_registration(self.registration.stop())
        if self.registration.state is reg.RegState.UNREGISTERING:
            await self._reg_waiter
        self._reg_waiter = None

    @property
    def registered(self) -> bool:
        return self.registration.state in (reg.RegState.REGISTERED, reg.RegState.REFRESHING, reg.RegState.RETRYING)

    def _run_registration(self, actions: list) -> None:
        for a in actions:
            if isinstance(a, reg.Send):
                asyncio.ensure_future(self._send_register(a.expires))
            elif isinstance(a, reg.StartTimer):
                self._stop_reg_timer(a.name)
                if self.stack.loop is not None and not self.closed:
                    self._reg_timers[a.name] = self.stack.loop.call_later(
                        a.delay, lambda n=a.name: self._run_registration(self.registration.timer(n))
                    )
            elif isinstance(a, reg.StopTimer):
                self._stop_reg_timer(a.name)
            elif isinstance(a, reg.SendKeepalive):
                if self.proxy_target is not None:
                    self.stack.transport.keepalive(self.proxy_target)
            elif isinstance(a, reg.Notify):
                self._registration_news(a)

    def restart_keepalive(self) -> None:
        """Send a keep-alive now and re-arm the keep-alive timer (after its interval changed)."""
        self._run_registration(self.registration.timer("keepalive"))

    def _stop_reg_timer(self, name: str) -> None:
        t = self._reg_timers.pop(name, None)
        if t is not None:
            t.cancel()

    def _registration_news(self, note: reg.Notify) -> None:
        waiter = self._reg_waiter
        if note.report is reg.Report.FIRST_FAILED:
            if waiter is not None and not waiter.done():
                waiter.set_exception(
                    self._failure or RequestFailed("REGISTER", note.status, note.detail, str(self.proxy))
                )
            return
        if note.report in (reg.Report.REGISTERED, reg.Report.UNREGISTERED):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if self.listener is not None:
            detail = note.detail
            if note.report is reg.Report.FAILED:
                detail = f"{detail}; retrying in {note.delay:.1f} s"
            elif note.report is reg.Report.RECOVERED:
                detail = "registered again"
            else:
                detail = "registration refreshed"
            self.listener.on_registration(note.report, detail)

    _failure: BaseException | None = None  # the exception of the REGISTER that just failed (for `register()`)

    async def _send_register(self, expires: int) -> None:
        """One REGISTER (our Contact, `expires`) and its outcome fed back to the machine."""
        self._register_cseq += 1
        registrar = SipUri(host=self.aor.host)
        req = self.new_request(
            "REGISTER",
            self.aor,
            call_id=self._register_call_id,
            cseq=self._register_cseq,
            extra={"Expires": str(expires)},
            ruri=registrar,
        )
        req.headers.set("Contact", f"{self.contact};expires={expires}")
        self._failure = None
        try:
            _, resp = await self.send_authenticated(req)
        except NO_ANSWER as exc:
            self._failure = exc
            self._run_registration(self.registration.no_answer(str(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - the machine decides what a failure means
            self._failure = exc
            self._run_registration(self.registration.no_answer(f"{type(exc).__name__}: {exc}"))
            return
        granted = self._granted(resp, expires)
        if resp.status >= 300:
            self._failure = RequestFailed("REGISTER", resp.status, resp.reason, str(self.proxy))
        self._run_registration(
            self.registration.answered(resp.status, granted=granted, detail=f"{resp.status} {resp.reason}")
        )

    def _granted(self, resp: Response, asked: int) -> int:
        """The expiry the registrar granted our Contact (its `expires` parameter, else the Expires header)."""
        granted = asked
        try:
            contacts = resp.contacts
        except Exception:  # noqa: BLE001 - a 2xx with a broken Contact: keep what we asked for
            contacts = []
        mine = self.contact_uri
        for c in contacts:
            if c.uri.port == mine.port and c.uri.host == mine.host:
                e = c.params.get("expires")
                if e and e.isdigit():
                    granted = int(e)
        if resp.expires is not None and not any(c.params.get("expires") for c in contacts):
            granted = resp.expires
        return granted

    # -- StackHandler ---------------------------------------------------------------------------------
    def on_connection_lost(self, transport: str, addr: Addr) -> None:
        """Our connection to the registrar dropped (server restart?): register again at once, over a new one."""
        if self.closed or self.proxy_target is None:
            return
        if (self.proxy_target.transport, self.proxy_target.addr) == (transport, addr):
            self._run_registration(self.registration.connection_lost())

    def on_stray_response(self, response: Response, transport: str, remote: Addr) -> None:
        log.debug("%s: stray response %s dropped", self.stack.name, response)

    def on_server_timeout(self, handle: ServerHandle) -> None:
        log.debug("%s: no ACK for %s", self.stack.name, handle.request)

    def on_cancel(self, invite: ServerHandle, cancel: Request) -> None:
        """A CANCEL for an INVITE no session took (it would have set `invite.on_cancel`): 487."""
        self.stack.reply(invite, 487)

    # -- pager mode ---------------------------------------------------------------------------------------
    async def send_message(
        self,
        to: SipUri,
        body: bytes,
        content_type: str,
        extra: dict[str, str] | None = None,
        call_id: str | None = None,
    ) -> Response:
        req = self.new_request("MESSAGE", to, body=body, content_type=content_type, extra=extra, call_id=call_id)
        _, resp = await self.send_authenticated(req)
        return resp

    # -- sessions -------------------------------------------------------------------------------------------
    async def invite(
        self,
        to: SipUri,
        user: DialogUser,
        *,
        on_provisional: Callable[[Response], None] | None = None,
        on_handle: Callable[[ClientHandle], None] | None = None,
        accept_types: tuple[str, ...] = sdp.ACCEPT_TYPES,
        extra: dict[str, str] | None = None,
    ) -> tuple[Dialog | None, Response]:
        req = self.new_request(
            "INVITE",
            to,
            body=self.sdp_offer(accept_types),
            content_type="application/sdp",
            extra={"Allow": ALLOW, "Supported": "ms-text-format", **(extra or {})},
        )
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
        target = await resolve_request_target(ack)
        self.stack.send_bytes(ack_bytes, target)
        if handles:
            handles[-1].ack = ack_bytes
        self.dialogs[dialog.id] = user
        return dialog, resp

    def cancel(self, handle: ClientHandle) -> None:
        """CANCEL a pending INVITE (RFC 3261 §9.1): same branch, Request-URI, Call-ID, From, To, CSeq number."""
        self.stack.send_request(make_cancel(handle.txn.request), handle.target)

    def _dialog_transport(self, dialog: Dialog) -> str:
        if dialog.route_set:
            return dialog.route_set[0].uri.transport
        return dialog.remote_target.transport

    def dialog_request(
        self,
        dialog: Dialog,
        method: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> Request:
        req = dialog.create_request(
            method,
            via=self.via(self._dialog_transport(dialog)),
            contact=self.contact,
            body=body,
            content_type=content_type,
        )
        if method != "ACK":
            req.headers.add("User-Agent", USER_AGENT)
        for k, v in (extra or {}).items():
            req.headers.add(k, v)
        return req

    async def send_in_dialog(
        self,
        dialog: Dialog,
        method: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> Response:
        req = self.dialog_request(dialog, method, body=body, content_type=content_type, extra=extra)
        sent, resp = await self.send_authenticated(req)
        dialog.local_seq = max(dialog.local_seq, sent.cseq.number)
        return resp

    def ring(self, handle: ServerHandle, local_tag: str) -> None:
        """180 Ringing for an incoming INVITE, with our Contact."""
        ringing = make_response(handle.request, 180, to_tag=local_tag)
        ringing.headers.set("Contact", self.contact)
        self.stack.respond(handle, ringing)

    def accept_invite(
        self,
        handle: ServerHandle,
        dialog: Dialog,
        user: DialogUser,
        *,
        accept_types: tuple[str, ...] = sdp.ACCEPT_TYPES,
        acked: Callable[[], bool],
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Answer an INVITE with 200 + SDP (and `headers`, such as `Supported: ms-text-format`) and retransmit the
        2xx until `acked()` (RFC 3261 §13.3.1.4); after 64*T1 without an ACK the dialog user's `on_ack_timeout`
        runs."""
        offer = handle.request.body
        media = sdp.parse_message_media(offer).media if offer else "message"  # checked on arrival (on_request)
        resp = make_response(
            handle.request,
            200,
            to_tag=dialog.local_tag,
            body=self.sdp_offer(accept_types, media),
            content_type="application/sdp",
        )
        resp.headers.set("Contact", self.named_contact)
        resp.headers.set("Allow", ALLOW)
        for name, value in (headers or {}).items():
            resp.headers.set(name, value)
        self.dialogs[dialog.id] = user
        self.stack.respond(handle, resp)
        self.stack.retransmit_2xx(
            handle, resp, lambda: acked() or self.dialogs.get(dialog.id) is not user, user.on_ack_timeout
        )
        return resp

    def dropped_first_message(self, handle: ServerHandle, reason: str, raw: bytes) -> None:
        """The first message an INVITE carried (OCS `ms-text-format`) could not be read: counted in
        `stats["first_messages_dropped"]` and kept in the trace's drops with the reason. The INVITE itself is
        answered as usual, so only that text is lost, and an OCS sender sends it again (see `im/ocs.py`)."""
        self.stack.stats["first_messages_dropped"] += 1
        self.stack.sink.record_drop(handle.transport, handle.remote, reason, raw, self.stack.name)

    def forget_dialog(self, dialog: Dialog) -> None:
        self.dialogs.pop(dialog.id, None)

    # -- subscriptions (RFC 6665), as a subscriber ---------------------------------------------------------------
    async def subscribe(
        self, to: SipUri, event: str, user: Any, *, expires: int, accept: str
    ) -> tuple[Dialog | None, Response]:
        """SUBSCRIBE out of dialog; a NOTIFY that overtakes the 200 reaches `user.on_notify` all the same.
        On 2xx the subscription dialog is registered for `user` and returned."""
        req = self.new_request(
            "SUBSCRIBE", to, extra={"Event": event, "Expires": str(expires), "Accept": accept, "Allow": ALLOW}
        )
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

    # -- incoming requests (StackHandler) --------------------------------------------------------------------
    def on_request(self, request: Request, handle: ServerHandle | None, transport: str, remote: Addr) -> None:
        method = request.method
        if request.body and "content-encoding" in request.headers.fields:
            try:  # a compressed body (liblinphone's receipts): inflated before anyone reads it
                coding.decode(request)
            except RemoteProtocolError as exc:
                if handle is not None:
                    extra = {"Accept-Encoding": coding.ACCEPT_ENCODING} if exc.status_code == 415 else None
                    self.stack.reply(
                        handle, exc.status_code, reason_phrase(exc), tag=request.to.tag is None, headers=extra
                    )
                return
        to_tag = request.to.tag
        if to_tag:  # in-dialog
            self._in_dialog(request, handle, to_tag)
            return
        if method == "ACK":
            return
        assert handle is not None
        if method == "MESSAGE":
            status = self.listener.on_pager_message(request) if self.listener else 480
            self.stack.reply(handle, status)
        elif method == "INVITE":
            if self.listener is None:
                self.stack.reply(handle, 480)
                return
            ct = request.content_type
            if request.body and ct != "application/sdp":
                self.stack.reply(handle, 415)
                return
            if request.body:
                sdp.parse_message_media(request.body)  # 488 if there is no m=message
            self.listener.on_invite(request, handle)
        elif method == "OPTIONS":
            self._answer_options(request, handle)
        elif method == "BYE":
            self.stack.reply(handle, 481)
        else:
            self._method_not_allowed(handle, in_dialog=False)

    def _in_dialog(self, request: Request, handle: ServerHandle | None, to_tag: str) -> None:
        method = request.method
        user = self.dialogs.get((request.call_id, to_tag, request.from_.tag or ""))
        if user is None and method == "NOTIFY":
            pending = self.pending_subscriptions.get((request.call_id, to_tag))
            if pending is not None:
                assert handle is not None
                self.stack.reply(handle, pending.on_notify(request), tag=False)
                return
        if method == "ACK":
            if user is not None:
                user.on_ack(request)
            return
        assert handle is not None
        if user is None:
            self.stack.reply(handle, 481, tag=False)
            return
        dialog = user.dialog
        assert dialog is not None
        if not dialog.accept_remote_cseq(request):
            self.stack.reply(handle, 500, "Server Internal Error (CSeq out of order)", tag=False)
            return
        if method == "BYE":
            self.stack.reply(handle, 200, tag=False)
            user.on_bye(request)
        elif method in ("MESSAGE", "INFO"):  # INFO: an OCS client's typing (KeyboardActivity), or news we ignore
            self.stack.reply(handle, user.on_dialog_request(request), tag=False)
        elif method == "INVITE":  # session refresh / target refresh: answer with our SDP
            dialog.update_target(request)
            resp = make_response(request, 200, body=self.sdp_offer(), content_type="application/sdp")
            resp.headers.set("Contact", self.contact)
            self.stack.respond(handle, resp)
        elif method == "OPTIONS":
            self._answer_options(request, handle)
        elif method == "NOTIFY":
            # a roster NOTIFY to a conference session, or the end of a REFER's implicit subscription (RFC 3515)
            self.stack.reply(handle, user.on_notify(request), tag=False)
        elif method == "UPDATE":
            self.stack.reply(handle, 200, tag=False)
        else:
            self._method_not_allowed(handle, in_dialog=True)

    def _answer_options(self, request: Request, handle: ServerHandle) -> None:
        self.stack.reply(
            handle, 200, tag=request.to.tag is None, headers={"Allow": ALLOW, "Accept": ACCEPT, "Contact": self.contact}
        )

    def _method_not_allowed(self, handle: ServerHandle, *, in_dialog: bool) -> None:
        self.stack.reply(handle, 405, tag=not in_dialog, headers={"Allow": ALLOW})


__all__ = ["ACCEPT", "ALLOW", "AgentListener", "DialogUser", "UDP_MAX_REQUEST", "UserAgent", "target_of"]
