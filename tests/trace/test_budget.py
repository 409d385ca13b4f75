"""The trace budget (record/budget.py) and the session window (api/messages.MessageLog): memory stays bounded
however long a chat runs, what leaves memory is counted (and, with a history store, read back), and nothing is
lost silently. Each documented promise of docs/traces.md "Memory: the trace budget" is tried here."""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest

import notebook_im as nim
from notebook_im.api.messages import ChatMessage, MessageLog, now_utc
from notebook_im.record.budget import TraceBudget, format_size, parse_size
from notebook_im.record.recorder import CHUNK, Trace, TraceBudgetWarning
from tests.helpers import accept_all

SAMPLE = (
    "MESSAGE sip:bob@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK{i}x;rport\r\n"
    "Max-Forwards: 70\r\nFrom: <sip:alice@example.test>;tag=49583{i}\r\nTo: <sip:bob@example.test>;tag=8321\r\n"
    "Call-ID: asd88asd77a{i}@127.0.0.1\r\nCSeq: {i} MESSAGE\r\nContent-Type: text/plain;charset=UTF-8\r\n"
    "Imdn-Message-ID: {i:012d}\r\nDateTime: 2024-05-01T18:00:00.000Z\r\n"
    "Disposition-Notification: positive-delivery, display\r\nContent-Length: 9\r\n\r\nhello {i:03d}"
)


def sip_message(i: int) -> bytes:
    return SAMPLE.format(i=i).encode()


def record(trace: Trace, i: int) -> None:
    raw = sip_message(i)
    trace.record_sip("in", "udp", ("127.0.0.1", 5070), ("127.0.0.1", 5080 + i % 7), raw, "sip:bob@x", message=None)


# -- the byte budget ----------------------------------------------------------------------------------------------
def test_sizes_parse_and_refuse_nonsense() -> None:
    assert parse_size("256MiB") == 256 * 2**20 and parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size("500MB") == 500 * 10**6 and parse_size(4096) == 4096 and parse_size(None) is None
    assert parse_size("unlimited") is None and format_size(128 * 2**20) == "128 MiB"
    for bad in ("lots", "12 parsecs", -1):
        with pytest.raises(ValueError, match="size such as|negative"):
            parse_size(bad)
    for bad in (True, 1.5, [1]):
        with pytest.raises(TypeError):
            parse_size(bad)
    with pytest.raises(ValueError, match="trace_budget"):
        nim.Platform("bad", trace_budget="a lot")
    with pytest.raises(ValueError, match="message_window"):
        nim.Platform("bad", message_window=0)


def test_budget_holds_and_evicted_rows_add_up() -> None:
    budget = TraceBudget("1MiB")
    trace = Trace(budget=budget, name="t")
    recorded = 0
    with pytest.warns(TraceBudgetWarning, match="dropped") as caught:
        for i in range(20 * CHUNK):
            record(trace, i)
            recorded += 1
            if i % 500 == 0:
                assert trace.sealed_bytes <= budget.limit, "the sealed chunks stay within the budget"
    assert len(caught) == 1, "the first eviction warns, once"
    ev = trace.evicted
    assert ev.sip > 0 and ev.sip % CHUNK == 0 and ev.dropped == ev.sip + ev.events and ev.spilled == 0
    assert len(trace) + ev.sip == recorded == trace.sip_total, "every recorded row is in memory or counted"
    # the newest rows are the ones kept
    df = trace.sip()
    assert df["cseq"].iloc[-1] == recorded - 1 and df["cseq"].iloc[0] == ev.sip
    assert "evicted" in repr(trace) and "dropped" in repr(trace) and trace.stats["evicted_sip"] == ev.sip
    with pytest.raises(ValueError, match="dropped"):
        trace.sip(full=True)  # nothing to read them back from: said, not an empty answer


