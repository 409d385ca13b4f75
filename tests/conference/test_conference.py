"""Conferences through the embedded server's focus: 3 and 5 notebook_im participants, relay order and
exactly-once delivery, roster NOTIFYs (RFC 4575), composing, invitations, leave, crash, escalation, bursts."""

from __future__ import annotations

import re
import time

import pytest

import notebook_im as nim
from notebook_im import testing
from notebook_im.im import conference_info as ci
from notebook_im.runtime import runtime
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(120)


def texts_from(ep, sender: str) -> list[str]:
    return [e.text for e in ep.received if e.participant.uri == sender]


def roster(session) -> set[str]:
    return {p.uri for p in session.participants if p.state is nim.ParticipantState.CONNECTED}


def start(people, n: int, transport: str = "udp"):
    eps = people(n, transport)
    conf = eps[0].sessions.create_conference([e.uri for e in eps[1:]]).result(20)
    for e in eps[1:]:
        wait_for(lambda e=e: e.accepted and e.accepted[0].state is nim.SessionState.CONNECTED, 5, f"{e.uri} joined")
    sessions = [conf] + [e.accepted[0] for e in eps[1:]]
    everyone = {e.uri for e in eps}
    for e, s in zip(eps, sessions):
        wait_for(lambda e=e, s=s: roster(s) == everyone - {e.uri}, 5, f"{e.uri}'s roster")
    return eps, sessions


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_three_participants(people, server, transport: str) -> None:
    eps, sessions = start(people, 3, transport)
    alice, bob, carol = eps
    conf = sessions[0]
    assert conf.is_conference and conf.state is nim.SessionState.CONNECTED and not conf.failed_invitations
    assert re.fullmatch(r"sip:conf-[0-9a-f]+@127\.0\.0\.1:\d+", conf.conference_uri)
    for _ep, s in zip(eps[1:], sessions[1:]):
        assert s.is_conference and s.is_incoming and s.conference_uri == conf.conference_uri
    assert {p.name for p in conf.participants} == {"Bob", "Carol"}
    # each one says something; every other participant gets it once, from the original sender
    for s, e in zip(sessions, eps):
        s.send(f"hello from {e.uri}").result(5)
    for e in eps:
        wait_for(lambda e=e: len(e.received) == 2, 5, f"{e.uri} got both")
        senders = sorted(m.participant.uri for m in e.received)
        assert senders == sorted({x.uri for x in eps} - {e.uri})  # never back to the sender
        for m in e.received:
            assert m.text == f"hello from {m.participant.uri}"
            assert m.session.is_conference and m.participant.session is m.session
            assert m.participant in m.session.participants
    # the relayed MESSAGE carries the original sender in a message/cpim wrapper
    raw = [r.raw for r in server.trace.sip_records() if r.direction == "out" and r.raw.startswith(b"MESSAGE ")]
    assert any(b"Content-Type: message/cpim" in r and b'From: "Alice" <sip:alice@example.test>' in r for r in raw)
    # composing, per participant
    events = []
    carol.on(nim.ComposingChanged, events.append)
    sessions[1].start_composing().result(5)
    wait_for(lambda: any(e.composing and e.participant.uri == bob.uri for e in events), 5, "carol sees bob typing")
    assert [p.name for p in sessions[2].participants if p.composing] == ["Bob"]
    sessions[1].send("done typing").result(5)
    wait_for(lambda: not any(p.composing for p in sessions[2].participants), 5, "bob's composing cleared")
    for s in sessions:
        s.terminate().result(5)
    wait_for(lambda: not server.conferences, 5, "the conference ended")


def test_five_participants_order_and_exactly_once(people, server) -> None:
    eps, sessions = start(people, 5)
    count = 10
    ops = []
    for i in range(count):
        for s, e in zip(sessions, eps):
            ops.append(s.send(f"{e.uri} #{i}"))
    for op in ops:
        op.result(20)
    for e in eps:
        wait_for(lambda e=e: len(e.received) == 4 * count, 20, f"{e.uri} got everything")
        for other in eps:
            got = texts_from(e, other.uri)
            assert got == ([] if other is e else [f"{other.uri} #{i}" for i in range(count)])
    assert server.focus.stats["relayed"] == 5 * 4 * count


