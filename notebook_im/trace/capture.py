"""Reading captures at any size: pcap and pcapng (also gzip-compressed), one file, several, or a directory of rotated
captures, decoded down to the SIP messages with bounded memory and time linear in the input.

Why not dpkt here (it still writes pcaps, pcap.py): decoding every packet into dpkt objects costs ~15 µs a packet,
which is what made a 400,000-packet capture take 8 s. A capture of SIP needs only a few header fields of each layer,
so this module reads record headers with `struct`, decodes the link, IP, UDP and TCP headers by offset, and hands the
SIP payloads on as bytes. Everything is bounded so that hostile or broken input costs bounded memory and linear time:

* records: a file cut mid-record or mid-header ends that file (counted), a record header that announces an absurd
  length ends it too (counted: classic pcap cannot be resynchronised), other files still run;
* packets: anything that is not Ethernet/VLAN, Linux cooked v1/v2, BSD null/loopback or raw IPv4/IPv6, not IP, not
  UDP/TCP, cut by the snap length, or whose headers lie about lengths is counted and skipped, never raised;
* TCP: each direction of each connection is put back in order as Wireshark's follow does (bytes already in the
  stream never change, so a retransmission with different bytes loses; of the held out-of-order segments that reach
  the next expected byte, the one seen first supplies it), sequence numbers unwrapped to 64 bits (wraparound is free), SYN/RST/FIN
  end a connection so a reused 4-tuple starts clean; out-of-order data held per flow is capped in bytes and segments
  (past the cap the gap is skipped and counted), the flows are capped in number and in buffered bytes (least recently
  used evicted, counted); a stream joined mid-message (or after a skipped gap) resynchronises on the next SIP start
  line; messages are cut by Content-Length, a message without one (or over `max_message`) is counted and skipped.

`scan(files, sink, limits)` drives it all and returns a frozen `CaptureStats`; `sink.add(ts_ns, transport, src, dst,
raw)` gets each SIP message (src/dst as (host, port)), `sink.begin(owner)` the owner of the next file. This module
imports only the standard library, so the in-memory `read_pcap` and the Parquet import share it.
"""

from __future__ import annotations

import gzip
import heapq
import os
import re
import socket
import struct
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ..sip.errors import RemoteProtocolError
from ..sip.parser import _content_length

MiB = 1024 * 1024
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"
_PCAP_MAGICS = {  # magic -> (struct prefix, nanosecond resolution)
    b"\xd4\xc3\xb2\xa1": ("<", False),
    b"\xa1\xb2\xc3\xd4": (">", False),
    b"\x4d\x3c\xb2\xa1": ("<", True),
    b"\xa1\xb2\x3c\x4d": (">", True),
}
DLT_NULL, DLT_EN10MB, DLT_RAW, DLT_LOOP, DLT_LINUX_SLL, DLT_IPV4, DLT_IPV6, DLT_LINUX_SLL2 = (
    0,
    1,
    101,
    108,
    113,
    228,
    229,
    276,
)
_RAW_LINKTYPES = frozenset({12, 14, DLT_RAW, DLT_IPV4, DLT_IPV6})
SUPPORTED_LINKTYPES = frozenset({DLT_NULL, DLT_EN10MB, DLT_LOOP, DLT_LINUX_SLL, DLT_LINUX_SLL2}) | _RAW_LINKTYPES
_VLAN = frozenset({0x8100, 0x88A8, 0x9100})
_AF_INET6 = frozenset({10, 24, 28, 30})  # Linux, NetBSD/OpenBSD, FreeBSD, macOS
_IPV6_EXT = frozenset({0, 43, 60, 51, 135})  # hop-by-hop, routing, destination options, AH, mobility
MAX_RECORD = 16 * MiB  # a record longer than this is garbage, whatever the snap length says
_READ = 4 * MiB  # bytes read at a time


