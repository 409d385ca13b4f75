"""The conference focus is no relay: strangers cannot create or join a conference, and the focus only ever
sends requests to contacts registered with its server (attacks on raw sockets, loopback only)."""

from __future__ import annotations

import pytest

import notebook_im as nim
from notebook_im.sip import sdp
from tests.helpers import wait_for
from tests.security.raw import RawPeer, answer_challenge, header, token

SDP = sdp.build("127.0.0.1", 9, accept_types=("text/plain",))


def invite(peer: RawPeer, ruri: str, user: str, contact: str, **kw) -> tuple[bytes, str]:
    return peer.request(
        "INVITE",
        ruri,
        from_=f"sip:{user}@example.test",
        to=ruri,
        contact=contact,
        body=SDP,
        content_type="application/sdp",
        **kw,
    )


def ack_for(peer: RawPeer, ok: bytes, ruri: str, user: str, call_id: str, from_tag: str) -> bytes:
    to_tag = header(ok, "To").split("tag=")[1].split(";")[0]
    req, _ = peer.request(
        "ACK", ruri, from_=f"sip:{user}@example.test", to=ruri, call_id=call_id, from_tag=from_tag, to_tag=to_tag
    )
    return req


def test_strangers_cannot_make_the_focus_relay_to_a_victim(server):
    """The attack as reported: a stranger creates a conference whose Contact names a victim, a second
    stranger joins and talks; before the fix every MESSAGE was relayed (and retransmitted) to the victim."""
    addr = (server.host, server.port)
    with RawPeer("127.0.0.2") as victim, RawPeer() as a, RawPeer("127.0.0.3") as b:
        req, _ = invite(a, server.conference_factory, "stranger-a", f"sip:victim@{victim.hostport}")
        reply = a.exchange(req, addr)
        assert reply is not None and reply.startswith(b"SIP/2.0 403"), reply
        assert server.conferences == {}
        # even knowing a conference URI is no way in: a stranger joining one gets 403 too
        platform = nim.Platform("relay")
        try:
            alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
            bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
            bob.sessions.on_incoming(lambda inc: inc.accept())
            conf = alice.sessions.create_conference(["sip:bob@example.test"]).result(10)
            wait_for(
                lambda: (
                    len(conf.participants) == 1
                    and all(p.state is nim.ParticipantState.CONNECTED for p in conf.participants)
                ),
                10,
                "bob joined",
            )
            req, call_id = invite(b, conf.conference_uri, "stranger-b", f"sip:stranger-b@{b.hostport}")
            reply = b.exchange(req, addr)
            assert reply is not None and reply.startswith(b"SIP/2.0 403"), reply
            assert len(server.conferences[conf.conference_uri]) == 2
            # a registered user cannot point the focus at a victim either: from elsewhere than the device she
            # registered, a Contact that is not one of hers is refused
            before = server.conferences
            with RawPeer("127.0.0.4") as mallory, RawPeer("127.0.0.5") as elsewhere:
                assert mallory.register(addr, "mallory").startswith(b"SIP/2.0 200")
                req, _ = invite(elsewhere, server.conference_factory, "mallory", f"sip:victim@{victim.hostport}")
                reply = elsewhere.exchange(req, addr)
                assert reply is not None and reply.startswith(b"SIP/2.0 403"), reply
                assert server.conferences == before
            conf.send("nobody else hears this").result(5)
        finally:
            platform.shutdown()
        assert victim.drain(0.5) == []


def test_registered_user_creates_a_conference_and_gets_its_messages_at_the_registered_contact(server):
    """The legitimate path still works from raw sockets: register, create, join; the focus relays to the
    registered contact, here on a different socket from the one the INVITE came from (third-party style)."""
    addr = (server.host, server.port)
    with RawPeer() as a_sig, RawPeer() as a_media, RawPeer() as b:
        assert a_sig.register(addr, "ann", contact=f"sip:ann@{a_media.hostport}").startswith(b"SIP/2.0 200")
        assert b.register(addr, "ben").startswith(b"SIP/2.0 200")
        ftag = token()
        req, call_id = invite(a_sig, server.conference_factory, "ann", f"sip:ann@{a_media.hostport}", from_tag=ftag)
        ok = a_sig.exchange(req, addr)
        assert ok is not None and ok.startswith(b"SIP/2.0 200"), ok
        a_sig.send(ack_for(a_sig, ok, server.conference_factory, "ann", call_id, ftag), addr)
        conf_uri = header(ok, "Contact").split("<")[1].split(">")[0]
        btag = token()
        req, b_call = invite(b, conf_uri, "ben", f"sip:ben@{b.hostport}", from_tag=btag)
        ok_b = b.exchange(req, addr)
        assert ok_b is not None and ok_b.startswith(b"SIP/2.0 200"), ok_b
        b.send(ack_for(b, ok_b, conf_uri, "ben", b_call, btag), addr)
        to_tag = header(ok_b, "To").split("tag=")[1].split(";")[0]
        msg, _ = b.request(
            "MESSAGE",
            conf_uri,
            from_="sip:ben@example.test",
            to=conf_uri,
            call_id=b_call,
            from_tag=btag,
            to_tag=to_tag,
            cseq=2,
            body=b"hello ann",
            content_type="text/plain",
        )
        assert b.exchange(msg, addr).startswith(b"SIP/2.0 200")
        got = a_media.recv(3, want=b"MESSAGE ")
        assert got is not None and got.endswith(b"hello ann")


@pytest.mark.parametrize("with_users", [True])
def test_with_users_only_authenticated_registered_users_create_conferences(with_users):
    users = {"ann": "ann-pw-1", "ben": "ben-pw-2"}
    srv = nim.Server(users=users).start().result(10)
    addr = (srv.host, srv.port)
    try:
        with RawPeer() as a:
            # authenticated but not registered: 403, no state
            req, call_id = invite(a, srv.conference_factory, "ann", f"sip:ann@{a.hostport}")
            challenge = a.exchange(req, addr)
            assert challenge.startswith(b"SIP/2.0 407")
            auth = answer_challenge(challenge, "INVITE", srv.conference_factory, "ann", users["ann"])
            req, _ = invite(
                a,
                srv.conference_factory,
                "ann",
                f"sip:ann@{a.hostport}",
                call_id=call_id,
                cseq=2,
                extra=[f"Proxy-Authorization: {auth}"],
            )
            reply = a.exchange(req, addr)
            assert reply is not None and reply.startswith(b"SIP/2.0 403"), reply
            assert srv.conferences == {}
    finally:
        srv.stop()
