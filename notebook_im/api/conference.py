"""ConferenceSession: IM with three or more participants through a conference focus (RFC 4353/4579/4575).

The session's dialog is with the focus (the conference URI); every MESSAGE goes to the focus, which relays
it to the others inside a `message/cpim` wrapper naming the original sender, so `MessageReceived.participant`
is the person who wrote it. The roster comes from a subscription to the conference event package
(`Event: conference`, `application/conference-info+xml`), merged by `im.conference_info.RosterView`:
joins, status changes and departures become `ParticipantAdded`, `ParticipantStateChanged` and
`ParticipantRemoved`. Invitations are in-dialog REFERs to the focus (RFC 4579 §5.5) that dials out.

    conf = await alice.sessions.create_conference(["sip:bob@example.test", "sip:carol@example.test"])
    conf.participants            # the roster (remote participants)
    await conf.send("hi all")
    await conf.invite("sip:dave@example.test")   # resolves with dave's Participant once he has joined
    two = await alice.sessions.create("sip:bob@example.test")
    conf = await two.escalate(["sip:carol@example.test"])   # conf.messages starts with two.messages
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from ..errors import NO_ANSWER, InvalidState, RequestFailed
from ..im import conference_info as ci
from ..im import cpim
from ..im import iscomposing as ic
from ..im import roster as rs
from ..im import session as sm
from ..runtime import Operation, runtime
from ..sip.errors import RemoteProtocolError
from ..sip.message import Request
from ..sip.sdp import ACCEPT_TYPES
from ..sip.uri import Address, SipUri
from . import checks
from .events import (
    ComposingChanged,
    ParticipantAdded,
    ParticipantRemoved,
    ParticipantState,
    SessionState,
)
from .messages import ChatMessage, MessageLog, now_utc
from .participant import Participant
from .session import ImSession

log = logging.getLogger("notebook_im.conference")

FACTORY_USER = "conference-factory"
CONFERENCE_ACCEPT_TYPES = ACCEPT_TYPES + (cpim.CONTENT_TYPE,)
SUBSCRIBE_EXPIRES = rs.EXPIRES
INVITE_TIMEOUT = 150.0  # the invitee's client rings for 120 s, the focus cancels after 130 s

_STATUS_TO_STATE = {
    "connected": ParticipantState.CONNECTED,
    "on-hold": ParticipantState.CONNECTED,
    "muted-via-focus": ParticipantState.CONNECTED,
    "pending": ParticipantState.CONNECTING,
    "dialing-out": ParticipantState.CONNECTING,
    "dialing-in": ParticipantState.CONNECTING,
    "alerting": ParticipantState.CONNECTING,
    "disconnecting": ParticipantState.DISCONNECTING,
    "disconnected": ParticipantState.DISCONNECTED,
}


def entity_of(uri: SipUri | str) -> str:
    """A participant's identity in a conference roster: scheme, user, host, port; no parameters."""
    u = SipUri.parse(uri) if isinstance(uri, str) else uri
    return str(SipUri(host=u.host, user=u.user, port=u.port, scheme=u.scheme))


def check_uris(uris: Iterable[str] | str) -> list[str]:
    if isinstance(uris, str):
        uris = [uris]
    out = list(uris)
    for u in out:
        checks.sip_uri(u, "each participant URI")
    return out


def _status_of(reason: str | None, default: int = 480) -> tuple[int, str]:
    if reason:
        code, _, phrase = reason.partition(" ")
        if code.isdigit():
            return int(code), phrase or "failed"
    return default, reason or "the invitee did not join"


class _RosterDialog:
    """The subscription dialog of a conference session, as the user agent sees it (where it routes the NOTIFYs);
    what they mean is the session's `im.roster.RosterSubscription`'s business."""

    def __init__(self, notified: Any) -> None:
        self.notified = notified  # notified(info, terminated=...): the session's roster machine hears it
        self.dialog: Any = None
        self.remote_seq: int | None = None  # CSeq of NOTIFYs that came before the 200 to our SUBSCRIBE

    def on_notify(self, request: Request) -> int:
        if self.dialog is None:
            seq = request.cseq.number
            if self.remote_seq is not None and seq <= self.remote_seq:
                return 500
            self.remote_seq = seq
        event = (request.headers.get("Event") or "").split(";")[0].strip().lower()
        if event != ci.EVENT:
            return 489
        info = None
        if request.body:
            try:
                info = ci.parse(request.body)
            except RemoteProtocolError:
                return 400
        state = (request.headers.get("Subscription-State") or "").split(";")[0].strip().lower()
        self.notified(info, terminated=state == "terminated")
        return 200

    def on_dialog_request(self, request: Request) -> int:
        """Requests in a roster subscription dialog other than NOTIFY are not allowed (405)."""
        return 405

    def on_ack(self, request: Request) -> None:
        pass

    def on_ack_timeout(self) -> None:
        pass

    def on_bye(self, request: Request) -> None:
        pass