# -- settings and counters ------------------------------------------------------------------------------------------
def parse_size(value: int | str) -> int:
    """Bytes from an int or a string like "512MiB", "1 GiB", "200MB", "64k" (clear error otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"a size is an int (bytes) or a string like '512MiB', not {type(value).__name__}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"a size must be positive, not {value}")
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*", value)
    if not m:
        raise ValueError(f"cannot read {value!r} as a size; write it like '512MiB', '2GiB' or '300MB'")
    number, unit, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    base = 1024 if binary else 1000
    size = int(number * base ** " KMGT".index(unit or " "))
    if size <= 0:
        raise ValueError(f"a size must be positive, not {value!r}")
    return size


# what an import process holds besides its buffers: Python, numpy, pyarrow, Parquet pages (measured 200-215 MiB
# across installs; the rest is margin)
BASELINE = 224 * MiB


@dataclass(frozen=True)
class CaptureLimits:
    """What bounds an import's memory whatever the capture's size: one budget for the whole process's peak RSS,
    from which the buffers are sized.

    `memory` is the budget (bytes or "512MiB"; at least 256 MiB). BASELINE (224 MiB) of it is the interpreter,
    numpy, pyarrow and the Parquet writer's pages; the rest, R, sizes the parts (None: derived): the SIP bytes
    gathered before a row group is written (`batch_bytes`, R/8 up to 8 MiB: a batch exists about three times
    over while it becomes Arrow columns and Parquet pages, and past 8 MiB bigger batches were not faster), the TCP
    bytes held across all flows (`tcp_buffer_bytes`, R/4: out-of-order segments plus partial messages), the open
    flows (`max_flows`, R/4 KiB: about 1 KiB each), the out-of-order bytes and segments held per flow before its
    gap is skipped (`flow_pending_bytes`, `flow_pending_segments`), and the largest message a stream may carry
    (`max_message`). The tests import with 256 MiB and check the peak RSS stays under it."""

    memory: int | str = "512MiB"
    batch_bytes: int | None = None
    tcp_buffer_bytes: int | None = None
    max_flows: int | None = None
    flow_pending_bytes: int = 1 * MiB
    flow_pending_segments: int = 512
    max_message: int = 256 * 1024

    def __post_init__(self) -> None:
        memory = parse_size(self.memory)
        if memory < 256 * MiB:
            raise ValueError(
                f"memory={self.memory!r} is too small to import with: the interpreter and pyarrow "
                f"alone take about 200 MiB; give at least '256MiB'"
            )
        object.__setattr__(self, "memory", memory)
        rest = memory - BASELINE
        derived = {
            "batch_bytes": max(min(rest // 8, 8 * MiB), MiB),
            "tcp_buffer_bytes": rest // 4,
            "max_flows": rest // 4096,
        }
        for name, value in derived.items():
            given = getattr(self, name)
            object.__setattr__(self, name, value if given is None else parse_size(given))
        for name in ("flow_pending_bytes", "flow_pending_segments", "max_message"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive int, not {getattr(self, name)!r}")


@dataclass(frozen=True)
class CaptureStats:
    """What an import read, found and skipped (every skip is counted; nothing is skipped silently).

    Files: `files` read, `files_skipped` (in a directory: not a capture), `files_truncated` (ended mid-record or
    mid-header: the rest of that file is lost), `files_corrupt` (bad magic, garbage record or block lengths),
    `bytes_read` (from disk, compressed). Packets: `packets` records, `sip_messages` found (`udp_messages`,
    `tcp_messages`), `keepalives` (CRLF pings), `non_ip` (link layer not carrying IP), `other_ip` (IP but neither
    UDP nor TCP), `non_sip_udp` (datagrams that are not SIP), `fragments_skipped` (IP fragments: not reassembled),
    `truncated_packets` (cut by the snap length: the message would be partial), `malformed_packets` (headers that
    contradict themselves), `unsupported_linktype` (packets on a link type this reader does not decode). TCP:
    `tcp_segments` with payload, `tcp_streams` seen, `tcp_streams_ignored` (no SIP found in them),
    `tcp_duplicate_bytes` (retransmitted or overlapping bytes already in the stream, dropped: first seen wins),
    `tcp_out_of_order` (segments held until their gap filled), `tcp_gaps` / `tcp_gap_bytes` (gaps that never filled
    within the per-flow caps: skipped), `tcp_resyncs` (a stream picked up again at the next SIP start line),
    `tcp_bad_messages` (no or bad Content-Length, or over max_message: skipped), `tcp_flows_evicted` /
    `tcp_evicted_bytes` (least recently used flows dropped to stay within max_flows and the buffer cap),
    `tcp_reused` (a SYN or RST ended a connection whose 4-tuple is used again), `tcp_incomplete_bytes` (bytes of
    partial messages left when a connection or the capture ended), `tcp_peak_flows` and `tcp_peak_buffered` (the
    most flows open at once and the most bytes held at once)."""

    files: int = 0
    files_skipped: int = 0
    files_truncated: int = 0
    files_corrupt: int = 0
    bytes_read: int = 0
    packets: int = 0
    sip_messages: int = 0
    udp_messages: int = 0
    tcp_messages: int = 0
    keepalives: int = 0
    non_ip: int = 0
    other_ip: int = 0
    non_sip_udp: int = 0
    fragments_skipped: int = 0
    truncated_packets: int = 0
    malformed_packets: int = 0
    unsupported_linktype: int = 0
    tcp_segments: int = 0
    tcp_streams: int = 0
    tcp_streams_ignored: int = 0
    tcp_duplicate_bytes: int = 0
    tcp_out_of_order: int = 0
    tcp_gaps: int = 0
    tcp_gap_bytes: int = 0
    tcp_resyncs: int = 0
    tcp_bad_messages: int = 0
    tcp_flows_evicted: int = 0
    tcp_evicted_bytes: int = 0
    tcp_reused: int = 0
    tcp_incomplete_bytes: int = 0
    tcp_peak_flows: int = 0
    tcp_peak_buffered: int = 0

    @property
    def skipped(self) -> int:
        """Packets that carried nothing usable (all the packet-level skip counters added up)."""
        return (
            self.non_ip
            + self.other_ip
            + self.non_sip_udp
            + self.fragments_skipped
            + self.truncated_packets
            + self.malformed_packets
            + self.unsupported_linktype
        )

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __add__(self, other: CaptureStats) -> CaptureStats:
        peaks = ("tcp_peak_flows", "tcp_peak_buffered")
        return CaptureStats(
            **{
                k: (max(v, getattr(other, k)) if k in peaks else v + getattr(other, k))
                for k, v in self.as_dict().items()
            }
        )


class _Counters:
    """The mutable tallies behind a CaptureStats (a plain object: attribute increments are the cheapest)."""

    def __init__(self) -> None:
        for f in fields(CaptureStats):
            setattr(self, f.name, 0)

    def freeze(self) -> CaptureStats:
        return CaptureStats(**{f.name: getattr(self, f.name) for f in fields(CaptureStats)})


class Sink(Protocol):
    def begin(self, owner: str) -> None: ...
    def add(self, ts_ns: int, transport: str, src: tuple[str, int], dst: tuple[str, int], raw: bytes) -> None: ...


# -- SIP recognition ------------------------------------------------------------------------------------------------
def looks_like_sip(data: bytes) -> bool:
    """True if `data` starts like a SIP request or response (any method, any port)."""
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")
    if data.startswith(b"SIP/2.0 "):
        return True
    eol = data.find(b"\r\n", 0, 2048)
    if eol < 0:
        eol = data.find(b"\n", 0, 2048)
    line = data[:eol] if eol >= 0 else data[:2048]
    parts = line.split(b" ")
    return len(parts) == 3 and parts[2] == b"SIP/2.0" and parts[0].isalpha() and parts[0].isupper()


# a start line at a line start, or a standard method's request line or a status line anywhere: after a gap the next
# message usually follows the previous body directly (bodies seldom end with CRLF)
_START_LINE = re.compile(
    rb"(?m)^[A-Z]+ [^ \r\n]+ SIP/2\.0\r?$|(?:INVITE|ACK|BYE|CANCEL|MESSAGE|OPTIONS|REGISTER|"
    rb"SUBSCRIBE|NOTIFY|PUBLISH|REFER|INFO|PRACK|UPDATE) [^ \r\n]+ SIP/2\.0\r?$|SIP/2\.0 \d{3} "
)


def find_start_line(buf: bytes | bytearray, start: int = 0) -> int:
    """Offset of the first SIP start line at or after `start` (any request line at a line start; a standard
    method's request line or a status line anywhere), or -1."""
    m = _START_LINE.search(buf, start)
    return m.start() if m else -1


# -- files ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaptureFile:
    """One file to read and the owner its messages are recorded under."""

    path: Path
    owner: str
    first_ts: int  # ns of its first packet (0 if it has none): rotated captures are read in this order
    gzipped: bool


def _open(path: Path) -> tuple[BinaryIO, bool]:
    f: BinaryIO = open(path, "rb")
    head = f.read(2)
    f.seek(0)
    if head == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=f, mode="rb"), True  # type: ignore[return-value]
    return f, False


