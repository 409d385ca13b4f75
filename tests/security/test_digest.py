"""Digest authentication attacked on the wire: replay after the nonce table fills, answers without qop or
for another URI, and password guessing from one address and from many."""

from __future__ import annotations

import resource
import socket
import time

import pytest

import notebook_im as nim
from notebook_im.server.auth import Authenticator
from notebook_im.sip.parser import parse_message
from tests.security.raw import RawPeer, answer_challenge, token

USERS = {"alice": "alice-pw-1", "bob": "bob-pw-2", "mallory": "mallory-pw-3"}


@pytest.fixture
def srv():
    s = nim.Server(users=USERS).start().result(10)
    yield s
    s.stop()


def register_request(
    peer: RawPeer,
    user: str,
    *,
    call_id: str,
    cseq: int,
    contact: str | None = None,
    auth: str | None = None,
    ruri: str = "sip:example.test",
) -> bytes:
    aor = f"sip:{user}@example.test"
    extra = ["Expires: 300"] + ([f"Authorization: {auth}"] if auth else [])
    req, _ = peer.request(
        "REGISTER",
        ruri,
        from_=aor,
        to=aor,
        call_id=call_id,
        cseq=cseq,
        contact=contact or f"sip:{user}@{peer.hostport}",
        extra=extra,
    )
    return req


@pytest.mark.slow
def test_captured_register_cannot_be_replayed_after_a_nonce_flood(srv):
    """The reported attack: alice's REGISTER is captured; another account authenticates with 10,050 fresh
    nonces (more than the old 10,000-entry table); the capture is replayed with the attacker's Contact."""
    addr = (srv.host, srv.port)
    with RawPeer() as alice, RawPeer("127.0.0.9") as mallory:
        call_id = f"{token()}@alice"
        challenge = alice.exchange(register_request(alice, "alice", call_id=call_id, cseq=1), addr)
        auth = answer_challenge(challenge, "REGISTER", "sip:example.test", "alice", USERS["alice"])
        assert alice.exchange(register_request(alice, "alice", call_id=call_id, cseq=2, auth=auth), addr).startswith(
            b"SIP/2.0 200"
        )
        srv.trace.max_records = 1000  # the trace would keep all 40,000 messages: measure the server's own state
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # the flood: mallory asks for and answers fresh nonces, 100 in flight at a time (bounded: 10,050)
        mallory.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        done, started = 0, time.monotonic()
        m_call = f"{token()}@mallory"
        while done < 10_050 and time.monotonic() - started < 120:
            batch = min(100, 10_050 - done)
            for _ in range(batch):
                mallory.send(register_request(mallory, "mallory", call_id=m_call, cseq=1), addr)
            challenges = [mallory.final(5) for _ in range(batch)]
            for ch in challenges:
                assert ch is not None and ch.startswith(b"SIP/2.0 401")
                a = answer_challenge(ch, "REGISTER", "sip:example.test", "mallory", USERS["mallory"])
                mallory.send(register_request(mallory, "mallory", call_id=m_call, cseq=2, auth=a), addr)
            oks = [mallory.final(5) for _ in range(batch)]
            assert all(o is not None and o.startswith(b"SIP/2.0 200") for o in oks)
            done += batch
        assert done == 10_050
        elapsed = time.monotonic() - started
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        # the replay: alice's very Authorization, from mallory, binding mallory's socket as alice's Contact
        replay = register_request(
            mallory, "alice", call_id=call_id, cseq=3, auth=auth, contact=f"sip:alice@{mallory.hostport}"
        )
        reply = mallory.exchange(replay, addr)
        assert reply is not None and reply.startswith(b"SIP/2.0 401") and b"stale=true" in reply, reply
        assert srv.registrations["sip:alice@example.test"] == [f"sip:alice@{alice.hostport}"]
    # the nonce state kept is bounded per user, whatever the flood
    assert all(len(t.used) <= srv.auth.max_nonces_per_user for t in srv.auth._nonces.values())
    # (most of it is the 20,100 answered transactions the server keeps for Timer J, 32 s, as RFC 3261 asks)
    assert grown_kib < 64 * 1024, f"RSS grew {grown_kib} KiB during the flood"
    kept = {u: len(t.used) for u, t in srv.auth._nonces.items()}
    print(
        f"\n[digest] 10,050 fresh nonces authenticated by mallory in {elapsed:.1f} s, peak RSS +{grown_kib / 1024:.1f} MiB "
        f"(test and server in one process); nonces kept per user {kept}; alice's captured REGISTER: 401 stale"
    )


