"""Stuck indicators: a composing peer that vanished, a participant that stops answering, a transport that fails.

uac_composing_then_silent.xml   `active` with refresh=1 s, then silence: idle after the window, session alive
uas_silent.xml                  accepts, then never answers: the MESSAGE times out (scaled T1), the
                                participant is DISCONNECTED with the reason, the session ends
two endpoints over TCP          the peer's process dies: the connection is refused, same outcome
"""

from __future__ import annotations

import threading
import time

import pytest

import notebook_im as nim
from notebook_im import testing
from support.programs import HOST, Sipp, SippServer, free_port
from tests.helpers import accept_all, wait_for

from .conftest import scenario

pytestmark = pytest.mark.timeout(90)

FAST = nim.Timers(t1=0.02, t2=0.16, t4=0.2)  # 64*T1 = 1.28 s per transaction instead of 32 s


@pytest.mark.interop
def test_composing_clears_when_the_refresh_window_lapses(platform: nim.Platform, sipp: Sipp) -> None:
    carol = platform.endpoint(f"sip:carol@{HOST}", server=None).result(10)
    accept_all(carol)
    events = carol.events(nim.ComposingChanged, nim.SessionTerminated)
    host, port = carol.local_address
    results = []
    runner = threading.Thread(
        target=lambda: results.append(
            sipp.run(
                scenario("uac_composing_then_silent.xml"),
                remote=f"{host}:{port}",
                service="carol",
                local_port=free_port(),
                calls=1,
                timeout_s=20,
            )
        ),
        daemon=True,
    )
    runner.start()
    active = events.get(10)
    assert isinstance(active, nim.ComposingChanged) and active.composing is True
    idle = events.get(5)
    assert isinstance(idle, nim.ComposingChanged) and idle.composing is False
    waited = (idle.timestamp - active.timestamp).total_seconds()
    assert 0.9 <= waited <= 2.0, waited  # refresh=1: idle after about a second
    assert idle.session.state is nim.SessionState.CONNECTED and not idle.participant.composing
    ended = events.get(10)  # SIPp's BYE, 3 s after it went quiet
    assert isinstance(ended, nim.SessionTerminated) and ended.by_remote
    runner.join(40)
    assert results and results[0].returncode == 0, results[0] if results else "SIPp did not finish"


def lost_events(session: nim.ImSession) -> tuple[list, list]:
    changes: list = []
    ended: list = []
    session.on(nim.ParticipantStateChanged, changes.append)
    session.on(nim.SessionTerminated, ended.append)
    return changes, ended


@pytest.mark.interop
def test_silent_participant_is_marked_disconnected(sipp: Sipp, sipp_servers: list[SippServer]) -> None:
    peer = sipp.start(scenario("uas_silent.xml"), local_port=free_port(), calls=1)
    sipp_servers.append(peer)
    platform = nim.Platform("silent", timers=FAST)
    try:
        dave = platform.endpoint(f"sip:dave@{HOST}", server=None).result(10)
        session = dave.sessions.create(f"sip:sipp@{HOST}:{peer.port}").result(10)
        changes, ended = lost_events(session)
        started = time.monotonic()
        with pytest.raises(nim.RequestFailed) as info:
            session.send("are you there?").result(20)
        took = time.monotonic() - started
        assert info.value.status == 408 and 2 * 64 * FAST.t1 <= took < 10, took  # two attempts, then give up
        wait_for(lambda: ended, 5, "SessionTerminated")
        remote = [c for c in changes if c.participant is session.remote]
        assert [(c.previous, c.state) for c in remote] == [
            (nim.ParticipantState.CONNECTED, nim.ParticipantState.DISCONNECTED)
        ]
        why = remote[0].reason
        assert why.startswith(f"sip:sipp@{HOST}:{peer.port} stopped answering (MESSAGE: 408 ") and "timer F" in why, why
        assert (ended[0].reason, ended[0].status, ended[0].by_remote) == (why, 408, False)
        assert session.state is nim.SessionState.DISCONNECTED and session.messages[-1].state == "failed"
        with pytest.raises(nim.InvalidState, match="disconnected"):
            session.send("anyone?").result(5)
        assert peer.wait() == 0, peer.describe()
        assert "BYE sip:" not in peer.messages()  # RFC 3261 §12.2.1.2: a 408 ends the dialog, no BYE
    finally:
        platform.shutdown()


def test_transport_failure_marks_the_participant_disconnected() -> None:
    platform = nim.Platform("crash", timers=FAST)
    try:
        alice = platform.endpoint(f"sip:alice@{HOST}", server=None, transport="tcp").result(10)
        bob = platform.endpoint(f"sip:bob@{HOST}", server=None, transport="tcp").result(10)
        accept_all(bob)
        host, port = bob.local_address
        session = alice.sessions.create(f"sip:bob@{host}:{port};transport=tcp").result(10)
        assert session.send("before").result(10).status == 200
        changes, ended = lost_events(session)
        testing.crash(bob).result(5)  # bob's process dies: sockets gone, no BYE
        with pytest.raises(nim.RequestFailed) as info:
            session.send("after").result(20)
        assert info.value.status == 503
        wait_for(lambda: ended, 5, "SessionTerminated")
        remote = [c for c in changes if c.participant is session.remote]
        assert [c.state for c in remote] == [nim.ParticipantState.DISCONNECTED]
        assert "stopped answering (MESSAGE: 503 " in remote[0].reason and f"{port}" in remote[0].reason
        assert ended[0].status == 503 and session.state is nim.SessionState.DISCONNECTED
    finally:
        platform.shutdown()


@pytest.mark.slow
def test_pager_mode_composing_clears_too(platform: nim.Platform) -> None:
    """Out of dialog the same holds: `active` with refresh=1 from a sender that then goes quiet ends after the
    window; a text from a sender who is typing ends it at once (RFC 3994 §4)."""
    from .test_receipts import raw_message

    bob = platform.endpoint(f"sip:bob@{HOST}", server=None).result(10)
    changes = bob.events(nim.ComposingChanged)
    active = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing">'
        b"<state>active</state><refresh>1</refresh></isComposing>"
    )
    assert raw_message(bob, "sip:ghost@example.test", "application/im-iscomposing+xml", active).startswith(
        b"SIP/2.0 200"
    )
    on = changes.get(5)
    off = changes.get(5)
    assert (on.composing, off.composing, on.session, off.participant.uri) == (
        True,
        False,
        None,
        "sip:ghost@example.test",
    )
    assert 0.9 <= (off.timestamp - on.timestamp).total_seconds() <= 2.0
    raw_message(bob, "sip:typist@example.test", "application/im-iscomposing+xml", active.replace(b">1<", b">60<"))
    assert changes.get(5).composing is True
    raw_message(bob, "sip:typist@example.test", "text/plain", b"done typing")
    cleared = changes.get(5)
    assert (cleared.composing, cleared.participant.uri) == (False, "sip:typist@example.test")
    assert bob._pager_composing == {} and bob._pager_timers == {}  # nobody typing: nothing remembered