def _sniff(path: Path) -> tuple[bool, bool, int]:
    """(is a capture, gzipped, ns of the first packet or 0): what ordering and directory listing need."""
    try:
        f, gz = _open(path)
    except OSError:
        return False, False, 0
    try:
        with f:
            head = f.read(64 * 1024)
    except (OSError, EOFError, zlib.error):
        return False, gz, 0
    if head[:4] in _PCAP_MAGICS:
        endian, nano = _PCAP_MAGICS[head[:4]]
        if len(head) >= 40:
            sec, frac = struct.unpack_from(endian + "II", head, 24)
            return True, gz, sec * 1_000_000_000 + (frac if nano else frac * 1000)
        return True, gz, 0
    if head[:4] == PCAPNG_MAGIC:
        try:
            for ts, _lt, _buf in _pcapng_records(_Bytes(head), _Counters()):
                return True, gz, ts
        except Exception:  # noqa: BLE001 - a broken head is found and counted when the file is read
            pass
        return True, gz, 0
    return False, gz, 0


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def capture_files(
    paths: str | os.PathLike | Sequence[str | os.PathLike], owner: str | None = None, counters: _Counters | None = None
) -> list[CaptureFile]:
    """The files to read, in time order: each path is a capture file or a directory of them (rotated captures:
    tcpdump -C/-G, dumpcap ring buffers; files that are not captures are skipped and counted). Files are ordered by
    their first packet's time, then by name (numbers compared as numbers), and read as one capture, so a TCP
    connection that spans a rotation is reassembled across it. The owner of a file is `owner`, or "pcap:" and the
    name of the path argument it came from (the directory's name for a directory). Raises FileNotFoundError for a
    missing path and ValueError when nothing to read is found."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise ValueError("no capture given: pass a pcap/pcapng file, several, or a directory of them")
    found: list[CaptureFile] = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"a capture path is a str or os.PathLike, not {type(item).__name__}")
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"capture {str(path)!r} does not exist")
        name = owner or f"pcap:{path.resolve().name if path.is_dir() else path.name}"
        if path.is_dir():
            members = sorted(
                (p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")),
                key=lambda p: _natural(p.name),
            )
            for member in members:
                ok, gz, ts = _sniff(member)
                if ok:
                    found.append(CaptureFile(member, name, ts, gz))
                elif counters is not None:
                    counters.files_skipped += 1
        else:
            ok, gz, ts = _sniff(path)
            found.append(CaptureFile(path, name, ts, gz))  # a named file is read even if it does not look right
    if not found:
        raise ValueError(f"no pcap or pcapng files found in {', '.join(map(str, items))}")
    order = {id(f): i for i, f in enumerate(found)}
    found.sort(key=lambda f: (f.first_ts == 0, f.first_ts, order[id(f)]))
    return found


class _Bytes:
    """A bytes object read like a file (for sniffing the head of a pcapng)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out


