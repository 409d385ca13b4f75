"""`ChatMessage`, one IM message of a conversation with its delivery state, and the small rules every way of
sending or receiving one shares (session mode, pager mode, a conference): what a text looks like on the wire,
how a final response settles a sent message, which content types a user may send, duplicate suppression."""

from __future__ import annotations

import dataclasses
import functools
import gc
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..im import imdn
from .events import MessageDelivered, MessageFailed

TEXT_TYPES = ("text/plain", "text/html", "text/enriched")
MESSAGE_ATTEMPTS = 2  # a MESSAGE whose transaction timed out is sent once more (same Imdn-Message-ID)
REFUSING = (415, 501)  # "I do not take this content / this method": stop sending that kind to this peer

_STATE_OF_STATUS = {"sending": "sending", "delivered": "sent", "failed": "failed", "received": "received"}


# the receipt-request sets a row holds as sorted tuples of str (which the garbage collector untracks, unlike a
# frozenset), and the one shared frozenset per combination that `requested` hands out
_REQUEST_SETS: dict[tuple[str, ...], frozenset[str]] = {(): frozenset()}


# The values a message's row holds when the library builds it: none of them can refer to anything, so the message
# cannot be part of a reference cycle, and it is left to reference counting alone (untracked by the garbage
# collector, as CPython itself untracks a tuple or dict of such values). Anything else put on a message (another
# kind of value, `extra`, an attribute of one's own) hands it back to the collector first.
_SCALARS = frozenset({str, int, float, bool, type(None), datetime})


@functools.cache
def _gc_api() -> tuple[Callable[[Any], None], Callable[[Any], None]] | None:
    """CPython's PyObject_GC_UnTrack and PyObject_GC_Track, through ctypes (loaded on first use; None elsewhere)."""
    try:
        import ctypes

        untrack, track = ctypes.pythonapi.PyObject_GC_UnTrack, ctypes.pythonapi.PyObject_GC_Track
        for fn in (untrack, track):
            fn.argtypes, fn.restype = [ctypes.py_object], None
        return untrack, track
    except (ImportError, AttributeError, OSError):  # not CPython: every message stays tracked
        return None


def _leave_to_refcount(msg: ChatMessage) -> None:
    """Untrack a message just built if nothing it holds can refer back to it (see _SCALARS). (Called from
    __init__ only: no attribute of the user's own can be there yet.)"""
    api = _gc_api()
    if (
        api is None
        or type(msg) is not ChatMessage  # (a subclass may hold anything)
        or not gc.is_tracked(msg)
        or getattr(msg, "_extra", None) is not None
        or not all(type(v) in _SCALARS for i, v in enumerate(msg._row) if i != _REQUESTED)
    ):
        return
    api[0](msg)


def _hand_to_gc(msg: ChatMessage) -> None:
    """Track `msg` again: it is about to hold something that could refer back to it."""
    if not gc.is_tracked(msg):
        api = _gc_api()
        if api is not None:
            api[1](msg)


def _field(i: int, name: str) -> property:
    def get(self: ChatMessage) -> Any:
        return self._row[i]

    def put(self: ChatMessage, value: Any) -> None:
        if type(value) not in _SCALARS:
            _hand_to_gc(self)
        _set_in_row(self, i, value)

    return property(get, put, doc=f"The message's {name.replace('_', ' ')}.")


def _requested_key(value: Iterable[str]) -> tuple[str, ...]:
    key = tuple(sorted(value))
    if key not in _REQUEST_SETS:
        if not all(isinstance(v, str) for v in key):
            raise TypeError(f"requested must be a set of disposition names (str), not {value!r}")
        _REQUEST_SETS[key] = frozenset(key)
    return key


