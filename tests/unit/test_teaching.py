"""notebook_im.teaching: check() (right, wrong with a hint, "no answer yet", bad answers said so), numbered flows
(hops, numbering on, a datagram recorded at both ends drawn once), the Middlebox rules on raw bytes, a RawPeer
through the embedded server (a silent one, one that refuses is-composing), and the reference-flow comparison.
`import notebook_im` does not import it, and importing it imports neither pandas nor ipywidgets."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import notebook_im as nim
from notebook_im import teaching
from notebook_im.teaching import Flow, Step, check


def test_import_stays_light():
    code = (
        "import sys, notebook_im as nim; assert 'notebook_im.teaching' not in sys.modules; "
        "from notebook_im import teaching; assert nim.teaching is teaching; "
        "print('pandas' in sys.modules, 'ipywidgets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


@pytest.fixture
def chat(server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    bob.sessions.on_incoming(lambda invitation: invitation.accept())
    flow = Flow(platform.trace, names={server: "proxy"})
    registered = flow.new()
    connected = bob.wait_for(nim.SessionStateChanged, predicate=lambda e: e.state is nim.SessionState.CONNECTED)
    session = alice.sessions.create("sip:bob@example.test").result(10)
    connected.result(5)
    return platform, flow, registered, session


def test_flow_numbers_hops_and_goes_on(chat):
    platform, flow, registered, _session = chat
    assert [s.number for s in registered] == [1, 2, 3, 4]
    assert [(s.src, s.dst, s.label) for s in registered[:2]] == [
        ("alice", "proxy", "REGISTER"),
        ("proxy", "alice", "200 OK"),
    ]
    steps = flow.new()
    assert steps[0].number == 5 and flow[5] is steps[0]
    invite_at_bob = flow.find("INVITE", dst="bob")
    assert len(invite_at_bob.headers("Via")) == 2 and invite_at_bob.header("Max-Forwards") == "69"
    assert invite_at_bob.branch.startswith("z9hG4bK") and invite_at_bob.cseq == 1 and invite_at_bob.to_tag is None
    ok = flow.find("200", dst="alice", method="INVITE")
    assert ok.status == 200 and ok.method == "INVITE" and ok.to_tag and "m=message" in ok.body
    assert flow.find("ACK", src="alice").branch != flow.find("INVITE", src="alice").branch
    assert "F5 " in flow.summary() and repr(flow.find("ACK")).startswith("<F")
    with pytest.raises(KeyError, match="no 'BYE'"):
        flow.find("BYE")
    assert flow.new() == []


def test_flow_labels_what_a_message_carries(chat):
    _platform, flow, _registered, session = chat
    flow.skip()
    receipt = session.wait_for(nim.MessageDeliveryNotified)
    session.start_composing().result(5)
    session.send("hello bob").result(5)
    receipt.result(5)
    time.sleep(0.1)
    listing = Flow.format(flow.new(), full=False)
    assert "(composing: active)" in listing and '"hello bob"' in listing and "(receipt: delivered)" in listing


def test_a_datagram_recorded_at_both_ends_is_one_step():
    trace = nim.Trace()
    raw = b"MESSAGE sip:bob@127.0.0.1:6000 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bK1\r\nCSeq: 2 MESSAGE\r\n\r\n"
    a, b = ("127.0.0.1", 5000), ("127.0.0.1", 6000)
    for _ in range(2):  # sent twice (a retransmission), each received
        trace.record_sip("out", "udp", a, b, raw, "sip:alice@example.test")
        trace.record_sip("in", "udp", b, a, raw, "sip:bob@example.test")
    steps = Flow(trace).new()
    assert [(s.number, s.src, s.dst) for s in steps] == [(1, "alice", "bob"), (2, "alice", "bob")]


def test_check_right_wrong_and_unanswered(chat):
    platform = chat[0]
    right = check("02.vias-at-bob", 2, trace=platform.trace)
    assert right.ok and bool(right) and str(right).startswith("✓ Right: 2.") and "#16a34a" in right._repr_html_()
    assert check("02.vias-at-bob", "2", trace=platform.trace).ok  # a number typed as text is fine
    wrong = check("02.vias-at-bob", 3, trace=platform.trace)
    assert not wrong.ok and repr(wrong).startswith("✗ Not 3.") and "Via" in repr(wrong)
    unanswered = check("02.vias-at-bob", ..., trace=platform.trace)
    assert not unanswered.ok and not unanswered.answered and "No answer yet" in repr(unanswered)
    assert not check("07.who-answered", {404: ..., 480: "proxy"}, trace=platform.trace).answered
    odd = check("02.vias-at-bob", True, trace=platform.trace)
    assert not odd.ok and "not True/False" in repr(odd)
    assert check("02.ack-branch", "NEW", trace=platform.trace).ok
    assert "answer one of 'same', 'new'" in repr(check("02.ack-branch", "maybe", trace=platform.trace))
    assert check("01.session-method", " invite ", trace=platform.trace).ok
    with pytest.raises(KeyError, match="no exercise 'nope'"):
        check("nope", 1, trace=platform.trace)
    with pytest.raises(TypeError, match=r"needs trace=\.\.\."):
        check("02.vias-at-bob", 2)


def test_every_exercise_has_a_question_a_hint_and_a_kind():
    assert len(teaching.EXERCISES) >= 40
    for ex in teaching.EXERCISES.values():
        assert ex.question.endswith(("?", ".", ")")) and len(ex.hint) > 20, ex.id
        assert ex.kind in ("int", "number", "text", "set", "choice", "mapping"), ex.id
        assert ex.id.split(".", 1)[0] in {f"0{i}" for i in range(1, 9)}, ex.id


@pytest.mark.parametrize(
    "kind, right",
    [
        ("int", 2),
        ("number", 1.5),
        ("text", "INVITE"),
        ("set", {"ACK", "BYE"}),
        ("choice", "same"),
        ("mapping", {404: "proxy", 486: "bob"}),
    ],
)
def test_the_wrong_answer_of_each_kind_is_wrong(kind, right):
    ex = teaching.Exercise("x.y", "q?", lambda ctx: right, "look", kind=kind, options=("same", "new"), tolerance=0.1)
    assert teaching._evaluate(ex, right, {"trace": None}).ok
    assert not teaching._evaluate(ex, teaching._wrong(ex, right), {"trace": None}).ok


GOING_OUT = (
    b"INVITE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bK1\r\n"
    b"Max-Forwards: 70\r\nRecord-Route: <sip:p1;lr>\r\nrecord-route: <sip:p2;lr>\r\nContent-Length: 4\r\n\r\nbody"
)


def test_middlebox_rules_on_bytes():
    assert teaching.drop("ACK")(b"ACK sip:bob SIP/2.0\r\n\r\n", True) is None
    assert teaching.drop("ACK")(b"ACK sip:bob SIP/2.0\r\n\r\n", False) is not None  # only towards the server
    assert teaching.drop("ACK")(GOING_OUT, True) == GOING_OUT
    stripped = teaching.remove_header("Record-Route")(GOING_OUT, False)
    assert b"ecord-Route" not in stripped and stripped.endswith(b"Content-Length: 4\r\n\r\nbody")
    one = teaching.set_header("Max-Forwards", "1", method="INVITE")
    assert b"\r\nMax-Forwards: 1\r\n" in one(GOING_OUT, True) and b"70" not in one(GOING_OUT, True)
    assert one(GOING_OUT, False) == GOING_OUT  # responses/clients untouched
    added = teaching.set_header("Subject", "hi")(b"MESSAGE sip:b SIP/2.0\r\nCSeq: 1 MESSAGE\r\n\r\n", True)
    assert added == b"MESSAGE sip:b SIP/2.0\r\nSubject: hi\r\nCSeq: 1 MESSAGE\r\n\r\n"


@pytest.mark.slow
def test_middlebox_in_front_of_the_server_drops_what_its_rule_says():
    box = teaching.Middlebox().start()
    timers = nim.Timers(t1=0.02, t2=0.16, t4=0.2)
    server = nim.Server(advertise=box.address, timers=timers).start().result(10)
    box.target = (server.host, server.port)
    platform = nim.Platform("box", timers=timers)
    try:
        alice = platform.endpoint("sip:alice@example.test", server=box.uri).result(10)
        bob = platform.endpoint("sip:bob@example.test", server=box.uri).result(10)
        bob.sessions.on_incoming(lambda invitation: invitation.accept())
        box.rule = teaching.drop("ACK")
        gave_up = bob.wait_for(nim.SessionTerminated, timeout=10)
        alice.sessions.create("sip:bob@example.test").result(10)
        assert gave_up.result(15).status == 408
        assert box.dropped() and all(line.startswith("ACK ") for line in box.dropped())
        assert teaching.EXERCISES["08.no-ack.missing"].truth({"trace": platform.trace}) == {"ACK"}
    finally:
        platform.shutdown()
        server.stop()
        box.stop()


@pytest.mark.slow
def test_raw_peers_silent_and_refusing_composing(platform):
    timers = nim.Timers(t1=0.02, t2=0.16, t4=0.2)
    # Timer F of a transaction-stateful proxy decides (as in notebook 7), not the device timeout
    server = nim.Server(timers=timers, device_timeout=None, stateless=False).start().result(10)
    quiet = teaching.RawPeer("sip:quiet@example.test", server=server, answer=teaching.silent).start()
    picky = teaching.RawPeer("sip:picky@example.test", server=server, answer=teaching.refuse_composing).start()
    try:
        assert set(server.registrations) == {"sip:quiet@example.test", "sip:picky@example.test"}
        alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
        with pytest.raises(nim.RequestFailed) as failed:
            alice.send_message("sip:quiet@example.test", "anyone?").result(30)
        assert failed.value.status == 408 and len(quiet.received("MESSAGE")) == 11  # 0,1,3,7,15,23,...,63 T1
        session = alice.sessions.create("sip:picky@example.test").result(10)
        session.start_composing().result(5)
        assert session.send("text is fine").result(5).status == 200
        assert session.unsupported_by_peer == {"application/im-iscomposing+xml"}
        session.terminate().result(5)
        assert [t.split(" ", 1)[0] for t in picky.received()] == ["INVITE", "ACK", "MESSAGE", "MESSAGE", "BYE"]
    finally:
        platform.shutdown()  # before the server goes: alice's un-REGISTER is answered, not waited out
        quiet.stop()
        picky.stop()
        server.stop()


def test_compare_with_reference_marks_missing_and_extra():
    def step(n, label, src, dst):
        start = f"SIP/2.0 {label}" if label[0].isdigit() else f"{label} sip:x SIP/2.0"
        return Step(n, src, dst, f"{start}\nCSeq: 1 INVITE\n\n", 0.0, "", "out", "udp")

    reference = [("INVITE", "A", "P", "offer"), ("100 Trying", "P", "A", ""), ("200 OK", "P", "A", "")]
    rows = teaching.compare_with_reference(
        [step(1, "INVITE", "alice", "proxy"), step(2, "200 OK", "proxy", "alice"), step(3, "BYE", "alice", "proxy")],
        reference,
    )
    assert [r[1].split()[0] for r in rows] == ["F1", "(missing)", "F2", "F3"]
    assert rows[-1][2] == "(extra)" and rows[0][2] == "offer"


def test_checking_before_the_flow_ran_says_what_to_run(platform):
    result = check("02.vias-at-bob", 2, trace=platform.trace)
    assert not result.ok and not result.answered and "run the cells above first" in repr(result)


def test_ocs_client_speaks_sipes_shapes_to_an_endpoint(platform):
    """teaching.OcsClient writes what SIPE writes; the endpoint takes each shape, and the flow labels them."""
    bob = platform.endpoint("sip:bob@example.test", server=None).result(10)
    bob.sessions.on_incoming(lambda invitation: invitation.accept())
    events = bob.events(nim.IncomingSession, nim.MessageReceived, nim.ComposingChanged, nim.SessionTerminated)
    flow = Flow(platform.trace)
    with teaching.OcsClient() as sipe:
        assert sipe.invite(bob, "Hi Bob ✓", conversation_id="4711") == 200 and sipe.first_message_taken
        assert (sipe.typing(), sipe.send("and more"), sipe.typing(), sipe.typing(False), sipe.bye()) == (200,) * 5
        invite = next(t for _ts, d, t in sipe.log if d == "out" and t.startswith("INVITE"))
        for line in (
            "Supported: ms-sender",
            "ms-text-format: text/plain; charset=UTF-8;ms-body=SGkgQm9iIOKckw==",  # base64 of "Hi Bob ✓"
            "Ms-Conversation-ID: 4711",
            "m=message ",
        ):
            assert line in invite, line
    got = [events.get(timeout=5) for _ in range(7)]
    assert [type(e).__name__ for e in got] == [
        "IncomingSession",
        "MessageReceived",
        "ComposingChanged",
        "ComposingChanged",
        "MessageReceived",
        "ComposingChanged",
        "ComposingChanged",
    ]
    assert got[0].conversation_id == "4711" and got[1].text == "Hi Bob ✓" and got[4].text == "and more"
    assert [e.composing for e in got if isinstance(e, nim.ComposingChanged)] == [True, False, True, False]
    assert isinstance(events.get(timeout=5), nim.SessionTerminated)
    listing = Flow.format(flow.new(), full=False)
    assert '(first message: "Hi Bob ✓")' in listing and "(KeyboardActivity: type)" in listing
    assert "(KeyboardActivity: idle)" in listing and '"and more"' in listing


def test_ocs_client_refused_and_unanswered(platform):
    bob = platform.endpoint("sip:bob@example.test", server=None).result(10)
    bob.sessions.on_incoming(lambda invitation: invitation.reject(603))
    with teaching.OcsClient(timeout=1) as sipe:
        assert sipe.invite(bob, "anyone?") == 603 and not sipe.first_message_taken
        with pytest.raises(RuntimeError, match="invite"):
            sipe.typing()
    with (
        teaching.OcsClient(timeout=0.3) as sipe,
        teaching.RawPeer("sip:x@example.test", answer=teaching.silent) as nobody,
    ):
        with pytest.raises(TimeoutError, match="no final answer to INVITE"):
            sipe.invite(f"{nobody.address[0]}:{nobody.address[1]}", "hello?")


def test_uccapi_results_are_the_sip_status_in_an_hresult():
    assert teaching.uccapi_result(404) == "UCC_E_SIP_STATUS_CLIENT_NOT_FOUND (0x80EF0194)"
    assert teaching.uccapi_result(486) == "UCC_E_SIP_STATUS_CLIENT_BUSY_HERE (0x80EF01E6)"
    assert teaching.uccapi_result(603) == "UCC_E_SIP_STATUS_GLOBAL_DECLINE (0x80EF025B)"
    assert teaching.uccapi_result(499) == "0x80EF01F3"  # no name here: the HRESULT alone
    for status, name in teaching.UCCAPI_STATUS.items():
        part = {4: "_CLIENT_", 5: "_SERVER_", 6: "_GLOBAL_"}[status // 100]
        assert name.startswith("UCC_E_SIP_STATUS_") and (part in name or status in (487, 488)), (status, name)


def test_ocs_client_as_an_ocs_2005_client_without_a_first_message(platform):
    bob = platform.endpoint("sip:bob@example.test", server=None).result(10)
    bob.sessions.on_incoming(lambda invitation: invitation.accept())
    with teaching.OcsClient(timeout=2) as sipe:
        assert sipe.invite(bob, media="x-ms-message") == 200 and not sipe.first_message_taken
        assert sipe.conversation_id.isdigit()  # a random number, as SIPE writes it
        assert sipe.bye() == 200
        sent = next(t for _ts, d, t in sipe.log if d == "out" and t.startswith("INVITE "))
        ok = next(t for _ts, d, t in sipe.log if d == "in" and t.startswith("SIP/2.0 200") and "CSeq: 1 INVITE" in t)
    assert "m=x-ms-message " in sent and "ms-text-format" not in sent
    assert "m=x-ms-message " in ok and "Supported: ms-text-format" not in ok
