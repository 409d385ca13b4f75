"""The trace keeps its records where the garbage collector does not walk them (record/packed.py, recorder.Column):
sealed column chunks and packed events are untracked tuples, and reading them gives back exactly what was
recorded, also while a writer thread appends."""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pytest

from notebook_im.api.events import ParticipantState, ParticipantStateChanged, SessionState, SessionStateChanged
from notebook_im.record.packed import EventPacker
from notebook_im.record.recorder import CHUNK, Column, Trace


def test_column_reads_back_what_was_appended_across_chunks() -> None:
    col = Column(threading.RLock())
    values = [(f"h{i}", i) for i in range(3 * CHUNK + 17)]
    for v in values:
        col.append(v)
        col.seal()
    assert len(col) == len(values) and len(col.chunks) == 3 and len(col.tail) == 17
    assert col.to_list() == values
    assert list(col) == values
    for key in (
        slice(None),
        slice(5, 2 * CHUNK + 3),
        slice(CHUNK, CHUNK),
        slice(-10, None),
        slice(0, 10**9),
        slice(3, 2000, 7),
        slice(CHUNK - 1, CHUNK + 1),
    ):
        assert col[key] == values[key], key
    for i in (0, CHUNK - 1, CHUNK, 3 * CHUNK, len(values) - 1, -1, -CHUNK - 5):
        assert col[i] == values[i]
    with pytest.raises(IndexError):
        col[len(values)]
    col.extend(values[:5])
    assert col.to_list() == values + values[:5]
    col.clear()
    assert len(col) == 0 and col.to_list() == []


def test_column_reads_a_tail_longer_than_a_chunk() -> None:
    col = Column(threading.RLock())
    values = list(range(CHUNK + 7))
    for v in values[:10]:
        col.append(v)
    col.seal()  # nothing to seal yet
    for v in values[10:]:
        col.append(v)  # not sealed: the tail holds more than a chunk (as a lazy index does while it extracts)
    for key in (slice(None), slice(CHUNK + 1, CHUNK + 5), slice(CHUNK - 2, CHUNK + 2), slice(5, 9)):
        assert col[key] == values[key], key
    assert col[CHUNK + 3] == values[CHUNK + 3]
    col.append(-1)
    col.seal()
    assert len(col.chunks) == 1 and col.to_list() == values + [-1]


def test_sealed_chunks_are_not_tracked_by_the_gc() -> None:
    col = Column(threading.RLock())
    for i in range(2 * CHUNK):
        col.append(("127.0.0.1", 5060 + i, f"b{i}".encode()))
        col.seal()
    gc.collect()
    gc.collect()  # a chunk is untracked once its items are (a pass may see the chunk before its items)
    assert not any(gc.is_tracked(chunk) for chunk in col.chunks)


def test_packed_events_equal_the_emitted_ones_and_are_untracked() -> None:
    packer = EventPacker()

    class Session:  # stands for a live object an event points at
        id = "s1"

    live = Session()
    now = datetime.now(timezone.utc)
    events = [
        SessionStateChanged(live, SessionState.CONNECTED, SessionState.CONNECTING, timestamp=now) for _ in range(100)
    ]
    records = [packer.pack(1.5, "sip:a@x", ev) for ev in events]
    gc.collect()
    gc.collect()
    assert not any(gc.is_tracked(r) for r in records)
    assert len(packer.objects) == 3  # the session and two enum members, once each
    for ev, rec in zip(events, records):
        ts, owner, back = packer.unpack(rec)
        assert (ts, owner) == (1.5, "sip:a@x")
        assert back == ev and type(back) is SessionStateChanged
        assert back.session is live and back.state is SessionState.CONNECTED


def test_events_the_packer_cannot_flatten_are_kept_as_they_are() -> None:
    packer = EventPacker()

    @dataclass(frozen=True)
    class WithList:
        items: list = field(default_factory=list)

    @dataclass
    class Later:
        a: int = 1

    later = Later()
    later.extra = "set after __init__"  # not a field: the packed form would lose it, so the event is kept whole
    odd = object()
    for ev in (
        WithList([1, 2]),
        later,
        odd,
        ParticipantStateChanged(None, None, ParticipantState.CONNECTED, ParticipantState.IDLE, timestamp=None),
    ):
        assert packer.unpack(packer.pack(0.0, "o", ev))[2] == ev
    assert packer.unpack(packer.pack(0.0, "o", later))[2] is later
    assert packer.unpack(packer.pack(0.0, "o", odd))[2] is odd


