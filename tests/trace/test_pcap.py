"""Pcap out (read back by tshark as SIP) and in (pcap and pcapng; UDP and TCP, IPv4 and IPv6, any port,
several messages in one TCP segment, one message across segments, retransmitted and out-of-order segments)."""

from __future__ import annotations

import shutil
import socket
import subprocess

import dpkt
import pandas as pd
import pytest

import notebook_im as nim
from notebook_im.trace import frames
from notebook_im.trace.pcap import looks_like_sip

from .test_frames import assert_schema

TSHARK = shutil.which("tshark")
# tshark is a Debian package that `make test` installs; a missing one fails these tests rather than skipping them
needs_tshark = pytest.mark.usefixtures("tshark_present")


@pytest.fixture
def tshark_present():
    assert TSHARK is not None, "tshark is not installed (Debian package tshark; `make test` installs it)"


def tshark_fields(path, *fields: str) -> list[list[str]]:
    out = subprocess.run(
        [TSHARK, "-r", str(path), "-Y", "sip", "-T", "fields", *sum((["-e", f] for f in fields), [])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [line.split("\t") for line in out.stdout.splitlines()]


@needs_tshark
def test_to_pcap_reads_back_as_sip_in_tshark(chat, tmp_path) -> None:
    for trace in (chat.trace, chat.server_trace):
        df = trace.sip()
        path = tmp_path / "out.pcap"
        assert trace.to_pcap(path) == len(df)
        rows = tshark_fields(path, "sip.Call-ID", "sip.Method", "sip.Status-Code", "sip.CSeq.seq")
        assert len(rows) == len(df)  # every message dissected as SIP (UDP and TCP)
        assert [r[0] for r in rows] == df["call_id"].tolist()
        methods = [r[1] or None for r in rows]
        assert methods == [None if pd.notna(s) else m for m, s in zip(df["method"].astype(str), df["status"])]
        assert [int(r[2]) for r in rows if r[2]] == df["status"].dropna().astype(int).tolist()


def test_pcap_round_trip_keeps_the_sip_frame(chat, tmp_path) -> None:
    path = tmp_path / "rt.pcap"
    chat.trace.to_pcap(path)
    back = nim.read_pcap(path)
    assert back.pcap_stats.sip_messages == len(chat.trace)
    a, b = chat.trace.sip(), back.sip()
    assert_schema(b, frames.SIP_SCHEMA)
    for col in (
        "call_id",
        "cseq",
        "from_tag",
        "to_tag",
        "branch",
        "transaction_id",
        "dialog_id",
        "body_size",
        "raw",
        "src",
        "dst",
        "transport",
        "method",
        "status",
    ):
        assert b[col].astype(object).tolist() == a[col].astype(object).tolist(), col
    assert ((b["timestamp"] - a["timestamp"]).abs() < pd.Timedelta("2us")).all()
    assert b["direction"].isna().all() and set(b["owner"]) == {"pcap:rt.pcap"}
    # with local= the direction comes back relative to that address
    host, port = chat.alice.local_address
    mine = nim.read_pcap(path, local=f"{host}:{port}").sip()
    alice = a[a["owner"] == chat.alice.uri]
    assert (mine.loc[alice.index, "direction"].astype(str) == alice["direction"].astype(str)).all()
    # the IM messages come back from the SIP alone (each message once, although both ends recorded it)
    m = back.messages()
    assert m["text"].tolist() == ["hello bob", "two\nlines ✓", "pager hello", "anyone?"]
    assert m["sip_status"].astype(int).tolist() == [200, 200, 200, 404]
    assert m["status"].astype(str).tolist() == ["delivered"] * 3 + ["failed"]


# -- synthetic captures --------------------------------------------------------------------------------
def sip_msg(method: str, call_id: str, cseq: int, body: str = "", port: int = 5999) -> bytes:
    b = body.encode()
    return (
        f"{method} sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.1:{port};branch=z9hG4bK{call_id}{cseq}\r\n"
        f"From: <sip:alice@example.test>;tag=a{cseq}\r\nTo: <sip:bob@example.test>\r\nCall-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\nContent-Type: text/plain\r\nContent-Length: {len(b)}\r\n\r\n"
    ).encode() + b


def ok(req: bytes) -> bytes:
    lines = req.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    keep = [
        line + b";tag=b1" if line.startswith(b"To:") else line
        for line in lines
        if line.split(b":")[0] in (b"Via", b"From", b"To", b"Call-ID", b"CSeq")
    ]
    return b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b"\r\nContent-Length: 0\r\n\r\n"


def ip_packet(v6: bool, src: str, dst: str, l4, proto: int) -> bytes:
    if v6:
        ip = dpkt.ip6.IP6(
            src=socket.inet_pton(socket.AF_INET6, src),
            dst=socket.inet_pton(socket.AF_INET6, dst),
            nxt=proto,
            hlim=64,
            data=l4,
        )
        ip.plen = len(bytes(l4))
        ip.extension_hdrs = {}
        return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=dpkt.ethernet.ETH_TYPE_IP6, data=ip))
    ip = dpkt.ip.IP(
        src=socket.inet_pton(socket.AF_INET, src), dst=socket.inet_pton(socket.AF_INET, dst), p=proto, data=l4
    )
    ip.len = 20 + len(bytes(l4))
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def udp(v6: bool, src, dst, payload: bytes) -> bytes:
    u = dpkt.udp.UDP(sport=src[1], dport=dst[1], data=payload)
    u.ulen = 8 + len(payload)
    return ip_packet(v6, src[0], dst[0], u, dpkt.ip.IP_PROTO_UDP)


