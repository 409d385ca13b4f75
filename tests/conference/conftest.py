"""Fixtures for the conference tests: the embedded server (with its focus) and N registered endpoints."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import notebook_im as nim
from tests.helpers import accept_all

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank"]


@pytest.fixture
def server():
    # a short T1 so that a vanished participant is noticed within 64*T1 = 6.4 s
    srv = nim.Server(timers=nim.Timers(t1=0.1, t2=0.4)).start().result(10)
    yield srv
    srv.stop()


@pytest.fixture
def people(server, platform) -> Callable[..., list]:
    """people(n, transport="udp") -> n endpoints (alice, bob, ...) registered with the server; every one
    but the first accepts invitations (their sessions are in `endpoint.accepted`)."""

    def make(n: int, transport: str = "udp", accept: bool = True) -> list:
        eps = []
        for name in NAMES[:n]:
            ep = platform.endpoint(
                f"sip:{name}@example.test", server=server.uri, transport=transport, display_name=name.title()
            ).result(10)
            ep.accepted = accept_all(ep) if accept and eps else []
            ep.received = []
            ep.on(nim.MessageReceived, ep.received.append)
            eps.append(ep)
        return eps

    return make
