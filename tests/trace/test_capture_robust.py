"""The capture reader against broken and hostile files: cut at every byte (mid-record, mid-header; pcap, pcapng and
gzip), random corruption, garbage link types and lengths, non-SIP traffic; every skip counted, never a crash. Also
gzip and pcapng details, and directories of rotated captures read in time order."""

from __future__ import annotations

import gzip
import random
import struct
from pathlib import Path

import dpkt
import pytest

import notebook_im as nim
from notebook_im.trace.capture import CaptureStats, capture_files, scan
from support.captures import sip_request, tcp_packet, udp_packet, write_packets

from .test_tcp_reassembly import Collect

A, B = ("10.0.0.1", 5060), ("10.0.0.2", 5060)


def read(path: Path | list[Path]) -> tuple[Collect, CaptureStats]:
    sink = Collect()
    return sink, scan(capture_files(path), sink)


def small_capture(tmp_path: Path) -> tuple[Path, int]:
    """Six SIP datagrams and a TCP message (two segments): 7 messages."""
    packets = [udp_packet(A, B, sip_request(f"u{i}", i + 1)) for i in range(6)]
    m = sip_request("t0", 1)
    packets += [tcp_packet(A, B, 1, flags=0x02), tcp_packet(A, B, 2, m[:50]), tcp_packet(A, B, 52, m[50:])]
    return write_packets(tmp_path / "small.pcap", packets), 7


def pcapng_bytes(packets: list[bytes], *, tsresol: int | None = None) -> bytes:
    import io

    f = io.BytesIO()
    w = dpkt.pcapng.Writer(f)
    for i, p in enumerate(packets):
        w.writepkt(p, ts=1_700_000_000 + i)
    return f.getvalue()


@pytest.mark.parametrize("kind", ["pcap", "pcapng", "pcap.gz"])
def test_cut_at_every_byte_never_raises_and_is_counted(tmp_path: Path, kind: str) -> None:
    pcap, total = small_capture(tmp_path)
    data = pcap.read_bytes()
    if kind == "pcapng":
        packets = [buf for _ts, buf in dpkt.pcap.Reader(open(pcap, "rb"))]
        data = pcapng_bytes(packets)
    if kind == "pcap.gz":
        data = gzip.compress(data)
    path = tmp_path / f"cut.{kind}"
    step = 1 if kind != "pcap.gz" else 3
    seen = []
    for cut in range(0, len(data), step):
        path.write_bytes(data[:cut])
        sink, stats = read(path)
        assert stats.files_truncated + stats.files_corrupt <= 1
        assert stats.sip_messages == len(sink.all) <= total
        if cut > 24 and kind == "pcap":
            assert stats.files_truncated == (0 if cut == len(data) else 1) or stats.files_corrupt == 0
        seen.append(stats.sip_messages)
    assert seen == sorted(seen)  # a longer prefix never finds fewer messages
    path.write_bytes(data)
    assert read(path)[1].sip_messages == total
    assert read(path)[1].files_truncated == 0


def test_random_corruption_never_raises(tmp_path: Path) -> None:
    pcap, _ = small_capture(tmp_path)
    data = bytearray(pcap.read_bytes())
    rnd = random.Random(7)
    path = tmp_path / "bad.pcap"
    for _ in range(400):
        bad = bytearray(data)
        for _ in range(rnd.randint(1, 12)):
            bad[rnd.randrange(len(bad))] = rnd.getrandbits(8)
        path.write_bytes(bytes(bad))
        sink, stats = read(path)
        assert stats.packets <= 9 and stats.sip_messages == len(sink.all)
    ng = bytearray(pcapng_bytes([buf for _ts, buf in dpkt.pcap.Reader(open(pcap, "rb"))]))
    for _ in range(400):
        bad = bytearray(ng)
        for _ in range(rnd.randint(1, 12)):
            bad[rnd.randrange(len(bad))] = rnd.getrandbits(8)
        path.write_bytes(bytes(bad))
        sink, stats = read(path)
        assert stats.sip_messages == len(sink.all)


def test_garbage_record_length_ends_that_file_only(tmp_path: Path) -> None:
    good, total = small_capture(tmp_path)
    data = bytearray(good.read_bytes())
    struct.pack_into("<I", data, 24 + 8, 0x7FFFFFF0)  # the first record claims 2 GB
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(bytes(data))
    sink, stats = read([bad, good])
    assert stats.files == 2 and stats.files_corrupt == 1 and stats.sip_messages == total


