"""Helpers for the tutorial notebooks: numbered call flows, checked exercises, and small raw-SIP tools that make
things go wrong on purpose.

    from notebook_im import teaching
    flow = teaching.Flow(platform.trace, names={server: "proxy"})
    flow.show_new()                         # F1, F2, ... as RFC 3665 numbers a call flow, each message in full
    teaching.check("02.vias-at-bob", 2, trace=platform.trace)   # right, or what to look at

    peer = teaching.RawPeer("sip:dave@example.test", server=server, answer=teaching.refuse_composing).start()
    box = teaching.Middlebox(rule=teaching.drop("ACK")).start()  # a hop that breaks the flow as told
    sipe = teaching.OcsClient()                                  # what an OCS/Lync client puts on the wire

Nothing here changes how the library works: `RawPeer` and `OcsClient` are a few lines of SIP over a plain UDP
socket, and `Middlebox` a UDP hop (like a NAT or a firewall) that passes, drops or edits datagrams; both run on their own
thread, so a notebook reads as: set up the break, run the chat, read the trace. `import notebook_im` does not
import this module (use `from notebook_im import teaching`), and this module imports neither pandas nor
ipywidgets until an exercise needs a frame.
"""

from __future__ import annotations

import base64
import html
import re
import secrets
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Flow",
    "Step",
    "RawPeer",
    "RawRequest",
    "OcsClient",
    "UCCAPI_STATUS",
    "uccapi_result",
    "Middlebox",
    "drop",
    "remove_header",
    "set_header",
    "silent",
    "refuse_composing",
    "check",
    "Result",
    "Exercise",
    "exercise",
    "EXERCISES",
    "exercises_for",
    "self_test",
    "REFERENCE_IM_SESSION",
    "compare_with_reference",
]


# -- reading SIP text ------------------------------------------------------------------------------------------
COMPACT = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "s": "subject",
    "e": "content-encoding",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "u": "allow-events",
}


def _split(raw: bytes | str) -> tuple[str, list[tuple[str, str]], str]:
    """(start line, [(header name as written, value)], body) of one SIP message; folded lines joined."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    head, _, body = text.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip())
            continue
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return lines[0], headers, body


def _canon(name: str) -> str:
    name = name.strip().lower()
    return COMPACT.get(name, name)


def _param(value: str, name: str) -> str | None:
    """The value of parameter `name` in a header value (`;tag=abc`, `;branch=z9...`), or None."""
    m = re.search(r";\s*" + re.escape(name) + r"\s*=\s*([^;,\s>]+)", value, re.I)
    return m.group(1) if m else None


def _user(uri: str) -> str:
    """'alice' for 'sip:alice@example.test' (the URI itself if it has no user part)."""
    m = re.match(r"^\s*(?:sips?|tel):([^@;>]+)@", uri)
    return m.group(1) if m else uri


def _addr(a: Any) -> str:
    if isinstance(a, str):
        return a
    host, port = a[0], a[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


# -- numbered call flows -------------------------------------------------------------------------------------
@dataclass
class Step:
    """One SIP message of a call flow, numbered F1, F2, ... and seen on one hop (`src` -> `dst`)."""

    number: int
    src: str
    dst: str
    raw: str  # the whole message, line breaks as "\n"
    timestamp: float
    owner: str  # the endpoint (or server) that recorded it
    direction: str  # "in" / "out", relative to the owner
    transport: str

    @property
    def start_line(self) -> str:
        return self.raw.split("\n", 1)[0]

    @property
    def is_response(self) -> bool:
        return self.start_line.startswith("SIP/2.0 ")

    @property
    def status(self) -> int | None:
        return int(self.start_line.split()[1]) if self.is_response else None

    @property
    def method(self) -> str:
        """The request's method; for a response, the method of its CSeq."""
        if self.is_response:
            cseq = self.header("CSeq") or ""
            return cseq.split()[-1] if cseq.split() else ""
        return self.start_line.split(" ", 1)[0]

    @property
    def label(self) -> str:
        """ "INVITE", "180 Ringing", ... (what the ladder and RFC 3665 write on the arrow)."""
        return self.start_line.split(" ", 1)[1] if self.is_response else self.method

    def headers(self, name: str) -> list[str]:
        """Every value of header `name` (compact forms too), top first; comma-separated Via/Route/Record-Route
        values are split."""
        want = _canon(name)
        out: list[str] = []
        for n, v in _split(self.raw)[1]:
            if _canon(n) == want:
                if want in ("via", "route", "record-route"):
                    out.extend(p.strip() for p in re.split(r",(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", v) if p.strip())
                else:
                    out.append(v)
        return out

    def header(self, name: str) -> str | None:
        """The first value of header `name`, or None."""
        values = self.headers(name)
        return values[0] if values else None

    @property
    def body(self) -> str:
        return _split(self.raw)[2]

    @property
    def branch(self) -> str | None:
        """The branch of the top Via (which transaction this message belongs to, on this hop)."""
        via = self.header("Via")
        return _param(via, "branch") if via else None

    @property
    def cseq(self) -> int | None:
        value = self.header("CSeq")
        return int(value.split()[0]) if value and value.split()[0].isdigit() else None

    @property
    def from_tag(self) -> str | None:
        value = self.header("From")
        return _param(value, "tag") if value else None

    @property
    def to_tag(self) -> str | None:
        value = self.header("To")
        return _param(value, "tag") if value else None

    @property
    def carries(self) -> str:
        """For a MESSAGE request, what it carries as the ladder labels it: '"first words…"', "(composing: active)",
        "(receipt: delivered)"; for an OCS client's INFO "(KeyboardActivity: type)" and its INVITE
        '(first message: "Hi…")'; "" otherwise."""
        if self.is_response:
            return ""
        if self.method == "INFO":
            m = re.search(r"<KeyboardActivity>.*?status\s*=\s*[\"']([^\"']*)", self.body, re.S)
            return f"(KeyboardActivity: {m.group(1)})" if m else ""
        if self.method == "INVITE":
            m = re.search(r"ms-body=([A-Za-z0-9+/=]+)", self.header("ms-text-format") or "")
            try:
                text = base64.b64decode(m.group(1), validate=True).decode("utf-8") if m else ""
            except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
                return "(first message: unreadable)"
            return f'(first message: "{text[:24]}{"…" if len(text) > 24 else ""}")' if text else ""
        if self.method != "MESSAGE":
            return ""
        from .trace.ladder import _preview

        return _preview(self.raw.replace("\n", "\r\n").encode("utf-8"))

    def __str__(self) -> str:
        return f"F{self.number}  {self.src} -> {self.dst}  ({self.transport.upper()})\n{self.raw.rstrip()}\n"

    def __repr__(self) -> str:
        return f"<F{self.number} {self.src} -> {self.dst}: {self.start_line}>"


class Flow:
    """The SIP messages of a trace as a numbered call flow, the way RFC 3665 writes them: F1, F2, ..., each on
    one hop ("alice -> proxy", "proxy -> bob"), each in full.

    `names` names the columns: a `nim.Server` (or its URI, or "host:port") -> "proxy", say. An endpoint is
    named by the user part of its URI ("alice"). `new()` / `show_new()` take the messages recorded since the
    last call and number them on from there, so a notebook can show a flow phase by phase; `steps` keeps them
    all; `find()` picks one out."""

    def __init__(self, trace: Any, *, names: dict[Any, str] | None = None, exclude: Iterable[str] = ()) -> None:
        self.trace = trace
        self.names: dict[str, str] = {}
        for key, name in (names or {}).items():
            self.names[_address_of(key)] = name
        self.exclude = {m.upper() for m in exclude}
        self.steps: list[Step] = []
        self._seen = 0
        # a message recorded by both ends of one hop (two endpoints talking directly) is one step:
        # (src, dst, raw) -> how many recordings of one direction still wait for the other end's
        self._unpaired: dict[tuple[str, str, str, str], int] = {}

    def name(self, key: Any, name: str) -> None:
        """Name one more column after the flow was made (a `teaching.OcsClient`, a server, "host:port")."""
        self.names[_address_of(key)] = name

    def _name(self, address: str, owners: dict[str, str]) -> str:
        return self.names.get(address) or owners.get(address) or address

    def new(self) -> list[Step]:
        """The messages recorded since the last call (or since the Flow was made), numbered on."""
        records = self.trace.sip_records()
        fresh = records[self._seen :]
        self._seen = len(records)
        owners: dict[str, str] = {}  # an endpoint's own address (where it sent or received): named after it
        for r in records:
            owners.setdefault(_addr(r.local), _user(r.owner))
        out = []
        for r in fresh:
            raw = r.raw.decode("utf-8", "replace").replace("\r\n", "\n")
            me, other = _user(r.owner), self._name(_addr(r.remote), owners)
            src, dst = (me, other) if r.direction == "out" else (other, me)
            other_end = (src, dst, raw, "in" if r.direction == "out" else "out")
            if self._unpaired.get(other_end):
                self._unpaired[other_end] -= 1  # the same datagram, recorded at its other end
                continue
            key = (src, dst, raw, r.direction)
            self._unpaired[key] = self._unpaired.get(key, 0) + 1
            step = Step(len(self.steps) + len(out) + 1, src, dst, raw, r.timestamp, r.owner, r.direction, r.transport)
            if step.method.upper() in self.exclude:
                continue
            out.append(step)
        self.steps.extend(out)
        return out

    def skip(self) -> int:
        """Forget what was recorded so far (it will not be numbered); returns how many messages were skipped."""
        n = len(self.trace.sip_records()) - self._seen
        self._seen += n
        return n

    def show_new(self, *, full: bool = True) -> list[Step]:
        """Print the new messages, numbered (in full, or one line each with `full=False`); returns them."""
        steps = self.new()
        print(self.format(steps, full=full))
        return steps

    @staticmethod
    def format(steps: Iterable[Step], *, full: bool = True) -> str:
        steps = list(steps)
        if not full:
            width = max((len(f"{s.src} -> {s.dst}") for s in steps), default=0)
            return "\n".join(
                f"F{s.number:<3} {(s.src + ' -> ' + s.dst):<{width}}  {s.start_line}"
                + (f"  {s.carries}" if s.carries else "")
                for s in steps
            )
        return "\n".join(str(s) for s in steps)

    def summary(self) -> str:
        """One line per message: number, hop, start line."""
        return self.format(self.steps, full=False)

    def find(
        self,
        what: str | int,
        *,
        src: str | None = None,
        dst: str | None = None,
        nth: int = 0,
        method: str | None = None,
    ) -> Step:
        """The `nth` (0: first, -1: last) step whose label starts with `what` ("INVITE", 200, "180"), on the hop
        `src` -> `dst` if given, for responses to `method` if given. KeyError if there is none."""
        want = str(what).upper()
        hits = [
            s
            for s in self.steps
            if s.label.upper().startswith(want)
            and (src is None or s.src == src)
            and (dst is None or s.dst == dst)
            and (method is None or s.method.upper() == method.upper())
        ]
        if not hits or not -len(hits) <= nth < len(hits):
            raise KeyError(
                f"no {'' if nth in (0, -1) else f'#{nth} '}{what!r} from {src or 'anyone'} to {dst or 'anyone'}"
                f" in this flow (it has {len(self.steps)} messages: print(flow.summary()))"
            )
        return hits[nth]

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, number: int) -> Step:
        """`flow[3]` is F3."""
        return self.steps[number - 1]

    def __repr__(self) -> str:
        return self.summary() or "<Flow: no messages yet>"


