"""A history store: the trace written to SQLite as it happens, so conversations survive a kernel restart.

    platform = nim.Platform(history="chat.sqlite")     # or a directory: <dir>/history.sqlite
    ...                                                 # every SIP message, API event and drop is appended
    platform.shutdown()                                 # flushes and closes the store
    platform = nim.Platform(history="chat.sqlite")      # a new kernel: trace.sip()/messages()/events() and
                                                        # ChatPanel(endpoint) show the earlier conversations

Why a writer thread. Recording is on the hot path (trace/recorder.py), so the caller's thread (the library's
loop thread) never does SQL: `Trace.record_*` hands each record to `HistoryStore.put_*`, which appends the
record to a deque (atomic, no lock) and wakes the writer if it sleeps. A daemon writer thread takes what is
there, inserts it and commits: at once when the previous commit is older than `WINDOW` (10 ms), else when it
is that old; when records come faster than `LOAD_RATE` (2,000/s: a send loop, not a chat) it gathers for
`LOAD_WINDOW` (50 ms) instead. Why: every commit cycle costs the writer a few hundred µs (the commit, and
above all the GIL: a thread that wants the GIL while the loop thread is busy is woken and put back to sleep at
each of the loop's system calls until the 5 ms switch interval hands it over). Committing every 2 ms cost a
send loop ~130 µs of writer CPU per message, every 10 ms ~70, every 50 ms ~45 (bench/history.py). So a record
is durable ~10 ms after it happened at chat pace, and a SIGKILLed kernel loses at most the last message there
(tests/history/test_crash.py); a send loop loses its last ~50 ms. The writer shares the GIL with the loop
thread, so its own work is kept small: the JSON C encoder does the event fields, and rows go in with
multi-row INSERTs (SQLite releases the GIL on every step, and each release can hand the GIL to the loop
thread and back). SQLite runs in WAL mode with `synchronous=NORMAL`: a commit survives the process being
killed (the WAL is in the OS page cache), and readers (the sqlite3 shell, DuckDB, pandas.read_sql) can open
the file while a Platform writes it. A power cut may lose the last commits (that would need
`synchronous=FULL`, an fsync per commit).

Why one Platform per store. Two platforms appending to one file would each show only their own half of the
conversation after loading, so a store has one writer: opening it takes an exclusive lock on
`<store>.lock` (flock; released by the OS when the process dies, so a killed kernel leaves no stale lock),
and a second Platform gets `HistoryInUse` naming the process that holds it.

Schema (version 1, in the `schema` table; `PRAGMA application_id` marks the file as ours too):

    schema  (version INTEGER, application TEXT, created REAL)        one row
    sip     (id, timestamp REAL, owner, direction, transport,          one row per SIP message, raw bytes as
             local_host, local_port, remote_host, remote_port, raw BLOB)   recorded (credentials already redacted)
    events  (id, timestamp REAL, owner, type, session_id, fields TEXT)   one row per API event; `fields` is
                                                                         JSON of every dataclass field
    drops   (id, timestamp REAL, owner, transport, remote_host, remote_port, reason, raw BLOB)

Events are stored field by field, not as frame rows: on loading they are rebuilt into the same event classes
(`MessageDelivered`, ...), with small stand-ins for the live objects they pointed at (`EarlierSession`, a
`Participant` without a session). The frame builders in frames.py then run on them exactly as on live events,
so a column added to a frame later appears for earlier conversations too, without a change here. Encoding:
JSON scalars, lists and dicts as they are; states (str enums) as their value, turned back into the enum the
field's annotation names; `{"$dt": iso}` datetimes; `{"$enum": class, "v": value}` other enums; `{"$ref": class,
"uri", "name", "local"}` objects with a URI (participants, endpoints); `{"$session": id, "remote": ...}`
sessions; anything else `str()`. So `SELECT json_extract(fields, '$.text') FROM events` works in SQL.
"""
from __future__ import annotations

import atexit
import dataclasses
import enum
import functools
import json
import json.encoder
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ..errors import NotebookImError
from .recorder import DropRecord, EventRecord

