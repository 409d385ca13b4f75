"""RFC 3261 §17 transactions (with the RFC 6026 Accepted state) as sans-IO state machines.

Each transaction is driven by four inputs -- `start()`, `receive(message)`, `timer(name)` and, for server
transactions, `respond(response)` -- and answers with a list of actions for the caller to carry out:
`Transmit` bytes, `StartTimer`/`StopTimer`, `Deliver` a message to the transaction user, `Timeout`,
`Terminated`. No clock is read: timers are data (a name and a delay) and the caller fires them.

The state tables below are the RFC's figures 5-8 written as dictionaries:
`(state, event) -> (next state, action names)`. The action names are methods of the transaction.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .actions import StartTimer, StopTimer
from .errors import LocalProtocolError
from .headers import Headers
from .message import Request, Response

T1 = 0.5  # RTT estimate
T2 = 4.0  # maximum retransmit interval for non-INVITE requests and INVITE responses
T4 = 5.0  # maximum duration a message remains in the network


@dataclass(frozen=True)
class Timers:
    """RFC 3261 timer base values. The defaults are the RFC's; a LAN or a test may use a smaller T1
    (RFC 3261 §17.1.1.1 allows it), which scales every derived timer (64*T1 transaction timeouts)."""

    t1: float = T1
    t2: float = T2
    t4: float = T4

    def __post_init__(self) -> None:
        if not (0 < self.t1 <= self.t2) or self.t4 <= 0:
            raise ValueError(f"timers need 0 < t1 <= t2 and t4 > 0, got {self}")


DEFAULT_TIMERS = Timers()


class State(str, enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


# --- actions -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Transmit:
    """Send this message to the transaction's peer (a request or a response)."""

    message: Request | Response


@dataclass(frozen=True)
class Deliver:
    """Hand this message to the transaction user (a response for a client, the request for a server)."""

    message: Request | Response


@dataclass(frozen=True)
class Timeout:
    """The transaction gave up (timer B, F or H): the TU treats it as a 408 / lost ACK."""

    timer: str


@dataclass(frozen=True)
class Terminated:
    """The transaction is over: forget it."""


Action = Transmit | StartTimer | StopTimer | Deliver | Timeout | Terminated

S = State
# --- the state tables ---------------------------------------------------------------------------
# events: "start", "1xx", "2xx", "3xx+" (responses), "timer_X", "request" (retransmission), "ack",
# "send_1xx", "send_2xx", "send_3xx+" (server TU responds), "transport_error"
INVITE_CLIENT: dict[tuple[State, str], tuple[State, tuple[str, ...]]] = {
    (S.CALLING, "start"): (S.CALLING, ("transmit_request", "start_A", "start_B")),
    (S.CALLING, "timer_A"): (S.CALLING, ("transmit_request", "restart_A")),
    (S.CALLING, "timer_B"): (S.TERMINATED, ("timeout",)),
    (S.CALLING, "1xx"): (S.PROCEEDING, ("stop_A", "deliver")),
    (S.CALLING, "2xx"): (S.ACCEPTED, ("stop_A", "stop_B", "deliver", "start_M")),
    (S.CALLING, "3xx+"): (S.COMPLETED, ("stop_A", "stop_B", "deliver", "transmit_ack", "start_D")),
    (S.CALLING, "transport_error"): (S.TERMINATED, ("timeout",)),
    (S.PROCEEDING, "1xx"): (S.PROCEEDING, ("deliver",)),
    (S.PROCEEDING, "2xx"): (S.ACCEPTED, ("stop_B", "deliver", "start_M")),
    (S.PROCEEDING, "3xx+"): (S.COMPLETED, ("stop_B", "deliver", "transmit_ack", "start_D")),
    (S.PROCEEDING, "timer_B"): (S.TERMINATED, ("timeout",)),
    (S.PROCEEDING, "timer_A"): (S.PROCEEDING, ()),
    (S.ACCEPTED, "2xx"): (S.ACCEPTED, ("deliver",)),  # RFC 6026: retransmitted 2xx go to the TU to re-ACK
    (S.ACCEPTED, "1xx"): (S.ACCEPTED, ()),
    (S.ACCEPTED, "3xx+"): (S.ACCEPTED, ()),
    (S.ACCEPTED, "timer_M"): (S.TERMINATED, ()),
    (S.ACCEPTED, "timer_B"): (S.ACCEPTED, ()),
    (S.COMPLETED, "3xx+"): (S.COMPLETED, ("transmit_ack",)),
    (S.COMPLETED, "1xx"): (S.COMPLETED, ()),
    (S.COMPLETED, "2xx"): (S.COMPLETED, ()),
    (S.COMPLETED, "timer_D"): (S.TERMINATED, ()),
    (S.COMPLETED, "transport_error"): (S.TERMINATED, ()),
}

