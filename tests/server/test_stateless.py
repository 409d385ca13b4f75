"""The server's stateless fast path (server/stateless.py, RFC 3261 §16.11), over real loopback sockets and raw
peers: what is relayed without transactions and how it looks on the wire, what still goes stateful, that a
forged response cannot make the server send anything anywhere, and that a silent device is still found out."""

from __future__ import annotations

import time

import pytest

import notebook_im as nim
from notebook_im.runtime import runtime
from notebook_im.sip.message import Request, Response, make_response
from notebook_im.sip.parser import parse_message
from notebook_im.sip.uri import Via
from tests.helpers import wait_for
from tests.security.raw import RawPeer, header

pytestmark = pytest.mark.timeout(60)

MARK = "z9hG4bKsl"
FAST = nim.Timers(t1=0.05, t2=0.4, t4=0.5)  # device_timeout 8*T1 = 0.4 s


def message(peer: RawPeer, to_user: str, text: str = "hi", **kw) -> tuple[bytes, str]:
    return peer.request(
        "MESSAGE",
        f"sip:{to_user}@example.test",
        from_="sip:alice@example.test",
        to=f"sip:{to_user}@example.test",
        body=text.encode(),
        content_type="text/plain",
        **kw,
    )


def next_request(peer: RawPeer, timeout: float = 2.0) -> Request:
    while True:
        data = peer.recv(timeout)
        assert data is not None, "the device got nothing"
        msg = parse_message(data)
        if isinstance(msg, Request):
            return msg


def answer(device: RawPeer, request: Request, status: int, server: nim.Server) -> None:
    device.send(bytes(make_response(request, status, to_tag="dev")), (server.host, server.port))


@pytest.fixture
def server():
    with nim.Server(timers=FAST) as s:
        yield s


def test_pager_message_is_relayed_without_transactions_and_its_answer_relayed_back(server):
    addr = (server.host, server.port)
    with RawPeer() as alice, RawPeer() as bob:
        assert bob.register(addr, "bob").startswith(b"SIP/2.0 200")
        core = server.proxy.stack
        wait_for(lambda: len(core.completed) == 1, 1, "the REGISTER's transaction compacted")
        data, call_id = message(alice, "bob", "hello")
        alice.send(data, addr)
        got = next_request(bob)
        assert got.method == "MESSAGE" and got.body == b"hello" and got.call_id == call_id
        assert str(got.uri) == f"sip:bob@{bob.hostport}", "the Request-URI is the registered Contact"
        assert got.max_forwards == 69
        vias = got.headers.get_all("Via")
        assert len(vias) == 2 and Via.parse(vias[0]).branch.startswith(MARK)
        assert Via.parse(vias[1]).branch == Via.parse(header(data, "Via")).branch, "the sender's Via below ours"
        assert core.live_server_transactions == 0 and len(core.completed) == 1, "no server transaction"
        assert not core._clients, "no client transaction"
        answer(bob, got, 200, server)
        resp = alice.final()
        assert resp is not None and resp.startswith(b"SIP/2.0 200")
        parsed = parse_message(resp)
        assert isinstance(parsed, Response)
        assert parsed.headers.get_all("Via") == [vias[1]], "our Via popped, the sender's as the device saw it"
        wait_for(lambda: server.stats["stateless_responses"] == 1, 1, "the response counted")
        assert server.stats["stateless_relayed"] == 1
        # the trace has the four messages, as for a stateful relay
        wait_for(lambda: len(server.trace) >= 6, 1, "the response out recorded")  # REGISTER, 200, then four
        df = server.trace.sip()
        assert list(df[df["call_id"] == call_id]["direction"]) == ["in", "out", "in", "out"]


def test_a_retransmission_is_forwarded_again_with_the_same_branch_and_another_transaction_gets_another(server):
    addr = (server.host, server.port)
    with RawPeer() as alice, RawPeer() as bob:
        bob.register(addr, "bob")
        data, _ = message(alice, "bob")
        alice.send(data, addr)
        first = next_request(bob)
        alice.send(data, addr)  # the sender's retransmission: the device's transaction absorbs it
        again = next_request(bob)
        assert first.top_via.branch == again.top_via.branch
        other, _ = message(alice, "bob")
        alice.send(other, addr)
        assert next_request(bob).top_via.branch != first.top_via.branch
        wait_for(lambda: server.stats["stateless_relayed"] == 3, 1, "three relayed")


