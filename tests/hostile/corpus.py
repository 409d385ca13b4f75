"""The hostile-input corpus (tests/corpus) and the wire harness that throws it at a running target."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import tomllib

from notebook_im.sip import RemoteProtocolError, parse_message
from notebook_im.sip.message import Request, Response
from notebook_im.sip.transaction import make_ack_for_error

ROOT = Path(__file__).resolve().parent.parent / "corpus"
MANIFEST = tomllib.loads((ROOT / "manifest.toml").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Case:
    kind: str  # "valid" / "invalid"
    name: str
    meta: dict

    @property
    def path(self) -> Path:
        return ROOT / self.kind / f"{self.name}.sip"

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    def expected(self, target: str):
        return self.meta[target]

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


CASES = [Case(kind, name, meta) for kind in ("valid", "invalid") for name, meta in MANIFEST[kind].items()]
TCP_CASES = [c for c in CASES if c.meta.get("tcp")]


def instantiate(data: bytes, port: int, transport: str = "udp") -> bytes:
    """Fill in the placeholders: the Via port a response goes to and a fresh run id (branch, Call-ID)."""
    assert 10000 <= port <= 99999, "the placeholder is five digits so header lengths do not change"
    run = os.urandom(4).hex()
    data = data.replace(b"55555", str(port).encode()).replace(b"RUNID", run.encode())
    if transport == "tcp":
        data = data.replace(b"SIP/2.0/UDP 127.0.0.1:", b"SIP/2.0/TCP 127.0.0.1:", 1)
    return data


class Client:
    """A UDP or TCP peer on 127.0.0.1 that sends one message and collects the responses to it."""

    def __init__(self, transport: str, addr: tuple[str, int]) -> None:
        self.transport = transport
        self.addr = addr
        if transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
        else:
            self.sock = socket.create_connection(addr, timeout=5)
        self.port = self.sock.getsockname()[1]
        self._buf = b""

    def send(self, data: bytes) -> None:
        if self.transport == "udp":
            self.sock.sendto(data, self.addr)
        else:
            self.sock.sendall(data)

    def recv(self, timeout: float) -> Response | None | bytes:
        """The next response, None on timeout, b"" when a TCP peer closed the connection."""
        self.sock.settimeout(timeout)
        try:
            if self.transport == "udp":
                return _lenient(self.sock.recvfrom(70000)[0])
            while True:
                end = self._buf.find(b"\r\n\r\n")
                if end >= 0:
                    head = self._buf[:end].decode("utf-8", "replace")
                    length = 0
                    for line in head.split("\r\n"):
                        name, _, value = line.partition(":")
                        if name.strip().lower() in ("content-length", "l"):
                            length = int(value.strip())
                    if len(self._buf) >= end + 4 + length:
                        msg, self._buf = self._buf[: end + 4 + length], self._buf[end + 4 + length :]
                        return _lenient(msg)
                chunk = self.sock.recv(65536)
                if not chunk:
                    return b""
                self._buf += chunk
        except TimeoutError:
            return None
        except ConnectionResetError:
            return b""

    def final_response(self, timeout: float = 5.0) -> Response | None | bytes:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            resp = self.recv(left)
            if not isinstance(resp, Response) or resp.status >= 200:
                return resp

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _lenient(data: bytes) -> Response:
    """A response as parsed; a 400 echoing a request that lacked From/To/Call-ID is incomplete itself, so
    fall back to its status line."""
    try:
        message = parse_message(data)
    except RemoteProtocolError:
        version, _, rest = data.split(b"\r\n", 1)[0].decode("utf-8", "replace").partition(" ")
        code, _, reason = rest.partition(" ")
        assert version == "SIP/2.0" and code.isdigit(), data[:200]
        return Response(int(code), reason)
    assert isinstance(message, Response), data[:200]
    return message


def ack_for(sent: bytes, response: Response) -> bytes | None:
    """The ACK that ends an INVITE transaction answered with a non-2xx (so the target stops retransmitting)."""
    try:
        request = parse_message(sent)
    except RemoteProtocolError:
        return None
    if isinstance(request, Request) and request.method == "INVITE" and response.status >= 300:
        return bytes(make_ack_for_error(request, response))
    return None


LIVENESS = (
    "OPTIONS sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-live-{run};rport\r\n"
    "Max-Forwards: 70\r\nFrom: <sip:prober@example.test>;tag=p{run}\r\nTo: <sip:bob@example.test>\r\n"
    "Call-ID: live-{run}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


def assert_alive(addr: tuple[str, int], what: str) -> None:
    """The target still answers the next valid request (OPTIONS to bob: the server relays it to bob)."""
    with Client("udp", addr) as c:
        c.send(LIVENESS.format(port=c.port, run=os.urandom(4).hex()).encode())
        resp = c.final_response(5.0)
    assert isinstance(resp, Response) and resp.status == 200, f"{what}: target no longer answers OPTIONS ({resp!r})"
