"""ChatPanel against spoofing, headless (the HTML and labels the widgets produce):

- Unicode bidi controls (embeddings, overrides, isolates, LRM/RLM/ALM) in a display name must not reach the
  page: a name is cleaned and isolated, so it cannot reorder "... wants to chat", the address, the typing line.
- A display name that claims another address ("Bob <sip:bob@example.test>"), uses homoglyphs or zero-width
  joiners, or equals another participant's name is always shown next to the real address; an address with
  non-ASCII letters is shown percent-escaped, so it cannot pass for an ASCII one.
- Message text keeps its own characters, inside its own block (dir="auto"), where it cannot reorder the UI.

The live part: mallory picks her display name (it is just the From header) and invites alice; alice's
ChatPanel(endpoint) is inspected at every place it shows a name."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest

import notebook_im as nim
from notebook_im.widgets import render as r
from tests.helpers import accept_all, wait_for

BIDI = [
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
    "\u200e",
    "\u200f",
    "\u061c",
]
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\U000e0041"]
NOW = datetime.now(timezone.utc)


def _entry(name: str, uri: str = "sip:mallory@evil.test", text: str = "hi") -> r.Entry:
    return r.Entry("1", "in", uri, name, text, "text/plain", NOW, "received")


def _shown(fragment: str) -> str:
    """The text a browser would show for an HTML fragment (tags dropped, entities decoded)."""
    return r.html.unescape(re.sub(r"<[^>]*>", "", fragment))


@pytest.mark.parametrize("ch", BIDI + INVISIBLE, ids=lambda c: f"U+{ord(c):04X}")
def test_bidi_and_invisible_characters_never_reach_the_page_in_a_name(ch):
    name = f"Bob{ch}\u202e tset.elpmaxe@bob"
    places = {
        "group header": r.messages_html([_entry(name)]),
        "chip": r.participant_chip(name, "sip:mallory@evil.test", "connected"),
        "typing line": r.composing_html([(name, "sip:mallory@evil.test")]),
        "label": r.who_text(name, "sip:mallory@evil.test"),
        "avatar": r.avatar(name, "sip:mallory@evil.test"),
    }
    for where, out in places.items():
        leaked = [f"U+{ord(c):04X}" for c in BIDI + INVISIBLE if c in out]
        assert not leaked, f"{where}: {leaked} reach the page"
        assert "mallory@evil.test" in _shown(out) or where == "avatar", f"{where}: the real address is not shown"
    assert '<bdi class="nim-who">' in places["group header"] and '<bdi class="nim-who">' in places["chip"]


@pytest.mark.parametrize(
    "name",
    [
        "Bob <sip:bob@example.test>",
        "bob@example.test",
        "Bob ＜sip:bob＠example.test＞",  # full-width: NFKC makes them < @ >
        "sips:bob@example.test",
        "Bob \ufe6b example.test",  # small commercial at
    ],
)
def test_a_name_that_claims_an_address_is_replaced_by_the_real_one(name):
    for out in (
        r.messages_html([_entry(name)]),
        r.participant_chip(name, "sip:mallory@evil.test", "connected"),
        r.who_text(name, "sip:mallory@evil.test"),
    ):
        shown = _shown(out)
        assert "mallory@evil.test" in shown
        assert "bob@example.test" not in shown.replace("＠", "@") and "example.test" not in shown


def test_lookalike_and_colliding_names_come_with_the_real_address():
    bob = ("Bob Jones", "sip:bob@example.test")
    spoofs = [
        ("Bob Jones", "sip:mallory@evil.test"),  # the same name as a participant
        ("Воb Jones", "sip:mallory@evil.test"),  # Cyrillic В and о
        ("B\u200dob Jones", "sip:mallory@evil.test"),  # a zero-width joiner
        ("Bob  Jones\u2028", "sip:mallory@evil.test"),
    ]  # odd white space
    real = r.who_text(*bob)
    assert real == "Bob Jones <bob@example.test>"
    for name, uri in spoofs:
        label = r.who_text(name, uri)
        assert label != real and label.endswith("<mallory@evil.test>"), label
        chip = _shown(r.participant_chip(name, uri, "connected"))
        assert "<mallory@evil.test>" in chip
    # two people of one name in a conference roster: each chip names its own address
    head = "".join(r.participant_chip(n, u, "connected") for n, u in [bob, spoofs[0]])
    assert "<bob@example.test>" in _shown(head) and "<mallory@evil.test>" in _shown(head)


def test_an_address_with_lookalike_letters_is_shown_escaped():
    cyrillic = "sip:b\u043eb@example.test"  # bоb with a Cyrillic о
    assert r.address(cyrillic) == "b%D0%BEb@example.test"
    assert r.address("sip:bob@example.test;transport=tcp") == "bob@example.test"
    assert r.address("sip:b\u202eob@example.test") == "b%E2%80%AEob@example.test"
    assert "bob@example.test" not in _shown(r.messages_html([_entry("Bob", cyrillic)]))
    long = "sip:bob@example.test." + "a" * 500 + ".evil.test"
    assert r.address(long).endswith(".evil.test") and len(r.address(long)) <= r.MAX_ADDRESS


def test_message_text_stays_inside_its_own_block():
    text = "pay to \u202e1234 5678\u202c now \u2067x"
    out = r.messages_html([_entry("Mallory", text=text)])
    body = re.search(r'<div class="nim-body" dir="auto">(.*?)</div>', out)
    assert body is not None and "\u202e" in body.group(1)  # the sender's text is what they wrote...
    outside = out.replace(body.group(0), "")
    assert not any(c in outside for c in BIDI)  # ...and nothing of it is outside its block


def test_a_spoofing_peer_in_a_live_panel(server, platform):
    """mallory chooses a display name with a bidi override that would turn "(sip:mallory@evil.test) wants to
    chat" around, and claims bob's name and address; alice's panel shows mallory's real address everywhere."""
    spoof = "Bob Jones <sip:bob@example.test>\u202e"
    alice = platform.endpoint("sip:alice@example.test", server=server, display_name="Alice Smith").result(10)
    mallory = platform.endpoint("sip:mallory@evil.test", server=server, display_name=spoof).result(10)
    other = platform.endpoint("sip:eve@evil.test", server=server, display_name="Al\u200dice \u2067Smith").result(10)
    panel = nim.ChatPanel(alice)
    try:
        session = mallory.sessions.create("sip:alice@example.test")
        wait_for(lambda: len(panel.conversations) == 1, what="mallory's invitation in alice's panel")
        conv = panel.conversation
        wait_for(lambda: conv.invite_bar.layout.display is None, what="the invitation bar")
        invite = conv.invite_text.value
        assert _shown(invite) == "mallory@evil.test wants to chat"  # the claimed name is dropped, nothing reversed
        assert not any(c in invite for c in BIDI)
        label = panel.conv_list.children[0].description
        assert label.startswith("mallory@evil.test") and "bob@example.test" not in label
        conv.accept_button.click()
        s = session.result(10)
        wait_for(lambda: not conv.composer.disabled, what="connected")
        s.send("I am Bob").result(10)
        wait_for(lambda: "I am Bob" in conv.messages_html.value, what="the message")
        conv.flush()
        for value in (conv.messages_html.value, conv.header_html.value, conv.composer.placeholder):
            assert not any(c in value for c in BIDI + INVISIBLE)
            assert "mallory@evil.test" in _shown(value) and "bob@example.test" not in _shown(value)
        s.start_composing().result(5)
        wait_for(lambda: "typing" in conv.status_html.value, what="typing line")
        assert _shown(conv.status_html.value).startswith("mallory@evil.test is typing")
        # a second peer: eve's name imitates alice's own with a zero-width joiner and an isolate
        accept_all(alice)
        eve = other.sessions.create("sip:alice@example.test").result(10)
        wait_for(lambda: len(panel.conversations) == 2, what="eve's conversation")
        labels = [b.description for b in panel.conv_list.children]
        assert any(lab.startswith("Alice Smith <eve@evil.test>") for lab in labels), labels
        eve.terminate().result(5)
        s.terminate().result(5)
    finally:
        panel.close()


def test_ladder_labels_drop_bidi_and_invisible_characters():
    """A reason phrase or a body preview a peer chose cannot reorder the labels of a ladder diagram."""
    from notebook_im.trace.ladder import arrow_from_raw

    resp = (
        "SIP/2.0 486 Busy \u202eereh ton\u202c\u200b\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCall-ID: c\r\n"
        "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    arrow = arrow_from_raw(0.0, "in", ("127.0.0.1", 1), ("127.0.0.1", 2), resp, "me")
    assert arrow.label == "486 Busy ereh ton"
    msg = (
        b"MESSAGE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK2\r\nCall-ID: c\r\nCSeq: 2 MESSAGE\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 9\r\n\r\n"
    ) + "a\u2066b\u2069c".encode()
    assert arrow_from_raw(0.0, "in", ("127.0.0.1", 1), ("127.0.0.1", 2), msg, "me").preview == '"abc"'
