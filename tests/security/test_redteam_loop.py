"""MEDIUM (pre-existing, the fast path keeps it). A binding whose Contact is the server itself: one MESSAGE is
relayed by the server to itself until Max-Forwards runs out (up to 255 hops, the Via list growing each time),
then the 483 walks back through every Via: ~512 datagrams and ~60 ms of CPU per ~400-byte datagram sent. No
loop detection (RFC 3261 §16.3 step 4) and no refusal of a Contact that is the proxy's own address."""

from __future__ import annotations

import pytest

import notebook_im as nim
from tests.security.raw import RawPeer
from tests.server.test_stateless import message

pytestmark = pytest.mark.timeout(60)
FAST = nim.Timers(t1=0.05, t2=0.4, t4=0.5)


@pytest.mark.parametrize("stateless", [True, False])
def test_a_contact_that_is_the_server_itself_does_not_make_a_loop(stateless):
    with nim.Server(timers=FAST, stateless=stateless) as server, RawPeer() as eve, RawPeer() as alice:
        addr = (server.host, server.port)
        eve.register(addr, "loop", contact=f"sip:loop@{server.host}:{server.port}")
        before = server.stats["received"]
        data, _ = message(alice, "loop")
        alice.send(data.replace(b"Max-Forwards: 70", b"Max-Forwards: 255"), addr)
        alice.final(2)
        alice.drain(0.5)
        extra = server.stats["received"] - before
        assert extra <= 4, f"one request made the server receive {extra} datagrams from itself"
