"""Offline delivery on the embedded server, over real loopback sockets: a pager-mode MESSAGE to a known user
who is not registered is kept (202 "stored for later delivery") and delivered, in order, exactly once, with
the original sender and time, when the user registers again. Expiry, the per-user limit, unknown users
(404), a device that does not answer (kept, retried) and one that refuses (dropped, the rest still flow)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import timedelta

import pytest

import notebook_im as nim
from tests.helpers import wait_for
from tests.server.raw_device import RawDevice

BOB = "sip:bob@example.test"
FAST = nim.Timers(t1=0.02, t2=0.16, t4=0.2)  # 64*T1 = 1.28 s: a device that never answers times out quickly

pytestmark = pytest.mark.timeout(60)


@contextmanager
def world(password: str | None = None, **server_kw):
    """A server of our own and alice registered with it; the platform goes first (its un-REGISTER is answered)."""
    with nim.Server(**server_kw) as server, nim.Platform("alice") as p:
        yield server, p.endpoint("sip:alice@example.test", server=server, password=password).result(10)


def go_offline(server: nim.Server, uri: str = BOB) -> None:
    """Register `uri` once (so the server knows the user) and unregister again."""
    with nim.Platform("once") as p:
        ep = p.endpoint(uri, server=server).result(10)
        ep.disable().result(10)
    assert uri not in server.registrations


def incoming_messages(endpoint: nim.Endpoint):
    df = endpoint.platform.trace.sip(owner=endpoint.uri)
    return df[(df["method"] == "MESSAGE") & df["status"].isna() & (df["direction"] == "in")]


@pytest.mark.slow
def test_three_messages_stored_then_delivered_in_order_once_with_sender_and_time(server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    go_offline(server)
    sent = [alice.send_message(BOB, f"message {i}").result(10) for i in range(3)]
    for d in sent:
        assert d.status == 202 and d.stored and isinstance(d, nim.MessageDelivered)
        assert d.reason == f"Accepted (stored for later delivery: {BOB} is offline)"
    assert server.offline == {BOB: 3}
    time.sleep(1.2)  # the Date header has one-second resolution: make "sent" and "received" differ

    with nim.Platform("bob-again") as p:
        bob = p.endpoint(BOB, server=server).result(10)
        wait_for(lambda: len(bob.pager_messages) == 3, 5, "the three stored messages")
        got = list(bob.pager_messages)
        assert [e.text for e in got] == ["message 0", "message 1", "message 2"]
        for e, d in zip(got, sent):
            assert e.participant.uri == alice.uri and e.mode == "pager" and e.message_id == d.message_id
            assert e.sent_at is not None and abs(e.sent_at - d.sent_at) < timedelta(seconds=1.5), (e.sent_at, d.sent_at)
            assert e.timestamp - e.sent_at >= timedelta(seconds=1), "arrival is later than the original time"
        wait_for(lambda: server.stats["offline_delivered"] == 3, 5, "the server saw three 200s")
        time.sleep(0.3)
        assert len(bob.pager_messages) == 3 and len(incoming_messages(bob)) == 3, "exactly once"
        assert server.offline == {} and server.stats["offline_waiting"] == 0
        # back online: a new message is delivered at once (200), with no stored flag
        live = alice.send_message(BOB, "live").result(10)
        assert live.status == 200 and not live.stored
        wait_for(lambda: len(bob.pager_messages) == 4, 5, "the live message")
        assert bob.pager_messages[-1].sent_at is None, "a live message carries no Date"


@pytest.mark.slow
def test_a_message_waiting_too_long_expires():
    with world(offline_limits=nim.OfflineLimits(ttl=0.5)) as (server, alice):
        go_offline(server)
        assert alice.send_message(BOB, "too late").result(10).stored
        time.sleep(0.7)
        with nim.Platform("bob-again") as p:
            bob = p.endpoint(BOB, server=server).result(10)
            time.sleep(0.3)
            assert list(bob.pager_messages) == [] and len(incoming_messages(bob)) == 0
        assert server.stats["offline_expired"] == 1 and server.stats["offline_delivered"] == 0


def test_per_user_limit_refuses_with_480_and_a_reason():
    with world(offline_limits=nim.OfflineLimits(max_per_user=2)) as (server, alice):
        go_offline(server)
        failed = alice.events(nim.MessageFailed)
        for i in range(2):
            assert alice.send_message(BOB, f"fits {i}").result(10).stored
        with pytest.raises(nim.RequestFailed) as info:
            alice.send_message(BOB, "one too many").result(10)
        assert info.value.status == 480 and "already has 2 messages waiting" in info.value.reason
        assert failed.get(timeout=5).status == 480
        assert server.offline == {BOB: 2} and server.stats["offline_refused"] == 1


def test_unknown_user_404_invite_to_offline_user_480_and_store_off(server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    with pytest.raises(nim.RequestFailed) as info:
        alice.send_message("sip:nobody@example.test", "hello?").result(10)
    assert info.value.status == 404 and server.offline == {}
    go_offline(server)
    with pytest.raises(nim.RequestFailed) as info:
        alice.sessions.create(BOB).result(10)
    assert info.value.status == 480, "sessions are not stored, only pager-mode messages"
    with world(offline_limits=nim.OfflineLimits(max_per_user=0)) as (off, alice_off):
        go_offline(off)
        with pytest.raises(nim.RequestFailed) as info:
            alice_off.send_message(BOB, "not kept").result(10)
        assert info.value.status == 480 and info.value.reason == "Temporarily Unavailable (not registered now)"


def test_user_known_from_users_is_kept_before_first_registration():
    users = {"alice": "a-secret", "bob": "b-secret"}
    with world(password="a-secret", users=users) as (server, alice):
        assert alice.send_message(BOB, "welcome").result(10).stored
        with pytest.raises(nim.RequestFailed) as info:
            alice.send_message("sip:mallory@example.test", "no such user").result(10)
        assert info.value.status == 404
        with nim.Platform("bob") as p:
            bob = p.endpoint(BOB, server=server, password="b-secret").result(10)
            wait_for(lambda: [e.text for e in bob.pager_messages] == ["welcome"], 5, "the welcome message")


@pytest.mark.slow
def test_silent_device_keeps_the_message_until_it_registers_again():
    """A device that registers but does not answer the delivery (frozen, or gone without un-registering) is given
    up after a few retransmissions (8*T1), not Timer F: the message stays, and goes out again, the same message,
    when the device registers again (and then answers)."""
    with world(timers=FAST, offline_limits=nim.OfflineLimits(retry_interval=0.3)) as (server, alice):
        go_offline(server)
        assert alice.send_message(BOB, "keep trying").result(10).stored
        with RawDevice(server, BOB) as device:
            device.register()
            silent = device.serve(lambda m: [], 1.0)  # given up after 8*T1 = 0.4 s here: kept
            assert silent and {m.text() for m in silent} == {"keep trying"}, "retransmitted, never answered"
            assert server.offline == {BOB: 1} and server.stats["offline_delivered"] == 0
            assert device.serve(lambda m: [200], 0.8) == [], "a dead device gets no retry until it registers"
            device.register()
            retried = device.serve(lambda m: [200], 1.5, until=len)
            assert retried and retried[0].headers.get("Date") and str(retried[0].from_.uri) == "sip:alice@example.test"
            assert retried[0].call_id == silent[0].call_id, "the same message, delivered again"
            wait_for(lambda: server.stats["offline_delivered"] == 1, 3, "delivered")
            assert server.offline == {}


def test_refused_message_is_dropped_and_does_not_block_the_next():
    with world(timers=FAST) as (server, alice):
        go_offline(server)
        alice.send_message(BOB, "<b>html</b>", content_type="text/html").result(10)
        alice.send_message(BOB, "plain").result(10)
        with RawDevice(server, BOB) as device:
            device.register()
            seen = device.serve(
                lambda m: [415 if m.content_type == "text/html" else 200], 2.0, until=lambda s: len(s) == 2
            )
            assert [m.text() for m in seen] == ["<b>html</b>", "plain"]
            wait_for(
                lambda: server.stats["offline_delivered"] == 1 and server.stats["offline_rejected"] == 1, 3, "settled"
            )
            assert server.offline == {}
