"""Synthetic SIP captures, fast enough to make gigabytes (bench/pcap_scale.py) and small enough for tests.

`generate(path, size)` writes a classic pcap (Ethernet/IPv4, microseconds) of SIP IM traffic in time order:
pager-mode MESSAGE/200 pairs over UDP (most of it), MESSAGE/200 over a few long-lived TCP connections between
proxies (some messages split across two segments, some two to a segment), INVITE dialogs with composing indications,
texts and BYE over UDP, and failures (404, 408, 480). Latencies are random (exponential, a tail over 200 ms), and
UDP requests are sometimes retransmitted. It returns a `Truth` with what it wrote (counts by method, status and
transport, every request's latency), which the tests compare with what an import finds.

Packets are built with `struct` from templates (no dpkt objects), about 2 µs each, so 1 GB takes about a minute.
"""

from __future__ import annotations

import gzip
import heapq
import random
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

START = 1_714_550_400.0  # 2024-05-01 08:00:00 UTC
USERS = [f"user{i:04d}" for i in range(2000)]
REQUEST = (
    "{method} sip:{to}@example.com SIP/2.0\r\n"
    "Via: SIP/2.0/{tr} {sip}:{sport};branch=z9hG4bK{branch}\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:{frm}@example.com>;tag={ftag}\r\n"
    "To: <sip:{to}@example.com>{totag}\r\n"
    "Call-ID: {cid}\r\n"
    "CSeq: {cseq} {method}\r\n"
    "User-Agent: synth/1.0\r\n"
    "{extra}"
    "Content-Length: {clen}\r\n\r\n"
)
RESPONSE = (
    "SIP/2.0 {status} {reason}\r\n"
    "Via: SIP/2.0/{tr} {sip}:{sport};branch=z9hG4bK{branch}\r\n"
    "From: <sip:{frm}@example.com>;tag={ftag}\r\n"
    "To: <sip:{to}@example.com>;tag={ttag}\r\n"
    "Call-ID: {cid}\r\n"
    "CSeq: {cseq} {method}\r\n"
    "Server: synth/1.0\r\n"
    "Content-Length: 0\r\n\r\n"
)
REASONS = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    202: "Accepted",
    404: "Not Found",
    408: "Request Timeout",
    480: "Temporarily Unavailable",
}
COMPOSING = (
    '<?xml version="1.0" encoding="UTF-8"?>\r\n<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing">'
    "\r\n<state>active</state>\r\n<contenttype>text/plain</contenttype>\r\n<refresh>60</refresh>\r\n"
    "</isComposing>\r\n"
)
SDP = (
    "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=message 5060 sip null\r\n"
    "a=accept-types:text/plain\r\n"
)
WORDS = "hello are you there lunch at noon sure the build is green again ship it tomorrow works fine by me".split()


@dataclass
class Truth:
    """What `generate` wrote."""

    packets: int = 0
    bytes: int = 0
    messages: int = 0  # SIP messages (a retransmission counts again)
    by_transport: Counter = field(default_factory=Counter)
    requests: Counter = field(default_factory=Counter)  # method -> requests sent (first copies only)
    finals: Counter = field(default_factory=Counter)  # status -> final responses
    retransmissions: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)  # method -> seconds, first request to final
    call_ids: list[str] = field(default_factory=list)  # in order of first request, when kept (keep_call_ids)
    dialogs: dict[str, tuple[int, int]] = field(default_factory=dict)  # INVITE Call-ID -> (texts, composing)
    first_ts: float = 0.0
    last_ts: float = 0.0