@pytest.mark.parametrize("body", [0, 60_000])
def test_accounting_matches_tracemalloc(body: int) -> None:
    """The bytes the budget counts for SIP rows are within 25 % of what the rows really hold (tracemalloc), for
    small messages and 60 KB ones."""
    raws = [sip_message(i) + b"x" * body for i in range(8 * CHUNK if not body else 2 * CHUNK)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        trace = Trace(budget=TraceBudget(None))
        for raw in raws:  # the raw bytes are made here, as a socket read makes them: counted by both
            trace.record_sip("in", "udp", ("127.0.0.1", 5070), ("127.0.0.1", 5080), bytes(bytearray(raw)), "o")
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.75 <= trace.nbytes / held <= 1.25, f"counted {trace.nbytes:,} B, tracemalloc {held:,} B"


@dataclass
class _Said:
    """An event of the shape the API emits: a shared live object, fresh strings and datetimes, shared constants."""

    session: object
    text: str
    message_id: str
    mode: str
    status: int
    latency: float
    sent_at: datetime
    timestamp: datetime
    call_id: str


def test_event_accounting_matches_tracemalloc() -> None:
    """... and for events (fresh values made as the API makes them, then held by the trace alone)."""
    session = object()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        trace = Trace(budget=TraceBudget(None))
        for i in range(8 * CHUNK):
            now = datetime.now(timezone.utc)
            trace.record_event(
                "sip:alice@example.test",
                _Said(session, f"message number {i}", f"{i:012x}", "session", 200, i / 7, now, now, "abc@host"),
            )
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.75 <= trace.nbytes / held <= 1.25, f"counted {trace.nbytes:,} B, tracemalloc {held:,} B"


def test_traces_share_a_budget_oldest_first() -> None:
    budget = TraceBudget(6 * CHUNK * 1200)
    old, new = Trace(budget=budget, name="old"), Trace(budget=budget, name="new")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TraceBudgetWarning)
        for i in range(4 * CHUNK):
            record(old, i)
        for i in range(4 * CHUNK):
            record(new, i)
    assert budget.used <= budget.limit
    assert old.evicted.sip >= CHUNK and new.evicted.sip == 0, "the oldest chunks go first, whichever trace"
    budget.set_limit(2 * CHUNK * 1200)  # a smaller limit evicts at once
    assert budget.used <= budget.limit and len(old) < CHUNK
    assert budget.stats()["traces"] == 2 and "TraceBudget" in repr(budget)


def test_max_records_still_caps_on_top_of_the_budget() -> None:
    trace = Trace(max_records=100, budget=TraceBudget("64MiB"))
    for i in range(250):
        record(trace, i)
    assert len(trace) == 100 and trace.dropped_sip == 150 and not trace.evicted


def test_frames_stay_aligned_while_rows_are_evicted() -> None:
    """A frame built while the loop thread records (and evicts) has every row whole: its columns come from one
    consistent snapshot."""
    import threading

    trace = Trace(budget=TraceBudget(3 * CHUNK * 1200))
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 200 * CHUNK:
            record(trace, i)
            i += 1

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TraceBudgetWarning)
        t = threading.Thread(target=writer)
        t.start()
        try:
            for _ in range(10):
                df = trace.sip()
                if len(df):
                    # the CSeq, the Call-ID and the raw text of a row are of the same message
                    assert (df["call_id"] == "asd88asd77a" + df["cseq"].astype(str) + "@127.0.0.1").all()
                    assert df["raw"].str.contains("CSeq: ").all()
        finally:
            stop.set()
            t.join()


# -- the session window -------------------------------------------------------------------------------------------
def _msg(i: int) -> ChatMessage:
    return ChatMessage(str(i), "out", "a", "b", f"m{i}", "text/plain", now_utc(), "delivered")