# -- record layer ---------------------------------------------------------------------------------------------------
def _read(f: Any, n: int, counters: _Counters) -> bytes:
    data = f.read(n)
    counters.bytes_read += len(data)
    return data


def _pcap_records(f: Any, counters: _Counters) -> Iterator[tuple[int, int, bytes]]:
    """(ts_ns, linktype, packet bytes) of a classic pcap, read in 4 MiB blocks (one read and one copy per block,
    not per packet)."""
    head = _read(f, 24, counters)
    if head[:4] not in _PCAP_MAGICS:
        counters.files_corrupt += 1
        return
    if len(head) < 24:
        counters.files_truncated += 1
        return
    endian, nano = _PCAP_MAGICS[head[:4]]
    snaplen, network = struct.unpack_from(endian + "II", head, 16)
    linktype = network & 0x0FFFFFFF
    limit = min(max(snaplen, 262144), MAX_RECORD)  # writers exceed a small snap length; nobody exceeds 16 MiB
    unpack = struct.Struct(endian + "IIII").unpack_from
    mult = 1 if nano else 1000
    buf = b""
    pos = 0
    while True:
        n_buf = len(buf)
        while True:
            if pos + 16 > n_buf:
                need = 16
                break
            sec, frac, caplen, _orig = unpack(buf, pos)
            if caplen > limit:
                counters.files_corrupt += 1  # garbage lengths: classic pcap cannot resynchronise
                return
            end = pos + 16 + caplen
            if end > n_buf:
                need = 16 + caplen
                break
            yield sec * 1_000_000_000 + frac * mult, linktype, buf[pos + 16 : end]
            pos = end
        more = _read(f, max(_READ, need), counters)
        buf = buf[pos:] + more
        pos = 0
        if len(buf) < need:
            if buf:
                counters.files_truncated += 1  # cut mid-record or mid-header
            return


def _pcapng_records(f: Any, counters: _Counters) -> Iterator[tuple[int, int, bytes]]:
    """(ts_ns, linktype, packet bytes) of a pcapng: EPB, SPB and the obsolete PB with per-interface link types,
    timestamp resolutions and offsets; other blocks skipped. Read in 4 MiB blocks like classic pcap."""
    endian = "<"
    interfaces: list[tuple[int, int, int]] = []  # (linktype, divisor of the raw timestamp to seconds, offset ns)
    last_ts = 0
    buf = b""
    pos = 0
    u32 = {"<": struct.Struct("<I").unpack_from, ">": struct.Struct(">I").unpack_from}
    epb = {"<": struct.Struct("<IIII").unpack_from, ">": struct.Struct(">IIII").unpack_from}
    while True:
        # make sure the next block header (12 bytes: type, length, and the SHB's byte-order magic) is here
        if len(buf) - pos < 12:
            more = _read(f, _READ, counters)
            buf = buf[pos:] + more
            pos = 0
            if len(buf) < 12:
                if buf:
                    counters.files_truncated += 1
                return
        if buf[pos : pos + 4] == PCAPNG_MAGIC:
            bom = buf[pos + 8 : pos + 12]
            endian = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">" if bom == b"\x1a\x2b\x3c\x4d" else ""
            if not endian:
                counters.files_corrupt += 1
                return
            interfaces = []
        btype = u32[endian](buf, pos)[0]
        blen = u32[endian](buf, pos + 4)[0]
        if blen < 12 or blen % 4 or blen > MAX_RECORD:
            counters.files_corrupt += 1
            return
        if len(buf) - pos < blen:
            more = _read(f, max(_READ, blen), counters)
            buf = buf[pos:] + more
            pos = 0
            if len(buf) < blen:
                counters.files_truncated += 1
                return
        body_at = pos + 8
        body_end = pos + blen - 4
        pos += blen
        if btype == 6 or btype == 2:  # enhanced packet block, obsolete packet block
            if body_end - body_at < 20:
                counters.malformed_packets += 1
                continue
            if btype == 6:
                iface, hi, lo, caplen = epb[endian](buf, body_at)
            else:
                iface, _drops, hi, lo, caplen = struct.unpack_from(endian + "HHIII", buf, body_at)
            if iface >= len(interfaces) or caplen > body_end - body_at - 20:
                counters.malformed_packets += 1
                continue
            linktype, div, offset = interfaces[iface]
            last_ts = ((hi << 32) | lo) * 1_000_000_000 // div + offset
            yield last_ts, linktype, buf[body_at + 20 : body_at + 20 + caplen]
        elif btype == 3:  # simple packet block: interface 0, no timestamp
            if not interfaces or body_end - body_at < 4:
                counters.malformed_packets += 1
                continue
            orig = u32[endian](buf, body_at)[0]
            yield last_ts, interfaces[0][0], buf[body_at + 4 : body_at + 4 + min(orig, body_end - body_at - 4)]
        elif btype == 1:  # interface description
            if body_end - body_at < 8:
                counters.files_corrupt += 1
                return
            linktype = struct.unpack_from(endian + "H", buf, body_at)[0]
            div, offset = 1_000_000, 0
            opt = body_at + 8
            while opt + 4 <= body_end:
                code, olen = struct.unpack_from(endian + "HH", buf, opt)
                if code == 0 or opt + 4 + olen > body_end:
                    break
                if code == 9 and olen >= 1:  # if_tsresol: 10**-n, or 2**-n with the top bit set
                    r = buf[opt + 4]
                    div = 2 ** (r & 0x7F) if r & 0x80 else 10 ** min(r, 30)
                elif code == 14 and olen == 8:  # if_tsoffset (seconds)
                    offset = struct.unpack_from(endian + "q", buf, opt + 4)[0] * 1_000_000_000
                opt += 4 + ((olen + 3) & ~3)
            interfaces.append((linktype, div, offset))
        # anything else (section header, name resolution, statistics, custom, decryption secrets): skipped


