"""What the bench/run benchmarks share: result rows, child processes, SIPp runs and their counters, the rate ladder.

Why a module of its own: every benchmark runs real programs (SIPp, Kamailio, a notebook_im endpoint or server
in its own process) on loopback and has to start, bound and stop them the same way. Port probing and the
Kamailio readiness probe come from support/programs.py, so the benchmarks and the interop tests
agree on how those programs are run; what differs here is that every program stays in the benchmark's own
process group (bench/harness.py kills that group when a benchmark overruns its budget, so nothing leaks), and
SIPp is run without -trace_msg (logging every message would slow it down and distort the anchor).
"""

from __future__ import annotations

import csv
import json
import os
import re
import select
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:  # the checkout's notebook_im and support/ helpers, whatever else is installed
    sys.path.insert(1, str(REPO))

from support.programs import (  # noqa: E402,F401 - needs the path above; re-exported for the benchmarks
    HOST,
    KAMAILIO_CFG,
    SIPP_DIR,
    free_port,
    kamailio_module_dir,
    sip_options,
    tcp_listening,
    udp_bound,
)
from support.programs import sipp_command as sipp_argv  # noqa: E402 - the argv the tests build too

COLUMNS = ("benchmark", "figure", "value", "unit", "anchor", "anchor_value", "ratio", "goal", "met")


# ---------------------------------------------------------------------------------------------------
# result rows (a benchmark child appends them as JSON lines; the harness turns them into the table)
# ---------------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One figure of the results table, with the anchor measured in the same run and the goal it is held to."""

    benchmark: str
    figure: str
    value: float | None
    unit: str
    anchor: str = ""
    anchor_value: float | None = None
    ratio: float | None = None
    goal: str = ""
    met: str = ""  # "yes", "no" or "" (no goal)


@dataclass
class Context:
    """What a benchmark child is given: where to put rows and logs, how long it may run, quick or full."""

    name: str
    rows_file: Path
    workdir: Path
    quick: bool
    deadline: float  # time.monotonic() by which the child must be done (soft)
    notes: list[str] = field(default_factory=list)
    pause: float = 1.0  # quiet seconds between the end of one ladder step and the next one's traffic
    last_step_end: float = 0.0

    def emit(self, row: Row) -> Row:
        """Append a row to the results (at once, so that a benchmark killed at its budget keeps what it had)."""
        with open(self.rows_file, "a") as f:
            f.write(json.dumps({"row": asdict(row)}) + "\n")
        shown = "" if row.value is None else f"{row.value:,.3f}".rstrip("0").rstrip(".")
        print(
            f"  [{self.name}] {row.figure}: {shown} {row.unit}"
            + (
                f"  (anchor {row.anchor_value:,.1f}, ratio {row.ratio:.2f})"
                if row.anchor_value and row.ratio is not None
                else ""
            ),
            flush=True,
        )
        return row

    def note(self, text: str) -> None:
        """A line for the notes under the table (what was skipped, which loop really ran, ...)."""
        with open(self.rows_file, "a") as f:
            f.write(json.dumps({"note": f"{self.name}: {text}"}) + "\n")
        print(f"  [{self.name}] note: {text}", flush=True)

    def settle(self) -> None:
        """Wait until `pause` seconds have passed since the last step ended (receivers start meanwhile)."""
        delay = self.last_step_end + self.pause - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def left(self) -> float:
        """Seconds left before the soft deadline."""
        return self.deadline - time.monotonic()

    def log(self, text: str) -> None:
        """A progress line on the terminal."""
        print(f"  [{self.name}] {text}", flush=True)


def ratio(value: float | None, anchor: float | None) -> float | None:
    """value / anchor, or None when either is missing or the anchor is 0."""
    if value is None or not anchor:
        return None
    return value / anchor


def yes_no(ok: bool) -> str:
    """The `met` column."""
    return "yes" if ok else "no"


