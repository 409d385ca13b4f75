"""Soak: memory over a long chat. One process, an embedded server, two endpoints, one IM session, N messages sent
on a fixed schedule of RATE per second with receipts on (the defaults), RSS read from /proc as it goes.

    python bench/soak.py [--count 150000] [--rate 800] [--history] [--trace-budget 128MiB]
    bench/run --only soak          (both variants, history off and on: the count below, a few minutes each)

Why. A reviewer's soak of 150,000 messages grew RSS from 30 MiB to 2.56 GiB: every record of both traces (~22
records, ~24 KB a message) and two ChatMessage objects per message stayed in memory. With the trace budget
(record/budget.py) and the session window (api/messages.MessageLog) memory must level off: the goal is RSS at
1,000,000 messages <= 300 MiB with default settings, <= 400 MiB with `Platform(history=...)`. One million
messages at 800/s take ~21 minutes, so the default count is 150,000 (~3 minutes) and the benchmark reports the
RSS slope per 100,000 messages over the second half of the run (when the trace budget is full), and the 1M
figure extrapolated from it: final RSS + slope x (1,000,000 - N) / 100,000. `--count 1000000` measures it.

The anchor: the RSS of the same process idle, after the server, the platform, both endpoints and the session
are up and 200 warm-up messages went through (measured in the same run, before the soak starts).

Every message must arrive, once, in order (bob's MessageReceived callback checks the sequence); a send that
fails counts. Sends follow the schedule (sleep until the next slot, never wait for an answer), so a library
that falls behind shows up as messages still in flight at the end; after the last send, deliveries are
waited for while they keep coming (DRAIN_IDLE seconds without one, or DRAIN_CAP in all, ends the wait).
Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:
    sys.path.insert(1, str(BENCH.parent))

RATE = 800
COUNT = 150_000
QUICK_COUNT = 20_000
DRAIN_IDLE = 10.0
DRAIN_CAP = 120.0
SAMPLE_EVERY = 5_000  # messages between RSS samples
IN_FLIGHT = 2_000  # unsettled sends at most (2.5 s at 800/s): see the module docstring
GOAL_MIB = {False: 300, True: 400}  # RSS at 1,000,000 messages, history off / on


def proc_status() -> dict[str, float]:
    """VmRSS and VmHWM of this process in MiB (/proc/self/status)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) / 1024
    return out


