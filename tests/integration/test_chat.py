"""Two endpoints chat through the embedded server: the README's example, over UDP and TCP."""

from __future__ import annotations

import pytest

import notebook_im as nim
from tests.helpers import accept_all, wait_for


def test_registration_shows_on_server(server, pair):
    alice, bob = pair
    regs = server.registrations
    assert regs["sip:alice@example.test"] == [alice.contact]
    assert regs["sip:bob@example.test"] == [bob.contact]
    assert alice.state is nim.EndpointState.ENABLED


def test_session_mode_chat_with_composing(pair, transport):
    alice, bob = pair
    bob_sessions = accept_all(bob)
    bob_events = bob.events(nim.MessageReceived, nim.ComposingChanged)
    session = alice.sessions.create("sip:bob@example.test").result(10)
    assert session.state is nim.SessionState.CONNECTED
    assert [p.uri for p in session.participants] == ["sip:bob@example.test"]
    assert session.local_participant.uri == "sip:alice@example.test"
    wait_for(lambda: bob_sessions and bob_sessions[0].state is nim.SessionState.CONNECTED, what="bob connected")

    session.start_composing().result(5)
    ev = bob_events.get(timeout=5)
    assert isinstance(ev, nim.ComposingChanged) and ev.composing and ev.participant.uri == "sip:alice@example.test"

    delivered = session.send("hello Bob\nsecond line").result(5)
    assert isinstance(delivered, nim.MessageDelivered) and delivered.status == 200 and delivered.latency > 0
    ev = bob_events.get(timeout=5)
    assert isinstance(ev, nim.ComposingChanged) and not ev.composing, "a message ends composing at the receiver"
    ev = bob_events.get(timeout=5)
    assert isinstance(ev, nim.MessageReceived)
    assert ev.text == "hello Bob\nsecond line" and ev.content_type == "text/plain" and ev.mode == "session"
    assert ev.session is bob_sessions[0] and ev.participant.uri == "sip:alice@example.test"

    reply = bob_sessions[0].send("<b>hi</b>", content_type="text/html").result(5)
    assert reply.status == 200
    assert [m.text for m in session.messages] == ["hello Bob\nsecond line", "<b>hi</b>"]
    assert [m.status for m in session.messages] == ["delivered", "received"]
    assert session.messages[1].content_type == "text/html"


def test_messages_arrive_in_order_exactly_once(pair):
    alice, bob = pair
    bob_sessions = accept_all(bob)
    session = alice.sessions.create("sip:bob@example.test").result(10)
    ops = [session.send(f"msg {i}") for i in range(100)]  # queued at once: sent one at a time, in order
    for op in ops:
        assert op.result(10).status == 200
    wait_for(lambda: len(bob_sessions[0].messages) == 100, what="100 messages at bob")
    assert [m.text for m in bob_sessions[0].messages] == [f"msg {i}" for i in range(100)]


def test_pager_mode(pair):
    alice, bob = pair
    received = bob.events(nim.MessageReceived)
    delivered = alice.send_message("sip:bob@example.test", "pager mode").result(5)
    assert delivered.mode == "pager" and delivered.status == 200 and delivered.session is None
    ev = received.get(timeout=5)
    assert (ev.text, ev.mode, ev.session, ev.participant.uri) == ("pager mode", "pager", None, "sip:alice@example.test")


def test_terminate_sends_bye_and_both_sides_end(pair):
    alice, bob = pair
    bob_sessions = accept_all(bob)
    terminated = bob.events(nim.SessionTerminated)
    session = alice.sessions.create("sip:bob@example.test").result(10)
    wait_for(lambda: bob_sessions and bob_sessions[0].state is nim.SessionState.CONNECTED)
    session.terminate().result(5)
    assert session.state is nim.SessionState.DISCONNECTED
    ev = terminated.get(timeout=5)
    assert ev.by_remote and ev.session is bob_sessions[0]
    assert bob.sessions.sessions == [] and alice.sessions.sessions == []
    with pytest.raises(nim.InvalidState, match="disconnected"):
        session.send("too late").result(5)


def test_mixed_transports(server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=server, transport="udp").result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server, transport="tcp").result(10)
    bob_sessions = accept_all(bob)
    session = alice.sessions.create("sip:bob@example.test").result(10)
    assert session.send("udp to tcp").result(5).status == 200
    wait_for(lambda: bob_sessions and bob_sessions[0].messages)
    assert bob_sessions[0].send("tcp to udp").result(5).status == 200
    session.terminate().result(5)
    wait_for(lambda: bob_sessions[0].state is nim.SessionState.DISCONNECTED)


