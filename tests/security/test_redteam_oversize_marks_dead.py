"""MEDIUM (both paths; the stateless one included). One MESSAGE of ~65,480 bytes (legal: under MAX_MESSAGE and
the UDP limit) becomes too large for a datagram once the proxy adds its Via: sendto() fails with EMSGSIZE,
which is only logged, so the device "never answers", its binding is marked dead after device_timeout and every
later message for the user is stored (202) instead of delivered until the device registers again."""

from __future__ import annotations

import time

import pytest

import notebook_im as nim
from notebook_im.runtime import runtime
from tests.security.raw import RawPeer
from tests.server.test_stateless import message, next_request

pytestmark = pytest.mark.timeout(60)
FAST = nim.Timers(t1=0.05, t2=0.4, t4=0.5)  # device_timeout 0.4 s


def _oversized(peer: RawPeer) -> bytes:
    body = b"A" * 65335
    data, _ = message(peer, "bob", body.decode())
    cut = len(data) - 65480  # fits a UDP datagram as sent; the forwarded copy (our Via on top) does not
    data, _ = message(peer, "bob", body[:-cut].decode())
    assert len(data) == 65480
    return data


@pytest.mark.parametrize("stateless", [True, False])
def test_an_oversized_message_does_not_make_the_recipient_offline(stateless):
    with (
        nim.Server(timers=FAST, stateless=stateless) as server,
        RawPeer() as bob,
        RawPeer("127.0.0.5") as mallory,
        RawPeer() as alice,
    ):
        addr = (server.host, server.port)
        assert bob.register(addr, "bob").startswith(b"SIP/2.0 200")
        mallory.send(_oversized(mallory), addr)
        mallory.final(1.5)
        time.sleep(0.3)
        dead = runtime().run_sync(lambda: [b.dead for b in server.registrar.lookup("sip:bob@example.test", 0)])
        assert dead == [False], "bob's binding was marked dead by somebody else's oversized message"
        data, _ = message(alice, "bob", "are you there?")
        alice.send(data, addr)
        assert next_request(bob, 1.0).body == b"are you there?"
