"""The life of an IM session's INVITE dialog (RFC 3261 §13-15), both sides, sans-IO: inviting, ringing, the
CANCEL race, accepting and waiting for the ACK, rejecting, the ring and ACK timeouts, BYE either way, and a
peer that stops answering. A table of (phase, input) -> (next phase, actions), like `sip/transaction.py`;
the driver (api/session.py's ImSession) sends what the actions say, arms the timers, emits the API events,
and feeds back what happens. Every transition is tested without sockets or loop (tests/sansio/test_session.py).

Phases (what the public SessionState shows in brackets):

    IDLE --start_outgoing--> INVITING [connecting] --2xx--> CONNECTED [connected]
      |                         |--non-2xx / no answer--> ENDED [disconnected]
      |                         '--terminate--> CANCELLING [disconnecting] --487--> ENDED; --2xx--> CLOSING (BYE)
      '--start_incoming--> RINGING [connecting] --accept--> ANSWERING --ACK (or a request)--> CONNECTED
                              |--reject / ring timeout / CANCEL / terminate (603)--> ENDED
                              '                      ANSWERING --no ACK in 64*T1--> CLOSING (BYE)
    CONNECTED --terminate--> CLOSING [disconnecting] --BYE answered--> ENDED
    CONNECTED --BYE received / peer lost / 481--> ENDED
    INVITING --405/415/488/501/606 (pager_fallback)--> PAGER [connected] --terminate--> ENDED
    IDLE --start_pager--> PAGER

PAGER is a conversation without a dialog: the callee does not do session-mode IM (liblinphone and baresip
answer the INVITE 488), so texts, composing and receipts go as out-of-dialog MESSAGEs (RFC 3428) and a lost
or refused message fails alone without ending the conversation.

A peer that does not answer `UNANSWERED_LIMIT` requests in a row (a text and its retry), or answers 408, is
gone: the session ends without a BYE (RFC 3261 §12.2.1.2: a 408 or 481 ends the dialog; a BYE would only time
out as well).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..sip.actions import StartTimer, StopTimer

RING_TIMEOUT = 120.0
UNANSWERED_LIMIT = 2
ANSWERED_ELSEWHERE = "answered elsewhere"  # the end reason when another device of ours answered
# answers to our INVITE that mean "not a session with me" rather than "not you" or "not now": the method (405,
# 501) or the offer (415, 488, 606) is what the callee refuses, so pager mode can still reach them
PAGER_FALLBACK = frozenset({405, 415, 488, 501, 606})


class Phase(str, enum.Enum):
    IDLE = "idle"
    INVITING = "inviting"
    CANCELLING = "cancelling"
    RINGING = "ringing"
    ANSWERING = "answering"  # our 200 OK is out, its ACK not in yet
    CONNECTED = "connected"
    CLOSING = "closing"  # our BYE is out
    PAGER = "pager"  # no dialog: out-of-dialog MESSAGEs (the callee refused a session)
    ENDED = "ended"


class NotAllowed(Exception):
    """The input does not fit the phase (accepting an invitation that was answered already, ...). The message
    says why; the driver raises it to the caller as InvalidState."""


# -- actions --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SendInvite:
    pass


@dataclass(frozen=True)
class SendCancel:
    pass


@dataclass(frozen=True)
class SendRinging:
    pass


@dataclass(frozen=True)
class SendOk:
    """Answer the INVITE 200 with our SDP (retransmitted until the ACK, RFC 3261 §13.3.1.4)."""


@dataclass(frozen=True)
class SendFinal:
    """Answer the INVITE with a final error response."""

    status: int
    reason: str | None = None


@dataclass(frozen=True)
class SendBye:
    pass


@dataclass(frozen=True)
class Progress:
    """The public session state moves on (connecting, connected, disconnecting)."""

    state: str


@dataclass(frozen=True)
class Connected:
    """The session is up (an accept() that waited for the ACK may return)."""


@dataclass(frozen=True)
class PagerMode:
    """The conversation goes on in pager mode (out-of-dialog MESSAGEs); `status`/`reason` are the INVITE's
    answer that made it so (None when pager mode was asked for)."""

    status: int | None
    reason: str


@dataclass(frozen=True)
class PeerLost:
    """The other party stopped answering: show them disconnected, with this reason."""

    reason: str


@dataclass(frozen=True)
class Ended:
    """The session is over: SessionTerminated(reason, status, by_remote, answered_elsewhere)."""

    reason: str
    status: int | None
    by_remote: bool = False
    answered_elsewhere: bool = False


Action = (
    SendInvite
    | SendCancel
    | SendRinging
    | SendOk
    | SendFinal
    | SendBye
    | StartTimer
    | StopTimer
    | Progress
    | Connected
    | PagerMode
    | PeerLost
    | Ended
)


class InviteSession:
    """One session's dialog life. `remote` names the other party in the reasons it writes."""

    def __init__(
        self,
        remote: str,
        *,
        ring_timeout: float = RING_TIMEOUT,
        no_answer: str = "no answer",
        pager_fallback: bool = False,
    ) -> None:
        self.phase = Phase.IDLE
        self.remote = remote
        self.pager_fallback = pager_fallback  # a PAGER_FALLBACK answer to our INVITE goes on in pager mode
        self.ring_timeout = ring_timeout
        self.no_answer = no_answer  # how the end reason starts when the INVITE got no answer
        self.unanswered = 0  # our requests in a row that got no answer at all
        self._closing: tuple[str, int | None] = ("local party ended the session", None)

    @property
    def connected(self) -> bool:
        return self.phase is Phase.CONNECTED

    @property
    def pager(self) -> bool:
        """A conversation without a dialog (out-of-dialog MESSAGEs)."""
        return self.phase is Phase.PAGER

    @property
    def ended(self) -> bool:
        return self.phase is Phase.ENDED

    # -- outgoing -------------------------------------------------------------------------------------------
    def start_outgoing(self) -> list[Action]:
        self._require(Phase.IDLE, "invite")
        self.phase = Phase.INVITING
        return [Progress("connecting"), SendInvite()]

    def start_pager(self, reason: str = "pager mode asked for") -> list[Action]:
        """A conversation in pager mode from the start (no INVITE)."""
        self._require(Phase.IDLE, "start a pager-mode conversation")
        self.phase = Phase.PAGER
        return [Progress("connecting"), PagerMode(None, reason), Progress("connected"), Connected()]

    def invite_answered(self, status: int, reason: str) -> list[Action]:
        """The final response to our INVITE."""
        if 200 <= status < 300:
            if self.phase is Phase.INVITING:
                self.phase = Phase.CONNECTED
                return [Progress("connected"), Connected()]
            if self.phase is Phase.CANCELLING:  # the callee answered as our CANCEL crossed: end it properly
                self.phase = Phase.CLOSING
                return [SendBye()]
            return []
        if self.phase is Phase.INVITING and self.pager_fallback and status in PAGER_FALLBACK:
            self.phase = Phase.PAGER
            return [PagerMode(status, reason), Progress("connected"), Connected()]
        if self.phase in (Phase.INVITING, Phase.CANCELLING):
            self.phase = Phase.ENDED
            return [Ended(f"{status} {reason}", status, by_remote=True)]
        return []

    def invite_unanswered(self, reason: str) -> list[Action]:
        """Our INVITE got no final response (Timer B, or the transport failed)."""
        if self.phase in (Phase.INVITING, Phase.CANCELLING):
            self.phase = Phase.ENDED
            return [Ended(f"{self.no_answer}: {reason}", 408)]
        return []

    # -- incoming -------------------------------------------------------------------------------------------
    def start_incoming(self) -> list[Action]:
        self._require(Phase.IDLE, "ring")
        self.phase = Phase.RINGING
        return [Progress("connecting"), SendRinging(), StartTimer("ring", self.ring_timeout)]

    def accept(self) -> list[Action]:
        if self.phase in (Phase.ANSWERING, Phase.CONNECTED):
            return []  # accepted already (twice is harmless)
        self._require(Phase.RINGING, "accept the invitation")
        self.phase = Phase.ANSWERING
        return [StopTimer("ring"), SendOk()]

    def reject(self, status: int, reason: str | None = None) -> list[Action]:
        self._require(Phase.RINGING, "reject the invitation")
        self.phase = Phase.ENDED
        return [StopTimer("ring"), SendFinal(status, reason), Ended(f"rejected with {status}", status)]

    def ring_timeout_fired(self) -> list[Action]:
        if self.phase is not Phase.RINGING:
            return []
        self.phase = Phase.ENDED
        return [SendFinal(480), Ended("not answered", 480)]

    def cancelled(self, *, elsewhere: bool) -> list[Action]:
        """The caller CANCELled (`elsewhere`: because another device of ours answered, RFC 3326)."""
        if self.phase is not Phase.RINGING:
            return []
        self.phase = Phase.ENDED
        reason = ANSWERED_ELSEWHERE if elsewhere else "cancelled by the caller"
        return [StopTimer("ring"), SendFinal(487), Ended(reason, 487, by_remote=True, answered_elsewhere=elsewhere)]

    def acked(self) -> list[Action]:
        """The ACK for our 200 came, or a request in the dialog showed the caller has the 200."""
        if self.phase is not Phase.ANSWERING:
            return []
        self.phase = Phase.CONNECTED
        return [Progress("connected"), Connected()]

    def ack_timed_out(self) -> list[Action]:
        """No ACK for our 200 OK within 64*T1: end the session with a BYE."""
        if self.phase is not Phase.ANSWERING:
            return []
        self.phase = Phase.CLOSING
        self._closing = ("no ACK for our 200 OK", 408)
        return [Progress("disconnecting"), SendBye()]

    # -- either side -----------------------------------------------------------------------------------------
    def terminate(self, *, reason: str = "local party ended the session") -> list[Action]:
        """The local party ends the session: CANCEL while inviting, 603 while ringing, BYE when connected."""
        phase = self.phase
        if phase is Phase.INVITING:
            self.phase = Phase.CANCELLING
            return [Progress("disconnecting"), SendCancel()]
        if phase is Phase.RINGING:
            return self.reject(603, "Decline")
        if phase in (Phase.ANSWERING, Phase.CONNECTED):
            self.phase = Phase.CLOSING
            self._closing = (reason, None)
            return [Progress("disconnecting"), SendBye()]
        if phase is Phase.PAGER:  # nothing to tear down on the wire
            self.phase = Phase.ENDED
            return [Progress("disconnecting"), Ended(reason, None)]
        if phase is Phase.IDLE:
            self.phase = Phase.ENDED
            return [Ended(reason, None)]
        return []  # cancelling, closing or ended already

    def bye_done(self) -> list[Action]:
        """Our BYE was answered (or timed out: the session is over either way)."""
        if self.phase is not Phase.CLOSING:
            return []
        self.phase = Phase.ENDED
        reason, status = self._closing
        return [Ended(reason, status)]

    def bye_received(self, *, elsewhere: bool = False, moved_to: str | None = None) -> list[Action]:
        """The other party sent BYE (`elsewhere`: another device of ours had answered; `moved_to`: the
        conversation moved to that conference)."""
        if self.phase is Phase.ENDED:
            return []
        self.phase = Phase.ENDED
        if elsewhere:
            return [Ended(ANSWERED_ELSEWHERE, 200, by_remote=True, answered_elsewhere=True)]
        if moved_to is not None:
            return [Ended(f"moved to conference {moved_to}", 200, by_remote=True)]
        return [Ended("remote party ended the session", 200, by_remote=True)]

    def answered(self, method: str, status: int, reason: str) -> list[Action]:
        """An in-dialog request of ours got a final response: a 408 means the peer is gone, a 481 that the
        dialog is; anything else shows the peer is there."""
        self.unanswered = 0
        if self.phase is not Phase.CONNECTED:
            return []
        if status == 408:
            return self._lost(method, status, reason)
        if status == 481:
            self.phase = Phase.ENDED
            return [Ended(f"dialog gone ({status} {reason})", status)]
        return []

    def unanswered_request(self, method: str, status: int, reason: str) -> list[Action]:
        """An in-dialog request of ours got no answer (timeout, or the transport failed). One can be bad luck
        on a lossy network; `UNANSWERED_LIMIT` in a row means the other party stopped answering."""
        self.unanswered += 1
        if self.unanswered >= UNANSWERED_LIMIT and self.phase is Phase.CONNECTED:
            return self._lost(method, status, reason)
        return []

    # -- helpers ----------------------------------------------------------------------------------------------
    def _lost(self, method: str, status: int, reason: str) -> list[Action]:
        self.phase = Phase.ENDED
        why = f"{self.remote} stopped answering ({method}: {status} {reason})"
        return [PeerLost(why), Ended(why, status)]

    def _require(self, phase: Phase, what: str) -> None:
        if self.phase is not phase:
            raise NotAllowed(f"cannot {what} now: the session is {self.phase.value}")
