"""Several devices per user on the embedded server (RFC 3261 §16.7 parallel forking), over real loopback
sockets: bob is signed in twice (one device over UDP, one over TCP, each its own Platform as two machines
would be). A pager message reaches both; an INVITE rings both, the first to accept wins and the other
stops ringing with "answered elsewhere"; the chat then flows only to the device that answered."""

from __future__ import annotations

import socket
import time

import pytest

import notebook_im as nim
from tests.helpers import wait_for
from tests.server.raw_device import RawDevice

BOB = "sip:bob@example.test"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def devices(server, platform):
    """alice (UDP), bob#1 (UDP) and bob#2 (TCP), each bob on its own Platform."""
    p1, p2 = nim.Platform("bob-laptop"), nim.Platform("bob-phone")
    try:
        alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
        bob1 = p1.endpoint(BOB, server=server, transport="udp").result(10)
        bob2 = p2.endpoint(BOB, server=server, transport="tcp").result(10)
        yield alice, bob1, bob2
    finally:
        p1.shutdown()
        p2.shutdown()


def ringing(endpoint: nim.Endpoint) -> list[nim.IncomingSession]:
    calls: list[nim.IncomingSession] = []
    endpoint.sessions.on_incoming(calls.append)
    return calls


def sip_rows(endpoint: nim.Endpoint, method: str):
    df = endpoint.platform.trace.sip(owner=endpoint.uri)
    return df[(df["method"] == method) & df["status"].isna() & (df["direction"] == "in")]


def test_both_devices_registered(server, devices):
    _, bob1, bob2 = devices
    assert sorted(server.registrations[BOB]) == sorted([bob1.contact, bob2.contact])


def test_pager_message_reaches_both_devices_once(devices):
    alice, bob1, bob2 = devices
    got1, got2 = bob1.events(nim.MessageReceived), bob2.events(nim.MessageReceived)
    delivered = alice.send_message(BOB, "to all your devices").result(10)
    assert delivered.status == 200 and not delivered.stored
    for got in (got1, got2):
        e = got.get(timeout=5)
        assert e.text == "to all your devices" and e.participant.uri == alice.uri and e.mode == "pager"
    wait_for(lambda: len(sip_rows(bob1, "MESSAGE")) == 1 and len(sip_rows(bob2, "MESSAGE")) == 1, 2, "one copy each")
    assert got1.drain() == [] and got2.drain() == []


def test_invite_rings_both_first_accept_wins_other_sees_answered_elsewhere(server, devices):
    alice, bob1, bob2 = devices
    calls1, calls2 = ringing(bob1), ringing(bob2)
    ended1 = bob1.events(nim.SessionTerminated)
    op = alice.sessions.create(BOB)
    wait_for(lambda: calls1 and calls2, 5, "both devices ring")
    assert calls1[0].session.invitation is calls1[0]
    bob2_session = calls2[0].accept().result(10)
    session = op.result(10)
    assert session.state is nim.SessionState.CONNECTED and bob2_session.state is nim.SessionState.CONNECTED

    lost = ended1.get(timeout=5)
    assert lost.session is calls1[0].session
    assert lost.reason == "answered elsewhere" and lost.answered_elsewhere and lost.by_remote and lost.status == 487
    assert lost.session.state is nim.SessionState.DISCONNECTED and lost.session.invitation is None
    assert bob1.sessions.sessions == [], "nothing left ringing on the laptop"
    cancel = sip_rows(bob1, "CANCEL")
    assert len(cancel) == 1 and 'Reason: SIP;cause=200;text="Call completed elsewhere"' in cancel["raw"].iloc[0]

    # the chat flows only to the device that answered (the dialog is record-routed through the server)
    got2 = bob2.events(nim.MessageReceived)
    for text in ("one", "two"):
        assert session.send(text).result(5).status == 200
    assert [got2.get(timeout=5).text for _ in range(2)] == ["one", "two"]
    got_alice = alice.events(nim.MessageReceived)
    bob2_session.send("from the phone").result(5)
    assert got_alice.get(timeout=5).text == "from the phone"
    assert len(sip_rows(bob1, "MESSAGE")) == 0, "nothing of the chat reached the laptop"
    session.terminate().result(5)
    wait_for(lambda: bob2_session.state is nim.SessionState.DISCONNECTED, 5, "BYE reached the phone")
    assert len(sip_rows(bob1, "BYE")) == 0
    with pytest.raises(nim.InvalidState, match="already answered or ended"):
        calls1[0].accept().result(5)


