"""RFC 3261 §17 state machines, driven by hand: no sockets, no clock."""

import pytest

from notebook_im.sip import LocalProtocolError, Request
from notebook_im.sip.message import make_response
from notebook_im.sip.parser import parse_message
from notebook_im.sip.transaction import (
    INVITE_CLIENT,
    INVITE_SERVER,
    NON_INVITE_CLIENT,
    NON_INVITE_SERVER,
    T1,
    T2,
    T4,
    ClientTransaction,
    Deliver,
    ServerTransaction,
    StartTimer,
    State,
    StopTimer,
    Transmit,
    client_key,
    server_key,
)


def request(method="MESSAGE", branch="z9hG4bKtest"):
    return parse_message(
        f"{method} sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n"
        f"From: <sip:alice@example.test>;tag=a\r\nTo: <sip:bob@example.test>\r\nCall-ID: c1\r\n"
        f"CSeq: 1 {method}\r\nContact: <sip:alice@127.0.0.1:5070>\r\nContent-Length: 0\r\n\r\n".encode()
    )


def response(req, status):
    return make_response(req, status, to_tag="b")


def kinds(actions):
    return [type(a).__name__ for a in actions]


def timers(actions):
    return {a.name: a.delay for a in actions if isinstance(a, StartTimer)}


def test_non_invite_client_retransmits_with_doubling_capped_at_t2_then_times_out():
    req = request()
    t = ClientTransaction(req)
    first = t.start()
    assert isinstance(first[0], Transmit) and timers(first) == {"E": T1, "F": 64 * T1}
    delays = []
    for _ in range(6):
        actions = t.timer("E")
        assert isinstance(actions[0], Transmit)
        delays.append(timers(actions)["E"])
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    out = t.timer("F")
    assert kinds(out) == ["Timeout", "Terminated"] and t.terminated


def test_non_invite_client_final_response_and_absorbs_retransmissions():
    req = request()
    t = ClientTransaction(req)
    t.start()
    ok = response(req, 200)
    out = t.receive(ok)
    assert [a for a in out if isinstance(a, Deliver)] == [Deliver(ok)]
    assert StopTimer("E") in out and timers(out) == {"K": T4}
    assert t.receive(ok) == []  # a retransmitted final response is absorbed
    assert kinds(t.timer("K")) == ["Terminated"]


def test_non_invite_client_proceeding_retransmits_every_t2():
    req = request()
    t = ClientTransaction(req)
    t.start()
    t.receive(response(req, 100))
    assert t.state is State.PROCEEDING
    assert timers(t.timer("E")) == {"E": T2}


def test_reliable_transport_has_no_retransmissions_and_immediate_cleanup():
    req = request()
    t = ClientTransaction(req, reliable=True)
    assert timers(t.start()) == {"F": 32.0}
    out = t.receive(response(req, 200))
    assert timers(out) == {"K": 0.0}