def test_a_forged_response_is_dropped_not_reflected(server):
    """An attacker sends the server responses carrying a branch of our shape over a victim's Via, and a real
    stateless branch over a Via rewritten to point at the victim: nothing reaches the victim."""
    addr = (server.host, server.port)
    with RawPeer() as alice, RawPeer() as bob, RawPeer("127.0.0.9") as victim, RawPeer("127.0.0.7") as attacker:
        bob.register(addr, "bob")
        data, _ = message(alice, "bob")
        alice.send(data, addr)
        got = next_request(bob)
        real = got.top_via.branch
        made_up = (
            "SIP/2.0 200 OK\r\n"
            f"Via: SIP/2.0/UDP {server.host}:{server.port};branch={MARK}0123456789abcdef01234567\r\n"
            f"Via: SIP/2.0/UDP {victim.hostport};branch=z9hG4bKvictim\r\n"
            "From: <sip:a@example.test>;tag=1\r\nTo: <sip:b@example.test>;tag=2\r\nCall-ID: x\r\n"
            "CSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        attacker.send(made_up, addr)
        resp = make_response(got, 200, to_tag="dev")
        resp.headers.pop_first("Via")
        resp.headers.pop_first("Via")
        resp.headers.prepend("Via", f"SIP/2.0/UDP {victim.hostport};branch=z9hG4bKvictim")
        resp.headers.prepend("Via", f"SIP/2.0/UDP {server.host}:{server.port};branch={real}")
        attacker.send(bytes(resp), addr)
        assert victim.drain(0.5) == [], "the server sent the victim nothing"
        wait_for(lambda: server.stats["stateless_forged"] == 2, 2, "both forgeries counted")
        assert server.stats["stateless_responses"] == 0
        late = alice.recv(0.2)  # nothing forged reached alice (her request may be kept by now: bob never answered)
        assert late is None or late.startswith(b"SIP/2.0 202"), late


def test_a_silent_device_is_marked_dead_and_the_request_kept_as_a_stateful_relay_would(server):
    """bob never answers: alice retransmits as a UAC does (T1 = 50 ms: at 0, 50, 150, 350 ms), so by
    device_timeout (0.4 s) bob was sent the four copies a stateful relay would have sent him; his binding is
    dead and alice's MESSAGE, handed to the stateful path, is kept and answered 202 without waiting for her
    next retransmission; that retransmission is absorbed by the transaction, and bob is not sent it."""
    addr = (server.host, server.port)
    with RawPeer() as alice, RawPeer() as bob:
        bob.register(addr, "bob")
        data, _ = message(alice, "bob", "are you there")
        sent = time.monotonic()
        for at in (0.0, 0.05, 0.15, 0.35):
            time.sleep(max(0.0, sent + at - time.monotonic()))
            alice.send(data, addr)
            next_request(bob)  # and no answer
        # (the counters are the loop thread's: the datagram may reach the device before they are updated)
        wait_for(lambda: server.proxy.stateless.pending == 1, 1, "the deadline kept")
        alice.sock.settimeout(3)
        resp = alice.sock.recvfrom(65535)[0]  # the 202 comes by itself, before her next retransmission (750 ms)
        assert resp.startswith(b"SIP/2.0 202"), resp
        assert 0.4 <= time.monotonic() - sent < 0.75, "at device_timeout (+ the 0.25 s sweep), as the stateful path"
        assert _dead(server) and server.offline == {"sip:bob@example.test": 1}
        absorbed = server.stats["retransmissions_absorbed"]
        alice.send(data, addr)  # her retransmission: the same 202 from the transaction
        assert alice.final().startswith(b"SIP/2.0 202")
        assert server.stats["retransmissions_absorbed"] == absorbed + 1
        assert server.proxy.stateless.pending == 0
        assert bob.recv(0.3) is None, "the dead device is not sent the retransmission"
        df = server.trace.sip()
        assert len(df[(df["method"] == "MESSAGE") & (df["direction"] == "in") & df["status"].isna()]) == 5, (
            "the trace has the five requests that came, not a sixth for the handover"
        )


def test_a_sender_that_never_retransmits_still_gets_its_answer(server):
    """One copy only (a sender that does not retransmit over UDP): bob is judged after PATIENCE device_timeouts."""
    from notebook_im.server.stateless import PATIENCE

    addr = (server.host, server.port)
    with RawPeer() as alice, RawPeer() as bob:
        bob.register(addr, "bob")
        data, _ = message(alice, "bob", "once")
        sent = time.monotonic()
        alice.send(data, addr)
        next_request(bob)
        alice.sock.settimeout(5)
        resp = alice.sock.recvfrom(65535)[0]
        assert resp.startswith(b"SIP/2.0 202"), resp
        took = time.monotonic() - sent
        assert PATIENCE * 0.4 <= took < PATIENCE * 0.4 + 0.6, took
        assert _dead(server)


def test_a_device_whose_answers_to_a_late_request_were_lost_is_not_taken_for_dead(server):
    """On a lossy path the first copy the relay sees may be the sender's fourth, the next ones T2 (0.4 s) apart:
    bob's answers to the first two copies are lost (he sends none), the deadline passes with nothing heard, and
    he answers the third. A stateful relay would have sent him four copies by then: he is alive, alice gets 200."""
    addr = (server.host, server.port)
    with RawPeer() as alice, RawPeer() as bob:
        bob.register(addr, "bob")
        data, _ = message(alice, "bob", "late")
        for _ in range(2):
            alice.send(data, addr)
            next_request(bob)
            time.sleep(0.4)
        alice.send(data, addr)
        got = next_request(bob)
        assert not _dead(server), "two copies unanswered over 0.8 s: not yet judged"
        answer(bob, got, 200, server)
        assert alice.final().startswith(b"SIP/2.0 200")
        wait_for(lambda: server.proxy.stateless.pending == 0, 1, "the deadline dropped")
        assert not _dead(server) and not server.offline


def _dead(server: nim.Server) -> bool:
    return runtime().run_sync(lambda: all(b.dead for b in server.registrar.lookup("sip:bob@example.test", 0)))


def test_a_device_that_answers_late_but_was_heard_from_stays_alive(server):
    addr = (server.host, server.port)
    with RawPeer() as alice, RawPeer() as bob:
        bob.register(addr, "bob")
        data, _ = message(alice, "bob")
        alice.send(data, addr)
        got = next_request(bob)
        answer(bob, got, 100, server)  # a provisional answer: alive
        time.sleep(0.8)
        assert not _dead(server)
        answer(bob, got, 200, server)
        assert alice.final().startswith(b"SIP/2.0 200")


@pytest.mark.parametrize(
    "why",
    ["stateless=False", "two devices", "users=", "Max-Forwards: 0", "INVITE"],
)
def test_what_the_stateful_path_still_does(why):
    kw: dict = {"timers": FAST}
    if why == "stateless=False":
        kw["stateless"] = False
    if why == "users=":
        kw["users"] = {"alice": "a", "bob": "b"}
    with nim.Server(**kw) as server, RawPeer() as alice, RawPeer() as bob, RawPeer() as bob2:
        addr = (server.host, server.port)
        bob.register(addr, "bob", password="b")
        if why == "two devices":
            bob2.register(addr, "bob")
        if why == "users=":
            data, _ = message(alice, "bob")
            alice.send(data, addr)
            assert alice.final().startswith(b"SIP/2.0 407"), "challenged, as before"
            assert server.stats["stateless_relayed"] == 0
            return
        extra = ["Max-Forwards: 0"] if why == "Max-Forwards: 0" else []
        if why == "INVITE":
            data, _ = alice.request(
                "INVITE", "sip:bob@example.test", from_="sip:alice@example.test", to="sip:bob@example.test"
            )
        else:
            data, _ = message(alice, "bob")
        if extra:
            data = data.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 0\r\n")
        alice.send(data, addr)
        if why == "Max-Forwards: 0":
            assert alice.final().startswith(b"SIP/2.0 483")
        else:
            got = next_request(bob)
            assert not got.top_via.branch.startswith(MARK), "relayed with a client transaction's branch"
            answer(bob, got, 486 if why == "INVITE" else 200, server)
            if why == "two devices":
                answer(bob2, next_request(bob2), 200, server)
            assert alice.final() is not None
        assert server.stats["stateless_relayed"] == 0


def test_an_in_dialog_request_to_a_registered_contact_goes_stateless(server):
    addr = (server.host, server.port)
    with RawPeer() as alice, RawPeer() as bob:
        bob.register(addr, "bob")
        data, _ = alice.request(
            "MESSAGE",
            f"sip:bob@{bob.hostport}",
            from_="sip:alice@example.test",
            to="sip:bob@example.test",
            to_tag="dlg",
            extra=[f"Route: <sip:{server.host}:{server.port};lr>"],
            body=b"in dialog",
            content_type="text/plain",
        )
        alice.send(data, addr)
        got = next_request(bob)
        assert got.top_via.branch.startswith(MARK) and "route" not in got.headers, "our Route popped"
        answer(bob, got, 200, server)
        assert alice.final().startswith(b"SIP/2.0 200")
        # one to an address nobody registered: the stateful path refuses it, as before
        data, _ = alice.request(
            "MESSAGE", "sip:x@127.0.0.1:9", from_="sip:alice@example.test", to="sip:x@example.test", to_tag="dlg"
        )
        assert alice.exchange(data, addr).startswith(b"SIP/2.0 404")
