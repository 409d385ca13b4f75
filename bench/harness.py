"""The driver behind `bench/run`: runs each benchmark in a process of its own under a hard time budget, then writes
the results table (bench/results.md and bench/results.csv) with every figure, its anchor and the ratio.

    python bench/harness.py [--quick] [--only NAME[,NAME...]] [--out DIR]

Why a process per benchmark: a benchmark that hangs or overruns is killed with everything it started (it runs
in its own process group, and its SIPp, Kamailio and helper processes stay in that group), and the rows it
wrote before that are kept. Budgets add up to less than seventeen minutes; each benchmark also stops starting new
work when its own budget runs short, and says so in a note under the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _common import BENCH, COLUMNS, REPO, Context, Row, read_rows, write_csv

ORDER = ("import", "parse", "endpoint-udp", "endpoint-tcp", "relay", "latency", "scale", "pcap")
# run only when named with --only: minutes each, so they stay out of the full run
OPTIONAL = ("soak",)
BUDGET = {
    "import": 20,
    "parse": 35,
    "endpoint-udp": 250,  # four ladders: SIPp UAS, PJSUA2, the endpoint on asyncio and on uvloop
    "endpoint-tcp": 260,
    "relay": 260,  # four ladders: Kamailio, the server stateful, stateless, and with workers=2
    "latency": 85,
    "scale": 90,
    "pcap": 90,
    "soak": 600,  # two soaks of 150,000 messages at 800/s (history off, on), each ~3.5 min
}
QUICK_BUDGET = {
    "import": 20,
    "parse": 20,
    "endpoint-udp": 40,
    "endpoint-tcp": 40,
    "relay": 60,
    "latency": 30,
    "scale": 40,
    "pcap": 40,
    "soak": 150,
}
NEEDS = {"endpoint-udp": ("sipp",), "endpoint-tcp": ("sipp",), "relay": ("sipp", "kamailio"), "pcap": ("tshark",)}
KILL_GRACE = 10  # seconds past the budget before the benchmark's process group is killed
TOTAL = 970  # all benchmarks together (seconds): a budget is cut to what is left of this, so a run stays < 17 min
SOAK_TOTAL = 700  # ... except with --only soak, which takes its own ~10 minutes


def benchmark(name: str) -> Callable[[Context], None]:
    """The function that runs benchmark `name` (imported only in the child that runs it)."""
    if name == "import":
        from import_time import run

        return run
    if name == "parse":
        from parsers import run

        return run
    if name == "latency":
        from latency import run

        return run
    if name == "scale":
        from scale import run

        return run
    if name == "pcap":
        from pcap_scale import run

        return run
    if name == "soak":
        from soak import run

        return run
    from throughput import BENCHMARKS

    return BENCHMARKS[name]


def selected(only: str | None) -> list[str]:
    """The benchmarks to run, in ORDER; a clear error for an unknown name."""
    if not only:
        return list(ORDER)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ORDER + OPTIONAL]
    if unknown:
        raise SystemExit(
            f"unknown benchmark {', '.join(unknown)}; --only takes a comma-separated list of "
            f"{', '.join(ORDER + OPTIONAL)}"
        )
    return [n for n in ORDER + OPTIONAL if n in names]


def run_child(name: str, rows_file: Path, workdir: Path, quick: bool, budget: float) -> tuple[int | None, float]:
    """Run one benchmark in its own process group; kill the group after budget + KILL_GRACE. (exit code, seconds)."""
    args = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        name,
        "--rows",
        str(rows_file),
        "--workdir",
        str(workdir),
        "--budget",
        str(budget),
    ] + (["--quick"] if quick else [])
    t0 = time.monotonic()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO)
    try:
        code: int | None = proc.wait(timeout=budget + KILL_GRACE)
    except subprocess.TimeoutExpired:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        code = None
    finally:
        try:  # helpers it started that are still around (the group outlives a parent that exited)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return code, time.monotonic() - t0


def tool_version(args: list[str]) -> str:
    """The first non-empty line a tool prints about its version ('' if it is missing)."""
    if not shutil.which(args[0]):
        return ""
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def machine_info() -> dict[str, str]:
    """Cores, CPU, Python, date and the versions of the anchor programs, for the header of the results."""
    cpu = ""
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    loops = "uvloop " + _installed("uvloop") if _installed("uvloop") else "asyncio only (uvloop not installed)"
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": f"{len(os.sched_getaffinity(0))} (of {os.cpu_count()})",
        "cpu": cpu or platform.processor() or "?",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "notebook_im": f"{_installed('notebook_im') or '?'} at {commit or '?'}",
        "event loops": loops,
        "SIP core": _sip_core(),
        "sipp": tool_version(["sipp", "-v"]).replace("SIPp ", ""),
        "kamailio": tool_version(["kamailio", "-v"]).replace("version: ", ""),
    }


def _sip_core() -> str:
    """Whether the endpoint and server processes parse with the compiled core (setup.py) or the .py modules."""
    code = "import notebook_im.sip as s; print(all(s.COMPILED.values()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO).stdout.strip()
    if os.environ.get("NOTEBOOK_IM_PURE") == "1":
        return "pure Python (NOTEBOOK_IM_PURE=1)"
    return "compiled (mypyc)" if out == "True" else "pure Python (not compiled at install)"


def _installed(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return ""


def fmt(value: float | None, unit: str = "") -> str:
    """A number for the table: thousands separators, 2 decimals below 100, none above."""
    if value is None:
        return ""
    if abs(value) >= 100 or (float(value).is_integer() and unit not in ("ms", "x")):
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def markdown(
    rows: list[Row], notes: list[str], info: dict[str, str], took: float, quick: bool, names: list[str]
) -> str:
    """bench/results.md: machine, the table, the notes."""
    head = [
        "# notebook_im benchmark results",
        "",
        f"`bench/run{' --quick' if quick else ''}{' --only ' + ','.join(names) if names != list(ORDER) else ''}`"
        f", {took:.0f} s in all. Every anchor was measured in the same run on the same machine.",
        "",
    ]
    head += [f"- {k}: {v}" for k, v in info.items() if v]
    table = [
        "",
        "| benchmark | figure | value | unit | anchor | anchor value | ratio | goal | met |",
        "|---|---|---:|---|---|---:|---:|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r.benchmark} | {r.figure} | {fmt(r.value, r.unit)} | {r.unit} | {r.anchor} | "
            f"{fmt(r.anchor_value, r.unit)} | {fmt(r.ratio, 'x')} | {r.goal} | {r.met} |"
        )
    tail = ["", "Notes:", ""] + [f"- {n}" for n in notes] if notes else []
    return "\n".join(head + table + tail) + "\n"


def child_main(args: argparse.Namespace) -> int:
    """Run one benchmark (in the process run_child started)."""
    ctx = Context(args.child, Path(args.rows), Path(args.workdir), args.quick, time.monotonic() + args.budget)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run `finally` blocks: stop SIPp, Kamailio, helpers
    benchmark(args.child)(ctx)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks and write the results."""
    ap = argparse.ArgumentParser(description="notebook_im benchmarks, each with its anchor measured in the same run")
    ap.add_argument("--quick", action="store_true", help="a much shorter run (smoke test): 1 s steps, fewer rungs")
    ap.add_argument("--only", help=f"comma-separated subset of: {', '.join(ORDER + OPTIONAL)} (soak: only when named)")
    ap.add_argument("--out", default=str(BENCH), help="where results.md and results.csv go (default: bench/)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--rows", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args)
    names = selected(args.only)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = out / "results" / stamp  # logs, SIPp statistics, Kamailio logs (bench/results/ is git-ignored)
    work.mkdir(parents=True, exist_ok=True)
    budgets = QUICK_BUDGET if args.quick else BUDGET
    t0 = time.monotonic()
    rows: list[Row] = []
    notes: list[str] = []
    failed: list[str] = []
    for name in names:
        missing = [tool for tool in NEEDS.get(name, ()) if not shutil.which(tool)]
        if missing:
            notes.append(
                f"{name}: not run, {' and '.join(missing)} missing (scripts/install-system-deps installs them)"
            )
            failed.append(name)
            continue
        total = SOAK_TOTAL if names == ["soak"] else TOTAL
        budget = min(budgets[name], total - KILL_GRACE - (time.monotonic() - t0))
        if budget < 10:
            notes.append(f"{name}: not run, the run's {TOTAL} s were used up")
            failed.append(name)
            continue
        print(f"== {name} (budget {budget:.0f} s)", flush=True)
        rows_file = work / f"{name}.jsonl"
        code, took = run_child(name, rows_file, work / name, args.quick, budget)
        got, said = read_rows(rows_file)
        rows += got
        notes += said
        if code != 0:
            why = "killed at its time budget" if code is None else f"exited with status {code}"
            notes.append(f"{name}: {why} after {took:.0f} s (log: {work})")
            failed.append(name)
        print(f"== {name}: {len(got)} figures in {took:.0f} s", flush=True)
    took = time.monotonic() - t0
    info = machine_info()
    text = markdown(rows, notes, info, took, args.quick, names)
    (out / "results.md").write_text(text)
    write_csv(out / "results.csv", rows)
    print("\n" + text, flush=True)
    print(f"wrote {out / 'results.md'} and {out / 'results.csv'} ({', '.join(COLUMNS)}); logs in {work}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
