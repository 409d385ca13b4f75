"""Every tutorial notebook runs top to bottom in a fresh kernel, within a minute, with no error, and is stored
with its outputs stripped."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import NOTEBOOKS, executed

pytestmark = pytest.mark.kernel


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 8


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path):
    run = executed(path)
    for cell in run.stored.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{path.name}: outputs must be stripped in git"
            assert cell.get("execution_count") is None, f"{path.name}: execution counts must be stripped in git"
    assert run.error is None, run.error
    assert run.elapsed < 60, f"{path.name} took {run.elapsed:.0f} s"
    errors = [
        o
        for c in run.nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
