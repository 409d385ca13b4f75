"""Completed non-INVITE server transactions over UDP, kept compactly until Timer J (RFC 3261 §17.2.2).

A non-INVITE server transaction that has sent its final response over UDP stays in the Completed state for
Timer J (64*T1, 32 s) only to answer retransmissions of the request with the same response. Keeping the whole
transaction (request, headers, timer handle: ~5 KB and a dozen objects the garbage collector must walk) for
that is what made a busy endpoint slow: at 8,000 requests per second, 256,000 of them are lingering. This
store keeps what the Completed state needs and nothing more: the matching key, the bytes of the final
response and where they went. Expiry is one FIFO queue, because every entry lingers for the same Timer J.

Bounds (a flood must not grow memory without limit): at most `per_source` entries per source address and
`total` in all; beyond them the oldest entries of that source (or overall) leave early, which shortens the
window in which a retransmission is absorbed for the busiest sender, the way Kamailio's tm keeps a fixed
5 s wait timer under load. Sans-IO: the caller passes the time in and sends the bytes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Any


class CompletedTransactions:
    """Key -> (response bytes, target) for completed UDP non-INVITE server transactions, with Timer J expiry."""

    __slots__ = ("per_source", "total", "_entries", "_expiry", "_by_source", "evicted_early")

    def __init__(self, *, per_source: int = 50_000, total: int = 200_000) -> None:
        self.per_source = per_source
        self.total = total
        self._entries: dict[Hashable, tuple[bytes, Any, Hashable, float]] = {}
        self._expiry: deque[tuple[float, Hashable]] = deque()  # (expires_at, key), oldest first
        self._by_source: dict[Hashable, deque[Hashable]] = {}  # source -> its keys, oldest first
        self.evicted_early = 0  # entries that left before Timer J because a bound was reached

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def add(self, key: Hashable, data: bytes, target: Any, source: Hashable, expires_at: float) -> None:
        """Remember the final response `data` sent to `target` for the transaction `key` until `expires_at`."""
        if key in self._entries:
            self._remove(key)
        keys = self._by_source.get(source)
        while keys and len(keys) >= self.per_source:
            self._evict(keys[0])
        while len(self._entries) >= self.total and self._expiry:
            t, oldest = self._expiry.popleft()
            entry = self._entries.get(oldest)
            if entry is not None and entry[3] == t:  # (not a stale queue entry of a key removed before)
                self._evict(oldest)
        # (fetched again: evicting a source's last entry drops its deque)
        keys = self._by_source.setdefault(source, deque())
        self._entries[key] = (data, target, source, expires_at)
        self._expiry.append((expires_at, key))
        keys.append(key)

    def get(self, key: Hashable) -> tuple[bytes, Any] | None:
        """The response bytes and target to resend for a retransmitted request, or None."""
        entry = self._entries.get(key)
        return None if entry is None else (entry[0], entry[1])

    def expire(self, now: float) -> int:
        """Drop entries whose Timer J has fired; returns how many."""
        n = 0
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            _, key = expiry.popleft()
            entry = self._entries.get(key)
            if entry is not None and entry[3] <= now:
                self._remove(key, from_expiry=False)
                n += 1
        if not self._entries:
            self._expiry.clear()
            self._by_source.clear()
        return n

    def next_expiry(self) -> float | None:
        return self._expiry[0][0] if self._expiry else None

    def clear(self) -> None:
        self._entries.clear()
        self._expiry.clear()
        self._by_source.clear()

    def _evict(self, key: Hashable) -> None:
        if key in self._entries:
            self.evicted_early += 1
            self._remove(key)

    def _remove(self, key: Hashable, from_expiry: bool = True) -> None:
        _, _, source, _ = self._entries.pop(key)
        keys = self._by_source.get(source)
        if keys is not None:
            if keys and keys[0] == key:
                keys.popleft()
            else:
                try:
                    keys.remove(key)
                except ValueError:
                    pass
            if not keys:
                del self._by_source[source]
        # the expiry queue entry is left behind when removed early; expire() skips keys no longer present
        # (or re-added with a later expiry), so the queue stays O(1) per operation
        if from_expiry and len(self._expiry) > 2 * len(self._entries) + 1024:
            self._expiry = deque((t, k) for t, k in self._expiry if k in self._entries and self._entries[k][3] == t)
