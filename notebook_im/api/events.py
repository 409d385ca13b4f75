"""Event types (frozen dataclasses), named after the UCCAPI events they replace.

| UCCAPI | here |
|---|---|
| `_IUccSessionManagerEvents.OnIncomingSession` | `IncomingSession` (`.accept()`, `.reject(code)`) |
| `OnInstantMessageReceived` | `MessageReceived` |
| `OnSendMessage` | `MessageDelivered` / `MessageFailed` |
| (RFC 5438 receipts, no UCCAPI counterpart) | `MessageDeliveryNotified` / `MessageDisplayed` |
| `OnComposing` / `OnIdle` | `ComposingChanged(composing=True/False)` |
| `OnAddParticipant` / `OnRemoveParticipant` | `ParticipantAdded` / `ParticipantRemoved` |
| participant `OnStateChanged` | `ParticipantStateChanged` |
| `OnTerminate` | `SessionTerminated` |
| (no UCCAPI counterpart: a callee without IM sessions) | `SessionModeChanged(mode="pager")` |
| endpoint `OnEnable` / `OnDisable` | `EndpointStateChanged` |
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..runtime import Operation
from .participant import Participant
from .states import EndpointState, ParticipantState, SessionState

# An event names the session or endpoint it happened to. Those classes are built on these events (they emit
# them), so the fields that hold them are typed `Any` here, and documented: `session` is an ImSession (or a
# ConferenceSession), `endpoint` an Endpoint.


@dataclass(frozen=True)
class Event:
    """Base class: every event knows when it happened (UTC)."""

    timestamp: datetime = field(kw_only=True)


@dataclass(frozen=True)
class EndpointStateChanged(Event):
    endpoint: Any  # the Endpoint
    state: EndpointState
    previous: EndpointState
    reason: str = ""


@dataclass(frozen=True)
class IncomingSession(Event):
    """Someone invites us to an IM session. Call `.accept()` or `.reject(code)`; until then it rings."""

    session: Any  # the ImSession
    inviter: Participant
    subject: str | None = None
    # the invitation's Ms-Conversation-ID (OCS/Lync clients name the conversation with it); None without one
    conversation_id: str | None = None

    def accept(self) -> Operation[Any]:
        """Accept the invitation (200 OK with our SDP); resolves with the session once the ACK arrives. Shorthand
        for `endpoint.sessions.accept(incoming)`: the event only carries the data, the session manager acts."""
        return self.session.manager.accept(self)

    def reject(self, code: int = 486, reason: str | None = None) -> Operation[None]:
        """Decline the invitation with a SIP status (486 Busy Here by default, 603 Decline, ...); shorthand for
        `endpoint.sessions.reject(incoming, code, reason)`."""
        return self.session.manager.reject(self, code, reason)


@dataclass(frozen=True)
class MessageReceived(Event):
    session: Any  # the ImSession; None for a pager-mode (out-of-dialog) MESSAGE
    participant: Participant
    text: str
    content_type: str
    message_id: str = ""
    mode: str = "session"  # "session" or "pager"
    recipient: str = ""  # our own URI (the endpoint that received it)
    # when the sender sent it, from the message's Date header (None without one). A message the server kept
    # while we were offline arrives later: `timestamp` is when it arrived, `sent_at` when it was sent
    sent_at: datetime | None = None
    call_id: str = ""  # the Call-ID of the MESSAGE that carried it (the session's dialog, or its own)


@dataclass(frozen=True)
class MessageSending(Event):
    """A message was queued for sending (it shows as "sending" until MessageDelivered/MessageFailed)."""

    session: Any  # the ImSession, or None
    message_id: str
    text: str
    content_type: str
    mode: str = "session"
    recipient: str = ""
    call_id: str = ""  # the Call-ID it goes with: the session's dialog, or its own pager MESSAGE's


@dataclass(frozen=True)
class MessageDelivered(Event):
    """A sent message got a 2xx (UCCAPI `OnSendMessage` success): the server or the peer took it. Whether
    it reached the recipient's device and was seen is what the receipts say (`state`, MessageDeliveryNotified,
    MessageDisplayed)."""

    session: Any  # the ImSession, or None
    message_id: str
    text: str
    content_type: str
    status: int
    reason: str
    latency: float  # seconds from send to final response
    mode: str = "session"
    recipient: str = ""
    sent_at: datetime | None = None
    state: str = "sent"  # the message's state now: "sent", or "delivered"/"displayed" if a receipt overtook the 200
    # 202 Accepted: the server keeps the message for a recipient who is offline and delivers it when they
    # register again; it has not reached them yet (`status` is 202, `reason` says so)
    stored: bool = False
    call_id: str = ""  # the Call-ID of the MESSAGE (the session's dialog, or its own in pager mode)


@dataclass(frozen=True)
class MessageFailed(Event):
    """A sent message got an error response or none at all; `status` and `reason` say which."""

    session: Any  # the ImSession, or None
    message_id: str
    text: str
    content_type: str
    status: int
    reason: str
    mode: str = "session"
    recipient: str = ""
    sent_at: datetime | None = None
    state: str = "failed"  # "failed", or "delivered"/"displayed" if a receipt proved it arrived anyway
    call_id: str = ""  # the Call-ID of the MESSAGE (the session's dialog, or its own in pager mode)


@dataclass(frozen=True)
class MessageDeliveryNotified(Event):
    """The recipient's device answered a message's delivery-notification request (RFC 5438): `disposition`
    is "delivered" (it arrived), "failed", "forbidden" (their policy withholds receipts) or "error".
    `state` is the message's state afterwards ("delivered", or unchanged)."""

    session: Any  # the ImSession; None in pager mode
    message_id: str
    participant: Participant  # who sent the notification (the message's recipient)
    disposition: str
    state: str
    mode: str = "session"
    recipient: str = ""


