"""Hooks for tests, benchmarks and teaching labs: the few things they need to do to an endpoint or a server that
an application never should (crash it, look at its transaction table, shorten its back-off). They live here,
named and documented, instead of in `._private` reaches scattered over the test suite; nothing in the library
uses this module.
"""

from __future__ import annotations

from typing import Any

from .core.stack import SipStack
from .runtime import Operation, runtime


def stack_of(obj: Any) -> SipStack:
    """The SIP stack under an Endpoint or a Server (its transactions, limits, transport and stats)."""
    agent = getattr(obj, "agent", None)
    if agent is not None:
        return agent.stack
    proxy = getattr(obj, "proxy", None)
    if proxy is not None:
        return proxy.stack
    raise TypeError(f"stack_of() takes a nim.Endpoint or a nim.Server, not {type(obj).__name__}")


def crash(endpoint: Any) -> Operation[None]:
    """Make an endpoint vanish as a killed process does: its sockets close, with no BYE and no un-REGISTER."""
    return runtime().submit(endpoint.agent.close(), f"crash({endpoint.uri})")


def set_registration_timing(
    endpoint: Any, *, retry_base: float | None = None, retry_max: float | None = None, keepalive: float | None = None
) -> None:
    """Shorten an endpoint's re-REGISTER back-off and stream keep-alive interval (a test cannot wait minutes).
    A new keep-alive interval takes effect at once."""
    machine = endpoint.agent.registration
    if retry_base is not None:
        machine.retry_base = retry_base
    if retry_max is not None:
        machine.retry_max = retry_max
    if keepalive is not None:
        machine.keepalive = keepalive
        runtime().run_sync(endpoint.agent.restart_keepalive)


def advertise(server: Any, host: str, port: int) -> None:
    """Make a server put `host:port` in its Via and Record-Route for UDP (a NAT or relay in front of it)."""
    server.advertise = (host, port)


def roster_dialog(conference: Any) -> Any:
    """The SIP dialog of a ConferenceSession's roster subscription (None until the focus answered the SUBSCRIBE):
    what a test needs to speak in that dialog as the focus would."""
    return conference.roster_dialog