def _records(cf: CaptureFile, counters: _Counters) -> Iterator[tuple[int, int, bytes]]:
    """The records of one file, whatever its format; read errors (a truncated gzip stream too) end it, counted."""
    try:
        f, _gz = _open(cf.path)
    except OSError:
        counters.files_corrupt += 1
        return
    with f:
        try:
            magic = f.read(4)
            f.seek(0)
        except (OSError, EOFError, zlib.error):
            counters.files_corrupt += 1
            return
        reader = _pcapng_records if magic == PCAPNG_MAGIC else _pcap_records
        try:
            yield from reader(f, counters)
        except (EOFError, zlib.error, gzip.BadGzipFile):
            counters.files_truncated += 1  # a gzip stream cut short or damaged
        except OSError:
            counters.files_corrupt += 1


# -- TCP ------------------------------------------------------------------------------------------------------------
class _Flow:
    """One direction of one TCP connection: the next expected byte (unwrapped to 64 bits), the held out-of-order
    segments (a heap of (start, arrival, bytes)), the bytes not yet cut into messages, and what was decided."""

    __slots__ = ("next", "isn", "held", "held_bytes", "buf", "scanned", "sip", "resync", "fin", "seq_base", "arrivals")

    def __init__(self, first_seq: int, isn: int | None) -> None:
        self.next = 0  # absolute offset of the next byte the stream expects (64-bit: no wraparound)
        self.seq_base = first_seq  # the 32-bit sequence number of absolute offset 0
        self.isn = isn  # the SYN's sequence number, when the SYN was seen
        self.held: list[tuple[int, int, bytes]] = []
        self.held_bytes = 0
        self.buf = bytearray()
        self.scanned = 0
        self.sip: bool | None = None  # None: undecided; False: not SIP (ignored)
        self.resync = isn is None  # joined mid-stream: look for a start line first
        self.fin: int | None = None  # absolute offset of the FIN
        self.arrivals = 0


