"""The offline store on disk: messages kept for offline users survive a server restart (and a kill), are delivered
in order, once, when the user registers again; the file gets the history store's care."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import notebook_im as nim
from notebook_im.server.offline_db import OfflineStoreError
from tests.helpers import free_port, wait_for

BOB = "sip:bob@example.test"


def test_kept_messages_survive_a_restart_and_are_delivered_in_order_once(tmp_path, platform):
    path = tmp_path / "offline.sqlite"
    port = free_port()
    server = nim.Server(port=port, offline_store=path).start().result(10)
    try:
        bob = platform.endpoint(BOB, server=server).result(10)
        alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
        bob.disable().result(10)
        for i in range(3):
            assert alice.send_message(BOB, f"while away {i}").result(10).stored
        assert server.offline == {BOB: 3}
    finally:
        server.stop()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    server = nim.Server(port=port, offline_store=path).start().result(10)  # a new server process would be the same
    try:
        assert server.offline == {BOB: 3}, "the restarted server still has them"
        bob2 = platform.endpoint(BOB, server=server).result(10)  # (delivery starts with its REGISTER)
        received = bob2.pager_messages
        wait_for(lambda: len(received) == 3, 10, "the three kept messages")
        assert [e.text for e in received] == [f"while away {i}" for i in range(3)]
        assert [e.participant.uri for e in received] == ["sip:alice@example.test"] * 3
        wait_for(lambda: BOB not in server.offline, 5, "bob's messages left the store")  # (his receipts wait for alice)
        time.sleep(0.3)
        assert len(received) == 3, "each once"
    finally:
        platform.shutdown()  # before the server goes: un-REGISTERs get their answer instead of a 3 s wait
        server.stop()
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM messages WHERE aor = ?", (BOB,)).fetchone()[0] == 0
    db.close()


SERVE = """
import sys, time, notebook_im as nim
server = nim.Server(port=int(sys.argv[1]), offline_store=sys.argv[2]).start().result(10)
print("ready", flush=True)
time.sleep(60)
"""


def test_a_killed_server_loses_no_kept_message(tmp_path, platform):
    """The server process is SIGKILLed right after answering 202: the message is in the file already."""
    path = tmp_path / "offline.sqlite"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(port), str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        uri = f"sip:127.0.0.1:{port}"
        bob = platform.endpoint(BOB, server=uri).result(10)
        alice = platform.endpoint("sip:alice@example.test", server=uri).result(10)
        bob.disable().result(10)
        assert alice.send_message(BOB, "before the crash").result(10).stored
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    server = nim.Server(port=port, offline_store=path).start().result(10)
    try:
        assert server.offline == {BOB: 1}
        bob2 = platform.endpoint(BOB, server=server).result(10)
        wait_for(lambda: [e.text for e in bob2.pager_messages] == ["before the crash"], 10, "delivered after the crash")
    finally:
        platform.shutdown()
        server.stop()


def test_the_file_is_checked_like_the_history_store(tmp_path):
    foreign = tmp_path / "other.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    before = foreign.read_bytes()
    with pytest.raises(OfflineStoreError, match="not a notebook_im offline store"):
        nim.Server(offline_store=foreign)
    assert foreign.read_bytes() == before, "a foreign file is never modified"
    link = tmp_path / "link.sqlite"
    link.symlink_to(tmp_path / "target.sqlite")
    with pytest.raises(OfflineStoreError, match="symbolic link"):
        nim.Server(offline_store=link)
    assert not (tmp_path / "target.sqlite").exists()
    with pytest.raises(OfflineStoreError, match="must end in"):
        nim.Server(offline_store=tmp_path / "offline.txt")
    with pytest.raises(TypeError):
        nim.Server(offline_store=42)
    public = tmp_path / "public"
    public.mkdir()
    public.chmod(0o777)
    with pytest.raises(OfflineStoreError, match="writable by every user"):
        nim.Server(offline_store=public / "offline.sqlite")
    assert not (public / "offline.sqlite").exists()
    path = tmp_path / "one.sqlite"
    first = nim.Server(offline_store=path)
    with pytest.raises(OfflineStoreError, match="in use"):
        nim.Server(offline_store=path)
    first.proxy.journal.close()
