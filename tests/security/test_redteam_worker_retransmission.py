"""MEDIUM (workers only). A worker plans every request it reads afresh: it cannot see the main process's
transactions, so the retransmission of a request the main process already answered (here: kept for an offline
user, 202) is relayed statelessly once the user is back, and the user gets the message twice (once from the
offline store, once relayed). With workers=1 the completed transaction absorbs it (0 duplicates)."""

from __future__ import annotations

import pytest

import notebook_im as nim
from notebook_im.sip.message import Request, make_response
from notebook_im.sip.parser import parse_message
from tests.security.raw import RawPeer
from tests.server.test_stateless import message

pytestmark = pytest.mark.timeout(120)
FAST = nim.Timers(t1=0.05, t2=0.4, t4=0.5)
SENDERS = 16  # the kernel spreads them over the two processes by source address


def _serve(bob: RawPeer, addr, seconds: float) -> list[bytes]:
    bodies = []
    while True:
        data = bob.recv(seconds)
        if data is None:
            return bodies
        msg = parse_message(data)
        if isinstance(msg, Request):
            bob.send(bytes(make_response(msg, 200, to_tag="b")), addr)
            bodies.append(msg.body)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_retransmission_of_an_answered_request_is_not_relayed_again(workers):
    with nim.Server(timers=FAST, workers=workers) as server, RawPeer() as bob:
        addr = (server.host, server.port)
        assert bob.register(addr, "bob").startswith(b"SIP/2.0 200")
        assert bob.register(addr, "bob", expires=0).startswith(b"SIP/2.0 200")  # known, offline
        senders = [RawPeer() for _ in range(SENDERS)]
        try:
            sent = []
            for i, p in enumerate(senders):
                data, _ = message(p, "bob", f"m{i}")
                assert p.exchange(data, addr).startswith(b"SIP/2.0 202")
                sent.append((p, data))
            assert bob.register(addr, "bob").startswith(b"SIP/2.0 200")  # back: the store delivers
            assert len(_serve(bob, addr, 0.5)) == SENDERS
            for p, data in sent:  # each sender's 202 was lost: it retransmits (within Timer J)
                p.send(data, addr)
            again = _serve(bob, addr, 0.5)
            assert again == [], f"bob got {len(again)} messages a second time: {again[:4]}"
        finally:
            for p in senders:
                p.close()