@dataclass(frozen=True)
class MessageDisplayed(Event):
    """The recipient has seen a message we sent (an RFC 5438 display notification: their chat panel showed
    it, or they called `session.mark_read()`). `state` is "displayed"."""

    session: Any  # the ImSession; None in pager mode
    message_id: str
    participant: Participant
    state: str = "displayed"
    mode: str = "session"
    recipient: str = ""


@dataclass(frozen=True)
class ComposingChanged(Event):
    session: Any  # the ImSession, or None
    participant: Participant
    composing: bool


@dataclass(frozen=True)
class ParticipantAdded(Event):
    session: Any  # the ImSession
    participant: Participant


@dataclass(frozen=True)
class ParticipantRemoved(Event):
    session: Any  # the ImSession
    participant: Participant


@dataclass(frozen=True)
class ParticipantStateChanged(Event):
    """A participant moved to `state`. `reason` says why when it is not the session's own doing (a
    participant that stopped answering is DISCONNECTED with the failed request in `reason`)."""

    session: Any  # the ImSession
    participant: Participant
    state: ParticipantState
    previous: ParticipantState
    reason: str = ""


@dataclass(frozen=True)
class SessionStateChanged(Event):
    session: Any  # the ImSession
    state: SessionState
    previous: SessionState


@dataclass(frozen=True)
class SessionModeChanged(Event):
    """The conversation goes on in `mode` "pager": the other party refused an IM session (`status`, e.g. 488
    from liblinphone or baresip, which chat only with out-of-dialog MESSAGEs), so texts, composing and receipts
    go as pager-mode MESSAGEs (RFC 3428) between the same two parties. `status` is None when pager mode was
    asked for (`sessions.create(uri, mode="pager")`)."""

    session: Any  # the ImSession
    mode: str
    status: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class SessionTerminated(Event):
    session: Any  # the ImSession
    reason: str
    status: int | None = None
    by_remote: bool = False
    # an invitation that rang here ended because another device of the same user answered it (the server
    # forked it and CANCELled this branch with `Reason: SIP;cause=200`); `reason` is then "answered elsewhere"
    answered_elsewhere: bool = False


def event_fields(event: Any) -> dict[str, Any]:
    """A flat, JSON-friendly view of an event for the trace (objects become their URIs or ids)."""
    out: dict[str, Any] = {"type": type(event).__name__}
    for name in getattr(event, "__dataclass_fields__", {}):
        value = getattr(event, name)
        if hasattr(value, "uri") and not isinstance(value, str):
            value = str(value.uri)
        elif hasattr(value, "id") and not isinstance(value, (str, int)):
            value = value.id
        elif isinstance(value, enum.Enum):
            value = value.value
        out[name] = value
    return out