class ConferenceSession(ImSession):
    """An IM session with a conference focus: `participants` is the roster, messages go to everyone.

    Extra over ImSession: `conference_uri`, `invite(uri)` (also `add_participant(uri)`), `failed_invitations`,
    `escalated_from` (the two-party session this one continues, whose history starts `.messages`).
    It drives two machines: the INVITE dialog with the focus (`im.session`, as every session) and the roster
    subscription (`im.roster`).
    """

    _accept_types = CONFERENCE_ACCEPT_TYPES
    _receipts = False  # RFC 5438 receipts through the focus are not implemented: the focus relays none
    is_conference = True

    def __init__(
        self,
        manager: Any,
        conference_uri: str | None,
        *,
        incoming: bool,
        history: list | None = None,
        escalated_from: ImSession | None = None,
        subject: str | None = None,
    ) -> None:
        focus_uri = conference_uri or _factory_uri(manager.endpoint)
        super().__init__(manager, focus_uri, incoming=incoming, display_name="Conference")
        self._machine = sm.InviteSession(focus_uri, no_answer="no answer from the conference focus")
        self.subject = subject
        self.conference_uri: str | None = conference_uri
        self._target_uri = focus_uri
        self._roster: dict[str, Participant] = {}
        self._receivers: dict[str, ic.ComposingReceiver] = {}
        self._subscription = rs.RosterSubscription(SUBSCRIBE_EXPIRES)
        self._roster_dialog: _RosterDialog | None = None
        self._waiters: dict[str, asyncio.Future] = {}
        self.failed_invitations: dict[str, str] = {}  # create_conference/escalate: uri -> "486 Busy Here"
        self._failures: dict[str, BaseException] = {}
        self.escalated_from = escalated_from
        self.replaces: Any = None  # incoming: the two-party session this invitation replaces
        self._local_entity = entity_of(self.endpoint.uri)
        # the conversation this one continues: its messages (the newest window of them) start `messages`
        self._seed: list[ChatMessage] = []
        self._seed_log: Any = history
        if history:
            self._seed = history.recent() if isinstance(history, MessageLog) else list(history)
            self.messages.extend(self._seed)

    def _stored_messages(self) -> list[ChatMessage]:
        """The continued conversation's messages this session started with, then its own from the store."""
        seed = list(self._seed_log)[-len(self._seed) :] if self._seed else []
        return seed + super()._stored_messages()

    # -- properties ---------------------------------------------------------------------------------------
    @property
    def participants(self) -> list[Participant]:
        """The roster: every other participant, in the order they joined (the local one is `local_participant`)."""
        return list(self._roster.values())

    @property
    def focus(self) -> Participant:
        """The conference focus as a participant (its URI is the conference URI)."""
        return self._remote

    def __repr__(self) -> str:
        names = ", ".join(p.name for p in self._roster.values())
        return (
            f"<ConferenceSession {self.id} {self.conference_uri or self._target_uri} {self.state.value}, "
            f"{len(self._roster)} others ({names}), {len(self.messages)} messages>"
        )

    @property
    def roster_dialog(self) -> Any:
        """The SIP dialog of the roster subscription (None until the focus answered the SUBSCRIBE)."""
        holder = self._roster_dialog
        return holder.dialog if holder is not None else None

    def invitation_failure(self, uri: str) -> BaseException | None:
        """Why inviting `uri` failed while the conference was being created (None if they joined)."""
        return self._failures.get(uri)

    # -- public API ------------------------------------------------------------------------------------------
    def invite(self, uri: str) -> Operation[Participant]:
        """Invite `uri` to this conference (REFER to the focus, which sends the INVITE). Resolves with their
        Participant once they have joined; raises RequestFailed with the status if they decline or cannot
        be reached."""
        check_uris([uri])
        return runtime().submit(self._invite_one(uri, None), f"invite({uri!r})")

    def add_participant(self, uri: str) -> Operation[Participant]:  # type: ignore[override]
        """UCCAPI `AddParticipant` on a conference: the same as `invite(uri)`."""
        return self.invite(uri)

    def escalate(self, uris: Any) -> Operation[Any]:
        """Escalating a conference is a no-op error: it already is one (see ImSession.escalate)."""
        raise InvalidState("this session is already a conference: use session.invite(uri)")

    # -- creating / joining (loop thread) ---------------------------------------------------------------------
    async def aconnect(self) -> ConferenceSession:
        """Join: INVITE the factory (creates a conference) or a conference URI, then subscribe to the roster."""
        self._run(self._machine.start_outgoing())
        extra = {"Subject": self.subject} if self.subject and not self.is_incoming else None
        resp = await self._send_invite(self._target_uri, extra=extra)
        self.conference_uri = entity_of(resp.contacts[0].uri) if resp.contacts else entity_of(self._target_uri)
        self._remote.uri = self.conference_uri
        await self._subscribe()
        return self

    async def acreate(self, invitees: list[tuple[str, str | None]]) -> ConferenceSession:
        """Create (or join), then invite everyone (each with an optional Replaces); waits until each invitee has
        joined or failed (the coroutine `create_conference` and `escalate` run)."""
        await self.aconnect()
        results = await asyncio.gather(*(self._invite_one(u, r) for u, r in invitees), return_exceptions=True)
        for (uri, _r), res in zip(invitees, results):
            if isinstance(res, BaseException):
                self._failures[uri] = res
                self.failed_invitations[uri] = (
                    f"{res.status} {res.reason}" if isinstance(res, RequestFailed) else str(res) or type(res).__name__
                )
                log.info("conference %s: inviting %s failed: %s", self.conference_uri, uri, res)
        return self

    async def _invite_one(self, uri: str, replaces: str | None) -> Participant:
        self.require_connected("invite")
        assert self.dialog is not None
        entity = entity_of(uri)
        known = self._roster.get(entity)
        if known is not None and known.state is ParticipantState.CONNECTED:
            return known
        loop = asyncio.get_running_loop()
        fut = self._waiters.get(entity)
        if fut is None or fut.done():
            fut = loop.create_future()
            self._waiters[entity] = fut
        target = SipUri.parse(uri)
        if replaces:
            from urllib.parse import quote

            target = SipUri(
                host=target.host,
                user=target.user,
                port=target.port,
                scheme=target.scheme,
                params=target.params,
                headers="Replaces=" + quote(replaces, safe=""),
            )
        extra = {
            "Refer-To": f"<{target}>",
            "Refer-Sub": "false",
            "Referred-By": str(Address(SipUri.parse(self.endpoint.uri), self.endpoint.display_name)),
        }
        async with self._get_lock():
            resp = await self.ua.send_in_dialog(self.dialog, "REFER", extra=extra)
        if resp.status >= 300:
            self._waiters.pop(entity, None)
            raise RequestFailed("REFER", resp.status, resp.reason, uri)
        if self._roster_dialog is None:  # no roster to tell us when they join: the focus took it, that is all
            self._waiters.pop(entity, None)
            return self._participant_for(entity, None)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), INVITE_TIMEOUT)
        except asyncio.TimeoutError:
            raise RequestFailed("INVITE", 408, "Request Timeout (the invitee did not join)", uri) from None
        finally:
            if self._waiters.get(entity) is fut:
                del self._waiters[entity]

    # -- incoming invitation ---------------------------------------------------------------------------------
    def _inviter(self, request: Request) -> Participant:
        rb = request.headers.get("Referred-By")
        if rb:
            try:
                addr = Address.parse(rb)
                return Participant(entity_of(addr.uri), display_name=addr.display_name, session=self)
            except Exception:  # noqa: BLE001 - a bad Referred-By: the focus is the inviter then
                pass
        return self._remote

    def _on_connected(self) -> None:
        super()._on_connected()
        if self.is_incoming and self._subscription.state is rs.SubState.IDLE:
            asyncio.ensure_future(self._after_join())

    async def _after_join(self) -> None:
        await self._subscribe()
        old = self.replaces
        if old is not None and old.state is SessionState.CONNECTED:
            await old.amove_to(self)  # RFC 3891: the replaced dialog ends once the new one is up

    # -- roster subscription (the im.roster machine decides) -----------------------------------------------------
    async def _subscribe(self) -> None:
        if self.conference_uri is None:
            return
        await self._run_roster(self._subscription.start())

    async def _run_roster(self, actions: list) -> None:
        for a in actions:
            if isinstance(a, rs.Subscribe):
                await self._send_subscribe(a.expires)
            elif isinstance(a, rs.Refresh):
                asyncio.ensure_future(self._send_refresh(a.expires))
            elif isinstance(a, rs.StartTimer):
                self._arm(
                    "roster", a.delay, lambda: asyncio.ensure_future(self._run_roster(self._subscription.timer()))
                )
            elif isinstance(a, rs.StopTimer):
                self._disarm("roster")
            elif isinstance(a, rs.Changes):
                self._apply_roster(a.changes, a.subject)
            elif isinstance(a, rs.Ended):
                log.info("conference %s: roster subscription ended (%s)", self.conference_uri, a.reason)
                dialog, self._roster_dialog = self._roster_dialog, None
                if dialog is not None and dialog.dialog is not None:
                    self.ua.forget_dialog(dialog.dialog)

    async def _send_subscribe(self, expires: int) -> None:
        assert self.conference_uri is not None
        holder = _RosterDialog(self._roster_notified)
        self._roster_dialog = holder
        try:
            dialog, resp = await self.ua.subscribe(
                SipUri.parse(self.conference_uri), ci.EVENT, holder, expires=expires, accept=ci.CONTENT_TYPE
            )
        except NO_ANSWER as exc:
            await self._run_roster(self._subscription.unanswered(exc.reason))
            return
        holder.dialog = dialog
        if dialog is not None and self.state is not SessionState.CONNECTED:
            self.ua.forget_dialog(dialog)
            await self._run_roster(self._subscription.stop())
            return
        await self._run_roster(self._subscription.answered(resp.status, resp.reason, granted=resp.expires))

    async def _send_refresh(self, expires: int) -> None:
        holder = self._roster_dialog
        if holder is None or holder.dialog is None or self.state is not SessionState.CONNECTED:
            return
        try:
            resp = await self.ua.send_in_dialog(
                holder.dialog,
                "SUBSCRIBE",
                extra={"Event": ci.EVENT, "Expires": str(expires), "Accept": ci.CONTENT_TYPE},
            )
        except NO_ANSWER:
            return
        await self._run_roster(self._subscription.answered(resp.status, resp.reason, granted=resp.expires))

    def _roster_notified(self, info: ci.ConferenceInfo | None, *, terminated: bool) -> None:
        asyncio.ensure_future(self._run_roster(self._subscription.notified(info, terminated=terminated)))

    def _apply_roster(self, changes: tuple, subject: str | None) -> None:
        for change in changes:
            u = change.user
            if u.entity == self._local_entity:
                continue
            if isinstance(change, ci.Left):
                self._remove(u)
            else:
                state = _STATUS_TO_STATE.get(u.status, ParticipantState.CONNECTED)
                p = self._participant_for(u.entity, u.display_text, state)
                if u.display_text and not p.display_name:
                    p.display_name = u.display_text
                self._set_participant_state(p, state)
                if state is ParticipantState.CONNECTED:
                    fut = self._waiters.get(u.entity)
                    if fut is not None and not fut.done():
                        fut.set_result(p)
        if subject:
            self.subject = subject
        self._update_title()

    def _participant_for(
        self, entity: str, display_name: str | None, state: ParticipantState = ParticipantState.CONNECTED
    ) -> Participant:
        p = self._roster.get(entity)
        if p is None:
            p = Participant(entity, display_name=display_name, session=self)
            self._roster[entity] = p
            self._receivers[entity] = ic.ComposingReceiver()
            self._emit(ParticipantAdded(self, p, timestamp=now_utc()))
            self._set_participant_state(p, state)
            self._update_title()
        return p

    def _remove(self, u: ci.UserInfo) -> None:
        p = self._roster.pop(u.entity, None)
        fut = self._waiters.get(u.entity)
        ep = u.endpoints[0] if u.endpoints else None
        reason = ep.disconnection_reason if ep else None
        if fut is not None and not fut.done():
            status, phrase = _status_of(reason, 486 if ep is not None and ep.disconnection_method == "busy" else 480)
            fut.set_exception(RequestFailed("INVITE", status, phrase, u.entity))
        self._receivers.pop(u.entity, None)
        for name in [n for n in self._timers if n.startswith(f"rx_{u.entity} ")]:
            self._disarm(name)
        if p is None:
            return
        if p.composing:
            p.composing = False
            self._emit(ComposingChanged(self, p, False, timestamp=now_utc()))
        self._set_participant_state(p, ParticipantState.DISCONNECTED)
        self._emit(ParticipantRemoved(self, p, timestamp=now_utc()))
        self._update_title()

    def _update_title(self) -> None:
        names = [p.name for p in self._roster.values()]
        self._remote.display_name = ("Conference: " + ", ".join(names)) if names else "Conference"

    # -- receiving (loop thread) -------------------------------------------------------------------------------
    def _message_in(self, request: Request) -> int:
        """An in-dialog MESSAGE from the focus: the author in its message/cpim wrapper; text or composing."""
        ct = (request.content_type or "text/plain").lower()
        sender: Participant | None = None
        body = request.body
        msg_id = request.headers.get("Imdn-Message-ID")
        if ct == cpim.CONTENT_TYPE:
            try:
                wrapped = cpim.unwrap(request.body)
                sender_entity = entity_of(wrapped.sender)
            except (RemoteProtocolError, ValueError):
                return 400
            if sender_entity == self._local_entity:
                return 200  # our own message echoed back by a focus that does not filter: shown once already
            sender = self._participant_for(sender_entity, wrapped.display_name)
            if wrapped.display_name and not sender.display_name:
                sender.display_name = wrapped.display_name
            body = wrapped.body
            msg_id = wrapped.message_id or msg_id
            ct = wrapped.content_type.split(";")[0].strip().lower()
        if ct == ic.CONTENT_TYPE:
            try:
                indication = ic.parse(body)
            except RemoteProtocolError:
                return 400
            if sender is not None:
                self._run_conf_receiver(sender, self._receivers[sender.uri].indication(indication, time.monotonic()))
            else:
                self._run_receiver(self._receiver.indication(indication, time.monotonic()))
            return 200
        if ct.startswith("text/"):
            text = body.decode("utf-8", "replace")
            self._deliver_text(request, ct, mode="session", participant=sender, text=text, message_id=msg_id)
            return 200
        return 415

    def _receiver_message(self, sender: Participant) -> None:
        receiver = self._receivers.get(sender.uri)
        if receiver is not None:
            self._run_conf_receiver(sender, receiver.message_received(time.monotonic()))
        else:
            super()._receiver_message(sender)

    def _run_conf_receiver(self, p: Participant, actions: list) -> None:
        for a in actions:
            name = f"rx_{p.uri} {getattr(a, 'name', '')}"
            if isinstance(a, ic.StartTimer):
                self._arm(name, a.delay, lambda p=p, n=a.name: self._conf_timer(p, n))
            elif isinstance(a, ic.StopTimer):
                self._disarm(name)
            elif isinstance(a, ic.Changed):
                p.composing = a.composing
                self._emit(ComposingChanged(self, p, a.composing, timestamp=now_utc()))

    def _conf_timer(self, p: Participant, name: str) -> None:
        receiver = self._receivers.get(p.uri)
        if receiver is not None:
            self._run_conf_receiver(p, receiver.timer(name, time.monotonic()))

    # -- ending -------------------------------------------------------------------------------------------------
    def _finish(
        self, reason: str, status: int | None, *, by_remote: bool = False, answered_elsewhere: bool = False
    ) -> None:
        if self.state is SessionState.DISCONNECTED:
            return
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(InvalidState(f"the conference session ended: {reason}"))
        self._waiters.clear()
        self._subscription.stop()
        dialog, self._roster_dialog = self._roster_dialog, None
        if dialog is not None and dialog.dialog is not None:
            self.ua.forget_dialog(dialog.dialog)
        for p in self._roster.values():
            if p.composing:
                p.composing = False
                self._emit(ComposingChanged(self, p, False, timestamp=now_utc()))
        super()._finish(reason, status, by_remote=by_remote, answered_elsewhere=answered_elsewhere)


def _factory_uri(endpoint: Any) -> str:
    if endpoint.server is None:
        raise InvalidState(
            f"endpoint {endpoint.uri} has no server: conferences need the server's conference focus "
            "(or pass the conference URI to endpoint.sessions.join(uri))"
        )
    server = SipUri.parse(endpoint.server)
    return str(SipUri(host=server.host, user=FACTORY_USER, port=server.port, scheme=server.scheme))
