"""Headless widget tests (no browser, no kernel: ipywidgets uses a DummyComm): two panels on two endpoints."""

from __future__ import annotations

import concurrent.futures
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import anywidget  # noqa: F401 - runtime dependencies; `make test` installs them
import ipywidgets  # noqa: F401
import pytest

import notebook_im as nim
from notebook_im.runtime import Operation, runtime
from notebook_im.widgets import render as r  # noqa: E402
from notebook_im.widgets.chat import ChatPanel, Conversation  # noqa: E402
from tests.helpers import accept_all, wait_for


def n_rendered(conv: Conversation) -> int:
    return len(re.findall(r'class="nim-msg ', conv.messages_html.value))


def n_groups(conv: Conversation) -> int:
    return len(re.findall(r'<div class="nim-group(?: nim-mine)?">', conv.messages_html.value))


@pytest.fixture
def pair(server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=server, display_name="Alice Smith").result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server, display_name="Bob Jones").result(10)
    return alice, bob


@pytest.fixture
def sessions(pair):
    alice, bob = pair
    accepted = accept_all(bob)
    a = alice.sessions.create("sip:bob@example.test").result(10)
    wait_for(lambda: accepted and accepted[0].state is nim.SessionState.CONNECTED, what="bob connected")
    return a, accepted[0]


