"""The server restarts: endpoints notice (registration refresh over UDP, the dropped connection over TCP),
retry with backoff, register again on their own, and the session carries on."""

from __future__ import annotations

import pytest

import notebook_im as nim
from notebook_im import testing
from tests.helpers import accept_all, free_port, wait_for

TIMERS = nim.Timers(t1=0.05, t2=0.4, t4=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_endpoints_reregister_after_server_restart_and_session_continues(transport):
    port = free_port()
    server = nim.Server(port=port, timers=TIMERS).start().result(10)
    platform = nim.Platform("restart", timers=TIMERS)
    try:
        alice = platform.endpoint("sip:alice@example.test", server=server, transport=transport, expires=2).result(10)
        bob = platform.endpoint("sip:bob@example.test", server=server, transport=transport, expires=2).result(10)
        for ep in (alice, bob):
            testing.set_registration_timing(ep, retry_base=0.2)
        states = alice.events(nim.EndpointStateChanged)
        bob_sessions = accept_all(bob)
        session = alice.sessions.create("sip:bob@example.test").result(10)
        assert session.send("before the restart").result(5).status == 200

        server.stop()
        wait_for(lambda: alice.state is nim.EndpointState.RECONNECTING, 10, "alice to notice")
        ev = states.get(timeout=1)
        assert ev.state is nim.EndpointState.RECONNECTING and "registration failed" in ev.reason

        server = nim.Server(port=port, timers=TIMERS).start().result(10)  # a new process would look the same
        wait_for(
            lambda: alice.state is nim.EndpointState.ENABLED and bob.state is nim.EndpointState.ENABLED,
            15,
            "both registered again",
        )
        assert set(server.registrations) == {"sip:alice@example.test", "sip:bob@example.test"}
        recovered = [e for e in states.drain() if e.state is nim.EndpointState.ENABLED]
        assert recovered and recovered[-1].reason == "registered again"

        # the dialog was record-routed through the server's address, which is back: the session goes on
        assert session.send("after the restart").result(10).status == 200
        wait_for(lambda: [m.text for m in bob_sessions[0].messages] == ["before the restart", "after the restart"], 5)
        session.terminate().result(10)
    finally:
        platform.shutdown()
        server.stop()
