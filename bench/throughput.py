"""Highest clean MESSAGE rate on a ladder of rates: a notebook_im endpoint against SIPp's own UAS, and the
embedded server relaying between SIPp clients against Kamailio, each anchor measured in the same run.

A SIPp UAC (tests/interop/sipp/uac_pager.xml) sends `rate * STEP` out-of-dialog MESSAGEs at `rate` per second.
A step is clean when SIPp counts every call successful, none failed, no retransmission (a retransmission
means an answer took more than 500 ms), it kept the rate (at least 80% of it over the step, SIPp start-up included: over TCP there
are no retransmissions, a slow peer only slows SIPp down), and the receiver got every message exactly once
(the endpoint's MessageReceived count; SIPp UAS: its own successful-call counter, and it exits after
exactly that many). The ladder climbs until the first unclean step (retried once if it missed narrowly); the figure is the
highest clean rate, and the ratio is against the anchor's highest clean rate on the same ladder.

Every receiver (SIPp UAS, endpoint process, server process, Kamailio) is started fresh for each step, so no
step inherits lingering transactions from the one before.
"""

from __future__ import annotations

from collections.abc import Callable

from _common import (
    BENCH,
    Child,
    Context,
    KamailioProc,
    Row,
    SippRun,
    Step,
    check_kamailio_config,
    counter,
    free_port,
    ladder,
    ratio,
    register_once,
    sipp_command,
    start_sipp_server,
    wait_until,
    yes_no,
)

RUNGS = (1000, 2000, 3000, 4000, 5000, 6000, 8000, 10000, 12000, 16000, 24000)
QUICK_RUNGS = (500,)
LOOPS = ("asyncio", "uvloop")


def step_seconds(ctx: Context) -> float:
    """Length of one step: 3 s (1 s with --quick)."""
    return 1.0 if ctx.quick else 3.0


def judge(rate: int, count: int, uac: SippRun, code: int | None, received: int, receiver_ok: bool = True) -> Step:
    """Clean or not, and a one-line reason, from the UAC's exit code and counters and the receiver's count."""
    stats = uac.counters()
    ok, failed, retrans = (
        counter(stats, "SuccessfulCall(C)"),
        counter(stats, "FailedCall(C)"),
        counter(stats, "Retransmissions(C)"),
    )
    achieved = count / uac.elapsed if uac.elapsed else 0.0
    problems = []
    if code != 0:
        problems.append(f"SIPp exit {code}")
    if ok != count:
        problems.append(f"{ok}/{count} successful")
    if failed:
        problems.append(f"{failed} failed")
    if retrans:
        problems.append(f"{retrans} retransmissions")
    if received != count:
        problems.append(f"receiver got {received}/{count}")
    if not receiver_ok:
        problems.append("receiver did not finish")
    if achieved < 0.8 * rate:
        problems.append(f"only {achieved:,.0f}/s sustained")
    if problems and code != 0:
        err = uac.errors(300).strip().splitlines()
        if err:
            problems.append(f"SIPp: {err[-1][:120]}")
    detail = "; ".join(problems) if problems else f"{count}/{count}, 0 failed, 0 retransmissions, {achieved:,.0f}/s"
    # missed narrowly: every call done and delivered, a few answers late (at most 2%) or the pace a little short
    marginal = (
        code == 0 and receiver_ok and received == count and failed + retrans <= 0.02 * count and achieved >= 0.7 * rate
    )
    return Step(rate, not problems, detail, marginal)


def run_uac(ctx: Context, rate: int, transport: str, port: int, service: str) -> tuple[int, SippRun, int | None]:
    """Run the SIPp UAC for one step against 127.0.0.1:port; (count, run, exit code)."""
    count = int(rate * step_seconds(ctx))
    uac = sipp_command(
        ctx.workdir,
        "uac_pager.xml",
        local_port=free_port(),
        calls=count,
        transport=transport,
        remote=f"127.0.0.1:{port}",
        service=service,
        rate=rate,
        timeout_s=step_seconds(ctx) + 4,
        tag="uac",
    )
    ctx.settle()
    uac.start(ctx.workdir / f"uac_{rate}.screen")
    code = uac.wait(step_seconds(ctx) + 20)  # a clean step ends with its last answer; 4 s later it cannot be clean
    return count, uac, code


def sipp_uas_step(ctx: Context, transport: str) -> Callable[[int], Step]:
    """One step against SIPp's own UAS (tests/interop/sipp/uas_pager.xml): the anchor."""

    def step(rate: int) -> Step:
        port = free_port()
        count = int(rate * step_seconds(ctx))
        uas = sipp_command(
            ctx.workdir,
            "uas_pager.xml",
            local_port=port,
            calls=count,
            transport=transport,
            timeout_s=step_seconds(ctx) + 20,
            tag="uas",
        )
        start_sipp_server(uas, transport, ctx.workdir / f"uas_{rate}.screen")
        try:
            count, uac, code = run_uac(ctx, rate, transport, port, "sipp")
        finally:
            uas_code = uas.wait(3)  # it exits by itself after exactly `count` MESSAGEs
        received = counter(uas.counters(), "SuccessfulCall(C)")
        return judge(rate, count, uac, code, received, receiver_ok=uas_code == 0)

    return step