def _address_of(key: Any) -> str:
    """ "host:port" of a nim.Server, a Middlebox, a URI "sip:host:port", a (host, port) tuple or "host:port"."""
    if hasattr(key, "host") and hasattr(key, "port") and not isinstance(key, str):
        return f"{key.host}:{key.port}"
    if isinstance(key, tuple):
        return _addr(key)
    text = str(key)
    m = re.match(r"^sips?:(?:[^@]+@)?([^;>]+)", text)
    return m.group(1) if m else text


# -- RFC 3665-style reference flow ------------------------------------------------------------------------------
# An IM session through one proxy, the way RFC 3665 §3 draws its call flows (there for voice; here with
# m=message and in-dialog MESSAGEs). Roles: A (caller), P (proxy), B (callee). What the proxy absorbs (Bob's 100
# Trying) is listed with a note, as RFC 3665 leaves such lines out of the picture but they are on the wire.
REFERENCE_IM_SESSION: list[tuple[str, str, str, str]] = [
    ("INVITE", "A", "P", "SDP offer: m=message ... sip null"),
    ("100 Trying", "P", "A", "the proxy took the request: Alice stops retransmitting"),
    ("INVITE", "P", "B", "Via of the proxy on top, Max-Forwards 69, Record-Route"),
    ("100 Trying", "B", "P", "hop by hop: the proxy does not forward it"),
    ("180 Ringing", "B", "P", "To tag: an early dialog"),
    ("180 Ringing", "P", "A", ""),
    ("200 OK", "B", "P", "SDP answer; Record-Route copied, Contact of Bob"),
    ("200 OK", "P", "A", ""),
    ("ACK", "A", "P", "new branch: the ACK for a 2xx is a transaction of its own"),
    ("ACK", "P", "B", ""),
    ("MESSAGE", "A", "P", "composing: active (RFC 3994)"),
    ("MESSAGE", "P", "B", ""),
    ("200 OK", "B", "P", ""),
    ("200 OK", "P", "A", ""),
    ("MESSAGE", "A", "P", "the text, CSeq one higher"),
    ("MESSAGE", "P", "B", ""),
    ("200 OK", "B", "P", ""),
    ("200 OK", "P", "A", ""),
    ("MESSAGE", "B", "P", "receipt: delivered (RFC 5438); Bob's own CSeq starts at 1"),
    ("MESSAGE", "P", "A", ""),
    ("200 OK", "A", "P", ""),
    ("200 OK", "P", "B", ""),
    ("BYE", "A", "P", ""),
    ("BYE", "P", "B", ""),
    ("200 OK", "B", "P", ""),
    ("200 OK", "P", "A", ""),
]


def compare_with_reference(
    steps: Iterable[Step],
    reference: list[tuple[str, str, str, str]] | None = None,
    *,
    roles: dict[str, str] | None = None,
) -> list[tuple[str, str, str]]:
    """Match observed steps to a reference flow (default `REFERENCE_IM_SESSION`), in the reference's order:
    rows of (reference line, observed line or "(missing)", note). Observed messages that the reference does not
    have come last, marked "(extra)". `roles` maps the reference's roles to names in the flow, by default
    {"A": "alice", "P": "proxy", "B": "bob"}."""
    reference = REFERENCE_IM_SESSION if reference is None else reference
    roles = roles or {"A": "alice", "P": "proxy", "B": "bob"}
    pool = list(steps)
    rows = []
    for i, (label, src, dst, note) in enumerate(reference, 1):
        s, d = roles.get(src, src), roles.get(dst, dst)
        hit = next(
            (st for st in pool if st.label.upper().startswith(label.upper()) and st.src == s and st.dst == d), None
        )
        ref = f"F{i:<3}{label:<12} {src} -> {dst}"
        if hit is None:
            rows.append((ref, "(missing)", note))
        else:
            pool.remove(hit)
            rows.append((ref, f"F{hit.number:<3}{hit.label:<12} {hit.src} -> {hit.dst}", note))
    for st in pool:
        rows.append(("", f"F{st.number:<3}{st.label:<12} {st.src} -> {st.dst}", "(extra)"))
    return rows


# -- a SIP user agent in a few lines over a plain UDP socket --------------------------------------------------
def silent(request: RawRequest) -> None:
    """A RawPeer answer policy: never answer anything (a phone that is gone)."""
    return None


def refuse_composing(request: RawRequest) -> int:
    """A RawPeer answer policy: 415 to is-composing indications (RFC 3994), 200 to everything else."""
    return 415 if "im-iscomposing" in request.content_type else 200


REASONS = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    501: "Not Implemented",
    603: "Decline",
}


@dataclass
class RawRequest:
    """A request as a RawPeer received it."""

    text: str
    source: tuple[str, int]

    @property
    def method(self) -> str:
        return self.text.split(" ", 1)[0]

    def header(self, name: str) -> str:
        want = _canon(name)
        return next((v for n, v in _split(self.text)[1] if _canon(n) == want), "")

    @property
    def content_type(self) -> str:
        return self.header("Content-Type").split(";")[0].strip().lower()

    @property
    def body(self) -> str:
        return _split(self.text)[2]


