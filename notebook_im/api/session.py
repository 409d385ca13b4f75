"""ImSession: a two-party IM session in session mode (INVITE with m=message, in-dialog MESSAGE, BYE).

UCCAPI's `IUccInstantMessagingSession` + `IUccSession`. The session is a driver: what happens to its INVITE dialog
is decided by the sans-IO `im.session.InviteSession` machine, composing by `im.iscomposing`, receipts by
`im.imdn`; this class feeds them what the user agent reports, carries out their actions through the user agent
(core/agent.py) and emits the API events. Public methods return `Operation`s and may be called from any thread;
everything underscore-prefixed runs on the library loop. In-dialog requests of one session are sent one at a
time, in call order: the receiver checks CSeq order (RFC 3261 §12.2.2), and a chat must not arrive shuffled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from ..core.stack import ClientHandle, ServerHandle
from ..errors import NO_ANSWER, ConferenceRequired, InvalidState, MessageTooLarge, RequestFailed
from ..im import cpim, imdn, ocs
from ..im import iscomposing as ic
from ..im import session as sm
from ..runtime import Operation, runtime
from ..sip.dialog import Dialog
from ..sip.errors import RemoteProtocolError
from ..sip.message import Request, random_hex
from ..sip.reason import completed_elsewhere
from ..sip.sdp import ACCEPT_TYPES as _SDP_ACCEPT_TYPES
from ..sip.uri import SipUri
from . import checks
from .emitter import EventSource
from .events import (
    ComposingChanged,
    IncomingSession,
    MessageDelivered,
    MessageReceived,
    MessageSending,
    ParticipantAdded,
    ParticipantState,
    ParticipantStateChanged,
    SessionModeChanged,
    SessionState,
    SessionStateChanged,
    SessionTerminated,
)
from .messages import (
    DEFAULT_WINDOW,
    MESSAGE_ATTEMPTS,
    REFUSING,
    TEXT_TYPES,
    ChatMessage,
    MessageLog,
    RecentIds,
    check_content_type,
    check_message_ids,
    failure_reason,
    now_utc,
    settle,
    wire_text,
)
from .participant import Participant
from .receipts import NOTIFICATION_CONTENT_TYPE, notification_body

log = logging.getLogger("notebook_im.session")

RING_TIMEOUT = sm.RING_TIMEOUT
ANSWERED_ELSEWHERE = sm.ANSWERED_ELSEWHERE  # SessionTerminated.reason when another device of the user answered
UNANSWERED_LIMIT = sm.UNANSWERED_LIMIT
PAGER_CALLS_KEPT = 10_000  # Call-IDs a pager-mode session remembers for history("sip")

__all__ = ["ANSWERED_ELSEWHERE", "ChatMessage", "ImSession", "TEXT_TYPES"]


class ImSession(EventSource):
    """A peer-to-peer IM session with one remote participant (a conference is a ConferenceSession)."""

    # what we take in a two-party session: text, composing, and receipts (bare or CPIM-wrapped, RFC 5438)
    _accept_types: tuple[str, ...] = _SDP_ACCEPT_TYPES + (cpim.CONTENT_TYPE, imdn.CONTENT_TYPE)
    _receipts = True  # RFC 5438 receipts between the two parties (a conference's focus relays none)
    is_conference = False

    def __init__(
        self, manager: Any, remote_uri: str, *, incoming: bool, display_name: str | None = None, mode: str = "session"
    ) -> None:
        super().__init__()
        self.manager = manager
        self.endpoint = manager.endpoint
        self._parent_source = manager.endpoint
        self.id = random_hex(2 * 4)
        self.is_incoming = incoming
        self.state = SessionState.IDLE
        self.local_participant = Participant(
            self.endpoint.uri, is_local=True, session=self, display_name=self.endpoint.display_name
        )
        self._remote = Participant(remote_uri, display_name=display_name, session=self)
        # the newest Platform(message_window=...) messages as objects; older ones from the history store (if any)
        platform = self.endpoint.platform
        stored = getattr(platform, "history_store", None) is not None
        self.messages = MessageLog(
            getattr(platform, "message_window", DEFAULT_WINDOW), self._stored_messages if stored else None
        )
        self.dialog: Dialog | None = None
        self.terminate_reason: str | None = None
        self._machine = sm.InviteSession(remote_uri, pager_fallback=mode == "auto" and not self.is_conference)
        self._pager_asked = mode == "pager"
        # "pager" once the conversation goes on out of dialog (SessionModeChanged); from the start when asked for,
        # so that whoever hears of the session first (ParticipantAdded) already sees its mode
        self.mode = "pager" if self._pager_asked else "session"
        # pager mode: the Call-IDs of the out-of-dialog MESSAGEs of this conversation (history("sip")), newest kept
        self._pager_calls: deque[str] = deque(maxlen=PAGER_CALLS_KEPT)
        self._invite_handle: ClientHandle | None = None
        self._server_handle: ServerHandle | None = None
        self._incoming_event: IncomingSession | None = None
        self._accepted: asyncio.Future | None = None
        self._lock: asyncio.Lock | None = None
        self._sender = ic.ComposingSender()
        self._receiver = ic.ComposingReceiver()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._refused: set[str] = set()  # content types the peer answered 415/501 to (composing, IMDN)
        self._unread: dict[str, ChatMessage] = {}  # received messages not yet displayed / marked read
        self._seen = RecentIds()
        self.escalated_to: Any = None  # the ConferenceSession this conversation moved to (escalate())
        # an incoming OCS/Lync invitation's Ms-Conversation-ID header (None otherwise), and whether we took the
        # first message its ms-text-format header carried (our 200 then says `Supported: ms-text-format`)
        self.conversation_id: str | None = None
        self._first_message_taken = False

    # -- properties ---------------------------------------------------------------------------------------
    @property
    def participants(self) -> list[Participant]:
        """The remote participants (UCCAPI `Participants` minus the local one)."""
        return [self._remote]

    @property
    def remote(self) -> Participant:
        return self._remote

    @property
    def acked(self) -> bool:
        """Has the session been confirmed by the peer (the ACK for our 200, or our own 2xx to our INVITE)?"""
        return self._machine.phase not in (sm.Phase.IDLE, sm.Phase.RINGING, sm.Phase.ANSWERING)

    @property
    def invitation(self) -> IncomingSession | None:
        """The IncomingSession of an incoming session that is still ringing (None once answered or ended)."""
        if self._incoming_event is None or self._machine.phase is not sm.Phase.RINGING:
            return None
        return self._incoming_event

    @property
    def ua(self) -> Any:
        """The endpoint's user agent (core/agent.py), through which this session sends and receives."""
        return self.endpoint.agent

    @property
    def invited_from(self) -> str | None:
        """The address an incoming invitation came from (None for an outgoing session): the session manager
        bounds incoming sessions per address with it."""
        handle = self._server_handle
        return handle.remote[0] if handle is not None else None

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

    def mark_read(self, message_ids: list[str] | None = None) -> Operation[int]:
        """The user has seen the received messages (all, or those with these ids): their state becomes
        "displayed" and, for each whose sender asked (RFC 5438 `Disposition-Notification: display`), a display
        notification goes back, so the sender's panel shows "Seen". Resolves with the number of messages newly
        marked. A chat panel calls this by itself for the messages it shows while a front end displays it."""
        return runtime().submit(self._mark_read(check_message_ids(message_ids)), "mark_read()")

    def accept(self) -> Operation[ImSession]:
        """Accept an incoming invitation (200 OK with our SDP); resolves with the session once the ACK arrives.
        (UCCAPI `Accept`; `IncomingSession.accept()` is the same.)"""
        return runtime().submit(self._do_accept(), "accept()")

    def reject(self, code: int = 486, reason: str | None = None) -> Operation[None]:
        """Decline an incoming invitation with a SIP status (486 Busy Here by default, 603 Decline, ...)."""
        if not isinstance(code, int) or isinstance(code, bool) or not 300 <= code <= 699:
            raise ValueError(
                f"reject() takes a SIP status code from 300 to 699 (486 Busy Here, 603 Decline), not {code!r}"
            )
        checks.reason_phrase(reason)
        return runtime().submit(self._do_reject(code, reason), f"reject({code})")

    def terminate(self) -> Operation[None]:
        """End the session (BYE; CANCEL while still inviting; 603 for an unanswered invitation)."""
        return runtime().submit(self.aterminate(), "terminate()")

    def add_participant(self, uri: str) -> Any:
        """A peer-to-peer IM session has exactly two parties: this raises ConferenceRequired, naming the call
        that moves the conversation to a conference (`session.escalate([uri])`)."""
        raise ConferenceRequired(
            f"cannot add {uri} to session {self.id}: a peer-to-peer IM session has exactly two parties "
            f"({self.endpoint.uri} and {self._remote.uri}). To chat with three or more, call "
            f"session.escalate([{uri!r}]): it moves this conversation, history included, to a conference on "
            f"your server's conference focus (or start one with endpoint.sessions.create_conference([...]))."
        )

    def escalate(self, uris: list[str] | str) -> Operation[Any]:
        """Move this two-party conversation to a conference (as Lync does when a third person is added):
        creates a conference on the endpoint's server, joins it, invites the other party (with a Replaces
        header naming this dialog, so their client swaps sessions without asking) and `uris`, then ends this
        session. Resolves with the new ConferenceSession, whose `.messages` starts with this session's history."""
        return self.manager.escalate(self, uris)

    def wait_connected(self, timeout: float | None = None) -> Operation[ImSession]:
        """An Operation that resolves with the session once it is connected (raises if it ends first)."""

        async def wait() -> ImSession:
            while self.state in (SessionState.IDLE, SessionState.CONNECTING):
                await asyncio.sleep(0.01)
            if self.state is not SessionState.CONNECTED:
                raise InvalidState(f"session {self.id} ended before it connected: {self.terminate_reason}")
            return self

        return runtime().submit(asyncio.wait_for(wait(), timeout), "wait_connected()")

    # -- carrying out the machine's actions (loop thread) --------------------------------------------------------
    def _run(self, actions: list) -> list[asyncio.Future]:
        """Do what the InviteSession machine says; returns the BYE in flight, if one was started (terminate()
        waits for it). SendInvite is carried out by `_invite`, which asked for it."""
        pending: list[asyncio.Future] = []
        for a in actions:
            if isinstance(a, sm.Progress):
                self._set_state(SessionState(a.state))
            elif isinstance(a, sm.SendRinging):
                assert self._server_handle is not None and self.dialog is not None
                self.ua.ring(self._server_handle, self.dialog.local_tag)
            elif isinstance(a, sm.SendOk):
                assert self._server_handle is not None and self.dialog is not None
                self.ua.accept_invite(
                    self._server_handle,
                    self.dialog,
                    self,
                    accept_types=self._accept_types,
                    acked=lambda: self._machine.phase is not sm.Phase.ANSWERING,
                    headers={"Supported": ocs.SUPPORTED} if self._first_message_taken else None,
                )
            elif isinstance(a, sm.SendFinal):
                handle = self._server_handle
                if handle is not None and not handle.answered:
                    self.ua.reply(handle, a.status, a.reason, tag=self.dialog.local_tag if self.dialog else True)
            elif isinstance(a, sm.SendCancel):
                if self._invite_handle is not None:
                    self.ua.cancel(self._invite_handle)
            elif isinstance(a, sm.SendBye):
                pending.append(asyncio.ensure_future(self._bye_and_finish()))
            elif isinstance(a, sm.StartTimer):
                self._arm(a.name, a.delay, lambda n=a.name: self._timer_fired(n))
            elif isinstance(a, sm.StopTimer):
                self._disarm(a.name)
            elif isinstance(a, sm.Connected):
                self._on_connected()
            elif isinstance(a, sm.PagerMode):
                self._pager_mode(a.status, a.reason)
            elif isinstance(a, sm.PeerLost):
                self._set_participant_state(self._remote, ParticipantState.DISCONNECTED, reason=a.reason)
            elif isinstance(a, sm.Ended):
                self._finish(a.reason, a.status, by_remote=a.by_remote, answered_elsewhere=a.answered_elsewhere)
        return pending

    def start_pager(self) -> None:
        """Begin as a pager-mode conversation (no INVITE): `sessions.create(uri, mode="pager")`, or a text from
        somebody new with `endpoint.pager_sessions` on. Connected at once. The session is in pager mode before it
        is announced, so whoever sees its ParticipantAdded (a chat panel making its conversation) sees that."""
        self.mode = "pager"
        self._emit(ParticipantAdded(self, self._remote, timestamp=now_utc()))
        self._run(
            self._machine.start_pager("a pager-mode message arrived" if self.is_incoming else "pager mode asked for")
        )

    def _pager_mode(self, status: int | None, reason: str) -> None:
        self.mode = "pager"
        self.manager.pager_started(self)
        why = (
            reason
            if status is None
            else f"{self._remote.uri} answered the invitation {status} {reason}: it does not take IM sessions"
        )
        log.info("session %s: %s; texts go as pager-mode MESSAGEs", self.id, why)
        self._emit(SessionModeChanged(self, "pager", status, why, timestamp=now_utc()))

    def _timer_fired(self, name: str) -> None:
        if name == "ring":
            self._run(self._machine.ring_timeout_fired())

    def _on_connected(self) -> None:
        """The session is up: an accept() waiting for the ACK returns (a conference also subscribes)."""
        if self._accepted is not None and not self._accepted.done():
            self._accepted.set_result(None)

    async def _bye_and_finish(self) -> None:
        async with self._get_lock():
            if self.dialog is not None:
                try:
                    await self.ua.send_in_dialog(self.dialog, "BYE")
                except NO_ANSWER:
                    pass
        self._run(self._machine.bye_done())

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

    def _set_participant_state(
        self, p: Participant, state: ParticipantState, emit: bool = True, reason: str = ""
    ) -> None:
        previous = p.state
        if previous is state:
            return
        p.state = state
        if emit:
            self._emit(ParticipantStateChanged(self, p, state, previous, reason, timestamp=now_utc()))

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    # -- outgoing session -------------------------------------------------------------------------------------
    async def aconnect(self) -> ImSession:
        """Invite the other party (the coroutine `sessions.create()` runs); resolves once connected."""
        if self._pager_asked:
            self.start_pager()
            return self
        self._emit(ParticipantAdded(self, self._remote, timestamp=now_utc()))
        self._run(self._machine.start_outgoing())
        resp = await self._send_invite(self._remote.uri, extra=None)
        self._remote_named(resp)
        return self

    async def _send_invite(self, target: str, *, extra: dict[str, str] | None) -> Any:
        """INVITE `target` and feed the outcome to the machine; the 2xx (the dialog set), or RequestFailed /
        TransactionTimeout / InvalidState (terminated meanwhile) raised after the session ended."""

        def keep(h: ClientHandle) -> None:
            self._invite_handle = h

        try:
            dialog, resp = await self.ua.invite(
                SipUri.parse(target), self, on_handle=keep, accept_types=self._accept_types, extra=extra
            )
        except NO_ANSWER as exc:
            self._run(self._machine.invite_unanswered(exc.reason))
            raise
        if dialog is not None:
            self.dialog = dialog
        pending = self._run(self._machine.invite_answered(resp.status, resp.reason))
        if self._machine.pager:
            return resp  # the callee refused a session; the conversation goes on in pager mode
        if dialog is None:
            raise RequestFailed("INVITE", resp.status, resp.reason, target)
        if pending or self._machine.ended:  # terminate() was called while we were inviting
            for f in pending:
                await f
            raise InvalidState(f"session {self.id} was terminated while connecting")
        return resp

    def _remote_named(self, resp: Any) -> None:
        """The callee may name itself in its Contact (or To)."""
        if not self._remote.display_name:
            for addr in resp.contacts[:1] + [resp.to]:
                if addr.display_name:
                    self._remote.display_name = addr.display_name
                    break

    # -- incoming session --------------------------------------------------------------------------------------
    def receive_invitation(self, request: Request, handle: ServerHandle, local_tag: str) -> IncomingSession:
        """The INVITE that makes this new incoming session (the session manager hands it over): ring (180),
        start the ring timer, and emit the IncomingSession event (returned too); then the first message, if an
        OCS client put one in the INVITE."""
        self._server_handle = handle
        handle.on_cancel = self._on_cancelled
        self.dialog = Dialog.from_uas(request, local_tag)
        self.conversation_id = ocs.conversation_id(request.headers.get(ocs.CONVERSATION_HEADER))
        if not self.is_conference:  # a conference's participants come from its roster
            self._emit(ParticipantAdded(self, self._remote, timestamp=now_utc()))
        event = IncomingSession(
            self,
            self._inviter(request),
            subject=request.headers.get("Subject"),
            timestamp=now_utc(),
            conversation_id=self.conversation_id,
        )
        self._incoming_event = event
        self._run(self._machine.start_incoming())
        self._emit(event)
        if not self.is_conference:
            self._first_message_in(request, handle)
        return event

    def _first_message_in(self, request: Request, handle: ServerHandle) -> None:
        """An OCS client's first message, carried in the INVITE's `ms-text-format` header (`im/ocs.py`): a
        MessageReceived now, while the invitation rings (UCCAPI: the invitation carries the first message; Lync
        shows it in the toast), and `Supported: ms-text-format` in our 200, which tells the sender not to send it
        again. One that cannot be read is dropped and counted (`stats["first_messages_dropped"]`, the trace's
        drops) and the invitation goes on as if it had none: refusing the INVITE would lose the conversation for
        one bad header, and the sender, not seeing `Supported: ms-text-format`, sends the text again as a
        MESSAGE."""
        value = request.headers.get(ocs.TEXT_FORMAT_HEADER)
        if value is None:
            return
        try:
            first = ocs.first_message(value)
        except RemoteProtocolError as exc:
            raw = f"{ocs.TEXT_FORMAT_HEADER}: {value}".encode("utf-8", "replace")
            self.ua.dropped_first_message(handle, f"first message dropped ({exc.reason})", raw)
            return
        if first is not None:
            self._first_message_taken = True
            self._deliver_text(request, first.content_type, mode="session", text=first.text)

    def _inviter(self, request: Request) -> Participant:
        return self._remote

    def _on_cancelled(self, cancel: Request) -> None:
        # RFC 3326: a forking proxy stopped this device ringing because another device of ours answered
        self._run(self._machine.cancelled(elsewhere=completed_elsewhere(cancel)))

    @property
    def ringing(self) -> bool:
        """An incoming invitation nobody has answered yet."""
        return self._machine.phase is sm.Phase.RINGING

    async def _do_accept(self) -> ImSession:
        if self._server_handle is None or self.dialog is None:
            raise InvalidState("only an incoming invitation can be accepted")
        if self.state is SessionState.CONNECTED:
            return self
        try:
            actions = self._machine.accept()
        except sm.NotAllowed:
            raise InvalidState(
                f"the invitation from {self._remote.uri} was already answered or ended ({self.state.value})"
            ) from None
        self._accepted = asyncio.get_running_loop().create_future()
        self._run(actions)
        await asyncio.wait_for(asyncio.shield(self._accepted), 64 * self.ua.timers.t1 + 1)
        return self

    async def _do_reject(self, code: int, reason: str | None) -> None:
        if self._server_handle is None or self.dialog is None:
            raise InvalidState("only an incoming invitation can be rejected")
        try:
            actions = self._machine.reject(code, reason)
        except sm.NotAllowed:
            raise InvalidState(f"the invitation from {self._remote.uri} was already answered") from None
        self._run(actions)

    # -- dialog callbacks from the user agent (loop thread) -------------------------------------------------------
    def on_notify(self, request: Request) -> int:
        """A NOTIFY in the session's dialog: the end of a REFER's implicit subscription (RFC 3515). 200."""
        return 200

    def on_ack(self, request: Request) -> None:
        """The ACK for our 200 OK: the session is connected."""
        self._run(self._machine.acked())

    def on_ack_timeout(self) -> None:
        """No ACK came for our 200 OK within 64*T1: the session is ended with a BYE."""
        self._run(self._machine.ack_timed_out())

    def on_bye(self, request: Request) -> None:
        """The other party sent BYE."""
        elsewhere = completed_elsewhere(request) and self.is_incoming  # we answered as another device did
        moved = self.escalated_to.conference_uri if self.escalated_to is not None else None
        self._run(self._machine.bye_received(elsewhere=elsewhere, moved_to=moved))

    def on_pager_request(self, request: Request) -> int:
        """An out-of-dialog MESSAGE from the other party of this pager-mode session (the endpoint hands it
        over): text, composing or a receipt, as in a dialog. Returns the status to answer."""
        self._pager_calls.append(request.call_id)
        return self._message_in(request)

    def on_dialog_request(self, request: Request) -> int:
        """An in-dialog MESSAGE (text, a composing indication or a receipt) or INFO (an OCS client's typing).
        Returns the status to answer."""
        self._run(self._machine.acked())  # a request that overtook the ACK: the caller evidently got our 200
        self._machine.unanswered = 0  # the other party is evidently there
        if request.method == "INFO":
            return self._info_in(request)
        return self._message_in(request)

    def _info_in(self, request: Request) -> int:
        """An in-dialog INFO. An OCS/Lync `application/xml` KeyboardActivity document is typing: it goes to the
        same RFC 3994 receiver as is-composing (`im/ocs.py` says why its window is 6 s), so ComposingChanged,
        expiry and "a message clears it" behave alike. An XML body the hardened parser refuses gets its status
        (400; 413 too large; 415 an encoding not taken), as an is-composing one does. Every other INFO (another
        body, another document, a conference's) is answered 200 and changes nothing, as before."""
        if (request.content_type or "") != ocs.KEYBOARD_CONTENT_TYPE or self.is_conference:
            return 200
        try:
            indication = ocs.parse_keyboard_activity(request.body)
        except RemoteProtocolError as exc:
            return exc.status_code
        if indication is not None:
            self._run_receiver(self._receiver.indication(indication, time.monotonic()))
        return 200

    def _message_in(self, request: Request) -> int:
        ct = request.content_type or "text/plain"
        if ct == ic.CONTENT_TYPE:
            return self._indication_in(request.body)
        if ct.startswith("text/"):
            self._deliver_text(request, ct, mode=self.mode)
            return 200
        if ct in (imdn.CONTENT_TYPE, cpim.CONTENT_TYPE):
            return self._on_wrapped(request, ct)
        return 415

    def _indication_in(self, body: bytes) -> int:
        try:
            indication = ic.parse(body)
        except RemoteProtocolError:
            return 400
        self._run_receiver(self._receiver.indication(indication, time.monotonic()))
        return 200

    def _on_wrapped(self, request: Request, ct: str) -> int:
        """A receipt (message/imdn+xml, bare or in CPIM), or a text or composing indication in a CPIM wrapper
        (linphone's way). The CPIM From is not trusted to name anybody: in a two-party session it is the other
        party. In pager mode a receipt is checked as any out-of-dialog one (its notifier must be the recipient)."""
        in_dialog = self if self.mode == "session" else None
        status, wrapped = self.endpoint.receipts.open(ct, request.body, self._remote, now_utc(), session=in_dialog)
        if wrapped is None:
            return status
        if wrapped.content_type == ic.CONTENT_TYPE:
            return self._indication_in(wrapped.body)
        self._deliver_text(
            request,
            wrapped.content_type,
            mode=self.mode,
            text=wrapped.body.decode("utf-8", "replace"),
            message_id=wrapped.message_id,
            wrapper=wrapped,
        )
        return status

    def _deliver_text(
        self,
        request: Request,
        ct: str,
        *,
        mode: str,
        participant: Participant | None = None,
        text: str | None = None,
        message_id: str | None = None,
        wrapper: cpim.Cpim | None = None,
    ) -> None:
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
        self.messages.append(msg, self.endpoint.platform.trace.enabled)  # (paused: not in the history store)
        unread = self._unread
        unread[msg.id] = msg
        if len(unread) > self.messages.window:  # bounded like the window: the oldest unread is not marked read
            del unread[next(iter(unread))]
        self._receiver_message(sender)
        self._emit(
            MessageReceived(
                self, sender, text, ct, msg_id, mode, self.endpoint.uri, timestamp=ts, call_id=request.call_id
            )
        )
        if wanted is not None and wanted.delivery and self._may_notify():
            asyncio.ensure_future(self._notify(msg, imdn.DELIVERY, "delivered"))

    def _receiver_message(self, sender: Participant) -> None:
        """A text from `sender` clears their composing state (RFC 3994 §4)."""
        self._run_receiver(self._receiver.message_received(time.monotonic()))

    # -- composing (loop thread) -------------------------------------------------------------------------------------
    def _run_receiver(self, actions: list) -> None:
        for a in actions:
            if isinstance(a, ic.StartTimer):
                self._arm(
                    "rx_" + a.name,
                    a.delay,
                    lambda n=a.name: self._run_receiver(self._receiver.timer(n, time.monotonic())),
                )
            elif isinstance(a, ic.StopTimer):
                self._disarm("rx_" + a.name)
            elif isinstance(a, ic.Changed):
                self._remote.composing = a.composing
                self._emit(ComposingChanged(self, self._remote, a.composing, timestamp=now_utc()))

    def _run_sender(self, actions: list) -> list[asyncio.Future]:
        sends: list[asyncio.Future] = []
        for a in actions:
            if isinstance(a, ic.StartTimer):
                self._arm(
                    "tx_" + a.name, a.delay, lambda n=a.name: self._run_sender(self._sender.timer(n, time.monotonic()))
                )
            elif isinstance(a, ic.StopTimer):
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
        if (
            kind in self._refused
            or self.state is not SessionState.CONNECTED
            or (self.dialog is None and self.mode != "pager")
        ):
            return False
        async with self._get_lock():
            if kind in self._refused or self.state is not SessionState.CONNECTED:
                return False
            try:
                if self.mode == "pager":
                    call_id = self.endpoint.new_call_id()
                    self._pager_calls.append(call_id)
                    resp = await self.ua.send_message(
                        SipUri.parse(self._remote.uri), body, content_type, call_id=call_id
                    )
                else:
                    assert self.dialog is not None
                    resp = await self.ua.send_in_dialog(self.dialog, "MESSAGE", body=body, content_type=content_type)
            except NO_ANSWER as exc:  # silence, or the transport failed
                self._run(self._machine.unanswered_request(exc.method, exc.status, exc.reason))
                return False
            if resp.status in REFUSING:
                self._refused.add(kind)
                log.info(
                    "session %s: %s answered %s %s to %s; not sending those any more",
                    self.id,
                    self._remote.uri,
                    resp.status,
                    resp.reason,
                    kind,
                )
            self._run(self._machine.answered("MESSAGE", resp.status, resp.reason))
            return 200 <= resp.status < 300

    # -- receipts (loop thread) ---------------------------------------------------------------------------------------
    def _may_notify(self) -> bool:
        return (
            self._receipts
            and self.endpoint.send_receipts
            and imdn.CONTENT_TYPE not in self._refused
            and self.state is SessionState.CONNECTED
        )

    async def _notify(self, msg: ChatMessage, kind: str, status: str) -> None:
        """Send one notification about the received message `msg` (CPIM-wrapped, in the dialog)."""
        body = notification_body(
            msg.id, msg.imdn_datetime, kind, status, self.endpoint.uri, self._remote.uri, now_utc()
        )
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
        self.require_connected("start composing")
        for f in self._run_sender(self._sender.keystroke(time.monotonic())):
            await f

    async def _stop_composing(self) -> None:
        self.require_connected("stop composing")
        for f in self._run_sender(self._sender.stop(time.monotonic())):
            await f

    def _arm(self, name: str, delay: float, fn: Any) -> None:
        self._disarm(name)
        self._timers[name] = asyncio.get_running_loop().call_later(delay, fn)

    def _disarm(self, name: str) -> None:
        t = self._timers.pop(name, None)
        if t is not None:
            t.cancel()

    # -- sending text ------------------------------------------------------------------------------------------------
    def require_connected(self, what: str) -> None:
        """Raise InvalidState (saying what to do instead) unless the session is connected."""
        if self.state is not SessionState.CONNECTED or (self.dialog is None and self.mode != "pager"):
            hint = (
                "await the session (or incoming.accept()) first"
                if self.state in (SessionState.IDLE, SessionState.CONNECTING)
                else "create a new session with endpoint.sessions.create(uri)"
            )
            raise InvalidState(f"cannot {what}: session {self.id} is {self.state.value}; {hint}")

    async def _send_text(self, text: str, ct: str) -> MessageDelivered:
        self.require_connected("send")
        msg = ChatMessage(
            random_hex(2 * 6), "out", self.endpoint.uri, self._remote.uri, text, ct, now_utc(), "sending", self.mode
        )
        self.messages.append(msg, self.endpoint.platform.trace.enabled)
        if self.mode == "pager":
            return await self._send_pager_text(msg)
        extra = {"Imdn-Message-ID": msg.id}
        if self._receipts and self.endpoint.request_receipts:
            extra = imdn.request_headers(msg.id, msg.timestamp)
            msg.requested = imdn.REQUESTED_SET
            self.endpoint.receipts.track(msg, self, self._emit)
        call_id = self.dialog.call_id if self.dialog is not None else ""
        self._emit(
            MessageSending(self, msg.id, text, ct, "session", msg.recipient, timestamp=msg.timestamp, call_id=call_id)
        )
        self._run_sender(self._sender.message_sent(time.monotonic()))
        started = time.perf_counter()
        body = wire_text(text)
        news: list = []  # what the attempts taught the session machine, acted on once the message is settled
        async with self._get_lock():
            status, reason = 481, f"session {self.state.value} before the message was sent"
            for _attempt in range(MESSAGE_ATTEMPTS):
                if self.state is not SessionState.CONNECTED or self.dialog is None:
                    break
                try:
                    resp = await self.ua.send_in_dialog(
                        self.dialog, "MESSAGE", body=body, content_type=f"{ct};charset=UTF-8", extra=extra
                    )
                except MessageTooLarge as exc:  # not the peer's fault, and a retry cannot help
                    status, reason = exc.status, exc.reason
                    break
                except NO_ANSWER as exc:  # retried in a new transaction; the receiver drops a duplicate by id
                    status, reason = exc.status, exc.reason
                    news += self._machine.unanswered_request("MESSAGE", exc.status, exc.reason)
                    continue
                status, reason = resp.status, resp.reason
                news += self._machine.answered("MESSAGE", status, reason)
                break
        event = settle(
            msg, self, status, failure_reason(status, reason, len(body)), time.perf_counter() - started, call_id
        )
        self._emit(event)
        self._run(news)
        if isinstance(event, MessageDelivered):
            return event
        raise RequestFailed("MESSAGE", status, event.reason, self._remote.uri)

    async def _send_pager_text(self, msg: ChatMessage) -> MessageDelivered:
        """A text of a pager-mode session: one out-of-dialog MESSAGE (the endpoint's pager sending), in call
        order with this session's other MESSAGEs. A failure fails the message, not the conversation."""
        self._run_sender(self._sender.message_sent(time.monotonic()))
        call_id = self.endpoint.new_call_id()
        self._pager_calls.append(call_id)
        async with self._get_lock():
            event = await self.endpoint.asend_pager(SipUri.parse(self._remote.uri), msg, self, self._emit, call_id)
        if isinstance(event, MessageDelivered):
            return event
        raise RequestFailed("MESSAGE", event.status, event.reason, self._remote.uri)

    # -- escalation (the session manager creates the conference: manager.escalate) --------------------------------
    def replaces_header(self) -> str:
        """The Replaces value (RFC 3891) naming this session's dialog, for the conference it moves to."""
        assert self.dialog is not None
        d = self.dialog
        return f"{d.call_id};to-tag={d.remote_tag};from-tag={d.local_tag}"

    async def amove_to(self, conf: Any) -> None:
        """This conversation moved to the conference session `conf` (RFC 3891 Replaces): end the two-party
        dialog, saying so."""
        self.escalated_to = conf
        await self.aterminate()

    # -- ending ----------------------------------------------------------------------------------------------------------
    async def aterminate(self) -> None:
        """`terminate()` for code on the library's loop."""
        reason = "local party ended the session"
        if self.escalated_to is not None:
            reason = f"moved to conference {self.escalated_to.conference_uri}"
        for f in self._run(self._machine.terminate(reason=reason)):
            await f

    def abandon(self, reason: str) -> None:
        """End the session at once without telling the other party (the endpoint's sockets are gone)."""
        self._finish(reason, None)

    def _finish(
        self, reason: str, status: int | None, *, by_remote: bool = False, answered_elsewhere: bool = False
    ) -> None:
        """The session is over (the machine said so): timers, composing and the dialog go; SessionTerminated."""
        if self.state is SessionState.DISCONNECTED:
            return
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
        self._emit(
            SessionTerminated(
                self, reason, status, by_remote, timestamp=now_utc(), answered_elsewhere=answered_elsewhere
            )
        )
        self.manager.forget(self)

    # -- history (trace frames, pandas imported on use) -----------------------------------------------------------
    def _stored_messages(self) -> list[ChatMessage]:
        """This session's messages rebuilt from the history store (what `messages` reads past its window)."""
        return self.endpoint.platform.trace.chat_messages(owner=self.endpoint.uri, session_id=self.id, full=True)

    def history(self, frame: str = "messages") -> Any:
        """This session's rows of `platform.trace.messages()` (or frame="events" / "sip": its SIP messages,
        as seen by this endpoint; in pager mode the out-of-dialog MESSAGEs of the conversation). Same schema as
        the trace's frames."""
        trace = self.endpoint.platform.trace
        if frame == "sip" and self.mode == "pager":  # no dialog: the out-of-dialog MESSAGEs of this conversation
            sip = trace.sip(owner=self.endpoint.uri)
            return sip[sip["call_id"].isin(set(self._pager_calls))].reset_index(drop=True)
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
