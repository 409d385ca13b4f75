"""The hostile documents of tests/hostile/documents.py sent live, on raw UDP and TCP sockets (tests/hostile/rawsip.py):

- as pager-mode MESSAGEs to an endpoint that registers nowhere (`Platform().endpoint(..., server=None)`);
- as in-dialog MESSAGEs in an IM session with that endpoint (the raw client INVITEs it);
- to the embedded server's conference focus, as a participant that joined with INVITE: the focus relays a
  composing indication without reading it, so the member behind it must refuse it, and a display name the
  focus copies into its CPIM wrapper must not make the members refuse every relayed message;
- as NOTIFYs with conference-info bodies in a member's roster subscription.

Each document must get the answer documents.py expects (a 4xx for a hostile one, 200 for an odd but
legitimate one), within a second, never a 500 (an exception inside the stack); the target must answer the next
valid request; no error may be logged; and RSS must stay bounded over the whole run."""

from __future__ import annotations

import gc
import logging
import time

import pytest

import notebook_im as nim
from notebook_im import testing
from notebook_im.sip.message import Response
from tests.helpers import accept_all, wait_for
from tests.hostile.documents import (
    CI_CT,
    CPIM_CT,
    CPIM_DOCS,
    IC_CT,
    IMDN_CT,
    NUMBERS,
    OK,
    REFUSED,
    Doc,
    accepted_documents,
    xml_documents,
)
from tests.hostile.rawsip import RawUac, rss_mib

pytestmark = pytest.mark.timeout(240)

WIRE_BODY = 60_000  # what fits a SIP message (MAX_BODY 65,335) with room for the headers
ANSWER_WITHIN = 1.0  # s of wall time for one exchange on a shared 2-core machine (the parse is < 100 ms CPU)
RSS_BOUND = 25  # MiB of growth over all the attacks on one target


def _docs(*cts: str) -> list[Doc]:
    limits = {IC_CT: 4096, IMDN_CT: 4096, CI_CT: WIRE_BODY}
    out: list[Doc] = []
    for ct in cts:
        if ct == CPIM_CT:
            out += CPIM_DOCS
            continue
        for d in xml_documents(ct, limits[ct]):
            if ct == CI_CT and not d.body:  # a NOTIFY without a body carries no state: nothing to refuse
                d = Doc(d.name, d.content_type, d.body, OK)
            if len(d.body) <= WIRE_BODY:
                out.append(d)
        out += accepted_documents(ct) + [d for d in NUMBERS if d.content_type == ct]
    return out


def _allowed(doc: Doc) -> frozenset[int]:
    """A receiver may answer any refusal status (the session layer says 400 where the parser said 413/415)."""
    return REFUSED if doc.expect <= REFUSED and doc.expect != frozenset({415}) else doc.expect


@pytest.fixture
def no_errors_logged(caplog):
    caplog.set_level(logging.WARNING, logger="notebook_im")
    yield
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("notebook_im")]
    assert not bad, "errors logged while handling hostile documents: " + "; ".join(r.getMessage() for r in bad[:5])


@pytest.fixture(scope="module")
def p2p():
    platform = nim.Platform("redteam-p2p", max_trace_records=5000)
    bob = platform.endpoint("sip:bob@example.test", server=None).result(10)
    sessions = accept_all(bob)
    yield bob, sessions
    platform.shutdown()


def _throw(send, docs: list[Doc], alive, label: str, capsys) -> None:
    """Send each document with `send(doc) -> response`, check the answer, then that `alive()` is 200."""
    gc.collect()
    rss0 = rss_mib()
    slowest = 0.0
    wrong = []
    for doc in docs:
        start = time.perf_counter()
        resp = send(doc)
        took = time.perf_counter() - start
        slowest = max(slowest, took)
        status = resp.status if isinstance(resp, Response) else resp
        if status not in _allowed(doc) or took > ANSWER_WITHIN:
            wrong.append(f"{doc}: {status!r} in {took * 1000:.0f} ms (expected {sorted(doc.expect)})")
        after = alive()
        assert isinstance(after, Response) and after.status == 200, f"{label}: no 200 after {doc}: {after!r}"
    gc.collect()
    rss1 = rss_mib()
    with capsys.disabled():
        print(
            f"\n[documents] {label}: {len(docs)} documents, slowest answer {slowest * 1000:.1f} ms, "
            f"RSS {rss0:.0f} -> {rss1:.0f} MiB ({rss1 - rss0:+.1f})"
        )
    assert not wrong, f"{label}: {len(wrong)} wrong answers:\n" + "\n".join(wrong)
    assert rss1 - rss0 < RSS_BOUND


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_pager_messages_to_an_endpoint(transport, p2p, no_errors_logged, capsys):
    bob, _ = p2p
    host, port = bob.local_address
    ruri = f"sip:bob@{host}:{port}"
    with RawUac(transport, (host, port)) as mallory:
        _throw(
            lambda d: mallory.request("MESSAGE", ruri, d.body, d.content_type, to="sip:bob@example.test"),
            _docs(IC_CT, IMDN_CT, CPIM_CT),
            lambda: mallory.request("MESSAGE", ruri, b"still there?", "text/plain", to="sip:bob@example.test"),
            f"pager MESSAGE over {transport} to an endpoint",
            capsys,
        )


