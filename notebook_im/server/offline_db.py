"""The offline store on disk: `Server(offline_store="offline.sqlite")` keeps the messages waiting for offline users
(and the users it knows) in SQLite, so that a server restart loses none of them.

Every change is written through before the sender is answered: a message is in the file before its 202 goes
out, and leaves it when the device's 2xx arrives (or it expires, or is refused for good). SQLite in WAL mode with
synchronous=NORMAL: a commit survives the server process being killed (not a power cut, which no setting short
of an fsync per message would). The file gets the history store's care (record/store.py): no symbolic link is
written through, the directory must be the user's own and not writable by everyone, the files are 0600, one
server writes a file at a time, and a file that is not an offline store is refused without being touched.

Times are stored as wall-clock seconds (a monotonic clock means nothing across a restart) and turned back into
monotonic deadlines when the file is loaded.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections import deque
from pathlib import Path
from typing import Any

from ..errors import NotebookImError
from ..record.store import PRIVATE_FILE, SQLITE_MAGIC, FileLock, check_location, read_header

APPLICATION_ID = 0x6E696D6F  # "nimo", PRAGMA application_id
SCHEMA = 1
# How long a write waits for a lock another program holds on the file (the sqlite3 shell, a backup tool): the
# server's loop waits with it, so not SQLite's default of 5 s, during which every other request waited too.
BUSY_TIMEOUT = 0.1
MAX_PENDING = 100_000  # removals and users waiting for the file to take writes again
log = logging.getLogger("notebook_im.server")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class OfflineStoreError(NotebookImError):
    """The offline store file cannot be used (not ours, in a place others control, in use, unwritable)."""


def _in_use(path: Path, holder: str) -> Exception:
    return OfflineStoreError(
        f"the offline store {str(path)!r} is in use by another server (process {holder}); one "
        "server writes it at a time: stop the other one, or pass another offline_store= path"
    )


class OfflineJournal:
    """The SQLite file behind an `OfflineStore`: `load()` once, then `add` / `remove` / `know` as things change.

    When the file cannot be written (another program holds a lock on it, the disk is full, it went read-only or
    bad), `add` raises OfflineStoreError: the message is not kept, and the sender is told (503), because a 202 for
    a message only in memory would promise what a restart breaks. `remove` and `know` never raise: what they
    could not write waits in order and goes to the file before the next write (a removal lost to a crash
    meanwhile only means a message delivered twice, which the receiver drops by its Imdn-Message-ID)."""

    def __init__(self, path: Any) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"offline_store must be a file path such as 'offline.sqlite', not {type(path).__name__}")
        self.path = Path(os.path.abspath(os.fspath(path)))
        if self.path.suffix.lower() not in (".sqlite", ".sqlite3", ".db"):
            raise OfflineStoreError(f"offline_store {str(path)!r}: the file must end in .sqlite, .sqlite3 or .db")
        if not self.path.parent.is_dir():
            raise OfflineStoreError(
                f"offline_store {str(path)!r}: the directory {str(self.path.parent)!r} does not "
                "exist; create it or pass another path"
            )
        self.db: sqlite3.Connection | None = None
        self._pending: deque[tuple[str, Any]] = deque()  # removals and users not written yet, in order
        self._failing = False
        self.open()

    def open(self) -> None:
        """Take the file (again, after `close()`): check it, lock it, and create the tables if it is new."""
        if self.db is not None:
            return
        path = self.path
        check_location(self.path, error=OfflineStoreError, what="offline store")
        existing = self._sniff()
        self._lock = FileLock(self.path, error=OfflineStoreError, what="offline store", in_use=_in_use)
        try:
            if not existing:  # created here, private from the start
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, PRIVATE_FILE)
                os.close(fd)
            self.db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT
            )
            if not existing:  # the mark goes into the file's header before WAL mode keeps changes in the -wal
                self.db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                self.db.execute(f"PRAGMA user_version={SCHEMA}")
                self.db.execute(
                    "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, aor TEXT NOT NULL, "
                    "raw BLOB NOT NULL, stored_wall REAL NOT NULL, expires_wall REAL NOT NULL, dedup TEXT)"
                )
                self.db.execute("CREATE TABLE IF NOT EXISTS known (aor TEXT PRIMARY KEY)")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            for sidecar in ("-wal", "-shm"):  # SQLite makes these with the umask's mode: private like the file
                side = self.path.with_name(self.path.name + sidecar)
                if side.exists() and not side.is_symlink():
                    os.chmod(side, PRIVATE_FILE)
        except (OSError, sqlite3.Error) as exc:
            self._lock.release()
            raise OfflineStoreError(f"cannot use {str(path)!r} as the offline store: {exc}") from None

    def _sniff(self) -> bool:
        """True if the file is an offline store, False if it is missing or empty; OfflineStoreError (without
        writing to it) for anything else."""
        head = read_header(self.path, error=OfflineStoreError, what="offline store")
        if head is None:
            return False
        if not head.startswith(SQLITE_MAGIC) or len(head) < 100 or int.from_bytes(head[68:72], "big") != APPLICATION_ID:
            raise OfflineStoreError(
                f"{str(self.path)!r} is not a notebook_im offline store; pass a new file name so it is left untouched"
            )
        return True

    def load(self) -> tuple[list[tuple[int, str, bytes, float, float, str | None]], set[str]]:
        """(messages: seq, aor, raw, stored_wall, expires_wall, dedup; oldest first), and the known users."""
        assert self.db is not None
        rows = self.db.execute(
            "SELECT seq, aor, raw, stored_wall, expires_wall, dedup FROM messages ORDER BY seq"
        ).fetchall()
        known = {row[0] for row in self.db.execute("SELECT aor FROM known")}
        return [(int(s), str(a), bytes(r), float(sw), float(ew), d) for s, a, r, sw, ew, d in rows], known

    def add(self, seq: int, aor: str, raw: bytes, stored_wall: float, expires_wall: float, dedup: str | None) -> None:
        """Write a kept message through; OfflineStoreError (saying why) if the file does not take it now."""
        assert self.db is not None
        try:
            self._flush()
            self.db.execute(
                "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?)",
                (seq, aor, raw, stored_wall, expires_wall, dedup),
            )
        except sqlite3.Error as exc:
            self._failed(exc)
            raise OfflineStoreError(f"the offline store cannot be written now ({exc})") from None
        self._recovered()

    def remove(self, seq: int) -> None:
        """A message left the store: off the file now, or before the next write if the file does not take it."""
        self._defer(("remove", seq))

    def know(self, aor: str) -> None:
        """A user registered: remembered in the file (now, or before the next write)."""
        self._defer(("know", aor))

    def _defer(self, op: tuple[str, Any]) -> None:
        self._pending.append(op)
        if len(self._pending) > MAX_PENDING:  # the file has refused writes for that long: the oldest go
            self._pending.popleft()
        try:
            self._flush()
        except sqlite3.Error as exc:
            self._failed(exc)
            return
        self._recovered()

    def _flush(self) -> None:
        assert self.db is not None
        while self._pending:
            op, arg = self._pending[0]
            if op == "remove":
                self.db.execute("DELETE FROM messages WHERE seq = ?", (arg,))
            else:
                self.db.execute("INSERT OR IGNORE INTO known VALUES (?)", (arg,))
            self._pending.popleft()

    def _failed(self, exc: Exception) -> None:
        if not self._failing:  # once per outage, not once per message
            log.warning(
                "offline store %s cannot be written (%s): messages for offline users get 503 until it can",
                self.path,
                exc,
            )
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.warning("offline store %s takes writes again", self.path)
        self._failing = False

    def close(self) -> None:
        """Let the file go (the lock too): another server may take it now."""
        if self.db is None:
            return
        try:
            try:
                self._flush()
            except sqlite3.Error as exc:
                log.warning(
                    "offline store %s: %d changes could not be written before closing (%s)",
                    self.path,
                    len(self._pending),
                    exc,
                )
            self.db.close()
        finally:
            self.db = None
            self._lock.release()
