"""The notebook_im side of the interop tests with third-party clients, run INSIDE a private network namespace.

`netns_support.Netns` starts this file as `unshare --net -- python netns_agent.py`: the process gets a network
namespace of its own that holds only a loopback interface, which it brings up itself (one ioctl, no `ip`).
Here it hosts the embedded `nim.Server`, `nim.Platform` endpoints and whatever else the test asks for; the
third-party programs (linphone-daemon, baresip, the ctypes liblinphone agent) are started by pytest with
`nsenter --net=/proc/<this pid>/ns/net` and so share this loopback and nothing else.

Why a separate process and not the pytest process itself: notebook_im runs ONE asyncio loop thread per process
(notebook_im.runtime), created on first use and shared by every test of the session; its sockets are opened in
whatever namespace that thread was created in. The pytest process therefore cannot move "its" notebook_im into a
namespace for one module and back (os.unshare needs Python 3.12, and unshare(2) via ctypes in a threaded process
would move only the calling thread). A fresh interpreter started by `unshare` is in the namespace from its first
instruction, its loop thread included, and dies with its namespace when the test module ends.

Protocol (JSON lines; the real stdout is kept for it, `print` goes to stderr, which is the agent's log):
  request   {"id": 7, "op": "send_message", "args": {...}}
  response  {"id": 7, "ok": true, "result": ...}  or  {"id": 7, "ok": false, "error": "...", "traceback": "..."}
Every operation that waits takes a `timeout` and returns when it expires, saying what it got: the pytest side
asserts. Requests are handled one at a time, in order.

Operations (see `Agent.op_*`): ping, server_start, server_stop, registrations, endpoint, disable, send_message,
events, messages, composing, mark_read, invite, wire, exec (run a snippet of Python here, with `result` as the answer: the escape
hatch for what later tests need before it deserves an operation of its own), shutdown.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import os
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

os.environ.setdefault("NOTEBOOK_IM_LOOP", "asyncio")

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def loopback_up() -> None:
    """Bring `lo` up in this (new) namespace: a fresh network namespace has it down, so even 127.0.0.1 fails."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def netns_inode(pid: int | str = "self") -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def jsonable(value: Any) -> Any:
    """What json.dumps can write: dataclasses/events become dicts of their simple fields, the rest repr()."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return repr(value)


class Agent:
    """State that lives in the namespace: one server, one platform, endpoints by name, their received events."""

    def __init__(self) -> None:
        import notebook_im as nim

        self.nim = nim
        self.server: Any = None
        self.platform = nim.Platform("netns")
        self.endpoints: dict[str, Any] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}  # endpoint name -> its events, as dicts, in order
        self.streams: dict[str, Any] = {}
        # what an endpoint's event list records: messages, composing, receipts, failures
        self.event_types = (
            nim.MessageReceived,
            nim.ComposingChanged,
            nim.MessageDeliveryNotified,
            nim.MessageDisplayed,
            nim.MessageFailed,
            nim.IncomingSession,
            nim.SessionTerminated,
            nim.SessionModeChanged,
        )
        self.scope: dict[str, Any] = {"nim": nim, "agent": self}
        self.running = True

    # -- helpers -----------------------------------------------------------------------------------------
    def endpoint_named(self, name: str) -> Any:
        try:
            return self.endpoints[name]
        except KeyError:
            raise KeyError(f"no endpoint named {name!r}; have {sorted(self.endpoints)}") from None

    @staticmethod
    def event_dict(event: Any) -> dict[str, Any]:
        """An event as plain data: its type, its simple fields; a participant becomes `sender` (its URI) and
        `display_name`, a session whether there was one."""
        out: dict[str, Any] = {"type": type(event).__name__}
        for f in dataclasses.fields(event):
            value = getattr(event, f.name)
            if f.name == "participant":
                out["sender"] = value.uri
                out["display_name"] = value.display_name
            elif f.name == "session":
                out["session"] = value is not None
            elif f.name == "timestamp" or isinstance(value, datetime.datetime):
                out[f.name] = None if value is None else value.isoformat()
            elif value is None or isinstance(value, (bool, int, float, str)):
                out[f.name] = value
            else:
                out[f.name] = repr(value)
        return out

    def pump(self, name: str) -> None:
        """Move the events that arrived for endpoint `name` into its list (non-blocking)."""
        for event in self.streams[name].drain():
            self.events[name].append(self.event_dict(event))

    # -- operations ----------------------------------------------------------------------------------------
    def op_ping(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "netns": netns_inode(),
            "interfaces": [n for _, n in socket.if_nameindex()],
            "python": sys.version.split()[0],
        }

    def op_server_start(
        self, host: str = "127.0.0.1", port: int = 0, users: dict[str, str] | None = None
    ) -> dict[str, Any]:
        if self.server is not None:
            raise RuntimeError("the server is already running")
        self.server = self.nim.Server(host=host, port=port, users=users).start().result(10)
        self.scope["server"] = self.server
        return {"uri": self.server.uri, "host": self.server.host, "port": self.server.port}

    def op_server_stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def op_registrations(self) -> dict[str, list[str]]:
        return self.server.registrations

    def op_endpoint(
        self,
        name: str,
        uri: str,
        transport: str = "udp",
        display_name: str | None = None,
        registered: bool = True,
        password: str | None = None,
        expires: int = 3600,
        timeout: float = 10,
    ) -> dict[str, Any]:
        """Create and enable an endpoint (registered with the agent's server unless `registered` is False)."""
        if name in self.endpoints:
            raise ValueError(f"endpoint {name!r} exists")
        server = self.server if registered else None
        ep = self.platform.endpoint(
            uri, server=server, transport=transport, display_name=display_name, password=password, expires=expires
        ).result(timeout)
        self.endpoints[name] = ep
        self.events[name] = []
        self.streams[name] = ep.events(*self.event_types)
        self.scope[name] = ep
        return {"uri": ep.uri, "contact": ep.contact, "local_address": list(ep.local_address)}

    def op_disable(self, name: str, timeout: float = 10) -> None:
        self.endpoint_named(name).disable().result(timeout)

    def op_send_message(
        self, name: str, to: str, text: str, content_type: str = "text/plain", timeout: float = 15
    ) -> dict[str, Any]:
        """Pager-mode MESSAGE; the outcome as data (a failure is an answer, not an exception)."""
        ep = self.endpoint_named(name)
        started = time.monotonic()
        try:
            delivered = ep.send_message(to, text, content_type=content_type).result(timeout)
        except self.nim.RequestFailed as e:
            return {
                "ok": False,
                "status": e.status,
                "reason": e.reason,
                "error": str(e),
                "elapsed": time.monotonic() - started,
            }
        except Exception as e:  # noqa: BLE001 - TransactionTimeout, TransportError, TimeoutError: an answer, as data
            return {
                "ok": False,
                "status": None,
                "reason": None,
                "error": f"{type(e).__name__}: {e}",
                "elapsed": time.monotonic() - started,
            }
        return {
            "ok": True,
            "status": delivered.status,
            "reason": delivered.reason,
            "stored": delivered.stored,
            "mode": delivered.mode,
            "message_id": delivered.message_id,
            "elapsed": time.monotonic() - started,
        }

    def op_events(
        self, name: str, type: str | None = None, count: int = 0, timeout: float = 0, sender: str | None = None
    ) -> list[dict[str, Any]]:
        """Events of endpoint `name` (all, or of one `type` such as "MessageDisplayed", optionally only from
        URIs containing `sender`), waiting up to `timeout` s until there are at least `count` of them."""
        self.endpoint_named(name)
        deadline = time.monotonic() + timeout
        while True:
            self.pump(name)
            got = [
                e
                for e in self.events[name]
                if (type is None or e["type"] == type) and (sender is None or sender in e.get("sender", ""))
            ]
            if len(got) >= count or time.monotonic() >= deadline:
                return got
            time.sleep(0.02)

    def op_messages(
        self, name: str, count: int = 1, timeout: float = 10, sender: str | None = None
    ) -> list[dict[str, Any]]:
        """The messages endpoint `name` received (MessageReceived), waiting up to `timeout` s for `count`."""
        return self.op_events(name, "MessageReceived", count, timeout, sender)

    def op_composing(self, name: str, count: int = 1, timeout: float = 10) -> list[dict[str, Any]]:
        """ComposingChanged events of endpoint `name`, waiting up to `timeout` s for `count` of them."""
        return self.op_events(name, "ComposingChanged", count, timeout)

    def op_mark_read(self, name: str, timeout: float = 10) -> int:
        """endpoint.mark_read(): pager messages seen; display notifications go to senders that asked."""
        return self.endpoint_named(name).mark_read().result(timeout)

    def op_invite(
        self, name: str, to: str, timeout: float = 15, terminate: bool = True, mode: str = "auto"
    ) -> dict[str, Any]:
        """A session-mode INVITE (m=message) from endpoint `name` to `to` (`sessions.create(to, mode=mode)`);
        what happened, as data. With terminate=False the session is kept in scope["sessions"] (exec uses it)."""
        ep = self.endpoint_named(name)
        started = time.monotonic()
        try:
            session = ep.sessions.create(to, mode=mode).result(timeout)
        except self.nim.RequestFailed as e:
            return {
                "ok": False,
                "status": e.status,
                "reason": e.reason,
                "error": str(e),
                "elapsed": time.monotonic() - started,
            }
        except Exception as e:  # noqa: BLE001 - any failure is an answer, as data
            return {
                "ok": False,
                "status": None,
                "reason": None,
                "error": f"{type(e).__name__}: {e}",
                "elapsed": time.monotonic() - started,
            }
        result = {"ok": True, "state": str(session.state), "mode": session.mode, "elapsed": time.monotonic() - started}
        if terminate:
            session.terminate().result(timeout)
        else:
            self.scope.setdefault("sessions", []).append(session)
        return result

    def op_wire(
        self, owner: str | None = None, method: str | None = None, contains: str | None = None, limit: int = 500
    ) -> list[dict[str, Any]]:
        """SIP messages as the server and the endpoints recorded them (raw text included), oldest first:
        what the third-party programs actually put on the wire, seen from our side."""
        import pandas as pd

        def text(v: Any) -> str | None:
            return None if v is None or v is pd.NA or (isinstance(v, float) and v != v) else str(v)

        rows: list[dict[str, Any]] = []
        traces = [self.platform.trace] + ([self.server.trace] if self.server is not None else [])
        for trace in traces:
            df = trace.sip()
            for rec in df.to_dict("records"):
                status = text(rec["status"])
                rows.append(
                    {
                        "time": rec["timestamp"].timestamp(),
                        "owner": text(rec["owner"]),
                        "direction": text(rec["direction"]),
                        "transport": text(rec["transport"]),
                        "src": text(rec["src"]),
                        "dst": text(rec["dst"]),
                        "method": text(rec["method"]),
                        "status": None if status is None else int(status),
                        "call_id": text(rec["call_id"]),
                        "raw": text(rec["raw"]) or "",
                    }
                )
        rows.sort(key=lambda r: r["time"])
        if owner is not None:
            rows = [r for r in rows if owner in (r["owner"] or "")]
        if method is not None:
            rows = [r for r in rows if r["method"] == method]
        if contains is not None:
            rows = [r for r in rows if contains in r["raw"]]
        return rows[-limit:]

    def op_exec(self, code: str) -> Any:
        """Run `code` with this agent's objects in scope (`nim`, `agent`, `server`, endpoints by name);
        the answer is whatever it assigns to `result`."""
        self.scope.pop("result", None)
        exec(compile(code, "<netns exec>", "exec"), self.scope)
        return self.scope.get("result")

    def op_shutdown(self) -> None:
        self.running = False
        self.platform.shutdown()
        if self.server is not None:
            self.server.stop()

    # -- loop ----------------------------------------------------------------------------------------------
    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        rid = request.get("id")
        try:
            op: Callable[..., Any] = getattr(self, "op_" + str(request["op"]))
        except AttributeError:
            return {"id": rid, "ok": False, "error": f"unknown op {request.get('op')!r}", "traceback": ""}
        try:
            return {"id": rid, "ok": True, "result": jsonable(op(**request.get("args", {})))}
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the test
            return {"id": rid, "ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


def main() -> int:
    # The protocol owns the real stdout; anything printed (by us or a library) goes to stderr, the agent's log.
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    loopback_up()
    agent = Agent()
    proto.write(json.dumps({"id": 0, "ok": True, "result": agent.op_ping()}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        response = agent.handle(json.loads(line))
        proto.write(json.dumps(response) + "\n")
        if not agent.running:
            break
    else:  # stdin closed: pytest went away
        agent.op_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
