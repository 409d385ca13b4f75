"""Red team (s23): `EventPacker.measure` (which replaced recorder._count_event_chunks' per-value loop and the
separate `EventPacker.refs` pass) looks for (REF, n) tuples among the values of *every* record, including
records of shape -1, whose record[3] is an event kept whole (not a dataclass, or one with an attribute set
after __init__). `EventPacker.refs` (still used for the tail in `_release_refs`) skips those records, as the
old code did.

The defects:
- an event kept whole that is itself a tuple of the form (REF, x) is read as a reference: with an unhashable x
  `measure` raises TypeError. The chunk is then never counted, and since `_count_event_chunks` retries the
  same first uncounted chunk on every seal, every 1,024th `Trace.record_event` raises from then on (an
  Endpoint's event dispatch with it) and no later event chunk is ever counted: the trace budget no longer sees
  the events, so they are never evicted (unbounded memory).
- with a hashable x, `measure`'s refs differ from `EventPacker.refs` for the same chunk (a reference to a live
  object that nothing points at: counted in `_ref_chunks`, it holds that number's object past its release)."""

from __future__ import annotations

from notebook_im.record.packed import REF, EventPacker
from notebook_im.record.recorder import CHUNK, Trace


def test_measure_refs_match_refs_for_events_kept_whole():
    packer = EventPacker()
    records = [packer.pack(0.0, "o", (REF, 12345))] + [packer.pack(0.0, "o", ("n", i)) for i in range(10)]
    assert packer.measure(records)[1] == EventPacker.refs(records), "a user tuple kept whole read as a (REF, n)"


def test_one_odd_event_does_not_stop_the_trace_counting_its_events():
    trace = Trace()
    trace.record_event("o", (REF, ["user", "data"]))  # an event that is not a dataclass: kept as it is
    errors = []
    for i in range(3 * CHUNK):
        try:
            trace.record_event("o", ("n", i))
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            errors.append(exc)
    assert not errors, f"record_event raised {len(errors)} times: {errors[0]!r}"
    assert len(trace._event_chunk_bytes) == len(trace._events.chunks) == 3, "every sealed chunk counted"
