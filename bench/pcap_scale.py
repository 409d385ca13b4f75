"""Captures at any size: import a synthetic SIP capture into a Parquet dataset and query it, against tshark.

    python bench/pcap_scale.py --sizes 100MB,1GB,5GB [--workdir DIR] [--keep] [--no-dask]
    bench/run --only pcap                                  (100 MB; --quick: 30 MB)

For each size it generates a capture (support/captures.py: MESSAGE/200 pairs over UDP, MESSAGE over a few long
TCP connections with messages split across segments, INVITE dialogs with composing and texts, failures and UDP
retransmissions; in time order, over hours), then, in the same run on the same file:

* the anchor: `tshark -r FILE -T fields -e frame.time_epoch -e sip.Method -e sip.Status-Code -e sip.Call-ID
  -e sip.from.user -e sip.to.user` (output to /dev/null);
* `nim.read_pcap(FILE, to=DIR)` in a fresh interpreter (interpreter start-up and imports included, as tshark's are);
* for both, wall time and the peak RSS of that process (its VmHWM, read from /proc while it runs), and the ratios;
* the transaction-latency query, p50/p99 per method per hour, with DuckDB (`open_traces(DIR).latency()`) and on a
  Dask LocalCluster of two single-threaded workers in processes (`engine="dask"`), with a check that the numbers
  are identical.

Goals (the issue): import at least 2x tshark's speed, peak RSS at most 1 GiB whatever the size, the DuckDB query
within 10 s at 5 GB. Disk: the capture and the dataset (about a sixth of it) are written under --workdir (default a
temporary directory, deleted at the end unless --keep); check `df -h` before asking for 5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))

TSHARK_FIELDS = ["frame.time_epoch", "sip.Method", "sip.Status-Code", "sip.Call-ID", "sip.from.user", "sip.to.user"]
IMPORT = """
import json, sys, time
t = time.perf_counter()
import notebook_im as nim
r = nim.read_pcap({src!r}, to={dst!r})
print(json.dumps({{"rows": r.rows, "inside": time.perf_counter() - t, "files": len(r.files),
                  "skipped": r.stats.skipped, "packets": r.stats.packets}}))
"""
DASK = """
import json, sys, time
import notebook_im as nim
from distributed import Client, LocalCluster
if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit="3GiB") as cluster, Client(cluster) as client:
        t = time.perf_counter()
        df = nim.open_traces({dst!r}, engine="dask", client=client).latency(by=("method", "hour"), q=(0.5, 0.99))
        took = time.perf_counter() - t
    print(json.dumps({{"seconds": took, "frame": df.assign(hour=df["hour"].astype(str)).to_dict("list")}}))