class _Writer:
    """Ethernet/IPv4/UDP|TCP packets into a pcap, in time order (a heap holds the packets of the near future)."""

    def __init__(self, f: BinaryIO, truth: Truth) -> None:
        self.f = f
        self.truth = truth
        self.pending: list[tuple[float, int, bytes]] = []
        self.n = 0
        self.buf = bytearray()
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        self.ip_id = 0

    def frame(
        self,
        ts: float,
        src: tuple[bytes, int],
        dst: tuple[bytes, int],
        payload: bytes,
        tcp_seq: int | None = None,
        flags: int = 0x18,
    ) -> None:
        if tcp_seq is None:
            l4 = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0)
            proto = 17
        else:
            l4 = struct.pack("!HHIIBBHHH", src[1], dst[1], tcp_seq & 0xFFFFFFFF, 1, 0x50, flags, 65535, 0, 0)
            proto = 6
        self.ip_id = (self.ip_id + 1) & 0xFFFF
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4) + len(payload), self.ip_id, 0x4000, 64, proto, 0, src[0], dst[0]
        )
        packet = b"\x00\x16\x3e\x00\x00\x02\x00\x16\x3e\x00\x00\x01\x08\x00" + ip + l4 + payload
        self.n += 1
        heapq.heappush(self.pending, (ts, self.n, packet))

    def advance(self, now: float) -> None:
        """Write every packet stamped before `now`."""
        pending = self.pending
        buf = self.buf
        while pending and pending[0][0] <= now:
            ts, _n, packet = heapq.heappop(pending)
            sec = int(ts)
            buf += struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(packet), len(packet))
            buf += packet
            self.truth.packets += 1
            self.truth.last_ts = ts
        if len(buf) > 1 << 20:
            self.flush()

    def flush(self) -> None:
        self.f.write(self.buf)
        self.truth.bytes += len(self.buf)
        self.buf = bytearray()


def _ip(i: int) -> bytes:
    return bytes((10, 0, (i >> 8) & 0xFF, i & 0xFF))


def generate(
    path: str | Path,
    size: int,
    *,
    seed: int = 1,
    rate: float = 40.0,
    tcp_share: float = 0.1,
    dialog_share: float = 0.08,
    gzipped: bool = False,
    keep_call_ids: bool = False,
) -> Truth:
    """Write about `size` bytes of capture to `path` (see the module docstring); `rate` exchanges per second set
    how many hours it spans (40/s: a 100 MB capture spans about an hour, 5 GB about two days)."""
    rnd = random.Random(seed)
    truth = Truth()
    truth.latencies = {"MESSAGE": [], "INVITE": [], "BYE": []}
    opener = gzip.open if gzipped else open
    seqs: dict[tuple, int] = {}
    tcp_links = [((_ip(200 + i), 5060), (_ip(300 + i), 5060)) for i in range(4)]
    n = 0
    with opener(path, "wb") as f:  # type: ignore[operator]
        w = _Writer(f, truth)
        t = START
        truth.first_ts = START
        while truth.bytes + len(w.buf) < size:
            n += 1
            t += rnd.expovariate(rate)
            w.advance(t)
            frm, to = rnd.choice(USERS), rnd.choice(USERS)
            cid = f"{n:x}-{rnd.getrandbits(40):x}@example.com"
            if keep_call_ids:
                truth.call_ids.append(cid)
            a = (_ip(1 + n % 250), 5060 + n % 7)
            b = (_ip(1000 + (n * 7) % 250), 5060)
            r = rnd.random()
            if r < tcp_share:
                _tcp_exchange(w, rnd, truth, seqs, rnd.choice(tcp_links), t, n, frm, to, cid)
            elif r < tcp_share + dialog_share:
                _dialog(w, rnd, truth, t, n, a, b, frm, to, cid)
            else:
                _pager(w, rnd, truth, t, n, a, b, frm, to, cid)
        w.advance(float("inf"))
        w.flush()
    return truth


def _text(rnd: random.Random) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(3, 12)))


def _latency(rnd: random.Random) -> float:
    return round(min(rnd.expovariate(1 / 0.06), 5.0), 6)


def _request(
    method: str,
    tr: str,
    src: tuple,
    branch: str,
    frm: str,
    to: str,
    ftag: str,
    cid: str,
    cseq: int,
    body: str = "",
    ctype: str = "text/plain",
    totag: str = "",
) -> bytes:
    body_b = body.encode()
    extra = f"Content-Type: {ctype}\r\n" if body_b else ""
    host = ".".join(map(str, src[0]))
    return (
        REQUEST.format(
            method=method,
            to=to,
            tr=tr,
            sip=host,
            sport=src[1],
            branch=branch,
            frm=frm,
            ftag=ftag,
            totag=f";tag={totag}" if totag else "",
            cid=cid,
            cseq=cseq,
            extra=extra,
            clen=len(body_b),
        ).encode()
        + body_b
    )


