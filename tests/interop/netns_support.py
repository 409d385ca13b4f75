"""A private network namespace for the interop tests with linphone and baresip, and the notebook_im side in it.

Why a namespace at all: liblinphone looks at the machine's real interfaces (it sends IPv6 neighbour
solicitations, tries its configured DNS server, probes for a default route to find "its" address), and baresip
likewise lists interfaces to pick addresses. On a shared machine none of that may leave loopback. In a network
namespace that holds only `lo`, every such attempt fails at once with ENETUNREACH, and the programs fall back to
127.0.0.1, which is what the tests want anyway.

How it is built (the robust option, and why):
- `Netns` starts `tests/interop/netns_agent.py` as `unshare --net -- python netns_agent.py`. That fresh
  interpreter IS the namespace's first process: it brings `lo` up and hosts the embedded `nim.Server` and the
  notebook_im endpoints. pytest drives it over its stdin/stdout (JSON lines, every wait bounded; see the agent's
  docstring for the operations). The pytest process itself cannot enter a namespace for one module: notebook_im
  has one loop thread per process, shared by the whole test session and already bound to the root namespace;
  `os.unshare` only exists from Python 3.12 (this is 3.11), and unshare(2)/setns(2) through ctypes would move
  only the calling thread, not the loop thread that owns the sockets. Forking pytest (a threaded process) to
  unshare in the child is unsafe. A subprocess is clean: nothing of the namespace leaks into the test session,
  and the namespace disappears with its last process.
- Third-party programs run as pytest's own children, but inside the namespace: `Netns.spawn(argv)` prefixes
  `nsenter --net=/proc/<agent pid>/ns/net --` (setns(2), then exec: no extra process) and coreutils `timeout`
  (a hard limit on its life, even if pytest is killed before any teardown). Each gets its own process group,
  so `kill()` (SIGKILL to the group: the "crashed device") takes the program down at once, and a log file
  under the test's tmp_path.
- When pytest itself needs a socket in the namespace (a TCP control port such as baresip's ctrl_tcp, a raw SIP
  probe), `Netns.socket()` opens it from a short-lived thread that first setns(2)s into the namespace: a socket
  belongs to the namespace it was created in, whichever thread uses it afterwards.

Needs root (CAP_SYS_ADMIN for unshare/setns) and util-linux's `unshare`/`nsenter` (Debian: essential). CI and
the dev machines run as root; a test that cannot build the namespace fails, it does not skip.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest

HERE = Path(__file__).resolve().parent
AGENT = HERE / "netns_agent.py"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class AgentError(AssertionError):
    """An operation failed inside the namespace agent; the message carries the agent's traceback."""