def slope_per_100k(samples: list[tuple[int, float]]) -> float:
    """Least-squares slope of RSS (MiB) over messages, per 100,000 messages."""
    if len(samples) < 2:
        return float("nan")
    xs = [s[0] for s in samples]
    ys = [s[1] for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return float("nan")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var * 100_000


def stored_in_order(platform: Any, count: int) -> dict[str, int]:
    """The whole conversation must still be queryable from the history store once memory let go of it: every
    soak message bob received, read back with SQL (streamed, after the RSS figures are taken), in order."""
    import sqlite3

    platform.history_store.flush(60)
    con = sqlite3.connect(f"file:{platform.history_store.path}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT fields FROM events WHERE type = 'MessageReceived' ORDER BY id")
        expected, found, out_of_order = 0, 0, 0
        for (fields,) in rows:
            text = json.loads(fields).get("text", "")
            if not text.startswith("m") or not text[1:].isdigit():
                continue  # the warm-up
            found += 1
            if int(text[1:]) != expected:
                out_of_order += 1
            expected = int(text[1:]) + 1
        sip_rows = con.execute("SELECT count(*) FROM sip").fetchone()[0]
    finally:
        con.close()
    return {"messages": found, "out_of_order": out_of_order, "sip_rows": sip_rows, "of": count}


def measure(count: int, rate: int, history: bool, trace_budget: str | None, in_flight: int) -> dict[str, Any]:
    """The soak itself (in a fresh process: RSS is the process's)."""
    import gc

    import notebook_im as nim
    from notebook_im.runtime import runtime

    if trace_budget:
        nim.trace_budget().set_limit(trace_budget)
    store_dir = tempfile.mkdtemp(prefix="nim-soak-")
    server = nim.Server().start().result(10)
    platform = nim.Platform("soak", history=os.path.join(store_dir, "soak.sqlite") if history else None)
    try:
        alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
        bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
        bob.sessions.on_incoming(lambda incoming: incoming.accept())
        state = {"next": 0, "out_of_order": 0, "received": 0, "last_at": time.monotonic(), "failed": 0, "settled": 0}
        lock = threading.Lock()

        def on_message(event: nim.MessageReceived) -> None:
            if not event.text.startswith("m"):
                return
            i = int(event.text[1:])
            if i != state["next"]:
                state["out_of_order"] += 1
            state["next"] = i + 1
            state["received"] += 1
            state["last_at"] = time.monotonic()

        def settled(op: Any) -> None:
            with lock:
                state["settled"] += 1
                if op.exception() is not None:
                    state["failed"] += 1

        session = alice.sessions.create("sip:bob@example.test").result(10)
        for i in range(200):  # warm-up, one at a time: caches, transaction tables, the first trace chunks
            session.send(f"warm {i}").result(10)
        bob.on(nim.MessageReceived, on_message)
        time.sleep(1.0)
        gc.collect()
        idle = proc_status()
        samples: list[tuple[int, float, float]] = [(0, 0.0, idle["VmRSS"])]
        t0 = time.perf_counter() + 0.05
        stalled = 0.0  # seconds the sender waited because `in_flight` sends were outstanding
        most = 0
        for i in range(count):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            outstanding = i - state["settled"]
            most = max(most, outstanding)
            if outstanding >= in_flight:
                waited = time.perf_counter()
                while i - state["settled"] >= in_flight:
                    time.sleep(0.001)
                stalled += time.perf_counter() - waited
            session.send(f"m{i}").add_done_callback(settled)
            if (i + 1) % SAMPLE_EVERY == 0:
                samples.append((i + 1, time.perf_counter() - t0, proc_status()["VmRSS"]))
        send_seconds = time.perf_counter() - t0
        deadline = time.monotonic() + DRAIN_CAP
        while state["received"] < count and time.monotonic() < deadline:
            if time.monotonic() - state["last_at"] > DRAIN_IDLE:
                break
            time.sleep(0.05)
        time.sleep(1.0)  # the last receipts
        end = proc_status()
        stored = stored_in_order(platform, count) if history else None
        second_half = [(n, rss) for n, _, rss in samples if n >= count // 2]
        slope = slope_per_100k(second_half)
        budget = nim.trace_budget()
        bob_session = bob.sessions.sessions[0] if bob.sessions.sessions else None
        return {
            "count": count,
            "rate": rate,
            "history": history,
            "send_rate": count / send_seconds,
            "in_flight": in_flight,
            "most_outstanding": most,
            "stalled": stalled,
            "received": state["received"],
            "out_of_order": state["out_of_order"],
            "failed": state["failed"],
            "idle_rss": idle["VmRSS"],
            "end_rss": end["VmRSS"],
            "peak_rss": end["VmHWM"],
            "slope_per_100k": slope,
            "extrapolated_1m": end["VmRSS"] + max(slope, 0.0) * (1_000_000 - count) / 100_000,
            "samples": samples,
            "budget_limit": budget.limit,
            "budget_used": budget.used,
            "platform_trace": repr(platform.trace),
            "server_trace": repr(server.trace),
            "evicted_platform": platform.trace.evicted.sip + platform.trace.evicted.events,
            "evicted_server": server.trace.evicted.sip + server.trace.evicted.events,
            "alice_messages": repr(session.messages),
            "bob_messages": repr(bob_session.messages) if bob_session is not None else "",
            "loop": type(runtime().loop).__module__.split(".")[0],
            "stored": stored,
        }
    finally:
        platform.shutdown()
        server.stop()


def run_variant(
    count: int, rate: int, history: bool, timeout: float, trace_budget: str | None = None, in_flight: int = IN_FLIGHT
) -> dict:
    """One soak in a fresh process (the JSON it prints)."""
    args = [sys.executable, str(Path(__file__).resolve()), "--child", "--count", str(count), "--rate", str(rate)]
    args += ["--in-flight", str(in_flight)]
    if history:
        args.append("--history")
    if trace_budget:
        args += ["--trace-budget", trace_budget]
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"soak child failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(lines[-1])


def rows_of(res: dict) -> list[Any]:
    """The results rows of one variant (bench/_common.Row)."""
    from _common import Row, ratio, yes_no

    name = "soak"
    label = (
        f"{res['count']:,} session MESSAGEs at {res['rate']}/s via the embedded server, receipts on, "
        f"history {'on' if res['history'] else 'off'}"
    )
    anchor = "idle platform+server RSS, same run"
    goal = GOAL_MIB[res["history"]]
    delivered = res["received"] == res["count"] and res["out_of_order"] == 0 and res["failed"] == 0
    stored = res.get("stored")
    store_rows = []
    if stored:
        store_rows.append(
            Row(
                name,
                f"{label}: read back from the history store with SQL after the soak (in order: "
                f"{stored['out_of_order'] == 0}; {stored['sip_rows']:,} SIP messages stored)",
                stored["messages"],
                "messages",
                goal=f"{res['count']:,}",
                met=yes_no(stored["messages"] == res["count"] and stored["out_of_order"] == 0),
            )
        )
    return store_rows + [
        Row(name, f"{label}: idle RSS before the soak", res["idle_rss"], "MiB", goal="anchor"),
        Row(
            name,
            f"{label}: RSS at the end",
            res["end_rss"],
            "MiB",
            anchor=anchor,
            anchor_value=res["idle_rss"],
            ratio=ratio(res["end_rss"], res["idle_rss"]),
        ),
        Row(
            name,
            f"{label}: peak RSS (VmHWM)",
            res["peak_rss"],
            "MiB",
            anchor=anchor,
            anchor_value=res["idle_rss"],
            ratio=ratio(res["peak_rss"], res["idle_rss"]),
        ),
        Row(name, f"{label}: RSS slope per 100,000 messages (second half of the run)", res["slope_per_100k"], "MiB"),
        Row(
            name,
            f"{label}: RSS at 1,000,000 messages"
            + (" (measured)" if res["count"] >= 1_000_000 else ", extrapolated from the slope"),
            res["end_rss"] if res["count"] >= 1_000_000 else res["extrapolated_1m"],
            "MiB",
            anchor=anchor,
            anchor_value=res["idle_rss"],
            ratio=ratio(res["extrapolated_1m"], res["idle_rss"]),
            goal=f"<= {goal} MiB",
            met=yes_no(res["extrapolated_1m"] <= goal),
        ),
        Row(
            name,
            f"{label}: delivered in order (failed sends {res['failed']}, out of order {res['out_of_order']}; "
            f"sent at {res['send_rate']:,.0f}/s, at most {res['most_outstanding']:,} unsettled, the sender "
            f"waited {res['stalled']:.1f} s for the limit of {res['in_flight']:,})",
            res["received"],
            "messages",
            goal=f"{res['count']:,}",
            met=yes_no(delivered),
        ),
    ]


def run(ctx: Any) -> None:
    """bench/run --only soak: history off, then on, each in a fresh process (count: QUICK_COUNT with --quick)."""
    count = QUICK_COUNT if ctx.quick else COUNT
    for history in (False, True):
        need = count / RATE * 1.3 + 30  # (the sender may wait for the loop: ~670/s reached on 2 cores)
        if ctx.left() < need:
            ctx.note(f"history {'on' if history else 'off'}: not run, {ctx.left():.0f} s left of the budget")
            continue
        res = run_variant(count, RATE, history, timeout=ctx.left())
        for row in rows_of(res):
            ctx.emit(row)
        ctx.note(
            f"history {'on' if history else 'off'}: trace budget {res['budget_used'] / 2**20:.0f} of "
            f"{res['budget_limit'] / 2**20:.0f} MiB used; {res['platform_trace']}; {res['server_trace']}; "
            f"alice {res['alice_messages']}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=COUNT, help=f"messages (default {COUNT:,})")
    ap.add_argument("--rate", type=int, default=RATE, help=f"messages per second (default {RATE})")
    ap.add_argument("--history", action="store_true", help="Platform(history=...) in a temporary directory")
    ap.add_argument("--trace-budget", help="the process's trace budget, e.g. 256MiB (default: the library's)")
    ap.add_argument(
        "--in-flight",
        type=int,
        default=IN_FLIGHT,
        help=f"the sender waits while this many sends are unsettled (default {IN_FLIGHT:,}; 0: never waits)",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        res = measure(args.count, args.rate, args.history, args.trace_budget, args.in_flight or 10**12)
        print(json.dumps(res), flush=True)
        return
    timeout = args.count / args.rate * 3 + 300
    res = run_variant(args.count, args.rate, args.history, timeout, args.trace_budget, args.in_flight)
    print("messages  seconds  RSS MiB")
    for n, secs, rss in res["samples"]:
        print(f"{n:>8,}  {secs:7.1f}  {rss:7.1f}")
    for row in rows_of(res):
        ratio = f"  (x{row.ratio:.2f} of the anchor {row.anchor_value:.1f})" if row.ratio else ""
        print(f"{row.figure}: {row.value:,.1f} {row.unit}{ratio} {row.met}")
    print(res["platform_trace"], res["server_trace"], res["alice_messages"], sep="\n")
    if res.get("stored"):
        print("history store:", res["stored"])


if __name__ == "__main__":
    main()
