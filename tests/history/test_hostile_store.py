"""The history store pointed at files, links and rows it did not create (Platform(history=...)).

- A foreign file (a text file, another program's SQLite database, one with only an application id or a
  user_version) gives HistoryError and stays byte-identical, with nothing created next to it.
- A symbolic link (to a file, to a directory, dangling, planted as the lock or the WAL, a directory link owned
  by another user) is never written through; a directory every user can write is refused.
- The files the store creates are the user's only: 0600, a directory it creates 0700.
- Malformed rows (NULL-like, wrong types, bad JSON, unknown and impossible event types, huge values) are
  skipped and counted; the rest of the history loads and the chat panel shows it."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import notebook_im as nim
from notebook_im.record import store as history
from notebook_im.record.store import HistoryError

from .conftest import TEXTS, record_chat

OTHER_UID = 65534  # nobody
MAX_RAW = getattr(history, "MAX_RAW", 1 << 17)  # (getattr: the file also runs against the code before)
MAX_FIELDS = getattr(history, "MAX_FIELDS", 1 << 20)


def _snapshot(directory: Path) -> dict[str, str]:
    """Every file in `directory` (links as their target) with a hash of its bytes."""
    out = {}
    for p in sorted(directory.iterdir()):
        if p.is_symlink():
            out[p.name] = "-> " + os.readlink(p)
        elif p.is_file():
            out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[p.name] = "dir"
    return out


def _refused(path: Path | str, match: str) -> None:
    with pytest.raises(HistoryError, match=match):
        nim.Platform(history=path)


def _foreign_files(d: Path) -> dict[str, str]:
    """name -> what the error must say, for files another program made."""
    (d / "notes.sqlite").write_text("my notes, not a database\n" * 20)
    with sqlite3.connect(d / "customers.db") as db:
        db.execute("CREATE TABLE customers (name TEXT)")
        db.execute("INSERT INTO customers VALUES ('ada')")
    db.close()
    with sqlite3.connect(d / "wal-app.db") as db:  # another program's database in WAL mode
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (x)")
    db.close()
    with sqlite3.connect(d / "tagged.db") as db:  # no tables yet, but marked by its program
        db.execute("PRAGMA application_id=1234")
    db.close()
    with sqlite3.connect(d / "versioned.db") as db:
        db.execute("PRAGMA user_version=7")
    db.close()
    with sqlite3.connect(d / "lookalike.sqlite") as db:  # our table names, another application
        db.executescript(history._DDL)
        db.execute("INSERT INTO schema VALUES (1, 'someone else', 0)")
    db.close()
    (d / "truncated.db").write_bytes(b"SQLite format 3\x00" + b"\x10\x00")
    return {
        "notes.sqlite": "not a SQLite database",
        "customers.db": r"not a notebook_im history store \(its tables: "
        "customers",
        "wal-app.db": "its tables: t",
        "tagged.db": "another application .application_id 0x4d2",
        "versioned.db": "another program .it sets user_version",
        "lookalike.sqlite": "not a notebook_im history store",
        "truncated.db": "truncated SQLite database",
    }


def test_foreign_files_are_refused_and_left_byte_identical(tmp_path):
    d = tmp_path / "foreign"
    d.mkdir()
    expected = _foreign_files(d)
    before = _snapshot(d)
    for name, match in expected.items():
        _refused(d / name, match)
    assert _snapshot(d) == before, "a foreign file was modified, or a file (lock, -wal, -shm) created next to it"


def test_symlinks_are_never_written_through(tmp_path):
    d = tmp_path / "links"
    d.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    ours = tmp_path / "real.sqlite"
    nim.Platform(history=ours).shutdown()
    (d / "to-file.sqlite").symlink_to(victim)
    (d / "to-store.sqlite").symlink_to(ours)
    (d / "dangling.sqlite").symlink_to(tmp_path / "made-by-the-link.sqlite")
    (d / "to-dir.sqlite").symlink_to(tmp_path)
    (d / "planted.sqlite.lock").symlink_to(victim)  # the lock file used to be truncated through the link
    (d / "planted.sqlite-wal").symlink_to(victim)
    (d / "journal.sqlite-journal").symlink_to(victim)
    before, victim_before, ours_before = _snapshot(d), victim.read_bytes(), ours.read_bytes()
    for name in ("to-file.sqlite", "to-store.sqlite", "dangling.sqlite", "planted.sqlite", "journal.sqlite"):
        _refused(d / name, "symbolic link; the history store never writes through one")
    _refused(d / "to-dir.sqlite", "symbolic link|directory named like a database file")
    assert victim.read_bytes() == victim_before and ours.read_bytes() == ours_before
    assert not (tmp_path / "made-by-the-link.sqlite").exists()
    assert _snapshot(d) == before


@pytest.mark.skipif(not hasattr(os, "lchown") or os.geteuid() != 0, reason="needs root to plant another user's link")
def test_a_directory_link_planted_by_another_user_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    planted = tmp_path / "shared"
    planted.symlink_to(target)
    os.lchown(planted, OTHER_UID, OTHER_UID)
    _refused(planted, "symbolic link owned by another user")
    _refused(planted / "chat.sqlite", "symbolic link owned by another user")
    assert list(target.iterdir()) == []
    mine = tmp_path / "mine"
    mine.symlink_to(target)  # a link the user made is the user's choice
    nim.Platform(history=mine).shutdown()
    assert (target / history.DIRECTORY_FILE).is_file()


def test_directories_others_control_are_refused(tmp_path, monkeypatch):
    open_dir = tmp_path / "everyone"
    open_dir.mkdir()
    open_dir.chmod(0o1777)  # like /tmp: anyone could plant chat.sqlite-wal before the store makes it
    _refused(open_dir / "chat.sqlite", "writable by every user")
    _refused(open_dir, "writable by every user")
    assert list(open_dir.iterdir()) == []
    # the same directory and files, seen by another user: none of it is theirs
    ours = tmp_path / "private"
    ours.mkdir()
    nim.Platform(history=ours / "chat.sqlite").shutdown()
    monkeypatch.setattr(history, "_uid", lambda: OTHER_UID)
    _refused(ours / "chat.sqlite", "belongs to another user")


def test_created_files_are_private(tmp_path):
    platform = nim.Platform(history=tmp_path / "new-dir")
    try:
        platform.endpoint("sip:alice@example.test", server=None).result(10)
        platform.history_store.flush()
        d = tmp_path / "new-dir"
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in d.iterdir()}
        assert history.DIRECTORY_FILE in files and f"{history.DIRECTORY_FILE}-wal" in files
        assert set(files.values()) == {0o600}, files
    finally:
        platform.shutdown()
    # a store an older version made world-readable is made private when opened
    old = tmp_path / "old.sqlite"
    nim.Platform(history=old).shutdown()
    old.chmod(0o644)
    Path(str(old) + ".lock").chmod(0o644)
    nim.Platform(history=old).shutdown()
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(str(old) + ".lock").stat().st_mode) == 0o600


def test_a_store_an_older_version_left_after_a_kill_still_opens(tmp_path):
    """The old writer set the application id after switching to WAL: killed before a checkpoint, the file
    itself has no id and no tables (they are in the WAL). sniff looks into the WAL read-only."""
    path = tmp_path / "legacy.sqlite"
    code = (
        f"import sqlite3, os\ndb = sqlite3.connect({str(path)!r})\ndb.execute('PRAGMA journal_mode=WAL')\n"
        f"db.executescript({history._DDL!r} + 'PRAGMA application_id={history.APPLICATION_ID};')\n"
        f"db.execute('INSERT INTO schema VALUES (1, ?, 0)', ({history.APPLICATION!r},)); db.commit()\n"
        "os._exit(9)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    assert int.from_bytes(path.read_bytes()[68:72], "big") == 0 and Path(str(path) + "-wal").exists()
    nim.Platform(history=path).shutdown()


# -- rows it did not write -------------------------------------------------------------------------------------
def _event(type_name: str, fields: dict | str, ts: float = 1.9e9, owner: str = "sip:alice@example.test") -> tuple:
    return (ts, owner, type_name, None, fields if isinstance(fields, str) else json.dumps(fields))


WHEN = {"$dt": "2030-01-02T03:04:05+00:00"}
BOB = {"$ref": "Participant", "uri": "sip:bob@example.test", "name": "Bob", "local": False}
RECEIVED = {
    "timestamp": WHEN,
    "session": None,
    "participant": BOB,
    "text": "hi",
    "content_type": "text/plain",
    "message_id": "m",
    "mode": "pager",
    "recipient": "sip:alice@example.test",
    "sent_at": None,
}

BAD_EVENTS = [
    _event("MessageReceived", "{not json"),
    _event("MessageReceived", "[1, 2, 3]"),
    _event("MessageReceived", "[" * 100_000 + "]" * 100_000),  # too deep for the decoder
    _event("MessageReceived", {**RECEIVED, "text": 12345}),  # a number where text goes
    _event("MessageReceived", {**RECEIVED, "participant": {"$ref": "Participant"}}),  # a reference without URI
    _event("MessageReceived", {**RECEIVED, "participant": {"$ref": "Participant", "uri": ["x"]}}),
    _event("MessageReceived", {**RECEIVED, "timestamp": {"$dt": "yesterday"}}),
    _event("MessageReceived", {**RECEIVED, "timestamp": {"$dt": "2030-01-02T03:04:05"}}),  # no time zone
    _event("MessageReceived", {**RECEIVED, "timestamp": {"$dt": 5}}),
    _event("MessageReceived", {**RECEIVED, "session": {"$session": 7, "remote": BOB}}),
    _event("MessageDelivered", {**RECEIVED, "status": "two hundred", "reason": "OK", "latency": 0.1}),
    _event("MessageDelivered", {**RECEIVED, "status": 200, "reason": "OK", "latency": float("nan")}),
    _event("Not A Name", {"timestamp": WHEN}),
    _event("class", {"timestamp": WHEN}),
    _event("SomethingNew", {"timestamp": WHEN, "__init__": 1}),
    _event("SomethingNew", {"timestamp": WHEN, "not a name": 1}),
    _event("SomethingNewer", {"no_timestamp": 1}),
    _event("MessageReceived", json.dumps({**RECEIVED, "text": "x" * (MAX_FIELDS + 10)})),  # huge
    ("soon", "sip:alice@example.test", "MessageReceived", None, json.dumps(RECEIVED)),  # text timestamp
    (1e300, "sip:alice@example.test", "MessageReceived", None, json.dumps(RECEIVED)),
    (1.9e9, b"alice", "MessageReceived", None, json.dumps(RECEIVED)),  # a blob (a number would become text)
    (1.9e9, "sip:alice@example.test", "MessageReceived", None, b'{"blob": 1}'),
]
BAD_SIP = [
    ("soon", "sip:alice@example.test", "in", "udp", None, None, None, None, b"OPTIONS x SIP/2.0\r\n\r\n"),
    (1e300, "sip:alice@example.test", "in", "udp", None, None, None, None, b"x"),
    (1.9e9, "sip:alice@example.test", "sideways", "udp", None, None, None, None, b"x"),
    (1.9e9, "sip:alice@example.test", "in", "udp", "h", "port", None, None, b"x"),
    (1.9e9, "sip:alice@example.test", "in", "udp", None, None, None, 70000, b"x"),
    (1.9e9, "sip:alice@example.test", "in", "udp", None, None, None, None, "text, not bytes"),
    (1.9e9, "sip:alice@example.test", "in", "udp", None, None, None, None, 1_000_000),  # bytes(n) made n zeros
    (1.9e9, "sip:alice@example.test", "in", "udp", None, None, None, None, b"x" * (MAX_RAW + 1)),
    (1.9e9, "o" * 5000, "in", "udp", None, None, None, None, b"x"),
]
BAD_DROPS = [
    (1.9e9, "sip:alice@example.test", "udp", None, None, b"reason", b"x"),
    (1.9e9, "sip:alice@example.test", "udp", None, None, "bad", "text"),
    ("when", "sip:alice@example.test", "udp", None, None, "bad", b"x"),
]
GOOD_UNKNOWN = _event("SomethingNew", {"timestamp": WHEN, "detail": "from a later version"})


def _plant_rows(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO events (timestamp, owner, type, session_id, fields) VALUES (?,?,?,?,?)",
            [*BAD_EVENTS, GOOD_UNKNOWN],
        )
        db.executemany(
            "INSERT INTO sip (timestamp, owner, direction, transport, local_host, local_port, remote_host, "
            "remote_port, raw) VALUES (?,?,?,?,?,?,?,?,?)",
            BAD_SIP,
        )
        db.executemany(
            "INSERT INTO drops (timestamp, owner, transport, remote_host, remote_port, reason, raw) "
            "VALUES (?,?,?,?,?,?,?)",
            BAD_DROPS,
        )
    db.close()


def test_bad_rows_are_skipped_and_counted_the_rest_loads(tmp_path, server, caplog):
    path = tmp_path / "chat.sqlite"
    first = record_chat(path, server)
    good = {"sip": len(first.trace.sip()), "events": len(first.trace.events()), "drops": 1}
    _plant_rows(path)
    platform = nim.Platform("run-2", history=path)
    try:
        store = platform.history_store
        assert store.skipped == {"sip": len(BAD_SIP), "events": len(BAD_EVENTS), "drops": len(BAD_DROPS)}
        assert store.loaded == {"sip": good["sip"], "events": good["events"] + 1, "drops": 1}
        assert "skipped" in caplog.text
        messages = platform.trace.messages()
        sent = messages[(messages.owner == "sip:alice@example.test") & (messages.direction == "out")]
        assert sent.text.tolist() == [*TEXTS, "pager hello", "anyone?"]
        events = platform.trace.events()
        assert "SomethingNew" in set(events.type)
        assert len(platform.trace.sip()) == good["sip"]
        alice = platform.endpoint("sip:alice@example.test", server=None).result(10)
        assert len(alice.history()) >= len(TEXTS)
        panel = nim.ChatPanel(alice)
        assert panel.earlier.conversations and any(
            TEXTS[0] in m.text for c in panel.earlier.conversations for m in c.messages
        )
        panel.close()
    finally:
        platform.shutdown()


def test_a_store_of_only_bad_rows_opens_empty(tmp_path):
    path = tmp_path / "bad.sqlite"
    nim.Platform(history=path).shutdown()
    _plant_rows(path)
    platform = nim.Platform(history=path)
    try:
        assert platform.history_store.loaded == {"sip": 0, "events": 1, "drops": 0}
        assert len(platform.trace.messages()) == 0
    finally:
        platform.shutdown()
