"""Pager-mode sessions: a callee that does not take IM sessions (it answers the INVITE 488, as liblinphone and
baresip do) still gets the conversation, as out-of-dialog MESSAGEs with composing and receipts, tied to an
ImSession both sides can chat in; `mode=` chooses; a refusal of the person is not taken for a refused offer."""

from __future__ import annotations

import pytest

import notebook_im as nim
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(60)


def refuse_sessions(endpoint: nim.Endpoint, status: int = 488) -> list[nim.IncomingSession]:
    """Answer every invitation `status` (488 Not Acceptable Here, linphone's answer); the invitations seen."""
    seen: list[nim.IncomingSession] = []

    def on_incoming(incoming: nim.IncomingSession) -> None:
        seen.append(incoming)
        incoming.reject(status)

    endpoint.sessions.on_incoming(on_incoming)
    return seen


def wire(platform: nim.Platform, owner: str, method: str) -> list[str]:
    """The raw requests `owner` sent with `method`, in order."""
    sip = platform.trace.sip(owner=owner)
    return list(sip[(sip["direction"] == "out") & (sip["method"] == method) & sip["status"].isna()]["raw"])


def test_a_488_turns_the_session_into_a_pager_conversation(server: nim.Server, platform: nim.Platform) -> None:
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server, transport="tcp").result(10)
    invitations = refuse_sessions(bob)
    modes = alice.events(nim.SessionModeChanged)
    a_events = alice.events(
        nim.MessageReceived, nim.ComposingChanged, nim.MessageDeliveryNotified, nim.MessageDisplayed
    )
    b_events = bob.events(nim.MessageReceived, nim.ComposingChanged)

    session = alice.sessions.create(bob.uri).result(10)
    assert (session.state, session.mode, session.dialog) == (nim.SessionState.CONNECTED, "pager", None)
    changed = modes.get(5)
    assert (changed.session, changed.mode, changed.status) == (session, "pager", 488)
    assert "488" in changed.reason and "does not take IM sessions" in changed.reason
    assert len(invitations) == 1 and alice.sessions.pager_session("sip:bob@example.test") is session
    with pytest.raises(nim.InvalidState, match="pager mode"):
        session.escalate(["sip:carol@example.test"])

    # alice types and sends: bob, who has no session, sees pager-mode composing and text
    session.start_composing().result(5)
    typing = b_events.get(5)
    assert isinstance(typing, nim.ComposingChanged) and typing.composing and typing.session is None
    sent = session.send("hello in pager mode").result(10)
    assert (sent.mode, sent.session, sent.status) == ("pager", session, 200)
    stopped, got = b_events.get(5), b_events.get(5)
    assert isinstance(stopped, nim.ComposingChanged) and not stopped.composing
    assert (got.text, got.mode, got.session, got.message_id) == ("hello in pager mode", "pager", None, sent.message_id)
    delivered = a_events.get(5)
    assert isinstance(delivered, nim.MessageDeliveryNotified) and delivered.session is session
    assert session.messages[-1].state == "delivered"

    # bob answers in a pager-mode session of his own (no INVITE): alice's session gets it, not the endpoint
    reply_to = bob.sessions.create(alice.uri, mode="pager").result(10)
    assert reply_to.mode == "pager" and len(wire(platform, bob.uri, "INVITE")) == 0
    reply_to.start_composing().result(5)
    composing = a_events.get(5)
    assert isinstance(composing, nim.ComposingChanged) and composing.session is session and composing.composing
    answer = reply_to.send("and back").result(10)
    stop, text = a_events.get(5), a_events.get(5)
    assert isinstance(stop, nim.ComposingChanged) and not stop.composing
    assert (text.session, text.text, text.mode, text.message_id) == (session, "and back", "pager", answer.message_id)
    assert [m.text for m in session.messages] == ["hello in pager mode", "and back"]
    assert alice.pager_messages == type(alice.pager_messages)(maxlen=alice.pager_messages.maxlen)

    # read receipts both ways, out of dialog
    assert session.mark_read().result(5) == 1
    wait_for(lambda: reply_to.messages[-1].state == "displayed", 5, "bob's message displayed")
    assert bob.mark_read().result(5) == 1  # bob read alice's first message as a plain pager message
    shown = a_events.get(5)
    assert isinstance(shown, nim.MessageDisplayed) and shown.session is session and shown.message_id == sent.message_id

    # history: the conversation's rows, and its out-of-dialog MESSAGEs (texts, composing, receipts) as its SIP
    history = session.history()
    assert list(history["text"]) == ["hello in pager mode", "and back"] and set(history["mode"]) == {"pager"}
    sip = session.history("sip")
    assert set(sip["method"]) == {"MESSAGE"} and len(sip) >= 10, sip[["direction", "method", "status"]]
    raws = "\n".join(sip["raw"])
    for needle in ("hello in pager mode", "and back", "<delivered/>", "<displayed/>", "<state>active</state>"):
        assert needle in raws, needle
    assert "INVITE" not in set(sip["method"])

    # ending sends nothing: there is no dialog
    session.terminate().result(5)
    assert session.state is nim.SessionState.DISCONNECTED and alice.sessions.pager_session(bob.uri) is None
    assert wire(platform, alice.uri, "BYE") == [] and wire(platform, alice.uri, "CANCEL") == []
    assert all("Call-ID" in r for r in wire(platform, alice.uri, "MESSAGE"))
    frame = platform.trace.events(owner=alice.uri)
    assert list(frame[frame["type"] == "SessionModeChanged"]["state"]) == ["pager"]


