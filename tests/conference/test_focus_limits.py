"""The focus is bounded: conference and participant limits, probes that find silent crashes, a rejoin that
replaces the old dialog, subscription expiry, and authentication on a server with users."""

from __future__ import annotations

import pytest

import notebook_im as nim
from notebook_im import testing
from notebook_im.runtime import runtime
from notebook_im.server.conference import FocusLimits
from tests.helpers import accept_all, wait_for

pytestmark = pytest.mark.timeout(90)

TIMERS = nim.Timers(t1=0.1, t2=0.4)


@pytest.fixture
def limited():
    srv = (
        nim.Server(
            timers=TIMERS,
            focus_limits=FocusLimits(max_conferences=1, max_participants=2, probe_interval=0.5, max_expires=2),
        )
        .start()
        .result(10)
    )
    yield srv
    srv.stop()


def endpoint(platform, server, name, **kw):
    ep = platform.endpoint(f"sip:{name}@example.test", server=server.uri, display_name=name.title(), **kw).result(10)
    ep.accepted = accept_all(ep)
    return ep


@pytest.mark.slow
def test_limits_probe_and_expiry(limited, platform) -> None:
    alice, bob, carol = (endpoint(platform, limited, n) for n in ("alice", "bob", "carol"))
    conf = alice.sessions.create_conference([bob.uri]).result(20)
    wait_for(lambda: len(conf.participants) == 1 and bob.accepted, 5, "bob in")
    with pytest.raises(nim.RequestFailed) as err:
        conf.invite(carol.uri).result(10)
    assert err.value.status == 486  # full (max_participants=2)
    with pytest.raises(nim.RequestFailed) as err:
        carol.sessions.create_conference([]).result(10)
    assert err.value.status == 503  # max_conferences=1
    # subscriptions are granted at most max_expires (2 s) and refreshed: the roster keeps working past it
    import time

    time.sleep(2.5)
    focus = limited.focus
    assert runtime().run_sync(lambda: sum(len(c.subscriptions) for c in focus.conferences.values())) == 2
    # bob crashes silently; nobody sends anything; the focus's OPTIONS probe finds out
    removed = []
    conf.on(nim.ParticipantRemoved, lambda e: removed.append(e.participant.uri))
    testing.crash(bob).result(5)
    wait_for(lambda: removed == [bob.uri], 20, "the probe found bob gone")
    conf.terminate().result(5)
    wait_for(lambda: not limited.conferences, 5, "conference ended")
    assert runtime().run_sync(lambda: (len(focus.conferences), len(focus.dialogs))) == (0, 0)
    # the slot is free again
    carol.sessions.create_conference([]).result(10).terminate().result(5)


def test_rejoin_replaces_the_old_dialog(server, platform) -> None:
    alice, bob = endpoint(platform, server, "alice"), endpoint(platform, server, "bob")
    conf = alice.sessions.create_conference([bob.uri]).result(20)
    wait_for(lambda: bob.accepted and bob.accepted[0].state is nim.SessionState.CONNECTED, 5, "bob in")
    # bob's client restarts and joins again by the conference URI
    again = bob.sessions.join(conf.conference_uri).result(10)
    assert again.is_conference and again.conference_uri == conf.conference_uri
    wait_for(lambda: bob.accepted[0].state is nim.SessionState.DISCONNECTED, 10, "old dialog replaced (BYE)")
    wait_for(lambda: [p.uri for p in again.participants] == [alice.uri], 5, "bob's roster")
    got = []
    bob.on(nim.MessageReceived, got.append)
    conf.send("once").result(5)
    wait_for(lambda: [m.text for m in got] == ["once"], 5, "bob gets it once, on the new dialog")
    assert [p.uri for p in conf.participants] == [bob.uri]
    assert len(server.conferences[conf.conference_uri]) == 2


def test_conference_with_digest_auth(platform) -> None:
    with nim.Server(users={"alice": "a-secret", "bob": "b-secret", "carol": "c-secret"}, timers=TIMERS) as srv:
        eps = [endpoint(platform, srv, n, password=f"{n[0]}-secret") for n in ("alice", "bob", "carol")]
        conf = eps[0].sessions.create_conference([eps[1].uri, eps[2].uri]).result(20)
        wait_for(lambda: len(conf.participants) == 2, 5, "roster")
        got = []
        eps[2].on(nim.MessageReceived, got.append)
        conf.send("authenticated").result(5)
        wait_for(lambda: [(m.participant.uri, m.text) for m in got] == [(eps[0].uri, "authenticated")], 5, "relayed")
        for e in eps:  # before the server goes
            e.disable().result(15)


def final_reply(data: bytes, addr: tuple[str, int], timeout: float = 3.0) -> bytes | None:
    """Send one request from a fresh socket; the first final (non-1xx) response."""
    import socket
    import time

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.sendto(data, addr)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                reply = s.recvfrom(65535)[0]
            except TimeoutError:
                return None
            if not reply.startswith(b"SIP/2.0 1"):
                return reply
    return None


def test_focus_refuses_strangers(server, platform) -> None:
    alice = endpoint(platform, server, "alice")
    conf = alice.sessions.create_conference([]).result(10)
    # joining a conference that does not exist, and an out-of-dialog MESSAGE to a real one
    # (a stranger learns nothing, not even whether the conference exists: 403 before any lookup)
    for ruri, method, status in (
        (f"sip:conf-nope@127.0.0.1:{server.port}", "INVITE", b"403"),
        (conf.conference_uri, "MESSAGE", b"403"),
        (conf.conference_uri, "SUBSCRIBE", b"403"),
    ):
        body = b"" if method != "INVITE" else b"v=0\r\nm=message 9 sip null\r\n"
        req = (
            f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{method}x;rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:eve@evil.test>;tag=1\r\nTo: <{ruri}>\r\nCall-ID: {method}@x\r\n"
            f"CSeq: 1 {method}\r\nContact: <sip:eve@127.0.0.1:9>\r\nEvent: conference\r\n"
            + ("Content-Type: application/sdp\r\n" if body else "")
            + f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        reply = final_reply(req, (server.host, server.port))
        assert reply is not None and reply.split(b" ", 2)[1] == status, reply
    conf.terminate().result(5)
