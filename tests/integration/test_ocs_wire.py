"""An OCS/Lync-style client's IM shapes reach a notebook_im endpoint over a real socket, written by hand as SIPE
writes them: the first message in the INVITE's `ms-text-format` header, `Ms-Conversation-ID`, typing as INFO with
a KeyboardActivity document. And what goes wrong with each goes wrong cleanly: the INVITE is still answered, a
bad first message is dropped and counted, a hostile XML body is refused with a status, other INFOs get 200."""

from __future__ import annotations

import base64
import time

import pytest

import notebook_im as nim
from notebook_im.im import ocs
from tests.helpers import wait_for
from tests.security.raw import RawPeer, header, token

TYPE = b'<?xml version="1.0"?><KeyboardActivity> <status status="type" /></KeyboardActivity>'
IDLE = b'<?xml version="1.0"?><KeyboardActivity> <status status="idle" /></KeyboardActivity>'


def sdp(peer: RawPeer) -> bytes:
    return (
        f"v=0\r\no=- 0 0 IN IP4 {peer.host}\r\ns=session\r\nc=IN IP4 {peer.host}\r\nt=0 0\r\n"
        f"m=message {peer.port} sip null\r\na=accept-types:text/plain text/html application/im-iscomposing+xml\r\n"
    ).encode()


class OcsCaller:
    """One dialog from a raw socket: INVITE (with whatever OCS headers a test gives), ACK, in-dialog requests."""

    def __init__(self, peer: RawPeer, callee: nim.Endpoint) -> None:
        self.peer, self.addr = peer, callee.local_address
        self.ruri = f"sip:{callee.uri.split(':', 1)[1].split('@')[0]}@{self.addr[0]}:{self.addr[1]}"
        self.me = f"sip:sipe@{peer.hostport}"
        self.call_id, self.from_tag, self.to_tag, self.cseq = f"{token()}@ocs", token(), "", 1

    def invite(self, headers: list[str]) -> bytes:
        data, _ = self.peer.request(
            "INVITE",
            self.ruri,
            from_=self.me,
            to=self.ruri,
            call_id=self.call_id,
            from_tag=self.from_tag,
            contact=self.me,
            body=sdp(self.peer),
            content_type="application/sdp",
            extra=["Supported: ms-sender", *headers],
        )
        response = self.peer.exchange(data, self.addr, timeout=5)
        assert response is not None, "no final answer to the INVITE"
        self.to_tag = (header(response, "To") or "").rpartition("tag=")[2]
        return response

    def ack(self) -> None:
        data, _ = self.peer.request(
            "ACK", self.ruri, from_=self.me, to=self.ruri, call_id=self.call_id, from_tag=self.from_tag,
            to_tag=self.to_tag, cseq=1,
        )  # fmt: skip
        self.peer.send(data, self.addr)

    def request(self, method: str, body: bytes = b"", content_type: str | None = None) -> bytes:
        self.cseq += 1
        data, _ = self.peer.request(
            method, self.ruri, from_=self.me, to=self.ruri, call_id=self.call_id, from_tag=self.from_tag,
            to_tag=self.to_tag, cseq=self.cseq, body=body, content_type=content_type,
        )  # fmt: skip
        response = self.peer.exchange(data, self.addr, timeout=5)
        assert response is not None, f"no answer to {method}"
        return response


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


@pytest.fixture
def bob(platform: nim.Platform) -> nim.Endpoint:
    return platform.endpoint("sip:bob@127.0.0.1", server=None).result(10)


def kinds(events: list) -> list[tuple]:
    return [(type(e).__name__, getattr(e, "composing", getattr(e, "text", None))) for e in events]


