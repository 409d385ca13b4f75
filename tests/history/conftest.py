"""Fixtures of the history tests: a chat recorded into a history store, to be reopened by a new Platform."""

from __future__ import annotations

import os
import time
from pathlib import Path

import notebook_im as nim
from tests.helpers import accept_all, udp_exchange, wait_for

TEXTS = ["hello bob", "two\nlines ✓"]
# the environment of child processes: they import the notebook_im these tests run against
CHILD_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(nim.__file__).parents[1]), os.environ.get("PYTHONPATH")])),
}


def record_chat(
    path: Path | str, server: nim.Server, *, password: str | None = None, bob_password: str | None = None
) -> nim.Platform:
    """One run of a notebook: alice (UDP) and bob (TCP) chat in session and pager mode (plus a 404, a reply and
    a dropped datagram), then the platform shuts down. Returns the shut-down platform (its trace is readable)."""
    platform = nim.Platform("run-1", history=path)
    try:
        alice = platform.endpoint(
            "sip:alice@example.test", server=server, transport="udp", password=password, display_name="Alice Smith"
        ).result(10)
        bob = platform.endpoint(
            "sip:bob@example.test", server=server, transport="tcp", password=bob_password, display_name="Bob Jones"
        ).result(10)
        accepted = accept_all(bob)
        session = alice.sessions.create("sip:bob@example.test").result(10)
        wait_for(lambda: accepted and accepted[0].state is nim.SessionState.CONNECTED, what="bob connected")
        session.start_composing().result(5)
        for text in TEXTS:
            session.send(text).result(10)
        accepted[0].send("hi alice").result(10)
        alice.send_message("sip:bob@example.test", "pager hello").result(10)
        try:
            alice.send_message("sip:nobody@example.test", "anyone?").result(10)
        except nim.RequestFailed:
            pass
        udp_exchange(b"\x00\x01 not sip at all", alice.local_address, timeout=0.2)  # a drop, recorded
        wait_for(lambda: platform.trace.drop_count >= 1, what="the datagram dropped")
        session.terminate().result(10)
        time.sleep(0.05)
    finally:
        platform.shutdown()
    return platform
