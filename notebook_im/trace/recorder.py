"""The trace: every SIP message on the wire, every API event, every dropped datagram.

Recording sits on the hot path, so it appends to plain Python lists (columns) and does nothing else;
turning them into DataFrames is the analysis layer's job and happens only when asked. Credentials are
redacted as they are recorded, so nothing downstream (frames, pcaps, reprs) can leak them.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

_AUTH = re.compile(rb"(?im)^((?:proxy-)?authorization[ \t]*:[ \t]*[A-Za-z]+)[^\r\n]*")


def redact(raw: bytes) -> bytes:
    """Replace the credentials of Authorization/Proxy-Authorization headers with `<redacted>`."""
    if b"uthorization" not in raw and b"UTHORIZATION" not in raw:
        return raw
    return _AUTH.sub(rb"\1 <redacted>", raw)


@dataclass(frozen=True)
class SipRecord:
    timestamp: float
    direction: str        # "in" / "out"
    transport: str        # "udp" / "tcp"
    local: tuple[str, int]
    remote: tuple[str, int]
    raw: bytes
    owner: str            # which endpoint or server recorded it


@dataclass(frozen=True)
class DropRecord:
    timestamp: float
    transport: str
    remote: tuple[str, int] | None
    reason: str
    raw: bytes
    owner: str


@dataclass(frozen=True)
class EventRecord:
    timestamp: float
    owner: str
    event: Any


class Trace:
    """Append-only record of SIP messages, API events and drops. Thread-safe for readers."""

    def __init__(self, *, max_records: int | None = 1_000_000) -> None:
        self.max_records = max_records
        self._lock = threading.Lock()
        # SIP messages as columns: cheap appends, easy DataFrame construction later
        self.sip_ts: list[float] = []
        self.sip_direction: list[str] = []
        self.sip_transport: list[str] = []
        self.sip_local: list[tuple[str, int]] = []
        self.sip_remote: list[tuple[str, int]] = []
        self.sip_raw: list[bytes] = []
        self.sip_owner: list[str] = []
        self.events_list: list[EventRecord] = []
        self.drops: list[DropRecord] = []
        self.dropped_sip = 0  # messages not kept because max_records was reached

    def record_sip(self, direction: str, transport: str, local: tuple[str, int], remote: tuple[str, int],
                   raw: bytes, owner: str, ts: float | None = None) -> None:
        if self.max_records is not None and len(self.sip_ts) >= self.max_records:
            self.dropped_sip += 1
            return
        self.sip_ts.append(time.time() if ts is None else ts)
        self.sip_direction.append(direction)
        self.sip_transport.append(transport)
        self.sip_local.append(local)
        self.sip_remote.append(remote)
        self.sip_raw.append(redact(raw))
        self.sip_owner.append(owner)

    def record_drop(self, transport: str, remote: tuple[str, int] | None, reason: str, raw: bytes, owner: str) -> None:
        with self._lock:
            self.drops.append(DropRecord(time.time(), transport, remote, reason, redact(raw[:2048]), owner))

    def record_event(self, owner: str, event: Any) -> None:
        with self._lock:
            self.events_list.append(EventRecord(time.time(), owner, event))

    # -- reading -----------------------------------------------------------------------------------
    def sip_records(self) -> list[SipRecord]:
        n = len(self.sip_owner)  # owner is appended last: every column has at least n entries
        return [SipRecord(self.sip_ts[i], self.sip_direction[i], self.sip_transport[i], self.sip_local[i],
                          self.sip_remote[i], self.sip_raw[i], self.sip_owner[i]) for i in range(n)]

    @property
    def events(self) -> list[EventRecord]:
        with self._lock:
            return list(self.events_list)

    @property
    def drop_count(self) -> int:
        return len(self.drops)

    def __len__(self) -> int:
        return len(self.sip_owner)

    def __repr__(self) -> str:
        return f"<Trace {len(self)} SIP messages, {len(self.events_list)} events, {len(self.drops)} dropped>"
