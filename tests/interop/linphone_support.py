"""linphone against the embedded notebook_im server, inside the test's loopback-only network namespace.

What is installed (scripts/install-system-deps, Debian 12 "bookworm"): `linphone-cli` 5.1.65 gives
/usr/bin/linphone-daemon, linphonec, linphonecsh, lp-sendmsg, lp-auto-answer; it pulls liblinphone10 5.1.65
(liblinphone.so.10), libbellesip1 5.1.64 (the SIP stack), libbctoolbox1, libmediastreamer12, libortp16. No -dev
package is needed: the ctypes helper declares the few signatures it uses.

Two ways to drive it, both started with `nsenter` into the namespace of `netns_support.Netns`:

- `LinphoneDaemon`: the stock `linphone-daemon --config RC --log FILE --pipe NAME`. In pipe mode the daemon
  listens on the unix socket /tmp/NAME (a filesystem socket: reachable from pytest in the root namespace) and
  answers each command with one write: `Status: Ok|Error`, optional `Reason: ...`, a blank line and the body.
  Events (`message-received` with From/To/Id/Content, `message-state-changed` with Id/State,
  `call-state-changed`) are queued and fetched with `pop-event`. The class wraps version, register-status,
  message, pop-event and quit; `command(line)` sends any other (`linphone-daemon --dump-commands-help` lists
  all 60: call, answer, terminate, register, unregister, config-get/-set, ...). There is no command for
  is-composing, mark-as-read or the content type of a received message, and no event for an IMDN beyond the
  message state Delivered/DeliveredToUser/Displayed.
- `Liblinphone`: tests/interop/liblinphone_agent.py, our own ~300-line client of liblinphone's C API through
  ctypes (create_core_3, core_iterate, chat rooms, compose, mark_as_read, IMDN states): for what the daemon
  cannot do.

The generated linphonerc (`LinphoneConfig.render`): one account (proxy_0) registering with the embedded
server over UDP or TCP on 127.0.0.1, with `reg_route` so requests go to the server rather than to the
domain of the identity (else liblinphone resolves example.test in DNS and the message is NotDelivered); the
other transports off (port 0); no STUN/ICE/uPnP (firewall_policy=0), no IPv6, no video, no LIME, no
presence publish; the chat database in the work dir; `im_notif_policy` (default `all`: is-composing and
delivered/displayed IMDNs sent and asked for); `cpim=True` sets cpim_in_basic_chat_rooms_enabled=1 (in
[proxy_default_values] and proxy_0): basic chat rooms then wrap messages in message/cpim.

Pitfalls met (and handled here):
- In a namespace with only `lo`, liblinphone's network monitor finds no default route and declares the network
  down: no listening point is created and REGISTER fails with "No listening point matching". `[sip]
  auto_net_state_mon=0` turns the monitor off (the ctypes agent also calls set_network_reachable(TRUE)).
- Port `-1` in linphonerc means "random", not "off": a transport is disabled with 0.
- With no sound card (ALSA finds none, as on CI) the log fills with ALSA errors; they are harmless: chat needs
  no audio.
- linphone-daemon without --pipe reads stdin through readline and prints events asynchronously between
  prompts; pipe mode is the only clean request/response channel.
- The daemon answers `message` with `Status: Ok` even when sending fails: delivery is only in the
  message-state-changed events (Delivered / NotDelivered).
- HOME is pointed at the work dir: liblinphone otherwise writes ~/.local/share/linphone and ~/.linphone_history.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .netns_support import HERE, AgentError, JsonLines, Netns, NsProcess, require_tool

LIBLINPHONE_AGENT = HERE / "liblinphone_agent.py"
HOST = "127.0.0.1"


@dataclass
class LinphoneConfig:
    """The settings of one linphone instance; `render()` gives its linphonerc."""

    user: str
    server_port: int
    domain: str = "example.test"
    transport: str = "udp"  # "udp" or "tcp": the only SIP transport it listens on and registers over
    local_port: int = -1  # -1: let liblinphone pick a free port
    display_name: str | None = None
    expires: int = 600
    cpim: bool = False  # cpim_in_basic_chat_rooms_enabled
    im_notif_policy: str = "all"  # or "none", or a comma list: send_is_comp,recv_imdn_delivered,...
    register: bool = True
    extra: dict[str, dict[str, str]] = field(default_factory=dict)  # more [section] key=value, overriding

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    @property
    def server(self) -> str:
        return f"sip:{HOST}:{self.server_port};transport={self.transport}"

    def render(self, workdir: Path) -> str:
        if self.transport not in ("udp", "tcp"):
            raise ValueError(f"transport must be udp or tcp, not {self.transport!r}")
        identity = f'"{self.display_name}" <{self.aor}>' if self.display_name else f"<{self.aor}>"
        sections: dict[str, dict[str, str]] = {
            "sip": {
                "sip_port": str(self.local_port if self.transport == "udp" else 0),
                "sip_tcp_port": str(self.local_port if self.transport == "tcp" else 0),
                "sip_tls_port": "0",
                "sip_dtls_port": "0",
                "default_proxy": "0",
                "use_ipv6": "0",
                "auto_net_state_mon": "0",
                "register_only_when_network_is_up": "0",
                "ping_with_options": "0",
                "im_notif_policy": self.im_notif_policy,
                "inc_timeout": "60",
            },
            "net": {
                "firewall_policy": "0",
                "stun_server": "",
                "nat_policy_ref": "",
                "mtu": "0",
                "dns_srv_enabled": "0",
            },
            "rtp": {"audio_rtp_port": "-1", "video_rtp_port": "-1", "text_rtp_port": "-1"},
            "sound": {"echocancellation": "0"},
            "video": {
                "capture": "0",
                "display": "0",
                "automatically_initiate": "0",
                "automatically_accept": "0",
                "show_local": "0",
            },
            "misc": {
                "enable_basic_to_client_group_chat_room_migration": "0",
                "conference_server_enabled": "0",
                "version_check_url_root": "",
                "log_collection_upload_server_url": "",
            },
            "lime": {"enabled": "0"},
            "storage": {"backend": "sqlite3", "uri": str(workdir / "linphone.db")},
            "proxy_default_values": {"cpim_in_basic_chat_rooms_enabled": "1" if self.cpim else "0"},
            "proxy_0": {
                "reg_proxy": f"<{self.server}>",
                "reg_route": f"<sip:{HOST}:{self.server_port};transport={self.transport};lr>",
                "reg_identity": identity,
                "reg_expires": str(self.expires),
                "reg_sendregister": "1" if self.register else "0",
                "publish": "0",
                "avpf": "0",
                "dial_escape_plus": "0",
                "cpim_in_basic_chat_rooms_enabled": "1" if self.cpim else "0",
            },
        }
        for section, values in self.extra.items():
            sections.setdefault(section, {}).update(values)
        lines = []
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines += [f"{k}={v}" for k, v in values.items()]
            lines.append("")
        return "\n".join(lines)

    def write(self, workdir: Path, name: str = "linphonerc") -> Path:
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / name
        path.write_text(self.render(workdir))
        return path


def linphone_env(workdir: Path) -> dict[str, str]:
    """The environment of a linphone process: HOME in the work dir (history, default db), no display."""
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "PULSE_SERVER")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / ".local/share"), XDG_CONFIG_HOME=str(home / ".config"))
    return env


# ---------------------------------------------------------------------------------------------------
# linphone-daemon
# ---------------------------------------------------------------------------------------------------
@dataclass
class DaemonResponse:
    """One answer of linphone-daemon: `Status: Ok|Error`, `Reason`, and the body's `Key: value` lines."""

    status: str
    reason: str
    body: str
    raw: str

    @property
    def ok(self) -> bool:
        return self.status == "Ok"

    @property
    def fields(self) -> dict[str, str]:
        return parse_fields(self.body)