"""


def parse_size(text: str) -> int:
    from notebook_im.trace.capture import parse_size as parse

    return parse(text.strip())


def measure(
    args: list[str], *, stdout: Any = subprocess.DEVNULL, cwd: Path = REPO, timeout: float | None = None
) -> tuple[float, int, str, bool]:
    """(wall seconds, peak RSS bytes of that process, its stdout, whether it finished) of one child run; a child
    still running after `timeout` seconds is stopped (SIGTERM) and reported as not finished.

    The peak RSS is the child's own VmHWM, read from /proc while it runs (every 50 ms; it only grows). Not the
    rusage of wait4: on Linux ru_maxrss survives exec, so a child of a 300 MiB parent reports at least 300 MiB."""
    import signal
    import threading

    t = time.perf_counter()
    proc = subprocess.Popen(
        args,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )
    peak = [0]
    done = threading.Event()

    def poll() -> None:
        path = f"/proc/{proc.pid}/status"
        while not done.is_set():
            try:
                with open(path) as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak[0] = max(peak[0], int(line.split()[1]) * 1024)
                            break
            except (OSError, ValueError):
                pass
            done.wait(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    stopped = threading.Event()
    if timeout is not None:

        def stop() -> None:
            stopped.set()
            proc.send_signal(signal.SIGTERM)

        timer = threading.Timer(timeout, stop)
        timer.daemon = True
        timer.start()
    out = b""
    if stdout is None:
        out = proc.stdout.read()  # type: ignore[union-attr]
    err = proc.stderr.read()  # type: ignore[union-attr]
    _pid, status, _usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - t
    done.set()
    poller.join()
    if timeout is not None:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 and not stopped.is_set():
        raise RuntimeError(f"{args[0]} exited with {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    return took, peak[0], out.decode(), not stopped.is_set()


def one_size(size: int, work: Path, *, dask: bool = True, log=print, tshark_timeout: float | None = None) -> dict:
    """Generate, import, query one capture of about `size` bytes; the figures as a dict. tshark is stopped after
    `tshark_timeout` seconds (its time grows faster than the capture: 7.5 s for 100 MB, 348 s for 1 GB); its
    figure is then a lower bound: the time it had taken for the packets it had printed, scaled to all of them."""
    from support.captures import generate

    cap = work / f"synthetic-{size // 1_000_000}MB.pcap"
    dst = work / f"dataset-{size // 1_000_000}MB"
    shutil.rmtree(dst, ignore_errors=True)
    t = time.perf_counter()
    truth = generate(cap, size)
    log(
        f"generated {cap.stat().st_size / 1e6:,.0f} MB, {truth.packets:,} packets, {truth.messages:,} SIP messages "
        f"over {(truth.last_ts - truth.first_ts) / 3600:.1f} h in {time.perf_counter() - t:.0f} s"
    )
    fields = sum((["-e", f] for f in TSHARK_FIELDS), [])
    lines_file = work / "tshark-fields.txt"
    with open(lines_file, "wb") as sink:
        ts_s, ts_rss, _, finished = measure(
            ["tshark", "-r", str(cap), "-T", "fields", *fields], stdout=sink, timeout=tshark_timeout
        )
    with open(lines_file, "rb") as f:
        printed = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    lines_file.unlink()
    if not finished:
        log(
            f"tshark -T fields stopped after {ts_s:.0f} s at {printed:,} of {truth.packets:,} packets "
            f"({printed / truth.packets:.0%}); peak RSS so far {ts_rss / 2**20:,.0f} MiB"
        )
        ts_s = ts_s * truth.packets / max(printed, 1)  # a lower bound: its rate only falls as it goes
    else:
        assert printed == truth.packets, (printed, truth.packets)
        log(f"tshark -T fields (6 fields): {ts_s:.1f} s, peak RSS {ts_rss / 2**20:,.0f} MiB")
    im_s, im_rss, out, _ = measure([sys.executable, "-c", IMPORT.format(src=str(cap), dst=str(dst))], stdout=None)
    info = json.loads(out.strip().splitlines()[-1])
    assert info["rows"] == truth.messages, (info, truth.messages)
    log(
        f"read_pcap(to=): {im_s:.1f} s ({info['inside']:.1f} s inside), peak RSS {im_rss / 2**20:,.0f} MiB, "
        f"{info['rows']:,} rows, {info['files']} files; {ts_s / im_s:.2f}x tshark's speed"
    )
    dataset_bytes = sum(f.stat().st_size for f in dst.rglob("*.parquet"))
    import notebook_im as nim

    with nim.open_traces(dst) as traces:
        t = time.perf_counter()
        duck = traces.latency(by=("method", "hour"), q=(0.5, 0.99))
        duck_s = time.perf_counter() - t
    log(f"DuckDB latency p50/p99 per method per hour: {duck_s:.2f} s ({len(duck)} rows)")
    result = {
        "size": size,
        "capture_bytes": cap.stat().st_size,
        "packets": truth.packets,
        "messages": truth.messages,
        "tshark_finished": finished,
        "tshark_printed": printed,
        "dataset_bytes": dataset_bytes,
        "tshark_s": ts_s,
        "tshark_rss": ts_rss,
        "import_s": im_s,
        "import_inside_s": info["inside"],
        "import_rss": im_rss,
        "duckdb_s": duck_s,
        "dask_s": None,
        "dask_identical": None,
    }
    if dask:
        dk_s, _rss, out, _ = measure([sys.executable, "-c", DASK.format(dst=str(dst))], stdout=None)
        got = json.loads(out.strip().splitlines()[-1])
        expected = duck.assign(hour=duck["hour"].astype(str)).to_dict("list")
        result["dask_s"] = got["seconds"]
        result["dask_identical"] = got["frame"] == expected
        log(
            f"Dask LocalCluster (2 workers): {got['seconds']:.1f} s, numbers identical to DuckDB: "
            f"{result['dask_identical']}"
        )
    print(duck.to_string(index=False), flush=True)
    return result


def table(results: list[dict]) -> str:
    lines = [
        "| capture | packets | tshark -T fields | read_pcap(to=) | speed vs tshark | peak RSS tshark | peak RSS "
        "import | dataset | DuckDB latency query | Dask latency query (identical) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        dask = "" if r["dask_s"] is None else f"{r['dask_s']:.1f} s ({'yes' if r['dask_identical'] else 'NO'})"
        bound = "" if r.get("tshark_finished", True) else ">= "
        lines.append(
            f"| {r['capture_bytes'] / 1e9:,.2f} GB | {r['packets']:,} | {bound}{r['tshark_s']:.1f} s | "
            f"{r['import_s']:.1f} s | {bound}{r['tshark_s'] / r['import_s']:.2f}x | {r['tshark_rss'] / 2**20:,.0f} MiB"
            f" | {r['import_rss'] / 2**20:,.0f} MiB | {r['dataset_bytes'] / 1e6:,.0f} MB | "
            f"{r['duckdb_s']:.2f} s | {dask} |"
        )
    return "\n".join(lines)


def run(ctx) -> None:  # bench/run --only pcap
    """bench/run: one capture (100 MB; 30 MB with --quick), every figure with tshark as the anchor."""
    from _common import Row, ratio, yes_no

    size = 30_000_000 if ctx.quick else 100_000_000
    if not shutil.which("tshark"):
        ctx.note("tshark is not installed (Debian package tshark): the anchor cannot be measured")
        return
    work = Path(tempfile.mkdtemp(prefix="pcap-scale-", dir=ctx.workdir))
    try:
        r = one_size(size, work, dask=not ctx.quick, log=ctx.log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mb = r["capture_bytes"] / 1e6
    anchor = f"tshark -T fields, 6 SIP fields, same {mb:,.0f} MB file"
    speed, tspeed = mb / r["import_s"], mb / r["tshark_s"]
    # the goal is for captures of 100 MB and more: on a small one, starting Python and importing pyarrow (~0.5 s)
    # weigh as much as the reading (--quick: 30 MB, about 1.5x)
    ctx.emit(
        Row(
            ctx.name,
            f"read_pcap(to=) import speed, {mb:,.0f} MB synthetic capture",
            speed,
            "MB/s",
            anchor,
            tspeed,
            ratio(speed, tspeed),
            ">= 2x tshark (100 MB and more)",
            yes_no(speed >= 2 * tspeed) if mb >= 100 else "",
        )
    )
    ctx.emit(
        Row(
            ctx.name,
            "read_pcap(to=) peak RSS of the import process",
            r["import_rss"] / 2**20,
            "MiB",
            anchor + " (its peak RSS)",
            r["tshark_rss"] / 2**20,
            ratio(r["import_rss"], r["tshark_rss"]),
            "<= 1024 MiB",
            yes_no(r["import_rss"] <= 2**30),
        )
    )
    ctx.emit(
        Row(
            ctx.name,
            "DuckDB: transaction latency p50/p99 per method per hour",
            r["duckdb_s"],
            "s",
            "the import of the same capture",
            r["import_s"],
            ratio(r["duckdb_s"], r["import_s"]),
            "<= 10 s at 5 GB",
            "",
        )
    )
    if r["dask_s"] is not None:
        ctx.emit(
            Row(
                ctx.name,
                "Dask LocalCluster (2 workers): the same query",
                r["dask_s"],
                "s",
                "DuckDB, same query",
                r["duckdb_s"],
                ratio(r["dask_s"], r["duckdb_s"]),
                "identical numbers",
                yes_no(bool(r["dask_identical"])),
            )
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100MB", help="comma-separated capture sizes, e.g. 100MB,1GB,5GB")
    ap.add_argument("--workdir", help="where captures and datasets go (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the captures and datasets")
    ap.add_argument("--no-dask", action="store_true", help="skip the Dask query")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument(
        "--tshark-timeout",
        type=float,
        help="stop tshark after this many seconds (then its time is a lower bound scaled from the packets it printed)",
    )
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="pcap-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    if sum(sizes) * 1.3 > free:
        raise SystemExit(
            f"not enough disk in {work}: {free / 1e9:.1f} GB free, about {sum(sizes) * 1.3 / 1e9:.1f} GB needed"
        )
    results = []
    try:
        for size in sizes:
            print(f"== {size / 1e9:g} GB", flush=True)
            results.append(one_size(size, work, dask=not args.no_dask, tshark_timeout=args.tshark_timeout))
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
            if not args.keep:
                for p in work.glob("synthetic-*"):
                    p.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + table(results), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