def endpoint_step(ctx: Context, transport: str, loop: str) -> Callable[[int], Step]:
    """One step against a notebook_im endpoint in its own process (bench/_endpoint_proc.py)."""
    seen_loops: set[str] = set()

    def step(rate: int) -> Step:
        port = free_port()
        with Child(
            [BENCH / "_endpoint_proc.py", port, transport],
            env={"NOTEBOOK_IM_LOOP": loop},
            log=ctx.workdir / f"endpoint_{transport}_{loop}_{rate}.log",
        ) as ep:
            seen_loops.add(ep.info["loop"])
            count, uac, code = run_uac(ctx, rate, transport, port, "bob")
            answers: dict = {}

            def all_in() -> bool:
                answers.update(ep.ask("stats"))
                return answers["received"] >= count

            wait_until(all_in, 3.0, 0.1)  # the last messages may still be in the endpoint's queue
        return judge(rate, count, uac, code, answers.get("received", -1))

    step.seen_loops = seen_loops  # type: ignore[attr-defined]
    return step


def pjsua2_step(ctx: Context, transport: str) -> Callable[[int], Step]:
    """One step against PJSUA2 (pjsip from Python) in its own process (bench/_pjsua2_proc.py)."""

    def step(rate: int) -> Step:
        port = free_port()
        with Child(
            [BENCH / "_pjsua2_proc.py", port, transport], log=ctx.workdir / f"pjsua2_{transport}_{rate}.log"
        ) as ep:
            count, uac, code = run_uac(ctx, rate, transport, port, "bob")
            answers: dict = {}

            def all_in() -> bool:
                answers.update(ep.ask("stats"))
                return answers["received"] >= count

            wait_until(all_in, 3.0, 0.1)
        return judge(rate, count, uac, code, answers.get("received", -1))

    return step


def pjsua2_available() -> str | None:
    """PJSUA2's version, or None when the pjsua2 module (PyPI pjsua2-python, in the bench extra) is missing."""
    try:
        import pjsua2
    except ImportError:
        return None
    return str(pjsua2.Endpoint().libVersion().full) if hasattr(pjsua2, "Endpoint") else "?"


def endpoint_benchmark(ctx: Context, transport: str) -> None:
    """The endpoint ladder over one transport, with both event loops, against the SIPp UAS anchor and, when it is
    installed, PJSUA2 (the C stack a Python user would pick instead)."""
    rungs = QUICK_RUNGS if ctx.quick else RUNGS
    cost = step_seconds(ctx) + 3.0
    anchor, _ = ladder(ctx, f"SIPp UAS ({transport})", rungs, sipp_uas_step(ctx, transport), step_cost=cost)
    ctx.emit(
        Row(
            ctx.name,
            f"SIPp UAC -> SIPp UAS, MESSAGE over {transport.upper()}: max clean rate",
            anchor,
            "msg/s",
            goal="anchor (about 12,000 on this machine)",
        )
    )
    pj_version = pjsua2_available()
    pj_best: int | None = None
    if pj_version is None:
        ctx.note(
            "PJSUA2 not measured: its Python module is not installed (pip install -e '.[bench]' installs pjsua2-python)"
        )
    else:
        pj_best, _ = ladder(ctx, f"PJSUA2 ({transport})", rungs, pjsua2_step(ctx, transport), step_cost=cost)
        r = ratio(pj_best, anchor)
        ctx.emit(
            Row(
                ctx.name,
                f"SIPp UAC -> PJSUA2 {pj_version} from Python (onInstantMessage, main-thread polling), MESSAGE over "
                f"{transport.upper()}: max clean rate",
                pj_best,
                "msg/s",
                anchor="SIPp UAS, same ladder",
                anchor_value=anchor,
                ratio=r,
                goal="anchor",
            )
        )
    for loop in LOOPS:
        step = endpoint_step(ctx, transport, loop)
        best, steps = ladder(ctx, f"endpoint ({transport}, {loop})", rungs, step, step_cost=cost)
        if not steps:  # no time left for its first rung: no figure (the ladder's note says so), not a 0
            continue
        if pj_best:
            rp = ratio(best, pj_best)
            ctx.emit(
                Row(
                    ctx.name,
                    f"notebook_im endpoint ({loop}) against PJSUA2 from Python, MESSAGE over {transport.upper()}",
                    best,
                    "msg/s",
                    anchor="PJSUA2, same ladder",
                    anchor_value=pj_best,
                    ratio=rp,
                    goal=">= 2x PJSUA2",
                    met=yes_no(rp is not None and rp >= 2),
                )
            )
        ran = "/".join(sorted(step.seen_loops)) or loop  # type: ignore[attr-defined]
        if ran != loop:
            ctx.note(
                f"NOTEBOOK_IM_LOOP={loop} asked, but the endpoint ran on {ran} (the variable is not honoured, "
                "or uvloop is not installed)"
            )
        r = ratio(best, anchor)
        which = f"loop {ran}" if ran == loop else f"NOTEBOOK_IM_LOOP={loop} but ran {ran}"
        ctx.emit(
            Row(
                ctx.name,
                f"SIPp UAC -> notebook_im endpoint, MESSAGE over {transport.upper()}, {which}: max clean rate",
                best,
                "msg/s",
                anchor="SIPp UAS, same ladder",
                anchor_value=anchor,
                ratio=r,
                goal=">= 8,000/s and >= 2/3 of the anchor",
                met=yes_no(best >= 8000 and r is not None and r >= 2 / 3),
            )
        )