def tcp(v6: bool, src, dst, seq: int, payload: bytes = b"", flags: int = dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH) -> bytes:
    t = dpkt.tcp.TCP(
        sport=src[1], dport=dst[1], seq=seq & 0xFFFFFFFF, ack=1, off=5, flags=flags, win=65535, data=payload
    )
    return ip_packet(v6, src[0], dst[0], t, dpkt.ip.IP_PROTO_TCP)


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_read_pcap_udp_and_reassembled_tcp(tmp_path, fmt: str, v6: bool) -> None:
    a, b = ("fd00::1", "fd00::2") if v6 else ("10.0.0.1", "10.0.0.2")
    A_UDP, B_UDP = (a, 40000), (b, 7777)  # SIP on an unusual port
    A_TCP, B_TCP = (a, 50000), (b, 5061)
    pager = sip_msg("MESSAGE", "udp-1", 1, "over udp")
    m1, m2, m3 = (
        sip_msg("MESSAGE", "tcp-1", 1, "first"),
        sip_msg("MESSAGE", "tcp-1", 2, "second"),
        sip_msg("MESSAGE", "tcp-1", 3, "third, split " + "x" * 500),
    )
    isn = 0xFFFFFF00  # the sequence numbers wrap at 2**32 inside the stream
    packets = [
        udp(v6, A_UDP, B_UDP, pager),
        udp(v6, B_UDP, A_UDP, ok(pager)),
        udp(v6, A_UDP, B_UDP, b"\r\n\r\n"),  # keep-alive: not a message
        udp(v6, A_UDP, (b, 53), b"\x12\x34 not sip at all"),
        tcp(v6, A_TCP, B_TCP, isn, flags=dpkt.tcp.TH_SYN),
        tcp(v6, A_TCP, B_TCP, isn + 1, m1 + m2),  # two messages in one segment
        tcp(v6, A_TCP, B_TCP, isn + 1, m1 + m2),  # ... retransmitted
        tcp(v6, A_TCP, B_TCP, isn + 1 + len(m1 + m2) + 100, m3[100:]),  # out of order: the tail first
        tcp(v6, A_TCP, B_TCP, isn + 1 + len(m1 + m2), m3[:100]),  # then the head: m3 completes
        tcp(v6, B_TCP, A_TCP, 1000, ok(m1) + ok(m2)[:30]),  # answers, one across segments
        tcp(v6, B_TCP, A_TCP, 1000 + len(ok(m1)) + 30, ok(m2)[30:] + ok(m3)),
        tcp(v6, (a, 50001), (b, 80), 5, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),  # not SIP: ignored
    ]
    path = tmp_path / f"cap.{fmt}"
    with open(path, "wb") as f:
        writer = dpkt.pcapng.Writer(f) if fmt == "pcapng" else dpkt.pcap.Writer(f, snaplen=65535)
        for i, p in enumerate(packets):
            writer.writepkt(p, ts=1_700_000_000 + i * 0.01)
    trace = nim.read_pcap(path, local=a)
    df = trace.sip()
    assert_schema(df, frames.SIP_SCHEMA)
    assert df["call_id"].tolist() == ["udp-1", "udp-1", "tcp-1", "tcp-1", "tcp-1", "tcp-1", "tcp-1", "tcp-1"]
    assert df["transport"].astype(str).tolist() == ["udp"] * 2 + ["tcp"] * 6
    assert df["cseq"].tolist() == [1, 1, 1, 2, 3, 1, 2, 3]
    assert df["status"].fillna(0).astype(int).tolist() == [0, 200, 0, 0, 0, 200, 200, 200]
    assert df["raw"].tolist()[2:5] == [m.decode() for m in (m1, m2, m3)]
    assert df["direction"].astype(str).tolist() == ["out", "in", "out", "out", "out", "in", "in", "in"]
    src = f"[{a}]:40000" if v6 else f"{a}:40000"
    assert df["src"].astype(str).iloc[0] == src
    # m3 is stamped with the segment that completed it (the 9th packet)
    assert df["timestamp"].iloc[4] == pd.Timestamp(1_700_000_000 + 8 * 0.01, unit="s", tz="UTC").round("us")
    assert trace.pcap_stats.tcp_streams_ignored == 1
    m = trace.messages()
    assert m["text"].tolist() == ["over udp", "first", "second", "third, split " + "x" * 500]
    assert m["status"].astype(str).tolist() == ["delivered"] * 4 and m["mode"].astype(str).unique().tolist() == [
        "pager"
    ]


def test_read_pcap_linux_cooked_capture(tmp_path) -> None:
    pager = sip_msg("OPTIONS", "sll-1", 1)
    u = dpkt.udp.UDP(sport=5060, dport=5060, data=pager)
    u.ulen = 8 + len(pager)
    ip = dpkt.ip.IP(src=socket.inet_aton("127.0.0.1"), dst=socket.inet_aton("127.0.0.1"), p=17, data=u)
    ip.len = 20 + len(bytes(u))
    sll = dpkt.sll.SLL(type=3, hrd=772, hlen=6, hdr=b"\x00" * 8, ethtype=0x0800, data=ip)
    path = tmp_path / "sll.pcap"
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_LINUX_SLL)
        w.writepkt(bytes(sll), ts=1.0)
    df = nim.read_pcap(path).sip()
    assert df["call_id"].tolist() == ["sll-1"] and df["method"].tolist() == ["OPTIONS"]


def test_looks_like_sip() -> None:
    assert looks_like_sip(b"MESSAGE sip:a@b SIP/2.0\r\n")
    assert looks_like_sip(b"\r\nSIP/2.0 200 OK\r\n")
    assert not looks_like_sip(b"GET / HTTP/1.1\r\n")
    assert not looks_like_sip(b"\x00\x01\x02")