class RawPeer:
    """A SIP user agent written with a plain UDP socket: it registers `uri` with `server` (if given), then
    answers every request as `answer(request)` says: a status code (`200`), a `(status, reason)` pair, or None
    to stay silent. A 2xx to an INVITE carries an SDP answer with `m=message ... sip null` and copies the
    Record-Route headers, as a real user agent does. Retransmissions get the same answer again. ACKs are never
    answered (nobody answers an ACK). `log` keeps every datagram in and out, (time, "in"/"out", text), and the
    start line of any it could not answer ("error").

    It is deliberately small (read it: `teaching.RawPeer??`): enough SIP to play a peer that misbehaves in a
    controlled way. It runs on its own thread until `stop()`."""

    def __init__(
        self,
        uri: str,
        *,
        server: Any = None,
        answer: Callable[[RawRequest], Any] | None = None,
        host: str = "127.0.0.1",
        ring: bool = True,
    ) -> None:
        self.uri = uri
        self.user = _user(uri)
        self.server = _split_hostport(_address_of(server)) if server is not None else None
        self.answer = answer or (lambda request: 200)
        self.ring = ring
        self.log: list[tuple[float, str, str]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._tags: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def contact(self) -> str:
        return f"sip:{self.user}@{self.address[0]}:{self.address[1]}"

    def start(self, timeout: float = 5.0) -> RawPeer:
        """REGISTER with the server (if any; waits for its 200) and start answering. Returns the peer."""
        if self.server is not None:
            self._register(3600, timeout)
        self._thread = threading.Thread(target=self._run, name=f"RawPeer {self.user}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering, un-REGISTER (Expires: 0, not waited for) and close the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self.server is not None:
            try:
                self._send(self._register_request(0), self.server)
            except OSError:
                pass
        self._sock.close()

    def __enter__(self) -> RawPeer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def received(self, method: str | None = None) -> list[str]:
        """The requests received (all, or those of `method`), retransmissions included."""
        return [
            t
            for _ts, d, t in self.log
            if d == "in" and not t.startswith("SIP/2.0") and (method is None or t.startswith(method + " "))
        ]

    # -- internals ---------------------------------------------------------------------------------------------
    def _send(self, text: str, addr: tuple[str, int]) -> None:
        self._sock.sendto(text.replace("\n", "\r\n").encode(), addr)
        self.log.append((time.time(), "out", text))

    def _register_request(self, expires: int) -> str:
        host, port = self.address
        domain = self.uri.split("@", 1)[-1]
        self._reg_cseq = getattr(self, "_reg_cseq", 0) + 1
        self._reg_call = getattr(self, "_reg_call", secrets.token_hex(8))
        return (
            f"REGISTER sip:{domain} SIP/2.0\nVia: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(8)};rport\n"
            f"Max-Forwards: 70\nFrom: <{self.uri}>;tag={secrets.token_hex(4)}\nTo: <{self.uri}>\n"
            f"Call-ID: {self._reg_call}\nCSeq: {self._reg_cseq} REGISTER\nContact: <{self.contact}>\n"
            f"Expires: {expires}\nContent-Length: 0\n\n"
        )

    def _register(self, expires: int, timeout: float) -> None:
        assert self.server is not None
        deadline = time.monotonic() + timeout
        request = self._register_request(expires)
        while time.monotonic() < deadline:
            self._send(request, self.server)
            self._sock.settimeout(0.5)
            try:
                data, _ = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            finally:
                self._sock.settimeout(None)
            text = data.decode("utf-8", "replace").replace("\r\n", "\n")
            self.log.append((time.time(), "in", text))
            status = int(text.split()[1]) if text.startswith("SIP/2.0") else 0
            if 200 <= status < 300:
                return
            if status >= 300:
                raise RuntimeError(f"{self.uri}: REGISTER answered {text.splitlines()[0]}")
        raise TimeoutError(f"{self.uri}: no answer to REGISTER from {self.server} within {timeout} s")

    def _run(self) -> None:
        self._sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                data, source = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            text = data.decode("utf-8", "replace").replace("\r\n", "\n")
            self.log.append((time.time(), "in", text))
            if text.startswith("SIP/2.0") or text.startswith("ACK "):
                continue
            try:
                self._answer(RawRequest(text, source[:2]))
            except Exception:  # noqa: BLE001 - a datagram it cannot answer is logged, and the peer goes on
                self.log.append((time.time(), "error", text.split("\n", 1)[0]))

    def _answer(self, request: RawRequest) -> None:
        try:
            decision = self.answer(request)
        except Exception as exc:  # noqa: BLE001 - a policy bug answers 500 and says why
            decision = (500, f"Server Internal Error ({type(exc).__name__} in the answer policy)")
        if decision is None:
            return
        status, reason = (decision, REASONS.get(decision, "")) if isinstance(decision, int) else decision
        if request.method == "INVITE" and 200 <= status < 300 and self.ring:
            self._send(self._response(request, 180, "Ringing"), request.source)
        self._send(self._response(request, status, reason), request.source)

    def _response(self, request: RawRequest, status: int, reason: str) -> str:
        _start, headers, _body = _split(request.text)
        call_id = request.header("Call-ID")
        tag = self._tags.setdefault(call_id, secrets.token_hex(4))
        lines = [f"SIP/2.0 {status} {reason}".rstrip()]
        for name, value in headers:
            canon = _canon(name)
            if canon == "to" and _param(value, "tag") is None:
                value += f";tag={tag}"
            if canon in ("via", "from", "to", "call-id", "cseq") or (
                canon == "record-route" and request.method == "INVITE" and status < 300
            ):
                lines.append(f"{name}: {value}")
        body = ""
        if request.method in ("INVITE", "SUBSCRIBE") and status < 300:
            lines.append(f"Contact: <{self.contact}>")
        if request.method == "INVITE" and 200 <= status < 300:
            host, port = self.address
            body = (
                f"v=0\no=- 1 1 IN IP4 {host}\ns=-\nc=IN IP4 {host}\nt=0 0\nm=message {port} sip null\n"
                "a=accept-types:text/plain\n"
            )
            lines.append("Content-Type: application/sdp")
        if status == 415:
            lines.append("Accept: text/plain")
        lines.append("Server: teaching.RawPeer")
        lines.append(f"Content-Length: {len(body.replace(chr(10), chr(13) + chr(10)).encode())}")
        return "\n".join(lines) + "\n\n" + body


def _split_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


# -- an OCS/Lync client's IM, as SIPE writes it ------------------------------------------------------------------
KEYBOARD_ACTIVITY = '<?xml version="1.0"?><KeyboardActivity> <status status="{}" /></KeyboardActivity>'


class OcsClient:
    """The IM of an Office Communications Server / Lync client, written the way the open-source OCS client SIPE
    writes it (github.com/tieto/sipe, src/core), over a plain UDP socket: what such a client puts on the wire that
    an RFC client does not, to see in a trace and to point at a notebook_im endpoint.

    - `invite(endpoint, first_message)`: INVITE with `Supported: ms-sender`, the first message in a header
      `ms-text-format: text/plain; charset=UTF-8;ms-body=<base64>`, an `Ms-Conversation-ID`, and SDP
      `m=message <port> sip null` (`media="x-ms-message"` for an OCS 2005 client), then the ACK (sipe-im.c,
      `sipe_invite`). `first_message_taken` then says whether the 200 OK carried `Supported: ms-text-format`
      (SIPE sends the text again as a MESSAGE when it did not).
    - `typing(True)` / `typing(False)`: in-dialog INFO, `Content-Type: application/xml`, a KeyboardActivity
      document with status "type" / "idle" (sipe-user.c, `sipe_core_user_feedback_typing`).
    - `send(text)`: in-dialog MESSAGE text/plain. `bye()`: BYE.

    It calls the endpoint directly at its contact (no registration, no authentication: OCS used NTLM or
    Kerberos, which this does not speak). Each call blocks until the final answer (UDP retransmissions every
    0.5 s) and returns its status; TimeoutError after `timeout` seconds. `log` keeps what went out and came in."""

    def __init__(self, uri: str = "sip:sipe@example.test", *, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.uri = uri
        self.timeout = timeout
        self.log: list[tuple[float, str, str]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self.target: tuple[str, int] | None = None
        self.ruri = ""
        self.call_id = ""
        self.conversation_id = ""
        self._from_tag = secrets.token_hex(4)
        self._to_tag = ""
        self._cseq = 0
        self.first_message_taken = False

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> OcsClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def invite(
        self,
        endpoint: Any,
        first_message: str | None = None,
        *,
        conversation_id: str | None = None,
        media: str = "message",
    ) -> int:
        """Invite `endpoint` (a nim.Endpoint, or "host:port") to an IM session, the first message (if any) in the
        INVITE; ACK the final answer; return its status."""
        if hasattr(endpoint, "local_address"):
            self.target = tuple(endpoint.local_address)[:2]  # type: ignore[assignment]
            user = _user(endpoint.uri)
        else:
            self.target, user = _split_hostport(str(endpoint)), "user"
        host, port = self.target
        self.ruri = f"sip:{user}@{host}:{port}"
        self.call_id, self._to_tag, self._cseq = f"{secrets.token_hex(8)}@sipe", "", 0
        self.conversation_id = conversation_id or str(secrets.randbelow(1_000_000_000))  # as SIPE: a random number
        headers = ["Supported: ms-sender"]
        if first_message is not None:
            body = base64.b64encode(first_message.encode("utf-8")).decode("ascii")
            headers.append(f"ms-text-format: text/plain; charset=UTF-8;ms-body={body}")
        headers += [f"Ms-Conversation-ID: {self.conversation_id}", "Content-Type: application/sdp"]
        me = self.address[0]
        sdp = (
            f"v=0\r\no=- 0 0 IN IP4 {me}\r\ns=session\r\nc=IN IP4 {me}\r\nt=0 0\r\n"
            f"m={media} {self.address[1]} sip null\r\n"
            "a=accept-types:text/plain text/html image/gif multipart/alternative application/im-iscomposing+xml "
            "application/ms-imdn+xml text/x-msmsgsinvite\r\n"
        )
        final, branch = self._transaction("INVITE", headers, sdp)
        status = int(final.split()[1])
        to = next((v for n, v in _split(final)[1] if _canon(n) == "to"), "")
        self._to_tag = _param(to, "tag") or ""
        supported = [v for n, v in _split(final)[1] if _canon(n) == "supported"]
        self.first_message_taken = any("ms-text-format" in v.lower() for v in supported)
        # the ACK: its own transaction for a 2xx, the INVITE's branch for a refusal (RFC 3261 §17.1.1.3)
        self._send(self._request("ACK", [], "", cseq=1, branch=None if status < 300 else branch))
        if status >= 300:
            self._to_tag = ""  # refused: no dialog to type or talk in
        return status

    def typing(self, typing: bool = True) -> int:
        """INFO with a KeyboardActivity document: status "type" (typing) or "idle"; returns the status."""
        body = KEYBOARD_ACTIVITY.format("type" if typing else "idle")
        return int(self._transaction("INFO", ["Content-Type: application/xml"], body)[0].split()[1])

    def send(self, text: str) -> int:
        """An in-dialog MESSAGE with `text` (text/plain); returns the status."""
        return int(self._transaction("MESSAGE", ["Content-Type: text/plain; charset=UTF-8"], text)[0].split()[1])

    def bye(self) -> int:
        """BYE; returns the status."""
        return int(self._transaction("BYE", [], "")[0].split()[1])

    # -- internals ---------------------------------------------------------------------------------------------
    def _request(self, method: str, headers: list[str], body: str, *, cseq: int, branch: str | None = None) -> str:
        host, port = self.address
        data = body.encode("utf-8")
        to = f"<{self.ruri}>" + (f";tag={self._to_tag}" if self._to_tag else "")
        lines = [
            f"{method} {self.ruri} SIP/2.0",
            f"Via: SIP/2.0/UDP {host}:{port};branch={branch or 'z9hG4bK' + secrets.token_hex(8)};rport",
            "Max-Forwards: 70",
            f'From: "SIPE" <{self.uri}>;tag={self._from_tag}',
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:{_user(self.uri)}@{host}:{port}>",
            *headers,
            f"Content-Length: {len(data)}",
        ]
        return "\r\n".join(lines) + "\r\n\r\n" + body

    def _send(self, text: str) -> None:
        assert self.target is not None, "invite() first"
        self._sock.sendto(text.encode("utf-8"), self.target)
        self.log.append((time.time(), "out", text))

    def _transaction(self, method: str, headers: list[str], body: str) -> tuple[str, str]:
        """Send a request until its final answer (retransmitted every 0.5 s over UDP); returns (answer, branch)."""
        if method != "INVITE" and not self._to_tag:
            raise RuntimeError(f"{method} needs a session: invite() an endpoint first (and have it accept)")
        self._cseq += 1
        branch = "z9hG4bK" + secrets.token_hex(8)
        request = self._request(method, headers, body, cseq=self._cseq, branch=branch)
        deadline = time.monotonic() + self.timeout
        resend = 0.0
        provisional = False
        while time.monotonic() < deadline:
            if not provisional and time.monotonic() >= resend:
                self._send(request)
                resend = time.monotonic() + 0.5
            self._sock.settimeout(max(0.01, min(resend, deadline) - time.monotonic()))
            try:
                data = self._sock.recvfrom(65535)[0].decode("utf-8", "replace")
            except TimeoutError:
                continue
            self.log.append((time.time(), "in", data))
            if not data.startswith("SIP/2.0 "):
                continue
            headers = _split(data)[1]
            cseq = next((v for n, v in headers if _canon(n) == "cseq"), "")
            via = next((v for n, v in headers if _canon(n) == "via"), "")
            if cseq.split()[-1:] != [method] or _param(via, "branch") != branch:
                continue  # a retransmitted answer to an earlier request
            if data.split()[1].startswith("1"):
                provisional = True  # the other side has it: stop retransmitting (RFC 3261 §17.1.1.2)
                continue
            return data.replace("\r\n", "\n"), branch
        raise TimeoutError(f"no final answer to {method} from {self.target} within {self.timeout} s")


# -- UCCAPI's names for SIP outcomes ----------------------------------------------------------------------------
# A failed UCCAPI operation reports an HRESULT whose low 16 bits are the SIP status: 0x80EF0000 + status, named
# UCC_E_SIP_STATUS_... (Microsoft's "Unified Communications Client API Error Codes"); the few a chat meets:
UCCAPI_STATUS: dict[int, str] = {
    400: "UCC_E_SIP_STATUS_CLIENT_BAD_REQUEST",
    401: "UCC_E_SIP_STATUS_CLIENT_UNAUTHORIZED",
    403: "UCC_E_SIP_STATUS_CLIENT_FORBIDDEN",
    404: "UCC_E_SIP_STATUS_CLIENT_NOT_FOUND",
    405: "UCC_E_SIP_STATUS_CLIENT_METHOD_NOT_ALLOWED",
    407: "UCC_E_SIP_STATUS_CLIENT_PROXY_AUTHENTICATION_REQUIRED",
    408: "UCC_E_SIP_STATUS_CLIENT_REQUEST_TIMEOUT",
    413: "UCC_E_SIP_STATUS_CLIENT_REQUEST_ENTITY_TOO_LARGE",
    415: "UCC_E_SIP_STATUS_CLIENT_UNSUPPORTED_MEDIA_TYPE",
    480: "UCC_E_SIP_STATUS_CLIENT_TEMPORARILY_NOT_AVAILABLE",
    481: "UCC_E_SIP_STATUS_CLIENT_TRANSACTION_DOES_NOT_EXIST",
    486: "UCC_E_SIP_STATUS_CLIENT_BUSY_HERE",
    487: "UCC_E_SIP_STATUS_REQUEST_TERMINATED",
    488: "UCC_E_SIP_STATUS_NOT_ACCEPTABLE_HERE",
    500: "UCC_E_SIP_STATUS_SERVER_INTERNAL_ERROR",
    501: "UCC_E_SIP_STATUS_SERVER_NOT_IMPLEMENTED",
    503: "UCC_E_SIP_STATUS_SERVER_SERVICE_UNAVAILABLE",
    600: "UCC_E_SIP_STATUS_GLOBAL_BUSY_EVERYWHERE",
    603: "UCC_E_SIP_STATUS_GLOBAL_DECLINE",
    604: "UCC_E_SIP_STATUS_GLOBAL_DOES_NOT_EXIST_ANYWHERE",
    606: "UCC_E_SIP_STATUS_GLOBAL_NOT_ACCEPTABLE",
}


def uccapi_result(status: int) -> str:
    """What a UCCAPI client would have been told for a final SIP `status`: "UCC_E_SIP_STATUS_CLIENT_NOT_FOUND
    (0x80EF0194)" for 404; the bare HRESULT for a status without a name here."""
    hresult = f"0x{0x80EF0000 + status:08X}"
    name = UCCAPI_STATUS.get(status)
    return f"{name} ({hresult})" if name else hresult


# -- a hop that breaks things on purpose ------------------------------------------------------------------------
Rule = Callable[[bytes, bool], "bytes | None"]


def drop(method: str) -> Rule:
    """A Middlebox rule: drop every `method` request on its way to the server (e.g. drop("ACK"))."""
    method_b = method.upper().encode() + b" "

    def rule(data: bytes, to_server: bool) -> bytes | None:
        return None if to_server and data.startswith(method_b) else data

    rule.__doc__ = f"drop {method.upper()} requests on their way to the server"
    return rule


def remove_header(name: str) -> Rule:
    """A Middlebox rule: remove every `name` header line from every message, both ways
    (e.g. remove_header("Record-Route"))."""
    pattern = re.compile(rb"(?im)^" + re.escape(name.encode()) + rb"[ \t]*:[^\r\n]*\r\n")

    def rule(data: bytes, to_server: bool) -> bytes | None:
        head, sep, body = data.partition(b"\r\n\r\n")
        return pattern.sub(b"", head + b"\r\n")[:-2] + sep + body

    rule.__doc__ = f"remove the {name} headers"
    return rule


def set_header(name: str, value: str, *, method: str | None = None) -> Rule:
    """A Middlebox rule: set header `name` to `value` in requests on their way to the server (only `method`
    requests if given), e.g. set_header("Max-Forwards", "1", method="INVITE")."""
    pattern = re.compile(rb"(?im)^" + re.escape(name.encode()) + rb"[ \t]*:[^\r\n]*")
    line = f"{name}: {value}".encode()
    prefix = method.upper().encode() + b" " if method else None

    def rule(data: bytes, to_server: bool) -> bytes | None:
        if not to_server or data.startswith(b"SIP/2.0") or (prefix is not None and not data.startswith(prefix)):
            return data
        head, sep, body = data.partition(b"\r\n\r\n")
        if pattern.search(head):
            head = pattern.sub(line.replace(b"\\", b"\\\\"), head, count=1)
        else:
            first, _, rest = head.partition(b"\r\n")
            head = first + b"\r\n" + line + b"\r\n" + rest
        return head + sep + body

    rule.__doc__ = f"set {name}: {value} in {method or 'all'} requests on their way to the server"
    return rule


class Middlebox:
    """A UDP hop in front of a server, like a NAT or a firewall: each client gets its own socket towards the
    server (so the server's answers and requests come back through the box), and every datagram passes through
    `rule(data, to_server)`, which returns it (perhaps edited) or None to drop it. With no rule it passes
    everything. `log` lists what it did: (time, "to server"/"to client", "passed"/"dropped"/"changed", start line).

    The server must tell clients to come back through the box (in its Via and Record-Route), so create the box
    first and the server with `advertise=box.address`:

        box = teaching.Middlebox().start()
        server = nim.Server(advertise=box.address).start().result()
        box.target = (server.host, server.port)
        alice = await platform.endpoint("sip:alice@example.test", server=box.uri)
    """

    def __init__(
        self, target: tuple[str, int] | None = None, *, rule: Rule | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.target = target
        self.rule = rule
        self.log: list[tuple[float, str, str, str]] = []
        self._listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._listen.bind((host, 0))
        self.address: tuple[str, int] = self._listen.getsockname()[:2]
        self._upstream: dict[tuple[str, int], socket.socket] = {}
        self._client_of: dict[socket.socket, tuple[str, int]] = {}
        self._sel = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def uri(self) -> str:
        return f"sip:{self.address[0]}:{self.address[1]}"

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    def start(self) -> Middlebox:
        self._sel.register(self._listen, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="Middlebox", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        for s in [self._listen, *self._upstream.values()]:
            s.close()
        self._sel.close()

    def dropped(self) -> list[str]:
        """The start lines of the datagrams the rule dropped."""
        return [line for _t, _d, action, line in self.log if action == "dropped"]

    def _apply(self, data: bytes, to_server: bool) -> bytes | None:
        out = data if self.rule is None else self.rule(data, to_server)
        action = "dropped" if out is None else ("passed" if out == data else "changed")
        self.log.append(
            (
                time.time(),
                "to server" if to_server else "to client",
                action,
                data.split(b"\r\n", 1)[0].decode("utf-8", "replace"),
            )
        )
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _mask in self._sel.select(0.05):
                sock = key.fileobj
                try:
                    data, source = sock.recvfrom(65535)  # type: ignore[union-attr]
                except OSError:
                    continue
                try:
                    if sock is self._listen:
                        if self.target is None:
                            continue
                        up = self._upstream.get(source[:2])
                        if up is None:
                            up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                            up.bind((self.address[0], 0))
                            self._upstream[source[:2]] = up
                            self._client_of[up] = source[:2]
                            self._sel.register(up, selectors.EVENT_READ)
                        out = self._apply(data, True)
                        if out is not None:
                            up.sendto(out, self.target)
                    else:
                        out = self._apply(data, False)
                        if out is not None:
                            self._listen.sendto(out, self._client_of[sock])  # type: ignore[index]
                except Exception:  # noqa: BLE001 - a bad rule loses that datagram, not the box
                    self.log.append((time.time(), "?", "error", data.split(b"\r\n", 1)[0].decode("utf-8", "replace")))


# -- exercises checked against the trace -----------------------------------------------------------------------
@dataclass
class Exercise:
    """One checked question: `truth(context)` computes the right answer from the trace(s) the notebook passes to
    `check()`; `hint` says where to look when the answer is not right; `why` is shown with a right answer."""

    id: str
    question: str
    truth: Callable[[dict[str, Any]], Any]
    hint: str
    kind: str = "text"  # "int", "number", "text", "set", "choice", "mapping"
    needs: tuple[str, ...] = ("trace",)
    options: tuple[str, ...] = ()
    tolerance: float = 0.0  # "number": absolute tolerance
    why: str = ""


EXERCISES: dict[str, Exercise] = {}


def exercise(
    exercise_id: str, question: str, hint: str, **kwargs: Any
) -> Callable[[Callable[[dict[str, Any]], Any]], Callable]:
    """Register the decorated function (context -> right answer) as exercise `exercise_id` ("NN.name": NN is the
    notebook); `kwargs` are the other fields of `Exercise` (kind, needs, options, tolerance, why)."""

    def register(truth: Callable[[dict[str, Any]], Any]) -> Callable:
        EXERCISES[exercise_id] = Exercise(exercise_id, question, truth, hint, **kwargs)
        return truth

    return register


def exercises_for(notebook: str) -> list[Exercise]:
    """The exercises of one notebook ("02" for 02-sip-im-flow.ipynb)."""
    return [e for e in EXERCISES.values() if e.id.split(".", 1)[0] == notebook]


@dataclass
class Result:
    """What `check()` returns: `.ok`, and a message that says right (and why) or what to look at."""

    exercise: Exercise
    answer: Any
    ok: bool
    message: str
    answered: bool = True

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return self.message

    def _repr_html_(self) -> str:
        colour = "#16a34a" if self.ok else ("#6b7280" if not self.answered else "#dc2626")
        return (
            f'<div style="border-left:4px solid {colour};padding:4px 10px;margin:2px 0">'
            f"{html.escape(self.message).replace(chr(10), '<br>')}</div>"
        )


_checked: list[tuple[str, Any, dict[str, Any], bool]] = []


def check(exercise_id: str, answer: Any, **context: Any) -> Result:
    """Check `answer` to exercise `exercise_id` against the trace(s) in `context` (`trace=platform.trace`, and
    what else the exercise names). Returns a Result: shown in a notebook as right, or as what to look at.
    An answer left as `...` is "no answer yet", not wrong."""
    ex = EXERCISES.get(exercise_id)
    if ex is None:
        raise KeyError(f"no exercise {exercise_id!r}; the exercises are: {', '.join(sorted(EXERCISES))}")
    result = _evaluate(ex, answer, context)
    _checked.append((exercise_id, answer, context, result.ok))
    return result


def _evaluate(ex: Exercise, answer: Any, context: dict[str, Any]) -> Result:
    missing = [n for n in ex.needs if n not in context]
    if missing:
        raise TypeError(
            f"check({ex.id!r}, answer, ...) needs {', '.join(f'{n}=...' for n in missing)} "
            f"(for example trace=platform.trace)"
        )
    if _unanswered(answer):
        return Result(ex, answer, False, f"… {ex.question}\nNo answer yet: replace the ... with your answer.", False)
    try:
        right = ex.truth(context)
    except LookupError as exc:  # what the exercise is about is not in the trace (yet)
        return Result(ex, answer, False, f"… {ex.question}\n{exc}", False)
    try:
        ok = _same(ex, answer, right)
    except (TypeError, ValueError) as exc:
        return Result(ex, answer, False, f"✗ {ex.question}\n{exc}")
    if ok:
        return Result(ex, answer, True, f"✓ Right: {_show(right)}." + (f" {ex.why}" if ex.why else ""))
    return Result(ex, answer, False, f"✗ Not {_show(answer)}. {ex.hint}")


def _unanswered(answer: Any) -> bool:
    """`...`, or a dict / list / tuple / set with a `...` left in it."""
    if answer is ...:
        return True
    if isinstance(answer, dict):
        return any(v is ... for v in answer.values())
    if isinstance(answer, (list, tuple, set, frozenset)):
        return any(v is ... for v in answer)
    return False


def _show(value: Any) -> str:
    if isinstance(value, (set, frozenset)):
        return "{" + ", ".join(sorted(map(str, value))) + "}"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("the answer is a number (an int), not True/False")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    if hasattr(value, "item"):  # numpy / pandas scalars
        return _as_int(value.item())
    raise TypeError(f"the answer is a whole number, such as 2; not {value!r}")


def _norm_text(value: Any) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise TypeError(f"the answer is a word or a name, such as 'INVITE'; not {value!r}")
    return str(value).strip().strip("\"'").casefold()


def _as_set(value: Any) -> set[str]:
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value) if v]
    if not isinstance(value, (set, frozenset, list, tuple)):
        raise TypeError(f"the answer is a set of names, such as {{'ACK', 'BYE'}}; not {value!r}")
    return {_norm_text(v) for v in value}


def _same(ex: Exercise, answer: Any, right: Any) -> bool:
    if ex.kind == "int":
        return _as_int(answer) == right
    if ex.kind == "number":
        if isinstance(answer, bool) or not isinstance(answer, (int, float)) and not hasattr(answer, "item"):
            raise TypeError(f"the answer is a number, such as 1.5; not {answer!r}")
        return abs(float(answer) - float(right)) <= ex.tolerance
    if ex.kind == "set":
        return _as_set(answer) == _as_set(right)
    if ex.kind == "mapping":
        if not isinstance(answer, dict):
            raise TypeError(f"the answer is a dict, such as {_show(right)!s}; not {answer!r}")
        return {str(k).strip(): _norm_text(v) for k, v in answer.items()} == {
            str(k): _norm_text(v) for k, v in right.items()
        }
    if ex.kind == "choice":
        given = _norm_text(answer)
        if ex.options and given not in [o.casefold() for o in ex.options]:
            raise ValueError(f"answer one of {', '.join(repr(o) for o in ex.options)}; not {answer!r}")
        return given == _norm_text(right)
    # text: a name, a method, a header, a media type (parameters ignored), a URI or its user part
    given, want = _norm_text(answer), _norm_text(right)
    if ";" in want or ";" in given:
        given, want = given.split(";")[0].strip(), want.split(";")[0].strip()
    return given == want or (want.startswith("sip:") and given == _user(want))


def _wrong(ex: Exercise, right: Any) -> Any:
    """An answer that is wrong for sure (the tests check that every exercise says so)."""
    if ex.kind == "int":
        return right + 1
    if ex.kind == "number":
        return float(right) + 10 * ex.tolerance + 1
    if ex.kind == "set":
        return set(right) | {"NOT-A-METHOD"}
    if ex.kind == "mapping":
        key = next(iter(right))
        return {**right, key: "nobody"}
    if ex.kind == "choice":
        return next(o for o in ex.options if o.casefold() != _norm_text(right))
    return f"not-{right}"


def self_test() -> list[dict[str, Any]]:
    """For every check() that came out right in this kernel: the same check with a wrong answer must come out
    wrong (and say where to look). Returns one row per exercise: id, right (bool), wrong_rejected (bool), hint."""
    rows: dict[str, dict[str, Any]] = {}
    for exercise_id, _answer, context, ok in _checked:
        if not ok or exercise_id in rows:
            continue
        ex = EXERCISES[exercise_id]
        right = ex.truth(context)
        wrong = _evaluate(ex, _wrong(ex, right), context)
        rows[exercise_id] = {
            "id": exercise_id,
            "right": True,
            "wrong_rejected": not wrong.ok and wrong.answered,
            "message": wrong.message,
        }
    for exercise_id, *_rest in _checked:
        rows.setdefault(exercise_id, {"id": exercise_id, "right": False, "wrong_rejected": None, "message": ""})
    return list(rows.values())


# -- reading the frames (pandas imported here, when an exercise is checked) -------------------------------------
def _sip(trace: Any, owner_user: str | None = None) -> Any:
    df = trace.sip()
    if owner_user is not None:
        df = df[df["owner"].astype(str).map(_user) == owner_user]
    return df


def _requests(df: Any, method: str | None = None, direction: str | None = None) -> Any:
    df = df[df["status"].isna()]
    if method is not None:
        df = df[df["method"] == method]
    if direction is not None:
        df = df[df["direction"] == direction]
    return df


def _responses(df: Any, method: str | None = None, direction: str | None = None) -> Any:
    df = df[df["status"].notna()]
    if method is not None:
        df = df[df["method"] == method]
    if direction is not None:
        df = df[df["direction"] == direction]
    return df


def _headers(raw: str, name: str) -> list[str]:
    return Step(0, "", "", raw.replace("\r\n", "\n"), 0.0, "", "", "").headers(name)


def _session_call_id(trace: Any, caller: str = "alice") -> str:
    """The Call-ID of the first INVITE `caller` sent that was answered 2xx (the session of the notebook)."""
    df = _sip(trace, caller)
    ok = _responses(df, "INVITE", "in")
    ok = ok[(ok["status"] >= 200) & (ok["status"] < 300)]
    if ok.empty:
        raise LookupError(f"no session of {caller} in this trace yet: run the cells above first")
    return str(ok["call_id"].iloc[0])


def _final_status(ctx: dict[str, Any], user: str, method: str, direction: str, *, at_least: int = 0, what: str) -> int:
    """The status of the first response to `method` in `user`'s trace (`direction` as recorded there) whose
    status is at least `at_least`."""
    df = _responses(_sip(ctx["trace"], user), method, direction)
    return int(_first(df[df["status"] >= at_least], what)["status"])


def _first(df: Any, what: str) -> Any:
    if df.empty:
        raise LookupError(f"the trace has no {what} yet: run the cells above first")
    return df.iloc[0]


def _user_of(df: Any) -> Any:
    return df["owner"].astype(str).map(_user)


# 01 first chat ------------------------------------------------------------------------------------------------
@exercise(
    "01.session-method",
    "Which SIP method set up the session?",
    "Look at the first request Alice sent for the session: the first line of the first message in "
    "`platform.trace.sip(owner=alice.uri)` after the REGISTER (column `method`).",
    why="The INVITE offers the session (its SDP says m=message), 200 OK accepts it, ACK confirms.",
)
def _(ctx: dict[str, Any]) -> str:
    df = _sip(ctx["trace"], "alice")
    return str(
        _first(_requests(df[df["call_id"] == _session_call_id(ctx["trace"])], direction="out"), "request")["method"]
    )


@exercise(
    "01.typing-content-type",
    'Which Content-Type carried "Alice is typing"?',
    "Find the first MESSAGE Alice sent inside the session and read its Content-Type header "
    "(`print(r.raw.decode())` for the records in `platform.trace.sip_records()`).",
    why="An is-composing indication (RFC 3994) is a MESSAGE with an XML body <state>active</state>.",
)
def _(ctx: dict[str, Any]) -> str:
    df = _sip(ctx["trace"], "alice")
    df = _requests(df[df["call_id"] == _session_call_id(ctx["trace"])], "MESSAGE", "out")
    return _headers(str(_first(df, "MESSAGE in the session")["raw"]), "Content-Type")[0]


@exercise(
    "01.pager-requests",
    "How many SIP requests did Alice's endpoint send for the pager-mode message?",
    "Count the MESSAGE requests Alice sent outside the session: no To tag, a Call-ID of their own. "
    "A retransmission repeats the same request (same Via branch), so count branches.",
    kind="int",
    why="Pager mode (RFC 3428) is one MESSAGE and its 200 OK: no INVITE, no dialog, no BYE.",
)
def _(ctx: dict[str, Any]) -> int:
    df = _requests(_sip(ctx["trace"], "alice"), "MESSAGE", "out")
    df = df[df["to_tag"].isna() & df["raw"].str.contains("Content-Type: text/plain", regex=False)]
    return int(df["branch"].nunique())


# 02 the flow, step by step -----------------------------------------------------------------------------------
def _invite_at_bob(ctx: dict[str, Any]) -> Any:
    df = _requests(_sip(ctx["trace"], "bob"), "INVITE", "in")
    return _first(df[df["call_id"] == _session_call_id(ctx["trace"])], "INVITE at Bob")


@exercise(
    "02.vias-at-bob",
    "How many Via headers does the INVITE have when it reaches Bob?",
    "Print the INVITE on the proxy -> bob hop (flow.find('INVITE', dst='bob')) and count its Via lines. "
    "Every hop that forwards a request puts its own Via on top.",
    kind="int",
    why="Alice's Via (with received/rport the proxy added) and the proxy's on top of it.",
)
def _(ctx: dict[str, Any]) -> int:
    return len(_headers(str(_invite_at_bob(ctx)["raw"]), "Via"))


@exercise(
    "02.vias-at-alice",
    "How many Via headers does the 200 OK have when it reaches Alice?",
    "Print the 200 OK on the proxy -> alice hop (flow.find('200', dst='alice', method='INVITE')). A response "
    "walks back down the Via stack: each hop removes its own Via before passing it on.",
    kind="int",
    why="The proxy took its own Via off: what is left is Alice's, which brings the response home.",
)
def _(ctx: dict[str, Any]) -> int:
    df = _responses(_sip(ctx["trace"], "alice"), "INVITE", "in")
    row = _first(df[(df["call_id"] == _session_call_id(ctx["trace"])) & (df["status"] == 200)], "200 OK at Alice")
    return len(_headers(str(row["raw"]), "Via"))


@exercise(
    "02.max-forwards-at-bob",
    "What is Max-Forwards in the INVITE Bob receives?",
    "Alice sends Max-Forwards: 70. Look at the INVITE on the proxy -> bob hop: what did the proxy do to it?",
    kind="int",
    why="Each proxy takes one off; at 0 the next proxy answers 483 Too Many Hops (a loop guard).",
)
def _(ctx: dict[str, Any]) -> int:
    return int(_headers(str(_invite_at_bob(ctx)["raw"]), "Max-Forwards")[0])


@exercise(
    "02.ack-branch",
    "Does Alice's ACK for the 200 OK carry the INVITE's branch ('same') or a new one ('new')?",
    "Compare the branch= parameter of the top Via in Alice's INVITE and in her ACK (flow.find('ACK').branch).",
    kind="choice",
    options=("same", "new"),
    why="The INVITE transaction ended with the 2xx; the ACK for a 2xx is a request of its own, sent end to end "
    "along the dialog's route, so it gets a new branch. The ACK for a failure (486) belongs to the INVITE "
    "transaction and keeps its branch.",
)
def _(ctx: dict[str, Any]) -> str:
    df = _requests(_sip(ctx["trace"], "alice"), direction="out")
    df = df[df["call_id"] == _session_call_id(ctx["trace"])]
    invite = _first(df[df["method"] == "INVITE"], "INVITE")
    ack = _first(df[df["method"] == "ACK"], "ACK")
    return "same" if invite["branch"] == ack["branch"] else "new"


@exercise(
    "02.bob-first-cseq",
    "Which CSeq number does the first request Bob sends in the dialog carry?",
    "Find the first request Bob sent in the session (his delivery receipt, flow.find('MESSAGE', src='bob')) "
    "and read its CSeq. Whose counter is it?",
    kind="int",
    why="CSeq counts per direction: Alice's requests went 1 (INVITE), 2, 3, ...; Bob's own start at 1.",
)
def _(ctx: dict[str, Any]) -> int:
    df = _requests(_sip(ctx["trace"], "bob"), direction="out")
    df = df[(df["call_id"] == _session_call_id(ctx["trace"])) & (df["method"] != "ACK")]
    return int(_first(df, "request from Bob in the session")["cseq"])


@exercise(
    "02.bob-tag",
    "Which tag did Bob add to the To header (his half of the dialog id)?",
    "Bob's tag first appears in the To header of his 180 Ringing; it is in every later message of the dialog "
    "(`flow.find('200', dst='alice', method='INVITE').to_tag`).",
    why="Call-ID + From tag (Alice's) + To tag (Bob's) identify the dialog at both ends.",
)
def _(ctx: dict[str, Any]) -> str:
    df = _responses(_sip(ctx["trace"], "alice"), "INVITE", "in")
    df = df[(df["call_id"] == _session_call_id(ctx["trace"])) & (df["status"] == 200)]
    return str(_first(df, "200 OK at Alice")["to_tag"])


def _session_transactions(ctx: dict[str, Any], owner: str | None) -> int:
    df = _sip(ctx["trace"], owner)
    df = df[(df["call_id"] == _session_call_id(ctx["trace"])) & (df["method"] != "ACK")]
    return int(df["transaction_id"].nunique())


@exercise(
    "02.transactions-alice",
    "How many transactions did Alice's endpoint take part in for the session, "
    "from INVITE to BYE (the ones she started and the ones Bob started)?",
    "Group Alice's rows of the session's Call-ID by transaction_id (the ACK for a 2xx is not a transaction: "
    "leave ACK rows out). A request and its responses and retransmissions are one transaction.",
    kind="int",
    why="INVITE, each MESSAGE either way, BYE: one transaction each.",
)
def _(ctx: dict[str, Any]) -> int:
    return _session_transactions(ctx, "alice")


@exercise(
    "02.transactions-both",
    "Counted in both endpoints' traces (Alice's and Bob's), how many transactions?",
    "Same grouping without the owner filter. Does the INVITE Alice sent and the INVITE Bob received have the "
    "same branch?",
    kind="int",
    why="A proxy ends each transaction and starts a new one on the next hop (its own branch): each of Alice's "
    "transactions has a twin on the proxy -> Bob hop.",
)
def _(ctx: dict[str, Any]) -> int:
    return _session_transactions(ctx, None)


@exercise(
    "02.dialogs",
    "How many dialogs did the session create?",
    "A dialog is made by a 2xx (or a 1xx with a To tag) to an INVITE: count the distinct dialog_id of the "
    "INVITE responses with a To tag, in both traces.",
    kind="int",
    why="One dialog, the same at both ends and on both hops: Call-ID and tags travel end to end, branches do not.",
)
def _(ctx: dict[str, Any]) -> int:
    df = _responses(_sip(ctx["trace"]), "INVITE")
    df = df[(df["call_id"] == _session_call_id(ctx["trace"])) & df["to_tag"].notna()]
    return int(df["dialog_id"].nunique())


@exercise(
    "02.ack-branch-486",
    "After Bob's 486 Busy Here, does Alice's ACK carry the INVITE's branch ('same') or a new one ('new')?",
    "Take the Call-ID of the INVITE that got the 486 and compare the branch of Alice's INVITE and ACK in it.",
    kind="choice",
    options=("same", "new"),
    why="The ACK for a non-2xx final response is part of the INVITE transaction (RFC 3261 §17.1.1.3): "
    "same branch, and it goes hop by hop (the proxy ACKs Bob's 486 itself).",
)
def _(ctx: dict[str, Any]) -> str:
    df = _sip(ctx["trace"], "alice")
    busy = _responses(df, "INVITE", "in")
    call = str(_first(busy[busy["status"] == 486], "486 Busy Here (do the exercise above first)")["call_id"])
    mine = _requests(df[df["call_id"] == call], direction="out")
    invite = _first(mine[mine["method"] == "INVITE"], "INVITE")
    ack = _first(mine[mine["method"] == "ACK"], "ACK")
    return "same" if invite["branch"] == ack["branch"] else "new"


@exercise(
    "02.unknown-user",
    "Which status does the server answer for a user it never heard of?",
    "Find the response to Alice's MESSAGE to sip:nobody@example.test in her trace (status >= 300).",
    kind="int",
    why="404 Not Found: the registrar has no binding and never had one. A known user who is "
    "offline gets 480 for an INVITE (and a pager-mode message is kept: 202).",
)
def _(ctx: dict[str, Any]) -> int:
    df = _responses(_sip(ctx["trace"], "alice"), "MESSAGE", "in")
    df = df[(df["status"] >= 300) & df["raw"].str.contains("To: <sip:nobody@", regex=False)]
    return int(_first(df, "answer for sip:nobody")["status"])


@exercise(
    "02.responses",
    "How many of the SIP messages in the whole trace are responses?",
    "`platform.trace.sip()` has a `status` column: NA for a request, the code for a response.",
    kind="int",
)
def _(ctx: dict[str, Any]) -> int:
    return int(ctx["trace"].sip()["status"].notna().sum())


# 03 traces as DataFrames --------------------------------------------------------------------------------------------
@exercise(
    "03.median-latency-ms",
    "What is the median delivery latency, in milliseconds, of the messages sent on "
    "this platform (`platform.trace.messages()`, direction out)?",
    "Filter `messages[messages.direction == 'out']`, take the `latency` column (seconds) times 1000, then "
    ".median(). Compute it right before you check: new messages change it.",
    kind="number",
    tolerance=0.01,
    why="On loopback through one proxy, a MESSAGE and its 200 OK cross four hops in a millisecond or two.",
)
def _(ctx: dict[str, Any]) -> float:
    m = ctx["trace"].messages()
    return float(m[m["direction"] == "out"]["latency"].median() * 1000)


@exercise(
    "03.top-talker",
    "Who sent the most messages?",
    "Group the sent messages by `sender` and count: `sent.groupby('sender', observed=True).size()`.",
    why="Alice: she talked to both Bob and Carol (and sent the pager message).",
)
def _(ctx: dict[str, Any]) -> str:
    m = ctx["trace"].messages()
    counts = m[m["direction"] == "out"].groupby("sender", observed=True).size().sort_values(ascending=False)
    return str(counts.index[0])


@exercise(
    "03.retransmitted",
    "How many of dave's transactions needed at least one retransmission?",
    "In `lossy_platform.trace.sip()`, keep dave's outgoing requests (owner, direction out, status NA), group by "
    "`transaction_id` and count the groups with more than one row.",
    kind="int",
    why="Each lost request (or lost 200 OK) cost its transaction one more send after T1; the chat above it "
    "never noticed.",
)
def _(ctx: dict[str, Any]) -> int:
    df = _requests(_sip(ctx["trace"], "dave"), direction="out")
    sends = df.groupby("transaction_id", observed=True).size()
    return int((sends > 1).sum())


@exercise(
    "03.capture-messages",
    "How many SIP messages of the compared session are in the capture (what tshark lists for its Call-ID)?",
    "Count the rows of `platform.trace.sip(call_id=call_id)`: each is one packet in the pcap, one line in "
    "tshark's output.",
    kind="int",
    needs=("trace", "call_id"),
    why="Every message on each hop: alice <-> proxy and proxy <-> bob, both ways.",
)
def _(ctx: dict[str, Any]) -> int:
    return int(len(ctx["trace"].sip(call_id=ctx["call_id"])))


# 04 conferences ------------------------------------------------------------------------------------------------------
@exercise(
    "04.refer-status",
    "Which status does the focus answer to Alice's REFER?",
    "Find the response to REFER in Alice's trace (method REFER, status not NA).",
    kind="int",
    why='202 Accepted: "I will try" (RFC 3515). Whether Carol joins is reported later, here in the roster '
    "(NOTIFY of the conference package).",
)
def _(ctx: dict[str, Any]) -> int:
    return _final_status(ctx, "alice", "REFER", "in", what="response to REFER")


@exercise(
    "04.dial-out-header",
    "Which header of the REFER names the person the focus should invite?",
    "Print Alice's REFER in full and look for the header with Carol's URI in it.",
    why="Refer-To: the focus sends an INVITE to that URI, with Referred-By naming Alice.",
)
def _(ctx: dict[str, Any]) -> str:
    df = _requests(_sip(ctx["trace"], "alice"), "REFER", "out")
    raw = str(_first(df, "REFER from Alice")["raw"])
    return "Refer-To" if _headers(raw, "Refer-To") else "?"


@exercise(
    "04.event-package",
    "Which event package does a participant subscribe to for the roster (the value of the Event header)?",
    "Print a SUBSCRIBE (or a NOTIFY) and read its Event header.",
    why="The conference event package of RFC 4575: NOTIFY bodies are application/conference-info+xml.",
)
def _(ctx: dict[str, Any]) -> str:
    df = _requests(_sip(ctx["trace"], "alice"), "SUBSCRIBE", "out")
    return _headers(str(_first(df, "SUBSCRIBE from Alice")["raw"]), "Event")[0].split(";")[0].strip()


@exercise(
    "04.notifies",
    "How many NOTIFY requests did Alice's endpoint receive?",
    "Count Alice's incoming NOTIFY requests in `platform.trace.sip()` (retransmissions would repeat a branch: "
    "count branches).",
    kind="int",
    why="One full document after the SUBSCRIBE, then one partial update per roster change.",
)
def _(ctx: dict[str, Any]) -> int:
    return int(_requests(_sip(ctx["trace"], "alice"), "NOTIFY", "in")["branch"].nunique())


@exercise(
    "04.first-notify-state",
    "What does the `state` attribute of the conference-info document say in the first "
    "NOTIFY, and in the later ones? Answer for the first one.",
    'Print the body of the first NOTIFY Alice received: `<conference-info ... state="...">`.',
    kind="choice",
    options=("full", "partial", "deleted"),
    why="full: the whole roster, then partial updates with a version number one higher each time (RFC 4575).",
)
def _(ctx: dict[str, Any]) -> str:
    df = _requests(_sip(ctx["trace"], "alice"), "NOTIFY", "in")
    m = re.search(r'<conference-info\b[^>]*\bstate="(\w+)"', str(_first(df, "NOTIFY at Alice")["raw"]))
    return m.group(1) if m else "?"


# 05 a real server ------------------------------------------------------------------------------------------------------
@exercise(
    "05.register-challenge",
    "Which status did Kamailio challenge the REGISTER with?",
    "The first response to Alice's REGISTER in `platform.trace.sip()`.",
    kind="int",
    why="401 Unauthorized with WWW-Authenticate: the registrar authenticates its users.",
)
def _(ctx: dict[str, Any]) -> int:
    return _final_status(ctx, "alice", "REGISTER", "in", what="response to REGISTER")


@exercise(
    "05.digest-algorithm",
    "Which digest algorithm did Kamailio offer in its challenge?",
    "Read the algorithm= parameter of the WWW-Authenticate header of the 401.",
    why="SHA-256 (RFC 7616/8760); MD5 is the old default that every SIP stack still knows.",
)
def _(ctx: dict[str, Any]) -> str:
    df = _responses(_sip(ctx["trace"], "alice"), "REGISTER", "in")
    raw = str(_first(df[df["status"] == 401], "401 at Alice")["raw"])
    value = _headers(raw, "WWW-Authenticate")[0]
    m = re.search(r"algorithm=\"?([A-Za-z0-9-]+)", value)
    return m.group(1) if m else "MD5"


@exercise(
    "05.wrong-password",
    "Which status did the REGISTER with a wrong password get?",
    "The final response to Bob's REGISTER with password 'guess' (owner bob).",
    kind="int",
    why="403 Forbidden: the example configuration refuses a wrong answer instead of challenging again.",
)
def _(ctx: dict[str, Any]) -> int:
    return _final_status(ctx, "bob", "REGISTER", "in", at_least=403, what="refusal at Bob")


@exercise(
    "05.record-routes",
    "How many Record-Route headers did the INVITE have when it reached Bob?",
    "Print the INVITE in Bob's trace and count its Record-Route lines.",
    kind="int",
    why="Two: Kamailio received it over UDP and sent it over TLS, so it record-routes once per transport "
    "(double record-routing): each side's Route then names the address it can reach.",
)
def _(ctx: dict[str, Any]) -> int:
    df = _requests(_sip(ctx["trace"], "bob"), "INVITE", "in")
    return len(_headers(str(_first(df, "INVITE at Bob")["raw"]), "Record-Route"))


# 06 from UCCAPI ------------------------------------------------------------------------------------------------------
@exercise(
    "06.enable-registers",
    "How many REGISTER requests did Alice's Enable (platform.endpoint with a password) send?",
    "Count Alice's outgoing REGISTER requests (distinct branches) before anything else.",
    kind="int",
    why="Two: the first is challenged (401), the second carries the Authorization.",
)
def _(ctx: dict[str, Any]) -> int:
    df = _requests(_sip(ctx["trace"], "alice"), "REGISTER", "out")
    df = df[~df["raw"].str.contains("Expires: 0", regex=False)]  # not the un-REGISTER of Disable
    return int(df["branch"].nunique())


@exercise(
    "06.accept-status",
    "Which response does IUccIncomingSessionEvent::Accept send on the wire?",
    "Bob's final response to the INVITE, in his trace (owner bob, direction out).",
    kind="int",
    why="200 OK with Bob's SDP answer; Alice's ACK completes it.",
)
def _(ctx: dict[str, Any]) -> int:
    return _final_status(ctx, "bob", "INVITE", "out", at_least=200, what="final response from Bob")


@exercise(
    "06.terminate-method",
    "Which SIP request does IUccSession::Terminate send for a connected session?",
    "The last request Alice sent in the session (its Call-ID).",
    why="BYE (a CANCEL if the session were still ringing).",
)
def _(ctx: dict[str, Any]) -> str:
    df = _requests(_sip(ctx["trace"], "alice"), direction="out")
    df = df[df["call_id"] == _session_call_id(ctx["trace"])]
    return str(_first(df.iloc[::-1], "request from Alice")["method"])


@exercise(
    "06.reject-status",
    "Which status did Bob's Reject with UCCROTR_DECLINE put on the wire?",
    "Bob's final answer to the invitation he declined: his trace (owner bob), INVITE responses he sent "
    "(direction out) with a status of 300 or more.",
    kind="int",
    why="603 Decline: UCC_REJECT_OR_TERMINATE_REASON values are SIP statuses (UCCROTR_BUSY is 486); Alice's "
    "side reports UCC_E_SIP_STATUS_GLOBAL_DECLINE, here RequestFailed with status 603.",
)
def _(ctx: dict[str, Any]) -> int:
    return _final_status(ctx, "bob", "INVITE", "out", at_least=300, what="refusal from Bob")


@exercise(
    "06.ocs-typing-method",
    "Which SIP request carried the OCS client's typing notification to Bob?",
    "Bob's incoming requests in the OCS client's dialog: which one has the KeyboardActivity body "
    "(Content-Type: application/xml)? print(wire.find('INFO')) or look at the flow above.",
    why="INFO, in the dialog, with an application/xml KeyboardActivity document; an RFC 3994 client sends a "
    "MESSAGE with application/im-iscomposing+xml instead. Bob's ComposingChanged is the same either way.",
)
def _(ctx: dict[str, Any]) -> str:
    df = _requests(_sip(ctx["trace"], "bob"), direction="in")
    df = df[df["raw"].str.contains("<KeyboardActivity>", regex=False)]
    return str(_first(df, "typing notification from the OCS client")["method"])


# 07 failures and timers ---------------------------------------------------------------------------------------
def _sends_to(trace: Any, method: str, peer: Any) -> Any:
    """The `method` requests `trace` sent to `peer` (a RawPeer, an Endpoint or "host:port"), retransmissions too."""
    address = _address_of(peer.address) if hasattr(peer, "address") else _address_of(peer)
    df = _requests(trace.sip(), method, "out")
    return df[df["dst"].astype(str) == address]


@exercise(
    "07.proxy-sends",
    "How many times did the proxy send the MESSAGE to the silent Bob before it gave up?",
    "Count the MESSAGE requests the server sent to Bob's address: `server.trace.sip()`, direction out, "
    "status NA, dst == Bob's address. Timer E: T1, 2·T1, 4·T1, ... capped at T2; Timer F stops it at 64·T1.",
    kind="int",
    needs=("server_trace", "peer"),
    why="Sent at 0, 1, 3, 7, 15, 23, 31, 39, 47, 55 and 63 T1: 11 times, and at 64·T1 Timer F fires.",
)
def _(ctx: dict[str, Any]) -> int:
    return int(len(_sends_to(ctx["server_trace"], "MESSAGE", ctx["peer"])))


@exercise(
    "07.timer-f",
    "How many seconds after Alice sent it did the 408 come back (to a tenth of a second)?",
    "Subtract the timestamp of Alice's first MESSAGE to Bob from that of the 408 she received "
    "(`platform.trace.sip()`, owner alice). Which timer is 64·T1 of the proxy's timers?",
    kind="number",
    tolerance=0.15,
    why="Timer F = 64·T1: 64 × 25 ms = 1.6 s at the proxy, which then answered 408 Request Timeout.",
)
def _(ctx: dict[str, Any]) -> float:
    df = _sip(ctx["trace"], "alice")
    timeout = _first(_responses(df, "MESSAGE", "in").query("status == 408"), "408 at Alice")
    sent = _first(_requests(df[df["call_id"] == timeout["call_id"]], "MESSAGE", "out"), "MESSAGE from Alice")
    return (timeout["timestamp"] - sent["timestamp"]).total_seconds()


@exercise(
    "07.invite-sends",
    "How many times did the proxy send the INVITE to the silent Bob?",
    "Count the proxy's INVITE requests to Bob's address in `server.trace.sip()`. Timer A doubles like E, "
    "but for INVITE it has no T2 cap; Timer B stops it at 64·T1.",
    kind="int",
    needs=("server_trace", "peer"),
    why="Sent at 0, 1, 3, 7, 15, 31 and 63 T1: the gaps double without a cap, 7 sends before Timer B.",
)
def _(ctx: dict[str, Any]) -> int:
    return int(len(_sends_to(ctx["server_trace"], "INVITE", ctx["peer"])))


@exercise(
    "07.cancel-final",
    "Which final response did the cancelled INVITE get?",
    "The CANCEL gets its own 200 OK; look for the other final response, the one with CSeq ... INVITE, "
    "in Alice's trace after her CANCEL.",
    kind="int",
    why="487 Request Terminated ends the INVITE transaction; Alice ACKs it like any failure.",
)
def _(ctx: dict[str, Any]) -> int:
    df = _sip(ctx["trace"], "alice")
    cancel = _first(_requests(df, "CANCEL", "out"), "CANCEL from Alice")
    finals = _responses(df[df["call_id"] == cancel["call_id"]], "INVITE", "in").query("status >= 200")
    return int(_first(finals, "final response to the INVITE")["status"])


@exercise(
    "07.cancel-branch",
    "Does the CANCEL carry the branch of the INVITE it cancels ('same') or a new one ('new')?",
    "Compare the branch of Alice's CANCEL with that of her INVITE (same Call-ID).",
    kind="choice",
    options=("same", "new"),
    why="A CANCEL names the transaction it cancels by its branch (and has the INVITE's CSeq number, "
    "method CANCEL); it is hop by hop: the proxy answers it and sends its own CANCEL to Bob.",
)
def _(ctx: dict[str, Any]) -> str:
    df = _requests(_sip(ctx["trace"], "alice"), direction="out")
    cancel = _first(df[df["method"] == "CANCEL"], "CANCEL from Alice")
    invite = _first(df[(df["method"] == "INVITE") & (df["call_id"] == cancel["call_id"])], "INVITE")
    return "same" if invite["branch"] == cancel["branch"] else "new"


@exercise(
    "07.who-answered",
    "Who generated each failure: the proxy or the callee? Answer a dict such as "
    "{404: 'proxy', 480: ..., 486: ..., 603: ...}.",
    "A response made by the callee appears in the callee's own trace, direction out; one made by the "
    "proxy appears only on the proxy -> alice hop. `flow.find('486')` shows the first hop of each.",
    kind="mapping",
    why="404 (no such user) and 480 (known, not registered) come from the registrar/proxy; 486 and 603 "
    "from the callee's phone, relayed by the proxy.",
)
def _(ctx: dict[str, Any]) -> dict[int, str]:
    df = _responses(_sip(ctx["trace"]))
    out = {}
    for status in (404, 480, 486, 603):
        made = df[(df["status"] == status) & (df["direction"] == "out")]
        seen = df[(df["status"] == status) & (df["direction"] == "in")]
        if made.empty and seen.empty:
            raise LookupError(f"no {status} in the trace yet: run the cells above first")
        out[status] = _user(str(made["owner"].iloc[0])) if not made.empty else "proxy"
    return out


def _auth_status(ctx: dict[str, Any], method: str) -> int:
    df = _responses(_sip(ctx["trace"], "alice"), method, "in")
    return int(_first(df[df["status"].isin([401, 407])], f"challenge to Alice's {method}")["status"])


@exercise(
    "07.register-challenge",
    "Which status challenged Alice's REGISTER?",
    "Find the first response to REGISTER in the authenticating server's trace of Alice (`auth_platform.trace`).",
    kind="int",
    why="401 Unauthorized with WWW-Authenticate: the registrar itself (the UAS of the REGISTER) asks.",
)
def _(ctx: dict[str, Any]) -> int:
    return _auth_status(ctx, "REGISTER")


@exercise(
    "07.message-challenge",
    "Which status challenged Alice's first MESSAGE?",
    "Find the first response to Alice's MESSAGE in `auth_platform.trace`.",
    kind="int",
    why="407 Proxy Authentication Required with Proxy-Authenticate: a proxy on the path asks; the request "
    "is for someone else.",
)
def _(ctx: dict[str, Any]) -> int:
    return _auth_status(ctx, "MESSAGE")


@exercise(
    "07.proxy-challenge-header",
    "Which header carries the challenge in the 407, and so which header must the "
    "retried request carry the answer in? Name the challenge header.",
    "Print the 407 in full (auth_flow.find('407')) and look for the header with Digest realm=..., nonce=...",
    why="Proxy-Authenticate → Proxy-Authorization (407); WWW-Authenticate → Authorization (401).",
)
def _(ctx: dict[str, Any]) -> str:
    df = _responses(_sip(ctx["trace"], "alice"), "MESSAGE", "in")
    raw = str(_first(df[df["status"] == 407], "407 at Alice")["raw"])
    return "Proxy-Authenticate" if _headers(raw, "Proxy-Authenticate") else "WWW-Authenticate"


@exercise(
    "07.refused-type",
    "Which Content-Type did the peer refuse with 415?",
    "Find the 415 in Alice's trace; the request it answers is in the same transaction (same branch): "
    "read that request's Content-Type. The 415's Accept header says what the peer does take.",
    why="415 Unsupported Media Type to application/im-iscomposing+xml: the peer takes text only.",
)
def _(ctx: dict[str, Any]) -> str:
    df = _sip(ctx["trace"], "alice")
    refused = _first(_responses(df, direction="in").query("status == 415"), "415 at Alice")
    request = _first(_requests(df[df["branch"] == refused["branch"]], direction="out"), "request answered 415")
    return _headers(str(request["raw"]), "Content-Type")[0]


@exercise(
    "07.composing-sent",
    "How many is-composing MESSAGEs did Alice send to the peer that refuses them, "
    "although start_composing() was called twice?",
    "Count Alice's MESSAGE requests (distinct branches) with Content-Type application/im-iscomposing+xml "
    "in the session with that peer.",
    kind="int",
    needs=("trace", "peer"),
    why="After a 415 the session remembers (`session.unsupported_by_peer`) and sends no more of that kind: "
    "the text keeps flowing.",
)
def _(ctx: dict[str, Any]) -> int:
    df = _requests(_sip(ctx["trace"], "alice"), "MESSAGE", "out")
    peer_user = _user(ctx["peer"].uri) if hasattr(ctx["peer"], "uri") else str(ctx["peer"])
    df = df[
        df["raw"].str.contains("application/im-iscomposing+xml", regex=False)
        & df["raw"].str.contains(f"To: <sip:{peer_user}@", regex=False)
    ]
    return int(df["branch"].nunique())


# 08 break it -----------------------------------------------------------------------------------------------------
def _first_call(trace: Any) -> str:
    """The Call-ID of the first INVITE Alice sent in this trace (each break of notebook 8 has a trace of its own)."""
    return str(_first(_requests(_sip(trace, "alice"), "INVITE", "out"), "INVITE from Alice")["call_id"])


@exercise(
    "08.no-ack.missing",
    "Which request did Alice send that never reached Bob?",
    "Compare the requests in Alice's trace (direction out) with those in Bob's (direction in), by method and "
    "CSeq: `p.trace.sip()` has both owners.",
    kind="set",
    why="The ACK: the box dropped every one, so Bob's 200 OK was never confirmed.",
)
def _(ctx: dict[str, Any]) -> set[str]:
    call = _first_call(ctx["trace"])
    df = _requests(_sip(ctx["trace"]))
    df = df[df["call_id"] == call]
    alice_sent = {
        (m, int(c))
        for m, c, o, d in zip(df["method"], df["cseq"], _user_of(df), df["direction"])
        if o == "alice" and d == "out"
    }
    bob_got = {
        (m, int(c))
        for m, c, o, d in zip(df["method"], df["cseq"], _user_of(df), df["direction"])
        if o == "bob" and d == "in"
    }
    return {str(m) for m, _c in alice_sent - bob_got}


@exercise(
    "08.no-ack.200-sends",
    "How many times did Bob's endpoint send its 200 OK for the INVITE?",
    "Count the 200 responses to INVITE that Bob sent (owner bob, direction out). A UAS resends its 2xx "
    "until the ACK comes, for at most 64·T1 (RFC 3261 §13.3.1.4).",
    kind="int",
    why="T1, 2·T1, ... up to T2 between sends (Timer G's schedule), for 64·T1: 11 sends, here in 1.6 s.",
)
def _(ctx: dict[str, Any]) -> int:
    df = _responses(_sip(ctx["trace"], "bob"), "INVITE", "out")
    return int(((df["status"] == 200) & (df["call_id"] == _first_call(ctx["trace"]))).sum())


@exercise(
    "08.no-ack.bye-from",
    "Who sent the BYE that ended the session: alice or bob?",
    "Find the BYE in the flow (flow.find('BYE')) and read its hop, or its From header.",
    why="Bob: without an ACK his 200 OK was never confirmed, so after 64·T1 he ends the session with a BYE "
    "(RFC 3261 §13.3.1.4). Alice believed all was fine until then.",
)
def _(ctx: dict[str, Any]) -> str:
    df = _requests(_sip(ctx["trace"]), "BYE", "out")
    return _user(str(_first(df[df["call_id"] == _first_call(ctx["trace"])], "BYE")["owner"]))


@exercise(
    "08.no-rr.direct",
    "Which requests did Alice send straight to Bob, past the proxy?",
    "Compare the dst column of Alice's requests (direction out) with Bob's own address (the src of Bob's "
    "messages): which methods went there directly?",
    kind="set",
    why="Everything after the INVITE: ACK, MESSAGE and BYE. Without Record-Route the route set is empty and "
    "in-dialog requests go to the remote target, the Contact.",
)
def _(ctx: dict[str, Any]) -> set[str]:
    df = _sip(ctx["trace"])
    bob_addresses = set(df[(_user_of(df) == "bob") & (df["direction"] == "out")]["src"].astype(str))
    mine = _requests(df[_user_of(df) == "alice"], direction="out")
    return {str(m) for m, d in zip(mine["method"], mine["dst"].astype(str)) if d in bob_addresses}


@exercise(
    "08.no-rr.proxy-saw",
    "How many of the session's MESSAGE requests did the proxy see?",
    "Look in the server's own trace (`server.trace.sip()`) for MESSAGE requests with the session's Call-ID.",
    kind="int",
    needs=("trace", "server_trace"),
    why="None: a proxy that does not record-route sees the INVITE and its responses only. A proxy that must "
    "see the chat (billing, a firewall, a NAT) has to stay on the path with Record-Route.",
)
def _(ctx: dict[str, Any]) -> int:
    df = _requests(ctx["server_trace"].sip(), "MESSAGE", "in")
    return int((df["call_id"] == _first_call(ctx["trace"])).sum())


@exercise(
    "08.max-forwards.at-bob",
    "With Max-Forwards: 1 on Alice's INVITE, what Max-Forwards did Bob see?",
    "Print the INVITE on the proxy -> bob hop.",
    kind="int",
    why="0: the proxy forwarded it (1 is still allowed) and took one off. One more proxy would have refused.",
)
def _(ctx: dict[str, Any]) -> int:
    df = _requests(_sip(ctx["trace"], "bob"), "INVITE", "in")
    return int(_headers(str(_first(df, "INVITE at Bob")["raw"]), "Max-Forwards")[0])


@exercise(
    "08.max-forwards.zero",
    "With Max-Forwards: 0, which status came back?",
    "Find the final response to the INVITE with Max-Forwards: 0 in Alice's trace.",
    kind="int",
    why="483 Too Many Hops: a proxy does not forward a request whose Max-Forwards is 0 (RFC 3261 §16.3).",
)
def _(ctx: dict[str, Any]) -> int:
    return _final_status(ctx, "alice", "INVITE", "in", at_least=300, what="failure at Alice")


@exercise(
    "08.silent.status",
    "Which status ended Alice's message to the silent Bob?",
    "Find the final response to Alice's MESSAGE in her trace.",
    kind="int",
    why='408 Request Timeout, from the proxy when its Timer F ran out; the session then ended ("stopped answering").',
)
def _(ctx: dict[str, Any]) -> int:
    return _final_status(ctx, "alice", "MESSAGE", "in", at_least=300, what="failure at Alice")


@exercise(
    "08.silent.bob-answered",
    "How many 200 OKs for Alice's text did Bob's endpoint send?",
    "Bob's own trace records what he sent (owner bob, direction out, status 200, method MESSAGE, the text's "
    "CSeq): did he answer?",
    kind="int",
    needs=("trace",),
    why="He answered every retransmission: his answers never left his machine (his network lost them all). "
    "Each trace is one point of view: Bob's says he answered, the proxy's says nothing came.",
)
def _(ctx: dict[str, Any]) -> int:
    df = _sip(ctx["trace"])
    failed = _first(_responses(df[_user_of(df) == "alice"], "MESSAGE", "in").query("status >= 300"), "failure at Alice")
    mine = _responses(df[_user_of(df) == "bob"], "MESSAGE", "out")
    return int(
        ((mine["status"] == 200) & (mine["call_id"] == failed["call_id"]) & (mine["cseq"] == failed["cseq"])).sum()
    )


@exercise(
    "08.silent.proxy-got",
    "How many of those 200 OKs reached the proxy?",
    "Look for responses to that MESSAGE (same Call-ID and CSeq) coming in, in `server.trace.sip()`.",
    kind="int",
    needs=("trace", "server_trace"),
    why="None: so the proxy kept retransmitting (Timer E) until Timer F, and answered Alice 408.",
)
def _(ctx: dict[str, Any]) -> int:
    df = _sip(ctx["trace"], "alice")
    failed = _first(_responses(df, "MESSAGE", "in").query("status >= 300"), "failure at Alice")
    srv = _responses(ctx["server_trace"].sip(), "MESSAGE", "in")
    return int(((srv["call_id"] == failed["call_id"]) & (srv["cseq"] == failed["cseq"])).sum())