def test_garbage_link_types_and_non_sip_traffic_are_counted(tmp_path: Path) -> None:
    sip = sip_request("ok", 1)
    weird = write_packets(tmp_path / "lt.pcap", [udp_packet(A, B, sip)] * 3, linktype=147)  # a user DLT
    sink, stats = read(weird)
    assert stats.unsupported_linktype == 3 and stats.sip_messages == 0
    eth = lambda etype, payload: b"\x00" * 12 + struct.pack("!H", etype) + payload  # noqa: E731
    ip_other = bytearray(udp_packet(A, B, b"x" * 20))
    ip_other[14 + 9] = 1  # ICMP
    frag = bytearray(udp_packet(A, B, sip))
    frag[14 + 6] = 0x20  # more fragments
    short_ip = udp_packet(A, B, sip)[:30]  # cut inside the IP header
    snapped = udp_packet(A, B, sip)[:-10]  # cut by the snap length
    lying = bytearray(udp_packet(A, B, sip))
    struct.pack_into("!H", lying, 14 + 20 + 4, 9000)  # UDP length beyond the packet
    vlan = b"\x00" * 12 + b"\x81\x00\x00\x05" + udp_packet(A, B, sip_request("vlan", 1))[12:]
    packets = [
        eth(0x0806, b"\x00" * 28),
        bytes(ip_other),
        bytes(frag),
        short_ip,
        snapped,
        bytes(lying),
        udp_packet(A, B, b"\x12\x34 DNS or RTP"),
        udp_packet(A, B, b"\r\n\r\n"),
        vlan,
        b"\x01\x02",
        udp_packet(A, B, sip),
    ]
    sink, stats = read(write_packets(tmp_path / "mixed.pcap", packets))
    assert [r for _, _, r in sink.all] == [sip_request("vlan", 1), sip]
    assert (
        stats.non_ip,
        stats.other_ip,
        stats.fragments_skipped,
        stats.truncated_packets,
        stats.malformed_packets,
        stats.non_sip_udp,
        stats.keepalives,
    ) == (1, 1, 1, 3, 1, 1, 1)
    assert stats.skipped == 8 and stats.packets == len(packets)


def test_a_named_file_that_is_not_a_capture_is_counted_corrupt(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a capture")
    sink, stats = read(notes)
    assert stats.files_corrupt == 1 and stats.packets == 0
    with pytest.raises(FileNotFoundError):
        capture_files(tmp_path / "missing.pcap")
    with pytest.raises(ValueError, match="no pcap"):
        capture_files(tmp_path / "empty-dir") if (tmp_path / "empty-dir").mkdir() is None else None
    with pytest.raises(TypeError):
        capture_files([42])  # type: ignore[list-item]


def test_gzip_pcapng_with_interfaces_resolutions_and_simple_packets(tmp_path: Path) -> None:
    """pcapng: two interfaces (Ethernet with nanosecond if_tsresol and raw IP with an if_tsoffset), an enhanced
    packet on each, a simple packet block, a name-resolution block to skip; gzip-compressed; big-endian too."""

    def block(btype: int, body: bytes, e: str) -> bytes:
        body += b"\x00" * (-len(body) % 4)
        n = 12 + len(body)
        return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)

    def opt(code: int, value: bytes, e: str) -> bytes:
        return struct.pack(e + "HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)

    for e in ("<", ">"):
        shb = block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1), e)
        idb0 = block(1, struct.pack(e + "HHI", 1, 0, 65535) + opt(9, b"\x09", e) + opt(0, b"", e), e)
        idb1 = block(
            1, struct.pack(e + "HHI", 101, 0, 65535) + opt(14, struct.pack(e + "q", 100), e) + opt(0, b"", e), e
        )
        eth = udp_packet(A, B, sip_request("ng-eth", 1))
        ts0 = 1_700_000_000_123_456_789  # nanoseconds on interface 0
        epb0 = block(6, struct.pack(e + "IIIII", 0, ts0 >> 32, ts0 & 0xFFFFFFFF, len(eth), len(eth)) + eth, e)
        raw2 = udp_packet(A, B, sip_request("ng-raw", 1))[14:]
        ts1 = 1_700_000_000_000_001  # microseconds (+100 s offset)
        epb1 = block(6, struct.pack(e + "IIIII", 1, ts1 >> 32, ts1 & 0xFFFFFFFF, len(raw2), len(raw2)) + raw2, e)
        nrb = block(4, b"\x00" * 8, e)
        spb = block(3, struct.pack(e + "I", len(eth)) + udp_packet(A, B, sip_request("ng-spb", 1)), e)
        path = tmp_path / f"x{e == '<'}.pcapng.gz"
        path.write_bytes(gzip.compress(shb + idb0 + idb1 + epb0 + nrb + epb1 + spb))
        trace = nim.read_pcap(path)
        df = trace.sip()
        assert df["call_id"].tolist() == ["ng-eth", "ng-raw", "ng-spb"]
        assert df["timestamp"].iloc[0].value // 1000 == ts0 // 1000  # float seconds in memory: µs
        assert abs(df["timestamp"].iloc[1].value - (ts1 * 1000 + 100 * 10**9)) < 1000
        assert trace.pcap_stats.files == 1 and trace.pcap_stats.sip_messages == 3
        truncated = tmp_path / "cut.pcapng.gz"
        truncated.write_bytes(gzip.compress(shb + idb0 + idb1 + epb0 + nrb + epb1)[:-30])
        sink, stats = read(truncated)
        assert stats.files_truncated == 1 and stats.sip_messages <= 2


