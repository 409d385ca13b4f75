"""The life of a registration (RFC 3261 §10.2), sans-IO: register, refresh before it lapses, retry with back-off
after a failure, register again at once when the connection to the registrar drops, keep a stream flow alive,
un-register. A table of (state, input) -> (next state, actions), like `sip/transaction.py`; the driver (the user
agent) sends the REGISTERs, arms the timers and reports what the actions say. Time and randomness are passed
in, so every transition is tested without sockets, loop or clock (tests/sansio/test_registration.py).

    machine = Registration(expires=3600)
    actions = machine.start()                      # [Send(3600)]
    actions = machine.answered(200, granted=3600)  # [Report(REGISTERED, ...), StartTimer("refresh", 3540)]
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

from ..sip.actions import StartTimer, StopTimer


class RegState(str, enum.Enum):
    IDLE = "idle"  # not registered (never, or after un-registering or a failed first attempt)
    REGISTERING = "registering"  # the first REGISTER is out
    REGISTERED = "registered"
    REFRESHING = "refreshing"  # a refresh (or a retry after a failure) is out
    RETRYING = "retrying"  # the last refresh failed: waiting the back-off
    UNREGISTERING = "unregistering"  # Expires: 0 is out


class Report(str, enum.Enum):
    """What the driver tells its owner (the endpoint's state follows these)."""

    REGISTERED = "registered"  # the first REGISTER succeeded
    FIRST_FAILED = "first_failed"  # the first REGISTER failed: enabling fails with this status
    REFRESHED = "refreshed"
    FAILED = "failed"  # a refresh failed; retrying in `delay` seconds
    RECOVERED = "recovered"  # registered again after failures
    UNREGISTERED = "unregistered"


@dataclass(frozen=True)
class Send:
    """Send a REGISTER with this Expires (0: un-register)."""

    expires: int


@dataclass(frozen=True)
class SendKeepalive:
    """An RFC 5626 CRLF keep-alive on the registrar connection."""


@dataclass(frozen=True)
class Notify:
    """Tell the owner: `report`, with `status` (of the response, 0 for no answer) and a readable `detail`."""

    report: Report
    status: int = 0
    detail: str = ""
    delay: float = 0.0  # FAILED: seconds until the next attempt


Action = Send | StartTimer | StopTimer | SendKeepalive | Notify

RECONNECT_DELAY = 0.05  # seconds: the connection to the registrar dropped, register again (over a new one)


def refresh_delay(granted: int) -> float:
    """When to refresh a registration granted for `granted` seconds: well before it lapses (RFC 3261 §10.2.4
    leaves it open): halfway for short grants, a minute ahead for long ones."""
    return granted / 2 if granted < 240 else granted - 60


class Registration:
    """One registration. `expires`: what to ask for; `keepalive`: seconds between CRLF keep-alives on a stream
    flow (None over UDP); `retry_base`/`retry_max`: the back-off after a failure (doubling, with jitter from
    `jitter()` in [0, 1): 80-100% of the delay, so a classroom does not retry in step after a server restart)."""

    def __init__(
        self,
        expires: int = 3600,
        *,
        keepalive: float | None = None,
        retry_base: float = 1.0,
        retry_max: float = 60.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.state = RegState.IDLE
        self.expires = expires
        self.keepalive = keepalive
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.jitter = jitter
        self.failures = 0
        self.granted: int | None = None

    # -- inputs -------------------------------------------------------------------------------------
    def start(self) -> list[Action]:
        """Register (the first time, or again after un-registering)."""
        if self.state not in (RegState.IDLE,):
            return []
        self.state = RegState.REGISTERING
        self.failures = 0
        return [Send(self.expires)]

    def answered(self, status: int, *, granted: int | None = None, detail: str = "") -> list[Action]:
        """The final response to the REGISTER that is out (`granted`: the expiry the registrar gave us)."""
        state = self.state
        ok = 200 <= status < 300
        if state is RegState.UNREGISTERING:
            self.state, self.granted = RegState.IDLE, None
            return [Notify(Report.UNREGISTERED, status, detail)]
        if state is RegState.REGISTERING:
            if not ok:
                self.state = RegState.IDLE
                return [Notify(Report.FIRST_FAILED, status, detail)]
            return self._registered(granted, Report.REGISTERED, status, detail)
        if state is RegState.REFRESHING:
            if ok:
                report = Report.RECOVERED if self.failures else Report.REFRESHED
                self.failures = 0
                return self._registered(granted, report, status, detail)
            return self._failed(status, detail)
        return []  # a late answer in a state that is not waiting for one

    def no_answer(self, detail: str) -> list[Action]:
        """The REGISTER got no answer (timeout, or the transport failed)."""
        if self.state is RegState.REGISTERING:
            self.state = RegState.IDLE
            return [Notify(Report.FIRST_FAILED, 0, detail)]
        if self.state is RegState.REFRESHING:
            return self._failed(0, detail)
        if self.state is RegState.UNREGISTERING:
            self.state, self.granted = RegState.IDLE, None
            return [Notify(Report.UNREGISTERED, 0, detail)]
        return []

    def timer(self, name: str) -> list[Action]:
        if name == "keepalive":
            if self.state in (RegState.REGISTERED, RegState.REFRESHING) and self.keepalive:
                return [SendKeepalive(), StartTimer("keepalive", self.keepalive)]
            return []
        if name in ("refresh", "retry") and self.state in (RegState.REGISTERED, RegState.RETRYING):
            self.state = RegState.REFRESHING
            return [Send(self.expires)]
        return []

    def connection_lost(self) -> list[Action]:
        """The stream connection to the registrar closed (a server restart?): register again at once."""
        if self.state in (RegState.REGISTERED, RegState.RETRYING):
            self.state = RegState.RETRYING
            return [StopTimer("refresh"), StartTimer("retry", RECONNECT_DELAY)]
        return []

    def stop(self) -> list[Action]:
        """Un-register (Expires: 0) if registered; stop every timer either way."""
        stops: list[Action] = [StopTimer("refresh"), StopTimer("retry"), StopTimer("keepalive")]
        if self.state in (RegState.REGISTERED, RegState.RETRYING, RegState.REFRESHING):
            self.state = RegState.UNREGISTERING
            return stops + [Send(0)]
        self.state = RegState.IDLE
        return stops

    # -- helpers --------------------------------------------------------------------------------------
    def _registered(self, granted: int | None, report: Report, status: int, detail: str) -> list[Action]:
        self.state = RegState.REGISTERED
        self.granted = granted if granted is not None else self.expires
        actions: list[Action] = [Notify(report, status, detail)]
        if self.granted > 0:
            actions.append(StartTimer("refresh", refresh_delay(self.granted)))
        if self.keepalive and report is Report.REGISTERED:
            actions.append(StartTimer("keepalive", self.keepalive))
        return actions

    def _failed(self, status: int, detail: str) -> list[Action]:
        self.failures += 1
        delay = min(self.retry_base * 2 ** (self.failures - 1), self.retry_max) * (0.8 + 0.2 * self.jitter())
        self.state = RegState.RETRYING
        return [Notify(Report.FAILED, status, detail, delay), StartTimer("retry", delay)]