def _response(
    status: int,
    method: str,
    tr: str,
    src: tuple,
    branch: str,
    frm: str,
    to: str,
    ftag: str,
    ttag: str,
    cid: str,
    cseq: int,
) -> bytes:
    host = ".".join(map(str, src[0]))
    return RESPONSE.format(
        status=status,
        reason=REASONS[status],
        tr=tr,
        sip=host,
        sport=src[1],
        branch=branch,
        frm=frm,
        to=to,
        ftag=ftag,
        ttag=ttag,
        cid=cid,
        cseq=cseq,
        method=method,
    ).encode()


def _udp_transaction(
    w: _Writer,
    rnd: random.Random,
    truth: Truth,
    t: float,
    a: tuple,
    b: tuple,
    method: str,
    branch: str,
    frm: str,
    to: str,
    ftag: str,
    ttag: str,
    cid: str,
    cseq: int,
    body: str = "",
    ctype: str = "text/plain",
    totag: str = "",
    status: int = 200,
    provisional: tuple[int, ...] = (),
) -> float:
    req = _request(method, "UDP", a, branch, frm, to, ftag, cid, cseq, body, ctype, totag)
    w.frame(t, a, b, req)
    truth.messages += 1
    truth.by_transport["udp"] += 1
    truth.requests[method] += 1
    lat = _latency(rnd)
    if lat > 0.5:  # a retransmission at T1 when the answer is slow
        w.frame(t + 0.5, a, b, req)
        truth.messages += 1
        truth.by_transport["udp"] += 1
        truth.retransmissions += 1
    for i, p in enumerate(provisional):
        w.frame(
            t + lat * (i + 1) / (len(provisional) + 1),
            b,
            a,
            _response(p, method, "UDP", a, branch, frm, to, ftag, ttag, cid, cseq),
        )
        truth.messages += 1
        truth.by_transport["udp"] += 1
    w.frame(t + lat, b, a, _response(status, method, "UDP", a, branch, frm, to, ftag, ttag, cid, cseq))
    truth.messages += 1
    truth.by_transport["udp"] += 1
    truth.finals[status] += 1
    truth.latencies.setdefault(method, []).append(lat)
    return lat


def _pager(
    w: _Writer, rnd: random.Random, truth: Truth, t: float, n: int, a: tuple, b: tuple, frm: str, to: str, cid: str
) -> None:
    r = rnd.random()
    status = 200 if r < 0.95 else 404 if r < 0.97 else 408 if r < 0.99 else 480
    _udp_transaction(
        w, rnd, truth, t, a, b, "MESSAGE", f"{n:x}p", frm, to, f"f{n:x}", f"t{n:x}", cid, 1, _text(rnd), status=status
    )


def _dialog(
    w: _Writer, rnd: random.Random, truth: Truth, t: float, n: int, a: tuple, b: tuple, frm: str, to: str, cid: str
) -> None:
    ftag, ttag = f"f{n:x}", f"t{n:x}"
    lat = _udp_transaction(
        w,
        rnd,
        truth,
        t,
        a,
        b,
        "INVITE",
        f"{n:x}i",
        frm,
        to,
        ftag,
        ttag,
        cid,
        1,
        SDP,
        "application/sdp",
        provisional=(100, 180),
    )
    t += lat
    ack = _request("ACK", "UDP", a, f"{n:x}a", frm, to, ftag, cid, 1, totag=ttag)
    w.frame(t + 0.001, a, b, ack)
    truth.messages += 1
    truth.by_transport["udp"] += 1
    truth.requests["ACK"] += 1
    cseq = 2
    rounds = rnd.randint(1, 4)
    truth.dialogs[cid] = (rounds, rounds)
    for i in range(rounds):
        t += rnd.uniform(0.5, 3.0)
        _udp_transaction(
            w,
            rnd,
            truth,
            t,
            a,
            b,
            "MESSAGE",
            f"{n:x}c{i}",
            frm,
            to,
            ftag,
            ttag,
            cid,
            cseq,
            COMPOSING,
            "application/im-iscomposing+xml",
            totag=ttag,
        )
        cseq += 1
        t += rnd.uniform(0.5, 5.0)
        _udp_transaction(
            w, rnd, truth, t, a, b, "MESSAGE", f"{n:x}m{i}", frm, to, ftag, ttag, cid, cseq, _text(rnd), totag=ttag
        )
        cseq += 1
    t += rnd.uniform(1.0, 10.0)
    _udp_transaction(w, rnd, truth, t, a, b, "BYE", f"{n:x}b", frm, to, ftag, ttag, cid, cseq, totag=ttag)