if TYPE_CHECKING:  # pragma: no cover
    import sqlite3

    from .recorder import Trace

log = logging.getLogger("notebook_im.history")

SCHEMA_VERSION = 1
APPLICATION = "notebook_im history"
APPLICATION_ID = 0x6E696D68  # "nimh", PRAGMA application_id
SUFFIXES = (".sqlite", ".sqlite3", ".db")
DIRECTORY_FILE = "history.sqlite"
BATCH = 2048  # records of each kind per transaction at most: a backlog is committed in steps
WINDOW = 0.010  # s between commits when records come in steadily: ~10 ms of records per commit
LOAD_WINDOW = 0.050  # ... and when they come faster than LOAD_RATE records/s (a send loop, not a chat)
LOAD_RATE = 2000

_DDL = """
CREATE TABLE schema (version INTEGER NOT NULL, application TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE sip (id INTEGER PRIMARY KEY, timestamp REAL NOT NULL, owner TEXT NOT NULL, direction TEXT NOT NULL,
                  transport TEXT NOT NULL, local_host TEXT, local_port INTEGER, remote_host TEXT,
                  remote_port INTEGER, raw BLOB NOT NULL);
CREATE TABLE events (id INTEGER PRIMARY KEY, timestamp REAL NOT NULL, owner TEXT NOT NULL, type TEXT NOT NULL,
                     session_id TEXT, fields TEXT NOT NULL);
CREATE TABLE drops (id INTEGER PRIMARY KEY, timestamp REAL NOT NULL, owner TEXT NOT NULL, transport TEXT NOT NULL,
                    remote_host TEXT, remote_port INTEGER, reason TEXT NOT NULL, raw BLOB NOT NULL);
"""
_TABLES = {"schema", "sip", "events", "drops"}


class HistoryError(NotebookImError):
    """The history store cannot be used: the message says which file, why, and what to do."""


class HistoryInUse(HistoryError):
    """Another Platform (in this process or another) is writing the same history store."""


# -- the path -------------------------------------------------------------------------------------------------
def resolve_path(history: Any) -> Path:
    """The store file for `Platform(history=...)`: a `.sqlite`/`.sqlite3`/`.db` file, or a directory (created if
    missing) holding `history.sqlite`. Raises TypeError/HistoryError saying what to pass instead."""
    if isinstance(history, bytes) or not isinstance(history, (str, os.PathLike)):
        raise TypeError("history must be a path (str or pathlib.Path) to a .sqlite or .db file, or to a directory, "
                        f"not {type(history).__name__}")
    text = os.fspath(history)
    if not text.strip():
        raise HistoryError("history is an empty path; pass a file such as 'chat.sqlite' or a directory")
    path = Path(text).expanduser()
    if path.suffix.lower() in SUFFIXES:
        if path.is_dir():
            raise HistoryError(f"history {str(path)!r} is a directory named like a database file; pass "
                               f"{str(path / DIRECTORY_FILE)!r} or another file name")
        if not path.parent.is_dir():
            raise HistoryError(f"cannot create the history store {str(path)!r}: the directory "
                               f"{str(path.parent)!r} does not exist; create it first or choose another path")
        return path
    if path.is_file():
        raise HistoryError(f"history {str(path)!r} is an existing file without a .sqlite/.sqlite3/.db suffix; "
                           "pass a database file name ending in .sqlite or .db, or a directory")
    if path.suffix and not path.exists():
        raise HistoryError(f"history {str(path)!r}: a store file must end in .sqlite, .sqlite3 or .db "
                           f"(for a directory, leave out the suffix {path.suffix!r})")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HistoryError(f"cannot create the history directory {str(path)!r}: {exc.strerror or exc}; "
                           "choose a writable location") from None
    return path / DIRECTORY_FILE