def parse_fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key and " " not in key:
            out.setdefault(key, value)
    return out


def parse_response(raw: str) -> DaemonResponse:
    head, _, body = raw.partition("\n\n")
    fields = parse_fields(head)
    return DaemonResponse(fields.get("Status", "?"), fields.get("Reason", ""), body.strip("\n"), raw)


def parse_event(body: str) -> dict[str, str] | None:
    """The event in a pop-event body ('Size: N' then 'Event-type: ...', a blank line, 'Key: value' lines);
    a message's Content is unquoted."""
    m = re.search(r"^Event-type: (\S+)\n(.*)", body, re.S | re.M)
    if not m:
        return None
    event = {"type": m.group(1)}
    for line in m.group(2).splitlines():
        key, sep, value = line.partition(": ")
        if sep and key and " " not in key:
            if key == "Content" and len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            event[key] = value
    return event


class LinphoneDaemon:
    """linphone-daemon in the namespace, driven over its --pipe unix socket."""

    def __init__(
        self, netns: Netns, workdir: Path, config: LinphoneConfig, *, auto_answer: bool = False, name: str | None = None
    ) -> None:
        self.netns = netns
        self.workdir = workdir
        self.config = config
        self.name = name or f"linphone-daemon {config.user}"
        self.auto_answer = auto_answer
        self.log_path = workdir / "linphone-daemon.log"
        self.pipe_name = f"nim-linphone-{uuid.uuid4().hex[:12]}"
        self.pipe_path = Path("/tmp") / self.pipe_name  # ortp_server_pipe_create() puts it in /tmp
        self.events: list[dict[str, str]] = []
        self.process: NsProcess | None = None
        self.sock: socket.socket | None = None
        self.version = "?"  # the daemon's `version` answer, once started

    def start(self, ready_timeout: float = 20.0) -> LinphoneDaemon:
        exe = require_tool("linphone-daemon", "Debian package linphone-cli")
        rc = self.config.write(self.workdir)
        argv = [exe, "--config", rc, "--log", self.log_path, "--pipe", self.pipe_name, "--disable-stats-events"]
        if self.auto_answer:
            argv.append("--auto-answer")
        self.process = self.netns.spawn(
            argv, self.workdir / "linphone-daemon.out", name=self.name, env=linphone_env(self.workdir), cwd=self.workdir
        )
        self.process.cleanup.append(self.pipe_path)  # also when Netns.stop() ends it after a failed test
        deadline = time.monotonic() + ready_timeout
        try:
            while self.sock is None:
                if not self.process.alive():
                    raise AssertionError(f"linphone-daemon exited while starting\n{self.describe()}")
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"linphone-daemon did not open {self.pipe_path} in {ready_timeout} s\n{self.describe()}"
                    )
                if self.pipe_path.exists():
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    try:
                        s.connect(str(self.pipe_path))
                        self.sock = s
                    except OSError:
                        s.close()
                time.sleep(0.05)
            version = self.command("version")
            assert version.ok, f"linphone-daemon does not answer `version`: {version.raw!r}\n{self.describe()}"
            self.version = version.fields.get("Version", "?")
        except BaseException:
            self.stop()
            raise
        return self

    # -- commands ----------------------------------------------------------------------------------------
    def command(self, line: str, timeout: float = 10.0) -> DaemonResponse:
        """Send one command and read its answer (the daemon writes each answer with a single write(2); we
        read until 100 ms pass without more bytes after the first ones)."""
        assert self.sock is not None, "linphone-daemon is not connected"
        if "\n" in line:
            raise ValueError("a daemon command is one line")
        self.sock.sendall(line.encode())
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if chunks:
                    break
                raise AssertionError(
                    f"linphone-daemon did not answer {line!r} within {timeout} s\n{self.describe()}"
                ) from None
            if not data:
                if chunks:
                    break
                raise AssertionError(f"linphone-daemon closed its pipe on {line!r}\n{self.describe()}")
            chunks.append(data)
            self.sock.settimeout(max(0.001, min(0.1, deadline - time.monotonic())))
        return parse_response(b"".join(chunks).decode("utf-8", "replace"))

    def pop_events(self, limit: int = 200) -> list[dict[str, str]]:
        """Fetch every queued event (bounded by `limit`), keep them in `self.events`, return the new ones."""
        new: list[dict[str, str]] = []
        for _ in range(limit):
            resp = self.command("pop-event")
            event = parse_event(resp.body)
            if event is None:
                break
            new.append(event)
            if parse_fields(resp.body).get("Size") == "0":
                break
        self.events += new
        return new

    def wait_event(self, predicate: Callable[[dict[str, str]], bool], timeout: float, what: str) -> dict[str, str]:
        """The first event (already seen or new) for which `predicate` holds; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if predicate(event):
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"linphone-daemon: no {what} within {timeout} s; events: {self.events}\n{self.describe()}"
                )
            if not self.pop_events():
                time.sleep(0.05)

    def registration_state(self) -> str:
        resp = self.command("register-status ALL")
        return resp.fields.get("State", f"? ({resp.raw!r})")

    def wait_registered(self, timeout: float = 15.0) -> None:
        """Until the daemon itself says LinphoneRegistrationOk (the server's view: Netns.wait_registered)."""
        deadline = time.monotonic() + timeout
        state = "?"
        while time.monotonic() < deadline:
            state = self.registration_state()
            if state == "LinphoneRegistrationOk":
                return
            time.sleep(0.1)
        raise AssertionError(f"linphone-daemon registration is {state} after {timeout} s\n{self.describe()}")

    def send_message(self, to: str, text: str) -> str:
        """`message <to> <text>`; returns the message Id that the message-state-changed events carry."""
        resp = self.command(f"message {to} {text}")
        assert resp.ok, f"linphone-daemon refused `message`: {resp.raw!r}\n{self.describe()}"
        return resp.fields["Id"]

    def wait_message_state(self, message_id: str, states: tuple[str, ...], timeout: float = 15.0) -> str:
        """Wait for a message-state-changed of `message_id` into one of `states` (e.g. 'Delivered');
        returns the state name without the LinphoneChatMessageState prefix."""
        event = self.wait_event(
            lambda e: (
                e["type"] == "message-state-changed"
                and e.get("Id") == message_id
                and e.get("State", "").replace("LinphoneChatMessageState", "") in states
            ),
            timeout,
            f"state {states} for message {message_id}",
        )
        return event["State"].replace("LinphoneChatMessageState", "")

    def wait_received(self, count: int = 1, timeout: float = 15.0, sender: str | None = None) -> list[dict[str, str]]:
        """At least `count` message-received events (From/To/Id/Content), optionally from `sender` only."""
        deadline = time.monotonic() + timeout
        while True:
            got = [
                e
                for e in self.events
                if e["type"] == "message-received" and (sender is None or sender in e.get("From", ""))
            ]
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"linphone-daemon received {len(got)} of {count} messages in {timeout} s; "
                    f"events: {self.events}\n{self.describe()}"
                )
            if not self.pop_events():
                time.sleep(0.05)

    def log(self, chars: int = 20000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def describe(self) -> str:
        proc = self.process.describe(2000) if self.process else "(not started)"
        return f"{proc}\n--- liblinphone log {self.log_path} (tail) ---\n{self.log(6000)}"

    # -- stopping ----------------------------------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL: the device vanishes while registered (no un-REGISTER)."""
        if self.process is not None:
            self.process.kill()
        self._close_sock()

    def stop(self, grace: float = 5.0) -> None:
        """`quit` (the daemon unregisters on the way out), then SIGTERM/SIGKILL of its group if needed."""
        if self.sock is not None and self.process is not None and self.process.alive():
            try:
                self.sock.sendall(b"quit")
            except OSError:
                pass
            try:
                self.process.proc.wait(timeout=grace)
            except Exception:  # noqa: BLE001 - a stop that fails is followed by a kill below
                pass
        if self.process is not None:
            self.process.stop(grace=2)
        self._close_sock()

    def _close_sock(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        try:
            self.pipe_path.unlink()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------------
# liblinphone through ctypes
# ---------------------------------------------------------------------------------------------------
class Liblinphone:
    """tests/interop/liblinphone_agent.py in the namespace: liblinphone's C API where the daemon has no command
    (compose, mark-as-read, IMDN states, content types of what arrived)."""

    def __init__(self, netns: Netns, workdir: Path, config: LinphoneConfig, *, name: str | None = None) -> None:
        self.netns = netns
        self.workdir = workdir
        self.config = config
        self.name = name or f"liblinphone {config.user}"
        self.process: NsProcess | None = None
        self.rpc: JsonLines | None = None
        self.events: list[dict[str, Any]] = []
        self.version = "?"

    def start(self, ready_timeout: float = 20.0, max_seconds: float = 300) -> Liblinphone:
        rc = self.config.write(self.workdir)
        argv = [
            sys.executable,
            LIBLINPHONE_AGENT,
            "--config",
            rc,
            "--log-dir",
            self.workdir,
            "--max-seconds",
            str(max_seconds),
        ]
        self.process = self.netns.spawn(
            argv,
            self.workdir / "liblinphone-agent.log",
            name=self.name,
            env=linphone_env(self.workdir),
            cwd=self.workdir,
            stdin=True,
            stdout=True,
        )
        assert self.process.proc.stdin is not None and self.process.proc.stdout is not None
        self.rpc = JsonLines(self.process.proc.stdin, self.process.proc.stdout, self.name, self.describe)
        try:
            hello = self.rpc.response(0, ready_timeout, f"{self.name} to start")
            self.version = hello["version"]
        except BaseException:
            self.stop()
            raise
        return self

    def call(self, op: str, rpc_timeout: float = 10.0, **args: Any) -> Any:
        assert self.rpc is not None, f"{self.name} is not running"
        return self.rpc.call(op, rpc_timeout=rpc_timeout, **args)

    def poll(self) -> list[dict[str, Any]]:
        new = self.call("events", since=len(self.events))
        self.events += new
        errors = [e for e in new if e["type"] == "agent-error"]
        if errors:
            raise AgentError(f"{self.name}: a callback failed: {errors}")
        return new

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str, count: int = 1
    ) -> list[dict[str, Any]]:
        """At least `count` events (seen before or new) matching `predicate`, polling every 50 ms."""
        deadline = time.monotonic() + timeout
        while True:
            got = [e for e in self.events if predicate(e)]
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: {len(got)} of {count} {what} within {timeout} s; events: "
                    f"{self.events}\n{self.describe()}"
                )
            if not self.poll():
                time.sleep(0.05)

    def wait_registered(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        state = "?"
        while time.monotonic() < deadline:
            state = self.call("registration")
            if state == "Ok":
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: registration is {state} after {timeout} s\n{self.describe()}")

    def send(self, to: str, text: str, content_type: str | None = None) -> dict[str, Any]:
        return self.call("send", to=to, text=text, content_type=content_type)

    def wait_state(self, mid: str, state: str, timeout: float = 15.0) -> list[str]:
        """Wait until sent message `mid` reached `state` (Delivered, DeliveredToUser, Displayed, NotDelivered);
        returns every state it went through."""
        self.wait_for(
            lambda e: e["type"] == "message-state" and e["id"] == mid and e["state"] == state,
            timeout,
            f"{state} state for {mid}",
        )
        return self.call("states", id=mid)

    def received(self, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        return self.wait_for(lambda e: e["type"] == "message-received", timeout, "received messages", count)

    def compose(self, to: str) -> None:
        self.call("compose", to=to)

    def mark_as_read(self, peer: str) -> int:
        return self.call("mark_as_read", peer=peer)

    def log(self, chars: int = 20000) -> str:
        try:
            return (self.workdir / "liblinphone.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def describe(self) -> str:
        proc = self.process.describe(3000) if self.process else "(not started)"
        return f"{proc}\n--- liblinphone.log (tail) ---\n{self.log(6000)}"

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def stop(self, grace: float = 5.0) -> None:
        if self.rpc is not None and self.process is not None and self.process.alive():
            try:
                self.call("quit", rpc_timeout=grace)
                self.process.proc.wait(timeout=grace)
            except Exception:  # noqa: BLE001 - a stop that fails is followed by a kill below
                pass
        if self.process is not None:
            self.process.stop(grace=2)
