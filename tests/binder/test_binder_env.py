"""Build the Binder environment (binder/requirements.txt, as repo2docker does from the repository root) in a
fresh virtualenv and execute every tutorial notebook with it."""

from __future__ import annotations

import subprocess
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def test_binder_files_are_complete():
    req = (ROOT / "binder" / "requirements.txt").read_text()
    assert any(line.strip().startswith("-e .") for line in req.splitlines()), (
        "binder/ disables auto-install: needs -e ."
    )
    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
    major, minor = runtime.removeprefix("python-").split(".")[:2]
    assert (int(major), int(minor)) >= (3, 11)


def test_notebooks_run_in_a_fresh_binder_environment(tmp_path):
    env_dir = tmp_path / "binder-env"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    install = subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "-q",
            "-r",
            "binder/requirements.txt",
            # what repo2docker's base environment brings: a kernel and the notebook machinery
            "ipykernel",
            "nbclient",
            "nbformat",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-4000:]
    script = textwrap.dedent("""
        import sys, time, nbformat
        from pathlib import Path
        from nbclient import NotebookClient
        for path in sorted(Path("notebooks").glob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            t = time.monotonic()
            NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": "notebooks"}}).execute()
            print(f"{path.name} {time.monotonic() - t:.1f}s", flush=True)
    """)
    run = subprocess.run([str(py), "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    ran = [line for line in run.stdout.splitlines() if line.endswith("s")]
    assert len(ran) == len(list((ROOT / "notebooks").glob("*.ipynb")))
    assert all(float(line.rsplit(" ", 1)[1][:-1]) < 60 for line in ran), ran