def test_invite_client_timer_a_doubles_without_cap_and_b_times_out():
    inv = request("INVITE")
    t = ClientTransaction(inv)
    assert timers(t.start()) == {"A": T1, "B": 64 * T1}
    delays = [timers(t.timer("A"))["A"] for _ in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert kinds(t.timer("B")) == ["Timeout", "Terminated"]


def test_invite_client_error_response_generates_ack_and_reacks_retransmissions():
    inv = request("INVITE")
    t = ClientTransaction(inv)
    t.start()
    busy = response(inv, 486)
    out = t.receive(busy)
    acks = [a.message for a in out if isinstance(a, Transmit)]
    assert len(acks) == 1 and acks[0].method == "ACK"
    ack = acks[0]
    assert ack.top_via.branch == inv.top_via.branch and ack.cseq.number == 1 and ack.to.tag == "b"
    assert [a for a in out if isinstance(a, Deliver)] == [Deliver(busy)]
    again = t.receive(busy)
    assert kinds(again) == ["Transmit"] and again[0].message.method == "ACK"
    assert timers(out) == {"D": 32.0}


def test_invite_client_2xx_goes_to_accepted_and_retransmitted_2xx_reach_tu():
    inv = request("INVITE")
    t = ClientTransaction(inv)
    t.start()
    t.receive(response(inv, 180))
    ok = response(inv, 200)
    out = t.receive(ok)
    assert t.state is State.ACCEPTED and Deliver(ok) in out and timers(out) == {"M": 32.0}
    assert t.receive(ok) == [Deliver(ok)]  # RFC 6026: the TU re-sends its ACK
    assert kinds(t.timer("M")) == ["Terminated"]


def test_ack_has_no_client_transaction():
    with pytest.raises(LocalProtocolError):
        ClientTransaction(request("ACK"))


def test_non_invite_server_absorbs_retransmission_and_resends_final():
    req = request()
    t = ServerTransaction(req)
    assert t.start() == [Deliver(req)]
    assert t.receive(req) == []  # nothing sent yet: absorbed, not delivered again
    ok = response(req, 200)
    out = t.respond(ok)
    assert out[0] == Transmit(ok) and timers(out) == {"J": 32.0}
    assert t.receive(req) == [Transmit(ok)]
    with pytest.raises(LocalProtocolError):
        t.respond(response(req, 500))
    assert kinds(t.timer("J")) == ["Terminated"]


def test_invite_server_sends_100_and_retransmits_error_until_ack():
    inv = request("INVITE")
    t = ServerTransaction(inv)
    out = t.start()
    assert isinstance(out[0], Transmit) and out[0].message.status == 100 and out[1] == Deliver(inv)
    assert t.receive(inv)[0].message.status == 100  # retransmitted INVITE: resend the provisional
    busy = response(inv, 486)
    out = t.respond(busy)
    assert timers(out) == {"G": T1, "H": 32.0}
    g = [timers(t.timer("G"))["G"] for _ in range(5)]
    assert g == [1.0, 2.0, 4.0, 4.0, 4.0]
    ack = Request("ACK", inv.uri, inv.headers.copy())
    out = t.receive(ack)
    assert t.state is State.CONFIRMED and timers(out) == {"I": T4}
    assert kinds(t.timer("I")) == ["Terminated"]


def test_invite_server_timer_h_reports_lost_ack():
    inv = request("INVITE")
    t = ServerTransaction(inv)
    t.start()
    t.respond(response(inv, 603))
    assert kinds(t.timer("H")) == ["Timeout", "Terminated"]


def test_invite_server_2xx_accepted_absorbs_retransmitted_invite():
    inv = request("INVITE")
    t = ServerTransaction(inv)
    t.start()
    ok = response(inv, 200)
    out = t.respond(ok)
    assert t.state is State.ACCEPTED and timers(out) == {"L": 32.0}
    assert t.receive(inv) == []
    assert kinds(t.timer("L")) == ["Terminated"]


def test_tables_only_name_existing_actions():
    from notebook_im.sip.transaction import _action_func

    for table, cls in (
        (INVITE_CLIENT, ClientTransaction),
        (NON_INVITE_CLIENT, ClientTransaction),
        (INVITE_SERVER, ServerTransaction),
        (NON_INVITE_SERVER, ServerTransaction),
    ):
        cls(request("INVITE" if table in (INVITE_CLIENT, INVITE_SERVER) else "MESSAGE"))  # the class builds
        for (_state, _event), (_next, names) in table.items():
            for name in names:
                assert callable(_action_func(cls, name)), name


def test_matching_keys():
    req = request("INVITE")
    ack = Request("ACK", req.uri, req.headers.copy())
    ack.headers.set("CSeq", "1 ACK")
    assert server_key(ack) == server_key(req)  # ACK for a non-2xx matches its INVITE transaction
    resp = response(req, 180)
    assert client_key(resp) == ClientTransaction(req).key
    other = request("MESSAGE", branch="z9hG4bKother")
    assert server_key(other) != server_key(request("MESSAGE"))
