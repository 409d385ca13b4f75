"""A hand-driven SIP device on a UDP socket (for the server tests): it REGISTERs as a user and answers each
request it gets with the statuses a test chooses, or stays silent, which no notebook_im endpoint would do."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable

import notebook_im as nim
from notebook_im.sip.message import Request, make_response
from notebook_im.sip.parser import parse_message


class RawDevice:
    """`RawDevice(server, "sip:bob@example.test").register()`, then `serve(respond, seconds)`."""

    def __init__(self, server: nim.Server, aor: str) -> None:
        self.aor = aor
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.server = (server.host, server.port)
        self.cseq = 0
        self.call_id = uuid.uuid4().hex

    def register(self, expires: int = 60) -> None:
        """Send a REGISTER for our address (its 200 is read and dropped by `serve`)."""
        self.cseq += 1
        user = self.aor.split(":", 1)[1].split("@", 1)[0]
        self.sock.sendto(
            (
                f"REGISTER sip:example.test SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{uuid.uuid4().hex};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <{self.aor}>;tag=raw\r\nTo: <{self.aor}>\r\nCall-ID: {self.call_id}\r\n"
                f"CSeq: {self.cseq} REGISTER\r\nContact: <sip:{user}@127.0.0.1:{self.port}>\r\nExpires: {expires}\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            self.server,
        )

    def serve(
        self,
        respond: Callable[[Request], list[int]],
        seconds: float,
        until: Callable[[list[Request]], bool] = lambda seen: False,
    ) -> list[Request]:
        """For `seconds` (or until `until(seen)`), answer each request with the statuses respond(request)
        returns ([] = stay silent); returns the requests seen (retransmissions included)."""
        seen: list[Request] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not until(seen):
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            msg = parse_message(data)
            if not isinstance(msg, Request) or msg.method == "ACK":
                continue
            seen.append(msg)
            for status in respond(msg):
                self.sock.sendto(bytes(make_response(msg, status, to_tag="raw-tag")), addr)
        return seen

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
