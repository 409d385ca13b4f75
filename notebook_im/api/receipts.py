"""Delivery and read receipts (RFC 5438 IMDN) for one endpoint: the glue between `im.imdn` and the API.

The endpoint keeps one `ReceiptBook`. Every message it sends with a notification request (session or pager
mode) is tracked there by its id, so a notification finds its message however it arrives: in the session's
dialog (what notebook_im sends) or as a pager-mode MESSAGE (what RFC 5438 describes and some clients send
even for session messages). The book is bounded (the newest `size` messages): a receipt for an older one is
answered 200 and ignored.

A notification is only believed from the party the message went to: in a session, only notifications that
arrive in that session's dialog count for its messages; in pager mode the notifier's address of record must
be the recipient's.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..im import cpim, imdn
from ..im import iscomposing as ic
from ..sip.errors import RemoteProtocolError
from ..sip.message import random_hex
from ..sip.uri import SipUri
from .events import MessageDeliveryNotified, MessageDisplayed

if TYPE_CHECKING:  # pragma: no cover
    from .messages import ChatMessage
    from .participant import Participant

DEFAULT_SIZE = 10_000


def party_key(uri: str) -> str:
    """The user a URI names, as a key: "user@host" (host in lower case; port and parameters ignored), or the
    URI itself if it does not parse."""
    try:
        u = SipUri.parse(uri)
    except Exception:  # noqa: BLE001 - an unparseable URI is only equal to itself
        return uri
    return f"{u.user or ''}@{u.host.lower()}"


def same_party(a: str, b: str) -> bool:
    """True if two URIs name the same user (user and host; port and parameters ignored)."""
    try:
        ua, ub = SipUri.parse(a), SipUri.parse(b)
    except Exception:  # noqa: BLE001 - an unparseable URI names nobody we know
        return False
    return (ua.user or "", ua.host.lower()) == (ub.user or "", ub.host.lower())


def notification_body(
    message_id: str, message_datetime: str | None, kind: str, status: str, local_uri: str, peer_uri: str, now: datetime
) -> bytes:
    """The CPIM-wrapped IMDN (RFC 5438 §7) that reports `kind`/`status` about a received message (its id and
    the DateTime it was sent with, echoed so the sender can match the two)."""
    n = imdn.Notification(message_id, kind, status, message_datetime or imdn.format_datetime(now), local_uri)
    return imdn.wrap(n, local_uri, peer_uri, random_hex(2 * 6), now)


NOTIFICATION_CONTENT_TYPE = cpim.CONTENT_TYPE  # notifications go CPIM-wrapped (RFC 5438 proper, as linphone)


class ReceiptBook:
    """Sent messages waiting for receipts, by message id (bounded, oldest forgotten first)."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        # Nothing here may add a GC-tracked object per sent message: every full collection walks them all, and
        # they set the latency's p99 (record/packed.py, docs/performance.md). The message is the session's own
        # ChatMessage; who sent it is a key shared by all messages of one (session, emit) pair: one tuple of two
        # ints per pair, where a (session, emit, call_id) tuple and a bound method per message were two objects
        # each (20,000 of the 75,000 a process held after 10,000 messages).
        self._sent: OrderedDict[str, ChatMessage] = OrderedDict()
        self._source: dict[str, tuple[int, int]] = {}  # message id -> the key of its owner in _owners
        self._owners: dict[tuple[int, int], list[Any]] = {}  # key -> [session, emit, messages tracked, key]
        self._call_of: dict[str, str] = {}  # message id -> Call-ID, for pager messages sent with one
        # Call-ID of a pager-mode message -> its id: liblinphone names the message a receipt is about by the
        # Call-ID of its MESSAGE when the request came as SIP headers (it reads them only from a CPIM wrapper)
        self._by_call_id: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._sent)

    def track(self, msg: ChatMessage, session: Any, emit: Any, call_id: str | None = None) -> None:
        """Remember `msg` (sent with a notification request); `session` is its session (None for a message
        sent with `endpoint.send_message`), `emit` the function that emits the receipt events, `call_id` the
        Call-ID of its pager-mode MESSAGE (a receipt may name the message by it)."""
        # (the objects stay alive while an entry holds them, so their ids cannot be reused meanwhile)
        key = (id(session), id(getattr(emit, "__self__", emit)))
        owner = self._owners.get(key)
        if owner is None:
            owner = self._owners[key] = [session, emit, 0, key]
        if msg.id in self._sent:  # tracked again (a retry): one count per message
            self._forget(msg.id)
        owner[2] += 1
        self._sent[msg.id] = msg
        self._source[msg.id] = owner[3]
        if call_id is not None:
            self._call_of[msg.id] = call_id
            self._by_call_id[call_id] = msg.id
        if len(self._sent) > self.size:
            self._forget(next(iter(self._sent)))

    def _forget(self, message_id: str) -> None:
        """Drop one tracked message, and its owner's entry with its last message."""
        self._sent.pop(message_id, None)
        key = self._source.pop(message_id, None)
        owner = self._owners.get(key) if key is not None else None
        if owner is not None:
            owner[2] -= 1
            if owner[2] <= 0:
                del self._owners[key]
        call_id = self._call_of.pop(message_id, None)
        if call_id is not None and self._by_call_id.get(call_id) == message_id:
            del self._by_call_id[call_id]

    def find(self, message_id: str) -> ChatMessage | None:
        """The tracked message with this id, if it is still remembered."""
        return self._sent.get(message_id)

    def apply(self, n: imdn.Notification, notifier: Participant, now: datetime, session: Any = None) -> bool:
        """Apply a notification that arrived in `session`'s dialog (or out of dialog: None) from `notifier`.
        Moves the message's state through the `im.imdn` table and emits MessageDeliveryNotified /
        MessageDisplayed on its session (or endpoint). False if it is about no message we know or comes
        from somebody else than the message's recipient."""
        message_id = n.message_id
        msg = self._sent.get(message_id)
        if msg is None:  # a receipt naming the MESSAGE by its Call-ID (liblinphone, see __init__)
            message_id = self._by_call_id.get(message_id, "")
            msg = self._sent.get(message_id)
        if msg is None:
            return False
        own_session, emit = self._owners[self._source[message_id]][:2]
        if session is not None and own_session is not session:
            return False  # a receipt in a session's dialog counts only for that session's messages
        if session is None and not same_party(notifier.uri, msg.recipient):
            return False
        event_input = imdn.input_for(n)
        if event_input is not None:
            msg.state = imdn.advance(msg.state, event_input).value
        if n.kind == imdn.DELIVERY:
            if n.status == "delivered":
                if msg.delivery_notified_at is not None:
                    return True  # the same receipt again (a retried notification): reported once
                msg.delivery_notified_at = now
            emit(
                MessageDeliveryNotified(
                    own_session, msg.id, notifier, n.status, msg.state, msg.mode, msg.recipient, timestamp=now
                )
            )
        elif n.kind == imdn.DISPLAY_KIND and n.status == "displayed" and msg.displayed_at is None:
            msg.displayed_at = now
            emit(MessageDisplayed(own_session, msg.id, notifier, msg.state, msg.mode, msg.recipient, timestamp=now))
        return True

    def open(
        self, content_type: str, body: bytes, notifier: Participant, now: datetime, session: Any = None
    ) -> tuple[int, cpim.Cpim | None]:
        """A received message/imdn+xml or message/cpim body: a receipt is applied (`apply`) and answered
        (200, None); a text or an is-composing indication in a CPIM wrapper (liblinphone's way with CPIM on)
        comes back as (200, wrapper) for the caller to deliver, its inner Content-Type normalised; a malformed
        body is (400, None; 413 or 415 when the parser says so: too large, an encoding we do not take), anything
        else wrapped (415, None)."""
        try:
            notification = imdn.unpack(content_type, body)
            if notification is not None:
                self.apply(notification, notifier, now, session)
                return 200, None
            wrapped = cpim.unwrap(body)
        except RemoteProtocolError as exc:
            return (exc.status_code if exc.status_code in (413, 415) else 400), None
        inner = wrapped.content_type.split(";")[0].strip().lower()
        if not inner.startswith("text/") and inner != ic.CONTENT_TYPE:
            return 415, None
        return 200, replace(wrapped, content_type=inner)