def test_message_log_without_store_keeps_the_window() -> None:
    log = MessageLog(window=5)
    for i in range(12):
        log.append(_msg(i))
    assert len(log) == 5 and log.evicted == 7 and not log.stored
    assert [m.text for m in log] == ["m7", "m8", "m9", "m10", "m11"]
    assert log[0].text == "m7" and log[-1].text == "m11" and [m.text for m in log[1:3]] == ["m8", "m9"]
    assert "7 older dropped" in repr(log)
    with pytest.raises(IndexError):
        log[5]
    assert MessageLog() == [] and log == log.recent()


def test_message_log_with_store_reads_old_part_back() -> None:
    everything = [_msg(i) for i in range(12)]
    reads = []

    def loader() -> list[ChatMessage]:
        reads.append(1)
        return everything

    log = MessageLog(window=5, loader=loader)
    for m in everything:
        log.append(m)
    assert len(log) == 12 and log.evicted == 7 and log.stored
    assert log[-1] is everything[-1] and log[-5:] == everything[-5:] and not reads, "the window needs no store"
    assert log[0].text == "m0" and log[3:9] == everything[3:9] and [m.text for m in log] == [m.text for m in everything]
    assert reads


# -- end to end: a soak through the embedded server with a small budget -------------------------------------------
def _soak(platform: nim.Platform, server, count: int) -> tuple[object, object, list[str]]:
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    accept_all(bob)
    got: list[str] = []
    bob.on(nim.MessageReceived, lambda e: got.append(e.text))
    session = alice.sessions.create("sip:bob@example.test").result(10)
    ops = [session.send(f"m{i}") for i in range(count)]
    for op in ops:
        op.result(60)
    deadline = time.monotonic() + 20
    while len(got) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the last receipts
    return session, bob.sessions.sessions[0], got


COUNT = 2500


@pytest.mark.timeout(120)
def test_soak_history_off_budget_holds_and_counts_drops(server) -> None:
    budget = TraceBudget("3MiB")
    server.trace.use_budget(budget)
    platform = nim.Platform("soak-off", trace_budget=budget, message_window=400)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TraceBudgetWarning)
            session, bob_session, got = _soak(platform, server, COUNT)
        texts = [f"m{i}" for i in range(COUNT)]
        assert got == texts, "every message arrived, once, in order"
        assert budget.used <= budget.limit and platform.trace.nbytes + server.trace.nbytes < budget.limit + 3 * 2**20
        assert sum(issubclass(w.category, TraceBudgetWarning) for w in caught) == 2, "one warning per trace"
        for trace in (platform.trace, server.trace):
            ev = trace.evicted
            assert ev.sip > 0 and ev.dropped == ev.sip + ev.events and ev.spilled == 0
            assert len(trace) + ev.sip == trace.sip_total
        # the session keeps its window, the rest is counted as gone
        assert len(session.messages) == 400 and session.messages.evicted == COUNT - 400
        assert [m.text for m in session.messages] == texts[-400:]
        assert [m.state for m in session.messages][:-5] == ["delivered"] * 395, "receipts still reach the window"
        assert len(bob_session.messages) == 400 and bob_session.messages[-1].text == texts[-1]
        assert len(platform.trace.messages()) < 2 * COUNT
        with pytest.raises(ValueError, match="no history store"):
            platform.trace.messages(full=True)
    finally:
        platform.shutdown()
        server.trace.use_budget(nim.trace_budget())


