"""The trace budget: how many bytes the traces of one process keep in memory, all together.

Why bytes and why one budget per process. A trace keeps every SIP message on the wire and every API event;
through the embedded server one IM message with receipts on is ~22 records in two traces (the platform's and
the server's), about 1.1 KB each, so a soak of 150,000 messages at 800/s used to grow RSS from 30 MiB to
2.5 GiB before the old record caps (1,000,000 rows per trace, ~1.1 GiB each) stopped it. A notebook on Binder
has 1-2 GiB for everything. What a user can afford is bytes, for the process, not rows per trace, so every
platform and server trace registers with one `TraceBudget` (`process_budget()`, 96 MiB by default) and, when
their sealed chunks together pass it, the oldest chunk of whichever trace holds the oldest is evicted: 1,024 rows
at a time (recorder.Column), which costs a list pop, not a copy.

What an evicted row becomes is the trace's business (recorder.Trace): still in the history store when
`Platform(history=...)` is on (the store got every record as it was recorded: `trace.sip(full=True)` reads it
back), counted as dropped otherwise; either way `trace.evicted` counts it and the first eviction warns once.

What is counted. A sealed SIP chunk is counted as the bytes of its raw messages plus `SIP_ROW_OVERHEAD` (512)
per row: the timestamp, the address tuples, the list slots and the extracted header fields, measured with
tracemalloc at ~480 B a row beyond the raw bytes object (tests/trace/test_budget.py holds the estimate to
within 25 % of tracemalloc); header fields longer than that covers (a 30 KB Call-ID is held twice, raw and
extracted) are added when they are extracted (recorder.FIELD_SLACK). An event chunk is counted from the sizes of its packed values (~180 B an event).
The unsealed tail of each column (under 1,024 rows: ~1 MiB for a trace at usual message sizes, at most
1,023 x 64 KiB with nothing but the largest messages) is not counted: the budget holds the
sealed part, the tails come on top.

The default, 96 MiB, is what keeps a process of one platform and an embedded server under 300 MiB RSS for any
number of messages (bench/soak.py, 800 messages/s with receipts on: ~250 MiB flat, see docs/performance.md):
the ~39 MiB of the idle process, the answered-request caches of Timer J (~80 MiB at 800 messages/s: 32 s of
requests at three SIP stacks, bounded in time), each session's window of 10,000 ChatMessages (~7 MB) and the
allocator's slack come on top of it. 128 MiB ended at 277-281 MiB, too close to the goal. 96 MiB holds the
trace of the newest ~5,000 messages of that soak (~18 KB a message in the two traces), or hours of a chat at
human pace. `NOTEBOOK_IM_TRACE_BUDGET` ("512MiB", "2GiB", "none") sets it before the first trace is made;
`nim.trace_budget().set_limit(...)` at any time.
"""

from __future__ import annotations

import math
import operator
import os
import re
import threading
import weakref
from typing import Any