# -- one writer per store ------------------------------------------------------------------------------------
class _Lock:
    """An exclusive, non-blocking lock on `<store>.lock` holding the owner's pid (for the error message)."""

    def __init__(self, store_path: Path) -> None:
        self.path = store_path.with_name(store_path.name + ".lock")
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise HistoryError(f"cannot write the history store {str(store_path)!r}: {exc.strerror or exc} "
                               f"({str(self.path)!r}); choose a writable location") from None
        try:
            _lock_fd(self._fd)
        except OSError:
            holder = os.pread(self._fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            if holder == str(os.getpid()):
                holder += ", this one"
            os.close(self._fd)
            raise HistoryInUse(
                f"the history store {str(store_path)!r} is in use by another Platform (process {holder}); one "
                "Platform writes a store at a time: call platform.shutdown() on the other one (or end that "
                "process), or pass a different history= path") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:  # pragma: no cover - the file system went away; closing still drops the lock
            pass
        os.close(self._fd)  # closing the descriptor releases the lock
        self._fd = None


def _lock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


# -- events to JSON and back -------------------------------------------------------------------------------------
def _ref(value: Any) -> dict:  # a participant or an endpoint
    return {"$ref": type(value).__name__, "uri": str(value.uri), "name": getattr(value, "display_name", None),
            "local": bool(getattr(value, "is_local", False))}


def _session(value: Any) -> dict:
    return {"$session": str(value.id), "remote": value.remote,
            "local": str(getattr(getattr(value, "endpoint", None), "uri", "") or ""),
            "conference": bool(getattr(value, "is_conference", False)),
            "incoming": bool(getattr(value, "is_incoming", False))}


def encode_value(value: Any) -> Any:
    """What a field value the JSON encoder does not know becomes (see the module docstring for the tags). Only
    these go through Python: strings, numbers, booleans, None, lists and dicts are the C encoder's work, which
    keeps the writer thread's share of the GIL small."""
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, enum.Enum):  # str-valued enums (the states) are written as their value by the encoder
        return {"$enum": type(value).__name__, "v": value.value}
    if hasattr(value, "uri"):
        return _ref(value)
    if hasattr(value, "id") and hasattr(value, "remote"):
        return _session(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _json_encoder() -> Any:
    """A function value -> JSON text. JSONEncoder.encode builds a new C encoder on every call, which is a third of
    the time of encoding a small event; CPython's C encoder is made once here (the pure-Python one elsewhere).
    No circular check: the values are fresh dicts and strings."""
    c_make_encoder = json.encoder.c_make_encoder
    if c_make_encoder is None:  # pragma: no cover - not CPython
        return json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False,
                                default=encode_value).encode
    make = c_make_encoder(None, encode_value, json.encoder.encode_basestring, None, ":", ",", False, False, True)
    return lambda value: "".join(make(value, 0))


_JSON = _json_encoder()


OBJECT_FIELDS = ("session", "participant", "inviter", "endpoint")  # event fields that hold live objects
_string = json.encoder.encode_basestring  # str -> JSON string literal (C), non-ASCII kept as it is


class EventEncoder:
    """Events as JSON, for the writer thread, which shares the GIL with the loop thread and so must be cheap.
    Field by field: strings through the C string encoder, numbers, None and datetimes written directly, and
    the live objects an event points at (its session, participant, endpoint), which are the same in every event
    of a conversation, encoded once and kept (keyed by the object and its display name, which may still
    change). Anything else goes through the JSON encoder. About a third cheaper than one `json.dumps` of a dict
    of encoded fields. Not thread-safe: one per writer."""

    def __init__(self, max_cached: int = 4096) -> None:
        self.max_cached = max_cached
        self._cache: dict[int, tuple[Any, Any, str]] = {}  # id(obj) -> (obj, its display name, its JSON)

    def __call__(self, event: Any) -> str:
        """Every dataclass field of `event` as one JSON object."""
        fields = getattr(event, "__dict__", None)
        if fields is None:  # a slotted dataclass
            fields = {name: getattr(event, name) for name in event.__dataclass_fields__}
        parts = []
        for name, value in fields.items():  # field names are identifiers: nothing to escape
            cls = type(value)
            if cls is str:
                text = _string(value)
            elif value is None:
                text = "null"
            elif cls is datetime:
                text = '{"$dt":"' + value.isoformat() + '"}'
            elif cls is bool:
                text = "true" if value else "false"
            elif cls is int or (cls is float and math.isfinite(value)):
                text = repr(value)
            elif name in OBJECT_FIELDS:
                text = self._object(value)
            else:
                text = _JSON(value)
            parts.append(f'"{name}":{text}')
        return "{" + ",".join(parts) + "}"

    def _object(self, value: Any) -> str:
        if value is None:
            return "null"
        name = getattr(getattr(value, "remote", value), "display_name", None)
        hit = self._cache.get(id(value))
        if hit is not None and hit[0] is value and hit[1] == name:
            return hit[2]
        if len(self._cache) >= self.max_cached:
            self._cache.clear()
        text = _JSON(value)
        self._cache[id(value)] = (value, name, text)  # holding the object keeps its id from being reused
        return text


