"""Drive liblinphone (Debian liblinphone10, 5.1.x) through its C API with ctypes: what linphone-daemon cannot do.

linphone-daemon 5.1 has `message <uri> <text>` and reports `message-received` / `message-state-changed` events,
but no command to type (is-composing), to mark a chat room read (the "displayed" IMDN), to read the content type
of what arrived, or to see IMDN states beyond Delivered. This helper is a tiny linphone client of our own on the
same library: `linphone_factory_create_core_3` with a generated linphonerc, `linphone_core_start`, and a main
loop that calls `linphone_core_iterate` every 20 ms while it reads JSON-line commands from stdin.

It runs inside the test's network namespace (started by linphone_support.Liblinphone with nsenter) and uses
only the standard library: symbol names and signatures are those of /usr/include/linphone (liblinphone-dev
5.1.65), checked against `nm -D liblinphone.so.10`; the few enums used are copied below.

Protocol: like netns_agent.py (request {"id", "op", "args"}, response {"id", "ok", "result"|"error"}); the
first line it writes (id 0) says it started and which liblinphone it runs. Operations never block: the core
must keep iterating, so the pytest side polls (`events`) with its own bounded deadline.

Callbacks run inside linphone_core_iterate on the main thread; each records plain data (no pointer escapes a
callback except the chat rooms and messages we take a reference on).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import select
import sys
import time
import traceback
from ctypes import CFUNCTYPE, c_char_p, c_int, c_size_t, c_uint, c_void_p
from typing import Any

# enums from linphone/enums/chat-message-enums.h and linphone/types.h (5.1)
MESSAGE_STATES = {
    0: "Idle",
    1: "InProgress",
    2: "Delivered",
    3: "NotDelivered",
    4: "FileTransferError",
    5: "FileTransferDone",
    6: "DeliveredToUser",
    7: "Displayed",
    8: "FileTransferInProgress",
}
REGISTRATION_STATES = {0: "None", 1: "Progress", 2: "Ok", 3: "Cleared", 4: "Failed"}
LOG_LEVEL_MESSAGE = 1 << 2

MessageReceivedCb = CFUNCTYPE(None, c_void_p, c_void_p, c_void_p)  # (core, chat_room, message)
IsComposingReceivedCb = CFUNCTYPE(None, c_void_p, c_void_p)  # (core, chat_room)
RegistrationStateChangedCb = CFUNCTYPE(None, c_void_p, c_void_p, c_int, c_char_p)  # (core, proxy_cfg, state, msg)


def load() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """liblinphone and bctoolbox (for bctbx_free of the strings liblinphone hands over), with signatures."""
    lp = ctypes.CDLL(ctypes.util.find_library("linphone") or "liblinphone.so.10")
    bctbx = ctypes.CDLL(ctypes.util.find_library("bctoolbox") or "libbctoolbox.so.1")
    sigs: dict[str, tuple[Any, list[Any]]] = {
        "linphone_factory_get": (c_void_p, []),
        "linphone_factory_create_core_3": (c_void_p, [c_void_p, c_char_p, c_char_p, c_void_p]),
        "linphone_factory_create_core_cbs": (c_void_p, [c_void_p]),
        "linphone_core_cbs_set_message_received": (None, [c_void_p, MessageReceivedCb]),
        "linphone_core_cbs_set_is_composing_received": (None, [c_void_p, IsComposingReceivedCb]),
        "linphone_core_cbs_set_registration_state_changed": (None, [c_void_p, RegistrationStateChangedCb]),
        "linphone_core_add_callbacks": (None, [c_void_p, c_void_p]),
        "linphone_core_start": (c_int, [c_void_p]),
        "linphone_core_stop": (None, [c_void_p]),
        "linphone_core_unref": (None, [c_void_p]),
        "linphone_core_iterate": (None, [c_void_p]),
        "linphone_core_get_version": (c_char_p, []),
        "linphone_core_set_network_reachable": (None, [c_void_p, c_int]),
        "linphone_core_get_default_proxy_config": (c_void_p, [c_void_p]),
        "linphone_proxy_config_get_state": (c_int, [c_void_p]),
        "linphone_core_get_chat_room_from_uri": (c_void_p, [c_void_p, c_char_p]),
        "linphone_chat_room_create_message_from_utf8": (c_void_p, [c_void_p, c_char_p]),
        "linphone_chat_room_compose": (None, [c_void_p]),
        "linphone_chat_room_mark_as_read": (None, [c_void_p]),
        "linphone_chat_room_is_remote_composing": (c_int, [c_void_p]),
        "linphone_chat_room_get_peer_address": (c_void_p, [c_void_p]),
        "linphone_chat_room_get_unread_messages_count": (c_int, [c_void_p]),
        "linphone_chat_room_get_capabilities": (c_uint, [c_void_p]),
        "linphone_chat_room_ref": (c_void_p, [c_void_p]),
        "linphone_chat_message_send": (None, [c_void_p]),
        "linphone_chat_message_set_content_type": (None, [c_void_p, c_char_p]),
        "linphone_chat_message_get_state": (c_int, [c_void_p]),
        "linphone_chat_message_get_message_id": (c_char_p, [c_void_p]),
        "linphone_chat_message_get_utf8_text": (c_char_p, [c_void_p]),
        "linphone_chat_message_get_content_type": (c_char_p, [c_void_p]),
        "linphone_chat_message_get_from_address": (c_void_p, [c_void_p]),
        "linphone_chat_message_get_to_address": (c_void_p, [c_void_p]),
        "linphone_chat_message_get_custom_header": (c_char_p, [c_void_p, c_char_p]),
        "linphone_chat_message_unref": (None, [c_void_p]),
        "linphone_address_as_string": (c_void_p, [c_void_p]),
        "linphone_address_as_string_uri_only": (c_void_p, [c_void_p]),
        "linphone_logging_service_get": (c_void_p, []),
        "linphone_logging_service_set_log_file": (None, [c_void_p, c_char_p, c_char_p, c_size_t]),
        "linphone_logging_service_set_log_level": (None, [c_void_p, c_int]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lp, name)
        fn.restype = restype
        fn.argtypes = argtypes
    bctbx.bctbx_free.restype = None
    bctbx.bctbx_free.argtypes = [c_void_p]
    return lp, bctbx


def text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


class Client:
    """One LinphoneCore and what happened to it, as plain data."""

    def __init__(self, config: str, log_dir: str | None) -> None:
        self.lp, self.bctbx = load()
        lp = self.lp
        if log_dir:
            service = lp.linphone_logging_service_get()
            lp.linphone_logging_service_set_log_file(service, log_dir.encode(), b"liblinphone.log", 0)
            lp.linphone_logging_service_set_log_level(service, LOG_LEVEL_MESSAGE)
        self.events: list[dict[str, Any]] = []
        self.rooms: dict[str, int] = {}  # peer URI -> chat room pointer (referenced)
        self.sent: dict[str, dict[str, Any]] = {}  # our id -> {"ptr", "states", "to", ...}
        self.running = True
        factory = lp.linphone_factory_get()
        self.core = lp.linphone_factory_create_core_3(factory, config.encode(), None, None)
        if not self.core:
            raise RuntimeError(f"linphone_factory_create_core_3 failed for {config}")
        # keep the ctypes callback objects alive as long as the core
        self._cbs_refs = (
            MessageReceivedCb(self._on_message),
            IsComposingReceivedCb(self._on_composing),
            RegistrationStateChangedCb(self._on_registration),
        )
        cbs = lp.linphone_factory_create_core_cbs(factory)
        lp.linphone_core_cbs_set_message_received(cbs, self._cbs_refs[0])
        lp.linphone_core_cbs_set_is_composing_received(cbs, self._cbs_refs[1])
        lp.linphone_core_cbs_set_registration_state_changed(cbs, self._cbs_refs[2])
        lp.linphone_core_add_callbacks(self.core, cbs)
        if lp.linphone_core_start(self.core) != 0:
            raise RuntimeError("linphone_core_start failed")
        # auto_net_state_mon=0 in the generated linphonerc: in a namespace with only loopback, liblinphone's own
        # monitor would find no default route and keep the network "down" (no listening points, no REGISTER)
        lp.linphone_core_set_network_reachable(self.core, 1)

    # -- helpers -----------------------------------------------------------------------------------------
    def address(self, ptr: int | None, uri_only: bool = True) -> str | None:
        if not ptr:
            return None
        fn = self.lp.linphone_address_as_string_uri_only if uri_only else self.lp.linphone_address_as_string
        raw = fn(ptr)
        if not raw:
            return None
        try:
            return text(ctypes.string_at(raw))
        finally:
            self.bctbx.bctbx_free(raw)

    def room(self, peer: str) -> int:
        if peer not in self.rooms:
            ptr = self.lp.linphone_core_get_chat_room_from_uri(self.core, peer.encode())
            if not ptr:
                raise ValueError(f"liblinphone made no chat room for {peer!r}")
            self.rooms[peer] = self.lp.linphone_chat_room_ref(ptr)
        return self.rooms[peer]

    def record(self, kind: str, **data: Any) -> None:
        self.events.append({"type": kind, "time": time.time(), **data})

    # -- callbacks (inside linphone_core_iterate) -------------------------------------------------------------
    def _on_message(self, core: int, room: int, msg: int) -> None:
        try:
            lp = self.lp
            peer = self.address(lp.linphone_chat_room_get_peer_address(room))
            if peer and peer not in self.rooms:
                self.rooms[peer] = lp.linphone_chat_room_ref(room)
            headers = {}
            for name in ("Content-Encoding", "Imdn-Message-ID", "Disposition-Notification", "DateTime"):
                value = lp.linphone_chat_message_get_custom_header(msg, name.encode())
                if value is not None:
                    headers[name] = text(value)
            self.record(
                "message-received",
                peer=peer,
                sender=self.address(lp.linphone_chat_message_get_from_address(msg)),
                to=self.address(lp.linphone_chat_message_get_to_address(msg)),
                text=text(lp.linphone_chat_message_get_utf8_text(msg)),
                content_type=text(lp.linphone_chat_message_get_content_type(msg)),
                message_id=text(lp.linphone_chat_message_get_message_id(msg)),
                headers=headers,
                unread=lp.linphone_chat_room_get_unread_messages_count(room),
            )
        except Exception:  # noqa: BLE001 - a Python exception must not unwind through C
            self.record("agent-error", where="message_received", traceback=traceback.format_exc())

    def _on_composing(self, core: int, room: int) -> None:
        try:
            self.record(
                "is-composing",
                peer=self.address(self.lp.linphone_chat_room_get_peer_address(room)),
                composing=bool(self.lp.linphone_chat_room_is_remote_composing(room)),
            )
        except Exception:  # noqa: BLE001 - a Python exception must not unwind through C
            self.record("agent-error", where="is_composing_received", traceback=traceback.format_exc())

    def _on_registration(self, core: int, cfg: int, state: int, message: bytes | None) -> None:
        self.record("registration", state=REGISTRATION_STATES.get(state, str(state)), message=text(message))

    def poll_states(self) -> None:
        """Record every state change of the messages we sent (Idle, InProgress, Delivered, DeliveredToUser,
        Displayed, NotDelivered): polling keeps ctypes callbacks out of the message objects."""
        for mid, info in self.sent.items():
            state = MESSAGE_STATES.get(self.lp.linphone_chat_message_get_state(info["ptr"]), "?")
            if not info["states"] or info["states"][-1] != state:
                info["states"].append(state)
                self.record("message-state", id=mid, message_id=info["message_id"], state=state)

    # -- operations ----------------------------------------------------------------------------------------
    def op_hello(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": text(self.lp.linphone_core_get_version())}

    def op_registration(self) -> str:
        cfg = self.lp.linphone_core_get_default_proxy_config(self.core)
        return REGISTRATION_STATES.get(self.lp.linphone_proxy_config_get_state(cfg), "?") if cfg else "NoAccount"

    def op_send(self, to: str, text: str, content_type: str | None = None) -> dict[str, Any]:
        """A chat message to `to` in its basic (pager-mode) chat room."""
        room = self.room(to)
        msg = self.lp.linphone_chat_room_create_message_from_utf8(room, text.encode())
        if content_type:
            self.lp.linphone_chat_message_set_content_type(msg, content_type.encode())
        self.lp.linphone_chat_message_send(msg)
        mid = f"m{len(self.sent) + 1}"
        message_id = self.lp.linphone_chat_message_get_message_id(msg)
        self.sent[mid] = {
            "ptr": msg,
            "states": [],
            "to": to,
            "message_id": None if message_id is None else message_id.decode(),
        }
        self.poll_states()
        return {"id": mid, "message_id": self.sent[mid]["message_id"]}

    def op_compose(self, to: str) -> None:
        """Say "I am typing" to `to` (RFC 3994 is-composing, active); liblinphone sends idle by itself later."""
        self.lp.linphone_chat_room_compose(self.room(to))

    def op_mark_as_read(self, peer: str) -> int:
        """Mark the chat room with `peer` read: liblinphone sends the "displayed" IMDN for what it received."""
        room = self.room(peer)
        self.lp.linphone_chat_room_mark_as_read(room)
        return self.lp.linphone_chat_room_get_unread_messages_count(room)

    def op_remote_composing(self, peer: str) -> bool:
        return bool(self.lp.linphone_chat_room_is_remote_composing(self.room(peer)))

    def op_events(self, since: int = 0) -> list[dict[str, Any]]:
        return self.events[since:]

    def op_states(self, id: str) -> list[str]:
        return list(self.sent[id]["states"])

    def op_quit(self) -> None:
        self.running = False

    def close(self) -> None:
        for info in self.sent.values():
            self.lp.linphone_chat_message_unref(info["ptr"])
        self.sent.clear()
        self.lp.linphone_core_stop(self.core)
        self.lp.linphone_core_unref(self.core)

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        rid = request.get("id")
        op = getattr(self, "op_" + str(request.get("op")), None)
        if op is None:
            return {"id": rid, "ok": False, "error": f"unknown op {request.get('op')!r}", "traceback": ""}
        try:
            return {"id": rid, "ok": True, "result": op(**request.get("args", {}))}
        except Exception as e:  # noqa: BLE001 - every failure goes back to the test, with its traceback
            return {"id": rid, "ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the linphonerc to start the core with")
    parser.add_argument("--log-dir", help="where liblinphone writes liblinphone.log")
    parser.add_argument("--max-seconds", type=float, default=600, help="exit after this long, whatever happens")
    ns = parser.parse_args()
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # anything the library prints goes to the log, not into the protocol
    sys.stdout = sys.stderr
    client = Client(ns.config, ns.log_dir)
    proto.write(json.dumps({"id": 0, "ok": True, "result": client.op_hello()}) + "\n")
    deadline = time.monotonic() + ns.max_seconds
    buf = b""
    stdin = sys.stdin.buffer.fileno()
    eof = False
    while client.running and not eof and time.monotonic() < deadline:
        client.lp.linphone_core_iterate(client.core)
        client.poll_states()
        ready, _, _ = select.select([stdin], [], [], 0.02)
        if ready:
            chunk = os.read(stdin, 65536)
            eof = not chunk
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    proto.write(json.dumps(client.handle(json.loads(line))) + "\n")
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