def test_both_accept_at_once_one_wins_the_other_is_ended(devices):
    alice, bob1, bob2 = devices
    ended: list[tuple[int, nim.SessionTerminated]] = []
    for i, bob in enumerate((bob1, bob2)):
        bob.sessions.on_incoming(lambda inc: inc.accept())
        bob.on(nim.SessionTerminated, lambda e, i=i: ended.append((i, e)))
    session = alice.sessions.create(BOB).result(10)
    assert session.state is nim.SessionState.CONNECTED
    wait_for(lambda: ended, 5, "one device told it lost")
    time.sleep(0.2)
    assert len(ended) == 1, ended
    i, ev = ended[0]
    assert ev.answered_elsewhere and ev.reason == "answered elsewhere"
    winner, loser = (bob1, bob2)[1 - i], (bob1, bob2)[i]
    got = winner.events(nim.MessageReceived)
    session.send("to the winner").result(5)
    assert got.get(timeout=5).text == "to the winner"
    assert [s.state for s in winner.sessions.sessions] == [nim.SessionState.CONNECTED]
    assert loser.sessions.sessions == []
    session.terminate().result(5)


def test_every_device_declines_best_response_wins(devices):
    alice, bob1, bob2 = devices
    bob1.sessions.on_incoming(lambda inc: inc.reject(486))
    bob2.sessions.on_incoming(lambda inc: inc.reject(603, "Decline"))
    with pytest.raises(nim.RequestFailed) as info:
        alice.sessions.create(BOB).result(10)
    assert info.value.status == 603, "a 6xx beats a 4xx (RFC 3261 §16.7.6)"


def test_caller_cancels_both_devices_stop_ringing_as_cancelled(devices):
    alice, bob1, bob2 = devices
    calls1, calls2 = ringing(bob1), ringing(bob2)
    ended = [bob1.events(nim.SessionTerminated), bob2.events(nim.SessionTerminated)]
    terminated = alice.events(nim.SessionTerminated)
    op = alice.sessions.create(BOB)
    wait_for(lambda: calls1 and calls2, 5, "both devices ring")
    alice.sessions.sessions[0].terminate().result(5)
    with pytest.raises(nim.RequestFailed) as info:
        op.result(10)
    assert info.value.status == 487 and terminated.get(timeout=5).status == 487
    for e in ended:
        ev = e.get(timeout=5)
        assert ev.reason == "cancelled by the caller" and not ev.answered_elsewhere


@pytest.mark.slow
def test_a_device_that_ignores_cancel_does_not_hold_the_caller(platform):
    """bob#2 rings and then never answers the CANCEL: its branch ends with a 408 after 64*T1 (the INVITE
    transaction's Timer B) and alice gets her 487, the best answer (without that she would wait for ever)."""
    with nim.Server(timers=nim.Timers(t1=0.02, t2=0.16, t4=0.2)) as server, nim.Platform("devices") as p:
        alice = p.endpoint("sip:alice@example.test", server=server).result(10)
        bob1 = p.endpoint(BOB, server=server).result(10)
        calls1 = ringing(bob1)
        with RawDevice(server, BOB) as bob2:
            bob2.register()
            wait_for(lambda: len(server.registrations.get(BOB, [])) == 2, 5, "two devices")
            op = alice.sessions.create(BOB)
            seen = bob2.serve(lambda r: [180] if r.method == "INVITE" else [], 3.0, until=lambda s: bool(s))
            assert [r.method for r in seen] == ["INVITE"]
            wait_for(lambda: calls1, 5, "bob#1 rings")
            started = time.monotonic()
            alice.sessions.sessions[0].terminate().result(5)
            cancels = bob2.serve(lambda r: [], 3.0, until=lambda s: any(r.method == "CANCEL" for r in s))
            assert any(r.method == "CANCEL" for r in cancels) and not any(r.headers.get("Reason") for r in cancels)
            with pytest.raises(nim.RequestFailed) as info:
                op.result(10)
            assert info.value.status == 487
            assert time.monotonic() - started < 64 * 0.02 + 2.0
            assert calls1[0].session.terminate_reason == "cancelled by the caller"


def test_upstream_cancel_reason_is_passed_to_every_device(server, devices):
    """An upstream forking proxy (here a hand-written caller) cancels with `Reason: SIP;cause=200`: the server
    passes the Reason on (RFC 3326), so both of bob's devices end "answered elsewhere", not "cancelled"."""
    _, bob1, bob2 = devices
    calls1, calls2 = ringing(bob1), ringing(bob2)
    ended = [bob1.events(nim.SessionTerminated), bob2.events(nim.SessionTerminated)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        head = (
            f"sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKupstream1;rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:carol@example.test>;tag=c1\r\nTo: <{BOB}>\r\nCall-ID: up-1\r\n"
        )
        s.sendto(
            f"INVITE {head}CSeq: 1 INVITE\r\nContact: <sip:carol@127.0.0.1:{port}>\r\n"
            "Content-Length: 0\r\n\r\n".encode(),
            (server.host, server.port),
        )
        wait_for(lambda: calls1 and calls2, 5, "both devices ring")
        s.sendto(
            f'CANCEL {head}CSeq: 1 CANCEL\r\nReason: SIP;cause=200;text="Call completed elsewhere"\r\n'
            "Content-Length: 0\r\n\r\n".encode(),
            (server.host, server.port),
        )
        for e in ended:
            ev = e.get(timeout=5)
            assert ev.answered_elsewhere and ev.reason == "answered elsewhere"
