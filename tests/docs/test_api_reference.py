"""The API reference is generated from docstrings by pdoc, so it cannot rot: every public name is documented."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import notebook_im as nim


def public_names() -> list[str]:
    return sorted(n for n in nim.__all__ if not n.startswith("_")) + sorted(nim._LAZY)


def test_every_public_name_has_a_docstring():
    missing = []
    for name in public_names():
        obj = getattr(nim, name)
        if name == "__version__":
            continue
        if not (inspect.getdoc(obj) or "").strip():
            missing.append(name)
        if inspect.isclass(obj) and not name.endswith(("State",)):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not callable(member) or getattr(member, "__doc__", None):
                    continue
                if attr in {"on", "events"}:
                    continue
                missing.append(f"{name}.{attr}")
    assert not missing, f"public names without a docstring: {missing}"


@pytest.mark.slow
def test_pdoc_builds_the_reference(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pdoc", "notebook_im", "-o", str(tmp_path), "--no-show-source"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    index = (tmp_path / "notebook_im.html").read_text()
    # the reference is the public surface (`notebook_im.__all__`): every class with its methods and docstrings
    for name in (
        "Platform",
        "Endpoint",
        "ImSession",
        "ConferenceSession",
        "Operation",
        "MessageReceived",
        "Server",
        "start_composing",
        "send_message",
        "create_conference",
        "on_incoming",
    ):
        assert f'id="{name}' in index or f'.{name}"' in index or f">{name}<" in index, name
    assert "Schedule" in index or "awaitable" in index, "docstrings are rendered"
