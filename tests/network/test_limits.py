"""Streams and floods: slow or silent TCP peers do not block others and are cut off; transaction and
registration limits answer 503/403 instead of growing without bound."""

from __future__ import annotations

import socket
import time

import pytest

import notebook_im as nim
from notebook_im import testing
from tests.helpers import udp_exchange, wait_for


def message(port: int, branch: str, user: str = "nobody") -> bytes:
    return (
        f"MESSAGE sip:{user}@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{branch};rport\r\n"
        f"From: <sip:flood@example.test>;tag=f\r\nTo: <sip:{user}@example.test>\r\nCall-ID: {branch}@flood\r\n"
        "CSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx"
    ).encode()


@pytest.mark.slow
def test_slowloris_and_silent_connections_do_not_block_and_are_closed(server, platform):
    core = testing.stack_of(server).transport
    core.read_timeout = 1.0
    core.idle_timeout = 2.0
    alice = platform.endpoint("sip:alice@example.test", server=server, transport="tcp").result(10)
    platform.endpoint("sip:bob@example.test", server=server, transport="tcp").result(10)
    silent = socket.create_connection((server.host, server.port), timeout=5)
    slow = socket.create_connection((server.host, server.port), timeout=5)
    try:
        slow.sendall(b"MESSAGE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1")  # never finished
        t0 = time.monotonic()
        for i in range(20):  # meanwhile everybody else is served promptly
            assert alice.send_message("sip:bob@example.test", f"still fast {i}").result(5).status == 200
        assert time.monotonic() - t0 < 5
        slow.settimeout(5)
        assert slow.recv(10) == b"", "the slow peer is cut off after read_timeout"
        silent.settimeout(5)
        assert silent.recv(10) == b"", "the silent peer is closed after idle_timeout"
        assert any("incomplete message" in d.reason for d in server.trace.drops)
    finally:
        silent.close()
        slow.close()


@pytest.mark.slow
def test_keepalives_keep_a_registered_tcp_flow_open(server, platform):
    testing.stack_of(server).transport.idle_timeout = 1.0
    alice = platform.endpoint("sip:alice@example.test", server=server, transport="tcp").result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server, transport="tcp").result(10)
    for ep in (alice, bob):  # restart the keep-alive rhythm with a short interval
        testing.set_registration_timing(ep, keepalive=0.3)
    time.sleep(2.5)
    alice.request_receipts = False  # one request and its response: no delivery receipt coming back
    before = server.stats["received"]
    assert alice.send_message("sip:bob@example.test", "flow still open").result(5).status == 200
    assert server.stats["received"] == before + 2, "the same connections carried request and response"


def test_tcp_connection_dropped_is_reopened_for_the_next_request(server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=server, transport="tcp").result(10)
    platform.endpoint("sip:bob@example.test", server=server).result(10)
    assert alice.send_message("sip:bob@example.test", "one").result(5).status == 200
    from notebook_im.runtime import runtime

    transport = testing.stack_of(server).transport
    runtime().run_sync(lambda: [c.transport.close() for c in list(transport.connections.values())])
    wait_for(lambda: transport.connection_count == 0 or alice.state is nim.EndpointState.ENABLED, 5)
    assert alice.send_message("sip:bob@example.test", "two").result(10).status == 200


