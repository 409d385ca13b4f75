"""Adversarial TCP for the capture reader: overlaps with differing bytes (the same stream as tshark's follow, first seen
wins), reordering, gaps that never fill (bounded, skipped, counted), sequence wraparound, SYN/FIN/RST reuse of a
4-tuple, 100,000 open flows (bounded, LRU eviction counted), and time linear in the input."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from notebook_im.trace.capture import CaptureLimits, CaptureStats, capture_files, scan
from support.captures import sip_request, tcp_packet, udp_packet, write_packets

TSHARK = shutil.which("tshark")
A, B = ("10.0.0.1", 40000), ("10.0.0.2", 5060)
SYN, FIN, RST = 0x02, 0x11, 0x04


class Collect:
    """A sink that keeps each flow's messages in order."""

    def __init__(self) -> None:
        self.flows: dict[tuple, list[bytes]] = defaultdict(list)
        self.all: list[tuple[int, str, bytes]] = []

    def begin(self, owner: str) -> None:
        pass

    def add(self, ts: int, transport: str, src: tuple, dst: tuple, raw: bytes) -> None:
        self.flows[(src, dst)].append(raw)
        self.all.append((ts, transport, raw))


def run(path: Path, limits: CaptureLimits | None = None) -> tuple[Collect, CaptureStats]:
    sink = Collect()
    stats = scan(capture_files(path), sink, limits)
    return sink, stats