@dataclass(init=False, repr=False, eq=False)
class ChatMessage:
    """One IM message of a conversation, sent or received, with its delivery state.

    `status` is the SIP outcome (UCCAPI `OnSendMessage`): "sending", "delivered" (a 2xx came back: the
    server or the peer took it), "failed", or "received". `state` is what the receipts (RFC 5438) add: a
    sent message goes "sending" -> "sent" (2xx) -> "delivered" (the recipient's device said so) ->
    "displayed" (they have seen it), or "failed"; with a peer that sends no receipts it stays "sent". A
    received message is "received", then "displayed" once shown or marked read (`session.mark_read()`).

    Why one tuple inside. A chat keeps thousands of these (both ends of every message), and a full garbage
    collection visits every reference of every object it tracks: as seventeen attributes, each message cost the
    collector seventeen visits, and the collections of a busy session stalled its loop for tens of milliseconds.
    The values live in one tuple of strings, numbers, datetimes and None, which the collector stops tracking, so
    a message costs it one visit. Reading and setting the attributes works as on any object (a setter replaces the
    tuple); `extra` is a dict of its own, made on first use.
    """

    # (__dict__: a user may still hang attributes of their own on a message; it costs nothing until one does)
    __slots__ = ("_row", "_extra", "__weakref__", "__dict__")

    # the fields, in the constructor's order: `dataclasses.fields`, `asdict`, `replace`, `pd.DataFrame(messages)`
    # and `match` read them as they did when this was a plain dataclass (the attributes themselves are properties
    # over `_row`, set below the class)
    id: str
    direction: str  # "out" or "in"
    sender: str
    recipient: str
    text: str
    content_type: str
    timestamp: datetime
    status: str  # "sending", "delivered", "failed" or "received"
    mode: str
    sip_status: int | None
    reason: str
    delivered_at: datetime | None  # when the 2xx came (sent) or the message arrived (received)
    extra: dict[str, Any]
    state: str  # sending / sent / delivered / displayed / failed; received / displayed
    requested: frozenset[str]  # the receipts asked for ("positive-delivery", "display")
    imdn_datetime: str | None  # the message's DateTime, echoed in its notifications
    delivery_notified_at: datetime | None  # sent: when the delivery notification came
    displayed_at: datetime | None  # sent: when the display notification came; received: when read

    def __init__(
        self,
        id: str,  # noqa: A002 - the field's name
        direction: str,
        sender: str,
        recipient: str,
        text: str,
        content_type: str,
        timestamp: datetime,
        status: str,
        mode: str = "session",
        sip_status: int | None = None,
        reason: str = "",
        delivered_at: datetime | None = None,
        extra: dict[str, Any] | None = None,
        state: str = "",
        requested: Iterable[str] = (),
        imdn_datetime: str | None = None,
        delivery_notified_at: datetime | None = None,
        displayed_at: datetime | None = None,
    ) -> None:
        if not state:
            state = _STATE_OF_STATUS.get(status, status)
        self._row: tuple[Any, ...] = (
            id,
            direction,
            sender,
            recipient,
            text,
            content_type,
            timestamp,
            status,
            mode,
            sip_status,
            reason,
            delivered_at,
            state,
            _requested_key(requested),
            imdn_datetime,
            delivery_notified_at,
            displayed_at,
        )
        if extra is not None:
            self._extra = extra
        _leave_to_refcount(self)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _OWN:  # an attribute of the user's own: it may refer to anything
            _hand_to_gc(self)
        object.__setattr__(self, name, value)

    def _values(self) -> tuple[Any, ...]:
        """The fields in the constructor's order (as a dataclass would compare and show them)."""
        row = self._row
        extra = getattr(self, "_extra", None) or {}
        return (*row[:_EXTRA], extra, *row[_EXTRA:_REQUESTED], self.requested, *row[_REQUESTED + 1 :])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it replaces

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={v!r}" for n, v in zip(_NAMES, self._values()))
        return f"ChatMessage({inner})"

    def __copy__(self) -> ChatMessage:
        cls = type(self)
        new = cls.__new__(cls)
        new._row = self._row
        extra = getattr(self, "_extra", None)
        if extra is not None:
            new._extra = dict(extra)
        if self.__dict__:
            _hand_to_gc(new)
            new.__dict__.update(self.__dict__)
        return new

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._values(), dict(self.__dict__)))


def _rebuild(cls: type[ChatMessage], values: tuple[Any, ...], attrs: dict[str, Any]) -> ChatMessage:
    """Unpickling: the message from its fields, and the attributes a user hung on it."""
    msg = cls(*values)
    if attrs:
        _hand_to_gc(msg)
        msg.__dict__.update(attrs)
    return msg


def _get_requested(self: ChatMessage) -> frozenset[str]:
    return _REQUEST_SETS[self._row[_REQUESTED]]


def _set_requested(self: ChatMessage, value: Iterable[str]) -> None:
    _set_in_row(self, _REQUESTED, _requested_key(value))


def _set_in_row(msg: ChatMessage, i: int, value: Any) -> None:
    """A field set: the row replaced by one with `value` at `i` (tuples are immutable, and must stay tuples)."""
    row = msg._row
    msg._row = (*row[:i], value, *row[i + 1 :])


