"""Each tutorial notebook is executed once per test session, in a fresh kernel, the way a student runs it top to
bottom (hidden solution cells included), plus one cell at the end that replays every `check()` the notebook made
with a wrong answer (`teaching.self_test()`). The tests in this folder read the executed notebooks from here."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
SELF_TEST = "import json\nfrom notebook_im import teaching\nprint('SELFTEST ' + json.dumps(teaching.self_test()))"


@dataclass
class Executed:
    path: Path
    stored: nbformat.NotebookNode  # as stored in git
    nb: nbformat.NotebookNode  # executed (with the self-test cell at the end)
    elapsed: float
    error: str | None
    self_test: list[dict] = field(default_factory=list)

    def text_outputs(self) -> list[str]:
        """The text of every code cell's outputs (streams, text/plain results, error tracebacks), one per cell."""
        texts = []
        for cell in self.nb.cells:
            if cell.cell_type != "code":
                continue
            parts = []
            for o in cell.get("outputs", []):
                if o.output_type == "stream":
                    parts.append(o.text)
                elif o.output_type in ("execute_result", "display_data"):
                    parts.append(o.get("data", {}).get("text/plain", ""))
                elif o.output_type == "error":
                    parts.append("\n".join(o.get("traceback", [])))
            texts.append("".join(parts))
        return texts


_executed: dict[Path, Executed] = {}


def executed(path: Path) -> Executed:
    if path not in _executed:
        stored = nbformat.read(path, as_version=4)
        nb = nbformat.read(path, as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell(SELF_TEST))
        client = NotebookClient(
            nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        )
        started = time.monotonic()
        error = None
        try:
            client.execute()
        except CellExecutionError as exc:
            error = str(exc)[-4000:]
        elapsed = time.monotonic() - started
        rows: list[dict] = []
        for o in nb.cells[-1].get("outputs", []):
            if o.output_type == "stream" and "SELFTEST " in o.text:
                rows = json.loads(o.text.split("SELFTEST ", 1)[1])
        _executed[path] = Executed(path, stored, nb, elapsed, error, rows)
    return _executed[path]
