"""Scale: 10,000 registered users and 10,000 open IM sessions on the embedded server (in a process of its own),
and what they cost it in memory (RSS read from /proc, before and after).

The load comes from raw UDP sockets of this process, so nothing but the server does SIP work in the measured
process: one socket REGISTERs users u00000..u09999 (distinct addresses of record, each with its own Contact
sip:uNNNNN@127.0.0.1:<that socket>), at most WINDOW requests in flight; then a second socket INVITEs each of
those users through the server (`m=message` SDP, as Lync does), the first socket answers each forwarded INVITE
200 with the Record-Route copied, and the caller ACKs along the route; a session is open once its ACK arrived
at the callee. Nobody sends BYE: all of them stay open. Lost datagrams are retransmitted after 1 s (as a UA
would, at most 5 times); whatever is not done within the time limit is counted as missing.

Memory per user / per session = RSS growth / count. The server keeps no dialog state (it is a transaction-
stateful proxy that record-routes), so what a session costs is its transactions (which linger 32 s after
their answer on UDP, RFC 3261 Timer J/RFC 6026), the registrar binding, and the server's trace of the
messages (bounded by its max_records). The anchor puts that next to the bytes of the messages themselves.
"""

from __future__ import annotations

import re
import select
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from _common import BENCH, HOST, Child, Context, Row, free_port, ratio, register_request, status_of, yes_no

WINDOW = 100
RETRY_AFTER = 1.0
MAX_TRIES = 6
SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=message 5060 sip null\r\na=accept-types:text/plain text/html\r\n"
)
CALL_ID = re.compile(rb"^(?:Call-ID|i)[ \t]*:[ \t]*(\w+)-(\d+)@", re.M | re.I)


def header_lines(data: bytes) -> list[str]:
    """The header lines of a datagram (start line and body left out)."""
    return data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").split("\r\n")[1:]


def values(lines: list[str], *names: str) -> list[str]:
    """The values of the headers called any of `names` (case-insensitive), in order."""
    wanted = {n.lower() for n in names}
    out = []
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip().lower() in wanted:
            out.append(value.strip())
    return out


def call_index(data: bytes) -> tuple[str, int] | None:
    """(kind, i) from our Call-IDs `reg<run>-<i>@...` / `inv<run>-<i>@...`."""
    m = CALL_ID.search(data)
    return (m.group(1).decode()[:3], int(m.group(2))) if m else None


@dataclass
class Pending:
    """Work items in flight: index -> (time last sent, tries); a bounded window of them."""

    total: int
    send: Callable[[int], None]
    next_index: int = 0
    inflight: dict[int, tuple[float, int]] = field(default_factory=dict)
    done: int = 0
    failed: int = 0
    retransmitted: int = 0

    def fill(self) -> None:
        """Start new items until the window is full."""
        while len(self.inflight) < WINDOW and self.next_index < self.total:
            self.send(self.next_index)
            self.inflight[self.next_index] = (time.monotonic(), 1)
            self.next_index += 1

    def finish(self, i: int, ok: bool = True) -> None:
        """Item i is done (or failed)."""
        if self.inflight.pop(i, None) is not None:
            if ok:
                self.done += 1
            else:
                self.failed += 1

    def retry(self) -> None:
        """Resend items not done after RETRY_AFTER; give up after MAX_TRIES."""
        now = time.monotonic()
        for i, (at, tries) in list(self.inflight.items()):
            if now - at >= RETRY_AFTER:
                if tries >= MAX_TRIES:
                    self.finish(i, ok=False)
                    continue
                self.send(i)
                self.retransmitted += 1
                self.inflight[i] = (now, tries + 1)

    def finished(self) -> bool:
        """Every item done or failed."""
        return self.next_index >= self.total and not self.inflight


def pump(
    sockets: list[socket.socket], handle: Callable[[socket.socket, bytes, tuple], None], work: Pending, timeout: float
) -> float:
    """Drive `work` to the end (or `timeout` seconds): fill the window, read and handle datagrams, retry. Seconds taken."""
    t0 = time.monotonic()
    while not work.finished() and time.monotonic() - t0 < timeout:
        work.fill()
        ready, _, _ = select.select(sockets, [], [], 0.05)
        for s in ready:
            for _ in range(256):
                try:
                    data, addr = s.recvfrom(65535)
                except BlockingIOError:
                    break
                handle(s, data, addr)
        work.retry()
    return time.monotonic() - t0


