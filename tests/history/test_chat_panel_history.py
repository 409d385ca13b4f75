"""ChatPanel(endpoint) after a restart: the endpoint's earlier conversations, read-only, marked as earlier."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import ipywidgets as w

import notebook_im as nim
from notebook_im.api.events import MessageDelivered, MessageReceived, MessageSending
from notebook_im.api.participant import Participant
from notebook_im.api.records import EarlierSession
from notebook_im.record.recorder import EventRecord
from notebook_im.trace.conversations import UNCONFIRMED, earlier_conversations
from notebook_im.widgets.chat import ChatPanel, Conversation
from notebook_im.widgets.composer import Composer
from notebook_im.widgets.earlier import EARLIER_BADGE, EarlierView, when
from tests.helpers import accept_all, wait_for

from .conftest import record_chat


def descendants(widget: w.Widget) -> list[w.Widget]:
    out = [widget]
    for child in getattr(widget, "children", ()):
        out += descendants(child)
    return out


def test_panel_shows_where_the_user_left_off(tmp_path, server):
    path = tmp_path / "chat.sqlite"
    record_chat(path, server)
    platform = nim.Platform("after-restart", history=path)
    try:
        alice = platform.endpoint("sip:alice@example.test", server=server, display_name="Alice Smith").result(10)
        bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
        accepted = accept_all(bob)
        panel = ChatPanel(alice, names={"sip:bob@example.test": "Bob Jones"})
        try:
            earlier = panel.earlier
            # the sidebar: a heading that says these come from the history, one entry per conversation
            assert "Earlier conversations" in earlier.children[0].value and "(history)" in earlier.children[0].value
            labels = [b.description for b in earlier.children[1:]]
            assert len(labels) == 3, labels  # the session with bob, pager messages to bob and to nobody
            assert all(re.search(r" · \d\d \w{3} \d{4} \d\d:\d\d", label) for label in labels)
            kinds = sorted((label.split(" · ")[0], label.endswith("· pager")) for label in labels)
            assert kinds == [
                ("Bob Jones <bob@example.test>", False),
                ("Bob Jones <bob@example.test>", True),
                ("nobody@example.test", True),
            ]

            # the main area shows the newest one (the 404 to nobody), read-only; the session is one click away
            view = panel.main.children[0]
            assert isinstance(view, EarlierView) and view.conversation.peer == "sip:nobody@example.test"
            session_button = next(
                b
                for b in earlier.children[1:]
                if b.description.startswith("Bob Jones") and "pager" not in b.description
            )
            session_button.click()
            view = panel.main.children[0]
            assert isinstance(view, EarlierView) and session_button.button_style == "info"
            head = view.header_html.value
            assert (
                'Earlier conversation with <b><bdi class="nim-who">Bob Jones</bdi> <span class="nim-addr" dir="ltr">'
                "&lt;bob@example.test&gt;</span></b>"
            ) in head
            assert EARLIER_BADGE in head and when(view.conversation.started) in head
            body = view.messages_html.value
            assert "hello bob" in body and "two<br>lines ✓" in body and "hi alice" in body
            assert body.index("hello bob") < body.index("two<br>lines") < body.index("hi alice")
            assert "Alice Smith" in body and "Bob Jones" in body and "nim-delivered" in body
            assert not any(isinstance(x, (Composer, w.Textarea, w.Text)) for x in descendants(view))  # read-only

            # where they left off: "Chat again" invites the same peer, and the live chat takes the main area
            view.again_button.click()
            wait_for(lambda: isinstance(panel.main.children[0], Conversation), what="the new conversation shown")
            wait_for(lambda: accepted and accepted[0].state is nim.SessionState.CONNECTED, what="bob accepted")
            assert panel.conversation.session.remote.uri == "sip:bob@example.test"
            assert session_button.button_style == ""
            assert len(earlier.children) == 4  # the earlier list stays
            panel.conversation.session.terminate().result(10)
        finally:
            panel.close()
        short = ChatPanel(alice, max_rendered=2)  # a long earlier conversation renders its newest messages
        try:
            view = short.earlier.show(next(c for c in short.earlier.conversations if c.mode == "session"))
            body = view.messages_html.value
            assert "1 earlier messages are in endpoint.history()" in body
            assert "hello bob" not in body and "hi alice" in body
        finally:
            short.close()
    finally:
        platform.shutdown()


def test_panel_without_history_has_no_earlier_section(server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    panel = ChatPanel(alice)
    try:
        assert panel.earlier.children == () and panel.earlier.layout.display == "none"
        assert "No conversations yet" in panel.main.children[0].value
    finally:
        panel.close()


def test_a_message_never_confirmed_shows_as_not_delivered():
    bob = Participant("sip:bob@example.test", display_name="Bob")
    session = EarlierSession("s1", bob, "sip:alice@example.test")
    t = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    records = [
        EventRecord(1.0, "sip:alice@example.test", MessageSending(session, "m1", "first", "text/plain", timestamp=t)),
        EventRecord(
            1.1,
            "sip:alice@example.test",
            MessageDelivered(session, "m1", "first", "text/plain", 200, "OK", 0.01, timestamp=t),
        ),
        EventRecord(
            1.2, "sip:alice@example.test", MessageReceived(session, bob, "reply", "text/plain", "m2", timestamp=t)
        ),
        EventRecord(1.3, "sip:alice@example.test", MessageSending(session, "m3", "cut off", "text/plain", timestamp=t)),
        EventRecord(1.4, "sip:bob@example.test", MessageReceived(None, bob, "not alice's", "text/plain", timestamp=t)),
    ]
    (conv,) = earlier_conversations(records, "sip:alice@example.test")
    assert (conv.key, conv.peer, conv.mode, conv.names) == (
        "s1",
        "sip:bob@example.test",
        "session",
        {"sip:bob@example.test": "Bob"},
    )
    assert [(m.text, m.direction, m.status, m.sender) for m in conv.messages] == [
        ("first", "out", "delivered", "sip:alice@example.test"),
        ("reply", "in", "received", "sip:bob@example.test"),
        ("cut off", "out", "failed", "sip:alice@example.test"),
    ]
    assert conv.messages[2].reason == UNCONFIRMED and conv.messages[0].sip_status == 200
    assert isinstance(conv.messages[0], nim.ChatMessage) and conv.started == conv.ended == t
