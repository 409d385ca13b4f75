"""Pcap in and out: `trace.to_pcap(path)` and `nim.read_pcap(path)` (in memory, or streamed into a Parquet dataset).

Reading is capture.py's job (record headers with `struct`, link/IP/UDP/TCP headers decoded by offset, TCP put back in
order with bounded buffers, every skip counted); this module turns what it finds into a `Trace` (in memory, as
before) or, with `to=`, into a Parquet dataset on disk (dataset.py) with memory bounded whatever the capture's size.
Writing pcaps uses dpkt.

* UDP: every datagram whose first line looks like SIP is one message, on any port.
* TCP: each direction of each connection is put back in sequence order (retransmitted and overlapping bytes dropped:
  the first seen wins, as in Wireshark; out-of-order segments held until the gap fills, within bounds; sequence
  numbers wrapping at 2**32) and cut into messages by Content-Length, so several messages in one segment and one
  message across segments both come out whole. A message gets the timestamp of the segment that completed it. A
  stream that does not start like SIP is ignored; one joined midway starts at its first SIP start line.
* IP fragments are not reassembled (rare on loopback and LANs where SIP runs over UDP); they are counted.

The in-memory result is a `Trace` like the platform's, so `read_pcap(p).sip()` has the same schema as
`platform.trace.sip()` and `.messages()` reconstructs the IM messages from the SIP requests and answers.
Without `local=`, a capture has no "our side": direction is NA. Give `local="127.0.0.1:5060"` (or a host,
or a list) to mark packets from those addresses "out" and to them "in".
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..record.recorder import Trace
from .capture import (  # noqa: F401 - re-exported: the names this module always had
    DLT_EN10MB,
    DLT_IPV4,
    DLT_IPV6,
    DLT_LINUX_SLL,
    DLT_LINUX_SLL2,
    DLT_LOOP,
    DLT_NULL,
    DLT_RAW,
    PCAPNG_MAGIC,
    CaptureLimits,
    CaptureStats,
    capture_files,
    looks_like_sip,
    parse_local,
    scan,
    split_addr,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .dataset import ImportResult

PcapStats = CaptureStats  # the name of read_pcap's counters before they grew (trace.pcap_stats)


class _TraceSink:
    """Records each message `capture.scan` finds into a Trace, with the direction relative to `local`."""

    def __init__(self, trace: Trace, local: Any) -> None:
        self.trace = trace
        self.hosts, self.addrs = parse_local(local)
        self.owner = ""

    def begin(self, owner: str) -> None:
        self.owner = owner

    def add(self, ts_ns: int, transport: str, src: tuple[str, int], dst: tuple[str, int], raw: bytes) -> None:
        ts = ts_ns / 1e9
        if src in self.addrs or src[0] in self.hosts:
            self.trace.record_sip("out", transport, src, dst, raw, self.owner, ts=ts)
        elif dst in self.addrs or dst[0] in self.hosts:
            self.trace.record_sip("in", transport, dst, src, raw, self.owner, ts=ts)
        else:
            self.trace.record_sip("", transport, dst, src, raw, self.owner, ts=ts)


def read_pcap(
    path: Any,
    *,
    local: Any = None,
    owner: str | None = None,
    to: str | os.PathLike | None = None,
    memory: int | str | None = None,
    limits: CaptureLimits | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Trace | ImportResult:
    """Load the SIP messages of a pcap or pcapng capture (UDP and TCP, IPv4 and IPv6, any port; gzip-compressed
    too) into a `Trace`, or with `to="dir/"` stream them into a Parquet dataset on disk.

    `path` is a file, a directory of rotated captures, or a list of these (read in time order as one capture).
    `read_pcap(p).sip()` is the same frame as `platform.trace.sip()`; `.messages()` reconstructs the IM messages.
    `local` (a "host", "host:port", (host, port) or a list of them) says which side is "ours" for the direction
    column; `owner` names the capture in the owner column (default "pcap:<file name>"). `trace.pcap_stats` counts
    packets, SIP messages and everything skipped (a `CaptureStats`).

    With `to=`, nothing is kept in memory: rows are written as Parquet row groups as they come (partitioned by
    date and hour, the columns and dtypes of `trace.sip()`), with peak memory bounded by `memory` (default
    "512MiB"; or `limits=CaptureLimits(...)`) whatever the capture's size, and an `ImportResult` is returned
    (`.rows`, `.stats`, `.open()` to query it with `open_traces`). `to=` must be a new or empty directory or an
    existing dataset (rows are added); anything else raises ValueError before any work. `progress(done, total)`
    gets the bytes read so far and the total (both sizes on disk)."""
    if to is not None:
        from .dataset import import_captures

        return import_captures(path, to, local=local, owner=owner, memory=memory, limits=limits, progress=progress)
    if limits is not None and memory is not None:
        raise ValueError("pass memory= or limits=, not both (limits=CaptureLimits(memory=...) holds the budget)")
    limits = limits or CaptureLimits(memory=memory if memory is not None else "512MiB")
    from .capture import _Counters

    pre = _Counters()
    files = capture_files(path, owner, pre)
    name = str(path) if isinstance(path, (str, os.PathLike)) else ", ".join(map(str, path))
    trace = Trace(max_records=None, index="eager", name=name)
    total = sum(cf.path.stat().st_size for cf in files)
    stats = scan(files, _TraceSink(trace, local), limits, (lambda done: progress(done, total)) if progress else None)
    trace.pcap_stats = stats + CaptureStats(files_skipped=pre.files_skipped)  # type: ignore[attr-defined]
    return trace


# -- writing ----------------------------------------------------------------------------------------------
def write_pcap(frame: pd.DataFrame, path: str | os.PathLike) -> int:
    """Write the rows of a `sip()` frame as Ethernet/IP/UDP|TCP packets (pcap, nanosecond timestamps).

    Each TCP connection (src, dst pair) gets its own running sequence numbers, one segment per message,
    so Wireshark reassembles nothing and shows one SIP message per frame. Returns the packet count."""
    import dpkt

    seqs: dict[tuple, int] = {}
    count = 0
    ts_ns = frame["timestamp"].astype("int64").to_numpy() if len(frame) else []
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f, snaplen=262144, linktype=DLT_EN10MB, nano=True)
        for i, (transport, src, dst, raw) in enumerate(
            zip(
                frame["transport"].astype(object),
                frame["src"].astype(object),
                frame["dst"].astype(object),
                frame["raw"].astype(object),
            )
        ):
            if not (isinstance(raw, str) and isinstance(src, str) and isinstance(dst, str)):
                continue
            payload = raw.encode("utf-8")
            (shost, sport), (dhost, dport) = split_addr(str(src)), split_addr(str(dst))
            if transport == "udp":
                l4: Any = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
                l4.ulen = 8 + len(payload)
                proto = dpkt.ip.IP_PROTO_UDP
            else:
                key = (shost, sport, dhost, dport)
                seq = seqs.get(key, 1)
                back = seqs.get((dhost, dport, shost, sport), 1)
                l4 = dpkt.tcp.TCP(
                    sport=sport,
                    dport=dport,
                    seq=seq,
                    ack=back,
                    off=5,
                    flags=dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK,
                    win=65535,
                    data=payload,
                )
                seqs[key] = (seq + len(payload)) & 0xFFFFFFFF
                proto = dpkt.ip.IP_PROTO_TCP
            if ":" in shost:
                ip: Any = dpkt.ip6.IP6(
                    src=socket.inet_pton(socket.AF_INET6, shost),
                    dst=socket.inet_pton(socket.AF_INET6, dhost),
                    nxt=proto,
                    hlim=64,
                    data=l4,
                )
                ip.plen = len(bytes(l4))
                ip.extension_hdrs = {}
                eth_type = dpkt.ethernet.ETH_TYPE_IP6
            else:
                ip = dpkt.ip.IP(
                    src=socket.inet_pton(socket.AF_INET, shost),
                    dst=socket.inet_pton(socket.AF_INET, dhost),
                    p=proto,
                    ttl=64,
                    data=l4,
                )
                ip.len = 20 + len(bytes(l4))
                eth_type = dpkt.ethernet.ETH_TYPE_IP
            eth = dpkt.ethernet.Ethernet(src=b"\x00" * 6, dst=b"\x00" * 6, type=eth_type, data=ip)
            writer.writepkt(bytes(eth), ts=int(ts_ns[i]) / 1e9)  # dpkt takes float seconds: ~0.2 µs resolution
            count += 1
    return count
