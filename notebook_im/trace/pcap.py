"""Pcap in and out: `trace.to_pcap(path)` and `nim.read_pcap(path)`.

Packet formats are read and written with dpkt (a small, pure-Python, dependency-free library that
reads classic pcap and pcapng and decodes Ethernet, Linux cooked capture v1/v2, BSD loopback, raw IP,
IPv4, IPv6, UDP and TCP). What dpkt does not do, and this module does, is the SIP part:

* UDP: every datagram whose first line looks like SIP is one message, on any port.
* TCP: each direction of each connection is put back in sequence order (retransmitted and overlapping
  segments trimmed, out-of-order segments held until the gap fills, sequence numbers wrapping at 2**32)
  and cut into messages by Content-Length with the stack's own `StreamFramer`, so several messages in
  one segment and one message across segments both come out as whole messages. A message gets the
  timestamp of the segment that completed it. A stream that does not start like SIP is ignored.
* IP fragments are not reassembled (rare on loopback and LANs where SIP runs over UDP); they are counted.

The result is a `Trace` like the platform's, so `read_pcap(p).sip()` has the same schema as
`platform.trace.sip()` and `.messages()` reconstructs the IM messages from the SIP requests and answers.
Without `local=`, a capture has no "our side": direction is NA. Give `local="127.0.0.1:5060"` (or a host,
or a list) to mark packets from those addresses "out" and to them "in".
"""
from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ..sip.errors import RemoteProtocolError
from ..sip.parser import StreamFramer
from .recorder import Trace

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
DLT_NULL, DLT_EN10MB, DLT_RAW, DLT_LOOP, DLT_LINUX_SLL, DLT_IPV4, DLT_IPV6, DLT_LINUX_SLL2 = 0, 1, 101, 108, 113, 228, 229, 276
_RAW_ALIASES = {12, 14, DLT_RAW}


def looks_like_sip(data: bytes) -> bool:
    """True if `data` starts like a SIP request or response (any method, any port)."""
    data = data.lstrip(b"\r\n")
    if data.startswith(b"SIP/2.0 "):
        return True
    eol = data.find(b"\r\n", 0, 2048)
    if eol < 0:
        eol = data.find(b"\n", 0, 2048)
    line = data[:eol] if eol >= 0 else data[:2048]
    parts = line.split(b" ")
    return len(parts) == 3 and parts[2] == b"SIP/2.0" and parts[0].isalpha() and parts[0].isupper()


# -- reading ----------------------------------------------------------------------------------------------
@dataclass
class _Flow:
    next_seq: int | None = None
    pending: dict[int, bytes] = field(default_factory=dict)
    framer: StreamFramer = field(default_factory=StreamFramer)
    sip: bool | None = None   # None: not decided yet (no payload seen)


@dataclass
class PcapStats:
    packets: int = 0
    sip_messages: int = 0
    fragments_skipped: int = 0
    non_ip: int = 0
    tcp_streams_ignored: int = 0


def _ip_layer(linktype: int, buf: bytes) -> Any:
    import dpkt

    if linktype == DLT_EN10MB:
        return dpkt.ethernet.Ethernet(buf).data
    if linktype == DLT_LINUX_SLL:
        return dpkt.sll.SLL(buf).data
    if linktype == DLT_LINUX_SLL2:
        return dpkt.sll2.SLL2(buf).data
    if linktype in (DLT_NULL, DLT_LOOP):
        return dpkt.loopback.Loopback(buf).data
    if linktype in _RAW_ALIASES or linktype in (DLT_IPV4, DLT_IPV6):
        version = buf[0] >> 4 if buf else 0
        return dpkt.ip.IP(buf) if version == 4 else dpkt.ip6.IP6(buf) if version == 6 else None
    raise ValueError(f"unsupported pcap link type {linktype}")


def _packets(path: str | os.PathLike) -> Iterable[tuple[float, int, bytes]]:
    import dpkt

    with open(path, "rb") as f:
        magic = f.read(4)
        f.seek(0)
        reader = dpkt.pcapng.Reader(f) if magic == PCAPNG_MAGIC else dpkt.pcap.Reader(f)
        linktype = reader.datalink()
        for ts, buf in reader:
            yield float(ts), linktype, buf


