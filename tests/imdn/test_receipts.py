"""Delivery and read receipts (RFC 5438) end to end between two endpoints on the embedded server: the states
sending -> sent -> delivered -> displayed, the events, mark_read(), pager mode, the messages frame, the
switches, and who may send a receipt."""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timezone

import pandas as pd
import pytest

import notebook_im as nim
from notebook_im.api.messages import ChatMessage
from notebook_im.im import imdn
from notebook_im.record.recorder import Trace
from tests.helpers import udp_exchange, wait_for

from .conftest import Pair

pytestmark = pytest.mark.timeout(60)


def receipts_sent(platform: nim.Platform, owner: str, kind: str | None = None) -> list[str]:
    """The raw receipts (CPIM-wrapped message/imdn+xml MESSAGEs) `owner` sent, in order."""
    sip = platform.trace.sip(owner=owner)
    out = sip[(sip["direction"] == "out") & (sip["method"] == "MESSAGE") & sip["status"].isna()]
    raws = [r for r in out["raw"] if "message/imdn+xml" in r]
    return [r for r in raws if kind is None or f"<{kind}-notification>" in r]


def test_delivered_then_displayed(pair: Pair, platform: nim.Platform) -> None:
    notified = pair.alice.events(nim.MessageDeliveryNotified, nim.MessageDisplayed)
    delivered = pair.session.send("hello bob").result(10)
    assert delivered.status == 200 and delivered.state in ("sent", "delivered")  # a receipt may overtake the 200
    first = notified.get(5)
    assert isinstance(first, nim.MessageDeliveryNotified)
    assert (first.message_id, first.disposition, first.state, first.mode) == (
        delivered.message_id,
        "delivered",
        "delivered",
        "session",
    )
    assert first.session is pair.session and first.participant.uri == "sip:bob@example.test"
    msg = pair.session.messages[-1]
    assert (msg.status, msg.state, msg.requested) == (
        "delivered",
        "delivered",
        frozenset({"positive-delivery", "display"}),
    )
    assert msg.delivery_notified_at is not None and msg.displayed_at is None

    # bob has it, unread; the request travelled as SIP headers
    received = pair.bob_session.messages[-1]
    assert (received.id, received.state) == (delivered.message_id, "received")
    assert received.requested == {"positive-delivery", "display"} and received.imdn_datetime
    assert len(receipts_sent(platform, pair.bob.uri, "delivery")) == 1
    assert receipts_sent(platform, pair.bob.uri, "display") == []

    assert pair.bob_session.mark_read().result(5) == 1
    shown = notified.get(5)
    assert isinstance(shown, nim.MessageDisplayed)
    assert (shown.message_id, shown.state, shown.participant.uri) == (msg.id, "displayed", "sip:bob@example.test")
    assert msg.state == "displayed" and msg.displayed_at is not None
    assert received.state == "displayed" and received.displayed_at is not None

    # once only: a second mark_read() marks nothing and sends nothing
    assert pair.bob_session.mark_read().result(5) == 0
    time.sleep(0.2)
    assert len(receipts_sent(platform, pair.bob.uri, "display")) == 1
    assert notified.drain() == []

    # the receipt on the wire: RFC 5438 proper, CPIM around message/imdn+xml with Content-Disposition
    raw = receipts_sent(platform, pair.bob.uri, "display")[0]
    assert "Content-Type: message/cpim" in raw and "Content-Disposition: notification" in raw
    assert f"<message-id>{msg.id}</message-id>" in raw and "<displayed/>" in raw
    assert f"<datetime>{received.imdn_datetime}</datetime>" in raw  # the sender's DateTime, echoed


def test_mark_read_by_id_and_argument_errors(pair: Pair, platform: nim.Platform) -> None:
    ids = [pair.session.send(t).result(10).message_id for t in ("one", "two", "three")]
    wait_for(lambda: len(pair.bob_session.messages) == 3, 5, "bob got three")
    assert pair.bob_session.mark_read([ids[1], "no-such-id"]).result(5) == 1
    wait_for(lambda: pair.session.messages[1].state == "displayed", 5, "two displayed")
    time.sleep(0.2)
    assert [m.state for m in pair.session.messages] == ["delivered", "displayed", "delivered"]
    assert [m.state for m in pair.bob_session.messages] == ["received", "displayed", "received"]
    with pytest.raises(TypeError, match="list of message ids"):
        pair.bob_session.mark_read(ids[0])
    with pytest.raises(TypeError, match="list of message ids"):
        pair.bob_session.mark_read([1, 2])


