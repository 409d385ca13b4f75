"""SessionManager: creates sessions and announces incoming ones (UCCAPI `IUccSessionManager`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..runtime import Operation, runtime
from ..sip.message import Request, make_response, new_tag
from ..sip.uri import SipUri
from ..ua import ServerHandle
from .emitter import Subscription
from .events import IncomingSession
from .session import ImSession

if TYPE_CHECKING:  # pragma: no cover
    from .endpoint import Endpoint


def parse_remote_uri(uri: Any, what: str = "remote_uri") -> SipUri:
    """Validate a user-supplied SIP URI with a message that says what a good one looks like."""
    if not isinstance(uri, str):
        raise TypeError(f"{what} must be a string such as 'sip:bob@example.test', not {type(uri).__name__}")
    try:
        parsed = SipUri.parse(uri)
    except Exception:
        raise ValueError(f"{what} {uri!r} is not a SIP URI; write it like 'sip:bob@example.test'") from None
    if not parsed.user:
        raise ValueError(f"{what} {uri!r} has no user part; write it like 'sip:bob@example.test'")
    return parsed


class SessionManager:
    """`endpoint.sessions`: `create(uri)`, `on_incoming(cb)`, and the list of live `sessions`."""

    def __init__(self, endpoint: "Endpoint") -> None:
        self.endpoint = endpoint
        self._sessions: list[ImSession] = []

    @property
    def sessions(self) -> list[ImSession]:
        """Sessions that have not ended yet, oldest first."""
        return list(self._sessions)

    def create(self, remote_uri: str) -> Operation[ImSession]:
        """Invite `remote_uri` to a two-party IM session (INVITE with `m=message`). Resolves when connected;
        raises RequestFailed with the SIP status if the invitation is rejected."""
        parse_remote_uri(remote_uri)
        self.endpoint._require_enabled("create a session")
        session = ImSession(self, remote_uri, incoming=False)
        self._sessions.append(session)
        return runtime().submit(session._invite(), f"create({remote_uri!r})")

    def on_incoming(self, callback: Callable[[IncomingSession], Any]) -> Subscription:
        """Call `callback(incoming)` for every invitation; it should call `incoming.accept()` or `.reject(code)`."""
        return self.endpoint.on(IncomingSession, callback)

    def _on_invite(self, request: Request, handle: ServerHandle) -> None:
        from_ = request.from_
        if request.to.tag is None and any(s.dialog is not None and s.dialog.call_id == request.call_id for s in self._sessions):
            self.endpoint._ua.respond(handle, make_response(request, 482, to_tag=new_tag()))  # merged request (§8.2.2.2)
            return
        session = ImSession(self, str(from_.uri.without_params("transport")), incoming=True, display_name=from_.display_name)
        self._sessions.append(session)
        event = session._incoming(request, handle, new_tag())
        session._emit(event)

    def _forget(self, session: ImSession) -> None:
        if session in self._sessions:
            self._sessions.remove(session)

    def __iter__(self):
        return iter(self.sessions)

    def __len__(self) -> int:
        return len(self._sessions)

    def __repr__(self) -> str:
        return f"<SessionManager of {self.endpoint.uri}: {len(self._sessions)} sessions>"