def test_an_ocs_conversation_first_message_typing_message_bye(bob: nim.Endpoint, platform: nim.Platform):
    incoming: list[nim.IncomingSession] = []
    bob.sessions.on_incoming(lambda e: (incoming.append(e), e.accept()))
    stream = bob.events(nim.MessageReceived, nim.ComposingChanged)
    with RawPeer() as peer:
        caller = OcsCaller(peer, bob)
        ok = caller.invite([f"ms-text-format: text/plain; charset=UTF-8;ms-body={b64('Hi Bob ✓')}",
                            "Ms-Conversation-ID: 718273645"])  # fmt: skip
        assert ok.startswith(b"SIP/2.0 200"), ok
        assert header(ok, "Supported") == "ms-text-format"  # "I took the first message": not sent again
        assert "INFO" in (header(ok, "Allow") or "")
        caller.ack()
        first = stream.get(timeout=5)
        assert (first.text, first.content_type, first.mode) == ("Hi Bob ✓", "text/plain", "session")
        assert first.session is incoming[0].session and first.call_id == caller.call_id
        assert incoming[0].conversation_id == "718273645" == incoming[0].session.conversation_id

        assert caller.request("INFO", TYPE, "application/xml").startswith(b"SIP/2.0 200")
        assert kinds([stream.get(timeout=5)]) == [("ComposingChanged", True)]
        assert caller.request("MESSAGE", b"second line", "text/plain;charset=UTF-8").startswith(b"SIP/2.0 200")
        assert kinds([stream.get(timeout=5), stream.get(timeout=5)]) == [
            ("ComposingChanged", False),  # the message itself ends typing, as in RFC 3994
            ("MessageReceived", "second line"),
        ]
        assert caller.request("INFO", TYPE, "application/xml").startswith(b"SIP/2.0 200")
        assert caller.request("INFO", IDLE, "application/xml").startswith(b"SIP/2.0 200")
        assert kinds([stream.get(timeout=5), stream.get(timeout=5)]) == [
            ("ComposingChanged", True),
            ("ComposingChanged", False),
        ]
        assert caller.request("BYE").startswith(b"SIP/2.0 200")
    session = incoming[0].session
    assert [m.text for m in session.messages] == ["Hi Bob ✓", "second line"]
    assert bob.stats["first_messages_dropped"] == 0
    sip = platform.trace.sip(owner=bob.uri)
    invite = sip[(sip.method == "INVITE") & sip.status.isna()].raw.iloc[0]
    assert "Ms-Conversation-ID: 718273645" in invite and "ms-text-format: text/plain" in invite
    events = platform.trace.events(owner=bob.uri)
    assert "IncomingSession" in set(events["type"])


@pytest.mark.slow
def test_typing_expires_after_the_keyboard_window_without_another_type(bob: nim.Endpoint, monkeypatch):
    monkeypatch.setattr(ocs, "KEYBOARD_ACTIVITY_WINDOW", 1)  # 6 s in real life; the test waits 1
    bob.sessions.on_incoming(lambda e: e.accept())
    stream = bob.events(nim.ComposingChanged)
    with RawPeer() as peer:
        caller = OcsCaller(peer, bob)
        assert caller.invite([]).startswith(b"SIP/2.0 200")
        caller.ack()
        started = time.monotonic()
        assert caller.request("INFO", TYPE, "application/xml").startswith(b"SIP/2.0 200")
        assert stream.get(timeout=5).composing is True
        assert stream.get(timeout=5).composing is False
        assert 0.8 <= time.monotonic() - started < 4
        caller.request("BYE")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("text/plain; charset=UTF-8;ms-body=SGk", "not valid base64"),
        ("text/plain; charset=UTF-8;ms-body=" + "QUFB" * 1500, "too large"),  # 6,000 characters, under 8 KiB
        ("text/plain; charset=windows-1252;ms-body=" + base64.b64encode(b"caf\xe9").decode(), "charset"),
        ("text/plain; charset=UTF-8;ms-body=" + base64.b64encode(b"caf\xe9").decode(), "not valid UTF-8"),
        ("text/x-msmsgsinvite; charset=UTF-8;ms-body=" + b64("Invitation-Command: INVITE"), "only text/plain"),
    ],
)
def test_a_first_message_that_cannot_be_read_is_dropped_and_the_invitation_goes_on(
    bob: nim.Endpoint, platform: nim.Platform, value: str, reason: str
):
    bob.sessions.on_incoming(lambda e: e.accept())
    stream = bob.events(nim.MessageReceived)
    with RawPeer() as peer:
        caller = OcsCaller(peer, bob)
        ok = caller.invite([f"ms-text-format: {value}"])
        assert ok.startswith(b"SIP/2.0 200"), ok
        assert header(ok, "Supported") is None  # not taken: an OCS sender sends it again as a MESSAGE
        caller.ack()
        assert caller.request("MESSAGE", b"Hi again", "text/plain").startswith(b"SIP/2.0 200")
        assert stream.get(timeout=5).text == "Hi again"  # the only message: the bad one was dropped
        caller.request("BYE")
    assert stream.drain() == []
    assert bob.stats["first_messages_dropped"] == 1
    drops = [d for d in platform.trace.drops if d.owner == bob.uri]
    assert len(drops) == 1 and drops[0].reason.startswith("first message dropped (") and reason in drops[0].reason


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (
            b'<?xml version="1.0"?><!DOCTYPE KeyboardActivity [<!ENTITY x "type">]><KeyboardActivity>'
            b'<status status="&x;"/></KeyboardActivity>',
            "application/xml",
            400,
        ),  # fmt: skip
        (b"<KeyboardActivity>" + b"<!-- padding -->" * 400 + b"</KeyboardActivity>", "application/xml", 413),
        (b"<KeyboardActivity><status", "application/xml", 400),
        (b'<?xml version="1.0" encoding="utf-32"?><KeyboardActivity/>', "application/xml", 415),
        (b"<action><RequestRM/></action>", "application/xml", 200),  # another document: nothing happens
        (b'<KeyboardActivity><status status="type"/></KeyboardActivity>', "text/plain", 200),  # not XML to us
        (b"", None, 200),  # an empty INFO (a keep-alive some clients send)
        (  # a C3P request (OCS conferences, SIPE's sipe-conf.c): not spoken here, answered 200, nothing happens
            b'<?xml version="1.0"?><request xmlns="urn:ietf:params:xml:ns:cccp" C3PVersion="1" requestId="1">'
            b"<getConference/></request>",
            "application/cccp+xml",
            200,
        ),
    ],
)
def test_info_bodies_hostile_or_foreign(bob: nim.Endpoint, body: bytes, content_type: str | None, status: int):
    bob.sessions.on_incoming(lambda e: e.accept())
    stream = bob.events(nim.ComposingChanged)
    with RawPeer() as peer:
        caller = OcsCaller(peer, bob)
        assert caller.invite([]).startswith(b"SIP/2.0 200")
        caller.ack()
        answer = caller.request("INFO", body, content_type)
        assert answer.startswith(f"SIP/2.0 {status} ".encode()), answer
        assert stream.drain() == []  # nobody is shown typing
        # the dialog goes on: a real KeyboardActivity after the bad one still works
        assert caller.request("INFO", TYPE, "application/xml").startswith(b"SIP/2.0 200")
        assert stream.get(timeout=5).composing is True
        caller.request("BYE")