def test_pager_mode_receipts(pair: Pair) -> None:
    notified = pair.alice.events(nim.MessageDeliveryNotified, nim.MessageDisplayed)
    got = pair.bob.events(nim.MessageReceived)
    sent = pair.alice.send_message("sip:bob@example.test", "pager hello").result(10)
    assert got.get(5).message_id == sent.message_id
    first = notified.get(5)
    assert isinstance(first, nim.MessageDeliveryNotified) and first.session is None and first.mode == "pager"
    assert first.message_id == sent.message_id and first.state == "delivered"
    assert pair.bob.mark_read().result(5) == 1
    shown = notified.get(5)
    assert isinstance(shown, nim.MessageDisplayed) and shown.mode == "pager" and shown.message_id == sent.message_id
    assert pair.bob.mark_read().result(5) == 0


def test_messages_frame_state_column(pair: Pair, platform: nim.Platform) -> None:
    notified = pair.alice.events(nim.MessageDisplayed)
    pair.session.send("seen soon").result(10)
    pair.session.send("left unread").result(10)
    wait_for(lambda: [m.state for m in pair.session.messages] == ["delivered", "delivered"], 5, "both delivered")
    pair.bob_session.mark_read([pair.bob_session.messages[0].id]).result(5)
    notified.get(5)
    m = platform.trace.messages()
    out = m[m["direction"] == "out"]
    assert out["state"].astype(str).tolist() == ["displayed", "delivered"]
    assert out["status"].astype(str).tolist() == ["delivered", "delivered"]  # the SIP outcome: both 2xx
    assert list(m["state"].dtype.categories) == ["sending", "sent", "delivered", "displayed", "failed"]
    assert m[m["direction"] == "in"]["state"].isna().all()
    # the same states rebuilt from the SIP messages alone (a pcap): the receipts are in the trace
    from_sip = platform.trace.messages(source="sip")
    assert from_sip[from_sip["direction"] == "out"]["state"].astype(str).tolist() == ["displayed", "delivered"]
    events = platform.trace.events(owner=pair.alice.uri)
    assert {"MessageDeliveryNotified", "MessageDisplayed"} <= set(events["type"].astype(str))


def test_frame_lists_a_message_still_sending() -> None:
    """A message with MessageSending and no final response yet is a row with state "sending"."""
    trace = Trace()
    now = datetime.now(timezone.utc)
    trace.record_event(
        "sip:a@x", nim.MessageSending(None, "m1", "in flight", "text/plain", "pager", "sip:b@x", timestamp=now)
    )
    m = trace.messages()
    assert len(m) == 1 and m["state"].astype(str).tolist() == ["sending"] and pd.isna(m["status"].iloc[0])
    assert abs(m["sent_at"].iloc[0] - pd.Timestamp(now)) < pd.Timedelta(microseconds=1)
    assert m["text"].iloc[0] == "in flight"


def test_send_receipts_off_keeps_reading_private(pair: Pair, platform: nim.Platform) -> None:
    pair.bob.send_receipts = False
    delivered = pair.session.send("are you there?").result(10)
    time.sleep(0.3)
    assert pair.bob_session.mark_read().result(5) == 1
    time.sleep(0.3)
    assert receipts_sent(platform, pair.bob.uri) == []
    assert pair.session.messages[-1].state == "sent" and delivered.state == "sent"


def test_request_receipts_off_asks_for_none(pair: Pair, platform: nim.Platform) -> None:
    pair.alice.request_receipts = False
    pair.session.send("no receipts please").result(10)
    time.sleep(0.3)
    sip = platform.trace.sip(owner=pair.alice.uri)
    raw = [r for r in sip["raw"] if "no receipts please" in r][0]
    assert "Disposition-Notification" not in raw and "Imdn-Message-ID" in raw  # the id still de-duplicates retries
    assert receipts_sent(platform, pair.bob.uri) == []
    assert pair.session.messages[-1].state == "sent"