def test_roster_notify_contents(people, server, platform) -> None:
    eps, sessions = start(people, 3)
    alice = eps[0]
    notifies = [
        r.raw
        for r in platform.trace.sip_records()
        if r.owner == alice.uri and r.direction == "in" and r.raw.startswith(b"NOTIFY ")
    ]
    assert notifies
    docs = []
    for raw in notifies:
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"Event: conference" in head and b"Content-Type: application/conference-info+xml" in head
        assert b"Subscription-State: active;expires=" in head
        docs.append(ci.parse(body))
    assert docs[0].state == "full" and [u.entity for u in docs[0].users] == [alice.uri]
    assert docs[0].users[0].endpoints[0].joining_method == "focus-owner"
    assert all(d.state == "partial" for d in docs[1:])
    assert [d.version for d in docs] == list(range(docs[0].version, docs[0].version + len(docs)))
    statuses = [(u.entity, u.status) for d in docs[1:] for u in d.users]
    for e in eps[1:]:
        assert (e.uri, "dialing-out") in statuses and (e.uri, "connected") in statuses
        assert statuses.index((e.uri, "dialing-out")) < statuses.index((e.uri, "connected"))
    # a participant that subscribes later gets the full state: all three, connected, with display names
    bob_docs = [
        ci.parse(r.raw.partition(b"\r\n\r\n")[2])
        for r in platform.trace.sip_records()
        if r.owner == eps[1].uri and r.direction == "in" and r.raw.startswith(b"NOTIFY ")
    ]
    full = bob_docs[0]
    assert full.state == "full" and {u.entity for u in full.users} >= {alice.uri, eps[1].uri}
    assert {u.display_text for u in full.users if u.entity == alice.uri} == {"Alice"}
    # leaving: a partial document with the user disconnected (departed)
    carol_session = sessions[2]
    carol_session.terminate().result(5)
    wait_for(lambda: roster(sessions[0]) == {eps[1].uri}, 5, "carol left alice's roster")

    def departed():
        for r in platform.trace.sip_records():
            if r.owner == alice.uri and r.direction == "in" and r.raw.startswith(b"NOTIFY "):
                d = ci.parse(r.raw.partition(b"\r\n\r\n")[2])
                for u in d.users:
                    if u.entity == eps[2].uri and u.status == "disconnected":
                        return u.endpoints[0].disconnection_method

    assert departed() == "departed"


def test_leave_and_end(people, server) -> None:
    eps, sessions = start(people, 3)
    removed = {e.uri: [] for e in eps}
    for e, s in zip(eps, sessions):
        s.on(nim.ParticipantRemoved, lambda ev, e=e: removed[e.uri].append(ev.participant.uri))
    sessions[1].terminate().result(5)  # bob leaves (BYE)
    for e in (eps[0], eps[2]):
        wait_for(lambda e=e: removed[e.uri] == [eps[1].uri], 5, f"{e.uri} told bob left")
    assert roster(sessions[0]) == {eps[2].uri} and roster(sessions[2]) == {eps[0].uri}
    sessions[0].send("still here?").result(5)
    wait_for(lambda: texts_from(eps[2], eps[0].uri) == ["still here?"], 5, "carol still gets messages")
    assert texts_from(eps[1], eps[0].uri) == []
    assert len(server.conferences) == 1
    sessions[0].terminate().result(5)
    wait_for(lambda: removed[eps[2].uri] == [eps[1].uri, eps[0].uri], 5, "carol told alice left")
    sessions[2].terminate().result(5)
    wait_for(lambda: not server.conferences, 5, "the conference ended with its last participant")
    focus = server.focus
    assert runtime().run_sync(lambda: (len(focus.conferences), len(focus.dialogs))) == (0, 0)
    assert focus.stats["conferences_ended"] == 1


@pytest.mark.slow
def test_crashed_participant_is_removed(people, server) -> None:
    eps, sessions = start(people, 3)
    removed = []
    sessions[0].on(nim.ParticipantRemoved, lambda ev: removed.append(ev.participant.uri))
    # carol's process "crashes": her sockets close, no BYE, no un-REGISTER
    testing.crash(eps[2]).result(5)
    sessions[1].send("anyone there?").result(5)  # the focus's relay to carol gets no answer
    wait_for(lambda: removed == [eps[2].uri], 15, "alice told carol vanished")
    wait_for(lambda: roster(sessions[1]) == {eps[0].uri}, 5, "bob's roster without carol")
    assert texts_from(eps[0], eps[1].uri) == ["anyone there?"]
    sessions[0].send("just us").result(5)
    wait_for(lambda: texts_from(eps[1], eps[0].uri) == ["just us"], 5, "bob still gets alice")
    assert server.focus.stats["failures"] >= 1


