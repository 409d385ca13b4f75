"""`notebook-im demo` and `notebook-im serve` as a user runs them."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

from tests.helpers import udp_exchange


def test_demo_prints_a_transcript():
    out = subprocess.run(
        [sys.executable, "-m", "notebook_im.cli", "demo", "--pause", "0"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "bob      sees Alice typing…" in text
    assert "'Hi Bob! Are you there?'  [200 OK" in text
    assert "pager MESSAGE [200 OK]" in text
    assert "bob's side: disconnected" in text
    assert text.count(" received  ") == 3 and text.count(" delivered ") == 2
    assert "dropped: 0" in text


def test_demo_over_tcp():
    out = subprocess.run(
        [sys.executable, "-m", "notebook_im.cli", "demo", "--pause", "0", "--transport", "tcp"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "transport=tcp" in out.stdout and "dropped: 0" in out.stdout


def test_serve_answers_options_and_stops_on_ctrl_c():
    proc = subprocess.Popen(
        [sys.executable, "-m", "notebook_im.cli", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        m = re.search(r"sip:127\.0\.0\.1:(\d+)", line)
        assert m, line
        port = int(m.group(1))
        options = (
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKcli;rport\r\n"
            "From: <sip:probe@example.test>;tag=p\r\nTo: <sip:127.0.0.1>\r\nCall-ID: cli@test\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        reply = udp_exchange(options, ("127.0.0.1", port))
        assert reply is not None and reply.startswith(b"SIP/2.0 200")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_serve_started_as_a_background_job_stops_on_sigint(tmp_path):
    """A non-interactive shell starts `notebook-im serve &` with SIGINT ignored; the server installs its own handler,
    so SIGINT still stops it (cleanly, exit 0) instead of being ignored for ever."""
    store = tmp_path / "offline.sqlite"
    script = f'exec {sys.executable} -m notebook_im.cli serve --port 0 --offline-store {store} & echo "$!"; wait'
    shell = subprocess.Popen(
        ["bash", "-c", f"trap '' INT; {script}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        pid = int(shell.stdout.readline())
        line = shell.stdout.readline()
        assert "listening" in line, line
        import os

        ignored = open(f"/proc/{pid}/status").read().split("SigIgn:")[1].split()[0]
        assert int(ignored, 16) & (1 << (signal.SIGINT - 1)) == 0, (
            "the server's own SIGINT handler replaced the inherited ignore"
        )
        os.kill(pid, signal.SIGINT)
        assert shell.wait(10) == 0
        assert "stopped" in shell.stdout.read()
        assert store.exists(), "--offline-store made the file"
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait(5)