def follow(path: Path, stream: int = 0) -> bytes:
    """The client-to-server bytes of TCP stream `stream` as `tshark -q -z follow,tcp,raw,N` shows them."""
    assert TSHARK, "tshark is not installed (Debian package tshark; `make test` installs it)"
    out = subprocess.run(
        [TSHARK, "-r", str(path), "-q", "-z", f"follow,tcp,raw,{stream}"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    body = lines[lines.index(next(x for x in lines if x.startswith("Node 1:"))) + 1 :]
    # the server's bytes are indented with a tab; the client's are not
    return b"".join(bytes.fromhex(x.strip()) for x in body if x.strip() and not x.startswith(("=", "\t")))


def tshark_call_ids(path: Path, *prefs: str) -> list[str]:
    args = [TSHARK, "-r", str(path)]
    for p in prefs:
        args += ["-o", p]
    out = subprocess.run(
        args + ["-Y", "sip", "-T", "fields", "-e", "sip.Call-ID"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [c for line in out.stdout.splitlines() for c in line.split(",") if c]


def messages(n: int, tag: str = "c", body: int = 40) -> list[bytes]:
    return [sip_request(f"{tag}{i:04d}abcdefgh", i + 1, "x" * (body + i % 7)) for i in range(n)]


# -- overlaps and reordering against tshark ------------------------------------------------------------------------
CASES = {  # segments after the SYN (isn 999, data from 1000) -> the stream tshark's follow shows (checked below)
    "in-order overlap, different bytes": ([(1000, b"0123456789"), (1005, b"XXXXXabcde")], b"0123456789abcde"),
    "held overlap: the first that reaches the stream wins": (
        [(1000, b"aaaa"), (1014, b"PPPPPqqqqq"), (1009, b"RRRRRSSSSS"), (1004, b"fffff")],
        b"aaaafffffRRRRRSSSSSqqqqq",
    ),
    "same start: first seen, then the longer tail": (
        [(1000, b"aaaa"), (1010, b"BBB"), (1010, b"CCCCCC"), (1004, b"dddddd")],
        b"aaaaddddddBBBCCC",
    ),
    "held then an overlapping gap filler": (
        [(1000, b"aaaa"), (1010, b"HHHHHH"), (1004, b"ffffffffff")],
        b"aaaaffffffffffHH",
    ),
    "held inside held": ([(1000, b"aaaa"), (1008, b"LLLLLLLL"), (1010, b"ii"), (1004, b"gggg")], b"aaaaggggLLLLLLLL"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_overlap_policy_is_tsharks(tmp_path: Path, name: str) -> None:
    segments, expected = CASES[name]
    # the stream must be SIP for the reader to keep it: put a message in front and read the bytes back out of it
    head = sip_request("overlap", 1, "")  # Content-Length 0: what follows it stays buffered
    shift = len(head)
    packets = [tcp_packet(A, B, 999 - shift, flags=SYN), tcp_packet(A, B, 1000 - shift, head)]
    packets += [tcp_packet(A, B, seq, data) for seq, data in segments]
    path = write_packets(tmp_path / "o.pcap", packets)
    assert follow(path) == head + expected  # what tshark shows is what the table above says
    from notebook_im.trace import capture

    c = capture._Counters()
    got = bytearray()
    tcp = capture._Tcp(CaptureLimits(), c, lambda ts, key, raw: got.extend(raw))
    for ts, _lt, buf in capture._records(capture_files(path)[0], c):
        seq = int.from_bytes(buf[38:42], "big")
        flags = buf[47]
        tcp.segment(ts, "k", seq, flags, buf[54:])
    # the message is cut by its Content-Length (0): the rest is the start of the next "message", still buffered
    flow = tcp.flows["k"]
    assert bytes(got) + bytes(flow.buf) == head + expected


def adversarial_stream(
    rnd: random.Random, msgs: list[bytes], isn: int, conflicts: bool = True, copies: bool = True
) -> tuple[list[tuple[int, bytes]], bytes]:
    """Cut the stream into segments, reorder them within windows, and add overlapping copies whose bytes differ
    (lower-case a..h changed to upper case, so either version is still SIP; `conflicts=False`: the same bytes).
    Every byte is covered."""
    stream = b"".join(msgs)
    cuts = sorted(rnd.sample(range(1, len(stream)), len(stream) // 60))
    bounds = [0, *cuts, len(stream)]
    segs = [(bounds[i], stream[bounds[i] : bounds[i + 1]]) for i in range(len(bounds) - 1)]
    out: list[tuple[int, bytes]] = []
    for i in range(0, len(segs), 6):
        window = segs[i : i + 6]
        rnd.shuffle(window)
        out += window
    extra = []
    for _ in range(len(segs) // 3 if copies else 0):
        a = rnd.randrange(0, len(stream) - 20)
        b = min(len(stream), a + rnd.randint(5, 120))
        piece = bytearray(stream[a:b])
        for j in range(len(piece)):
            if conflicts and 97 <= piece[j] <= 104 and rnd.random() < 0.5:  # a..h -> A..H
                piece[j] -= 32
        extra.append((rnd.randrange(0, len(out) + 1), (a, bytes(piece))))
    for pos, seg in sorted(extra, key=lambda e: -e[0]):
        out.insert(pos, seg)
    return [((isn + 1 + off) & 0xFFFFFFFF, data) for off, data in out], stream


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_reordered_overlapping_stream_equals_tshark_follow(tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    isn = 0xFFFFF000 if seed == 2 else rnd.getrandbits(32)  # seed 2 wraps around 2**32 mid-stream
    msgs = messages(25, tag=f"s{seed}")
    segs, _ = adversarial_stream(rnd, msgs, isn)
    packets = [tcp_packet(A, B, isn, flags=SYN)] + [tcp_packet(A, B, s, d) for s, d in segs]
    path = write_packets(tmp_path / "adv.pcap", packets)
    sink, stats = run(path)
    ours = b"".join(sink.flows[(A, B)])
    assert ours == follow(path)  # byte for byte the stream tshark reassembles
    assert len(sink.flows[(A, B)]) == len(msgs)
    assert stats.tcp_out_of_order > 0 and stats.tcp_duplicate_bytes > 0


@pytest.mark.parametrize("seed", [5, 6])
def test_reordered_stream_call_ids_equal_tsharks_sip_dissector(tmp_path: Path, seed: int) -> None:
    """With segments reordered, tshark's SIP dissector (out-of-order reassembly on: it is off by default in
    Wireshark 4.0) finds the same messages. (With overlapping copies on top it loses most of them, so the
    byte-level comparison above is against follow.)"""
    rnd = random.Random(seed)
    isn = rnd.getrandbits(32)
    msgs = messages(25, tag=f"q{seed}")
    segs, _ = adversarial_stream(rnd, msgs, isn, copies=False)
    packets = [tcp_packet(A, B, isn, flags=SYN)] + [tcp_packet(A, B, s, d) for s, d in segs]
    path = write_packets(tmp_path / "adv.pcap", packets)
    sink, _ = run(path)
    from notebook_im.record.extract import extract

    ours_ids = [extract(m)[2] for m in sink.flows[(A, B)]]
    assert len(ours_ids) == len(msgs)
    assert ours_ids == tshark_call_ids(path, "tcp.reassemble_out_of_order:TRUE")


def test_in_order_retransmissions_with_different_bytes_match_tshark_defaults(tmp_path: Path) -> None:
    msgs = messages(10, tag="r")
    stream = b"".join(msgs)
    isn = 5000
    packets = [tcp_packet(A, B, isn, flags=SYN)]
    pos = 0
    rnd = random.Random(9)
    while pos < len(stream):
        n = rnd.randint(30, 200)
        packets.append(tcp_packet(A, B, isn + 1 + pos, stream[pos : pos + n]))
        if rnd.random() < 0.5:  # a retransmission of this segment with altered Call-IDs
            more = stream[pos : pos + n].replace(b"abcd", b"ABCD")
            packets.append(tcp_packet(A, B, isn + 1 + pos, more))
        pos += n
    path = write_packets(tmp_path / "rt.pcap", packets)
    sink, stats = run(path)
    assert b"".join(sink.flows[(A, B)]) == follow(path)
    from notebook_im.record.extract import extract

    assert [extract(m)[2] for m in sink.flows[(A, B)]] == tshark_call_ids(path)  # tshark with its defaults


# -- gaps, wraparound, reuse ---------------------------------------------------------------------------------------
def test_gap_that_never_fills_is_skipped_bounded_and_counted(tmp_path: Path) -> None:
    msgs = messages(200, tag="g", body=400)
    stream = b"".join(msgs)
    isn = 100
    hole = (len(msgs[0]) + 10, len(msgs[0]) + 60)  # 50 bytes of the second message never arrive
    packets = [tcp_packet(A, B, isn, flags=SYN)]
    for pos in range(0, len(stream), 100):
        lo, hi = pos, min(pos + 100, len(stream))
        if hi <= hole[0] or lo >= hole[1]:
            packets.append(tcp_packet(A, B, isn + 1 + lo, stream[lo:hi]))
        else:
            if lo < hole[0]:
                packets.append(tcp_packet(A, B, isn + 1 + lo, stream[lo : hole[0]]))
            if hi > hole[1]:
                packets.append(tcp_packet(A, B, isn + 1 + hole[1], stream[hole[1] : hi]))
    path = write_packets(tmp_path / "gap.pcap", packets)
    limits = CaptureLimits(flow_pending_bytes=16 * 1024, flow_pending_segments=64)
    sink, stats = run(path, limits)
    got = sink.flows[(A, B)]
    assert stats.tcp_gaps == 1 and stats.tcp_gap_bytes == hole[1] - hole[0]
    assert stats.tcp_resyncs == 1  # picked up at the next start line
    assert stats.tcp_peak_buffered <= 16 * 1024 + 200  # held bytes stayed within the cap
    assert got[0] == msgs[0] and got[1:] == msgs[2:]  # only the message with the hole is lost
    assert stats.tcp_incomplete_bytes > 0


def test_sequence_numbers_wrap_inside_the_stream_out_of_order(tmp_path: Path) -> None:
    msgs = messages(6, tag="w")
    stream = b"".join(msgs)
    isn = 0xFFFFFFFF - 150  # the wrap falls inside the first message
    segs = [(i, stream[i : i + 97]) for i in range(0, len(stream), 97)]
    segs[1], segs[2] = segs[2], segs[1]
    packets = [tcp_packet(A, B, isn, flags=SYN)] + [tcp_packet(A, B, isn + 1 + off, d) for off, d in segs]
    sink, stats = run(write_packets(tmp_path / "wrap.pcap", packets))
    assert sink.flows[(A, B)] == msgs and stats.tcp_out_of_order == 1 and stats.tcp_gaps == 0


def test_syn_fin_rst_reuse_of_a_four_tuple(tmp_path: Path) -> None:
    one, two, three = messages(2, "one"), messages(2, "two"), messages(2, "three")
    p = [tcp_packet(A, B, 1000, flags=SYN)]
    p += [tcp_packet(A, B, 1001, one[0]), tcp_packet(A, B, 1001 + len(one[0]), one[1])]
    p += [tcp_packet(A, B, 1001 + len(one[0] + one[1]), flags=FIN)]
    p += [tcp_packet(A, B, 1001 + len(one[0]), one[1])]  # a late retransmission after the FIN
    p += [tcp_packet(A, B, 7_000_000, flags=SYN)]  # the same 4-tuple, a new connection
    p += [tcp_packet(A, B, 7_000_001, two[0]), tcp_packet(A, B, 7_000_001 + len(two[0]), two[1][:50])]
    p += [tcp_packet(A, B, 7_000_001 + len(two[0]) + 50, flags=RST)]  # reset mid-message: the half is dropped
    tail = b"garbage tail of something\r\n"
    p += [
        tcp_packet(A, B, 99, tail + three[0]),  # no SYN: joined midway
        tcp_packet(A, B, 99 + len(tail + three[0]), three[1]),
    ]
    p += [
        tcp_packet(A, B, 500, flags=SYN),
        tcp_packet(A, B, 500, flags=SYN),  # a retransmitted SYN changes nothing
        tcp_packet(A, B, 501, one[0]),
    ]
    sink, stats = run(write_packets(tmp_path / "reuse.pcap", p))
    assert sink.flows[(A, B)] == one + [two[0]] + three + [one[0]]
    assert stats.tcp_reused == 2  # the RST, and a SYN on an open 4-tuple
    assert stats.tcp_duplicate_bytes == len(one[1])  # the late copy was recognised as old
    assert stats.tcp_incomplete_bytes == 50
    assert stats.tcp_resyncs == 0 and stats.tcp_streams == 4


def test_stream_that_does_not_start_like_sip_is_ignored_and_counted(tmp_path: Path) -> None:
    http = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 50
    p = [tcp_packet(A, B, 1, flags=SYN), tcp_packet(A, B, 2, http), tcp_packet(B, A, 1, b"HTTP/1.1 200 OK\r\n\r\n")]
    p += [tcp_packet(("10.0.0.3", 1), B, 7, b"\x16\x03\x01" + bytes(range(256)) * 40)]  # TLS-ish, joined midway
    sink, stats = run(write_packets(tmp_path / "http.pcap", p))
    assert sink.all == [] and stats.tcp_streams_ignored == 3 and stats.sip_messages == 0


# -- many flows, linear time ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_100k_open_flows_stay_within_the_caps(tmp_path: Path) -> None:
    half = sip_request("many", 1, "x" * 100)[:120]  # a header section that never ends
    packets = []
    for i in range(100_000):
        src = (f"10.{1 + i // 65000}.{(i // 250) % 250}.{1 + i % 250}", 1024 + i % 60000)
        packets.append(tcp_packet(src, B, 1000, flags=SYN))
        packets.append(tcp_packet(src, B, 1001, half))
    packets.append(udp_packet(A, B, sip_request("after", 1)))
    path = write_packets(tmp_path / "flows.pcap", packets)
    limits = CaptureLimits(max_flows=20_000, tcp_buffer_bytes=1_000_000)
    sink, stats = run(path, limits)
    assert stats.tcp_streams == 100_000
    assert stats.tcp_peak_flows <= 20_000
    assert stats.tcp_peak_buffered <= 1_000_000 + len(half)
    assert stats.tcp_flows_evicted >= 100_000 - 20_000
    assert stats.tcp_evicted_bytes + stats.tcp_incomplete_bytes == 100_000 * len(half)
    assert [raw for _, _, raw in sink.all] == [sip_request("after", 1)]


@pytest.mark.slow
def test_100k_open_flows_memory_bounded_in_a_child(tmp_path: Path) -> None:
    """Peak RSS of a process reading 100,000 half-open flows with a 256 MiB budget stays below it: the flows are
    capped at 14,336 (the rest evicted, least recently used first) and cost about a kilobyte each."""
    half = sip_request("many", 1, "x" * 100)[:120]
    packets = []
    for i in range(100_000):
        src = (f"10.{1 + i // 65000}.{(i // 250) % 250}.{1 + i % 250}", 1024 + i % 60000)
        packets += [tcp_packet(src, B, 1000, flags=SYN), tcp_packet(src, B, 1001, half)]
    path = write_packets(tmp_path / "f.pcap", packets)
    del packets
    # VmHWM: this process's peak since exec (ru_maxrss would include the pytest process it was forked from)
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from notebook_im.trace.capture import scan, capture_files, CaptureLimits
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
class S:
    def begin(self, o): pass
    def add(self, *a): pass
base = hwm()
stats = scan(capture_files({str(path)!r}), S(), CaptureLimits(memory="256MiB"))
print(stats.tcp_peak_flows, stats.tcp_flows_evicted, base, hwm())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    peak_flows, evicted, base, peak = map(int, out.stdout.split())
    assert peak_flows == (256 - 224) * 1024 * 1024 // 4096 and evicted == 100_000 - peak_flows
    assert (peak - base) / 1024 < 40, f"reading grew RSS by {(peak - base) / 1024:.0f} MiB"
    assert peak / 1024 < 256, f"peak RSS {peak / 1024:.0f} MiB over the 256 MiB budget"


def adversarial_capture(path: Path, n: int, seed: int = 5) -> Path:
    """n packets of hostile TCP: 40 flows at once, each reordered in windows, with overlapping copies, gaps that
    never fill, RST/SYN reuse, and a flow that sends its header one byte at a time."""
    rnd = random.Random(seed)
    packets: list[bytes] = []
    flows = []
    for f in range(40):
        src = (f"10.9.0.{f + 1}", 30000 + f)
        msgs = messages(max(2, n // 600), tag=f"f{f}", body=200)
        segs, _ = adversarial_stream(rnd, msgs, 10_000 * f)
        if f % 5 == 0:
            segs = [s for s in segs if rnd.random() > 0.05]  # gaps that never fill
        flows.append([tcp_packet(src, B, 10_000 * f, flags=SYN)] + [tcp_packet(src, B, s, d) for s, d in segs])
    slow = sip_request("slow", 1, "y" * 50)
    flows.append(
        [tcp_packet(("10.9.1.1", 1), B, 0, flags=SYN)]
        + [
            tcp_packet(("10.9.1.1", 1), B, 1 + i % len(slow), slow[i % len(slow) : i % len(slow) + 1])
            for i in range(n // 10)
        ]
    )
    while len(packets) < n and any(flows):
        flow = rnd.choice([f for f in flows if f])
        packets.append(flow.pop(0))
        if rnd.random() < 0.002:
            packets.append(tcp_packet(("10.9.0.1", 30000), B, rnd.getrandbits(32), flags=RST))
    return write_packets(path, packets[:n])


@pytest.mark.slow
def test_time_is_linear_in_adversarial_input(tmp_path: Path) -> None:
    small = adversarial_capture(tmp_path / "n.pcap", 20_000)
    large = adversarial_capture(tmp_path / "4n.pcap", 80_000)

    def cost(path: Path) -> float:
        best = float("inf")
        for _ in range(3):
            t = time.process_time()
            sink, stats = run(path, CaptureLimits(flow_pending_segments=64, flow_pending_bytes=64 * 1024))
            best = min(best, time.process_time() - t)
        assert stats.packets > 0 and stats.tcp_gaps > 0 and stats.tcp_out_of_order > 0
        return best

    ratio = cost(large) / cost(small)
    assert ratio < 8, f"4x the packets took {ratio:.1f}x the time"
