"""SessionManager: creates sessions and announces incoming ones (UCCAPI `IUccSessionManager`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.stack import ServerHandle
from ..errors import InvalidState
from ..runtime import Operation, runtime
from ..sip.message import Request, new_tag
from ..sip.uri import Address, SipUri
from . import checks
from .emitter import Subscription
from .events import IncomingSession
from .receipts import party_key
from .session import ImSession
from .states import SessionState

MODES = ("auto", "session", "pager")  # sessions.create(mode=...)


def parse_remote_uri(uri: Any, what: str = "remote_uri") -> SipUri:
    """Validate a user-supplied SIP URI with a message that says what a good one looks like (checks.sip_uri)."""
    return checks.sip_uri(uri, what)


class SessionManager:
    """`endpoint.sessions`: `create(uri)`, `on_incoming(cb)`, and the list of live `sessions`."""

    def __init__(self, endpoint: Any) -> None:  # the Endpoint it belongs to (built on this class)
        self.endpoint = endpoint
        self._sessions: list[ImSession] = []
        self.max_incoming_per_source = 1000  # live incoming sessions (dialogs) per source address; 503 beyond
        self._max_pager_sessions = 1000  # live incoming pager-mode sessions (endpoint.pager_sessions)
        # live two-party pager-mode sessions by party (receipts.party_key), oldest first: every out-of-dialog
        # MESSAGE looks its sender up here (a scan of every session cost 0.31 ms a message with 1,000 of them)
        self._pager: dict[str, list[ImSession]] = {}
        self._incoming_pager = 0

    @property
    def max_pager_sessions(self) -> int:
        """How many incoming pager-mode sessions (`endpoint.pager_sessions`) may live at once (1,000); a text from
        somebody new beyond that stays a plain pager message. 0: none."""
        return self._max_pager_sessions

    @max_pager_sessions.setter
    def max_pager_sessions(self, value: int) -> None:
        # checked here: a wrong value used to surface only inside the stack, as a 500 to the next stranger's text
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(
                f"sessions.max_pager_sessions is an int (how many incoming pager-mode sessions may live "
                f"at once, e.g. 1000), not {value!r}"
            )
        if value < 0:
            raise ValueError(f"sessions.max_pager_sessions is 0 or more (0: none), not {value}")
        self._max_pager_sessions = value

    @property
    def sessions(self) -> list[ImSession]:
        """Sessions that have not ended yet, oldest first."""
        return list(self._sessions)

    def create(self, remote_uri: str, *, mode: str = "auto") -> Operation[ImSession]:
        """Invite `remote_uri` to a two-party IM session (INVITE with `m=message`). Resolves when connected;
        raises RequestFailed with the SIP status if the invitation is rejected.

        `mode="auto"` (the default): a callee that does not do IM sessions (it answers the INVITE 405, 415, 488,
        501 or 606, as liblinphone and baresip do) still gets the conversation, in pager mode: the session
        resolves connected with `session.mode == "pager"` (and emits SessionModeChanged), and its texts,
        composing and receipts go as out-of-dialog MESSAGEs. `mode="session"` raises RequestFailed instead;
        `mode="pager"` skips the INVITE."""
        parse_remote_uri(remote_uri)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
        self.endpoint.require_enabled("create a session")
        session = ImSession(self, remote_uri, incoming=False, mode=mode)
        self._sessions.append(session)
        return runtime().submit(session.aconnect(), f"create({remote_uri!r})")

    def open_pager(self, participant: Any) -> ImSession | None:
        """An incoming pager-mode session for a text from `participant` (a Participant) with whom there is no
        session yet (`endpoint.pager_sessions`); None once `max_pager_sessions` such sessions are live (the text
        then stays a plain pager message: strangers writing from many addresses cannot grow the list unbounded)."""
        if self._incoming_pager >= self._max_pager_sessions:
            return None
        session = ImSession(self, participant.uri, incoming=True, display_name=participant.display_name, mode="pager")
        self._sessions.append(session)
        session.start_pager()
        return session

    def pager_session(self, uri: str) -> ImSession | None:
        """The live pager-mode session with the party `uri` names (the newest, if several), or None: an
        out-of-dialog MESSAGE from them belongs to it."""
        live = self._pager.get(party_key(uri))
        return live[-1] if live else None

    def pager_started(self, session: ImSession) -> None:
        """`session` (one of ours, live) goes on in pager mode: MESSAGEs from its party belong to it now."""
        if session.is_conference or session not in self._sessions:
            return
        self._pager.setdefault(party_key(session.remote.uri), []).append(session)
        if session.is_incoming:
            self._incoming_pager += 1

    def create_conference(self, uris: list[str] | str = (), *, subject: str | None = None) -> Operation[Any]:
        """Create a conference on the endpoint's server (INVITE to its conference factory, RFC 4579), join it,
        subscribe to its roster (RFC 4575) and invite `uris` (REFER to the focus, which dials out). Resolves
        with the ConferenceSession once every invitee has joined or failed (failures are in
        `session.failed_invitations`); raises RequestFailed if the conference cannot be created."""
        from .conference import ConferenceSession, check_uris

        invitees = check_uris(list(uris) if not isinstance(uris, str) else [uris])
        self.endpoint.require_enabled("create a conference")
        checks.header_text(subject, "subject", max_len=200, optional=True)
        session = ConferenceSession(self, None, incoming=False, subject=subject)
        self._sessions.append(session)
        return runtime().submit(session.acreate([(u, None) for u in invitees]), f"create_conference({invitees!r})")

    def join(self, conference_uri: str) -> Operation[Any]:
        """Join an existing conference by its URI (INVITE to the conference URI). Resolves with the
        ConferenceSession once connected and subscribed to the roster."""
        from .conference import ConferenceSession

        parse_remote_uri(conference_uri, "conference_uri")
        self.endpoint.require_enabled("join a conference")
        session = ConferenceSession(self, conference_uri, incoming=False)
        self._sessions.append(session)
        return runtime().submit(session.aconnect(), f"join({conference_uri!r})")

    def escalate(self, session: ImSession, uris: list[str] | str) -> Operation[Any]:
        """`session.escalate(uris)`: move a two-party conversation to a conference (as Lync does when a third
        person is added). Creates a conference on the endpoint's server, joins it, invites the other party (with a
        Replaces header naming the session's dialog, so their client swaps sessions without asking) and `uris`,
        then ends the session. Resolves with the new ConferenceSession, whose `.messages` starts with the
        session's history."""
        from .conference import check_uris

        uris = check_uris(uris)
        if session.is_conference:
            raise InvalidState("this session is already a conference: use session.invite(uri)")
        session.require_connected("escalate")
        if session.mode == "pager":
            raise InvalidState(
                f"cannot escalate: {session.remote.uri} does not take IM sessions (this conversation is "
                "in pager mode), so it cannot join a conference either"
            )
        if self.endpoint.server is None:
            raise InvalidState(f"cannot escalate: endpoint {self.endpoint.uri} has no server, so no conference focus")
        return runtime().submit(self._escalate(session, uris), f"escalate({uris!r})")

    async def _escalate(self, session: ImSession, uris: list[str]) -> Any:
        from .conference import ConferenceSession

        replaces = session.replaces_header()
        conf = ConferenceSession(self, None, incoming=False, history=session.messages, escalated_from=session)
        self.adopt(conf)
        session.escalated_to = conf  # the peer's client may end that dialog (RFC 3891) as soon as it has joined
        try:
            await conf.acreate([(session.remote.uri, replaces)] + [(u, None) for u in uris])
        except BaseException:
            session.escalated_to = None
            raise
        failure = conf.invitation_failure(session.remote.uri)
        if failure is not None and session.state is SessionState.CONNECTED:
            # the other party did not come along: keep the two-party conversation, drop the conference
            session.escalated_to = None
            await conf.aterminate()
            raise failure
        await session.aterminate()
        return conf

    def on_incoming(self, callback: Callable[[IncomingSession], Any]) -> Subscription:
        """Call `callback(incoming)` for every invitation; it should call `incoming.accept()` or `.reject(code)`."""
        return self.endpoint.on(IncomingSession, callback)

    def invited(self, request: Request, handle: ServerHandle) -> None:
        """A new INVITE for this endpoint (the endpoint hands it over): a session (or conference) for it."""
        from_ = request.from_
        if request.to.tag is None and any(
            s.dialog is not None and s.dialog.call_id == request.call_id for s in self._sessions
        ):
            self.endpoint.agent.reply(handle, 482)  # merged request (§8.2.2.2)
            return
        source = handle.remote[0]
        from_source = sum(1 for s in self._sessions if s.invited_from == source)
        if from_source >= self.max_incoming_per_source:
            # bounded state: a peer (or a proxy relaying a flood) cannot open sessions without limit
            self.endpoint.agent.reply(
                handle, 503, "Service Unavailable (too many sessions from your address)", headers={"Retry-After": "30"}
            )
            return
        contact = request.contacts[0] if request.contacts else None
        if contact is not None and "isfocus" in contact.params:  # RFC 4579: an invitation to a conference
            self._on_conference_invite(request, handle, contact.uri)
            return
        session = ImSession(
            self, str(from_.uri.without_params("transport")), incoming=True, display_name=from_.display_name
        )
        self._sessions.append(session)
        session.receive_invitation(request, handle, new_tag())

    def _on_conference_invite(self, request: Request, handle: ServerHandle, focus: SipUri) -> None:
        from .conference import ConferenceSession, entity_of

        replaced = self._replaced_session(request)
        history = replaced.messages if replaced is not None else None
        session = ConferenceSession(
            self,
            entity_of(focus),
            incoming=True,
            history=history,
            escalated_from=replaced,
            subject=request.headers.get("Subject"),
        )
        session.replaces = replaced
        self._sessions.append(session)
        session.receive_invitation(request, handle, new_tag())
        if replaced is not None and session.ringing:  # RFC 3891: the user already talks with the referrer;
            session.accept()  # no second question (unless they said no meanwhile)

    def _replaced_session(self, request: Request) -> ImSession | None:
        """The connected two-party session a Replaces header names, if its peer is the one who referred us."""
        from .conference import entity_of

        value = request.headers.get("Replaces")
        referred_by = request.headers.get("Referred-By")
        if not value or not referred_by:
            return None
        parts = [p.strip() for p in value.split(";")]
        call_id = parts[0]
        tags = {k.strip().lower(): v.strip() for k, _, v in (p.partition("=") for p in parts[1:])}
        wanted = {tags.get("to-tag"), tags.get("from-tag")}
        try:
            referrer = entity_of(Address.parse(referred_by).uri)
        except Exception:  # noqa: BLE001 - a bad Referred-By replaces nothing
            return None
        for s in self._sessions:
            d = s.dialog
            if (
                not s.is_conference
                and d is not None
                and d.call_id == call_id
                and {d.local_tag, d.remote_tag} == wanted
                and s.state.value == "connected"
                and entity_of(s.remote.uri) == referrer
            ):
                return s
        return None

    def accept(self, incoming: IncomingSession) -> Operation[ImSession]:
        """Accept an invitation (UCCAPI `Accept`): the same as `incoming.session.accept()`."""
        return incoming.session.accept()

    def reject(self, incoming: IncomingSession, code: int = 486, reason: str | None = None) -> Operation[None]:
        """Decline an invitation with a SIP status: the same as `incoming.session.reject(code, reason)`."""
        return incoming.session.reject(code, reason)

    def adopt(self, session: ImSession) -> None:
        """A session created on this manager's behalf (a conference made by `escalate`) joins its list."""
        if session not in self._sessions:
            self._sessions.append(session)

    def forget(self, session: ImSession) -> None:
        """A session ended: it leaves the list of live sessions."""
        if session in self._sessions:
            self._sessions.remove(session)
        if session.mode != "pager":
            return
        key = party_key(session.remote.uri)
        live = self._pager.get(key)
        if live is not None and session in live:
            live.remove(session)
            if not live:
                del self._pager[key]
            if session.is_incoming:
                self._incoming_pager -= 1

    def __iter__(self):
        return iter(self.sessions)

    def __len__(self) -> int:
        return len(self._sessions)

    def __repr__(self) -> str:
        return f"<SessionManager of {self.endpoint.uri}: {len(self._sessions)} sessions>"