class _Tcp:
    """TCP reassembly and SIP framing for all flows, bounded (see the module docstring)."""

    def __init__(self, limits: CaptureLimits, counters: _Counters, emit: Callable[[int, Any, bytes], None]) -> None:
        self.flows: OrderedDict[Any, _Flow] = OrderedDict()
        # connections that ended (FIN/RST/eviction) -> the 32-bit sequence number after their last byte, so that a
        # late retransmission is recognised as old data rather than opening a new stream (bounded like the flows)
        self.closed: OrderedDict[Any, int] = OrderedDict()
        self.limits = limits
        self.c = counters
        self.emit = emit  # emit(ts_ns, key, raw)
        self.buffered = 0  # bytes held in all flows (held segments + unframed bytes)
        self.max_flows = limits.max_flows or 1
        self.max_buffered = limits.tcp_buffer_bytes or 1

    # a segment ------------------------------------------------------------------------------------------------
    def segment(self, ts: int, key: Any, seq: int, flags: int, data: bytes) -> None:
        flows = self.flows
        flow = flows.get(key)
        c = self.c
        if flags & 0x04:  # RST: the connection is gone
            if flow is not None:
                self._close(key, flow)
                c.tcp_reused += 1
            return
        if flags & 0x02:  # SYN
            if flow is not None:
                if flow.isn == seq:
                    return  # a retransmitted SYN
                self._close(key, flow)  # the 4-tuple reused by a new connection
                c.tcp_reused += 1
            flow = flows[key] = _Flow((seq + 1) & 0xFFFFFFFF, seq)
            self.closed.pop(key, None)
            c.tcp_streams += 1
            self._bound()
            return
        if flow is None:
            if not data:
                return
            ended = self.closed.get(key)
            if ended is not None and ((ended - seq - len(data)) & 0xFFFFFFFF) < self.limits.flow_pending_bytes:
                c.tcp_duplicate_bytes += len(data)  # a late copy of data from a connection that ended
                return
            flow = flows[key] = _Flow(seq, None)  # the capture joined the connection midway
            c.tcp_streams += 1
            self._bound()
        else:
            flows.move_to_end(key)
        if flow.sip is False:
            return
        # absolute offset of this segment: the signed 32-bit distance from the next expected byte
        delta = ((seq - flow.seq_base - flow.next + 0x80000000) & 0xFFFFFFFF) - 0x80000000
        start = flow.next + delta
        if flags & 0x01:  # FIN (it may carry data)
            flow.fin = start + len(data)
        if data:
            c.tcp_segments += 1
            if start <= flow.next:
                skip = flow.next - start
                if skip >= len(data):
                    c.tcp_duplicate_bytes += len(data)
                else:
                    if skip:
                        c.tcp_duplicate_bytes += skip
                        data = data[skip:]
                    flow.next += len(data)
                    self._deliver(ts, key, flow, data)
                    if flow.held:
                        self._drain(ts, key, flow)
            else:
                flow.arrivals += 1
                heapq.heappush(flow.held, (start, flow.arrivals, data))
                flow.held_bytes += len(data)
                self.buffered += len(data)
                c.tcp_out_of_order += 1
                if (
                    flow.held_bytes > self.limits.flow_pending_bytes
                    or len(flow.held) > self.limits.flow_pending_segments
                ):
                    self._skip_gap(ts, key, flow)
        if flow.fin is not None and flow.next >= flow.fin and flows.get(key) is flow:
            self._close(key, flow)  # all data up to the FIN is in: done
            return
        if self.buffered > self.max_buffered:
            self._bound()
        if self.buffered > c.tcp_peak_buffered:
            c.tcp_peak_buffered = self.buffered

    def _drain(self, ts: int, key: Any, flow: _Flow) -> None:
        """Apply held segments now that the stream has grown, as Wireshark's follow does: of the held segments that
        start at or before the next expected byte, the one seen first supplies what it has beyond it; repeat. (Two
        heaps, by start and by arrival, so each segment is moved and applied once: O(log n), not a list scan.)"""
        held = flow.held
        ready: list[tuple[int, int, bytes]] = []
        c = self.c
        while True:
            while held and held[0][0] <= flow.next:
                start, n, data = heapq.heappop(held)
                heapq.heappush(ready, (n, start, data))
            if not ready:
                return
            _n, start, data = heapq.heappop(ready)
            flow.held_bytes -= len(data)
            self.buffered -= len(data)
            skip = flow.next - start
            if skip >= len(data):
                c.tcp_duplicate_bytes += len(data)
                continue
            if skip:
                c.tcp_duplicate_bytes += skip
                data = data[skip:]
            flow.next += len(data)
            self._deliver(ts, key, flow, data)
            if flow.sip is False:
                for _n, _s, d in ready:
                    self.buffered -= len(d)
                return

    def _skip_gap(self, ts: int, key: Any, flow: _Flow) -> None:
        """The held data outgrew its caps: give up on the gap, go on from the first held segment, resynchronise."""
        c = self.c
        first = flow.held[0][0]
        c.tcp_gaps += 1
        c.tcp_gap_bytes += first - flow.next
        self._drop_partial(flow)
        flow.next = first
        flow.resync = True
        self._drain(ts, key, flow)

    def _drop_partial(self, flow: _Flow) -> None:
        if flow.buf:
            self.c.tcp_incomplete_bytes += len(flow.buf)
            self.buffered -= len(flow.buf)
            flow.buf = bytearray()
        flow.scanned = 0

    # framing ----------------------------------------------------------------------------------------------------
    def _deliver(self, ts: int, key: Any, flow: _Flow, data: bytes) -> None:
        c = self.c
        buf = flow.buf
        buf += data
        self.buffered += len(data)
        if flow.sip is None and not flow.resync:  # a stream seen from its SYN: SIP from the start?
            head = bytes(buf[:2048]).lstrip(b"\r\n")
            if not head:
                c.keepalives += 1
                self.buffered -= len(buf)
                buf.clear()
                return
            if b"\n" not in head and len(head) < 2048:
                if head[:1].isupper():
                    return  # the start line is not complete yet: wait
                self._ignore(flow)  # no SIP start line begins like this
                return
            if not looks_like_sip(head):
                self._ignore(flow)
                return
            flow.sip = True
        max_message = self.limits.max_message
        while buf:
            if flow.resync:
                at = find_start_line(buf, 0)
                if at < 0:
                    # keep only a tail that may hold the beginning of a start line; a flow that never shows one is
                    # not SIP
                    dropped = max(0, len(buf) - 2048)
                    if dropped:
                        del buf[:dropped]
                        self.buffered -= dropped
                        if flow.sip is None:
                            flow.scanned += dropped
                            if flow.scanned > max_message:
                                self._ignore(flow)
                    return
                if at:
                    del buf[:at]
                    self.buffered -= at
                flow.resync = False
                flow.scanned = 0
                if flow.sip is None:
                    flow.sip = True
                else:
                    c.tcp_resyncs += 1
                continue
            if buf[0] in (13, 10):
                n = len(buf) - len(buf.lstrip(b"\r\n"))
                del buf[:n]
                self.buffered -= n
                c.keepalives += 1
                continue
            end = buf.find(b"\r\n\r\n", flow.scanned - 3 if flow.scanned > 3 else 0)
            if end < 0:
                flow.scanned = len(buf)
                if len(buf) > max_message:
                    c.tcp_bad_messages += 1  # a header section that never ends
                    self._resync_after(flow, 1)
                    continue
                return
            flow.sip = True
            length = self._content_length(buf, end)
            total = end + 4 + (length or 0)
            if length is None or total > max_message:
                c.tcp_bad_messages += 1
                self._resync_after(flow, end + 4)
                continue
            if len(buf) < total:
                flow.scanned = end
                return
            raw = bytes(buf[:total])
            del buf[:total]
            self.buffered -= total
            flow.scanned = 0
            self.emit(ts, key, raw)

    def _resync_after(self, flow: _Flow, n: int) -> None:
        n = min(n, len(flow.buf))
        del flow.buf[:n]
        self.buffered -= n
        flow.scanned = 0
        flow.resync = True

    @staticmethod
    def _content_length(buf: bytearray, end: int) -> int | None:
        i = buf.find(b"\r\nContent-Length: ", 0, end)
        if i >= 0:
            j = buf.find(b"\r\n", i + 18, end + 2)
            value = bytes(buf[i + 18 : j])
            if value.isdigit() and buf.find(b"\r\nContent-Length:", j, end) < 0:
                return int(value)
        try:
            return _content_length(bytes(buf[:end]))
        except RemoteProtocolError:
            return None

    def _ignore(self, flow: _Flow) -> None:
        flow.sip = False
        self.c.tcp_streams_ignored += 1
        self._drop_partial(flow)
        for _s, _n, data in flow.held:
            self.buffered -= len(data)
        flow.held = []
        flow.held_bytes = 0

    # bounds -----------------------------------------------------------------------------------------------------
    def _close(self, key: Any, flow: _Flow) -> None:
        self.flows.pop(key, None)
        self._remember(key, flow)
        self.c.tcp_incomplete_bytes += len(flow.buf) + flow.held_bytes
        self.buffered -= len(flow.buf) + flow.held_bytes
        if flow.sip is None and flow.resync and flow.scanned + len(flow.buf) > 0:
            self.c.tcp_streams_ignored += 1  # joined midway and never showed SIP

    def _bound(self) -> None:
        flows = self.flows
        c = self.c
        while len(flows) > 1 and (len(flows) > self.max_flows or self.buffered > self.max_buffered):
            key, flow = flows.popitem(last=False)
            self._remember(key, flow)
            c.tcp_flows_evicted += 1
            c.tcp_evicted_bytes += len(flow.buf) + flow.held_bytes
            self.buffered -= len(flow.buf) + flow.held_bytes
        if len(flows) > c.tcp_peak_flows:
            c.tcp_peak_flows = len(flows)

    def _remember(self, key: Any, flow: _Flow) -> None:
        closed = self.closed
        closed[key] = (flow.seq_base + max(flow.next, flow.fin or 0)) & 0xFFFFFFFF
        closed.move_to_end(key)
        while len(closed) > self.max_flows:
            closed.popitem(last=False)

    def finish(self) -> None:
        """The capture ended: count what is still partial, and streams that never showed SIP."""
        for key, flow in list(self.flows.items()):
            self._close(key, flow)


