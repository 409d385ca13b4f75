"""Helpers for the interop tests: run real SIP software (Kamailio, SIPp, sipsak) on loopback.

Every program is started on 127.0.0.1 on a port that is free for both UDP and TCP, waited for until it
is ready, given a hard timeout, and always stopped (also when the test fails). Its logs go to the
test's tmp_path and are appended to assertion messages, so a failure says what the other side saw.

  free_port()            a port free for UDP and TCP on 127.0.0.1 (optionally also port+k, for SIPp media)
  run_tool(args, ...)    run a program to completion under a hard timeout; a ToolResult to assert on
  Background             a long-running program in its own process group, stopped by its pid
  start_kamailio(...)    Kamailio with examples/kamailio/kamailio.cfg, returned once it answers OPTIONS
  Sipp                   bounded, loopback-only SIPp command lines; .run() a client, .start() a server

The fixtures that use them are in conftest.py.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "tests" / "interop"  # the SIPp scenarios and raw requests stay with the interop tests
SIPP_DIR = HERE / "sipp"
REQUESTS_DIR = HERE / "requests"
KAMAILIO_CFG = REPO / "examples" / "kamailio" / "kamailio.cfg"
KAMAILIO_MODULE_DIRS = (
    "/usr/lib/x86_64-linux-gnu/kamailio/modules",
    "/usr/lib/aarch64-linux-gnu/kamailio/modules",
    "/usr/lib64/kamailio/modules",
    "/usr/lib/kamailio/modules",
    "/usr/local/lib64/kamailio/modules",
    "/usr/local/lib/kamailio/modules",
)


class MissingProgram(AssertionError):
    """A program the tests or benchmarks need is not installed (an AssertionError: a test fails, never skips)."""


def require(program: str) -> str:
    """The path of `program`; MissingProgram with an install hint when it is not installed."""
    path = shutil.which(program)
    if path is None:
        raise MissingProgram(
            f"{program} is not installed; run `make system-deps` (Debian packages kamailio, sip-tester, sipsak)"
        )
    return path


# ---------------------------------------------------------------------------------------------------
# ports
# ---------------------------------------------------------------------------------------------------
_handed_out: set[int] = set()


def _bindable(port: int) -> bool:
    """True if `port` can be bound on 127.0.0.1 for both UDP and TCP right now."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        udp.bind((HOST, port))
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        udp.close()
        tcp.close()


def free_port(low: int = 20000, high: int = 60000, *, also: Sequence[int] = ()) -> int:
    """A port in [low, high) that is free for both UDP and TCP on 127.0.0.1 and not handed out before in
    this test run. `also=(2,)` additionally requires port+2 to be free (SIPp's RTP echo uses port and
    port+2). Use low/high below 10000 for tools that mangle 5-digit ports (sipsak)."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(500):
        port = rng.randrange(low, high - max(also, default=0))
        wanted = [port] + [port + k for k in also]
        if any(p in _handed_out for p in wanted):
            continue
        if all(_bindable(p) for p in wanted):
            _handed_out.update(wanted)
            return port
    raise RuntimeError(f"no free UDP+TCP port in {low}..{high} on {HOST}")


def udp_bound(port: int, host: str = HOST) -> bool:
    """True if some socket is bound to host:port/UDP (read from /proc, sends nothing)."""
    return _proc_net_has("/proc/net/udp", host, port, state=None)


def tcp_listening(port: int, host: str = HOST) -> bool:
    """True if some socket listens on host:port/TCP (read from /proc, connects to nothing)."""
    return _proc_net_has("/proc/net/tcp", host, port, state="0A")


def _proc_net_has(path: str, host: str, port: int, state: str | None) -> bool:
    want_ip = socket.inet_aton(host)[::-1].hex().upper()
    want = f"{want_ip}:{port:04X}"
    any_ip = f"00000000:{port:04X}"
    try:
        with open(path) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] in (want, any_ip) and (state is None or fields[3] == state):
                    return True
    except OSError:
        return False
    return False


def wait_for(condition: Callable[[], bool], timeout: float, what: str, on_fail: Callable[[], str] = lambda: "") -> None:
    """Poll `condition` every 20 ms until it holds; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{on_fail()}")


