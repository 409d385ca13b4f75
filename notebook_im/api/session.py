"""ImSession: a two-party IM session in session mode (INVITE with m=message, in-dialog MESSAGE, BYE).

UCCAPI's `IUccInstantMessagingSession` + `IUccSession`. Public methods return `Operation`s and may be
called from any thread; everything underscore-prefixed runs on the library loop. In-dialog requests of
one session are sent one at a time, in call order: the receiver checks CSeq order (RFC 3261 §12.2.2),
and a chat must not arrive shuffled.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..errors import (
    NO_ANSWER, ConferenceRequired, InvalidState, MessageTooLarge, RequestFailed, TransactionTimeout, TransportError,
)
from ..im import cpim
from ..im import imdn
from ..im import iscomposing as ic
from ..runtime import Operation, runtime
from ..sip.dialog import Dialog
from ..sip.errors import RemoteProtocolError
from ..sip.message import Request, random_hex
from ..sip.reason import completed_elsewhere
from ..sip.sdp import ACCEPT_TYPES as _SDP_ACCEPT_TYPES
from ..core.stack import ClientHandle, ServerHandle
from . import checks
from .emitter import EventSource
from .events import (
    ComposingChanged, IncomingSession, MessageDelivered, MessageFailed, MessageReceived, MessageSending, ParticipantAdded,
    ParticipantState, ParticipantStateChanged, SessionState, SessionStateChanged, SessionTerminated,
)
from .participant import Participant
from .receipts import NOTIFICATION_CONTENT_TYPE, notification_body

if TYPE_CHECKING:  # pragma: no cover
    from .manager import SessionManager

log = logging.getLogger("notebook_im.session")

TEXT_TYPES = ("text/plain", "text/html", "text/enriched")
RING_TIMEOUT = 120.0
ANSWERED_ELSEWHERE = "answered elsewhere"   # SessionTerminated.reason when another device of the user answered
MESSAGE_ATTEMPTS = 2  # a MESSAGE whose transaction timed out is sent once more (same Imdn-Message-ID)
UNANSWERED_LIMIT = 2  # this many requests in a row without an answer: the other party stopped answering
REFUSING = (415, 501)  # "I do not take this content / this method": stop sending that kind to this peer


class RecentIds:
    """A bounded set of recently seen message ids: duplicate suppression for retried MESSAGEs."""

    def __init__(self, size: int = 4096) -> None:
        self._order: deque[str] = deque()
        self._ids: set[str] = set()
        self.size = size

    def seen(self, msg_id: str) -> bool:
        """True if `msg_id` was seen before; otherwise remember it and return False."""
        if msg_id in self._ids:
            return True
        self._ids.add(msg_id)
        self._order.append(msg_id)
        if len(self._order) > self.size:
            self._ids.discard(self._order.popleft())
        return False


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def wire_text(text: str) -> bytes:
    """Text as it goes on the wire: UTF-8 with CRLF line breaks (what OCS/Lync clients expect)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n").encode("utf-8")


def failure_reason(status: int, reason: str, size: int) -> str:
    """The reason a failed MESSAGE reports: the SIP reason phrase, spelled out where the phrase alone would
    leave the user guessing (413: the server's size limit)."""
    if status == 413:
        return (f"{reason or 'Request Entity Too Large'}: the server refuses messages this large (this one is "
                f"{size:,} bytes); send a shorter message or split it")
    return reason


def check_message_ids(message_ids: Any) -> set[str] | None:
    """`mark_read()`'s argument: None (all) or a list of message ids, with an error that says so otherwise."""
    if message_ids is None:
        return None
    if isinstance(message_ids, str) or not hasattr(message_ids, "__iter__") or \
            not all(isinstance(i, str) for i in message_ids):
        raise TypeError("mark_read() takes a list of message ids (ChatMessage.id / MessageReceived.message_id), "
                        f"or nothing for all of them; not {message_ids!r}")
    return set(message_ids)


def settle(msg: "ChatMessage", session: "ImSession | None", status: int, reason: str,
           latency: float) -> MessageDelivered | MessageFailed:
    """Record the final response of a sent message on `msg` (status, state through the IMDN table) and
    return the event that reports it (session mode or pager mode: `session` None)."""
    msg.sip_status, msg.reason = status, reason
    if 200 <= status < 300:
        msg.status, msg.delivered_at = "delivered", now_utc()
        msg.state = imdn.advance(msg.state, imdn.Input.RESPONSE_2XX).value
        return MessageDelivered(session, msg.id, msg.text, msg.content_type, status, reason, latency, msg.mode,
                                msg.recipient, msg.timestamp, msg.state, timestamp=msg.delivered_at,
                                stored=status == 202)
    msg.status = "failed"
    msg.state = imdn.advance(msg.state, imdn.Input.RESPONSE_ERROR).value
    return MessageFailed(session, msg.id, msg.text, msg.content_type, status, reason, msg.mode, msg.recipient,
                         msg.timestamp, msg.state, timestamp=now_utc())


