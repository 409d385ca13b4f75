"""The registrar's bindings in a SQLite file in WAL mode, for a server with worker processes (workers.py).

The main process owns the registrar and writes every change of a binding here (`SharedBindings`, the
registrar's mirror): a new or refreshed binding, one marked dead, one removed. Each worker keeps a copy of the
registrar in memory and brings it up to date before it routes a request (`BindingReplica.refresh`): a
`PRAGMA data_version` query tells it whether anybody wrote since it last looked (about a microsecond when
nothing changed), and then it reads only the rows written since (every row carries a sequence number; a removed
binding stays as a row marked gone). WAL lets the readers read while the writer writes, and the file is the
server's own scratch space (made at start, removed at stop), so nothing is synced to disk.

A worker that finds no binding, or a stale one, does no harm: what it cannot route it hands to the main
process, which decides with the registrar itself.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from ..sip.uri import SipUri
from .registrar import Binding, Registrar

SCHEMA = """
CREATE TABLE IF NOT EXISTS bindings (
    aor TEXT NOT NULL, key TEXT NOT NULL, contact TEXT NOT NULL, expires_at REAL NOT NULL, transport TEXT NOT NULL,
    source_host TEXT NOT NULL, source_port INTEGER NOT NULL, call_id TEXT NOT NULL, cseq INTEGER NOT NULL,
    outbound INTEGER NOT NULL, natted INTEGER NOT NULL, dead INTEGER NOT NULL, gone INTEGER NOT NULL,
    seq INTEGER NOT NULL, PRIMARY KEY (aor, key));
CREATE INDEX IF NOT EXISTS bindings_seq ON bindings (seq);
"""

UPSERT = (
    "INSERT OR REPLACE INTO bindings (aor, key, contact, expires_at, transport, source_host, source_port, call_id, "
    "cseq, outbound, natted, dead, gone, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)"
)


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")  # scratch data, rebuilt by the clients' next REGISTERs after a crash
    return db


class SharedBindings:
    """The main process's side: the registrar's mirror (`Registrar.mirror`), one committed row per change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = _connect(path)
        self._db.executescript(SCHEMA)
        self._db.execute("DELETE FROM bindings")
        self._seq = 0

    def put(self, binding: Binding) -> None:
        self._seq += 1
        self._db.execute(
            UPSERT,
            (
                binding.aor,
                str(binding.contact),
                str(binding.contact),
                binding.expires_at,
                binding.transport,
                binding.source[0],
                binding.source[1],
                binding.call_id,
                binding.cseq,
                int(binding.outbound),
                int(binding.natted),
                int(binding.dead),
                self._seq,
            ),
        )

    def drop(self, aor: str, key: str) -> None:
        self._seq += 1
        self._db.execute("UPDATE bindings SET gone = 1, seq = ? WHERE aor = ? AND key = ?", (self._seq, aor, key))

    def close(self) -> None:
        self._db.close()


class BindingReplica:
    """A worker's side: keeps `registrar` (its own, in memory) equal to the main process's."""

    def __init__(self, path: Path, registrar: Registrar, *, min_interval: float = 0.001) -> None:
        self._db = _connect(path)
        self.registrar = registrar
        self.min_interval = min_interval  # look at most this often (a burst of requests shares one look)
        self._seq = 0
        self._version: int | None = None
        self._checked = 0.0

    def refresh(self) -> None:
        """Apply what the main process wrote since the last look (nothing to read: one cheap query)."""
        now = time.monotonic()
        if now - self._checked < self.min_interval:
            return
        self._checked = now
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version:
            return
        self._version = version
        rows = self._db.execute(
            "SELECT aor, key, contact, expires_at, transport, source_host, source_port, call_id, cseq, outbound, "
            "natted, dead, gone, seq FROM bindings WHERE seq > ? ORDER BY seq",
            (self._seq,),
        ).fetchall()
        for (
            aor,
            key,
            contact,
            expires_at,
            transport,
            host,
            port,
            call_id,
            cseq,
            outbound,
            natted,
            dead,
            gone,
            seq,
        ) in rows:
            self._seq = max(self._seq, seq)
            if gone:
                self.registrar.forget(aor, key)
                continue
            self.registrar.apply(
                Binding(
                    aor,
                    SipUri.parse(contact),
                    expires_at,
                    transport,
                    (host, port),
                    call_id,
                    cseq,
                    bool(outbound),
                    bool(natted),
                    bool(dead),
                )
            )

    def close(self) -> None:
        self._db.close()
