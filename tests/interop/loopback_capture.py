"""Byte-exact capture of the SIP traffic on a test namespace's loopback (what linphone and baresip really send).

Why not the notebook_im trace: it records messages as text, and a body that is not UTF-8 (liblinphone's
`Content-Encoding: deflate` IMDNs and is-composing documents) cannot be recovered from it. Why not tshark: one
more program to start and stop and a pcap to parse, for what a raw socket does in 150 lines.

`LoopbackCapture(netns)` opens an AF_PACKET socket on `lo` from inside the namespace (Netns.run_in) and reads
frames on a thread until `stop()`. On loopback the kernel shows every packet twice (once going out, once
coming in); only the outgoing copy is kept. IPv4 UDP datagrams are one SIP message each; TCP payloads are
joined per direction of a connection and cut at Content-Length. IPv6 is not decoded (the clients are set to
IPv4).

`WireMessage.body()` undoes `Content-Encoding: deflate` (zlib or raw deflate) and gzip, so the report can show
the CPIM/IMDN/is-composing document that was compressed on the wire.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from .netns_support import Netns

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
COMPACT = {
    "c": "content-type",
    "e": "content-encoding",
    "l": "content-length",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "v": "via",
    "m": "contact",
    "k": "supported",
    "s": "subject",
    "o": "event",
}


@dataclass
class WireMessage:
    """One SIP message as it crossed loopback."""

    time: float
    transport: str  # "udp" or "tcp"
    src: str  # "host:port"
    dst: str
    raw: bytes  # the whole message: header bytes, blank line, body bytes
    head: str = field(init=False)
    headers: list[tuple[str, str]] = field(init=False)
    raw_body: bytes = field(init=False)

    def __post_init__(self) -> None:
        head, _, self.raw_body = self.raw.partition(b"\r\n\r\n")
        self.head = head.decode("utf-8", "replace")
        self.headers = []
        for line in self.head.split("\r\n")[1:]:
            name, sep, value = line.partition(":")
            if sep:
                self.headers.append((name.strip(), value.strip()))

    @property
    def start_line(self) -> str:
        return self.head.split("\r\n", 1)[0]

    @property
    def is_request(self) -> bool:
        return not self.start_line.startswith("SIP/2.0 ")

    @property
    def method(self) -> str:
        """The request method, or for a response the method in its CSeq."""
        if self.is_request:
            return self.start_line.split(" ", 1)[0]
        return (self.header("CSeq") or " ?").split()[-1]

    @property
    def status(self) -> int | None:
        return None if self.is_request else int(self.start_line.split()[1])

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive, compact forms too)."""
        want = name.lower()
        for n, v in self.headers:
            if COMPACT.get(n.lower(), n.lower()) == want:
                return v
        return None

    def body(self) -> bytes:
        """The body with its Content-Encoding undone (deflate as zlib or raw deflate, gzip)."""
        encoding = (self.header("Content-Encoding") or "").lower()
        data = self.raw_body
        if encoding == "deflate":
            for wbits in (zlib.MAX_WBITS, -zlib.MAX_WBITS):
                try:
                    return zlib.decompress(data, wbits)
                except zlib.error:
                    continue
            raise ValueError(
                f"a Content-Encoding: deflate body that neither zlib nor raw deflate decodes: {data[:40]!r}"
            )
        if encoding in ("gzip", "x-gzip"):
            return zlib.decompress(data, 16 + zlib.MAX_WBITS)
        return data

    def text(self) -> str:
        """Head and decoded body as text, for reports and assertion messages; says when it decoded a body."""
        body = self.body()
        note = ""
        if body != self.raw_body:
            note = (
                f"[body: {len(self.raw_body)} bytes {self.header('Content-Encoding')} on the wire, inflated here]\r\n"
            )
        return f"{self.head}\r\n\r\n{note}{body.decode('utf-8', 'replace')}"


