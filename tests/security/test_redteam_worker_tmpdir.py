"""LOW. Server(workers=N) keeps its bindings file (AORs, Contacts, Call-IDs) in a mkdtemp directory that only
close() removes: a main process that dies (os._exit, SIGKILL, OOM) leaves it behind in /tmp for good, and the
workers, which do notice and exit, do not remove it either (13 such directories were already in /tmp here)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)


def test_the_workers_directory_does_not_outlive_the_server():
    script = (
        "import os, notebook_im as nim\n"
        "s = nim.Server(workers=2).start().result(30)\n"
        "print(s._pool._dir, flush=True)\n"
        "os._exit(1)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    directory = Path(out.stdout.split()[0])
    try:
        time.sleep(3)  # the worker sees its stdin close and exits
        assert not directory.exists(), f"{directory} left behind: {[p.name for p in directory.iterdir()]}"
    finally:
        if directory.exists():
            for p in directory.iterdir():
                p.unlink()
            directory.rmdir()
