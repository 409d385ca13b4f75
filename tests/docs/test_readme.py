"""The README as a newcomer reads it: the tour runs verbatim, as a notebook cell (top-level await) and as a script,
and prints what the README says it prints; the signatures it shows are the code's; it speaks to users."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import notebook_im as nim

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
TOUR = README[README.index("## A tour of the API") : README.index("### The UCCAPI names, mapped")]
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", TOUR, re.S)

# how IPython runs a cell with top-level await: compile with the flag, await the code object's coroutine
RUN_CELL = """
import ast, asyncio, sys
code = compile(sys.stdin.read(), "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
async def main():
    result = eval(code, {"__name__": "__main__"})
    if asyncio.iscoroutine(result):
        await result
asyncio.run(main())
"""


def run(args: list[str], stdin: str) -> str:
    proc = subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


def test_the_tour_has_a_cell_its_output_and_a_script() -> None:
    assert [kind for kind, _ in BLOCKS] == ["python", "", "python"], [kind for kind, _ in BLOCKS]
    cell, _printed, script = (code for _, code in BLOCKS)
    assert "await " in cell and "await " not in script and ".result()" in script


@pytest.mark.timeout(180)
def test_the_notebook_cell_prints_what_the_readme_shows() -> None:
    cell, printed = BLOCKS[0][1], BLOCKS[1][1]
    assert lines(run(["-c", RUN_CELL], cell)) == lines(printed)


@pytest.mark.timeout(180)
def test_the_script_runs_blocking() -> None:
    out = run(["-"], BLOCKS[2][1])
    assert lines(out) == ["bob got 'hello Bob'", "alice: 200"]


def signature(name: str, fn: object) -> str:
    """`name(a, b=1, *, c=None)` as the README writes a signature: defaults as repr, no annotations."""
    parts: list[str] = []
    star = False
    for p in inspect.signature(fn).parameters.values():  # type: ignore[arg-type]
        if p.name == "self":
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return f"{name}({', '.join(parts)})"


@pytest.mark.parametrize(
    "name, fn",
    [
        ("nim.Platform", nim.Platform.__init__),
        ("platform.endpoint", nim.Platform.endpoint),
        ("nim.Server", nim.Server.__init__),
        ("endpoint.sessions.create", nim.SessionManager.create),
        ("endpoint.send_message", nim.Endpoint.send_message),
        ("session.send", nim.ImSession.send),
    ],
)
def test_signatures_are_the_codes(name: str, fn: object) -> None:
    text = signature(name, fn)
    assert f"`{text}`" in README, f"the README should show {text} (as the code has it)"


def test_it_speaks_to_users() -> None:
    """No work notes in what users read: no issue numbers, no sessions of work, no files outside the repository."""
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for pattern in (r"\bissue \d+", r"\(this session\)", r"\.\./shared", r"DESIGN\.md"):
            assert not re.search(pattern, text), f"{path.name}: {pattern!r}"
