"""The offline message store, sans-IO (time passed in): order, bounds per user / in all / in bytes, expiry,
duplicates, and what a stored message looks like when it is delivered."""

from __future__ import annotations

import pytest

from notebook_im.server.offline import OfflineLimits, OfflineStore, Refused, StoredMessage
from notebook_im.sip.date import parse_date
from notebook_im.sip.parser import parse_message

BOB = "sip:bob@example.test"
WALL = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def message(text: str = "hi", msg_id: str | None = None, sender: str = "alice", date: str | None = None, size: int = 0):
    body = (text + "x" * size).encode()
    extra = (f"Imdn-Message-ID: {msg_id}\r\n" if msg_id else "") + (f"Date: {date}\r\n" if date else "")
    return parse_message(
        f"MESSAGE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{text}{msg_id}\r\n"
        'Max-Forwards: 70\r\nRoute: <sip:127.0.0.1:5060;lr>\r\nProxy-Authorization: Digest username="alice"\r\n'
        f"From: <sip:{sender}@example.test>;tag=a1\r\nTo: <sip:bob@example.test>\r\nCall-ID: c-{text}\r\n"
        f"CSeq: 7 MESSAGE\r\n{extra}Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def test_kept_in_order_and_delivered_oldest_first():
    store = OfflineStore()
    for i in range(3):
        assert isinstance(store.store(BOB, message(f"m{i}"), now=float(i), wall=WALL + i), StoredMessage)
    assert [m.request.text() for m in store.pending(BOB, 3.0)] == ["m0", "m1", "m2"]
    first = store.next(BOB, 3.0)
    assert first.request.text() == "m0" and first.attempts == 1
    assert store.next(BOB, 3.0) is first and first.attempts == 2, "kept until delivered"
    store.delivered(first)
    assert store.next(BOB, 3.0).request.text() == "m1"
    assert store.stats["stored"] == 3 and store.stats["delivered"] == 1 and len(store) == 2 and store.count(BOB) == 2


def test_stored_message_keeps_sender_and_id_drops_hop_by_hop_headers_and_gets_a_date():
    store = OfflineStore()
    kept = store.store(BOB, message("m", msg_id="id-1"), now=0.0, wall=WALL).request
    for gone in ("Via", "Route", "Proxy-Authorization"):
        assert kept.headers.get(gone) is None, gone
    assert str(kept.from_.uri) == "sip:alice@example.test" and kept.from_.tag == "a1"
    assert kept.headers.get("Imdn-Message-ID") == "id-1" and kept.call_id == "c-m" and kept.cseq.number == 7
    assert kept.headers.get("Date") == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert parse_date(kept.headers.get("Date")).timestamp() == WALL
    own = store.store(BOB, message("n", date="Mon, 13 Nov 2023 10:00:00 GMT"), now=0.0, wall=WALL).request
    assert own.headers.get("Date") == "Mon, 13 Nov 2023 10:00:00 GMT", "the sender's own Date is kept"


def test_per_user_limit_refuses_with_480_and_other_users_still_fit():
    store = OfflineStore(OfflineLimits(max_per_user=2))
    store.store(BOB, message("a"), 0.0, WALL)
    store.store(BOB, message("b"), 0.0, WALL)
    refused = store.store(BOB, message("c"), 0.0, WALL)
    assert isinstance(refused, Refused) and refused.status == 480
    assert "already has 2 messages waiting" in refused.reason and BOB in refused.reason
    assert isinstance(store.store("sip:carol@example.test", message("d"), 0.0, WALL), StoredMessage)
    assert store.stats["refused"] == 1 and len(store) == 3


def test_global_limits_refuse_with_503():
    store = OfflineStore(OfflineLimits(max_total=2))
    store.store(BOB, message("a"), 0.0, WALL)
    store.store("sip:carol@example.test", message("b"), 0.0, WALL)
    refused = store.store("sip:dave@example.test", message("c"), 0.0, WALL)
    assert refused.status == 503 and "offline message store is full" in refused.reason
    store = OfflineStore(OfflineLimits(max_bytes=3000))
    assert isinstance(store.store(BOB, message("a", size=1000), 0.0, WALL), StoredMessage)
    assert store.store(BOB, message("b", size=2000), 0.0, WALL).status == 503
    assert store.bytes < 3000


def test_expiry_drops_and_counts_and_frees_room():
    store = OfflineStore(OfflineLimits(ttl=10.0, max_per_user=2))
    store.store(BOB, message("old"), 0.0, WALL)
    store.store(BOB, message("new"), 5.0, WALL + 5)
    assert [m.request.text() for m in store.pending(BOB, 9.9)] == ["old", "new"]
    assert store.next(BOB, 10.0).request.text() == "new"
    assert store.stats["expired"] == 1
    assert isinstance(store.store(BOB, message("room again"), 10.0, WALL + 10), StoredMessage)
    assert store.snapshot(15.0) == {BOB: 1} and store.stats["expired"] == 2
    assert store.next(BOB, 100.0) is None and len(store) == 0 and store.bytes == 0 and store.snapshot(100.0) == {}


def test_a_retried_message_is_stored_once():
    store = OfflineStore()
    first = store.store(BOB, message("a", msg_id="same"), 0.0, WALL)
    again = store.store(BOB, message("a", msg_id="same"), 1.0, WALL + 1)
    assert again is first and len(store) == 1 and store.stats["duplicates"] == 1
    other_sender = store.store(BOB, message("a", msg_id="same", sender="carol"), 1.0, WALL)
    assert other_sender is not first and len(store) == 2
    store.delivered(first)
    assert isinstance(store.store(BOB, message("a", msg_id="same"), 2.0, WALL), StoredMessage), "gone once delivered"


def test_rejected_leaves_and_counts_twice_removal_is_harmless():
    store = OfflineStore()
    m = store.store(BOB, message("a"), 0.0, WALL)
    store.rejected(m)
    store.rejected(m)
    store.delivered(m)
    assert store.stats["rejected"] == 1 and store.stats["delivered"] == 0 and len(store) == 0


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"max_per_user": -1}, "max_per_user must be an int >= 0"),
        ({"max_total": 1.5}, "max_total must be an int >= 0"),
        ({"ttl": 0}, "ttl must be a number of seconds > 0"),
        ({"retry_interval": "30"}, "retry_interval must be a number of seconds > 0"),
    ],
)
def test_bad_limits_say_what_is_wrong(kwargs, text):
    with pytest.raises(ValueError, match=text):
        OfflineLimits(**kwargs)


def test_zero_per_user_turns_the_store_off():
    assert not OfflineStore(OfflineLimits(max_per_user=0)).enabled and OfflineStore().enabled
