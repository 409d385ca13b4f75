"""What `Platform(history=...)` costs the hot path, and what a SIGKILL loses.

    python bench/history.py [--count N] [--repeat R] [--kills K]

1. msg/s of a two-party session through the embedded server on loopback (one message at a time, each awaited),
   without and with a history store, runs alternated in the same process, best of R each; the ratio is the
   figure (goal: history costs < 10 % of msg/s). CPU µs per message counts every thread (the writer included).
2. How far the writer thread runs behind: in the tight loop, delivered messages not yet committed (sampled
   with a second, read-only connection every 25 messages); at chat pace (a message every 50 ms), the ms from a
   send completing until its row is committed.
3. `--kills K`: K times, the crash test's child (tests/history/chatter.py) chats in a tight loop (no pause
   between messages), is SIGKILLed after a random number of messages, and the store is reopened: how many
   completed messages are missing.

Bounded: N messages per run (default 1000), each with the 32 s transaction timeout; kill runs end after 30 s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import select
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import notebook_im as nim

CHATTER = Path(__file__).resolve().parents[1] / "tests" / "history" / "chatter.py"  # the crash test's child


DELIVERED = "SELECT count(*) FROM events WHERE type = 'MessageDelivered' AND owner = 'sip:alice@example.test'"


@contextlib.contextmanager
def chat(history: Path | None) -> Iterator[tuple[nim.Platform, nim.ImSession]]:
    """Alice's session with bob through an embedded server, on a platform with `history` (a fresh store)."""
    if history is not None:
        for suffix in ("", "-wal", "-shm"):
            Path(str(history) + suffix).unlink(missing_ok=True)
    with nim.Server() as server, nim.Platform("bench", max_trace_records=None, history=history) as platform:
        alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
        bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
        bob.sessions.on_incoming(lambda inc: inc.accept())
        session = alice.sessions.create("sip:bob@example.test").result(10)
        yield platform, session
        session.terminate().result(10)


def run(count: int, history: Path | None) -> tuple[float, float, float, float]:
    """(msg/s, CPU µs per message, writer-thread CPU µs per message, messages per commit) of `count` session
    messages, one at a time."""
    with chat(history) as (platform, session):
        for i in range(50):  # warm-up
            session.send(f"warm {i}").result(10)
        store = platform.history_store
        if store is not None:
            store.flush()
        w0, n0 = (store.writer_cpu, store.commits) if store is not None else (0.0, 0)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(count):
            session.send(f"message {i}").result(10)
        rate = count / (time.perf_counter() - t0)
        if store is not None:
            store.flush()  # the writer's share of the work is counted in full
        cpu = (time.process_time() - c0) / count * 1e6
        writer = (store.writer_cpu - w0) / count * 1e6 if store is not None else 0.0
        per_commit = count / max(1, store.commits - n0) if store is not None else 0.0
    return rate, cpu, writer, per_commit


def writer_lag(count: int, path: Path) -> list[int]:
    """Delivered messages not yet committed, sampled after every 25th send."""
    lag = []
    with chat(path) as (_platform, session):
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        for i in range(count):
            session.send(f"message {i}").result(10)
            if i % 25 == 24:
                lag.append(i + 1 - reader.execute(DELIVERED).fetchone()[0])
        reader.close()
    return lag


def commit_latency(count: int, path: Path, pause: float = 0.05) -> list[float]:
    """At chat pace (a message every `pause` s): ms from a send completing until its MessageDelivered row is
    committed (polled by a second, read-only connection every 0.2 ms): how much a kill right then could lose."""
    out = []
    with chat(path) as (_platform, session):
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        for i in range(count):
            time.sleep(pause)
            session.send(f"message {i}").result(10)
            t0 = time.perf_counter()
            while reader.execute(DELIVERED).fetchone()[0] < i + 1 and time.perf_counter() - t0 < 5:
                time.sleep(0.0002)
            out.append((time.perf_counter() - t0) * 1000)
        reader.close()
    return out


def kill_once(folder: Path, after: int) -> int:
    """Messages completed before a SIGKILL but missing from the reopened store."""
    path = folder / f"kill-{after}.sqlite"
    proc = subprocess.Popen([sys.executable, str(CHATTER), str(path), "0"], stdout=subprocess.PIPE, text=True)
    last, deadline = -1, time.monotonic() + 30
    while last < after and time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 1.0)[0]:
            line = proc.stdout.readline()
            if not line:
                break
            last = int(line) if line.strip().isdigit() else last
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    last = max([last, *(int(x) for x in proc.stdout.read().split() if x.isdigit())])
    proc.stdout.close()
    with nim.Platform(history=path) as platform:
        stored = {
            t for t in platform.trace.messages(owner="sip:alice@example.test").query("status == 'delivered'").text
        }
    return sum(f"line {i}" not in stored for i in range(last + 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--kills", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        off, on = [], []
        for _ in range(args.repeat):  # alternated, so a busy moment of the machine hits both
            off.append(run(args.count, None))
            on.append(run(args.count, folder / "bench.sqlite"))
        lag = writer_lag(args.count, folder / "lag.sqlite")
        latency = commit_latency(60, folder / "latency.sqlite")
        lost = [kill_once(folder, random.randint(100, 600)) for _ in range(args.kills)]
    rate_off, rate_on = max(r[0] for r in off), max(r[0] for r in on)
    cpu_off, cpu_on = min(r[1] for r in off), min(r[1] for r in on)
    writer = statistics.median(r[2] for r in on)
    per_commit = statistics.median(r[3] for r in on)
    print(
        f"| session MESSAGE, one at a time, via the embedded server ({args.count} messages, best of {args.repeat}) "
        "| msg/s | CPU µs per message |"
    )
    print("|---|---:|---:|")
    print(f"| without history | {rate_off:,.1f} | {cpu_off:,.0f} |")
    print(f"| with history= (SQLite, WAL, writer thread) | {rate_on:,.1f} | {cpu_on:,.0f} |")
    print(
        f"| cost of history | {100 * (1 - rate_on / rate_off):+.1f} % of msg/s | {100 * (cpu_on / cpu_off - 1):+.1f} % |"
    )
    print(f"| ratio with/without | {rate_on / rate_off:.3f} | |")
    print(f"| of which the writer thread (median) | | {writer:,.0f} |")
    print()
    paired = [b[0] / a[0] for a, b in zip(off, on)]
    print(
        f"messages per commit (median): {per_commit:.1f}; paired ratios (with/without, run by run): "
        f"{', '.join(f'{r:.2f}' for r in paired)} (median {statistics.median(paired):.3f})"
    )
    print(
        f"writer behind (delivered messages not yet committed, {len(lag)} samples): "
        f"median {statistics.median(lag):.0f}, max {max(lag)}"
    )
    q = statistics.quantiles(latency, n=20)
    print(
        f"chat pace (a message every 50 ms): ms from a completed send to its row committed: median "
        f"{statistics.median(latency):.1f}, p95 {q[18]:.1f}, max {max(latency):.1f}"
    )
    if lost:
        print(
            f"SIGKILL in a tight loop, {len(lost)} runs: completed messages missing after reopening: "
            f"{sorted(lost)} (median {statistics.median(lost):.0f})"
        )


if __name__ == "__main__":
    main()