@pytest.mark.timeout(120)
def test_soak_history_on_reads_evicted_rows_back(tmp_path, server) -> None:
    budget = TraceBudget("3MiB")
    server.trace.use_budget(budget)
    platform = nim.Platform("soak-on", trace_budget=budget, message_window=400, history=tmp_path / "h.sqlite")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TraceBudgetWarning)
            session, bob_session, got = _soak(platform, server, COUNT)
        texts = [f"m{i}" for i in range(COUNT)]
        assert got == texts
        trace = platform.trace
        ev = trace.evicted
        assert ev.sip > 0 and ev.events > 0 and ev.spilled == ev.sip + ev.events and ev.dropped == 0
        assert budget.used <= budget.limit
        assert "in the history store" in repr(trace)
        # in memory: the newest rows; full=True: every one of them, from the store
        assert len(trace.messages(owner="sip:alice@example.test")) < COUNT
        full = trace.messages(full=True, owner="sip:alice@example.test")
        assert full["text"].tolist() == texts and (full["state"] == "delivered").all()
        assert len(trace.sip(full=True)) == trace.sip_total, "evicted + in memory = what the store holds"
        assert len(trace.events(full=True)) == trace.event_count + ev.events
        # the session: its window live, the older messages from the store, nothing a user can see is lost
        assert len(session.messages) == COUNT and session.messages.evicted == COUNT - 400
        assert session.messages[-1] is session.messages.recent()[-1]
        assert session.messages[0].text == "m0" and session.messages[0].state == "delivered"
        assert [m.text for m in session.messages] == texts
        assert [m.text for m in bob_session.messages] == texts and bob_session.messages[0].direction == "in"
        assert [m.text for m in session.messages[1000:1005]] == texts[1000:1005]
    finally:
        platform.shutdown()
        server.trace.use_budget(nim.trace_budget())
    # after shutdown the store is closed and still read
    assert len(platform.trace.messages(full=True, owner="sip:alice@example.test")) == COUNT


def test_reopened_store_loads_what_fits_the_budget(tmp_path, server) -> None:
    path = tmp_path / "h.sqlite"
    first = nim.Platform("first", trace_budget=TraceBudget(None), history=path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TraceBudgetWarning)
            _soak(first, server, 600)
    finally:
        first.shutdown()
    total = first.trace.sip_total
    second = nim.Platform("second", trace_budget=TraceBudget("1MiB"), history=path)
    try:
        loaded = second.history_store.loaded["sip"]
        assert 0 < loaded < total, "the newest rows that fit, not the whole store"
        assert second.trace.sealed_bytes <= 2**20
        assert len(second.trace.sip(full=True)) == total, "the rest stays in the store"
    finally:
        second.shutdown()


def test_import_stays_light() -> None:
    assert "notebook_im.record.budget" in sys.modules and nim.trace_budget() is nim.trace_budget()


class _Session:
    """A stand-in for a live session an event points at (weakly referenceable, not a plain value)."""


def test_evicted_events_let_go_of_the_sessions_they_pointed_at() -> None:
    """The packer's table of live objects kept every session an event ever pointed at, ended and evicted ones
    too (with their messages and dialogs: ~100 KB a session), outside the budget; a program that opens and ends
    sessions for hours grew without end. Once no event in memory points at an object, the trace lets go of it."""
    import weakref

    trace = Trace(budget=TraceBudget(2 * CHUNK * 300), name="t")
    refs = []
    live = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TraceBudgetWarning)
        for i in range(40):  # 40 conversations of 200 events, each pointing at its own session
            live = _Session()
            refs.append(weakref.ref(live))
            for j in range(200):
                now = datetime.now(timezone.utc)
                trace.record_event("o", _Said(live, f"m{i}.{j}", f"{i}.{j}", "session", 200, 0.1, now, now, "c"))
    gc.collect()
    assert trace.evicted.events > 20 * 200, "most conversations were evicted"
    kept = [r() is not None for r in refs]
    assert not any(kept[:20]), "the sessions of evicted conversations are not kept alive by the trace"
    assert len(trace._packer.objects) <= 10, "the table holds what the events in memory point at, no more"
    # what is still in memory unpacks to the very same objects
    records = trace.event_records()
    assert records and records[-1].event.session is live and records[-1].event.text == "m39.199"
    assert all(r.event.session is not None for r in records)
    # an object released and then pointed at again gets a new entry and unpacks right
    first = refs[-1]()
    now = datetime.now(timezone.utc)
    trace.record_event("o", _Said(first, "again", "x", "session", 200, 0.1, now, now, "c"))
    assert trace.event_records()[-1].event.session is first