def test_in_dialog_messages_to_an_endpoint(p2p, no_errors_logged, capsys):
    bob, sessions = p2p
    host, port = bob.local_address
    before = len(sessions)
    with RawUac("udp", (host, port)) as mallory:
        mallory.invite(f"sip:bob@{host}:{port}")
        wait_for(lambda: len(sessions) > before and sessions[-1].state is nim.SessionState.CONNECTED, 5, "session up")
        session = sessions[-1]
        _throw(
            lambda d: mallory.in_dialog("MESSAGE", d.body, d.content_type),
            _docs(IC_CT, IMDN_CT, CPIM_CT),
            lambda: mallory.in_dialog("MESSAGE", b"still there?", "text/plain"),
            "in-dialog MESSAGE over udp to an endpoint",
            capsys,
        )
        assert session.state is nim.SessionState.CONNECTED
        assert mallory.in_dialog("BYE").status == 200


@pytest.fixture
def conference():
    server = nim.Server(timers=nim.Timers(t1=0.1, t2=0.4)).start().result(10)
    platform = nim.Platform("redteam-conf", max_trace_records=5000)
    alice = platform.endpoint("sip:alice@example.test", server=server.uri, display_name="Alice").result(10)
    got: list = []
    alice.on(nim.MessageReceived, got.append)
    conf = alice.sessions.create_conference([]).result(20)
    yield server, alice, conf, got
    platform.shutdown()
    server.stop()


def test_focus_relays_and_members_refuse(conference, no_errors_logged, capsys):
    """mallory joins alice's conference from a raw socket, with a display name ending in a backslash, and sends
    every hostile composing document through the focus; the focus takes opaque indications (200), refuses what
    is not text (415); alice answers the relayed ones herself and still gets mallory's texts, with the name."""
    server, alice, conf, got = conference
    with RawUac("udp", (server.host, server.port), display_name="Mallory\\\\") as mallory:
        mallory.register()
        mallory.invite(conf.conference_uri)
        wait_for(lambda: any(p.uri == "sip:mallory@example.test" for p in conf.participants), 5, "mallory joined")
        relayed: list[Doc] = []

        def send(doc: Doc):
            resp = mallory.in_dialog("MESSAGE", doc.body, doc.content_type)
            if isinstance(resp, Response) and resp.status == 200:
                relayed.append(doc)
            return resp

        ic_docs = _docs(IC_CT)
        focus_view = [Doc(d.name, d.content_type, d.body, frozenset({200, 413})) for d in ic_docs]  # opaque to it
        other = [Doc(d.name, d.content_type, d.body, frozenset({415})) for d in _docs(IMDN_CT)[:6] + CPIM_DOCS[:4]]
        _throw(
            send,
            focus_view + other,
            lambda: mallory.in_dialog("MESSAGE", b"still there?", "text/plain"),
            "in-dialog MESSAGE over udp to the conference focus",
            capsys,
        )
        wait_for(
            lambda: sum(m.text == "still there?" for m in got) == len(focus_view) + len(other),
            10,
            "alice got every text mallory sent after an attack",
        )
        assert {m.participant.uri for m in got} == {"sip:mallory@example.test"}
        assert got[-1].participant.display_name.startswith("Mallory")
        # alice answered each relayed indication herself: 400 for the hostile ones, 200 for the rest, never 500
        sip = alice.platform.trace.sip()
        answers = [int(s) for s in sip[(sip.direction == "out") & (sip.method == "MESSAGE")].status.dropna()]
        assert 500 not in answers and answers.count(400) >= sum(d.expect <= REFUSED for d in ic_docs)
        assert conf.state is nim.SessionState.CONNECTED