def read_rows(path: Path) -> tuple[list[Row], list[str]]:
    """The rows and notes a benchmark child wrote (a torn last line from a killed child is ignored)."""
    rows: list[Row] = []
    notes: list[str] = []
    if not path.exists():
        return rows, notes
    for line in path.read_text().splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "row" in item:
            rows.append(Row(**item["row"]))
        elif "note" in item:
            notes.append(item["note"])
    return rows, notes


def write_csv(path: Path, rows: Sequence[Row]) -> None:
    """results.csv: one line per figure, the columns of COLUMNS."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            d = asdict(r)
            w.writerow(["" if d[c] is None else (f"{d[c]:.6g}" if isinstance(d[c], float) else d[c]) for c in COLUMNS])


# ---------------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------------
def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def loop_kind() -> str:
    """Which event loop notebook_im's runtime thread really runs ("uvloop" or "asyncio")."""
    from notebook_im.runtime import runtime

    return "uvloop" if "uvloop" in type(runtime().loop).__module__ else "asyncio"


class Child:
    """A helper process of ours (bench/_endpoint_proc.py, bench/_server_proc.py) that speaks JSON lines: it
    prints one object when ready, then answers each command line on stdin with one object. It stays in
    our process group, so the harness's kill of a runaway benchmark takes it along."""

    def __init__(
        self, args: Sequence[str], *, env: dict[str, str] | None = None, log: Path, ready_timeout: float = 20.0
    ) -> None:
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, **(env or {})},
            text=True,
            bufsize=1,
        )
        try:
            self.info = self._read(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError(f"{self.proc.args[1]} gave no answer within {timeout} s (log: {self._log.name})")
        return json.loads(line)

    def ask(self, command: str, timeout: float = 20.0) -> dict[str, Any]:
        """Send one command, return its answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    @property
    def pid(self) -> int:
        """The process id (for RSS)."""
        return self.proc.pid

    def stop(self, grace: float = 5.0) -> None:
        """Ask it to quit (closing stdin), then terminate, then kill."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except (OSError, AssertionError):
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_commands(ready: dict[str, Any], commands: dict[str, Callable[[], dict[str, Any]]]) -> None:
    """The child side of `Child`: print `ready`, then answer command lines until stdin closes or "quit"."""
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name == "quit":
            break
        handler = commands.get(name)
        print(
            json.dumps(handler() if handler else {"error": f"unknown command {name!r}; one of {sorted(commands)}"}),
            flush=True,
        )


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> int | None:
    """SIGTERM, wait, SIGKILL: a program we started, by its pid."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------------
# SIPp
# ---------------------------------------------------------------------------------------------------
@dataclass
class SippRun:
    """One SIPp process: its command line, stat file (-trace_stat) and error log (-trace_err)."""

    args: list[str]
    stat_file: Path
    err_file: Path
    proc: subprocess.Popen | None = None
    started: float = 0.0
    elapsed: float | None = None

    def start(self, log: Path) -> SippRun:
        """Start it in the background (stdin closed, screen output to `log`)."""
        self._log = open(log, "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.stat_file.parent
        )
        return self

    def wait(self, timeout: float) -> int | None:
        """Wait for it to finish by itself (its -m calls done); None (and it is stopped) if it does not in time."""
        assert self.proc is not None
        try:
            code: int | None = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
            code = None
        self.elapsed = time.monotonic() - self.started
        self._log.close()
        return code

    def stop(self) -> int | None:
        """Stop it now (a server that did not get all its calls)."""
        assert self.proc is not None
        code = stop_process(self.proc)
        if not self._log.closed:
            self._log.close()
        return code

    def counters(self) -> dict[str, str]:
        """The last line of its statistics file: cumulative counters such as SuccessfulCall(C)."""
        return read_sipp_stats(self.stat_file)

    def errors(self, tail: int = 600) -> str:
        """The end of its error log (unexpected messages, timeouts)."""
        try:
            return self.err_file.read_text(errors="replace")[-tail:]
        except OSError:
            return ""


def sipp_command(
    workdir: Path,
    scenario: str,
    *,
    local_port: int,
    calls: int,
    transport: str = "udp",
    remote: str | None = None,
    service: str | None = None,
    rate: int | None = None,
    timeout_s: float = 30.0,
    tag: str = "sipp",
) -> SippRun:
    """A bounded (-m, -timeout), quiet (-nostdin), loopback-only SIPp command with explicit ports and its counters
    in a statistics file every second (-trace_stat -stf FILE -fd 1). `remote` 'host:port' for a client."""
    stem = f"{tag}_{uuid.uuid4().hex[:6]}"
    stat_file, err_file = workdir / f"{stem}_stat.csv", workdir / f"{stem}_errors.log"
    args = sipp_argv(
        "sipp",
        scenario,
        local_port=local_port,
        calls=calls,
        transport=transport,
        timeout_s=timeout_s,
        err_file=err_file,
        traces=["-trace_stat", "-stf", str(stat_file), "-fd", "1"],
        service=service,
        rate=rate,
        remote=remote,
    )
    return SippRun(args, stat_file, err_file)


def read_sipp_stats(path: Path) -> dict[str, str]:
    """Column name -> value of the last line of a SIPp -trace_stat file ({} if there is none yet)."""
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return {}
    if len(lines) < 2:
        return {}
    names = lines[0].rstrip(";").split(";")
    values = lines[-1].rstrip(";").split(";")
    return dict(zip(names, values))


def counter(stats: dict[str, str], name: str) -> int:
    """An integer counter of a SIPp stat line, e.g. counter(stats, "SuccessfulCall(C)"); -1 if absent."""
    try:
        return int(stats[name])
    except (KeyError, ValueError):
        return -1


def start_sipp_server(run: SippRun, transport: str, log: Path, timeout: float = 10.0) -> SippRun:
    """Start a SIPp server scenario and return once it listens on its port."""
    port = int(run.args[run.args.index("-p") + 1])
    run.start(log)
    listening = udp_bound if transport == "udp" else tcp_listening
    assert run.proc is not None
    if not wait_until(lambda: run.proc.poll() is not None or listening(port), timeout) or run.proc.poll() is not None:
        run.stop()
        raise RuntimeError(
            f"SIPp server did not start listening on {HOST}:{port}/{transport}: {log.read_text()[-800:]}"
        )
    return run


# ---------------------------------------------------------------------------------------------------
# Kamailio (examples/kamailio/kamailio.cfg; see support/programs.start_kamailio)
# ---------------------------------------------------------------------------------------------------
class KamailioProc:
    """Kamailio in the foreground (-DD, -E), our child, stopped by its pid."""

    def __init__(self, workdir: Path, port: int, *, ready_timeout: float = 15.0) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port
        args = [
            "kamailio",
            "-f",
            str(KAMAILIO_CFG),
            "-m",
            "1024",
            "-M",
            "64",
            "-E",
            "-DD",
            "-P",
            str(workdir / "kamailio.pid"),
            "-Y",
            str(workdir),
            "-w",
            str(workdir),
            "-A",
            f"SIP_IP={HOST}",
            "-A",
            f"SIP_PORT={port}",
            "-A",
            "WITH_CHILDREN=2",
        ]
        mdir = kamailio_module_dir()
        if mdir:
            args += ["-L", mdir]
        self.log_path = workdir / f"kamailio_{port}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir
        )
        ok = wait_until(lambda: self.proc.poll() is not None or udp_bound(port), ready_timeout) and wait_until(
            lambda: self.proc.poll() is not None or sip_options(port)[0] == 200, ready_timeout, 0.05
        )
        if not ok or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"kamailio did not answer OPTIONS on {HOST}:{port}: {self.log_path.read_text()[-1500:]}")

    def stop(self) -> None:
        """SIGTERM (Kamailio stops its workers), then SIGKILL if needed."""
        stop_process(self.proc, grace=10)
        self._log.close()


def check_kamailio_config() -> None:
    """`kamailio -c` on the example configuration: a broken file is reported, not benchmarked."""
    args = ["kamailio", "-c", "-f", str(KAMAILIO_CFG)]
    mdir = kamailio_module_dir()
    if mdir:
        args += ["-L", mdir]
    done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"examples/kamailio/kamailio.cfg does not pass `kamailio -c`:\n{done.stderr[-1500:]}")


# ---------------------------------------------------------------------------------------------------
# raw SIP over UDP (the harness's own tiny client: REGISTER on behalf of SIPp, load for the scale benchmark)
# ---------------------------------------------------------------------------------------------------
def register_request(
    server_port: int,
    user: str,
    contact_port: int,
    *,
    local_port: int,
    n: int | str = 1,
    expires: int = 3600,
    run_id: str = "",
) -> bytes:
    """A REGISTER for sip:USER@example.test whose Contact is sip:USER@127.0.0.1:CONTACT_PORT."""
    return (
        f"REGISTER sip:{HOST}:{server_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {HOST}:{local_port};branch=z9hG4bK-reg{run_id}-{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{user}@example.test>;tag=r{n}\r\n"
        f"To: <sip:{user}@example.test>\r\n"
        f"Call-ID: reg{run_id}-{n}@{HOST}\r\n"
        "CSeq: 1 REGISTER\r\n"
        f"Contact: <sip:{user}@{HOST}:{contact_port}>\r\n"
        f"Expires: {expires}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def status_of(data: bytes) -> int | None:
    """The status code of a SIP response datagram (None for a request or garbage)."""
    m = re.match(rb"SIP/2\.0 (\d{3}) ", data)
    return int(m.group(1)) if m else None


def register_once(server_port: int, user: str, contact_port: int, timeout: float = 3.0) -> int | None:
    """REGISTER `user` at 127.0.0.1:server_port from 127.0.0.1:contact_port with that port as its Contact; the final
    status (None: no answer). Sent from the contact's own port because the embedded server, like a proxy behind
    NAT, reaches a UDP client where its REGISTER came from rather than at its Contact: start the program that
    will use the port (SIPp) only after this returns."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, contact_port))
        s.settimeout(0.5)
        msg = register_request(server_port, user, contact_port, local_port=contact_port, run_id=uuid.uuid4().hex[:8])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.sendto(msg, (HOST, server_port))
            try:
                while True:
                    status = status_of(s.recv(65535))
                    if status is not None and status >= 200:
                        return status
            except TimeoutError:
                continue
    return None


# ---------------------------------------------------------------------------------------------------
# the rate ladder
# ---------------------------------------------------------------------------------------------------
@dataclass
class Step:
    """One rung of a ladder: the rate asked for, whether it was clean, why not, and whether it missed narrowly
    (worth a second try on a noisy machine) rather than by far (the rate is plainly too high)."""

    rate: int
    clean: bool
    detail: str
    marginal: bool = False


def ladder(
    ctx: Context,
    label: str,
    rungs: Sequence[int],
    run_step: Callable[[int], Step],
    *,
    step_cost: float,
    pause: float = 1.0,
) -> tuple[int, list[Step]]:
    """Climb `rungs` (rates) until the first unclean step; the highest clean rate (0: none) and every step.

    A step that missed narrowly is run once more before the climb stops (this machine is shared and noisy;
    the anchor gets the same second chance). Steps start `pause` s after the previous one ended (the step
    function calls ctx.settle() once its receivers run). No step is started that could not end before the
    benchmark's deadline (`step_cost`: seconds one step takes, start-up included); a ladder cut short, or one
    clean up to its top rung, says in a note that its figure is a lower bound."""
    best, steps = 0, []
    ctx.pause, ctx.last_step_end = pause, time.monotonic()
    for rate in rungs:
        step = None
        for _attempt in range(2):
            if ctx.left() < step_cost + pause:
                ctx.note(f"{label}: stopped before {rate}/s, out of time (its figure is a lower bound)")
                return best, steps
            step = run_step(rate)
            ctx.last_step_end = time.monotonic()
            steps.append(step)
            ctx.log(f"{label} {rate}/s: {'clean' if step.clean else 'NOT clean'} ({step.detail})")
            if step.clean or not step.marginal:
                break
        assert step is not None
        if not step.clean:
            return best, steps
        best = rate
    if len(rungs) > 1:
        ctx.note(f"{label}: clean up to the top rung, {best}/s (its figure is a lower bound)")
    return best, steps
