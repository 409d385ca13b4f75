"""Red team (s23): `net/resolve.literal()` now remembers its answers keyed by the host *as written*, bounded
only by the number of entries (`_MAX_CACHE` = 4096), never by their size, and never cleared.

The defect: a host string an attacker writes is kept for the life of the process. The URI parser accepts a
host with trailing brackets (`sip:127.0.0.1]]]]...`), the proxy's in-dialog routing strips them
(`find_contact(host.strip("[]"), ...)`) so the request is relayed to the registered device as any other, and
`target_of(next_hop)` -> `resolve.cached` -> `literal()` stores the whole ~8 KB host as a new key. Every
datagram with one more bracket adds ~8 KB that is never released: 4096 datagrams pin ~33 MB in every server
process, outside any budget, and leave the cache full of junk so that no legitimate host is ever cached again.
Before the commit `literal()` kept nothing. (A fix: key on the stripped host, or do not cache long hosts.)"""

from __future__ import annotations

import time

import pytest

import notebook_im as nim
from notebook_im.net import resolve
from tests.security.raw import RawPeer

pytestmark = pytest.mark.timeout(60)

FAST = nim.Timers(t1=0.05, t2=0.4, t4=0.5)


def test_hostile_route_hosts_are_not_retained_by_the_literal_cache():
    saved = dict(resolve._LITERALS)
    resolve._LITERALS.clear()  # a fresh cache, so that a cache already full cannot hide the growth
    try:
        with nim.Server(timers=FAST) as server:
            addr = (server.host, server.port)
            with RawPeer() as alice, RawPeer("127.0.0.3") as bob:
                assert bob.register(addr, "bob").startswith(b"SIP/2.0 200")
                sent = 32
                for i in range(sent):
                    host = bob.host + "]" * (8000 + i)  # strips to bob's registered address
                    data, _ = alice.request(
                        "MESSAGE",
                        f"sip:bob@{bob.hostport}",
                        from_="sip:alice@example.test",
                        to="sip:bob@example.test",
                        to_tag="dialog",
                        extra=[f"Route: <sip:{host}:{bob.port};lr>"],
                        body=b"x",
                        content_type="text/plain",
                    )
                    alice.send(data, addr)
                    time.sleep(0.005)
                deadline = time.monotonic() + 5
                while server.stats["stateless_relayed"] < sent // 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert server.stats["stateless_relayed"] >= sent // 2, "the hostile requests were relayed"
                retained = sum(len(k) for k in resolve._LITERALS if "]]]" in k)
                assert retained < 64 * 1024, (
                    f"{retained} bytes of attacker-written hosts kept by literal()'s cache after "
                    f"{server.stats['stateless_relayed']} datagrams ({len(resolve._LITERALS)} entries, never freed)"
                )
    finally:
        resolve._LITERALS.clear()
        resolve._LITERALS.update(saved)