# -- the packet loop ------------------------------------------------------------------------------------------------
def scan(
    files: Sequence[CaptureFile],
    sink: Sink,
    limits: CaptureLimits | None = None,
    progress: Callable[[int], None] | None = None,
) -> CaptureStats:
    """Read `files` in order as one capture and hand every SIP message to `sink`; returns the counts.

    `progress(bytes_read)` is called every few MiB (a progress bar). Time is linear in the input: every loop is
    bounded by the packet, or by a cap of `limits`."""
    limits = limits or CaptureLimits()
    c = _Counters()
    hosts: dict[bytes, str] = {}

    def host(ip: bytes) -> str:
        h = hosts.get(ip)
        if h is None:
            if len(hosts) > 65536:
                hosts.clear()
            h = hosts[ip] = socket.inet_ntop(socket.AF_INET if len(ip) == 4 else socket.AF_INET6, ip)
        return h

    add = sink.add

    def emit_tcp(ts: int, key: Any, raw: bytes) -> None:
        c.sip_messages += 1
        c.tcp_messages += 1
        add(ts, "tcp", (host(key[0]), key[1]), (host(key[2]), key[3]), raw)

    tcp = _Tcp(limits, c, emit_tcp)
    segment = tcp.segment
    unpack_hhh = struct.Struct(">HHH").unpack_from
    unpack_tcp = struct.Struct(">HHIIBB").unpack_from
    next_report = 0
    for cf in files:
        c.files += 1
        sink.begin(cf.owner)
        for ts, linktype, buf in _records(cf, c):
            c.packets += 1
            if progress is not None and c.bytes_read >= next_report:
                progress(c.bytes_read)
                next_report = c.bytes_read + 8 * MiB
            n = len(buf)
            # -- link layer -> (ethertype or 4/6, offset of the IP header)
            if linktype == 1:
                if n < 14:
                    c.truncated_packets += 1
                    continue
                etype = (buf[12] << 8) | buf[13]
                off = 14
                if etype in _VLAN:
                    for _ in range(4):
                        if n < off + 4:
                            break
                        etype = (buf[off + 2] << 8) | buf[off + 3]
                        off += 4
                        if etype not in _VLAN:
                            break
            elif linktype == 113:
                if n < 16:
                    c.truncated_packets += 1
                    continue
                etype = (buf[14] << 8) | buf[15]
                off = 16
            elif linktype == 276:
                if n < 20:
                    c.truncated_packets += 1
                    continue
                etype = (buf[0] << 8) | buf[1]
                off = 20
            elif linktype in _RAW_LINKTYPES:
                etype = 0x0800 if n and buf[0] >> 4 == 4 else 0x86DD if n and buf[0] >> 4 == 6 else 0
                off = 0
            elif linktype == 0 or linktype == 108:
                if n < 4:
                    c.truncated_packets += 1
                    continue
                fam = struct.unpack_from("<I" if linktype == 0 and buf[0] else ">I", buf, 0)[0]
                etype = 0x0800 if fam == 2 else 0x86DD if fam in _AF_INET6 else 0
                off = 4
            else:
                c.unsupported_linktype += 1
                continue
            # -- IP
            if etype == 0x0800:
                if n < off + 20:
                    c.truncated_packets += 1
                    continue
                vihl = buf[off]
                ihl = (vihl & 15) * 4
                total = (buf[off + 2] << 8) | buf[off + 3]
                if total == 0:
                    total = n - off  # segmentation offload: the length left unset
                if vihl >> 4 != 4 or ihl < 20 or total < ihl:
                    c.malformed_packets += 1
                    continue
                if (buf[off + 6] & 0x3F) or buf[off + 7]:  # more fragments, or a fragment offset
                    c.fragments_skipped += 1
                    continue
                proto = buf[off + 9]
                src_ip = buf[off + 12 : off + 16]
                dst_ip = buf[off + 16 : off + 20]
                l4 = off + ihl
                ip_end = off + total
            elif etype == 0x86DD:
                if n < off + 40:
                    c.truncated_packets += 1
                    continue
                if buf[off] >> 4 != 6:
                    c.malformed_packets += 1
                    continue
                proto = buf[off + 6]
                ip_end = off + 40 + ((buf[off + 4] << 8) | buf[off + 5])
                src_ip = buf[off + 8 : off + 24]
                dst_ip = buf[off + 24 : off + 40]
                l4 = off + 40
                fragment = False
                for _ in range(8):  # extension headers, bounded
                    if proto == 44:
                        if n < l4 + 8:
                            break
                        if ((buf[l4 + 2] << 8) | buf[l4 + 3]) & 0xFFF9:  # offset or more-fragments: a real fragment
                            fragment = True
                            break
                        proto, l4 = buf[l4], l4 + 8
                    elif proto in _IPV6_EXT:
                        if n < l4 + 2:
                            break
                        size = (buf[l4 + 1] + 2) * 4 if proto == 51 else (buf[l4 + 1] + 1) * 8
                        proto, l4 = buf[l4], l4 + size
                    else:
                        break
                if fragment:
                    c.fragments_skipped += 1
                    continue
            else:
                c.non_ip += 1
                continue
            if ip_end > n:
                c.truncated_packets += 1  # cut by the snap length
                continue
            # -- UDP / TCP
            if proto == 17:
                if ip_end < l4 + 8:
                    c.malformed_packets += 1
                    continue
                sport, dport, ulen = unpack_hhh(buf, l4)
                end = l4 + ulen
                if ulen < 8 or end > ip_end:
                    if end > ip_end and ulen >= 8:
                        c.malformed_packets += 1
                        continue
                    end = ip_end  # ulen 0 (jumbograms) or nonsense: the IP length rules
                payload = buf[l4 + 8 : end]
                first = payload[:1]
                if first == b"\r" or first == b"\n":
                    if not payload.strip(b"\r\n"):
                        c.keepalives += 1
                        continue
                if looks_like_sip(payload):
                    c.sip_messages += 1
                    c.udp_messages += 1
                    add(ts, "udp", (host(src_ip), sport), (host(dst_ip), dport), payload)
                else:
                    c.non_sip_udp += 1
            elif proto == 6:
                if ip_end < l4 + 20:
                    c.malformed_packets += 1
                    continue
                sport, dport, seq, _ack, offx, flags = unpack_tcp(buf, l4)
                doff = (offx >> 4) * 4
                if doff < 20 or l4 + doff > ip_end:
                    c.malformed_packets += 1
                    continue
                segment(ts, (src_ip, sport, dst_ip, dport), seq, flags, buf[l4 + doff : ip_end])
            else:
                c.other_ip += 1
    tcp.finish()
    if progress is not None:
        progress(c.bytes_read)
    return c.freeze()


# -- addresses (read_pcap's local=, the frames' host:port strings) ------------------------------------------------
def parse_local(local: Any) -> tuple[set[str], set[tuple[str, int]]]:
    hosts: set[str] = set()
    addrs: set[tuple[str, int]] = set()
    if local is None:
        return hosts, addrs
    items = [local] if isinstance(local, (str, tuple)) else list(local)
    for item in items:
        if isinstance(item, tuple):
            addrs.add((str(item[0]), int(item[1])))
            continue
        text = str(item)
        if text.startswith("["):
            host, _, port = text[1:].partition("]:")
            addrs.add((host, int(port))) if port else hosts.add(host.rstrip("]"))
        elif text.count(":") == 1:
            host, port = text.split(":")
            addrs.add((host, int(port)))
        else:
            hosts.add(text)
    return hosts, addrs


def split_addr(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return host, int(port or 0)
    host, _, port = text.rpartition(":")
    return host, int(port or 0)
