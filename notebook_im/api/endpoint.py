"""Endpoint: one SIP identity, registered with a server (UCCAPI `IUccEndpoint` + `Enable`/`Disable`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from typing import Any

from ..core.agent import UserAgent
from ..core.stack import ServerHandle
from ..errors import NO_ANSWER, InvalidState, MessageTooLarge, RequestFailed
from ..im import cpim, imdn
from ..im import iscomposing as ic
from ..net.transport import TransportLayer
from ..runtime import Operation, runtime
from ..sip.date import parse_date
from ..sip.message import Request, new_call_id, random_hex
from ..sip.uri import SipUri
from . import checks
from .emitter import EventSource
from .events import (
    ComposingChanged,
    EndpointState,
    EndpointStateChanged,
    MessageDelivered,
    MessageReceived,
    MessageSending,
)
from .manager import SessionManager, parse_remote_uri
from .messages import (
    MESSAGE_ATTEMPTS,
    REFUSING,
    ChatMessage,
    RecentIds,
    check_content_type,
    check_message_ids,
    failure_reason,
    now_utc,
    settle,
    wire_text,
)
from .participant import Participant
from .receipts import DEFAULT_SIZE, NOTIFICATION_CONTENT_TYPE, ReceiptBook, notification_body, party_key

DISABLE_STEP_TIMEOUT = 3.0  # seconds for each BYE / un-REGISTER while disabling

log = logging.getLogger("notebook_im.endpoint")


class Endpoint(EventSource):
    """A SIP identity (`uri`) with its user agent, registration and session manager (`.sessions`).

    Receipts (RFC 5438): `request_receipts` (default True) asks for delivery and display notifications on
    every message sent; `send_receipts` (default True) answers such requests: "delivered" as a message
    arrives, "displayed" when it is shown or marked read. Set `send_receipts = False` to keep what you have
    read to yourself.
    """

    def __init__(
        self,
        platform: Any,
        uri: SipUri,
        *,
        server: SipUri | None,
        transport: str,
        local_host: str,
        local_port: int,
        username: str | None,
        password: str | None,
        display_name: str | None,
        expires: int,
        tls_client: Any = None,
        impairment: Any = None,
    ) -> None:
        super().__init__()
        self.platform = platform
        self.uri = str(uri)
        self.display_name = display_name
        self.server = str(server) if server is not None else None
        self.transport = transport
        self.expires = expires
        self.state = EndpointState.DISABLED
        network = platform.network
        sockets: Any = (
            network.transport(local_host, local_port, impairment=impairment)
            if network is not None
            else TransportLayer(local_host, local_port, tls_client=tls_client, impairment=impairment)
        )
        # the SIP user agent (core/agent.py): what the sessions of this endpoint send and receive through
        self.agent = UserAgent(
            sockets,
            platform.trace,
            aor=uri,
            proxy=server,
            transport_name=transport,
            username=username,
            password=password,
            display_name=display_name,
            listener=self,
            timers=platform.timers,
        )
        self.sessions = SessionManager(self)
        self.pager_messages: deque[Any] = deque(maxlen=10_000)  # recent pager-mode MessageReceived events
        self._seen_pager = RecentIds()
        self.request_receipts = True
        self.send_receipts = True
        self.receipts = ReceiptBook()  # RFC 5438 bookkeeping of what was asked and notified (api/receipts.py)
        # pager-mode messages received and not yet marked read: id -> (sender URI, what they asked for)
        self._pager_unread: OrderedDict[str, tuple[str, imdn.Request | None]] = OrderedDict()
        self._pager_refused: OrderedDict[str, None] = OrderedDict()  # peers that answered 415/501 to a receipt
        # pager-mode composing (RFC 3994 §4) per sender: shown until idle, a text, or the refresh window lapses
        self._pager_composing: dict[str, tuple[ic.ComposingReceiver, Participant]] = {}
        self._pager_timers: dict[str, asyncio.TimerHandle] = {}
        # a pager-mode text from somebody we have no session with opens an incoming pager-mode session (the chat
        # panel of an endpoint turns this on, so such texts show as a conversation)
        self._pager_sessions = False
        self._cpim: bool | str = "auto"
        self._cpim_peers: OrderedDict[str, None] = OrderedDict()  # parties that sent us message/cpim texts

    # -- properties ------------------------------------------------------------------------------------
    @property
    def cpim(self) -> bool | str:
        """How pager-mode texts are packed. "auto" (the default): in a message/cpim wrapper (RFC 3862) carrying
        the message id and the receipt request (RFC 5438 §6.3) to parties that sent us CPIM themselves
        (liblinphone with CPIM on reads receipt requests only there), as plain text with Imdn-Message-ID and
        Disposition-Notification headers to everybody else; True: CPIM to everybody; False: never."""
        return self._cpim

    @cpim.setter
    def cpim(self, value: bool | str) -> None:
        # by identity, not equality: 1, 0, 1.0 and 0.0 compare equal to True/False and would slip in as such
        if not (value is True or value is False or (isinstance(value, str) and value == "auto")):
            raise ValueError(f'endpoint.cpim is "auto", True or False, not {value!r}')
        self._cpim = value

    @property
    def pager_sessions(self) -> bool:
        """Does a pager-mode text from a party without a session open an incoming pager-mode session (at most
        `sessions.max_pager_sessions` of them)? False by default; `ChatPanel(endpoint)` turns it on."""
        return self._pager_sessions

    @pager_sessions.setter
    def pager_sessions(self, value: bool) -> None:
        if not isinstance(value, bool):  # "no" is a true value: refused rather than taken for True
            raise TypeError(f"endpoint.pager_sessions is True or False, not {value!r}")
        self._pager_sessions = value

    def speaks_cpim(self, uri: str) -> bool:
        """Are pager-mode texts to `uri` CPIM-wrapped (see `cpim`)?"""
        if self._cpim != "auto":
            return bool(self._cpim)
        return party_key(uri) in self._cpim_peers

    def _learn_cpim(self, uri: str) -> None:
        key = party_key(uri)
        self._cpim_peers[key] = None
        self._cpim_peers.move_to_end(key)
        if len(self._cpim_peers) > DEFAULT_SIZE:
            self._cpim_peers.popitem(last=False)

    def _forget_cpim(self, uri: str) -> None:
        """`uri` refused a CPIM-wrapped text (415): it is a plain-text client after all. What was learned came
        from a From header, which anybody can write without a server that authenticates (`users=`): one forged
        message/cpim must not leave our texts to a plain client failing."""
        self._cpim_peers.pop(party_key(uri), None)

    @property
    def contact(self) -> str:
        return str(self.agent.contact_uri)

    @property
    def local_address(self) -> tuple[str, int]:
        return self.agent.local_addr

    @property
    def stats(self) -> dict[str, int]:
        """Counters of the SIP core: messages received/sent, 400s answered, datagrams dropped, ..."""
        return dict(self.agent.stats)

    def __repr__(self) -> str:
        return f"<Endpoint {self.uri} {self.state.value} contact={self.contact}>"

    # -- events -----------------------------------------------------------------------------------------
    def _dispatch(self, event: Any) -> None:
        self.platform.trace.record_event(self.uri, event)
        super()._dispatch(event)

    def _set_state(self, state: EndpointState, reason: str = "") -> None:
        previous = self.state
        if previous is state:
            return
        self.state = state
        self._emit(EndpointStateChanged(self, state, previous, reason, timestamp=now_utc()))

    def require_enabled(self, what: str) -> None:
        """Raise InvalidState (saying how to get an enabled endpoint) unless this one is enabled."""
        if self.state not in (EndpointState.ENABLED, EndpointState.RECONNECTING):
            raise InvalidState(
                f"cannot {what}: endpoint {self.uri} is {self.state.value}; "
                "get an enabled one from platform.endpoint(...)"
            )

    # -- lifecycle (loop thread) ------------------------------------------------------------------------
    async def aenable(self) -> Endpoint:
        """Start the user agent and REGISTER (the coroutine `platform.endpoint()` runs)."""
        self._set_state(EndpointState.ENABLING)
        try:
            await self.agent.start()
            if self.server is not None:
                await self.agent.register(self.expires)
        except BaseException as exc:  # whatever went wrong (even a bug), never leave it "enabling"
            await self.agent.close()
            self._set_state(EndpointState.DISABLED, f"registration failed: {exc}")
            raise
        self._set_state(EndpointState.ENABLED, "registered" if self.server else "listening (no server)")
        return self

    async def adisable(self) -> None:
        """`disable()` for code on the library's loop (the platform's shutdown)."""
        if self.state in (EndpointState.DISABLED, EndpointState.DISABLING):
            return
        self._set_state(EndpointState.DISABLING)
        for uri in list(self._pager_timers):
            self._cancel_pager_timer(uri)
        if self.agent.closed:  # the sockets are gone already (a simulated crash): nothing to tell anybody
            for s in list(self.sessions.sessions):
                s.abandon("endpoint disabled")
            self._set_state(EndpointState.DISABLED, "closed")
            return
        # each step is bounded: a server or peer that has gone away must not hold up a shutdown
        for s in list(self.sessions.sessions):
            try:
                await asyncio.wait_for(s.aterminate(), DISABLE_STEP_TIMEOUT)
            except Exception:  # noqa: BLE001 - disabling goes on regardless
                s.abandon("endpoint disabled")
        try:
            if self.server is not None:
                await asyncio.wait_for(self.agent.unregister(), DISABLE_STEP_TIMEOUT)
        except (RequestFailed, *NO_ANSWER, asyncio.TimeoutError):
            pass
        finally:
            await self.agent.close()
            self._set_state(EndpointState.DISABLED, "unregistered")

    def disable(self) -> Operation[None]:
        """Un-REGISTER (Expires: 0), end the sessions and close the sockets (UCCAPI `Disable`)."""
        return runtime().submit(self.adisable(), f"disable({self.uri})")

    # -- pager mode ---------------------------------------------------------------------------------------
    def send_message(self, to: str, text: str, content_type: str = "text/plain") -> Operation[MessageDelivered]:
        """Send one out-of-dialog MESSAGE (RFC 3428 pager mode). Resolves with MessageDelivered on 2xx: status
        200 when it reached the recipient, or 202 with `stored=True` when the server keeps it for a recipient
        who is offline (delivered when they register again). Raises RequestFailed otherwise (404 unknown user,
        480 offline and not kept)."""
        target = parse_remote_uri(to, "to")
        if not isinstance(text, str):
            raise TypeError(f"send_message() takes the text as str, not {type(text).__name__}")
        ct = check_content_type(content_type)
        checks.text_size(text, str(target))
        self.require_enabled("send a message")
        return runtime().submit(self._send_pager(target, text, ct), f"send_message({to!r})")

    async def _send_pager(self, to: SipUri, text: str, ct: str) -> MessageDelivered:
        msg = ChatMessage(random_hex(2 * 6), "out", self.uri, str(to), text, ct, now_utc(), "sending", "pager")
        event = await self.asend_pager(to, msg, None, self._emit)
        if isinstance(event, MessageDelivered):
            return event
        raise RequestFailed("MESSAGE", event.status, event.reason, str(to))

    async def asend_pager(
        self, to: SipUri, msg: ChatMessage, session: Any, emit: Any, call_id: str | None = None
    ) -> Any:
        """Send the new outgoing `msg` as an out-of-dialog MESSAGE (RFC 3428) and settle it: MessageSending, then
        MessageDelivered or MessageFailed, emitted through `emit` and naming `session` (a pager-mode ImSession,
        or None for `send_message`). Returns the settling event. A MESSAGE that got no answer is sent once more
        with the same Call-ID and message id (the receiver drops the duplicate); receipts may name the message by
        either (liblinphone names it by the Call-ID). `call_id`: the Call-ID to use (a new one by default)."""
        call_id = call_id or self.new_call_id()
        body, content_type, extra = self.pager_payload(str(to), msg)
        if msg.requested:
            self.receipts.track(msg, session, emit, call_id=call_id)
        emit(
            MessageSending(
                session, msg.id, msg.text, msg.content_type, "pager", str(to), timestamp=msg.timestamp, call_id=call_id
            )
        )
        started = time.perf_counter()
        status, reason = 408, "not sent"
        attempts = MESSAGE_ATTEMPTS
        while attempts > 0:
            attempts -= 1
            try:
                resp = await self.agent.send_message(to, body, content_type, extra=extra, call_id=call_id)
                status, reason = resp.status, resp.reason
            except MessageTooLarge as exc:  # a retry cannot help
                status, reason = exc.status, exc.reason
                break
            except NO_ANSWER as exc:  # retried once; the receiver drops a duplicate by id
                status, reason = exc.status, exc.reason
                continue
            if status == 415 and content_type == cpim.CONTENT_TYPE and self._cpim == "auto":
                # CPIM learned for a party that does not take it (a forged From taught it, or the client changed):
                # forget it and send this text once more, plain (the same id: a receiver drops a duplicate)
                log.info("%s: %s answered 415 to a CPIM-wrapped text; sending it plain", self.uri, to)
                self._forget_cpim(str(to))
                body, content_type, extra = self.pager_payload(str(to), msg)
                attempts = 1
                continue
            break
        event = settle(
            msg, session, status, failure_reason(status, reason, len(body)), time.perf_counter() - started, call_id
        )
        emit(event)
        return event

    def new_call_id(self) -> str:
        """A fresh Call-ID for an out-of-dialog request of this endpoint."""
        return new_call_id(self.agent.stack.host)

    def pager_payload(self, to: str, msg: ChatMessage) -> tuple[bytes, str, dict[str, str]]:
        """What the outgoing text `msg` goes as in pager mode: (body, Content-Type, SIP headers). Marks what
        receipts it asks for (`request_receipts`). To a party that speaks CPIM (`speaks_cpim`) the text goes in a
        message/cpim wrapper with its imdn.Message-ID and imdn.Disposition-Notification; otherwise as plain text
        with the same in Imdn-Message-ID / Disposition-Notification SIP headers."""
        if self.request_receipts:
            msg.requested = imdn.REQUESTED_SET
        inner = f"{msg.content_type};charset=UTF-8"
        if self.speaks_cpim(to):
            disposition = ", ".join(imdn.REQUESTED) if msg.requested else None
            body = cpim.wrap(
                self.uri,
                to,
                wire_text(msg.text),
                inner,
                message_id=msg.id,
                display_name=self.display_name,
                now=msg.timestamp,
                disposition=disposition,
            )
            return body, cpim.CONTENT_TYPE, {}
        extra = imdn.request_headers(msg.id, msg.timestamp) if msg.requested else {"Imdn-Message-ID": msg.id}
        return wire_text(msg.text), inner, extra

    def mark_read(self, message_ids: list[str] | None = None) -> Operation[int]:
        """Pager mode's `session.mark_read()`: the user has seen the pager-mode messages received (all, or
        those with these ids); a display notification goes to each sender that asked for one. Resolves with
        the number of messages newly marked."""
        return runtime().submit(self._mark_read(check_message_ids(message_ids)), "mark_read()")

    async def _mark_read(self, ids: set[str] | None) -> int:
        chosen = list(self._pager_unread) if ids is None else [i for i in self._pager_unread if i in ids]
        for msg_id in chosen:
            sender, wanted = self._pager_unread.pop(msg_id)
            if wanted is not None and wanted.display:
                await self._pager_notify(sender, wanted, imdn.DISPLAY_KIND, "displayed")
        return len(chosen)

    async def _pager_notify(self, peer: str, wanted: imdn.Request, kind: str, status: str) -> None:
        """Send one notification out of dialog (RFC 5438's way in pager mode). A peer that answers 415/501
        gets no more; a lost notification is not retried (it is only a receipt)."""
        if not self.send_receipts or peer in self._pager_refused:
            return
        body = notification_body(wanted.message_id, wanted.datetime, kind, status, self.uri, peer, now_utc())
        try:
            resp = await self.agent.send_message(SipUri.parse(peer), body, NOTIFICATION_CONTENT_TYPE)
        except NO_ANSWER:
            return
        if resp.status in REFUSING:
            log.info(
                "%s: %s answered %s %s to a receipt; not sending it any more", self.uri, peer, resp.status, resp.reason
            )
            self._pager_refused[peer] = None
            if len(self._pager_refused) > DEFAULT_SIZE:
                self._pager_refused.popitem(last=False)

    # -- UAListener (loop thread) ------------------------------------------------------------------------
    def on_pager_message(self, request: Request) -> int:
        """Called by the user agent for an out-of-dialog MESSAGE (pager mode); returns the status to answer.
        A MESSAGE from the other party of a pager-mode session belongs to that session."""
        sender = request.from_
        participant = Participant(str(sender.uri.without_params("transport")), display_name=sender.display_name)
        ct = request.content_type or "text/plain"
        status = self._pager_request(request, participant, ct)
        if ct == cpim.CONTENT_TYPE and status == 200:  # only a wrapper we could read teaches us the party's way
            self._learn_cpim(participant.uri)
        return status

    def _pager_request(self, request: Request, participant: Participant, ct: str) -> int:
        """`on_pager_message` for the sender `participant`: the status to answer."""
        session = self.sessions.pager_session(participant.uri)
        if session is not None:
            return session.on_pager_request(request)
        body, wrapper = request.body, None
        if ct in (imdn.CONTENT_TYPE, cpim.CONTENT_TYPE):  # a receipt, or a text or composing in CPIM (linphone)
            status, wrapper = self.receipts.open(ct, request.body, participant, now_utc())
            if wrapper is None:
                return status
            ct, body = wrapper.content_type, wrapper.body
        if ct == ic.CONTENT_TYPE:
            return self._pager_indication(participant, body)
        if not ct.startswith("text/"):
            return 415
        if self.pager_sessions:
            session = self.sessions.open_pager(participant)
            if session is not None:
                return session.on_pager_request(request)
        composing = self._pager_composing.get(participant.uri)
        if composing is not None:  # a text ends the sender's composing (RFC 3994 §4)
            self._run_pager_receiver(participant.uri, composing[0].message_received(time.monotonic()))
        text = (request.text() if wrapper is None else body.decode("utf-8", "replace")).replace("\r\n", "\n")
        header_id = (wrapper.message_id if wrapper is not None else None) or request.headers.get("Imdn-Message-ID")
        if header_id and self._seen_pager.seen(f"{participant.uri} {header_id}"):
            return 200  # a retry of a message we already delivered
        msg_id = header_id or random_hex(2 * 6)
        event = MessageReceived(
            None,
            participant,
            text,
            ct,
            msg_id,
            "pager",
            self.uri,
            timestamp=now_utc(),
            sent_at=parse_date(request.headers.get("Date")),
            call_id=request.call_id,
        )
        self.pager_messages.append(event)
        wanted = imdn.requested(request.headers, wrapper)
        self._pager_unread[msg_id] = (participant.uri, wanted)
        if len(self._pager_unread) > DEFAULT_SIZE:
            self._pager_unread.popitem(last=False)
        self._emit(event)
        if wanted is not None and wanted.delivery:
            asyncio.ensure_future(self._pager_notify(participant.uri, wanted, imdn.DELIVERY, "delivered"))
        return 200

    def _pager_indication(self, participant: Participant, body: bytes) -> int:
        """An is-composing indication out of dialog (bare, or in CPIM): ComposingChanged for the sender."""
        try:
            indication = ic.parse(body)
        except Exception:  # noqa: BLE001 - RemoteProtocolError: answer 400
            return 400
        receiver = self._pager_composing.get(participant.uri, (None, None))[0]
        if receiver is None:
            if len(self._pager_composing) >= DEFAULT_SIZE:
                return 200  # bounded: that many people typing at us at once is a flood, not a chat
            receiver = ic.ComposingReceiver()
        self._pager_composing[participant.uri] = (receiver, participant)
        self._run_pager_receiver(participant.uri, receiver.indication(indication, time.monotonic()))
        return 200

    def _run_pager_receiver(self, uri: str, actions: list) -> None:
        """Carry out a pager-mode composing receiver's actions for sender `uri` (its refresh-window timer and
        ComposingChanged); a sender back to idle is forgotten."""
        receiver, participant = self._pager_composing[uri]
        for a in actions:
            if isinstance(a, ic.StartTimer):
                self._cancel_pager_timer(uri)
                self._pager_timers[uri] = asyncio.get_running_loop().call_later(
                    a.delay, lambda n=a.name: self._run_pager_receiver(uri, receiver.timer(n, time.monotonic()))
                )
            elif isinstance(a, ic.StopTimer):
                self._cancel_pager_timer(uri)
            elif isinstance(a, ic.Changed):
                participant.composing = a.composing
                self._emit(ComposingChanged(None, participant, a.composing, timestamp=now_utc()))
        if not receiver.composing:
            self._cancel_pager_timer(uri)
            del self._pager_composing[uri]

    def _cancel_pager_timer(self, uri: str) -> None:
        timer = self._pager_timers.pop(uri, None)
        if timer is not None:
            timer.cancel()

    def on_invite(self, request: Request, handle: ServerHandle) -> None:
        """Called by the user agent for a new INVITE: hands it to the session manager (480 while disabled)."""
        if self.state not in (EndpointState.ENABLED, EndpointState.RECONNECTING):
            self.agent.reply(handle, 480)
            return
        self.sessions.invited(request, handle)

    def on_registration(self, state: str, detail: str) -> None:
        """Called by the user agent when a registration refresh fails or recovers: updates `state`."""
        if self.state not in (EndpointState.ENABLED, EndpointState.RECONNECTING):
            return
        if state == "failed":
            if self.state is EndpointState.RECONNECTING:  # still down: report each attempt
                self._emit(
                    EndpointStateChanged(
                        self, self.state, self.state, f"registration failed: {detail}", timestamp=now_utc()
                    )
                )
            self._set_state(EndpointState.RECONNECTING, f"registration failed: {detail}")
        elif state == "recovered":
            self._set_state(EndpointState.ENABLED, detail)

    # -- history (trace frames, pandas imported on use) -----------------------------------------------------
    def history(self, frame: str = "messages") -> Any:
        """This endpoint's rows of `platform.trace.messages()` (or frame="events" / "sip"); same schema."""
        if frame not in ("messages", "events", "sip"):
            raise ValueError(f"frame must be 'messages', 'events' or 'sip', not {frame!r}")
        return getattr(self.platform.trace, frame)(owner=self.uri)
