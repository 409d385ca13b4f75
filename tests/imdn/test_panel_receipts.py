"""Receipt ticks in the chat panel, headless (ipywidgets' DummyComm): ✓ sent, ✓✓ delivered, blue ✓✓ seen,
and the panel marking what it shows as read only while a front end reports a view of it."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import ipywidgets  # noqa: F401 - runtime dependency
import pytest

import notebook_im as nim
from notebook_im.widgets import render as r  # noqa: E402
from notebook_im.widgets.chat import ChatPanel, Conversation  # noqa: E402
from tests.helpers import wait_for

from .conftest import Pair

pytestmark = pytest.mark.timeout(60)


def newest_state(conv: Conversation) -> str:
    """The spelled-out state of the newest sent message, as the panel shows it."""
    conv.flush()
    html = conv.messages_html.value
    return html[html.rfind('class="nim-state ') :].split(">", 1)[1].split("<", 1)[0]


def shown(conv: Conversation) -> None:
    """What the front end does when it displays the message area (ipywidgets view counting)."""
    conv.messages_html.set_state({"_view_count": 1})


def test_ticks_follow_the_receipts(pair: Pair) -> None:
    pa, pb = ChatPanel(pair.session), ChatPanel(pair.bob_session)
    a, b = pa.conversation, pb.conversation
    try:
        assert not a.visible and not b.visible  # built, never displayed in a front end
        a.send("hello")
        wait_for(lambda: newest_state(a) == "✓✓ Delivered", 5, "alice sees ✓✓ Delivered")
        assert 'class="nim-state nim-state-delivered"' in a.messages_html.value
        wait_for(lambda: len(b.entries) == 1, 5, "bob's panel has it")
        time.sleep(0.3)  # bob's panel is not visible: nothing is "seen"
        assert newest_state(a) == "✓✓ Delivered" and pair.bob_session.messages[0].state == "received"

        shown(b)  # bob's panel appears in a front end
        assert b.visible
        wait_for(lambda: newest_state(a) == "✓✓ Seen", 5, "alice sees ✓✓ Seen")
        assert 'class="nim-state nim-state-displayed"' in a.messages_html.value
        assert pair.bob_session.messages[0].state == "displayed"
        assert a.entries[0].state == "displayed"

        a.send("while you look")  # shown at once, so seen at once
        wait_for(lambda: newest_state(a) == "✓✓ Seen", 5, "the second one seen")
        older = a.messages_html.value.split('class="nim-state ')[1]
        assert older.startswith('nim-state-displayed"') and ">✓✓</span>" in older  # older ones: ticks only

        b.messages_html.set_state({"_view_count": 0})  # the output was cleared / the tab closed
        a.send("after you left")
        wait_for(lambda: newest_state(a) == "✓✓ Delivered", 5, "delivered, not seen")
        time.sleep(0.3)
        assert newest_state(a) == "✓✓ Delivered"
    finally:
        pa.close()
        pb.close()


def test_peer_without_receipts_shows_sent(pair: Pair) -> None:
    pair.bob.send_receipts = False
    pa = ChatPanel(pair.session)
    try:
        pa.conversation.send("anyone?")
        wait_for(lambda: newest_state(pa.conversation) == "✓ Sent", 5, "✓ Sent")
        time.sleep(0.3)
        assert newest_state(pa.conversation) == "✓ Sent"
        assert "no delivery receipt" in pa.conversation.messages_html.value  # the tooltip says what ✓ means
    finally:
        pa.close()


def test_endpoint_panel_counts_only_the_selected_conversation(server: nim.Server, platform: nim.Platform) -> None:
    """ChatPanel(endpoint) shows one conversation at a time: the others are not visible, so not read."""
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    carol = platform.endpoint("sip:carol@example.test", server=server).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    bob.sessions.on_incoming(lambda inc: inc.accept())
    panel = ChatPanel(bob)
    try:
        from_alice = alice.sessions.create(bob.uri).result(10)
        from_carol = carol.sessions.create(bob.uri).result(10)
        wait_for(lambda: len(panel.conversations) == 2, 5, "two conversations")
        first, second = list(panel.conversations.values())
        assert panel.selected is first
        shown(first)  # the front end shows the selected one; the other has no view
        from_alice.send("to bob from alice").result(10)
        from_carol.send("to bob from carol").result(10)
        wait_for(lambda: from_alice.messages[0].state == "displayed", 5, "alice's message seen")
        time.sleep(0.3)
        assert from_carol.messages[0].state == "delivered"
    finally:
        panel.close()


def test_tick_rendering() -> None:
    now = datetime.now(timezone.utc)

    def entry(status: str, state: str = "", sip: int | None = 200, reason: str = "OK") -> r.Entry:
        return r.Entry("m", "out", "sip:a@x", "A", "t", "text/plain", now, status, sip, reason, state)

    assert "Sending…" in r.status_html(entry("sending", "sending", None, ""), latest=True)
    assert ">✓ Sent</span>" in r.status_html(entry("delivered"), latest=True)  # a 2xx without a state: sent
    assert ">✓</span>" in r.status_html(entry("delivered", "sent"))
    assert ">✓✓ Delivered</span>" in r.status_html(entry("delivered", "delivered"), latest=True)
    seen = r.status_html(entry("delivered", "displayed"), latest=True)
    assert "nim-state-displayed" in seen and ">✓✓ Seen</span>" in seen and "Seen by the recipient" in seen
    assert "⚠ Not delivered: 404 Not Found" in r.status_html(entry("failed", "failed", 404, "Not Found"))
    # the server took it (200) but the recipient's device reported a failure
    assert "reported that delivery failed" in r.status_html(entry("delivered", "failed"))
    assert r.status_html(r.Entry("m", "in", "sip:b@x", "B", "t", "text/plain", now, "received")) == ""
    assert ".nim-state-displayed" in r.CSS