class LoopbackCapture:
    """Every IPv4 UDP/TCP packet on the namespace's `lo` to or from `ports` (all ports if None)."""

    def __init__(self, netns: Netns, ports: set[int] | None = None, max_frames: int = 200_000) -> None:
        self.ports = ports
        self.max_frames = max_frames
        self.truncated = False  # True once max_frames were kept and later frames were dropped
        self.frames: list[tuple[float, bytes]] = []
        self._stop = threading.Event()

        def open_socket() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            s.bind(("lo", 0))
            s.settimeout(0.1)
            return s

        self.sock = netns.run_in(open_socket)
        self._thread = threading.Thread(target=self._read, daemon=True, name="loopback-capture")
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                frame, addr = self.sock.recvfrom(1 << 17)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] == PACKET_OUTGOING:
                if len(self.frames) >= self.max_frames:
                    self.truncated = True
                    continue
                self.frames.append((time.time(), frame))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def __enter__(self) -> LoopbackCapture:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- decoding ------------------------------------------------------------------------------------------
    def packets(self) -> list[tuple[float, str, str, int, str, int, bytes]]:
        """(time, "udp"|"tcp", src host, src port, dst host, dst port, payload) of each IPv4 packet kept."""
        out = []
        for t, frame in list(self.frames):
            if len(frame) < 34 or frame[12:14] != b"\x08\x00":  # Ethernet header, then IPv4 only
                continue
            ip = frame[14:]
            ihl = (ip[0] & 0x0F) * 4
            total = struct.unpack("!H", ip[2:4])[0]
            proto = ip[9]
            src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
            seg = ip[ihl:total]
            if proto == 17 and len(seg) >= 8:
                sport, dport = struct.unpack("!HH", seg[:4])
                payload, kind = seg[8:], "udp"
            elif proto == 6 and len(seg) >= 20:
                sport, dport = struct.unpack("!HH", seg[:4])
                payload, kind = seg[(seg[12] >> 4) * 4 :], "tcp"
            else:
                continue
            if self.ports is not None and sport not in self.ports and dport not in self.ports:
                continue
            out.append((t, kind, src, sport, dst, dport, payload))
        return out

    def sip(self, method: str | None = None, contains: bytes | str | None = None) -> list[WireMessage]:
        """The SIP messages seen, in order; optionally only `method` (requests and their responses) and only
        those whose raw bytes or decoded body contain `contains`."""
        messages: list[WireMessage] = []
        streams: dict[tuple[str, int, str, int], tuple[float, bytearray]] = {}
        for t, kind, src, sport, dst, dport, payload in self.packets():
            if not payload.strip():
                continue  # keep-alive CRLFs, empty TCP segments
            if kind == "udp":
                if payload[:3] != b"SIP" and not re.match(rb"^[A-Z]+ \S+ SIP/2\.0\r\n", payload):
                    continue
                messages.append(WireMessage(t, "udp", f"{src}:{sport}", f"{dst}:{dport}", payload))
                continue
            key = (src, sport, dst, dport)
            start, buf = streams.setdefault(key, (t, bytearray()))
            buf += payload
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                m = re.search(rb"\r\n(?:Content-Length|l)[ \t]*:[ \t]*(\d+)", bytes(buf[: end + 2]), re.I)
                length = int(m.group(1)) if m else 0
                if len(buf) < end + 4 + length:
                    break
                raw = bytes(buf[: end + 4 + length])
                del buf[: end + 4 + length]
                stripped = raw.lstrip(b"\r\n")
                if stripped:
                    messages.append(WireMessage(t, "tcp", f"{src}:{sport}", f"{dst}:{dport}", stripped))
        messages.sort(key=lambda m: m.time)
        if method is not None:
            messages = [m for m in messages if m.method == method]
        if contains is not None:
            needle = contains.encode() if isinstance(contains, str) else contains
            messages = [m for m in messages if needle in m.raw or needle in _safe_body(m)]
        return messages


def _safe_body(message: WireMessage) -> bytes:
    try:
        return message.body()
    except (ValueError, zlib.error):
        return b""
