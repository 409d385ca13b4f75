"""read_pcap(to=): streaming import into a Parquet dataset (partitioned by date/hour, the columns and dtypes of
trace.sip(), memory bounded by a setting), and nim.open_traces (DuckDB): the views, filters and aggregations checked
against what the synthetic capture generator says it wrote, and against the in-memory read_pcap."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import notebook_im as nim
from notebook_im.trace import frames
from notebook_im.trace.capture import CaptureLimits
from notebook_im.trace.dataset import MARKER, DatasetError
from support.captures import generate

from .test_frames import assert_schema

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("cap") / "sbc.pcap"
    truth = generate(path, 3_000_000, seed=3, rate=0.5, keep_call_ids=True)  # ~1.8 hours of traffic
    return path, truth


@pytest.fixture(scope="module")
def imported(capture, tmp_path_factory: pytest.TempPathFactory):
    path, _ = capture
    out = tmp_path_factory.mktemp("ds") / "traces"
    # small batches: several row groups per hour, so nothing depends on a transaction staying in one row group
    result = nim.read_pcap(path, to=out, limits=CaptureLimits(batch_bytes=256 * 1024))
    return result


@pytest.fixture(scope="module")
def traces(imported):
    with nim.open_traces(imported.path) as t:
        yield t


# -- the import ---------------------------------------------------------------------------------------------------------
def test_import_writes_partitioned_parquet_with_the_sip_schema(capture, imported) -> None:
    path, truth = capture
    assert imported.rows == truth.messages == imported.stats.sip_messages
    assert imported.stats.packets == truth.packets and imported.stats.skipped == 0
    hours = sorted({f.parent.relative_to(imported.path).as_posix() for f in imported.files})
    assert hours[0] == "date=2024-05-01/hour=08" and len(hours) >= 2
    for f in imported.files:  # every row lies in its file's hour
        ts = pq.read_table(f, columns=["timestamp"]).column("timestamp").to_pandas()
        hour = int(f.parent.name.split("=")[1])
        assert (ts.dt.hour == hour).all() and (ts.dt.strftime("%Y-%m-%d") == f.parent.parent.name[5:]).all()
        assert pq.ParquetFile(f).metadata.num_row_groups >= 1
    assert not list(imported.path.rglob("*.tmp"))
    info = json.loads((imported.path / MARKER).read_text())
    assert info["version"] == 1 and info["imports"][0]["rows"] == imported.rows


def test_dataset_rows_equal_the_in_memory_read_pcap(capture, traces) -> None:
    path, _ = capture
    mem = nim.read_pcap(path).sip()
    disk = traces.sip()
    assert_schema(disk, frames.SIP_SCHEMA)
    assert len(disk) == len(mem)
    for col in frames.SIP_SCHEMA:
        if col == "timestamp":
            assert ((disk[col] - mem[col]).abs() < pd.Timedelta("1us")).all()  # in memory: float seconds
        else:
            assert disk[col].astype(object).tolist() == mem[col].astype(object).tolist(), col


def test_sip_filters_are_pushed_down(traces, capture) -> None:
    _, truth = capture
    start, end = "2024-05-01 08:30", "2024-05-01 09:10"
    df = traces.sip(start=start, end=end, method="MESSAGE", status=408)
    assert len(df) > 0 and (df["status"] == 408).all() and (df["method"] == "MESSAGE").all()
    assert df["timestamp"].min() >= pd.Timestamp(start, tz="UTC") and df["timestamp"].max() < pd.Timestamp(
        end, tz="UTC"
    )
    everything = traces.sip(raw=False)
    assert "raw" not in everything
    want = everything[
        (everything.timestamp >= pd.Timestamp(start, tz="UTC"))
        & (everything.timestamp < pd.Timestamp(end, tz="UTC"))
        & (everything.method == "MESSAGE")
        & (everything.status == 408)
    ]
    assert df["call_id"].tolist() == want["call_id"].tolist()
    assert len(traces.sip(where="transport = 'tcp'")) == truth.by_transport["tcp"]
    assert list(traces.sip(columns=["call_id", "status"], limit=5).columns) == ["call_id", "status"]
    assert len(traces.sip(limit=5)) == 5
    assert traces.sip(call_id=truth.call_ids[0])["call_id"].unique().tolist() == [truth.call_ids[0]]
    # a time range reaches the Parquet scan (row groups are skipped by their statistics)
    plan = traces.con.execute(
        "EXPLAIN SELECT count(*) FROM sip_parts WHERE " + traces._where(pd.Timestamp(start, tz="UTC").value, None)
    ).fetchall()[0][1]
    assert "timestamp>=" in plan.replace(" ", "")


def test_a_time_range_skips_other_dates_without_opening_them(imported, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(imported.path, copy)
    bad = copy / "date=2024-05-03" / "hour=00"
    bad.mkdir(parents=True)
    (bad / "part-x.parquet").write_bytes(b"not parquet at all")  # opening it would fail
    with nim.open_traces(copy) as t:
        assert len(t.sip(start="2024-05-01 08:30", end="2024-05-02", raw=False)) > 0
        assert len(t.transactions(start="2024-05-01 08:30", end="2024-05-01 09:00")) > 0  # (+5 min slack)
        with pytest.raises(Exception, match="(?i)parquet"):  # duckdb's own error class, which names the file
            t.sip(raw=False)  # without a range it is read, and fails


def test_transactions_match_what_was_sent(traces, capture) -> None:
    _, truth = capture
    tx = traces.transactions()
    by_method = tx.groupby("method", observed=True).size().to_dict()
    assert by_method == {m: n for m, n in truth.requests.items() if m != "ACK"}  # (the ACKs to 2xx are no rows)
    assert tx["status"].value_counts().to_dict() == dict(truth.finals)
    assert int(tx["retransmissions"].sum()) == truth.retransmissions
    for method in ("MESSAGE", "INVITE", "BYE"):
        got = np.sort(tx.loc[tx["method"] == method, "latency"].to_numpy())
        assert np.allclose(got, np.sort(truth.latencies[method]), atol=2e-6), method
    slow = traces.transactions(method="MESSAGE", min_latency=0.2)
    assert len(slow) == sum(1 for x in truth.latencies["MESSAGE"] if x >= 0.2 - 1e-6) and (slow["latency"] >= 0.2).all()
    late = traces.transactions(start="2024-05-01 09:00", status=408)
    assert len(late) > 0 and (late["request_at"] >= pd.Timestamp("2024-05-01 09:00", tz="UTC")).all()
    who = traces.transactions(start="2024-05-01 09:00", status=408, users=True)  # who failed with 408 after 9
    assert who.drop(columns=["from_user", "to_user"]).equals(late)
    rows = traces.sip(call_id=who["call_id"].tolist(), method="MESSAGE", raw=True)
    for call_id, frm, to in zip(who["call_id"], who["from_user"], who["to_user"]):
        raw = rows.loc[rows["call_id"] == call_id, "raw"].iloc[0]
        assert f"From: <sip:{frm}@example.com>" in raw and f"To: <sip:{to}@example.com>" in raw
    assert traces.transactions(unanswered=True).empty


def test_transactions_keep_their_responses_across_the_end_of_a_range(traces) -> None:
    full = traces.transactions().set_index("transaction_id")
    part = traces.transactions(start="2024-05-01 08:20", end="2024-05-01 08:40").set_index("transaction_id")
    assert len(part) > 0
    assert (part["latency"] == full.loc[part.index, "latency"]).all()


def test_latency_quantiles_per_method_and_hour(traces) -> None:
    tx = traces.transactions()
    got = traces.latency(by=("method", "hour"), q=(0.5, 0.99))
    assert list(got.columns) == ["method", "hour", "count", "p50", "p99"]
    tx["hour"] = tx["request_at"].dt.floor("h")
    for (method, hour), group in tx.groupby(["method", "hour"], observed=True):
        row = got[(got["method"] == method) & (got["hour"] == hour)].iloc[0]
        ns = np.sort(np.round(group["latency"].to_numpy() * 1e9).astype(np.int64))
        assert row["count"] == len(ns)
        assert row["p50"] == pytest.approx(np.quantile(ns, 0.5, method="inverted_cdf") / 1e6, abs=1e-9)
        assert row["p99"] == pytest.approx(np.quantile(ns, 0.99, method="inverted_cdf") / 1e6, abs=1e-9)


def test_counts_by_method_status_hour(traces, capture) -> None:
    _, truth = capture
    c = traces.counts(by=("method", "status", "hour"))
    assert int(c["count"].sum()) == truth.messages
    requests = c[c["status"].isna()].groupby("method")["count"].sum().to_dict()
    assert requests["INVITE"] == truth.requests["INVITE"]
    assert c["hour"].dt.tz is not None and c["hour"].nunique() >= 2
    by_transport = traces.counts(by="transport").set_index("transport")["count"].to_dict()
    assert by_transport == dict(truth.by_transport)


def test_dialogs_one_row_per_invite_with_messages_inside(traces, capture) -> None:
    _, truth = capture
    d = traces.dialogs()
    assert len(d) == len(truth.dialogs) == truth.requests["INVITE"]
    got = {cid: (m, c) for cid, m, c in zip(d["call_id"], d["messages"], d["composing"])}
    assert got == truth.dialogs
    assert (d["status"] == 200).all() and d["dialog_id"].notna().all()
    assert (d["setup_latency"] > 0).all() and (d["duration"] > 0).all() and (d["bye_at"] > d["answered_at"]).all()


def test_sql_escape_hatch_and_views(traces, capture) -> None:
    _, truth = capture
    df = traces.sql("SELECT method, count(*) AS n FROM transactions GROUP BY method ORDER BY method")
    assert dict(zip(df["method"], df["n"])) == {m: n for m, n in truth.requests.items() if m != "ACK"}
    assert traces.sql("SELECT count(*) AS n FROM sip WHERE status = ?", [404])["n"][0] == truth.finals[404]
    assert traces.sql("SELECT count(DISTINCT hour) AS h FROM sip_parts")["h"][0] >= 2
    assert len(traces) == truth.messages


def test_query_arguments_are_checked(traces, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="time"):
        traces.sip(start=1714550400)
    with pytest.raises(ValueError, match="not a time"):
        traces.sip(start="yesterday-ish")
    with pytest.raises(ValueError, match="by="):
        traces.counts(by=("nonsense",))
    with pytest.raises(ValueError, match="columns="):
        traces.sip(columns=["nope"])
    with pytest.raises(ValueError, match="q="):
        traces.latency(q=(50,))
    with pytest.raises(TypeError, match="status"):
        traces.sip(status="200")
    with pytest.raises(ValueError, match="engine"):
        nim.open_traces(traces.root, engine="spark")
    with pytest.raises(DatasetError, match="not a notebook_im trace dataset"):
        nim.open_traces(tmp_path)
    with pytest.raises(DatasetError, match="not a directory"):
        nim.open_traces(tmp_path / "nothing")


# -- destinations, appending ----------------------------------------------------------------------------------------
def test_to_refuses_wrong_destinations_before_any_work(capture, tmp_path: Path) -> None:
    path, _ = capture
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="existing file"):
        nim.read_pcap(path, to=afile)
    with pytest.raises(ValueError, match="holds other files"):
        nim.read_pcap(path, to=other)
    with pytest.raises(ValueError, match="parent directory"):
        nim.read_pcap(path, to=tmp_path / "no" / "such" / "dir")
    with pytest.raises(ValueError, match="at least '256MiB'"):
        nim.read_pcap(path, to=tmp_path / "new", memory="128MiB")
    with pytest.raises(ValueError, match="size"):
        nim.read_pcap(path, to=tmp_path / "new", memory="lots")
    with pytest.raises(FileNotFoundError):
        nim.read_pcap(tmp_path / "missing.pcap", to=tmp_path / "new")
    assert time.perf_counter() - t0 < 1.0  # no capture was read
    assert afile.read_text() == "mine" and sorted(p.name for p in other.iterdir()) == ["cat.jpg"]
    assert not (tmp_path / "new").exists()
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / MARKER).write_text(json.dumps({"format": "notebook_im trace dataset", "version": 99, "imports": []}))
    with pytest.raises(DatasetError, match="upgrade"):
        nim.read_pcap(path, to=newer)


def test_several_captures_into_one_dataset(tmp_path: Path) -> None:
    a, b = tmp_path / "proxy.pcap", tmp_path / "sbc.pcap.gz"
    ta = generate(a, 200_000, seed=11)
    tb = generate(b, 200_000, seed=12, gzipped=True)
    out = tmp_path / "all"
    nim.read_pcap(a, to=out)
    r2 = nim.read_pcap(b, to=out, owner="sbc-east")
    assert r2.stats.sip_messages == tb.messages
    with nim.open_traces(out) as t:
        owners = t.counts(by="owner").set_index("owner")["count"].to_dict()
        assert owners == {"pcap:proxy.pcap": ta.messages, "sbc-east": tb.messages}
        assert [i["rows"] for i in t.imports] == [ta.messages, tb.messages]
        assert t.stats.sip_messages == ta.messages + tb.messages


def test_import_notebook_im_stays_light() -> None:
    code = (
        "import sys, notebook_im; notebook_im.read_pcap; "
        "print(sorted(m for m in ('pandas', 'pyarrow', 'duckdb', 'dask', 'distributed', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# -- memory ---------------------------------------------------------------------------------------------------------
# the peak is VmHWM (this process since exec), not ru_maxrss: on Linux that survives exec, so the child would
# report at least the pytest process's own peak
PEAK = """
import sys, time
sys.path.insert(0, {repo!r})
import notebook_im as nim
t = time.perf_counter()
r = nim.read_pcap({src!r}, to={dst!r}, memory="256MiB")
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(r.rows, hwm // 1024, time.perf_counter() - t)
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_capture(tmp_path: Path) -> None:
    """Importing 4x the capture with the same budget: the same peak RSS (within 20%; both captures are several
    batches long, so both reach the steady state of one batch gathered, one queued, one written), under the
    budget."""
    peaks = []
    for size in (24_000_000, 96_000_000):
        src = tmp_path / f"c{size}.pcap"
        truth = generate(src, size, seed=5)
        out = subprocess.run(
            [sys.executable, "-c", PEAK.format(repo=str(REPO), src=str(src), dst=str(tmp_path / f"d{size}"))],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        rows, peak_mib, _secs = out.stdout.split()
        assert int(rows) == truth.messages
        peaks.append(int(peak_mib))
        src.unlink()
    assert peaks[1] <= peaks[0] * 1.2 + 10, peaks
    assert max(peaks) < 256, peaks


# -- the CLI --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_import_pcap_with_a_progress_bar(capture, tmp_path: Path) -> None:
    path, truth = capture
    cli = [sys.executable, "-m", "notebook_im.cli"]
    out = subprocess.run(
        cli + ["import-pcap", str(path), "--to", str(tmp_path / "cli"), "--progress", "--memory", "256MiB"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert f"{truth.messages:,} SIP messages" in out.stdout and "open_traces" in out.stdout
    assert "100.0%" in out.stderr and "[" in out.stderr
    again = subprocess.run(
        cli + ["import-pcap", str(path), "--to", str(path)], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert again.returncode == 2 and "existing file" in again.stderr
