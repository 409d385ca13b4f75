"""Recorded events packed as tuples of plain values, so that the garbage collector stops walking them.

Why. Every recorded event used to stay in the trace as two GC-tracked objects (an EventRecord and the event
dataclass), three events per message. CPython's full collections walk every tracked object, and they run
each time the long-lived tracked objects have grown by a quarter, so a chat at 1,000 messages/s spent its
p99 latency in 40-110 ms pauses of the loop thread (bench/latency.py: 5 full collections in 10 s, each
walking the whole trace; 160,000 tracked objects after 10,000 messages, 21,500 of them the base). A tuple
whose items are all untracked (str, int, float, bool, None, bytes, datetime, and such tuples) is untracked by
the collector in one of the first passes that see it (once its items are) and never walked again, so each event is kept as

    (timestamp, owner, shape, value, value, ...)

with `shape` an int naming the event class and its field names, and each field value kept as it is when it
is such a plain value, or else as `(REF, n)`: the n-th entry of a table of the live objects the events point
at (their sessions, participants, endpoints, state enum members). Those are few at a time (a conversation's
events all point at the same session and participant), but the table holds them alive: a session that ended
is still in it, with its messages, dialog and participants (~100 KB for a session of 20 messages). So the
table lets go of an object once no event in memory points at it any more (`release`, which the trace calls
when the byte budget evicts a chunk of events): else a program that opens and ends sessions for hours would
keep every one of them, outside the budget. An event that is not a dataclass is kept as it is.

Unpacking builds each event again, with the very same live objects in its fields: `==` with the emitted
event holds (dataclass equality), `is` does not. Readers (`Trace.event_records()`, the frames) unpack on each
call and do not keep the objects, so nothing tracked accumulates per message.
"""

from __future__ import annotations

import dataclasses
import sys
from datetime import datetime
from itertools import chain
from typing import Any

REF = "\x00ref"  # marks a (REF, n) reference to the n-th live object (no event field is a tuple starting so)

_PLAIN = frozenset({str, int, float, bool, type(None), bytes, datetime})


class EventPacker:
    """Packs events into untracked tuples and back (one per Trace; the caller holds the trace's lock)."""

    def __init__(self) -> None:
        self.shapes: list[tuple[type, tuple[str, ...]]] = []  # shape number -> (event class, field names)
        self._shape_of: dict[type, int] = {}
        self.objects: dict[int, Any] = {}  # n -> live object (kept while an event in memory points at it)
        self._ref_of: dict[int, tuple[str, int]] = {}  # id(object) -> (REF, n) (ids stay unique: objects are kept)
        self._next = 0  # the n of the next object (never reused, so a record never points at a later object)

    def pack(self, ts: float, owner: str, event: Any) -> tuple:
        """The record of `event` at `ts` by `owner`: a tuple the GC can untrack when its objects are plain."""
        cls = type(event)
        shape = self._shape_of.get(cls)
        if shape is None:
            shape = self._new_shape(cls)
        if shape < 0:  # not a dataclass with a __dict__: kept as it is (tracked, as every event used to be)
            return (ts, owner, -1, event)
        fields = event.__dict__
        names = self.shapes[shape][1]
        if len(fields) != len(names):  # an attribute set after __init__: keep the event itself, nothing lost
            return (ts, owner, -1, event)
        values: list[Any] = [ts, owner, shape]
        append = values.append
        plain = _PLAIN
        for name in names:
            value = fields[name]
            if type(value) in plain:
                append(value)
            else:
                append(self._ref(value))
        return tuple(values)

    def unpack(self, record: tuple) -> tuple[float, str, Any]:
        """(timestamp, owner, event) again, the event rebuilt around the same live objects."""
        shape = record[2]
        if shape < 0:
            return record[0], record[1], record[3]
        cls, names = self.shapes[shape]
        objects = self.objects
        event = object.__new__(cls)
        event.__dict__.update(
            zip(names, [objects[v[1]] if type(v) is tuple and v[0] == REF else v for v in record[3:]])
        )
        return record[0], record[1], event

    def _new_shape(self, cls: type) -> int:
        if not dataclasses.is_dataclass(cls) or "__slots__" in cls.__dict__ or not hasattr(cls, "__dict__"):
            self._shape_of[cls] = -1
            return -1
        names = tuple(f.name for f in dataclasses.fields(cls))
        self._shape_of[cls] = len(self.shapes)
        self.shapes.append((cls, names))
        return len(self.shapes) - 1

    def _ref(self, value: Any) -> tuple[str, int]:
        ref = self._ref_of.get(id(value))
        if ref is None:
            ref = (REF, self._next)
            self.objects[self._next] = value
            self._ref_of[id(value)] = ref
            self._next += 1
        return ref

    @staticmethod
    def refs(records: Any) -> set[int]:
        """The numbers of the live objects `records` (packed events) point at."""
        out: set[int] = set()
        for record in records:
            if record[2] >= 0:
                out.update(v[1] for v in record[3:] if type(v) is tuple)  # (a field value is plain or a (REF, n))
        return out

    @staticmethod
    def measure(records: Any) -> tuple[int, set[int]]:
        """(bytes, refs) of a chunk of packed events in one pass: each record's tuple (+ 24 for the pointer to it
        and the allocator's share), each plain value it holds counted once however many records share it
        (None, booleans, "" and small ints are shared by the whole process: not counted), and the numbers of the
        live objects its (REF, n) tuples point at (`refs`). A chunk is measured as it is sealed, in the loop
        thread: the one pass over values deduplicated by identity costs about 1 ms per 1,024 events, where a
        Python loop per value took 1.6."""
        size = sys.getsizeof
        total = sum(map(size, records)) + 24 * len(records)
        packed = [r[3:] for r in records if r[2] >= 0]
        unique = {id(v): v for v in chain.from_iterable(packed)}
        refs: set[int] = set()
        for v in unique.values():
            t = type(v)
            if t is tuple:  # a field value is plain or a (REF, n): a tuple is one of ours
                refs.add(v[1])
            elif v and t is not bool:
                total += size(v)
        if len(packed) < len(records):  # events kept whole (shape -1): whatever they are, they point at no n
            for r in records:
                if r[2] < 0 and id(r[3]) not in unique:
                    unique[id(r[3])] = r[3]
                    total += size(r[3])
        return total, refs

    def release(self, refs: set[int]) -> None:
        """Forget the live objects numbered `refs` (no event in memory points at them any more): the table stops
        keeping them alive. An event recorded later that points at one of them gets a new number."""
        objects, ref_of = self.objects, self._ref_of
        for n in refs:
            value = objects.pop(n, None)
            if value is not None:
                ref_of.pop(id(value), None)

    def clear(self) -> None:
        """Forget the shapes and live objects (Trace.clear())."""
        self.shapes.clear()
        self._shape_of.clear()
        self.objects.clear()
        self._ref_of.clear()
        self._next = 0
