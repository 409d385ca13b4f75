"""HIGH. A sender-supplied `received=` survives mark_received when the Via host equals the source address and
there is no rport, so responses go wherever the attacker says: the stateless relay relays every replay of a
response carrying a valid branch (unlimited, attacker-chosen content), and the stateful path's own answers
(an INVITE's 404, retransmitted by Timer G) reflect ~11x amplified. A received= that is not an IPv4 literal makes
sendto() raise ValueError (uvloop), which leaks the server transaction forever (global 503 after 200,000)."""

from __future__ import annotations

import pytest

import notebook_im as nim
from notebook_im.sip.message import make_response
from notebook_im.sip.parser import parse_message
from tests.security.raw import RawPeer, token

pytestmark = pytest.mark.timeout(60)
FAST = nim.Timers(t1=0.05, t2=0.4, t4=0.5)


def _request(method: str, user: str, via_host: str, via_port: int, received: str) -> bytes:
    lines = [
        f"{method} sip:{user}@example.test SIP/2.0",
        # sent-by is the attacker's own address (so no received= is added), no rport, received= names the victim
        f"Via: SIP/2.0/UDP {via_host}:{via_port};received={received};branch=z9hG4bK{token()}",
        "Max-Forwards: 70",
        f"From: <sip:mallory@example.test>;tag={token()}",
        f"To: <sip:{user}@example.test>",
        f"Call-ID: {token()}",
        f"CSeq: 1 {method}",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def test_stateless_relay_does_not_reflect_replayed_responses_to_a_sender_chosen_received():
    with (
        nim.Server(timers=FAST) as server,
        RawPeer("127.0.0.7") as mallory,
        RawPeer("127.0.0.7") as eve,
        RawPeer("127.0.0.9") as victim,
    ):
        addr = (server.host, server.port)
        assert eve.register(addr, "eve").startswith(b"SIP/2.0 200")  # mallory's own device
        mallory.send(_request("MESSAGE", "eve", "127.0.0.7", victim.port, "127.0.0.9"), addr)
        fwd = parse_message(eve.recv(2))
        resp = make_response(fwd, 200, to_tag="x")
        for _ in range(20):  # the same response, replayed: each is relayed
            eve.send(bytes(resp), addr)
        got = victim.drain(1.0)
        assert got == [], f"the server sent {len(got)} responses to 127.0.0.9, an address nobody sent from"


def test_stateful_answers_do_not_go_to_a_sender_chosen_received():
    with nim.Server(timers=FAST) as server, RawPeer("127.0.0.7") as mallory, RawPeer("127.0.0.9") as victim:
        addr = (server.host, server.port)
        data = _request("INVITE", "nobody", "127.0.0.7", victim.port, "127.0.0.9")
        mallory.send(data, addr)
        got = victim.drain(2.0)
        assert got == [], f"{len(got)} datagrams ({sum(map(len, got))} bytes) reflected for one of {len(data)} bytes"


def test_a_received_that_is_no_address_does_not_leak_the_server_transaction():
    """received=nonexistent (a name, or anything that is not an IPv4 literal): uvloop's sendto() raises
    ValueError, which send_bytes does not catch (only OSError/RuntimeError), so the answer never goes and Timer
    J is never armed: the server transaction stays in `_servers` for good. 20,000 from one address and that
    address is refused 503 forever; 200,000 in all (any source ports) and every new request is refused.
    (With the plain asyncio loop a name is instead resolved by a blocking call on the loop thread.)"""
    import time

    with nim.Server(timers=FAST) as server, RawPeer("127.0.0.7") as mallory:
        addr = (server.host, server.port)
        for _ in range(50):
            mallory.send(_request("OPTIONS", "nobody", "127.0.0.7", 9, "nonexistent"), addr)
        time.sleep(64 * FAST.t1 + 1.5)  # well past Timer J
        assert server.proxy.stack.live_server_transactions == 0, "server transactions leaked"
