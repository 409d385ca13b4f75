"""`Server(workers=N)`: N processes on one UDP port (server/workers.py), over real loopback sockets. The kernel
spreads senders over the processes by source address, so each test sends from many sockets, and checks what a
peer sees (one server: every answer from the server's address) and what the processes share (the registrar,
dead devices, the offline store, the counters)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import notebook_im as nim
from notebook_im.runtime import runtime
from notebook_im.sip.message import Request, make_response
from notebook_im.sip.parser import parse_message
from tests.helpers import wait_for
from tests.security.raw import RawPeer
from tests.server.test_stateless import message, next_request

pytestmark = pytest.mark.timeout(120)

FAST = nim.Timers(t1=0.05, t2=0.4, t4=0.5)  # device_timeout 8*T1 = 0.4 s
SENDERS = 24  # sources: the chance that the kernel puts all of them on one of two sockets is 2**-23


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


class Device:
    """A registered raw device that answers every request with `status` (None: stays silent) on a thread,
    and remembers the branches it saw and the address each came from."""

    def __init__(self, server: nim.Server, user: str = "bob", status: int | None = 200) -> None:
        self.peer = RawPeer()
        self.server = (server.host, server.port)
        assert self.peer.register(self.server, user).startswith(b"SIP/2.0 200")
        self.status = status
        self.seen: list[tuple[str, tuple[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        sock = self.peer.sock
        sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                data, addr = sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            msg = parse_message(data)
            if not isinstance(msg, Request):
                continue
            self.seen.append((msg.top_via.branch or "", addr))
            if self.status is not None:
                sock.sendto(bytes(make_response(msg, self.status, to_tag="dev")), addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.peer.close()


@pytest.fixture
def server():
    with nim.Server(timers=FAST, workers=2) as s:
        yield s


def test_messages_from_many_senders_are_relayed_by_both_processes_and_answered_from_one_address(server):
    addr = (server.host, server.port)
    assert len(server.worker_pids) == 1 and _alive(server.worker_pids[0])
    bob = Device(server)
    senders = [RawPeer() for _ in range(SENDERS)]
    try:
        for p in senders:
            p.send(message(p, "bob")[0], addr)
        for p in senders:
            p.sock.settimeout(3)
            data, source = p.sock.recvfrom(65535)
            assert data.startswith(b"SIP/2.0 200"), data[:40]
            assert source == addr, "every answer comes from the server's one address"
        made_by = {branch[len("z9hG4bKsl")] for branch, _ in bob.seen}
        assert made_by == {"0", "1"}, f"both processes relayed (branches made by {made_by})"
        assert {a for _, a in bob.seen} == {addr}, "the device hears one server address"
        wait_for(lambda: server.stats["stateless_relayed"] == SENDERS, 3, "the workers' counters added up")
        assert server.stats["stateless_responses"] == SENDERS
    finally:
        for p in senders:
            p.close()
        bob.close()


def test_what_a_worker_cannot_relay_goes_to_the_main_process(server):
    """REGISTERs, INVITEs, malformed requests and messages for an offline user reach the worker from some of
    the senders; all are answered as by a server of one process."""
    addr = (server.host, server.port)
    peers = [RawPeer() for _ in range(SENDERS)]
    try:
        for i, p in enumerate(peers):
            assert p.register(addr, f"user{i}").startswith(b"SIP/2.0 200")
        assert len(server.registrations) == SENDERS, "every REGISTER reached the registrar"
        wait_for(lambda: server.stats.get("workers_handed_over", 0) > 0, 3, "some went through the worker")
        for p in peers:  # a malformed CSeq: 400 from the main process
            data, _ = p.request("OPTIONS", "sip:x@example.test", from_="sip:p@example.test", to="sip:x@example.test")
            assert p.exchange(data.replace(b"CSeq: 1 ", b"CSeq: x "), addr).startswith(b"SIP/2.0 400")
        for i, p in enumerate(peers):  # user<i> unregisters; the next sender's MESSAGE to it is kept
            assert p.register(addr, f"user{i}", expires=0).startswith(b"SIP/2.0 200")
        for i, p in enumerate(peers):
            data, _ = message(p, f"user{i}", "later")
            assert p.exchange(data, addr).startswith(b"SIP/2.0 202")
        assert sum(server.offline.values()) == SENDERS
    finally:
        for p in peers:
            p.close()


def test_a_device_answering_through_either_process_stays_alive_a_silent_one_is_found_dead(server):
    addr = (server.host, server.port)
    bob = Device(server)
    senders = [RawPeer() for _ in range(SENDERS)]
    try:
        for p in senders:
            p.send(message(p, "bob")[0], addr)
        for p in senders:
            assert p.final(3).startswith(b"SIP/2.0 200")
        time.sleep(1.0)  # past device_timeout (0.4 s): the deadlines of both processes have been swept
        assert not _dead(server), "bob answered everything: no process marked him dead"
        bob.status = None  # now he stops answering
        pending = []
        for p in senders:
            data, _ = message(p, "bob", "still there?")
            p.send(data, addr)
            pending.append((p, data))
        wait_for(lambda: _dead(server), 5, "bob found dead by whichever process timed him")
        for p, data in pending:  # each is kept (202) by itself, whichever process relayed and timed it
            got = p.final(3)
            assert got is not None and got.startswith(b"SIP/2.0 202"), got
            assert p.exchange(data, addr).startswith(b"SIP/2.0 202"), "a retransmission gets the same answer"
        assert server.offline == {"sip:bob@example.test": SENDERS}
    finally:
        for p in senders:
            p.close()
        bob.close()


def _dead(server: nim.Server) -> bool:
    return runtime().run_sync(lambda: all(b.dead for b in server.registrar.lookup("sip:bob@example.test", 0)))


def test_stop_ends_the_workers_and_removes_their_files():
    server = nim.Server(workers=3).start().result(30)
    pids = server.worker_pids
    directory = server._pool._dir  # noqa: SLF001 - where the sockets and the bindings file are
    assert len(pids) == 2 and all(_alive(p) for p in pids) and directory.is_dir()
    assert directory.stat().st_mode & 0o777 == 0o700, "the bindings file's directory is the server user's alone"
    assert [p.name for p in directory.iterdir() if p.is_socket()] == [], "no named socket anyone could open"
    server.stop()
    assert not any(_alive(p) for p in pids) and not directory.exists()
    assert server.worker_pids == []


def test_a_worker_never_outlives_the_main_process(tmp_path):
    script = (
        "import os, sys, notebook_im as nim\n"
        "s = nim.Server(workers=2).start().result(30)\n"
        "print(s.worker_pids[0], flush=True)\n"
        "os._exit(1)\n"  # no stop(): the main process dies
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    pid = int(out.stdout.split()[0])
    wait_for(lambda: not _alive(pid), 5, "the orphaned worker exits")


@pytest.mark.parametrize(
    ("kw", "what"),
    [
        ({"workers": 0}, "from 1 to 16"),
        ({"workers": 17}, "from 1 to 16"),
        ({"workers": True}, "from 1 to 16"),
        ({"workers": "2"}, "from 1 to 16"),
        ({"workers": 2, "users": {"a": "b"}}, "no users="),
        ({"workers": 2, "stateless": False}, "stateless=True"),
        ({"workers": 2, "transports": ("tcp",)}, "'udp' in transports"),
        ({"workers": 2, "network": nim.MemoryNetwork()}, "no network="),
    ],
)
def test_wrong_workers_arguments_are_refused_before_anything_binds(kw, what):
    with pytest.raises(ValueError, match=what.replace("(", r"\(")):
        nim.Server(**kw)


def test_serve_with_workers_from_the_command_line(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "notebook_im.cli", "serve", "--port", "0", "--workers", "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "2 processes" in line, line
        port = int(line.split("sip:127.0.0.1:")[1].split()[0])
        with RawPeer() as bob, RawPeer() as alice:
            assert bob.register(("127.0.0.1", port), "bob").startswith(b"SIP/2.0 200")
            alice.send(message(alice, "bob", "via the cli")[0], ("127.0.0.1", port))
            assert next_request(bob).body == b"via the cli"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