def test_message_log_reads_the_store_once_backwards_and_for_index() -> None:
    """reversed() and index() went position by position through Sequence's defaults: one read of the whole store
    per message past the window (11,500 evicted messages: 11,500 reads of ~2 s each)."""
    everything = [_msg(i) for i in range(40)]
    reads = []

    def loader() -> list[ChatMessage]:
        reads.append(1)
        return list(everything)

    log = MessageLog(window=5, loader=loader)
    log.extend(everything)
    assert [m.text for m in reversed(log)] == [m.text for m in reversed(everything)] and len(reads) == 1
    assert [m.text for m in list(reversed(log))[:5]] == ["m39", "m38", "m37", "m36", "m35"] and len(reads) == 2
    reads.clear()
    assert log.index(everything[38]) == 38 and not reads, "in the window: no store read"
    assert log.index(everything[3]) == 3 and log.index(everything[20], 10, 30) == 20 and len(reads) == 2
    with pytest.raises(ValueError, match="not in session.messages"):
        log.index(everything[3], 4)
    assert log.index(everything[-1], -1) == 39 and log.count(everything[0]) == 1
    window_only = MessageLog(window=5)
    window_only.extend(everything)
    assert [m.text for m in reversed(window_only)] == ["m39", "m38", "m37", "m36", "m35"]
    assert window_only.index(everything[37]) == 2


def test_message_log_messages_the_store_never_got_do_not_shift_it() -> None:
    """A message appended while the trace was paused is not in the store: counting it among the stored ones made
    the part read back repeat messages of the window (and lose the oldest)."""
    everything = [_msg(i) for i in range(12)]
    unrecorded = {3, 4, 5}
    log = MessageLog(window=5, loader=lambda: [m for m in everything if int(m.id) not in unrecorded])
    for m in everything:
        log.append(m, int(m.id) not in unrecorded)
    expected = [f"m{i}" for i in range(12) if i not in unrecorded]
    assert log.evicted == 7 and log.lost == 3 and len(log) == len(expected) == len(list(log))
    assert [m.text for m in log] == expected and [log[i].text for i in range(len(log))] == expected
    assert [m.text for m in log[::-1]] == expected[::-1] and "3 dropped" in repr(log)


@pytest.mark.timeout(60)
def test_session_messages_with_history_and_a_paused_trace(tmp_path) -> None:
    net = nim.MemoryNetwork()
    server = nim.Server(network=net).start().result(10)
    platform = nim.Platform("paused", network=net, message_window=5, history=tmp_path / "h.sqlite")
    try:
        alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
        bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
        accept_all(bob)
        session = alice.sessions.create("sip:bob@example.test").result(10)
        for text in ("a0", "a1", "a2"):
            session.send(text).result(10)
        with platform.trace.paused():
            for text in ("p0", "p1", "p2"):
                session.send(text).result(10)
        for text in ("b0", "b1", "b2", "b3", "b4", "b5"):
            session.send(text).result(10)
        expected = ["a0", "a1", "a2", "b0", "b1", "b2", "b3", "b4", "b5"]
        assert [m.text for m in session.messages] == expected, "no message twice, none shifted"
        assert len(session.messages) == len(expected) and session.messages.lost == 3
        assert session.messages[3].text == "b0" and session.messages[-5].text == "b1"
    finally:
        platform.shutdown()
        server.stop()