def test_import_notebook_im_does_not_import_ipywidgets():
    code = (
        "import sys, notebook_im; print('ipywidgets' in sys.modules, 'anywidget' in sys.modules, 'nh3' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]
    assert nim.ChatPanel is ChatPanel
    assert "ChatPanel" in dir(nim) and "LadderView" in dir(nim)


def test_two_endpoint_panels_invitation_typing_and_delivery(pair):
    alice, bob = pair
    names = {"sip:bob@example.test": "Bob Jones"}
    pa, pb = ChatPanel(alice, names=names), ChatPanel(bob)
    try:
        pa.start_chat("bob@example.test")  # returns at once; the invitation rings in bob's panel
        wait_for(lambda: len(pb.conversations) == 1, what="invitation in bob's panel")
        cb = pb.conversation
        wait_for(lambda: cb.invite_bar.layout.display is None, what="accept/decline bar")
        assert "Alice Smith" in cb.invite_text.value and "wants to chat" in cb.invite_text.value
        assert "invitation" in pb.conv_list.children[0].description
        assert cb.composer.disabled
        cb.accept_button.click()
        ca = pa.conversation
        assert ca is not None and len(pa.conversations) == 1
        wait_for(lambda: not ca.composer.disabled and not cb.composer.disabled, what="both connected")
        wait_for(lambda: "connected" in ca.header_html.value and "Bob Jones" in ca.header_html.value, what="header")
        assert r.colour_for("sip:bob@example.test") in ca.header_html.value
        assert cb.invite_bar.layout.display == "none"

        # typing in alice's box shows in bob's panel; clearing the box sends idle
        ca.composer.value = "Hel"
        wait_for(
            lambda: (
                'Alice Smith</bdi> <span class="nim-addr" dir="ltr">&lt;alice@example.test&gt;</span> is typing'
                in cb.status_html.value
            ),
            what="composing shown, with the address",
        )
        ca.composer.value = ""
        wait_for(lambda: "typing" not in cb.status_html.value, what="idle after clearing")
        ca.composer.value = "Hello Bob"
        wait_for(lambda: "typing" in cb.status_html.value, what="composing again")

        # Enter: the message shows on both sides, 'Sending…' then delivered; the typing line clears
        ca.composer.submit()
        assert ca.composer.value == ""
        wait_for(lambda: "Hello Bob" in cb.messages_html.value, what="message at bob")
        wait_for(lambda: "✓ Delivered" in ca.messages_html.value, what="delivered at alice")
        wait_for(lambda: "typing" not in cb.status_html.value, what="composing cleared by the message")
        entry = ca.entries[-1]
        assert (entry.status, entry.sip_status, entry.direction) == ("delivered", 200, "out")
        assert not entry.id.startswith("local-")  # matched to the library's message id
        assert entry.id == ca.session.messages[-1].id
        assert "Alice Smith" in cb.messages_html.value

        # consecutive messages of one sender share one group header; the reply starts a new group
        ca.send("second line")
        wait_for(lambda: cb.messages_html.value.count('class="nim-msg ') == 2, what="second message")
        assert n_groups(cb) == 1
        cb.composer.submit("Hi Alice")
        wait_for(lambda: "Hi Alice" in ca.messages_html.value, what="reply")
        cb.flush()
        assert n_groups(cb) == 2
        local = datetime.now(timezone.utc).astimezone().strftime("%H:")
        assert 'class="nim-time"' in ca.messages_html.value and local in ca.messages_html.value

        # a frontend Enter arrives as a custom message from the anywidget
        ca.composer._handle_custom_msg({"event": "submit", "text": "from the browser"}, [])
        wait_for(lambda: "from the browser" in cb.messages_html.value, what="custom-message submit")

        # the end: bob's panel shows alice disconnected, the box is disabled with the reason
        ca.end_button.click()
        wait_for(lambda: "disconnected" in cb.header_html.value, what="disconnected state")
        wait_for(lambda: cb.composer.disabled and "ended" in cb.composer.placeholder, what="box disabled")
    finally:
        pa.close()
        pb.close()


def test_pager_mode_conversations_in_both_panels(pair):
    """bob's client does not do IM sessions (488, as liblinphone): alice's New chat still opens a conversation,
    marked "pager mode"; her text opens one in bob's panel too (no invitation to accept), typing shows both
    ways, and the replies land in the same two conversations."""
    alice, bob = pair
    bob.sessions.on_incoming(lambda incoming: incoming.reject(488))
    pa, pb = ChatPanel(alice), ChatPanel(bob)
    try:
        assert bob.pager_sessions and alice.pager_sessions
        pa.start_chat("bob@example.test")
        wait_for(lambda: pa.conversation is not None and not pa.conversation.composer.disabled, what="alice's chat")
        ca = pa.conversation
        wait_for(lambda: "pager mode" in ca.header_html.value, what="the pager-mode badge")
        assert "does not take IM sessions" in ca.header_html.value and ca.session.mode == "pager"
        assert pa.side_error.value == ""
        [refused] = pb.conversations.values()  # the invitation bob's client answered 488, ended
        wait_for(lambda: refused.session.state is nim.SessionState.DISCONNECTED, what="the refused invitation ended")
        ca.composer.submit("Hello over pager mode")
        wait_for(lambda: len(pb.conversations) == 2, what="a conversation in bob's panel")
        [cb] = [c for c in pb.conversations.values() if c is not refused]
        assert cb.session.mode == "pager" and cb.session.is_incoming
        pb.select(cb.session)
        wait_for(lambda: "Hello over pager mode" in cb.messages_html.value, what="the text in bob's panel")
        assert (
            cb.invite_bar.layout.display == "none" and not cb.composer.disabled and "pager mode" in cb.header_html.value
        )
        cb.composer.value = "typing back"
        wait_for(lambda: "is typing" in ca.status_html.value, what="bob's typing at alice")
        cb.composer.submit()
        wait_for(lambda: "typing back" in ca.messages_html.value, what="the reply in alice's conversation")
        wait_for(lambda: "✓ Delivered" in cb.messages_html.value, what="delivered at bob")
        assert len(pa.conversations) == 1 and len(pb.conversations) == 2
        assert [m.text for m in ca.session.messages] == ["Hello over pager mode", "typing back"]
    finally:
        pa.close()
        pb.close()


def test_session_panels_and_decline(pair):
    alice, bob = pair
    pb = ChatPanel(bob)
    try:
        op = alice.sessions.create("sip:bob@example.test")
        wait_for(lambda: pb.conversation is not None and pb.conversation.invite_bar.layout.display is None)
        pb.conversation.decline_button.click()
        with pytest.raises(nim.RequestFailed) as info:
            op.result(10)
        assert info.value.status == 603
        wait_for(lambda: "disconnected" in pb.conversation.header_html.value, what="declined shown")
        assert (
            "declined" not in pb.conversation.invite_text.value.lower()
            or pb.conversation.invite_bar.layout.display == "none"
        )
    finally:
        pb.close()
    with pytest.raises(TypeError, match="ImSession .* or an Endpoint"):
        ChatPanel("sip:bob@example.test")


def test_new_chat_bad_uri_and_unknown_user(pair):
    alice, _bob = pair
    pa = ChatPanel(alice)
    try:
        pa.start_chat("not a uri at all")
        assert "SIP URI" in pa.side_error.value or "user part" in pa.side_error.value
        pa.start_chat("sip:nobody@example.test")
        wait_for(lambda: "404" in pa.side_error.value, what="404 shown next to the box")
    finally:
        pa.close()


def test_html_is_inert(sessions):
    a, b = sessions
    pa, pb = ChatPanel(a), ChatPanel(b)
    try:
        a.send("<img src=x onerror=alert(1)>").result(5)
        a.send(
            "<b>bold</b><img src=x onerror=alert(2)><script>alert(3)</script>"
            '<a href="javascript:alert(4)" onclick="alert(5)">link</a><a href="https://example.test/">ok</a>'
            '<p style="position:fixed">p</p>',
            "text/html",
        ).result(5)
        for panel in (pa, pb):  # renders are coalesced: wait for each panel's
            wait_for(lambda panel=panel: "ok</a>" in panel.conversation.messages_html.value, what="both messages")
        for panel in (pa, pb):
            html = panel.conversation.messages_html.value
            assert "&lt;img src=x onerror=alert(1)&gt;" in html  # plain text shows as text
            assert "<b>bold</b>" in html
            html = html.replace("&lt;img src=x onerror=alert(1)&gt;", "")  # the text of the first one
            for bad in ("<img", "<script", "onerror=", "onclick", "javascript:", "alert(3)", 'style="position'):
                assert bad not in html, bad
            assert 'href="https://example.test/"' in html and 'rel="noopener noreferrer nofollow"' in html
    finally:
        pa.close()
        pb.close()


def test_names_and_uris_are_escaped():
    e = r.Entry(
        "1", "in", "sip:x@y", "<script>alert(1)</script>", "t", "text/plain", datetime.now(timezone.utc), "received"
    )
    out = r.messages_html([e])
    assert (
        "<script>" not in out and '"nim-who">x@y</bdi>' in out
    )  # a name with "<" looks like an address: the real one shows
    e = r.Entry("2", "in", "sip:x@y", 'Tom & "Jerry"', "t", "text/plain", datetime.now(timezone.utc), "received")
    assert "Tom &amp; &quot;Jerry&quot;" in r.messages_html([e])
    chip = r.participant_chip('"><img src=x>', 'sip:"><img@x', "connected")
    assert "<img" not in chip


def test_history_cap_and_show_earlier(sessions):
    a, _b = sessions
    conv = ChatPanel(a, max_rendered=5).conversation
    try:
        t0 = datetime.now(timezone.utc)
        for i in range(12):
            conv.append(
                nim.ChatMessage(
                    f"m{i}",
                    "in",
                    "sip:bob@example.test",
                    "sip:alice@example.test",
                    f"msg {i}",
                    "text/plain",
                    t0 + timedelta(seconds=i),
                    "received",
                )
            )
        conv.flush()
        assert (
            n_rendered(conv) == 5 and "msg 11" in conv.messages_html.value and "msg 6" not in conv.messages_html.value
        )
        assert conv.earlier_button.layout.display is None and "(7)" in conv.earlier_button.description
        conv.earlier_button.click()
        assert n_rendered(conv) == 10 and "msg 2" in conv.messages_html.value
        conv.earlier_button.click()
        assert n_rendered(conv) == 12 and conv.earlier_button.layout.display == "none"
        assert len(conv.entries) == 12
        with pytest.raises(ValueError):
            Conversation(a, max_rendered=0)
    finally:
        conv.close()


def test_enter_never_blocks_and_failures_show_reason(sessions, monkeypatch):
    a, b = sessions
    conv = ChatPanel(a).conversation
    try:
        never: concurrent.futures.Future = concurrent.futures.Future()  # a send that never finishes
        monkeypatch.setattr(a, "send", lambda text, ct="text/plain": Operation(never, "send", runtime()))
        started = time.perf_counter()
        conv.composer.submit("stuck")
        assert time.perf_counter() - started < 0.5
        conv.flush()
        assert "Sending…" in conv.messages_html.value
        never.set_exception(nim.RequestFailed("MESSAGE", 480, "Temporarily Unavailable", "sip:bob@example.test"))
        wait_for(lambda: "Not delivered: 480 Temporarily Unavailable" in conv.messages_html.value, what="failure")
        monkeypatch.undo()

        # a MessageFailed event for a message this panel did not send (e.g. from a cell) also shows
        ev = nim.MessageFailed(
            a, "xyz", "from a cell", "text/plain", 408, "Request Timeout", timestamp=datetime.now(timezone.utc)
        )
        runtime().call_soon(a._emit, ev)  # events arrive on the library's loop thread
        wait_for(
            lambda: "from a cell" in conv.messages_html.value and "408 Request Timeout" in conv.messages_html.value
        )

        b.terminate().result(5)
        wait_for(lambda: a.state is nim.SessionState.DISCONNECTED)
        conv.send("too late")  # the session ended: the library's InvalidState shows on the message
        wait_for(lambda: "too late" in conv.messages_html.value and conv.entries[-1].status == "failed")
        assert "cannot send" in conv.entries[-1].reason
    finally:
        conv.close()


def test_render_helpers():
    assert r.colour_for("sip:bob@example.test") == r.colour_for("SIP:bob@example.test ")
    assert r.initials("Bob Jones") == "BJ" and r.initials("alice") == "A" and r.initials("sip:carol@x") == "C"
    assert r.composing_text([]) == ""
    assert r.composing_text(["Bob"]) == "Bob is typing…"
    assert r.composing_text(["Bob", "Carol"]) == "Bob and Carol are typing…"
    assert r.composing_text(["Bob", "Carol", "Dave"]) == "Bob, Carol and Dave are typing…"


def test_composing_line_is_reserved(sessions):
    a, b = sessions
    pa, pb = ChatPanel(a), ChatPanel(b)
    try:
        status = pb.conversation.status_html
        assert status.value == "&nbsp;" and status.layout.height == "22px"  # the line is there while empty
        pa.conversation.composer.value = "x"
        wait_for(lambda: "typing" in status.value)
        assert status.layout.height == "22px"
    finally:
        pa.close()
        pb.close()


def test_endpoint_panel_made_while_an_invitation_rings(pair):
    alice, bob = pair
    op = alice.sessions.create("sip:bob@example.test")
    wait_for(lambda: len(bob.sessions) == 1 and bob.sessions.sessions[0].state is nim.SessionState.CONNECTING)
    pb = ChatPanel(bob)
    try:
        conv = pb.conversation
        wait_for(lambda: conv.invite_bar.layout.display is None, what="accept/decline for the ringing invitation")
        conv.accept_button.click()
        session = op.result(10)
        assert session.state is nim.SessionState.CONNECTED
        wait_for(lambda: not conv.composer.disabled and conv.invite_bar.layout.display == "none")
    finally:
        pb.close()