NON_INVITE_CLIENT: dict[tuple[State, str], tuple[State, tuple[str, ...]]] = {
    (S.TRYING, "start"): (S.TRYING, ("transmit_request", "start_E", "start_F")),
    (S.TRYING, "timer_E"): (S.TRYING, ("transmit_request", "restart_E")),
    (S.TRYING, "timer_F"): (S.TERMINATED, ("timeout",)),
    (S.TRYING, "1xx"): (S.PROCEEDING, ("deliver",)),
    (S.TRYING, "2xx"): (S.COMPLETED, ("stop_E", "stop_F", "deliver", "start_K")),
    (S.TRYING, "3xx+"): (S.COMPLETED, ("stop_E", "stop_F", "deliver", "start_K")),
    (S.TRYING, "transport_error"): (S.TERMINATED, ("timeout",)),
    (S.PROCEEDING, "timer_E"): (S.PROCEEDING, ("transmit_request", "restart_E_T2")),
    (S.PROCEEDING, "timer_F"): (S.TERMINATED, ("timeout",)),
    (S.PROCEEDING, "1xx"): (S.PROCEEDING, ("deliver",)),
    (S.PROCEEDING, "2xx"): (S.COMPLETED, ("stop_E", "stop_F", "deliver", "start_K")),
    (S.PROCEEDING, "3xx+"): (S.COMPLETED, ("stop_E", "stop_F", "deliver", "start_K")),
    (S.PROCEEDING, "transport_error"): (S.TERMINATED, ("timeout",)),
    (S.COMPLETED, "1xx"): (S.COMPLETED, ()),
    (S.COMPLETED, "2xx"): (S.COMPLETED, ()),
    (S.COMPLETED, "3xx+"): (S.COMPLETED, ()),
    (S.COMPLETED, "timer_K"): (S.TERMINATED, ()),
    (S.COMPLETED, "timer_E"): (S.COMPLETED, ()),
}

INVITE_SERVER: dict[tuple[State, str], tuple[State, tuple[str, ...]]] = {
    (S.PROCEEDING, "start"): (S.PROCEEDING, ("send_trying", "deliver_request")),  # 100 goes out before any 18x
    (S.PROCEEDING, "request"): (S.PROCEEDING, ("retransmit_response",)),
    (S.PROCEEDING, "send_1xx"): (S.PROCEEDING, ("transmit_response",)),
    (S.PROCEEDING, "send_2xx"): (S.ACCEPTED, ("transmit_response", "start_L")),
    (S.PROCEEDING, "send_3xx+"): (S.COMPLETED, ("transmit_response", "start_G", "start_H")),
    (S.PROCEEDING, "transport_error"): (S.TERMINATED, ()),
    (S.ACCEPTED, "request"): (S.ACCEPTED, ()),  # absorbed; the TU retransmits the 2xx itself
    (S.ACCEPTED, "send_2xx"): (S.ACCEPTED, ("transmit_response",)),
    (S.ACCEPTED, "ack"): (S.ACCEPTED, ()),  # ACK for 2xx is not part of the transaction
    (S.ACCEPTED, "timer_L"): (S.TERMINATED, ()),
    (S.COMPLETED, "request"): (S.COMPLETED, ("retransmit_response",)),
    (S.COMPLETED, "timer_G"): (S.COMPLETED, ("retransmit_response", "restart_G")),
    (S.COMPLETED, "timer_H"): (S.TERMINATED, ("timeout",)),
    (S.COMPLETED, "ack"): (S.CONFIRMED, ("stop_G", "stop_H", "start_I")),
    (S.COMPLETED, "transport_error"): (S.TERMINATED, ("timeout",)),
    (S.CONFIRMED, "request"): (S.CONFIRMED, ()),
    (S.CONFIRMED, "ack"): (S.CONFIRMED, ()),
    (S.CONFIRMED, "timer_I"): (S.TERMINATED, ()),
    (S.CONFIRMED, "timer_G"): (S.CONFIRMED, ()),
}

NON_INVITE_SERVER: dict[tuple[State, str], tuple[State, tuple[str, ...]]] = {
    (S.TRYING, "start"): (S.TRYING, ("deliver_request",)),
    (S.TRYING, "request"): (S.TRYING, ()),  # absorbed: nothing to resend yet
    (S.TRYING, "send_1xx"): (S.PROCEEDING, ("transmit_response",)),
    (S.TRYING, "send_2xx"): (S.COMPLETED, ("transmit_response", "start_J")),
    (S.TRYING, "send_3xx+"): (S.COMPLETED, ("transmit_response", "start_J")),
    (S.PROCEEDING, "request"): (S.PROCEEDING, ("retransmit_response",)),
    (S.PROCEEDING, "send_1xx"): (S.PROCEEDING, ("transmit_response",)),
    (S.PROCEEDING, "send_2xx"): (S.COMPLETED, ("transmit_response", "start_J")),
    (S.PROCEEDING, "send_3xx+"): (S.COMPLETED, ("transmit_response", "start_J")),
    (S.PROCEEDING, "transport_error"): (S.TERMINATED, ()),
    (S.COMPLETED, "request"): (S.COMPLETED, ("retransmit_response",)),
    (S.COMPLETED, "timer_J"): (S.TERMINATED, ()),
    (S.COMPLETED, "transport_error"): (S.TERMINATED, ()),
}


