"""Two endpoints on loopback through the embedded server: messages per second and delivery latency.

    python bench/loopback.py [--count N] [--transport udp|tcp]

Bounded: N messages (default 2000), each with the 32 s transaction timeout; loopback only. The anchor for
the ratio is the parse+serialize rate of one message in this process (the work floor of a hop), so the
figure is comparable across machines of different speed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import notebook_im as nim
from notebook_im.sip.parser import parse_message

SAMPLE = (
    b"MESSAGE sip:bob@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK776;rport\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:alice@example.test>;tag=49583\r\nTo: <sip:bob@example.test>;tag=8321\r\n"
    b"Call-ID: asd88asd77a@127.0.0.1\r\nCSeq: 12 MESSAGE\r\nContent-Type: text/plain;charset=UTF-8\r\n"
    b"Content-Length: 5\r\n\r\nhello"
)


def parse_rate(seconds: float = 1.0) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(200):
            bytes(parse_message(SAMPLE))
        n += 200
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    args = ap.parse_args()
    with nim.Server() as server, nim.Platform("bench", max_trace_records=10 * args.count) as platform:
        alice = platform.endpoint("sip:alice@example.test", server=server, transport=args.transport).result(10)
        bob = platform.endpoint("sip:bob@example.test", server=server, transport=args.transport).result(10)
        bob.sessions.on_incoming(lambda inc: inc.accept())
        session = alice.sessions.create("sip:bob@example.test").result(10)
        for i in range(50):  # warm-up
            session.send(f"warm {i}").result(10)
        t0 = time.perf_counter()
        latencies = [session.send(f"message {i}").result(10).latency for i in range(args.count)]
        seq_rate = args.count / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        ops = [session.send(f"queued {i}") for i in range(args.count)]
        for op in ops:
            op.result(60)
        queued_rate = args.count / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        pager = [alice.send_message("sip:bob@example.test", f"pager {i}") for i in range(args.count)]
        for op in pager:
            op.result(60)
        pager_rate = args.count / (time.perf_counter() - t0)
        session.terminate().result(10)
    anchor = parse_rate()
    q = statistics.quantiles(latencies, n=100)
    rows = [
        ("session MESSAGE, one at a time (msg/s)", seq_rate),
        ("session MESSAGE, queued (msg/s)", queued_rate),
        ("pager MESSAGE, all in flight (msg/s)", pager_rate),
        ("latency p50 (ms)", q[49] * 1000),
        ("latency p99 (ms)", q[98] * 1000),
        ("anchor: parse+serialize one MESSAGE (msg/s)", anchor),
    ]
    print(f"| figure ({args.transport}, {args.count} messages, via the embedded server) | value | ratio to anchor |")
    print("|---|---:|---:|")
    for name, value in rows:
        ratio = f"{value / anchor:.3f}" if "msg/s" in name and "anchor" not in name else ""
        print(f"| {name} | {value:,.1f} | {ratio} |")


if __name__ == "__main__":
    main()