def raw_message(ep: nim.Endpoint, sender: str, content_type: str, body: bytes) -> bytes:
    """Send one out-of-dialog MESSAGE to `ep` from a plain UDP socket; return the reply."""
    request = (
        f"MESSAGE {ep.contact} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{uuid.uuid4().hex[:10]};rport\r\nMax-Forwards: 70\r\n"
        f"From: <{sender}>;tag=t1\r\nTo: <{ep.uri}>\r\nCall-ID: {uuid.uuid4().hex}\r\nCSeq: 1 MESSAGE\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    reply = udp_exchange(request, ep.local_address, timeout=3)
    assert reply is not None, "no answer"
    return reply


def test_receipt_from_someone_else_is_ignored(pair: Pair, platform: nim.Platform) -> None:
    """A pager-mode receipt about alice's message that does not come from its recipient changes nothing."""
    sent = pair.alice.send_message("sip:bob@example.test", "only bob may confirm").result(10)
    wait_for(lambda: pair.alice.receipts.find(sent.message_id).state == "delivered", 5, "bob's receipt")
    forged = imdn.wrap(
        imdn.Notification(sent.message_id, "display", "displayed", None, "sip:mallory@example.test"),
        "sip:mallory@example.test",
        pair.alice.uri,
        "f1",
        datetime.now(timezone.utc),
    )
    reply = raw_message(pair.alice, "sip:mallory@example.test", "message/cpim", forged)
    assert reply.startswith(b"SIP/2.0 200")  # answered, but believed only from the recipient
    assert pair.alice.receipts.find(sent.message_id).state == "delivered"


def test_malformed_receipt_gets_400(pair: Pair) -> None:
    body = b"<imdn xmlns='urn:ietf:params:xml:ns:imdn'><message-id>x</message-id></imdn>"
    reply = raw_message(pair.alice, "sip:bob@example.test", "message/imdn+xml", body)
    assert re.match(rb"SIP/2.0 400 ", reply), reply


def test_conference_messages_ask_for_no_receipts(server: nim.Server, platform: nim.Platform) -> None:
    """IMDN through the focus is not implemented: conference messages carry no request and stay "sent"."""
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    joined = []
    bob.sessions.on_incoming(lambda inc: (joined.append(inc.session), inc.accept()))
    conf = alice.sessions.create_conference([bob.uri]).result(20)
    got = bob.events(nim.MessageReceived)
    conf.send("hi all").result(10)
    assert got.get(5).text == "hi all"
    time.sleep(0.3)
    assert conf.messages[-1].state == "sent" and conf.messages[-1].requested == frozenset()
    raw = [r for r in platform.trace.sip(owner=alice.uri)["raw"] if "hi all" in r][0]
    assert "Disposition-Notification" not in raw
    assert joined[0].mark_read().result(5) == 1 and receipts_sent(platform, bob.uri) == []


def test_chat_message_state_defaults_follow_status() -> None:
    now = datetime.now(timezone.utc)
    states = [
        ChatMessage("i", "out", "a", "b", "t", "text/plain", now, s).state
        for s in ("sending", "delivered", "failed", "received")
    ]
    assert states == ["sending", "sent", "failed", "received"]


def test_cpim_text_in_a_session_asks_for_receipts(pair: Pair, platform: nim.Platform) -> None:
    """linphone's form in session mode: the text inside message/cpim, the request in CPIM headers."""
    from notebook_im.im import cpim
    from notebook_im.runtime import runtime

    body = cpim.wrap(
        pair.alice.uri, pair.bob.uri, b"wrapped hello", "text/plain;charset=UTF-8", message_id="cpim-1"
    ).replace(b"imdn.Message-ID: cpim-1\r\n", b"imdn.Message-ID: cpim-1\r\nimdn.Disposition-Notification: display\r\n")
    got = pair.bob.events(nim.MessageReceived)
    resp = (
        runtime()
        .submit(
            pair.session.ua.send_in_dialog(pair.session.dialog, "MESSAGE", body=body, content_type="message/cpim"),
            "cpim",
        )
        .result(10)
    )
    assert resp.status == 200
    msg = got.get(5)
    assert (msg.text, msg.message_id, msg.content_type, msg.session) == (
        "wrapped hello",
        "cpim-1",
        "text/plain",
        pair.bob_session,
    )
    assert pair.bob_session.messages[-1].requested == {"display"}  # display only: no delivery receipt
    time.sleep(0.2)
    assert receipts_sent(platform, pair.bob.uri) == []
    assert pair.bob_session.mark_read().result(5) == 1
    wait_for(lambda: receipts_sent(platform, pair.bob.uri, "display"), 5, "the display receipt")
    assert "<message-id>cpim-1</message-id>" in receipts_sent(platform, pair.bob.uri, "display")[0]
