"""RFC 5438 Instant Message Disposition Notification (IMDN): delivery and read receipts. Sans-IO.

Three parts, each small and pure:

- the *request*: a sent message carries `Imdn-Message-ID`, `DateTime` and `Disposition-Notification:
  positive-delivery, display` (`request_headers`). RFC 5438 defines these as CPIM (message/cpim) headers in the
  `urn:ietf:params:imdn` namespace; notebook_im sends text as plain `text/plain` (what OCS/Lync-style peers, SIPp
  and sipsak take) and carries the same three fields as SIP headers, which is where this codebase already put
  `Imdn-Message-ID` for retry de-duplication. On receipt both forms are understood: SIP headers, or a CPIM
  wrapper with `imdn.Disposition-Notification` (what linphone sends) (`requested`).
- the *notification*: a `message/imdn+xml` document (`build` / `parse`) saying "delivered", "displayed",
  "failed", ... about one message id. Notifications are sent RFC 5438 proper, inside `message/cpim` with
  `Content-Disposition: notification` (`wrap`), which linphone also sends and expects; a bare
  `message/imdn+xml` body is accepted too (`unpack`).
- the *sender's view of one message*, as a table (`TRANSITIONS`): sending -> sent (2xx) -> delivered ->
  displayed, or failed. Notifications may overtake the 200 or each other (UDP, two hops), so every state
  takes every input: "displayed" implies "delivered", and a receipt proves arrival even when the transaction
  that carried the message timed out (the 200 was lost).

Nothing here reads a clock: callers pass `now`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime

from ..sip.errors import RemoteProtocolError
from ..sip.headers import Headers
from . import cpim
from .xmldoc import escape, parse_untrusted

CONTENT_TYPE = "message/imdn+xml"
NS = "urn:ietf:params:xml:ns:imdn"
MAX_DOCUMENT = 4096

# Disposition-Notification values (RFC 5438 §6.3)
POSITIVE_DELIVERY = "positive-delivery"
NEGATIVE_DELIVERY = "negative-delivery"
DISPLAY = "display"
PROCESSING = "processing"
DISPOSITIONS = (POSITIVE_DELIVERY, NEGATIVE_DELIVERY, DISPLAY, PROCESSING)
REQUESTED = (POSITIVE_DELIVERY, DISPLAY)  # what notebook_im asks for on every sent message
REQUESTED_SET = frozenset(REQUESTED)  # the same, as a sent ChatMessage's `requested` (one shared set)

# notification kinds and the statuses each may carry (RFC 5438 §7)
DELIVERY = "delivery"
DISPLAY_KIND = "display"
PROCESSING_KIND = "processing"
STATUSES = {
    DELIVERY: ("delivered", "failed", "forbidden", "error"),
    DISPLAY_KIND: ("displayed", "forbidden", "error"),
    PROCESSING_KIND: ("processed", "stored", "forbidden", "error"),
}


format_datetime = cpim.format_datetime  # RFC 3339 UTC with milliseconds, as DateTime and <datetime> want it


# -- the request --------------------------------------------------------------------------------------------
def request_headers(message_id: str, now: datetime, wanted: tuple[str, ...] = REQUESTED) -> dict[str, str]:
    """The SIP headers that ask the recipient for notifications about message `message_id`."""
    headers = {"Imdn-Message-ID": message_id, "DateTime": format_datetime(now)}
    if wanted:
        headers["Disposition-Notification"] = ", ".join(wanted)
    return headers


def parse_disposition(value: str | None) -> frozenset[str]:
    """The known values of a Disposition-Notification header ('positive-delivery, display'); unknown
    tokens are ignored (RFC 5438 §6.3 lets the list grow), so a future value never breaks receipt."""
    if not value:
        return _NONE
    found = frozenset(t.strip().lower() for t in value.split(",") if t.strip().lower() in DISPOSITIONS)
    return _SHARED.setdefault(found, found)


# The few possible sets, shared: every kept message points at one of them rather than at a frozenset of its own
# (a frozenset is a GC-tracked object; see record/packed.py for why that matters). At most 2**len(DISPOSITIONS).
_NONE: frozenset[str] = frozenset()
_SHARED: dict[frozenset[str], frozenset[str]] = {_NONE: _NONE}


@dataclass(frozen=True)
class Request:
    """What the sender of a received message asked for: its id, its DateTime (echoed in notifications so
    the sender can match them) and the requested dispositions."""

    message_id: str
    datetime: str | None
    dispositions: frozenset[str]

    @property
    def delivery(self) -> bool:
        """True if a positive delivery notification is wanted (sent as soon as the message arrives)."""
        return POSITIVE_DELIVERY in self.dispositions

    @property
    def display(self) -> bool:
        """True if a display notification is wanted (sent once the user has seen the message)."""
        return DISPLAY in self.dispositions


def requested(headers: Headers, wrapper: cpim.Cpim | None = None) -> Request | None:
    """The notification request of a received message: from its CPIM wrapper (RFC 5438 proper) if it has
    one that asks, else from the SIP headers. None if nothing was asked or the
    message has no id to refer to."""
    if wrapper is not None and wrapper.disposition_notification:
        wanted = parse_disposition(wrapper.disposition_notification)
        if wanted and wrapper.message_id:
            return Request(wrapper.message_id, wrapper.datetime, wanted)
    wanted = parse_disposition(headers.get("Disposition-Notification"))
    msg_id = (wrapper.message_id if wrapper is not None else None) or headers.get("Imdn-Message-ID")
    if not wanted or not msg_id:
        return None
    return Request(msg_id, headers.get("DateTime"), wanted)


# -- the notification document ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Notification:
    """One IMDN: `kind` ("delivery", "display", "processing") and `status` ("delivered", "displayed",
    "failed", "forbidden", "error", "processed", "stored") about the message `message_id`."""

    message_id: str
    kind: str
    status: str
    datetime: str | None = None
    recipient_uri: str | None = None
    original_recipient_uri: str | None = None

    def __post_init__(self) -> None:
        allowed = STATUSES.get(self.kind)
        if allowed is None:
            raise ValueError(f"notification kind must be one of {', '.join(STATUSES)}, not {self.kind!r}")
        if self.status not in allowed:
            raise ValueError(f"a {self.kind} notification's status is one of {', '.join(allowed)}, not {self.status!r}")


def build(n: Notification) -> bytes:
    """The message/imdn+xml document of `n` (values through xmldoc.escape: ids and URIs come from the other party)."""
    esc = escape
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        f'<imdn xmlns="{NS}">\n',
        f"  <message-id>{esc(n.message_id)}</message-id>\n",
    ]
    if n.datetime:
        parts.append(f"  <datetime>{esc(n.datetime)}</datetime>\n")
    if n.recipient_uri:
        parts.append(f"  <recipient-uri>{esc(n.recipient_uri)}</recipient-uri>\n")
    if n.original_recipient_uri:
        parts.append(f"  <original-recipient-uri>{esc(n.original_recipient_uri)}</original-recipient-uri>\n")
    parts.append(f"  <{n.kind}-notification><status><{n.status}/></status></{n.kind}-notification>\n</imdn>\n")
    return "".join(parts).encode("utf-8")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


# The document as `build` writes it (and as most clients do: one notification, plain text values, no entity,
# no comment, no DOCTYPE): matched whole by one expression instead of an XML parse. Values may not contain
# '<', '>' or '&', so nothing in them is markup or needs unescaping; anything else (attributes, prefixes,
# extension elements, escapes, another order) goes to the XML parser below, which decides as before.
_TEXT = r"[^<>&\r\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]*"  # character data without markup, entities or controls
_WS = r"[ \t\r\n]*"  # XML's white space (not str.isspace's)
_FIXED = re.compile(
    r'(?:<\?xml version="1\.0" encoding="UTF-8"\?>)?'  # the declaration first of all, or none
    rf'{_WS}<imdn xmlns="{re.escape(NS)}">{_WS}'
    rf"<message-id>({_TEXT})</message-id>{_WS}"
    rf"(?:<datetime>({_TEXT})</datetime>{_WS})?"
    rf"(?:<recipient-uri>({_TEXT})</recipient-uri>{_WS})?"
    rf"(?:<original-recipient-uri>({_TEXT})</original-recipient-uri>{_WS})?"
    rf"<(delivery|display|processing)-notification>{_WS}<status>{_WS}<([a-z]+)/>{_WS}</status>{_WS}"
    rf"</\5-notification>{_WS}</imdn>{_WS}"
)


def _fixed(body: bytes) -> Notification | None:
    """`parse` for the fixed shape (see _FIXED), or None to let the XML parser decide."""
    if len(body) > MAX_DOCUMENT:
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    m = _FIXED.fullmatch(text)
    if m is None:
        return None
    message_id, when, recipient, original, kind, status = m.groups()
    message_id = message_id.strip()
    if not message_id or status not in STATUSES[kind]:
        return None  # the XML parser words the error
    return Notification(
        message_id,
        kind,
        status,
        when.strip() if when else None,  # (as the XML parser's reading: an empty element is no value)
        recipient.strip() if recipient else None,
        original.strip() if original else None,
    )


def parse(body: bytes) -> Notification:
    """Parse a message/imdn+xml document; RemoteProtocolError (400, 413 when too large) if it is not one.
    Namespaced and un-namespaced elements are both accepted; unknown extension elements are ignored."""
    fixed = _fixed(body)
    return fixed if fixed is not None else parse_xml(body)


def parse_xml(body: bytes) -> Notification:
    """`parse` by the XML parser alone (what the fixed shape must always agree with)."""
    root = parse_untrusted(body, limit=MAX_DOCUMENT, what="IMDN")
    if _local(root.tag) != "imdn":
        raise RemoteProtocolError(f"unexpected IMDN root element {root.tag!r}")
    fields: dict[str, str] = {}
    kind = status = None
    for child in root:
        name = _local(child.tag)
        if name.endswith("-notification"):
            k = name[: -len("-notification")]
            if k not in STATUSES:
                continue
            status_el = next((c for c in child if _local(c.tag) == "status"), None)
            values = [_local(c.tag) for c in status_el] if status_el is not None else []
            if len(values) != 1 or values[0] not in STATUSES[k]:
                raise RemoteProtocolError(f"IMDN {name} without a valid status (got {values!r})")
            if kind is not None:
                raise RemoteProtocolError("IMDN with more than one notification")
            kind, status = k, values[0]
        elif child.text:
            fields[name] = child.text.strip()
    if kind is None or status is None:
        raise RemoteProtocolError("IMDN without a delivery, display or processing notification")
    if not fields.get("message-id"):
        raise RemoteProtocolError("IMDN without a message-id")
    return Notification(
        fields["message-id"],
        kind,
        status,
        fields.get("datetime"),
        fields.get("recipient-uri"),
        fields.get("original-recipient-uri"),
    )


def wrap(n: Notification, sender: str, recipient: str, notification_id: str, now: datetime) -> bytes:
    """`n` as RFC 5438 sends it: a message/cpim body (From/To/NS imdn/imdn.Message-ID of the notification
    itself) around the message/imdn+xml document, with `Content-Disposition: notification`."""
    return cpim.wrap(
        sender,
        recipient,
        build(n),
        CONTENT_TYPE,
        message_id=notification_id,
        now=now,
        content_headers={"Content-Disposition": "notification"},
    )


def unpack(content_type: str, body: bytes) -> Notification | None:
    """The notification carried by a MESSAGE body, bare or CPIM-wrapped; None if the body is something
    else (a text, a composing indication). RemoteProtocolError if it is a malformed notification."""
    ct = content_type.split(";")[0].strip().lower()
    if ct == CONTENT_TYPE:
        return parse(body)
    if ct == cpim.CONTENT_TYPE:
        wrapped = cpim.unwrap(body)
        if wrapped.content_type.split(";")[0].strip().lower() == CONTENT_TYPE:
            return parse(wrapped.body)
    return None


# -- the sender's state machine ----------------------------------------------------------------------------
class MessageState(str, enum.Enum):
    """Where a sent message is: sending (no final response yet), sent (2xx: the server or the peer took it),
    delivered (the recipient's device said so), displayed (the recipient has seen it), failed."""

    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    DISPLAYED = "displayed"
    FAILED = "failed"


class Input(str, enum.Enum):
    """What can happen to a sent message."""

    RESPONSE_2XX = "2xx"  # the final response of its MESSAGE was 2xx
    RESPONSE_ERROR = "error"  # an error response, or no response at all
    DELIVERED = "delivered"  # a delivery notification with status delivered
    DELIVERY_FAILED = "delivery-failed"  # a delivery notification with status failed
    DISPLAYED = "displayed"  # a display notification with status displayed


S, In = MessageState, Input
# (state, input) -> next state: complete, so no combination is undefined. Rows are read "in state X, input Y
# leads to Z"; the comments say why the surprising ones are right.
TRANSITIONS: dict[tuple[MessageState, Input], MessageState] = {
    (S.SENDING, In.RESPONSE_2XX): S.SENT,
    (S.SENDING, In.RESPONSE_ERROR): S.FAILED,
    (S.SENDING, In.DELIVERED): S.DELIVERED,  # the receipt overtook the 200
    (S.SENDING, In.DELIVERY_FAILED): S.FAILED,
    (S.SENDING, In.DISPLAYED): S.DISPLAYED,  # displayed implies delivered
    (S.SENT, In.RESPONSE_2XX): S.SENT,  # a retransmitted 2xx
    (S.SENT, In.RESPONSE_ERROR): S.SENT,  # cannot follow a 2xx; a final response is final
    (S.SENT, In.DELIVERED): S.DELIVERED,
    (S.SENT, In.DELIVERY_FAILED): S.FAILED,  # a store-and-forward server took it, the device did not
    (S.SENT, In.DISPLAYED): S.DISPLAYED,  # the delivery notification was lost or never requested
    (S.DELIVERED, In.RESPONSE_2XX): S.DELIVERED,  # the 200 came after the receipt
    (S.DELIVERED, In.RESPONSE_ERROR): S.DELIVERED,  # the 200 was lost and the retry timed out: it did arrive
    (S.DELIVERED, In.DELIVERED): S.DELIVERED,
    (S.DELIVERED, In.DELIVERY_FAILED): S.DELIVERED,  # contradicts an earlier success: the success stands
    (S.DELIVERED, In.DISPLAYED): S.DISPLAYED,
    (S.DISPLAYED, In.RESPONSE_2XX): S.DISPLAYED,
    (S.DISPLAYED, In.RESPONSE_ERROR): S.DISPLAYED,
    (S.DISPLAYED, In.DELIVERED): S.DISPLAYED,  # a late delivery receipt never moves the state back
    (S.DISPLAYED, In.DELIVERY_FAILED): S.DISPLAYED,
    (S.DISPLAYED, In.DISPLAYED): S.DISPLAYED,
    (S.FAILED, In.RESPONSE_2XX): S.FAILED,  # the recipient's "failed" overtook the proxy's 200
    (S.FAILED, In.RESPONSE_ERROR): S.FAILED,
    (S.FAILED, In.DELIVERED): S.DELIVERED,  # proof of arrival beats a timed-out transaction
    (S.FAILED, In.DELIVERY_FAILED): S.FAILED,
    (S.FAILED, In.DISPLAYED): S.DISPLAYED,
}
del S, In


def advance(state: MessageState | str, event: Input | str) -> MessageState:
    """The state after `event` (a pure table lookup)."""
    return TRANSITIONS[(MessageState(state), Input(event))]


def input_for(n: Notification) -> Input | None:
    """The state-machine input a notification is, or None for those that change nothing: "forbidden"
    (the recipient's policy withholds it), "error", and processing notifications (a server stored or
    processed it: it still has to reach the device)."""
    if n.kind == DELIVERY and n.status == "delivered":
        return Input.DELIVERED
    if n.kind == DELIVERY and n.status == "failed":
        return Input.DELIVERY_FAILED
    if n.kind == DISPLAY_KIND and n.status == "displayed":
        return Input.DISPLAYED
    return None
