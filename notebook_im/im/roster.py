"""A conference roster as its subscriber keeps it (RFC 4575 over RFC 6665), sans-IO: subscribe to the
conference URI with `Event: conference`, refresh at half the granted expiry, merge the NOTIFYs' full and partial
documents (`conference_info.RosterView`, RFC 4575 §4.6) into join / status / leave changes, ask for the full
state again when a version is missing, and end when the focus terminates the subscription or a refresh fails.
The driver (api/conference.py) sends the SUBSCRIBEs, arms the timer and turns changes into participant events
(tests/sansio/test_roster.py drives every transition without sockets).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..sip.actions import StartTimer, StopTimer
from .conference_info import Change, ConferenceInfo, RosterView

EXPIRES = 600


class SubState(str, enum.Enum):
    IDLE = "idle"
    SUBSCRIBING = "subscribing"
    ACTIVE = "active"
    ENDED = "ended"


@dataclass(frozen=True)
class Subscribe:
    """Send the initial SUBSCRIBE (out of dialog)."""

    expires: int


@dataclass(frozen=True)
class Refresh:
    """Send a SUBSCRIBE in the subscription's dialog (a refresh; it also brings the full state)."""

    expires: int


@dataclass(frozen=True)
class Changes:
    """Roster changes to show: participants who joined, changed status or left."""

    changes: tuple[Change, ...]
    subject: str | None = None


@dataclass(frozen=True)
class Ended:
    """The subscription is over (no roster updates any more); `reason` says why."""

    reason: str


Action = Subscribe | Refresh | StartTimer | StopTimer | Changes | Ended


def refresh_delay(granted: int) -> float:
    return max(1.0, granted / 2)


class RosterSubscription:
    """The roster subscription of one conference session."""

    def __init__(self, expires: int = EXPIRES) -> None:
        self.state = SubState.IDLE
        self.expires = expires
        self.view = RosterView()

    def start(self) -> list[Action]:
        if self.state is not SubState.IDLE:
            return []
        self.state = SubState.SUBSCRIBING
        return [Subscribe(self.expires)]

    def answered(self, status: int, reason: str = "", *, granted: int | None = None) -> list[Action]:
        """The final response to the initial SUBSCRIBE or to a refresh."""
        if self.state not in (SubState.SUBSCRIBING, SubState.ACTIVE):
            return []
        if 200 <= status < 300:
            self.state = SubState.ACTIVE
            granted = self.expires if granted is None else granted
            return [StartTimer("refresh", refresh_delay(granted))] if granted > 0 else []
        return self._end(f"{status} {reason}".strip())

    def unanswered(self, reason: str) -> list[Action]:
        """The initial SUBSCRIBE got no answer: no roster. (A refresh that gets none changes nothing: the
        subscription lives until its expiry, and the next refresh may get through.)"""
        if self.state is SubState.SUBSCRIBING:
            return self._end(f"no answer: {reason}")
        return []

    def timer(self) -> list[Action]:
        if self.state is SubState.ACTIVE:
            return [Refresh(self.expires)]
        return []

    def notified(self, info: ConferenceInfo | None, *, terminated: bool = False) -> list[Action]:
        """A NOTIFY (its document, if it had one, and whether its Subscription-State is terminated). It may
        come before the 200 to our SUBSCRIBE (RFC 6665 §4.1.2.4)."""
        if self.state is SubState.ENDED:
            return []
        actions: list[Action] = []
        if info is not None:
            changes = self.view.apply(info)
            if changes or info.subject is not None:
                actions.append(Changes(tuple(changes), self.view.subject))
            if self.view.needs_full and self.state is SubState.ACTIVE and not terminated:
                actions.append(Refresh(self.expires))  # a missing version: a refresh brings the full state
        if terminated:
            actions += self._end("terminated by the focus")
        return actions

    def stop(self) -> list[Action]:
        """The session ended: no more refreshes."""
        if self.state is SubState.ENDED:
            return []
        self.state = SubState.ENDED
        return [StopTimer("refresh")]

    def _end(self, reason: str) -> list[Action]:
        self.state = SubState.ENDED
        return [StopTimer("refresh"), Ended(reason)]
