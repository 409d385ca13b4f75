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
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from . import budget as budget_module
from .budget import TraceBudget, format_size
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
# bytes a SIP row holds beyond its raw message: timestamp, address tuples, list slots, the extracted header fields
# (tracemalloc: ~480 B; tests/trace/test_budget.py holds the estimate to tracemalloc's figure)
SIP_ROW_OVERHEAD = 512 + sys.getsizeof(b"")
# the characters of an extracted header field (Call-ID, tags, branch, ...) beyond this many a row are counted on top
# of SIP_ROW_OVERHEAD, which covers ordinary ones: a message with a 30 KB Call-ID is held twice (raw and field)
FIELD_SLACK = 64
_STR_FIELDS = tuple(i for i, name in enumerate(FIELDS) if name not in ("status", "cseq", "body_size"))


class TraceBudgetWarning(UserWarning):
    """A trace evicted its oldest rows from memory to stay within its byte budget (said once per trace)."""


@dataclass(frozen=True)
class Evicted:
    """What a trace evicted from memory to stay within its budget: SIP messages and events (rows), their bytes,
    and of the rows how many are still in the history store (`spilled`: `full=True` reads them back) and how
    many are gone (`dropped`: no history store was attached)."""

    sip: int = 0
    events: int = 0
    bytes: int = 0
    spilled: int = 0
    dropped: int = 0

    def __bool__(self) -> bool:
        return bool(self.sip or self.events)


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

    def drop_first(self, n: int) -> None:
        """Forget the first n values (eviction): a whole sealed chunk is one list pop; anything else is re-cut."""
        with self.lock:
            if n <= 0:
                return
            if n == CHUNK and self.chunks:
                del self.chunks[0]
                return
            rest = self.to_list()[n:]
            self.chunks.clear()
            self.tail.clear()
            self.extend(rest)

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


