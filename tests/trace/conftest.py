"""A small recorded chat shared by the trace tests: alice (UDP) and bob (TCP) through the embedded server.

composing, two session messages, one pager message (each answered by bob's delivery notification), one pager
message to nobody (404), BYE.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest

import notebook_im as nim

TEXTS = ["hello bob", "two\nlines ✓"]


@dataclass
class Chat:
    platform: nim.Platform
    server_trace: nim.Trace
    alice: nim.Endpoint
    bob: nim.Endpoint
    session: Any  # alice's ImSession
    bob_session: Any
    call_id: str

    @property
    def trace(self) -> nim.Trace:
        return self.platform.trace


@pytest.fixture(scope="package")
def chat() -> Chat:
    server = nim.Server().start().result(10)
    platform = nim.Platform("trace-tests")
    try:
        alice = platform.endpoint("sip:alice@example.test", server=server, transport="udp").result(10)
        bob = platform.endpoint("sip:bob@example.test", server=server, transport="tcp").result(10)
        incoming: list = []
        bob.sessions.on_incoming(lambda inc: (incoming.append(inc), inc.accept()))
        session = alice.sessions.create("sip:bob@example.test").result(10)
        deadline = time.monotonic() + 5
        while not incoming and time.monotonic() < deadline:
            time.sleep(0.01)
        bob_session = incoming[0].session
        bob_session.wait_connected(5).result(6)
        session.start_composing().result(5)
        time.sleep(0.05)
        receipts = alice.events(nim.MessageDeliveryNotified)
        for text in TEXTS:
            session.send(text).result(10)
        alice.send_message("sip:bob@example.test", "pager hello").result(10)
        for _ in range(len(TEXTS) + 1):  # bob's delivery notifications (RFC 5438): one per message
            receipts.get(timeout=5)
        receipts.close()
        with pytest.raises(nim.RequestFailed):
            alice.send_message("sip:nobody@example.test", "anyone?").result(10)
        call_id = session.dialog.call_id
        time.sleep(0.1)
        session.terminate().result(10)
        time.sleep(0.1)
        chat = Chat(platform, server.trace, alice, bob, session, bob_session, call_id)
        yield chat
    finally:
        platform.shutdown()
        server.stop()