def test_hostile_sizes_say_what_is_wrong(monkeypatch) -> None:
    """Sizes that used to escape as OverflowError (int() of an infinite float), reprs that raised for huge
    limits, fractions of a byte that silently became a budget of 0 (evict everything), and an environment
    variable whose error did not name it (the Platform() that failed was given no budget)."""
    from notebook_im.record import budget as budget_mod

    huge = "9" * 400 + "GiB"
    with pytest.raises(ValueError, match="too large"):
        parse_size(huge)
    for fraction in ("0.5", "1.9B", "0.0001b"):
        with pytest.raises(ValueError, match="whole number of bytes"):
            parse_size(fraction)
    assert parse_size("1.5KiB") == 1536 and parse_size("2.0") == 2
    big = TraceBudget(10**400)
    assert "GiB" in repr(big) and format_size(10**400).endswith(" GiB")
    import numpy as np

    assert parse_size(np.int64(4096)) == 4096

    monkeypatch.setattr(budget_mod, "_process", None)
    monkeypatch.setenv(budget_mod.ENV, "plenty")
    with pytest.raises(ValueError, match="NOTEBOOK_IM_TRACE_BUDGET environment variable"):
        nim.trace_budget()
    monkeypatch.setenv(budget_mod.ENV, huge)
    with pytest.raises(ValueError, match="NOTEBOOK_IM_TRACE_BUDGET .*too large"):
        nim.trace_budget()
    monkeypatch.setenv(budget_mod.ENV, "")  # set but empty: as if unset
    assert nim.trace_budget().limit == budget_mod.DEFAULT_LIMIT
    monkeypatch.setattr(budget_mod, "_process", None)
    monkeypatch.setenv(budget_mod.ENV, " 64MiB ")
    assert nim.trace_budget().limit == 64 * 2**20


@pytest.mark.parametrize("index", ["eager", "lazy"])
def test_long_header_fields_are_counted(index: str) -> None:
    """A message with a 30 KB Call-ID is held twice, as raw bytes and as the extracted field, and was counted
    once: a peer sending such messages made the trace hold twice its budget. Counted when extracted (as it is
    recorded, or on the first frame build for a lazy index), and the budget is enforced then."""
    raws = [
        sip_message(i).replace(b"Call-ID: ", b"Call-ID: " + b"c" * 30_000 + str(i).encode()) for i in range(2 * CHUNK)
    ]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        trace = Trace(budget=TraceBudget(None), index=index)
        for raw in raws:
            trace.record_sip("in", "udp", ("127.0.0.1", 5070), ("127.0.0.1", 5080), bytes(bytearray(raw)), "o")
        trace.header_columns(len(trace))  # (what the first frame build does)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.75 <= trace.nbytes / held <= 1.25, f"counted {trace.nbytes:,} B, tracemalloc {held:,} B"
    # with a budget, the fields extracted by a frame build make it evict at once
    budget = TraceBudget(3 * CHUNK * 32_000)
    trace = Trace(budget=budget, index=index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TraceBudgetWarning)
        for raw in raws + raws[:CHUNK]:
            trace.record_sip("in", "udp", ("127.0.0.1", 5070), ("127.0.0.1", 5080), raw, "o")
        df = trace.sip(raw=False)
    assert budget.used <= budget.limit and len(trace) == CHUNK, "the fields count against the budget"
    assert (df["call_id"].str.len() > 30_000).all()


def test_the_warning_names_the_budget_to_raise(monkeypatch) -> None:
    """A platform with a budget of its own was told "nim.trace_budget().set_limit(...) keeps more in memory",
    which changes the process's budget, not the one that evicted."""
    own = nim.Platform("own", trace_budget=CHUNK * 600)
    try:
        with pytest.warns(TraceBudgetWarning) as caught:
            for i in range(3 * CHUNK):
                record(own.trace, i)
        text = str(caught[0].message)
        assert len(caught) == 1 and "for this trace" in text and "trace.budget.set_limit(" in text
        assert "nim.trace_budget()" not in text
    finally:
        own.shutdown()
    from notebook_im.record import budget as budget_mod

    monkeypatch.setattr(budget_mod, "_process", TraceBudget(CHUNK * 600))  # (the other tests' traces untouched)
    shared = Trace(budget=nim.trace_budget(), name="shared")
    with pytest.warns(TraceBudgetWarning, match=r"traces of this process.*nim\.trace_budget\(\)\.set_limit"):
        for i in range(3 * CHUNK):
            record(shared, i)
