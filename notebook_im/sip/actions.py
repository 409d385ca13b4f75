"""Timer actions shared by every sans-IO state machine (transactions, registration, the INVITE session, the roster
subscription, composing). A machine returns them; its driver arms or cancels a timer of that name and feeds the
expiry back as an input. One definition, so a driver (and a test) reads the same two actions everywhere."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StartTimer:
    """(Re)arm the named timer to fire `delay` seconds from now."""

    name: str
    delay: float


@dataclass(frozen=True)
class StopTimer:
    """Cancel the named timer (nothing happens if it is not armed)."""

    name: str
