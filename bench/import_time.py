"""Import time: `import notebook_im` in a fresh interpreter, the minimum of 7 runs, against `import asyncio`
(the anchor: the standard library module notebook_im cannot do without) measured the same way in the same run.

Each run is a new `python -c` process that times only the import statement (perf_counter around it), so the
interpreter's own start-up is not counted, and it reports whether pandas or ipywidgets came along (they must
not: they load on first use). The minimum is the run least disturbed by the other programs on this machine.

The package's bytecode is compiled first (`compileall`), as `pip install` does and as the first import of an
editable install does unless PYTHONDONTWRITEBYTECODE is set. With that variable set (as it is on some CI and
container images) nothing wrote the .pyc files and every run compiled all ~56 modules from source: ~40 ms of the
117 ms this benchmark used to report, time a user never sees twice; the standard library anchor was always
measured from its installed bytecode.
"""

from __future__ import annotations

import compileall
import json
import subprocess
import sys

from _common import REPO, Context, Row, ratio, yes_no

PROBE = (
    "import sys, time, json; t = time.perf_counter(); import {module}; dt = time.perf_counter() - t; "
    "print(json.dumps({{'s': dt, 'heavy': sorted(m for m in ('pandas', 'ipywidgets', 'numpy') if m in sys.modules)}}))"
)


def import_seconds(module: str, runs: int) -> tuple[float, list[str]]:
    """The fastest of `runs` imports of `module`, each in a fresh interpreter; and the heavy modules it pulled in."""
    best, heavy = float("inf"), set()
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(module=module)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        best = min(best, result["s"])
        heavy.update(result["heavy"])
    return best, sorted(heavy)


def run(ctx: Context) -> None:
    """bench/run --only import"""
    runs = 3 if ctx.quick else 7
    # the bytecode a user's install has (pip compiles it; py_compile writes it whatever PYTHONDONTWRITEBYTECODE says)
    compileall.compile_dir(str(REPO / "notebook_im"), quiet=1)
    import_seconds("notebook_im", 1)  # warms the file cache
    anchor, _ = import_seconds("asyncio", runs)
    value, heavy = import_seconds("notebook_im", runs)
    if heavy:
        ctx.note(f"`import notebook_im` also imported {', '.join(heavy)} (it must not)")
    ctx.emit(
        Row(
            ctx.name,
            f"import notebook_im (min of {runs} fresh interpreters)",
            value * 1000,
            "ms",
            anchor="import asyncio, same way",
            anchor_value=anchor * 1000,
            ratio=ratio(value, anchor),
            goal="<= 100 ms, no pandas/ipywidgets",
            met=yes_no(value <= 0.100 and not heavy),
        )
    )