def _get_extra(self: ChatMessage) -> dict[str, Any]:
    try:
        return self._extra
    except AttributeError:
        self._extra = {}  # (through __setattr__: a dict may come to hold anything, so the message is tracked)
        return self._extra


def _set_extra(self: ChatMessage, value: dict[str, Any]) -> None:
    self._extra = value


# the fields as the class declares them (the constructor's order), and those the row holds: all but `extra`, a dict
# of its own (its position in the declaration is where _values puts it back)
_NAMES = tuple(f.name for f in dataclasses.fields(ChatMessage))
_EXTRA = _NAMES.index("extra")
_FIELDS = _NAMES[:_EXTRA] + _NAMES[_EXTRA + 1 :]
_REQUESTED = _FIELDS.index("requested")
_OWN = frozenset({*_NAMES, "_row"})  # what __setattr__ lets by without tracking (see _field, _set_extra)

for _i, _name in enumerate(_FIELDS):
    if _name != "requested":
        setattr(ChatMessage, _name, _field(_i, _name))
ChatMessage.requested = property(
    _get_requested, _set_requested, doc='The receipts asked for ("positive-delivery", "display").'
)  # type: ignore[assignment]
ChatMessage.extra = property(
    _get_extra, _set_extra, doc="Anything else the message carried (a dict of its own, made on first use)."
)  # type: ignore[assignment]
del _i, _name


DEFAULT_WINDOW = 10_000  # messages a session keeps as ChatMessage objects (Platform(message_window=...))