def _response_event(status: int, prefix: str = "") -> str:
    if status < 200:
        return prefix + "1xx"
    if status < 300:
        return prefix + "2xx"
    return prefix + "3xx+"


_ACTION_FUNCS: dict[tuple[type, str], Callable[[Any, Any], list]] = {}  # (class, action name) -> function


def _action_func(cls: type, name: str) -> Callable[[Any, Any], list]:
    """The function that performs action `name` of a state table for transactions of class `cls`: its `_a_<name>`
    method, or a timer action ("start_X", "restart_X", "stop_X"). Looked up once per (class, name), not per event."""
    method = getattr(cls, "_a_" + name, None)
    if method is not None:
        return method
    for prefix, make in (
        ("start_", lambda t: lambda self, _m: self._start(t)),
        ("restart_", lambda t: lambda self, _m: self._restart(t)),
        ("stop_", lambda t: lambda self, _m: [StopTimer(t)]),
    ):
        if name.startswith(prefix):
            return make(name[len(prefix) :])
    raise AttributeError(f"{cls.__name__} has no action {name!r}")


@dataclass
class _Base:
    reliable: bool = False
    timers: Timers = DEFAULT_TIMERS
    state: State = State.TRYING
    _interval: dict[str, float] = field(default_factory=dict)
    _table: dict = field(default_factory=dict, repr=False)

    def _run(self, event: str, message: Request | Response | None = None) -> list[Action]:
        entry = self._table.get((self.state, event))
        if entry is None:
            return []  # an event the RFC ignores in this state (e.g. a late response)
        next_state, action_names = entry
        self.state = next_state
        actions: list[Action] = []
        cls = type(self)
        for name in action_names:
            fn = _ACTION_FUNCS.get((cls, name))
            if fn is None:
                fn = _ACTION_FUNCS[(cls, name)] = _action_func(cls, name)
            actions.extend(fn(self, message))
        if next_state is State.TERMINATED:
            actions.append(Terminated())
        return actions

    def _timer_delay(self, timer: str) -> float | None:
        raise NotImplementedError

    def _start(self, timer: str) -> list[Action]:
        delay = self._timer_delay(timer)
        if delay is None:  # a retransmission timer on a reliable transport
            return []
        self._interval[timer] = delay
        return [StartTimer(timer, delay)]

    def _restart(self, timer: str) -> list[Action]:
        t1, t2 = self.timers.t1, self.timers.t2
        if timer == "E_T2":
            self._interval["E"] = t2
            return [StartTimer("E", t2)]
        cap = None if timer == "A" else t2
        nxt = self._interval.get(timer, t1) * 2
        if cap is not None:
            nxt = min(nxt, cap)
        self._interval[timer] = nxt
        return [StartTimer(timer, nxt)]

    def timer(self, name: str) -> list[Action]:
        """Timer `name` fired."""
        return self._run("timer_" + name)

    def transport_error(self) -> list[Action]:
        return self._run("transport_error")

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED


class ClientTransaction(_Base):
    """INVITE or non-INVITE client transaction for `request` (RFC 3261 §17.1)."""

    def __init__(self, request: Request, *, reliable: bool = False, timers: Timers = DEFAULT_TIMERS) -> None:
        invite = request.method == "INVITE"
        if request.method == "ACK":
            raise LocalProtocolError("ACK is sent without a client transaction")
        super().__init__(
            reliable=reliable,
            timers=timers,
            state=State.CALLING if invite else State.TRYING,
            _table=INVITE_CLIENT if invite else NON_INVITE_CLIENT,
        )
        self.request = request
        self.invite = invite
        self.branch = request.top_via.branch
        self.last_response: Response | None = None

    @property
    def key(self) -> tuple[str | None, str]:
        return (self.branch, self.request.method)

    def _timer_delay(self, timer: str) -> float | None:
        t1 = self.timers.t1
        if timer in ("A", "E"):
            return None if self.reliable else t1
        if timer in ("B", "F", "M"):
            return 64 * t1
        if timer == "D":
            return 0.0 if self.reliable else 64 * t1  # 32 s at the default T1
        if timer == "K":
            return 0.0 if self.reliable else self.timers.t4
        raise KeyError(timer)

    def start(self) -> list[Action]:
        return self._run("start")

    def receive(self, response: Response) -> list[Action]:
        """A response matching this transaction arrived."""
        return self._run(_response_event(response.status), response)

    def _a_transmit_request(self, _m) -> list[Action]:
        return [Transmit(self.request)]

    def _a_deliver(self, message) -> list[Action]:
        self.last_response = message
        return [Deliver(message)]

    def _a_timeout(self, _m) -> list[Action]:
        return [Timeout("B" if self.invite else "F")]

    def _a_transmit_ack(self, response) -> list[Action]:
        return [Transmit(make_ack_for_error(self.request, response))]


