"""The trace: every SIP message on the wire, every API event, every dropped datagram.

Recording sits on the hot path, so it appends to plain Python lists (the tails of `Column`s, sealed every 1,024
rows into tuples the garbage collector does not walk) and does nothing else; events are packed the same way
(packed.py). Turning them into DataFrames is the analysis layer's job and happens only when asked. Credentials are
redacted as they are recorded, so nothing downstream (frames, pcaps, reprs) can leak them.

Besides the raw columns, each SIP message gets its few header fields pulled out (extract.py: Call-ID,
CSeq, tags, branch, ...), either as it is recorded (`index="eager"`, the default: ~4 µs per message, so
that a 1,000,000-row frame builds in about a second) or on the first frame build (`index="lazy"`: nothing
extra on the hot path, the first build pays). `trace.enabled = False` (or `with trace.paused():`) stops
recording SIP messages and events altogether; drops are always kept (the most recent `max_drops`,
10,000 by default, at most 2 KB each; `drop_count` counts them all). Only messages that parse as SIP enter the
message columns: garbage goes to the drop list alone, so a flood of it cannot fill memory.

With `Platform(history=path)` a HistoryStore (store.py) is attached: each record is also handed to it, which
costs one queue put here; the SQL happens on the store's writer thread, never on the recording thread.

The analysis methods (`sip()`, `messages()`, `events()`, `to_pcap()`, `ladder()`, `plot`) are the analysis
layer's functions, plugged in by `notebook_im/__init__.py` (`Trace.analysis`) and imported on first use, so
this module imports nothing above `sip/` and `import notebook_im` stays light.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .extract import FIELDS, extract, fields_of
from .packed import EventPacker

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

_AUTH = re.compile(rb"(?im)^((?:proxy-)?authorization[ \t]*:[ \t]*[A-Za-z]+)[^\r\n]*")


def redact(raw: bytes) -> bytes:
    """Replace the credentials of Authorization/Proxy-Authorization headers with `<redacted>`."""
    if b"uthorization" not in raw and b"UTHORIZATION" not in raw:
        return raw
    return _AUTH.sub(rb"\1 <redacted>", raw)


CHUNK = 1024  # rows per sealed chunk of a Column


class Column:
    """One column of the trace: sealed chunks of CHUNK values (tuples) and a list tail that takes the appends.

    Why chunks: a list of a million values is walked value by value in every full garbage collection (about
    30 ns each, so the SIP columns of a 10,000-message chat cost each collection ~18 ms of a stalled loop
    thread); a tuple of plain values (str, float, bytes, tuples of those) is untracked by the collector and
    never walked again, so sealed chunks cost nothing. The writer appends to `tail` without a lock
    (`column.append` is the tail's own append); sealing a full tail, and every read of values, hold `lock`; a
    length read without it may be one chunk short during a seal, never over. The same lock is shared by the
    columns of one trace (re-entrant)."""

    __slots__ = ("chunks", "tail", "append", "lock")

    def __init__(self, lock: threading.RLock) -> None:
        self.chunks: list[tuple] = []
        self.tail: list[Any] = []
        self.append = self.tail.append
        self.lock = lock

    def __len__(self) -> int:
        # No lock (the recorder asks on every message): while a seal moves a chunk the count is at most one
        # chunk short, never over, so rows counted are always there; reads then slice under the lock.
        return len(self.chunks) * CHUNK + len(self.tail)

    def seal(self) -> None:
        """Move full CHUNKs of the tail into sealed chunks (the tail loses them before the chunks gain them)."""
        tail = self.tail
        if len(tail) >= CHUNK:
            with self.lock:
                while len(tail) >= CHUNK:
                    chunk = tuple(tail[:CHUNK])
                    del tail[:CHUNK]
                    self.chunks.append(chunk)

    def extend(self, values: Any) -> None:
        self.tail.extend(values)
        self.seal()

    def clear(self) -> None:
        with self.lock:
            self.chunks.clear()
            self.tail.clear()

    def to_list(self) -> list[Any]:
        """Every value, as a new list."""
        with self.lock:
            out: list[Any] = []
            extend = out.extend  # a tuple is copied in one go: faster than chaining the values one by one
            for chunk in self.chunks:
                extend(chunk)
            extend(self.tail)
            return out

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            with self.lock:
                start, stop, step = key.indices(len(self))
                if step != 1 or start >= stop:
                    return self.to_list()[key]
                sealed = len(self.chunks)
                first, last = min(start // CHUNK, sealed), (stop - 1) // CHUNK  # (a tail may be longer than a chunk)
                out = []
                for chunk in self.chunks[first : min(last + 1, sealed)]:
                    out.extend(chunk)
                if last >= sealed:
                    out.extend(self.tail[: stop - sealed * CHUNK])
                return out[start - first * CHUNK : stop - first * CHUNK]
        with self.lock:
            n = len(self.chunks) * CHUNK + len(self.tail)
            i = key + n if key < 0 else key
            if not 0 <= i < n:
                raise IndexError("trace column index out of range")
            chunk, offset = divmod(i, CHUNK)
            return self.chunks[chunk][offset] if chunk < len(self.chunks) else self.tail[i - len(self.chunks) * CHUNK]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.to_list())


@dataclass(frozen=True)
class SipRecord:
    timestamp: float
    direction: str  # "in" / "out"
    transport: str  # "udp" / "tcp"
    local: tuple[str, int]
    remote: tuple[str, int]
    raw: bytes
    owner: str  # which endpoint or server recorded it


@dataclass(frozen=True)
class DropRecord:
    timestamp: float
    transport: str
    remote: tuple[str, int] | None
    reason: str
    raw: bytes
    owner: str


@dataclass(frozen=True)
class EventRecord:
    timestamp: float
    owner: str
    event: Any


class Trace:
    """Append-only record of SIP messages, API events and drops. Thread-safe for readers."""

    def __init__(
        self,
        *,
        max_records: int | None = 1_000_000,
        index: str = "eager",
        enabled: bool = True,
        name: str = "",
        max_drops: int = 10_000,
    ) -> None:
        if index not in ("eager", "lazy"):
            raise ValueError(f"index must be 'eager' or 'lazy', not {index!r}")
        self.max_records = max_records
        self.max_drops = max_drops  # the drop list keeps the most recent max_drops (at most 2 KB each)
        self.index = index
        self.enabled = enabled
        self.name = name
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()
        # SIP messages as columns: cheap appends, easy DataFrame construction later, sealed in untracked chunks
        self._columns_lock = threading.RLock()
        column = functools.partial(Column, self._columns_lock)
        self.sip_ts: Column = column()  # float
        self.sip_direction: Column = column()  # str
        self.sip_transport: Column = column()  # str
        self.sip_local: Column = column()  # (host, port)
        self.sip_remote: Column = column()  # (host, port)
        self.sip_raw: Column = column()  # bytes
        self.sip_owner: Column = column()  # str
        self._sip_columns = (
            self.sip_ts,
            self.sip_direction,
            self.sip_transport,
            self.sip_local,
            self.sip_remote,
            self.sip_raw,
            self.sip_owner,
        )
        # header fields pulled out of sip_raw (extract.FIELDS), row-aligned; filled eagerly or lazily
        self._fields: tuple[Column, ...] = tuple(column() for _ in FIELDS)
        # API events packed as tuples of plain values (packed.py: the GC untracks them, so a long chat does not
        # make every full collection longer); event_records() unpacks them
        self._events: Column = column()
        self._packer = EventPacker()
        self.drops: deque[DropRecord] = deque()  # the most recent max_records drops
        self.drops_total = 0  # every drop, also those no longer kept
        self.dropped_sip = 0  # messages not kept because max_records was reached
        self.skipped = 0  # messages and events not recorded because recording was off
        self.store: Any = None  # a HistoryStore (Platform(history=...)): every record is also queued for it

    def record_sip(
        self,
        direction: str,
        transport: str,
        local: tuple[str, int],
        remote: tuple[str, int],
        raw: bytes,
        owner: str,
        ts: float | None = None,
        fields: tuple | None = None,
        *,
        message: Any = None,
    ) -> None:
        """Record one SIP message as it went over the wire (the stack's `TraceSink`; credentials redacted).
        `message` (its parse, when the caller has one) or `fields` (its extract.FIELDS) saves scanning `raw`."""
        if fields is None and message is not None and self.index == "eager":
            fields = fields_of(message)
        if not self.enabled:
            self.skipped += 1
            return
        raw = redact(raw)
        if ts is None:
            ts = time.time()
        if self.store is not None:  # the store keeps everything, also past max_records (one queue put)
            self.store.put_sip(ts, direction, transport, local, remote, raw, owner)
        if self.max_records is not None and len(self.sip_ts) >= self.max_records:
            self.dropped_sip += 1
            return
        if self.index == "eager":
            with self._index_lock:
                if len(self._fields[0]) == len(self.sip_ts):  # not behind (index may have been lazy before)
                    for column, value in zip(self._fields, fields or extract(raw)):
                        column.append(value)
                    if len(self._fields[0].tail) >= CHUNK:  # the index columns are sealed under the index lock,
                        for column in self._fields:  # which a lazy index holds while it counts rows done
                            column.seal()
        self.sip_ts.append(ts)
        self.sip_direction.append(direction)
        self.sip_transport.append(transport)
        self.sip_local.append(local)
        self.sip_remote.append(remote)
        self.sip_raw.append(raw)
        self.sip_owner.append(owner)
        if len(self.sip_owner.tail) >= CHUNK:  # every CHUNK rows: seal the full tails (under the columns' lock)
            with self._columns_lock:
                for col in self._sip_columns:
                    col.seal()

    def record_drop(self, transport: str, remote: tuple[str, int] | None, reason: str, raw: bytes, owner: str) -> None:
        """Record a datagram or stream chunk that was dropped, with the reason (at most 2 KB of it kept)."""
        with self._lock:
            self.drops_total += 1
            limit = min(self.max_drops, self.max_records) if self.max_records is not None else self.max_drops
            while len(self.drops) >= limit > 0:
                self.drops.popleft()
            record = DropRecord(time.time(), transport, remote, reason, redact(raw[:2048]), owner)
            self.drops.append(record)
        if self.store is not None:
            self.store.put_drop(record)

    def record_event(self, owner: str, event: Any) -> None:
        """Record one API event of `owner` (called as events are emitted)."""
        if not self.enabled:
            self.skipped += 1
            return
        ts = time.time()
        with self._lock:
            self._events.append(self._packer.pack(ts, owner, event))
            self._events.seal()
        if self.store is not None:
            self.store.put_event(ts, owner, event)

    def load_records(self, sip: list[tuple], drops: list[DropRecord]) -> None:
        """Append SIP messages and drops recorded elsewhere (the history store's earlier ones), without handing them
        to a store: `sip` rows are (timestamp, owner, direction, transport, local, remote, raw). Their header
        fields are extracted on the first frame build, so opening a large store stays fast."""
        with self._index_lock, self._lock:
            if sip:
                ts, owner, direction, transport, local, remote, raw = zip(*sip)
                self.sip_ts.extend(ts)
                self.sip_direction.extend(direction)
                self.sip_transport.extend(transport)
                self.sip_local.extend(local)
                self.sip_remote.extend(remote)
                self.sip_raw.extend(raw)
                self.sip_owner.extend(owner)  # last: readers take len(sip_owner) as the row count
            self.drops.extend(drops)
            self.drops_total += len(drops)

    def add_event_records(self, records: list[EventRecord]) -> None:
        """Append events recorded elsewhere (the history store's earlier ones), without handing them to a store."""
        with self._lock:
            pack = self._packer.pack
            self._events.extend([pack(r.timestamp, r.owner, r.event) for r in records])

    def attach_store(self, store: Any) -> None:
        """Also hand every new record to `store` (a `trace.store.HistoryStore`, which writes it on its own
        thread); Platform(history=...) does this after loading the store's earlier records."""
        self.store = store

    def detach_store(self) -> None:
        """Stop handing records to the store (Platform.shutdown() does this before closing it)."""
        self.store = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[Trace]:
        """`with trace.paused(): ...` records nothing inside the block (drops are still kept)."""
        before = self.enabled
        self.enabled = False
        try:
            yield self
        finally:
            self.enabled = before

    def clear(self) -> None:
        """Forget everything recorded so far (columns, events, drops, counters). A history store attached to the
        trace keeps its rows: it is an append-only log (delete its file to forget it)."""
        with self._index_lock, self._lock:
            for column in (
                self.sip_owner,
                self.sip_ts,
                self.sip_direction,
                self.sip_transport,
                self.sip_local,
                self.sip_remote,
                self.sip_raw,
                *self._fields,
            ):
                column.clear()
            self._events.clear()
            self._packer.clear()
            self.drops.clear()
            self.dropped_sip = self.skipped = self.drops_total = 0

    def header_columns(self, n: int) -> tuple[list, ...]:
        """The extracted header columns (extract.FIELDS) of the first n rows, extracting any not done yet: what the
        frame builders and the dataset writer read."""
        with self._index_lock:
            done = len(self._fields[0])
            if done < n:
                appenders = [c.append for c in self._fields]
                for raw in self.sip_raw[done:n]:
                    for append, value in zip(appenders, extract(raw)):
                        append(value)
                for col in self._fields:
                    col.seal()
            return tuple(c[:n] for c in self._fields)

    # -- reading -----------------------------------------------------------------------------------
    def sip_columns(self, lo: int, hi: int) -> tuple[list, ...]:
        """Rows lo..hi of the SIP columns (timestamp, direction, transport, local, remote, raw, owner), read
        together: a consistent slice while the loop thread keeps recording."""
        with self._columns_lock:
            return (
                self.sip_ts[lo:hi],
                self.sip_direction[lo:hi],
                self.sip_transport[lo:hi],
                self.sip_local[lo:hi],
                self.sip_remote[lo:hi],
                self.sip_raw[lo:hi],
                self.sip_owner[lo:hi],
            )

    def sip_records(self) -> list[SipRecord]:
        """The recorded SIP messages as SipRecord objects (raw bytes, direction, addresses, time), oldest first."""
        with self._columns_lock:
            n = len(self.sip_owner)  # owner is appended last: every column has at least n entries
            columns = [c[:n] for c in self._sip_columns]
        return [SipRecord(*row) for row in zip(*columns)]

    def event_records(self) -> list[EventRecord]:
        """The recorded API events, oldest first (built on each call: each event equals the one emitted and points
        at the same session and participant objects). `trace.events()` is the same as a DataFrame."""
        with self._lock:
            unpack = self._packer.unpack
            return [EventRecord(*unpack(record)) for record in self._events.to_list()]

    @property
    def events_list(self) -> list[EventRecord]:
        """The same as event_records() (the name of the list the events were once kept in)."""
        return self.event_records()

    @property
    def event_count(self) -> int:
        """How many API events are recorded (without unpacking them)."""
        return len(self._events)

    @property
    def drop_count(self) -> int:
        """How many datagrams/stream chunks were dropped (also those no longer in `drops`)."""
        return self.drops_total

    def __len__(self) -> int:
        return len(self.sip_owner)

    def __repr__(self) -> str:
        off = "" if self.enabled else " (recording off)"
        return f"<Trace {len(self)} SIP messages, {len(self._events)} events, {len(self.drops)} dropped{off}>"

    # -- analysis (pandas, imported on first use) -------------------------------------------------------
    # The bodies of these methods live in the analysis layer (frames.py, pcap.py, dataset.py, ladder.py,
    # plots.py: above the API, with pandas). The recorder sits below the API and imports nothing above `sip/`,
    # so the top package (`notebook_im/__init__.py`, which composes the layers) plugs them in by name here;
    # each is imported on first use.
    analysis: ClassVar[dict[str, str]] = {}

    def _view(self, name: str) -> Any:
        target = self.analysis.get(name)
        if target is None:
            raise RuntimeError(f"trace.{name} needs the analysis layer, which `import notebook_im` plugs in")
        module, _, attr = target.partition(":")
        return functools.reduce(getattr, attr.split("."), importlib.import_module(module))

    def sip(self, *, owner: str | None = None, call_id: str | None = None, raw: bool = True) -> pd.DataFrame:
        """One row per SIP message on the wire (schema: `notebook_im.trace.frames.SIP_SCHEMA`).
        `raw=False` leaves out the raw message text (faster for very large traces)."""
        return self._view("sip")(self, owner=owner, call_id=call_id, raw=raw)

    def messages(
        self, *, owner: str | None = None, session_id: str | None = None, source: str = "auto"
    ) -> pd.DataFrame:
        """One row per IM message sent or received (schema: `frames.MESSAGES_SCHEMA`). `source="events"`
        builds it from the API events, `"sip"` reconstructs it from the SIP messages (what a pcap gives),
        `"auto"` uses the events when there are any."""
        return self._view("messages")(self, owner=owner, session_id=session_id, source=source)

    def events(self, *, owner: str | None = None, session_id: str | None = None) -> pd.DataFrame:
        """One row per API event (schema: `frames.EVENTS_SCHEMA`)."""
        return self._view("events")(self, owner=owner, session_id=session_id)

    def drops_frame(self) -> pd.DataFrame:
        """One row per dropped datagram or stream chunk (schema: `frames.DROPS_SCHEMA`)."""
        return self._view("drops")(self)

    def to_parquet(self, path: Any, *, frame: str = "sip", **kwargs: Any) -> None:
        """Write one frame ("sip", "messages" or "events") to Parquet (pyarrow)."""
        if frame not in ("sip", "messages", "events"):
            raise ValueError(f"frame must be 'sip', 'messages' or 'events', not {frame!r}")
        getattr(self, frame)().to_parquet(path, index=False, **kwargs)

    def to_parquet_dataset(self, path: Any, **kwargs: Any) -> Any:
        """Flush the SIP messages recorded since the last flush to `path` into the Parquet dataset layout a capture
        import writes (`nim.read_pcap(p, to=path)`), so `nim.open_traces(path)` queries a live chat and a production
        capture the same way. Returns the `ImportResult` (see `trace.dataset.write_dataset`)."""
        return self._view("dataset")(self, path, **kwargs)

    def to_pcap(self, path: Any, *, owner: str | None = None) -> int:
        """Write the SIP messages as a pcap file Wireshark/tshark read as SIP; returns the packet count."""
        return self._view("pcap")(self.sip(owner=owner), path)

    def ladder(self, **filters: Any) -> Any:
        """A ladder (sequence) diagram of the SIP messages (see `notebook_im.trace.ladder.Ladder`)."""
        return self._view("ladder")(self.sip(), **filters)

    @property
    def plot(self) -> Any:
        """Ready plots: `trace.plot.latency()`, `.messages_per_participant()`, `.composing_time()`."""
        return self._view("plots")(self)
