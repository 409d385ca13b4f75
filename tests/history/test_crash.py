"""Crash safety: a process chatting with a history store is SIGKILLed mid-stream; the store keeps every message
whose send had completed (at chat pace at most the last one missing), is not corrupt, and takes new records.

The writer commits about 10 ms after a record at chat pace (store.WINDOW, plus the wait for the GIL), so what a
kill can lose is the records of those last ms: at chat pace (here a message every 50 ms, far faster than anyone
types) that is at most the last message. In a send loop (~1,000 messages/s) it commits every 50 ms
(store.LOAD_WINDOW) and a kill loses the messages of the last ~50 ms (bench/history.py measures it).
"""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import notebook_im as nim
from notebook_im.record.store import HistoryInUse

from .conftest import CHILD_ENV

CHATTER = Path(__file__).with_name("chatter.py")


def chat_and_kill(path: Path, pause: float, kill_after: int) -> list[int]:
    """Run chatter.py, SIGKILL it once it has completed `kill_after` messages; the numbers it completed."""
    child = subprocess.Popen(
        [sys.executable, str(CHATTER), str(path), str(pause)], stdout=subprocess.PIPE, text=True, env=CHILD_ENV
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (len(lines) > kill_after):
            if not select.select([child.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
                break
            line = child.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
        assert len(lines) > kill_after and lines[0] == "ready", f"the chat did not get going: {lines[-3:]}"
        with pytest.raises(HistoryInUse, match=f"process {child.pid}"):  # it is still writing
            nim.Platform(history=path)
        os.kill(child.pid, signal.SIGKILL)  # mid-stream: it is sending the next message right now
        assert child.wait(10) == -signal.SIGKILL
        lines += child.stdout.read().split()  # printed before the kill
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        child.stdout.close()
    completed = [int(n) for n in lines[1:]]
    assert completed == list(range(len(completed)))
    return completed


def reopen_and_check(path: Path, completed: list[int], may_lose: int) -> None:
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    platform = nim.Platform(history=path)  # the killed process left no lock behind
    try:
        sent = platform.trace.messages(owner="sip:alice@example.test")
        stored = [int(t.split()[1]) for t in sent[sent.status == "delivered"].text]
        assert stored == list(range(len(stored))), "delivered messages are stored in order, without gaps"
        missing = sorted(set(completed) - set(stored))
        assert missing == completed[len(completed) - len(missing) :], f"not the last ones: {missing}"
        assert len(missing) <= may_lose, f"lost {len(missing)} completed messages: {missing}"
        received = platform.trace.messages(owner="sip:bob@example.test").text.tolist()
        assert received[: len(stored)] == [f"line {i}" for i in range(len(stored))]
        before = len(platform.trace.sip())
        server = nim.Server().start().result(10)
        try:
            platform.endpoint("sip:alice@example.test", server=server).result(10).disable().result(10)
        finally:
            server.stop()
    finally:
        platform.shutdown()
    again = nim.Platform(history=path)
    try:
        assert len(again.trace.sip()) > before  # the reopened store took new records
    finally:
        again.shutdown()


@pytest.mark.parametrize("kill_after", [10, 30])
@pytest.mark.slow
def test_sigkill_at_chat_pace_loses_at_most_the_last_message(tmp_path, kill_after):
    path = tmp_path / "chat.sqlite"
    completed = chat_and_kill(path, 0.05, kill_after)
    reopen_and_check(path, completed, may_lose=1)


@pytest.mark.slow
def test_sigkill_in_a_tight_loop_loses_only_the_last_few_ms(tmp_path):
    path = tmp_path / "chat.sqlite"
    completed = chat_and_kill(path, 0.0, 400)
    reopen_and_check(path, completed, may_lose=150)  # at ~1,000 msg/s, 150 messages are 3x the 50 ms window
