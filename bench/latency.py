"""Delivery latency: two endpoints in one process, one IM session, MESSAGEs sent on a fixed schedule of 1,000 per
second for 10 s (10,000 messages), against a raw UDP echo ping-pong in the same run.

Variants (each in a fresh process, since the loop is chosen when notebook_im's runtime starts):
  - peer to peer (bob listens, alice invites his contact: the issue's "two endpoints on loopback"), receipts off,
    on each event loop (NOTEBOOK_IM_LOOP=asyncio|uvloop): the issue 9 setup;
  - peer to peer with RFC 5438 receipts on (the default since issue 10: each text costs a second MESSAGE back);
  - through an embedded server in the same process (one loop thread does the work of all three), receipts off.

Latency of message i = the time bob's MessageReceived callback runs minus the time alice's `session.send()` was
called for it (perf_counter, one process, one clock). Sends follow the schedule (sleep until the next slot,
never wait for an answer; a late slot is sent at once), so the figure includes any queueing inside the
library: a session sends its in-dialog MESSAGEs one at a time (README, deviations). Lost = sent but never
received: after the last send, messages are waited for as long as they keep arriving (3 s without one, or
DRAIN_CAP, ends the wait), so a late message counts in the latencies, not as lost.

The anchor: a thread echoing UDP datagrams and the main thread sending pings on the same 1,000/s schedule,
waiting for each echo: the p99 round trip of two loopback hops between two threads of one Python process.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from _common import BENCH, HOST, Context, Row, loop_kind, ratio, yes_no

RATE = 1000
DRAIN_CAP = 20.0  # seconds after the last send that late messages are still waited for
LOOPS = ("asyncio", "uvloop")


def quantiles(samples: list[float]) -> dict[str, float]:
    """p50, p99 and max in milliseconds."""
    if len(samples) < 2:
        return {"p50": float("nan"), "p99": float("nan"), "max": max(samples, default=float("nan")) * 1000}
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50": q[49] * 1000, "p99": q[98] * 1000, "max": max(samples) * 1000}


def sleep_until(target: float) -> None:
    """Sleep to a perf_counter() time (no busy wait: the machine has 2 cores for everything)."""
    delay = target - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def udp_echo_rtts(count: int, rate: int) -> list[float]:
    """Round trips of `count` pings at `rate` per second to an echo thread, over loopback UDP."""
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind((HOST, 0))
    echo.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = echo.recvfrom(2048)
            except TimeoutError:
                continue
            echo.sendto(data, addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    rtts = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ping:
        ping.bind((HOST, 0))
        ping.settimeout(1.0)
        payload = b"x" * 400  # about the size of a MESSAGE
        t0 = time.perf_counter() + 0.01
        for i in range(count):
            sleep_until(t0 + i / rate)
            sent = time.perf_counter()
            ping.sendto(payload, echo.getsockname())
            try:
                ping.recv(2048)
            except TimeoutError:
                continue
            rtts.append(time.perf_counter() - sent)
    stop.set()
    thread.join(2)
    echo.close()
    return rtts


def measure(seconds: float, rate: int, mode: str = "p2p", receipts: bool = False) -> dict[str, Any]:
    """The notebook_im side (run in a fresh process): paced session MESSAGEs, latencies, losses.

    `mode` "p2p": the two endpoints talk directly (bob listens, alice invites his contact), which is the issue's
    "two endpoints on loopback"; "server": through an embedded server in the same process (one loop thread does
    the work of all three). `receipts`: RFC 5438 delivery/display receipts asked for (the default since issue 10;
    each text then costs a second MESSAGE transaction back)."""
    import contextlib

    import notebook_im as nim

    with contextlib.ExitStack() as stack:
        server = stack.enter_context(nim.Server()) if mode == "server" else None
        platform = stack.enter_context(nim.Platform("bench-latency"))
        domain = "example.test" if server else HOST
        alice = platform.endpoint(f"sip:alice@{domain}", server=server).result(10)
        bob = platform.endpoint(f"sip:bob@{domain}", server=server).result(10)
        for ep in (alice, bob):
            ep.request_receipts = receipts
        bob.sessions.on_incoming(lambda incoming: incoming.accept())
        received: dict[int, float] = {}

        def on_message(event: nim.MessageReceived) -> None:
            now = time.perf_counter()
            if event.text.startswith("m"):
                received[int(event.text[1:])] = now

        bob.on(nim.MessageReceived, on_message)
        session = alice.sessions.create("sip:bob@example.test" if server else bob.contact.strip("<>")).result(10)
        for i in range(50):  # warm-up, one at a time
            session.send(f"warm {i}").result(10)
        count = int(seconds * rate)
        sent = [0.0] * count
        gc_pauses: list[float] = []  # full (generation 2) garbage collections during the run, in seconds
        gc_started = [0.0]

        def on_gc(phase: str, info: dict) -> None:
            if info.get("generation") == 2:
                if phase == "start":
                    gc_started[0] = time.perf_counter()
                else:
                    gc_pauses.append(time.perf_counter() - gc_started[0])

        gc.callbacks.append(on_gc)
        outcomes = {"failed": 0}  # (the operations are not kept: a chat does not hold 10,000 of them either)

        def settled(op: Any) -> None:
            if op.exception() is not None:
                outcomes["failed"] += 1

        cpu0 = time.process_time()  # every thread of the process: the loop thread does the SIP work of both ends
        t0 = time.perf_counter() + 0.05
        for i in range(count):
            sleep_until(t0 + i / rate)
            sent[i] = time.perf_counter()
            session.send(f"m{i}").add_done_callback(settled)
        send_span = time.perf_counter() - t0
        # late is not lost: wait while messages still arrive (a queue draining), give up after 3 s without one
        deadline, last, progress_at = time.monotonic() + DRAIN_CAP, -1, time.monotonic()
        while len(received) < count and time.monotonic() < deadline and time.monotonic() - progress_at < 3:
            if len(received) != last:
                last, progress_at = len(received), time.monotonic()
            time.sleep(0.01)
        cpu = time.process_time() - cpu0
        gc.callbacks.remove(on_gc)
        failed = outcomes["failed"]
        latencies = [received[i] - sent[i] for i in range(count) if i in received]
        span = max(received.values(), default=t0) - t0
        result = {
            "loop": loop_kind(),
            "count": count,
            "received": len(received),
            "lost": count - len(received),
            "failed": failed,
            "send_rate": count / send_span,
            "delivery_rate": len(received) / span if span > 0 else 0.0,
            "gc_full": len(gc_pauses),
            "gc_longest_ms": max(gc_pauses, default=0.0) * 1000,
            "gc_total_ms": sum(gc_pauses) * 1000,
            "cpu_us": cpu / count * 1e6,  # CPU per message, both ends (and the drain's idle polling, ~0)
            **quantiles(latencies),
        }
        session.terminate().result(10)
    return result


def run(ctx: Context) -> None:
    """bench/run --only latency"""
    seconds = 2.0 if ctx.quick else 10.0
    anchor = quantiles(udp_echo_rtts(int(RATE * min(seconds, 3.0)), RATE))
    ctx.emit(
        Row(
            ctx.name,
            f"raw UDP echo ping-pong between two threads, {RATE}/s: p99 round trip",
            anchor["p99"],
            "ms",
            goal="anchor",
        )
    )
    variants = [("p2p", False, loop) for loop in LOOPS] + [("p2p", True, "asyncio"), ("server", False, "asyncio")]
    cpu_anchor: float | None = None  # CPU per message peer to peer on asyncio, receipts off
    for mode, receipts, loop in variants:
        if ctx.left() < seconds + 10:
            ctx.note(f"no time left for the {mode}/{loop} run")
            break
        try:
            out = subprocess.run(
                [
                    sys.executable,
                    str(BENCH / "latency.py"),
                    str(seconds),
                    str(RATE),
                    mode,
                    "receipts" if receipts else "no-receipts",
                ],
                env={**os.environ, "NOTEBOOK_IM_LOOP": loop},
                capture_output=True,
                text=True,
                timeout=max(10.0, ctx.left()),
            )
        except subprocess.TimeoutExpired:
            ctx.note(f"the {mode}/{loop} run did not finish within the budget")
            break
        if out.returncode != 0:
            ctx.note(f"the {mode}/{loop} run failed: {out.stderr[-600:]}")
            continue
        res = json.loads(out.stdout.strip().splitlines()[-1])
        if res["loop"] != loop:
            ctx.note(f"NOTEBOOK_IM_LOOP={loop} asked, but the latency run used {res['loop']}")
        where = "two endpoints, peer to peer" if mode == "p2p" else "two endpoints via an embedded server, one process"
        what = (
            f"session MESSAGE, {where}, receipts {'on' if receipts else 'off'}, {res['count']:,} at {RATE}/s "
            f"(sent at {res['send_rate']:,.0f}/s), loop {res['loop']}"
        )
        ctx.emit(Row(ctx.name, f"{what}: p50", res["p50"], "ms"))
        r = ratio(res["p99"], anchor["p99"])
        limit = 5.0 if receipts else 2.0  # the goals: 2 ms with receipts off, 5 ms with receipts on
        ctx.emit(
            Row(
                ctx.name,
                f"{what}: p99",
                res["p99"],
                "ms",
                anchor="UDP echo p99",
                anchor_value=anchor["p99"],
                ratio=r,
                goal=f"<= {limit:g} ms",
                met=yes_no(res["p99"] <= limit),
            )
        )
        ctx.emit(Row(ctx.name, f"{what}: max", res["max"], "ms"))
        ctx.emit(
            Row(
                ctx.name,
                f"{what}: delivered per second (first send to last delivery)",
                res["delivery_rate"],
                "msg/s",
                anchor="offered",
                anchor_value=res["send_rate"],
                ratio=ratio(res["delivery_rate"], res["send_rate"]),
            )
        )
        ctx.emit(
            Row(
                ctx.name,
                f"{what}: lost (+ failed sends {res['failed']})",
                res["lost"],
                "messages",
                goal="0",
                met=yes_no(res["lost"] == 0 and res["failed"] == 0),
            )
        )
        if mode == "p2p" and res["loop"] == "asyncio" and not receipts:
            cpu_anchor = res["cpu_us"]
        on = mode == "p2p" and receipts and cpu_anchor is not None
        ctx.emit(
            Row(
                ctx.name,
                f"{what}: CPU per message (both ends, one process)",
                res["cpu_us"],
                "µs",
                anchor="receipts off, same loop" if on else "",
                anchor_value=cpu_anchor if on else None,
                ratio=ratio(res["cpu_us"], cpu_anchor) if on else None,
                goal="<= 1.3x receipts off" if on else "",
                met=yes_no(res["cpu_us"] <= 1.3 * cpu_anchor) if on and cpu_anchor is not None else "",
            )
        )
        ctx.emit(
            Row(
                ctx.name,
                f"{what}: longest of {res['gc_full']} full garbage collections during the run "
                f"({res['gc_total_ms']:.0f} ms in all; the loop thread stands still meanwhile)",
                res["gc_longest_ms"],
                "ms",
            )
        )


if __name__ == "__main__":  # the measuring process: python bench/latency.py SECONDS RATE -> one JSON line
    print(
        json.dumps(
            measure(
                float(sys.argv[1]),
                int(sys.argv[2]),
                sys.argv[3] if len(sys.argv) > 3 else "p2p",
                len(sys.argv) > 4 and sys.argv[4] == "receipts",
            )
        ),
        flush=True,
    )
