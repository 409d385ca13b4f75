"""A live trace flushed into the dataset layout (trace.to_parquet_dataset) is queried with the same code as a capture:
the same rows as trace.sip(), the same IM messages as trace.messages(source="sip"), flushes that append only what is
new."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import notebook_im as nim
from notebook_im.record.recorder import Trace
from notebook_im.trace import frames

from .test_frames import assert_schema


def test_live_trace_flushed_and_queried_like_a_capture(chat, tmp_path: Path) -> None:
    out = tmp_path / "live"
    first = chat.trace.to_parquet_dataset(out)
    assert first.rows == len(chat.trace)
    with nim.open_traces(out) as t:
        disk, mem = t.sip(), chat.trace.sip()
        assert_schema(disk, frames.SIP_SCHEMA)
        for col in frames.SIP_SCHEMA:
            if col == "timestamp":
                assert ((disk[col] - mem[col]).abs() <= pd.Timedelta("1us")).all()
            else:
                assert disk[col].astype(object).tolist() == mem[col].astype(object).tolist(), col
        got, want = t.messages(), chat.trace.messages(source="sip")
        assert_schema(got, frames.MESSAGES_SCHEMA)
        for col in frames.MESSAGES_SCHEMA:
            if col in ("sent_at", "delivered_at"):
                assert ((got[col] - want[col]).abs().fillna(pd.Timedelta(0)) <= pd.Timedelta("1us")).all(), col
            elif col == "latency":
                assert (got[col] - want[col]).abs().fillna(0).max() < 1e-6
            else:
                assert got[col].astype(object).tolist() == want[col].astype(object).tolist(), col
        assert "hello bob" in got["text"].tolist()
        tx = t.transactions(method="MESSAGE")
        assert (tx["status"].dropna() >= 200).all() and tx["latency"].notna().any()
        d = t.dialogs(owner=chat.alice.uri)
        assert d["call_id"].tolist() == [chat.call_id] and d["messages"].iloc[0] >= 2 and d["composing"].iloc[0] >= 1
    again = chat.trace.to_parquet_dataset(out)  # nothing new since: nothing written
    assert again.rows == 0 and again.files == ()
    with nim.open_traces(out) as t:
        assert len(t) == len(chat.trace)
        assert [i["kind"] for i in t.imports] == ["trace", "trace"]


def test_each_flush_appends_what_is_new(tmp_path: Path) -> None:
    trace = Trace(name="t")
    req = (
        b"MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4:5060;branch=z9hG4bK%d\r\nFrom: <sip:a@x>;tag=1\r\n"
        b"To: <sip:b@x>\r\nCall-ID: c%d\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
    )
    for i in range(3):
        trace.record_sip(
            "out", "udp", ("1.2.3.4", 5060), ("5.6.7.8", 5060), req % (i, i), "sip:a@x", ts=1_714_550_400 + i
        )
    out = tmp_path / "flush"
    assert nim.write_dataset(trace, out).rows == 3
    for i in range(3, 5):
        trace.record_sip(
            "in", "udp", ("1.2.3.4", 5060), ("5.6.7.8", 5060), req % (i, i), "sip:a@x", ts=1_714_550_400 + i
        )
    assert trace.to_parquet_dataset(out).rows == 2
    with nim.open_traces(out) as t:
        df = t.sip()
        assert df["call_id"].tolist() == [f"c{i}" for i in range(5)]
        assert df["direction"].astype(str).tolist() == ["out"] * 3 + ["in"] * 2
        assert df["src"].astype(str).tolist() == ["1.2.3.4:5060"] * 3 + ["5.6.7.8:5060"] * 2
    trace.clear()
    trace.record_sip("out", "udp", ("1.2.3.4", 5060), ("5.6.7.8", 5060), req % (9, 9), "sip:a@x", ts=1_714_550_500)
    assert trace.to_parquet_dataset(out).rows == 1  # cleared: starts again from its first row
    with pytest.raises(TypeError, match="Trace"):
        nim.write_dataset("not a trace", out)  # type: ignore[arg-type]