def test_invite_later_decline_and_unknown(people, server, platform) -> None:
    alice, bob, carol = people(3)
    dave = platform.endpoint("sip:dave@example.test", server=server.uri).result(10)
    conf = alice.sessions.create_conference([bob.uri], subject="plans").result(20)
    wait_for(lambda: bob.accepted and bob.accepted[0].state is nim.SessionState.CONNECTED, 5, "bob in")
    assert bob.accepted[0].subject == "plans" and conf.subject == "plans"
    added = []
    conf.on(nim.ParticipantAdded, lambda ev: added.append(ev.participant.uri))
    p = conf.invite(carol.uri).result(20)
    assert p.uri == carol.uri and p.state is nim.ParticipantState.CONNECTED and carol.uri in added
    incoming = []
    dave.sessions.on_incoming(lambda inv: (incoming.append(inv), inv.reject(486)))
    with pytest.raises(nim.RequestFailed) as err:
        conf.invite(dave.uri).result(20)
    assert err.value.status == 486
    assert incoming and incoming[0].session.is_conference and incoming[0].inviter.uri == alice.uri
    with pytest.raises(nim.RequestFailed) as err:
        conf.invite("sip:nobody@example.test").result(10)
    assert err.value.status == 404
    assert roster(conf) == {bob.uri, carol.uri}
    assert conf.add_participant(carol.uri).result(5).uri == carol.uri  # already in: resolves at once


def test_escalate_two_party_session_keeps_history(people, server) -> None:
    alice, bob, carol = people(3)
    two = alice.sessions.create(bob.uri).result(10)
    wait_for(lambda: bob.accepted and bob.accepted[0].state is nim.SessionState.CONNECTED, 5, "bob in")
    two.send("just the two of us").result(5)
    bob.accepted[0].send("for now").result(5)
    with pytest.raises(nim.ConferenceRequired, match=r"session\.escalate"):
        two.add_participant(carol.uri)
    conf = two.escalate([carol.uri]).result(20)
    assert conf.is_conference and conf.escalated_from is two and two.escalated_to is conf
    assert [m.text for m in conf.messages] == ["just the two of us", "for now"]
    wait_for(lambda: roster(conf) == {bob.uri, carol.uri}, 5, "bob and carol in the conference")
    wait_for(lambda: two.state is nim.SessionState.DISCONNECTED, 5, "the two-party session ended")
    assert "conference" in two.terminate_reason
    # bob's client swapped sessions by itself (Replaces), keeping the history
    wait_for(lambda: len(bob.accepted) == 2 and bob.accepted[1].state is nim.SessionState.CONNECTED, 5, "bob moved")
    bob_conf = bob.accepted[1]
    assert bob_conf.is_conference and bob_conf.escalated_from is bob.accepted[0]
    assert [m.text for m in bob_conf.messages] == ["just the two of us", "for now"]
    wait_for(lambda: bob.accepted[0].state is nim.SessionState.DISCONNECTED, 5, "bob's two-party session ended")
    carol_conf = carol.accepted[0]
    assert carol_conf.messages == [] and carol_conf.escalated_from is None
    conf.send("welcome carol").result(5)
    for e in (bob, carol):
        wait_for(lambda e=e: texts_from(e, alice.uri)[-1:] == ["welcome carol"], 5, f"{e.uri} got it")
    assert [m.text for m in bob_conf.messages][-1] == "welcome carol"


@pytest.mark.timeout(180)
def test_burst_of_50_from_every_participant(people, server) -> None:
    n, count = 5, 50
    eps, sessions = start(people, n)
    started = time.monotonic()
    ops = [s.send(f"{e.uri} {i}") for i in range(count) for s, e in zip(sessions, eps)]
    for op in ops:
        op.result(60)
    for e in eps:
        wait_for(lambda e=e: len(e.received) == (n - 1) * count, 60, f"{e.uri} got the burst")
        for other in eps:
            if other is not e:
                assert texts_from(e, other.uri) == [f"{other.uri} {i}" for i in range(count)]
    elapsed = time.monotonic() - started
    assert elapsed < 60
    for s in sessions:
        s.terminate().result(5)
    wait_for(lambda: not server.conferences, 5, "ended")


