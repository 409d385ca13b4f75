"""A message/cpim wrapper names an author; only a conference focus may speak for someone else. The trace's
`messages()` (live, and from a capture) believes the wrapper for what a focus relayed, never for what a peer
sends in its own name."""

from __future__ import annotations

import pytest

import notebook_im as nim
from notebook_im.im import cpim
from tests.helpers import accept_all, wait_for
from tests.security.raw import RawPeer

pytest.importorskip("pandas")


def test_a_pager_message_wrapped_in_cpim_claiming_to_be_bob_is_mallorys(server, platform, tmp_path):
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    received = alice.events(nim.MessageReceived)
    body = cpim.wrap("sip:bob@example.test", "sip:alice@example.test", b"it is me, bob", "text/plain")
    with RawPeer() as m:
        assert m.register((server.host, server.port), "mallory").startswith(b"SIP/2.0 200")
        req, _ = m.request(
            "MESSAGE",
            "sip:alice@example.test",
            from_="sip:mallory@example.test",
            to="sip:alice@example.test",
            body=body,
            content_type="message/cpim",
        )
        reply = m.exchange(req, (server.host, server.port))
        assert reply is not None and reply.startswith(b"SIP/2.0 2")
    event = received.get(timeout=5)
    assert event.participant.uri == "sip:mallory@example.test"
    frame = platform.trace.messages(source="sip")
    row = frame[frame["text"] == "it is me, bob"].iloc[0]
    assert row["sender"] == "sip:mallory@example.test"
    pcap = tmp_path / "spoof.pcap"
    platform.trace.to_pcap(pcap)
    loaded = nim.read_pcap(pcap).messages()
    assert set(loaded[loaded["text"] == "it is me, bob"]["sender"]) == {"sip:mallory@example.test"}


def test_what_a_focus_relays_is_still_attributed_to_its_author(server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=server, display_name="Alice").result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server, display_name="Bob").result(10)
    carol = platform.endpoint("sip:carol@example.test", server=server, display_name="Carol").result(10)
    accept_all(bob), accept_all(carol)
    conf = alice.sessions.create_conference([bob.uri, carol.uri]).result(20)
    wait_for(lambda: len([p for p in conf.participants if p.state is nim.ParticipantState.CONNECTED]) == 2, 10)
    conf.send("from alice, via the focus").result(5)
    wait_for(lambda: len(platform.trace.messages(source="sip").query("text == 'from alice, via the focus'")) >= 3, 5)
    frame = platform.trace.messages(source="sip")
    relayed = frame[(frame["text"] == "from alice, via the focus") & (frame["direction"] == "in")]
    assert set(relayed["owner"]) == {bob.uri, carol.uri}
    assert set(relayed["sender"]) == {"sip:alice@example.test"}