class ServerTransaction(_Base):
    """INVITE or non-INVITE server transaction for `request` (RFC 3261 §17.2)."""

    def __init__(self, request: Request, *, reliable: bool = False, timers: Timers = DEFAULT_TIMERS) -> None:
        invite = request.method == "INVITE"
        super().__init__(
            reliable=reliable,
            timers=timers,
            state=State.PROCEEDING if invite else State.TRYING,
            _table=INVITE_SERVER if invite else NON_INVITE_SERVER,
        )
        self.request = request
        self.invite = invite
        self.last_response: Response | None = None

    def _timer_delay(self, timer: str) -> float | None:
        t1 = self.timers.t1
        if timer == "G":
            return None if self.reliable else t1
        if timer in ("H", "L"):
            return 64 * t1
        if timer == "I":
            return 0.0 if self.reliable else self.timers.t4
        if timer == "J":
            return 0.0 if self.reliable else 64 * t1
        raise KeyError(timer)

    def start(self) -> list[Action]:
        return self._run("start", self.request)

    def receive(self, request: Request) -> list[Action]:
        """A retransmission of the request (or, for INVITE, the ACK) arrived."""
        return self._run("ack" if request.method == "ACK" else "request", request)

    def respond(self, response: Response) -> list[Action]:
        """The TU sends `response` on this transaction."""
        if self.state in (State.COMPLETED, State.CONFIRMED, State.TERMINATED):
            raise LocalProtocolError(f"transaction already answered with {self.last_response!r}")
        return self._run(_response_event(response.status, "send_"), response)

    def _a_deliver_request(self, request) -> list[Action]:
        return [Deliver(request)]

    def _a_send_trying(self, request) -> list[Action]:
        from .message import make_response

        trying = make_response(request, 100)
        self.last_response = trying
        return [Transmit(trying)]

    def _a_transmit_response(self, response) -> list[Action]:
        self.last_response = response
        return [Transmit(response)]

    def _a_retransmit_response(self, _m) -> list[Action]:
        return [Transmit(self.last_response)] if self.last_response is not None else []

    def _a_timeout(self, _m) -> list[Action]:
        return [Timeout("H")]


def _same_hop_request(invite: Request, method: str, to: str) -> Request:
    """An ACK or CANCEL for `invite`: same top Via (branch), Route set, Request-URI, From, Call-ID and CSeq number."""
    h = Headers()
    h.add("Via", invite.headers.get_all("Via")[0])
    for v in invite.headers.get_all("Route"):
        h.add("Route", v)
    h.add("Max-Forwards", "70")
    h.add("From", invite.headers.get("From") or "")
    h.add("To", to)
    h.add("Call-ID", invite.call_id)
    h.add("CSeq", f"{invite.cseq.number} {method}")
    return Request(method, invite.uri, h)


def make_ack_for_error(invite: Request, response: Response) -> Request:
    """The ACK a client transaction sends for a 3xx-6xx to an INVITE (RFC 3261 §17.1.1.3)."""
    return _same_hop_request(invite, "ACK", response.headers.get("To") or "")


def make_cancel(invite: Request) -> Request:
    """The CANCEL for a pending INVITE (RFC 3261 §9.1), sent by a UAC or by a proxy for its forwarded INVITE."""
    return _same_hop_request(invite, "CANCEL", invite.headers.get("To") or "")


def server_key(request: Request) -> tuple[str, str, str]:
    """RFC 3261 §17.2.3 matching key: branch, sent-by and method (ACK matches its INVITE)."""
    via = request.top_via
    branch = via.branch or ""
    method = "INVITE" if request.method == "ACK" else request.method
    if branch.startswith("z9hG4bK"):
        return (branch, f"{via.host}:{via.sent_by[1]}", method)
    # RFC 2543 peers: fall back to the dialog-ish identifiers
    return (f"{request.call_id}|{request.from_.tag}|{request.cseq.number}", f"{via.host}:{via.sent_by[1]}", method)


def client_key(response: Response) -> tuple[str | None, str]:
    """RFC 3261 §17.1.3 matching key: the top Via branch and the CSeq method."""
    return (response.top_via.branch, response.cseq.method)
