"""Offline delivery: pager-mode messages kept for a known user who is not registered right now, and handed
over when they register again (store and forward, what IM servers from OCS on do for "offline messages").

Sans-IO: the caller passes `now` (monotonic seconds, for expiry) and `wall` (seconds since 1970, for the
Date header); nothing here reads the clock, opens a socket or starts a timer. The proxy (server.py)
decides what may be stored, answers 202 Accepted, and delivers what `next()` hands it.

What is kept, and for how long, is bounded three ways (`OfflineLimits`): messages per user (beyond: 480,
the user's mailbox is full), messages and bytes in all (beyond: 503, the server's store is full), and a
time to live after which a message is dropped and counted (`stats["expired"]`), delivered or not.

A stored message is the MESSAGE as it arrived, minus what belonged to its first hop (Via, Route,
Record-Route, credentials), plus a `Date` header with the time the server received it (unless the sender
put one in): From, To, Call-ID, CSeq, the body and an `Imdn-Message-ID` are kept, so the receiver sees the
original sender and the original time, and can drop a duplicate if a delivery is retried after its 200 got
lost. A message is removed only on a 2xx from the user (`delivered`) or a definitive refusal (`rejected`,
e.g. 415: the device will never take it, and it must not block the messages behind it); after a transient
failure (no answer, 480, 503, ...) it stays, in order, until the next attempt or its expiry.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from ..im import cpim
from ..im import iscomposing as ic
from ..sip import coding
from ..sip.date import format_date
from ..sip.errors import RemoteProtocolError
from ..sip.message import Request

# responses after which a delivery is tried again later (the device was there but could not take it now)
TRANSIENT = frozenset({408, 480, 486, 500, 503, 504})
HOP_BY_HOP = ("Via", "Route", "Record-Route", "Authorization", "Proxy-Authorization")


def is_composing(request: Request) -> bool:
    """Is this MESSAGE an is-composing indication (RFC 3994), which goes stale and is not kept for later: bare,
    or the way liblinphone sends it with CPIM on, in a message/cpim wrapper and under Content-Encoding? Only the
    first was seen as one, so a linphone user typing at an offline user filled their mailbox with indications
    and the real text after them got 480. The request itself is not changed (a proxy relays bodies as they
    came): a compressed body is read from a copy. A body that does not inflate or unwrap is no indication."""
    if "content-encoding" in request.headers.fields:
        request = request.copy()
        try:
            coding.decode(request)
        except RemoteProtocolError:
            return False
    ct = request.content_type or "text/plain"
    if ct == cpim.CONTENT_TYPE:
        try:
            ct = cpim.unwrap(request.body).content_type.split(";")[0].strip().lower()
        except RemoteProtocolError:
            return False
    return ct == ic.CONTENT_TYPE


@dataclass(frozen=True)
class OfflineLimits:
    """Bounds of the offline store. `max_per_user=0` turns offline delivery off (480 as before)."""

    max_per_user: int = 100  # messages waiting for one user
    max_total: int = 10_000  # messages waiting in all
    max_bytes: int = 16 * 1024 * 1024  # their size in all (a MESSAGE is at most 64 KiB)
    ttl: float = 24 * 3600.0  # seconds a message is kept before it is dropped as expired
    retry_interval: float = 30.0  # seconds between delivery attempts while the user stays registered

    def __post_init__(self) -> None:
        for name in ("max_per_user", "max_total", "max_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"OfflineLimits.{name} must be an int >= 0, not {value!r}")
        for name in ("ttl", "retry_interval"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"OfflineLimits.{name} must be a number of seconds > 0, not {value!r}")


@dataclass
class StoredMessage:
    """One message waiting for its user, ready to be delivered as `request` (give each attempt a copy)."""

    seq: int  # store order: delivery order, and expiry order (one ttl for all)
    aor: str
    request: Request
    stored_at: float  # monotonic
    expires_at: float  # monotonic
    size: int
    attempts: int = 0
    dedup_key: tuple[str, str] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Refused:
    """The store cannot take the message: answer with this status and reason."""

    status: int
    reason: str


class Journal(Protocol):
    """Where the store writes its changes through (offline_db.OfflineJournal: SQLite), if anywhere. `add` may
    raise (the message is then not kept); `remove` must not (it writes later what it cannot write now)."""

    def add(
        self, seq: int, aor: str, raw: bytes, stored_wall: float, expires_wall: float, dedup: str | None
    ) -> None: ...

    def remove(self, seq: int) -> None: ...


class OfflineStore:
    """Per-user FIFO queues under global bounds, with expiry. All methods take the time; none reads a clock. With
    a `journal`, every message stored and removed is written through to it (before the caller answers 202)."""

    def __init__(self, limits: OfflineLimits | None = None, journal: Journal | None = None) -> None:
        self.limits = limits or OfflineLimits()
        self.journal = journal
        self._all: OrderedDict[int, StoredMessage] = OrderedDict()  # by seq = by age = by expiry
        self._by_user: dict[str, OrderedDict[int, StoredMessage]] = {}
        self._dedup: dict[tuple[str, str], int] = {}  # (aor, sender + message id) -> seq
        self._seq = 0
        self.bytes = 0
        self.stats = {
            "stored": 0,
            "delivered": 0,
            "expired": 0,
            "rejected": 0,
            "refused": 0,
            "duplicates": 0,
            "attempts": 0,
        }

    @property
    def enabled(self) -> bool:
        """False when `max_per_user` is 0: the server answers 480 as if there were no store."""
        return self.limits.max_per_user > 0

    def store(self, aor: str, request: Request, now: float, wall: float) -> StoredMessage | Refused:
        """Keep `request` (a pager-mode MESSAGE) for `aor`. A retry of a message already waiting (same sender
        and Imdn-Message-ID) is not stored twice: the waiting one is returned."""
        self.expire(now)
        queue = self._by_user.get(aor)
        msg_id = request.headers.get("Imdn-Message-ID")
        dedup = (aor, f"{request.from_.uri.aor} {msg_id}") if msg_id else None
        if dedup is not None and dedup in self._dedup:
            self.stats["duplicates"] += 1
            return self._all[self._dedup[dedup]]
        limits = self.limits
        if queue is not None and len(queue) >= limits.max_per_user:
            self.stats["refused"] += 1
            return Refused(
                480,
                f"Temporarily Unavailable ({aor} is offline and already has {len(queue)} messages "
                "waiting, the most this server keeps per user)",
            )
        kept = request.copy()
        for name in HOP_BY_HOP:
            kept.headers.remove(name)
        if kept.headers.get("Date") is None:
            kept.headers.set("Date", format_date(wall))
        size = len(bytes(kept))
        if len(self._all) >= limits.max_total or self.bytes + size > limits.max_bytes:
            self.stats["refused"] += 1
            return Refused(
                503,
                f"Service Unavailable (the offline message store is full: {len(self._all)} messages, "
                f"{self.bytes} bytes)",
            )
        self._seq += 1
        stored = StoredMessage(self._seq, aor, kept, now, now + limits.ttl, size, dedup_key=dedup)
        if self.journal is not None:  # on disk before the sender hears 202 (a raise leaves nothing half-kept)
            self.journal.add(stored.seq, aor, bytes(kept), wall, wall + limits.ttl, "\n".join(dedup) if dedup else None)
        self._all[stored.seq] = stored
        self._by_user.setdefault(aor, OrderedDict())[stored.seq] = stored
        if dedup is not None:
            self._dedup[dedup] = stored.seq
        self.bytes += size
        self.stats["stored"] += 1
        return stored

    def next(self, aor: str, now: float) -> StoredMessage | None:
        """The oldest message still waiting for `aor` (expired ones are dropped first), or None."""
        self.expire(now)
        queue = self._by_user.get(aor)
        if not queue:
            return None
        msg = next(iter(queue.values()))
        msg.attempts += 1
        self.stats["attempts"] += 1
        return msg

    def pending(self, aor: str, now: float) -> list[StoredMessage]:
        """Every message waiting for `aor`, oldest first."""
        self.expire(now)
        return list(self._by_user.get(aor, {}).values())

    def delivered(self, msg: StoredMessage) -> None:
        """The user's device answered 2xx: the message leaves the store."""
        if self._remove(msg):
            self.stats["delivered"] += 1

    def rejected(self, msg: StoredMessage) -> None:
        """The device refused the message for good (not a TRANSIENT status): it leaves the store."""
        if self._remove(msg):
            self.stats["rejected"] += 1

    def expire(self, now: float) -> int:
        """Drop (and count) the messages whose time to live is over; returns how many."""
        dropped = 0
        while self._all:
            oldest = next(iter(self._all.values()))
            if oldest.expires_at > now:
                break
            self._remove(oldest)
            dropped += 1
        self.stats["expired"] += dropped
        return dropped

    def restore(self, rows: list[tuple[int, str, bytes, float, float, str | None]], now: float, wall: float) -> int:
        """Take back the messages a journal kept (oldest first: seq, aor, raw, stored_wall, expires_wall, dedup),
        their wall-clock deadlines turned into this process's monotonic ones; expired ones are dropped (and
        removed from the journal). Returns how many were kept."""
        from ..sip.errors import RemoteProtocolError
        from ..sip.parser import parse_message

        kept = 0
        for seq, aor, raw, stored_wall, expires_wall, dedup in rows:
            self._seq = max(self._seq, seq)
            try:  # kept without its hop-by-hop headers: a placeholder Via lets the parser read it, then goes
                start, _, rest = raw.partition(b"\r\n")
                request = parse_message(start + b"\r\nVia: SIP/2.0/UDP stored.invalid;branch=z9hG4bKstored\r\n" + rest)
                request.headers.remove("Via")
            except RemoteProtocolError:
                request = None
            if expires_wall <= wall or not isinstance(request, Request):
                if self.journal is not None:
                    self.journal.remove(seq)
                self.stats["expired"] += 1
                continue
            key = tuple(dedup.split("\n", 1)) if dedup and "\n" in dedup else None
            stored = StoredMessage(
                seq, aor, request, now - (wall - stored_wall), now + (expires_wall - wall), len(raw), dedup_key=key
            )  # type: ignore[arg-type]
            self._all[seq] = stored
            self._by_user.setdefault(aor, OrderedDict())[seq] = stored
            if key is not None:
                self._dedup[key] = seq  # type: ignore[index]
            self.bytes += stored.size
            kept += 1
        return kept

    def _remove(self, msg: StoredMessage) -> bool:
        if self._all.pop(msg.seq, None) is None:
            return False
        queue = self._by_user.get(msg.aor)
        if queue is not None:
            queue.pop(msg.seq, None)
            if not queue:
                del self._by_user[msg.aor]
        if msg.dedup_key is not None:
            self._dedup.pop(msg.dedup_key, None)
        self.bytes -= msg.size
        if self.journal is not None:  # last: the memory is consistent whatever the journal does
            self.journal.remove(msg.seq)
        return True

    def count(self, aor: str) -> int:
        """Messages waiting for `aor` (expired ones included until the next call that takes the time)."""
        return len(self._by_user.get(aor, ()))

    def snapshot(self, now: float) -> dict[str, int]:
        """AOR -> number of messages waiting (for `Server.offline`)."""
        self.expire(now)
        return {aor: len(q) for aor, q in self._by_user.items()}

    def __len__(self) -> int:
        return len(self._all)