def test_directory_of_rotated_captures_reads_in_time_order_across_a_tcp_split(tmp_path: Path) -> None:
    ring = tmp_path / "ring"
    ring.mkdir()
    m = sip_request("spans-rotation", 1, "y" * 300)
    # tcpdump -C names: cap, cap1, cap2, ..., cap10: by name cap10 sorts before cap2; by time it is last
    parts = {
        "cap": [tcp_packet(A, B, 10, flags=0x02), udp_packet(A, B, sip_request("first", 1))],
        "cap1": [tcp_packet(A, B, 11, m[:120])],
        "cap2": [tcp_packet(A, B, 131, m[120:]), udp_packet(A, B, sip_request("third", 1))],
        "cap10": [udp_packet(A, B, sip_request("last", 1))],
    }
    starts = {"cap": 1000.0, "cap1": 2000.0, "cap2": 3000.0, "cap10": 4000.0}
    for name, packets in parts.items():
        write_packets(ring / name, packets, start=1_714_550_400 + starts[name])
    gz = ring / "cap2"
    gz.write_bytes(gzip.compress(gz.read_bytes()))  # one of them compressed, name unchanged
    (ring / "README").write_text("ring buffer of the SBC")
    files = capture_files(ring)
    assert [f.path.name for f in files] == ["cap", "cap1", "cap2", "cap10"]
    assert {f.owner for f in files} == {"pcap:ring"}
    trace = nim.read_pcap(ring)
    assert trace.sip()["call_id"].tolist() == ["first", "spans-rotation", "third", "last"]
    assert trace.pcap_stats.files_skipped == 1  # the README
    sink, stats = read(ring)
    assert stats.files == 4


def test_every_link_type_we_claim(tmp_path: Path) -> None:
    """Linux cooked v2, BSD null (either byte order) and loopback, raw IPv4 and IPv6 (with extension headers), and
    an IPv6 fragment, counted."""
    ip4 = udp_packet(A, B, sip_request("v4", 1))[14:]
    body = sip_request("v6", 1)
    udp6 = struct.pack("!HHHH", 5060, 5060, 8 + len(body), 0) + body
    hop = bytes([17, 0]) + b"\x00" * 6  # hop-by-hop options, then UDP
    ip6 = (
        struct.pack(
            "!IHBB16s16s",
            6 << 28,
            len(hop + udp6),
            0,
            64,
            b"\xfd" + b"\x00" * 14 + b"\x01",
            b"\xfd" + b"\x00" * 14 + b"\x02",
        )
        + hop
        + udp6
    )
    frag = (
        struct.pack("!IHBB16s16s", 6 << 28, 8 + len(udp6), 44, 64, b"\xfd" + b"\x00" * 15, b"\xfd" + b"\x00" * 15)
        + bytes([17, 0, 0, 1])
        + b"\x00" * 4
        + udp6
    )  # more fragments follow
    cases = {
        276: [struct.pack("!HHIHBB8s", 0x0800, 0, 1, 1, 0, 6, b"\x00" * 8) + ip4],  # SLL2
        0: [struct.pack("<I", 2) + ip4, struct.pack(">I", 30) + ip6],  # null, both orders
        108: [struct.pack(">I", 2) + ip4],  # OpenBSD loopback
        101: [ip4, ip6, frag],  # raw IP
        229: [ip6],  # DLT_IPV6
    }
    for linktype, packets in cases.items():
        sink, stats = read(write_packets(tmp_path / f"lt{linktype}.pcap", packets, linktype=linktype))
        got = [r for _, _, r in sink.all]
        want = [sip_request("v4", 1) if p in (ip4,) or p.endswith(ip4) else body for p in packets if p is not frag]
        assert got == want, linktype
        assert stats.fragments_skipped == (1 if linktype == 101 else 0) and stats.unsupported_linktype == 0
    v6 = nim.read_pcap(tmp_path / "lt229.pcap").sip()
    assert v6["src"].astype(str).tolist() == ["[fd00::1]:5060"]


@pytest.mark.slow
def test_an_import_that_fails_midway_leaves_no_partial_file(tmp_path: Path) -> None:
    from support.captures import generate

    cap = tmp_path / "c.pcap"
    truth = generate(cap, 20_000_000, seed=4)
    out = tmp_path / "ds"
    seen = []

    def stop(done: int, total: int) -> None:  # called every 8 MiB read: stop after the second call
        seen.append(done)
        if len(seen) == 2:
            raise KeyboardInterrupt

    from notebook_im.trace.capture import CaptureLimits

    with pytest.raises(KeyboardInterrupt):
        nim.read_pcap(cap, to=out, progress=stop, limits=CaptureLimits(batch_bytes=256 * 1024))
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.parquet"))  # the open file was removed
    result = nim.read_pcap(cap, to=out)  # the directory is still a dataset to import into
    assert result.rows == truth.messages
    with nim.open_traces(out) as t:
        assert len(t) == truth.messages