# ---------------------------------------------------------------------------------------------------
# running programs
# ---------------------------------------------------------------------------------------------------
@dataclass
class ToolResult:
    args: list[str]
    returncode: int | None  # None: killed after the timeout
    stdout: str
    stderr: str
    elapsed: float
    extra: str = ""  # log files etc., for the assertion message

    def describe(self, tail: int = 6000) -> str:
        parts = [f"$ {' '.join(self.args)}", f"exit status: {self.returncode} after {self.elapsed:.1f} s"]
        for name, text in (("stdout", self.stdout), ("stderr", self.stderr), ("logs", self.extra)):
            if text.strip():
                parts.append(f"--- {name} (last {tail} chars) ---\n{text[-tail:]}")
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.describe()


def run_tool(args: Sequence[str], *, timeout: float, cwd: Path | None = None, logs: Sequence[Path] = ()) -> ToolResult:
    """Run a program to completion (stdin closed) with a hard timeout; never raises on failure, the
    caller asserts on the result (whose str() shows the command, exit status, output and `logs`)."""
    argv = [str(a) for a in args]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate(timeout=10)
        code = None
        err += f"\n[killed after the {timeout} s timeout]"
    return ToolResult(argv, code, out, err, time.monotonic() - started, _read_logs(logs))


def _read_logs(paths: Sequence[Path]) -> str:
    chunks = []
    for p in paths:
        if p.exists():
            text = p.read_text(errors="replace")
            if text.strip():
                chunks.append(f"== {p.name} ==\n{text[-8000:]}")
    return "\n".join(chunks)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group we created for `proc` (start_new_session: pgid == pid)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Background:
    """A long-running program in its own session/process group; output to `log`; stopped by its pid.

    `stop()` sends SIGTERM to the process, waits, then SIGKILLs the whole group (children included).
    """

    def __init__(self, args: Sequence[str], log: Path, *, cwd: Path | None = None, name: str = "") -> None:
        self.args = [str(a) for a in args]
        self.log_path = log
        self.name = name or Path(self.args[0]).name
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self, tail: int = 8000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-tail:]

    def describe(self, tail: int = 8000) -> str:
        state = "running" if self.alive() else f"exited with {self.proc.returncode}"
        return f"$ {' '.join(self.args)}\n{self.name} {state}; log {self.log_path}:\n{self.log(tail)}"

    def wait(self, timeout: float) -> int | None:
        """Wait for the program to exit by itself; None (and it is killed) if it does not in time."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return None

    def stop(self, grace: float = 5.0) -> int | None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(self.proc)  # children of a killed parent, or the parent itself if it ignored SIGTERM
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if not self._log_file.closed:
            self._log_file.close()
        return self.proc.returncode

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------------
# SIP probes
# ---------------------------------------------------------------------------------------------------
def sip_options(
    port: int, *, transport: str = "udp", ruri: str | None = None, timeout: float = 0.5
) -> tuple[int | None, str]:
    """Send one OPTIONS (to `ruri`, default sip:127.0.0.1:port) to 127.0.0.1:port; return the status
    and text of the first final response, or (None, "") if none came back in time."""
    branch = "z9hG4bK-probe-" + uuid.uuid4().hex[:12]
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    ruri = ruri or f"sip:{HOST}:{port}"
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(timeout)
        try:
            s.bind((HOST, 0))
            if transport != "udp":
                s.connect((HOST, port))
            lport = s.getsockname()[1]
            msg = (
                f"OPTIONS {ruri} SIP/2.0\r\n"
                f"Via: SIP/2.0/{transport.upper()} {HOST}:{lport};branch={branch};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:probe@{HOST}>;tag={uuid.uuid4().hex[:8]}\r\n"
                f"To: <{ruri}>\r\n"
                f"Call-ID: {uuid.uuid4().hex}@{HOST}\r\n"
                f"Contact: <sip:probe@{HOST}:{lport};transport={transport}>\r\n"
                "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            if transport == "udp":
                s.sendto(msg, (HOST, port))
            else:
                s.sendall(msg)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data = s.recv(65535)
                if not data:
                    break
                first = data.split(b"\r\n", 1)[0].split()
                if len(first) >= 2 and first[0] == b"SIP/2.0" and first[1].isdigit() and int(first[1]) >= 200:
                    return int(first[1]), data.decode("utf-8", "replace")
        except OSError:
            pass
    return None, ""


# ---------------------------------------------------------------------------------------------------
# Kamailio
# ---------------------------------------------------------------------------------------------------
@dataclass
class Kamailio:
    port: int
    process: Background
    pidfile: Path

    @property
    def uri(self) -> str:
        return f"sip:{HOST}:{self.port}"

    def describe(self) -> str:
        return self.process.describe()


def kamailio_module_dir() -> str | None:
    for d in KAMAILIO_MODULE_DIRS:
        if Path(d, "tm.so").exists():
            return d
    return None


def start_kamailio(workdir: Path, port: int, *, ready_timeout: float = 15.0, defines: Sequence[str] = ()) -> Kamailio:
    """Start Kamailio with examples/kamailio/kamailio.cfg on 127.0.0.1:port (UDP+TCP), in the foreground
    (-DD: the creator does not daemonise, so it stays our child), logging to stderr (-E) into a file."""
    exe = require("kamailio")
    workdir.mkdir(parents=True, exist_ok=True)
    pidfile = workdir / "kamailio.pid"
    args = [
        exe,
        "-f",
        KAMAILIO_CFG,
        "-m",
        "1024",
        "-M",
        "64",
        "-E",
        "-DD",
        "-P",
        pidfile,
        "-Y",
        workdir,
        "-w",
        workdir,
        "-A",
        f"SIP_IP={HOST}",
        "-A",
        f"SIP_PORT={port}",
        "-A",
        "WITH_CHILDREN=2",
    ]
    extra = [x for d in defines for x in ("-A", d)]
    args += extra
    mdir = kamailio_module_dir()
    if mdir:
        args += ["-L", mdir]
    check = run_tool(
        [exe, "-c", "-f", KAMAILIO_CFG, "-A", f"SIP_PORT={port}"] + extra + (["-L", mdir] if mdir else []), timeout=20
    )
    assert check.returncode == 0, f"kamailio.cfg does not pass `kamailio -c`:\n{check}"
    proc = Background(args, workdir / "kamailio.log", cwd=workdir, name="kamailio")
    k = Kamailio(port, proc, pidfile)
    try:
        wait_for(
            lambda: not proc.alive() or (udp_bound(port) and tcp_listening(port)),
            ready_timeout,
            f"kamailio to bind udp+tcp {HOST}:{port}",
            k.describe,
        )
        assert proc.alive(), f"kamailio exited while starting:\n{k.describe()}"
        # bound is not ready: wait until a worker answers OPTIONS on both transports
        wait_for(
            lambda: sip_options(port, transport="udp")[0] == 200 and sip_options(port, transport="tcp")[0] == 200,
            ready_timeout,
            "kamailio to answer OPTIONS with 200 on udp and tcp",
            k.describe,
        )
        pid = int(pidfile.read_text().split()[0])
        assert pid == proc.pid, f"-DD keeps the main process in the foreground: pidfile {pid}, child {proc.pid}"
    except BaseException:
        proc.stop()
        raise
    return k


# ---------------------------------------------------------------------------------------------------
# SIPp
# ---------------------------------------------------------------------------------------------------
def sipp_command(
    exe: str,
    scenario: str,
    *,
    local_port: int,
    calls: int,
    transport: str,
    timeout_s: float,
    err_file: Path,
    traces: Sequence[str] = (),
    service: str | None = None,
    rate: int | None = None,
    extra: Sequence[str] = (),
    remote: str | None = None,
) -> list[str]:
    """The argv of one SIPp run as the tests and the benchmarks start it: bounded (-m, -timeout), quiet (-nostdin),
    loopback-only with explicit ports (signalling; RTP echo sockets at a free port and port+2; the remote-control
    socket), errors to `err_file`, then the caller's trace options, `-s service`, `-r rate`, `extra`, and `remote`
    ('host:port') last for a client scenario."""
    args = [
        exe,
        "-sf",
        str(SIPP_DIR / scenario),
        "-i",
        HOST,
        "-bind_local",
        "-p",
        str(local_port),
        "-t",
        {"udp": "u1", "tcp": "t1"}[transport],
        "-mi",
        HOST,
        "-mp",
        str(free_port(also=(2,))),  # RTP echo sockets: port and port+2
        "-ci",
        HOST,
        "-cp",
        str(free_port()),  # remote-control socket
        "-m",
        str(calls),
        "-timeout",
        f"{int(timeout_s)}s",
        "-timeout_error",
        "-nostdin",
        "-trace_err",
        "-error_file",
        str(err_file),
        *traces,
    ]
    if service:
        args += ["-s", service]
    if rate:
        args += ["-r", str(rate), "-rp", "1000"]
    args += list(extra)
    if remote:
        args.append(remote)
    return args


@dataclass
class Sipp:
    """Builds SIPp command lines that are bounded (-m, -timeout), quiet (-nostdin) and loopback-only."""

    tmp_path: Path
    exe: str

    _counter = itertools.count(1)

    def command(
        self,
        scenario: str,
        *,
        local_port: int,
        calls: int,
        remote: str | None = None,
        service: str | None = None,
        transport: str = "udp",
        rate: int | None = None,
        limit: int | None = None,
        timeout_s: int = 30,
        extra: Sequence[str] = (),
    ) -> tuple[list[str], list[Path]]:
        """The argv for one SIPp run, and its log files (errors, messages); `remote` is 'host:port'
        for a client scenario, None for a server one."""
        stem = f"sipp{next(self._counter)}_{Path(scenario).stem}"
        err_file = self.tmp_path / f"{stem}_errors.log"
        msg_file = self.tmp_path / f"{stem}_messages.log"
        screen_file = self.tmp_path / f"{stem}_screen.log"
        args = sipp_command(
            self.exe,
            scenario,
            local_port=local_port,
            calls=calls,
            transport=transport,
            timeout_s=timeout_s,
            err_file=err_file,
            traces=["-trace_msg", "-message_file", str(msg_file)],
            service=service,
            rate=rate,
            extra=(["-l", str(limit)] if limit else []) + list(extra),
            remote=remote,
        )
        return [str(a) for a in args], [err_file, msg_file, screen_file]

    def run(self, scenario: str, **kw) -> ToolResult:
        """Run a client scenario to completion (hard timeout: SIPp's own -timeout plus 30 s)."""
        args, logs = self.command(scenario, **kw)
        return run_tool(args, timeout=kw.get("timeout_s", 30) + 30, cwd=self.tmp_path, logs=logs[:2])

    def start(self, scenario: str, **kw) -> SippServer:
        """Start a server scenario in the background; returns once SIPp listens on its port."""
        args, logs = self.command(scenario, **kw)
        proc = Background(args, logs[2], cwd=self.tmp_path, name="sipp")
        server = SippServer(proc, kw["local_port"], logs[:2], kw.get("timeout_s", 30))
        transport = kw.get("transport", "udp")
        try:
            wait_for(
                lambda: (
                    not proc.alive() or (udp_bound(server.port) if transport == "udp" else tcp_listening(server.port))
                ),
                10,
                f"SIPp to listen on {HOST}:{server.port}/{transport}",
                server.describe,
            )
            assert proc.alive(), f"SIPp exited while starting:\n{server.describe()}"
        except BaseException:
            proc.stop()
            raise
        return server


@dataclass
class SippServer:
    process: Background
    port: int
    logs: list[Path]
    timeout_s: int

    def messages(self) -> str:
        """Everything SIPp sent and received (its -trace_msg file)."""
        return self.logs[1].read_text(errors="replace") if self.logs[1].exists() else ""

    def describe(self) -> str:
        return self.process.describe(tail=3000) + "\n" + _read_logs(self.logs)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until SIPp has handled its -m calls and exits; its exit status (None if killed)."""
        return self.process.wait(timeout if timeout is not None else self.timeout_s + 10)
