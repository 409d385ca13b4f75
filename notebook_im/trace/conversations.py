"""Conversations rebuilt from API events: one pass that turns event records (live, or read back from the history
store) into the IM messages they describe, as the `ChatMessage`s a live session keeps.

One piece of code, three users: `trace.messages()` (frames.py makes its rows from these messages), the chat
panel's earlier conversations (`earlier_conversations`, grouped per session or pager peer), and anything else
that wants "what was said, by whom, and what became of it" from a trace. A sent message is built from its
`MessageSending` and settled by its `MessageDelivered` / `MessageFailed`; its receipt state is the one the
newest event about it reports (every event after MessageSending carries the state the im.imdn table gave it).
A message sent but never settled (the program stopped first, or it is still in flight) stays "sending"; the
earlier-conversation view shows it as failed with the reason `UNCONFIRMED`.

Analysis layer: above the API (it builds `api.messages.ChatMessage`), below the widgets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..api import events
from ..api.messages import ChatMessage
from ..record.recorder import EventRecord

UNCONFIRMED = "no final response was recorded (the program stopped first)"
_MESSAGE_EVENTS = ("MessageReceived", "MessageSending", "MessageDelivered", "MessageFailed")
_STATE_EVENTS = ("MessageSending", "MessageDelivered", "MessageFailed", "MessageDeliveryNotified", "MessageDisplayed")


@dataclass
class RebuiltMessage:
    """One IM message of `owner` (the endpoint that sent or received it): the ChatMessage, the conversation it
    belongs to (`key`: the session id, or "pager:<peer>" for pager-mode messages outside a session), and what
    only the events know (the latency of its final response, the Call-ID of the request that carried it)."""

    owner: str
    key: str
    session_id: str | None
    peer: str
    message: ChatMessage
    latency: float | None = None
    call_id: str | None = None


@dataclass
class Rebuilt:
    """The messages of a set of event records, in the order they first appeared, and the display names the
    events carried, per (owner, conversation key) and URI."""

    messages: list[RebuiltMessage] = field(default_factory=list)
    names: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)


def _is_event(ev: Any, kind: str) -> bool:
    """A stored record of another shape under a message event's name (a type this version rebuilt generically)
    carries no chat message."""
    return type(ev) is getattr(events, kind, None)


def rebuild(records: Iterable[EventRecord], owner: str | None = None) -> Rebuilt:
    """The IM messages in `records` (of every endpoint, or of `owner`)."""
    out = Rebuilt()
    states: dict[tuple[str, str], str] = {}
    sent: dict[tuple[str, str], RebuiltMessage] = {}
    for rec in records:
        ev = rec.event
        kind = type(ev).__name__
        if owner is not None and rec.owner != owner:
            continue
        if kind in _STATE_EVENTS and getattr(ev, "message_id", None) and _is_event(ev, kind):
            states[(rec.owner, ev.message_id)] = "sending" if kind == "MessageSending" else (ev.state or "")
        if kind not in _MESSAGE_EVENTS or not _is_event(ev, kind):
            continue
        session = ev.session
        remote = session.remote if session is not None else getattr(ev, "participant", None)
        peer = remote.uri if remote is not None else ev.recipient
        session_id = str(session.id) if session is not None else None
        key = session_id if session_id is not None else f"pager:{peer}"
        names = out.names.setdefault((rec.owner, key), {})
        for who in (remote, getattr(ev, "participant", None)):
            if getattr(who, "display_name", None):
                names[who.uri] = who.display_name
        when: datetime = ev.timestamp
        call_id = getattr(ev, "call_id", "") or None
        if kind == "MessageReceived":
            msg = ChatMessage(
                ev.message_id or f"{kind}-{rec.timestamp}",
                "in",
                ev.participant.uri,
                ev.recipient or rec.owner,
                ev.text,
                ev.content_type,
                when,
                "received",
                ev.mode,
                delivered_at=when,
            )
            out.messages.append(RebuiltMessage(rec.owner, key, session_id, peer, msg, call_id=call_id))
            continue
        message_id = ev.message_id or f"{kind}-{rec.timestamp}"
        item = sent.get((rec.owner, message_id))
        if item is None:
            recipient = ev.recipient or peer
            msg = ChatMessage(
                message_id,
                "out",
                rec.owner,
                recipient,
                ev.text,
                ev.content_type,
                getattr(ev, "sent_at", None) or when,
                "sending",
                ev.mode,
            )
            item = sent[(rec.owner, message_id)] = RebuiltMessage(
                rec.owner, key, session_id, recipient, msg, call_id=call_id
            )
            out.messages.append(item)
        if kind == "MessageSending":
            continue
        msg = item.message
        delivered = kind == "MessageDelivered"
        msg.status = "delivered" if delivered else "failed"
        msg.sip_status, msg.reason = ev.status, ev.reason
        msg.delivered_at = when if delivered else None
        item.latency = ev.latency if delivered else None
        item.call_id = call_id or item.call_id
    for item in out.messages:  # the receipts' word on each sent message that was settled
        msg = item.message
        if msg.direction == "out":
            reported = states.get((item.owner, msg.id))
            msg.state = (
                "sending"
                if msg.status == "sending"
                else (
                    reported
                    if reported and reported != "sending"
                    else ("sent" if msg.status == "delivered" else "failed")
                )
            )
    return out


# -- earlier conversations (what ChatPanel shows) ------------------------------------------------------------
@dataclass
class EarlierConversation:
    """The messages of one earlier session (or of the pager-mode messages with one peer), oldest first, as the
    `ChatMessage`s a live session keeps; `names` are the display names the events carried, by URI."""

    key: str  # the session id, or "pager:<peer uri>"
    peer: str  # the remote party's URI
    mode: str  # "session" / "pager"
    messages: list[ChatMessage] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)

    @property
    def started(self) -> datetime:
        """When the first message was sent or received."""
        return self.messages[0].timestamp

    @property
    def ended(self) -> datetime:
        """When the last message was sent or received."""
        return self.messages[-1].timestamp


def earlier_conversations(records: Iterable[EventRecord], owner: str) -> list[EarlierConversation]:
    """The conversations of endpoint `owner` in `records` (stored events), newest first. A message that was sent
    but never confirmed (the kernel died first) shows as failed, with the reason `UNCONFIRMED`."""
    rebuilt = rebuild(records, owner)
    convs: dict[str, EarlierConversation] = {}
    for item in rebuilt.messages:
        msg = item.message
        conv = convs.get(item.key)
        if conv is None:
            conv = convs[item.key] = EarlierConversation(
                item.key, item.peer, msg.mode, names=rebuilt.names.get((owner, item.key), {})
            )
        if msg.status == "sending":
            msg.status, msg.state, msg.reason = "failed", "failed", UNCONFIRMED
        conv.messages.append(msg)
    out = [c for c in convs.values() if c.messages]
    out.sort(key=lambda c: c.ended, reverse=True)
    return out


def chat_messages(trace: Any, *, owner: str, session_id: str) -> list[ChatMessage]:
    """The `ChatMessage`s of the session `session_id` of endpoint `owner` in `trace`'s events, oldest first
    (`Trace.chat_messages`: what `session.messages` reads back from the history store for its evicted part). A
    message whose send was never settled stays "sending"."""
    return [item.message for item in rebuild(trace.event_records(), owner).messages if item.session_id == session_id]
