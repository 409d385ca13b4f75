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

import os
import sqlite3
from pathlib import Path
from typing import Any

from ..errors import NotebookImError
from ..record.store import PRIVATE_FILE, SQLITE_MAGIC, FileLock, check_location, read_header

APPLICATION_ID = 0x6E696D6F   # "nimo", PRAGMA application_id
SCHEMA = 1
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class OfflineStoreError(NotebookImError):
    """The offline store file cannot be used (not ours, in a place others control, in use, unwritable)."""


def _in_use(path: Path, holder: str) -> Exception:
    return OfflineStoreError(f"the offline store {str(path)!r} is in use by another server (process {holder}); one "
                             "server writes it at a time: stop the other one, or pass another offline_store= path")


class OfflineJournal:
    """The SQLite file behind an `OfflineStore`: `load()` once, then `add` / `remove` / `know` as things change."""

    def __init__(self, path: Any) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"offline_store must be a file path such as 'offline.sqlite', not {type(path).__name__}")
        self.path = Path(os.path.abspath(os.fspath(path)))
        if self.path.suffix.lower() not in (".sqlite", ".sqlite3", ".db"):
            raise OfflineStoreError(f"offline_store {str(path)!r}: the file must end in .sqlite, .sqlite3 or .db")
        if not self.path.parent.is_dir():
            raise OfflineStoreError(f"offline_store {str(path)!r}: the directory {str(self.path.parent)!r} does not "
                                    "exist; create it or pass another path")
        self.db: sqlite3.Connection | None = None
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
            if not existing:   # created here, private from the start
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, PRIVATE_FILE)
                os.close(fd)
            self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            if not existing:   # the mark goes into the file's header before WAL mode keeps changes in the -wal
                self.db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                self.db.execute(f"PRAGMA user_version={SCHEMA}")
                self.db.execute("CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, aor TEXT NOT NULL, "
                                "raw BLOB NOT NULL, stored_wall REAL NOT NULL, expires_wall REAL NOT NULL, dedup TEXT)")
                self.db.execute("CREATE TABLE IF NOT EXISTS known (aor TEXT PRIMARY KEY)")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            for sidecar in ("-wal", "-shm"):   # SQLite makes these with the umask's mode: private like the file
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
            raise OfflineStoreError(f"{str(self.path)!r} is not a notebook_im offline store; pass a new file name so "
                                    "it is left untouched")
        return True

    def load(self) -> tuple[list[tuple[int, str, bytes, float, float, str | None]], set[str]]:
        """(messages: seq, aor, raw, stored_wall, expires_wall, dedup; oldest first), and the known users."""
        assert self.db is not None
        rows = self.db.execute("SELECT seq, aor, raw, stored_wall, expires_wall, dedup FROM messages ORDER BY seq").fetchall()
        known = {row[0] for row in self.db.execute("SELECT aor FROM known")}
        return [(int(s), str(a), bytes(r), float(sw), float(ew), d) for s, a, r, sw, ew, d in rows], known

    def add(self, seq: int, aor: str, raw: bytes, stored_wall: float, expires_wall: float, dedup: str | None) -> None:
        self.db.execute("INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?)",
                        (seq, aor, raw, stored_wall, expires_wall, dedup))

    def remove(self, seq: int) -> None:
        self.db.execute("DELETE FROM messages WHERE seq = ?", (seq,))

    def know(self, aor: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO known VALUES (?)", (aor,))

    def close(self) -> None:
        """Let the file go (the lock too): another server may take it now."""
        if self.db is None:
            return
        try:
            self.db.close()
        finally:
            self.db = None
            self._lock.release()
