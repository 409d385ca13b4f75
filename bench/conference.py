"""Conference throughput through the embedded server's focus, against a two-party anchor in the same run.

    python bench/conference.py [--sizes 3,5,10,20,40] [--messages 20] [--transport udp|tcp] [--budget 240]

For each size N: N endpoints join one conference (create_conference + N-1 invitations), then every
participant queues `--messages` messages at once; the run ends when every participant has received every
other participant's messages (exactly once, checked). Figures: time to assemble the conference, messages
the focus accepted per second (sent), relayed deliveries per second (N*(N-1)*M / elapsed), latency of the
last delivery. The anchor is the queued two-party session rate through the same server (same process,
same loop), so the ratio says what one conference delivery costs compared with one two-party message.

Bounded: sizes are capped at 60 (the focus limit is 100), every wait has a timeout, and the whole run stops
starting new sizes once `--budget` seconds have passed. Everything (server, focus, all endpoints) runs in
this one process on the library's one loop thread, so all of it shares one core.
"""

from __future__ import annotations

import argparse
import time

import notebook_im as nim

NAMES = [f"user{i:02d}" for i in range(60)]


def wait_until(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.002)
    return False


def two_party_anchor(platform: nim.Platform, server: nim.Server, transport: str, count: int) -> float:
    a = platform.endpoint("sip:anchor-a@example.test", server=server, transport=transport).result(10)
    b = platform.endpoint("sip:anchor-b@example.test", server=server, transport=transport).result(10)
    got = []
    b.on(nim.MessageReceived, got.append)
    b.sessions.on_incoming(lambda inc: inc.accept())
    s = a.sessions.create(b.uri).result(10)
    for i in range(20):
        s.send(f"warm {i}").result(10)
    wait_until(lambda: len(got) == 20, 10)
    t0 = time.perf_counter()
    ops = [s.send(f"queued {i}") for i in range(count)]
    for op in ops:
        op.result(60)
    wait_until(lambda: len(got) == 20 + count, 30)
    rate = count / (time.perf_counter() - t0)
    s.terminate().result(10)
    a.disable().result(10)
    b.disable().result(10)
    return rate


def run_conference(
    platform: nim.Platform, server: nim.Server, n: int, m: int, transport: str, offset: int
) -> dict[str, float] | None:
    eps = []
    for name in NAMES[offset : offset + n]:
        ep = platform.endpoint(f"sip:{name}@example.test", server=server, transport=transport).result(10)
        ep.got = []
        ep.on(nim.MessageReceived, ep.got.append)
        ep.joined = []
        ep.sessions.on_incoming(lambda inc, ep=ep: (ep.joined.append(inc.session), inc.accept()))
        eps.append(ep)
    t0 = time.perf_counter()
    conf = eps[0].sessions.create_conference([e.uri for e in eps[1:]]).result(300)
    sessions = [conf] + [e.joined[0] if e.joined else None for e in eps[1:]]
    ok = None not in sessions and wait_until(
        lambda: all(
            len([p for p in s.participants if p.state is nim.ParticipantState.CONNECTED]) == n - 1 for s in sessions
        ),
        60,
    )
    assemble = time.perf_counter() - t0
    if not ok:
        print(f"  size {n}: the conference did not assemble ({conf.failed_invitations})")
        return None
    t0 = time.perf_counter()
    ops = [s.send(f"{e.uri} {i}") for i in range(m) for s, e in zip(sessions, eps)]
    for op in ops:
        op.result(120)
    accepted = time.perf_counter() - t0
    want = (n - 1) * m
    complete = wait_until(lambda: all(len(e.got) >= want for e in eps), 300)
    elapsed = time.perf_counter() - t0
    exact = (
        complete
        and all(len(e.got) == want for e in eps)
        and all(
            [x.text for x in e.got if x.participant.uri == o.uri] == [f"{o.uri} {i}" for i in range(m)]
            for e in eps
            for o in eps
            if o is not e
        )
    )
    for s in sessions:
        s.terminate().result(30)
    for e in eps:
        e.disable().result(30)
    if not exact:
        print(f"  size {n}: deliveries incomplete or out of order")
        return None
    return {
        "n": n,
        "assemble_s": assemble,
        "sent_per_s": n * m / accepted,
        "deliveries_per_s": n * (n - 1) * m / elapsed,
        "elapsed_s": elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="3,5,10,20,40")
    ap.add_argument("--messages", type=int, default=20)
    ap.add_argument("--anchor-count", type=int, default=1000)
    ap.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    ap.add_argument("--budget", type=float, default=240.0, help="stop starting new sizes after this many seconds")
    args = ap.parse_args()
    sizes = [min(60, int(s)) for s in args.sizes.split(",") if s.strip()]
    started = time.monotonic()
    with nim.Server() as server, nim.Platform("bench-conf", max_trace_records=200_000) as platform:
        anchor = two_party_anchor(platform, server, args.transport, args.anchor_count)
        rows = []
        for n in sizes:
            if time.monotonic() - started > args.budget:
                print(f"  (budget of {args.budget:g} s spent: sizes from {n} on not run)")
                break
            with platform.trace.paused():
                r = run_conference(platform, server, n, args.messages, args.transport, 0)
            if r is None:
                break
            rows.append(r)
        focus_stats = server.focus.stats
    print(
        f"| conference ({args.transport}, {args.messages} messages from every participant at once) | assemble (s) "
        "| sent msg/s | deliveries/s | ratio to anchor |"
    )
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['n']} participants | {r['assemble_s']:.2f} | {r['sent_per_s']:,.0f} | {r['deliveries_per_s']:,.0f} "
            f"| {r['deliveries_per_s'] / anchor:.2f} |"
        )
    print(
        f"| anchor: two-party session, queued (msg/s, same server, same run) | | {anchor:,.0f} | {anchor:,.0f} | 1.00 |"
    )
    if rows:
        print(
            f"\nlargest conference that delivered every message exactly once and in order: {rows[-1]['n']} participants"
        )
    print(f"focus stats: {focus_stats}")
    print(f"total run time: {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
