"""Compressed bodies and liblinphone's ways on the wire, from a raw UDP peer: a deflated receipt that names our
MESSAGE by its Call-ID, is-composing inside a deflated CPIM wrapper, gzip text, and the refusals (415 with
Accept-Encoding for a coding we do not take, 413 for a decompression bomb, 400 for a body that does not
inflate), none of which reaches the application."""

from __future__ import annotations

import gzip
import zlib

import pytest

import notebook_im as nim
from notebook_im.im import cpim, imdn
from notebook_im.sip.coding import MAX_INFLATED
from notebook_im.sip.message import make_response
from notebook_im.sip.parser import parse_message
from tests.hostile.rawsip import rss_mib
from tests.security.raw import RawPeer, header

pytestmark = pytest.mark.timeout(60)

COMPOSING = (
    b'<?xml version="1.0" encoding="UTF-8"?>\r\n<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing">'
    b"<state>active</state><contenttype>text/plain</contenttype><refresh>60</refresh></isComposing>"
)


@pytest.fixture
def alice(platform: nim.Platform) -> nim.Endpoint:
    """An endpoint without a server: the raw peer talks to it directly."""
    return platform.endpoint("sip:alice@example.test").result(10)


def to_alice(alice: nim.Endpoint) -> tuple[str, int]:
    host, port = alice.agent.local_addr
    return host, port


def deliver(
    peer: RawPeer,
    alice: nim.Endpoint,
    body: bytes,
    content_type: str,
    coding: str | None,
    extra: list[str] | None = None,
) -> bytes:
    """Send one MESSAGE from bob (the raw peer) to alice; her final response."""
    lines = list(extra or []) + ([f"Content-Encoding: {coding}"] if coding else [])
    req, _ = peer.request(
        "MESSAGE",
        alice.contact.strip("<>"),
        from_=f"sip:bob@{peer.hostport}",
        to=alice.uri,
        body=body,
        content_type=content_type,
        extra=lines,
    )
    resp = peer.exchange(req, to_alice(alice), 5)
    assert resp is not None, "alice did not answer"
    return resp


def test_a_deflated_receipt_naming_the_call_id_is_believed(alice: nim.Endpoint) -> None:
    """liblinphone (CPIM off) answers a text whose receipt request came as SIP headers with a bare, deflated
    message/imdn+xml whose <message-id> is the Call-ID of our MESSAGE."""
    notified = alice.events(nim.MessageDeliveryNotified, nim.MessageDisplayed)
    with RawPeer() as peer:
        op = alice.send_message(f"sip:bob@{peer.hostport}", "receipt please")
        raw = peer.recv(5, want=b"MESSAGE ")
        assert raw is not None
        request = parse_message(raw)
        assert request.headers.get("Disposition-Notification") == "positive-delivery, display"
        peer.send(bytes(make_response(request, 200, to_tag="lin")), to_alice(alice))
        sent = op.result(5)
        for kind, status in (("delivery-notification", "delivered"), ("display-notification", "displayed")):
            doc = (
                f'<?xml version="1.0" encoding="UTF-8"?><imdn xmlns="urn:ietf:params:xml:ns:imdn">'
                f"<message-id>{request.call_id}</message-id><datetime>2026-12-05T08:00:00.000Z</datetime>"
                f"<{kind}><status><{status}/></status></{kind}></imdn>"
            ).encode()
            resp = deliver(peer, alice, zlib.compress(doc), imdn.CONTENT_TYPE, "deflate", ["Priority: non-urgent"])
            assert resp.startswith(b"SIP/2.0 200"), resp
    first, second = notified.get(5), notified.get(5)
    assert isinstance(first, nim.MessageDeliveryNotified) and isinstance(second, nim.MessageDisplayed)
    assert first.message_id == second.message_id == sent.message_id
    assert (first.disposition, second.state, first.session) == ("delivered", "displayed", None)


def test_composing_in_a_deflated_cpim_wrapper_is_shown(alice: nim.Endpoint) -> None:
    """liblinphone with CPIM on wraps its is-composing in message/cpim and deflates the lot."""
    changes = alice.events(nim.ComposingChanged, nim.MessageReceived)
    wrapped = cpim.wrap("sip:bob@example.test", alice.uri, COMPOSING, "application/im-iscomposing+xml")
    with RawPeer() as peer:
        resp = deliver(peer, alice, zlib.compress(wrapped), cpim.CONTENT_TYPE, "deflate")
        assert resp.startswith(b"SIP/2.0 200"), resp
        event = changes.get(5)
        assert isinstance(event, nim.ComposingChanged) and event.composing is True
        assert event.participant.uri == f"sip:bob@{peer.hostport}"
        # the text that follows, gzip this time, ends the composing and arrives as text
        resp = deliver(peer, alice, gzip.compress("gzipped ✓".encode()), "text/plain;charset=UTF-8", "gzip")
        assert resp.startswith(b"SIP/2.0 200"), resp
    stopped, text = changes.get(5), changes.get(5)
    assert isinstance(stopped, nim.ComposingChanged) and stopped.composing is False
    assert isinstance(text, nim.MessageReceived) and text.text == "gzipped ✓"