def test_a_nonce_pushed_out_of_a_full_table_is_refused_not_forgotten():
    """Sans-IO, the limit itself: alice authenticates with more fresh nonces than her table holds; her
    earliest (captured) answers are refused as stale instead of being accepted again."""
    auth = Authenticator({"alice": "pw"}, realm="r", max_nonces_per_user=8)
    t = 1000.0
    captured = []
    for i in range(20):
        nonce = auth._nonce(t + i)
        msg = parse_message(
            (
                f"REGISTER sip:r SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bK{i}\r\nFrom: <sip:alice@r>;tag=1\r\n"
                f"To: <sip:alice@r>\r\nCall-ID: c\r\nCSeq: {i + 1} REGISTER\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )
        ch = f'Digest realm="r", nonce="{nonce}", algorithm=SHA-256, qop="auth"'
        from notebook_im.sip import digest

        value = digest.DigestCredentials("alice", "pw").authorize(digest.Challenge.parse(ch), "REGISTER", "sip:r")
        msg.headers.set("Authorization", value)
        assert auth.check(msg, "127.0.0.1", t + i + 0.5, proxy=False).ok
        captured.append(msg)
    assert len(auth._nonces["alice"].used) == 8
    for msg in captured:  # every one of them again: the 12 pushed out are stale, the 8 kept are replays
        result = auth.check(msg, "127.0.0.1", t + 30, proxy=False)
        assert not result.ok and result.stale and result.status == 401


def test_digest_without_qop_or_for_another_uri_is_refused(srv):
    addr = (srv.host, srv.port)
    with RawPeer() as p:
        for kwargs, what in (({"qop": False}, b"qop=auth"), ({"digest_uri": "sip:elsewhere.test"}, b"Request-URI")):
            call_id = f"{token()}@x"
            ch = p.exchange(register_request(p, "alice", call_id=call_id, cseq=1), addr)
            auth = answer_challenge(ch, "REGISTER", "sip:example.test", "alice", USERS["alice"], **kwargs)
            reply = p.exchange(register_request(p, "alice", call_id=call_id, cseq=2, auth=auth), addr)
            assert reply is not None and reply.startswith(b"SIP/2.0 400") and what in reply, reply
    assert "sip:alice@example.test" not in srv.registrations


def guess(peer: RawPeer, addr, user: str, password: str) -> bytes:
    call_id = f"{token()}@g"
    ch = peer.exchange(register_request(peer, user, call_id=call_id, cseq=1), addr)
    assert ch is not None and ch.startswith(b"SIP/2.0 401"), ch
    auth = answer_challenge(ch, "REGISTER", "sip:example.test", user, password)
    reply = peer.exchange(register_request(peer, user, call_id=call_id, cseq=2, auth=auth), addr)
    assert reply is not None
    return reply


def test_lockout_is_per_user_and_source_so_the_innocent_behind_the_same_nat_get_in(srv):
    addr = (srv.host, srv.port)
    with RawPeer("127.0.0.10") as nat:
        for _ in range(6):
            assert guess(nat, addr, "alice", "wrong").startswith(b"SIP/2.0 403")
        assert b"try later" in guess(nat, addr, "alice", USERS["alice"])  # that pair is locked now
        assert guess(nat, addr, "bob", USERS["bob"]).startswith(b"SIP/2.0 200")  # bob, same address: in


@pytest.mark.slow
def test_distributed_guessing_is_slowed_per_user_but_alice_still_gets_in(srv):
    srv.auth.backoff_max = 1.0
    addr = (srv.host, srv.port)
    with RawPeer("127.0.1.100") as home:
        assert guess(home, addr, "alice", USERS["alice"]).startswith(b"SIP/2.0 200")  # alice's usual place
        peers = [RawPeer(f"127.0.1.{i}") for i in range(1, 21)]
        try:
            checked = refused = 0
            for round_ in range(4):  # 80 guesses over 20 addresses, 4 each (under the pair lockout)
                for p in peers:
                    reply = guess(p, addr, "alice", f"guess-{round_}-{p.host}")
                    assert reply.startswith(b"SIP/2.0 403")
                    if b"wrong password" in reply:
                        checked += 1
                    elif b"try again in" in reply:
                        refused += 1
            assert checked + refused == 80
            print(
                f"\n[digest] 80 guesses at alice from 20 addresses: {checked} checked, {refused} refused unchecked "
                f"(back-off up to {srv.auth.backoff_max:g} s)"
            )
            # the per-user threshold (10) plus what the back-off lets through while the loop runs
            assert checked <= srv.auth.user_threshold + 6, checked
            # during the attack, alice from her usual place is not slowed at all
            assert guess(home, addr, "alice", USERS["alice"]).startswith(b"SIP/2.0 200")
            # from a new place she waits out the back-off (1 s here), then gets in: never locked out for good
            with RawPeer("127.0.1.200") as travel:
                time.sleep(srv.auth.backoff_max + 0.1)
                assert guess(travel, addr, "alice", USERS["alice"]).startswith(b"SIP/2.0 200")
        finally:
            for p in peers:
                p.close()
