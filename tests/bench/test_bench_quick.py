"""`bench/run --quick`: the harness runs the parse benchmark and one SIPp rung (SIPp's UAS and a notebook_im
endpoint, each answering 500 MESSAGEs in 1 s), and writes results.csv with the documented columns and figures
that are real measurements (non-zero), and results.md with the same rows.

--no-setup with this interpreter: the test measures the harness, it does not build a venv. The foreign
parsers of the bench extra are compared when they are installed here (bench/run without --no-setup
installs them); the notebook_im rate is always measured.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COLUMNS = ["benchmark", "figure", "value", "unit", "anchor", "anchor_value", "ratio", "goal", "met"]

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]


def test_quick_parse_and_one_sipp_rung(tmp_path: Path) -> None:
    committed = REPO / "bench" / "results.md"
    before = committed.read_bytes() if committed.exists() else None
    done = subprocess.run(
        [str(REPO / "bench" / "run"), "--no-setup", "--quick", "--only", "parse,endpoint-udp", "--out", str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "BENCH_PYTHON": sys.executable},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    with open(tmp_path / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    by_bench = {b: [r for r in rows if r["benchmark"] == b] for b in ("parse", "endpoint-udp")}
    assert all(by_bench.values()), rows
    for row in rows:
        assert float(row["value"]) > 0, row  # every figure was measured
        assert row["met"] in ("yes", "no", ""), row
        if row["anchor_value"]:
            assert float(row["ratio"]) == pytest.approx(float(row["value"]) / float(row["anchor_value"]), rel=1e-3)
    nim = [r for r in by_bench["parse"] if r["figure"].startswith("notebook_im parse_message")]
    goal = [r for r in nim if r["goal"] == ">= 2x the fastest other"]
    assert len(goal) == 1 and goal[0]["unit"] == "msg/s"
    import notebook_im.sip as sip

    if all(sip.COMPILED.values()):  # the compiled core against its own .py modules, in the same rounds
        assert "compiled (mypyc)" in goal[0]["figure"] and len(nim) == 2, nim
        assert any("pure Python" in r["figure"] and float(r["value"]) > 0 for r in nim), nim
    else:
        assert "pure Python" in goal[0]["figure"] and len(nim) == 1, nim
    sipp = [r for r in by_bench["endpoint-udp"] if r["figure"].startswith("SIPp UAC -> SIPp UAS")]
    endpoint = [r for r in by_bench["endpoint-udp"] if r["figure"].startswith("SIPp UAC -> notebook_im endpoint")]
    assert [float(r["value"]) for r in sipp] == [500]  # the one rung of --quick, clean
    assert len(endpoint) == 2  # NOTEBOOK_IM_LOOP=asyncio and =uvloop
    assert all(float(r["anchor_value"]) == 500 for r in endpoint)
    # PJSUA2 (pjsip from Python, the test extra installs it): its own rung, and the endpoint's ratio to it
    pjsua2 = [r for r in by_bench["endpoint-udp"] if r["figure"].startswith("SIPp UAC -> PJSUA2")]
    versus = [r for r in by_bench["endpoint-udp"] if "against PJSUA2" in r["figure"]]
    assert [float(r["value"]) for r in pjsua2] == [500] and float(pjsua2[0]["anchor_value"]) == 500, rows
    assert len(versus) == 2 and all(r["goal"] == ">= 2x PJSUA2" and float(r["anchor_value"]) == 500 for r in versus)
    md = (tmp_path / "results.md").read_text()
    assert "| benchmark | figure | value | unit | anchor | anchor value | ratio | goal | met |" in md
    assert md.count("\n| parse |") + md.count("\n| endpoint-udp |") == len(rows)
    assert (committed.read_bytes() if committed.exists() else None) == before  # --out: bench/results.md untouched
