"""A hand-written SIP user agent on a raw UDP or TCP socket, for attacks no notebook_im endpoint would send:
it sends MESSAGE/NOTIFY requests with any body, INVITEs a target and keeps the dialog to send in-dialog requests
(to an endpoint, or to the conference focus of the embedded server). Loopback only; every wait is bounded."""

from __future__ import annotations

import os
import time

from notebook_im.sip import RemoteProtocolError, parse_message
from notebook_im.sip.message import Request, Response, make_response
from tests.hostile.corpus import Client

SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=message {port} sip null\r\n"
    "a=accept-types:text/plain message/cpim application/im-iscomposing+xml message/imdn+xml\r\n"
)


def rss_mib() -> float:
    """This process's resident set (the targets run in it)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover


class RawUac:
    """`RawUac("udp", (host, port))`: `.request(...)` sends one request and returns its final response (None if
    none came within the timeout); `.invite(uri)` sets up a dialog that `.in_dialog(...)` then uses."""

    def __init__(
        self,
        transport: str,
        addr: tuple[str, int],
        aor: str = "sip:mallory@example.test",
        display_name: str | None = None,
    ) -> None:
        self.transport = transport
        self.client = Client(transport, addr)
        self.aor = aor
        self.display = f'"{display_name}" ' if display_name is not None else ""
        self.run = os.urandom(4).hex()
        self.n = 0
        # dialog state, after invite()
        self.call_id: str | None = None
        self.local_tag = "m" + self.run
        self.remote_tag: str | None = None
        self.remote_target: str | None = None
        self.to_uri: str | None = None
        self.cseq = 0
        self.received: list[Request] = []

    def _build(
        self,
        method: str,
        ruri: str,
        *,
        to: str,
        to_tag: str | None,
        call_id: str,
        cseq: int,
        body: bytes,
        content_type: str | None,
        extra: str = "",
    ) -> bytes:
        self.n += 1
        tag = f";tag={to_tag}" if to_tag else ""
        ct = f"Content-Type: {content_type}\r\n" if content_type else ""
        return (
            f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/{self.transport.upper()} 127.0.0.1:{self.client.port};branch=z9hG4bK-{self.run}-{self.n};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: {self.display}<{self.aor}>;tag={self.local_tag}\r\nTo: <{to}>{tag}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:mallory@127.0.0.1:{self.client.port}"
            f";transport={self.transport}>\r\n{extra}{ct}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def request(
        self,
        method: str,
        ruri: str,
        body: bytes = b"",
        content_type: str | None = None,
        *,
        to: str | None = None,
        timeout: float = 5.0,
        extra: str = "",
    ) -> Response | None | bytes:
        """One out-of-dialog request (a fresh Call-ID) and its final response."""
        data = self._build(
            method,
            ruri,
            to=to or ruri,
            to_tag=None,
            call_id=f"{self.run}-{self.n}@127.0.0.1",
            cseq=1,
            body=body,
            content_type=content_type,
            extra=extra,
        )
        self.client.send(data)
        return self.final_response(timeout)

    def register(self, registrar: str = "sip:example.test", timeout: float = 5.0) -> Response:
        """REGISTER this socket as the AOR's contact (a conference focus serves registered users only)."""
        resp = self.request("REGISTER", registrar, to=self.aor, extra="Expires: 300\r\n", timeout=timeout)
        assert isinstance(resp, Response) and resp.status == 200, f"REGISTER: {resp!r}"
        return resp

    def invite(self, ruri: str, timeout: float = 10.0) -> Response:
        """INVITE `ruri` with an m=message offer, ACK the 2xx; the dialog is then ready for `in_dialog`."""
        self.call_id = f"dlg-{self.run}@127.0.0.1"
        self.cseq = 1
        self.to_uri = ruri
        self.client.send(
            self._build(
                "INVITE",
                ruri,
                to=ruri,
                to_tag=None,
                call_id=self.call_id,
                cseq=1,
                body=SDP.format(port=self.client.port).encode(),
                content_type="application/sdp",
            )
        )
        resp = self.final_response(timeout)
        assert isinstance(resp, Response) and resp.status == 200, f"INVITE {ruri}: {resp!r}"
        self.remote_tag = resp.to.tag
        self.remote_target = str(resp.contacts[0].uri)
        self.client.send(
            self._build(
                "ACK",
                self.remote_target,
                to=ruri,
                to_tag=self.remote_tag,
                call_id=self.call_id,
                cseq=1,
                body=b"",
                content_type=None,
            )
        )
        return resp

    def in_dialog(
        self, method: str, body: bytes = b"", content_type: str | None = None, *, timeout: float = 5.0, extra: str = ""
    ) -> Response | None | bytes:
        """One request in the dialog `invite` set up, and its final response."""
        assert self.call_id and self.remote_target and self.to_uri
        self.cseq += 1
        self.client.send(
            self._build(
                method,
                self.remote_target,
                to=self.to_uri,
                to_tag=self.remote_tag,
                call_id=self.call_id,
                cseq=self.cseq,
                body=body,
                content_type=content_type,
                extra=extra,
            )
        )
        return self.final_response(timeout)

    def _next(self, timeout: float) -> Request | Response | None | bytes:
        """The next message from the target (None on timeout, b"" when a TCP peer closed)."""
        c = self.client
        c.sock.settimeout(max(0.001, timeout))
        try:
            if self.transport == "udp":
                data = c.sock.recvfrom(70000)[0]
            else:
                while True:
                    end = c._buf.find(b"\r\n\r\n")
                    if end >= 0:
                        length = 0
                        for line in c._buf[:end].decode("utf-8", "replace").split("\r\n"):
                            name, _, value = line.partition(":")
                            if name.strip().lower() in ("content-length", "l"):
                                length = int(value.strip())
                        if len(c._buf) >= end + 4 + length:
                            data, c._buf = c._buf[: end + 4 + length], c._buf[end + 4 + length :]
                            break
                    chunk = c.sock.recv(65536)
                    if not chunk:
                        return b""
                    c._buf += chunk
        except (TimeoutError, OSError):
            return None
        try:
            return parse_message(data, stream=self.transport != "udp")
        except RemoteProtocolError:
            return None

    def final_response(self, timeout: float = 5.0) -> Response | None | bytes:
        """The next final response; requests the target sends meanwhile (a relayed MESSAGE, an OPTIONS probe)
        are answered 200 and kept in `self.received`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self._next(left)
            if msg is None or msg == b"":
                return msg
            if isinstance(msg, Request):
                if msg.method != "ACK":
                    self.received.append(msg)
                    self.client.send(bytes(make_response(msg, 200)))
                continue
            if isinstance(msg, Response) and msg.status >= 200:
                return msg
        return None

    def recv_requests(self, seconds: float) -> list[Request]:
        """Wait `seconds` for requests from the target (answered 200); returns all received so far."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msg = self._next(left)
            if isinstance(msg, Request) and msg.method != "ACK":
                self.received.append(msg)
                self.client.send(bytes(make_response(msg, 200)))
        return self.received

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RawUac:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
