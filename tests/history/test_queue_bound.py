"""The history writer's queue is bounded: a recording thread that outruns the writer waits for it (store.py
HIGH_WATER), so a send loop at the loop's limit cannot grow memory without end, and nothing is lost."""

from __future__ import annotations

import sqlite3
import time

from notebook_im.api.records import CODEC
from notebook_im.record import store as store_mod
from notebook_im.record.store import HistoryStore


def test_a_slow_writer_holds_the_recorder_back_and_loses_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(store_mod, "HIGH_WATER", 2_000)
    monkeypatch.setattr(store_mod, "LOW_WATER", 1_000)
    store = HistoryStore(tmp_path / "h.sqlite", CODEC)
    slow = store._write_batch  # (the writer's own step, slowed down: a disk that cannot keep up)

    def write_slowly(db):
        time.sleep(0.005)
        return slow(db)

    monkeypatch.setattr(store, "_write_batch", write_slowly)
    store.start()
    most = 0
    n = 30_000
    for i in range(n):
        store.put_sip(float(i), "in", "udp", ("127.0.0.1", 1), ("127.0.0.1", 2), b"MESSAGE x SIP/2.0\r\n\r\n", "o")
        most = max(most, store.queued)
    assert most <= 2_001, f"the queue stays under the high-water mark ({most} queued at most)"
    assert store.stalls > 0 and store.stalled > 0
    store.close()
    with sqlite3.connect(tmp_path / "h.sqlite") as db:
        assert db.execute("SELECT count(*) FROM sip").fetchone()[0] == n, "every record written"
