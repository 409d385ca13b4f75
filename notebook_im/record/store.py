"""A history store: the trace written to SQLite as it happens, so conversations survive a kernel restart.

    platform = nim.Platform(history="chat.sqlite")     # or a directory: <dir>/history.sqlite
    ...                                                 # every SIP message, API event and drop is appended
    platform.shutdown()                                 # flushes and closes the store
    platform = nim.Platform(history="chat.sqlite")      # a new kernel: trace.sip()/messages()/events() and
                                                        # ChatPanel(endpoint) show the earlier conversations

Why a writer thread. Recording is on the hot path (record/recorder.py), so the caller's thread (the library's
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

Events are stored field by field, not as frame rows: on loading they are rebuilt into the same event classes,
so the frame builders run on them exactly as on live events and a column added to a frame later appears for
earlier conversations too. What an event looks like in JSON is the API's business: the Platform hands the store
a codec (`EventCodec`, implemented by api/records.py), and this module imports nothing above `sip/`.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import stat
import threading
import time
import urllib.parse
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import NotebookImError
from .recorder import SIP_ROW_OVERHEAD, DropRecord, EventRecord

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
# records waiting for the writer at most: past HIGH_WATER the recording thread waits (up to STALL_CAP s) until the
# writer is down to LOW_WATER. Why: when the loop thread is busy all the time (a send loop at the loop's limit),
# the writer gets the GIL too rarely to keep up, and the queue grew ~7.5 KB a message without end
# (bench/soak.py, history on: 1.1 GiB after 150,000 messages). Waiting gives the writer the GIL; ~20 MB queued.
HIGH_WATER = 20_000
LOW_WATER = 10_000
STALL_CAP = 2.0
WINDOW = 0.010  # s between commits when records come in steadily: ~10 ms of records per commit
LOAD_WINDOW = 0.050  # ... and when they come faster than LOAD_RATE records/s (a send loop, not a chat)
LOAD_RATE = 2000
PRIVATE_FILE = 0o600  # the store, its lock and the files SQLite keeps next to it: chat history is private
PRIVATE_DIR = 0o700  # a directory history= creates
SIDECARS = ("-wal", "-shm", "-journal", ".lock")  # what SQLite and the lock put next to the store
SQLITE_MAGIC = b"SQLite format 3\x00"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

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
        raise TypeError(
            "history must be a path (str or pathlib.Path) to a .sqlite or .db file, or to a directory, "
            f"not {type(history).__name__}"
        )
    text = os.fspath(history)
    if not text.strip():
        raise HistoryError("history is an empty path; pass a file such as 'chat.sqlite' or a directory")
    path = Path(text).expanduser()
    if path.suffix.lower() in SUFFIXES:
        if path.is_dir():
            raise HistoryError(
                f"history {str(path)!r} is a directory named like a database file; pass "
                f"{str(path / DIRECTORY_FILE)!r} or another file name"
            )
        if not path.parent.is_dir():
            raise HistoryError(
                f"cannot create the history store {str(path)!r}: the directory "
                f"{str(path.parent)!r} does not exist; create it first or choose another path"
            )
        return path
    if path.is_file():
        raise HistoryError(
            f"history {str(path)!r} is an existing file without a .sqlite/.sqlite3/.db suffix; "
            "pass a database file name ending in .sqlite or .db, or a directory"
        )
    if path.suffix and not path.exists():
        raise HistoryError(
            f"history {str(path)!r}: a store file must end in .sqlite, .sqlite3 or .db "
            f"(for a directory, leave out the suffix {path.suffix!r})"
        )
    try:
        path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    except OSError as exc:
        raise HistoryError(
            f"cannot create the history directory {str(path)!r}: {exc.strerror or exc}; choose a writable location"
        ) from None
    return path / DIRECTORY_FILE


def _uid() -> int:
    """The user whose files the store may use (a function, so tests can play another user)."""
    return os.geteuid() if hasattr(os, "geteuid") else 0


def check_location(path: Path, *, error: type[Exception] = HistoryError, what: str = "history store") -> None:
    """Refuse a store place someone else controls. A history store is the user's private chat history, and the
    store writes several files (the database, `-wal`, `-shm`, `-journal`, `.lock`), so:

    - no symbolic link is written through: the store file and the files next to it must be regular files of
      this user (a `chat.sqlite.lock` link to ~/.bashrc used to be truncated; a dangling `chat.sqlite` link
      created its target);
    - a directory on the way that is a symbolic link owned by another user is not followed (it was planted);
    - the directory holding the store must belong to this user (or root) and must not be writable by every
      user (in /tmp anyone can plant those names before the store creates them).

    Group-writable directories are allowed: a group is a set of people the owner chose. `error` and `what` name
    the kind of store in the errors (the server's offline store takes the same care)."""
    me = _uid()
    posix = os.name == "posix"  # elsewhere st_uid and the mode bits do not say who may write
    absolute = Path(os.path.abspath(path))
    for part in reversed(absolute.parents):
        try:
            st = os.lstat(part)
        except OSError:
            continue  # resolve_path checked that the directory exists; a race shows up below
        if posix and stat.S_ISLNK(st.st_mode) and st.st_uid not in (me, 0):
            raise error(
                f"the {what} path {str(path)!r} goes through {str(part)!r}, a symbolic link "
                f"owned by another user (uid {st.st_uid}); the store does not follow it. Pass a "
                "path in a directory of your own"
            )
    directory = absolute.parent
    try:
        st = os.stat(directory)
    except OSError as exc:
        raise error(f"cannot use the {what}'s directory {str(directory)!r}: {exc.strerror or exc}") from None
    if posix and st.st_uid not in (me, 0):
        raise error(
            f"the {what}'s directory {str(directory)!r} belongs to another user (uid {st.st_uid}), who "
            "could read or replace the store; choose a directory of your own"
        )
    if posix and st.st_mode & stat.S_IWOTH:
        raise error(
            f"the {what}'s directory {str(directory)!r} is writable by every user, who could plant "
            f"files or links where the {what} writes; choose a directory only you can write "
            "(for example a folder in your home directory)"
        )
    for name in (absolute.name, *(absolute.name + s for s in SIDECARS)):
        p = directory / name
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise error(f"cannot use the {what} {str(path)!r}: {str(p)!r}: {exc.strerror or exc}") from None
        if stat.S_ISLNK(st.st_mode):
            raise error(
                f"{str(p)!r} is a symbolic link; the {what} never writes through one. Pass "
                "the path of a real file (or a new file name)"
            )
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{str(p)!r} is not a regular file, so it is not part of a {what}; pass a new file name")
        if posix and st.st_uid != me:
            raise error(
                f"{str(p)!r} belongs to another user (uid {st.st_uid}), so it is not your {what}; pass a new file name"
            )


def read_header(path: Path, *, error: type[Exception] = HistoryError, what: str = "history store") -> bytes | None:
    """The first 100 bytes of the file at `path` (the SQLite header), read without following a link and without
    writing; None if there is no file or it is empty. `error`/`what` name the store in the error."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise error(f"cannot read the {what} {str(path)!r}: {exc.strerror or exc}") from None
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 100, 0)
    finally:
        os.close(fd)
    return head if size else None


def sniff(path: Path) -> bool:
    """Whether `path` is a notebook_im history store (True) or a place to make one (False: missing, empty, or a
    blank SQLite database); HistoryError for anything else, *without writing to it*: opening another program's
    database read-write, or merely switching it to WAL, rewrites its header. The SQLite header's application
    id says "ours" at once; a file without one (what an older notebook_im left after a killed kernel, with
    the id still in the WAL) is looked into read-only: immutable when there is no WAL (no lock, no file
    created), else read-only (the WAL's content is needed)."""
    head = read_header(path)
    if head is None:
        return False  # missing, or an empty file (an empty database): it becomes a store
    if not head.startswith(SQLITE_MAGIC):
        raise HistoryError(
            f"{str(path)!r} is not a SQLite database, so it is not a notebook_im history store; "
            "pass a new file name (or move this file away)"
        )
    if len(head) < 100:
        raise HistoryError(
            f"{str(path)!r} is a truncated SQLite database, not a notebook_im history store; pass a new file name"
        )
    app = int.from_bytes(head[68:72], "big")
    if app == APPLICATION_ID:
        return True
    if app != 0:
        raise HistoryError(
            f"{str(path)!r} is a SQLite database of another application (application_id {app:#x}), "
            "not a notebook_im history store; pass a new file name so it is left untouched"
        )
    import sqlite3

    wal = path.with_name(path.name + "-wal").exists()
    uri = "file:" + urllib.parse.quote(str(path)) + ("?mode=ro" if wal else "?immutable=1")
    try:
        db = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise HistoryError(f"cannot read the history store {str(path)!r}: {exc}") from None
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            if db.execute("PRAGMA user_version").fetchone()[0] == 0:
                return False  # a blank database (nothing in it, no mark of any program): it becomes a store
            raise HistoryError(
                f"{str(path)!r} is a SQLite database of another program (it sets user_version), not "
                "a notebook_im history store; pass a new file name so it is left untouched"
            )
        check_schema(db, tables, path)
        return True
    except sqlite3.DatabaseError as exc:
        raise HistoryError(f"cannot use {str(path)!r} as a history store: {exc}; pass a new file name") from None
    finally:
        db.close()


def check_schema(db: sqlite3.Connection, tables: set[str], path: Path) -> None:
    """HistoryError unless `db` (with these tables) is a notebook_im history store this version can read."""
    p = str(path)
    row = None
    if "schema" in tables:
        row = db.execute("SELECT version, application FROM schema").fetchone()
    if row is None or row[1] != APPLICATION or not _TABLES <= tables:
        raise HistoryError(
            f"{p!r} is a SQLite database but not a notebook_im history store (its tables: "
            f"{', '.join(sorted(tables))}); pass a new file name so it is left untouched"
        )
    if not isinstance(row[0], int) or row[0] > SCHEMA_VERSION:
        raise HistoryError(
            f"{p!r} was written by a newer notebook_im (history schema {row[0]}; this version "
            f"reads schema {SCHEMA_VERSION}); upgrade notebook_im, or pass a new file name"
        )


def _private(path: Path) -> None:
    """Make an existing file of ours readable by its owner only (stores made before this was the rule)."""
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_uid == _uid() and st.st_mode & 0o077:
            os.chmod(path, PRIVATE_FILE)
    except OSError:  # pragma: no cover - gone meanwhile, or a file system without modes
        pass


# -- one writer per store ------------------------------------------------------------------------------------
class FileLock:
    """An exclusive, non-blocking lock on `<store>.lock` holding the owner's pid (for the error message). `in_use`
    builds the error for a store another process (or object) holds; `error` the one for a lock file that cannot be
    used. Shared by the history store and the server's offline store: one writer per file."""

    def __init__(
        self,
        store_path: Path,
        *,
        error: type[Exception] = HistoryError,
        what: str = "history store",
        in_use: Any = None,
    ) -> None:
        self.path = store_path.with_name(store_path.name + ".lock")
        try:  # never through a symbolic link (O_NOFOLLOW): a planted link would have its target truncated
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, PRIVATE_FILE)
        except OSError as exc:
            raise error(
                f"cannot write the {what} {str(store_path)!r}: {exc.strerror or exc} "
                f"({str(self.path)!r}); choose a writable location"
            ) from None
        st = os.fstat(self._fd)
        if not stat.S_ISREG(st.st_mode) or (os.name == "posix" and st.st_uid != _uid()):
            os.close(self._fd)
            raise error(f"{str(self.path)!r} is not a lock file of yours; pass a new file name")
        if os.name == "posix" and st.st_mode & 0o077:
            os.fchmod(self._fd, PRIVATE_FILE)
        try:
            _lock_fd(self._fd)
        except OSError:
            holder = os.pread(self._fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            if holder == str(os.getpid()):
                holder += ", this one"
            os.close(self._fd)
            raise (in_use or _history_in_use)(store_path, holder) from None
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


def _history_in_use(store_path: Path, holder: str) -> Exception:
    return HistoryInUse(
        f"the history store {str(store_path)!r} is in use by another Platform (process {holder}); one "
        "Platform writes a store at a time: call platform.shutdown() on the other one (or end that "
        "process), or pass a different history= path"
    )


def _lock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


# -- how events are stored: the codec the platform gives the store ---------------------------------------------
class BadRecord(ValueError):
    """A stored row this version cannot rebuild: `load_into` skips it and counts it in `HistoryStore.skipped`."""


class EventCodec(Protocol):
    """How the API's events become the `fields` JSON of a stored row and back. The store only moves rows; what
    an event is belongs to the layer that defines events, so the Platform hands its codec in
    (api/records.py), and this module imports nothing above `sip/`."""

    def encoder(self) -> Callable[[Any], str]:
        """A function event -> JSON text of its fields (one per writer thread: it may cache)."""

    def decode(self, type_name: str, fields_json: str) -> Any:
        """A stored row rebuilt as an event; BadRecord (or a ValueError of the JSON decoder) if it cannot be."""


# -- the store ----------------------------------------------------------------------------------------------------
_COLUMNS = {
    "sip": (
        "timestamp",
        "owner",
        "direction",
        "transport",
        "local_host",
        "local_port",
        "remote_host",
        "remote_port",
        "raw",
    ),
    "events": ("timestamp", "owner", "type", "session_id", "fields"),
    "drops": ("timestamp", "owner", "transport", "remote_host", "remote_port", "reason", "raw"),
}
_NO_ADDRESS = (None, None)
MAX_RAW = 1 << 17  # bytes of one stored SIP message or drop (a SIP message is at most 65,535)
MAX_FIELDS = 1 << 20  # characters of one event's JSON
MAX_TEXT = 1024  # characters of an owner, a host, a transport, a drop reason
MAX_TIMESTAMP = 9e9  # s since the epoch: 2255, within what pandas' nanosecond timestamps hold
_TS = f"typeof(timestamp) IN ('integer', 'real') AND timestamp BETWEEN 0 AND {MAX_TIMESTAMP}"
_SHORT = "(typeof({0}) = 'text' AND length({0}) <= " + str(MAX_TEXT) + ")"
_ADDRESS = (
    "({0}_host IS NULL OR " + _SHORT.format("{0}_host") + ") AND ({0}_port IS NULL OR (typeof({0}_port) = "
    "'integer' AND {0}_port BETWEEN 0 AND 65535))"
)
# what a row must be for load_into to take it (the SQL types the writer uses; SQLite itself would take any)
_VALID = {
    "sip": f"{_TS} AND {_SHORT.format('owner')} AND direction IN ('in', 'out') AND {_SHORT.format('transport')} AND "
    f"{_ADDRESS.format('local')} AND {_ADDRESS.format('remote')} AND typeof(raw) = 'blob' AND "
    f"length(raw) <= {MAX_RAW}",
    "events": f"{_TS} AND {_SHORT.format('owner')} AND {_SHORT.format('type')} AND typeof(fields) = 'text' AND "
    f"length(fields) <= {MAX_FIELDS}",
    "drops": f"{_TS} AND {_SHORT.format('owner')} AND {_SHORT.format('transport')} AND {_ADDRESS.format('remote')} "
    f"AND {_SHORT.format('reason')} AND typeof(raw) = 'blob' AND length(raw) <= {MAX_RAW}",
}
MAX_ROWS_PER_INSERT = 64  # 64 rows x 9 columns stays under SQLite's historical limit of 999 parameters


@functools.cache
def _insert_sql(table: str, rows: int) -> str:
    columns = _COLUMNS[table]
    one = "(" + ",".join("?" * len(columns)) + ")"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ",".join([one] * rows)


def _insert(db: sqlite3.Connection, table: str, values: list) -> None:
    """Insert rows given as one flat list of values, with few statements of many rows each (sizes are powers of
    two, so only a handful of statements are ever prepared). Why not executemany: it steps SQLite once per row,
    and every step releases and retakes the GIL, handing it to the loop thread and back: a context switch per
    row on the hot path."""
    width = len(_COLUMNS[table])
    i, n = 0, len(values) // width
    while i < n:
        size = min(MAX_ROWS_PER_INSERT, 1 << ((n - i).bit_length() - 1))
        db.execute(_insert_sql(table, size), values[i * width : (i + size) * width])
        i += size


def _select(
    db: sqlite3.Connection,
    codec: EventCodec,
    *,
    first: dict[str, int],
    owner: str | None = None,
    session_id: str | None = None,
) -> tuple[list[tuple], list[EventRecord], list[DropRecord], int]:
    """The valid rows of each table from id `first[table]` on (of `owner`; events of `session_id`), oldest first:
    (SIP rows as `Trace.load_records` takes them, events, drops, events that did not decode)."""
    where = {t: "" for t in first}
    params: dict[str, list[Any]] = {t: [first[t]] for t in first}
    if owner is not None:
        for t in where:
            where[t] += " AND owner = ?"
            params[t].append(owner)
    if session_id is not None:
        where["events"] += " AND session_id = ?"
        params["events"].append(session_id)
    sip = db.execute(
        "SELECT timestamp, owner, direction, transport, local_host, local_port, remote_host, "
        f"remote_port, raw FROM sip WHERE id >= ? AND {_VALID['sip']}{where['sip']} ORDER BY id",
        params["sip"],
    ).fetchall()
    rows = db.execute(
        f"SELECT timestamp, owner, type, fields FROM events WHERE id >= ? AND {_VALID['events']}{where['events']} "
        "ORDER BY id",
        params["events"],
    ).fetchall()
    drops = db.execute(
        "SELECT timestamp, owner, transport, remote_host, remote_port, reason, raw FROM drops "
        f"WHERE id >= ? AND {_VALID['drops']}{where['drops']} ORDER BY id",
        params["drops"],
    ).fetchall()
    events = []
    bad = 0
    for ts, who, kind, fields in rows:
        try:
            events.append(EventRecord(ts, who, codec.decode(kind, fields)))
        except Exception:  # noqa: BLE001 - BadRecord, bad JSON, too deep: one row, never the whole history
            bad += 1
    return (
        [
            (ts, who, direction, transport, (lh, lp), (rh, rp), bytes(raw))
            for ts, who, direction, transport, lh, lp, rh, rp, raw in sip
        ],
        events,
        [
            DropRecord(ts, transport, None if rh is None else (rh, rp), reason, bytes(raw), who)
            for ts, who, transport, rh, rp, reason, raw in drops
        ],
        bad,
    )


class HistoryStore:
    """A SQLite file the trace is appended to as it records (see the module docstring). Made by
    `Platform(history=path)`, which loads the earlier records into its trace and attaches the store; `codec`
    turns events into stored JSON and back (api/records.py)."""

    def __init__(self, history: Any, codec: EventCodec) -> None:
        self.path = resolve_path(history)
        self.codec = codec
        self.loaded = {"sip": 0, "events": 0, "drops": 0}  # records read from the store when it was opened
        self.earlier: list[EventRecord] = []  # the events read when opened (earlier conversations)
        self.written = 0  # rows committed by this store object
        self.commits = 0  # transactions committed (batches)
        self.writer_cpu = 0.0  # CPU seconds the writer thread used (bench/history.py)
        self.write_errors = 0
        self.stalls = 0  # times the recording thread waited for the writer (HIGH_WATER)
        self.stalled = 0.0  # seconds it waited in all
        self.last_error: str | None = None
        # what the recorder hands over (deque appends and pops are atomic: no lock on the hot path)
        self._sip: deque[tuple] = deque()
        self._events: deque[tuple] = deque()
        self._drops: deque[DropRecord] = deque()
        self._waiters: deque[threading.Event] = deque()
        self._wake = threading.Event()
        self._stop = False
        self._encode = codec.encoder()
        self._closed = False
        self._close_lock = threading.Lock()
        self.skipped = {"sip": 0, "events": 0, "drops": 0}  # stored rows not loaded: malformed (see load_into)
        check_location(self.path)
        existing = sniff(self.path)  # before anything is created or opened for writing
        self._lock = FileLock(self.path)
        try:
            self._db = self._open(existing)
        except BaseException:
            self._lock.release()
            raise
        self._thread: threading.Thread | None = None

    # -- opening ---------------------------------------------------------------------------------------------
    def _open(self, existing: bool) -> sqlite3.Connection:
        """Open the store for writing. `existing`: `sniff` found a store (else a new one is made: the file created
        here, private, with O_EXCL and without following links, so SQLite's own files inherit its mode). A new
        store is written in one transaction, application id included, before the switch to WAL: the id is in
        the file itself from the first commit on, so `sniff` recognises it even after a killed kernel."""
        import sqlite3

        p = self.path
        if not existing and not p.exists():
            try:
                os.close(os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, PRIVATE_FILE))
            except OSError as exc:
                raise HistoryError(
                    f"cannot write the history store {str(p)!r}: {exc.strerror or exc}; choose a writable location"
                ) from None
        try:
            db = sqlite3.connect(p, check_same_thread=False, timeout=5.0)
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot open the history store {str(p)!r}: {exc}; choose a writable location") from None
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables:
                db.executescript(
                    f"BEGIN; {_DDL} PRAGMA application_id={APPLICATION_ID}; INSERT INTO schema VALUES "
                    f"({SCHEMA_VERSION}, '{APPLICATION}', {time.time()!r}); COMMIT;"
                )
            else:
                check_schema(db, tables, p)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as exc:
            db.close()
            if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
                raise HistoryError(
                    f"cannot write the history store {str(p)!r}: it is read-only; choose a writable location"
                ) from None
            raise HistoryError(f"cannot use {str(p)!r} as a history store: {exc}; pass a new file name") from None
        except BaseException:
            db.close()
            raise
        for name in ("", *SIDECARS):
            _private(p.with_name(p.name + name))
        return db

    def load_into(self, trace: Trace) -> None:
        """Append the stored records to `trace` (the newest SIP messages and events that fit its budget, or
        `trace.max_records` of each when that is set; the newest `max_drops` drops) and remember the events as
        `earlier`. Header fields of the SIP messages are extracted on the first frame build, so opening a large
        store stays fast. What is not loaded stays in the store: `trace.sip(full=True)` reads everything.

        A row this version cannot use (a NULL or a number where text goes, a blob too large for a SIP message,
        a timestamp pandas cannot hold, JSON that does not decode or does not fit its event class) is skipped
        and counted in `skipped` (and logged once): one bad row, whoever wrote it, must not lock the user out
        of the rest of their history."""
        db = self._db
        # the newest `limit` rows of each table; of those, the malformed ones are counted, not loaded
        # (range scans over that window only: opening a large store stays as fast as it was)
        limits = {"sip": self._load_limit(db, trace, "sip"), "events": self._load_limit(db, trace, "events")}
        limits["drops"] = trace.max_drops
        first = {
            t: db.execute(f"SELECT min(id) FROM (SELECT id FROM {t} ORDER BY id DESC LIMIT ?)", (n,)).fetchone()[0]
            for t, n in limits.items()
        }
        first = {t: 2**63 - 1 if v is None else v for t, v in first.items()}  # None: empty, or a limit of 0
        skipped = {
            t: db.execute(f"SELECT count(*) FROM {t} WHERE id >= ? AND ({_VALID[t]}) IS NOT 1", (first[t],)).fetchone()[
                0
            ]
            for t in limits
        }
        sip, earlier, drops, bad = _select(db, self.codec, first=first)
        skipped["events"] += bad
        trace.load_records(sip, drops)
        self.earlier = earlier
        trace.add_event_records(self.earlier)  # (takes the trace's lock itself)
        self.loaded = {"sip": len(sip), "events": len(earlier), "drops": len(drops)}
        self.skipped = skipped
        if any(skipped.values()):
            log.warning(
                "history store %s: skipped %s malformed rows (%s); the rest is loaded",
                self.path,
                sum(skipped.values()),
                ", ".join(f"{v} {k}" for k, v in skipped.items() if v),
            )

    @staticmethod
    def _load_limit(db: sqlite3.Connection, trace: Trace, table: str) -> int:
        """How many of the newest rows of `table` to load into `trace`: `max_records` if set, and no more than
        half of the trace's budget for SIP messages, a quarter for events (the average size of the newest 1,000
        rows, measured the way the recorder counts them); -1 for all."""
        caps = []
        if trace.max_records is not None:
            caps.append(trace.max_records)
        budget = trace.budget.limit if trace.budget is not None else None
        if budget is not None:
            column, share, overhead = ("raw", 2, SIP_ROW_OVERHEAD) if table == "sip" else ("fields", 4, 250)
            avg = db.execute(
                f"SELECT avg(length({column})) FROM (SELECT {column} FROM {table} ORDER BY id DESC LIMIT 1000)"
            ).fetchone()[0]
            caps.append(int(budget // share // ((avg or 0) + overhead)))
        return min(caps) if caps else -1

    def read(
        self,
        *,
        owner: str | None = None,
        session_id: str | None = None,
        sip: bool = True,
        events: bool = True,
        drops: bool = True,
        timeout: float = 10.0,
    ) -> tuple[list[tuple], list[EventRecord], list[DropRecord]]:
        """Every record in the store (of `owner`; events of the session `session_id`), oldest first, in the forms
        `Trace.load_records` and `Trace.add_event_records` take: what a trace evicted from memory read back
        (`trace.stored()`, `full=True`). Waits for what is queued to be committed, then reads on a connection of
        its own (read-only; WAL: the writer goes on meanwhile), also after `close()`. Malformed rows are skipped
        as in `load_into`. It reads everything asked for into memory: for stores larger than memory, query the
        file with SQL instead (sqlite3, DuckDB: the schema is in the module docstring)."""
        import sqlite3

        if not self._closed:
            self.flush(timeout)
        try:
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot read the history store {str(self.path)!r}: {exc}") from None
        try:
            skip = 2**63 - 1
            first = {"sip": 0 if sip else skip, "events": 0 if events else skip, "drops": 0 if drops else skip}
            sip_rows, event_rows, drop_rows, _ = _select(
                db, self.codec, first=first, owner=owner, session_id=session_id
            )
        finally:
            db.close()
        return sip_rows, event_rows, drop_rows

    # -- writing (the recorder calls put_*, any thread: one deque append each) ----------------------------------
    def start(self) -> HistoryStore:
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
        if len(self._sip) > HIGH_WATER:
            self._wait_for_writer()

    def put_event(self, ts: float, owner: str, event: Any) -> None:
        """Queue one API event for writing (encoded on the writer thread)."""
        self._events.append((ts, owner, event))
        if not self._wake.is_set():
            self._wake.set()
        if len(self._events) > HIGH_WATER:
            self._wait_for_writer()

    @property
    def queued(self) -> int:
        """Records waiting for the writer."""
        return len(self._sip) + len(self._events) + len(self._drops)

    def _wait_for_writer(self) -> None:
        """Backpressure: the writer fell HIGH_WATER records behind; wait (releasing the GIL to it) until it is down
        to LOW_WATER, at most STALL_CAP seconds (a stuck disk must not stop the platform: then the queue grows)."""
        thread = self._thread
        if thread is None or self._closed or not thread.is_alive():
            return
        t0 = time.monotonic()
        self._wake.set()
        while (len(self._sip) > LOW_WATER or len(self._events) > LOW_WATER) and time.monotonic() - t0 < STALL_CAP:
            time.sleep(0.002)
        self.stalls += 1
        self.stalled += time.monotonic() - t0

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

    def _write_batch(self, db: sqlite3.Connection) -> int:
        """Take up to BATCH records of each kind, insert them and commit (errors are counted, never raised: the
        history must not take the platform down)."""
        sip: list = []  # flat: the columns of one row after the other
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
                    events += (
                        ts,
                        owner,
                        type(ev).__name__,
                        getattr(session, "id", None) if session else None,
                        self._encode(ev),
                    )
                except Exception as exc:  # noqa: BLE001 - one odd event must not stop the history
                    self._failed(f"cannot encode {type(ev).__name__}: {exc}")
            for _ in range(min(len(drop_q), BATCH)):
                d = drop_q.popleft()
                drops += (d.timestamp, d.owner, d.transport, *(d.remote or _NO_ADDRESS), d.reason, d.raw)
            rows = sum(
                len(values) // len(_COLUMNS[table])
                for table, values in (("sip", sip), ("events", events), ("drops", drops))
            )
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
