"""Platform(history=...): the trace kept in SQLite and loaded again by the next Platform (a kernel restart)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone

import pandas as pd
import pytest

import notebook_im as nim
from notebook_im.api.records import CODEC
from notebook_im.record.store import SCHEMA_VERSION, HistoryError, HistoryInUse, HistoryStore
from notebook_im.trace import frames
from tests.helpers import accept_all, wait_for

from .conftest import CHILD_ENV, TEXTS, record_chat

FRAMES = ("sip", "messages", "events", "drops_frame")


def test_round_trip_same_rows_and_dtypes(tmp_path, server):
    path = tmp_path / "chat.sqlite"
    first = record_chat(path, server)
    before = {name: getattr(first.trace, name)() for name in FRAMES}
    # 2 session messages and a reply (each seen by both ends), a pager message (both ends), a 404
    assert len(before["messages"]) == 9 and len(before["drops_frame"]) == 1
    assert first.history_store.closed and first.trace.store is None

    second = nim.Platform("run-2", history=path)
    try:
        assert second.history_store.loaded == {"sip": len(before["sip"]), "events": len(before["events"]), "drops": 1}
        for name in FRAMES:
            after = getattr(second.trace, name)()
            pd.testing.assert_frame_equal(after, before[name], check_exact=True)  # rows, order, values, dtypes
        schema = {
            "sip": frames.SIP_SCHEMA,
            "messages": frames.MESSAGES_SCHEMA,
            "events": frames.EVENTS_SCHEMA,
            "drops_frame": frames.DROPS_SCHEMA,
        }
        for name in FRAMES:
            df = getattr(second.trace, name)()
            assert list(df.columns) == list(schema[name])
            for column, dtype in schema[name].items():
                if dtype != "category":
                    assert df[column].dtype == dtype, (name, column)
        messages = second.trace.messages()
        sent = messages[(messages.owner == "sip:alice@example.test") & (messages.direction == "out")]
        assert sent.text.tolist() == [*TEXTS, "pager hello", "anyone?"]
        assert sent.status.tolist() == ["delivered", "delivered", "delivered", "failed"]
        assert sent.sip_status.tolist() == [200, 200, 200, 404]
        # the rebuilt events are the event classes, with stand-ins for the sessions of the earlier run
        delivered = [
            r.event
            for r in second.trace.event_records()
            if r.owner == "sip:alice@example.test" and isinstance(r.event, nim.MessageDelivered)
        ]
        assert [e.text for e in delivered] == [*TEXTS, "pager hello"]
        assert delivered[0].session.remote.uri == "sip:bob@example.test" and delivered[2].session is None
        with pytest.raises(AttributeError, match="record from the history store.*sessions.create"):
            delivered[0].session.send("again")
    finally:
        second.shutdown()


def test_new_records_are_appended_and_endpoint_history_includes_earlier(tmp_path, server):
    path = tmp_path / "chat.sqlite"
    record_chat(path, server)
    second = nim.Platform("run-2", history=path)
    try:
        alice = second.endpoint("sip:alice@example.test", server=server).result(10)
        bob = second.endpoint("sip:bob@example.test", server=server).result(10)
        accepted = accept_all(bob)
        session = alice.sessions.create("sip:bob@example.test").result(10)
        session.send("after the restart").result(10)
        wait_for(lambda: accepted, what="bob's session")
        earlier = alice.history()
        assert earlier.text.tolist()[:2] == TEXTS and earlier.text.tolist()[-1] == "after the restart"
        assert session.history().text.tolist() == ["after the restart"]  # a session is one conversation
        assert len(alice.history("sip")) > len(session.history("sip"))
        session.terminate().result(10)
    finally:
        second.shutdown()
    third = nim.Platform("run-3", history=path)
    try:
        texts = third.trace.messages(owner="sip:alice@example.test").text.tolist()
        assert texts == [*TEXTS, "hi alice", "pager hello", "anyone?", "after the restart"]
        counts = {t: n for t, n in sqlite3.connect(path).execute("SELECT type, count(*) FROM events GROUP BY type")}
        assert counts["MessageDelivered"] == 4 + 1  # run 1 (2 session + reply + pager) and run 2
    finally:
        third.shutdown()


def test_directory_form(tmp_path, server):
    folder = tmp_path / "notebook-history"
    record_chat(folder, server)  # created, holds history.sqlite
    assert (folder / "history.sqlite").is_file()
    again = nim.Platform("run-2", history=str(folder) + os.sep)
    try:
        assert again.history_store.path == folder / "history.sqlite"
        assert again.trace.messages().text.tolist()[:2] == [TEXTS[0], TEXTS[0]]  # sent by alice, received by bob
        assert "history" in repr(again) and "history.sqlite" in repr(again.history_store)
    finally:
        again.shutdown()


def test_a_second_platform_on_the_same_store_gets_a_clear_error(tmp_path):
    path = tmp_path / "history.sqlite"
    first = nim.Platform("first", history=path)
    try:
        with pytest.raises(
            HistoryInUse, match=rf"in use by another Platform \(process {os.getpid()}, this one\).*shutdown\(\)"
        ):
            nim.Platform("second", history=path)
        with pytest.raises(HistoryInUse):  # the directory form names the same file
            HistoryStore(tmp_path, CODEC)
    finally:
        first.shutdown()
    reopened = nim.Platform("third", history=path)  # released by shutdown
    reopened.shutdown()


def test_another_process_holding_the_store_and_exiting_without_shutdown(tmp_path):
    path = tmp_path / "chat.sqlite"
    code = (
        "import sys, notebook_im as nim; p = nim.Platform(history=sys.argv[1]); print('open', flush=True); "
        "sys.stdin.readline(); p.trace.record_drop('udp', ('127.0.0.1', 9), 'written at exit', b'x', 'child')"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=CHILD_ENV
    )
    try:
        assert child.stdout.readline().strip() == "open"
        with pytest.raises(HistoryInUse, match=f"process {child.pid}"):
            nim.Platform(history=path)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(20) == 0  # no shutdown(): the store is flushed and closed at interpreter exit
    finally:
        child.kill()
        child.wait(10)
        child.stdin.close()
        child.stdout.close()
    platform = nim.Platform(history=path)
    try:
        assert platform.trace.drops_frame().reason.tolist() == ["written at exit"]
    finally:
        platform.shutdown()


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="history must be a path .* not int"):
        nim.Platform(history=42)
    with pytest.raises(HistoryError, match="empty path"):
        nim.Platform(history="  ")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    with pytest.raises(HistoryError, match="existing file without a .sqlite/.sqlite3/.db suffix"):
        nim.Platform(history=notes)
    assert notes.read_text() == "my notes"
    with pytest.raises(HistoryError, match="must end in .sqlite, .sqlite3 or .db"):
        nim.Platform(history=tmp_path / "chat.json")
    with pytest.raises(HistoryError, match="directory .*missing.* does not exist; create it first"):
        nim.Platform(history=tmp_path / "missing" / "chat.sqlite")
    (tmp_path / "odd.db").mkdir()
    with pytest.raises(HistoryError, match="is a directory named like a database file"):
        nim.Platform(history=tmp_path / "odd.db")
    # unwritable: a read-only directory (root may write anywhere, but not into /sys)
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o500)
    target = "/sys/chat.sqlite" if os.geteuid() == 0 else str(locked / "chat.sqlite")
    with pytest.raises(HistoryError, match="cannot write the history store .*Permission denied.*writable location"):
        nim.Platform(history=target)


def test_files_that_are_not_our_store(tmp_path):
    text = tmp_path / "text.sqlite"
    text.write_text("hello, not a database\n" * 10)
    with pytest.raises(HistoryError, match="is not a SQLite database.*pass a new file name"):
        nim.Platform(history=text)
    assert text.read_text().startswith("hello")  # left untouched
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE customers (name TEXT)")
    with pytest.raises(
        HistoryError,
        match=r"SQLite database but not a notebook_im history store \(its tables: "
        r"customers\); pass a new file name",
    ):
        nim.Platform(history=other)
    newer = tmp_path / "newer.sqlite"
    nim.Platform(history=newer).shutdown()
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE schema SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(
        HistoryError,
        match=rf"newer notebook_im \(history schema {SCHEMA_VERSION + 1}; this version "
        rf"reads schema {SCHEMA_VERSION}\); upgrade notebook_im",
    ):
        nim.Platform(history=newer)
    with sqlite3.connect(newer) as db:  # a failed open released the lock: the file is usable once fixed
        db.execute("UPDATE schema SET version = ?", (SCHEMA_VERSION,))
    nim.Platform(history=newer).shutdown()
    empty = tmp_path / "empty.sqlite"
    empty.touch()  # an empty file is an empty database: it becomes a store
    nim.Platform(history=empty).shutdown()
    assert sqlite3.connect(empty).execute("SELECT version FROM schema").fetchone() == (SCHEMA_VERSION,)


def test_passwords_never_reach_the_store(tmp_path):
    users = {"alice": "alice-secret-1", "bob": "bob-secret-2"}
    server = nim.Server(users=users, realm="example.test").start().result(10)
    try:
        path = tmp_path / "chat.sqlite"
        platform = record_chat(path, server, password=users["alice"], bob_password=users["bob"])
        assert any(b"uthorization:" in r.raw for r in platform.trace.sip_records())
    finally:
        server.stop()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"uthorization" in stored and b"<redacted>" in stored
    for password in users.values():
        assert password.encode() not in stored
    rows = [bytes(r[0]) for r in sqlite3.connect(path).execute("SELECT raw FROM sip")]
    creds = [r for r in rows if b"uthorization:" in r]
    assert creds and all(b"Digest <redacted>" in r and b"response=" not in r for r in creds)


def test_events_of_a_type_this_version_does_not_know_pass_through(tmp_path, server):
    path = tmp_path / "chat.sqlite"
    record_chat(path, server)
    fields = {
        "timestamp": {"$dt": "2030-01-02T03:04:05+00:00"},
        "message_id": "m-1",
        "text": "read",
        "participant": {"$ref": "Participant", "uri": "sip:bob@example.test", "name": None, "local": False},
    }
    with sqlite3.connect(path) as db:  # what a later version (or another helper's new event) might write
        db.execute(
            "INSERT INTO events (timestamp, owner, type, session_id, fields) VALUES (?,?,?,?,?)",
            (1893553445.0, "sip:alice@example.test", "MessageDisplayed", None, json.dumps(fields)),
        )
    platform = nim.Platform(history=path)
    try:
        events = platform.trace.events()
        row = events[events.type == "MessageDisplayed"].iloc[0]
        assert (row.participant, row.text, row.message_id) == ("sip:bob@example.test", "read", "m-1")
        assert row.timestamp == pd.Timestamp("2030-01-02T03:04:05Z")
    finally:
        platform.shutdown()


def test_import_does_not_load_sqlite():
    code = "import sys, notebook_im; print('sqlite3' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=CHILD_ENV).stdout
    assert out.split() == ["False", "False"]


def test_writer_backlog_flush_and_odd_events(tmp_path):
    """A backlog bigger than one batch is committed in steps and flush() waits for all of it; an event the
    writer cannot encode is counted and skipped, the others are written."""

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text for this one")

    from notebook_im.record import store as history

    store = HistoryStore(tmp_path / "backlog.sqlite", CODEC)
    try:
        n = history.BATCH * 2 + 7
        for i in range(n):
            store.put_sip(float(i), "out", "udp", ("127.0.0.1", 5060), ("127.0.0.1", 5070), b"OPTIONS x", "sip:a@b")
        when = datetime(2030, 1, 1, tzinfo=timezone.utc)
        store.put_event(
            1.0, "sip:a@b", nim.MessageReceived(None, nim.Participant("sip:b@c"), "ok", "text/plain", timestamp=when)
        )
        store.put_event(
            2.0,
            "sip:a@b",
            nim.MessageReceived(None, nim.Participant("sip:b@c"), Unprintable(), "text/plain", timestamp=when),
        )
        store.start()
        assert store.flush(20)
        assert store.commits >= 3 and store.written == n + 1
        assert store.write_errors == 1 and "cannot encode MessageReceived" in store.last_error
    finally:
        store.close()
    db = sqlite3.connect(tmp_path / "backlog.sqlite")
    assert db.execute("SELECT count(*), min(timestamp), max(timestamp) FROM sip").fetchone() == (n, 0.0, n - 1.0)
    assert db.execute("SELECT json_extract(fields, '$.text') FROM events").fetchall() == [("ok",)]