def test_events_for_traces_and_panel(people, server, platform) -> None:
    eps, sessions = start(people, 3)
    sessions[1].send("for the record").result(5)
    wait_for(lambda: texts_from(eps[2], eps[1].uri) == ["for the record"], 5, "carol got it")
    recs = [r for r in platform.trace.event_records() if r.owner == eps[2].uri]
    assert recs  # MessageReceived is recorded with the original sender as participant
    ev = [m for m in eps[2].received if m.text == "for the record"][0]
    assert ev.participant.uri == eps[1].uri and ev.participant.name == "Bob" and ev.recipient == eps[2].uri
    # what a chat panel shows: the roster and "A and B are typing…"
    sessions[0].start_composing().result(5)
    sessions[1].start_composing().result(5)
    wait_for(lambda: sorted(p.name for p in sessions[2].participants if p.composing) == ["Alice", "Bob"], 5, "typing")
    assert sessions[2].remote.name.startswith("Conference")


def test_trace_messages_frame_names_the_original_sender(people, server, platform) -> None:
    eps, sessions = start(people, 3)
    sessions[1].send("from bob").result(5)
    sessions[0].send("from alice").result(5)
    wait_for(lambda: len(eps[2].received) == 2, 5, "carol got both")
    df = platform.trace.messages(owner=eps[2].uri)
    inbound = df[df["direction"] == "in"]
    assert sorted(zip(inbound["sender"], inbound["text"])) == [(eps[0].uri, "from alice"), (eps[1].uri, "from bob")]
    # rebuilt from the SIP messages alone (as from a pcap): the CPIM wrapper still names the original sender
    wire = platform.trace.messages(owner=eps[2].uri, source="sip")
    wire_in = wire[wire["direction"] == "in"]
    assert sorted(zip(wire_in["sender"], wire_in["text"])) == [(eps[0].uri, "from alice"), (eps[1].uri, "from bob")]


def _shown(fragment: str) -> str:
    """The text a browser shows for an HTML fragment."""
    import html
    import re

    return html.unescape(re.sub(r"<[^>]*>", "", fragment))


def test_chat_panel_shows_roster_and_who_is_typing(people, server) -> None:
    from notebook_im.widgets.chat import ChatPanel

    eps, sessions = start(people, 3)
    panel = ChatPanel(sessions[2])  # carol's window on the conference
    conv = panel.conversation
    try:
        conv.flush()
        assert "Alice" in conv.header_html.value and "Bob" in conv.header_html.value
        sessions[0].start_composing().result(5)
        sessions[1].start_composing().result(5)
        wait_for(
            lambda: (
                conv.flush(),
                _shown(conv.status_html.value).startswith(
                    "Alice <alice@example.test> and Bob <bob@example.test> are typing"
                ),
            )[1],
            5,
            "typing line",
        )
        sessions[1].terminate().result(5)  # bob leaves: his chip goes
        wait_for(lambda: (conv.flush(), "Bob" not in conv.header_html.value)[1], 5, "bob's chip removed")
        assert _shown(conv.status_html.value).startswith("Alice <alice@example.test> is typing")
        sessions[0].send("hi carol").result(5)
        wait_for(lambda: (conv.flush(), "hi carol" in conv.messages_html.value)[1], 5, "message shown")
        assert "Alice" in conv.messages_html.value
    finally:
        panel.close()


def test_escalation_the_peer_refuses_keeps_the_two_party_session(server, platform) -> None:
    alice = platform.endpoint("sip:alice@example.test", server=server.uri).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server.uri).result(10)
    bob.sessions.on_incoming(lambda inc: inc.reject(603) if inc.session.is_conference else inc.accept())
    two = alice.sessions.create(bob.uri).result(10)
    two.send("before").result(5)
    with pytest.raises(nim.RequestFailed) as err:
        two.escalate(["sip:carol@example.test"]).result(20)  # carol is unknown too
    assert err.value.status == 603
    assert two.state is nim.SessionState.CONNECTED and two.escalated_to is None
    two.send("still two of us").result(5)
    wait_for(lambda: not server.conferences, 5, "the conference was dropped")