def _tcp_exchange(
    w: _Writer, rnd: random.Random, truth: Truth, seqs: dict, link: tuple, t: float, n: int, frm: str, to: str, cid: str
) -> None:
    a, b = link
    branch, ftag, ttag = f"{n:x}t", f"f{n:x}", f"t{n:x}"
    req = _request("MESSAGE", "TCP", a, branch, frm, to, ftag, cid, 1, _text(rnd))
    lat = _latency(rnd)
    resp = _response(200, "MESSAGE", "TCP", a, branch, frm, to, ftag, ttag, cid, 1)
    sent = t
    for when, src, dst, payload in ((t, a, b, req), (t + lat, b, a, resp)):
        key = (src, dst)
        seq, last = seqs.get(key, (1000, 0.0))
        when = max(when, last + 0.00001)  # a stream's segments go out in order
        if rnd.random() < 0.15 and len(payload) > 40:  # one message across two segments
            cut = rnd.randint(10, len(payload) - 10)
            w.frame(when, src, dst, payload[:cut], seq)
            w.frame(when + 0.0001, src, dst, payload[cut:], seq + cut)
            done = when + 0.0001
        else:
            w.frame(when, src, dst, payload, seq)
            done = when
        seqs[key] = (seq + len(payload), done)
        truth.messages += 1
        truth.by_transport["tcp"] += 1
        if src == a:
            sent = done
        else:
            lat = done - sent
    truth.requests["MESSAGE"] += 1
    truth.finals[200] += 1
    truth.latencies["MESSAGE"].append(lat)


# -- packets one by one (the adversarial tests) ---------------------------------------------------------------------
def _addr(a: tuple[str, int]) -> tuple[bytes, int]:
    return bytes(int(x) for x in a[0].split(".")), a[1]


def tcp_packet(src: tuple[str, int], dst: tuple[str, int], seq: int, payload: bytes = b"", flags: int = 0x18) -> bytes:
    """Ethernet/IPv4/TCP bytes (flags: 0x02 SYN, 0x01 FIN, 0x04 RST, 0x10 ACK, 0x08 PSH)."""
    (s, sp), (d, dp) = _addr(src), _addr(dst)
    l4 = struct.pack("!HHIIBBHHH", sp, dp, seq & 0xFFFFFFFF, 1, 0x50, flags, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4) + len(payload), 0, 0x4000, 64, 6, 0, s, d)
    return b"\x00\x16\x3e\x00\x00\x02\x00\x16\x3e\x00\x00\x01\x08\x00" + ip + l4 + payload


def udp_packet(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    (s, sp), (d, dp) = _addr(src), _addr(dst)
    l4 = struct.pack("!HHHH", sp, dp, 8 + len(payload), 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0x4000, 64, 17, 0, s, d)
    return b"\x00\x16\x3e\x00\x00\x02\x00\x16\x3e\x00\x00\x01\x08\x00" + ip + l4 + payload


def write_packets(
    path: str | Path, packets: list[bytes], *, start: float = START, step: float = 0.001, linktype: int = 1
) -> Path:
    """A classic pcap (microseconds) of `packets`, `step` seconds apart."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
    for i, p in enumerate(packets):
        ts = start + i * step
        sec = int(ts)
        out += struct.pack("<IIII", sec, int(round((ts - sec) * 1e6)), len(p), len(p)) + p
    Path(path).write_bytes(bytes(out))
    return Path(path)


def sip_request(call_id: str, cseq: int = 1, body: str = "hello", method: str = "MESSAGE") -> bytes:
    b = body.encode()
    return (
        f"{method} sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK{call_id}-{cseq}\r\n"
        f"From: <sip:alice@example.test>;tag=a{cseq}\r\nTo: <sip:bob@example.test>\r\nCall-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\nContent-Type: text/plain\r\nContent-Length: {len(b)}\r\n\r\n"
    ).encode() + b