@pytest.mark.parametrize(
    "coding, body, status",
    [
        ("br", b"\x0b\x02\x80hello\x03", 415),
        ("deflate", b"this was never compressed", 400),
        ("gzip", zlib.compress(b"zlib is not gzip"), 400),
    ],
)
def test_bodies_we_cannot_read_are_refused_and_lost_to_nobody(
    alice: nim.Endpoint, coding: str, body: bytes, status: int
) -> None:
    events = alice.events(nim.MessageReceived, nim.ComposingChanged)
    with RawPeer() as peer:
        resp = deliver(peer, alice, body, "text/plain", coding)
    assert resp.startswith(f"SIP/2.0 {status} ".encode()), resp
    if status == 415:  # RFC 3261 §8.2.3: say which codings we take
        assert header(resp, "Accept-Encoding") == "deflate, gzip, identity", resp
    assert events.drain() == []


def test_a_decompression_bomb_is_413_with_memory_bounded(alice: nim.Endpoint) -> None:
    """Each 2 KB datagram would inflate to 3 MB; 200 of them are refused 413 and RSS stays flat."""
    bomb = zlib.compress(b"A" * (50 * MAX_INFLATED), 9)
    assert len(bomb) < 8000
    events = alice.events(nim.MessageReceived)
    before = rss_mib()
    with RawPeer() as peer:
        statuses = {deliver(peer, alice, bomb, "text/plain", "deflate").split(b" ")[1] for _ in range(200)}
    assert statuses == {b"413"}
    assert rss_mib() - before < 30, f"RSS grew {rss_mib() - before:.1f} MiB"
    assert events.drain() == []


def test_identity_is_no_coding(alice: nim.Endpoint) -> None:
    got = alice.events(nim.MessageReceived)
    with RawPeer() as peer:
        resp = deliver(peer, alice, b"plain", "text/plain", "identity")
    assert resp.startswith(b"SIP/2.0 200") and got.get(5).text == "plain"


def test_a_cpim_peer_gets_cpim_and_receipts_flow(server: nim.Server, platform: nim.Platform) -> None:
    """endpoint.cpim: "auto" answers CPIM with CPIM (the receipt request inside the wrapper, where liblinphone
    reads it); True wraps every pager text; False none; anything else is refused before anything is sent."""
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    for wrong in ("yes", 1, None):
        with pytest.raises(ValueError, match="auto"):
            bob.cpim = wrong  # type: ignore[assignment]
    assert alice.cpim == "auto" and not alice.speaks_cpim(bob.uri)
    got_alice, got_bob = alice.events(nim.MessageReceived), bob.events(nim.MessageReceived)
    receipts = bob.events(nim.MessageDeliveryNotified)

    alice.send_message(bob.uri, "plain first").result(10)  # alice knows nothing of bob yet: plain text
    assert got_bob.get(5).text == "plain first"
    bob.cpim = True
    sent = bob.send_message(alice.uri, "wrapped ✓").result(10)
    received = got_alice.get(5)
    assert (received.text, received.message_id, received.content_type) == ("wrapped ✓", sent.message_id, "text/plain")
    assert receipts.get(5).message_id == sent.message_id  # asked for inside the wrapper, answered
    assert alice.speaks_cpim("sip:bob@example.test;transport=udp")
    reply = alice.send_message(bob.uri, "so do I").result(10)
    assert got_bob.get(5).message_id == reply.message_id

    sip = platform.trace.sip(owner=alice.uri)
    out = sip[(sip["direction"] == "out") & (sip["method"] == "MESSAGE") & sip["status"].isna()]
    texts = [r for r in out["raw"] if "plain first" in r or "so do I" in r]
    assert "Content-Type: message/cpim" not in texts[0] and "Imdn-Message-ID:" in texts[0]
    assert "Content-Type: message/cpim" in texts[1] and f"imdn.Message-ID: {reply.message_id}" in texts[1]
    assert "imdn.Disposition-Notification: positive-delivery, display" in texts[1]
    assert "Disposition-Notification:" not in texts[1].split("\r\n\r\n")[0]  # not twice: only in the wrapper