@dataclass
class SipSnapshot:
    """The SIP columns of a trace at one moment (`Trace.sip_snapshot()`), with the attribute names of the Trace's
    columns, so the frame builders read either. `first` is the position of its first row among all rows the
    trace recorded (the rows evicted before it)."""

    sip_ts: list[float]
    sip_direction: list[str]
    sip_transport: list[str]
    sip_local: list[tuple[str, int]]
    sip_remote: list[tuple[str, int]]
    sip_raw: list[bytes]
    sip_owner: list[str]
    fields: tuple[list, ...]
    first: int = 0

    def __len__(self) -> int:
        return len(self.sip_owner)

    def sip_snapshot(self) -> SipSnapshot:
        return self

    def header_columns(self, n: int) -> tuple[list, ...]:
        return tuple(c[:n] for c in self.fields)


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
        max_records: int | None = None,
        index: str = "eager",
        enabled: bool = True,
        name: str = "",
        max_drops: int = 10_000,
        budget: TraceBudget | None = None,
    ) -> None:
        if index not in ("eager", "lazy"):
            raise ValueError(f"index must be 'eager' or 'lazy', not {index!r}")
        if max_records is not None and (isinstance(max_records, bool) or not isinstance(max_records, int)):
            raise TypeError(f"max_records must be an int or None, not {max_records!r}")
        if budget is not None and not isinstance(budget, TraceBudget):
            raise TypeError(f"budget must be a notebook_im.record.budget.TraceBudget or None, not {budget!r}")
        # a cap on the SIP messages kept in memory on top of the byte budget (None: the budget alone decides):
        # past it new messages are not kept in memory (counted in dropped_sip; a history store still gets them)
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
        self._reader: Any = None  # the store the evicted rows are read back from (kept after detach_store)
        # the byte budget (budget.py): bytes of each sealed chunk, oldest first, and what was evicted
        self._sip_chunk_bytes: deque[int] = deque()
        self._sip_chunk_fields: deque[bool] = deque()  # whether each one's extracted fields are counted yet
        self._event_chunk_bytes: deque[int] = deque()
        # the live objects (packer numbers) each sealed event chunk points at, and in how many chunks each is: an
        # evicted chunk's objects no event in memory points at any more are released (packed.py: ended sessions)
        self._event_chunk_refs: deque[set[int]] = deque()
        self._ref_chunks: dict[int, int] = {}
        self._evicted = {"sip": 0, "events": 0, "bytes": 0, "spilled": 0, "dropped": 0}
        self._warned = False
        self.budget: TraceBudget | None = None
        if budget is not None:
            self.budget = budget
            budget.register(self)

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
                self._count_sip_chunks()
            if self.budget is not None:  # (no lock of ours held: the budget may evict from any trace)
                self.budget.enforce()

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
            sealed = len(self._events.tail) >= CHUNK
            if sealed:
                self._events.seal()
                self._count_event_chunks()
        if self.store is not None:
            self.store.put_event(ts, owner, event)
        if sealed and self.budget is not None:
            self.budget.enforce()

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
                with self._columns_lock:
                    self._count_sip_chunks()
            self.drops.extend(drops)
            self.drops_total += len(drops)
        if self.budget is not None:
            self.budget.enforce()

    def add_event_records(self, records: list[EventRecord]) -> None:
        """Append events recorded elsewhere (the history store's earlier ones), without handing them to a store."""
        with self._lock:
            pack = self._packer.pack
            self._events.extend([pack(r.timestamp, r.owner, r.event) for r in records])
            self._count_event_chunks()
        if self.budget is not None:
            self.budget.enforce()

    def attach_store(self, store: Any) -> None:
        """Also hand every new record to `store` (a `trace.store.HistoryStore`, which writes it on its own
        thread); Platform(history=...) does this after loading the store's earlier records. Rows evicted from
        memory while it is attached stay readable there (`full=True`)."""
        self.store = store
        self._reader = store

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
            for column in (*self._sip_columns, *self._fields):
                column.clear()
            self._events.clear()
            self._packer.clear()
            self.drops.clear()
            self.dropped_sip = self.skipped = self.drops_total = 0
            self._sip_chunk_bytes.clear()
            self._sip_chunk_fields.clear()
            self._event_chunk_bytes.clear()
            self._event_chunk_refs.clear()
            self._ref_chunks.clear()
            self._evicted = dict.fromkeys(self._evicted, 0)

    # -- the byte budget (budget.py) -------------------------------------------------------------------------
    def _count_sip_chunks(self) -> None:
        """Count the bytes of SIP chunks sealed since the last call (columns' lock held)."""
        chunks = self.sip_raw.chunks
        sizes = self._sip_chunk_bytes
        while len(sizes) < len(self.sip_owner.chunks) and len(sizes) < len(chunks):
            chunk = chunks[len(sizes)]
            fields = self._long_fields(len(sizes))
            sizes.append(sum(map(len, chunk)) + SIP_ROW_OVERHEAD * len(chunk) + (fields or 0))
            self._sip_chunk_fields.append(fields is not None)

    def _long_fields(self, k: int) -> int | None:
        """Bytes of the extracted header fields of sealed SIP chunk `k` longer than FIELD_SLACK (what
        SIP_ROW_OVERHEAD does not cover), or None when they are not extracted yet (columns' lock held)."""
        if len(self._fields[0].chunks) <= k:
            return None
        total = 0
        for i in _STR_FIELDS:  # (summed at C speed: the characters of a column beyond FIELD_SLACK a row)
            chunk = self._fields[i].chunks[k]
            total += max(0, sum(map(len, filter(None, chunk))) - FIELD_SLACK * len(chunk))
        return total

    def _count_late_fields(self) -> bool:
        """Count the fields extracted after their chunk was sealed (a lazy index, rows loaded from a store);
        True when something was added, so the caller enforces the budget once it holds no lock of ours."""
        added = False
        with self._columns_lock:
            counted, sizes = self._sip_chunk_fields, self._sip_chunk_bytes
            for k in range(min(len(counted), len(sizes))):
                if not counted[k]:
                    fields = self._long_fields(k)
                    if fields is None:
                        break
                    sizes[k] += fields
                    counted[k] = True
                    added = added or fields > 0
        return added

    def _count_event_chunks(self) -> None:
        """Count the bytes of event chunks sealed since the last call (the trace's lock held), and the live
        objects each points at (`EventPacker.measure`)."""
        chunks = self._events.chunks
        sizes = self._event_chunk_bytes
        while len(sizes) < len(chunks):
            total, refs = self._packer.measure(chunks[len(sizes)])
            sizes.append(total)
            self._event_chunk_refs.append(refs)
            counts = self._ref_chunks
            for n in refs:
                counts[n] = counts.get(n, 0) + 1

    def use_budget(self, budget: TraceBudget | None) -> None:
        """Count this trace against `budget` from now on (None: no budget); a smaller one evicts at once."""
        if self.budget is not None:
            self.budget.unregister(self)
        self.budget = budget
        if budget is not None:
            budget.register(self)

    @property
    def sealed_bytes(self) -> int:
        """Bytes of the sealed chunks in memory (what the budget counts)."""
        return sum(self._sip_chunk_bytes) + sum(self._event_chunk_bytes)

    @property
    def nbytes(self) -> int:
        """Bytes of the trace in memory, about: the sealed chunks, plus the unsealed tails (under 1,024 rows each)
        estimated the same way."""
        tail_raw = sum(map(len, list(self.sip_raw.tail)))
        n_sip, n_events = len(self.sip_raw.tail), len(self._events.tail)
        per_event = (sum(self._event_chunk_bytes) // max(1, len(self._event_chunk_bytes) * CHUNK)) or 200
        return self.sealed_bytes + tail_raw + SIP_ROW_OVERHEAD * n_sip + per_event * n_events

    def oldest_chunk(self) -> tuple[float, str] | None:
        """(time of its first row, "sip" or "events") of the oldest sealed chunk in memory, or None."""
        oldest = None
        with self._columns_lock:
            if self._sip_chunk_bytes and self.sip_ts.chunks:
                oldest = (self.sip_ts.chunks[0][0], "sip")
            if self._event_chunk_bytes and self._events.chunks:
                ts = self._events.chunks[0][0][0]
                if oldest is None or ts < oldest[0]:
                    oldest = (ts, "events")
        return oldest

    def evict_oldest(self, kind: str) -> int:
        """Evict the oldest sealed chunk of SIP messages or events from memory (the budget calls this); returns
        its bytes. With a history store attached the rows stay there (spilled), else they are dropped; either
        way they are counted in `evicted`, and the first eviction warns once."""
        if kind == "sip":
            with self._index_lock, self._columns_lock:
                if not self._sip_chunk_bytes or not all(c.chunks for c in self._sip_columns):
                    return 0
                for col in self._sip_columns:
                    del col.chunks[0]
                done = len(self._fields[0])  # the header fields extracted so far cover the first `done` rows
                for col in self._fields:
                    col.drop_first(min(done, CHUNK))
                n = self._sip_chunk_bytes.popleft()
                self._sip_chunk_fields.popleft()
        else:
            with self._lock, self._columns_lock:
                if not self._event_chunk_bytes or not self._events.chunks:
                    return 0
                del self._events.chunks[0]
                n = self._event_chunk_bytes.popleft()
                self._release_refs(self._event_chunk_refs.popleft())
        counts = self._evicted
        counts[kind] += CHUNK
        counts["bytes"] += n
        counts["spilled" if self.store is not None else "dropped"] += CHUNK
        if not self._warned:
            self._warned = True
            self._warn_evicted(kind)
        return n

    def _release_refs(self, refs: set[int]) -> None:
        """The evicted event chunk pointed at the live objects `refs`: release those no sealed chunk and no event
        of the tail points at any more (the trace's lock held), so an ended session does not stay in memory."""
        counts = self._ref_chunks
        gone = set()
        for ref in refs:
            left = counts[ref] - 1
            if left:
                counts[ref] = left
            else:
                del counts[ref]
                gone.add(ref)
        if gone:
            self._packer.release(gone - self._packer.refs(self._events.tail))

    def _warn_evicted(self, kind: str) -> None:
        budget = self.budget
        limit = format_size(budget.limit) if budget is not None else "?"
        what = "SIP messages" if kind == "sip" else "events"
        # (a budget of its own, Platform(trace_budget="64MiB"), is not the process's: the advice names the right one)
        shared = budget is not None and budget is budget_module._process
        if shared:
            whose = "the traces of this process"
        elif budget is not None and len(budget.traces) > 1:
            whose = "the traces sharing it"
        else:
            whose = "this trace"
        more = "nim.trace_budget().set_limit('512MiB')" if shared else "trace.budget.set_limit('512MiB')"
        if self.store is not None:
            fate = (
                f"they stay in the history store {str(getattr(self.store, 'path', ''))!r}: trace.sip(full=True), "
                ".messages(full=True) and .events(full=True) read them back"
            )
        else:
            fate = (
                "they are dropped (no history store: Platform(history='chat.sqlite') keeps everything on disk); "
                f"{more} keeps more in memory"
            )
        warnings.warn(
            TraceBudgetWarning(
                f"trace {self.name or 'unnamed'!r}: the trace budget ({limit} for {whose}) is "
                f"full, so the oldest {CHUNK} {what} left memory; {fate}. trace.evicted counts what left"
            ),
            stacklevel=3,
        )

    @property
    def evicted(self) -> Evicted:
        """What was evicted from memory to stay within the budget (rows, bytes; spilled to the store or dropped)."""
        return Evicted(**self._evicted)

    @property
    def sip_total(self) -> int:
        """SIP messages recorded in memory since the trace was made or cleared, evicted ones included: a position
        that stays put when the oldest rows are evicted (`sip_total - len(trace)` rows are gone)."""
        with self._columns_lock:
            return self._evicted["sip"] + len(self.sip_owner)

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: rows and bytes in memory, what was evicted (spilled or dropped), skipped and capped rows,
        drops, the budget."""
        ev = self.evicted
        return {
            "sip_messages": len(self),
            "events": self.event_count,
            "bytes": self.nbytes,
            "evicted_sip": ev.sip,
            "evicted_events": ev.events,
            "evicted_bytes": ev.bytes,
            "spilled": ev.spilled,
            "dropped": ev.dropped,
            "dropped_sip_max_records": self.dropped_sip,
            "skipped": self.skipped,
            "drops": self.drops_total,
            "budget": self.budget.limit if self.budget is not None else None,
        }

    def header_columns(self, n: int) -> tuple[list, ...]:
        """The extracted header columns (extract.FIELDS) of the first n rows, extracting any not done yet: what the
        frame builders and the dataset writer read."""
        with self._index_lock:
            done = self._extract_up_to(n)
            out = tuple(c[:n] for c in self._fields)
            grew = done < n and self._count_late_fields()
        if grew and self.budget is not None:  # (no lock of ours held, as after a seal)
            self.budget.enforce()
        return out

    def _extract_up_to(self, n: int) -> int:
        """Extract the header fields of SIP rows up to `n` that have none yet (a lazy index, rows loaded from a
        store); returns how many rows had them before. The caller holds `_index_lock`."""
        done = len(self._fields[0])
        if done < n:
            appenders = [c.append for c in self._fields]
            for raw in self.sip_raw[done:n]:
                for append, value in zip(appenders, extract(raw)):
                    append(value)
            for col in self._fields:
                col.seal()
        return done

    # -- reading -----------------------------------------------------------------------------------
    def sip_columns(self, lo: int, hi: int) -> tuple[list, ...]:
        """Rows lo..hi of the SIP columns (timestamp, direction, transport, local, remote, raw, owner), read
        together: a consistent slice while the loop thread keeps recording."""
        with self._columns_lock:
            return tuple(column[lo:hi] for column in self._sip_columns)

    def sip_snapshot(self) -> SipSnapshot:
        """Every SIP column and extracted header field, read together under the trace's locks: what the frame
        builders read, so that rows evicted (or recorded) meanwhile cannot shift one column against another."""
        with self._index_lock, self._columns_lock:
            n = len(self.sip_owner)
            done = self._extract_up_to(n)  # what a lazy index (or rows loaded from a store) left undone
            snapshot = SipSnapshot(
                *(c[:n] for c in self._sip_columns), tuple(c[:n] for c in self._fields), self._evicted["sip"]
            )
            grew = done < n and self._count_late_fields()
        if grew and self.budget is not None:  # the fields extracted now count too (no lock of ours held)
            self.budget.enforce()
        return snapshot

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
        ev = self.evicted
        evicted = ""
        if ev:
            fate = f"{ev.spilled:,} in the history store" if ev.spilled else ""
            fate += (", " if fate and ev.dropped else "") + (f"{ev.dropped:,} dropped" if ev.dropped else "")
            evicted = f"; evicted {ev.sip:,} SIP messages and {ev.events:,} events ({fate})"
        budget = f", {format_size(self.nbytes)} of a {format_size(self.budget.limit)} budget" if self.budget else ""
        return (
            f"<Trace {len(self)} SIP messages, {len(self._events)} events, {len(self.drops)} dropped{budget}"
            f"{evicted}{off}>"
        )

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

    def stored(
        self,
        *,
        owner: str | None = None,
        session_id: str | None = None,
        sip: bool = True,
        events: bool = True,
        drops: bool = True,
    ) -> Trace:
        """A new Trace (no budget) holding every record of the history store (of `owner`; the events of the session
        `session_id`): what this trace evicted from memory, the rows in memory, and earlier runs. It reads all of
        them into memory; for larger stores query the file with SQL (`platform.history_store.path`)."""
        reader = self._reader
        if reader is None:
            raise ValueError(
                f"trace {self.name or 'unnamed'!r} has no history store to read from; Platform(history='chat.sqlite') "
                "keeps every record on disk"
            )
        sip_rows, event_records, drop_records = reader.read(
            owner=owner, session_id=session_id, sip=sip, events=events, drops=drops
        )
        out = Trace(index="lazy", name=f"{self.name} (history store)")
        out.load_records(sip_rows, drop_records)
        out.add_event_records(event_records)
        return out

    def _source(self, full: bool, **filters: Any) -> Trace:
        """The trace a frame is built from: this one, or with `full=True` the history store's whole record."""
        if not full:
            return self
        if self._reader is None:
            if self.evicted:
                ev = self.evicted
                raise ValueError(
                    f"full=True: trace {self.name or 'unnamed'!r} evicted {ev.sip:,} SIP messages and {ev.events:,} "
                    "events to stay within its budget and has no history store that keeps them (they were dropped); "
                    "without full=True the frame shows what is in memory; Platform(history='chat.sqlite') keeps "
                    "everything"
                )
            return self
        return self.stored(**filters)

    def sip(
        self, *, owner: str | None = None, call_id: str | None = None, raw: bool = True, full: bool = False
    ) -> pd.DataFrame:
        """One row per SIP message on the wire (schema: `notebook_im.trace.frames.SIP_SCHEMA`), of those in memory
        (the newest that fit the budget; `evicted` says what left), or with `full=True` of everything the
        history store holds (every run). `raw=False` leaves out the raw message text (faster for very large
        traces)."""
        source = self._source(full, owner=owner, events=False, drops=False)
        return self._view("sip")(source, owner=owner, call_id=call_id, raw=raw)

    def messages(
        self,
        *,
        owner: str | None = None,
        session_id: str | None = None,
        source: str = "auto",
        full: bool = False,
    ) -> pd.DataFrame:
        """One row per IM message sent or received (schema: `frames.MESSAGES_SCHEMA`). `source="events"`
        builds it from the API events, `"sip"` reconstructs it from the SIP messages (what a pcap gives),
        `"auto"` uses the events when there are any. `full=True` reads the history store's whole record instead
        of what is in memory."""
        sip = source == "sip" or (source == "auto" and session_id is None)
        trace = self._source(full, owner=owner, session_id=session_id, sip=sip, drops=False)
        return self._view("messages")(trace, owner=owner, session_id=session_id, source=source)

    def events(self, *, owner: str | None = None, session_id: str | None = None, full: bool = False) -> pd.DataFrame:
        """One row per API event (schema: `frames.EVENTS_SCHEMA`); `full=True` as for `messages()`."""
        trace = self._source(full, owner=owner, session_id=session_id, sip=False, drops=False)
        return self._view("events")(trace, owner=owner, session_id=session_id)

    def drops_frame(self, *, full: bool = False) -> pd.DataFrame:
        """One row per dropped datagram or stream chunk (schema: `frames.DROPS_SCHEMA`)."""
        return self._view("drops")(self._source(full, sip=False, events=False))

    def chat_messages(self, *, owner: str, session_id: str, full: bool = False) -> list[Any]:
        """The `ChatMessage`s of one session of `owner`, rebuilt from its events (trace/conversations.py), oldest
        first; `full=True` from the history store (what `session.messages` reads for its evicted part)."""
        trace = self._source(full, owner=owner, session_id=session_id, sip=False, drops=False)
        return self._view("chat_messages")(trace, owner=owner, session_id=session_id)

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
