"""LOW. The stateless relay's table of unanswered requests is bounded by count (max_pending = 10,000, "a few
KiB each") but each entry keeps the request's bytes: one sender flooding a silent (or its own) device with
60 KB MESSAGEs pins ~60 KB per entry, measured ~117 MiB of RSS per 1,000, so ~1.1 GiB per process (x workers)
within device_timeout (4 s by default). A byte budget, or a per-device cap, would bound it."""

from __future__ import annotations

import time

import pytest

import notebook_im as nim
from notebook_im.runtime import runtime
from tests.security.raw import RawPeer

pytestmark = pytest.mark.timeout(60)
BUDGET = 16 * 1024 * 1024


def test_the_pending_table_holds_a_bounded_number_of_bytes():
    with nim.Server() as server, RawPeer() as bob, RawPeer("127.0.0.5") as mallory:  # device_timeout 4 s
        addr = (server.host, server.port)
        assert bob.register(addr, "bob").startswith(b"SIP/2.0 200")
        body = b"A" * 60_000
        for i in range(400):
            data, _ = mallory.request(
                "MESSAGE",
                "sip:bob@example.test",
                from_="sip:m@example.test",
                to="sip:bob@example.test",
                body=body,
                content_type="text/plain",
            )
            mallory.send(data, addr)
            if i % 50 == 0:
                time.sleep(0.01)
        time.sleep(0.3)
        held = runtime().run_sync(lambda: sum(len(e[3]) for e in server.proxy.stateless._pending.values()))
        assert held <= BUDGET, f"{server.proxy.stateless.pending} pending requests hold {held / 2**20:.0f} MiB"