def run_endpoint_udp(ctx: Context) -> None:
    """bench/run --only endpoint-udp"""
    endpoint_benchmark(ctx, "udp")


def run_endpoint_tcp(ctx: Context) -> None:
    """bench/run --only endpoint-tcp"""
    endpoint_benchmark(ctx, "tcp")


# ---------------------------------------------------------------------------------------------------
# relay: SIPp UAC -> proxy -> SIPp UAS (registered with the proxy by a raw REGISTER naming SIPp's port)
# ---------------------------------------------------------------------------------------------------
def relay_step(
    ctx: Context, start_proxy: Callable[[int, int], object], stop_proxy: Callable[[object], None]
) -> Callable[[int], Step]:
    """One relay step: a fresh proxy and SIPp UAS, the UAS registered as sippuas, the UAC messaging it."""

    def step(rate: int) -> Step:
        proxy_port, uas_port = free_port(), free_port()
        count = int(rate * step_seconds(ctx))
        proxy = start_proxy(proxy_port, rate)
        try:
            status = register_once(proxy_port, "sippuas", uas_port)
            if status != 200:
                return Step(rate, False, f"REGISTER of the SIPp UAS answered {status}")
            uas = sipp_command(
                ctx.workdir,
                "uas_pager.xml",
                local_port=uas_port,
                calls=count,
                timeout_s=step_seconds(ctx) + 20,
                tag="relay_uas",
            )
            start_sipp_server(uas, "udp", ctx.workdir / f"relay_uas_{rate}.screen")
            try:
                count, uac, code = run_uac(ctx, rate, "udp", proxy_port, "sippuas")
            finally:
                uas_code = uas.wait(3)
            return judge(
                rate, count, uac, code, counter(uas.counters(), "SuccessfulCall(C)"), receiver_ok=uas_code == 0
            )
        finally:
            stop_proxy(proxy)

    return step


def run_relay(ctx: Context) -> None:
    """bench/run --only relay: the embedded server against Kamailio 5.6 (examples/kamailio/kamailio.cfg)."""
    rungs = QUICK_RUNGS if ctx.quick else RUNGS
    cost = step_seconds(ctx) + 5.0
    check_kamailio_config()
    kam_dir = ctx.workdir / "kamailio"
    anchor, _ = ladder(
        ctx,
        "Kamailio",
        rungs,
        relay_step(ctx, lambda port, rate: KamailioProc(kam_dir / str(rate), port), lambda k: k.stop()),
        step_cost=cost,
    )
    ctx.emit(
        Row(
            ctx.name,
            "SIPp -> Kamailio (stateful proxy) -> SIPp, MESSAGE over UDP: max clean rate",
            anchor,
            "msg/s",
            goal="anchor (about 8,000 on this machine)",
        )
    )
    loops: set[str] = set()

    def start_server(*options: str) -> Callable[[int, int], Child]:
        def start(port: int, rate: int) -> Child:
            child = Child([BENCH / "_server_proc.py", port, *options], log=ctx.workdir / f"server_{rate}.log")
            loops.add(child.info["loop"])
            return child

        return start

    # the server as it was (every relay through transactions), as it is by default (the stateless fast path,
    # one process), and with a worker process on the second core (workers=2): the goal is the last one's
    kinds = (
        ("transaction-stateful, 1 process", ("--stateful",)),
        ("stateless fast path, 1 process", ()),
        ("stateless fast path, workers=2", ("--workers", "2")),
    )
    for i, (label, options) in enumerate(kinds):
        best, _ = ladder(
            ctx,
            f"embedded server ({label})",
            rungs,
            relay_step(ctx, start_server(*options), lambda c: c.stop()),
            step_cost=cost,
        )
        r = ratio(best, anchor)
        last = i == len(kinds) - 1
        ctx.emit(
            Row(
                ctx.name,
                f"SIPp -> notebook_im server ({label}) -> SIPp, MESSAGE over UDP (loop {'/'.join(sorted(loops))}): "
                "max clean rate",
                best,
                "msg/s",
                anchor="Kamailio, same ladder",
                anchor_value=anchor,
                ratio=r,
                goal=">= 4,000/s and >= 50% of the anchor" if last else "",
                met=yes_no(best >= 4000 and r is not None and r >= 0.5) if last else "",
            )
        )


BENCHMARKS = {"endpoint-udp": run_endpoint_udp, "endpoint-tcp": run_endpoint_tcp, "relay": run_relay}