def test_notify_into_a_roster_subscription(conference, no_errors_logged, capsys):
    """NOTIFYs with hostile conference-info bodies, in alice's roster subscription dialog (what a spoofer who
    learnt the dialog's identifiers, or a hostile focus, can send): 400 for each, 200 for the legitimate ones,
    and the subscription keeps working."""
    server, alice, conf, _ = conference
    wait_for(lambda: testing.roster_dialog(conf) is not None, 5, "subscribed")
    dialog = testing.roster_dialog(conf)
    host, port = alice.local_address
    with RawUac("udp", (host, port), aor=str(dialog.remote_address.uri)) as focus:
        focus.local_tag, focus.remote_tag, focus.call_id = dialog.remote_tag, dialog.local_tag, dialog.call_id
        focus.to_uri, focus.remote_target = alice.uri, f"sip:alice@{host}:{port}"
        focus.cseq = (dialog.remote_seq or 0) + 1000
        notify = "Event: conference\r\nSubscription-State: active;expires=600\r\n"
        original = focus._build

        def build(method, ruri, **kw):  # every NOTIFY carries the event package headers
            return original(method, ruri, **{**kw, "extra": notify})

        focus._build = build  # type: ignore[method-assign]
        valid = (
            f'<conference-info xmlns="urn:ietf:params:xml:ns:conference-info" entity="{conf.conference_uri}" '
            'state="partial" version="1"><users/></conference-info>'
        ).encode()
        _throw(
            lambda d: focus.in_dialog("NOTIFY", d.body, d.content_type),
            _docs(CI_CT),
            lambda: focus.in_dialog("NOTIFY", valid, CI_CT),
            "NOTIFY over udp into a roster subscription",
            capsys,
        )
    assert conf.state is nim.SessionState.CONNECTED


@pytest.mark.parametrize("port", ["²", "9" * 5000])
def test_invite_with_an_sdp_port_that_is_not_ascii_digits(port, p2p, conference, no_errors_logged):
    """The SDP of an INVITE is the other body a peer controls: `m=message ² sip null` passed str.isdigit()
    and raised ValueError in int(), so the endpoint and the focus answered 500 (sip/sdp.py, one line)."""
    bob, _ = p2p
    server, _alice, _conf, _ = conference
    sdp = (
        f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=message {port} sip null\r\n"
    ).encode()
    host, bport = bob.local_address
    for addr, ruri in (
        ((host, bport), f"sip:bob@{host}:{bport}"),
        ((server.host, server.port), f"sip:conference-factory@{server.host}:{server.port}"),
    ):
        with RawUac("udp", addr) as mallory:
            resp = mallory.request("INVITE", ruri, sdp, "application/sdp")
            assert isinstance(resp, Response) and resp.status != 500 and resp.status < 600, (ruri, resp)
            if resp.status == 200:  # accepted (the port does not matter to SIP IM): ACK, then hang up
                mallory.call_id, mallory.remote_tag, mallory.to_uri = resp.call_id, resp.to.tag, ruri
                mallory.remote_target, mallory.cseq = str(resp.contacts[0].uri), 1
                mallory.client.send(
                    mallory._build(
                        "ACK",
                        mallory.remote_target,
                        to=ruri,
                        to_tag=resp.to.tag,
                        call_id=resp.call_id,
                        cseq=1,
                        body=b"",
                        content_type=None,
                    )
                )
                assert mallory.in_dialog("BYE").status == 200


def test_a_display_name_xml_cannot_hold_does_not_break_the_roster(conference, no_errors_logged):
    """mallory joins with U+FFFF in her display name (valid UTF-8, so valid SIP): the focus copies it into the
    conference-info it sends every member, which used to make that document invalid XML, refused (400) by
    every member, so nobody's roster showed anyone joining from then on."""
    server, alice, conf, _ = conference
    with RawUac("udp", (server.host, server.port), display_name="Mal\uffffory") as mallory:
        mallory.register()
        mallory.invite(conf.conference_uri)
        wait_for(
            lambda: any(p.uri == "sip:mallory@example.test" for p in conf.participants), 5, "mallory in alice's roster"
        )
        assert next(p for p in conf.participants if p.uri == "sip:mallory@example.test").display_name == "Malory"
        sip = alice.platform.trace.sip()
        notify_answers = sip[(sip.direction == "out") & (sip.method == "NOTIFY")].status.dropna().astype(int).tolist()
        assert notify_answers and set(notify_answers) == {200}
        assert mallory.in_dialog("BYE").status == 200