def test_trace_reads_are_consistent_while_a_thread_records() -> None:
    trace = Trace()
    total = 5 * CHUNK + 3
    raw = b"MESSAGE sip:b@x SIP/2.0\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
    done = threading.Event()

    def write() -> None:
        for i in range(total):
            trace.record_sip("out", "udp", ("127.0.0.1", 1), ("127.0.0.1", i), raw, f"o{i}", ts=float(i))
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    checks = 0
    while not done.is_set() or checks == 0:  # bounded: the writer ends after `total` rows
        records = trace.sip_records()
        assert [r.timestamp for r in records] == [float(i) for i in range(len(records))]
        assert all(r.owner == f"o{int(r.timestamp)}" and r.remote[1] == int(r.timestamp) for r in records)
        checks += 1
    thread.join(10)
    assert len(trace) == total and len(trace.sip().index) == total
    df = trace.sip()
    assert df["dst"].tolist() == [f"127.0.0.1:{i}" for i in range(total)]
    assert df["owner"].astype(str).tolist() == [f"o{i}" for i in range(total)]
    assert (df["method"] == "MESSAGE").all() and (df["call_id"] == "c").all()


def test_a_lazy_index_built_while_a_thread_records_stays_row_aligned() -> None:
    trace = Trace(index="lazy")
    total = 4 * CHUNK + 9
    done = threading.Event()

    def write() -> None:
        for i in range(total):
            raw = (
                f"MESSAGE sip:b@x SIP/2.0\r\nCall-ID: c{i}\r\nCSeq: {i + 1} MESSAGE\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            trace.record_sip("out", "udp", ("127.0.0.1", 1), ("127.0.0.1", 2), raw, "o", ts=float(i))
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    builds = 0
    while not done.is_set() or builds == 0:  # bounded: the writer ends after `total` rows
        df = trace.sip(raw=False)
        assert df["call_id"].tolist() == [f"c{i}" for i in range(len(df))]
        builds += 1
    thread.join(10)
    df = trace.sip(raw=False)
    assert len(df) == total and df["cseq"].tolist() == list(range(1, total + 1))


@pytest.mark.slow
def test_a_chat_with_receipts_keeps_no_tracked_object_per_message() -> None:
    """What stays per message for the garbage collector to walk, at both ends of a session with receipts on:
    nothing. Not the two sessions' ChatMessages (their fields are one tuple of plain values, and such a message is
    left to reference counting: api/messages.py), no tuple, bound method or record per message in the receipt
    book, the trace, the transaction caches or the dedupe filters (4.0 before the receipt book shared its owner
    keys, 2.0 while the ChatMessages were tracked)."""
    import time

    import notebook_im as nim

    network = nim.MemoryNetwork()
    with nim.Platform("gc-count", network=network) as platform:
        alice = platform.endpoint("sip:alice@127.0.0.1").result(10)
        bob = platform.endpoint("sip:bob@127.0.0.1").result(10)
        bob.sessions.on_incoming(lambda incoming: incoming.accept())
        session = alice.sessions.create(bob.contact).result(10)

        def send_all(texts: list[str]) -> None:  # at most 100 sends unsettled at a time
            pending = []
            for text in texts:
                pending.append(session.send(text))
                if len(pending) > 100:
                    pending.pop(0).result(10)
            for op in pending:
                op.result(10)

        send_all([f"warm {i}" for i in range(4500)])  # the parse caches fill (4,096 URIs and addresses), trace chunks
        time.sleep(0.3)
        gc.collect()
        before = len(gc.get_objects())
        count = 3000
        send_all([f"m{i}" for i in range(count)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum(m.delivery_notified_at is not None for m in session.messages) < 7500:
            time.sleep(0.05)  # the last delivery receipts
        gc.collect()
        per_message = (len(gc.get_objects()) - before) / count
        assert len(alice.receipts) >= 7500  # the receipt book holds them all
    print(f"[gc] {per_message:.2f} GC-tracked objects kept per message")
    assert per_message < 0.2, f"{per_message:.2f} GC-tracked objects kept per message"


def test_a_chat_message_is_handed_back_to_the_collector_when_it_could_be_in_a_cycle() -> None:
    """An untracked ChatMessage is only one that holds plain values; whatever could refer back to it (an
    attribute of one's own, `extra`, a field set to a container, a subclass) makes it tracked again first, so a
    cycle through it is still collected."""
    import weakref
    from datetime import datetime, timezone

    from notebook_im.api.messages import ChatMessage

    def fresh(cls: type = ChatMessage) -> ChatMessage:
        return cls("id1", "out", "sip:a@x", "sip:b@x", "hi", "text/plain", datetime.now(timezone.utc), "sending")

    assert not gc.is_tracked(fresh())
    plain = fresh()
    plain.state, plain.sip_status, plain.delivered_at = "sent", 200, datetime.now(timezone.utc)
    assert not gc.is_tracked(plain), "plain values keep it untracked"

    class Mine(ChatMessage):
        pass

    assert gc.is_tracked(fresh(Mine))
    for make_cycle in (
        lambda m: setattr(m, "note", [m]),
        lambda m: m.extra.__setitem__("me", m),
        lambda m: setattr(m, "text", [m]),
        lambda m: setattr(m, "extra", {"me": m}),
    ):
        m = fresh()
        make_cycle(m)
        assert gc.is_tracked(m)
        ref = weakref.ref(m)
        del m
        gc.collect()
        assert ref() is None, "the cycle through the message was collected"
