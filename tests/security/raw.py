"""A raw SIP peer for attack tests: a UDP (or TCP) socket on a loopback address of its own, requests written
by hand, and whatever comes back read with a bounded wait. Nothing here goes through notebook_im's stack,
so what the tests see is what the wire carries."""

from __future__ import annotations

import secrets
import socket
import time

from notebook_im.sip import digest


def token() -> str:
    return secrets.token_hex(6)


class RawPeer:
    """One UDP socket bound to `host` (any 127.x.y.z works on Linux loopback, so several "machines")."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    def request(
        self,
        method: str,
        ruri: str,
        *,
        from_: str,
        to: str,
        call_id: str | None = None,
        cseq: int = 1,
        from_tag: str | None = None,
        to_tag: str | None = None,
        contact: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        extra: list[str] | None = None,
        branch: str | None = None,
    ) -> tuple[bytes, str]:
        """The bytes of a request from this peer, and its Call-ID."""
        call_id = call_id or f"{token()}@attacker"
        lines = [
            f"{method} {ruri} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.hostport};branch=z9hG4bK{branch or token()};rport",
            "Max-Forwards: 70",
            f"From: <{from_}>;tag={from_tag or token()}",
            f"To: <{to}>" + (f";tag={to_tag}" if to_tag else ""),
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
        ]
        if contact:
            lines.append(f"Contact: <{contact}>")
        lines += extra or []
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body, call_id

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sock.sendto(data, addr)

    def recv(self, timeout: float = 2.0, *, want: bytes | None = None) -> bytes | None:
        """The next datagram (starting with `want`, skipping 100 Trying and others), or None after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recvfrom(65535)[0]
            except (TimeoutError, BlockingIOError):
                return None
            if want is None or data.startswith(want):
                return data

    def final(self, timeout: float = 2.0) -> bytes | None:
        """The next final response (100-199 skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            data = self.recv(max(0.0, deadline - time.monotonic()), want=b"SIP/2.0 ")
            if data is None or not data.startswith(b"SIP/2.0 1"):
                return data

    def exchange(self, data: bytes, addr: tuple[str, int], timeout: float = 2.0) -> bytes | None:
        self.send(data, addr)
        return self.final(timeout)

    def drain(self, seconds: float) -> list[bytes]:
        """Everything that arrives within `seconds`."""
        got: list[bytes] = []
        deadline = time.monotonic() + seconds
        while True:
            data = self.recv(max(0.0, deadline - time.monotonic()))
            if data is None:
                return got
            got.append(data)

    def register(
        self,
        server: tuple[str, int],
        user: str,
        domain: str = "example.test",
        *,
        password: str | None = None,
        contact: str | None = None,
        expires: int = 300,
    ) -> bytes | None:
        """REGISTER `user` with a Contact at this socket (or `contact`); answers a digest challenge if given
        a password. Returns the final response."""
        call_id = f"{token()}@reg"
        aor = f"sip:{user}@{domain}"
        contact = contact or f"sip:{user}@{self.hostport}"
        req, _ = self.request(
            "REGISTER",
            f"sip:{domain}",
            from_=aor,
            to=aor,
            call_id=call_id,
            contact=contact,
            extra=[f"Expires: {expires}"],
        )
        resp = self.exchange(req, server)
        if resp is None or not resp.startswith(b"SIP/2.0 401") or password is None:
            return resp
        auth = answer_challenge(resp, "REGISTER", f"sip:{domain}", user, password)
        req, _ = self.request(
            "REGISTER",
            f"sip:{domain}",
            from_=aor,
            to=aor,
            call_id=call_id,
            cseq=2,
            contact=contact,
            extra=[f"Expires: {expires}", f"Authorization: {auth}"],
        )
        return self.exchange(req, server)


def header(message: bytes, name: str) -> str | None:
    """The first value of header `name` in a raw message (case-insensitive, no compact forms)."""
    head = message.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == name.lower():
            return v.strip()
    return None


def answer_challenge(
    response: bytes,
    method: str,
    uri: str,
    user: str,
    password: str,
    *,
    qop: bool = True,
    digest_uri: str | None = None,
    nc: int = 1,
) -> str:
    """An Authorization value answering the SHA-256 (or first) challenge in a raw 401/407."""
    name = "WWW-Authenticate" if response.startswith(b"SIP/2.0 401") else "Proxy-Authenticate"
    head = response.split(b"\r\n\r\n", 1)[0].decode()
    values = [
        line.split(":", 1)[1].strip() for line in head.split("\r\n")[1:] if line.lower().startswith(name.lower() + ":")
    ]
    challenges = [digest.Challenge.parse(v) for v in values]
    ch = next((c for c in challenges if c.algorithm == "SHA-256"), challenges[0])
    cnonce = token()
    nc_text = f"{nc:08x}"
    duri = digest_uri or uri
    resp = digest.compute_response(
        algorithm=ch.algorithm,
        username=user,
        realm=ch.realm,
        password=password,
        method=method,
        uri=duri,
        nonce=ch.nonce,
        qop="auth" if qop else None,
        nc=nc_text,
        cnonce=cnonce,
    )
    parts = [
        f'username="{user}"',
        f'realm="{ch.realm}"',
        f'nonce="{ch.nonce}"',
        f'uri="{duri}"',
        f'response="{resp}"',
        f"algorithm={ch.algorithm}",
    ]
    if qop:
        parts += ["qop=auth", f"nc={nc_text}", f'cnonce="{cnonce}"']
    return "Digest " + ", ".join(parts)
