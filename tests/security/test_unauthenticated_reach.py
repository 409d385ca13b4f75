"""With `users=`, nothing from an unauthenticated sender reaches a registered user: in-dialog requests pass
only within dialogs the server record-routed (its Record-Route carries a token of the dialog), everything else
is challenged (407) or, for an ACK that cannot be challenged, dropped and counted."""

from __future__ import annotations

import time

import pytest

import notebook_im as nim
from tests.helpers import accept_all, wait_for
from tests.security.raw import RawPeer, header, token

USERS = {"alice": "alice-pw-1", "bob": "bob-pw-2"}


@pytest.fixture
def stack():
    srv = nim.Server(users=USERS).start().result(10)
    platform = nim.Platform("reach")
    alice = platform.endpoint("sip:alice@example.test", server=srv, password=USERS["alice"]).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=srv, password=USERS["bob"]).result(10)
    yield srv, platform, alice, bob
    platform.shutdown()
    srv.stop()


def bob_got(platform, bob, call_id: str) -> list[bytes]:
    return [
        r.raw
        for r in platform.trace.sip_records()
        if r.owner == bob.uri and r.direction == "in" and f"Call-ID: {call_id}".encode() in r.raw
    ]


def test_unauthenticated_in_dialog_shapes_do_not_reach_bob(stack):
    srv, platform, alice, bob = stack
    addr = (srv.host, srv.port)
    contact = bob.contact.split("@", 1)[1]  # 127.0.0.1:port, no user part
    attempts = []
    with RawPeer("127.0.0.7") as m:
        frm, to = "sip:mallory@example.test", "sip:bob@example.test"
        # 1. OPTIONS with a To tag, Request-URI = bob's contact address
        req, cid = m.request("OPTIONS", f"sip:{contact}", from_=frm, to=to, to_tag=token())
        reply = m.exchange(req, addr)
        assert reply is not None and reply.startswith(b"SIP/2.0 407"), reply
        attempts.append(cid)
        # 2. OPTIONS and MESSAGE routed through the server to bob's contact
        for method in ("OPTIONS", "MESSAGE", "BYE", "INFO"):
            req, cid = m.request(
                method,
                f"sip:bob@{contact}",
                from_=frm,
                to=to,
                to_tag=token(),
                extra=[f"Route: <sip:{srv.host}:{srv.port};lr>", f"Route: <sip:{contact};lr>"],
                body=b"hi bob" if method in ("MESSAGE", "INFO") else b"",
                content_type="text/plain" if method in ("MESSAGE", "INFO") else None,
            )
            reply = m.exchange(req, addr)
            assert reply is not None and reply.startswith(b"SIP/2.0 407"), (method, reply)
            attempts.append(cid)
        # 3. a forged dialog token in a Route naming the server
        req, cid = m.request(
            "MESSAGE",
            f"sip:bob@{contact}",
            from_=frm,
            to=to,
            to_tag=token(),
            extra=[f"Route: <sip:{srv.host}:{srv.port};transport=udp;lr;dlg=00112233445566778899>"],
            body=b"forged",
            content_type="text/plain",
        )
        reply = m.exchange(req, addr)
        assert reply is not None and reply.startswith(b"SIP/2.0 407"), reply
        attempts.append(cid)
        # 4. ACKs (with a body) to the contact address, plain and routed: no answer, dropped and counted
        dropped = srv.stats["dropped"]
        for extra in ([], [f"Route: <sip:{contact};lr>"], [f"Route: <sip:{srv.host}:{srv.port};lr>"]):
            req, cid = m.request(
                "ACK",
                f"sip:{contact}",
                from_=frm,
                to=to,
                to_tag=token(),
                extra=extra,
                body=b"ack body",
                content_type="text/plain",
            )
            m.send(req, addr)
            attempts.append(cid)
        assert m.drain(0.5) == []
        wait_for(lambda: srv.stats["dropped"] >= dropped + 3, 2, "the ACKs dropped and counted")
    time.sleep(0.2)
    for cid in attempts:
        assert bob_got(platform, bob, cid) == [], cid


def test_a_real_session_passes_without_credentials_in_dialog(stack):
    """The legitimate path: alice's session with bob; its in-dialog requests carry the dialog token in their
    Route, pass without a challenge, and carry no credentials of alice's (bob must never see them)."""
    srv, platform, alice, bob = stack
    sessions = accept_all(bob)
    session = alice.sessions.create("sip:bob@example.test").result(10)
    for i in range(3):
        assert session.send(f"in dialog {i}").result(5).status == 200
    wait_for(lambda: sessions and len(sessions[0].messages) == 3, 5, "bob got them")
    assert sessions[0].send("and back").result(5).status == 200
    session.terminate().result(5)
    records = platform.trace.sip_records()
    cid = session.dialog.call_id
    in_dialog_out = [
        r.raw
        for r in records
        if r.direction == "out"
        and f"Call-ID: {cid}".encode() in r.raw
        and not r.raw.startswith((b"SIP/2.0", b"INVITE", b"ACK"))
    ]
    assert in_dialog_out and all(b";dlg=" in r for r in in_dialog_out)
    challenged = [
        r.raw
        for r in records
        if r.direction == "in" and r.raw.startswith(b"SIP/2.0 407") and f"Call-ID: {cid}".encode() in r.raw
    ]
    assert [header(c, "CSeq") for c in challenged] == ["1 INVITE"], "only the INVITE is challenged"
    bob_in = [r.raw for r in records if r.owner == bob.uri and r.direction == "in"]
    assert not any(b"uthorization:" in r for r in bob_in)