def udp_socket() -> socket.socket:
    """A non-blocking UDP socket on 127.0.0.1 with large buffers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((HOST, 0))
    s.setblocking(False)
    return s


def run(ctx: Context) -> None:
    """bench/run --only scale"""
    n = 1000 if ctx.quick else 10_000
    settle = 0.0 if ctx.quick else 34.0
    run_id = uuid.uuid4().hex[:6]
    port = free_port()
    with (
        Child([BENCH / "_server_proc.py", port], log=ctx.workdir / "scale_server.log") as server,
        udp_socket() as users,
        udp_socket() as caller,
    ):
        addr = (HOST, port)
        uport, cport = users.getsockname()[1], caller.getsockname()[1]
        idle = server.ask("gc")
        wire = {"register": 0, "invite": 0, "ok": 0, "ack": 0}  # sizes as the callee sees them

        # -- 1. n users register -----------------------------------------------------------------------
        def send_register(i: int) -> None:
            msg = register_request(port, f"u{i:05d}", uport, local_port=uport, n=i, run_id=run_id)
            wire["register"] = len(msg)
            users.sendto(msg, addr)

        registering = Pending(n, send_register)

        def on_register_answer(_s: socket.socket, data: bytes, _a: tuple) -> None:
            status, which = status_of(data), call_index(data)
            if status is not None and status >= 200 and which and which[0] == "reg":
                registering.finish(which[1], ok=status == 200)

        reg_seconds = pump([users], on_register_answer, registering, max(5.0, min(60.0, ctx.left() / 3)))
        after_users = server.ask("gc")
        ctx.emit(
            Row(
                ctx.name,
                f"users registered (raw UDP REGISTER, {WINDOW} in flight, "
                f"{registering.retransmitted} retransmitted) in {reg_seconds:.1f} s",
                after_users["registered"],
                "users",
                goal=f"{n:,}",
                met=yes_no(after_users["registered"] == n),
            )
        )
        per_user = (after_users["rss"] - idle["rss"]) / max(1, registering.done)
        ctx.emit(
            Row(
                ctx.name,
                "server RSS growth per registered user",
                per_user,
                "bytes",
                anchor="one REGISTER on the wire",
                anchor_value=wire["register"],
                ratio=ratio(per_user, wire["register"]),
                goal=f"bounded: all {n:,} in place",
                met=yes_no(registering.done == n),
            )
        )

        # -- 2. n sessions: caller INVITEs each user via the server; the users' socket answers 200 ----------
        answered: dict[int, bytes] = {}
        acked: set[int] = set()

        def send_invite(i: int) -> None:
            body = SDP.encode()
            msg = (
                f"INVITE sip:u{i:05d}@{HOST}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {HOST}:{cport};branch=z9hG4bK-inv{run_id}-{i};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:caller@example.test>;tag=c{i}\r\n"
                f"To: <sip:u{i:05d}@example.test>\r\n"
                f"Call-ID: inv{run_id}-{i}@{HOST}\r\n"
                "CSeq: 1 INVITE\r\n"
                f"Contact: <sip:caller@{HOST}:{cport}>\r\n"
                "Content-Type: application/sdp\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            if i in answered:  # the 200 came but its ACK was lost on the way: the callee resends the 200
                users.sendto(answered[i], addr)
            else:
                caller.sendto(msg, addr)

        opening = Pending(n, send_invite)

        def on_datagram(s: socket.socket, data: bytes, source: tuple) -> None:
            which = call_index(data)
            if not which or which[0] != "inv":
                return
            i = which[1]
            lines = header_lines(data)
            if s is users and data.startswith(b"INVITE "):
                to = values(lines, "To", "t")[0]
                ok = (
                    "SIP/2.0 200 OK\r\n"
                    + "".join(f"Via: {v}\r\n" for v in values(lines, "Via", "v"))
                    + "".join(f"Record-Route: {v}\r\n" for v in values(lines, "Record-Route"))
                    + f"From: {values(lines, 'From', 'f')[0]}\r\nTo: {to};tag=u{i}\r\n"
                    f"Call-ID: {values(lines, 'Call-ID', 'i')[0]}\r\nCSeq: {values(lines, 'CSeq')[0]}\r\n"
                    f"Contact: <sip:u{i:05d}@{HOST}:{uport}>\r\nContent-Length: 0\r\n\r\n"
                ).encode()
                answered[i] = ok
                users.sendto(ok, source)
                wire["invite"], wire["ok"] = len(data), len(ok)
            elif s is users and data.startswith(b"ACK "):
                wire["ack"] = len(data)
                if i not in acked:
                    acked.add(i)
                    opening.finish(i)
            elif s is caller and status_of(data) == 200:
                routes = list(reversed(values(lines, "Record-Route")))
                ack = (
                    f"ACK sip:u{i:05d}@{HOST}:{uport} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP {HOST}:{cport};branch=z9hG4bK-ack{run_id}-{i};rport\r\n"
                    + "".join(f"Route: {r}\r\n" for r in routes)
                    + f"Max-Forwards: 70\r\nFrom: {values(lines, 'From', 'f')[0]}\r\nTo: {values(lines, 'To', 't')[0]}\r\n"
                    f"Call-ID: {values(lines, 'Call-ID', 'i')[0]}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
                ).encode()
                caller.sendto(ack, addr)
            elif s is caller and (status_of(data) or 0) >= 300:
                opening.finish(i, ok=False)

        ses_seconds = pump([users, caller], on_datagram, opening, max(5.0, ctx.left() - settle - 10))
        after_sessions = server.ask("gc")
        ctx.emit(
            Row(
                ctx.name,
                f"sessions open (INVITE/200/ACK through the server, {WINDOW} in flight, "
                f"{opening.retransmitted} retransmitted) in {ses_seconds:.1f} s",
                len(acked),
                "sessions",
                goal=f"{n:,}",
                met=yes_no(len(acked) == n),
            )
        )
        per_session = (after_sessions["rss"] - after_users["rss"]) / max(1, len(acked))
        session_bytes = wire["invite"] + wire["ok"] + wire["ack"]
        ctx.emit(
            Row(
                ctx.name,
                "server RSS growth per open session",
                per_session,
                "bytes",
                anchor="INVITE + 200 + ACK on the wire",
                anchor_value=session_bytes,
                ratio=ratio(per_session, session_bytes),
                goal=f"bounded: all {n:,} in place",
                met=yes_no(len(acked) == n),
            )
        )
        ctx.emit(
            Row(
                ctx.name,
                f"server RSS with {registering.done:,} users and {len(acked):,} sessions",
                after_sessions["rss"] / 2**20,
                "MiB",
                anchor="idle server",
                anchor_value=idle["rss"] / 2**20,
                ratio=ratio(after_sessions["rss"], idle["rss"]),
            )
        )
        if settle and ctx.left() > settle + 5:
            time.sleep(settle)  # the transactions' 32 s linger (Timer J, RFC 6026 Accepted) runs out
            settled = server.ask("gc")
            ctx.emit(
                Row(
                    ctx.name,
                    f"server RSS {settle:.0f} s later (transactions expired; users and sessions stay)",
                    settled["rss"] / 2**20,
                    "MiB",
                    anchor="idle server",
                    anchor_value=idle["rss"] / 2**20,
                    ratio=ratio(settled["rss"], idle["rss"]),
                )
            )
            ctx.note(
                f"Python memory blocks in the server: {idle['blocks']:,} idle, {after_sessions['blocks']:,} with "
                f"the users and sessions, {settled['blocks']:,} {settle:.0f} s later (RSS does not shrink when "
                "Python frees objects; the block count does)"
            )
        ctx.note(
            f"the server's trace held {after_sessions['trace']:,} SIP messages (part of the memory above); "
            f"server stats {after_sessions['stats']}"
        )