@dataclass(frozen=True)
class EarlierRef:
    """An object with a URI (an endpoint) from a stored event: its URI and display name, nothing live."""

    uri: str
    display_name: str | None = None

    @property
    def name(self) -> str:
        """The display name, else the user part of the URI."""
        return self.display_name or self.uri.split(":", 1)[-1].split("@", 1)[0] or self.uri


@dataclass(frozen=True, eq=False)
class EarlierSession:
    """A session as a stored event remembers it: its id, the remote party and the local URI. It is a record of
    a conversation from an earlier run, so it cannot send, accept or end anything."""

    id: str
    remote: Any
    local_uri: str = ""
    is_conference: bool = False
    is_incoming: bool = False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"session {self.id} is a record from the history store (an earlier run), so it has no "
                             f"{name!r}: start a new conversation with endpoint.sessions.create({self.remote.uri!r})")

    def __repr__(self) -> str:
        return f"<EarlierSession {self.id} with {self.remote.uri}>"


def decode_value(data: Any) -> Any:
    """The inverse of `encode_value`, with stand-ins (`Participant`, `EarlierRef`, `EarlierSession`) for live objects."""
    if isinstance(data, list):
        return [decode_value(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "$dt" in data:
        return datetime.fromisoformat(data["$dt"])
    if "$enum" in data:
        from ..api import events

        cls = getattr(events, data["$enum"], None)
        try:
            return cls(data["v"]) if isinstance(cls, type) and issubclass(cls, enum.Enum) else data["v"]
        except ValueError:  # a state this version does not know: keep its value
            return data["v"]
    if "$ref" in data:
        if data["$ref"] == "Participant":
            from ..api.participant import Participant

            return Participant(data["uri"], display_name=data.get("name"), is_local=bool(data.get("local")))
        return EarlierRef(data["uri"], data.get("name"))
    if "$session" in data:
        return EarlierSession(data["$session"], decode_value(data.get("remote")) or EarlierRef(""),
                              data.get("local", ""), bool(data.get("conference")), bool(data.get("incoming")))
    return {k: decode_value(v) for k, v in data.items()}


_GENERIC: dict[tuple[str, tuple[str, ...]], type] = {}


@functools.lru_cache(maxsize=None)
def _field_enums(cls: type) -> dict[str, Any]:
    """The fields of an event class, each with the Enum class its annotation names (or None): states are stored
    as their plain value and turned back into the enum here."""
    from ..api import events

    out = {}
    for f in dataclasses.fields(cls):
        named = getattr(events, f.type, None) if isinstance(f.type, str) else f.type
        out[f.name] = named if isinstance(named, type) and issubclass(named, enum.Enum) else None
    return out


def _as_enum(kind: Any, value: Any) -> Any:
    if kind is None or not isinstance(value, str):
        return value
    try:
        return kind(value)
    except ValueError:  # a state this version does not know: keep its value
        return value


def decode_event(type_name: str, fields_json: str) -> Any:
    """A stored event rebuilt as its event class (or, for a type or fields this version does not have, a frozen
    dataclass of the same name and fields, which the frames treat the same way)."""
    from ..api import events

    fields = {k: decode_value(v) for k, v in json.loads(fields_json).items()}
    cls = getattr(events, type_name, None)
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        known = _field_enums(cls)
        try:
            return cls(**{k: _as_enum(known[k], v) for k, v in fields.items() if k in known})
        except TypeError:  # a required field this store does not have: fall through to the generic record
            pass
    key = (type_name, tuple(fields))
    generic = _GENERIC.get(key)
    if generic is None:
        generic = dataclasses.make_dataclass(type_name, [(k, Any, field(default=None)) for k in fields], frozen=True)
        _GENERIC[key] = generic
    return generic(**fields)


# -- earlier conversations (what ChatPanel shows) ------------------------------------------------------------
@dataclass
class EarlierConversation:
    """The messages of one earlier session (or of the pager-mode messages with one peer), oldest first, as the
    `ChatMessage`s a live session keeps; `names` are the display names the events carried, by URI."""

    key: str                    # the session id, or "pager:<peer uri>"
    peer: str                   # the remote party's URI
    mode: str                   # "session" / "pager"
    messages: list = field(default_factory=list)          # ChatMessage
    names: dict[str, str] = field(default_factory=dict)

    @property
    def started(self) -> datetime:
        """When the first message was sent or received."""
        return self.messages[0].timestamp

    @property
    def ended(self) -> datetime:
        """When the last message was sent or received."""
        return self.messages[-1].timestamp


UNCONFIRMED = "no final response was recorded (the program stopped first)"
_MESSAGE_EVENTS = ("MessageReceived", "MessageSending", "MessageDelivered", "MessageFailed")


def earlier_conversations(records: Iterable[EventRecord], owner: str) -> list[EarlierConversation]:
    """The conversations of endpoint `owner` in `records` (stored events), newest first. A message that was sent
    but never confirmed (the kernel died first) shows as failed, with the reason `UNCONFIRMED`."""
    from ..api.session import ChatMessage

    convs: dict[str, EarlierConversation] = {}
    sent: dict[tuple[str, str], ChatMessage] = {}
    for rec in records:
        ev = rec.event
        kind = type(ev).__name__
        if rec.owner != owner or kind not in _MESSAGE_EVENTS:
            continue
        session = getattr(ev, "session", None)
        remote = session.remote if session is not None else getattr(ev, "participant", None)
        peer = remote.uri if remote is not None else ev.recipient
        key = session.id if session is not None else f"pager:{peer}"
        conv = convs.get(key)
        if conv is None:
            conv = convs[key] = EarlierConversation(key, peer, "session" if session is not None else "pager")
        for who in (remote, getattr(ev, "participant", None)):
            if getattr(who, "display_name", None):
                conv.names[who.uri] = who.display_name
        message_id = getattr(ev, "message_id", "") or f"{kind}-{rec.timestamp}"
        when = ev.timestamp
        if kind == "MessageReceived":
            conv.messages.append(ChatMessage(id=message_id, direction="in", sender=ev.participant.uri, recipient=owner,
                                             text=ev.text, content_type=ev.content_type, timestamp=when,
                                             status="received", mode=conv.mode))
            continue
        msg = sent.get((key, message_id))
        if msg is None:
            msg = sent[(key, message_id)] = ChatMessage(
                id=message_id, direction="out", sender=owner, recipient=peer, text=ev.text,
                content_type=ev.content_type, timestamp=getattr(ev, "sent_at", None) or when, status="failed",
                mode=conv.mode, reason=UNCONFIRMED)
            conv.messages.append(msg)
        if kind != "MessageSending":
            msg.status = "delivered" if kind == "MessageDelivered" else "failed"
            msg.sip_status, msg.reason = ev.status, ev.reason
            msg.delivered_at = when if kind == "MessageDelivered" else None
    out = [c for c in convs.values() if c.messages]
    out.sort(key=lambda c: c.ended, reverse=True)
    return out


# -- the store ----------------------------------------------------------------------------------------------------
_COLUMNS = {
    "sip": ("timestamp", "owner", "direction", "transport", "local_host", "local_port", "remote_host", "remote_port", "raw"),
    "events": ("timestamp", "owner", "type", "session_id", "fields"),
    "drops": ("timestamp", "owner", "transport", "remote_host", "remote_port", "reason", "raw"),
}
_NO_ADDRESS = (None, None)
MAX_ROWS_PER_INSERT = 64  # 64 rows x 9 columns stays under SQLite's historical limit of 999 parameters


@functools.lru_cache(maxsize=None)
def _insert_sql(table: str, rows: int) -> str:
    columns = _COLUMNS[table]
    one = "(" + ",".join("?" * len(columns)) + ")"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ",".join([one] * rows)


def _insert(db: "sqlite3.Connection", table: str, values: list) -> None:
    """Insert rows given as one flat list of values, with few statements of many rows each (sizes are powers of
    two, so only a handful of statements are ever prepared). Why not executemany: it steps SQLite once per row,
    and every step releases and retakes the GIL, handing it to the loop thread and back: a context switch per
    row on the hot path."""
    width = len(_COLUMNS[table])
    i, n = 0, len(values) // width
    while i < n:
        size = min(MAX_ROWS_PER_INSERT, 1 << ((n - i).bit_length() - 1))
        db.execute(_insert_sql(table, size), values[i * width:(i + size) * width])
        i += size


class HistoryStore:
    """A SQLite file the trace is appended to as it records (see the module docstring). Made by
    `Platform(history=path)`, which loads the earlier records into its trace and attaches the store."""

    def __init__(self, history: Any) -> None:
        self.path = resolve_path(history)
        self.loaded = {"sip": 0, "events": 0, "drops": 0}   # records read from the store when it was opened
        self.earlier: list[EventRecord] = []                 # the events read when opened (earlier conversations)
        self.written = 0                                     # rows committed by this store object
        self.commits = 0                                     # transactions committed (batches)
        self.writer_cpu = 0.0                                # CPU seconds the writer thread used (bench/history.py)
        self.write_errors = 0
        self.last_error: str | None = None
        # what the recorder hands over (deque appends and pops are atomic: no lock on the hot path)
        self._sip: deque[tuple] = deque()
        self._events: deque[tuple] = deque()
        self._drops: deque[DropRecord] = deque()
        self._waiters: deque[threading.Event] = deque()
        self._wake = threading.Event()
        self._stop = False
        self._encode = EventEncoder()
        self._closed = False
        self._close_lock = threading.Lock()
        self._lock = _Lock(self.path)
        try:
            self._db = self._open()
        except BaseException:
            self._lock.release()
            raise
        self._thread: threading.Thread | None = None

    # -- opening ---------------------------------------------------------------------------------------------
    def _open(self) -> "sqlite3.Connection":
        import sqlite3

        p = self.path
        if p.exists() and p.stat().st_size > 0:
            with open(p, "rb") as f:
                head = f.read(16)
            if head != b"SQLite format 3\x00":
                raise HistoryError(f"{str(p)!r} is not a SQLite database, so it is not a notebook_im history store; "
                                   "pass a new file name (or move this file away)")
        try:
            db = sqlite3.connect(p, check_same_thread=False, timeout=5.0)
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot open the history store {str(p)!r}: {exc}; choose a writable location") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables:
                db.executescript(_DDL + f"PRAGMA application_id={APPLICATION_ID};")
                db.execute("INSERT INTO schema VALUES (?, ?, ?)", (SCHEMA_VERSION, APPLICATION, time.time()))
                db.commit()
            else:
                self._check_schema(db, tables)
        except sqlite3.DatabaseError as exc:
            db.close()
            if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
                raise HistoryError(f"cannot write the history store {str(p)!r}: it is read-only; choose a writable "
                                   "location") from None
            raise HistoryError(f"cannot use {str(p)!r} as a history store: {exc}; pass a new file name") from None
        except BaseException:
            db.close()
            raise
        return db

    def _check_schema(self, db: "sqlite3.Connection", tables: set[str]) -> None:
        p = str(self.path)
        row = None
        if "schema" in tables:
            row = db.execute("SELECT version, application FROM schema").fetchone()
        if row is None or row[1] != APPLICATION or not _TABLES <= tables:
            raise HistoryError(f"{p!r} is a SQLite database but not a notebook_im history store (its tables: "
                               f"{', '.join(sorted(tables))}); pass a new file name so it is left untouched")
        if row[0] > SCHEMA_VERSION:
            raise HistoryError(f"{p!r} was written by a newer notebook_im (history schema {row[0]}; this version "
                               f"reads schema {SCHEMA_VERSION}); upgrade notebook_im, or pass a new file name")

    def load_into(self, trace: "Trace") -> None:
        """Append the stored records to `trace` (the newest `trace.max_records` SIP messages and events, the
        newest `max_drops` drops) and remember the events as `earlier`. Header fields of the SIP messages are
        extracted on the first frame build, so opening a large store stays fast."""
        cap = trace.max_records if trace.max_records is not None else -1
        db = self._db
        sip = db.execute("SELECT * FROM (SELECT id, timestamp, owner, direction, transport, local_host, local_port, "
                         "remote_host, remote_port, raw FROM sip ORDER BY id DESC LIMIT ?) ORDER BY id", (cap,)).fetchall()
        events = db.execute("SELECT * FROM (SELECT id, timestamp, owner, type, fields FROM events ORDER BY id DESC "
                            "LIMIT ?) ORDER BY id", (cap,)).fetchall()
        drops = db.execute("SELECT * FROM (SELECT id, timestamp, owner, transport, remote_host, remote_port, reason, raw "
                           "FROM drops ORDER BY id DESC LIMIT ?) ORDER BY id", (trace.max_drops,)).fetchall()
        with trace._index_lock, trace._lock:
            if sip:
                _, ts, owner, direction, transport, lh, lp, rh, rp, raw = zip(*sip)
                trace.sip_ts.extend(ts)
                trace.sip_direction.extend(direction)
                trace.sip_transport.extend(transport)
                trace.sip_local.extend(zip(lh, lp))
                trace.sip_remote.extend(zip(rh, rp))
                trace.sip_raw.extend(map(bytes, raw))
                trace.sip_owner.extend(owner)  # last: readers take len(sip_owner) as the row count
            for _, ts, owner, transport, rh, rp, reason, raw in drops:
                trace.drops.append(DropRecord(ts, transport, None if rh is None else (rh, rp), reason, bytes(raw), owner))
            trace.drops_total += len(drops)
        self.earlier = [EventRecord(ts, owner, decode_event(kind, fields)) for _, ts, owner, kind, fields in events]
        trace.add_event_records(self.earlier)   # (takes the trace's lock itself)
        self.loaded = {"sip": len(sip), "events": len(events), "drops": len(drops)}

    # -- writing (the recorder calls put_*, any thread: one deque append each) ----------------------------------
    def start(self) -> "HistoryStore":
        """Start the writer thread (Platform does this after loading)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"nim-history {self.path.name}", daemon=True)
            self._thread.start()
            ref = weakref.ref(self)
            atexit.register(lambda: (s := ref()) is not None and s.close())
        return self

    def put_sip(self, *row: Any) -> None:
        """Queue one SIP message for writing: `Trace.record_sip`'s (ts, direction, transport, local, remote, raw,
        owner), raw already redacted."""
        self._sip.append(row)
        if not self._wake.is_set():
            self._wake.set()

    def put_event(self, ts: float, owner: str, event: Any) -> None:
        """Queue one API event for writing (encoded on the writer thread)."""
        self._events.append((ts, owner, event))
        if not self._wake.is_set():
            self._wake.set()

    def put_drop(self, record: DropRecord) -> None:
        """Queue one dropped datagram or stream chunk for writing."""
        self._drops.append(record)
        if not self._wake.is_set():
            self._wake.set()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is committed; False if that took longer than `timeout`."""
        if self._closed or self._thread is None:
            return True
        done = threading.Event()
        self._waiters.append(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, close the database and release the lock. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        thread = self._thread
        if thread is not None:
            self._stop = True
            self._wake.set()
            thread.join(timeout)
            if thread.is_alive():  # pragma: no cover - a stuck disk: leave the writer to finish on its own
                log.warning("history store %s: the writer did not finish within %s s", self.path, timeout)
                return
        else:
            self._db.close()
        self._lock.release()

    @property
    def closed(self) -> bool:
        """True once `close()` was called (Platform.shutdown() does that)."""
        return self._closed

    def _run(self) -> None:
        db, wake = self._db, self._wake
        sip_q, event_q, drop_q, waiters_q = self._sip, self._events, self._drops, self._waiters
        last_commit = 0.0
        window = WINDOW
        while True:
            wake.clear()  # then look: a put after this sets it again, so no wake-up is lost
            stop = self._stop
            if not (sip_q or event_q or drop_q or waiters_q or stop):
                wake.wait(1.0)
                continue
            wait = last_commit + window - time.monotonic()
            if wait > 0 and not stop and not waiters_q:  # under load: gather until `window` after the last commit
                time.sleep(wait)
            waiters = [waiters_q.popleft() for _ in range(len(waiters_q))]  # before draining: theirs are in
            backlog = len(sip_q) > BATCH or len(event_q) > BATCH or len(drop_q) > BATCH
            rows = self._write_batch(db)
            now = time.monotonic()
            window = LOAD_WINDOW if rows > LOAD_RATE * (now - last_commit) else WINDOW
            last_commit = now
            self.commits += 1
            self.writer_cpu = time.thread_time()
            if backlog:  # more than one batch was waiting: the next one at once, flush() waits for it too
                waiters_q.extendleft(reversed(waiters))
                waiters = []
                last_commit = 0.0
            if backlog or waiters_q:
                wake.set()
            for done in waiters:
                done.set()
            if stop and not (sip_q or event_q or drop_q):
                break
        db.close()

    def _write_batch(self, db: "sqlite3.Connection") -> int:
        """Take up to BATCH records of each kind, insert them and commit (errors are counted, never raised: the
        history must not take the platform down)."""
        sip: list = []     # flat: the columns of one row after the other
        events: list = []
        drops: list = []
        rows = 0
        try:
            sip_q, event_q, drop_q = self._sip, self._events, self._drops
            for _ in range(min(len(sip_q), BATCH)):
                ts, direction, transport, local, remote, raw, owner = sip_q.popleft()
                sip += (ts, owner, direction, transport, *(local or _NO_ADDRESS), *(remote or _NO_ADDRESS), raw)
            for _ in range(min(len(event_q), BATCH)):
                ts, owner, ev = event_q.popleft()
                try:
                    session = getattr(ev, "session", None)
                    events += (ts, owner, type(ev).__name__, getattr(session, "id", None) if session else None,
                               self._encode(ev))
                except Exception as exc:  # noqa: BLE001 - one odd event must not stop the history
                    self._failed(f"cannot encode {type(ev).__name__}: {exc}")
            for _ in range(min(len(drop_q), BATCH)):
                d = drop_q.popleft()
                drops += (d.timestamp, d.owner, d.transport, *(d.remote or _NO_ADDRESS), d.reason, d.raw)
            rows = sum(len(values) // len(_COLUMNS[table]) for table, values in
                       (("sip", sip), ("events", events), ("drops", drops)))
            for table, values in (("sip", sip), ("events", events), ("drops", drops)):
                _insert(db, table, values)
            db.commit()
            self.written += rows
            return rows
        except Exception as exc:  # noqa: BLE001 - disk full, file removed: report, keep the platform running
            self._failed(f"writing {rows} records failed: {exc}")
            try:
                db.rollback()
            except Exception:  # noqa: BLE001
                pass
        return rows

    def _failed(self, message: str) -> None:
        self.write_errors += 1
        self.last_error = message
        if self.write_errors == 1 or self.write_errors % 1000 == 0:
            log.error("history store %s: %s (%d errors so far)", self.path, message, self.write_errors)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        loaded = ", ".join(f"{v} {k}" for k, v in self.loaded.items())
        return f"<HistoryStore {str(self.path)!r} {state}: loaded {loaded}; {self.written} records written>"
