"""Frame schemas (column order and dtypes, also when empty), contents, history(), Parquet/CSV, recording switches."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

import notebook_im as nim
from notebook_im.record.extract import extract
from notebook_im.record.recorder import Trace
from notebook_im.trace import frames

from .conftest import TEXTS

FRAMES = {
    "sip": frames.SIP_SCHEMA,
    "messages": frames.MESSAGES_SCHEMA,
    "events": frames.EVENTS_SCHEMA,
    "drops_frame": frames.DROPS_SCHEMA,
}


def assert_schema(df: pd.DataFrame, schema: dict) -> None:
    assert list(df.columns) == list(schema), list(df.columns)
    for name, want in schema.items():
        got = df[name].dtype
        if want == "category":
            assert isinstance(got, pd.CategoricalDtype), (name, got)
        elif isinstance(want, pd.CategoricalDtype):
            # fixed categories first (a trace may add others, e.g. an unusual method)
            assert isinstance(got, pd.CategoricalDtype), (name, got)
            assert list(got.categories[: len(want.categories)]) == list(want.categories), (name, list(got.categories))
        else:
            assert got == want, (name, got, want)
    for name in df.columns:
        if isinstance(df[name].dtype, pd.DatetimeTZDtype):
            assert str(df[name].dtype.tz) == "UTC"


def test_import_stays_light() -> None:
    code = (
        "import sys, notebook_im; print([m for m in ('pandas', 'matplotlib', 'pyarrow', 'dpkt') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("name", list(FRAMES))
def test_empty_frames_keep_schema(name: str) -> None:
    df = getattr(Trace(), name)()
    assert len(df) == 0
    assert_schema(df, FRAMES[name])


@pytest.mark.parametrize("name", ["sip", "messages", "events"])
def test_frames_have_schema(chat, name: str) -> None:
    df = getattr(chat.trace, name)()
    assert len(df) > 0
    assert_schema(df, FRAMES[name])


def test_sip_frame_contents(chat) -> None:
    df = chat.trace.sip()
    records = chat.trace.sip_records()
    assert len(df) == len(records)
    assert df["timestamp"].is_monotonic_increasing or df["timestamp"].min() > pd.Timestamp("2020-01-01", tz="UTC")
    assert set(df["direction"].astype(str)) == {"in", "out"}
    assert set(df["transport"].astype(str)) == {"udp", "tcp"}
    session_rows = df[df["call_id"] == chat.call_id]
    methods = session_rows[session_rows["status"].isna()]["method"].astype(str).tolist()
    assert (
        methods.count("INVITE") == 2 and methods.count("ACK") == 2 and methods.count("BYE") == 2
    )  # out at alice, in at bob
    # the texts, the "active" indication and bob's delivery notification for each text (RFC 5438)
    assert methods.count("MESSAGE") == 2 * (2 * len(TEXTS) + 1)
    responses = session_rows[session_rows["status"].notna()]
    assert {180, 200} <= set(responses["status"].astype(int))
    assert (responses["method"].astype(str) != "").all()
    # the 404 of the pager message to nobody
    failed = df[df["status"] == 404]
    assert len(failed) == 1 and failed["method"].iloc[0] == "MESSAGE"
    # src/dst flip with direction: alice's out rows come from alice's address
    alice_out = df[(df["owner"] == chat.alice.uri) & (df["direction"] == "out")]
    host, port = chat.alice.local_address
    assert (alice_out["src"].astype(str) == f"{host}:{port}").all()
    # transaction and dialog ids
    invite = session_rows[(session_rows["method"] == "INVITE")]
    assert invite["transaction_id"].nunique() == 2  # one transaction per hop
    assert session_rows["dialog_id"].dropna().nunique() == 1  # same dialog id seen from both ends
    assert (df["body_size"] >= 0).all()
    first = df.iloc[0]
    assert first["raw"].startswith(f"{first['method']} ") or first["raw"].startswith("SIP/2.0 ")
    assert int(df["body_size"].iloc[0]) == len(first["raw"].encode().split(b"\r\n\r\n", 1)[1])
    assert len(chat.trace.sip(owner=chat.bob.uri)) == int((df["owner"] == chat.bob.uri).sum())
    assert "raw" not in chat.trace.sip(raw=False).columns


def test_messages_frame_from_events(chat) -> None:
    m = chat.trace.messages()
    out = m[m["direction"] == "out"]
    inn = m[m["direction"] == "in"]
    assert out["text"].tolist() == TEXTS + ["pager hello", "anyone?"]
    assert inn["text"].tolist() == TEXTS + ["pager hello"]
    assert out["status"].astype(str).tolist() == ["delivered"] * 3 + ["failed"]
    assert out["state"].astype(str).tolist() == ["delivered"] * 3 + ["failed"]  # bob's receipts came back
    assert inn["state"].isna().all()  # the state is a sent message's
    assert out["sip_status"].astype(int).tolist() == [200, 200, 200, 404]
    assert out["mode"].astype(str).tolist() == ["session", "session", "pager", "pager"]
    assert out["session_id"].iloc[0] == chat.session.id and pd.isna(out["session_id"].iloc[2])
    assert (inn["session_id"].iloc[:2] == chat.bob_session.id).all()
    assert (out["latency"].iloc[:3] > 0).all() and pd.isna(out["latency"].iloc[3])
    assert (out["delivered_at"].iloc[:3] >= out["sent_at"].iloc[:3]).all() and pd.isna(out["delivered_at"].iloc[3])
    assert set(out["sender"]) == {chat.alice.uri} and set(inn["recipient"]) == {chat.bob.uri}
    assert out["recipient"].iloc[3] == "sip:nobody@example.test"
    # every row names the Call-ID its MESSAGE went with: the session's dialog, or a pager MESSAGE's own
    assert m["call_id"].notna().all()
    assert (out["call_id"].iloc[:2] == chat.call_id).all() and (inn["call_id"].iloc[:2] == chat.call_id).all()
    sip = chat.trace.sip()
    pager = sip[(sip["method"] == "MESSAGE") & sip["raw"].str.contains("pager hello", regex=False)]
    assert out["call_id"].iloc[2] == inn["call_id"].iloc[2] == pager["call_id"].iloc[0]
    ladder = chat.trace.ladder(call_id=out["call_id"].iloc[2])  # what the README shows
    assert len(ladder.arrows) == 4 and {a.call_id for a in ladder.arrows} == {
        pager["call_id"].iloc[0]
    }  # 2 hops x (MESSAGE, 200)


def test_messages_frame_reconstructed_from_sip(chat) -> None:
    m = chat.trace.messages(source="sip")
    assert_schema(m, frames.MESSAGES_SCHEMA)
    out = m[m["direction"] == "out"]
    assert out["text"].tolist() == TEXTS[:1] + ["two\nlines ✓", "pager hello", "anyone?"]
    assert out["sip_status"].astype(int).tolist() == [200, 200, 200, 404]
    # the receipts are MESSAGEs too: rebuilt from the wire, not listed as texts, but they give the state
    assert out["state"].astype(str).tolist() == ["delivered"] * 3 + ["failed"]
    assert out["mode"].astype(str).tolist() == ["session", "session", "pager", "pager"]
    assert (out["session_id"].iloc[:2] == chat.call_id).all()
    assert (out["latency"].iloc[:3] > 0).all()


def test_events_frame(chat) -> None:
    e = chat.trace.events()
    types = e["type"].astype(str).tolist()
    for t in (
        "EndpointStateChanged",
        "IncomingSession",
        "ComposingChanged",
        "MessageReceived",
        "MessageDelivered",
        "MessageFailed",
        "SessionTerminated",
        "ParticipantStateChanged",
    ):
        assert t in types, t
    composing = e[e["type"] == "ComposingChanged"]
    assert composing["state"].tolist()[:2] == ["composing", "idle"]
    assert (composing["participant"] == chat.alice.uri).all()
    incoming = e[e["type"] == "IncomingSession"].iloc[0]
    assert incoming["session_id"] == chat.bob_session.id and incoming["participant"] == chat.alice.uri
    assert e["detail"].str.startswith("{").all()


def test_history_filters(chat) -> None:
    h = chat.session.history()
    assert_schema(h, frames.MESSAGES_SCHEMA)
    assert h["text"].tolist() == TEXTS and (h["session_id"] == chat.session.id).all()
    assert chat.bob_session.history()["direction"].astype(str).tolist() == ["in", "in"]
    sip = chat.session.history("sip")
    assert_schema(sip, frames.SIP_SCHEMA)
    assert len(sip) > 0 and (sip["call_id"] == chat.call_id).all() and (sip["owner"] == chat.alice.uri).all()
    ev = chat.session.history("events")
    assert (ev["session_id"] == chat.session.id).all() and "SessionTerminated" in ev["type"].astype(str).tolist()
    eh = chat.alice.history()
    assert (eh["owner"] == chat.alice.uri).all() and len(eh) == 4
    assert (chat.bob.history("sip")["owner"] == chat.bob.uri).all()
    with pytest.raises(ValueError):
        chat.alice.history("nope")


def test_parquet_round_trip(chat, tmp_path) -> None:
    for name in ("sip", "messages", "events"):
        df = getattr(chat.trace, name)()
        path = tmp_path / f"{name}.parquet"
        chat.trace.to_parquet(path, frame=name)
        back = pd.read_parquet(path)
        assert list(back.columns) == list(df.columns)
        pd.testing.assert_frame_equal(frames.conform(back, frames.SCHEMAS[name]), df, check_categorical=False)


def test_csv_keeps_every_column(chat, tmp_path) -> None:
    for name in ("sip", "messages", "events"):
        df = getattr(chat.trace, name)()
        path = tmp_path / f"{name}.csv"
        df.to_csv(path, index=False)
        back = pd.read_csv(path, keep_default_na=False, na_values=[""])
        assert list(back.columns) == list(df.columns)
        back = frames.conform(back, frames.SCHEMAS[name])
        assert len(back) == len(df)
        for col in ("call_id", "text", "sender", "raw", "session_id", "participant"):
            if col in df:
                assert back[col].fillna("").tolist() == df[col].fillna("").tolist(), col
        for col in ("timestamp", "sent_at"):
            if col in df:
                assert (back[col].fillna(pd.Timestamp(0, tz="UTC")) == df[col].fillna(pd.Timestamp(0, tz="UTC"))).all()


def test_recording_off_lazy_and_cleared() -> None:
    raw = (
        b"MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4:5;branch=z9hG4bKa\r\nFrom: <sip:a@x>;tag=1\r\n"
        b'To: <sip:b@x>\r\nCall-ID: c1\r\nCSeq: 1 MESSAGE\r\nAuthorization: Digest username="a", response="secret"\r\n'
        b"Content-Length: 2\r\n\r\nhi"
    )
    t = Trace()
    t.enabled = False
    t.record_sip("out", "udp", ("1.2.3.4", 5), ("5.6.7.8", 9), raw, "a")
    t.record_event("a", object())
    assert len(t) == 0 and t.skipped == 2 and "recording off" in repr(t)
    t.enabled = True
    with t.paused():
        t.record_sip("out", "udp", ("1.2.3.4", 5), ("5.6.7.8", 9), raw, "a")
    assert len(t) == 0
    lazy = Trace(index="lazy")
    for tr in (t, lazy):
        tr.record_sip("out", "udp", ("1.2.3.4", 5), ("5.6.7.8", 9), raw, "a", ts=1.5e9)
        tr.record_sip(
            "in", "udp", ("::1", 5060), ("::1", 5070), raw.replace(b"Call-ID: c1", b"i: c2"), "a", ts=1.5e9 + 1
        )
    assert len(lazy._fields[0]) == 0  # nothing extracted while recording
    pd.testing.assert_frame_equal(t.sip(), lazy.sip())
    df = t.sip()
    assert df["call_id"].tolist() == ["c1", "c2"] and df["src"].astype(str).tolist() == ["1.2.3.4:5", "[::1]:5070"]
    assert "secret" not in "".join(df["raw"]) and "<redacted>" in df["raw"].iloc[0]
    assert df["timestamp"].iloc[0] == pd.Timestamp(1.5e9, unit="s", tz="UTC")
    t.clear()
    assert len(t) == 0 and len(t.sip()) == 0


def test_extract_handles_compact_forms_and_junk() -> None:
    raw = (
        b"\r\nINVITE sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bKx, SIP/2.0/UDP g;branch=y\r\ni: abc\r\n"
        b"f: <sip:a@b;tag=inuri>;TAG=yes\r\nt: <sip:c@d>\r\ncseq:7 INVITE\r\nl: 0\r\n\r\n"
    )
    assert extract(raw) == ("INVITE", None, "abc", 7, "INVITE", "yes", None, "z9hG4bKx", 0)
    assert extract(b"SIP/2.0 486 Busy Here\r\nCall-ID:x\r\n\r\n")[:3] == (None, 486, "x")
    assert extract(b"\x00\xff garbage")[2:] == (None,) * 6 + (0,)
    t = Trace()
    t.record_sip("in", "udp", ("1.2.3.4", 5), ("5.6.7.8", 9), b"\xff\xfe not sip \xff", "a")
    t.record_sip("in", "udp", ("1.2.3.4", 5), ("5.6.7.8", 9), b"FOO sip:x SIP/2.0\r\nCall-ID: q\r\n\r\n", "a")
    df = t.sip()
    assert_schema(df, frames.SIP_SCHEMA)
    assert pd.isna(df["method"].iloc[0]) and df["method"].iloc[1] == "FOO"  # an unknown method is appended
    assert "\ufffd" in df["raw"].iloc[0]


def test_read_pcap_is_lazy_attribute() -> None:
    assert callable(nim.read_pcap)


def test_drops_are_bounded_and_framed() -> None:
    t = Trace(max_records=10)
    for i in range(25):
        t.record_drop("udp", ("127.0.0.1", 1000 + i), f"garbage {i}", b"x" * 4096, "server")
    assert len(t.drops) == 10 and t.drop_count == 25 and t.drops[-1].reason == "garbage 24"
    df = t.drops_frame()
    assert_schema(df, frames.DROPS_SCHEMA)
    assert df["size"].tolist() == [2048] * 10 and df["remote"].iloc[-1] == "127.0.0.1:1024"