def test_unknown_user_404_and_offline_user_480(server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    with pytest.raises(nim.RequestFailed) as info:
        alice.sessions.create("sip:nobody@example.test").result(10)
    assert info.value.status == 404
    carol = platform.endpoint("sip:carol@example.test", server=server).result(10)
    carol.disable().result(10)
    assert "sip:carol@example.test" not in server.registrations
    with pytest.raises(nim.RequestFailed) as info:
        alice.sessions.create("sip:carol@example.test").result(10)
    assert info.value.status == 480
    # a pager-mode message is kept for her instead (tests/server/test_offline_delivery.py)
    kept = alice.send_message("sip:carol@example.test", "are you there?").result(10)
    assert kept.status == 202 and kept.stored


def test_reject_invitation(pair):
    alice, bob = pair
    bob.sessions.on_incoming(lambda inc: inc.reject(486))
    terminated = alice.events(nim.SessionTerminated)
    with pytest.raises(nim.RequestFailed) as info:
        alice.sessions.create("sip:bob@example.test").result(10)
    assert info.value.status == 486
    assert terminated.get(timeout=5).status == 486


def test_cancel_while_ringing(pair):
    alice, bob = pair
    invitations = bob.events(nim.IncomingSession)
    bob_terminated = bob.events(nim.SessionTerminated)
    op = alice.sessions.create("sip:bob@example.test")
    incoming = invitations.get(timeout=5)
    assert incoming.inviter.uri == "sip:alice@example.test"
    assert incoming.session.state is nim.SessionState.CONNECTING
    session = alice.sessions.sessions[0]
    session.terminate().result(5)
    with pytest.raises(nim.RequestFailed) as info:
        op.result(10)
    assert info.value.status == 487
    assert "cancelled" in bob_terminated.get(timeout=5).reason
    with pytest.raises(nim.InvalidState):
        incoming.accept().result(5)


def test_peer_to_peer_refuses_third_party(pair):
    alice, bob = pair
    accept_all(bob)
    session = alice.sessions.create("sip:bob@example.test").result(10)
    with pytest.raises(nim.ConferenceRequired, match="conference"):
        session.add_participant("sip:carol@example.test")


def test_participant_and_session_state_events(pair):
    alice, bob = pair
    accept_all(bob)
    states = alice.events(nim.ParticipantStateChanged)
    added = alice.events(nim.ParticipantAdded)
    session = alice.sessions.create("sip:bob@example.test").result(10)
    session.terminate().result(5)
    assert added.get(timeout=5).participant.uri == "sip:bob@example.test"
    seen = [e.state for e in states.drain()]
    assert seen == [
        nim.ParticipantState.CONNECTING,
        nim.ParticipantState.CONNECTED,
        nim.ParticipantState.DISCONNECTING,
        nim.ParticipantState.DISCONNECTED,
    ]


def test_trace_records_every_message_and_event(pair):
    alice, bob = pair
    accept_all(bob)
    session = alice.sessions.create("sip:bob@example.test").result(10)
    session.send("traced").result(5)
    session.terminate().result(5)
    trace = alice.platform.trace
    records = trace.sip_records()
    alice_out = [r.raw.split(b" ", 1)[0] for r in records if r.owner == alice.uri and r.direction == "out"]
    for method in (b"REGISTER", b"INVITE", b"ACK", b"MESSAGE", b"BYE"):
        assert method in alice_out
    assert any(b"traced" in r.raw for r in records if r.owner == bob.uri and r.direction == "in")
    kinds = {type(e.event).__name__ for e in trace.events_list}
    assert {
        "EndpointStateChanged",
        "IncomingSession",
        "MessageReceived",
        "MessageDelivered",
        "SessionTerminated",
    } <= kinds


def test_sending_event_invitation_and_callee_display_name(pair):
    alice, bob = pair
    invitations = bob.events(nim.IncomingSession)
    sending = alice.events(nim.MessageSending)
    op = alice.sessions.create("sip:bob@example.test")
    incoming = invitations.get(timeout=5)
    assert incoming.session.invitation is incoming, "a ringing session exposes its invitation"
    incoming.accept().result(5)
    assert incoming.session.invitation is None
    session = op.result(5)
    assert session.remote.display_name == "Bob", "the callee named itself in its 200 OK Contact"
    delivered = session.send("hi").result(5)
    ev = sending.get(timeout=5)
    assert ev.message_id == delivered.message_id and ev.text == "hi" and ev.session is session
