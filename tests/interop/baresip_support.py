"""baresip against the embedded notebook_im server, inside the test's loopback-only network namespace.

What is installed (scripts/install-system-deps, Debian 12): `baresip-core` 1.0.0 (/usr/bin/baresip and its
modules in /usr/lib/baresip/modules) on libre0 1.1.0 and librem0 0.6.0. The `baresip` metapackage only adds
GTK/X11/GStreamer/FFmpeg front-ends and codecs through Recommends; the tests need none of them.

How it is run (`Baresip.start`): `baresip -f CONFDIR` with a generated config directory:
- `config`: `sip_listen 127.0.0.1:PORT` (UDP and TCP on that port), `net_interface 127.0.0.1`, `dns_server
  127.0.0.1:53` (never the host's resolver; nothing answers there and nothing needs DNS), and only these
  modules: stdio (the UI: keys and commands on stdin, output on stderr), account (reads `accounts`), contact
  (the contact list, and the `/message` command), menu (the commands, and the handler that prints a received
  MESSAGE). No audio or video module is loaded: chat needs none, and a call attempt fails cleanly.
- `accounts`: `<sip:USER@DOMAIN;transport=udp|tcp>;outbound="sip:127.0.0.1:SERVERPORT;transport=...";
  regint=N;answermode=manual;mwi=no;pubint=0` (+ `auth_pass`): it registers with the embedded server through
  the outbound proxy, so requests to other users go to the server too.
- `contacts`: the peers it can message, and `current_contact`: the one `/message` goes to.

Commands (typed on stdin; a long command is `/name params` and Enter): `/message TEXT` (to the current contact:
baresip 1.0 has no "message this URI" command; `/contact_next` and `/contact_prev` move the current contact,
`Baresip.select_contact` does that for you), `/dial URI`, `/hangup`, `/reginfo`, `/quit`.

What comes out (stderr, into the log): a received MESSAGE as `\\r<From URI>: "<body>"\\n` (menu's handler,
text/plain only: any other Content-Type is answered 415 by baresip's core before it gets there), a failed
`/message` as a red `<code> <reason>` line, a registration as `<aor>: {0/UDP/v4} 200 OK (...) [1 binding]`.
With `sip_trace=True` (-s) every SIP message is printed too.

Pitfalls met: baresip 1.0's `/message` only knows the "current contact", so multi-peer tests cycle the list;
baresip answers a MESSAGE only if some module listens for it (menu does), else the core replies 501; its
Contact user is `<user>-0x<pointer>`, so the server's registration shows e.g. sip:carol-0x55d0...@127.0.0.1;
SIGKILL (`Baresip.kill`) leaves the binding at the server until it expires: what the "crashed device" tests need.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .netns_support import Netns, NsProcess, require_tool

HOST = "127.0.0.1"
MODULE_DIRS = (
    "/usr/lib/baresip/modules",
    "/usr/lib/x86_64-linux-gnu/baresip/modules",
    "/usr/local/lib/baresip/modules",
)


def module_dir() -> str:
    for d in MODULE_DIRS:
        if Path(d, "menu.so").exists():
            return d
    raise AssertionError(f"baresip modules (menu.so) not found in {MODULE_DIRS}; install Debian baresip-core")


@dataclass
class BaresipConfig:
    user: str
    server_port: int
    local_port: int
    domain: str = "example.test"
    transport: str = "udp"
    display_name: str | None = None
    regint: int = 600  # registration interval (Expires) in seconds; 0: do not register
    password: str | None = None
    contacts: list[str] = field(default_factory=list)  # peer URIs, the first is the current contact

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    def write(self, confdir: Path) -> None:
        if self.transport not in ("udp", "tcp"):
            raise ValueError(f"transport must be udp or tcp, not {self.transport!r}")
        confdir.mkdir(parents=True, exist_ok=True)
        (confdir / "config").write_text(
            "\n".join(
                [
                    "poll_method\t\tepoll",
                    f"sip_listen\t\t{HOST}:{self.local_port}",
                    f"net_interface\t\t{HOST}",
                    "dns_server\t\t127.0.0.1:53",
                    "call_local_timeout\t30",
                    "call_max_calls\t\t4",
                    f"module_path\t\t{module_dir()}",
                    "module\t\t\tstdio.so",
                    "module_tmp\t\taccount.so",
                    "module_app\t\tcontact.so",
                    "module_app\t\tmenu.so",
                    "",
                ]
            )
        )
        name = f'"{self.display_name}" ' if self.display_name else ""
        params = [
            f'outbound="sip:{HOST}:{self.server_port};transport={self.transport}"',
            f"regint={self.regint}",
            "answermode=manual",
            "mwi=no",
            "pubint=0",
        ]
        if self.password is not None:
            params.append(f"auth_pass={self.password}")
        (confdir / "accounts").write_text(f"{name}<{self.aor};transport={self.transport}>;{';'.join(params)}\n")
        (confdir / "contacts").write_text("".join(f"<{uri}>\n" for uri in self.contacts))
        if self.contacts:
            (confdir / "current_contact").write_text(self.contacts[0])


@dataclass
class Received:
    sender: str
    text: str


class Baresip:
    """baresip in the namespace, typed at through its stdio UI; everything it prints goes to `log_path`."""

    def __init__(
        self, netns: Netns, workdir: Path, config: BaresipConfig, *, sip_trace: bool = True, name: str | None = None
    ) -> None:
        self.netns = netns
        self.workdir = workdir
        self.confdir = workdir / "baresip"
        self.config = config
        self.sip_trace = sip_trace
        self.name = name or f"baresip {config.user}"
        self.log_path = workdir / "baresip.log"
        self.process: NsProcess | None = None
        self.current = config.contacts[0] if config.contacts else None

    def start(self, ready_timeout: float = 15.0) -> Baresip:
        exe = require_tool("baresip", "Debian package baresip-core")
        self.config.write(self.confdir)
        argv = [exe, "-f", self.confdir] + (["-s"] if self.sip_trace else [])
        self.process = self.netns.spawn(argv, self.log_path, name=self.name, cwd=self.workdir, stdin=True)
        try:
            # ready once its UDP socket is bound (read from the namespace's /proc/net/udp by the agent)
            deadline = time.monotonic() + ready_timeout
            while not self._bound():
                if not self.process.alive():
                    raise AssertionError(f"baresip exited while starting\n{self.describe()}")
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"baresip did not bind {HOST}:{self.config.local_port} in {ready_timeout} s\n{self.describe()}"
                    )
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def _bound(self) -> bool:
        port = f"{self.config.local_port:04X}"
        code = (
            "import pathlib\n"
            f"result = any(l.split()[1].endswith(':{port}') for l in pathlib.Path('/proc/net/udp').read_text().splitlines()[1:])"
        )
        return bool(self.netns.call("exec", code=code, rpc_timeout=10))

    # -- commands ----------------------------------------------------------------------------------------
    def command(self, line: str) -> None:
        """Type a long command (`/name params`) and Enter."""
        assert self.process is not None and self.process.alive(), f"baresip is not running\n{self.describe()}"
        if "\n" in line or "\r" in line:
            raise ValueError("one line per command")
        self.process.write(line + "\n")

    def select_contact(self, uri: str, timeout: float = 5.0) -> None:
        """Make `uri` (one of config.contacts) the current contact, with /contact_next or /contact_prev; waits
        until baresip wrote it to its current_contact file."""
        if uri not in self.config.contacts:
            raise ValueError(f"{uri} is not in the contact list {self.config.contacts}")
        target = self.config.contacts.index(uri)
        here = self.config.contacts.index(self.current) if self.current in self.config.contacts else 0
        step = "/contact_next" if target > here else "/contact_prev"
        for _ in range(abs(target - here)):
            self.command(step)
        deadline = time.monotonic() + timeout
        path = self.confdir / "current_contact"
        while uri not in (path.read_text() if path.exists() else ""):
            if time.monotonic() > deadline:
                raise AssertionError(f"baresip did not switch to contact {uri} in {timeout} s\n{self.describe()}")
            time.sleep(0.05)
        self.current = uri

    def send_message(self, to: str, text: str) -> None:
        """A pager-mode MESSAGE with `text` to `to` (selected as current contact first). baresip says nothing
        on success; a failure shows up in the log (`failures()`) and at the server."""
        if to != self.current:
            self.select_contact(to)
        self.command(f"/message {text}")

    def received(self) -> list[Received]:
        """Every MESSAGE baresip printed as received so far (menu: `\\r<From URI>: "<text>"\\n`)."""
        return [
            Received(m.group(1), m.group(2))
            for m in re.finditer(r'\r(sips?:[^\r\n" ]+): "(.*?)"\n', self.log(None), re.S)
        ]

    def wait_received(self, count: int = 1, timeout: float = 10.0, sender: str | None = None) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            got = [r for r in self.received() if sender is None or sender in r.sender]
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"baresip printed {len(got)} of {count} received messages in {timeout} s\n{self.describe()}"
                )
            time.sleep(0.05)

    def failures(self) -> list[str]:
        """The red `<code> <reason>` lines baresip prints when a /message got an error response."""
        return re.findall(r"\x1b\[31m ?(\d{3} [^\x1b]*)\x1b\[;m", self.log(None))

    def log(self, chars: int | None = 20000) -> str:
        try:  # bytes, not read_text(): universal newlines would turn the \r that marks a received message into \n
            text = self.log_path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""
        return text if chars is None else text[-chars:]

    def describe(self) -> str:
        return self.process.describe(8000) if self.process else "(not started)"

    # -- stopping ----------------------------------------------------------------------------------------
    def kill(self) -> int | None:
        """SIGKILL while registered: no un-REGISTER, the socket vanishes (a crashed device)."""
        assert self.process is not None
        return self.process.kill()

    def stop(self, grace: float = 5.0) -> None:
        """`/quit` (baresip un-REGISTERs on the way out), then SIGTERM/SIGKILL of its group if it lingers."""
        if self.process is None:
            return
        if self.process.alive():
            try:
                self.command("/quit")
                self.process.proc.wait(timeout=grace)
            except Exception:  # noqa: BLE001 - a stop that fails is followed by a kill below
                pass
        self.process.stop(grace=2)