def check_content_type(content_type: str) -> str:
    ct = (content_type or "").split(";")[0].strip().lower()
    if ct not in TEXT_TYPES:
        raise ValueError(f"content_type must be one of {', '.join(TEXT_TYPES)}, not {content_type!r}")
    return ct


_STATE_OF_STATUS = {"sending": "sending", "delivered": "sent", "failed": "failed", "received": "received"}


@dataclass
class ChatMessage:
    """One IM message of a conversation, sent or received, with its delivery state.

    `status` is the SIP outcome (UCCAPI `OnSendMessage`): "sending", "delivered" (a 2xx came back: the
    server or the peer took it), "failed", or "received". `state` is what the receipts (RFC 5438) add: a
    sent message goes "sending" -> "sent" (2xx) -> "delivered" (the recipient's device said so) ->
    "displayed" (they have seen it), or "failed"; with a peer that sends no receipts it stays "sent". A
    received message is "received", then "displayed" once shown or marked read (`session.mark_read()`).
    """

    id: str
    direction: str                  # "out" or "in"
    sender: str
    recipient: str
    text: str
    content_type: str
    timestamp: datetime
    status: str                     # "sending", "delivered", "failed" or "received"
    mode: str = "session"
    sip_status: int | None = None
    reason: str = ""
    delivered_at: datetime | None = None   # when the 2xx came (sent) or the message arrived (received)
    extra: dict[str, Any] = field(default_factory=dict)
    state: str = ""                 # sending / sent / delivered / displayed / failed; received / displayed
    requested: frozenset[str] = frozenset()  # the receipts asked for ("positive-delivery", "display")
    imdn_datetime: str | None = None        # the message's DateTime, echoed in its notifications
    delivery_notified_at: datetime | None = None  # sent: when the delivery notification came
    displayed_at: datetime | None = None          # sent: when the display notification came; received: when read

    def __post_init__(self) -> None:
        if not self.state:
            self.state = _STATE_OF_STATUS.get(self.status, self.status)