def register_raw(sock: socket.socket, server, user: str) -> None:
    """REGISTER `user` with the contact of a raw UDP socket (which the test then reads by hand)."""
    port = sock.getsockname()[1]
    reg = (
        f"REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKreg{port};rport\r\n"
        f"From: <sip:{user}@example.test>;tag=r\r\nTo: <sip:{user}@example.test>\r\nCall-ID: reg{port}@raw\r\n"
        f"CSeq: 1 REGISTER\r\nContact: <sip:{user}@127.0.0.1:{port}>\r\nExpires: 300\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    sock.sendto(reg, (server.host, server.port))
    assert sock.recvfrom(4096)[0].startswith(b"SIP/2.0 200")


@pytest.mark.slow
@pytest.mark.parametrize("stateless", [False, True])
def test_flood_of_unanswered_transactions_from_one_source_gets_503(stateless: bool):
    """Live (unanswered) transactions are what a flood can pile up: beyond the per-source limit, 503 and no state.
    With the stateless relay, its table of unanswered requests (bounded by `max_pending`) fills first, then the
    stateful path and its limit take over."""
    with nim.Server(stateless=stateless) as server:
        share = 30 if stateless else 0
        server.proxy.stateless.max_pending = 30
        _flood(server, share)


def _flood(server: nim.Server, share: int) -> None:
    testing.stack_of(server).max_transactions_per_source = 50
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent_bob,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s,
    ):
        silent_bob.bind(("127.0.0.1", 0))
        silent_bob.settimeout(2)
        register_raw(silent_bob, server, "bob")  # bob never answers what the server relays to him
        s.bind(("127.0.0.1", 0))
        s.settimeout(2)
        port = s.getsockname()[1]
        for i in range(120):  # bounded: 120 requests
            s.sendto(message(port, f"fl{i}", user="bob"), (server.host, server.port))
        refused = 70 - share
        statuses = [int(s.recvfrom(4096)[0].split(b" ", 2)[1]) for _ in range(refused)]
        assert statuses == [503] * refused, "the relayed ones are pending; those beyond the limits are refused"
        relayed: set[bytes] = set()  # Call-IDs bob received (the server retransmits them, he never answers)
        silent_bob.settimeout(0.2)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(relayed) < 120:  # bounded in time and count
            try:
                data = silent_bob.recvfrom(4096)[0]
            except TimeoutError:
                continue
            relayed.add(data.split(b"Call-ID: ", 1)[1].split(b"\r\n", 1)[0])
        assert len(relayed) == 50 + share
        assert testing.stack_of(server).live_server_transactions <= 50, "refused requests leave no state behind"
        assert server.proxy.stateless.pending <= share
    other = udp_exchange(message(0, "other").replace(b"127.0.0.1:0", b"127.0.0.1:9"), (server.host, server.port))
    assert other.startswith(b"SIP/2.0 404"), "another source is still served"


def test_completed_transactions_are_compact_and_bounded_per_source(server):
    """Answered UDP requests linger (Timer J) as response bytes only, at most `completed.per_source` per source:
    the newest retransmission is absorbed, one pushed out early by the bound is handled anew."""
    core = testing.stack_of(server)
    core.completed.per_source = 50
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(2)
        port = s.getsockname()[1]
        answers = []
        for i in range(120):  # bounded: 120 requests, each answered at once
            s.sendto(message(port, f"ok{i}"), (server.host, server.port))
            answers.append(s.recvfrom(4096)[0])
        assert all(a.startswith(b"SIP/2.0 404") for a in answers)
        # (the response is sent before the transaction is compacted: the last one may still be on its way)
        wait_for(
            lambda: not core.live_server_transactions, 2, "no full transaction object is kept for an answered request"
        )
        assert len(core.completed) == 50 and core.completed.evicted_early == 70
        absorbed = core.stats["retransmissions_absorbed"]
        s.sendto(message(port, "ok119"), (server.host, server.port))
        assert s.recvfrom(4096)[0] == answers[119], "a retransmission gets the very same response"
        assert core.stats["retransmissions_absorbed"] == absorbed + 1
        s.sendto(message(port, "ok0"), (server.host, server.port))
        assert s.recvfrom(4096)[0].startswith(b"SIP/2.0 404")
        assert core.stats["retransmissions_absorbed"] == absorbed + 1, "evicted early: handled as a new request"


def test_registrations_per_user_are_bounded(server, platform):
    for _ in range(10):
        platform.endpoint("sip:alice@example.test", server=server).result(10)
    with pytest.raises(nim.RequestFailed) as info:
        platform.endpoint("sip:alice@example.test", server=server).result(10)
    assert info.value.status == 403 and "too many contacts" in info.value.reason
    assert len(server.registrations["sip:alice@example.test"]) == 10


def test_incoming_sessions_per_source_are_bounded(server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    bob.sessions.max_incoming_per_source = 3  # invitations ring and are never answered: state piles up
    ops = [alice.sessions.create("sip:bob@example.test") for _ in range(3)]
    wait_for(lambda: len(bob.sessions) == 3, 5, "three ringing invitations")
    with pytest.raises(nim.RequestFailed) as info:
        alice.sessions.create("sip:bob@example.test").result(10)
    # bob answered 503; a proxy relays a device's 503 as 500 (RFC 3261 §16.7 step 6), the reason says why
    assert info.value.status == 500 and "the device answered 503" in info.value.reason
    assert "too many sessions" in info.value.reason
    assert len(bob.sessions) == 3
    for session in alice.sessions.sessions:
        session.terminate()
    for op in ops:
        with pytest.raises(nim.RequestFailed):  # cancelled: 487
            op.result(10)
