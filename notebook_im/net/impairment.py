"""Network impairment as data: loss, duplication, delay, jitter and reordering of datagrams.

`Impairment.decide()` is pure (a seeded RNG, no clock, no socket): for one datagram it returns the delays
after which copies of it are delivered (empty: dropped). The UDP transport applies it to what it sends
(`platform.endpoint(..., impairment=...)`), and `UdpRelay` applies it in both directions between two
real sockets, so tests and teaching notebooks can watch SIP's retransmissions work under loss.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Impairment:
    loss: float = 0.0  # probability that a datagram is dropped
    duplicate: float = 0.0  # probability that a delivered datagram arrives twice
    delay: float = 0.0  # base one-way delay, seconds
    jitter: float = 0.0  # extra uniform random delay, seconds
    reorder: float = 0.0  # probability that a datagram is held back (reorder_delay) so later ones overtake it
    reorder_delay: float = 0.02
    seed: int | None = None
    _rng: random.Random = field(init=False, repr=False)
    dropped: int = field(default=0, init=False)
    delivered: int = field(default=0, init=False)
    duplicated: int = field(default=0, init=False)
    reordered: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability between 0 and 1, not {value!r}")
        for name in ("delay", "jitter", "reorder_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} is a number of seconds >= 0, not {getattr(self, name)!r}")
        self._rng = random.Random(self.seed)

    def decide(self) -> list[float]:
        """Delays (seconds) after which copies of one datagram arrive; [] means it is lost."""
        rng = self._rng
        if rng.random() < self.loss:
            self.dropped += 1
            return []
        copies = 2 if rng.random() < self.duplicate else 1
        if copies == 2:
            self.duplicated += 1
        delays = []
        for _ in range(copies):
            d = self.delay + (rng.random() * self.jitter if self.jitter else 0.0)
            if rng.random() < self.reorder:
                d += self.reorder_delay
                self.reordered += 1
            delays.append(d)
        self.delivered += copies
        return delays

    def sendto(self, udp: Any, data: bytes, addr: tuple[str, int]) -> None:
        """Send one datagram on asyncio transport `udp` as this impairment decides (now, later, twice or never)."""
        loop = asyncio.get_running_loop()
        for delay in self.decide():
            if delay <= 0:
                udp.sendto(data, addr)
            else:
                loop.call_later(delay, lambda: udp.is_closing() or udp.sendto(data, addr))

    @property
    def stats(self) -> dict[str, int]:
        return {
            "delivered": self.delivered,
            "dropped": self.dropped,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
        }