def _parse_local(local: Any) -> tuple[set[str], set[tuple[str, int]]]:
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


def read_pcap(path: str | os.PathLike, *, local: Any = None, owner: str | None = None) -> Trace:
    """Load the SIP messages of a pcap or pcapng file (UDP and TCP, IPv4 and IPv6, any port) into a `Trace`.

    `read_pcap(p).sip()` is the same frame as `platform.trace.sip()`; `.messages()` reconstructs the IM
    messages. `local` (a "host", "host:port", (host, port) or a list of them) says which side is "ours"
    for the direction column; `owner` names the capture in the owner column (default "pcap:<file name>").
    `trace.pcap_stats` counts packets, SIP messages and what was skipped.
    """
    import dpkt

    hosts, addrs = _parse_local(local)
    trace = Trace(max_records=None, index="eager", name=str(path))
    owner = owner or f"pcap:{Path(path).name}"
    stats = PcapStats()
    flows: dict[tuple, _Flow] = {}

    def record(ts: float, transport: str, src: tuple[str, int], dst: tuple[str, int], raw: bytes) -> None:
        stats.sip_messages += 1
        if src in addrs or src[0] in hosts:
            trace.record_sip("out", transport, src, dst, raw, owner, ts=ts)
        elif dst in addrs or dst[0] in hosts:
            trace.record_sip("in", transport, dst, src, raw, owner, ts=ts)
        else:
            trace.record_sip("", transport, dst, src, raw, owner, ts=ts)

    for ts, linktype, buf in _packets(path):
        stats.packets += 1
        try:
            ip = _ip_layer(linktype, buf)
        except (dpkt.UnpackError, IndexError, struct.error):
            stats.non_ip += 1
            continue
        if isinstance(ip, dpkt.ip.IP):
            if ip.mf or ip.offset:
                stats.fragments_skipped += 1
                continue
            src_host, dst_host = socket.inet_ntop(socket.AF_INET, ip.src), socket.inet_ntop(socket.AF_INET, ip.dst)
        elif isinstance(ip, dpkt.ip6.IP6):
            src_host, dst_host = socket.inet_ntop(socket.AF_INET6, ip.src), socket.inet_ntop(socket.AF_INET6, ip.dst)
        else:
            stats.non_ip += 1
            continue
        seg = ip.data
        if isinstance(seg, dpkt.udp.UDP):
            payload = bytes(seg.data)
            if payload.strip(b"\r\n") and looks_like_sip(payload):
                record(ts, "udp", (src_host, seg.sport), (dst_host, seg.dport), payload)
        elif isinstance(seg, dpkt.tcp.TCP):
            key = (src_host, seg.sport, dst_host, seg.dport)
            flow = flows.get(key)
            if flow is None:
                flow = flows[key] = _Flow()
            if seg.flags & dpkt.tcp.TH_SYN:
                flow.next_seq = (seg.seq + 1) & 0xFFFFFFFF
                flow.pending.clear()
                continue
            data = bytes(seg.data)
            if not data or flow.sip is False:
                continue
            if flow.next_seq is None:
                flow.next_seq = seg.seq  # the capture started in the middle of the connection
            for chunk in _in_order(flow, seg.seq, data):
                if flow.sip is None:
                    stripped = chunk.lstrip(b"\r\n")
                    if not stripped:
                        continue
                    flow.sip = looks_like_sip(stripped)
                    if not flow.sip:
                        stats.tcp_streams_ignored += 1
                        break
                try:
                    messages = flow.framer.feed(chunk)
                except RemoteProtocolError:
                    flow.sip = False
                    stats.tcp_streams_ignored += 1
                    break
                for raw in messages:
                    record(ts, "tcp", (src_host, seg.sport), (dst_host, seg.dport), raw)
        else:
            stats.non_ip += 1
    trace.pcap_stats = stats  # type: ignore[attr-defined]
    return trace