def test_an_info_outside_any_dialog_is_still_405(bob: nim.Endpoint):
    with RawPeer() as peer:
        data, _ = peer.request(
            "INFO", f"sip:bob@{bob.local_address[0]}:{bob.local_address[1]}", from_="sip:sipe@127.0.0.1",
            to="sip:bob@127.0.0.1", body=TYPE, content_type="application/xml",
        )  # fmt: skip
        answer = peer.exchange(data, bob.local_address)
    assert answer is not None and answer.startswith(b"SIP/2.0 405") and b"INFO" in answer


def test_a_rejected_ocs_invitation_still_shows_its_first_message(bob: nim.Endpoint):
    """UCCAPI: the invitation carries the first message; a user who declines has seen it (as in Lync's toast)."""
    bob.sessions.on_incoming(lambda e: e.reject(603))
    stream = bob.events(nim.MessageReceived)
    with RawPeer() as peer:
        caller = OcsCaller(peer, bob)
        answer = caller.invite([f"ms-text-format: text/plain; charset=UTF-8;ms-body={b64('are you there?')}"])
        assert answer.startswith(b"SIP/2.0 603"), answer
    assert stream.get(timeout=5).text == "are you there?"
    wait_for(lambda: bob.sessions.sessions == [], what="the declined session gone")


def test_notebook_im_itself_sends_the_standard_forms(platform: nim.Platform):
    """What it takes from OCS clients it does not send: its INVITE carries no first message, its typing is an
    RFC 3994 MESSAGE, its first text a MESSAGE after the INVITE; no INFO goes out."""
    alice = platform.endpoint("sip:alice@127.0.0.1", server=None).result(10)
    bob = platform.endpoint("sip:bob@127.0.0.1", server=None).result(10)
    bob.sessions.on_incoming(lambda e: e.accept())
    host, port = bob.local_address
    session = alice.sessions.create(f"sip:bob@{host}:{port}").result(10)
    session.start_composing().result(5)
    session.send("first").result(5)
    session.terminate().result(5)
    sip = platform.trace.sip(owner=alice.uri)
    sent = sip[(sip.direction == "out") & sip.status.isna()]
    assert set(sent.method.astype(str)) == {"INVITE", "ACK", "MESSAGE", "BYE"}
    invite = sent[sent.method == "INVITE"].raw.iloc[0]
    assert "ms-text-format:" not in invite and "m=message " in invite
    messages = sent[sent.method == "MESSAGE"].raw.tolist()
    assert "application/im-iscomposing+xml" in messages[0] and messages[1].endswith("first")
