"""Test helpers shared by the suites (import them; fixtures live in conftest.py)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import notebook_im as nim


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll `predicate` (bounded in time) until it is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def udp_exchange(data: bytes, addr: tuple[str, int], timeout: float = 2.0) -> bytes | None:
    """Send one datagram from a fresh socket and return the first reply (None if nothing came)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        s.sendto(data, addr)
        try:
            return s.recvfrom(65535)[0]
        except TimeoutError:
            return None


def accept_all(endpoint: nim.Endpoint) -> list:
    """Accept every invitation to `endpoint`; returns the list its sessions are appended to."""
    sessions: list = []

    def on_incoming(incoming: nim.IncomingSession) -> None:
        sessions.append(incoming.session)
        incoming.accept()

    endpoint.sessions.on_incoming(on_incoming)
    return sessions


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (a server that is stopped and started again on it)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                    return port
                except OSError:
                    continue
    raise RuntimeError("no free port")