class ImSession(EventSource):
    """A peer-to-peer IM session with one remote participant (a conference is a ConferenceSession)."""

    # what we take in a two-party session: text, composing, and receipts (bare or CPIM-wrapped, RFC 5438)
    _accept_types: tuple[str, ...] = _SDP_ACCEPT_TYPES + (cpim.CONTENT_TYPE, imdn.CONTENT_TYPE)
    _receipts = True   # RFC 5438 receipts between the two parties (a conference's focus relays none)
    _answered_elsewhere = False   # set when the invitation ended because another device of ours answered

    def __init__(self, manager: "SessionManager", remote_uri: str, *, incoming: bool,
                 display_name: str | None = None) -> None:
        super().__init__()
        self.manager = manager
        self.endpoint = manager.endpoint
        self._parent_source = manager.endpoint
        self.id = random_hex(2 * 4)
        self.is_incoming = incoming
        self.is_conference = False
        self.state = SessionState.IDLE
        self.local_participant = Participant(self.endpoint.uri, is_local=True, session=self,
                                             display_name=self.endpoint.display_name)
        self._remote = Participant(remote_uri, display_name=display_name, session=self)
        self.messages: list[ChatMessage] = []
        self.dialog: Dialog | None = None
        self.acked = False
        self.terminate_reason: str | None = None
        self._invite_handle: ClientHandle | None = None
        self._server_handle: ServerHandle | None = None
        self._incoming_event: IncomingSession | None = None
        self._accepted: asyncio.Future | None = None
        self._ring_timer: asyncio.TimerHandle | None = None
        self._lock: asyncio.Lock | None = None
        self._sender = ic.ComposingSender()
        self._receiver = ic.ComposingReceiver()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._refused: set[str] = set()     # content types the peer answered 415/501 to (composing, IMDN)
        self._unanswered = 0                # our requests in a row that got no answer at all
        self._unread: dict[str, ChatMessage] = {}   # received messages not yet displayed / marked read
        self._seen = RecentIds()
        self.escalated_to: Any = None      # the ConferenceSession this conversation moved to (escalate())
        self._escalating = False
        self._rejecting = False

    # -- properties ---------------------------------------------------------------------------------------
    @property
    def participants(self) -> list[Participant]:
        """The remote participants (UCCAPI `Participants` minus the local one)."""
        return [self._remote]

    @property
    def remote(self) -> Participant:
        return self._remote

    @property
    def invitation(self) -> IncomingSession | None:
        """The IncomingSession of an incoming session that is still ringing (None once answered or ended)."""
        handle = self._server_handle
        if self._incoming_event is None or handle is None or handle.answered or self.state is not SessionState.CONNECTING:
            return None
        return self._incoming_event

    @property
    def ua(self):
        return self.endpoint._ua

    @property
    def unsupported_by_peer(self) -> frozenset[str]:
        """Content types the other party refused with 415/501 in this session ("application/im-iscomposing+xml",
        "message/imdn+xml"): they are no longer sent to it; text messages keep flowing."""
        return frozenset(self._refused)

    def __repr__(self) -> str:
        direction = "from" if self.is_incoming else "to"
        return f"<ImSession {self.id} {direction} {self._remote.uri} {self.state.value}, {len(self.messages)} messages>"

    # -- public API (any thread) ----------------------------------------------------------------------------
    def send(self, text: str, content_type: str = "text/plain") -> Operation[MessageDelivered]:
        """Send an IM in this session (UCCAPI `SendMessage`). Resolves with MessageDelivered on 200, raises
        RequestFailed (and emits MessageFailed) otherwise."""
        if not isinstance(text, str):
            raise TypeError(f"send() takes the message text as str, not {type(text).__name__}")
        ct = check_content_type(content_type)
        checks.text_size(text, self._remote.uri)
        return runtime().submit(self._send_text(text, ct), f"send({_short(text)!r})")

    def start_composing(self) -> Operation[None]:
        """Tell the other party we are typing (RFC 3994 `active`, refreshed while typing continues)."""
        return runtime().submit(self._keystroke(), "start_composing()")

    def stop_composing(self) -> Operation[None]:
        """Tell the other party we stopped typing (RFC 3994 `idle`)."""
        return runtime().submit(self._stop_composing(), "stop_composing()")

    def typing(self, text: str) -> Operation[None]:
        """Feed the current contents of an input box: non-empty means typing, empty means stopped."""
        return self.start_composing() if text else self.stop_composing()

    def mark_read(self, message_ids: "list[str] | None" = None) -> Operation[int]:
        """The user has seen the received messages (all, or those with these ids): their state becomes
        "displayed" and, for each whose sender asked (RFC 5438 `Disposition-Notification: display`), a display
        notification goes back, so the sender's panel shows "Seen". Resolves with the number of messages newly
        marked. A chat panel calls this by itself for the messages it shows while a front end displays it."""
        return runtime().submit(self._mark_read(check_message_ids(message_ids)), "mark_read()")

    def terminate(self) -> Operation[None]:
        """End the session (BYE; CANCEL while still inviting; 603 for an unanswered invitation)."""
        return runtime().submit(self._terminate(), "terminate()")

    def add_participant(self, uri: str) -> Any:
        """A peer-to-peer IM session has exactly two parties: this raises ConferenceRequired, naming the call
        that moves the conversation to a conference (`session.escalate([uri])`)."""
        raise ConferenceRequired(
            f"cannot add {uri} to session {self.id}: a peer-to-peer IM session has exactly two parties "
            f"({self.endpoint.uri} and {self._remote.uri}). To chat with three or more, call "
            f"session.escalate([{uri!r}]): it moves this conversation, history included, to a conference on "
            f"your server's conference focus (or start one with endpoint.sessions.create_conference([...]))."
        )

    def escalate(self, uris: "list[str] | str") -> Operation[Any]:
        """Move this two-party conversation to a conference (as Lync does when a third person is added):
        creates a conference on the endpoint's server, joins it, invites the other party (with a Replaces
        header naming this dialog, so their client swaps sessions without asking) and `uris`, then ends this
        session. Resolves with the new ConferenceSession, whose `.messages` starts with this session's history."""
        from .conference import check_uris
        uris = check_uris(uris)
        if self.is_conference:
            raise InvalidState("this session is already a conference: use session.invite(uri)")
        self._require_connected("escalate")
        if self.endpoint.server is None:
            raise InvalidState(f"cannot escalate: endpoint {self.endpoint.uri} has no server, so no conference focus")
        return runtime().submit(self._escalate(uris), f"escalate({uris!r})")

    async def _escalate(self, uris: list[str]) -> Any:
        from .conference import ConferenceSession
        assert self.dialog is not None
        d = self.dialog
        replaces = f"{d.call_id};to-tag={d.remote_tag};from-tag={d.local_tag}"
        conf = ConferenceSession(self.manager, None, incoming=False, history=self.messages, escalated_from=self)
        self.manager._sessions.append(conf)
        self.escalated_to = conf   # the peer's client may end this dialog (RFC 3891) as soon as it has joined
        try:
            await conf._create([(self._remote.uri, replaces)] + [(u, None) for u in uris])
        except BaseException:
            self.escalated_to = None
            raise
        failure = conf._failures.get(self._remote.uri)
        if failure is not None and self.state is SessionState.CONNECTED:
            # the other party did not come along: keep the two-party conversation, drop the conference
            self.escalated_to = None
            await conf._terminate()
            raise failure
        self._escalating = True
        await self._terminate()
        return conf

    def wait_connected(self, timeout: float | None = None) -> Operation["ImSession"]:
        """An Operation that resolves with the session once it is connected (raises if it ends first)."""
        async def wait() -> "ImSession":
            while self.state in (SessionState.IDLE, SessionState.CONNECTING):
                await asyncio.sleep(0.01)
            if self.state is not SessionState.CONNECTED:
                raise InvalidState(f"session {self.id} ended before it connected: {self.terminate_reason}")
            return self
        return runtime().submit(asyncio.wait_for(wait(), timeout), "wait_connected()")

    # -- state helpers (loop thread) -----------------------------------------------------------------------
    def _set_state(self, state: SessionState) -> None:
        previous = self.state
        if previous is state:
            return
        self.state = state
        self._emit(SessionStateChanged(self, state, previous, timestamp=now_utc()))
        if self._remote.state is not ParticipantState.DISCONNECTED:  # a participant that stopped answering stays so
            self._set_participant_state(self._remote, ParticipantState(state.value))
        self._set_participant_state(self.local_participant, ParticipantState(state.value), emit=False)

    def _set_participant_state(self, p: Participant, state: ParticipantState, emit: bool = True, reason: str = "") -> None:
        previous = p.state
        if previous is state:
            return
        p.state = state
        if emit:
            self._emit(ParticipantStateChanged(self, p, state, previous, reason, timestamp=now_utc()))

    def _no_answer(self, exc: TransactionTimeout | TransportError) -> None:
        """A request of ours got no answer (timeout, or the transport failed). One can be bad luck on a lossy
        network; `UNANSWERED_LIMIT` in a row (a text and its retry, or a receipt and the next request) means
        the other party stopped answering."""
        self._unanswered += 1
        if self._unanswered >= UNANSWERED_LIMIT:
            self._participant_lost(exc.method, exc.status, exc.reason)

    def _participant_lost(self, method: str, status: int, reason: str) -> None:
        """The other party stopped answering (no answer twice in a row, a 408, or the transport failed): it is
        marked DISCONNECTED, saying which request went unanswered, and the session ends without a BYE (RFC 3261
        §12.2.1.2: a 408 or 481 in a dialog ends it; a BYE would only time out as well)."""
        if self.state is not SessionState.CONNECTED:
            return
        why = f"{self._remote.uri} stopped answering ({method}: {status} {reason})"
        self._set_participant_state(self._remote, ParticipantState.DISCONNECTED, reason=why)
        self._finish(why, status)

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    # -- outgoing session -------------------------------------------------------------------------------------
    async def _invite(self) -> "ImSession":
        from ..sip.uri import SipUri
        self._emit(ParticipantAdded(self, self._remote, timestamp=now_utc()))
        self._set_state(SessionState.CONNECTING)

        def keep(h: ClientHandle) -> None:
            self._invite_handle = h
        try:
            dialog, resp = await self.ua.invite(SipUri.parse(self._remote.uri), self, on_handle=keep,
                                                accept_types=self._accept_types)
        except NO_ANSWER as exc:
            self._finish(f"no answer: {exc.reason}", 408)
            raise
        if dialog is None:
            self._finish(f"{resp.status} {resp.reason}", resp.status, by_remote=True)
            raise RequestFailed("INVITE", resp.status, resp.reason, self._remote.uri)
        self.dialog = dialog
        self.acked = True
        if not self._remote.display_name:  # the callee may name itself in its Contact (or To)
            for addr in (resp.contacts[:1] + [resp.to]):
                if addr.display_name:
                    self._remote.display_name = addr.display_name
                    break
        if self.state is SessionState.DISCONNECTING:  # terminate() was called while we were inviting
            await self._bye()
            raise InvalidState(f"session {self.id} was terminated while connecting")
        self._set_state(SessionState.CONNECTED)
        return self

    # -- incoming session --------------------------------------------------------------------------------------
    def _incoming(self, request: Request, handle: ServerHandle, local_tag: str) -> IncomingSession:
        self._server_handle = handle
        handle.on_cancel = self._on_cancelled
        self.dialog = Dialog.from_uas(request, local_tag)
        if not self.is_conference:  # a conference's participants come from its roster
            self._emit(ParticipantAdded(self, self._remote, timestamp=now_utc()))
        self._set_state(SessionState.CONNECTING)
        self.ua.ring(handle, local_tag)
        loop = asyncio.get_running_loop()
        self._ring_timer = loop.call_later(RING_TIMEOUT, self._ring_timeout)
        event = IncomingSession(self, self._inviter(request), subject=request.headers.get("Subject"), timestamp=now_utc())
        self._incoming_event = event
        return event

    def _inviter(self, request: Request) -> Participant:
        return self._remote

    def _ring_timeout(self) -> None:
        if self._server_handle is not None and not self._server_handle.answered:
            self.ua.reply(self._server_handle, 480, tag=self.dialog.local_tag)
            self._finish("not answered", 480)

    def _on_cancelled(self, cancel: Request) -> None:
        handle = self._server_handle
        if handle is not None and not handle.answered:
            self.ua.reply(handle, 487, tag=self.dialog.local_tag if self.dialog else None)
        if completed_elsewhere(cancel):
            # a forking proxy stopped this device ringing because another device of ours answered (RFC 3326)
            self._answered_elsewhere = True
            self._finish(ANSWERED_ELSEWHERE, 487, by_remote=True)
            return
        self._finish("cancelled by the caller", 487, by_remote=True)

    def _accept(self) -> Operation["ImSession"]:
        return runtime().submit(self._do_accept(), "accept()")

    async def _do_accept(self) -> "ImSession":
        handle = self._server_handle
        if handle is None or self.dialog is None:
            raise InvalidState("only an incoming invitation can be accepted")
        if self.state is SessionState.CONNECTED:
            return self
        if handle.answered or self.state is not SessionState.CONNECTING:
            raise InvalidState(f"the invitation from {self._remote.uri} was already answered or ended ({self.state.value})")
        if self._ring_timer:
            self._ring_timer.cancel()
        self._accepted = asyncio.get_running_loop().create_future()
        self.ua.accept_invite(handle, self.dialog, self, accept_types=self._accept_types, acked=lambda: self.acked)
        if handle.transport != "udp":
            self.acked = False  # still wait for the ACK over reliable transports
        await asyncio.wait_for(asyncio.shield(self._accepted), 64 * self.ua.timers.t1 + 1)
        return self

    def _reject(self, code: int, reason: str | None) -> Operation[None]:
        if not isinstance(code, int) or not 300 <= code <= 699:
            raise ValueError(f"reject() takes a SIP status code from 300 to 699 (486 Busy Here, 603 Decline), not {code!r}")
        checks.reason_phrase(reason)
        self._rejecting = True
        return runtime().submit(self._do_reject(code, reason), f"reject({code})")

    async def _do_reject(self, code: int, reason: str | None) -> None:
        handle = self._server_handle
        if handle is None or self.dialog is None:
            raise InvalidState("only an incoming invitation can be rejected")
        if handle.answered:
            raise InvalidState(f"the invitation from {self._remote.uri} was already answered")
        if self._ring_timer:
            self._ring_timer.cancel()
        self.ua.reply(handle, code, reason, tag=self.dialog.local_tag)
        self._finish(f"rejected with {code}", code)

    def on_notify(self, request: Request) -> int:
        """A NOTIFY in the session's dialog: the end of a REFER's implicit subscription (RFC 3515). 200."""
        return 200

    def on_ack(self, request: Request) -> None:
        """Called by the user agent when the ACK for our 200 OK arrives: the session is connected."""
        self.acked = True
        self._connected_by_peer()

    def on_ack_timeout(self) -> None:
        """Called when no ACK came for our 200 OK within 64*T1: the session is ended with a BYE."""
        async def give_up() -> None:
            self._set_state(SessionState.DISCONNECTING)
            try:
                await self._bye()
            finally:
                self._finish("no ACK for our 200 OK", 408)
        asyncio.ensure_future(give_up())

    def _connected_by_peer(self) -> None:
        if self.state is SessionState.CONNECTING:
            self._set_state(SessionState.CONNECTED)
        if self._accepted is not None and not self._accepted.done():
            self._accepted.set_result(None)

    # -- dialog callbacks (loop thread) ---------------------------------------------------------------------------
    def on_dialog_request(self, request: Request) -> int:
        """An in-dialog MESSAGE: text, or a composing indication. Returns the status to answer."""
        if not self.acked:  # the MESSAGE overtook the ACK: the caller evidently got our 200
            self.acked = True
            self._connected_by_peer()
        self._unanswered = 0  # the other party is evidently there
        ct = request.content_type or "text/plain"
        if ct == ic.CONTENT_TYPE:
            try:
                indication = ic.parse(request.body)
            except RemoteProtocolError:
                return 400
            self._run_receiver(self._receiver.indication(indication, time.monotonic()))
            return 200
        if ct.startswith("text/"):
            self._deliver_text(request, ct, mode="session")
            return 200
        if ct in (imdn.CONTENT_TYPE, cpim.CONTENT_TYPE):
            return self._on_wrapped(request, ct)
        return 415

    def _on_wrapped(self, request: Request, ct: str) -> int:
        """A receipt (message/imdn+xml, bare or in CPIM), or a text in a CPIM wrapper (linphone's way of
        asking for receipts). The CPIM From is not trusted to name anybody: in a two-party session it is
        the other party."""
        status, wrapped = self.endpoint._receipts.open(ct, request.body, self._remote, now_utc(), session=self)
        if wrapped is not None:
            self._deliver_text(request, wrapped.content_type, mode="session", text=wrapped.body.decode("utf-8", "replace"),
                               message_id=wrapped.message_id, wrapper=wrapped)
        return status

    def _deliver_text(self, request: Request, ct: str, *, mode: str, participant: Participant | None = None,
                      text: str | None = None, message_id: str | None = None, wrapper: cpim.Cpim | None = None) -> None:
        """Record and announce a received text. In a conference `participant` is the original sender (from
        the focus's message/cpim wrapper), `text` the unwrapped body and `message_id` its id. If the sender
        asked for a delivery notification (and receipts are on), it goes back at once."""
        sender = participant or self._remote
        if text is None:
            text = request.text()
        text = text.replace("\r\n", "\n")
        header_id = message_id or request.headers.get("Imdn-Message-ID")
        if header_id and self._seen.seen(f"{sender.uri} {header_id}" if participant is not None else header_id):
            return  # the sender retried after a lost 200: answered again, shown once
        msg_id = header_id or random_hex(2 * 6)
        ts = now_utc()
        msg = ChatMessage(msg_id, "in", sender.uri, self.endpoint.uri, text, ct, ts, "received", mode)
        wanted = imdn.requested(request.headers, wrapper) if self._receipts else None
        if wanted is not None:
            msg.requested, msg.imdn_datetime = wanted.dispositions, wanted.datetime
        self.messages.append(msg)
        self._unread[msg.id] = msg
        self._receiver_message(sender)
        self._emit(MessageReceived(self, sender, text, ct, msg_id, mode, self.endpoint.uri, timestamp=ts))
        if wanted is not None and wanted.delivery and self._may_notify():
            asyncio.ensure_future(self._notify(msg, imdn.DELIVERY, "delivered"))

    def _receiver_message(self, sender: Participant) -> None:
        """A text from `sender` clears their composing state (RFC 3994 §4)."""
        self._run_receiver(self._receiver.message_received(time.monotonic()))

    def on_bye(self, request: Request) -> None:
        """Called by the user agent when the other party sent BYE."""
        if completed_elsewhere(request) and self.is_incoming:
            # we answered at the same moment as another device of ours; the proxy kept the other one
            self._answered_elsewhere = True
            self._finish(ANSWERED_ELSEWHERE, 200, by_remote=True)
            return
        if self.escalated_to is not None:
            self._finish(f"moved to conference {self.escalated_to.conference_uri}", 200, by_remote=True)
            return
        self._finish("remote party ended the session", 200, by_remote=True)

    # -- composing (loop thread) -------------------------------------------------------------------------------------
    def _run_receiver(self, actions: list) -> None:
        for a in actions:
            if isinstance(a, ic.SetTimer):
                self._arm("rx_" + a.name, a.delay, lambda n=a.name: self._run_receiver(self._receiver.timer(n, time.monotonic())))
            elif isinstance(a, ic.CancelTimer):
                self._disarm("rx_" + a.name)
            elif isinstance(a, ic.Changed):
                self._remote.composing = a.composing
                self._emit(ComposingChanged(self, self._remote, a.composing, timestamp=now_utc()))

    def _run_sender(self, actions: list) -> list[asyncio.Future]:
        sends: list[asyncio.Future] = []
        for a in actions:
            if isinstance(a, ic.SetTimer):
                self._arm("tx_" + a.name, a.delay, lambda n=a.name: self._run_sender(self._sender.timer(n, time.monotonic())))
            elif isinstance(a, ic.CancelTimer):
                self._disarm("tx_" + a.name)
            elif isinstance(a, ic.SendIndication):
                sends.append(asyncio.ensure_future(self._send_indication(a.indication)))
        return sends

    async def _send_indication(self, indication: ic.Indication) -> None:
        await self._send_aux(ic.CONTENT_TYPE, ic.build(indication), ic.CONTENT_TYPE)

    async def _send_aux(self, kind: str, body: bytes, content_type: str) -> bool:
        """Send a composing indication or a receipt (`kind`: its content type) in the dialog. A peer that
        answers 415/501 gets no more of that kind in this session, while text keeps flowing (clients such as
        linphone refuse is-composing or IMDN this way). True if the peer took it."""
        if kind in self._refused or self.state is not SessionState.CONNECTED or self.dialog is None:
            return False
        async with self._get_lock():
            if kind in self._refused or self.state is not SessionState.CONNECTED:
                return False
            try:
                resp = await self.ua.send_in_dialog(self.dialog, "MESSAGE", body=body, content_type=content_type)
            except NO_ANSWER as exc:  # silence, or the transport failed
                self._no_answer(exc)
                return False
            self._unanswered = 0
            if resp.status in REFUSING:
                self._refused.add(kind)
                log.info("session %s: %s answered %s %s to %s; not sending those any more", self.id, self._remote.uri,
                         resp.status, resp.reason, kind)
            elif resp.status == 408:
                self._participant_lost("MESSAGE", resp.status, resp.reason)
            elif resp.status == 481:
                self._finish(f"dialog gone ({resp.status} {resp.reason})", resp.status)
            return 200 <= resp.status < 300

    # -- receipts (loop thread) ---------------------------------------------------------------------------------------
    def _may_notify(self) -> bool:
        return (self._receipts and self.endpoint.send_receipts and imdn.CONTENT_TYPE not in self._refused
                and self.state is SessionState.CONNECTED)

    async def _notify(self, msg: ChatMessage, kind: str, status: str) -> None:
        """Send one notification about the received message `msg` (CPIM-wrapped, in the dialog)."""
        body = notification_body(msg.id, msg.imdn_datetime, kind, status, self.endpoint.uri, self._remote.uri, now_utc())
        await self._send_aux(imdn.CONTENT_TYPE, body, NOTIFICATION_CONTENT_TYPE)

    async def _mark_read(self, ids: set[str] | None) -> int:
        now = now_utc()
        if ids is None:
            newly = list(self._unread.values())
        else:
            newly = [self._unread[i] for i in ids if i in self._unread]
            newly.sort(key=lambda m: m.timestamp)
        for m in newly:
            del self._unread[m.id]
            m.state, m.displayed_at = "displayed", now
        for m in newly:
            if imdn.DISPLAY in m.requested and self._may_notify():
                await self._notify(m, imdn.DISPLAY_KIND, "displayed")
        return len(newly)

    async def _keystroke(self) -> None:
        self._require_connected("start composing")
        for f in self._run_sender(self._sender.keystroke(time.monotonic())):
            await f

    async def _stop_composing(self) -> None:
        self._require_connected("stop composing")
        for f in self._run_sender(self._sender.stop(time.monotonic())):
            await f

    def _arm(self, name: str, delay: float, fn) -> None:
        self._disarm(name)
        self._timers[name] = asyncio.get_running_loop().call_later(delay, fn)

    def _disarm(self, name: str) -> None:
        t = self._timers.pop(name, None)
        if t is not None:
            t.cancel()

    # -- sending text ------------------------------------------------------------------------------------------------
    def _require_connected(self, what: str) -> None:
        if self.state is not SessionState.CONNECTED or self.dialog is None:
            hint = "await the session (or incoming.accept()) first" if self.state in (SessionState.IDLE, SessionState.CONNECTING) \
                else "create a new session with endpoint.sessions.create(uri)"
            raise InvalidState(f"cannot {what}: session {self.id} is {self.state.value}; {hint}")

    async def _send_text(self, text: str, ct: str) -> MessageDelivered:
        self._require_connected("send")
        msg = ChatMessage(random_hex(2 * 6), "out", self.endpoint.uri, self._remote.uri, text, ct, now_utc(), "sending")
        self.messages.append(msg)
        extra = {"Imdn-Message-ID": msg.id}
        if self._receipts and self.endpoint.request_receipts:
            extra = imdn.request_headers(msg.id, msg.timestamp)
            msg.requested = imdn.REQUESTED_SET
            self.endpoint._receipts.track(msg, self)
        self._emit(MessageSending(self, msg.id, text, ct, "session", msg.recipient, timestamp=msg.timestamp))
        self._run_sender(self._sender.message_sent(time.monotonic()))
        started = time.perf_counter()
        body = wire_text(text)
        lost: TransactionTimeout | TransportError | None = None
        async with self._get_lock():
            status, reason = 481, f"session {self.state.value} before the message was sent"
            for _attempt in range(MESSAGE_ATTEMPTS):
                if self.state is not SessionState.CONNECTED or self.dialog is None:
                    break
                try:
                    resp = await self.ua.send_in_dialog(self.dialog, "MESSAGE", body=body,
                                                        content_type=f"{ct};charset=UTF-8", extra=extra)
                    status, reason, lost, self._unanswered = resp.status, resp.reason, None, 0
                    break
                except MessageTooLarge as exc:  # not the peer's fault, and a retry cannot help
                    status, reason = exc.status, exc.reason
                    break
                except NO_ANSWER as exc:  # retried in a new transaction; the receiver drops a duplicate by id
                    status, reason, lost = exc.status, exc.reason, exc
                    self._unanswered += 1
        lost_now = status == 408 or (lost is not None and self._unanswered >= UNANSWERED_LIMIT)
        return self._settle(msg, status, failure_reason(status, reason, len(body)), time.perf_counter() - started,
                            lost=lost_now)

    def _settle(self, msg: ChatMessage, status: int, reason: str, latency: float, *, lost: bool = False) -> MessageDelivered:
        """Record the final outcome of a sent message and emit MessageDelivered / MessageFailed; a failure
        raises RequestFailed. `lost`: no answer at all (or 408), so the other party is marked disconnected."""
        event = settle(msg, self, status, reason, latency)
        self._emit(event)
        if isinstance(event, MessageDelivered):
            return event
        if lost:
            self._participant_lost("MESSAGE", status, reason)
        elif status == 481 and self.state is SessionState.CONNECTED:
            self._finish(f"dialog gone ({status} {reason})", status)
        raise RequestFailed("MESSAGE", status, reason, self._remote.uri)

    # -- ending ----------------------------------------------------------------------------------------------------------
    async def _terminate(self) -> None:
        state = self.state
        if state is SessionState.DISCONNECTED or state is SessionState.DISCONNECTING:
            return
        if self._server_handle is not None and not self._server_handle.answered:
            await self._do_reject(603, "Decline")
            return
        if state is SessionState.CONNECTING and not self.is_incoming:
            self._set_state(SessionState.DISCONNECTING)
            if self._invite_handle is not None:
                self.ua.cancel(self._invite_handle)
            return  # _invite() finishes the session when the 487 arrives
        self._set_state(SessionState.DISCONNECTING)
        try:
            async with self._get_lock():
                await self._bye()
        finally:
            if self._escalating and self.escalated_to is not None:
                self._finish(f"moved to conference {self.escalated_to.conference_uri}", None)
            else:
                self._finish("local party ended the session", None)

    async def _bye(self) -> None:
        if self.dialog is None:
            return
        try:
            await self.ua.send_in_dialog(self.dialog, "BYE")
        except NO_ANSWER:
            pass

    def _finish(self, reason: str, status: int | None, *, by_remote: bool = False) -> None:
        if self.state is SessionState.DISCONNECTED:
            return
        if self._ring_timer:
            self._ring_timer.cancel()
        for name in list(self._timers):
            self._disarm(name)
        if self._remote.composing:
            self._remote.composing = False
            self._emit(ComposingChanged(self, self._remote, False, timestamp=now_utc()))
        if self.state is not SessionState.DISCONNECTING:
            self._set_state(SessionState.DISCONNECTING)
        self._set_state(SessionState.DISCONNECTED)
        self.terminate_reason = reason
        if self.dialog is not None:
            self.ua.forget_dialog(self.dialog)
        if self._accepted is not None and not self._accepted.done():
            self._accepted.set_exception(InvalidState(f"session ended before it connected: {reason}"))
        self._emit(SessionTerminated(self, reason, status, by_remote, timestamp=now_utc(),
                                     answered_elsewhere=self._answered_elsewhere))
        self.manager._forget(self)

    # -- history (trace frames, pandas imported on use) -----------------------------------------------------------
    def history(self, frame: str = "messages") -> Any:
        """This session's rows of `platform.trace.messages()` (or frame="events" / "sip": its SIP messages,
        as seen by this endpoint). Same schema as the trace's frames."""
        trace = self.endpoint.platform.trace
        if frame == "sip":
            call_id = self.dialog.call_id if self.dialog is not None else None
            if call_id is None and self._invite_handle is not None:
                call_id = self._invite_handle.txn.request.call_id
            return trace.sip(owner=self.endpoint.uri, call_id=call_id or "\0")
        if frame not in ("messages", "events"):
            raise ValueError(f"frame must be 'messages', 'events' or 'sip', not {frame!r}")
        return getattr(trace, frame)(owner=self.endpoint.uri, session_id=self.id)


def _short(text: str, n: int = 30) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"