def _in_order(flow: _Flow, seq: int, data: bytes) -> list[bytes]:
    """The bytes that extend the stream in order, after this segment (held segments included)."""
    assert flow.next_seq is not None
    out: list[bytes] = []
    delta = (seq - flow.next_seq + 2**31) % 2**32 - 2**31   # signed distance, wrapping at 2**32
    if delta > 0:
        flow.pending.setdefault(seq, data)               # a gap: hold it until the gap fills
        return out
    if -delta >= len(data):
        return out                                       # a retransmission of what we have
    data = data[-delta:]
    out.append(data)
    flow.next_seq = (flow.next_seq + len(data)) & 0xFFFFFFFF
    while flow.pending:
        progressed = False
        for pseq in list(flow.pending):
            d = (pseq - flow.next_seq + 2**31) % 2**32 - 2**31
            if d <= 0:
                pdata = flow.pending.pop(pseq)
                if -d < len(pdata):
                    pdata = pdata[-d:]
                    out.append(pdata)
                    flow.next_seq = (flow.next_seq + len(pdata)) & 0xFFFFFFFF
                progressed = True
        if not progressed:
            break
    return out


# -- writing ----------------------------------------------------------------------------------------------
def _split_addr(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return host, int(port or 0)
    host, _, port = text.rpartition(":")
    return host, int(port or 0)


def write_pcap(frame: "pd.DataFrame", path: str | os.PathLike) -> int:
    """Write the rows of a `sip()` frame as Ethernet/IP/UDP|TCP packets (pcap, nanosecond timestamps).

    Each TCP connection (src, dst pair) gets its own running sequence numbers, one segment per message,
    so Wireshark reassembles nothing and shows one SIP message per frame. Returns the packet count."""
    import dpkt

    seqs: dict[tuple, int] = {}
    count = 0
    ts_ns = frame["timestamp"].astype("int64").to_numpy() if len(frame) else []
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f, snaplen=262144, linktype=DLT_EN10MB, nano=True)
        for i, (transport, src, dst, raw) in enumerate(zip(frame["transport"].astype(object), frame["src"].astype(object),
                                                           frame["dst"].astype(object), frame["raw"].astype(object))):
            if not (isinstance(raw, str) and isinstance(src, str) and isinstance(dst, str)):
                continue
            payload = raw.encode("utf-8")
            (shost, sport), (dhost, dport) = _split_addr(str(src)), _split_addr(str(dst))
            if transport == "udp":
                l4: Any = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
                l4.ulen = 8 + len(payload)
                proto = dpkt.ip.IP_PROTO_UDP
            else:
                key = (shost, sport, dhost, dport)
                seq = seqs.get(key, 1)
                back = seqs.get((dhost, dport, shost, sport), 1)
                l4 = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=back, off=5,
                                  flags=dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK, win=65535, data=payload)
                seqs[key] = (seq + len(payload)) & 0xFFFFFFFF
                proto = dpkt.ip.IP_PROTO_TCP
            if ":" in shost:
                ip: Any = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, shost), dst=socket.inet_pton(socket.AF_INET6, dhost),
                                       nxt=proto, hlim=64, data=l4)
                ip.plen = len(bytes(l4))
                ip.extension_hdrs = {}
                eth_type = dpkt.ethernet.ETH_TYPE_IP6
            else:
                ip = dpkt.ip.IP(src=socket.inet_pton(socket.AF_INET, shost), dst=socket.inet_pton(socket.AF_INET, dhost),
                                p=proto, ttl=64, data=l4)
                ip.len = 20 + len(bytes(l4))
                eth_type = dpkt.ethernet.ETH_TYPE_IP
            eth = dpkt.ethernet.Ethernet(src=b"\x00" * 6, dst=b"\x00" * 6, type=eth_type, data=ip)
            writer.writepkt(bytes(eth), ts=int(ts_ns[i]) / 1e9)  # dpkt takes float seconds: ~0.2 µs resolution
            count += 1
    return count