def require_tool(program: str, hint: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed ({hint}); run `make system-deps` / scripts/install-system-deps")
    return path


def tail(path: Path, chars: int = 6000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:]


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the process group we created for `proc` (start_new_session: pgid == pid)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class JsonLines:
    """The client side of the helpers' protocol (netns_agent.py, liblinphone_agent.py): one JSON request per
    line on the helper's stdin, one JSON response per line on its stdout, matched by id. A reader thread
    queues the lines so that every wait has a deadline."""

    def __init__(self, stdin: IO[bytes], stdout: IO[bytes], name: str, describe: Callable[[], str]) -> None:
        self.stdin = stdin
        self.name = name
        self.describe = describe
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._ids = 0
        threading.Thread(target=self._reader, args=(stdout,), daemon=True, name=f"{name}-reader").start()

    def _reader(self, stream: IO[bytes]) -> None:
        try:
            for raw in stream:
                self._lines.put(raw.decode("utf-8", "replace"))
        except (OSError, ValueError):
            pass
        self._lines.put(None)

    def call(self, op: str, *, rpc_timeout: float | None = None, **args: Any) -> Any:
        """Run `op` in the helper; AgentError (with the helper's traceback) if it raised, AssertionError if
        no answer came within `rpc_timeout` seconds (default: the operation's own `timeout` argument plus
        10 s, else 30 s) or the helper is gone."""
        timeout = rpc_timeout if rpc_timeout is not None else float(args.get("timeout", 20)) + 10
        self._ids += 1
        rid = self._ids
        try:
            self.stdin.write((json.dumps({"id": rid, "op": op, "args": args}) + "\n").encode())
            self.stdin.flush()
        except (BrokenPipeError, ValueError, OSError) as e:
            raise AssertionError(f"{self.name} is gone ({e})\n{self.describe()}") from None
        return self.response(rid, timeout, f"{self.name}'s answer to {op}({args})")

    def response(self, rid: int, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{self.describe()}")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self._lines.put(None)  # stays closed for the next caller too
                raise AssertionError(f"{self.name} exited while waiting for {what}\n{self.describe()}")
            msg = json.loads(line)
            if msg.get("id") != rid:  # the late answer to an earlier call that timed out: not ours
                continue
            if not msg["ok"]:
                raise AgentError(f"{what} failed: {msg['error']}\n{msg.get('traceback', '')}")
            return msg["result"]


class NsProcess:
    """A program running inside the namespace, in its own process group; stdout+stderr go to `log`.

    `stdin=True` gives it a pipe to write commands to (baresip's stdio UI); otherwise stdin is /dev/null.
    `stdout=True` keeps stdout as a pipe for the caller (a JSON-lines helper) and logs only stderr.
    `kill()` is SIGKILL of the whole group with no warning: the "device crashed" case. `stop()` is SIGTERM,
    then SIGKILL after `grace` seconds.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdin: bool = False,
        stdout: bool = False,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.name = name
        self.log_path = log
        self.cleanup: list[Path] = []  # files the program leaves behind (a unix socket), removed when it ends
        self._log_file = open(log, "ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else self._log_file,
            stderr=self._log_file if stdout else subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def write(self, text: str) -> None:
        assert self.proc.stdin is not None, f"{self.name} was started without a stdin pipe"
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def log(self, chars: int = 8000) -> str:
        return tail(self.log_path, chars)

    def describe(self, chars: int = 8000) -> str:
        state = "running" if self.alive() else f"exited with {self.proc.returncode}"
        return f"$ {' '.join(self.argv)}\n{self.name} {state}; log {self.log_path}:\n{self.log(chars)}"

    def kill(self) -> int | None:
        """SIGKILL, no goodbye (no un-REGISTER, sockets just vanish); returns the exit status (-9)."""
        kill_group(self.proc)
        try:
            return self.proc.wait(timeout=10)
        finally:
            self._close()

    def stop(self, grace: float = 5.0) -> int | None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        kill_group(self.proc)  # leftovers of the group, or the program itself if it ignored SIGTERM
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._close()
        return self.proc.returncode

    def _close(self) -> None:
        for path in self.cleanup:
            try:
                path.unlink()
            except OSError:
                pass
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                try:
                    stream.close()
                except OSError:
                    pass
        if not self._log_file.closed:
            self._log_file.close()


class Netns:
    """A network namespace with only loopback, its notebook_im agent, and the programs spawned into it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "netns-agent.log"
        self.proc: subprocess.Popen | None = None
        self.children: list[NsProcess] = []
        self.rpc: JsonLines | None = None
        self.info: dict[str, Any] = {}
        self.server: dict[str, Any] = {}  # uri, host, port of the embedded server once started
        self._next_port = 20000

    # -- life cycle --------------------------------------------------------------------------------------
    def start(self, ready_timeout: float = 30.0) -> Netns:
        unshare = require_tool("unshare", "util-linux")
        require_tool("nsenter", "util-linux")
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [unshare, "--net", "--", sys.executable, str(AGENT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=self.workdir,
                start_new_session=True,
            )
        finally:
            log.close()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.rpc = JsonLines(self.proc.stdin, self.proc.stdout, "the namespace agent", self.describe)
        try:
            hello = self.rpc.response(0, ready_timeout, "the namespace agent to start")
            self.info = hello
            assert hello["netns"] != os.stat("/proc/self/ns/net").st_ino, "the agent is in pytest's own namespace"
            assert hello["interfaces"] == ["lo"], f"the namespace has interfaces besides lo: {hello['interfaces']}"
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every program spawned into the namespace, then the agent (asked first, then killed)."""
        for child in reversed(self.children):
            child.stop(grace=3)
        self.children.clear()
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.call("shutdown", rpc_timeout=10)
            except (AgentError, AssertionError, OSError):
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        kill_group(self.proc)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def ns_path(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def describe(self) -> str:
        return (
            f"namespace agent (pid {self.proc.pid if self.proc else None}) log {self.log_path}:\n{tail(self.log_path)}"
        )

    def port(self) -> int:
        """A port for a program in this namespace: nothing else lives here, and handing them out in order from
        20000 stays below the kernel's ephemeral range (32768+), where the agent's own sockets get theirs."""
        self._next_port += 2
        return self._next_port

    # -- the agent's operations ----------------------------------------------------------------------------
    def call(self, op: str, *, rpc_timeout: float | None = None, **args: Any) -> Any:
        """Run operation `op` in the agent and return its result; AgentError (with the agent's traceback)
        if it raised, AssertionError if no answer came in time (`rpc_timeout`, by default the operation's
        own `timeout` argument plus 10 s; the agent is then killed: a hung agent must not hang the session)."""
        assert self.rpc is not None and self.proc is not None, "the namespace agent is not running"
        try:
            return self.rpc.call(op, rpc_timeout=rpc_timeout, **args)
        except AgentError:
            raise
        except AssertionError:
            kill_group(self.proc)
            raise

    # -- programs and sockets in the namespace ----------------------------------------------------------------
    def nsenter(self, argv: Sequence[str]) -> list[str]:
        """`argv` prefixed so that it runs in this namespace (nsenter setns()s, then execs: same pid)."""
        return ["nsenter", f"--net={self.ns_path}", "--"] + [str(a) for a in argv]

    def spawn(
        self,
        argv: Sequence[str],
        log: Path,
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdin: bool = False,
        stdout: bool = False,
        max_seconds: int | None = 600,
    ) -> NsProcess:
        """Start `argv` inside the namespace; it is stopped by `Netns.stop()` if the test does not stop it.

        `max_seconds` bounds its life even if pytest itself is killed and no teardown runs (coreutils
        `timeout`: SIGTERM then, SIGKILL 5 s later): a stray linphone must not keep a shared machine busy.
        The pid held is then `timeout`'s, with the program as its only child, in the same process group, so
        `kill()` (SIGKILL to the group) still hits the program at once, and `stop()`'s SIGTERM is passed on."""
        if max_seconds is not None:
            argv = ["timeout", "-k", "5", str(int(max_seconds))] + [str(a) for a in argv]
        child = NsProcess(self.nsenter(argv), log, name=name, env=env, cwd=cwd, stdin=stdin, stdout=stdout)
        self.children.append(child)
        return child

    def run_in(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Call `fn` on a fresh thread that has first moved into this namespace (setns(2) is per thread); for
        creating sockets that then belong to the namespace. The thread ends afterwards."""
        libc = ctypes.CDLL(None, use_errno=True)
        box: dict[str, Any] = {}

        def run() -> None:
            fd = os.open(self.ns_path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({self.ns_path}): {os.strerror(err)}")
                box["value"] = fn()
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                box["error"] = e
            finally:
                os.close(fd)

        t = threading.Thread(target=run, daemon=True, name="netns-setns")
        t.start()
        t.join(timeout)
        if t.is_alive():
            raise AssertionError(f"{fn} did not return within {timeout} s inside the namespace")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def connect(self, host: str, port: int, timeout: float = 5.0) -> socket.socket:
        """A TCP connection from inside the namespace (e.g. to a control port that listens on its loopback)."""
        return self.run_in(lambda: socket.create_connection((host, port), timeout=timeout), timeout + 5)

    def udp_socket(self, host: str = "127.0.0.1") -> socket.socket:
        """A UDP socket bound to host:<any port> inside the namespace (raw SIP probes)."""

        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((host, 0))
            return s

        return self.run_in(make)

    # -- conveniences over the agent's operations -------------------------------------------------------------
    def start_server(self, **kwargs: Any) -> dict[str, Any]:
        """Start the embedded nim.Server in the namespace (UDP and TCP on one ephemeral 127.0.0.1 port)."""
        self.server = self.call("server_start", **kwargs)
        return self.server

    @property
    def server_port(self) -> int:
        assert self.server, "start_server() first"
        return int(self.server["port"])

    def endpoint(self, name: str, uri: str, **kwargs: Any) -> dict[str, Any]:
        """A notebook_im endpoint in the namespace, registered with the embedded server (see op_endpoint)."""
        return self.call("endpoint", name=name, uri=uri, **kwargs)

    def send_message(self, name: str, to: str, text: str, **kwargs: Any) -> dict[str, Any]:
        """A pager MESSAGE from endpoint `name`; the outcome as data (ok, status, reason, elapsed)."""
        return self.call("send_message", name=name, to=to, text=text, **kwargs)

    def messages(
        self, name: str, count: int = 1, timeout: float = 10, sender: str | None = None
    ) -> list[dict[str, Any]]:
        """What endpoint `name` received (MessageReceived as dicts), after waiting for `count` of them."""
        return self.call("messages", name=name, count=count, timeout=timeout, sender=sender)

    def events(
        self, name: str, type: str | None = None, count: int = 0, timeout: float = 0, sender: str | None = None
    ) -> list[dict[str, Any]]:
        """Endpoint `name`'s events as dicts ({"type": "MessageDisplayed", ...}), after waiting for `count`."""
        return self.call("events", name=name, type=type, count=count, timeout=timeout, sender=sender)

    def wait_registered(
        self, aor: str, timeout: float = 15.0, *, count: int = 1, on_fail: Callable[[], str] = lambda: ""
    ) -> list[str]:
        """Wait until `aor` has at least `count` live bindings with the embedded server; its Contact URIs."""
        deadline = time.monotonic() + timeout
        regs: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            regs = self.call("registrations", rpc_timeout=10)
            if len(regs.get(aor, [])) >= count:
                return regs[aor]
            time.sleep(0.05)
        raise AssertionError(
            f"{aor} did not register (have {count} bindings) within {timeout} s; the server has {regs}\n{on_fail()}"
        )

    def wait_unregistered(self, aor: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        regs: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            regs = self.call("registrations", rpc_timeout=10)
            if not regs.get(aor):
                return
            time.sleep(0.05)
        raise AssertionError(f"{aor} is still registered after {timeout} s: {regs}")

    def wire(self, **filters: Any) -> list[dict[str, Any]]:
        """SIP messages recorded by the server and the endpoints (see the agent's op_wire)."""
        return self.call("wire", rpc_timeout=30, **filters)


# -- shared by the linphone and baresip tests ----------------------------------------------------------------------
DOMAIN = "example.test"


def user(name: str) -> str:
    """A user name no other test of the module uses (the namespace and its server are shared per module)."""
    return f"{name}-{uuid.uuid4().hex[:6]}"


def nim_user(netns: Netns, name: str, transport: str = "udp") -> str:
    """A notebook_im endpoint `name` registered with the embedded server; its address of record."""
    aor = f"sip:{name}@{DOMAIN}"
    netns.endpoint(name, aor, transport=transport)
    return aor


def shown(messages: list[Any]) -> str:
    """Captured messages (loopback_capture.WireMessage) as text, for assertion messages."""
    return "\n".join(f"--- {m.transport} {m.src} -> {m.dst}\n{m.text()}" for m in messages)