def test_mode_session_keeps_the_refusal_and_bad_modes_are_refused(server: nim.Server, platform: nim.Platform) -> None:
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    refuse_sessions(bob)
    with pytest.raises(nim.RequestFailed) as info:
        alice.sessions.create(bob.uri, mode="session").result(10)
    assert info.value.status == 488
    for wrong in ("Pager", "", None):
        with pytest.raises(ValueError, match="'auto', 'session', 'pager'"):
            alice.sessions.create(bob.uri, mode=wrong)  # type: ignore[arg-type]
    assert alice.sessions.sessions == []


@pytest.mark.parametrize("status", [486, 603, 480])
def test_a_refused_person_is_not_chatted_at(server: nim.Server, platform: nim.Platform, status: int) -> None:
    """Busy, declined or away means no: pager mode would talk past the refusal."""
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    refuse_sessions(bob, status)
    with pytest.raises(nim.RequestFailed) as info:
        alice.sessions.create(bob.uri).result(10)
    assert info.value.status == status and wire(platform, alice.uri, "MESSAGE") == []


def test_a_pager_conversation_with_someone_offline_keeps_going(server: nim.Server, platform: nim.Platform) -> None:
    """A message the server keeps (202, bob is offline) or refuses (404) waits or fails alone; the conversation
    stays connected, and the kept message reaches bob when he registers again."""
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    session = alice.sessions.create(bob.uri, mode="pager").result(10)
    bob.disable().result(10)
    kept = session.send("while you were out").result(10)
    assert kept.stored and kept.status == 202
    nobody = alice.sessions.create("sip:nobody@example.test", mode="pager").result(10)
    with pytest.raises(nim.RequestFailed) as info:
        nobody.send("hello?").result(10)
    assert info.value.status == 404 and nobody.messages[-1].state == "failed"
    assert session.state is nobody.state is nim.SessionState.CONNECTED
    back = platform.endpoint("sip:bob@example.test", server=server).result(10)
    wait_for(lambda: back.pager_messages, 10, "the kept message delivered on register")
    assert back.pager_messages[0].text == "while you were out"


def test_texts_from_strangers_open_bounded_pager_sessions(platform: nim.Platform) -> None:
    """With endpoint.pager_sessions on, each new party's text opens an incoming pager-mode session (connected,
    no invitation); receipts and composing open none; past max_pager_sessions texts stay plain pager messages."""
    from tests.security.raw import RawPeer

    bob = platform.endpoint("sip:bob@example.test").result(10)
    bob.pager_sessions = True
    bob.sessions.max_pager_sessions = 3
    got = bob.events(nim.MessageReceived)
    host, port = bob.agent.local_addr
    with RawPeer() as peer:
        composing = (
            b'<?xml version="1.0"?><isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing">'
            b"<state>active</state></isComposing>"
        )
        req, _ = peer.request(
            "MESSAGE",
            f"sip:bob@{host}:{port}",
            from_="sip:typist@example.test",
            to=bob.uri,
            body=composing,
            content_type="application/im-iscomposing+xml",
        )
        assert peer.exchange(req, (host, port)).startswith(b"SIP/2.0 200")
        assert bob.sessions.sessions == [], "composing alone opens no conversation"
        for i in range(5):
            req, _ = peer.request(
                "MESSAGE",
                f"sip:bob@{host}:{port}",
                from_=f"sip:stranger{i}@example.test",
                to=bob.uri,
                body=f"hello {i}".encode(),
                content_type="text/plain",
            )
            assert peer.exchange(req, (host, port)).startswith(b"SIP/2.0 200")
        # the first stranger again: into the session that exists
        req, _ = peer.request(
            "MESSAGE",
            f"sip:bob@{host}:{port}",
            from_="sip:stranger0@example.test",
            to=bob.uri,
            body=b"me again",
            content_type="text/plain",
        )
        assert peer.exchange(req, (host, port)).startswith(b"SIP/2.0 200")
    events = [got.get(5) for _ in range(6)]
    sessions = bob.sessions.sessions
    assert [s.remote.uri for s in sessions] == [f"sip:stranger{i}@example.test" for i in range(3)]
    assert all(s.mode == "pager" and s.is_incoming and s.state is nim.SessionState.CONNECTED for s in sessions)
    assert [e.session for e in events] == [sessions[0], sessions[1], sessions[2], None, None, sessions[0]]
    assert [m.text for m in sessions[0].messages] == ["hello 0", "me again"]
    assert [e.text for e in bob.pager_messages] == ["hello 3", "hello 4"]
