"""The compact store of completed UDP non-INVITE server transactions (sip/completed.py): Timer J expiry and
the bounds that keep a flood from growing memory."""

from notebook_im.sip.completed import CompletedTransactions


def test_entries_answer_until_timer_j_then_expire():
    c = CompletedTransactions()
    c.add("k1", b"SIP/2.0 200 OK", "target", "src", expires_at=32.0)
    c.add("k2", b"SIP/2.0 404", "target2", "src", expires_at=33.0)
    assert c.get("k1") == (b"SIP/2.0 200 OK", "target") and "k2" in c
    assert c.expire(31.9) == 0 and len(c) == 2
    assert c.next_expiry() == 32.0
    assert c.expire(32.0) == 1 and c.get("k1") is None and c.get("k2") is not None
    assert c.expire(40.0) == 1 and len(c) == 0 and c.next_expiry() is None


def test_per_source_bound_pushes_out_that_sources_oldest_only():
    c = CompletedTransactions(per_source=3, total=100)
    c.add("other", b"o", None, "quiet", 10.0)
    for i in range(5):
        c.add(f"k{i}", b"x", None, "busy", 10.0 + i)
    assert [k for k in ("k0", "k1", "k2", "k3", "k4") if k in c] == ["k2", "k3", "k4"]
    assert "other" in c, "a busy source cannot push out another source's entries"
    assert c.evicted_early == 2


def test_total_bound_pushes_out_the_oldest_overall():
    c = CompletedTransactions(per_source=100, total=3)
    for i, src in enumerate(["a", "b", "c", "d"]):
        c.add(f"k{i}", b"x", None, src, 10.0 + i)
    assert "k0" not in c and all(f"k{i}" in c for i in (1, 2, 3)) and c.evicted_early == 1


def test_re_adding_a_key_keeps_one_entry_with_the_new_expiry():
    c = CompletedTransactions()
    c.add("k", b"first", None, "s", 10.0)
    c.add("k", b"second", None, "s", 20.0)
    assert len(c) == 1 and c.get("k") == (b"second", None)
    assert c.expire(15.0) == 0 and "k" in c, "the stale queue entry of the first add does not expire the second"
    assert c.expire(20.0) == 1 and len(c) == 0


def test_many_early_evictions_keep_the_expiry_queue_bounded():
    c = CompletedTransactions(per_source=10, total=1000)
    for i in range(20_000):  # bounded: 20,000 adds from one source
        c.add(i, b"x", None, "s", 1000.0 + i)
    assert len(c) == 10
    assert len(c._expiry) <= 2 * len(c) + 1024 + 1
