"""The registrar's address index (find_contact in O(1)): it must give the same answer as a scan of every
binding, across refreshes, moves to another source, expiry, de-registration, wildcards and several
bindings per user (forking). Sans-IO: no sockets, time passed in."""

from __future__ import annotations

import os
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notebook_im.server.registrar import Binding, Registrar
from notebook_im.sip.parser import parse_message

EXAMPLES = int(os.environ.get("NIM_PROPERTY_EXAMPLES", "200"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def register(user: str, contact: str, expires: int | str, cseq: int, call_id: str = "c1"):
    return parse_message(
        f"REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{cseq}\r\n"
        f"From: <sip:{user}@example.test>;tag=a\r\nTo: <sip:{user}@example.test>\r\nCall-ID: {call_id}\r\n"
        f"CSeq: {cseq} REGISTER\r\nContact: {contact}\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n".encode()
    )


def bind(
    r: Registrar,
    user: str,
    contact: str,
    expires: int | str,
    cseq: int,
    source_port: int,
    now: float,
    transport: str = "udp",
    call_id: str = "c1",
) -> None:
    """REGISTER `contact` for `user`, as if it came from 127.0.0.1:source_port."""
    r.register(register(user, contact, expires, cseq, call_id), transport, ("127.0.0.1", source_port), now)


def scan(r: Registrar, host: str, port: int | None, now: float) -> set[str]:
    """The reference answer: every live binding at host:port (Contact first, as the index prefers), by a full scan."""
    by_contact, by_source = set(), set()
    for aor in list(r._bindings):
        for b in r.lookup(aor, now):
            if b.contact.host.strip("[]") == host and (b.contact.port or 5060) == (port or 5060):
                by_contact.add(f"{b.aor} {b.contact}")
            if b.source == (host, port or 5060):
                by_source.add(f"{b.aor} {b.contact}")
    return by_contact or by_source


def found(b: Binding | None) -> str | None:
    return None if b is None else f"{b.aor} {b.contact}"


def test_two_devices_of_one_user_are_both_found_and_dropped_separately():
    r = Registrar()
    bind(r, "bob", "<sip:bob@127.0.0.1:5071>", 60, 1, 5071, 0.0, call_id="d1")
    bind(r, "bob", "<sip:bob@127.0.0.1:5072;transport=tcp>", 60, 1, 40002, 0.0, transport="tcp", call_id="d2")
    assert len(r.lookup("sip:bob@example.test", 1.0)) == 2
    assert found(r.find_contact("127.0.0.1", 5071, 1.0)) == "sip:bob@example.test sip:bob@127.0.0.1:5071"
    assert found(r.find_contact("127.0.0.1", 40002, 1.0)) == "sip:bob@example.test sip:bob@127.0.0.1:5072;transport=tcp"
    bind(r, "bob", "<sip:bob@127.0.0.1:5071>", 0, 2, 5071, 2.0, call_id="d1")
    assert r.find_contact("127.0.0.1", 5071, 2.0) is None
    assert r.find_contact("127.0.0.1", 5072, 2.0) is not None
    assert r.index_size() == 2


def test_refresh_from_a_new_source_moves_the_index_entry():
    r = Registrar()
    bind(r, "bob", "<sip:bob@127.0.0.1:5072;transport=tcp>", 60, 1, 40001, 0.0, transport="tcp")
    bind(r, "bob", "<sip:bob@127.0.0.1:5072;transport=tcp>", 60, 2, 40009, 1.0, transport="tcp")
    assert r.find_contact("127.0.0.1", 40001, 1.0) is None, "the old connection's port is no longer bob"
    assert r.find_contact("127.0.0.1", 40009, 1.0) is not None
    assert r.index_size() == 2


def test_expiry_and_wildcard_empty_the_index():
    r = Registrar()
    bind(r, "bob", "<sip:bob@127.0.0.1:5071>", 10, 1, 5071, 0.0)
    bind(r, "carol", "<sip:carol@127.0.0.1:5073>", 100, 1, 5073, 0.0)
    assert r.find_contact("127.0.0.1", 5071, 11.0) is None, "expired"
    assert r.index_size() == 2 and len(r) == 1, "the expired binding left the index as it was found"
    bind(r, "carol", "*", 0, 2, 5073, 12.0)
    assert r.index_size() == 0 and len(r) == 0 and r.snapshot(12.0) == {}
    assert {"sip:bob@example.test", "sip:carol@example.test"} <= r.known


def test_known_user_lookup_by_user_part():
    r = Registrar()
    bind(r, "bob", "<sip:bob@127.0.0.1:5071>", 60, 1, 5071, 0.0)
    assert r.aor_for_user("bob") == "sip:bob@example.test" and r.aor_for_user("nobody") is None


def test_find_contact_does_not_scan_every_user():
    """10,000 users: one lookup costs about as much as with 10 (the old scan was O(users))."""

    def cost(n: int) -> float:
        r = Registrar()
        for i in range(n):
            r.register(
                register(f"u{i}", f"<sip:u{i}@10.0.{i // 250}.{i % 250}:5060>", 3600, 1, f"c{i}"),
                "udp",
                (f"10.0.{i // 250}.{i % 250}", 5060),
                0.0,
            )
        started = time.perf_counter()
        for _ in range(2000):
            assert r.find_contact("10.0.0.3", 5060, 1.0) is not None
            assert r.find_contact("192.0.2.1", 5060, 1.0) is None
        return time.perf_counter() - started

    small, big = cost(10), cost(10_000)
    assert big < small * 5 + 0.05, f"10 users: {small:.4f} s, 10,000 users: {big:.4f} s"


# -- the index agrees with a full scan, whatever happens to the bindings ---------------------------------------
USERS = ["alice", "bob"]
PORTS = [5071, 5072, 5073]
SOURCES = [5071, 5072, 40001, 40002]
operations = st.lists(
    st.tuples(
        st.sampled_from(["register", "unregister", "wildcard", "advance"]),
        st.sampled_from(USERS),
        st.sampled_from(PORTS),
        st.sampled_from(SOURCES),
        st.sampled_from([0, 5, 30]),
        st.sampled_from(["c1", "c2"]),
    ),
    max_size=40,
)


@SETTINGS
@given(operations)
def test_index_agrees_with_a_full_scan(ops):
    r = Registrar()
    now, cseq = 0.0, 0
    for op, user, port, source, expires, call_id in ops:
        cseq += 1
        if op == "advance":
            now += expires + 1
        elif op == "wildcard":
            r.register(register(user, "*", 0, cseq, call_id), "udp", ("127.0.0.1", source), now)
        else:
            r.register(
                register(
                    user, f"<sip:{user}@127.0.0.1:{port}>", 0 if op == "unregister" else expires or 10, cseq, call_id
                ),
                "udp",
                ("127.0.0.1", source),
                now,
            )
        for probe in set(PORTS + SOURCES):
            got = found(r.find_contact("127.0.0.1", probe, now))  # first, on bindings not purged yet
            want = scan(r, "127.0.0.1", probe, now)
            assert (got in want) if want else got is None, (op, probe, want, got)
    r.purge(now + 1000)
    assert len(r) == 0 and r.index_size() == 0, "nothing left behind in the index"
