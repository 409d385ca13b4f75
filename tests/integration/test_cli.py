"""`notebook-im demo` and `notebook-im serve` as a user runs them."""
from __future__ import annotations

import re
import signal
import subprocess
import sys

from tests.helpers import udp_exchange


def test_demo_prints_a_transcript():
    out = subprocess.run([sys.executable, "-m", "notebook_im.cli", "demo", "--pause", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "bob      sees Alice typing…" in text
    assert "'Hi Bob! Are you there?'  [200 OK" in text
    assert "pager MESSAGE [200 OK]" in text
    assert "bob's side: disconnected" in text
    assert text.count(" received  ") == 3 and text.count(" delivered ") == 2
    assert "dropped: 0" in text


def test_demo_over_tcp():
    out = subprocess.run([sys.executable, "-m", "notebook_im.cli", "demo", "--pause", "0", "--transport", "tcp"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "transport=tcp" in out.stdout and "dropped: 0" in out.stdout


def test_serve_answers_options_and_stops_on_ctrl_c():
    proc = subprocess.Popen([sys.executable, "-m", "notebook_im.cli", "serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"sip:127\.0\.0\.1:(\d+)", line)
        assert m, line
        port = int(m.group(1))
        options = (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKcli;rport\r\n"
                   "From: <sip:probe@example.test>;tag=p\r\nTo: <sip:127.0.0.1>\r\nCall-ID: cli@test\r\n"
                   "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
        reply = udp_exchange(options, ("127.0.0.1", port))
        assert reply is not None and reply.startswith(b"SIP/2.0 200")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