class MessageLog(Sequence[ChatMessage]):
    """A session's messages (`session.messages`), oldest first: the newest `window` as live `ChatMessage`s, the
    older ones read back from the history store when asked for.

    Why a window. Each message leaves a ChatMessage at both ends, ~700 B each with its strings and datetimes: a
    soak of 1,000,000 messages kept 1.4 GB of them, and they are what every full garbage collection walks. The
    newest `window` (Platform(message_window=...), 10,000 by default: ~7 MB) stay objects, so the states that
    receipts still change and what a chat panel shows are live; past it the oldest leaves memory, counted in
    `evicted`. With `Platform(history=...)` every message is in the store, so nothing is lost: `len()` counts
    them all, and an index, slice or iteration that reaches past the window rebuilds the older ones from the
    store's events (`loader`; each such access reads the store again, and they are copies, not the live
    objects). Without a store the window is all there is: `len()` and indexes cover the window only, and
    `evicted` says how many are gone.

    A message appended while the trace was not recording (`trace.paused()`) is not in the store: once it leaves
    the window it is gone (`lost`), and the positions of the stored ones are counted without it, so that what is
    read back lines up with the window rather than repeating part of it."""

    def __init__(self, window: int = DEFAULT_WINDOW, loader: Callable[[], list[ChatMessage]] | None = None) -> None:
        self.window = window
        self.evicted = 0  # messages that left memory (in the store when there is one, else gone)
        self.lost = 0  # of those, the ones the store does not have either (appended while recording was off)
        self._recent: deque[ChatMessage] = deque()
        self._unstored: set[int] = set()  # id() of the messages in the window that the store does not have
        self._loader = loader

    def append(self, msg: ChatMessage, stored: bool = True) -> None:
        """Add the newest message (the oldest in memory leaves past the window). `stored=False`: the history store
        does not get it (the trace was not recording)."""
        recent = self._recent
        recent.append(msg)
        if not stored:
            self._unstored.add(id(msg))
        if len(recent) > self.window:
            gone = recent.popleft()
            self.evicted += 1
            if self._unstored and id(gone) in self._unstored:
                self._unstored.discard(id(gone))
                self.lost += 1

    def extend(self, messages: Iterable[ChatMessage]) -> None:
        for msg in messages:
            self.append(msg)

    @property
    def stored(self) -> bool:
        """True when messages past the window are read back from a history store."""
        return self._loader is not None

    def recent(self) -> list[ChatMessage]:
        """The messages in memory (the newest `window`), as live objects."""
        return list(self._recent)

    def older(self) -> list[ChatMessage]:
        """The messages that left memory, rebuilt from the history store (empty without one)."""
        if self._loader is None or self.evicted == self.lost:
            return []
        return self._loader()[: self.evicted - self.lost]

    def __len__(self) -> int:
        return len(self._recent) + (self.evicted - self.lost if self._loader is not None else 0)

    def __getitem__(self, key: Any) -> Any:
        recent = list(self._recent)
        base = self.evicted - self.lost if self._loader is not None else 0
        n = base + len(recent)
        if isinstance(key, slice):
            positions = range(*key.indices(n))
            if not positions or min(positions) >= base:  # within the window: no store read
                return [recent[i - base] for i in positions]
            return (self.older() + recent)[key]
        i = key + n if key < 0 else key
        if not 0 <= i < n:
            raise IndexError("session.messages index out of range")
        if i >= base:
            return recent[i - base]
        return self.older()[i]

    def __iter__(self) -> Iterator[ChatMessage]:
        recent = list(self._recent)
        yield from self.older()
        yield from recent

    def __reversed__(self) -> Iterator[ChatMessage]:
        # (Sequence's own goes index by index: one read of the whole store per message past the window)
        recent = list(self._recent)
        yield from reversed(recent)
        yield from reversed(self.older())

    def index(self, value: Any, start: int = 0, stop: int | None = None) -> int:
        """The position of `value` (as list.index). A message of the window is found without reading the store
        (the older ones are copies of other messages); else the store is read once (Sequence's own index read it
        once per position past the window)."""
        recent = list(self._recent)
        base = self.evicted - self.lost if self._loader is not None else 0
        lo, hi, _ = slice(start, stop).indices(base + len(recent))
        for i in range(max(lo, base), hi):
            msg = recent[i - base]
            if msg is value or msg == value:
                return i
        if lo < base:
            for i, msg in enumerate(self.older()[lo : min(hi, base)], lo):
                if msg is value or msg == value:
                    return i
        raise ValueError(f"{value!r} is not in session.messages")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (MessageLog, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if self.stored:
            kept = f"{self.evicted - self.lost:,} older in the history store"
            kept += f", {self.lost:,} dropped (recorded while the trace was paused)" if self.lost else ""
        else:
            kept = f"{self.evicted:,} older dropped"
        return f"<MessageLog {len(self._recent):,} in memory (window {self.window:,}), {kept}>"


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
        return (
            f"{reason or 'Request Entity Too Large'}: the server refuses messages this large (this one is "
            f"{size:,} bytes); send a shorter message or split it"
        )
    return reason


def check_message_ids(message_ids: Any) -> set[str] | None:
    """`mark_read()`'s argument: None (all) or a list of message ids, with an error that says so otherwise."""
    if message_ids is None:
        return None
    if (
        isinstance(message_ids, str)
        or not hasattr(message_ids, "__iter__")
        or not all(isinstance(i, str) for i in message_ids)
    ):
        raise TypeError(
            "mark_read() takes a list of message ids (ChatMessage.id / MessageReceived.message_id), "
            f"or nothing for all of them; not {message_ids!r}"
        )
    return set(message_ids)


def check_content_type(content_type: str) -> str:
    ct = (content_type or "").split(";")[0].strip().lower()
    if ct not in TEXT_TYPES:
        raise ValueError(f"content_type must be one of {', '.join(TEXT_TYPES)}, not {content_type!r}")
    return ct


def settle(
    msg: ChatMessage, session: Any, status: int, reason: str, latency: float, call_id: str = ""
) -> MessageDelivered | MessageFailed:
    """Record the final response of a sent message on `msg` (status, state through the IMDN table) and
    return the event that reports it (`session`: the ImSession, or None in pager mode; `call_id`: the Call-ID
    of the MESSAGE)."""
    msg.sip_status, msg.reason = status, reason
    if 200 <= status < 300:
        msg.status, msg.delivered_at = "delivered", now_utc()
        msg.state = imdn.advance(msg.state, imdn.Input.RESPONSE_2XX).value
        return MessageDelivered(
            session,
            msg.id,
            msg.text,
            msg.content_type,
            status,
            reason,
            latency,
            msg.mode,
            msg.recipient,
            msg.timestamp,
            msg.state,
            timestamp=msg.delivered_at,
            stored=status == 202,
            call_id=call_id,
        )
    msg.status = "failed"
    msg.state = imdn.advance(msg.state, imdn.Input.RESPONSE_ERROR).value
    return MessageFailed(
        session,
        msg.id,
        msg.text,
        msg.content_type,
        status,
        reason,
        msg.mode,
        msg.recipient,
        msg.timestamp,
        msg.state,
        timestamp=now_utc(),
        call_id=call_id,
    )
