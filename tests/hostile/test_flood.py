"""Memory under a flood: 20,000 datagrams (90% garbage of every kind, 10% valid MESSAGEs) to an endpoint and
20,000 to the embedded server. The target keeps answering, and what it retains is bounded: parse caches are
capped, malformed input keeps no state, the trace keeps at most max_records messages. Figures are printed
(RSS, the drop list, live transactions) for the README; bench-free: ~5 s per target.
"""

from __future__ import annotations

import gc
import os
import random
import socket
import time

import pytest

import notebook_im as nim
from notebook_im import testing
from tests.hostile.corpus import CASES, assert_alive, instantiate

N = int(os.environ.get("NIM_FLOOD_DATAGRAMS", "20000"))
TRACE_RECORDS = 1000
VALID = (
    "MESSAGE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKfl{i};rport\r\n"
    "Max-Forwards: 70\r\nFrom: <sip:flood@example.test>;tag=f{i}\r\nTo: <sip:bob@example.test>\r\n"
    "Call-ID: flood-{i}@127.0.0.1\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nflood"
)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover


def _garbage(rng: random.Random, port: int, invalid: list[bytes]) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randint(1, 1400))
    if kind == 1:  # a big one: the drop record must not keep it whole
        return rng.randbytes(rng.randint(20000, 60000))
    if kind == 2:  # unique long header values: the parse caches must not keep them
        return (
            f"MESSAGE sip:bob@example.test;x={rng.getrandbits(64)} SIP/2.0\r\nVia: SIP/2.0/UDP h{rng.getrandbits(64)}.test;"
            f"branch=z9hG4bK{'v' * 3000}\r\nFrom: <sip:{'u' * 3000}{rng.getrandbits(64)}@h>\r\nX: y\r\n\r\n"
        ).encode()
    return instantiate(rng.choice(invalid), port)


def flood(addr, stats, n: int, seed: int) -> dict:
    rng = random.Random(seed)
    invalid = [c.data for c in CASES if c.kind == "invalid"]
    sent = 0
    before = stats()["received"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        port = s.getsockname()[1]
        for i in range(n):
            data = VALID.format(port=port, i=f"{seed}x{i}").encode() if i % 10 == 0 else _garbage(rng, port, invalid)
            s.sendto(data, addr)
            sent += 1
            if i % 50 == 49:  # pace: let the target catch up so the flood is processed, not lost in the kernel
                deadline = time.monotonic() + 5
                last, progress_at = -1, time.monotonic()
                while time.monotonic() < deadline:
                    got = stats()["received"] - before
                    if got >= sent:
                        break
                    if got != last:
                        last, progress_at = got, time.monotonic()
                    elif time.monotonic() - progress_at > 0.5:
                        break  # nothing new for 0.5 s: the kernel dropped some; fine, move on
                    time.sleep(0.001)
                try:
                    while True:
                        s.recv(70000)  # drain the answers
                except BlockingIOError:
                    pass
    return {"sent": sent, "processed": stats()["received"] - before}


@pytest.fixture
def flood_stack():
    server = nim.Server().start().result(10)
    server.trace.max_records = TRACE_RECORDS
    platform = nim.Platform("flood", max_trace_records=TRACE_RECORDS)
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    yield server, platform, bob
    platform.shutdown()
    server.stop()


def _drop_bytes(trace) -> int:
    return sum(len(d.raw) + len(d.reason) + 300 for d in list(trace.drops))


@pytest.mark.slow
@pytest.mark.parametrize("target", ["endpoint", "server"])
def test_memory_bounded_under_flood(target, flood_stack, capsys):
    server, platform, bob = flood_stack
    if target == "server":
        addr, stats, trace, core = (
            (server.host, server.port),
            (lambda: server.stats),
            server.trace,
            testing.stack_of(server),
        )
    else:
        addr, stats, trace, core = bob.local_address, (lambda: bob.stats), platform.trace, testing.stack_of(bob)
    txn_start = core.live_server_transactions
    flood(addr, stats, 2000, seed=1)  # warm up: caches, the trace up to max_records, transport buffers
    gc.collect()
    drops0, rss0, txn0 = _drop_bytes(trace), _rss_mb(), core.live_server_transactions
    t0 = time.perf_counter()
    result = flood(addr, stats, N, seed=2)
    elapsed = time.perf_counter() - t0
    gc.collect()
    drops1, rss1, txn1 = _drop_bytes(trace), _rss_mb(), core.live_server_transactions
    drops_growth = (drops1 - drops0) / 2**20
    valid_sent = (N + 9) // 10
    with capsys.disabled():
        print(
            f"\n[flood] {target}: {result['sent']} datagrams ({valid_sent} valid) sent, {result['processed']} processed in "
            f"{elapsed:.1f} s; RSS {rss0:.0f} -> {rss1:.0f} MiB (+{rss1 - rss0:.0f}), trace.drops {drops_growth:+.1f} MiB "
            f"({len(trace.drops)} records kept); server transactions {txn0} -> {txn1}; trace kept {len(trace)} messages "
            f"(max_records {TRACE_RECORDS}, {trace.dropped_sip} not kept); stats {stats()}"
        )
    assert result["processed"] >= N * 0.8, "the flood reached the target"
    assert len(trace) <= TRACE_RECORDS
    assert len(trace.drops) <= TRACE_RECORDS and all(len(d.raw) <= 2048 for d in trace.drops), (
        "the drop list keeps the last max_records drops, at most 2 KB of each datagram"
    )
    # counted from before the warm-up, so that warm-up datagrams still queued when txn0 was read cannot count
    warm_valid = (2000 + 9) // 10
    assert txn1 - txn_start <= warm_valid + valid_sent, (
        "garbage creates no transaction state (only the valid MESSAGEs do, for timer J)"
    )
    # what may grow: ~2,000 live transactions (about 5 KB each), the capped parse caches, allocator slack
    assert rss1 - rss0 < 64, f"RSS grew {rss1 - rss0:.0f} MiB"
    assert_alive(addr, f"{target} after a flood")


def test_drop_list_is_bounded():
    """Trace.drops keeps the most recent max_records drops, each with at most 2 KB of the datagram."""
    from notebook_im.record.recorder import Trace

    trace = Trace(max_records=1000)
    for _ in range(5000):
        trace.record_drop("udp", ("127.0.0.1", 1), "garbage", b"x" * 4096, "test")
    assert len(trace.drops) <= 1000
    assert all(len(d.raw) <= 2048 for d in trace.drops)