DEFAULT_LIMIT = 96 * 2**20
ENV = "NOTEBOOK_IM_TRACE_BUDGET"
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20}
_UNITS.update({"g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40})
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: Any, what: str = "the trace budget") -> int | None:
    """Bytes from an int or a string such as "256MiB", "1.5GiB", "512MB"; None (or "none", "unlimited") means
    no limit. A ValueError/TypeError says what a right value looks like."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a size such as '256MiB' or a number of bytes, not {value!r}")
    if not isinstance(value, (int, str)) and hasattr(type(value), "__index__"):
        value = operator.index(value)  # a numpy integer, say: a number of bytes too
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what} must not be negative, not {value!r}")
        return value
    if isinstance(value, str):
        if value.strip().lower() in ("none", "unlimited", "off"):
            return None
        m = _SIZE.match(value)
        unit = m.group(2).lower() if m else ""
        if m and unit in _UNITS:
            number = float(m.group(1))
            if not math.isfinite(number * _UNITS[unit]):  # ("9" * 400 + "GiB": int() of infinity raised OverflowError)
                raise ValueError(f"{what} is too large to be a size: {value!r} (pass 'none' for no limit)")
            if _UNITS[unit] == 1 and number != int(number):
                # "0.5" (meant as GiB?) became 0 bytes, a budget that evicts everything: say so instead
                raise ValueError(f"{what} must be a whole number of bytes or have a unit ('0.5GiB'), not {value!r}")
            return int(number * _UNITS[unit])
        raise ValueError(f"{what} must be a size such as '256MiB', '1GiB' or '500MB' (or 'none'), not {value!r}")
    raise TypeError(f"{what} must be a size such as '256MiB' or a number of bytes, not {type(value).__name__}")


def format_size(n: int | None) -> str:
    """'128 MiB', '1.5 GiB', 'unlimited'."""
    if n is None:
        return "unlimited"
    if n >= 2**80:  # (n / size overflows a float past ~1e308: a repr must not raise)
        return f"{n // 2**30:,} GiB"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{n} B"


class TraceBudget:
    """Bytes the traces registered here may keep in memory together; the oldest sealed chunk goes first.

    `limit` is a size ("128MiB", bytes, or None for no limit). Traces register themselves
    (`Trace(budget=...)`; Platform and Server use `process_budget()`), and call `enforce()` after each chunk they
    seal, never while holding a lock of their own, so the lock order is always budget, then trace."""

    def __init__(self, limit: Any = DEFAULT_LIMIT) -> None:
        self.limit = parse_size(limit)
        self._traces: list[weakref.ref] = []
        self._lock = threading.RLock()
        self.evicted_chunks = 0  # chunks evicted by this budget (all traces)
        self.evicted_bytes = 0

    def register(self, trace: Any) -> None:
        """Count `trace` (a recorder.Trace) against this budget from now on."""
        with self._lock:
            self._traces = [r for r in self._traces if r() is not None and r() is not trace]
            self._traces.append(weakref.ref(trace))
        self.enforce()

    def unregister(self, trace: Any) -> None:
        """Stop counting `trace` (its rows stay where they are)."""
        with self._lock:
            self._traces = [r for r in self._traces if r() is not None and r() is not trace]

    @property
    def traces(self) -> list[Any]:
        """The live traces registered here."""
        with self._lock:
            return [t for t in (r() for r in self._traces) if t is not None]

    @property
    def used(self) -> int:
        """Bytes of the sealed chunks of every registered trace."""
        return sum(t.sealed_bytes for t in self.traces)

    def set_limit(self, limit: Any) -> None:
        """Change the limit ("512MiB", bytes, None for none); a smaller one evicts at once."""
        self.limit = parse_size(limit)
        self.enforce()

    def enforce(self) -> int:
        """Evict the oldest sealed chunks (across the registered traces, by the time of their first row) until
        the sealed chunks fit the limit again; returns the bytes evicted."""
        limit = self.limit
        if limit is None:
            return 0
        freed = 0
        with self._lock:
            traces = self.traces
            used = sum(t.sealed_bytes for t in traces)
            while used > limit:
                oldest = None
                for t in traces:
                    candidate = t.oldest_chunk()
                    if candidate is not None and (oldest is None or candidate[0] < oldest[0]):
                        oldest = (candidate[0], candidate[1], t)
                if oldest is None:
                    break
                n = oldest[2].evict_oldest(oldest[1])
                if n <= 0:
                    break
                used -= n
                freed += n
                self.evicted_chunks += 1
                self.evicted_bytes += n
        return freed

    def stats(self) -> dict[str, Any]:
        """limit, used (bytes), traces, evicted_chunks, evicted_bytes."""
        return {
            "limit": self.limit,
            "used": self.used,
            "traces": len(self.traces),
            "evicted_chunks": self.evicted_chunks,
            "evicted_bytes": self.evicted_bytes,
        }

    def __repr__(self) -> str:
        return (
            f"<TraceBudget {format_size(self.limit)}: {format_size(self.used)} used by {len(self.traces)} traces, "
            f"{self.evicted_chunks} chunks ({format_size(self.evicted_bytes)}) evicted>"
        )


_process: TraceBudget | None = None
_process_lock = threading.Lock()


def process_budget() -> TraceBudget:
    """The budget every Platform and Server trace of this process shares (made on first use: 96 MiB, or
    `NOTEBOOK_IM_TRACE_BUDGET`)."""
    global _process
    with _process_lock:
        if _process is None:
            # set but empty counts as unset (`export NOTEBOOK_IM_TRACE_BUDGET=`); a bad value names the variable,
            # since the Platform() or Server() that fails was not given it
            value = os.environ.get(ENV, "").strip() or DEFAULT_LIMIT
            _process = TraceBudget(parse_size(value, f"the {ENV} environment variable"))
        return _process
